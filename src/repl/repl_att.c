/* Documents with attachments in replication. The source serves them with stubs; here is
 * decided which attachments the target lacks (CouchDB's atts_since rule, applied to the
 * stubs with the target's possible_ancestors: an attachment set at or before the newest
 * ancestor the target holds is already there and stays a stub), their bytes are fetched from
 * the source into a spool file, and the revision is written to the target: small data
 * inline (base64) in _bulk_docs, large data as a multipart/related PUT ?new_edits=false
 * streamed from the spool (what CouchDB's replicator sends). A target that answers
 * missing_stub (its copy is gone, or its digests differ) gets the revision again with every
 * attachment's data. Memory stays bounded whatever the attachments' sizes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nettle/base64.h>

#include "repl_int.h"

/* A revision whose attachment data is at most this is written inline in _bulk_docs. */
#define ATT_INLINE_MAX ((uint64_t)256 << 10)
/* A _bulk_docs body of inline attachments is sent once it holds this much (CouchDB's
 * replicator flushes its batches at 4 MiB too). */
#define ATT_BULK_FLUSH ((size_t)4 << 20)
#define ATT_B64_CHUNK  (3 * 16384)

typedef struct att_w {
    repl_job   *j;
    FILE       *spool;
    buf         bulk;      /* {"new_edits":false,"docs":[…  of inline revisions */
    size_t      nbulk;
    size_t     *bulk_doc;  /* per revision in bulk: its index among the documents */
    size_t      bulk_alloc;
    buf         json;      /* one revision as written */
    repl_att   *atts;
    size_t      natts, atts_alloc;
    repl_resp   resp;
    jval      **trees;     /* per document: parsed, or NULL */
    uint64_t   *since;     /* per document: the atts_since generation */
} att_w;

/* The generation of the newest revision of the document's ancestry (_revisions) that the
 * target has as a possible ancestor; 0 when none. */
static uint64_t att_since_gen(const jval *doc, const repl_want *w) {
    if (!w || w->nancs == 0) return 0;
    const jval *revs = jval_get(doc, "_revisions");
    const jval *ids = jval_get(revs, "ids");
    int64_t start;
    if (!ids || ids->type != JV_ARRAY || !jval_as_i64(jval_get(revs, "start"), &start))
        return 0;
    char rev[64 + 24];
    for (size_t i = 0; i < ids->count; i++) {
        const jval *h = ids->items[i];
        int64_t gen = start - (int64_t)i;
        if (h->type != JV_STRING || gen <= 0 || h->len > 64) continue;
        int n = snprintf(rev, sizeof rev, "%lld-%s", (long long)gen, h->str);
        for (size_t k = 0; k < w->nancs; k++)
            if ((size_t)n == w->anc_lens[k] && memcmp(w->ancs[k], rev, (size_t)n) == 0)
                return (uint64_t)gen;
    }
    return 0;
}

static const repl_want *att_want_of(const repl_want *wants, size_t n, const jval *id) {
    if (!id || id->type != JV_STRING) return NULL;
    for (size_t i = 0; i < n; i++)
        if (wants[i].id_len == id->len && memcmp(wants[i].id, id->str, id->len) == 0)
            return &wants[i];
    return NULL;
}

/* Whether attachment entry a must travel with its data: not a stub, or set after since. */
static bool att_needs_data(const jval *a, uint64_t since) {
    const jval *stub = jval_get(a, "stub");
    if (!stub || stub->type != JV_BOOL || !stub->boolean) return false; /* inline already */
    int64_t revpos;
    if (!jval_as_i64(jval_get(a, "revpos"), &revpos)) return true;
    return revpos <= 0 || (uint64_t)revpos > since;
}

/* Appends the base64 of spool bytes [off, off+len) as a JSON string. */
static int att_put_b64(buf *b, FILE *spool, uint64_t off, uint64_t len) {
    unsigned char in[ATT_B64_CHUNK];
    char out[BASE64_ENCODE_RAW_LENGTH(ATT_B64_CHUNK)];
    int rc = buf_putc(b, '"');
    while (!rc && len > 0) {
        size_t take = len < sizeof in ? (size_t)len : sizeof in;
        ssize_t r = pread(fileno(spool), in, take, (off_t)off);
        if (r != (ssize_t)take) return MIMEO_EIO;
        base64_encode_raw(out, take, in);
        rc = buf_put(b, out, BASE64_ENCODE_RAW_LENGTH(take));
        off += take;
        len -= take;
    }
    return rc ? rc : buf_putc(b, '"');
}

