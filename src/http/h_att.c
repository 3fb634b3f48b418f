/* Standalone attachments: GET/HEAD/PUT/DELETE /{db}/{id}/{name} with ?rev=, If-Match,
 * If-None-Match and ETag (the digest), Range (one range, 206), Content-MD5, and both
 * directions streamed: an upload goes to a blob chunk by chunk as it arrives (the body sink,
 * chosen when the headers arrive), a download is read chunk by chunk as MHD sends it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <nettle/base64.h>
#include <nettle/md5.h>

#include "http_int.h"

/* ---- the name ------------------------------------------------------------------------- */

/* The attachment name: segments rest… joined with '/', each decoded (a "%2F" inside one is
 * a slash of the name too, so both spellings name the same attachment). Segments past
 * HTTP_MAX_SEGS were not split: the router keeps their raw text (seg_rest). */
static int http_att_name(const http_req *r, size_t rest, buf *out) {
    size_t kept = r->nseg < HTTP_MAX_SEGS ? r->nseg : HTTP_MAX_SEGS;
    int rc = 0;
    for (size_t i = rest; i < kept && !rc; i++) {
        if (i > rest) rc = buf_putc(out, '/');
        if (!rc) rc = buf_put(out, r->seg[i], r->seg_len[i]);
    }
    if (!rc && r->nseg > HTTP_MAX_SEGS && r->seg_rest) {
        size_t start = out->len;
        rc = buf_putc(out, '/');
        if (!rc) rc = buf_puts(out, r->seg_rest);
        if (!rc) {
            size_t n = pct_decode(out->data + start, out->len - start, false);
            if (n == (size_t)-1) return MIMEO_EINVAL;
            out->len = start + n;
            out->data[out->len] = 0;
            while (out->len > 0 && out->data[out->len - 1] == '/') out->data[--out->len] = 0;
        }
    }
    return rc;
}

/* ---- uploads -------------------------------------------------------------------------- */

typedef struct http_upload {
    mimeo_blob    *blob;
    struct md5_ctx md5;     /* of the bytes as received, for Content-MD5 … */
    bool           own_md5; /* … kept only when the blob stores other bytes (compressed) and
                               the client sent one: otherwise the blob's digest is it, and
                               MD5 is the costliest thing an upload does per byte */
    int            rc;      /* the first failure */
} http_upload;

static int http_upload_put(void *state, const char *data, size_t len) {
    http_upload *u = state;
    if (u->rc) return u->rc;
    if (u->own_md5) md5_update(&u->md5, len, (const uint8_t *)data);
    u->rc = mimeo_blob_write(u->blob, data, len);
    return u->rc;
}

static void http_upload_free(void *state) {
    http_upload *u = state;
    if (!u) return;
    mimeo_blob_free(u->blob);   /* discards it unless a write took it */
    free(u);
}

static bool http_gzip_encoded(const http_req *r) {
    const char *ce = http_req_header(r, MHD_HTTP_HEADER_CONTENT_ENCODING);
    return ce && strcasestr(ce, "gzip") != NULL;
}

void http_att_sink_choose(http_req *r) {
    if (r->method != HTTP_PUT || r->nseg < 3 || r->url_bad) return;
    if (r->seg_len[1] > 0 && r->seg[1][0] == '_' &&
        !(http_seg_is(r, 1, "_design") && r->nseg >= 4))
        return;
    if (r->seg_len[0] > 0 && r->seg[0][0] == '_' && !mimeo_db_name_valid(r->seg[0], r->seg_len[0]))
        return;
    http_upload *u = calloc(1, sizeof *u);
    if (!u) return;   /* the body is then buffered, and the handler uses it */
    md5_init(&u->md5);
    const char *ct = http_req_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    mimeo_blob_opts o = {0};
    if (http_gzip_encoded(r)) o.gzip_input = true;
    else o.gzip_level = mimeo_att_gzip_level(r->srv->env, ct ? ct : "application/octet-stream");
    if (mimeo_blob_new(r->srv->env, &o, &u->blob) != 0) {
        free(u);
        return;
    }
    u->own_md5 = o.gzip_level > 0 && http_req_header(r, "Content-MD5") != NULL;
    r->body_sink = http_upload_put;
    r->sink_state = u;
    r->sink_free = http_upload_free;
}

static void http_att_written(http_req *r, unsigned status, const char *id, size_t id_len,
                             mimeo_put_result *res) {
    buf b;
    buf_init(&b, 0);
    http_put_ok_id_rev(&b, id, id_len, res->rev);
    http_reply_buf(r, status, &b);
    http_header_etag(r, res->rev, strlen(res->rev));
    if (status == 201) http_header_location(r, r->seg[0], id, id_len);
}

