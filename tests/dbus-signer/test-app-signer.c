/* A test application signer: holds a software key (GnuTLS) and exports
 * org.smimestream.Signer1 (dbus/org.smimestream.Signer1.xml) at
 * /org/smimestream/test/Signer.
 *
 *   test-app-signer --key KEY --cert CHAIN.pem --name NAME [--register]
 *                   [--exit-before-sign] [--log FILE]
 *                   [--error ERRNAME] [--delay SECS] [--bad-certs] [--no-certs]
 *
 * --register       call org.smimestream.Agent1.RegisterSigner(path, {name})
 * --exit-before-sign  on Sign, log the call and exit without replying
 * --log FILE       one line per call: "Sign ALGORITHM LENGTH", "Get Certificates",
 *                  "GetAll", "Registered ID"
 * --error ERRNAME  answer Sign with this D-Bus error
 * --delay SECS     wait before answering Sign
 * --bad-certs      Certificates holds bytes that are no certificate
 * --no-certs       Certificates is empty
 * --bus-name NAME  also own the well-known bus name NAME
 *
 * When ready (object exported and, with --register, registered) it prints its
 * unique bus name on stdout.  It runs until killed or the bus goes away.
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <gnutls/abstract.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "common.h"

#define PATH "/org/smimestream/test/Signer"
#define IFACE "org.smimestream.Signer1"

static const char iface_xml[] =
    " <interface name=\"org.smimestream.Signer1\">\n"
    "  <method name=\"Sign\">\n"
    "   <arg name=\"algorithm\" type=\"s\" direction=\"in\"/>\n"
    "   <arg name=\"data\" type=\"ay\" direction=\"in\"/>\n"
    "   <arg name=\"signature\" type=\"ay\" direction=\"out\"/>\n"
    "  </method>\n"
    "  <property name=\"Certificates\" type=\"aay\" access=\"read\"/>\n"
    " </interface>\n";

static struct {
    const char *key, *cert, *name, *log, *error, *bus_name;
    int reg, exit_before_sign, bad_certs, no_certs;
    unsigned delay;
} opt;

static gnutls_privkey_t key;
static gnutls_pk_algorithm_t key_pk;
static gnutls_datum_t certs[16];
static unsigned n_certs;
static dbus_uint32_t register_serial;

static void load_key(void)
{
    gnutls_datum_t d;
    int r = gnutls_load_file(opt.key, &d);
    if (r < 0)
        test_die("cannot read %s: %s", opt.key, gnutls_strerror(r));
    if (gnutls_privkey_init(&key) < 0 ||
        (r = gnutls_privkey_import_x509_raw(key, &d, GNUTLS_X509_FMT_PEM, NULL, 0)) < 0)
        test_die("cannot import the key %s: %s", opt.key, gnutls_strerror(r));
    gnutls_free(d.data);
    key_pk = gnutls_privkey_get_pk_algorithm(key, NULL);

    r = gnutls_load_file(opt.cert, &d);
    if (r < 0)
        test_die("cannot read %s: %s", opt.cert, gnutls_strerror(r));
    gnutls_x509_crt_t *list = NULL;
    unsigned n = 0;
    r = gnutls_x509_crt_list_import2(&list, &n, &d, GNUTLS_X509_FMT_PEM, 0);
    gnutls_free(d.data);
    if (r < 0 || n == 0)
        test_die("no certificates in %s", opt.cert);
    for (unsigned i = 0; i < n; i++) {
        if (n_certs < 16 && gnutls_x509_crt_export2(list[i], GNUTLS_X509_FMT_DER, &certs[n_certs]) >= 0)
            n_certs++;
        gnutls_x509_crt_deinit(list[i]);
    }
    gnutls_free(list);
}

/* "rsa-pkcs1-sha256" etc. -> GnuTLS; also the digest length wanted. */
static gnutls_sign_algorithm_t map_algorithm(const char *alg, unsigned *dlen)
{
    static const struct {
        const char *name;
        gnutls_digest_algorithm_t dig;
    } hashes[] = {
        { "sha256", GNUTLS_DIG_SHA256 }, { "sha384", GNUTLS_DIG_SHA384 },
        { "sha512", GNUTLS_DIG_SHA512 }, { "sha224", GNUTLS_DIG_SHA224 },
    };
    *dlen = 0;
    if (strcmp(alg, "ed25519") == 0)
        return key_pk == GNUTLS_PK_EDDSA_ED25519 ? GNUTLS_SIGN_EDDSA_ED25519 : GNUTLS_SIGN_UNKNOWN;
    const char *h = strrchr(alg, '-');
    if (!h)
        return GNUTLS_SIGN_UNKNOWN;
    gnutls_digest_algorithm_t dig = GNUTLS_DIG_UNKNOWN;
    for (size_t i = 0; i < sizeof hashes / sizeof *hashes; i++)
        if (strcmp(h + 1, hashes[i].name) == 0)
            dig = hashes[i].dig;
    if (dig == GNUTLS_DIG_UNKNOWN)
        return GNUTLS_SIGN_UNKNOWN;
    *dlen = gnutls_hash_get_len(dig);
    size_t plen = (size_t)(h - alg);
    bool rsa = key_pk == GNUTLS_PK_RSA || key_pk == GNUTLS_PK_RSA_PSS;
    if (plen == 9 && strncmp(alg, "rsa-pkcs1", 9) == 0 && key_pk == GNUTLS_PK_RSA)
        return gnutls_pk_to_sign(GNUTLS_PK_RSA, dig);
    if (plen == 5 && strncmp(alg, "ecdsa", 5) == 0 && key_pk == GNUTLS_PK_ECDSA)
        return gnutls_pk_to_sign(GNUTLS_PK_ECDSA, dig);
    if (plen == 7 && strncmp(alg, "rsa-pss", 7) == 0 && rsa) {
        bool pss_key = key_pk == GNUTLS_PK_RSA_PSS;
        switch (dig) {
        case GNUTLS_DIG_SHA256: return pss_key ? GNUTLS_SIGN_RSA_PSS_SHA256 : GNUTLS_SIGN_RSA_PSS_RSAE_SHA256;
        case GNUTLS_DIG_SHA384: return pss_key ? GNUTLS_SIGN_RSA_PSS_SHA384 : GNUTLS_SIGN_RSA_PSS_RSAE_SHA384;
        case GNUTLS_DIG_SHA512: return pss_key ? GNUTLS_SIGN_RSA_PSS_SHA512 : GNUTLS_SIGN_RSA_PSS_RSAE_SHA512;
        default: return GNUTLS_SIGN_UNKNOWN;
        }
    }
    return GNUTLS_SIGN_UNKNOWN;
}

