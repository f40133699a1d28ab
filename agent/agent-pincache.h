/* smimestream-agent: the PIN cache.
 *
 * PINs per token (the `what` a signer plugin passes to its PIN callback,
 * e.g. "PKCS#11 token 'ci'"), kept in one locked, non-dumpable mapping.  An
 * entry is wiped when it was not used for idle-ttl seconds, max-ttl seconds
 * after it was stored, when the token says the PIN was wrong, and when the
 * cache is freed.  Thread-safe.  Never logs.
 */
#ifndef SMS_AGENT_PINCACHE_H
#define SMS_AGENT_PINCACHE_H

#include <stddef.h>

#include <glib.h>

#define AGENT_PIN_MAX 256

typedef struct agent_pincache agent_pincache;

/* idle_ttl 0 disables the cache (every lookup misses, nothing is kept). */
agent_pincache *agent_pincache_new(guint idle_ttl, guint max_ttl);
/* Wipes every entry.  Accepts NULL. */
void agent_pincache_free(agent_pincache *cache);

/* Copy the PIN for token into buf (size bytes, NUL-terminated) and count it
 * as used.  FALSE (buf untouched) when there is none or it expired. */
gboolean agent_pincache_lookup(agent_pincache *cache, const char *token, char *buf, size_t size);
void agent_pincache_store(agent_pincache *cache, const char *token, const char *pin);
void agent_pincache_forget(agent_pincache *cache, const char *token);
/* Wipe expired entries; returns how many are left. */
guint agent_pincache_expire(agent_pincache *cache);

/* Locked, non-dumpable memory for a secret in transit (AGENT_PIN_MAX
 * bytes); free wipes it. */
char *agent_secret_new(void);
void agent_secret_free(char *secret);

#endif
