/* Application signers used from several threads at once, as the agent does
 * with its worker threads.
 *
 *   threads THREADS ROUNDS SPEC...
 *
 * Opens each SPEC once (the dbus: plugin, through sms_signer_open), then
 * THREADS threads each sign ROUNDS random digests with every signer, sharing
 * the signers.  The library checks each signature against the signer's
 * certificate, so a mixed-up reply between threads would fail.  Prints
 * "ok N" (signatures made) and exits 0, or prints the first error and exits
 * 1.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>

#include <smimestream/smimestream.h>

#define MAX_SIGNERS 8

static sms_signer *signers[MAX_SIGNERS];
static size_t n_signers;
static int rounds;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int failures, made;

static void *worker(void *arg)
{
    for (int r = 0; r < rounds; r++) {
        for (size_t i = 0; i < n_signers; i++) {
            uint8_t tbs[200], digest[32], sig[SMS_SIGNATURE_MAX];
            size_t sig_len = sizeof sig;
            char err[512] = "";
            sms_sig_scheme scheme;
            if (gnutls_rnd(GNUTLS_RND_NONCE, tbs, sizeof tbs) < 0 ||
                gnutls_hash_fast(GNUTLS_DIG_SHA256, tbs, sizeof tbs, digest) < 0)
                abort();
            tbs[0] = 0x31;
            int rc = sms_signer_scheme(signers[i], 0, &scheme);
            if (rc == 0) {
                sms_sign_request req = {
                    .struct_size = sizeof req,
                    .scheme = scheme,
                    .digest = SMS_DIGEST_SHA256,
                    .tbs = tbs,
                    .tbs_len = sizeof tbs,
                    .tbs_digest = digest,
                    .tbs_digest_len = sizeof digest,
                };
                rc = sms_signer_sign(signers[i], &req, sig, &sig_len, err, sizeof err);
            }
            pthread_mutex_lock(&lock);
            if (rc < 0) {
                if (!failures++)
                    fprintf(stderr, "signer %zu: %s (%s)\n", i, err, sms_strerror(rc));
            } else {
                made++;
            }
            pthread_mutex_unlock(&lock);
        }
    }
    return arg;
}

int main(int argc, char **argv)
{
    if (argc < 4 || argc - 3 > MAX_SIGNERS) {
        fprintf(stderr, "usage: threads THREADS ROUNDS SPEC...\n");
        return 64;
    }
    int n_threads = atoi(argv[1]);
    rounds = atoi(argv[2]);
    if (n_threads < 1 || n_threads > 64 || rounds < 1)
        return 64;
    for (int i = 3; i < argc; i++) {
        char err[512] = "";
        sms_signer_options o = { .struct_size = sizeof o };
        int rc = sms_signer_open(argv[i], &o, &signers[n_signers], err, sizeof err);
        if (rc < 0) {
            fprintf(stderr, "%s: %s\n", argv[i], err);
            return 1;
        }
        n_signers++;
    }
    pthread_t t[64];
    for (int i = 0; i < n_threads; i++)
        if (pthread_create(&t[i], NULL, worker, NULL) != 0)
            return 1;
    for (int i = 0; i < n_threads; i++)
        pthread_join(t[i], NULL);
    for (size_t i = 0; i < n_signers; i++)
        sms_signer_unref(signers[i]);
    if (failures) {
        fprintf(stderr, "%d of %d signatures failed\n", failures, failures + made);
        return 1;
    }
    printf("ok %d\n", made);
    return 0;
}
