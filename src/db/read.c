/* Reads: single documents, open_revs, _bulk_get, _revs_diff, the changes feed, _all_docs
 * and local documents.
 *
 * Iterations read a page of rows inside one short read transaction, end it, and only then
 * hand the rows to the caller's callback: a slow consumer (a network client) never holds a
 * snapshot open, which would pin old pages and block growing the map. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "db_int.h"

#define PAGE_ROWS 256
#define LOCAL_PREFIX "_local/"
#define LOCAL_PREFIX_LEN 7

static int db_gone(mimeo_err *err) {
    db_err_set(err, MIMEO_ENOTFOUND, "not_found", "Database does not exist.");
    return MIMEO_ENOTFOUND;
}

/* Opens a snapshot of db: its committed record as seen by the snapshot and the tables. */
typedef struct snap {
    MDB_txn            *txn;
    const store_tables *t;
    db_meta             m;
    store              *s;
} snap;

static int snap_begin(mimeo_db *db, snap *sn, mimeo_err *err) {
    sn->s = db->env->store;
    sn->t = store_tables_get(sn->s);
    sn->txn = NULL;
    int rc = store_read_begin(sn->s, &sn->txn);
    if (rc) return db_err(err, rc);
    /* The record read in this snapshot agrees with the rows it shows (update_seq). */
    MDB_val k = {db->name_len, db->name}, v;
    rc = mdb_get(sn->txn, sn->t->dbs, &k, &v);
    rc = rc ? store_err(rc) : db_meta_decode(&sn->m, v.mv_data, v.mv_size);
    if (!rc) {
        db_meta cur;
        /* Same name, but recreated since this handle was opened? Then the handle is stale. */
        if (db_meta_snapshot(db, &cur) != 0 || cur.dbid != sn->m.dbid) rc = MIMEO_ENOTFOUND;
    }
    if (rc) {
        store_read_end(sn->s, sn->txn);
        sn->txn = NULL;
        return rc == MIMEO_ENOTFOUND ? db_gone(err) : db_err(err, rc);
    }
    return 0;
}

static void snap_end(snap *sn) {
    store_read_end(sn->s, sn->txn);
    sn->txn = NULL;
}

/* Rows gathered inside a snapshot, delivered after it ends. */
typedef struct rowpage {
    buf     text;
    size_t *ends;
    size_t  count;
} rowpage;

static int rowpage_init(rowpage *p) {
    buf_init(&p->text, 0);
    p->count = 0;
    p->ends = malloc(sizeof *p->ends * PAGE_ROWS);
    return p->ends ? 0 : MIMEO_ENOMEM;
}
static void rowpage_destroy(rowpage *p) {
    buf_destroy(&p->text);
    free(p->ends);
}
static void rowpage_reset(rowpage *p) {
    buf_reset(&p->text);
    p->count = 0;
}
static void rowpage_end_row(rowpage *p) { p->ends[p->count++] = p->text.len; }
static int rowpage_deliver(rowpage *p, mimeo_row_fn fn, void *ctx) {
    size_t start = 0;
    for (size_t i = 0; i < p->count; i++) {
        int rc = fn(ctx, p->text.data + start, p->ends[i] - start);
        if (rc) return rc;
        start = p->ends[i];
    }
    return 0;
}

static bool is_local_id(const char *id, size_t n) {
    return n > LOCAL_PREFIX_LEN && memcmp(id, LOCAL_PREFIX, LOCAL_PREFIX_LEN) == 0;
}

/* ---- single documents ----------------------------------------------------------------- */

static int find_rev(const revtree *t, const char *rev, size_t len, int64_t *node) {
    uint64_t gen;
    char hash[REV_HASH_MAX + 1];
    size_t hash_len;
    if (rev_parse(rev, len, false, &gen, hash, &hash_len)) return MIMEO_EBADREV;
    *node = revtree_find(t, gen, hash, hash_len);
    return 0;
}

int mimeo_doc_get(mimeo_db *db, const char *id, size_t id_len, const mimeo_get_opts *opts,
                  char **json_out, size_t *out_len, mimeo_err *err) {
    *json_out = NULL;
    *out_len = 0;
    if (is_local_id(id, id_len))
        return mimeo_local_get(db, id + LOCAL_PREFIX_LEN, id_len - LOCAL_PREFIX_LEN, json_out,
                               out_len, err);
    snap sn;
    int rc = snap_begin(db, &sn, err);
    if (rc) return rc;
    db_doc d;
    db_doc_init(&d);
    buf out;
    buf_init(&out, 0);
    rc = db_doc_load(sn.txn, sn.t, sn.m.dbid, id, id_len, &d);
    int64_t node = -1;
    if (!rc && opts && opts->rev) {
        rc = find_rev(&d.tree, opts->rev, strlen(opts->rev), &node);
        if (rc == MIMEO_EBADREV) {
            db_err_set(err, rc, "bad_request", "Invalid rev format");
            goto out;
        }
        if (!rc && node >= 0 && opts->latest) {
            uint32_t *leaves = malloc(sizeof *leaves * d.tree.count);
            if (!leaves) rc = MIMEO_ENOMEM;
            else if (revtree_leaves_under(&d.tree, (uint32_t)node, leaves)) node = leaves[0];
            free(leaves);
        }
        if (!rc && (node < 0 || !(d.tree.nodes[node].flags & REVTREE_HAS_BODY)))
            rc = MIMEO_ENOTFOUND;
    } else if (!rc) {
        node = revtree_winner(&d.tree);
        if (node < 0) rc = MIMEO_ENOTFOUND;
        else if (d.tree.nodes[node].flags & REVTREE_DELETED) rc = MIMEO_EDELETED;
    }
    if (!rc) rc = db_doc_json(&out, sn.txn, sn.t, sn.m.dbid, id, id_len, &d, (uint32_t)node, opts);
    if (rc) db_err(err, rc);
    else *json_out = buf_detach(&out, out_len);
out:
    snap_end(&sn);
    buf_destroy(&out);
    db_doc_destroy(&d);
    return rc;
}

