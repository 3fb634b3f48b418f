/* Documents and _bulk_docs bodies, split in one streaming pass over json_parse's events:
 * special `_` members are taken out as they arrive, every other top-level member is written
 * straight back out as compact bytes into the document's body. No tree is built for a body
 * (this is the write hot path); only _revisions and _attachments, which the revision and
 * attachment code must walk, are captured as jval trees. The member rules follow CouchDB's
 * couch_doc:transfer_fields. */
#include "json.h"

#include <stdlib.h>
#include <string.h>

/* What the top-level member being read is, decided by its key. */
enum {
    JD_BODY,        /* ordinary member: copied to the body */
    JD_ID,
    JD_REV,
    JD_DELETED,
    JD_REVISIONS,   /* captured as a tree */
    JD_ATTACHMENTS, /* captured as a tree */
    JD_SKIP,        /* metadata CouchDB drops on write (_revs_info, _conflicts, …) */
};

/* What the member of a _bulk_docs envelope being read is. */
enum { ENV_OTHER, ENV_DOCS, ENV_NEW_EDITS, ENV_ALL_OR_NOTHING };

/* Kinds of value events, so one function can route them all. */
enum { EV_NULL, EV_BOOL, EV_NUMBER, EV_STRING, EV_MAP, EV_ARRAY };

typedef struct jd_ctx {
    json_error   *err;
    size_t        max_doc;
    uintptr_t     src, src_end; /* the text being parsed: strings inside it had no escapes */
    unsigned      depth;      /* containers open before the current event */

    json_doc     *doc;        /* the document being split, or NULL between documents */
    unsigned      doc_depth;  /* depth at which its members' keys and values arrive */
    int           member;     /* JD_* of the member being read */
    json_builder *jb;         /* reused for every captured member */
    size_t        size_hint;  /* body size of the previous document: first reservation */
    unsigned      max_rev_ids; /* _revisions.ids items kept; 0: all */
    bool          rev_key_ids; /* the last key read directly inside _revisions was "ids" */
    bool          rev_ids_open; /* reading the items of _revisions.ids */

    bool          bulk;
    json_doc     *single;     /* json_doc_parse's output */
    json_bulk    *out;        /* json_bulk_parse's output */
    size_t        docs_alloc;
    size_t        max_docs;   /* 0: no cap */
    int           env;        /* ENV_* of the envelope member being read */
    bool          have_docs;
    int         (*on_doc)(void *arg, json_bulk *out, size_t index); /* stream: see json.h */
    void         *on_doc_arg;
} jd_ctx;

static int jd_fail(jd_ctx *c, int code, const char *error, const char *reason) {
    err_set(c->err, code, error, "%s", reason);
    return code;
}

static int jd_oom(jd_ctx *c) {
    return jd_fail(c, MIMEO_ENOMEM, "internal_server_error", "out of memory");
}

/* A failed append to the body: over the size cap (CouchDB answers 413 with the id as the
 * reason, when the id has been seen by then) or out of memory. */
static int jd_body_fail(jd_ctx *c, int rc) {
    if (rc != MIMEO_ETOOLARGE) return jd_oom(c);
    const json_doc *d = c->doc;
    size_t n = d->id ? json_utf8_prefix(d->id, d->id_len, MIMEO_ERR_REASON_MAX - 1) : 0;
    err_set(c->err, rc, "document_too_large", "%.*s", (int)n, d->id ? d->id : "");
    return rc;
}

static int jd_bad_member(jd_ctx *c, const char *name, size_t n) {
    size_t show = json_utf8_prefix(name, n, 120);
    err_set(c->err, MIMEO_EDOCVALIDATION, "doc_validation",
                 "Bad special document member: %.*s", (int)show, name);
    return MIMEO_EDOCVALIDATION;
}

static int jd_strdup(char **dst, size_t *dst_len, const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (!p) return MIMEO_ENOMEM;
    if (n) memcpy(p, s, n);
    p[n] = 0;
    *dst = p;
    *dst_len = n;
    return 0;
}

/* A comma goes before a key or value unless it opens a container or follows a key; the
 * last byte written says which, so no per-level state is needed. */
static inline int jd_sep(buf *b) {
    char last = b->data[b->len - 1];
    if (last == '{' || last == '[' || last == ':') return 0;
    return json_putc_fast(b, ',');
}

/* A string written into a body. One the parser hands over from inside the source text had
 * no escape, and a string with no escape has no byte json_put_str would escape (no quote,
 * backslash or control character can stand in it unescaped): its source bytes, quotes
 * included, are already its compact form and are copied without a second scan. */