/* The revision doc as written: every member as it came, _attachments rewritten with the
 * entries in w->atts (by name, in order) as inline data (inline) or follows entries. */
static int att_put_doc(att_w *w, const jval *doc, bool inline_data) {
    buf *b = &w->json;
    buf_reset(b);
    int rc = buf_putc(b, '{');
    size_t k = 0;
    for (size_t i = 0; !rc && i < doc->count; i++) {
        if (i) rc = buf_putc(b, ',');
        if (!rc) rc = json_put_str(b, doc->keys[i], doc->key_lens[i]);
        if (!rc) rc = buf_putc(b, ':');
        if (rc) break;
        const jval *v = doc->items[i];
        if (strcmp(doc->keys[i], "_attachments") != 0 || v->type != JV_OBJECT) {
            rc = json_put_jval(b, v);
            continue;
        }
        rc = buf_putc(b, '{');
        for (size_t m = 0; !rc && m < v->count; m++) {
            if (m) rc = buf_putc(b, ',');
            if (!rc) rc = json_put_str(b, v->keys[m], v->key_lens[m]);
            if (!rc) rc = buf_putc(b, ':');
            const jval *a = v->items[m];
            bool sent = k < w->natts && w->atts[k].name == v->keys[m];
            if (!rc && !sent) {
                rc = json_put_jval(b, a);
                continue;
            }
            const repl_att *at = &w->atts[k++];
            /* No digest: the target computes its own (a digest of gzip bytes from the
             * source would not match the content sent). */
            if (!rc) rc = buf_puts(b, "{\"content_type\":");
            if (!rc) rc = json_put_cstr(b, at->content_type);
            const jval *revpos = jval_get(a, "revpos");
            if (!rc && revpos && revpos->type == JV_NUMBER) {
                rc = buf_puts(b, ",\"revpos\":");
                if (!rc) rc = buf_put(b, revpos->str, revpos->len);
            }
            if (!rc && inline_data) {
                rc = buf_puts(b, ",\"data\":");
                if (!rc) rc = att_put_b64(b, w->spool, at->offset, at->length);
            } else if (!rc) {
                rc = buf_printf(b, ",\"length\":%llu,\"follows\":true",
                                (unsigned long long)at->length);
            }
            if (!rc) rc = buf_putc(b, '}');
        }
        if (!rc) rc = buf_putc(b, '}');
    }
    return rc ? rc : buf_putc(b, '}');
}

/* Sends the inline revisions gathered; entries missing_stub are written again with all
 * their data. */
static int att_flush(att_w *w, repl_docset *docs, mimeo_err *err);
static int att_one(att_w *w, repl_docset *docs, size_t d, bool full, mimeo_err *err);

static int att_bulk_add(att_w *w, size_t d) {
    if (ARRAY_GROW(w->bulk_doc, w->bulk_alloc, w->nbulk + 1)) return MIMEO_ENOMEM;
    int rc = buf_puts(&w->bulk, w->nbulk ? "," : "{\"new_edits\":false,\"docs\":[");
    if (!rc) rc = buf_put(&w->bulk, w->json.data, w->json.len);
    if (!rc) w->bulk_doc[w->nbulk++] = d;
    return rc;
}

/* The refusals of one _bulk_docs: a missing_stub is written again with every attachment's
 * data (again, by document index), the others are failures. */
typedef struct att_refused {
    att_w  *w;
    size_t  n;          /* revisions sent */
    size_t  failures;
    size_t *again;
    size_t  nagain;
} att_refused;

static int att_refusal(void *ctx, const repl_refusal *r) {
    att_refused *rf = ctx;
    bool stub = r->error_len == 12 && memcmp(r->error, "missing_stub", 12) == 0;
    if (!stub || rf->nagain >= rf->n) {
        rf->failures++;
        return 0;
    }
    /* which revision: by id among the ones sent (a doc id appears once per rev) */
    for (size_t k = 0; k < rf->n; k++) {
        size_t at = rf->w->bulk_doc[k];
        const jval *did = jval_get(rf->w->trees[at], "_id");
        if (did && did->type == JV_STRING && did->len == r->id_len &&
            memcmp(did->str, r->id, r->id_len) == 0) {
            rf->again[rf->nagain++] = at;
            break;
        }
    }
    return 0;
}

