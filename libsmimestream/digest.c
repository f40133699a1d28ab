/* smimestream: digest names and their GnuTLS algorithms. */
#include "config.h"

#include <string.h>
#include <strings.h>

#include "sms-core-private.h"

static const struct {
    sms_digest id;
    const char *name;
    const char *alias;
    const char *micalg;
    gnutls_digest_algorithm_t gnutls;
    size_t len;
} digests[] = {
    { SMS_DIGEST_SHA256, "sha256", "sha-256", "sha-256", GNUTLS_DIG_SHA256, 32 },
    { SMS_DIGEST_SHA384, "sha384", "sha-384", "sha-384", GNUTLS_DIG_SHA384, 48 },
    { SMS_DIGEST_SHA512, "sha512", "sha-512", "sha-512", GNUTLS_DIG_SHA512, 64 },
    { SMS_DIGEST_SHA224, "sha224", "sha-224", "sha-224", GNUTLS_DIG_SHA224, 28 },
    { SMS_DIGEST_SHA1, "sha1", "sha-1", "sha-1", GNUTLS_DIG_SHA1, 20 },
    { SMS_DIGEST_MD5, "md5", "md-5", "md5", GNUTLS_DIG_MD5, 16 },
};

#define N_DIGESTS (sizeof digests / sizeof digests[0])

sms_digest sms_digest_from_string(const char *name)
{
    if (!name)
        return SMS_DIGEST_NONE;
    for (size_t i = 0; i < N_DIGESTS; i++)
        if (strcasecmp(name, digests[i].name) == 0 || strcasecmp(name, digests[i].alias) == 0)
            return digests[i].id;
    return SMS_DIGEST_NONE;
}

const char *sms_digest_name(sms_digest d)
{
    for (size_t i = 0; i < N_DIGESTS; i++)
        if (digests[i].id == d)
            return digests[i].name;
    return NULL;
}

const char *sms_digest_micalg(sms_digest d)
{
    for (size_t i = 0; i < N_DIGESTS; i++)
        if (digests[i].id == d)
            return digests[i].micalg;
    return NULL;
}

size_t sms_digest_length(sms_digest d)
{
    for (size_t i = 0; i < N_DIGESTS; i++)
        if (digests[i].id == d)
            return digests[i].len;
    return 0;
}

gnutls_digest_algorithm_t sms__digest_gnutls(sms_digest d)
{
    for (size_t i = 0; i < N_DIGESTS; i++)
        if (digests[i].id == d)
            return digests[i].gnutls;
    return GNUTLS_DIG_UNKNOWN;
}

bool sms__digest_is_weak(sms_digest d)
{
    return d == SMS_DIGEST_SHA1 || d == SMS_DIGEST_MD5;
}
