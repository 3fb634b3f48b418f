/* Database-level endpoints: /{db} (create, info, delete, POST a document) and the
 * replication endpoints that take a whole body: _bulk_docs, _bulk_get, _revs_diff, plus
 * _revs_limit, _compact and _ensure_full_commit (_security: h_security.c). */
#include <inttypes.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_int.h"

/* ---- /{db} ------------------------------------------------------------------------------ */
static void http_db_info(http_req *r) {
    if (!http_db(r)) return;
    mimeo_db_info info;
    int rc = mimeo_db_info_get(r->db, &info);
    if (rc != 0) {
        if (rc == MIMEO_ENOTFOUND) http_reply_error(r, 404, "not_found", "Database does not exist.");
        else http_reply_err(r, rc, NULL);
        return;
    }
    buf b;
    buf_init(&b, 0);
    buf_puts(&b, "{\"db_name\":");
    json_put_str(&b, r->seg[0], r->seg_len[0]);
    buf_printf(&b,
               ",\"purge_seq\":0,\"update_seq\":%" PRIu64
               ",\"sizes\":{\"file\":%" PRIu64 ",\"external\":%" PRIu64 ",\"active\":%" PRIu64
               "},\"props\":{},\"doc_del_count\":%" PRIu64 ",\"doc_count\":%" PRIu64
               ",\"disk_format_version\":8,\"compact_running\":false"
               ",\"cluster\":{\"q\":1,\"n\":1,\"w\":1,\"r\":1}"
               ",\"instance_start_time\":\"%" PRIu64 "\"}\n",
               info.update_seq, info.size_file, info.size_external, info.size_active,
               info.doc_del_count, info.doc_count, info.instance_start_time);
    http_reply_buf(r, 200, &b);
}

static void http_db_create(http_req *r) {
    mimeo_err e = {0};
    if (!mimeo_db_name_valid(r->seg[0], r->seg_len[0])) {
        http_db(r);   /* replies illegal_database_name with CouchDB's reason */
        return;
    }
    int rc = mimeo_db_create(r->srv->env, r->seg[0], &e);
    if (rc != 0) {
        http_reply_err(r, rc, &e);
        return;
    }
    http_reply_static(r, 201, "{\"ok\":true}\n");
    /* Location: http://host/db */
    const char *host = http_req_header(r, MHD_HTTP_HEADER_HOST);
    buf b;
    buf_init(&b, 0);
    buf_printf(&b, "http://%s/", host ? host : "localhost");
    for (size_t i = 0; i < r->seg_len[0]; i++) {
        char c = r->seg[0][i];
        if (c == '/') buf_puts(&b, "%2F");
        else if (c == '+') buf_puts(&b, "%2B");
        else if (c == '$') buf_puts(&b, "%24");
        else buf_putc(&b, c);
    }
    http_header(r, MHD_HTTP_HEADER_LOCATION, buf_cstr(&b));
    buf_destroy(&b);
}

static void http_db_delete(http_req *r) {
    if (http_arg_get(r, "rev", NULL)) {
        /* CouchDB's guard for scripts that lost the document id. */
        http_reply_error(r, 400, "bad_request",
                         "You tried to DELETE a database with a ?=rev parameter. Did you mean "
                         "to DELETE a document instead?");
        return;
    }
    if (!mimeo_db_name_valid(r->seg[0], r->seg_len[0])) {
        http_db(r);
        return;
    }
    mimeo_err e = {0};
    int rc = mimeo_db_delete(r->srv->env, r->seg[0], &e);
    if (rc == MIMEO_ENOTFOUND) {
        http_reply_error(r, 404, "not_found", "Database does not exist.");
        return;
    }
    if (rc != 0) {
        http_reply_err(r, rc, &e);
        return;
    }
    http_reply_static(r, 200, "{\"ok\":true}\n");
}

/* POST /{db}: a new document; the id comes from the body or is generated. Written as a PUT
 * is (h_doc.c): no worker waits for the commit; the reply is made on the writer thread. */
typedef struct http_post_op {
    http_req *r;
    bool      batch;   /* batch=ok: 202 without ETag */
} http_post_op;

