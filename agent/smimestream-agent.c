/* smimestream-agent: send signed S/MIME e-mail for D-Bus clients.
 *
 *   smimestream-agent [--session | --system] [--config FILE]
 *
 * Owns org.smimestream.Agent1 and serves the API in
 * dbus/org.smimestream.Agent1.xml: Submit() takes a message, attachment
 * fds (read once, never a path) and options, checks everything it can
 * (caller, limits, fd types, signer, SMTP profile), and starts a job at
 * /org/smimestream/Agent1/jobs/N that runs on a worker thread (agent-job.c).
 * D-Bus is handled on the GLib main loop only (libdbus-1 through
 * dbus/sms-dbus-glib.c); workers ask the main loop for the few bus calls
 * they need.
 *
 * Exit status: 0 after SIGTERM/SIGINT, 64 usage, 69 the bus or the name is
 * not available (another agent runs), 78 configuration error.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <poll.h>
#include <unistd.h>

#include <glib-unix.h>

#include "agent.h"

#define DBUS_IFACE_PROPERTIES "org.freedesktop.DBus.Properties"
#define DBUS_IFACE_INTROSPECTABLE "org.freedesktop.DBus.Introspectable"
#define MAX_WAITING_PER_SENDER 64
#define MAX_SIGNERS_PER_SENDER 8
#define MAX_SIGNERS 64
#define MAX_PROMPTERS 64
#define PROGRESS_INTERVAL_US (100 * 1000) /* Progress: at most 10 a second */
#define OWNER_CHECK_TIMEOUT_MS 10000
#define MAX_FINISHED_JOBS 1024 /* lingering job objects; the oldest go first */

struct sender_info {
    char *name;
    int check;          /* 0: asking the bus, 1: allowed, -1: refused */
    uid_t uid;
    gboolean uid_known;
    GQueue waiting;     /* DBusMessage *, until the check is answered */
    GQueue submits;     /* gint64 *: monotonic times of accepted Submits */
    guint active_jobs;
};

static agent A;

/* ---- small D-Bus helpers ------------------------------------------------------- */

static void send_msg(DBusMessage *m)
{
    if (m) {
        dbus_connection_send(A.conn, m, NULL);
        dbus_message_unref(m);
    }
}

static void reply_error(DBusMessage *call, const char *name, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

static void reply_error(DBusMessage *call, const char *name, const char *fmt, ...)
{
    if (dbus_message_get_no_reply(call))
        return;
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *raw = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_autofree char *text = g_utf8_make_valid(raw, -1); /* libdbus insists */
    send_msg(dbus_message_new_error(call, name, text));
}

static void reply_empty(DBusMessage *call)
{
    if (!dbus_message_get_no_reply(call))
        send_msg(dbus_message_new_method_return(call));
}

static void append_variant(DBusMessageIter *it, int type, const char *sig, const void *value)
{
    DBusMessageIter v;
    dbus_message_iter_open_container(it, DBUS_TYPE_VARIANT, sig, &v);
    dbus_message_iter_append_basic(&v, type, value);
    dbus_message_iter_close_container(it, &v);
}

static void append_entry(DBusMessageIter *dict, const char *key, int type, const char *sig,
                         const void *value)
{
    DBusMessageIter e;
    dbus_message_iter_open_container(dict, DBUS_TYPE_DICT_ENTRY, NULL, &e);
    dbus_message_iter_append_basic(&e, DBUS_TYPE_STRING, &key);
    append_variant(&e, type, sig, value);
    dbus_message_iter_close_container(dict, &e);
}

static void append_str_entry(DBusMessageIter *dict, const char *key, const char *value)
{
    append_entry(dict, key, DBUS_TYPE_STRING, "s", &value);
}

/* ---- introspection (the XML comes from the dbus/ files) ---------------------------------- */

static const char xml_head[] =
    "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n"
    " \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n";

static const char xml_std[] =
    "  <interface name=\"org.freedesktop.DBus.Introspectable\">\n"
    "    <method name=\"Introspect\">\n"
    "      <arg name=\"xml_data\" type=\"s\" direction=\"out\"/>\n"
    "    </method>\n"
    "  </interface>\n"
    "  <interface name=\"org.freedesktop.DBus.Peer\">\n"
    "    <method name=\"Ping\"/>\n"
    "    <method name=\"GetMachineId\">\n"
    "      <arg name=\"machine_uuid\" type=\"s\" direction=\"out\"/>\n"
    "    </method>\n"
    "  </interface>\n"
    "  <interface name=\"org.freedesktop.DBus.Properties\">\n"
    "    <method name=\"Get\">\n"
    "      <arg name=\"interface_name\" type=\"s\" direction=\"in\"/>\n"
    "      <arg name=\"property_name\" type=\"s\" direction=\"in\"/>\n"
    "      <arg name=\"value\" type=\"v\" direction=\"out\"/>\n"
    "    </method>\n"
    "    <method name=\"GetAll\">\n"
    "      <arg name=\"interface_name\" type=\"s\" direction=\"in\"/>\n"
    "      <arg name=\"props\" type=\"a{sv}\" direction=\"out\"/>\n"
    "    </method>\n"
    "    <method name=\"Set\">\n"
    "      <arg name=\"interface_name\" type=\"s\" direction=\"in\"/>\n"
    "      <arg name=\"property_name\" type=\"s\" direction=\"in\"/>\n"
    "      <arg name=\"value\" type=\"v\" direction=\"in\"/>\n"
    "    </method>\n"
    "    <signal name=\"PropertiesChanged\">\n"
    "      <arg name=\"interface_name\" type=\"s\"/>\n"
    "      <arg name=\"changed_properties\" type=\"a{sv}\"/>\n"
    "      <arg name=\"invalidated_properties\" type=\"as\"/>\n"
    "    </signal>\n"
    "  </interface>\n";

/* The <interface name="iface"> ... </interface> block of the contract. */
static void append_interface(GString *out, const char *iface)
{
    g_autofree char *open = g_strdup_printf("<interface name=\"%s\">", iface);
    const char *start = strstr(agent_xml_agent1, open);
    const char *end = start ? strstr(start, "</interface>") : NULL;
    if (!end)
        return;
    g_string_append(out, "  ");
    g_string_append_len(out, start, end - start + (gssize)strlen("</interface>"));
    g_string_append_c(out, '\n');
}

static char *introspect(const char *path)
{
    GString *x = g_string_new(xml_head);
    g_string_append(x, "<node>\n");
    if (strcmp(path, "/") == 0) {
        g_string_append(x, "  <node name=\"org\"/>\n");
    } else if (strcmp(path, "/org") == 0) {
        g_string_append(x, "  <node name=\"smimestream\"/>\n");
    } else if (strcmp(path, "/org/smimestream") == 0) {
        g_string_append(x, "  <node name=\"Agent1\"/>\n");
    } else if (strcmp(path, AGENT_PATH) == 0) {
        append_interface(x, AGENT_IFACE);
        g_string_append(x, xml_std);
        g_string_append(x, "  <node name=\"jobs\"/>\n");
    } else if (strcmp(path, AGENT_JOBS_PATH) == 0) {
        GHashTableIter it;
        gpointer k, v;
        g_hash_table_iter_init(&it, A.jobs);
        while (g_hash_table_iter_next(&it, &k, &v))
            g_string_append_printf(x, "  <node name=\"%" G_GUINT64_FORMAT "\"/>\n",
                                   ((job *)v)->id);
    } else {
        append_interface(x, JOB_IFACE);
        g_string_append(x, xml_std);
    }
    g_string_append(x, "</node>\n");
    return g_string_free(x, FALSE);
}

/* ---- jobs: properties and signals ------------------------------------------------ */

static job *job_by_path(const char *path)
{
    const char *p = path + strlen(AGENT_JOBS_PATH "/");
    char *end = NULL;
    if (!g_ascii_isdigit(*p))
        return NULL;
    guint64 id = g_ascii_strtoull(p, &end, 10);
    if (!end || *end)
        return NULL;
    return g_hash_table_lookup(A.jobs, &id);
}

enum { PROP_STATE = 1, PROP_BYTES = 2, PROP_ERROR = 4, PROP_MSGID = 8, PROP_ALL = 15 };

static void job_strings(job *j, char **ret_error, char **ret_msgid)
{
    g_mutex_lock(&j->lock);
    *ret_error = g_strdup(j->error ? j->error : "");
    *ret_msgid = g_strdup(j->message_id ? j->message_id : "");
    g_mutex_unlock(&j->lock);
}

static void append_job_props(DBusMessageIter *dict, job *j, unsigned which)
{
    g_autofree char *error = NULL, *msgid = NULL;
    job_strings(j, &error, &msgid);
    if (which & PROP_STATE)
        append_str_entry(dict, "State", job_state_name(j->state));
    if (which & PROP_BYTES) {
        dbus_uint64_t b = job_bytes_read(j);
        append_entry(dict, "BytesRead", DBUS_TYPE_UINT64, "t", &b);
    }
    if (which & PROP_ERROR)
        append_str_entry(dict, "Error", error);
    if (which & PROP_MSGID)
        append_str_entry(dict, "MessageId", msgid);
}

/* Job signals go to the job's owner only: other clients (other users, on
 * the system bus) learn nothing about it.  They read the properties. */
static DBusMessage *job_signal(job *j, const char *iface, const char *name)
{
    DBusMessage *m = dbus_message_new_signal(j->path, iface, name);
    if (m)
        dbus_message_set_destination(m, j->owner);
    return m;
}

static void emit_props_changed(job *j, unsigned which)
{
    if (!which)
        return;
    DBusMessage *m = job_signal(j, DBUS_IFACE_PROPERTIES, "PropertiesChanged");
    if (!m)
        return;
    DBusMessageIter it, dict, inval;
    const char *iface = JOB_IFACE;
    dbus_message_iter_init_append(m, &it);
    dbus_message_iter_append_basic(&it, DBUS_TYPE_STRING, &iface);
    dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "{sv}", &dict);
    append_job_props(&dict, j, which);
    dbus_message_iter_close_container(&it, &dict);
    dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "s", &inval);
    dbus_message_iter_close_container(&it, &inval);
    send_msg(m);
}

