/* smimestream submit: hand a message to a running smimestream-agent over
 * D-Bus and follow the job.  Attachments go as file descriptors (the agent
 * never opens a path we name); the PIN, when --pin-file or a terminal is
 * there, is served to the agent through org.smimestream.PinPrompt1 on our
 * own connection.  SIGINT calls Job1.Cancel, a second SIGINT Job1.Abort.
 *
 * Built into its own executable (smimestream-submit) so that `smimestream
 * sign` never maps libdbus and its dependencies. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <unistd.h>

#include <dbus/dbus.h>
#include <glib.h>

#include <smimestream/smimestream.h>

#include "submit.h"

#define AGENT_NAME "org.smimestream.Agent1"
#define AGENT_PATH "/org/smimestream/Agent1"
#define PROMPT_PATH "/org/smimestream/cli/PinPrompt"

static volatile sig_atomic_t sigints;

static void on_signal(int sig)
{
    if (sig == SIGINT)
        sigints++;
    else
        sigints = 2; /* SIGTERM, SIGHUP: abort */
}

static int fail(int code, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static int fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("smimestream: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

/* The agent's error names, as sysexits codes (smimestream-dbus(7)). */
static int exit_code_for(const char *error)
{
    static const struct {
        const char *name;
        int code;
    } map[] = {
        { "PinRefused", EX_NOPERM },       { "AccessDenied", EX_NOPERM },
        { "SmtpAuth", EX_NOPERM },         { "SignerUnavailable", EX_UNAVAILABLE },
        { "SignerFailed", EX_UNAVAILABLE }, { "SmtpRefused", EX_UNAVAILABLE },
        { "SmtpTempFail", EX_TEMPFAIL },   { "Aborted", EX_TEMPFAIL },
        { "ShuttingDown", EX_TEMPFAIL },   { "RateLimited", EX_TEMPFAIL },
        { "TooManyJobs", EX_TEMPFAIL },    { "SmtpUnknown", EX_PROTOCOL },
        { "InvalidArgs", EX_USAGE },       { "SmtpProfile", EX_USAGE },
        { "NotFound", EX_USAGE },          { "BadFd", EX_NOINPUT },
        { "TooManyAttachments", EX_DATAERR }, { "HeaderTooLarge", EX_DATAERR },
        { "BodyTooLarge", EX_DATAERR },    { "Io", EX_IOERR },
    };
    const char *prefix = "org.smimestream.Error.";
    if (!error || strncmp(error, prefix, strlen(prefix)) != 0)
        return EX_SOFTWARE;
    const char *name = error + strlen(prefix);
    for (size_t i = 0; i < G_N_ELEMENTS(map); i++) {
        size_t n = strlen(map[i].name);
        if (strncmp(name, map[i].name, n) == 0 && (name[n] == '\0' || name[n] == ':'))
            return map[i].code;
    }
    return EX_SOFTWARE;
}

/* ---- building the Submit call ------------------------------------------ */

static void add_string(DBusMessageIter *dict, const char *key, const char *value)
{
    if (!value)
        return;
    DBusMessageIter entry, var;
    dbus_message_iter_open_container(dict, DBUS_TYPE_DICT_ENTRY, NULL, &entry);
    dbus_message_iter_append_basic(&entry, DBUS_TYPE_STRING, &key);
    dbus_message_iter_open_container(&entry, DBUS_TYPE_VARIANT, "s", &var);
    dbus_message_iter_append_basic(&var, DBUS_TYPE_STRING, &value);
    dbus_message_iter_close_container(&entry, &var);
    dbus_message_iter_close_container(dict, &entry);
}

static void add_bool(DBusMessageIter *dict, const char *key, bool value)
{
    DBusMessageIter entry, var;
    dbus_bool_t b = value;
    dbus_message_iter_open_container(dict, DBUS_TYPE_DICT_ENTRY, NULL, &entry);
    dbus_message_iter_append_basic(&entry, DBUS_TYPE_STRING, &key);
    dbus_message_iter_open_container(&entry, DBUS_TYPE_VARIANT, "b", &var);
    dbus_message_iter_append_basic(&var, DBUS_TYPE_BOOLEAN, &b);
    dbus_message_iter_close_container(&entry, &var);
    dbus_message_iter_close_container(dict, &entry);
}

static void add_path(DBusMessageIter *dict, const char *key, const char *path)
{
    DBusMessageIter entry, var;
    dbus_message_iter_open_container(dict, DBUS_TYPE_DICT_ENTRY, NULL, &entry);
    dbus_message_iter_append_basic(&entry, DBUS_TYPE_STRING, &key);
    dbus_message_iter_open_container(&entry, DBUS_TYPE_VARIANT, "o", &var);
    dbus_message_iter_append_basic(&var, DBUS_TYPE_OBJECT_PATH, &path);
    dbus_message_iter_close_container(&entry, &var);
    dbus_message_iter_close_container(dict, &entry);
}

static void add_strv(DBusMessageIter *dict, const char *key, char *const *values)
{
    if (!values || !*values)
        return;
    DBusMessageIter entry, var, arr;
    dbus_message_iter_open_container(dict, DBUS_TYPE_DICT_ENTRY, NULL, &entry);
    dbus_message_iter_append_basic(&entry, DBUS_TYPE_STRING, &key);
    dbus_message_iter_open_container(&entry, DBUS_TYPE_VARIANT, "as", &var);
    dbus_message_iter_open_container(&var, DBUS_TYPE_ARRAY, "s", &arr);
    for (char *const *p = values; *p; p++)
        dbus_message_iter_append_basic(&arr, DBUS_TYPE_STRING, p);
    dbus_message_iter_close_container(&var, &arr);
    dbus_message_iter_close_container(&entry, &var);
    dbus_message_iter_close_container(dict, &entry);
}

static void add_headers(DBusMessageIter *dict, char *const *headers)
{
    if (!headers || !*headers)
        return;
    const char *key = "headers";
    DBusMessageIter entry, var, arr, kv;
    dbus_message_iter_open_container(dict, DBUS_TYPE_DICT_ENTRY, NULL, &entry);
    dbus_message_iter_append_basic(&entry, DBUS_TYPE_STRING, &key);
    dbus_message_iter_open_container(&entry, DBUS_TYPE_VARIANT, "a{ss}", &var);
    dbus_message_iter_open_container(&var, DBUS_TYPE_ARRAY, "{ss}", &arr);
    for (char *const *p = headers; *p; p++) {
        const char *colon = strchr(*p, ':');
        g_autofree char *name = g_strstrip(g_strndup(*p, (gsize)(colon - *p)));
        const char *value = colon + 1;
        while (*value == ' ' || *value == '\t')
            value++;
        dbus_message_iter_open_container(&arr, DBUS_TYPE_DICT_ENTRY, NULL, &kv);
        const char *n = name;
        dbus_message_iter_append_basic(&kv, DBUS_TYPE_STRING, &n);
        dbus_message_iter_append_basic(&kv, DBUS_TYPE_STRING, &value);
        dbus_message_iter_close_container(&arr, &kv);
    }
    dbus_message_iter_close_container(&var, &arr);
    dbus_message_iter_close_container(&entry, &var);
    dbus_message_iter_close_container(dict, &entry);
}

/* Open each attachment here, so that the agent gets a descriptor, never a
 * path.  Only regular files and pipes are taken (as by the agent). */
static int open_attachments(const sms_submit_request *req, int *fds)
{
    for (size_t i = 0; i < req->n_attach; i++) {
        const char *path = req->attach[i].path;
        int fd = strcmp(path, "-") == 0 ? dup(STDIN_FILENO)
                                         : open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
            return fail(errno == ENOENT || errno == EACCES ? EX_NOINPUT : EX_IOERR,
                        "--attach: cannot open attachment '%s': %s", path, g_strerror(errno));
        fds[i] = fd;
        struct stat st;
        if (fstat(fd, &st) < 0 || !(S_ISREG(st.st_mode) || S_ISFIFO(st.st_mode)))
            return fail(EX_NOINPUT,
                        "--attach: '%s' is neither a regular file nor a pipe; the agent takes "
                        "only those (use 'smimestream send' for devices)",
                        path);
    }
    return EX_OK;
}

static DBusMessage *build_submit(const sms_submit_request *req, const int *fds, bool serve_pin)
{
    DBusMessage *m = dbus_message_new_method_call(AGENT_NAME, AGENT_PATH, AGENT_NAME, "Submit");
    if (!m)
        return NULL;
    DBusMessageIter it, dict, arr, st;
    dbus_message_iter_init_append(m, &it);

    dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "{sv}", &dict);
    add_string(&dict, "from", req->from);
    add_strv(&dict, "to", req->to);
    add_strv(&dict, "cc", req->cc);
    add_strv(&dict, "bcc", req->bcc);
    add_string(&dict, "subject", req->subject);
    add_string(&dict, "body", req->body);
    add_headers(&dict, req->headers);
    dbus_message_iter_close_container(&it, &dict);

    dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "(ssh)", &arr);
    for (size_t i = 0; i < req->n_attach; i++) {
        const char *path = req->attach[i].path;
        const char *base = strrchr(path, '/');
        const char *name = req->attach[i].name ? req->attach[i].name
                           : strcmp(path, "-") == 0 ? "stdin.bin"
                           : base                  ? base + 1
                                                   : path;
        const char *type = req->attach[i].type ? req->attach[i].type : "";
        dbus_message_iter_open_container(&arr, DBUS_TYPE_STRUCT, NULL, &st);
        dbus_message_iter_append_basic(&st, DBUS_TYPE_STRING, &name);
        dbus_message_iter_append_basic(&st, DBUS_TYPE_STRING, &type);
        dbus_message_iter_append_basic(&st, DBUS_TYPE_UNIX_FD, &fds[i]);
        dbus_message_iter_close_container(&arr, &st);
    }
    dbus_message_iter_close_container(&it, &arr);

    dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "{sv}", &dict);
    add_string(&dict, "signer", req->signer);
    add_string(&dict, "digest", req->digest);
    add_string(&dict, "smtp", req->smtp);
    if (req->pss)
        add_bool(&dict, "pss", true);
    if (req->allow_partial_recipients)
        add_bool(&dict, "allow-partial-recipients", true);
    if (serve_pin)
        add_path(&dict, "pin-prompt", PROMPT_PATH);
    dbus_message_iter_close_container(&it, &dict);
    return m;
}

