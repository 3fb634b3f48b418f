/* Mango JSON indexes: definitions read from design documents, row keys, incremental updates
 * from the changes feed, and POST/GET/DELETE /{db}/_index. An index is stored as CouchDB
 * stores it, so it replicates with its design document:
 *   {"_id":"_design/<ddoc>","language":"query","views":{"<name>":{
 *      "map":{"fields":{"<f>":"asc",…},"partial_filter_selector":{…}},
 *      "reduce":"_count","options":{"def":{"fields":[…],"partial_filter_selector":{…}}}}}}
 * Its rows live under a storage id hashed from ddoc, name, definition and the ICU collator
 * version, so a changed definition (or ICU) builds afresh and the old rows are dropped as
 * orphans. */
#include "mindex.h"

#include <nettle/md5.h>
#include <nettle/sha1.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/err.h"
#include "../db/index.h"
#include "collate.h"
#include "seam.h"

#define UPDATE_BATCH 10000

/* ---- definitions ------------------------------------------------------------------------ */

static void mindex_destroy(mindex *ix) {
    free(ix->ddoc);
    free(ix->name);
    for (size_t i = 0; i < ix->nfields; i++) {
        free(ix->fields[i]);
        sel_path_destroy(&ix->paths[i]);
    }
    free(ix->fields);
    free(ix->field_lens);
    free(ix->paths);
    selector_free(ix->partial);
    free(ix->partial_json);
    memset(ix, 0, sizeof *ix);
}

