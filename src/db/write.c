/* Writes: single documents, _bulk_docs, deletions, local documents and compaction.
 *
 * A write is split in two: the calling thread parses and validates everything it can
 * (JSON, ids, revs, _revisions) without touching the store, then one job on the writer
 * thread applies the whole request in the transaction it shares with the other requests of
 * its group. The reply is sent only after that group's commit is durable. */
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "att_int.h"
#include "db_int.h"

#define LOCAL_PREFIX "_local/"
#define LOCAL_PREFIX_LEN 7

typedef struct write_item {
    json_doc     doc;
    const char  *id;            /* borrowed: the URL's id, doc.id, or genid */
    size_t       id_len;
    char         genid[33];
    bool         local;         /* id names a _local document (id has the prefix stripped) */
    bool         has_rev;
    bool         ignore;        /* a replicated "N-" revision: answered, nothing written */
    uint64_t     rev_gen;
    char         rev_hash[REV_HASH_MAX + 1];
    size_t       rev_hash_len;
    /* new_edits=false: the revision path, newest first (hashes borrowed from doc) */
    uint64_t     path_start;
    uint32_t     path_count;
    const char **path_hashes;
    size_t      *path_lens;
    /* outcome */
    bool         rejected;      /* by validate_doc_update: not written, code kept */
    mimeo_err   *vdu;           /* the rejection (error points into it) */
    char        *vdu_reason;    /* its whole reason */
    int          code;
    const char  *error;
    const char  *reason;
    char         newrev[MIMEO_REV_MAX];
    /* The new revision's hash worked out on the calling thread for the parent the request
     * names (its _rev, or none), so the writer, which serves every request in turn, does
     * not spend the hash of each body; used only when the writer finds that same parent. */
    char         prehash[33];
    bool         prehashed;
    atomic_uchar hash_state;    /* HASH_*: which thread works out prehash (item_hash_claim) */
    att_set      atts;          /* its _attachments, read (src/db/att.c) */
    char         att_reason[MIMEO_ERR_REASON_MAX];
} write_item;

/* A write cursor that appends to one table while the job's keys go past its end. */
typedef struct table_tail {
    MDB_cursor *cur;
    bool        not_last;    /* a key was not past the end: plain puts for the rest */
    size_t      last_len;    /* docs only: the table's last key (0: the table is empty) */
    unsigned char last[STORE_KEY_MAX];
} table_tail;

/* A _bulk_docs whose write job starts while its body is still being parsed (bulk_stream
 * below): the parse publishes each item as it is ready, and the job and the hash helper
 * take them in order. */
typedef struct bulk_stream {
    atomic_size_t   ready;     /* items published so far */
    atomic_bool     done;      /* the parse is over: ready is final */
    atomic_bool     failed;    /* the request goes the unstreamed way: the job discards */
    pthread_mutex_t mu;
    pthread_cond_t  cv;
    bool            finished;  /* the job's group is committed or failed */
    int             rc;        /* its code */
} bulk_stream;

/* Whether item i exists. Streamed, it waits until the parse has published item i or ended
 * without it; a yield, not a sleep: the parse is at most a document ahead of the writer. */
static bool items_have(bulk_stream *st, size_t count, size_t i) {
    if (!st) return i < count;
    for (;;) {
        if (i < atomic_load_explicit(&st->ready, memory_order_acquire)) return true;
        if (atomic_load_explicit(&st->done, memory_order_acquire))
            return i < atomic_load_explicit(&st->ready, memory_order_acquire);
        sched_yield();
    }
}

typedef struct write_ctx {
    mimeo_db   *db;
    write_item *items;
    size_t      count;
    bulk_stream *stream;       /* NULL: all count items are there before the job runs */
    bool        new_edits;
    bool        all_or_nothing;
    buf         scratch;
    buf         att_body, att_rec; /* a revision's body with its attachments, and their record */
    /* valid while the job runs */
    MDB_txn            *txn;
    const store_tables *t;
    db_meta            *m;
    table_tail          bodies, seqs;  /* appends at the end of those tables (tail_put) */
    table_tail          docs;          /* new ids past the end of docs (docs_past_end) */
} write_ctx;

static void item_fail(write_item *it, int code, const char *error, const char *reason) {
    it->code = code;
    it->error = error;
    it->reason = reason;
}

static void item_destroy(write_item *it) {
    json_doc_destroy(&it->doc);
    att_set_destroy(&it->atts);
    free(it->path_hashes);
    free(it->path_lens);
    free(it->vdu);
    free(it->vdu_reason);
}

/* ---- validation (calling thread) ------------------------------------------------------ */

/* _revisions.start as CouchDB takes it: any integer; mimeo keeps 0 … 2^64-1. */
static bool revisions_start(const jval *v, uint64_t *out) {
    if (!v || v->type != JV_NUMBER || v->len == 0) return false;
    uint64_t g = 0;
    for (size_t i = 0; i < v->len; i++) {
        char ch = v->str[i];
        if (ch < '0' || ch > '9') return false;
        unsigned d = (unsigned)(ch - '0');
        if (g > (UINT64_MAX - d) / 10) return false;
        g = g * 10 + d;
    }
    *out = g;
    return true;
}

/* The revision path of a replicated write. ids holds at most _revs_limit items (the parser
 * dropped older ones: they would be stemmed at once). Ids that would fall below generation
 * 0 (start smaller than the count, which CouchDB stores) are dropped too. */
static int revisions_path(write_item *it, bool new_edits, mimeo_err *err) {
    const jval *r = it->doc.revisions;
    const jval *start = jval_get(r, "start"), *ids = jval_get(r, "ids");
    uint64_t s;
    if (!r || r->type != JV_OBJECT || !start || !revisions_start(start, &s)) {
        db_err_set(err, MIMEO_EDOCVALIDATION, "doc_validation", "_revisions.start isn't an integer.");
        return MIMEO_EDOCVALIDATION;
    }
    if (!ids || ids->type != JV_ARRAY || ids->count == 0) {
        db_err_set(err, MIMEO_EDOCVALIDATION, "doc_validation", "_revisions.ids isn't a array.");
        return MIMEO_EDOCVALIDATION;
    }
    size_t count = ids->count;
    if (s < UINT64_MAX && count > s + 1) count = (size_t)s + 1;
    const jval *newest = ids->items[0];
    if (!new_edits && newest->type == JV_STRING && newest->len == 0) {
        it->ignore = true; /* "N-" with no hash: CouchDB answers it and keeps nothing */
        return 0;
    }
    it->path_hashes = malloc(sizeof *it->path_hashes * count);
    it->path_lens = malloc(sizeof *it->path_lens * count);
    if (!it->path_hashes || !it->path_lens) return db_err(err, MIMEO_ENOMEM);
    for (size_t i = 0; i < count; i++) {
        jval *h = ids->items[i];
        char norm[REV_HASH_MAX + 1];
        size_t nlen;
        if (h->type != JV_STRING || rev_hash_check(h->str, h->len, norm, &nlen) != 0) {
            db_err_set(err, MIMEO_EDOCVALIDATION, "doc_validation", "RevId isn't a valid hexadecimal");
            return MIMEO_EDOCVALIDATION;
        }
        /* rev_hash_check may lowercase: keep the normalised text in the tree's string. */
        memcpy(h->str, norm, nlen);
        h->str[nlen] = 0;
        h->len = nlen;
        it->path_hashes[i] = h->str;
        it->path_lens[i] = nlen;
    }
    it->path_start = s;
    it->path_count = (uint32_t)count;
    return 0;
}

/* "N-" with nothing after the dash. */
static bool rev_bare_generation(const char *rev, size_t len) {
    if (len < 2 || rev[len - 1] != '-') return false;
    for (size_t i = 0; i + 1 < len; i++)
        if (rev[i] < '0' || rev[i] > '9') return false;
    return true;
}

/* Resolves id, rev and (for replicated writes) the revision path of a parsed document. */
static int item_prepare(mimeo_env *env, write_item *it, const char *url_id, size_t url_id_len,
                        const char *url_rev, bool new_edits, mimeo_err *err) {
    if (url_id) {
        it->id = url_id;
        it->id_len = url_id_len;
    } else if (it->doc.id) {
        it->id = it->doc.id;
        it->id_len = it->doc.id_len;
    } else {
        mimeo_uuid_next(env, it->genid);
        it->id = it->genid;
        it->id_len = 32;
    }
    int rc = db_docid_check(env, it->id, it->id_len, err);
    if (rc) return rc;
    if (it->id_len > LOCAL_PREFIX_LEN && memcmp(it->id, LOCAL_PREFIX, LOCAL_PREFIX_LEN) == 0) {
        it->local = true;
        it->id += LOCAL_PREFIX_LEN;
        it->id_len -= LOCAL_PREFIX_LEN;
    }

    const char *rev = it->doc.rev;
    size_t rev_len = it->doc.rev_len;
    if (url_rev) {
        size_t ulen = strlen(url_rev);
        if (rev && (rev_len != ulen || memcmp(rev, url_rev, ulen) != 0)) {
            db_err_set(err, MIMEO_EINVAL, "bad_request",
                       "Document rev from request body and query string have different values");
            return MIMEO_EINVAL;
        }
        rev = url_rev;
        rev_len = ulen;
    }
    if (rev && !new_edits && !it->local && !it->doc.revisions && rev_bare_generation(rev, rev_len)) {
        it->ignore = true; /* CouchDB 3.5 answers such a replicated write and keeps nothing */
        snprintf(it->newrev, sizeof it->newrev, "%.*s", (int)rev_len, rev);
        return 0;
    }
    if (rev) {
        /* Generation 0 exists in replicated histories ("0-x"), and can be edited. */
        if (rev_parse(rev, rev_len, true, &it->rev_gen, it->rev_hash, &it->rev_hash_len)) {
            db_err_set(err, MIMEO_EBADREV, "bad_request", "Invalid rev format");
            return MIMEO_EBADREV;
        }
        it->has_rev = true;
    }
    if (it->local) return 0;
    if (it->doc.revisions && (rc = revisions_path(it, new_edits, err))) return rc;
    if (it->ignore) return 0;
    if (!new_edits && !it->path_count) {
        if (!it->has_rev) {
            db_err_set(err, MIMEO_EINVAL, "bad_request",
                       "When `new_edits: false`, the document needs `_rev` or `_revisions` specified");
            return MIMEO_EINVAL;
        }
        it->path_hashes = malloc(sizeof *it->path_hashes);
        it->path_lens = malloc(sizeof *it->path_lens);
        if (!it->path_hashes || !it->path_lens) return db_err(err, MIMEO_ENOMEM);
        it->path_hashes[0] = it->rev_hash;
        it->path_lens[0] = it->rev_hash_len;
        it->path_start = it->rev_gen;
        it->path_count = 1;
    }
    return 0;
}

