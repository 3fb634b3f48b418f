/* A replication's changes filter: `selector` (Mango) or `filter` + `query_params` (a filter
 * function "ddoc/name", `_view` with query_params.view, `_design`). A remote source is asked
 * to filter its own feed (repl_ep_http.c); a local source is filtered here, the selector in
 * C and functions in a query-server pool of the job's own, started on first use. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "repl_int.h"
#include "../js/qs.h"

bool repl_filter_on(const repl_filter *f) {
    return f->selector || f->name;
}

int repl_filter_parse(const jval *v, repl_filter *f, mimeo_err *err) {
    const jval *sel = jval_get(v, "selector");
    const jval *filter = jval_get(v, "filter");
    const jval *qp = jval_get(v, "query_params");
    if (sel && sel->type != JV_NULL) {
        if (sel->type != JV_OBJECT) {
            err_set(err, MIMEO_EINVAL, "bad_request", "`selector` must be a JSON object");
            return MIMEO_EINVAL;
        }
        buf text;
        buf_init(&text, 0);
        mimeo_selector *s = NULL;
        mimeo_err e = {0};
        int rc = json_put_jval(&text, sel);
        if (rc == 0) rc = mimeo_selector_parse(text.data, text.len, &s, &e);
        mimeo_selector_free(s);
        if (rc != 0) {
            buf_destroy(&text);
            err_set(err, MIMEO_EINVAL, "bad_request", "%s", e.reason[0] ? e.reason : "bad selector");
            return MIMEO_EINVAL;
        }
        f->selector = repl_strndup(text.data, text.len);
        buf_destroy(&text);
        if (!f->selector) goto nomem;
    }
    if (filter && filter->type == JV_STRING && strcmp(filter->str, "_doc_ids") != 0) {
        if (f->selector) {
            err_set(err, MIMEO_EINVAL, "bad_request",
                    "`doc_ids`, `filter`, `selector` are mutually exclusive");
            return MIMEO_EINVAL;
        }
        const char *s = filter->str;
        const char *slash = strchr(s, '/');
        bool builtin = strcmp(s, "_view") == 0 || strcmp(s, "_design") == 0;
        if (!builtin && (!slash || slash == s || !slash[1] || strchr(slash + 1, '/'))) {
            err_set(err, MIMEO_EINVAL, "bad_request",
                    "`filter` must be of the form `designname/filtername`");
            return MIMEO_EINVAL;
        }
        if (!(f->name = repl_strndup(filter->str, filter->len))) goto nomem;
    } else if (filter && filter->type != JV_NULL && filter->type != JV_STRING) {
        err_set(err, MIMEO_EINVAL, "bad_request", "`filter` must be a string");
        return MIMEO_EINVAL;
    }
    if (qp && qp->type != JV_NULL) {
        if (qp->type != JV_OBJECT) {
            err_set(err, MIMEO_EINVAL, "bad_request", "`query_params` must be a JSON object");
            return MIMEO_EINVAL;
        }
        if (f->name && !(f->query_params = repl_jval_text(qp))) goto nomem;
    }
    if (f->name && strcmp(f->name, "_view") == 0) {
        const jval *view = qp ? jval_get(qp, "view") : NULL;
        if (!view || view->type != JV_STRING || !strchr(view->str, '/')) {
            err_set(err, MIMEO_EINVAL, "bad_request",
                    "filter _view needs query_params.view as `designname/viewname`");
            return MIMEO_EINVAL;
        }
    }
    return 0;
nomem:
    err_set(err, MIMEO_ENOMEM, "error", "out of memory");
    return MIMEO_ENOMEM;
}

/* A local source's rows come from one ascending changes cursor, one at a time; a function
 * costs a query-server round trip per call, so the filter reads the next rows of the same
 * feed itself and runs them through the function in one call. A verdict counts only for the
 * row of the same seq and revision (a document changed since is asked about again). */
#define AHEAD_DOCS  100
#define AHEAD_BYTES ((size_t)1 << 20)

typedef struct repl_filter_ahead {
    uint64_t seq[AHEAD_DOCS];
    size_t   rev_off[AHEAD_DOCS + 1];
    size_t   doc_off[AHEAD_DOCS + 1];
    bool     keep[AHEAD_DOCS];
    size_t   n, next;
    buf      revs, docs;
} repl_filter_ahead;

static void repl_filter_ahead_free(repl_filter_ahead *a) {
    if (!a) return;
    buf_destroy(&a->revs);
    buf_destroy(&a->docs);
    free(a);
}

