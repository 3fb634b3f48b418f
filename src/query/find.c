/* POST /{db}/_find and /{db}/_explain: the request's options (CouchDB's names, defaults and
 * errors), the choice of index (CouchDB's rules: a usable JSON index before the special
 * _all_docs index; among JSON indexes the longest restricted prefix, then the fewest
 * columns, then the name), the scan, the selector applied to every document, skip, limit,
 * bookmarks, projection and execution statistics.
 *
 * Documents are read only through seam.h: the one place to change when the database layer
 * hands out rows instead of JSON text. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/err.h"
#include "../db/index.h"
#include "collate.h"
#include "mindex.h"
#include "seam.h"
#include "selector.h"

#define FIND_PAGE 500
#define DEFAULT_LIMIT 25

/* ---- the request -------------------------------------------------------------------------- */

typedef struct sort_field {
    const char *name;
    size_t      len;
} sort_field;

typedef struct find_req {
    jval       *body;
    selector   *sel;
    const jval *fields;        /* array of strings, or NULL: whole documents */
    sel_path   *field_paths;
    size_t      nfields;
    sort_field *sort;
    size_t      nsort;
    bool        desc;
    uint64_t    limit, skip;
    const char *use_ddoc;      /* use_index: design document (without "_design/") */
    size_t      use_ddoc_len;
    const char *use_name;
    size_t      use_name_len;
    bool        has_use_index;
    const jval *bookmark;      /* a string, or NULL */
    bool        conflicts, update, stable, execution_stats, allow_fallback;
} find_req;

static void req_destroy(find_req *r) {
    selector_free(r->sel);
    for (size_t i = 0; i < r->nfields; i++) sel_path_destroy(&r->field_paths[i]);
    free(r->field_paths);
    free(r->sort);
    jval_free(r->body);
    memset(r, 0, sizeof *r);
}

static int bad(mimeo_err *err, const char *error, const char *fmt, const jval *v) {
    char text[120] = "";
    if (v) {
        buf b;
        buf_init(&b, 4096);
        json_put_jval(&b, v);
        size_t n = json_utf8_prefix(b.data ? b.data : "", b.len, sizeof text - 1);
        memcpy(text, b.data ? b.data : "", n);
        text[n] = 0;
        buf_destroy(&b);
    }
    err_set(err, MIMEO_EINVAL, error, fmt, text);
    return MIMEO_EINVAL;
}

static bool is_uint(const jval *v, uint64_t *out) {
    int64_t i;
    if (!v || v->type != JV_NUMBER || !collate_is_integer(v) || !jval_as_i64(v, &i) || i < 0)
        return false;
    *out = (uint64_t)i;
    return true;
}

static const char *const find_keys[] = {
    "selector", "use_index", "bookmark", "limit", "skip", "sort", "fields", "partition",
    "r", "conflicts", "update", "stale", "stable", "execution_stats", "allow_fallback",
};