static void http_db_posted(void *arg, int rc, const mimeo_put_result *res, const mimeo_err *e) {
    http_post_op *op = arg;
    http_req *r = op->r;
    if (rc != 0) {
        http_reply_err(r, rc, e);
    } else {
        buf b;
        buf_init(&b, 0);
        http_put_ok_id_rev(&b, res->id ? res->id : "", res->id ? res->id_len : 0,
                           op->batch ? NULL : res->rev);
        http_reply_buf(r, op->batch ? 202 : 201, &b);
        if (!op->batch) http_header_etag(r, res->rev, strlen(res->rev));
        if (res->id) http_header_location(r, r->seg[0], res->id, res->id_len);
    }
    free(op);
    http_async_end(r);
}

static void http_db_post(http_req *r) {
    if (!http_require_json(r) || !http_db(r)) return;
    bool batch = false;
    size_t bl;
    const char *bv = http_arg_get(r, "batch", &bl);
    if (bv && bl == 2 && memcmp(bv, "ok", 2) == 0) batch = true;
    http_post_op *op = malloc(sizeof *op);
    if (!op) {
        http_reply_error(r, 500, "internal_server_error", "out of memory");
        return;
    }
    *op = (http_post_op){r, batch};
    http_async_begin(r);
    mimeo_put_opts o = {0};
    mimeo_user_ctx user;
    char *sec = http_user_ctx(r, &user);
    o.user = &user;
    mimeo_doc_put_async(r->db, NULL, 0, r->body.data ? r->body.data : "", r->body.len, &o,
                        http_db_posted, op);
    free(sec);
}

void http_h_db(http_req *r) {
    switch (r->method) {
    case HTTP_GET: case HTTP_HEAD: http_db_info(r); return;
    case HTTP_PUT: http_db_create(r); return;
    case HTTP_DELETE: http_db_delete(r); return;
    case HTTP_POST: http_db_post(r); return;
    default: http_reply_method(r, "DELETE,GET,HEAD,POST,PUT"); return;
    }
}

/* ---- replication endpoints -------------------------------------------------------------- */
static bool http_is_design(const jval *doc) {
    const jval *id = jval_get(doc, "_id");
    return id && id->type == JV_STRING && id->len >= 8 && memcmp(id->str, "_design/", 8) == 0;
}

/* A member's _bulk_docs holding design documents (authz.c set r->bulk_no_design): the others
 * are written and each design document gets CouchDB's per-entry error in its place. With
 * all_or_nothing nothing may be written, so the whole request is refused. */
/* A member's _bulk_docs results, as the library hands them over entry by entry. */
typedef struct bulk_results {
    buf     text;
    size_t *ends;
    size_t  n, cap;
} bulk_results;

static void bulk_results_destroy(bulk_results *b) {
    buf_destroy(&b->text);
    free(b->ends);
}

/* One entry as CouchDB's _bulk_docs reply lists it. */
static int bulk_result_put(void *ctx, const mimeo_bulk_entry *e) {
    bulk_results *b = ctx;
    buf *o = &b->text;
    if (ARRAY_GROW(b->ends, b->cap, b->n + 1)) return MIMEO_ENOMEM;
    int rc = buf_puts(o, e->code ? "{\"id\":" : "{\"ok\":true,\"id\":");
    if (!rc) rc = json_put_str(o, e->id, e->id_len);
    if (!rc && e->rev) rc = buf_puts(o, ",\"rev\":");
    if (!rc && e->rev) rc = json_put_cstr(o, e->rev);
    if (!rc && e->code) {
        rc = buf_puts(o, ",\"error\":");
        if (!rc) rc = json_put_cstr(o, e->error ? e->error : "unknown_error");
        if (!rc) rc = buf_puts(o, ",\"reason\":");
        if (!rc) rc = json_put_cstr(o, e->reason ? e->reason : "");
    }
    if (!rc) rc = buf_putc(o, '}');
    if (!rc) b->ends[b->n++] = o->len;
    return rc;
}

/* Appends result k to out, after a comma unless it is the first of the reply (*n counts). */
static int bulk_result_copy(buf *out, const bulk_results *b, size_t k, size_t *n) {
    size_t from = k ? b->ends[k - 1] : 0;
    int rc = (*n)++ ? buf_putc(out, ',') : 0;
    return rc ? rc : buf_put(out, b->text.data + from, b->ends[k] - from);
}

