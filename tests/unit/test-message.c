/* Unit tests for the message writer (message.c) and the signer object
 * (signer.c), through the public API only.
 *
 * Every message a test produces is taken apart here (outer multipart/signed,
 * inner multipart/mixed, base64 and quoted-printable bodies) and its CMS
 * signature is verified with GnuTLS against the self-signed certificate the
 * test made, with the signed entity as the detached content.  Keys are
 * generated once per run; the signer is a test class that signs with GnuTLS
 * and records what the library asked of it. */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>

#include <gnutls/abstract.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/pkcs7.h>
#include <gnutls/x509.h>

#include <smimestream/smimestream.h>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

#define FROM_ADDR "scanner@example.org"
#define KIB ((size_t)1024)
#define MIB ((size_t)1024 * 1024)
#define FIXED_DATE ((time_t)1700000000) /* Tue, 14 Nov 2023 22:13:20 +0000 */

/* ==== keys and certificates ============================================ */

typedef enum {
    KEY_RSA,
    KEY_ECDSA,
    KEY_ED25519,
    KEY_ECDSA384,
    KEY_RSA_PSS,     /* an RSASSA-PSS key and certificate */
    KEY_ECDSA_OTHER, /* a second key of each type, for mismatches */
    KEY_ED25519_OTHER,
    N_KEYS,
} key_kind;

typedef struct test_key {
    gnutls_privkey_t priv;
    gnutls_datum_t der; /* the self-signed certificate */
} test_key;

static test_key keys[N_KEYS];

static void make_cert(gnutls_x509_privkey_t x, gnutls_digest_algorithm_t dig, gnutls_datum_t *der)
{
    gnutls_x509_crt_t crt;
    uint8_t serial[9];

    g_assert_cmpint(gnutls_x509_crt_init(&crt), ==, 0);
    g_assert_cmpint(gnutls_x509_crt_set_version(crt, 3), ==, 0);
    g_assert_cmpint(gnutls_rnd(GNUTLS_RND_NONCE, serial, sizeof serial), ==, 0);
    serial[0] = (uint8_t)((serial[0] & 0x7f) | 0x01);
    g_assert_cmpint(gnutls_x509_crt_set_serial(crt, serial, sizeof serial), ==, 0);
    /* Valid from 2000 so that FIXED_DATE lies inside the validity too. */
    g_assert_cmpint(gnutls_x509_crt_set_activation_time(crt, 946684800), ==, 0);
    g_assert_cmpint(gnutls_x509_crt_set_expiration_time(crt, time(NULL) + 10 * 365 * 86400L), ==,
                    0);
    g_assert_cmpint(
        gnutls_x509_crt_set_dn(crt, "CN=smimestream test signer,O=smimestream tests", NULL), ==, 0);
    g_assert_cmpint(gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_RFC822NAME, FROM_ADDR,
                                                         strlen(FROM_ADDR), GNUTLS_FSAN_SET),
                    ==, 0);
    g_assert_cmpint(gnutls_x509_crt_set_key(crt, x), ==, 0);
    g_assert_cmpint(gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_DIGITAL_SIGNATURE |
                                                           GNUTLS_KEY_NON_REPUDIATION),
                    ==, 0);
    g_assert_cmpint(gnutls_x509_crt_set_key_purpose_oid(crt, GNUTLS_KP_EMAIL_PROTECTION, 0), ==, 0);
    g_assert_cmpint(gnutls_x509_crt_set_basic_constraints(crt, 0, -1), ==, 0);
    int r = gnutls_x509_crt_sign2(crt, crt, x, dig, 0);
    if (r < 0)
        g_error("signing the test certificate: %s", gnutls_strerror(r));
    g_assert_cmpint(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_DER, der), ==, 0);
    gnutls_x509_crt_deinit(crt);
}

static const test_key *get_key(key_kind kind)
{
    test_key *k = &keys[kind];
    if (k->priv)
        return k;
    gnutls_pk_algorithm_t pk;
    unsigned bits;
    gnutls_digest_algorithm_t dig = GNUTLS_DIG_SHA256;
    switch (kind) {
    case KEY_RSA:
        pk = GNUTLS_PK_RSA;
        bits = 2048;
        break;
    case KEY_RSA_PSS:
        pk = GNUTLS_PK_RSA_PSS;
        bits = 2048;
        break;
    case KEY_ECDSA:
    case KEY_ECDSA_OTHER:
        pk = GNUTLS_PK_ECDSA;
        bits = GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1);
        break;
    case KEY_ECDSA384:
        pk = GNUTLS_PK_ECDSA;
        bits = GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP384R1);
        dig = GNUTLS_DIG_SHA384;
        break;
    default:
        pk = GNUTLS_PK_EDDSA_ED25519;
        bits = GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_ED25519);
        dig = GNUTLS_DIG_SHA512;
        break;
    }
    gnutls_x509_privkey_t x;
    g_assert_cmpint(gnutls_x509_privkey_init(&x), ==, 0);
    int r = gnutls_x509_privkey_generate2(x, pk, bits, 0, NULL, 0);
    if (r < 0)
        g_error("generating a %s key: %s", gnutls_pk_get_name(pk), gnutls_strerror(r));
    make_cert(x, dig, &k->der);
    g_assert_cmpint(gnutls_privkey_init(&k->priv), ==, 0);
    g_assert_cmpint(gnutls_privkey_import_x509(k->priv, x, GNUTLS_PRIVKEY_IMPORT_AUTO_RELEASE), ==,
                    0);
    return k;
}

static void free_keys(void)
{
    for (size_t i = 0; i < N_KEYS; i++) {
        if (keys[i].priv)
            gnutls_privkey_deinit(keys[i].priv);
        gnutls_free(keys[i].der.data);
    }
    memset(keys, 0, sizeof keys);
}

/* ==== the recording test signer ======================================== */

typedef struct rec_signer {
    /* set by the test */
    gnutls_privkey_t key; /* borrowed from keys[] */
    int fail_code;        /* when set, sign() fails with it */
    const char *fail_msg;
    enum { LEN_REAL, LEN_ZERO, LEN_TOO_LONG } length_mode; /* lie about the length */
    sms_message *msg;   /* when set, sign() records the progress phase */
    bool abort_in_sign; /* sign() calls sms_message_abort(msg) */
    /* recorded */
    unsigned calls;
    unsigned destroyed;
    sms_sig_scheme scheme;
    sms_digest digest;
    sms_phase phase;
    size_t tbs_len, tbs_digest_len;
    uint8_t *tbs; /* copy of the last tbs */
    uint8_t tbs_digest[64];
} rec_signer;

static gnutls_digest_algorithm_t gnutls_dig(sms_digest d)
{
    switch (d) {
    case SMS_DIGEST_SHA256:
        return GNUTLS_DIG_SHA256;
    case SMS_DIGEST_SHA384:
        return GNUTLS_DIG_SHA384;
    case SMS_DIGEST_SHA512:
        return GNUTLS_DIG_SHA512;
    case SMS_DIGEST_SHA224:
        return GNUTLS_DIG_SHA224;
    case SMS_DIGEST_SHA1:
        return GNUTLS_DIG_SHA1;
    case SMS_DIGEST_MD5:
        return GNUTLS_DIG_MD5;
    default:
        return GNUTLS_DIG_UNKNOWN;
    }
}

static gnutls_sign_algorithm_t sign_algo(sms_sig_scheme scheme, sms_digest d)
{
    switch (scheme) {
    case SMS_SIG_RSA_PKCS1:
        return gnutls_pk_to_sign(GNUTLS_PK_RSA, gnutls_dig(d));
    case SMS_SIG_ECDSA:
        return gnutls_pk_to_sign(GNUTLS_PK_ECDSA, gnutls_dig(d));
    case SMS_SIG_ED25519:
        return GNUTLS_SIGN_EDDSA_ED25519;
    case SMS_SIG_RSA_PSS:
        return d == SMS_DIGEST_SHA256   ? GNUTLS_SIGN_RSA_PSS_RSAE_SHA256
               : d == SMS_DIGEST_SHA384 ? GNUTLS_SIGN_RSA_PSS_RSAE_SHA384
               : d == SMS_DIGEST_SHA512 ? GNUTLS_SIGN_RSA_PSS_RSAE_SHA512
                                        : GNUTLS_SIGN_UNKNOWN;
    }
    return GNUTLS_SIGN_UNKNOWN;
}

static int rec_sign(void *impl, const sms_sign_request *req, uint8_t *sig, size_t *sig_len,
                    char *err, size_t err_size)
{
    rec_signer *r = impl;
    r->calls++;
    r->scheme = req->scheme;
    r->digest = req->digest;
    r->tbs_len = req->tbs_len;
    r->tbs_digest_len = req->tbs_digest_len;
    g_free(r->tbs);
    r->tbs = g_memdup2(req->tbs, req->tbs_len);
    if (req->tbs_digest_len <= sizeof r->tbs_digest)
        memcpy(r->tbs_digest, req->tbs_digest, req->tbs_digest_len);
    if (r->msg) {
        sms_progress p = {.struct_size = sizeof p};
        g_assert_cmpint(sms_message_get_progress(r->msg, &p), ==, SMS_OK);
        r->phase = p.phase;
    }
    if (r->abort_in_sign)
        sms_message_abort(r->msg);
    if (r->fail_code) {
        g_strlcpy(err, r->fail_msg ? r->fail_msg : "", err_size);
        return r->fail_code;
    }
    if (r->length_mode == LEN_ZERO) {
        *sig_len = 0;
        return SMS_OK;
    }
    if (r->length_mode == LEN_TOO_LONG) {
        memset(sig, 0x42, *sig_len);
        *sig_len += 1;
        return SMS_OK;
    }

    gnutls_datum_t out = {NULL, 0};
    int e;
    if (req->scheme == SMS_SIG_ED25519) {
        gnutls_datum_t data = {(unsigned char *)req->tbs, (unsigned)req->tbs_len};
        e = gnutls_privkey_sign_data2(r->key, GNUTLS_SIGN_EDDSA_ED25519, 0, &data, &out);
    } else {
        gnutls_datum_t h = {(unsigned char *)req->tbs_digest, (unsigned)req->tbs_digest_len};
        gnutls_sign_algorithm_t alg = sign_algo(req->scheme, req->digest);
        if (gnutls_privkey_get_pk_algorithm(r->key, NULL) == GNUTLS_PK_RSA_PSS)
            alg = alg == GNUTLS_SIGN_RSA_PSS_RSAE_SHA256   ? GNUTLS_SIGN_RSA_PSS_SHA256
                  : alg == GNUTLS_SIGN_RSA_PSS_RSAE_SHA384 ? GNUTLS_SIGN_RSA_PSS_SHA384
                                                           : GNUTLS_SIGN_RSA_PSS_SHA512;
        e = gnutls_privkey_sign_hash2(r->key, alg, 0, &h, &out);
    }
    if (e < 0) {
        g_snprintf(err, (gulong)err_size, "test signer: %s", gnutls_strerror(e));
        return SMS_ERR_SIGNER;
    }
    if (out.size > *sig_len) {
        gnutls_free(out.data);
        g_strlcpy(err, "test signer: signature too long", err_size);
        return SMS_ERR_SIGNER;
    }
    memcpy(sig, out.data, out.size);
    *sig_len = out.size;
    gnutls_free(out.data);
    return SMS_OK;
}

static void rec_destroy(void *impl)
{
    rec_signer *r = impl;
    r->destroyed++;
}

static const char *rec_describe(void *impl)
{
    (void)impl;
    return "the recording test signer";
}

static const sms_signer_class rec_class = {
    .struct_size = sizeof(sms_signer_class),
    .name = "test",
    .sign = rec_sign,
    .destroy = rec_destroy,
    .describe = NULL,
};

/* A signer whose certificate is cert_kind's and whose key is key_kind's. */
static sms_signer *make_signer2(key_kind cert_kind, key_kind priv_kind, rec_signer *rec)
{
    const test_key *ck = get_key(cert_kind);
    rec->key = get_key(priv_kind)->priv;
    const uint8_t *certs[1] = {ck->der.data};
    size_t lens[1] = {ck->der.size};
    sms_signer *s = NULL;
    g_assert_cmpint(sms_signer_new(&rec_class, rec, certs, lens, 1, &s), ==, SMS_OK);
    g_assert_nonnull(s);
    return s;
}

static sms_signer *make_signer(key_kind kind, rec_signer *rec)
{
    return make_signer2(kind, kind, rec);
}

static void rec_clear(rec_signer *r)
{
    g_free(r->tbs);
    r->tbs = NULL;
}

/* ==== the pattern source =============================================== */

/* Deterministic pseudo-random bytes: byte i of stream `seed`. */
static inline uint8_t pat_byte(uint32_t seed, uint64_t i)
{
    uint32_t x = (uint32_t)(i >> 2) * 0x9E3779B1u ^ seed ^ (uint32_t)(i >> 34);
    x ^= x >> 16;
    x *= 0x85EBCA6Bu;
    x ^= x >> 13;
    return (uint8_t)(x >> (8 * (i & 3)));
}

static void pat_fill(uint32_t seed, uint64_t off, uint8_t *buf, size_t n)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = pat_byte(seed, off + i);
}

typedef struct pat_src {
    /* set by the test */
    uint64_t size;     /* bytes it can serve */
    bool unknown_size; /* declare -1 instead of size */
    uint32_t seed;
    const size_t *pieces; /* serve at most pieces[calls % n_pieces] per call */
    size_t n_pieces;
    sms_message *msg;   /* for cancel/abort/progress */
    uint64_t cancel_at; /* cancel once this many bytes were served */
    uint64_t abort_at;  /* abort once this many bytes were served */
    uint64_t fail_at;   /* fail with fail_code once this many were served */
    int fail_code;
    bool too_much; /* claim one byte more than asked */
    bool check_progress;
    int index;     /* its attachment index, for progress checks */
    uint64_t base; /* bytes of the attachments before it */
    bool track_heap;
    /* recorded */
    unsigned calls;
    unsigned calls_after_eof;
    unsigned calls_after_stop;
    unsigned destroyed;
    unsigned progress_checks;
    uint64_t served;
    size_t max_cap, min_cap;
    bool eof, stopped;
    size_t heap_base, heap_max;
} pat_src;

