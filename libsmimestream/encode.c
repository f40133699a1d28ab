/* smimestream: content and header encoders (base64, quoted-printable,
 * RFC 2047 encoded-words, RFC 2231 parameters) and UTF-8 validation. */
#include "config.h"

#include <string.h>

#include "sms-private.h"

#define SMS_LINE_MAX 76 /* RFC 2045 body lines and our header lines */

static const char hex_upper[16] = "0123456789ABCDEF";

/* ==== UTF-8 ============================================================ */

/* Length of the UTF-8 sequence starting at s[i] if it is well formed (no
 * overlongs, no surrogates, nothing above U+10FFFF), else 0. */
static size_t utf8_seq_len(const uint8_t *s, size_t len, size_t i)
{
    uint8_t c = s[i];
    if (c < 0x80)
        return 1;
    size_t n;
    uint8_t lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0)
            lo = 0xa0; /* overlong */
        else if (c == 0xed)
            hi = 0x9f; /* surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0)
            lo = 0x90; /* overlong */
        else if (c == 0xf4)
            hi = 0x8f; /* above U+10FFFF */
    } else {
        return 0;
    }
    if (n > len - i || s[i + 1] < lo || s[i + 1] > hi)
        return 0;
    for (size_t k = 2; k < n; k++)
        if ((s[i + k] & 0xc0) != 0x80)
            return 0;
    return n;
}

bool sms__utf8_valid(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        size_t n = utf8_seq_len(s, len, i);
        if (n == 0)
            return false;
        i += n;
    }
    return true;
}

/* ==== base64 =========================================================== */

/* Two output characters for every 12-bit input value: one lookup per half
 * of a 3-byte group.  Built by the compiler, so there is no run-time
 * initialisation to race on. */
#define B64_ROW(c) {c, 'A'}, {c, 'B'}, {c, 'C'}, {c, 'D'}, {c, 'E'}, {c, 'F'}, {c, 'G'}, \
    {c, 'H'}, {c, 'I'}, {c, 'J'}, {c, 'K'}, {c, 'L'}, {c, 'M'}, {c, 'N'}, {c, 'O'}, {c, 'P'}, \
    {c, 'Q'}, {c, 'R'}, {c, 'S'}, {c, 'T'}, {c, 'U'}, {c, 'V'}, {c, 'W'}, {c, 'X'}, {c, 'Y'}, \
    {c, 'Z'}, {c, 'a'}, {c, 'b'}, {c, 'c'}, {c, 'd'}, {c, 'e'}, {c, 'f'}, {c, 'g'}, {c, 'h'}, \
    {c, 'i'}, {c, 'j'}, {c, 'k'}, {c, 'l'}, {c, 'm'}, {c, 'n'}, {c, 'o'}, {c, 'p'}, {c, 'q'}, \
    {c, 'r'}, {c, 's'}, {c, 't'}, {c, 'u'}, {c, 'v'}, {c, 'w'}, {c, 'x'}, {c, 'y'}, {c, 'z'}, \
    {c, '0'}, {c, '1'}, {c, '2'}, {c, '3'}, {c, '4'}, {c, '5'}, {c, '6'}, {c, '7'}, {c, '8'}, \
    {c, '9'}, {c, '+'}, {c, '/'}

