/* smimestream: small internal helpers (buffers, error text, wiping). */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gnutls/gnutls.h>

#include "sms-private.h"

void sms__buf_init(sms__buf *b)
{
    memset(b, 0, sizeof *b);
}

void sms__buf_clear(sms__buf *b)
{
    b->len = 0;
}

void sms__buf_free(sms__buf *b)
{
    if (b->data) {
        sms__wipe(b->data, b->cap);
        free(b->data);
    }
    sms__buf_init(b);
}

bool sms__buf_reserve(sms__buf *b, size_t extra)
{
    if (b->failed)
        return false;
    if (extra <= b->cap - b->len)
        return true;
    if (extra > SIZE_MAX / 2 - b->len) {
        b->failed = true;
        return false;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra)
        cap *= 2;
    uint8_t *p = realloc(b->data, cap);
    if (!p) {
        b->failed = true;
        return false;
    }
    b->data = p;
    b->cap = cap;
    return true;
}

void sms__buf_append(sms__buf *b, const void *p, size_t n)
{
    if (n == 0 || !sms__buf_reserve(b, n))
        return;
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void sms__buf_puts(sms__buf *b, const char *s)
{
    sms__buf_append(b, s, strlen(s));
}

void sms__buf_printf(sms__buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !sms__buf_reserve(b, (size_t)n + 1)) {
        b->failed = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void sms__set_err(char *err, size_t err_size, const char *fmt, ...)
{
    if (!err || err_size == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_size, fmt, ap);
    va_end(ap);
}

void sms__wipe(void *p, size_t n)
{
    if (p && n)
        gnutls_memset(p, 0, n);
}
