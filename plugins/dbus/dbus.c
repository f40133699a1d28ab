/* smimestream signer plugin: application signers over D-Bus.
 *
 * A desktop application that holds its own key exports
 * org.smimestream.Signer1 (dbus/org.smimestream.Signer1.xml) and registers
 * it with the agent (org.smimestream.Agent1.RegisterSigner).  This plugin
 * serves two spellings:
 *
 *   dbus:NAME               the signer the agent lists under NAME
 *                           (Agent1.ListSigners, kind "dbus")
 *   dbus:BUSNAME/OBJ/PATH   the application directly, no agent needed;
 *                           everything before the first '/' is the bus name
 *                           (":1.42" or "org.example.App")
 *
 * open() resolves the application to its unique bus name (so that another
 * process cannot take over a well-known name between open and sign), reads
 * its Certificates property and builds the signer.  sign() sends only the
 * digest of the signed attributes (Ed25519: the attribute bytes) with
 * Signer1.Sign and a timeout.  The library verifies every signature against
 * the leaf certificate, so a wrong key cannot slip through.
 *
 * The bus is the session bus, or the system bus when SMIMESTREAM_BUS=system.
 * Each signer has its own private, blocking connection, guarded by a mutex.
 */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <dbus/dbus.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include <smimestream/smimestream.h>

#define AGENT_NAME "org.smimestream.Agent1"
#define AGENT_PATH "/org/smimestream/Agent1"
#define AGENT_IFACE "org.smimestream.Agent1"
#define SIGNER_IFACE "org.smimestream.Signer1"
#define PROPS_IFACE "org.freedesktop.DBus.Properties"

#define MAX_CERTS 32
#define OPEN_TIMEOUT_MS (25 * 1000)
#define DEFAULT_SIGN_TIMEOUT_S 60
#define MAX_SIGN_TIMEOUT_S (24 * 3600)

extern __attribute__((visibility("default"))) const sms_plugin_descriptor sms_plugin_v1;

typedef struct dbus_signer {
    pthread_mutex_t lock;
    DBusConnection *conn;
    char *name;      /* NAME of dbus:NAME, or the bus name of the direct form */
    char *bus_name;  /* the application's unique name (":1.42") */
    char *path;      /* object path of its Signer1 */
    char *describe;  /* "application signer 'NAME' (:1.42 /org/...)" */
    int timeout_ms;
} dbus_signer;

static void seterr(char *err, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void seterr(char *err, size_t size, const char *fmt, ...)
{
    if (!err || !size)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, size, fmt, ap);
    va_end(ap);
}

static bool use_system_bus(void)
{
    const char *b = secure_getenv("SMIMESTREAM_BUS");
    return b && strcmp(b, "system") == 0;
}

static const char *bus_label(void)
{
    return use_system_bus() ? "system bus" : "session bus";
}

/* SMIMESTREAM_DBUS_SIGN_TIMEOUT: whole seconds, 1 .. 1 day; else 60. */
static int sign_timeout_ms(void)
{
    const char *s = secure_getenv("SMIMESTREAM_DBUS_SIGN_TIMEOUT");
    if (!s || !*s)
        return DEFAULT_SIGN_TIMEOUT_S * 1000;
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || !end || *end || v < 1 || v > MAX_SIGN_TIMEOUT_S)
        return DEFAULT_SIGN_TIMEOUT_S * 1000;
    return (int)v * 1000;
}

/* Keep this module (and libdbus with it) loaded for the life of the
 * process: libdbus keeps global state that must not be unmapped when the
 * library dlclose()s a plugin after the last signer is gone. */
