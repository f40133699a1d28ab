/* smimestream: CMS SignedData (RFC 5652) for detached S/MIME signatures.
 *
 * gnutls_pkcs7_sign() always hashes its input itself, but our signers get
 * only the digest of the signed attributes (they may live on a token or in
 * another process), so the structures are built here with libtasn1 from
 * the small module in cms.asn.
 *
 * Every helper takes a cms_ctx and does nothing once an error is recorded
 * in it, so the builders read as straight lists of fields and the first
 * (most specific) error is the one reported. */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <libtasn1.h>

#include "sms-private.h"

/* Generated from cms.asn by asn1Parser (cms-asn1-tab.c). */
extern const asn1_static_node sms__cms_asn1_tab[];

#define OID_DATA "1.2.840.113549.1.7.1"
#define OID_SIGNED_DATA "1.2.840.113549.1.7.2"
#define OID_CONTENT_TYPE "1.2.840.113549.1.9.3"
#define OID_MESSAGE_DIGEST "1.2.840.113549.1.9.4"
#define OID_SIGNING_TIME "1.2.840.113549.1.9.5"
#define OID_SMIME_CAPABILITIES "1.2.840.113549.1.9.15"
#define OID_RSA_ENCRYPTION "1.2.840.113549.1.1.1"
#define OID_RSASSA_PSS "1.2.840.113549.1.1.10"
#define OID_MGF1 "1.2.840.113549.1.1.8"
#define OID_ED25519 "1.3.101.112"

/* Sizes passed to libtasn1 are ints; these keep every sum far below
 * INT_MAX and stop nonsense early. */
#define CMS_MAX_CERTS 64
#define CMS_MAX_CERT_LEN (1u << 20)
#define CMS_MAX_ATTRS_LEN (1u << 16)
#define CMS_MAX_SERIAL 64

static const uint8_t der_null[] = {0x05, 0x00};

typedef struct cms_hash {
    sms_digest digest;
    const char *name;
    const char *oid;
    size_t len;
    bool null_params;     /* MD5 needs NULL parameters (RFC 3370 2.2); the
                             others are written without (RFC 5754 2, RFC 3370 2.1) */
    bool pss;             /* allowed with RSASSA-PSS */
    const char *ecdsa_oid; /* ecdsa-with-<hash>, NULL if none */
} cms_hash;

static const cms_hash cms_hashes[] = {
    {SMS_DIGEST_SHA256, "SHA-256", "2.16.840.1.101.3.4.2.1", 32, false, true,
     "1.2.840.10045.4.3.2"},
    {SMS_DIGEST_SHA384, "SHA-384", "2.16.840.1.101.3.4.2.2", 48, false, true,
     "1.2.840.10045.4.3.3"},
    {SMS_DIGEST_SHA512, "SHA-512", "2.16.840.1.101.3.4.2.3", 64, false, true,
     "1.2.840.10045.4.3.4"},
    {SMS_DIGEST_SHA224, "SHA-224", "2.16.840.1.101.3.4.2.4", 28, false, true,
     "1.2.840.10045.4.3.1"},
    {SMS_DIGEST_SHA1, "SHA-1", "1.3.14.3.2.26", 20, false, false, "1.2.840.10045.4.1"},
    {SMS_DIGEST_MD5, "MD5", "1.2.840.113549.2.5", 16, true, false, NULL},
};

/* What we advertise in smimeCapabilities (RFC 8551 2.5.2), most preferred
 * first.  We only sign, so we cannot know what the sender's mail client
 * decrypts: AES-CBC is what every S/MIME client does (RFC 8551 2.7).  AES
 * capabilities have absent parameters (RFC 3565 4). */
static const char *const cms_capabilities[] = {
    "2.16.840.1.101.3.4.1.42", /* aes256-CBC */
    "2.16.840.1.101.3.4.1.2",  /* aes128-CBC */
    "2.16.840.1.101.3.4.2.3",  /* sha512 */
    "2.16.840.1.101.3.4.2.2",  /* sha384 */
    "2.16.840.1.101.3.4.2.1",  /* sha256 */
};

