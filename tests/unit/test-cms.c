/* smimestream: CMS SignedData tests (cms.c).
 *
 * Keys and certificates are made at test time with GnuTLS: one ECDSA P-256
 * CA and a leaf per key type.  Each signature is built the way the library
 * builds it (signed attributes, their digest signed, then the SignedData)
 * and checked by real verifiers: GnuTLS's gnutls_pkcs7_verify() always, and
 * `openssl cms -verify` when /usr/bin/openssl is there. */
#include "config.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include <glib.h>
#include <glib/gstdio.h>
#include <gnutls/abstract.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/pkcs7.h>
#include <gnutls/x509.h>

#include "sms-private.h"

#define OPENSSL "/usr/bin/openssl"

static const char content[] = "Content-Type: text/plain; charset=utf-8\r\n"
                              "Content-Transfer-Encoding: 7bit\r\n"
                              "\r\n"
                              "Hello from the CMS unit test.\r\n";

/* ---- keys and certificates --------------------------------------------- */

typedef enum {
    LEAF_RSA,     /* rsaEncryption key: PKCS#1 v1.5 and PSS signatures */
    LEAF_RSA_PSS, /* RSASSA-PSS key: PSS only */
    LEAF_P256,
    LEAF_P384,
    LEAF_ED25519,
    LEAF_COUNT
} leaf_kind;

typedef struct test_key {
    gnutls_x509_privkey_t xkey;
    gnutls_privkey_t key;
    gnutls_x509_crt_t crt;
    gnutls_datum_t der; /* the certificate */
    gnutls_pk_algorithm_t pk;
} test_key;

static test_key ca;
static test_key leaves[LEAF_COUNT];

static void key_generate(test_key *k, gnutls_pk_algorithm_t pk, unsigned bits)
{
    k->pk = pk;
    g_assert_cmpint(gnutls_x509_privkey_init(&k->xkey), ==, 0);
    g_assert_cmpint(gnutls_x509_privkey_generate2(k->xkey, pk, bits, 0, NULL, 0), ==, 0);
    g_assert_cmpint(gnutls_privkey_init(&k->key), ==, 0);
    g_assert_cmpint(gnutls_privkey_import_x509(k->key, k->xkey, 0), ==, 0);
}

static void cert_set_key_ids(gnutls_x509_crt_t crt, const test_key *issuer)
{
    uint8_t id[64];
    size_t id_len = sizeof id;
    g_assert_cmpint(gnutls_x509_crt_get_key_id(crt, 0, id, &id_len), ==, 0);
    g_assert_cmpint(gnutls_x509_crt_set_subject_key_id(crt, id, id_len), ==, 0);
    if (issuer) {
        id_len = sizeof id;
        g_assert_cmpint(gnutls_x509_crt_get_key_id(issuer->crt, 0, id, &id_len), ==, 0);
        g_assert_cmpint(gnutls_x509_crt_set_authority_key_id(crt, id, id_len), ==, 0);
    }
}

/* A v3 certificate for k, signed by issuer (self-signed CA when NULL).
 * The serial's first significant byte has its top bit set, so the INTEGER
 * needs a leading zero, which issuerAndSerialNumber has to keep. */
static void cert_make(test_key *k, const char *dn, unsigned char serial_id, const test_key *issuer)
{
    gnutls_x509_crt_t crt;
    const char *bad = NULL;
    time_t now = time(NULL);
    const uint8_t serial[] = {0x00, 0x9c, 0x51, 0x7e, 0x57, 0x00, 0x01, serial_id};
    g_assert_cmpint(gnutls_x509_crt_init(&crt), ==, 0);
    g_assert_cmpint(gnutls_x509_crt_set_version(crt, 3), ==, 0);
    g_assert_cmpint(gnutls_x509_crt_set_serial(crt, serial, sizeof serial), ==, 0);
    g_assert_cmpint(gnutls_x509_crt_set_activation_time(crt, now - 3600), ==, 0);
    g_assert_cmpint(gnutls_x509_crt_set_expiration_time(crt, now + 30 * 86400), ==, 0);
    g_assert_cmpint(gnutls_x509_crt_set_dn(crt, dn, &bad), ==, 0);
    g_assert_cmpint(gnutls_x509_crt_set_key(crt, k->xkey), ==, 0);
    if (!issuer) {
        g_assert_cmpint(gnutls_x509_crt_set_basic_constraints(crt, 1, -1), ==, 0);
        g_assert_cmpint(
            gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_KEY_CERT_SIGN | GNUTLS_KEY_CRL_SIGN),
            ==, 0);
    } else {
        static const char email[] = "alice@example.org";
        g_assert_cmpint(gnutls_x509_crt_set_basic_constraints(crt, 0, -1), ==, 0);
        g_assert_cmpint(gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_DIGITAL_SIGNATURE |
                                                               GNUTLS_KEY_NON_REPUDIATION),
                        ==, 0);
        g_assert_cmpint(gnutls_x509_crt_set_key_purpose_oid(crt, GNUTLS_KP_EMAIL_PROTECTION, 0),
                        ==, 0);
        g_assert_cmpint(gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_RFC822NAME, email,
                                                             sizeof email - 1, GNUTLS_FSAN_SET),
                        ==, 0);
    }
    cert_set_key_ids(crt, issuer);
    const test_key *signer = issuer ? issuer : k;
    g_assert_cmpint(gnutls_x509_crt_privkey_sign(crt, issuer ? issuer->crt : crt, signer->key,
                                                 GNUTLS_DIG_SHA256, 0),
                    ==, 0);
    g_assert_cmpint(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_DER, &k->der), ==, 0);
    k->crt = crt;
}

