/* libdbus-1 <-> GLib main loop glue: see sms-dbus-glib.h. */
#include "sms-dbus-glib.h"

#include <glib-unix.h>

struct sms_dbus_glib {
    DBusConnection *conn;
    GMainContext *ctx;
    GSource *dispatch;
};

/* ---- watches: one GSource per enabled DBusWatch --------------------------- */

typedef struct watch_source {
    GSource source;
    DBusWatch *watch;
    gpointer tag;
} watch_source;

static gboolean watch_dispatch(GSource *source, GSourceFunc cb, gpointer ud)
{
    watch_source *w = (watch_source *)source;
    GIOCondition c = g_source_query_unix_fd(source, w->tag);
    unsigned flags = 0;
    if (c & G_IO_IN)
        flags |= DBUS_WATCH_READABLE;
    if (c & G_IO_OUT)
        flags |= DBUS_WATCH_WRITABLE;
    if (c & G_IO_ERR)
        flags |= DBUS_WATCH_ERROR;
    if (c & G_IO_HUP)
        flags |= DBUS_WATCH_HANGUP;
    /* The watch may be removed (and this source destroyed) inside. */
    if (flags)
        dbus_watch_handle(w->watch, flags);
    return G_SOURCE_CONTINUE;
}

static GSourceFuncs watch_funcs = {
    .dispatch = watch_dispatch,
};

static dbus_bool_t add_watch(DBusWatch *watch, void *data)
{
    sms_dbus_glib *g = data;
    if (!dbus_watch_get_enabled(watch))
        return TRUE;
    unsigned flags = dbus_watch_get_flags(watch);
    GIOCondition cond = G_IO_HUP | G_IO_ERR;
    if (flags & DBUS_WATCH_READABLE)
        cond |= G_IO_IN;
    if (flags & DBUS_WATCH_WRITABLE)
        cond |= G_IO_OUT;
    GSource *s = g_source_new(&watch_funcs, sizeof(watch_source));
    watch_source *w = (watch_source *)s;
    w->watch = watch;
    w->tag = g_source_add_unix_fd(s, dbus_watch_get_unix_fd(watch), cond);
    g_source_set_name(s, "libdbus watch");
    g_source_attach(s, g->ctx);
    dbus_watch_set_data(watch, s, NULL);
    return TRUE;
}

static void remove_watch(DBusWatch *watch, void *data)
{
    GSource *s = dbus_watch_get_data(watch);
    if (!s)
        return;
    dbus_watch_set_data(watch, NULL, NULL);
    g_source_destroy(s);
    g_source_unref(s);
}

static void toggle_watch(DBusWatch *watch, void *data)
{
    remove_watch(watch, data);
    add_watch(watch, data);
}

/* ---- timeouts: GLib timeouts while enabled ---------------------------------- */

static gboolean timeout_cb(gpointer data)
{
    dbus_timeout_handle(data);
    return G_SOURCE_CONTINUE;
}

static dbus_bool_t add_timeout(DBusTimeout *timeout, void *data)
{
    sms_dbus_glib *g = data;
    if (!dbus_timeout_get_enabled(timeout))
        return TRUE;
    GSource *s = g_timeout_source_new((guint)dbus_timeout_get_interval(timeout));
    g_source_set_callback(s, timeout_cb, timeout, NULL);
    g_source_set_name(s, "libdbus timeout");
    g_source_attach(s, g->ctx);
    dbus_timeout_set_data(timeout, s, NULL);
    return TRUE;
}

static void remove_timeout(DBusTimeout *timeout, void *data)
{
    GSource *s = dbus_timeout_get_data(timeout);
    if (!s)
        return;
    dbus_timeout_set_data(timeout, NULL, NULL);
    g_source_destroy(s);
    g_source_unref(s);
}

static void toggle_timeout(DBusTimeout *timeout, void *data)
{
    remove_timeout(timeout, data);
    add_timeout(timeout, data);
}

