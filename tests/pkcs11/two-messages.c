/* Open one signer and sign several messages with it, one after the other,
 * as a long-running front end (the agent, a kiosk) does.  The tests run this
 * through OpenSC's pkcs11-spy and count C_Login and C_Sign in its log.
 *
 *   two-messages [--pin-file F] [--prompt PIN[,PIN...]] [--cert F] SPEC OUT...
 *
 * One message per OUT.  --prompt installs a pin_func that answers with the
 * given PINs in turn (and cancels when they run out), logging each call as
 * "prompt N: WHAT | HINT" on stderr, so the tests can see the retry hints.
 *
 * Exit status: 0 when every message was written; the sysexits code of the
 * first failure otherwise.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <smimestream/smimestream.h>

typedef struct prompt_state {
    char *pins; /* comma-separated, consumed as we go */
    int calls;
} prompt_state;

static int prompt(const char *what, const char *hint, char *buf, size_t size, void *user_data)
{
    prompt_state *p = user_data;
    p->calls++;
    fprintf(stderr, "prompt %d: %s | %s\n", p->calls, what, hint ? hint : "");
    if (!p->pins)
        return SMS_ERR_CANCELLED;
    char *comma = strchr(p->pins, ',');
    if (comma)
        *comma = '\0';
    snprintf(buf, size, "%s", p->pins);
    p->pins = comma ? comma + 1 : NULL;
    return SMS_OK;
}

static int write_message(sms_signer *signer, int i, const char *path)
{
    char body[80];
    snprintf(body, sizeof body, "message %d, signed by a signer object opened once\n", i);
    sms_message *m = sms_message_new();
    if (!m)
        return 70;
    int r;
    if ((r = sms_message_set_from(m, "scanner@example.org")) < 0 ||
        (r = sms_message_add_to(m, "alice@example.org")) < 0 ||
        (r = sms_message_set_subject(m, "several messages, one login")) < 0 ||
        (r = sms_message_set_body(m, body, strlen(body))) < 0 ||
        (r = sms_message_set_signer(m, signer)) < 0) {
        fprintf(stderr, "two-messages: setting up message %d: %s\n", i, sms_message_last_error(m));
        sms_message_free(m);
        return sms_error_exit_code(r);
    }
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        sms_message_free(m);
        return 73;
    }
    char buf[16384];
    size_t n;
    while ((r = sms_message_read(m, buf, sizeof buf, &n)) == SMS_OK && n > 0)
        fwrite(buf, 1, n, f);
    if (fclose(f) != 0 && r == SMS_OK)
        r = SMS_ERR_IO;
    if (r < 0) {
        fprintf(stderr, "two-messages: message %d: %s\n", i, sms_message_last_error(m));
        sms_progress p = {.struct_size = sizeof p};
        sms_message_get_progress(m, &p);
        int again = sms_message_read(m, buf, sizeof buf, &n);
        fprintf(stderr, "two-messages: message %d: phase %s, error %d %s\n", i,
                p.phase == SMS_PHASE_FAILED ? "FAILED" : "not failed", r,
                again == r && sms_message_get_error(m) == r ? "sticky" : "NOT sticky");
        remove(path);
    }
    sms_message_free(m);
    return sms_error_exit_code(r);
}

int main(int argc, char **argv)
{
    sms_signer_options o = {.struct_size = sizeof o};
    prompt_state ps = {NULL, 0};
    int i = 1;
    for (; i + 1 < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
        if (strcmp(argv[i], "--pin-file") == 0) {
            o.pin_file = argv[i + 1];
        } else if (strcmp(argv[i], "--cert") == 0) {
            o.cert_file = argv[i + 1];
        } else if (strcmp(argv[i], "--prompt") == 0) {
            ps.pins = argv[i + 1];
            o.pin_func = prompt;
            o.pin_user_data = &ps;
        } else {
            break;
        }
    }
    if (argc - i < 2) {
        fprintf(stderr, "usage: two-messages [--pin-file F] [--prompt PIN[,PIN...]] [--cert F] "
                        "SPEC OUT...\n");
        return 64;
    }
    sms_signer *signer = NULL;
    char err[1024] = "";
    int r = sms_signer_open(argv[i], &o, &signer, err, sizeof err);
    if (r < 0) {
        fprintf(stderr, "two-messages: %s\n", err);
        return sms_error_exit_code(r);
    }
    fprintf(stderr, "two-messages: opened %s\n", sms_signer_describe(signer));
    int code = 0;
    for (int k = i + 1; k < argc && code == 0; k++)
        code = write_message(signer, k - i, argv[k]);
    sms_signer_unref(signer);
    return code;
}