static const test_key *get_ca(void)
{
    if (!ca.crt) {
        key_generate(&ca, GNUTLS_PK_ECDSA, GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1));
        cert_make(&ca, "CN=smimestream test CA,O=smimestream tests", 1, NULL);
    }
    return &ca;
}

static const test_key *get_leaf(leaf_kind kind)
{
    static const struct {
        gnutls_pk_algorithm_t pk;
        unsigned bits;
        const char *dn;
    } kinds[LEAF_COUNT] = {
        [LEAF_RSA] = {GNUTLS_PK_RSA, 2048, "CN=Alice RSA,O=smimestream tests"},
        [LEAF_RSA_PSS] = {GNUTLS_PK_RSA_PSS, 2048, "CN=Alice RSA-PSS,O=smimestream tests"},
        [LEAF_P256] = {GNUTLS_PK_ECDSA, GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1),
                       "CN=Alice P-256,O=smimestream tests"},
        [LEAF_P384] = {GNUTLS_PK_ECDSA, GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP384R1),
                       "CN=Alice P-384,O=smimestream tests"},
        [LEAF_ED25519] = {GNUTLS_PK_EDDSA_ED25519, GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_ED25519),
                          "CN=Alice Ed25519,O=smimestream tests"},
    };
    test_key *k = &leaves[kind];
    if (!k->crt) {
        const test_key *issuer = get_ca();
        key_generate(k, kinds[kind].pk, kinds[kind].bits);
        cert_make(k, kinds[kind].dn, (unsigned char)(0x10 + kind), issuer);
    }
    return k;
}

static void test_key_free(test_key *k)
{
    if (k->crt)
        gnutls_x509_crt_deinit(k->crt);
    if (k->key)
        gnutls_privkey_deinit(k->key);
    if (k->xkey)
        gnutls_x509_privkey_deinit(k->xkey);
    gnutls_free(k->der.data);
    memset(k, 0, sizeof *k);
}

/* ---- signing ------------------------------------------------------------- */

static gnutls_digest_algorithm_t gnutls_digest(sms_digest d)
{
    switch (d) {
    case SMS_DIGEST_SHA256: return GNUTLS_DIG_SHA256;
    case SMS_DIGEST_SHA384: return GNUTLS_DIG_SHA384;
    case SMS_DIGEST_SHA512: return GNUTLS_DIG_SHA512;
    case SMS_DIGEST_SHA224: return GNUTLS_DIG_SHA224;
    case SMS_DIGEST_SHA1: return GNUTLS_DIG_SHA1;
    case SMS_DIGEST_MD5: return GNUTLS_DIG_MD5;
    default: g_assert_not_reached();
    }
}

static gnutls_sign_algorithm_t gnutls_sign_algo(sms_sig_scheme scheme, const test_key *k,
                                                gnutls_digest_algorithm_t dig)
{
    switch (scheme) {
    case SMS_SIG_RSA_PKCS1: return gnutls_pk_to_sign(GNUTLS_PK_RSA, dig);
    case SMS_SIG_ECDSA: return gnutls_pk_to_sign(GNUTLS_PK_ECDSA, dig);
    case SMS_SIG_ED25519: return GNUTLS_SIGN_EDDSA_ED25519;
    case SMS_SIG_RSA_PSS:
        /* Same signature bytes; GnuTLS names them by the certificate's key. */
        switch (dig) {
        case GNUTLS_DIG_SHA256:
            return k->pk == GNUTLS_PK_RSA ? GNUTLS_SIGN_RSA_PSS_RSAE_SHA256
                                          : GNUTLS_SIGN_RSA_PSS_SHA256;
        case GNUTLS_DIG_SHA384:
            return k->pk == GNUTLS_PK_RSA ? GNUTLS_SIGN_RSA_PSS_RSAE_SHA384
                                          : GNUTLS_SIGN_RSA_PSS_SHA384;
        case GNUTLS_DIG_SHA512:
            return k->pk == GNUTLS_PK_RSA ? GNUTLS_SIGN_RSA_PSS_RSAE_SHA512
                                          : GNUTLS_SIGN_RSA_PSS_SHA512;
        default: g_assert_not_reached();
        }
    }
    g_assert_not_reached();
}

/* Sign the signed attributes as a signer plugin would: the digest of
 * them, or (Ed25519, pure EdDSA) the bytes themselves. */
static gnutls_datum_t sign_attrs(const test_key *k, sms_sig_scheme scheme, sms_digest d,
                                 const uint8_t *attrs, size_t attrs_len)
{
    gnutls_digest_algorithm_t dig = gnutls_digest(d);
    gnutls_sign_algorithm_t algo = gnutls_sign_algo(scheme, k, dig);
    gnutls_datum_t sig = {NULL, 0};
    if (scheme == SMS_SIG_ED25519) {
        gnutls_datum_t tbs = {(unsigned char *)attrs, (unsigned int)attrs_len};
        g_assert_cmpint(gnutls_privkey_sign_data2(k->key, algo, 0, &tbs, &sig), ==, 0);
        return sig;
    }
    uint8_t md[64];
    g_assert_cmpint(gnutls_hash_fast(dig, attrs, attrs_len, md), ==, 0);
    gnutls_datum_t hash = {md, gnutls_hash_get_len(dig)};
    g_assert_cmpint(gnutls_privkey_sign_hash2(k->key, algo, 0, &hash, &sig), ==, 0);
    return sig;
}