static inline int jd_put_str(const jd_ctx *c, buf *b, const char *s, size_t n) {
    uintptr_t a = (uintptr_t)s;
    if (a > c->src && a + n < c->src_end) return buf_put(b, s - 1, n + 2);
    return json_put_str(b, s, n);
}

/* ---- one document ---------------------------------------------------------------------- */

static int jd_doc_begin(jd_ctx *c, json_doc *d) {
    memset(d, 0, sizeof *d);
    buf_init(&d->body, c->max_doc);
    /* documents in a batch tend to be alike: start at the previous one's size and most
     * bodies never reallocate */
    if (c->size_hint) (void)buf_reserve(&d->body, c->size_hint < c->max_doc ? c->size_hint
                                                                              : c->max_doc);
    c->doc = d;
    c->doc_depth = c->depth + 1;
    c->member = JD_BODY;
    int rc = json_putc_fast(&d->body, '{');
    return rc ? jd_body_fail(c, rc) : 0;
}

static int jd_doc_end(jd_ctx *c) {
    int rc = json_putc_fast(&c->doc->body, '}');
    if (rc) return jd_body_fail(c, rc);
    c->size_hint = c->doc->body.len + 16;
    c->doc = NULL;
    if (c->bulk && c->on_doc) return c->on_doc(c->on_doc_arg, c->out, c->out->count - 1);
    return 0;
}

/* Decides what the member named s is; ordinary members get their key written. */
static int jd_member(jd_ctx *c, const char *s, size_t n) {
    if (n == 0 || s[0] != '_') {
        c->member = JD_BODY;
    } else {
#define IS(lit) (n == sizeof(lit) - 1 && memcmp(s, lit, n) == 0)
        if (IS("_id")) c->member = JD_ID;
        else if (IS("_rev")) c->member = JD_REV;
        else if (IS("_deleted")) c->member = JD_DELETED;
        else if (IS("_revisions")) c->member = JD_REVISIONS;
        else if (IS("_attachments")) c->member = JD_ATTACHMENTS;
        else if (IS("_revs_info") || IS("_conflicts") || IS("_deleted_conflicts") ||
                 IS("_local_seq"))
            c->member = JD_SKIP;
        /* CouchDB keeps these as body members: per-document access control, and the
         * replicator's state fields in _replicator documents */
        else if (IS("_access") ||
                 (n >= 13 && memcmp(s, "_replication_", 13) == 0))
            c->member = JD_BODY;
        else
            return jd_bad_member(c, s, n);
#undef IS
        if (c->member != JD_BODY) return 0;
    }
    buf *b = &c->doc->body;
    int rc = jd_sep(b);
    if (!rc) rc = jd_put_str(c, b, s, n);
    if (!rc) rc = json_putc_fast(b, ':');
    return rc ? jd_body_fail(c, rc) : 0;
}

/* Passes one event of a captured member to the tree builder. */
static int jd_capture(jd_ctx *c, int ev, const char *s, size_t n, bool bv) {
    if (!c->jb && !(c->jb = json_builder_new())) return jd_oom(c);
    const json_handlers *h = &json_builder_handlers;
    int rc;
    switch (ev) {
    case EV_NULL:   rc = h->on_null(c->jb); break;
    case EV_BOOL:   rc = h->on_bool(c->jb, bv); break;
    case EV_NUMBER: rc = h->on_number(c->jb, s, n); break;
    case EV_STRING: rc = h->on_string(c->jb, s, n); break;
    case EV_MAP:    rc = h->on_start_map(c->jb); break;
    default:        rc = h->on_start_array(c->jb); break;
    }
    return rc ? jd_oom(c) : 0;
}

/* A value inside _revisions. Only the newest max_rev_ids items of "ids" can survive
 * stemming, so the others are counted and dropped here, before any tree holds them: a
 * megabyte of ids must not cost a hundred megabytes of nodes. */
static int jd_revisions_value(jd_ctx *c, int ev, const char *s, size_t n, bool bv) {
    if (c->depth == c->doc_depth + 1) {
        c->rev_ids_open = c->rev_key_ids && ev == EV_ARRAY;
    } else if (c->depth == c->doc_depth + 2 && c->rev_ids_open) {
        size_t k = ++c->doc->revision_ids_total;
        if (k > JSON_MAX_REVISION_IDS)
            return jd_fail(c, MIMEO_EDOCVALIDATION, "doc_validation",
                           "_revisions.ids is too long.");
        if (c->max_rev_ids && k > c->max_rev_ids) {
            if (ev != EV_STRING)
                return jd_fail(c, MIMEO_EDOCVALIDATION, "doc_validation",
                               "RevId isn't a string");
            return 0;
        }
    }
    return jd_capture(c, ev, s, n, bv);
}

