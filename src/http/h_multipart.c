/* Documents as multipart bodies, both ways, streamed: PUT /{db}/{id} with Content-Type
 * multipart/related (CouchDB's replicator pushing a revision with attachments: the JSON part,
 * then one part per "follows" entry, in order, each written to a blob as it arrives), and the
 * replies CouchDB's replicator and multipart clients read: GET /{db}/{id}?attachments=true
 * with Accept: multipart/related, and open_revs with Accept: multipart/mixed (a part per
 * revision, multipart/related nested when it carries attachment data). Attachment bytes go
 * from the blob store to the socket through chunked readers, never whole in memory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_int.h"
#include "multipart.h"
#include "../common/err.h"

/* ---- uploads ---------------------------------------------------------------------------- */
typedef struct mp_follow {
    char *name;            /* new */
    size_t name_len;
    char *content_type;    /* new */
    bool  gzip;            /* "encoding":"gzip": the part's bytes are gzip */
} mp_follow;

typedef struct mp_upload {
    http_server     *srv;
    multipart_parser p;
    size_t           part;      /* parts begun */
    buf              json;      /* the document part (capped) */
    mp_follow       *follows;   /* the follows entries, in order */
    size_t           nfollows;
    mimeo_blob     **blobs;     /* one per follows entry, as the parts arrive */
    size_t           nblobs;
    mimeo_att_blob  *atts;      /* for mimeo_put_opts */
    int              rc;        /* the first failure */
    mimeo_err        err;
} mp_upload;

static void mp_upload_free(void *state) {
    mp_upload *u = state;
    if (!u) return;
    multipart_destroy(&u->p);
    buf_destroy(&u->json);
    for (size_t i = 0; i < u->nfollows; i++) {
        free(u->follows[i].name);
        free(u->follows[i].content_type);
    }
    free(u->follows);
    /* unless the write committed them, the blobs go */
    for (size_t i = 0; i < u->nblobs; i++) mimeo_blob_free(u->blobs[i]);
    free(u->blobs);
    free(u->atts);
    free(u);
}

/* The follows entries of the document part, in the order they appear. */
static int mp_read_follows(mp_upload *u, mimeo_err *err) {
    jval *doc = NULL;
    json_limits lim = u->srv->limits;
    int rc = json_tree_parse(u->json.data ? u->json.data : "", u->json.len, &lim, &doc, err);
    if (rc) return rc;
    const jval *atts = jval_get(doc, "_attachments");
    size_t n = 0;
    for (size_t i = 0; atts && atts->type == JV_OBJECT && i < atts->count; i++) {
        const jval *f = jval_get(atts->items[i], "follows");
        if (f && f->type == JV_BOOL && f->boolean) n++;
    }
    u->follows = calloc(n + 1, sizeof *u->follows);
    u->blobs = calloc(n + 1, sizeof *u->blobs);
    u->atts = calloc(n + 1, sizeof *u->atts);
    if (!u->follows || !u->blobs || !u->atts) {
        jval_free(doc);
        err_set(err, MIMEO_ENOMEM, "error", "out of memory");
        return MIMEO_ENOMEM;
    }
    for (size_t i = 0; atts && atts->type == JV_OBJECT && i < atts->count; i++) {
        const jval *a = atts->items[i];
        const jval *f = jval_get(a, "follows");
        if (!f || f->type != JV_BOOL || !f->boolean) continue;
        mp_follow *m = &u->follows[u->nfollows++];
        m->name = malloc(atts->key_lens[i] + 1);
        if (m->name) memcpy(m->name, atts->keys[i], atts->key_lens[i] + 1);
        m->name_len = atts->key_lens[i];
        const jval *ct = jval_get(a, "content_type");
        m->content_type = strdup(ct && ct->type == JV_STRING ? ct->str : "application/octet-stream");
        const jval *enc = jval_get(a, "encoding");
        m->gzip = enc && enc->type == JV_STRING && strcmp(enc->str, "gzip") == 0;
        if (!m->name || !m->content_type) {
            jval_free(doc);
            err_set(err, MIMEO_ENOMEM, "error", "out of memory");
            return MIMEO_ENOMEM;
        }
    }
    jval_free(doc);
    return 0;
}

