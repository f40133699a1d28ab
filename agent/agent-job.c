/* smimestream-agent: send jobs.
 *
 * A job is set up on the main thread at Submit (message, SMTP transport,
 * attachment fds, all checked), then runs on its own worker thread: open
 * the signer (the PKCS#11 login, perhaps a PIN prompt, happens here, before
 * any attachment byte is read), prepare the message, and let
 * sms_smtp_send() pull it.  The worker never touches D-Bus: it hands
 * state, progress and results to the main loop with
 * g_main_context_invoke(), and asks the main loop to make the few bus
 * calls it needs (PIN prompts, "is the sender still there?").
 *
 * Cancel and Abort arrive on the main thread while the worker may sit in
 * poll() on a quiet pipe.  Each attachment is read through a callback
 * source that polls the fd together with two eventfds the main thread
 * writes, so the read returns at once and the message sees its flag.
 *
 * A pipe's end-of-file is believed only while its sender is still on the
 * bus: a writer that crashes closes the pipe too, and the truncated
 * attachment must not go out as if it were complete.  So at end-of-file
 * the worker waits sender-check-delay-ms (the bus daemon needs a moment to
 * notice a dead peer), then asks the bus whether the sender is still
 * connected; if not, the job is aborted and nothing is delivered.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "agent.h"

const char *job_state_name(job_state s)
{
    static const char *const names[] = {
        [JOB_QUEUED] = "queued", [JOB_RUNNING] = "running", [JOB_SENDING] = "sending",
        [JOB_DONE] = "done",     [JOB_PARTIAL] = "partial", [JOB_FAILED] = "failed",
        [JOB_ABORTED] = "aborted",
    };
    return (unsigned)s < G_N_ELEMENTS(names) ? names[s] : "failed";
}

/* ---- lifetime -------------------------------------------------------------- */

job *job_new(agent *a, const char *owner)
{
    job *j = g_new0(job, 1);
    g_atomic_ref_count_init(&j->ref);
    j->agent = a;
    j->owner = g_strdup(owner);
    j->atts = g_ptr_array_new();
    g_mutex_init(&j->lock);
    j->abort_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    j->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (j->abort_fd < 0 || j->cancel_fd < 0) {
        job_unref(j);
        return NULL;
    }
    j->state = JOB_QUEUED;
    return j;
}

job *job_ref(job *j)
{
    g_atomic_ref_count_inc(&j->ref);
    return j;
}

static void close_att(job_att *att)
{
    int fd = g_atomic_int_exchange(&att->fd, -1);
    if (fd >= 0)
        close(fd);
}

void job_unref(job *j)
{
    if (!j || !g_atomic_ref_count_dec(&j->ref))
        return;
    sms_message_free(j->msg); /* frees the sources, which close their fds */
    sms_smtp_free(j->smtp);
    for (guint i = 0; i < j->atts->len; i++) {
        job_att *att = g_ptr_array_index(j->atts, i);
        close_att(att);
        g_free(att);
    }
    g_ptr_array_unref(j->atts);
    if (j->abort_fd >= 0)
        close(j->abort_fd);
    if (j->cancel_fd >= 0)
        close(j->cancel_fd);
    if (j->pending_pin)
        agent_secret_free(j->pending_pin);
    g_free(j->pending_token);
    g_free(j->prompt_note);
    g_mutex_clear(&j->lock);
    g_free(j->path);
    g_free(j->owner);
    g_free(j->signer_spec);
    g_free(j->cert_file);
    g_free(j->pin_file);
    g_free(j->pin_prompt_path);
    g_free(j->error);
    g_free(j->message_id);
    g_free(j->detail);
    g_free(j->abort_reason);
    g_free(j);
}

guint64 job_bytes_read(job *j)
{
    return __atomic_load_n(&j->bytes_read, __ATOMIC_RELAXED);
}

/* ---- main-loop notifications --------------------------------------------------- */

static gboolean sync_on_main(gpointer data)
{
    agent_job_sync(data);
    return G_SOURCE_REMOVE;
}

static gboolean progress_on_main(gpointer data)
{
    agent_job_progress(data);
    return G_SOURCE_REMOVE;
}

