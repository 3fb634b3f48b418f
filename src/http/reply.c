/* Replies: the one status table (MIMEO_E* codes and CouchDB error names → HTTP status),
 * CouchDB-shaped JSON errors, the headers every reply carries (Content-Type, Cache-Control,
 * Server, CORS), and small helpers the handlers share. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_int.h"

/* ---- the status table ------------------------------------------------------------------- */
/* One row per CouchDB error. Rows with code 0 are reached by name only (errors the HTTP
 * layer raises itself). Lookup prefers the name the library chose, since one code can
 * map to several names (MIMEO_ETOOLARGE is document_too_large or too_large). */
static const struct http_status_row {
    int         code;
    const char *error;
    unsigned    status;
    const char *reason;   /* used when the library gave no reason */
} http_status_table[] = {
    { MIMEO_ENOTFOUND,      "not_found",             404, "missing" },
    { MIMEO_EDELETED,       "not_found",             404, "deleted" },
    { MIMEO_EEXIST,         "file_exists",           412,
      "The database could not be created, the file already exists." },
    { MIMEO_ECONFLICT,      "conflict",              409, "Document update conflict." },
    { MIMEO_EINVAL,         "bad_request",           400, "Bad request" },
    { MIMEO_EBADJSON,       "bad_request",           400, "invalid UTF-8 JSON" },
    { MIMEO_EBADID,         "illegal_docid",         400, "Illegal document id" },
    { MIMEO_EBADREV,        "bad_request",           400, "Invalid rev format" },
    { MIMEO_EDOCVALIDATION, "doc_validation",        400, "Invalid document" },
    { MIMEO_EBADNAME,       "illegal_database_name", 400,
      "Only lowercase characters (a-z), digits (0-9), and any of the characters _, $, (, ), "
      "+, -, and / are allowed. Must begin with a letter." },
    { MIMEO_ETOOLARGE,      "too_large",             413, "the request entity is too large" },
    { 0,                    "document_too_large",    413, "document too large" },
    { MIMEO_ENOSPC,         "insufficient_storage",  507,
      "the disk is full; nothing was written" },
    { MIMEO_ENOMEM,         "internal",              500, "out of memory" },
    { MIMEO_EIO,            "internal",              500, "storage failure" },
    { MIMEO_ECORRUPT,       "internal",              500, "a stored record failed validation" },
    { MIMEO_ECLOSED,        "service_unavailable",   503, "the server is shutting down" },
    { MIMEO_EEXPECTATION,   "expectation_failed",    417, "some documents failed" },
    { 0,                    "query_parse_error",     400, "invalid query parameter" },
    { 0,                    "bad_content_type",      415, "Content-Type must be application/json" },
    { 0,                    "method_not_allowed",    405, "method not allowed" },
    { MIMEO_EPRECONDITION,  "missing_stub",          412, "Invalid attachment stub" },
    { 0,                    "content_md5_mismatch",  400, "Possible message corruption." },
    { 0,                    "unauthorized",          401, "You are not authorized." },
    { 0,                    "forbidden",             403, "You are not allowed to do this." },
    { 0,                    "not_implemented",       501, "not implemented" },
    { 0,                    "compilation_error",     400, "the function does not compile" },
    { 0,                    "unknown_error",         500, "unknown error" },
};
#define HTTP_NSTATUS (sizeof http_status_table / sizeof http_status_table[0])

static const struct http_status_row *http_status_row(int code, const char *error) {
    if (error && error[0]) {
        for (size_t i = 0; i < HTTP_NSTATUS; i++)
            if (strcmp(http_status_table[i].error, error) == 0) return &http_status_table[i];
    }
    for (size_t i = 0; i < HTTP_NSTATUS; i++)
        if (code != 0 && http_status_table[i].code == code) return &http_status_table[i];
    return NULL;
}

unsigned http_status_for(int code, const char *error) {
    const struct http_status_row *row = http_status_row(code, error);
    return row ? row->status : 500;
}