/* _bulk_docs without a worker waiting for its group commit: the worker parses and validates
 * the batch and queues its write, then goes back to the pool with the connection suspended.
 * The store's completion, on the writer thread, makes a small reply there; a big one is
 * handed to a worker, since the next group waits for the writer. */
#define HTTP_BULK_REPLY_INLINE 64   /* documents whose reply the writer thread builds */

typedef struct http_bulk_op {
    http_task          task;      /* a big reply, built on a worker */
    http_req          *r;
    mimeo_bulk_result *res;
    pthread_t          caller;    /* the worker that made the call */
    /* a member's batch with design documents (http_bulk_docs_no_design), else NULL */
    jval              *body;
    size_t             kept;      /* its documents written */
    size_t             entries;   /* its reply's entries: what the reply costs to build */
} http_bulk_op;

/* A member's batch: the library's entries with each design document's refusal in its
 * place. */
static void http_bulk_no_design_reply(http_bulk_op *op, mimeo_bulk_result *bres) {
    http_req *r = op->r;
    const char *reason = "You are not a db or server admin.";
    const char *error = r->user.known ? "forbidden" : "unauthorized";
    const jval *docs = jval_get(op->body, "docs");
    /* The library's entries as JSON in one buffer, each ending at ends[k]. */
    bulk_results res = {0};
    buf_init(&res.text, 0);
    mimeo_err e = {0};
    int rc = mimeo_bulk_result_entries(bres, bulk_result_put, &res, &e);
    if (rc != 0) {
        bulk_results_destroy(&res);
        http_reply_err(r, rc, &e);
        return;
    }
    /* One result per written document, in order (new_edits: false lists failures only, so
     * then the refusals follow them). */
    buf outb;
    buf_init(&outb, 0);
    bool aligned = res.n == op->kept;
    rc = buf_putc(&outb, '[');
    size_t next = 0, n = 0;
    for (size_t i = 0; rc == 0 && i < docs->count; i++) {
        const jval *d = docs->items[i];
        if (!http_is_design(d)) {
            if (aligned) rc |= bulk_result_copy(&outb, &res, next++, &n);
            continue;
        }
        for (; rc == 0 && !aligned && next < res.n; next++)
            rc |= bulk_result_copy(&outb, &res, next, &n);
        if (n++) rc |= buf_putc(&outb, ',');
        const jval *id = jval_get(d, "_id");
        rc |= buf_puts(&outb, "{\"id\":");
        rc |= json_put_str(&outb, id->str, id->len);
        rc |= buf_printf(&outb, ",\"error\":\"%s\",\"reason\":", error);
        rc |= json_put_cstr(&outb, reason);
        rc |= buf_putc(&outb, '}');
    }
    for (; rc == 0 && next < res.n; next++) rc |= bulk_result_copy(&outb, &res, next, &n);
    rc |= buf_puts(&outb, "]\n");
    bulk_results_destroy(&res);
    if (rc != 0) {
        buf_destroy(&outb);
        http_reply_err(r, MIMEO_ENOMEM, NULL);
        return;
    }
    http_reply_buf(r, 201, &outb);
}

static void http_bulk_reply(http_req *r, mimeo_bulk_result *res) {
    char *out = NULL;
    size_t len = 0;
    mimeo_err e = {0};
    int rc = mimeo_bulk_result_take(res, &out, &len, &e);
    if (rc == MIMEO_EEXPECTATION && out) {
        /* all_or_nothing: the failures, and nothing was written. */
        http_reply_mimeo(r, 417, out, len);
        return;
    }
    http_reply_result(r, rc, 201, out, len, &e);
}

/* The reply, then the connection resumes; op is freed. */
static void http_bulk_finish(http_bulk_op *op, mimeo_bulk_result *res) {
    http_req *r = op->r;
    if (op->body) http_bulk_no_design_reply(op, res);
    else http_bulk_reply(r, res);
    jval_free(op->body);
    free(op);
    http_async_end(r);
}

static void http_bulk_reply_task(http_task *t) {
    http_bulk_op *op = (http_bulk_op *)((char *)t - offsetof(http_bulk_op, task));
    http_bulk_finish(op, op->res);
}