static void emit_progress(job *j, guint64 bytes)
{
    DBusMessage *m = job_signal(j, JOB_IFACE, "Progress");
    dbus_uint64_t b = bytes;
    if (m && dbus_message_append_args(m, DBUS_TYPE_UINT64, &b, DBUS_TYPE_INVALID))
        send_msg(m);
    else if (m)
        dbus_message_unref(m);
    j->last_progress = g_get_monotonic_time();
    j->last_progress_bytes = bytes;
}

void agent_job_sync(job *j)
{
    if (j->finished)
        return;
    unsigned which = 0;
    job_state ws = (job_state)g_atomic_int_get(&j->wstate);
    if (ws > j->state && ws <= JOB_SENDING) {
        j->state = ws;
        which |= PROP_STATE;
    }
    if (!j->id_published) {
        g_mutex_lock(&j->lock);
        if (j->message_id) {
            j->id_published = TRUE;
            which |= PROP_MSGID;
        }
        g_mutex_unlock(&j->lock);
    }
    emit_props_changed(j, which);
}

static gboolean progress_timer_cb(gpointer data)
{
    job *j = data;
    j->progress_timer = 0;
    agent_job_progress(j);
    return G_SOURCE_REMOVE;
}

void agent_job_progress(job *j)
{
    if (j->finished) {
        g_atomic_int_set(&j->progress_pending, 0);
        return;
    }
    if (j->progress_timer)
        return; /* a timer will emit the latest value */
    gint64 now = g_get_monotonic_time();
    gint64 wait = j->last_progress + PROGRESS_INTERVAL_US - now;
    if (wait > 0) {
        j->progress_timer = g_timeout_add_full(G_PRIORITY_DEFAULT, (guint)(wait / 1000) + 1,
                                               progress_timer_cb, job_ref(j),
                                               (GDestroyNotify)job_unref);
        return;
    }
    g_atomic_int_set(&j->progress_pending, 0);
    guint64 bytes = job_bytes_read(j);
    if (bytes != j->last_progress_bytes)
        emit_progress(j, bytes);
}

/* ---- the queue --------------------------------------------------------------------- */

static void start_queued(void)
{
    while (A.running < A.cfg->max_running_jobs && !g_queue_is_empty(&A.queue)) {
        job *j = g_queue_pop_head(&A.queue);
        if (j->finished)
            continue;
        A.running++;
        job_start(j);
        j->state = JOB_RUNNING; /* the worker's own "running" then changes nothing */
        emit_props_changed(j, PROP_STATE);
    }
}

static gboolean linger_done(gpointer data)
{
    job *j = data;
    j->linger_timer = 0;
    g_hash_table_remove(A.jobs, &j->id); /* unrefs */
    return G_SOURCE_REMOVE;
}

static GQueue finished_jobs = G_QUEUE_INIT; /* lingering, oldest first */

/* Value destructor of A.jobs: the job object goes away. */
static void job_forget(gpointer data)
{
    job *j = data;
    g_queue_remove(&finished_jobs, j);
    if (j->linger_timer)
        g_source_remove(j->linger_timer);
    if (j->progress_timer)
        g_source_remove(j->progress_timer); /* unrefs */
    j->linger_timer = j->progress_timer = 0;
    job_unref(j);
}

void agent_job_finished(job *j)
{
    if (j->finished)
        return;
    j->finished = TRUE;
    if (j->thread) {
        g_thread_join(j->thread); /* the worker is returning */
        j->thread = NULL;
        A.running--;
    } else {
        g_queue_remove(&A.queue, j);
    }
    A.active--;
    sender_info *s = g_hash_table_lookup(A.senders, j->owner);
    if (s && s->active_jobs)
        s->active_jobs--;
    if (j->progress_timer) {
        g_source_remove(j->progress_timer);
        j->progress_timer = 0;
    }
    g_atomic_int_set(&j->progress_pending, 0);
    /* Nothing writes to them any more (Cancel and Abort look at finished). */
    close(j->abort_fd);
    close(j->cancel_fd);
    j->abort_fd = j->cancel_fd = -1;

    guint64 bytes = job_bytes_read(j);
    if (bytes != j->last_progress_bytes)
        emit_progress(j, bytes);
    j->state = j->final_state;
    emit_props_changed(j, PROP_ALL);

    g_autofree char *error = NULL, *msgid = NULL;
    job_strings(j, &error, &msgid);
    DBusMessage *m = job_signal(j, JOB_IFACE, "Finished");
    const char *state = job_state_name(j->state);
    const char *detail = j->detail ? j->detail : "";
    if (m && dbus_message_append_args(m, DBUS_TYPE_STRING, &state, DBUS_TYPE_STRING, &msgid,
                                      DBUS_TYPE_STRING, &detail, DBUS_TYPE_INVALID))
        send_msg(m);
    else if (m)
        dbus_message_unref(m);
    g_message("job %" G_GUINT64_FORMAT " (%s): %s%s%s%s, %" G_GUINT64_FORMAT " bytes read%s%s",
              j->id, j->owner, state, *msgid ? " <" : "", msgid, *msgid ? ">" : "", bytes,
              *error ? "; " : "", g_str_has_prefix(error, AGENT_ERR) ? error + strlen(AGENT_ERR) : error);

    if (A.cfg->finished_job_linger && !A.quitting)
        j->linger_timer = g_timeout_add_seconds(A.cfg->finished_job_linger, linger_done, j);
    else
        j->linger_timer = g_idle_add(linger_done, j);
    g_queue_push_tail(&finished_jobs, j);
    if (finished_jobs.length > MAX_FINISHED_JOBS) {
        job *old = g_queue_peek_head(&finished_jobs);
        g_hash_table_remove(A.jobs, &old->id); /* job_forget unqueues it */
    }
    start_queued();
    if (A.quitting && A.running == 0)
        g_main_loop_quit(A.loop);
}

static void abort_job(job *j, const char *reason)
{
    if (j->finished)
        return;
    if (!j->started) {
        g_autofree char *e = g_strdup_printf("%s: %s", ERR_ABORTED, reason);
        job_finish_unstarted(j, JOB_ABORTED, e);
        return;
    }
    job_abort(j, reason);
}

/* ---- senders: credentials, rate, leaving the bus ---------------------------------- */

static void route(DBusMessage *msg);

static void sender_free(gpointer data)
{
    sender_info *s = data;
    DBusMessage *m;
    while ((m = g_queue_pop_head(&s->waiting)))
        dbus_message_unref(m);
    gint64 *t;
    while ((t = g_queue_pop_head(&s->submits)))
        g_free(t);
    g_free(s->name);
    g_free(s);
}

static void on_uid_reply(DBusPendingCall *pending, void *data)
{
    const char *name = data;
    DBusMessage *reply = dbus_pending_call_steal_reply(pending);
    dbus_pending_call_unref(pending);
    sender_info *s = g_hash_table_lookup(A.senders, name);
    dbus_uint32_t uid = 0;
    if (!s) {
        /* It left meanwhile. */
    } else if (reply && dbus_message_get_type(reply) == DBUS_MESSAGE_TYPE_METHOD_RETURN &&
               dbus_message_get_args(reply, NULL, DBUS_TYPE_UINT32, &uid, DBUS_TYPE_INVALID)) {
        s->uid = uid;
        s->uid_known = TRUE;
        s->check = agent_config_uid_allowed(A.cfg, A.system_bus, A.uid, uid) ? 1 : -1;
        if (s->check < 0)
            g_message("refused %s: uid %u is not served", name, (unsigned)uid);
    } else {
        s->check = -1;
    }
    if (reply)
        dbus_message_unref(reply);
    DBusMessage *m;
    while (s && (m = g_queue_pop_head(&s->waiting))) {
        route(m); /* answers or refuses, now that the check is known */
        dbus_message_unref(m);
    }
}

/* Do not trust the bus alone: ask it who the sender is (once per
 * connection) and serve only allowed uids.  Messages wait, in order,
 * while the answer is out. */
static gboolean authorized(DBusMessage *msg)
{
    const char *sender = dbus_message_get_sender(msg);
    if (!sender) {
        reply_error(msg, ERR_ACCESS_DENIED, "no sender");
        return FALSE;
    }
    sender_info *s = g_hash_table_lookup(A.senders, sender);
    if (!s) {
        s = g_new0(sender_info, 1);
        s->name = g_strdup(sender);
        g_hash_table_insert(A.senders, s->name, s);
    }
    if (s->check > 0)
        return TRUE;
    if (s->check < 0) {
        if (s->uid_known)
            reply_error(msg, ERR_ACCESS_DENIED,
                        "the smimestream agent serves only its own user on this bus (uid %u "
                        "asked; see allowed-users in smimestream-agent(8))",
                        (unsigned)s->uid);
        else
            reply_error(msg, ERR_ACCESS_DENIED, "the bus could not tell who the caller is");
        return FALSE;
    }
    if (s->waiting.length >= MAX_WAITING_PER_SENDER) {
        reply_error(msg, ERR_TOO_MANY_JOBS, "too many calls waiting for the credentials check");
        return FALSE;
    }
    g_queue_push_tail(&s->waiting, dbus_message_ref(msg));
    if (s->waiting.length > 1)
        return FALSE; /* asked already */
    DBusMessage *q = dbus_message_new_method_call(DBUS_SERVICE_DBUS, DBUS_PATH_DBUS,
                                                  DBUS_INTERFACE_DBUS, "GetConnectionUnixUser");
    DBusPendingCall *pending = NULL;
    if (q && dbus_message_append_args(q, DBUS_TYPE_STRING, &sender, DBUS_TYPE_INVALID) &&
        dbus_connection_send_with_reply(A.conn, q, &pending, 25000) && pending) {
        dbus_pending_call_set_notify(pending, on_uid_reply, g_strdup(sender), g_free);
    } else {
        s->check = -1;
        g_queue_remove(&s->waiting, msg);
        dbus_message_unref(msg);
        reply_error(msg, ERR_ACCESS_DENIED, "cannot check the caller's credentials");
    }
    if (q)
        dbus_message_unref(q);
    return FALSE;
}