static void http_att_put(http_req *r, const char *id, size_t id_len, const buf *name) {
    char rev_buf[MIMEO_REV_MAX];
    const char *rev;
    if (!http_want_rev(r, &rev, rev_buf)) return;
    http_upload *u = r->sink_state;
    mimeo_blob *own = NULL;
    int rc = 0;
    struct md5_ctx md5;
    if (!u) {
        /* No sink (out of memory when the headers came): the body was buffered. */
        const char *ct = http_req_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
        mimeo_blob_opts o = {.gzip_level = mimeo_att_gzip_level(r->srv->env, ct)};
        rc = mimeo_blob_new(r->srv->env, &o, &own);
        if (!rc && r->body.len) rc = mimeo_blob_write(own, r->body.data, r->body.len);
        md5_init(&md5);
        md5_update(&md5, r->body.len, (const uint8_t *)(r->body.data ? r->body.data : ""));
    } else {
        rc = u->rc;
        md5 = u->md5;
    }
    mimeo_blob *blob = u ? u->blob : own;
    if (!rc) rc = mimeo_blob_finish(blob);
    if (rc) {
        mimeo_blob_free(own);
        if (rc == MIMEO_EINVAL)
            http_reply_error(r, 400, "bad_request", "the body is not the gzip stream its "
                                                    "Content-Encoding says");
        else
            http_reply_err(r, rc, NULL);
        return;
    }
    const char *cmd5 = http_req_header(r, "Content-MD5");
    if (cmd5) {
        /* "md5-" + base64: the blob's own digest when it stores the bytes as received. */
        char text[32];
        if (u && !u->own_md5) {
            mimeo_blob_info info;
            (void)mimeo_blob_info_get(blob, &info);
            memcpy(text, info.digest, sizeof text);
        } else {
            unsigned char d[16];
            md5_digest(&md5, 16, d);
            struct base64_encode_ctx c;
            base64_encode_init(&c);
            size_t k = base64_encode_update(&c, text + 4, 16, d);
            k += base64_encode_final(&c, text + 4 + k);
            text[4 + k] = 0;
        }
        size_t k = strlen(text + 4);
        while (*cmd5 == ' ') cmd5++;
        if (strncmp(cmd5, text + 4, k) != 0 || (cmd5[k] && cmd5[k] != ' ')) {
            mimeo_blob_free(own);
            http_reply_error(r, 400, "content_md5_mismatch", "Possible message corruption.");
            return;
        }
    }
    const char *ct = http_req_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    mimeo_user_ctx user;
    char *sec = http_user_ctx(r, &user);
    mimeo_put_result res = {0};
    mimeo_err e = {0};
    rc = mimeo_att_put(r->db, id, id_len, name->data, name->len, rev,
                       ct ? ct : "application/octet-stream", blob, &user, &res, &e);
    free(sec);
    mimeo_blob_free(own);
    if (rc) {
        mimeo_free(res.id);
        http_reply_err(r, rc, &e);
        return;
    }
    http_att_written(r, 201, id, id_len, &res);
    mimeo_free(res.id);
}

static void http_att_delete(http_req *r, const char *id, size_t id_len, const buf *name) {
    char rev_buf[MIMEO_REV_MAX];
    const char *rev;
    if (!http_want_rev(r, &rev, rev_buf)) return;
    if (!rev) {
        http_reply_error(r, 409, "conflict", "Document update conflict.");
        return;
    }
    mimeo_user_ctx user;
    char *sec = http_user_ctx(r, &user);
    mimeo_put_result res = {0};
    mimeo_err e = {0};
    int rc = mimeo_att_delete(r->db, id, id_len, name->data, name->len, rev, &user, &res, &e);
    free(sec);
    if (rc) {
        mimeo_free(res.id);
        http_reply_err(r, rc, &e);
        return;
    }
    http_att_written(r, 200, id, id_len, &res);
    mimeo_free(res.id);
}

/* ---- downloads ------------------------------------------------------------------------ */

typedef struct http_download {
    mimeo_att_reader *rd;
    uint64_t          left;
} http_download;

static ssize_t http_download_read(void *cls, uint64_t pos, char *out, size_t max) {
    http_download *d = cls;
    (void)pos;
    if (d->left == 0) return MHD_CONTENT_READER_END_OF_STREAM;
    size_t want = max < d->left ? max : (size_t)d->left;
    size_t got = 0;
    if (mimeo_att_read(d->rd, out, want, &got) != 0 || got == 0)
        return MHD_CONTENT_READER_END_WITH_ERROR;   /* cut: the client sees a short body */
    d->left -= got;
    return (ssize_t)got;
}

static void http_download_free(void *cls) {
    http_download *d = cls;
    mimeo_att_close(d->rd);
    free(d);
}

static bool http_accepts_gzip(const http_req *r) {
    const char *a = http_req_header(r, MHD_HTTP_HEADER_ACCEPT_ENCODING);
    return a && strcasestr(a, "gzip") != NULL;
}

