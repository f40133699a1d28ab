/* Unit tests for the encoders in encode.c: base64, quoted-printable,
 * RFC 2047 header words, RFC 2231 parameters, UTF-8 validation. */
#include "config.h"

#include <string.h>

#include <glib.h>

#include "sms-private.h"

/* ==== shared helpers ================================================== */

/* An encoder run: feed in[0..len) in pieces cut at cuts[0..ncuts) (sorted,
 * possibly 0 or len, so empty pieces happen too) and return the output. */
typedef GByteArray *(*encode_fn)(const uint8_t *in, size_t len, const size_t *cuts, size_t ncuts);

/* Whole, one byte at a time, and cut in two at every offset must all give
 * the same bytes. */
static void check_streaming(encode_fn fn, const uint8_t *in, size_t len)
{
    GByteArray *whole = fn(in, len, NULL, 0);
    size_t *cuts = g_new(size_t, len + 1);
    for (size_t i = 0; i + 1 < len; i++)
        cuts[i] = i + 1;
    GByteArray *bytewise = fn(in, len, cuts, len > 1 ? len - 1 : 0);
    g_assert_cmpmem(bytewise->data, bytewise->len, whole->data, whole->len);
    g_byte_array_unref(bytewise);
    for (size_t k = 0; k <= len; k++) {
        cuts[0] = k;
        GByteArray *split = fn(in, len, cuts, 1);
        g_assert_cmpmem(split->data, split->len, whole->data, whole->len);
        g_byte_array_unref(split);
    }
    g_free(cuts);
    g_byte_array_unref(whole);
}

/* Piece p of a cut input. */
static void piece(size_t len, const size_t *cuts, size_t ncuts, size_t p, size_t *start,
                  size_t *plen)
{
    size_t a = p == 0 ? 0 : cuts[p - 1];
    size_t b = p == ncuts ? len : cuts[p];
    *start = a;
    *plen = b - a;
}

static GByteArray *bytes_of(const void *p, size_t n)
{
    GByteArray *a = g_byte_array_new();
    g_byte_array_append(a, p, (guint)n);
    return a;
}

/* Split at CRLF; fails on a CR or LF that is not part of a CRLF. */
static char **split_crlf(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\r') {
            g_assert_true(i + 1 < n && s[i + 1] == '\n');
            i++;
        } else {
            g_assert_true(s[i] != '\n');
        }
    }
    char *str = n ? g_strndup((const char *)s, n) : g_strdup("");
    g_assert_cmpuint(strlen(str), ==, n); /* no NUL in the output */
    char **lines = g_strsplit(str, "\r\n", -1);
    g_free(str);
    return lines;
}

static gboolean contains(const uint8_t *s, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= n; i++)
        if (memcmp(s + i, needle, m) == 0)
            return TRUE;
    return FALSE;
}

/* ==== base64 ========================================================== */

/* Each update writes into a buffer of exactly sms__b64_bound(piece) bytes,
 * so the sanitizers and valgrind see any write past the bound. */
static GByteArray *b64_run(const uint8_t *in, size_t len, const size_t *cuts, size_t ncuts)
{
    GByteArray *res = g_byte_array_new();
    sms__b64 e;
    sms__b64_init(&e);
    for (size_t p = 0; p <= ncuts; p++) {
        size_t start, n;
        piece(len, cuts, ncuts, p, &start, &n);
        size_t bound = sms__b64_bound(n);
        uint8_t *out = g_malloc(bound);
        size_t w = sms__b64_update(&e, in + start, n, out);
        g_assert_cmpuint(w, <=, bound);
        g_byte_array_append(res, out, (guint)w);
        g_free(out);
    }
    size_t bound = sms__b64_bound(0);
    uint8_t *out = g_malloc(bound);
    size_t w = sms__b64_final(&e, out);
    g_assert_cmpuint(w, <=, bound);
    g_byte_array_append(res, out, (guint)w);
    g_free(out);
    return res;
}

static GByteArray *b64_whole(const uint8_t *in, size_t len)
{
    return b64_run(in, len, NULL, 0);
}

/* Lines of exactly 76 characters but the last (1-76), CRLF between them
 * and not after the last; returns the base64 text without line breaks. */
static char *b64_check_lines(const GByteArray *enc)
{
    if (enc->len == 0)
        return g_strdup("");
    g_assert_false(contains(enc->data, enc->len, "\r\n\r\n"));
    char **lines = split_crlf(enc->data, enc->len);
    guint n = g_strv_length(lines);
    GString *joined = g_string_new(NULL);
    for (guint i = 0; i < n; i++) {
        size_t l = strlen(lines[i]);
        if (i + 1 < n)
            g_assert_cmpuint(l, ==, 76);
        else
            g_assert_cmpuint(l, >=, 1);
        g_assert_cmpuint(l, <=, 76);
        g_assert_cmpuint(l % 4, ==, 0);
        g_string_append(joined, lines[i]);
    }
    g_strfreev(lines);
    return g_string_free(joined, FALSE);
}

static void b64_check_roundtrip(const uint8_t *in, size_t len, const GByteArray *enc)
{
    char *text = b64_check_lines(enc);
    g_assert_cmpuint(strlen(text), ==, (len + 2) / 3 * 4);
    gsize dlen = 0;
    guchar *dec = g_base64_decode(text, &dlen);
    g_assert_cmpmem(dec, dlen, in, len);
    g_free(dec);
    g_free(text);
}