static const char b64_pair[4096][2] = {
    B64_ROW('A'), B64_ROW('B'), B64_ROW('C'), B64_ROW('D'), B64_ROW('E'), B64_ROW('F'),
    B64_ROW('G'), B64_ROW('H'), B64_ROW('I'), B64_ROW('J'), B64_ROW('K'), B64_ROW('L'),
    B64_ROW('M'), B64_ROW('N'), B64_ROW('O'), B64_ROW('P'), B64_ROW('Q'), B64_ROW('R'),
    B64_ROW('S'), B64_ROW('T'), B64_ROW('U'), B64_ROW('V'), B64_ROW('W'), B64_ROW('X'),
    B64_ROW('Y'), B64_ROW('Z'), B64_ROW('a'), B64_ROW('b'), B64_ROW('c'), B64_ROW('d'),
    B64_ROW('e'), B64_ROW('f'), B64_ROW('g'), B64_ROW('h'), B64_ROW('i'), B64_ROW('j'),
    B64_ROW('k'), B64_ROW('l'), B64_ROW('m'), B64_ROW('n'), B64_ROW('o'), B64_ROW('p'),
    B64_ROW('q'), B64_ROW('r'), B64_ROW('s'), B64_ROW('t'), B64_ROW('u'), B64_ROW('v'),
    B64_ROW('w'), B64_ROW('x'), B64_ROW('y'), B64_ROW('z'), B64_ROW('0'), B64_ROW('1'),
    B64_ROW('2'), B64_ROW('3'), B64_ROW('4'), B64_ROW('5'), B64_ROW('6'), B64_ROW('7'),
    B64_ROW('8'), B64_ROW('9'), B64_ROW('+'), B64_ROW('/'),
};

#define B64_LINE_IN 57 /* input bytes per full 76-character line */

static inline uint8_t *b64_put_group(uint8_t *o, const uint8_t *in)
{
    uint32_t v = (uint32_t)in[0] << 16 | (uint32_t)in[1] << 8 | in[2];
    memcpy(o, b64_pair[v >> 12], 2);
    memcpy(o + 2, b64_pair[v & 0xfff], 2);
    return o + 4;
}

/* One group with the lazy line break in front of it. */
static inline uint8_t *b64_group(sms__b64 *e, uint8_t *o, const uint8_t *in)
{
    if (e->col == SMS_LINE_MAX) {
        *o++ = '\r';
        *o++ = '\n';
        e->col = 0;
    }
    e->col += 4;
    return b64_put_group(o, in);
}

/* A whole line from 57 bytes: the fixed trip count lets the compiler
 * unroll it. */
static inline uint8_t *b64_line(sms__b64 *e, uint8_t *o, const uint8_t *in)
{
    if (e->col == SMS_LINE_MAX) {
        *o++ = '\r';
        *o++ = '\n';
    }
    for (int g = 0; g < B64_LINE_IN / 3; g++)
        o = b64_put_group(o, in + 3 * g);
    e->col = SMS_LINE_MAX;
    return o;
}

void sms__b64_init(sms__b64 *e)
{
    memset(e, 0, sizeof *e);
}

size_t sms__b64_bound(size_t len)
{
    if (len > SIZE_MAX / 2)
        return SIZE_MAX; /* nobody can allocate that anyway */
    /* Up to 2 carried bytes: at most len / 3 + 2 groups, including the
     * padded one from final.  A CRLF precedes at most every 19th group, plus
     * one if the previous call ended on a full line. */
    size_t groups = len / 3 + 2;
    return 4 * groups + 2 * (groups / (B64_LINE_IN / 3) + 1);
}

size_t sms__b64_update(sms__b64 *e, const uint8_t *in, size_t len, uint8_t *out)
{
    uint8_t *o = out;

    if (len == 0)
        return 0; /* in may be NULL */
    if (e->npend > 0) {
        while (e->npend < 3 && len > 0) {
            e->pend[e->npend++] = *in++;
            len--;
        }
        if (e->npend < 3)
            return 0;
        o = b64_group(e, o, e->pend);
        e->npend = 0;
    }
    /* Finish a partial line so that whole lines can follow. */
    while (len >= 3 && e->col % SMS_LINE_MAX != 0) {
        o = b64_group(e, o, in);
        in += 3;
        len -= 3;
    }
    while (len >= B64_LINE_IN) {
        o = b64_line(e, o, in);
        in += B64_LINE_IN;
        len -= B64_LINE_IN;
    }
    while (len >= 3) {
        o = b64_group(e, o, in);
        in += 3;
        len -= 3;
    }
    memcpy(e->pend, in, len);
    e->npend = (unsigned)len;
    return (size_t)(o - out);
}

size_t sms__b64_final(sms__b64 *e, uint8_t *out)
{
    uint8_t *o = out;
    if (e->npend > 0) {
        uint8_t g[3] = { e->pend[0], e->npend > 1 ? e->pend[1] : 0, 0 };
        o = b64_group(e, o, g);
        o[-1] = '=';
        if (e->npend == 1)
            o[-2] = '=';
    }
    sms__b64_init(e);
    return (size_t)(o - out);
}