static void pin_once(void)
{
    Dl_info info;
    if (dladdr((void *)&sms_plugin_v1, &info) && info.dli_fname)
        (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

static void pin_module(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, pin_once);
}

/* ---- connection ------------------------------------------------------------ */

static DBusConnection *connect_bus(char *err, size_t err_size)
{
    bool sys = use_system_bus();
    if (!sys && !getenv("DBUS_SESSION_BUS_ADDRESS")) {
        /* Without this libdbus would try $XDG_RUNTIME_DIR/bus and then X11
         * autolaunch; allow the first, refuse the second. */
        const char *rt = getenv("XDG_RUNTIME_DIR");
        char sock[PATH_MAX];
        struct stat st;
        if (!rt || snprintf(sock, sizeof sock, "%s/bus", rt) >= (int)sizeof sock ||
            stat(sock, &st) != 0) {
            seterr(err, err_size,
                   "no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is not set): application "
                   "signers need the session bus, or set SMIMESTREAM_BUS=system");
            return NULL;
        }
    }
    DBusError e;
    dbus_error_init(&e);
    DBusConnection *c = dbus_bus_get_private(sys ? DBUS_BUS_SYSTEM : DBUS_BUS_SESSION, &e);
    if (!c) {
        seterr(err, err_size, "cannot connect to the D-Bus %s: %s", bus_label(),
               e.message ? e.message : "unknown error");
        dbus_error_free(&e);
        return NULL;
    }
    /* A lost bus is an error for the signer, not a reason to exit(). */
    dbus_connection_set_exit_on_disconnect(c, FALSE);
    return c;
}

static void close_bus(DBusConnection *c)
{
    if (!c)
        return;
    dbus_connection_close(c);
    dbus_connection_unref(c);
}

/* Drop signals (NameAcquired, ...) that queue up on a connection that
 * never dispatches. */
static void drain(DBusConnection *c)
{
    DBusMessage *m;
    while ((m = dbus_connection_pop_message(c)))
        dbus_message_unref(m);
}

static bool err_is(const DBusError *e, const char *name)
{
    return e->name && strcmp(e->name, name) == 0;
}

static bool err_no_owner(const DBusError *e)
{
    return err_is(e, DBUS_ERROR_SERVICE_UNKNOWN) || err_is(e, DBUS_ERROR_NAME_HAS_NO_OWNER) ||
           err_is(e, "org.freedesktop.DBus.Error.ServiceUnknown");
}

/* A blocking call; the reply or NULL with e set. */
static DBusMessage *call(DBusConnection *c, DBusMessage *m, int timeout_ms, DBusError *e)
{
    DBusMessage *reply = dbus_connection_send_with_reply_and_block(c, m, timeout_ms, e);
    drain(c);
    return reply;
}

/* The unique name that owns bus_name now (or bus_name itself when unique). */
static int resolve_owner(DBusConnection *c, const char *bus_name, char **ret, char *err,
                         size_t err_size, const char *who)
{
    if (bus_name[0] == ':') {
        /* Is it still there? */
        DBusError e;
        dbus_error_init(&e);
        dbus_bool_t has = dbus_bus_name_has_owner(c, bus_name, &e);
        drain(c);
        if (dbus_error_is_set(&e)) {
            seterr(err, err_size, "%s: cannot ask the D-Bus %s about %s: %s", who, bus_label(),
                   bus_name, e.message);
            dbus_error_free(&e);
            return SMS_ERR_UNAVAILABLE;
        }
        if (!has) {
            seterr(err, err_size,
                   "%s: the application %s is not on the D-Bus %s (it exited or never "
                   "connected)",
                   who, bus_name, bus_label());
            return SMS_ERR_UNAVAILABLE;
        }
        *ret = strdup(bus_name);
        return *ret ? SMS_OK : SMS_ERR_NOMEM;
    }
    DBusMessage *m = dbus_message_new_method_call(DBUS_SERVICE_DBUS, DBUS_PATH_DBUS,
                                                  DBUS_INTERFACE_DBUS, "GetNameOwner");
    if (!m || !dbus_message_append_args(m, DBUS_TYPE_STRING, &bus_name, DBUS_TYPE_INVALID)) {
        if (m)
            dbus_message_unref(m);
        return SMS_ERR_NOMEM;
    }
    DBusError e;
    dbus_error_init(&e);
    DBusMessage *reply = call(c, m, OPEN_TIMEOUT_MS, &e);
    dbus_message_unref(m);
    if (!reply) {
        if (err_no_owner(&e))
            seterr(err, err_size, "%s: no application owns the name %s on the D-Bus %s", who,
                   bus_name, bus_label());
        else
            seterr(err, err_size, "%s: cannot look up %s on the D-Bus %s: %s", who, bus_name,
                   bus_label(), e.message);
        dbus_error_free(&e);
        return SMS_ERR_UNAVAILABLE;
    }
    const char *owner = NULL;
    int r = SMS_OK;
    if (!dbus_message_get_args(reply, &e, DBUS_TYPE_STRING, &owner, DBUS_TYPE_INVALID)) {
        seterr(err, err_size, "%s: bad GetNameOwner reply: %s", who, e.message);
        dbus_error_free(&e);
        r = SMS_ERR_UNAVAILABLE;
    } else if (!(*ret = strdup(owner))) {
        r = SMS_ERR_NOMEM;
    }
    dbus_message_unref(reply);
    return r;
}

/* ---- dbus:NAME through the agent ---------------------------------------------- */

/* Read a string (or object path) out of a variant. */
static const char *variant_string(DBusMessageIter *var, int type)
{
    if (dbus_message_iter_get_arg_type(var) != DBUS_TYPE_VARIANT)
        return NULL;
    DBusMessageIter v;
    dbus_message_iter_recurse(var, &v);
    if (dbus_message_iter_get_arg_type(&v) != type)
        return NULL;
    const char *s = NULL;
    dbus_message_iter_get_basic(&v, &s);
    return s;
}

/* Agent1.ListSigners -> the bus name and path of the "dbus" signer NAME. */
static int lookup_agent(DBusConnection *c, const char *name, char **ret_bus, char **ret_path,
                        char *err, size_t err_size)
{
    DBusMessage *m = dbus_message_new_method_call(AGENT_NAME, AGENT_PATH, AGENT_IFACE,
                                                  "ListSigners");
    if (!m)
        return SMS_ERR_NOMEM;
    /* The agent may be D-Bus activated. */
    dbus_message_set_auto_start(m, TRUE);
    DBusError e;
    dbus_error_init(&e);
    DBusMessage *reply = call(c, m, OPEN_TIMEOUT_MS, &e);
    dbus_message_unref(m);
    if (!reply) {
        if (err_no_owner(&e) || err_is(&e, DBUS_ERROR_SPAWN_SERVICE_NOT_FOUND))
            seterr(err, err_size,
                   "application signer '%s' is unavailable: no smimestream agent (%s) on the "
                   "D-Bus %s; start smimestream-agent, or name the application directly as "
                   "dbus:BUSNAME/OBJECT/PATH",
                   name, AGENT_NAME, bus_label());
        else
            seterr(err, err_size,
                   "application signer '%s' is unavailable: the smimestream agent did not list "
                   "its signers: %s (%s)",
                   name, e.message ? e.message : "", e.name ? e.name : "");
        dbus_error_free(&e);
        return SMS_ERR_UNAVAILABLE;
    }

    int r = SMS_OK;
    bool found = false;
    char known[512] = "";
    size_t known_len = 0;
    DBusMessageIter it, arr;
    if (!dbus_message_iter_init(reply, &it) || strcmp(dbus_message_get_signature(reply), "a(sa{sv})") != 0) {
        seterr(err, err_size,
               "application signer '%s' is unavailable: the smimestream agent answered "
               "ListSigners with '%s', expected a(sa{sv})",
               name, dbus_message_get_signature(reply));
        r = SMS_ERR_UNAVAILABLE;
        goto out;
    }
    dbus_message_iter_recurse(&it, &arr);
    for (; dbus_message_iter_get_arg_type(&arr) == DBUS_TYPE_STRUCT; dbus_message_iter_next(&arr)) {
        DBusMessageIter st, dict;
        dbus_message_iter_recurse(&arr, &st);
        dbus_message_iter_next(&st); /* the id */
        dbus_message_iter_recurse(&st, &dict);
        const char *kind = NULL, *sname = NULL, *bus = NULL, *path = NULL;
        for (; dbus_message_iter_get_arg_type(&dict) == DBUS_TYPE_DICT_ENTRY;
             dbus_message_iter_next(&dict)) {
            DBusMessageIter ent;
            const char *key = NULL;
            dbus_message_iter_recurse(&dict, &ent);
            dbus_message_iter_get_basic(&ent, &key);
            dbus_message_iter_next(&ent);
            if (strcmp(key, "kind") == 0)
                kind = variant_string(&ent, DBUS_TYPE_STRING);
            else if (strcmp(key, "name") == 0)
                sname = variant_string(&ent, DBUS_TYPE_STRING);
            else if (strcmp(key, "bus-name") == 0)
                bus = variant_string(&ent, DBUS_TYPE_STRING);
            else if (strcmp(key, "path") == 0)
                path = variant_string(&ent, DBUS_TYPE_OBJECT_PATH);
        }
        if (!kind || strcmp(kind, "dbus") != 0 || !sname)
            continue;
        if (strcmp(sname, name) != 0) {
            int n = snprintf(known + known_len, sizeof known - known_len, "%s'%s'",
                             known_len ? ", " : "", sname);
            if (n > 0 && (size_t)n < sizeof known - known_len)
                known_len += (size_t)n;
            continue;
        }
        if (!bus || !path) {
            seterr(err, err_size,
                   "application signer '%s': the smimestream agent lists it without bus-name "
                   "or path",
                   name);
            r = SMS_ERR_UNAVAILABLE;
            goto out;
        }
        if (!(*ret_bus = strdup(bus)) || !(*ret_path = strdup(path))) {
            free(*ret_bus);
            *ret_bus = NULL;
            r = SMS_ERR_NOMEM;
            goto out;
        }
        found = true;
        break;
    }
    if (!found) {
        seterr(err, err_size,
               "application signer '%s' is unavailable: no application registered a signer of "
               "that name with the smimestream agent (%s%s); the application must be running "
               "and call RegisterSigner",
               name, known_len ? "registered: " : "none are registered", known);
        r = SMS_ERR_UNAVAILABLE;
    }
out:
    dbus_message_unref(reply);
    return r;
}

/* ---- certificates -------------------------------------------------------------- */

typedef struct cert_list {
    uint8_t *der[MAX_CERTS];
    size_t len[MAX_CERTS];
    size_t n;
} cert_list;

static void cert_list_clear(cert_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->der[i]);
    memset(l, 0, sizeof *l);
}

