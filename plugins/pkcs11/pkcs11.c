/* smimestream signer plugin: keys on PKCS#11 tokens (smart cards, HSMs,
 * SoftHSM), named by RFC 7512 "pkcs11:" URIs.
 *
 * Modules come from p11-kit's configured module list, or, when the URI has
 * module-path=, from that one file only (so a logging or wrapper module can
 * sit in front of a token).  The plugin talks PKCS#11 directly rather than
 * through gnutls_privkey_import_url() because it needs the exact CKR_* codes
 * (wrong PIN, locked PIN, token removed), the protected authentication path,
 * and the context-specific login of CKA_ALWAYS_AUTHENTICATE keys.
 *
 * open() does the pre-flight work: find the token, log in, find the key and
 * its certificate, check that they belong together.  Any failure comes back
 * before the caller reads a single attachment byte.  sign() only ever gives
 * the token a hash (a DigestInfo for PKCS#1 v1.5) or, for Ed25519, the short
 * signed-attribute bytes: never the content.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <limits.h>
#include <string.h>
#include <sys/mman.h>

#include <gnutls/abstract.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>
#include <p11-kit/uri.h>

#include <smimestream/smimestream.h>

#define PIN_MAX 256
#define MAX_TOKENS 32  /* tokens listed in messages and considered */
#define MAX_OBJECTS 64 /* objects of one class read from a token */
#define MAX_CHAIN 32   /* what sms_signer_new() accepts */
#define ATTR_MAX (64 * 1024)

/* Does a caller-sized struct (struct_size first) contain member m? */
#define HAS_MEMBER(p, type, m) ((p)->struct_size >= offsetof(type, m) + sizeof((p)->m))

/* ---- small helpers ----------------------------------------------------- */

static void seterr(char *err, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void seterr(char *err, size_t size, const char *fmt, ...)
{
    if (!err || !size)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, size, fmt, ap);
    va_end(ap);
}

/* A growable string for messages; on allocation failure it stays short. */
typedef struct strbuf {
    char *s;
    size_t len, cap;
} strbuf;

static void sb_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_printf(strbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (b->len + (size_t)n + 1 > b->cap) {
        size_t cap = (b->len + (size_t)n + 1) * 2;
        char *s = realloc(b->s, cap);
        if (!s)
            return;
        b->s = s;
        b->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static const char *sb_str(const strbuf *b)
{
    return b->s ? b->s : "";
}

/* The CKR_ name and p11-kit's description, for messages. */
static const struct {
    CK_RV rv;
    const char *name;
} ckr_names[] = {
    {CKR_OK, "CKR_OK"},
    {CKR_CANCEL, "CKR_CANCEL"},
    {CKR_HOST_MEMORY, "CKR_HOST_MEMORY"},
    {CKR_SLOT_ID_INVALID, "CKR_SLOT_ID_INVALID"},
    {CKR_GENERAL_ERROR, "CKR_GENERAL_ERROR"},
    {CKR_FUNCTION_FAILED, "CKR_FUNCTION_FAILED"},
    {CKR_ARGUMENTS_BAD, "CKR_ARGUMENTS_BAD"},
    {CKR_ATTRIBUTE_SENSITIVE, "CKR_ATTRIBUTE_SENSITIVE"},
    {CKR_ATTRIBUTE_TYPE_INVALID, "CKR_ATTRIBUTE_TYPE_INVALID"},
    {CKR_DATA_INVALID, "CKR_DATA_INVALID"},
    {CKR_DATA_LEN_RANGE, "CKR_DATA_LEN_RANGE"},
    {CKR_DEVICE_ERROR, "CKR_DEVICE_ERROR"},
    {CKR_DEVICE_MEMORY, "CKR_DEVICE_MEMORY"},
    {CKR_DEVICE_REMOVED, "CKR_DEVICE_REMOVED"},
    {CKR_FUNCTION_CANCELED, "CKR_FUNCTION_CANCELED"},
    {CKR_FUNCTION_NOT_SUPPORTED, "CKR_FUNCTION_NOT_SUPPORTED"},
    {CKR_KEY_HANDLE_INVALID, "CKR_KEY_HANDLE_INVALID"},
    {CKR_KEY_SIZE_RANGE, "CKR_KEY_SIZE_RANGE"},
    {CKR_KEY_TYPE_INCONSISTENT, "CKR_KEY_TYPE_INCONSISTENT"},
    {CKR_KEY_FUNCTION_NOT_PERMITTED, "CKR_KEY_FUNCTION_NOT_PERMITTED"},
    {CKR_MECHANISM_INVALID, "CKR_MECHANISM_INVALID"},
    {CKR_MECHANISM_PARAM_INVALID, "CKR_MECHANISM_PARAM_INVALID"},
    {CKR_OBJECT_HANDLE_INVALID, "CKR_OBJECT_HANDLE_INVALID"},
    {CKR_OPERATION_ACTIVE, "CKR_OPERATION_ACTIVE"},
    {CKR_OPERATION_NOT_INITIALIZED, "CKR_OPERATION_NOT_INITIALIZED"},
    {CKR_PIN_INCORRECT, "CKR_PIN_INCORRECT"},
    {CKR_PIN_INVALID, "CKR_PIN_INVALID"},
    {CKR_PIN_LEN_RANGE, "CKR_PIN_LEN_RANGE"},
    {CKR_PIN_EXPIRED, "CKR_PIN_EXPIRED"},
    {CKR_PIN_LOCKED, "CKR_PIN_LOCKED"},
    {CKR_SESSION_CLOSED, "CKR_SESSION_CLOSED"},
    {CKR_SESSION_COUNT, "CKR_SESSION_COUNT"},
    {CKR_SESSION_HANDLE_INVALID, "CKR_SESSION_HANDLE_INVALID"},
    {CKR_TOKEN_NOT_PRESENT, "CKR_TOKEN_NOT_PRESENT"},
    {CKR_TOKEN_NOT_RECOGNIZED, "CKR_TOKEN_NOT_RECOGNIZED"},
    {CKR_USER_ALREADY_LOGGED_IN, "CKR_USER_ALREADY_LOGGED_IN"},
    {CKR_USER_NOT_LOGGED_IN, "CKR_USER_NOT_LOGGED_IN"},
    {CKR_USER_PIN_NOT_INITIALIZED, "CKR_USER_PIN_NOT_INITIALIZED"},
    {CKR_USER_TYPE_INVALID, "CKR_USER_TYPE_INVALID"},
    {CKR_BUFFER_TOO_SMALL, "CKR_BUFFER_TOO_SMALL"},
    {CKR_CRYPTOKI_NOT_INITIALIZED, "CKR_CRYPTOKI_NOT_INITIALIZED"},
    {CKR_FUNCTION_REJECTED, "CKR_FUNCTION_REJECTED"},
};

static const char *ckr_name(CK_RV rv)
{
    for (size_t i = 0; i < sizeof ckr_names / sizeof ckr_names[0]; i++)
        if (ckr_names[i].rv == rv)
            return ckr_names[i].name;
    return "CKR_?";
}

typedef struct ckr_text {
    char s[160];
} ckr_text;

static ckr_text ckr(CK_RV rv)
{
    ckr_text t;
    snprintf(t.s, sizeof t.s, "%s (0x%lx): %s", ckr_name(rv), (unsigned long)rv,
             p11_kit_strerror(rv));
    return t;
}

/* The token has gone away, as opposed to refusing or failing an operation. */
static bool ckr_is_gone(CK_RV rv)
{
    return rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT ||
           rv == CKR_TOKEN_NOT_RECOGNIZED || rv == CKR_SESSION_HANDLE_INVALID ||
           rv == CKR_SESSION_CLOSED || rv == CKR_CRYPTOKI_NOT_INITIALIZED;
}

/* Blank-padded CK_UTF8CHAR fields to C strings. */
static void space_str(char *out, size_t size, const unsigned char *in, size_t in_len)
{
    size_t n = p11_kit_space_strlen(in, in_len);
    if (n >= size)
        n = size - 1;
    memcpy(out, in, n);
    out[n] = '\0';
}

static void hex(char *out, size_t size, const uint8_t *p, size_t n)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n && o + 3 <= size; i++)
        o += (size_t)snprintf(out + o, size - o, "%02x", p[i]);
}

/* ---- the signer object ------------------------------------------------- */

typedef struct token_id {
    char label[33];
    char manufacturer[33];
    char model[17];
    char serial[17];
} token_id;

typedef struct p11_signer {
    pthread_mutex_t lock;
    CK_FUNCTION_LIST **modules; /* p11-kit's configured modules, or NULL */
    CK_FUNCTION_LIST *single;   /* the module named by module-path=, or NULL */
    CK_FUNCTION_LIST *mod;      /* the module that holds the token */
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE session;
    bool have_session;
    bool login_shared; /* counted in `logins` below */
    CK_OBJECT_HANDLE key;
    CK_KEY_TYPE key_type;
    bool always_auth; /* CKA_ALWAYS_AUTHENTICATE: login at every signature */
    bool pinpad;      /* CKF_PROTECTED_AUTHENTICATION_PATH */
    char *pin;        /* kept (locked, wiped at destroy) for always_auth only */
    token_id tok;
    char *key_label;
    char *describe;
} p11_signer;

static void wipe_free_pin(p11_signer *s)
{
    if (!s->pin)
        return;
    sms_wipe(s->pin, PIN_MAX);
    munlock(s->pin, PIN_MAX);
    free(s->pin);
    s->pin = NULL;
}

/* Logins this plugin made, shared by the signers of one process.
 *
 * A PKCS#11 login belongs to the application, not to a session: when two
 * signers use the same token, the second finds it logged in already, and a
 * C_Logout by the first would pull the key from under the second.  So the
 * last signer that relies on a login we made logs out.  This is the one
 * piece of process-wide state in the plugin; it mirrors state the token
 * itself keeps per process. */
typedef struct login_entry {
    struct login_entry *next;
    char *key; /* module file, slot id, token serial and label */
    unsigned users;
} login_entry;

static pthread_mutex_t logins_lock = PTHREAD_MUTEX_INITIALIZER;
static login_entry *logins;