static int att_flush(att_w *w, repl_docset *docs, mimeo_err *err) {
    if (w->nbulk == 0) return 0;
    repl_job *j = w->j;
    int rc = buf_puts(&w->bulk, "]}");
    if (rc) {
        err_set(err, rc, "error", "out of memory");
        return rc;
    }
    size_t n = w->nbulk;
    w->nbulk = 0;
    att_refused rf = { w, n, 0, calloc(n + 1, sizeof *rf.again), 0 };
    if (!rf.again) {
        err_set(err, MIMEO_ENOMEM, "error", "out of memory");
        return MIMEO_ENOMEM;
    }
    rc = j->tgt->ops->bulk_docs(j->tgt, w->bulk.data, w->bulk.len, att_refusal, &rf,
                                &w->resp, err);
    buf_reset(&w->bulk);
    size_t failures = rf.failures, *again = rf.again, nagain = rf.nagain;
    if (rc) {
        free(again);
        return rc;
    }
    long st = w->resp.status;
    if (st == 413 || st == 400) {
        free(again);
        /* too large or refused as a whole: each on its own */
        size_t *idx = malloc(n * sizeof *idx);
        if (!idx) {
            err_set(err, MIMEO_ENOMEM, "error", "out of memory");
            return MIMEO_ENOMEM;
        }
        memcpy(idx, w->bulk_doc, n * sizeof *idx);
        for (size_t i = 0; !rc && i < n; i++) {
            if (n == 1) {
                atomic_fetch_add(&j->stats.doc_write_failures, 1);
                break;
            }
            rc = att_one(w, docs, idx[i], false, err);
            if (!rc) rc = att_flush(w, docs, err);
        }
        free(idx);
        return rc;
    }
    if (st != 201 && st != 200 && st != 202 && st != 417) {
        free(again);
        repl_err_from_resp(err, &w->resp, "_bulk_docs on the target");
        return MIMEO_EIO;
    }
    if (failures > n) failures = n;
    atomic_fetch_add(&j->stats.doc_write_failures, failures);
    atomic_fetch_add(&j->stats.docs_written, n > failures + nagain ? n - failures - nagain : 0);
    for (size_t i = 0; !rc && i < nagain; i++) {
        rc = att_one(w, docs, again[i], true, err);
        if (!rc) rc = att_flush(w, docs, err);
    }
    free(again);
    return rc;
}

/* One revision (document d of docs): its attachment data fetched and the revision queued
 * inline or written as multipart. full: every attachment with its data (after a
 * missing_stub). */
/* What the target said of one revision written with its attachments (w->resp.status). */
static int att_written(att_w *w, repl_docset *docs, size_t d, bool full, mimeo_err *err) {
    repl_job *j = w->j;
    long st = w->resp.status;
    if (st == 200 || st == 201 || st == 202) {
        atomic_fetch_add(&j->stats.docs_written, 1);
    } else if (st == 412 && !full) {
        return att_one(w, docs, d, true, err);
    } else if (st == 401 || st == 403 || st == 413 || st == 415 || st == 412) {
        /* as CouchDB's replicator: refused documents are counted and skipped */
        atomic_fetch_add(&j->stats.doc_write_failures, 1);
    } else {
        repl_err_from_resp(err, &w->resp, "PUT of a document with attachments");
        return MIMEO_EIO;
    }
    return 0;
}

/* Between two local databases the blobs are in one store (the env's): the revision names
 * them by digest, each gets one more reference, and no byte is read, hashed or written.
 * 1: not possible (an attachment gone from the source, or its blob dropped by compaction
 * meanwhile): copy the bytes instead; 0: written, w->resp.status says how; < 0: failure. */