static bool der_is_certificate(const uint8_t *der, size_t len)
{
    gnutls_x509_crt_t crt;
    if (gnutls_x509_crt_init(&crt) < 0)
        return false;
    gnutls_datum_t d = { (unsigned char *)der, (unsigned)len };
    bool ok = gnutls_x509_crt_import(crt, &d, GNUTLS_X509_FMT_DER) >= 0;
    gnutls_x509_crt_deinit(crt);
    return ok;
}

/* Properties.Get(Signer1, Certificates) -> DER certificates, leaf first. */
static int read_certificates(dbus_signer *s, cert_list *out, char *err, size_t err_size)
{
    const char *iface = SIGNER_IFACE, *prop = "Certificates";
    DBusMessage *m = dbus_message_new_method_call(s->bus_name, s->path, PROPS_IFACE, "Get");
    if (!m || !dbus_message_append_args(m, DBUS_TYPE_STRING, &iface, DBUS_TYPE_STRING, &prop,
                                        DBUS_TYPE_INVALID)) {
        if (m)
            dbus_message_unref(m);
        return SMS_ERR_NOMEM;
    }
    dbus_message_set_auto_start(m, FALSE);
    DBusError e;
    dbus_error_init(&e);
    DBusMessage *reply = call(s->conn, m, OPEN_TIMEOUT_MS, &e);
    dbus_message_unref(m);
    if (!reply) {
        int r;
        if (err_no_owner(&e) || err_is(&e, DBUS_ERROR_NO_REPLY) ||
            err_is(&e, DBUS_ERROR_DISCONNECTED) || err_is(&e, DBUS_ERROR_TIMEOUT)) {
            seterr(err, err_size, "%s is unavailable: reading its certificates failed: %s",
                   s->describe, e.message);
            r = SMS_ERR_UNAVAILABLE;
        } else {
            seterr(err, err_size,
                   "%s has no usable Certificates property (%s: %s); it must implement %s",
                   s->describe, e.name, e.message, SIGNER_IFACE);
            r = SMS_ERR_BAD_DATA;
        }
        dbus_error_free(&e);
        return r;
    }
    int r = SMS_OK;
    DBusMessageIter it, var, arr;
    if (strcmp(dbus_message_get_signature(reply), "v") != 0 ||
        !dbus_message_iter_init(reply, &it)) {
        r = SMS_ERR_BAD_DATA;
        goto bad;
    }
    dbus_message_iter_recurse(&it, &var);
    char *sig = dbus_message_iter_get_signature(&var);
    bool aay = sig && strcmp(sig, "aay") == 0;
    dbus_free(sig);
    if (!aay) {
        r = SMS_ERR_BAD_DATA;
        goto bad;
    }
    dbus_message_iter_recurse(&var, &arr);
    for (; dbus_message_iter_get_arg_type(&arr) == DBUS_TYPE_ARRAY; dbus_message_iter_next(&arr)) {
        if (out->n == MAX_CERTS) {
            seterr(err, err_size, "%s sends more than %d certificates", s->describe, MAX_CERTS);
            r = SMS_ERR_LIMIT;
            goto out;
        }
        DBusMessageIter bytes;
        const uint8_t *data = NULL;
        int len = 0;
        dbus_message_iter_recurse(&arr, &bytes);
        dbus_message_iter_get_fixed_array(&bytes, &data, &len);
        if (len <= 0 || !der_is_certificate(data, (size_t)len)) {
            seterr(err, err_size,
                   "%s: certificate %zu of its Certificates property is not a DER X.509 "
                   "certificate (%d bytes)",
                   s->describe, out->n, len);
            r = SMS_ERR_BAD_DATA;
            goto out;
        }
        if (!(out->der[out->n] = malloc((size_t)len))) {
            r = SMS_ERR_NOMEM;
            goto out;
        }
        memcpy(out->der[out->n], data, (size_t)len);
        out->len[out->n++] = (size_t)len;
    }
    if (out->n == 0) {
        seterr(err, err_size,
               "%s has an empty Certificates property: it must give its certificate (and "
               "chain), leaf first",
               s->describe);
        r = SMS_ERR_BAD_DATA;
    }
    goto out;
bad:
    seterr(err, err_size, "%s: its Certificates property is of type '%s', expected aay",
           s->describe, dbus_message_get_signature(reply));
out:
    dbus_message_unref(reply);
    return r;
}

