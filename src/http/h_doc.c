/* Documents: GET/HEAD/PUT/DELETE /{db}/{id} (design documents included) with CouchDB's
 * options, open_revs (JSON, or multipart/mixed for CouchDB's replicator), ETag and
 * If-None-Match, If-Match, new_edits=false and batch=ok; and the _local documents that hold
 * replication checkpoints. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_int.h"

/* The revision the client names: ?rev= or If-Match ("quoted"); both must agree. Returns
 * false after replying 400. *rev is NULL when neither is given; rev_buf holds If-Match's. */
/* The writer of this request for validate_doc_update: its user and the database's _security
 * (returned, free() it after the write). */
char *http_user_ctx(http_req *r, mimeo_user_ctx *u) {
    memset(u, 0, sizeof *u);
    char *sec = http_security_text(r);
    u->name = r->user.known ? r->user.name : NULL;
    u->roles = (const char *const *)r->user.roles;
    u->role_count = r->user.nroles;
    if (sec) {
        u->security = sec;
        u->security_len = strlen(sec);
    }
    return sec;
}

bool http_want_rev(http_req *r, const char **rev, char rev_buf[MIMEO_REV_MAX]) {
    size_t ql;
    const char *q = http_arg_get(r, "rev", &ql);
    const char *m = http_req_header(r, MHD_HTTP_HEADER_IF_MATCH);
    *rev = NULL;
    if (m) {
        while (*m == ' ') m++;
        if (m[0] == 'W' && m[1] == '/') m += 2;
        size_t ml = strlen(m);
        while (ml > 0 && m[ml - 1] == ' ') ml--;
        if (ml >= 2 && m[0] == '"' && m[ml - 1] == '"') { m++; ml -= 2; }
        if (ml == 0 || ml >= MIMEO_REV_MAX) {
            http_reply_error(r, 400, "bad_request", "Invalid rev format");
            return false;
        }
        memcpy(rev_buf, m, ml);
        rev_buf[ml] = '\0';
        *rev = rev_buf;
    }
    if (q) {
        if (*rev && strcmp(*rev, q) != 0) {
            http_reply_error(r, 400, "bad_request",
                             "Document rev and etag have different values");
            return false;
        }
        if (ql == 0 || ql >= MIMEO_REV_MAX || memchr(q, '\0', ql)) {
            http_reply_error(r, 400, "bad_request", "Invalid rev format");
            return false;
        }
        *rev = q;
    }
    return true;
}

/* Does If-None-Match name this ETag? */
static bool http_none_match(http_req *r, const char *rev, size_t rlen) {
    const char *h = http_req_header(r, MHD_HTTP_HEADER_IF_NONE_MATCH);
    if (!h) return false;
    for (const char *p = h; (p = strchr(p, '"')) != NULL; p++) {
        if (strncmp(p + 1, rev, rlen) == 0 && p[1 + rlen] == '"') return true;
    }
    return false;
}

static bool http_accepts_multipart_mixed(http_req *r) {
    const char *a = http_req_header(r, MHD_HTTP_HEADER_ACCEPT);
    return a && strcasestr(a, "multipart/mixed") != NULL;
}

