/* smimestream: SMTP transport (libcurl).
 *
 * sms_smtp_send() pulls the message with sms_message_read() from libcurl's
 * read callback, so each chunk leaves for the server as soon as it exists.
 * If the message fails or is aborted, or the transport is aborted, the
 * connection is dropped before the final CRLF.CRLF: the server delivers
 * nothing.  A cancelled message is finished (signed, marked partial) and
 * delivered.
 *
 * libcurl is initialised on first use (curl_global_init, once, thread-safe)
 * and never cleaned up.  Environment proxies (all_proxy) are ignored.  No
 * SIZE= is declared: the final size is not known in advance (a cancel
 * changes it), and libcurl cuts the upload at a declared size.
 */
#ifndef SMIMESTREAM_SMS_SMTP_H
#define SMIMESTREAM_SMS_SMTP_H

#include <stddef.h>

#include <smimestream/sms-message.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sms_smtp sms_smtp;

enum {
    /* Send to the accepted recipients even if some were refused (default:
     * like msmtp, any refused recipient means nothing is sent). */
    SMS_SMTP_ALLOW_PARTIAL_RECIPIENTS = 1u << 0,
    /* With smtp://, require STARTTLS (implied when credentials are set). */
    SMS_SMTP_REQUIRE_STARTTLS = 1u << 1,
};

typedef enum {
    SMS_SMTP_PHASE_IDLE = 0,
    SMS_SMTP_PHASE_CONNECTING,   /* TCP, TLS, EHLO, AUTH */
    SMS_SMTP_PHASE_ENVELOPE,     /* MAIL FROM, RCPT TO */
    SMS_SMTP_PHASE_STREAMING,    /* DATA: the message is being pulled */
    SMS_SMTP_PHASE_WAITING,      /* final dot sent, waiting for the reply */
    SMS_SMTP_PHASE_DONE,
} sms_smtp_phase;

typedef enum {
    SMS_RCPT_PENDING = 0,        /* not tried (e.g. the connection failed first) */
    SMS_RCPT_ACCEPTED,
    SMS_RCPT_REFUSED,
} sms_rcpt_status;

typedef struct sms_rcpt_result {
    size_t struct_size;          /* set by the caller */
    const char *address;
    sms_rcpt_status status;
    int reply_code;              /* 250, 550, ...; 0 when not tried */
    const char *reply_text;      /* the server's text, "" when none */
} sms_rcpt_result;

/* Called from inside sms_smtp_send() when the phase changes and after each
 * chunk (phase SMS_SMTP_PHASE_STREAMING); msg is the message being sent, so
 * sms_message_get_progress() gives bytes and attachment.  Keep it short; it
 * may call sms_message_cancel(), sms_message_abort() or sms_smtp_abort(). */
typedef void (*sms_smtp_progress_func)(sms_smtp_phase phase, const sms_message *msg,
                                       void *user_data);

sms_smtp *sms_smtp_new(void);
void sms_smtp_free(sms_smtp *smtp);

/* smtp://host[:port] (default port 25; STARTTLS when required) or
 * smtps://host[:port] (TLS from the start, default port 465).  An optional
 * path names the EHLO domain (smtp://host/client.example.org).  A user name
 * or password in the URL is refused: use sms_smtp_set_auth(). */
int sms_smtp_set_url(sms_smtp *smtp, const char *url);
/* Credentials are copied and wiped on free (libcurl's own copy during a
 * send is freed, not wiped).  Setting them requires TLS: with smtp://,
 * STARTTLS becomes mandatory, so credentials never travel in clear text.
 * If the server then does not authenticate us (no AUTH offered), nothing is
 * sent: SMS_ERR_SMTP_AUTH.  (NULL, NULL) removes them. */
int sms_smtp_set_auth(sms_smtp *smtp, const char *user, const char *password);
/* PEM file of the CA certificates to trust for the server (default: the
 * system's).  NULL restores the default. */
int sms_smtp_set_cacert(sms_smtp *smtp, const char *path);
/* Seconds; 0 keeps the default (connect 30, response 60).  The response
 * timeout bounds the wait for each reply, including the one after the
 * final dot, and how long the server may take no data while the message
 * streams.  Time spent waiting for a slow attachment source does not
 * count. */
int sms_smtp_set_timeouts(sms_smtp *smtp, long connect_seconds, long response_seconds);
/* Envelope-only recipient (never in a header): "user@example.org",
 * "<user@example.org>" or "Name <user@example.org>". */
int sms_smtp_add_bcc(sms_smtp *smtp, const char *address);
int sms_smtp_set_flags(sms_smtp *smtp, unsigned flags);
int sms_smtp_set_progress(sms_smtp *smtp, sms_smtp_progress_func func, void *user_data);

/* Send msg (To, Cc from the message, plus the Bcc recipients).  Blocks until
 * the server answered the final dot or the transfer failed.  The message is
 * checked (sms_message_prepare) before connecting, and pulled only after
 * the server accepted DATA.  Returns 0 when the server accepted the message
 * (with SMS_SMTP_ALLOW_PARTIAL_RECIPIENTS, for at least one recipient: see
 * the per-recipient results), or:
 *   SMS_ERR_SMTP_REFUSED    permanent refusal (5xx), or a refused recipient
 *   SMS_ERR_SMTP_TEMPFAIL   4xx, connection failure, timeout
 *   SMS_ERR_SMTP_AUTH       authentication failed or not offered
 *   SMS_ERR_SMTP_UNKNOWN    the connection was lost after the final dot with
 *                           no reply: the message was possibly delivered
 *   the message's own error (SMS_ERR_ABORTED, SMS_ERR_IO, signer errors):
 *                           the connection was dropped before the final dot.
 *   SMS_ERR_STATE           msg was already read from (it is sent only once)
 * sms_smtp_last_error() says what happened and the last server reply.
 * A failure before the server accepted DATA leaves msg untouched (not read
 * from), so it may be sent again, e.g. later or to another server; after
 * that, a failed send leaves msg aborted.  One send at a time per object;
 * the object may be reused for the next message. */
int sms_smtp_send(sms_smtp *smtp, sms_message *msg);

/* Drop the connection before the final dot (and abort the message being
 * sent, which also stops a source blocked in read() at its next EINTR).
 * Async-signal-safe and thread-safe.  Called before sms_smtp_send(), it
 * applies to the next send; it is used up when a send returns.  Once the
 * final dot has been sent, delivery cannot be stopped: an abort while
 * waiting for the server's reply returns SMS_ERR_SMTP_UNKNOWN. */
void sms_smtp_abort(sms_smtp *smtp);

/* The phase reached; after sms_smtp_send() returns, where it ended
 * (SMS_SMTP_PHASE_DONE on success). */
sms_smtp_phase sms_smtp_get_phase(const sms_smtp *smtp);
/* Results of the last send: To and Cc in message order, then Bcc.  The
 * strings stay valid until the next send or sms_smtp_free(). */
size_t sms_smtp_get_recipient_count(const sms_smtp *smtp);
int sms_smtp_get_recipient(const sms_smtp *smtp, size_t i, sms_rcpt_result *ret_result);
/* The last reply line from the server ("250 2.0.0 Ok: queued as ..."). */
const char *sms_smtp_last_reply(const sms_smtp *smtp);
/* What failed, the server's reply, and what to do, as one sentence; ""
 * after a clean success; a note on refused recipients after a partial one. */
const char *sms_smtp_last_error(const sms_smtp *smtp);

#ifdef __cplusplus
}
#endif
#endif
