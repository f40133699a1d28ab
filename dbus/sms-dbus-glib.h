/* libdbus-1 <-> GLib main loop glue.
 *
 *   DBusConnection *c = dbus_bus_get_private(DBUS_BUS_SESSION, &err);
 *   sms_dbus_glib *g = sms_dbus_glib_attach(c, NULL);
 *   ... g_main_loop_run(loop) ...
 *   sms_dbus_glib_detach(g);
 *   dbus_connection_close(c);
 *   dbus_connection_unref(c);
 *
 * Each DBusWatch becomes a GSource polling its fd while the watch is
 * enabled, each DBusTimeout a GLib timeout, and a dispatch source runs
 * dbus_connection_dispatch() whenever the connection says
 * DBUS_DISPATCH_DATA_REMAINS.  The connection must be used from the thread
 * that runs the context (other threads hand work to it with
 * g_main_context_invoke()); the glue only wakes the context when libdbus
 * asks it to.
 */
#ifndef SMS_DBUS_GLIB_H
#define SMS_DBUS_GLIB_H

#include <dbus/dbus.h>
#include <glib.h>

G_BEGIN_DECLS

typedef struct sms_dbus_glib sms_dbus_glib;

/* Attach conn to ctx (NULL: the global default context).  Takes a
 * reference on conn until detached.  Returns NULL when libdbus runs out of
 * memory. */
sms_dbus_glib *sms_dbus_glib_attach(DBusConnection *conn, GMainContext *ctx);

/* Remove every source and give conn back its own (no) main loop
 * integration.  Accepts NULL. */
void sms_dbus_glib_detach(sms_dbus_glib *glue);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(sms_dbus_glib, sms_dbus_glib_detach)

G_END_DECLS

#endif