static char *login_key(p11_signer *s)
{
    char *file = p11_kit_module_get_filename(s->mod);
    char *key = NULL;
    if (asprintf(&key, "%s|%lu|%s|%s", file ? file : "?", (unsigned long)s->slot, s->tok.serial,
                 s->tok.label) < 0)
        key = NULL;
    free(file);
    return key;
}

/* Count this signer as a user of the token's login.  ours: we just logged
 * in.  Otherwise join a login of ours if there is one; a login made by
 * someone else in the process is left alone. */
static void login_join(p11_signer *s, bool ours)
{
    char *key = login_key(s);
    if (!key)
        return;
    pthread_mutex_lock(&logins_lock);
    login_entry *e = logins;
    while (e && strcmp(e->key, key) != 0)
        e = e->next;
    if (!e && ours && (e = calloc(1, sizeof *e))) {
        e->key = key;
        key = NULL;
        e->next = logins;
        logins = e;
    }
    if (e) {
        e->users++;
        s->login_shared = true;
    }
    pthread_mutex_unlock(&logins_lock);
    free(key);
}

/* Returns true when this signer was the last user of a login of ours. */
static bool login_leave(p11_signer *s)
{
    char *key = login_key(s);
    bool last = false;
    if (!key)
        return false;
    pthread_mutex_lock(&logins_lock);
    for (login_entry **pe = &logins; *pe; pe = &(*pe)->next) {
        login_entry *e = *pe;
        if (strcmp(e->key, key) != 0)
            continue;
        if (--e->users == 0) {
            *pe = e->next;
            free(e->key);
            free(e);
            last = true;
        }
        break;
    }
    pthread_mutex_unlock(&logins_lock);
    free(key);
    return last;
}

static void p11_destroy(void *impl)
{
    p11_signer *s = impl;
    if (!s)
        return;
    if (s->have_session) {
        CK_TOKEN_INFO ti;
        bool others = s->mod->C_GetTokenInfo(s->slot, &ti) == CKR_OK &&
                      ti.ulSessionCount != CK_UNAVAILABLE_INFORMATION && ti.ulSessionCount > 1;
        /* Even then, closing the token's last session logs out (PKCS#11
         * v2.40, C_CloseSession). */
        if (s->login_shared && login_leave(s) && !others)
            s->mod->C_Logout(s->session);
        s->mod->C_CloseSession(s->session);
    }
    if (s->modules)
        p11_kit_modules_finalize_and_release(s->modules);
    if (s->single) {
        p11_kit_module_finalize(s->single);
        p11_kit_module_release(s->single);
    }
    wipe_free_pin(s);
    free(s->key_label);
    free(s->describe);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

static const char *p11_describe(void *impl)
{
    return ((p11_signer *)impl)->describe;
}

/* ---- signing ----------------------------------------------------------- */

typedef struct digest_info {
    sms_digest digest;
    CK_MECHANISM_TYPE hash_mech;
    CK_RSA_PKCS_MGF_TYPE mgf;
    uint8_t prefix_len;
    uint8_t prefix[19];
} digest_info;

/* DER DigestInfo headers (RFC 8017 §9.2, note 1); the hash follows. */
static const digest_info digest_infos[] = {
    {SMS_DIGEST_SHA256,
     CKM_SHA256,
     CKG_MGF1_SHA256,
     19,
     {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
      0x05, 0x00, 0x04, 0x20}},
    {SMS_DIGEST_SHA384,
     CKM_SHA384,
     CKG_MGF1_SHA384,
     19,
     {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
      0x05, 0x00, 0x04, 0x30}},
    {SMS_DIGEST_SHA512,
     CKM_SHA512,
     CKG_MGF1_SHA512,
     19,
     {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03,
      0x05, 0x00, 0x04, 0x40}},
    {SMS_DIGEST_SHA224,
     CKM_SHA224,
     CKG_MGF1_SHA224,
     19,
     {0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04,
      0x05, 0x00, 0x04, 0x1c}},
    {SMS_DIGEST_SHA1,
     CKM_SHA_1,
     CKG_MGF1_SHA1,
     15,
     {0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14}},
    {SMS_DIGEST_MD5,
     CKM_MD5,
     0,
     18,
     {0x30, 0x20, 0x30, 0x0c, 0x06, 0x08, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x02, 0x05, 0x05,
      0x00, 0x04, 0x10}},
};

static const digest_info *find_digest_info(sms_digest d)
{
    for (size_t i = 0; i < sizeof digest_infos / sizeof digest_infos[0]; i++)
        if (digest_infos[i].digest == d)
            return &digest_infos[i];
    return NULL;
}

/* DER length octets; returns the count written. */
static size_t der_len(uint8_t *out, size_t n)
{
    if (n < 0x80) {
        out[0] = (uint8_t)n;
        return 1;
    }
    out[0] = 0x81;
    out[1] = (uint8_t)n;
    return 2; /* n < 256 for any curve we meet (P-521: 139) */
}

static size_t der_int(uint8_t *out, const uint8_t *p, size_t n)
{
    while (n > 1 && p[0] == 0)
        p++, n--;
    bool pad = p[0] & 0x80;
    size_t o = 0;
    out[o++] = 0x02;
    o += der_len(out + o, n + pad);
    if (pad)
        out[o++] = 0;
    memcpy(out + o, p, n);
    return o + n;
}

/* PKCS#11 CKM_ECDSA gives r || s; CMS wants Ecdsa-Sig-Value (RFC 5480). */
static int ecdsa_to_der(const uint8_t *rs, size_t rs_len, uint8_t *out, size_t *out_len)
{
    if (rs_len == 0 || rs_len % 2 || rs_len > 2 * 66)
        return -1;
    uint8_t body[2 * (66 + 4)];
    size_t half = rs_len / 2, n = 0;
    n += der_int(body + n, rs, half);
    n += der_int(body + n, rs + half, half);
    uint8_t hdr[3];
    size_t h = 0;
    hdr[h++] = 0x30;
    h += der_len(hdr + h, n);
    if (h + n > *out_len)
        return -1;
    memcpy(out, hdr, h);
    memcpy(out + h, body, n);
    *out_len = h + n;
    return 0;
}

/* One signature: C_SignInit, the context-specific login when the key asks
 * for it, and one C_Sign with a buffer large enough for any key, so the
 * token sees exactly one C_Sign per signature. */
static CK_RV sign_raw(p11_signer *s, CK_MECHANISM *mech, const uint8_t *data, size_t len,
                      uint8_t *out, CK_ULONG *out_len, bool *login_failed)
{
    CK_FUNCTION_LIST *f = s->mod;
    CK_RV rv = f->C_SignInit(s->session, mech, s->key);
    if (rv != CKR_OK)
        return rv;
    if (s->always_auth) {
        /* Right after C_SignInit, as PKCS#11 v2.40 §4.9 asks.  No PIN
         * (NULL) on a reader with a PIN pad. */
        const char *pin = s->pin;
        rv = f->C_Login(s->session, CKU_CONTEXT_SPECIFIC, (CK_UTF8CHAR_PTR)pin,
                        pin ? strlen(pin) : 0);
        if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
            /* There is no cancel in v2.40: a C_Sign ends the operation, and
             * without the login the token refuses it. */
            CK_ULONG dummy = *out_len;
            f->C_Sign(s->session, (CK_BYTE_PTR)data, len, out, &dummy);
            *login_failed = true;
            return rv;
        }
    }
    return f->C_Sign(s->session, (CK_BYTE_PTR)data, len, out, out_len);
}

static int sign_error(p11_signer *s, CK_RV rv, bool login_failed, char *err, size_t err_size)
{
    ckr_text t = ckr(rv);
    if (ckr_is_gone(rv)) {
        seterr(err, err_size,
               "PKCS#11 token '%s' was removed or stopped answering while signing (%s); the "
               "message was not signed and must not be sent",
               s->tok.label, t.s);
        return SMS_ERR_UNAVAILABLE;
    }
    if (login_failed) {
        seterr(err, err_size, "the context-specific login for key '%s' on token '%s' failed (%s)%s",
               s->key_label, s->tok.label, t.s,
               rv == CKR_PIN_LOCKED ? "; the PIN is locked: unblock it with the SO PIN" : "");
        return rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LOCKED || rv == CKR_PIN_LEN_RANGE
                   ? SMS_ERR_PIN
                   : SMS_ERR_SIGNER;
    }
    if (rv == CKR_USER_NOT_LOGGED_IN) {
        seterr(err, err_size,
               "PKCS#11 token '%s' logged out before signing (another program may have reset "
               "it; %s); the message was not signed",
               s->tok.label, t.s);
        return SMS_ERR_SIGNER;
    }
    if (rv == CKR_MECHANISM_INVALID || rv == CKR_MECHANISM_PARAM_INVALID ||
        rv == CKR_KEY_FUNCTION_NOT_PERMITTED || rv == CKR_KEY_TYPE_INCONSISTENT) {
        seterr(err, err_size,
               "key '%s' on token '%s' refuses this signature algorithm (%s); try without "
               "--pss, or another --digest",
               s->key_label, s->tok.label, t.s);
        return SMS_ERR_UNSUPPORTED;
    }
    seterr(err, err_size, "PKCS#11 token '%s' failed to sign with key '%s' (%s)", s->tok.label,
           s->key_label, t.s);
    return SMS_ERR_SIGNER;
}