static void test_b64_rfc4648(void)
{
    static const struct {
        const char *in, *out;
    } v[] = {
        { "", "" },          { "f", "Zg==" },         { "fo", "Zm8=" },
        { "foo", "Zm9v" },   { "foob", "Zm9vYg==" },  { "fooba", "Zm9vYmE=" },
        { "foobar", "Zm9vYmFy" },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(v); i++) {
        GByteArray *enc = b64_whole((const uint8_t *)v[i].in, strlen(v[i].in));
        g_assert_cmpmem(enc->data, enc->len, v[i].out, strlen(v[i].out));
        g_byte_array_unref(enc);
    }
    /* Empty updates, even without a buffer, change nothing. */
    sms__b64 e0;
    sms__b64_init(&e0);
    uint8_t o0[16];
    g_assert_cmpuint(sms__b64_update(&e0, NULL, 0, o0), ==, 0);
    g_assert_cmpuint(sms__b64_update(&e0, (const uint8_t *)"f", 1, o0), ==, 0);
    g_assert_cmpuint(sms__b64_update(&e0, NULL, 0, o0), ==, 0);
    g_assert_cmpuint(sms__b64_final(&e0, o0), ==, 4);
    g_assert_cmpmem(o0, 4, "Zg==", 4);

    /* One encoder reused after final starts afresh. */
    sms__b64 e;
    uint8_t out[64];
    sms__b64_init(&e);
    for (int round = 0; round < 2; round++) {
        size_t n = sms__b64_update(&e, (const uint8_t *)"fooba", 5, out);
        n += sms__b64_final(&e, out + n);
        g_assert_cmpmem(out, n, "Zm9vYmE=", 8);
    }
}

/* The exact line breaks around 57-byte (one line) multiples. */
static void test_b64_crlf_placement(void)
{
    uint8_t in[200];
    memset(in, 0, sizeof in);
    const char *line = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    g_assert_cmpuint(strlen(line), ==, 76);

    GByteArray *enc = b64_whole(in, 57);
    g_assert_cmpmem(enc->data, enc->len, line, 76);
    g_byte_array_unref(enc);

    enc = b64_whole(in, 58);
    char *want = g_strconcat(line, "\r\nAA==", NULL);
    g_assert_cmpmem(enc->data, enc->len, want, strlen(want));
    g_free(want);
    g_byte_array_unref(enc);

    enc = b64_whole(in, 114);
    want = g_strconcat(line, "\r\n", line, NULL);
    g_assert_cmpmem(enc->data, enc->len, want, strlen(want));
    g_free(want);
    g_byte_array_unref(enc);

    enc = b64_whole(in, 56);
    g_assert_cmpuint(enc->len, ==, 76);
    g_assert_cmpmem(enc->data + 72, 4, "AAA=", 4);
    g_byte_array_unref(enc);
}

static uint8_t *random_bytes(GRand *r, size_t n)
{
    uint8_t *p = g_malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)g_rand_int_range(r, 0, 256);
    return p;
}

static void test_b64_random_roundtrip(void)
{
    GRand *r = g_rand_new_with_seed(2045);
    for (size_t len = 0; len < 400; len++) {
        uint8_t *in = random_bytes(r, len);
        GByteArray *enc = b64_whole(in, len);
        b64_check_roundtrip(in, len, enc);
        g_byte_array_unref(enc);
        g_free(in);
    }
    /* Larger inputs in random-sized pieces. */
    for (int round = 0; round < 20; round++) {
        size_t len = (size_t)g_rand_int_range(r, 1000, 200000);
        uint8_t *in = random_bytes(r, len);
        size_t cuts[64], n = 0;
        for (size_t c = 0; n < G_N_ELEMENTS(cuts); n++) {
            c += (size_t)g_rand_int_range(r, 0, (gint32)(len / 16));
            if (c > len)
                break;
            cuts[n] = c;
        }
        GByteArray *enc = b64_run(in, len, cuts, n);
        b64_check_roundtrip(in, len, enc);
        GByteArray *whole = b64_whole(in, len);
        g_assert_cmpmem(enc->data, enc->len, whole->data, whole->len);
        g_byte_array_unref(whole);
        g_byte_array_unref(enc);
        g_free(in);
    }
    g_rand_free(r);
}

static void test_b64_split_every_offset(void)
{
    GRand *r = g_rand_new_with_seed(4648);
    static const size_t lens[] = { 0, 1, 2, 3, 4, 5, 56, 57, 58, 59, 113, 114, 115, 116, 171, 250 };
    for (size_t i = 0; i < G_N_ELEMENTS(lens); i++) {
        uint8_t *in = random_bytes(r, lens[i]);
        check_streaming(b64_run, in, lens[i]);
        g_free(in);
    }
    g_rand_free(r);
}

/* update(len) + final fits in sms__b64_bound(len) whatever came before:
 * the prefixes reach every carry (0-2) at every column. */
static void test_b64_bound(void)
{
    uint8_t in[400];
    for (size_t i = 0; i < sizeof in; i++)
        in[i] = (uint8_t)(i * 7 + 1);
    for (size_t prefix = 0; prefix <= 3 * 57 + 2; prefix++) {
        for (size_t len = 0; len <= 200; len++) {
            sms__b64 e;
            sms__b64_init(&e);
            uint8_t *pre = g_malloc(sms__b64_bound(prefix));
            sms__b64_update(&e, in, prefix, pre);
            g_free(pre);
            size_t bound = sms__b64_bound(len);
            uint8_t *out = g_malloc(bound);
            size_t w = sms__b64_update(&e, in + prefix, len, out);
            g_assert_cmpuint(w, <=, bound);
            /* final may use what update left of the bound */
            uint8_t tail[8];
            size_t t = sms__b64_final(&e, tail);
            g_assert_cmpuint(t, <=, sizeof tail);
            g_assert_cmpuint(w + t, <=, bound);
            g_free(out);
        }
    }
    g_assert_cmpuint(sms__b64_bound(SIZE_MAX), ==, SIZE_MAX);
    g_assert_cmpuint(sms__b64_bound(SIZE_MAX / 2), >, SIZE_MAX / 2);
}