typedef struct signed_msg {
    uint8_t *attrs;
    size_t attrs_len;
    uint8_t *der; /* ContentInfo */
    size_t der_len;
} signed_msg;

/* The whole pipeline, as message.c runs it; certs are leaf then CA. */
static void make_signed(signed_msg *m, leaf_kind kind, sms_sig_scheme scheme, sms_digest d,
                        const void *data, size_t len, time_t when)
{
    const test_key *k = get_leaf(kind);
    gnutls_digest_algorithm_t dig = gnutls_digest(d);
    uint8_t md[64];
    char err[256] = "";
    g_assert_cmpint(gnutls_hash_fast(dig, data, len, md), ==, 0);
    g_assert_cmpint(sms__cms_signed_attrs(d, md, gnutls_hash_get_len(dig), when, &m->attrs,
                                          &m->attrs_len, err, sizeof err),
                    ==, SMS_OK);
    gnutls_datum_t sig = sign_attrs(k, scheme, d, m->attrs, m->attrs_len);
    const uint8_t *certs[] = {k->der.data, get_ca()->der.data};
    const size_t lens[] = {k->der.size, get_ca()->der.size};
    int rc = sms__cms_signed_data(d, scheme, m->attrs, m->attrs_len, sig.data, sig.size, certs,
                                  lens, 2, &m->der, &m->der_len, err, sizeof err);
    if (rc != SMS_OK)
        g_test_message("sms__cms_signed_data: %s", err);
    g_assert_cmpint(rc, ==, SMS_OK);
    g_assert_nonnull(m->der);
    gnutls_free(sig.data);
}

static void signed_msg_free(signed_msg *m)
{
    free(m->attrs);
    free(m->der);
    memset(m, 0, sizeof *m);
}

/* ---- verifiers ------------------------------------------------------------- */

/* GnuTLS: 0 or a GnuTLS error code. */
static int verify_gnutls(const signed_msg *m, const void *data, size_t len)
{
    gnutls_pkcs7_t p7;
    gnutls_x509_trust_list_t tl;
    gnutls_x509_crt_t anchor;
    gnutls_datum_t der = {m->der, (unsigned int)m->der_len};
    gnutls_datum_t ca_der = get_ca()->der;
    gnutls_datum_t detached = {(unsigned char *)data, (unsigned int)len};

    g_assert_cmpint(gnutls_pkcs7_init(&p7), ==, 0);
    g_assert_cmpint(gnutls_pkcs7_import(p7, &der, GNUTLS_X509_FMT_DER), ==, 0);
    g_assert_cmpint(gnutls_x509_trust_list_init(&tl, 0), ==, 0);
    g_assert_cmpint(gnutls_x509_crt_init(&anchor), ==, 0);
    g_assert_cmpint(gnutls_x509_crt_import(anchor, &ca_der, GNUTLS_X509_FMT_DER), ==, 0);
    g_assert_cmpint(gnutls_x509_trust_list_add_cas(tl, &anchor, 1, 0), ==, 1);
    int r = gnutls_pkcs7_verify(p7, tl, NULL, 0, 0, &detached, 0);
    if (r < 0)
        g_test_message("gnutls_pkcs7_verify: %s", gnutls_strerror(r));
    gnutls_x509_trust_list_deinit(tl, 1);
    gnutls_pkcs7_deinit(p7);
    return r;
}

static bool have_openssl(void)
{
    return g_file_test(OPENSSL, G_FILE_TEST_IS_EXECUTABLE);
}

static char *write_tmp(const char *dir, const char *name, const void *data, size_t len)
{
    char *path = g_build_filename(dir, name, NULL);
    GError *error = NULL;
    g_file_set_contents(path, data, (gssize)len, &error);
    g_assert_no_error(error);
    return path;
}

/* `openssl cms -verify` with the default purpose (S/MIME signing), so the
 * test certificates must be ones a mail client would accept.  Returns
 * whether it exited 0. */