/* ---- headers ---------------------------------------------------------------------------- */
const char *http_req_header(const http_req *r, const char *name) {
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

bool http_is_json_ctype(const http_req *r) {
    const char *ct = http_req_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (!ct) return false;
    while (*ct == ' ') ct++;
    size_t n = strlen("application/json");
    if (strncasecmp(ct, "application/json", n) != 0) return false;
    return ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ';
}

/* Is origin (the request's Origin header) in the configured list? 0: no; 1: by "*" (then the
 * reply says "*" and never allows credentials: any page could otherwise act as the user);
 * 2: listed by name. */
static int http_origin_allowed(const http_cors *c, const char *origin) {
    if (!c->enabled || !origin || !c->origins) return 0;
    size_t olen = strlen(origin);
    if (olen && http_list_has(c->origins, origin, olen)) return 2;
    for (const char *p = c->origins; *p; p++)
        if (*p == '*') return 1;
    return 0;
}

/* Allow-Origin and Allow-Credentials for an allowed origin. */
static void http_cors_origin(const http_cors *c, struct MHD_Response *resp, const char *origin,
                             int how) {
    MHD_add_response_header(resp, "Access-Control-Allow-Origin", how == 2 ? origin : "*");
    MHD_add_response_header(resp, "Vary", "Origin");
    if (how == 2 && c->credentials)
        MHD_add_response_header(resp, "Access-Control-Allow-Credentials", "true");
}

void http_cors_headers(http_req *r, struct MHD_Response *resp) {
    const http_cors *c = &r->srv->cfg.cors;
    const char *origin = http_req_header(r, "Origin");
    int how = http_origin_allowed(c, origin);
    if (!how) return;
    http_cors_origin(c, resp, origin, how);
    MHD_add_response_header(resp, "Access-Control-Expose-Headers",
                            "content-type, cache-control, accept-ranges, etag, server, "
                            "x-couch-request-id, x-couch-update-newrev");
}

bool http_cors_preflight(http_req *r) {
    const http_cors *c = &r->srv->cfg.cors;
    const char *origin = http_req_header(r, "Origin");
    const char *want = http_req_header(r, "Access-Control-Request-Method");
    if (r->method != HTTP_OPTIONS || !origin || !want) return false;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!resp) return false;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_SERVER, HTTP_SERVER_HEADER);
    int how = http_origin_allowed(c, origin);
    if (how) {
        char age[24];
        snprintf(age, sizeof age, "%u", c->max_age);
        http_cors_origin(c, resp, origin, how);
        MHD_add_response_header(resp, "Access-Control-Allow-Methods", c->methods);
        MHD_add_response_header(resp, "Access-Control-Allow-Headers", c->headers);
        MHD_add_response_header(resp, "Access-Control-Max-Age", age);
    }
    /* Not allowed: a plain 200 without CORS headers, so the browser refuses (CouchDB). */
    r->resp = resp;
    r->status = 200;
    return true;
}

static void http_common_headers(http_req *r, struct MHD_Response *resp, const char *ctype) {
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            ctype ? ctype : "application/json");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "must-revalidate");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_SERVER, HTTP_SERVER_HEADER);
    http_cors_headers(r, resp);
}

static void http_set_reply(http_req *r, unsigned status, struct MHD_Response *resp,
                           const char *ctype) {
    if (r->resp) {               /* a handler bug: keep the first reply */
        MHD_destroy_response(resp);
        return;
    }
    if (!resp) return;           /* out of memory: the core answers 500 or closes */
    http_common_headers(r, resp, ctype);
    r->resp = resp;
    r->status = status;
}

/* ---- replies ---------------------------------------------------------------------------- */
void http_reply_resp(http_req *r, unsigned status, struct MHD_Response *resp,
                     const char *content_type) {
    http_set_reply(r, status, resp, content_type);
}

void http_reply_buf(http_req *r, unsigned status, buf *b) {
    http_reply_buf_ct(r, status, b, NULL);
}

void http_reply_buf_ct(http_req *r, unsigned status, buf *b, const char *content_type) {
    size_t len = 0;
    char *p = buf_detach(b, &len);
    struct MHD_Response *resp;
    if (!p) {
        resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    } else {
        /* buf memory is malloc'd: MHD frees it with free() after sending, no copy. */
        resp = MHD_create_response_from_buffer(len, p, MHD_RESPMEM_MUST_FREE);
        if (!resp) free(p);
    }
    http_set_reply(r, status, resp, content_type);
}

