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

int qs_filter_doc(qs_proc *q, const qs_filter_fn *fn, const char *doc, size_t doc_len,
                  buf *line, buf *reply, bool *keep, mimeo_err *thrown, mimeo_err *err) {
    *keep = false;
    if (thrown) memset(thrown, 0, sizeof *thrown);
    buf_reset(line);
    int rc = buf_puts(line, "[\"ddoc\",");
    rc |= json_put_str(line, fn->ddoc_id, fn->ddoc_id_len);
    rc |= buf_puts(line, fn->view ? ",[\"views\"," : ",[\"filters\",");
    rc |= json_put_str(line, fn->name, fn->name_len);
    rc |= buf_puts(line, fn->view ? ",\"map\"],[[" : "],[[");
    rc |= buf_put(line, doc, doc_len);
    rc |= buf_putc(line, ']');
    if (!fn->view) {
        rc |= buf_putc(line, ',');
        rc |= buf_put(line, fn->req, fn->req_len);
    }
    rc |= buf_puts(line, "]]");
    if (rc) {
        err_set(err, MIMEO_ENOMEM, "error", "out of memory");
        return MIMEO_ENOMEM;
    }
    if ((rc = qs_call(q, line->data, line->len, reply, err)) != 0) return rc;
    mimeo_err fe = {0};
    if (qs_reply_error(reply->data, reply->len, &fe)) {
        /* A function that throws for a document skips that document (CouchDB). */
        if (thrown) *thrown = fe;
        return 0;
    }
    /* [true,[bool]] for filters; for a view's map [true,[bool]] too (emitted or not). */
    const char *inner = strchr(buf_cstr(reply) + 1, '[');
    *keep = inner && strncmp(inner + 1, "true", 4) == 0;
    return 0;
}