/* A value event inside a document, at any depth. */
static int jd_doc_value(jd_ctx *c, int ev, const char *s, size_t n, bool bv) {
    json_doc *d = c->doc;
    if (c->depth == c->doc_depth) {
        /* the value of a top-level member starts here */
        switch (c->member) {
        case JD_BODY:
            break;
        case JD_SKIP:
            return 0;
        case JD_ID:
            if (ev != EV_STRING)
                return jd_fail(c, MIMEO_EBADID, "illegal_docid", "Document id must be a string");
            return jd_strdup(&d->id, &d->id_len, s, n) ? jd_oom(c) : 0;
        case JD_REV:
            if (ev != EV_STRING)
                return jd_fail(c, MIMEO_EBADREV, "bad_request", "Invalid rev format");
            return jd_strdup(&d->rev, &d->rev_len, s, n) ? jd_oom(c) : 0;
        case JD_DELETED:
            /* CouchDB only takes a boolean here; anything else is an unknown member */
            if (ev != EV_BOOL) return jd_bad_member(c, "_deleted", 8);
            d->deleted = bv;
            return 0;
        default:
            /* likewise _revisions and _attachments must be objects */
            if (ev != EV_MAP)
                return c->member == JD_REVISIONS ? jd_bad_member(c, "_revisions", 10)
                                                 : jd_bad_member(c, "_attachments", 12);
            return jd_capture(c, ev, s, n, bv);
        }
    } else if (c->member == JD_SKIP) {
        return 0;
    } else if (c->member == JD_REVISIONS) {
        return jd_revisions_value(c, ev, s, n, bv);
    } else if (c->member != JD_BODY) {
        return jd_capture(c, ev, s, n, bv);
    }

    buf *b = &d->body;
    int rc = jd_sep(b);
    if (!rc) {
        switch (ev) {
        case EV_NULL:   rc = buf_put(b, "null", 4); break;
        case EV_BOOL:   rc = bv ? buf_put(b, "true", 4) : buf_put(b, "false", 5); break;
        case EV_NUMBER: rc = buf_put(b, s, n); break; /* the source text, byte for byte */
        case EV_STRING: rc = jd_put_str(c, b, s, n); break;
        case EV_MAP:    rc = json_putc_fast(b, '{'); break;
        default:        rc = json_putc_fast(b, '['); break;
        }
    }
    return rc ? jd_body_fail(c, rc) : 0;
}

/* ---- the envelope ---------------------------------------------------------------------- */

/* A value event outside any document: the top level, or a _bulk_docs envelope member. */
static int jd_env_value(jd_ctx *c, int ev, bool bv) {
    if (c->depth == 0) {
        if (ev != EV_MAP)
            return jd_fail(c, MIMEO_EINVAL, "bad_request",
                           c->bulk ? "Request body must be a JSON object"
                                   : "Document must be a JSON object");
        return c->bulk ? 0 : jd_doc_begin(c, c->single);
    }
    if (c->depth == 1) {
        switch (c->env) {
        case ENV_DOCS:
            if (ev != EV_ARRAY)
                return jd_fail(c, MIMEO_EINVAL, "bad_request",
                               "`docs` parameter must be an array.");
            c->have_docs = true;
            return 0;
        case ENV_NEW_EDITS:
            if (ev != EV_BOOL)
                return jd_fail(c, MIMEO_EINVAL, "bad_request",
                               "`new_edits` parameter must be a boolean.");
            c->out->new_edits = bv;
            return 0;
        case ENV_ALL_OR_NOTHING:
            /* as CouchDB: only true turns it on */
            c->out->all_or_nothing = ev == EV_BOOL && bv;
            return 0;
        default:
            return 0;
        }
    }
    if (c->depth == 2 && c->env == ENV_DOCS) {
        json_bulk *o = c->out;
        if (c->max_docs && o->count >= c->max_docs) {
            err_set(c->err, MIMEO_ETOOLARGE, "max_bulk_docs_count_exceeded",
                    "More than %zu documents in one request ([couchdb] max_bulk_docs_count).",
                    c->max_docs);
            return MIMEO_ETOOLARGE;
        }
        if (ev != EV_MAP)
            return jd_fail(c, MIMEO_EINVAL, "bad_request", "Document must be a JSON object");
        if (o->count == c->docs_alloc) {
            size_t alloc = c->docs_alloc ? c->docs_alloc * 2 : 64;
            json_doc *docs = realloc(o->docs, alloc * sizeof *docs);
            if (!docs) return jd_oom(c);
            o->docs = docs;
            c->docs_alloc = alloc;
        }
        /* counted before it is filled so that a failure part way still frees it */
        json_doc *d = &o->docs[o->count++];
        return jd_doc_begin(c, d);
    }
    return 0; /* inside an envelope member we ignore */
}