static int att_put_refs(att_w *w, const jval *doc, uint64_t since, mimeo_err *err) {
    repl_job *j = w->j;
    mimeo_db *src = repl_ep_local_db(j->src), *tgt = repl_ep_local_db(j->tgt);
    const jval *id = jval_get(doc, "_id"), *rev = jval_get(doc, "_rev");
    const jval *atts = jval_get(doc, "_attachments");
    if (!src || !tgt || !id || id->type != JV_STRING || !rev || rev->type != JV_STRING ||
        !atts || atts->type != JV_OBJECT)
        return 1;
    mimeo_att_blob *ab = calloc(atts->count + 1, sizeof *ab);
    int rc = ab ? 0 : MIMEO_ENOMEM;
    size_t n = 0;
    w->natts = 0;
    for (size_t i = 0; !rc && i < atts->count; i++) {
        const jval *a = atts->items[i];
        if (!att_needs_data(a, since)) continue;
        if (ARRAY_GROW(w->atts, w->atts_alloc, w->natts + 1)) {
            rc = MIMEO_ENOMEM;
            break;
        }
        mimeo_err e = {0};
        rc = mimeo_blob_ref_new(src, id->str, id->len, rev->str, atts->keys[i],
                                atts->key_lens[i], &ab[n].blob, &e);
        if (rc == MIMEO_ENOTFOUND || rc == MIMEO_EDELETED) rc = 1;
        if (rc) break;
        mimeo_blob_info bi;
        (void)mimeo_blob_info_get(ab[n].blob, &bi);
        const jval *ct = jval_get(a, "content_type");
        repl_att *at = &w->atts[w->natts++];
        at->name = ab[n].name = atts->keys[i];
        at->name_len = ab[n].name_len = atts->key_lens[i];
        at->content_type = ct && ct->type == JV_STRING ? ct->str : "application/octet-stream";
        at->offset = 0;
        at->length = bi.length;
        n++;
    }
    if (!rc && n == 0) rc = 1;   /* only stubs: the usual _bulk_docs path */
    if (!rc) rc = att_put_doc(w, doc, false);
    if (!rc) {
        mimeo_put_opts o = {.new_edits_false = true, .atts = ab, .att_count = n};
        mimeo_put_result res = {0};
        mimeo_err e = {0};
        int prc = mimeo_doc_put(tgt, id->str, id->len, w->json.data, w->json.len, &o, &res, &e);
        mimeo_free(res.id);
        buf_reset(&w->resp.body);
        switch (prc) {
        case 0: w->resp.status = 201; break;
        case MIMEO_ENOTFOUND: rc = 1; break;
        case MIMEO_EPRECONDITION: w->resp.status = 412; break;
        case MIMEO_ETOOLARGE: w->resp.status = 413; break;
        case MIMEO_EFORBIDDEN: w->resp.status = 403; break;
        case MIMEO_EUNAUTHORIZED: w->resp.status = 401; break;
        default:
            rc = prc;
            if (e.reason[0]) err_set(err, prc, "error", "%s", e.reason);
            else err_set(err, prc, "error", "could not write a document with attachments: %s",
                         mimeo_strerror(prc));
        }
    } else if (rc < 0) {
        err_set(err, rc, "error", "could not name the source's attachments: %s",
                mimeo_strerror(rc));
    }
    for (size_t i = 0; ab && i < n; i++) mimeo_blob_free(ab[i].blob);
    free(ab);
    w->natts = 0;
    return rc;
}

