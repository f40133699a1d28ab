/* smimestream: signers and the signer plugin ABI.
 *
 * A signer holds a private key somewhere (a file, a PKCS#11 token, a desktop
 * application) and its certificate chain.  The message writer hands it only
 * the DER signed attributes and their digest, never the content.
 *
 * See smimestream-plugins(7) for a walk-through.
 */
#ifndef SMIMESTREAM_SMS_SIGNER_H
#define SMIMESTREAM_SMS_SIGNER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    SMS_DIGEST_NONE = 0,
    SMS_DIGEST_SHA256 = 1,
    SMS_DIGEST_SHA384 = 2,
    SMS_DIGEST_SHA512 = 3,
    SMS_DIGEST_SHA224 = 4,
    SMS_DIGEST_SHA1 = 5,   /* weak: needs SMS_MESSAGE_ALLOW_WEAK_DIGEST */
    SMS_DIGEST_MD5 = 6,    /* weak: needs SMS_MESSAGE_ALLOW_WEAK_DIGEST */
} sms_digest;

/* Parse "sha256", "SHA-256", ... Returns SMS_DIGEST_NONE when unknown. */
sms_digest sms_digest_from_string(const char *name);
/* "sha256" etc.; the micalg form ("sha-256") with sms_digest_micalg(). */
const char *sms_digest_name(sms_digest d);
const char *sms_digest_micalg(sms_digest d);
size_t sms_digest_length(sms_digest d);

typedef enum {
    SMS_SIG_RSA_PKCS1 = 1,  /* tbs_digest, PKCS#1 v1.5 with a DigestInfo */
    SMS_SIG_RSA_PSS = 2,    /* tbs_digest, MGF1 with the same hash, salt = hash length */
    SMS_SIG_ECDSA = 3,      /* tbs_digest; the signature is DER Ecdsa-Sig-Value */
    SMS_SIG_ED25519 = 4,    /* tbs itself (pure EdDSA) */
} sms_sig_scheme;

/* The largest signature the library accepts (RSA-16384). */
#define SMS_SIGNATURE_MAX 2048

/* What the library asks a signer to sign.  Read-only for the signer. */
typedef struct sms_sign_request {
    size_t struct_size;        /* sizeof(sms_sign_request) of the library */
    sms_sig_scheme scheme;
    sms_digest digest;         /* the hash of tbs_digest */
    const uint8_t *tbs;        /* DER signed attributes (SET OF, tag 0x31) */
    size_t tbs_len;
    const uint8_t *tbs_digest; /* digest of tbs with `digest` */
    size_t tbs_digest_len;
} sms_sign_request;

/* Callback used by signers that need a PIN or passphrase.  `what` names the
 * token or file, `hint` says why (e.g. "wrong PIN, 2 tries left").  Write a
 * NUL-terminated secret into `buf` (at most `size` bytes including the NUL)
 * and return 0, or return SMS_ERR_CANCELLED.  The signer wipes `buf`. */
typedef int (*sms_pin_func)(const char *what, const char *hint, char *buf, size_t size,
                            void *user_data);

/* Options that a front end passes to a plugin's open(). */
typedef struct sms_signer_options {
    size_t struct_size;        /* sizeof(sms_signer_options) of the caller */
    const char *cert_file;     /* PEM certificate chain, leaf first; may be NULL */
    const char *pin_file;      /* file holding the PIN/passphrase; may be NULL */
    sms_pin_func pin_func;     /* may be NULL; with pin_user_data it must stay
                                  valid for the signer's lifetime (a token
                                  may need a PIN again at sign time) */
    void *pin_user_data;
    unsigned flags;            /* reserved, 0 */
} sms_signer_options;

/* The signer vtable.  struct_size comes first so that the ABI can grow:
 * the library never reads a member past struct_size. */
