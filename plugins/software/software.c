/* smimestream signer plugin: keys in files (PEM PKCS#1/PKCS#8, encrypted
 * PKCS#8, PKCS#12), read with GnuTLS.
 *
 * This is the worked example of smimestream-plugins(7): it uses only the
 * public headers.  open() does all the checking (passphrase, key/certificate
 * match) so that errors come before any attachment is read; sign() only
 * signs the digest it is given.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <gnutls/pkcs12.h>
#include <gnutls/x509.h>

#include <smimestream/smimestream.h>

#define PASS_MAX 1024
#define MAX_PROMPTS 3

typedef struct software_key {
    gnutls_privkey_t key;
    gnutls_pk_algorithm_t pk;
    char *path;
} software_key;

static void seterr(char *err, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void seterr(char *err, size_t size, const char *fmt, ...)
{
    if (!err || !size)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, size, fmt, ap);
    va_end(ap);
}

static gnutls_sign_algorithm_t sign_algorithm(const software_key *k, const sms_sign_request *req)
{
    gnutls_digest_algorithm_t dig;
    switch (req->digest) {
    case SMS_DIGEST_SHA256: dig = GNUTLS_DIG_SHA256; break;
    case SMS_DIGEST_SHA384: dig = GNUTLS_DIG_SHA384; break;
    case SMS_DIGEST_SHA512: dig = GNUTLS_DIG_SHA512; break;
    case SMS_DIGEST_SHA224: dig = GNUTLS_DIG_SHA224; break;
    case SMS_DIGEST_SHA1: dig = GNUTLS_DIG_SHA1; break;
    case SMS_DIGEST_MD5: dig = GNUTLS_DIG_MD5; break;
    default: return GNUTLS_SIGN_UNKNOWN;
    }
    switch (req->scheme) {
    case SMS_SIG_RSA_PKCS1: return gnutls_pk_to_sign(GNUTLS_PK_RSA, dig);
    case SMS_SIG_ECDSA: return gnutls_pk_to_sign(GNUTLS_PK_ECDSA, dig);
    case SMS_SIG_ED25519: return GNUTLS_SIGN_EDDSA_ED25519;
    case SMS_SIG_RSA_PSS: {
        /* An RSASSA-PSS key signs with the PSS OIDs, a plain RSA key with
         * the "RSAE" ones; both give salt = hash length. */
        bool pss_key = k->pk == GNUTLS_PK_RSA_PSS;
        switch (dig) {
        case GNUTLS_DIG_SHA256: return pss_key ? GNUTLS_SIGN_RSA_PSS_SHA256 : GNUTLS_SIGN_RSA_PSS_RSAE_SHA256;
        case GNUTLS_DIG_SHA384: return pss_key ? GNUTLS_SIGN_RSA_PSS_SHA384 : GNUTLS_SIGN_RSA_PSS_RSAE_SHA384;
        case GNUTLS_DIG_SHA512: return pss_key ? GNUTLS_SIGN_RSA_PSS_SHA512 : GNUTLS_SIGN_RSA_PSS_RSAE_SHA512;
        default: return GNUTLS_SIGN_UNKNOWN;
        }
    }
    }
    return GNUTLS_SIGN_UNKNOWN;
}

static int software_sign(void *impl, const sms_sign_request *req, uint8_t *sig, size_t *sig_len,
                         char *err, size_t err_size)
{
    software_key *k = impl;
    gnutls_sign_algorithm_t alg = sign_algorithm(k, req);
    if (alg == GNUTLS_SIGN_UNKNOWN) {
        seterr(err, err_size, "%s: this key cannot sign with the requested algorithm", k->path);
        return SMS_ERR_UNSUPPORTED;
    }
    gnutls_datum_t out = { NULL, 0 };
    int r;
    if (req->scheme == SMS_SIG_ED25519) {
        /* Pure EdDSA signs the signed-attribute bytes themselves. */
        gnutls_datum_t data = { (unsigned char *)req->tbs, (unsigned)req->tbs_len };
        r = gnutls_privkey_sign_data2(k->key, alg, 0, &data, &out);
    } else {
        gnutls_datum_t hash = { (unsigned char *)req->tbs_digest, (unsigned)req->tbs_digest_len };
        r = gnutls_privkey_sign_hash2(k->key, alg, 0, &hash, &out);
    }
    if (r < 0) {
        seterr(err, err_size, "%s: signing failed: %s", k->path, gnutls_strerror(r));
        return SMS_ERR_SIGNER;
    }
    if (out.size > *sig_len) {
        gnutls_free(out.data);
        seterr(err, err_size, "%s: signature too large (%u bytes)", k->path, out.size);
        return SMS_ERR_SIGNER;
    }
    memcpy(sig, out.data, out.size);
    *sig_len = out.size;
    gnutls_free(out.data);
    return SMS_OK;
}

