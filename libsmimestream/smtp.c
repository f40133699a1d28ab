/* smimestream: the SMTP transport, on libcurl.
 *
 * libcurl runs the SMTP dialogue and pulls the message through the read
 * callback, one sms_message_read() per call, so each chunk leaves as soon
 * as it exists.  This file adds what libcurl does not give us:
 *
 *  - Atomic delivery.  Whenever the message fails (abort, source error,
 *    signer error) or the transfer is aborted, the read callback returns
 *    CURL_READFUNC_ABORT.  libcurl then closes the connection without
 *    sending the final CRLF.CRLF, and a conforming server discards what it
 *    got.  libcurl calls the read callback only once the previous buffer
 *    is written to the socket, so after the callback returned 0 the only
 *    thing left to write is the end-of-data dot: that is how we tell
 *    "nothing delivered" from "possibly delivered".
 *
 *  - Per-recipient replies and the dialogue phase.  libcurl keeps the
 *    replies to itself, so we read the protocol trace
 *    (CURLOPT_DEBUGFUNCTION with CURLOPT_VERBOSE): CURLINFO_HEADER_OUT is
 *    each command sent, CURLINFO_HEADER_IN each reply line.  libcurl sends
 *    one command and waits for its reply (no PIPELINING), so every reply
 *    belongs to the last command sent.  Nothing from the trace is kept
 *    except reply codes and texts: AUTH lines carry the credentials.
 *
 *  - No silent unauthenticated sending.  When a server does not offer AUTH,
 *    libcurl skips authentication without an error.  The pre-request
 *    callback runs after the connect phase (greeting, EHLO, STARTTLS,
 *    AUTH) and before MAIL FROM: it refuses to go on when credentials were
 *    given and the server did not accept them with 235.
 *
 * The recipient policy (all or nothing, like msmtp): libcurl is told to
 * try every RCPT (CURLOPT_MAIL_RCPT_ALLLOWFAILS) so that each one gets a
 * result; if any was refused, the first call of the read callback (after
 * the server's 354) aborts, so the server gets no end of data and delivers
 * nothing.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* libcurl is loaded on first use (dlopen), not at program start: signing
 * to a file never needs it, and libcurl's own dependencies (Kerberos, LDAP,
 * libssh2, OpenSSL's libcrypto) would otherwise add some 3.5 MiB to the
 * resident size of every `smimestream sign`.  The calls below go through a
 * table filled once; the #defines keep the code reading like plain libcurl.
 * Type checking macros are off because they would wrap our names. */
#define CURL_DISABLE_TYPECHECK 1
#include <curl/curl.h>
#include <dlfcn.h>

#include "sms-private.h"

#define DEFAULT_CONNECT_TIMEOUT 30L
#define DEFAULT_RESPONSE_TIMEOUT 60L
#define MAX_TIMEOUT (24L * 3600)
/* libcurl asks the read callback for at most this much.  One
 * sms_message_read() returns one staged chunk (about 88 KiB for the default
 * 64 KiB source chunk); room for larger chunks costs only memory. */
#define UPLOAD_BUFFER (512L * 1024)
#define REPLY_TEXT_MAX 512
#define SECRET_MAX 4096

typedef enum {
    CMD_NONE = 0, /* before any command: the greeting */
    CMD_EHLO,
    CMD_HELO,
    CMD_STARTTLS,
    CMD_AUTH,
    CMD_MAIL,
    CMD_RCPT,
    CMD_DATA,
    CMD_BODY,     /* 354 received: the next reply answers the final dot */
    CMD_QUIT,
    CMD_OTHER,
} command;

typedef struct reply {
    int code;                   /* 0: none received */
    char text[REPLY_TEXT_MAX + 8]; /* "550 5.1.1 <x>: no such user" */
} reply;

typedef struct rcpt {
    char *addr;                 /* bare addr-spec, as reported */
    char *envelope;             /* "<addr>" for CURLOPT_MAIL_RCPT */
    sms_rcpt_status status;
    int code;
    char *text;                 /* the reply without its code */
} rcpt;

typedef enum {
    STOP_NONE = 0,
    STOP_ABORT,        /* sms_smtp_abort() */
    STOP_MESSAGE,      /* sms_message_read() failed */
    STOP_RECIPIENTS,   /* a recipient was refused and partial delivery is off */
    STOP_NOT_AUTHED,   /* credentials given, but the server did not authenticate us */
    STOP_NO_TLS,       /* TLS required but not in place (libcurl should catch it first) */
    STOP_STALLED,      /* the server took no data for response_timeout seconds */
} stop_reason;

struct sms_smtp {
    /* configuration */
    char *url;
    char *where;           /* "host:port" for messages */
    bool smtps;
    char *user;
    char *password;
    char *cacert;
    long connect_timeout;
    long response_timeout;
    char **bcc;
    size_t n_bcc;
    unsigned flags;
    sms_smtp_progress_func progress;
    void *progress_data;

    /* requests from other threads or signal handlers (see sms_smtp_abort) */
    int abort_req;
    int abort_busy;
    sms_message *active;
    int sending;

    /* the current or last send */
    sms_message *msg;
    sms_smtp_phase phase;
    rcpt *rcpt;
    size_t n_rcpt;
    size_t rcpt_sent;
    command cmd;
    bool out_mid_line;     /* the last HEADER_OUT chunk did not end a line */
    char in_line[1024];    /* a reply line split over debug callbacks */
    size_t in_len;
    char cur_text[REPLY_TEXT_MAX]; /* the reply being received, lines joined */
    size_t cur_len;
    bool tls;              /* TLS is up: smtps://, or STARTTLS answered 220 */
    bool ehlo_auth;        /* the last EHLO reply offered AUTH */
    bool authenticated;    /* AUTH answered 235 */
    reply r_greet, r_starttls, r_auth, r_mail, r_data, r_final;
    bool read_started;     /* the server answered DATA with 354 */
    bool upload_done;      /* the read callback returned 0: all data written */
    bool closing;          /* the send failed: cut libcurl's QUIT exchange short */
    stop_reason stop;
    int msg_error;
    uint64_t bytes;        /* message bytes handed to libcurl */
    curl_off_t last_ulnow; /* bytes written to the socket, at last_activity */
    double last_activity;  /* when data last moved (monotonic seconds) */
    char last_reply[REPLY_TEXT_MAX];
    char errmsg[2048];
    char curl_err[CURL_ERROR_SIZE];
};

/* ---- libcurl initialisation -------------------------------------------- */

static struct {
    CURLcode (*global_init)(long);
    CURL *(*easy_init)(void);
    CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
    CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
    CURLcode (*easy_perform)(CURL *);
    void (*easy_cleanup)(CURL *);
    const char *(*easy_strerror)(CURLcode);
    void (*free)(void *);
    struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
    void (*slist_free_all)(struct curl_slist *);
    CURLU *(*url)(void);
    void (*url_cleanup)(CURLU *);
    CURLUcode (*url_get)(const CURLU *, CURLUPart, char **, unsigned int);
    CURLUcode (*url_set)(CURLU *, CURLUPart, const char *, unsigned int);
    const char *(*url_strerror)(CURLUcode);
    curl_version_info_data *(*version_info)(CURLversion);
} sms__curl;