static gboolean finished_on_main(gpointer data)
{
    agent_job_finished(data);
    return G_SOURCE_REMOVE;
}

static void invoke(job *j, GSourceFunc fn)
{
    g_main_context_invoke_full(j->agent->ctx, G_PRIORITY_DEFAULT, fn, job_ref(j),
                               (GDestroyNotify)job_unref);
}

static void set_wstate(job *j, job_state s)
{
    g_atomic_int_set(&j->wstate, (gint)s);
    invoke(j, sync_on_main);
}

static void add_bytes(job *j, size_t n)
{
    __atomic_add_fetch(&j->bytes_read, (guint64)n, __ATOMIC_RELAXED);
    /* At most one notification in flight; the main loop rate-limits. */
    if (g_atomic_int_compare_and_exchange(&j->progress_pending, 0, 1))
        invoke(j, progress_on_main);
}

/* ---- requests from the main thread -------------------------------------------- */

static void poke(int fd)
{
    if (fd >= 0)
        (void)eventfd_write(fd, 1);
}

void job_cancel(job *j)
{
    if (j->finished)
        return;
    g_atomic_int_set(&j->cancel_req, 1);
    g_mutex_lock(&j->lock);
    if (j->msg)
        sms_message_cancel(j->msg);
    g_mutex_unlock(&j->lock);
    poke(j->cancel_fd);
}

void job_abort(job *j, const char *reason)
{
    if (j->finished)
        return;
    g_mutex_lock(&j->lock);
    if (!j->abort_reason)
        j->abort_reason = g_strdup(reason);
    g_atomic_int_set(&j->abort_req, 1);
    if (j->msg)
        sms_message_abort(j->msg);
    if (j->smtp)
        sms_smtp_abort(j->smtp);
    g_mutex_unlock(&j->lock);
    poke(j->abort_fd);
}

void job_owner_left(job *j)
{
    if (j->finished)
        return;
    g_atomic_int_set(&j->owner_gone, 1);
    for (guint i = 0; i < j->atts->len; i++) {
        job_att *att = g_ptr_array_index(j->atts, i);
        if (att->is_pipe && !g_atomic_int_get(&att->eof)) {
            job_abort(j, "the sender left the bus while its pipe was still open; nothing was "
                         "delivered");
            return;
        }
    }
}

/* ---- attachments ------------------------------------------------------------------ */

job_att *job_add_att(job *j, int fd, gboolean is_pipe)
{
    job_att *att = g_new0(job_att, 1);
    att->job = j;
    att->fd = fd;
    att->is_pipe = is_pipe;
    if (is_pipe) {
        /* poll() then read(): never block in read() where an abort cannot
         * reach us (e.g. if the sender kept a copy of the read end). */
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0)
            (void)fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    }
    g_ptr_array_add(j->atts, att);
    return att;
}