static void http_bulk_done(void *arg, mimeo_bulk_result *res) {
    http_bulk_op *op = arg;
    size_t entries = op->body ? op->entries : mimeo_bulk_result_count(res);
    if (entries > HTTP_BULK_REPLY_INLINE &&
        !pthread_equal(pthread_self(), op->caller)) {
        op->res = res;
        op->task = (http_task){.run = http_bulk_reply_task};
        http_loop_submit(op->r->srv, &op->task);
        return;
    }
    http_bulk_finish(op, res);
}

/* The connection suspended until op's reply (NULL, with 500 answered, out of memory). */
static http_bulk_op *http_bulk_op_new(http_req *r) {
    http_bulk_op *op = http_async_alloc(r, sizeof *op);
    if (op) *op = (http_bulk_op){.r = r, .caller = pthread_self()};
    return op;
}

static void http_bulk_docs_no_design(http_req *r) {
    const char *reason = "You are not a db or server admin.";
    const char *error = r->user.known ? "forbidden" : "unauthorized";
    jval *body = NULL;
    json_error je = {0};
    if (json_tree_parse(r->body.data ? r->body.data : "", r->body.len, &r->srv->limits, &body,
                        &je) != 0) {
        http_reply_err(r, je.code ? je.code : MIMEO_EBADJSON, &je);
        return;
    }
    const jval *docs = jval_get(body, "docs"), *aon = jval_get(body, "all_or_nothing");
    if (!docs || docs->type != JV_ARRAY) {
        jval_free(body);
        http_reply_error(r, 400, "bad_request", "POST body must include `docs` parameter.");
        return;
    }
    if (aon && aon->type == JV_BOOL && aon->boolean) {
        jval_free(body);
        http_reply_error(r, r->user.known ? 403 : 401, error, reason);
        return;
    }
    /* The body without its design documents; the other members as sent. */
    buf in;
    buf_init(&in, 0);
    int rc = buf_putc(&in, '{');
    for (size_t i = 0, n = 0; rc == 0 && i < body->count; i++) {
        if (strcmp(body->keys[i], "docs") == 0) continue;
        if (n++) rc |= buf_putc(&in, ',');
        rc |= json_put_key(&in, body->keys[i]);
        rc |= json_put_jval(&in, body->items[i]);
    }
    rc |= buf_puts(&in, in.len > 1 ? ",\"docs\":[" : "\"docs\":[");
    size_t kept = 0;
    for (size_t i = 0; rc == 0 && i < docs->count; i++) {
        if (http_is_design(docs->items[i])) continue;
        if (kept++) rc |= buf_putc(&in, ',');
        rc |= json_put_jval(&in, docs->items[i]);
    }
    rc |= buf_puts(&in, "]}");
    if (rc != 0) {
        buf_destroy(&in);
        jval_free(body);
        http_reply_err(r, MIMEO_ENOMEM, NULL);
        return;
    }
    http_bulk_op *op = http_bulk_op_new(r);
    if (!op) {
        buf_destroy(&in);
        jval_free(body);
        return;
    }
    op->body = body;
    op->kept = kept;
    op->entries = docs->count;
    /* What the library parses is `in`, read before the call returns; op keeps the tree
     * for the reply. validate_doc_update sees the member (the cap was checked on the body
     * as sent, http_caps_refuse). */
    mimeo_user_ctx user;
    char *sec = http_user_ctx(r, &user);
    mimeo_bulk_docs_opts bo = {.user = &user};
    mimeo_bulk_docs_async(r->db, in.data, in.len, &bo, http_bulk_done, op);
    free(sec);
    buf_destroy(&in);
}

void http_h_bulk_docs(http_req *r) {
    if (!http_require_json(r) || !http_db(r)) return;
    if (r->bulk_no_design) {
        http_bulk_docs_no_design(r);
        return;
    }
    http_bulk_op *op = http_bulk_op_new(r);
    if (!op) return;
    mimeo_user_ctx user;
    char *sec = http_user_ctx(r, &user);
    mimeo_bulk_docs_opts bo = {.user = &user, .max_docs = http_caps_bulk_docs(r)};
    mimeo_bulk_docs_async(r->db, r->body.data ? r->body.data : "", r->body.len, &bo,
                          http_bulk_done, op);
    free(sec);
}