static void sender_left(const char *name)
{
    GHashTableIter it;
    gpointer k, v;
    g_hash_table_iter_init(&it, A.jobs);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        job *j = v;
        if (j->finished || strcmp(j->owner, name) != 0)
            continue;
        if (!j->started) {
            gboolean pipes = FALSE;
            for (guint i = 0; i < j->atts->len; i++)
                pipes |= ((job_att *)g_ptr_array_index(j->atts, i))->is_pipe;
            g_atomic_int_set(&j->owner_gone, 1);
            if (pipes)
                abort_job(j, "the sender left the bus while its pipe was still open; nothing "
                             "was delivered");
        } else {
            job_owner_left(j);
        }
    }
    g_mutex_lock(&A.reg_lock);
    for (guint i = A.app_signers->len; i-- > 0;) {
        app_signer *s = g_ptr_array_index(A.app_signers, i);
        if (strcmp(s->bus_name, name) == 0) {
            g_message("application signer '%s' (%s) left", s->name, name);
            g_ptr_array_remove_index(A.app_signers, i);
        }
    }
    for (guint i = A.prompters->len; i-- > 0;) {
        prompter *p = g_ptr_array_index(A.prompters, i);
        if (strcmp(p->bus_name, name) == 0)
            g_ptr_array_remove_index(A.prompters, i);
    }
    g_mutex_unlock(&A.reg_lock);
    g_hash_table_remove(A.senders, name);
}

static gboolean rate_ok(sender_info *s, guint *ret_wait)
{
    gint64 now = g_get_monotonic_time();
    gint64 *t;
    while ((t = g_queue_peek_head(&s->submits)) && now - *t >= 60 * G_USEC_PER_SEC)
        g_free(g_queue_pop_head(&s->submits));
    if (!A.cfg->submit_rate || s->submits.length < A.cfg->submit_rate)
        return TRUE;
    t = g_queue_peek_head(&s->submits);
    *ret_wait = (guint)((60 * G_USEC_PER_SEC - (now - *t)) / G_USEC_PER_SEC) + 1;
    return FALSE;
}

/* ---- Submit ------------------------------------------------------------------------- */

typedef struct att_in {
    char *filename;
    char *content_type;
    int fd;
    gboolean is_pipe;
    int64_t size;
} att_in;

typedef struct submit_req {
    char *from;
    GPtrArray *to, *cc, *bcc;
    char *subject;
    char *body;
    GPtrArray *hdr_names, *hdr_values;
    GArray *atts; /* att_in */
    char *signer, *digest, *smtp, *pin_prompt;
    int pss, allow_partial; /* -1: not given */
    /* the first error */
    const char *ename;
    char *etext;
} submit_req;

static void req_error(submit_req *r, const char *name, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

static void req_error(submit_req *r, const char *name, const char *fmt, ...)
{
    if (r->ename)
        return;
    va_list ap;
    va_start(ap, fmt);
    r->etext = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    r->ename = name;
}

static void req_free(submit_req *r)
{
    g_free(r->from);
    g_ptr_array_unref(r->to);
    g_ptr_array_unref(r->cc);
    g_ptr_array_unref(r->bcc);
    g_free(r->subject);
    g_free(r->body);
    g_ptr_array_unref(r->hdr_names);
    g_ptr_array_unref(r->hdr_values);
    for (guint i = 0; i < r->atts->len; i++) {
        att_in *a = &g_array_index(r->atts, att_in, i);
        g_free(a->filename);
        g_free(a->content_type);
        if (a->fd >= 0)
            close(a->fd);
    }
    g_array_unref(r->atts);
    g_free(r->signer);
    g_free(r->digest);
    g_free(r->smtp);
    g_free(r->pin_prompt);
    g_free(r->etext);
}

static gboolean want_sig(submit_req *r, DBusMessageIter *var, const char *dict, const char *key,
                         const char *sig)
{
    char *got = dbus_message_iter_get_signature(var);
    gboolean ok = got && strcmp(got, sig) == 0;
    if (!ok)
        req_error(r, ERR_INVALID_ARGS, "%s key '%s' must have type '%s', not '%s'", dict, key,
                  sig, got ? got : "?");
    dbus_free(got);
    return ok;
}

static char *iter_string(DBusMessageIter *it)
{
    const char *s = NULL;
    dbus_message_iter_get_basic(it, &s);
    return g_strdup(s);
}

static void iter_strings(DBusMessageIter *var, GPtrArray *out)
{
    DBusMessageIter arr;
    dbus_message_iter_recurse(var, &arr);
    while (dbus_message_iter_get_arg_type(&arr) == DBUS_TYPE_STRING) {
        g_ptr_array_add(out, iter_string(&arr));
        dbus_message_iter_next(&arr);
    }
}

static void parse_message_dict(submit_req *r, DBusMessageIter *arr)
{
    for (; dbus_message_iter_get_arg_type(arr) == DBUS_TYPE_DICT_ENTRY && !r->ename;
         dbus_message_iter_next(arr)) {
        DBusMessageIter ent, var;
        const char *key = NULL;
        dbus_message_iter_recurse(arr, &ent);
        dbus_message_iter_get_basic(&ent, &key);
        dbus_message_iter_next(&ent);
        dbus_message_iter_recurse(&ent, &var);
        if (strcmp(key, "from") == 0) {
            if (want_sig(r, &var, "message", key, "s")) {
                g_free(r->from);
                r->from = iter_string(&var);
            }
        } else if (strcmp(key, "to") == 0 || strcmp(key, "cc") == 0 || strcmp(key, "bcc") == 0) {
            GPtrArray *list = key[0] == 't' ? r->to : key[0] == 'c' ? r->cc : r->bcc;
            if (want_sig(r, &var, "message", key, "as"))
                iter_strings(&var, list);
        } else if (strcmp(key, "subject") == 0) {
            if (want_sig(r, &var, "message", key, "s")) {
                g_free(r->subject);
                r->subject = iter_string(&var);
            }
        } else if (strcmp(key, "body") == 0) {
            if (want_sig(r, &var, "message", key, "s")) {
                g_free(r->body);
                r->body = iter_string(&var);
            }
        } else if (strcmp(key, "headers") == 0) {
            if (!want_sig(r, &var, "message", key, "a{ss}"))
                continue;
            DBusMessageIter h, he;
            dbus_message_iter_recurse(&var, &h);
            for (; dbus_message_iter_get_arg_type(&h) == DBUS_TYPE_DICT_ENTRY;
                 dbus_message_iter_next(&h)) {
                dbus_message_iter_recurse(&h, &he);
                g_ptr_array_add(r->hdr_names, iter_string(&he));
                dbus_message_iter_next(&he);
                g_ptr_array_add(r->hdr_values, iter_string(&he));
            }
        } else {
            req_error(r, ERR_INVALID_ARGS,
                      "unknown message key '%s' (known: from, to, cc, bcc, subject, body, headers)",
                      key);
        }
    }
}

static void parse_options_dict(submit_req *r, DBusMessageIter *arr)
{
    for (; dbus_message_iter_get_arg_type(arr) == DBUS_TYPE_DICT_ENTRY && !r->ename;
         dbus_message_iter_next(arr)) {
        DBusMessageIter ent, var;
        const char *key = NULL;
        dbus_message_iter_recurse(arr, &ent);
        dbus_message_iter_get_basic(&ent, &key);
        dbus_message_iter_next(&ent);
        dbus_message_iter_recurse(&ent, &var);
        char **slot = strcmp(key, "signer") == 0   ? &r->signer
                      : strcmp(key, "digest") == 0 ? &r->digest
                      : strcmp(key, "smtp") == 0   ? &r->smtp
                                                   : NULL;
        if (slot) {
            if (want_sig(r, &var, "options", key, "s")) {
                g_free(*slot);
                *slot = iter_string(&var);
            }
        } else if (strcmp(key, "pin-prompt") == 0) {
            if (want_sig(r, &var, "options", key, "o")) {
                g_free(r->pin_prompt);
                r->pin_prompt = iter_string(&var);
            }
        } else if (strcmp(key, "pss") == 0 || strcmp(key, "allow-partial-recipients") == 0) {
            if (want_sig(r, &var, "options", key, "b")) {
                dbus_bool_t b = FALSE;
                dbus_message_iter_get_basic(&var, &b);
                *(key[0] == 'p' ? &r->pss : &r->allow_partial) = b ? 1 : 0;
            }
        } else {
            req_error(r, ERR_INVALID_ARGS,
                      "unknown option '%s' (known: signer, digest, smtp, pin-prompt, pss, "
                      "allow-partial-recipients)",
                      key);
        }
    }
}

static void parse_attachments(submit_req *r, DBusMessageIter *arr)
{
    /* Every 'h' is a new fd we own: take them all, even after an error,
     * so that req_free closes them. */
    for (; dbus_message_iter_get_arg_type(arr) == DBUS_TYPE_STRUCT; dbus_message_iter_next(arr)) {
        DBusMessageIter st;
        att_in a = { .fd = -1, .size = -1 };
        dbus_message_iter_recurse(arr, &st);
        a.filename = iter_string(&st);
        dbus_message_iter_next(&st);
        a.content_type = iter_string(&st);
        dbus_message_iter_next(&st);
        dbus_message_iter_get_basic(&st, &a.fd);
        g_array_append_val(r->atts, a);
    }
}

static const char *fd_kind(mode_t m)
{
    return S_ISSOCK(m)  ? "a socket"
           : S_ISCHR(m) ? "a character device"
           : S_ISBLK(m) ? "a block device"
           : S_ISDIR(m) ? "a directory"
           : S_ISLNK(m) ? "a symbolic link"
                        : "not a regular file or pipe";
}

static void check_fds(submit_req *r)
{
    for (guint i = 0; i < r->atts->len && !r->ename; i++) {
        att_in *a = &g_array_index(r->atts, att_in, i);
        struct stat st;
        int fl = fcntl(a->fd, F_GETFL);
        if (a->fd < 0 || fstat(a->fd, &st) < 0 || fl < 0) {
            req_error(r, ERR_BAD_FD, "attachment %u (%s): not a usable file descriptor", i + 1,
                      a->filename);
        } else if (!S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode)) {
            req_error(r, ERR_BAD_FD,
                      "attachment %u (%s) is %s; pass a regular file or a pipe (each is read once)",
                      i + 1, a->filename, fd_kind(st.st_mode));
        } else if ((fl & O_PATH) == O_PATH || (fl & O_ACCMODE) == O_WRONLY) {
            req_error(r, ERR_BAD_FD, "attachment %u (%s) is not open for reading%s", i + 1,
                      a->filename, S_ISFIFO(st.st_mode) ? " (pass the read end of the pipe)" : "");
        } else {
            a->is_pipe = S_ISFIFO(st.st_mode);
            a->size = a->is_pipe ? -1 : (int64_t)st.st_size;
        }
    }
}

