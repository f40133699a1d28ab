/* smimestream: small internal helpers (buffers, error text, wiping). */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

void sms__buf_vprintf(sms__buf *b, const char *fmt, va_list ap)
{
    va_list again;
    va_copy(again, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    if (n < 0 || !sms__buf_reserve(b, (size_t)n + 1)) {
        b->failed = true;
    } else {
        vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, again);
        b->len += (size_t)n;
    }
    va_end(again);
}

void sms__buf_printf(sms__buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sms__buf_vprintf(b, fmt, ap);
    va_end(ap);
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

void sms_wipe(void *p, size_t n)
{
    sms__wipe(p, n);
}

int sms_read_secret_file(const char *path, char *buf, size_t size, char *err, size_t err_size)
{
    sms_return_val_if_fail(path != NULL && buf != NULL && size > 1, SMS_ERR_INVALID_ARG);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        sms__set_err(err, err_size, "cannot open PIN file '%s': %s", path, strerror(errno));
        return SMS_ERR_NOINPUT;
    }
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, size - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            sms__set_err(err, err_size, "cannot read PIN file '%s': %s", path, strerror(errno));
            close(fd);
            sms__wipe(buf, size);
            return SMS_ERR_NOINPUT;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len == size - 1) {
            char extra;
            if (read(fd, &extra, 1) > 0) {
                sms__set_err(err, err_size, "PIN file '%s' is longer than %zu bytes", path,
                             size - 1);
                close(fd);
                sms__wipe(buf, size);
                sms__wipe(&extra, 1);
                return SMS_ERR_BAD_DATA;
            }
            break;
        }
    }
    close(fd);
    buf[len] = '\0';
    char *nl = strpbrk(buf, "\r\n");
    if (nl)
        *nl = '\0';
    return SMS_OK;
}