/* --cert FILE replaces what the application sends. */
static int read_cert_file(const char *path, cert_list *out, char *err, size_t err_size)
{
    gnutls_datum_t data = { NULL, 0 };
    gnutls_x509_crt_t *crts = NULL;
    unsigned n = 0;
    int r = gnutls_load_file(path, &data);
    if (r < 0) {
        seterr(err, err_size, "cannot read '%s': %s", path, gnutls_strerror(r));
        return SMS_ERR_NOINPUT;
    }
    r = gnutls_x509_crt_list_import2(&crts, &n, &data, GNUTLS_X509_FMT_PEM, 0);
    if (r < 0)
        r = gnutls_x509_crt_list_import2(&crts, &n, &data, GNUTLS_X509_FMT_DER, 0);
    gnutls_free(data.data);
    if (r < 0 || n == 0) {
        seterr(err, err_size, "'%s' holds no readable certificate: %s", path,
               r < 0 ? gnutls_strerror(r) : "empty");
        return SMS_ERR_BAD_DATA;
    }
    r = SMS_OK;
    for (unsigned i = 0; i < n; i++) {
        gnutls_datum_t der = { NULL, 0 };
        if (r == SMS_OK && out->n == MAX_CERTS) {
            seterr(err, err_size, "'%s' holds more than %d certificates", path, MAX_CERTS);
            r = SMS_ERR_LIMIT;
        }
        if (r == SMS_OK && gnutls_x509_crt_export2(crts[i], GNUTLS_X509_FMT_DER, &der) < 0) {
            seterr(err, err_size, "cannot export certificate %u of '%s'", i, path);
            r = SMS_ERR_BAD_DATA;
        }
        if (r == SMS_OK) {
            if ((out->der[out->n] = malloc(der.size))) {
                memcpy(out->der[out->n], der.data, der.size);
                out->len[out->n++] = der.size;
            } else {
                r = SMS_ERR_NOMEM;
            }
        }
        gnutls_free(der.data);
        gnutls_x509_crt_deinit(crts[i]);
    }
    gnutls_free(crts);
    return r;
}

