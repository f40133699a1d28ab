/* smimestream submit: hand a message to smimestream-agent over D-Bus. */
#ifndef SMIMESTREAM_SUBMIT_H
#define SMIMESTREAM_SUBMIT_H

#include <stdbool.h>
#include <stddef.h>

#include <smimestream/smimestream.h>

typedef struct sms_submit_attach {
    const char *path;   /* "-" is standard input */
    const char *name;   /* NULL: the path's last component */
    const char *type;   /* NULL: the agent guesses */
} sms_submit_attach;

typedef struct sms_submit_request {
    const char *from;
    char **to, **cc, **bcc;
    const char *subject;
    const char *body;           /* UTF-8, may be NULL */
    char **headers;             /* "Name: value" */
    const sms_submit_attach *attach;
    size_t n_attach;
    const char *signer, *digest, *smtp;
    bool pss, allow_partial_recipients, progress;
    const char *pin_file;       /* served to the agent through PinPrompt1 */
    sms_pin_func pin_func;      /* the terminal prompt, or NULL */
} sms_submit_request;

/* Submit, follow the job to its end, and return a sysexits code. */
int sms_cli_submit(const sms_submit_request *req);

#endif