static gsize header_bytes(submit_req *r)
{
    gsize n = r->from ? strlen(r->from) : 0;
    GPtrArray *lists[] = { r->to, r->cc, r->bcc, r->hdr_names, r->hdr_values };
    for (guint l = 0; l < G_N_ELEMENTS(lists); l++)
        for (guint i = 0; i < lists[l]->len; i++)
            n += strlen(g_ptr_array_index(lists[l], i)) + 4;
    if (r->subject)
        n += strlen(r->subject);
    for (guint i = 0; i < r->atts->len; i++) {
        att_in *a = &g_array_index(r->atts, att_in, i);
        n += strlen(a->filename) + strlen(a->content_type) + 4;
    }
    return n;
}

static gboolean app_signer_known(const char *name, GString *names)
{
    gboolean found = FALSE;
    g_mutex_lock(&A.reg_lock);
    for (guint i = 0; i < A.app_signers->len; i++) {
        app_signer *s = g_ptr_array_index(A.app_signers, i);
        found |= strcmp(s->name, name) == 0;
        g_string_append_printf(names, "%s'%s'", names->len ? ", " : "", s->name);
    }
    g_mutex_unlock(&A.reg_lock);
    return found;
}

static GString *config_signer_names(void)
{
    GString *names = g_string_new(NULL);
    for (guint i = 0; i < A.cfg->signers->len; i++)
        g_string_append_printf(names, "%s'%s'", names->len ? ", " : "",
                               ((agent_signer_conf *)g_ptr_array_index(A.cfg->signers, i))->name);
    return names;
}

/* Which signer: a configured one, a pkcs11: URI, or dbus:NAME.  Never a
 * key file the caller names. */
static void resolve_signer(submit_req *r, job *j, char **ret_digest, gboolean *ret_pss)
{
    const agent_signer_conf *sc = agent_config_signer(A.cfg, r->signer ? r->signer : "default");
    if (sc) {
        j->signer_spec = g_strdup(sc->spec);
        j->cert_file = g_strdup(sc->cert);
        j->pin_file = g_strdup(sc->pin_file);
        *ret_digest = g_strdup(sc->digest);
        *ret_pss = sc->pss;
        return;
    }
    if (!r->signer) {
        req_error(r, ERR_SIGNER_UNAVAILABLE,
                  "no signer option, and no [signer:default] in the agent's configuration");
        return;
    }
    if (g_str_has_prefix(r->signer, "pkcs11:")) {
        g_autofree char *why = NULL;
        int c = agent_config_check_pkcs11_uri(A.cfg, r->signer, TRUE, &why);
        if (c != AGENT_URI_OK) {
            req_error(r, c == AGENT_URI_DENIED ? ERR_ACCESS_DENIED : ERR_INVALID_ARGS, "%s", why);
            return;
        }
    } else if (g_str_has_prefix(r->signer, "dbus:")) {
        g_autoptr(GString) names = g_string_new(NULL);
        if (!app_signer_known(r->signer + 5, names)) {
            req_error(r, ERR_SIGNER_UNAVAILABLE,
                      "no application registered a signer named '%s' with the agent "
                      "(registered: %s)",
                      r->signer + 5, names->len ? names->str : "none");
            return;
        }
    } else {
        g_autoptr(GString) names = config_signer_names();
        req_error(r, ERR_SIGNER_UNAVAILABLE,
                  "signer '%s' is not named in the agent's configuration (configured: %s), nor "
                  "a pkcs11: URI or dbus:NAME; the agent does not open key files that a caller "
                  "names",
                  r->signer, names->len ? names->str : "none");
        return;
    }
    j->signer_spec = g_strdup(r->signer);
}