static int req_parse(const char *json, size_t len, find_req *r, mimeo_err *err) {
    memset(r, 0, sizeof *r);
    r->limit = DEFAULT_LIMIT;
    r->update = true;
    r->allow_fallback = true;
    int rc = json_tree_parse(json, len, NULL, &r->body, err);
    if (rc) return rc;
    const jval *b = r->body;
    if (b->type != JV_OBJECT) {
        err_set(err, MIMEO_EINVAL, "bad_request", "Request body must be a JSON object");
        return MIMEO_EINVAL;
    }
    for (size_t i = 0; i < b->count; i++) {
        bool known = false;
        for (size_t k = 0; k < sizeof find_keys / sizeof *find_keys && !known; k++)
            known = strcmp(b->keys[i], find_keys[k]) == 0;
        if (!known) {
            int n = (int)json_utf8_prefix(b->keys[i], b->key_lens[i], 100);
            err_set(err, MIMEO_EINVAL, "invalid_key", "Invalid key %.*s for this request.", n,
                    b->keys[i]);
            return MIMEO_EINVAL;
        }
    }
    const jval *v = jval_get(b, "selector");
    if (!v) {
        err_set(err, MIMEO_EINVAL, "missing_required_key", "Missing required key: selector");
        return MIMEO_EINVAL;
    }
    if (v->type != JV_OBJECT)
        return bad(err, "invalid_selector_json", "Selector must be a JSON object, not: %s", v);
    if ((rc = selector_from_jval(v, &r->sel, err))) return rc;

    if ((v = jval_get(b, "limit")) && !is_uint(v, &r->limit))
        return bad(err, "invalid_non_neg_integer",
                   "%s is not an integer greater than or equal to zero", v);
    if ((v = jval_get(b, "skip")) && !is_uint(v, &r->skip))
        return bad(err, "invalid_non_neg_integer",
                   "%s is not an integer greater than or equal to zero", v);
    uint64_t rq;
    if ((v = jval_get(b, "r")) && (!is_uint(v, &rq) || rq == 0))
        return bad(err, "invalid_pos_integer", "%s is not an integer greater than zero", v);
    struct { const char *name; bool *out; } bools[] = {
        {"conflicts", &r->conflicts}, {"update", &r->update}, {"stable", &r->stable},
        {"execution_stats", &r->execution_stats}, {"allow_fallback", &r->allow_fallback},
    };
    for (size_t i = 0; i < sizeof bools / sizeof *bools; i++) {
        if (!(v = jval_get(b, bools[i].name))) continue;
        if (v->type != JV_BOOL) return bad(err, "invalid_boolean", "Invalid boolean value: %s", v);
        *bools[i].out = v->boolean;
    }
    if ((v = jval_get(b, "stale"))) {
        if (v->type != JV_STRING || strcmp(v->str, "ok") != 0)
            return bad(err, "invalid_value", "Invalid value for stale: %s", v);
        r->update = false;
        r->stable = true;
    }
    if ((v = jval_get(b, "partition")) && !(v->type == JV_STRING && v->len == 0))
        return bad(err, "bad_request", "Partitioned queries are not supported: %s", v);

    /* fields */
    if ((v = jval_get(b, "fields")) && !(v->type == JV_ARRAY && v->count == 0)) {
        if (v->type != JV_ARRAY)
            return bad(err, "invalid_fields_json", "Fields must be an array, not: %s", v);
        r->field_paths = calloc(v->count, sizeof *r->field_paths);
        if (!r->field_paths) return MIMEO_ENOMEM;
        for (size_t i = 0; i < v->count; i++) {
            const jval *f = v->items[i];
            if (f->type != JV_STRING)
                return bad(err, "invalid_field_json", "Invalid JSON for field spec: %s", f);
            if ((rc = sel_path_parse(f->str, f->len, &r->field_paths[i], err))) return rc;
            r->nfields = i + 1;
        }
        r->fields = v;
    }

    /* sort: ["f", {"g":"desc"}]; one direction for all */
    if ((v = jval_get(b, "sort"))) {
        if (v->type != JV_ARRAY)
            return bad(err, "invalid_sort_json", "Sort must be an array of sort specs, not: %s", v);
        r->sort = calloc(v->count ? v->count : 1, sizeof *r->sort);
        if (!r->sort) return MIMEO_ENOMEM;
        for (size_t i = 0; i < v->count; i++) {
            const jval *s = v->items[i];
            bool desc = false;
            if (s->type == JV_STRING) {
                r->sort[i] = (sort_field){s->str, s->len};
            } else if (s->type == JV_OBJECT && s->count == 1) {
                const jval *d = s->items[0];
                if (d->type != JV_STRING ||
                    (strcmp(d->str, "asc") != 0 && strcmp(d->str, "desc") != 0))
                    return bad(err, "invalid_sort_dir", "Invalid sort direction: %s", d);
                desc = strcmp(d->str, "desc") == 0;
                r->sort[i] = (sort_field){s->keys[0], s->key_lens[0]};
            } else {
                return bad(err, "invalid_sort_field", "Invalid sort field: %s", s);
            }
            if (i > 0 && desc != r->desc) {
                err_set(err, MIMEO_EINVAL, "unsupported_mixed_sort",
                        "Sorts currently only support a single direction for all fields.");
                return MIMEO_EINVAL;
            }
            r->desc = desc;
            r->nsort = i + 1;
        }
    }

    /* use_index: "ddoc", "_design/ddoc", "ddoc/name", ["ddoc"], ["ddoc","name"] */
    if ((v = jval_get(b, "use_index")) && v->type != JV_NULL &&
        !(v->type == JV_ARRAY && v->count == 0)) {
        const char *d = NULL, *n = NULL;
        size_t dl = 0, nl = 0;
        if (v->type == JV_STRING) {
            d = v->str;
            dl = v->len;
            if (dl >= 8 && memcmp(d, "_design/", 8) == 0) { d += 8; dl -= 8; }
            const char *slash = memchr(d, '/', dl);
            if (slash) {
                n = slash + 1;
                nl = dl - (size_t)(n - d);
                dl = (size_t)(slash - d);
                if (memchr(n, '/', nl) || nl == 0 || dl == 0)
                    return bad(err, "invalid_index_name", "Invalid index name: %s", v);
            }
        } else if (v->type == JV_ARRAY && v->count <= 2 && v->items[0]->type == JV_STRING &&
                   (v->count == 1 || v->items[1]->type == JV_STRING)) {
            d = v->items[0]->str;
            dl = v->items[0]->len;
            if (dl >= 8 && memcmp(d, "_design/", 8) == 0) { d += 8; dl -= 8; }
            if (v->count == 2) { n = v->items[1]->str; nl = v->items[1]->len; }
        } else {
            return bad(err, "invalid_index_name", "Invalid index name: %s", v);
        }
        r->has_use_index = true;
        r->use_ddoc = d;
        r->use_ddoc_len = dl;
        r->use_name = n;
        r->use_name_len = nl;
    }

    if ((v = jval_get(b, "bookmark")) && v->type != JV_NULL &&
        !(v->type == JV_STRING && (v->len == 0 || strcmp(v->str, "nil") == 0))) {
        if (v->type != JV_STRING)
            return bad(err, "invalid_bookmark", "Invalid bookmark value: %s", v);
        r->bookmark = v;
    }
    return 0;
}

