/* The remote endpoint: one database on a CouchDB-protocol server, reached with libcurl.
 * Keep-alive comes from a pool of easy handles (each keeps its connection): a worker takes a
 * handle for one request and puts it back, so several requests run at once without sharing
 * a handle between threads. Transient failures (no connection, 5xx, 429) are retried here
 * with exponential backoff and jitter, so repl.c only ever sees final answers; a reply over
 * the endpoint's max_response fails at once. Names here start with ephttp_ (src/http/ is the
 * server side). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "repl_int.h"
#include "../http/multipart.h"

#define EPHTTP_POOL 16
#define EPHTTP_BACKOFF_FIRST_MS 200
#define EPHTTP_BACKOFF_MAX_MS   5000

typedef struct ephttp_ep {
    repl_ep            base;
    char              *url;        /* the database URL, no trailing slash */
    struct curl_slist *headers;    /* ours plus the spec's */
    char              *user, *password;
    char              *cafile;     /* NULL: the system CA store */
    bool               no_verify;
    unsigned           connect_ms;
    pthread_mutex_t    lock;
    CURL              *pool[EPHTTP_POOL];
    size_t             npool;
    atomic_bool        no_selector; /* the peer refused filter=_selector (pouchdb-server) */
} ephttp_ep;

static pthread_once_t repl_curl_once = PTHREAD_ONCE_INIT;

static void repl_curl_init_once(void) {
    curl_global_init(CURL_GLOBAL_ALL);
}

void repl_curl_init(void) {
    /* curl_global_init is not thread-safe; every thread that may make the first endpoint
     * passes through here. */
    pthread_once(&repl_curl_once, repl_curl_init_once);
}

/* ---- a pool of easy handles ----------------------------------------------------------- */
static CURL *ephttp_take(ephttp_ep *h) {
    CURL *c = NULL;
    pthread_mutex_lock(&h->lock);
    if (h->npool > 0) c = h->pool[--h->npool];
    pthread_mutex_unlock(&h->lock);
    if (!c) c = curl_easy_init();
    return c;
}