/* ==== quoted-printable ================================================= */

/* The most input after a byte that decides how it is encoded: "rom " after
 * the "F" of "From " at a line start. */
#define QP_LOOKAHEAD 4

/* Is position i (within p[0..n)) a hard line end or the end of input?  Only
 * asked where the lookahead is known to be complete. */
static bool qp_at_line_end(const uint8_t *p, size_t n, size_t i)
{
    return i >= n || p[i] == '\n' || (p[i] == '\r' && i + 1 < n && p[i + 1] == '\n');
}

/* Must p[i] be written as =XX?  at_start: it would be the first character
 * of an output line; last: it is the last character of its input line. */
static bool qp_must_escape(const uint8_t *p, size_t n, size_t i, bool at_start, bool last)
{
    uint8_t c = p[i];
    if (c == '=' || c >= 0x7f || (c < 0x20 && c != '\t'))
        return true;
    if ((c == ' ' || c == '\t') && last)
        return true; /* trailing whitespace may be stripped in transit */
    if (!at_start)
        return false;
    /* Dot-stuffing, mbox "From " mangling, and lines that look like MIME
     * delimiters. */
    if (c == '.')
        return true;
    if (c == 'F')
        return n - i > QP_LOOKAHEAD && memcmp(p + i + 1, "rom ", 4) == 0;
    if (c == '-')
        return i + 1 < n && p[i + 1] == '-';
    return false;
}

/* Encode p[i] at e->col, breaking the line first if it does not fit. */
static uint8_t *qp_char(sms__qp *e, uint8_t *o, const uint8_t *p, size_t n, size_t i)
{
    bool last = qp_at_line_end(p, n, i + 1);
    bool esc = qp_must_escape(p, n, i, e->col == 0, last);
    unsigned width = esc ? 3 : 1;
    /* The last character of a line may use column 76; any other needs to
     * leave room for the "=" of a soft break. */
    if (e->col + width > (last ? SMS_LINE_MAX : SMS_LINE_MAX - 1)) {
        memcpy(o, "=\r\n", 3);
        o += 3;
        e->col = 0;
        esc = qp_must_escape(p, n, i, true, last);
        width = esc ? 3 : 1;
    }
    if (esc) {
        o[0] = '=';
        o[1] = (uint8_t)hex_upper[p[i] >> 4];
        o[2] = (uint8_t)hex_upper[p[i] & 15];
    } else {
        o[0] = p[i];
    }
    e->col += width;
    return o + width;
}

/* Encode p[0..n) as far as the lookahead allows (all of it at eof).
 * Returns how many input bytes were consumed; *po advances. */
static size_t qp_run(sms__qp *e, const uint8_t *p, size_t n, bool eof, uint8_t **po)
{
    uint8_t *o = *po;
    size_t i = 0;
    while (i < n && (eof || n - i > QP_LOOKAHEAD)) {
        if (p[i] == '\n' || (p[i] == '\r' && i + 1 < n && p[i + 1] == '\n')) {
            *o++ = '\r';
            *o++ = '\n';
            e->col = 0;
            i += p[i] == '\r' ? 2 : 1;
        } else {
            o = qp_char(e, o, p, n, i);
            i++;
        }
    }
    *po = o;
    return i;
}

void sms__qp_init(sms__qp *e)
{
    memset(e, 0, sizeof *e);
}

/* Make room for encoding m input bytes: at most 3 characters each, a CRLF
 * for a LF, and a 3-byte soft break per 73 characters of a line. */
static uint8_t *qp_reserve(sms__buf *out, size_t m)
{
    if (m > (SIZE_MAX - 64) / 4) {
        out->failed = true;
        return NULL;
    }
    if (!sms__buf_reserve(out, 4 * m + 16))
        return NULL;
    return out->data + out->len;
}

