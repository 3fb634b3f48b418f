/* Cursors: every read that yields more than one thing (the changes feed, _all_docs,
 * open_revs, _bulk_get, _revs_diff) as structured rows, and the JSON convenience calls of
 * mimeo.h built on them.
 *
 * A cursor fills a slice of rows inside one short read transaction and serves them from its
 * own buffer after the transaction ended. A slice is bounded by rows, bytes and entries
 * examined, so no request (a long skip, a run of tombstones, thousands of doc_ids or
 * _bulk_get entries) holds a snapshot open for long: an open snapshot blocks map growth. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "db_int.h"

#define SLICE_ROWS  256            /* rows per slice */
#define SLICE_BYTES (1u << 20)     /* row bytes per slice (at least one row) */
#define SLICE_SCAN  1024           /* entries examined per slice (skipped ones count) */
#define SLICE_ENTRIES 64           /* _bulk_get entries per slice */
#define LOCAL_PREFIX "_local/"
#define LOCAL_PREFIX_LEN 7

typedef enum {
    CUR_CHANGES, CUR_ALL_DOCS, CUR_KEYS, CUR_DOC, CUR_OPEN_REVS, CUR_BULK_GET, CUR_REVS_DIFF
} cur_kind;

/* A row of the slice as offsets into the slice's text (which moves as it grows). */
typedef struct crow {
    int      status;
    uint64_t seq;
    size_t   id_off, id_len;
    size_t   rev_off, rev_len;
    size_t   body_off, body_len;
    size_t   json_off, json_len;
    size_t   leaf_first, leaf_count;
    size_t   fol_first, fol_count;   /* into the cursor's fol */
    bool     deleted, has_rev, has_body, has_json;
} crow;

typedef struct cleaf {
    size_t off, len;
    bool   deleted;
} cleaf;

typedef struct seq_hit {
    uint64_t seq;
    size_t   idx;     /* index into doc_ids */
} seq_hit;

struct mimeo_cursor {
    mimeo_db           *db;
    cur_kind            kind;
    mimeo_changes_opts  co;
    mimeo_all_docs_opts ao;
    mimeo_get_opts      go;

    /* The slice. */
    buf       text;
    crow     *rows;
    size_t    nrows, rows_cap, next;
    cleaf    *leaves;
    size_t    nleaves, leaves_cap;
    uint32_t *scratch;
    size_t    scratch_cap;
    db_follows fol;       /* the follows attachments of the slice's documents */

    /* What was handed out last. */
    mimeo_row   out;
    mimeo_leaf *out_leaves;
    size_t      out_leaves_cap;
    mimeo_att_follow *out_fol;
    size_t      out_fol_cap;

    bool      end;        /* nothing more to read */
    uint64_t  limit;      /* rows allowed in all */
    uint64_t  taken;      /* rows put in slices so far */

    /* changes */
    uint64_t  pos;        /* ascending: last seq examined; descending: first seq not to show */
    uint64_t  last_seq, pending, update_seq;
    seq_hit  *hits;       /* doc_ids: the named documents' seqs, in feed order */
    size_t    nhits, hit_pos, collect_pos;
    bool      collected;
    uint64_t  collect_seq; /* update_seq of the first collecting snapshot */

    /* _all_docs */
    buf       from;       /* range mode: the last id examined */
    bool      started;
    uint64_t  skip_left;
    size_t    key_pos;    /* keys mode: next key index */

    /* bulk_get, revs_diff, open_revs */
    jval     *req;
    bool      req_flat;   /* req is one allocation (open_revs from a list, json_tree_parse_block),
                             not a tree */
    size_t    req_pos;
    const char *id;       /* open_revs: the document */
    size_t    id_len;
};

static bool is_local_id(const char *id, size_t n) {
    return n > LOCAL_PREFIX_LEN && memcmp(id, LOCAL_PREFIX, LOCAL_PREFIX_LEN) == 0;
}

static int key_cmp(const char *a, size_t alen, const char *b, size_t blen) {
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c) return c;
    return alen < blen ? -1 : alen > blen;
}

/* ---- slices ------------------------------------------------------------------------------ */

static void slice_reset(mimeo_cursor *c) {
    buf_reset(&c->text);
    c->nrows = c->next = c->nleaves = 0;
    db_follows_reset(&c->fol);
}

/* Frees the slice's storage once every row has been handed out: a feed waits for hours
 * between writes, and the next write is read again from the cursor's position anyway. */
static void slice_release(mimeo_cursor *c) {
    if (c->next < c->nrows) return;
    buf_destroy(&c->text);
    buf_init(&c->text, 0);
    free(c->rows);
    free(c->leaves);
    free(c->scratch);
    free(c->out_leaves);
    free(c->out_fol);
    c->rows = NULL;
    c->leaves = NULL;
    c->scratch = NULL;
    c->out_leaves = NULL;
    c->out_fol = NULL;
    c->rows_cap = c->leaves_cap = c->scratch_cap = c->out_leaves_cap = c->out_fol_cap = 0;
    c->nrows = c->next = c->nleaves = 0;
    db_follows_destroy(&c->fol);
    buf_init(&c->fol.text, 0);
    memset(&c->out, 0, sizeof c->out);
}

static bool slice_full(const mimeo_cursor *c) {
    return c->nrows >= SLICE_ROWS || c->text.len >= SLICE_BYTES;
}

static crow *row_add(mimeo_cursor *c) {
    if (c->nrows == c->rows_cap) {
        size_t cap = c->rows_cap ? c->rows_cap * 2 : 16;
        crow *r = realloc(c->rows, sizeof *r * cap);
        if (!r) return NULL;
        c->rows = r;
        c->rows_cap = cap;
    }
    crow *r = &c->rows[c->nrows++];
    memset(r, 0, sizeof *r);
    return r;
}

/* Appends n bytes and a NUL to the text; *off receives where they start. */
static int text_put(mimeo_cursor *c, const void *p, size_t n, size_t *off) {
    *off = c->text.len;
    int rc = buf_put(&c->text, p, n);
    return rc ? rc : buf_putc(&c->text, '\0');
}

static int text_rev(mimeo_cursor *c, const revtree_node *n, size_t *off, size_t *len) {
    *off = c->text.len;
    int rc = db_rev_put(&c->text, n);
    *len = c->text.len - *off;
    return rc ? rc : buf_putc(&c->text, '\0');
}

static int scratch_fit(mimeo_cursor *c, size_t n) {
    if (n <= c->scratch_cap) return 0;
    free(c->scratch);
    c->scratch_cap = n * 2;
    c->scratch = malloc(sizeof *c->scratch * c->scratch_cap);
    if (!c->scratch) {
        c->scratch_cap = 0;
        return MIMEO_ENOMEM;
    }
    return 0;
}

/* A row for document id as the feeds show it: its winner, the leaves when asked, and the
 * winner's body when asked. */
