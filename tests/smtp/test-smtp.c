/* SMTP transport tests against real servers on loopback.
 *
 * Servers: a scriptable aiosmtpd (smtpd.py; plain, STARTTLS+AUTH, smtps)
 * that stores every accepted message byte-exact, and a private Postfix
 * instance (postfix.sh; needs root).  Messages are built with the library,
 * signed by the software plugin with a key from tests/lib/mkpki.sh, fed from
 * pipes and callback sources, and sent with sms_smtp_send().  Every case
 * asserts the return code, the per-recipient results, and what the server
 * stored: nothing, or exactly one message that real verifiers accept
 * (msgcheck.py: openssl cms -verify, and byte-exact certtool and gpgsm)
 * with its attachment identical to what the source produced.
 *
 * Faults that happen "at a random point in the attachment" use
 * g_test_rand_int_range(): run with --seed to repeat a run.
 *
 * Environment (set by tests/smtp/meson.build): SMS_SMTP_SRCDIR (this
 * folder), SMS_SRCDIR (the source tree), SMS_PKI_DIR, SMIMESTREAM_PLUGIN_DIR,
 * TEST_TMP; KEEP_TMP=1 keeps the temporary directory.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>

#include <smimestream/smimestream.h>

#define MIB (1024u * 1024u)
/* Faults at a random point of a FAULT_ATT attachment (about 33 MB on the
 * wire).  A fault the server injects at byte K of DATA must hit a client
 * that is still sending, or the client has rightly nothing to report but
 * "possibly delivered": K stays below the message size minus what can be
 * in flight (smtpd.py's fixed 256 KiB receive buffer, the client's socket
 * send buffer, at most tcp_wmem's maximum, and a margin).  See
 * fault_max(). */
#define FAULT_ATT (24u * MIB)
#define FAULT_WIRE (32u * 1000 * 1000) /* a bit less than FAULT_ATT base64-encoded */
#define FAULT_MIN (64 * 1024)
#define USER "alice"
#define PASSWORD "correct horse"

typedef struct server {
    const char *name;
    GPid pid;
    int port;
    char *dir, *store, *control, *log, *url;
} server;

static struct {
    char *tmp, *srcdir, *smtpdir, *pki, *ca, *gpg_home;
    char *server_cert, *server_key;
    sms_signer *signer;
    server plain, tls, smtps;
    char *postfix_dir;
    int postfix_port, postfix_sub_port;
    bool postfix_failed;
} T;

/* ---- small helpers --------------------------------------------------------- */

/* Commands to run when the program dies (a failed assertion aborts,
 * g_error() may trap, meson sends SIGTERM on a timeout): Postfix and
 * gpg-agent daemonize and would outlive us.  The smtpd.py servers die with
 * us (PR_SET_PDEATHSIG). */
static char **emergency[4];
static int n_emergency;

static void add_emergency(char **argv)
{
    if (n_emergency < (int)G_N_ELEMENTS(emergency))
        emergency[n_emergency++] = argv;
}