static sms_smtp *make_smtp(submit_req *r)
{
    const char *which = r->smtp ? r->smtp : "default";
    const agent_smtp_profile *p = agent_config_smtp(A.cfg, which);
    const char *url = p ? p->url : NULL;
    if (!p && r->smtp && (g_str_has_prefix(r->smtp, "smtp://") || g_str_has_prefix(r->smtp, "smtps://"))) {
        if (!A.cfg->allow_smtp_urls) {
            req_error(r, ERR_SMTP_PROFILE,
                      "the agent's configuration allows named SMTP profiles only "
                      "(allow-smtp-urls=false)");
            return NULL;
        }
        url = r->smtp;
    }
    if (!url) {
        req_error(r, ERR_SMTP_PROFILE,
                  r->smtp ? "'%s' is neither an SMTP profile of the agent's configuration nor an "
                            "smtp:// or smtps:// URL"
                          : "%sno smtp option, and no [smtp:default] in the agent's configuration",
                  r->smtp ? r->smtp : "");
        return NULL;
    }
    sms_smtp *t = sms_smtp_new();
    int rc;
    if (!t) {
        req_error(r, ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    if ((rc = sms_smtp_set_url(t, url)) < 0) {
        req_error(r, ERR_SMTP_PROFILE, "SMTP URL '%s': %s", url, sms_smtp_last_error(t));
        goto fail;
    }
    if (p && p->user) {
        char pass[1024] = "", err[512] = "";
        rc = p->password_file ? sms_read_secret_file(p->password_file, pass, sizeof pass, err,
                                                     sizeof err)
                              : SMS_ERR_INVALID_ARG;
        if (rc < 0) {
            req_error(r, ERR_SMTP_PROFILE, "SMTP profile '%s': %s", p->name,
                      p->password_file ? err : "user without password-file");
            sms_wipe(pass, sizeof pass);
            goto fail;
        }
        rc = sms_smtp_set_auth(t, p->user, pass);
        sms_wipe(pass, sizeof pass);
        if (rc < 0) {
            req_error(r, ERR_SMTP_PROFILE, "SMTP profile '%s': %s", p->name,
                      sms_smtp_last_error(t));
            goto fail;
        }
    }
    if (p && p->cacert && sms_smtp_set_cacert(t, p->cacert) < 0) {
        req_error(r, ERR_SMTP_PROFILE, "SMTP profile '%s': %s", p->name, sms_smtp_last_error(t));
        goto fail;
    }
    if (p && p->timeout)
        sms_smtp_set_timeouts(t, p->timeout, p->timeout);
    gboolean partial = r->allow_partial >= 0 ? r->allow_partial : (p && p->allow_partial_recipients);
    unsigned flags = (p && p->starttls ? SMS_SMTP_REQUIRE_STARTTLS : 0) |
                     (partial ? SMS_SMTP_ALLOW_PARTIAL_RECIPIENTS : 0);
    sms_smtp_set_flags(t, flags);
    for (guint i = 0; i < r->bcc->len; i++) {
        if (sms_smtp_add_bcc(t, g_ptr_array_index(r->bcc, i)) < 0) {
            req_error(r, ERR_INVALID_ARGS, "bcc: %s", sms_smtp_last_error(t));
            goto fail;
        }
    }
    return t;
fail:
    sms_smtp_free(t);
    return NULL;
}

static void msg_check(submit_req *r, sms_message *m, int rc, const char *what)
{
    if (rc < 0)
        req_error(r, ERR_INVALID_ARGS, "%s: %s", what,
                  *sms_message_last_error(m) ? sms_message_last_error(m) : sms_strerror(rc));
}

static void build_message(submit_req *r, job *j, const char *digest, gboolean pss)
{
    sms_message *m = sms_message_new();
    if (!m) {
        req_error(r, ERR_NO_MEMORY, "out of memory");
        return;
    }
    j->msg = m;
    msg_check(r, m, sms_message_set_from(m, r->from), "from");
    for (guint i = 0; i < r->to->len && !r->ename; i++)
        msg_check(r, m, sms_message_add_to(m, g_ptr_array_index(r->to, i)), "to");
    for (guint i = 0; i < r->cc->len && !r->ename; i++)
        msg_check(r, m, sms_message_add_cc(m, g_ptr_array_index(r->cc, i)), "cc");
    if (r->subject && !r->ename)
        msg_check(r, m, sms_message_set_subject(m, r->subject), "subject");
    if (r->body && !r->ename)
        msg_check(r, m, sms_message_set_body(m, r->body, strlen(r->body)), "body");
    for (guint i = 0; i < r->hdr_names->len && !r->ename; i++)
        msg_check(r, m, sms_message_add_header(m, g_ptr_array_index(r->hdr_names, i),
                                               g_ptr_array_index(r->hdr_values, i)),
                  "headers");
    if (digest && !r->ename) {
        sms_digest d = sms_digest_from_string(digest);
        if (d == SMS_DIGEST_NONE || d == SMS_DIGEST_SHA1 || d == SMS_DIGEST_MD5)
            req_error(r, ERR_INVALID_ARGS, "digest '%s': use sha256, sha384, sha512 or sha224",
                      digest);
        else
            msg_check(r, m, sms_message_set_digest(m, d), "digest");
    }
    if (!r->ename)
        msg_check(r, m, sms_message_set_flags(m, pss ? SMS_MESSAGE_RSA_PSS : 0), "pss");
    for (guint i = 0; i < r->atts->len && !r->ename; i++) {
        att_in *a = &g_array_index(r->atts, att_in, i);
        job_att *att = job_add_att(j, a->fd, a->is_pipe);
        a->fd = -1; /* the job owns it now */
        sms_source *src = job_att_source(att, a->size);
        if (!src) {
            req_error(r, ERR_NO_MEMORY, "out of memory");
            break;
        }
        msg_check(r, m,
                  sms_message_add_attachment(m, src, *a->filename ? a->filename : NULL,
                                             *a->content_type ? a->content_type : NULL),
                  "attachment");
    }
}

static void agent_submit(DBusMessage *msg)
{
    const char *sender = dbus_message_get_sender(msg);
    sender_info *s = g_hash_table_lookup(A.senders, sender);
    submit_req r = {
        .to = g_ptr_array_new_with_free_func(g_free),
        .cc = g_ptr_array_new_with_free_func(g_free),
        .bcc = g_ptr_array_new_with_free_func(g_free),
        .hdr_names = g_ptr_array_new_with_free_func(g_free),
        .hdr_values = g_ptr_array_new_with_free_func(g_free),
        .atts = g_array_new(FALSE, TRUE, sizeof(att_in)),
        .pss = -1,
        .allow_partial = -1,
    };
    job *j = NULL;
    g_autofree char *digest = NULL;
    gboolean pss = FALSE;
    guint wait = 0;

    if (!dbus_message_has_signature(msg, "a{sv}a(ssh)a{sv}")) {
        req_error(&r, ERR_INVALID_ARGS,
                  "Submit takes (a{sv} message, a(ssh) attachments, a{sv} options), not (%s)",
                  dbus_message_get_signature(msg));
        goto out;
    }
    DBusMessageIter top, arr;
    dbus_message_iter_init(msg, &top);
    dbus_message_iter_recurse(&top, &arr);
    parse_message_dict(&r, &arr);
    dbus_message_iter_next(&top);
    dbus_message_iter_recurse(&top, &arr);
    parse_attachments(&r, &arr);
    dbus_message_iter_next(&top);
    dbus_message_iter_recurse(&top, &arr);
    if (!r.ename)
        parse_options_dict(&r, &arr);
    if (r.ename)
        goto out;

    if (A.quitting) {
        req_error(&r, ERR_SHUTTING_DOWN, "the agent is shutting down");
        goto out;
    }
    if (!r.from)
        req_error(&r, ERR_INVALID_ARGS, "no sender: give 'from' in the message");
    else if (!r.to->len && !r.cc->len && !r.bcc->len)
        req_error(&r, ERR_INVALID_ARGS, "no recipients: give 'to', 'cc' or 'bcc' in the message");
    else if (r.atts->len > A.cfg->max_attachments)
        req_error(&r, ERR_TOO_MANY_ATTACHMENTS, "%u attachments; this agent takes at most %u a job",
                  r.atts->len, A.cfg->max_attachments);
    else if (header_bytes(&r) > A.cfg->max_header_bytes)
        req_error(&r, ERR_HEADER_TOO_LARGE,
                  "the addresses, subject, headers and attachment names take %" G_GSIZE_FORMAT
                  " bytes; this agent takes at most %" G_GSIZE_FORMAT,
                  header_bytes(&r), A.cfg->max_header_bytes);
    else if (r.body && strlen(r.body) > A.cfg->max_body_bytes)
        req_error(&r, ERR_BODY_TOO_LARGE,
                  "the body has %" G_GSIZE_FORMAT " bytes; this agent takes at most %" G_GSIZE_FORMAT
                  " (send long text as an attachment)",
                  strlen(r.body), A.cfg->max_body_bytes);
    if (!r.ename)
        check_fds(&r);
    if (r.ename)
        goto out;
    if (s->active_jobs >= A.cfg->max_jobs_per_sender)
        req_error(&r, ERR_TOO_MANY_JOBS,
                  "you have %u jobs queued or running; this agent takes at most %u per client",
                  s->active_jobs, A.cfg->max_jobs_per_sender);
    else if (A.active >= A.cfg->max_queued_jobs)
        req_error(&r, ERR_TOO_MANY_JOBS, "the agent has %u jobs queued or running (at most %u)",
                  A.active, A.cfg->max_queued_jobs);
    else if (!rate_ok(s, &wait))
        req_error(&r, ERR_RATE_LIMITED,
                  "more than %u jobs in a minute from this client; try again in %u s",
                  A.cfg->submit_rate, wait);
    if (r.ename)
        goto out;

    j = job_new(&A, sender);
    if (!j) {
        req_error(&r, ERR_NO_MEMORY, "cannot create the job: %s", g_strerror(errno));
        goto out;
    }
    resolve_signer(&r, j, &digest, &pss);
    if (r.ename)
        goto out;
    if (r.digest) {
        g_free(digest);
        digest = g_strdup(r.digest);
    }
    if (r.pss >= 0)
        pss = r.pss;
    j->smtp = make_smtp(&r);
    if (r.ename)
        goto out;
    build_message(&r, j, digest, pss);
    if (r.ename)
        goto out;
    j->pin_prompt_path = g_strdup(r.pin_prompt);

    /* Accepted. */
    j->id = ++A.next_job_id;
    j->path = g_strdup_printf(AGENT_JOBS_PATH "/%" G_GUINT64_FORMAT, j->id);
    g_hash_table_insert(A.jobs, &j->id, j);
    A.active++;
    s->active_jobs++;
    if (A.cfg->submit_rate) {
        gint64 *now = g_new(gint64, 1);
        *now = g_get_monotonic_time();
        g_queue_push_tail(&s->submits, now);
    }
    g_message("job %" G_GUINT64_FORMAT " from %s (uid %u): %u attachment(s), signer %s",
              j->id, sender, (unsigned)s->uid, r.atts->len, j->signer_spec);

    /* The reply goes out before any signal of the job. */
    DBusMessage *reply = dbus_message_new_method_return(msg);
    const char *path = j->path;
    if (reply && dbus_message_append_args(reply, DBUS_TYPE_OBJECT_PATH, &path, DBUS_TYPE_INVALID))
        send_msg(reply);
    else if (reply)
        dbus_message_unref(reply);
    g_queue_push_tail(&A.queue, j);
    j = NULL;
    start_queued();

out:
    if (r.ename)
        reply_error(msg, r.ename, "%s", r.etext);
    job_unref(j);
    req_free(&r);
}

/* ---- signers and prompters ------------------------------------------------------- */

static void app_signer_free(gpointer p)
{
    app_signer *s = p;
    g_free(s->id);
    g_free(s->name);
    g_free(s->bus_name);
    g_free(s->path);
    g_free(s);
}

static void prompter_free(gpointer p)
{
    prompter *pr = p;
    g_free(pr->bus_name);
    g_free(pr->path);
    g_free(pr);
}

static void agent_list_signers(DBusMessage *msg)
{
    DBusMessage *reply = dbus_message_new_method_return(msg);
    if (!reply)
        return;
    DBusMessageIter it, arr, st, dict;
    dbus_message_iter_init_append(reply, &it);
    dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "(sa{sv})", &arr);
    for (guint i = 0; i < A.cfg->signers->len; i++) {
        agent_signer_conf *c = g_ptr_array_index(A.cfg->signers, i);
        g_autofree char *id = g_strdup_printf("config:%s", c->name);
        const char *idp = id;
        dbus_message_iter_open_container(&arr, DBUS_TYPE_STRUCT, NULL, &st);
        dbus_message_iter_append_basic(&st, DBUS_TYPE_STRING, &idp);
        dbus_message_iter_open_container(&st, DBUS_TYPE_ARRAY, "{sv}", &dict);
        append_str_entry(&dict, "kind", "config");
        append_str_entry(&dict, "name", c->name);
        dbus_message_iter_close_container(&st, &dict);
        dbus_message_iter_close_container(&arr, &st);
    }
    g_mutex_lock(&A.reg_lock);
    for (guint i = 0; i < A.app_signers->len; i++) {
        app_signer *s = g_ptr_array_index(A.app_signers, i);
        dbus_message_iter_open_container(&arr, DBUS_TYPE_STRUCT, NULL, &st);
        dbus_message_iter_append_basic(&st, DBUS_TYPE_STRING, &s->id);
        dbus_message_iter_open_container(&st, DBUS_TYPE_ARRAY, "{sv}", &dict);
        append_str_entry(&dict, "kind", "dbus");
        append_str_entry(&dict, "name", s->name);
        append_str_entry(&dict, "bus-name", s->bus_name);
        append_entry(&dict, "path", DBUS_TYPE_OBJECT_PATH, "o", &s->path);
        dbus_message_iter_close_container(&st, &dict);
        dbus_message_iter_close_container(&arr, &st);
    }
    g_mutex_unlock(&A.reg_lock);
    dbus_message_iter_close_container(&it, &arr);
    send_msg(reply);
}

static gboolean valid_signer_name(const char *name)
{
    if (!*name || strlen(name) > 64)
        return FALSE;
    for (const char *p = name; *p; p++)
        if (!g_ascii_isalnum(*p) && *p != '-' && *p != '_' && *p != '.')
            return FALSE;
    return TRUE;
}

static void agent_register_signer(DBusMessage *msg)
{
    const char *sender = dbus_message_get_sender(msg);
    const char *path = NULL;
    g_autofree char *name = NULL;
    DBusMessageIter it, arr;
    if (!dbus_message_has_signature(msg, "oa{sv}")) {
        reply_error(msg, ERR_INVALID_ARGS, "RegisterSigner takes (o path, a{sv} props)");
        return;
    }
    dbus_message_iter_init(msg, &it);
    dbus_message_iter_get_basic(&it, &path);
    dbus_message_iter_next(&it);
    dbus_message_iter_recurse(&it, &arr);
    for (; dbus_message_iter_get_arg_type(&arr) == DBUS_TYPE_DICT_ENTRY; dbus_message_iter_next(&arr)) {
        DBusMessageIter ent, var;
        const char *key = NULL;
        dbus_message_iter_recurse(&arr, &ent);
        dbus_message_iter_get_basic(&ent, &key);
        dbus_message_iter_next(&ent);
        dbus_message_iter_recurse(&ent, &var);
        if (strcmp(key, "name") == 0 && dbus_message_iter_get_arg_type(&var) == DBUS_TYPE_STRING) {
            g_free(name);
            name = iter_string(&var);
        }
        /* Other properties are for future use and ignored. */
    }
    if (!name || !valid_signer_name(name)) {
        reply_error(msg, ERR_INVALID_ARGS,
                    "RegisterSigner needs props 'name' (s): 1 to 64 letters, digits, '-', '_' "
                    "or '.'");
        return;
    }
    g_mutex_lock(&A.reg_lock);
    guint mine = 0;
    const char *clash = NULL;
    for (guint i = 0; i < A.app_signers->len; i++) {
        app_signer *s = g_ptr_array_index(A.app_signers, i);
        mine += strcmp(s->bus_name, sender) == 0;
        if (strcmp(s->name, name) == 0)
            clash = s->bus_name;
    }
    if (clash || mine >= MAX_SIGNERS_PER_SENDER || A.app_signers->len >= MAX_SIGNERS) {
        g_mutex_unlock(&A.reg_lock);
        if (clash)
            reply_error(msg, ERR_INVALID_ARGS, "a signer named '%s' is registered already (by %s)",
                        name, clash);
        else
            reply_error(msg, ERR_TOO_MANY_JOBS, "too many application signers registered");
        return;
    }
    app_signer *s = g_new0(app_signer, 1);
    s->id = g_strdup_printf("dbus:%" G_GUINT64_FORMAT, ++A.next_signer_id);
    s->name = g_strdup(name);
    s->bus_name = g_strdup(sender);
    s->path = g_strdup(path);
    g_ptr_array_add(A.app_signers, s);
    const char *id = s->id;
    DBusMessage *reply = dbus_message_new_method_return(msg);
    if (reply)
        dbus_message_append_args(reply, DBUS_TYPE_STRING, &id, DBUS_TYPE_INVALID);
    g_mutex_unlock(&A.reg_lock);
    g_message("application signer '%s' registered by %s at %s", name, sender, path);
    send_msg(reply);
}

static void agent_unregister_signer(DBusMessage *msg)
{
    const char *id = NULL;
    const char *sender = dbus_message_get_sender(msg);
    if (!dbus_message_get_args(msg, NULL, DBUS_TYPE_STRING, &id, DBUS_TYPE_INVALID)) {
        reply_error(msg, ERR_INVALID_ARGS, "UnregisterSigner takes (s id)");
        return;
    }
    g_mutex_lock(&A.reg_lock);
    for (guint i = 0; i < A.app_signers->len; i++) {
        app_signer *s = g_ptr_array_index(A.app_signers, i);
        if (strcmp(s->id, id) != 0)
            continue;
        if (strcmp(s->bus_name, sender) != 0) {
            g_mutex_unlock(&A.reg_lock);
            reply_error(msg, ERR_ACCESS_DENIED, "signer %s was registered by another client", id);
            return;
        }
        g_ptr_array_remove_index(A.app_signers, i);
        g_mutex_unlock(&A.reg_lock);
        reply_empty(msg);
        return;
    }
    g_mutex_unlock(&A.reg_lock);
    reply_error(msg, ERR_NOT_FOUND, "no signer with id '%s'", id);
}

static void agent_register_prompt(DBusMessage *msg)
{
    const char *path = NULL;
    const char *sender = dbus_message_get_sender(msg);
    if (!dbus_message_get_args(msg, NULL, DBUS_TYPE_OBJECT_PATH, &path, DBUS_TYPE_INVALID)) {
        reply_error(msg, ERR_INVALID_ARGS, "RegisterPinPrompt takes (o path)");
        return;
    }
    g_mutex_lock(&A.reg_lock);
    for (guint i = A.prompters->len; i-- > 0;) {
        prompter *p = g_ptr_array_index(A.prompters, i);
        if (strcmp(p->bus_name, sender) == 0)
            g_ptr_array_remove_index(A.prompters, i);
    }
    if (A.prompters->len >= MAX_PROMPTERS) {
        g_mutex_unlock(&A.reg_lock);
        reply_error(msg, ERR_TOO_MANY_JOBS, "too many PIN prompts registered");
        return;
    }
    prompter *p = g_new0(prompter, 1);
    p->bus_name = g_strdup(sender);
    p->path = g_strdup(path);
    g_ptr_array_add(A.prompters, p);
    g_mutex_unlock(&A.reg_lock);
    g_message("PIN prompt registered by %s at %s", sender, path);
    reply_empty(msg);
}

/* ---- calls on behalf of workers ----------------------------------------------------- */

typedef enum { CALL_OWNER, CALL_ASK_PIN } call_kind;

typedef struct bus_call {
    gatomicrefcount ref;
    call_kind kind;
    job *job;
    char *token, *hint;
    int efd;
    DBusMessage *reply;  /* NULL: not sent (note says why) */
    char *note;
} bus_call;

static bus_call *bus_call_ref(bus_call *c)
{
    g_atomic_ref_count_inc(&c->ref);
    return c;
}

static void bus_call_unref(void *p)
{
    bus_call *c = p;
    if (!g_atomic_ref_count_dec(&c->ref))
        return;
    if (c->reply)
        dbus_message_unref(c->reply);
    close(c->efd);
    job_unref(c->job);
    g_free(c->token);
    g_free(c->hint);
    g_free(c->note);
    g_free(c);
}

static void bus_call_done(bus_call *c, DBusMessage *reply, const char *note)
{
    c->reply = reply;
    if (note)
        c->note = g_strdup(note);
    (void)eventfd_write(c->efd, 1);
}

static void on_call_reply(DBusPendingCall *pending, void *data)
{
    bus_call *c = data;
    bus_call_done(c, dbus_pending_call_steal_reply(pending), NULL);
    dbus_pending_call_unref(pending);
}

static gboolean bus_call_send(gpointer data)
{
    bus_call *c = data;
    job *j = c->job;
    DBusMessage *m = NULL;
    int timeout;
    if (c->kind == CALL_OWNER) {
        m = dbus_message_new_method_call(DBUS_SERVICE_DBUS, DBUS_PATH_DBUS, DBUS_INTERFACE_DBUS,
                                         "GetNameOwner");
        if (m)
            dbus_message_append_args(m, DBUS_TYPE_STRING, &j->owner, DBUS_TYPE_INVALID);
        timeout = OWNER_CHECK_TIMEOUT_MS;
    } else {
        g_autofree char *bus = NULL, *path = NULL;
        if (j->pin_prompt_path) {
            bus = g_strdup(j->owner);
            path = g_strdup(j->pin_prompt_path);
        } else {
            g_mutex_lock(&A.reg_lock);
            if (A.prompters->len) {
                prompter *p = g_ptr_array_index(A.prompters, A.prompters->len - 1);
                bus = g_strdup(p->bus_name);
                path = g_strdup(p->path);
            }
            g_mutex_unlock(&A.reg_lock);
        }
        if (!bus) {
            bus_call_done(c, NULL,
                          "no PIN prompt: pass pin-prompt in the job options, register one with "
                          "RegisterPinPrompt, or configure a pin-file");
            return G_SOURCE_REMOVE;
        }
        m = dbus_message_new_method_call(bus, path, PROMPT_IFACE, "AskPin");
        if (m)
            dbus_message_append_args(m, DBUS_TYPE_STRING, &c->token, DBUS_TYPE_STRING, &c->hint,
                                     DBUS_TYPE_INVALID);
        timeout = (int)A.cfg->pin_prompt_timeout * 1000;
    }
    DBusPendingCall *pending = NULL;
    if (m && dbus_connection_send_with_reply(A.conn, m, &pending, timeout) && pending)
        dbus_pending_call_set_notify(pending, on_call_reply, bus_call_ref(c), bus_call_unref);
    else
        bus_call_done(c, NULL, "cannot send on the bus");
    if (m)
        dbus_message_unref(m);
    return G_SOURCE_REMOVE;
}

/* Worker side: hand the call to the main loop and wait for the answer or
 * for the job's abort.  Returns the call (unref it), or NULL if aborted. */
static bus_call *bus_call_run(job *j, call_kind kind, const char *token, const char *hint)
{
    bus_call *c = g_new0(bus_call, 1);
    g_atomic_ref_count_init(&c->ref);
    c->kind = kind;
    c->job = job_ref(j);
    /* Token labels come from the token: not necessarily UTF-8. */
    c->token = token ? g_utf8_make_valid(token, -1) : NULL;
    c->hint = hint ? g_utf8_make_valid(hint, -1) : NULL;
    c->efd = eventfd(0, EFD_CLOEXEC);
    if (c->efd < 0) {
        bus_call_unref(c);
        return NULL;
    }
    g_main_context_invoke_full(A.ctx, G_PRIORITY_DEFAULT, bus_call_send, bus_call_ref(c),
                               bus_call_unref);
    for (;;) {
        struct pollfd p[2] = { { .fd = c->efd, .events = POLLIN },
                               { .fd = j->abort_fd, .events = POLLIN } };
        int n = poll(p, 2, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n > 0 && p[0].revents)
            return c; /* the eventfd write orders the reply before us */
        if (n < 0 || p[1].revents) {
            bus_call_unref(c); /* the main loop frees it when the reply comes */
            return NULL;
        }
    }
}

int agent_owner_present(job *j)
{
    bus_call *c = bus_call_run(j, CALL_OWNER, NULL, NULL);
    if (!c)
        return -1;
    int r = -1;
    if (c->reply && dbus_message_get_type(c->reply) == DBUS_MESSAGE_TYPE_METHOD_RETURN)
        r = 1;
    else if (c->reply && dbus_message_is_error(c->reply, DBUS_ERROR_NAME_HAS_NO_OWNER))
        r = 0;
    bus_call_unref(c);
    return r;
}

/* "PKCS#11 token 'LABEL'" or "... 'LABEL' (key 'K')" -> LABEL; else as is. */
static char *token_label(const char *what)
{
    static const char prefix[] = "PKCS#11 token '";
    if (!g_str_has_prefix(what, prefix))
        return g_strdup(what);
    const char *start = what + strlen(prefix);
    const char *end = strstr(start, "' (key '");
    if (!end)
        end = strrchr(start, '\'');
    return end ? g_strndup(start, (gsize)(end - start)) : g_strdup(what);
}

int agent_ask_pin(job *j, const char *what, const char *hint, char *buf, size_t size)
{
    g_autofree char *label = token_label(what);
    bus_call *c = bus_call_run(j, CALL_ASK_PIN, label, hint);
    g_clear_pointer(&j->prompt_note, g_free);
    if (!c)
        return SMS_ERR_CANCELLED;
    int r = SMS_ERR_CANCELLED;
    const char *pin = NULL;
    if (!c->reply) {
        j->prompt_note = g_strdup(c->note);
    } else if (dbus_message_get_type(c->reply) == DBUS_MESSAGE_TYPE_ERROR) {
        const char *ename = dbus_message_get_error_name(c->reply);
        if (g_strcmp0(ename, ERR_CANCELLED) == 0)
            j->prompt_note = g_strdup("the PIN prompt was declined");
        else if (g_strcmp0(ename, DBUS_ERROR_NO_REPLY) == 0)
            j->prompt_note = g_strdup_printf("the PIN prompt did not answer within %u s",
                                             A.cfg->pin_prompt_timeout);
        else
            j->prompt_note = g_strdup_printf("the PIN prompt failed: %s", ename);
    } else if (dbus_message_get_args(c->reply, NULL, DBUS_TYPE_STRING, &pin, DBUS_TYPE_INVALID)) {
        size_t n = strlen(pin);
        if (n < size) {
            memcpy(buf, pin, n + 1);
            r = SMS_OK;
        } else {
            j->prompt_note = g_strdup("the PIN from the prompt is too long");
        }
        /* Wipe the PIN where libdbus unmarshalled it. */
        sms_wipe((char *)pin, n);
    } else {
        j->prompt_note = g_strdup("the PIN prompt answered with the wrong type");
    }
    bus_call_unref(c);
    return r;
}

/* ---- routing --------------------------------------------------------------------------- */

static void props_reply(DBusMessage *msg, job *j)
{
    const char *iface = NULL, *prop = NULL;
    const char *member = dbus_message_get_member(msg);
    if (strcmp(member, "GetAll") == 0 &&
        dbus_message_get_args(msg, NULL, DBUS_TYPE_STRING, &iface, DBUS_TYPE_INVALID)) {
        DBusMessage *reply = dbus_message_new_method_return(msg);
        if (!reply)
            return;
        DBusMessageIter it, dict;
        dbus_message_iter_init_append(reply, &it);
        dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "{sv}", &dict);
        if (j && (!*iface || strcmp(iface, JOB_IFACE) == 0))
            append_job_props(&dict, j, PROP_ALL);
        dbus_message_iter_close_container(&it, &dict);
        send_msg(reply);
        return;
    }
    if (strcmp(member, "Get") == 0 &&
        dbus_message_get_args(msg, NULL, DBUS_TYPE_STRING, &iface, DBUS_TYPE_STRING, &prop,
                              DBUS_TYPE_INVALID)) {
        unsigned which = strcmp(prop, "State") == 0       ? PROP_STATE
                         : strcmp(prop, "BytesRead") == 0 ? PROP_BYTES
                         : strcmp(prop, "Error") == 0     ? PROP_ERROR
                         : strcmp(prop, "MessageId") == 0 ? PROP_MSGID
                                                          : 0;
        if (!j || !which || (*iface && strcmp(iface, JOB_IFACE) != 0)) {
            reply_error(msg, DBUS_ERROR_UNKNOWN_PROPERTY, "no property %s.%s here", iface, prop);
            return;
        }
        DBusMessage *reply = dbus_message_new_method_return(msg);
        if (!reply)
            return;
        DBusMessageIter it;
        dbus_message_iter_init_append(reply, &it);
        g_autofree char *error = NULL, *msgid = NULL;
        job_strings(j, &error, &msgid);
        const char *s = which == PROP_STATE ? job_state_name(j->state) : which == PROP_ERROR ? error : msgid;
        dbus_uint64_t b = job_bytes_read(j);
        if (which == PROP_BYTES)
            append_variant(&it, DBUS_TYPE_UINT64, "t", &b);
        else
            append_variant(&it, DBUS_TYPE_STRING, "s", &s);
        send_msg(reply);
        return;
    }
    if (strcmp(member, "Set") == 0) {
        reply_error(msg, DBUS_ERROR_PROPERTY_READ_ONLY, "the properties are read-only");
        return;
    }
    reply_error(msg, DBUS_ERROR_INVALID_ARGS, "bad arguments for %s.%s", DBUS_IFACE_PROPERTIES,
                member);
}

