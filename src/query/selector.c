/* Mango selectors, after CouchDB 3.5's mango_selector.erl: norm_ops (validate operators,
 * make implicit $and and $eq explicit), norm_fields (join nested field names into dotted
 * paths on the conditions), norm_negations (push $not/$nor down), then match. Nodes live in
 * one list owned by the selector, so the rewriting steps can share and replace nodes freely
 * and freeing is one pass. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "selector.h"

#include <pcre2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "collate.h"

typedef enum {
    S_AND, S_OR, S_NOR, S_NOT, S_FIELD,
    S_EQ, S_NE, S_LT, S_LTE, S_GT, S_GTE, S_IN, S_NIN, S_EXISTS, S_TYPE, S_MOD, S_REGEX,
    S_BEGINS, S_SIZE, S_ALL, S_ELEM, S_ALLM, S_KEYMAP,
} sel_op;

static const char *const op_names[] = {
    "$and", "$or", "$nor", "$not", "", "$eq", "$ne", "$lt", "$lte", "$gt", "$gte", "$in",
    "$nin", "$exists", "$type", "$mod", "$regex", "$beginsWith", "$size", "$all",
    "$elemMatch", "$allMatch", "$keyMapMatch",
};

typedef struct snode snode;
struct snode {
    sel_op  op;
    snode **kids;         /* $and/$or/$nor: the arguments; $not, a field, $elemMatch,
                             $allMatch, $keyMapMatch: kids[0] */
    size_t  n;
    char   *path;         /* S_FIELD: the field name; after norm_fields the whole path */
    size_t  path_len;
    char  **parts;        /* S_FIELD after norm_fields: the path split at unescaped dots */
    size_t *part_lens;
    size_t  nparts;
    const jval *arg;      /* operators: the argument (in the selector's own tree) */
    bool    exists;       /* S_EXISTS */
    int64_t d, r;         /* S_MOD */
    pcre2_code *re;       /* S_REGEX */
    pcre2_match_context *mctx;
};

struct selector {
    jval   *tree;   /* the selector as given; operator arguments point into it */
    snode  *root;   /* NULL: the empty selector */
    snode **all;    /* every node made, for freeing */
    size_t  count, alloc;
    mimeo_err *err;
};

/* ---- nodes ------------------------------------------------------------------------------ */

static snode *node_new(selector *s, sel_op op) {
    if (ARRAY_GROW(s->all, s->alloc, s->count + 1)) return NULL;
    snode *n = calloc(1, sizeof *n);
    if (!n) return NULL;
    n->op = op;
    s->all[s->count++] = n;
    return n;
}

static void node_destroy(snode *n) {
    free(n->kids);
    free(n->path);
    if (n->parts)
        for (size_t i = 0; i < n->nparts; i++) free(n->parts[i]);
    free(n->parts);
    free(n->part_lens);
    if (n->re) pcre2_code_free(n->re);
    if (n->mctx) pcre2_match_context_free(n->mctx);
    free(n);
}

void selector_free(selector *s) {
    if (!s) return;
    for (size_t i = 0; i < s->count; i++) node_destroy(s->all[i]);
    free(s->all);
    jval_free(s->tree);
    free(s);
}

static snode *node_kids(selector *s, sel_op op, size_t n) {
    snode *x = node_new(s, op);
    if (!x) return NULL;
    if (n) {
        x->kids = calloc(n, sizeof *x->kids);
        if (!x->kids) return NULL;
    }
    x->n = n;
    return x;
}

static snode *node_one(selector *s, sel_op op, snode *kid) {
    snode *x = node_kids(s, op, 1);
    if (x) x->kids[0] = kid;
    return x;
}

static snode *node_field(selector *s, const char *path, size_t len, snode *kid) {
    snode *x = node_one(s, S_FIELD, kid);
    if (!x) return NULL;
    x->path = malloc(len + 1);
    if (!x->path) return NULL;
    memcpy(x->path, path, len);
    x->path[len] = 0;
    x->path_len = len;
    return x;
}

/* ---- errors ----------------------------------------------------------------------------- */

