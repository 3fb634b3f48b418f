/* Filter functions on a query server, for both callers that run them: the _changes feed
 * (src/http/h_filter.c) and a replication's local source (src/repl/repl_filter.c). One
 * builder of CouchDB's req object and one call that runs a document through a filter
 * function, or through a view's map used as a filter. */
#include <string.h>

#include "qs.h"
#include "../common/err.h"
#include "../json/json.h"

static int qs_put_or(buf *b, const char *json, const char *dflt) {
    return buf_puts(b, json ? json : dflt);
}

int qs_filter_req(buf *b, const qs_req_info *in) {
    const char *db = in->db;
    int rc = buf_puts(b, "{\"info\":{\"db_name\":");
    rc |= json_put_cstr(b, db);
    rc |= buf_puts(b, "},\"id\":null,\"uuid\":null,\"method\":");
    rc |= json_put_cstr(b, in->method ? in->method : "GET");
    rc |= buf_puts(b, ",\"requested_path\":[");
    rc |= json_put_cstr(b, db);
    rc |= buf_puts(b, ",\"_changes\"],\"path\":[");
    rc |= json_put_cstr(b, db);
    rc |= buf_puts(b, ",\"_changes\"],\"raw_path\":");
    if (in->raw_path) {
        rc |= json_put_str(b, in->raw_path, in->raw_path_len);
    } else {
        buf raw;
        buf_init(&raw, 0);
        rc |= buf_putc(&raw, '/');
        rc |= buf_puts(&raw, db);
        rc |= buf_puts(&raw, "/_changes");
        rc |= json_put_str(b, raw.data, raw.len);
        buf_destroy(&raw);
    }
    rc |= buf_puts(b, ",\"query\":");
    rc |= qs_put_or(b, in->query_json, "{}");
    rc |= buf_puts(b, ",\"headers\":");
    rc |= qs_put_or(b, in->headers_json, "{}");
    rc |= buf_puts(b, ",\"body\":");
    if (in->body && in->body_len) rc |= json_put_str(b, in->body, in->body_len);
    else rc |= buf_puts(b, "\"undefined\"");
    rc |= buf_puts(b, ",\"peer\":");
    rc |= json_put_cstr(b, in->peer ? in->peer : "127.0.0.1");
    rc |= buf_puts(b, ",\"form\":{},\"cookie\":{},\"userCtx\":{\"db\":");
    rc |= json_put_cstr(b, db);
    rc |= buf_puts(b, ",\"name\":");
    if (in->user_name) rc |= json_put_cstr(b, in->user_name);
    else rc |= buf_puts(b, "null");
    rc |= buf_puts(b, ",\"roles\":[");
    for (size_t i = 0; i < in->nroles; i++) {
        if (i) rc |= buf_putc(b, ',');
        rc |= json_put_cstr(b, in->roles[i]);
    }
    rc |= buf_puts(b, "]},\"secObj\":");
    rc |= qs_put_or(b, in->sec_json, "{}");
    rc |= buf_putc(b, '}');
    return rc ? MIMEO_ENOMEM : 0;
}

/* The request line for docs[0..n) (doc i is text[offs[i]..offs[i+1])). */
static int qs_filter_line(buf *line, const qs_filter_fn *fn, const char *text,
                          const size_t *offs, size_t from, size_t to) {
    buf_reset(line);
    int rc = buf_puts(line, "[\"ddoc\",");
    rc |= json_put_str(line, fn->ddoc_id, fn->ddoc_id_len);
    rc |= buf_puts(line, fn->view ? ",[\"views\"," : ",[\"filters\",");
    rc |= json_put_str(line, fn->name, fn->name_len);
    rc |= buf_puts(line, fn->view ? ",\"map\"],[[" : "],[[");
    for (size_t i = from; i < to; i++) {
        if (i > from) rc |= buf_putc(line, ',');
        rc |= buf_put(line, text + offs[i], offs[i + 1] - offs[i]);
    }
    rc |= buf_putc(line, ']');
    if (!fn->view) {
        rc |= buf_putc(line, ',');
        rc |= buf_put(line, fn->req, fn->req_len);
    }
    rc |= buf_puts(line, "]]");
    return rc ? MIMEO_ENOMEM : 0;
}

/* keep[0..n) from a [true,[bool…]] reply; false when it is not one of n answers. */
static bool qs_filter_verdicts(const buf *reply, size_t n, bool *keep) {
    jval *t = NULL;
    json_limits lim = {0, reply->len + 1};
    bool ok = json_tree_parse(reply->data, reply->len, &lim, &t, NULL) == 0 &&
              t->type == JV_ARRAY && t->count == 2 && t->items[1]->type == JV_ARRAY &&
              t->items[1]->count == n;
    for (size_t i = 0; ok && i < n; i++) {
        const jval *v = t->items[1]->items[i];
        keep[i] = v->type == JV_BOOL && v->boolean;
    }
    if (t) jval_free(t);
    return ok;
}

int qs_filter_docs(qs_proc *q, const qs_filter_fn *fn, const char *text, const size_t *offs,
                   size_t n, buf *line, buf *reply, bool *keep, qs_thrown_fn thrown,
                   void *ctx, mimeo_err *err) {
    for (size_t i = 0; i < n; i++) keep[i] = false;
    if (!n) return 0;
    int rc = qs_filter_line(line, fn, text, offs, 0, n);
    if (rc) {
        err_set(err, MIMEO_ENOMEM, "error", "out of memory");
        return rc;
    }
    if ((rc = qs_call(q, line->data, line->len, reply, err)) != 0) return rc;
    mimeo_err fe = {0};
    if (!qs_reply_error(reply->data, reply->len, &fe)) {
        if (qs_filter_verdicts(reply, n, keep)) return 0;
        err_set(err, MIMEO_EIO, "os_process_error", "the query server's filter reply is not "
                "one answer per document");
        return MIMEO_EIO;
    }
    /* A query server that stops at the first document that throws (CouchDB's own): one call
     * per document then, so only the documents that throw are skipped (CouchDB). */
    for (size_t i = 0; i < n; i++) {
        if (n == 1) {
            if (thrown) thrown(ctx, 0, &fe);
            return 0;
        }
        if ((rc = qs_filter_line(line, fn, text, offs, i, i + 1)) != 0) {
            err_set(err, MIMEO_ENOMEM, "error", "out of memory");
            return rc;
        }
        if ((rc = qs_call(q, line->data, line->len, reply, err)) != 0) return rc;
        memset(&fe, 0, sizeof fe);
        if (qs_reply_error(reply->data, reply->len, &fe)) {
            if (thrown) thrown(ctx, i, &fe);
        } else if (!qs_filter_verdicts(reply, 1, &keep[i])) {
            err_set(err, MIMEO_EIO, "os_process_error", "bad filter reply");
            return MIMEO_EIO;
        }
    }
    return 0;
}

static void qs_filter_thrown_one(void *ctx, size_t i, const mimeo_err *e) {
    (void)i;
    *(mimeo_err *)ctx = *e;
}

int qs_filter_doc(qs_proc *q, const qs_filter_fn *fn, const char *doc, size_t doc_len,
                  buf *line, buf *reply, bool *keep, mimeo_err *thrown, mimeo_err *err) {
    size_t offs[2] = {0, doc_len};
    mimeo_err fe = {0};
    int rc = qs_filter_docs(q, fn, doc, offs, 1, line, reply, keep, qs_filter_thrown_one, &fe,
                            err);
    if (thrown) *thrown = fe;
    return rc;
}
