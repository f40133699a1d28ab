/* A test client for smimestream-agent (libdbus-1 only).
 *
 *   agent-client submit [MESSAGE] [ATTACHMENTS] [OPTIONS] [BEHAVIOUR]
 *   agent-client gen BYTES SEED          the data a --pipe writer sends
 *   agent-client props JOBPATH           State=, BytesRead=, Error=, MessageId=
 *   agent-client cancel|abort JOBPATH    call Job1.Cancel / Job1.Abort
 *   agent-client prompter --answers A,B [--log FILE]   RegisterPinPrompt, serve
 *   agent-client register-signer NAME    RegisterSigner, then stay on the bus
 *   agent-client unregister-signer ID    (from a new connection: not the owner)
 *   agent-client list-signers
 *
 * submit:
 *   MESSAGE   --from A --to A --cc A --bcc A --subject S --body T
 *             --body-size N (N bytes of text) --header 'Name: value'
 *   ATTACH    --pipe BYTES[:SEED]  a pipe; a writer streams BYTES of
 *                                  deterministic data (see gen)
 *             --file PATH          a regular file (opened by this client)
 *             --prefill BYTES      a pipe holding BYTES (at most 64 KiB),
 *                                  closed; prints "unread N" at the end
 *             --socket, --devzero, --dir, --write-end   bad fd types
 *             --name NAME --type TYPE   for the attachment before
 *   OPTIONS   --signer S --digest D --smtp S --pss --opt KEY=STRING
 *             --pin-answers A,B,C  serve PinPrompt1 here and pass pin-prompt;
 *                                  "cancel" declines; the last answer repeats
 *   BEHAVIOUR --writer child|self  who writes the pipes (default child: a
 *                                  forked process that holds no bus socket)
 *             --pause-at BYTES     writers stop after BYTES and keep the
 *                                  pipe open until the reader goes away
 *             --count K            submit K jobs (pipe seeds SEED, SEED+1..)
 *             --sequential         wait for each job before the next Submit
 *             --cancel-at BYTES / --abort-at BYTES   on Progress >= BYTES
 *             --print-state        print each job's State after submitting
 *             --hold               do not wait for Finished: sleep (to be killed)
 *             --timeout SECS       (default 120)
 * Output, one line each: "job PATH", "error NAME: TEXT" (a refused Submit),
 * "state PATH STATE", "statechange PATH STATE" (PropertiesChanged),
 * "askpin TOKEN|HINT", "finished PATH STATE MSGID",
 * "detail PATH LINE", "summary PATH signals=N max=BYTES min-gap-ms=G
 * span-ms=S" (Progress signals: how many, the last value, the shortest gap
 * and the time from the first to the last, as received), "unread N".  Exit 0 when every Submit was
 * answered (accepted or refused) and every accepted job finished.
 */
#include <dbus/dbus.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define AGENT "org.smimestream.Agent1"
#define AGENT_PATH "/org/smimestream/Agent1"
#define JOB "org.smimestream.Job1"
#define PROMPT_PATH "/test/prompt"
#define MAXV 64

static DBusConnection *conn;

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "agent-client: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t parse_size(const char *s)
{
    char *end;
    uint64_t v = strtoull(s, &end, 10);
    if (*end == 'K' || *end == 'k')
        v <<= 10, end++;
    else if (*end == 'M' || *end == 'm')
        v <<= 20, end++;
    else if (*end == 'G' || *end == 'g')
        v <<= 30, end++;
    if (*end && *end != ':')
        die("bad size '%s'", s);
    return v;
}

/* ---- the data: xorshift64*, 8 bytes at a time ----------------------------------- */

typedef struct gen {
    uint64_t s;
} gen;

static void gen_init(gen *g, uint64_t seed)
{
    g->s = seed * 0x9E3779B97F4A7C15ull + 0x1234567ull;
    if (!g->s)
        g->s = 1;
}

static void gen_fill(gen *g, uint8_t *buf, size_t n) /* n multiple of 8 */
{
    for (size_t i = 0; i < n; i += 8) {
        g->s ^= g->s >> 12;
        g->s ^= g->s << 25;
        g->s ^= g->s >> 27;
        uint64_t v = g->s * 0x2545F4914F6CDD1Dull;
        memcpy(buf + i, &v, 8);
    }
}

/* Write `total` bytes of the stream for `seed` to fd; stop after pause_at
 * (if not 0) and wait until the reader is gone. */
