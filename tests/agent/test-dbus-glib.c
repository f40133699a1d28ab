/* The libdbus-1 <-> GLib main loop glue (dbus/sms-dbus-glib.c), on a real
 * bus (run-bus.sh starts a private dbus-daemon).  Two connections share
 * the default main context: replies, signals, large messages (partial
 * writes toggle the write watch), libdbus timeouts (a call nobody answers)
 * and detaching. */
#include <string.h>

#include <dbus/dbus.h>
#include <glib.h>

#include "sms-dbus-glib.h"

#define TEST_IFACE "org.smimestream.Test"

typedef struct fixture {
    DBusConnection *server, *client;
    sms_dbus_glib *gs, *gc;
    const char *server_name;
    GMainLoop *loop;
    int replies, signals;
    DBusMessage *last_reply;
} fixture;

static DBusConnection *connect_bus(void)
{
    DBusError e;
    dbus_error_init(&e);
    DBusConnection *c = dbus_bus_get_private(DBUS_BUS_SESSION, &e);
    g_assert_false(dbus_error_is_set(&e));
    g_assert_nonnull(c);
    dbus_connection_set_exit_on_disconnect(c, FALSE);
    return c;
}

static DBusHandlerResult server_handler(DBusConnection *c, DBusMessage *msg, void *data)
{
    if (dbus_message_is_method_call(msg, TEST_IFACE, "Echo")) {
        DBusMessage *r = dbus_message_copy(msg);
        DBusMessage *reply = dbus_message_new_method_return(msg);
        const char *s = NULL;
        dbus_message_get_args(msg, NULL, DBUS_TYPE_STRING, &s, DBUS_TYPE_INVALID);
        dbus_message_append_args(reply, DBUS_TYPE_STRING, &s, DBUS_TYPE_INVALID);
        dbus_connection_send(c, reply, NULL);
        dbus_message_unref(reply);
        dbus_message_unref(r);
        return DBUS_HANDLER_RESULT_HANDLED;
    }
    if (dbus_message_is_method_call(msg, TEST_IFACE, "Ignore"))
        return DBUS_HANDLER_RESULT_HANDLED; /* never answered */
    if (dbus_message_is_method_call(msg, TEST_IFACE, "Emit")) {
        DBusMessage *sig = dbus_message_new_signal("/test", TEST_IFACE, "Ping");
        dbus_message_set_destination(sig, dbus_message_get_sender(msg));
        dbus_connection_send(c, sig, NULL);
        dbus_message_unref(sig);
        DBusMessage *reply = dbus_message_new_method_return(msg);
        dbus_connection_send(c, reply, NULL);
        dbus_message_unref(reply);
        return DBUS_HANDLER_RESULT_HANDLED;
    }
    return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
}

static const DBusObjectPathVTable server_vtable = { .message_function = server_handler };

static DBusHandlerResult client_filter(DBusConnection *c, DBusMessage *msg, void *data)
{
    fixture *f = data;
    if (dbus_message_is_signal(msg, TEST_IFACE, "Ping"))
        f->signals++;
    return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
}

static void setup(fixture *f, gconstpointer data)
{
    memset(f, 0, sizeof *f);
    f->server = connect_bus();
    f->client = connect_bus();
    f->server_name = dbus_bus_get_unique_name(f->server);
    g_assert_true(dbus_connection_register_object_path(f->server, "/test", &server_vtable, f));
    dbus_connection_add_filter(f->client, client_filter, f, NULL);
    f->gs = sms_dbus_glib_attach(f->server, NULL);
    f->gc = sms_dbus_glib_attach(f->client, NULL);
    g_assert_nonnull(f->gs);
    g_assert_nonnull(f->gc);
    f->loop = g_main_loop_new(NULL, FALSE);
}

static void teardown(fixture *f, gconstpointer data)
{
    sms_dbus_glib_detach(f->gs);
    sms_dbus_glib_detach(f->gc);
    dbus_connection_close(f->server);
    dbus_connection_close(f->client);
    dbus_connection_unref(f->server);
    dbus_connection_unref(f->client);
    if (f->last_reply)
        dbus_message_unref(f->last_reply);
    g_main_loop_unref(f->loop);
    /* Nothing of the glue is left in the context. */
    while (g_main_context_iteration(NULL, FALSE))
        ;
}

typedef struct call_ctx {
    fixture *f;
    int want;
} call_ctx;

static void on_reply(DBusPendingCall *p, void *data)
{
    call_ctx *c = data;
    fixture *f = c->f;
    if (f->last_reply)
        dbus_message_unref(f->last_reply);
    f->last_reply = dbus_pending_call_steal_reply(p);
    dbus_pending_call_unref(p);
    if (++f->replies >= c->want)
        g_main_loop_quit(f->loop);
}

static gboolean fail_timeout(gpointer data)
{
    g_error("timed out waiting for the main loop");
    return G_SOURCE_REMOVE;
}

static void run(fixture *f, guint secs)
{
    guint t = g_timeout_add_seconds(secs, fail_timeout, NULL);
    g_main_loop_run(f->loop);
    g_source_remove(t);
}

static void call_async(fixture *f, const char *method, const char *arg, int timeout_ms,
                       call_ctx *c)
{
    DBusMessage *m = dbus_message_new_method_call(f->server_name, "/test", TEST_IFACE, method);
    if (arg)
        dbus_message_append_args(m, DBUS_TYPE_STRING, &arg, DBUS_TYPE_INVALID);
    DBusPendingCall *p = NULL;
    g_assert_true(dbus_connection_send_with_reply(f->client, m, &p, timeout_ms));
    g_assert_nonnull(p);
    dbus_pending_call_set_notify(p, on_reply, c, NULL);
    dbus_message_unref(m);
}