static void handle_sign(DBusConnection *c, DBusMessage *msg)
{
    const char *alg = NULL;
    const unsigned char *data = NULL;
    int len = 0;
    DBusError e;
    dbus_error_init(&e);
    if (!dbus_message_get_args(msg, &e, DBUS_TYPE_STRING, &alg, DBUS_TYPE_ARRAY, DBUS_TYPE_BYTE,
                               &data, &len, DBUS_TYPE_INVALID)) {
        test_reply_error(c, msg, DBUS_ERROR_INVALID_ARGS, "%s", e.message);
        dbus_error_free(&e);
        return;
    }
    test_log("Sign %s %d", alg, len);
    if (opt.exit_before_sign)
        _exit(0);
    if (opt.delay)
        sleep(opt.delay);
    if (opt.error) {
        test_reply_error(c, msg, opt.error, "the test signer refuses (--error)");
        return;
    }
    unsigned dlen;
    gnutls_sign_algorithm_t sa = map_algorithm(alg, &dlen);
    if (sa == GNUTLS_SIGN_UNKNOWN) {
        test_reply_error(c, msg, DBUS_ERROR_INVALID_ARGS, "algorithm '%s' does not fit this key", alg);
        return;
    }
    gnutls_datum_t in = { (unsigned char *)data, (unsigned)len }, out = { NULL, 0 };
    int r;
    if (sa == GNUTLS_SIGN_EDDSA_ED25519) {
        r = gnutls_privkey_sign_data2(key, sa, 0, &in, &out);
    } else {
        if ((unsigned)len != dlen) {
            test_reply_error(c, msg, DBUS_ERROR_INVALID_ARGS, "%s wants %u bytes of digest, got %d",
                             alg, dlen, len);
            return;
        }
        r = gnutls_privkey_sign_hash2(key, sa, 0, &in, &out);
    }
    if (r < 0) {
        test_reply_error(c, msg, DBUS_ERROR_FAILED, "signing failed: %s", gnutls_strerror(r));
        return;
    }
    DBusMessage *reply = dbus_message_new_method_return(msg);
    const unsigned char *p = out.data;
    if (!reply || !dbus_message_append_args(reply, DBUS_TYPE_ARRAY, DBUS_TYPE_BYTE, &p,
                                            (int)out.size, DBUS_TYPE_INVALID))
        test_die("out of memory");
    gnutls_free(out.data);
    test_send(c, reply);
}