static int write_stream(int fd, uint64_t total, uint64_t seed, uint64_t pause_at)
{
    static __thread uint8_t buf[65536];
    gen g;
    gen_init(&g, seed);
    uint64_t sent = 0;
    while (sent < total) {
        gen_fill(&g, buf, sizeof buf);
        size_t n = total - sent < sizeof buf ? (size_t)(total - sent) : sizeof buf;
        if (pause_at && sent + n > pause_at)
            n = (size_t)(pause_at - sent);
        size_t off = 0;
        while (off < n) {
            ssize_t w = write(fd, buf + off, n - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0)
                return errno == EPIPE ? 0 : 1;
            off += (size_t)w;
        }
        sent += n;
        if (pause_at && sent >= pause_at) {
            struct pollfd p = { .fd = fd, .events = 0 };
            while (poll(&p, 1, -1) >= 0 && !(p.revents & (POLLERR | POLLHUP)))
                ;
            return 0;
        }
    }
    return 0;
}

/* ---- submit ------------------------------------------------------------------- */

typedef enum { A_PIPE, A_FILE, A_PREFILL, A_SOCKET, A_DEVZERO, A_DIR, A_WRITE_END } att_kind;

typedef struct att_spec {
    att_kind kind;
    uint64_t bytes, seed;
    const char *path, *name, *type;
} att_spec;

typedef struct cjob {
    char *path;
    bool finished;
    int nprog;
    uint64_t maxprog;
    double first_prog_t, last_prog_t, min_gap;
    bool acted;
} cjob;

static struct {
    const char *from, *subject, *body, *signer, *digest, *smtp, *answers, *writer;
    const char *to[MAXV], *cc[MAXV], *bcc[MAXV], *hdr[MAXV], *opt[MAXV];
    int nto, ncc, nbcc, nhdr, nopt;
    uint64_t body_size;
    att_spec att[MAXV];
    int natt;
    bool pss, sequential, print_state, hold;
    uint64_t pause_at, cancel_at, abort_at;
    int count;
    int timeout;
} O = { .count = 1, .timeout = 120, .writer = "child" };

static cjob jobs[256];
static int njobs;
static char *answers[32];
static int nanswers, nasked;
static FILE *prompt_log;

/* Per job, per attachment: the fd to send (and what to keep). */
typedef struct att_fds {
    int send_fd;
    int keep_fd;      /* prefill: a copy of the read end, for FIONREAD */
    int write_fd;     /* self writer: the write end */
} att_fds;

static att_fds fds[256][MAXV];

typedef struct writer_arg {
    int fd;
    uint64_t bytes, seed, pause_at;
} writer_arg;

static void *writer_thread(void *p)
{
    writer_arg *w = p;
    write_stream(w->fd, w->bytes, w->seed, w->pause_at);
    close(w->fd);
    free(w);
    return NULL;
}

static void start_child_writer(int wfd, uint64_t bytes, uint64_t seed)
{
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        /* Hold nothing but our pipe: no other pipe's ends, no bus socket. */
        for (int fd = 3; fd < 4096; fd++)
            if (fd != wfd)
                close(fd);
        signal(SIGPIPE, SIG_IGN);
        _exit(write_stream(wfd, bytes, seed, O.pause_at));
    }
}

static void prepare_fds(int j)
{
    for (int i = 0; i < O.natt; i++) {
        att_spec *a = &O.att[i];
        att_fds *f = &fds[j][i];
        f->keep_fd = f->write_fd = -1;
        int p[2];
        switch (a->kind) {
        case A_PIPE:
            if (pipe2(p, O_CLOEXEC) < 0)
                die("pipe: %s", strerror(errno));
            f->send_fd = p[0];
            if (strcmp(O.writer, "self") == 0) {
                f->write_fd = p[1];
            } else {
                start_child_writer(p[1], a->bytes, a->seed + (uint64_t)j);
                close(p[1]);
            }
            break;
        case A_PREFILL: {
            if (pipe2(p, O_CLOEXEC) < 0)
                die("pipe: %s", strerror(errno));
            uint8_t buf[65536];
            gen g;
            gen_init(&g, a->seed);
            gen_fill(&g, buf, sizeof buf);
            if (write(p[1], buf, (size_t)a->bytes) != (ssize_t)a->bytes)
                die("prefill: %s", strerror(errno));
            close(p[1]);
            f->send_fd = p[0];
            f->keep_fd = dup(p[0]);
            break;
        }
        case A_FILE:
            f->send_fd = open(a->path, O_RDONLY | O_CLOEXEC);
            if (f->send_fd < 0)
                die("%s: %s", a->path, strerror(errno));
            break;
        case A_SOCKET:
            if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p) < 0)
                die("socketpair: %s", strerror(errno));
            f->send_fd = p[0];
            f->keep_fd = p[1];
            break;
        case A_DEVZERO:
            f->send_fd = open("/dev/zero", O_RDONLY | O_CLOEXEC);
            break;
        case A_DIR:
            f->send_fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            break;
        case A_WRITE_END:
            if (pipe2(p, O_CLOEXEC) < 0)
                die("pipe: %s", strerror(errno));
            f->send_fd = p[1];
            f->keep_fd = p[0];
            break;
        }
    }
}

