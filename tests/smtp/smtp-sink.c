/* smtp-sink: a fast SMTP sink for the transport benchmark.  Not installed.
 *
 *   smtp-sink PORT_FILE LOG_FILE [MB_PER_SECOND]
 *
 * Listens on 127.0.0.1 (a free port, written to PORT_FILE), answers every
 * command with success and throws the message data away as fast as the
 * socket delivers it (one read() into a 4 MiB buffer, one memmem() for the
 * end-of-data mark).  For each message it appends to LOG_FILE:
 *   msg first_byte_ns=N end_ns=N bytes=N
 * with CLOCK_REALTIME times of the first data byte and of the final dot.
 * With MB_PER_SECOND it reads message data no faster than that (10^6
 * bytes/s), like a client on a network link of that speed would see.
 * Postfix's smtp-sink reads line by line and is far slower than a client.
 * One connection at a time; runs until killed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF_SIZE (4u << 20)

static double rate; /* bytes per second, 0: as fast as possible */

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Sleep until `bytes` at `rate` since t0 are due. */
static void throttle(double t0, unsigned long long bytes)
{
    double due = t0 + (double)bytes / rate, now = mono();
    if (due > now) {
        double d = due - now;
        struct timespec ts = { (time_t)d, (long)((d - (double)(time_t)d) * 1e9) };
        nanosleep(&ts, NULL);
    }
}

static int say(int fd, const char *s)
{
    size_t n = strlen(s);
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Find CRLF.CRLF in carry (the previous up to 4 bytes) + p[0..n).  Returns
 * the offset in p just past the mark, or -1; updates carry. */
static ssize_t find_eod(char *carry, size_t *cl, const char *p, size_t n)
{
    static const char eod[] = "\r\n.\r\n";
    char tmp[8];
    size_t m = n < 4 ? n : 4;
    memcpy(tmp, carry, *cl);
    memcpy(tmp + *cl, p, m);
    const char *f = memmem(tmp, *cl + m, eod, 5);
    if (f)
        return (ssize_t)((size_t)(f - tmp) + 5 - *cl);
    f = memmem(p, n, eod, 5);
    if (f)
        return (ssize_t)((size_t)(f - p) + 5);
    if (n >= 4) {
        memcpy(carry, p + n - 4, 4);
        *cl = 4;
    } else {
        size_t keep = *cl + n > 4 ? 4 - n : *cl;
        memmove(carry, carry + *cl - keep, keep);
        memcpy(carry + keep, p, n);
        *cl = keep + n;
    }
    return -1;
}

static void serve(int fd, char *buf, FILE *log)
{
    size_t have = 0;
    if (say(fd, "220 sink ESMTP\r\n") < 0)
        return;
    for (;;) {
        char *nl = memchr(buf, '\n', have);
        if (!nl) {
            if (have == BUF_SIZE)
                return;
            ssize_t r = read(fd, buf + have, BUF_SIZE - have);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                return;
            have += (size_t)r;
            continue;
        }
        size_t len = (size_t)(nl - buf) + 1;
        char cmd[5] = { 0 };
        for (size_t i = 0; i < 4 && i < len; i++)
            cmd[i] = (char)(buf[i] & ~0x20);
        memmove(buf, buf + len, have - len);
        have -= len;
        int rc = 0;
        if (!strcmp(cmd, "EHLO"))
            rc = say(fd, "250-sink\r\n250-8BITMIME\r\n250 HELP\r\n");
        else if (!strcmp(cmd, "HELO") || !strcmp(cmd, "MAIL") || !strcmp(cmd, "RCPT") ||
                 !strcmp(cmd, "RSET") || !strcmp(cmd, "NOOP"))
            rc = say(fd, "250 OK\r\n");
        else if (!strcmp(cmd, "QUIT")) {
            say(fd, "221 bye\r\n");
            return;
        } else if (!strcmp(cmd, "DATA")) {
            if (say(fd, "354 go ahead\r\n") < 0)
                return;
            char carry[4] = { '\r', '\n' };
            size_t cl = 2;
            long long first = 0;
            unsigned long long bytes = 0;
            double t0 = mono();
            /* Small reads when throttled, so the pace is even. */
            size_t chunk = rate > 0 ? 64 * 1024 : BUF_SIZE;
            ssize_t end = find_eod(carry, &cl, buf, have);
            while (end < 0) {
                bytes += have;
                have = 0;
                if (rate > 0)
                    throttle(t0, bytes);
                ssize_t r = read(fd, buf, chunk);
                if (r < 0 && errno == EINTR)
                    continue;
                if (r <= 0)
                    return;
                if (!first)
                    first = now_ns();
                have = (size_t)r;
                end = find_eod(carry, &cl, buf, have);
            }
            bytes += (size_t)end;
            memmove(buf, buf + end, have - (size_t)end);
            have -= (size_t)end;
            fprintf(log, "msg first_byte_ns=%lld end_ns=%lld bytes=%llu\n", first, now_ns(),
                    bytes);
            fflush(log);
            rc = say(fd, "250 2.0.0 discarded\r\n");
        } else
            rc = say(fd, "502 5.5.1 not implemented\r\n");
        if (rc < 0)
            return;
    }
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: smtp-sink PORT_FILE LOG_FILE [MB_PER_SECOND]\n");
        return 64;
    }
    if (argc == 4)
        rate = atof(argv[3]) * 1e6;
    FILE *log = fopen(argv[2], "a");
    char *buf = malloc(BUF_SIZE);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t sl = sizeof sa;
    if (!log || !buf || ls < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
        bind(ls, (struct sockaddr *)&sa, sizeof sa) || listen(ls, 16) ||
        getsockname(ls, (struct sockaddr *)&sa, &sl)) {
        perror("smtp-sink");
        return 71;
    }
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", argv[1]);
    FILE *pf = fopen(tmp, "w");
    if (!pf || fprintf(pf, "%d\n", ntohs(sa.sin_port)) < 0 || fclose(pf) || rename(tmp, argv[1])) {
        perror("smtp-sink: port file");
        return 73;
    }
    for (;;) {
        int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR)
                continue;
            perror("smtp-sink: accept");
            return 71;
        }
        serve(fd, buf, log);
        close(fd);
    }
}