/* ---- following the job --------------------------------------------------- */

typedef struct follow {
    const sms_submit_request *req;
    const char *job;
    bool finished;
    char *state;
    char *message_id;
    char *detail;
    guint64 bytes;
    gint64 last_draw;
    gint64 start;
} follow;

static void draw_progress(follow *f, bool final)
{
    if (!f->req->progress)
        return;
    gint64 now = g_get_monotonic_time();
    if (!final && now - f->last_draw < G_USEC_PER_SEC / 10)
        return;
    f->last_draw = now;
    double secs = (double)(now - f->start) / G_USEC_PER_SEC;
    g_autofree char *done = g_format_size_full(f->bytes, G_FORMAT_SIZE_IEC_UNITS);
    g_autofree char *rate =
        g_format_size_full(secs > 0 ? (guint64)(f->bytes / secs) : 0, G_FORMAT_SIZE_IEC_UNITS);
    fprintf(stderr, "%ssubmit: %s  %s  %s/s%s", isatty(STDERR_FILENO) ? "\r" : "",
            f->state ? f->state : "running", done, rate,
            final || !isatty(STDERR_FILENO) ? "\n" : "   ");
    fflush(stderr);
}

/* Answer the agent's AskPin from --pin-file or the terminal.  Only the
 * agent may ask. */