static void start_self_writers(int j)
{
    for (int i = 0; i < O.natt; i++) {
        if (fds[j][i].write_fd < 0)
            continue;
        writer_arg *w = calloc(1, sizeof *w);
        w->fd = fds[j][i].write_fd;
        w->bytes = O.att[i].bytes;
        w->seed = O.att[i].seed + (uint64_t)j;
        w->pause_at = O.pause_at;
        fds[j][i].write_fd = -1;
        pthread_t t;
        pthread_create(&t, NULL, writer_thread, w);
        pthread_detach(t);
    }
}

static void add_sv(DBusMessageIter *dict, const char *key, int type, const char *sig, const void *v)
{
    DBusMessageIter e, var;
    dbus_message_iter_open_container(dict, DBUS_TYPE_DICT_ENTRY, NULL, &e);
    dbus_message_iter_append_basic(&e, DBUS_TYPE_STRING, &key);
    dbus_message_iter_open_container(&e, DBUS_TYPE_VARIANT, sig, &var);
    dbus_message_iter_append_basic(&var, type, v);
    dbus_message_iter_close_container(&e, &var);
    dbus_message_iter_close_container(dict, &e);
}

static void add_as(DBusMessageIter *dict, const char *key, const char **v, int n)
{
    DBusMessageIter e, var, arr;
    if (!n)
        return;
    dbus_message_iter_open_container(dict, DBUS_TYPE_DICT_ENTRY, NULL, &e);
    dbus_message_iter_append_basic(&e, DBUS_TYPE_STRING, &key);
    dbus_message_iter_open_container(&e, DBUS_TYPE_VARIANT, "as", &var);
    dbus_message_iter_open_container(&var, DBUS_TYPE_ARRAY, "s", &arr);
    for (int i = 0; i < n; i++)
        dbus_message_iter_append_basic(&arr, DBUS_TYPE_STRING, &v[i]);
    dbus_message_iter_close_container(&var, &arr);
    dbus_message_iter_close_container(&e, &var);
    dbus_message_iter_close_container(dict, &e);
}

static char *body_text;

