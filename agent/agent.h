/* smimestream-agent: shared state of the daemon (private). */
#ifndef SMS_AGENT_H
#define SMS_AGENT_H

#include <stdint.h>
#include <sys/types.h>

#include <dbus/dbus.h>
#include <glib.h>

#include <smimestream/smimestream.h>

#include "agent-config.h"
#include "agent-pincache.h"
#include "sms-dbus-glib.h"

#define AGENT_BUS_NAME "org.smimestream.Agent1"
#define AGENT_PATH "/org/smimestream/Agent1"
#define AGENT_JOBS_PATH AGENT_PATH "/jobs"
#define AGENT_IFACE "org.smimestream.Agent1"
#define JOB_IFACE "org.smimestream.Job1"
#define SIGNER_IFACE "org.smimestream.Signer1"
#define PROMPT_IFACE "org.smimestream.PinPrompt1"

/* D-Bus error names (documented in smimestream-agent(8)). */
#define AGENT_ERR "org.smimestream.Error."
#define ERR_INVALID_ARGS AGENT_ERR "InvalidArgs"
#define ERR_BAD_FD AGENT_ERR "BadFd"
#define ERR_ACCESS_DENIED AGENT_ERR "AccessDenied"
#define ERR_TOO_MANY_JOBS AGENT_ERR "TooManyJobs"
#define ERR_TOO_MANY_ATTACHMENTS AGENT_ERR "TooManyAttachments"
#define ERR_HEADER_TOO_LARGE AGENT_ERR "HeaderTooLarge"
#define ERR_BODY_TOO_LARGE AGENT_ERR "BodyTooLarge"
#define ERR_RATE_LIMITED AGENT_ERR "RateLimited"
#define ERR_SIGNER_UNAVAILABLE AGENT_ERR "SignerUnavailable"
#define ERR_SMTP_PROFILE AGENT_ERR "SmtpProfile"
#define ERR_NOT_FOUND AGENT_ERR "NotFound"
#define ERR_SHUTTING_DOWN AGENT_ERR "ShuttingDown"
#define ERR_NO_MEMORY AGENT_ERR "NoMemory"
/* Job failures (the Error property is "NAME: text"). */
#define ERR_PIN_REFUSED AGENT_ERR "PinRefused"
#define ERR_SIGNER_FAILED AGENT_ERR "SignerFailed"
#define ERR_ABORTED AGENT_ERR "Aborted"
#define ERR_IO AGENT_ERR "Io"
#define ERR_SMTP_REFUSED AGENT_ERR "SmtpRefused"
#define ERR_SMTP_TEMPFAIL AGENT_ERR "SmtpTempFail"
#define ERR_SMTP_AUTH AGENT_ERR "SmtpAuth"
#define ERR_SMTP_UNKNOWN AGENT_ERR "SmtpUnknown"
#define ERR_FAILED AGENT_ERR "Failed"
#define ERR_CANCELLED AGENT_ERR "Cancelled"

/* Generated from the dbus/ XML files by agent-embed.py. */
extern const char agent_xml_agent1[];
extern const char agent_xml_signer1[];
extern const char agent_xml_pinprompt1[];

typedef enum {
    JOB_QUEUED = 0,
    JOB_RUNNING,  /* signer pre-flight, connecting, envelope */
    JOB_SENDING,  /* the server accepted DATA: attachments stream */
    JOB_DONE,
    JOB_PARTIAL,
    JOB_FAILED,
    JOB_ABORTED,
} job_state;

const char *job_state_name(job_state s);

typedef struct agent agent;
typedef struct job job;

typedef struct job_att {
    job *job;
    int fd;               /* -1 once closed */
    gboolean is_pipe;     /* else a regular file, read with pread */
    gint eof;             /* atomic: end of file seen (and confirmed) */
    guint64 offset;
} job_att;

struct job {
    gatomicrefcount ref;
    agent *agent;
    guint64 id;
    char *path;
    char *owner;              /* unique bus name of the submitter */

    /* Set up at Submit (main thread), then used by the worker. */
    sms_message *msg;         /* guarded by lock once the worker runs */
    sms_smtp *smtp;
    char *signer_spec;
    char *cert_file;
    char *pin_file;
    char *pin_prompt_path;    /* on owner; NULL: a registered prompter */
    GPtrArray *atts;          /* job_att *, owned */

    GMutex lock;
    int abort_fd, cancel_fd;  /* eventfds, readable once requested */
    gint abort_req, cancel_req, owner_gone;
    guint64 bytes_read;       /* atomic */
    gint wstate;              /* atomic: what the worker reached */
    gint progress_pending;    /* atomic */

    /* Results, written by the worker (under lock) before it finishes. */
    job_state final_state;
    char *error;              /* "org.smimestream.Error.X: text" or NULL */
    char *message_id;
    char *detail;
    char *abort_reason;       /* why an abort was requested */

    /* PIN bookkeeping (worker only). */
    char *pending_pin;        /* locked; committed to the cache after login */
    char *pending_token;
    char *prompt_note;        /* why the last PIN prompt gave no PIN */

    /* Main thread only. */
    job_state state;
    gboolean started, finished, id_published;
    GThread *thread;
    gint64 last_progress;
    guint64 last_progress_bytes;
    guint progress_timer;
    guint linger_timer;
};

typedef struct sender_info sender_info;

typedef struct app_signer {
    char *id;
    char *name;
    char *bus_name;
    char *path;
} app_signer;

typedef struct prompter {
    char *bus_name;
    char *path;
} prompter;

struct agent {
    GMainLoop *loop;
    GMainContext *ctx;
    DBusConnection *conn;
    sms_dbus_glib *glue;
    gboolean system_bus;
    uid_t uid;
    agent_config *cfg;
    agent_pincache *pins;

    GHashTable *jobs;         /* id (guint64 *) -> job *, until the linger ends */
    guint64 next_job_id;
    GQueue queue;             /* queued jobs */
    guint running;
    guint active;             /* queued + running */
    GHashTable *senders;      /* unique name -> sender_info */
    GPtrArray *app_signers;   /* app_signer * */
    guint64 next_signer_id;
    GPtrArray *prompters;     /* prompter *; the last one registered is asked */
    GMutex reg_lock;          /* app_signers and prompters (workers read them) */

    gboolean quitting;
    int exit_code;
    guint pin_timer;
};

/* job.c */
job *job_new(agent *a, const char *owner);
job *job_ref(job *j);
void job_unref(job *j);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(job, job_unref)
/* Take a caller's attachment fd (already checked); the job closes it. */
job_att *job_add_att(job *j, int fd, gboolean is_pipe);
/* The sms_source that reads att (interruptible by Cancel and Abort). */
sms_source *job_att_source(job_att *att, int64_t size);
void job_start(job *j);                 /* main thread: run on a worker */
void job_cancel(job *j);
void job_abort(job *j, const char *reason);
/* The owner left the bus: abort unless every pipe reached end-of-file. */
void job_owner_left(job *j);
/* Finish a job that never ran (queued, then aborted), on the main thread. */
void job_finish_unstarted(job *j, job_state state, const char *error);
guint64 job_bytes_read(job *j);

/* smimestream-agent.c: called on the main thread by job.c. */
void agent_job_sync(job *j);            /* state, message id, progress */
void agent_job_progress(job *j);
void agent_job_finished(job *j);
/* Called on a worker: blocking, interruptible by the job's abort. */
int agent_ask_pin(job *j, const char *token, const char *hint, char *buf, size_t size);
/* 1: the owner is still on the bus, 0: it left, <0: could not tell. */
int agent_owner_present(job *j);

#endif
