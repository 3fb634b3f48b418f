/* View queries: CouchDB's parameters (couch_mrview_util's validation and errors), key ranges
 * over the stored rows, map rows with include_docs, reduce with group/group_level through
 * the built-in reducers (C) or the query server (reduce/rereduce), multi-queries, and the
 * reply written as text in pieces: rows are read a bounded slice per read transaction and
 * no document read or query-server call happens inside one. Also _info and _view_cleanup. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "view_int.h"
#include "../db/db_int.h"
#include "../query/collate.h"

#define PAGE_ROWS   500     /* rows per read transaction */
#define DOC_PAGE    100     /* include_docs: rows read before their documents are */
#define OUT_CHUNK   (64 * 1024)
#define JS_BATCH    500     /* rows per reduce call */
#define COUNT_PAGE  20000   /* rows per read transaction when counting for offset */

typedef struct vrange {
    bool   has_start, has_end, has_sdoc, has_edoc;
    buf    sck, eck;                 /* collation keys, cut as stored */
    buf    sfull, efull;             /* the whole ones, when longer than the cut */
    buf    sdoc, edoc;
} vrange;

typedef struct pend_row {             /* include_docs: a row read, its document not yet */
    size_t key, key_len, id, id_len, val, val_len;
} pend_row;

typedef struct vq {
    int          view;
    const vdef_view *vw;
    bool         reduce, include_docs, conflicts, descending, inclusive_end, update_seq;
    int          group_level;       /* -1: exact */
    uint64_t     limit, skip;
    bool         keys_mode;
    vrange      *ranges;
    size_t       nranges, ri;
    /* scan state */
    buf          pos;               /* rk of the last row consumed in this range */
    buf          last;              /* the scan's new position (swapped with pos) */
    bool         have_pos, range_end;
    uint64_t     nout;              /* rows written */
    bool         done, opened, closed;
    /* include_docs */
    buf          pend;
    pend_row    *pr;
    size_t       npr, pr_cap;
    /* reduce */
    view_reducer *red;
    bool          grp_open;
    jval         *grp_key;          /* the group's key as output (level-cut) */
    buf           grp_ck;           /* its collation-key bytes, when known (grp_ck_ok) */
    bool          grp_ck_ok;
    buf           kvs;              /* JS: pending "[[k,id],v]" items */
    size_t        nkvs;
    buf           partials;         /* JS: reductions so far, comma separated */
    size_t        npartials;
    bool          grp_js_ready;     /* the callback stopped at a group boundary (JS) */
    mimeo_err     cb_err;
    bool          blocks_tried;
    /* grouped reduce: the range's blocks; a block inside the range whose rows are all in one
     * group is folded in by its partial, and the scan jumps past it */
    struct blist *gb;
    size_t        gbi;              /* ascending: blocks passed; descending: blocks left */
    bool          jump;
    buf           jump_pos;
} vq;

static const struct bent *fold_block(vq *q, const vrange *r, const vstore_row *row);
static int fold_add(vq *q, const struct bent *e, mimeo_err *err);
static void blist_drop(struct blist *l);

struct mimeo_view_reader {
    mimeo_db   *db;      /* own handle */
    vdef       *d;
    jval       *params;
    const jval **queries;
    size_t      nq, qi;
    bool        multi;
    vq          q;
    bool        q_live;
    uint64_t    seq;     /* the index's seq when opened */
    buf         out;
    size_t      given;   /* bytes of out already handed out */
    int         phase;   /* 0 header, 1 queries, 2 footer, 3 end */
};

/* ---- parameters --------------------------------------------------------------------------- */

static int perr(mimeo_err *err, const char *fmt, const char *arg) {
    char reason[MIMEO_ERR_REASON_MAX];
    snprintf(reason, sizeof reason, fmt, arg);
    view_err(err, MIMEO_EINVAL, "query_parse_error", reason);
    return MIMEO_EINVAL;
}

static void text_of(const jval *v, char *out, size_t cap) {
    buf b;
    buf_init(&b, 0);
    if (v->type == JV_STRING) buf_put(&b, v->str, v->len);
    else json_put_jval(&b, v);
    snprintf(out, cap, "%.*s", (int)(b.len > 100 ? 100 : b.len), b.data ? b.data : "");
    buf_destroy(&b);
}

static int p_bool(const jval *v, const char *name, bool *out, mimeo_err *err) {
    (void)name;
    if (v->type == JV_BOOL) { *out = v->boolean; return 0; }
    if (v->type == JV_STRING && strcmp(v->str, "true") == 0) { *out = true; return 0; }
    if (v->type == JV_STRING && strcmp(v->str, "false") == 0) { *out = false; return 0; }
    char t[128];
    text_of(v, t, sizeof t);
    return perr(err, "Invalid boolean parameter: \"%s\"", t);
}

static int p_int(const jval *v, int64_t *out, mimeo_err *err) {
    if (jval_as_i64(v, out)) return 0;
    if (v->type == JV_STRING) {
        char *end;
        long long n = strtoll(v->str, &end, 10);
        if (v->len && *end == 0) { *out = n; return 0; }
    }
    char t[128];
    text_of(v, t, sizeof t);
    return perr(err, "Invalid value for integer: \"%s\"", t);
}

static void range_destroy(vrange *r) {
    buf_destroy(&r->sck);
    buf_destroy(&r->eck);
    buf_destroy(&r->sfull);
    buf_destroy(&r->efull);
    buf_destroy(&r->sdoc);
    buf_destroy(&r->edoc);
}

/* A bound's collation key cut as rows store it into b; a longer one whole into full too. */
static int ckey(buf *b, buf *full, const jval *k) {
    int rc = collate_key_put(b, k);
    if (!rc && b->len > VSTORE_CKEY_MAX) {
        if (buf_put(full, b->data, b->len)) return MIMEO_ENOMEM;
        b->len = VSTORE_CKEY_MAX;
    }
    return rc;
}

static void vq_destroy(vq *q) {
    for (size_t i = 0; i < q->nranges; i++) range_destroy(&q->ranges[i]);
    free(q->ranges);
    buf_destroy(&q->pos);
    buf_destroy(&q->last);
    buf_destroy(&q->grp_ck);
    buf_destroy(&q->pend);
    free(q->pr);
    if (q->red) view_reducer_free(q->red);
    if (q->grp_key) jval_free(q->grp_key);
    buf_destroy(&q->kvs);
    buf_destroy(&q->partials);
    buf_destroy(&q->jump_pos);
    blist_drop(q->gb);
    memset(q, 0, sizeof *q);
}