void repl_filter_destroy(repl_filter *f) {
    repl_filter_ahead_free(f->ahead);
    free(f->selector);
    free(f->name);
    free(f->query_params);
    mimeo_selector_free(f->sel);
    if (f->pool) qs_pool_free(f->pool);
    buf_destroy(&f->ddoc_id);
    buf_destroy(&f->ddoc);
    buf_destroy(&f->fname);
    buf_destroy(&f->req);
    buf_destroy(&f->line);
    buf_destroy(&f->reply);
    buf_destroy(&f->doc);
    memset(f, 0, sizeof *f);
}

/* ---- a local source --------------------------------------------------------------------- */
/* The design document and the function's name, from "ddoc/name" (a filter) or
 * query_params.view (_view); then the pool and the req object. */
static int repl_filter_load(repl_filter *f, mimeo_db *db, mimeo_err *err) {
    const char *spec = f->name;
    jval *qp = NULL;
    if (f->query_params) json_tree_parse(f->query_params, strlen(f->query_params), NULL, &qp, NULL);
    bool view = strcmp(f->name, "_view") == 0;
    if (view) {
        const jval *v = jval_get(qp, "view");
        spec = v && v->type == JV_STRING ? v->str : "";
    }
    const char *slash = strchr(spec, '/');
    int rc = 0;
    if (!slash) {
        err_set(err, MIMEO_EINVAL, "bad_request", "bad filter %s", spec);
        rc = MIMEO_EINVAL;
        goto out;
    }
    buf_reset(&f->ddoc_id);
    buf_puts(&f->ddoc_id, "_design/");
    buf_put(&f->ddoc_id, spec, (size_t)(slash - spec));
    buf_reset(&f->fname);
    buf_puts(&f->fname, slash + 1);
    mimeo_cursor *cur = NULL;
    const mimeo_row *row = NULL;
    rc = mimeo_doc_open(db, f->ddoc_id.data, f->ddoc_id.len, NULL, &cur, err);
    if (rc == 0) rc = mimeo_cursor_next(cur, &row, err);
    if (rc == 0 && row) {
        buf_reset(&f->ddoc);
        buf_put(&f->ddoc, row->json, row->json_len);
    }
    mimeo_cursor_close(cur);
    if (rc != 0 || !row) {
        err_set(err, MIMEO_ENOTFOUND, "not_found", "could not open the filter's %s",
                buf_cstr(&f->ddoc_id));
        rc = MIMEO_ENOTFOUND;
        goto out;
    }
    char cmd[4200];
    const char *c = getenv("MIMEO_QUERY_SERVER");
    if (!c || !c[0]) {
        if (qs_default_command(cmd, sizeof cmd) != 0) {
            err_set(err, MIMEO_EIO, "os_process_error", "no JavaScript query server");
            rc = MIMEO_EIO;
            goto out;
        }
        c = cmd;
    }
    qs_config qc = { .command = c, .size = 1, .timeout_ms = 5000 };
    if ((rc = qs_pool_new(&qc, &f->pool)) != 0) {
        err_set(err, rc, "os_process_error", "cannot start the query server");
        goto out;
    }
    /* The replicator reads the source as the node itself: an admin with no name. */
    buf_reset(&f->req);
    static const char *const admin[] = { "_admin" };
    qs_req_info in = { .db = mimeo_db_name(db), .query_json = f->query_params,
                       .roles = admin, .nroles = 1 };
    rc = qs_filter_req(&f->req, &in);
out:
    jval_free(qp);
    return rc;
}

/* The document as a client sees it: _id, _rev, the body, _deleted. */
static int repl_filter_put_doc(buf *b, const mimeo_row *row) {
    buf_puts(b, "{\"_id\":");
    json_put_str(b, row->id, row->id_len);
    buf_puts(b, ",\"_rev\":");
    json_put_str(b, row->rev, row->rev_len);
    if (row->body_len > 2) {
        buf_putc(b, ',');
        buf_put(b, row->body + 1, row->body_len - 2);
    }
    if (row->deleted) buf_puts(b, ",\"_deleted\":true");
    return buf_putc(b, '}');
}