/* ---- revision hashes (calling thread, and a helper beside the writer) ----------------- */

enum { HASH_TODO, HASH_BUSY, HASH_DONE };

/* Interactive edits: the item's new revision hash for the parent its request names
 * (apply_doc checks that the parent is that one). Bodies that attachments rewrite are
 * hashed by the writer, which builds them. */
static void item_prehash(write_item *it, bool new_edits) {
    if (!new_edits || it->local || it->ignore || it->rejected || it->atts.present) return;
    char parent[MIMEO_REV_MAX] = "";
    if (it->has_rev) rev_format(parent, it->rev_gen, it->rev_hash, it->rev_hash_len);
    if (it->has_rev && !parent[0]) return;
    rev_hash_new(parent, strlen(parent), it->doc.deleted, it->doc.body.data, it->doc.body.len,
                 it->prehash);
    it->prehashed = true;
}

/* Works out the item's hash unless another thread has started it (then false). */
static bool item_hash_claim(write_item *it, bool new_edits) {
    unsigned char todo = HASH_TODO;
    if (!atomic_compare_exchange_strong_explicit(&it->hash_state, &todo, HASH_BUSY,
                                                 memory_order_acquire, memory_order_acquire))
        return false;
    item_prehash(it, new_edits);
    atomic_store_explicit(&it->hash_state, HASH_DONE, memory_order_release);
    return true;
}

/* The writer's side: whether it->prehash holds the hash. If the helper has not reached the
 * item the writer works it out itself; if the helper is on it, that is one hash to wait. */
static bool item_hash_ready(write_item *it, bool new_edits) {
    if (atomic_load_explicit(&it->hash_state, memory_order_acquire) != HASH_DONE &&
        !item_hash_claim(it, new_edits))
        while (atomic_load_explicit(&it->hash_state, memory_order_acquire) != HASH_DONE)
            sched_yield();
    return it->prehashed;
}

/* With one client, a batch's revision hashes (a third of its CPU while they were MD5) used
 * to run before the write job, the writer idle; now a helper thread hashes the items in
 * order while the writer applies them, which puts the machine's second core on it. A small
 * request hashes here first: a thread costs more than its hashes. */
#define HASH_HELPER_MIN   (64 * 1024)  /* body bytes to hash before a helper pays */
#define HASH_HELPER_ITEMS 16           /* and items: the writer waits for a lone big one */

typedef struct hash_helper {
    write_item *items;
    size_t      count;
    bulk_stream *stream;
    bool        new_edits;
    atomic_bool stop;                /* the write is over: the rest is not needed */
    bool        running;
    pthread_t   thread;
} hash_helper;

static void *hash_helper_main(void *arg) {
    hash_helper *h = arg;
    pthread_setname_np(pthread_self(), "mimeo-hash");   /* else it reads as the worker */
    for (size_t i = 0; !atomic_load_explicit(&h->stop, memory_order_relaxed) &&
                       items_have(h->stream, h->count, i); i++)
        (void)item_hash_claim(&h->items[i], h->new_edits);
    return NULL;
}

static void hashes_start(hash_helper *h, write_item *items, size_t count, bool new_edits) {
    h->items = items;
    h->count = count;
    h->stream = NULL;
    h->new_edits = new_edits;
    h->running = false;
    atomic_init(&h->stop, false);
    if (!new_edits) return;
    size_t bytes = 0;
    for (size_t i = 0; count >= HASH_HELPER_ITEMS && i < count && bytes < HASH_HELPER_MIN; i++)
        bytes += items[i].doc.body.len;
    if (bytes >= HASH_HELPER_MIN && pthread_create(&h->thread, NULL, hash_helper_main, h) == 0) {
        h->running = true;
        return;
    }
    for (size_t i = 0; i < count; i++) (void)item_hash_claim(&items[i], new_edits);
}

static void hashes_stop(hash_helper *h) {
    if (!h->running) return;
    atomic_store_explicit(&h->stop, true, memory_order_relaxed);
    pthread_join(h->thread, NULL);
    h->running = false;
}

/* ---- applying (writer thread) ------------------------------------------------------------ */

/* A database's body ids and update seqs only grow, so while it is the newest database in
 * those tables (the usual case for a bulk load) every put lands past the table's end:
 * MDB_APPEND then skips the descent from the root, and a full page is split by starting
 * the next one rather than by moving half of it. The first key that is not past the end
 * (another database's keys follow) sends the rest of the job to plain puts. The cursor is
 * closed before any delete in its table, so it never outlives a change it did not make. */
static void tail_close(table_tail *tl) {
    if (tl->cur) mdb_cursor_close(tl->cur);
    tl->cur = NULL;
}

static int tail_put(write_ctx *w, table_tail *tl, MDB_dbi dbi, MDB_val *k, MDB_val *v) {
    if (!tl->not_last) {
        int rc = tl->cur ? 0 : mdb_cursor_open(w->txn, dbi, &tl->cur);
        if (!rc) rc = mdb_cursor_put(tl->cur, k, v, MDB_APPEND);
        if (rc != MDB_KEYEXIST) return store_err(rc);
        tl->not_last = true;
        tail_close(tl);
    }
    return store_err(mdb_put(w->txn, dbi, k, v, 0));
}

/* Whether the docs key (a short id's) sorts after every key of the docs table: then the
 * document cannot exist, so its lookup is skipped and its record appended (ids that grow,
 * as a bulk load's often do). The first key that does not ends this for the job. */
static bool docs_past_end(write_ctx *w, const unsigned char *key, size_t len) {
    table_tail *tl = &w->docs;
    if (tl->not_last || !len) return false;
    if (!tl->cur) {
        MDB_val k, v;
        int rc = mdb_cursor_open(w->txn, w->t->docs, &tl->cur);
        if (!rc) rc = mdb_cursor_get(tl->cur, &k, &v, MDB_LAST);
        tl->last_len = 0;
        if (!rc && k.mv_size <= sizeof tl->last) {
            memcpy(tl->last, k.mv_data, k.mv_size);
            tl->last_len = k.mv_size;
        } else if (rc != MDB_NOTFOUND) {
            tail_close(tl);
            tl->not_last = true;
            return false;
        }
    }
    size_t n = len < tl->last_len ? len : tl->last_len;
    int c = memcmp(key, tl->last, n);
    if (tl->last_len && (c < 0 || (c == 0 && len <= tl->last_len))) {
        tail_close(tl);
        tl->not_last = true;
        return false;
    }
    return true;
}

typedef struct drop_ctx {
    write_ctx *w;
    int        rc;
} drop_ctx;

static void drop_body(void *arg, uint64_t body) {
    drop_ctx *d = arg;
    write_ctx *w = d->w;
    unsigned char key[16];
    MDB_val k = {store_key_u64(key, w->m->dbid, body), key}, v;
    if (mdb_get(w->txn, w->t->bodies, &k, &v) == 0) {
        w->m->size_active -= v.mv_size < w->m->size_active ? v.mv_size : w->m->size_active;
        tail_close(&w->bodies);
        int rc = mdb_del(w->txn, w->t->bodies, &k, NULL);
        if (rc && !d->rc) d->rc = store_err(rc);
    }
    /* Its attachments lose a reference in the same transaction (src/db/att.c). */
    int arc = att_refs_drop(w->txn, w->t, w->m->dbid, body);
    if (arc && !d->rc) d->rc = arc;
}

static int body_len(write_ctx *w, const revtree *t, int64_t node, size_t *len) {
    *len = 0;
    if (node < 0 || !(t->nodes[node].flags & REVTREE_HAS_BODY)) return 0;
    MDB_val v;
    int rc = db_body_get(w->txn, w->t, w->m->dbid, &t->nodes[node], &v);
    if (!rc) *len = v.mv_size;
    return rc;
}

enum { STATE_NONE, STATE_LIVE, STATE_DELETED };

static int tree_state(const revtree *t) {
    if (t->count == 0) return STATE_NONE;
    return revtree_all_deleted(t) ? STATE_DELETED : STATE_LIVE;
}

static int body_store(write_ctx *w, uint64_t body, const buf *b) {
    unsigned char key[16];
    MDB_val k = {store_key_u64(key, w->m->dbid, body), key}, v = {b->len, b->data};
    int rc = tail_put(w, &w->bodies, w->t->bodies, &k, &v);
    if (!rc) w->m->size_active += b->len;
    return rc;
}

/* The body of the new revision with its attachments (stubs resolved against src), in
 * w->att_body; *body is pointed at it. 1 when the item failed (missing_stub). */
static int apply_atts(write_ctx *w, write_item *it, const revtree_node *src, uint64_t gen,
                      const buf **body) {
    if (!it->atts.present) return 0;
    const char *bad = NULL;
    size_t bad_len = 0;
    int rc = att_build(w->txn, w->t, w->m->dbid, &it->atts, src, gen, !w->new_edits, *body,
                       &w->att_body, &w->att_rec, &bad, &bad_len);
    if (rc == MIMEO_EPRECONDITION) {
        snprintf(it->att_reason, sizeof it->att_reason, "Invalid attachment stub in %.*s for %.*s",
                 (int)(it->id_len > 80 ? 80 : it->id_len), it->id,
                 (int)(bad_len > 80 ? 80 : bad_len), bad);
        item_fail(it, MIMEO_EPRECONDITION, "missing_stub", it->att_reason);
        return 1;
    }
    if (!rc) *body = &w->att_body;
    return rc;
}