void http_h_bulk_get(http_req *r) {
    static const char *const refused[] = { "rev", "open_revs", "atts_since", "new_edits", "w" };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        if (http_arg_get(r, refused[i], NULL)) {
            char reason[96];
            snprintf(reason, sizeof reason, "`%s` is not supported as a query parameter of "
                     "_bulk_get", refused[i]);
            http_reply_error(r, 400, "bad_request", reason);
            return;
        }
    }
    mimeo_get_opts o = {0};
    if (http_arg_bool(r, "revs", &o.revs) < 0 || http_arg_bool(r, "latest", &o.latest) < 0)
        return;
    if (http_arg_bool(r, "attachments", &o.attachments) < 0 ||
        http_arg_bool(r, "att_encoding_info", &o.att_encoding_info) < 0)
        return;
    if (!http_db(r)) return;
    /* Streamed entry by entry: a small request may name large documents many times. */
    mimeo_cursor *cur = NULL;
    mimeo_err e = {0};
    int rc = mimeo_bulk_get_open(r->db, r->body.data ? r->body.data : "", r->body.len, &o,
                                 &cur, &e);
    if (rc != 0) http_reply_err(r, rc, &e);
    else http_reply_cursor(r, 200, cur, "{\"results\":[", "]}\n");
}

void http_h_revs_diff(http_req *r) {
    if (!http_db(r)) return;
    mimeo_cursor *cur = NULL;
    mimeo_err e = {0};
    int rc = mimeo_revs_diff_open(r->db, r->body.data ? r->body.data : "", r->body.len, &cur,
                                  &e);
    if (rc != 0) http_reply_err(r, rc, &e);
    else http_reply_cursor(r, 200, cur, "{", "}\n");
}

/* ---- settings and maintenance ----------------------------------------------------------- */
void http_h_revs_limit(http_req *r) {
    if (!http_db(r)) return;
    if (r->method != HTTP_PUT) {
        mimeo_db_info info;
        int rc = mimeo_db_info_get(r->db, &info);
        if (rc != 0) {
            http_reply_err(r, rc, NULL);
            return;
        }
        buf b;
        buf_init(&b, 0);
        buf_printf(&b, "%u\n", info.revs_limit);
        http_reply_buf(r, 200, &b);
        return;
    }
    jval *v = NULL;
    json_error je = {0};
    int64_t n = 0;
    if (json_tree_parse(r->body.data ? r->body.data : "", r->body.len, &r->srv->limits, &v,
                        &je) != 0 || !jval_as_i64(v, &n) || n <= 0 || n > (int64_t)UINT32_MAX) {
        if (v) jval_free(v);
        http_reply_error(r, 400, "bad_request", "`revs_limit` must be a positive integer");
        return;
    }
    jval_free(v);
    mimeo_err e = {0};
    int rc = mimeo_db_revs_limit_set(r->db, (unsigned)n, &e);
    if (rc != 0) {
        http_reply_err(r, rc, &e);
        return;
    }
    http_reply_static(r, 200, "{\"ok\":true}\n");
}

void http_h_compact(http_req *r) {
    if (!http_db(r)) return;
    mimeo_err e = {0};
    int rc = mimeo_db_compact(r->db, &e);
    if (rc != 0) {
        http_reply_err(r, rc, &e);
        return;
    }
    http_reply_static(r, 202, "{\"ok\":true}\n");
}

void http_h_ensure_full_commit(http_req *r) {
    /* Every acknowledged write is already durable; CouchDB's replicator needs the 201 and
     * the same instance_start_time as GET /{db}. */
    if (!http_db(r)) return;
    mimeo_db_info info;
    int rc = mimeo_db_info_get(r->db, &info);
    if (rc != 0) {
        http_reply_err(r, rc, NULL);
        return;
    }
    buf b;
    buf_init(&b, 0);
    buf_printf(&b, "{\"ok\":true,\"instance_start_time\":\"%" PRIu64 "\"}\n",
               info.instance_start_time);
    http_reply_buf(r, 201, &b);
}
