/* smimestream: a live progress line on standard error. */
#ifndef SMIMESTREAM_PROGRESS_H
#define SMIMESTREAM_PROGRESS_H

#include <stdbool.h>

#include <smimestream/smimestream.h>

typedef struct sms_progress_line sms_progress_line;

/* label: "sign", "send", ...  On a terminal the line is redrawn at most 10
 * times a second; otherwise a line is printed every 5 seconds. */
sms_progress_line *sms_progress_line_new(const char *label);
/* Redraw if it is time (or always when final). */
void sms_progress_line_update(sms_progress_line *pl, const sms_message *m, bool final);
/* Override the phase text (e.g. "connecting", "waiting for the server"). */
void sms_progress_line_set_phase(sms_progress_line *pl, const char *phase);
void sms_progress_line_free(sms_progress_line *pl);

#endif