static int vq_parse(vq *q, const vdef *d, int view, const jval *p, mimeo_err *err) {
    memset(q, 0, sizeof *q);
    buf_init(&q->pos, 0);
    buf_init(&q->last, 0);
    buf_init(&q->grp_ck, 0);
    buf_init(&q->pend, 0);
    buf_init(&q->kvs, 0);
    buf_init(&q->partials, 0);
    buf_init(&q->jump_pos, 0);
    q->view = view;
    q->vw = &d->views[view];
    q->inclusive_end = true;
    q->limit = UINT64_MAX;
    const jval *key = NULL, *keys = NULL, *sk = NULL, *ek = NULL, *sdoc = NULL, *edoc = NULL;
    int reduce = -1, group = -1;
    int64_t level = -1;
    int rc = 0;
    bool b;
    for (size_t i = 0; p && p->type == JV_OBJECT && i < p->count && !rc; i++) {
        const char *n = p->keys[i];
        const jval *v = p->items[i];
        if (!strcmp(n, "key")) key = v;
        else if (!strcmp(n, "keys")) keys = v;
        else if (!strcmp(n, "startkey") || !strcmp(n, "start_key")) sk = v;
        else if (!strcmp(n, "endkey") || !strcmp(n, "end_key")) ek = v;
        else if (!strcmp(n, "startkey_docid") || !strcmp(n, "start_key_doc_id")) sdoc = v;
        else if (!strcmp(n, "endkey_docid") || !strcmp(n, "end_key_doc_id")) edoc = v;
        else if (!strcmp(n, "descending")) rc = p_bool(v, n, &q->descending, err);
        else if (!strcmp(n, "inclusive_end")) rc = p_bool(v, n, &q->inclusive_end, err);
        else if (!strcmp(n, "include_docs")) rc = p_bool(v, n, &q->include_docs, err);
        else if (!strcmp(n, "conflicts")) rc = p_bool(v, n, &q->conflicts, err);
        else if (!strcmp(n, "update_seq")) rc = p_bool(v, n, &q->update_seq, err);
        else if (!strcmp(n, "sorted") || !strcmp(n, "stable") ||
                 !strcmp(n, "att_encoding_info") || !strcmp(n, "attachments") ||
                 !strcmp(n, "local_seq"))
            rc = p_bool(v, n, &b, err);
        else if (!strcmp(n, "reduce")) {
            if (!(rc = p_bool(v, n, &b, err))) reduce = b;
        } else if (!strcmp(n, "group")) {
            if (!(rc = p_bool(v, n, &b, err))) group = b;
        } else if (!strcmp(n, "group_level")) {
            if (!(rc = p_int(v, &level, err)) && level < 0)
                rc = perr(err, "%s", "`group_level` must be >= 0");
        } else if (!strcmp(n, "limit")) {
            int64_t l;
            if (!(rc = p_int(v, &l, err))) {
                if (l < 0) rc = perr(err, "%s", "`limit` must be a positive integer.");
                else q->limit = (uint64_t)l;
            }
        } else if (!strcmp(n, "skip")) {
            int64_t s;
            if (!(rc = p_int(v, &s, err))) {
                if (s < 0) rc = perr(err, "%s", "`skip` must be >= 0");
                else q->skip = (uint64_t)s;
            }
        }
    }
    if (rc) return rc;
    if (keys && keys->type != JV_ARRAY)
        return perr(err, "%s", "`keys` must be an array of strings.");
    if (sdoc && sdoc->type != JV_STRING)
        return perr(err, "%s", "`start_key_docid` must be a string.");
    if (edoc && edoc->type != JV_STRING)
        return perr(err, "%s", "`end_key_docid` must be a string.");
    if (keys && keys->count && (key || sk || ek))
        return perr(err, "%s", "`keys` is incompatible with `key`, `start_key` and `end_key`");
    bool has_red = q->vw->rtype != VRED_NONE;
    if (reduce == 1 && !has_red) return perr(err, "%s", "Reduce is invalid for map-only views.");
    q->reduce = has_red && reduce != 0;
    if (group == 0 && level > 0)
        return perr(err, "%s", "Can't specify group=false and group_level>0 at the same time");
    q->group_level = level >= 0 ? (int)(level > 1000000 ? 1000000 : level) : group == 1 ? -1 : 0;
    if (!q->reduce && (group == 1 || level > 0))
        return perr(err, "%s", "Invalid use of grouping on a map view.");
    if (q->reduce && q->include_docs)
        return perr(err, "%s", "`include_docs` is invalid for reduce");
    if (q->reduce && keys && q->group_level != -1)
        return perr(err, "%s", "Multi-key fetchs for reduce views must use `group=true`");
    if (key && !keys) sk = ek = key;
    /* CouchDB's check_range: a range that cannot hold rows in this direction is an error */
    if (!keys && sk && ek && sk != ek) {
        int c = collate_cmp(sk, ek);
        if (c == 0 && sdoc && edoc) {
            int s = strcmp(sdoc->str, edoc->str);
            c = s < 0 ? -1 : s > 0;
        }
        if (!q->descending && c > 0)
            return perr(err, "%s", "No rows can match your key range, reverse your start_key "
                        "and end_key or set descending=true");
        if (q->descending && c < 0)
            return perr(err, "%s", "No rows can match your key range, reverse your start_key "
                        "and end_key or set descending=false");
    }
    q->keys_mode = keys != NULL;
    size_t n = keys ? keys->count : 1;
    q->ranges = calloc(n ? n : 1, sizeof *q->ranges);
    if (!q->ranges) return MIMEO_ENOMEM;
    q->nranges = n;
    for (size_t i = 0; i < n; i++) {
        vrange *r = &q->ranges[i];
        buf_init(&r->sck, 0);
        buf_init(&r->eck, 0);
        buf_init(&r->sfull, 0);
        buf_init(&r->efull, 0);
        buf_init(&r->sdoc, 0);
        buf_init(&r->edoc, 0);
        const jval *s = keys ? keys->items[i] : sk, *e = keys ? keys->items[i] : ek;
        if (s) {
            r->has_start = true;
            if ((rc = ckey(&r->sck, &r->sfull, s))) return rc;
            if (sdoc) {
                r->has_sdoc = true;
                if (buf_put(&r->sdoc, sdoc->str, sdoc->len)) return MIMEO_ENOMEM;
            }
        }
        if (e) {
            r->has_end = true;
            if ((rc = ckey(&r->eck, &r->efull, e))) return rc;
            if (edoc) {
                r->has_edoc = true;
                if (buf_put(&r->edoc, edoc->str, edoc->len)) return MIMEO_ENOMEM;
            }
        }
    }
    return 0;
}

/* ---- bounds ------------------------------------------------------------------------------- */

/* The row's key against a long bound whose cut it shares: whole collation keys, the row's
 * from its stored key (rare: only rows in the bound's run of one cut get here). */
static int cmp_long(const vstore_row *r, const buf *full) {
    jval *k = NULL;
    json_limits lim = {0, r->key_len + 1};
    if (json_tree_parse(r->key, r->key_len, &lim, &k, NULL) != 0) return 1;
    buf b;
    buf_init(&b, full->len + 16);
    int c = collate_key_put(&b, k) ? 1 : 0;
    if (!c) {
        size_t n = b.len < full->len ? b.len : full->len;
        c = memcmp(b.data, full->data, n);
        c = c ? (c < 0 ? -1 : 1) : (b.len < full->len ? -1 : b.len > full->len);
    }
    buf_destroy(&b);
    jval_free(k);
    return c;
}

static int cmp_bound(const vstore_row *r, const buf *ck, const buf *full, bool has_doc,
                     const buf *doc) {
    size_t n = ck->len < r->rk_len ? ck->len : r->rk_len;
    int c = n ? memcmp(r->rk, ck->data, n) : 0;
    if (c) return c < 0 ? -1 : 1;
    if (r->rk_len < ck->len) return -1;
    if (full->len && (c = cmp_long(r, full))) return c;
    if (!has_doc) return 0;
    size_t m = r->id_len < doc->len ? r->id_len : doc->len;
    c = m ? memcmp(r->id, doc->data, m) : 0;
    if (c) return c < 0 ? -1 : 1;
    return r->id_len < doc->len ? -1 : r->id_len > doc->len;
}