static void test_b64_all_bytes_1mib(void)
{
    size_t len = 1u << 20;
    uint8_t *in = g_malloc(len);
    for (size_t i = 0; i < len; i++)
        in[i] = (uint8_t)(i ^ (i >> 8)); /* every value, in changing order */
    /* Pieces of awkward sizes, as a reader might return them. */
    size_t cuts[2048], n = 0;
    for (size_t c = 1; c < len && n < G_N_ELEMENTS(cuts); n++) {
        cuts[n] = c;
        c += 1 + (n * 997) % 4001;
    }
    GByteArray *enc = b64_run(in, len, cuts, n);
    b64_check_roundtrip(in, len, enc);
    g_byte_array_unref(enc);
    g_free(in);
}

/* ==== quoted-printable ================================================ */

static GByteArray *qp_run(const uint8_t *in, size_t len, const size_t *cuts, size_t ncuts)
{
    sms__qp e;
    sms__buf out;
    sms__qp_init(&e);
    sms__buf_init(&out);
    for (size_t p = 0; p <= ncuts; p++) {
        size_t start, n;
        piece(len, cuts, ncuts, p, &start, &n);
        sms__qp_update(&e, in + start, n, &out);
    }
    sms__qp_final(&e, &out);
    g_assert_false(out.failed);
    GByteArray *res = bytes_of(out.data, out.len);
    sms__buf_free(&out);
    return res;
}

static GByteArray *qp_whole(const char *s, size_t len)
{
    return qp_run((const uint8_t *)s, len, NULL, 0);
}

/* The input as it must come out of decoding: LF made CRLF. */
static GByteArray *canonical(const uint8_t *in, size_t len)
{
    GByteArray *a = g_byte_array_new();
    for (size_t i = 0; i < len; i++) {
        if (in[i] == '\n' && (i == 0 || in[i - 1] != '\r'))
            g_byte_array_append(a, (const guint8 *)"\r", 1);
        g_byte_array_append(a, in + i, 1);
    }
    return a;
}

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A strict decoder, written independently of the encoder: "=" must start
 * a soft break or two upper-case hex digits. */
static GByteArray *qp_decode(const uint8_t *s, size_t n)
{
    GByteArray *a = g_byte_array_new();
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '=') {
            g_byte_array_append(a, s + i, 1);
            continue;
        }
        g_assert_cmpuint(i + 2, <, n);
        if (s[i + 1] == '\r' && s[i + 2] == '\n') {
            i += 2;
            continue;
        }
        int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
        g_assert_cmpint(hi, >=, 0);
        g_assert_cmpint(lo, >=, 0);
        uint8_t c = (uint8_t)(hi << 4 | lo);
        g_byte_array_append(a, &c, 1);
        i += 2;
    }
    return a;
}

/* Everything the transport-safety promises say about encoded output. */
static void qp_check_output(const GByteArray *enc)
{
    g_assert_false(contains(enc->data, enc->len, "=_"));
    for (size_t i = 0; i < enc->len; i++) {
        uint8_t c = enc->data[i];
        g_assert_true(c == '\r' || c == '\n' || c == '\t' || (c >= 0x20 && c <= 0x7e));
    }
    char **lines = split_crlf(enc->data, enc->len);
    for (char **l = lines; *l; l++) {
        size_t n = strlen(*l);
        g_assert_cmpuint(n, <=, 76);
        g_assert_false(g_str_has_prefix(*l, "--"));
        g_assert_false(g_str_has_prefix(*l, "From "));
        g_assert_false(g_str_has_prefix(*l, "."));
        if (n > 0)
            g_assert_true((*l)[n - 1] != ' ' && (*l)[n - 1] != '\t');
    }
    g_strfreev(lines);
}

static void qp_check_roundtrip(const uint8_t *in, size_t len)
{
    GByteArray *enc = qp_run(in, len, NULL, 0);
    qp_check_output(enc);
    GByteArray *dec = qp_decode(enc->data, enc->len);
    GByteArray *want = canonical(in, len);
    g_assert_cmpmem(dec->data, dec->len, want->data, want->len);
    g_byte_array_unref(want);
    g_byte_array_unref(dec);
    g_byte_array_unref(enc);
}