#define curl_global_init (*sms__curl.global_init)
#define curl_easy_init (*sms__curl.easy_init)
#undef curl_easy_setopt
#undef curl_easy_getinfo
#define curl_easy_setopt (*sms__curl.easy_setopt)
#define curl_easy_getinfo (*sms__curl.easy_getinfo)
#define curl_easy_perform (*sms__curl.easy_perform)
#define curl_easy_cleanup (*sms__curl.easy_cleanup)
#define curl_easy_strerror (*sms__curl.easy_strerror)
#define curl_free (*sms__curl.free)
#define curl_slist_append (*sms__curl.slist_append)
#define curl_slist_free_all (*sms__curl.slist_free_all)
#define curl_url (*sms__curl.url)
#define curl_url_cleanup (*sms__curl.url_cleanup)
#define curl_url_get (*sms__curl.url_get)
#define curl_url_set (*sms__curl.url_set)
#define curl_url_strerror (*sms__curl.url_strerror)
#define curl_version_info (*sms__curl.version_info)

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;
static char curl_load_error[256];

static bool curl_load(void)
{
    /* The GnuTLS build first: that is the one we are built against. */
    static const char *const names[] = { "libcurl-gnutls.so.4", "libcurl.so.4" };
    void *h = NULL;
    for (size_t i = 0; !h && i < sizeof names / sizeof *names; i++)
        h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(curl_load_error, sizeof curl_load_error, "cannot load libcurl: %s", dlerror());
        return false;
    }
    struct {
        void **slot;
        const char *name;
    } syms[] = {
#define SYM(field, name) { (void **)&sms__curl.field, name }
        SYM(global_init, "curl_global_init"),     SYM(easy_init, "curl_easy_init"),
        SYM(easy_setopt, "curl_easy_setopt"),     SYM(easy_getinfo, "curl_easy_getinfo"),
        SYM(easy_perform, "curl_easy_perform"),   SYM(easy_cleanup, "curl_easy_cleanup"),
        SYM(easy_strerror, "curl_easy_strerror"), SYM(free, "curl_free"),
        SYM(slist_append, "curl_slist_append"),   SYM(slist_free_all, "curl_slist_free_all"),
        SYM(url, "curl_url"),                     SYM(url_cleanup, "curl_url_cleanup"),
        SYM(url_get, "curl_url_get"),             SYM(url_set, "curl_url_set"),
        SYM(url_strerror, "curl_url_strerror"),   SYM(version_info, "curl_version_info"),
#undef SYM
    };
    for (size_t i = 0; i < sizeof syms / sizeof *syms; i++) {
        *syms[i].slot = dlsym(h, syms[i].name);
        if (!*syms[i].slot) {
            snprintf(curl_load_error, sizeof curl_load_error,
                     "the libcurl found lacks %s (7.80 or later is needed)", syms[i].name);
            return false; /* h stays loaded: harmless, and never retried */
        }
    }
    return true;
}

static void curl_init(void)
{
    /* Never cleaned up: another part of the process may use libcurl too,
     * and curl_global_cleanup() is not safe while it does. */
    if (curl_load())
        curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
    else
        curl_init_rc = CURLE_FAILED_INIT;
}

/* Why libcurl is not usable, for messages (the loader may have failed, so
 * curl_easy_strerror is not always there). */
static const char *curl_init_error(void)
{
    return curl_load_error[0] ? curl_load_error : curl_easy_strerror(curl_init_rc);
}

/* ---- small helpers ------------------------------------------------------ */

static void set_err(sms_smtp *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void set_err(sms_smtp *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->errmsg, sizeof s->errmsg, fmt, ap);
    va_end(ap);
}

static int fail(sms_smtp *s, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(sms_smtp *s, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->errmsg, sizeof s->errmsg, fmt, ap);
    va_end(ap);
    return code;
}

static void free_secret(char **p)
{
    if (*p) {
        sms__wipe(*p, strlen(*p));
        free(*p);
        *p = NULL;
    }
}

/* Server text goes into messages shown on terminals: keep it printable. */
static size_t append_clean(char *dst, size_t len, size_t cap, const char *src, size_t n)
{
    for (size_t i = 0; i < n && len + 1 < cap; i++) {
        unsigned char c = (unsigned char)src[i];
        dst[len++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    dst[len] = '\0';
    return len;
}

static void set_phase(sms_smtp *s, sms_smtp_phase p)
{
    if (s->phase == p)
        return;
    s->phase = p;
    if (s->progress)
        s->progress(p, s->msg, s->progress_data);
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static bool need_tls(const sms_smtp *s)
{
    return s->user != NULL || (s->flags & SMS_SMTP_REQUIRE_STARTTLS) || s->smtps;
}

/* ---- lifecycle and configuration --------------------------------------- */

sms_smtp *sms_smtp_new(void)
{
    sms_smtp *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->connect_timeout = DEFAULT_CONNECT_TIMEOUT;
    s->response_timeout = DEFAULT_RESPONSE_TIMEOUT;
    return s;
}

static void results_clear(sms_smtp *s)
{
    for (size_t i = 0; i < s->n_rcpt; i++) {
        free(s->rcpt[i].addr);
        free(s->rcpt[i].envelope);
        free(s->rcpt[i].text);
    }
    free(s->rcpt);
    s->rcpt = NULL;
    s->n_rcpt = 0;
}

void sms_smtp_free(sms_smtp *s)
{
    if (!s)
        return;
    free(s->url);
    free(s->where);
    free_secret(&s->user);
    free_secret(&s->password);
    free(s->cacert);
    for (size_t i = 0; i < s->n_bcc; i++)
        free(s->bcc[i]);
    free(s->bcc);
    results_clear(s);
    sms__wipe(s->errmsg, sizeof s->errmsg);
    free(s);
}

#define CONFIG_GUARD(s)                                                                     \
    do {                                                                                    \
        sms_return_val_if_fail((s) != NULL, SMS_ERR_INVALID_ARG);                           \
        if (__atomic_load_n(&(s)->sending, __ATOMIC_ACQUIRE))                               \
            return SMS_ERR_STATE; /* errmsg belongs to the running send */                  \
    } while (0)

int sms_smtp_set_url(sms_smtp *s, const char *url)
{
    CONFIG_GUARD(s);
    sms_return_val_if_fail(url != NULL, SMS_ERR_INVALID_ARG);
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK)
        return fail(s, SMS_ERR_TRANSPORT, "libcurl could not be initialised: %s",
                    curl_init_error());
    if (strpbrk(url, "\r\n") || strlen(url) > 2048)
        return fail(s, SMS_ERR_INVALID_ARG, "the SMTP URL contains a line break or is too long");

    int r = SMS_ERR_INVALID_ARG;
    char *scheme = NULL, *host = NULL, *port = NULL, *user = NULL, *query = NULL;
    CURLU *u = curl_url();
    if (!u)
        return SMS_ERR_NOMEM;
    /* The URL is not repeated in these messages: it might hold a password. */
    CURLUcode uc = curl_url_set(u, CURLUPART_URL, url, 0);
    if (uc != CURLUE_OK) {
        fail(s, SMS_ERR_INVALID_ARG,
             "the SMTP URL is not valid (%s); use smtp://host[:port] or smtps://host[:port]",
             curl_url_strerror(uc));
        goto out;
    }
    if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK) {
        fail(s, SMS_ERR_INVALID_ARG,
             "the SMTP URL must not contain a user name or password; pass credentials "
             "separately (they are never put on a command line)");
        goto out;
    }
    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
    if (!scheme || (strcasecmp(scheme, "smtp") != 0 && strcasecmp(scheme, "smtps") != 0)) {
        fail(s, SMS_ERR_INVALID_ARG,
             "'%s:' is not an SMTP URL scheme; use smtp://host[:port] (STARTTLS) or "
             "smtps://host[:port] (TLS from the start)",
             scheme ? scheme : "");
        goto out;
    }
    if (curl_url_get(u, CURLUPART_QUERY, &query, 0) == CURLUE_OK) {
        fail(s, SMS_ERR_INVALID_ARG, "the SMTP URL must not have a query ('?...')");
        goto out;
    }
    if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !host || !host[0]) {
        fail(s, SMS_ERR_INVALID_ARG, "the SMTP URL names no host");
        goto out;
    }
    bool smtps = strcasecmp(scheme, "smtps") == 0;
    curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT);
    size_t wl = strlen(host) + (port ? strlen(port) : 0) + 2;
    char *where = malloc(wl);
    char *copy = strdup(url);
    if (!where || !copy) {
        free(where);
        free(copy);
        r = SMS_ERR_NOMEM;
        goto out;
    }
    snprintf(where, wl, "%s:%s", host, port ? port : (smtps ? "465" : "25"));
    free(s->url);
    free(s->where);
    s->url = copy;
    s->where = where;
    s->smtps = smtps;
    r = SMS_OK;
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(user);
    curl_free(query);
    curl_url_cleanup(u);
    return r;
}

