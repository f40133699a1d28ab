/* smimestream: internals shared between the library's files and its tests.
 * Not installed.  Everything here is hidden from the shared library's ABI. */
#ifndef SMIMESTREAM_SMS_PRIVATE_H
#define SMIMESTREAM_SMS_PRIVATE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <smimestream/smimestream.h>

#define SMS_HIDDEN __attribute__((visibility("hidden")))

#define sms_return_val_if_fail(expr, val)                                                   \
    do {                                                                                    \
        if (!(expr))                                                                        \
            return (val);                                                                   \
    } while (0)

/* Limits on user-controlled sizes. */
#define SMS_MAX_HEADER_VALUE 4096    /* one header value, bytes */
#define SMS_MAX_RECIPIENTS 1000
#define SMS_MAX_ATTACHMENTS 1000
#define SMS_MAX_BODY (16u << 20)     /* the text body is held in memory */
#define SMS_MAX_FILENAME 1024
#define SMS_MAX_DISPLAY_NAME 256    /* keeps every address line far below 998 */

/* ---- growable byte buffer (util.c) ----------------------------------- */

typedef struct sms__buf {
    uint8_t *data;
    size_t len;
    size_t cap;
    bool failed; /* an allocation failed; later appends are no-ops */
} sms__buf;

SMS_HIDDEN void sms__buf_init(sms__buf *b);
SMS_HIDDEN void sms__buf_clear(sms__buf *b);     /* len = 0, keeps memory */
SMS_HIDDEN void sms__buf_free(sms__buf *b);      /* wipes and frees */
SMS_HIDDEN bool sms__buf_reserve(sms__buf *b, size_t extra);
SMS_HIDDEN void sms__buf_append(sms__buf *b, const void *p, size_t n);
SMS_HIDDEN void sms__buf_puts(sms__buf *b, const char *s);
SMS_HIDDEN void sms__buf_printf(sms__buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
SMS_HIDDEN void sms__buf_vprintf(sms__buf *b, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

/* snprintf into an error buffer (err may be NULL or err_size 0). */
SMS_HIDDEN void sms__set_err(char *err, size_t err_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Wipe memory that held a secret (not optimised away). */
SMS_HIDDEN void sms__wipe(void *p, size_t n);

/* ---- encoders (encode.c) ---------------------------------------------
 * All encoders are streaming: feeding the input whole, one byte at a time,
 * or split at any offset gives identical output.  None of them ends its
 * output with a line break: the caller writes the CRLF that starts the
 * following MIME delimiter. */

/* Base64, 76 columns, CRLF between lines, no CRLF after the last line.
 * The CRLF is written lazily, before the first group of the next line, so
 * the output never ends with one. */
typedef struct sms__b64 {
    uint8_t pend[3];
    unsigned npend; /* input bytes carried to the next call (0-2) */
    unsigned col;   /* characters on the current output line (0-76) */
} sms__b64;

SMS_HIDDEN void sms__b64_init(sms__b64 *e);
/* Upper bound on what update(len) followed by final can write. */
SMS_HIDDEN size_t sms__b64_bound(size_t len);
/* Returns the number of bytes written to out. */
SMS_HIDDEN size_t sms__b64_update(sms__b64 *e, const uint8_t *in, size_t len, uint8_t *out);
SMS_HIDDEN size_t sms__b64_final(sms__b64 *e, uint8_t *out);

/* Quoted-printable for UTF-8 text (RFC 2045 §6.7).  Input line ends may be
 * LF or CRLF; output has CRLF hard breaks and "=" CRLF soft breaks, lines at
 * most 76 characters.  A bare CR is encoded as =0D.  "=", controls, bytes
 * >= 0x80, whitespace before a line end, "From " and "." at the start of a
 * line are encoded, so the output never contains "=_" (our boundaries do).
 * The first "-" of a line starting with "--" is encoded too.  The line-start
 * rules hold for every output line, also those after a soft break. */
typedef struct sms__qp {
    uint8_t hold[8];   /* input not yet encoded: each byte is encoded only once
                        * the 4 bytes after it are known (or at final), since
                        * "From " needs that much lookahead */
    unsigned nhold;
    unsigned col;      /* characters already written on the current output line */
} sms__qp;

SMS_HIDDEN void sms__qp_init(sms__qp *e);
/* Append the encoding of in to out. */
SMS_HIDDEN void sms__qp_update(sms__qp *e, const uint8_t *in, size_t len, sms__buf *out);
SMS_HIDDEN void sms__qp_final(sms__qp *e, sms__buf *out);
/* Would this text go through unchanged as 7bit?  (ASCII printable plus
 * CRLF/LF, lines <= 76, no trailing whitespace, no "From "/"." line starts,
 * no "=_", no line starting with "--".) */
SMS_HIDDEN bool sms__text_is_7bit_safe(const uint8_t *in, size_t len);

/* RFC 2047 header encoding (UTF-8 "B" encoded-words), streaming.  Text that
 * is printable ASCII is passed through; otherwise the whole value becomes a
 * run of encoded-words no longer than 75 characters each, never splitting a
 * UTF-8 sequence, folded with CRLF SP so no line exceeds 76 characters.
 * start_col is the column where the value starts (after "Subject: "). */
typedef struct sms__hdr {
    sms__buf in;      /* the value so far (header values are bounded) */
    unsigned start_col;
} sms__hdr;

SMS_HIDDEN void sms__hdr_init(sms__hdr *e, unsigned start_col);
SMS_HIDDEN void sms__hdr_update(sms__hdr *e, const uint8_t *in, size_t len);
/* Append the encoded value to out, release e.  Returns false if the input
 * is not valid UTF-8 or contains CR, LF or NUL. */
SMS_HIDDEN bool sms__hdr_final(sms__hdr *e, sms__buf *out);
/* One-shot form of the above. */
SMS_HIDDEN bool sms__hdr_encode(const char *utf8, unsigned start_col, sms__buf *out);

/* A MIME parameter (RFC 2045 / RFC 2231): appends ";" CRLF SP name=value,
 * quoting ASCII values and using name*0*=utf-8''%XX continuations (each line
 * at most 76 characters) for non-ASCII or long ones. */
SMS_HIDDEN bool sms__mime_param(sms__buf *out, const char *name, const char *utf8_value);

SMS_HIDDEN bool sms__utf8_valid(const uint8_t *s, size_t len);

/* message.c: a conservative RFC 5321 mailbox (dot-atom local part, a
 * hostname or address-literal domain), shared by headers and envelope. */
SMS_HIDDEN bool sms__addr_spec_valid(const char *a, size_t len);

/* ---- CMS SignedData (cms.c, libtasn1) ---------------------------------- */

/* DER of the signed attributes as a SET OF (first byte 0x31), ready to be
 * hashed and signed: contentType id-data, messageDigest, signingTime,
 * smimeCapabilities.  *ret_der is malloc'ed. */
SMS_HIDDEN int sms__cms_signed_attrs(sms_digest digest, const uint8_t *content_digest,
                                     size_t digest_len, time_t signing_time, uint8_t **ret_der,
                                     size_t *ret_len, char *err, size_t err_size);

/* DER ContentInfo(SignedData), detached (no eContent), version 1, one
 * SignerInfo with issuerAndSerialNumber taken from certs[0], the given
 * signed attributes (in 0x31 form; stored as [0] IMPLICIT), all certs in
 * the certificates field.  *ret_der is malloc'ed. */
SMS_HIDDEN int sms__cms_signed_data(sms_digest digest, sms_sig_scheme scheme,
                                    const uint8_t *signed_attrs, size_t signed_attrs_len,
                                    const uint8_t *sig, size_t sig_len,
                                    const uint8_t *const *certs, const size_t *cert_lens,
                                    size_t n_certs, uint8_t **ret_der, size_t *ret_len,
                                    char *err, size_t err_size);

#endif