void http_reply_mimeo(http_req *r, unsigned status, char *json, size_t len) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer_with_free_callback(len, json, mimeo_free);
    if (!resp) mimeo_free(json);
    http_set_reply(r, status, resp, NULL);
}

static void http_cursor_free(void *cls) {
    mimeo_cursor_close(cls);
}

void http_reply_row_json(http_req *r, unsigned status, mimeo_cursor *cur, const mimeo_row *row) {
    /* The row's json lives in the cursor: the reply keeps the cursor until it is sent. */
    struct MHD_Response *resp = MHD_create_response_from_buffer_with_free_callback_cls(
        row->json_len, (void *)row->json, http_cursor_free, cur);
    if (!resp) mimeo_cursor_close(cur);
    http_set_reply(r, status, resp, NULL);
}

void http_reply_static(http_req *r, unsigned status, const char *json) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(json), (void *)json, MHD_RESPMEM_PERSISTENT);
    http_set_reply(r, status, resp, NULL);
}

void http_reply_error(http_req *r, unsigned status, const char *error, const char *reason) {
    const struct http_status_row *row = http_status_row(0, error);
    if (status == 0) status = row ? row->status : 500;
    if (!reason || !reason[0]) reason = row ? row->reason : "unknown error";
    buf b;
    buf_init(&b, 0);
    buf_puts(&b, "{\"error\":");
    json_put_cstr(&b, error);
    buf_puts(&b, ",\"reason\":");
    json_put_cstr(&b, reason);
    buf_puts(&b, "}\n");
    http_reply_buf(r, status, &b);
}

void http_reply_err(http_req *r, int rc, const mimeo_err *e) {
    const char *error = (e && e->error[0]) ? e->error : NULL;
    const struct http_status_row *row = http_status_row(rc, error);
    const char *reason = (e && e->reason[0]) ? e->reason : (row ? row->reason : NULL);
    if (!error) error = row ? row->error : "unknown_error";
    if (!reason) reason = mimeo_strerror(rc);
    unsigned status = row ? row->status : 500;
    if (status >= 500)
        fprintf(stderr, "mimeo: %s %s: %d %s: %s\n", r->method_name ? r->method_name : "?",
                r->nseg ? r->seg[0] : "/", rc, error, reason);
    http_reply_error(r, status, error, reason);
}

void http_reply_method(http_req *r, const char *allowed) {
    char reason[128];
    snprintf(reason, sizeof reason, "Only %s allowed", allowed);
    http_reply_error(r, 405, "method_not_allowed", reason);
    if (r->resp) MHD_add_response_header(r->resp, MHD_HTTP_HEADER_ALLOW, allowed);
}

static void http_reply_stream_block(http_req *r, unsigned status, const char *content_type,
                                   size_t block, MHD_ContentReaderCallback reader, void *cls,
                                   MHD_ContentReaderFreeCallback free_fn) {
    /* Rows are flushed as soon as a reader call returns. A chunked reply (HTTP/1.1) is read
     * into the connection's own pool; the block, allocated with the response, only serves
     * HTTP/1.0 clients (one reader call per block), yet it lives as long as the reply. */
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, block, reader, cls, free_fn);
    if (!resp) {
        free_fn(cls);
        return;
    }
    http_set_reply(r, status, resp, content_type);
}

void http_reply_stream(http_req *r, unsigned status, const char *content_type,
                       MHD_ContentReaderCallback reader, void *cls,
                       MHD_ContentReaderFreeCallback free_fn) {
    http_reply_stream_block(r, status, content_type, 1024, reader, cls, free_fn);
}

void http_reply_stream_small(http_req *r, unsigned status, const char *content_type,
                             MHD_ContentReaderCallback reader, void *cls,
                             MHD_ContentReaderFreeCallback free_fn) {
    /* A feed's rows and heartbeats are short; an HTTP/1.0 client of a long normal feed
     * gets it in more, smaller writes. */
    http_reply_stream_block(r, status, content_type, 256, reader, cls, free_fn);
}