static snode *fail(selector *s, const char *error, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static snode *fail(selector *s, const char *error, const char *fmt, ...) {
    if (s->err && s->err->code) return NULL; /* the first error stands */
    char reason[MIMEO_ERR_REASON_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    err_set(s->err, MIMEO_EINVAL, error, "%s", reason);
    return NULL;
}

static snode *oom(selector *s) {
    if (s->err && !s->err->code)
        err_set(s->err, MIMEO_ENOMEM, "internal_server_error", "out of memory");
    return NULL;
}

/* "Bad argument for operator $x: <arg>", the argument shown as (cut) JSON. */
static snode *bad_arg(selector *s, const char *op, const jval *arg) {
    buf b;
    buf_init(&b, 4096);
    json_put_jval(&b, arg);
    size_t n = json_utf8_prefix(b.data ? b.data : "", b.len, 120);
    snode *r = fail(s, "bad_arg", "Bad argument for operator %s: %.*s%s", op, (int)n,
                    b.data ? b.data : "", n < b.len ? "…" : "");
    buf_destroy(&b);
    return r;
}

/* ---- norm_ops ----------------------------------------------------------------------------- */

static snode *norm_ops(selector *s, const jval *v);

static bool is_int(const jval *v) { return v->type == JV_NUMBER && collate_is_integer(v); }

static snode *norm_list(selector *s, sel_op op, const char *name, const jval *arg) {
    if (arg->type != JV_ARRAY) return bad_arg(s, name, arg);
    snode *x = node_kids(s, op, arg->count);
    if (!x) return oom(s);
    for (size_t i = 0; i < arg->count; i++)
        if (!(x->kids[i] = norm_ops(s, arg->items[i]))) return NULL;
    return x;
}

static snode *terminal(selector *s, sel_op op, const jval *arg) {
    snode *x = node_new(s, op);
    if (!x) return oom(s);
    x->arg = arg;
    return x;
}

static snode *norm_regex(selector *s, const jval *arg) {
    snode *x = terminal(s, S_REGEX, arg);
    if (!x) return NULL;
    int errcode;
    PCRE2_SIZE erroff;
    /* no PCRE2_UTF: Erlang's re.compile, as CouchDB calls it, works on bytes */
    x->re = pcre2_compile((PCRE2_SPTR)arg->str, arg->len, 0, &errcode, &erroff, NULL);
    if (!x->re) {
        if (errcode == PCRE2_ERROR_NOMEMORY) return oom(s);
        return bad_arg(s, "$regex", arg);
    }
    x->mctx = pcre2_match_context_create(NULL);
    if (!x->mctx) return oom(s);
    pcre2_set_match_limit(x->mctx, SELECTOR_REGEX_MATCH_LIMIT);
    pcre2_set_depth_limit(x->mctx, SELECTOR_REGEX_DEPTH_LIMIT);
    return x;
}

/* One {key: arg} member. */
static snode *norm_pair(selector *s, const char *k, size_t kn, const jval *a) {
    if (kn == 0 || k[0] != '$') {
        snode *c = norm_ops(s, a);
        if (!c) return NULL;
        snode *x = node_field(s, k, kn, c);
        return x ? x : oom(s);
    }
#define IS(lit) (kn == sizeof(lit) - 1 && memcmp(k, lit, kn) == 0)
    if (IS("$and")) return norm_list(s, S_AND, "$and", a);
    if (IS("$or"))  return norm_list(s, S_OR, "$or", a);
    if (IS("$nor")) return norm_list(s, S_NOR, "$nor", a);
    if (IS("$not") || IS("$elemMatch") || IS("$allMatch") || IS("$keyMapMatch")) {
        sel_op op = IS("$not") ? S_NOT : IS("$elemMatch") ? S_ELEM
                  : IS("$allMatch") ? S_ALLM : S_KEYMAP;
        if (a->type != JV_OBJECT) return bad_arg(s, op_names[op], a);
        snode *c = norm_ops(s, a);
        if (!c) return NULL;
        snode *x = node_one(s, op, c);
        return x ? x : oom(s);
    }
    if (IS("$in") || IS("$nin") || IS("$all")) {
        sel_op op = IS("$in") ? S_IN : IS("$nin") ? S_NIN : S_ALL;
        if (a->type != JV_ARRAY) return bad_arg(s, op_names[op], a);
        return terminal(s, op, a);
    }
    if (IS("$exists")) {
        if (a->type != JV_BOOL) return bad_arg(s, "$exists", a);
        snode *x = terminal(s, S_EXISTS, a);
        if (x) x->exists = a->boolean;
        return x;
    }
    if (IS("$type")) {
        if (a->type != JV_STRING) return bad_arg(s, "$type", a);
        return terminal(s, S_TYPE, a);
    }
    if (IS("$mod")) {
        int64_t d, r;
        /* [Divisor, Remainder], both integers (CouchDB: is_integer, so 2.0 is refused); a
         * zero divisor is refused here too, where CouchDB fails while matching */
        if (a->type != JV_ARRAY || a->count != 2 || !is_int(a->items[0]) ||
            !is_int(a->items[1]) || !jval_as_i64(a->items[0], &d) ||
            !jval_as_i64(a->items[1], &r) || d == 0)
            return bad_arg(s, "$mod", a);
        snode *x = terminal(s, S_MOD, a);
        if (x) { x->d = d; x->r = r; }
        return x;
    }
    if (IS("$size")) {
        int64_t n;
        if (!is_int(a) || !jval_as_i64(a, &n) || n < 0) return bad_arg(s, "$size", a);
        snode *x = terminal(s, S_SIZE, a);
        if (x) x->d = n;
        return x;
    }
    /* CouchDB's norm_ops takes $regex and $beginsWith only with a string argument; anything
     * else falls through to its unknown-operator clause */
    if (IS("$regex") && a->type == JV_STRING) return norm_regex(s, a);
    if (IS("$beginsWith") && a->type == JV_STRING) return terminal(s, S_BEGINS, a);
    if (IS("$eq"))  return terminal(s, S_EQ, a);
    if (IS("$ne"))  return terminal(s, S_NE, a);
    if (IS("$lt"))  return terminal(s, S_LT, a);
    if (IS("$lte")) return terminal(s, S_LTE, a);
    if (IS("$gt"))  return terminal(s, S_GT, a);
    if (IS("$gte")) return terminal(s, S_GTE, a);
    /* $text needs a text index, which mimeo does not have */
    if (IS("$where") || IS("$geoWithin") || IS("$geoIntersects") || IS("$near") ||
        IS("$nearSphere") || IS("$text"))
        return fail(s, "not_supported", "Unsupported operator: %.*s", (int)kn, k);
#undef IS
    size_t n = json_utf8_prefix(k, kn, 100);
    return fail(s, "invalid_operator", "Invalid operator: %.*s", (int)n, k);
}

static snode *norm_ops(selector *s, const jval *v) {
    if (v->type == JV_OBJECT && v->count == 1)
        return norm_pair(s, v->keys[0], v->key_lens[0], v->items[0]);
    if (v->type == JV_OBJECT && v->count > 1) {
        /* an implicit $and */
        snode *x = node_kids(s, S_AND, v->count);
        if (!x) return oom(s);
        for (size_t i = 0; i < v->count; i++)
            if (!(x->kids[i] = norm_pair(s, v->keys[i], v->key_lens[i], v->items[i])))
                return NULL;
        return x;
    }
    /* a bare value (also {}) means equality */
    return terminal(s, S_EQ, v);
}

/* ---- norm_fields -------------------------------------------------------------------------- */

/* Splits a path at dots not preceded by a backslash and turns "\." into "." in each part
 * (mango_util:parse_field). An empty part is an error. */
static int split_path(selector *s, snode *f) {
    size_t cap = 1;
    for (size_t i = 0; i < f->path_len; i++) cap += f->path[i] == '.';
    f->parts = calloc(cap, sizeof *f->parts);
    f->part_lens = calloc(cap, sizeof *f->part_lens);
    if (!f->parts || !f->part_lens) return oom(s), MIMEO_ENOMEM;
    size_t start = 0;
    for (size_t i = 0; i <= f->path_len; i++) {
        bool end = i == f->path_len || (f->path[i] == '.' && (i == 0 || f->path[i - 1] != '\\'));
        if (!end) continue;
        size_t len = i - start;
        char *p = malloc(len + 1);
        if (!p) return oom(s), MIMEO_ENOMEM;
        size_t o = 0;
        for (size_t j = start; j < i; j++) {
            if (f->path[j] == '\\' && j + 1 < i && f->path[j + 1] == '.') continue;
            p[o++] = f->path[j];
        }
        p[o] = 0;
        f->parts[f->nparts] = p;
        f->part_lens[f->nparts++] = o;
        if (len == 0) {
            size_t n = json_utf8_prefix(f->path, f->path_len, 120);
            fail(s, "invalid_field_name", "Invalid field name: %.*s", (int)n, f->path);
            return MIMEO_EINVAL;
        }
        start = i + 1;
    }
    return 0;
}

/* A condition on the field at path (path "" is the value itself, inside $elemMatch). */
static snode *field_at(selector *s, const char *path, size_t len, snode *cond) {
    snode *x = node_field(s, path, len, cond);
    if (!x) return oom(s);
    if (len && split_path(s, x)) return NULL;
    return x;
}

static snode *norm_fields(selector *s, snode *x, const char *path, size_t len) {
    switch (x->op) {
    case S_AND: case S_OR: case S_NOR: case S_NOT:
        for (size_t i = 0; i < x->n; i++)
            if (!(x->kids[i] = norm_fields(s, x->kids[i], path, len))) return NULL;
        return x;
    case S_ELEM: case S_ALLM: case S_KEYMAP:
        /* their argument is a selector of its own, on the element or key */
        if (!(x->kids[0] = norm_fields(s, x->kids[0], "", 0))) return NULL;
        return field_at(s, path, len, x);
    case S_FIELD: {
        if (len == 0) return norm_fields(s, x->kids[0], x->path, x->path_len);
        size_t n = len + 1 + x->path_len;
        char *p = malloc(n + 1);
        if (!p) return oom(s);
        memcpy(p, path, len);
        p[len] = '.';
        memcpy(p + len + 1, x->path, x->path_len);
        p[n] = 0;
        snode *r = norm_fields(s, x->kids[0], p, n);
        free(p);
        return r;
    }
    default:
        return field_at(s, path, len, x);
    }
}

/* ---- norm_negations ----------------------------------------------------------------------- */

static snode *negate(selector *s, snode *x);

static snode *norm_negations(selector *s, snode *x) {
    switch (x->op) {
    case S_NOT:
        return negate(s, x->kids[0]);
    case S_NOR:
        x->op = S_AND;
        for (size_t i = 0; i < x->n; i++)
            if (!(x->kids[i] = negate(s, x->kids[i]))) return NULL;
        return x;
    case S_AND: case S_OR: case S_ELEM: case S_ALLM: case S_KEYMAP:
        /* CouchDB seeks through these only when they head the node; after norm_fields the
         * array and map operators sit under their field, so a $not inside them stays a
         * $not (and so keeps its meaning on missing fields). The same here. */
        for (size_t i = 0; i < x->n; i++)
            if (!(x->kids[i] = norm_negations(s, x->kids[i]))) return NULL;
        return x;
    default:
        return x;
    }
}

static snode *negate(selector *s, snode *x) {
    static const sel_op flip[][2] = {
        {S_LT, S_GTE}, {S_LTE, S_GT}, {S_EQ, S_NE}, {S_NE, S_EQ}, {S_GTE, S_LT},
        {S_GT, S_LTE}, {S_IN, S_NIN}, {S_NIN, S_IN},
    };
    switch (x->op) {
    case S_NOT:
        return norm_negations(s, x->kids[0]);
    case S_NOR:
        x->op = S_OR;
        for (size_t i = 0; i < x->n; i++)
            if (!(x->kids[i] = norm_negations(s, x->kids[i]))) return NULL;
        return x;
    case S_AND: case S_OR:
        x->op = x->op == S_AND ? S_OR : S_AND;
        for (size_t i = 0; i < x->n; i++)
            if (!(x->kids[i] = negate(s, x->kids[i]))) return NULL;
        return x;
    case S_FIELD:
        if (!(x->kids[0] = negate(s, x->kids[0]))) return NULL;
        return x;
    case S_EXISTS:
        x->exists = !x->exists;
        return x;
    default:
        for (size_t i = 0; i < sizeof flip / sizeof *flip; i++)
            if (flip[i][0] == x->op) {
                x->op = flip[i][1];
                return x;
            }
        {
            snode *n = node_one(s, S_NOT, x);
            return n ? n : oom(s);
        }
    }
}

/* ---- parsing ------------------------------------------------------------------------------ */

int selector_from_jval(const jval *v, selector **out, mimeo_err *err) {
    buf b;
    buf_init(&b, 0);
    int rc = json_put_jval(&b, v);
    if (rc) {
        buf_destroy(&b);
        err_set(err, MIMEO_ENOMEM, "internal_server_error", "out of memory");
        return MIMEO_ENOMEM;
    }
    rc = selector_parse(b.data, b.len, out, err);
    buf_destroy(&b);
    return rc;
}

int selector_parse(const char *json, size_t len, selector **out, mimeo_err *err) {
    *out = NULL;
    if (err) err->code = 0;
    selector *s = calloc(1, sizeof *s);
    if (!s) {
        err_set(err, MIMEO_ENOMEM, "internal_server_error", "out of memory");
        return MIMEO_ENOMEM;
    }
    mimeo_err local;
    local.code = 0;
    s->err = err ? err : &local;
    int rc = json_tree_parse(json, len, NULL, &s->tree, s->err);
    if (rc) {
        selector_free(s);
        return rc;
    }
    if (s->tree->type != JV_OBJECT) {
        size_t n = json_utf8_prefix(json, len, 120);
        err_set(s->err, MIMEO_EINVAL, "invalid_selector_json",
                "Selector must be a JSON object, not: %.*s", (int)n, json);
        selector_free(s);
        return MIMEO_EINVAL;
    }
    if (s->tree->count > 0) {
        snode *x = norm_ops(s, s->tree);
        if (x) x = norm_fields(s, x, "", 0);
        if (x) x = norm_negations(s, x);
        if (x && x->op == S_FIELD && x->path_len == 0)
            x = fail(s, "invalid_selector", "One or more conditions is missing a field name.");
        if (!x) {
            rc = s->err->code ? s->err->code : MIMEO_ENOMEM;
            selector_free(s);
            return rc;
        }
        s->root = x;
    }
    s->err = NULL;
    *out = s;
    return 0;
}

bool selector_is_empty(const selector *s) { return s->root == NULL; }

/* ---- matching ----------------------------------------------------------------------------- */

/* Erlang's == (numbers by value, 1 == 1.0) or, with exact, =:= (an integer never equals a
 * float), on decoded JSON: what lists:member and == do in $all. */
static bool int_text_eq(const jval *a, const jval *b) {
    const char *x = a->str, *y = b->str;
    size_t xn = a->len, yn = b->len;
    bool xneg = xn && x[0] == '-', yneg = yn && y[0] == '-';
    if (xneg) { x++; xn--; }
    if (yneg) { y++; yn--; }
    bool xzero = xn == 1 && x[0] == '0', yzero = yn == 1 && y[0] == '0';
    if (xzero && yzero) return true;
    return xneg == yneg && xn == yn && memcmp(x, y, xn) == 0;
}

static bool term_eq(const jval *a, const jval *b, bool exact) {
    if (a->type != b->type) return false;
    switch (a->type) {
    case JV_NULL:   return true;
    case JV_BOOL:   return a->boolean == b->boolean;
    case JV_NUMBER: {
        bool ai = collate_is_integer(a), bi = collate_is_integer(b);
        if (ai && bi) return int_text_eq(a, b);
        if (exact && ai != bi) return false;
        return collate_number(a) == collate_number(b);
    }
    case JV_STRING: return a->len == b->len && memcmp(a->str, b->str, a->len) == 0;
    case JV_ARRAY:
    case JV_OBJECT:
        if (a->count != b->count) return false;
        for (size_t i = 0; i < a->count; i++) {
            if (a->type == JV_OBJECT &&
                (a->key_lens[i] != b->key_lens[i] ||
                 memcmp(a->keys[i], b->keys[i], a->key_lens[i]) != 0))
                return false;
            if (!term_eq(a->items[i], b->items[i], exact)) return false;
        }
        return true;
    }
    return false;
}

static const char *type_name(const jval *v) {
    switch (v->type) {
    case JV_NULL:   return "null";
    case JV_BOOL:   return "boolean";
    case JV_NUMBER: return "number";
    case JV_STRING: return "string";
    case JV_ARRAY:  return "array";
    default:        return "object";
    }
}

/* mango_doc:get_field: objects by member name, arrays by a decimal index. */
enum { GF_FOUND, GF_NOT_FOUND, GF_BAD_PATH };

static int get_parts(const jval *v, char *const *parts, const size_t *lens, size_t nparts,
                     const jval **out) {
    for (size_t i = 0; i < nparts; i++) {
        const char *p = parts[i];
        size_t pn = lens[i];
        if (v->type == JV_OBJECT) {
            const jval *next = NULL;
            for (size_t j = 0; j < v->count; j++)
                if (v->key_lens[j] == pn && memcmp(v->keys[j], p, pn) == 0) {
                    next = v->items[j];
                    break;
                }
            if (!next) return GF_NOT_FOUND;
            v = next;
        } else if (v->type == JV_ARRAY) {
            /* list_to_integer: an optional sign and digits */
            size_t j = 0;
            bool neg = false;
            if (j < pn && (p[j] == '+' || p[j] == '-')) neg = p[j++] == '-';
            if (j == pn) return GF_BAD_PATH;
            uint64_t pos = 0;
            for (; j < pn; j++) {
                if (p[j] < '0' || p[j] > '9') return GF_BAD_PATH;
                if (pos > v->count) continue; /* already out of range; keep validating */
                pos = pos * 10 + (uint64_t)(p[j] - '0');
            }
            if (neg && pos) return GF_BAD_PATH;
            if (pos >= v->count) return GF_BAD_PATH;
            v = v->items[pos];
        } else {
            return GF_BAD_PATH;
        }
    }
    *out = v;
    return GF_FOUND;
}

static int get_field(const jval *v, const snode *f, const jval **out) {
    return get_parts(v, f->parts, f->part_lens, f->nparts, out);
}

static bool match(const snode *x, const jval *v, bool raw);

static int cmp_with(const jval *a, const jval *b, bool raw) {
    return raw ? collate_raw_cmp(a, b) : collate_cmp(a, b);
}

static bool in_args(const jval *args, const jval *v, bool raw) {
    for (size_t i = 0; i < args->count; i++) {
        if (v->type == JV_ARRAY) {
            for (size_t j = 0; j < v->count; j++)
                if (cmp_with(v->items[j], args->items[i], raw) == 0) return true;
        } else if (cmp_with(v, args->items[i], raw) == 0) {
            return true;
        }
    }
    return false;
}

static bool regex_match(const snode *x, const jval *v) {
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(x->re, NULL);
    if (!md) return false;
    int rc = pcre2_match(x->re, (PCRE2_SPTR)v->str, v->len, 0, 0, md, x->mctx);
    pcre2_match_data_free(md);
    /* a hit limit (PCRE2_ERROR_MATCHLIMIT, _DEPTHLIMIT) or any other error is no match */
    return rc >= 0;
}

static bool match(const snode *x, const jval *v, bool raw) {
    switch (x->op) {
    case S_AND:
        for (size_t i = 0; i < x->n; i++)
            if (!match(x->kids[i], v, raw)) return false;
        return true;
    case S_OR:
        if (x->n == 0) return true; /* CouchDB: an empty $or is true */
        for (size_t i = 0; i < x->n; i++)
            if (match(x->kids[i], v, raw)) return true;
        return false;
    case S_NOR:
        /* only left inside $elemMatch/$allMatch/$keyMapMatch, where CouchDB's normaliser
         * does not reach (it then fails with invalid_operator); mimeo evaluates it */
        for (size_t i = 0; i < x->n; i++)
            if (match(x->kids[i], v, raw)) return false;
        return true;
    case S_NOT:
        return !match(x->kids[0], v, raw);
    case S_FIELD: {
        if (x->path_len == 0) return match(x->kids[0], v, raw);
        const jval *sub = NULL;
        int r = get_field(v, x, &sub);
        if (r == GF_NOT_FOUND)
            return x->kids[0]->op == S_EXISTS && !x->kids[0]->exists;
        if (r == GF_BAD_PATH) return false;
        bool id = x->path_len == 3 && memcmp(x->path, "_id", 3) == 0;
        return match(x->kids[0], sub, raw || id);
    }
    case S_EQ:  return cmp_with(v, x->arg, raw) == 0;
    case S_NE:  return cmp_with(v, x->arg, raw) != 0;
    case S_LT:  return cmp_with(v, x->arg, raw) < 0;
    case S_LTE: return cmp_with(v, x->arg, raw) <= 0;
    case S_GT:  return cmp_with(v, x->arg, raw) > 0;
    case S_GTE: return cmp_with(v, x->arg, raw) >= 0;
    case S_IN:  return in_args(x->arg, v, raw);
    case S_NIN:
        return !in_args(x->arg, v, raw);
    case S_EXISTS:
        return x->exists; /* the value is here */
    case S_TYPE:
        return strcmp(x->arg->str, type_name(v)) == 0 && strlen(x->arg->str) == x->arg->len;
    case S_MOD: {
        int64_t n;
        if (!is_int(v) || !jval_as_i64(v, &n)) return false;
        if (x->d == -1) return x->r == 0; /* n % -1 is 0, and INT64_MIN % -1 would trap */
        return n % x->d == x->r; /* C's % truncates, like Erlang's rem */
    }
    case S_REGEX:
        return v->type == JV_STRING && regex_match(x, v);
    case S_BEGINS:
        return v->type == JV_STRING && v->len >= x->arg->len &&
               memcmp(v->str, x->arg->str, x->arg->len) == 0;
    case S_SIZE:
        return v->type == JV_ARRAY && (int64_t)v->count == x->d;
    case S_ALL: {
        const jval *a = x->arg;
        if (a->count == 0) return false;
        if (a->count == 1 && a->items[0]->type == JV_ARRAY && term_eq(a->items[0], v, false))
            return true;
        if (v->type != JV_ARRAY) return false;
        for (size_t i = 0; i < a->count; i++) {
            bool found = false;
            for (size_t j = 0; j < v->count && !found; j++)
                found = term_eq(a->items[i], v->items[j], true);
            if (!found) return false;
        }
        return true;
    }
    case S_ELEM:
        if (v->type != JV_ARRAY) return false;
        for (size_t i = 0; i < v->count; i++)
            if (match(x->kids[0], v->items[i], raw)) return true;
        return false;
    case S_ALLM:
        if (v->type != JV_ARRAY || v->count == 0) return false;
        for (size_t i = 0; i < v->count; i++)
            if (!match(x->kids[0], v->items[i], raw)) return false;
        return true;
    case S_KEYMAP:
        if (v->type != JV_OBJECT) return false;
        for (size_t i = 0; i < v->count; i++) {
            jval key = { .type = JV_STRING, .str = v->keys[i], .len = v->key_lens[i] };
            if (match(x->kids[0], &key, raw)) return true;
        }
        return false;
    }
    return false;
}

bool selector_match(const selector *s, const jval *doc) {
    if (!s->root) return true;
    return match(s->root, doc, false);
}

int selector_match_json(const selector *s, const char *json, size_t len, bool *m) {
    *m = false;
    if (!s->root) {
        *m = true;
        return 0;
    }
    jval *doc = NULL;
    int rc = json_tree_parse(json, len, NULL, &doc, NULL);
    if (rc) return rc;
    *m = match(s->root, doc, false);
    jval_free(doc);
    return 0;
}

/* ---- writing ------------------------------------------------------------------------------ */

static int put_node(buf *b, const snode *x) {
    int rc;
    switch (x->op) {
    case S_AND: case S_OR: case S_NOR:
        rc = buf_printf(b, "{\"%s\":[", op_names[x->op]);
        for (size_t i = 0; !rc && i < x->n; i++) {
            if (i) rc = buf_putc(b, ',');
            if (!rc) rc = put_node(b, x->kids[i]);
        }
        return rc ? rc : buf_puts(b, "]}");
    case S_FIELD:
        rc = buf_putc(b, '{');
        if (!rc) rc = json_put_str(b, x->path, x->path_len);
        if (!rc) rc = buf_putc(b, ':');
        if (!rc) rc = put_node(b, x->kids[0]);
        return rc ? rc : buf_putc(b, '}');
    case S_NOT: case S_ELEM: case S_ALLM: case S_KEYMAP:
        rc = buf_printf(b, "{\"%s\":", op_names[x->op]);
        if (!rc) rc = put_node(b, x->kids[0]);
        return rc ? rc : buf_putc(b, '}');
    case S_EXISTS:
        return buf_printf(b, "{\"$exists\":%s}", x->exists ? "true" : "false");
    default:
        rc = buf_printf(b, "{\"%s\":", op_names[x->op]);
        if (!rc) rc = json_put_jval(b, x->arg);
        return rc ? rc : buf_putc(b, '}');
    }
}

int selector_to_json(const selector *s, buf *b) {
    if (!s->root) return buf_puts(b, "{}");
    return put_node(b, s->root);
}

/* ---- planning helpers ------------------------------------------------------------------- */

int sel_path_parse(const char *path, size_t len, sel_path *out, mimeo_err *err) {
    memset(out, 0, sizeof *out);
    selector tmp = {0};
    mimeo_err local = {0};
    tmp.err = err ? err : &local;
    snode f = {0};
    f.path = (char *)path;
    f.path_len = len;
    int rc = split_path(&tmp, &f);
    out->parts = f.parts;
    out->lens = f.part_lens;
    out->n = f.nparts;
    if (rc) sel_path_destroy(out);
    return rc;
}

void sel_path_destroy(sel_path *p) {
    if (p->parts)
        for (size_t i = 0; i < p->n; i++) free(p->parts[i]);
    free(p->parts);
    free(p->lens);
    memset(p, 0, sizeof *p);
}

int sel_path_get(const jval *v, const sel_path *p, const jval **out) {
    return get_parts(v, p->parts, p->lens, p->n, out) == GF_FOUND;
}

static bool path_is(const snode *x, const char *f, size_t n) {
    return x->op == S_FIELD && x->path_len == n && memcmp(x->path, f, n) == 0;
}

/* has_required_fields_int over a list of selectors; `left` marks fields still required. */
static void hrf(const snode *const *list, size_t n, const char *const *fields,
                const size_t *lens, bool *left, size_t nf) {
    for (size_t i = 0; i < n; i++) {
        size_t remaining = 0;
        for (size_t j = 0; j < nf; j++) remaining += left[j];
        if (!remaining) return;
        const snode *x = list[i];
        if (x->op == S_AND) {
            hrf((const snode *const *)x->kids, x->n, fields, lens, left, nf);
        } else if (x->op == S_OR) {
            /* each child against the full set; what any child leaves stays required */
            bool *acc = calloc(nf ? nf : 1, sizeof *acc), *tmp = malloc((nf ? nf : 1) * sizeof *tmp);
            if (!acc || !tmp) { free(acc); free(tmp); return; }
            for (size_t c = 0; c < x->n; c++) {
                memcpy(tmp, left, nf * sizeof *tmp);
                hrf((const snode *const *)&x->kids[c], 1, fields, lens, tmp, nf);
                for (size_t j = 0; j < nf; j++) acc[j] = acc[j] || tmp[j];
            }
            memcpy(left, acc, nf * sizeof *left);
            free(acc);
            free(tmp);
        } else if (x->op == S_FIELD) {
            const snode *c = x->kids[0];
            if (c->op == S_EXISTS && !c->exists) continue; /* the one that needs no field */
            for (size_t j = 0; j < nf; j++)
                if (left[j] && path_is(x, fields[j], lens[j])) { left[j] = false; break; }
        }
    }
}

bool selector_has_required_fields(const selector *s, const char *const *fields,
                                  const size_t *lens, size_t n) {
    if (!s->root) return n == 0;
    if (n == 0) return true;
    bool *left = malloc(n * sizeof *left);
    if (!left) return false;
    for (size_t i = 0; i < n; i++) left[i] = true;
    const snode *root = s->root;
    hrf(&root, 1, fields, lens, left, n);
    bool all = true;
    for (size_t i = 0; i < n; i++) all = all && !left[i];
    free(left);
    return all;
}

static bool icf(const snode *const *list, size_t n, const char *f, size_t len) {
    if (n == 1 && list[0]->op == S_AND) {
        for (size_t i = 0; i < list[0]->n; i++)
            if (icf((const snode *const *)&list[0]->kids[i], 1, f, len)) return true;
        return false;
    }
    for (size_t i = 0; i < n; i++)
        if (path_is(list[i], f, len)) return list[i]->kids[0]->op == S_EQ;
    return false;
}

bool selector_is_constant_field(const selector *s, const char *field, size_t len) {
    if (!s->root) return false;
    const snode *root = s->root;
    return icf(&root, 1, field, len);
}

static void tighten(sel_range *r, const snode *c, bool raw) {
    int (*cmp)(const jval *, const jval *) = raw ? collate_raw_cmp : collate_cmp;
    const jval *a = c->arg;
    bool lo = false, hi = false, incl = true;
    switch (c->op) {
    case S_EQ:  lo = hi = true; break;
    case S_GT:  lo = true; incl = false; break;
    case S_GTE: lo = true; break;
    case S_LT:  hi = true; incl = false; break;
    case S_LTE: hi = true; break;
    case S_BEGINS:
        /* strings from the prefix up to the end of the strings */
        if (!r->lo || cmp(a, r->lo) > 0) { r->lo = a; r->lo_incl = true; }
        if (!r->hi && !r->strings_hi) r->strings_hi = true;
        r->any = true;
        return;
    default:
        return;
    }
    r->any = true;
    if (lo) {
        int d = r->lo ? cmp(a, r->lo) : 1;
        if (d > 0 || (d == 0 && !incl)) { r->lo = a; r->lo_incl = incl; }
    }
    if (hi) {
        int d = r->hi ? cmp(a, r->hi) : -1;
        if (d < 0 || (d == 0 && !incl)) { r->hi = a; r->hi_incl = incl; r->strings_hi = false; }
    }
}

static void range_walk(const snode *x, const char *f, size_t len, sel_range *r) {
    if (x->op == S_AND) {
        for (size_t i = 0; i < x->n; i++) range_walk(x->kids[i], f, len, r);
        return;
    }
    if (path_is(x, f, len)) tighten(r, x->kids[0], len == 3 && memcmp(f, "_id", 3) == 0);
}

void selector_field_range(const selector *s, const char *field, size_t len, sel_range *out) {
    memset(out, 0, sizeof *out);
    if (s->root) range_walk(s->root, field, len, out);
}

static bool uses_field(const snode *x, const char *f, size_t len) {
    if (path_is(x, f, len)) return true;
    if (x->op == S_FIELD) return false;
    for (size_t i = 0; i < x->n; i++)
        if (uses_field(x->kids[i], f, len)) return true;
    return false;
}

bool selector_fields_include(const selector *s, const char *field, size_t len) {
    return s->root && uses_field(s->root, field, len);
}

bool selector_is_equalities(const selector *s, const char *const *fields, const size_t *lens,
                            size_t n) {
    if (!s->root || n == 0 || n > 64) return false;
    const snode *const *list = (const snode *const *)&s->root;
    size_t count = 1;
    if (s->root->op == S_AND) {
        list = (const snode *const *)s->root->kids;
        count = s->root->n;
    }
    if (count != n) return false;
    bool seen[64] = {false};
    for (size_t i = 0; i < count; i++) {
        const snode *x = list[i];
        if (x->op != S_FIELD || x->path_len == 0 || x->kids[0]->op != S_EQ) return false;
        jv_type t = x->kids[0]->arg->type;
        if (t == JV_ARRAY || t == JV_OBJECT) return false;
        /* _id and _rev compare as raw bytes in selectors but collate in index keys */
        if ((x->path_len == 3 && memcmp(x->path, "_id", 3) == 0) ||
            (x->path_len == 4 && memcmp(x->path, "_rev", 4) == 0))
            return false;
        size_t j = 0;
        while (j < n && !path_is(x, fields[j], lens[j])) j++;
        if (j == n || seen[j]) return false;
        seen[j] = true;
    }
    return true;
}

/* ---- the public face, for the HTTP layer's filtered changes ----------------------------- */

struct mimeo_selector { selector *s; };

int mimeo_selector_parse(const char *json, size_t len, mimeo_selector **out, mimeo_err *err) {
    *out = NULL;
    mimeo_selector *m = calloc(1, sizeof *m);
    if (!m) {
        err_set(err, MIMEO_ENOMEM, "internal_server_error", "out of memory");
        return MIMEO_ENOMEM;
    }
    int rc = selector_parse(json, len, &m->s, err);
    if (rc) {
        free(m);
        return rc;
    }
    *out = m;
    return 0;
}

int mimeo_selector_match(const mimeo_selector *sel, const char *doc_json, size_t len,
                         bool *match_out) {
    return selector_match_json(sel->s, doc_json, len, match_out);
}

int mimeo_selector_match_change(const mimeo_selector *sel, const char *row_json, size_t len,
                                bool *match_out) {
    *match_out = false;
    jval *row = NULL;
    int rc = json_tree_parse(row_json, len, NULL, &row, NULL);
    if (rc) return rc;
    const jval *doc = jval_get(row, "doc");
    if (doc && doc->type == JV_OBJECT) *match_out = selector_match(sel->s, doc);
    jval_free(row);
    return 0;
}

void mimeo_selector_free(mimeo_selector *sel) {
    if (!sel) return;
    selector_free(sel->s);
    free(sel);
}