void mindex_set_destroy(mindex_set *s) {
    for (size_t i = 0; i < s->n; i++) mindex_destroy(&s->v[i]);
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

static char *dup_n(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

/* The field name of one entry of "fields": "f" or {"f":"asc"|"desc"}. */
static const char *field_name(const jval *f, size_t *len) {
    if (f->type == JV_STRING) { *len = f->len; return f->str; }
    if (f->type == JV_OBJECT && f->count == 1 && f->items[0]->type == JV_STRING &&
        (strcmp(f->items[0]->str, "asc") == 0 || strcmp(f->items[0]->str, "desc") == 0)) {
        *len = f->key_lens[0];
        return f->keys[0];
    }
    return NULL;
}

static uint64_t storage_id(const mindex *ix) {
    struct md5_ctx c;
    md5_init(&c);
    md5_update(&c, strlen(ix->ddoc) + 1, (const uint8_t *)ix->ddoc);
    md5_update(&c, strlen(ix->name) + 1, (const uint8_t *)ix->name);
    for (size_t i = 0; i < ix->nfields; i++)
        md5_update(&c, ix->field_lens[i] + 1, (const uint8_t *)ix->fields[i]);
    if (ix->partial_json)
        md5_update(&c, strlen(ix->partial_json), (const uint8_t *)ix->partial_json);
    /* ICU sort keys change with the collator's version: another ICU builds a new index and
     * the old rows go as orphans, instead of being read in the wrong order */
    char ver[9];
    collate_version(ver);
    md5_update(&c, 8, (const uint8_t *)ver);
    uint8_t d[MD5_DIGEST_SIZE];
    md5_digest(&c, sizeof d, d);
    uint64_t id = 0;
    for (int i = 0; i < 8; i++) id = (id << 8) | d[i];
    return id ? id : 1; /* 0 is the directory's */
}

/* Fills ix from fields (array) and partial (object or NULL). MIMEO_EINVAL when malformed. */
static int mindex_init(mindex *ix, const char *ddoc, size_t ddoc_len, const char *name,
                       size_t name_len, const jval *fields, const jval *partial,
                       mimeo_err *err) {
    memset(ix, 0, sizeof *ix);
    if (!fields || fields->type != JV_ARRAY || fields->count == 0) {
        err_set(err, MIMEO_EINVAL, "bad_request", "Index fields must be a non-empty array");
        return MIMEO_EINVAL;
    }
    ix->ddoc = dup_n(ddoc, ddoc_len);
    ix->name = dup_n(name, name_len);
    ix->fields = calloc(fields->count, sizeof *ix->fields);
    ix->field_lens = calloc(fields->count, sizeof *ix->field_lens);
    ix->paths = calloc(fields->count, sizeof *ix->paths);
    if (!ix->ddoc || !ix->name || !ix->fields || !ix->field_lens || !ix->paths) {
        mindex_destroy(ix);
        err_set(err, MIMEO_ENOMEM, "internal_server_error", "out of memory");
        return MIMEO_ENOMEM;
    }
    for (size_t i = 0; i < fields->count; i++) {
        size_t n;
        const char *f = field_name(fields->items[i], &n);
        if (!f) {
            mindex_destroy(ix);
            err_set(err, MIMEO_EINVAL, "invalid_sort_field", "Invalid sort field: %s",
                    "fields must be strings or {\"field\": \"asc\"}");
            return MIMEO_EINVAL;
        }
        ix->fields[i] = dup_n(f, n);
        ix->field_lens[i] = n;
        ix->nfields = i + 1;
        int rc = ix->fields[i] ? sel_path_parse(f, n, &ix->paths[i], err) : MIMEO_ENOMEM;
        if (rc) {
            mindex_destroy(ix);
            return rc;
        }
    }
    if (partial && partial->type == JV_OBJECT && partial->count > 0) {
        buf b;
        buf_init(&b, 0);
        int rc = json_put_jval(&b, partial);
        if (!rc) rc = selector_parse(b.data, b.len, &ix->partial, err);
        ix->partial_json = buf_detach(&b, NULL);
        if (rc) {
            mindex_destroy(ix);
            return rc;
        }
    }
    ix->id = storage_id(ix);
    return 0;
}

/* The JSON indexes a design document defines, appended to set. Malformed views are skipped
 * (a replicated design document must not make every query fail). */
static void load_ddoc(const jval *doc, mindex_set *set) {
    const jval *id = jval_get(doc, "_id"), *lang = jval_get(doc, "language");
    const jval *views = jval_get(doc, "views");
    if (!id || id->type != JV_STRING || !lang || lang->type != JV_STRING ||
        strcmp(lang->str, "query") != 0 || !views || views->type != JV_OBJECT)
        return;
    for (size_t i = 0; i < views->count; i++) {
        const jval *v = views->items[i];
        const jval *def = jval_get(jval_get(v, "options"), "def");
        const jval *fields = jval_get(def, "fields");
        const jval *partial = jval_get(def, "partial_filter_selector");
        const jval *map = jval_get(v, "map");
        if (!fields) {
            /* older shape: map.fields is an object {"f":"asc"} */
            const jval *mf = jval_get(map, "fields");
            if (!mf || mf->type != JV_OBJECT) continue;
            fields = mf; /* handled below */
        }
        if (!partial) partial = jval_get(map, "partial_filter_selector");
        jval tmp = {0};
        jval **items = NULL;
        if (fields->type == JV_OBJECT) {
            items = calloc(fields->count ? fields->count : 1, sizeof *items);
            if (!items) continue;
            for (size_t k = 0; k < fields->count; k++) {
                items[k] = calloc(1, sizeof **items);
                if (items[k]) {
                    items[k]->type = JV_STRING;
                    items[k]->str = fields->keys[k];
                    items[k]->len = fields->key_lens[k];
                }
            }
            tmp.type = JV_ARRAY;
            tmp.count = fields->count;
            tmp.items = items;
            fields = &tmp;
        }
        mindex ix;
        bool ok = true;
        for (size_t k = 0; k < fields->count; k++) ok = ok && fields->items[k];
        int rc = ok ? mindex_init(&ix, id->str, id->len, views->keys[i], views->key_lens[i],
                                  fields, partial, NULL)
                    : MIMEO_ENOMEM;
        if (items) {
            for (size_t k = 0; k < tmp.count; k++) free(items[k]);
            free(items);
        }
        if (rc) continue;
        mindex *g = realloc(set->v, (set->n + 1) * sizeof *g);
        if (!g) {
            mindex_destroy(&ix);
            continue;
        }
        set->v = g;
        set->v[set->n++] = ix;
    }
}

static int load_doc(void *ctx, const char *id, size_t id_len, seam_doc *d) {
    const jval *doc = seam_doc_tree(d);
    if (doc) load_ddoc(doc, ctx);
    return 0;
}

int mindex_load(mimeo_db *db, mindex_set *out, mimeo_err *err) {
    out->v = NULL;
    out->n = 0;
    /* "_design0" sorts right after every "_design/…" id */
    int rc = seam_scan_docs(db, "_design/", 8, false, "_design0", 8, false, false, load_doc,
                            out, err);
    if (rc) mindex_set_destroy(out);
    return rc;
}

/* ---- the cache of definitions -----------------------------------------------------------
 * Reading and parsing every design document on each query costs more than the query, so the
 * sets are kept per database. A set is valid while the database's update sequence has not
 * moved; once it moved, the design documents' ids and revisions (read without bodies) are
 * compared with those the set was loaded from, and only a difference loads it again. Sets
 * are shared by reference count: a reload does not free a set a query still reads. */

#define CACHE_SLOTS 16

typedef struct shared_set {
    mindex_set set;      /* first: a mindex_set pointer is a shared_set pointer */
    unsigned   refs;     /* holders, the cache's slot included */
} shared_set;

typedef struct cache_slot {
    uintptr_t   env;
    uint64_t    dbid, created;
    uint64_t    seq;     /* update sequence at which the set was last found valid */
    buf         sig;     /* the design documents' ids and revisions it was loaded from */
    shared_set *s;
    uint64_t    used;
} cache_slot;

static cache_slot g_slots[CACHE_SLOTS];
static uint64_t g_tick;
static pthread_mutex_t g_cache_lock = PTHREAD_MUTEX_INITIALIZER;

static void shared_put(shared_set *s) { /* under g_cache_lock */
    if (s && --s->refs == 0) {
        mindex_set_destroy(&s->set);
        free(s);
    }
}

static cache_slot *slot_find(uintptr_t env, uint64_t dbid, uint64_t created) {
    for (size_t i = 0; i < CACHE_SLOTS; i++) {
        cache_slot *c = &g_slots[i];
        if (c->s && c->env == env && c->dbid == dbid && c->created == created) return c;
    }
    return NULL;
}

void mindex_release(const mindex_set *set) {
    if (!set) return;
    pthread_mutex_lock(&g_cache_lock);
    shared_put((shared_set *)set);
    pthread_mutex_unlock(&g_cache_lock);
}

int mindex_acquire(mimeo_db *db, const mindex_set **out, mimeo_err *err) {
    *out = NULL;
    uintptr_t env;
    uint64_t dbid, created, seq;
    int rc = dbidx_identity(db, &env, &dbid, &created, &seq);
    if (rc) return rc;
    pthread_mutex_lock(&g_cache_lock);
    cache_slot *c = slot_find(env, dbid, created);
    if (c && c->seq == seq) {
        c->used = ++g_tick;
        c->s->refs++;
        *out = &c->s->set;
    }
    pthread_mutex_unlock(&g_cache_lock);
    if (*out) return 0;

    buf sig;
    buf_init(&sig, 0);
    if ((rc = seam_ddoc_revs(db, &sig))) {
        buf_destroy(&sig);
        return rc;
    }
    pthread_mutex_lock(&g_cache_lock);
    c = slot_find(env, dbid, created);
    if (c && c->sig.len == sig.len && (!sig.len || memcmp(c->sig.data, sig.data, sig.len) == 0)) {
        /* a write, but no design document changed: the set holds at this sequence */
        if (seq > c->seq) c->seq = seq;
        c->used = ++g_tick;
        c->s->refs++;
        *out = &c->s->set;
    }
    pthread_mutex_unlock(&g_cache_lock);
    if (*out) {
        buf_destroy(&sig);
        return 0;
    }

    shared_set *s = calloc(1, sizeof *s);
    if (!s) {
        buf_destroy(&sig);
        err_set(err, MIMEO_ENOMEM, "internal_server_error", "out of memory");
        return MIMEO_ENOMEM;
    }
    if ((rc = mindex_load(db, &s->set, err))) {
        free(s);
        buf_destroy(&sig);
        return rc;
    }
    /* best effort: a failure only costs space */
    mindex_drop_orphans(db, &s->set);
    s->refs = 2; /* the caller and the slot */
    pthread_mutex_lock(&g_cache_lock);
    c = slot_find(env, dbid, created);
    if (!c) {
        c = &g_slots[0];
        for (size_t i = 0; i < CACHE_SLOTS; i++) {
            if (!g_slots[i].s) { c = &g_slots[i]; break; }
            if (g_slots[i].used < c->used) c = &g_slots[i];
        }
    }
    shared_put(c->s);
    buf_destroy(&c->sig);
    c->env = env;
    c->dbid = dbid;
    c->created = created;
    c->seq = seq;
    c->sig = sig; /* the slot takes the bytes */
    c->s = s;
    c->used = ++g_tick;
    pthread_mutex_unlock(&g_cache_lock);
    *out = &s->set;
    return 0;
}

/* ---- keys -------------------------------------------------------------------------------- */

int mindex_key(const mindex *ix, const char *id, size_t id_len, const jval *doc, buf *key,
               bool *indexed) {
    *indexed = false;
    if (id_len >= 8 && memcmp(id, "_design/", 8) == 0) return 0;
    const jval *vals[64];
    const jval **v = ix->nfields <= 64 ? vals : malloc(ix->nfields * sizeof *v);
    if (!v) return MIMEO_ENOMEM;
    int rc = 0;
    bool all = true;
    for (size_t i = 0; i < ix->nfields && all; i++) all = sel_path_get(doc, &ix->paths[i], &v[i]);
    if (all && ix->partial) all = selector_match(ix->partial, doc);
    if (all) {
        jval arr = {.type = JV_ARRAY, .count = ix->nfields, .items = (jval **)v};
        rc = collate_key_put(key, &arr);
        *indexed = rc == 0;
    }
    if (v != vals) free(v);
    return rc;
}

/* ---- keys from the text -----------------------------------------------------------------
 * An index build reads every document, and parsing each into a tree costs more than the rest
 * of the build together. A document's text from the store is valid JSON (checked when it was
 * written), so the indexed fields can be found by skipping over it: only their values are
 * parsed, as one array, which is the row key's shape. Anything unusual on a path (an escape
 * in a key, a key seen twice, an array to step into) goes back to the tree, so both ways
 * give the same key. */

enum { TX_FOUND, TX_MISSING, TX_TREE };

static const char *ws(const char *p, const char *e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* The end of the string starting at p ('"'); *esc: it holds a backslash. */
static const char *str_end(const char *p, const char *e, bool *esc) {
    *esc = false;
    for (p++; p < e; p++) {
        if (*p == '\\') { *esc = true; p++; continue; }
        if (*p == '"') return p + 1;
    }
    return NULL;
}

/* The end of the value starting at p. */
static const char *value_end(const char *p, const char *e) {
    bool esc;
    if (p >= e) return NULL;
    if (*p == '"') return str_end(p, e, &esc);
    if (*p == '{' || *p == '[') {
        size_t depth = 0;
        while (p < e) {
            if (*p == '"') {
                if (!(p = str_end(p, e, &esc))) return NULL;
                continue;
            }
            if (*p == '{' || *p == '[') depth++;
            else if ((*p == '}' || *p == ']') && --depth == 0) return p + 1;
            p++;
        }
        return NULL;
    }
    while (p < e && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n' &&
           *p != '\t' && *p != '\r')
        p++;
    return p;
}

/* Finds the value of path in the object text [p, e): its span in *vs, *ve. */
static int text_field(const char *p, const char *e, const sel_path *path, const char **vs,
                      const char **ve) {
    for (size_t part = 0; part < path->n; part++) {
        p = ws(p, e);
        if (p >= e) return TX_TREE;
        if (*p == '[') return TX_TREE; /* an index into an array: the tree's rules */
        if (*p != '{') return TX_MISSING; /* a scalar on the way */
        const char *found = NULL, *found_end = NULL;
        p = ws(p + 1, e);
        if (p < e && *p == '}') return TX_MISSING;
        while (p < e) {
            bool esc;
            const char *ks = p, *kend = *p == '"' ? str_end(p, e, &esc) : NULL;
            if (!kend) return TX_TREE;
            if (esc) return TX_TREE;
            p = ws(kend, e);
            if (p >= e || *p != ':') return TX_TREE;
            p = ws(p + 1, e);
            const char *vend = value_end(p, e);
            if (!vend) return TX_TREE;
            size_t kl = (size_t)(kend - ks) - 2;
            if (kl == path->lens[part] && memcmp(ks + 1, path->parts[part], kl) == 0) {
                if (found) return TX_TREE; /* a key twice */
                found = p;
                found_end = vend;
            }
            p = ws(vend, e);
            if (p < e && *p == ',') { p = ws(p + 1, e); continue; }
            if (p < e && *p == '}') break;
            return TX_TREE;
        }
        if (!found) return TX_MISSING;
        p = found;
        e = found_end;
    }
    *vs = p;
    *ve = e;
    return TX_FOUND;
}

/* mindex_key from the document's text. *tree true: use mindex_key on the tree instead. */
static int mindex_key_text(const mindex *ix, const char *json, size_t len, buf *key,
                           bool *indexed, bool *tree, buf *scratch) {
    *indexed = false;
    *tree = ix->partial != NULL; /* a partial filter needs the whole document */
    if (*tree) return 0;
    buf_reset(scratch);
    int rc = buf_putc(scratch, '[');
    for (size_t i = 0; !rc && i < ix->nfields; i++) {
        const char *vs, *ve;
        int r = text_field(json, json + len, &ix->paths[i], &vs, &ve);
        if (r == TX_MISSING) return 0;
        if (r == TX_TREE) { *tree = true; return 0; }
        if (i) rc = buf_putc(scratch, ',');
        if (!rc) rc = buf_put(scratch, vs, (size_t)(ve - vs));
    }
    if (!rc) rc = buf_putc(scratch, ']');
    if (rc) return rc;
    jval *arr = NULL;
    if (json_tree_parse(scratch->data, scratch->len, NULL, &arr, NULL) != 0 ||
        arr->type != JV_ARRAY || arr->count != ix->nfields) {
        jval_free(arr);
        *tree = true;
        return 0;
    }
    rc = collate_key_put(key, arr);
    *indexed = rc == 0;
    jval_free(arr);
    return rc;
}

/* ---- updates ------------------------------------------------------------------------------ */

/* One process-wide lock: index updates are rare and short next to reads, and one lock keeps
 * two queries from building the same rows twice. */
static pthread_mutex_t update_lock = PTHREAD_MUTEX_INITIALIZER;

typedef struct upd_ctx {
    const mindex *ix;
    dbidx_change *ch;
    size_t        n, cap;
    buf           keys;   /* all new keys, back to back */
    buf           scratch;
    size_t       *key_off;
    char        **ids;
    int           rc;
} upd_ctx;

static int upd_row(void *ctx, const char *id, size_t id_len, bool deleted, seam_doc *doc) {
    upd_ctx *u = ctx;
    if (u->n == u->cap) {
        size_t cap = u->cap ? u->cap * 2 : 64;
        dbidx_change *ch = realloc(u->ch, cap * sizeof *ch);
        size_t *off = ch ? realloc(u->key_off, cap * sizeof *off) : NULL;
        if (ch) u->ch = ch;
        if (off) u->key_off = off;
        char **ids = off ? realloc(u->ids, cap * sizeof *ids) : NULL;
        if (ids) u->ids = ids;
        if (!ch || !off || !ids) return MIMEO_ENOMEM;
        u->cap = cap;
    }
    size_t at = u->keys.len;
    bool indexed = false, tree = false;
    int rc = 0;
    bool design = id_len >= 8 && memcmp(id, "_design/", 8) == 0;
    if (!deleted && doc && !design)
        rc = mindex_key_text(u->ix, doc->json, doc->len, &u->keys, &indexed, &tree, &u->scratch);
    if (!rc && tree) {
        u->keys.len = at;
        const jval *t = seam_doc_tree(doc);
        if (t) rc = mindex_key(u->ix, id, id_len, t, &u->keys, &indexed);
        else rc = doc->parse_rc;
    }
    char *idc = rc ? NULL : dup_n(id, id_len);
    if (!rc && !idc) rc = MIMEO_ENOMEM;
    if (rc) return rc;
    u->ids[u->n] = idc;
    u->key_off[u->n] = indexed ? at : SIZE_MAX;
    u->ch[u->n] = (dbidx_change){idc, id_len, NULL, indexed ? u->keys.len - at : 0};
    u->n++;
    return 0;
}

static void upd_reset(upd_ctx *u) {
    for (size_t i = 0; i < u->n; i++) free(u->ids[i]);
    u->n = 0;
    buf_reset(&u->keys);
}

int mindex_update(mimeo_db *db, const mindex *ix, uint64_t *upto, mimeo_err *err) {
    uint64_t seq, now;
    int rc = seam_update_seq(db, &now);
    if (rc) return rc;
    if ((rc = dbidx_seq(db, ix->id, &seq))) return rc;
    *upto = seq;
    if (seq >= now) return 0;
    pthread_mutex_lock(&update_lock);
    upd_ctx u = {0};
    u.ix = ix;
    buf_init(&u.keys, 0);
    buf_init(&u.scratch, 0);
    for (;;) {
        if ((rc = dbidx_seq(db, ix->id, &seq))) break;
        *upto = seq;
        uint64_t last = 0, pending = 0;
        upd_reset(&u);
        rc = seam_changes(db, seq, UPDATE_BATCH, upd_row, &u, &last, &pending, err);
        if (rc) break;
        if (last <= seq && u.n == 0) break;
        for (size_t i = 0; i < u.n; i++)
            if (u.key_off[i] != SIZE_MAX)
                u.ch[i].key = (const unsigned char *)u.keys.data + u.key_off[i];
        rc = dbidx_apply(db, ix->id, seq, last > seq ? last : seq, u.ch, u.n);
        if (rc == MIMEO_ECONFLICT) { rc = 0; continue; } /* moved meanwhile: read again */
        if (!rc) *upto = last > seq ? last : seq;
        if (rc || pending == 0) break;
    }
    upd_reset(&u);
    free(u.ch);
    free(u.key_off);
    free(u.ids);
    buf_destroy(&u.keys);
    buf_destroy(&u.scratch);
    pthread_mutex_unlock(&update_lock);
    if (rc && err && !err->code) err_set(err, rc, "internal", "%s", mimeo_strerror(rc));
    return rc;
}

typedef struct orphan_ctx {
    mimeo_db         *db;
    const mindex_set *set;
    mindex_set        fresh;    /* loaded again before the first drop */
    bool              reloaded;
} orphan_ctx;

static bool defined(const mindex_set *set, uint64_t idx) {
    for (size_t i = 0; i < set->n; i++)
        if (set->v[i].id == idx) return true;
    return false;
}

static int orphan_check(void *ctx, uint64_t idx) {
    orphan_ctx *o = ctx;
    if (defined(o->set, idx)) return 0;
    /* the caller's set may predate an index created meanwhile by another request: only
     * what the design documents do not define now is dropped */
    if (!o->reloaded) {
        o->reloaded = true;
        if (mindex_load(o->db, &o->fresh, NULL)) return 0;
    }
    if (defined(&o->fresh, idx)) return 0;
    return dbidx_drop(o->db, idx);
}

int mindex_drop_orphans(mimeo_db *db, const mindex_set *set) {
    orphan_ctx o = {db, set, {0}, false};
    int rc = dbidx_list(db, orphan_check, &o);
    mindex_set_destroy(&o.fresh);
    return rc;
}

/* ---- JSON -------------------------------------------------------------------------------- */

int mindex_put_json(buf *b, const mindex *ix) {
    if (!ix)
        return buf_puts(b, "{\"ddoc\":null,\"name\":\"_all_docs\",\"type\":\"special\","
                           "\"def\":{\"fields\":[{\"_id\":\"asc\"}]}}");
    int rc = buf_puts(b, "{\"ddoc\":");
    if (!rc) rc = json_put_cstr(b, ix->ddoc);
    if (!rc) rc = buf_puts(b, ",\"name\":");
    if (!rc) rc = json_put_cstr(b, ix->name);
    if (!rc) rc = buf_puts(b, ",\"type\":\"json\",\"partitioned\":false,\"def\":{\"fields\":[");
    for (size_t i = 0; !rc && i < ix->nfields; i++) {
        if (i) rc = buf_putc(b, ',');
        if (!rc) rc = buf_putc(b, '{');
        if (!rc) rc = json_put_str(b, ix->fields[i], ix->field_lens[i]);
        if (!rc) rc = buf_puts(b, ":\"asc\"}");
    }
    if (!rc) rc = buf_putc(b, ']');
    if (!rc && ix->partial_json) {
        rc = buf_puts(b, ",\"partial_filter_selector\":");
        if (!rc) rc = buf_puts(b, ix->partial_json);
    }
    if (!rc) rc = buf_puts(b, "}}");
    return rc;
}

/* ---- the _index endpoints ------------------------------------------------------------------ */

static int fail(mimeo_err *err, int code, const char *error, const char *reason) {
    err_set(err, code, error, "%s", reason);
    return code;
}

int mimeo_index_list(mimeo_db *db, char **json_out, size_t *out_len, mimeo_err *err) {
    mindex_set set;
    int rc = mindex_load(db, &set, err);
    if (rc) return rc;
    buf b;
    buf_init(&b, 0);
    rc = buf_printf(&b, "{\"total_rows\":%zu,\"indexes\":[", set.n + 1);
    if (!rc) rc = mindex_put_json(&b, NULL);
    for (size_t i = 0; !rc && i < set.n; i++) {
        rc = buf_putc(&b, ',');
        if (!rc) rc = mindex_put_json(&b, &set.v[i]);
    }
    if (!rc) rc = buf_puts(&b, "]}");
    mindex_set_destroy(&set);
    if (rc) {
        buf_destroy(&b);
        return fail(err, MIMEO_ENOMEM, "internal_server_error", "out of memory");
    }
    *json_out = buf_detach(&b, out_len);
    return 0;
}

/* Reads a design document as a tree; *tree NULL when there is none. */
static int ddoc_get(mimeo_db *db, const char *id, size_t n, jval **tree, mimeo_err *err) {
    return seam_get_doc(db, id, n, tree, err);
}

/* Writes ddoc `id` as the old one (may be NULL) with language "query" and its views
 * replaced: view `name` set to `view_json` (NULL: removed). An empty views object deletes the
 * document. */
static int ddoc_put(mimeo_db *db, const char *id, size_t id_len, const jval *old,
                    const char *name, const char *view_json, mimeo_err *err) {
    const jval *views = jval_get(old, "views");
    size_t kept = 0;
    buf b;
    buf_init(&b, 0);
    int rc = buf_puts(&b, "{");
    if (old) {
        for (size_t i = 0; !rc && i < old->count; i++) {
            const char *k = old->keys[i];
            if (strcmp(k, "_id") == 0 || strcmp(k, "views") == 0 ||
                strcmp(k, "language") == 0)
                continue;
            rc = json_put_str(&b, k, old->key_lens[i]);
            if (!rc) rc = buf_putc(&b, ':');
            if (!rc) rc = json_put_jval(&b, old->items[i]);
            if (!rc) rc = buf_putc(&b, ',');
        }
    }
    if (!rc) rc = buf_puts(&b, "\"language\":\"query\",\"views\":{");
    if (views && views->type == JV_OBJECT) {
        for (size_t i = 0; !rc && i < views->count; i++) {
            if (strcmp(views->keys[i], name) == 0) continue;
            if (kept++) rc = buf_putc(&b, ',');
            if (!rc) rc = json_put_str(&b, views->keys[i], views->key_lens[i]);
            if (!rc) rc = buf_putc(&b, ':');
            if (!rc) rc = json_put_jval(&b, views->items[i]);
        }
    }
    if (!rc && view_json) {
        if (kept++) rc = buf_putc(&b, ',');
        if (!rc) rc = json_put_cstr(&b, name);
        if (!rc) rc = buf_putc(&b, ':');
        if (!rc) rc = buf_puts(&b, view_json);
    }
    if (!rc) rc = buf_puts(&b, "}}");
    if (rc) {
        buf_destroy(&b);
        return fail(err, MIMEO_ENOMEM, "internal_server_error", "out of memory");
    }
    mimeo_put_result res = {0};
    const jval *rev = jval_get(old, "_rev");
    if (kept == 0 && old && rev && rev->type == JV_STRING)
        rc = mimeo_doc_delete(db, id, id_len, rev->str, &res, err);
    else
        rc = mimeo_doc_put(db, id, id_len, b.data, b.len, NULL, &res, err);
    mimeo_free(res.id);
    buf_destroy(&b);
    return rc;
}

static bool valid_key(const char *k) {
    static const char *const keys[] = { "index", "type", "name", "ddoc", "partitioned", "w" };
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (strcmp(k, keys[i]) == 0) return true;
    return false;
}

int mimeo_index_create(mimeo_db *db, const char *json, size_t len, char **json_out,
                       size_t *out_len, mimeo_err *err) {
    jval *req = NULL;
    int rc = json_tree_parse(json, len, NULL, &req, err);
    if (rc) return rc;
    mindex ix = {0};
    jval *old = NULL;
    buf view, out, id;
    buf_init(&view, 0);
    buf_init(&out, 0);
    buf_init(&id, 0);
    char hash[41];
    if (req->type != JV_OBJECT) {
        rc = fail(err, MIMEO_EINVAL, "bad_request", "Request body must be a JSON object");
        goto done;
    }
    for (size_t i = 0; i < req->count; i++)
        if (!valid_key(req->keys[i])) {
            int n = (int)json_utf8_prefix(req->keys[i], req->key_lens[i], 100);
            err_set(err, MIMEO_EINVAL, "invalid_key", "Invalid key %.*s for this request.", n,
                    req->keys[i]);
            rc = MIMEO_EINVAL;
            goto done;
        }
    const jval *index = jval_get(req, "index"), *type = jval_get(req, "type");
    const jval *name = jval_get(req, "name"), *ddoc = jval_get(req, "ddoc");
    if (!index) {
        rc = fail(err, MIMEO_EINVAL, "missing_required_key", "Missing required key: index");
        goto done;
    }
    if (index->type != JV_OBJECT) {
        rc = fail(err, MIMEO_EINVAL, "invalid_object", "index is not a JSON object");
        goto done;
    }
    if (type && (type->type != JV_STRING || strcmp(type->str, "json") != 0)) {
        rc = fail(err, MIMEO_EINVAL, "invalid_index_type",
                  "Only indexes of type \"json\" are supported");
        goto done;
    }
    if ((name && name->type != JV_STRING) || (ddoc && ddoc->type != JV_STRING)) {
        rc = fail(err, MIMEO_EINVAL, "invalid_string", "name and ddoc must be strings");
        goto done;
    }
    const jval *partial = jval_get(index, "partial_filter_selector");
    if (partial && partial->type != JV_OBJECT) {
        rc = fail(err, MIMEO_EINVAL, "invalid_selector_json",
                  "partial_filter_selector must be a JSON object");
        goto done;
    }
    /* the automatic names: CouchDB's are a SHA-1 of the definition, so the same definition
     * lands in the same design document */
    buf_reset(&out);
    if ((rc = json_put_jval(&out, index))) goto oom;
    struct sha1_ctx sc;
    uint8_t dg[SHA1_DIGEST_SIZE];
    sha1_init(&sc);
    sha1_update(&sc, out.len, (const uint8_t *)out.data);
    sha1_digest(&sc, sizeof dg, dg);
    for (int i = 0; i < SHA1_DIGEST_SIZE; i++) snprintf(hash + 2 * i, 3, "%02x", dg[i]);
    buf_reset(&out);
    if (ddoc && ddoc->len >= 8 && memcmp(ddoc->str, "_design/", 8) == 0)
        rc = buf_put(&id, ddoc->str, ddoc->len);
    else if (ddoc)
        rc = buf_printf(&id, "_design/%s", ddoc->str);
    else
        rc = buf_printf(&id, "_design/%s", hash);
    if (rc) goto oom;
    if (name && name->len == 0) {
        rc = fail(err, MIMEO_EINVAL, "invalid_index_name", "Invalid index name");
        goto done;
    }
    const char *nm = name ? name->str : hash;
    if ((rc = mindex_init(&ix, id.data, id.len, nm, strlen(nm), jval_get(index, "fields"),
                          partial, err)))
        goto done;
    /* the view as CouchDB writes it */
    rc = buf_puts(&view, "{\"map\":{\"fields\":{");
    for (size_t i = 0; !rc && i < ix.nfields; i++) {
        if (i) rc = buf_putc(&view, ',');
        if (!rc) rc = json_put_str(&view, ix.fields[i], ix.field_lens[i]);
        if (!rc) rc = buf_puts(&view, ":\"asc\"");
    }
    if (!rc) rc = buf_puts(&view, "}");
    if (!rc && ix.partial_json) rc = buf_printf(&view, ",\"partial_filter_selector\":%s",
                                                ix.partial_json);
    if (!rc) rc = buf_puts(&view, "},\"reduce\":\"_count\",\"options\":{\"def\":");
    if (!rc) rc = json_put_jval(&view, index);
    if (!rc) rc = buf_puts(&view, "}}");
    if (rc) goto oom;
    for (int attempt = 0; attempt < 5; attempt++) {
        jval_free(old);
        if ((rc = ddoc_get(db, id.data, id.len, &old, err))) goto done;
        const jval *lang = jval_get(old, "language");
        if (old && lang && (lang->type != JV_STRING || strcmp(lang->str, "query") != 0)) {
            rc = fail(err, MIMEO_EINVAL, "invalid_ddoc_lang",
                      "Existing design doc does not use the query language");
            goto done;
        }
        /* the same definition under the same name: nothing to do */
        mindex_set have = {0};
        if (old) load_ddoc(old, &have);
        bool exists = false;
        for (size_t i = 0; i < have.n; i++)
            exists = exists || (strcmp(have.v[i].name, ix.name) == 0 && have.v[i].id == ix.id);
        mindex_set_destroy(&have);
        if (exists) {
            rc = buf_puts(&out, "{\"result\":\"exists\",\"id\":");
            break;
        }
        mimeo_err e = {0};
        rc = ddoc_put(db, id.data, id.len, old, ix.name, view.data, &e);
        if (rc == MIMEO_ECONFLICT) continue;
        if (rc) {
            if (err) *err = e;
            goto done;
        }
        rc = buf_puts(&out, "{\"result\":\"created\",\"id\":");
        break;
    }
    if (rc == MIMEO_ECONFLICT) {
        rc = fail(err, MIMEO_ECONFLICT, "conflict", "Document update conflict.");
        goto done;
    }
    if (!rc) rc = json_put_str(&out, id.data, id.len);
    if (!rc) rc = buf_puts(&out, ",\"name\":");
    if (!rc) rc = json_put_cstr(&out, ix.name);
    if (!rc) rc = buf_putc(&out, '}');
    if (rc) goto oom;
    *json_out = buf_detach(&out, out_len);
    goto done;
oom:
    rc = fail(err, MIMEO_ENOMEM, "internal_server_error", "out of memory");
done:
    mindex_destroy(&ix);
    jval_free(old);
    jval_free(req);
    buf_destroy(&view);
    buf_destroy(&out);
    buf_destroy(&id);
    return rc;
}

int mimeo_index_delete(mimeo_db *db, const char *ddoc, size_t ddoc_len, const char *name,
                       size_t name_len, mimeo_err *err) {
    buf id;
    buf_init(&id, 0);
    int rc = 0;
    if (!(ddoc_len >= 8 && memcmp(ddoc, "_design/", 8) == 0)) rc = buf_puts(&id, "_design/");
    if (!rc) rc = buf_put(&id, ddoc, ddoc_len);
    char *nm = dup_n(name, name_len);
    if (rc || !nm) {
        buf_destroy(&id);
        free(nm);
        return fail(err, MIMEO_ENOMEM, "internal_server_error", "out of memory");
    }
    for (int attempt = 0; attempt < 5; attempt++) {
        jval *old = NULL;
        rc = ddoc_get(db, id.data, id.len, &old, err);
        if (rc) break;
        mindex_set have = {0};
        if (old) load_ddoc(old, &have);
        uint64_t sid = 0;
        for (size_t i = 0; i < have.n; i++)
            if (strcmp(have.v[i].name, nm) == 0) sid = have.v[i].id;
        mindex_set_destroy(&have);
        if (!sid) {
            jval_free(old);
            rc = fail(err, MIMEO_ENOTFOUND, "not_found", "Index not found");
            break;
        }
        mimeo_err e = {0};
        rc = ddoc_put(db, id.data, id.len, old, nm, NULL, &e);
        jval_free(old);
        if (rc == MIMEO_ECONFLICT) continue;
        if (rc) {
            if (err) *err = e;
            break;
        }
        rc = dbidx_drop(db, sid);
        break;
    }
    buf_destroy(&id);
    free(nm);
    return rc;
}