static int mp_on_begin(void *ctx, const multipart_part *part, mimeo_err *err) {
    mp_upload *u = ctx;
    size_t k = u->part++;
    if (k == 0) {
        const char *ct = multipart_header(part, "Content-Type");
        if (ct && !multipart_type_is(ct, "application/json")) {
            err_set(err, MIMEO_EINVAL, "bad_request",
                    "the first part of a multipart document must be its JSON");
            return MIMEO_EINVAL;
        }
        return 0;
    }
    if (k > u->nfollows) {
        err_set(err, MIMEO_EINVAL, "bad_request",
                "more attachment parts than attachments that say \"follows\"");
        return MIMEO_EINVAL;
    }
    const mp_follow *f = &u->follows[k - 1];
    const char *ce = multipart_header(part, "Content-Encoding");
    mimeo_blob_opts o = {0};
    if (f->gzip || (ce && strcasestr(ce, "gzip"))) o.gzip_input = true;
    else o.gzip_level = mimeo_att_gzip_level(u->srv->env, f->content_type);
    int rc = mimeo_blob_new(u->srv->env, &o, &u->blobs[k - 1]);
    if (rc) {
        err_set(err, rc, "error", "%s", mimeo_strerror(rc));
        return rc;
    }
    u->nblobs = k;
    return 0;
}

static int mp_on_data(void *ctx, const char *d, size_t n, mimeo_err *err) {
    mp_upload *u = ctx;
    if (u->part == 1) {
        if (buf_put(&u->json, d, n) != 0) {
            err_set(err, MIMEO_ETOOLARGE, "too_large", "the document part is too large");
            return MIMEO_ETOOLARGE;
        }
        return 0;
    }
    int rc = mimeo_blob_write(u->blobs[u->part - 2], d, n);
    if (rc == MIMEO_EINVAL)
        err_set(err, rc, "bad_request", "an attachment part is not the gzip stream it says");
    else if (rc)
        err_set(err, rc, rc == MIMEO_ENOSPC ? "insufficient_storage" : "error", "%s",
                mimeo_strerror(rc));
    return rc;
}

static int mp_on_end(void *ctx, mimeo_err *err) {
    mp_upload *u = ctx;
    if (u->part == 1) return mp_read_follows(u, err);
    int rc = mimeo_blob_finish(u->blobs[u->part - 2]);
    if (rc == MIMEO_EINVAL)
        err_set(err, rc, "bad_request", "an attachment part is a truncated gzip stream");
    else if (rc)
        err_set(err, rc, "error", "%s", mimeo_strerror(rc));
    return rc;
}

static const multipart_handlers mp_upload_h = { mp_on_begin, mp_on_data, mp_on_end };

static int mp_upload_sink(void *state, const char *data, size_t len) {
    mp_upload *u = state;
    if (u->rc) return u->rc;
    u->rc = multipart_feed(&u->p, data, len, &u->err);
    return u->rc;
}

static mp_upload *mp_upload_new(http_req *r, const char *ct) {
    mp_upload *u = calloc(1, sizeof *u);
    if (!u) return NULL;
    u->srv = r->srv;
    size_t cap = r->srv->cfg.max_request_size ? r->srv->cfg.max_request_size : 0;
    buf_init(&u->json, cap);
    u->rc = multipart_init(&u->p, ct, &mp_upload_h, u, &u->err);
    return u;
}

void http_mp_sink_choose(http_req *r) {
    if (r->body_sink || r->method != HTTP_PUT || r->url_bad) return;
    bool doc = r->nseg == 2 || (r->nseg == 3 && http_seg_is(r, 1, "_design"));
    if (!doc || (r->seg_len[1] > 0 && r->seg[1][0] == '_' && !http_seg_is(r, 1, "_design")))
        return;
    const char *ct = http_req_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (!multipart_type_is(ct, "multipart/related")) return;
    mp_upload *u = mp_upload_new(r, ct);
    if (!u) return;   /* buffered instead; the handler parses it */
    r->body_sink = mp_upload_sink;
    r->sink_state = u;
    r->sink_free = mp_upload_free;
}

