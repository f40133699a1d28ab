/* smimestream: the one-pass signed message writer.
 *
 * The message is produced in steps into a staging buffer that the caller
 * drains with sms_message_read().  Bytes of the signed entity (the inner
 * multipart/mixed) are hashed as they are written to the staging buffer,
 * so every byte is produced once, hashed once and returned once.
 *
 * Layout:
 *   outer headers, multipart/signed; boundary=O            (not signed)
 *   --O CRLF
 *   [ Content-Type: multipart/mixed; boundary=I            (signed entity)
 *     --I  text body part
 *     CRLF --I  attachment parts (base64) ...
 *     [CRLF --I  partial-message notice]                  (after a cancel)
 *     CRLF --I-- CRLF ]
 *   CRLF --O  application/pkcs7-signature part (base64)    (not signed)
 *   CRLF --O-- CRLF
 *
 * Why the boundaries can never occur in the content: a boundary here is
 * "=_sms_" followed by 32 random hex digits.  Every body we write is base64
 * (alphabet A-Z a-z 0-9 + / and "=" only as final padding, never followed by
 * "_") or quoted-printable/7bit text from sms__qp_*, which encodes every "="
 * as "=3D" and refuses 7bit for text containing "=_" or lines starting with
 * "--".  Header lines never start with "--" because CR and LF are refused in
 * every header value.  So the sequence "--=_sms_" cannot appear at the start
 * of any content line, which is what RFC 2046 requires.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <gnutls/crypto.h>

#include "sms-core-private.h"

#define DEFAULT_CHUNK (64u * 1024)
#define MIN_CHUNK (4u * 1024)
#define MAX_CHUNK (16u * 1024 * 1024)

typedef struct address {
    char *header;   /* as written in To:/Cc:/From: */
    char *addr;     /* bare addr-spec for the envelope */
} address;

typedef struct attachment {
    sms_source *src;
    char *filename;
    char *content_type;
    uint64_t bytes;     /* read so far */
} attachment;

typedef enum {
    STEP_PREPARE = 0,
    STEP_HEADERS,
    STEP_BODY,
    STEP_ATTACH_HEADERS,
    STEP_ATTACH_DATA,
    STEP_NOTICE,
    STEP_CLOSE_INNER,
    STEP_SIGN,
    STEP_DONE,
} step;

struct sms_message {
    /* setup */
    address from;
    address *rcpt;          /* To then Cc */
    size_t n_to, n_cc;
    char *subject;
    sms__buf body;
    bool has_body;
    sms__buf extra_headers; /* "Name: value\r\n" lines, already encoded */
    time_t date;
    bool date_set;
    char *message_id;
    attachment *att;
    size_t n_att;
    sms_signer *signer;
    sms_digest digest;
    bool digest_set;
    unsigned flags;
    size_t chunk_size;

    /* streaming */
    step step;
    size_t cur;             /* current attachment */
    sms_sig_scheme scheme;
    char outer[40], inner[40];
    gnutls_hash_hd_t hash;
    sms__buf out;           /* staging */
    size_t out_pos;
    uint8_t *chunk;
    sms__b64 b64;
    uint64_t output_bytes;
    uint64_t source_bytes;
    bool partial;

    /* requests from other threads or signal handlers */
    int cancel_req;
    int abort_req;

    int error;
    char errmsg[512];
};

/* ---- errors ------------------------------------------------------------ */

static int fail(sms_message *m, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(sms_message *m, int code, const char *fmt, ...)
{
    if (m->error)
        return m->error;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->errmsg, sizeof m->errmsg, fmt, ap);
    va_end(ap);
    m->error = code;
    return code;
}

/* Setup errors are not sticky: the caller can fix the argument. */
static int refuse(sms_message *m, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int refuse(sms_message *m, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->errmsg, sizeof m->errmsg, fmt, ap);
    va_end(ap);
    return code;
}

#define SETUP_GUARD(m)                                                                      \
    do {                                                                                    \
        sms_return_val_if_fail((m) != NULL, SMS_ERR_INVALID_ARG);                           \
        if ((m)->step != STEP_PREPARE)                                                      \
            return refuse((m), SMS_ERR_STATE, "the message is already being read");         \
    } while (0)

/* ---- lifecycle --------------------------------------------------------- */

sms_message *sms_message_new(void)
{
    sms_message *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->digest = SMS_DIGEST_SHA256;
    m->chunk_size = DEFAULT_CHUNK;
    return m;
}

static void address_clear(address *a)
{
    free(a->header);
    free(a->addr);
    a->header = a->addr = NULL;
}

void sms_message_free(sms_message *m)
{
    if (!m)
        return;
    address_clear(&m->from);
    for (size_t i = 0; i < m->n_to + m->n_cc; i++)
        address_clear(&m->rcpt[i]);
    free(m->rcpt);
    free(m->subject);
    sms__buf_free(&m->body);
    sms__buf_free(&m->extra_headers);
    free(m->message_id);
    for (size_t i = 0; i < m->n_att; i++) {
        sms_source_free(m->att[i].src);
        free(m->att[i].filename);
        free(m->att[i].content_type);
    }
    free(m->att);
    sms_signer_unref(m->signer);
    if (m->hash)
        gnutls_hash_deinit(m->hash, NULL);
    sms__buf_free(&m->out);
    free(m->chunk);
    free(m);
}

/* ---- addresses and headers --------------------------------------------- */

static bool has_crlf(const char *s)
{
    return strpbrk(s, "\r\n") != NULL;
}

static bool is_atext(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

/* A conservative RFC 5321 mailbox: dot-atom local part, a domain of
 * letters, digits and hyphens (or an address literal). */
bool sms__addr_spec_valid(const char *a, size_t len)
{
    const char *at = memchr(a, '@', len);
    if (!at || at == a || len > 254)
        return false;
    size_t local = (size_t)(at - a), dom = len - local - 1;
    if (local > 64 || dom == 0 || memchr(at + 1, '@', dom))
        return false;
    for (size_t i = 0; i < local; i++) {
        char c = a[i];
        if (c == '.') {
            if (i == 0 || i == local - 1 || a[i - 1] == '.')
                return false;
        } else if (!is_atext((unsigned char)c)) {
            return false;
        }
    }
    const char *d = at + 1;
    if (d[0] == '[')
        return d[dom - 1] == ']' && dom > 2 && strspn(d + 1, "0123456789.:abcdefABCDEFIPv") == dom - 2;
    for (size_t i = 0; i < dom; i++) {
        char c = d[i];
        if (c == '.') {
            if (i == 0 || i == dom - 1 || d[i - 1] == '.')
                return false;
        } else if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     c == '-')) {
            return false;
        }
    }
    return true;
}