static void software_destroy(void *impl)
{
    software_key *k = impl;
    if (!k)
        return;
    if (k->key)
        gnutls_privkey_deinit(k->key);
    free(k->path);
    free(k);
}

static const char *software_describe(void *impl)
{
    return ((software_key *)impl)->path;
}

static const sms_signer_class software_class = {
    .struct_size = sizeof(sms_signer_class),
    .name = "software",
    .sign = software_sign,
    .destroy = software_destroy,
    .describe = software_describe,
};

/* ---- loading ----------------------------------------------------------- */

typedef struct loaded {
    gnutls_privkey_t key;
    gnutls_x509_crt_t *certs;
    unsigned n_certs;
} loaded;

static void loaded_clear(loaded *l)
{
    if (l->key)
        gnutls_privkey_deinit(l->key);
    for (unsigned i = 0; i < l->n_certs; i++)
        gnutls_x509_crt_deinit(l->certs[i]);
    gnutls_free(l->certs);
    memset(l, 0, sizeof *l);
}

static int load_file(const char *path, gnutls_datum_t *ret, char *err, size_t err_size)
{
    int r = gnutls_load_file(path, ret);
    if (r < 0) {
        FILE *f = fopen(path, "rb");
        int e = f ? 0 : errno;
        if (f)
            fclose(f);
        seterr(err, err_size, "cannot read '%s': %s", path,
               e ? strerror(e) : gnutls_strerror(r));
        return SMS_ERR_NOINPUT;
    }
    return SMS_OK;
}

static bool has_p12_extension(const char *path)
{
    const char *dot = strrchr(path, '.');
    return dot && (strcasecmp(dot, ".p12") == 0 || strcasecmp(dot, ".pfx") == 0);
}

static bool looks_pkcs12(const char *path, const gnutls_datum_t *data)
{
    if (has_p12_extension(path))
        return true;
    /* DER SEQUENCE with no PEM armour. */
    return data->size > 0 && data->data[0] == 0x30 &&
           !memmem(data->data, data->size, "-----BEGIN", 10);
}

static int need_pass(const char *path, const sms_signer_options *o, char *pass, bool *have,
                     const char *hint, char *err, size_t err_size)
{
    if (o->pin_file) {
        /* A pin file was read already: it is simply wrong. */
        seterr(err, err_size,
               "wrong passphrase for '%s' (from --pin-file %s); check the file's contents",
               path, o->pin_file);
        return SMS_ERR_PIN;
    }
    if (!o->pin_func) {
        seterr(err, err_size,
               "'%s' is protected by a passphrase: give it with --pin-file FILE, or run on a "
               "terminal to be asked",
               path);
        return SMS_ERR_PIN;
    }
    int r = o->pin_func(path, hint, pass, PASS_MAX, o->pin_user_data);
    if (r < 0) {
        seterr(err, err_size, "no passphrase for '%s': the prompt was cancelled", path);
        return SMS_ERR_PIN;
    }
    *have = true;
    return SMS_OK;
}