/* Appends {"ok":doc} or {"missing":rev} entries for the requested revisions of one doc.
 * revs NULL means every leaf. `emit` is called with each entry's JSON (ok or error). */
typedef int (*entry_fn)(void *ctx, buf *out, const db_doc *d, int64_t node, const char *rev,
                        size_t rev_len);

static int doc_revs_each(snap *sn, const char *id, size_t id_len, const jval *revs, bool latest,
                         bool *found, entry_fn fn, void *ctx, buf *out) {
    db_doc d;
    db_doc_init(&d);
    int rc = db_doc_load(sn->txn, sn->t, sn->m.dbid, id, id_len, &d);
    *found = rc == 0;
    if (rc == MIMEO_ENOTFOUND) rc = 0;
    uint32_t *idx = NULL;
    if (!rc) {
        idx = malloc(sizeof *idx * (d.tree.count ? d.tree.count : 1));
        if (!idx) rc = MIMEO_ENOMEM;
    }
    if (!rc && !revs) {
        uint32_t n = revtree_leaves(&d.tree, idx);
        for (uint32_t i = 0; i < n && !rc; i++) rc = fn(ctx, out, &d, idx[i], NULL, 0);
    } else if (!rc) {
        for (size_t i = 0; i < revs->count && !rc; i++) {
            const jval *r = revs->items[i];
            int64_t node = -1;
            if (r->type != JV_STRING) {
                rc = MIMEO_EBADREV;
                break;
            }
            if (find_rev(&d.tree, r->str, r->len, &node)) {
                rc = MIMEO_EBADREV;
                break;
            }
            if (node >= 0 && latest && !revtree_is_leaf(&d.tree, (uint32_t)node)) {
                uint32_t n = revtree_leaves_under(&d.tree, (uint32_t)node, idx);
                for (uint32_t j = 0; j < n && !rc; j++) rc = fn(ctx, out, &d, idx[j], NULL, 0);
                continue;
            }
            if (node >= 0 && !(d.tree.nodes[node].flags & REVTREE_HAS_BODY)) node = -1;
            rc = fn(ctx, out, &d, node, r->str, r->len);
        }
    }
    free(idx);
    db_doc_destroy(&d);
    return rc;
}

typedef struct open_revs_ctx {
    snap                 *sn;
    const char           *id;
    size_t                id_len;
    const mimeo_get_opts *opts;
    bool                  first;
} open_revs_ctx;

static int open_revs_entry(void *arg, buf *out, const db_doc *d, int64_t node, const char *rev,
                           size_t rev_len) {
    open_revs_ctx *c = arg;
    int rc = c->first ? 0 : buf_putc(out, ',');
    c->first = false;
    if (rc) return rc;
    if (node < 0) {
        rc = buf_puts(out, "{\"missing\":");
        if (!rc) rc = json_put_str(out, rev, rev_len);
        return rc ? rc : buf_putc(out, '}');
    }
    rc = buf_puts(out, "{\"ok\":");
    if (!rc) rc = db_doc_json(out, c->sn->txn, c->sn->t, c->sn->m.dbid, c->id, c->id_len, d,
                              (uint32_t)node, c->opts);
    return rc ? rc : buf_putc(out, '}');
}

static bool revs_all(const char *s, size_t n) {
    return (n == 3 && memcmp(s, "all", 3) == 0) || (n == 5 && memcmp(s, "\"all\"", 5) == 0);
}

int mimeo_doc_open_revs(mimeo_db *db, const char *id, size_t id_len, const char *revs_json,
                        size_t revs_len, const mimeo_get_opts *opts, char **json_out,
                        size_t *out_len, mimeo_err *err) {
    *json_out = NULL;
    *out_len = 0;
    jval *revs = NULL;
    if (!revs_all(revs_json, revs_len)) {
        json_error je;
        if (json_tree_parse(revs_json, revs_len, &db->env->limits, &revs, &je) != 0 ||
            revs->type != JV_ARRAY) {
            jval_free(revs);
            db_err_set(err, MIMEO_EINVAL, "bad_request", "`open_revs` must be `all` or a JSON array of revisions");
            return MIMEO_EINVAL;
        }
    }
    snap sn;
    int rc = snap_begin(db, &sn, err);
    if (rc) {
        jval_free(revs);
        return rc;
    }
    buf out;
    buf_init(&out, 0);
    open_revs_ctx c = {&sn, id, id_len, opts, true};
    bool found;
    rc = buf_putc(&out, '[');
    if (!rc) rc = doc_revs_each(&sn, id, id_len, revs, opts && opts->latest, &found,
                                open_revs_entry, &c, &out);
    if (!rc && !revs && !found) rc = MIMEO_ENOTFOUND;
    if (!rc) rc = buf_putc(&out, ']');
    snap_end(&sn);
    jval_free(revs);
    if (rc == MIMEO_EBADREV) db_err_set(err, rc, "bad_request", "Invalid rev format");
    else if (rc) db_err(err, rc);
    else *json_out = buf_detach(&out, out_len);
    buf_destroy(&out);
    return rc;
}