/* ---- event handlers -------------------------------------------------------------------- */

static int jd_value(jd_ctx *c, int ev, const char *s, size_t n, bool bv) {
    int rc = c->doc ? jd_doc_value(c, ev, s, n, bv) : jd_env_value(c, ev, bv);
    if (!rc && (ev == EV_MAP || ev == EV_ARRAY)) c->depth++;
    return rc;
}

static int jd_on_null(void *ctx) { return jd_value(ctx, EV_NULL, NULL, 0, false); }
static int jd_on_bool(void *ctx, bool v) { return jd_value(ctx, EV_BOOL, NULL, 0, v); }
static int jd_on_number(void *ctx, const char *s, size_t n) {
    return jd_value(ctx, EV_NUMBER, s, n, false);
}
static int jd_on_string(void *ctx, const char *s, size_t n) {
    return jd_value(ctx, EV_STRING, s, n, false);
}
static int jd_on_start_map(void *ctx) { return jd_value(ctx, EV_MAP, NULL, 0, false); }
static int jd_on_start_array(void *ctx) { return jd_value(ctx, EV_ARRAY, NULL, 0, false); }

static int jd_on_key(void *ctx, const char *s, size_t n) {
    jd_ctx *c = ctx;
    if (c->doc) {
        if (c->depth == c->doc_depth) return jd_member(c, s, n);
        switch (c->member) {
        case JD_BODY: {
            buf *b = &c->doc->body;
            int rc = jd_sep(b);
            if (!rc) rc = jd_put_str(c, b, s, n);
            if (!rc) rc = json_putc_fast(b, ':');
            return rc ? jd_body_fail(c, rc) : 0;
        }
        case JD_SKIP:
            return 0;
        default:
            if (c->member == JD_REVISIONS && c->depth == c->doc_depth + 1)
                c->rev_key_ids = n == 3 && memcmp(s, "ids", 3) == 0;
            return json_builder_handlers.on_key(c->jb, s, n) ? jd_oom(c) : 0;
        }
    }
    if (c->depth == 1) {
#define IS(lit) (n == sizeof(lit) - 1 && memcmp(s, lit, n) == 0)
        c->env = IS("docs") ? ENV_DOCS
               : IS("new_edits") ? ENV_NEW_EDITS
               : IS("all_or_nothing") ? ENV_ALL_OR_NOTHING
               : ENV_OTHER;
#undef IS
        if (c->bulk && c->have_docs && c->env != ENV_OTHER) c->out->flags_after_docs = true;
    }
    return 0;
}

static int jd_on_end(void *ctx, bool map) {
    jd_ctx *c = ctx;
    c->depth--;
    if (c->doc) {
        if (c->depth + 1 == c->doc_depth) return jd_doc_end(c); /* the document's own '}' */
        switch (c->member) {
        case JD_BODY: {
            int rc = json_putc_fast(&c->doc->body, map ? '}' : ']');
            return rc ? jd_body_fail(c, rc) : 0;
        }
        case JD_SKIP:
            return 0;
        default: {
            if (c->member == JD_REVISIONS && c->depth == c->doc_depth + 1)
                c->rev_ids_open = false;
            const json_handlers *h = &json_builder_handlers;
            if (map ? h->on_end_map(c->jb) : h->on_end_array(c->jb)) return jd_oom(c);
            if (c->depth == c->doc_depth) {
                jval *v = json_builder_take(c->jb);
                if (!v) return jd_oom(c);
                if (c->member == JD_REVISIONS) c->doc->revisions = v;
                else c->doc->attachments = v;
            }
            return 0;
        }
        }
    }
    if (c->bulk && c->depth == 0 && !c->have_docs)
        return jd_fail(c, MIMEO_EINVAL, "bad_request",
                       "POST body must include `docs` parameter.");
    return 0;
}