static bool start_ok(const vq *q, const vrange *r, const vstore_row *row) {
    if (!r->has_start) return true;
    int c = cmp_bound(row, &r->sck, &r->sfull, r->has_sdoc, &r->sdoc);
    return q->descending ? c <= 0 : c >= 0;
}

static bool end_ok(const vq *q, const vrange *r, const vstore_row *row) {
    if (!r->has_end) return true;
    int c = cmp_bound(row, &r->eck, &r->efull, r->has_edoc, &r->edoc);
    if (c == 0) return q->inclusive_end;
    return q->descending ? c > 0 : c < 0;
}

/* ---- output helpers ------------------------------------------------------------------------ */

static int put_sep(vq *q, buf *out) {
    return q->nout++ ? buf_puts(out, ",\n") : 0;
}

static int put_map_row(vq *q, buf *out, const char *id, size_t id_len, const char *key,
                       size_t key_len, const char *val, size_t val_len) {
    put_sep(q, out);
    buf_puts(out, "{\"id\":");
    json_put_str(out, id, id_len);
    buf_puts(out, ",\"key\":");
    buf_put(out, key, key_len);
    buf_puts(out, ",\"value\":");
    return buf_put(out, val, val_len);
}

/* include_docs: the document a row names: the value's _id (and _rev) when the value is an
 * object with one (CouchDB's linked documents), else the row's own. */
static int put_doc(mimeo_db *db, const vq *q, buf *out, const char *id, size_t id_len,
                   const char *val, size_t val_len) {
    jval *v = NULL;
    const char *did = id, *rev = NULL;
    size_t did_len = id_len;
    if (val_len && val[0] == '{') {
        json_limits lim = {0, val_len + 1};
        if (json_tree_parse(val, val_len, &lim, &v, NULL) == 0) {
            const jval *i = jval_get(v, "_id");
            if (i && i->type == JV_STRING) {
                did = i->str;
                did_len = i->len;
                const jval *r = jval_get(v, "_rev");
                if (r && r->type == JV_STRING) rev = r->str;
            }
        }
    }
    mimeo_get_opts go = {.rev = rev, .conflicts = q->conflicts};
    char *json = NULL;
    size_t len = 0;
    int rc = mimeo_doc_get(db, did, did_len, &go, &json, &len, NULL);
    buf_puts(out, ",\"doc\":");
    if (rc == 0) rc = buf_put(out, json, len);
    else rc = buf_puts(out, "null");
    mimeo_free(json);
    if (v) jval_free(v);
    return rc;
}

/* ---- reduce ------------------------------------------------------------------------------- */

/* The key a row groups under at level (-1 exact, 0 none): new tree. */
static jval *group_key(const vq *q, const char *key, size_t key_len) {
    if (q->group_level == 0) return NULL;
    jval *k = NULL;
    json_limits lim = {0, key_len + 1};
    if (json_tree_parse(key, key_len, &lim, &k, NULL) != 0) return NULL;
    if (q->group_level > 0 && k->type == JV_ARRAY && k->count > (size_t)q->group_level) {
        for (size_t i = (size_t)q->group_level; i < k->count; i++) jval_free(k->items[i]);
        k->count = (size_t)q->group_level;
    }
    return k;
}

int view_js_reduce(qs_proc *p, const char *cmd, const char *src, const char *items,
                   size_t len, buf *line, buf *reply, buf *result, mimeo_err *err) {
    buf_reset(line);
    buf_printf(line, "[\"%s\",[", cmd);
    json_put_cstr(line, src);
    buf_puts(line, "],[");
    buf_put(line, items, len);
    int rc = buf_puts(line, "]]");
    if (!rc) rc = qs_call(p, line->data, line->len, reply, err);
    if (!rc && qs_reply_error(reply->data, reply->len, err)) {
        err->code = MIMEO_EIO;
        return MIMEO_EIO;
    }
    if (rc) return rc;
    jval *t = NULL;
    json_limits lim = {0, reply->len + 1};
    if (json_tree_parse(reply->data, reply->len, &lim, &t, NULL) != 0 || t->type != JV_ARRAY ||
        t->count != 2 || t->items[1]->type != JV_ARRAY || t->items[1]->count < 1) {
        view_err(err, MIMEO_EIO, "os_process_error", "bad reply to reduce");
        rc = MIMEO_EIO;
    } else {
        rc = json_put_jval(result, t->items[1]->items[0]);
    }
    if (t) jval_free(t);
    return rc;
}

static int js_call(mimeo_db *db, const char *cmd, const char *src, const buf *items,
                   buf *result, mimeo_err *err) {
    buf line, reply;
    buf_init(&line, 0);
    buf_init(&reply, 0);
    qs_proc *p = NULL;
    int rc = view_proc(db, &p, &line, &reply, err);
    if (!rc) {
        rc = view_js_reduce(p, cmd, src, items->data, items->len, &line, &reply, result, err);
        qs_release(view_pool(db), p);
    }
    buf_destroy(&line);
    buf_destroy(&reply);
    return rc;
}

/* JS: reduces the pending rows into one more partial result. */
static int js_flush(mimeo_db *db, vq *q, mimeo_err *err) {
    if (!q->nkvs) return 0;
    if (q->npartials) buf_putc(&q->partials, ',');
    int rc = js_call(db, "reduce", q->vw->reduce, &q->kvs, &q->partials, err);
    q->npartials++;
    buf_reset(&q->kvs);
    q->nkvs = 0;
    return rc;
}

/* Adds one row to the open group. Pure C for built-ins (safe inside a read transaction). */
int view_put_kv(buf *b, const vstore_row *r) {
    buf_puts(b, "[[");
    buf_put(b, r->key, r->key_len);
    buf_putc(b, ',');
    json_put_str(b, r->id, r->id_len);
    buf_puts(b, "],");
    buf_put(b, r->value, r->value_len);
    return buf_putc(b, ']');
}

static int grp_add(vq *q, const vstore_row *r, mimeo_err *err) {
    if (q->vw->rtype == VRED_JS) {
        if (q->nkvs++) buf_putc(&q->kvs, ',');
        return view_put_kv(&q->kvs, r);
    }
    if (!q->red && !(q->red = view_reducer_new(q->vw->rkind))) return MIMEO_ENOMEM;
    if (view_reducer_add_fast(q->red, r->value, r->value_len)) return 0;
    /* _count needs neither; _sum and _stats the value; _approx_count_distinct the key */
    jval *k = NULL, *v = NULL;
    jval knull = {.type = JV_NULL};
    int rc = 0;
    if (q->vw->rkind == VIEW_REDUCE_APPROX_COUNT_DISTINCT) {
        json_limits lim = {0, r->key_len + 1};
        if (json_tree_parse(r->key, r->key_len, &lim, &k, NULL)) return MIMEO_ECORRUPT;
    }
    if (q->vw->rkind != VIEW_REDUCE_COUNT && q->vw->rkind != VIEW_REDUCE_APPROX_COUNT_DISTINCT) {
        json_limits lim = {0, r->value_len + 1};
        if (json_tree_parse(r->value, r->value_len, &lim, &v, NULL)) {
            if (k) jval_free(k);
            return MIMEO_ECORRUPT;
        }
    }
    jval vnull = {.type = JV_NULL};
    rc = view_reducer_add(q->red, k ? k : &knull, v ? v : &vnull, err);
    if (k) jval_free(k);
    if (v) jval_free(v);
    return rc;
}