static void ephttp_give(ephttp_ep *h, CURL *c) {
    pthread_mutex_lock(&h->lock);
    if (h->npool < EPHTTP_POOL) {
        h->pool[h->npool++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&h->lock);
    if (c) curl_easy_cleanup(c);
}

typedef struct ephttp_sink {
    buf *body;
    int  rc;     /* why the last write was refused: MIMEO_ETOOLARGE or MIMEO_ENOMEM */
} ephttp_sink;

static size_t ephttp_write_cb(char *p, size_t size, size_t n, void *ctx) {
    ephttp_sink *k = ctx;
    size_t len = size * n;
    int rc = buf_put(k->body, p, len);
    if (rc) {
        k->rc = rc;
        return 0;   /* curl aborts the transfer */
    }
    return len;
}

static int ephttp_progress_cb(void *ctx, curl_off_t dt, curl_off_t dn, curl_off_t ut,
                              curl_off_t un) {
    (void)dt; (void)dn; (void)ut; (void)un;
    atomic_bool *cancel = ctx;
    return cancel && atomic_load(cancel) ? 1 : 0;
}

/* Sleeps ms, waking early (false) when the job is cancelled. */
static bool ephttp_sleep(atomic_bool *cancel, unsigned ms) {
    while (ms > 0) {
        if (cancel && atomic_load(cancel)) return false;
        unsigned step = ms < 50 ? ms : 50;
        struct timespec ts = { 0, (long)step * 1000000L };
        nanosleep(&ts, NULL);
        ms -= step;
    }
    return !(cancel && atomic_load(cancel));
}

static unsigned ephttp_backoff_ms(unsigned attempt) {
    unsigned ms = EPHTTP_BACKOFF_FIRST_MS;
    for (unsigned i = 0; i < attempt && ms < EPHTTP_BACKOFF_MAX_MS; i++) ms *= 2;
    if (ms > EPHTTP_BACKOFF_MAX_MS) ms = EPHTTP_BACKOFF_MAX_MS;
    /* Jitter: anywhere in [ms/2, ms], so that many jobs retrying one peer spread out. */
    unsigned r;
    random_bytes(&r, sizeof r);
    return ms / 2 + r % (ms / 2 + 1);
}

/* ---- streamed transfers (attachments) ---------------------------------------------------
 * A request body made of pieces of memory and ranges of a spool file, and a reply whose
 * 200 body goes to a file: either way the bytes pass through in libcurl's buffers only. */
typedef struct ephttp_seg {
    const char *mem;      /* NULL: a range of the spool file */
    uint64_t    off;      /* in the spool file */
    uint64_t    len;
} ephttp_seg;

typedef struct ephttp_xfer {
    const char       *content_type; /* the request's, instead of application/json */
    const char       *accept;       /* instead of application/json */
    FILE             *sink;         /* a 200 reply's body goes here (appended) */
    const ephttp_seg *segs;         /* the request body, when set */
    size_t            nsegs;
    FILE             *spool;        /* the file the ranges are in */
} ephttp_xfer;

typedef struct ephttp_stream {
    const ephttp_xfer *x;
    CURL      *c;
    buf       *body;      /* non-200 replies */
    int        rc;
    size_t     seg;       /* upload position */
    uint64_t   pos;
    bool       io_failed; /* the spool or the sink failed */
} ephttp_stream;

static size_t ephttp_sink_cb(char *p, size_t size, size_t n, void *ctx) {
    ephttp_stream *st = ctx;
    size_t len = size * n;
    long status = 0;
    curl_easy_getinfo(st->c, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200) {
        int rc = buf_put(st->body, p, len);
        if (rc) {
            st->rc = rc;
            return 0;
        }
        return len;
    }
    if (fwrite(p, 1, len, st->x->sink) != len) {
        st->io_failed = true;
        return 0;
    }
    return len;
}

static size_t ephttp_source_cb(char *dst, size_t size, size_t n, void *ctx) {
    ephttp_stream *st = ctx;
    size_t cap = size * n, got = 0;
    while (got < cap && st->seg < st->x->nsegs) {
        const ephttp_seg *g = &st->x->segs[st->seg];
        uint64_t left = g->len - st->pos;
        if (left == 0) {
            st->seg++;
            st->pos = 0;
            continue;
        }
        size_t take = left < cap - got ? (size_t)left : cap - got;
        if (g->mem) {
            memcpy(dst + got, g->mem + st->pos, take);
        } else {
            ssize_t r = pread(fileno(st->x->spool), dst + got, take, (off_t)(g->off + st->pos));
            if (r <= 0) {
                st->io_failed = true;
                return CURL_READFUNC_ABORT;
            }
            take = (size_t)r;
        }
        got += take;
        st->pos += take;
    }
    return got;
}

/* A copy of the endpoint's headers with Content-Type and Accept replaced as x says. */
static struct curl_slist *ephttp_headers_for(ephttp_ep *h, const ephttp_xfer *x) {
    struct curl_slist *l = NULL, *n;
    char line[300];
    for (struct curl_slist *i = h->headers; i; i = i->next) {
        if (x->content_type && strncasecmp(i->data, "Content-Type:", 13) == 0) continue;
        if (x->accept && strncasecmp(i->data, "Accept:", 7) == 0) continue;
        if (!(n = curl_slist_append(l, i->data))) goto fail;
        l = n;
    }
    if (x->content_type) {
        snprintf(line, sizeof line, "Content-Type: %s", x->content_type);
        if (!(n = curl_slist_append(l, line))) goto fail;
        l = n;
    }
    if (x->accept) {
        snprintf(line, sizeof line, "Accept: %s", x->accept);
        if (!(n = curl_slist_append(l, line))) goto fail;
        l = n;
    }
    return l;
fail:
    curl_slist_free_all(l);
    return NULL;
}

static int ephttp_do_x(ephttp_ep *h, const char *method, const char *path, const char *body,
                       size_t len, long timeout_ms, const ephttp_xfer *x, repl_resp *out,
                       mimeo_err *err);

/* One request with retries. path is appended to the database URL (it starts with '/' or
 * '?', or is empty). timeout_ms 0: no overall limit (a stalled transfer is still cut by
 * the low-speed limit). */
static int ephttp_do(ephttp_ep *h, const char *method, const char *path, const char *body,
                     size_t len, long timeout_ms, repl_resp *out, mimeo_err *err) {
    return ephttp_do_x(h, method, path, body, len, timeout_ms, NULL, out, err);
}

/* The same, streamed as x says (NULL: as ephttp_do). A streamed transfer has no overall
 * time limit: its size, not a stall, decides how long it takes. */
static int ephttp_do_x(ephttp_ep *h, const char *method, const char *path, const char *body,
                       size_t len, long timeout_ms, const ephttp_xfer *x, repl_resp *out,
                       mimeo_err *err) {
    buf url;
    buf_init(&url, 0);
    if (buf_puts(&url, h->url) != 0 || buf_puts(&url, path) != 0) {
        buf_destroy(&url);
        err_set(err, MIMEO_ENOMEM, "error", "out of memory");
        return MIMEO_ENOMEM;
    }
    int rc = 0;
    size_t saved_cap = out->body.cap;
    struct curl_slist *xheaders = NULL;
    off_t sink_start = 0;
    if (x && (x->content_type || x->accept) && !(xheaders = ephttp_headers_for(h, x))) {
        buf_destroy(&url);
        err_set(err, MIMEO_ENOMEM, "error", "out of memory");
        return MIMEO_ENOMEM;
    }
    if (x && x->sink) {
        fflush(x->sink);
        sink_start = ftello(x->sink);
    }
    for (unsigned attempt = 0;; attempt++) {
        CURL *c = ephttp_take(h);
        if (!c) {
            rc = MIMEO_ENOMEM;
            err_set(err, rc, "error", "out of memory");
            break;
        }
        buf_reset(&out->body);
        out->body.cap = h->base.max_response ? h->base.max_response : REPL_MAX_RESPONSE;
        out->status = 0;
        ephttp_sink sink = { &out->body, 0 };
        ephttp_stream st = { x, c, &out->body, 0, 0, 0, false };
        curl_easy_setopt(c, CURLOPT_URL, buf_cstr(&url));
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, xheaders ? xheaders : h->headers);
        if (x && x->sink) {
            /* a retry starts the file over */
            fflush(x->sink);
            if (ftruncate(fileno(x->sink), sink_start) != 0 ||
                fseeko(x->sink, sink_start, SEEK_SET) != 0)
                st.io_failed = true;
            curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, ephttp_sink_cb);
            curl_easy_setopt(c, CURLOPT_WRITEDATA, &st);
        } else {
            curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, ephttp_write_cb);
            curl_easy_setopt(c, CURLOPT_WRITEDATA, &sink);
        }
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, ephttp_progress_cb);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, h->base.cancel);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)h->connect_ms);
        long limit = timeout_ms;
        if (!limit) {
            unsigned ep_limit = atomic_load(&h->base.timeout_ms);
            limit = ep_limit ? (long)ep_limit : REPL_REQUEST_TIMEOUT_MS;
            if (x && (x->sink || x->segs) && !ep_limit) limit = 0;
        }
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, limit);
        /* A peer that stops sending for a minute is gone even without a timeout. */
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
        curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, NULL);
        if (h->cafile) curl_easy_setopt(c, CURLOPT_CAINFO, h->cafile);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, h->no_verify ? 0L : 1L);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, h->no_verify ? 0L : 2L);
        char tls_why[CURL_ERROR_SIZE];
        tls_why[0] = '\0';
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, tls_why);
        if (h->user) {
            curl_easy_setopt(c, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
            curl_easy_setopt(c, CURLOPT_USERNAME, h->user);
            curl_easy_setopt(c, CURLOPT_PASSWORD, h->password ? h->password : "");
        }
        if (x && x->segs) {
            uint64_t total = 0;
            for (size_t i = 0; i < x->nsegs; i++) total += x->segs[i].len;
            curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
            curl_easy_setopt(c, CURLOPT_READFUNCTION, ephttp_source_cb);
            curl_easy_setopt(c, CURLOPT_READDATA, &st);
            curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)total);
            curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        } else if (strcmp(method, "GET") == 0) {
            curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, NULL);
            curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
        } else {
            curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
            curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? len : 0));
            curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST,
                             strcmp(method, "POST") == 0 ? NULL : method);
        }
        CURLcode cc = curl_easy_perform(c);
        long status = 0;
        if (cc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL);   /* tls_why goes out of scope */
        /* A streamed transfer leaves options (upload, callbacks into this frame) that the
         * next user of the handle does not set: forget them, keep the connection. */
        if (x) curl_easy_reset(c);
        ephttp_give(h, c);
        if (x && (st.io_failed || st.rc)) {
            rc = st.rc ? st.rc : MIMEO_EIO;
            if (st.rc == MIMEO_ETOOLARGE)
                err_set(err, rc, "response_too_large", "%s %.*s on %s: the reply is larger "
                        "than max_response_size", method, (int)strcspn(path, "?"), path,
                        h->base.display);
            else
                err_set(err, rc, "error", "%s %.*s on %s: %s", method, (int)strcspn(path, "?"),
                        path, h->base.display, st.rc ? mimeo_strerror(st.rc)
                                                     : "could not use the spool file");
            break;
        }

        if (cc == CURLE_ABORTED_BY_CALLBACK ||
            (h->base.cancel && atomic_load(h->base.cancel))) {
            rc = MIMEO_ECLOSED;
            err_set(err, rc, "cancelled", "the replication was cancelled");
            break;
        }
        if (cc == CURLE_WRITE_ERROR && sink.rc) {
            /* Asking again would get the same reply: fail at once, saying why. */
            rc = sink.rc;
            if (rc == MIMEO_ETOOLARGE)
                err_set(err, rc, "response_too_large",
                        "%s %.*s on %s: the reply is larger than max_response_size "
                        "(%zu bytes)", method, (int)strcspn(path, "?"), path,
                        h->base.display, out->body.cap);
            else
                err_set(err, rc, "error", "out of memory");
            break;
        }
        if (cc == CURLE_PEER_FAILED_VERIFICATION || cc == CURLE_SSL_CACERT_BADFILE) {
            /* Asking again meets the same certificate: fail at once, saying what to do. */
            rc = MIMEO_EIO;
            err_set(err, rc, "certificate_error", "could not verify the TLS certificate of "
                    "%s: %s (trust its CA with [replicator] cafile)", h->base.display,
                    tls_why[0] ? tls_why : curl_easy_strerror(cc));
            break;
        }
        bool transient = cc != CURLE_OK || status >= 500 || status == 429;
        if (!transient) {
            repl_health_ok(h->base.health, &h->base);
            out->status = status;
            break;
        }
        mimeo_err why;
        if (cc != CURLE_OK)
            err_set(&why, MIMEO_EIO, "http_request_failed", "could not reach %s: %s",
                    h->base.display, curl_easy_strerror(cc));
        else
            err_set(&why, MIMEO_EIO, "http_error_code", "%s answered %s with HTTP %ld",
                    h->base.display, method, status);
        repl_health_fail(h->base.health, &h->base, &why);
        if (attempt >= h->base.retries) {
            if (cc != CURLE_OK) {
                rc = MIMEO_EIO;
                err_set(err, rc, "http_request_failed", "could not reach %s: %s",
                             h->base.display, curl_easy_strerror(cc));
            } else {
                out->status = status;   /* the caller reports the final 5xx */
            }
            break;
        }
        if (!ephttp_sleep(h->base.cancel, ephttp_backoff_ms(attempt))) {
            rc = MIMEO_ECLOSED;
            err_set(err, rc, "cancelled", "the replication was cancelled");
            break;
        }
    }
    /* The reply buffer is the caller's and may next take a local endpoint's reply. */
    out->body.cap = saved_cap;
    curl_slist_free_all(xheaders);
    buf_destroy(&url);
    return rc;
}