static void on_fatal_signal(int sig)
{
    /* fork, execv and waitpid are async-signal-safe. */
    for (int i = n_emergency - 1; i >= 0; i--) {
        pid_t p = fork();
        if (p == 0) {
            execv(emergency[i][0], emergency[i]);
            _exit(127);
        }
        if (p > 0)
            waitpid(p, NULL, 0);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static void child_setup(gpointer data)
{
    (void)data;
    /* Servers must not outlive a test program that crashed. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
}

/* Run a shell command; returns its exit status, output in *ret_out. */
static int sh(char **ret_out, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static int sh(char **ret_out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *cmd = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    char *argv[] = { "/bin/sh", "-c", cmd, NULL };
    char *out = NULL, *err = NULL;
    int status = -1;
    GError *e = NULL;
    if (!g_spawn_sync(NULL, argv, NULL, G_SPAWN_DEFAULT, child_setup, NULL, &out, &err, &status,
                      &e)) {
        g_printerr("# cannot run %s: %s\n", cmd, e->message);
        g_error_free(e);
        g_free(cmd);
        return -1;
    }
    int rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (ret_out)
        *ret_out = g_strconcat(out, err, NULL);
    g_free(out);
    g_free(err);
    g_free(cmd);
    return rc;
}

static char *read_file(const char *path)
{
    char *s = NULL;
    if (!g_file_get_contents(path, &s, NULL, NULL))
        return g_strdup("");
    return s;
}

static int count_str(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

static double now(void)
{
    return g_get_monotonic_time() / 1e6;
}

/* ---- deterministic attachment data -------------------------------------- */

typedef struct gen {
    uint64_t x;
    uint64_t size, pos;
    uint8_t word[8];
    unsigned word_left;
    uint64_t fail_at, cancel_at, abort_at; /* act when pos reaches it; 0 never */
    sms_message *msg;
    gnutls_hash_hd_t hash;
    char hex[65];
} gen;

static void gen_init(gen *g, uint64_t seed, uint64_t size)
{
    memset(g, 0, sizeof *g);
    g->x = seed * 2654435761u + 88172645463325252ull;
    g->size = size;
    g_assert_cmpint(gnutls_hash_init(&g->hash, GNUTLS_DIG_SHA256), ==, 0);
}

static void gen_fill(gen *g, uint8_t *p, size_t n)
{
    while (n) {
        if (!g->word_left) {
            g->x ^= g->x >> 12;
            g->x ^= g->x << 25;
            g->x ^= g->x >> 27;
            uint64_t v = g->x * 2685821657736338717ull;
            memcpy(g->word, &v, 8);
            g->word_left = 8;
        }
        size_t take = MIN(n, g->word_left);
        memcpy(p, g->word + 8 - g->word_left, take);
        g->word_left -= (unsigned)take;
        p += take;
        n -= take;
    }
}

/* Produce up to cap bytes; hashes what it returns. */
static size_t gen_next(gen *g, uint8_t *p, size_t cap)
{
    size_t n = (size_t)MIN((uint64_t)cap, g->size - g->pos);
    gen_fill(g, p, n);
    gnutls_hash(g->hash, p, n);
    g->pos += n;
    return n;
}

static const char *gen_hex(gen *g)
{
    if (!g->hex[0]) {
        uint8_t d[32];
        gnutls_hash_deinit(g->hash, d);
        g->hash = NULL;
        for (int i = 0; i < 32; i++)
            snprintf(g->hex + 2 * i, 3, "%02x", d[i]);
    }
    return g->hex;
}

static void gen_clear(gen *g)
{
    if (g->hash)
        gnutls_hash_deinit(g->hash, NULL);
    g->hash = NULL;
}

static int gen_read(void *user_data, void *buf, size_t cap, size_t *ret_n, char *err,
                    size_t err_size)
{
    gen *g = user_data;
    if (g->fail_at && g->pos >= g->fail_at) {
        snprintf(err, err_size, "scanner jammed after %llu bytes", (unsigned long long)g->pos);
        return SMS_ERR_IO;
    }
    if (g->cancel_at && g->pos >= g->cancel_at)
        sms_message_cancel(g->msg);
    if (g->abort_at && g->pos >= g->abort_at)
        sms_message_abort(g->msg);
    *ret_n = gen_next(g, buf, cap);
    return 0;
}

static sms_source *gen_source(gen *g)
{
    sms_source *src = NULL;
    g_assert_cmpint(sms_source_new_callback(gen_read, g, NULL, -1, &src), ==, 0);
    return src;
}

/* A writer thread feeding a pipe: the attachment comes from a pipe, like a
 * scanner's output. */
typedef struct pipe_writer {
    pthread_t thread;
    int fd;
    gen g;
} pipe_writer;

static void *pipe_writer_main(void *p)
{
    pipe_writer *w = p;
    uint8_t *buf = g_malloc(256 * 1024);
    size_t n;
    while ((n = gen_next(&w->g, buf, 256 * 1024)) > 0) {
        for (size_t off = 0; off < n;) {
            ssize_t r = write(w->fd, buf + off, n - off);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0)
                goto out; /* the reader went away */
            off += (size_t)r;
        }
    }
out:
    close(w->fd);
    g_free(buf);
    return NULL;
}

static sms_source *pipe_source(pipe_writer *w, uint64_t seed, uint64_t size)
{
    int fds[2];
    g_assert_cmpint(pipe2(fds, O_CLOEXEC), ==, 0);
    gen_init(&w->g, seed, size);
    w->fd = fds[1];
    g_assert_cmpint(pthread_create(&w->thread, NULL, pipe_writer_main, w), ==, 0);
    sms_source *src = NULL;
    g_assert_cmpint(sms_source_new_fd(fds[0], 1, &src), ==, 0);
    g_assert_cmpint(sms_source_get_size(src), ==, -1);
    return src;
}

/* ---- the aiosmtpd server ------------------------------------------------------ */

static void server_start(server *s, const char *name, const char *scheme, const char *extra)
{
    if (s->pid)
        return;
    s->name = name;
    s->dir = g_build_filename(T.tmp, name, NULL);
    s->store = g_build_filename(s->dir, "store", NULL);
    s->control = g_build_filename(s->dir, "control.json", NULL);
    s->log = g_build_filename(s->dir, "log.jsonl", NULL);
    char *portfile = g_build_filename(s->dir, "port", NULL);
    g_assert_cmpint(g_mkdir_with_parents(s->store, 0755), ==, 0);
    char *cmd = g_strdup_printf("exec /usr/bin/python3 '%s/smtpd.py' --port-file '%s' --store '%s' "
                                "--control '%s' --log '%s' %s >'%s/server.out' 2>&1",
                                T.smtpdir, portfile, s->store, s->control, s->log, extra, s->dir);
    char *argv[] = { "/bin/sh", "-c", cmd, NULL };
    GError *e = NULL;
    if (!g_spawn_async(NULL, argv, NULL, G_SPAWN_DO_NOT_REAP_CHILD, child_setup, NULL, &s->pid,
                       &e))
        g_error("cannot start smtpd.py: %s", e->message);
    char *port = NULL;
    for (int i = 0; i < 400 && !port; i++) {
        if (!g_file_get_contents(portfile, &port, NULL, NULL))
            g_usleep(50000);
    }
    if (!port) {
        char *out = read_file(g_build_filename(s->dir, "server.out", NULL));
        g_error("smtpd.py (%s) did not start: %s", name, out);
    }
    s->port = atoi(port);
    s->url = g_strdup_printf("%s://127.0.0.1:%d", scheme, s->port);
    g_test_message("%s server: %s (%s)", name, s->url, s->dir);
    g_free(port);
    g_free(portfile);
    g_free(cmd);
}

static void server_stop(server *s)
{
    if (!s->pid)
        return;
    kill(s->pid, SIGTERM);
    waitpid(s->pid, NULL, 0);
    g_spawn_close_pid(s->pid);
    s->pid = 0;
}

static void need_tls_material(void)
{
    if (T.server_cert)
        return;
    char *dir = g_build_filename(T.tmp, "tls", NULL);
    g_mkdir_with_parents(dir, 0755);
    char *out = NULL;
    /* A server certificate for 127.0.0.1 and localhost from the test CA. */
    int rc = sh(&out,
                "set -e; cd '%s'; export OPENSSL_CONF=/dev/null;"
                "openssl req -new -newkey rsa:2048 -nodes -keyout server.key -out server.csr "
                "  -subj /CN=localhost 2>&1;"
                "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nbasicConstraints=critical,"
                "CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > server.ext;"
                "openssl x509 -req -in server.csr -CA '%s/ca.pem' -CAkey '%s/ca.key' "
                "  -set_serial 0x$(od -An -N8 -tx1 /dev/urandom | tr -d ' \\n') -days 30 "
                "  -extfile server.ext -out server.pem 2>&1",
                dir, T.pki, T.pki);
    if (rc != 0)
        g_error("cannot make the server certificate: %s", out);
    T.server_cert = g_build_filename(dir, "server.pem", NULL);
    T.server_key = g_build_filename(dir, "server.key", NULL);
    g_free(out);
    g_free(dir);
}

static server *need_plain(void)
{
    server_start(&T.plain, "plain", "smtp", "");
    return &T.plain;
}

static server *need_tls(void)
{
    need_tls_material();
    char *extra = g_strdup_printf("--tls-cert '%s' --tls-key '%s' --auth '%s:%s'", T.server_cert,
                                  T.server_key, USER, PASSWORD);
    server_start(&T.tls, "starttls", "smtp", extra);
    g_free(extra);
    return &T.tls;
}

static server *need_smtps(void)
{
    need_tls_material();
    char *extra = g_strdup_printf("--tls-cert '%s' --tls-key '%s' --smtps --auth '%s:%s'",
                                  T.server_cert, T.server_key, USER, PASSWORD);
    server_start(&T.smtps, "smtps", "smtps", extra);
    g_free(extra);
    return &T.smtps;
}

/* Wait until the server has seen every connection close (it stores a
 * message before it answers, and drops a broken one when the connection
 * goes), so that its store and log are final. */
static void server_wait_idle(server *s)
{
    for (int i = 0; i < 1000; i++) {
        char *log = read_file(s->log);
        int open_ = count_str(log, "\"event\": \"connect\"");
        int closed = count_str(log, "\"event\": \"closed\"");
        g_free(log);
        if (open_ == closed)
            return;
        g_usleep(20000);
    }
    g_error("%s server: a connection did not close within 20 s", s->name);
}

static void clear_dir(const char *dir)
{
    GDir *d = g_dir_open(dir, 0, NULL);
    const char *n;
    while (d && (n = g_dir_read_name(d)) != NULL) {
        char *p = g_build_filename(dir, n, NULL);
        g_unlink(p);
        g_free(p);
    }
    if (d)
        g_dir_close(d);
}

/* Start a case: previous connections done, empty store and log, control. */
static void case_begin(server *s, const char *control_json)
{
    server_wait_idle(s);
    clear_dir(s->store);
    /* In place: the server keeps the file open (O_APPEND). */
    g_assert_cmpint(truncate(s->log, 0), ==, 0);
    g_assert_true(g_file_set_contents(s->control, control_json, -1, NULL));
}

static int store_count(server *s)
{
    server_wait_idle(s);
    int n = 0;
    GDir *d = g_dir_open(s->store, 0, NULL);
    const char *name;
    while (d && (name = g_dir_read_name(d)) != NULL)
        if (g_str_has_suffix(name, ".eml"))
            n++;
    if (d)
        g_dir_close(d);
    return n;
}

static char *store_path(server *s, int n, const char *ext)
{
    char *name = g_strdup_printf("%d.%s", n, ext);
    char *p = g_build_filename(s->store, name, NULL);
    g_free(name);
    return p;
}

static char *read_stored(server *s, int n, const char *ext)
{
    char *p = store_path(s, n, ext);
    char *text = read_file(p);
    g_free(p);
    return text;
}

static char *server_log(server *s)
{
    return read_file(s->log);
}

/* ---- checking a stored message ---------------------------------------------- */

typedef struct check {
    int n_parts;
    char *type[8], *name[8], *sha[8];
    uint64_t size[8];
    bool partial;
    GString *notice;
    char *output;
    bool ok;
} check;

static void check_message(const char *path, bool text, bool all_verifiers, check *c)
{
    memset(c, 0, sizeof *c);
    c->notice = g_string_new("");
    int rc = sh(&c->output, "/usr/bin/python3 '%s/msgcheck.py' '%s' --ca '%s' %s %s%s%s",
                T.smtpdir, path, T.ca, text ? "--text" : "",
                all_verifiers ? "--certtool --gpgsm-home '" : "",
                all_verifiers ? T.gpg_home : "", all_verifiers ? "'" : "");
    char **lines = g_strsplit(c->output, "\n", -1);
    for (char **l = lines; *l; l++) {
        if (g_str_has_prefix(*l, "part ") && c->n_parts < 8) {
            char **f = g_strsplit(*l, " ", 6);
            if (g_strv_length(f) == 6) {
                int i = c->n_parts++;
                c->type[i] = g_strdup(f[2]);
                c->name[i] = g_strdup(f[3]);
                c->size[i] = g_ascii_strtoull(f[4], NULL, 10);
                c->sha[i] = g_strdup(f[5]);
            }
            g_strfreev(f);
        } else if (strcmp(*l, "partial 1") == 0) {
            c->partial = true;
        } else if (g_str_has_prefix(*l, "notice ")) {
            g_string_append_printf(c->notice, "%s\n", *l + 7);
        }
    }
    g_strfreev(lines);
    c->ok = rc == 0 && strstr(c->output, "\nok\n") != NULL;
    if (!c->ok)
        g_test_message("msgcheck %s (exit %d):\n%s", path, rc, c->output);
}

static void check_clear(check *c)
{
    for (int i = 0; i < c->n_parts; i++) {
        g_free(c->type[i]);
        g_free(c->name[i]);
        g_free(c->sha[i]);
    }
    g_string_free(c->notice, TRUE);
    g_free(c->output);
}

/* Exactly one message stored; it verifies and its attachment is g's data. */
static void assert_one_message(server *s, gen *g, const char *att_name, bool all_verifiers)
{
    g_assert_cmpint(store_count(s), ==, 1);
    char *path = store_path(s, 1, "eml");
    check c;
    check_message(path, false, all_verifiers, &c);
    g_assert_true(c.ok);
    g_assert_cmpint(c.n_parts, >=, 2);
    g_assert_cmpstr(c.type[0], ==, "text/plain");
    g_assert_cmpstr(c.name[1], ==, att_name);
    g_assert_cmpuint(c.size[1], ==, g->pos);
    g_assert_cmpstr(c.sha[1], ==, gen_hex(g));
    g_assert_false(c.partial);
    check_clear(&c);
    g_free(path);
}

/* ---- building and sending ------------------------------------------------------ */

static sms_message *new_message(sms_source *src, const char *att_name)
{
    sms_message *m = sms_message_new();
    g_assert_nonnull(m);
    g_assert_cmpint(sms_message_set_from(m, "Scanner <scanner@example.org>"), ==, 0);
    g_assert_cmpint(sms_message_add_to(m, "office@example.org"), ==, 0);
    g_assert_cmpint(sms_message_set_subject(m, "Scanned document"), ==, 0);
    g_assert_cmpint(sms_message_set_body(m, "The scanned document is attached.\n", 34), ==, 0);
    if (src)
        g_assert_cmpint(sms_message_add_attachment(m, src, att_name, "application/pdf"), ==, 0);
    g_assert_cmpint(sms_message_set_signer(m, T.signer), ==, 0);
    return m;
}

static sms_smtp *new_smtp(server *s, unsigned flags)
{
    sms_smtp *x = sms_smtp_new();
    g_assert_nonnull(x);
    g_assert_cmpint(sms_smtp_set_url(x, s->url), ==, 0);
    g_assert_cmpint(sms_smtp_set_flags(x, flags), ==, 0);
    g_assert_cmpint(sms_smtp_set_timeouts(x, 5, 10), ==, 0);
    if (strncmp(s->url, "smtps", 5) == 0 || s == &T.tls)
        g_assert_cmpint(sms_smtp_set_cacert(x, T.ca), ==, 0);
    return x;
}

static void assert_rcpt(sms_smtp *x, size_t i, const char *addr, sms_rcpt_status status,
                        int code)
{
    sms_rcpt_result r = { .struct_size = sizeof r };
    g_assert_cmpint(sms_smtp_get_recipient(x, i, &r), ==, 0);
    g_assert_cmpstr(r.address, ==, addr);
    g_assert_cmpint(r.status, ==, status);
    g_assert_cmpint(r.reply_code, ==, code);
    g_assert_nonnull(r.reply_text);
}

#define expect_send(x, m, want) expect_send_at(__LINE__, (x), (m), (want))

static int expect_send_at(int line, sms_smtp *x, sms_message *m, int want)
{
    int rc = sms_smtp_send(x, m);
    if (rc != want)
        g_error("line %d: sms_smtp_send returned %d (%s), expected %d (%s): %s", line, rc,
                sms_strerror(rc), want, sms_strerror(want), sms_smtp_last_error(x));
    return rc;
}

static void assert_error_mentions(sms_smtp *x, const char *what)
{
    const char *e = sms_smtp_last_error(x);
    if (!strstr(e, what))
        g_error("last error \"%s\" does not mention \"%s\"", e, what);
}

/* What the transport reported through its progress callback. */
typedef struct recorder {
    sms_smtp *smtp;
    uint64_t abort_at;          /* sms_smtp_abort() when the source reached it */
    sms_smtp_phase order[16];
    int n_order;
    uint64_t chunks;
} recorder;

static void record_progress(sms_smtp_phase phase, const sms_message *msg, void *user_data)
{
    recorder *r = user_data;
    if (r->n_order == 0 || r->order[r->n_order - 1] != phase) {
        if (r->n_order < 16)
            r->order[r->n_order++] = phase;
    }
    if (phase == SMS_SMTP_PHASE_STREAMING) {
        r->chunks++;
        sms_progress p = { .struct_size = sizeof p };
        g_assert_cmpint(sms_message_get_progress(msg, &p), ==, 0);
        if (r->abort_at && p.source_bytes >= r->abort_at)
            sms_smtp_abort(r->smtp);
    }
}

static uint64_t source_bytes(const sms_message *m)
{
    sms_progress p = { .struct_size = sizeof p };
    g_assert_cmpint(sms_message_get_progress(m, &p), ==, 0);
    return p.source_bytes;
}

/* GLib reseeds its test generator for every test case, so mix in the
 * test's path: each case gets its own point, repeatable with --seed. */
static int fault_max(void)
{
    long wmem_max = 4L << 20;
    char *text = read_file("/proc/sys/net/ipv4/tcp_wmem");
    long a, b, c;
    if (sscanf(text, "%ld %ld %ld", &a, &b, &c) == 3)
        wmem_max = c;
    g_free(text);
    long max = (long)FAULT_WIRE - wmem_max - (6L << 20);
    if (max > 20L * 1000 * 1000)
        max = 20L * 1000 * 1000;
    return (int)max;
}

/* Skips the test when the socket buffers could hold the whole message. */
static bool fault_range_ok(void)
{
    if (fault_max() < (int)(2 * MIB)) {
        g_test_skip("the TCP send buffer (tcp_wmem) can hold the whole test message");
        return false;
    }
    return true;
}

static int random_point(int lo, int hi)
{
    unsigned salt = g_str_hash(g_test_get_path()) % 97;
    int k = g_test_rand_int_range(lo, hi);
    while (salt--)
        k = g_test_rand_int_range(lo, hi);
    g_test_message("fault at byte %d", k);
    return k;
}

/* ---- delivery -------------------------------------------------------------------- */

static void test_deliver_64mib_pipe(void)
{
    server *s = need_plain();
    case_begin(s, "{}");
    pipe_writer w;
    sms_source *src = pipe_source(&w, 64, 64u * MIB);
    sms_message *m = new_message(src, "scan.pdf");
    g_assert_cmpint(sms_message_add_cc(m, "Boss <boss@example.org>"), ==, 0);
    sms_smtp *x = new_smtp(s, 0);
    g_assert_cmpint(sms_smtp_add_bcc(x, "archive@example.org"), ==, 0);
    recorder rec = { .smtp = x };
    sms_smtp_set_progress(x, record_progress, &rec);

    double t0 = now();
    int rc = sms_smtp_send(x, m);
    double t1 = now();
    if (rc != 0)
        g_error("send failed: %s", sms_smtp_last_error(x));
    pthread_join(w.thread, NULL);
    g_test_message("64 MiB from a pipe through aiosmtpd: %.2f s", t1 - t0);

    g_assert_cmpint(sms_smtp_get_phase(x), ==, SMS_SMTP_PHASE_DONE);
    g_assert_cmpuint(sms_smtp_get_recipient_count(x), ==, 3);
    assert_rcpt(x, 0, "office@example.org", SMS_RCPT_ACCEPTED, 250);
    assert_rcpt(x, 1, "boss@example.org", SMS_RCPT_ACCEPTED, 250);
    assert_rcpt(x, 2, "archive@example.org", SMS_RCPT_ACCEPTED, 250);
    g_assert_true(g_str_has_prefix(sms_smtp_last_reply(x), "250 "));
    g_assert_cmpstr(sms_smtp_last_error(x), ==, "");
    /* The phases in order, with a progress call per chunk. */
    static const sms_smtp_phase want[] = { SMS_SMTP_PHASE_CONNECTING, SMS_SMTP_PHASE_ENVELOPE,
                                           SMS_SMTP_PHASE_STREAMING, SMS_SMTP_PHASE_WAITING,
                                           SMS_SMTP_PHASE_DONE };
    g_assert_cmpint(rec.n_order, ==, G_N_ELEMENTS(want));
    for (int i = 0; i < rec.n_order; i++)
        g_assert_cmpint(rec.order[i], ==, want[i]);
    g_assert_cmpuint(rec.chunks, >=, 64u * MIB / (256 * 1024));

    /* Stored byte-exact: openssl, certtool and gpgsm accept it, and the
     * attachment is the pipe's data. */
    assert_one_message(s, &w.g, "scan.pdf", true);
    /* Bcc only in the envelope. */
    char *env = read_stored(s, 1, "json");
    g_assert_nonnull(strstr(env, "\"archive@example.org\""));
    g_assert_nonnull(strstr(env, "\"boss@example.org\""));
    g_assert_nonnull(strstr(env, "\"mail_from\": \"scanner@example.org\""));
    char *msg = read_stored(s, 1, "eml");
    char *end = strstr(msg, "\r\n\r\n");
    g_assert_nonnull(end);
    *end = '\0';
    g_assert_null(strstr(msg, "archive@"));
    g_assert_null(g_strrstr(msg, "\r\nBcc:"));
    g_free(msg);
    g_free(env);
    gen_clear(&w.g);
    sms_smtp_free(x);
    sms_message_free(m);
}

static void test_deliver_cancel(void)
{
    server *s = need_plain();
    case_begin(s, "{}");
    gen g;
    gen_init(&g, 7, FAULT_ATT);
    g.cancel_at = (uint64_t)random_point(FAULT_MIN, FAULT_ATT - FAULT_MIN);
    sms_message *m = new_message(gen_source(&g), "scan.pdf");
    g.msg = m;
    sms_smtp *x = new_smtp(s, 0);
    int rc = sms_smtp_send(x, m);
    if (rc != 0)
        g_error("send failed: %s", sms_smtp_last_error(x));
    g_assert_true(sms_message_is_partial(m));
    g_assert_cmpuint(g.pos, >=, g.cancel_at);
    g_assert_cmpuint(g.pos, <, FAULT_ATT);
    assert_rcpt(x, 0, "office@example.org", SMS_RCPT_ACCEPTED, 250);

    /* One message, verified, holding exactly what was read, and the notice. */
    g_assert_cmpint(store_count(s), ==, 1);
    char *path = store_path(s, 1, "eml");
    check c;
    check_message(path, false, false, &c);
    g_assert_true(c.ok);
    g_assert_true(c.partial);
    g_assert_cmpint(c.n_parts, ==, 3);
    g_assert_cmpuint(c.size[1], ==, g.pos);
    g_assert_cmpstr(c.sha[1], ==, gen_hex(&g));
    g_assert_cmpstr(c.name[2], ==, "PARTIAL-MESSAGE.txt");
    g_assert_nonnull(strstr(c.notice->str, "PARTIAL"));
    char *sent = g_strdup_printf("%llu bytes", (unsigned long long)g.pos);
    if (!strstr(c.notice->str, sent))
        g_error("the notice does not say \"%s\":\n%s", sent, c.notice->str);
    g_free(sent);
    check_clear(&c);
    g_free(path);
    gen_clear(&g);
    sms_smtp_free(x);
    sms_message_free(m);
}

/* ---- recipients ------------------------------------------------------------------- */

static const char *RCPT_MIX = "{\"rcpt\": {\"nobody@example.org\": \"550 5.1.1 <nobody@example.org>: "
                              "Recipient address rejected: User unknown\"}}";

static void test_rcpt_mix_default(void)
{
    server *s = need_plain();
    case_begin(s, RCPT_MIX);
    gen g;
    gen_init(&g, 1, 1 * MIB);
    sms_message *m = new_message(gen_source(&g), "scan.pdf");
    g_assert_cmpint(sms_message_add_to(m, "nobody@example.org"), ==, 0);
    sms_smtp *x = new_smtp(s, 0);
    g_assert_cmpint(sms_smtp_add_bcc(x, "archive@example.org"), ==, 0);

    expect_send(x, m, SMS_ERR_SMTP_REFUSED);
    g_assert_cmpint(sms_error_exit_code(SMS_ERR_SMTP_REFUSED), ==, 69);
    /* Every recipient was tried and is reported. */
    g_assert_cmpuint(sms_smtp_get_recipient_count(x), ==, 3);
    assert_rcpt(x, 0, "office@example.org", SMS_RCPT_ACCEPTED, 250);
    assert_rcpt(x, 1, "nobody@example.org", SMS_RCPT_REFUSED, 550);
    assert_rcpt(x, 2, "archive@example.org", SMS_RCPT_ACCEPTED, 250);
    sms_rcpt_result r = { .struct_size = sizeof r };
    sms_smtp_get_recipient(x, 1, &r);
    g_assert_nonnull(strstr(r.reply_text, "User unknown"));
    assert_error_mentions(x, "nobody@example.org");
    assert_error_mentions(x, "550 5.1.1");
    /* Nothing delivered: the connection was dropped right after the 354,
     * before a single byte of the message; the source was never read and
     * the message was aborted. */
    g_assert_cmpint(store_count(s), ==, 0);
    char *log = server_log(s);
    g_assert_nonnull(strstr(log, "\"verb\": \"DATA\""));
    g_assert_nonnull(strstr(log, "\"in_data\": true, \"data_bytes\": 0"));
    g_free(log);
    g_assert_cmpuint(g.pos, ==, 0);
    g_assert_cmpuint(source_bytes(m), ==, 0);
    g_assert_cmpint(sms_message_get_error(m), ==, 0);
    size_t n;
    char b[16];
    g_assert_cmpint(sms_message_read(m, b, sizeof b, &n), ==, SMS_ERR_ABORTED);
    gen_clear(&g);
    sms_smtp_free(x);
    sms_message_free(m);
}

static void test_rcpt_mix_partial(void)
{
    server *s = need_plain();
    case_begin(s, RCPT_MIX);
    gen g;
    gen_init(&g, 2, 1 * MIB);
    sms_message *m = new_message(gen_source(&g), "scan.pdf");
    g_assert_cmpint(sms_message_add_cc(m, "nobody@example.org"), ==, 0);
    sms_smtp *x = new_smtp(s, SMS_SMTP_ALLOW_PARTIAL_RECIPIENTS);
    g_assert_cmpint(sms_smtp_add_bcc(x, "archive@example.org"), ==, 0);

    expect_send(x, m, 0);
    assert_rcpt(x, 0, "office@example.org", SMS_RCPT_ACCEPTED, 250);
    assert_rcpt(x, 1, "nobody@example.org", SMS_RCPT_REFUSED, 550);
    assert_rcpt(x, 2, "archive@example.org", SMS_RCPT_ACCEPTED, 250);
    assert_error_mentions(x, "delivered to 2 of 3 recipients");
    assert_one_message(s, &g, "scan.pdf", false);
    char *env = read_stored(s, 1, "json");
    g_assert_nonnull(strstr(env, "\"office@example.org\""));
    g_assert_nonnull(strstr(env, "\"archive@example.org\""));
    g_assert_null(strstr(env, "nobody@"));
    g_free(env);
    gen_clear(&g);
    sms_smtp_free(x);
    sms_message_free(m);
}

static void rcpt_all_refused(const char *control, int want, int code1, int code2)
{
    server *s = need_plain();
    case_begin(s, control);
    gen g;
    gen_init(&g, 3, 64 * 1024);
    sms_message *m = new_message(gen_source(&g), "scan.pdf");
    g_assert_cmpint(sms_message_add_to(m, "nobody@example.org"), ==, 0);
    /* With partial delivery allowed too: nobody is left to deliver to. */
    sms_smtp *x = new_smtp(s, SMS_SMTP_ALLOW_PARTIAL_RECIPIENTS);
    expect_send(x, m, want);
    assert_rcpt(x, 0, "office@example.org", SMS_RCPT_REFUSED, code1);
    assert_rcpt(x, 1, "nobody@example.org", SMS_RCPT_REFUSED, code2);
    assert_error_mentions(x, "every recipient");
    g_assert_cmpint(store_count(s), ==, 0);
    char *log = server_log(s);
    g_assert_null(strstr(log, "\"verb\": \"DATA\""));
    g_free(log);
    g_assert_cmpuint(g.pos, ==, 0);
    gen_clear(&g);
    sms_smtp_free(x);
    sms_message_free(m);
}

static void test_rcpt_all_refused_5xx(void)
{
    rcpt_all_refused("{\"rcpt\": {\"office@example.org\": \"550 5.1.1 no\", "
                     "\"nobody@example.org\": \"550 5.1.1 no\"}}",
                     SMS_ERR_SMTP_REFUSED, 550, 550);
}

static void test_rcpt_all_refused_4xx(void)
{
    rcpt_all_refused("{\"rcpt\": {\"office@example.org\": \"450 4.2.1 mailbox busy\", "
                     "\"nobody@example.org\": \"451 4.3.0 try later\"}}",
                     SMS_ERR_SMTP_TEMPFAIL, 450, 451);
}

/* ---- faults in the envelope: nothing sent, the message untouched ---------------- */

typedef struct envelope_fault {
    const char *control;
    int want;
    sms_rcpt_status rcpt_status;
    int rcpt_code;
    const char *mention;
} envelope_fault;

static void envelope_fault_case(gconstpointer data)
{
    const envelope_fault *f = data;
    server *s = need_plain();
    case_begin(s, f->control);
    gen g;
    gen_init(&g, 4, 1 * MIB);
    sms_message *m = new_message(gen_source(&g), "scan.pdf");
    sms_smtp *x = new_smtp(s, 0);
    expect_send(x, m, f->want);
    assert_rcpt(x, 0, "office@example.org", f->rcpt_status, f->rcpt_code);
    assert_error_mentions(x, f->mention);
    assert_error_mentions(x, "nothing was sent");
    g_assert_cmpint(store_count(s), ==, 0);
    /* The message was never read, so it can still be sent, e.g. later or
     * elsewhere: this time the server behaves. */
    g_assert_cmpuint(g.pos, ==, 0);
    g_assert_cmpint(sms_message_get_error(m), ==, 0);
    case_begin(s, "{}");
    expect_send(x, m, 0);
    assert_rcpt(x, 0, "office@example.org", SMS_RCPT_ACCEPTED, 250);
    assert_one_message(s, &g, "scan.pdf", false);
    gen_clear(&g);
    sms_smtp_free(x);
    sms_message_free(m);
}

static const envelope_fault fault_mail_4xx = {
    "{\"mail\": \"451 4.3.0 Temporary lookup failure\"}", SMS_ERR_SMTP_TEMPFAIL,
    SMS_RCPT_PENDING, 0, "451 4.3.0 Temporary lookup failure" };
static const envelope_fault fault_mail_5xx = {
    "{\"mail\": \"553 5.7.1 Sender address rejected\"}", SMS_ERR_SMTP_REFUSED,
    SMS_RCPT_PENDING, 0, "553 5.7.1 Sender address rejected" };
static const envelope_fault fault_rcpt_4xx = {
    "{\"rcpt\": {\"office@example.org\": \"450 4.2.0 Mailbox busy\"}}", SMS_ERR_SMTP_TEMPFAIL,
    SMS_RCPT_REFUSED, 450, "450 4.2.0 Mailbox busy" };
static const envelope_fault fault_rcpt_5xx = {
    "{\"rcpt\": {\"office@example.org\": \"550 5.1.1 User unknown\"}}", SMS_ERR_SMTP_REFUSED,
    SMS_RCPT_REFUSED, 550, "550 5.1.1 User unknown" };
static const envelope_fault fault_data_4xx = {
    "{\"data\": \"451 4.3.0 Queue full\"}", SMS_ERR_SMTP_TEMPFAIL, SMS_RCPT_ACCEPTED, 250,
    "451 4.3.0 Queue full" };
static const envelope_fault fault_data_5xx = {
    "{\"data\": \"554 5.5.1 No valid recipients\"}", SMS_ERR_SMTP_REFUSED, SMS_RCPT_ACCEPTED,
    250, "554 5.5.1 No valid recipients" };
static const envelope_fault fault_greeting_4xx = {
    "{\"greeting\": \"421 4.3.2 Service shutting down\"}", SMS_ERR_SMTP_TEMPFAIL,
    SMS_RCPT_PENDING, 0, "421 4.3.2" };
static const envelope_fault fault_greeting_5xx = {
    "{\"greeting\": \"554 5.7.1 No SMTP service here\"}", SMS_ERR_SMTP_REFUSED,
    SMS_RCPT_PENDING, 0, "554 5.7.1" };

/* ---- faults while streaming: nothing delivered --------------------------------- */

/* Send a FAULT_ATT attachment with the server scripted by control, expect
 * want, and check that nothing was stored. */
static void streaming_fault(const char *control, long timeout, int want, gen *g, recorder *rec,
                            sms_smtp **ret_x, sms_message **ret_m, double *ret_seconds)
{
    server *s = need_plain();
    case_begin(s, control);
    sms_message *m = new_message(gen_source(g), "scan.pdf");
    g->msg = m;
    sms_smtp *x = new_smtp(s, 0);
    if (timeout)
        g_assert_cmpint(sms_smtp_set_timeouts(x, 5, timeout), ==, 0);
    if (rec) {
        rec->smtp = x;
        sms_smtp_set_progress(x, record_progress, rec);
    }
    double t0 = now();
    int rc = sms_smtp_send(x, m);
    if (ret_seconds)
        *ret_seconds = now() - t0;
    if (rc != want)
        g_error("sms_smtp_send returned %d (%s), expected %d: %s", rc, sms_strerror(rc), want,
                sms_smtp_last_error(x));
    assert_rcpt(x, 0, "office@example.org", SMS_RCPT_ACCEPTED, 250);
    g_assert_cmpint(store_count(s), ==, 0);
    /* A failed transfer leaves the message failed, not half-read. */
    size_t n;
    char b[16];
    g_assert_cmpint(sms_message_read(m, b, sizeof b, &n), <, 0);
    g_assert_cmpint(sms_smtp_get_phase(x), ==, SMS_SMTP_PHASE_STREAMING);
    *ret_x = x;
    *ret_m = m;
}

static void test_fault_disconnect(void)
{
    if (!fault_range_ok())
        return;
    int k = random_point(FAULT_MIN, fault_max());
    char *control = g_strdup_printf("{\"disconnect_after\": %d}", k);
    gen g;
    gen_init(&g, 5, FAULT_ATT);
    sms_smtp *x;
    sms_message *m;
    streaming_fault(control, 0, SMS_ERR_SMTP_TEMPFAIL, &g, NULL, &x, &m, NULL);
    g_assert_cmpint(sms_error_exit_code(SMS_ERR_SMTP_TEMPFAIL), ==, 75);
    assert_error_mentions(x, "delivers nothing");
    char *log = server_log(&T.plain);
    char *at = g_strdup_printf("\"kind\": \"disconnect\", \"at\": %d", k);
    g_assert_nonnull(strstr(log, at));
    g_free(at);
    g_free(log);
    gen_clear(&g);
    g_free(control);
    sms_smtp_free(x);
    sms_message_free(m);
}

static void test_fault_stall(void)
{
    if (!fault_range_ok())
        return;
    int k = random_point(FAULT_MIN, fault_max());
    char *control = g_strdup_printf("{\"stall_after\": %d, \"stall_seconds\": 4}", k);
    gen g;
    gen_init(&g, 6, FAULT_ATT);
    sms_smtp *x;
    sms_message *m;
    double secs;
    streaming_fault(control, 1, SMS_ERR_SMTP_TEMPFAIL, &g, NULL, &x, &m, &secs);
    g_test_message("stall noticed after %.1f s (response timeout 1 s)", secs);
    g_assert_cmpfloat(secs, <, 6.0);
    assert_error_mentions(x, "stopped taking data");
    assert_error_mentions(x, "delivers nothing");
    char *log = server_log(&T.plain);
    g_assert_nonnull(strstr(log, "\"kind\": \"stall\""));
    g_free(log);
    gen_clear(&g);
    g_free(control);
    sms_smtp_free(x);
    sms_message_free(m);
}

static void test_fault_smtp_abort(void)
{
    gen g;
    gen_init(&g, 8, FAULT_ATT);
    recorder rec = { .abort_at = (uint64_t)random_point(FAULT_MIN, FAULT_ATT - FAULT_MIN) };
    sms_smtp *x;
    sms_message *m;
    streaming_fault("{}", 0, SMS_ERR_ABORTED, &g, &rec, &x, &m, NULL);
    g_assert_cmpuint(g.pos, >=, rec.abort_at);
    g_assert_cmpuint(g.pos, <, FAULT_ATT);
    assert_error_mentions(x, "aborted");
    char *log = server_log(&T.plain);
    g_assert_nonnull(strstr(log, "\"in_data\": true"));
    g_free(log);
    gen_clear(&g);
    sms_smtp_free(x);
    sms_message_free(m);
}

static void test_fault_message_abort(void)
{
    gen g;
    gen_init(&g, 9, FAULT_ATT);
    g.abort_at = (uint64_t)random_point(FAULT_MIN, FAULT_ATT - FAULT_MIN);
    sms_smtp *x;
    sms_message *m;
    streaming_fault("{}", 0, SMS_ERR_ABORTED, &g, NULL, &x, &m, NULL);
    assert_error_mentions(x, "aborted");
    gen_clear(&g);
    sms_smtp_free(x);
    sms_message_free(m);
}

/* A pipe whose writer dies only gives EOF (the attachment would just end),
 * so a failing source is a callback that returns an error, like a scanner
 * driver reporting a jam. */
static void test_fault_source_error(void)
{
    gen g;
    gen_init(&g, 10, FAULT_ATT);
    g.fail_at = (uint64_t)random_point(FAULT_MIN, FAULT_ATT - FAULT_MIN);
    sms_smtp *x;
    sms_message *m;
    streaming_fault("{}", 0, SMS_ERR_IO, &g, NULL, &x, &m, NULL);
    assert_error_mentions(x, "scanner jammed");
    assert_error_mentions(x, "delivers nothing");
    gen_clear(&g);
    sms_smtp_free(x);
    sms_message_free(m);
}

/* sms_smtp_abort() from another thread drops a stalled connection long
 * before the response timeout. */
typedef struct aborter {
    sms_smtp *x;
    server *s;
} aborter;

static void *aborter_main(void *p)
{
    aborter *a = p;
    for (int i = 0; i < 2000; i++) {
        char *log = server_log(a->s);
        bool stalled = strstr(log, "\"kind\": \"stall\"") != NULL;
        g_free(log);
        if (stalled)
            break;
        g_usleep(10000);
    }
    g_usleep(300000);
    sms_smtp_abort(a->x);
    return NULL;
}

static void test_fault_abort_stalled(void)
{
    if (!fault_range_ok())
        return;
    server *s = need_plain();
    int k = random_point(FAULT_MIN, fault_max());
    char *control = g_strdup_printf("{\"stall_after\": %d, \"stall_seconds\": 4}", k);
    case_begin(s, control);
    gen g;
    gen_init(&g, 11, FAULT_ATT);
    sms_message *m = new_message(gen_source(&g), "scan.pdf");
    sms_smtp *x = new_smtp(s, 0);
    g_assert_cmpint(sms_smtp_set_timeouts(x, 5, 60), ==, 0);
    aborter a = { x, s };
    pthread_t t;
    pthread_create(&t, NULL, aborter_main, &a);
    double t0 = now();
    expect_send(x, m, SMS_ERR_ABORTED);
    double secs = now() - t0;
    pthread_join(t, NULL);
    g_test_message("aborted after %.1f s", secs);
    g_assert_cmpfloat(secs, <, 10.0);
    g_assert_cmpint(store_count(s), ==, 0);
    /* The abort was for that send only: the next one goes through. */
    sms_message *m2 = new_message(NULL, NULL);
    case_begin(s, "{}");
    expect_send(x, m2, 0);
    g_assert_cmpint(store_count(s), ==, 1);
    sms_message_free(m2);
    gen_clear(&g);
    g_free(control);
    sms_smtp_free(x);
    sms_message_free(m);
}

/* ---- after the final dot ----------------------------------------------------------- */

static void final_reply_case(const char *control, int want)
{
    server *s = need_plain();
    case_begin(s, control);
    gen g;
    gen_init(&g, 12, 2 * MIB);
    sms_message *m = new_message(gen_source(&g), "scan.pdf");
    sms_smtp *x = new_smtp(s, 0);
    expect_send(x, m, want);
    assert_rcpt(x, 0, "office@example.org", SMS_RCPT_ACCEPTED, 250);
    assert_error_mentions(x, "after receiving it");
    assert_error_mentions(x, "not delivered");
    g_assert_cmpint(sms_smtp_get_phase(x), ==, SMS_SMTP_PHASE_WAITING);
    g_assert_cmpint(store_count(s), ==, 0);
    g_assert_cmpuint(g.pos, ==, 2 * MIB);
    gen_clear(&g);
    sms_smtp_free(x);
    sms_message_free(m);
}

static void test_fault_final_4xx(void)
{
    final_reply_case("{\"final\": \"451 4.3.0 Error: queue file write error\"}",
                     SMS_ERR_SMTP_TEMPFAIL);
}

static void test_fault_final_5xx(void)
{
    final_reply_case("{\"final\": \"554 5.7.1 Message rejected by content filter\"}",
                     SMS_ERR_SMTP_REFUSED);
}

static void test_fault_drop_after_dot(void)
{
    server *s = need_plain();
    case_begin(s, "{\"drop_after_dot\": true}");
    gen g;
    gen_init(&g, 13, 2 * MIB);
    sms_message *m = new_message(gen_source(&g), "scan.pdf");
    sms_smtp *x = new_smtp(s, 0);
    expect_send(x, m, SMS_ERR_SMTP_UNKNOWN);
    g_assert_cmpint(sms_error_exit_code(SMS_ERR_SMTP_UNKNOWN), !=, 0);
    assert_rcpt(x, 0, "office@example.org", SMS_RCPT_ACCEPTED, 250);
    assert_error_mentions(x, "possibly delivered");
    /* The last server reply is part of the report. */
    g_assert_true(g_str_has_prefix(sms_smtp_last_reply(x), "354 "));
    assert_error_mentions(x, "354 ");
    g_assert_cmpint(sms_smtp_get_phase(x), ==, SMS_SMTP_PHASE_WAITING);
    /* This server did take it: the whole, valid message. */
    assert_one_message(s, &g, "scan.pdf", false);
    gen_clear(&g);
    sms_smtp_free(x);
    sms_message_free(m);
}

/* No reply to the final dot within the response timeout: the server has
 * the whole message, so it may well deliver it. */
static void test_fault_no_reply_after_dot(void)
{
    server *s = need_plain();
    case_begin(s, "{\"final_delay\": 4}");
    gen g;
    gen_init(&g, 14, 1 * MIB);
    sms_message *m = new_message(gen_source(&g), "scan.pdf");
    sms_smtp *x = new_smtp(s, 0);
    g_assert_cmpint(sms_smtp_set_timeouts(x, 5, 1), ==, 0);
    double t0 = now();
    expect_send(x, m, SMS_ERR_SMTP_UNKNOWN);
    g_assert_cmpfloat(now() - t0, <, 3.5);
    assert_error_mentions(x, "no reply came in time");
    assert_error_mentions(x, "possibly delivered");
    g_assert_cmpint(sms_smtp_get_phase(x), ==, SMS_SMTP_PHASE_WAITING);
    assert_one_message(s, &g, "scan.pdf", false);
    gen_clear(&g);
    sms_smtp_free(x);
    sms_message_free(m);
}

/* An abort after the final dot cannot stop the delivery: it is reported as
 * such, not as "nothing delivered".  The abort comes from another thread
 * once the server has the whole message and sits on its reply. */
typedef struct late_aborter {
    sms_smtp *x;
    server *s;
} late_aborter;

static void *late_aborter_main(void *p)
{
    late_aborter *a = p;
    for (int i = 0; i < 1000; i++) {
        char *log = server_log(a->s);
        bool waiting = strstr(log, "\"kind\": \"final_delay\"") != NULL;
        g_free(log);
        if (waiting)
            break;
        g_usleep(10000);
    }
    sms_smtp_abort(a->x);
    return NULL;
}

static void test_fault_abort_while_waiting(void)
{
    server *s = need_plain();
    case_begin(s, "{\"final_delay\": 5}");
    gen g;
    gen_init(&g, 15, 1 * MIB);
    sms_message *m = new_message(gen_source(&g), "scan.pdf");
    sms_smtp *x = new_smtp(s, 0);
    g_assert_cmpint(sms_smtp_set_timeouts(x, 5, 30), ==, 0);
    late_aborter a = { x, s };
    pthread_t t;
    pthread_create(&t, NULL, late_aborter_main, &a);
    double t0 = now();
    expect_send(x, m, SMS_ERR_SMTP_UNKNOWN);
    g_assert_cmpfloat(now() - t0, <, 4.0);
    pthread_join(t, NULL);
    assert_error_mentions(x, "aborted while waiting");
    assert_error_mentions(x, "possibly delivered");
    /* Indeed delivered. */
    assert_one_message(s, &g, "scan.pdf", false);
    gen_clear(&g);
    sms_smtp_free(x);
    sms_message_free(m);
}

/* An abort from the progress callback that announces the wait comes just
 * before libcurl would send the final dot: nothing is delivered. */
static void abort_when_waiting(sms_smtp_phase phase, const sms_message *msg, void *user_data)
{
    if (phase == SMS_SMTP_PHASE_WAITING)
        sms_smtp_abort(user_data);
}

static void test_fault_abort_at_end(void)
{
    server *s = need_plain();
    case_begin(s, "{}");
    gen g;
    gen_init(&g, 16, 1 * MIB);
    sms_message *m = new_message(gen_source(&g), "scan.pdf");
    sms_smtp *x = new_smtp(s, 0);
    sms_smtp_set_progress(x, abort_when_waiting, x);
    expect_send(x, m, SMS_ERR_ABORTED);
    assert_error_mentions(x, "delivers nothing");
    g_assert_cmpuint(g.pos, ==, 1 * MIB);
    g_assert_cmpint(store_count(s), ==, 0);
    gen_clear(&g);
    sms_smtp_free(x);
    sms_message_free(m);
}

static void test_fault_connection_refused(void)
{
    /* A port nobody listens on. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t sl = sizeof sa;
    g_assert_cmpint(bind(fd, (struct sockaddr *)&sa, sizeof sa), ==, 0);
    g_assert_cmpint(getsockname(fd, (struct sockaddr *)&sa, &sl), ==, 0);
    char *url = g_strdup_printf("smtp://127.0.0.1:%d", ntohs(sa.sin_port));
    close(fd);
    sms_message *m = new_message(NULL, NULL);
    sms_smtp *x = sms_smtp_new();
    g_assert_cmpint(sms_smtp_set_url(x, url), ==, 0);
    expect_send(x, m, SMS_ERR_SMTP_TEMPFAIL);
    assert_rcpt(x, 0, "office@example.org", SMS_RCPT_PENDING, 0);
    assert_error_mentions(x, "cannot connect");
    g_assert_cmpint(sms_smtp_get_phase(x), ==, SMS_SMTP_PHASE_CONNECTING);
    g_free(url);
    sms_smtp_free(x);
    sms_message_free(m);
}

/* ---- STARTTLS, smtps:// and AUTH (aiosmtpd) --------------------------------------- */

static sms_smtp *auth_smtp(server *s, const char *password)
{
    sms_smtp *x = new_smtp(s, 0);
    if (password)
        g_assert_cmpint(sms_smtp_set_auth(x, USER, password), ==, 0);
    return x;
}

static void deliver_authenticated(server *s)
{
    case_begin(s, "{}");
    gen g;
    gen_init(&g, 20, 3 * MIB);
    sms_message *m = new_message(gen_source(&g), "scan.pdf");
    sms_smtp *x = auth_smtp(s, PASSWORD);
    int rc = sms_smtp_send(x, m);
    if (rc != 0)
        g_error("send failed: %s", sms_smtp_last_error(x));
    assert_rcpt(x, 0, "office@example.org", SMS_RCPT_ACCEPTED, 250);
    assert_one_message(s, &g, "scan.pdf", false);
    char *log = server_log(s);
    g_assert_nonnull(strstr(log, "\"verb\": \"AUTH\""));
    g_free(log);
    gen_clear(&g);
    sms_smtp_free(x);
    sms_message_free(m);
}

static void test_auth_starttls_ok(void)
{
    deliver_authenticated(need_tls());
}

static void test_auth_smtps_ok(void)
{
    deliver_authenticated(need_smtps());
}

/* An authentication failure: exit 77, nothing sent, no MAIL command. */
static void auth_fails(server *s, const char *control, const char *password, unsigned flags,
                       const char *mention, bool auth_sent)
{
    case_begin(s, control);
    gen g;
    gen_init(&g, 21, 64 * 1024);
    sms_message *m = new_message(gen_source(&g), "scan.pdf");
    sms_smtp *x = new_smtp(s, flags);
    if (password)
        g_assert_cmpint(sms_smtp_set_auth(x, USER, password), ==, 0);
    expect_send(x, m, SMS_ERR_SMTP_AUTH);
    g_assert_cmpint(sms_error_exit_code(SMS_ERR_SMTP_AUTH), ==, 77);
    assert_error_mentions(x, mention);
    assert_rcpt(x, 0, "office@example.org", SMS_RCPT_PENDING, 0);
    g_assert_cmpint(store_count(s), ==, 0);
    char *log = server_log(s);
    g_assert_null(strstr(log, "\"verb\": \"RCPT\""));
    if (auth_sent)
        g_assert_nonnull(strstr(log, "\"verb\": \"AUTH\""));
    else
        g_assert_null(strstr(log, "\"verb\": \"AUTH\""));
    g_free(log);
    g_assert_cmpuint(g.pos, ==, 0);
    gen_clear(&g);
    sms_smtp_free(x);
    sms_message_free(m);
}

static void test_auth_wrong_password(void)
{
    auth_fails(need_tls(), "{}", "wrong password", 0, "535 5.7.8", true);
}

static void test_auth_smtps_wrong_password(void)
{
    auth_fails(need_smtps(), "{}", "wrong password", 0, "535 5.7.8", true);
}

/* The server does not offer AUTH: libcurl would silently send without
 * authenticating.  We stop before MAIL FROM. */
static void test_auth_not_offered(void)
{
    server *s = need_tls();
    auth_fails(s, "{\"hide_auth\": true}", PASSWORD, 0, "does not offer authentication", false);
    char *log = server_log(s);
    g_assert_null(strstr(log, "\"verb\": \"MAIL\""));
    g_free(log);
}

/* Credentials imply TLS: a server without STARTTLS never sees them, nor
 * the message. */
static void test_auth_credentials_need_tls(void)
{
    server *s = need_plain();
    auth_fails(s, "{}", PASSWORD, 0, "STARTTLS", false);
    char *log = server_log(s);
    g_assert_null(strstr(log, "\"verb\": \"MAIL\""));
    g_free(log);
}

/* STARTTLS required by flag, no credentials, against a server that wants them. */
static void test_auth_required_not_given(void)
{
    server *s = need_tls();
    case_begin(s, "{}");
    sms_message *m = new_message(NULL, NULL);
    sms_smtp *x = new_smtp(s, SMS_SMTP_REQUIRE_STARTTLS);
    expect_send(x, m, SMS_ERR_SMTP_AUTH);
    assert_error_mentions(x, "530");
    assert_error_mentions(x, "user name and password");
    g_assert_cmpint(store_count(s), ==, 0);
    char *log = server_log(s);
    g_assert_nonnull(strstr(log, "\"verb\": \"STARTTLS\""));
    g_free(log);
    sms_smtp_free(x);
    sms_message_free(m);
}

static void test_auth_untrusted_certificate(void)
{
    server *s = need_tls();
    case_begin(s, "{}");
    sms_message *m = new_message(NULL, NULL);
    sms_smtp *x = new_smtp(s, 0);
    /* Trust some other certificate only. */
    char *other = g_build_filename(T.pki, "rsa2048.pem", NULL);
    g_assert_cmpint(sms_smtp_set_cacert(x, other), ==, 0);
    g_assert_cmpint(sms_smtp_set_auth(x, USER, PASSWORD), ==, 0);
    expect_send(x, m, SMS_ERR_SMTP_AUTH);
    assert_error_mentions(x, "certificate");
    g_assert_cmpint(store_count(s), ==, 0);
    char *log = server_log(s);
    g_assert_null(strstr(log, "\"verb\": \"AUTH\""));
    g_free(log);
    g_free(other);
    sms_smtp_free(x);
    sms_message_free(m);
}

/* ---- API guards ---------------------------------------------------------------------- */

static void test_api_config(void)
{
    sms_smtp_free(NULL);
    sms_smtp_abort(NULL);
    g_assert_cmpint(sms_smtp_get_phase(NULL), ==, SMS_SMTP_PHASE_IDLE);
    g_assert_cmpstr(sms_smtp_last_error(NULL), ==, "");
    g_assert_cmpstr(sms_smtp_last_reply(NULL), ==, "");
    g_assert_cmpuint(sms_smtp_get_recipient_count(NULL), ==, 0);

    sms_smtp *x = sms_smtp_new();
    g_assert_cmpint(sms_smtp_get_phase(x), ==, SMS_SMTP_PHASE_IDLE);
    g_assert_cmpint(sms_smtp_set_url(x, NULL), ==, SMS_ERR_INVALID_ARG);
    static const char *const bad_urls[] = {
        "http://mail.example.org", "mail.example.org:25", "smtp://", "smtp://:25",
        "smtp://mail.example.org:25/?x=1", "smtp://mail.example.org\r\nRCPT TO:<x@y>", "",
    };
    for (size_t i = 0; i < G_N_ELEMENTS(bad_urls); i++) {
        if (sms_smtp_set_url(x, bad_urls[i]) != SMS_ERR_INVALID_ARG)
            g_error("URL '%s' was accepted", bad_urls[i]);
        g_assert_cmpstr(sms_smtp_last_error(x), !=, "");
    }
    /* Credentials never come in the URL (they would end up in argv). */
    g_assert_cmpint(sms_smtp_set_url(x, "smtp://alice:secret@mail.example.org:587"), ==,
                    SMS_ERR_INVALID_ARG);
    assert_error_mentions(x, "user name or password");
    g_assert_cmpint(sms_smtp_set_url(x, "smtp://alice@mail.example.org"), ==, SMS_ERR_INVALID_ARG);
    g_assert_cmpint(sms_smtp_set_url(x, "smtp://mail.example.org:587"), ==, 0);
    g_assert_cmpint(sms_smtp_set_url(x, "SMTPS://[::1]:465"), ==, 0);
    g_assert_cmpint(sms_smtp_set_url(x, "smtp://mail.example.org/client.example.org"), ==, 0);

    g_assert_cmpint(sms_smtp_set_auth(x, NULL, "x"), ==, SMS_ERR_INVALID_ARG);
    g_assert_cmpint(sms_smtp_set_auth(x, "alice", NULL), ==, SMS_ERR_INVALID_ARG);
    g_assert_cmpint(sms_smtp_set_auth(x, "", "x"), ==, SMS_ERR_INVALID_ARG);
    g_assert_cmpint(sms_smtp_set_auth(x, "alice", "pw"), ==, 0);
    g_assert_cmpint(sms_smtp_set_auth(x, "alice", "pw2"), ==, 0);
    g_assert_cmpint(sms_smtp_set_auth(x, NULL, NULL), ==, 0);

    g_assert_cmpint(sms_smtp_set_cacert(x, "/nonexistent/ca.pem"), ==, SMS_ERR_NOINPUT);
    g_assert_cmpint(sms_smtp_set_cacert(x, NULL), ==, 0);
    g_assert_cmpint(sms_smtp_set_timeouts(x, -1, 0), ==, SMS_ERR_INVALID_ARG);
    g_assert_cmpint(sms_smtp_set_timeouts(x, 0, 0), ==, 0);
    g_assert_cmpint(sms_smtp_set_flags(x, 1u << 7), ==, SMS_ERR_INVALID_ARG);
    g_assert_cmpint(sms_smtp_set_progress(x, NULL, NULL), ==, 0);

    static const char *const good_bcc[] = { "a@example.org", "<a@example.org>",
                                            "Archive <archive@example.org>" };
    for (size_t i = 0; i < G_N_ELEMENTS(good_bcc); i++)
        g_assert_cmpint(sms_smtp_add_bcc(x, good_bcc[i]), ==, 0);
    static const char *const bad_bcc[] = { "nobody", "a b@example.org", "@example.org",
                                           "a@example.org\r\nRCPT TO:<x@example.org>",
                                           "<a@example.org", "a@b@c", "a@example.org>" };
    for (size_t i = 0; i < G_N_ELEMENTS(bad_bcc); i++)
        if (sms_smtp_add_bcc(x, bad_bcc[i]) != SMS_ERR_BAD_HEADER)
            g_error("Bcc '%s' was accepted", bad_bcc[i]);

    sms_rcpt_result r = { .struct_size = sizeof r };
    g_assert_cmpint(sms_smtp_get_recipient(x, 0, &r), ==, SMS_ERR_INVALID_ARG);
    sms_smtp_free(x);
}

/* Problems of the message are found before connecting. */
static void test_api_checks_before_connecting(void)
{
    server *s = need_plain();
    case_begin(s, "{}");
    sms_smtp *x = sms_smtp_new();
    sms_message *m = sms_message_new();
    sms_message_set_from(m, "scanner@example.org");
    sms_message_add_to(m, "office@example.org");
    /* No URL. */
    expect_send(x, m, SMS_ERR_INVALID_ARG);
    assert_error_mentions(x, "URL");
    g_assert_cmpint(sms_smtp_set_url(x, s->url), ==, 0);
    /* No signer. */
    expect_send(x, m, SMS_ERR_INVALID_ARG);
    assert_error_mentions(x, "signer");
    sms_message_free(m);
    /* Aborted before sending: nothing happens, and the abort is used up. */
    m = new_message(NULL, NULL);
    sms_smtp_abort(x);
    expect_send(x, m, SMS_ERR_ABORTED);
    sms_message_free(m);
    server_wait_idle(s);
    char *log = server_log(s);
    g_assert_null(strstr(log, "connect"));
    g_free(log);
    m = new_message(NULL, NULL);
    expect_send(x, m, 0);
    g_assert_cmpint(store_count(s), ==, 1);
    sms_rcpt_result r = { .struct_size = sizeof r - 1 };
    g_assert_cmpint(sms_smtp_get_recipient(x, 0, &r), ==, SMS_ERR_INVALID_ARG);
    r.struct_size = sizeof r;
    g_assert_cmpint(sms_smtp_get_recipient(x, 1, &r), ==, SMS_ERR_INVALID_ARG);
    /* A message is sent once: a second send of it is refused up front. */
    g_assert_cmpint(sms_smtp_send(x, m), ==, SMS_ERR_STATE);
    assert_error_mentions(x, "only once");
    sms_message_free(m);
    /* So is one somebody already read from. */
    m = new_message(NULL, NULL);
    char buf[100];
    size_t n;
    g_assert_cmpint(sms_message_read(m, buf, sizeof buf, &n), ==, 0);
    g_assert_cmpint(sms_smtp_send(x, m), ==, SMS_ERR_STATE);
    g_assert_cmpint(store_count(s), ==, 1);
    log = server_log(s);
    g_assert_cmpint(count_str(log, "\"event\": \"connect\""), ==, 1);
    g_free(log);
    sms_message_free(m);
    sms_smtp_free(x);
}

/* ---- Postfix ------------------------------------------------------------------------- */

static bool need_postfix(void)
{
    if (T.postfix_port)
        return true;
    if (T.postfix_failed) {
        g_test_skip("the Postfix instance did not start");
        return false;
    }
    if (geteuid() != 0 || !g_file_test("/usr/sbin/postfix", G_FILE_TEST_IS_EXECUTABLE)) {
        g_test_skip("a private Postfix instance needs root and postfix installed");
        return false;
    }
    need_tls_material();
    /* Postfix's users must be able to reach it: not under a 0700 tmp. */
    T.postfix_dir = g_strdup("/tmp/sms-postfix-XXXXXX");
    g_assert_nonnull(g_mkdtemp_full(T.postfix_dir, 0755));
    char *out = NULL;
    int rc = sh(&out, "bash '%s/postfix.sh' start '%s' '%s' '%s' '%s' '%s'", T.smtpdir,
                T.postfix_dir, T.server_cert, T.server_key, USER, PASSWORD);
    if (rc != 0 || sscanf(out, "%d %d", &T.postfix_port, &T.postfix_sub_port) != 2) {
        g_test_message("postfix.sh failed (exit %d): %s", rc, out);
        T.postfix_failed = true;
        T.postfix_port = 0;
        g_free(out);
        g_test_fail();
        return false;
    }
    char **stop = g_new0(char *, 5);
    stop[0] = g_strdup("/usr/sbin/postfix");
    stop[1] = g_strdup("-c");
    stop[2] = g_build_filename(T.postfix_dir, "conf", NULL);
    stop[3] = g_strdup("stop");
    add_emergency(stop);
    g_test_message("Postfix in %s: smtp port %d, submission port %d", T.postfix_dir,
                   T.postfix_port, T.postfix_sub_port);
    g_free(out);
    return true;
}

/* Wait for n messages in the Maildir; returns their paths. */
static GPtrArray *maildir_wait(int n)
{
    char *dir = g_build_filename(T.postfix_dir, "maildir", "all", "new", NULL);
    GPtrArray *files = g_ptr_array_new_with_free_func(g_free);
    for (int i = 0; i < 600 && (int)files->len < n; i++) {
        g_ptr_array_set_size(files, 0);
        GDir *d = g_dir_open(dir, 0, NULL);
        const char *name;
        while (d && (name = g_dir_read_name(d)) != NULL)
            g_ptr_array_add(files, g_build_filename(dir, name, NULL));
        if (d)
            g_dir_close(d);
        if ((int)files->len < n)
            g_usleep(50000);
    }
    g_free(dir);
    return files;
}

static void maildir_clear(void)
{
    char *dir = g_build_filename(T.postfix_dir, "maildir", "all", "new", NULL);
    clear_dir(dir);
    g_free(dir);
}

/* The Maildir copy has LF line ends (Postfix's local delivery writes Unix
 * text), so it is verified with openssl cms -verify in its default text
 * mode, which hashes the canonical CRLF form; byte-exact verifiers are not
 * applicable to it.  The attachment is compared after decoding. */
static void assert_maildir_message(const char *path, gen *g)
{
    char *raw = read_file(path);
    g_assert_null(strstr(raw, "\r\n"));
    g_free(raw);
    check c;
    check_message(path, true, false, &c);
    g_assert_true(c.ok);
    g_assert_cmpint(c.n_parts, ==, 2);
    g_assert_cmpuint(c.size[1], ==, g->pos);
    g_assert_cmpstr(c.sha[1], ==, gen_hex(g));
    check_clear(&c);
}

static void test_postfix_deliver(void)
{
    if (!need_postfix())
        return;
    maildir_clear();
    pipe_writer w;
    sms_message *m = new_message(pipe_source(&w, 30, 8 * MIB), "scan.pdf");
    sms_smtp *x = sms_smtp_new();
    char *url = g_strdup_printf("smtp://127.0.0.1:%d", T.postfix_port);
    g_assert_cmpint(sms_smtp_set_url(x, url), ==, 0);
    int rc = sms_smtp_send(x, m);
    if (rc != 0)
        g_error("send to Postfix failed: %s", sms_smtp_last_error(x));
    pthread_join(w.thread, NULL);
    assert_rcpt(x, 0, "office@example.org", SMS_RCPT_ACCEPTED, 250);
    g_assert_nonnull(strstr(sms_smtp_last_reply(x), "queued as"));
    GPtrArray *files = maildir_wait(1);
    g_assert_cmpuint(files->len, ==, 1);
    assert_maildir_message(files->pdata[0], &w.g);
    g_ptr_array_free(files, TRUE);
    gen_clear(&w.g);
    g_free(url);
    sms_smtp_free(x);
    sms_message_free(m);
}

static void test_postfix_starttls_auth(void)
{
    if (!need_postfix())
        return;
    maildir_clear();
    char *url = g_strdup_printf("smtp://127.0.0.1:%d", T.postfix_sub_port);

    /* A wrong password: 535, exit 77, nothing delivered. */
    sms_message *m = new_message(NULL, NULL);
    sms_smtp *x = sms_smtp_new();
    g_assert_cmpint(sms_smtp_set_url(x, url), ==, 0);
    g_assert_cmpint(sms_smtp_set_cacert(x, T.ca), ==, 0);
    g_assert_cmpint(sms_smtp_set_auth(x, USER, "wrong password"), ==, 0);
    int rc = sms_smtp_send(x, m);
    g_assert_cmpint(rc, ==, SMS_ERR_SMTP_AUTH);
    g_assert_cmpint(sms_error_exit_code(rc), ==, 77);
    assert_error_mentions(x, "535");
    assert_rcpt(x, 0, "office@example.org", SMS_RCPT_PENDING, 0);
    sms_smtp_free(x);
    sms_message_free(m);

    /* Without credentials this port refuses to relay. */
    m = new_message(NULL, NULL);
    x = sms_smtp_new();
    g_assert_cmpint(sms_smtp_set_url(x, url), ==, 0);
    g_assert_cmpint(sms_smtp_set_cacert(x, T.ca), ==, 0);
    g_assert_cmpint(sms_smtp_set_flags(x, SMS_SMTP_REQUIRE_STARTTLS), ==, 0);
    rc = sms_smtp_send(x, m);
    g_test_message("without credentials: %d %s", rc, sms_smtp_last_error(x));
    g_assert_cmpint(rc, <, 0);
    sms_smtp_free(x);
    sms_message_free(m);

    /* The right password: delivered. */
    gen g;
    gen_init(&g, 31, 1 * MIB);
    m = new_message(gen_source(&g), "scan.pdf");
    x = sms_smtp_new();
    g_assert_cmpint(sms_smtp_set_url(x, url), ==, 0);
    g_assert_cmpint(sms_smtp_set_cacert(x, T.ca), ==, 0);
    g_assert_cmpint(sms_smtp_set_auth(x, USER, PASSWORD), ==, 0);
    rc = sms_smtp_send(x, m);
    if (rc != 0)
        g_error("authenticated send to Postfix failed: %s", sms_smtp_last_error(x));
    GPtrArray *files = maildir_wait(1);
    g_assert_cmpuint(files->len, ==, 1);
    assert_maildir_message(files->pdata[0], &g);
    /* Postfix recorded the authenticated submission over TLS. */
    char *raw = read_file(files->pdata[0]);
    g_assert_nonnull(strstr(raw, "with ESMTPSA"));
    g_free(raw);
    g_ptr_array_free(files, TRUE);
    gen_clear(&g);
    sms_smtp_free(x);
    sms_message_free(m);
    g_free(url);
}

/* ---- main ------------------------------------------------------------------------------ */

static char *env_or(const char *name, const char *fallback)
{
    const char *v = g_getenv(name);
    return g_strdup(v && v[0] ? v : fallback);
}

static void setup(void)
{
    T.srcdir = env_or("SMS_SRCDIR", ".");
    T.smtpdir = env_or("SMS_SMTP_SRCDIR", "tests/smtp");
    char *base = env_or("TEST_TMP", g_get_tmp_dir());
    g_mkdir_with_parents(base, 0755);
    T.tmp = g_build_filename(base, "test-smtp-XXXXXX", NULL);
    g_assert_nonnull(g_mkdtemp_full(T.tmp, 0755));
    g_free(base);
    T.pki = env_or("SMS_PKI_DIR", "tests/pki");
    char *out = NULL;
    if (sh(&out, "bash '%s/tests/lib/mkpki.sh' '%s'", T.srcdir, T.pki) != 0)
        g_error("mkpki.sh failed: %s", out);
    g_free(out);
    T.ca = g_build_filename(T.pki, "ca.pem", NULL);
    T.gpg_home = g_build_filename(T.tmp, "gnupg", NULL);
    char **kill_agent = g_new0(char *, 4);
    kill_agent[0] = g_strdup("/bin/sh");
    kill_agent[1] = g_strdup("-c");
    kill_agent[2] = g_strdup_printf("[ -d '%s' ] && GNUPGHOME='%s' gpgconf --kill all", T.gpg_home,
                                    T.gpg_home);
    add_emergency(kill_agent);

    char *key = g_build_filename(T.pki, "rsa2048.key", NULL);
    char *chain = g_build_filename(T.pki, "rsa2048-chain.pem", NULL);
    sms_signer_options opts = { .struct_size = sizeof opts, .cert_file = chain };
    char err[512] = "";
    if (sms_signer_open(key, &opts, &T.signer, err, sizeof err) != 0)
        g_error("cannot open the test signer: %s", err);
    g_free(key);
    g_free(chain);
}

static void teardown(void)
{
    server_stop(&T.plain);
    server_stop(&T.tls);
    server_stop(&T.smtps);
    if (T.postfix_dir) {
        sh(NULL, "bash '%s/postfix.sh' stop '%s'", T.smtpdir, T.postfix_dir);
        if (!g_getenv("KEEP_TMP"))
            sh(NULL, "rm -rf '%s'", T.postfix_dir);
    }
    if (g_file_test(T.gpg_home, G_FILE_TEST_IS_DIR))
        sh(NULL, "GNUPGHOME='%s' gpgconf --kill all", T.gpg_home);
    sms_signer_unref(T.signer);
    if (g_getenv("KEEP_TMP"))
        g_printerr("# kept %s\n", T.tmp);
    else /* gpg-agent may still be removing its sockets: try again */
        sh(NULL, "for i in 1 2 3 4 5; do rm -rf '%s' 2>/dev/null && break; sleep 0.2; done",
           T.tmp);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    signal(SIGABRT, on_fatal_signal);
    signal(SIGTRAP, on_fatal_signal); /* g_error() may trap */
    signal(SIGTERM, on_fatal_signal);
    signal(SIGINT, on_fatal_signal);
    g_test_init(&argc, &argv, NULL);
    setup();

    g_test_add_func("/smtp/aiosmtpd/deliver-64mib-pipe", test_deliver_64mib_pipe);
    g_test_add_func("/smtp/aiosmtpd/deliver-cancel-mid-attachment", test_deliver_cancel);
    g_test_add_func("/smtp/aiosmtpd/recipients-mixed-default-nothing-sent", test_rcpt_mix_default);
    g_test_add_func("/smtp/aiosmtpd/recipients-mixed-allow-partial", test_rcpt_mix_partial);
    g_test_add_func("/smtp/aiosmtpd/recipients-all-refused-5xx", test_rcpt_all_refused_5xx);
    g_test_add_func("/smtp/aiosmtpd/recipients-all-refused-4xx", test_rcpt_all_refused_4xx);
    g_test_add_data_func("/smtp/aiosmtpd/fault-greeting-4xx", &fault_greeting_4xx, envelope_fault_case);
    g_test_add_data_func("/smtp/aiosmtpd/fault-greeting-5xx", &fault_greeting_5xx, envelope_fault_case);
    g_test_add_data_func("/smtp/aiosmtpd/fault-mail-4xx", &fault_mail_4xx, envelope_fault_case);
    g_test_add_data_func("/smtp/aiosmtpd/fault-mail-5xx", &fault_mail_5xx, envelope_fault_case);
    g_test_add_data_func("/smtp/aiosmtpd/fault-rcpt-4xx", &fault_rcpt_4xx, envelope_fault_case);
    g_test_add_data_func("/smtp/aiosmtpd/fault-rcpt-5xx", &fault_rcpt_5xx, envelope_fault_case);
    g_test_add_data_func("/smtp/aiosmtpd/fault-data-4xx", &fault_data_4xx, envelope_fault_case);
    g_test_add_data_func("/smtp/aiosmtpd/fault-data-5xx", &fault_data_5xx, envelope_fault_case);
    g_test_add_func("/smtp/aiosmtpd/fault-disconnect-mid-attachment", test_fault_disconnect);
    g_test_add_func("/smtp/aiosmtpd/fault-stall-mid-attachment", test_fault_stall);
    g_test_add_func("/smtp/aiosmtpd/fault-abort-mid-attachment", test_fault_smtp_abort);
    g_test_add_func("/smtp/aiosmtpd/fault-abort-stalled-from-thread", test_fault_abort_stalled);
    g_test_add_func("/smtp/aiosmtpd/fault-message-abort-mid-attachment", test_fault_message_abort);
    g_test_add_func("/smtp/aiosmtpd/fault-source-error-mid-attachment", test_fault_source_error);
    g_test_add_func("/smtp/aiosmtpd/fault-final-dot-4xx", test_fault_final_4xx);
    g_test_add_func("/smtp/aiosmtpd/fault-final-dot-5xx", test_fault_final_5xx);
    g_test_add_func("/smtp/aiosmtpd/fault-disconnect-after-final-dot", test_fault_drop_after_dot);
    g_test_add_func("/smtp/aiosmtpd/fault-no-reply-after-final-dot", test_fault_no_reply_after_dot);
    g_test_add_func("/smtp/aiosmtpd/fault-abort-while-waiting-for-reply",
                    test_fault_abort_while_waiting);
    g_test_add_func("/smtp/aiosmtpd/fault-abort-before-final-dot", test_fault_abort_at_end);
    g_test_add_func("/smtp/aiosmtpd/fault-connection-refused", test_fault_connection_refused);
    g_test_add_func("/smtp/auth/starttls-ok", test_auth_starttls_ok);
    g_test_add_func("/smtp/auth/starttls-wrong-password", test_auth_wrong_password);
    g_test_add_func("/smtp/auth/smtps-ok", test_auth_smtps_ok);
    g_test_add_func("/smtp/auth/smtps-wrong-password", test_auth_smtps_wrong_password);
    g_test_add_func("/smtp/auth/not-offered", test_auth_not_offered);
    g_test_add_func("/smtp/auth/credentials-need-tls", test_auth_credentials_need_tls);
    g_test_add_func("/smtp/auth/required-not-given", test_auth_required_not_given);
    g_test_add_func("/smtp/auth/untrusted-certificate", test_auth_untrusted_certificate);
    g_test_add_func("/smtp/api/config", test_api_config);
    g_test_add_func("/smtp/api/checks-before-connecting", test_api_checks_before_connecting);
    g_test_add_func("/smtp/postfix/deliver-maildir", test_postfix_deliver);
    g_test_add_func("/smtp/postfix/starttls-auth", test_postfix_starttls_auth);

    int rc = g_test_run();
    teardown();
    return rc;
}