int sms_smtp_set_auth(sms_smtp *s, const char *user, const char *password)
{
    CONFIG_GUARD(s);
    if (!user && !password) {
        free_secret(&s->user);
        free_secret(&s->password);
        return SMS_OK;
    }
    sms_return_val_if_fail(user != NULL && password != NULL, SMS_ERR_INVALID_ARG);
    if (!user[0])
        return fail(s, SMS_ERR_INVALID_ARG, "the SMTP user name is empty");
    if (strlen(user) > SECRET_MAX || strlen(password) > SECRET_MAX)
        return fail(s, SMS_ERR_LIMIT, "the SMTP user name or password is longer than %d bytes",
                    SECRET_MAX);
    char *u = strdup(user), *p = strdup(password);
    if (!u || !p) {
        free_secret(&u);
        free_secret(&p);
        return SMS_ERR_NOMEM;
    }
    free_secret(&s->user);
    free_secret(&s->password);
    s->user = u;
    s->password = p;
    return SMS_OK;
}

int sms_smtp_set_cacert(sms_smtp *s, const char *path)
{
    CONFIG_GUARD(s);
    if (!path) {
        free(s->cacert);
        s->cacert = NULL;
        return SMS_OK;
    }
    if (access(path, R_OK) != 0)
        return fail(s, SMS_ERR_NOINPUT, "cannot read the CA certificate file '%s': %s", path,
                    strerror(errno));
    char *c = strdup(path);
    if (!c)
        return SMS_ERR_NOMEM;
    free(s->cacert);
    s->cacert = c;
    return SMS_OK;
}

int sms_smtp_set_timeouts(sms_smtp *s, long connect_seconds, long response_seconds)
{
    CONFIG_GUARD(s);
    if (connect_seconds < 0 || response_seconds < 0 || connect_seconds > MAX_TIMEOUT ||
        response_seconds > MAX_TIMEOUT)
        return fail(s, SMS_ERR_INVALID_ARG, "timeouts must be between 0 (default) and %ld seconds",
                    MAX_TIMEOUT);
    s->connect_timeout = connect_seconds ? connect_seconds : DEFAULT_CONNECT_TIMEOUT;
    s->response_timeout = response_seconds ? response_seconds : DEFAULT_RESPONSE_TIMEOUT;
    return SMS_OK;
}

int sms_smtp_add_bcc(sms_smtp *s, const char *address)
{
    CONFIG_GUARD(s);
    sms_return_val_if_fail(address != NULL, SMS_ERR_INVALID_ARG);
    /* "addr", "<addr>" or "Name <addr>": only the address matters. */
    const char *a = address;
    size_t n = strlen(address);
    const char *lt = strrchr(address, '<');
    if (lt) {
        const char *gt = strchr(lt, '>');
        if (!gt || gt[1] != '\0')
            return fail(s, SMS_ERR_BAD_HEADER, "Bcc address '%s' is malformed", address);
        a = lt + 1;
        n = (size_t)(gt - a);
    }
    if (strpbrk(address, "\r\n") || !sms__addr_spec_valid(a, n))
        return fail(s, SMS_ERR_BAD_HEADER,
                    "Bcc address '%s' is not a valid mailbox (expected user@example.org)",
                    strpbrk(address, "\r\n") ? "(contains a line break)" : address);
    if (s->n_bcc >= SMS_MAX_RECIPIENTS)
        return fail(s, SMS_ERR_LIMIT, "more than %d Bcc recipients", SMS_MAX_RECIPIENTS);
    char *copy = strndup(a, n);
    char **nb = copy ? realloc(s->bcc, (s->n_bcc + 1) * sizeof *nb) : NULL;
    if (!nb) {
        free(copy);
        return SMS_ERR_NOMEM;
    }
    s->bcc = nb;
    s->bcc[s->n_bcc++] = copy;
    return SMS_OK;
}

int sms_smtp_set_flags(sms_smtp *s, unsigned flags)
{
    CONFIG_GUARD(s);
    if (flags & ~(unsigned)(SMS_SMTP_ALLOW_PARTIAL_RECIPIENTS | SMS_SMTP_REQUIRE_STARTTLS))
        return fail(s, SMS_ERR_INVALID_ARG, "unknown SMTP flags 0x%x", flags);
    s->flags = flags;
    return SMS_OK;
}

int sms_smtp_set_progress(sms_smtp *s, sms_smtp_progress_func func, void *user_data)
{
    CONFIG_GUARD(s);
    s->progress = func;
    s->progress_data = user_data;
    return SMS_OK;
}

/* ---- the protocol trace ------------------------------------------------- */

static command command_of(const char *p, size_t n)
{
    static const struct {
        const char *verb;
        command cmd;
    } verbs[] = {
        { "EHLO", CMD_EHLO }, { "HELO", CMD_HELO }, { "STARTTLS", CMD_STARTTLS },
        { "AUTH", CMD_AUTH }, { "MAIL", CMD_MAIL }, { "RCPT", CMD_RCPT },
        { "DATA", CMD_DATA }, { "QUIT", CMD_QUIT },
    };
    for (size_t i = 0; i < sizeof verbs / sizeof *verbs; i++) {
        size_t vl = strlen(verbs[i].verb);
        if (n >= vl && strncasecmp(p, verbs[i].verb, vl) == 0 &&
            (n == vl || p[vl] == ' ' || p[vl] == '\r' || p[vl] == '\n'))
            return verbs[i].cmd;
    }
    return CMD_OTHER;
}