/* ---- the ops --------------------------------------------------------------------------- */
static int ephttp_info(repl_ep *ep, repl_db_info *info, repl_resp *out, mimeo_err *err) {
    ephttp_ep *h = (ephttp_ep *)ep;
    int rc = ephttp_do(h, "GET", "/", NULL, 0, 0, out, err);
    /* A PouchDB database (pouchdb-server) says which PouchDB adapter it runs on. Its server
     * has no filter=_selector and drops its connections after one, so a selector is
     * applied here to its plain feed instead of being asked for. */
    if (rc == 0 && out->status == 200 && out->body.data &&
        strstr(buf_cstr(&out->body), "\"backend_adapter\":")) {
        atomic_store(&h->no_selector, true);
        /* nor does it honour atts_since (PouchDB 9: "aspirational") */
        atomic_store(&h->base.no_atts_since, true);
    }
    if (rc == 0 && out->status == 200) rc = repl_reply_info(out, info, err);
    return rc;
}

static int ephttp_create(repl_ep *ep, repl_resp *out, mimeo_err *err) {
    return ephttp_do((ephttp_ep *)ep, "PUT", "", NULL, 0, 0, out, err);
}

/* One _changes request; flt NULL: unfiltered (docs: with include_docs). */
static int ephttp_changes_req(repl_ep *ep, const char *since, size_t since_len, size_t limit,
                              const char *doc_ids, unsigned wait_ms, const repl_filter *flt,
                              bool docs, repl_resp *out, mimeo_err *err) {
    buf p, body;
    buf_init(&p, 0);
    buf_init(&body, 0);
    int rc = buf_puts(&p, "/_changes?style=all_docs&since=");
    /* Seqs are opaque JSON: a string travels as its text, anything else as JSON text. */
    if (!rc && since_len >= 2 && since[0] == '"') {
        jval *v = NULL;
        if (json_tree_parse(since, since_len, NULL, &v, NULL) == 0 && v->type == JV_STRING)
            rc = buf_put_pct(&p, v->str, v->len);
        else
            rc = buf_put_pct(&p, since, since_len);
        jval_free(v);
    } else if (!rc) {
        rc = buf_put_pct(&p, since, since_len);
    }
    if (!rc && limit > 0) rc = buf_printf(&p, "&limit=%zu", limit);
    if (!rc && wait_ms > 0) rc = buf_printf(&p, "&feed=longpoll&timeout=%u", wait_ms);
    if (!rc && doc_ids) {
        rc = buf_puts(&p, "&filter=_doc_ids");
        if (!rc) rc = buf_puts(&body, "{\"doc_ids\":");
        if (!rc) rc = buf_puts(&body, doc_ids);
        if (!rc) rc = buf_putc(&body, '}');
    }
    if (!rc && docs) rc = buf_puts(&p, "&include_docs=true");
    if (!rc && flt && flt->selector) {
        rc = buf_puts(&p, "&filter=_selector");
        if (!rc) rc = buf_puts(&body, "{\"selector\":");
        if (!rc) rc = buf_puts(&body, flt->selector);
        if (!rc) rc = buf_putc(&body, '}');
    } else if (!rc && flt && flt->name) {
        rc = buf_puts(&p, "&filter=");
        if (!rc) rc = buf_put_pct(&p, flt->name, strlen(flt->name));
        jval *qp = NULL;
        if (!rc && flt->query_params &&
            json_tree_parse(flt->query_params, strlen(flt->query_params), NULL, &qp, NULL) == 0) {
            /* Query parameters travel as text: strings as they are, the rest as JSON. */
            buf val;
            buf_init(&val, 0);
            for (size_t i = 0; i < qp->count && !rc; i++) {
                buf_reset(&val);
                if (qp->items[i]->type == JV_STRING) buf_put(&val, qp->items[i]->str, qp->items[i]->len);
                else json_put_jval(&val, qp->items[i]);
                rc = buf_putc(&p, '&');
                if (!rc) rc = buf_put_pct(&p, qp->keys[i], qp->key_lens[i]);
                if (!rc) rc = buf_putc(&p, '=');
                if (!rc) rc = buf_put_pct(&p, val.data ? val.data : "", val.len);
            }
            buf_destroy(&val);
        }
        jval_free(qp);
    }
    if (rc) {
        err_set(err, MIMEO_ENOMEM, "error", "out of memory");
    } else {
        long tmo = wait_ms > 0 ? (long)wait_ms + 30000 : 0;
        if (body.len)
            rc = ephttp_do((ephttp_ep *)ep, "POST", buf_cstr(&p), body.data, body.len, tmo, out,
                           err);
        else
            rc = ephttp_do((ephttp_ep *)ep, "GET", buf_cstr(&p), NULL, 0, tmo, out, err);
    }
    buf_destroy(&p);
    buf_destroy(&body);
    return rc;
}