static int row_doc(mimeo_cursor *c, db_snap *sn, const char *id, size_t id_len, const db_doc *d,
                   bool want_leaves, bool want_body) {
    int64_t winner = revtree_winner(&d->tree);
    if (winner < 0) return MIMEO_ECORRUPT;
    const revtree_node *w = &d->tree.nodes[winner];
    crow *r = row_add(c);
    if (!r) return MIMEO_ENOMEM;
    r->seq = d->seq;
    r->deleted = w->flags & REVTREE_DELETED;
    r->has_rev = true;
    r->id_len = id_len;
    int rc = text_put(c, id, id_len, &r->id_off);
    if (!rc) rc = text_rev(c, w, &r->rev_off, &r->rev_len);
    if (!rc && want_leaves) {
        rc = scratch_fit(c, d->tree.count ? d->tree.count : 1);
        uint32_t n = rc ? 0 : revtree_leaves(&d->tree, c->scratch);
        if (!rc && c->nleaves + n > c->leaves_cap) {
            size_t cap = (c->nleaves + n) * 2;
            cleaf *l = realloc(c->leaves, sizeof *l * cap);
            if (!l) rc = MIMEO_ENOMEM;
            else { c->leaves = l; c->leaves_cap = cap; }
        }
        r->leaf_first = c->nleaves;
        for (uint32_t i = 0; i < n && !rc; i++) {
            cleaf *l = &c->leaves[c->nleaves++];
            const revtree_node *node = &d->tree.nodes[c->scratch[i]];
            l->deleted = node->flags & REVTREE_DELETED;
            rc = text_rev(c, node, &l->off, &l->len);
        }
        r->leaf_count = c->nleaves - r->leaf_first;
    }
    if (!rc && want_body) {
        MDB_val body;
        rc = db_body_get(sn->txn, sn->t, sn->m.dbid, w, &body);
        if (!rc) rc = text_put(c, body.mv_data, body.mv_size, &r->body_off);
        r->body_len = body.mv_size;
        r->has_body = true;
    }
    return rc;
}

/* ---- the changes feed ---------------------------------------------------------------------- */

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

/* Rows of the feed after seq pos in snapshot sn, the scan (cursor at the first of them, mrc
 * its get) only when it must. Every document, live or deleted, has one seq entry, distinct
 * and at most update_seq; when the documents are as many as update_seq (no document was
 * written twice, a deletion included: the shape of a first load or a replica filled by one
 * replication), the entries are exactly 1..update_seq and the count is a subtraction. The
 * subtraction is never below the true count, so a feed is never reported drained early. */
static uint64_t pending_after(const db_snap *sn, uint64_t pos, MDB_cursor *cur, MDB_val *k,
                              int mrc) {
    const db_meta *m = &sn->m;
    if (m->doc_count + m->del_count == m->update_seq)
        return m->update_seq > pos ? m->update_seq - pos : 0;
    return count_left(cur, k, mrc, m->dbid);
}

static bool changes_want_leaves(const mimeo_changes_opts *o) {
    return o->all_docs_style || (o->include_docs && o->conflicts);
}

/* limit=0: no rows, but the count of what is there (CouchDB's replicator reads `pending`
 * from limit=0 polls to show progress). */
static int fill_changes_none(mimeo_cursor *c, db_snap *sn) {
    const mimeo_changes_opts *o = &c->co;
    MDB_cursor *cur;
    int rc = store_err(mdb_cursor_open(sn->txn, sn->t->seqs, &cur));
    if (!rc) {
        unsigned char key[16];
        MDB_val k = {store_key_u64(key, sn->m.dbid, c->pos + 1), key}, v;
        int mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        c->pending = o->descending ? 0 : pending_after(sn, c->pos, cur, &k, mrc);
        mdb_cursor_close(cur);
    }
    c->last_seq = o->descending ? sn->m.update_seq
                                : sn->m.update_seq > c->pos ? c->pos : sn->m.update_seq;
    c->end = true;
    return rc;
}

static int fill_changes_scan(mimeo_cursor *c, db_snap *sn) {
    const mimeo_changes_opts *o = &c->co;
    c->update_seq = sn->m.update_seq;
    MDB_cursor *cur;
    int rc = store_err(mdb_cursor_open(sn->txn, sn->t->seqs, &cur));
    if (rc) return rc;
    unsigned char key[16];
    MDB_val k, v;
    int mrc;
    if (o->descending) {
        /* Start below `pos`: seek to it (or, at first, to the next database's first key)
         * and step back; never walk other databases' keys. */
        k.mv_size = c->pos == UINT64_MAX ? store_key_u64(key, sn->m.dbid + 1, 0)
                                         : store_key_u64(key, sn->m.dbid, c->pos);
        k.mv_data = key;
        mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        if (mrc == MDB_NOTFOUND) mrc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
        else if (mrc == 0) mrc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
    } else {
        k.mv_size = store_key_u64(key, sn->m.dbid, c->pos + 1);
        k.mv_data = key;
        mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    }
    bool exhausted = false;
    bool leaves = changes_want_leaves(o);
    for (;;) {
        if (mrc != 0 || k.mv_size != 16 || be64_get(k.mv_data) != sn->m.dbid) {
            exhausted = true;
            break;
        }
        if (slice_full(c) || c->taken >= c->limit) break;
        uint64_t seq = be64_get((unsigned char *)k.mv_data + 8);
        db_doc d;
        db_doc_init(&d);
        rc = db_doc_load(sn->txn, sn->t, sn->m.dbid, v.mv_data, v.mv_size, &d);
        if (!rc) rc = row_doc(c, sn, v.mv_data, v.mv_size, &d, leaves, o->include_docs);
        db_doc_destroy(&d);
        if (rc) break;
        c->taken++;
        c->pos = seq;
        mrc = mdb_cursor_get(cur, &k, &v, o->descending ? MDB_PREV : MDB_NEXT);
    }
    if (!rc && mrc != 0 && mrc != MDB_NOTFOUND) rc = store_err(mrc);
    if (!rc) {
        bool limited = c->taken >= c->limit && !exhausted;
        if (o->descending) {
            c->pending = 0;
            c->last_seq = c->taken ? c->pos : sn->m.update_seq;
        } else if (exhausted) {
            /* At the end of the feed the answer is the snapshot's update_seq, so an idle
             * poll returns the same value every time and clients do not rewrite
             * checkpoints. */
            c->last_seq = sn->m.update_seq > c->pos ? sn->m.update_seq : c->pos;
            c->pending = 0;
        } else {
            c->last_seq = c->pos;
            if (limited) c->pending = pending_after(sn, c->pos, cur, &k, mrc);
        }
        if (exhausted || limited) c->end = true;
    }
    mdb_cursor_close(cur);
    return rc;
}

static int seq_hit_cmp(const void *a, const void *b) {
    uint64_t x = ((const seq_hit *)a)->seq, y = ((const seq_hit *)b)->seq;
    return x < y ? -1 : x > y;
}

/* filter=_doc_ids: the named documents are looked up (a slice of ids per snapshot) instead
 * of scanning the feed, then shown in seq order. The feed shows the state as of the first
 * collecting snapshot: a document that changed later is left for the next poll, which
 * starts after that snapshot's update_seq. */
