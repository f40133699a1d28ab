/* smimestream-agent: reading agent.conf.
 *
 * Unknown groups and keys are errors: a misspelt limit or allowlist must not
 * be silently ignored.  Relative paths are taken relative to the directory
 * of the configuration file.
 */
#include "agent-config.h"

#include <errno.h>
#include <limits.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/uri.h>

G_DEFINE_QUARK(smimestream-agent-config-error, agent_config_error)

enum { CONFIG_ERROR_INVALID = 1 };

static void smtp_free(gpointer p)
{
    agent_smtp_profile *s = p;
    g_free(s->name);
    g_free(s->url);
    g_free(s->user);
    g_free(s->password_file);
    g_free(s->cacert);
    g_free(s);
}

static void signer_free(gpointer p)
{
    agent_signer_conf *s = p;
    g_free(s->name);
    g_free(s->spec);
    g_free(s->cert);
    g_free(s->pin_file);
    g_free(s->digest);
    g_free(s);
}

agent_config *agent_config_new_defaults(void)
{
    agent_config *c = g_new0(agent_config, 1);
    c->max_jobs_per_sender = 8;
    c->max_running_jobs = 4;
    c->max_queued_jobs = 64;
    c->max_attachments = 32;
    c->max_header_bytes = 64 * 1024;
    c->max_body_bytes = 1024 * 1024;
    c->submit_rate = 60;
    c->finished_job_linger = 300;
    c->pin_prompt_timeout = 120;
    c->sender_check_delay_ms = 100;
    c->allow_smtp_urls = TRUE;
    c->allowed_uids = g_array_new(FALSE, FALSE, sizeof(uid_t));
    c->pin_idle_ttl = 300;
    c->pin_max_ttl = 3600;
    c->module_allowlist = g_new0(char *, 1);
    c->smtp = g_ptr_array_new_with_free_func(smtp_free);
    c->signers = g_ptr_array_new_with_free_func(signer_free);
    return c;
}

void agent_config_free(agent_config *c)
{
    if (!c)
        return;
    g_free(c->path);
    if (c->allowed_uids)
        g_array_unref(c->allowed_uids);
    g_strfreev(c->module_allowlist);
    if (c->smtp)
        g_ptr_array_unref(c->smtp);
    if (c->signers)
        g_ptr_array_unref(c->signers);
    g_free(c);
}

/* ---- typed getters with ranges ------------------------------------------- */

typedef struct reader {
    GKeyFile *kf;
    const char *file;
    char *dir;
    GError **error;
    gboolean failed;
} reader;

static void bad(reader *r, const char *group, const char *key, const char *fmt, ...)
    G_GNUC_PRINTF(4, 5);

static void bad(reader *r, const char *group, const char *key, const char *fmt, ...)
{
    if (r->failed)
        return;
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *what = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(r->error, AGENT_CONFIG_ERROR, CONFIG_ERROR_INVALID, "%s: [%s] %s%s%s", r->file,
                group, key ? key : "", key ? ": " : "", what);
    r->failed = TRUE;
}

static void get_uint(reader *r, const char *group, const char *key, guint64 min, guint64 max,
                     guint64 *out)
{
    if (r->failed || !g_key_file_has_key(r->kf, group, key, NULL))
        return;
    g_autofree char *s = g_key_file_get_value(r->kf, group, key, NULL);
    char *end = NULL;
    errno = 0;
    guint64 v = s && g_ascii_isdigit(s[0]) ? g_ascii_strtoull(g_strstrip(s), &end, 10) : 0;
    if (!s || !g_ascii_isdigit(s[0]) || errno || (end && *end) || v < min || v > max) {
        bad(r, group, key, "'%s' is not a number from %" G_GUINT64_FORMAT " to %" G_GUINT64_FORMAT,
            s ? s : "", min, max);
        return;
    }
    *out = v;
}

static void get_guint(reader *r, const char *group, const char *key, guint64 min, guint64 max,
                      guint *out)
{
    guint64 v = *out;
    get_uint(r, group, key, min, max, &v);
    *out = (guint)v;
}

static void get_bool(reader *r, const char *group, const char *key, gboolean *out)
{
    if (r->failed || !g_key_file_has_key(r->kf, group, key, NULL))
        return;
    GError *e = NULL;
    gboolean v = g_key_file_get_boolean(r->kf, group, key, &e);
    if (e) {
        bad(r, group, key, "expected true or false");
        g_error_free(e);
        return;
    }
    *out = v;
}