static DBusMessage *build_submit(int j)
{
    DBusMessage *m = dbus_message_new_method_call(AGENT, AGENT_PATH, AGENT, "Submit");
    DBusMessageIter it, dict, arr, st;
    dbus_message_iter_init_append(m, &it);
    dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "{sv}", &dict);
    if (O.from)
        add_sv(&dict, "from", DBUS_TYPE_STRING, "s", &O.from);
    add_as(&dict, "to", O.to, O.nto);
    add_as(&dict, "cc", O.cc, O.ncc);
    add_as(&dict, "bcc", O.bcc, O.nbcc);
    if (O.subject)
        add_sv(&dict, "subject", DBUS_TYPE_STRING, "s", &O.subject);
    if (O.body || body_text) {
        const char *b = body_text ? body_text : O.body;
        add_sv(&dict, "body", DBUS_TYPE_STRING, "s", &b);
    }
    if (O.nhdr) {
        DBusMessageIter e, var, h, he;
        const char *key = "headers";
        dbus_message_iter_open_container(&dict, DBUS_TYPE_DICT_ENTRY, NULL, &e);
        dbus_message_iter_append_basic(&e, DBUS_TYPE_STRING, &key);
        dbus_message_iter_open_container(&e, DBUS_TYPE_VARIANT, "a{ss}", &var);
        dbus_message_iter_open_container(&var, DBUS_TYPE_ARRAY, "{ss}", &h);
        for (int i = 0; i < O.nhdr; i++) {
            char *name = strdup(O.hdr[i]);
            char *colon = strchr(name, ':');
            const char *value = colon ? colon + 1 : "";
            if (colon)
                *colon = 0;
            while (*value == ' ')
                value++;
            const char *n = name;
            dbus_message_iter_open_container(&h, DBUS_TYPE_DICT_ENTRY, NULL, &he);
            dbus_message_iter_append_basic(&he, DBUS_TYPE_STRING, &n);
            dbus_message_iter_append_basic(&he, DBUS_TYPE_STRING, &value);
            dbus_message_iter_close_container(&h, &he);
            free(name);
        }
        dbus_message_iter_close_container(&var, &h);
        dbus_message_iter_close_container(&e, &var);
        dbus_message_iter_close_container(&dict, &e);
    }
    dbus_message_iter_close_container(&it, &dict);

    dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "(ssh)", &arr);
    for (int i = 0; i < O.natt; i++) {
        const char *name = O.att[i].name ? O.att[i].name : "";
        const char *type = O.att[i].type ? O.att[i].type : "";
        dbus_message_iter_open_container(&arr, DBUS_TYPE_STRUCT, NULL, &st);
        dbus_message_iter_append_basic(&st, DBUS_TYPE_STRING, &name);
        dbus_message_iter_append_basic(&st, DBUS_TYPE_STRING, &type);
        dbus_message_iter_append_basic(&st, DBUS_TYPE_UNIX_FD, &fds[j][i].send_fd);
        dbus_message_iter_close_container(&arr, &st);
    }
    dbus_message_iter_close_container(&it, &arr);

    dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "{sv}", &dict);
    if (O.signer)
        add_sv(&dict, "signer", DBUS_TYPE_STRING, "s", &O.signer);
    if (O.digest)
        add_sv(&dict, "digest", DBUS_TYPE_STRING, "s", &O.digest);
    if (O.smtp)
        add_sv(&dict, "smtp", DBUS_TYPE_STRING, "s", &O.smtp);
    if (O.pss) {
        dbus_bool_t t = TRUE;
        add_sv(&dict, "pss", DBUS_TYPE_BOOLEAN, "b", &t);
    }
    if (O.answers) {
        const char *p = PROMPT_PATH;
        add_sv(&dict, "pin-prompt", DBUS_TYPE_OBJECT_PATH, "o", &p);
    }
    for (int i = 0; i < O.nopt; i++) {
        char *k = strdup(O.opt[i]);
        char *eq = strchr(k, '=');
        const char *v = eq ? eq + 1 : "";
        if (eq)
            *eq = 0;
        add_sv(&dict, k, DBUS_TYPE_STRING, "s", &v);
        free(k);
    }
    dbus_message_iter_close_container(&it, &dict);
    return m;
}

static cjob *job_of(const char *path)
{
    for (int i = 0; i < njobs; i++)
        if (strcmp(jobs[i].path, path) == 0)
            return &jobs[i];
    return NULL;
}

static void call_job(const char *path, const char *method)
{
    DBusMessage *m = dbus_message_new_method_call(AGENT, path, JOB, method);
    dbus_message_set_no_reply(m, TRUE);
    dbus_connection_send(conn, m, NULL);
    dbus_message_unref(m);
    printf("%s %s\n", method, path);
    fflush(stdout);
}

static void serve_askpin(DBusMessage *msg)
{
    const char *token = "", *hint = "";
    dbus_message_get_args(msg, NULL, DBUS_TYPE_STRING, &token, DBUS_TYPE_STRING, &hint,
                          DBUS_TYPE_INVALID);
    printf("askpin %s|%s\n", token, hint);
    fflush(stdout);
    if (prompt_log) {
        fprintf(prompt_log, "askpin %s|%s\n", token, hint);
        fflush(prompt_log);
    }
    const char *a = nanswers ? answers[nasked < nanswers ? nasked : nanswers - 1] : "cancel";
    nasked++;
    DBusMessage *r;
    if (strcmp(a, "cancel") == 0) {
        r = dbus_message_new_error(msg, "org.smimestream.Error.Cancelled", "declined");
    } else if (strcmp(a, "noreply") == 0) {
        return;
    } else {
        r = dbus_message_new_method_return(msg);
        dbus_message_append_args(r, DBUS_TYPE_STRING, &a, DBUS_TYPE_INVALID);
    }
    dbus_connection_send(conn, r, NULL);
    dbus_message_unref(r);
}