static bool verify_openssl(const signed_msg *m, const void *data, size_t len)
{
    GError *error = NULL;
    char *dir = g_dir_make_tmp("sms-test-cms-XXXXXX", &error);
    g_assert_no_error(error);
    gnutls_datum_t pem = {NULL, 0};
    g_assert_cmpint(gnutls_x509_crt_export2(get_ca()->crt, GNUTLS_X509_FMT_PEM, &pem), ==, 0);
    char *sig_path = write_tmp(dir, "sig.der", m->der, m->der_len);
    char *data_path = write_tmp(dir, "data", data, len);
    char *ca_path = write_tmp(dir, "ca.pem", pem.data, pem.size);
    gnutls_free(pem.data);

    char *argv[] = {OPENSSL, "cms", "-verify", "-binary", "-inform", "DER", "-in", sig_path,
                    "-content", data_path, "-CAfile", ca_path, "-out", "/dev/null", NULL};
    char *out = NULL, *errout = NULL;
    int status = -1;
    g_assert_true(g_spawn_sync(NULL, argv, NULL, G_SPAWN_DEFAULT, NULL, NULL, &out, &errout,
                               &status, &error));
    g_assert_no_error(error);
    bool ok = g_spawn_check_wait_status(status, NULL);
    g_test_message("openssl cms -verify: %s%s", ok ? "ok" : "FAILED: ", ok ? "" : errout);

    g_unlink(sig_path);
    g_unlink(data_path);
    g_unlink(ca_path);
    g_rmdir(dir);
    g_free(sig_path);
    g_free(data_path);
    g_free(ca_path);
    g_free(dir);
    g_free(out);
    g_free(errout);
    return ok;
}

/* ---- signed attributes ------------------------------------------------------- */

static bool contains(const uint8_t *hay, size_t hay_len, const void *needle, size_t len)
{
    for (size_t i = 0; len <= hay_len && i <= hay_len - len; i++)
        if (memcmp(hay + i, needle, len) == 0)
            return true;
    return false;
}

static void attrs_for_time(time_t t, uint8_t **der, size_t *len)
{
    uint8_t md[32];
    char err[256] = "";
    memset(md, 0xab, sizeof md);
    int rc = sms__cms_signed_attrs(SMS_DIGEST_SHA256, md, sizeof md, t, der, len, err,
                                   sizeof err);
    g_assert_cmpint(rc, ==, SMS_OK);
}

static void test_attrs_der(void)
{
    uint8_t md[48];
    uint8_t *der = NULL;
    size_t len = 0;
    char err[256] = "";
    for (size_t i = 0; i < sizeof md; i++)
        md[i] = (uint8_t)(i * 7 + 1);

    /* 2024-05-06 07:08:09 UTC */
    g_assert_cmpint(sms__cms_signed_attrs(SMS_DIGEST_SHA384, md, sizeof md, 1714979289, &der,
                                          &len, err, sizeof err),
                    ==, SMS_OK);
    g_assert_nonnull(der);
    g_assert_cmpuint(len, >, 100);
    g_assert_cmphex(der[0], ==, 0x31);

    uint8_t md_der[2 + sizeof md] = {0x04, sizeof md};
    memcpy(md_der + 2, md, sizeof md);
    static const uint8_t content_type[] = {0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7,
                                           0x0d, 0x01, 0x09, 0x03, 0x31, 0x0b, 0x06,
                                           0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d,
                                           0x01, 0x07, 0x01}; /* contentType SET { id-data } */
    static const uint8_t smime_caps_oid[] = {0x06, 0x09, 0x2a, 0x86, 0x48, 0x86,
                                             0xf7, 0x0d, 0x01, 0x09, 0x0f};
    static const uint8_t aes256_cbc[] = {0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48,
                                         0x01, 0x65, 0x03, 0x04, 0x01, 0x2a};
    g_assert_true(contains(der, len, md_der, sizeof md_der));
    g_assert_true(contains(der, len, content_type, sizeof content_type));
    g_assert_true(contains(der, len, "\x17\x0d" "240506070809Z", 15));
    g_assert_true(contains(der, len, smime_caps_oid, sizeof smime_caps_oid));
    g_assert_true(contains(der, len, aes256_cbc, sizeof aes256_cbc));

    /* Deterministic: the same input gives the same bytes. */
    uint8_t *again = NULL;
    size_t again_len = 0;
    g_assert_cmpint(sms__cms_signed_attrs(SMS_DIGEST_SHA384, md, sizeof md, 1714979289, &again,
                                          &again_len, err, sizeof err),
                    ==, SMS_OK);
    g_assert_cmpmem(der, len, again, again_len);
    free(again);
    free(der);
}

static void test_attrs_time(void)
{
    static const struct {
        time_t t;
        const char *der; /* tag, length and text */
    } cases[] = {
        {-631152001, "\x18\x0f" "19491231235959Z"}, /* GeneralizedTime before 1950 */
        {-631152000, "\x17\x0d" "500101000000Z"},
        {0, "\x17\x0d" "700101000000Z"},
        {2524607999, "\x17\x0d" "491231235959Z"},
        {2524608000, "\x18\x0f" "20500101000000Z"}, /* and from 2050 on */
        {253402300799, "\x18\x0f" "99991231235959Z"},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        uint8_t *der = NULL;
        size_t len = 0;
        attrs_for_time(cases[i].t, &der, &len);
        g_assert_true(contains(der, len, cases[i].der, strlen(cases[i].der + 2) + 2));
        free(der);
    }
}