static char *get_string(reader *r, const char *group, const char *key)
{
    if (r->failed || !g_key_file_has_key(r->kf, group, key, NULL))
        return NULL;
    char *s = g_key_file_get_string(r->kf, group, key, NULL);
    if (!s || !*s) {
        bad(r, group, key, "empty value");
        g_free(s);
        return NULL;
    }
    return s;
}

static char *get_path(reader *r, const char *group, const char *key)
{
    char *s = get_string(r, group, key);
    if (!s || g_path_is_absolute(s))
        return s;
    char *abs = g_build_filename(r->dir, s, NULL);
    g_free(s);
    return abs;
}

static void check_keys(reader *r, const char *group, const char *const *known)
{
    g_auto(GStrv) keys = g_key_file_get_keys(r->kf, group, NULL, NULL);
    for (char **k = keys; k && *k && !r->failed; k++)
        if (!g_strv_contains(known, *k))
            bad(r, group, *k, "unknown key (see smimestream-agent(8))");
}

/* A canonical path when the file exists, else the path as given. */
static char *canonical(const char *path)
{
    char buf[PATH_MAX];
    return realpath(path, buf) ? g_strdup(buf) : g_strdup(path);
}

/* ---- groups ------------------------------------------------------------- */

static void read_agent(reader *r, agent_config *c)
{
    static const char *const known[] = {
        "max-jobs-per-sender", "max-running-jobs", "max-queued-jobs", "max-attachments",
        "max-header-bytes", "max-body-bytes", "submit-rate", "finished-job-linger-seconds",
        "pin-prompt-timeout", "sender-check-delay-ms", "allow-smtp-urls", "allowed-users", NULL,
    };
    const char *g = "agent";
    if (!g_key_file_has_group(r->kf, g))
        return;
    check_keys(r, g, known);
    get_guint(r, g, "max-jobs-per-sender", 1, 10000, &c->max_jobs_per_sender);
    get_guint(r, g, "max-running-jobs", 1, 1000, &c->max_running_jobs);
    get_guint(r, g, "max-queued-jobs", 1, 100000, &c->max_queued_jobs);
    get_guint(r, g, "max-attachments", 0, 1000, &c->max_attachments);
    guint64 v = c->max_header_bytes;
    get_uint(r, g, "max-header-bytes", 256, 16 * 1024 * 1024, &v);
    c->max_header_bytes = (gsize)v;
    v = c->max_body_bytes;
    get_uint(r, g, "max-body-bytes", 0, 64 * 1024 * 1024, &v);
    c->max_body_bytes = (gsize)v;
    get_guint(r, g, "submit-rate", 0, 1000000, &c->submit_rate);
    get_guint(r, g, "finished-job-linger-seconds", 0, 7 * 86400, &c->finished_job_linger);
    get_guint(r, g, "pin-prompt-timeout", 1, 3600, &c->pin_prompt_timeout);
    get_guint(r, g, "sender-check-delay-ms", 0, 10000, &c->sender_check_delay_ms);
    get_bool(r, g, "allow-smtp-urls", &c->allow_smtp_urls);
    if (!r->failed && g_key_file_has_key(r->kf, g, "allowed-users", NULL)) {
        g_auto(GStrv) users = g_key_file_get_string_list(r->kf, g, "allowed-users", NULL, NULL);
        for (char **u = users; u && *u && !r->failed; u++) {
            char *name = g_strstrip(*u);
            char *end = NULL;
            uid_t uid;
            guint64 n = g_ascii_strtoull(name, &end, 10);
            if (*name && end && !*end && n < (guint64)G_MAXUINT32) {
                uid = (uid_t)n;
            } else {
                struct passwd *pw = getpwnam(name);
                if (!pw) {
                    bad(r, g, "allowed-users", "no user '%s'", name);
                    break;
                }
                uid = pw->pw_uid;
            }
            g_array_append_val(c->allowed_uids, uid);
        }
    }
}

static void read_pin_cache(reader *r, agent_config *c)
{
    static const char *const known[] = { "idle-ttl", "max-ttl", NULL };
    const char *g = "pin-cache";
    if (!g_key_file_has_group(r->kf, g))
        return;
    check_keys(r, g, known);
    get_guint(r, g, "idle-ttl", 0, 7 * 86400, &c->pin_idle_ttl);
    get_guint(r, g, "max-ttl", 0, 7 * 86400, &c->pin_max_ttl);
}