/* ---- _bulk_get --------------------------------------------------------------------------- */

typedef struct bulk_get_ctx {
    open_revs_ctx base;
} bulk_get_ctx;

static int bulk_get_entry(void *arg, buf *out, const db_doc *d, int64_t node, const char *rev,
                          size_t rev_len) {
    open_revs_ctx *c = arg;
    int rc = c->first ? 0 : buf_putc(out, ',');
    c->first = false;
    if (rc) return rc;
    if (node < 0) {
        /* PouchDB and CouchDB's replicator both need this nested error shape. */
        rc = buf_puts(out, "{\"error\":{\"id\":");
        if (!rc) rc = json_put_str(out, c->id, c->id_len);
        if (!rc) rc = buf_puts(out, ",\"rev\":");
        if (!rc) rc = json_put_str(out, rev, rev_len);
        return rc ? rc : buf_puts(out, ",\"error\":\"not_found\",\"reason\":\"missing\"}}");
    }
    rc = buf_puts(out, "{\"ok\":");
    if (!rc) rc = db_doc_json(out, c->sn->txn, c->sn->t, c->sn->m.dbid, c->id, c->id_len, d,
                              (uint32_t)node, c->opts);
    return rc ? rc : buf_putc(out, '}');
}

int mimeo_bulk_get(mimeo_db *db, const char *json, size_t len, const mimeo_get_opts *opts,
                   char **json_out, size_t *out_len, mimeo_err *err) {
    *json_out = NULL;
    *out_len = 0;
    jval *req = NULL;
    json_error je;
    if (json_tree_parse(json, len, &db->env->limits, &req, &je) != 0) return db_err_json(err, &je);
    const jval *docs = jval_get(req, "docs");
    if (!docs || docs->type != JV_ARRAY) {
        jval_free(req);
        db_err_set(err, MIMEO_EINVAL, "bad_request", "Missing JSON list of 'docs'.");
        return MIMEO_EINVAL;
    }
    snap sn;
    int rc = snap_begin(db, &sn, err);
    if (rc) {
        jval_free(req);
        return rc;
    }
    mimeo_get_opts o = opts ? *opts : (mimeo_get_opts){0};
    o.rev = NULL;
    buf out;
    buf_init(&out, 0);
    rc = buf_puts(&out, "{\"results\":[");
    for (size_t i = 0; i < docs->count && !rc; i++) {
        const jval *e = docs->items[i];
        const jval *id = jval_get(e, "id"), *rev = jval_get(e, "rev");
        if (i) rc = buf_putc(&out, ',');
        if (rc) break;
        if (!id || id->type != JV_STRING || (rev && rev->type != JV_STRING)) {
            rc = buf_puts(&out, "{\"id\":");
            if (!rc) rc = id && id->type == JV_STRING ? json_put_str(&out, id->str, id->len)
                                                      : buf_puts(&out, "null");
            if (!rc) rc = buf_puts(&out, ",\"docs\":[{\"error\":{\"id\":");
            if (!rc) rc = id && id->type == JV_STRING ? json_put_str(&out, id->str, id->len)
                                                      : buf_puts(&out, "null");
            if (!rc) rc = buf_puts(&out, ",\"rev\":null,\"error\":\"bad_request\",\"reason\":\"Each entry needs a string `id` and an optional string `rev`.\"}}]}");
            continue;
        }
        rc = buf_puts(&out, "{\"id\":");
        if (!rc) rc = json_put_str(&out, id->str, id->len);
        if (!rc) rc = buf_puts(&out, ",\"docs\":[");
        if (rc) break;
        /* One revision per entry: wrap it as a one-element list. */
        jval one = {.type = JV_ARRAY, .count = 1, .items = (jval **)&rev};
        open_revs_ctx c = {&sn, id->str, id->len, &o, true};
        bool found;
        size_t mark = out.len;
        rc = doc_revs_each(&sn, id->str, id->len, rev ? &one : NULL, o.latest, &found,
                           bulk_get_entry, &c, &out);
        if (rc == MIMEO_EBADREV) {
            out.len = mark;
            rc = buf_puts(&out, "{\"error\":{\"id\":");
            if (!rc) rc = json_put_str(&out, id->str, id->len);
            if (!rc) rc = buf_puts(&out, ",\"rev\":");
            if (!rc) rc = json_put_str(&out, rev->str, rev->len);
            if (!rc) rc = buf_puts(&out, ",\"error\":\"bad_request\",\"reason\":\"Invalid rev format\"}}");
        } else if (!rc && !rev && !found) {
            rc = buf_puts(&out, "{\"error\":{\"id\":");
            if (!rc) rc = json_put_str(&out, id->str, id->len);
            if (!rc) rc = buf_puts(&out, ",\"rev\":\"undefined\",\"error\":\"not_found\",\"reason\":\"missing\"}}");
        }
        if (!rc) rc = buf_puts(&out, "]}");
    }
    if (!rc) rc = buf_puts(&out, "]}");
    snap_end(&sn);
    jval_free(req);
    if (rc) db_err(err, rc);
    else *json_out = buf_detach(&out, out_len);
    buf_destroy(&out);
    return rc;
}

