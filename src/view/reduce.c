/* Built-in reducers (see reduce.h). The rules follow CouchDB's couch_query_servers:
 * - _sum adds numbers; arrays element-wise (a number counts as a one-element array, the
 *   longer array's tail is kept); objects field by field, recursively. A value it cannot
 *   add does not fail the query: the result becomes CouchDB's error object
 *   {"error":"builtin_reduce_error","reason":…,"caused_by":…}, and stays so on rereduce.
 * - _count counts rows, and adds partial counts on rereduce.
 * - _stats keeps sum, count, min, max, sumsqr for numbers, pre-aggregated stats objects, or
 *   equal-length arrays of either; anything else fails the query (invalid_value).
 * - _approx_count_distinct estimates distinct keys with a HyperLogLog sketch.
 * Integers stay integers (as Erlang's do) until they overflow 64 bits; a float anywhere
 * makes the sum a float, written with a decimal point as CouchDB's JSON encoder does. */
#include "reduce.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/err.h"

static const char SUM_ERROR[] =
    "The _sum function requires that map values be numbers, arrays of numbers, or objects. "
    "Objects cannot be mixed with other data structures. Objects can be arbitrarily nested, "
    "provided that the values for all fields are themselves numbers, arrays of numbers, or "
    "objects.";

/* ---- numbers ------------------------------------------------------------------------------ */
typedef struct num {
    bool    flt;   /* a float (or an integer that overflowed) */
    int64_t i;
    double  d;
} num;

static num num_int(int64_t i) { return (num){.flt = false, .i = i, .d = (double)i}; }

static bool num_from_jval(const jval *v, num *out) {
    if (!v || v->type != JV_NUMBER) return false;
    bool flt = strpbrk(v->str, ".eE") != NULL;
    if (!flt) {
        errno = 0;
        char *end;
        long long i = strtoll(v->str, &end, 10);
        if (errno == 0 && *end == 0) {
            *out = num_int(i);
            return true;
        }
    }
    *out = (num){.flt = true, .d = strtod(v->str, NULL)};
    return true;
}

static num num_add(num a, num b) {
    if (!a.flt && !b.flt) {
        int64_t r;
        if (!__builtin_add_overflow(a.i, b.i, &r)) return num_int(r);
    }
    return (num){.flt = true, .d = a.d + b.d};
}

static num num_mul(num a, num b) {
    if (!a.flt && !b.flt) {
        int64_t r;
        if (!__builtin_mul_overflow(a.i, b.i, &r)) return num_int(r);
    }
    return (num){.flt = true, .d = a.d * b.d};
}

static int num_cmp(num a, num b) {
    if (!a.flt && !b.flt) return a.i < b.i ? -1 : a.i > b.i;
    return a.d < b.d ? -1 : a.d > b.d;
}

static int num_put(buf *b, num n) {
    if (!n.flt) return buf_printf(b, "%lld", (long long)n.i);
    if (!isfinite(n.d)) return buf_puts(b, "null");
    char text[40];
    /* The shortest text that reads back as the same double. */
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(text, sizeof text, "%.*g", prec, n.d);
        if (strtod(text, NULL) == n.d) break;
    }
    int rc = buf_puts(b, text);
    if (!rc && !strpbrk(text, ".eEn")) rc = buf_puts(b, ".0");
    return rc;
}

/* ---- _sum values: numbers, arrays of numbers, objects of those ---------------------------- */
typedef enum { SV_NUM, SV_ARR, SV_OBJ } sv_type;

typedef struct sv sv;
struct sv {
    sv_type type;
    num     n;
    size_t  count;     /* SV_ARR: numbers; SV_OBJ: members */
    num    *nums;      /* SV_ARR */
    char  **keys;      /* SV_OBJ: sorted by bytes, NUL-terminated */
    size_t *key_lens;
    sv    **vals;      /* SV_OBJ */
    jval   *raw;       /* SV_OBJ taken unchecked as the first value (CouchDB does the same) */
};

static void sv_free(sv *s) {
    if (!s) return;
    free(s->nums);
    for (size_t i = 0; i < s->count && s->type == SV_OBJ; i++) {
        free(s->keys[i]);
        sv_free(s->vals[i]);
    }
    free(s->keys);
    free(s->key_lens);
    free(s->vals);
    free(s);
}

/* Why a sum failed: the value to report as caused_by (borrowed). */
typedef struct sum_fail { const jval *cause; } sum_fail;