/* The display name without surrounding quotes the caller may have put
 * there ("Doe, John" <j@example.org>), with backslash escapes undone. */
static char *unquote_name(const char *in, size_t len)
{
    char *out = malloc(len + 1), *o = out;
    if (!out)
        return NULL;
    if (len >= 2 && in[0] == '"' && in[len - 1] == '"') {
        for (size_t i = 1; i + 1 < len; i++) {
            if (in[i] == '\\' && i + 2 < len)
                i++;
            *o++ = in[i];
        }
    } else {
        memcpy(o, in, len);
        o += len;
    }
    *o = '\0';
    return out;
}

/* Parse "addr" or "Display Name <addr>" into header and envelope forms. */
static int parse_address(sms_message *m, const char *in, const char *field, address *ret)
{
    sms_return_val_if_fail(in != NULL, SMS_ERR_INVALID_ARG);
    if (has_crlf(in))
        return refuse(m, SMS_ERR_BAD_HEADER,
                      "%s address contains a line break (CR or LF); refusing it to prevent "
                      "header injection",
                      field);
    size_t n = strlen(in);
    if (n > SMS_MAX_HEADER_VALUE)
        return refuse(m, SMS_ERR_BAD_HEADER, "%s address is longer than %d bytes", field,
                      SMS_MAX_HEADER_VALUE);

    const char *lt = strrchr(in, '<');
    const char *spec = in;
    size_t spec_len = n;
    size_t name_len = 0;
    if (lt) {
        const char *gt = strchr(lt, '>');
        if (!gt || gt[1] != '\0')
            return refuse(m, SMS_ERR_BAD_HEADER,
                          "%s address '%s' is malformed: expected 'Name <user@example.org>'",
                          field, in);
        spec = lt + 1;
        spec_len = (size_t)(gt - spec);
        name_len = (size_t)(lt - in);
        while (name_len && (in[name_len - 1] == ' ' || in[name_len - 1] == '\t'))
            name_len--;
        if (name_len > SMS_MAX_DISPLAY_NAME)
            return refuse(m, SMS_ERR_BAD_HEADER, "%s display name is longer than %d bytes",
                          field, SMS_MAX_DISPLAY_NAME);
    } else {
        while (spec_len && spec[spec_len - 1] == ' ')
            spec_len--;
        while (spec_len && *spec == ' ')
            spec++, spec_len--;
    }
    if (!sms__addr_spec_valid(spec, spec_len))
        return refuse(m, SMS_ERR_BAD_HEADER,
                      "%s address '%s' is not a valid mailbox (expected user@example.org, "
                      "ASCII only)",
                      field, in);

    sms__buf h;
    sms__buf_init(&h);
    if (name_len) {
        char *name = unquote_name(in, name_len);
        if (!name)
            return SMS_ERR_NOMEM;
        bool ascii = true;
        for (const char *c = name; *c; c++)
            if ((unsigned char)*c >= 0x7f || (unsigned char)*c < 0x20)
                ascii = false;
        unsigned col = (unsigned)strlen(field) + 2;
        if (ascii) {
            /* A quoted-string, safe for any specials in the name, folded
             * before a space when long (FWS is allowed inside it). */
            sms__buf_append(&h, "\"", 1);
            col++;
            for (const char *c = name; *c; c++) {
                if (*c == ' ' && col >= 70) {
                    sms__buf_append(&h, "\r\n", 2);
                    col = 0;
                }
                if (*c == '"' || *c == '\\') {
                    sms__buf_append(&h, "\\", 1);
                    col++;
                }
                sms__buf_append(&h, c, 1);
                col++;
            }
            sms__buf_append(&h, "\"", 1);
        } else if (!sms__hdr_encode(name, col, &h)) {
            free(name);
            sms__buf_free(&h);
            return refuse(m, SMS_ERR_BAD_HEADER,
                          "%s display name is not valid UTF-8 or contains control characters",
                          field);
        }
        free(name);
        /* Fold before the angle address when the line would pass 76. */
        const uint8_t *nl = h.len ? memrchr(h.data, '\n', h.len) : NULL;
        size_t last = nl ? h.len - (size_t)(nl + 1 - h.data) : h.len + strlen(field) + 2;
        sms__buf_puts(&h, last + spec_len + 4 > 76 ? "\r\n <" : " <");
        sms__buf_append(&h, spec, spec_len);
        sms__buf_append(&h, ">", 1);
    } else {
        sms__buf_append(&h, spec, spec_len);
    }
    sms__buf_append(&h, "", 1);
    char *addr = strndup(spec, spec_len);
    if (h.failed || !addr) {
        free(addr);
        sms__buf_free(&h);
        return SMS_ERR_NOMEM;
    }
    ret->header = (char *)h.data; /* ownership moves out of the buffer */
    ret->addr = addr;
    return SMS_OK;
}

int sms_message_set_from(sms_message *m, const char *address_in)
{
    SETUP_GUARD(m);
    address a = { 0 };
    int r = parse_address(m, address_in, "From", &a);
    if (r < 0)
        return r;
    address_clear(&m->from);
    m->from = a;
    return SMS_OK;
}

