/* Reads of one document: read snapshots, the document as GET serves it, and local documents.
 * Everything that iterates (changes, _all_docs, open_revs, _bulk_get, _revs_diff) is in
 * cursor.c, which reads in bounded slices. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "db_int.h"

#define LOCAL_PREFIX "_local/"
#define LOCAL_PREFIX_LEN 7

static int db_gone(mimeo_err *err) {
    db_err_set(err, MIMEO_ENOTFOUND, "not_found", "Database does not exist.");
    return MIMEO_ENOTFOUND;
}

int db_snap_begin(mimeo_db *db, db_snap *sn, mimeo_err *err) {
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

void db_snap_end(db_snap *sn) {
    store_read_end(sn->s, sn->txn);
    sn->txn = NULL;
}

static bool is_local_id(const char *id, size_t n) {
    return n > LOCAL_PREFIX_LEN && memcmp(id, LOCAL_PREFIX, LOCAL_PREFIX_LEN) == 0;
}

/* ---- single documents ----------------------------------------------------------------- */

int db_find_rev(const revtree *t, const char *rev, size_t len, int64_t *node) {
    uint64_t gen;
    char hash[REV_HASH_MAX + 1];
    size_t hash_len;
    if (rev_parse(rev, len, true, &gen, hash, &hash_len)) return MIMEO_EBADREV;
    *node = revtree_find(t, gen, hash, hash_len);
    return 0;
}

static int local_read(mimeo_db *db, const char *id, size_t id_len, buf *out,
                      uint64_t *counter, mimeo_err *err);