static int p11_sign_locked(p11_signer *s, const sms_sign_request *req, uint8_t *sig,
                           size_t *sig_len, char *err, size_t err_size)
{
    const digest_info *di = find_digest_info(req->digest);
    CK_MECHANISM mech = {0, NULL, 0};
    CK_RSA_PKCS_PSS_PARAMS pss;
    uint8_t data[128];
    const uint8_t *in = data;
    size_t in_len = 0;
    CK_KEY_TYPE want;

    if (req->scheme != SMS_SIG_ED25519 &&
        (!di || req->tbs_digest_len != sms_digest_length(req->digest) ||
         req->tbs_digest_len > 64)) {
        seterr(err, err_size, "PKCS#11 signer: unsupported digest for key '%s'", s->key_label);
        return SMS_ERR_UNSUPPORTED;
    }
    switch (req->scheme) {
    case SMS_SIG_RSA_PKCS1:
        want = CKK_RSA;
        mech.mechanism = CKM_RSA_PKCS;
        memcpy(data, di->prefix, di->prefix_len);
        memcpy(data + di->prefix_len, req->tbs_digest, req->tbs_digest_len);
        in_len = di->prefix_len + req->tbs_digest_len;
        break;
    case SMS_SIG_RSA_PSS:
        want = CKK_RSA;
        if (!di->mgf) {
            seterr(err, err_size, "RSA-PSS is not defined with %s", sms_digest_name(req->digest));
            return SMS_ERR_UNSUPPORTED;
        }
        pss.hashAlg = di->hash_mech;
        pss.mgf = di->mgf;
        pss.sLen = req->tbs_digest_len;
        mech.mechanism = CKM_RSA_PKCS_PSS;
        mech.pParameter = &pss;
        mech.ulParameterLen = sizeof pss;
        in = req->tbs_digest;
        in_len = req->tbs_digest_len;
        break;
    case SMS_SIG_ECDSA:
        want = CKK_EC;
        mech.mechanism = CKM_ECDSA;
        in = req->tbs_digest;
        in_len = req->tbs_digest_len;
        break;
    case SMS_SIG_ED25519:
        /* Pure EdDSA signs the signed-attribute bytes themselves. */
        want = CKK_EC_EDWARDS;
        mech.mechanism = CKM_EDDSA;
        in = req->tbs;
        in_len = req->tbs_len;
        break;
    default:
        seterr(err, err_size, "PKCS#11 signer: unknown signature scheme %d", (int)req->scheme);
        return SMS_ERR_UNSUPPORTED;
    }
    if (want != s->key_type) {
        seterr(err, err_size, "key '%s' on token '%s' cannot make this kind of signature",
               s->key_label, s->tok.label);
        return SMS_ERR_UNSUPPORTED;
    }

    uint8_t raw[SMS_SIGNATURE_MAX];
    CK_ULONG raw_len = sizeof raw;
    bool login_failed = false;
    CK_RV rv = sign_raw(s, &mech, in, in_len, raw, &raw_len, &login_failed);
    if (rv != CKR_OK)
        return sign_error(s, rv, login_failed, err, err_size);

    if (req->scheme == SMS_SIG_ECDSA) {
        if (ecdsa_to_der(raw, raw_len, sig, sig_len) < 0) {
            seterr(err, err_size, "token '%s' returned an ECDSA signature of odd length %lu",
                   s->tok.label, (unsigned long)raw_len);
            return SMS_ERR_SIGNER;
        }
        return SMS_OK;
    }
    if (raw_len > *sig_len) {
        seterr(err, err_size, "token '%s' returned a signature too large (%lu bytes)", s->tok.label,
               (unsigned long)raw_len);
        return SMS_ERR_SIGNER;
    }
    memcpy(sig, raw, raw_len);
    *sig_len = raw_len;
    return SMS_OK;
}

static int p11_sign(void *impl, const sms_sign_request *req, uint8_t *sig, size_t *sig_len,
                    char *err, size_t err_size)
{
    p11_signer *s = impl;
    if (!req || !HAS_MEMBER(req, sms_sign_request, tbs_digest_len)) {
        seterr(err, err_size, "PKCS#11 signer: sign request from an incompatible library");
        return SMS_ERR_INVALID_ARG;
    }
    /* A signer serves one message at a time; the lock makes a misuse safe. */
    pthread_mutex_lock(&s->lock);
    int r = p11_sign_locked(s, req, sig, sig_len, err, err_size);
    pthread_mutex_unlock(&s->lock);
    return r;
}

static const sms_signer_class p11_class = {
    .struct_size = sizeof(sms_signer_class),
    .name = "pkcs11",
    .sign = p11_sign,
    .destroy = p11_destroy,
    .describe = p11_describe,
};

/* ---- opening: the URI and the modules ---------------------------------- */

typedef struct open_ctx {
    P11KitUri *uri;
    char *shown_uri; /* the URI without pin-value, for messages */
    const sms_signer_options *o;
    p11_signer *s;
    char *err;
    size_t err_size;
} open_ctx;

static int parse_uri(open_ctx *c, const char *spec, char pin_value[PIN_MAX])
{
    c->uri = p11_kit_uri_new();
    if (!c->uri)
        return SMS_ERR_NOMEM;
    int r = p11_kit_uri_parse(spec, P11_KIT_URI_FOR_ANY, c->uri);
    if (r != P11_KIT_URI_OK) {
        /* Never echo the spec: it may hold a pin-value. */
        seterr(c->err, c->err_size,
               "the signer is not a valid PKCS#11 URI (%s); expected e.g. "
               "'pkcs11:token=NAME;object=LABEL' (RFC 7512)",
               p11_kit_uri_message(r));
        return SMS_ERR_INVALID_ARG;
    }
    /* Take the PIN out of the URI object at once, wiping p11-kit's copy. */
    const char *pv = p11_kit_uri_get_pin_value(c->uri);
    pin_value[0] = '\0';
    if (pv) {
        size_t n = strlen(pv);
        if (n >= PIN_MAX) {
            sms_wipe((char *)pv, n);
            seterr(c->err, c->err_size, "pin-value in the PKCS#11 URI is too long");
            return SMS_ERR_INVALID_ARG;
        }
        memcpy(pin_value, pv, n + 1);
        sms_wipe((char *)pv, n);
        p11_kit_uri_set_pin_value(c->uri, NULL);
    }
    if (p11_kit_uri_format(c->uri, P11_KIT_URI_FOR_ANY, &c->shown_uri) != P11_KIT_URI_OK)
        c->shown_uri = strdup("pkcs11:");
    if (p11_kit_uri_any_unrecognized(c->uri)) {
        seterr(c->err, c->err_size,
               "the PKCS#11 URI has an attribute this plugin does not know; it understands "
               "token=, manufacturer=, serial=, model=, object=, id=, type=, slot-id=, "
               "slot-description=, slot-manufacturer=, library-description=, "
               "library-manufacturer=, library-version= and the queries module-name=, "
               "module-path=, pin-source=, pin-value=");
        return SMS_ERR_INVALID_ARG;
    }
    CK_ATTRIBUTE *cls = p11_kit_uri_get_attribute(c->uri, CKA_CLASS);
    if (cls && cls->ulValueLen == sizeof(CK_OBJECT_CLASS)) {
        CK_OBJECT_CLASS k = *(CK_OBJECT_CLASS *)cls->pValue;
        if (k != CKO_PRIVATE_KEY && k != CKO_CERTIFICATE && k != CKO_PUBLIC_KEY) {
            seterr(c->err, c->err_size,
                   "'%s' names an object that cannot sign; use type=private (or leave type= out)",
                   c->shown_uri);
            return SMS_ERR_INVALID_ARG;
        }
    }
    return SMS_OK;
}

static int load_modules(open_ctx *c)
{
    p11_signer *s = c->s;
    const char *path = p11_kit_uri_get_module_path(c->uri);
    if (path) {
        /* Only this module: the user may put a logging or wrapper module in
         * front of a token, and must not get another module's token. */
        s->single = p11_kit_module_load(path, 0);
        if (!s->single) {
            seterr(c->err, c->err_size, "cannot load the PKCS#11 module '%s' (module-path=): %s",
                   path, p11_kit_message() ? p11_kit_message() : "unknown error");
            return SMS_ERR_UNAVAILABLE;
        }
        CK_RV rv = p11_kit_module_initialize(s->single);
        if (rv != CKR_OK) {
            p11_kit_module_release(s->single);
            s->single = NULL;
            seterr(c->err, c->err_size, "the PKCS#11 module '%s' failed to initialize (%s)", path,
                   ckr(rv).s);
            return SMS_ERR_UNAVAILABLE;
        }
        return SMS_OK;
    }
    s->modules = p11_kit_modules_load_and_initialize(0);
    if (!s->modules) {
        seterr(c->err, c->err_size, "cannot load the configured PKCS#11 modules: %s",
               p11_kit_message() ? p11_kit_message() : "unknown error");
        return SMS_ERR_UNAVAILABLE;
    }
    return SMS_OK;
}

/* ---- finding the token ------------------------------------------------- */

typedef struct token_ref {
    CK_FUNCTION_LIST *mod;
    CK_SLOT_ID slot;
    CK_FLAGS flags;
    token_id id;
    bool match;
} token_ref;

static void token_id_from_info(token_id *t, const CK_TOKEN_INFO *ti)
{
    space_str(t->label, sizeof t->label, ti->label, sizeof ti->label);
    space_str(t->manufacturer, sizeof t->manufacturer, ti->manufacturerID,
              sizeof ti->manufacturerID);
    space_str(t->model, sizeof t->model, ti->model, sizeof ti->model);
    space_str(t->serial, sizeof t->serial, ti->serialNumber, sizeof ti->serialNumber);
}

static bool module_selected(open_ctx *c, CK_FUNCTION_LIST *m)
{
    const char *want = p11_kit_uri_get_module_name(c->uri);
    if (c->s->single)
        return true;
    if (want) {
        char *name = p11_kit_module_get_name(m);
        bool same = name && strcmp(name, want) == 0;
        free(name);
        return same;
    }
    /* Trust-policy modules (p11-kit-trust) hold CA certificates, never
     * signing keys. */
    return !(p11_kit_module_get_flags(m) & P11_KIT_MODULE_TRUSTED);
}

static bool any_module_named(open_ctx *c)
{
    for (CK_FUNCTION_LIST **m = c->s->modules; m && *m; m++)
        if (module_selected(c, *m))
            return true;
    return false;
}

