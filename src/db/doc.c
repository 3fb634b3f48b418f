/* Documents as stored and as served: id checks, fetching revision bodies, and writing a
 * revision out as CouchDB's JSON with its optional meta members (records by id: idkey.c). */
#include <stdlib.h>
#include <string.h>

#include "att_int.h"
#include "db_int.h"

void db_doc_init(db_doc *d) {
    d->seq = 0;
    revtree_init(&d->tree);
}

void db_doc_destroy(db_doc *d) { revtree_destroy(&d->tree); }

int db_docid_check(const mimeo_env *env, const char *id, size_t n, mimeo_err *err) {
    const char *reason = NULL;
    size_t max = env->opts.max_document_id_length;
    bool local = n > 7 && memcmp(id, "_local/", 7) == 0;
    /* _local ids are keys of the locals table as they are (they are checkpoint names,
     * short); other ids may be as long as configured (idkey.c). */
    if (local && n > STORE_ID_MAX) max = STORE_ID_MAX;
    if (docid_validate_max(id, n, max, &reason) != 0) {
        db_err_set(err, MIMEO_EBADID, "illegal_docid", reason ? reason : "Illegal document id");
        return MIMEO_EBADID;
    }
    return 0;
}

int db_body_get(MDB_txn *txn, const store_tables *t, uint64_t dbid, const revtree_node *n,
                MDB_val *out) {
    if (!(n->flags & REVTREE_HAS_BODY)) {
        out->mv_data = "{}";
        out->mv_size = 2;
        return 0;
    }
    unsigned char key[16];
    MDB_val k = {store_key_u64(key, dbid, n->body), key};
    int rc = mdb_get(txn, t->bodies, &k, out);
    return rc == MDB_NOTFOUND ? MIMEO_ECORRUPT : store_err(rc);
}

int db_rev_put(buf *out, const revtree_node *n) {
    return rev_put(out, n->gen, n->hash, n->hash_len);
}

static int put_rev_list(buf *out, const char *key, const revtree *t, const uint32_t *idx,
                        uint32_t n) {
    int rc = buf_putc(out, ',');
    if (!rc) rc = json_put_key(out, key);
    if (!rc) rc = buf_putc(out, '[');
    for (uint32_t i = 0; i < n && !rc; i++) {
        if (i) rc = buf_putc(out, ',');
        if (!rc) rc = buf_putc(out, '"');
        if (!rc) rc = db_rev_put(out, &t->nodes[idx[i]]);
        if (!rc) rc = buf_putc(out, '"');
    }
    return rc ? rc : buf_putc(out, ']');
}

void db_follows_reset(db_follows *f) {
    f->n = 0;
    buf_reset(&f->text);
}

void db_follows_destroy(db_follows *f) {
    free(f->v);
    buf_destroy(&f->text);
    memset(f, 0, sizeof *f);
}

int db_follows_add(db_follows *f, const char *name, size_t name_len, const char *type,
                   size_t type_len, uint64_t length, uint64_t stored, bool gzip) {
    if (ARRAY_GROW(f->v, f->cap, f->n + 1)) return MIMEO_ENOMEM;
    db_follow *e = &f->v[f->n];
    *e = (db_follow){.name_off = f->text.len, .name_len = name_len, .length = length,
                     .stored = stored, .gzip = gzip};
    int rc = buf_put(&f->text, name, name_len);
    if (!rc) rc = buf_putc(&f->text, '\0');
    e->type_off = f->text.len;
    e->type_len = type_len;
    if (!rc) rc = buf_put(&f->text, type, type_len);
    if (!rc) rc = buf_putc(&f->text, '\0');
    if (!rc) f->n++;
    return rc;
}

