/* smimestream: attachment sources.  Each is read once, front to back. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sms-core-private.h"

struct sms_source {
    int fd;
    bool own_fd;
    bool fifo;          /* opened O_NONBLOCK by path: poll before reading */
    int64_t size;
    char *name;
    sms_source_read_func read;
    void *user_data;
    sms_destroy_func destroy;
};

/* What is left to read of a regular file (it may not be at offset 0). */
static int64_t fd_size(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        return -1;
    off_t pos = lseek(fd, 0, SEEK_CUR);
    if (pos < 0 || pos > st.st_size)
        pos = 0;
    return (int64_t)(st.st_size - pos);
}

static sms_source *source_alloc(void)
{
    sms_source *src = calloc(1, sizeof *src);
    if (src)
        src->fd = -1;
    return src;
}

int sms_source_new_fd(int fd, int own_fd, sms_source **ret_source)
{
    sms_return_val_if_fail(fd >= 0, SMS_ERR_INVALID_ARG);
    sms_return_val_if_fail(ret_source != NULL, SMS_ERR_INVALID_ARG);
    sms_source *src = source_alloc();
    if (!src)
        return SMS_ERR_NOMEM;
    src->fd = fd;
    src->own_fd = own_fd != 0;
    src->size = fd_size(fd);
    *ret_source = src;
    return SMS_OK;
}

int sms_source_new_path(const char *path, sms_source **ret_source, char *err, size_t err_size)
{
    sms_return_val_if_fail(path != NULL, SMS_ERR_INVALID_ARG);
    sms_return_val_if_fail(ret_source != NULL, SMS_ERR_INVALID_ARG);

    if (strcmp(path, "-") == 0) {
        int r = sms_source_new_fd(STDIN_FILENO, 0, ret_source);
        return r;
    }
    /* O_NONBLOCK so that opening a FIFO without a writer does not hang
     * here (a wrong PIN must fail before any writer shows up).  A FIFO keeps
     * O_NONBLOCK and is polled before each read: on Linux, poll() on a FIFO
     * reports neither data nor hang-up until a writer has come and gone,
     * whereas a plain read() would return a false end-of-file. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        int e = errno;
        sms__set_err(err, err_size, "cannot open attachment '%s': %s", path, strerror(e));
        return e == EACCES || e == EPERM || e == ENOENT || e == ENOTDIR ? SMS_ERR_NOINPUT
                                                                        : SMS_ERR_IO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        sms__set_err(err, err_size, "cannot examine attachment '%s': %s", path, strerror(errno));
        close(fd);
        return SMS_ERR_IO;
    }
    if (S_ISDIR(st.st_mode)) {
        sms__set_err(err, err_size, "attachment '%s' is a directory, not a file", path);
        close(fd);
        return SMS_ERR_NOINPUT;
    }
    bool fifo = S_ISFIFO(st.st_mode);
    if (!fifo) {
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0)
            (void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    }

    sms_source *src = NULL;
    int r = sms_source_new_fd(fd, 1, &src);
    if (r < 0) {
        close(fd);
        return r;
    }
    src->fifo = fifo;
    const char *base = strrchr(path, '/');
    src->name = strdup(base ? base + 1 : path);
    if (!src->name) {
        sms_source_free(src);
        return SMS_ERR_NOMEM;
    }
    *ret_source = src;
    return SMS_OK;
}

int sms_source_new_callback(sms_source_read_func read_func, void *user_data,
                            sms_destroy_func destroy, int64_t size, sms_source **ret_source)
{
    sms_return_val_if_fail(read_func != NULL, SMS_ERR_INVALID_ARG);
    sms_return_val_if_fail(ret_source != NULL, SMS_ERR_INVALID_ARG);
    sms_source *src = source_alloc();
    if (!src)
        return SMS_ERR_NOMEM;
    src->read = read_func;
    src->user_data = user_data;
    src->destroy = destroy;
    src->size = size < 0 ? -1 : size;
    *ret_source = src;
    return SMS_OK;
}

void sms_source_free(sms_source *src)
{
    if (!src)
        return;
    if (src->own_fd && src->fd >= 0)
        close(src->fd);
    if (src->destroy)
        src->destroy(src->user_data);
    free(src->name);
    free(src);
}

int64_t sms_source_get_size(const sms_source *src)
{
    sms_return_val_if_fail(src != NULL, -1);
    return src->size;
}

const char *sms_source_get_name(const sms_source *src)
{
    sms_return_val_if_fail(src != NULL, NULL);
    return src->name;
}

int sms__source_read(sms_source *src, void *buf, size_t cap, size_t *ret_n, char *err,
                     size_t err_size)
{
    if (src->read) {
        size_t n = 0;
        int r = src->read(src->user_data, buf, cap, &n, err, err_size);
        if (r < 0)
            return r;
        if (n > cap) {
            sms__set_err(err, err_size, "attachment source returned more than was asked for");
            return SMS_ERR_IO;
        }
        *ret_n = n;
        return SMS_OK;
    }
    /* One read() per call: a pipe gives what it has, which keeps the
     * message moving at the producer's pace. */
    ssize_t n;
    for (;;) {
        if (src->fifo) {
            struct pollfd pfd = { .fd = src->fd, .events = POLLIN };
            if (poll(&pfd, 1, -1) < 0) {
                if (errno == EINTR)
                    return SMS__INTERRUPTED;
                sms__set_err(err, err_size, "waiting for attachment %s failed: %s",
                             src->name ? src->name : "", strerror(errno));
                return SMS_ERR_IO;
            }
        }
        n = read(src->fd, buf, cap);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            /* A descriptor someone made non-blocking (a shell's stdin,
             * say): wait for data like a blocking read would. */
            struct pollfd pfd = { .fd = src->fd, .events = POLLIN };
            if (poll(&pfd, 1, -1) < 0 && errno == EINTR)
                return SMS__INTERRUPTED;
            continue;
        }
        break;
    }
    if (n < 0) {
        if (errno == EINTR)
            return SMS__INTERRUPTED;
        sms__set_err(err, err_size, "reading attachment%s%s failed: %s", src->name ? " " : "",
                     src->name ? src->name : "", strerror(errno));
        return SMS_ERR_IO;
    }
    *ret_n = (size_t)n;
    return SMS_OK;
}