size_t http_drain(buf *b, size_t *pos, char *dst, size_t max) {
    size_t avail = b->len - *pos;
    if (avail == 0) {
        buf_reset(b);
        *pos = 0;
        return 0;
    }
    size_t n = avail < max ? avail : max;
    memcpy(dst, b->data + *pos, n);
    *pos += n;
    return n;
}

void http_header(http_req *r, const char *name, const char *value) {
    if (r->resp) MHD_add_response_header(r->resp, name, value);
}

void http_header_etag(http_req *r, const char *rev, size_t len) {
    char tag[MIMEO_REV_MAX + 4];
    if (!rev || len == 0 || len + 3 > sizeof tag) return;
    tag[0] = '"';
    memcpy(tag + 1, rev, len);
    tag[len + 1] = '"';
    tag[len + 2] = '\0';
    http_header(r, MHD_HTTP_HEADER_ETAG, tag);
}

/* Percent-encodes the name, keeping the '/' after _design or _local. */
static void http_put_pct(buf *b, const char *s, size_t n, bool keep_prefix_slash) {
    size_t i = 0;
    if (keep_prefix_slash) {
        if (n > 8 && memcmp(s, "_design/", 8) == 0) i = 8;
        else if (n > 7 && memcmp(s, "_local/", 7) == 0) i = 7;
        buf_put(b, s, i);
    }
    buf_put_pct(b, s + i, n - i);
}

void http_header_location(http_req *r, const char *db, const char *id, size_t id_len) {
    if (!r->resp) return;
    const char *host = http_req_header(r, MHD_HTTP_HEADER_HOST);
    buf b;
    buf_init(&b, 256 * 1024);
    buf_puts(&b, "http://");
    buf_puts(&b, host ? host : "localhost");
    buf_putc(&b, '/');
    http_put_pct(&b, db, strlen(db), false);
    buf_putc(&b, '/');
    http_put_pct(&b, id, id_len, true);
    /* Header values may not hold CR/LF: the encoding above guarantees it for db and id;
     * a hostile Host header was already accepted by MHD's parser as one line. */
    MHD_add_response_header(r->resp, MHD_HTTP_HEADER_LOCATION, buf_cstr(&b));
    buf_destroy(&b);
}

/* ---- helpers ---------------------------------------------------------------------------- */
bool http_db(http_req *r) {
    if (r->db) return true;
    const char *name = r->seg[0];
    size_t len = r->seg_len[0];
    if (!mimeo_db_name_valid(name, len)) {
        char reason[MIMEO_ERR_REASON_MAX];
        snprintf(reason, sizeof reason,
                 "Name: '%.40s'. Only lowercase characters (a-z), digits (0-9), and any of "
                 "the characters _, $, (, ), +, -, and / are allowed. Must begin with a "
                 "letter.", name);
        http_reply_error(r, 400, "illegal_database_name", reason);
        return false;
    }
    mimeo_err e = {0};
    int rc = mimeo_db_open(r->srv->env, name, &r->db, &e);
    if (rc != 0) {
        r->db = NULL;
        if (rc == MIMEO_ENOTFOUND)
            http_reply_error(r, 404, "not_found", "Database does not exist.");
        else
            http_reply_err(r, rc, &e);
        return false;
    }
    return true;
}

int http_put_ok_id_rev(buf *b, const char *id, size_t id_len, const char *rev) {
    buf_puts(b, "{\"ok\":true,\"id\":");
    json_put_str(b, id, id_len);
    if (rev) {
        buf_puts(b, ",\"rev\":");
        json_put_cstr(b, rev);
    }
    return buf_puts(b, "}\n");
}