static gboolean is_call(DBusMessage *msg, const char *iface, const char *member)
{
    const char *i = dbus_message_get_interface(msg);
    return strcmp(dbus_message_get_member(msg), member) == 0 && (!i || strcmp(i, iface) == 0);
}

static void route(DBusMessage *msg)
{
    const char *path = dbus_message_get_path(msg);
    const char *iface = dbus_message_get_interface(msg);
    const char *member = dbus_message_get_member(msg);
    gboolean agent_obj = strcmp(path, AGENT_PATH) == 0;
    gboolean job_obj = g_str_has_prefix(path, AGENT_JOBS_PATH "/");
    job *j = job_obj ? job_by_path(path) : NULL;

    if (is_call(msg, DBUS_IFACE_INTROSPECTABLE, "Introspect") &&
        (!job_obj || j || strcmp(path, "/") == 0)) {
        gboolean known = strcmp(path, "/") == 0 || strcmp(path, "/org") == 0 ||
                         strcmp(path, "/org/smimestream") == 0 || agent_obj ||
                         strcmp(path, AGENT_JOBS_PATH) == 0 || j;
        if (known) {
            g_autofree char *xml = introspect(path);
            DBusMessage *reply = dbus_message_new_method_return(msg);
            const char *x = xml;
            if (reply && dbus_message_append_args(reply, DBUS_TYPE_STRING, &x, DBUS_TYPE_INVALID))
                send_msg(reply);
            else if (reply)
                dbus_message_unref(reply);
            return;
        }
    }
    if (!agent_obj && !j) {
        reply_error(msg, DBUS_ERROR_UNKNOWN_OBJECT, "no object at %s", path);
        return;
    }
    if (!authorized(msg))
        return;
    if (iface && strcmp(iface, DBUS_IFACE_PROPERTIES) == 0) {
        props_reply(msg, j);
        return;
    }
    if (agent_obj) {
        if (is_call(msg, AGENT_IFACE, "Submit"))
            agent_submit(msg);
        else if (is_call(msg, AGENT_IFACE, "ListSigners"))
            agent_list_signers(msg);
        else if (is_call(msg, AGENT_IFACE, "RegisterSigner"))
            agent_register_signer(msg);
        else if (is_call(msg, AGENT_IFACE, "UnregisterSigner"))
            agent_unregister_signer(msg);
        else if (is_call(msg, AGENT_IFACE, "RegisterPinPrompt"))
            agent_register_prompt(msg);
        else
            reply_error(msg, DBUS_ERROR_UNKNOWN_METHOD, "no method %s.%s at %s",
                        iface ? iface : "", member, path);
        return;
    }
    gboolean cancel = is_call(msg, JOB_IFACE, "Cancel");
    if (cancel || is_call(msg, JOB_IFACE, "Abort")) {
        if (strcmp(dbus_message_get_sender(msg), j->owner) != 0) {
            reply_error(msg, ERR_ACCESS_DENIED, "job %" G_GUINT64_FORMAT " belongs to %s", j->id,
                        j->owner);
            return;
        }
        if (cancel)
            job_cancel(j);
        else
            abort_job(j, "aborted by the client (Abort); nothing was delivered");
        reply_empty(msg);
        return;
    }
    reply_error(msg, DBUS_ERROR_UNKNOWN_METHOD, "no method %s.%s at %s", iface ? iface : "",
                member, path);
}