static int fill_changes_ids(mimeo_cursor *c, db_snap *sn) {
    const mimeo_changes_opts *o = &c->co;
    int rc = 0;
    if (!c->collected) {
        if (c->collect_pos == 0) {
            c->collect_seq = sn->m.update_seq;
            c->nhits = c->hit_pos = 0;
        }
        size_t stop = c->collect_pos + SLICE_SCAN;
        for (; c->collect_pos < o->doc_id_count && c->collect_pos < stop && !rc; c->collect_pos++) {
            size_t i = c->collect_pos;
            db_doc d;
            db_doc_init(&d);
            int lrc = db_doc_load(sn->txn, sn->t, sn->m.dbid, o->doc_ids[i], o->doc_id_lens[i], &d);
            if (lrc == 0) {
                bool show = d.seq <= c->collect_seq &&
                            (o->descending ? d.seq < c->pos : d.seq > c->pos);
                if (show) {
                    c->hits[c->nhits].seq = d.seq;
                    c->hits[c->nhits].idx = i;
                    c->nhits++;
                }
            } else if (lrc != MIMEO_ENOTFOUND) {
                rc = lrc;
            }
            db_doc_destroy(&d);
        }
        if (rc || c->collect_pos < o->doc_id_count) return rc;
        qsort(c->hits, c->nhits, sizeof *c->hits, seq_hit_cmp);
        /* The same id named twice: one row. */
        size_t k = 0;
        for (size_t i = 0; i < c->nhits; i++)
            if (k == 0 || c->hits[k - 1].seq != c->hits[i].seq) c->hits[k++] = c->hits[i];
        c->nhits = k;
        if (o->descending) {
            for (size_t i = 0; i < c->nhits / 2; i++) {
                seq_hit tmp = c->hits[i];
                c->hits[i] = c->hits[c->nhits - 1 - i];
                c->hits[c->nhits - 1 - i] = tmp;
            }
        }
        c->collected = true;
        return 0;
    }
    bool leaves = changes_want_leaves(o);
    size_t examined = 0;
    while (c->hit_pos < c->nhits && !slice_full(c) && c->taken < c->limit &&
           examined++ < SLICE_SCAN && !rc) {
        const seq_hit *h = &c->hits[c->hit_pos];
        db_doc d;
        db_doc_init(&d);
        int lrc = db_doc_load(sn->txn, sn->t, sn->m.dbid, o->doc_ids[h->idx], o->doc_id_lens[h->idx], &d);
        if (lrc == 0 && d.seq == h->seq) {
            rc = row_doc(c, sn, o->doc_ids[h->idx], o->doc_id_lens[h->idx], &d, leaves, o->include_docs);
            if (!rc) {
                c->taken++;
                c->pos = h->seq;
            }
        } else if (lrc && lrc != MIMEO_ENOTFOUND) {
            rc = lrc;
        }
        db_doc_destroy(&d);
        if (!rc) c->hit_pos++;
    }
    if (rc) return rc;
    bool cut = c->taken >= c->limit && c->hit_pos < c->nhits;
    if (c->hit_pos >= c->nhits || cut) {
        c->end = true;
        c->pending = c->nhits - c->hit_pos;
        if (cut || (o->descending && c->taken)) c->last_seq = c->pos;
        else c->last_seq = c->collect_seq > c->pos || o->descending ? c->collect_seq : c->pos;
    } else {
        c->last_seq = c->pos;
    }
    return 0;
}

static int fill_changes(mimeo_cursor *c, db_snap *sn) {
    if (c->limit == 0) return fill_changes_none(c, sn);
    if (c->co.doc_ids) return fill_changes_ids(c, sn);
    return fill_changes_scan(c, sn);
}

/* ---- _all_docs ------------------------------------------------------------------------------- */

static int fill_all_docs(mimeo_cursor *c, db_snap *sn) {
    const mimeo_all_docs_opts *o = &c->ao;
    /* Ids in exact byte order whatever their length: db_doc_cursor hides the key layout of
     * long ids (idkey.c), so a startkey of any length is compared whole. */
    db_doc_cursor dc;
    int rc = db_doc_cursor_open(&dc, sn->txn, sn->t, sn->m.dbid, o->descending);
    if (rc) return rc;
    if (c->started) rc = db_doc_cursor_seek(&dc, c->from.data ? c->from.data : "", c->from.len, true);
    else rc = db_doc_cursor_seek(&dc, o->startkey, o->startkey_len, false);
    size_t examined = 0;
    while (!rc && !slice_full(c) && c->taken < c->limit && examined++ < SLICE_SCAN) {
        const char *id;
        size_t id_len;
        const unsigned char *rec;
        size_t rec_len;
        int crc = db_doc_cursor_next(&dc, &id, &id_len, &rec, &rec_len);
        if (crc == MIMEO_ENOTFOUND) { c->end = true; break; }
        if (crc) { rc = crc; break; }
        if (o->endkey) {
            int cmp = key_cmp(id, id_len, o->endkey, o->endkey_len);
            if (o->descending) cmp = -cmp;
            if (cmp > 0 || (cmp == 0 && !o->inclusive_end)) { c->end = true; break; }
        }
        buf_reset(&c->from);
        rc = buf_put(&c->from, id, id_len);
        if (rc) break;
        c->started = true;
        db_doc d;
        db_doc_init(&d);
        rc = db_doc_decode(rec, rec_len, &d);
        if (!rc && !revtree_all_deleted(&d.tree)) {
            if (c->skip_left) {
                c->skip_left--;
            } else {
                rc = row_doc(c, sn, id, id_len, &d, o->include_docs && o->conflicts, o->include_docs);
                if (!rc) c->taken++;
            }
        }
        db_doc_destroy(&d);
    }
    if (c->taken >= c->limit) c->end = true;
    db_doc_cursor_close(&dc);
    return rc;
}

static int fill_keys(mimeo_cursor *c, db_snap *sn) {
    const mimeo_all_docs_opts *o = &c->ao;
    int rc = 0;
    while (c->key_pos < o->key_count && !slice_full(c) && c->taken < c->limit && !rc) {
        /* descending reverses the whole list of keys, not a slice of it. */
        size_t i = o->descending ? o->key_count - 1 - c->key_pos : c->key_pos;
        const char *id = o->keys[i];
        size_t len = o->key_lens[i];
        db_doc d;
        db_doc_init(&d);
        int lrc = is_local_id(id, len) ? MIMEO_ENOTFOUND
                                       : db_doc_load(sn->txn, sn->t, sn->m.dbid, id, len, &d);
        if (lrc == MIMEO_ENOTFOUND) {
            crow *r = row_add(c);
            if (!r) rc = MIMEO_ENOMEM;
            else {
                r->status = MIMEO_ENOTFOUND;
                r->id_len = len;
                rc = text_put(c, id, len, &r->id_off);
            }
        } else if (lrc) {
            rc = lrc;
        } else {
            int64_t w = revtree_winner(&d.tree);
            bool deleted = w >= 0 && (d.tree.nodes[w].flags & REVTREE_DELETED);
            /* CouchDB answers "doc":null for a deleted key. */
            rc = row_doc(c, sn, id, len, &d, o->include_docs && o->conflicts && !deleted,
                         o->include_docs && !deleted);
        }
        db_doc_destroy(&d);
        if (!rc) {
            c->taken++;
            c->key_pos++;
        }
    }
    if (c->key_pos >= o->key_count || c->taken >= c->limit) c->end = true;
    return rc;
}

/* ---- open_revs and _bulk_get --------------------------------------------------------------- */

/* Called for each revision asked of one document: node < 0 means missing (rev names it). */
typedef int (*entry_fn)(mimeo_cursor *c, db_snap *sn, const char *id, size_t id_len,
                        const db_doc *d, int64_t node, const char *rev, size_t rev_len,
                        void *arg);

/* Visits the requested revisions of one doc (revs NULL: every leaf). With latest, a named
 * revision that is not a leaf stands for the leaves below it, and each leaf is visited once
 * however many named revisions lead to it. */
static int doc_revs_each(mimeo_cursor *c, db_snap *sn, const char *id, size_t id_len,
                         const jval *revs, bool latest, bool *found, entry_fn fn, void *arg) {
    db_doc d;
    db_doc_init(&d);
    int rc = db_doc_load(sn->txn, sn->t, sn->m.dbid, id, id_len, &d);
    *found = rc == 0;
    if (rc == MIMEO_ENOTFOUND) rc = 0;
    uint32_t *idx = NULL;
    unsigned char *seen = NULL;
    size_t n_nodes = d.tree.count ? d.tree.count : 1;
    if (!rc) {
        idx = malloc(sizeof *idx * n_nodes);
        seen = calloc(n_nodes, 1);
        if (!idx || !seen) rc = MIMEO_ENOMEM;
    }
    if (!rc && !revs) {
        uint32_t n = revtree_leaves(&d.tree, idx);
        for (uint32_t i = 0; i < n && !rc; i++) rc = fn(c, sn, id, id_len, &d, idx[i], NULL, 0, arg);
    } else if (!rc) {
        for (size_t i = 0; i < revs->count && !rc; i++) {
            const jval *r = revs->items[i];
            int64_t node = -1;
            if (r->type != JV_STRING || db_find_rev(&d.tree, r->str, r->len, &node)) {
                rc = MIMEO_EBADREV;
                break;
            }
            if (node >= 0 && latest) {
                uint32_t n = revtree_leaves_under(&d.tree, (uint32_t)node, idx);
                for (uint32_t j = 0; j < n && !rc; j++) {
                    if (seen[idx[j]]) continue;
                    seen[idx[j]] = 1;
                    rc = fn(c, sn, id, id_len, &d, idx[j], NULL, 0, arg);
                }
                continue;
            }
            if (node >= 0 && !(d.tree.nodes[node].flags & REVTREE_HAS_BODY)) node = -1;
            rc = fn(c, sn, id, id_len, &d, node, r->str, r->len, arg);
        }
    }
    free(seen);
    free(idx);
    db_doc_destroy(&d);
    return rc;
}