static void scan_module(open_ctx *c, CK_FUNCTION_LIST *m, token_ref *out, size_t *n)
{
    CK_INFO info;
    if (m->C_GetInfo(&info) != CKR_OK || !p11_kit_uri_match_module_info(c->uri, &info))
        return;
    CK_ULONG count = 0;
    if (m->C_GetSlotList(CK_TRUE, NULL, &count) != CKR_OK || count == 0)
        return;
    if (count > 1024)
        count = 1024;
    CK_SLOT_ID *slots = calloc(count, sizeof *slots);
    if (!slots)
        return;
    if (m->C_GetSlotList(CK_TRUE, slots, &count) != CKR_OK) {
        free(slots);
        return;
    }
    CK_SLOT_ID want_slot = p11_kit_uri_get_slot_id(c->uri);
    for (CK_ULONG i = 0; i < count && *n < MAX_TOKENS; i++) {
        CK_SLOT_INFO si;
        CK_TOKEN_INFO ti;
        if (m->C_GetSlotInfo(slots[i], &si) != CKR_OK ||
            m->C_GetTokenInfo(slots[i], &ti) != CKR_OK || !(ti.flags & CKF_TOKEN_INITIALIZED))
            continue;
        token_ref *t = &out[(*n)++];
        t->mod = m;
        t->slot = slots[i];
        t->flags = ti.flags;
        token_id_from_info(&t->id, &ti);
        t->match = p11_kit_uri_match_slot_info(c->uri, &si) &&
                   (want_slot == (CK_SLOT_ID)-1 || want_slot == slots[i]) &&
                   p11_kit_uri_match_token_info(c->uri, &ti);
    }
    free(slots);
}

static void list_tokens(strbuf *b, const token_ref *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        sb_printf(b, "%s'%s' (%s %s, serial %s)", i ? ", " : "", t[i].id.label,
                  t[i].id.manufacturer, t[i].id.model, t[i].id.serial);
}

/* Before login only public objects are visible: a certificate or public
 * key that fits the URI's object=/id= tells which token is meant. */
static bool token_has_public_match(open_ctx *c, const token_ref *t)
{
    CK_ATTRIBUTE tmpl[2];
    CK_ULONG n = 0;
    CK_ATTRIBUTE *a;
    if ((a = p11_kit_uri_get_attribute(c->uri, CKA_ID)))
        tmpl[n++] = *a;
    if ((a = p11_kit_uri_get_attribute(c->uri, CKA_LABEL)))
        tmpl[n++] = *a;
    if (n == 0)
        return false;
    CK_SESSION_HANDLE h;
    if (t->mod->C_OpenSession(t->slot, CKF_SERIAL_SESSION, NULL, NULL, &h) != CKR_OK)
        return false;
    CK_OBJECT_HANDLE obj;
    CK_ULONG found = 0;
    if (t->mod->C_FindObjectsInit(h, tmpl, n) == CKR_OK) {
        t->mod->C_FindObjects(h, &obj, 1, &found);
        t->mod->C_FindObjectsFinal(h);
    }
    t->mod->C_CloseSession(h);
    return found > 0;
}

/* The URI fits no token: say which tokens (or modules) there are. */
static int no_token_error(open_ctx *c, const token_ref *all, size_t n)
{
    p11_signer *s = c->s;
    const char *module_name = p11_kit_uri_get_module_name(c->uri);
    strbuf b = {0};
    if (!s->single && module_name && !any_module_named(c)) {
        for (CK_FUNCTION_LIST **m = s->modules; *m; m++) {
            char *name = p11_kit_module_get_name(*m);
            sb_printf(&b, "%s%s", b.len ? ", " : "", name ? name : "?");
            free(name);
        }
        seterr(c->err, c->err_size,
               "no PKCS#11 module named '%s' is configured for p11-kit (modules: %s); fix "
               "module-name= in the URI, or use module-path=",
               module_name, sb_str(&b));
    } else if (n) {
        list_tokens(&b, all, n);
        seterr(c->err, c->err_size,
               "no PKCS#11 token matches '%s'; tokens present: %s; check token= (and "
               "serial=, manufacturer=, model=) in the URI, or insert the right card",
               c->shown_uri, sb_str(&b));
    } else {
        seterr(c->err, c->err_size,
               "no PKCS#11 token matches '%s': no token is present at all%s; insert the "
               "card, or check that its module is configured for p11-kit (p11-kit "
               "list-modules)",
               c->shown_uri, s->single ? " in the module given by module-path=" : "");
    }
    free(b.s);
    return SMS_ERR_UNAVAILABLE;
}

static int many_tokens_error(open_ctx *c, const token_ref *all, size_t n, size_t matches)
{
    strbuf b = {0};
    for (size_t i = 0; i < n; i++) {
        if (!all[i].match)
            continue;
        sb_printf(&b, "%s", b.len ? ", " : "");
        list_tokens(&b, &all[i], 1);
    }
    seterr(c->err, c->err_size,
           "the PKCS#11 URI '%s' matches %zu tokens: %s; add token=LABEL or serial=... to the "
           "URI to choose one",
           c->shown_uri, matches, sb_str(&b));
    free(b.s);
    return SMS_ERR_INVALID_ARG;
}

static int find_token(open_ctx *c)
{
    p11_signer *s = c->s;
    token_ref *all = calloc(MAX_TOKENS, sizeof *all);
    size_t n = 0, matches = 0, pick = 0;
    int r = SMS_OK;
    if (!all)
        return SMS_ERR_NOMEM;
    if (s->single) {
        scan_module(c, s->single, all, &n);
    } else {
        for (CK_FUNCTION_LIST **m = s->modules; *m; m++)
            if (module_selected(c, *m))
                scan_module(c, *m, all, &n);
    }
    for (size_t i = 0; i < n; i++)
        if (all[i].match)
            matches++, pick = i;
    if (matches > 1) {
        /* Narrow down by the object the URI names. */
        size_t narrowed = 0;
        for (size_t i = 0; i < n; i++)
            if (all[i].match && token_has_public_match(c, &all[i]))
                narrowed++, pick = i;
        if (narrowed != 1)
            r = many_tokens_error(c, all, n, matches);
    } else if (matches == 0) {
        r = no_token_error(c, all, n);
    }
    if (r == SMS_OK) {
        s->mod = all[pick].mod;
        s->slot = all[pick].slot;
        s->tok = all[pick].id;
        s->pinpad = (all[pick].flags & CKF_PROTECTED_AUTHENTICATION_PATH) != 0;
    }
    free(all);
    return r;
}

/* ---- logging in -------------------------------------------------------- */

typedef enum { PIN_NONE, PIN_URI_VALUE, PIN_URI_SOURCE, PIN_FILE, PIN_PINPAD, PIN_PROMPT } pin_from;

static void pin_source_text(char *out, size_t size, pin_from from, const char *path)
{
    switch (from) {
    case PIN_URI_VALUE:
        snprintf(out, size, "pin-value in the URI");
        break;
    case PIN_URI_SOURCE:
        snprintf(out, size, "pin-source %s in the URI", path);
        break;
    case PIN_FILE:
        snprintf(out, size, "--pin-file %s", path);
        break;
    case PIN_PINPAD:
        snprintf(out, size, "the reader's PIN pad");
        break;
    case PIN_PROMPT:
        snprintf(out, size, "the PIN prompt");
        break;
    case PIN_NONE:
        snprintf(out, size, "no PIN");
        break;
    }
}

/* RFC 7512 pin-source is a URI; we take file: URIs and plain paths. */
static int read_pin_source(open_ctx *c, const char *src, char pin[PIN_MAX])
{
    const char *path = src;
    if (strncmp(src, "file://", 7) == 0)
        path = src + 7; /* file:///abs/path -> /abs/path */
    else if (strncmp(src, "file:", 5) == 0)
        path = src + 5;
    else if (src[0] == '|' || (strchr(src, ':') && src[0] != '/' && src[0] != '.')) {
        seterr(c->err, c->err_size,
               "pin-source '%s' in the PKCS#11 URI is not supported; use a file path or a "
               "file: URI",
               src);
        return SMS_ERR_UNSUPPORTED;
    }
    return sms_read_secret_file(path, pin, PIN_MAX, c->err, c->err_size);
}

static const char *pin_hint(CK_FLAGS flags)
{
    if (flags & CKF_USER_PIN_FINAL_TRY)
        return "wrong PIN; one more wrong PIN locks the token";
    if (flags & CKF_USER_PIN_COUNT_LOW)
        return "wrong PIN; few tries are left before the PIN locks";
    return "wrong PIN, try again";
}

static int login_error(open_ctx *c, CK_RV rv, pin_from from, const char *path)
{
    p11_signer *s = c->s;
    char src[PATH_MAX + 64];
    pin_source_text(src, sizeof src, from, path);
    CK_TOKEN_INFO ti;
    CK_FLAGS flags = s->mod->C_GetTokenInfo(s->slot, &ti) == CKR_OK ? ti.flags : 0;
    if (rv == CKR_PIN_LOCKED || (flags & CKF_USER_PIN_LOCKED)) {
        seterr(c->err, c->err_size,
               "the user PIN of PKCS#11 token '%s' is locked after too many wrong PINs; unblock "
               "it with the SO PIN (e.g. pkcs11-tool --init-pin --login --login-type so, or the "
               "card's own tool) and try again",
               s->tok.label);
        return SMS_ERR_PIN;
    }
    if (rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LEN_RANGE || rv == CKR_PIN_INVALID) {
        seterr(c->err, c->err_size,
               "wrong PIN for PKCS#11 token '%s' (from %s)%s; check it and try again%s",
               s->tok.label, src, rv == CKR_PIN_LEN_RANGE ? ": the length is not allowed" : "",
               (flags & CKF_USER_PIN_FINAL_TRY)   ? " (careful: one more wrong PIN locks the token)"
               : (flags & CKF_USER_PIN_COUNT_LOW) ? " (few tries are left)"
                                                  : "");
        return SMS_ERR_PIN;
    }
    if (rv == CKR_PIN_EXPIRED) {
        seterr(c->err, c->err_size,
               "the PIN of PKCS#11 token '%s' has expired; set a new one with the card's tool",
               s->tok.label);
        return SMS_ERR_PIN;
    }
    if (rv == CKR_FUNCTION_CANCELED || rv == CKR_CANCEL) {
        seterr(c->err, c->err_size, "PIN entry for PKCS#11 token '%s' was cancelled", s->tok.label);
        return SMS_ERR_PIN;
    }
    if (ckr_is_gone(rv)) {
        seterr(c->err, c->err_size, "PKCS#11 token '%s' went away while logging in (%s)",
               s->tok.label, ckr(rv).s);
        return SMS_ERR_UNAVAILABLE;
    }
    seterr(c->err, c->err_size, "logging in to PKCS#11 token '%s' failed (%s)", s->tok.label,
           ckr(rv).s);
    return SMS_ERR_SIGNER;
}