static size_t heap_in_use(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

static void pat_check_progress(pat_src *p)
{
    sms_progress pr = {.struct_size = sizeof pr};
    g_assert_cmpint(sms_message_get_progress(p->msg, &pr), ==, SMS_OK);
    g_assert_cmpint(pr.phase, ==, SMS_PHASE_ATTACHMENT);
    g_assert_cmpint(pr.attachment_index, ==, p->index);
    g_assert_cmpuint(pr.attachment_bytes, ==, p->served);
    g_assert_cmpint(pr.attachment_size, ==, p->unknown_size ? -1 : (int64_t)p->size);
    g_assert_cmpuint(pr.source_bytes, ==, p->base + p->served);
    g_assert_cmpint(pr.cancelled, ==, 0);
    p->progress_checks++;
}

static int pat_read(void *user_data, void *buf, size_t cap, size_t *ret_n, char *err,
                    size_t err_size)
{
    pat_src *p = user_data;
    p->calls++;
    if (cap > p->max_cap)
        p->max_cap = cap;
    if (p->min_cap == 0 || cap < p->min_cap)
        p->min_cap = cap;
    if (p->eof)
        p->calls_after_eof++;
    if (p->stopped)
        p->calls_after_stop++;
    if (p->track_heap) {
        size_t h = heap_in_use();
        if (h > p->heap_max)
            p->heap_max = h;
    }
    if (p->check_progress)
        pat_check_progress(p);
    if (p->fail_code && p->served >= p->fail_at) {
        p->stopped = true;
        g_strlcpy(err, "disk on fire", err_size);
        return p->fail_code;
    }

    uint64_t left = p->size - p->served;
    size_t n = cap;
    if (n > left)
        n = (size_t)left;
    if (p->n_pieces && n > p->pieces[(p->calls - 1) % p->n_pieces])
        n = p->pieces[(p->calls - 1) % p->n_pieces];
    uint64_t stops[] = {p->cancel_at, p->abort_at, p->fail_at};
    for (size_t i = 0; i < G_N_ELEMENTS(stops); i++)
        if (stops[i] && p->served < stops[i] && n > stops[i] - p->served)
            n = (size_t)(stops[i] - p->served);
    pat_fill(p->seed, p->served, buf, n);
    p->served += n;
    if (n == 0)
        p->eof = true;
    if (!p->stopped && p->cancel_at && p->served == p->cancel_at) {
        sms_message_cancel(p->msg);
        p->stopped = true;
    }
    if (!p->stopped && p->abort_at && p->served == p->abort_at) {
        sms_message_abort(p->msg);
        p->stopped = true;
    }
    *ret_n = p->too_much ? cap + 1 : n;
    return SMS_OK;
}

static void pat_destroy(void *user_data)
{
    pat_src *p = user_data;
    p->destroyed++;
}

static void add_pat(sms_message *m, pat_src *p, const char *name, const char *type)
{
    sms_source *src = NULL;
    g_assert_cmpint(sms_source_new_callback(pat_read, p, pat_destroy,
                                            p->unknown_size ? -1 : (int64_t)p->size, &src),
                    ==, SMS_OK);
    g_assert_cmpint(sms_message_add_attachment(m, src, name, type), ==, SMS_OK);
}

/* ==== building and reading messages ==================================== */

static sms_message *new_message(sms_signer *signer)
{
    sms_message *m = sms_message_new();
    g_assert_nonnull(m);
    g_assert_cmpint(sms_message_set_from(m, "Scanner <" FROM_ADDR ">"), ==, SMS_OK);
    g_assert_cmpint(sms_message_add_to(m, "Alice Example <alice@example.org>"), ==, SMS_OK);
    g_assert_cmpint(sms_message_add_to(m, "bob@example.net"), ==, SMS_OK);
    g_assert_cmpint(sms_message_add_cc(m, "carol@example.com"), ==, SMS_OK);
    g_assert_cmpint(sms_message_set_subject(m, "Scan 42"), ==, SMS_OK);
    static const char body[] = "Hello,\nthe scan is attached.\n";
    g_assert_cmpint(sms_message_set_body(m, body, strlen(body)), ==, SMS_OK);
    if (signer)
        g_assert_cmpint(sms_message_set_signer(m, signer), ==, SMS_OK);
    return m;
}

/* Read until the end or an error with reads of at most cap bytes; append
 * what was returned to out.  Returns the final code. */
static int read_all(sms_message *m, size_t cap, GByteArray *out)
{
    uint8_t *buf = g_malloc(cap);
    int rc;
    for (;;) {
        size_t n = (size_t)-1;
        rc = sms_message_read(m, buf, cap, &n);
        if (rc < 0) {
            g_assert_cmpuint(n, ==, (size_t)-1); /* untouched on failure */
            break;
        }
        g_assert_cmpuint(n, <=, cap);
        if (n == 0)
            break;
        g_byte_array_append(out, buf, (guint)n);
    }
    g_free(buf);
    return rc;
}

static gboolean mem_contains(const void *hay, size_t n, const char *needle)
{
    return memmem(hay, n, needle, strlen(needle)) != NULL;
}

/* ==== taking a message apart =========================================== */

typedef struct part {
    const uint8_t *raw; /* the whole part: headers and body */
    size_t raw_len;
    char *headers; /* unfolded, "\r\n" after each field */
    const uint8_t *body;
    size_t body_len;
} part;

#define MAX_PARTS 32

typedef struct smime {
    const uint8_t *data;
    size_t len;
    char *headers;       /* outer header block, unfolded */
    char *outer, *inner; /* boundaries */
    char *micalg;
    const uint8_t *entity; /* the signed entity (detached content) */
    size_t entity_len;
    part entity_part;
    part parts[MAX_PARTS]; /* of the inner multipart/mixed */
    size_t n_parts;
    part sig;        /* the application/pkcs7-signature part */
    GByteArray *p7s; /* its DER */
} smime;

/* Split a header block from its body; unfold it. */
static char *header_block(const uint8_t *p, size_t n, size_t *ret_body)
{
    const uint8_t *end = memmem(p, n, "\r\n\r\n", 4);
    g_assert_nonnull(end);
    size_t hl = (size_t)(end - p) + 2;
    GString *s = g_string_sized_new(hl + 1);
    for (size_t i = 0; i < hl; i++) {
        if (p[i] == '\r' && i + 2 < hl && p[i + 1] == '\n' &&
            (p[i + 2] == ' ' || p[i + 2] == '\t')) {
            i++;
            continue;
        }
        g_string_append_c(s, (char)p[i]);
    }
    *ret_body = hl + 2;
    return g_string_free(s, FALSE);
}

/* The value of field `name` (first occurrence), or NULL; *ret_count gets
 * the number of occurrences. */
static char *header_get_n(const char *headers, const char *name, unsigned *ret_count)
{
    char **lines = g_strsplit(headers, "\r\n", -1);
    char *val = NULL;
    unsigned count = 0;
    size_t nl = strlen(name);
    for (char **l = lines; *l; l++) {
        if (g_ascii_strncasecmp(*l, name, nl) == 0 && (*l)[nl] == ':') {
            if (!val)
                val = g_strdup(g_strchug(*l + nl + 1));
            count++;
        }
    }
    g_strfreev(lines);
    if (ret_count)
        *ret_count = count;
    return val;
}

static char *header_get(const char *headers, const char *name)
{
    return header_get_n(headers, name, NULL);
}

/* A parameter of a structured header value (quoted or token), or NULL. */
static char *param_get(const char *value, const char *name)
{
    const char *p = value;
    size_t nl = strlen(name);
    bool in_quotes = false;
    for (; *p; p++) {
        if (*p == '"')
            in_quotes = !in_quotes;
        if (in_quotes || *p != ';')
            continue;
        const char *q = p + 1;
        while (*q == ' ' || *q == '\t')
            q++;
        if (g_ascii_strncasecmp(q, name, nl) != 0 || q[nl] != '=')
            continue;
        q += nl + 1;
        GString *v = g_string_new(NULL);
        if (*q == '"') {
            for (q++; *q && *q != '"'; q++) {
                if (*q == '\\' && q[1])
                    q++;
                g_string_append_c(v, *q);
            }
        } else {
            while (*q && *q != ';' && *q != ' ' && *q != '\t')
                g_string_append_c(v, *q++);
        }
        return g_string_free(v, FALSE);
    }
    return NULL;
}

/* A parameter in any of its RFC 2045 / RFC 2231 forms: name="v",
 * name*=utf-8''%XX, or name*0*=utf-8''%XX; name*1*=...  Returns UTF-8. */
static char *param_get_any(const char *value, const char *name)
{
    char *v = param_get(value, name);
    if (v)
        return v;
    char *key = g_strdup_printf("%s*", name);
    GString *acc = g_string_new(NULL);
    v = param_get(value, key);
    g_free(key);
    if (v) {
        g_string_append(acc, v);
        g_free(v);
    } else {
        for (unsigned i = 0;; i++) {
            char *k = g_strdup_printf("%s*%u*", name, i);
            char *seg = param_get(value, k);
            g_free(k);
            if (!seg)
                break;
            g_string_append(acc, seg);
            g_free(seg);
        }
    }
    if (acc->len == 0) {
        g_string_free(acc, TRUE);
        return NULL;
    }
    /* charset'language'%XX... */
    const char *q1 = strchr(acc->str, '\'');
    g_assert_nonnull(q1);
    const char *q2 = strchr(q1 + 1, '\'');
    g_assert_nonnull(q2);
    g_assert_cmpint(g_ascii_strncasecmp(acc->str, "utf-8'", 6), ==, 0);
    char *dec = g_uri_unescape_string(q2 + 1, NULL);
    g_assert_nonnull(dec);
    g_assert_true(g_utf8_validate(dec, -1, NULL));
    g_string_free(acc, TRUE);
    return dec;
}

static void part_parse(const uint8_t *raw, size_t len, part *p)
{
    size_t body = 0;
    p->raw = raw;
    p->raw_len = len;
    p->headers = header_block(raw, len, &body);
    p->body = raw + body;
    p->body_len = len - body;
}

/* Split a multipart body at boundary b.  Returns the number of parts;
 * asserts a well-formed close delimiter and sets *ret_end to the offset
 * just after the close delimiter's "--". */
static size_t split_multipart(const uint8_t *body, size_t n, const char *b, part *parts, size_t max,
                              size_t *ret_end)
{
    char *delim = g_strconcat("\r\n--", b, NULL);
    size_t dl = strlen(delim);
    size_t pos, count = 0;
    /* The first delimiter may start the body (no preamble). */
    if (n >= dl - 2 && memcmp(body, delim + 2, dl - 2) == 0) {
        pos = dl - 2;
    } else {
        const uint8_t *d = memmem(body, n, delim, dl);
        g_assert_nonnull(d);
        pos = (size_t)(d - body) + dl;
    }
    for (;;) {
        g_assert_cmpuint(pos + 2, <=, n);
        if (memcmp(body + pos, "--", 2) == 0) {
            *ret_end = pos + 2;
            break;
        }
        g_assert_cmpmem(body + pos, 2, "\r\n", 2); /* no transport padding is written */
        size_t start = pos + 2;
        const uint8_t *d = memmem(body + start, n - start, delim, dl);
        g_assert_nonnull(d);
        size_t end = (size_t)(d - body);
        g_assert_cmpuint(count, <, max);
        part_parse(body + start, end - start, &parts[count++]);
        pos = end + dl;
    }
    g_free(delim);
    return count;
}

static void smime_parse(const uint8_t *data, size_t len, smime *s)
{
    memset(s, 0, sizeof *s);
    s->data = data;
    s->len = len;
    size_t body = 0;
    s->headers = header_block(data, len, &body);

    char *ct = header_get(s->headers, "Content-Type");
    g_assert_nonnull(ct);
    g_assert_true(g_str_has_prefix(ct, "multipart/signed;"));
    char *proto = param_get(ct, "protocol");
    g_assert_cmpstr(proto, ==, "application/pkcs7-signature");
    g_free(proto);
    s->micalg = param_get(ct, "micalg");
    s->outer = param_get(ct, "boundary");
    g_assert_nonnull(s->micalg);
    g_assert_nonnull(s->outer);
    g_free(ct);

    part outer_parts[4];
    size_t end = 0;
    size_t n = split_multipart(data + body, len - body, s->outer, outer_parts, 4, &end);
    g_assert_cmpuint(n, ==, 2);
    /* The close delimiter ends the message; no epilogue. */
    g_assert_cmpuint(body + end + 2, ==, len);
    g_assert_cmpmem(data + len - 2, 2, "\r\n", 2);
    s->entity_part = outer_parts[0];
    s->sig = outer_parts[1];
    s->entity = s->entity_part.raw;
    s->entity_len = s->entity_part.raw_len;

    char *ict = header_get(s->entity_part.headers, "Content-Type");
    g_assert_nonnull(ict);
    g_assert_true(g_str_has_prefix(ict, "multipart/mixed;"));
    s->inner = param_get(ict, "boundary");
    g_assert_nonnull(s->inner);
    g_assert_cmpstr(s->inner, !=, s->outer);
    g_free(ict);
    s->n_parts = split_multipart(s->entity_part.body, s->entity_part.body_len, s->inner, s->parts,
                                 MAX_PARTS, &end);
    /* The entity ends with the inner close delimiter and its CRLF. */
    g_assert_cmpuint(end + 2, ==, s->entity_part.body_len);

    char *sct = header_get(s->sig.headers, "Content-Type");
    g_assert_nonnull(sct);
    g_assert_true(g_str_has_prefix(sct, "application/pkcs7-signature"));
    g_free(sct);
    char *cte = header_get(s->sig.headers, "Content-Transfer-Encoding");
    g_assert_cmpstr(cte, ==, "base64");
    g_free(cte);
}

static void smime_clear(smime *s)
{
    g_free(s->headers);
    g_free(s->outer);
    g_free(s->inner);
    g_free(s->micalg);
    g_free(s->entity_part.headers);
    g_free(s->sig.headers);
    for (size_t i = 0; i < s->n_parts; i++)
        g_free(s->parts[i].headers);
    if (s->p7s)
        g_byte_array_unref(s->p7s);
    memset(s, 0, sizeof *s);
}

/* Every line ends in CRLF (no bare CR or LF) and has at most 998 bytes. */
static void check_lines(const uint8_t *p, size_t n)
{
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\r') {
            g_assert_cmpuint(i + 1, <, n);
            g_assert_cmpint(p[i + 1], ==, '\n');
            if (i - start > 998)
                g_error("a line of %zu bytes (limit 998): '%.60s...'", i - start,
                        (const char *)p + start);
            i++;
            start = i + 1;
        } else {
            g_assert_cmpint(p[i], !=, '\n');
            g_assert_cmpint(p[i], !=, '\0');
        }
    }
    g_assert_cmpuint(start, ==, n); /* the last line ends with CRLF too */
}

static bool b64_char(uint8_t c)
{
    return g_ascii_isalnum(c) || c == '+' || c == '/' || c == '=';
}

/* Decode a base64 body whose lines are all exactly 76 characters except the
 * last.  With out, append the bytes to it; with seed, compare them with the
 * pattern instead.  Returns the number of decoded bytes. */
static uint64_t b64_decode_body(const uint8_t *b, size_t n, GByteArray *out, const uint32_t *seed)
{
    uint64_t total = 0;
    size_t pos = 0;
    while (pos < n) {
        /* Look only one line ahead: memmem over the whole rest would make
         * this quadratic under ASan, which checks the haystack each call. */
        size_t window = n - pos < 78 ? n - pos : 78;
        const uint8_t *eol = memmem(b + pos, window, "\r\n", 2);
        size_t ll = eol ? (size_t)(eol - (b + pos)) : n - pos;
        if (eol)
            g_assert_cmpuint(ll, ==, 76);
        else
            g_assert_cmpuint(ll, <=, 76);
        g_assert_cmpuint(ll, >, 0);
        g_assert_cmpuint(ll % 4, ==, 0);
        for (size_t i = 0; i < ll; i++) {
            g_assert_true(b64_char(b[pos + i]));
            if (b[pos + i] == '=') /* padding only at the very end */
                g_assert_true(!eol && i >= ll - 2);
        }
        uint8_t dec[57];
        gint state = 0;
        guint save = 0;
        size_t dn = g_base64_decode_step((const gchar *)b + pos, ll, dec, &state, &save);
        g_assert_cmpint(state, ==, 0);
        if (out) {
            g_byte_array_append(out, dec, (guint)dn);
        } else {
            for (size_t i = 0; i < dn; i++)
                if (dec[i] != pat_byte(*seed, total + i))
                    g_error("attachment byte %" G_GUINT64_FORMAT " differs", total + i);
        }
        total += dn;
        pos += ll + (eol ? 2 : 0);
    }
    return total;
}

static GByteArray *part_base64(const part *p)
{
    char *cte = header_get(p->headers, "Content-Transfer-Encoding");
    g_assert_cmpstr(cte, ==, "base64");
    g_free(cte);
    GByteArray *a = g_byte_array_new();
    b64_decode_body(p->body, p->body_len, a, NULL);
    return a;
}

/* The attachment part is exactly `size` bytes of pattern `seed`. */
static void check_part_pattern(const part *p, uint32_t seed, uint64_t size)
{
    char *cte = header_get(p->headers, "Content-Transfer-Encoding");
    g_assert_cmpstr(cte, ==, "base64");
    g_free(cte);
    g_assert_cmpuint(b64_decode_body(p->body, p->body_len, NULL, &seed), ==, size);
}

static int hexval(int c)
{
    return g_ascii_xdigit_value((char)c);
}

/* The text of a text/plain part (7bit or quoted-printable), CRLF kept. */
static char *part_text(const part *p)
{
    char *cte = header_get(p->headers, "Content-Transfer-Encoding");
    g_assert_nonnull(cte);
    GString *s = g_string_new(NULL);
    if (g_ascii_strcasecmp(cte, "7bit") == 0) {
        for (size_t i = 0; i < p->body_len; i++)
            g_assert_cmpuint(p->body[i], <, 0x80);
        g_string_append_len(s, (const char *)p->body, (gssize)p->body_len);
    } else {
        g_assert_cmpstr(cte, ==, "quoted-printable");
        const uint8_t *b = p->body;
        size_t n = p->body_len, col = 0;
        for (size_t i = 0; i < n; i++) {
            if (b[i] == '\r') {
                g_assert_cmpuint(col, <=, 76);
                col = 0;
                g_string_append(s, "\r\n");
                i++;
            } else if (b[i] == '=') {
                g_assert_cmpuint(i + 2, <, n);
                if (b[i + 1] == '\r' && b[i + 2] == '\n') { /* soft break */
                    g_assert_cmpuint(col + 1, <=, 76);
                    col = 0;
                    i += 2;
                } else {
                    g_assert_cmpint(hexval(b[i + 1]), >=, 0);
                    g_assert_cmpint(hexval(b[i + 2]), >=, 0);
                    g_string_append_c(s, (char)(hexval(b[i + 1]) * 16 + hexval(b[i + 2])));
                    col += 3;
                    i += 2;
                }
            } else {
                g_assert_cmpuint(b[i], <, 0x80);
                g_string_append_c(s, (char)b[i]);
                col++;
            }
        }
    }
    g_free(cte);
    return g_string_free(s, FALSE);
}

/* The part whose Content-Disposition names `filename`, or NULL. */
static const part *find_attachment(const smime *s, const char *filename)
{
    for (size_t i = 0; i < s->n_parts; i++) {
        char *cd = header_get(s->parts[i].headers, "Content-Disposition");
        char *fn = cd ? param_get_any(cd, "filename") : NULL;
        bool match = fn && strcmp(fn, filename) == 0;
        g_free(fn);
        g_free(cd);
        if (match)
            return &s->parts[i];
    }
    return NULL;
}

/* ==== verifying the signature ========================================== */

static int pkcs7_verify_entity(const smime *s, key_kind kind, const uint8_t *entity,
                               size_t entity_len, unsigned flags)
{
    gnutls_pkcs7_t p7;
    gnutls_datum_t der = {s->p7s->data, s->p7s->len};
    g_assert_cmpint(gnutls_pkcs7_init(&p7), ==, 0);
    g_assert_cmpint(gnutls_pkcs7_import(p7, &der, GNUTLS_X509_FMT_DER), ==, 0);

    gnutls_x509_trust_list_t tl;
    gnutls_x509_crt_t ca;
    g_assert_cmpint(gnutls_x509_trust_list_init(&tl, 0), ==, 0);
    g_assert_cmpint(gnutls_x509_crt_init(&ca), ==, 0);
    g_assert_cmpint(gnutls_x509_crt_import(ca, &get_key(kind)->der, GNUTLS_X509_FMT_DER), ==, 0);
    g_assert_cmpint(gnutls_x509_trust_list_add_cas(tl, &ca, 1, 0), ==, 1); /* takes ca */

    gnutls_typed_vdata_st vd = {.type = GNUTLS_DT_KEY_PURPOSE_OID,
                                .data = (unsigned char *)GNUTLS_KP_EMAIL_PROTECTION};
    gnutls_datum_t data = {(unsigned char *)entity, (unsigned)entity_len};
    int r = gnutls_pkcs7_verify(p7, tl, &vd, 1, 0, entity ? &data : NULL, flags);
    gnutls_x509_trust_list_deinit(tl, 1);
    gnutls_pkcs7_deinit(p7);
    return r;
}

/* Decode the signature part, check it is a detached CMS SignedData with one
 * signer made with pk/dig, and verify it over the entity. */