static void on_command(sms_smtp *s, const char *p, size_t n)
{
    command c = command_of(p, n);
    /* Lines sent after "AUTH ..." until its final reply (user name and
     * password for LOGIN) belong to the exchange: they are not commands,
     * even if the base64 happens to read "DATA". */
    if (s->cmd == CMD_AUTH)
        return;
    s->cmd = c;
    s->cur_len = 0;
    s->cur_text[0] = '\0';
    switch (c) {
    case CMD_EHLO:
        s->ehlo_auth = false;
        break;
    case CMD_MAIL:
        set_phase(s, SMS_SMTP_PHASE_ENVELOPE);
        break;
    case CMD_RCPT:
        s->rcpt_sent++;
        break;
    default:
        break;
    }
}

static void set_reply(reply *r, int code, const char *text)
{
    r->code = code;
    snprintf(r->text, sizeof r->text, "%s", text);
}

/* A whole reply (its last line had "NNN "): file it under the command. */
static void on_reply(sms_smtp *s, int code)
{
    char full[REPLY_TEXT_MAX + 8];
    snprintf(full, sizeof full, "%d%s%s", code, s->cur_len ? " " : "", s->cur_text);
    switch (s->cmd) {
    case CMD_NONE:
        set_reply(&s->r_greet, code, full);
        break;
    case CMD_STARTTLS:
        set_reply(&s->r_starttls, code, full);
        if (code == 220)
            s->tls = true;
        break;
    case CMD_AUTH:
        /* 334 is a challenge within the exchange; 235 or an error ends it. */
        if (code != 334) {
            set_reply(&s->r_auth, code, full);
            if (code == 235)
                s->authenticated = true;
            s->cmd = CMD_OTHER;
        }
        break;
    case CMD_MAIL:
        set_reply(&s->r_mail, code, full);
        break;
    case CMD_RCPT:
        if (s->rcpt_sent >= 1 && s->rcpt_sent <= s->n_rcpt) {
            rcpt *r = &s->rcpt[s->rcpt_sent - 1];
            r->status = code / 100 == 2 ? SMS_RCPT_ACCEPTED : SMS_RCPT_REFUSED;
            r->code = code;
            free(r->text);
            r->text = strdup(s->cur_text);
        }
        break;
    case CMD_DATA:
        set_reply(&s->r_data, code, full);
        if (code == 354)
            s->cmd = CMD_BODY;
        break;
    case CMD_BODY:
        set_reply(&s->r_final, code, full);
        break;
    default:
        break;
    }
    s->cur_len = 0;
    s->cur_text[0] = '\0';
}

static void on_reply_line(sms_smtp *s, const char *p, size_t n)
{
    while (n && (p[n - 1] == '\r' || p[n - 1] == '\n'))
        n--;
    if (n < 3 || p[0] < '2' || p[0] > '5' || p[1] < '0' || p[1] > '9' || p[2] < '0' ||
        p[2] > '9')
        return;
    int code = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    bool last = n == 3 || p[3] == ' ';
    const char *text = n > 4 ? p + 4 : "";
    size_t tl = n > 4 ? n - 4 : 0;
    if ((s->cmd == CMD_EHLO) && code == 250 && tl >= 4 && strncasecmp(text, "AUTH", 4) == 0 &&
        (tl == 4 || text[4] == ' ' || text[4] == '='))
        s->ehlo_auth = true;
    if (s->cur_len && s->cur_len + 1 < sizeof s->cur_text)
        s->cur_text[s->cur_len++] = ' ';
    s->cur_len = append_clean(s->cur_text, s->cur_len, sizeof s->cur_text, text, tl);
    if (s->cmd != CMD_QUIT) /* "221 Bye" explains nothing */
        append_clean(s->last_reply, 0, sizeof s->last_reply, p, n);
    if (last)
        on_reply(s, code);
}

static void on_reply_data(sms_smtp *s, const char *p, size_t n)
{
    /* libcurl hands over one line per call; cope with pieces anyway. */
    while (n) {
        const char *nl = memchr(p, '\n', n);
        size_t take = nl ? (size_t)(nl - p) + 1 : n;
        if (s->in_len + take <= sizeof s->in_line) {
            memcpy(s->in_line + s->in_len, p, take);
            s->in_len += take;
        } else {
            /* keep the start of an overlong line */
            size_t room = sizeof s->in_line - s->in_len;
            memcpy(s->in_line + s->in_len, p, room);
            s->in_len += room;
        }
        if (nl) {
            on_reply_line(s, s->in_line, s->in_len);
            s->in_len = 0;
        }
        p += take;
        n -= take;
    }
}

static int debug_cb(CURL *c, curl_infotype type, char *data, size_t size, void *user_data)
{
    sms_smtp *s = user_data;
    (void)c;
    switch (type) {
    case CURLINFO_HEADER_OUT:
        if (!s->out_mid_line)
            on_command(s, data, size);
        s->out_mid_line = size == 0 || data[size - 1] != '\n';
        break;
    case CURLINFO_HEADER_IN:
        on_reply_data(s, data, size);
        break;
    default:
        break;
    }
    return 0;
}

/* ---- callbacks during the transfer -------------------------------------- */

/* After the connect phase (greeting, EHLO, STARTTLS, AUTH), before MAIL. */
static int prereq_cb(void *user_data, char *conn_primary_ip, char *conn_local_ip,
                     int conn_primary_port, int conn_local_port)
{
    sms_smtp *s = user_data;
    (void)conn_primary_ip, (void)conn_local_ip, (void)conn_primary_port, (void)conn_local_port;
    if (__atomic_load_n(&s->abort_req, __ATOMIC_SEQ_CST))
        s->stop = STOP_ABORT;
    else if (need_tls(s) && !s->tls)
        s->stop = STOP_NO_TLS;
    else if (s->user && !s->authenticated)
        s->stop = STOP_NOT_AUTHED;
    return s->stop ? CURL_PREREQFUNC_ABORT : CURL_PREREQFUNC_OK;
}

static bool any_refused(const sms_smtp *s)
{
    for (size_t i = 0; i < s->n_rcpt; i++)
        if (s->rcpt[i].status == SMS_RCPT_REFUSED)
            return true;
    return false;
}

static size_t read_cb(char *buf, size_t size, size_t nitems, void *user_data)
{
    sms_smtp *s = user_data;
    size_t cap = size * nitems;
    if (!s->read_started) {
        s->read_started = true;
        s->last_activity = now_seconds();
        set_phase(s, SMS_SMTP_PHASE_STREAMING);
        if (any_refused(s) && !(s->flags & SMS_SMTP_ALLOW_PARTIAL_RECIPIENTS)) {
            s->stop = STOP_RECIPIENTS;
            return CURL_READFUNC_ABORT;
        }
    }
    if (__atomic_load_n(&s->abort_req, __ATOMIC_SEQ_CST)) {
        s->stop = STOP_ABORT;
        return CURL_READFUNC_ABORT;
    }
    size_t n = 0;
    int r = sms_message_read(s->msg, buf, cap, &n);
    if (r < 0) {
        s->stop = STOP_MESSAGE;
        s->msg_error = r;
        return CURL_READFUNC_ABORT;
    }
    if (n == 0) {
        set_phase(s, SMS_SMTP_PHASE_WAITING);
        /* The progress callback may just have aborted: the final dot is not
         * sent yet, so that still means "nothing delivered". */
        if (__atomic_load_n(&s->abort_req, __ATOMIC_SEQ_CST)) {
            s->phase = SMS_SMTP_PHASE_STREAMING;
            s->stop = STOP_ABORT;
            return CURL_READFUNC_ABORT;
        }
        s->upload_done = true;
        return 0;
    }
    s->bytes += n;
    /* Time spent in sms_message_read() (a slow source) is not a stall. */
    s->last_activity = now_seconds();
    if (s->progress)
        s->progress(SMS_SMTP_PHASE_STREAMING, s->msg, s->progress_data);
    return n;
}