/* ---- planning ------------------------------------------------------------------------------ */

typedef struct plan {
    const mindex *ix;          /* NULL: the special _all_docs index */
    buf           lo, hi;      /* json index: encoded bounds; special: id bounds */
    bool          has_lo, has_hi;
    size_t        prefix;      /* restricted leading columns */
    bool          exact;       /* the selector is one equality per column: matching rows
                                  are the answer (see selector_is_equalities) */
    buf           warning;
    const jval   *lo_vals[64], *hi_vals[64]; /* for _explain */
} plan;

static bool ddoc_is(const mindex *ix, const char *d, size_t n) {
    return strlen(ix->ddoc) == 8 + n && memcmp(ix->ddoc + 8, d, n) == 0;
}

static bool sort_has(const find_req *r, const char *f, size_t n) {
    for (size_t i = 0; i < r->nsort; i++)
        if (r->sort[i].len == n && memcmp(r->sort[i].name, f, n) == 0) return true;
    return false;
}

/* mango_idx_view:is_usable. */
static bool json_usable(const mindex *ix, const find_req *r) {
    /* the columns the selector must guarantee: not the sort fields, not _id or _rev */
    const char *need[64];
    size_t lens[64], n = 0;
    if (ix->nfields > 64) return false;
    for (size_t i = 0; i < ix->nfields; i++) {
        const char *f = ix->fields[i];
        size_t l = ix->field_lens[i];
        if (sort_has(r, f, l)) continue;
        if ((l == 3 && memcmp(f, "_id", 3) == 0) || (l == 4 && memcmp(f, "_rev", 4) == 0))
            continue;
        need[n] = f;
        lens[n++] = l;
    }
    if (!selector_has_required_fields(r->sel, need, lens, n)) return false;
    if (r->nsort == 0) return true;
    /* can_use_sort: the sort is a prefix of the columns once constant columns are skipped */
    size_t c = 0;
    while (c < ix->nfields) {
        if (ix->field_lens[c] == r->sort[0].len &&
            memcmp(ix->fields[c], r->sort[0].name, r->sort[0].len) == 0) {
            if (ix->nfields - c < r->nsort) return false;
            for (size_t k = 0; k < r->nsort; k++)
                if (ix->field_lens[c + k] != r->sort[k].len ||
                    memcmp(ix->fields[c + k], r->sort[k].name, r->sort[k].len) != 0)
                    return false;
            return true;
        }
        if (!selector_is_constant_field(r->sel, ix->fields[c], ix->field_lens[c])) return false;
        c++;
    }
    return false;
}

static size_t restricted_prefix(const mindex *ix, const selector *s) {
    size_t n = 0;
    for (; n < ix->nfields; n++) {
        sel_range rg;
        selector_field_range(s, ix->fields[n], ix->field_lens[n], &rg);
        if (!rg.any) break;
    }
    return n;
}

static bool special_usable(const find_req *r) {
    return r->nsort == 0 ||
           (r->nsort == 1 && r->sort[0].len == 3 && memcmp(r->sort[0].name, "_id", 3) == 0);
}

/* Builds the scan bounds of a JSON index from the selector: equal leading columns, then one
 * range. See collate.c for the key layout; 0xFF after a prefix is above every key that
 * extends it. */
static int json_bounds(plan *p, const mindex *ix, const selector *s) {
    buf_reset(&p->lo);
    buf_reset(&p->hi);
    int rc = buf_putc(&p->lo, 0x60);
    size_t i = 0;
    for (; !rc && i < ix->nfields && i < 64; i++) {
        sel_range rg;
        selector_field_range(s, ix->fields[i], ix->field_lens[i], &rg);
        p->lo_vals[i] = rg.lo;
        p->hi_vals[i] = rg.hi;
        bool eq = rg.lo && rg.hi && rg.lo_incl && rg.hi_incl && collate_cmp(rg.lo, rg.hi) == 0;
        if (eq) {
            rc = collate_key_put(&p->lo, rg.lo);
            continue;
        }
        rc = buf_put(&p->hi, p->lo.data, p->lo.len);
        if (!rc && rg.lo) rc = collate_key_put(&p->lo, rg.lo);
        if (!rc && rg.hi) {
            /* the element's key without its own end, so longer keys with it stay inside */
            rc = collate_key_put(&p->hi, rg.hi);
        } else if (!rc && rg.strings_hi) {
            rc = buf_putc(&p->hi, 0x50);
        }
        if (!rc) rc = buf_putc(&p->hi, (char)0xFF);
        p->has_lo = p->has_hi = true;
        return rc;
    }
    if (!rc) rc = buf_put(&p->hi, p->lo.data, p->lo.len);
    if (!rc) rc = buf_putc(&p->hi, (char)0xFF);
    p->has_lo = p->has_hi = true;
    return rc;
}

