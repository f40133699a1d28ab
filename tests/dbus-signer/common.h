/* Small helpers shared by the D-Bus test programs (libdbus-1 only). */
#ifndef SMS_TEST_DBUS_COMMON_H
#define SMS_TEST_DBUS_COMMON_H

#include <stdbool.h>
#include <stdio.h>

#include <dbus/dbus.h>

/* The session bus, or the system bus when SMIMESTREAM_BUS=system; exits
 * with a message on failure. */
DBusConnection *test_bus_connect(const char *prog);

/* Append a line to the log file (when one was given), flushed at once. */
void test_log_open(const char *prog, const char *path);
void test_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Print the connection's unique name on stdout, flushed: "ready". */
void test_print_ready(DBusConnection *c);

/* Reply to msg with an error. */
void test_reply_error(DBusConnection *c, DBusMessage *msg, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void test_send(DBusConnection *c, DBusMessage *m);

/* Handle org.freedesktop.DBus.Introspectable and .Peer for an object that
 * has this interface XML; true when msg was one of those. */
bool test_handle_std(DBusConnection *c, DBusMessage *msg, const char *iface_xml);

/* Run until the connection drops (exit 0) or exit() is called. */
void test_main_loop(DBusConnection *c) __attribute__((noreturn));

/* Die with a message. */
void test_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