/* Keeps the rows of page (a _changes reply read with include_docs) whose doc matches sel,
 * without their docs, into *out. *kept: rows kept; *rows: rows read; *at_end: the peer says
 * nothing is left. */
static int ephttp_select_page(const repl_resp *page, mimeo_selector *sel, buf *out,
                              size_t *kept, size_t *rows, bool *at_end, char **last) {
    jval *v = NULL;
    if (json_tree_parse(page->body.data, page->body.len, NULL, &v, NULL) != 0) return MIMEO_EBADJSON;
    const jval *res = jval_get(v, "results");
    if (!res || res->type != JV_ARRAY) {
        jval_free(v);
        return MIMEO_EBADJSON;
    }
    int rc = buf_puts(out, "{\"results\":[");
    *kept = 0;
    *rows = res->count;
    buf doc;
    buf_init(&doc, 0);
    for (size_t i = 0; i < res->count && !rc; i++) {
        const jval *row = res->items[i];
        const jval *d = jval_get(row, "doc");
        bool match = false;
        if (d && d->type == JV_OBJECT) {
            buf_reset(&doc);
            if (json_put_jval(&doc, d) == 0)
                mimeo_selector_match(sel, doc.data, doc.len, &match);
        }
        if (!match) continue;
        if ((*kept)++) rc = buf_putc(out, ',');
        if (!rc) rc = buf_putc(out, '{');
        size_t k = 0;
        for (size_t m = 0; m < row->count && !rc; m++) {
            if (strcmp(row->keys[m], "doc") == 0) continue;
            if (k++) rc = buf_putc(out, ',');
            if (!rc) rc = json_put_str(out, row->keys[m], row->key_lens[m]);
            if (!rc) rc = buf_putc(out, ':');
            if (!rc) rc = json_put_jval(out, row->items[m]);
        }
        if (!rc) rc = buf_putc(out, '}');
    }
    buf_destroy(&doc);
    const jval *ls = jval_get(v, "last_seq");
    if ((!ls || ls->type == JV_NULL) && res->count)
        ls = jval_get(res->items[res->count - 1], "seq");
    int64_t pending = -1;
    bool has_pending = jval_as_i64(jval_get(v, "pending"), &pending);
    *at_end = res->count == 0 || (has_pending && pending == 0);
    if (!rc) rc = buf_puts(out, "],\"last_seq\":");
    if (!rc) rc = ls ? json_put_jval(out, ls) : buf_puts(out, "0");
    if (!rc && has_pending) rc = buf_printf(out, ",\"pending\":%lld", (long long)pending);
    if (!rc) rc = buf_putc(out, '}');
    if (!rc && ls) {
        buf t;
        buf_init(&t, 0);
        json_put_jval(&t, ls);
        size_t n;
        free(*last);
        *last = buf_detach(&t, &n);
    }
    jval_free(v);
    return rc;
}

