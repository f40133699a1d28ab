/* smimestream: internals of digests, sources and signers (not installed). */
#ifndef SMIMESTREAM_SMS_CORE_PRIVATE_H
#define SMIMESTREAM_SMS_CORE_PRIVATE_H

#include <gnutls/gnutls.h>
#include <gnutls/abstract.h>

#include "sms-private.h"

/* digest.c */
SMS_HIDDEN gnutls_digest_algorithm_t sms__digest_gnutls(sms_digest d);
SMS_HIDDEN bool sms__digest_is_weak(sms_digest d);

/* source.c: read into buf; *ret_n == 0 at end.  SMS_ERR_IO with a message
 * on failure.  A read interrupted by a signal returns SMS__INTERRUPTED (a
 * positive value, never an error code) so that the caller can look at its
 * cancel/abort flags before trying again. */
#define SMS__INTERRUPTED 1
SMS_HIDDEN int sms__source_read(sms_source *src, void *buf, size_t cap, size_t *ret_n, char *err,
                                size_t err_size);

/* signer.c */
/* The digest that suits the key when the caller did not choose one. */
SMS_HIDDEN sms_digest sms__signer_default_digest(const sms_signer *signer);
/* The signer keeps the plugin module loaded until it is freed. */
SMS_HIDDEN void sms__signer_set_module(sms_signer *signer, void *dl_handle);
SMS_HIDDEN gnutls_sign_algorithm_t sms__sign_algorithm(sms_sig_scheme scheme, sms_digest d);

#endif
