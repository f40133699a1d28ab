/* smtp-send: a small driver of sms_smtp_send() for manual checks and the
 * benchmark (tests/bench/smtp-bench.sh).  Not installed.
 *
 *   smtp-send --url URL --from ADDR --to ADDR [--cc ADDR] [--bcc ADDR]
 *             --key KEY --cert CHAIN [--attach PATH|-]... [--user NAME
 *             --password-file FILE] [--cacert FILE] [--timeout SECONDS]
 *             [--starttls] [--allow-partial] [--chunk BYTES]
 *
 * Prints the outcome, the per-recipient results and timings on stderr:
 *   start_ns N        CLOCK_REALTIME when main() started
 *   result RC NAME    sms_smtp_send()'s return code
 *   rcpt ADDR STATUS CODE TEXT
 *   error TEXT        sms_smtp_last_error()
 *   elapsed SECONDS  bytes N
 * and exits with sms_error_exit_code().
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <smimestream/smimestream.h>

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int usage(void)
{
    fprintf(stderr, "usage: smtp-send --url URL --from ADDR --to ADDR --key KEY --cert CHAIN "
                    "[--attach PATH|-]... [options]\n");
    return 64;
}

int main(int argc, char **argv)
{
    struct timespec start;
    clock_gettime(CLOCK_REALTIME, &start);
    double t0 = now_mono();
    fprintf(stderr, "start_ns %lld\n", (long long)start.tv_sec * 1000000000LL + start.tv_nsec);

    const char *url = NULL, *key = NULL, *cert = NULL, *user = NULL, *pwfile = NULL;
    const char *cacert = NULL;
    long timeout = 0;
    unsigned flags = 0;
    size_t chunk = 0;
    sms_message *m = sms_message_new();
    sms_smtp *s = sms_smtp_new();
    if (!m || !s)
        return 70;
    sms_message_set_subject(m, "smtp-send");
    sms_message_set_body(m, "Sent by smtp-send.\n", 19);
    const char *attach[64];
    size_t n_attach = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int r = 0;
#define OPT(name) (strcmp(a, name) == 0 && v && ++i)
        if (OPT("--url"))
            url = v;
        else if (OPT("--from"))
            r = sms_message_set_from(m, v);
        else if (OPT("--to"))
            r = sms_message_add_to(m, v);
        else if (OPT("--cc"))
            r = sms_message_add_cc(m, v);
        else if (OPT("--bcc"))
            r = sms_smtp_add_bcc(s, v);
        else if (OPT("--key"))
            key = v;
        else if (OPT("--cert"))
            cert = v;
        else if (OPT("--attach") && n_attach < 64)
            attach[n_attach++] = v;
        else if (OPT("--user"))
            user = v;
        else if (OPT("--password-file"))
            pwfile = v;
        else if (OPT("--cacert"))
            cacert = v;
        else if (OPT("--timeout"))
            timeout = atol(v);
        else if (OPT("--chunk"))
            chunk = (size_t)atol(v);
        else if (strcmp(a, "--starttls") == 0)
            flags |= SMS_SMTP_REQUIRE_STARTTLS;
        else if (strcmp(a, "--allow-partial") == 0)
            flags |= SMS_SMTP_ALLOW_PARTIAL_RECIPIENTS;
        else
            return usage();
#undef OPT
        if (r < 0) {
            fprintf(stderr, "smtp-send: %s: %s %s\n", a, sms_strerror(r),
                    sms_message_last_error(m));
            return sms_error_exit_code(r);
        }
    }
    if (!url || !key)
        return usage();

    char err[512] = "";
    sms_signer_options opts = { .struct_size = sizeof opts, .cert_file = cert };
    sms_signer *signer = NULL;
    int r = sms_signer_open(key, &opts, &signer, err, sizeof err);
    if (r < 0) {
        fprintf(stderr, "smtp-send: signer: %s\n", err);
        return sms_error_exit_code(r);
    }
    sms_message_set_signer(m, signer);
    sms_signer_unref(signer);
    if (chunk)
        sms_message_set_chunk_size(m, chunk);
    for (size_t i = 0; i < n_attach; i++) {
        sms_source *src = NULL;
        r = sms_source_new_path(attach[i], &src, err, sizeof err);
        if (r == 0)
            r = sms_message_add_attachment(m, src, strcmp(attach[i], "-") ? NULL : "stdin.bin",
                                           NULL);
        if (r < 0) {
            fprintf(stderr, "smtp-send: %s: %s\n", attach[i], err[0] ? err : sms_strerror(r));
            return sms_error_exit_code(r);
        }
    }
    if ((r = sms_smtp_set_url(s, url)) < 0 || (r = sms_smtp_set_flags(s, flags)) < 0 ||
        (r = sms_smtp_set_timeouts(s, timeout, timeout)) < 0 ||
        (cacert && (r = sms_smtp_set_cacert(s, cacert)) < 0)) {
        fprintf(stderr, "smtp-send: %s\n", sms_smtp_last_error(s));
        return sms_error_exit_code(r);
    }
    if (user) {
        char pw[1024];
        r = sms_read_secret_file(pwfile ? pwfile : "/dev/null", pw, sizeof pw, err, sizeof err);
        if (r == 0)
            r = sms_smtp_set_auth(s, user, pw);
        sms_wipe(pw, sizeof pw);
        if (r < 0) {
            fprintf(stderr, "smtp-send: password: %s\n", err);
            return sms_error_exit_code(r);
        }
    }

    r = sms_smtp_send(s, m);
    double t1 = now_mono();
    fprintf(stderr, "result %d %s\n", r, sms_strerror(r));
    for (size_t i = 0; i < sms_smtp_get_recipient_count(s); i++) {
        sms_rcpt_result res = { .struct_size = sizeof res };
        if (sms_smtp_get_recipient(s, i, &res) == 0)
            fprintf(stderr, "rcpt %s %s %d %s\n", res.address,
                    res.status == SMS_RCPT_ACCEPTED  ? "accepted"
                    : res.status == SMS_RCPT_REFUSED ? "refused"
                                                     : "pending",
                    res.reply_code, res.reply_text);
    }
    if (sms_smtp_last_error(s)[0])
        fprintf(stderr, "error %s\n", sms_smtp_last_error(s));
    fprintf(stderr, "last_reply %s\n", sms_smtp_last_reply(s));
    sms_progress p = { .struct_size = sizeof p };
    sms_message_get_progress(m, &p);
    fprintf(stderr, "elapsed %.3f bytes %llu source_bytes %llu\n", t1 - t0,
            (unsigned long long)p.output_bytes, (unsigned long long)p.source_bytes);
    sms_smtp_free(s);
    sms_message_free(m);
    return sms_error_exit_code(r);
}