/* ---- _revs_diff --------------------------------------------------------------------------- */

int mimeo_revs_diff(mimeo_db *db, const char *json, size_t len, char **json_out,
                    size_t *out_len, mimeo_err *err) {
    *json_out = NULL;
    *out_len = 0;
    jval *req = NULL;
    json_error je;
    if (json_tree_parse(json, len, &db->env->limits, &req, &je) != 0) return db_err_json(err, &je);
    if (req->type != JV_OBJECT) {
        jval_free(req);
        db_err_set(err, MIMEO_EINVAL, "bad_request", "Request body must be a JSON object");
        return MIMEO_EINVAL;
    }
    snap sn;
    int rc = snap_begin(db, &sn, err);
    if (rc) {
        jval_free(req);
        return rc;
    }
    buf out;
    buf_init(&out, 0);
    rc = buf_putc(&out, '{');
    bool first = true;
    uint32_t *leaves = NULL;
    for (size_t i = 0; i < req->count && !rc; i++) {
        const jval *revs = req->items[i];
        if (revs->type != JV_ARRAY) {
            rc = MIMEO_EINVAL;
            break;
        }
        db_doc d;
        db_doc_init(&d);
        rc = db_doc_load(sn.txn, sn.t, sn.m.dbid, req->keys[i], req->key_lens[i], &d);
        if (rc == MIMEO_ENOTFOUND) rc = 0;
        size_t nmissing = 0;
        uint64_t max_missing_gen = 0;
        size_t mark = out.len;
        for (size_t j = 0; j < revs->count && !rc; j++) {
            const jval *r = revs->items[j];
            uint64_t gen;
            char hash[REV_HASH_MAX + 1];
            size_t hash_len;
            if (r->type != JV_STRING || rev_parse(r->str, r->len, false, &gen, hash, &hash_len)) {
                rc = MIMEO_EBADREV;
                break;
            }
            if (revtree_find(&d.tree, gen, hash, hash_len) >= 0) continue;
            if (nmissing++ == 0) {
                if (!first) rc = buf_putc(&out, ',');
                if (!rc) rc = json_put_str(&out, req->keys[i], req->key_lens[i]);
                if (!rc) rc = buf_puts(&out, ":{\"missing\":[");
            } else {
                rc = buf_putc(&out, ',');
            }
            if (!rc) rc = buf_putc(&out, '"');
            if (!rc) rc = rev_put(&out, gen, hash, hash_len);
            if (!rc) rc = buf_putc(&out, '"');
            if (gen > max_missing_gen) max_missing_gen = gen;
        }
        if (!rc && nmissing) {
            rc = buf_putc(&out, ']');
            /* Leaves older than what is missing may be its ancestors: CouchDB's replicator
             * passes them as atts_since so unchanged attachments are not sent again. */
            free(leaves);
            leaves = malloc(sizeof *leaves * (d.tree.count ? d.tree.count : 1));
            if (!leaves) rc = MIMEO_ENOMEM;
            uint32_t n = rc ? 0 : revtree_leaves(&d.tree, leaves), k = 0;
            for (uint32_t j = 0; j < n && !rc; j++) {
                const revtree_node *leaf = &d.tree.nodes[leaves[j]];
                if (leaf->gen >= max_missing_gen) continue;
                rc = buf_puts(&out, k++ ? ",\"" : ",\"possible_ancestors\":[\"");
                if (!rc) rc = db_rev_put(&out, leaf);
                if (!rc) rc = buf_putc(&out, '"');
            }
            if (!rc && k) rc = buf_putc(&out, ']');
            if (!rc) rc = buf_putc(&out, '}');
            first = false;
        } else if (rc) {
            out.len = mark;
        }
        db_doc_destroy(&d);
    }
    free(leaves);
    if (!rc) rc = buf_putc(&out, '}');
    snap_end(&sn);
    jval_free(req);
    if (rc == MIMEO_EBADREV || rc == MIMEO_EINVAL)
        db_err_set(err, rc, "bad_request", "Invalid rev format");
    else if (rc) db_err(err, rc);
    else *json_out = buf_detach(&out, out_len);
    buf_destroy(&out);
    return rc;
}

/* ---- the changes feed ---------------------------------------------------------------------- */