static DBusHandlerResult on_ask_pin(DBusConnection *c, DBusMessage *m, follow *f)
{
    const char *token = "", *hint = "";
    DBusMessage *reply;
    if (!dbus_message_get_args(m, NULL, DBUS_TYPE_STRING, &token, DBUS_TYPE_STRING, &hint,
                               DBUS_TYPE_INVALID)) {
        reply = dbus_message_new_error(m, DBUS_ERROR_INVALID_ARGS, "expected (ss)");
    } else {
        char pin[256];
        char err[256] = "";
        int r = SMS_ERR_CANCELLED;
        if (f->req->pin_file && !*hint)
            r = sms_read_secret_file(f->req->pin_file, pin, sizeof pin, err, sizeof err);
        else if (f->req->pin_func)
            r = f->req->pin_func(token, hint, pin, sizeof pin, NULL);
        if (r >= 0) {
            const char *p = pin;
            reply = dbus_message_new_method_return(m);
            if (reply)
                dbus_message_append_args(reply, DBUS_TYPE_STRING, &p, DBUS_TYPE_INVALID);
        } else {
            reply = dbus_message_new_error(m, "org.smimestream.Error.Cancelled",
                                           *hint ? "the PIN from --pin-file was refused"
                                                 : "no PIN to give");
        }
        sms_wipe(pin, sizeof pin);
    }
    if (reply) {
        dbus_connection_send(c, reply, NULL);
        dbus_message_unref(reply);
    }
    return DBUS_HANDLER_RESULT_HANDLED;
}