static void test_qp_known(void)
{
    static const struct {
        const char *in, *out;
    } v[] = {
        { "", "" },
        { "hello", "hello" },
        { "hello\n", "hello\r\n" },
        { "a\r\nb\nc", "a\r\nb\r\nc" },
        { "\n\n", "\r\n\r\n" },
        { "a=b", "a=3Db" },
        { "a=_b", "a=3D_b" },
        { "caf\xc3\xa9", "caf=C3=A9" },
        { "a \nb\t\r\n", "a=20\r\nb=09\r\n" },
        { "a  b\tc", "a  b\tc" },
        { "end ", "end=20" },
        { "two  ", "two =20" },
        { "a\rb", "a=0Db" },
        { "a\r", "a=0D" },
        { "\r\r\n", "=0D\r\n" },
        { "x\x01y\x7f", "x=01y=7F" },
        { "From me\n", "=46rom me\r\n" },
        { "x\nFrom me", "x\r\n=46rom me" },
        { "Fromage\nFrom", "Fromage\r\nFrom" },
        { "x From y", "x From y" },
        { ".\n", "=2E\r\n" },
        { "a.b\n.x", "a.b\r\n=2Ex" },
        { "--boundary\n", "=2D-boundary\r\n" },
        { "-x\n- -", "-x\r\n- -" },
        { "a--", "a--" },
        { "\tx", "\tx" },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(v); i++) {
        GByteArray *enc = qp_whole(v[i].in, strlen(v[i].in));
        g_assert_cmpmem(enc->data, enc->len, v[i].out, strlen(v[i].out));
        g_byte_array_unref(enc);
    }
    /* Empty updates without a buffer are harmless. */
    sms__qp e;
    sms__buf out;
    sms__qp_init(&e);
    sms__buf_init(&out);
    sms__qp_update(&e, NULL, 0, &out);
    sms__qp_update(&e, (const uint8_t *)"a.", 2, &out);
    sms__qp_update(&e, NULL, 0, &out);
    sms__qp_final(&e, &out);
    g_assert_cmpmem(out.data, out.len, "a.", 2);
    sms__buf_free(&out);

    /* A NUL is just another control character. */
    GByteArray *enc = qp_whole("a\0b", 3);
    g_assert_cmpmem(enc->data, enc->len, "a=00b", 5);
    g_byte_array_unref(enc);
}