/* _id bounds for the special index (byte order; only string conditions narrow it). */
static int special_bounds(plan *p, const selector *s) {
    sel_range rg;
    selector_field_range(s, "_id", 3, &rg);
    int rc = 0;
    if (rg.lo && rg.lo->type == JV_STRING) {
        rc = buf_put(&p->lo, rg.lo->str, rg.lo->len);
        p->has_lo = true;
    }
    if (!rc && rg.hi && rg.hi->type == JV_STRING) {
        rc = buf_put(&p->hi, rg.hi->str, rg.hi->len);
        p->has_hi = true;
    }
    return rc;
}

static int plan_make(const find_req *r, const mindex_set *set, plan *p, mimeo_err *err) {
    memset(p, 0, sizeof *p);
    buf_init(&p->lo, 0);
    buf_init(&p->hi, 0);
    buf_init(&p->warning, 0);
    const mindex *best = NULL;
    size_t best_prefix = 0;
    bool use_matched = false;
    for (int pass = 0; pass < 2 && !best; pass++) {
        /* pass 0: the indexes use_index names; pass 1 (fallback): every index */
        if (pass == 0 && !r->has_use_index) continue;
        for (size_t i = 0; i < set->n; i++) {
            const mindex *ix = &set->v[i];
            bool named = r->has_use_index && ddoc_is(ix, r->use_ddoc, r->use_ddoc_len) &&
                         (!r->use_name || (strlen(ix->name) == r->use_name_len &&
                                           memcmp(ix->name, r->use_name, r->use_name_len) == 0));
            if (pass == 0 && !named) continue;
            /* partial indexes serve only queries that name them */
            if (pass == 1 && ix->partial) continue;
            if (!json_usable(ix, r)) continue;
            size_t pre = restricted_prefix(ix, r->sel);
            bool better = !best || pre > best_prefix ||
                          (pre == best_prefix && ix->nfields < best->nfields) ||
                          (pre == best_prefix && ix->nfields == best->nfields &&
                           (strcmp(ix->ddoc, best->ddoc) < 0 ||
                            (strcmp(ix->ddoc, best->ddoc) == 0 &&
                             strcmp(ix->name, best->name) < 0)));
            if (better) { best = ix; best_prefix = pre; }
        }
        if (pass == 0 && best) use_matched = true;
    }
    if (r->has_use_index && !use_matched) {
        if (!r->allow_fallback) {
            err_set(err, MIMEO_EINVAL, "no_usable_index",
                    "The index specified with \"use_index\" is not usable for the query.");
            return MIMEO_EINVAL;
        }
        if (r->use_name)
            buf_printf(&p->warning, "_design/%.*s, %.*s was not used because it is not a "
                       "valid index for this query.", (int)r->use_ddoc_len, r->use_ddoc,
                       (int)r->use_name_len, r->use_name);
        else
            buf_printf(&p->warning, "_design/%.*s was not used because it does not contain "
                       "a valid index for this query.", (int)r->use_ddoc_len, r->use_ddoc);
    }
    if (best) {
        p->ix = best;
        p->prefix = best_prefix;
        p->exact = selector_is_equalities(r->sel, (const char *const *)best->fields,
                                          best->field_lens, best->nfields);
        return json_bounds(p, best, r->sel);
    }
    if (!special_usable(r)) {
        err_set(err, MIMEO_EINVAL, "no_usable_index",
                "No index exists for this sort, try indexing by the sort fields.");
        return MIMEO_EINVAL;
    }
    if (p->warning.len) buf_putc(&p->warning, '\n');
    buf_puts(&p->warning, "No matching index found, create an index to optimize query time.");
    return special_bounds(p, r->sel);
}

static void plan_destroy(plan *p) {
    buf_destroy(&p->lo);
    buf_destroy(&p->hi);
    buf_destroy(&p->warning);
}

/* ---- bookmarks ------------------------------------------------------------------------------
 * An opaque base64url text of: 'a' · id (the special index), or 'j' · varint(key length) ·
 * key · id (a JSON index: the last row's encoded key and document id). */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int b64_put(buf *b, const unsigned char *p, size_t n) {
    int rc = 0;
    for (size_t i = 0; !rc && i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n) v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n) v |= p[i + 2];
        char o[4] = {b64[(v >> 18) & 63], b64[(v >> 12) & 63], b64[(v >> 6) & 63], b64[v & 63]};
        rc = buf_put(b, o, i + 2 < n ? 4 : i + 1 < n ? 3 : 2);
    }
    return rc;
}

static int b64_get(const char *s, size_t n, buf *out) {
    uint32_t v = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        const char *q = memchr(b64, s[i], 64);
        if (!q || !s[i]) return MIMEO_EINVAL;
        v = (v << 6) | (uint32_t)(q - b64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (buf_putc(out, (char)((v >> bits) & 0xFF))) return MIMEO_ENOMEM;
        }
    }
    return bits >= 6 ? MIMEO_EINVAL : 0;
}