static void append_certificates(DBusMessageIter *it)
{
    static const unsigned char junk[] = "this is not a certificate";
    DBusMessageIter var, arr, bytes;
    if (!dbus_message_iter_open_container(it, DBUS_TYPE_VARIANT, "aay", &var) ||
        !dbus_message_iter_open_container(&var, DBUS_TYPE_ARRAY, "ay", &arr))
        test_die("out of memory");
    unsigned n = opt.no_certs ? 0 : opt.bad_certs ? 1 : n_certs;
    for (unsigned i = 0; i < n; i++) {
        const unsigned char *p = opt.bad_certs ? junk : certs[i].data;
        int len = opt.bad_certs ? (int)sizeof junk : (int)certs[i].size;
        if (!dbus_message_iter_open_container(&arr, DBUS_TYPE_ARRAY, "y", &bytes) ||
            !dbus_message_iter_append_fixed_array(&bytes, DBUS_TYPE_BYTE, &p, len) ||
            !dbus_message_iter_close_container(&arr, &bytes))
            test_die("out of memory");
    }
    if (!dbus_message_iter_close_container(&var, &arr) || !dbus_message_iter_close_container(it, &var))
        test_die("out of memory");
}

static void handle_props(DBusConnection *c, DBusMessage *msg)
{
    const char *iface = NULL, *prop = NULL;
    DBusError e;
    dbus_error_init(&e);
    if (dbus_message_is_method_call(msg, DBUS_INTERFACE_PROPERTIES, "Get")) {
        if (!dbus_message_get_args(msg, &e, DBUS_TYPE_STRING, &iface, DBUS_TYPE_STRING, &prop,
                                   DBUS_TYPE_INVALID)) {
            test_reply_error(c, msg, DBUS_ERROR_INVALID_ARGS, "%s", e.message);
            dbus_error_free(&e);
            return;
        }
        test_log("Get %s", prop);
        if (strcmp(iface, IFACE) != 0 || strcmp(prop, "Certificates") != 0) {
            test_reply_error(c, msg, DBUS_ERROR_UNKNOWN_PROPERTY, "no property %s.%s", iface, prop);
            return;
        }
        DBusMessage *reply = dbus_message_new_method_return(msg);
        DBusMessageIter it;
        if (!reply)
            test_die("out of memory");
        dbus_message_iter_init_append(reply, &it);
        append_certificates(&it);
        test_send(c, reply);
    } else if (dbus_message_is_method_call(msg, DBUS_INTERFACE_PROPERTIES, "GetAll")) {
        if (!dbus_message_get_args(msg, &e, DBUS_TYPE_STRING, &iface, DBUS_TYPE_INVALID)) {
            test_reply_error(c, msg, DBUS_ERROR_INVALID_ARGS, "%s", e.message);
            dbus_error_free(&e);
            return;
        }
        test_log("GetAll %s", iface);
        DBusMessage *reply = dbus_message_new_method_return(msg);
        DBusMessageIter it, dict, ent;
        const char *name = "Certificates";
        if (!reply)
            test_die("out of memory");
        dbus_message_iter_init_append(reply, &it);
        if (!dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "{sv}", &dict))
            test_die("out of memory");
        if (strcmp(iface, IFACE) == 0) {
            if (!dbus_message_iter_open_container(&dict, DBUS_TYPE_DICT_ENTRY, NULL, &ent) ||
                !dbus_message_iter_append_basic(&ent, DBUS_TYPE_STRING, &name))
                test_die("out of memory");
            append_certificates(&ent);
            if (!dbus_message_iter_close_container(&dict, &ent))
                test_die("out of memory");
        }
        if (!dbus_message_iter_close_container(&it, &dict))
            test_die("out of memory");
        test_send(c, reply);
    } else if (dbus_message_is_method_call(msg, DBUS_INTERFACE_PROPERTIES, "Set")) {
        test_reply_error(c, msg, DBUS_ERROR_PROPERTY_READ_ONLY, "Certificates is read-only");
    } else {
        test_reply_error(c, msg, DBUS_ERROR_UNKNOWN_METHOD, "no such method");
    }
}

static DBusHandlerResult on_message(DBusConnection *c, DBusMessage *msg, void *data)
{
    if (dbus_message_get_type(msg) != DBUS_MESSAGE_TYPE_METHOD_CALL)
        return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
    if (test_handle_std(c, msg, iface_xml))
        return DBUS_HANDLER_RESULT_HANDLED;
    if (dbus_message_is_method_call(msg, IFACE, "Sign"))
        handle_sign(c, msg);
    else if (dbus_message_has_interface(msg, DBUS_INTERFACE_PROPERTIES))
        handle_props(c, msg);
    else
        test_reply_error(c, msg, DBUS_ERROR_UNKNOWN_METHOD, "no method %s.%s here",
                         dbus_message_get_interface(msg) ? dbus_message_get_interface(msg) : "",
                         dbus_message_get_member(msg));
    return DBUS_HANDLER_RESULT_HANDLED;
}