static char *repeat(char c, size_t n)
{
    char *s = g_malloc(n + 1);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* Soft breaks: 75 characters and "=", the last character of a line may
 * use column 76, and the rules for line starts apply after soft breaks. */
static void test_qp_soft_breaks(void)
{
    /* Input: n "a" then rest; output: keep "a" then out. */
    static const struct {
        size_t n;
        const char *rest;
        size_t keep;
        const char *out;
    } v[] = {
        { 76, "", 76, "" },                     /* 76 fit on the last line */
        { 76, "\n", 76, "\r\n" },
        { 77, "", 75, "=\r\naa" },              /* break before the 76th */
        { 75, "=", 75, "=\r\n=3D" },            /* an escape is never split */
        { 73, "=", 73, "=3D" },                 /* last on its line: column 76 */
        { 73, "=\n", 73, "=3D\r\n" },
        { 73, "=b", 73, "=\r\n=3Db" },
        { 74, " ", 74, "=\r\n=20" },
        { 74, " bc", 74, " =\r\nbc" },          /* a space before a soft break */
        { 74, " b", 74, " b" },
        { 75, ".b", 75, "=\r\n=2Eb" },          /* line-start rules after a soft break */
        { 75, "From x", 75, "=\r\n=46rom x" },
        { 75, "--x", 75, "=\r\n=2D-x" },
        { 75, "\xc3\xa9", 75, "=\r\n=C3=A9" },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(v); i++) {
        char *pre = repeat('a', v[i].n), *kept = repeat('a', v[i].keep);
        char *in = g_strconcat(pre, v[i].rest, NULL);
        char *want = g_strconcat(kept, v[i].out, NULL);
        GByteArray *enc = qp_whole(in, strlen(in));
        g_assert_cmpmem(enc->data, enc->len, want, strlen(want));
        qp_check_output(enc);
        g_byte_array_unref(enc);
        g_free(in);
        g_free(want);
        g_free(kept);
        g_free(pre);
    }
    /* Every prefix length around the break with every special start. */
    static const char *const tails[] = { "From x", ".x", "--x", "=x", "\xc3\xa9x", " \n", "\t",
                                         "a\r", "F" };
    for (size_t pl = 60; pl <= 160; pl++) {
        for (size_t t = 0; t < G_N_ELEMENTS(tails); t++) {
            char *p = repeat('x', pl);
            char *in = g_strconcat(p, tails[t], "\n", p, tails[t], NULL);
            qp_check_roundtrip((const uint8_t *)in, strlen(in));
            g_free(in);
            g_free(p);
        }
    }
}

/* Text built from the characters the rules care about. */
static char *qp_random_text(GRand *r, size_t len)
{
    static const char *const atoms[] = { "a", "b", "F", "From ", " ", "  ", "\t", ".", "-", "--",
                                         "=", "_", "=_", "\r", "\n", "\r\n", "\xc3\xa9",
                                         "\xe2\x82\xac", "\x01", "\x7f", "xxxxxxxxxxxxxxxxxxxx" };
    GString *s = g_string_new(NULL);
    while (s->len < len)
        g_string_append(s, atoms[g_rand_int_range(r, 0, G_N_ELEMENTS(atoms))]);
    g_string_truncate(s, len);
    return g_string_free(s, FALSE);
}

static void test_qp_properties(void)
{
    GRand *r = g_rand_new_with_seed(2045);
    for (int round = 0; round < 3000; round++) {
        size_t len = (size_t)g_rand_int_range(r, 0, round < 2000 ? 200 : 3000);
        char *t = qp_random_text(r, len);
        qp_check_roundtrip((const uint8_t *)t, len);
        g_free(t);
    }
    /* Arbitrary bytes, too. */
    for (int round = 0; round < 200; round++) {
        size_t len = (size_t)g_rand_int_range(r, 0, 1000);
        uint8_t *in = random_bytes(r, len);
        qp_check_roundtrip(in, len);
        g_free(in);
    }
    g_rand_free(r);
}

static void test_qp_split_every_offset(void)
{
    GRand *r = g_rand_new_with_seed(6);
    static const char *const fixed[] = {
        "",
        "From here\r\nFrom\n.\n--x\n-\na \nb\t\r\nend ",
        "\r\r\n\r\n\n\r",
        "x\r",
        "Grüße aus München, €100 = viel Geld.\nFrom: nobody\n",
    };
    for (size_t i = 0; i < G_N_ELEMENTS(fixed); i++)
        check_streaming(qp_run, (const uint8_t *)fixed[i], strlen(fixed[i]));
    for (int round = 0; round < 40; round++) {
        size_t len = (size_t)g_rand_int_range(r, 1, 260);
        char *t = qp_random_text(r, len);
        check_streaming(qp_run, (const uint8_t *)t, len);
        g_free(t);
    }
    g_rand_free(r);
}

static gboolean is_7bit(const char *s)
{
    return sms__text_is_7bit_safe((const uint8_t *)s, strlen(s));
}

static void test_qp_7bit_safe(void)
{
    char *l76 = repeat('a', 76), *l77 = repeat('a', 77);
    g_assert_true(is_7bit(""));
    g_assert_true(is_7bit("hello"));
    g_assert_true(is_7bit("hello\r\nworld\n\n"));
    g_assert_true(is_7bit("a=b, a-b, Fromage, x.y, -x, x--"));
    g_assert_true(is_7bit(l76));
    g_assert_false(is_7bit(l77));
    g_assert_false(is_7bit("a \nb"));
    g_assert_false(is_7bit("a "));
    g_assert_false(is_7bit("From x"));
    g_assert_false(is_7bit("x\nFrom x"));
    g_assert_false(is_7bit(".x"));
    g_assert_false(is_7bit("x\r\n."));
    g_assert_false(is_7bit("--x"));
    g_assert_false(is_7bit("a=_b"));
    g_assert_false(is_7bit("a\tb"));
    g_assert_false(is_7bit("caf\xc3\xa9"));
    g_assert_false(is_7bit("a\rb"));
    g_assert_false(is_7bit("a\r"));
    g_assert_false(is_7bit("a\x01"));
    g_assert_false(is_7bit("a\x7f"));
    g_assert_false(sms__text_is_7bit_safe((const uint8_t *)"a\0b", 3));
    g_free(l76);
    g_free(l77);

    /* Whatever is 7bit-safe (and has no "=", which QP must escape) comes
     * out of the QP encoder unchanged, so the two agree. */
    GRand *r = g_rand_new_with_seed(7);
    static const char *const atoms[] = { "a", "b", "F", "From ", " ", ".", "-", "--", "\n",
                                         "\r\n", "xxxxxxxxxxxxxxx" };
    int n_safe = 0;
    for (int round = 0; round < 3000; round++) {
        GString *s = g_string_new(NULL);
        size_t len = (size_t)g_rand_int_range(r, 0, 300);
        while (s->len < len)
            g_string_append(s, atoms[g_rand_int_range(r, 0, G_N_ELEMENTS(atoms))]);
        if (sms__text_is_7bit_safe((const uint8_t *)s->str, s->len)) {
            n_safe++;
            GByteArray *enc = qp_whole(s->str, s->len);
            GByteArray *want = canonical((const uint8_t *)s->str, s->len);
            g_assert_cmpmem(enc->data, enc->len, want->data, want->len);
            g_byte_array_unref(want);
            g_byte_array_unref(enc);
        }
        g_string_free(s, TRUE);
    }
    g_assert_cmpint(n_safe, >, 100);
    g_rand_free(r);
}

/* ==== RFC 2047 header values ========================================== */

/* Output prefixed with "OK:" or "FAIL:" so failures compare too. */
static GByteArray *hdr_run_col(const uint8_t *in, size_t len, const size_t *cuts, size_t ncuts,
                               unsigned start_col)
{
    sms__hdr e;
    sms__buf out;
    sms__hdr_init(&e, start_col);
    sms__buf_init(&out);
    for (size_t p = 0; p <= ncuts; p++) {
        size_t start, n;
        piece(len, cuts, ncuts, p, &start, &n);
        sms__hdr_update(&e, in + start, n);
    }
    bool ok = sms__hdr_final(&e, &out);
    GByteArray *res = bytes_of(ok ? "OK:" : "FAIL:", ok ? 3 : 5);
    g_byte_array_append(res, out.data ? out.data : (const uint8_t *)"", (guint)out.len);
    sms__buf_free(&out);
    return res;
}

static GByteArray *hdr_run(const uint8_t *in, size_t len, const size_t *cuts, size_t ncuts)
{
    return hdr_run_col(in, len, cuts, ncuts, 9);
}

static char *hdr_encode(const char *s, unsigned start_col)
{
    sms__buf out;
    sms__buf_init(&out);
    bool ok = sms__hdr_encode(s, start_col, &out);
    char *res = ok ? g_strndup(out.data ? (const char *)out.data : "", out.len) : NULL;
    sms__buf_free(&out);
    return res;
}

/* Check the folding and word limits and return the decoded value. */
static char *hdr_decode(const char *enc, unsigned start_col)
{
    char **lines = split_crlf((const uint8_t *)enc, strlen(enc));
    gboolean words = strstr(enc, "=?") != NULL;
    GString *val = g_string_new(NULL);
    for (guint i = 0; lines[i]; i++) {
        const char *l = lines[i];
        if (i > 0 || *l) /* an empty first line: the name alone was too long */
            g_assert_cmpuint((i == 0 ? start_col : 0) + strlen(l), <=, 76);
        if (i > 0) {
            g_assert_true(l[0] == ' ');
            g_assert_true(l[strspn(l, " ")] != '\0'); /* no whitespace-only line */
        }
        if (!words) {
            g_string_append(val, l); /* unfolding removes just the CRLF */
            continue;
        }
        if (i > 0)
            l++;
        if (i == 0 && *l == '\0')
            continue; /* folded before the first word */
        size_t n = strlen(l);
        g_assert_cmpuint(n, <=, 75);
        g_assert_true(g_str_has_prefix(l, "=?UTF-8?B?") && g_str_has_suffix(l, "?="));
        char *b64 = g_strndup(l + 10, n - 12);
        g_assert_cmpuint(strspn(b64, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                     "0123456789+/="),
                         ==, strlen(b64));
        gsize dlen = 0;
        guchar *dec = g_base64_decode(b64, &dlen);
        g_assert_cmpuint(dlen, >, 0);
        g_assert_true(g_utf8_validate((const char *)dec, (gssize)dlen, NULL));
        g_string_append_len(val, (const char *)dec, (gssize)dlen);
        g_free(dec);
        g_free(b64);
    }
    g_strfreev(lines);
    return g_string_free(val, FALSE);
}

static void check_hdr_roundtrip(const char *value, unsigned start_col, gboolean want_words)
{
    char *enc = hdr_encode(value, start_col);
    g_assert_nonnull(enc);
    g_assert_cmpint(strstr(enc, "=?UTF-8?B?") == enc || (*enc == '\r' && want_words), ==,
                    want_words);
    char *dec = hdr_decode(enc, start_col);
    g_assert_cmpstr(dec, ==, value);
    g_free(dec);
    g_free(enc);
}

static void test_hdr_ascii(void)
{
    char *enc = hdr_encode("Quarterly report, draft 2 (final!)", 9);
    g_assert_cmpstr(enc, ==, "Quarterly report, draft 2 (final!)");
    g_free(enc);
    enc = hdr_encode("", 9);
    g_assert_cmpstr(enc, ==, "");
    g_free(enc);

    /* Long ASCII is folded at spaces, not encoded. */
    const char *longv = "This is a rather long subject line that goes on and on, well past the "
                        "seventy-six columns a header line should keep to, with  double spaces "
                        "and trailing ones   ";
    enc = hdr_encode(longv, 9);
    g_assert_null(strstr(enc, "=?"));
    g_assert_nonnull(strstr(enc, "\r\n "));
    g_free(enc);
    check_hdr_roundtrip(longv, 9, FALSE);
    check_hdr_roundtrip("   leading spaces", 9, FALSE);

    /* A word longer than a line (a msg-id, a URL) stays plain on a long
     * line: encoded-words are not allowed inside those (RFC 2047 §5). */
    char *x = repeat('x', 100);
    enc = hdr_encode(x, 9);
    g_assert_cmpstr(enc, ==, x);
    g_free(enc);
    g_free(x);
    enc = hdr_encode("<CAJfq0Fw-very-long-message-id-from-a-big-mail-provider-1234567890@mail.example.com>", 13);
    g_assert_null(strstr(enc, "=?"));
    g_free(enc);
    /* Past the 998-column hard limit, and text that would be mistaken for
     * an encoded-word, are encoded. */
    x = repeat('x', 1000);
    check_hdr_roundtrip(x, 9, TRUE);
    g_free(x);
    check_hdr_roundtrip("=?UTF-8?B?Zm9v?=", 9, TRUE);
    check_hdr_roundtrip("tab\there", 9, TRUE);
}

static void test_hdr_non_ascii(void)
{
    char *enc = hdr_encode("Grüße", 9);
    g_assert_cmpstr(enc, ==, "=?UTF-8?B?R3LDvMOfZQ==?=");
    g_free(enc);

    const char *subject = "Quartalsbericht für Müller & Söhne – 会議の議事録と来週の予定について"
                          "のご連絡 🎉🚀 Grüße aus Köln, Straße 5, and a little more ASCII text "
                          "at the end to make it really long 😀";
    for (unsigned col = 0; col <= 80; col++)
        check_hdr_roundtrip(subject, col, TRUE);
    check_hdr_roundtrip("🎉", 9, TRUE);
    check_hdr_roundtrip("🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉", 60, TRUE);

    /* Words hold as much as fits: 45 bytes on continuation lines. */
    enc = hdr_encode(subject, 9);
    char **lines = g_strsplit(enc, "\r\n", -1);
    g_assert_cmpuint(g_strv_length(lines), >, 3);
    g_assert_cmpuint(strlen(lines[1]), >=, 1 + 12 + 56);
    g_strfreev(lines);
    g_free(enc);
}

static void test_hdr_invalid(void)
{
    static const char *const bad[] = { "a\rb", "a\nb", "line\r\n", "\xff", "caf\xc3",
                                       "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80" };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        sms__buf out;
        sms__buf_init(&out);
        g_assert_false(sms__hdr_encode(bad[i], 9, &out));
        sms__buf_free(&out);
    }
    GByteArray *r = hdr_run((const uint8_t *)"a\0b", 3, NULL, 0);
    g_assert_cmpmem(r->data, 5, "FAIL:", 5);
    g_byte_array_unref(r);

    /* Longer than a header value may be. */
    char *huge = repeat('a', SMS_MAX_HEADER_VALUE + 1);
    sms__buf out;
    sms__buf_init(&out);
    g_assert_false(sms__hdr_encode(huge, 9, &out));
    huge[SMS_MAX_HEADER_VALUE] = '\0';
    g_assert_true(sms__hdr_encode(huge, 9, &out));
    sms__buf_free(&out);
    g_free(huge);
}