static int load_pkcs12(const char *path, const gnutls_datum_t *data, const sms_signer_options *o,
                       char *pass, bool have_pass, loaded *out, char *err, size_t err_size)
{
    gnutls_pkcs12_t p12 = NULL;
    int r = gnutls_pkcs12_init(&p12);
    if (r < 0)
        return SMS_ERR_NOMEM;
    r = gnutls_pkcs12_import(p12, data, GNUTLS_X509_FMT_DER, 0);
    if (r < 0)
        r = gnutls_pkcs12_import(p12, data, GNUTLS_X509_FMT_PEM, 0);
    if (r < 0) {
        seterr(err, err_size, "'%s' is not a PKCS#12 file: %s", path, gnutls_strerror(r));
        gnutls_pkcs12_deinit(p12);
        return SMS_ERR_BAD_DATA;
    }
    /* The first try uses what we have; then up to MAX_PROMPTS answers. */
    for (int attempt = 0;; attempt++) {
        r = gnutls_pkcs12_verify_mac(p12, have_pass ? pass : "");
        if (r >= 0 || r == GNUTLS_E_UNKNOWN_HASH_ALGORITHM)
            break;
        int pr = attempt < MAX_PROMPTS
                     ? need_pass(path, o, pass, &have_pass,
                                 attempt ? "wrong passphrase, try again" : "", err, err_size)
                     : SMS_ERR_PIN;
        if (pr < 0) {
            if (attempt == MAX_PROMPTS)
                seterr(err, err_size, "wrong passphrase for '%s' (%d tries)", path, attempt);
            gnutls_pkcs12_deinit(p12);
            return SMS_ERR_PIN;
        }
    }
    gnutls_x509_privkey_t xkey = NULL;
    r = gnutls_pkcs12_simple_parse(p12, have_pass ? pass : "", &xkey, &out->certs, &out->n_certs,
                                   NULL, NULL, NULL, 0);
    gnutls_pkcs12_deinit(p12);
    if (r < 0) {
        seterr(err, err_size, "cannot read the key and certificate from '%s': %s", path,
               gnutls_strerror(r));
        return r == GNUTLS_E_DECRYPTION_FAILED ? SMS_ERR_PIN : SMS_ERR_BAD_DATA;
    }
    if ((r = gnutls_privkey_init(&out->key)) < 0 ||
        (r = gnutls_privkey_import_x509(out->key, xkey, GNUTLS_PRIVKEY_IMPORT_AUTO_RELEASE)) < 0) {
        gnutls_x509_privkey_deinit(xkey);
        return SMS_ERR_NOMEM;
    }
    return SMS_OK;
}

static bool is_encrypted(const gnutls_datum_t *d)
{
    return memmem(d->data, d->size, "ENCRYPTED", 9) != NULL;
}

static int load_pem_key(const char *path, const gnutls_datum_t *data, const sms_signer_options *o,
                        char *pass, bool have_pass, loaded *out, char *err, size_t err_size)
{
    int r = gnutls_privkey_init(&out->key);
    if (r < 0)
        return SMS_ERR_NOMEM;
    gnutls_x509_crt_fmt_t fmt =
        memmem(data->data, data->size, "-----BEGIN", 10) ? GNUTLS_X509_FMT_PEM : GNUTLS_X509_FMT_DER;
    for (int attempt = 0;; attempt++) {
        r = gnutls_privkey_import_x509_raw(out->key, data, fmt, have_pass ? pass : NULL, 0);
        if (r >= 0)
            return SMS_OK;
        if (r != GNUTLS_E_DECRYPTION_FAILED && !is_encrypted(data))
            break;
        if (attempt == MAX_PROMPTS)
            break;
        int pr = need_pass(path, o, pass, &have_pass, attempt ? "wrong passphrase, try again" : "",
                           err, err_size);
        if (pr < 0)
            return pr;
        gnutls_privkey_deinit(out->key);
        out->key = NULL;
        if (gnutls_privkey_init(&out->key) < 0)
            return SMS_ERR_NOMEM;
    }
    if (r == GNUTLS_E_DECRYPTION_FAILED || is_encrypted(data)) {
        seterr(err, err_size, "wrong passphrase for '%s'", path);
        return SMS_ERR_PIN;
    }
    seterr(err, err_size,
           "'%s' holds no private key that GnuTLS can read (%s); expected PEM PKCS#1, PKCS#8 or "
           "a PKCS#12 file",
           path, gnutls_strerror(r));
    return SMS_ERR_BAD_DATA;
}