static int att_one(att_w *w, repl_docset *docs, size_t d, bool full, mimeo_err *err) {
    repl_job *j = w->j;
    const jval *doc = w->trees[d];
    int rc = 0;
    if (!doc || doc->type != JV_OBJECT) {
        atomic_fetch_add(&j->stats.doc_write_failures, 1);
        return 0;
    }
    const jval *id = jval_get(doc, "_id"), *rev = jval_get(doc, "_rev");
    const jval *atts = jval_get(doc, "_attachments");
    uint64_t since = full ? 0 : w->since[d];
    if (j->src->local && j->tgt->local) {
        rc = att_put_refs(w, doc, since, err);
        if (rc <= 0) return rc ? rc : att_written(w, docs, d, full, err);
        rc = 0;
    }
    w->natts = 0;
    fflush(w->spool);
    if (ftruncate(fileno(w->spool), 0) != 0 || fseeko(w->spool, 0, SEEK_SET) != 0) {
        err_set(err, MIMEO_EIO, "error", "could not use the spool file");
        return MIMEO_EIO;
    }
    uint64_t total = 0;
    bool gone = false;
    for (size_t i = 0; atts && atts->type == JV_OBJECT && i < atts->count && !rc; i++) {
        const jval *a = atts->items[i];
        if (!att_needs_data(a, since) || !j->src->ops->att_get) continue;
        if (!id || id->type != JV_STRING || !rev || rev->type != JV_STRING) break;
        if (ARRAY_GROW(w->atts, w->atts_alloc, w->natts + 1)) {
            rc = MIMEO_ENOMEM;
            err_set(err, rc, "error", "out of memory");
            break;
        }
        const jval *ct = jval_get(a, "content_type");
        repl_att *at = &w->atts[w->natts++];
        at->name = atts->keys[i];
        at->name_len = atts->key_lens[i];
        at->content_type = ct && ct->type == JV_STRING ? ct->str : "application/octet-stream";
        fflush(w->spool);
        at->offset = (uint64_t)ftello(w->spool);
        rc = j->src->ops->att_get(j->src, id->str, id->len, at->name, at->name_len, rev->str,
                                  w->spool, &w->resp, err);
        if (rc) break;
        if (w->resp.status == 404) {
            /* gone from the source since the revision was read (compacted, or a newer
             * revision won): the revision cannot be copied whole */
            gone = true;
            break;
        }
        if (w->resp.status != 200) {
            repl_err_from_resp(err, &w->resp, "attachment GET on the source");
            rc = MIMEO_EIO;
            break;
        }
        fflush(w->spool);
        at->length = (uint64_t)ftello(w->spool) - at->offset;
        total += at->length;
    }
    if (rc || gone) {
        if (gone) atomic_fetch_add(&j->stats.doc_write_failures, 1);
        return rc;
    }
    /* A local target takes the blobs straight from the spool: no base64 at all. */
    bool multipart = (total > ATT_INLINE_MAX || j->tgt->local) && w->natts > 0 &&
                     j->tgt->ops->put_atts;
    rc = att_put_doc(w, doc, !multipart);
    if (rc) {
        err_set(err, rc, "error", rc == MIMEO_EIO ? "could not read the spool file"
                                                  : "out of memory");
        return rc;
    }
    if (!multipart) {
        if ((rc = att_bulk_add(w, d)) != 0) {
            err_set(err, rc, "error", "out of memory");
            return rc;
        }
        return w->bulk.len >= ATT_BULK_FLUSH ? att_flush(w, docs, err) : 0;
    }
    rc = j->tgt->ops->put_atts(j->tgt, id->str, id->len, w->json.data, w->json.len, w->atts,
                               w->natts, w->spool, &w->resp, err);
    return rc ? rc : att_written(w, docs, d, full, err);
}

/* A target that does not say possible_ancestors (pouchdb-server) is asked which ancestors
 * of the revisions it has, in one more _revs_diff: the newest one present is the atts_since
 * of that revision (a PouchDB target resolves the stubs by digest). */
typedef struct att_present {
    buf    missing;   /* "id\nrev\n" per missing ancestor */
} att_present;

static int att_take_missing(void *ctx, const repl_want *mw) {
    att_present *p = ctx;
    int rc = 0;
    for (size_t k = 0; !rc && k < mw->nrevs; k++) {
        rc = buf_put(&p->missing, mw->id, mw->id_len);
        if (!rc) rc = buf_putc(&p->missing, '\n');
        if (!rc) rc = buf_put(&p->missing, mw->revs[k], mw->rev_lens[k]);
        if (!rc) rc = buf_putc(&p->missing, '\n');
    }
    return rc;
}

static bool att_needs_any(const jval *doc) {
    const jval *atts = jval_get(doc, "_attachments");
    for (size_t i = 0; atts && atts->type == JV_OBJECT && i < atts->count; i++)
        if (att_needs_data(atts->items[i], 0)) return true;
    return false;
}

/* Appends to b the ancestors ("N-h") of doc's revision, newest first, comma-separated. */
static int att_put_ancestors(buf *b, const jval *doc, bool *any) {
    const jval *revs = jval_get(doc, "_revisions");
    const jval *ids = jval_get(revs, "ids");
    int64_t start;
    if (!ids || ids->type != JV_ARRAY || !jval_as_i64(jval_get(revs, "start"), &start)) return 0;
    int rc = 0;
    char rev[100];
    for (size_t i = 1; !rc && i < ids->count; i++) {
        const jval *h = ids->items[i];
        int64_t gen = start - (int64_t)i;
        if (h->type != JV_STRING || gen <= 0 || h->len > 64) continue;
        int n = snprintf(rev, sizeof rev, "%lld-%s", (long long)gen, h->str);
        if (*any) rc = buf_putc(b, ',');
        if (!rc) rc = json_put_str(b, rev, (size_t)n);
        *any = true;
    }
    return rc;
}