static DBusHandlerResult filter(DBusConnection *c, DBusMessage *m, void *ud)
{
    follow *f = ud;
    if (dbus_message_is_method_call(m, "org.smimestream.PinPrompt1", "AskPin") &&
        g_strcmp0(dbus_message_get_path(m), PROMPT_PATH) == 0)
        return on_ask_pin(c, m, f);
    if (g_strcmp0(dbus_message_get_path(m), f->job) != 0)
        return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
    if (dbus_message_is_signal(m, "org.smimestream.Job1", "Progress")) {
        dbus_uint64_t bytes;
        if (dbus_message_get_args(m, NULL, DBUS_TYPE_UINT64, &bytes, DBUS_TYPE_INVALID)) {
            f->bytes = bytes;
            draw_progress(f, false);
        }
        return DBUS_HANDLER_RESULT_HANDLED;
    }
    if (dbus_message_is_signal(m, "org.smimestream.Job1", "Finished")) {
        const char *state, *id, *detail;
        if (dbus_message_get_args(m, NULL, DBUS_TYPE_STRING, &state, DBUS_TYPE_STRING, &id,
                                  DBUS_TYPE_STRING, &detail, DBUS_TYPE_INVALID)) {
            g_free(f->state);
            f->state = g_strdup(state);
            f->message_id = g_strdup(id);
            f->detail = g_strdup(detail);
            f->finished = true;
        }
        return DBUS_HANDLER_RESULT_HANDLED;
    }
    return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
}

static void call_job(DBusConnection *c, const char *job, const char *method)
{
    DBusMessage *m = dbus_message_new_method_call(AGENT_NAME, job, "org.smimestream.Job1", method);
    if (m) {
        dbus_connection_send(c, m, NULL);
        dbus_connection_flush(c);
        dbus_message_unref(m);
    }
}

/* The Error property, for the exit code of a failed job. */
static char *job_error(DBusConnection *c, const char *job)
{
    DBusMessage *m = dbus_message_new_method_call(AGENT_NAME, job, DBUS_INTERFACE_PROPERTIES, "Get");
    const char *iface = "org.smimestream.Job1", *prop = "Error";
    char *out = NULL;
    if (!m)
        return NULL;
    dbus_message_append_args(m, DBUS_TYPE_STRING, &iface, DBUS_TYPE_STRING, &prop,
                             DBUS_TYPE_INVALID);
    DBusMessage *r = dbus_connection_send_with_reply_and_block(c, m, 5000, NULL);
    dbus_message_unref(m);
    if (!r)
        return NULL;
    DBusMessageIter it, var;
    if (dbus_message_iter_init(r, &it) && dbus_message_iter_get_arg_type(&it) == DBUS_TYPE_VARIANT) {
        dbus_message_iter_recurse(&it, &var);
        if (dbus_message_iter_get_arg_type(&var) == DBUS_TYPE_STRING) {
            const char *s;
            dbus_message_iter_get_basic(&var, &s);
            out = g_strdup(s);
        }
    }
    dbus_message_unref(r);
    return out;
}

static int follow_job(DBusConnection *c, follow *f)
{
    bool cancelled = false, aborted = false;
    while (!f->finished) {
        if (!dbus_connection_read_write_dispatch(c, 100))
            return fail(EX_TEMPFAIL, "lost the connection to the bus; the job may still run");
        /* Two signals seen at once mean abort: sending Cancel first would
         * let the agent finish and deliver the partial message before the
         * Abort arrives. */
        if (sigints >= 2 && !aborted) {
            aborted = true;
            call_job(c, f->job, "Abort");
        } else if (sigints >= 1 && !cancelled && !aborted) {
            cancelled = true;
            call_job(c, f->job, "Cancel");
            fprintf(stderr, "smimestream: cancelling: the part sent so far will be signed and "
                            "delivered, marked partial (Ctrl-C again to abort)\n");
        }
    }
    draw_progress(f, true);
    if (f->detail && *f->detail)
        fprintf(stderr, "smimestream: %s\n", f->detail);
    if (g_strcmp0(f->state, "done") == 0 || g_strcmp0(f->state, "partial") == 0) {
        if (g_strcmp0(f->state, "partial") == 0)
            fprintf(stderr, "smimestream: cancelled: delivered a signed PARTIAL message "
                            "(Message-ID <%s>)\n", f->message_id);
        return EX_OK;
    }
    if (g_strcmp0(f->state, "aborted") == 0)
        return fail(EX_TEMPFAIL, "aborted, nothing was delivered");
    g_autofree char *err = job_error(c, f->job);
    return fail(exit_code_for(err), "not sent: %s", err ? err : "the job failed");
}