static DBusHandlerResult on_object_message(DBusConnection *c, DBusMessage *msg, void *data)
{
    if (dbus_message_get_type(msg) != DBUS_MESSAGE_TYPE_METHOD_CALL)
        return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
    route(msg);
    return DBUS_HANDLER_RESULT_HANDLED;
}

static const DBusObjectPathVTable object_vtable = {
    .message_function = on_object_message,
};

static void quit_agent(const char *why);

static DBusHandlerResult on_filter(DBusConnection *c, DBusMessage *msg, void *data)
{
    if (dbus_message_is_signal(msg, DBUS_INTERFACE_LOCAL, "Disconnected")) {
        g_warning("lost the connection to the bus");
        A.exit_code = EX_UNAVAILABLE;
        quit_agent("the agent lost its bus connection");
        return DBUS_HANDLER_RESULT_HANDLED;
    }
    if (dbus_message_is_signal(msg, DBUS_INTERFACE_DBUS, "NameOwnerChanged") &&
        g_strcmp0(dbus_message_get_sender(msg), DBUS_SERVICE_DBUS) == 0) {
        const char *name = NULL, *old = NULL, *new_owner = NULL;
        if (dbus_message_get_args(msg, NULL, DBUS_TYPE_STRING, &name, DBUS_TYPE_STRING, &old,
                                  DBUS_TYPE_STRING, &new_owner, DBUS_TYPE_INVALID) &&
            name[0] == ':' && !*new_owner)
            sender_left(name);
    }
    return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
}