static CK_RV do_login(p11_signer *s, const char *pin)
{
    CK_RV rv = s->mod->C_Login(s->session, CKU_USER, (CK_UTF8CHAR_PTR)pin, pin ? strlen(pin) : 0);
    return rv == CKR_USER_ALREADY_LOGGED_IN ? CKR_OK : rv;
}

/* Keep the PIN for the context-specific login of a CKA_ALWAYS_AUTHENTICATE
 * key; locked so it never reaches swap, wiped at destroy. */
static int keep_pin(p11_signer *s, const char *pin)
{
    s->pin = malloc(PIN_MAX);
    if (!s->pin)
        return SMS_ERR_NOMEM;
    (void)mlock(s->pin, PIN_MAX);
    snprintf(s->pin, PIN_MAX, "%s", pin);
    return SMS_OK;
}

/* The fixed PIN sources, in order: pin-value= and pin-source= in the URI,
 * then --pin-file.  Returns 1 with a PIN, 0 when none is configured. */
static int fixed_pin(open_ctx *c, const char *uri_pin, char pin[PIN_MAX], pin_from *ret_from,
                     const char **ret_path)
{
    const sms_signer_options *o = c->o;
    const char *pin_source = p11_kit_uri_get_pin_source(c->uri);
    const char *pin_file = HAS_MEMBER(o, sms_signer_options, pin_file) ? o->pin_file : NULL;
    int r;
    if (uri_pin[0]) {
        *ret_from = PIN_URI_VALUE;
        memcpy(pin, uri_pin, PIN_MAX);
        return 1;
    }
    if (pin_source) {
        *ret_from = PIN_URI_SOURCE;
        *ret_path = pin_source;
        r = read_pin_source(c, pin_source, pin);
    } else if (pin_file) {
        *ret_from = PIN_FILE;
        *ret_path = pin_file;
        r = sms_read_secret_file(pin_file, pin, PIN_MAX, c->err, c->err_size);
    } else {
        return 0;
    }
    if (r < 0) {
        sms_wipe(pin, PIN_MAX);
        /* An unreadable PIN file is a PIN problem (77), not missing input. */
        return r == SMS_ERR_NOINPUT ? SMS_ERR_PIN : r;
    }
    return 1;
}

static bool have_prompt(const sms_signer_options *o)
{
    return HAS_MEMBER(o, sms_signer_options, pin_user_data) && o->pin_func;
}

static int no_pin_error(open_ctx *c, bool prompt_failed)
{
    seterr(c->err, c->err_size,
           "PKCS#11 token '%s' needs a PIN and none was given%s; give it with --pin-file FILE, "
           "or with pin-source=FILE in the URI",
           c->s->tok.label,
           prompt_failed ? " (the prompt was cancelled)" : " (and there is no terminal to ask on)");
    return SMS_ERR_PIN;
}

/* Ask the caller's prompt; a wrong PIN is asked again (at most 3 times),
 * with a hint when the token says its retry counter is low. */
static int prompt_login(open_ctx *c, char pin[PIN_MAX])
{
    p11_signer *s = c->s;
    const sms_signer_options *o = c->o;
    char what[128];
    snprintf(what, sizeof what, "PKCS#11 token '%s'", s->tok.label);
    const char *hint = "";
    for (int attempt = 0; attempt < 3; attempt++) {
        int r = o->pin_func(what, hint, pin, PIN_MAX, o->pin_user_data);
        pin[PIN_MAX - 1] = '\0';
        if (r < 0) {
            sms_wipe(pin, PIN_MAX);
            return no_pin_error(c, true);
        }
        CK_RV rv = do_login(s, pin);
        if (rv == CKR_OK) {
            r = keep_pin(s, pin);
            sms_wipe(pin, PIN_MAX);
            return r;
        }
        sms_wipe(pin, PIN_MAX);
        if (rv != CKR_PIN_INCORRECT && rv != CKR_PIN_LEN_RANGE)
            return login_error(c, rv, PIN_PROMPT, NULL);
        CK_TOKEN_INFO ti;
        CK_FLAGS flags = s->mod->C_GetTokenInfo(s->slot, &ti) == CKR_OK ? ti.flags : 0;
        if (flags & CKF_USER_PIN_LOCKED)
            return login_error(c, CKR_PIN_LOCKED, PIN_PROMPT, NULL);
        hint = pin_hint(flags);
    }
    return login_error(c, CKR_PIN_INCORRECT, PIN_PROMPT, NULL);
}

/* PIN sources in order: pin-value=, pin-source= (URI), --pin-file, the
 * reader's PIN pad, the caller's prompt.  A fixed PIN that is wrong is not
 * tried again: that would only burn the token's retry counter.  The PIN is
 * kept for now (see keep_pin); open() drops it unless the key needs it. */
static int login(open_ctx *c, const char *uri_pin)
{
    p11_signer *s = c->s;
    const char *path = NULL;
    pin_from from = PIN_NONE;
    char pin[PIN_MAX];

    CK_TOKEN_INFO ti;
    if (s->mod->C_GetTokenInfo(s->slot, &ti) == CKR_OK && (ti.flags & CKF_USER_PIN_LOCKED))
        return login_error(c, CKR_PIN_LOCKED, PIN_NONE, NULL);

    int r = fixed_pin(c, uri_pin, pin, &from, &path);
    if (r < 0)
        return r;
    if (r == 0 && !s->pinpad)
        return have_prompt(c->o) ? prompt_login(c, pin) : no_pin_error(c, false);
    if (r == 0)
        from = PIN_PINPAD;
    CK_RV rv = do_login(s, from == PIN_PINPAD ? NULL : pin);
    r = SMS_OK;
    if (rv == CKR_OK && from != PIN_PINPAD)
        r = keep_pin(s, pin);
    sms_wipe(pin, sizeof pin);
    if (rv != CKR_OK)
        return login_error(c, rv, from, path);
    return r;
}

/* A CKA_ALWAYS_AUTHENTICATE key when this process was logged in already:
 * the context-specific login still needs a PIN (or the PIN pad). */
static int fetch_pin_for_key(open_ctx *c, const char *uri_pin)
{
    p11_signer *s = c->s;
    const char *path = NULL;
    pin_from from;
    char pin[PIN_MAX];
    if (s->pin || s->pinpad)
        return SMS_OK;
    int r = fixed_pin(c, uri_pin, pin, &from, &path);
    if (r == 0 && have_prompt(c->o)) {
        char what[128];
        snprintf(what, sizeof what, "PKCS#11 token '%s' (key '%s')", s->tok.label, s->key_label);
        r = c->o->pin_func(what, "", pin, PIN_MAX, c->o->pin_user_data) < 0 ? 0 : 1;
        pin[PIN_MAX - 1] = '\0';
    }
    if (r == 0)
        return no_pin_error(c, have_prompt(c->o));
    if (r > 0)
        r = keep_pin(s, pin);
    sms_wipe(pin, sizeof pin);
    return r;
}

/* ---- objects ----------------------------------------------------------- */

/* Read one attribute into a new buffer (NUL-terminated for convenience). */
static CK_RV get_attr(p11_signer *s, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type, uint8_t **ret,
                      size_t *ret_len)
{
    CK_ATTRIBUTE a = {type, NULL, 0};
    CK_RV rv = s->mod->C_GetAttributeValue(s->session, obj, &a, 1);
    if (rv != CKR_OK)
        return rv;
    if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION || a.ulValueLen > ATTR_MAX)
        return CKR_ATTRIBUTE_TYPE_INVALID;
    a.pValue = malloc(a.ulValueLen + 1);
    if (!a.pValue)
        return CKR_HOST_MEMORY;
    rv = s->mod->C_GetAttributeValue(s->session, obj, &a, 1);
    if (rv != CKR_OK || a.ulValueLen == CK_UNAVAILABLE_INFORMATION) {
        free(a.pValue);
        return rv != CKR_OK ? rv : CKR_ATTRIBUTE_TYPE_INVALID;
    }
    ((uint8_t *)a.pValue)[a.ulValueLen] = 0;
    *ret = a.pValue;
    *ret_len = a.ulValueLen;
    return CKR_OK;
}

static CK_RV get_ulong(p11_signer *s, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type, CK_ULONG *ret)
{
    CK_ATTRIBUTE a = {type, ret, sizeof *ret};
    return s->mod->C_GetAttributeValue(s->session, obj, &a, 1);
}

static bool get_bool(p11_signer *s, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type, bool dflt)
{
    CK_BBOOL v = CK_FALSE;
    CK_ATTRIBUTE a = {type, &v, sizeof v};
    if (s->mod->C_GetAttributeValue(s->session, obj, &a, 1) != CKR_OK)
        return dflt;
    return v == CK_TRUE;
}

static CK_RV find_objects(p11_signer *s, CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_OBJECT_HANDLE *out,
                          CK_ULONG max, CK_ULONG *ret_count)
{
    CK_RV rv = s->mod->C_FindObjectsInit(s->session, tmpl, n);
    if (rv != CKR_OK)
        return rv;
    *ret_count = 0;
    rv = s->mod->C_FindObjects(s->session, out, max, ret_count);
    s->mod->C_FindObjectsFinal(s->session);
    return rv;
}

/* "'label' (id 01ab)" for messages. */
static void object_name(p11_signer *s, CK_OBJECT_HANDLE obj, char *out, size_t size)
{
    uint8_t *label = NULL, *id = NULL;
    size_t llen = 0, ilen = 0;
    char idhex[65] = "";
    get_attr(s, obj, CKA_LABEL, &label, &llen);
    if (get_attr(s, obj, CKA_ID, &id, &ilen) == CKR_OK)
        hex(idhex, sizeof idhex, id, ilen);
    snprintf(out, size, "'%s'%s%s%s", label ? (char *)label : "", idhex[0] ? " (id " : "", idhex,
             idhex[0] ? ")" : "");
    free(label);
    free(id);
}

static void uri_object_text(open_ctx *c, char *out, size_t size)
{
    CK_ATTRIBUTE *l = p11_kit_uri_get_attribute(c->uri, CKA_LABEL);
    CK_ATTRIBUTE *i = p11_kit_uri_get_attribute(c->uri, CKA_ID);
    char idhex[65] = "";
    if (i)
        hex(idhex, sizeof idhex, i->pValue, i->ulValueLen);
    snprintf(out, size, "%s%.*s%s%s%s", l ? "object='" : "", l ? (int)l->ulValueLen : 0,
             l ? (char *)l->pValue : "", l ? "'" : "", l && i ? " " : "", i ? "id=" : "");
    if (i)
        snprintf(out + strlen(out), size - strlen(out), "%s", idhex);
    if (!l && !i)
        snprintf(out, size, "any key");
}