static void test_hdr_split_every_offset(void)
{
    static const char *const v[] = {
        "", "plain", "Grüße 🎉 aus Köln", "a\xff", "ok\r\n",
        "Sehr lange Betreffzeile mit Umlauten äöü und Emoji 😀😀 und japanischem Text 日本語",
        "A long ASCII subject that is folded at the spaces because it exceeds the line limit",
    };
    for (size_t i = 0; i < G_N_ELEMENTS(v); i++)
        check_streaming(hdr_run, (const uint8_t *)v[i], strlen(v[i]));
}

/* ==== RFC 2231 parameters ============================================= */

static char *param(const char *name, const char *value)
{
    sms__buf out;
    sms__buf_init(&out);
    bool ok = sms__mime_param(&out, name, value);
    char *res = ok ? g_strndup((const char *)out.data, out.len) : NULL;
    if (!ok)
        g_assert_cmpuint(out.len, ==, 0); /* nothing written on failure */
    sms__buf_free(&out);
    return res;
}

static GByteArray *pct_decode(const char *s)
{
    GByteArray *a = g_byte_array_new();
    for (size_t i = 0; s[i]; i++) {
        uint8_t c = (uint8_t)s[i];
        if (c == '%') {
            int hi = hexval((uint8_t)s[i + 1]);
            g_assert_cmpint(hi, >=, 0);
            int lo = hexval((uint8_t)s[i + 2]);
            g_assert_cmpint(lo, >=, 0);
            c = (uint8_t)(hi << 4 | lo);
            i += 2;
        } else {
            g_assert_true(g_ascii_isalnum(c) || strchr("!#$&+-.^_`|~", c));
        }
        g_byte_array_append(a, &c, 1);
    }
    return a;
}