/* The page of the peer's feed (its own filter, or a selector applied here) into out. */
static int ephttp_changes_page(repl_ep *ep, const char *since, size_t since_len, size_t limit,
                               const char *doc_ids, unsigned wait_ms, repl_resp *out,
                               mimeo_err *err) {
    ephttp_ep *h = (ephttp_ep *)ep;
    const repl_filter *flt = ep->filter;
    if (!flt || !flt->selector || !atomic_load(&h->no_selector)) {
        int rc = ephttp_changes_req(ep, since, since_len, limit, doc_ids, wait_ms, flt, false,
                                    out, err);
        if (rc || !flt || !flt->selector || (out->status != 400 && out->status != 404))
            return rc;
        /* A peer without filter=_selector (pouchdb-server answers 404 "missing"): read its
         * feed with the documents and select here, as CouchDB's own fallback would. */
        atomic_store(&h->no_selector, true);
    }
    mimeo_selector *sel = NULL;
    mimeo_err se = {0};
    int rc = mimeo_selector_parse(flt->selector, strlen(flt->selector), &sel, &se);
    if (rc) {
        err_set(err, rc, "bad_request", "%s", se.reason);
        return rc;
    }
    char *cur = repl_strndup(since, since_len);
    buf page;
    buf_init(&page, 0);
    while (cur) {
        rc = ephttp_changes_req(ep, cur, strlen(cur), limit, NULL, wait_ms, NULL, true, out, err);
        if (rc || out->status != 200) break;
        size_t kept = 0, rows = 0;
        bool at_end = false;
        buf_reset(&page);
        if (ephttp_select_page(out, sel, &page, &kept, &rows, &at_end, &cur) != 0) {
            err_set(err, MIMEO_EIO, "bad_reply", "_changes answered no results array");
            rc = MIMEO_EIO;
            break;
        }
        /* A page with nothing selected goes on reading: an empty page means the end. */
        if (kept > 0 || at_end || rows == 0 || atomic_load(ep->cancel)) {
            buf_reset(&out->body);
            buf_put(&out->body, page.data, page.len);
            break;
        }
    }
    if (!cur && !rc) {
        err_set(err, MIMEO_ENOMEM, "error", "out of memory");
        rc = MIMEO_ENOMEM;
    }
    free(cur);
    buf_destroy(&page);
    mimeo_selector_free(sel);
    return rc;
}

