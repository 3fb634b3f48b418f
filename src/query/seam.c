/* The read seam (seam.h): _find's and the indexes' reads through mimeo.h's cursors. The
 * metadata comes from the rows; only each document's stored body is parsed into a tree.
 * The cursors read in bounded slices, so no snapshot stays open while a caller works. */
#include "seam.h"

#include <stdlib.h>
#include <string.h>

/* A row's document as _find sees it: the metadata from the row itself (id, winning rev,
 * deleted, the live conflicts), spliced around the stored body. The text is kept in `text`;
 * the tree is parsed later, if at all (seam_doc_tree). *ok false when the row has no body. */
static int seam_text(const mimeo_row *row, bool conflicts, buf *text, seam_doc *d, bool *ok) {
    *ok = false;
    if (!row->body || row->status != 0) return 0;
    buf_reset(text);
    int rc = buf_puts(text, "{\"_id\":");
    if (!rc) rc = json_put_str(text, row->id, row->id_len);
    if (!rc && row->rev) {
        rc = buf_puts(text, ",\"_rev\":");
        if (!rc) rc = json_put_str(text, row->rev, row->rev_len);
    }
    if (!rc && row->body_len > 2) {
        rc = buf_putc(text, ',');
        if (!rc) rc = buf_put(text, row->body + 1, row->body_len - 2);
    }
    if (!rc && row->deleted) rc = buf_puts(text, ",\"_deleted\":true");
    if (!rc && conflicts) {
        size_t k = 0;
        for (size_t i = 1; !rc && i < row->leaf_count; i++) {
            if (row->leaves[i].deleted) continue;
            rc = buf_puts(text, k++ ? "," : ",\"_conflicts\":[");
            if (!rc) rc = json_put_str(text, row->leaves[i].rev, row->leaves[i].rev_len);
        }
        if (!rc && k) rc = buf_putc(text, ']');
    }
    if (!rc) rc = buf_putc(text, '}');
    if (rc) return MIMEO_ENOMEM;
    *d = (seam_doc){text->data, text->len, row->seq, NULL, 0};
    *ok = true;
    return 0;
}

const jval *seam_doc_tree(seam_doc *d) {
    if (!d->tree && !d->parse_rc)
        d->parse_rc = json_tree_parse(d->json, d->len, NULL, &d->tree, NULL);
    return d->tree && d->tree->type == JV_OBJECT ? d->tree : NULL;
}

int seam_scan_docs(mimeo_db *db, const char *start, size_t start_len, bool after,
                   const char *end, size_t end_len, bool desc, bool conflicts,
                   seam_doc_fn fn, void *ctx, mimeo_err *err) {
    mimeo_all_docs_opts o = {0};
    o.include_docs = true;
    o.conflicts = conflicts;
    o.descending = desc;
    o.inclusive_end = true;
    o.startkey = start;
    o.startkey_len = start ? start_len : 0;
    o.endkey = end;
    o.endkey_len = end_len;
    /* The cursor reads in bounded slices, each in a short snapshot of its own. */
    mimeo_cursor *cur = NULL;
    int rc = mimeo_all_docs_open(db, &o, &cur, err);
    buf text;
    buf_init(&text, 0);
    bool first = true;
    while (!rc) {
        const mimeo_row *row;
        if ((rc = mimeo_cursor_next(cur, &row, err)) != 0 || !row) break;
        bool skip = first && start && after && row->id_len == start_len &&
                    memcmp(row->id, start, start_len) == 0;
        first = false;
        if (skip) continue;
        seam_doc d = {0};
        bool ok;
        if ((rc = seam_text(row, conflicts, &text, &d, &ok)) != 0) break;
        if (!ok) continue;
        rc = fn(ctx, row->id, row->id_len, &d);
        jval_free(d.tree);
    }
    if (rc > 0) rc = 0; /* fn stopped */
    buf_destroy(&text);
    mimeo_cursor_close(cur);
    return rc;
}