static const cms_hash *cms_hash_find(sms_digest d)
{
    for (size_t i = 0; i < sizeof cms_hashes / sizeof cms_hashes[0]; i++)
        if (cms_hashes[i].digest == d)
            return &cms_hashes[i];
    return NULL;
}

static const char *cms_scheme_name(sms_sig_scheme scheme)
{
    switch (scheme) {
    case SMS_SIG_RSA_PKCS1: return "RSA PKCS#1 v1.5";
    case SMS_SIG_RSA_PSS: return "RSA-PSS";
    case SMS_SIG_ECDSA: return "ECDSA";
    case SMS_SIG_ED25519: return "Ed25519";
    }
    return "unknown";
}

/* ---- builder context ---------------------------------------------------- */

typedef struct cms_ctx {
    asn1_node defs; /* the parsed cms.asn */
    int rc;         /* first error, SMS_OK while none */
    char *err;
    size_t err_size;
} cms_ctx;

static void cms_fail(cms_ctx *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void cms_fail(cms_ctx *c, int code, const char *fmt, ...)
{
    if (c->rc != SMS_OK)
        return;
    c->rc = code;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    sms__set_err(c->err, c->err_size, "%s", msg);
}

static void cms_asn1_fail(cms_ctx *c, int r, const char *what, const char *name,
                          const char *desc)
{
    bool has_desc = desc && desc[0];
    cms_fail(c, r == ASN1_MEM_ALLOC_ERROR ? SMS_ERR_NOMEM : SMS_ERR_CRYPTO,
             "building the CMS signature: libtasn1 failed %s '%s': %s%s%s", what, name,
             asn1_strerror(r), has_desc ? ": " : "", has_desc ? desc : "");
}

static void cms_init(cms_ctx *c, char *err, size_t err_size)
{
    c->defs = NULL;
    c->rc = SMS_OK;
    c->err = err;
    c->err_size = err_size;
    /* Parsed per call: it is cheap and happens once per message, and it
     * spares us global state and its locking. */
    char desc[ASN1_MAX_ERROR_DESCRIPTION_SIZE] = "";
    int r = asn1_array2tree(sms__cms_asn1_tab, &c->defs, desc);
    if (r != ASN1_SUCCESS)
        cms_asn1_fail(c, r, "loading", "cms.asn", desc);
}

static void cms_free_node(asn1_node *node)
{
    if (*node)
        asn1_delete_structure(node);
}

static void cms_done(cms_ctx *c)
{
    cms_free_node(&c->defs);
}

static asn1_node cms_new(cms_ctx *c, const char *type)
{
    if (c->rc != SMS_OK)
        return NULL;
    char name[64];
    snprintf(name, sizeof name, "SMS-CMS.%s", type);
    asn1_node node = NULL;
    int r = asn1_create_element(c->defs, name, &node);
    if (r != ASN1_SUCCESS)
        cms_asn1_fail(c, r, "creating", name, NULL);
    return node;
}

/* Raw write: bytes for OCTET STRING, big-endian two's complement for
 * INTEGER, DER for ANY; NULL deletes an OPTIONAL field. */
static void cms_write(cms_ctx *c, asn1_node node, const char *name, const void *value,
                      size_t len)
{
    if (c->rc != SMS_OK)
        return;
    int r = asn1_write_value(node, name, value, (int)len);
    if (r != ASN1_SUCCESS)
        cms_asn1_fail(c, r, "writing", name, NULL);
}

/* Dotted OIDs, CHOICE alternatives, "NEW" for SET OF, time strings. */
static void cms_str(cms_ctx *c, asn1_node node, const char *name, const char *value)
{
    cms_write(c, node, name, value, strlen(value));
}

static void cms_int(cms_ctx *c, asn1_node node, const char *name, unsigned long v)
{
    char dec[24];
    snprintf(dec, sizeof dec, "%lu", v);
    cms_write(c, node, name, dec, 0); /* length 0: a decimal string */
}

/* The DER of field name of node ("" for all of it), malloc'ed. */
static uint8_t *cms_der(cms_ctx *c, asn1_node node, const char *name, size_t *ret_len)
{
    if (c->rc != SMS_OK)
        return NULL;
    char desc[ASN1_MAX_ERROR_DESCRIPTION_SIZE] = "";
    int len = 0;
    int r = asn1_der_coding(node, name, NULL, &len, desc);
    if (r != ASN1_MEM_ERROR) { /* the size query always "fails" this way */
        cms_asn1_fail(c, r == ASN1_SUCCESS ? ASN1_GENERIC_ERROR : r, "encoding", name, desc);
        return NULL;
    }
    uint8_t *der = malloc(len > 0 ? (size_t)len : 1);
    if (!der) {
        cms_fail(c, SMS_ERR_NOMEM, "building the CMS signature: out of memory");
        return NULL;
    }
    r = asn1_der_coding(node, name, der, &len, desc);
    if (r != ASN1_SUCCESS) {
        free(der);
        cms_asn1_fail(c, r, "encoding", name, desc);
        return NULL;
    }
    *ret_len = (size_t)len;
    return der;
}

/* Is der exactly one DER element with the given tag and nothing after it? */
static bool cms_one_element(const uint8_t *der, size_t len, uint8_t tag)
{
    if (len < 2 || der[0] != tag || len > (size_t)INT32_MAX)
        return false;
    int len_len = 0;
    long body = asn1_get_length_der(der + 1, (int)(len - 1), &len_len);
    return body >= 0 && (size_t)body == len - 1 - (size_t)len_len;
}

/* ---- small values --------------------------------------------------------- */

/* The DER of one of the single-field types of cms.asn. */
static uint8_t *cms_encode_value(cms_ctx *c, const char *type, const void *value, size_t len,
                                 size_t *ret_len)
{
    asn1_node n = cms_new(c, type);
    cms_write(c, n, "", value, len);
    uint8_t *der = cms_der(c, n, "", ret_len);
    cms_free_node(&n);
    return der;
}

/* "prefix.leaf", or "leaf" when prefix is empty (a root node). */
static const char *cms_field(char *buf, size_t size, const char *prefix, const char *leaf)
{
    snprintf(buf, size, "%s%s%s", prefix, prefix[0] ? "." : "", leaf);
    return buf;
}

/* AlgorithmIdentifier at prefix; params is DER or NULL for absent. */
static void cms_alg_id(cms_ctx *c, asn1_node n, const char *prefix, const char *oid,
                       const uint8_t *params, size_t params_len)
{
    char name[128];
    cms_str(c, n, cms_field(name, sizeof name, prefix, "algorithm"), oid);
    cms_write(c, n, cms_field(name, sizeof name, prefix, "parameters"), params, params_len);
}

static void cms_digest_alg_id(cms_ctx *c, asn1_node n, const char *prefix, const cms_hash *h)
{
    if (h->null_params)
        cms_alg_id(c, n, prefix, h->oid, der_null, sizeof der_null);
    else
        cms_alg_id(c, n, prefix, h->oid, NULL, 0);
}

/* signingTime: UTCTime for 1950-2049, GeneralizedTime otherwise (RFC 5652
 * 11.3); always UTC with seconds and "Z", as DER wants. */
static uint8_t *cms_encode_time(cms_ctx *c, time_t t, size_t *ret_len)
{
    struct tm tm;
    if (c->rc != SMS_OK)
        return NULL;
    if (!gmtime_r(&t, &tm) || tm.tm_year < -1900 || tm.tm_year > 9999 - 1900) {
        cms_fail(c, SMS_ERR_INVALID_ARG, "the signing time %lld is out of range",
                 (long long)t);
        return NULL;
    }
    int year = tm.tm_year + 1900;
    bool utc = year >= 1950 && year <= 2049;
    char s[80];
    snprintf(s, sizeof s, "%0*d%02d%02d%02d%02d%02dZ", utc ? 2 : 4, utc ? year % 100 : year,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    const char *choice = utc ? "utcTime" : "generalTime";
    asn1_node n = cms_new(c, "Time");
    cms_str(c, n, "", choice);
    cms_str(c, n, choice, s);
    uint8_t *der = cms_der(c, n, "", ret_len);
    cms_free_node(&n);
    return der;
}

static uint8_t *cms_encode_capabilities(cms_ctx *c, size_t *ret_len)
{
    asn1_node n = cms_new(c, "SMIMECapabilities");
    for (size_t i = 0; i < sizeof cms_capabilities / sizeof cms_capabilities[0]; i++) {
        cms_str(c, n, "", "NEW");
        cms_str(c, n, "?LAST.capabilityID", cms_capabilities[i]);
        cms_write(c, n, "?LAST.parameters", NULL, 0);
    }
    uint8_t *der = cms_der(c, n, "", ret_len);
    cms_free_node(&n);
    return der;
}

/* RSASSA-PSS-params with hash h, MGF1 with h, salt = hash length (what
 * sms_sig_scheme promises).  The hash AlgorithmIdentifiers carry NULL
 * parameters, as in RFC 4055's sha256Identifier and as OpenSSL writes. */
static uint8_t *cms_encode_pss_params(cms_ctx *c, const cms_hash *h, size_t *ret_len)
{
    size_t mgf_len = 0;
    asn1_node hash_id = cms_new(c, "AlgorithmIdentifier");
    cms_alg_id(c, hash_id, "", h->oid, der_null, sizeof der_null);
    uint8_t *mgf_params = cms_der(c, hash_id, "", &mgf_len);
    cms_free_node(&hash_id);

    asn1_node n = cms_new(c, "RSASSA-PSS-params");
    cms_alg_id(c, n, "hashAlgorithm", h->oid, der_null, sizeof der_null);
    cms_alg_id(c, n, "maskGenAlgorithm", OID_MGF1, mgf_params, mgf_len);
    cms_int(c, n, "saltLength", (unsigned long)h->len);
    cms_write(c, n, "trailerField", NULL, 0); /* DEFAULT 1: left out in DER */
    uint8_t *der = cms_der(c, n, "", ret_len);
    cms_free_node(&n);
    free(mgf_params);
    return der;
}

/* ---- signed attributes ---------------------------------------------------- */

/* Append an Attribute with one value; takes ownership of value (DER). */
static void cms_add_attr(cms_ctx *c, asn1_node attrs, const char *oid, uint8_t *value,
                         size_t len)
{
    cms_str(c, attrs, "", "NEW");
    cms_str(c, attrs, "?LAST.attrType", oid);
    cms_str(c, attrs, "?LAST.attrValues", "NEW");
    cms_write(c, attrs, "?LAST.attrValues.?LAST", value, len);
    free(value);
}

int sms__cms_signed_attrs(sms_digest digest, const uint8_t *content_digest, size_t digest_len,
                          time_t signing_time, uint8_t **ret_der, size_t *ret_len, char *err,
                          size_t err_size)
{
    if (!content_digest || !ret_der || !ret_len) {
        sms__set_err(err, err_size, "sms__cms_signed_attrs: NULL argument");
        return SMS_ERR_INVALID_ARG;
    }
    *ret_der = NULL;
    *ret_len = 0;
    const cms_hash *h = cms_hash_find(digest);
    if (!h) {
        sms__set_err(err, err_size, "unknown digest algorithm %d for the CMS signature",
                     (int)digest);
        return SMS_ERR_DIGEST;
    }
    if (digest_len != h->len) {
        sms__set_err(err, err_size, "the content digest is %zu bytes, expected %zu",
                     digest_len, h->len);
        return SMS_ERR_INVALID_ARG;
    }

    cms_ctx c;
    cms_init(&c, err, err_size);
    asn1_node attrs = cms_new(&c, "SignedAttributes");
    size_t len = 0;
    uint8_t *v = cms_encode_value(&c, "ContentType", OID_DATA, strlen(OID_DATA), &len);
    cms_add_attr(&c, attrs, OID_CONTENT_TYPE, v, len);
    v = cms_encode_time(&c, signing_time, &len);
    cms_add_attr(&c, attrs, OID_SIGNING_TIME, v, len);
    v = cms_encode_value(&c, "MessageDigest", content_digest, digest_len, &len);
    cms_add_attr(&c, attrs, OID_MESSAGE_DIGEST, v, len);
    v = cms_encode_capabilities(&c, &len);
    cms_add_attr(&c, attrs, OID_SMIME_CAPABILITIES, v, len);
    /* A SET OF on its own encodes with tag 0x31, the form that is signed;
     * libtasn1 sorts the elements into DER order. */
    uint8_t *der = cms_der(&c, attrs, "", ret_len);
    cms_free_node(&attrs);
    cms_done(&c);
    if (c.rc == SMS_OK)
        *ret_der = der;
    return c.rc;
}

/* ---- SignedData ------------------------------------------------------------ */

/* What SignerInfo needs from the signer's certificate. */
typedef struct cms_signer_id {
    gnutls_datum_t issuer; /* DER Name; gnutls_free */
    uint8_t serial[CMS_MAX_SERIAL];
    size_t serial_len;
    int pk; /* gnutls_pk_algorithm_t */
} cms_signer_id;

static void cms_read_signer_id(cms_ctx *c, gnutls_x509_crt_t crt, cms_signer_id *id)
{
    int r = gnutls_x509_crt_get_raw_issuer_dn(crt, &id->issuer);
    if (r < 0) {
        cms_fail(c, SMS_ERR_BAD_DATA, "cannot read the issuer of the signer's certificate: %s",
                 gnutls_strerror(r));
        return;
    }
    id->serial_len = sizeof id->serial;
    r = gnutls_x509_crt_get_serial(crt, id->serial, &id->serial_len);
    if (r < 0 || id->serial_len == 0) {
        cms_fail(c, SMS_ERR_BAD_DATA,
                 "cannot read the serial number of the signer's certificate: %s",
                 r < 0 ? gnutls_strerror(r) : "empty");
        return;
    }
    id->pk = gnutls_x509_crt_get_pk_algorithm(crt, NULL);
}

/* Check that every certificate is one well-formed X.509 certificate (they
 * are copied verbatim into the output) and read the leaf's identifiers. */
static void cms_parse_certs(cms_ctx *c, const uint8_t *const *certs, const size_t *cert_lens,
                            size_t n_certs, cms_signer_id *id)
{
    for (size_t i = 0; i < n_certs && c->rc == SMS_OK; i++) {
        const char *which = i == 0 ? "the signer's certificate" : "a chain certificate";
        gnutls_x509_crt_t crt = NULL;
        gnutls_datum_t d = {(unsigned char *)certs[i], (unsigned int)cert_lens[i]};
        int r = gnutls_x509_crt_init(&crt);
        if (r < 0) {
            cms_fail(c, SMS_ERR_NOMEM, "gnutls_x509_crt_init: %s", gnutls_strerror(r));
            return;
        }
        if (!cms_one_element(certs[i], cert_lens[i], 0x30))
            cms_fail(c, SMS_ERR_BAD_DATA,
                     "%s (number %zu, %zu bytes) is not a single DER element", which, i,
                     cert_lens[i]);
        else if ((r = gnutls_x509_crt_import(crt, &d, GNUTLS_X509_FMT_DER)) < 0)
            cms_fail(c, SMS_ERR_BAD_DATA,
                     "%s (number %zu) is not a valid DER X.509 certificate: %s", which, i,
                     gnutls_strerror(r));
        else if (i == 0)
            cms_read_signer_id(c, crt, id);
        gnutls_x509_crt_deinit(crt);
    }
}

/* Can a key of type pk make signatures of this scheme?  Catching a
 * mismatch here beats sending a message nobody can verify. */
static void cms_check_key(cms_ctx *c, sms_sig_scheme scheme, int pk)
{
    bool ok = false;
    switch (scheme) {
    case SMS_SIG_RSA_PKCS1: ok = pk == GNUTLS_PK_RSA; break;
    case SMS_SIG_RSA_PSS: ok = pk == GNUTLS_PK_RSA || pk == GNUTLS_PK_RSA_PSS; break;
    case SMS_SIG_ECDSA: ok = pk == GNUTLS_PK_ECDSA; break;
    case SMS_SIG_ED25519: ok = pk == GNUTLS_PK_EDDSA_ED25519; break;
    }
    if (!ok) {
        const char *name = pk > 0 ? gnutls_pk_get_name((gnutls_pk_algorithm_t)pk) : NULL;
        cms_fail(c, SMS_ERR_KEY_MISMATCH,
                 "the signer's certificate has a %s key, which cannot make %s signatures",
                 name ? name : "unknown", cms_scheme_name(scheme));
    }
}

/* Is this scheme/digest pair one we can name in a SignerInfo? */
static int cms_check_scheme(sms_sig_scheme scheme, const cms_hash *h, char *err,
                            size_t err_size)
{
    bool ok = false;
    const char *why = "";
    switch (scheme) {
    case SMS_SIG_RSA_PKCS1: ok = true; break;
    case SMS_SIG_RSA_PSS: ok = h->pss; why = " (RSA-PSS is done with SHA-2 only)"; break;
    case SMS_SIG_ECDSA: ok = h->ecdsa_oid != NULL; why = " (no such ECDSA algorithm)"; break;
    case SMS_SIG_ED25519:
        ok = h->digest == SMS_DIGEST_SHA512;
        why = " (RFC 8419 requires SHA-512 with Ed25519)";
        break;
    default:
        sms__set_err(err, err_size, "unknown signature scheme %d", (int)scheme);
        return SMS_ERR_UNSUPPORTED;
    }
    if (ok)
        return SMS_OK;
    sms__set_err(err, err_size, "%s signatures cannot use %s%s", cms_scheme_name(scheme),
                 h->name, why);
    return SMS_ERR_UNSUPPORTED;
}

static void cms_sig_alg_id(cms_ctx *c, asn1_node n, const char *prefix, sms_sig_scheme scheme,
                           const cms_hash *h)
{
    size_t len = 0;
    uint8_t *params = NULL;
    switch (scheme) {
    case SMS_SIG_RSA_PKCS1: /* the hash is in the DigestInfo; OpenSSL writes this too */
        cms_alg_id(c, n, prefix, OID_RSA_ENCRYPTION, der_null, sizeof der_null);
        break;
    case SMS_SIG_RSA_PSS:
        params = cms_encode_pss_params(c, h, &len);
        cms_alg_id(c, n, prefix, OID_RSASSA_PSS, params, len);
        free(params);
        break;
    case SMS_SIG_ECDSA: /* RFC 5758 3.2: parameters absent */
        cms_alg_id(c, n, prefix, h->ecdsa_oid, NULL, 0);
        break;
    case SMS_SIG_ED25519: /* RFC 8419 2.3: parameters absent */
        cms_alg_id(c, n, prefix, OID_ED25519, NULL, 0);
        break;
    }
}

#define SI "signerInfos.?1."

/* The caller's signed attributes go in verbatim: the signature covers
 * exactly those bytes.  libtasn1 can only take DER for a field by decoding
 * it, so decode the [0] form into the field and check that it encodes back
 * to the same bytes. */
static void cms_put_signed_attrs(cms_ctx *c, asn1_node sd, const uint8_t *attrs, size_t len)
{
    if (c->rc != SMS_OK)
        return;
    uint8_t *tagged = malloc(len);
    if (!tagged) {
        cms_fail(c, SMS_ERR_NOMEM, "building the CMS signature: out of memory");
        return;
    }
    memcpy(tagged, attrs, len);
    tagged[0] = 0xA0; /* SET OF -> [0] IMPLICIT */
    char desc[ASN1_MAX_ERROR_DESCRIPTION_SIZE] = "";
    asn1_node field = asn1_find_node(sd, SI "signedAttrs");
    int r = field ? asn1_der_decoding(&field, tagged, (int)len, desc) : ASN1_ELEMENT_NOT_FOUND;
    if (r != ASN1_SUCCESS)
        cms_fail(c, SMS_ERR_BAD_DATA, "the signed attributes are not valid DER: %s%s%s",
                 asn1_strerror(r), desc[0] ? ": " : "", desc);
    size_t back_len = 0;
    uint8_t *back = cms_der(c, sd, SI "signedAttrs", &back_len);
    if (back && (back_len != len || memcmp(back, tagged, len) != 0))
        cms_fail(c, SMS_ERR_BAD_DATA,
                 "the signed attributes are not in DER form (sorted, minimal lengths)");
    free(back);
    free(tagged);
}

static void cms_put_signer_info(cms_ctx *c, asn1_node sd, sms_sig_scheme scheme,
                                const cms_hash *h, const cms_signer_id *id,
                                const uint8_t *attrs, size_t attrs_len, const uint8_t *sig,
                                size_t sig_len)
{
    cms_str(c, sd, "signerInfos", "NEW");
    cms_int(c, sd, SI "version", 1); /* 1: sid is issuerAndSerialNumber */
    /* Not subjectKeyIdentifier: gpgsm and openssl smime reject it. */
    cms_str(c, sd, SI "sid", "issuerAndSerialNumber");
    cms_write(c, sd, SI "sid.issuerAndSerialNumber.issuer", id->issuer.data, id->issuer.size);
    cms_write(c, sd, SI "sid.issuerAndSerialNumber.serialNumber", id->serial, id->serial_len);
    cms_digest_alg_id(c, sd, SI "digestAlgorithm", h);
    cms_put_signed_attrs(c, sd, attrs, attrs_len);
    cms_sig_alg_id(c, sd, SI "signatureAlgorithm", scheme, h);
    cms_write(c, sd, SI "signature", sig, sig_len);
}

static void cms_put_signed_data(cms_ctx *c, asn1_node sd, const cms_hash *h,
                                const uint8_t *const *certs, const size_t *cert_lens,
                                size_t n_certs)
{
    /* Version 1: id-data content, issuerAndSerialNumber, X.509 certs only. */
    cms_int(c, sd, "version", 1);
    cms_str(c, sd, "digestAlgorithms", "NEW");
    cms_digest_alg_id(c, sd, "digestAlgorithms.?LAST", h);
    cms_str(c, sd, "encapContentInfo.eContentType", OID_DATA);
    cms_write(c, sd, "encapContentInfo.eContent", NULL, 0); /* detached */
    /* CertificateSet is a SET OF: in DER, libtasn1 sorts the certificates
     * by their encoding; verifiers find the signer by issuer and serial. */
    for (size_t i = 0; i < n_certs; i++) {
        cms_str(c, sd, "certificates", "NEW");
        cms_write(c, sd, "certificates.?LAST", certs[i], cert_lens[i]);
    }
}

/* Arguments that are the caller's bug rather than bad data. */
static int cms_check_args(const uint8_t *attrs, size_t attrs_len, const uint8_t *sig,
                          size_t sig_len, const uint8_t *const *certs, const size_t *cert_lens,
                          size_t n_certs, char *err, size_t err_size)
{
    if (!attrs || !sig || !certs || !cert_lens || n_certs == 0) {
        sms__set_err(err, err_size, "a CMS signature needs signed attributes, a signature "
                                    "and at least the signer's certificate");
        return SMS_ERR_INVALID_ARG;
    }
    if (!cms_one_element(attrs, attrs_len, 0x31) || attrs_len > CMS_MAX_ATTRS_LEN) {
        sms__set_err(err, err_size, "the signed attributes must be one DER SET OF (tag 0x31)");
        return SMS_ERR_INVALID_ARG;
    }
    if (sig_len == 0 || sig_len > SMS_SIGNATURE_MAX) {
        sms__set_err(err, err_size, "signature length %zu is out of range (1-%d)", sig_len,
                     SMS_SIGNATURE_MAX);
        return SMS_ERR_INVALID_ARG;
    }
    if (n_certs > CMS_MAX_CERTS) {
        sms__set_err(err, err_size, "too many certificates (%zu, at most %d)", n_certs,
                     CMS_MAX_CERTS);
        return SMS_ERR_LIMIT;
    }
    for (size_t i = 0; i < n_certs; i++) {
        if (!certs[i] || cert_lens[i] == 0 || cert_lens[i] > CMS_MAX_CERT_LEN) {
            sms__set_err(err, err_size, "certificate %zu is missing or too large (%zu bytes)",
                         i, cert_lens[i]);
            return certs[i] && cert_lens[i] ? SMS_ERR_LIMIT : SMS_ERR_INVALID_ARG;
        }
    }
    return SMS_OK;
}

/* ContentInfo { id-signedData, [0] the SignedData }. */
static uint8_t *cms_wrap_content_info(cms_ctx *c, const uint8_t *sd_der, size_t sd_len,
                                      size_t *ret_len)
{
    asn1_node ci = cms_new(c, "ContentInfo");
    cms_str(c, ci, "contentType", OID_SIGNED_DATA);
    cms_write(c, ci, "content", sd_der, sd_len);
    uint8_t *der = cms_der(c, ci, "", ret_len);
    cms_free_node(&ci);
    return der;
}

int sms__cms_signed_data(sms_digest digest, sms_sig_scheme scheme, const uint8_t *signed_attrs,
                         size_t signed_attrs_len, const uint8_t *sig, size_t sig_len,
                         const uint8_t *const *certs, const size_t *cert_lens, size_t n_certs,
                         uint8_t **ret_der, size_t *ret_len, char *err, size_t err_size)
{
    if (!ret_der || !ret_len) {
        sms__set_err(err, err_size, "sms__cms_signed_data: NULL argument");
        return SMS_ERR_INVALID_ARG;
    }
    *ret_der = NULL;
    *ret_len = 0;
    int rc = cms_check_args(signed_attrs, signed_attrs_len, sig, sig_len, certs, cert_lens,
                            n_certs, err, err_size);
    if (rc != SMS_OK)
        return rc;
    const cms_hash *h = cms_hash_find(digest);
    if (!h) {
        sms__set_err(err, err_size, "unknown digest algorithm %d for the CMS signature",
                     (int)digest);
        return SMS_ERR_DIGEST;
    }
    rc = cms_check_scheme(scheme, h, err, err_size);
    if (rc != SMS_OK)
        return rc;

    cms_ctx c;
    cms_init(&c, err, err_size);
    cms_signer_id id = {.issuer = {NULL, 0}};
    cms_parse_certs(&c, certs, cert_lens, n_certs, &id);
    if (c.rc == SMS_OK)
        cms_check_key(&c, scheme, id.pk);
    asn1_node sd = cms_new(&c, "SignedData");
    cms_put_signed_data(&c, sd, h, certs, cert_lens, n_certs);
    cms_put_signer_info(&c, sd, scheme, h, &id, signed_attrs, signed_attrs_len, sig, sig_len);
    size_t sd_len = 0;
    uint8_t *sd_der = cms_der(&c, sd, "", &sd_len);
    cms_free_node(&sd);
    uint8_t *der = cms_wrap_content_info(&c, sd_der, sd_len, ret_len);
    free(sd_der);
    gnutls_free(id.issuer.data);
    cms_done(&c);
    if (c.rc == SMS_OK)
        *ret_der = der;
    else
        *ret_len = 0;
    return c.rc;
}