/* Appends one changes row for a document read in the snapshot. */
static int change_row(buf *out, snap *sn, const char *id, size_t id_len, const db_doc *d,
                      const mimeo_changes_opts *o, uint32_t *scratch) {
    int64_t winner = revtree_winner(&d->tree);
    if (winner < 0) return MIMEO_ECORRUPT;
    int rc = buf_printf(out, "{\"seq\":%llu,\"id\":", (unsigned long long)d->seq);
    if (!rc) rc = json_put_str(out, id, id_len);
    if (!rc) rc = buf_puts(out, ",\"changes\":[");
    uint32_t n = 1;
    scratch[0] = (uint32_t)winner;
    /* Leaves come best first, so the winner leads in all_docs style too. */
    if (o->all_docs_style) n = revtree_leaves(&d->tree, scratch);
    for (uint32_t i = 0; i < n && !rc; i++) {
        rc = buf_puts(out, i ? ",{\"rev\":\"" : "{\"rev\":\"");
        if (!rc) rc = db_rev_put(out, &d->tree.nodes[scratch[i]]);
        if (!rc) rc = buf_puts(out, "\"}");
    }
    if (!rc) rc = buf_putc(out, ']');
    if (!rc && (d->tree.nodes[winner].flags & REVTREE_DELETED)) rc = buf_puts(out, ",\"deleted\":true");
    if (!rc && o->include_docs) {
        mimeo_get_opts go = {0};
        go.conflicts = o->conflicts;
        rc = buf_puts(out, ",\"doc\":");
        if (!rc) rc = db_doc_json(out, sn->txn, sn->t, sn->m.dbid, id, id_len, d, (uint32_t)winner, &go);
    }
    return rc ? rc : buf_putc(out, '}');
}

typedef struct seq_id {
    uint64_t seq;
    char    *id;
    size_t   len;
} seq_id;

static int seq_id_cmp(const void *a, const void *b) {
    uint64_t x = ((const seq_id *)a)->seq, y = ((const seq_id *)b)->seq;
    return x < y ? -1 : x > y;
}

/* filter=_doc_ids: look the few named documents up instead of scanning the feed. */
static int changes_doc_ids(mimeo_db *db, const mimeo_changes_opts *o, mimeo_row_fn fn, void *ctx,
                           uint64_t *last_seq, uint64_t *pending, mimeo_err *err) {
    snap sn;
    int rc = snap_begin(db, &sn, err);
    if (rc) return rc;
    seq_id *hits = calloc(o->doc_id_count ? o->doc_id_count : 1, sizeof *hits);
    size_t nhits = 0;
    if (!hits) rc = MIMEO_ENOMEM;
    for (size_t i = 0; i < o->doc_id_count && !rc; i++) {
        db_doc d;
        db_doc_init(&d);
        int lrc = db_doc_load(sn.txn, sn.t, sn.m.dbid, o->doc_ids[i], o->doc_id_lens[i], &d);
        bool dup = false;
        for (size_t j = 0; j < nhits && lrc == 0; j++) dup |= hits[j].seq == d.seq;
        if (lrc == 0 && !dup && (o->descending || d.seq > o->since)) {
            hits[nhits].seq = d.seq;
            hits[nhits].id = (char *)o->doc_ids[i];
            hits[nhits].len = o->doc_id_lens[i];
            nhits++;
        } else if (lrc && lrc != MIMEO_ENOTFOUND) {
            rc = lrc;
        }
        db_doc_destroy(&d);
    }
    if (!rc) qsort(hits, nhits, sizeof *hits, seq_id_cmp);
    if (!rc && o->descending) {
        for (size_t i = 0; i < nhits / 2; i++) {
            seq_id tmp = hits[i];
            hits[i] = hits[nhits - 1 - i];
            hits[nhits - 1 - i] = tmp;
        }
    }
    size_t limit = o->limit_zero ? 0 : o->limit ? (size_t)o->limit : nhits;
    if (limit > nhits) limit = nhits;
    buf out;
    buf_init(&out, 0);
    size_t *ends = malloc(sizeof *ends * (limit ? limit : 1));
    uint32_t *scratch = NULL;
    if (!ends) rc = MIMEO_ENOMEM;
    for (size_t i = 0; i < limit && !rc; i++) {
        db_doc d;
        db_doc_init(&d);
        rc = db_doc_load(sn.txn, sn.t, sn.m.dbid, hits[i].id, hits[i].len, &d);
        if (!rc) {
            free(scratch);
            scratch = malloc(sizeof *scratch * (d.tree.count ? d.tree.count : 1));
            rc = scratch ? change_row(&out, &sn, hits[i].id, hits[i].len, &d, o, scratch) : MIMEO_ENOMEM;
        }
        ends[i] = out.len;
        db_doc_destroy(&d);
    }
    free(scratch);
    uint64_t update_seq = sn.m.update_seq;
    snap_end(&sn);
    size_t start = 0;
    for (size_t i = 0; i < limit && !rc; i++) {
        rc = fn(ctx, out.data + start, ends[i] - start);
        start = ends[i];
    }
    if (!rc) {
        bool cut = limit < nhits;
        *last_seq = cut && limit ? hits[limit - 1].seq : (o->descending && limit ? hits[limit - 1].seq : update_seq);
        if (pending) *pending = nhits - limit;
    }
    free(ends);
    buf_destroy(&out);
    free(hits);
    return rc < 0 && rc != MIMEO_ENOTFOUND ? db_err(err, rc) : rc;
}

/* The last seq of database dbid in the seqs table (0 when it has none): seek to the first
 * key of the next database and step back, so other databases' keys are never walked. */