int seam_get_docs(mimeo_db *db, const char *const *ids, const size_t *lens, size_t n,
                  bool conflicts, seam_ids_fn fn, void *ctx) {
    mimeo_all_docs_opts o = {0};
    o.include_docs = true;
    o.conflicts = conflicts;
    o.inclusive_end = true;
    o.keys = ids;
    o.key_lens = lens;
    o.key_count = n;
    mimeo_cursor *cur = NULL;
    int rc = mimeo_all_docs_open(db, &o, &cur, NULL);
    buf text;
    buf_init(&text, 0);
    /* keys mode: one row per key, in the order asked */
    for (size_t i = 0; !rc; i++) {
        const mimeo_row *row;
        if ((rc = mimeo_cursor_next(cur, &row, NULL)) != 0 || !row) break;
        if (row->deleted) continue;
        seam_doc d = {0};
        bool ok;
        if ((rc = seam_text(row, conflicts, &text, &d, &ok)) != 0) break;
        if (ok) rc = fn(ctx, i, &d);
        jval_free(d.tree);
    }
    buf_destroy(&text);
    mimeo_cursor_close(cur);
    return rc;
}

int seam_get_doc(mimeo_db *db, const char *id, size_t id_len, jval **out, mimeo_err *err) {
    *out = NULL;
    char *json = NULL;
    size_t len = 0;
    mimeo_err e = {0};
    int rc = mimeo_doc_get(db, id, id_len, NULL, &json, &len, &e);
    if (rc == MIMEO_ENOTFOUND || rc == MIMEO_EDELETED) return 0;
    if (rc) {
        if (err) *err = e;
        return rc;
    }
    rc = json_tree_parse(json, len, NULL, out, err);
    mimeo_free(json);
    return rc;
}

int seam_changes(mimeo_db *db, uint64_t since, uint64_t limit, seam_change_fn fn, void *ctx,
                 uint64_t *last, uint64_t *pending, mimeo_err *err) {
    mimeo_changes_opts o = {0};
    o.since = since;
    o.limit = limit;
    o.include_docs = true;
    mimeo_cursor *cur = NULL;
    int rc = mimeo_changes_open(db, &o, &cur, err);
    buf text;
    buf_init(&text, 0);
    while (!rc) {
        const mimeo_row *row;
        if ((rc = mimeo_cursor_next(cur, &row, err)) != 0 || !row) break;
        seam_doc d = {0};
        bool ok;
        if ((rc = seam_text(row, false, &text, &d, &ok)) != 0) break;
        rc = fn(ctx, row->id, row->id_len, row->deleted, ok ? &d : NULL);
        jval_free(d.tree);
    }
    if (!rc) {
        *last = mimeo_cursor_last_seq(cur);
        if (pending) *pending = mimeo_cursor_pending(cur);
    }
    buf_destroy(&text);
    mimeo_cursor_close(cur);
    return rc;
}

int seam_ddoc_revs(mimeo_db *db, buf *out) {
    mimeo_all_docs_opts o = {0};
    o.inclusive_end = false;
    o.startkey = "_design/";
    o.startkey_len = 8;
    o.endkey = "_design0"; /* right after every "_design/…" id */
    o.endkey_len = 8;
    mimeo_cursor *cur = NULL;
    int rc = mimeo_all_docs_open(db, &o, &cur, NULL);
    while (!rc) {
        const mimeo_row *row;
        if ((rc = mimeo_cursor_next(cur, &row, NULL)) != 0 || !row) break;
        rc = buf_put_varint(out, row->id_len);
        if (!rc) rc = buf_put(out, row->id, row->id_len);
        if (!rc) rc = buf_put_varint(out, row->rev_len);
        if (!rc && row->rev) rc = buf_put(out, row->rev, row->rev_len);
    }
    mimeo_cursor_close(cur);
    return rc;
}

int seam_update_seq(mimeo_db *db, uint64_t *seq) {
    mimeo_db_info info;
    int rc = mimeo_db_info_get(db, &info);
    if (!rc) *seq = info.update_seq;
    return rc;
}