typedef struct sms_signer_class {
    size_t struct_size;        /* sizeof(sms_signer_class) the plugin was built with */
    const char *name;          /* "software", "pkcs11", ... */
    /* Sign req.  Write at most *sig_len bytes to sig and set *sig_len.
     * On failure return a negative SMS_ERR_* and write a message to
     * err (err_size bytes; always NUL-terminate). */
    int (*sign)(void *impl, const sms_sign_request *req, uint8_t *sig, size_t *sig_len,
                char *err, size_t err_size);
    /* Release impl.  May be NULL. */
    void (*destroy)(void *impl);
    /* Optional: a short human name of where the key lives (for messages). */
    const char *(*describe)(void *impl);
} sms_signer_class;

typedef struct sms_signer sms_signer;

/* Create a signer around a plugin's impl.  certs are DER certificates,
 * leaf first; they are copied.  On success the signer owns impl (destroy is
 * called by the last unref).  On failure impl is not touched. */
int sms_signer_new(const sms_signer_class *klass, void *impl, const uint8_t *const *certs,
                   const size_t *cert_lens, size_t n_certs, sms_signer **ret_signer);
sms_signer *sms_signer_ref(sms_signer *signer);
void sms_signer_unref(sms_signer *signer);

/* The signature scheme for this signer's leaf certificate.  want_pss asks for
 * RSA-PSS with an RSA key; an RSASSA-PSS certificate always gets PSS. */
int sms_signer_scheme(const sms_signer *signer, int want_pss, sms_sig_scheme *ret_scheme);
size_t sms_signer_cert_count(const sms_signer *signer);
/* DER of certificate i (0 is the leaf).  NULL when out of range. */
const uint8_t *sms_signer_cert(const sms_signer *signer, size_t i, size_t *ret_len);
const char *sms_signer_describe(const sms_signer *signer);
/* Run the signer: the library does this at the end of a message.  Also
 * useful for tests and pre-flight checks. */
int sms_signer_sign(sms_signer *signer, const sms_sign_request *req, uint8_t *sig,
                    size_t *sig_len, char *err, size_t err_size);

/* Read a PIN or passphrase from the first line of a file (for --pin-file).
 * Trailing CR/LF is removed.  buf receives a NUL-terminated string; wipe it with
 * sms_wipe() after use. */
int sms_read_secret_file(const char *path, char *buf, size_t size, char *err, size_t err_size);
/* Wipe memory that held a secret, in a way the compiler does not remove. */
void sms_wipe(void *p, size_t n);

/* ---- Plugin ABI -------------------------------------------------------- */

#define SMS_PLUGIN_ABI_VERSION 1
/* The one symbol a plugin module exports: a const sms_plugin_descriptor. */
#define SMS_PLUGIN_SYMBOL "sms_plugin_v1"

typedef struct sms_plugin_descriptor {
    uint32_t abi_version;      /* SMS_PLUGIN_ABI_VERSION */
    size_t struct_size;        /* sizeof(sms_plugin_descriptor) */
    const char *name;          /* module name, e.g. "pkcs11" */
    const char *const *schemes; /* NULL-terminated, e.g. {"pkcs11", NULL};
                                   "file" means plain paths */
    /* Open the signer named by spec.  Do the pre-flight work here (find the
     * key, log in, check the certificate) so that failures come before any
     * content is read. */
    int (*open)(const char *spec, const sms_signer_options *options, sms_signer **ret_signer,
                char *err, size_t err_size);
} sms_plugin_descriptor;

/* Find the plugin for spec and open it.  spec is a path (software keys) or
 * "scheme:..." (pkcs11:, dbus:, or a third-party scheme X handled by X.so).
 * Plugins are looked up in $SMIMESTREAM_PLUGIN_DIR (colon-separated), then
 * $libdir/smimestream/signers, then (only when this library runs from its
 * build tree) the build tree. */
int sms_signer_open(const char *spec, const sms_signer_options *options, sms_signer **ret_signer,
                    char *err, size_t err_size);

#ifdef __cplusplus
}
#endif
#endif