static void list_keys(p11_signer *s, strbuf *b)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t = {CKA_CLASS, &cls, sizeof cls};
    CK_OBJECT_HANDLE h[16];
    CK_ULONG n = 0;
    if (find_objects(s, &t, 1, h, 16, &n) != CKR_OK || n == 0) {
        sb_printf(b, "none");
        return;
    }
    for (CK_ULONG i = 0; i < n; i++) {
        char name[128];
        object_name(s, h[i], name, sizeof name);
        sb_printf(b, "%s%s", i ? ", " : "", name);
    }
}

static int find_key(open_ctx *c)
{
    p11_signer *s = c->s;
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE tmpl[3] = {{CKA_CLASS, &cls, sizeof cls}};
    CK_ULONG nt = 1;
    CK_ATTRIBUTE *a;
    if ((a = p11_kit_uri_get_attribute(c->uri, CKA_ID)))
        tmpl[nt++] = *a;
    if ((a = p11_kit_uri_get_attribute(c->uri, CKA_LABEL)))
        tmpl[nt++] = *a;

    CK_OBJECT_HANDLE h[MAX_OBJECTS];
    CK_ULONG n = 0;
    CK_RV rv = find_objects(s, tmpl, nt, h, MAX_OBJECTS, &n);
    if (rv != CKR_OK) {
        seterr(c->err, c->err_size, "searching PKCS#11 token '%s' for the key failed (%s)",
               s->tok.label, ckr(rv).s);
        return ckr_is_gone(rv) ? SMS_ERR_UNAVAILABLE : SMS_ERR_SIGNER;
    }
    /* Several keys fit: the ones that may sign. */
    CK_ULONG k = 0;
    for (CK_ULONG i = 0; i < n; i++)
        if (n == 1 || get_bool(s, h[i], CKA_SIGN, true))
            h[k++] = h[i];
    char want[160];
    uri_object_text(c, want, sizeof want);
    if (k != 1) {
        strbuf b = {0};
        list_keys(s, &b);
        if (k == 0)
            seterr(c->err, c->err_size,
                   "PKCS#11 token '%s' has no private key with %s (private keys on it: %s); "
                   "check object= or id= in the URI",
                   s->tok.label, want, sb_str(&b));
        else
            seterr(c->err, c->err_size,
                   "%lu private keys on PKCS#11 token '%s' fit '%s' (%s); add object=LABEL or "
                   "id=... to the URI to choose one",
                   (unsigned long)k, s->tok.label, c->shown_uri, sb_str(&b));
        free(b.s);
        return k == 0 ? SMS_ERR_UNAVAILABLE : SMS_ERR_INVALID_ARG;
    }
    s->key = h[0];
    if (get_ulong(s, s->key, CKA_KEY_TYPE, &s->key_type) != CKR_OK) {
        seterr(c->err, c->err_size, "cannot read the key type of %s on token '%s'", want,
               s->tok.label);
        return SMS_ERR_SIGNER;
    }
    s->always_auth = get_bool(s, s->key, CKA_ALWAYS_AUTHENTICATE, false);
    uint8_t *label = NULL;
    size_t llen;
    if (get_attr(s, s->key, CKA_LABEL, &label, &llen) == CKR_OK && llen) {
        s->key_label = (char *)label;
    } else {
        free(label);
        char name[128];
        object_name(s, s->key, name, sizeof name);
        s->key_label = strdup(name);
    }
    if (!s->key_label)
        return SMS_ERR_NOMEM;
    return SMS_OK;
}

/* ---- the key's public half --------------------------------------------- */

static bool same_bytes(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
    return an == bn && memcmp(a, b, an) == 0;
}

/* CKA_EC_POINT is a DER OCTET STRING; some tokens give the bare point. */
static void unwrap_octets(const uint8_t *p, size_t n, const uint8_t **ret, size_t *ret_n)
{
    *ret = p;
    *ret_n = n;
    if (n >= 2 && p[0] == 0x04) {
        size_t len, hdr;
        if (p[1] < 0x80)
            len = p[1], hdr = 2;
        else if (p[1] == 0x81 && n >= 3)
            len = p[2], hdr = 3;
        else
            return;
        if (hdr + len == n) {
            *ret = p + hdr;
            *ret_n = len;
        }
    }
}

static bool points_equal(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
    const uint8_t *ua, *ub;
    size_t uan, ubn;
    unwrap_octets(a, an, &ua, &uan);
    unwrap_octets(b, bn, &ub, &ubn);
    return same_bytes(a, an, b, bn) || same_bytes(ua, uan, b, bn) || same_bytes(a, an, ub, ubn) ||
           same_bytes(ua, uan, ub, ubn);
}

static bool pubkeys_equal(gnutls_pubkey_t a, gnutls_pubkey_t b)
{
    gnutls_datum_t da = {0}, db = {0};
    bool same = false;
    if (gnutls_pubkey_export2(a, GNUTLS_X509_FMT_DER, &da) >= 0 &&
        gnutls_pubkey_export2(b, GNUTLS_X509_FMT_DER, &db) >= 0 &&
        same_bytes(da.data, da.size, db.data, db.size))
        same = true;
    gnutls_free(da.data);
    gnutls_free(db.data);
    if (same)
        return true;
    /* An RSA key and an RSASSA-PSS certificate: compare the numbers. */
    gnutls_datum_t ma = {0}, ea = {0}, mb = {0}, eb = {0};
    if (gnutls_pubkey_export_rsa_raw2(a, &ma, &ea, 0) >= 0 &&
        gnutls_pubkey_export_rsa_raw2(b, &mb, &eb, 0) >= 0)
        same = same_bytes(ma.data, ma.size, mb.data, mb.size) &&
               same_bytes(ea.data, ea.size, eb.data, eb.size);
    gnutls_free(ma.data);
    gnutls_free(ea.data);
    gnutls_free(mb.data);
    gnutls_free(eb.data);
    return same;
}

/* Does the certificate's key equal the token key's public half, as far as
 * the token tells?  1 yes, 0 no, -1 the token does not say. */
typedef struct key_public {
    uint8_t *modulus, *exponent; /* RSA, from the private key object */
    size_t modulus_len, exponent_len;
    uint8_t *spki; /* CKA_PUBLIC_KEY_INFO */
    size_t spki_len;
    uint8_t *ec_point; /* CKA_EC_POINT of the public key object */
    size_t ec_point_len;
} key_public;

static void key_public_clear(key_public *k)
{
    free(k->modulus);
    free(k->exponent);
    free(k->spki);
    free(k->ec_point);
    memset(k, 0, sizeof *k);
}

static void key_public_read(p11_signer *s, key_public *k)
{
    if (s->key_type == CKK_RSA) {
        if (get_attr(s, s->key, CKA_MODULUS, &k->modulus, &k->modulus_len) == CKR_OK &&
            get_attr(s, s->key, CKA_PUBLIC_EXPONENT, &k->exponent, &k->exponent_len) == CKR_OK &&
            k->modulus_len && k->exponent_len)
            return;
        free(k->modulus);
        free(k->exponent);
        k->modulus = k->exponent = NULL;
    }
    if (get_attr(s, s->key, CKA_PUBLIC_KEY_INFO, &k->spki, &k->spki_len) == CKR_OK && k->spki_len)
        return;
    free(k->spki);
    k->spki = NULL;

    /* The public key object with the same CKA_ID. */
    uint8_t *id = NULL;
    size_t id_len = 0;
    if (get_attr(s, s->key, CKA_ID, &id, &id_len) != CKR_OK || id_len == 0) {
        free(id);
        return;
    }
    CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
    CK_ATTRIBUTE t[2] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_ID, id, id_len}};
    CK_OBJECT_HANDLE pub;
    CK_ULONG n = 0;
    if (find_objects(s, t, 2, &pub, 1, &n) == CKR_OK && n == 1) {
        if (s->key_type == CKK_RSA) {
            if (get_attr(s, pub, CKA_MODULUS, &k->modulus, &k->modulus_len) != CKR_OK ||
                get_attr(s, pub, CKA_PUBLIC_EXPONENT, &k->exponent, &k->exponent_len) != CKR_OK) {
                free(k->modulus);
                free(k->exponent);
                k->modulus = k->exponent = NULL;
            }
        } else if (get_attr(s, pub, CKA_EC_POINT, &k->ec_point, &k->ec_point_len) != CKR_OK) {
            k->ec_point = NULL;
        }
    }
    free(id);
}

static bool key_type_fits(CK_KEY_TYPE kt, gnutls_pk_algorithm_t pk)
{
    switch (kt) {
    case CKK_RSA:
        return pk == GNUTLS_PK_RSA || pk == GNUTLS_PK_RSA_PSS;
    case CKK_EC:
        return pk == GNUTLS_PK_ECDSA;
    case CKK_EC_EDWARDS:
        return pk == GNUTLS_PK_EDDSA_ED25519;
    default:
        return false;
    }
}