static int key_cmp(const char *a, size_t al, const char *b, size_t bl) {
    int c = memcmp(a, b, al < bl ? al : bl);
    return c ? c : (al > bl) - (al < bl);
}

/* Converts a JSON value into a sum value; false (and fail->cause set) when it holds
 * something _sum cannot add. */
static sv *sv_from_jval(const jval *v, sum_fail *fail, bool *nomem);

static sv *sv_object_from_jval(const jval *v, sum_fail *fail, bool *nomem) {
    sv *s = calloc(1, sizeof *s);
    if (!s) { *nomem = true; return NULL; }
    s->type = SV_OBJ;
    if (v->count) {
        s->keys = calloc(v->count, sizeof *s->keys);
        s->key_lens = calloc(v->count, sizeof *s->key_lens);
        s->vals = calloc(v->count, sizeof *s->vals);
        if (!s->keys || !s->key_lens || !s->vals) { *nomem = true; sv_free(s); return NULL; }
    }
    for (size_t i = 0; i < v->count; i++) {
        /* insertion into key order: objects here are small (a few fields per view value) */
        sv *child = sv_from_jval(v->items[i], fail, nomem);
        if (!child) { sv_free(s); return NULL; }
        char *k = malloc(v->key_lens[i] + 1);
        if (!k) { *nomem = true; sv_free(child); sv_free(s); return NULL; }
        memcpy(k, v->keys[i], v->key_lens[i] + 1);
        size_t at = s->count;
        while (at > 0 && key_cmp(s->keys[at - 1], s->key_lens[at - 1], k, v->key_lens[i]) > 0) {
            s->keys[at] = s->keys[at - 1];
            s->key_lens[at] = s->key_lens[at - 1];
            s->vals[at] = s->vals[at - 1];
            at--;
        }
        s->keys[at] = k;
        s->key_lens[at] = v->key_lens[i];
        s->vals[at] = child;
        s->count++;
    }
    return s;
}

static sv *sv_from_jval(const jval *v, sum_fail *fail, bool *nomem) {
    num n;
    if (num_from_jval(v, &n)) {
        sv *s = calloc(1, sizeof *s);
        if (!s) { *nomem = true; return NULL; }
        s->type = SV_NUM;
        s->n = n;
        return s;
    }
    if (v->type == JV_ARRAY) {
        sv *s = calloc(1, sizeof *s);
        if (!s) { *nomem = true; return NULL; }
        s->type = SV_ARR;
        s->nums = calloc(v->count ? v->count : 1, sizeof *s->nums);
        if (!s->nums) { *nomem = true; free(s); return NULL; }
        for (size_t i = 0; i < v->count; i++) {
            if (!num_from_jval(v->items[i], &s->nums[i])) {
                fail->cause = v;
                sv_free(s);
                return NULL;
            }
        }
        s->count = v->count;
        return s;
    }
    if (v->type == JV_OBJECT) return sv_object_from_jval(v, fail, nomem);
    fail->cause = v;
    return NULL;
}

