/* The read seam (seam.h): _find's and the indexes' reads over today's JSON-text API. Each
 * row is parsed into a small tree; pages keep read snapshots short. */
#include "seam.h"

#include <stdlib.h>
#include <string.h>

#define SEAM_PAGE 500

typedef struct seam_scan {
    seam_doc_fn fn;
    void       *ctx;
    buf         last;     /* the last id seen, to resume the next page after it */
    bool        have_last;
    size_t      rows;
    int         stop;
} seam_scan;

static int seam_row(void *ctx, const char *json, size_t len) {
    seam_scan *s = ctx;
    jval *row = NULL;
    int rc = json_tree_parse(json, len, NULL, &row, NULL);
    if (rc) return rc;
    const jval *id = jval_get(row, "id"), *doc = jval_get(row, "doc");
    s->rows++;
    if (!id || id->type != JV_STRING) { jval_free(row); return 0; }
    if (s->have_last && id->len == s->last.len && memcmp(id->str, s->last.data, id->len) == 0) {
        jval_free(row); /* the page's first row repeats the last one of the previous page */
        return 0;
    }
    buf_reset(&s->last);
    rc = buf_put(&s->last, id->str, id->len);
    s->have_last = true;
    if (!rc && doc && doc->type == JV_OBJECT) rc = s->fn(s->ctx, id->str, id->len, doc);
    if (rc > 0) s->stop = rc;
    jval_free(row);
    return rc;
}

int seam_scan_docs(mimeo_db *db, const char *start, size_t start_len, bool after,
                          const char *end, size_t end_len, bool desc, bool conflicts,
                          seam_doc_fn fn, void *ctx, mimeo_err *err) {
    seam_scan s = {fn, ctx, BUF_INIT, false, 0, 0};
    buf_init(&s.last, 0);
    int rc = 0;
    if (start && after) {
        rc = buf_put(&s.last, start, start_len);
        s.have_last = true;
    }
    bool first = true;
    while (!rc) {
        mimeo_all_docs_opts o = {0};
        o.include_docs = true;
        o.conflicts = conflicts;
        o.descending = desc;
        o.inclusive_end = true;
        o.limit = SEAM_PAGE;
        if (!first || (start && after)) {
            o.startkey = s.last.data;
            o.startkey_len = s.last.len;
        } else if (start) {
            o.startkey = start;
            o.startkey_len = start_len;
        }
        o.endkey = end;
        o.endkey_len = end_len;
        first = false;
        s.rows = 0;
        rc = mimeo_all_docs(db, &o, seam_row, &s, err);
        if (rc > 0) { rc = 0; break; } /* fn stopped */
        if (rc || s.rows < SEAM_PAGE) break;
    }
    buf_destroy(&s.last);
    return rc;
}


typedef struct seam_ids {
    seam_ids_fn fn;
    void       *ctx;
    size_t      i;
} seam_ids;

static int seam_ids_row(void *ctx, const char *json, size_t len) {
    seam_ids *s = ctx;
    size_t i = s->i++;
    jval *row = NULL;
    int rc = json_tree_parse(json, len, NULL, &row, NULL);
    if (rc) return rc;
    const jval *doc = jval_get(row, "doc");
    if (doc && doc->type == JV_OBJECT) rc = s->fn(s->ctx, i, doc);
    jval_free(row);
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
    seam_ids s = {fn, ctx, 0};
    return mimeo_all_docs(db, &o, seam_ids_row, &s, NULL);
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

typedef struct seam_ch {
    seam_change_fn fn;
    void          *ctx;
} seam_ch;

static int seam_change_row(void *ctx, const char *json, size_t len) {
    seam_ch *c = ctx;
    jval *row = NULL;
    int rc = json_tree_parse(json, len, NULL, &row, NULL);
    if (rc) return rc == MIMEO_ENOMEM ? rc : 0;
    const jval *id = jval_get(row, "id"), *del = jval_get(row, "deleted");
    const jval *doc = jval_get(row, "doc");
    if (id && id->type == JV_STRING)
        rc = c->fn(c->ctx, id->str, id->len, del && del->type == JV_BOOL && del->boolean,
                   doc && doc->type == JV_OBJECT ? doc : NULL);
    jval_free(row);
    return rc;
}

int seam_changes(mimeo_db *db, uint64_t since, uint64_t limit, seam_change_fn fn, void *ctx,
                 uint64_t *last, uint64_t *pending, mimeo_err *err) {
    mimeo_changes_opts o = {0};
    o.since = since;
    o.limit = limit;
    o.include_docs = true;
    seam_ch c = {fn, ctx};
    return mimeo_changes(db, &o, seam_change_row, &c, last, pending, err);
}

int seam_update_seq(mimeo_db *db, uint64_t *seq) {
    mimeo_db_info info;
    int rc = mimeo_db_info_get(db, &info);
    if (!rc) *seq = info.update_seq;
    return rc;
}