/* Writes the open group's row (subject to skip and limit) and closes it. */
static int grp_finish(mimeo_db *db, vq *q, buf *out, mimeo_err *err) {
    if (!q->grp_open) return 0;
    int rc = 0;
    buf val;
    buf_init(&val, 0);
    if (q->vw->rtype == VRED_JS) {
        rc = js_flush(db, q, err);
        if (!rc && q->npartials == 1) {
            rc = buf_put(&val, q->partials.data, q->partials.len);
        } else if (!rc) {
            rc = js_call(db, "rereduce", q->vw->reduce, &q->partials, &val, err);
        }
        buf_reset(&q->partials);
        q->npartials = 0;
    } else {
        rc = view_reducer_put(q->red, &val);
        view_reducer_free(q->red);
        q->red = NULL;
    }
    if (!rc) {
        if (q->skip) {
            q->skip--;
        } else if (q->limit) {
            q->limit--;
            put_sep(q, out);
            buf_puts(out, "{\"key\":");
            if (q->grp_key) json_put_jval(out, q->grp_key);
            else buf_puts(out, "null");
            buf_puts(out, ",\"value\":");
            buf_put(out, val.data, val.len);
            rc = buf_putc(out, '}');
        }
    }
    buf_destroy(&val);
    if (q->grp_key) jval_free(q->grp_key);
    q->grp_key = NULL;
    q->grp_open = false;
    return rc;
}

/* ---- the scan ------------------------------------------------------------------------------ */

typedef struct scan_ctx {
    vq      *q;
    vrange  *r;
    buf     *out;
    mimeo_db *db;
    bool     stop_range;   /* a row past the end was met */
} scan_ctx;

/* Length of the collation key encoded at p (at most n bytes), or 0 when it runs out. */
static size_t ck_skip(const unsigned char *p, size_t n) {
    if (!n) return 0;
    switch (p[0]) {
    case 0x10: case 0x20: case 0x30: return 1;
    case 0x40: return n >= 9 ? 9 : 0;
    case 0x50: {
        const unsigned char *z = memchr(p + 1, 0, n - 1);
        return z ? (size_t)(z - p) + 1 : 0;
    }
    case 0x60: case 0x70: {
        size_t i = 1;
        while (i < n && p[i] != 0) {
            size_t l = ck_skip(p + i, n - i);
            if (!l) return 0;
            i += l;
        }
        return i < n ? i + 1 : 0;
    }
    default: return 0;
    }
}

/* The bytes of a row key (rk) that decide its group at level (-1: exact), or 0 when they
 * cannot be told from it (a cut key): then the keys are compared as trees. A key whose
 * encoding ends within the cut is whole: encodings are prefix-free, so the first
 * VSTORE_CKEY_MAX bytes of a longer one never parse as a complete key. */
static size_t rk_group_len(const unsigned char *rk, size_t rk_len, int level) {
    size_t ck = ck_skip(rk, rk_len < VSTORE_CKEY_MAX ? rk_len : VSTORE_CKEY_MAX);
    if (!ck) return 0;
    if (level < 0 || rk[0] != 0x60) return ck;
    size_t i = 1;
    for (int e = 0; e < level && rk[i] != 0; e++) i += ck_skip(rk + i, ck - i);
    return i;
}

static size_t ck_group_len(const vstore_row *r, int level) {
    return rk_group_len(r->rk, r->rk_len, level);
}

static int scan_row(void *arg, const vstore_row *row) {
    scan_ctx *c = arg;
    vq *q = c->q;
    if (!start_ok(q, c->r, row)) return VSTORE_NEXT;
    if (!end_ok(q, c->r, row)) {
        c->stop_range = true;
        return VSTORE_BEFORE;
    }
    if (q->reduce) {
        size_t gl = q->group_level != 0 ? ck_group_len(row, q->group_level) : 0;
        if (q->group_level != 0 && q->grp_open) {
            bool same;
            if (gl && q->grp_ck_ok) {
                same = gl == q->grp_ck.len && memcmp(row->rk, q->grp_ck.data, gl) == 0;
            } else {
                jval *k = group_key(q, row->key, row->key_len);
                if (!k) return MIMEO_ECORRUPT;
                same = q->grp_key && collate_cmp(k, q->grp_key) == 0;
                jval_free(k);
            }
            if (!same) {
                if (q->vw->rtype == VRED_JS) {
                    q->grp_js_ready = true; /* finish outside the read transaction */
                    return VSTORE_BEFORE;
                }
                int rc = grp_finish(c->db, q, c->out, &q->cb_err);
                if (rc) return rc;
                if (!q->limit) {
                    q->done = true;
                    return VSTORE_BEFORE;
                }
            }
        }
        if (!q->grp_open) {
            q->grp_open = true;
            if (q->group_level != 0) {
                if (!(q->grp_key = group_key(q, row->key, row->key_len))) return MIMEO_ECORRUPT;
                buf_reset(&q->grp_ck);
                q->grp_ck_ok = gl && buf_put(&q->grp_ck, row->rk, gl) == 0;
            }
        }
        const struct bent *fold = q->gb && gl && q->grp_ck_ok ? fold_block(q, c->r, row) : NULL;
        if (fold) {
            /* the whole block belongs to this group: its partial, then on after it */
            int rc = fold_add(q, fold, &q->cb_err);
            return rc ? rc : VSTORE_STOP;
        }
        int rc = grp_add(q, row, &q->cb_err);
        if (rc) return rc;
        if (q->vw->rtype == VRED_JS && q->nkvs >= JS_BATCH) return VSTORE_STOP;
        return c->out->len >= OUT_CHUNK ? VSTORE_STOP : VSTORE_NEXT;
    }
    /* map rows */
    if (q->skip) {
        q->skip--;
        return VSTORE_NEXT;
    }
    if (!q->limit) {
        q->done = true;
        return VSTORE_BEFORE;
    }
    q->limit--;
    int rc;
    if (q->include_docs) {
        if (q->npr == q->pr_cap && ARRAY_GROW(q->pr, q->pr_cap, q->npr + 1)) return MIMEO_ENOMEM;
        pend_row *p = &q->pr[q->npr++];
        p->key = q->pend.len;
        p->key_len = row->key_len;
        buf_put(&q->pend, row->key, row->key_len);
        p->id = q->pend.len;
        p->id_len = row->id_len;
        buf_put(&q->pend, row->id, row->id_len);
        p->val = q->pend.len;
        p->val_len = row->value_len;
        if ((rc = buf_put(&q->pend, row->value, row->value_len))) return rc;
        return q->npr >= DOC_PAGE ? VSTORE_STOP : VSTORE_NEXT;
    }
    rc = put_map_row(q, c->out, row->id, row->id_len, row->key, row->key_len, row->value,
                     row->value_len);
    if (!rc) rc = buf_putc(c->out, '}');
    if (rc) return rc;
    return c->out->len >= OUT_CHUNK ? VSTORE_STOP : VSTORE_NEXT;
}

static int flush_docs(mimeo_db *db, vq *q, buf *out) {
    const char *b = q->pend.data;
    int rc = 0;
    for (size_t i = 0; !rc && i < q->npr; i++) {
        pend_row *p = &q->pr[i];
        rc = put_map_row(q, out, b + p->id, p->id_len, b + p->key, p->key_len, b + p->val,
                         p->val_len);
        if (!rc) rc = put_doc(db, q, out, b + p->id, p->id_len, b + p->val, p->val_len);
        if (!rc) rc = buf_putc(out, '}');
    }
    q->npr = 0;
    buf_reset(&q->pend);
    return rc;
}

static const char BUILTIN_ERROR[] = "{\"error\":\"builtin_reduce_error\"";