static int load_certs(const char *path, loaded *out, char *err, size_t err_size)
{
    gnutls_datum_t data = { NULL, 0 };
    int r = load_file(path, &data, err, err_size);
    if (r < 0)
        return r;
    r = gnutls_x509_crt_list_import2(&out->certs, &out->n_certs, &data, GNUTLS_X509_FMT_PEM, 0);
    if (r < 0)
        r = gnutls_x509_crt_list_import2(&out->certs, &out->n_certs, &data, GNUTLS_X509_FMT_DER, 0);
    gnutls_free(data.data);
    if (r < 0 || out->n_certs == 0) {
        seterr(err, err_size, "'%s' holds no readable certificate: %s", path,
               r < 0 ? gnutls_strerror(r) : "empty");
        out->n_certs = 0;
        return SMS_ERR_BAD_DATA;
    }
    return SMS_OK;
}

/* Compare the key's public half with a certificate's. */
static bool key_matches(gnutls_privkey_t key, gnutls_x509_crt_t crt)
{
    gnutls_pubkey_t a = NULL, b = NULL;
    gnutls_datum_t da = { NULL, 0 }, db = { NULL, 0 };
    bool same = false;
    if (gnutls_pubkey_init(&a) < 0 || gnutls_pubkey_init(&b) < 0)
        goto out;
    if (gnutls_pubkey_import_privkey(a, key, 0, 0) < 0 || gnutls_pubkey_import_x509(b, crt, 0) < 0)
        goto out;
    if (gnutls_pubkey_export2(a, GNUTLS_X509_FMT_DER, &da) < 0 ||
        gnutls_pubkey_export2(b, GNUTLS_X509_FMT_DER, &db) < 0)
        goto out;
    /* An RSA key may be imported as RSA while its certificate says RSA-PSS:
     * compare the key material, not the algorithm identifiers. */
    if (da.size == db.size && memcmp(da.data, db.data, da.size) == 0) {
        same = true;
    } else {
        gnutls_datum_t ma = { 0 }, ea = { 0 }, mb = { 0 }, eb = { 0 };
        if (gnutls_pubkey_export_rsa_raw2(a, &ma, &ea, 0) >= 0 &&
            gnutls_pubkey_export_rsa_raw2(b, &mb, &eb, 0) >= 0)
            same = ma.size == mb.size && memcmp(ma.data, mb.data, ma.size) == 0 &&
                   ea.size == eb.size && memcmp(ea.data, eb.data, ea.size) == 0;
        gnutls_free(ma.data);
        gnutls_free(ea.data);
        gnutls_free(mb.data);
        gnutls_free(eb.data);
    }
out:
    gnutls_free(da.data);
    gnutls_free(db.data);
    if (a)
        gnutls_pubkey_deinit(a);
    if (b)
        gnutls_pubkey_deinit(b);
    return same;
}