static void set_err(char *err, size_t size, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

static void set_err(char *err, size_t size, const char *fmt, ...)
{
    if (!err || !size)
        return;
    va_list ap;
    va_start(ap, fmt);
    g_vsnprintf(err, size, fmt, ap);
    va_end(ap);
}

static void request_abort_from_worker(job *j, const char *reason)
{
    g_mutex_lock(&j->lock);
    if (!j->abort_reason)
        j->abort_reason = g_strdup(reason);
    g_atomic_int_set(&j->abort_req, 1);
    g_mutex_unlock(&j->lock);
}

/* Is this end-of-file real?  See the comment at the top. */
static gboolean confirm_eof(job *j)
{
    static const char gone[] = "the sender left the bus before its pipe was complete; nothing "
                               "was delivered";
    if (g_atomic_int_get(&j->owner_gone)) {
        request_abort_from_worker(j, gone);
        return FALSE;
    }
    struct pollfd p = { .fd = j->abort_fd, .events = POLLIN };
    int delay = (int)j->agent->cfg->sender_check_delay_ms;
    while (delay > 0 && poll(&p, 1, delay) < 0 && errno == EINTR)
        ;
    if (g_atomic_int_get(&j->abort_req))
        return FALSE;
    int present = agent_owner_present(j);
    if (present == 0 || g_atomic_int_get(&j->owner_gone)) {
        request_abort_from_worker(j, gone);
        return FALSE;
    }
    return TRUE;
}

static int att_read(void *user_data, void *buf, size_t cap, size_t *ret_n, char *err,
                    size_t err_size)
{
    job_att *att = user_data;
    job *j = att->job;
    for (;;) {
        if (g_atomic_int_get(&j->abort_req)) {
            set_err(err, err_size, "the job was aborted");
            return SMS_ERR_ABORTED;
        }
        if (g_atomic_int_get(&j->cancel_req)) {
            *ret_n = 0; /* the message sees its cancel flag: partial */
            return SMS_OK;
        }
        int fd = g_atomic_int_get(&att->fd);
        ssize_t n;
        if (!att->is_pipe) {
            /* pread: the file offset is shared with the sender's copy. */
            n = pread(fd, buf, cap, (off_t)att->offset);
            if (n < 0 && errno == EINTR)
                continue;
        } else {
            struct pollfd p[3] = {
                { .fd = fd, .events = POLLIN },
                { .fd = j->abort_fd, .events = POLLIN },
                { .fd = j->cancel_fd, .events = POLLIN },
            };
            if (poll(p, 3, -1) < 0) {
                if (errno == EINTR)
                    continue;
                set_err(err, err_size, "waiting for the pipe failed: %s", g_strerror(errno));
                return SMS_ERR_IO;
            }
            if (p[1].revents || p[2].revents)
                continue;
            n = read(fd, buf, cap);
            if (n < 0 && (errno == EINTR || errno == EAGAIN))
                continue;
        }
        if (n < 0) {
            set_err(err, err_size, "reading failed: %s", g_strerror(errno));
            return SMS_ERR_IO;
        }
        if (n == 0) {
            if (att->is_pipe && !confirm_eof(j))
                continue; /* aborted: the top of the loop says so */
            g_atomic_int_set(&att->eof, 1);
        } else {
            att->offset += (guint64)n;
            add_bytes(j, (size_t)n);
        }
        *ret_n = (size_t)n;
        return SMS_OK;
    }
}

static void att_destroy(void *user_data)
{
    close_att(user_data);
}

sms_source *job_att_source(job_att *att, int64_t size)
{
    sms_source *src = NULL;
    if (sms_source_new_callback(att_read, att, att_destroy, size, &src) < 0)
        return NULL;
    return src;
}

/* ---- PINs ------------------------------------------------------------------------ */

/* The signer's PIN callback, on the worker.  A hint means the last PIN was
 * wrong (that is the only time the plugins give one): forget the cached
 * one and ask. */
static int job_pin_func(const char *what, const char *hint, char *buf, size_t size, void *ud)
{
    job *j = ud;
    agent *a = j->agent;
    gboolean wrong = hint && *hint;
    if (wrong)
        agent_pincache_forget(a->pins, what);
    else if (agent_pincache_lookup(a->pins, what, buf, size))
        return SMS_OK;
    if (g_atomic_int_get(&j->abort_req))
        return SMS_ERR_CANCELLED;
    int r = agent_ask_pin(j, what, hint ? hint : "", buf, size);
    if (r < 0)
        return r;
    /* Cached only once the signer opened: a wrong PIN is never kept. */
    if (!j->pending_pin)
        j->pending_pin = agent_secret_new();
    if (j->pending_pin && strlen(buf) < AGENT_PIN_MAX) {
        memcpy(j->pending_pin, buf, strlen(buf) + 1);
        g_free(j->pending_token);
        j->pending_token = g_strdup(what);
    }
    return SMS_OK;
}

static void pin_commit(job *j, gboolean ok)
{
    if (ok && j->pending_pin && j->pending_token)
        agent_pincache_store(j->agent->pins, j->pending_token, j->pending_pin);
    if (j->pending_pin) {
        agent_secret_free(j->pending_pin);
        j->pending_pin = NULL;
    }
    g_clear_pointer(&j->pending_token, g_free);
}

/* ---- the worker ---------------------------------------------------------------- */

static char *utf8_printf(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

static char *utf8_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *s = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    return g_utf8_make_valid(s, -1);
}

static const char *error_name(int r, gboolean opening_signer)
{
    switch (r) {
    case SMS_ERR_PIN:
    case SMS_ERR_CANCELLED: return ERR_PIN_REFUSED;
    case SMS_ERR_ABORTED: return ERR_ABORTED;
    case SMS_ERR_IO:
    case SMS_ERR_NOINPUT: return ERR_IO;
    case SMS_ERR_SMTP_REFUSED: return ERR_SMTP_REFUSED;
    case SMS_ERR_SMTP_TEMPFAIL: return ERR_SMTP_TEMPFAIL;
    case SMS_ERR_SMTP_AUTH: return ERR_SMTP_AUTH;
    case SMS_ERR_SMTP_UNKNOWN: return ERR_SMTP_UNKNOWN;
    case SMS_ERR_DIGEST:
    case SMS_ERR_BAD_HEADER:
    case SMS_ERR_INVALID_ARG: return ERR_INVALID_ARGS;
    case SMS_ERR_SIGNER:
    case SMS_ERR_UNAVAILABLE:
    case SMS_ERR_KEY_MISMATCH:
    case SMS_ERR_BAD_DATA:
    case SMS_ERR_UNSUPPORTED:
    case SMS_ERR_CRYPTO: return opening_signer ? ERR_SIGNER_UNAVAILABLE : ERR_SIGNER_FAILED;
    default: return ERR_FAILED;
    }
}

static void append_recipients(GString *detail, sms_smtp *t)
{
    size_t n = sms_smtp_get_recipient_count(t);
    for (size_t i = 0; i < n; i++) {
        sms_rcpt_result rr = { .struct_size = sizeof rr };
        if (sms_smtp_get_recipient(t, i, &rr) < 0)
            continue;
        g_string_append_printf(detail, "%s: %s", rr.address,
                               rr.status == SMS_RCPT_ACCEPTED  ? "accepted"
                               : rr.status == SMS_RCPT_REFUSED ? "refused"
                                                               : "not tried");
        if (rr.reply_code)
            g_string_append_printf(detail, " (%d %s)", rr.reply_code,
                                   rr.reply_text ? rr.reply_text : "");
        g_string_append_c(detail, '\n');
    }
}

typedef struct outcome {
    job_state state;
    const char *ename;
    char *text;
} outcome;

static void fail_with(outcome *o, job *j, int r, gboolean opening_signer, const char *text)
{
    if (g_atomic_int_get(&j->abort_req) && r != SMS_ERR_SMTP_UNKNOWN) {
        o->state = JOB_ABORTED;
        o->ename = ERR_ABORTED;
        g_mutex_lock(&j->lock);
        o->text = g_strdup(j->abort_reason ? j->abort_reason : "aborted; nothing was delivered");
        g_mutex_unlock(&j->lock);
        return;
    }
    o->state = JOB_FAILED;
    o->ename = error_name(r, opening_signer);
    if ((r == SMS_ERR_PIN || r == SMS_ERR_CANCELLED) && j->prompt_note)
        o->text = g_strdup_printf("%s (%s)", text && *text ? text : sms_strerror(r),
                                  j->prompt_note);
    else
        o->text = g_strdup(text && *text ? text : sms_strerror(r));
}

static gpointer job_thread(gpointer data)
{
    job *j = data;
    outcome o = { .state = JOB_FAILED };
    char err[1024] = "";
    int r;
    sms_signer *signer = NULL;

    set_wstate(j, JOB_RUNNING);
    if (g_atomic_int_get(&j->abort_req)) {
        fail_with(&o, j, SMS_ERR_ABORTED, FALSE, NULL);
        goto out;
    }
    /* Pre-flight: the PKCS#11 login (and any PIN prompt) happens here,
     * before the first attachment byte is read. */
    sms_signer_options so = {
        .struct_size = sizeof so,
        .cert_file = j->cert_file,
        .pin_file = j->pin_file,
        .pin_func = job_pin_func,
        .pin_user_data = j,
    };
    r = sms_signer_open(j->signer_spec, &so, &signer, err, sizeof err);
    pin_commit(j, r == SMS_OK);
    if (r < 0) {
        fail_with(&o, j, r, TRUE, err);
        goto out;
    }
    g_mutex_lock(&j->lock);
    r = sms_message_set_signer(j->msg, signer);
    g_mutex_unlock(&j->lock);
    sms_signer_unref(signer);
    if (r == SMS_OK)
        r = sms_message_prepare(j->msg);
    if (r < 0) {
        fail_with(&o, j, r, TRUE, sms_message_last_error(j->msg));
        goto out;
    }
    g_mutex_lock(&j->lock);
    j->message_id = g_strdup(sms_message_get_message_id(j->msg));
    g_mutex_unlock(&j->lock);
    set_wstate(j, JOB_SENDING);

    r = sms_smtp_send(j->smtp, j->msg);
    if (r == SMS_OK) {
        o.state = sms_message_is_partial(j->msg) ? JOB_PARTIAL : JOB_DONE;
        const char *note = sms_smtp_last_error(j->smtp);
        if (note && *note)
            o.text = g_strdup(note);
    } else {
        const char *text = sms_smtp_last_error(j->smtp);
        if (!text || !*text)
            text = sms_message_last_error(j->msg);
        fail_with(&o, j, r, FALSE, text);
        if (r == SMS_ERR_SMTP_UNKNOWN) {
            char *t = g_strdup_printf("POSSIBLY DELIVERED: %s", o.text);
            g_free(o.text);
            o.text = t;
        }
    }

out:;
    GString *detail = g_string_new(NULL);
    if (j->smtp)
        append_recipients(detail, j->smtp);
    if (o.state == JOB_PARTIAL)
        g_string_append(detail, "partial: cancelled; the signed message says what was sent\n");
    if (o.text && *o.text)
        g_string_append_printf(detail, "%s: %s\n",
                               o.state == JOB_DONE || o.state == JOB_PARTIAL ? "note" : "error",
                               o.text);
    if (detail->len && detail->str[detail->len - 1] == '\n')
        g_string_truncate(detail, detail->len - 1);

    /* Let go of the message (its sources close the attachment fds) and
     * the transport before telling the main loop. */
    g_mutex_lock(&j->lock);
    sms_message *msg = j->msg;
    sms_smtp *smtp = j->smtp;
    j->msg = NULL;
    j->smtp = NULL;
    j->final_state = o.state;
    if (o.state != JOB_DONE && o.state != JOB_PARTIAL)
        j->error = utf8_printf("%s: %s", o.ename ? o.ename : ERR_FAILED, o.text ? o.text : "failed");
    /* Server replies may hold any bytes; D-Bus strings must be UTF-8. */
    j->detail = g_utf8_make_valid(detail->str, (gssize)detail->len);
    g_string_free(detail, TRUE);
    g_mutex_unlock(&j->lock);
    sms_message_free(msg);
    sms_smtp_free(smtp);
    for (guint i = 0; i < j->atts->len; i++)
        close_att(g_ptr_array_index(j->atts, i));
    g_free(o.text);

    invoke(j, finished_on_main);
    job_unref(j); /* the worker's reference */
    return NULL;
}

void job_start(job *j)
{
    g_autofree char *name = g_strdup_printf("job-%" G_GUINT64_FORMAT, j->id);
    j->started = TRUE;
    j->thread = g_thread_new(name, job_thread, job_ref(j));
}

void job_finish_unstarted(job *j, job_state state, const char *error)
{
    g_mutex_lock(&j->lock);
    sms_message *msg = j->msg;
    sms_smtp *smtp = j->smtp;
    j->msg = NULL;
    j->smtp = NULL;
    j->final_state = state;
    j->error = g_utf8_make_valid(error, -1);
    j->detail = utf8_printf("error: %s", error);
    g_mutex_unlock(&j->lock);
    sms_message_free(msg);
    sms_smtp_free(smtp);
    for (guint i = 0; i < j->atts->len; i++)
        close_att(g_ptr_array_index(j->atts, i));
    agent_job_finished(j);
}