/* ---- rows of streamed replies ------------------------------------------------------------- */
int http_put_row_doc(buf *b, const mimeo_row *row, bool conflicts) {
    int rc = buf_puts(b, "{\"_id\":");
    if (rc == 0) rc = json_put_str(b, row->id, row->id_len);
    if (rc == 0) rc = buf_puts(b, ",\"_rev\":");
    if (rc == 0) rc = json_put_str(b, row->rev, row->rev_len);
    /* The stored body is a compact object "{…}": splice its members in. */
    if (rc == 0 && row->body_len > 2) {
        rc = buf_putc(b, ',');
        if (rc == 0) rc = buf_put(b, row->body + 1, row->body_len - 2);
    }
    if (rc == 0 && row->deleted) rc = buf_puts(b, ",\"_deleted\":true");
    if (conflicts) {
        size_t k = 0;
        for (size_t i = 1; i < row->leaf_count && rc == 0; i++) {
            if (row->leaves[i].deleted) continue;
            rc = buf_puts(b, k++ ? "," : ",\"_conflicts\":[");
            if (rc == 0) rc = json_put_str(b, row->leaves[i].rev, row->leaves[i].rev_len);
        }
        if (rc == 0 && k) rc = buf_putc(b, ']');
    }
    return rc ? rc : buf_putc(b, '}');
}

int http_put_change_row(buf *b, const mimeo_row *row, bool all_docs_style, bool conflicts) {
    /* not buf_printf: vsnprintf was half of a row's cost */
    int rc = buf_puts(b, "{\"seq\":");
    if (rc == 0) rc = buf_put_u64(b, row->seq);
    if (rc == 0) rc = buf_puts(b, ",\"id\":");
    if (rc == 0) rc = json_put_str(b, row->id, row->id_len);
    if (rc == 0) rc = buf_puts(b, ",\"changes\":[");
    if (all_docs_style && row->leaf_count) {
        for (size_t i = 0; i < row->leaf_count && rc == 0; i++) {
            rc = buf_puts(b, i ? ",{\"rev\":" : "{\"rev\":");
            if (rc == 0) rc = json_put_str(b, row->leaves[i].rev, row->leaves[i].rev_len);
            if (rc == 0) rc = buf_putc(b, '}');
        }
    } else {
        rc = buf_puts(b, "{\"rev\":");
        if (rc == 0) rc = json_put_str(b, row->rev, row->rev_len);
        if (rc == 0) rc = buf_putc(b, '}');
    }
    if (rc == 0) rc = buf_putc(b, ']');
    if (rc == 0 && row->deleted) rc = buf_puts(b, ",\"deleted\":true");
    if (rc == 0 && row->body) {
        rc = buf_puts(b, ",\"doc\":");
        if (rc == 0) rc = http_put_row_doc(b, row, conflicts);
    }
    return rc ? rc : buf_putc(b, '}');
}

int http_put_all_docs_row(buf *b, const mimeo_row *row, bool include_docs, bool conflicts) {
    int rc;
    if (row->status == MIMEO_ENOTFOUND) {
        rc = buf_puts(b, "{\"key\":");
        if (rc == 0) rc = json_put_str(b, row->id, row->id_len);
        return rc ? rc : buf_puts(b, ",\"error\":\"not_found\"}");
    }
    rc = buf_puts(b, "{\"id\":");
    if (rc == 0) rc = json_put_str(b, row->id, row->id_len);
    if (rc == 0) rc = buf_puts(b, ",\"key\":");
    if (rc == 0) rc = json_put_str(b, row->id, row->id_len);
    if (rc == 0) rc = buf_puts(b, ",\"value\":{\"rev\":");
    if (rc == 0) rc = json_put_str(b, row->rev, row->rev_len);
    if (rc == 0) rc = buf_puts(b, row->deleted ? ",\"deleted\":true}" : "}");
    if (rc == 0 && include_docs) {
        rc = buf_puts(b, ",\"doc\":");
        if (rc == 0) rc = row->body ? http_put_row_doc(b, row, conflicts) : buf_puts(b, "null");
    }
    return rc ? rc : buf_putc(b, '}');
}

/* ---- replies streamed from a cursor's rows ------------------------------------------------ */
typedef struct http_row_stream {
    mimeo_db        *db;    /* owned: taken over from the request (the cursor reads it) */
    mimeo_cursor    *cur;   /* owned */
    const char      *sep, *close;
    http_row_put_fn  put;
    void            *ctx;
    void           (*ctx_free)(void *ctx);
    bool             first, at_end, done;
    buf              out;
    size_t           pos;
} http_row_stream;

