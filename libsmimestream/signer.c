/* smimestream: the signer object around a plugin's vtable. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <dlfcn.h>

#include <gnutls/x509.h>

#include "sms-core-private.h"

struct sms_signer {
    int refs;
    sms_signer_class klass;    /* copied up to the plugin's struct_size */
    void *impl;
    uint8_t **certs;
    size_t *cert_lens;
    size_t n_certs;
    gnutls_pubkey_t pubkey;    /* of certs[0] */
    gnutls_pk_algorithm_t pk;
    unsigned bits;             /* key size; the curve size for ECDSA */
    void *module;              /* dlopen handle of the plugin, or NULL */
};

static void signer_free(sms_signer *s)
{
    if (!s)
        return;
    if (s->klass.destroy && s->impl)
        s->klass.destroy(s->impl);
    for (size_t i = 0; i < s->n_certs; i++)
        free(s->certs[i]);
    free(s->certs);
    free(s->cert_lens);
    if (s->pubkey)
        gnutls_pubkey_deinit(s->pubkey);
    /* After destroy(): the plugin's code must stay mapped until then. */
    if (s->module)
        dlclose(s->module);
    free(s);
}

static int load_leaf(sms_signer *s)
{
    gnutls_x509_crt_t crt = NULL;
    gnutls_datum_t der = { s->certs[0], (unsigned)s->cert_lens[0] };
    int r = SMS_ERR_BAD_DATA;

    if (gnutls_x509_crt_init(&crt) < 0)
        return SMS_ERR_NOMEM;
    if (gnutls_x509_crt_import(crt, &der, GNUTLS_X509_FMT_DER) < 0)
        goto out;
    if (gnutls_pubkey_init(&s->pubkey) < 0) {
        r = SMS_ERR_NOMEM;
        goto out;
    }
    if (gnutls_pubkey_import_x509(s->pubkey, crt, 0) < 0)
        goto out;
    s->pk = gnutls_pubkey_get_pk_algorithm(s->pubkey, &s->bits);
    r = SMS_OK;
out:
    gnutls_x509_crt_deinit(crt);
    return r;
}

int sms_signer_new(const sms_signer_class *klass, void *impl, const uint8_t *const *certs,
                   const size_t *cert_lens, size_t n_certs, sms_signer **ret_signer)
{
    sms_return_val_if_fail(klass != NULL, SMS_ERR_INVALID_ARG);
    sms_return_val_if_fail(klass->struct_size >= offsetof(sms_signer_class, destroy),
                           SMS_ERR_INVALID_ARG);
    sms_return_val_if_fail(klass->sign != NULL, SMS_ERR_INVALID_ARG);
    sms_return_val_if_fail(certs != NULL && cert_lens != NULL && n_certs > 0, SMS_ERR_INVALID_ARG);
    sms_return_val_if_fail(n_certs <= 32, SMS_ERR_LIMIT);
    sms_return_val_if_fail(ret_signer != NULL, SMS_ERR_INVALID_ARG);

    sms_signer *s = calloc(1, sizeof *s);
    if (!s)
        return SMS_ERR_NOMEM;
    s->refs = 1;
    memcpy(&s->klass, klass,
           klass->struct_size < sizeof s->klass ? klass->struct_size : sizeof s->klass);
    s->certs = calloc(n_certs, sizeof *s->certs);
    s->cert_lens = calloc(n_certs, sizeof *s->cert_lens);
    if (!s->certs || !s->cert_lens)
        goto nomem;
    for (size_t i = 0; i < n_certs; i++) {
        if (!certs[i] || cert_lens[i] == 0 || cert_lens[i] > 64 * 1024) {
            s->klass.destroy = NULL;
            signer_free(s);
            return SMS_ERR_BAD_DATA;
        }
        s->certs[i] = malloc(cert_lens[i]);
        if (!s->certs[i])
            goto nomem;
        memcpy(s->certs[i], certs[i], cert_lens[i]);
        s->cert_lens[i] = cert_lens[i];
        s->n_certs++;
    }
    int r = load_leaf(s);
    if (r < 0) {
        s->klass.destroy = NULL; /* impl stays the caller's on failure */
        signer_free(s);
        return r;
    }
    s->impl = impl;
    *ret_signer = s;
    return SMS_OK;
nomem:
    s->klass.destroy = NULL;
    signer_free(s);
    return SMS_ERR_NOMEM;
}

sms_signer *sms_signer_ref(sms_signer *signer)
{
    if (signer)
        __atomic_add_fetch(&signer->refs, 1, __ATOMIC_RELAXED);
    return signer;
}

void sms_signer_unref(sms_signer *signer)
{
    if (signer && __atomic_sub_fetch(&signer->refs, 1, __ATOMIC_ACQ_REL) == 0)
        signer_free(signer);
}

int sms_signer_scheme(const sms_signer *signer, int want_pss, sms_sig_scheme *ret_scheme)
{
    sms_return_val_if_fail(signer != NULL && ret_scheme != NULL, SMS_ERR_INVALID_ARG);
    switch (signer->pk) {
    case GNUTLS_PK_RSA:
        *ret_scheme = want_pss ? SMS_SIG_RSA_PSS : SMS_SIG_RSA_PKCS1;
        return SMS_OK;
    case GNUTLS_PK_RSA_PSS:
        *ret_scheme = SMS_SIG_RSA_PSS;
        return SMS_OK;
    case GNUTLS_PK_ECDSA:
        *ret_scheme = SMS_SIG_ECDSA;
        return SMS_OK;
    case GNUTLS_PK_EDDSA_ED25519:
        *ret_scheme = SMS_SIG_ED25519;
        return SMS_OK;
    default:
        return SMS_ERR_UNSUPPORTED;
    }
}