static void test_attrs_errors(void)
{
    uint8_t md[64] = {0};
    uint8_t *der = (uint8_t *)"untouched";
    size_t len = 99;
    char err[256] = "";

    g_assert_cmpint(sms__cms_signed_attrs(SMS_DIGEST_SHA256, md, 31, 0, &der, &len, err,
                                          sizeof err),
                    ==, SMS_ERR_INVALID_ARG);
    g_assert_null(der);
    g_assert_cmpuint(len, ==, 0);
    g_assert_nonnull(strstr(err, "31 bytes"));

    err[0] = 0;
    g_assert_cmpint(sms__cms_signed_attrs(SMS_DIGEST_NONE, md, 32, 0, &der, &len, err,
                                          sizeof err),
                    ==, SMS_ERR_DIGEST);
    g_assert_cmpstr(err, !=, "");
    g_assert_cmpint(sms__cms_signed_attrs(SMS_DIGEST_SHA256, NULL, 32, 0, &der, &len, NULL, 0),
                    ==, SMS_ERR_INVALID_ARG);

    /* Years past 9999 do not fit a GeneralizedTime. */
    const time_t too_late[] = {253402300800, (time_t)1 << 60};
    for (size_t i = 0; i < G_N_ELEMENTS(too_late); i++) {
        err[0] = 0;
        g_assert_cmpint(sms__cms_signed_attrs(SMS_DIGEST_SHA256, md, 32, too_late[i], &der,
                                              &len, err, sizeof err),
                        ==, SMS_ERR_INVALID_ARG);
        g_assert_null(der);
        g_assert_nonnull(strstr(err, "signing time"));
    }
}

/* ---- SignedData verified for real ------------------------------------------ */

typedef struct sig_case {
    const char *path;
    leaf_kind leaf;
    sms_sig_scheme scheme;
    sms_digest digest;
} sig_case;

static const sig_case sig_cases[] = {
    {"/cms/signed-data/rsa-pkcs1/sha256", LEAF_RSA, SMS_SIG_RSA_PKCS1, SMS_DIGEST_SHA256},
    {"/cms/signed-data/rsa-pkcs1/sha384", LEAF_RSA, SMS_SIG_RSA_PKCS1, SMS_DIGEST_SHA384},
    {"/cms/signed-data/rsa-pkcs1/sha512", LEAF_RSA, SMS_SIG_RSA_PKCS1, SMS_DIGEST_SHA512},
    {"/cms/signed-data/rsa-pss/sha256", LEAF_RSA, SMS_SIG_RSA_PSS, SMS_DIGEST_SHA256},
    {"/cms/signed-data/rsa-pss/sha384", LEAF_RSA, SMS_SIG_RSA_PSS, SMS_DIGEST_SHA384},
    {"/cms/signed-data/rsa-pss/sha512", LEAF_RSA, SMS_SIG_RSA_PSS, SMS_DIGEST_SHA512},
    {"/cms/signed-data/rsa-pss-key/sha256", LEAF_RSA_PSS, SMS_SIG_RSA_PSS, SMS_DIGEST_SHA256},
    {"/cms/signed-data/rsa-pss-key/sha384", LEAF_RSA_PSS, SMS_SIG_RSA_PSS, SMS_DIGEST_SHA384},
    {"/cms/signed-data/rsa-pss-key/sha512", LEAF_RSA_PSS, SMS_SIG_RSA_PSS, SMS_DIGEST_SHA512},
    {"/cms/signed-data/ecdsa-p256/sha256", LEAF_P256, SMS_SIG_ECDSA, SMS_DIGEST_SHA256},
    {"/cms/signed-data/ecdsa-p256/sha384", LEAF_P256, SMS_SIG_ECDSA, SMS_DIGEST_SHA384},
    {"/cms/signed-data/ecdsa-p256/sha512", LEAF_P256, SMS_SIG_ECDSA, SMS_DIGEST_SHA512},
    {"/cms/signed-data/ecdsa-p384/sha256", LEAF_P384, SMS_SIG_ECDSA, SMS_DIGEST_SHA256},
    {"/cms/signed-data/ecdsa-p384/sha384", LEAF_P384, SMS_SIG_ECDSA, SMS_DIGEST_SHA384},
    {"/cms/signed-data/ecdsa-p384/sha512", LEAF_P384, SMS_SIG_ECDSA, SMS_DIGEST_SHA512},
    {"/cms/signed-data/ed25519/sha512", LEAF_ED25519, SMS_SIG_ED25519, SMS_DIGEST_SHA512},
};

static void test_signed_data(gconstpointer data)
{
    const sig_case *tc = data;
    signed_msg m = {0};
    make_signed(&m, tc->leaf, tc->scheme, tc->digest, content, sizeof content - 1, time(NULL));
    g_assert_cmphex(m.der[0], ==, 0x30);

    /* The signed attributes are in there verbatim, as [0] IMPLICIT. */
    uint8_t *tagged = g_memdup2(m.attrs, m.attrs_len);
    tagged[0] = 0xa0;
    g_assert_true(contains(m.der, m.der_len, tagged, m.attrs_len));
    g_free(tagged);

    /* GnuTLS (3.7.9, also certtool --p7-verify) ignores RSASSA-PSS-params in
     * a SignerInfo and takes every id-RSASSA-PSS as RSA-PSS-SHA256
     * (gnutls_pkcs7_get_signature_info uses gnutls_oid_to_sign), so it
     * can only check PSS with SHA-256.  OpenSSL and gpgsm read the params. */
    bool gnutls_can = tc->scheme != SMS_SIG_RSA_PSS || tc->digest == SMS_DIGEST_SHA256;
    /* OpenSSL 3.0 cannot verify Ed25519 CMS signatures (nor can gpgsm 2.2);
     * GnuTLS is the check for those. */
    bool openssl_can = tc->scheme != SMS_SIG_ED25519 && have_openssl();
    if (gnutls_can)
        g_assert_cmpint(verify_gnutls(&m, content, sizeof content - 1), ==, 0);
    if (openssl_can)
        g_assert_true(verify_openssl(&m, content, sizeof content - 1));
    if (!gnutls_can && !openssl_can)
        g_test_skip("GnuTLS cannot verify RSA-PSS with this digest and there is no " OPENSSL);
    signed_msg_free(&m);
}