/* Whether a block's stored partial stands for its rows: none (""), a JavaScript reduce that
 * failed on them ("!") and a built-in's error value do not — the rows are read instead and
 * the error comes out as it would without blocks. */
static bool partial_ok(const char *part, size_t len) {
    return len > 0 && part[0] != '!' &&
           !(len >= sizeof BUILTIN_ERROR - 1 &&
             memcmp(part, BUILTIN_ERROR, sizeof BUILTIN_ERROR - 1) == 0);
}

/* ---- blocks: counts and partial reductions of runs of rows (vstore.h) --------------------- */

/* Orders a row key (rk) against a bound's collation key alone: -1, 0 (the same key), 1. */
static int ck_cmp(const unsigned char *rk, size_t rk_len, const buf *ck) {
    size_t n = ck->len < rk_len ? ck->len : rk_len;
    int c = n ? memcmp(rk, ck->data, n) : 0;
    if (c) return c < 0 ? -1 : 1;
    return rk_len < ck->len ? -1 : 0;
}

int blist_add(void *ctx, const vstore_block *b) {
    blist *l = ctx;
    if (l->hi && ck_cmp(b->first, b->first_len, l->hi) > 0) {
        l->stop = true;
        return VSTORE_STOP;
    }
    if (l->n == l->cap && ARRAY_GROW(l->e, l->cap, l->n + 1)) return MIMEO_ENOMEM;
    struct bent *e = &l->e[l->n++];
    e->first = l->data.len;
    e->first_len = b->first_len;
    buf_put(&l->data, b->first, b->first_len);
    e->last = l->data.len;
    e->last_len = b->last_len;
    buf_put(&l->data, b->last, b->last_len);
    e->part = l->data.len;
    e->part_len = b->partial_len;
    e->count = b->count;
    return buf_put(&l->data, b->partial, b->partial_len);
}

/* The view's blocks from the one holding pos (NULL: the first) up to hi. */
int blist_read(mimeo_db *db, uint64_t idx, unsigned view, const buf *pos, const buf *hi,
               blist *l) {
    buf last;
    buf_init(&last, 0);
    bool more = true, first = true;
    int rc = 0;
    l->hi = hi;
    while (!rc && more && !l->stop) {
        buf from = last;
        buf_init(&last, 0);
        const buf *p = first ? pos : &from;
        rc = vstore_blocks_scan(db, idx, view,
                                p ? (const unsigned char *)p->data : NULL, p ? p->len : 0,
                                !first, 1000, blist_add, l, &more, &last);
        buf_destroy(&from);
        if (rc > 0) rc = 0;
        first = false;
    }
    buf_destroy(&last);
    return rc;
}

void blist_free(blist *l) {
    buf_destroy(&l->data);
    free(l->e);
}

static void blist_drop(struct blist *l) {
    if (!l) return;
    blist_free(l);
    free(l);
}

static int rk_cmp(const unsigned char *a, size_t an, const unsigned char *b, size_t bn) {
    int c = memcmp(a, b, an < bn ? an : bn);
    if (c) return c < 0 ? -1 : 1;
    return an < bn ? -1 : an > bn;
}

/* The block that row opens in the scan's direction (its first row ascending, its last
 * descending) when the whole block can stand for its rows in a grouped reduce: its partial
 * is usable, it ends inside the range, and its first and last rows share the row's group
 * (rows sort by their collation keys, so every row between them does too). */
static const struct bent *fold_block(vq *q, const vrange *r, const vstore_row *row) {
    blist *l = q->gb;
    const unsigned char *base = (const unsigned char *)l->data.data;
    const struct bent *e = NULL;
    if (!q->descending) {
        while (q->gbi < l->n && rk_cmp(row->rk, row->rk_len, base + l->e[q->gbi].first,
                                       l->e[q->gbi].first_len) > 0)
            q->gbi++;
        if (q->gbi < l->n && rk_cmp(row->rk, row->rk_len, base + l->e[q->gbi].first,
                                    l->e[q->gbi].first_len) == 0)
            e = &l->e[q->gbi];
        if (e && r->has_end && ck_cmp(base + e->last, e->last_len, &r->eck) >= 0) return NULL;
    } else {
        while (q->gbi > 0 && rk_cmp(row->rk, row->rk_len, base + l->e[q->gbi - 1].last,
                                    l->e[q->gbi - 1].last_len) < 0)
            q->gbi--;
        if (q->gbi > 0 && rk_cmp(row->rk, row->rk_len, base + l->e[q->gbi - 1].last,
                                 l->e[q->gbi - 1].last_len) == 0)
            e = &l->e[q->gbi - 1];
        if (e && r->has_end && ck_cmp(base + e->first, e->first_len, &r->eck) <= 0) return NULL;
    }
    if (!e || !partial_ok((const char *)base + e->part, e->part_len) || e->count < 2)
        return NULL;
    size_t g1 = rk_group_len(base + e->first, e->first_len, q->group_level);
    size_t g2 = rk_group_len(base + e->last, e->last_len, q->group_level);
    if (!g1 || g1 != g2 || memcmp(base + e->first, base + e->last, g1) != 0) return NULL;
    return e;
}

/* Adds a folded block's partial to the open group and sets the scan to go on past it. */
static int fold_add(vq *q, const struct bent *e, mimeo_err *err) {
    const char *base = q->gb->data.data;
    const char *part = base + e->part;
    int rc;
    if (q->vw->rtype == VRED_JS) {
        if (q->npartials++) buf_putc(&q->partials, ',');
        rc = buf_put(&q->partials, part, e->part_len);
    } else {
        if (!q->red && !(q->red = view_reducer_new(q->vw->rkind))) return MIMEO_ENOMEM;
        jval *pj = NULL;
        json_limits lim = {0, e->part_len + 1};
        if (json_tree_parse(part, e->part_len, &lim, &pj, NULL) != 0) return MIMEO_ECORRUPT;
        rc = view_reducer_add_partial(q->red, pj, err);
        jval_free(pj);
    }
    if (rc) return rc;
    buf_reset(&q->jump_pos);
    if (q->descending) rc = buf_put(&q->jump_pos, base + e->first, e->first_len);
    else rc = buf_put(&q->jump_pos, base + e->last, e->last_len);
    q->jump = true;
    return rc;
}

/* Rows of one block, ascending: from its first row up to the next block's first row. */
typedef struct brows {
    vq            *q;
    vrange        *r;
    const unsigned char *next;
    size_t         next_len;
    int          (*fn)(struct brows *b, const vstore_row *row);
    uint64_t       n;
    bool           found;
    mimeo_err     *err;
} brows;

static int brows_row(void *arg, const vstore_row *row) {
    brows *b = arg;
    if (b->next) {
        size_t m = row->rk_len < b->next_len ? row->rk_len : b->next_len;
        int c = memcmp(row->rk, b->next, m);
        if (c > 0 || (c == 0 && row->rk_len >= b->next_len)) return VSTORE_BEFORE;
    }
    return b->fn(b, row);
}

static int brows_scan(mimeo_view_reader *rd, brows *b, const unsigned char *first,
                      size_t first_len) {
    buf last, pos;
    buf_init(&last, 0);
    buf_init(&pos, 0);
    buf_put(&pos, first, first_len);
    bool more = true;
    vstore_pos how = VSTORE_SEEK;
    int rc = 0;
    while (more) {
        rc = vstore_scan(rd->db, rd->d->idx, (unsigned)b->q->view, how,
                         (const unsigned char *)pos.data, pos.len, false, PAGE_ROWS, brows_row,
                         b, &more, &last);
        if (rc) break;
        buf t = pos;
        pos = last;
        last = t;
        how = VSTORE_AFTER;
        if (!pos.len) break;
    }
    buf_destroy(&last);
    buf_destroy(&pos);
    return rc < 0 ? rc : 0;
}