static uint64_t last_seq_of(MDB_cursor *cur, uint64_t dbid) {
    unsigned char key[16];
    MDB_val k = {store_key_u64(key, dbid + 1, 0), key}, v;
    int mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    mrc = mrc == MDB_NOTFOUND ? mdb_cursor_get(cur, &k, &v, MDB_LAST)
                              : mrc == 0 ? mdb_cursor_get(cur, &k, &v, MDB_PREV) : mrc;
    if (mrc || k.mv_size != 16 || be64_get(k.mv_data) != dbid) return 0;
    return be64_get((unsigned char *)k.mv_data + 8);
}

/* Rows left in the feed from the cursor's position on (mrc: its last get). Counting is a
 * scan, so past PENDING_SCAN_MAX rows it answers with an upper bound taken from the seq
 * range; clients only show it as progress. */
#define PENDING_SCAN_MAX 4096
static uint64_t count_left(MDB_cursor *cur, MDB_val *k, int mrc, uint64_t dbid) {
    MDB_val v;
    uint64_t n = 0, first = 0;
    while (mrc == 0 && k->mv_size == 16 && be64_get(k->mv_data) == dbid) {
        if (n == 0) first = be64_get((unsigned char *)k->mv_data + 8);
        if (++n > PENDING_SCAN_MAX) {
            /* Seqs are unique and increasing: the last one bounds how many can follow. */
            uint64_t last = last_seq_of(cur, dbid);
            return last >= first ? last - first + 1 : n;
        }
        mrc = mdb_cursor_get(cur, k, &v, MDB_NEXT);
    }
    return n;
}

int mimeo_changes(mimeo_db *db, const mimeo_changes_opts *o, mimeo_row_fn fn, void *ctx,
                  uint64_t *last_seq, uint64_t *pending, mimeo_err *err) {
    *last_seq = o->since;
    if (pending) *pending = 0;
    if (o->doc_ids) return changes_doc_ids(db, o, fn, ctx, last_seq, pending, err);
    if (o->limit_zero) {
        /* No rows, but the count of what is there: CouchDB's replicator reads `pending`
         * from limit=0 polls to show progress. */
        snap sn;
        int rc = snap_begin(db, &sn, err);
        if (rc) return rc;
        MDB_cursor *cur;
        rc = store_err(mdb_cursor_open(sn.txn, sn.t->seqs, &cur));
        if (!rc) {
            unsigned char key[16];
            MDB_val k = {store_key_u64(key, sn.m.dbid, o->since + 1), key}, v;
            int mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
            if (pending) *pending = count_left(cur, &k, mrc, sn.m.dbid);
            mdb_cursor_close(cur);
        }
        *last_seq = o->descending ? sn.m.update_seq
                                  : sn.m.update_seq > o->since ? o->since : sn.m.update_seq;
        if (o->descending && pending) *pending = 0;
        snap_end(&sn);
        return rc ? db_err(err, rc) : 0;
    }

    rowpage page;
    if (rowpage_init(&page)) return db_err(err, MIMEO_ENOMEM);
    uint64_t delivered = 0;
    uint64_t cursor = o->descending ? (o->before ? o->before : UINT64_MAX) : o->since; /* last seq read */
    uint64_t limit = o->limit_zero ? 0 : o->limit ? o->limit : UINT64_MAX;
    uint32_t *scratch = NULL;
    size_t scratch_cap = 0;
    int rc = 0;
    bool end = false;
    uint64_t update_seq = 0;
    uint64_t left = 0; /* rows after the last one delivered, counted in the last snapshot */
    while (!rc && !end && delivered < limit) {
        snap sn;
        rc = snap_begin(db, &sn, err);
        if (rc) break;
        update_seq = sn.m.update_seq;
        rowpage_reset(&page);
        uint64_t page_last = cursor;
        MDB_cursor *cur;
        rc = store_err(mdb_cursor_open(sn.txn, sn.t->seqs, &cur));
        if (!rc) {
            unsigned char key[16];
            MDB_val k, v;
            int mrc;
            if (o->descending) {
                /* Start below `cursor`: seek to it (or, at first, to the next database's
                 * first key) and step back; never walk other databases' keys. */
                k.mv_size = cursor == UINT64_MAX ? store_key_u64(key, sn.m.dbid + 1, 0)
                                                 : store_key_u64(key, sn.m.dbid, cursor);
                k.mv_data = key;
                mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
                if (mrc == MDB_NOTFOUND) mrc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
                else if (mrc == 0) mrc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
            } else {
                k.mv_size = store_key_u64(key, sn.m.dbid, cursor + 1);
                k.mv_data = key;
                mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
            }
            while (mrc == 0 && page.count < PAGE_ROWS && delivered + page.count < limit) {
                if (k.mv_size != 16 || be64_get(k.mv_data) != sn.m.dbid) break;
                uint64_t seq = be64_get((unsigned char *)k.mv_data + 8);
                db_doc d;
                db_doc_init(&d);
                rc = db_doc_load(sn.txn, sn.t, sn.m.dbid, v.mv_data, v.mv_size, &d);
                if (!rc && d.tree.count > scratch_cap) {
                    free(scratch);
                    scratch_cap = d.tree.count * 2;
                    scratch = malloc(sizeof *scratch * scratch_cap);
                    if (!scratch) { scratch_cap = 0; rc = MIMEO_ENOMEM; }
                }
                if (!rc) rc = change_row(&page.text, &sn, v.mv_data, v.mv_size, &d, o, scratch);
                db_doc_destroy(&d);
                if (rc) break;
                rowpage_end_row(&page);
                page_last = seq;
                mrc = mdb_cursor_get(cur, &k, &v, o->descending ? MDB_PREV : MDB_NEXT);
            }
            if (!rc && page.count < PAGE_ROWS && delivered + page.count < limit) end = true;
            if (!rc && !end && !o->descending) left = count_left(cur, &k, mrc, sn.m.dbid);
            if (!rc && mrc != 0 && mrc != MDB_NOTFOUND) rc = store_err(mrc);
            mdb_cursor_close(cur);
        }
        snap_end(&sn);
        if (rc) break;
        rc = rowpage_deliver(&page, fn, ctx);
        delivered += page.count;
        cursor = page_last;
    }
    free(scratch);
    rowpage_destroy(&page);
    if (rc) return rc < 0 && rc != MIMEO_ENOTFOUND ? db_err(err, rc) : rc;
    if (o->descending) {
        *last_seq = delivered ? cursor : update_seq;
        if (pending) *pending = 0;
    } else {
        /* At the end of the feed the answer is the snapshot's update_seq, so an idle poll
         * returns the same value every time and clients do not rewrite checkpoints. */
        *last_seq = end ? (update_seq > cursor ? update_seq : cursor) : cursor;
        if (pending) *pending = end ? 0 : left;
    }
    return 0;
}