/* open_revs: one row per revision. */
static int open_revs_entry(mimeo_cursor *c, db_snap *sn, const char *id, size_t id_len,
                           const db_doc *d, int64_t node, const char *rev, size_t rev_len,
                           void *arg) {
    (void)arg;
    crow *r = row_add(c);
    if (!r) return MIMEO_ENOMEM;
    r->id_len = id_len;
    r->seq = d->seq;
    int rc = text_put(c, id, id_len, &r->id_off);
    if (rc) return rc;
    if (node < 0) {
        r->status = MIMEO_ENOTFOUND;
        r->has_rev = true;
        r->rev_len = rev_len;
        return text_put(c, rev, rev_len, &r->rev_off);
    }
    const revtree_node *n = &d->tree.nodes[node];
    r->has_rev = true;
    r->deleted = n->flags & REVTREE_DELETED;
    rc = text_rev(c, n, &r->rev_off, &r->rev_len);
    r->json_off = c->text.len;
    r->fol_first = c->fol.n;
    if (!rc) rc = db_doc_json(&c->text, sn->txn, sn->t, sn->m.dbid, id, id_len, d, (uint32_t)node,
                              &c->go, &c->fol);
    r->fol_count = c->fol.n - r->fol_first;
    r->json_len = c->text.len - r->json_off;
    r->has_json = true;
    return rc ? rc : buf_putc(&c->text, '\0');
}

static int fill_open_revs(mimeo_cursor *c, db_snap *sn) {
    bool found;
    int rc = doc_revs_each(c, sn, c->id, c->id_len, c->req, c->go.latest, &found,
                           open_revs_entry, NULL);
    if (!rc && !c->req && !found) rc = MIMEO_ENOTFOUND;
    c->end = true;
    return rc;
}

typedef struct bulk_arg {
    bool first;
} bulk_arg;

static int bulk_get_entry(mimeo_cursor *c, db_snap *sn, const char *id, size_t id_len,
                          const db_doc *d, int64_t node, const char *rev, size_t rev_len,
                          void *arg) {
    bulk_arg *a = arg;
    buf *out = &c->text;
    int rc = a->first ? 0 : buf_putc(out, ',');
    a->first = false;
    if (rc) return rc;
    if (node < 0) {
        /* PouchDB and CouchDB's replicator both need this nested error shape. */
        rc = buf_puts(out, "{\"error\":{\"id\":");
        if (!rc) rc = json_put_str(out, id, id_len);
        if (!rc) rc = buf_puts(out, ",\"rev\":");
        if (!rc) rc = json_put_str(out, rev, rev_len);
        return rc ? rc : buf_puts(out, ",\"error\":\"not_found\",\"reason\":\"missing\"}}");
    }
    rc = buf_puts(out, "{\"ok\":");
    if (!rc) rc = db_doc_json(out, sn->txn, sn->t, sn->m.dbid, id, id_len, d, (uint32_t)node,
                              &c->go, NULL);
    return rc ? rc : buf_putc(out, '}');
}

static int bulk_error(buf *out, const jval *id, const char *rev, size_t rev_len,
                      const char *error, const char *reason) {
    int rc = buf_puts(out, "{\"error\":{\"id\":");
    if (!rc) rc = id && id->type == JV_STRING ? json_put_str(out, id->str, id->len)
                                              : buf_puts(out, "null");
    if (!rc) rc = buf_puts(out, ",\"rev\":");
    if (!rc) rc = rev ? json_put_str(out, rev, rev_len) : buf_puts(out, "null");
    if (!rc) rc = buf_puts(out, ",\"error\":");
    if (!rc) rc = json_put_cstr(out, error);
    if (!rc) rc = buf_puts(out, ",\"reason\":");
    if (!rc) rc = json_put_cstr(out, reason);
    return rc ? rc : buf_puts(out, "}}");
}

static int fill_bulk_get(mimeo_cursor *c, db_snap *sn) {
    const jval *docs = jval_get(c->req, "docs");
    int rc = 0;
    size_t stop = c->req_pos + SLICE_ENTRIES;
    for (; c->req_pos < docs->count && c->req_pos < stop && !slice_full(c) && !rc; c->req_pos++) {
        const jval *e = docs->items[c->req_pos];
        const jval *id = jval_get(e, "id"), *rev = jval_get(e, "rev");
        crow *r = row_add(c);
        if (!r) return MIMEO_ENOMEM;
        bool good = id && id->type == JV_STRING && (!rev || rev->type == JV_STRING);
        if (id && id->type == JV_STRING) {
            r->id_len = id->len;
            rc = text_put(c, id->str, id->len, &r->id_off);
        } else {
            rc = text_put(c, "", 0, &r->id_off);
        }
        if (rc) break;
        buf *out = &c->text;
        r->json_off = out->len;
        r->has_json = true;
        rc = buf_puts(out, "{\"id\":");
        if (!rc) rc = good || (id && id->type == JV_STRING) ? json_put_str(out, id->str, id->len)
                                                            : buf_puts(out, "null");
        if (!rc) rc = buf_puts(out, ",\"docs\":[");
        if (rc) break;
        if (!good) {
            rc = bulk_error(out, id, NULL, 0, "bad_request",
                            "Each entry needs a string `id` and an optional string `rev`.");
        } else {
            /* One revision per entry: wrap it as a one-element list. */
            jval one = {.type = JV_ARRAY, .count = 1, .items = (jval **)&rev};
            bulk_arg a = {true};
            bool found;
            size_t mark = out->len;
            /* The entry's atts_since (§3.4) applies to this entry only. */
            const jval *since = jval_get(e, "atts_since");
            const char **since_list = NULL;
            mimeo_get_opts saved = c->go;
            if (since && since->type == JV_ARRAY && since->count) {
                since_list = calloc(since->count, sizeof *since_list);
                if (!since_list) return MIMEO_ENOMEM;
                for (size_t k = 0; k < since->count; k++)
                    if (since->items[k]->type == JV_STRING) since_list[k] = since->items[k]->str;
                c->go.atts_since = since_list;
                c->go.atts_since_count = since->count;
            }
            rc = doc_revs_each(c, sn, id->str, id->len, rev ? &one : NULL, c->go.latest, &found,
                               bulk_get_entry, &a);
            c->go = saved;
            free(since_list);
            if (rc == MIMEO_EBADREV) {
                out->len = mark;
                rc = bulk_error(out, id, rev->str, rev->len, "bad_request", "Invalid rev format");
            } else if (!rc && !rev && !found) {
                rc = bulk_error(out, id, "undefined", 9, "not_found", "missing");
            }
        }
        if (!rc) rc = buf_puts(out, "]}");
        r->json_len = out->len - r->json_off;
        if (!rc) rc = buf_putc(out, '\0');
    }
    if (c->req_pos >= docs->count) c->end = true;
    return rc;
}

/* ---- _revs_diff ------------------------------------------------------------------------------ */