static void read_pkcs11(reader *r, agent_config *c)
{
    static const char *const known[] = { "module-allowlist", NULL };
    const char *g = "pkcs11";
    if (!g_key_file_has_group(r->kf, g))
        return;
    check_keys(r, g, known);
    if (r->failed || !g_key_file_has_key(r->kf, g, "module-allowlist", NULL))
        return;
    g_auto(GStrv) list = g_key_file_get_string_list(r->kf, g, "module-allowlist", NULL, NULL);
    GPtrArray *out = g_ptr_array_new();
    for (char **p = list; p && *p; p++) {
        char *path = g_strstrip(*p);
        if (!*path)
            continue;
        if (!g_path_is_absolute(path)) {
            bad(r, g, "module-allowlist", "'%s' is not an absolute path", path);
            break;
        }
        g_ptr_array_add(out, canonical(path));
    }
    g_ptr_array_add(out, NULL);
    g_strfreev(c->module_allowlist);
    c->module_allowlist = (char **)g_ptr_array_free(out, FALSE);
}

static gboolean valid_name(const char *name)
{
    if (!*name || strlen(name) > 64)
        return FALSE;
    for (const char *p = name; *p; p++)
        if (!g_ascii_isalnum(*p) && *p != '-' && *p != '_' && *p != '.')
            return FALSE;
    return TRUE;
}

static void read_smtp(reader *r, agent_config *c, const char *group, const char *name)
{
    static const char *const known[] = {
        "url", "user", "password-file", "cacert", "timeout", "starttls",
        "allow-partial-recipients", NULL,
    };
    check_keys(r, group, known);
    agent_smtp_profile *s = g_new0(agent_smtp_profile, 1);
    s->name = g_strdup(name);
    g_ptr_array_add(c->smtp, s);
    s->url = get_string(r, group, "url");
    s->user = get_string(r, group, "user");
    s->password_file = get_path(r, group, "password-file");
    s->cacert = get_path(r, group, "cacert");
    guint t = 0;
    get_guint(r, group, "timeout", 0, 86400, &t);
    s->timeout = (int)t;
    get_bool(r, group, "starttls", &s->starttls);
    get_bool(r, group, "allow-partial-recipients", &s->allow_partial_recipients);
    if (r->failed)
        return;
    if (!s->url)
        bad(r, group, "url", "missing: give smtp://host[:port] or smtps://host[:port]");
    else if (!g_str_has_prefix(s->url, "smtp://") && !g_str_has_prefix(s->url, "smtps://"))
        bad(r, group, "url", "'%s' is not an smtp:// or smtps:// URL", s->url);
    else if (s->password_file && !s->user)
        bad(r, group, "password-file", "needs user");
}

static void read_signer(reader *r, agent_config *c, const char *group, const char *name)
{
    static const char *const known[] = { "spec", "cert", "pin-file", "digest", "pss", NULL };
    check_keys(r, group, known);
    agent_signer_conf *s = g_new0(agent_signer_conf, 1);
    s->name = g_strdup(name);
    g_ptr_array_add(c->signers, s);
    s->spec = get_string(r, group, "spec");
    s->cert = get_path(r, group, "cert");
    s->pin_file = get_path(r, group, "pin-file");
    s->digest = get_string(r, group, "digest");
    get_bool(r, group, "pss", &s->pss);
    if (r->failed)
        return;
    if (!s->spec) {
        bad(r, group, "spec", "missing: give a key file, a pkcs11: URI or dbus:NAME");
        return;
    }
    if (g_str_has_prefix(s->spec, "pkcs11:")) {
        g_autofree char *why = NULL;
        if (agent_config_check_pkcs11_uri(c, s->spec, FALSE, &why) != AGENT_URI_OK)
            bad(r, group, "spec", "%s", why);
    } else if (!g_str_has_prefix(s->spec, "dbus:") && !g_path_is_absolute(s->spec)) {
        char *abs = g_build_filename(r->dir, s->spec, NULL);
        g_free(s->spec);
        s->spec = abs;
    }
}

