/* CouchDB's view collation over jval trees, with ICU for strings, and the order-preserving
 * index-key encoding built on ICU sort keys. One root-locale collator is opened on first use
 * and shared by every thread: ICU collators are safe for concurrent compares and sort-key
 * calls, which are all we make. */
#include "collate.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unicode/ucol.h>
#include <unicode/ustring.h>

static UCollator *g_coll;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void coll_open(void) {
    UErrorCode st = U_ZERO_ERROR;
    /* "" is the root locale: CouchDB opens exactly this and changes no attribute, so the
     * strength is tertiary (case and accents count, after base letters) and the identical
     * level is off. */
    UCollator *c = ucol_open("", &st);
    if (U_FAILURE(st)) {
        if (c) ucol_close(c);
        return;
    }
    g_coll = c;
}

static UCollator *coll_get(void) {
    pthread_once(&g_once, coll_open);
    return g_coll;
}

void collate_version(char out[9]) {
    UVersionInfo v = {0};
    UCollator *c = coll_get();
    if (c) ucol_getVersion(c, v);
    snprintf(out, 9, "%02x%02x%02x%02x", v[0], v[1], v[2], v[3]);
}

/* ---- scalars ------------------------------------------------------------------------- */

double collate_number(const jval *v) {
    if (!v || v->type != JV_NUMBER || !v->str) return 0;
    double d = strtod(v->str, NULL);
    return d == 0 ? 0.0 : d; /* -0 and 0 are the same key */
}

bool collate_is_integer(const jval *v) {
    if (!v || v->type != JV_NUMBER || !v->str) return false;
    for (size_t i = 0; i < v->len; i++)
        if (v->str[i] == '.' || v->str[i] == 'e' || v->str[i] == 'E') return false;
    return true;
}

int collate_str(const char *a, size_t an, const char *b, size_t bn) {
    if (an == bn && memcmp(a, b, an) == 0) return 0;
    UCollator *c = coll_get();
    if (c && an <= INT32_MAX && bn <= INT32_MAX) {
        UErrorCode st = U_ZERO_ERROR;
        UCollationResult r = ucol_strcollUTF8(c, a, (int32_t)an, b, (int32_t)bn, &st);
        if (U_SUCCESS(st)) return r < 0 ? -1 : r > 0 ? 1 : 0;
    }
    /* no collator (ICU data missing): byte order keeps the answer total and stable */
    int r = memcmp(a, b, an < bn ? an : bn);
    if (r) return r < 0 ? -1 : 1;
    return an < bn ? -1 : an > bn ? 1 : 0;
}

static int type_rank(const jval *v) {
    switch (v->type) {
    case JV_NULL:   return 1;
    case JV_BOOL:   return v->boolean ? 3 : 2;
    case JV_NUMBER: return 4;
    case JV_STRING: return 5;
    case JV_ARRAY:  return 6;
    default:        return 7;
    }
}

static int num_cmp(const jval *a, const jval *b) {
    double x = collate_number(a), y = collate_number(b);
    return x < y ? -1 : x > y ? 1 : 0;
}

/* Recursion is bounded by the JSON nesting cap every tree was parsed under. */
int collate_cmp(const jval *a, const jval *b) {
    int ra = type_rank(a), rb = type_rank(b);
    if (ra != rb) return ra < rb ? -1 : 1;
    switch (a->type) {
    case JV_NULL:
    case JV_BOOL:   return 0;
    case JV_NUMBER: return num_cmp(a, b);
    case JV_STRING: return collate_str(a->str, a->len, b->str, b->len);
    case JV_ARRAY:
        for (size_t i = 0; i < a->count && i < b->count; i++) {
            int r = collate_cmp(a->items[i], b->items[i]);
            if (r) return r;
        }
        return a->count < b->count ? -1 : a->count > b->count ? 1 : 0;
    case JV_OBJECT:
        /* member by member in stored order: key first, then value; a prefix sorts first */
        for (size_t i = 0; i < a->count && i < b->count; i++) {
            int r = collate_str(a->keys[i], a->key_lens[i], b->keys[i], b->key_lens[i]);
            if (r) return r;
            r = collate_cmp(a->items[i], b->items[i]);
            if (r) return r;
        }
        return a->count < b->count ? -1 : a->count > b->count ? 1 : 0;
    }
    return 0;
}