static int apply_doc(write_ctx *w, write_item *it) {
    db_meta *m = w->m;
    db_doc d;
    db_doc_init(&d);
    unsigned char dkey[STORE_KEY_MAX];
    MDB_val dk = {db_doc_key_short(dkey, m->dbid, it->id, it->id_len), dkey};
    bool past_end = docs_past_end(w, dkey, dk.mv_size);
    int rc = past_end ? 0 : db_doc_load(w->txn, w->t, m->dbid, it->id, it->id_len, &d);
    if (rc == MIMEO_ENOTFOUND) rc = 0;
    if (rc) goto out;

    int before = tree_state(&d.tree);
    size_t old_ext = 0;
    if (before == STATE_LIVE && (rc = body_len(w, &d.tree, revtree_winner(&d.tree), &old_ext)))
        goto out;
    const buf *body = &it->doc.body;
    const buf *stored = NULL;   /* the body this write stored under body_id, if any */
    uint64_t body_id = m->next_body;
    bool changed = false;
    uint32_t leaf;

    if (w->new_edits) {
        uint32_t parent = REVTREE_NONE;
        if (it->has_rev) {
            int64_t at = revtree_find(&d.tree, it->rev_gen, it->rev_hash, it->rev_hash_len);
            if (at < 0 || !revtree_is_leaf(&d.tree, (uint32_t)at)) {
                item_fail(it, MIMEO_ECONFLICT, "conflict", "Document update conflict.");
                goto out;
            }
            parent = (uint32_t)at;
        } else if (before == STATE_DELETED && it->doc.deleted) {
            /* Deleting what is already deleted adds nothing (CouchDB and PouchDB: 409). */
            item_fail(it, MIMEO_ECONFLICT, "conflict", "Document update conflict.");
            goto out;
        } else if (before == STATE_DELETED) {
            /* Recreating a deleted document continues from its winning tombstone, so the
             * new revision outranks every old branch. */
            parent = (uint32_t)revtree_winner(&d.tree);
        } else if (before == STATE_LIVE) {
            item_fail(it, MIMEO_ECONFLICT, "conflict", "Document update conflict.");
            goto out;
        }
        char parent_rev[MIMEO_REV_MAX] = "";
        if (parent != REVTREE_NONE) {
            const revtree_node *p = &d.tree.nodes[parent];
            rev_format(parent_rev, p->gen, p->hash, p->hash_len);
        }
        rc = apply_atts(w, it, parent != REVTREE_NONE ? &d.tree.nodes[parent] : NULL,
                        parent != REVTREE_NONE ? d.tree.nodes[parent].gen + 1 : 1, &body);
        if (rc) {
            if (rc > 0) rc = 0;
            goto out;
        }
        char hash[33];
        if (!it->atts.present && (parent != REVTREE_NONE) == it->has_rev &&
            item_hash_ready(it, w->new_edits))
            memcpy(hash, it->prehash, sizeof hash);
        else
            rev_hash_new(parent_rev, strlen(parent_rev), it->doc.deleted, body->data, body->len,
                         hash);
        uint8_t flags = REVTREE_HAS_BODY | (it->doc.deleted ? REVTREE_DELETED : 0);
        rc = revtree_add_child(&d.tree, parent, hash, 32, flags, body_id, &leaf);
        if (rc) goto out;
        m->next_body++;
        if ((rc = body_store(w, body_id, body))) goto out;
        stored = body;
        if (it->atts.present &&
            (rc = att_commit(w->txn, w->t, m->dbid, body_id, &it->atts, &w->att_rec)))
            goto out;
        changed = true;
    } else {
        revtree_path_in path = {
            .start = it->path_start,
            .hashes = it->path_hashes,
            .hash_lens = it->path_lens,
            .count = it->path_count,
            .leaf_flags = REVTREE_HAS_BODY | (it->doc.deleted ? REVTREE_DELETED : 0),
            .leaf_body = body_id,
        };
        revtree_outcome outcome;
        rc = revtree_merge(&d.tree, &path, &outcome, &leaf);
        if (rc) goto out;
        const revtree_node *n = &d.tree.nodes[leaf];
        if ((n->flags & REVTREE_HAS_BODY) && n->body == body_id) {
            /* Stubs keep the attachments of the nearest ancestor whose body is stored. */
            const revtree_node *src = NULL;
            for (uint32_t a = n->parent; a != REVTREE_NONE; a = d.tree.nodes[a].parent)
                if (d.tree.nodes[a].flags & REVTREE_HAS_BODY) {
                    src = &d.tree.nodes[a];
                    break;
                }
            rc = apply_atts(w, it, src, n->gen, &body);
            if (rc) {
                if (rc > 0) rc = 0;
                goto out;
            }
            m->next_body++;
            if ((rc = body_store(w, body_id, body))) goto out;
            stored = body;
            if (it->atts.present &&
                (rc = att_commit(w->txn, w->t, m->dbid, body_id, &it->atts, &w->att_rec)))
                goto out;
            changed = true;
        } else if (outcome != REVTREE_INTERNAL_NODE) {
            changed = true;
        }
    }
    rev_format(it->newrev, d.tree.nodes[leaf].gen, d.tree.nodes[leaf].hash,
               d.tree.nodes[leaf].hash_len);
    if (!changed) goto out; /* a replicated revision we already had: nothing to do */

    drop_ctx dc = {w, 0};
    rc = revtree_stem(&d.tree, m->revs_limit, drop_body, &dc);
    if (!rc) rc = dc.rc;
    if (rc) goto out;

    int after = tree_state(&d.tree);
    size_t new_ext = 0;
    if (after == STATE_LIVE) {
        /* Usually the winner is the body just stored: its length is known, no lookup. */
        int64_t win = revtree_winner(&d.tree);
        const revtree_node *wn = win >= 0 ? &d.tree.nodes[win] : NULL;
        if (stored && wn && (wn->flags & REVTREE_HAS_BODY) && wn->body == body_id)
            new_ext = stored->len;
        else if ((rc = body_len(w, &d.tree, win, &new_ext)))
            goto out;
    }
    if (before == STATE_LIVE) m->doc_count--;
    if (before == STATE_DELETED) m->del_count--;
    if (after == STATE_LIVE) m->doc_count++;
    if (after == STATE_DELETED) m->del_count++;
    m->size_external = m->size_external - (old_ext < m->size_external ? old_ext : m->size_external) + new_ext;

    /* The changes feed lists each document once, at its latest update. */
    unsigned char key[16];
    MDB_val k, v;
    if (d.seq) {
        k.mv_size = store_key_u64(key, m->dbid, d.seq);
        k.mv_data = key;
        tail_close(&w->seqs);
        rc = mdb_del(w->txn, w->t->seqs, &k, NULL);
        if (rc && rc != MDB_NOTFOUND) { rc = store_err(rc); goto out; }
        rc = 0;
    }
    d.seq = ++m->update_seq;
    k.mv_size = store_key_u64(key, m->dbid, d.seq);
    k.mv_data = key;
    v.mv_size = it->id_len;
    v.mv_data = (void *)it->id;
    if ((rc = tail_put(w, &w->seqs, w->t->seqs, &k, &v))) goto out;
    if (past_end) {
        rc = db_doc_append(w->docs.cur, &dk, &d, &w->scratch);
        if (!rc) {
            memcpy(w->docs.last, dkey, dk.mv_size);
            w->docs.last_len = dk.mv_size;
        }
        if (rc != MIMEO_EEXIST) goto out;
        tail_close(&w->docs);   /* not past the end after all: the usual way from now on */
        w->docs.not_last = true;
    }
    rc = db_doc_store(w->txn, w->t, m->dbid, it->id, it->id_len, &d, &w->scratch);
out:
    db_doc_destroy(&d);
    return rc;
}

/* _local documents: the latest body only, revisions "0-N", never in the changes feed. */
static int apply_local(write_ctx *w, write_item *it) {
    unsigned char key[STORE_KEY_MAX];
    MDB_val k = {store_key(key, w->m->dbid, it->id, it->id_len), key}, v;
    uint64_t counter = 0;
    int rc = mdb_get(w->txn, w->t->locals, &k, &v);
    bool exists = rc == 0;
    if (rc && rc != MDB_NOTFOUND) return store_err(rc);
    if (exists) {
        const unsigned char *p = v.mv_data;
        if ((rc = varint_get(&p, p + v.mv_size, &counter))) return rc;
    }
    char have[24];
    int have_len = snprintf(have, sizeof have, "%llu", (unsigned long long)counter);
    bool rev_matches = it->has_rev && it->rev_gen == 0 && (size_t)have_len == it->rev_hash_len &&
                       memcmp(have, it->rev_hash, it->rev_hash_len) == 0;
    /* PouchDB's rule (a stale rev conflicts) keeps two writers of one checkpoint honest;
     * CouchDB's replicator marks its checkpoint writes with _revisions and expects them to
     * pass unchecked, as CouchDB does; a delete without any rev is CouchDB's too. */
    bool checked = !it->doc.revisions && !(it->doc.deleted && !it->has_rev);
    if (it->doc.deleted) {
        if (!exists) {
            item_fail(it, MIMEO_ENOTFOUND, "not_found", "missing");
            return 0;
        }
        if (checked && !rev_matches) {
            item_fail(it, MIMEO_ECONFLICT, "conflict", "Document update conflict.");
            return 0;
        }
        rc = store_err(mdb_del(w->txn, w->t->locals, &k, NULL));
        if (!rc) snprintf(it->newrev, sizeof it->newrev, "0-0");
        return rc;
    }
    if (checked && exists && !rev_matches) {
        item_fail(it, MIMEO_ECONFLICT, "conflict", "Document update conflict.");
        return 0;
    }
    uint64_t next = counter + 1;
    if (it->has_rev && it->rev_gen == 0) {
        /* Continue from the writer's counter when it is ahead (CouchDB answers
         * supplied + 1). */
        char *end;
        unsigned long long supplied = strtoull(it->rev_hash, &end, 10);
        if (*end == 0 && supplied + 1 > next) next = supplied + 1;
    }
    buf_reset(&w->scratch);
    rc = buf_put_varint(&w->scratch, next);
    if (!rc) rc = buf_put(&w->scratch, it->doc.body.data, it->doc.body.len);
    if (rc) return rc;
    v.mv_size = w->scratch.len;
    v.mv_data = w->scratch.data;
    rc = store_err(mdb_put(w->txn, w->t->locals, &k, &v, 0));
    if (!rc) snprintf(it->newrev, sizeof it->newrev, "0-%llu", (unsigned long long)next);
    return rc;
}