static int ephttp_changes(repl_ep *ep, const char *since, size_t since_len, size_t limit,
                          const char *doc_ids, unsigned wait_ms, repl_change_fn fn, void *ctx,
                          repl_page *page, repl_resp *out, mimeo_err *err) {
    int rc = ephttp_changes_page(ep, since, since_len, limit, doc_ids, wait_ms, out, err);
    if (!rc && out->status == 200) rc = repl_reply_changes(out, fn, ctx, page, err);
    return rc;
}

static int ephttp_revs_diff(repl_ep *ep, const char *body, size_t len, repl_missing_fn fn,
                            void *ctx, repl_resp *out, mimeo_err *err) {
    int rc = ephttp_do((ephttp_ep *)ep, "POST", "/_revs_diff", body, len, 0, out, err);
    if (!rc && out->status == 200) rc = repl_reply_missing(out, fn, ctx, err);
    return rc;
}

/* The revisions of w as a JSON array. */
static int ephttp_revs_json(buf *b, const repl_want *w) {
    int rc = buf_putc(b, '[');
    for (size_t k = 0; !rc && k < w->nrevs; k++) {
        if (k) rc = buf_putc(b, ',');
        if (!rc) rc = json_put_str(b, w->revs[k], w->rev_lens[k]);
    }
    return rc ? rc : buf_putc(b, ']');
}

static int ephttp_bulk_get(repl_ep *ep, const repl_want *want, size_t n, repl_doc_fn fn,
                           void *ctx, size_t *unserved, repl_resp *out, mimeo_err *err) {
    /* {"docs":[{"id","rev"},…]} naming exactly the missing revisions */
    buf b;
    buf_init(&b, 0);
    int rc = buf_puts(&b, "{\"docs\":[");
    size_t k = 0;
    for (size_t i = 0; !rc && i < n; i++) {
        for (size_t r = 0; !rc && r < want[i].nrevs; r++) {
            if (k++) rc = buf_putc(&b, ',');
            if (!rc) rc = buf_puts(&b, "{\"id\":");
            if (!rc) rc = json_put_str(&b, want[i].id, want[i].id_len);
            if (!rc) rc = buf_puts(&b, ",\"rev\":");
            if (!rc) rc = json_put_str(&b, want[i].revs[r], want[i].rev_lens[r]);
            if (!rc) rc = buf_putc(&b, '}');
        }
    }
    if (!rc) rc = buf_puts(&b, "]}");
    if (rc) err_set(err, MIMEO_ENOMEM, "error", "out of memory");
    else rc = ephttp_do((ephttp_ep *)ep, "POST", "/_bulk_get?revs=true&latest=true", b.data,
                        b.len, 0, out, err);
    buf_destroy(&b);
    if (!rc && out->status == 200) rc = repl_reply_docs(out, fn, ctx, unserved, err);
    return rc;
}

static int ephttp_open_revs(repl_ep *ep, const repl_want *want, repl_doc_fn fn, void *ctx,
                            repl_resp *out, mimeo_err *err) {
    buf p, revs;
    buf_init(&p, 0);
    buf_init(&revs, 0);
    int rc = buf_putc(&p, '/');
    if (!rc) rc = buf_put_pct(&p, want->id, want->id_len);
    if (!rc) rc = buf_puts(&p, "?revs=true&latest=true&open_revs=");
    if (!rc) rc = ephttp_revs_json(&revs, want);
    if (!rc) rc = buf_put_pct(&p, revs.data, revs.len);
    if (rc) err_set(err, MIMEO_ENOMEM, "error", "out of memory");
    else rc = ephttp_do((ephttp_ep *)ep, "GET", buf_cstr(&p), NULL, 0, 0, out, err);
    buf_destroy(&p);
    buf_destroy(&revs);
    if (!rc && out->status == 200) rc = repl_reply_docs(out, fn, ctx, NULL, err);
    return rc;
}

static int ephttp_bulk_docs(repl_ep *ep, const char *body, size_t len, repl_refusal_fn fn,
                            void *ctx, repl_resp *out, mimeo_err *err) {
    int rc = ephttp_do((ephttp_ep *)ep, "POST", "/_bulk_docs", body, len, 0, out, err);
    long st = out->status;
    if (!rc && (st == 200 || st == 201 || st == 202 || st == 417))
        rc = repl_reply_refusals(out, fn, ctx, err);
    return rc;
}