/* offset: rows before the first row where P holds, P = "at or after the start" ascending, and
 * "after the start" descending (offset then counts from the other end). */
static int count_fn(brows *b, const vstore_row *row) {
    bool p = b->q->descending ? !start_ok(b->q, b->r, row) : start_ok(b->q, b->r, row);
    if (p) {
        b->found = true;
        return VSTORE_BEFORE;
    }
    b->n++;
    return VSTORE_NEXT;
}

static int offset_by_blocks(mimeo_view_reader *rd, vq *q, vrange *r, uint64_t total,
                            uint64_t *off) {
    blist l = {0};
    buf_init(&l.data, 0);
    int rc = blist_read(rd->db, rd->d->idx, (unsigned)q->view, NULL, &r->sck, &l);
    uint64_t n = 0;
    bool found = false;
    for (size_t i = 0; !rc && i < l.n && !found; i++) {
        struct bent *e = &l.e[i];
        const unsigned char *base = (const unsigned char *)l.data.data;
        if (ck_cmp(base + e->last, e->last_len, &r->sck) < 0) {
            n += e->count;
            continue;
        }
        brows b = {q, r, i + 1 < l.n ? base + l.e[i + 1].first : NULL,
                   i + 1 < l.n ? l.e[i + 1].first_len : 0, count_fn, 0, false, NULL};
        rc = brows_scan(rd, &b, base + e->first, e->first_len);
        n += b.n;
        found = b.found;
    }
    blist_free(&l);
    if (!rc) *off = q->descending ? (total > n ? total - n : 0) : n;
    return rc;
}

/* group=false reduce of a range through the blocks: whole blocks by their partials, the rows
 * of the blocks at the range's edges one by one. */
static int reduce_fn(brows *b, const vstore_row *row) {
    vq *q = b->q;
    bool lo = q->descending ? end_ok(q, b->r, row) : start_ok(q, b->r, row);
    bool hi = q->descending ? start_ok(q, b->r, row) : end_ok(q, b->r, row);
    if (!lo) return VSTORE_NEXT;
    if (!hi) {
        b->found = true;
        return VSTORE_BEFORE;
    }
    b->n++;
    return grp_add(q, row, b->err);
}

/* The first range's bounds in the order the blocks are read, as collation keys (NULL: open). */
static void blocks_bounds(const vq *q, const buf **lo, const buf **hi) {
    const vrange *r = &q->ranges[0];
    bool has_lo = q->descending ? r->has_end : r->has_start;
    bool has_hi = q->descending ? r->has_start : r->has_end;
    *lo = has_lo ? (q->descending ? &r->eck : &r->sck) : NULL;
    *hi = has_hi ? (q->descending ? &r->sck : &r->eck) : NULL;
}

static int reduce_by_blocks(mimeo_view_reader *rd, vq *q, buf *out, mimeo_err *err) {
    vrange *r = &q->ranges[0];
    const buf *lo, *hi;
    blocks_bounds(q, &lo, &hi);
    blist l = {0};
    buf_init(&l.data, 0);
    int rc = blist_read(rd->db, rd->d->idx, (unsigned)q->view, lo, hi, &l);
    uint64_t rows = 0;
    bool js = q->vw->rtype == VRED_JS;
    if (!rc && !js && !(q->red = view_reducer_new(q->vw->rkind))) rc = MIMEO_ENOMEM;
    for (size_t i = 0; !rc && i < l.n; i++) {
        struct bent *e = &l.e[i];
        const unsigned char *base = (const unsigned char *)l.data.data;
        const char *part = (const char *)base + e->part;
        bool inside = (!lo || ck_cmp(base + e->first, e->first_len, lo) > 0) &&
                      (!hi || ck_cmp(base + e->last, e->last_len, hi) < 0) &&
                      partial_ok(part, e->part_len);
        if (inside && js) {
            /* the stored reduce of the block's rows: rereduced with the others */
            if (q->npartials++) buf_putc(&q->partials, ',');
            rc = buf_put(&q->partials, part, e->part_len);
            rows += e->count;
            continue;
        }
        if (inside) {
            jval *pj = NULL;
            json_limits lim = {0, e->part_len + 1};
            if (json_tree_parse(part, e->part_len, &lim, &pj, NULL) != 0) {
                rc = MIMEO_ECORRUPT;
                break;
            }
            rc = view_reducer_add_partial(q->red, pj, err);
            jval_free(pj);
            rows += e->count;
            continue;
        }
        brows b = {q, r, i + 1 < l.n ? base + l.e[i + 1].first : NULL,
                   i + 1 < l.n ? l.e[i + 1].first_len : 0, reduce_fn, 0, false, err};
        rc = brows_scan(rd, &b, base + e->first, e->first_len);
        rows += b.n;
        if (!rc && js && q->nkvs >= JS_BATCH) rc = js_flush(rd->db, q, err);
        if (b.found) break;
    }
    blist_free(&l);
    if (rc) return rc;
    if (rows) {
        q->grp_open = true;
        rc = grp_finish(rd->db, q, out, err);
    } else if (q->red) {
        view_reducer_free(q->red);
        q->red = NULL;
    }
    q->ri = q->nranges;
    q->done = true;
    return rc;
}

/* Runs the query until about a chunk of output is in out or it is done. */
static int vq_step(mimeo_view_reader *rd, vq *q, buf *out, mimeo_err *err) {
    if (q->reduce && !q->keys_mode && !q->blocks_tried) {
        q->blocks_tried = true;
        bool clean = false;
        int rc = vstore_blocks_clean(rd->db, rd->d->idx, (unsigned)q->view, &clean);
        if (rc) return rc;
        if (clean && q->group_level == 0) return reduce_by_blocks(rd, q, out, err);
        if (clean) {
            /* grouped: the row scan folds a whole block into its group where it can (fold_block) */
            const buf *lo, *hi;
            blocks_bounds(q, &lo, &hi);
            if (!(q->gb = calloc(1, sizeof *q->gb))) return MIMEO_ENOMEM;
            buf_init(&q->gb->data, 0);
            rc = blist_read(rd->db, rd->d->idx, (unsigned)q->view, lo, hi, q->gb);
            if (rc) return rc;
            q->gbi = q->descending ? q->gb->n : 0;
        }
    }
    while (!q->done && out->len < OUT_CHUNK) {
        if (q->ri >= q->nranges) {
            q->done = true;
            break;
        }
        vrange *r = &q->ranges[q->ri];
        scan_ctx c = {q, r, out, rd->db, false};
        bool more = false;
        vstore_pos how = q->have_pos ? VSTORE_AFTER : r->has_start ? VSTORE_SEEK : VSTORE_FIRST;
        buf seek;
        buf_init(&seek, 0);
        const buf *pos = &q->pos;
        if (how == VSTORE_SEEK) {
            buf_put(&seek, r->sck.data, r->sck.len);
            /* a long key's rows follow its cut with a rank, not the id: seek to the run */
            if (r->has_sdoc && !r->sfull.len) buf_put(&seek, r->sdoc.data, r->sdoc.len);
            pos = &seek;
        }
        q->cb_err = (mimeo_err){0};
        int rc = vstore_scan(rd->db, rd->d->idx, (unsigned)q->view, how,
                             (const unsigned char *)pos->data, pos->len, q->descending,
                             PAGE_ROWS, scan_row, &c, &more, &q->last);
        buf_destroy(&seek);
        if (rc < 0) {
            if (q->cb_err.error[0] && err) *err = q->cb_err;
            return rc;
        }
        int scan_rc = rc;
        if (q->last.len) {
            buf t = q->pos;
            q->pos = q->last;
            q->last = t;
            q->have_pos = true;
        }
        if (q->jump) {
            /* a block folded in: the scan resumes after its last row (descending: before its
             * first) */
            buf t = q->pos;
            q->pos = q->jump_pos;
            q->jump_pos = t;
            q->have_pos = true;
            q->jump = false;
        }
        if (q->include_docs && (rc = flush_docs(rd->db, q, out))) return rc;
        if (q->grp_js_ready) {
            q->grp_js_ready = false;
            if ((rc = grp_finish(rd->db, q, out, err))) return rc;
            if (!q->limit) q->done = true;
            continue;
        }
        if (q->reduce && q->vw->rtype == VRED_JS && q->nkvs >= JS_BATCH &&
            (rc = js_flush(rd->db, q, err)))
            return rc;
        if (q->done) break;
        bool range_over = c.stop_range || (scan_rc == 0 && !more);
        if (range_over) {
            if (q->reduce) {
                /* no rows in the range: no reduce row (CouchDB answers {"rows":[]}) */
                if ((rc = grp_finish(rd->db, q, out, err))) return rc;
                if (!q->limit) q->done = true;
            }
            q->ri++;
            q->have_pos = false;
            buf_reset(&q->pos);
        }
    }
    return 0;
}