static int job_write(MDB_txn *txn, void *arg) {
    write_ctx *w = arg;
    w->txn = txn;
    w->t = store_tables_get(w->db->env->store);
    w->m = db_stage(w->db);
    if (w->db->staged_gone) return MIMEO_ENOTFOUND;
    /* Counters are restored if this job fails: its group is then run again without it
     * (store.c), and the staged copy must not keep what this run added. */
    db_meta saved = *w->m;
    w->bodies.cur = w->seqs.cur = w->docs.cur = NULL;
    w->bodies.not_last = w->seqs.not_last = w->docs.not_last = false;
    int rc = 0;
    bool any_failed = false;
    for (size_t i = 0; !rc && items_have(w->stream, w->count, i); i++) {
        write_item *it = &w->items[i];
        if (it->rejected) {
            any_failed = true;
            continue;
        }
        it->code = 0;
        it->error = it->reason = NULL;
        if (it->ignore) continue;
        it->newrev[0] = 0;
        rc = it->local ? apply_local(w, it) : apply_doc(w, it);
        if (it->code) any_failed = true;
    }
    tail_close(&w->bodies);
    tail_close(&w->seqs);
    tail_close(&w->docs);
    if (!rc && any_failed && w->all_or_nothing) rc = MIMEO_EEXPECTATION;
    if (!rc && w->stream && atomic_load_explicit(&w->stream->failed, memory_order_acquire))
        rc = MIMEO_EINVAL;   /* discarded: the request is written again, unstreamed */
    if (rc) *w->m = saved;
    return rc;
}

static void write_bufs_init(write_ctx *w) {
    buf_init(&w->scratch, 0);
    buf_init(&w->att_body, 0);
    buf_init(&w->att_rec, 0);
}

static void write_bufs_destroy(write_ctx *w) {
    buf_destroy(&w->scratch);
    buf_destroy(&w->att_body);
    buf_destroy(&w->att_rec);
}

static int run_write(write_ctx *w) {
    write_bufs_init(w);
    int rc = store_write(w->db->env->store, job_write, w);
    write_bufs_destroy(w);
    return rc;
}

/* ---- public calls -------------------------------------------------------------------------- */

static int db_gone(mimeo_err *err) {
    db_err_set(err, MIMEO_ENOTFOUND, "not_found", "Database does not exist.");
    return MIMEO_ENOTFOUND;
}

/* newDoc as validate_doc_update sees it: the document as written, with _id, the _rev it
 * edits (or the replicated one), _revisions when replicated, _deleted when deleting. */
static int item_new_doc(const write_item *it, buf *out) {
    int rc = buf_puts(out, "{\"_id\":");
    if (!rc) rc = json_put_str(out, it->id, it->id_len);
    if (!rc && it->has_rev) {
        rc = buf_puts(out, ",\"_rev\":\"");
        if (!rc) rc = rev_put(out, it->rev_gen, it->rev_hash, it->rev_hash_len);
        if (!rc) rc = buf_putc(out, '"');
    }
    if (!rc && it->doc.revisions) {
        rc = buf_puts(out, ",\"_revisions\":");
        if (!rc) rc = json_put_jval(out, it->doc.revisions);
    }
    if (!rc && it->doc.deleted) rc = buf_puts(out, ",\"_deleted\":true");
    if (!rc && it->doc.attachments) {
        rc = buf_puts(out, ",\"_attachments\":");
        if (!rc) rc = json_put_jval(out, it->doc.attachments);
    }
    const buf *b = &it->doc.body;
    if (!rc && b->len > 2) rc = buf_putc(out, ',');
    if (!rc) rc = b->len > 2 ? buf_put(out, b->data + 1, b->len - 1) : buf_putc(out, '}');
    return rc;
}

/* Design documents are checked as CouchDB does before they are written (replicated ones
 * and deletions too: couch_db validates a design document's body on every update path; a
 * plain deletion's empty body passes). Other documents pay one prefix compare. */
static int check_ddocs(mimeo_db *db, write_item *items, size_t count) {
    for (size_t i = 0; i < count; i++) {
        write_item *it = &items[i];
        if (it->local || it->ignore || it->id_len < 8 ||
            memcmp(it->id, "_design/", 8) != 0)
            continue;
        mimeo_err e;
        char *reason = NULL;
        int rc = db_ddoc_check(db, it->doc.body.data, it->doc.body.len, &e, &reason);
        if (!rc) continue;
        if (rc == MIMEO_ENOMEM || (!reason && !(reason = strdup(e.reason)))) {
            free(reason);
            return MIMEO_ENOMEM;
        }
        if (!(it->vdu = malloc(sizeof *it->vdu))) {
            free(reason);
            return MIMEO_ENOMEM;
        }
        *it->vdu = e;
        it->vdu_reason = reason;
        it->rejected = true;
        item_fail(it, rc, it->vdu->error, it->vdu_reason);
    }
    return 0;
}

/* validate_doc_update on the calling thread, before the write job is queued: a rejected
 * item is marked and skipped by the job. Design documents are validated too; _local ones
 * never (CouchDB). */
static int validate_items(mimeo_db *db, write_item *items, size_t count,
                          const mimeo_user_ctx *user, mimeo_err *err) {
    int rc = check_ddocs(db, items, count);
    if (rc) return db_err(err, rc);
    db_vdu *v = NULL;
    rc = db_vdu_begin(db, user, &v);
    if (rc == MIMEO_ENOTFOUND) return db_gone(err);
    if (rc) return db_err(err, rc);
    if (!v) return 0;
    buf nd;
    buf_init(&nd, 0);
    for (size_t i = 0; i < count && !rc; i++) {
        write_item *it = &items[i];
        if (it->local || it->ignore || it->rejected) continue;
        buf_reset(&nd);
        if ((rc = item_new_doc(it, &nd))) break;
        mimeo_err e;
        int vrc = db_vdu_check(v, it->id, it->id_len, nd.data, nd.len, &e);
        if (!vrc) continue;
        if (!(it->vdu = malloc(sizeof *it->vdu))) {
            rc = MIMEO_ENOMEM;
            break;
        }
        *it->vdu = e;
        if (!(it->vdu_reason = strdup(db_vdu_reason(v)))) {
            rc = MIMEO_ENOMEM;
            break;
        }
        it->rejected = true;
        item_fail(it, vrc, it->vdu->error, it->vdu_reason);
    }
    buf_destroy(&nd);
    db_vdu_end(v);
    return rc ? db_err(err, rc) : 0;
}

/* The calling thread's part before the write job: validate_doc_update (and the design
 * document checks). A rejection is returned with err set. */
static int single_begin(mimeo_db *db, write_item *it, const mimeo_user_ctx *user,
                        mimeo_err *err) {
    int rc = it->local || it->ignore ? 0 : validate_items(db, it, 1, user, err);
    if (rc) return rc;
    if (it->rejected) {
        db_err_set(err, it->code, it->error, it->reason);
        return it->code;
    }
    return 0;
}

/* After the write job (rc is the store's code): the item's outcome into res or err.
 * crdt_hook runs the CRDT merge, which writes itself, so never on the writer thread. */
static int single_finish(mimeo_db *db, write_item *it, int rc, bool crdt_hook,
                         mimeo_put_result *res, mimeo_err *err) {
    if (rc == MIMEO_ENOTFOUND) return db_gone(err);
    if (rc) return db_err(err, rc);
    if (it->code) {
        db_err_set(err, it->code, it->error, it->reason);
        return it->code;
    }
    /* After the commit, on the caller's thread: a CRDT document left with several live
     * leaves is merged now (src/db/crdt.c). The write itself has succeeded whatever this
     * returns; the merge's own write comes back here, finds one leaf, and stops. */
    if (crdt_hook && !it->local) (void)mimeo_crdt_after_write(db, &it->id, &it->id_len, 1);
    if (res) {
        size_t plen = it->local ? LOCAL_PREFIX_LEN : 0;
        res->id = malloc(plen + it->id_len + 1);
        if (!res->id) return db_err(err, MIMEO_ENOMEM);
        memcpy(res->id, LOCAL_PREFIX, plen);
        memcpy(res->id + plen, it->id, it->id_len);
        res->id[plen + it->id_len] = 0;
        res->id_len = plen + it->id_len;
        memcpy(res->rev, it->newrev, sizeof res->rev);
    }
    return 0;
}

static int single_write(mimeo_db *db, write_item *it, bool new_edits,
                        const mimeo_user_ctx *user, mimeo_put_result *res, mimeo_err *err) {
    int rc = single_begin(db, it, user, err);
    if (rc) return rc;
    hash_helper h;
    hashes_start(&h, it, 1, new_edits);
    write_ctx w = {.db = db, .items = it, .count = 1, .new_edits = new_edits};
    rc = run_write(&w);
    hashes_stop(&h);
    return single_finish(db, it, rc, true, res, err);
}