void sms__qp_update(sms__qp *e, const uint8_t *in, size_t len, sms__buf *out)
{
    if (len == 0)
        return; /* no new lookahead, so nothing could be decided */
    uint8_t *o = qp_reserve(out, e->nhold + len);
    if (!o)
        return;

    /* The held bytes first, with enough of the new input behind them to
     * decide how to encode them. */
    uint8_t tmp[sizeof e->hold + QP_LOOKAHEAD];
    size_t head = len < QP_LOOKAHEAD ? len : QP_LOOKAHEAD;
    size_t ntmp = e->nhold;
    memcpy(tmp, e->hold, ntmp);
    memcpy(tmp + ntmp, in, head);
    ntmp += head;
    size_t used = qp_run(e, tmp, ntmp, false, &o);

    const uint8_t *rest = tmp + used;
    size_t nrest = ntmp - used;
    if (used >= e->nhold) {
        /* Continue in the caller's buffer: no copying on the hot path. */
        size_t skip = used - e->nhold;
        rest = in + skip;
        nrest = len - skip;
        size_t k = qp_run(e, rest, nrest, false, &o);
        rest += k;
        nrest -= k;
    }
    /* qp_run stops with at most QP_LOOKAHEAD bytes left. */
    memmove(e->hold, rest, nrest);
    e->nhold = (unsigned)nrest;
    out->len = (size_t)(o - out->data);
}

void sms__qp_final(sms__qp *e, sms__buf *out)
{
    uint8_t *o = qp_reserve(out, e->nhold);
    if (o) {
        qp_run(e, e->hold, e->nhold, true, &o);
        out->len = (size_t)(o - out->data);
    }
    sms__qp_init(e);
}

/* Would a line starting at p[i] be taken for something else in transit? */
static bool line_start_unsafe(const uint8_t *p, size_t n, size_t i)
{
    size_t left = n - i;
    return p[i] == '.' || (left >= 5 && memcmp(p + i, "From ", 5) == 0) ||
           (left >= 2 && p[i] == '-' && p[i + 1] == '-');
}

bool sms__text_is_7bit_safe(const uint8_t *in, size_t len)
{
    size_t col = 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = in[i];
        bool crlf = c == '\r' && i + 1 < len && in[i + 1] == '\n';
        if (c == '\n' || crlf) {
            if (col > 0 && in[i - 1] == ' ')
                return false;
            col = 0;
            i += crlf;
            continue;
        }
        /* Printable ASCII only: also keeps tabs and bare CRs out. */
        if (c < 0x20 || c > 0x7e)
            return false;
        if (col == 0 && line_start_unsafe(in, len, i))
            return false;
        if (c == '=' && i + 1 < len && in[i + 1] == '_')
            return false;
        if (++col > SMS_LINE_MAX)
            return false;
    }
    return !(col > 0 && in[len - 1] == ' ');
}

/* ==== RFC 2047 header values =========================================== */

#define EW_PREFIX "=?UTF-8?B?"
#define EW_OVERHEAD 12 /* "=?UTF-8?B?" and "?=" */
#define EW_MAX 75      /* RFC 2047 limit on one encoded-word */

void sms__hdr_init(sms__hdr *e, unsigned start_col)
{
    sms__buf_init(&e->in);
    e->start_col = start_col;
}

void sms__hdr_update(sms__hdr *e, const uint8_t *in, size_t len)
{
    if (len > SMS_MAX_HEADER_VALUE - e->in.len) {
        e->in.failed = true; /* refused in final */
        return;
    }
    sms__buf_append(&e->in, in, len);
}

/* Plain text is fine unless it has controls, 8-bit bytes, or something a
 * reader would decode as an encoded-word. */
static bool hdr_is_plain(const uint8_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (v[i] < 0x20 || v[i] > 0x7e)
            return false;
        if (v[i] == '=' && i + 1 < n && v[i + 1] == '?')
            return false;
    }
    return true;
}

/* Write plain text, folding before a run of spaces where a line would
 * otherwise pass 76 columns.  Folding only inserts CRLF, so unfolding
 * gives back the value exactly.  Returns false, having written nothing,
 * if some word does not fit even in 998 columns. */