/* Called about once a second while libcurl waits, also when the server
 * stalls: this is how an abort drops a stuck connection quickly, and how a
 * server that stops reading is noticed after response_timeout seconds
 * (libcurl's own low-speed check averages over several seconds more). */
static int xferinfo_cb(void *user_data, curl_off_t dltotal, curl_off_t dlnow,
                       curl_off_t ultotal, curl_off_t ulnow)
{
    sms_smtp *s = user_data;
    (void)dltotal, (void)dlnow, (void)ultotal;
    if (s->closing)
        return 1;
    if (__atomic_load_n(&s->abort_req, __ATOMIC_SEQ_CST)) {
        if (!s->stop)
            s->stop = STOP_ABORT;
        return 1;
    }
    if (s->read_started && !s->upload_done) {
        double now = now_seconds();
        if (ulnow != s->last_ulnow) {
            s->last_ulnow = ulnow;
            s->last_activity = now;
        } else if (now - s->last_activity > (double)s->response_timeout) {
            s->stop = STOP_STALLED;
            return 1;
        }
    }
    return 0;
}

/* ---- sending ------------------------------------------------------------- */

static void reset_send_state(sms_smtp *s)
{
    results_clear(s);
    s->msg = NULL;
    s->phase = SMS_SMTP_PHASE_IDLE;
    s->rcpt_sent = 0;
    s->cmd = CMD_NONE;
    s->out_mid_line = false;
    s->in_len = 0;
    s->cur_len = 0;
    s->cur_text[0] = '\0';
    s->tls = false;
    s->ehlo_auth = false;
    s->authenticated = false;
    memset(&s->r_greet, 0, sizeof s->r_greet);
    s->r_starttls = s->r_auth = s->r_mail = s->r_data = s->r_final = s->r_greet;
    s->read_started = false;
    s->upload_done = false;
    s->closing = false;
    s->stop = STOP_NONE;
    s->msg_error = 0;
    s->bytes = 0;
    s->last_ulnow = 0;
    s->last_activity = 0;
    s->last_reply[0] = '\0';
    s->errmsg[0] = '\0';
    s->curl_err[0] = '\0';
}

/* After some failures (a timeout, an abort from the progress callback)
 * libcurl keeps the connection "intact", and curl_easy_cleanup() then sends
 * QUIT and waits for the reply, up to the response timeout, from a server
 * that may be stuck.  The closing flag makes the progress callback cut that
 * wait (it runs about once a second); when the server did not answer or
 * the user aborted, the socket libcurl still holds is shut down first, so
 * that nothing waits at all. */
static void drop_connection(sms_smtp *s, CURL *c, CURLcode rc)
{
    s->closing = true;
    if (rc != CURLE_OPERATION_TIMEDOUT && s->stop != STOP_ABORT && s->stop != STOP_STALLED)
        return;
    curl_socket_t fd = CURL_SOCKET_BAD;
    /* Only a connection still in libcurl's cache is returned: a live socket
     * that libcurl owns, never a stale descriptor number. */
    if (curl_easy_getinfo(c, CURLINFO_ACTIVESOCKET, &fd) == CURLE_OK && fd != CURL_SOCKET_BAD)
        shutdown(fd, SHUT_RDWR);
}

static int add_rcpt(sms_smtp *s, const char *addr, struct curl_slist **list)
{
    rcpt *r = &s->rcpt[s->n_rcpt];
    memset(r, 0, sizeof *r);
    size_t n = strlen(addr);
    r->addr = strdup(addr);
    r->envelope = malloc(n + 3);
    r->text = strdup("");
    if (!r->addr || !r->envelope || !r->text) {
        free(r->addr);
        free(r->envelope);
        free(r->text);
        return SMS_ERR_NOMEM;
    }
    snprintf(r->envelope, n + 3, "<%s>", addr);
    s->n_rcpt++;
    struct curl_slist *l = curl_slist_append(*list, r->envelope);
    if (!l)
        return SMS_ERR_NOMEM;
    *list = l;
    return SMS_OK;
}

static int build_recipients(sms_smtp *s, sms_message *msg, struct curl_slist **ret_list)
{
    size_t n_msg = sms_message_get_recipient_count(msg);
    s->rcpt = calloc(n_msg + s->n_bcc + 1, sizeof *s->rcpt);
    if (!s->rcpt)
        return SMS_ERR_NOMEM;
    for (size_t i = 0; i < n_msg + s->n_bcc; i++) {
        const char *a = i < n_msg ? sms_message_get_recipient(msg, i) : s->bcc[i - n_msg];
        int r = add_rcpt(s, a, ret_list);
        if (r < 0)
            return r;
    }
    return SMS_OK;
}

#define SETOPT(c, opt, val)                                                                 \
    do {                                                                                    \
        if ((rc = curl_easy_setopt((c), (opt), (val))) != CURLE_OK)                         \
            goto setopt_failed;                                                             \
    } while (0)