/* A write to db reads no more _revisions ids than the database's _revs_limit keeps. */
static unsigned write_revs_limit(mimeo_db *db) {
    db_meta m;
    return db_meta_snapshot(db, &m) == 0 ? m.revs_limit : 0;
}

/* No id yet: what the caller frees when the write fails early. */
static void result_clear(mimeo_put_result *res) {
    if (res) {
        res->id = NULL;
        res->id_len = 0;
    }
}

/* A PUT's item: its body parsed, its id and rev checked, its attachments read. */
static int put_prepare(mimeo_db *db, write_item *it, const char *id, size_t id_len,
                       const char *json, size_t len, const mimeo_put_opts *opts,
                       mimeo_err *err) {
    json_error je;
    int rc = json_doc_parse_revs(json, len, &db->env->limits, write_revs_limit(db), &it->doc,
                                 &je);
    if (rc) return db_err_json(err, &je);
    bool new_edits = !(opts && opts->new_edits_false);
    rc = item_prepare(db->env, it, id, id_len, opts ? opts->rev : NULL, new_edits, err);
    if (!rc && !it->ignore)
        rc = att_prepare(db->env, it->doc.attachments, it->local, opts ? opts->atts : NULL,
                         opts ? opts->att_count : 0, NULL, &it->atts, err);
    return rc;
}

int mimeo_doc_put(mimeo_db *db, const char *id, size_t id_len, const char *json, size_t len,
                  const mimeo_put_opts *opts, mimeo_put_result *res, mimeo_err *err) {
    result_clear(res);
    write_item it;
    memset(&it, 0, sizeof it);
    int rc = put_prepare(db, &it, id, id_len, json, len, opts, err);
    bool new_edits = !(opts && opts->new_edits_false);
    if (!rc) rc = single_write(db, &it, new_edits || it.local, opts ? opts->user : NULL, res, err);
    item_destroy(&it);
    return rc;
}

int mimeo_doc_delete(mimeo_db *db, const char *id, size_t id_len, const char *rev,
                     mimeo_put_result *res, mimeo_err *err) {
    return mimeo_doc_delete_as(db, id, id_len, rev, NULL, res, err);
}

/* A deletion's item: an empty body with _deleted, the rev it ends. */
static int delete_prepare(mimeo_db *db, write_item *it, const char *id, size_t id_len,
                          const char *rev, mimeo_err *err) {
    buf_init(&it->doc.body, 0);
    int rc = buf_puts(&it->doc.body, "{}");
    it->doc.deleted = true;
    if (!rc) rc = item_prepare(db->env, it, id, id_len, rev, true, err);
    if (!rc && !it->has_rev && !it->local) {
        /* CouchDB: deleting without a rev is a conflict if the doc exists, 404 if not. */
        db_doc d;
        db_doc_init(&d);
        MDB_txn *txn;
        db_meta m;
        rc = db_meta_snapshot(db, &m);
        if (rc) rc = db_gone(err);
        else if (!(rc = store_read_begin(db->env->store, &txn))) {
            rc = db_doc_load(txn, store_tables_get(db->env->store), m.dbid, it->id, it->id_len, &d);
            store_read_end(db->env->store, txn);
            if (rc == 0) rc = revtree_all_deleted(&d.tree) ? MIMEO_EDELETED : MIMEO_ECONFLICT;
            db_err(err, rc);
        }
        db_doc_destroy(&d);
    }
    return rc;
}

int mimeo_doc_delete_as(mimeo_db *db, const char *id, size_t id_len, const char *rev,
                        const mimeo_user_ctx *user, mimeo_put_result *res, mimeo_err *err) {
    result_clear(res);
    write_item it;
    memset(&it, 0, sizeof it);
    int rc = delete_prepare(db, &it, id, id_len, rev, err);
    if (!rc) rc = single_write(db, &it, true, user, res, err);
    item_destroy(&it);
    return rc;
}

/* ---- without waiting ------------------------------------------------------------------------ */

/* One single-document write in flight: the caller's thread parses and validates it and works
 * out its revision hash, the writer applies and commits it, and the completion runs on the
 * writer thread, so that no thread waits for the commit. The item lives here, not on a stack:
 * its id may point into its own genid. */
typedef struct put_op {
    write_item        it;
    write_ctx         w;
    mimeo_put_done_fn done;
    void             *arg;
} put_op;

static put_op *put_op_new(mimeo_db *db, mimeo_put_done_fn done, void *arg) {
    put_op *op = calloc(1, sizeof *op);
    if (!op) return NULL;
    op->w.db = db;
    op->w.items = &op->it;
    op->w.count = 1;
    buf_init(&op->w.scratch, 0);
    buf_init(&op->w.att_body, 0);
    buf_init(&op->w.att_rec, 0);
    op->done = done;
    op->arg = arg;
    return op;
}

static void put_op_free(put_op *op) {
    buf_destroy(&op->w.scratch);
    buf_destroy(&op->w.att_body);
    buf_destroy(&op->w.att_rec);
    item_destroy(&op->it);
    free(op);
}

/* Hands the outcome to the caller's completion; rc is the write job's code. */
static void put_op_end(put_op *op, int rc, bool crdt_hook) {
    mimeo_put_result res = {0};
    mimeo_err err = {0};
    rc = single_finish(op->w.db, &op->it, rc, crdt_hook, &res, &err);
    op->done(op->arg, rc, &res, &err);
    free(res.id);
    put_op_free(op);
}

/* The store's completion: arg is the job's own argument, the op's write context. */
static void put_op_committed(void *arg, int rc) {
    put_op_end((put_op *)((char *)arg - offsetof(put_op, w)), rc, false);
}

/* Whether the database declares CRDT documents (_design/crdt): their merge after the write
 * writes again, which the writer thread cannot wait for. A _design/crdt created while a write is in flight is seen by the next
 * write of the document, whose hook then merges it. */
static bool crdt_declared(mimeo_db *db) {
    char *json = NULL;
    size_t len = 0;
    mimeo_err e;
    int rc = mimeo_doc_get(db, "_design/crdt", 12, NULL, &json, &len, &e);
    if (json) mimeo_free(json);
    return rc != MIMEO_ENOTFOUND && rc != MIMEO_EDELETED;
}

/* The prepared op from here on: validated, hashed, then queued; or written and finished on
 * this thread, waiting, when its completion would have to write (CRDT databases, attachment
 * blobs to discard) or when the store will not queue. */
static void put_op_submit(put_op *op, bool new_edits, const mimeo_user_ctx *user) {
    write_item *it = &op->it;
    mimeo_err err = {0};
    int rc = single_begin(op->w.db, it, user, &err);
    if (rc) {
        op->done(op->arg, rc, NULL, &err);
        put_op_free(op);
        return;
    }
    op->w.new_edits = new_edits;
    (void)item_hash_claim(it, new_edits);
    /* Attachment blobs it holds are discarded, when unused, by a write of their own. */
    if (it->atts.n || it->doc.attachments || (!it->local && crdt_declared(op->w.db))) {
        put_op_end(op, store_write(op->w.db->env->store, job_write, &op->w), true);
        return;
    }
    rc = store_write_async(op->w.db->env->store, job_write, put_op_committed, &op->w);
    if (rc) put_op_end(op, rc, false);
}

void mimeo_doc_put_async(mimeo_db *db, const char *id, size_t id_len, const char *json,
                         size_t len, const mimeo_put_opts *opts, mimeo_put_done_fn done,
                         void *arg) {
    mimeo_err err = {0};
    put_op *op = put_op_new(db, done, arg);
    if (!op) {
        done(arg, db_err(&err, MIMEO_ENOMEM), NULL, &err);
        return;
    }
    write_item *it = &op->it;
    int rc = put_prepare(db, it, id, id_len, json, len, opts, &err);
    if (rc) {
        done(arg, rc, NULL, &err);
        put_op_free(op);
        return;
    }
    bool new_edits = !(opts && opts->new_edits_false);
    put_op_submit(op, new_edits || it->local, opts ? opts->user : NULL);
}

void mimeo_doc_delete_async(mimeo_db *db, const char *id, size_t id_len, const char *rev,
                            const mimeo_user_ctx *user, mimeo_put_done_fn done, void *arg) {
    mimeo_err err = {0};
    put_op *op = put_op_new(db, done, arg);
    if (!op) {
        done(arg, db_err(&err, MIMEO_ENOMEM), NULL, &err);
        return;
    }
    int rc = delete_prepare(db, &op->it, id, id_len, rev, &err);
    if (rc) {
        done(arg, rc, NULL, &err);
        put_op_free(op);
        return;
    }
    put_op_submit(op, true, user);
}

int mimeo_local_put(mimeo_db *db, const char *id, size_t id_len, const char *json, size_t len,
                    const char *rev, mimeo_put_result *res, mimeo_err *err) {
    result_clear(res);
    char *full = malloc(LOCAL_PREFIX_LEN + id_len + 1);
    if (!full) return db_err(err, MIMEO_ENOMEM);
    memcpy(full, LOCAL_PREFIX, LOCAL_PREFIX_LEN);
    memcpy(full + LOCAL_PREFIX_LEN, id, id_len);
    full[LOCAL_PREFIX_LEN + id_len] = 0;
    mimeo_put_opts opts = {.rev = rev};
    int rc = mimeo_doc_put(db, full, LOCAL_PREFIX_LEN + id_len, json, len, &opts, res, err);
    free(full);
    return rc;
}

int mimeo_local_delete(mimeo_db *db, const char *id, size_t id_len, const char *rev,
                       mimeo_put_result *res, mimeo_err *err) {
    char *full = malloc(LOCAL_PREFIX_LEN + id_len + 1);
    if (!full) return db_err(err, MIMEO_ENOMEM);
    memcpy(full, LOCAL_PREFIX, LOCAL_PREFIX_LEN);
    memcpy(full + LOCAL_PREFIX_LEN, id, id_len);
    full[LOCAL_PREFIX_LEN + id_len] = 0;
    int rc = mimeo_doc_delete(db, full, LOCAL_PREFIX_LEN + id_len, rev, res, err);
    free(full);
    return rc;
}