/* A changed content byte or signature byte must fail both verifiers: this
 * is what shows that the checks above can fail at all. */
static void test_tampered(void)
{
    static const leaf_kind kinds[] = {LEAF_RSA, LEAF_P256};
    static const sms_sig_scheme schemes[] = {SMS_SIG_RSA_PKCS1, SMS_SIG_ECDSA};
    for (size_t i = 0; i < G_N_ELEMENTS(kinds); i++) {
        signed_msg m = {0};
        char *tampered = g_strdup(content);
        tampered[strlen(tampered) - 4] ^= 0x01;
        make_signed(&m, kinds[i], schemes[i], SMS_DIGEST_SHA256, content, sizeof content - 1,
                    time(NULL));
        g_assert_cmpint(verify_gnutls(&m, content, sizeof content - 1), ==, 0);
        g_assert_cmpint(verify_gnutls(&m, tampered, sizeof content - 1), <, 0);
        if (have_openssl())
            g_assert_false(verify_openssl(&m, tampered, sizeof content - 1));

        /* The signature is the last thing in the DER; break its last byte. */
        m.der[m.der_len - 1] ^= 0x01;
        g_assert_cmpint(verify_gnutls(&m, content, sizeof content - 1), <, 0);
        if (have_openssl())
            g_assert_false(verify_openssl(&m, content, sizeof content - 1));
        g_free(tampered);
        signed_msg_free(&m);
    }
}

/* What GnuTLS reads back: signer id, algorithms, time, certificates. */
static void test_structure(void)
{
    signed_msg m = {0};
    const time_t when = 1714979289;
    const test_key *k = get_leaf(LEAF_RSA);
    make_signed(&m, LEAF_RSA, SMS_SIG_RSA_PSS, SMS_DIGEST_SHA256, content, sizeof content - 1,
                when);

    gnutls_pkcs7_t p7;
    gnutls_datum_t der = {m.der, (unsigned int)m.der_len};
    g_assert_cmpint(gnutls_pkcs7_init(&p7), ==, 0);
    g_assert_cmpint(gnutls_pkcs7_import(p7, &der, GNUTLS_X509_FMT_DER), ==, 0);
    g_assert_cmpint(gnutls_pkcs7_get_crt_count(p7), ==, 2);
    g_assert_cmpint(gnutls_pkcs7_get_signature_count(p7), ==, 1);
    g_assert_cmpstr(gnutls_pkcs7_get_embedded_data_oid(p7), ==, "1.2.840.113549.1.7.1");
    gnutls_datum_t embedded = {NULL, 0};
    g_assert_cmpint(gnutls_pkcs7_get_embedded_data(p7, 0, &embedded), <, 0); /* detached */

    gnutls_pkcs7_signature_info_st info;
    g_assert_cmpint(gnutls_pkcs7_get_signature_info(p7, 0, &info), ==, 0);
    g_assert_cmpint(info.algo, ==, GNUTLS_SIGN_RSA_PSS_SHA256);
    g_assert_cmpint((long long)info.signing_time, ==, (long long)when);
    gnutls_datum_t issuer = {NULL, 0};
    uint8_t serial[64];
    size_t serial_len = sizeof serial;
    g_assert_cmpint(gnutls_x509_crt_get_raw_issuer_dn(k->crt, &issuer), ==, 0);
    g_assert_cmpint(gnutls_x509_crt_get_serial(k->crt, serial, &serial_len), ==, 0);
    g_assert_cmpmem(info.issuer_dn.data, info.issuer_dn.size, issuer.data, issuer.size);
    g_assert_cmpmem(info.signer_serial.data, info.signer_serial.size, serial, serial_len);
    g_assert_cmphex(serial[0], ==, 0x00); /* top bit set: the leading zero is kept */
    gnutls_free(issuer.data);
    gnutls_pkcs7_signature_info_deinit(&info);
    gnutls_pkcs7_deinit(p7);
    signed_msg_free(&m);
}