/* ---- dispatching -------------------------------------------------------------- */

typedef struct dispatch_source {
    GSource source;
    DBusConnection *conn;
} dispatch_source;

static gboolean dispatch_prepare(GSource *source, gint *timeout)
{
    dispatch_source *d = (dispatch_source *)source;
    *timeout = -1;
    return dbus_connection_get_dispatch_status(d->conn) == DBUS_DISPATCH_DATA_REMAINS;
}

static gboolean dispatch_check(GSource *source)
{
    dispatch_source *d = (dispatch_source *)source;
    return dbus_connection_get_dispatch_status(d->conn) == DBUS_DISPATCH_DATA_REMAINS;
}

static gboolean dispatch_dispatch(GSource *source, GSourceFunc cb, gpointer ud)
{
    dispatch_source *d = (dispatch_source *)source;
    DBusConnection *c = dbus_connection_ref(d->conn);
    /* A batch, then let the other sources (and the watches) have a turn. */
    for (int i = 0; i < 64 && dbus_connection_dispatch(c) == DBUS_DISPATCH_DATA_REMAINS; i++)
        ;
    dbus_connection_unref(c);
    return G_SOURCE_CONTINUE;
}

static GSourceFuncs dispatch_funcs = {
    .prepare = dispatch_prepare,
    .check = dispatch_check,
    .dispatch = dispatch_dispatch,
};

/* libdbus may call these from any thread that touches the connection. */
static void wakeup_main(void *data)
{
    sms_dbus_glib *g = data;
    g_main_context_wakeup(g->ctx);
}

static void dispatch_status_changed(DBusConnection *conn, DBusDispatchStatus status, void *data)
{
    if (status == DBUS_DISPATCH_DATA_REMAINS)
        wakeup_main(data);
}

/* ---- attach / detach -------------------------------------------------------- */

sms_dbus_glib *sms_dbus_glib_attach(DBusConnection *conn, GMainContext *ctx)
{
    g_return_val_if_fail(conn != NULL, NULL);
    sms_dbus_glib *g = g_new0(sms_dbus_glib, 1);
    g->conn = dbus_connection_ref(conn);
    g->ctx = ctx ? g_main_context_ref(ctx) : g_main_context_ref(g_main_context_default());

    g->dispatch = g_source_new(&dispatch_funcs, sizeof(dispatch_source));
    ((dispatch_source *)g->dispatch)->conn = conn;
    g_source_set_name(g->dispatch, "libdbus dispatch");
    g_source_attach(g->dispatch, g->ctx);

    dbus_connection_set_wakeup_main_function(conn, wakeup_main, g, NULL);
    dbus_connection_set_dispatch_status_function(conn, dispatch_status_changed, g, NULL);
    if (!dbus_connection_set_watch_functions(conn, add_watch, remove_watch, toggle_watch, g, NULL) ||
        !dbus_connection_set_timeout_functions(conn, add_timeout, remove_timeout, toggle_timeout, g,
                                               NULL)) {
        sms_dbus_glib_detach(g);
        return NULL;
    }
    /* Messages may have arrived before we were attached. */
    g_main_context_wakeup(g->ctx);
    return g;
}

void sms_dbus_glib_detach(sms_dbus_glib *g)
{
    if (!g)
        return;
    /* Setting NULL functions removes every watch and timeout from the old
     * ones first. */
    dbus_connection_set_watch_functions(g->conn, NULL, NULL, NULL, NULL, NULL);
    dbus_connection_set_timeout_functions(g->conn, NULL, NULL, NULL, NULL, NULL);
    dbus_connection_set_dispatch_status_function(g->conn, NULL, NULL, NULL);
    dbus_connection_set_wakeup_main_function(g->conn, NULL, NULL, NULL);
    g_source_destroy(g->dispatch);
    g_source_unref(g->dispatch);
    dbus_connection_unref(g->conn);
    g_main_context_unref(g->ctx);
    g_free(g);
}