/* ---- GET -------------------------------------------------------------------------------- */
static void http_doc_get_with(http_req *r, const char *id, size_t id_len,
                              const mimeo_get_opts *base) {
    mimeo_get_opts o = *base;
    bool meta = false, atts = false;
    if (http_arg_bool(r, "revs", &o.revs) < 0 ||
        http_arg_bool(r, "revs_info", &o.revs_info) < 0 ||
        http_arg_bool(r, "conflicts", &o.conflicts) < 0 ||
        http_arg_bool(r, "deleted_conflicts", &o.deleted_conflicts) < 0 ||
        http_arg_bool(r, "local_seq", &o.local_seq) < 0 ||
        http_arg_bool(r, "latest", &o.latest) < 0 ||
        http_arg_bool(r, "meta", &meta) < 0 ||
        http_arg_bool(r, "attachments", &atts) < 0)
        return;
    if (meta) o.conflicts = o.deleted_conflicts = o.revs_info = true;
    size_t rl;
    o.rev = http_arg_get(r, "rev", &rl);
    if (o.rev && (rl == 0 || rl >= MIMEO_REV_MAX || memchr(o.rev, '\0', rl))) {
        http_reply_error(r, 400, "bad_request", "Invalid rev format");
        return;
    }

    size_t ol;
    const char *open_revs = http_arg_get(r, "open_revs", &ol);
    if (open_revs) {
        /* "all", or a JSON array of revision strings; anything else is refused here so the
         * library only ever sees one of those two. */
        if (!(ol == 3 && memcmp(open_revs, "all", 3) == 0)) {
            jval *t = NULL;
            bool good = http_arg_json(r, "open_revs", &t) > 0 && t->type == JV_ARRAY;
            for (size_t i = 0; good && i < t->count; i++)
                if (t->items[i]->type != JV_STRING) good = false;
            if (t) jval_free(t);
            if (!r->resp && !good)
                http_reply_error(r, 400, "bad_request",
                                 "open_revs must be \"all\" or a JSON array of revisions");
            if (r->resp) return;
        }
        o.rev = NULL;
        if (!http_db(r)) return;
        mimeo_err e = {0};
        if (http_accepts_multipart_mixed(r)) {
            /* As CouchDB: attachment data (as follows parts) for every attachment that
             * atts_since does not exclude, asked for or not. */
            o.att_follows = true;
            o.att_encoding_info = true;
            if (!o.atts_since_count) o.attachments = true;
            mimeo_cursor *cur = NULL;
            int rc = mimeo_open_revs_open(r->db, id, id_len, open_revs, ol, &o, &cur, &e);
            if (rc != 0) http_reply_err(r, rc, &e);
            else http_reply_open_revs_mp(r, cur);
            mimeo_cursor_close(cur);
            return;
        }
        char *out = NULL;
        size_t len = 0;
        int rc = mimeo_doc_open_revs(r->db, id, id_len, open_revs, ol, &o, &out, &len, &e);
        if (rc != 0) {
            if (out) mimeo_free(out);
            http_reply_err(r, rc, &e);
            return;
        }
        http_reply_mimeo(r, 200, out, len);
        return;
    }

    if (!http_db(r)) return;
    /* attachment data as multipart/related when the client takes it */
    bool related = (o.attachments || o.atts_since_count) && http_accepts_related(r);
    if (related) o.att_follows = true;
    mimeo_cursor *cur = NULL;
    const mimeo_row *row = NULL;
    mimeo_err e = {0};
    int rc = mimeo_doc_open(r->db, id, id_len, &o, &cur, &e);
    if (rc == 0) rc = mimeo_cursor_next(cur, &row, &e);
    if (rc == 0 && !row) rc = MIMEO_EIO;
    if (rc != 0) {
        mimeo_cursor_close(cur);
        http_reply_err(r, rc, &e);
        return;
    }
    if (http_none_match(r, row->rev, row->rev_len)) {
        http_reply_static(r, 304, "");
        http_header_etag(r, row->rev, row->rev_len);
        mimeo_cursor_close(cur);
        return;
    }
    /* The reply takes the cursor (and may close it at once on failure): keep the rev. */
    char tag[MIMEO_REV_MAX];
    size_t tag_len = row->rev_len < sizeof tag ? row->rev_len : 0;
    memcpy(tag, row->rev, tag_len);
    if (related && http_reply_doc_mp(r, row)) {
        mimeo_cursor_close(cur);
        http_header_etag(r, tag, tag_len);
        return;
    }
    http_reply_row_json(r, 200, cur, row);
    http_header_etag(r, tag, tag_len);
}

/* The attachment options (h_att.c) hold memory for the whole read. */
static void http_doc_get(http_req *r, const char *id, size_t id_len) {
    http_att_opts h;
    mimeo_get_opts o = {0};
    if (http_att_opts_parse(r, &o, &h)) http_doc_get_with(r, id, id_len, &o);
    http_att_opts_free(&h);
}

/* ---- PUT / DELETE ----------------------------------------------------------------------- */
/* _local documents take no attachments, so no multipart body either. */
static bool http_refuse_multipart(http_req *r) {
    const char *ct = http_req_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (ct && strncasecmp(ct, "multipart/", 10) == 0) {
        http_reply_error(r, 415, "bad_content_type", "Content-Type must be application/json");
        return true;
    }
    return false;
}

/* A PUT or DELETE whose commit is waited for by no thread: the worker parses, validates and
 * hands the write to the store; the writer thread, once the commit is durable, makes the
 * reply here and resumes the connection. That is one thread hand-off a write fewer than a
 * worker waiting for the commit, and no worker held while the commit runs. */
typedef struct http_write_op {
    http_req   *r;
    const char *id;       /* the URL's (ids may contain NUL: its length is kept) */
    size_t      id_len;
    unsigned    status;   /* on success: 201 (then ETag and Location), 202 (batch=ok: neither)
                             or 200 (DELETE: ETag) */
} http_write_op;

static void http_doc_written(void *arg, int rc, const mimeo_put_result *res,
                             const mimeo_err *e) {
    http_write_op *op = arg;
    http_req *r = op->r;
    if (rc != 0) {
        http_reply_err(r, rc, e);
    } else {
        buf b;
        buf_init(&b, 0);
        /* new_edits=false must answer an object with the stored rev: CouchDB's replicator
         * parses it (an array here crash-loops it). */
        http_put_ok_id_rev(&b, op->id, op->id_len, op->status == 202 ? NULL : res->rev);
        http_reply_buf(r, op->status, &b);
        if (op->status != 202) http_header_etag(r, res->rev, strlen(res->rev));
        if (op->status == 201) http_header_location(r, r->seg[0], op->id, op->id_len);
    }
    free(op);
    http_async_end(r);
}

static http_write_op *http_write_op_new(http_req *r, const char *id, size_t id_len,
                                        unsigned status) {
    http_write_op *op = http_async_alloc(r, sizeof *op);
    if (op) *op = (http_write_op){r, id, id_len, status};
    return op;
}