static int fill_revs_diff(mimeo_cursor *c, db_snap *sn) {
    const jval *req = c->req;
    int rc = 0;
    size_t stop = c->req_pos + SLICE_SCAN;
    for (; c->req_pos < req->count && c->req_pos < stop && !slice_full(c) && !rc; c->req_pos++) {
        const jval *revs = req->items[c->req_pos];
        const char *id = req->keys[c->req_pos];
        size_t id_len = req->key_lens[c->req_pos];
        db_doc d;
        db_doc_init(&d);
        rc = db_doc_load(sn->txn, sn->t, sn->m.dbid, id, id_len, &d);
        if (rc == MIMEO_ENOTFOUND) rc = 0;
        size_t nmissing = 0;
        uint64_t max_missing_gen = 0;
        buf *out = &c->text;
        size_t mark = out->len;
        crow *r = NULL;
        for (size_t j = 0; j < revs->count && !rc; j++) {
            const jval *rv = revs->items[j];
            uint64_t gen;
            char hash[REV_HASH_MAX + 1];
            size_t hash_len;
            if (rv->type != JV_STRING || rev_parse(rv->str, rv->len, true, &gen, hash, &hash_len)) {
                rc = MIMEO_EBADREV;
                break;
            }
            if (revtree_find(&d.tree, gen, hash, hash_len) >= 0) continue;
            if (nmissing++ == 0) {
                r = row_add(c);
                if (!r) { rc = MIMEO_ENOMEM; break; }
                r->id_len = id_len;
                rc = text_put(c, id, id_len, &r->id_off);
                r->json_off = out->len;
                r->has_json = true;
                if (!rc) rc = json_put_str(out, id, id_len);
                if (!rc) rc = buf_puts(out, ":{\"missing\":[");
            } else {
                rc = buf_putc(out, ',');
            }
            if (!rc) rc = buf_putc(out, '"');
            if (!rc) rc = rev_put(out, gen, hash, hash_len);
            if (!rc) rc = buf_putc(out, '"');
            if (gen > max_missing_gen) max_missing_gen = gen;
        }
        if (!rc && nmissing) {
            rc = buf_putc(out, ']');
            /* Leaves older than what is missing may be its ancestors: CouchDB's replicator
             * passes them as atts_since so unchanged attachments are not sent again. */
            if (!rc) rc = scratch_fit(c, d.tree.count ? d.tree.count : 1);
            uint32_t n = rc ? 0 : revtree_leaves(&d.tree, c->scratch), k = 0;
            for (uint32_t j = 0; j < n && !rc; j++) {
                const revtree_node *leaf = &d.tree.nodes[c->scratch[j]];
                if (leaf->gen >= max_missing_gen) continue;
                rc = buf_puts(out, k++ ? ",\"" : ",\"possible_ancestors\":[\"");
                if (!rc) rc = db_rev_put(out, leaf);
                if (!rc) rc = buf_putc(out, '"');
            }
            if (!rc && k) rc = buf_putc(out, ']');
            if (!rc) rc = buf_putc(out, '}');
            r->json_len = out->len - r->json_off;
            if (!rc) rc = buf_putc(out, '\0');
            /* The missing revisions once more as the row's leaves, so that callers (the
             * local replication endpoint) need not parse the member back. */
            r->leaf_first = c->nleaves;
            for (size_t j = 0; j < revs->count && !rc; j++) {
                const jval *rv = revs->items[j];
                uint64_t gen;
                char hash[REV_HASH_MAX + 1];
                size_t hash_len;
                rev_parse(rv->str, rv->len, true, &gen, hash, &hash_len);
                if (revtree_find(&d.tree, gen, hash, hash_len) >= 0) continue;
                if (c->nleaves == c->leaves_cap) {
                    size_t cap = c->leaves_cap ? c->leaves_cap * 2 : 64;
                    cleaf *l = realloc(c->leaves, sizeof *l * cap);
                    if (!l) { rc = MIMEO_ENOMEM; break; }
                    c->leaves = l;
                    c->leaves_cap = cap;
                }
                cleaf *l = &c->leaves[c->nleaves++];
                l->deleted = false;
                l->off = out->len;
                rc = rev_put(out, gen, hash, hash_len);
                l->len = out->len - l->off;
                if (!rc) rc = buf_putc(out, '\0');
            }
            r->leaf_count = c->nleaves - r->leaf_first;
        } else if (rc) {
            out->len = mark;
        }
        db_doc_destroy(&d);
        if (rc) break;
    }
    if (c->req_pos >= req->count) c->end = true;
    return rc;
}

/* ---- the cursor -------------------------------------------------------------------------------- */

static mimeo_cursor *cursor_new(mimeo_db *db, cur_kind kind) {
    mimeo_cursor *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->db = db;
    c->kind = kind;
    c->limit = UINT64_MAX;
    buf_init(&c->text, 0);
    buf_init(&c->from, 0);
    buf_init(&c->fol.text, 0);
    return c;
}

void mimeo_cursor_close(mimeo_cursor *c) {
    if (!c) return;
    buf_destroy(&c->text);
    buf_destroy(&c->from);
    free(c->rows);
    free(c->leaves);
    free(c->scratch);
    free(c->out_leaves);
    free(c->out_fol);
    db_follows_destroy(&c->fol);
    free(c->hits);
    if (c->req_flat) free(c->req);
    else jval_free(c->req);
    free(c);
}

/* Reads the next slice in a snapshot of its own. */
static int cursor_fill(mimeo_cursor *c, mimeo_err *err) {
    slice_reset(c);
    db_snap sn;
    int rc = db_snap_begin(c->db, &sn, err);
    if (rc) return rc;
    switch (c->kind) {
    case CUR_CHANGES:   rc = fill_changes(c, &sn); break;
    case CUR_ALL_DOCS:  rc = fill_all_docs(c, &sn); break;
    case CUR_KEYS:      rc = fill_keys(c, &sn); break;
    case CUR_OPEN_REVS: rc = fill_open_revs(c, &sn); break;
    case CUR_BULK_GET:  rc = fill_bulk_get(c, &sn); break;
    case CUR_REVS_DIFF: rc = fill_revs_diff(c, &sn); break;
    case CUR_DOC:       c->end = true; break;
    }
    db_snap_end(&sn);
    if (rc) {
        slice_reset(c);
        if (rc == MIMEO_EBADREV) db_err_set(err, rc, "bad_request", "Invalid rev format");
        else db_err(err, rc);
    }
    return rc;
}

int mimeo_cursor_next(mimeo_cursor *c, const mimeo_row **row, mimeo_err *err) {
    *row = NULL;
    while (c->next >= c->nrows) {
        if (c->end) return 0;
        int rc = cursor_fill(c, err);
        if (rc) return rc;
    }
    const crow *r = &c->rows[c->next++];
    const char *t = c->text.data;
    mimeo_row *o = &c->out;
    memset(o, 0, sizeof *o);
    o->status = r->status;
    o->seq = r->seq;
    o->id = t + r->id_off;
    o->id_len = r->id_len;
    o->deleted = r->deleted;
    if (r->has_rev) {
        o->rev = t + r->rev_off;
        o->rev_len = r->rev_len;
    }
    if (r->has_body) {
        o->body = t + r->body_off;
        o->body_len = r->body_len;
    }
    if (r->has_json) {
        o->json = t + r->json_off;
        o->json_len = r->json_len;
    }
    if (r->leaf_count) {
        if (r->leaf_count > c->out_leaves_cap) {
            free(c->out_leaves);
            c->out_leaves_cap = r->leaf_count * 2;
            c->out_leaves = malloc(sizeof *c->out_leaves * c->out_leaves_cap);
            if (!c->out_leaves) {
                c->out_leaves_cap = 0;
                return db_err(err, MIMEO_ENOMEM);
            }
        }
        for (size_t i = 0; i < r->leaf_count; i++) {
            const cleaf *l = &c->leaves[r->leaf_first + i];
            c->out_leaves[i] = (mimeo_leaf){t + l->off, l->len, l->deleted};
        }
        o->leaves = c->out_leaves;
        o->leaf_count = r->leaf_count;
    }
    if (r->fol_count) {
        if (ARRAY_GROW(c->out_fol, c->out_fol_cap, r->fol_count)) return db_err(err, MIMEO_ENOMEM);
        const char *ft = c->fol.text.data;
        for (size_t i = 0; i < r->fol_count; i++) {
            const db_follow *f = &c->fol.v[r->fol_first + i];
            c->out_fol[i] = (mimeo_att_follow){ft + f->name_off, f->name_len, ft + f->type_off,
                                               f->type_len, f->length, f->stored, f->gzip};
        }
        o->follows = c->out_fol;
        o->follow_count = r->fol_count;
    }
    *row = o;
    return 0;
}

