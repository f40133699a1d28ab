/* smimestream-agent: the PIN cache (see agent-pincache.h). */
#include "agent-pincache.h"

#include <string.h>
#include <sys/mman.h>

#include <smimestream/smimestream.h>

#define SLOTS 32

typedef struct slot {
    char *token;          /* NULL: free */
    gint64 stored;        /* monotonic microseconds */
    gint64 used;
} slot;

struct agent_pincache {
    GMutex lock;
    gint64 idle_us, max_us;
    slot slots[SLOTS];
    char *pins;           /* SLOTS * AGENT_PIN_MAX, locked */
    size_t pins_size;
};

/* A private anonymous mapping: page-aligned for mlock, kept out of core
 * dumps, wiped before unmapping. */
static void *locked_alloc(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    (void)mlock(p, size); /* best effort: RLIMIT_MEMLOCK may be small */
#ifdef MADV_DONTDUMP
    (void)madvise(p, size, MADV_DONTDUMP);
#endif
    return p;
}

static void locked_free(void *p, size_t size)
{
    if (!p)
        return;
    sms_wipe(p, size);
    munlock(p, size);
    munmap(p, size);
}

char *agent_secret_new(void)
{
    return locked_alloc(AGENT_PIN_MAX);
}

void agent_secret_free(char *secret)
{
    locked_free(secret, AGENT_PIN_MAX);
}

agent_pincache *agent_pincache_new(guint idle_ttl, guint max_ttl)
{
    agent_pincache *c = g_new0(agent_pincache, 1);
    g_mutex_init(&c->lock);
    c->idle_us = (gint64)idle_ttl * G_USEC_PER_SEC;
    c->max_us = (gint64)(max_ttl ? max_ttl : idle_ttl) * G_USEC_PER_SEC;
    c->pins_size = SLOTS * AGENT_PIN_MAX;
    if (idle_ttl) {
        c->pins = locked_alloc(c->pins_size);
        if (!c->pins)
            c->idle_us = 0; /* no locked memory, no cache */
    }
    return c;
}

static void clear_slot(agent_pincache *c, int i)
{
    sms_wipe(c->pins + (size_t)i * AGENT_PIN_MAX, AGENT_PIN_MAX);
    g_free(c->slots[i].token);
    memset(&c->slots[i], 0, sizeof c->slots[i]);
}

void agent_pincache_free(agent_pincache *c)
{
    if (!c)
        return;
    for (int i = 0; i < SLOTS; i++)
        g_free(c->slots[i].token);
    locked_free(c->pins, c->pins_size);
    g_mutex_clear(&c->lock);
    g_free(c);
}

static gboolean expired(const agent_pincache *c, const slot *s, gint64 now)
{
    return now - s->used >= c->idle_us || now - s->stored >= c->max_us;
}

static int find(agent_pincache *c, const char *token)
{
    for (int i = 0; i < SLOTS; i++)
        if (c->slots[i].token && strcmp(c->slots[i].token, token) == 0)
            return i;
    return -1;
}

gboolean agent_pincache_lookup(agent_pincache *c, const char *token, char *buf, size_t size)
{
    if (!c->idle_us || !token)
        return FALSE;
    gboolean hit = FALSE;
    gint64 now = g_get_monotonic_time();
    g_mutex_lock(&c->lock);
    int i = find(c, token);
    if (i >= 0 && expired(c, &c->slots[i], now)) {
        clear_slot(c, i);
        i = -1;
    }
    const char *pin = i >= 0 ? c->pins + (size_t)i * AGENT_PIN_MAX : NULL;
    if (pin && strlen(pin) < size) {
        memcpy(buf, pin, strlen(pin) + 1);
        c->slots[i].used = now;
        hit = TRUE;
    }
    g_mutex_unlock(&c->lock);
    return hit;
}

void agent_pincache_store(agent_pincache *c, const char *token, const char *pin)
{
    if (!c->idle_us || !token || !pin || strlen(pin) >= AGENT_PIN_MAX)
        return;
    gint64 now = g_get_monotonic_time();
    g_mutex_lock(&c->lock);
    int i = find(c, token);
    if (i < 0) {
        /* A free slot, else the least recently used one. */
        int lru = 0;
        for (int k = 0; k < SLOTS; k++) {
            if (!c->slots[k].token) {
                i = k;
                break;
            }
            if (c->slots[k].used < c->slots[lru].used)
                lru = k;
        }
        if (i < 0) {
            clear_slot(c, lru);
            i = lru;
        }
        c->slots[i].token = g_strdup(token);
        c->slots[i].stored = now;
    }
    char *dst = c->pins + (size_t)i * AGENT_PIN_MAX;
    sms_wipe(dst, AGENT_PIN_MAX);
    memcpy(dst, pin, strlen(pin) + 1);
    c->slots[i].used = now;
    g_mutex_unlock(&c->lock);
}

void agent_pincache_forget(agent_pincache *c, const char *token)
{
    if (!c->pins || !token)
        return;
    g_mutex_lock(&c->lock);
    int i = find(c, token);
    if (i >= 0)
        clear_slot(c, i);
    g_mutex_unlock(&c->lock);
}

guint agent_pincache_expire(agent_pincache *c)
{
    guint left = 0;
    if (!c->pins)
        return 0;
    gint64 now = g_get_monotonic_time();
    g_mutex_lock(&c->lock);
    for (int i = 0; i < SLOTS; i++) {
        if (!c->slots[i].token)
            continue;
        if (expired(c, &c->slots[i], now))
            clear_slot(c, i);
        else
            left++;
    }
    g_mutex_unlock(&c->lock);
    return left;
}
