/* smimestream-agent: the configuration file (GKeyFile), see
 * smimestream-agent(8) for every key. */
#ifndef SMS_AGENT_CONFIG_H
#define SMS_AGENT_CONFIG_H

#include <sys/types.h>

#include <glib.h>

typedef struct agent_smtp_profile {
    char *name;
    char *url;
    char *user;
    char *password_file;
    char *cacert;
    int timeout;          /* seconds; 0: the library's defaults */
    gboolean starttls;
    gboolean allow_partial_recipients;
} agent_smtp_profile;

typedef struct agent_signer_conf {
    char *name;
    char *spec;           /* key file, pkcs11: URI or dbus:NAME */
    char *cert;
    char *pin_file;
    char *digest;
    gboolean pss;
} agent_signer_conf;

typedef struct agent_config {
    char *path;           /* the file read, or NULL (defaults) */

    /* [agent] */
    guint max_jobs_per_sender;
    guint max_running_jobs;
    guint max_queued_jobs;
    guint max_attachments;
    gsize max_header_bytes;
    gsize max_body_bytes;
    guint submit_rate;            /* per sender per minute; 0: no limit */
    guint finished_job_linger;    /* seconds */
    guint pin_prompt_timeout;     /* seconds */
    guint sender_check_delay_ms;  /* see job.c: pipe end-of-file */
    gboolean allow_smtp_urls;
    GArray *allowed_uids;         /* uid_t; empty: see agent_config_uid_allowed */

    /* [pin-cache] */
    guint pin_idle_ttl;           /* seconds; 0 disables the cache */
    guint pin_max_ttl;

    /* [pkcs11] */
    char **module_allowlist;      /* canonical paths, NULL-terminated */

    GPtrArray *smtp;              /* agent_smtp_profile */
    GPtrArray *signers;           /* agent_signer_conf */
} agent_config;

#define AGENT_CONFIG_ERROR (agent_config_error_quark())
GQuark agent_config_error_quark(void);

/* Defaults only. */
agent_config *agent_config_new_defaults(void);
/* Read path; a missing file is fine (defaults) unless must_exist. */
agent_config *agent_config_load(const char *path, gboolean must_exist, GError **error);
void agent_config_free(agent_config *cfg);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(agent_config, agent_config_free)

const agent_smtp_profile *agent_config_smtp(const agent_config *cfg, const char *name);
const agent_signer_conf *agent_config_signer(const agent_config *cfg, const char *name);

/* Is uid served?  The agent's own uid and allowed-users; on the system
 * bus root as well. */
gboolean agent_config_uid_allowed(const agent_config *cfg, gboolean system_bus, uid_t self,
                                  uid_t caller);

/* A pkcs11: URI: its module-path=, if any, must be in the allowlist, and a
 * caller's URI may not name files (pin-source=).  Returns one of these,
 * with a reason when not OK. */
enum { AGENT_URI_OK = 0, AGENT_URI_INVALID, AGENT_URI_DENIED };
int agent_config_check_pkcs11_uri(const agent_config *cfg, const char *uri, gboolean from_caller,
                                  char **ret_reason);

#endif