/* ---- the signer --------------------------------------------------------------- */

static void dbus_signer_destroy(void *impl)
{
    dbus_signer *s = impl;
    if (!s)
        return;
    close_bus(s->conn);
    pthread_mutex_destroy(&s->lock);
    free(s->name);
    free(s->bus_name);
    free(s->path);
    free(s->describe);
    free(s);
}

static const char *dbus_signer_describe(void *impl)
{
    return ((dbus_signer *)impl)->describe;
}

/* The algorithm string of Signer1.Sign, or NULL. */
static const char *algorithm_name(const sms_sign_request *req)
{
    const char *h;
    switch (req->digest) {
    case SMS_DIGEST_SHA256: h = "sha256"; break;
    case SMS_DIGEST_SHA384: h = "sha384"; break;
    case SMS_DIGEST_SHA512: h = "sha512"; break;
    case SMS_DIGEST_SHA224: h = "sha224"; break;
    default: h = NULL; break;
    }
    switch (req->scheme) {
    case SMS_SIG_ED25519: return "ed25519";
    case SMS_SIG_RSA_PKCS1:
        if (!h) return NULL;
        return !strcmp(h, "sha256") ? "rsa-pkcs1-sha256" : !strcmp(h, "sha384") ? "rsa-pkcs1-sha384"
             : !strcmp(h, "sha512") ? "rsa-pkcs1-sha512" : "rsa-pkcs1-sha224";
    case SMS_SIG_RSA_PSS:
        if (!h) return NULL;
        return !strcmp(h, "sha256") ? "rsa-pss-sha256" : !strcmp(h, "sha384") ? "rsa-pss-sha384"
             : !strcmp(h, "sha512") ? "rsa-pss-sha512" : NULL;
    case SMS_SIG_ECDSA:
        if (!h) return NULL;
        return !strcmp(h, "sha256") ? "ecdsa-sha256" : !strcmp(h, "sha384") ? "ecdsa-sha384"
             : !strcmp(h, "sha512") ? "ecdsa-sha512" : "ecdsa-sha224";
    }
    return NULL;
}