int db_doc_json(buf *out, MDB_txn *txn, const store_tables *t, uint64_t dbid,
                const char *id, size_t id_len, const db_doc *d, uint32_t node,
                const mimeo_get_opts *opts, db_follows *fol) {
    const revtree *tree = &d->tree;
    const revtree_node *n = &tree->nodes[node];
    MDB_val body;
    int rc = db_body_get(txn, t, dbid, n, &body);
    if (rc) return rc;
    rc = buf_puts(out, "{\"_id\":");
    if (!rc) rc = json_put_str(out, id, id_len);
    if (!rc) rc = buf_puts(out, ",\"_rev\":\"");
    if (!rc) rc = db_rev_put(out, n);
    if (!rc) rc = buf_putc(out, '"');
    /* The stored body is a compact object "{...}": splice its members in (reads with
     * attachment options rewrite its _attachments member: src/db/att.c). */
    bool spliced = false;
    if (!rc && opts) rc = att_json(out, txn, t, dbid, tree, node, &body, opts, fol, &spliced);
    if (!rc && !spliced && body.mv_size > 2) {
        rc = buf_putc(out, ',');
        if (!rc) rc = buf_put(out, (const char *)body.mv_data + 1, body.mv_size - 2);
    }
    if (!rc && (n->flags & REVTREE_DELETED)) rc = buf_puts(out, ",\"_deleted\":true");
    if (rc || !opts) goto end;

    uint32_t *idx = NULL;
    if (opts->revs || opts->revs_info || opts->conflicts || opts->deleted_conflicts) {
        idx = malloc(sizeof *idx * (tree->count ? tree->count : 1));
        if (!idx) return MIMEO_ENOMEM;
    }
    if (opts->revs) {
        uint32_t len = revtree_path(tree, node, idx);
        /* not buf_printf: its vsnprintf is a third of a replicated document's formatting */
        rc = buf_puts(out, ",\"_revisions\":{\"start\":");
        if (!rc) rc = buf_put_u64(out, n->gen);
        if (!rc) rc = buf_puts(out, ",\"ids\":[");
        for (uint32_t i = 0; i < len && !rc; i++) {
            if (i) rc = buf_putc(out, ',');
            if (!rc) rc = json_put_str(out, tree->nodes[idx[i]].hash, tree->nodes[idx[i]].hash_len);
        }
        if (!rc) rc = buf_puts(out, "]}");
    }
    if (!rc && opts->revs_info) {
        uint32_t len = revtree_path(tree, node, idx);
        rc = buf_puts(out, ",\"_revs_info\":[");
        for (uint32_t i = 0; i < len && !rc; i++) {
            const revtree_node *a = &tree->nodes[idx[i]];
            const char *status = (a->flags & REVTREE_DELETED) ? "deleted"
                               : (a->flags & REVTREE_HAS_BODY) ? "available" : "missing";
            if (i) rc = buf_putc(out, ',');
            if (!rc) rc = buf_puts(out, "{\"rev\":\"");
            if (!rc) rc = db_rev_put(out, a);
            if (!rc) rc = buf_printf(out, "\",\"status\":\"%s\"}", status);
        }
        if (!rc) rc = buf_putc(out, ']');
    }
    if (!rc && (opts->conflicts || opts->deleted_conflicts)) {
        uint32_t nleaves = revtree_leaves(tree, idx);
        int64_t winner = revtree_winner(tree);
        uint32_t *sel = malloc(sizeof *sel * (nleaves ? nleaves : 1));
        if (!sel) rc = MIMEO_ENOMEM;
        /* Leaves come best first: generation, then id, descending — CouchDB's order. */
        for (int pass = 0; pass < 2 && !rc; pass++) {
            bool want_deleted = pass == 1;
            if (want_deleted ? !opts->deleted_conflicts : !opts->conflicts) continue;
            uint32_t k = 0;
            for (uint32_t i = 0; i < nleaves; i++) {
                if ((int64_t)idx[i] == winner) continue;
                bool del = tree->nodes[idx[i]].flags & REVTREE_DELETED;
                if (del == want_deleted) sel[k++] = idx[i];
            }
            if (k) rc = put_rev_list(out, want_deleted ? "_deleted_conflicts" : "_conflicts",
                                     tree, sel, k);
        }
        free(sel);
    }
    free(idx);
    if (!rc && opts->local_seq) rc = buf_printf(out, ",\"_local_seq\":%llu", (unsigned long long)d->seq);
end:
    return rc ? rc : buf_putc(out, '}');
}