static void smime_verify_flags(smime *s, key_kind kind, gnutls_pk_algorithm_t pk,
                               gnutls_digest_algorithm_t dig, unsigned flags)
{
    if (!s->p7s) {
        s->p7s = g_byte_array_new();
        b64_decode_body(s->sig.body, s->sig.body_len, s->p7s, NULL);
    }
    g_assert_cmpuint(s->p7s->len, >, 100);
    g_assert_cmpint(s->p7s->data[0], ==, 0x30);

    gnutls_pkcs7_t p7;
    gnutls_datum_t der = {s->p7s->data, s->p7s->len};
    g_assert_cmpint(gnutls_pkcs7_init(&p7), ==, 0);
    g_assert_cmpint(gnutls_pkcs7_import(p7, &der, GNUTLS_X509_FMT_DER), ==, 0);
    g_assert_cmpint(gnutls_pkcs7_get_signature_count(p7), ==, 1);
    gnutls_pkcs7_signature_info_st info;
    g_assert_cmpint(gnutls_pkcs7_get_signature_info(p7, 0, &info), ==, 0);
    g_assert_cmpint(gnutls_sign_get_pk_algorithm(info.algo), ==, pk);
    if (pk != GNUTLS_PK_EDDSA_ED25519)
        g_assert_cmpint(gnutls_sign_get_hash_algorithm(info.algo), ==, dig);
    gnutls_pkcs7_signature_info_deinit(&info);
    g_assert_cmpint(gnutls_pkcs7_get_crt_count(p7), ==, 1);
    gnutls_pkcs7_deinit(p7);

    int r = pkcs7_verify_entity(s, kind, s->entity, s->entity_len, flags);
    if (r < 0)
        g_error("gnutls_pkcs7_verify: %s", gnutls_strerror(r));
}

static void smime_verify(smime *s, key_kind kind, gnutls_pk_algorithm_t pk,
                         gnutls_digest_algorithm_t dig)
{
    smime_verify_flags(s, kind, pk, dig, 0);
}

/* GnuTLS 3.7's PKCS #7 code maps the RSASSA-PSS OID to RSA-PSS-SHA256 and
 * ignores its parameters, so it cannot check PSS with another hash.  Check
 * those by hand: the CMS names RSASSA-PSS with that hash, its messageDigest
 * is the hash of the entity, it carries exactly the signed attributes the
 * signer was given, and its signature verifies over them. */
static void smime_verify_pss_by_hand(smime *s, key_kind kind, sms_digest d, const rec_signer *rec)
{
    gnutls_digest_algorithm_t dig = gnutls_dig(d);
    if (!s->p7s) {
        s->p7s = g_byte_array_new();
        b64_decode_body(s->sig.body, s->sig.body_len, s->p7s, NULL);
    }
    gnutls_pkcs7_t p7;
    gnutls_datum_t der = {s->p7s->data, s->p7s->len};
    g_assert_cmpint(gnutls_pkcs7_init(&p7), ==, 0);
    g_assert_cmpint(gnutls_pkcs7_import(p7, &der, GNUTLS_X509_FMT_DER), ==, 0);
    gnutls_pkcs7_signature_info_st info;
    g_assert_cmpint(gnutls_pkcs7_get_signature_info(p7, 0, &info), ==, 0);
    g_assert_cmpint(gnutls_sign_get_pk_algorithm(info.algo), ==, GNUTLS_PK_RSA_PSS);

    /* The SignerInfo's signatureAlgorithm (the last RSASSA-PSS OID: the
     * certificates come before the signerInfos) has parameters naming the
     * hash twice (hash and MGF1) and a salt as long as the hash. */
    static const uint8_t oid_pss[] = {0x06, 0x09, 0x2a, 0x86, 0x48, 0x86,
                                      0xf7, 0x0d, 0x01, 0x01, 0x0a};
    static const uint8_t oid_sha384[] = {0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                         0x65, 0x03, 0x04, 0x02, 0x02};
    static const uint8_t oid_sha512[] = {0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                         0x65, 0x03, 0x04, 0x02, 0x03};
    const uint8_t *oid_hash = d == SMS_DIGEST_SHA384 ? oid_sha384 : oid_sha512;
    const uint8_t *last = NULL;
    for (const uint8_t *q = s->p7s->data;
         (q = memmem(q, s->p7s->len - (size_t)(q - s->p7s->data), oid_pss, sizeof oid_pss)); q++)
        last = q;
    g_assert_nonnull(last);
    const uint8_t *params = last + sizeof oid_pss;
    g_assert_cmpint(params[0], ==, 0x30);
    size_t plen = params[1];
    g_assert_cmpuint(plen, <, 0x80);
    g_assert_cmpuint((size_t)(params + 2 + plen - s->p7s->data), <=, s->p7s->len);
    unsigned hash_count = 0;
    for (const uint8_t *q = params + 2;
         (q = memmem(q, (size_t)(params + 2 + plen - q), oid_hash, sizeof oid_sha512)); q++)
        hash_count++;
    g_assert_cmpuint(hash_count, ==, 2);
    const uint8_t salt[] = {0xa2, 0x03, 0x02, 0x01, (uint8_t)sms_digest_length(d)};
    g_assert_nonnull(memmem(params + 2, plen, salt, sizeof salt));

    /* messageDigest */
    uint8_t h[64];
    size_t hl = gnutls_hash_get_len(dig);
    g_assert_cmpint(gnutls_hash_fast(dig, s->entity, s->entity_len, h), ==, 0);
    bool found = false;
    for (unsigned i = 0;; i++) {
        char *oid = NULL;
        gnutls_datum_t val = {NULL, 0};
        if (gnutls_pkcs7_get_attr(info.signed_attrs, i, &oid, &val, 0) < 0)
            break;
        if (strcmp(oid, "1.2.840.113549.1.9.4") == 0) {
            /* OCTET STRING, short form length */
            g_assert_cmpuint(val.size, ==, hl + 2);
            g_assert_cmpint(val.data[0], ==, 0x04);
            g_assert_cmpuint(val.data[1], ==, hl);
            g_assert_cmpmem(val.data + 2, hl, h, hl);
            found = true;
        }
        gnutls_free(val.data); /* the OID belongs to the list */
    }
    g_assert_true(found);

    /* The signed attributes the signer saw are in the CMS as [0] IMPLICIT. */
    g_assert_cmpint(rec->tbs[0], ==, 0x31);
    uint8_t *implicit = g_memdup2(rec->tbs, rec->tbs_len);
    implicit[0] = 0xa0;
    g_assert_nonnull(memmem(s->p7s->data, s->p7s->len, implicit, rec->tbs_len));
    g_free(implicit);

    /* The signature over them verifies with the certificate's key. */
    gnutls_x509_crt_t crt;
    gnutls_pubkey_t pub;
    g_assert_cmpint(gnutls_x509_crt_init(&crt), ==, 0);
    g_assert_cmpint(gnutls_x509_crt_import(crt, &get_key(kind)->der, GNUTLS_X509_FMT_DER), ==, 0);
    g_assert_cmpint(gnutls_pubkey_init(&pub), ==, 0);
    g_assert_cmpint(gnutls_pubkey_import_x509(pub, crt, 0), ==, 0);
    bool pss_key = gnutls_pubkey_get_pk_algorithm(pub, NULL) == GNUTLS_PK_RSA_PSS;
    gnutls_sign_algorithm_t alg =
        d == SMS_DIGEST_SHA384
            ? (pss_key ? GNUTLS_SIGN_RSA_PSS_SHA384 : GNUTLS_SIGN_RSA_PSS_RSAE_SHA384)
            : (pss_key ? GNUTLS_SIGN_RSA_PSS_SHA512 : GNUTLS_SIGN_RSA_PSS_RSAE_SHA512);
    g_assert_cmpint(gnutls_hash_fast(dig, rec->tbs, rec->tbs_len, h), ==, 0);
    gnutls_datum_t hd = {h, (unsigned)hl};
    int r = gnutls_pubkey_verify_hash2(pub, alg, 0, &hd, &info.sig);
    if (r < 0)
        g_error("RSA-PSS signature: %s", gnutls_strerror(r));
    /* ... and not over anything else. */
    h[0] ^= 1;
    g_assert_cmpint(gnutls_pubkey_verify_hash2(pub, alg, 0, &hd, &info.sig), <, 0);

    gnutls_pubkey_deinit(pub);
    gnutls_x509_crt_deinit(crt);
    gnutls_pkcs7_signature_info_deinit(&info);
    gnutls_pkcs7_deinit(p7);
}

/* ==== /message/basic =================================================== */

typedef struct basic_case {
    key_kind key;
    sms_digest set_digest; /* SMS_DIGEST_NONE: leave the default */
    unsigned flags;
    sms_digest expect_digest;
    sms_sig_scheme expect_scheme;
    gnutls_pk_algorithm_t expect_pk;
    const char *micalg;
} basic_case;

static const basic_case basic_cases[] = {
    {KEY_RSA, SMS_DIGEST_NONE, 0, SMS_DIGEST_SHA256, SMS_SIG_RSA_PKCS1, GNUTLS_PK_RSA, "sha-256"},
    {KEY_RSA, SMS_DIGEST_SHA384, 0, SMS_DIGEST_SHA384, SMS_SIG_RSA_PKCS1, GNUTLS_PK_RSA, "sha-384"},
    {KEY_RSA, SMS_DIGEST_SHA512, 0, SMS_DIGEST_SHA512, SMS_SIG_RSA_PKCS1, GNUTLS_PK_RSA, "sha-512"},
    {KEY_RSA, SMS_DIGEST_SHA224, 0, SMS_DIGEST_SHA224, SMS_SIG_RSA_PKCS1, GNUTLS_PK_RSA, "sha-224"},
    {KEY_RSA, SMS_DIGEST_NONE, SMS_MESSAGE_RSA_PSS, SMS_DIGEST_SHA256, SMS_SIG_RSA_PSS,
     GNUTLS_PK_RSA_PSS, "sha-256"},
    {KEY_RSA_PSS, SMS_DIGEST_NONE, 0, SMS_DIGEST_SHA256, SMS_SIG_RSA_PSS, GNUTLS_PK_RSA_PSS,
     "sha-256"},
    {KEY_RSA_PSS, SMS_DIGEST_SHA512, 0, SMS_DIGEST_SHA512, SMS_SIG_RSA_PSS, GNUTLS_PK_RSA_PSS,
     "sha-512"},
    {KEY_RSA, SMS_DIGEST_SHA384, SMS_MESSAGE_RSA_PSS, SMS_DIGEST_SHA384, SMS_SIG_RSA_PSS,
     GNUTLS_PK_RSA_PSS, "sha-384"},
    {KEY_ECDSA, SMS_DIGEST_NONE, 0, SMS_DIGEST_SHA256, SMS_SIG_ECDSA, GNUTLS_PK_ECDSA, "sha-256"},
    {KEY_ECDSA, SMS_DIGEST_SHA384, 0, SMS_DIGEST_SHA384, SMS_SIG_ECDSA, GNUTLS_PK_ECDSA, "sha-384"},
    {KEY_ECDSA, SMS_DIGEST_SHA512, 0, SMS_DIGEST_SHA512, SMS_SIG_ECDSA, GNUTLS_PK_ECDSA, "sha-512"},
    {KEY_ECDSA384, SMS_DIGEST_NONE, 0, SMS_DIGEST_SHA384, SMS_SIG_ECDSA, GNUTLS_PK_ECDSA,
     "sha-384"},
    {KEY_ECDSA384, SMS_DIGEST_SHA256, 0, SMS_DIGEST_SHA256, SMS_SIG_ECDSA, GNUTLS_PK_ECDSA,
     "sha-256"},
    {KEY_ED25519, SMS_DIGEST_NONE, 0, SMS_DIGEST_SHA512, SMS_SIG_ED25519, GNUTLS_PK_EDDSA_ED25519,
     "sha-512"},
    {KEY_ED25519, SMS_DIGEST_SHA512, 0, SMS_DIGEST_SHA512, SMS_SIG_ED25519, GNUTLS_PK_EDDSA_ED25519,
     "sha-512"},
};

static const char *const basic_names[G_N_ELEMENTS(basic_cases)] = {
    "/message/basic/rsa-sha256",
    "/message/basic/rsa-sha384",
    "/message/basic/rsa-sha512",
    "/message/basic/rsa-sha224",
    "/message/basic/rsa-pss-sha256",
    "/message/basic/rsassa-pss-cert-sha256",
    "/message/basic/rsassa-pss-cert-sha512",
    "/message/basic/rsa-pss-sha384",
    "/message/basic/ecdsa-sha256",
    "/message/basic/ecdsa-sha384",
    "/message/basic/ecdsa-sha512",
    "/message/basic/ecdsa-p384-default-sha384",
    "/message/basic/ecdsa-p384-explicit-sha256",
    "/message/basic/ed25519",
    "/message/basic/ed25519-explicit-sha512",
};

static void check_one_header(const char *headers, const char *name, const char *expect)
{
    unsigned count = 0;
    char *v = header_get_n(headers, name, &count);
    g_assert_cmpuint(count, ==, 1);
    if (expect)
        g_assert_cmpstr(v, ==, expect);
    g_free(v);
}

static void test_basic(gconstpointer data)
{
    const basic_case *c = data;
    rec_signer rec = {0};
    sms_signer *signer = make_signer(c->key, &rec);
    sms_message *m = new_message(signer);
    rec.msg = m;
    if (c->set_digest != SMS_DIGEST_NONE)
        g_assert_cmpint(sms_message_set_digest(m, c->set_digest), ==, SMS_OK);
    g_assert_cmpint(sms_message_set_flags(m, c->flags), ==, SMS_OK);
    g_assert_cmpint(sms_message_set_date(m, FIXED_DATE), ==, SMS_OK);
    g_assert_cmpint(sms_message_add_header(m, "X-Mailer", "smimestream unit test"), ==, SMS_OK);
    pat_src scan = {.size = 100001, .seed = 1};
    pat_src notes = {.size = 3000, .seed = 2, .unknown_size = true};
    add_pat(m, &scan, "scan.pdf", NULL);
    add_pat(m, &notes, "notes.dat", "Text/Plain");

    g_assert_cmpint(sms_message_prepare(m), ==, SMS_OK);
    g_assert_cmpint(sms_message_prepare(m), ==, SMS_OK); /* idempotent */
    GByteArray *out = g_byte_array_new();
    g_assert_cmpint(read_all(m, 4096, out), ==, SMS_OK);
    /* Complete stays complete. */
    uint8_t b[16];
    size_t n = 99;
    g_assert_cmpint(sms_message_read(m, b, sizeof b, &n), ==, SMS_OK);
    g_assert_cmpuint(n, ==, 0);
    g_assert_false(sms_message_is_partial(m));
    g_assert_cmpint(sms_message_get_error(m), ==, 0);
    g_assert_cmpstr(sms_message_last_error(m), ==, "");

    check_lines(out->data, out->len);
    smime s;
    smime_parse(out->data, out->len, &s);

    /* Outer headers. */
    check_one_header(s.headers, "From", "\"Scanner\" <" FROM_ADDR ">");
    check_one_header(s.headers, "To", "\"Alice Example\" <alice@example.org>, bob@example.net");
    check_one_header(s.headers, "Cc", "carol@example.com");
    check_one_header(s.headers, "Subject", "Scan 42");
    check_one_header(s.headers, "Date", "Tue, 14 Nov 2023 22:13:20 +0000");
    check_one_header(s.headers, "MIME-Version", "1.0");
    check_one_header(s.headers, "X-Mailer", "smimestream unit test");
    check_one_header(s.headers, "Content-Type", NULL);
    char *mid = header_get(s.headers, "Message-ID");
    char *want_mid = g_strdup_printf("<%s>", sms_message_get_message_id(m));
    g_assert_cmpstr(mid, ==, want_mid);
    g_assert_true(g_regex_match_simple("^<[0-9a-f]{32}\\.sms@example\\.org>$", mid, 0, 0));
    g_free(mid);
    g_free(want_mid);
    g_assert_null(header_get(s.headers, "Bcc"));
    g_assert_cmpstr(s.micalg, ==, c->micalg);
    g_assert_true(g_regex_match_simple("^=_sms_[0-9a-f]{32}$", s.outer, 0, 0));
    g_assert_true(g_regex_match_simple("^=_sms_[0-9a-f]{32}$", s.inner, 0, 0));
    /* The signed entity is the inner multipart and nothing of the outer. */
    g_assert_true(g_str_has_prefix((const char *)s.entity, "Content-Type: multipart/mixed;"));
    g_assert_false(mem_contains(s.entity, s.entity_len, s.outer));

    /* Envelope. */
    g_assert_cmpstr(sms_message_get_sender(m), ==, FROM_ADDR);
    g_assert_cmpuint(sms_message_get_recipient_count(m), ==, 3);
    g_assert_cmpstr(sms_message_get_recipient(m, 0), ==, "alice@example.org");
    g_assert_cmpstr(sms_message_get_recipient(m, 1), ==, "bob@example.net");
    g_assert_cmpstr(sms_message_get_recipient(m, 2), ==, "carol@example.com");
    g_assert_null(sms_message_get_recipient(m, 3));

    /* Inner parts: text, then the attachments in order. */
    g_assert_cmpuint(s.n_parts, ==, 3);
    char *ct0 = header_get(s.parts[0].headers, "Content-Type");
    g_assert_cmpstr(ct0, ==, "text/plain; charset=utf-8");
    g_free(ct0);
    char *text = part_text(&s.parts[0]);
    g_assert_cmpstr(text, ==, "Hello,\r\nthe scan is attached.\r\n");
    g_free(text);
    g_assert_true(find_attachment(&s, "scan.pdf") == &s.parts[1]);
    g_assert_true(find_attachment(&s, "notes.dat") == &s.parts[2]);
    char *ct1 = header_get(s.parts[1].headers, "Content-Type");
    g_assert_cmpstr(ct1, ==, "application/pdf; name=\"scan.pdf\"");
    g_free(ct1);
    char *ct2 = header_get(s.parts[2].headers, "Content-Type");
    g_assert_cmpstr(ct2, ==, "text/plain; name=\"notes.dat\"");
    g_free(ct2);
    char *cd1 = header_get(s.parts[1].headers, "Content-Disposition");
    g_assert_cmpstr(cd1, ==, "attachment; filename=\"scan.pdf\"");
    g_free(cd1);
    check_part_pattern(&s.parts[1], 1, 100001);
    check_part_pattern(&s.parts[2], 2, 3000);
    /* 100001 = 3 * 33333 + 2: one "=" of padding. */
    g_assert_cmpint(s.parts[1].body[s.parts[1].body_len - 1], ==, '=');
    g_assert_cmpint(s.parts[1].body[s.parts[1].body_len - 2], !=, '=');

    /* The signature. */
    if (c->expect_pk == GNUTLS_PK_RSA_PSS && c->expect_digest != SMS_DIGEST_SHA256) {
        smime_verify_pss_by_hand(&s, c->key, c->expect_digest, &rec);
    } else {
        smime_verify(&s, c->key, c->expect_pk, gnutls_dig(c->expect_digest));
        /* One changed bit anywhere in the entity breaks it. */
        uint8_t *bad = g_memdup2(s.entity, s.entity_len);
        bad[s.entity_len / 2] ^= 0x01;
        g_assert_cmpint(pkcs7_verify_entity(&s, c->key, bad, s.entity_len, 0), <, 0);
        memcpy(bad, s.entity, s.entity_len);
        bad[s.entity_len - 1] = '\n';
        g_assert_cmpint(pkcs7_verify_entity(&s, c->key, bad, s.entity_len - 1, 0), <, 0);
        g_free(bad);
    }
    /* Detached: no content inside the CMS. */
    g_assert_cmpint(pkcs7_verify_entity(&s, c->key, NULL, 0, 0), ==, GNUTLS_E_NO_EMBEDDED_DATA);

    /* What the signer was asked. */
    g_assert_cmpuint(rec.calls, ==, 1);
    g_assert_cmpint(rec.scheme, ==, c->expect_scheme);
    g_assert_cmpint(rec.digest, ==, c->expect_digest);
    g_assert_cmpuint(rec.tbs_digest_len, ==, sms_digest_length(c->expect_digest));
    g_assert_cmpint(rec.tbs[0], ==, 0x31);
    g_assert_cmpint(rec.phase, ==, SMS_PHASE_SIGNING);

    sms_progress p = {.struct_size = sizeof p};
    g_assert_cmpint(sms_message_get_progress(m, &p), ==, SMS_OK);
    g_assert_cmpint(p.phase, ==, SMS_PHASE_DONE);
    g_assert_cmpuint(p.output_bytes, ==, out->len);
    g_assert_cmpuint(p.source_bytes, ==, 103001);
    g_assert_cmpint(p.source_size, ==, -1); /* notes.dat has no size */

    /* Each source was read to its end once, and is released with the message;
     * the signer lives until its last reference goes. */
    g_assert_true(scan.eof && notes.eof);
    g_assert_cmpuint(scan.calls_after_eof + notes.calls_after_eof, ==, 0);
    g_assert_cmpuint(scan.destroyed + notes.destroyed, ==, 0);
    sms_message_free(m);
    g_assert_cmpuint(scan.destroyed, ==, 1);
    g_assert_cmpuint(notes.destroyed, ==, 1);
    g_assert_cmpuint(rec.destroyed, ==, 0);
    sms_signer_unref(signer);
    g_assert_cmpuint(rec.destroyed, ==, 1);

    smime_clear(&s);
    g_byte_array_unref(out);
    rec_clear(&rec);
}