static long elapsed_ms(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0->tv_sec) * 1000L + (t1.tv_nsec - t0->tv_nsec) / 1000000L;
}

static int sign_locked(dbus_signer *s, const sms_sign_request *req, uint8_t *sig, size_t *sig_len,
                       char *err, size_t err_size)
{
    const char *alg = algorithm_name(req);
    if (!alg) {
        seterr(err, err_size, "%s: application signers do not support %s with this key type",
               s->describe, sms_digest_name(req->digest) ? sms_digest_name(req->digest) : "this digest");
        return SMS_ERR_UNSUPPORTED;
    }
    const uint8_t *data;
    size_t len;
    if (req->scheme == SMS_SIG_ED25519) {
        data = req->tbs;
        len = req->tbs_len;
    } else {
        data = req->tbs_digest;
        len = req->tbs_digest_len;
    }
    if (!data || len == 0 || len > 64 * 1024)
        return SMS_ERR_INVALID_ARG;
    if (!dbus_connection_get_is_connected(s->conn)) {
        seterr(err, err_size, "%s is unavailable: the connection to the D-Bus %s was lost",
               s->describe, bus_label());
        return SMS_ERR_UNAVAILABLE;
    }

    DBusMessage *m = dbus_message_new_method_call(s->bus_name, s->path, SIGNER_IFACE, "Sign");
    int ilen = (int)len;
    if (!m || !dbus_message_append_args(m, DBUS_TYPE_STRING, &alg, DBUS_TYPE_ARRAY, DBUS_TYPE_BYTE,
                                        &data, ilen, DBUS_TYPE_INVALID)) {
        if (m)
            dbus_message_unref(m);
        return SMS_ERR_NOMEM;
    }
    dbus_message_set_auto_start(m, FALSE);
    DBusError e;
    dbus_error_init(&e);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    DBusMessage *reply = call(s->conn, m, s->timeout_ms, &e);
    dbus_message_unref(m);
    if (!reply) {
        int r;
        long ms = elapsed_ms(&t0);
        bool gone = err_no_owner(&e) || err_is(&e, DBUS_ERROR_DISCONNECTED);
        if (!gone && err_is(&e, DBUS_ERROR_NO_REPLY) && dbus_connection_get_is_connected(s->conn)) {
            DBusError e2;
            dbus_error_init(&e2);
            gone = !dbus_bus_name_has_owner(s->conn, s->bus_name, &e2);
            drain(s->conn);
            dbus_error_free(&e2);
        }
        if (!dbus_connection_get_is_connected(s->conn)) {
            seterr(err, err_size, "%s is unavailable: the connection to the D-Bus %s was lost",
                   s->describe, bus_label());
            r = SMS_ERR_UNAVAILABLE;
        } else if (gone) {
            seterr(err, err_size, "%s left the D-Bus %s without signing", s->describe,
                   bus_label());
            r = SMS_ERR_UNAVAILABLE;
        } else if ((err_is(&e, DBUS_ERROR_NO_REPLY) || err_is(&e, DBUS_ERROR_TIMEOUT)) &&
                   ms >= s->timeout_ms - 100) {
            seterr(err, err_size,
                   "%s did not sign within %d s (set SMIMESTREAM_DBUS_SIGN_TIMEOUT for more "
                   "time)",
                   s->describe, s->timeout_ms / 1000);
            r = SMS_ERR_SIGNER;
        } else {
            seterr(err, err_size, "%s refused to sign (%s): %s", s->describe,
                   e.name ? e.name : "error", e.message ? e.message : "");
            r = SMS_ERR_SIGNER;
        }
        dbus_error_free(&e);
        return r;
    }
    int r = SMS_OK;
    const uint8_t *out = NULL;
    int out_len = 0;
    if (!dbus_message_get_args(reply, &e, DBUS_TYPE_ARRAY, DBUS_TYPE_BYTE, &out, &out_len,
                               DBUS_TYPE_INVALID)) {
        seterr(err, err_size, "%s answered Sign with '%s', expected a byte array (ay)",
               s->describe, dbus_message_get_signature(reply));
        dbus_error_free(&e);
        r = SMS_ERR_SIGNER;
    } else if (out_len <= 0 || (size_t)out_len > *sig_len) {
        seterr(err, err_size, "%s returned a signature of %d bytes", s->describe, out_len);
        r = SMS_ERR_SIGNER;
    } else {
        memcpy(sig, out, (size_t)out_len);
        *sig_len = (size_t)out_len;
    }
    dbus_message_unref(reply);
    return r;
}

