/* A test PIN prompter: exports org.smimestream.PinPrompt1
 * (dbus/org.smimestream.PinPrompt1.xml) at /org/smimestream/test/PinPrompt.
 *
 *   test-pin-prompt --pin PIN [--log FILE] [--register] [--cancel]
 *                   [--delay SECS] [--exit-on-ask]
 *
 * AskPin(token, hint) answers PIN.  Each call is logged to FILE as
 * "AskPin TOKEN|HINT" (one line; the PIN itself is never logged).
 * --register     call org.smimestream.Agent1.RegisterPinPrompt(path) first
 * --cancel       answer org.smimestream.Error.Cancelled instead of a PIN
 * --delay SECS   wait before answering
 * --exit-on-ask  exit without answering
 * When ready it prints its unique bus name on stdout.
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

#define PATH "/org/smimestream/test/PinPrompt"
#define IFACE "org.smimestream.PinPrompt1"

static const char iface_xml[] =
    " <interface name=\"org.smimestream.PinPrompt1\">\n"
    "  <method name=\"AskPin\">\n"
    "   <arg name=\"token\" type=\"s\" direction=\"in\"/>\n"
    "   <arg name=\"hint\" type=\"s\" direction=\"in\"/>\n"
    "   <arg name=\"pin\" type=\"s\" direction=\"out\"/>\n"
    "  </method>\n"
    " </interface>\n";

static struct {
    const char *pin, *log;
    int reg, cancel, exit_on_ask;
    unsigned delay;
} opt;
static dbus_uint32_t register_serial;

static DBusHandlerResult on_message(DBusConnection *c, DBusMessage *msg, void *data)
{
    if (dbus_message_get_type(msg) != DBUS_MESSAGE_TYPE_METHOD_CALL)
        return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
    if (test_handle_std(c, msg, iface_xml))
        return DBUS_HANDLER_RESULT_HANDLED;
    if (!dbus_message_is_method_call(msg, IFACE, "AskPin")) {
        test_reply_error(c, msg, DBUS_ERROR_UNKNOWN_METHOD, "no method %s.%s here",
                         dbus_message_get_interface(msg) ? dbus_message_get_interface(msg) : "",
                         dbus_message_get_member(msg));
        return DBUS_HANDLER_RESULT_HANDLED;
    }
    const char *token = NULL, *hint = NULL;
    DBusError e;
    dbus_error_init(&e);
    if (!dbus_message_get_args(msg, &e, DBUS_TYPE_STRING, &token, DBUS_TYPE_STRING, &hint,
                               DBUS_TYPE_INVALID)) {
        test_reply_error(c, msg, DBUS_ERROR_INVALID_ARGS, "%s", e.message);
        dbus_error_free(&e);
        return DBUS_HANDLER_RESULT_HANDLED;
    }
    test_log("AskPin %s|%s", token, hint);
    if (opt.exit_on_ask)
        _exit(0);
    if (opt.delay)
        sleep(opt.delay);
    if (opt.cancel) {
        test_reply_error(c, msg, "org.smimestream.Error.Cancelled", "the user declined");
        return DBUS_HANDLER_RESULT_HANDLED;
    }
    DBusMessage *reply = dbus_message_new_method_return(msg);
    if (!reply || !dbus_message_append_args(reply, DBUS_TYPE_STRING, &opt.pin, DBUS_TYPE_INVALID))
        test_die("out of memory");
    test_send(c, reply);
    return DBUS_HANDLER_RESULT_HANDLED;
}

static DBusHandlerResult on_filter(DBusConnection *c, DBusMessage *msg, void *data)
{
    if (!register_serial || dbus_message_get_reply_serial(msg) != register_serial)
        return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
    register_serial = 0;
    if (dbus_message_get_type(msg) == DBUS_MESSAGE_TYPE_ERROR) {
        const char *text = "";
        dbus_message_get_args(msg, NULL, DBUS_TYPE_STRING, &text, DBUS_TYPE_INVALID);
        test_die("RegisterPinPrompt failed: %s: %s", dbus_message_get_error_name(msg), text);
    }
    test_log("Registered");
    test_print_ready(c);
    return DBUS_HANDLER_RESULT_HANDLED;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "pin", required_argument, NULL, 'p' },
        { "log", required_argument, NULL, 'l' },
        { "register", no_argument, &opt.reg, 1 },
        { "cancel", no_argument, &opt.cancel, 1 },
        { "exit-on-ask", no_argument, &opt.exit_on_ask, 1 },
        { "delay", required_argument, NULL, 'd' },
        { NULL, 0, NULL, 0 },
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 0: break;
        case 'p': opt.pin = optarg; break;
        case 'l': opt.log = optarg; break;
        case 'd': opt.delay = (unsigned)strtoul(optarg, NULL, 10); break;
        default: return 64;
        }
    }
    if ((!opt.pin && !opt.cancel) || optind != argc) {
        fprintf(stderr, "usage: test-pin-prompt --pin PIN [--log FILE] [--register] [--cancel] "
                        "[--delay SECS] [--exit-on-ask]\n");
        return 64;
    }
    if (!opt.pin)
        opt.pin = "";
    test_log_open("test-pin-prompt", opt.log);
    DBusConnection *c = test_bus_connect("test-pin-prompt");
    static const DBusObjectPathVTable vt = { .message_function = on_message };
    if (!dbus_connection_register_object_path(c, PATH, &vt, NULL) ||
        !dbus_connection_add_filter(c, on_filter, NULL, NULL))
        test_die("out of memory");
    if (opt.reg) {
        const char *path = PATH;
        DBusMessage *m = dbus_message_new_method_call("org.smimestream.Agent1", "/org/smimestream/Agent1",
                                                      "org.smimestream.Agent1", "RegisterPinPrompt");
        if (!m || !dbus_message_append_args(m, DBUS_TYPE_OBJECT_PATH, &path, DBUS_TYPE_INVALID) ||
            !dbus_connection_send(c, m, &register_serial))
            test_die("out of memory");
        dbus_message_unref(m);
        dbus_connection_flush(c);
    } else {
        test_print_ready(c);
    }
    test_main_loop(c);
}