static int add_rcpt(sms_message *m, const char *in, bool cc)
{
    SETUP_GUARD(m);
    if (m->n_to + m->n_cc >= SMS_MAX_RECIPIENTS)
        return refuse(m, SMS_ERR_LIMIT, "more than %d recipients", SMS_MAX_RECIPIENTS);
    address a = { 0 };
    int r = parse_address(m, in, cc ? "Cc" : "To", &a);
    if (r < 0)
        return r;
    address *n = realloc(m->rcpt, (m->n_to + m->n_cc + 1) * sizeof *n);
    if (!n) {
        address_clear(&a);
        return SMS_ERR_NOMEM;
    }
    m->rcpt = n;
    if (cc) {
        m->rcpt[m->n_to + m->n_cc] = a;
        m->n_cc++;
    } else {
        /* Keep To before Cc. */
        memmove(&m->rcpt[m->n_to + 1], &m->rcpt[m->n_to], m->n_cc * sizeof *n);
        m->rcpt[m->n_to] = a;
        m->n_to++;
    }
    return SMS_OK;
}

int sms_message_add_to(sms_message *m, const char *a)
{
    return add_rcpt(m, a, false);
}

int sms_message_add_cc(sms_message *m, const char *a)
{
    return add_rcpt(m, a, true);
}

int sms_message_set_subject(sms_message *m, const char *utf8)
{
    SETUP_GUARD(m);
    sms_return_val_if_fail(utf8 != NULL, SMS_ERR_INVALID_ARG);
    if (has_crlf(utf8))
        return refuse(m, SMS_ERR_BAD_HEADER,
                      "Subject contains a line break (CR or LF); refusing it to prevent header "
                      "injection");
    size_t n = strlen(utf8);
    if (n > SMS_MAX_HEADER_VALUE)
        return refuse(m, SMS_ERR_BAD_HEADER, "Subject is longer than %d bytes",
                      SMS_MAX_HEADER_VALUE);
    if (!sms__utf8_valid((const uint8_t *)utf8, n))
        return refuse(m, SMS_ERR_BAD_HEADER, "Subject is not valid UTF-8");
    char *s = strdup(utf8);
    if (!s)
        return SMS_ERR_NOMEM;
    free(m->subject);
    m->subject = s;
    return SMS_OK;
}

int sms_message_set_body(sms_message *m, const char *utf8, size_t len)
{
    SETUP_GUARD(m);
    sms_return_val_if_fail(utf8 != NULL || len == 0, SMS_ERR_INVALID_ARG);
    if (len > SMS_MAX_BODY)
        return refuse(m, SMS_ERR_LIMIT,
                      "the text body is %zu bytes; the limit is %u (send large text as an "
                      "attachment)",
                      len, SMS_MAX_BODY);
    if (!sms__utf8_valid((const uint8_t *)utf8, len) || (len && memchr(utf8, '\0', len)))
        return refuse(m, SMS_ERR_BAD_DATA,
                      "the text body is not valid UTF-8 text (convert it, or send it as an "
                      "attachment)");
    sms__buf_clear(&m->body);
    sms__buf_append(&m->body, utf8, len);
    if (m->body.failed)
        return SMS_ERR_NOMEM;
    m->has_body = true;
    return SMS_OK;
}

static const char *const reserved_headers[] = {
    "from", "to", "cc", "bcc", "subject", "date", "message-id", "mime-version",
    "content-type", "content-transfer-encoding", "content-disposition", "sender", "reply-to",
};

int sms_message_add_header(sms_message *m, const char *name, const char *value)
{
    SETUP_GUARD(m);
    sms_return_val_if_fail(name != NULL && value != NULL, SMS_ERR_INVALID_ARG);
    size_t nl = strlen(name);
    if (nl == 0 || nl > 76)
        return refuse(m, SMS_ERR_BAD_HEADER, "header name '%s' is empty or too long", name);
    for (size_t i = 0; i < nl; i++)
        if ((unsigned char)name[i] <= 0x20 || (unsigned char)name[i] >= 0x7f || name[i] == ':')
            return refuse(m, SMS_ERR_BAD_HEADER, "header name '%s' has invalid characters",
                          name);
    for (size_t i = 0; i < sizeof reserved_headers / sizeof *reserved_headers; i++)
        if (strcasecmp(name, reserved_headers[i]) == 0)
            return refuse(m, SMS_ERR_BAD_HEADER,
                          "header '%s' is set by smimestream itself; use the matching option",
                          name);
    if (has_crlf(value))
        return refuse(m, SMS_ERR_BAD_HEADER,
                      "header '%s' contains a line break (CR or LF); refusing it to prevent "
                      "header injection",
                      name);
    if (strlen(value) > SMS_MAX_HEADER_VALUE || m->extra_headers.len > 64 * 1024)
        return refuse(m, SMS_ERR_LIMIT, "header '%s' is too long, or too many headers", name);
    size_t mark = m->extra_headers.len;
    sms__buf_printf(&m->extra_headers, "%s: ", name);
    if (!sms__hdr_encode(value, (unsigned)nl + 2, &m->extra_headers)) {
        m->extra_headers.len = mark;
        return refuse(m, SMS_ERR_BAD_HEADER, "header '%s' is not valid UTF-8", name);
    }
    sms__buf_append(&m->extra_headers, "\r\n", 2);
    return m->extra_headers.failed ? SMS_ERR_NOMEM : SMS_OK;
}

int sms_message_set_date(sms_message *m, time_t when)
{
    SETUP_GUARD(m);
    struct tm tm;
    /* The Date header and the CMS signingTime both need a four-digit year. */
    if (!gmtime_r(&when, &tm) || tm.tm_year + 1900 < 1 || tm.tm_year + 1900 > 9999)
        return refuse(m, SMS_ERR_INVALID_ARG, "the date is outside the years 1 to 9999");
    m->date = when;
    m->date_set = true;
    return SMS_OK;
}

int sms_message_set_message_id(sms_message *m, const char *id)
{
    SETUP_GUARD(m);
    sms_return_val_if_fail(id != NULL, SMS_ERR_INVALID_ARG);
    const char *at = strchr(id, '@');
    bool ok = at && at != id && at[1] && strlen(id) < 250;
    for (const char *p = id; ok && *p; p++)
        if (!(is_atext((unsigned char)*p) || *p == '.' || *p == '@'))
            ok = false;
    if (!ok)
        return refuse(m, SMS_ERR_BAD_HEADER,
                      "Message-ID '%s' is not of the form left@right (no brackets, no spaces)",
                      has_crlf(id) ? "(contains a line break)" : id);
    char *s = strdup(id);
    if (!s)
        return SMS_ERR_NOMEM;
    free(m->message_id);
    m->message_id = s;
    return SMS_OK;
}