/* The exact AlgorithmIdentifiers we promise (see cms.c). */
static void test_algorithm_ids(void)
{
    /* digestAlgorithm sha256 without parameters (RFC 5754). */
    static const uint8_t sha256_absent[] = {0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48,
                                            0x01, 0x65, 0x03, 0x04, 0x02, 0x01};
    static const uint8_t sha256_null[] = {0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                          0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00};
    /* rsaEncryption with NULL parameters. */
    static const uint8_t rsa_encryption[] = {0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86,
                                             0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00};
    /* id-RSASSA-PSS { sha256, mgf1(sha256), salt 32 }. */
    static const uint8_t pss_sha256[] = {
        0x30, 0x41, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, 0x30,
        0x34, 0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04,
        0x02, 0x01, 0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86,
        0xf7, 0x0d, 0x01, 0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65,
        0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0xa2, 0x03, 0x02, 0x01, 0x20};
    /* ecdsa-with-SHA384 without parameters. */
    static const uint8_t ecdsa_sha384[] = {0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48,
                                           0xce, 0x3d, 0x04, 0x03, 0x03};
    /* id-Ed25519 without parameters, next to id-sha512. */
    static const uint8_t ed25519[] = {0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70};
    static const uint8_t sha512_absent[] = {0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48,
                                            0x01, 0x65, 0x03, 0x04, 0x02, 0x03};
    signed_msg m = {0};

    make_signed(&m, LEAF_RSA, SMS_SIG_RSA_PKCS1, SMS_DIGEST_SHA256, "x", 1, 0);
    g_assert_true(contains(m.der, m.der_len, sha256_absent, sizeof sha256_absent));
    g_assert_false(contains(m.der, m.der_len, sha256_null, sizeof sha256_null));
    g_assert_true(contains(m.der, m.der_len, rsa_encryption, sizeof rsa_encryption));
    signed_msg_free(&m);

    make_signed(&m, LEAF_RSA, SMS_SIG_RSA_PSS, SMS_DIGEST_SHA256, "x", 1, 0);
    g_assert_true(contains(m.der, m.der_len, pss_sha256, sizeof pss_sha256));
    signed_msg_free(&m);

    make_signed(&m, LEAF_P256, SMS_SIG_ECDSA, SMS_DIGEST_SHA384, "x", 1, 0);
    g_assert_true(contains(m.der, m.der_len, ecdsa_sha384, sizeof ecdsa_sha384));
    signed_msg_free(&m);

    make_signed(&m, LEAF_ED25519, SMS_SIG_ED25519, SMS_DIGEST_SHA512, "x", 1, 0);
    g_assert_true(contains(m.der, m.der_len, ed25519, sizeof ed25519));
    g_assert_true(contains(m.der, m.der_len, sha512_absent, sizeof sha512_absent));
    signed_msg_free(&m);
}

/* ---- errors -------------------------------------------------------------------- */

typedef struct err_inputs {
    uint8_t *attrs;
    size_t attrs_len;
    uint8_t sig[64];
    const uint8_t *certs[2];
    size_t lens[2];
} err_inputs;

static void err_inputs_init(err_inputs *in, leaf_kind kind)
{
    attrs_for_time(0, &in->attrs, &in->attrs_len);
    memset(in->sig, 0x5a, sizeof in->sig);
    in->certs[0] = get_leaf(kind)->der.data;
    in->lens[0] = get_leaf(kind)->der.size;
    in->certs[1] = get_ca()->der.data;
    in->lens[1] = get_ca()->der.size;
}

/* Run sms__cms_signed_data and check the code, that nothing is returned
 * and that there is a message. */
static void expect_error(sms_digest d, sms_sig_scheme scheme, const err_inputs *in,
                         size_t n_certs, int want, const char *want_in_message)
{
    uint8_t *der = (uint8_t *)"untouched";
    size_t len = 99;
    char err[256] = "";
    int rc = sms__cms_signed_data(d, scheme, in->attrs, in->attrs_len, in->sig, sizeof in->sig,
                                  in->certs, in->lens, n_certs, &der, &len, err, sizeof err);
    g_test_message("expected error %d: %s", want, err);
    g_assert_cmpint(rc, ==, want);
    g_assert_null(der);
    g_assert_cmpuint(len, ==, 0);
    g_assert_cmpstr(err, !=, "");
    if (want_in_message)
        g_assert_nonnull(strstr(err, want_in_message));
}

static void test_bad_cert(void)
{
    err_inputs in;
    err_inputs_init(&in, LEAF_RSA);
    const test_key *leaf = get_leaf(LEAF_RSA);

    static const uint8_t garbage[] = "this is not a certificate";
    in.certs[0] = garbage;
    in.lens[0] = sizeof garbage;
    expect_error(SMS_DIGEST_SHA256, SMS_SIG_RSA_PKCS1, &in, 2, SMS_ERR_BAD_DATA, "certificate");

    /* A well-formed SEQUENCE that is no certificate. */
    static const uint8_t not_cert[] = {0x30, 0x03, 0x02, 0x01, 0x01};
    in.certs[0] = not_cert;
    in.lens[0] = sizeof not_cert;
    expect_error(SMS_DIGEST_SHA256, SMS_SIG_RSA_PKCS1, &in, 2, SMS_ERR_BAD_DATA,
                 "X.509 certificate");

    /* Truncated, and with a trailing byte: both would corrupt the output. */
    in.certs[0] = leaf->der.data;
    in.lens[0] = leaf->der.size - 1;
    expect_error(SMS_DIGEST_SHA256, SMS_SIG_RSA_PKCS1, &in, 2, SMS_ERR_BAD_DATA, NULL);
    uint8_t *longer = g_malloc(leaf->der.size + 1);
    memcpy(longer, leaf->der.data, leaf->der.size);
    longer[leaf->der.size] = 0;
    in.certs[0] = longer;
    in.lens[0] = leaf->der.size + 1;
    expect_error(SMS_DIGEST_SHA256, SMS_SIG_RSA_PKCS1, &in, 2, SMS_ERR_BAD_DATA, NULL);
    g_free(longer);

    /* A bad chain certificate is caught too. */
    in.certs[0] = leaf->der.data;
    in.lens[0] = leaf->der.size;
    in.certs[1] = not_cert;
    in.lens[1] = sizeof not_cert;
    expect_error(SMS_DIGEST_SHA256, SMS_SIG_RSA_PKCS1, &in, 2, SMS_ERR_BAD_DATA,
                 "chain certificate");
    free(in.attrs);
}