typedef struct bookmark {
    buf    raw;
    bool   json;
    const unsigned char *key;
    size_t key_len;
    const char *id;
    size_t id_len;
} bookmark;

static int bookmark_decode(const find_req *r, const plan *p, bookmark *bm, mimeo_err *err) {
    buf_init(&bm->raw, 0);
    const jval *v = r->bookmark;
    int rc = b64_get(v->str, v->len, &bm->raw);
    const unsigned char *d = (const unsigned char *)bm->raw.data;
    size_t n = bm->raw.len;
    if (!rc && n >= 2 && d[0] == 'a' && !p->ix) {
        bm->id = (const char *)d + 1;
        bm->id_len = n - 1;
        return 0;
    }
    if (!rc && n >= 2 && d[0] == 'j' && p->ix) {
        const unsigned char *q = d + 1, *end = d + n;
        uint64_t kl;
        if (varint_get(&q, end, &kl) == 0 && kl > 0 && kl <= (uint64_t)(end - q) &&
            (uint64_t)(end - q) - kl > 0) {
            bm->json = true;
            bm->key = q;
            bm->key_len = (size_t)kl;
            bm->id = (const char *)q + kl;
            bm->id_len = (size_t)(end - q) - (size_t)kl;
            return 0;
        }
    }
    size_t shown = json_utf8_prefix(v->str, v->len, 100);
    err_set(err, MIMEO_EINVAL, "invalid_bookmark", "Invalid bookmark value: %.*s", (int)shown,
            v->str);
    return MIMEO_EINVAL;
}

/* ---- execution ----------------------------------------------------------------------------- */

typedef struct exec {
    const find_req *r;
    const plan     *p;
    mimeo_db       *db;
    buf             out;        /* the docs array's contents */
    uint64_t        returned, skipped;
    uint64_t        keys_examined, docs_examined;
    buf             last_key;   /* bookmark of the last document returned */
    buf             last_id;
    uint64_t        ix_seq;     /* the index's rows reflect every change up to here */
    bool            any_returned;
    int             rc;
} exec;

/* The projection tree of `fields`: objects by member, a value where a listed path ends. */
typedef struct onode {
    const char   *key;
    size_t        len;
    const jval   *val;
    struct onode *kids, *next;
} onode;

static void onode_free(onode *n) {
    while (n) {
        onode *nx = n->next;
        onode_free(n->kids);
        free(n);
        n = nx;
    }
}

static int onode_put(buf *b, const onode *n) {
    int rc = buf_putc(b, '{');
    for (const onode *c = n; !rc && c; c = c->next) {
        if (c != n) rc = buf_putc(b, ',');
        if (!rc) rc = json_put_str(b, c->key, c->len);
        if (!rc) rc = buf_putc(b, ':');
        if (!rc) rc = c->val ? json_put_jval(b, c->val) : onode_put(b, c->kids);
    }
    return rc ? rc : buf_putc(b, '}');
}

/* Appends doc, or its requested fields as mango_fields:extract does: the fields found, in
 * request order, nested as in the document; a field listed after one of its parents adds
 * nothing (the parent's value holds it), one listed before is replaced by the parent. */
static int put_doc(exec *e, const seam_doc *d, const jval *doc) {
    if (e->returned) {
        int rc = buf_puts(&e->out, ",\n");
        if (rc) return rc;
    }
    const find_req *r = e->r;
    if (!r->fields) return buf_put(&e->out, d->json, d->len);
    onode *root = NULL;
    int rc = 0;
    for (size_t i = 0; i < r->nfields && !rc; i++) {
        const jval *v;
        const sel_path *pp = &r->field_paths[i];
        if (!sel_path_get(doc, pp, &v)) continue;
        onode **list = &root;
        for (size_t k = 0; k < pp->n; k++) {
            onode *c = *list, *prev = NULL;
            while (c && !(c->len == pp->lens[k] && memcmp(c->key, pp->parts[k], c->len) == 0)) {
                prev = c;
                c = c->next;
            }
            if (!c) {
                c = calloc(1, sizeof *c);
                if (!c) { rc = MIMEO_ENOMEM; break; }
                c->key = pp->parts[k];
                c->len = pp->lens[k];
                if (prev) prev->next = c; else *list = c;
            }
            if (k + 1 == pp->n) {
                onode_free(c->kids);
                c->kids = NULL;
                c->val = v;
                break;
            }
            if (c->val) break;
            list = &c->kids;
        }
    }
    if (!rc) rc = root ? onode_put(&e->out, root) : buf_puts(&e->out, "{}");
    onode_free(root);
    return rc;
}

/* One candidate document: 1 to stop (limit reached), 0 to go on, or an error. `exact`: the
 * index row alone says the document matches, so it is parsed only for a projection. */