int http_mp_put_body(http_req *r, const char **json, size_t *len, mimeo_put_opts *o) {
    const char *ct = http_req_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (!ct || strncasecmp(ct + strspn(ct, " \t"), "multipart/", 10) != 0) return 0;
    if (!multipart_type_is(ct, "multipart/related")) {
        http_reply_error(r, 415, "bad_content_type",
                         "Content-Type must be multipart/related or application/json");
        return -1;
    }
    mp_upload *u = r->sink_free == mp_upload_free ? r->sink_state : NULL;
    if (!u) {
        /* no sink when the headers came (out of memory then): the body was buffered */
        u = mp_upload_new(r, ct);
        if (!u) {
            http_reply_err(r, MIMEO_ENOMEM, NULL);
            return -1;
        }
        r->sink_state = u;
        r->sink_free = mp_upload_free;
        if (!u->rc && r->body.len) u->rc = multipart_feed(&u->p, r->body.data, r->body.len, &u->err);
    }
    if (!u->rc) u->rc = multipart_finish(&u->p, &u->err);
    if (!u->rc && u->part == 0) {
        err_set(&u->err, MIMEO_EINVAL, "bad_request", "a multipart document without parts");
        u->rc = MIMEO_EINVAL;
    }
    if (!u->rc && u->nblobs != u->nfollows) {
        err_set(&u->err, MIMEO_EINVAL, "bad_request",
                "fewer attachment parts than attachments that say \"follows\"");
        u->rc = MIMEO_EINVAL;
    }
    if (u->rc) {
        http_reply_err(r, u->rc, &u->err);
        return -1;
    }
    for (size_t i = 0; i < u->nfollows; i++) {
        u->atts[i].name = u->follows[i].name;
        u->atts[i].name_len = u->follows[i].name_len;
        u->atts[i].blob = u->blobs[i];
    }
    o->atts = u->atts;
    o->att_count = u->nfollows;
    *json = u->json.data ? u->json.data : "";
    *len = u->json.len;
    return 1;
}

/* ---- downloads -------------------------------------------------------------------------- */
/* A reply as a list of pieces: bytes in memory, or an attachment's stored bytes read when
 * their turn comes. */
typedef struct mp_piece {
    size_t   at, len;      /* bytes in the text buffer, or: */
    char    *id;           /* an attachment (new strings), when id is set */
    size_t   id_len;
    char    *rev;
    char    *name;
    size_t   name_len;
    uint64_t size;         /* its stored bytes */
} mp_piece;

typedef struct mp_stream {
    mimeo_db         *db;      /* our own handle: the request's is gone when we are read */
    buf               text;
    mp_piece         *pieces;
    size_t            n, alloc;
    size_t            cur;     /* piece being sent */
    uint64_t          off;     /* within it */
    mimeo_att_reader *rd;
} mp_stream;

static void mp_stream_free(void *cls) {
    mp_stream *s = cls;
    if (!s) return;
    mimeo_att_close(s->rd);
    for (size_t i = 0; i < s->n; i++) {
        free(s->pieces[i].id);
        free(s->pieces[i].rev);
        free(s->pieces[i].name);
    }
    free(s->pieces);
    buf_destroy(&s->text);
    if (s->db) mimeo_db_close(s->db);
    free(s);
}

/* Ends the current text piece (from *start) and opens the next. */
static int mp_text_cut(mp_stream *s, size_t *start) {
    if (s->text.len == *start) return 0;
    if (ARRAY_GROW(s->pieces, s->alloc, s->n + 1)) return MIMEO_ENOMEM;
    s->pieces[s->n++] = (mp_piece){ .at = *start, .len = s->text.len - *start };
    *start = s->text.len;
    return 0;
}