/* Attachments around the base64 line and group sizes, and an empty one. */
static void test_attachment_sizes(void)
{
    static const size_t sizes[] = {0, 1, 2, 3, 4, 56, 57, 58, 113, 114, 115, 171, 4096, 65537};
    pat_src srcs[G_N_ELEMENTS(sizes)];
    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_ECDSA, &rec);
    sms_message *m = new_message(signer);
    for (size_t i = 0; i < G_N_ELEMENTS(sizes); i++) {
        srcs[i] = (pat_src){.size = sizes[i], .seed = (uint32_t)(100 + i)};
        char name[32];
        g_snprintf(name, sizeof name, "file-%zu.bin", sizes[i]);
        add_pat(m, &srcs[i], name, NULL);
    }
    GByteArray *out = g_byte_array_new();
    g_assert_cmpint(read_all(m, 65536, out), ==, SMS_OK);
    check_lines(out->data, out->len);
    smime s;
    smime_parse(out->data, out->len, &s);
    smime_verify(&s, KEY_ECDSA, GNUTLS_PK_ECDSA, GNUTLS_DIG_SHA256);
    g_assert_cmpuint(s.n_parts, ==, 1 + G_N_ELEMENTS(sizes));
    for (size_t i = 0; i < G_N_ELEMENTS(sizes); i++) {
        char name[32];
        g_snprintf(name, sizeof name, "file-%zu.bin", sizes[i]);
        const part *p = find_attachment(&s, name);
        g_assert_nonnull(p);
        g_assert_true(p == &s.parts[i + 1]);
        char *ct = header_get(p->headers, "Content-Type");
        g_assert_true(g_str_has_prefix(ct, "application/octet-stream;"));
        g_free(ct);
        check_part_pattern(p, (uint32_t)(100 + i), sizes[i]);
    }
    sms_message_free(m);
    sms_signer_unref(signer);
    smime_clear(&s);
    g_byte_array_unref(out);
    rec_clear(&rec);
}

/* Names that need quoting or RFC 2231 encoding come back exactly, in both
 * the Content-Type name and the Content-Disposition filename. */
static void test_attachment_names(void)
{
    GString *long_ascii = g_string_new(NULL), *long_utf8 = g_string_new(NULL);
    for (int i = 0; i < 300; i++)
        g_string_append_c(long_ascii, (char)('a' + i % 26));
    for (int i = 0; i < 200; i++)
        g_string_append(long_utf8, "\xc3\xa9");
    const char *names[] = {
        "quote\"d.pdf",
        "back\\slash.pdf",
        "semi;colon name.pdf",
        "=_sms_lookalike.pdf",
        "\xc3\x9cn\xc3\xaf"
        "c\xc3\xb6"
        "d\xc3\xa9 \xe2\x80\x93 r\xc3\xa9sum\xc3\xa9.pdf",
        "\xf0\x9f\x93\x84.txt",
        long_ascii->str,
        long_utf8->str,
    };
    pat_src srcs[G_N_ELEMENTS(names)];
    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_ECDSA, &rec);
    sms_message *m = new_message(signer);
    for (size_t i = 0; i < G_N_ELEMENTS(names); i++) {
        srcs[i] = (pat_src){.size = 100 + i, .seed = (uint32_t)(300 + i)};
        add_pat(m, &srcs[i], names[i], "application/octet-stream");
    }
    GByteArray *out = g_byte_array_new();
    g_assert_cmpint(read_all(m, 4096, out), ==, SMS_OK);
    check_lines(out->data, out->len);
    for (size_t i = 0; i < out->len; i++)
        g_assert_cmpuint(out->data[i], <, 0x80);
    smime s;
    smime_parse(out->data, out->len, &s);
    smime_verify(&s, KEY_ECDSA, GNUTLS_PK_ECDSA, GNUTLS_DIG_SHA256);
    g_assert_cmpuint(s.n_parts, ==, 1 + G_N_ELEMENTS(names));
    for (size_t i = 0; i < G_N_ELEMENTS(names); i++) {
        const part *p = &s.parts[i + 1];
        char *cd = header_get(p->headers, "Content-Disposition");
        char *ct = header_get(p->headers, "Content-Type");
        char *fn = param_get_any(cd, "filename");
        char *nm = param_get_any(ct, "name");
        g_assert_cmpstr(fn, ==, names[i]);
        g_assert_cmpstr(nm, ==, names[i]);
        check_part_pattern(p, (uint32_t)(300 + i), 100 + i);
        g_free(cd);
        g_free(ct);
        g_free(fn);
        g_free(nm);
    }
    smime_clear(&s);
    g_byte_array_unref(out);
    sms_message_free(m);
    sms_signer_unref(signer);
    rec_clear(&rec);
    g_string_free(long_ascii, TRUE);
    g_string_free(long_utf8, TRUE);
}

/* ==== reads of every size ============================================== */

typedef struct std_msg {
    rec_signer rec;
    sms_signer *signer;
    sms_message *m;
    pat_src a, b;
} std_msg;

static void std_msg_init(std_msg *t, const size_t *pieces, size_t n_pieces)
{
    memset(t, 0, sizeof *t);
    t->signer = make_signer(KEY_ECDSA, &t->rec);
    t->m = new_message(t->signer);
    g_assert_cmpint(sms_message_set_date(t->m, FIXED_DATE), ==, SMS_OK);
    g_assert_cmpint(sms_message_set_message_id(t->m, "fixed-id.1@example.org"), ==, SMS_OK);
    t->a = (pat_src){.size = 150001, .seed = 7, .pieces = pieces, .n_pieces = n_pieces};
    t->b = (pat_src){.size = 9999, .seed = 8, .pieces = pieces, .n_pieces = n_pieces};
    add_pat(t->m, &t->a, "a.bin", NULL);
    add_pat(t->m, &t->b, "b.png", NULL);
}

static void std_msg_clear(std_msg *t)
{
    sms_message_free(t->m);
    sms_signer_unref(t->signer);
    g_assert_cmpuint(t->a.destroyed, ==, 1);
    g_assert_cmpuint(t->b.destroyed, ==, 1);
    g_assert_cmpuint(t->rec.destroyed, ==, 1);
    rec_clear(&t->rec);
}

/* Check a complete std_msg output and return it up to the signature body
 * with both boundaries replaced by fixed text (boundaries are random). */
static GByteArray *std_msg_check(const GByteArray *out)
{
    check_lines(out->data, out->len);
    smime s;
    smime_parse(out->data, out->len, &s);
    smime_verify(&s, KEY_ECDSA, GNUTLS_PK_ECDSA, GNUTLS_DIG_SHA256);
    g_assert_cmpuint(s.n_parts, ==, 3);
    check_part_pattern(find_attachment(&s, "a.bin"), 7, 150001);
    check_part_pattern(find_attachment(&s, "b.png"), 8, 9999);
    char *ct = header_get(find_attachment(&s, "b.png")->headers, "Content-Type");
    g_assert_cmpstr(ct, ==, "image/png; name=\"b.png\"");
    g_free(ct);

    size_t keep = (size_t)(s.sig.body - out->data);
    GByteArray *norm = g_byte_array_new();
    g_byte_array_append(norm, out->data, (guint)keep);
    const char *bounds[2] = {s.outer, s.inner};
    const char *repl[2] = {"=_sms_OUTER_OUTER_OUTER_OUTER_OUTER_OU",
                           "=_sms_INNER_INNER_INNER_INNER_INNER_IN"};
    for (int k = 0; k < 2; k++) {
        size_t bl = strlen(bounds[k]);
        g_assert_cmpuint(bl, ==, strlen(repl[k]));
        unsigned found = 0;
        for (uint8_t *p = norm->data;
             (p = memmem(p, norm->len - (size_t)(p - norm->data), bounds[k], bl)) != NULL;
             p += bl) {
            memcpy(p, repl[k], bl);
            found++;
        }
        g_assert_cmpuint(found, >=, 3);
    }
    smime_clear(&s);
    return norm;
}

static void test_read_every_size(void)
{
    static const size_t caps[] = {1, 7, 4096, MIB};
    GByteArray *ref = NULL;
    for (size_t i = 0; i < G_N_ELEMENTS(caps); i++) {
        std_msg t;
        std_msg_init(&t, NULL, 0);
        GByteArray *out = g_byte_array_new();
        g_assert_cmpint(read_all(t.m, caps[i], out), ==, SMS_OK);
        GByteArray *norm = std_msg_check(out);
        if (!ref)
            ref = norm;
        else {
            g_assert_cmpmem(norm->data, norm->len, ref->data, ref->len);
            g_byte_array_unref(norm);
        }
        g_byte_array_unref(out);
        std_msg_clear(&t);
    }
    g_byte_array_unref(ref);
}

/* A source that gives fewer bytes than asked (as pipes do) changes nothing:
 * base64 groups and lines carry over between reads. */
static void test_source_short_reads(void)
{
    static const size_t pieces[] = {1, 2, 3, 5, 7, 11, 57, 58, 76, 4095, 1};
    std_msg t1, t2;
    std_msg_init(&t1, NULL, 0);
    std_msg_init(&t2, pieces, G_N_ELEMENTS(pieces));
    GByteArray *o1 = g_byte_array_new(), *o2 = g_byte_array_new();
    g_assert_cmpint(read_all(t1.m, 8192, o1), ==, SMS_OK);
    g_assert_cmpint(read_all(t2.m, 8192, o2), ==, SMS_OK);
    g_assert_cmpuint(t2.a.calls, >, 100);
    GByteArray *n1 = std_msg_check(o1), *n2 = std_msg_check(o2);
    g_assert_cmpmem(n2->data, n2->len, n1->data, n1->len);
    g_byte_array_unref(n1);
    g_byte_array_unref(n2);
    g_byte_array_unref(o1);
    g_byte_array_unref(o2);
    std_msg_clear(&t1);
    std_msg_clear(&t2);
}

/* A file source: named after the file, type from the extension. */
static void test_source_path(void)
{
    GError *error = NULL;
    char *dir = g_dir_make_tmp("test-message-XXXXXX", &error);
    g_assert_no_error(error);
    char *path = g_build_filename(dir, "report.pdf", NULL);
    uint8_t *data = g_malloc(70000);
    pat_fill(77, 0, data, 70000);
    g_assert_true(g_file_set_contents(path, (const char *)data, 70000, &error));
    g_assert_no_error(error);

    char err[256] = "";
    sms_source *src = NULL;
    char *missing = g_build_filename(dir, "missing.pdf", NULL);
    g_assert_cmpint(sms_source_new_path(missing, &src, err, sizeof err), ==, SMS_ERR_NOINPUT);
    g_assert_null(src);
    g_assert_nonnull(strstr(err, "missing.pdf"));
    g_assert_cmpint(sms_source_new_path(dir, &src, err, sizeof err), ==, SMS_ERR_NOINPUT);
    g_assert_null(src);

    g_assert_cmpint(sms_source_new_path(path, &src, err, sizeof err), ==, SMS_OK);
    g_assert_cmpint(sms_source_get_size(src), ==, 70000);
    g_assert_cmpstr(sms_source_get_name(src), ==, "report.pdf");
    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_ECDSA, &rec);
    sms_message *m = new_message(signer);
    g_assert_cmpint(sms_message_add_attachment(m, src, NULL, NULL), ==, SMS_OK);
    GByteArray *out = g_byte_array_new();
    g_assert_cmpint(read_all(m, 4096, out), ==, SMS_OK);
    smime s;
    smime_parse(out->data, out->len, &s);
    smime_verify(&s, KEY_ECDSA, GNUTLS_PK_ECDSA, GNUTLS_DIG_SHA256);
    const part *p = find_attachment(&s, "report.pdf");
    g_assert_nonnull(p);
    char *ct = header_get(p->headers, "Content-Type");
    g_assert_cmpstr(ct, ==, "application/pdf; name=\"report.pdf\"");
    g_free(ct);
    GByteArray *dec = part_base64(p);
    g_assert_cmpmem(dec->data, dec->len, data, 70000);

    g_byte_array_unref(dec);
    smime_clear(&s);
    g_byte_array_unref(out);
    sms_message_free(m);
    sms_signer_unref(signer);
    rec_clear(&rec);
    g_unlink(path);
    g_rmdir(dir);
    g_free(missing);
    g_free(path);
    g_free(dir);
    g_free(data);
}

/* ==== read once, bounded memory ======================================== */

static void test_stream_big(void)
{
    /* 64 MiB natively; valgrind is ~50x slower, so less there. */
    const uint64_t size = RUNNING_ON_VALGRIND ? 8 * MIB : 64 * MIB;
    const size_t chunk = 16384;
    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_ECDSA, &rec);
    sms_message *m = new_message(signer);
    g_assert_cmpint(sms_message_set_chunk_size(m, chunk), ==, SMS_OK);
    pat_src src = {.size = size, .seed = 0xb16, .msg = m};
    add_pat(m, &src, "big.bin", NULL);
    g_assert_cmpint(sms_message_prepare(m), ==, SMS_OK);

    /* The message goes to an unlinked file, so that the heap holds only what
     * the library keeps. */
    char *path = NULL;
    GError *error = NULL;
    int fd = g_file_open_tmp("test-message-XXXXXX", &path, &error);
    g_assert_no_error(error);
    g_unlink(path);
    g_free(path);

    src.heap_base = heap_in_use();
    src.track_heap = true;
    static uint8_t buf[65536];
    uint64_t total = 0;
    for (;;) {
        size_t n = 0;
        g_assert_cmpint(sms_message_read(m, buf, sizeof buf, &n), ==, SMS_OK);
        if (n == 0)
            break;
        for (size_t off = 0; off < n;) {
            ssize_t w = write(fd, buf + off, n - off);
            g_assert_cmpint(w, >, 0);
            off += (size_t)w;
        }
        total += n;
    }

    /* Each byte served once, never asked again after the end, never asked
     * for more than the chunk size. */
    g_assert_cmpuint(src.served, ==, size);
    g_assert_true(src.eof);
    g_assert_cmpuint(src.calls_after_eof, ==, 0);
    g_assert_cmpuint(src.max_cap, <=, chunk);
    g_assert_cmpuint(src.min_cap, ==, chunk);
    g_assert_cmpuint(src.calls, ==, size / chunk + 1);
    /* The heap did not grow with the attachment.  (mallinfo2 sees glibc's
     * malloc only: under ASan or valgrind this check is vacuous.) */
    g_assert_cmpuint(src.heap_max, <, src.heap_base + MIB);
    g_assert_cmpuint(rec.calls, ==, 1);
    g_assert_cmpuint(rec.tbs_len, <, 1024);

    uint8_t *map = mmap(NULL, total, PROT_READ, MAP_PRIVATE, fd, 0);
    g_assert_true(map != MAP_FAILED);
    smime s;
    smime_parse(map, total, &s);
    smime_verify(&s, KEY_ECDSA, GNUTLS_PK_ECDSA, GNUTLS_DIG_SHA256);
    g_assert_cmpuint(s.n_parts, ==, 2);
    check_part_pattern(find_attachment(&s, "big.bin"), 0xb16, size);
    smime_clear(&s);
    munmap(map, total);
    close(fd);
    sms_message_free(m);
    sms_signer_unref(signer);
    rec_clear(&rec);
}