/* acc += add (add is consumed). false with fail->cause when the two cannot be added. */
static bool sv_add(sv *acc, sv *add, const jval *add_json, sum_fail *fail, bool *nomem) {
    if (acc->type == SV_NUM && add->type == SV_NUM) {
        acc->n = num_add(acc->n, add->n);
        sv_free(add);
        return true;
    }
    if (acc->type == SV_OBJ || add->type == SV_OBJ) {
        if (acc->type != SV_OBJ || add->type != SV_OBJ) {
            fail->cause = add_json;
            sv_free(add);
            return false;
        }
        /* merge two key-sorted member lists */
        size_t n = acc->count + add->count, i = 0, j = 0, k = 0;
        char **keys = calloc(n ? n : 1, sizeof *keys);
        size_t *lens = calloc(n ? n : 1, sizeof *lens);
        sv **vals = calloc(n ? n : 1, sizeof *vals);
        if (!keys || !lens || !vals) {
            free(keys); free(lens); free(vals); sv_free(add);
            *nomem = true;
            return false;
        }
        bool ok = true;
        while (i < acc->count || j < add->count) {
            int c = i == acc->count ? 1 : j == add->count ? -1
                  : key_cmp(acc->keys[i], acc->key_lens[i], add->keys[j], add->key_lens[j]);
            if (c < 0) {
                keys[k] = acc->keys[i]; lens[k] = acc->key_lens[i]; vals[k++] = acc->vals[i++];
            } else if (c > 0) {
                keys[k] = add->keys[j]; lens[k] = add->key_lens[j]; vals[k++] = add->vals[j++];
            } else {
                keys[k] = acc->keys[i]; lens[k] = acc->key_lens[i]; vals[k] = acc->vals[i];
                free(add->keys[j]);
                if (ok && !sv_add(vals[k], add->vals[j], add_json, fail, nomem)) ok = false;
                else if (!ok) sv_free(add->vals[j]);
                k++; i++; j++;
            }
        }
        free(acc->keys); free(acc->key_lens); free(acc->vals);
        acc->keys = keys; acc->key_lens = lens; acc->vals = vals; acc->count = k;
        add->count = 0;
        sv_free(add);
        return ok;
    }
    /* numbers and arrays: a lone number is a one-element array */
    num one_acc = acc->n, one_add = add->n;
    num *xs = acc->type == SV_ARR ? acc->nums : &one_acc;
    size_t xn = acc->type == SV_ARR ? acc->count : 1;
    num *ys = add->type == SV_ARR ? add->nums : &one_add;
    size_t yn = add->type == SV_ARR ? add->count : 1;
    size_t n = xn > yn ? xn : yn;
    num *out = calloc(n ? n : 1, sizeof *out);
    if (!out) { sv_free(add); *nomem = true; return false; }
    for (size_t i = 0; i < n; i++)
        out[i] = i < xn && i < yn ? num_add(xs[i], ys[i]) : i < xn ? xs[i] : ys[i];
    free(acc->nums);
    acc->type = SV_ARR;
    acc->nums = out;
    acc->count = n;
    sv_free(add);
    return true;
}

static int sv_put(buf *b, const sv *s) {
    int rc = 0;
    switch (s->type) {
    case SV_NUM: return num_put(b, s->n);
    case SV_ARR:
        rc = buf_putc(b, '[');
        for (size_t i = 0; !rc && i < s->count; i++) {
            if (i) rc = buf_putc(b, ',');
            if (!rc) rc = num_put(b, s->nums[i]);
        }
        return rc ? rc : buf_putc(b, ']');
    case SV_OBJ:
        rc = buf_putc(b, '{');
        for (size_t i = 0; !rc && i < s->count; i++) {
            if (i) rc = buf_putc(b, ',');
            if (!rc) rc = json_put_str(b, s->keys[i], s->key_lens[i]);
            if (!rc) rc = buf_putc(b, ':');
            if (!rc) rc = sv_put(b, s->vals[i]);
        }
        return rc ? rc : buf_putc(b, '}');
    }
    return MIMEO_EINVAL;
}

/* ---- _stats ------------------------------------------------------------------------------- */
typedef struct stat5 { num sum, count, min, max, sumsqr; } stat5;

static stat5 stat_of(num x) { return (stat5){x, num_int(1), x, x, num_mul(x, x)}; }

static stat5 stat_join(stat5 a, stat5 b) {
    return (stat5){num_add(a.sum, b.sum), num_add(a.count, b.count),
                   num_cmp(a.min, b.min) <= 0 ? a.min : b.min,
                   num_cmp(a.max, b.max) >= 0 ? a.max : b.max, num_add(a.sumsqr, b.sumsqr)};
}

static int stat_put(buf *b, stat5 s) {
    int rc = buf_puts(b, "{\"sum\":");
    if (!rc) rc = num_put(b, s.sum);
    if (!rc) rc = buf_puts(b, ",\"count\":");
    if (!rc) rc = num_put(b, s.count);
    if (!rc) rc = buf_puts(b, ",\"min\":");
    if (!rc) rc = num_put(b, s.min);
    if (!rc) rc = buf_puts(b, ",\"max\":");
    if (!rc) rc = num_put(b, s.max);
    if (!rc) rc = buf_puts(b, ",\"sumsqr\":");
    if (!rc) rc = num_put(b, s.sumsqr);
    return rc ? rc : buf_putc(b, '}');
}

static int stat_fail(mimeo_err *err, const char *fmt, const jval *v) {
    buf text = BUF_INIT;
    buf_init(&text, 160);
    json_put_jval(&text, v);  /* truncated at the cap: a reason, not a copy of the value */
    err_set(err, MIMEO_EINVAL, "invalid_value", fmt, buf_cstr(&text));
    buf_destroy(&text);
    return MIMEO_EINVAL;
}