static int software_open(const char *spec, const sms_signer_options *o, sms_signer **ret,
                         char *err, size_t err_size)
{
    const char *path = strncasecmp(spec, "file:", 5) == 0 ? spec + 5 : spec;
    char pass[PASS_MAX];
    bool have_pass = false;
    loaded l = { 0 };
    gnutls_datum_t data = { NULL, 0 };
    software_key *k = NULL;
    int r;

    if (o->pin_file) {
        r = sms_read_secret_file(o->pin_file, pass, sizeof pass, err, err_size);
        if (r < 0)
            return r;
        have_pass = true;
    }
    r = load_file(path, &data, err, err_size);
    if (r < 0)
        goto out;
    if (looks_pkcs12(path, &data)) {
        r = load_pkcs12(path, &data, o, pass, have_pass, &l, err, err_size);
        /* A DER file that is not PKCS#12 may still be a DER PKCS#8 key. */
        if (r == SMS_ERR_BAD_DATA && !has_p12_extension(path))
            r = load_pem_key(path, &data, o, pass, have_pass, &l, err, err_size);
    } else {
        r = load_pem_key(path, &data, o, pass, have_pass, &l, err, err_size);
    }
    if (r < 0)
        goto out;

    /* The chain: --cert wins; else certificates in the key file itself. */
    if (o->cert_file) {
        for (unsigned i = 0; i < l.n_certs; i++)
            gnutls_x509_crt_deinit(l.certs[i]);
        gnutls_free(l.certs);
        l.certs = NULL;
        l.n_certs = 0;
        r = load_certs(o->cert_file, &l, err, err_size);
        if (r < 0)
            goto out;
    } else if (l.n_certs == 0) {
        if (gnutls_x509_crt_list_import2(&l.certs, &l.n_certs, &data, GNUTLS_X509_FMT_PEM, 0) < 0)
            l.n_certs = 0;
    }
    if (l.n_certs == 0) {
        seterr(err, err_size,
               "no certificate for the key in '%s': give the signer certificate (and chain) "
               "with --cert FILE",
               path);
        r = SMS_ERR_BAD_DATA;
        goto out;
    }
    /* Put the certificate that belongs to the key first. */
    unsigned leaf = l.n_certs;
    for (unsigned i = 0; i < l.n_certs; i++)
        if (key_matches(l.key, l.certs[i])) {
            leaf = i;
            break;
        }
    if (leaf == l.n_certs) {
        seterr(err, err_size,
               "the private key in '%s' does not match the certificate%s%s; use the "
               "certificate issued for this key",
               path, o->cert_file ? " in " : "", o->cert_file ? o->cert_file : "");
        r = SMS_ERR_KEY_MISMATCH;
        goto out;
    }
    gnutls_x509_crt_t first = l.certs[leaf];
    memmove(&l.certs[1], &l.certs[0], leaf * sizeof *l.certs);
    l.certs[0] = first;

    gnutls_datum_t der[32];
    const uint8_t *ders[32];
    size_t lens[32];
    unsigned n = l.n_certs;
    if (n > 32) {
        seterr(err, err_size, "%u certificates for '%s': at most 32 are supported", n,
               o->cert_file ? o->cert_file : path);
        r = SMS_ERR_LIMIT;
        goto out;
    }
    for (unsigned i = 0; i < n; i++) {
        if (gnutls_x509_crt_export2(l.certs[i], GNUTLS_X509_FMT_DER, &der[i]) < 0) {
            for (unsigned j = 0; j < i; j++)
                gnutls_free(der[j].data);
            r = SMS_ERR_BAD_DATA;
            seterr(err, err_size, "cannot export certificate %u", i);
            goto out;
        }
        ders[i] = der[i].data;
        lens[i] = der[i].size;
    }
    k = calloc(1, sizeof *k);
    if (!k || !(k->path = strdup(path))) {
        r = SMS_ERR_NOMEM;
    } else {
        k->key = l.key;
        k->pk = gnutls_privkey_get_pk_algorithm(l.key, NULL);
        r = sms_signer_new(&software_class, k, ders, lens, n, ret);
        if (r >= 0) {
            l.key = NULL; /* now owned by k, and k by the signer */
            k = NULL;
        } else {
            k->key = NULL;
            seterr(err, err_size, "the certificate for '%s' cannot be used: %s", path,
                   sms_strerror(r));
        }
    }
    for (unsigned i = 0; i < n; i++)
        gnutls_free(der[i].data);
out:
    software_destroy(k);
    loaded_clear(&l);
    if (data.data) {
        sms_wipe(data.data, data.size);
        gnutls_free(data.data);
    }
    sms_wipe(pass, sizeof pass);
    return r;
}

static const char *const software_schemes[] = { "file", NULL };

__attribute__((visibility("default"))) const sms_plugin_descriptor sms_plugin_v1 = {
    .abi_version = SMS_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(sms_plugin_descriptor),
    .name = "software",
    .schemes = software_schemes,
    .open = software_open,
};