uint64_t mimeo_cursor_last_seq(const mimeo_cursor *c) { return c->last_seq; }
uint64_t mimeo_cursor_pending(const mimeo_cursor *c) { return c->pending; }

int mimeo_cursor_wait(mimeo_cursor *c, uint64_t timeout_ms) {
    if (c->kind != CUR_CHANGES || c->co.descending) return MIMEO_EINVAL;
    slice_release(c);
    mimeo_db *db = c->db;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += (time_t)(timeout_ms / 1000);
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&db->lock);
    while (db->meta.update_seq <= c->last_seq && !db->deleted) {
        if (pthread_cond_timedwait(&db->changed, &db->lock, &deadline) == ETIMEDOUT) break;
    }
    bool gone = db->deleted, more = db->meta.update_seq > c->last_seq;
    pthread_mutex_unlock(&db->lock);
    /* A recreated database under the same name is another database: this feed is over. */
    db_meta cur;
    if (!gone && db_meta_snapshot(db, &cur) != 0) gone = true;
    if (gone) return MIMEO_ENOTFOUND;
    if (!more) return 0;
    if (c->end && c->taken < c->limit) {
        c->end = false;
        c->pos = c->last_seq;
        c->collected = false;
        c->collect_pos = 0;
    }
    return 1;
}

/* Tokens: "s<seq>" (changes), "i<hex of the last id>" or "i" (range), "k<index>" (keys). */
int mimeo_cursor_token(const mimeo_cursor *c, char **token, size_t *len) {
    buf b;
    buf_init(&b, 0);
    int rc = 0;
    switch (c->kind) {
    case CUR_CHANGES:
        rc = buf_printf(&b, "s%llu", (unsigned long long)c->pos);
        break;
    case CUR_ALL_DOCS:
        rc = buf_putc(&b, 'i');
        if (!rc && c->started) {
            rc = buf_reserve(&b, c->from.len * 2 + 1);
            if (!rc) {
                hex_encode((const unsigned char *)c->from.data, c->from.len, b.data + b.len);
                b.len += c->from.len * 2;
            }
        }
        break;
    case CUR_KEYS:
        rc = buf_printf(&b, "k%zu", c->key_pos);
        break;
    default:
        rc = MIMEO_EINVAL;
    }
    if (!rc) rc = buf_putc(&b, '\0');
    if (rc) {
        buf_destroy(&b);
        *token = NULL;
        if (len) *len = 0;
        return rc;
    }
    size_t n;
    *token = buf_detach(&b, &n);
    if (len) *len = n - 1;
    return 0;
}


static bool parse_u64(const char *s, uint64_t *out) {
    uint64_t v = 0;
    if (!*s) return false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > (UINT64_MAX - 9) / 10) return false;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return true;
}

static int bad_token(mimeo_err *err) {
    db_err_set(err, MIMEO_EINVAL, "bad_request", "Malformed continuation token");
    return MIMEO_EINVAL;
}

int mimeo_changes_open(mimeo_db *db, const mimeo_changes_opts *opts, mimeo_cursor **out,
                       mimeo_err *err) {
    *out = NULL;
    mimeo_cursor *c = cursor_new(db, CUR_CHANGES);
    if (!c) return db_err(err, MIMEO_ENOMEM);
    c->co = *opts;
    c->limit = opts->limit_zero ? 0 : opts->limit ? opts->limit : UINT64_MAX;
    c->pos = opts->descending ? (opts->before ? opts->before : UINT64_MAX) : opts->since;
    c->last_seq = opts->since;
    if (opts->resume) {
        uint64_t v;
        if (opts->resume[0] != 's' || !parse_u64(opts->resume + 1, &v)) {
            mimeo_cursor_close(c);
            return bad_token(err);
        }
        c->pos = v;
    }
    if (opts->doc_ids) {
        c->hits = calloc(opts->doc_id_count ? opts->doc_id_count : 1, sizeof *c->hits);
        if (!c->hits) {
            mimeo_cursor_close(c);
            return db_err(err, MIMEO_ENOMEM);
        }
    }
    /* The first slice now, so that a missing database is an error of the open. */
    int rc = cursor_fill(c, err);
    if (rc) {
        mimeo_cursor_close(c);
        return rc;
    }
    *out = c;
    return 0;
}

int mimeo_all_docs_open(mimeo_db *db, const mimeo_all_docs_opts *opts, mimeo_cursor **out,
                        mimeo_err *err) {
    *out = NULL;
    mimeo_cursor *c = cursor_new(db, opts->keys ? CUR_KEYS : CUR_ALL_DOCS);
    if (!c) return db_err(err, MIMEO_ENOMEM);
    c->ao = *opts;
    c->limit = opts->limit_zero ? 0 : opts->limit ? opts->limit : UINT64_MAX;
    if (opts->keys) c->key_pos = (size_t)(opts->skip < opts->key_count ? opts->skip : opts->key_count);
    else c->skip_left = opts->skip;
    const char *t = opts->resume;
    if (t) {
        uint64_t v;
        if (opts->keys && t[0] == 'k' && parse_u64(t + 1, &v)) {
            c->key_pos = v < opts->key_count ? (size_t)v : opts->key_count;
        } else if (!opts->keys && t[0] == 'i') {
            size_t n = strlen(t + 1);
            if (n % 2) {
                mimeo_cursor_close(c);
                return bad_token(err);
            }
            for (size_t i = 0; i < n; i += 2) {
                int hi = hex_digit(t[1 + i]), lo = hex_digit(t[2 + i]);
                if (hi < 0 || lo < 0) {
                    mimeo_cursor_close(c);
                    return bad_token(err);
                }
                if (buf_putc(&c->from, (char)(hi << 4 | lo))) {
                    mimeo_cursor_close(c);
                    return db_err(err, MIMEO_ENOMEM);
                }
            }
            c->started = n > 0;
            c->skip_left = 0;
        } else {
            mimeo_cursor_close(c);
            return bad_token(err);
        }
    }
    if (c->limit == 0) c->end = true;
    /* Check the database now, so that a missing one is an error of the open. */
    db_snap sn;
    int rc = db_snap_begin(db, &sn, err);
    if (rc) {
        mimeo_cursor_close(c);
        return rc;
    }
    db_snap_end(&sn);
    *out = c;
    return 0;
}