size_t sms_signer_cert_count(const sms_signer *signer)
{
    return signer ? signer->n_certs : 0;
}

const uint8_t *sms_signer_cert(const sms_signer *signer, size_t i, size_t *ret_len)
{
    if (!signer || i >= signer->n_certs)
        return NULL;
    if (ret_len)
        *ret_len = signer->cert_lens[i];
    return signer->certs[i];
}

const char *sms_signer_describe(const sms_signer *signer)
{
    if (!signer)
        return "";
    if (signer->klass.struct_size > offsetof(sms_signer_class, describe) && signer->klass.describe)
        return signer->klass.describe(signer->impl);
    return signer->klass.name ? signer->klass.name : "signer";
}

void sms__signer_set_module(sms_signer *signer, void *dl_handle)
{
    signer->module = dl_handle;
}

sms_digest sms__signer_default_digest(const sms_signer *signer)
{
    /* Match the hash to the curve: gpgsm, for one, refuses a 256-bit hash
     * with a P-384 key. */
    if (signer->pk == GNUTLS_PK_EDDSA_ED25519 || (signer->pk == GNUTLS_PK_ECDSA && signer->bits > 384))
        return SMS_DIGEST_SHA512;
    if (signer->pk == GNUTLS_PK_ECDSA && signer->bits > 256)
        return SMS_DIGEST_SHA384;
    return SMS_DIGEST_SHA256;
}

gnutls_sign_algorithm_t sms__sign_algorithm(sms_sig_scheme scheme, sms_digest d)
{
    switch (scheme) {
    case SMS_SIG_ED25519:
        return GNUTLS_SIGN_EDDSA_ED25519;
    case SMS_SIG_ECDSA:
    case SMS_SIG_RSA_PKCS1:
        return gnutls_pk_to_sign(scheme == SMS_SIG_ECDSA ? GNUTLS_PK_ECDSA : GNUTLS_PK_RSA,
                                 sms__digest_gnutls(d));
    case SMS_SIG_RSA_PSS:
        switch (d) {
        case SMS_DIGEST_SHA256: return GNUTLS_SIGN_RSA_PSS_RSAE_SHA256;
        case SMS_DIGEST_SHA384: return GNUTLS_SIGN_RSA_PSS_RSAE_SHA384;
        case SMS_DIGEST_SHA512: return GNUTLS_SIGN_RSA_PSS_RSAE_SHA512;
        default: return GNUTLS_SIGN_UNKNOWN;
        }
    }
    return GNUTLS_SIGN_UNKNOWN;
}

/* Check the signature against the certificate, so that a signer whose key
 * does not belong to its certificate can never produce a message that
 * looks signed but fails at the recipient. */
static int check_signature(const sms_signer *s, const sms_sign_request *req, const uint8_t *sig,
                           size_t sig_len, char *err, size_t err_size)
{
    gnutls_sign_algorithm_t alg = sms__sign_algorithm(req->scheme, req->digest);
    if (req->scheme == SMS_SIG_RSA_PSS && s->pk == GNUTLS_PK_RSA_PSS)
        alg = alg == GNUTLS_SIGN_RSA_PSS_RSAE_SHA256   ? GNUTLS_SIGN_RSA_PSS_SHA256
              : alg == GNUTLS_SIGN_RSA_PSS_RSAE_SHA384 ? GNUTLS_SIGN_RSA_PSS_SHA384
                                                       : GNUTLS_SIGN_RSA_PSS_SHA512;
    gnutls_datum_t sd = { (unsigned char *)sig, (unsigned)sig_len };
    int r;
    if (req->scheme == SMS_SIG_ED25519) {
        gnutls_datum_t data = { (unsigned char *)req->tbs, (unsigned)req->tbs_len };
        r = gnutls_pubkey_verify_data2(s->pubkey, alg, 0, &data, &sd);
    } else {
        gnutls_datum_t h = { (unsigned char *)req->tbs_digest, (unsigned)req->tbs_digest_len };
        r = gnutls_pubkey_verify_hash2(s->pubkey, alg, GNUTLS_VERIFY_ALLOW_BROKEN, &h, &sd);
    }
    if (r < 0) {
        sms__set_err(err, err_size,
                     "the signature made by %s does not verify with the signer certificate's "
                     "public key (%s): the key and the certificate do not belong together",
                     sms_signer_describe(s), gnutls_strerror(r));
        return SMS_ERR_KEY_MISMATCH;
    }
    return SMS_OK;
}

int sms_signer_sign(sms_signer *signer, const sms_sign_request *req, uint8_t *sig,
                    size_t *sig_len, char *err, size_t err_size)
{
    sms_return_val_if_fail(signer != NULL && req != NULL, SMS_ERR_INVALID_ARG);
    sms_return_val_if_fail(sig != NULL && sig_len != NULL, SMS_ERR_INVALID_ARG);
    if (err && err_size)
        err[0] = '\0';
    size_t cap = *sig_len;
    int r = signer->klass.sign(signer->impl, req, sig, sig_len, err, err_size);
    if (r >= 0 && (*sig_len == 0 || *sig_len > cap)) {
        sms__set_err(err, err_size, "%s returned a signature of impossible length %zu",
                     sms_signer_describe(signer), *sig_len);
        r = SMS_ERR_SIGNER;
    }
    if (r < 0) {
        if (err && err_size && !err[0])
            sms__set_err(err, err_size, "%s failed to sign: %s", sms_signer_describe(signer),
                         sms_strerror(r));
        return r;
    }
    return check_signature(signer, req, sig, *sig_len, err, err_size);
}
