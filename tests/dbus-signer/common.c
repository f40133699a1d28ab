/* Small helpers shared by the D-Bus test programs. */
#include "common.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static const char *prog_name = "test";
static FILE *log_file;

void test_die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", prog_name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

DBusConnection *test_bus_connect(const char *prog)
{
    prog_name = prog;
    const char *b = getenv("SMIMESTREAM_BUS");
    bool sys = b && strcmp(b, "system") == 0;
    DBusError e;
    dbus_error_init(&e);
    DBusConnection *c = dbus_bus_get_private(sys ? DBUS_BUS_SYSTEM : DBUS_BUS_SESSION, &e);
    if (!c)
        test_die("cannot connect to the %s bus: %s", sys ? "system" : "session", e.message);
    dbus_connection_set_exit_on_disconnect(c, FALSE);
    return c;
}

void test_log_open(const char *prog, const char *path)
{
    prog_name = prog;
    if (!path)
        return;
    log_file = fopen(path, "a");
    if (!log_file)
        test_die("cannot open the log %s", path);
    setvbuf(log_file, NULL, _IOLBF, 0);
}

void test_log(const char *fmt, ...)
{
    if (!log_file)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(log_file, fmt, ap);
    va_end(ap);
    fputc('\n', log_file);
    fflush(log_file);
}

void test_print_ready(DBusConnection *c)
{
    printf("%s\n", dbus_bus_get_unique_name(c));
    fflush(stdout);
}

void test_send(DBusConnection *c, DBusMessage *m)
{
    if (!m || !dbus_connection_send(c, m, NULL))
        test_die("out of memory");
    dbus_message_unref(m);
    dbus_connection_flush(c);
}

void test_reply_error(DBusConnection *c, DBusMessage *msg, const char *name, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    test_send(c, dbus_message_new_error(msg, name, text));
}

bool test_handle_std(DBusConnection *c, DBusMessage *msg, const char *iface_xml)
{
    if (dbus_message_is_method_call(msg, DBUS_INTERFACE_INTROSPECTABLE, "Introspect")) {
        static const char head[] =
            "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n"
            " \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<node>\n"
            " <interface name=\"org.freedesktop.DBus.Introspectable\">\n"
            "  <method name=\"Introspect\"><arg name=\"xml\" type=\"s\" direction=\"out\"/></method>\n"
            " </interface>\n"
            " <interface name=\"org.freedesktop.DBus.Peer\">\n"
            "  <method name=\"Ping\"/>\n"
            "  <method name=\"GetMachineId\"><arg name=\"id\" type=\"s\" direction=\"out\"/></method>\n"
            " </interface>\n"
            " <interface name=\"org.freedesktop.DBus.Properties\">\n"
            "  <method name=\"Get\"><arg name=\"interface\" type=\"s\" direction=\"in\"/>"
            "<arg name=\"name\" type=\"s\" direction=\"in\"/><arg name=\"value\" type=\"v\" direction=\"out\"/></method>\n"
            "  <method name=\"GetAll\"><arg name=\"interface\" type=\"s\" direction=\"in\"/>"
            "<arg name=\"props\" type=\"a{sv}\" direction=\"out\"/></method>\n"
            "  <method name=\"Set\"><arg name=\"interface\" type=\"s\" direction=\"in\"/>"
            "<arg name=\"name\" type=\"s\" direction=\"in\"/><arg name=\"value\" type=\"v\" direction=\"in\"/></method>\n"
            " </interface>\n";
        size_t n = sizeof head + strlen(iface_xml) + 16;
        char *xml = malloc(n);
        if (!xml)
            test_die("out of memory");
        snprintf(xml, n, "%s%s</node>\n", head, iface_xml);
        DBusMessage *r = dbus_message_new_method_return(msg);
        const char *x = xml;
        if (!r || !dbus_message_append_args(r, DBUS_TYPE_STRING, &x, DBUS_TYPE_INVALID))
            test_die("out of memory");
        test_send(c, r);
        free(xml);
        return true;
    }
    if (dbus_message_is_method_call(msg, DBUS_INTERFACE_PEER, "Ping")) {
        test_send(c, dbus_message_new_method_return(msg));
        return true;
    }
    return false;
}

void test_main_loop(DBusConnection *c)
{
    while (dbus_connection_read_write_dispatch(c, -1))
        ;
    exit(0);
}