static void test_roundtrip(fixture *f, gconstpointer data)
{
    call_ctx c = { f, 1 };
    call_async(f, "Echo", "hello", 5000, &c);
    run(f, 10);
    g_assert_cmpint(dbus_message_get_type(f->last_reply), ==, DBUS_MESSAGE_TYPE_METHOD_RETURN);
    const char *s = NULL;
    g_assert_true(dbus_message_get_args(f->last_reply, NULL, DBUS_TYPE_STRING, &s, DBUS_TYPE_INVALID));
    g_assert_cmpstr(s, ==, "hello");
}

static void test_many_large(fixture *f, gconstpointer data)
{
    /* 1 MiB strings: the socket takes them in pieces, so the write watch
     * is enabled and disabled many times. */
    gsize len = 1024 * 1024;
    char *big = g_malloc(len + 1);
    memset(big, 'x', len);
    big[len] = 0;
    call_ctx c = { f, 64 };
    for (int i = 0; i < 64; i++)
        call_async(f, "Echo", i % 8 == 0 ? big : "small", 30000, &c);
    run(f, 60);
    g_assert_cmpint(f->replies, ==, 64);
    g_free(big);
}

static void test_timeout(fixture *f, gconstpointer data)
{
    call_ctx c = { f, 1 };
    gint64 t0 = g_get_monotonic_time();
    call_async(f, "Ignore", NULL, 300, &c);
    run(f, 10);
    gint64 ms = (g_get_monotonic_time() - t0) / 1000;
    g_assert_true(dbus_message_is_error(f->last_reply, DBUS_ERROR_NO_REPLY));
    g_assert_cmpint(ms, >=, 250);
    g_assert_cmpint(ms, <, 3000);
}

static void test_signal(fixture *f, gconstpointer data)
{
    call_ctx c = { f, 1 };
    call_async(f, "Emit", NULL, 5000, &c);
    run(f, 10);
    /* The signal was sent before the reply: it was dispatched first. */
    g_assert_cmpint(f->signals, ==, 1);
}

static gpointer thread_send(gpointer data)
{
    fixture *f = data;
    /* libdbus is thread-safe once dbus_threads_init_default() ran; the
     * glue must notice the queued reply even though this thread sent. */
    DBusMessage *m = dbus_message_new_method_call(f->server_name, "/test", TEST_IFACE, "Echo");
    const char *s = "from a thread";
    dbus_message_append_args(m, DBUS_TYPE_STRING, &s, DBUS_TYPE_INVALID);
    DBusPendingCall *p = NULL;
    static call_ctx c;
    c.f = f;
    c.want = 1;
    dbus_connection_send_with_reply(f->client, m, &p, 5000);
    dbus_pending_call_set_notify(p, on_reply, &c, NULL);
    dbus_message_unref(m);
    return NULL;
}

static void test_thread(fixture *f, gconstpointer data)
{
    GThread *t = g_thread_new("sender", thread_send, f);
    g_thread_join(t);
    run(f, 10);
    const char *s = NULL;
    g_assert_true(dbus_message_get_args(f->last_reply, NULL, DBUS_TYPE_STRING, &s, DBUS_TYPE_INVALID));
    g_assert_cmpstr(s, ==, "from a thread");
}

static void test_detach(fixture *f, gconstpointer data)
{
    sms_dbus_glib_detach(f->gc);
    f->gc = NULL;
    /* Without the glue the client still works with blocking calls (the
     * server is still served by the main loop in a thread-less way: run
     * the context while we block). */
    DBusMessage *m = dbus_message_new_method_call(f->server_name, "/test", TEST_IFACE, "Echo");
    const char *s = "blocking";
    dbus_message_append_args(m, DBUS_TYPE_STRING, &s, DBUS_TYPE_INVALID);
    DBusPendingCall *p = NULL;
    dbus_connection_send_with_reply(f->client, m, &p, 5000);
    dbus_message_unref(m);
    gint64 end = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
    while (!dbus_pending_call_get_completed(p) && g_get_monotonic_time() < end) {
        g_main_context_iteration(NULL, FALSE); /* the server's side */
        dbus_connection_read_write_dispatch(f->client, 10);
    }
    g_assert_true(dbus_pending_call_get_completed(p));
    DBusMessage *r = dbus_pending_call_steal_reply(p);
    g_assert_cmpint(dbus_message_get_type(r), ==, DBUS_MESSAGE_TYPE_METHOD_RETURN);
    dbus_message_unref(r);
    dbus_pending_call_unref(p);
    sms_dbus_glib_detach(NULL);
}

int main(int argc, char **argv)
{
    dbus_threads_init_default();
    g_test_init(&argc, &argv, NULL);
    if (!g_getenv("DBUS_SESSION_BUS_ADDRESS")) {
        g_test_skip("no session bus (run with run-bus.sh)");
        return 0;
    }
    g_test_add("/dbus-glib/roundtrip", fixture, NULL, setup, test_roundtrip, teardown);
    g_test_add("/dbus-glib/many-large-messages", fixture, NULL, setup, test_many_large, teardown);
    g_test_add("/dbus-glib/libdbus-timeout", fixture, NULL, setup, test_timeout, teardown);
    g_test_add("/dbus-glib/signal-before-reply", fixture, NULL, setup, test_signal, teardown);
    g_test_add("/dbus-glib/send-from-thread", fixture, NULL, setup, test_thread, teardown);
    g_test_add("/dbus-glib/detach", fixture, NULL, setup, test_detach, teardown);
    int r = g_test_run();
    dbus_shutdown();
    return r;
}