/* Parse what sms__mime_param wrote for `name` back into the value,
 * checking the line limit and that each segment is whole UTF-8. */
static char *param_decode(const char *enc, const char *name, guint *ret_segments)
{
    g_assert_true(g_str_has_prefix(enc, ";\r\n "));
    /* Lines of at most 76 characters, counting the ";" that ends each one
     * and that a following parameter would add to the last. */
    char **lines = split_crlf((const uint8_t *)enc, strlen(enc));
    for (guint i = 1; lines[i]; i++)
        g_assert_cmpuint(strlen(lines[i]) + (lines[i + 1] ? 0 : 1), <=, 76);
    g_strfreev(lines);
    char **parts = g_strsplit(enc + 4, ";\r\n ", -1);
    GString *val = g_string_new(NULL);
    guint n = g_strv_length(parts);
    for (guint i = 0; i < n; i++) {
        const char *p = parts[i];
        g_assert_null(strchr(p, '\r'));
        g_assert_true(g_str_has_prefix(p, name));
        p += strlen(name);
        if (g_str_has_prefix(p, "=\"")) {
            g_assert_cmpuint(n, ==, 1);
            size_t l = strlen(p);
            g_assert_true(p[l - 1] == '"');
            for (size_t k = 2; k < l - 1; k++) {
                if (p[k] == '\\')
                    k++;
                else
                    g_assert_true(p[k] != '"');
                g_string_append_c(val, p[k]);
            }
            continue;
        }
        char *prefix = n == 1 ? g_strdup("*=utf-8''") : g_strdup_printf("*%u*=%s", i,
                                                                         i == 0 ? "utf-8''" : "");
        g_assert_true(g_str_has_prefix(p, prefix));
        GByteArray *seg = pct_decode(p + strlen(prefix));
        g_assert_true(g_utf8_validate((const char *)seg->data, (gssize)seg->len, NULL));
        g_string_append_len(val, (const char *)seg->data, (gssize)seg->len);
        g_byte_array_unref(seg);
        g_free(prefix);
    }
    g_strfreev(parts);
    if (ret_segments)
        *ret_segments = n;
    return g_string_free(val, FALSE);
}

static void check_param(const char *name, const char *value, const char *want_form,
                        guint want_min_segments)
{
    char *enc = param(name, value);
    g_assert_nonnull(enc);
    g_assert_nonnull(strstr(enc, want_form));
    guint segs = 0;
    char *dec = param_decode(enc, name, &segs);
    g_assert_cmpstr(dec, ==, value);
    g_assert_cmpuint(segs, >=, want_min_segments);
    g_free(dec);
    g_free(enc);
}

static void test_param_ascii(void)
{
    char *enc = param("filename", "report.pdf");
    g_assert_cmpstr(enc, ==, ";\r\n filename=\"report.pdf\"");
    g_free(enc);
    enc = param("name", "");
    g_assert_cmpstr(enc, ==, ";\r\n name=\"\"");
    g_free(enc);
    check_param("filename", "a b;c=d,(e).txt", "filename=\"", 1);
}

static void test_param_quotes(void)
{
    char *enc = param("filename", "say \"hi\" \\ there.txt");
    g_assert_cmpstr(enc, ==, ";\r\n filename=\"say \\\"hi\\\" \\\\ there.txt\"");
    g_free(enc);
    check_param("filename", "\"\\\"", "filename=\"", 1);
}

static void test_param_non_ascii(void)
{
    char *enc = param("filename", "Überweisung März €.pdf");
    g_assert_cmpstr(enc, ==,
                    ";\r\n filename*=utf-8''%C3%9Cberweisung%20M%C3%A4rz%20%E2%82%AC.pdf");
    g_free(enc);
    check_param("filename", "Überweisung März €.pdf", "filename*=utf-8''", 1);
    check_param("name", "it's 100% \"fine\"; ok? ✓", "name*=utf-8''", 1);
}