agent_config *agent_config_load(const char *path, gboolean must_exist, GError **error)
{
    g_autoptr(agent_config) c = agent_config_new_defaults();
    g_autoptr(GKeyFile) kf = g_key_file_new();
    GError *e = NULL;
    if (!g_key_file_load_from_file(kf, path, G_KEY_FILE_NONE, &e)) {
        if (!must_exist && g_error_matches(e, G_FILE_ERROR, G_FILE_ERROR_NOENT)) {
            g_error_free(e);
            return g_steal_pointer(&c);
        }
        g_set_error(error, AGENT_CONFIG_ERROR, CONFIG_ERROR_INVALID, "%s: %s", path, e->message);
        g_error_free(e);
        return NULL;
    }
    c->path = g_strdup(path);
    g_autofree char *abs = g_canonicalize_filename(path, NULL);
    reader r = { .kf = kf, .file = path, .dir = g_path_get_dirname(abs), .error = error };

    /* [pkcs11] first: signers are checked against its allowlist. */
    read_agent(&r, c);
    read_pin_cache(&r, c);
    read_pkcs11(&r, c);
    g_auto(GStrv) groups = g_key_file_get_groups(kf, NULL);
    for (char **g = groups; g && *g && !r.failed; g++) {
        const char *name;
        if (strcmp(*g, "agent") == 0 || strcmp(*g, "pin-cache") == 0 || strcmp(*g, "pkcs11") == 0)
            continue;
        if (g_str_has_prefix(*g, "smtp:") && valid_name(name = *g + 5)) {
            if (agent_config_smtp(c, name))
                bad(&r, *g, NULL, "defined twice");
            else
                read_smtp(&r, c, *g, name);
        } else if (g_str_has_prefix(*g, "signer:") && valid_name(name = *g + 7)) {
            if (agent_config_signer(c, name))
                bad(&r, *g, NULL, "defined twice");
            else
                read_signer(&r, c, *g, name);
        } else {
            bad(&r, *g, NULL,
                "unknown group (expected agent, pin-cache, pkcs11, smtp:NAME or signer:NAME, with "
                "NAME made of letters, digits, '-', '_' and '.')");
        }
    }
    if (!r.failed && c->pin_max_ttl && c->pin_idle_ttl > c->pin_max_ttl)
        c->pin_idle_ttl = c->pin_max_ttl;
    g_free(r.dir);
    if (r.failed)
        return NULL;
    return g_steal_pointer(&c);
}

const agent_smtp_profile *agent_config_smtp(const agent_config *c, const char *name)
{
    for (guint i = 0; i < c->smtp->len; i++) {
        agent_smtp_profile *s = g_ptr_array_index(c->smtp, i);
        if (strcmp(s->name, name) == 0)
            return s;
    }
    return NULL;
}

const agent_signer_conf *agent_config_signer(const agent_config *c, const char *name)
{
    for (guint i = 0; i < c->signers->len; i++) {
        agent_signer_conf *s = g_ptr_array_index(c->signers, i);
        if (strcmp(s->name, name) == 0)
            return s;
    }
    return NULL;
}

gboolean agent_config_uid_allowed(const agent_config *c, gboolean system_bus, uid_t self,
                                  uid_t caller)
{
    for (guint i = 0; i < c->allowed_uids->len; i++)
        if (g_array_index(c->allowed_uids, uid_t, i) == caller)
            return TRUE;
    /* The session bus: our own user.  The system bus: root and the
     * agent's own user, plus allowed-users (the bus policy may narrow it
     * further, never widen it). */
    return caller == self || (system_bus && caller == 0);
}

int agent_config_check_pkcs11_uri(const agent_config *c, const char *uri, gboolean from_caller,
                                  char **ret_reason)
{
    P11KitUri *u = p11_kit_uri_new();
    int r = p11_kit_uri_parse(uri, P11_KIT_URI_FOR_ANY, u);
    if (r != P11_KIT_URI_OK) {
        *ret_reason = g_strdup_printf("'%s' is not a valid pkcs11: URI (%s)", uri,
                                      p11_kit_uri_message(r));
        p11_kit_uri_free(u);
        return AGENT_URI_INVALID;
    }
    int ok = AGENT_URI_OK;
    const char *module = p11_kit_uri_get_module_path(u);
    if (from_caller && p11_kit_uri_get_pin_source(u)) {
        *ret_reason = g_strdup("pin-source= in a pkcs11: URI names a file, and the agent opens no "
                               "file a caller names; use pin-prompt, or a [signer:NAME] with "
                               "pin-file in the agent's configuration");
        ok = AGENT_URI_DENIED;
    } else if (module) {
        g_autofree char *canon = NULL;
        char buf[PATH_MAX];
        if (g_path_is_absolute(module) && realpath(module, buf))
            canon = g_strdup(buf);
        if (!canon || !g_strv_contains((const char *const *)c->module_allowlist, canon)) {
            *ret_reason = g_strdup_printf("the PKCS#11 module '%s' (module-path=) is not in the "
                                          "agent's [pkcs11] module-allowlist",
                                          module);
            ok = AGENT_URI_DENIED;
        }
    }
    p11_kit_uri_free(u);
    return ok;
}