/* The id as the client knows it: local ids get their prefix back. */
static int put_item_id(buf *out, const write_item *it) {
    if (!it->local) return json_put_str(out, it->id, it->id_len);
    buf full;
    buf_init(&full, 0);
    int rc = buf_puts(&full, LOCAL_PREFIX);
    if (!rc) rc = buf_put(&full, it->id, it->id_len);
    if (!rc) rc = json_put_str(out, full.data, full.len);
    buf_destroy(&full);
    return rc;
}

/* The reply's entries as structs (mimeo_bulk_docs_opts.entry_fn): the ones the JSON
 * reply would list, in its order. */
static int put_entries(const write_item *items, size_t count, bool new_edits, int rc,
                       const mimeo_bulk_docs_opts *opts) {
    buf id, rev;
    buf_init(&id, 0);
    buf_init(&rev, 0);
    int frc = 0;
    for (size_t i = 0; i < count && !frc; i++) {
        const write_item *it = &items[i];
        if ((!new_edits || rc == MIMEO_EEXPECTATION) && !it->code) continue;
        mimeo_bulk_entry e = {it->id, it->id_len, it->code, it->code ? NULL : it->newrev,
                              it->code ? it->error : NULL, it->code ? it->reason : NULL};
        buf_reset(&id);
        buf_reset(&rev);
        if (it->local) {
            frc = buf_puts(&id, LOCAL_PREFIX);
            if (!frc) frc = buf_put(&id, it->id, it->id_len);
            e.id = id.data;
            e.id_len = id.len;
        }
        if (!frc && it->code && it->has_rev && !new_edits) {
            frc = rev_put(&rev, it->rev_gen, it->rev_hash, it->rev_hash_len);
            e.rev = buf_cstr(&rev);
        }
        if (!frc) frc = opts->entry_fn(opts->entry_ctx, &e);
    }
    buf_destroy(&id);
    buf_destroy(&rev);
    return frc;
}

/* A _bulk_docs request's outcome, until its reply is taken: the waiting call makes one on
 * its stack, the asynchronous one on the heap (with what its write needs while queued). */
struct mimeo_bulk_result {
    json_bulk   bulk;
    write_item *items;     /* NULL when the request failed before its items existed */
    int         rc;        /* the call's code so far; err set when it is a failure */
    mimeo_err   err;
    /* mimeo_bulk_docs_async's write in flight */
    write_ctx          w;
    hash_helper        h;
    mimeo_bulk_done_fn done;
    void              *arg;
};

/* ---- _bulk_docs, streamed ------------------------------------------------------------------ */

/* One client's large _bulk_docs used to take its steps one after the other: the whole body
 * parsed, then the write job (hashes beside it), then the commit, the writer idle during
 * the parse and the parser idle during the job. Streamed, the job is queued once the first
 * documents are parsed and applies each one as the parse publishes it, so the parse, the
 * writer and the hash helper share the two cores. Taken only where it cannot change an
 * answer or hold up anyone: a big body, a writer with nothing else to do, no
 * validate_doc_update (JavaScript, run here per document before anything is written), and
 * no new_edits/all_or_nothing near the body's end (they would come after the documents).
 * Anything unusual on the way — a parse or item error, such a flag after all — discards
 * the job, which has not committed, and the request is done again the plain way, so every
 * answer is the unstreamed one. */
size_t db_bulk_stream_min_bytes = 256 * 1024;
static atomic_ulong bulk_streamed;
unsigned long db_bulk_streamed_count(void) { return atomic_load(&bulk_streamed); }

#define STREAM_START     16          /* documents parsed before the job is queued */
#define STREAM_TAIL      256         /* bytes at the end searched for the two flags */

typedef struct stream_ctx {
    mimeo_db    *db;
    write_ctx    w;
    bulk_stream  st;
    hash_helper  h;
    att_cache    cache;
    size_t       cap;       /* items allocated: more than the body can hold */
    size_t       taken;     /* items moved out of the parse (to destroy) */
    bool         queued;
    mimeo_err    err;       /* an item's error: the plain way will report it */
    /* mimeo_bulk_docs_async's request whose parse is over before its job: the job's
     * completion finishes it (guarded by st.mu) */
    mimeo_bulk_result *async;
} stream_ctx;

static int bulk_write_rc(int rc, mimeo_err *err);
static bool bulk_has_atts(const write_item *items, size_t count);

/* The streamed request's end once its job is over: what it used is released, and the items
 * go to res with the job's code. */
static void stream_end(stream_ctx *sc, mimeo_bulk_result *res) {
    hashes_stop(&sc->h);
    write_bufs_destroy(&sc->w);
    att_cache_destroy(&sc->cache);
    pthread_cond_destroy(&sc->st.cv);
    pthread_mutex_destroy(&sc->st.mu);
    res->items = sc->w.items;
    res->rc = sc->st.rc;
    free(sc);
    atomic_fetch_add(&bulk_streamed, 1);
}

static bool stream_eligible(mimeo_db *db, const char *json, size_t len,
                            const mimeo_bulk_docs_opts *opts) {
    if (len < db_bulk_stream_min_bytes || !store_write_idle(db->env->store)) return false;
    size_t tail = len < STREAM_TAIL ? len : STREAM_TAIL;
    const char *t = json + len - tail;
    if (memmem(t, tail, "\"new_edits\"", 11) || memmem(t, tail, "\"all_or_nothing\"", 16))
        return false;
    db_vdu *v = NULL;
    if (db_vdu_begin(db, opts ? opts->user : NULL, &v) != 0) return false;
    if (v) {
        db_vdu_end(v);
        return false;
    }
    return true;
}

static void stream_job_done(void *arg, int rc) {
    stream_ctx *sc = (stream_ctx *)((char *)arg - offsetof(stream_ctx, w));
    bulk_stream *st = &sc->st;
    pthread_mutex_lock(&st->mu);
    st->rc = rc;
    st->finished = true;
    mimeo_bulk_result *res = sc->async;
    pthread_cond_signal(&st->cv);
    pthread_mutex_unlock(&st->mu);   /* the waiting thread may free st from here on */
    if (!res) return;
    /* No thread waits: the request was handed over here (bulk_write_streamed). */
    stream_end(sc, res);
    res->rc = bulk_write_rc(res->rc, &res->err);
    res->done(res->arg, res);
}

static int stream_queue(stream_ctx *sc, const json_bulk *out) {
    write_ctx *w = &sc->w;
    w->new_edits = out->new_edits;
    w->all_or_nothing = out->all_or_nothing;
    write_bufs_init(w);
    hashes_start(&sc->h, w->items, 0, false);   /* nothing yet: the thread starts below */
    sc->h.stream = &sc->st;
    sc->h.new_edits = w->new_edits;
    if (w->new_edits && pthread_create(&sc->h.thread, NULL, hash_helper_main, &sc->h) == 0)
        sc->h.running = true;
    int rc = store_write_async(sc->db->env->store, job_write, stream_job_done, w);
    if (rc) {
        hashes_stop(&sc->h);
        write_bufs_destroy(w);
        return rc;
    }
    sc->queued = true;
    return 0;
}

static int stream_on_doc(void *arg, json_bulk *out, size_t i) {
    stream_ctx *sc = arg;
    if (i >= sc->cap) return MIMEO_EINVAL;
    write_item *it = &sc->w.items[i];
    it->doc = out->docs[i];
    memset(&out->docs[i], 0, sizeof out->docs[i]);
    sc->taken = i + 1;
    int rc = item_prepare(sc->db->env, it, NULL, 0, NULL, out->new_edits, &sc->err);
    if (!rc && !it->ignore)
        rc = att_prepare(sc->db->env, it->doc.attachments, it->local, NULL, 0, &sc->cache,
                         &it->atts, &sc->err);
    if (!rc) rc = check_ddocs(sc->db, it, 1);
    if (rc) return rc;
    atomic_store_explicit(&sc->st.ready, i + 1, memory_order_release);
    return i + 1 == STREAM_START ? stream_queue(sc, out) : 0;
}

/* 1 when the request must be done the plain way (nothing of it written); else 0 with
 * res->items and res->bulk filled as the plain way fills them (bulk.count items) and res->rc
 * the job's code. With async set (res from mimeo_bulk_docs_async) it may return 2 instead:
 * the job was still running when the parse ended and will finish the request and call
 * res->done itself (stream_job_done), so this thread does not wait for the commit. */