static int consider(exec *e, const char *id, size_t id_len, seam_doc *d, bool exact,
                    const unsigned char *key, size_t key_len) {
    if (id_len >= 8 && memcmp(id, "_design/", 8) == 0) return 0;
    e->docs_examined++;
    const jval *doc = NULL;
    if (!exact || e->r->fields) {
        if (!(doc = seam_doc_tree(d))) return d->parse_rc;
    }
    if (!exact && !selector_match(e->r->sel, doc)) return 0;
    if (e->skipped < e->r->skip) {
        e->skipped++;
        return 0;
    }
    if (e->returned >= e->r->limit) return 1;
    int rc = put_doc(e, d, doc);
    if (!rc) {
        buf_reset(&e->last_id);
        buf_reset(&e->last_key);
        rc = buf_put(&e->last_id, id, id_len);
        if (!rc && key) rc = buf_put(&e->last_key, key, key_len);
        e->any_returned = true;
    }
    if (rc) return rc;
    e->returned++;
    return e->returned >= e->r->limit ? 1 : 0;
}

static int special_doc(void *ctx, const char *id, size_t id_len, seam_doc *doc) {
    exec *e = ctx;
    e->keys_examined++;
    return consider(e, id, id_len, doc, false, NULL, 0);
}

static int run_special(exec *e, const bookmark *bm, mimeo_err *err) {
    const plan *p = e->p;
    bool desc = e->r->desc;
    const char *start = NULL, *end = NULL;
    size_t sl = 0, el = 0;
    bool after = false;
    if (!desc) {
        if (p->has_lo) { start = p->lo.data; sl = p->lo.len; }
        if (p->has_hi) { end = p->hi.data; el = p->hi.len; }
    } else {
        if (p->has_hi) { start = p->hi.data; sl = p->hi.len; }
        if (p->has_lo) { end = p->lo.data; el = p->lo.len; }
    }
    if (bm && bm->id) { start = bm->id; sl = bm->id_len; after = true; }
    if (e->r->limit == 0) return 0;
    return seam_scan_docs(e->db, start, sl, after, end, el, desc, e->r->conflicts, special_doc,
                          e, err);
}

/* A page of index rows: keys and ids, copied out of the read snapshot. */
typedef struct idx_page {
    buf    data;             /* key bytes then id bytes, row after row */
    size_t off[FIND_PAGE][2], klen[FIND_PAGE], ilen[FIND_PAGE];
    size_t n;
    const plan *p;
    bool   desc, past_end;
} idx_page;

static int key_cmp(const unsigned char *a, size_t an, const unsigned char *b, size_t bn) {
    size_t n = an < bn ? an : bn;
    int r = n ? memcmp(a, b, n) : 0;
    if (r) return r;
    return an < bn ? -1 : an > bn ? 1 : 0;
}

static int page_row(void *ctx, const unsigned char *key, size_t key_len, const char *id,
                    size_t id_len) {
    idx_page *pg = ctx;
    const plan *p = pg->p;
    /* past the range? (lo is compared as stored keys are cut) */
    if (!pg->desc && key_cmp(key, key_len, (const unsigned char *)p->hi.data, p->hi.len) > 0) {
        pg->past_end = true;
        return 1;
    }
    if (pg->desc) {
        size_t ll = p->lo.len > DBIDX_KEY_MAX ? DBIDX_KEY_MAX : p->lo.len;
        if (key_cmp(key, key_len, (const unsigned char *)p->lo.data, ll) < 0) {
            pg->past_end = true;
            return 1;
        }
    }
    pg->off[pg->n][0] = pg->data.len;
    int rc = buf_put(&pg->data, key, key_len);
    pg->off[pg->n][1] = pg->data.len;
    if (!rc) rc = buf_put(&pg->data, id, id_len);
    pg->klen[pg->n] = key_len;
    pg->ilen[pg->n] = id_len;
    pg->n++;
    return rc;
}

typedef struct page_docs {
    exec     *e;
    idx_page *pg;
    int       stop;
} page_docs;

static int page_doc(void *ctx, size_t i, seam_doc *doc) {
    page_docs *d = ctx;
    idx_page *pg = d->pg;
    /* The row is the answer only when it was made from this very version of the document
     * (its latest change is one the index has seen: a later write may have moved it) and
     * its key was stored whole. */
    bool exact = pg->p->exact && doc->seq && doc->seq <= d->e->ix_seq &&
                 pg->klen[i] < DBIDX_KEY_MAX;
    int r = consider(d->e, pg->data.data + pg->off[i][1], pg->ilen[i], doc, exact,
                     (const unsigned char *)pg->data.data + pg->off[i][0], pg->klen[i]);
    if (r > 0) d->stop = 1;
    return r;
}