static bool hdr_write_plain(const uint8_t *v, size_t n, unsigned start_col, sms__buf *out)
{
    size_t mark = out->len;
    size_t col = start_col;
    size_t i = 0;
    while (i < n) {
        /* A segment: a run of spaces, then a word (none for trailing
         * spaces, which must not make a whitespace-only line). */
        size_t j = i;
        while (j < n && v[j] == ' ')
            j++;
        while (j < n && v[j] != ' ')
            j++;
        size_t seg = j - i;
        if (i > 0 && v[j - 1] != ' ' && col + seg > SMS_LINE_MAX) {
            sms__buf_append(out, "\r\n", 2);
            col = 0;
        }
        /* A word longer than a line (a msg-id, a URL) stays whole: encoded
         * words are not allowed inside those (RFC 2047 section 5), and 998
         * is the hard limit (RFC 5322 section 2.1.1). */
        if (col + seg > 998) {
            out->len = mark;
            return false;
        }
        sms__buf_append(out, v + i, seg);
        col += seg;
        i = j;
    }
    return true;
}

/* The UTF-8 character boundary at or before v + max, counting from i. */
static size_t hdr_chunk(const uint8_t *v, size_t n, size_t i, size_t max)
{
    size_t take = 0;
    while (i + take < n) {
        size_t k = utf8_seq_len(v, n, i + take);
        if (take + k > max)
            break;
        take += k;
    }
    return take;
}

static void hdr_write_word(const uint8_t *p, size_t len, sms__buf *out)
{
    uint8_t b64[80]; /* 45 bytes at most: 60 characters, no line break */
    sms__b64 e;
    sms__b64_init(&e);
    size_t m = sms__b64_update(&e, p, len, b64);
    m += sms__b64_final(&e, b64 + m);
    sms__buf_puts(out, EW_PREFIX);
    sms__buf_append(out, b64, m);
    sms__buf_puts(out, "?=");
}

/* How many bytes fit in one encoded-word starting at column col. */
static size_t hdr_word_capacity(size_t col)
{
    size_t room = col < SMS_LINE_MAX ? SMS_LINE_MAX - col : 0;
    if (room > EW_MAX)
        room = EW_MAX;
    return room > EW_OVERHEAD ? (room - EW_OVERHEAD) / 4 * 3 : 0;
}

/* The whole value as "B" encoded-words, one per line, each holding as many
 * whole characters as fit: 45 bytes (60 base64 characters) on a
 * continuation line, fewer on the first when start_col is large. */
static void hdr_write_words(const uint8_t *v, size_t n, unsigned start_col, sms__buf *out)
{
    size_t col = start_col;
    size_t i = 0;
    while (i < n) {
        size_t take = hdr_chunk(v, n, i, hdr_word_capacity(col));
        if (i > 0 || take == 0) {
            /* take == 0 only if start_col leaves no room for a word. */
            sms__buf_append(out, "\r\n ", 3);
            col = 1;
            take = hdr_chunk(v, n, i, hdr_word_capacity(col));
        }
        hdr_write_word(v + i, take, out);
        col += EW_OVERHEAD + (take + 2) / 3 * 4;
        i += take;
    }
}

bool sms__hdr_final(sms__hdr *e, sms__buf *out)
{
    const uint8_t *v = e->in.data;
    size_t n = e->in.len;
    bool ok = !e->in.failed && sms__utf8_valid(v, n);
    for (size_t i = 0; ok && i < n; i++)
        ok = v[i] != '\r' && v[i] != '\n' && v[i] != '\0';
    if (ok && n > 0) {
        if (!hdr_is_plain(v, n) || !hdr_write_plain(v, n, e->start_col, out))
            hdr_write_words(v, n, e->start_col, out);
    }
    sms__buf_free(&e->in);
    return ok && !out->failed;
}

bool sms__hdr_encode(const char *utf8, unsigned start_col, sms__buf *out)
{
    sms_return_val_if_fail(utf8 != NULL && out != NULL, false);
    sms__hdr e;
    sms__hdr_init(&e, start_col);
    sms__hdr_update(&e, (const uint8_t *)utf8, strlen(utf8));
    return sms__hdr_final(&e, out);
}

