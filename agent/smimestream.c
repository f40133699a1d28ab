/* smimestream: the command-line front end.
 *
 *   smimestream sign [MESSAGE] [SIGNING] [-o FILE]
 *
 * Builds an sms_message from the options, opens the signer (asking for a
 * passphrase on the terminal when needed), then pulls the message through
 * sms_message_read() into the output.  SIGINT cancels (the partial message is
 * still signed), a second SIGINT aborts.  Exit codes follow sysexits.h.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <termios.h>
#include <unistd.h>

#include <glib.h>

#include <smimestream/smimestream.h>

#include "progress.h"
#ifdef SMS_WITH_SUBMIT
#include "submit.h"
#endif

/* ---- options ----------------------------------------------------------- */

typedef struct attach_opt {
    char *path;
    char *name;
    char *type;
} attach_opt;

typedef struct opts {
    char *from;
    char **to;
    char **cc;
    char *subject;
    char *body;
    char *body_file;
    char **headers;
    GArray *attach; /* attach_opt */
    char *signer;
    char *cert;
    char *digest;
    gboolean pss;
    gboolean allow_weak;
    char *pin_file;
    char *output;
    gboolean progress;
    gint64 buffer_size;
    /* send */
    char *smtp;
    gboolean starttls;
    char *user;
    char *password_file;
    char *cacert;
    gint64 timeout;
    char **bcc;
    gboolean allow_partial_rcpt;
} opts;

static opts O;

static gboolean on_attach(const char *name, const char *value, gpointer data, GError **error)
{
    attach_opt a = { g_strdup(value), NULL, NULL };
    g_array_append_val(O.attach, a);
    return TRUE;
}

static gboolean on_attach_meta(const char *name, const char *value, gpointer data,
                               GError **error)
{
    if (O.attach->len == 0) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "%s applies to the --attach before it; put it after an --attach", name);
        return FALSE;
    }
    attach_opt *a = &g_array_index(O.attach, attach_opt, O.attach->len - 1);
    char **slot = strcmp(name, "--attach-name") == 0 ? &a->name : &a->type;
    if (*slot) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "%s given twice for --attach %s", name, a->path);
        return FALSE;
    }
    *slot = g_strdup(value);
    return TRUE;
}

static const GOptionEntry message_entries[] = {
    { "from", 0, 0, G_OPTION_ARG_STRING, &O.from, "Sender address", "ADDR" },
    { "to", 0, 0, G_OPTION_ARG_STRING_ARRAY, &O.to, "Recipient (repeatable)", "ADDR" },
    { "cc", 0, 0, G_OPTION_ARG_STRING_ARRAY, &O.cc, "Copy recipient (repeatable)", "ADDR" },
    { "subject", 0, 0, G_OPTION_ARG_STRING, &O.subject, "Subject (UTF-8)", "TEXT" },
    { "body", 0, 0, G_OPTION_ARG_STRING, &O.body, "Text body (UTF-8)", "TEXT" },
    { "body-file", 0, 0, G_OPTION_ARG_FILENAME, &O.body_file, "Read the text body from FILE", "FILE" },
    { "header", 0, 0, G_OPTION_ARG_STRING_ARRAY, &O.headers, "Extra header (repeatable)", "'NAME: VALUE'" },
    { "attach", 0, G_OPTION_FLAG_FILENAME, G_OPTION_ARG_CALLBACK, on_attach,
      "Attach a file, pipe, FIFO or device; - is standard input (repeatable; read once)", "PATH" },
    { "attach-name", 0, 0, G_OPTION_ARG_CALLBACK, on_attach_meta,
      "File name for the --attach before it", "NAME" },
    { "attach-type", 0, 0, G_OPTION_ARG_CALLBACK, on_attach_meta,
      "Content type for the --attach before it (default: guessed from the name)", "TYPE" },
    { NULL }
};