static int run_json(exec *e, const bookmark *bm, mimeo_err *err) {
    const plan *p = e->p;
    bool desc = e->r->desc;
    if (e->r->update) {
        int rc = mindex_update(e->db, p->ix, &e->ix_seq, err);
        if (rc) return rc;
    } else if (p->exact) {
        int rc = dbidx_seq(e->db, p->ix->id, &e->ix_seq);
        if (rc) return rc;
    }
    if (e->r->limit == 0) return 0;
    /* not calloc: zeroing its 16 KB of row offsets cost more than a selective query's scan */
    idx_page *pg = malloc(sizeof *pg);
    if (!pg) return MIMEO_ENOMEM;
    pg->n = 0;
    pg->past_end = false;
    buf_init(&pg->data, 0);
    pg->p = p;
    pg->desc = desc;
    buf pos_key, pos_id;
    buf_init(&pos_key, 0);
    buf_init(&pos_id, 0);
    bool have_id = false;
    int rc = 0;
    if (bm && bm->json) {
        rc = buf_put(&pos_key, bm->key, bm->key_len);
        if (!rc) rc = buf_put(&pos_id, bm->id, bm->id_len);
        have_id = true;
    } else {
        const buf *b = desc ? &p->hi : &p->lo;
        rc = buf_put(&pos_key, b->data, b->len);
    }
    /* small pages first: a selective query reads few rows; then full pages */
    size_t want = e->r->limit + e->r->skip < FIND_PAGE ? (size_t)(e->r->limit + e->r->skip) + 1
                                                      : FIND_PAGE;
    const char *ids[FIND_PAGE];
    size_t lens[FIND_PAGE];
    while (!rc) {
        pg->n = 0;
        buf_reset(&pg->data);
        rc = dbidx_scan(e->db, p->ix->id, (const unsigned char *)pos_key.data, pos_key.len,
                        have_id ? pos_id.data : NULL, pos_id.len, desc, want, page_row, pg);
        if (rc > 0) rc = 0;
        if (rc) break;
        e->keys_examined += pg->n;
        for (size_t i = 0; i < pg->n; i++) {
            ids[i] = pg->data.data + pg->off[i][1];
            lens[i] = pg->ilen[i];
        }
        page_docs d = {e, pg, 0};
        if (pg->n) rc = seam_get_docs(e->db, ids, lens, pg->n, e->r->conflicts, page_doc, &d);
        if (rc > 0) rc = 0;
        if (rc || d.stop || pg->past_end || pg->n < want) break;
        size_t last = pg->n - 1;
        buf_reset(&pos_key);
        buf_reset(&pos_id);
        rc = buf_put(&pos_key, pg->data.data + pg->off[last][0], pg->klen[last]);
        if (!rc) rc = buf_put(&pos_id, pg->data.data + pg->off[last][1], pg->ilen[last]);
        have_id = true;
        want = FIND_PAGE;
    }
    buf_destroy(&pos_key);
    buf_destroy(&pos_id);
    buf_destroy(&pg->data);
    free(pg);
    return rc;
}

