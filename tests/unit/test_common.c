/* Unit tests of the shared helpers in src/common/buf.h: hex, UTF-8 validation, percent-encoding
 * and -decoding, segment comparison and growable arrays. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common/buf.h"
#include "mimeo.h"

static void test_hex(void) {
    CHECK_EQ_INT(hex_digit('0'), 0);
    CHECK_EQ_INT(hex_digit('9'), 9);
    CHECK_EQ_INT(hex_digit('a'), 10);
    CHECK_EQ_INT(hex_digit('F'), 15);
    CHECK_EQ_INT(hex_digit('g'), -1);
    CHECK_EQ_INT(hex_digit('/'), -1);
    CHECK_EQ_INT(hex_digit(0xff), -1);
    unsigned char in[] = { 0x00, 0x7f, 0xab, 0xff };
    char hex[9];
    hex_encode(in, sizeof in, hex);
    CHECK_EQ_STR(hex, "007fabff");
    unsigned char out[4];
    CHECK(hex_decode("007FabFF", 8, out, 4));
    CHECK(memcmp(out, in, 4) == 0);
    CHECK(!hex_decode("007fabf", 7, out, 4));    /* odd length */
    CHECK(!hex_decode("007fabff00", 10, out, 4)); /* too long */
    CHECK(!hex_decode("007fabfg", 8, out, 4));    /* bad digit */
    CHECK(hex_decode("", 0, out, 0));
}

static void test_utf8(void) {
    static const struct { const char *s; size_t n; bool ok; } cases[] = {
        { "", 0, true },
        { "plain ascii, longer than eight bytes", 36, true },
        { "\xc3\xa9", 2, true },                    /* é */
        { "\xe2\x82\xac", 3, true },                /* € */
        { "\xf0\x9f\x98\x80", 4, true },            /* U+1F600 */
        { "\xf4\x8f\xbf\xbf", 4, true },            /* U+10FFFF */
        { "\xed\x9f\xbf", 3, true },                /* U+D7FF */
        { "a\0b", 3, true },                        /* NUL is a character */
        { "\xc0\xaf", 2, false },                   /* overlong '/' */
        { "\xe0\x80\xaf", 3, false },               /* overlong */
        { "\xf0\x80\x80\xaf", 4, false },           /* overlong */
        { "\xed\xa0\x80", 3, false },               /* surrogate U+D800 */
        { "\xf4\x90\x80\x80", 4, false },           /* U+110000 */
        { "\xf5\x80\x80\x80", 4, false },
        { "\x80", 1, false },                       /* lone continuation */
        { "\xc3", 1, false },                       /* cut short */
        { "abcdefgh\xe2\x82", 10, false },          /* cut short after a fast run */
        { "\xc3\x28", 2, false },                   /* bad continuation */
        { "\xe2\x82\x28", 3, false },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (utf8_valid(cases[i].s, cases[i].n) != cases[i].ok) {
            fprintf(stderr, "utf8 case %zu\n", i);
            CHECK(!"utf8_valid");
        }
    }
}

static void test_pct(void) {
    char a[] = "a%2Fb+c%41";
    size_t n = pct_decode(a, strlen(a), false);
    CHECK_EQ_INT(n, 6);
    CHECK(memcmp(a, "a/b+cA", 6) == 0);
    char b[] = "x+y%2b";
    n = pct_decode(b, strlen(b), true);
    CHECK_EQ_INT(n, 4);
    CHECK(memcmp(b, "x y+", 4) == 0);
    char c1[] = "bad%4", c2[] = "bad%zz", c3[] = "%";
    CHECK(pct_decode(c1, strlen(c1), false) == (size_t)-1);
    CHECK(pct_decode(c2, strlen(c2), false) == (size_t)-1);
    CHECK(pct_decode(c3, strlen(c3), false) == (size_t)-1);

    buf out = BUF_INIT;
    CHECK_EQ_INT(buf_put_pct(&out, "AZaz09-._~", 10), 0);
    CHECK_EQ_INT(buf_put_pct(&out, "a b/c+\xc3\xa9%", 9), 0);
    CHECK_EQ_INT(buf_put_pct(&out, "", 0), 0);
    CHECK_EQ_STR(buf_cstr(&out), "AZaz09-._~a%20b%2Fc%2B%C3%A9%25");
    /* round trip, NUL included */
    buf_reset(&out);
    CHECK_EQ_INT(buf_put_pct(&out, "k\0v", 3), 0);
    CHECK_EQ_STR(buf_cstr(&out), "k%00v");
    n = pct_decode(out.data, out.len, false);
    CHECK_EQ_INT(n, 3);
    CHECK(memcmp(out.data, "k\0v", 3) == 0);
    buf_destroy(&out);
    /* the cap holds */
    buf small;
    buf_init(&small, 4);
    CHECK_EQ_INT(buf_put_pct(&small, "//", 2), MIMEO_ETOOLARGE);
    CHECK_EQ_INT(small.len, 0);
    buf_destroy(&small);
}

static void test_mem_eq_str(void) {
    CHECK(mem_eq_str("_design/x", 7, "_design"));
    CHECK(!mem_eq_str("_design", 7, "_desig"));
    CHECK(!mem_eq_str("_desig", 6, "_design"));
    CHECK(mem_eq_str(NULL, 0, ""));
    CHECK(!mem_eq_str("a", 1, ""));
}

static void test_array_grow(void) {
    struct pair { int a; long b; } *v = NULL;
    size_t n = 0, cap = 0;
    for (int i = 0; i < 1000; i++) {
        CHECK_EQ_INT(ARRAY_GROW(v, cap, n + 1), 0);
        if (!v) return;
        CHECK(cap >= n + 1);
        v[n].a = i;
        v[n].b = -i;
        n++;
    }
    CHECK_EQ_INT(cap, 1024);
    int bad = 0;
    for (int i = 0; i < 1000; i++) bad += v[i].a != i || v[i].b != -i;
    CHECK_EQ_INT(bad, 0);
    /* enough room: nothing moves */
    struct pair *before = v;
    CHECK_EQ_INT(ARRAY_GROW(v, cap, 10), 0);
    CHECK(v == before);
    CHECK_EQ_INT(cap, 1024);
    /* an impossible size fails and leaves the array as it was */
    CHECK_EQ_INT(ARRAY_GROW(v, cap, (size_t)-1 / 2), MIMEO_ENOMEM);
    CHECK(v == before);
    CHECK_EQ_INT(cap, 1024);
    CHECK_EQ_INT(v[999].a, 999);
    free(v);
    char *bytes = NULL;
    size_t bcap = 0;
    CHECK_EQ_INT(ARRAY_GROW(bytes, bcap, 3), 0);
    CHECK_EQ_INT(bcap, 8);
    free(bytes);
}

int main(void) {
    RUN(test_hex);
    RUN(test_utf8);
    RUN(test_pct);
    RUN(test_mem_eq_str);
    RUN(test_array_grow);
    return check_report();
}