static int configure(sms_smtp *s, CURL *c, const char *from, struct curl_slist *rcpts)
{
    CURLcode rc;
    SETOPT(c, CURLOPT_URL, s->url);
#if LIBCURL_VERSION_NUM >= 0x075500
    SETOPT(c, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
#else
    SETOPT(c, CURLOPT_PROTOCOLS, (long)(CURLPROTO_SMTP | CURLPROTO_SMTPS));
#endif
    SETOPT(c, CURLOPT_DISALLOW_USERNAME_IN_URL, 1L);
    /* Environment proxies (all_proxy) are not for mail submission. */
    SETOPT(c, CURLOPT_PROXY, "");
    SETOPT(c, CURLOPT_NOSIGNAL, 1L);
    SETOPT(c, CURLOPT_ERRORBUFFER, s->curl_err);
    SETOPT(c, CURLOPT_TCP_KEEPALIVE, 1L);
    SETOPT(c, CURLOPT_CONNECTTIMEOUT, s->connect_timeout);
    SETOPT(c, CURLOPT_SERVER_RESPONSE_TIMEOUT, s->response_timeout);
    /* No CURLOPT_LOW_SPEED_*: libcurl would count time spent waiting for a
     * slow attachment source as a stall.  xferinfo_cb detects real stalls. */

    if (need_tls(s) && !s->smtps)
        SETOPT(c, CURLOPT_USE_SSL, (long)CURLUSESSL_ALL);
    SETOPT(c, CURLOPT_SSL_VERIFYPEER, 1L);
    SETOPT(c, CURLOPT_SSL_VERIFYHOST, 2L);
    if (s->cacert)
        SETOPT(c, CURLOPT_CAINFO, s->cacert);
    if (s->user) {
        SETOPT(c, CURLOPT_USERNAME, s->user);
        SETOPT(c, CURLOPT_PASSWORD, s->password);
    }

    SETOPT(c, CURLOPT_MAIL_FROM, from);
    SETOPT(c, CURLOPT_MAIL_RCPT, rcpts);
    SETOPT(c, CURLOPT_MAIL_RCPT_ALLLOWFAILS, 1L);
    SETOPT(c, CURLOPT_UPLOAD, 1L);
    SETOPT(c, CURLOPT_UPLOAD_BUFFERSIZE, UPLOAD_BUFFER);
    SETOPT(c, CURLOPT_READFUNCTION, read_cb);
    SETOPT(c, CURLOPT_READDATA, s);

    SETOPT(c, CURLOPT_VERBOSE, 1L);
    SETOPT(c, CURLOPT_DEBUGFUNCTION, debug_cb);
    SETOPT(c, CURLOPT_DEBUGDATA, s);
    SETOPT(c, CURLOPT_PREREQFUNCTION, prereq_cb);
    SETOPT(c, CURLOPT_PREREQDATA, s);
    SETOPT(c, CURLOPT_NOPROGRESS, 0L);
    SETOPT(c, CURLOPT_XFERINFOFUNCTION, xferinfo_cb);
    SETOPT(c, CURLOPT_XFERINFODATA, s);
    return SMS_OK;

setopt_failed:
    if (rc == CURLE_OUT_OF_MEMORY)
        return SMS_ERR_NOMEM;
    return fail(s, rc == CURLE_UNKNOWN_OPTION || rc == CURLE_NOT_BUILT_IN ? SMS_ERR_UNSUPPORTED
                                                                         : SMS_ERR_TRANSPORT,
                "libcurl refused an option (%s); it may be too old or built without SMTP or TLS",
                curl_easy_strerror(rc));
}

/* ---- turning the outcome into an error ------------------------------------ */

static int reply_error(int code)
{
    /* 530 authentication required, 534 mechanism too weak, 535 invalid
     * credentials, 538 encryption required for the mechanism. */
    if (code == 530 || code == 534 || code == 535 || code == 538)
        return SMS_ERR_SMTP_AUTH;
    return code >= 500 ? SMS_ERR_SMTP_REFUSED : SMS_ERR_SMTP_TEMPFAIL;
}

static const char *retry_hint(int err)
{
    switch (err) {
    case SMS_ERR_SMTP_TEMPFAIL: return "try again later";
    case SMS_ERR_SMTP_AUTH: return "check the user name, the password and the server's "
                                   "authentication requirements";
    default: return "sending it again as it is will not help";
    }
}

static const char *curl_detail(const sms_smtp *s, CURLcode rc)
{
    return s->curl_err[0] ? s->curl_err : curl_easy_strerror(rc);
}

/* RFC 3463 enhanced status "5.7.1" at the start of a reply text: class 7
 * is security or policy (relaying denied, authentication needed). */
static bool is_policy_refusal(const char *text)
{
    return (text[0] == '4' || text[0] == '5') && text[1] == '.' && text[2] == '7' &&
           text[3] == '.';
}

static void list_refused(const sms_smtp *s, sms__buf *b, size_t *ret_n, bool *ret_permanent,
                         bool *ret_policy)
{
    size_t n = 0;
    bool permanent = false, policy = false;
    for (size_t i = 0; i < s->n_rcpt; i++) {
        const rcpt *r = &s->rcpt[i];
        if (r->status != SMS_RCPT_REFUSED)
            continue;
        const char *text = r->text ? r->text : "";
        sms__buf_printf(b, "%s<%s> (%d%s%s)", n ? ", " : "", r->addr, r->code,
                        text[0] ? " " : "", text);
        if (r->code >= 500)
            permanent = true;
        if (is_policy_refusal(text))
            policy = true;
        n++;
    }
    sms__buf_append(b, "", 1);
    *ret_n = n;
    *ret_permanent = permanent;
    *ret_policy = policy;
}

static int fail_recipients(sms_smtp *s, bool nothing_accepted)
{
    sms__buf b;
    sms__buf_init(&b);
    size_t n;
    bool permanent, policy;
    list_refused(s, &b, &n, &permanent, &policy);
    const char *list = b.failed ? "(out of memory)" : (const char *)b.data;
    int err = permanent ? SMS_ERR_SMTP_REFUSED : SMS_ERR_SMTP_TEMPFAIL;
    if (nothing_accepted)
        fail(s, err, "the server %s every recipient: %s; nothing was sent; %s",
             permanent ? "refused" : "temporarily refused", list,
             !permanent ? "try again later"
             : policy   ? (s->user ? "the server's policy does not let this account send to "
                                     "them"
                                   : "the server's policy refused them: it may want "
                                     "authentication (a user name and password)")
                        : "check the addresses");
    else
        fail(s, err,
             "the server refused %zu of %zu recipients: %s; nothing was sent, to nobody "
             "(correct or remove those recipients, or allow delivery to the accepted ones "
             "only)",
             n, s->n_rcpt, list);
    sms__buf_free(&b);
    return err;
}

static int classify_connect(sms_smtp *s, CURLcode rc)
{
    const char *d = curl_detail(s, rc);
    switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
        return fail(s, SMS_ERR_SMTP_TEMPFAIL,
                    "cannot resolve the mail server's name in %s (%s); nothing was sent; "
                    "check the URL and the network",
                    s->url, d);
    case CURLE_COULDNT_CONNECT:
        return fail(s, SMS_ERR_SMTP_TEMPFAIL,
                    "cannot connect to the mail server %s (%s); nothing was sent; check the URL "
                    "and that the server is running, or try again later",
                    s->where, d);
    case CURLE_OPERATION_TIMEDOUT:
        return fail(s, SMS_ERR_SMTP_TEMPFAIL,
                    "the mail server %s did not answer in time (%s); nothing was sent; try "
                    "again later",
                    s->where, d);
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_CRL_BADFILE:
        return fail(s, SMS_ERR_SMTP_AUTH,
                    "the mail server %s could not be authenticated: its TLS certificate was "
                    "not accepted (%s); nothing was sent; give the right CA certificate "
                    "(--cacert) or use the server's proper name",
                    s->where, d);
    case CURLE_USE_SSL_FAILED:
        return fail(s, SMS_ERR_SMTP_AUTH,
                    "the mail server %s does not offer STARTTLS (%s%s%s); nothing was sent: "
                    "TLS is required %s; use smtps:// if the server has TLS on another port",
                    s->where, d, s->r_starttls.code ? "; " : "", s->r_starttls.text,
                    s->user ? "to send credentials" : "by the configuration");
    case CURLE_SSL_CONNECT_ERROR:
        return fail(s, SMS_ERR_SMTP_TEMPFAIL,
                    "the TLS handshake with %s failed (%s); nothing was sent; check that the "
                    "URL scheme matches the port (smtps:// for implicit TLS, usually 465)",
                    s->where, d);
    case CURLE_LOGIN_DENIED:
        if (s->r_auth.code)
            break;
        return fail(s, SMS_ERR_SMTP_AUTH,
                    "authentication with %s failed (%s); nothing was sent; %s", s->where, d,
                    retry_hint(SMS_ERR_SMTP_AUTH));
    case CURLE_OUT_OF_MEMORY:
        return fail(s, SMS_ERR_NOMEM, "out of memory in libcurl");
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_NOT_BUILT_IN:
        return fail(s, SMS_ERR_UNSUPPORTED, "libcurl cannot do this (%s)", d);
    default:
        break;
    }
    return 0;
}