static int jd_on_end_map(void *ctx) { return jd_on_end(ctx, true); }
static int jd_on_end_array(void *ctx) { return jd_on_end(ctx, false); }

static const json_handlers jd_handlers = {
    .on_null = jd_on_null,
    .on_bool = jd_on_bool,
    .on_number = jd_on_number,
    .on_string = jd_on_string,
    .on_start_map = jd_on_start_map,
    .on_key = jd_on_key,
    .on_end_map = jd_on_end_map,
    .on_start_array = jd_on_start_array,
    .on_end_array = jd_on_end_array,
};

/* ---- entry points ---------------------------------------------------------------------- */

static void jd_ctx_init(jd_ctx *c, const char *p, size_t n, const json_limits *limits,
                        json_error *err) {
    memset(c, 0, sizeof *c);
    c->err = err;
    c->src = (uintptr_t)p;
    c->src_end = c->src + n;
    c->max_doc = limits && limits->max_doc_bytes ? limits->max_doc_bytes
                                                 : JSON_DEFAULT_MAX_DOC;
}

/* json_parse fills err for its own errors and we fill it for ours; this covers a code that
 * came back without either (it should not happen, but a reply needs a reason). */
static void jd_err_default(json_error *err, int rc) {
    if (err && !err->code) err_set(err, rc, "bad_request", "invalid UTF-8 JSON");
}

void json_doc_destroy(json_doc *d) {
    if (!d) return;
    free(d->id);
    free(d->rev);
    jval_free(d->revisions);
    jval_free(d->attachments);
    buf_destroy(&d->body);
    memset(d, 0, sizeof *d);
}

int json_doc_parse(const char *p, size_t n, const json_limits *limits, json_doc *out,
                   json_error *err) {
    return json_doc_parse_revs(p, n, limits, 0, out, err);
}

int json_doc_parse_revs(const char *p, size_t n, const json_limits *limits,
                        unsigned max_revision_ids, json_doc *out, json_error *err) {
    json_error scratch;
    if (!err) err = &scratch;
    memset(out, 0, sizeof *out);
    jd_ctx c;
    jd_ctx_init(&c, p, n, limits, err);
    c.max_rev_ids = max_revision_ids;
    c.single = out;
    int rc = json_parse(p, n, limits, &jd_handlers, &c, err);
    json_builder_free(c.jb);
    if (rc) {
        jd_err_default(err, rc);
        json_doc_destroy(out);
    }
    return rc;
}

void json_bulk_destroy(json_bulk *b) {
    if (!b) return;
    for (size_t i = 0; i < b->count; i++) json_doc_destroy(&b->docs[i]);
    free(b->docs);
    b->docs = NULL;
    b->count = 0;
}

int json_bulk_parse(const char *p, size_t n, const json_limits *limits, json_bulk *out,
                    json_error *err) {
    return json_bulk_parse_revs(p, n, limits, 0, 0, out, err);
}

int json_bulk_parse_revs(const char *p, size_t n, const json_limits *limits,
                         unsigned max_revision_ids, size_t max_docs, json_bulk *out,
                         json_error *err) {
    return json_bulk_parse_stream(p, n, limits, max_revision_ids, max_docs, NULL, NULL, out,
                                  err);
}

int json_bulk_parse_stream(const char *p, size_t n, const json_limits *limits,
                           unsigned max_revision_ids, size_t max_docs,
                           int (*on_doc)(void *arg, json_bulk *out, size_t index), void *arg,
                           json_bulk *out, json_error *err) {
    json_error scratch;
    if (!err) err = &scratch;
    memset(out, 0, sizeof *out);
    out->new_edits = true;
    jd_ctx c;
    jd_ctx_init(&c, p, n, limits, err);
    c.max_rev_ids = max_revision_ids;
    c.bulk = true;
    c.out = out;
    c.max_docs = max_docs;
    c.on_doc = on_doc;
    c.on_doc_arg = arg;
    int rc = json_parse(p, n, limits, &jd_handlers, &c, err);
    json_builder_free(c.jb);
    if (rc) {
        jd_err_default(err, rc);
        json_bulk_destroy(out);
        out->new_edits = true;
        out->all_or_nothing = false;
    } else if (out->count < c.docs_alloc && out->count) {
        /* give back the slack of the doubling; failure just keeps the bigger array */
        json_doc *docs = realloc(out->docs, out->count * sizeof *docs);
        if (docs) out->docs = docs;
    }
    return rc;
}