static int mp_add_att(mp_stream *s, size_t *start, const char *id, size_t id_len,
                      const char *rev, const char *name, size_t name_len, uint64_t size) {
    int rc = mp_text_cut(s, start);
    if (rc || ARRAY_GROW(s->pieces, s->alloc, s->n + 1)) return MIMEO_ENOMEM;
    mp_piece *p = &s->pieces[s->n];
    memset(p, 0, sizeof *p);
    p->id = malloc(id_len + 1);
    p->rev = strdup(rev);
    p->name = malloc(name_len + 1);
    if (!p->id || !p->rev || !p->name) {
        free(p->id);
        free(p->rev);
        free(p->name);
        return MIMEO_ENOMEM;
    }
    memcpy(p->id, id, id_len);
    p->id[id_len] = '\0';
    memcpy(p->name, name, name_len);
    p->name[name_len] = '\0';
    p->id_len = id_len;
    p->name_len = name_len;
    p->size = size;
    s->n++;
    return 0;
}

/* One revision (row json with follows entries) as CouchDB lays it out: a multipart/related
 * body under boundary bnd when some entry says follows (*related set), else the JSON alone. */
static int mp_put_revision(mp_stream *s, size_t *start, const mimeo_row *row, const char *bnd,
                           bool *related) {
    /* The library lists the attachments the JSON marks "follows": no parse needed. */
    *related = row->follow_count > 0 && row->rev;
    if (!*related) return buf_put(&s->text, row->json, row->json_len);
    int rc = multipart_put_doc_head(&s->text, bnd);
    if (!rc) rc = buf_put(&s->text, row->json, row->json_len);
    for (size_t i = 0; !rc && i < row->follow_count; i++) {
        const mimeo_att_follow *a = &row->follows[i];
        uint64_t size = a->gzip ? a->encoded_length : a->length;
        rc = multipart_put_att_head(&s->text, bnd, a->name, a->name_len, a->content_type, size,
                                    a->gzip);
        if (!rc) rc = mp_add_att(s, start, row->id, row->id_len, row->rev, a->name, a->name_len,
                                 size);
    }
    if (!rc) rc = multipart_put_close(&s->text, bnd);
    return rc;
}

static ssize_t mp_stream_read(void *cls, uint64_t pos, char *out, size_t max) {
    (void)pos;
    mp_stream *s = cls;
    while (s->cur < s->n) {
        mp_piece *p = &s->pieces[s->cur];
        if (!p->id) {
            uint64_t left = p->len - s->off;
            if (left == 0) {
                s->cur++;
                s->off = 0;
                continue;
            }
            size_t take = left < max ? (size_t)left : max;
            memcpy(out, s->text.data + p->at + s->off, take);
            s->off += take;
            return (ssize_t)take;
        }
        if (s->off == p->size) {
            mimeo_att_close(s->rd);
            s->rd = NULL;
            s->cur++;
            s->off = 0;
            continue;
        }
        if (!s->rd && mimeo_att_open(s->db, p->id, p->id_len, p->rev, p->name, p->name_len,
                                     false, &s->rd, NULL, NULL) != 0)
            return MHD_CONTENT_READER_END_WITH_ERROR;
        uint64_t left = p->size - s->off;
        size_t want = left < max ? (size_t)left : max, got = 0;
        if (mimeo_att_read(s->rd, out, want, &got) != 0 || got == 0)
            return MHD_CONTENT_READER_END_WITH_ERROR;   /* the client sees a cut body */
        s->off += got;
        return (ssize_t)got;
    }
    return MHD_CONTENT_READER_END_OF_STREAM;
}

static mp_stream *mp_stream_new(http_req *r) {
    mp_stream *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    buf_init(&s->text, 0);
    if (mimeo_db_open(r->srv->env, mimeo_db_name(r->db), &s->db, NULL) != 0) {
        free(s);
        return NULL;
    }
    return s;
}

static void mp_stream_reply(http_req *r, mp_stream *s, uint64_t size, const char *ctype) {
    struct MHD_Response *resp = MHD_create_response_from_callback(
        size, HTTP_STREAM_CHUNK, mp_stream_read, s, mp_stream_free);
    if (!resp) {
        mp_stream_free(s);
        http_reply_err(r, MIMEO_ENOMEM, NULL);
        return;
    }
    http_reply_resp(r, 200, resp, ctype);
}