/* One "bytes=a-b", "bytes=a-" or "bytes=-n" range of a body of len bytes. 1 with [*from,
 * *to] set; 0 to serve the whole body (absent, several ranges, or malformed, which HTTP
 * says to ignore); -1 when not satisfiable. */
static int http_range(const char *h, uint64_t len, uint64_t *from, uint64_t *to) {
    if (!h) return 0;
    while (*h == ' ') h++;
    if (strncasecmp(h, "bytes=", 6) != 0) return 0;
    h += 6;
    if (strchr(h, ',')) return 0;
    char *end;
    while (*h == ' ') h++;
    if (*h == '-') {
        unsigned long long n = strtoull(h + 1, &end, 10);
        if (end == h + 1 || *end) return 0;
        if (n == 0 || len == 0) return -1;
        *from = n >= len ? 0 : len - n;
        *to = len - 1;
        return 1;
    }
    if (*h < '0' || *h > '9') return 0;
    unsigned long long a = strtoull(h, &end, 10);
    if (*end != '-') return 0;
    const char *b = end + 1;
    unsigned long long z = len ? len - 1 : 0;
    if (*b) {
        z = strtoull(b, &end, 10);
        if (end == b || *end) return 0;
        if (z < a) return 0;
        if (len && z >= len) z = len - 1;
    }
    if (a >= len) return -1;
    *from = a;
    *to = z;
    return 1;
}

static void http_att_get(http_req *r, const char *id, size_t id_len, const buf *name) {
    size_t ql;
    const char *rev = http_arg_get(r, "rev", &ql);
    if (rev && (ql == 0 || ql >= MIMEO_REV_MAX)) {
        http_reply_error(r, 400, "bad_request", "Invalid rev format");
        return;
    }
    bool gz_ok = http_accepts_gzip(r);
    mimeo_att_reader *rd;
    mimeo_att_info info;
    mimeo_err e = {0};
    int rc = mimeo_att_open(r->db, id, id_len, rev, name->data, name->len, !gz_ok, &rd, &info, &e);
    if (rc) {
        http_reply_err(r, rc, &e);
        return;
    }
    bool raw_gzip = info.gzip && gz_ok;
    uint64_t size = info.gzip && !gz_ok ? info.length : info.encoded_length;
    char etag[48];
    snprintf(etag, sizeof etag, "\"%.28s\"", info.digest + 4);
    const char *inm = http_req_header(r, MHD_HTTP_HEADER_IF_NONE_MATCH);
    if (inm && strstr(inm, etag)) {
        mimeo_att_close(rd);
        buf empty;
        buf_init(&empty, 0);
        http_reply_buf(r, 304, &empty);
        http_header(r, MHD_HTTP_HEADER_ETAG, etag);
        return;
    }
    unsigned status = 200;
    uint64_t from = 0, to = size ? size - 1 : 0;
    int range = info.gzip ? 0 : http_range(http_req_header(r, MHD_HTTP_HEADER_RANGE), size,
                                           &from, &to);
    if (range < 0) {
        mimeo_att_close(rd);
        http_reply_error(r, 416, "requested_range_not_satisfiable",
                         "Requested range not satisfiable");
        char cr[64];
        snprintf(cr, sizeof cr, "bytes */%llu", (unsigned long long)size);
        http_header(r, MHD_HTTP_HEADER_CONTENT_RANGE, cr);
        return;
    }
    uint64_t body_len = size;
    if (range > 0) {
        status = 206;
        body_len = to - from + 1;
        if (mimeo_att_seek(rd, from) != 0) {
            mimeo_att_close(rd);
            http_reply_err(r, MIMEO_EIO, NULL);
            return;
        }
    }
    http_download *d = calloc(1, sizeof *d);
    if (!d) {
        mimeo_att_close(rd);
        http_reply_err(r, MIMEO_ENOMEM, NULL);
        return;
    }
    d->rd = rd;
    d->left = body_len;
    char ctype[256];
    snprintf(ctype, sizeof ctype, "%s", info.content_type);
    struct MHD_Response *resp = MHD_create_response_from_callback(
        body_len, 64 * 1024, http_download_read, d, http_download_free);
    if (!resp) {
        http_download_free(d);
        http_reply_err(r, MIMEO_ENOMEM, NULL);
        return;
    }
    http_reply_resp(r, status, resp, ctype);
    http_header(r, MHD_HTTP_HEADER_ETAG, etag);
    if (!info.gzip) http_header(r, MHD_HTTP_HEADER_ACCEPT_RANGES, "bytes");
    if (raw_gzip) http_header(r, MHD_HTTP_HEADER_CONTENT_ENCODING, "gzip");
    if (range > 0) {
        char cr[80];
        snprintf(cr, sizeof cr, "bytes %llu-%llu/%llu", (unsigned long long)from,
                 (unsigned long long)to, (unsigned long long)size);
        http_header(r, MHD_HTTP_HEADER_CONTENT_RANGE, cr);
    }
}