int db_doc_read(mimeo_db *db, const char *id, size_t id_len, const mimeo_get_opts *opts,
                buf *out, size_t *json_len, size_t *rev_off, bool *deleted, uint64_t *seq,
                db_follows *fol, mimeo_err *err) {
    *deleted = false;
    *seq = 0;
    if (is_local_id(id, id_len)) {
        uint64_t counter = 0;
        int rc = local_read(db, id + LOCAL_PREFIX_LEN, id_len - LOCAL_PREFIX_LEN, out,
                            &counter, err);
        if (rc) return rc;
        *json_len = out->len;
        rc = buf_putc(out, '\0');
        *rev_off = out->len;
        if (!rc) rc = buf_printf(out, "0-%llu", (unsigned long long)counter);
        if (!rc) rc = buf_putc(out, '\0');
        return rc ? db_err(err, rc) : 0;
    }
    db_snap sn;
    int rc = db_snap_begin(db, &sn, err);
    if (rc) return rc;
    db_doc d;
    db_doc_init(&d);
    rc = db_doc_load(sn.txn, sn.t, sn.m.dbid, id, id_len, &d);
    int64_t node = -1;
    if (!rc && opts && opts->rev) {
        rc = db_find_rev(&d.tree, opts->rev, strlen(opts->rev), &node);
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
    if (!rc) rc = db_doc_json(out, sn.txn, sn.t, sn.m.dbid, id, id_len, &d, (uint32_t)node, opts,
                              fol);
    if (!rc) {
        *json_len = out->len;
        rc = buf_putc(out, '\0');
        *rev_off = out->len;
        if (!rc) rc = db_rev_put(out, &d.tree.nodes[node]);
        if (!rc) rc = buf_putc(out, '\0');
        *deleted = d.tree.nodes[node].flags & REVTREE_DELETED;
        *seq = d.seq;
    }
    if (rc) db_err(err, rc);
out:
    db_snap_end(&sn);
    db_doc_destroy(&d);
    return rc;
}

int mimeo_doc_get(mimeo_db *db, const char *id, size_t id_len, const mimeo_get_opts *opts,
                  char **json_out, size_t *out_len, mimeo_err *err) {
    *json_out = NULL;
    *out_len = 0;
    buf out;
    buf_init(&out, 0);
    size_t json_len = 0, rev_off = 0;
    bool deleted;
    uint64_t seq;
    int rc = db_doc_read(db, id, id_len, opts, &out, &json_len, &rev_off, &deleted, &seq, NULL,
                         err);
    if (!rc) {
        /* The JSON comes first and is NUL-terminated: hand the buffer over as it is. */
        size_t all;
        *json_out = buf_detach(&out, &all);
        *out_len = json_len;
    }
    buf_destroy(&out);
    return rc;
}

/* ---- local documents --------------------------------------------------------------------- */

/* Appends the stored body of local document id ("{…}") to out; *counter is its revision
 * number. */
static int local_stored(mimeo_db *db, const char *id, size_t id_len, buf *out,
                        uint64_t *counter, mimeo_err *err) {
    *counter = 0;
    if (id_len == 0 || id_len > STORE_ID_MAX - LOCAL_PREFIX_LEN) return db_err(err, MIMEO_ENOTFOUND);
    db_snap sn;
    int rc = db_snap_begin(db, &sn, err);
    if (rc) return rc;
    unsigned char key[STORE_KEY_MAX];
    MDB_val k = {store_key(key, sn.m.dbid, id, id_len), key}, v = {0, NULL};
    rc = store_err(mdb_get(sn.txn, sn.t->locals, &k, &v));
    const unsigned char *p = v.mv_data, *end = p ? p + v.mv_size : p;
    if (!rc) rc = varint_get(&p, end, counter);
    if (!rc) rc = end - p >= 2 ? buf_put(out, p, (size_t)(end - p)) : buf_puts(out, "{}");
    db_snap_end(&sn);
    if (rc) db_err(err, rc);
    return rc;
}

int mimeo_local_read(mimeo_db *db, const char *id, size_t id_len, char rev[MIMEO_REV_MAX],
                     char **body, size_t *body_len, mimeo_err *err) {
    *body = NULL;
    *body_len = 0;
    rev[0] = 0;
    buf b;
    buf_init(&b, 0);
    uint64_t counter;
    int rc = local_stored(db, id, id_len, &b, &counter, err);
    if (!rc) {
        snprintf(rev, MIMEO_REV_MAX, "0-%llu", (unsigned long long)counter);
        *body = buf_detach(&b, body_len);
    }
    buf_destroy(&b);
    return rc;
}

/* Appends {"_id":"_local/…","_rev":"0-N",…body…} to out: the stored body with its id and
 * revision; *counter is the revision number. */
static int local_read(mimeo_db *db, const char *id, size_t id_len, buf *out,
                      uint64_t *counter, mimeo_err *err) {
    buf body, full;
    buf_init(&body, 0);
    buf_init(&full, 0);
    int rc = local_stored(db, id, id_len, &body, counter, err);
    if (rc) goto done;
    rc = buf_puts(&full, LOCAL_PREFIX);
    if (!rc) rc = buf_put(&full, id, id_len);
    if (!rc) rc = buf_puts(out, "{\"_id\":");
    if (!rc) rc = json_put_str(out, full.data, full.len);
    if (!rc) rc = buf_printf(out, ",\"_rev\":\"0-%llu\"", (unsigned long long)*counter);
    if (!rc && body.len > 2) {
        rc = buf_putc(out, ',');
        if (!rc) rc = buf_put(out, body.data + 1, body.len - 2);
    }
    if (!rc) rc = buf_putc(out, '}');
    if (rc) db_err(err, rc);
done:
    buf_destroy(&body);
    buf_destroy(&full);
    return rc;
}

int mimeo_local_get(mimeo_db *db, const char *id, size_t id_len, char **json_out,
                    size_t *out_len, mimeo_err *err) {
    *json_out = NULL;
    *out_len = 0;
    buf out;
    buf_init(&out, 0);
    uint64_t counter;
    int rc = local_read(db, id, id_len, &out, &counter, err);
    if (!rc) *json_out = buf_detach(&out, out_len);
    buf_destroy(&out);
    return rc;
}