static DBusHandlerResult filter(DBusConnection *c, DBusMessage *msg, void *data)
{
    if (dbus_message_is_method_call(msg, "org.smimestream.PinPrompt1", "AskPin")) {
        serve_askpin(msg);
        return DBUS_HANDLER_RESULT_HANDLED;
    }
    if (dbus_message_get_type(msg) != DBUS_MESSAGE_TYPE_SIGNAL || !dbus_message_get_path(msg))
        return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
    cjob *j = job_of(dbus_message_get_path(msg));
    if (!j)
        return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
    if (dbus_message_is_signal(msg, "org.freedesktop.DBus.Properties", "PropertiesChanged")) {
        DBusMessageIter it, arr, ent, var;
        dbus_message_iter_init(msg, &it);
        dbus_message_iter_next(&it);
        dbus_message_iter_recurse(&it, &arr);
        for (; dbus_message_iter_get_arg_type(&arr) == DBUS_TYPE_DICT_ENTRY;
             dbus_message_iter_next(&arr)) {
            const char *key, *val;
            dbus_message_iter_recurse(&arr, &ent);
            dbus_message_iter_get_basic(&ent, &key);
            dbus_message_iter_next(&ent);
            dbus_message_iter_recurse(&ent, &var);
            if (strcmp(key, "State") == 0) {
                dbus_message_iter_get_basic(&var, &val);
                printf("statechange %s %s\n", j->path, val);
            }
        }
    } else if (dbus_message_is_signal(msg, JOB, "Progress")) {
        dbus_uint64_t b = 0;
        dbus_message_get_args(msg, NULL, DBUS_TYPE_UINT64, &b, DBUS_TYPE_INVALID);
        double t = now();
        if (j->nprog && (j->min_gap == 0 || t - j->last_prog_t < j->min_gap))
            j->min_gap = t - j->last_prog_t;
        if (!j->nprog)
            j->first_prog_t = t;
        j->last_prog_t = t;
        j->nprog++;
        j->maxprog = b;
        if (!j->acted && O.cancel_at && b >= O.cancel_at) {
            j->acted = true;
            call_job(j->path, "Cancel");
        }
        if (!j->acted && O.abort_at && b >= O.abort_at) {
            j->acted = true;
            call_job(j->path, "Abort");
        }
    } else if (dbus_message_is_signal(msg, JOB, "Finished")) {
        const char *state = "", *id = "", *detail = "";
        dbus_message_get_args(msg, NULL, DBUS_TYPE_STRING, &state, DBUS_TYPE_STRING, &id,
                              DBUS_TYPE_STRING, &detail, DBUS_TYPE_INVALID);
        printf("finished %s %s %s\n", j->path, state, *id ? id : "-");
        char *d = strdup(detail), *save = NULL;
        for (char *line = strtok_r(d, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
            printf("detail %s %s\n", j->path, line);
        free(d);
        printf("summary %s signals=%d max=%" PRIu64 " min-gap-ms=%.1f span-ms=%.0f\n", j->path,
               j->nprog, j->maxprog, j->min_gap * 1000,
               (j->last_prog_t - j->first_prog_t) * 1000);
        fflush(stdout);
        j->finished = true;
    }
    return DBUS_HANDLER_RESULT_HANDLED;
}

static void connect_bus(void)
{
    DBusError e;
    dbus_error_init(&e);
    conn = dbus_bus_get_private(DBUS_BUS_SESSION, &e);
    if (!conn)
        die("cannot connect to the session bus: %s", e.message);
    dbus_connection_set_exit_on_disconnect(conn, FALSE);
    dbus_connection_add_filter(conn, filter, NULL, NULL);
}

static bool pending_jobs(void)
{
    for (int i = 0; i < njobs; i++)
        if (!jobs[i].finished)
            return true;
    return false;
}

static bool wait_jobs(double deadline)
{
    while (pending_jobs()) {
        if (now() > deadline)
            return false;
        if (!dbus_connection_read_write_dispatch(conn, 100))
            die("lost the bus");
    }
    return true;
}

static void print_state(const char *path)
{
    DBusMessage *m = dbus_message_new_method_call(AGENT, path, "org.freedesktop.DBus.Properties", "Get");
    const char *iface = JOB, *prop = "State";
    dbus_message_append_args(m, DBUS_TYPE_STRING, &iface, DBUS_TYPE_STRING, &prop, DBUS_TYPE_INVALID);
    DBusError e;
    dbus_error_init(&e);
    DBusMessage *r = dbus_connection_send_with_reply_and_block(conn, m, 10000, &e);
    dbus_message_unref(m);
    if (!r) {
        printf("state %s ? %s\n", path, e.message);
        dbus_error_free(&e);
        return;
    }
    DBusMessageIter it, v;
    const char *s = "?";
    dbus_message_iter_init(r, &it);
    dbus_message_iter_recurse(&it, &v);
    dbus_message_iter_get_basic(&v, &s);
    printf("state %s %s\n", path, s);
    dbus_message_unref(r);
}

static int do_submit(void)
{
    if (O.body_size) {
        body_text = malloc(O.body_size + 1);
        for (uint64_t i = 0; i < O.body_size; i++)
            body_text[i] = (i % 64 == 63) ? '\n' : (char)('a' + i % 26);
        body_text[O.body_size] = 0;
    }
    /* Writers are forked before we connect, so no child holds the bus
     * socket: killing this process makes it leave the bus at once. */
    for (int j = 0; j < O.count; j++)
        prepare_fds(j);
    connect_bus();
    if (O.answers) {
        char *a = strdup(O.answers), *save = NULL;
        for (char *t = strtok_r(a, ",", &save); t && nanswers < 32; t = strtok_r(NULL, ",", &save))
            answers[nanswers++] = t;
    }
    dbus_bus_add_match(conn, "type='signal',interface='" JOB "'", NULL);
    dbus_bus_add_match(conn, "type='signal',interface='org.freedesktop.DBus.Properties'", NULL);
    int exit_code = 0;
    double deadline = now() + O.timeout;
    for (int j = 0; j < O.count; j++) {
        start_self_writers(j);
        DBusMessage *m = build_submit(j);
        DBusError e;
        dbus_error_init(&e);
        DBusMessage *r = dbus_connection_send_with_reply_and_block(conn, m, 60000, &e);
        dbus_message_unref(m);
        for (int i = 0; i < O.natt; i++)
            close(fds[j][i].send_fd);
        if (!r) {
            printf("error %s: %s\n", e.name, e.message);
            fflush(stdout);
            dbus_error_free(&e);
            continue;
        }
        const char *path = NULL;
        dbus_message_get_args(r, NULL, DBUS_TYPE_OBJECT_PATH, &path, DBUS_TYPE_INVALID);
        jobs[njobs].path = strdup(path);
        njobs++;
        printf("job %s\n", path);
        fflush(stdout);
        dbus_message_unref(r);
        if (O.sequential && !O.hold && !wait_jobs(deadline)) {
            printf("timeout\n");
            return 1;
        }
    }
    if (O.print_state)
        for (int i = 0; i < njobs; i++)
            print_state(jobs[i].path);
    fflush(stdout);
    if (O.hold) {
        /* Serve prompts and signals until killed. */
        for (;;)
            dbus_connection_read_write_dispatch(conn, 1000);
    }
    if (!wait_jobs(deadline)) {
        printf("timeout\n");
        exit_code = 1;
    }
    for (int j = 0; j < O.count; j++)
        for (int i = 0; i < O.natt; i++)
            if (fds[j][i].keep_fd >= 0 && O.att[i].kind == A_PREFILL) {
                int n = -1;
                ioctl(fds[j][i].keep_fd, FIONREAD, &n);
                printf("unread %d\n", n);
            }
    fflush(stdout);
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
    return exit_code;
}

/* ---- small commands ------------------------------------------------------------------- */

static DBusMessage *call(const char *path, const char *iface, const char *method, int first, ...)
{
    DBusMessage *m = dbus_message_new_method_call(AGENT, path, iface, method);
    va_list ap;
    va_start(ap, first);
    if (first != DBUS_TYPE_INVALID)
        dbus_message_append_args_valist(m, first, ap);
    va_end(ap);
    DBusError e;
    dbus_error_init(&e);
    DBusMessage *r = dbus_connection_send_with_reply_and_block(conn, m, 30000, &e);
    dbus_message_unref(m);
    if (!r) {
        printf("error %s: %s\n", e.name, e.message);
        fflush(stdout);
        dbus_error_free(&e);
    }
    return r;
}

static int do_props(const char *path)
{
    const char *iface = JOB;
    DBusMessage *r = call(path, "org.freedesktop.DBus.Properties", "GetAll", DBUS_TYPE_STRING,
                          &iface, DBUS_TYPE_INVALID);
    if (!r)
        return 1;
    DBusMessageIter it, arr, ent, var;
    dbus_message_iter_init(r, &it);
    dbus_message_iter_recurse(&it, &arr);
    for (; dbus_message_iter_get_arg_type(&arr) == DBUS_TYPE_DICT_ENTRY; dbus_message_iter_next(&arr)) {
        const char *key;
        dbus_message_iter_recurse(&arr, &ent);
        dbus_message_iter_get_basic(&ent, &key);
        dbus_message_iter_next(&ent);
        dbus_message_iter_recurse(&ent, &var);
        if (dbus_message_iter_get_arg_type(&var) == DBUS_TYPE_UINT64) {
            dbus_uint64_t v;
            dbus_message_iter_get_basic(&var, &v);
            printf("%s=%" PRIu64 "\n", key, (uint64_t)v);
        } else {
            const char *s;
            dbus_message_iter_get_basic(&var, &s);
            printf("%s=%s\n", key, s);
        }
    }
    dbus_message_unref(r);
    return 0;
}

static int do_list_signers(void)
{
    DBusMessage *r = call(AGENT_PATH, AGENT, "ListSigners", DBUS_TYPE_INVALID);
    if (!r)
        return 1;
    DBusMessageIter it, arr, st, dict, ent, var;
    dbus_message_iter_init(r, &it);
    dbus_message_iter_recurse(&it, &arr);
    for (; dbus_message_iter_get_arg_type(&arr) == DBUS_TYPE_STRUCT; dbus_message_iter_next(&arr)) {
        const char *id;
        dbus_message_iter_recurse(&arr, &st);
        dbus_message_iter_get_basic(&st, &id);
        printf("signer %s", id);
        dbus_message_iter_next(&st);
        dbus_message_iter_recurse(&st, &dict);
        for (; dbus_message_iter_get_arg_type(&dict) == DBUS_TYPE_DICT_ENTRY;
             dbus_message_iter_next(&dict)) {
            const char *key, *val;
            dbus_message_iter_recurse(&dict, &ent);
            dbus_message_iter_get_basic(&ent, &key);
            dbus_message_iter_next(&ent);
            dbus_message_iter_recurse(&ent, &var);
            dbus_message_iter_get_basic(&var, &val);
            printf(" %s=%s", key, val);
        }
        printf("\n");
    }
    dbus_message_unref(r);
    return 0;
}

static DBusHandlerResult serve_filter(DBusConnection *c, DBusMessage *msg, void *data)
{
    if (dbus_message_is_method_call(msg, "org.smimestream.PinPrompt1", "AskPin")) {
        serve_askpin(msg);
        return DBUS_HANDLER_RESULT_HANDLED;
    }
    return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
}

static void serve_forever(void)
{
    for (;;)
        if (!dbus_connection_read_write_dispatch(conn, 1000))
            exit(0);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (argc < 2)
        die("usage: agent-client submit|gen|props|cancel|abort|prompter|register-signer|"
            "unregister-signer|list-signers ...");
    const char *cmd = argv[1];
    if (strcmp(cmd, "gen") == 0) {
        if (argc != 4)
            die("usage: agent-client gen BYTES SEED");
        return write_stream(1, parse_size(argv[2]), strtoull(argv[3], NULL, 10), 0);
    }
    if (strcmp(cmd, "submit") != 0) {
        connect_bus();
        if (strcmp(cmd, "props") == 0 && argc == 3)
            return do_props(argv[2]);
        if ((strcmp(cmd, "cancel") == 0 || strcmp(cmd, "abort") == 0) && argc == 3) {
            DBusMessage *r = call(argv[2], JOB, cmd[0] == 'c' ? "Cancel" : "Abort", DBUS_TYPE_INVALID);
            if (r)
                dbus_message_unref(r);
            return r ? 0 : 1;
        }
        if (strcmp(cmd, "list-signers") == 0)
            return do_list_signers();
        if (strcmp(cmd, "unregister-signer") == 0 && argc == 3) {
            const char *id = argv[2];
            DBusMessage *r = call(AGENT_PATH, AGENT, "UnregisterSigner", DBUS_TYPE_STRING, &id,
                                  DBUS_TYPE_INVALID);
            if (r)
                dbus_message_unref(r);
            return r ? 0 : 1;
        }
        if (strcmp(cmd, "register-signer") == 0 && argc >= 3) {
            const char *path = "/test/signer";
            DBusMessage *m = dbus_message_new_method_call(AGENT, AGENT_PATH, AGENT, "RegisterSigner");
            DBusMessageIter it, dict;
            dbus_message_iter_init_append(m, &it);
            dbus_message_iter_append_basic(&it, DBUS_TYPE_OBJECT_PATH, &path);
            dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "{sv}", &dict);
            add_sv(&dict, "name", DBUS_TYPE_STRING, "s", &argv[2]);
            dbus_message_iter_close_container(&it, &dict);
            DBusError e;
            dbus_error_init(&e);
            DBusMessage *r = dbus_connection_send_with_reply_and_block(conn, m, 30000, &e);
            if (!r) {
                printf("error %s: %s\n", e.name, e.message);
                return 1;
            }
            const char *id = "";
            dbus_message_get_args(r, NULL, DBUS_TYPE_STRING, &id, DBUS_TYPE_INVALID);
            printf("registered %s\n", id);
            fflush(stdout);
            if (argc > 3 && strcmp(argv[3], "--unregister") == 0) {
                DBusMessage *u = call(AGENT_PATH, AGENT, "UnregisterSigner", DBUS_TYPE_STRING, &id,
                                      DBUS_TYPE_INVALID);
                printf(u ? "unregistered\n" : "");
                fflush(stdout);
            }
            serve_forever();
        }
        if (strcmp(cmd, "prompter") == 0) {
            for (int i = 2; i < argc; i++) {
                if (strcmp(argv[i], "--answers") == 0 && i + 1 < argc) {
                    char *save = NULL;
                    for (char *t = strtok_r(argv[++i], ",", &save); t && nanswers < 32;
                         t = strtok_r(NULL, ",", &save))
                        answers[nanswers++] = t;
                } else if (strcmp(argv[i], "--log") == 0 && i + 1 < argc) {
                    prompt_log = fopen(argv[++i], "a");
                }
            }
            dbus_connection_add_filter(conn, serve_filter, NULL, NULL);
            const char *path = PROMPT_PATH;
            DBusMessage *r = call(AGENT_PATH, AGENT, "RegisterPinPrompt", DBUS_TYPE_OBJECT_PATH,
                                  &path, DBUS_TYPE_INVALID);
            if (!r)
                return 1;
            printf("registered\n");
            fflush(stdout);
            serve_forever();
        }
        die("unknown command or arguments: %s", cmd);
    }

    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (strcmp(a, name) == 0 && v && (i++, 1))
#define FLAG(name) (strcmp(a, name) == 0)
        att_spec *last = O.natt ? &O.att[O.natt - 1] : NULL;
        if (ARG("--from")) O.from = v;
        else if (ARG("--to")) O.to[O.nto++] = v;
        else if (ARG("--cc")) O.cc[O.ncc++] = v;
        else if (ARG("--bcc")) O.bcc[O.nbcc++] = v;
        else if (ARG("--subject")) O.subject = v;
        else if (ARG("--body")) O.body = v;
        else if (ARG("--body-size")) O.body_size = parse_size(v);
        else if (ARG("--header")) O.hdr[O.nhdr++] = v;
        else if (ARG("--signer")) O.signer = v;
        else if (ARG("--digest")) O.digest = v;
        else if (ARG("--smtp")) O.smtp = v;
        else if (ARG("--opt")) O.opt[O.nopt++] = v;
        else if (FLAG("--pss")) O.pss = true;
        else if (ARG("--pin-answers")) O.answers = v;
        else if (ARG("--writer")) O.writer = v;
        else if (ARG("--pause-at")) O.pause_at = parse_size(v);
        else if (ARG("--count")) O.count = atoi(v);
        else if (FLAG("--sequential")) O.sequential = true;
        else if (ARG("--cancel-at")) O.cancel_at = parse_size(v);
        else if (ARG("--abort-at")) O.abort_at = parse_size(v);
        else if (FLAG("--print-state")) O.print_state = true;
        else if (FLAG("--hold")) O.hold = true;
        else if (ARG("--timeout")) O.timeout = atoi(v);
        else if (ARG("--name") && last) last->name = v;
        else if (ARG("--type") && last) last->type = v;
        else if (ARG("--pipe")) {
            const char *colon = strchr(v, ':');
            O.att[O.natt++] = (att_spec){ .kind = A_PIPE, .bytes = parse_size(v),
                                          .seed = colon ? strtoull(colon + 1, NULL, 10) : 1 };
        } else if (ARG("--prefill")) {
            O.att[O.natt++] = (att_spec){ .kind = A_PREFILL, .bytes = parse_size(v), .seed = 7 };
            if (O.att[O.natt - 1].bytes > 65536)
                die("--prefill: at most 64 KiB");
        } else if (ARG("--file")) O.att[O.natt++] = (att_spec){ .kind = A_FILE, .path = v };
        else if (FLAG("--socket")) O.att[O.natt++] = (att_spec){ .kind = A_SOCKET };
        else if (FLAG("--devzero")) O.att[O.natt++] = (att_spec){ .kind = A_DEVZERO };
        else if (FLAG("--dir")) O.att[O.natt++] = (att_spec){ .kind = A_DIR };
        else if (FLAG("--write-end")) O.att[O.natt++] = (att_spec){ .kind = A_WRITE_END };
        else die("unknown argument '%s'", a);
        if (O.nto >= MAXV || O.ncc >= MAXV || O.nbcc >= MAXV || O.nhdr >= MAXV || O.natt >= MAXV ||
            O.nopt >= MAXV || O.count > 256)
            die("too many");
    }
    return do_submit();
}