/* ---- attachments ------------------------------------------------------- */

static const struct {
    const char *ext;
    const char *type;
} mime_types[] = {
    { "pdf", "application/pdf" }, { "ps", "application/postscript" },
    { "jpg", "image/jpeg" }, { "jpeg", "image/jpeg" }, { "png", "image/png" },
    { "gif", "image/gif" }, { "tif", "image/tiff" }, { "tiff", "image/tiff" },
    { "bmp", "image/bmp" }, { "webp", "image/webp" }, { "svg", "image/svg+xml" },
    { "txt", "text/plain" }, { "csv", "text/csv" }, { "html", "text/html" },
    { "htm", "text/html" }, { "xml", "application/xml" }, { "json", "application/json" },
    { "zip", "application/zip" }, { "gz", "application/gzip" }, { "tar", "application/x-tar" },
    { "xz", "application/x-xz" }, { "7z", "application/x-7z-compressed" },
    { "doc", "application/msword" },
    { "docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document" },
    { "xls", "application/vnd.ms-excel" },
    { "xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" },
    { "odt", "application/vnd.oasis.opendocument.text" },
    { "ods", "application/vnd.oasis.opendocument.spreadsheet" },
    { "mp3", "audio/mpeg" }, { "wav", "audio/wav" }, { "ogg", "audio/ogg" },
    { "mp4", "video/mp4" }, { "webm", "video/webm" }, { "mkv", "video/x-matroska" },
    { "ics", "text/calendar" }, { "vcf", "text/vcard" }, { "eml", "message/rfc822" },
};

static const char *guess_type(const char *filename)
{
    const char *dot = filename ? strrchr(filename, '.') : NULL;
    if (dot)
        for (size_t i = 0; i < sizeof mime_types / sizeof *mime_types; i++)
            if (strcasecmp(dot + 1, mime_types[i].ext) == 0)
                return mime_types[i].type;
    return "application/octet-stream";
}

static bool is_token_char(int c)
{
    return c > 0x20 && c < 0x7f && !strchr("()<>@,;:\\\"/[]?=", c);
}

static bool content_type_valid(const char *t)
{
    const char *slash = strchr(t, '/');
    if (!slash || slash == t || !slash[1] || strlen(t) > 127)
        return false;
    for (const char *p = t; *p; p++)
        if (p != slash && !is_token_char((unsigned char)*p))
            return false;
    return true;
}