/* ---- Erlang term order (Mango compares _id this way) --------------------------------- */

static int raw_rank(const jval *v) {
    switch (v->type) {
    case JV_NUMBER: return 1;
    case JV_BOOL:   return v->boolean ? 4 : 2; /* atoms by name: false < null < true */
    case JV_NULL:   return 3;
    case JV_OBJECT: return 5; /* {Props}: a tuple */
    case JV_ARRAY:  return 6; /* a list */
    default:        return 7; /* a binary */
    }
}

static int bytes_cmp(const char *a, size_t an, const char *b, size_t bn) {
    int r = memcmp(a, b, an < bn ? an : bn);
    if (r) return r < 0 ? -1 : 1;
    return an < bn ? -1 : an > bn ? 1 : 0;
}

int collate_raw_cmp(const jval *a, const jval *b) {
    int ra = raw_rank(a), rb = raw_rank(b);
    if (ra != rb) return ra < rb ? -1 : 1;
    switch (a->type) {
    case JV_NUMBER: return num_cmp(a, b);
    case JV_STRING: return bytes_cmp(a->str, a->len, b->str, b->len);
    case JV_ARRAY:
    case JV_OBJECT:
        /* objects are {[{K,V},…]}: one-element tuples, so their lists decide; a member
         * {K,V} is a 2-tuple: K then V */
        for (size_t i = 0; i < a->count && i < b->count; i++) {
            if (a->type == JV_OBJECT) {
                int r = bytes_cmp(a->keys[i], a->key_lens[i], b->keys[i], b->key_lens[i]);
                if (r) return r;
            }
            int r = collate_raw_cmp(a->items[i], b->items[i]);
            if (r) return r;
        }
        return a->count < b->count ? -1 : a->count > b->count ? 1 : 0;
    default:
        return 0;
    }
}

/* ---- index keys -----------------------------------------------------------------------
 * Layout (memcmp order = collate_cmp order):
 *
 *   null     10
 *   false    20
 *   true     30
 *   number   40 + 8 bytes: the IEEE double, big-endian, sign bit flipped for ≥ 0 and every
 *               bit flipped for < 0 (so negative numbers sort below positive ones and by
 *               magnitude reversed); -0 is written as 0
 *   string   50 + ICU sort key (no 00 byte inside) + 00
 *   array    60 + each element's key + 00
 *   object   70 + for each member: the key as a string (50 … 00), then the value's key; + 00
 *
 * 00 ends strings, arrays and objects and is below every type tag and every sort-key byte,
 * so a prefix sorts first: "a" < "ab", ["b"] < ["b","c"], {a:1} < {a:1,b:2}.
 *
 * Where byte order cannot equal the collation:
 * - Numbers are compared as doubles, here and in collate_cmp alike: CouchDB compares
 *   integers beyond 2^53 exactly (Erlang bignums), mimeo rounds them to the nearest double,
 *   so 9007199254740993 and 9007199254740992 share a key. An exact decimal encoding was
 *   rejected because it would order 0.1 (a double in CouchDB) apart from its double value.
 * - Strings that ICU ranks equal but whose bytes differ (ignorable code points such as
 *   U+0000) get equal sort keys, as the collation says; ties are broken by the caller (index
 *   rows append the document id).
 * - Sort keys depend on the ICU collator version (collate_version): an index written under
 *   one version is rebuilt, not reused, under another.
 * - Keys are unbounded here; a store with a key-size limit (LMDB: 511 bytes) must cut them
 *   and compare the rest of the row with collate_cmp. */