/* ==== the signer sees only the hash ==================================== */

static void test_signer_sees_only_hash(void)
{
    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_RSA, &rec);
    sms_message *m = new_message(signer);
    pat_src src = {.size = MIB, .seed = 5};
    add_pat(m, &src, "one-mib.bin", NULL);
    GByteArray *out = g_byte_array_new();
    g_assert_cmpint(read_all(m, 65536, out), ==, SMS_OK);
    smime s;
    smime_parse(out->data, out->len, &s);
    smime_verify(&s, KEY_RSA, GNUTLS_PK_RSA, GNUTLS_DIG_SHA256);

    g_assert_cmpuint(rec.calls, ==, 1);
    g_assert_cmpint(rec.scheme, ==, SMS_SIG_RSA_PKCS1);
    g_assert_cmpint(rec.digest, ==, SMS_DIGEST_SHA256);
    g_assert_cmpuint(rec.tbs_len, <, 1024);
    g_assert_cmpuint(rec.tbs_digest_len, ==, 32);
    g_assert_cmpint(rec.tbs[0], ==, 0x31);
    /* tbs_digest is the SHA-256 of tbs ... */
    uint8_t h[32];
    g_assert_cmpint(gnutls_hash_fast(GNUTLS_DIG_SHA256, rec.tbs, rec.tbs_len, h), ==, 0);
    g_assert_cmpmem(rec.tbs_digest, 32, h, 32);
    /* ... and tbs holds the SHA-256 of the signed entity (messageDigest),
     * not the content. */
    g_assert_cmpint(gnutls_hash_fast(GNUTLS_DIG_SHA256, s.entity, s.entity_len, h), ==, 0);
    g_assert_nonnull(memmem(rec.tbs, rec.tbs_len, h, 32));
    uint8_t head[16];
    pat_fill(5, 0, head, sizeof head);
    g_assert_null(memmem(rec.tbs, rec.tbs_len, head, sizeof head));

    smime_clear(&s);
    g_byte_array_unref(out);
    sms_message_free(m);
    sms_signer_unref(signer);
    rec_clear(&rec);
}

/* ==== cancel =========================================================== */

static void check_notice_part(const part *p, const char *const *want, const char *const *not_want)
{
    char *ct = header_get(p->headers, "Content-Type");
    g_assert_cmpstr(ct, ==, "text/plain; charset=utf-8");
    g_free(ct);
    char *cd = header_get(p->headers, "Content-Disposition");
    g_assert_nonnull(cd);
    g_assert_true(g_str_has_prefix(cd, "inline"));
    g_free(cd);
    char *text = part_text(p); /* soft line breaks are undone here */
    for (; want && *want; want++)
        if (!strstr(text, *want))
            g_error("notice lacks '%s':\n%s", *want, text);
    for (; not_want && *not_want; not_want++)
        if (strstr(text, *not_want))
            g_error("notice has '%s':\n%s", *not_want, text);
    g_free(text);
}

static void test_cancel_after_n(void)
{
    const uint64_t N = 100000; /* not a multiple of 3 */
    g_assert_cmpuint(N % 3, !=, 0);
    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_ECDSA, &rec);
    sms_message *m = new_message(signer);
    pat_src src = {.size = MIB, .seed = 9, .msg = m, .cancel_at = N};
    add_pat(m, &src, "big.bin", NULL);

    GByteArray *out = g_byte_array_new();
    g_assert_cmpint(read_all(m, 4096, out), ==, SMS_OK);
    g_assert_true(sms_message_is_partial(m));
    g_assert_cmpuint(src.served, ==, N);
    g_assert_cmpuint(src.calls_after_stop, ==, 0);
    sms_progress pr = {.struct_size = sizeof pr};
    g_assert_cmpint(sms_message_get_progress(m, &pr), ==, SMS_OK);
    g_assert_cmpint(pr.phase, ==, SMS_PHASE_DONE);
    g_assert_cmpint(pr.cancelled, ==, 1);

    check_lines(out->data, out->len);
    smime s;
    smime_parse(out->data, out->len, &s);
    smime_verify(&s, KEY_ECDSA, GNUTLS_PK_ECDSA, GNUTLS_DIG_SHA256);
    g_assert_cmpuint(s.n_parts, ==, 3);
    const part *att = find_attachment(&s, "big.bin");
    g_assert_true(att == &s.parts[1]);
    check_part_pattern(att, 9, N);
    /* 100000 = 3 * 33333 + 1: "==" padding. */
    g_assert_cmpmem(att->body + att->body_len - 2, 2, "==", 2);
    static const char *const want[] = {"PARTIAL", "\"big.bin\"", "100000 bytes", "1048576 bytes",
                                       NULL};
    check_notice_part(&s.parts[2], want, NULL);
    char *cd = header_get(s.parts[2].headers, "Content-Disposition");
    g_assert_cmpstr(cd, ==, "inline; filename=\"PARTIAL-MESSAGE.txt\"");
    g_free(cd);

    smime_clear(&s);
    g_byte_array_unref(out);
    sms_message_free(m);
    sms_signer_unref(signer);
    rec_clear(&rec);
}

static void test_cancel_second_of_three(void)
{
    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_RSA, &rec);
    sms_message *m = new_message(signer);
    pat_src a = {.size = 30000, .seed = 11};
    pat_src b = {.size = MIB, .seed = 12, .msg = m, .cancel_at = 100000, .unknown_size = true};
    pat_src c = {.size = 5000, .seed = 13};
    add_pat(m, &a, "a.bin", NULL);
    add_pat(m, &b, "b.bin", NULL);
    add_pat(m, &c, "c.bin", NULL);

    GByteArray *out = g_byte_array_new();
    g_assert_cmpint(read_all(m, 65536, out), ==, SMS_OK);
    g_assert_true(sms_message_is_partial(m));
    g_assert_cmpuint(a.served, ==, 30000);
    g_assert_cmpuint(b.served, ==, 100000);
    g_assert_cmpuint(b.calls_after_stop, ==, 0);
    g_assert_cmpuint(c.calls, ==, 0);

    smime s;
    smime_parse(out->data, out->len, &s);
    smime_verify(&s, KEY_RSA, GNUTLS_PK_RSA, GNUTLS_DIG_SHA256);
    g_assert_cmpuint(s.n_parts, ==, 4); /* text, a, b, notice */
    check_part_pattern(find_attachment(&s, "a.bin"), 11, 30000);
    check_part_pattern(find_attachment(&s, "b.bin"), 12, 100000);
    g_assert_null(find_attachment(&s, "c.bin"));
    static const char *const want[] = {"PARTIAL",   "\"b.bin\"", "100000 bytes",
                                       "\"c.bin\"", "not sent",  NULL};
    static const char *const not_want[] = {"\"a.bin\"", NULL};
    check_notice_part(&s.parts[3], want, not_want);
    char *text = part_text(&s.parts[3]);
    /* c is the one "not sent"; b the one incomplete. */
    g_assert_true(g_regex_match_simple("\"c\\.bin\", was\\s+not sent", text, 0, 0));
    g_assert_true(g_regex_match_simple("\"b\\.bin\", is\\s+incomplete", text, 0, 0));
    g_free(text);

    smime_clear(&s);
    g_byte_array_unref(out);
    sms_message_free(m);
    g_assert_cmpuint(a.destroyed + b.destroyed + c.destroyed, ==, 3);
    sms_signer_unref(signer);
    rec_clear(&rec);
}

/* Cancel from the reader's side between two reads: the attachment ends at
 * a chunk boundary with exactly what was read from the source. */
static void test_cancel_between_reads(void)
{
    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_ECDSA, &rec);
    sms_message *m = new_message(signer);
    pat_src src = {.size = 4 * MIB, .seed = 21};
    add_pat(m, &src, "x.bin", NULL);
    GByteArray *out = g_byte_array_new();
    uint8_t buf[4096];
    bool cancelled = false;
    for (;;) {
        size_t n = 0;
        g_assert_cmpint(sms_message_read(m, buf, sizeof buf, &n), ==, SMS_OK);
        if (n == 0)
            break;
        g_byte_array_append(out, buf, (guint)n);
        if (!cancelled && out->len > 300000) {
            sms_message_cancel(m);
            cancelled = true;
            src.stopped = true;
        }
    }
    g_assert_true(sms_message_is_partial(m));
    g_assert_cmpuint(src.served, <, 4 * MIB);
    g_assert_cmpuint(src.served % (64 * KIB), ==, 0); /* whole chunks */
    g_assert_cmpuint(src.calls_after_stop, ==, 0);
    smime s;
    smime_parse(out->data, out->len, &s);
    smime_verify(&s, KEY_ECDSA, GNUTLS_PK_ECDSA, GNUTLS_DIG_SHA256);
    check_part_pattern(find_attachment(&s, "x.bin"), 21, src.served);
    static const char *const want[] = {"PARTIAL", "\"x.bin\"", "4194304 bytes", NULL};
    check_notice_part(&s.parts[s.n_parts - 1], want, NULL);
    smime_clear(&s);
    g_byte_array_unref(out);
    sms_message_free(m);
    sms_signer_unref(signer);
    rec_clear(&rec);
}

/* Cancel before anything was read: no source is read at all and the result
 * is still a complete, signed, partial message. */
static void test_cancel_before_start(void)
{
    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_ECDSA, &rec);
    sms_message *m = new_message(signer);
    pat_src a = {.size = 1000, .seed = 1}, b = {.size = 1000, .seed = 2};
    add_pat(m, &a, "a.bin", NULL);
    add_pat(m, &b, "b.bin", NULL);
    sms_message_cancel(m);
    GByteArray *out = g_byte_array_new();
    g_assert_cmpint(read_all(m, 4096, out), ==, SMS_OK);
    g_assert_true(sms_message_is_partial(m));
    g_assert_cmpuint(a.calls + b.calls, ==, 0);
    smime s;
    smime_parse(out->data, out->len, &s);
    smime_verify(&s, KEY_ECDSA, GNUTLS_PK_ECDSA, GNUTLS_DIG_SHA256);
    g_assert_null(find_attachment(&s, "b.bin"));
    static const char *const want[] = {"PARTIAL", "\"b.bin\"", "not sent", NULL};
    check_notice_part(&s.parts[s.n_parts - 1], want, NULL);
    smime_clear(&s);
    g_byte_array_unref(out);
    sms_message_free(m);
    sms_signer_unref(signer);
    rec_clear(&rec);
}

/* ==== abort ============================================================ */

static void check_aborted(sms_message *m, int code)
{
    uint8_t buf[64];
    for (int i = 0; i < 3; i++) {
        size_t n = 12345;
        g_assert_cmpint(sms_message_read(m, buf, sizeof buf, &n), ==, code);
        g_assert_cmpuint(n, ==, 12345);
    }
    g_assert_cmpint(sms_message_get_error(m), ==, code);
    g_assert_cmpstr(sms_message_last_error(m), !=, "");
    g_assert_cmpint(sms_message_prepare(m), ==, code);
    sms_progress p = {.struct_size = sizeof p};
    g_assert_cmpint(sms_message_get_progress(m, &p), ==, SMS_OK);
    g_assert_cmpint(p.phase, ==, SMS_PHASE_FAILED);
}

static void test_abort_mid_attachment(void)
{
    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_ECDSA, &rec);
    sms_message *m = new_message(signer);
    pat_src src = {.size = MIB, .seed = 3};
    add_pat(m, &src, "scan.pdf", NULL);
    GByteArray *out = g_byte_array_new();
    uint8_t buf[1000];
    sms_progress p = {.struct_size = sizeof p};
    do {
        size_t n = 0;
        g_assert_cmpint(sms_message_read(m, buf, sizeof buf, &n), ==, SMS_OK);
        g_assert_cmpuint(n, >, 0);
        g_byte_array_append(out, buf, (guint)n);
        g_assert_cmpint(sms_message_get_progress(m, &p), ==, SMS_OK);
    } while (p.phase != SMS_PHASE_ATTACHMENT || p.attachment_bytes == 0);
    /* Data is still staged; abort wins over it anyway. */
    sms_message_abort(m);
    unsigned calls = src.calls;
    size_t n = 777;
    g_assert_cmpint(sms_message_read(m, buf, sizeof buf, &n), ==, SMS_ERR_ABORTED);
    g_assert_cmpuint(n, ==, 777);
    check_aborted(m, SMS_ERR_ABORTED);
    g_assert_nonnull(strstr(sms_message_last_error(m), "abort"));
    g_assert_cmpuint(src.calls, ==, calls);
    g_assert_cmpuint(rec.calls, ==, 0);
    g_assert_false(mem_contains(out->data, out->len, "Content-Type: application/pkcs7-signature"));
    g_byte_array_unref(out);
    sms_message_free(m);
    g_assert_cmpuint(src.destroyed, ==, 1);
    sms_signer_unref(signer);
    rec_clear(&rec);
}

/* Abort from inside the source (another thread or a signal handler looks
 * the same): the read in progress already fails. */
static void test_abort_in_source(void)
{
    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_ECDSA, &rec);
    sms_message *m = new_message(signer);
    pat_src src = {.size = MIB, .seed = 3, .msg = m, .abort_at = 200000};
    add_pat(m, &src, "scan.pdf", NULL);
    GByteArray *out = g_byte_array_new();
    g_assert_cmpint(read_all(m, 4096, out), ==, SMS_ERR_ABORTED);
    g_assert_cmpuint(src.served, ==, 200000);
    g_assert_cmpuint(src.calls_after_stop, ==, 0);
    check_aborted(m, SMS_ERR_ABORTED);
    g_assert_cmpuint(rec.calls, ==, 0);
    g_byte_array_unref(out);
    sms_message_free(m);
    sms_signer_unref(signer);
    rec_clear(&rec);
}

/* ==== source and signer failures ======================================= */

static void test_source_io_error(void)
{
    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_ECDSA, &rec);
    sms_message *m = new_message(signer);
    pat_src ok = {.size = 1000, .seed = 1};
    pat_src src = {.size = MIB, .seed = 3, .fail_at = 50000, .fail_code = SMS_ERR_IO};
    add_pat(m, &ok, "first.bin", NULL);
    add_pat(m, &src, "broken-scan.pdf", NULL);
    GByteArray *out = g_byte_array_new();
    g_assert_cmpint(read_all(m, 4096, out), ==, SMS_ERR_IO);
    check_aborted(m, SMS_ERR_IO);
    const char *e = sms_message_last_error(m);
    g_assert_nonnull(strstr(e, "broken-scan.pdf"));
    g_assert_nonnull(strstr(e, "disk on fire"));
    g_assert_cmpuint(src.calls_after_stop, ==, 0);
    g_assert_cmpuint(rec.calls, ==, 0);
    g_assert_false(mem_contains(out->data, out->len, "Content-Type: application/pkcs7-signature"));
    g_byte_array_unref(out);
    sms_message_free(m);
    sms_signer_unref(signer);
    rec_clear(&rec);
}

static void test_source_too_much(void)
{
    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_ECDSA, &rec);
    sms_message *m = new_message(signer);
    pat_src src = {.size = 10000, .seed = 3, .too_much = true};
    add_pat(m, &src, "liar.bin", NULL);
    GByteArray *out = g_byte_array_new();
    g_assert_cmpint(read_all(m, 4096, out), ==, SMS_ERR_IO);
    check_aborted(m, SMS_ERR_IO);
    g_assert_nonnull(strstr(sms_message_last_error(m), "liar.bin"));
    g_byte_array_unref(out);
    sms_message_free(m);
    sms_signer_unref(signer);
    rec_clear(&rec);
}

/* The output never ends with the outer close delimiter: a transport that
 * forwards every byte returned still cannot deliver a complete message. */
static void check_no_signature(const GByteArray *out)
{
    g_assert_false(mem_contains(out->data, out->len, "Content-Type: application/pkcs7-signature"));
    g_assert_false(mem_contains(out->data, out->len, "smime.p7s"));
    /* Find the outer boundary and make sure its close delimiter is absent. */
    const uint8_t *b = memmem(out->data, out->len, "boundary=\"", 10);
    g_assert_nonnull(b);
    b += 10;
    const uint8_t *q = memchr(b, '"', out->len - (size_t)(b - out->data));
    g_assert_nonnull(q);
    char *close = g_strdup_printf("--%.*s--", (int)(q - b), (const char *)b);
    g_assert_false(mem_contains(out->data, out->len, close));
    g_free(close);
}

static void test_signer_fails(void)
{
    rec_signer rec = {.fail_code = SMS_ERR_SIGNER, .fail_msg = "token removed"};
    sms_signer *signer = make_signer(KEY_ECDSA, &rec);
    sms_message *m = new_message(signer);
    pat_src src = {.size = 100000, .seed = 3};
    add_pat(m, &src, "scan.pdf", NULL);
    GByteArray *out = g_byte_array_new();
    g_assert_cmpint(read_all(m, 4096, out), ==, SMS_ERR_SIGNER);
    g_assert_cmpuint(rec.calls, ==, 1);
    g_assert_cmpuint(src.served, ==, 100000); /* the failure came at the end */
    check_aborted(m, SMS_ERR_SIGNER);
    g_assert_nonnull(strstr(sms_message_last_error(m), "token removed"));
    check_no_signature(out);
    g_byte_array_unref(out);
    sms_message_free(m);
    sms_signer_unref(signer);
    rec_clear(&rec);
}