int sms_message_add_attachment(sms_message *m, sms_source *src, const char *filename,
                               const char *content_type)
{
    if (!m || !src || m->step != STEP_PREPARE || m->n_att >= SMS_MAX_ATTACHMENTS) {
        sms_source_free(src);
        sms_return_val_if_fail(m != NULL && src != NULL, SMS_ERR_INVALID_ARG);
        if (m->step != STEP_PREPARE)
            return refuse(m, SMS_ERR_STATE, "the message is already being read");
        return refuse(m, SMS_ERR_LIMIT, "more than %d attachments", SMS_MAX_ATTACHMENTS);
    }
    int r = SMS_OK;
    char name_buf[32];
    if (!filename)
        filename = sms_source_get_name(src);
    if (!filename) {
        snprintf(name_buf, sizeof name_buf, "attachment-%zu.bin", m->n_att + 1);
        filename = name_buf;
    }
    size_t fl = strlen(filename);
    if (fl == 0 || fl > SMS_MAX_FILENAME || has_crlf(filename) ||
        !sms__utf8_valid((const uint8_t *)filename, fl)) {
        r = refuse(m, SMS_ERR_BAD_HEADER,
                   "attachment name is empty, longer than %d bytes, not UTF-8, or contains a "
                   "line break",
                   SMS_MAX_FILENAME);
        goto fail;
    }
    for (size_t i = 0; i < fl; i++)
        if ((unsigned char)filename[i] < 0x20 || filename[i] == 0x7f) {
            r = refuse(m, SMS_ERR_BAD_HEADER, "attachment name contains control characters");
            goto fail;
        }
    if (content_type && (has_crlf(content_type) || !content_type_valid(content_type))) {
        r = refuse(m, SMS_ERR_BAD_HEADER,
                   "attachment content type '%s' is not of the form type/subtype",
                   has_crlf(content_type) ? "(contains a line break)" : content_type);
        goto fail;
    }
    attachment *n = realloc(m->att, (m->n_att + 1) * sizeof *n);
    if (!n) {
        r = SMS_ERR_NOMEM;
        goto fail;
    }
    m->att = n;
    attachment *a = &m->att[m->n_att];
    memset(a, 0, sizeof *a);
    a->filename = strdup(filename);
    a->content_type = strdup(content_type ? content_type : guess_type(filename));
    if (!a->filename || !a->content_type) {
        free(a->filename);
        free(a->content_type);
        r = SMS_ERR_NOMEM;
        goto fail;
    }
    for (char *p = a->content_type; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    a->src = src;
    m->n_att++;
    return SMS_OK;
fail:
    sms_source_free(src);
    return r;
}

int sms_message_set_signer(sms_message *m, sms_signer *signer)
{
    SETUP_GUARD(m);
    sms_return_val_if_fail(signer != NULL, SMS_ERR_INVALID_ARG);
    sms_signer_ref(signer);
    sms_signer_unref(m->signer);
    m->signer = signer;
    return SMS_OK;
}

int sms_message_set_digest(sms_message *m, sms_digest digest)
{
    SETUP_GUARD(m);
    if (sms__digest_gnutls(digest) == GNUTLS_DIG_UNKNOWN)
        return refuse(m, SMS_ERR_DIGEST, "unknown digest algorithm");
    m->digest = digest;
    m->digest_set = true;
    return SMS_OK;
}

int sms_message_set_flags(sms_message *m, unsigned flags)
{
    SETUP_GUARD(m);
    if (flags & ~(unsigned)(SMS_MESSAGE_ALLOW_WEAK_DIGEST | SMS_MESSAGE_RSA_PSS))
        return refuse(m, SMS_ERR_INVALID_ARG, "unknown message flags 0x%x", flags);
    m->flags = flags;
    return SMS_OK;
}

int sms_message_set_chunk_size(sms_message *m, size_t size)
{
    SETUP_GUARD(m);
    if (size < MIN_CHUNK || size > MAX_CHUNK)
        return refuse(m, SMS_ERR_INVALID_ARG, "chunk size %zu is outside %u..%u bytes", size,
                      MIN_CHUNK, MAX_CHUNK);
    m->chunk_size = size;
    return SMS_OK;
}

/* ---- emitting ---------------------------------------------------------- */

/* Bytes of the signed entity: staged and hashed in the same pass. */
static void emit_signed(sms_message *m, const void *p, size_t n)
{
    sms__buf_append(&m->out, p, n);
    if (n)
        gnutls_hash(m->hash, p, n);
}

/* Format into the staging buffer; hash what was added when `sign`. */
static void emitf(sms_message *m, bool sign, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Hash what was staged since mark: the bytes of the signed entity are
 * hashed exactly as they were written. */
static void hash_since(sms_message *m, size_t mark)
{
    if (!m->out.failed && m->out.len > mark)
        gnutls_hash(m->hash, m->out.data + mark, m->out.len - mark);
}

static void emitf(sms_message *m, bool sign, const char *fmt, ...)
{
    size_t mark = m->out.len;
    va_list ap;
    va_start(ap, fmt);
    sms__buf_vprintf(&m->out, fmt, ap);
    va_end(ap);
    if (sign)
        hash_since(m, mark);
}

/* ---- preparing --------------------------------------------------------- */

static bool random_hex(char *out, size_t n_bytes)
{
    uint8_t raw[32];
    static const char hex[] = "0123456789abcdef";
    if (n_bytes > sizeof raw)
        n_bytes = sizeof raw;
    if (gnutls_rnd(GNUTLS_RND_NONCE, raw, n_bytes) < 0)
        return false;
    for (size_t i = 0; i < n_bytes; i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[2 * n_bytes] = '\0';
    return true;
}

int sms_message_prepare(sms_message *m)
{
    sms_return_val_if_fail(m != NULL, SMS_ERR_INVALID_ARG);
    if (m->error)
        return m->error;
    if (m->step != STEP_PREPARE)
        return SMS_OK;
    /* Checks first: their errors are not sticky, the caller can fix the
     * setup and try again.  Nothing has been produced yet. */
    if (!m->from.addr)
        return refuse(m, SMS_ERR_INVALID_ARG, "no sender: set a From address");
    if (m->n_to + m->n_cc == 0)
        return refuse(m, SMS_ERR_INVALID_ARG, "no recipients: add at least one To or Cc address");
    if (!m->signer)
        return refuse(m, SMS_ERR_INVALID_ARG, "no signer: a signed message needs a key");

    int r = sms_signer_scheme(m->signer, (m->flags & SMS_MESSAGE_RSA_PSS) != 0, &m->scheme);
    if (r < 0)
        return refuse(m, r,
                    "the signer certificate's key type is not supported (use RSA, RSA-PSS, "
                    "ECDSA or Ed25519)");
    if ((m->flags & SMS_MESSAGE_RSA_PSS) && m->scheme != SMS_SIG_RSA_PSS)
        return refuse(m, SMS_ERR_UNSUPPORTED,
                      "RSA-PSS was asked for, but the signer's key is not an RSA key; drop --pss");
    if (m->scheme == SMS_SIG_ED25519) {
        /* RFC 8419 §3.1: with signed attributes, Ed25519 uses SHA-512. */
        if (m->digest_set && m->digest != SMS_DIGEST_SHA512)
            return refuse(m, SMS_ERR_DIGEST,
                        "Ed25519 signatures use SHA-512 (RFC 8419); drop --digest or use "
                        "--digest sha512");
        m->digest = SMS_DIGEST_SHA512;
    }
    if (!m->digest_set)
        m->digest = sms__signer_default_digest(m->signer);
    if (sms__digest_is_weak(m->digest) && !(m->flags & SMS_MESSAGE_ALLOW_WEAK_DIGEST))
        return refuse(m, SMS_ERR_DIGEST,
                    "%s is a weak digest and is refused; use sha256 (the default), or allow it "
                    "explicitly with --allow-weak-digest",
                    sms_digest_name(m->digest));
    if (m->scheme == SMS_SIG_RSA_PSS &&
        sms__sign_algorithm(m->scheme, m->digest) == GNUTLS_SIGN_UNKNOWN)
        return refuse(m, SMS_ERR_DIGEST, "RSA-PSS needs sha256, sha384 or sha512, not %s",
                    sms_digest_name(m->digest));

    if (!m->date_set)
        m->date = time(NULL);
    /* Boundaries must be unpredictable and distinct: no random, no message. */
    char rnd[33], outer_rnd[33], inner_rnd[33];
    if (!random_hex(rnd, 16) || !random_hex(outer_rnd, 16) || !random_hex(inner_rnd, 16))
        return fail(m, SMS_ERR_CRYPTO, "the random number generator failed");
    if (!m->message_id) {
        const char *dom = strchr(m->from.addr, '@') + 1;
        size_t len = strlen(rnd) + strlen(dom) + 16;
        m->message_id = malloc(len);
        if (!m->message_id)
            return fail(m, SMS_ERR_NOMEM, "out of memory");
        snprintf(m->message_id, len, "%s.sms@%s", rnd, dom);
    }
    snprintf(m->outer, sizeof m->outer, "=_sms_%s", outer_rnd);
    snprintf(m->inner, sizeof m->inner, "=_sms_%s", inner_rnd);

    m->chunk = malloc(m->chunk_size);
    if (!m->chunk || !sms__buf_reserve(&m->out, sms__b64_bound(m->chunk_size) + 8192))
        return fail(m, SMS_ERR_NOMEM, "out of memory for a %zu-byte chunk", m->chunk_size);
    if (gnutls_hash_init(&m->hash, sms__digest_gnutls(m->digest)) < 0)
        return fail(m, SMS_ERR_CRYPTO, "cannot start the %s digest", sms_digest_name(m->digest));
    m->step = STEP_HEADERS;
    return SMS_OK;
}

/* ---- the steps --------------------------------------------------------- */

static void format_date(time_t t, char *out, size_t size)
{
    static const char days[][4] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
    static const char months[][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
    struct tm tm;
    if (!gmtime_r(&t, &tm)) /* cannot happen: set_date checked the range */
        memset(&tm, 0, sizeof tm);
    snprintf(out, size, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday], tm.tm_mday,
             months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

static void emit_address_list(sms_message *m, const char *field, const address *list, size_t n)
{
    if (n == 0)
        return;
    emitf(m, false, "%s: ", field);
    for (size_t i = 0; i < n; i++)
        emitf(m, false, "%s%s", list[i].header, i + 1 < n ? ",\r\n " : "\r\n");
}

static int step_headers(sms_message *m)
{
    char date[128];
    format_date(m->date, date, sizeof date);
    emitf(m, false, "From: %s\r\n", m->from.header);
    emit_address_list(m, "To", m->rcpt, m->n_to);
    emit_address_list(m, "Cc", m->rcpt + m->n_to, m->n_cc);
    if (m->subject) {
        sms__buf_puts(&m->out, "Subject: ");
        if (!sms__hdr_encode(m->subject, 9, &m->out))
            return fail(m, SMS_ERR_BAD_HEADER, "Subject cannot be encoded");
        sms__buf_puts(&m->out, "\r\n");
    }
    emitf(m, false, "Date: %s\r\nMessage-ID: <%s>\r\n", date, m->message_id);
    sms__buf_append(&m->out, m->extra_headers.data, m->extra_headers.len);
    emitf(m, false,
          "MIME-Version: 1.0\r\n"
          "Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\";\r\n"
          " micalg=%s; boundary=\"%s\"\r\n"
          "\r\n"
          "This is a cryptographically signed message in MIME format.\r\n"
          "\r\n"
          "--%s\r\n",
          sms_digest_micalg(m->digest), m->outer, m->outer);
    /* The signed entity starts here. */
    emitf(m, true, "Content-Type: multipart/mixed;\r\n boundary=\"%s\"\r\n\r\n", m->inner);
    m->step = STEP_BODY;
    return SMS_OK;
}

/* LF -> CRLF for text already known to be 7bit-safe. */
static void emit_7bit(sms_message *m, const uint8_t *p, size_t n)
{
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n' && (i == 0 || p[i - 1] != '\r')) {
            emit_signed(m, p + start, i - start);
            emit_signed(m, "\r\n", 2);
            start = i + 1;
        }
    }
    emit_signed(m, p + start, n - start);
}

static void emit_qp(sms_message *m, const uint8_t *p, size_t n)
{
    size_t mark = m->out.len;
    sms__qp qp;
    sms__qp_init(&qp);
    sms__qp_update(&qp, p, n, &m->out);
    sms__qp_final(&qp, &m->out);
    hash_since(m, mark);
}

static void emit_text_part(sms_message *m, const uint8_t *text, size_t n, const char *extra)
{
    bool seven = sms__text_is_7bit_safe(text, n);
    emitf(m, true,
          "Content-Type: text/plain; charset=utf-8\r\n"
          "%s"
          "Content-Transfer-Encoding: %s\r\n\r\n",
          extra, seven ? "7bit" : "quoted-printable");
    if (seven)
        emit_7bit(m, text, n);
    else
        emit_qp(m, text, n);
}

static int step_body(sms_message *m)
{
    emitf(m, true, "--%s\r\n", m->inner);
    emit_text_part(m, m->body.data, m->body.len, "");
    m->cur = 0;
    m->step = m->n_att ? STEP_ATTACH_HEADERS : STEP_CLOSE_INNER;
    return SMS_OK;
}

static int step_attach_headers(sms_message *m)
{
    attachment *a = &m->att[m->cur];
    emitf(m, true, "\r\n--%s\r\nContent-Type: %s", m->inner, a->content_type);
    size_t mark = m->out.len;
    bool ok = sms__mime_param(&m->out, "name", a->filename);
    sms__buf_puts(&m->out, "\r\nContent-Disposition: attachment");
    ok = ok && sms__mime_param(&m->out, "filename", a->filename);
    sms__buf_puts(&m->out, "\r\nContent-Transfer-Encoding: base64\r\n\r\n");
    if (!ok)
        return fail(m, SMS_ERR_BAD_HEADER, "attachment name '%s' cannot be encoded",
                    a->filename);
    hash_since(m, mark);
    sms__b64_init(&m->b64);
    m->step = STEP_ATTACH_DATA;
    return SMS_OK;
}

static void finish_attachment(sms_message *m)
{
    if (!sms__buf_reserve(&m->out, 16))
        return;
    size_t n = sms__b64_final(&m->b64, m->out.data + m->out.len);
    gnutls_hash(m->hash, m->out.data + m->out.len, n);
    m->out.len += n;
}

/* A cancel: close the attachment here and go on to the notice. */
static int cut_attachment(sms_message *m)
{
    finish_attachment(m);
    m->partial = true;
    m->step = STEP_NOTICE;
    return SMS_OK;
}

static int step_attach_data(sms_message *m)
{
    attachment *a = &m->att[m->cur];
    if (__atomic_load_n(&m->cancel_req, __ATOMIC_ACQUIRE))
        return cut_attachment(m);
    size_t n = 0;
    char err[256] = "";
    int r = sms__source_read(a->src, m->chunk, m->chunk_size, &n, err, sizeof err);
    if (r == SMS__INTERRUPTED)
        return SMS_OK; /* a signal: look at the flags again */
    if (r < 0)
        return fail(m, r, "attachment %zu (%s): %s", m->cur + 1, a->filename,
                    err[0] ? err : sms_strerror(r));
    if (n == 0 && __atomic_load_n(&m->cancel_req, __ATOMIC_ACQUIRE)) {
        /* Ctrl-C in a shell also stops the program feeding the pipe, so its
         * end-of-file may arrive before we see the cancel: the attachment is
         * cut short either way, and says so. */
        return cut_attachment(m);
    }
    if (n == 0) {
        finish_attachment(m);
        m->cur++;
        m->step = m->cur < m->n_att ? STEP_ATTACH_HEADERS : STEP_CLOSE_INNER;
        return SMS_OK;
    }
    a->bytes += n;
    m->source_bytes += n;
    if (!sms__buf_reserve(&m->out, sms__b64_bound(n)))
        return fail(m, SMS_ERR_NOMEM, "out of memory");
    uint8_t *dst = m->out.data + m->out.len;
    size_t w = sms__b64_update(&m->b64, m->chunk, n, dst);
    gnutls_hash(m->hash, dst, w);
    m->out.len += w;
    return SMS_OK;
}

static void human_size(uint64_t n, char *out, size_t size)
{
    if (n < 1024)
        snprintf(out, size, "%llu bytes", (unsigned long long)n);
    else if (n < 1024 * 1024)
        snprintf(out, size, "%llu bytes (%.1f KiB)", (unsigned long long)n, n / 1024.0);
    else
        snprintf(out, size, "%llu bytes (%.1f MiB)", (unsigned long long)n, n / 1048576.0);
}

/* The notice after a cancel: which attachment was cut, how much of it was
 * sent, and which were not sent at all. */
static int step_notice(sms_message *m)
{
    sms__buf t;
    sms__buf_init(&t);
    char sent[64], total[64];
    sms__buf_puts(&t, "This message is PARTIAL: sending was cancelled before it was complete.\n\n");
    if (m->cur < m->n_att) {
        attachment *a = &m->att[m->cur];
        human_size(a->bytes, sent, sizeof sent);
        int64_t size = sms_source_get_size(a->src);
        if (size >= 0)
            human_size((uint64_t)size, total, sizeof total);
        sms__buf_printf(&t,
                        "Attachment %zu of %zu, \"%s\", is incomplete: %s were sent%s%s.\n",
                        m->cur + 1, m->n_att, a->filename, sent, size >= 0 ? " of " : "",
                        size >= 0 ? total : "");
        for (size_t i = m->cur + 1; i < m->n_att; i++)
            sms__buf_printf(&t, "Attachment %zu of %zu, \"%s\", was not sent.\n", i + 1,
                            m->n_att, m->att[i].filename);
    }
    sms__buf_puts(&t, "\nThe signature covers exactly what was sent, including this notice.\n");
    if (t.failed) {
        sms__buf_free(&t);
        return fail(m, SMS_ERR_NOMEM, "out of memory");
    }
    emitf(m, true, "\r\n--%s\r\n", m->inner);
    emit_text_part(m, t.data, t.len,
                   "Content-Disposition: inline; filename=\"PARTIAL-MESSAGE.txt\"\r\n"
                   "Content-Description: smimestream partial message notice\r\n");
    sms__buf_free(&t);
    m->step = STEP_CLOSE_INNER;
    return SMS_OK;
}

static int step_close_inner(sms_message *m)
{
    emitf(m, true, "\r\n--%s--\r\n", m->inner);
    m->step = STEP_SIGN;
    return SMS_OK;
}

static int step_sign(sms_message *m)
{
    uint8_t content_digest[64], tbs_digest[64];
    size_t dlen = sms_digest_length(m->digest);
    gnutls_hash_deinit(m->hash, content_digest);
    m->hash = NULL;

    char err[512] = "";
    uint8_t *attrs = NULL, *cms = NULL;
    size_t attrs_len = 0, cms_len = 0;
    int r = sms__cms_signed_attrs(m->digest, content_digest, dlen, m->date, &attrs, &attrs_len,
                                  err, sizeof err);
    if (r < 0)
        return fail(m, r, "building the signed attributes failed: %s", err);
    if (gnutls_hash_fast(sms__digest_gnutls(m->digest), attrs, attrs_len, tbs_digest) < 0) {
        free(attrs);
        return fail(m, SMS_ERR_CRYPTO, "hashing the signed attributes failed");
    }
    sms_sign_request req = {
        .struct_size = sizeof req,
        .scheme = m->scheme,
        .digest = m->digest,
        .tbs = attrs,
        .tbs_len = attrs_len,
        .tbs_digest = tbs_digest,
        .tbs_digest_len = dlen,
    };
    uint8_t sig[SMS_SIGNATURE_MAX];
    size_t sig_len = sizeof sig;
    r = sms_signer_sign(m->signer, &req, sig, &sig_len, err, sizeof err);
    if (r < 0) {
        free(attrs);
        return fail(m, r, "%s", err);
    }
    size_t n_certs = sms_signer_cert_count(m->signer);
    const uint8_t *certs[32];
    size_t cert_lens[32];
    for (size_t i = 0; i < n_certs && i < 32; i++)
        certs[i] = sms_signer_cert(m->signer, i, &cert_lens[i]);
    r = sms__cms_signed_data(m->digest, m->scheme, attrs, attrs_len, sig, sig_len, certs,
                             cert_lens, n_certs, &cms, &cms_len, err, sizeof err);
    free(attrs);
    if (r < 0)
        return fail(m, r, "building the CMS signature failed: %s", err);

    emitf(m, false,
          "\r\n--%s\r\n"
          "Content-Type: application/pkcs7-signature; name=\"smime.p7s\"\r\n"
          "Content-Transfer-Encoding: base64\r\n"
          "Content-Disposition: attachment; filename=\"smime.p7s\"\r\n"
          "Content-Description: S/MIME Cryptographic Signature\r\n\r\n",
          m->outer);
    sms__b64 e;
    sms__b64_init(&e);
    if (sms__buf_reserve(&m->out, sms__b64_bound(cms_len))) {
        m->out.len += sms__b64_update(&e, cms, cms_len, m->out.data + m->out.len);
        m->out.len += sms__b64_final(&e, m->out.data + m->out.len);
    }
    free(cms);
    emitf(m, false, "\r\n--%s--\r\n", m->outer);
    m->step = STEP_DONE;
    return SMS_OK;
}

static int produce(sms_message *m)
{
    switch (m->step) {
    case STEP_PREPARE: return sms_message_prepare(m);
    case STEP_HEADERS: return step_headers(m);
    case STEP_BODY: return step_body(m);
    case STEP_ATTACH_HEADERS: return step_attach_headers(m);
    case STEP_ATTACH_DATA: return step_attach_data(m);
    case STEP_NOTICE: return step_notice(m);
    case STEP_CLOSE_INNER: return step_close_inner(m);
    case STEP_SIGN: return step_sign(m);
    case STEP_DONE: return SMS_OK;
    }
    return SMS_ERR_STATE;
}

int sms_message_read(sms_message *m, void *buf, size_t cap, size_t *ret_n)
{
    sms_return_val_if_fail(m != NULL, SMS_ERR_INVALID_ARG);
    sms_return_val_if_fail((buf != NULL && cap > 0) && ret_n != NULL, SMS_ERR_INVALID_ARG);
    if (m->error)
        return m->error;
    if (m->step == STEP_PREPARE) {
        int r = sms_message_prepare(m);
        if (r < 0)
            return r; /* setup problems stay fixable: see prepare */
    }

    while (m->out_pos == m->out.len) {
        /* Abort wins over everything, even after the last byte was staged:
         * the transport must not finish an aborted message. */
        if (__atomic_load_n(&m->abort_req, __ATOMIC_ACQUIRE))
            return fail(m, SMS_ERR_ABORTED,
                        "the message was aborted; it must not be delivered");
        if (m->step == STEP_DONE) {
            *ret_n = 0;
            return SMS_OK;
        }
        sms__buf_clear(&m->out);
        m->out_pos = 0;
        int r = produce(m);
        if (r < 0)
            return fail(m, r, "%s", sms_strerror(r));
        if (m->out.failed)
            return fail(m, SMS_ERR_NOMEM, "out of memory while writing the message");
    }
    if (__atomic_load_n(&m->abort_req, __ATOMIC_ACQUIRE))
        return fail(m, SMS_ERR_ABORTED, "the message was aborted; it must not be delivered");
    size_t n = m->out.len - m->out_pos;
    if (n > cap)
        n = cap;
    memcpy(buf, m->out.data + m->out_pos, n);
    m->out_pos += n;
    m->output_bytes += n;
    *ret_n = n;
    return SMS_OK;
}

void sms_message_cancel(sms_message *m)
{
    if (m)
        __atomic_store_n(&m->cancel_req, 1, __ATOMIC_RELEASE);
}

void sms_message_abort(sms_message *m)
{
    if (m)
        __atomic_store_n(&m->abort_req, 1, __ATOMIC_RELEASE);
}

/* ---- queries ----------------------------------------------------------- */

static sms_phase phase_of(const sms_message *m)
{
    if (m->error)
        return SMS_PHASE_FAILED;
    switch (m->step) {
    case STEP_PREPARE: return SMS_PHASE_SETUP;
    case STEP_HEADERS: return SMS_PHASE_HEADERS;
    case STEP_BODY: return SMS_PHASE_BODY;
    case STEP_ATTACH_HEADERS:
    case STEP_ATTACH_DATA: return SMS_PHASE_ATTACHMENT;
    case STEP_NOTICE:
    case STEP_CLOSE_INNER: return SMS_PHASE_BODY;
    case STEP_SIGN: return SMS_PHASE_SIGNING;
    case STEP_DONE: return m->out_pos < m->out.len ? SMS_PHASE_TRAILER : SMS_PHASE_DONE;
    }
    return SMS_PHASE_FAILED;
}

static int fill_progress(const sms_message *m, sms_progress *p);

int sms_message_get_progress(const sms_message *m, sms_progress *p)
{
    sms_return_val_if_fail(m != NULL && p != NULL, SMS_ERR_INVALID_ARG);
    /* Fill only what the caller's struct has room for, so that the struct
     * can grow without breaking callers built against an older header. */
    sms_return_val_if_fail(p->struct_size >= offsetof(sms_progress, attachment_index),
                           SMS_ERR_INVALID_ARG);
    size_t struct_size = p->struct_size < sizeof(sms_progress) ? p->struct_size : sizeof(sms_progress);
    sms_progress full;
    int r = fill_progress(m, &full);
    memcpy(p, &full, struct_size);
    p->struct_size = struct_size;
    return r;
}

static int fill_progress(const sms_message *m, sms_progress *p)
{
    memset(p, 0, sizeof *p);
    p->phase = phase_of(m);
    bool in_att = (m->step == STEP_ATTACH_HEADERS || m->step == STEP_ATTACH_DATA) &&
                  m->cur < m->n_att;
    p->attachment_index = in_att ? (int)m->cur : -1;
    p->attachment_count = m->n_att;
    p->attachment_bytes = in_att ? m->att[m->cur].bytes : 0;
    p->attachment_size = in_att ? sms_source_get_size(m->att[m->cur].src) : -1;
    p->source_bytes = m->source_bytes;
    p->source_size = 0;
    for (size_t i = 0; i < m->n_att; i++) {
        int64_t s = sms_source_get_size(m->att[i].src);
        if (s < 0) {
            p->source_size = -1;
            break;
        }
        p->source_size += s;
    }
    p->output_bytes = m->output_bytes;
    p->cancelled = __atomic_load_n(&m->cancel_req, __ATOMIC_ACQUIRE);
    return SMS_OK;
}

int sms_message_is_partial(const sms_message *m)
{
    return m && m->partial;
}

const char *sms_message_get_message_id(const sms_message *m)
{
    return m ? m->message_id : NULL;
}

const char *sms_message_get_sender(const sms_message *m)
{
    return m ? m->from.addr : NULL;
}

size_t sms_message_get_recipient_count(const sms_message *m)
{
    return m ? m->n_to + m->n_cc : 0;
}

const char *sms_message_get_recipient(const sms_message *m, size_t i)
{
    if (!m || i >= m->n_to + m->n_cc)
        return NULL;
    return m->rcpt[i].addr;
}

const char *sms_message_last_error(const sms_message *m)
{
    return m ? m->errmsg : "";
}

int sms_message_get_error(const sms_message *m)
{
    return m ? m->error : SMS_ERR_INVALID_ARG;
}