/* A number, or a pre-aggregated object with the five fields. */
static int stat_from_jval(const jval *v, stat5 *out, mimeo_err *err) {
    num n;
    if (num_from_jval(v, &n)) {
        *out = stat_of(n);
        return 0;
    }
    if (v->type != JV_OBJECT)
        return stat_fail(err, "The _stats function requires that map values be numbers or "
                              "arrays of numbers, not '%s'", v);
    static const char *const names[5] = {"sum", "count", "min", "max", "sumsqr"};
    num *fields[5] = {&out->sum, &out->count, &out->min, &out->max, &out->sumsqr};
    for (int i = 0; i < 5; i++) {
        const jval *f = jval_get(v, names[i]);
        if (!f) {
            err_set(err, MIMEO_EINVAL, "invalid_value",
                    "user _stats input missing required field %s", names[i]);
            return MIMEO_EINVAL;
        }
        if (!num_from_jval(f, fields[i])) {
            err_set(err, MIMEO_EINVAL, "invalid_value",
                    "non-numeric _stats input received for %s", names[i]);
            return MIMEO_EINVAL;
        }
    }
    return 0;
}

/* ---- _approx_count_distinct: HyperLogLog, 2^11 registers (about 2% error) ------------------ */
#define HLL_BITS 11
#define HLL_REGS (1u << HLL_BITS)

static uint64_t hash64(const char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;           /* FNV-1a, then a full avalanche */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 0x100000001b3ull;
    h ^= h >> 33; h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 33);
}

static uint64_t hll_estimate(const unsigned char *regs) {
    double sum = 0;
    unsigned zeros = 0;
    for (unsigned i = 0; i < HLL_REGS; i++) {
        sum += ldexp(1.0, -(int)regs[i]);
        zeros += regs[i] == 0;
    }
    double m = HLL_REGS, alpha = 0.7213 / (1 + 1.079 / m);
    double e = alpha * m * m / sum;
    if (e <= 2.5 * m && zeros) e = m * log(m / zeros);   /* small range: linear counting */
    return (uint64_t)llround(e);
}

/* ---- the reducer ------------------------------------------------------------------------- */
struct view_reducer {
    view_reduce_kind kind;
    uint64_t count;
    /* _sum */
    sv   *sum;         /* NULL: still the integer 0 CouchDB starts from */
    buf   sum_error;   /* when set, the result is this error object */
    /* _stats */
    bool   stats_seen, stats_is_array;
    stat5  stats;
    stat5 *stats_arr;
    size_t stats_n;
    /* _approx_count_distinct */
    unsigned char *hll;
};

bool view_reduce_builtin(const char *name, size_t len, view_reduce_kind *kind) {
    /* CouchDB matches these as prefixes ("_sum…" is _sum). */
    static const struct { const char *name; view_reduce_kind kind; } table[] = {
        {"_approx_count_distinct", VIEW_REDUCE_APPROX_COUNT_DISTINCT},
        {"_count", VIEW_REDUCE_COUNT}, {"_stats", VIEW_REDUCE_STATS}, {"_sum", VIEW_REDUCE_SUM},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        size_t n = strlen(table[i].name);
        if (len >= n && memcmp(name, table[i].name, n) == 0) {
            *kind = table[i].kind;
            return true;
        }
    }
    return false;
}

view_reducer *view_reducer_new(view_reduce_kind kind) {
    view_reducer *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->kind = kind;
    buf_init(&r->sum_error, 0);
    if (kind == VIEW_REDUCE_APPROX_COUNT_DISTINCT && !(r->hll = calloc(HLL_REGS, 1))) {
        free(r);
        return NULL;
    }
    return r;
}

void view_reducer_free(view_reducer *r) {
    if (!r) return;
    sv_free(r->sum);
    buf_destroy(&r->sum_error);
    free(r->stats_arr);
    free(r->hll);
    free(r);
}

static bool is_builtin_error(const jval *v) {
    const jval *e = jval_get(v, "error");
    return e && e->type == JV_STRING && strcmp(e->str, "builtin_reduce_error") == 0;
}