static const GOptionEntry signing_entries[] = {
    { "signer", 0, 0, G_OPTION_ARG_STRING, &O.signer,
      "Key file (PEM, PKCS#8, PKCS#12), pkcs11: URI, or dbus:NAME", "SPEC" },
    { "cert", 0, 0, G_OPTION_ARG_FILENAME, &O.cert, "Signer certificate and chain (PEM)", "FILE" },
    { "digest", 0, 0, G_OPTION_ARG_STRING, &O.digest, "sha256, sha384, sha512, sha224 (default: sha256; sha384 for P-384, sha512 for P-521 and Ed25519)", "ALG" },
    { "pss", 0, 0, G_OPTION_ARG_NONE, &O.pss, "Sign RSA keys with RSA-PSS", NULL },
    { "allow-weak-digest", 0, 0, G_OPTION_ARG_NONE, &O.allow_weak, "Permit sha1 and md5", NULL },
    { "pin-file", 0, 0, G_OPTION_ARG_FILENAME, &O.pin_file,
      "Read the PIN or passphrase from FILE (first line)", "FILE" },
    { NULL }
};

static const GOptionEntry output_entries[] = {
    { "output", 'o', 0, G_OPTION_ARG_FILENAME, &O.output,
      "Write the message to FILE (default: standard output)", "FILE" },
    { "progress", 0, 0, G_OPTION_ARG_NONE, &O.progress, "Show progress on standard error", NULL },
    { "buffer-size", 0, 0, G_OPTION_ARG_INT64, &O.buffer_size,
      "Bytes read from an attachment at a time (default 65536)", "BYTES" },
    { NULL }
};

static const GOptionEntry transport_entries[] = {
    { "smtp", 0, 0, G_OPTION_ARG_STRING, &O.smtp, "Mail server: smtp://host[:port] or smtps://host[:port]", "URL" },
    { "starttls", 0, 0, G_OPTION_ARG_NONE, &O.starttls, "Require STARTTLS on smtp:// (implied by --user)", NULL },
    { "user", 0, 0, G_OPTION_ARG_STRING, &O.user, "Log in to the server as NAME (needs TLS)", "NAME" },
    { "password-file", 0, 0, G_OPTION_ARG_FILENAME, &O.password_file,
      "Read the server password from FILE (default: ask on the terminal)", "FILE" },
    { "cacert", 0, 0, G_OPTION_ARG_FILENAME, &O.cacert, "Trust the CA certificates in FILE for the server", "FILE" },
    { "timeout", 0, 0, G_OPTION_ARG_INT64, &O.timeout, "Connect and response timeout (default 30 and 60)", "SECONDS" },
    { "bcc", 0, 0, G_OPTION_ARG_STRING_ARRAY, &O.bcc, "Blind copy: envelope only (repeatable)", "ADDR" },
    { "allow-partial-recipients", 0, 0, G_OPTION_ARG_NONE, &O.allow_partial_rcpt,
      "Send to the accepted recipients even if some are refused", NULL },
    { NULL }
};

/* ---- errors ------------------------------------------------------------ */

static const char *prog = "smimestream";