static int dbus_signer_sign(void *impl, const sms_sign_request *req, uint8_t *sig, size_t *sig_len,
                            char *err, size_t err_size)
{
    dbus_signer *s = impl;
    pthread_mutex_lock(&s->lock);
    int r = sign_locked(s, req, sig, sig_len, err, err_size);
    pthread_mutex_unlock(&s->lock);
    return r;
}

static const sms_signer_class dbus_signer_class = {
    .struct_size = sizeof(sms_signer_class),
    .name = "dbus",
    .sign = dbus_signer_sign,
    .destroy = dbus_signer_destroy,
    .describe = dbus_signer_describe,
};

/* ---- open --------------------------------------------------------------------- */

static int dbus_open(const char *spec, const sms_signer_options *o, sms_signer **ret, char *err,
                     size_t err_size)
{
    const char *rest = strchr(spec, ':');
    if (!rest || !rest[1]) {
        seterr(err, err_size,
               "'%s': expected dbus:NAME (a signer registered with the smimestream agent) or "
               "dbus:BUSNAME/OBJECT/PATH",
               spec);
        return SMS_ERR_INVALID_ARG;
    }
    rest++;
    pin_module();
    if (!dbus_threads_init_default())
        return SMS_ERR_NOMEM;

    int r;
    cert_list certs = { 0 };
    dbus_signer *s = calloc(1, sizeof *s);
    if (!s)
        return SMS_ERR_NOMEM;
    pthread_mutex_init(&s->lock, NULL);
    s->timeout_ms = sign_timeout_ms();

    char *want_bus = NULL;
    const char *slash = strchr(rest, '/');
    if (slash) {
        /* dbus:BUSNAME/OBJECT/PATH */
        if (!(want_bus = strndup(rest, (size_t)(slash - rest))) || !(s->path = strdup(slash)) ||
            !(s->name = strdup(want_bus))) {
            r = SMS_ERR_NOMEM;
            goto out;
        }
        if (!dbus_validate_bus_name(want_bus, NULL) || !dbus_validate_path(s->path, NULL)) {
            seterr(err, err_size,
                   "'%s': '%s' is not a D-Bus bus name followed by an object path (e.g. "
                   "dbus:org.example.App/org/example/Signer or dbus::1.42/org/example/Signer)",
                   spec, rest);
            r = SMS_ERR_INVALID_ARG;
            goto out;
        }
    } else if (!(s->name = strdup(rest))) {
        r = SMS_ERR_NOMEM;
        goto out;
    }

    if (!(s->conn = connect_bus(err, err_size))) {
        r = SMS_ERR_UNAVAILABLE;
        goto out;
    }
    char who[300];
    if (!want_bus) {
        snprintf(who, sizeof who, "application signer '%s'", s->name);
        r = lookup_agent(s->conn, s->name, &want_bus, &s->path, err, err_size);
        if (r < 0)
            goto out;
    } else {
        snprintf(who, sizeof who, "application signer %s", rest);
    }
    r = resolve_owner(s->conn, want_bus, &s->bus_name, err, err_size, who);
    if (r < 0)
        goto out;
    size_t dlen = strlen(s->name) + strlen(s->bus_name) + strlen(s->path) + 64;
    if (!(s->describe = malloc(dlen))) {
        r = SMS_ERR_NOMEM;
        goto out;
    }
    if (strcmp(s->name, s->bus_name) == 0)
        snprintf(s->describe, dlen, "application signer %s%s", s->bus_name, s->path);
    else
        snprintf(s->describe, dlen, "application signer '%s' (%s%s)", s->name, s->bus_name,
                 s->path);

    if (o && o->cert_file)
        r = read_cert_file(o->cert_file, &certs, err, err_size);
    else
        r = read_certificates(s, &certs, err, err_size);
    if (r < 0)
        goto out;

    r = sms_signer_new(&dbus_signer_class, s, (const uint8_t *const *)certs.der, certs.len,
                       certs.n, ret);
    if (r < 0) {
        seterr(err, err_size, "%s: its certificate cannot be used: %s", s->describe,
               sms_strerror(r));
        goto out;
    }
    s = NULL; /* owned by the signer now */
out:
    cert_list_clear(&certs);
    free(want_bus);
    dbus_signer_destroy(s);
    return r;
}

static const char *const dbus_schemes[] = { "dbus", NULL };

__attribute__((visibility("default"))) const sms_plugin_descriptor sms_plugin_v1 = {
    .abi_version = SMS_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(sms_plugin_descriptor),
    .name = "dbus",
    .schemes = dbus_schemes,
    .open = dbus_open,
};