/* An abort that arrives while the signer works (a PIN prompt, say) wins:
 * the signature part is never returned. */
static void test_abort_in_signer(void)
{
    rec_signer rec = {.abort_in_sign = true};
    sms_signer *signer = make_signer(KEY_ECDSA, &rec);
    sms_message *m = new_message(signer);
    rec.msg = m;
    GByteArray *out = g_byte_array_new();
    g_assert_cmpint(read_all(m, 4096, out), ==, SMS_ERR_ABORTED);
    g_assert_cmpuint(rec.calls, ==, 1);
    check_aborted(m, SMS_ERR_ABORTED);
    check_no_signature(out);
    g_byte_array_unref(out);
    sms_message_free(m);
    sms_signer_unref(signer);
    rec_clear(&rec);
}

static void test_signer_zero_length(void)
{
    rec_signer rec = {.length_mode = LEN_ZERO};
    sms_signer *signer = make_signer(KEY_ECDSA, &rec);
    sms_message *m = new_message(signer);
    GByteArray *out = g_byte_array_new();
    g_assert_cmpint(read_all(m, 4096, out), ==, SMS_ERR_SIGNER);
    check_aborted(m, SMS_ERR_SIGNER);
    g_assert_nonnull(strstr(sms_message_last_error(m), "impossible length"));
    check_no_signature(out);
    g_byte_array_unref(out);
    sms_message_free(m);
    sms_signer_unref(signer);
    rec_clear(&rec);
}

static void test_key_mismatch(gconstpointer data)
{
    const key_kind *kinds = data; /* certificate, key */
    rec_signer rec = {0};
    sms_signer *signer = make_signer2(kinds[0], kinds[1], &rec);
    sms_message *m = new_message(signer);
    pat_src src = {.size = 10000, .seed = 3};
    add_pat(m, &src, "scan.pdf", NULL);
    GByteArray *out = g_byte_array_new();
    g_assert_cmpint(read_all(m, 4096, out), ==, SMS_ERR_KEY_MISMATCH);
    g_assert_cmpuint(rec.calls, ==, 1);
    check_aborted(m, SMS_ERR_KEY_MISMATCH);
    g_assert_nonnull(strstr(sms_message_last_error(m), "do not belong together"));
    check_no_signature(out);
    g_byte_array_unref(out);
    sms_message_free(m);
    sms_signer_unref(signer);
    rec_clear(&rec);
}

static const key_kind mismatch_ecdsa[2] = {KEY_ECDSA, KEY_ECDSA_OTHER};
static const key_kind mismatch_ed25519[2] = {KEY_ED25519, KEY_ED25519_OTHER};

/* ==== header injection and validation ================================== */

static void expect_refused(sms_message *m, int r, int code, const char *what)
{
    if (r != code)
        g_error("%s: expected %d, got %d", what, code, r);
    g_assert_cmpstr(sms_message_last_error(m), !=, "");
    g_assert_cmpint(sms_message_get_error(m), ==, 0); /* setup errors are not sticky */
}

static void test_header_injection(void)
{
    sms_message *m = sms_message_new();
    static const char *const crlf_addrs[] = {
        "a@example.org\r\nBcc: evil@example.net",
        "a@example.org\nBcc: evil@example.net",
        "a@example.org\rBcc: evil@example.net",
        "Evil\r\n <evil@example.net>",
        "\r\nevil@example.net",
    };
    for (size_t i = 0; i < G_N_ELEMENTS(crlf_addrs); i++) {
        expect_refused(m, sms_message_set_from(m, crlf_addrs[i]), SMS_ERR_BAD_HEADER, "from");
        g_assert_nonnull(strstr(sms_message_last_error(m), "line break"));
        expect_refused(m, sms_message_add_to(m, crlf_addrs[i]), SMS_ERR_BAD_HEADER, "to");
        expect_refused(m, sms_message_add_cc(m, crlf_addrs[i]), SMS_ERR_BAD_HEADER, "cc");
    }
    static const char *const malformed[] = {
        "no-at-sign",   "a@",   "@b",   "a b@c",  "a@@b", "a@b@c", "",       "a@b c", "<a@b",
        "Name <a@b> x", ".a@b", "a.@b", "a..b@c", "a@.b", "a@b.",  "a@b..c", "a@b_c", "a\"b@c",
    };
    for (size_t i = 0; i < G_N_ELEMENTS(malformed); i++) {
        char *what = g_strdup_printf("malformed address '%s'", malformed[i]);
        expect_refused(m, sms_message_set_from(m, malformed[i]), SMS_ERR_BAD_HEADER, what);
        expect_refused(m, sms_message_add_to(m, malformed[i]), SMS_ERR_BAD_HEADER, what);
        expect_refused(m, sms_message_add_cc(m, malformed[i]), SMS_ERR_BAD_HEADER, what);
        g_free(what);
    }
    g_assert_cmpuint(sms_message_get_recipient_count(m), ==, 0);
    g_assert_null(sms_message_get_sender(m));

    static const char *const subjects[] = {"Hi\r\nBcc: evil@example.net", "Hi\n", "\rHi"};
    for (size_t i = 0; i < G_N_ELEMENTS(subjects); i++)
        expect_refused(m, sms_message_set_subject(m, subjects[i]), SMS_ERR_BAD_HEADER, "subject");
    expect_refused(m, sms_message_set_subject(m, "bad \xff utf-8"), SMS_ERR_BAD_HEADER,
                   "subject utf-8");

    expect_refused(m, sms_message_add_header(m, "X-Test", "v\r\nBcc: evil@example.net"),
                   SMS_ERR_BAD_HEADER, "header CRLF");
    expect_refused(m, sms_message_add_header(m, "X-Test", "v\nBcc: evil@example.net"),
                   SMS_ERR_BAD_HEADER, "header LF");
    expect_refused(m, sms_message_add_header(m, "X-Test", "v\r"), SMS_ERR_BAD_HEADER, "header CR");
    static const char *const reserved[] = {
        "From",
        "to",
        "CC",
        "Bcc",
        "subject",
        "Date",
        "message-id",
        "MIME-Version",
        "Content-Type",
        "content-transfer-encoding",
        "Content-Disposition",
        "Sender",
        "Reply-To",
    };
    for (size_t i = 0; i < G_N_ELEMENTS(reserved); i++)
        expect_refused(m, sms_message_add_header(m, reserved[i], "x"), SMS_ERR_BAD_HEADER,
                       reserved[i]);
    static const char *const bad_names[] = {"",       "X Test", "X:Test", "X-T\xc3\xa9st",
                                            "X\r\nY", "X-Test:"};
    for (size_t i = 0; i < G_N_ELEMENTS(bad_names); i++)
        expect_refused(m, sms_message_add_header(m, bad_names[i], "x"), SMS_ERR_BAD_HEADER,
                       "header name");

    /* Attachments: refused names and types free the source (ownership). */
    static const char *const bad_files[] = {
        "a.pdf\r\nContent-Type: text/html", "a\nb.pdf", "a\rb", "", "tab\there", "bad\xff.pdf"};
    pat_src dummies[G_N_ELEMENTS(bad_files)];
    memset(dummies, 0, sizeof dummies);
    for (size_t i = 0; i < G_N_ELEMENTS(bad_files); i++) {
        sms_source *src = NULL;
        g_assert_cmpint(sms_source_new_callback(pat_read, &dummies[i], pat_destroy, 0, &src), ==,
                        SMS_OK);
        expect_refused(m, sms_message_add_attachment(m, src, bad_files[i], NULL),
                       SMS_ERR_BAD_HEADER, "filename");
        g_assert_cmpuint(dummies[i].destroyed, ==, 1);
    }
    static const char *const bad_types[] = {
        "text/plain\r\nX-Evil: 1",  "text/html\n", "nonsense", "text/", "/plain",
        "text/plain; charset=\"x\""};
    for (size_t i = 0; i < G_N_ELEMENTS(bad_types); i++) {
        pat_src d = {0};
        sms_source *src = NULL;
        g_assert_cmpint(sms_source_new_callback(pat_read, &d, pat_destroy, 0, &src), ==, SMS_OK);
        expect_refused(m, sms_message_add_attachment(m, src, "ok.bin", bad_types[i]),
                       SMS_ERR_BAD_HEADER, bad_types[i]);
        g_assert_cmpuint(d.destroyed, ==, 1);
    }

    /* The message is still usable. */
    g_assert_cmpint(sms_message_set_from(m, FROM_ADDR), ==, SMS_OK);
    g_assert_cmpint(sms_message_add_to(m, "alice@example.org"), ==, SMS_OK);
    g_assert_cmpint(sms_message_add_cc(m, "Bob <bob@[192.0.2.1]>"), ==, SMS_OK);
    g_assert_cmpint(sms_message_set_subject(m, "Fine"), ==, SMS_OK);
    g_assert_cmpint(sms_message_add_header(m, "X-Test", "fine"), ==, SMS_OK);
    pat_src att = {.size = 500, .seed = 4};
    add_pat(m, &att, "fine.bin", "application/x-fine");
    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_ECDSA, &rec);
    g_assert_cmpint(sms_message_set_signer(m, signer), ==, SMS_OK);
    GByteArray *out = g_byte_array_new();
    g_assert_cmpint(read_all(m, 4096, out), ==, SMS_OK);
    g_assert_false(mem_contains(out->data, out->len, "evil"));
    g_assert_false(mem_contains(out->data, out->len, "Evil"));
    smime s;
    smime_parse(out->data, out->len, &s);
    smime_verify(&s, KEY_ECDSA, GNUTLS_PK_ECDSA, GNUTLS_DIG_SHA256);
    check_one_header(s.headers, "From", FROM_ADDR);
    check_one_header(s.headers, "To", "alice@example.org");
    check_one_header(s.headers, "Cc", "\"Bob\" <bob@[192.0.2.1]>");
    check_one_header(s.headers, "Subject", "Fine");
    check_one_header(s.headers, "X-Test", "fine");
    g_assert_null(header_get(s.headers, "Bcc"));
    g_assert_cmpuint(s.n_parts, ==, 2);
    check_part_pattern(find_attachment(&s, "fine.bin"), 4, 500);
    g_assert_cmpuint(sms_message_get_recipient_count(m), ==, 2);

    smime_clear(&s);
    g_byte_array_unref(out);
    sms_message_free(m);
    sms_signer_unref(signer);
    rec_clear(&rec);
}

/* Names and text that need encoding come out as RFC 2047 / quoted-printable
 * and decode back. */
static void test_headers_encoding(void)
{
    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_ECDSA, &rec);
    sms_message *m = sms_message_new();
    g_assert_cmpint(sms_message_set_from(m, "J\xc3\xbcrgen M\xc3\xbcller <" FROM_ADDR ">"), ==,
                    SMS_OK);
    g_assert_cmpint(sms_message_add_to(m, "\"Quote\\d\" <q@example.org>"), ==, SMS_OK);
    g_assert_cmpint(sms_message_set_subject(m, "Gr\xc3\xbc\xc3\x9f"
                                               "e \xe2\x82\xac"),
                    ==, SMS_OK);
    static const char body[] = "Gr\xc3\xbc\xc3\x9f"
                               "e,\n=_ and From the scanner.\n";
    g_assert_cmpint(sms_message_set_body(m, body, strlen(body)), ==, SMS_OK);
    g_assert_cmpint(sms_message_set_signer(m, signer), ==, SMS_OK);
    GByteArray *out = g_byte_array_new();
    g_assert_cmpint(read_all(m, 4096, out), ==, SMS_OK);
    check_lines(out->data, out->len);
    for (size_t i = 0; i < out->len; i++)
        g_assert_cmpuint(out->data[i], <, 0x80); /* 7-bit clean */
    smime s;
    smime_parse(out->data, out->len, &s);
    smime_verify(&s, KEY_ECDSA, GNUTLS_PK_ECDSA, GNUTLS_DIG_SHA256);
    char *subj = header_get(s.headers, "Subject");
    g_assert_true(g_str_has_prefix(subj, "=?"));
    g_free(subj);
    char *from = header_get(s.headers, "From");
    g_assert_true(g_str_has_prefix(from, "=?"));
    g_assert_true(g_str_has_suffix(from, " <" FROM_ADDR ">"));
    g_free(from);
    /* The caller's quotes are taken as quoting, and \d as a quoted-pair. */
    check_one_header(s.headers, "To", "\"Quoted\" <q@example.org>");
    char *text = part_text(&s.parts[0]);
    g_assert_cmpstr(text, ==,
                    "Gr\xc3\xbc\xc3\x9f"
                    "e,\r\n=_ and From the scanner.\r\n");
    g_free(text);
    g_assert_false(mem_contains(s.parts[0].body, s.parts[0].body_len, "=_"));
    smime_clear(&s);
    g_byte_array_unref(out);
    sms_message_free(m);
    sms_signer_unref(signer);
    rec_clear(&rec);
}

/* Long values: each may be refused, but once accepted the message must keep
 * every line within RFC 5322's 998 bytes (and still verify). */
typedef enum { LONG_SUBJECT, LONG_HEADER, LONG_FROM_NAME, LONG_TO_NAME, LONG_FILENAME } long_field;

typedef struct long_case {
    long_field field;
    size_t len;
    const char *unit; /* repeated to len bytes */
} long_case;

static const long_case long_cases[] = {
    {LONG_SUBJECT, 3000, "a"},        {LONG_SUBJECT, 3000, "word "},
    {LONG_SUBJECT, 3000, "\xc3\xa9"}, {LONG_HEADER, 3000, "a"},
    {LONG_HEADER, 3000, "word "},     {LONG_FROM_NAME, 2000, "a"},
    {LONG_FROM_NAME, 2000, "word "},  {LONG_FROM_NAME, 2000, "\xc3\xa9"},
    {LONG_TO_NAME, 2000, "a"},        {LONG_TO_NAME, 2000, "word "},
    {LONG_FILENAME, 1000, "a"},       {LONG_FILENAME, 1000, "\xc3\xa9"},
};

static const char *const long_names[G_N_ELEMENTS(long_cases)] = {
    "/message/headers/long/subject-ascii",   "/message/headers/long/subject-words",
    "/message/headers/long/subject-utf8",    "/message/headers/long/header-ascii",
    "/message/headers/long/header-words",    "/message/headers/long/from-name-ascii",
    "/message/headers/long/from-name-words", "/message/headers/long/from-name-utf8",
    "/message/headers/long/to-name-ascii",   "/message/headers/long/to-name-words",
    "/message/headers/long/filename-ascii",  "/message/headers/long/filename-utf8",
};

static void test_long_values(gconstpointer data)
{
    if (!g_test_subprocess()) {
        /* In a child process, so that a failure here (a known library bug
         * at the time of writing) does not stop the rest of the suite. */
        g_test_trap_subprocess(NULL, 0, G_TEST_SUBPROCESS_INHERIT_STDERR);
        if (!g_test_trap_has_passed())
            g_test_fail_printf("failed in its subprocess: see the message above");
        return;
    }
    const long_case *c = data;
    GString *v = g_string_new(NULL);
    while (v->len + strlen(c->unit) <= c->len)
        g_string_append(v, c->unit);
    g_strchomp(v->str);
    v->len = strlen(v->str);

    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_ECDSA, &rec);
    sms_message *m = new_message(signer);
    const char *attach_name = "a.bin";
    char *addr = NULL;
    int r = SMS_OK;
    switch (c->field) {
    case LONG_SUBJECT:
        r = sms_message_set_subject(m, v->str);
        break;
    case LONG_HEADER:
        r = sms_message_add_header(m, "X-Long", v->str);
        break;
    case LONG_FROM_NAME:
        addr = g_strdup_printf("%s <" FROM_ADDR ">", v->str);
        r = sms_message_set_from(m, addr);
        break;
    case LONG_TO_NAME:
        addr = g_strdup_printf("%s <dave@example.org>", v->str);
        r = sms_message_add_to(m, addr);
        break;
    case LONG_FILENAME:
        attach_name = v->str;
        break;
    }
    pat_src src = {.size = 1000, .seed = 3};
    sms_source *s_src = NULL;
    g_assert_cmpint(sms_source_new_callback(pat_read, &src, pat_destroy, 1000, &s_src), ==, SMS_OK);
    int ra = sms_message_add_attachment(m, s_src, attach_name, NULL);
    if (c->field == LONG_FILENAME)
        r = ra;
    else
        g_assert_cmpint(ra, ==, SMS_OK);

    if (r == SMS_OK) {
        GByteArray *out = g_byte_array_new();
        int rc = read_all(m, 4096, out);
        if (rc == SMS_OK) {
            check_lines(out->data, out->len);
            smime s;
            smime_parse(out->data, out->len, &s);
            smime_verify(&s, KEY_ECDSA, GNUTLS_PK_ECDSA, GNUTLS_DIG_SHA256);
            g_assert_cmpuint(s.n_parts, ==, 2);
            check_part_pattern(&s.parts[1], 3, 1000);
            smime_clear(&s);
        } else {
            /* Refusing at read time is acceptable too, with a reason. */
            g_assert_cmpstr(sms_message_last_error(m), !=, "");
        }
        g_byte_array_unref(out);
    } else {
        g_assert_cmpstr(sms_message_last_error(m), !=, "");
    }
    sms_message_free(m);
    sms_signer_unref(signer);
    rec_clear(&rec);
    g_free(addr);
    g_string_free(v, TRUE);
}

/* Dates: those the CMS signingTime can carry (years 0..9999, UTCTime up to
 * 2049, GeneralizedTime after) make good messages whose Date header and
 * signingTime agree; the others are refused before the first byte, as
 * sms_message_prepare() promises for headers. */
typedef struct date_case {
    int64_t when;
    const char *header; /* NULL: must be refused */
} date_case;

static const date_case date_cases[] = {
    {-1, "Wed, 31 Dec 1969 23:59:59 +0000"},
    {0, "Thu, 01 Jan 1970 00:00:00 +0000"},
    {INT64_C(2524607999), "Fri, 31 Dec 2049 23:59:59 +0000"},
    {INT64_C(2524608000), "Sat, 01 Jan 2050 00:00:00 +0000"},
    {INT64_C(253402300799), "Fri, 31 Dec 9999 23:59:59 +0000"},
    {INT64_C(253402300800), NULL},
    {INT64_MAX, NULL},
};