static int put_bookmark(buf *b, const exec *e, const find_req *r) {
    if (!e->any_returned) {
        if (r->bookmark) return json_put_str(b, r->bookmark->str, r->bookmark->len);
        return buf_puts(b, "\"nil\"");
    }
    buf raw;
    buf_init(&raw, 0);
    int rc;
    if (e->p->ix) {
        rc = buf_putc(&raw, 'j');
        if (!rc) rc = buf_put_varint(&raw, e->last_key.len);
        if (!rc) rc = buf_put(&raw, e->last_key.data, e->last_key.len);
    } else {
        rc = buf_putc(&raw, 'a');
    }
    if (!rc) rc = buf_put(&raw, e->last_id.data, e->last_id.len);
    if (!rc) rc = buf_putc(b, '"');
    if (!rc) rc = b64_put(b, (const unsigned char *)raw.data, raw.len);
    if (!rc) rc = buf_putc(b, '"');
    buf_destroy(&raw);
    return rc;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Loads the indexes, plans, and (for _find) runs. */
static int find_run(mimeo_db *db, const char *json, size_t len, bool explain, char **json_out,
                    size_t *out_len, mimeo_err *err) {
    double t0 = now_ms();
    find_req r;
    const mindex_set *set = NULL;
    plan p;
    memset(&p, 0, sizeof p);
    bookmark bm;
    memset(&bm, 0, sizeof bm);
    exec e;
    memset(&e, 0, sizeof e);
    buf out;
    buf_init(&out, 0);
    buf_init(&e.out, 0);
    buf_init(&e.last_key, 0);
    buf_init(&e.last_id, 0);
    int rc = req_parse(json, len, &r, err);
    if (!rc) rc = mindex_acquire(db, &set, err);
    if (!rc) rc = plan_make(&r, set, &p, err);
    if (!rc && r.bookmark) rc = bookmark_decode(&r, &p, &bm, err);
    if (rc) goto done;
    if (explain) {
        rc = buf_puts(&out, "{\"dbname\":");
        if (!rc) rc = json_put_cstr(&out, mimeo_db_name(db));
        if (!rc) rc = buf_puts(&out, ",\"index\":");
        if (!rc) rc = mindex_put_json(&out, p.ix);
        if (!rc) rc = buf_puts(&out, ",\"partitioned\":false,\"selector\":");
        if (!rc) rc = selector_to_json(r.sel, &out);
        if (!rc) rc = buf_printf(&out, ",\"opts\":{\"limit\":%" PRIu64 ",\"skip\":%" PRIu64
                                 ",\"conflicts\":%s,\"update\":%s,\"stable\":%s,"
                                 "\"execution_stats\":%s},\"limit\":%" PRIu64 ",\"skip\":%"
                                 PRIu64 ",\"fields\":", r.limit, r.skip,
                                 r.conflicts ? "true" : "false", r.update ? "true" : "false",
                                 r.stable ? "true" : "false",
                                 r.execution_stats ? "true" : "false", r.limit, r.skip);
        if (!rc) rc = r.fields ? json_put_jval(&out, r.fields) : buf_puts(&out, "\"all_fields\"");
        if (!rc) rc = buf_printf(&out, ",\"mrargs\":{\"include_docs\":true,\"view_type\":\"map\","
                                 "\"reduce\":false,\"direction\":\"%s\",\"stable\":%s,"
                                 "\"update\":%s,\"conflicts\":%s,\"start_key\":",
                                 r.desc ? "rev" : "fwd", r.stable ? "true" : "false",
                                 r.update ? "true" : "false", r.conflicts ? "true" : "false");
        /* the bounds as JSON: [equal values…, range start] */
        for (int side = 0; !rc && side < 2; side++) {
            if (side) rc = buf_puts(&out, ",\"end_key\":");
            if (rc) break;
            if (!p.ix) {
                const buf *b = side ? &p.hi : &p.lo;
                bool has = side ? p.has_hi : p.has_lo;
                rc = has ? json_put_str(&out, b->data, b->len) : buf_puts(&out, "null");
                continue;
            }
            rc = buf_putc(&out, '[');
            for (size_t i = 0; !rc && i < p.ix->nfields && i < 64; i++) {
                const jval *v = side ? p.hi_vals[i] : p.lo_vals[i];
                if (!v) {
                    if (side && i < p.ix->nfields) rc = buf_puts(&out, i ? ",\"<MAX>\"" : "\"<MAX>\"");
                    break;
                }
                if (i) rc = buf_putc(&out, ',');
                if (!rc) rc = json_put_jval(&out, v);
            }
            if (!rc) rc = buf_putc(&out, ']');
        }
        if (!rc) rc = buf_puts(&out, "},\"covering\":false}");
        if (rc) goto oom;
        *json_out = buf_detach(&out, out_len);
        goto done;
    }
    e.r = &r;
    e.p = &p;
    e.db = db;
    rc = p.ix ? run_json(&e, r.bookmark ? &bm : NULL, err)
              : run_special(&e, r.bookmark ? &bm : NULL, err);
    if (rc) goto done;
    rc = buf_puts(&out, "{\"docs\":[");
    if (!rc && e.out.len) rc = buf_put(&out, e.out.data, e.out.len);
    if (!rc) rc = buf_puts(&out, "],\n\"bookmark\":");
    if (!rc) rc = put_bookmark(&out, &e, &r);
    if (!rc && p.warning.len) {
        rc = buf_puts(&out, ",\n\"warning\":");
        if (!rc) rc = json_put_str(&out, p.warning.data, p.warning.len);
    }
    if (!rc && r.execution_stats)
        rc = buf_printf(&out, ",\n\"execution_stats\":{\"total_keys_examined\":%" PRIu64
                        ",\"total_docs_examined\":%" PRIu64 ",\"total_quorum_docs_examined\":0,"
                        "\"results_returned\":%" PRIu64 ",\"execution_time_ms\":%.3f}",
                        e.keys_examined, e.docs_examined, e.returned, now_ms() - t0);
    if (!rc) rc = buf_puts(&out, "}\n");
    if (rc) goto oom;
    *json_out = buf_detach(&out, out_len);
    goto done;
oom:
    err_set(err, rc, rc == MIMEO_ETOOLARGE ? "too_large" : "internal_server_error", "%s",
            mimeo_strerror(rc));
done:
    if (rc && err && !err->code) err_set(err, rc, "internal_server_error", "%s", mimeo_strerror(rc));
    buf_destroy(&bm.raw);
    buf_destroy(&e.out);
    buf_destroy(&e.last_key);
    buf_destroy(&e.last_id);
    buf_destroy(&out);
    plan_destroy(&p);
    mindex_release(set);
    req_destroy(&r);
    return rc;
}

int mimeo_find(mimeo_db *db, const char *json, size_t len, char **json_out, size_t *out_len,
               mimeo_err *err) {
    if (err) err->code = 0;
    return find_run(db, json, len, false, json_out, out_len, err);
}

int mimeo_explain(mimeo_db *db, const char *json, size_t len, char **json_out,
                  size_t *out_len, mimeo_err *err) {
    if (err) err->code = 0;
    return find_run(db, json, len, true, json_out, out_len, err);
}