/* Runs text/offs (n documents) through the function in one call of a pool process. */
static int repl_filter_call(repl_filter *f, const char *text, const size_t *offs, size_t n,
                            bool *keep, mimeo_err *err) {
    bool view = strcmp(f->name, "_view") == 0;
    qs_proc *q = NULL;
    int rc = qs_acquire(f->pool, &q, err);
    if (rc != 0) return rc;
    rc = qs_proc_teach(q, f->ddoc.data, f->ddoc.len, f->ddoc_id.data, f->ddoc_id.len, f->ddoc.data,
                       f->ddoc.len, &f->line, &f->reply, err);
    if (rc == 0) {
        qs_filter_fn fn = {
            .ddoc_id = f->ddoc_id.data, .ddoc_id_len = f->ddoc_id.len, .view = view,
            .name = f->fname.data, .name_len = f->fname.len, .req = f->req.data,
            .req_len = f->req.len,
        };
        rc = qs_filter_docs(q, &fn, text, offs, n, &f->line, &f->reply, keep, NULL, NULL, err);
    }
    qs_release(f->pool, q);
    return rc;
}

/* The verdict for row if read ahead: 1 kept, 0 not, -1 unknown. */
static int repl_filter_ahead_get(repl_filter_ahead *a, const mimeo_row *row) {
    for (size_t i = a->next; i < a->n; i++) {
        if (a->seq[i] != row->seq) continue;
        a->next = i + 1;
        size_t rl = a->rev_off[i + 1] - a->rev_off[i];
        if (rl != row->rev_len || memcmp(a->revs.data + a->rev_off[i], row->rev, rl) != 0)
            return -1;
        return a->keep[i];
    }
    return -1;
}

/* Reads the rows from row's seq on (row's among them, unless its document changed since) and
 * runs them through the function in one call. */
static int repl_filter_ahead_fill(repl_filter *f, mimeo_db *db, const mimeo_row *row,
                                  mimeo_err *err) {
    repl_filter_ahead *a = f->ahead;
    if (!a) {
        if (!(a = calloc(1, sizeof *a))) return MIMEO_ENOMEM;
        buf_init(&a->revs, 0);
        buf_init(&a->docs, 0);
        f->ahead = a;
    }
    a->n = a->next = 0;
    buf_reset(&a->revs);
    buf_reset(&a->docs);
    mimeo_changes_opts o;
    memset(&o, 0, sizeof o);
    o.since = row->seq ? row->seq - 1 : 0;
    o.include_docs = true;
    mimeo_cursor *cur = NULL;
    int rc = mimeo_changes_open(db, &o, &cur, err);
    while (rc == 0 && a->n < AHEAD_DOCS && a->docs.len < AHEAD_BYTES) {
        const mimeo_row *r;
        if ((rc = mimeo_cursor_next(cur, &r, err)) != 0 || !r) break;
        if (!r->body) continue;
        a->seq[a->n] = r->seq;
        a->rev_off[a->n] = a->revs.len;
        a->doc_off[a->n] = a->docs.len;
        if (buf_put(&a->revs, r->rev, r->rev_len) || repl_filter_put_doc(&a->docs, r)) {
            rc = MIMEO_ENOMEM;
            break;
        }
        a->n++;
        a->rev_off[a->n] = a->revs.len;
        a->doc_off[a->n] = a->docs.len;
    }
    mimeo_cursor_close(cur);
    if (rc == 0) rc = repl_filter_call(f, a->docs.data, a->doc_off, a->n, a->keep, err);
    if (rc != 0) a->n = 0;
    return rc;
}

bool repl_filter_needs_body(const repl_filter *f) {
    return f->selector || (f->name && strcmp(f->name, "_design") != 0);
}

int repl_filter_row(repl_filter *f, mimeo_db *db, const mimeo_row *row, bool *keep,
                    mimeo_err *err) {
    *keep = false;
    if (f->name && strcmp(f->name, "_design") == 0) {
        *keep = row->id_len >= 8 && memcmp(row->id, "_design/", 8) == 0;
        return 0;
    }
    if (!row->body) return 0;
    int rc = 0;
    if (f->selector && !f->sel &&
        (rc = mimeo_selector_parse(f->selector, strlen(f->selector), &f->sel, err)) != 0)
        return rc;
    if (f->name && !f->pool && (rc = repl_filter_load(f, db, err)) != 0) return rc;
    if (!f->sel) {
        int v = f->ahead ? repl_filter_ahead_get(f->ahead, row) : -1;
        if (v < 0 && (rc = repl_filter_ahead_fill(f, db, row, err)) != 0) return rc;
        if (v < 0) v = repl_filter_ahead_get(f->ahead, row);
        if (v >= 0) {
            *keep = v;
            return 0;
        }
    }
    buf_reset(&f->doc);
    if ((rc = repl_filter_put_doc(&f->doc, row)) != 0) return rc;
    if (f->sel) return mimeo_selector_match(f->sel, f->doc.data, f->doc.len, keep);
    size_t offs[2] = {0, f->doc.len};
    return repl_filter_call(f, f->doc.data, offs, 1, keep, err);
}