static const char *const date_names[G_N_ELEMENTS(date_cases)] = {
    "/message/date/1969",         "/message/date/epoch",
    "/message/date/2049-utctime", "/message/date/2050-generalizedtime",
    "/message/date/9999",         "/message/date/year-10000",
    "/message/date/int64-max",
};

static void test_date_range(gconstpointer data)
{
    if (!g_test_subprocess()) {
        g_test_trap_subprocess(NULL, 0, G_TEST_SUBPROCESS_INHERIT_STDERR);
        if (!g_test_trap_has_passed())
            g_test_fail_printf("failed in its subprocess: see the message above");
        return;
    }
    const date_case *c = data;
    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_ECDSA, &rec);
    sms_message *m = new_message(signer);
    pat_src src = {.size = 5000, .seed = 3};
    add_pat(m, &src, "a.bin", NULL);
    int r = sms_message_set_date(m, (time_t)c->when);
    if (r == SMS_OK)
        r = sms_message_prepare(m);
    if (!c->header) {
        if (r == SMS_OK) {
            GByteArray *out = g_byte_array_new();
            int rc = read_all(m, 4096, out);
            g_error("date %" G_GINT64_FORMAT " was accepted by set_date and prepare; reading "
                    "then gave %d (%s) after %u bytes and %" G_GUINT64_FORMAT
                    " attachment bytes: '%s'",
                    c->when, rc, sms_strerror(rc), out->len, src.served, sms_message_last_error(m));
        }
        g_assert_cmpstr(sms_message_last_error(m), !=, "");
        g_assert_cmpuint(src.calls, ==, 0);
    } else {
        g_assert_cmpint(r, ==, SMS_OK);
        GByteArray *out = g_byte_array_new();
        g_assert_cmpint(read_all(m, 4096, out), ==, SMS_OK);
        smime s;
        smime_parse(out->data, out->len, &s);
        check_one_header(s.headers, "Date", c->header);
        /* Outside the certificate's validity: check the signature only. */
        smime_verify_flags(&s, KEY_ECDSA, GNUTLS_PK_ECDSA, GNUTLS_DIG_SHA256,
                           GNUTLS_VERIFY_DISABLE_TIME_CHECKS);
        gnutls_pkcs7_t p7;
        gnutls_datum_t der = {s.p7s->data, s.p7s->len};
        gnutls_pkcs7_signature_info_st info;
        g_assert_cmpint(gnutls_pkcs7_init(&p7), ==, 0);
        g_assert_cmpint(gnutls_pkcs7_import(p7, &der, GNUTLS_X509_FMT_DER), ==, 0);
        g_assert_cmpint(gnutls_pkcs7_get_signature_info(p7, 0, &info), ==, 0);
        if (c->when >= 0 && c->when <= G_MAXINT32) /* GnuTLS's own range */
            g_assert_cmpint(info.signing_time, ==, c->when);
        gnutls_pkcs7_signature_info_deinit(&info);
        gnutls_pkcs7_deinit(p7);
        smime_clear(&s);
        g_byte_array_unref(out);
    }
    sms_message_free(m);
    sms_signer_unref(signer);
    rec_clear(&rec);
}

/* Setup calls after reading started are refused (and an attachment passed
 * then is still freed). */
static void test_setup_after_start(void)
{
    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_ECDSA, &rec);
    sms_message *m = new_message(signer);
    uint8_t buf[10];
    size_t n = 0;
    g_assert_cmpint(sms_message_read(m, buf, sizeof buf, &n), ==, SMS_OK);
    g_assert_cmpuint(n, ==, sizeof buf);
    g_assert_cmpint(sms_message_set_subject(m, "late"), ==, SMS_ERR_STATE);
    g_assert_cmpint(sms_message_add_to(m, "late@example.org"), ==, SMS_ERR_STATE);
    g_assert_cmpint(sms_message_set_digest(m, SMS_DIGEST_SHA512), ==, SMS_ERR_STATE);
    g_assert_cmpint(sms_message_set_chunk_size(m, 8192), ==, SMS_ERR_STATE);
    pat_src late = {.size = 10};
    sms_source *src = NULL;
    g_assert_cmpint(sms_source_new_callback(pat_read, &late, pat_destroy, 10, &src), ==, SMS_OK);
    g_assert_cmpint(sms_message_add_attachment(m, src, "late.bin", NULL), ==, SMS_ERR_STATE);
    g_assert_cmpuint(late.destroyed, ==, 1);
    /* The message itself is unharmed. */
    GByteArray *out = g_byte_array_new();
    g_byte_array_append(out, buf, sizeof buf);
    g_assert_cmpint(read_all(m, 4096, out), ==, SMS_OK);
    g_assert_false(mem_contains(out->data, out->len, "late"));
    smime s;
    smime_parse(out->data, out->len, &s);
    smime_verify(&s, KEY_ECDSA, GNUTLS_PK_ECDSA, GNUTLS_DIG_SHA256);
    smime_clear(&s);
    g_byte_array_unref(out);
    sms_message_free(m);
    sms_signer_unref(signer);
    rec_clear(&rec);
}

static void test_bad_arguments(void)
{
    sms_message *m = sms_message_new();
    uint8_t buf[4];
    size_t n = 0;
    g_assert_cmpint(sms_message_read(NULL, buf, sizeof buf, &n), ==, SMS_ERR_INVALID_ARG);
    g_assert_cmpint(sms_message_read(m, NULL, sizeof buf, &n), ==, SMS_ERR_INVALID_ARG);
    g_assert_cmpint(sms_message_read(m, buf, 0, &n), ==, SMS_ERR_INVALID_ARG);
    g_assert_cmpint(sms_message_read(m, buf, sizeof buf, NULL), ==, SMS_ERR_INVALID_ARG);
    g_assert_cmpint(sms_message_set_chunk_size(m, 4095), ==, SMS_ERR_INVALID_ARG);
    g_assert_cmpint(sms_message_set_chunk_size(m, 16 * MIB + 1), ==, SMS_ERR_INVALID_ARG);
    g_assert_cmpint(sms_message_set_chunk_size(m, 4096), ==, SMS_OK);
    g_assert_cmpint(sms_message_set_chunk_size(m, 16 * MIB), ==, SMS_OK);
    g_assert_cmpint(sms_message_set_flags(m, 1u << 7), ==, SMS_ERR_INVALID_ARG);
    g_assert_cmpint(sms_message_set_message_id(m, "<a@b>"), ==, SMS_ERR_BAD_HEADER);
    g_assert_cmpint(sms_message_set_message_id(m, "no-at"), ==, SMS_ERR_BAD_HEADER);
    g_assert_cmpint(sms_message_set_message_id(m, "a b@c"), ==, SMS_ERR_BAD_HEADER);
    g_assert_cmpint(sms_message_set_message_id(m, "a@b\r\nX: y"), ==, SMS_ERR_BAD_HEADER);
    g_assert_cmpint(sms_message_set_body(m, "\xff", 1), ==, SMS_ERR_BAD_DATA);
    g_assert_cmpint(sms_message_set_body(m, "a\0b", 3), ==, SMS_ERR_BAD_DATA);
    g_assert_cmpint(sms_message_add_attachment(m, NULL, "x", NULL), ==, SMS_ERR_INVALID_ARG);
    g_assert_cmpint(sms_message_get_error(m), ==, 0);
    sms_progress p = {.struct_size = 0};
    g_assert_cmpint(sms_message_get_progress(m, &p), ==, SMS_ERR_INVALID_ARG);
    p.struct_size = sizeof p;
    g_assert_cmpint(sms_message_get_progress(m, &p), ==, SMS_OK);
    g_assert_cmpint(p.phase, ==, SMS_PHASE_SETUP);
    g_assert_cmpint(p.attachment_index, ==, -1);
    sms_message_free(m);
}

/* ==== digests ========================================================== */

static void test_digest_weak(gconstpointer data)
{
    sms_digest d = (sms_digest)GPOINTER_TO_INT(data);
    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_RSA, &rec);

    sms_message *m = new_message(signer);
    g_assert_cmpint(sms_message_set_digest(m, d), ==, SMS_OK);
    g_assert_cmpint(sms_message_prepare(m), ==, SMS_ERR_DIGEST);
    g_assert_nonnull(strstr(sms_message_last_error(m), sms_digest_name(d)));
    GByteArray *out = g_byte_array_new();
    g_assert_cmpint(read_all(m, 4096, out), ==, SMS_ERR_DIGEST); /* sticky */
    g_assert_cmpuint(out->len, ==, 0);
    g_assert_cmpuint(rec.calls, ==, 0);
    sms_message_free(m);

    /* Allowed explicitly. */
    m = new_message(signer);
    g_assert_cmpint(sms_message_set_flags(m, SMS_MESSAGE_ALLOW_WEAK_DIGEST), ==, SMS_OK);
    g_assert_cmpint(sms_message_set_digest(m, d), ==, SMS_OK);
    g_assert_cmpint(sms_message_prepare(m), ==, SMS_OK);
    g_assert_cmpint(read_all(m, 4096, out), ==, SMS_OK);
    g_assert_cmpuint(rec.calls, ==, 1);
    g_assert_cmpuint(rec.tbs_digest_len, ==, sms_digest_length(d));
    smime s;
    smime_parse(out->data, out->len, &s);
    g_assert_cmpstr(s.micalg, ==, sms_digest_micalg(d));
    smime_verify_flags(&s, KEY_RSA, GNUTLS_PK_RSA, gnutls_dig(d),
                       GNUTLS_VERIFY_ALLOW_BROKEN | GNUTLS_VERIFY_ALLOW_SIGN_WITH_SHA1 |
                           GNUTLS_VERIFY_ALLOW_SIGN_RSA_MD5);
    smime_clear(&s);
    sms_message_free(m);
    g_byte_array_unref(out);
    sms_signer_unref(signer);
    rec_clear(&rec);
}

static void test_digest_unknown(void)
{
    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_ECDSA, &rec);
    sms_message *m = new_message(signer);
    g_assert_cmpint(sms_message_set_digest(m, SMS_DIGEST_NONE), ==, SMS_ERR_DIGEST);
    g_assert_cmpstr(sms_message_last_error(m), !=, "");
    g_assert_cmpint(sms_message_set_digest(m, (sms_digest)42), ==, SMS_ERR_DIGEST);
    g_assert_cmpint(sms_message_set_digest(m, (sms_digest)-1), ==, SMS_ERR_DIGEST);
    g_assert_cmpint(sms_message_get_error(m), ==, 0);
    /* Unchanged: still the SHA-256 default. */
    GByteArray *out = g_byte_array_new();
    g_assert_cmpint(read_all(m, 4096, out), ==, SMS_OK);
    smime s;
    smime_parse(out->data, out->len, &s);
    g_assert_cmpstr(s.micalg, ==, "sha-256");
    smime_verify(&s, KEY_ECDSA, GNUTLS_PK_ECDSA, GNUTLS_DIG_SHA256);
    smime_clear(&s);
    g_byte_array_unref(out);
    sms_message_free(m);
    sms_signer_unref(signer);
    rec_clear(&rec);

    g_assert_cmpint(sms_digest_from_string("SHA-384"), ==, SMS_DIGEST_SHA384);
    g_assert_cmpint(sms_digest_from_string("sha512"), ==, SMS_DIGEST_SHA512);
    g_assert_cmpint(sms_digest_from_string("sha3-256"), ==, SMS_DIGEST_NONE);
    g_assert_cmpint(sms_digest_from_string(NULL), ==, SMS_DIGEST_NONE);
    g_assert_cmpuint(sms_digest_length(SMS_DIGEST_SHA384), ==, 48);
    g_assert_cmpuint(sms_digest_length(SMS_DIGEST_NONE), ==, 0);
}

/* Ed25519 with signed attributes is SHA-512 only (RFC 8419); RSA-PSS needs
 * SHA-2 of 256 bits or more. */
static void test_digest_scheme_constraints(void)
{
    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_ED25519, &rec);
    sms_message *m = new_message(signer);
    g_assert_cmpint(sms_message_set_digest(m, SMS_DIGEST_SHA256), ==, SMS_OK);
    g_assert_cmpint(sms_message_prepare(m), ==, SMS_ERR_DIGEST);
    g_assert_nonnull(strstr(sms_message_last_error(m), "SHA-512"));
    sms_message_free(m);
    sms_signer_unref(signer);

    rec_signer rec2 = {0};
    signer = make_signer(KEY_RSA, &rec2);
    m = new_message(signer);
    g_assert_cmpint(sms_message_set_flags(m, SMS_MESSAGE_RSA_PSS), ==, SMS_OK);
    g_assert_cmpint(sms_message_set_digest(m, SMS_DIGEST_SHA224), ==, SMS_OK);
    g_assert_cmpint(sms_message_prepare(m), ==, SMS_ERR_DIGEST);
    sms_message_free(m);
    sms_signer_unref(signer);
    g_assert_cmpuint(rec.calls + rec2.calls, ==, 0);
    rec_clear(&rec);
    rec_clear(&rec2);
}

/* ==== prepare errors =================================================== */

static void test_prepare_errors(void)
{
    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_ECDSA, &rec);
    struct {
        const char *missing;
        const char *word;
    } cases[] = {{"from", "sender"}, {"rcpt", "recipient"}, {"signer", "signer"}};
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        sms_message *m = sms_message_new();
        if (strcmp(cases[i].missing, "from") != 0)
            g_assert_cmpint(sms_message_set_from(m, FROM_ADDR), ==, SMS_OK);
        if (strcmp(cases[i].missing, "rcpt") != 0)
            g_assert_cmpint(sms_message_add_cc(m, "cc@example.org"), ==, SMS_OK);
        if (strcmp(cases[i].missing, "signer") != 0)
            g_assert_cmpint(sms_message_set_signer(m, signer), ==, SMS_OK);
        g_assert_cmpint(sms_message_prepare(m), ==, SMS_ERR_INVALID_ARG);
        const char *e = sms_message_last_error(m);
        if (!strstr(e, cases[i].word))
            g_error("missing %s: message '%s' does not say '%s'", cases[i].missing, e,
                    cases[i].word);
        uint8_t buf[16];
        size_t n = 5;
        g_assert_cmpint(sms_message_read(m, buf, sizeof buf, &n), ==, SMS_ERR_INVALID_ARG);
        g_assert_cmpuint(n, ==, 5);
        sms_message_free(m);
    }
    /* With all three (Cc only is enough) it prepares. */
    sms_message *m = sms_message_new();
    g_assert_cmpint(sms_message_set_from(m, FROM_ADDR), ==, SMS_OK);
    g_assert_cmpint(sms_message_add_cc(m, "cc@example.org"), ==, SMS_OK);
    g_assert_cmpint(sms_message_set_signer(m, signer), ==, SMS_OK);
    g_assert_cmpint(sms_message_prepare(m), ==, SMS_OK);
    g_assert_true(g_regex_match_simple("^[0-9a-f]{32}\\.sms@example\\.org$",
                                       sms_message_get_message_id(m), 0, 0));
    sms_message_free(m);
    sms_signer_unref(signer);
    g_assert_cmpuint(rec.destroyed, ==, 1);
    rec_clear(&rec);
}

/* ==== progress ========================================================= */

static void test_progress(void)
{
    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_ECDSA, &rec);
    sms_message *m = new_message(signer);
    rec.msg = m;
    g_assert_cmpint(sms_message_set_chunk_size(m, 4096), ==, SMS_OK);
    pat_src a = {.size = 100000, .seed = 1, .msg = m, .check_progress = true, .index = 0};
    pat_src b = {
        .size = 50000, .seed = 2, .msg = m, .check_progress = true, .index = 1, .base = 100000};
    add_pat(m, &a, "a.bin", NULL);
    add_pat(m, &b, "b.bin", NULL);

    sms_progress p = {.struct_size = sizeof p};
    g_assert_cmpint(sms_message_get_progress(m, &p), ==, SMS_OK);
    g_assert_cmpint(p.phase, ==, SMS_PHASE_SETUP);
    g_assert_cmpuint(p.attachment_count, ==, 2);
    g_assert_cmpint(p.source_size, ==, 150000);
    g_assert_cmpuint(p.output_bytes, ==, 0);

    uint8_t buf[3000];
    uint64_t total = 0, last_att_bytes = 0, last_src = 0;
    int last_index = -1;
    unsigned seen[SMS_PHASE_FAILED + 1] = {0};
    bool seen_index[2] = {false, false};
    for (;;) {
        size_t n = 0;
        g_assert_cmpint(sms_message_read(m, buf, sizeof buf, &n), ==, SMS_OK);
        total += n;
        g_assert_cmpint(sms_message_get_progress(m, &p), ==, SMS_OK);
        g_assert_cmpuint(p.output_bytes, ==, total);
        g_assert_cmpuint(p.attachment_count, ==, 2);
        g_assert_cmpint(p.source_size, ==, 150000);
        g_assert_cmpuint(p.source_bytes, >=, last_src);
        g_assert_cmpuint(p.source_bytes, <=, 150000);
        last_src = p.source_bytes;
        g_assert_cmpint(p.phase, >, SMS_PHASE_SETUP);
        g_assert_cmpint(p.phase, <, SMS_PHASE_FAILED);
        seen[p.phase]++;
        if (p.phase == SMS_PHASE_ATTACHMENT) {
            g_assert_cmpint(p.attachment_index, >=, last_index);
            g_assert_cmpint(p.attachment_index, <, 2);
            if (p.attachment_index != last_index)
                last_att_bytes = 0;
            g_assert_cmpuint(p.attachment_bytes, >=, last_att_bytes);
            last_att_bytes = p.attachment_bytes;
            last_index = p.attachment_index;
            seen_index[p.attachment_index] = true;
            g_assert_cmpint(p.attachment_size, ==, p.attachment_index == 0 ? 100000 : 50000);
            g_assert_cmpuint(p.attachment_bytes, <=, (uint64_t)p.attachment_size);
            g_assert_cmpuint(p.source_bytes, ==,
                             (p.attachment_index == 1 ? 100000 : 0) + p.attachment_bytes);
        } else {
            g_assert_cmpint(p.attachment_index, ==, -1);
            g_assert_cmpuint(p.attachment_bytes, ==, 0);
        }
        if (n == 0)
            break;
    }
    g_assert_cmpint(p.phase, ==, SMS_PHASE_DONE);
    g_assert_cmpuint(p.source_bytes, ==, 150000);
    g_assert_true(seen_index[0] && seen_index[1]);
    g_assert_cmpuint(seen[SMS_PHASE_ATTACHMENT], >, 40);
    g_assert_cmpuint(a.progress_checks, ==, a.calls);
    g_assert_cmpuint(b.progress_checks, ==, b.calls);
    g_assert_cmpuint(a.calls, >=, 100000 / 4096);
    g_assert_cmpint(rec.phase, ==, SMS_PHASE_SIGNING);
    sms_message_free(m);
    sms_signer_unref(signer);
    rec_clear(&rec);
}