static int sum_add(view_reducer *r, const jval *value) {
    if (r->sum_error.len) return 0;               /* an error result absorbs everything */
    if (value->type == JV_OBJECT && is_builtin_error(value)) {
        return json_put_jval(&r->sum_error, value);
    }
    sum_fail fail = {0};
    bool nomem = false;
    sv *add = sv_from_jval(value, &fail, &nomem);
    if (add && !r->sum) {
        if (add->type != SV_OBJ) {
            /* 0 + x */
            sv zero = {.type = SV_NUM, .n = num_int(0)};
            sv *acc = calloc(1, sizeof *acc);
            if (!acc) { sv_free(add); return MIMEO_ENOMEM; }
            *acc = zero;
            r->sum = acc;
        } else {
            r->sum = add;
            return 0;
        }
    }
    if (add && sv_add(r->sum, add, value, &fail, &nomem)) return 0;
    if (nomem) return MIMEO_ENOMEM;
    int rc = buf_puts(&r->sum_error, "{\"error\":\"builtin_reduce_error\",\"reason\":");
    if (!rc) rc = json_put_str(&r->sum_error, SUM_ERROR, sizeof SUM_ERROR - 1);
    if (!rc) rc = buf_puts(&r->sum_error, ",\"caused_by\":");
    if (!rc) rc = json_put_jval(&r->sum_error, fail.cause ? fail.cause : value);
    if (!rc) rc = buf_putc(&r->sum_error, '}');
    return rc;
}

static int stats_add(view_reducer *r, const jval *value, mimeo_err *err) {
    if (value->type == JV_ARRAY) {
        if (r->stats_seen && (!r->stats_is_array || r->stats_n != value->count))
            return stat_fail(err, "The _stats function requires that map values be numbers or "
                                  "arrays of numbers, not '%s'", value);
        if (!r->stats_seen) {
            r->stats_arr = calloc(value->count ? value->count : 1, sizeof *r->stats_arr);
            if (!r->stats_arr) return MIMEO_ENOMEM;
        }
        for (size_t i = 0; i < value->count; i++) {
            stat5 s;
            int rc = stat_from_jval(value->items[i], &s, err);
            if (rc) return rc;
            r->stats_arr[i] = r->stats_seen ? stat_join(r->stats_arr[i], s) : s;
        }
        r->stats_n = value->count;
        r->stats_is_array = true;
        r->stats_seen = true;
        return 0;
    }
    if (r->stats_seen && r->stats_is_array)
        return stat_fail(err, "The _stats function requires that map values be numbers or "
                              "arrays of numbers, not '%s'", value);
    stat5 s;
    int rc = stat_from_jval(value, &s, err);
    if (rc) return rc;
    r->stats = r->stats_seen ? stat_join(r->stats, s) : s;
    r->stats_seen = true;
    return 0;
}

int view_reducer_add(view_reducer *r, const jval *key, const jval *value, mimeo_err *err) {
    r->count++;
    switch (r->kind) {
    case VIEW_REDUCE_COUNT: return 0;
    case VIEW_REDUCE_SUM: return sum_add(r, value);
    case VIEW_REDUCE_STATS: return stats_add(r, value, err);
    case VIEW_REDUCE_APPROX_COUNT_DISTINCT: {
        buf text = BUF_INIT;
        int rc = json_put_jval(&text, key);
        if (rc) { buf_destroy(&text); return rc; }
        uint64_t h = hash64(text.data, text.len);
        buf_destroy(&text);
        unsigned reg = (unsigned)(h >> (64 - HLL_BITS));
        uint64_t rest = h << HLL_BITS;
        unsigned char rank = rest ? (unsigned char)(__builtin_clzll(rest) + 1)
                                  : (unsigned char)(64 - HLL_BITS + 1);
        if (rank > r->hll[reg]) r->hll[reg] = rank;
        return 0;
    }
    }
    return MIMEO_EINVAL;
}