static int bulk_write_streamed(mimeo_db *db, const char *json, size_t len,
                               const json_limits *lim, const mimeo_bulk_docs_opts *opts,
                               mimeo_bulk_result *res, bool async) {
    json_bulk *bulk = &res->bulk;
    if (!stream_eligible(db, json, len, opts)) return 1;
    stream_ctx *sc = calloc(1, sizeof *sc);
    if (!sc) return 1;
    /* Every document starts with '{': their count bounds the documents. The array is
     * never moved (the writer reads it while the parse fills it); calloc maps a large one
     * lazily, so the bound costs address space, not memory. */
    size_t braces = 0;
    for (const char *q = json, *e = json + len; (q = memchr(q, '{', (size_t)(e - q))); q++)
        braces++;
    size_t max_docs = opts ? opts->max_docs : 0;
    sc->cap = max_docs && max_docs + 1 < braces ? max_docs + 1 : braces;
    sc->db = db;
    sc->w.db = db;
    sc->w.stream = &sc->st;
    sc->w.items = sc->cap ? calloc(sc->cap, sizeof *sc->w.items) : NULL;
    if (!sc->w.items || pthread_mutex_init(&sc->st.mu, NULL) != 0) {
        free(sc->w.items);
        free(sc);
        return 1;
    }
    if (pthread_cond_init(&sc->st.cv, NULL) != 0) {
        pthread_mutex_destroy(&sc->st.mu);
        free(sc->w.items);
        free(sc);
        return 1;
    }
    atomic_init(&sc->st.ready, 0);
    atomic_init(&sc->st.done, false);
    atomic_init(&sc->st.failed, false);
    json_error je;
    int prc = json_bulk_parse_stream(json, len, lim, write_revs_limit(db), max_docs,
                                     stream_on_doc, sc, bulk, &je);
    bool ok = prc == 0 && !bulk->flags_after_docs;
    if (ok && !sc->queued) ok = stream_queue(sc, bulk) == 0;   /* fewer than STREAM_START */
    if (sc->queued) {
        if (!ok) atomic_store_explicit(&sc->st.failed, true, memory_order_release);
        /* Attachments keep this thread waiting: see bulk_has_atts. */
        bool hand_over = ok && async && !bulk_has_atts(sc->w.items, sc->taken);
        pthread_mutex_lock(&sc->st.mu);
        atomic_store_explicit(&sc->st.done, true, memory_order_release);
        if (hand_over && !sc->st.finished) {
            sc->async = res;
            pthread_mutex_unlock(&sc->st.mu);
            return 2;   /* sc belongs to the job's completion from here on */
        }
        while (!sc->st.finished) pthread_cond_wait(&sc->st.cv, &sc->st.mu);
        pthread_mutex_unlock(&sc->st.mu);
    }
    if (ok) {
        stream_end(sc, res);
        return 0;
    }
    if (sc->queued) {
        hashes_stop(&sc->h);
        write_bufs_destroy(&sc->w);
    }
    att_cache_destroy(&sc->cache);
    pthread_cond_destroy(&sc->st.cv);
    pthread_mutex_destroy(&sc->st.mu);
    for (size_t i = 0; i < sc->taken; i++) item_destroy(&sc->w.items[i]);
    free(sc->w.items);
    json_bulk_destroy(bulk);
    free(sc);
    return 1;
}

/* The plain way's preparation: the whole body parsed, every item prepared and validated.
 * *items stays NULL when the request ends here (a parse error, no memory: err is set). */
static int bulk_prepare(mimeo_db *db, const char *json, size_t len, const json_limits *lim,
                        const mimeo_bulk_docs_opts *opts, json_bulk *bulk,
                        write_item **items_out, mimeo_err *err) {
    json_error je;
    int rc = json_bulk_parse_revs(json, len, lim, write_revs_limit(db),
                                  opts ? opts->max_docs : 0, bulk, &je);
    if (rc) return db_err_json(err, &je);
    write_item *items = calloc(bulk->count ? bulk->count : 1, sizeof *items);
    if (!items) {
        json_bulk_destroy(bulk);
        return db_err(err, MIMEO_ENOMEM);
    }
    *items_out = items;
    /* The items take over the parsed documents. */
    for (size_t i = 0; i < bulk->count; i++) {
        items[i].doc = bulk->docs[i];
        memset(&bulk->docs[i], 0, sizeof bulk->docs[i]);
    }
    att_cache cache = {0};
    for (size_t i = 0; i < bulk->count && !rc; i++) {
        rc = item_prepare(db->env, &items[i], NULL, 0, NULL, bulk->new_edits, err);
        if (!rc && !items[i].ignore)
            rc = att_prepare(db->env, items[i].doc.attachments, items[i].local, NULL, 0,
                             &cache, &items[i].atts, err);
    }
    att_cache_destroy(&cache);
    if (!rc && bulk->count)
        rc = validate_items(db, items, bulk->count, opts ? opts->user : NULL, err);
    return rc;
}

/* The write job's code as the call returns it (all_or_nothing's failure keeps its reply). */
static int bulk_write_rc(int rc, mimeo_err *err) {
    if (rc == MIMEO_ENOTFOUND) return db_gone(err);
    if (rc && rc != MIMEO_EEXPECTATION) db_err(err, rc);
    return rc;
}

/* The prepared items' write job, waited for. */
static int bulk_run(mimeo_db *db, write_item *items, const json_bulk *bulk, mimeo_err *err) {
    write_ctx w = {.db = db, .items = items, .count = bulk->count, .new_edits = bulk->new_edits,
                   .all_or_nothing = bulk->all_or_nothing};
    hash_helper h;
    hashes_start(&h, items, bulk->count, bulk->new_edits);
    int rc = run_write(&w);
    hashes_stop(&h);
    return bulk_write_rc(rc, err);
}

/* After a successful write, on the caller's thread (the merge writes): CRDT documents the
 * batch left with several live leaves are merged, replicated batches included. */
static void bulk_crdt_merge(mimeo_db *db, const write_item *items, size_t count) {
    const char **ids = malloc(count * sizeof *ids);
    size_t *lens = malloc(count * sizeof *lens);
    size_t n = 0;
    for (size_t i = 0; ids && lens && i < count; i++) {
        if (items[i].code || items[i].local) continue;
        ids[n] = items[i].id;
        lens[n++] = items[i].id_len;
    }
    if (ids && lens && n) (void)mimeo_crdt_after_write(db, ids, lens, n);
    free(ids);
    free(lens);
}

static void bulk_result_clear(mimeo_bulk_result *res) {
    for (size_t i = 0; res->items && i < res->bulk.count; i++) item_destroy(&res->items[i]);
    free(res->items);
    res->items = NULL;
    json_bulk_destroy(&res->bulk);
}

/* The reply of res (which keeps its items): the JSON array into *json_out, or each entry to
 * entry_fn when it is set. Returns the call's code, with err set on failure. */
static int bulk_reply(mimeo_bulk_result *res, int (*entry_fn)(void *, const mimeo_bulk_entry *),
                      void *entry_ctx, char **json_out, size_t *out_len, mimeo_err *err) {
    *json_out = NULL;
    *out_len = 0;
    int rc = res->rc;
    if (rc && rc != MIMEO_EEXPECTATION) {
        if (err) *err = res->err;
        return rc;
    }
    const write_item *items = res->items;
    const json_bulk *bulk = &res->bulk;
    if (entry_fn) {
        mimeo_bulk_docs_opts o = {.entry_fn = entry_fn, .entry_ctx = entry_ctx};
        int frc = put_entries(items, bulk->count, bulk->new_edits, rc, &o);
        if (frc) rc = frc;
        else if (rc == MIMEO_EEXPECTATION)
            db_err_set(err, rc, "expectation_failed", "Some documents failed; none were written.");
        return rc;
    }
    buf out;
    buf_init(&out, 0);
    int wrc = buf_putc(&out, '[');
    bool first = true;
    for (size_t i = 0; i < bulk->count && !wrc; i++) {
        const write_item *it = &items[i];
        /* new_edits=false answers only failures; a revision already present is not one. */
        if (!bulk->new_edits && !it->code) continue;
        if (rc == MIMEO_EEXPECTATION && !it->code) continue;
        if (!first) wrc = buf_putc(&out, ',');
        first = false;
        if (it->code) {
            if (!wrc) wrc = buf_puts(&out, "{\"id\":");
            if (!wrc) wrc = put_item_id(&out, it);
            if (!wrc && it->has_rev && !bulk->new_edits) {
                wrc = buf_puts(&out, ",\"rev\":\"");
                if (!wrc) wrc = rev_put(&out, it->rev_gen, it->rev_hash, it->rev_hash_len);
                if (!wrc) wrc = buf_putc(&out, '"');
            }
            if (!wrc) wrc = buf_puts(&out, ",\"error\":");
            if (!wrc) wrc = json_put_cstr(&out, it->error);
            if (!wrc) wrc = buf_puts(&out, ",\"reason\":");
            if (!wrc) wrc = json_put_cstr(&out, it->reason);
            if (!wrc) wrc = buf_putc(&out, '}');
        } else {
            if (!wrc) wrc = buf_puts(&out, "{\"ok\":true,\"id\":");
            if (!wrc) wrc = put_item_id(&out, it);
            if (!wrc) wrc = buf_puts(&out, ",\"rev\":");
            if (!wrc) wrc = json_put_cstr(&out, it->newrev);
            if (!wrc) wrc = buf_putc(&out, '}');
        }
    }
    if (!wrc) wrc = buf_putc(&out, ']');
    if (wrc) {
        rc = db_err(err, wrc);
    } else {
        *json_out = buf_detach(&out, out_len);
        if (rc == MIMEO_EEXPECTATION)
            db_err_set(err, rc, "expectation_failed", "Some documents failed; none were written.");
    }
    buf_destroy(&out);
    return rc;
}

int mimeo_bulk_docs(mimeo_db *db, const char *json, size_t len, char **json_out,
                    size_t *out_len, mimeo_err *err) {
    return mimeo_bulk_docs_as(db, json, len, NULL, json_out, out_len, err);
}

/* {"docs":[…]} wraps each document two levels deep: what PUT accepts, so must this. */
static json_limits bulk_limits(mimeo_db *db) {
    json_limits lim = db->env->limits;
    lim.max_depth += 2;
    return lim;
}

/* The waiting way: streamed when it may be, else plain; then the CRDT merge. */
static void bulk_write_waiting(mimeo_db *db, const char *json, size_t len,
                               const mimeo_bulk_docs_opts *opts, mimeo_bulk_result *res) {
    json_limits lim = bulk_limits(db);
    if (bulk_write_streamed(db, json, len, &lim, opts, res, false) == 0) {
        res->rc = bulk_write_rc(res->rc, &res->err);
    } else {
        res->rc = bulk_prepare(db, json, len, &lim, opts, &res->bulk, &res->items, &res->err);
        if (!res->rc && res->bulk.count) res->rc = bulk_run(db, res->items, &res->bulk, &res->err);
    }
    if (!res->rc && res->bulk.count) bulk_crdt_merge(db, res->items, res->bulk.count);
}