static int key_public_matches(const key_public *k, CK_KEY_TYPE kt, gnutls_x509_crt_t crt)
{
    gnutls_pubkey_t pub = NULL;
    int res = -1;
    if (gnutls_pubkey_init(&pub) < 0 || gnutls_pubkey_import_x509(pub, crt, 0) < 0) {
        res = 0;
        goto out;
    }
    if (!key_type_fits(kt, gnutls_pubkey_get_pk_algorithm(pub, NULL))) {
        res = 0;
        goto out;
    }
    if (k->modulus) {
        gnutls_datum_t m = {0}, e = {0};
        res = 0;
        if (gnutls_pubkey_export_rsa_raw2(pub, &m, &e, GNUTLS_EXPORT_FLAG_NO_LZ) >= 0) {
            /* Tokens may pad with leading zeros. */
            const uint8_t *km = k->modulus, *ke = k->exponent;
            size_t kml = k->modulus_len, kel = k->exponent_len;
            while (kml > 1 && *km == 0)
                km++, kml--;
            while (kel > 1 && *ke == 0)
                ke++, kel--;
            res = same_bytes(km, kml, m.data, m.size) && same_bytes(ke, kel, e.data, e.size);
        }
        gnutls_free(m.data);
        gnutls_free(e.data);
    } else if (k->spki) {
        gnutls_pubkey_t kp = NULL;
        gnutls_datum_t d = {k->spki, (unsigned)k->spki_len};
        res = 0;
        if (gnutls_pubkey_init(&kp) >= 0 && gnutls_pubkey_import(kp, &d, GNUTLS_X509_FMT_DER) >= 0)
            res = pubkeys_equal(kp, pub);
        if (kp)
            gnutls_pubkey_deinit(kp);
    } else if (k->ec_point) {
        gnutls_datum_t params = {0}, point = {0}, x = {0};
        gnutls_ecc_curve_t curve;
        res = 0;
        if (kt == CKK_EC && gnutls_pubkey_export_ecc_x962(pub, &params, &point) >= 0)
            res = points_equal(k->ec_point, k->ec_point_len, point.data, point.size);
        else if (kt == CKK_EC_EDWARDS &&
                 gnutls_pubkey_export_ecc_raw2(pub, &curve, &x, NULL, 0) >= 0)
            res = points_equal(k->ec_point, k->ec_point_len, x.data, x.size);
        gnutls_free(params.data);
        gnutls_free(point.data);
        gnutls_free(x.data);
    }
out:
    if (pub)
        gnutls_pubkey_deinit(pub);
    return res;
}

/* The last resort when the token does not show the public key: sign a
 * random digest and verify it with the certificate.  Costs one signature
 * (and a PIN entry on a CKA_ALWAYS_AUTHENTICATE key). */
static int test_signature(p11_signer *s, gnutls_x509_crt_t crt, char *err, size_t err_size)
{
    gnutls_pubkey_t pub = NULL;
    uint8_t digest[32], sig[SMS_SIGNATURE_MAX];
    size_t sig_len = sizeof sig;
    int r = SMS_ERR_KEY_MISMATCH;
    if (gnutls_pubkey_init(&pub) < 0 || gnutls_pubkey_import_x509(pub, crt, 0) < 0)
        goto out;
    gnutls_pk_algorithm_t pk = gnutls_pubkey_get_pk_algorithm(pub, NULL);
    gnutls_rnd(GNUTLS_RND_NONCE, digest, sizeof digest);
    sms_sign_request req = {
        .struct_size = sizeof req,
        .digest = SMS_DIGEST_SHA256,
        .tbs = digest,
        .tbs_len = sizeof digest,
        .tbs_digest = digest,
        .tbs_digest_len = sizeof digest,
    };
    gnutls_sign_algorithm_t alg;
    switch (pk) {
    case GNUTLS_PK_RSA:
        req.scheme = SMS_SIG_RSA_PKCS1;
        alg = GNUTLS_SIGN_RSA_SHA256;
        break;
    case GNUTLS_PK_RSA_PSS:
        req.scheme = SMS_SIG_RSA_PSS;
        alg = GNUTLS_SIGN_RSA_PSS_SHA256;
        break;
    case GNUTLS_PK_ECDSA:
        req.scheme = SMS_SIG_ECDSA;
        alg = GNUTLS_SIGN_ECDSA_SHA256;
        break;
    case GNUTLS_PK_EDDSA_ED25519:
        req.scheme = SMS_SIG_ED25519;
        alg = GNUTLS_SIGN_EDDSA_ED25519;
        break;
    default:
        goto out;
    }
    r = p11_sign_locked(s, &req, sig, &sig_len, err, err_size);
    if (r < 0)
        goto out;
    gnutls_datum_t sd = {sig, (unsigned)sig_len}, dd = {digest, sizeof digest};
    if (pk == GNUTLS_PK_EDDSA_ED25519)
        r = gnutls_pubkey_verify_data2(pub, alg, 0, &dd, &sd);
    else
        r = gnutls_pubkey_verify_hash2(pub, alg, 0, &dd, &sd);
    r = r < 0 ? SMS_ERR_KEY_MISMATCH : SMS_OK;
out:
    if (pub)
        gnutls_pubkey_deinit(pub);
    return r;
}

/* ---- certificates ------------------------------------------------------ */

typedef struct cert_set {
    gnutls_x509_crt_t crt[MAX_OBJECTS];
    bool same_id[MAX_OBJECTS];    /* on the token with the key's CKA_ID */
    bool same_label[MAX_OBJECTS]; /* on the token with the key's CKA_LABEL */
    size_t n;
} cert_set;

static void cert_set_clear(cert_set *cs)
{
    for (size_t i = 0; i < cs->n; i++)
        gnutls_x509_crt_deinit(cs->crt[i]);
    cs->n = 0;
}

static void read_token_certs(p11_signer *s, cert_set *cs)
{
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_CERTIFICATE_TYPE ct = CKC_X_509;
    CK_ATTRIBUTE t[2] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_CERTIFICATE_TYPE, &ct, sizeof ct}};
    CK_OBJECT_HANDLE h[MAX_OBJECTS];
    CK_ULONG n = 0;
    if (find_objects(s, t, 2, h, MAX_OBJECTS, &n) != CKR_OK)
        return;
    uint8_t *key_id = NULL;
    size_t key_id_len = 0;
    if (get_attr(s, s->key, CKA_ID, &key_id, &key_id_len) != CKR_OK)
        key_id = NULL;
    for (CK_ULONG i = 0; i < n; i++) {
        uint8_t *der = NULL, *id = NULL, *label = NULL;
        size_t der_len_ = 0, id_len = 0, label_len = 0;
        if (get_attr(s, h[i], CKA_VALUE, &der, &der_len_) != CKR_OK)
            continue;
        gnutls_datum_t d = {der, (unsigned)der_len_};
        gnutls_x509_crt_t crt;
        if (gnutls_x509_crt_init(&crt) >= 0) {
            if (gnutls_x509_crt_import(crt, &d, GNUTLS_X509_FMT_DER) >= 0) {
                cs->crt[cs->n] = crt;
                cs->same_id[cs->n] = key_id && key_id_len &&
                                     get_attr(s, h[i], CKA_ID, &id, &id_len) == CKR_OK &&
                                     same_bytes(id, id_len, key_id, key_id_len);
                cs->same_label[cs->n] =
                    get_attr(s, h[i], CKA_LABEL, &label, &label_len) == CKR_OK && label_len &&
                    s->key_label &&
                    same_bytes(label, label_len, (uint8_t *)s->key_label, strlen(s->key_label));
                cs->n++;
            } else {
                gnutls_x509_crt_deinit(crt);
            }
        }
        free(der);
        free(id);
        free(label);
    }
    free(key_id);
}

static int read_cert_file(open_ctx *c, const char *path, cert_set *cs)
{
    gnutls_datum_t data = {0};
    int r = gnutls_load_file(path, &data);
    if (r < 0) {
        seterr(c->err, c->err_size, "cannot read the certificate file '%s' (--cert): %s", path,
               errno ? strerror(errno) : gnutls_strerror(r));
        return SMS_ERR_NOINPUT;
    }
    gnutls_x509_crt_t *list = NULL;
    unsigned n = 0;
    r = gnutls_x509_crt_list_import2(&list, &n, &data, GNUTLS_X509_FMT_PEM, 0);
    if (r < 0)
        r = gnutls_x509_crt_list_import2(&list, &n, &data, GNUTLS_X509_FMT_DER, 0);
    gnutls_free(data.data);
    if (r < 0 || n == 0) {
        seterr(c->err, c->err_size, "'%s' (--cert) holds no readable certificate: %s", path,
               r < 0 ? gnutls_strerror(r) : "empty");
        return SMS_ERR_BAD_DATA;
    }
    for (unsigned i = 0; i < n; i++) {
        if (cs->n < MAX_OBJECTS)
            cs->crt[cs->n++] = list[i];
        else
            gnutls_x509_crt_deinit(list[i]);
    }
    gnutls_free(list);
    return SMS_OK;
}

/* Pick the leaf: a certificate whose key the token confirms.  When the
 * token does not show the public key, a token certificate stored with the
 * key's CKA_ID (how every PKCS#11 consumer pairs them) or CKA_LABEL, or the
 * first --cert certificate of the right type; *ret_unsure is then set. */
static int pick_leaf(const key_public *k, CK_KEY_TYPE kt, const cert_set *cs, bool on_token,
                     bool *ret_unsure)
{
    int by_id = -1, by_label = -1, first = -1;
    *ret_unsure = false;
    for (size_t i = 0; i < cs->n; i++) {
        int m = key_public_matches(k, kt, cs->crt[i]);
        if (m == 1)
            return (int)i;
        if (m < 0 && by_id < 0 && cs->same_id[i])
            by_id = (int)i;
        if (m < 0 && by_label < 0 && cs->same_label[i])
            by_label = (int)i;
        if (m < 0 && first < 0)
            first = (int)i;
    }
    int pick = by_id >= 0 ? by_id : by_label >= 0 ? by_label : on_token ? -1 : first;
    *ret_unsure = pick >= 0;
    return pick;
}

static bool only_ca_certs(const cert_set *cs)
{
    for (size_t i = 0; i < cs->n; i++)
        if (gnutls_x509_crt_get_ca_status(cs->crt[i], NULL) <= 0)
            return false;
    return true;
}

/* Leaf first, then each issuer found in pool, up to a self-signed one. */
static size_t build_chain(gnutls_x509_crt_t leaf, const cert_set *pool, gnutls_x509_crt_t *out)
{
    size_t n = 0;
    out[n++] = leaf;
    while (n < MAX_CHAIN) {
        gnutls_x509_crt_t cur = out[n - 1];
        if (gnutls_x509_crt_check_issuer(cur, cur))
            break;
        gnutls_x509_crt_t next = NULL;
        for (size_t i = 0; i < pool->n && !next; i++) {
            bool used = false;
            for (size_t j = 0; j < n; j++)
                used |= gnutls_x509_crt_equals(out[j], pool->crt[i]) != 0;
            if (!used && gnutls_x509_crt_check_issuer(cur, pool->crt[i]))
                next = pool->crt[i];
        }
        if (!next)
            break;
        out[n++] = next;
    }
    return n;
}

