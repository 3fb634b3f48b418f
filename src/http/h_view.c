/* Views over HTTP: GET/POST /{db}/_design/{ddoc}/_view/{view}[/queries],
 * GET /{db}/_design/{ddoc}/_info and POST /{db}/_view_cleanup. The query parameters (URL
 * arguments, and for POST the body's members, which win) become one JSON object for
 * mimeo_view_open; the reply streams from the reader, one piece per call. */
#include <stdlib.h>
#include <string.h>

#include "http_int.h"

typedef struct http_view_stream {
    mimeo_view_reader *rd;
    const char        *text;
    size_t             len, pos;
    bool               end;
} http_view_stream;

static void http_view_free(void *cls) {
    http_view_stream *s = cls;
    mimeo_view_close(s->rd);
    free(s);
}

static ssize_t http_view_read(void *cls, uint64_t pos, char *dst, size_t max) {
    http_view_stream *s = cls;
    (void)pos;
    while (s->pos == s->len) {
        if (s->end) return MHD_CONTENT_READER_END_OF_STREAM;
        mimeo_err e = {0};
        if (mimeo_view_read(s->rd, &s->text, &s->len, &e) != 0)
            return MHD_CONTENT_READER_END_WITH_ERROR;
        s->pos = 0;
        if (s->len == 0) s->end = true;
    }
    size_t n = s->len - s->pos < max ? s->len - s->pos : max;
    memcpy(dst, s->text + s->pos, n);
    s->pos += n;
    return (ssize_t)n;
}

/* Arguments whose value is a document id, taken as text; and those that must be JSON. */
static bool http_view_docid_arg(const char *k) {
    return !strcmp(k, "startkey_docid") || !strcmp(k, "start_key_doc_id") ||
           !strcmp(k, "endkey_docid") || !strcmp(k, "end_key_doc_id");
}

static bool http_view_json_arg(const char *k) {
    return !strcmp(k, "key") || !strcmp(k, "keys") || !strcmp(k, "startkey") ||
           !strcmp(k, "start_key") || !strcmp(k, "endkey") || !strcmp(k, "end_key");
}

/* The parameters as one JSON object into out; false after replying 400. */
static bool http_view_params(http_req *r, buf *out, bool *has_queries) {
    jval *body = NULL;
    if (r->method == HTTP_POST) {
        json_error je = {0};
        if (json_tree_parse(r->body.data ? r->body.data : "", r->body.len, &r->srv->limits,
                            &body, &je) != 0 || body->type != JV_OBJECT) {
            if (body) jval_free(body);
            http_reply_error(r, 400, "bad_request", "Request body must be a JSON object");
            return false;
        }
    }
    *has_queries = jval_get(body, "queries") != NULL;
    buf_putc(out, '{');
    size_t n = 0;
    for (size_t i = 0; body && i < body->count; i++) {
        if (n++) buf_putc(out, ',');
        json_put_key(out, body->keys[i]);
        json_put_jval(out, body->items[i]);
    }
    for (size_t i = 0; i < r->nargs; i++) {
        const http_arg *a = &r->args[i];
        if (body && jval_get(body, a->key)) continue;
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++) seen = !strcmp(r->args[j].key, a->key);
        if (seen) continue;   /* the first of repeated arguments */
        if (n++) buf_putc(out, ',');
        json_put_key(out, a->key);
        jval *v = NULL;
        if (!http_view_docid_arg(a->key) &&
            json_tree_parse(a->val, a->val_len, &r->srv->limits, &v, NULL) == 0) {
            json_put_jval(out, v);
            jval_free(v);
        } else if (http_view_json_arg(a->key)) {
            if (body) jval_free(body);
            http_reply_error(r, 400, "bad_request", "invalid_json");
            return false;
        } else {
            json_put_str(out, a->val, a->val_len);
        }
    }
    if (body) jval_free(body);
    return buf_putc(out, '}') == 0;
}

/* /{db}/_design/{ddoc}/_view/{view}[/queries] */
static void http_h_view(http_req *r) {
    bool queries = r->nseg == 6 && http_seg_is(r, 5, "queries");
    if (r->nseg != 5 && !queries) {
        http_reply_error(r, 404, "not_found", "missing");
        return;
    }
    if (queries ? r->method != HTTP_POST
                : r->method != HTTP_GET && r->method != HTTP_HEAD && r->method != HTTP_POST) {
        http_reply_method(r, queries ? "POST" : "GET,HEAD,POST");
        return;
    }
    if (!http_db(r)) return;
    buf params;
    buf_init(&params, 0);
    bool has_queries = false;
    if (!http_view_params(r, &params, &has_queries)) {
        buf_destroy(&params);
        return;
    }
    if (queries && !has_queries) {
        buf_destroy(&params);
        http_reply_error(r, 400, "bad_request", "`queries` member must be provided.");
        return;
    }
    mimeo_view_reader *rd = NULL;
    mimeo_err e = {0};
    int rc = mimeo_view_open(r->db, r->seg[2], r->seg_len[2], r->seg[4], r->seg_len[4],
                             params.data, params.len, &rd, &e);
    buf_destroy(&params);
    if (rc != 0) {
        http_reply_err(r, rc, &e);
        return;
    }
    http_view_stream *s = calloc(1, sizeof *s);
    if (!s) {
        mimeo_view_close(rd);
        http_reply_err(r, MIMEO_ENOMEM, NULL);
        return;
    }
    s->rd = rd;
    http_reply_stream(r, 200, NULL, http_view_read, s, http_view_free);
}

static void http_h_design_info(http_req *r) {
    if (r->nseg != 4) {
        http_reply_error(r, 404, "not_found", "missing");
        return;
    }
    if (r->method != HTTP_GET && r->method != HTTP_HEAD) {
        http_reply_method(r, "GET,HEAD");
        return;
    }
    if (!http_db(r)) return;
    char *out = NULL;
    size_t len = 0;
    mimeo_err e = {0};
    int rc = mimeo_view_info(r->db, r->seg[2], r->seg_len[2], &out, &len, &e);
    if (rc != 0) {
        http_reply_err(r, rc, &e);
        return;
    }
    http_reply_mimeo(r, 200, out, len);
}

void http_h_design(http_req *r) {
    if (http_seg_is(r, 3, "_view")) http_h_view(r);
    else http_h_design_info(r);
}

void http_h_view_cleanup(http_req *r) {
    if (!http_db(r)) return;
    mimeo_err e = {0};
    int rc = mimeo_view_cleanup(r->db, &e);
    if (rc != 0) {
        http_reply_err(r, rc, &e);
        return;
    }
    http_reply_static(r, 202, "{\"ok\":true}");
}