/* Map the end of a failed transfer to an error, walking the dialogue from
 * its end back to its start: the first step that went wrong explains it. */
static int classify(sms_smtp *s, CURLcode rc)
{
    const char *d = curl_detail(s, rc);
    int err;

    switch (s->stop) {
    case STOP_MESSAGE: {
        const char *why = sms_message_last_error(s->msg);
        return fail(s, s->msg_error,
                    "%s%s; the connection was dropped before the end of the message, so the "
                    "server delivers nothing",
                    s->msg_error == SMS_ERR_ABORTED ? "the message was aborted"
                                                    : "the message could not be completed: ",
                    s->msg_error == SMS_ERR_ABORTED ? "" : (why[0] ? why
                                                                    : sms_strerror(s->msg_error)));
    }
    case STOP_RECIPIENTS:
        return fail_recipients(s, false);
    case STOP_ABORT:
        /* After the read callback returned 0, libcurl writes the final dot
         * and waits; we cannot see whether the dot went out before the
         * abort was noticed. */
        if (s->upload_done)
            return fail(s, SMS_ERR_SMTP_UNKNOWN,
                        "aborted while waiting for the server's reply to the end of the "
                        "message (last reply: \"%s\"): the whole message had been sent, so it "
                        "was possibly delivered; check before sending it again",
                        s->last_reply);
        return fail(s, SMS_ERR_ABORTED,
                    "sending was aborted; %s, so the server delivers nothing",
                    s->read_started ? "the connection was dropped before the end of the message"
                                    : "the message was not sent");
    case STOP_NOT_AUTHED:
        if (!s->ehlo_auth)
            return fail(s, SMS_ERR_SMTP_AUTH,
                        "the mail server %s does not offer authentication (no AUTH in its EHLO "
                        "reply), but credentials were given; refusing to send without "
                        "authenticating; nothing was sent (check the server's port: "
                        "submission is usually 587 with STARTTLS or 465 with smtps://)",
                        s->where);
        return fail(s, SMS_ERR_SMTP_AUTH,
                    "the mail server %s did not authenticate us (last reply: \"%s\"); nothing "
                    "was sent",
                    s->where, s->r_auth.code ? s->r_auth.text : s->last_reply);
    case STOP_NO_TLS:
        return fail(s, SMS_ERR_SMTP_AUTH,
                    "TLS is required but was not set up with %s; nothing was sent", s->where);
    case STOP_STALLED:
        rc = CURLE_OPERATION_TIMEDOUT;
        break;
    case STOP_NONE:
        break;
    }

    if (s->upload_done) {
        if (s->r_final.code >= 400) {
            err = reply_error(s->r_final.code);
            return fail(s, err,
                        "the server %s the message after receiving it: \"%s\"; it was not "
                        "delivered; %s",
                        err == SMS_ERR_SMTP_TEMPFAIL ? "temporarily refused" : "refused",
                        s->r_final.text, retry_hint(err));
        }
        if (rc == CURLE_SEND_ERROR)
            return fail(s, SMS_ERR_SMTP_TEMPFAIL,
                        "the connection to %s was lost before the end of the message could be "
                        "sent (%s); the server delivers nothing; try again later",
                        s->where, d);
        /* libcurl's own words here are unhelpful ("response reading failed
         * (errno: 115)" for a plain close). */
        return fail(s, SMS_ERR_SMTP_UNKNOWN,
                    "the whole message was sent to %s, but %s before the server confirmed it "
                    "(last reply: \"%s\"): it was possibly delivered; check with the "
                    "recipients or the server's log before sending it again",
                    s->where,
                    rc == CURLE_OPERATION_TIMEDOUT ? "no reply came in time"
                    : strstr(d, "reset")           ? "the connection was reset"
                                                   : "the server closed the connection",
                    s->last_reply);
    }
    if (s->read_started) {
        char sent[32];
        snprintf(sent, sizeof sent, "%llu", (unsigned long long)s->bytes);
        if (rc == CURLE_OPERATION_TIMEDOUT)
            return fail(s, SMS_ERR_SMTP_TEMPFAIL,
                        "the mail server %s stopped taking data for %ld seconds after about %s "
                        "bytes of the message; the connection was dropped before the end of the "
                        "message, so the server delivers nothing; try again later",
                        s->where, s->response_timeout, sent);
        return fail(s, SMS_ERR_SMTP_TEMPFAIL,
                    "the connection to %s was lost while sending the message, after about %s "
                    "bytes (%s); the end of the message was not sent, so the server delivers "
                    "nothing; try again later",
                    s->where, sent, d);
    }
    if (s->r_data.code && s->r_data.code != 354) {
        err = reply_error(s->r_data.code);
        return fail(s, err, "the server refused the DATA command: \"%s\"; nothing was sent; %s",
                    s->r_data.text, retry_hint(err));
    }
    if (s->rcpt_sent && any_refused(s)) {
        bool accepted = false;
        for (size_t i = 0; i < s->n_rcpt; i++)
            accepted |= s->rcpt[i].status == SMS_RCPT_ACCEPTED;
        if (!accepted && s->rcpt_sent >= s->n_rcpt)
            return fail_recipients(s, true);
    }
    if (s->r_mail.code >= 400) {
        err = reply_error(s->r_mail.code);
        return fail(s, err,
                    "the server refused the sender <%s>: \"%s\"; nothing was sent; %s",
                    sms_message_get_sender(s->msg), s->r_mail.text,
                    err == SMS_ERR_SMTP_REFUSED
                        ? "check the From address and whether the server accepts mail from it "
                          "(relaying may need authentication)"
                    : err == SMS_ERR_SMTP_AUTH && !s->user
                        ? "the server wants authentication: give a user name and password"
                        : retry_hint(err));
    }
    if (s->r_auth.code >= 400) {
        err = s->r_auth.code == 454 ? SMS_ERR_SMTP_TEMPFAIL : SMS_ERR_SMTP_AUTH;
        return fail(s, err, "authentication as '%s' with %s failed: \"%s\"; nothing was sent; %s",
                    s->user ? s->user : "", s->where, s->r_auth.text, retry_hint(err));
    }
    if (s->r_greet.code >= 400) {
        err = s->r_greet.code >= 500 ? SMS_ERR_SMTP_REFUSED : SMS_ERR_SMTP_TEMPFAIL;
        return fail(s, err, "the mail server %s refused the connection: \"%s\"; nothing was sent; %s",
                    s->where, s->r_greet.text, retry_hint(err));
    }
    if ((err = classify_connect(s, rc)) != 0)
        return err;
    return fail(s, SMS_ERR_SMTP_TEMPFAIL,
                "sending to %s failed before the message was sent (%s%s%s%s); nothing was "
                "delivered; try again later",
                s->where, d, s->last_reply[0] ? "; last reply: \"" : "", s->last_reply,
                s->last_reply[0] ? "\"" : "");
}

static void note_success(sms_smtp *s)
{
    size_t n_refused;
    bool permanent, policy;
    sms__buf b;
    sms__buf_init(&b);
    list_refused(s, &b, &n_refused, &permanent, &policy);
    if (n_refused)
        set_err(s, "delivered to %zu of %zu recipients; refused: %s", s->n_rcpt - n_refused,
                s->n_rcpt, b.failed ? "(out of memory)" : (const char *)b.data);
    else
        s->errmsg[0] = '\0';
    sms__buf_free(&b);
}