static void test_param_continuations(void)
{
    const char *longname = "Überweisungsbestätigung für die Rechnung Nr. 2024-0815 vom "
                           "17. März über 1.234,56 € – 会議の議事録 🎉.pdf";
    check_param("filename", longname, "filename*0*=utf-8''", 3);
    char *enc = param("filename", longname);
    g_assert_nonnull(strstr(enc, ";\r\n filename*1*="));
    g_assert_null(strstr(enc, "filename*="));
    g_free(enc);

    /* ASCII too long for one quoted line. */
    char *x = repeat('x', 120);
    check_param("filename", x, "filename*0*=utf-8''", 2);
    g_free(x);

    /* Every length around the segment limits, with 1- to 4-byte
     * characters, never splits a character or a %XX. */
    static const char *const unit[] = { "a", " ", "é", "€", "🎉" };
    for (size_t u = 0; u < G_N_ELEMENTS(unit); u++) {
        GString *s = g_string_new(NULL);
        for (int k = 0; k < 80; k++) {
            g_string_append(s, unit[u]);
            char *enc2 = param("filename", s->str);
            g_assert_nonnull(enc2);
            char *dec = param_decode(enc2, "filename", NULL);
            g_assert_cmpstr(dec, ==, s->str);
            g_free(dec);
            g_free(enc2);
        }
        g_string_free(s, TRUE);
    }
}

static void test_param_invalid(void)
{
    static const char *const bad[] = { "\xff", "a\tb", "a\x01", "a\x7f", "a\r\nb", "\xc3" };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++)
        g_assert_null(param("filename", bad[i]));
    g_assert_null(param("", "x"));
    g_assert_null(param("file name", "x"));
    g_assert_null(param("file*", "x"));
    /* A name so long no character fits next to it. */
    char *n = repeat('n', 70);
    g_assert_null(param(n, "€"));
    g_free(n);
}

/* ==== UTF-8 =========================================================== */

static void test_utf8_valid(void)
{
    static const char *const good[] = { "", "abc", "\xc2\x80", "\xc3\xa9", "\xdf\xbf",
                                        "\xe0\xa0\x80", "\xe2\x82\xac", "\xed\x9f\xbf",
                                        "\xee\x80\x80", "\xef\xbf\xbf", "\xf0\x90\x80\x80",
                                        "\xf0\x9f\x8e\x89", "\xf4\x8f\xbf\xbf" };
    static const char *const bad[] = {
        "\x80", "\xbf", "\xc0\x80", "\xc1\xbf", "\xc2", "\xc2\x41", "\xe0\x80\x80",
        "\xe0\x9f\xbf", "\xe2\x82", "\xe2\x82\x41", "\xed\xa0\x80", "\xed\xbf\xbf",
        "\xf0\x80\x80\x80", "\xf0\x8f\xbf\xbf", "\xf4\x90\x80\x80", "\xf5\x80\x80\x80",
        "\xf8\x88\x80\x80\x80", "\xfe", "\xff", "\xf0\x9f\x8e", "a\xc3\xa9\xa9",
    };
    for (size_t i = 0; i < G_N_ELEMENTS(good); i++)
        g_assert_true(sms__utf8_valid((const uint8_t *)good[i], strlen(good[i])));
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++)
        g_assert_false(sms__utf8_valid((const uint8_t *)bad[i], strlen(bad[i])));
    g_assert_true(sms__utf8_valid((const uint8_t *)"a\0b", 3)); /* NUL is valid UTF-8 */

    /* Agrees with GLib on random bytes biased towards multibyte leads. */
    GRand *r = g_rand_new_with_seed(3629);
    for (int round = 0; round < 100000; round++) {
        uint8_t s[6];
        size_t n = (size_t)g_rand_int_range(r, 1, 7);
        for (size_t i = 0; i < n; i++)
            s[i] = (uint8_t)(g_rand_boolean(r) ? g_rand_int_range(r, 0x80, 0xc0)
                                               : g_rand_int_range(r, 0x01, 0x100));
        g_assert_cmpint(sms__utf8_valid(s, n), ==,
                        g_utf8_validate_len((const char *)s, n, NULL));
    }
    g_rand_free(r);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);

    g_test_add_func("/encode/base64/rfc4648", test_b64_rfc4648);
    g_test_add_func("/encode/base64/crlf-placement", test_b64_crlf_placement);
    g_test_add_func("/encode/base64/random-roundtrip", test_b64_random_roundtrip);
    g_test_add_func("/encode/base64/split-every-offset", test_b64_split_every_offset);
    g_test_add_func("/encode/base64/bound", test_b64_bound);
    g_test_add_func("/encode/base64/all-bytes-1mib", test_b64_all_bytes_1mib);

    g_test_add_func("/encode/qp/known", test_qp_known);
    g_test_add_func("/encode/qp/soft-breaks", test_qp_soft_breaks);
    g_test_add_func("/encode/qp/properties", test_qp_properties);
    g_test_add_func("/encode/qp/split-every-offset", test_qp_split_every_offset);
    g_test_add_func("/encode/qp/7bit-safe", test_qp_7bit_safe);

    g_test_add_func("/encode/header/ascii", test_hdr_ascii);
    g_test_add_func("/encode/header/non-ascii", test_hdr_non_ascii);
    g_test_add_func("/encode/header/invalid", test_hdr_invalid);
    g_test_add_func("/encode/header/split-every-offset", test_hdr_split_every_offset);

    g_test_add_func("/encode/param/ascii", test_param_ascii);
    g_test_add_func("/encode/param/quotes", test_param_quotes);
    g_test_add_func("/encode/param/non-ascii", test_param_non_ascii);
    g_test_add_func("/encode/param/continuations", test_param_continuations);
    g_test_add_func("/encode/param/invalid", test_param_invalid);

    g_test_add_func("/encode/utf8/valid", test_utf8_valid);

    return g_test_run();
}