void http_h_att(http_req *r, const char *id, size_t id_len, size_t rest) {
    buf name;
    buf_init(&name, 0);
    if (http_att_name(r, rest, &name) != 0) {
        buf_destroy(&name);
        http_reply_error(r, 400, "bad_request", "Malformed attachment name");
        return;
    }
    if (name.len > 0 && name.data[0] == '_') {
        buf_destroy(&name);
        http_reply_error(r, 400, "bad_request",
                         "Attachment name can't start with '_'");
        return;
    }
    if (!utf8_valid(buf_cstr(&name), name.len)) {
        buf_destroy(&name);
        http_reply_error(r, 400, "bad_request", "Attachment name is not valid UTF-8");
        return;
    }
    if (!http_db(r)) {
        buf_destroy(&name);
        return;
    }
    switch (r->method) {
    case HTTP_GET: case HTTP_HEAD: http_att_get(r, id, id_len, &name); break;
    case HTTP_PUT: http_att_put(r, id, id_len, &name); break;
    case HTTP_DELETE: http_att_delete(r, id, id_len, &name); break;
    default: http_reply_method(r, "DELETE,GET,HEAD,PUT"); break;
    }
    buf_destroy(&name);
}

/* ---- read options ----------------------------------------------------------------------- */

bool http_att_opts_parse(http_req *r, mimeo_get_opts *o, http_att_opts *h) {
    memset(h, 0, sizeof *h);
    if (http_arg_bool(r, "attachments", &o->attachments) < 0 ||
        http_arg_bool(r, "att_encoding_info", &o->att_encoding_info) < 0)
        return false;
    if (!http_arg_get(r, "atts_since", NULL)) return true;
    int got = http_arg_json(r, "atts_since", &h->tree);
    if (got < 0 || r->resp) return false;
    bool good = got > 0 && h->tree->type == JV_ARRAY;
    for (size_t i = 0; good && i < h->tree->count; i++)
        if (h->tree->items[i]->type != JV_STRING) good = false;
    if (!good) {
        http_reply_error(r, 400, "bad_request", "atts_since must be a JSON array of revisions");
        return false;
    }
    if (h->tree->count == 0) return true;
    h->list = calloc(h->tree->count, sizeof *h->list);
    if (!h->list) {
        http_reply_err(r, MIMEO_ENOMEM, NULL);
        return false;
    }
    for (size_t i = 0; i < h->tree->count; i++) h->list[i] = h->tree->items[i]->str;
    o->atts_since = h->list;
    o->atts_since_count = h->tree->count;
    return true;
}

void http_att_opts_free(http_att_opts *h) {
    free(h->list);
    if (h->tree) jval_free(h->tree);
    memset(h, 0, sizeof *h);
}

/* ---- attachments=true on _all_docs and _changes rows ----------------------------------- */

int http_att_inline_row(mimeo_db *db, const mimeo_row *row, mimeo_row *shown, buf *hold) {
    *shown = *row;
    if (!row->body || row->deleted || !row->rev ||
        !memmem(row->body, row->body_len, "\"_attachments\"", 14))
        return 0;
    mimeo_get_opts o = {.rev = row->rev, .attachments = true};
    char *doc = NULL;
    size_t len = 0;
    mimeo_err e;
    int rc = mimeo_doc_get(db, row->id, row->id_len, &o, &doc, &len, &e);
    if (rc == MIMEO_ENOTFOUND || rc == MIMEO_EDELETED) return 0; /* compacted meanwhile */
    if (rc) return rc;
    /* The reply starts {"_id":<id>,"_rev":"<rev>" (src/db/doc.c): the body is the rest. */
    buf_reset(hold);
    rc = buf_puts(hold, "{\"_id\":");
    if (!rc) rc = json_put_str(hold, row->id, row->id_len);
    if (!rc) rc = buf_puts(hold, ",\"_rev\":\"");
    if (!rc) rc = buf_put(hold, row->rev, row->rev_len);
    if (!rc) rc = buf_putc(hold, '"');
    size_t skip = hold->len;
    if (!rc && (len <= skip + 1 || memcmp(doc, hold->data, skip) != 0)) rc = MIMEO_EIO;
    buf_reset(hold);
    if (!rc) rc = buf_putc(hold, '{');
    if (!rc) rc = buf_put(hold, doc + skip + 1, len - skip - 1); /* past the comma */
    mimeo_free(doc);
    if (rc) return rc;
    shown->body = hold->data;
    shown->body_len = hold->len;
    return 0;
}