static int att_ask_ancestors(att_w *w, repl_docset *docs, mimeo_err *err) {
    repl_job *j = w->j;
    bool *asked = calloc(docs->count + 1, sizeof *asked);
    buf body;
    buf_init(&body, 0);
    att_present pr;
    buf_init(&pr.missing, 0);
    int rc = asked ? buf_putc(&body, '{') : MIMEO_ENOMEM;
    size_t nids = 0;
    for (size_t d = 0; !rc && d < docs->count; d++) {
        const jval *doc = w->trees[d];
        const jval *id = jval_get(doc, "_id");
        if (asked[d] || !id || id->type != JV_STRING || !att_needs_any(doc)) continue;
        /* every revision of this id in the batch, under one key */
        bool any = false;
        buf one;
        buf_init(&one, 0);
        for (size_t e = d; !rc && e < docs->count; e++) {
            const jval *eid = jval_get(w->trees[e], "_id");
            if (!eid || eid->type != JV_STRING || eid->len != id->len ||
                memcmp(eid->str, id->str, id->len) != 0)
                continue;
            asked[e] = true;
            rc = att_put_ancestors(&one, w->trees[e], &any);
        }
        if (!rc && any) {
            if (nids++) rc = buf_putc(&body, ',');
            if (!rc) rc = json_put_str(&body, id->str, id->len);
            if (!rc) rc = buf_puts(&body, ":[");
            if (!rc) rc = buf_put(&body, one.data, one.len);
            if (!rc) rc = buf_putc(&body, ']');
        }
        buf_destroy(&one);
    }
    if (!rc) rc = buf_putc(&body, '}');
    if (rc) {
        err_set(err, MIMEO_ENOMEM, "error", "out of memory");
    } else if (nids > 0) {
        rc = j->tgt->ops->revs_diff(j->tgt, body.data, body.len, att_take_missing, &pr,
                                    &w->resp, err);
        if (!rc && w->resp.status != 200) {
            repl_err_from_resp(err, &w->resp, "_revs_diff on the target");
            rc = MIMEO_EIO;
        }
        /* the newest ancestor not reported missing is present */
        const char *m = buf_cstr(&pr.missing);
        for (size_t d = 0; !rc && d < docs->count; d++) {
            const jval *doc = w->trees[d];
            const jval *id = jval_get(doc, "_id");
            const jval *revs = jval_get(doc, "_revisions");
            const jval *ids = jval_get(revs, "ids");
            int64_t start;
            if (!asked[d] || !id || id->type != JV_STRING || !ids || ids->type != JV_ARRAY ||
                !jval_as_i64(jval_get(revs, "start"), &start))
                continue;
            char key[600];
            for (size_t i = 1; i < ids->count; i++) {
                const jval *h = ids->items[i];
                int64_t gen = start - (int64_t)i;
                if (h->type != JV_STRING || gen <= 0 || h->len > 64 || id->len > 400) continue;
                int n = snprintf(key, sizeof key, "%.*s\n%lld-%s\n", (int)id->len, id->str,
                                 (long long)gen, h->str);
                bool missing = false;
                for (const char *q = m; (q = strstr(q, key)) != NULL; q++)
                    if (q == m || q[-1] == '\n') { missing = true; break; }
                (void)n;
                if (!missing) {
                    w->since[d] = (uint64_t)gen;
                    break;
                }
            }
        }
    }
    buf_destroy(&pr.missing);
    buf_destroy(&body);
    free(asked);
    return rc;
}

/* ---- small attachments in one request per group: _bulk_get with attachments=true -------- */
/* A _bulk_get reply this large at most (estimated from the stubs' lengths, base64 counted). */
#define ATT_PREFETCH_MAX ((uint64_t)8 << 20)

typedef struct att_pre {
    att_w       *w;
    repl_docset *docs;
    size_t      *group;    /* the documents asked for */
    size_t       n;
    bool        *done;
    int          rc;
    mimeo_err   *err;
} att_pre;

/* The "N-h" of doc's ancestor at generation gen into out; false when it has none. */
static bool att_rev_at(const jval *doc, uint64_t gen, char *out, size_t cap) {
    const jval *revs = jval_get(doc, "_revisions");
    const jval *ids = jval_get(revs, "ids");
    int64_t start;
    if (!ids || ids->type != JV_ARRAY || !jval_as_i64(jval_get(revs, "start"), &start) ||
        gen == 0 || (int64_t)gen > start || (size_t)(start - (int64_t)gen) >= ids->count)
        return false;
    const jval *h = ids->items[start - (int64_t)gen];
    if (h->type != JV_STRING) return false;
    int n = snprintf(out, cap, "%llu-%s", (unsigned long long)gen, h->str);
    return n > 0 && (size_t)n < cap;
}