int sms_cli_submit(const sms_submit_request *req)
{
    int code = EX_OK;
    int *fds = g_new(int, req->n_attach ? req->n_attach : 1);
    for (size_t i = 0; i < req->n_attach; i++)
        fds[i] = -1;
    DBusConnection *c = NULL;
    DBusMessage *call = NULL, *reply = NULL;
    DBusError e;
    dbus_error_init(&e);
    follow f = { .req = req, .start = g_get_monotonic_time() };

    if ((code = open_attachments(req, fds)) != EX_OK)
        goto out;
    bool system = g_strcmp0(g_getenv("SMIMESTREAM_BUS"), "system") == 0;
    c = dbus_bus_get_private(system ? DBUS_BUS_SYSTEM : DBUS_BUS_SESSION, &e);
    if (!c) {
        code = fail(EX_UNAVAILABLE, "cannot reach the D-Bus %s bus: %s", system ? "system" : "session",
                    e.message);
        goto out;
    }
    dbus_connection_set_exit_on_disconnect(c, FALSE);
    if (!dbus_connection_can_send_type(c, DBUS_TYPE_UNIX_FD)) {
        code = fail(EX_UNAVAILABLE, "this D-Bus connection cannot pass file descriptors");
        goto out;
    }
    bool serve_pin = req->pin_file || req->pin_func;
    dbus_connection_add_filter(c, filter, &f, NULL);

    struct sigaction sa = { .sa_handler = on_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    /* Subscribe before submitting: a short job can finish before the reply
     * to Submit is read.  Signals of other jobs are filtered by path. */
    dbus_bus_add_match(c, "type='signal',sender='" AGENT_NAME "',interface='org.smimestream.Job1'",
                       NULL);
    call = build_submit(req, fds, serve_pin);
    if (!call) {
        code = fail(EX_SOFTWARE, "out of memory");
        goto out;
    }
    reply = dbus_connection_send_with_reply_and_block(c, call, 60000, &e);
    if (!reply) {
        if (g_strcmp0(e.name, DBUS_ERROR_SERVICE_UNKNOWN) == 0 ||
            g_strcmp0(e.name, DBUS_ERROR_NAME_HAS_NO_OWNER) == 0)
            code = fail(EX_UNAVAILABLE,
                        "no smimestream agent on the %s bus: start smimestream-agent, or use "
                        "'smimestream send'",
                        system ? "system" : "session");
        else
            code = fail(exit_code_for(e.name), "the agent refused the job: %s (%s)", e.message,
                        e.name);
        goto out;
    }
    const char *job = NULL;
    if (!dbus_message_get_args(reply, &e, DBUS_TYPE_OBJECT_PATH, &job, DBUS_TYPE_INVALID)) {
        code = fail(EX_PROTOCOL, "the agent's reply to Submit is malformed: %s", e.message);
        goto out;
    }
    f.job = job;
    /* Our copies go now: the agent holds its own. */
    for (size_t i = 0; i < req->n_attach; i++) {
        close(fds[i]);
        fds[i] = -1;
    }
    if (req->progress)
        fprintf(stderr, "smimestream: submitted as %s\n", job);
    code = follow_job(c, &f);
out:
    for (size_t i = 0; i < req->n_attach; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    g_free(fds);
    if (reply)
        dbus_message_unref(reply);
    if (call)
        dbus_message_unref(call);
    if (c) {
        dbus_connection_close(c);
        dbus_connection_unref(c);
    }
    dbus_error_free(&e);
    g_free(f.state);
    g_free(f.message_id);
    g_free(f.detail);
    return code;
}