int mimeo_bulk_docs_as(mimeo_db *db, const char *json, size_t len,
                       const mimeo_bulk_docs_opts *opts, char **json_out, size_t *out_len,
                       mimeo_err *err) {
    mimeo_bulk_result res;
    memset(&res, 0, sizeof res);
    bulk_write_waiting(db, json, len, opts, &res);
    int rc = bulk_reply(&res, opts ? opts->entry_fn : NULL, opts ? opts->entry_ctx : NULL,
                        json_out, out_len, err);
    bulk_result_clear(&res);
    return rc;
}

/* ---- _bulk_docs without waiting --------------------------------------------------------------- */

/* The store's completion, on the writer thread: the hash helper (if any) stops, and the
 * caller gets the outcome. Nothing here writes or waits for a write. */
static void bulk_async_committed(void *arg, int rc) {
    mimeo_bulk_result *res = (mimeo_bulk_result *)((char *)arg - offsetof(mimeo_bulk_result, w));
    hashes_stop(&res->h);
    write_bufs_destroy(&res->w);
    res->rc = bulk_write_rc(rc, &res->err);
    res->done(res->arg, res);
}

/* Whether the items hold attachments: blobs that the result's release may discard with a
 * write of its own, which the writer thread (where the result may be released) cannot wait
 * for. */
static bool bulk_has_atts(const write_item *items, size_t count) {
    for (size_t i = 0; i < count; i++)
        if (items[i].atts.n || items[i].doc.attachments) return true;
    return false;
}

void mimeo_bulk_docs_async(mimeo_db *db, const char *json, size_t len,
                           const mimeo_bulk_docs_opts *opts, mimeo_bulk_done_fn done, void *arg) {
    mimeo_bulk_result *res = calloc(1, sizeof *res);
    if (!res) {
        done(arg, NULL);
        return;
    }
    res->done = done;
    res->arg = arg;
    /* A CRDT database is written the waiting way: the merge after the write writes
     * itself, which the writer thread (where the completion runs) cannot wait for. */
    if (crdt_declared(db)) {
        bulk_write_waiting(db, json, len, opts, res);
        done(arg, res);
        return;
    }
    json_limits lim = bulk_limits(db);
    /* A large body while the writer idles goes the streamed way: its job starts while the
     * parse goes on here; the job's completion finishes the request unless the parse ended
     * after it (then it is finished here). */
    int s = bulk_write_streamed(db, json, len, &lim, opts, res, true);
    if (s == 2) return;
    if (s == 0) {
        res->rc = bulk_write_rc(res->rc, &res->err);
        done(arg, res);
        return;
    }
    res->rc = bulk_prepare(db, json, len, &lim, opts, &res->bulk, &res->items, &res->err);
    if (res->rc || !res->bulk.count) {
        done(arg, res);
        return;
    }
    /* Attachments are written waiting, on this thread (see bulk_has_atts). */
    if (bulk_has_atts(res->items, res->bulk.count)) {
        res->rc = bulk_run(db, res->items, &res->bulk, &res->err);
        done(arg, res);
        return;
    }
    write_ctx *w = &res->w;
    *w = (write_ctx){.db = db, .items = res->items, .count = res->bulk.count,
                     .new_edits = res->bulk.new_edits,
                     .all_or_nothing = res->bulk.all_or_nothing};
    write_bufs_init(w);
    hashes_start(&res->h, res->items, res->bulk.count, res->bulk.new_edits);
    int rc = store_write_async(db->env->store, job_write, bulk_async_committed, w);
    if (rc) {
        hashes_stop(&res->h);
        write_bufs_destroy(w);
        res->rc = bulk_write_rc(rc, &res->err);
        done(arg, res);
    }
}

size_t mimeo_bulk_result_count(const mimeo_bulk_result *res) {
    return res && res->items ? res->bulk.count : 0;
}

int mimeo_bulk_result_take(mimeo_bulk_result *res, char **json_out, size_t *out_len,
                           mimeo_err *err) {
    *json_out = NULL;
    *out_len = 0;
    if (!res) return db_err(err, MIMEO_ENOMEM);
    int rc = bulk_reply(res, NULL, NULL, json_out, out_len, err);
    mimeo_bulk_result_free(res);
    return rc;
}

int mimeo_bulk_result_entries(mimeo_bulk_result *res,
                              int (*entry_fn)(void *ctx, const mimeo_bulk_entry *entry),
                              void *entry_ctx, mimeo_err *err) {
    if (!res) return db_err(err, MIMEO_ENOMEM);
    char *none = NULL;
    size_t none_len = 0;
    int rc = bulk_reply(res, entry_fn, entry_ctx, &none, &none_len, err);
    mimeo_bulk_result_free(res);
    return rc;
}

void mimeo_bulk_result_free(mimeo_bulk_result *res) {
    if (!res) return;
    bulk_result_clear(res);
    free(res);
}

/* ---- compaction ------------------------------------------------------------------------------ */

typedef struct compact_ctx {
    mimeo_db *db;
    buf       from;     /* the last raw docs key done by committed jobs (without dbid) */
    bool      started;
    bool      finished;
    buf       next_from; /* the same, as the running job leaves it (kept only on commit) */
    bool      next_started;
    bool      next_finished;
    buf       scratch;
} compact_ctx;

#define COMPACT_PAGE 1000

/* Compacts up to a page of documents per job, so a big database never holds the writer
 * (and every other database's writes) for long. It walks raw keys: their order does not
 * matter here, and a raw key names a document whatever its id's length (idkey.c). */
static int job_compact(MDB_txn *txn, void *arg) {
    compact_ctx *c = arg;
    const store_tables *t = store_tables_get(c->db->env->store);
    db_meta *m = db_stage(c->db);
    if (c->db->staged_gone) return MIMEO_ENOTFOUND;
    db_meta saved = *m;
    write_ctx w = {.db = c->db, .txn = txn, .t = t, .m = m};
    MDB_cursor *cur;
    int rc = store_err(mdb_cursor_open(txn, t->docs, &cur));
    if (rc) return rc;
    unsigned char key[STORE_KEY_MAX];
    MDB_val k = {store_key(key, m->dbid, c->from.data, c->from.len), key}, v;
    int mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    if (mrc == 0 && c->started && k.mv_size == 8 + c->from.len &&
        memcmp((char *)k.mv_data + 8, c->from.data, c->from.len) == 0)
        mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    unsigned done = 0;
    buf keys;
    buf_init(&keys, 0);
    /* First collect a page of keys, then rewrite them: a cursor must not be used across
     * puts to other keys of its table. Each key is length-prefixed. */
    while (!rc && mrc == 0 && done < COMPACT_PAGE && k.mv_size >= 8 &&
           be64_get(k.mv_data) == m->dbid) {
        uint32_t n = (uint32_t)k.mv_size;
        rc = buf_put(&keys, &n, sizeof n);
        if (!rc) rc = buf_put(&keys, k.mv_data, n);
        done++;
        mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    if (!rc && mrc != 0 && mrc != MDB_NOTFOUND) rc = store_err(mrc);
    const char *p = keys.data;
    buf_reset(&c->next_from);
    if (!rc) rc = buf_put(&c->next_from, c->from.data, c->from.len);
    c->next_started = c->started;
    for (unsigned i = 0; i < done && !rc; i++) {
        uint32_t n;
        memcpy(&n, p, sizeof n);
        MDB_val rk = {n, (void *)(p + sizeof n)};
        p += sizeof n + n;
        MDB_val rv;
        rc = store_err(mdb_get(txn, t->docs, &rk, &rv));
        const char *id = NULL;
        size_t id_len = 0;
        const unsigned char *rec = NULL;
        size_t rec_len = 0;
        if (!rc) rc = db_doc_record(&rk, &rv, &id, &id_len, &rec, &rec_len);
        db_doc d;
        db_doc_init(&d);
        if (!rc) rc = db_doc_decode(rec, rec_len, &d);
        if (!rc) {
            drop_ctx dc = {&w, 0};
            uint32_t before = 0;
            for (uint32_t j = 0; j < d.tree.count; j++)
                before += (d.tree.nodes[j].flags & REVTREE_HAS_BODY) != 0;
            /* id and rec point into the record, which deleting bodies may move: copy the id
             * before the tree changes anything. */
            buf idcopy;
            buf_init(&idcopy, 0);
            rc = buf_put(&idcopy, id, id_len);
            if (!rc) revtree_compact(&d.tree, drop_body, &dc);
            uint32_t after = 0;
            for (uint32_t j = 0; j < d.tree.count; j++)
                after += (d.tree.nodes[j].flags & REVTREE_HAS_BODY) != 0;
            if (!rc) rc = dc.rc;
            if (!rc && after != before)
                rc = db_doc_put_at(txn, t, &rk, idcopy.data, idcopy.len, &d, &c->scratch);
            buf_destroy(&idcopy);
        }
        db_doc_destroy(&d);
        if (!rc) {
            buf_reset(&c->next_from);
            rc = buf_put(&c->next_from, (const char *)rk.mv_data + 8, n - 8);
            c->next_started = true;
        }
    }
    buf_destroy(&keys);
    c->next_finished = !rc && done < COMPACT_PAGE;
    if (rc) *m = saved;
    return rc;
}

int mimeo_db_compact(mimeo_db *db, mimeo_err *err) {
    compact_ctx c = {.db = db};
    buf_init(&c.from, 0);
    buf_init(&c.next_from, 0);
    buf_init(&c.scratch, 0);
    int rc = 0;
    while (!rc && !c.finished) {
        rc = store_write(db->env->store, job_compact, &c);
        if (!rc) {
            buf tmp = c.from;
            c.from = c.next_from;
            c.next_from = tmp;
            c.started = c.next_started;
            c.finished = c.next_finished;
        }
    }
    buf_destroy(&c.from);
    buf_destroy(&c.next_from);
    buf_destroy(&c.scratch);
    if (rc == MIMEO_ENOTFOUND) return db_gone(err);
    return db_err(err, rc);
}