typedef struct count_ctx {
    vq       *q;
    vrange   *r;
    uint64_t  n;
    bool      found;
} count_ctx;

static int count_row(void *arg, const vstore_row *row) {
    count_ctx *c = arg;
    if (c->r && start_ok(c->q, c->r, row)) {
        c->found = true;
        return VSTORE_BEFORE;
    }
    c->n++;
    return VSTORE_NEXT;
}

/* Rows of the view before the first row of the first range: CouchDB's "offset". */
static int vq_offset(mimeo_view_reader *rd, vq *q, uint64_t total, uint64_t *off) {
    *off = 0;
    vrange *r = q->nranges ? &q->ranges[0] : NULL;
    if (!r || !r->has_start) return 0;
    bool clean = false;
    int crc = vstore_blocks_clean(rd->db, rd->d->idx, (unsigned)q->view, &clean);
    if (crc) return crc;
    if (clean) return offset_by_blocks(rd, q, r, total, off);
    buf pos, last;
    buf_init(&pos, 0);
    buf_init(&last, 0);
    count_ctx c = {q, r, 0, false};
    bool more = true;
    int rc = 0;
    bool first = true;
    while (!rc && !c.found && more) {
        rc = vstore_scan(rd->db, rd->d->idx, (unsigned)q->view,
                         first ? VSTORE_FIRST : VSTORE_AFTER,
                         (const unsigned char *)pos.data, pos.len, q->descending, COUNT_PAGE,
                         count_row, &c, &more, &last);
        if (rc > 0) rc = 0;
        buf t = pos;
        pos = last;
        last = t;
        first = false;
    }
    buf_destroy(&pos);
    buf_destroy(&last);
    *off = c.n;
    return rc;
}

/* ---- the reader --------------------------------------------------------------------------- */

static int vq_open(mimeo_view_reader *rd, vq *q, buf *out, mimeo_err *err) {
    (void)err;
    q->opened = true;
    if (q->reduce) {
        buf_puts(out, "{");
        if (q->update_seq) buf_printf(out, "\"update_seq\":%" PRIu64 ",", rd->seq);
        return buf_puts(out, "\"rows\":[\n");
    }
    vstore_meta *m = malloc(sizeof *m);
    if (!m) return MIMEO_ENOMEM;
    int rc = vstore_meta_get(rd->db, rd->d->idx, m);
    uint64_t total = (unsigned)q->view < m->nviews ? m->rows[q->view] : 0;
    free(m);
    if (rc) return rc;
    uint64_t off = 0;
    if ((rc = vq_offset(rd, q, total, &off))) return rc;
    buf_printf(out, "{\"total_rows\":%" PRIu64 ",\"offset\":%" PRIu64, total, off + q->skip);
    if (q->update_seq) buf_printf(out, ",\"update_seq\":%" PRIu64, rd->seq);
    return buf_puts(out, ",\"rows\":[\n");
}

/* Fills rd->out with the next part of the reply. */
static int reader_fill(mimeo_view_reader *rd, mimeo_err *err) {
    int rc = 0;
    while (!rc && rd->phase < 3 && rd->out.len < OUT_CHUNK) {
        if (rd->phase == 0) {
            if (rd->multi) buf_puts(&rd->out, "{\"results\":[\n");
            rd->phase = 1;
        } else if (rd->phase == 1) {
            if (!rd->q_live) {
                if (rd->qi >= rd->nq) {
                    rd->phase = 2;
                    continue;
                }
                /* checked at open; each query is parsed again as it starts */
                rc = vq_parse(&rd->q, rd->d, rd->q.view, rd->queries[rd->qi], err);
                if (rc) break;
                rd->q_live = true;
                if (rd->qi) buf_puts(&rd->out, ",\n");
                if ((rc = vq_open(rd, &rd->q, &rd->out, err))) break;
            }
            rc = vq_step(rd, &rd->q, &rd->out, err);
            if (rc) break;
            if (rd->q.done) {
                buf_puts(&rd->out, "\n]}");
                int v = rd->q.view;
                vq_destroy(&rd->q);
                rd->q.view = v;
                rd->q_live = false;
                rd->qi++;
            }
        } else if (rd->phase == 2) {
            buf_puts(&rd->out, rd->multi ? "\n]}\n" : "\n");
            rd->phase = 3;
        }
    }
    return rc;
}

void mimeo_view_close(mimeo_view_reader *rd) {
    if (!rd) return;
    vq_destroy(&rd->q);
    if (rd->params) jval_free(rd->params);
    free((void *)rd->queries);
    vdef_free(rd->d);
    buf_destroy(&rd->out);
    if (rd->db) mimeo_db_close(rd->db);
    free(rd);
}

static bool upd_param(const jval *p, bool *update, bool *lazy, mimeo_err *err) {
    const jval *u = jval_get(p, "update"), *s = jval_get(p, "stale");
    if (u) {
        if ((u->type == JV_BOOL && u->boolean) || (u->type == JV_STRING && !strcmp(u->str, "true")))
            *update = true;
        else if ((u->type == JV_BOOL && !u->boolean) ||
                 (u->type == JV_STRING && !strcmp(u->str, "false")))
            *update = false;
        else if (u->type == JV_STRING && !strcmp(u->str, "lazy"))
            *update = false, *lazy = true;
        else {
            perr(err, "%s", "Invalid value for `update`.");
            return false;
        }
    }
    if (s) {
        if (s->type == JV_STRING && !strcmp(s->str, "ok")) *update = false;
        else if (s->type == JV_STRING && !strcmp(s->str, "update_after"))
            *update = false, *lazy = true;
        else {
            perr(err, "%s", "Invalid value for `stale`.");
            return false;
        }
    }
    return true;
}