static void test_unsupported(void)
{
    err_inputs in;
    err_inputs_init(&in, LEAF_ED25519);
    expect_error(SMS_DIGEST_SHA256, SMS_SIG_ED25519, &in, 2, SMS_ERR_UNSUPPORTED, "SHA-512");
    expect_error(SMS_DIGEST_MD5, SMS_SIG_ECDSA, &in, 2, SMS_ERR_UNSUPPORTED, NULL);
    expect_error(SMS_DIGEST_SHA1, SMS_SIG_RSA_PSS, &in, 2, SMS_ERR_UNSUPPORTED, NULL);
    expect_error(SMS_DIGEST_SHA256, (sms_sig_scheme)99, &in, 2, SMS_ERR_UNSUPPORTED, NULL);
    expect_error(SMS_DIGEST_NONE, SMS_SIG_RSA_PKCS1, &in, 2, SMS_ERR_DIGEST, NULL);
    free(in.attrs);
}

static void test_key_mismatch(void)
{
    err_inputs in;
    err_inputs_init(&in, LEAF_RSA);
    expect_error(SMS_DIGEST_SHA256, SMS_SIG_ECDSA, &in, 2, SMS_ERR_KEY_MISMATCH, "RSA");
    expect_error(SMS_DIGEST_SHA512, SMS_SIG_ED25519, &in, 2, SMS_ERR_KEY_MISMATCH, NULL);
    free(in.attrs);
    /* An RSASSA-PSS key must not make PKCS#1 v1.5 signatures (RFC 4055 1.2). */
    err_inputs_init(&in, LEAF_RSA_PSS);
    expect_error(SMS_DIGEST_SHA256, SMS_SIG_RSA_PKCS1, &in, 2, SMS_ERR_KEY_MISMATCH, NULL);
    free(in.attrs);
}

static void test_bad_args(void)
{
    err_inputs in;
    err_inputs_init(&in, LEAF_RSA);
    uint8_t *good = in.attrs;
    size_t good_len = in.attrs_len;

    expect_error(SMS_DIGEST_SHA256, SMS_SIG_RSA_PKCS1, &in, 0, SMS_ERR_INVALID_ARG, NULL);

    /* The [0] form instead of the SET OF. */
    uint8_t *a0 = g_memdup2(good, good_len);
    a0[0] = 0xa0;
    in.attrs = a0;
    expect_error(SMS_DIGEST_SHA256, SMS_SIG_RSA_PKCS1, &in, 2, SMS_ERR_INVALID_ARG, "0x31");
    g_free(a0);

    /* A SET OF that holds no Attributes. */
    static uint8_t not_attrs[] = {0x31, 0x03, 0x02, 0x01, 0x01};
    in.attrs = not_attrs;
    in.attrs_len = sizeof not_attrs;
    expect_error(SMS_DIGEST_SHA256, SMS_SIG_RSA_PKCS1, &in, 2, SMS_ERR_BAD_DATA, NULL);

    /* Two attributes out of DER order: re-encoding would sort them and the
     * signature would no longer match, so this must be refused. */
    static uint8_t unsorted[] = {0x31, 0x18,
                                 0x30, 0x0a, 0x06, 0x03, 0x2a, 0x03, 0x05, 0x31, 0x03, 0x02,
                                 0x01, 0x01,
                                 0x30, 0x0a, 0x06, 0x03, 0x2a, 0x03, 0x04, 0x31, 0x03, 0x02,
                                 0x01, 0x01};
    in.attrs = unsorted;
    in.attrs_len = sizeof unsorted;
    expect_error(SMS_DIGEST_SHA256, SMS_SIG_RSA_PKCS1, &in, 2, SMS_ERR_BAD_DATA, "DER");
    free(good);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/cms/signed-attrs/der", test_attrs_der);
    g_test_add_func("/cms/signed-attrs/time", test_attrs_time);
    g_test_add_func("/cms/signed-attrs/errors", test_attrs_errors);
    for (size_t i = 0; i < G_N_ELEMENTS(sig_cases); i++)
        g_test_add_data_func(sig_cases[i].path, &sig_cases[i], test_signed_data);
    g_test_add_func("/cms/signed-data/tampered", test_tampered);
    g_test_add_func("/cms/signed-data/structure", test_structure);
    g_test_add_func("/cms/signed-data/algorithm-ids", test_algorithm_ids);
    g_test_add_func("/cms/signed-data/bad-cert", test_bad_cert);
    g_test_add_func("/cms/signed-data/unsupported", test_unsupported);
    g_test_add_func("/cms/signed-data/key-mismatch", test_key_mismatch);
    g_test_add_func("/cms/signed-data/bad-args", test_bad_args);
    int rc = g_test_run();
    for (size_t i = 0; i < LEAF_COUNT; i++)
        test_key_free(&leaves[i]);
    test_key_free(&ca);
    return rc;
}