/* The chain as DER, and the signer object around s. */
static int make_signer(open_ctx *c, gnutls_x509_crt_t *chain, size_t n, sms_signer **ret)
{
    gnutls_datum_t der[MAX_CHAIN];
    const uint8_t *ders[MAX_CHAIN];
    size_t lens[MAX_CHAIN];
    size_t done = 0;
    int r = SMS_OK;
    for (; done < n; done++) {
        if (gnutls_x509_crt_export2(chain[done], GNUTLS_X509_FMT_DER, &der[done]) < 0) {
            r = SMS_ERR_BAD_DATA;
            seterr(c->err, c->err_size, "cannot export certificate %zu of the chain", done);
            break;
        }
        ders[done] = der[done].data;
        lens[done] = der[done].size;
    }
    if (r == SMS_OK) {
        r = sms_signer_new(&p11_class, c->s, ders, lens, n, ret);
        if (r < 0)
            seterr(c->err, c->err_size,
                   "the certificate for key '%s' on token '%s' cannot be used: %s", c->s->key_label,
                   c->s->tok.label, sms_strerror(r));
    }
    for (size_t i = 0; i < done; i++)
        gnutls_free(der[i].data);
    return r;
}

static int open_with_certs(open_ctx *c, sms_signer **ret)
{
    p11_signer *s = c->s;
    const char *cert_file =
        HAS_MEMBER(c->o, sms_signer_options, cert_file) ? c->o->cert_file : NULL;
    key_public k = {0};
    cert_set *tok = calloc(1, sizeof *tok), *file = calloc(1, sizeof *file);
    gnutls_x509_crt_t chain[MAX_CHAIN];
    int r;
    if (!tok || !file) {
        r = SMS_ERR_NOMEM;
        goto out;
    }
    key_public_read(s, &k);
    read_token_certs(s, tok);
    if (cert_file && (r = read_cert_file(c, cert_file, file)) < 0)
        goto out;

    /* --cert wins; a --cert that holds only the CA chain still works with
     * the leaf from the token. */
    bool unsure = false;
    int leaf = cert_file ? pick_leaf(&k, s->key_type, file, false, &unsure) : -1;
    bool leaf_from_file = leaf >= 0;
    if (leaf < 0 && (!cert_file || only_ca_certs(file)))
        leaf = pick_leaf(&k, s->key_type, tok, true, &unsure);
    if (leaf < 0) {
        if (cert_file)
            seterr(c->err, c->err_size,
                   "no certificate in '%s' (--cert) belongs to key '%s' on PKCS#11 token '%s'; "
                   "give the certificate issued for this key",
                   cert_file, s->key_label, s->tok.label);
        else
            seterr(c->err, c->err_size,
                   "PKCS#11 token '%s' holds no certificate for key '%s': give the signer "
                   "certificate (and chain) with --cert FILE, or store it on the token with the "
                   "key's id",
                   s->tok.label, s->key_label);
        r = cert_file ? SMS_ERR_KEY_MISMATCH : SMS_ERR_BAD_DATA;
        goto out;
    }
    const cert_set *from = leaf_from_file ? file : tok;
    /* A certificate paired by CKA_ID is trusted as the token's own pairing
     * (and every signature is verified against it by the library anyway);
     * any other guess must prove itself now, before content is read. */
    if (unsure && (leaf_from_file || !from->same_id[leaf])) {
        r = test_signature(s, from->crt[leaf], c->err, c->err_size);
        if (r == SMS_ERR_KEY_MISMATCH)
            seterr(c->err, c->err_size,
                   "key '%s' on PKCS#11 token '%s' does not match the certificate%s%s; use the "
                   "certificate issued for this key",
                   s->key_label, s->tok.label, leaf_from_file ? " in " : " on the token",
                   leaf_from_file ? cert_file : "");
        if (r < 0)
            goto out;
    }
    /* The chain: from --cert when given, else from the token. */
    cert_set *pool = cert_file ? file : tok;
    size_t n = build_chain(from->crt[leaf], pool, chain);
    r = make_signer(c, chain, n, ret);
out:
    key_public_clear(&k);
    if (tok)
        cert_set_clear(tok);
    if (file)
        cert_set_clear(file);
    free(tok);
    free(file);
    return r;
}

/* ---- open -------------------------------------------------------------- */

static int check_mechanism(open_ctx *c)
{
    p11_signer *s = c->s;
    CK_MECHANISM_TYPE m = s->key_type == CKK_RSA          ? CKM_RSA_PKCS
                          : s->key_type == CKK_EC         ? CKM_ECDSA
                          : s->key_type == CKK_EC_EDWARDS ? CKM_EDDSA
                                                          : (CK_MECHANISM_TYPE)-1;
    if (m == (CK_MECHANISM_TYPE)-1) {
        seterr(c->err, c->err_size,
               "key '%s' on PKCS#11 token '%s' is of a type smimestream cannot sign with (use "
               "RSA, EC P-256/P-384/P-521 or Ed25519)",
               s->key_label, s->tok.label);
        return SMS_ERR_UNSUPPORTED;
    }
    CK_MECHANISM_INFO mi;
    CK_RV rv = s->mod->C_GetMechanismInfo(s->slot, m, &mi);
    if (rv == CKR_MECHANISM_INVALID || (rv == CKR_OK && !(mi.flags & CKF_SIGN))) {
        seterr(c->err, c->err_size,
               "PKCS#11 token '%s' cannot sign with key '%s': it lacks the %s mechanism",
               s->tok.label, s->key_label,
               m == CKM_RSA_PKCS ? "CKM_RSA_PKCS"
               : m == CKM_ECDSA  ? "CKM_ECDSA"
                                 : "CKM_EDDSA");
        return SMS_ERR_UNSUPPORTED;
    }
    return SMS_OK;
}

static int open_session(open_ctx *c)
{
    p11_signer *s = c->s;
    CK_RV rv = s->mod->C_OpenSession(s->slot, CKF_SERIAL_SESSION, NULL, NULL, &s->session);
    if (rv != CKR_OK) {
        seterr(c->err, c->err_size, "cannot open a session with PKCS#11 token '%s' (%s)",
               s->tok.label, ckr(rv).s);
        return ckr_is_gone(rv) ? SMS_ERR_UNAVAILABLE : SMS_ERR_SIGNER;
    }
    s->have_session = true;
    return SMS_OK;
}

/* Log in unless this process is logged in to the token already (another
 * signer on the same token) or the token needs no login. */
static int ensure_login(open_ctx *c, char uri_pin[PIN_MAX])
{
    p11_signer *s = c->s;
    CK_SESSION_INFO si;
    CK_TOKEN_INFO ti;
    bool logged_in = s->mod->C_GetSessionInfo(s->session, &si) == CKR_OK &&
                     (si.state == CKS_RO_USER_FUNCTIONS || si.state == CKS_RW_USER_FUNCTIONS);
    bool got_info = s->mod->C_GetTokenInfo(s->slot, &ti) == CKR_OK;
    /* Some tokens do not say CKF_LOGIN_REQUIRED yet hide their keys or
     * refuse to sign until a login: when the user gave a PIN, use it. */
    bool pin_given = uri_pin[0] || p11_kit_uri_get_pin_source(c->uri) ||
                     (HAS_MEMBER(c->o, sms_signer_options, pin_file) && c->o->pin_file);
    bool required = !got_info || (ti.flags & CKF_LOGIN_REQUIRED) ||
                    (pin_given && (ti.flags & CKF_USER_PIN_INITIALIZED));
    if (logged_in)
        login_join(s, false);
    if (logged_in || !required)
        return SMS_OK;
    /* The key's CKA_ALWAYS_AUTHENTICATE is not visible before login; keep
     * the PIN for now and drop it once the key says it is not needed. */
    int r = login(c, uri_pin);
    if (r == SMS_OK)
        login_join(s, true);
    return r;
}

static int p11_open(const char *spec, const sms_signer_options *o, sms_signer **ret, char *err,
                    size_t err_size)
{
    char uri_pin[PIN_MAX];
    open_ctx c = {.o = o, .err = err, .err_size = err_size};
    int r;
    uri_pin[0] = '\0';
    if (!o || o->struct_size < offsetof(sms_signer_options, cert_file) + sizeof o->cert_file) {
        seterr(err, err_size, "PKCS#11 signer: options from an incompatible caller");
        return SMS_ERR_INVALID_ARG;
    }
    c.s = calloc(1, sizeof *c.s);
    if (!c.s)
        return SMS_ERR_NOMEM;
    pthread_mutex_init(&c.s->lock, NULL);

    if ((r = parse_uri(&c, spec, uri_pin)) < 0 || (r = load_modules(&c)) < 0 ||
        (r = find_token(&c)) < 0 || (r = open_session(&c)) < 0 ||
        (r = ensure_login(&c, uri_pin)) < 0 || (r = find_key(&c)) < 0 ||
        (r = check_mechanism(&c)) < 0)
        goto fail;
    if (!c.s->always_auth)
        wipe_free_pin(c.s);
    else if ((r = fetch_pin_for_key(&c, uri_pin)) < 0)
        goto fail;
    if (asprintf(&c.s->describe, "PKCS#11 key '%s' on token '%s'", c.s->key_label, c.s->tok.label) <
        0) {
        c.s->describe = NULL;
        r = SMS_ERR_NOMEM;
        goto fail;
    }
    r = open_with_certs(&c, ret);
    if (r < 0)
        goto fail;
    sms_wipe(uri_pin, sizeof uri_pin);
    p11_kit_uri_free(c.uri);
    free(c.shown_uri);
    return SMS_OK; /* c.s now belongs to the signer */
fail:
    sms_wipe(uri_pin, sizeof uri_pin);
    p11_destroy(c.s);
    if (c.uri)
        p11_kit_uri_free(c.uri);
    free(c.shown_uri);
    return r;
}

static const char *const p11_schemes[] = {"pkcs11", NULL};

__attribute__((visibility("default"))) const sms_plugin_descriptor sms_plugin_v1 = {
    .abi_version = SMS_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(sms_plugin_descriptor),
    .name = "pkcs11",
    .schemes = p11_schemes,
    .open = p11_open,
};