static int ephttp_full_commit(repl_ep *ep, repl_resp *out, mimeo_err *err) {
    return ephttp_do((ephttp_ep *)ep, "POST", "/_ensure_full_commit", "", 0, 0, out, err);
}

static int ephttp_local_path(buf *p, const char *id) {
    int rc = buf_puts(p, "/_local/");
    if (!rc) rc = buf_put_pct(p, id, strlen(id));
    return rc;
}

static int ephttp_local_get(repl_ep *ep, const char *id, char rev[MIMEO_REV_MAX],
                            repl_resp *out, mimeo_err *err) {
    buf p;
    buf_init(&p, 0);
    int rc = ephttp_local_path(&p, id);
    if (rc) err_set(err, MIMEO_ENOMEM, "error", "out of memory");
    else rc = ephttp_do((ephttp_ep *)ep, "GET", buf_cstr(&p), NULL, 0, 0, out, err);
    buf_destroy(&p);
    if (!rc && out->status == 200) repl_reply_rev(out, "_rev", rev);
    return rc;
}

static int ephttp_local_put(repl_ep *ep, const char *id, const char *rev, const char *body,
                            size_t len, char new_rev[MIMEO_REV_MAX], repl_resp *out,
                            mimeo_err *err) {
    (void)rev;   /* travels as the body's _rev */
    buf p;
    buf_init(&p, 0);
    int rc = ephttp_local_path(&p, id);
    if (rc) err_set(err, MIMEO_ENOMEM, "error", "out of memory");
    else rc = ephttp_do((ephttp_ep *)ep, "PUT", buf_cstr(&p), body, len, 0, out, err);
    buf_destroy(&p);
    if (!rc && out->status >= 200 && out->status < 300) repl_reply_rev(out, "rev", new_rev);
    return rc;
}

/* "/{id}" with the id escaped, but the "/" after _design or _local kept: CouchDB routes
 * /db/_design%2Fx as the document too, pouchdb-server does not. */
static int ephttp_doc_path(buf *p, const char *id, size_t id_len) {
    int rc = buf_putc(p, '/');
    size_t skip = 0;
    if (id_len > 8 && memcmp(id, "_design/", 8) == 0) skip = 8;
    if (id_len > 7 && memcmp(id, "_local/", 7) == 0) skip = 7;
    if (!rc && skip) rc = buf_put(p, id, skip);
    if (!rc) rc = buf_put_pct(p, id + skip, id_len - skip);
    return rc;
}

static int ephttp_att_get(repl_ep *ep, const char *id, size_t id_len, const char *name,
                          size_t name_len, const char *rev, FILE *sink, repl_resp *out,
                          mimeo_err *err) {
    buf p;
    buf_init(&p, 0);
    int rc = ephttp_doc_path(&p, id, id_len);
    /* each "/"-separated piece of the name escaped alone, as PouchDB does */
    if (!rc) rc = buf_putc(&p, '/');
    for (size_t i = 0, from = 0; !rc && i <= name_len; i++) {
        if (i < name_len && name[i] != '/') continue;
        rc = buf_put_pct(&p, name + from, i - from);
        if (!rc && i < name_len) rc = buf_putc(&p, '/');
        from = i + 1;
    }
    if (!rc && rev) {
        rc = buf_puts(&p, "?rev=");
        if (!rc) rc = buf_put_pct(&p, rev, strlen(rev));
    }
    if (rc) {
        buf_destroy(&p);
        err_set(err, MIMEO_ENOMEM, "error", "out of memory");
        return MIMEO_ENOMEM;
    }
    ephttp_xfer x = { NULL, "*/*", sink, NULL, 0, NULL };
    rc = ephttp_do_x((ephttp_ep *)ep, "GET", buf_cstr(&p), NULL, 0, 0, &x, out, err);
    buf_destroy(&p);
    return rc;
}

static int ephttp_bulk_get_inline(repl_ep *ep, const char *body, size_t len, repl_doc_fn fn,
                                  void *ctx, size_t *unserved, repl_resp *out, mimeo_err *err) {
    int rc = ephttp_do((ephttp_ep *)ep, "POST", "/_bulk_get?revs=true&attachments=true", body,
                       len, 0, out, err);
    if (!rc && out->status == 200) rc = repl_reply_docs(out, fn, ctx, unserved, err);
    return rc;
}