static void http_doc_put(http_req *r, const char *id, size_t id_len) {
    char rev_buf[MIMEO_REV_MAX];
    mimeo_put_opts o = {0};
    /* a multipart/related body (h_multipart.c): its JSON part and its follows blobs */
    const char *json = r->body.data ? r->body.data : "";
    size_t json_len = r->body.len;
    if (http_mp_put_body(r, &json, &json_len, &o) < 0) return;
    bool new_edits = true;
    if (!http_want_rev(r, &o.rev, rev_buf) || http_arg_bool(r, "new_edits", &new_edits) < 0)
        return;
    o.new_edits_false = !new_edits;
    size_t bl;
    const char *bv = http_arg_get(r, "batch", &bl);
    bool batch = bv && bl == 2 && memcmp(bv, "ok", 2) == 0;
    if (!http_db(r)) return;

    http_write_op *op = http_write_op_new(r, id, id_len, batch ? 202 : 201);
    if (!op) return;
    mimeo_user_ctx user;
    char *sec = http_user_ctx(r, &user);
    o.user = &user;
    /* o.rev may point into rev_buf: the call takes what it needs before it returns. */
    mimeo_doc_put_async(r->db, id, id_len, json, json_len, &o, http_doc_written, op);
    free(sec);
}

static void http_doc_delete(http_req *r, const char *id, size_t id_len) {
    char rev_buf[MIMEO_REV_MAX];
    const char *rev;
    if (!http_want_rev(r, &rev, rev_buf)) return;
    if (!http_db(r)) return;
    if (!rev) {
        http_reply_error(r, 409, "conflict", "Document update conflict.");
        return;
    }
    http_write_op *op = http_write_op_new(r, id, id_len, 200);
    if (!op) return;
    mimeo_user_ctx user;
    char *sec = http_user_ctx(r, &user);
    mimeo_doc_delete_async(r->db, id, id_len, rev, &user, http_doc_written, op);
    free(sec);
}

void http_h_doc(http_req *r, const char *id, size_t id_len) {
    switch (r->method) {
    case HTTP_GET: case HTTP_HEAD: http_doc_get(r, id, id_len); return;
    case HTTP_PUT: http_doc_put(r, id, id_len); return;
    case HTTP_DELETE: http_doc_delete(r, id, id_len); return;
    default: http_reply_method(r, "DELETE,GET,HEAD,PUT"); return;
    }
}

/* ---- _local ----------------------------------------------------------------------------- */
/* Replies {"ok":true,"id":"_local/<id>","rev":…}. */
static void http_local_ok(http_req *r, unsigned status, const char *id, size_t id_len,
                          const char *rev) {
    buf b;
    buf_init(&b, 0);
    buf_puts(&b, "{\"ok\":true,\"id\":\"_local/");
    /* json_put_str writes the quotes itself: write the escaped id without them. */
    buf tmp;
    buf_init(&tmp, 0);
    json_put_str(&tmp, id, id_len);
    if (tmp.len >= 2) buf_put(&b, tmp.data + 1, tmp.len - 2);
    buf_destroy(&tmp);
    buf_puts(&b, "\",\"rev\":");
    json_put_cstr(&b, rev);
    buf_puts(&b, "}\n");
    http_reply_buf(r, status, &b);
}

void http_h_local(http_req *r, const char *id, size_t id_len) {
    char rev_buf[MIMEO_REV_MAX];
    const char *rev = NULL;
    mimeo_put_result res = {0};
    mimeo_err e = {0};
    int rc;

    switch (r->method) {
    case HTTP_GET: case HTTP_HEAD: {
        if (!http_db(r)) return;
        char *out = NULL;
        size_t len = 0;
        rc = mimeo_local_get(r->db, id, id_len, &out, &len, &e);
        if (rc != 0) {
            if (out) mimeo_free(out);
            /* CouchDB's replicator matches "not_found" exactly for a missing checkpoint. */
            http_reply_err(r, rc, &e);
            return;
        }
        http_reply_mimeo(r, 200, out, len);
        return;
    }
    case HTTP_PUT:
        if (http_refuse_multipart(r)) return;
        if (!http_want_rev(r, &rev, rev_buf) || !http_db(r)) return;
        rc = mimeo_local_put(r->db, id, id_len, r->body.data ? r->body.data : "", r->body.len,
                             rev, &res, &e);
        if (res.id) mimeo_free(res.id);
        if (rc != 0) {
            http_reply_err(r, rc, &e);
            return;
        }
        http_local_ok(r, 201, id, id_len, res.rev);
        return;
    case HTTP_DELETE:
        if (!http_want_rev(r, &rev, rev_buf) || !http_db(r)) return;
        rc = mimeo_local_delete(r->db, id, id_len, rev, &res, &e);
        if (res.id) mimeo_free(res.id);
        if (rc != 0) {
            http_reply_err(r, rc, &e);
            return;
        }
        http_local_ok(r, 200, id, id_len, res.rev);
        return;
    default:
        http_reply_method(r, "DELETE,GET,HEAD,PUT");
        return;
    }
}