/* ==== RFC 2045 / RFC 2231 parameters =================================== */

/* A parameter line may get the ";" of a following parameter appended, so
 * it keeps one column free for it. */
#define PARAM_LINE_MAX (SMS_LINE_MAX - 1)

/* RFC 2231 attribute-char: what may appear unencoded in an extended value. */
static bool is_attr_char(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("!#$&+-.^_`|~", c) != NULL);
}

static size_t pct_len(const uint8_t *p, size_t n)
{
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += is_attr_char(p[i]) ? 1 : 3;
    return len;
}

static void pct_write(sms__buf *out, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (is_attr_char(p[i])) {
            sms__buf_append(out, p + i, 1);
        } else {
            char t[3] = { '%', hex_upper[p[i] >> 4], hex_upper[p[i] & 15] };
            sms__buf_append(out, t, 3);
        }
    }
}

/* name="value" if that fits one line: the form every reader understands. */
static bool param_write_quoted(sms__buf *out, const char *name, const uint8_t *v, size_t n)
{
    size_t len = 1 + strlen(name) + 3; /* SP name = "" */
    for (size_t i = 0; i < n; i++) {
        if (v[i] > 0x7e)
            return false;
        len += (v[i] == '"' || v[i] == '\\') ? 2 : 1;
    }
    if (len > PARAM_LINE_MAX)
        return false;
    sms__buf_printf(out, ";\r\n %s=\"", name);
    for (size_t i = 0; i < n; i++) {
        if (v[i] == '"' || v[i] == '\\')
            sms__buf_append(out, "\\", 1);
        sms__buf_append(out, v + i, 1);
    }
    sms__buf_append(out, "\"", 1);
    return true;
}

/* name*0*=utf-8''..., name*1*=..., each segment holding whole characters.
 * Returns false, having written nothing, if the name leaves no room. */
static bool param_write_continued(sms__buf *out, const char *name, const uint8_t *v, size_t n)
{
    size_t mark = out->len;
    size_t i = 0;
    for (size_t seg = 0; i < n; seg++) {
        size_t line_start = out->len + 3; /* after ";\r\n" */
        sms__buf_printf(out, ";\r\n %s*%zu*=%s", name, seg, seg == 0 ? "utf-8''" : "");
        size_t col = out->len - line_start;
        size_t start = i;
        while (i < n) {
            size_t k = utf8_seq_len(v, n, i);
            size_t w = pct_len(v + i, k);
            if (col + w > PARAM_LINE_MAX)
                break;
            col += w;
            i += k;
        }
        if (i == start) {
            out->len = mark;
            return false;
        }
        pct_write(out, v + start, i - start);
    }
    return true;
}

/* A parameter name is a token, and "*" and "'" would confuse RFC 2231. */
static bool param_name_ok(const char *name)
{
    if (!*name || strlen(name) > 40)
        return false;
    for (const char *p = name; *p; p++)
        if (!is_attr_char((uint8_t)*p) || *p == '*' || *p == '%' || *p == '\'')
            return false;
    return true;
}

bool sms__mime_param(sms__buf *out, const char *name, const char *utf8_value)
{
    sms_return_val_if_fail(out != NULL && name != NULL && utf8_value != NULL, false);
    const uint8_t *v = (const uint8_t *)utf8_value;
    size_t n = strlen(utf8_value);
    if (!param_name_ok(name) || !sms__utf8_valid(v, n))
        return false;
    for (size_t i = 0; i < n; i++)
        if (v[i] < 0x20 || v[i] == 0x7f)
            return false;

    if (param_write_quoted(out, name, v, n))
        return !out->failed;
    size_t single = 1 + strlen(name) + 2 + 7 + pct_len(v, n); /* SP name *= utf-8'' */
    if (single <= PARAM_LINE_MAX) {
        sms__buf_printf(out, ";\r\n %s*=utf-8''", name);
        pct_write(out, v, n);
        return !out->failed;
    }
    return param_write_continued(out, name, v, n) && !out->failed;
}