/* ==== the signer object ================================================ */

static void test_signer_lifecycle(void)
{
    rec_signer rec = {0};
    sms_signer *s = make_signer(KEY_ECDSA, &rec);
    g_assert_true(sms_signer_ref(s) == s);
    sms_message *m1 = sms_message_new(), *m2 = sms_message_new();
    g_assert_cmpint(sms_message_set_signer(m1, s), ==, SMS_OK);
    g_assert_cmpint(sms_message_set_signer(m2, s), ==, SMS_OK);
    g_assert_cmpint(sms_message_set_signer(m2, s), ==, SMS_OK); /* replacing with itself */
    sms_signer_unref(s);
    sms_signer_unref(s);
    g_assert_cmpuint(rec.destroyed, ==, 0);
    sms_message_free(m1);
    g_assert_cmpuint(rec.destroyed, ==, 0);
    g_assert_cmpstr(sms_signer_describe(s), ==, "test");
    sms_message_free(m2);
    g_assert_cmpuint(rec.destroyed, ==, 1);
    rec_clear(&rec);
}

static void test_signer_new_errors(void)
{
    rec_signer rec = {0};
    const test_key *k = get_key(KEY_ECDSA);
    const uint8_t *certs[1] = {k->der.data};
    size_t lens[1] = {k->der.size};
    sms_signer *sentinel = (sms_signer *)&rec, *s = sentinel;

    static const uint8_t garbage[] = {0x30, 0x03, 0x02, 0x01, 0x00};
    const uint8_t *bad[1] = {garbage};
    size_t bad_len[1] = {sizeof garbage};
    g_assert_cmpint(sms_signer_new(&rec_class, &rec, bad, bad_len, 1, &s), ==, SMS_ERR_BAD_DATA);
    g_assert_true(s == sentinel);
    size_t zero[1] = {0};
    g_assert_cmpint(sms_signer_new(&rec_class, &rec, certs, zero, 1, &s), ==, SMS_ERR_BAD_DATA);
    g_assert_cmpint(sms_signer_new(NULL, &rec, certs, lens, 1, &s), ==, SMS_ERR_INVALID_ARG);
    g_assert_cmpint(sms_signer_new(&rec_class, &rec, certs, lens, 0, &s), ==, SMS_ERR_INVALID_ARG);
    g_assert_cmpint(sms_signer_new(&rec_class, &rec, NULL, lens, 1, &s), ==, SMS_ERR_INVALID_ARG);
    g_assert_cmpint(sms_signer_new(&rec_class, &rec, certs, lens, 1, NULL), ==,
                    SMS_ERR_INVALID_ARG);
    sms_signer_class tiny = rec_class;
    tiny.struct_size = sizeof(size_t);
    g_assert_cmpint(sms_signer_new(&tiny, &rec, certs, lens, 1, &s), ==, SMS_ERR_INVALID_ARG);
    g_assert_true(s == sentinel);
    g_assert_cmpuint(rec.destroyed, ==, 0); /* impl stays the caller's on failure */

    /* An old plugin's smaller class (no describe): its name is used. */
    sms_signer_class old = rec_class;
    old.struct_size = offsetof(sms_signer_class, describe);
    old.describe = rec_describe; /* past struct_size: must not be used */
    g_assert_cmpint(sms_signer_new(&old, &rec, certs, lens, 1, &s), ==, SMS_OK);
    g_assert_cmpstr(sms_signer_describe(s), ==, "test");
    sms_signer_unref(s);
    g_assert_cmpuint(rec.destroyed, ==, 1);

    sms_signer_class full = rec_class;
    full.describe = rec_describe;
    g_assert_cmpint(sms_signer_new(&full, &rec, certs, lens, 1, &s), ==, SMS_OK);
    g_assert_cmpstr(sms_signer_describe(s), ==, "the recording test signer");
    sms_signer_unref(s);
    g_assert_cmpuint(rec.destroyed, ==, 2);
    rec_clear(&rec);
}

static void test_signer_certs_and_scheme(void)
{
    rec_signer rec = {0};
    const test_key *leaf = get_key(KEY_RSA), *other = get_key(KEY_ECDSA);
    const uint8_t *certs[2] = {leaf->der.data, other->der.data};
    size_t lens[2] = {leaf->der.size, other->der.size};
    sms_signer *s = NULL;
    rec.key = leaf->priv;
    g_assert_cmpint(sms_signer_new(&rec_class, &rec, certs, lens, 2, &s), ==, SMS_OK);
    g_assert_cmpuint(sms_signer_cert_count(s), ==, 2);
    size_t len = 0;
    const uint8_t *c0 = sms_signer_cert(s, 0, &len);
    g_assert_cmpmem(c0, len, leaf->der.data, leaf->der.size);
    g_assert_true(c0 != leaf->der.data); /* copied */
    const uint8_t *c1 = sms_signer_cert(s, 1, &len);
    g_assert_cmpmem(c1, len, other->der.data, other->der.size);
    g_assert_null(sms_signer_cert(s, 2, &len));
    sms_sig_scheme sch = 0;
    g_assert_cmpint(sms_signer_scheme(s, 0, &sch), ==, SMS_OK);
    g_assert_cmpint(sch, ==, SMS_SIG_RSA_PKCS1);
    g_assert_cmpint(sms_signer_scheme(s, 1, &sch), ==, SMS_OK);
    g_assert_cmpint(sch, ==, SMS_SIG_RSA_PSS);

    /* Both certificates travel in the CMS. */
    sms_message *m = new_message(s);
    GByteArray *out = g_byte_array_new();
    g_assert_cmpint(read_all(m, 65536, out), ==, SMS_OK);
    smime smi;
    smime_parse(out->data, out->len, &smi);
    smi.p7s = g_byte_array_new();
    b64_decode_body(smi.sig.body, smi.sig.body_len, smi.p7s, NULL);
    gnutls_pkcs7_t p7;
    gnutls_datum_t der = {smi.p7s->data, smi.p7s->len};
    g_assert_cmpint(gnutls_pkcs7_init(&p7), ==, 0);
    g_assert_cmpint(gnutls_pkcs7_import(p7, &der, GNUTLS_X509_FMT_DER), ==, 0);
    g_assert_cmpint(gnutls_pkcs7_get_crt_count(p7), ==, 2);
    gnutls_pkcs7_deinit(p7);
    g_assert_cmpint(pkcs7_verify_entity(&smi, KEY_RSA, smi.entity, smi.entity_len, 0), ==, 0);
    smime_clear(&smi);
    g_byte_array_unref(out);
    sms_message_free(m);
    sms_signer_unref(s);
    rec_clear(&rec);

    struct {
        key_kind k;
        sms_sig_scheme want;
    } kinds[] = {{KEY_ECDSA, SMS_SIG_ECDSA}, {KEY_ED25519, SMS_SIG_ED25519}};
    for (size_t i = 0; i < G_N_ELEMENTS(kinds); i++) {
        rec_signer r = {0};
        s = make_signer(kinds[i].k, &r);
        g_assert_cmpint(sms_signer_scheme(s, 0, &sch), ==, SMS_OK);
        g_assert_cmpint(sch, ==, kinds[i].want);
        g_assert_cmpint(sms_signer_scheme(s, 1, &sch), ==, SMS_OK); /* PSS is RSA only */
        g_assert_cmpint(sch, ==, kinds[i].want);
        sms_signer_unref(s);
        rec_clear(&r);
    }
}

/* sms_signer_sign directly: a good signature passes; one from another key,
 * or an impossible length, is refused. */
static void test_signer_sign_direct(void)
{
    uint8_t tbs[] = {0x31, 0x03, 0x02, 0x01, 0x05};
    uint8_t dig[32];
    g_assert_cmpint(gnutls_hash_fast(GNUTLS_DIG_SHA256, tbs, sizeof tbs, dig), ==, 0);
    sms_sign_request req = {
        .struct_size = sizeof req,
        .scheme = SMS_SIG_ECDSA,
        .digest = SMS_DIGEST_SHA256,
        .tbs = tbs,
        .tbs_len = sizeof tbs,
        .tbs_digest = dig,
        .tbs_digest_len = sizeof dig,
    };
    uint8_t sig[SMS_SIGNATURE_MAX];
    size_t sig_len = sizeof sig;
    char err[256];

    rec_signer good = {0};
    sms_signer *s = make_signer(KEY_ECDSA, &good);
    g_assert_cmpint(sms_signer_sign(s, &req, sig, &sig_len, err, sizeof err), ==, SMS_OK);
    g_assert_cmpuint(sig_len, >, 8);
    g_assert_cmpuint(sig_len, <, 80);
    /* The signer is told the room it has. */
    sig_len = 4;
    g_assert_cmpint(sms_signer_sign(s, &req, sig, &sig_len, err, sizeof err), ==, SMS_ERR_SIGNER);
    g_assert_nonnull(strstr(err, "signature too long"));
    sms_signer_unref(s);

    rec_signer bad = {0};
    s = make_signer2(KEY_ECDSA, KEY_ECDSA_OTHER, &bad);
    sig_len = sizeof sig;
    g_assert_cmpint(sms_signer_sign(s, &req, sig, &sig_len, err, sizeof err), ==,
                    SMS_ERR_KEY_MISMATCH);
    g_assert_nonnull(strstr(err, "do not belong together"));
    sms_signer_unref(s);

    /* A 0-byte signature, or more bytes than there was room for, is refused. */
    rec_signer zero = {.length_mode = LEN_ZERO};
    s = make_signer(KEY_ECDSA, &zero);
    sig_len = sizeof sig;
    g_assert_cmpint(sms_signer_sign(s, &req, sig, &sig_len, err, sizeof err), ==, SMS_ERR_SIGNER);
    g_assert_nonnull(strstr(err, "impossible length"));
    sms_signer_unref(s);
    rec_signer longer = {.length_mode = LEN_TOO_LONG};
    s = make_signer(KEY_ECDSA, &longer);
    sig_len = 100;
    g_assert_cmpint(sms_signer_sign(s, &req, sig, &sig_len, err, sizeof err), ==, SMS_ERR_SIGNER);
    g_assert_nonnull(strstr(err, "impossible length"));
    sms_signer_unref(s);

    rec_clear(&good);
    rec_clear(&bad);
    rec_clear(&zero);
    rec_clear(&longer);
}

/* ==== NULL safety ====================================================== */

static void test_null_safety(void)
{
    sms_message_free(NULL);
    sms_source_free(NULL);
    sms_signer_unref(NULL);
    g_assert_null(sms_signer_ref(NULL));
    sms_message_cancel(NULL);
    sms_message_abort(NULL);
    g_assert_cmpstr(sms_message_last_error(NULL), ==, "");
    g_assert_cmpint(sms_message_is_partial(NULL), ==, 0);
    g_assert_null(sms_message_get_message_id(NULL));
    g_assert_null(sms_message_get_sender(NULL));
    g_assert_cmpuint(sms_message_get_recipient_count(NULL), ==, 0);
    g_assert_null(sms_message_get_recipient(NULL, 0));
    g_assert_cmpint(sms_message_prepare(NULL), ==, SMS_ERR_INVALID_ARG);
    g_assert_cmpint(sms_message_set_from(NULL, FROM_ADDR), ==, SMS_ERR_INVALID_ARG);
    g_assert_cmpuint(sms_signer_cert_count(NULL), ==, 0);
    g_assert_null(sms_signer_cert(NULL, 0, NULL));
    g_assert_cmpstr(sms_signer_describe(NULL), ==, "");

    /* A message freed before it was read releases its sources and signer. */
    rec_signer rec = {0};
    sms_signer *signer = make_signer(KEY_ECDSA, &rec);
    sms_message *m = new_message(signer);
    sms_signer_unref(signer);
    pat_src a = {.size = 10}, b = {.size = 10};
    add_pat(m, &a, "a", NULL);
    add_pat(m, &b, NULL, NULL);
    sms_message_free(m);
    g_assert_cmpuint(a.destroyed, ==, 1);
    g_assert_cmpuint(b.destroyed, ==, 1);
    g_assert_cmpuint(a.calls + b.calls, ==, 0);
    g_assert_cmpuint(rec.destroyed, ==, 1);
    rec_clear(&rec);

    /* Freed in the middle of an attachment. */
    rec_signer rec2 = {0};
    signer = make_signer(KEY_ECDSA, &rec2);
    m = new_message(signer);
    pat_src c = {.size = MIB};
    add_pat(m, &c, "c", NULL);
    uint8_t buf[4096];
    size_t n = 0;
    while (c.calls == 0)
        g_assert_cmpint(sms_message_read(m, buf, sizeof buf, &n), ==, SMS_OK);
    sms_message_free(m);
    sms_signer_unref(signer);
    g_assert_cmpuint(c.destroyed, ==, 1);
    g_assert_cmpuint(rec2.destroyed, ==, 1);
    rec_clear(&rec2);
}

/* ==== main ============================================================= */

int main(int argc, char **argv)
{
    /* --keep-going: a test that fails without aborting (the subprocess ones)
     * must not hide the tests after it. */
    static char *args[64];
    int n_args = 0;
    for (int i = 0; i < argc && i < 62; i++)
        args[n_args++] = argv[i];
    args[n_args++] = (char *)"--keep-going";
    char **argp = args;
    g_test_init(&n_args, &argp, NULL);

    for (size_t i = 0; i < G_N_ELEMENTS(basic_cases); i++) {
        g_assert_nonnull(basic_names[i]);
        g_test_add_data_func(basic_names[i], &basic_cases[i], test_basic);
    }
    g_test_add_func("/message/attachment/sizes", test_attachment_sizes);
    g_test_add_func("/message/attachment/names", test_attachment_names);
    g_test_add_func("/message/read/every-size", test_read_every_size);
    g_test_add_func("/message/source/short-reads", test_source_short_reads);
    g_test_add_func("/message/source/path", test_source_path);
    g_test_add_func("/message/stream/read-once-bounded", test_stream_big);
    g_test_add_func("/message/signer/sees-only-hash", test_signer_sees_only_hash);
    g_test_add_func("/message/cancel/after-n-bytes", test_cancel_after_n);
    g_test_add_func("/message/cancel/second-of-three", test_cancel_second_of_three);
    g_test_add_func("/message/cancel/between-reads", test_cancel_between_reads);
    g_test_add_func("/message/cancel/before-start", test_cancel_before_start);
    g_test_add_func("/message/abort/mid-attachment", test_abort_mid_attachment);
    g_test_add_func("/message/abort/in-source", test_abort_in_source);
    g_test_add_func("/message/abort/in-signer", test_abort_in_signer);
    g_test_add_func("/message/source/io-error", test_source_io_error);
    g_test_add_func("/message/source/too-much", test_source_too_much);
    g_test_add_func("/message/signer/fails", test_signer_fails);
    g_test_add_func("/message/signer/zero-length", test_signer_zero_length);
    g_test_add_data_func("/message/signer/key-mismatch/ecdsa", mismatch_ecdsa, test_key_mismatch);
    g_test_add_data_func("/message/signer/key-mismatch/ed25519", mismatch_ed25519,
                         test_key_mismatch);
    g_test_add_func("/message/headers/injection", test_header_injection);
    g_test_add_func("/message/headers/encoding", test_headers_encoding);
    for (size_t i = 0; i < G_N_ELEMENTS(long_cases); i++) {
        g_assert_nonnull(long_names[i]);
        g_test_add_data_func(long_names[i], &long_cases[i], test_long_values);
    }
    g_test_add_func("/message/setup/after-start", test_setup_after_start);
    for (size_t i = 0; i < G_N_ELEMENTS(date_cases); i++) {
        g_assert_nonnull(date_names[i]);
        g_test_add_data_func(date_names[i], &date_cases[i], test_date_range);
    }
    g_test_add_func("/message/setup/bad-arguments", test_bad_arguments);
    g_test_add_data_func("/message/digest/weak/md5", GINT_TO_POINTER(SMS_DIGEST_MD5),
                         test_digest_weak);
    g_test_add_data_func("/message/digest/weak/sha1", GINT_TO_POINTER(SMS_DIGEST_SHA1),
                         test_digest_weak);
    g_test_add_func("/message/digest/unknown", test_digest_unknown);
    g_test_add_func("/message/digest/scheme-constraints", test_digest_scheme_constraints);
    g_test_add_func("/message/prepare/errors", test_prepare_errors);
    g_test_add_func("/message/progress", test_progress);
    g_test_add_func("/message/null-safety", test_null_safety);
    g_test_add_func("/signer/lifecycle", test_signer_lifecycle);
    g_test_add_func("/signer/new-errors", test_signer_new_errors);
    g_test_add_func("/signer/certs-and-scheme", test_signer_certs_and_scheme);
    g_test_add_func("/signer/sign-direct", test_signer_sign_direct);

    int r = g_test_run();
    free_keys();
    return r;
}
