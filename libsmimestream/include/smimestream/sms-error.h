/* smimestream: error codes.
 *
 * Every public function returns 0 (SMS_OK) or one of these negative codes.
 * Objects keep a detail message (sms_message_last_error() and friends) that
 * says what failed and what to do about it.
 */
#ifndef SMIMESTREAM_SMS_ERROR_H
#define SMIMESTREAM_SMS_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    SMS_OK = 0,
    SMS_ERR_INVALID_ARG = -1,     /* caller passed something unusable */
    SMS_ERR_NOMEM = -2,
    SMS_ERR_IO = -3,              /* reading a source or writing failed */
    SMS_ERR_NOINPUT = -4,         /* a file could not be opened */
    SMS_ERR_BAD_HEADER = -5,      /* CR/LF or malformed address in a header */
    SMS_ERR_DIGEST = -6,          /* unknown or refused (weak) digest */
    SMS_ERR_BAD_DATA = -7,        /* malformed key, certificate or DER */
    SMS_ERR_KEY_MISMATCH = -8,    /* key and certificate do not belong together */
    SMS_ERR_PIN = -9,             /* wrong passphrase/PIN, or PIN refused */
    SMS_ERR_SIGNER = -10,         /* the signer failed */
    SMS_ERR_UNAVAILABLE = -11,    /* token, plugin or service not there */
    SMS_ERR_ABORTED = -12,        /* sms_message_abort() was called */
    SMS_ERR_STATE = -13,          /* call not allowed in this state */
    SMS_ERR_CRYPTO = -14,         /* internal crypto failure */
    SMS_ERR_LIMIT = -15,          /* a size or count limit was exceeded */
    SMS_ERR_UNSUPPORTED = -16,    /* key type or option not supported */
    SMS_ERR_CANCELLED = -17,      /* operation cancelled (e.g. PIN prompt) */
    SMS_ERR_TRANSPORT = -18,      /* the consumer (e.g. SMTP) failed */
    SMS_ERR_SMTP_REFUSED = -19,   /* permanent refusal (5xx) or refused recipient */
    SMS_ERR_SMTP_TEMPFAIL = -20,  /* 4xx, connection failure, timeout */
    SMS_ERR_SMTP_AUTH = -21,      /* authentication failed or impossible */
    SMS_ERR_SMTP_UNKNOWN = -22,   /* lost after the final dot: possibly delivered */
} sms_error;

/* A short English description of an error code.  Never NULL. */
const char *sms_strerror(int err);

/* The sysexits.h code that a command-line tool should exit with for this
 * error (0 for SMS_OK).  Shared so that every front end agrees. */
int sms_error_exit_code(int err);

#ifdef __cplusplus
}
#endif
#endif