/* The reply to RegisterSigner. */
static DBusHandlerResult on_filter(DBusConnection *c, DBusMessage *msg, void *data)
{
    if (!register_serial || dbus_message_get_reply_serial(msg) != register_serial)
        return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
    register_serial = 0;
    if (dbus_message_get_type(msg) == DBUS_MESSAGE_TYPE_ERROR) {
        const char *text = "";
        dbus_message_get_args(msg, NULL, DBUS_TYPE_STRING, &text, DBUS_TYPE_INVALID);
        test_die("RegisterSigner failed: %s: %s", dbus_message_get_error_name(msg), text);
    }
    const char *id = NULL;
    if (!dbus_message_get_args(msg, NULL, DBUS_TYPE_STRING, &id, DBUS_TYPE_INVALID))
        test_die("RegisterSigner: unexpected reply '%s'", dbus_message_get_signature(msg));
    test_log("Registered %s", id);
    test_print_ready(c);
    return DBUS_HANDLER_RESULT_HANDLED;
}

static void register_with_agent(DBusConnection *c)
{
    DBusMessage *m = dbus_message_new_method_call("org.smimestream.Agent1", "/org/smimestream/Agent1",
                                                  "org.smimestream.Agent1", "RegisterSigner");
    const char *path = PATH, *key_name = "name";
    DBusMessageIter it, dict, ent, var;
    if (!m)
        test_die("out of memory");
    dbus_message_iter_init_append(m, &it);
    if (!dbus_message_iter_append_basic(&it, DBUS_TYPE_OBJECT_PATH, &path) ||
        !dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "{sv}", &dict) ||
        !dbus_message_iter_open_container(&dict, DBUS_TYPE_DICT_ENTRY, NULL, &ent) ||
        !dbus_message_iter_append_basic(&ent, DBUS_TYPE_STRING, &key_name) ||
        !dbus_message_iter_open_container(&ent, DBUS_TYPE_VARIANT, "s", &var) ||
        !dbus_message_iter_append_basic(&var, DBUS_TYPE_STRING, &opt.name) ||
        !dbus_message_iter_close_container(&ent, &var) ||
        !dbus_message_iter_close_container(&dict, &ent) ||
        !dbus_message_iter_close_container(&it, &dict))
        test_die("out of memory");
    /* Not a blocking call: the agent may read Certificates before it answers. */
    if (!dbus_connection_send(c, m, &register_serial))
        test_die("out of memory");
    dbus_message_unref(m);
    dbus_connection_flush(c);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "key", required_argument, NULL, 'k' },
        { "cert", required_argument, NULL, 'c' },
        { "name", required_argument, NULL, 'n' },
        { "log", required_argument, NULL, 'l' },
        { "register", no_argument, &opt.reg, 1 },
        { "exit-before-sign", no_argument, &opt.exit_before_sign, 1 },
        { "error", required_argument, NULL, 'e' },
        { "delay", required_argument, NULL, 'd' },
        { "bad-certs", no_argument, &opt.bad_certs, 1 },
        { "no-certs", no_argument, &opt.no_certs, 1 },
        { "bus-name", required_argument, NULL, 'b' },
        { NULL, 0, NULL, 0 },
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 0: break;
        case 'k': opt.key = optarg; break;
        case 'c': opt.cert = optarg; break;
        case 'n': opt.name = optarg; break;
        case 'l': opt.log = optarg; break;
        case 'e': opt.error = optarg; break;
        case 'b': opt.bus_name = optarg; break;
        case 'd': opt.delay = (unsigned)strtoul(optarg, NULL, 10); break;
        default: return 64;
        }
    }
    if (!opt.key || !opt.cert || !opt.name || optind != argc) {
        fprintf(stderr, "usage: test-app-signer --key KEY --cert CHAIN.pem --name NAME [--register] "
                        "[--exit-before-sign] [--log FILE] [--error ERRNAME] [--delay SECS] "
                        "[--bad-certs] [--no-certs] [--bus-name NAME]\n");
        return 64;
    }
    test_log_open("test-app-signer", opt.log);
    if (gnutls_global_init() < 0)
        test_die("gnutls_global_init failed");
    load_key();

    DBusConnection *c = test_bus_connect("test-app-signer");
    static const DBusObjectPathVTable vt = { .message_function = on_message };
    if (!dbus_connection_register_object_path(c, PATH, &vt, NULL) ||
        !dbus_connection_add_filter(c, on_filter, NULL, NULL))
        test_die("out of memory");
    if (opt.bus_name) {
        DBusError e;
        dbus_error_init(&e);
        if (dbus_bus_request_name(c, opt.bus_name, DBUS_NAME_FLAG_DO_NOT_QUEUE, &e) !=
            DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER)
            test_die("cannot own %s: %s", opt.bus_name, dbus_error_is_set(&e) ? e.message : "taken");
    }
    if (opt.reg)
        register_with_agent(c);
    else
        test_print_ready(c);
    test_main_loop(c);
}