uint64_t mimeo_changes_wait(mimeo_db *db, uint64_t since, uint64_t timeout_ms) {
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += (time_t)(timeout_ms / 1000);
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&db->lock);
    while (db->meta.update_seq <= since && !db->deleted) {
        if (pthread_cond_timedwait(&db->changed, &db->lock, &deadline) == ETIMEDOUT) break;
    }
    uint64_t seq = db->meta.update_seq;
    pthread_mutex_unlock(&db->lock);
    return seq;
}

/* ---- _all_docs --------------------------------------------------------------------------- */

static int all_docs_row(buf *out, snap *sn, const char *id, size_t id_len, const db_doc *d,
                        const mimeo_all_docs_opts *o, bool keys_mode) {
    int64_t winner = revtree_winner(&d->tree);
    if (winner < 0) return MIMEO_ECORRUPT;
    bool deleted = d->tree.nodes[winner].flags & REVTREE_DELETED;
    int rc = buf_puts(out, "{\"id\":");
    if (!rc) rc = json_put_str(out, id, id_len);
    if (!rc) rc = buf_puts(out, ",\"key\":");
    if (!rc) rc = json_put_str(out, id, id_len);
    if (!rc) rc = buf_puts(out, ",\"value\":{\"rev\":\"");
    if (!rc) rc = db_rev_put(out, &d->tree.nodes[winner]);
    if (!rc) rc = buf_puts(out, deleted ? "\",\"deleted\":true}" : "\"}");
    if (!rc && o->include_docs) {
        if (deleted && keys_mode) {
            rc = buf_puts(out, ",\"doc\":null");
        } else {
            mimeo_get_opts go = {0};
            go.conflicts = o->conflicts;
            rc = buf_puts(out, ",\"doc\":");
            if (!rc) rc = db_doc_json(out, sn->txn, sn->t, sn->m.dbid, id, id_len, d, (uint32_t)winner, &go);
        }
    }
    return rc ? rc : buf_putc(out, '}');
}

static int all_docs_keys(mimeo_db *db, const mimeo_all_docs_opts *o, mimeo_row_fn fn, void *ctx,
                         mimeo_err *err) {
    rowpage page;
    if (rowpage_init(&page)) return db_err(err, MIMEO_ENOMEM);
    uint64_t limit = o->limit_zero ? 0 : o->limit ? o->limit : UINT64_MAX;
    size_t i = (size_t)(o->skip < o->key_count ? o->skip : o->key_count);
    uint64_t delivered = 0;
    int rc = 0;
    while (!rc && i < o->key_count && delivered < limit) {
        snap sn;
        rc = snap_begin(db, &sn, err);
        if (rc) break;
        rowpage_reset(&page);
        for (; i < o->key_count && page.count < PAGE_ROWS && delivered + page.count < limit && !rc; i++) {
            const char *id = o->descending ? o->keys[o->key_count - 1 - i] : o->keys[i];
            size_t len = o->descending ? o->key_lens[o->key_count - 1 - i] : o->key_lens[i];
            db_doc d;
            db_doc_init(&d);
            int lrc = is_local_id(id, len) ? MIMEO_ENOTFOUND
                                           : db_doc_load(sn.txn, sn.t, sn.m.dbid, id, len, &d);
            if (lrc == MIMEO_ENOTFOUND) {
                rc = buf_puts(&page.text, "{\"key\":");
                if (!rc) rc = json_put_str(&page.text, id, len);
                if (!rc) rc = buf_puts(&page.text, ",\"error\":\"not_found\"}");
            } else if (lrc) {
                rc = lrc;
            } else {
                rc = all_docs_row(&page.text, &sn, id, len, &d, o, true);
            }
            db_doc_destroy(&d);
            if (!rc) rowpage_end_row(&page);
        }
        snap_end(&sn);
        if (!rc) rc = rowpage_deliver(&page, fn, ctx);
        delivered += page.count;
    }
    rowpage_destroy(&page);
    return rc < 0 && rc != MIMEO_ENOTFOUND ? db_err(err, rc) : rc;
}

