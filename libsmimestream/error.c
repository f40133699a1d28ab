/* smimestream: error codes to text and to sysexits(3) codes. */
#include "config.h"

#include <sysexits.h>

#include "sms-private.h"

const char *sms_strerror(int err)
{
    switch (err) {
    case SMS_OK: return "success";
    case SMS_ERR_INVALID_ARG: return "invalid argument";
    case SMS_ERR_NOMEM: return "out of memory";
    case SMS_ERR_IO: return "input/output error";
    case SMS_ERR_NOINPUT: return "cannot open input";
    case SMS_ERR_BAD_HEADER: return "invalid header or address";
    case SMS_ERR_DIGEST: return "digest algorithm not allowed";
    case SMS_ERR_BAD_DATA: return "malformed key, certificate or data";
    case SMS_ERR_KEY_MISMATCH: return "private key does not match the certificate";
    case SMS_ERR_PIN: return "wrong or refused PIN or passphrase";
    case SMS_ERR_SIGNER: return "signer failed";
    case SMS_ERR_UNAVAILABLE: return "signer or service unavailable";
    case SMS_ERR_ABORTED: return "message aborted";
    case SMS_ERR_STATE: return "operation not allowed in this state";
    case SMS_ERR_CRYPTO: return "cryptographic operation failed";
    case SMS_ERR_LIMIT: return "size or count limit exceeded";
    case SMS_ERR_UNSUPPORTED: return "not supported";
    case SMS_ERR_CANCELLED: return "cancelled";
    case SMS_ERR_TRANSPORT: return "transport failed";
    case SMS_ERR_SMTP_REFUSED: return "the mail server refused the message";
    case SMS_ERR_SMTP_TEMPFAIL: return "temporary mail server or connection failure";
    case SMS_ERR_SMTP_AUTH: return "mail server authentication failed";
    case SMS_ERR_SMTP_UNKNOWN: return "connection lost after the message was sent: possibly delivered";
    }
    return "unknown error";
}

int sms_error_exit_code(int err)
{
    switch (err) {
    case SMS_OK: return EX_OK;
    case SMS_ERR_INVALID_ARG:
    case SMS_ERR_DIGEST:
    case SMS_ERR_UNSUPPORTED: return EX_USAGE;
    case SMS_ERR_BAD_HEADER:
    case SMS_ERR_BAD_DATA:
    case SMS_ERR_KEY_MISMATCH:
    case SMS_ERR_LIMIT: return EX_DATAERR;
    case SMS_ERR_NOINPUT: return EX_NOINPUT;
    case SMS_ERR_IO: return EX_IOERR;
    case SMS_ERR_PIN:
    case SMS_ERR_CANCELLED: return EX_NOPERM;
    case SMS_ERR_UNAVAILABLE:
    case SMS_ERR_SMTP_REFUSED:
    case SMS_ERR_SIGNER: return EX_UNAVAILABLE;
    case SMS_ERR_SMTP_TEMPFAIL: return EX_TEMPFAIL;
    case SMS_ERR_SMTP_AUTH: return EX_NOPERM;
    /* Not TEMPFAIL: a retry could deliver the message twice. */
    case SMS_ERR_SMTP_UNKNOWN: return EX_PROTOCOL;
    case SMS_ERR_ABORTED:
    case SMS_ERR_TRANSPORT: return EX_TEMPFAIL;
    case SMS_ERR_NOMEM:
    case SMS_ERR_STATE:
    case SMS_ERR_CRYPTO: return EX_SOFTWARE;
    }
    return EX_SOFTWARE;
}