/* Bytes of attachment data doc would carry inline (base64), from its stubs' lengths. */
static uint64_t att_inline_size(const jval *doc, uint64_t since) {
    const jval *atts = jval_get(doc, "_attachments");
    uint64_t total = 0;
    for (size_t i = 0; atts && atts->type == JV_OBJECT && i < atts->count; i++) {
        if (!att_needs_data(atts->items[i], since)) continue;
        int64_t len;
        if (!jval_as_i64(jval_get(atts->items[i], "length"), &len) || len < 0) return UINT64_MAX;
        total += (uint64_t)len;
    }
    return total;
}

static bool att_has_stub(const jval *doc) {
    const jval *atts = jval_get(doc, "_attachments");
    for (size_t i = 0; atts && atts->type == JV_OBJECT && i < atts->count; i++) {
        const jval *st = jval_get(atts->items[i], "stub");
        if (st && st->type == JV_BOOL && st->boolean) return true;
    }
    return false;
}

static bool att_same_str(const jval *a, const jval *b) {
    return a && b && a->type == JV_STRING && b->type == JV_STRING && a->len == b->len &&
           memcmp(a->str, b->str, a->len) == 0;
}

/* One document of the reply: queued inline when it is one asked for and carries the data. */
static int att_pre_doc(void *ctx, const repl_doc *doc) {
    const char *json = doc->json;
    size_t len = doc->len;
    att_pre *p = ctx;
    att_w *w = p->w;
    jval *got = NULL;
    if (json_tree_parse(json, len, NULL, &got, NULL) != 0) return 0;
    for (size_t k = 0; k < p->n; k++) {
        size_t d = p->group[k];
        const jval *want = w->trees[d];
        if (p->done[d] || !att_same_str(jval_get(got, "_id"), jval_get(want, "_id")) ||
            !att_same_str(jval_get(got, "_rev"), jval_get(want, "_rev")))
            continue;
        /* a source that ignored attachments=true sent stubs: fetched one by one instead */
        if (att_inline_size(got, w->since[d]) != 0) break;
        /* one that ignored atts_since sent everything: not asked again in this job */
        if (w->since[d] > 0 && att_inline_size(want, 0) != att_inline_size(want, w->since[d]) &&
            !att_has_stub(got))
            atomic_store(&w->j->src->no_atts_since, true);
        buf_reset(&w->json);
        int rc = buf_put(&w->json, json, len);
        if (!rc) rc = att_bulk_add(w, d);
        if (rc) {
            jval_free(got);
            err_set(p->err, rc, "error", "out of memory");
            return p->rc = rc;
        }
        p->done[d] = true;
        break;
    }
    jval_free(got);
    if (w->bulk.len >= ATT_BULK_FLUSH) {
        int rc = att_flush(w, p->docs, p->err);
        if (rc) return p->rc = rc;
    }
    return 0;
}

static int att_pre_send(att_pre *p, buf *body) {
    att_w *w = p->w;
    repl_job *j = w->j;
    if (p->n == 0) return 0;
    int rc = buf_puts(body, "]}");
    if (rc) {
        err_set(p->err, rc, "error", "out of memory");
        return rc;
    }
    size_t unserved = 0;
    rc = j->src->ops->bulk_get_inline(j->src, body->data, body->len, att_pre_doc, p, &unserved,
                                      &w->resp, p->err);
    if (p->rc) return p->rc;
    /* over the reply cap, no _bulk_get, an error: the documents go one by one instead */
    if (rc == MIMEO_ETOOLARGE) rc = 0;
    return rc;
}

/* Fetches the documents whose missing data is small with their data inline, in groups of a
 * few MiB, and queues them; done[d] marks the ones served. */