/* ---- start and stop ------------------------------------------------------------------ */

static gboolean quit_timeout(gpointer data)
{
    g_warning("jobs did not stop in time; exiting anyway");
    agent_pincache_free(A.pins); /* wipe */
    A.pins = NULL;
    _exit(A.exit_code ? A.exit_code : EX_SOFTWARE);
}

static void quit_agent(const char *why)
{
    if (A.quitting)
        return;
    A.quitting = TRUE;
    GHashTableIter it;
    gpointer k, v;
    GPtrArray *all = g_ptr_array_new();
    g_hash_table_iter_init(&it, A.jobs);
    while (g_hash_table_iter_next(&it, &k, &v))
        g_ptr_array_add(all, v);
    for (guint i = 0; i < all->len; i++)
        abort_job(g_ptr_array_index(all, i), why);
    g_ptr_array_unref(all);
    if (A.running == 0)
        g_main_loop_quit(A.loop);
    else
        g_timeout_add_seconds(15, quit_timeout, NULL);
}

static gboolean on_signal(gpointer data)
{
    g_message("stopping (signal %d)", GPOINTER_TO_INT(data));
    quit_agent("the agent is shutting down; nothing was delivered");
    return G_SOURCE_CONTINUE;
}

static gboolean pin_expire(gpointer data)
{
    agent_pincache_expire(A.pins);
    return G_SOURCE_CONTINUE;
}

static guint64 hash_u64(gconstpointer p)
{
    return *(const guint64 *)p;
}

static guint job_hash(gconstpointer p)
{
    guint64 v = hash_u64(p);
    return (guint)(v ^ (v >> 32));
}

static gboolean job_equal(gconstpointer a, gconstpointer b)
{
    return *(const guint64 *)a == *(const guint64 *)b;
}

int main(int argc, char **argv)
{
    gboolean opt_session = FALSE, opt_system = FALSE, opt_version = FALSE;
    g_autofree char *opt_config = NULL;
    const GOptionEntry entries[] = {
        { "session", 0, 0, G_OPTION_ARG_NONE, &opt_session, "Serve on the session bus (default)", NULL },
        { "system", 0, 0, G_OPTION_ARG_NONE, &opt_system, "Serve on the system bus", NULL },
        { "config", 0, 0, G_OPTION_ARG_FILENAME, &opt_config,
          "Read FILE (default: $XDG_CONFIG_HOME/smimestream/agent.conf, or "
          SMS_AGENT_SYSCONFDIR "/smimestream/agent.conf with --system)", "FILE" },
        { "version", 0, 0, G_OPTION_ARG_NONE, &opt_version, "Print the version", NULL },
        { NULL }
    };
    setlocale(LC_ALL, "");
    g_set_prgname("smimestream-agent");
    g_autoptr(GOptionContext) ctx = g_option_context_new("- send signed S/MIME e-mail for D-Bus clients");
    g_option_context_add_main_entries(ctx, entries, NULL);
    g_option_context_set_description(ctx,
        "Exit status: 0 stopped by a signal, 64 usage, 69 bus or bus name unavailable,\n"
        "78 configuration error.  See smimestream-agent(8).");
    g_autoptr(GError) e = NULL;
    if (!g_option_context_parse(ctx, &argc, &argv, &e) || argc > 1) {
        fprintf(stderr, "smimestream-agent: %s\n", e ? e->message : "unexpected argument");
        return EX_USAGE;
    }
    if (opt_version) {
        printf("smimestream-agent %s\n", PACKAGE_VERSION);
        return EX_OK;
    }
    if (opt_session && opt_system) {
        fprintf(stderr, "smimestream-agent: give --session or --system, not both\n");
        return EX_USAGE;
    }
    A.system_bus = opt_system;
    A.uid = getuid();

    g_autofree char *conf_path = opt_config ? g_strdup(opt_config)
                                 : opt_system ? g_build_filename(SMS_AGENT_SYSCONFDIR, "smimestream",
                                                                 "agent.conf", NULL)
                                              : g_build_filename(g_get_user_config_dir(),
                                                                 "smimestream", "agent.conf", NULL);
    A.cfg = agent_config_load(conf_path, opt_config != NULL, &e);
    if (!A.cfg) {
        fprintf(stderr, "smimestream-agent: %s\n", e->message);
        return EX_CONFIG;
    }
    signal(SIGPIPE, SIG_IGN);
    A.ctx = g_main_context_ref(g_main_context_default());
    A.loop = g_main_loop_new(A.ctx, FALSE);
    A.pins = agent_pincache_new(A.cfg->pin_idle_ttl, A.cfg->pin_max_ttl);
    A.jobs = g_hash_table_new_full(job_hash, job_equal, NULL, job_forget);
    A.senders = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, sender_free);
    A.app_signers = g_ptr_array_new_with_free_func(app_signer_free);
    A.prompters = g_ptr_array_new_with_free_func(prompter_free);
    g_mutex_init(&A.reg_lock);
    g_queue_init(&A.queue);

    dbus_threads_init_default();
    DBusError de;
    dbus_error_init(&de);
    const char *busname = opt_system ? "system" : "session";
    A.conn = dbus_bus_get_private(opt_system ? DBUS_BUS_SYSTEM : DBUS_BUS_SESSION, &de);
    if (!A.conn) {
        fprintf(stderr, "smimestream-agent: cannot connect to the %s bus: %s\n", busname,
                de.message);
        dbus_error_free(&de);
        return EX_UNAVAILABLE;
    }
    dbus_connection_set_exit_on_disconnect(A.conn, FALSE);
    if (!dbus_connection_can_send_type(A.conn, DBUS_TYPE_UNIX_FD)) {
        fprintf(stderr, "smimestream-agent: the %s bus cannot pass file descriptors\n", busname);
        return EX_UNAVAILABLE;
    }
    if (!dbus_connection_add_filter(A.conn, on_filter, NULL, NULL) ||
        !dbus_connection_register_fallback(A.conn, "/", &object_vtable, NULL)) {
        fprintf(stderr, "smimestream-agent: out of memory\n");
        return EX_SOFTWARE;
    }
    dbus_bus_add_match(A.conn,
                       "type='signal',sender='" DBUS_SERVICE_DBUS "',interface='" DBUS_INTERFACE_DBUS
                       "',member='NameOwnerChanged'",
                       &de);
    if (dbus_error_is_set(&de)) {
        fprintf(stderr, "smimestream-agent: cannot watch clients on the %s bus: %s\n", busname,
                de.message);
        dbus_error_free(&de);
        return EX_UNAVAILABLE;
    }
    int rn = dbus_bus_request_name(A.conn, AGENT_BUS_NAME, DBUS_NAME_FLAG_DO_NOT_QUEUE, &de);
    if (rn != DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER) {
        if (dbus_error_is_set(&de))
            fprintf(stderr, "smimestream-agent: cannot own %s on the %s bus: %s\n", AGENT_BUS_NAME,
                    busname, de.message);
        else
            fprintf(stderr,
                    "smimestream-agent: %s is already owned on the %s bus (is another "
                    "smimestream-agent running?)\n",
                    AGENT_BUS_NAME, busname);
        dbus_error_free(&de);
        return EX_UNAVAILABLE;
    }
    A.glue = sms_dbus_glib_attach(A.conn, A.ctx);
    g_unix_signal_add(SIGTERM, on_signal, GINT_TO_POINTER(SIGTERM));
    g_unix_signal_add(SIGINT, on_signal, GINT_TO_POINTER(SIGINT));
    if (A.cfg->pin_idle_ttl)
        A.pin_timer = g_timeout_add_seconds(1, pin_expire, NULL);
    if (chdir("/") < 0) {
        /* not fatal */
    }
    g_message("smimestream-agent %s on the %s bus as %s (%s)", PACKAGE_VERSION, busname,
              dbus_bus_get_unique_name(A.conn), A.cfg->path ? A.cfg->path : "no configuration file");

    g_main_loop_run(A.loop);

    /* Finished jobs: their objects go away with us. */
    g_hash_table_destroy(A.jobs);
    g_hash_table_destroy(A.senders);
    agent_pincache_free(A.pins); /* wipes */
    if (A.pin_timer)
        g_source_remove(A.pin_timer);
    sms_dbus_glib_detach(A.glue);
    dbus_connection_close(A.conn);
    dbus_connection_unref(A.conn);
    g_ptr_array_unref(A.app_signers);
    g_ptr_array_unref(A.prompters);
    g_mutex_clear(&A.reg_lock);
    g_main_loop_unref(A.loop);
    g_main_context_unref(A.ctx);
    agent_config_free(A.cfg);
    dbus_shutdown();
    return A.exit_code;
}