enum { CK_END = 0x00, CK_NULL = 0x10, CK_FALSE = 0x20, CK_TRUE = 0x30, CK_NUM = 0x40,
       CK_STR = 0x50, CK_ARR = 0x60, CK_OBJ = 0x70 };

int collate_sort_key_put(buf *b, const char *s, size_t n) {
    UCollator *c = coll_get();
    if (!c || n > INT32_MAX / 2) {
        /* no collator: bytes with 00 and 01 escaped keep the no-00 promise and byte order */
        for (size_t i = 0; i < n; i++) {
            unsigned char ch = (unsigned char)s[i];
            int rc = ch <= 1 ? buf_put(b, (char[]){1, (char)(ch + 1)}, 2)
                             : buf_putc(b, (char)ch);
            if (rc) return rc;
        }
        return 0;
    }
    UChar local[256], *u = local;
    int32_t ulen = 0;
    UErrorCode st = U_ZERO_ERROR;
    u_strFromUTF8WithSub(u, 256, &ulen, s, (int32_t)n, 0xFFFD, NULL, &st);
    if (st == U_BUFFER_OVERFLOW_ERROR) {
        u = malloc(((size_t)ulen + 1) * sizeof *u);
        if (!u) return MIMEO_ENOMEM;
        st = U_ZERO_ERROR;
        u_strFromUTF8WithSub(u, ulen + 1, &ulen, s, (int32_t)n, 0xFFFD, NULL, &st);
    }
    if (U_FAILURE(st)) {
        if (u != local) free(u);
        return MIMEO_EINVAL;
    }
    uint8_t klocal[512], *k = klocal;
    int32_t klen = ucol_getSortKey(c, u, ulen, k, (int32_t)sizeof klocal);
    if (klen > (int32_t)sizeof klocal) {
        k = malloc((size_t)klen);
        if (!k) {
            if (u != local) free(u);
            return MIMEO_ENOMEM;
        }
        klen = ucol_getSortKey(c, u, ulen, k, klen);
    }
    if (u != local) free(u);
    /* the returned length counts ICU's own terminating 00 */
    while (klen > 0 && k[klen - 1] == 0) klen--;
    int rc = buf_put(b, k, (size_t)klen);
    if (k != klocal) free(k);
    return rc;
}

static int key_str(buf *b, const char *s, size_t n) {
    int rc = buf_putc(b, (char)CK_STR);
    if (!rc) rc = collate_sort_key_put(b, s, n);
    if (!rc) rc = buf_putc(b, (char)CK_END);
    return rc;
}

static int key_num(buf *b, double d) {
    uint64_t u;
    if (d == 0) d = 0.0;
    memcpy(&u, &d, sizeof u);
    u = (u & UINT64_C(0x8000000000000000)) ? ~u : u | UINT64_C(0x8000000000000000);
    unsigned char out[9];
    out[0] = CK_NUM;
    be64_put(out + 1, u);
    return buf_put(b, out, sizeof out);
}

int collate_key_put(buf *b, const jval *v) {
    int rc = 0;
    switch (v->type) {
    case JV_NULL:   return buf_putc(b, (char)CK_NULL);
    case JV_BOOL:   return buf_putc(b, (char)(v->boolean ? CK_TRUE : CK_FALSE));
    case JV_NUMBER: return key_num(b, collate_number(v));
    case JV_STRING: return key_str(b, v->str, v->len);
    case JV_ARRAY:
        rc = buf_putc(b, (char)CK_ARR);
        for (size_t i = 0; !rc && i < v->count; i++) rc = collate_key_put(b, v->items[i]);
        break;
    case JV_OBJECT:
        rc = buf_putc(b, (char)CK_OBJ);
        for (size_t i = 0; !rc && i < v->count; i++) {
            rc = key_str(b, v->keys[i], v->key_lens[i]);
            if (!rc) rc = collate_key_put(b, v->items[i]);
        }
        break;
    }
    if (!rc) rc = buf_putc(b, (char)CK_END);
    return rc;
}