void http_reply_open_revs_mp(http_req *r, mimeo_cursor *cur) {
    mp_stream *s = mp_stream_new(r);
    if (!s) {
        http_reply_err(r, MIMEO_ENOMEM, NULL);
        return;
    }
    char outer[33], inner[33];
    multipart_boundary_new(outer);
    multipart_boundary_new(inner);
    size_t start = 0;
    const mimeo_row *row;
    mimeo_err e = {0};
    int rc = buf_printf(&s->text, "--%s", outer);
    /* As chttpd_db:send_docs_multipart writes it. */
    while (!rc && (rc = mimeo_cursor_next(cur, &row, &e)) == 0 && row) {
        if (row->status != 0 || !row->json) {
            rc = buf_puts(&s->text, "\r\nContent-Type: application/json; error=\"true\"\r\n\r\n"
                                    "{\"missing\":");
            if (!rc) rc = json_put_str(&s->text, row->rev, row->rev_len);
            if (!rc) rc = buf_putc(&s->text, '}');
        } else {
            /* the part's headers come first, but only the revision says which: write it
             * into a scratch stream and move it after them */
            size_t head_at = s->text.len;
            rc = buf_puts(&s->text, "\r\nContent-Type: ");
            size_t type_at = s->text.len;
            char type[120];
            snprintf(type, sizeof type, "multipart/related; boundary=\"%s\"", inner);
            /* room for the longer of the two types, trimmed below */
            if (!rc) rc = buf_puts(&s->text, type);
            if (!rc) rc = buf_puts(&s->text, "\r\n\r\n");
            bool related = false;
            if (!rc) rc = mp_put_revision(s, &start, row, inner, &related);
            if (!rc && !related) {
                /* a bare JSON part: "application/json", exactly (the replicator matches it) */
                size_t body_at = type_at + strlen(type) + 4;
                size_t body_len = s->text.len - body_at;
                static const char js[] = "application/json\r\n\r\n";
                memmove(s->text.data + type_at + sizeof js - 1, s->text.data + body_at, body_len);
                memcpy(s->text.data + type_at, js, sizeof js - 1);
                s->text.len = type_at + sizeof js - 1 + body_len;
            }
            (void)head_at;
        }
        if (!rc) rc = buf_printf(&s->text, "\r\n--%s", outer);
    }
    if (!rc) rc = buf_puts(&s->text, "--");
    if (!rc) rc = mp_text_cut(s, &start);
    if (rc) {
        mp_stream_free(s);
        http_reply_err(r, rc, e.error[0] ? &e : NULL);
        return;
    }
    char ctype[80];
    snprintf(ctype, sizeof ctype, "multipart/mixed; boundary=\"%s\"", outer);
    mp_stream_reply(r, s, MHD_SIZE_UNKNOWN, ctype);
}

bool http_accepts_related(const http_req *r) {
    const char *a = http_req_header(r, MHD_HTTP_HEADER_ACCEPT);
    return a && strcasestr(a, "multipart/related") != NULL;
}

bool http_reply_doc_mp(http_req *r, const mimeo_row *row) {
    mp_stream *s = mp_stream_new(r);
    if (!s) {
        http_reply_err(r, MIMEO_ENOMEM, NULL);
        return true;
    }
    char bnd[33];
    multipart_boundary_new(bnd);
    size_t start = 0;
    bool related = false;
    int rc = mp_put_revision(s, &start, row, bnd, &related);
    if (!rc) rc = mp_text_cut(s, &start);
    if (rc || !related) {
        /* no attachment data: CouchDB answers the plain JSON */
        mp_stream_free(s);
        if (rc) http_reply_err(r, rc, NULL);
        return rc != 0;
    }
    uint64_t size = 0;
    for (size_t i = 0; i < s->n; i++) size += s->pieces[i].id ? s->pieces[i].size : s->pieces[i].len;
    char ctype[80];
    snprintf(ctype, sizeof ctype, "multipart/related; boundary=\"%s\"", bnd);
    mp_stream_reply(r, s, size, ctype);
    return true;
}