int mimeo_view_open(mimeo_db *db, const char *ddoc, size_t ddoc_len, const char *view,
                    size_t view_len, const char *params, size_t params_len,
                    mimeo_view_reader **out, mimeo_err *err) {
    *out = NULL;
    mimeo_view_reader *rd = calloc(1, sizeof *rd);
    if (!rd) return MIMEO_ENOMEM;
    buf_init(&rd->out, 0);
    int rc = mimeo_db_open(db->env, mimeo_db_name(db), &rd->db, err);
    if (rc) goto fail;
    if (params && params_len) {
        json_error je = {0};
        if (json_tree_parse(params, params_len, &db->env->limits, &rd->params, &je) != 0 ||
            rd->params->type != JV_OBJECT) {
            view_err(err, MIMEO_EINVAL, "bad_request", "invalid query parameters");
            rc = MIMEO_EINVAL;
            goto fail;
        }
    }
    if ((rc = vdef_load(rd->db, ddoc, ddoc_len, &rd->d, err))) goto fail;
    if (strcmp(rd->d->language, "javascript") != 0) {
        view_err(err, MIMEO_EINVAL, "unknown_query_language", rd->d->language);
        rc = MIMEO_EINVAL;
        goto fail;
    }
    int v = vdef_find(rd->d, view, view_len);
    if (v < 0) {
        view_err(err, MIMEO_ENOTFOUND, "not_found", "missing_named_view");
        rc = MIMEO_ENOTFOUND;
        goto fail;
    }
    const jval *qs = jval_get(rd->params, "queries");
    if (qs) {
        if (qs->type != JV_ARRAY) {
            rc = perr(err, "%s", "`queries` member must be an array.");
            goto fail;
        }
        rd->multi = true;
        rd->nq = qs->count;
        rd->queries = malloc((qs->count ? qs->count : 1) * sizeof *rd->queries);
        if (!rd->queries) { rc = MIMEO_ENOMEM; goto fail; }
        for (size_t i = 0; i < qs->count; i++) rd->queries[i] = qs->items[i];
    } else {
        rd->nq = 1;
        rd->queries = malloc(sizeof *rd->queries);
        if (!rd->queries) { rc = MIMEO_ENOMEM; goto fail; }
        rd->queries[0] = rd->params;
    }
    /* every query's parameters are checked before anything runs */
    bool update = true, lazy = false;
    for (size_t i = 0; i < rd->nq; i++) {
        vq t;
        rc = vq_parse(&t, rd->d, v, rd->queries[i], err);
        vq_destroy(&t);
        if (rc) goto fail;
        if (!upd_param(rd->queries[i], &update, &lazy, err)) { rc = MIMEO_EINVAL; goto fail; }
    }
    if (!rd->multi && !upd_param(rd->params, &update, &lazy, err)) { rc = MIMEO_EINVAL; goto fail; }
    if (update && (rc = view_update(rd->db, rd->d, err))) {
        if (rc == MIMEO_EINVAL && err && strcmp(err->error, "compilation_error") != 0)
            rc = MIMEO_EIO, err->code = MIMEO_EIO;
        goto fail;
    }
    if (lazy) view_update_later(rd->db, rd->d);
    vstore_meta *m = malloc(sizeof *m);
    if (!m) { rc = MIMEO_ENOMEM; goto fail; }
    rc = vstore_meta_get(rd->db, rd->d->idx, m);
    rd->seq = m->seq;
    free(m);
    if (rc) goto fail;
    rd->q.view = v;
    /* the first part now, so that errors are still errors */
    if ((rc = reader_fill(rd, err))) goto fail;
    *out = rd;
    return 0;
fail:
    mimeo_view_close(rd);
    return rc;
}

int mimeo_view_read(mimeo_view_reader *rd, const char **text, size_t *len, mimeo_err *err) {
    *text = NULL;
    *len = 0;
    if (rd->given) {
        buf_reset(&rd->out);
        rd->given = 0;
    }
    int rc = reader_fill(rd, err);
    if (rc) return rc;
    *text = rd->out.data;
    *len = rd->out.len;
    rd->given = rd->out.len;
    return 0;
}

/* ---- _info and _view_cleanup ---------------------------------------------------------------- */

int mimeo_view_info(mimeo_db *db, const char *ddoc, size_t ddoc_len, char **json_out,
                    size_t *out_len, mimeo_err *err) {
    *json_out = NULL;
    vdef *d = NULL;
    int rc = vdef_load(db, ddoc, ddoc_len, &d, err);
    if (rc) return rc;
    vstore_meta *m = malloc(sizeof *m);
    if (!m) {
        vdef_free(d);
        return MIMEO_ENOMEM;
    }
    rc = vstore_meta_get(db, d->idx, m);
    buf b;
    buf_init(&b, 0);
    buf_puts(&b, "{\"name\":");
    json_put_str(&b, ddoc, ddoc_len);
    buf_puts(&b, ",\"view_index\":{\"compact_running\":false,\"language\":");
    json_put_cstr(&b, d->language);
    buf_printf(&b, ",\"purge_seq\":0,\"signature\":\"%s\",\"sizes\":{\"active\":%" PRIu64
               ",\"disk\":%" PRIu64 ",\"external\":%" PRIu64 "},\"update_seq\":%" PRIu64
               ",\"updater_running\":%s,\"waiting_clients\":0,\"waiting_commit\":false}}",
               d->sig, m->bytes, m->bytes, m->bytes, m->seq,
               view_updating(db, d->idx) ? "true" : "false");
    free(m);
    vdef_free(d);
    if (!rc && !(*json_out = buf_detach(&b, out_len))) rc = MIMEO_ENOMEM;
    buf_destroy(&b);
    return rc;
}

typedef struct keep_set {
    uint64_t *idx;
    size_t    n, cap;
} keep_set;

static int drop_unused(void *ctx, uint64_t idx, const char *info, size_t info_len) {
    (void)info; (void)info_len;
    void **c = ctx;
    keep_set *k = c[0];
    mimeo_db *db = c[1];
    for (size_t i = 0; i < k->n; i++)
        if (k->idx[i] == idx) return 0;
    return vstore_drop(db, idx);
}

int mimeo_view_cleanup(mimeo_db *db, mimeo_err *err) {
    keep_set k = {0};
    mimeo_all_docs_opts o = {.startkey = "_design/", .startkey_len = 8, .endkey = "_design0",
                             .endkey_len = 8, .inclusive_end = false, .include_docs = true};
    mimeo_cursor *cur = NULL;
    int rc = mimeo_all_docs_open(db, &o, &cur, err);
    buf json;
    buf_init(&json, 0);
    while (!rc) {
        const mimeo_row *row;
        if ((rc = mimeo_cursor_next(cur, &row, err)) || !row) break;
        if (row->deleted || !row->body) continue;
        buf_reset(&json);
        buf_put(&json, row->body, row->body_len);
        vdef *d = NULL;
        if (vdef_from_json(row->id, row->id_len, json.data, json.len, &d, NULL) == 0) {
            if (ARRAY_GROW(k.idx, k.cap, k.n + 1)) { rc = MIMEO_ENOMEM; vdef_free(d); break; }
            k.idx[k.n++] = d->idx;
            vdef_free(d);
        }
    }
    mimeo_cursor_close(cur);
    buf_destroy(&json);
    if (!rc) {
        void *ctx[2] = {&k, db};
        rc = vstore_list(db, drop_unused, ctx);
    }
    free(k.idx);
    return rc;
}