static int ephttp_put_atts(repl_ep *ep, const char *id, size_t id_len, const char *json,
                           size_t len, const repl_att *atts, size_t n, FILE *spool,
                           repl_resp *out, mimeo_err *err) {
    char bnd[33];
    multipart_boundary_new(bnd);
    buf p, ctype, heads;
    buf_init(&p, 0);
    buf_init(&ctype, 0);
    buf_init(&heads, 0);
    /* pieces: doc head, json, then per attachment its head and its bytes, then the close */
    size_t nsegs = 3 + 2 * n;
    ephttp_seg *segs = calloc(nsegs, sizeof *segs);
    size_t *head_at = calloc(n + 2, sizeof *head_at);
    int rc = segs && head_at ? 0 : MIMEO_ENOMEM;
    if (!rc) rc = ephttp_doc_path(&p, id, id_len);
    if (!rc) rc = buf_puts(&p, "?new_edits=false");
    if (!rc) rc = multipart_put_ctype(&ctype, "related", bnd);
    if (!rc) rc = multipart_put_doc_head(&heads, bnd);
    for (size_t i = 0; !rc && i < n; i++) {
        head_at[i + 1] = heads.len;
        rc = multipart_put_att_head(&heads, bnd, atts[i].name, atts[i].name_len,
                                    atts[i].content_type, atts[i].length, false);
    }
    if (!rc) {
        head_at[n + 1] = heads.len;
        rc = multipart_put_close(&heads, bnd);
    }
    if (rc) {
        err_set(err, rc, rc == MIMEO_EINVAL ? "bad_request" : "error",
                rc == MIMEO_EINVAL ? "an attachment name or type holds a line break"
                                   : "out of memory");
    } else {
        /* heads no longer moves: point the pieces into it */
        size_t k = 0;
        segs[k++] = (ephttp_seg){ heads.data, 0, head_at[1] - 0 };
        segs[k++] = (ephttp_seg){ json, 0, len };
        for (size_t i = 0; i < n; i++) {
            size_t end = i + 1 < n ? head_at[i + 2] : head_at[n + 1];
            segs[k++] = (ephttp_seg){ heads.data + head_at[i + 1], 0, end - head_at[i + 1] };
            segs[k++] = (ephttp_seg){ NULL, atts[i].offset, atts[i].length };
        }
        segs[k++] = (ephttp_seg){ heads.data + head_at[n + 1], 0, heads.len - head_at[n + 1] };
        ephttp_xfer x = { buf_cstr(&ctype), NULL, NULL, segs, k, spool };
        rc = ephttp_do_x((ephttp_ep *)ep, "PUT", buf_cstr(&p), NULL, 0, 0, &x, out, err);
    }
    free(segs);
    free(head_at);
    buf_destroy(&p);
    buf_destroy(&ctype);
    buf_destroy(&heads);
    return rc;
}

static void ephttp_free(repl_ep *ep) {
    ephttp_ep *h = (ephttp_ep *)ep;
    for (size_t i = 0; i < h->npool; i++) curl_easy_cleanup(h->pool[i]);
    curl_slist_free_all(h->headers);
    pthread_mutex_destroy(&h->lock);
    free(h->url);
    free(h->user);
    free(h->password);
    free(h->cafile);
    free(h->base.display);
    free(h);
}

static const repl_ep_ops ephttp_ops = {
    .info = ephttp_info,
    .create = ephttp_create,
    .changes = ephttp_changes,
    .revs_diff = ephttp_revs_diff,
    .bulk_get = ephttp_bulk_get,
    .open_revs = ephttp_open_revs,
    .bulk_docs = ephttp_bulk_docs,
    .ensure_full_commit = ephttp_full_commit,
    .local_get = ephttp_local_get,
    .local_put = ephttp_local_put,
    .att_get = ephttp_att_get,
    .bulk_get_inline = ephttp_bulk_get_inline,
    .put_atts = ephttp_put_atts,
    .free = ephttp_free,
};

int repl_ep_http_new(const repl_ep_spec *spec, atomic_bool *cancel, unsigned connect_ms,
                     repl_ep **out, mimeo_err *err) {
    repl_curl_init();
    ephttp_ep *h = calloc(1, sizeof *h);
    if (!h) goto nomem;
    pthread_mutex_init(&h->lock, NULL);
    h->base.ops = &ephttp_ops;
    h->base.cancel = cancel;
    h->base.retries = REPL_START_RETRIES;
    h->connect_ms = connect_ms ? connect_ms : REPL_CONNECT_TIMEOUT_MS;
    size_t n = strlen(spec->url);
    while (n > 0 && spec->url[n - 1] == '/') n--;
    h->url = repl_strndup(spec->url, n);
    if (!h->url) goto nomem_free;
    h->base.display = repl_url_display(h->url);
    if (!h->base.display) goto nomem_free;
    h->no_verify = spec->no_verify;
    if (spec->cafile && !(h->cafile = strdup(spec->cafile))) goto nomem_free;
    if (spec->user) {
        h->user = strdup(spec->user);
        h->password = strdup(spec->password ? spec->password : "");
        if (!h->user || !h->password) goto nomem_free;
    }
    static const char *const fixed[] = {
        "Accept: application/json", "Content-Type: application/json",
        /* curl would wait for "100 Continue" before each large body: a wasted round
         * trip per batch. */
        "Expect:",
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        struct curl_slist *l = curl_slist_append(h->headers, fixed[i]);
        if (!l) goto nomem_free;
        h->headers = l;
    }
    for (size_t i = 0; i < spec->nheaders; i++) {
        struct curl_slist *l = curl_slist_append(h->headers, spec->headers[i]);
        if (!l) goto nomem_free;
        h->headers = l;
    }
    *out = &h->base;
    return 0;
nomem_free:
    ephttp_free(&h->base);
nomem:
    err_set(err, MIMEO_ENOMEM, "error", "out of memory");
    return MIMEO_ENOMEM;
}