int mimeo_doc_open(mimeo_db *db, const char *id, size_t id_len, const mimeo_get_opts *opts,
                   mimeo_cursor **out, mimeo_err *err) {
    *out = NULL;
    mimeo_cursor *c = cursor_new(db, CUR_DOC);
    if (!c) return db_err(err, MIMEO_ENOMEM);
    size_t json_len = 0, rev_off = 0;
    bool deleted = false;
    uint64_t seq = 0;
    int rc = db_doc_read(db, id, id_len, opts, &c->text, &json_len, &rev_off, &deleted, &seq,
                         &c->fol, err);
    crow *r = rc ? NULL : row_add(c);
    if (!rc && !r) rc = db_err(err, MIMEO_ENOMEM);
    if (!rc) {
        r->has_json = r->has_rev = true;
        r->json_off = 0;
        r->json_len = json_len;
        r->rev_off = rev_off;
        r->rev_len = strlen(c->text.data + rev_off);
        r->deleted = deleted;
        r->seq = seq;
        r->fol_count = c->fol.n;
        r->id_len = id_len;
        rc = text_put(c, id, id_len, &r->id_off);
        if (rc) db_err(err, rc);
    }
    if (rc) {
        mimeo_cursor_close(c);
        return rc;
    }
    c->end = true;
    *out = c;
    return 0;
}

static bool revs_all(const char *s, size_t n) {
    return (n == 3 && memcmp(s, "all", 3) == 0) || (n == 5 && memcmp(s, "\"all\"", 5) == 0);
}

/* One document: read it whole now (its errors are the open's), then serve the rows. */
static int open_revs_start(mimeo_cursor *c, mimeo_cursor **out, mimeo_err *err) {
    int rc = cursor_fill(c, err);
    c->id = NULL;
    if (rc) {
        mimeo_cursor_close(c);
        return rc;
    }
    *out = c;
    return 0;
}

int mimeo_open_revs_open(mimeo_db *db, const char *id, size_t id_len, const char *revs_json,
                         size_t revs_len, const mimeo_get_opts *opts, mimeo_cursor **out,
                         mimeo_err *err) {
    *out = NULL;
    mimeo_cursor *c = cursor_new(db, CUR_OPEN_REVS);
    if (!c) return db_err(err, MIMEO_ENOMEM);
    if (opts) c->go = *opts;
    c->go.rev = NULL;
    c->id = id;
    c->id_len = id_len;
    if (!revs_all(revs_json, revs_len)) {
        json_error je;
        if (json_tree_parse(revs_json, revs_len, &db->env->limits, &c->req, &je) != 0 ||
            c->req->type != JV_ARRAY) {
            mimeo_cursor_close(c);
            db_err_set(err, MIMEO_EINVAL, "bad_request", "`open_revs` must be `all` or a JSON array of revisions");
            return MIMEO_EINVAL;
        }
    }
    return open_revs_start(c, out, err);
}

int mimeo_open_revs_list_open(mimeo_db *db, const char *id, size_t id_len,
                              const char *const *revs, const size_t *rev_lens, size_t n,
                              const mimeo_get_opts *opts, mimeo_cursor **out, mimeo_err *err) {
    *out = NULL;
    /* The list as the array the request's JSON would have parsed into, made in one block:
     * the array, its items and their pointers, then the revision texts. */
    size_t text = 0;
    for (size_t i = 0; i < n; i++) text += rev_lens[i] + 1;
    size_t head = sizeof(jval) * (n + 1) + sizeof(jval *) * (n + 1);
    char *block = calloc(1, head + text);
    mimeo_cursor *c = block ? cursor_new(db, CUR_OPEN_REVS) : NULL;
    if (!c) {
        free(block);
        return db_err(err, MIMEO_ENOMEM);
    }
    jval *arr = (jval *)block, *items = arr + 1;
    jval **ptrs = (jval **)(items + n);
    char *t = block + head;
    arr->type = JV_ARRAY;
    arr->items = ptrs;
    arr->count = n;
    for (size_t i = 0; i < n; i++) {
        items[i].type = JV_STRING;
        items[i].str = t;
        items[i].len = rev_lens[i];
        memcpy(t, revs[i], rev_lens[i]);
        t += rev_lens[i] + 1;
        ptrs[i] = &items[i];
    }
    c->req = arr;
    c->req_flat = true;
    if (opts) c->go = *opts;
    c->go.rev = NULL;
    c->id = id;
    c->id_len = id_len;
    return open_revs_start(c, out, err);
}

int mimeo_bulk_get_open(mimeo_db *db, const char *json, size_t len, const mimeo_get_opts *opts,
                        mimeo_cursor **out, mimeo_err *err) {
    *out = NULL;
    mimeo_cursor *c = cursor_new(db, CUR_BULK_GET);
    if (!c) return db_err(err, MIMEO_ENOMEM);
    if (opts) c->go = *opts;
    c->go.rev = NULL;
    json_error je;
    /* one block: a replication batch names hundreds of revisions */
    c->req_flat = true;
    if (json_tree_parse_block(json, len, &db->env->limits, &c->req, &je) != 0) {
        mimeo_cursor_close(c);
        return db_err_json(err, &je);
    }
    const jval *docs = jval_get(c->req, "docs");
    if (!docs || docs->type != JV_ARRAY) {
        mimeo_cursor_close(c);
        db_err_set(err, MIMEO_EINVAL, "bad_request", "Missing JSON list of 'docs'.");
        return MIMEO_EINVAL;
    }
    int rc = cursor_fill(c, err);
    if (rc) {
        mimeo_cursor_close(c);
        return rc;
    }
    *out = c;
    return 0;
}

int mimeo_revs_diff_open(mimeo_db *db, const char *json, size_t len, mimeo_cursor **out,
                         mimeo_err *err) {
    *out = NULL;
    mimeo_cursor *c = cursor_new(db, CUR_REVS_DIFF);
    if (!c) return db_err(err, MIMEO_ENOMEM);
    json_error je;
    /* one block: a replication batch names hundreds of revisions */
    c->req_flat = true;
    if (json_tree_parse_block(json, len, &db->env->limits, &c->req, &je) != 0) {
        mimeo_cursor_close(c);
        return db_err_json(err, &je);
    }
    int rc = 0;
    if (c->req->type != JV_OBJECT) {
        db_err_set(err, MIMEO_EINVAL, "bad_request", "Request body must be a JSON object");
        rc = MIMEO_EINVAL;
    }
    /* Every member must be a list: check it all before any row goes out. */
    for (size_t i = 0; !rc && i < c->req->count; i++) {
        const jval *revs = c->req->items[i];
        bool good = revs->type == JV_ARRAY;
        for (size_t j = 0; good && j < revs->count; j++) {
            const jval *rv = revs->items[j];
            uint64_t gen;
            char hash[REV_HASH_MAX + 1];
            size_t hash_len;
            good = rv->type == JV_STRING &&
                   rev_parse(rv->str, rv->len, true, &gen, hash, &hash_len) == 0;
        }
        if (!good) {
            db_err_set(err, MIMEO_EBADREV, "bad_request", "Invalid rev format");
            rc = MIMEO_EBADREV;
        }
    }
    if (!rc) rc = cursor_fill(c, err);
    if (rc) {
        mimeo_cursor_close(c);
        return rc;
    }
    *out = c;
    return 0;
}

/* ---- the JSON convenience calls ------------------------------------------------------------- */

/* {"_id","_rev",…body…,"_deleted"?,"_conflicts"?} from a row with a body. */
static int put_row_doc(buf *out, const mimeo_row *r, bool conflicts) {
    int rc = buf_puts(out, "{\"_id\":");
    if (!rc) rc = json_put_str(out, r->id, r->id_len);
    if (!rc) rc = buf_puts(out, ",\"_rev\":");
    if (!rc) rc = json_put_str(out, r->rev, r->rev_len);
    if (!rc && r->body_len > 2) {
        rc = buf_putc(out, ',');
        if (!rc) rc = buf_put(out, r->body + 1, r->body_len - 2);
    }
    if (!rc && r->deleted) rc = buf_puts(out, ",\"_deleted\":true");
    if (conflicts) {
        size_t k = 0;
        for (size_t i = 1; i < r->leaf_count && !rc; i++) {
            if (r->leaves[i].deleted) continue;
            rc = buf_puts(out, k++ ? "," : ",\"_conflicts\":[");
            if (!rc) rc = json_put_str(out, r->leaves[i].rev, r->leaves[i].rev_len);
        }
        if (!rc && k) rc = buf_putc(out, ']');
    }
    return rc ? rc : buf_putc(out, '}');
}

