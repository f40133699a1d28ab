/* A stand-in for smimestream-agent that knows only about application
 * signers: it owns org.smimestream.Agent1 and implements ListSigners,
 * RegisterSigner, UnregisterSigner and RegisterPinPrompt as
 * dbus/org.smimestream.Agent1.xml says (Submit answers
 * org.freedesktop.DBus.Error.NotSupported).  Registrations end when their
 * owner leaves the bus.  It lets the plugin's dbus:NAME path be tested
 * without the real agent.
 *
 *   mock-agent [--log FILE]
 *
 * Prints its unique name on stdout once it owns the well-known name.
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define NAME "org.smimestream.Agent1"
#define PATH "/org/smimestream/Agent1"
#define IFACE "org.smimestream.Agent1"
#define MAX_REG 64

static const char iface_xml[] =
    " <interface name=\"org.smimestream.Agent1\">\n"
    "  <method name=\"Submit\"><arg name=\"message\" type=\"a{sv}\" direction=\"in\"/>"
    "<arg name=\"attachments\" type=\"a(ssh)\" direction=\"in\"/>"
    "<arg name=\"options\" type=\"a{sv}\" direction=\"in\"/>"
    "<arg name=\"job\" type=\"o\" direction=\"out\"/></method>\n"
    "  <method name=\"ListSigners\"><arg name=\"signers\" type=\"a(sa{sv})\" direction=\"out\"/></method>\n"
    "  <method name=\"RegisterSigner\"><arg name=\"path\" type=\"o\" direction=\"in\"/>"
    "<arg name=\"props\" type=\"a{sv}\" direction=\"in\"/><arg name=\"id\" type=\"s\" direction=\"out\"/></method>\n"
    "  <method name=\"UnregisterSigner\"><arg name=\"id\" type=\"s\" direction=\"in\"/></method>\n"
    "  <method name=\"RegisterPinPrompt\"><arg name=\"path\" type=\"o\" direction=\"in\"/></method>\n"
    " </interface>\n";

typedef struct reg {
    char id[16], *name, *bus, *path;
} reg;

static reg regs[MAX_REG];
static unsigned next_id = 1;

static void reg_clear(reg *r)
{
    free(r->name);
    free(r->bus);
    free(r->path);
    memset(r, 0, sizeof *r);
}

static void add_variant(DBusMessageIter *dict, const char *key, int type, const char *sig, const void *val)
{
    DBusMessageIter ent, var;
    if (!dbus_message_iter_open_container(dict, DBUS_TYPE_DICT_ENTRY, NULL, &ent) ||
        !dbus_message_iter_append_basic(&ent, DBUS_TYPE_STRING, &key) ||
        !dbus_message_iter_open_container(&ent, DBUS_TYPE_VARIANT, sig, &var) ||
        !dbus_message_iter_append_basic(&var, type, val) ||
        !dbus_message_iter_close_container(&ent, &var) ||
        !dbus_message_iter_close_container(dict, &ent))
        test_die("out of memory");
}

static void list_signers(DBusConnection *c, DBusMessage *msg)
{
    DBusMessage *reply = dbus_message_new_method_return(msg);
    DBusMessageIter it, arr, st, dict;
    if (!reply)
        test_die("out of memory");
    dbus_message_iter_init_append(reply, &it);
    if (!dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "(sa{sv})", &arr))
        test_die("out of memory");
    for (unsigned i = 0; i < MAX_REG; i++) {
        reg *r = &regs[i];
        if (!r->name)
            continue;
        const char *id = r->id, *kind = "dbus";
        if (!dbus_message_iter_open_container(&arr, DBUS_TYPE_STRUCT, NULL, &st) ||
            !dbus_message_iter_append_basic(&st, DBUS_TYPE_STRING, &id) ||
            !dbus_message_iter_open_container(&st, DBUS_TYPE_ARRAY, "{sv}", &dict))
            test_die("out of memory");
        add_variant(&dict, "kind", DBUS_TYPE_STRING, "s", &kind);
        add_variant(&dict, "name", DBUS_TYPE_STRING, "s", &r->name);
        add_variant(&dict, "bus-name", DBUS_TYPE_STRING, "s", &r->bus);
        add_variant(&dict, "path", DBUS_TYPE_OBJECT_PATH, "o", &r->path);
        if (!dbus_message_iter_close_container(&st, &dict) ||
            !dbus_message_iter_close_container(&arr, &st))
            test_die("out of memory");
    }
    if (!dbus_message_iter_close_container(&it, &arr))
        test_die("out of memory");
    test_send(c, reply);
}

static void register_signer(DBusConnection *c, DBusMessage *msg)
{
    DBusMessageIter it, dict;
    const char *path = NULL, *name = NULL;
    if (strcmp(dbus_message_get_signature(msg), "oa{sv}") != 0) {
        test_reply_error(c, msg, "org.smimestream.Error.InvalidArgs", "expected (oa{sv})");
        return;
    }
    dbus_message_iter_init(msg, &it);
    dbus_message_iter_get_basic(&it, &path);
    dbus_message_iter_next(&it);
    dbus_message_iter_recurse(&it, &dict);
    for (; dbus_message_iter_get_arg_type(&dict) == DBUS_TYPE_DICT_ENTRY; dbus_message_iter_next(&dict)) {
        DBusMessageIter ent, var;
        const char *key;
        dbus_message_iter_recurse(&dict, &ent);
        dbus_message_iter_get_basic(&ent, &key);
        dbus_message_iter_next(&ent);
        dbus_message_iter_recurse(&ent, &var);
        if (strcmp(key, "name") == 0 && dbus_message_iter_get_arg_type(&var) == DBUS_TYPE_STRING)
            dbus_message_iter_get_basic(&var, &name);
    }
    if (!name || !*name || strchr(name, '/')) {
        test_reply_error(c, msg, "org.smimestream.Error.InvalidArgs",
                         "props must hold name (s), without '/'");
        return;
    }
    reg *slot = NULL;
    for (unsigned i = 0; i < MAX_REG; i++) {
        if (regs[i].name && strcmp(regs[i].name, name) == 0) {
            test_reply_error(c, msg, "org.smimestream.Error.InvalidArgs",
                             "a signer named '%s' is registered already", name);
            return;
        }
        if (!regs[i].name && !slot)
            slot = &regs[i];
    }
    if (!slot) {
        test_reply_error(c, msg, "org.smimestream.Error.TooManyJobs", "too many signers");
        return;
    }
    snprintf(slot->id, sizeof slot->id, "app%u", next_id++);
    slot->name = strdup(name);
    slot->bus = strdup(dbus_message_get_sender(msg));
    slot->path = strdup(path);
    if (!slot->name || !slot->bus || !slot->path)
        test_die("out of memory");
    test_log("RegisterSigner %s %s %s %s", slot->id, name, slot->bus, path);
    DBusMessage *reply = dbus_message_new_method_return(msg);
    const char *id = slot->id;
    if (!reply || !dbus_message_append_args(reply, DBUS_TYPE_STRING, &id, DBUS_TYPE_INVALID))
        test_die("out of memory");
    test_send(c, reply);
}

static void unregister_signer(DBusConnection *c, DBusMessage *msg)
{
    const char *id = NULL;
    if (!dbus_message_get_args(msg, NULL, DBUS_TYPE_STRING, &id, DBUS_TYPE_INVALID)) {
        test_reply_error(c, msg, "org.smimestream.Error.InvalidArgs", "expected (s)");
        return;
    }
    for (unsigned i = 0; i < MAX_REG; i++) {
        if (regs[i].name && strcmp(regs[i].id, id) == 0) {
            if (strcmp(regs[i].bus, dbus_message_get_sender(msg)) != 0) {
                test_reply_error(c, msg, "org.smimestream.Error.AccessDenied",
                                 "signer %s belongs to another connection", id);
                return;
            }
            test_log("UnregisterSigner %s", id);
            reg_clear(&regs[i]);
            test_send(c, dbus_message_new_method_return(msg));
            return;
        }
    }
    test_reply_error(c, msg, "org.smimestream.Error.InvalidArgs", "no signer %s", id);
}

static DBusHandlerResult on_message(DBusConnection *c, DBusMessage *msg, void *data)
{
    if (dbus_message_get_type(msg) != DBUS_MESSAGE_TYPE_METHOD_CALL)
        return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
    if (test_handle_std(c, msg, iface_xml))
        return DBUS_HANDLER_RESULT_HANDLED;
    if (dbus_message_is_method_call(msg, IFACE, "ListSigners"))
        list_signers(c, msg);
    else if (dbus_message_is_method_call(msg, IFACE, "RegisterSigner"))
        register_signer(c, msg);
    else if (dbus_message_is_method_call(msg, IFACE, "UnregisterSigner"))
        unregister_signer(c, msg);
    else if (dbus_message_is_method_call(msg, IFACE, "RegisterPinPrompt"))
        test_send(c, dbus_message_new_method_return(msg));
    else if (dbus_message_is_method_call(msg, IFACE, "Submit"))
        test_reply_error(c, msg, DBUS_ERROR_NOT_SUPPORTED, "this is the test mock agent");
    else
        test_reply_error(c, msg, DBUS_ERROR_UNKNOWN_METHOD, "no such method");
    return DBUS_HANDLER_RESULT_HANDLED;
}

/* A registration ends when its owner leaves the bus. */
static DBusHandlerResult on_filter(DBusConnection *c, DBusMessage *msg, void *data)
{
    if (!dbus_message_is_signal(msg, DBUS_INTERFACE_DBUS, "NameOwnerChanged"))
        return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
    const char *name, *old_owner, *new_owner;
    if (!dbus_message_get_args(msg, NULL, DBUS_TYPE_STRING, &name, DBUS_TYPE_STRING, &old_owner,
                               DBUS_TYPE_STRING, &new_owner, DBUS_TYPE_INVALID))
        return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
    if (name[0] == ':' && !*new_owner)
        for (unsigned i = 0; i < MAX_REG; i++)
            if (regs[i].name && strcmp(regs[i].bus, name) == 0) {
                test_log("Gone %s %s", regs[i].id, name);
                reg_clear(&regs[i]);
            }
    return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "log", required_argument, NULL, 'l' },
        { NULL, 0, NULL, 0 },
    };
    const char *log = NULL;
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        if (ch == 'l')
            log = optarg;
        else
            return 64;
    }
    test_log_open("mock-agent", log);
    DBusConnection *c = test_bus_connect("mock-agent");
    static const DBusObjectPathVTable vt = { .message_function = on_message };
    DBusError e;
    dbus_error_init(&e);
    if (!dbus_connection_register_object_path(c, PATH, &vt, NULL) ||
        !dbus_connection_add_filter(c, on_filter, NULL, NULL))
        test_die("out of memory");
    dbus_bus_add_match(c, "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged'", &e);
    if (dbus_error_is_set(&e))
        test_die("AddMatch: %s", e.message);
    int r = dbus_bus_request_name(c, NAME, DBUS_NAME_FLAG_DO_NOT_QUEUE, &e);
    if (r != DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER)
        test_die("cannot own %s: %s", NAME, dbus_error_is_set(&e) ? e.message : "taken");
    test_print_ready(c);
    test_main_loop(c);
}