static int att_prefetch(att_w *w, repl_docset *docs, bool *done, mimeo_err *err) {
    repl_job *j = w->j;
    if (!j->src->ops->bulk_get_inline || atomic_load(&j->src->no_bulk_get)) return 0;
    att_pre p = { w, docs, calloc(docs->count + 1, sizeof(size_t)), 0, done, 0, err };
    if (!p.group) {
        err_set(err, MIMEO_ENOMEM, "error", "out of memory");
        return MIMEO_ENOMEM;
    }
    buf body;
    buf_init(&body, 0);
    uint64_t est = 0;
    int rc = 0;
    for (size_t d = 0; !rc && d < docs->count; d++) {
        const jval *doc = w->trees[d];
        const jval *id = jval_get(doc, "_id"), *rev = jval_get(doc, "_rev");
        if (!doc || !id || id->type != JV_STRING || !rev || rev->type != JV_STRING) continue;
        uint64_t size = att_inline_size(doc, w->since[d]);
        if (size == 0 || size > ATT_INLINE_MAX) continue;
        /* a source without atts_since would send the unchanged ones too */
        if (atomic_load(&j->src->no_atts_since) && size != att_inline_size(doc, 0)) continue;
        size = size / 3 * 4 + 1024;
        if (p.n > 0 && est + size > ATT_PREFETCH_MAX) {
            rc = att_pre_send(&p, &body);
            buf_reset(&body);
            p.n = 0;
            est = 0;
            if (rc) break;
        }
        rc = buf_puts(&body, p.n ? "," : "{\"docs\":[");
        if (!rc) rc = buf_puts(&body, "{\"id\":");
        if (!rc) rc = json_put_str(&body, id->str, id->len);
        if (!rc) rc = buf_puts(&body, ",\"rev\":");
        if (!rc) rc = json_put_str(&body, rev->str, rev->len);
        char since[100];
        if (!rc && att_rev_at(doc, w->since[d], since, sizeof since)) {
            rc = buf_puts(&body, ",\"atts_since\":[");
            if (!rc) rc = json_put_cstr(&body, since);
            if (!rc) rc = buf_putc(&body, ']');
        }
        if (!rc) rc = buf_putc(&body, '}');
        if (rc) {
            err_set(err, rc, "error", "out of memory");
            break;
        }
        p.group[p.n++] = d;
        est += size;
    }
    if (!rc) rc = att_pre_send(&p, &body);
    buf_destroy(&body);
    free(p.group);
    return rc;
}

int repl_att_write(repl_job *j, const repl_want *wants, size_t nwants, repl_docset *docs,
                   mimeo_err *err) {
    if (docs->count == 0) return 0;
    att_w w;
    memset(&w, 0, sizeof w);
    w.j = j;
    buf_init(&w.bulk, 0);
    buf_init(&w.json, 0);
    repl_resp_init(&w.resp);
    int rc = 0;
    w.trees = calloc(docs->count, sizeof *w.trees);
    w.since = calloc(docs->count, sizeof *w.since);
    if (!w.trees || !w.since) {
        err_set(err, MIMEO_ENOMEM, "error", "out of memory");
        rc = MIMEO_ENOMEM;
    }
    bool target_says = false;
    for (size_t i = 0; i < nwants; i++) target_says |= wants[i].nancs > 0;
    for (size_t d = 0; !rc && d < docs->count; d++) {
        if (json_tree_parse(docs->text.data + docs->starts[d], docs->ends[d] - docs->starts[d],
                            NULL, &w.trees[d], NULL) != 0)
            w.trees[d] = NULL;
        w.since[d] = att_since_gen(w.trees[d], att_want_of(wants, nwants,
                                                           jval_get(w.trees[d], "_id")));
    }
    if (!rc && !target_says) rc = att_ask_ancestors(&w, docs, err);
    /* The spool is an unlinked temporary file: nothing is left behind, whatever happens. */
    if (!rc && !(w.spool = tmpfile())) {
        err_set(err, MIMEO_EIO, "error", "could not create a spool file for attachments");
        rc = MIMEO_EIO;
    }
    bool *done = rc ? NULL : calloc(docs->count + 1, sizeof *done);
    if (!rc && !done) {
        err_set(err, MIMEO_ENOMEM, "error", "out of memory");
        rc = MIMEO_ENOMEM;
    }
    if (!rc) rc = att_prefetch(&w, docs, done, err);
    for (size_t d = 0; !rc && d < docs->count; d++) {
        if (done[d]) continue;
        if (atomic_load(&j->cancel)) {
            err_set(err, MIMEO_ECLOSED, "cancelled", "the replication was cancelled");
            rc = MIMEO_ECLOSED;
            break;
        }
        rc = att_one(&w, docs, d, false, err);
    }
    if (!rc) rc = att_flush(&w, docs, err);
    free(done);
    if (w.spool) fclose(w.spool);
    for (size_t d = 0; w.trees && d < docs->count; d++) jval_free(w.trees[d]);
    free(w.trees);
    free(w.since);
    buf_destroy(&w.bulk);
    buf_destroy(&w.json);
    repl_resp_destroy(&w.resp);
    free(w.bulk_doc);
    free(w.atts);
    return rc;
}
