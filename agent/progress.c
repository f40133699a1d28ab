/* smimestream: a live progress line on standard error. */
#include "config.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>

#include "progress.h"

struct sms_progress_line {
    char *label;
    const char *phase;
    bool tty;
    gint64 start;
    gint64 last;
    size_t last_len;
};

sms_progress_line *sms_progress_line_new(const char *label)
{
    sms_progress_line *pl = g_new0(sms_progress_line, 1);
    pl->label = g_strdup(label);
    pl->tty = isatty(STDERR_FILENO);
    pl->start = g_get_monotonic_time();
    return pl;
}

void sms_progress_line_set_phase(sms_progress_line *pl, const char *phase)
{
    if (pl)
        pl->phase = phase;
}

static void fmt_bytes(double n, char *out, size_t size)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
    int u = 0;
    while (n >= 1024 && u < 4) {
        n /= 1024;
        u++;
    }
    snprintf(out, size, u ? "%.1f %s" : "%.0f %s", n, units[u]);
}

static const char *phase_name(const sms_progress *p, bool partial)
{
    switch (p->phase) {
    case SMS_PHASE_SETUP: return "starting";
    case SMS_PHASE_HEADERS:
    case SMS_PHASE_BODY: return "writing";
    case SMS_PHASE_ATTACHMENT: return "streaming";
    case SMS_PHASE_SIGNING: return "signing";
    case SMS_PHASE_TRAILER: return "writing signature";
    case SMS_PHASE_DONE: return partial ? "done (partial)" : "done";
    case SMS_PHASE_FAILED: return "failed";
    }
    return "";
}

void sms_progress_line_update(sms_progress_line *pl, const sms_message *m, bool final)
{
    if (!pl)
        return;
    gint64 now = g_get_monotonic_time();
    gint64 every = pl->tty ? G_USEC_PER_SEC / 10 : 5 * G_USEC_PER_SEC;
    if (!final && now - pl->last < every)
        return;
    pl->last = now;

    sms_progress p = { .struct_size = sizeof p };
    if (sms_message_get_progress(m, &p) < 0)
        return;
    double secs = (double)(now - pl->start) / G_USEC_PER_SEC;
    char done[32], rate[32], total[32];
    fmt_bytes((double)p.source_bytes, done, sizeof done);
    fmt_bytes(secs > 0 ? p.source_bytes / secs : 0, rate, sizeof rate);

    GString *s = g_string_new(NULL);
    g_string_append_printf(s, "%s: %s", pl->label, pl->phase ? pl->phase : phase_name(&p, sms_message_is_partial(m)));
    if (p.attachment_index >= 0)
        g_string_append_printf(s, " attachment %d/%zu", p.attachment_index + 1,
                               p.attachment_count);
    g_string_append_printf(s, "  %s", done);
    if (p.source_size > 0) {
        fmt_bytes((double)p.source_size, total, sizeof total);
        g_string_append_printf(s, " of %s (%.0f%%)", total,
                               100.0 * (double)p.source_bytes / (double)p.source_size);
    }
    g_string_append_printf(s, "  %s/s", rate);
    if (p.cancelled && !final)
        g_string_append(s, "  [cancelling]");

    if (pl->tty) {
        size_t len = s->len;
        if (len < pl->last_len)
            g_string_append_printf(s, "%*s", (int)(pl->last_len - len), "");
        fprintf(stderr, "\r%s%s", s->str, final ? "\n" : "");
        pl->last_len = len;
    } else {
        fprintf(stderr, "%s\n", s->str);
    }
    fflush(stderr);
    g_string_free(s, TRUE);
}

void sms_progress_line_free(sms_progress_line *pl)
{
    if (!pl)
        return;
    g_free(pl->label);
    g_free(pl);
}