static int die(int code, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static int die(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

static int die_msg(sms_message *m, int r, const char *what)
{
    const char *detail = sms_message_last_error(m);
    return die(sms_error_exit_code(r), "%s: %s", what, detail && *detail ? detail : sms_strerror(r));
}

/* ---- signals ----------------------------------------------------------- */

static sms_message *volatile sig_msg;
static sms_smtp *volatile sig_smtp;
static volatile sig_atomic_t sig_count;
static volatile sig_atomic_t sig_abort;  /* an abort-class signal came */

/* First SIGINT: cancel (the partial message is still signed and sent).
 * A second SIGINT, SIGTERM or SIGHUP: abort (nothing is delivered). */
static void on_sigint(int sig)
{
    sms_message *m = sig_msg;
    sms_smtp *t = sig_smtp;
    if (sig == SIGINT && sig_count++ == 0) {
        if (m)
            sms_message_cancel(m);
        return;
    }
    sig_abort = 1;
    if (m)
        sms_message_abort(m);
    if (t)
        sms_smtp_abort(t);
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    /* No SA_RESTART: a read blocked on a quiet pipe must return so that the
     * cancel takes effect at once. */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* ---- passphrase prompt ------------------------------------------------- */

static int tty_prompt(const char *what, const char *hint, char *buf, size_t size, void *ud)
{
    int fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return SMS_ERR_CANCELLED; /* no terminal: nobody to ask */
    struct termios old, quiet;
    bool have_termios = tcgetattr(fd, &old) == 0;
    if (have_termios) {
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
        quiet.c_lflag |= ICANON;
        tcsetattr(fd, TCSAFLUSH, &quiet);
    }
    char *prompt = g_strdup_printf("%s%sPIN or passphrase for %s: ", hint && *hint ? hint : "",
                                   hint && *hint ? "\n" : "", what);
    if (write(fd, prompt, strlen(prompt)) < 0) {
        /* fall through: reading still works */
    }
    g_free(prompt);
    size_t len = 0;
    int r = SMS_OK;
    for (;;) {
        char c;
        ssize_t n = read(fd, &c, 1);
        if (n < 0 && errno == EINTR) {
            r = SMS_ERR_CANCELLED;
            break;
        }
        if (n <= 0) {
            r = len ? SMS_OK : SMS_ERR_CANCELLED;
            break;
        }
        if (c == '\n' || c == '\r')
            break;
        if (len + 1 < size)
            buf[len++] = c;
        c = 0;
    }
    buf[len] = '\0';
    if (have_termios)
        tcsetattr(fd, TCSAFLUSH, &old);
    if (write(fd, "\n", 1) < 0) {
        /* nothing to do */
    }
    close(fd);
    if (r < 0)
        sms_wipe(buf, size);
    return r;
}

static bool have_tty(void)
{
    int fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return false;
    close(fd);
    return true;
}

/* ---- building the message ---------------------------------------------- */

static int build_message(sms_message **ret_msg)
{
    sms_message *m = sms_message_new();
    char err[512] = "";
    int r;
    if (!m)
        return die(sms_error_exit_code(SMS_ERR_NOMEM), "out of memory");
    *ret_msg = m;

    if (!O.from)
        return die(EX_USAGE, "no sender: give --from ADDR");
    if (!O.to && !O.cc)
        return die(EX_USAGE, "no recipients: give at least one --to ADDR or --cc ADDR");
    if (!O.signer)
        return die(EX_USAGE, "no signer: give --signer KEYFILE or --signer 'pkcs11:...'");
    if (O.body && O.body_file)
        return die(EX_USAGE, "give either --body or --body-file, not both");

    if ((r = sms_message_set_from(m, O.from)) < 0)
        return die_msg(m, r, "--from");
    for (char **p = O.to; p && *p; p++)
        if ((r = sms_message_add_to(m, *p)) < 0)
            return die_msg(m, r, "--to");
    for (char **p = O.cc; p && *p; p++)
        if ((r = sms_message_add_cc(m, *p)) < 0)
            return die_msg(m, r, "--cc");
    if (O.subject && (r = sms_message_set_subject(m, O.subject)) < 0)
        return die_msg(m, r, "--subject");
    for (char **p = O.headers; p && *p; p++) {
        char *colon = strchr(*p, ':');
        if (!colon)
            return die(EX_USAGE, "--header '%s': expected 'Name: value'", *p);
        g_autofree char *name = g_strndup(*p, (gsize)(colon - *p));
        if ((r = sms_message_add_header(m, g_strstrip(name), g_strchug(colon + 1))) < 0)
            return die_msg(m, r, "--header");
    }

    if (O.body_file) {
        g_autofree char *text = NULL;
        gsize len = 0;
        g_autoptr(GError) e = NULL;
        if (!g_file_get_contents(O.body_file, &text, &len, &e))
            return die(EX_NOINPUT, "--body-file: %s", e->message);
        if ((r = sms_message_set_body(m, text, len)) < 0)
            return die_msg(m, r, "--body-file");
    } else if (O.body) {
        if ((r = sms_message_set_body(m, O.body, strlen(O.body))) < 0)
            return die_msg(m, r, "--body");
    }

    if (O.digest) {
        sms_digest d = sms_digest_from_string(O.digest);
        if (d == SMS_DIGEST_NONE)
            return die(EX_USAGE, "--digest '%s' is not known; use sha256, sha384, sha512 or sha224",
                       O.digest);
        if ((r = sms_message_set_digest(m, d)) < 0)
            return die_msg(m, r, "--digest");
    }
    unsigned flags = (O.pss ? SMS_MESSAGE_RSA_PSS : 0) | (O.allow_weak ? SMS_MESSAGE_ALLOW_WEAK_DIGEST : 0);
    if ((r = sms_message_set_flags(m, flags)) < 0)
        return die_msg(m, r, "options");
    if (O.buffer_size && (r = sms_message_set_chunk_size(m, (size_t)O.buffer_size)) < 0)
        return die_msg(m, r, "--buffer-size");

    /* Open every attachment before the signer, so a missing file fails
     * before anyone is asked for a PIN.  FIFOs open without blocking. */
    int stdin_uses = 0;
    for (guint i = 0; i < O.attach->len; i++) {
        attach_opt *a = &g_array_index(O.attach, attach_opt, i);
        if (strcmp(a->path, "-") == 0 && ++stdin_uses > 1)
            return die(EX_USAGE, "--attach - (standard input) can be given only once");
        sms_source *src = NULL;
        if ((r = sms_source_new_path(a->path, &src, err, sizeof err)) < 0)
            return die(sms_error_exit_code(r), "--attach: %s", err);
        const char *name = a->name;
        if (!name && strcmp(a->path, "-") == 0)
            name = "stdin.bin";
        if ((r = sms_message_add_attachment(m, src, name, a->type)) < 0)
            return die_msg(m, r, "--attach");
    }

    sms_signer_options so = {
        .struct_size = sizeof so,
        .cert_file = O.cert,
        .pin_file = O.pin_file,
        /* Without a terminal there is nobody to ask: the plugin then says
         * how to give the PIN instead. */
        .pin_func = have_tty() ? tty_prompt : NULL,
    };
    sms_signer *signer = NULL;
    if ((r = sms_signer_open(O.signer, &so, &signer, err, sizeof err)) < 0)
        return die(sms_error_exit_code(r), "--signer: %s", err);
    r = sms_message_set_signer(m, signer);
    sms_signer_unref(signer);
    if (r < 0)
        return die_msg(m, r, "--signer");
    if ((r = sms_message_prepare(m)) < 0)
        return die_msg(m, r, "cannot sign");
    return EX_OK;
}

/* ---- output ------------------------------------------------------------ */

typedef struct output {
    int fd;
    char *final_path;
    char *tmp_path;
} output;

static int output_open(output *out)
{
    out->fd = STDOUT_FILENO;
    if (!O.output || strcmp(O.output, "-") == 0)
        return EX_OK;
    struct stat st;
    if (stat(O.output, &st) == 0 && !S_ISREG(st.st_mode)) {
        /* A device or FIFO (e.g. /dev/null): write to it directly. */
        out->fd = open(O.output, O_WRONLY | O_CLOEXEC | O_NOCTTY);
        if (out->fd < 0)
            return die(EX_CANTCREAT, "-o %s: %s", O.output, g_strerror(errno));
        out->final_path = g_strdup(O.output);
        return EX_OK;
    }
    /* Write next to the target and rename at the end, so that a failed or
     * aborted run never leaves a file that looks like a finished message. */
    out->final_path = g_strdup(O.output);
    out->tmp_path = g_strdup_printf("%s.partial-XXXXXX", O.output);
    out->fd = g_mkstemp_full(out->tmp_path, O_WRONLY | O_CLOEXEC, 0644);
    if (out->fd < 0) {
        int e = errno;
        g_clear_pointer(&out->tmp_path, g_free);
        g_clear_pointer(&out->final_path, g_free);
        return die(EX_CANTCREAT, "-o %s: cannot create a file there: %s", O.output, g_strerror(e));
    }
    return EX_OK;
}

static int output_write(output *out, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(out->fd, p, n);
        /* A reader that stopped reading must not make us deaf to abort. */
        if (w < 0 && errno == EINTR && !sig_abort)
            continue;
        if (w < 0)
            return -errno;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int output_finish(output *out, bool ok)
{
    int code = EX_OK;
    if (out->tmp_path) {
        if (ok && (fsync(out->fd) < 0 || close(out->fd) < 0))
            code = die(EX_IOERR, "-o %s: %s", out->final_path, g_strerror(errno));
        else if (!ok)
            close(out->fd);
        if (ok && code == EX_OK && rename(out->tmp_path, out->final_path) < 0)
            code = die(EX_CANTCREAT, "-o %s: %s", out->final_path, g_strerror(errno));
        if (!ok || code != EX_OK)
            unlink(out->tmp_path);
    } else if (out->final_path) {
        close(out->fd);
    }
    g_free(out->tmp_path);
    g_free(out->final_path);
    return code;
}

/* ---- sign -------------------------------------------------------------- */

static int run_sign(void)
{
    sms_message *m = NULL;
    /* Before any prompt: Ctrl-C at a passphrase prompt must end the prompt
     * (and restore the terminal), not kill us with echo off. */
    install_signals();
    int code = build_message(&m);
    if (code != EX_OK) {
        sms_message_free(m);
        return code;
    }
    output out = { -1, NULL, NULL };
    if ((code = output_open(&out)) != EX_OK) {
        sms_message_free(m);
        return code;
    }

    sig_msg = m;
    if (sig_abort)
        sms_message_abort(m);
    sms_progress_line *pl = O.progress ? sms_progress_line_new("sign") : NULL;

    static char buf[256 * 1024];
    int r;
    size_t n;
    while ((r = sms_message_read(m, buf, sizeof buf, &n)) == SMS_OK && n > 0) {
        int w = output_write(&out, buf, n);
        if (w < 0) {
            sms_message_abort(m);
            sms_progress_line_free(pl);
            sig_msg = NULL;
            output_finish(&out, false);
            sms_message_free(m);
            return die(EX_IOERR, "writing the message failed: %s", g_strerror(-w));
        }
        if (pl)
            sms_progress_line_update(pl, m, false);
    }
    if (pl)
        sms_progress_line_update(pl, m, true);
    sms_progress_line_free(pl);
    sig_msg = NULL;

    if (r < 0) {
        code = die_msg(m, r, r == SMS_ERR_ABORTED ? "aborted" : "signing failed");
        if (!out.tmp_path)
            fprintf(stderr, "%s: what was written to %s is incomplete and unsigned; discard it\n",
                    prog, out.final_path ? out.final_path : "standard output");
        output_finish(&out, false);
        sms_message_free(m);
        return code;
    }
    code = output_finish(&out, true);
    if (code == EX_OK && sms_message_is_partial(m))
        fprintf(stderr, "%s: cancelled: wrote a signed PARTIAL message (Message-ID <%s>); "
                        "it says which attachment is incomplete\n",
                prog, sms_message_get_message_id(m));
    sms_message_free(m);
    return code;
}

/* ---- send -------------------------------------------------------------- */

static sms_progress_line *send_pl;

static void on_smtp_progress(sms_smtp_phase phase, const sms_message *m, void *ud)
{
    static const char *const names[] = {
        [SMS_SMTP_PHASE_IDLE] = "starting",
        [SMS_SMTP_PHASE_CONNECTING] = "connecting",
        [SMS_SMTP_PHASE_ENVELOPE] = "sending envelope",
        [SMS_SMTP_PHASE_STREAMING] = NULL, /* the message's own phase */
        [SMS_SMTP_PHASE_WAITING] = "waiting for the server",
        [SMS_SMTP_PHASE_DONE] = "done",
    };
    if (!send_pl || phase == SMS_SMTP_PHASE_DONE) /* the final line comes after */
        return;
    sms_progress_line_set_phase(send_pl, (unsigned)phase < G_N_ELEMENTS(names) ? names[phase] : NULL);
    sms_progress_line_update(send_pl, m, false);
}

static void report_recipients(sms_smtp *t, bool failed)
{
    size_t n = sms_smtp_get_recipient_count(t);
    for (size_t i = 0; i < n; i++) {
        sms_rcpt_result rr = { .struct_size = sizeof rr };
        if (sms_smtp_get_recipient(t, i, &rr) < 0)
            continue;
        if (rr.status == SMS_RCPT_ACCEPTED && !failed)
            continue;
        fprintf(stderr, "%s:   %s: %s", prog, rr.address,
                rr.status == SMS_RCPT_ACCEPTED ? "accepted"
                : rr.status == SMS_RCPT_REFUSED ? "REFUSED"
                                                : "not tried");
        if (rr.reply_code)
            fprintf(stderr, " (%d %s)", rr.reply_code, rr.reply_text ? rr.reply_text : "");
        fputc('\n', stderr);
    }
}

static int setup_smtp(sms_smtp *t)
{
    int r;
    if ((r = sms_smtp_set_url(t, O.smtp)) < 0)
        return die(sms_error_exit_code(r), "--smtp: %s", sms_smtp_last_error(t)); /* no URL: it may hold a password */
    if (O.user) {
        char pass[1024];
        char err[512] = "";
        if (O.password_file)
            r = sms_read_secret_file(O.password_file, pass, sizeof pass, err, sizeof err);
        else if ((r = tty_prompt(O.smtp, "", pass, sizeof pass, NULL)) < 0)
            g_strlcpy(err, "no password: give --password-file FILE, or run on a terminal to be asked",
                      sizeof err);
        if (r < 0) {
            sms_wipe(pass, sizeof pass);
            return die(r == SMS_ERR_CANCELLED ? EX_NOPERM : sms_error_exit_code(r), "--user: %s", err);
        }
        r = sms_smtp_set_auth(t, O.user, pass);
        sms_wipe(pass, sizeof pass);
        if (r < 0)
            return die(sms_error_exit_code(r), "--user: %s", sms_smtp_last_error(t));
    } else if (O.password_file) {
        return die(EX_USAGE, "--password-file needs --user NAME");
    }
    if (O.cacert && (r = sms_smtp_set_cacert(t, O.cacert)) < 0)
        return die(sms_error_exit_code(r), "--cacert: %s", sms_smtp_last_error(t));
    if (O.timeout < 0 || O.timeout > 86400)
        return die(EX_USAGE, "--timeout %" G_GINT64_FORMAT ": give 1 to 86400 seconds", O.timeout);
    if (O.timeout && (r = sms_smtp_set_timeouts(t, (long)O.timeout, (long)O.timeout)) < 0)
        return die(sms_error_exit_code(r), "--timeout: %s", sms_smtp_last_error(t));
    for (char **p = O.bcc; p && *p; p++)
        if ((r = sms_smtp_add_bcc(t, *p)) < 0)
            return die(sms_error_exit_code(r), "--bcc: %s", sms_smtp_last_error(t));
    unsigned flags = (O.starttls ? SMS_SMTP_REQUIRE_STARTTLS : 0) |
                     (O.allow_partial_rcpt ? SMS_SMTP_ALLOW_PARTIAL_RECIPIENTS : 0);
    if ((r = sms_smtp_set_flags(t, flags)) < 0)
        return die(sms_error_exit_code(r), "options: %s", sms_smtp_last_error(t));
    return EX_OK;
}

static int run_send(void)
{
    if (!O.smtp)
        return die(EX_USAGE, "no mail server: give --smtp smtp://host:port or smtps://host:port");
    if (O.output)
        return die(EX_USAGE, "-o is for 'sign'; 'send' delivers to --smtp");
    sms_smtp *t = sms_smtp_new();
    if (!t)
        return die(sms_error_exit_code(SMS_ERR_NOMEM), "out of memory");
    install_signals(); /* before any prompt; see run_sign */
    int code = setup_smtp(t);
    sms_message *m = NULL;
    if (code == EX_OK)
        code = build_message(&m);
    if (code != EX_OK) {
        sms_message_free(m);
        sms_smtp_free(t);
        return code;
    }
    send_pl = O.progress ? sms_progress_line_new("send") : NULL;
    sms_smtp_set_progress(t, on_smtp_progress, NULL);
    sig_msg = m;
    sig_smtp = t;
    if (sig_abort) {
        sms_message_abort(m);
        sms_smtp_abort(t);
    }

    int r = sms_smtp_send(t, m);

    sig_smtp = NULL;
    sig_msg = NULL;
    if (send_pl) {
        sms_progress_line_set_phase(send_pl, r < 0 ? "failed" : NULL);
        sms_progress_line_update(send_pl, m, true);
        sms_progress_line_free(send_pl);
        send_pl = NULL;
    }
    if (r < 0) {
        const char *what = r == SMS_ERR_SMTP_UNKNOWN ? "POSSIBLY DELIVERED"
                           : r == SMS_ERR_ABORTED    ? "aborted, nothing was delivered"
                                                     : "not sent";
        code = die(sms_error_exit_code(r), "%s: %s", what, sms_smtp_last_error(t));
        report_recipients(t, true);
    } else {
        if (sms_message_is_partial(m))
            fprintf(stderr, "%s: cancelled: delivered a signed PARTIAL message (Message-ID <%s>)\n",
                    prog, sms_message_get_message_id(m));
        report_recipients(t, false); /* refused ones, with --allow-partial-recipients */
        if (O.progress)
            fprintf(stderr, "%s: sent <%s>: %s\n", prog, sms_message_get_message_id(m),
                    sms_smtp_last_reply(t));
        code = EX_OK;
    }
    sms_message_free(m);
    sms_smtp_free(t);
    return code;
}

/* ---- submit ------------------------------------------------------------- */

#ifdef SMS_WITH_SUBMIT
static int run_submit(void)
{
    /* What the agent's configuration decides, not the caller. */
    if (O.cert)
        return die(EX_USAGE, "--cert is not taken by 'submit': name the signer (with its cert=) "
                             "in the agent's configuration, see smimestream-agent(8)");
    if (O.user || O.password_file || O.cacert || O.starttls || O.timeout)
        return die(EX_USAGE, "server credentials and TLS settings are not taken by 'submit': put "
                             "them in an [smtp:NAME] profile of the agent and give --smtp NAME");
    if (O.output || O.buffer_size)
        return die(EX_USAGE, "-o and --buffer-size are not taken by 'submit'");
    if (!O.from)
        return die(EX_USAGE, "no sender: give --from ADDR");
    if (!O.to && !O.cc)
        return die(EX_USAGE, "no recipients: give at least one --to ADDR or --cc ADDR");
    if (O.body && O.body_file)
        return die(EX_USAGE, "give either --body or --body-file, not both");
    for (char **p = O.headers; p && *p; p++)
        if (!strchr(*p, ':'))
            return die(EX_USAGE, "--header '%s': expected 'Name: value'", *p);
    g_autofree char *body = NULL;
    if (O.body_file) {
        g_autoptr(GError) e = NULL;
        if (!g_file_get_contents(O.body_file, &body, NULL, &e))
            return die(EX_NOINPUT, "--body-file: %s", e->message);
    }
    sms_submit_attach *att = g_new0(sms_submit_attach, O.attach->len ? O.attach->len : 1);
    for (guint i = 0; i < O.attach->len; i++) {
        attach_opt *a = &g_array_index(O.attach, attach_opt, i);
        att[i] = (sms_submit_attach){ a->path, a->name, a->type };
    }
    sms_submit_request req = {
        .from = O.from, .to = O.to, .cc = O.cc, .bcc = O.bcc,
        .subject = O.subject, .body = body ? body : O.body, .headers = O.headers,
        .attach = att, .n_attach = O.attach->len,
        .signer = O.signer, .digest = O.digest, .smtp = O.smtp,
        .pss = O.pss, .allow_partial_recipients = O.allow_partial_rcpt, .progress = O.progress,
        .pin_file = O.pin_file, .pin_func = have_tty() ? tty_prompt : NULL,
    };
    int code = sms_cli_submit(&req);
    g_free(att);
    return code;
}
#else
/* `smimestream submit` lives in its own executable, so that sign and send
 * never load libdbus: run it with the same arguments. */
static int exec_submit(char **argv)
{
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        g_autofree char *dir = g_path_get_dirname(self);
        g_autofree char *sibling = g_build_filename(dir, "smimestream-submit", NULL);
        if (access(sibling, X_OK) == 0)
            execv(sibling, argv);
    }
    execv(SMS_LIBEXECDIR "/smimestream-submit", argv);
    return die(EX_UNAVAILABLE, "cannot run %s/smimestream-submit: %s", SMS_LIBEXECDIR,
               g_strerror(errno));
}
#endif

/* ---- main -------------------------------------------------------------- */

static void free_opts(void)
{
    for (guint i = 0; O.attach && i < O.attach->len; i++) {
        attach_opt *a = &g_array_index(O.attach, attach_opt, i);
        g_free(a->path);
        g_free(a->name);
        g_free(a->type);
    }
    if (O.attach)
        g_array_free(O.attach, TRUE);
    g_free(O.from);
    g_strfreev(O.to);
    g_strfreev(O.cc);
    g_free(O.subject);
    g_free(O.body);
    g_free(O.body_file);
    g_strfreev(O.headers);
    g_free(O.signer);
    g_free(O.cert);
    g_free(O.digest);
    g_free(O.pin_file);
    g_free(O.output);
    g_free(O.smtp);
    g_free(O.user);
    g_free(O.password_file);
    g_free(O.cacert);
    g_strfreev(O.bcc);
}

static const char usage_text[] =
    "Usage: smimestream COMMAND [OPTION...]\n"
    "\n"
    "Commands:\n"
    "  sign     write a signed S/MIME message to -o FILE or standard output\n"
    "  send     sign and send it to a mail server (--smtp URL) in the same pass\n"
    "  submit   have a running smimestream-agent sign and send it (over D-Bus)\n"
    "\n"
    "Run 'smimestream sign --help' for the options; see smimestream(1).\n";

int main(int argc, char **argv)
{
    /* Option text (subject, names) is taken in the user's locale and
     * converted to UTF-8 by GOption. */
    setlocale(LC_ALL, "");
    /* In the plain C locale GOption would refuse any non-ASCII argument;
     * take arguments as UTF-8 instead, as most of the world's terminals
     * send them (the same coercion as Python's PEP 538). */
    const char *charset = NULL;
    if (!g_get_charset(&charset) && charset && strcmp(charset, "ANSI_X3.4-1968") == 0)
        setlocale(LC_CTYPE, "C.UTF-8");
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage_text, argc < 2 ? stderr : stdout);
        return argc < 2 ? EX_USAGE : EX_OK;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("smimestream %s\n", PACKAGE_VERSION);
        return EX_OK;
    }
    const char *cmd = argv[1];
    bool send = strcmp(cmd, "send") == 0;
    bool submit = strcmp(cmd, "submit") == 0;
#ifndef SMS_WITH_SUBMIT
    if (submit)
        return exec_submit(argv);
#endif
    if (!send && !submit && strcmp(cmd, "sign") != 0) {
        fprintf(stderr, "%s: unknown command '%s'\n\n%s", prog, cmd, usage_text);
        return EX_USAGE;
    }

    O.attach = g_array_new(FALSE, TRUE, sizeof(attach_opt));
    g_autoptr(GOptionContext) ctx = g_option_context_new(
        send     ? "- sign and send an S/MIME message in one pass"
        : submit ? "- have smimestream-agent sign and send an S/MIME message"
                 : "- sign an S/MIME message in one pass");
    GOptionGroup *g;
    g = g_option_group_new("message", "Message options:", "Show message options", NULL, NULL);
    g_option_group_add_entries(g, message_entries);
    g_option_context_add_group(ctx, g);
    g = g_option_group_new("signing", "Signing options:", "Show signing options", NULL, NULL);
    g_option_group_add_entries(g, signing_entries);
    g_option_context_add_group(ctx, g);
    if (send || submit) {
        g = g_option_group_new("transport", "Transport options:", "Show transport options", NULL, NULL);
        g_option_group_add_entries(g, transport_entries);
        g_option_context_add_group(ctx, g);
    }
    g_option_context_add_main_entries(ctx, output_entries, NULL);
    g_option_context_set_description(ctx,
        "Exit status: 0 ok, 64 usage, 65 bad data, 66 no input, 69 unavailable,\n"
        "75 temporary failure or aborted, 77 PIN/permission refused.  See smimestream(1).");

    /* GOption sees "smimestream sign ..." as program "sign". */
    g_autofree char *progname = g_strdup_printf("%s %s", prog, cmd);
    argv[1] = progname;
    int sub_argc = argc - 1;
    char **sub_argv = argv + 1;
    g_autoptr(GError) e = NULL;
    if (!g_option_context_parse(ctx, &sub_argc, &sub_argv, &e)) {
        int code = die(EX_USAGE, "%s (see '%s --help')", e->message, progname);
        free_opts();
        return code;
    }
    if (sub_argc > 1) {
        int code = die(EX_USAGE, "unexpected argument '%s' (attachments go with --attach)",
                       sub_argv[1]);
        free_opts();
        return code;
    }
#ifdef SMS_WITH_SUBMIT
    int code = submit ? run_submit() : send ? run_send() : run_sign();
#else
    int code = send ? run_send() : run_sign();
#endif
    free_opts();
    return code;
}