static int key_cmp(const char *a, size_t alen, const char *b, size_t blen) {
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c) return c;
    return alen < blen ? -1 : alen > blen;
}

int mimeo_all_docs(mimeo_db *db, const mimeo_all_docs_opts *o, mimeo_row_fn fn, void *ctx,
                   mimeo_err *err) {
    if (o->keys) return all_docs_keys(db, o, fn, ctx, err);
    rowpage page;
    if (rowpage_init(&page)) return db_err(err, MIMEO_ENOMEM);
    uint64_t limit = o->limit_zero ? 0 : o->limit ? o->limit : UINT64_MAX;
    uint64_t skip = o->skip, delivered = 0;
    buf from; /* the last id read; the next page starts after it */
    buf_init(&from, 0);
    bool started = false, end = false;
    int rc = 0;
    while (!rc && !end && delivered < limit) {
        snap sn;
        rc = snap_begin(db, &sn, err);
        if (rc) break;
        rowpage_reset(&page);
        /* Ids in exact order, of any length: the cursor hides the key layout (idkey.c). */
        db_doc_cursor dc;
        rc = db_doc_cursor_open(&dc, sn.txn, sn.t, sn.m.dbid, o->descending);
        if (!rc) rc = started ? db_doc_cursor_seek(&dc, from.data ? from.data : "", from.len, true)
                              : db_doc_cursor_seek(&dc, o->startkey, o->startkey_len, false);
        while (!rc && page.count < PAGE_ROWS && delivered + page.count < limit) {
            const char *id;
            size_t id_len;
            const unsigned char *rec;
            size_t rec_len;
            int crc = db_doc_cursor_next(&dc, &id, &id_len, &rec, &rec_len);
            if (crc == MIMEO_ENOTFOUND) { end = true; break; }
            if (crc) { rc = crc; break; }
            if (o->endkey) {
                int c = key_cmp(id, id_len, o->endkey, o->endkey_len);
                if (o->descending) c = -c;
                if (c > 0 || (c == 0 && !o->inclusive_end)) { end = true; break; }
            }
            buf_reset(&from);
            rc = buf_put(&from, id, id_len);
            started = true;
            db_doc d;
            db_doc_init(&d);
            if (!rc) rc = db_doc_decode(rec, rec_len, &d);
            if (!rc && !revtree_all_deleted(&d.tree)) {
                if (skip) {
                    skip--;
                } else {
                    rc = all_docs_row(&page.text, &sn, id, id_len, &d, o, false);
                    if (!rc) rowpage_end_row(&page);
                }
            }
            db_doc_destroy(&d);
        }
        db_doc_cursor_close(&dc);
        snap_end(&sn);
        if (!rc) rc = rowpage_deliver(&page, fn, ctx);
        delivered += page.count;
    }
    buf_destroy(&from);
    rowpage_destroy(&page);
    return rc < 0 && rc != MIMEO_ENOTFOUND ? db_err(err, rc) : rc;
}

/* ---- local documents --------------------------------------------------------------------- */

int mimeo_local_get(mimeo_db *db, const char *id, size_t id_len, char **json_out,
                    size_t *out_len, mimeo_err *err) {
    *json_out = NULL;
    *out_len = 0;
    if (id_len == 0 || id_len > STORE_ID_MAX - LOCAL_PREFIX_LEN) return db_err(err, MIMEO_ENOTFOUND);
    snap sn;
    int rc = snap_begin(db, &sn, err);
    if (rc) return rc;
    unsigned char key[STORE_KEY_MAX];
    MDB_val k = {store_key(key, sn.m.dbid, id, id_len), key}, v = {0, NULL};
    rc = store_err(mdb_get(sn.txn, sn.t->locals, &k, &v));
    buf out;
    buf_init(&out, 0);
    uint64_t counter = 0;
    const unsigned char *p = v.mv_data, *end = p ? p + v.mv_size : p;
    if (!rc) rc = varint_get(&p, end, &counter);
    if (!rc) rc = buf_puts(&out, "{\"_id\":");
    if (!rc) {
        buf full;
        buf_init(&full, 0);
        rc = buf_puts(&full, LOCAL_PREFIX);
        if (!rc) rc = buf_put(&full, id, id_len);
        if (!rc) rc = json_put_str(&out, full.data, full.len);
        buf_destroy(&full);
    }
    if (!rc) rc = buf_printf(&out, ",\"_rev\":\"0-%llu\"", (unsigned long long)counter);
    if (!rc && end - p > 2) {
        rc = buf_putc(&out, ',');
        if (!rc) rc = buf_put(&out, p + 1, (size_t)(end - p) - 2);
    }
    if (!rc) rc = buf_putc(&out, '}');
    snap_end(&sn);
    if (rc) db_err(err, rc);
    else *json_out = buf_detach(&out, out_len);
    buf_destroy(&out);
    return rc;
}
