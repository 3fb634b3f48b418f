/* Replication endpoints: POST /_replicate, GET /_active_tasks, GET /_scheduler/jobs,
 * GET /_scheduler/docs[/_replicator/{docid}]. The work is done by the replicator's public
 * calls (mimeo_replicate, mimeo_active_tasks, mimeo_scheduler_*); these handlers only move
 * JSON and statuses. A one-shot POST /_replicate holds its connection's thread until the
 * replication ends, as CouchDB's does. */
#include <string.h>

#include "http_int.h"

void http_h_replicate(http_req *r) {
    if (r->method != HTTP_POST) {
        http_reply_method(r, "POST");
        return;
    }
    if (!http_is_json_ctype(r)) {
        http_reply_error(r, 415, "bad_content_type", "Content-Type must be application/json");
        return;
    }
    char *out = NULL;
    size_t len = 0;
    unsigned status = 500;
    mimeo_err e = {0};
    int rc = mimeo_replicate(r->srv->env, r->body.data ? r->body.data : "", r->body.len,
                             &out, &len, &status, &e);
    if (rc != 0) {
        http_reply_error(r, status, e.error[0] ? e.error : "error",
                         e.reason[0] ? e.reason : mimeo_strerror(rc));
        return;
    }
    http_reply_mimeo(r, status, out, len);
}

void http_h_active_tasks(http_req *r) {
    if (r->method != HTTP_GET && r->method != HTTP_HEAD) {
        http_reply_method(r, "GET,HEAD");
        return;
    }
    char *out = NULL;
    size_t len = 0;
    int rc = mimeo_active_tasks(r->srv->env, &out, &len);
    char *views = NULL;
    size_t vlen = 0;
    if (rc == 0) rc = mimeo_view_tasks(r->srv->env, &views, &vlen);
    if (rc != 0) {
        mimeo_free(out);
        http_reply_err(r, rc, NULL);
        return;
    }
    /* one array: the replications', then the index builds' ("[…]" + "[…]") */
    buf b;
    buf_init(&b, 0);
    buf_put(&b, out, len - 1);
    if (len > 2 && vlen > 2) buf_putc(&b, ',');
    buf_put(&b, views + 1, vlen - 1);
    mimeo_free(out);
    mimeo_free(views);
    http_reply_buf(r, 200, &b);
}

static bool h_repl_seg(const http_req *r, size_t i, const char *s) {
    return i < r->nseg && i < HTTP_MAX_SEGS && strlen(s) == r->seg_len[i] &&
           memcmp(r->seg[i], s, r->seg_len[i]) == 0;
}

void http_h_scheduler(http_req *r) {
    if (r->method != HTTP_GET && r->method != HTTP_HEAD) {
        http_reply_method(r, "GET,HEAD");
        return;
    }
    char *out = NULL;
    size_t len = 0;
    mimeo_err e = {0};
    int rc;
    if (r->nseg == 2 && h_repl_seg(r, 1, "jobs")) {
        rc = mimeo_scheduler_jobs(r->srv->env, &out, &len);
    } else if (r->nseg == 2 && h_repl_seg(r, 1, "docs")) {
        rc = mimeo_scheduler_docs(r->srv->env, NULL, &out, &len, &e);
    } else if (r->nseg == 3 && h_repl_seg(r, 1, "docs") && h_repl_seg(r, 2, "_replicator")) {
        rc = mimeo_scheduler_docs(r->srv->env, NULL, &out, &len, &e);
    } else if (r->nseg == 4 && h_repl_seg(r, 1, "docs") && h_repl_seg(r, 2, "_replicator")) {
        /* The doc id is one decoded segment; copied to terminate it. An id that does not
         * fit (or holds a NUL) names no job: cutting it could name another one. */
        char id[1024];
        size_t n = r->seg_len[3];
        if (n >= sizeof id || memchr(r->seg[3], '\0', n)) {
            http_reply_error(r, 404, "not_found", "missing");
            return;
        }
        memcpy(id, r->seg[3], n);
        id[n] = '\0';
        rc = mimeo_scheduler_docs(r->srv->env, id, &out, &len, &e);
    } else {
        http_reply_error(r, 404, "not_found", "missing");
        return;
    }
    if (rc != 0) {
        http_reply_err(r, rc, &e);
        return;
    }
    http_reply_mimeo(r, 200, out, len);
}
