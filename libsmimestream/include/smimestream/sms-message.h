/* smimestream: the one-pass signed message writer (pull API).
 *
 *   sms_message *m = sms_message_new();
 *   sms_message_set_from(m, "scanner@example.org");
 *   sms_message_add_to(m, "alice@example.org");
 *   sms_message_add_attachment(m, src, "scan.pdf", NULL);
 *   sms_message_set_signer(m, signer);
 *   while ((rc = sms_message_read(m, buf, sizeof buf, &n)) == 0 && n > 0)
 *       write(out, buf, n);
 *
 * Each attachment source is read once, in chunks; every byte of the signed
 * entity is hashed as it is produced; at the end the signer signs the digest
 * of the signed attributes.  Memory does not grow with attachment size.
 */
#ifndef SMIMESTREAM_SMS_MESSAGE_H
#define SMIMESTREAM_SMS_MESSAGE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <smimestream/sms-signer.h>
#include <smimestream/sms-source.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sms_message sms_message;

enum {
    SMS_MESSAGE_ALLOW_WEAK_DIGEST = 1u << 0, /* permit SHA-1 and MD5 */
    SMS_MESSAGE_RSA_PSS = 1u << 1,           /* sign with RSA-PSS (RSA keys) */
};

typedef enum {
    SMS_PHASE_SETUP = 0,     /* not read from yet */
    SMS_PHASE_HEADERS,
    SMS_PHASE_BODY,
    SMS_PHASE_ATTACHMENT,    /* streaming attachment `attachment_index` */
    SMS_PHASE_SIGNING,
    SMS_PHASE_TRAILER,       /* writing the signature part */
    SMS_PHASE_DONE,          /* complete: every byte has been returned */
    SMS_PHASE_FAILED,        /* error or abort; see sms_message_last_error() */
} sms_phase;

typedef struct sms_progress {
    size_t struct_size;          /* set by the caller to sizeof(sms_progress) */
    sms_phase phase;
    int attachment_index;        /* 0-based; -1 when not in an attachment */
    size_t attachment_count;
    uint64_t attachment_bytes;   /* bytes read from the current attachment */
    int64_t attachment_size;     /* its size, or -1 when unknown (pipes) */
    uint64_t source_bytes;       /* bytes read from all attachments so far */
    int64_t source_size;         /* total of all sizes, or -1 if any unknown */
    uint64_t output_bytes;       /* message bytes returned by sms_message_read */
    int cancelled;               /* cancel was requested */
} sms_progress;

sms_message *sms_message_new(void);
void sms_message_free(sms_message *msg);

/* Setup.  Addresses are "addr@domain" or "Display Name <addr@domain>".
 * Any CR or LF is refused with SMS_ERR_BAD_HEADER. */
int sms_message_set_from(sms_message *msg, const char *address);
int sms_message_add_to(sms_message *msg, const char *address);
int sms_message_add_cc(sms_message *msg, const char *address);
int sms_message_set_subject(sms_message *msg, const char *utf8);
/* The text body, UTF-8.  LF or CRLF line ends; sent with CRLF. */
int sms_message_set_body(sms_message *msg, const char *utf8, size_t len);
/* An extra header (name: value).  Names of structural headers are refused. */
int sms_message_add_header(sms_message *msg, const char *name, const char *value);
/* Defaults: now, and a random id at the From domain. */
int sms_message_set_date(sms_message *msg, time_t when);
int sms_message_set_message_id(sms_message *msg, const char *id_without_brackets);
/* Takes ownership of src, also on failure.  filename is UTF-8 (may be NULL
 * for "attachment-N.bin"); content_type NULL guesses from the extension. */
int sms_message_add_attachment(sms_message *msg, sms_source *src, const char *filename,
                               const char *content_type);
/* Takes a reference. */
int sms_message_set_signer(sms_message *msg, sms_signer *signer);
int sms_message_set_digest(sms_message *msg, sms_digest digest);
int sms_message_set_flags(sms_message *msg, unsigned flags);
/* Bytes read from a source at a time (default 64 KiB; 4 KiB .. 16 MiB). */
int sms_message_set_chunk_size(sms_message *msg, size_t size);

/* Check everything that can be checked before the first byte: signer and
 * certificate, digest policy, headers.  sms_message_read() calls it too. */
int sms_message_prepare(sms_message *msg);

/* Fill buf with up to cap bytes of the message.  *ret_n == 0 with a 0
 * return means the message is complete.  On error nothing is written to
 * *ret_n, and every later call returns the same error (sticky). */
int sms_message_read(sms_message *msg, void *buf, size_t cap, size_t *ret_n);

/* Request a cancel: the current attachment ends at the next chunk boundary,
 * the parts are closed, a signed text/plain notice saying the message is
 * partial is appended, and the message is signed and completed.
 * Async-signal-safe and thread-safe (it only sets a flag). */
void sms_message_cancel(sms_message *msg);
/* Request an abort: the next sms_message_read() fails with
 * SMS_ERR_ABORTED, so a transport must not finish the message.
 * Async-signal-safe and thread-safe. */
void sms_message_abort(sms_message *msg);

int sms_message_get_progress(const sms_message *msg, sms_progress *ret_progress);
/* Was the message cut short by a cancel (only meaningful once done)? */
int sms_message_is_partial(const sms_message *msg);
/* The Message-ID without angle brackets (valid after prepare). */
const char *sms_message_get_message_id(const sms_message *msg);
/* The envelope sender and recipients (bare addr-specs). */
const char *sms_message_get_sender(const sms_message *msg);
size_t sms_message_get_recipient_count(const sms_message *msg);
const char *sms_message_get_recipient(const sms_message *msg, size_t i);
/* Detail of the last error, or "" when none. */
const char *sms_message_last_error(const sms_message *msg);
/* The sticky error code, 0 when none. */
int sms_message_get_error(const sms_message *msg);

#ifdef __cplusplus
}
#endif
#endif