bool view_reducer_add_fast(view_reducer *r, const char *value, size_t len) {
    if (r->kind == VIEW_REDUCE_COUNT) {
        r->count++;
        return true;
    }
    if ((r->kind != VIEW_REDUCE_SUM && r->kind != VIEW_REDUCE_STATS) || len == 0 || len > 40 ||
        !(value[0] == '-' || (value[0] >= '0' && value[0] <= '9')))
        return false;
    num n;
    /* integers of up to 18 digits, the usual value, without the C library */
    size_t neg = value[0] == '-', i = neg;
    int64_t acc = 0;
    while (i < len && i - neg < 18 && value[i] >= '0' && value[i] <= '9')
        acc = acc * 10 + (value[i++] - '0');
    if (i == len && len > neg) {
        n = num_int(value[0] == '-' ? -acc : acc);
    } else {
        char text[48];
        memcpy(text, value, len);
        text[len] = 0;
        jval v = {.type = JV_NUMBER, .str = text, .len = len};
        if (!num_from_jval(&v, &n)) return false;
    }
    if (r->kind == VIEW_REDUCE_SUM) {
        if (!r->sum_error.len) {
            if (!r->sum) {
                if (!(r->sum = calloc(1, sizeof *r->sum))) return false;
                r->sum->type = SV_NUM;
                r->sum->n = num_int(0);
            } else if (r->sum->type != SV_NUM) {
                return false;
            }
            r->sum->n = num_add(r->sum->n, n);
        }
        r->count++;
        return true;
    }
    if (r->stats_seen && r->stats_is_array) return false;
    r->stats = r->stats_seen ? stat_join(r->stats, stat_of(n)) : stat_of(n);
    r->stats_seen = true;
    r->count++;
    return true;
}

int view_reducer_add_partial(view_reducer *r, const jval *partial, mimeo_err *err) {
    switch (r->kind) {
    case VIEW_REDUCE_COUNT: {
        int64_t n;
        if (!jval_as_i64(partial, &n) || n < 0) {
            err_set(err, MIMEO_EINVAL, "invalid_value", "a _count partial must be a count");
            return MIMEO_EINVAL;
        }
        r->count += (uint64_t)n;
        return 0;
    }
    case VIEW_REDUCE_SUM: return sum_add(r, partial);
    case VIEW_REDUCE_STATS: return stats_add(r, partial, err);
    case VIEW_REDUCE_APPROX_COUNT_DISTINCT: {
        const jval *h = jval_get(partial, "hll");
        if (!h || h->type != JV_STRING || h->len != 2 * HLL_REGS) {
            err_set(err, MIMEO_EINVAL, "invalid_value", "malformed _approx_count_distinct state");
            return MIMEO_EINVAL;
        }
        for (unsigned i = 0; i < HLL_REGS; i++) {
            unsigned v;
            if (sscanf(h->str + 2 * i, "%2x", &v) != 1) {
                err_set(err, MIMEO_EINVAL, "invalid_value",
                        "malformed _approx_count_distinct state");
                return MIMEO_EINVAL;
            }
            if (v > r->hll[i]) r->hll[i] = (unsigned char)v;
        }
        return 0;
    }
    }
    return MIMEO_EINVAL;
}

static int reducer_put(const view_reducer *r, buf *out, bool partial) {
    switch (r->kind) {
    case VIEW_REDUCE_COUNT: return buf_put_u64(out, r->count);
    case VIEW_REDUCE_SUM:
        if (r->sum_error.len) return buf_put(out, r->sum_error.data, r->sum_error.len);
        return r->sum ? sv_put(out, r->sum) : buf_putc(out, '0');
    case VIEW_REDUCE_STATS:
        if (!r->stats_seen) return stat_put(out, (stat5){num_int(0), num_int(0), num_int(0),
                                                         num_int(0), num_int(0)});
        if (!r->stats_is_array) return stat_put(out, r->stats);
        {
            int rc = buf_putc(out, '[');
            for (size_t i = 0; !rc && i < r->stats_n; i++) {
                if (i) rc = buf_putc(out, ',');
                if (!rc) rc = stat_put(out, r->stats_arr[i]);
            }
            return rc ? rc : buf_putc(out, ']');
        }
    case VIEW_REDUCE_APPROX_COUNT_DISTINCT:
        if (!partial) return buf_put_u64(out, hll_estimate(r->hll));
        {
            int rc = buf_puts(out, "{\"hll\":\"");
            char hex[2 * HLL_REGS + 1];
            hex_encode(r->hll, HLL_REGS, hex);
            if (!rc) rc = buf_put(out, hex, 2 * HLL_REGS);
            return rc ? rc : buf_puts(out, "\"}");
        }
    }
    return MIMEO_EINVAL;
}

int view_reducer_put(const view_reducer *r, buf *out) { return reducer_put(r, out, false); }
int view_reducer_put_partial(const view_reducer *r, buf *out) { return reducer_put(r, out, true); }