static void http_row_stream_free(void *cls) {
    http_row_stream *s = cls;
    mimeo_cursor_close(s->cur);
    if (s->db) mimeo_db_close(s->db);
    if (s->ctx_free) s->ctx_free(s->ctx);
    buf_destroy(&s->out);
    free(s);
}

/* Moves rows from the cursor into s->out, up to a chunk. */
static int http_row_stream_fill(http_row_stream *s, mimeo_err *e) {
    while (!s->at_end && s->out.len - s->pos < HTTP_STREAM_CHUNK) {
        const mimeo_row *row;
        int rc = mimeo_cursor_next(s->cur, &row, e);
        if (rc < 0) return rc;
        if (!row) {
            s->at_end = true;
            break;
        }
        size_t mark = s->out.len;
        if (!s->first && (rc = buf_puts(&s->out, s->sep)) != 0) return rc;
        rc = s->put(s->ctx, &s->out, row);
        if (rc < 0) return rc;
        if (rc > 0) s->out.len = mark;   /* skipped: nor its separator */
        else s->first = false;
    }
    return 0;
}

static ssize_t http_row_stream_read(void *cls, uint64_t pos, char *dst, size_t max) {
    http_row_stream *s = cls;
    (void)pos;
    for (;;) {
        size_t n = http_drain(&s->out, &s->pos, dst, max);
        if (n > 0) return (ssize_t)n;
        if (s->done) return MHD_CONTENT_READER_END_OF_STREAM;
        if (s->at_end) {
            buf_puts(&s->out, s->close);
            s->done = true;
            continue;
        }
        if (http_row_stream_fill(s, NULL) != 0) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
}

void http_reply_rows(http_req *r, unsigned status, mimeo_cursor *cur, const char *open,
                     const char *sep, const char *close, http_row_put_fn put, void *ctx,
                     void (*ctx_free)(void *ctx)) {
    http_row_stream *s = calloc(1, sizeof *s);
    if (!s) {
        mimeo_cursor_close(cur);
        if (ctx_free) ctx_free(ctx);
        http_reply_err(r, MIMEO_ENOMEM, NULL);
        return;
    }
    buf_init(&s->out, 0);
    s->cur = cur;
    s->sep = sep;
    s->close = close;
    s->put = put;
    s->ctx = ctx;
    s->ctx_free = ctx_free;
    s->first = true;
    s->db = r->db;
    r->db = NULL;
    /* The first rows now, so that a failure can still be a proper error reply. */
    mimeo_err e = {0};
    int rc = buf_puts(&s->out, open);
    if (!rc) rc = http_row_stream_fill(s, &e);
    if (rc) {
        http_row_stream_free(s);
        http_reply_err(r, rc, &e);
        return;
    }
    http_reply_stream(r, status, NULL, http_row_stream_read, s, http_row_stream_free);
}

/* A row's json as it is; rows without (missing revisions) are left out. */
static int http_put_row_json(void *ctx, buf *b, const mimeo_row *row) {
    (void)ctx;
    if (!row->json) return 1;
    return buf_put(b, row->json, row->json_len);
}

void http_reply_cursor(http_req *r, unsigned status, mimeo_cursor *cur, const char *open,
                       const char *close) {
    http_reply_rows(r, status, cur, open, ",", close, http_put_row_json, NULL, NULL);
}

void http_reply_result(http_req *r, int rc, unsigned ok_status, char *out, size_t len,
                       const mimeo_err *e) {
    if (rc == 0 && out) {
        http_reply_mimeo(r, ok_status, out, len);
        return;
    }
    if (out) mimeo_free(out);
    if (rc == 0) http_reply_error(r, 500, "unknown_error", "the library returned no reply");
    else http_reply_err(r, rc, e);
}

bool http_require_json(http_req *r) {
    if (http_is_json_ctype(r)) return true;
    http_reply_error(r, 415, "bad_content_type", "Content-Type must be application/json");
    return false;
}