int sms_smtp_send(sms_smtp *s, sms_message *msg)
{
    sms_return_val_if_fail(s != NULL, SMS_ERR_INVALID_ARG);
    sms_return_val_if_fail(msg != NULL, SMS_ERR_INVALID_ARG);
    int expected = 0;
    if (!__atomic_compare_exchange_n(&s->sending, &expected, 1, false, __ATOMIC_SEQ_CST,
                                     __ATOMIC_SEQ_CST))
        return SMS_ERR_STATE; /* already sending: errmsg belongs to that send */

    reset_send_state(s);
    s->msg = msg;
    s->tls = s->smtps;
    int r;
    CURL *c = NULL;
    struct curl_slist *rcpts = NULL;
    char *from = NULL;

    if (!s->url) {
        r = fail(s, SMS_ERR_INVALID_ARG,
                 "no mail server: set an smtp://host:port or smtps://host:port URL");
        goto out;
    }
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK) {
        r = fail(s, SMS_ERR_TRANSPORT, "libcurl could not be initialised: %s",
                 curl_init_error());
        goto out;
    }
    if (need_tls(s) && !(curl_version_info(CURLVERSION_NOW)->features & CURL_VERSION_SSL)) {
        r = fail(s, SMS_ERR_UNSUPPORTED, "TLS is needed but libcurl was built without it");
        goto out;
    }
    /* Everything that can fail before the first byte fails here, before
     * connecting: signer, digest policy, sender, recipients. */
    r = sms_message_prepare(msg);
    if (r < 0) {
        fail(s, r, "the message cannot be sent: %s", sms_message_last_error(msg));
        goto out;
    }
    sms_progress p = { .struct_size = sizeof p };
    if (sms_message_get_progress(msg, &p) == SMS_OK && p.output_bytes > 0) {
        r = fail(s, SMS_ERR_STATE,
                 "the message has already been read from (%llu bytes); a message can be sent "
                 "only once, from its start",
                 (unsigned long long)p.output_bytes);
        goto out;
    }
    size_t fl = strlen(sms_message_get_sender(msg));
    from = malloc(fl + 3);
    if (!from) {
        r = SMS_ERR_NOMEM;
        goto out;
    }
    snprintf(from, fl + 3, "<%s>", sms_message_get_sender(msg));
    r = build_recipients(s, msg, &rcpts);
    if (r < 0)
        goto out;

    c = curl_easy_init();
    if (!c) {
        r = fail(s, SMS_ERR_NOMEM, "cannot create a libcurl handle");
        goto out;
    }
    r = configure(s, c, from, rcpts);
    if (r < 0)
        goto out;

    __atomic_store_n(&s->active, msg, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&s->abort_req, __ATOMIC_SEQ_CST)) {
        /* Aborted before we even connected. */
        sms_message_abort(msg);
        r = fail(s, SMS_ERR_ABORTED, "sending was aborted; nothing was sent");
    } else {
        set_phase(s, SMS_SMTP_PHASE_CONNECTING);
        CURLcode rc = curl_easy_perform(c);
        /* The server's 2xx to the final dot is what counts: a later hiccup
         * (QUIT, an abort that came too late) does not undo the delivery. */
        if (s->upload_done && s->r_final.code / 100 == 2) {
            r = SMS_OK;
            note_success(s);
            set_phase(s, SMS_SMTP_PHASE_DONE);
        } else if (rc == CURLE_OK) {
            /* Cannot happen with a conforming libcurl; never claim success
             * without the server's 2xx to the final dot. */
            r = fail(s, SMS_ERR_SMTP_UNKNOWN,
                     "the transfer ended without the server's confirmation (last reply: "
                     "\"%s\"): the message was possibly delivered",
                     s->last_reply);
        } else {
            r = classify(s, rc);
        }
        if (r < 0)
            drop_connection(s, c, rc);
    }
    /* Once the message has been read from, it cannot be sent again: leave it
     * failed rather than half-read.  Before that (a failure in the envelope)
     * it is untouched and may be sent again, e.g. to another server. */
    if (r < 0 && s->read_started)
        sms_message_abort(msg);

out:
    /* Unpublish the message, then wait for an sms_smtp_abort() that may be
     * looking at it (from another thread) to finish.  The abort request is
     * used up by this send. */
    __atomic_store_n(&s->active, NULL, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&s->abort_busy, __ATOMIC_SEQ_CST))
        sched_yield();
    __atomic_store_n(&s->abort_req, 0, __ATOMIC_SEQ_CST);
    if (c)
        curl_easy_cleanup(c);
    curl_slist_free_all(rcpts);
    free(from);
    if (r < 0 && r != SMS_ERR_NOMEM && !s->errmsg[0])
        set_err(s, "%s", sms_strerror(r));
    if (r == SMS_ERR_NOMEM && !s->errmsg[0])
        set_err(s, "out of memory");
    s->msg = NULL; /* the caller may free it now */
    __atomic_store_n(&s->sending, 0, __ATOMIC_SEQ_CST);
    return r;
}

void sms_smtp_abort(sms_smtp *s)
{
    if (!s)
        return;
    /* Only atomic operations: callable from a signal handler.  abort_busy
     * keeps sms_smtp_send() from returning (and the caller from freeing the
     * message) while we look at the active message. */
    __atomic_store_n(&s->abort_req, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&s->abort_busy, 1, __ATOMIC_SEQ_CST);
    sms_message *m = __atomic_load_n(&s->active, __ATOMIC_SEQ_CST);
    if (m)
        sms_message_abort(m);
    __atomic_sub_fetch(&s->abort_busy, 1, __ATOMIC_SEQ_CST);
}

/* ---- results ----------------------------------------------------------- */

sms_smtp_phase sms_smtp_get_phase(const sms_smtp *s)
{
    return s ? s->phase : SMS_SMTP_PHASE_IDLE;
}

size_t sms_smtp_get_recipient_count(const sms_smtp *s)
{
    return s ? s->n_rcpt : 0;
}

int sms_smtp_get_recipient(const sms_smtp *s, size_t i, sms_rcpt_result *ret_result)
{
    sms_return_val_if_fail(s != NULL && ret_result != NULL, SMS_ERR_INVALID_ARG);
    sms_return_val_if_fail(ret_result->struct_size >= sizeof *ret_result, SMS_ERR_INVALID_ARG);
    sms_return_val_if_fail(i < s->n_rcpt, SMS_ERR_INVALID_ARG);
    const rcpt *r = &s->rcpt[i];
    size_t struct_size = ret_result->struct_size;
    memset(ret_result, 0, sizeof *ret_result);
    ret_result->struct_size = struct_size;
    ret_result->address = r->addr;
    ret_result->status = r->status;
    ret_result->reply_code = r->code;
    ret_result->reply_text = r->text ? r->text : "";
    return SMS_OK;
}

const char *sms_smtp_last_reply(const sms_smtp *s)
{
    return s ? s->last_reply : "";
}

const char *sms_smtp_last_error(const sms_smtp *s)
{
    return s ? s->errmsg : "";
}