static int put_change_row(buf *out, const mimeo_row *r, const mimeo_changes_opts *o) {
    int rc = buf_printf(out, "{\"seq\":%llu,\"id\":", (unsigned long long)r->seq);
    if (!rc) rc = json_put_str(out, r->id, r->id_len);
    if (!rc) rc = buf_puts(out, ",\"changes\":[");
    if (o->all_docs_style && r->leaf_count) {
        for (size_t i = 0; i < r->leaf_count && !rc; i++) {
            rc = buf_puts(out, i ? ",{\"rev\":" : "{\"rev\":");
            if (!rc) rc = json_put_str(out, r->leaves[i].rev, r->leaves[i].rev_len);
            if (!rc) rc = buf_putc(out, '}');
        }
    } else {
        rc = buf_puts(out, "{\"rev\":");
        if (!rc) rc = json_put_str(out, r->rev, r->rev_len);
        if (!rc) rc = buf_putc(out, '}');
    }
    if (!rc) rc = buf_putc(out, ']');
    if (!rc && r->deleted) rc = buf_puts(out, ",\"deleted\":true");
    if (!rc && r->body) {
        rc = buf_puts(out, ",\"doc\":");
        if (!rc) rc = put_row_doc(out, r, o->conflicts);
    }
    return rc ? rc : buf_putc(out, '}');
}

static int put_all_docs_row(buf *out, const mimeo_row *r, const mimeo_all_docs_opts *o) {
    int rc;
    if (r->status == MIMEO_ENOTFOUND) {
        rc = buf_puts(out, "{\"key\":");
        if (!rc) rc = json_put_str(out, r->id, r->id_len);
        return rc ? rc : buf_puts(out, ",\"error\":\"not_found\"}");
    }
    rc = buf_puts(out, "{\"id\":");
    if (!rc) rc = json_put_str(out, r->id, r->id_len);
    if (!rc) rc = buf_puts(out, ",\"key\":");
    if (!rc) rc = json_put_str(out, r->id, r->id_len);
    if (!rc) rc = buf_puts(out, ",\"value\":{\"rev\":");
    if (!rc) rc = json_put_str(out, r->rev, r->rev_len);
    if (!rc) rc = buf_puts(out, r->deleted ? ",\"deleted\":true}" : "}");
    if (!rc && o->include_docs) {
        rc = buf_puts(out, ",\"doc\":");
        if (!rc) rc = r->body ? put_row_doc(out, r, o->conflicts) : buf_puts(out, "null");
    }
    return rc ? rc : buf_putc(out, '}');
}

int mimeo_changes(mimeo_db *db, const mimeo_changes_opts *o, mimeo_row_fn fn, void *ctx,
                  uint64_t *last_seq, uint64_t *pending, mimeo_err *err) {
    *last_seq = o->since;
    if (pending) *pending = 0;
    mimeo_cursor *c;
    int rc = mimeo_changes_open(db, o, &c, err);
    if (rc) return rc;
    buf b;
    buf_init(&b, 0);
    const mimeo_row *r;
    while ((rc = mimeo_cursor_next(c, &r, err)) == 0 && r) {
        buf_reset(&b);
        rc = put_change_row(&b, r, o);
        if (rc) {
            db_err(err, rc);
            break;
        }
        if ((rc = fn(ctx, b.data, b.len)) != 0) break;
    }
    if (!rc) {
        *last_seq = mimeo_cursor_last_seq(c);
        if (pending) *pending = mimeo_cursor_pending(c);
    }
    buf_destroy(&b);
    mimeo_cursor_close(c);
    return rc;
}

int mimeo_all_docs(mimeo_db *db, const mimeo_all_docs_opts *o, mimeo_row_fn fn, void *ctx,
                   mimeo_err *err) {
    mimeo_cursor *c;
    int rc = mimeo_all_docs_open(db, o, &c, err);
    if (rc) return rc;
    buf b;
    buf_init(&b, 0);
    const mimeo_row *r;
    while ((rc = mimeo_cursor_next(c, &r, err)) == 0 && r) {
        buf_reset(&b);
        rc = put_all_docs_row(&b, r, o);
        if (rc) {
            db_err(err, rc);
            break;
        }
        if ((rc = fn(ctx, b.data, b.len)) != 0) break;
    }
    buf_destroy(&b);
    mimeo_cursor_close(c);
    return rc;
}

/* Joins the json of every row of c between open and close, separated by commas. */
static int join_rows(mimeo_cursor *c, const char *open, const char *close, char **json_out,
                     size_t *out_len, mimeo_err *err) {
    buf b;
    buf_init(&b, 0);
    int rc = buf_puts(&b, open);
    const mimeo_row *r;
    bool first = true;
    while (!rc && (rc = mimeo_cursor_next(c, &r, err)) == 0 && r) {
        if (!r->json) continue;
        if (!first) rc = buf_putc(&b, ',');
        first = false;
        if (!rc) rc = buf_put(&b, r->json, r->json_len);
        if (rc) db_err(err, rc);
    }
    if (!rc) rc = buf_puts(&b, close);
    if (!rc) *json_out = buf_detach(&b, out_len);
    else if (rc != MIMEO_ENOTFOUND && rc != MIMEO_EBADREV) db_err(err, rc);
    buf_destroy(&b);
    mimeo_cursor_close(c);
    return rc;
}

int mimeo_doc_open_revs(mimeo_db *db, const char *id, size_t id_len, const char *revs_json,
                        size_t revs_len, const mimeo_get_opts *opts, char **json_out,
                        size_t *out_len, mimeo_err *err) {
    *json_out = NULL;
    *out_len = 0;
    mimeo_cursor *c;
    int rc = mimeo_open_revs_open(db, id, id_len, revs_json, revs_len, opts, &c, err);
    if (rc) return rc;
    buf b;
    buf_init(&b, 0);
    rc = buf_putc(&b, '[');
    const mimeo_row *r;
    bool first = true;
    while (!rc && (rc = mimeo_cursor_next(c, &r, err)) == 0 && r) {
        if (!first) rc = buf_putc(&b, ',');
        first = false;
        if (rc) break;
        if (r->status == 0) {
            rc = buf_puts(&b, "{\"ok\":");
            if (!rc) rc = buf_put(&b, r->json, r->json_len);
        } else {
            rc = buf_puts(&b, "{\"missing\":");
            if (!rc) rc = json_put_str(&b, r->rev, r->rev_len);
        }
        if (!rc) rc = buf_putc(&b, '}');
    }
    if (!rc) rc = buf_putc(&b, ']');
    if (!rc) *json_out = buf_detach(&b, out_len);
    else db_err(err, rc);
    buf_destroy(&b);
    mimeo_cursor_close(c);
    return rc;
}

int mimeo_bulk_get(mimeo_db *db, const char *json, size_t len, const mimeo_get_opts *opts,
                   char **json_out, size_t *out_len, mimeo_err *err) {
    *json_out = NULL;
    *out_len = 0;
    mimeo_cursor *c;
    int rc = mimeo_bulk_get_open(db, json, len, opts, &c, err);
    return rc ? rc : join_rows(c, "{\"results\":[", "]}", json_out, out_len, err);
}

int mimeo_revs_diff(mimeo_db *db, const char *json, size_t len, char **json_out,
                    size_t *out_len, mimeo_err *err) {
    *json_out = NULL;
    *out_len = 0;
    mimeo_cursor *c;
    int rc = mimeo_revs_diff_open(db, json, len, &c, err);
    return rc ? rc : join_rows(c, "{", "}", json_out, out_len, err);
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
