/* The replicator: copies every revision a source database has and a target lacks, over
 * CouchDB's replication protocol, between any two endpoints (local databases or URLs).
 *
 * The protocol, step by step, as a job runs it:
 *  1. Open both ends: create the target when asked (PUT /{db}, 412 is fine), then
 *     GET /{db} on each; a 404 is db_not_found. Unreachable peers are retried a few times
 *     only, so a one-shot replication to a dead URL fails fast with a JSON error.
 *  2. Replication id: md5 hex of (source, target, doc_ids) — repl_req.c. Checkpoints live in
 *     _local/{id} on both ends.
 *  3. Read both checkpoints and agree on a start seq like CouchDB: the same session_id on
 *     both → source_last_seq; otherwise walk both histories for the newest shared session
 *     and take its recorded_seq; no agreement → the beginning (or since_seq when given).
 *  4. Reader: GET _changes?style=all_docs&since=S&limit=B in pages; each page becomes a
 *     batch; "since" advances to the page's last_seq. An empty page (or a short one with
 *     "pending":0) means the feed is read (one-shot) or that it is time to long-poll
 *     (continuous).
 *  5. Workers (several batches in flight, so both peers and the network work at once), per
 *     batch (repl_process):
 *     a. POST target/_revs_diff with every leaf of every row;
 *     b. POST source/_bulk_get?revs=true&latest=true with exactly the missing revisions (or,
 *        when the source has no _bulk_get or its reply is over max_response_size,
 *        GET /{db}/{id}?open_revs=[…]&revs=true&latest=true per document);
 *     c. POST target/_bulk_docs {"new_edits":false} with the revisions fetched. A 413 or
 *        400 halves the batch; a document the target refuses is counted in
 *        doc_write_failures and the replication goes on.
 *  6. Progress: batches finish in any order; the "through" seq advances only over batches
 *     that are all written, so a checkpoint never claims a change that is not on the target.
 *  7. Checkpoint every checkpoint_interval while progressing, and at the end: POST
 *     _ensure_full_commit on both, then PUT _local/{id} on source and target with CouchDB's
 *     document (session_id, source_last_seq, history capped at 50).
 *  8. One-shot: done when the feed is read and every batch written; the reply is CouchDB's
 *     {ok, session_id, source_last_seq, replication_id_version, history}. Continuous: the
 *     reader long-polls the source (feed=longpoll, or a wait on the local database) and
 *     the loop of steps 4–7 goes on until the job is cancelled.
 * Network failures, 5xx and 429 are retried below this file, in the remote endpoint. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "repl_int.h"

/* Every job's documents read and written since the process started, for the metrics
 * endpoint: job counters reset with their jobs, these never do. */
static struct {
    atomic_uint_fast64_t docs_read, docs_written, doc_write_failures;
} repl_totals;

void mimeo_replicator_stats_get(mimeo_replicator_stats *out) {
    out->docs_read = atomic_load(&repl_totals.docs_read);
    out->docs_written = atomic_load(&repl_totals.docs_written);
    out->doc_write_failures = atomic_load(&repl_totals.doc_write_failures);
}

struct repl_batch {
    uint64_t    no;
    buf         diff;       /* step 5a's question, {"id":["rev",…],…}, built as rows arrive */
    size_t      nids, nrevs;
    char       *last_seq;   /* JSON text: every change of the page is at or below it */
    bool        done;
    repl_batch *qnext;      /* work queue */
    repl_batch *onext;      /* feed order */
};

static void repl_batch_free(repl_batch *b) {
    if (!b) return;
    buf_destroy(&b->diff);
    free(b->last_seq);
    free(b);
}

static void repl_set_str(char **slot, const char *s) {
    char *n = s ? strdup(s) : NULL;
    free(*slot);
    *slot = n;
}

static void repl_touch(repl_job *j) {
    atomic_store(&j->updated_on, (int_fast64_t)time(NULL));
}

/* Records the first failure; later ones are consequences of the first. */
static void repl_fail(repl_job *j, const mimeo_err *e) {
    pthread_mutex_lock(&j->lock);
    if (!j->failed) {
        j->failed = true;
        j->error = *e;
    }
    pthread_cond_broadcast(&j->cond);
    pthread_mutex_unlock(&j->lock);
}

/* ---- the counters -------------------------------------------------------------------------- */
/* Every counter a job keeps, with its name in checkpoint histories (and one-shot replies)
 * and in the monitoring endpoints (_active_tasks, _scheduler, _replication_stats): CouchDB
 * names two of them differently in the two places, and one only in the second. */
static const struct repl_counter {
    size_t      offset;        /* in repl_stats */
    const char *history_name;  /* NULL: not in histories */
    const char *task_name;
} repl_counters[] = {
    { offsetof(repl_stats, missing_checked), "missing_checked", "revisions_checked" },
    { offsetof(repl_stats, missing_found), "missing_found", "missing_revisions_found" },
    { offsetof(repl_stats, docs_read), "docs_read", "docs_read" },
    { offsetof(repl_stats, docs_written), "docs_written", "docs_written" },
    { offsetof(repl_stats, doc_write_failures), "doc_write_failures", "doc_write_failures" },
    { offsetof(repl_stats, bulk_get_docs), "bulk_get_docs", "bulk_get_docs" },
    { offsetof(repl_stats, bulk_get_attempts), "bulk_get_attempts", "bulk_get_attempts" },
    { offsetof(repl_stats, changes_pending), NULL, "changes_pending" },
};

/* Appends "name":value for every counter, comma-separated (no braces). */
static int repl_put_counters(buf *b, repl_stats *st, bool history) {
    int rc = 0;
    size_t k = 0;
    for (size_t i = 0; i < sizeof repl_counters / sizeof repl_counters[0]; i++) {
        const struct repl_counter *c = &repl_counters[i];
        const char *name = history ? c->history_name : c->task_name;
        if (!name) continue;
        atomic_uint_fast64_t *v = (atomic_uint_fast64_t *)((char *)st + c->offset);
        rc |= buf_printf(b, "%s\"%s\":%llu", k++ ? "," : "", name,
                         (unsigned long long)atomic_load(v));
    }
    return rc;
}

static void repl_stats_reset(repl_stats *st) {
    for (size_t i = 0; i < sizeof repl_counters / sizeof repl_counters[0]; i++)
        atomic_store((atomic_uint_fast64_t *)((char *)st + repl_counters[i].offset), 0);
}

/* ---- jobs ------------------------------------------------------------------------------ */
repl_job *repl_job_new(mimeo_env *env, repl_req *req) {
    repl_job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->env = env;
    j->req = *req;
    memset(req, 0, sizeof *req);
    repl_req_id(env, &j->req, j->rep_id);
    pthread_mutex_init(&j->lock, NULL);
    pthread_cond_init(&j->cond, NULL);
    pthread_mutex_init(&j->ckpt_lock, NULL);
    pthread_mutex_init(&j->health.lock, NULL);
    buf_init(&j->base_history, 0);
    j->started_on = (int64_t)time(NULL);
    atomic_store(&j->updated_on, (int_fast64_t)j->started_on);
    atomic_store(&j->state, REPL_ST_INITIALIZING);
    return j;
}

static void repl_job_reset(repl_job *j) {
    repl_health_ok(&j->health, j->src);
    repl_health_ok(&j->health, j->tgt);
    repl_ep_free(j->src);
    repl_ep_free(j->tgt);
    j->src = j->tgt = NULL;
    while (j->order_head) {
        repl_batch *b = j->order_head;
        j->order_head = b->onext;
        repl_batch_free(b);
    }
    /* The monitoring producers read these under the lock, even between two runs. */
    pthread_mutex_lock(&j->lock);
    j->order_tail = j->queue_head = j->queue_tail = NULL;
    j->inflight = 0;
    j->reading_done = false;
    j->failed = false;
    memset(&j->error, 0, sizeof j->error);
    repl_set_str(&j->start_seq, NULL);
    repl_set_str(&j->through_seq, NULL);
    repl_set_str(&j->ckpt_seq, NULL);
    pthread_mutex_unlock(&j->lock);
    repl_set_str(&j->src_ckpt_rev, NULL);
    repl_set_str(&j->tgt_ckpt_rev, NULL);
    buf_reset(&j->base_history);
    j->base_history_n = 0;
    j->src_ckpt_readonly = false;
    atomic_store(&j->caught_up, false);
    repl_stats_reset(&j->stats);
}

void repl_job_free(repl_job *j) {
    if (!j) return;
    repl_job_reset(j);
    free(j->source_seq);
    buf_destroy(&j->base_history);
    repl_req_destroy(&j->req);
    pthread_mutex_destroy(&j->lock);
    pthread_cond_destroy(&j->cond);
    pthread_mutex_destroy(&j->ckpt_lock);
    pthread_mutex_destroy(&j->health.lock);
    free(j);
}

/* ---- step 1: open the endpoints --------------------------------------------------------- */
static int repl_open_ep(repl_job *j, const repl_ep_spec *s, bool create, repl_ep **out,
                        mimeo_err *err) {
    if (s->local)
        return repl_ep_local_new(j->env, s->url, create, &j->cancel, out, err);
    int rc = repl_ep_http_new(s, &j->cancel, j->req.connect_ms, out, err);
    if (rc) return rc;
    (*out)->health = &j->health;
    (*out)->max_response = j->req.max_response ? j->req.max_response : REPL_MAX_RESPONSE;
    if (!create) return 0;
    repl_resp r;
    repl_resp_init(&r);
    rc = (*out)->ops->create(*out, &r, err);
    /* CouchDB goes on after anything but 401/403: the GET that follows tells the truth. */
    if (!rc && (r.status == 401 || r.status == 403)) {
        repl_err_from_resp(err, &r, "could not create the target database");
        snprintf(err->error, sizeof err->error, "unauthorized");
        rc = MIMEO_EINVAL;
    }
    repl_resp_destroy(&r);
    return rc;
}

/* GET /{db}; keeps update_seq of the source as the first source_seq. */
static int repl_check_db(repl_job *j, repl_ep *ep, bool is_source, mimeo_err *err) {
    repl_resp r;
    repl_resp_init(&r);
    repl_db_info info = { NULL, -1 };
    int rc = ep->ops->info(ep, &info, &r, err);
    if (rc) {
        /* CouchDB's name for a database it cannot open, whatever the reason. */
        if (rc != MIMEO_ECLOSED) snprintf(err->error, sizeof err->error, "db_not_found");
        goto out;
    }
    if (r.status == 404 || r.status == 401 || r.status == 403 || r.status != 200) {
        rc = MIMEO_ENOTFOUND;
        if (r.status == 401 || r.status == 403)
            err_set(err, rc, "unauthorized", "unauthorized to access %s",
                         ep->display);
        else if (r.status == 404)
            err_set(err, rc, "db_not_found", "could not open %s", ep->display);
        else
            repl_err_from_resp(err, &r, ep->display);
        goto out;
    }
    if (is_source) {
        j->src_update_seq = info.update_seq_num;
        pthread_mutex_lock(&j->lock);
        free(j->source_seq);
        j->source_seq = info.update_seq;
        info.update_seq = NULL;
        pthread_mutex_unlock(&j->lock);
    }
out:
    free(info.update_seq);
    repl_resp_destroy(&r);
    return rc;
}

/* ---- step 3: agree on a start seq from the two checkpoint documents ---------------------- */
/* The checkpoint document's content (new tree), its revision into *rev; NULL when there
 * is none. The revision comes from the endpoint as a field; the content is the document
 * itself, read as the JSON it is stored as. */
static jval *repl_ckpt_get(repl_ep *ep, const char *id, char **rev) {
    repl_resp r;
    repl_resp_init(&r);
    mimeo_err e;
    jval *v = NULL;
    char got[MIMEO_REV_MAX] = "";
    if (ep->ops->local_get(ep, id, got, &r, &e) == 0 && r.status == 200 &&
        json_tree_parse(r.body.data, r.body.len, NULL, &v, NULL) == 0 &&
        v->type == JV_OBJECT) {
        if (got[0]) repl_set_str(rev, got);
    } else {
        jval_free(v);
        v = NULL;
    }
    repl_resp_destroy(&r);
    return v;
}

static bool repl_same_str(const jval *a, const jval *b) {
    return a && b && a->type == JV_STRING && b->type == JV_STRING && a->len == b->len &&
           memcmp(a->str, b->str, a->len) == 0;
}

static bool repl_has_session(const jval *hist, size_t from, const jval *sid) {
    for (size_t i = from; hist && i < hist->count; i++)
        if (repl_same_str(jval_get(hist->items[i], "session_id"), sid)) return true;
    return false;
}

/* Keeps entries [from, …) of hist as the base history that new checkpoints extend. */
static void repl_keep_history(repl_job *j, const jval *hist, size_t from) {
    for (size_t i = from; hist && hist->type == JV_ARRAY && i < hist->count; i++) {
        if (j->base_history_n >= REPL_HISTORY_MAX - 1) break;
        if (j->base_history_n > 0) buf_putc(&j->base_history, ',');
        json_put_jval(&j->base_history, hist->items[i]);
        j->base_history_n++;
    }
}

static char *repl_ckpt_compare(repl_job *j, const jval *src, const jval *tgt) {
    if (!src || !tgt) return NULL;
    const jval *ss = jval_get(src, "session_id"), *ts = jval_get(tgt, "session_id");
    const jval *sh = jval_get(src, "history"), *th = jval_get(tgt, "history");
    if (repl_same_str(ss, ts)) {
        repl_keep_history(j, sh, 0);
        return repl_jval_text(jval_get(src, "source_last_seq"));
    }
    if (!sh || !th || sh->type != JV_ARRAY || th->type != JV_ARRAY) return NULL;
    /* CouchDB's compare_rep_history: walk both logs in step, newest first. */
    for (size_t i = 0; i < sh->count && i < th->count; i++) {
        const jval *s = sh->items[i], *t = th->items[i];
        if (repl_has_session(th, i, jval_get(s, "session_id"))) {
            repl_keep_history(j, sh, i + 1);
            return repl_jval_text(jval_get(s, "recorded_seq"));
        }
        if (repl_has_session(sh, i + 1, jval_get(t, "session_id"))) {
            repl_keep_history(j, th, i + 1);
            return repl_jval_text(jval_get(t, "recorded_seq"));
        }
    }
    return NULL;
}

/* ---- step 7: checkpoints ----------------------------------------------------------------- */
/* The history array's members: this session's entry, then the base history. */
static int repl_put_history(repl_job *j, buf *b, const char *seq) {
    char now[40];
    repl_rfc1123(now, sizeof now);
    int rc = buf_puts(b, "[{\"session_id\":\"");
    rc |= buf_puts(b, j->session_id);
    rc |= buf_puts(b, "\",\"start_time\":\"");
    rc |= buf_puts(b, j->start_time);
    rc |= buf_puts(b, "\",\"end_time\":\"");
    rc |= buf_puts(b, now);
    rc |= buf_puts(b, "\",\"start_last_seq\":");
    rc |= buf_puts(b, j->start_seq ? j->start_seq : "0");
    rc |= buf_puts(b, ",\"end_last_seq\":");
    rc |= buf_puts(b, seq);
    rc |= buf_puts(b, ",\"recorded_seq\":");
    rc |= buf_puts(b, seq);
    rc |= buf_putc(b, ',');
    rc |= repl_put_counters(b, &j->stats, true);
    rc |= buf_putc(b, '}');
    if (j->base_history_n > 0) {
        rc |= buf_putc(b, ',');
        rc |= buf_put(b, j->base_history.data, j->base_history.len);
    }
    rc |= buf_putc(b, ']');
    return rc ? MIMEO_ENOMEM : 0;
}

/* The members shared by the checkpoint document and the one-shot reply. */
static int repl_put_log(repl_job *j, buf *b, const char *seq) {
    int rc = buf_puts(b, "\"session_id\":\"");
    rc |= buf_puts(b, j->session_id);
    rc |= buf_puts(b, "\",\"source_last_seq\":");
    rc |= buf_puts(b, seq);
    rc |= buf_printf(b, ",\"replication_id_version\":%d,\"history\":", REPL_ID_VERSION);
    if (rc) return MIMEO_ENOMEM;
    return repl_put_history(j, b, seq);
}

/* PUT _local/{id} on one side, keeping the rev for the next write; on a conflict (someone
 * else wrote it) the current rev is read and the write tried once more. */
static int repl_ckpt_put(repl_job *j, repl_ep *ep, char **rev, const char *seq) {
    int rc = MIMEO_EIO;
    for (int attempt = 0; attempt < 2; attempt++) {
        buf b;
        buf_init(&b, 0);
        buf_puts(&b, "{\"_id\":\"_local/");
        buf_puts(&b, j->rep_id);
        buf_putc(&b, '"');
        if (*rev) {
            buf_puts(&b, ",\"_rev\":");
            json_put_cstr(&b, *rev);
        }
        buf_putc(&b, ',');
        repl_put_log(j, &b, seq);
        buf_putc(&b, '}');
        repl_resp r;
        repl_resp_init(&r);
        mimeo_err e;
        char put[MIMEO_REV_MAX] = "";
        int c = ep->ops->local_put(ep, j->rep_id, *rev, b.data, b.len, put, &r, &e);
        buf_destroy(&b);
        if (c == 0 && r.status >= 200 && r.status < 300) {
            if (put[0]) repl_set_str(rev, put);
            rc = 0;
        } else if (c == 0 && r.status == 409 && attempt == 0) {
            jval_free(repl_ckpt_get(ep, j->rep_id, rev));
            repl_resp_destroy(&r);
            continue;
        } else if (c == 0 && r.status >= 400 && r.status < 500) {
            rc = MIMEO_EINVAL;   /* refused: a read-only side */
        }
        repl_resp_destroy(&r);
        break;
    }
    return rc;
}

static int repl_checkpoint(repl_job *j, const char *seq) {
    repl_resp r;
    mimeo_err e;
    if (!j->src->local) {
        repl_resp_init(&r);
        j->src->ops->ensure_full_commit(j->src, &r, &e);
        repl_resp_destroy(&r);
    }
    if (!j->tgt->local) {
        repl_resp_init(&r);
        j->tgt->ops->ensure_full_commit(j->tgt, &r, &e);
        repl_resp_destroy(&r);
    }
    /* A source that refuses writes (read-only access) still gets replicated; only the
     * target's checkpoint is kept then, and the next run starts over (cheaply, through
     * _revs_diff). */
    if (!j->src_ckpt_readonly && repl_ckpt_put(j, j->src, &j->src_ckpt_rev, seq) == MIMEO_EINVAL)
        j->src_ckpt_readonly = true;
    int rc = repl_ckpt_put(j, j->tgt, &j->tgt_ckpt_rev, seq);
    if (rc == 0) {
        pthread_mutex_lock(&j->lock);
        repl_set_str(&j->ckpt_seq, seq);
        pthread_mutex_unlock(&j->lock);
    }
    j->last_ckpt_ms = clock_ms();
    return rc;
}

/* Checkpoints when the interval has passed (or force) and the through seq moved. Only one
 * thread writes checkpoints at a time; the others skip rather than wait. */
static void repl_maybe_checkpoint(repl_job *j, bool force) {
    if (force) pthread_mutex_lock(&j->ckpt_lock);
    else if (pthread_mutex_trylock(&j->ckpt_lock) != 0) return;
    if (force || clock_ms() - j->last_ckpt_ms >= j->req.checkpoint_interval_ms) {
        pthread_mutex_lock(&j->lock);
        char *seq = j->through_seq ? strdup(j->through_seq) : NULL;
        bool moved = seq && (!j->ckpt_seq || strcmp(seq, j->ckpt_seq) != 0);
        pthread_mutex_unlock(&j->lock);
        if (moved) repl_checkpoint(j, seq);
        free(seq);
    }
    pthread_mutex_unlock(&j->ckpt_lock);
}

/* ---- step 6: the through seq ------------------------------------------------------------- */
/* Under j->lock: retires finished batches from the head of the feed order. */
static void repl_retire_locked(repl_job *j) {
    while (j->order_head && j->order_head->done) {
        repl_batch *b = j->order_head;
        j->order_head = b->onext;
        if (!j->order_head) j->order_tail = NULL;
        free(j->through_seq);
        j->through_seq = b->last_seq;
        b->last_seq = NULL;
        j->inflight--;
        repl_batch_free(b);
    }
    pthread_cond_broadcast(&j->cond);
}

/* ---- step 5: one batch ------------------------------------------------------------------- */
/* The "ok" documents of a peer's _bulk_get or open_revs reply are skimmed, not parsed into
 * events: these replies carry all the bodies, and each is forwarded as the bytes it came as.
 * The replies wrap each document a few levels deep ({"results":[{"docs":[{"ok":doc}]}]}),
 * so they must be read with a deeper limit than a document's, or a document PUT accepted
 * could never be copied. Any depth is fine here: the skimmer's stack grows on the heap, one
 * entry per byte of input at most, and the reply's size is capped. */
#define OKX_MAX_DEPTH (1u << 30)

static inline bool repl_ws(char c) {
    return c == ' ' || (c >= '\t' && c <= '\r');
}

/* A cursor over a small, already validated JSON text. */
typedef struct repl_cur {
    const char *p, *end;
} repl_cur;

static bool cur_lit(repl_cur *c, const char *lit, size_t n) {
    while (c->p < c->end && repl_ws(*c->p)) c->p++;
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, lit, n) != 0) return false;
    c->p += n;
    return true;
}

/* A run of digits at the cursor, at least one; its extent in *s, *n. */
static bool cur_digits(repl_cur *c, const char **s, size_t *n) {
    const char *a = c->p;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') c->p++;
    *s = a;
    *n = (size_t)(c->p - a);
    return *n > 0;
}

/* Whether _revisions (value text v[0..n)) names the revision rev ("N-hash") and nothing
 * else: {"start":N,"ids":["hash"]}, members in either order. The target learns the same
 * from _rev, and a _revisions of one id is the costly part of a replicated write to parse.
 * Any other shape (escapes, capitals, more ids) is kept as it came. */
static bool repl_revisions_own(const char *rev, size_t rev_len, const char *v, size_t n) {
    const char *dash = rev ? memchr(rev, '-', rev_len) : NULL;
    if (!dash || dash == rev || dash + 1 == rev + rev_len) return false;
    size_t glen = (size_t)(dash - rev);
    const char *hash = dash + 1;
    size_t hlen = rev_len - glen - 1;
    for (size_t k = 0; k < glen; k++)
        if (rev[k] < '0' || rev[k] > '9') return false;
    for (size_t k = 0; k < hlen; k++)
        if (!((hash[k] >= '0' && hash[k] <= '9') || (hash[k] >= 'a' && hash[k] <= 'f')))
            return false;
    repl_cur c = { v, v + n };
    bool start = false, ids = false;
    const char *s;
    size_t sl;
    if (!cur_lit(&c, "{", 1)) return false;
    for (int m = 0; m < 2; m++) {
        if (m == 1 && !cur_lit(&c, ",", 1)) return false;
        if (!start && cur_lit(&c, "\"start\"", 7)) {
            if (!cur_lit(&c, ":", 1)) return false;
            while (c.p < c.end && repl_ws(*c.p)) c.p++;
            /* an integer: not followed by a fraction or an exponent */
            if (!cur_digits(&c, &s, &sl) || sl != glen || memcmp(s, rev, glen) != 0 ||
                (c.p < c.end && (*c.p == '.' || *c.p == 'e' || *c.p == 'E')))
                return false;
            start = true;
        } else if (!ids && cur_lit(&c, "\"ids\"", 5)) {
            /* the hash is plain lowercase hex: the string is it exactly when it starts with
             * it and ends right after */
            if (!cur_lit(&c, ":", 1) || !cur_lit(&c, "[", 1) || !cur_lit(&c, "\"", 1) ||
                (size_t)(c.end - c.p) <= hlen || memcmp(c.p, hash, hlen) != 0 ||
                c.p[hlen] != '"')
                return false;
            c.p += hlen + 1;
            if (!cur_lit(&c, "]", 1)) return false;
            ids = true;
        } else {
            return false;
        }
    }
    if (!cur_lit(&c, "}", 1)) return false;
    while (c.p < c.end && repl_ws(*c.p)) c.p++;
    return c.p == c.end;
}

/* The bytes that drop the _revisions member of d (and one comma) from its text. */
static void repl_cut_revisions(const json_skim_doc *d, repl_doc *out) {
    const char *t = d->text;
    size_t k = d->revisions_key, e = d->revisions_end;
    while (k > 0 && repl_ws(t[k - 1])) k--;
    if (k > 0 && t[k - 1] == ',') {
        out->cut_at = k - 1;
        out->cut_end = e;
        return;
    }
    /* the first member: the comma after it goes instead */
    size_t m = e;
    while (m < d->len && repl_ws(t[m])) m++;
    out->cut_at = d->revisions_key;
    out->cut_end = m < d->len && t[m] == ',' ? m + 1 : e;
}

typedef struct repl_skim {
    repl_doc_fn fn;
    void       *ctx;
    int         fn_rc;
} repl_skim;

static int repl_skim_doc(void *ctx, const json_skim_doc *d) {
    repl_skim *x = ctx;
    repl_doc doc = { d->text, d->len, 0, 0, d->has_attachments };
    if (d->revisions_end && !d->has_attachments &&
        repl_revisions_own(d->rev, d->rev_len, d->text + d->revisions_value,
                           d->revisions_end - d->revisions_value))
        repl_cut_revisions(d, &doc);
    return x->fn_rc = x->fn(x->ctx, &doc);
}

int repl_reply_docs(const repl_resp *r, repl_doc_fn fn, void *ctx, size_t *unserved,
                    mimeo_err *err) {
    repl_skim x = { fn, ctx, 0 };
    const json_limits lim = { OKX_MAX_DEPTH, 0 };
    int rc = json_skim_docs(r->body.data, r->body.len, &lim, repl_skim_doc, &x, unserved, err);
    if (x.fn_rc) {
        rc = x.fn_rc;
        err_set(err, rc, "error", "%s", mimeo_strerror(rc));
    }
    return rc;
}

/* ---- replies read as events ------------------------------------------------------------ */
/* The _changes and _revs_diff replies of a remote peer are read by event handlers that keep
 * only the members the replicator uses: no tree of the whole page is built and freed. The
 * revisions of one entry are kept as offsets into one buffer until the entry ends. */
typedef struct repl_revlist {
    buf     text;
    size_t *offs, *lens;
    size_t  n, alloc;
    const char **ptrs;
    size_t  ptrs_alloc;
} repl_revlist;

static int repl_grow2(void **a, size_t sa, void **b, size_t sb, size_t *alloc, size_t need);

static int revlist_add(repl_revlist *l, const char *s, size_t n) {
    if (l->n + 1 > l->alloc && repl_grow2((void **)&l->offs, sizeof *l->offs,
                                          (void **)&l->lens, sizeof *l->lens, &l->alloc,
                                          l->n + 1))
        return MIMEO_ENOMEM;
    l->offs[l->n] = l->text.len;
    l->lens[l->n++] = n;
    return buf_put(&l->text, s, n);
}

/* Pointers for the first n entries (valid until the list changes). */
static const char **revlist_ptrs(repl_revlist *l) {
    if (ARRAY_GROW(l->ptrs, l->ptrs_alloc, l->n + 1)) return NULL;
    for (size_t i = 0; i < l->n; i++) l->ptrs[i] = l->text.data + l->offs[i];
    return l->ptrs;
}

static void revlist_reset(repl_revlist *l) {
    buf_reset(&l->text);
    l->n = 0;
}

static void revlist_destroy(repl_revlist *l) {
    buf_destroy(&l->text);
    free(l->offs);
    free(l->lens);
    free(l->ptrs);
}

/* Runs handlers h (state x) over the reply: a callback's stop code (*fn_rc) is the result;
 * a reply read whole but of the wrong shape (*shaped false) is a bad_reply saying bad. */
static int repl_events(const repl_resp *r, const json_handlers *h, void *x, const int *fn_rc,
                       const bool *shaped, const char *bad, mimeo_err *err) {
    int rc = json_parse(r->body.data, r->body.len, NULL, h, x, err);
    if (*fn_rc) {
        rc = *fn_rc;
        err_set(err, rc, "error", "%s", mimeo_strerror(rc));
    } else if (rc == MIMEO_ENOMEM) {
        err_set(err, rc, "error", "out of memory");
    } else if (!rc && !*shaped) {
        err_set(err, MIMEO_EIO, "bad_reply", "%s", bad);
        rc = MIMEO_EIO;
    }
    return rc;
}

/* {"id":{"missing":[…],"possible_ancestors":[…]},…}: depth 1 is the answer, 2 an entry, 3
 * one of its lists. */
typedef struct repl_mx {
    repl_missing_fn fn;
    void           *ctx;
    int             fn_rc;
    unsigned        depth;
    bool            top_object;
    int             list;        /* the entry's member being read: 0 other, 1 missing, 2 pa */
    buf             id;
    repl_revlist    revs;        /* missing, then the ancestors in anc */
    repl_revlist    anc;
} repl_mx;

static int mx_start(void *ctx, bool map) {
    repl_mx *x = ctx;
    if (++x->depth == 1) x->top_object = map;
    if (x->depth == 2) {
        revlist_reset(&x->revs);
        revlist_reset(&x->anc);
        x->list = 0;
    }
    return 0;
}

static int mx_start_map(void *ctx) {
    return mx_start(ctx, true);
}

static int mx_start_array(void *ctx) {
    return mx_start(ctx, false);
}

static int mx_end(void *ctx) {
    repl_mx *x = ctx;
    if (x->depth-- != 2 || x->revs.n == 0) return 0;
    size_t n = x->revs.n, na = x->anc.n;
    for (size_t i = 0; i < na; i++) {
        int rc = revlist_add(&x->revs, x->anc.text.data + x->anc.offs[i], x->anc.lens[i]);
        if (rc) return rc;
    }
    const char **p = revlist_ptrs(&x->revs);
    if (!p) return MIMEO_ENOMEM;
    repl_want w = { x->id.data, x->id.len, p, x->revs.lens, n, p + n, x->revs.lens + n, na };
    if ((x->fn_rc = x->fn(x->ctx, &w)) != 0) return x->fn_rc;
    return 0;
}

static int mx_key(void *ctx, const char *s, size_t n) {
    repl_mx *x = ctx;
    if (x->depth == 1) {
        buf_reset(&x->id);
        return buf_put(&x->id, s, n);
    }
    if (x->depth == 2)
        x->list = n == 7 && memcmp(s, "missing", 7) == 0 ? 1
                : n == 18 && memcmp(s, "possible_ancestors", 18) == 0 ? 2 : 0;
    return 0;
}

static int mx_string(void *ctx, const char *s, size_t n) {
    repl_mx *x = ctx;
    if (x->depth != 3 || !x->list) return 0;
    return revlist_add(x->list == 1 ? &x->revs : &x->anc, s, n);
}

static const json_handlers mx_handlers = {
    .on_string = mx_string, .on_start_map = mx_start_map, .on_key = mx_key,
    .on_end_map = mx_end, .on_start_array = mx_start_array, .on_end_array = mx_end,
};

int repl_reply_missing(const repl_resp *r, repl_missing_fn fn, void *ctx, mimeo_err *err) {
    repl_mx x;
    memset(&x, 0, sizeof x);
    x.fn = fn;
    x.ctx = ctx;
    buf_init(&x.id, 0);
    buf_init(&x.revs.text, 0);
    buf_init(&x.anc.text, 0);
    int rc = repl_events(r, &mx_handlers, &x, &x.fn_rc, &x.top_object,
                         "_revs_diff did not answer an object", err);
    buf_destroy(&x.id);
    revlist_destroy(&x.revs);
    revlist_destroy(&x.anc);
    return rc;
}

int repl_reply_info(const repl_resp *r, repl_db_info *info, mimeo_err *err) {
    info->update_seq = NULL;
    info->update_seq_num = -1;
    jval *v = NULL;
    int rc = 0;
    /* A reply without a readable update_seq leaves it unknown, as an empty database. */
    if (json_tree_parse(r->body.data, r->body.len, NULL, &v, NULL) != 0) return 0;
    const jval *seq = jval_get(v, "update_seq");
    int64_t n;
    if (jval_as_i64(seq, &n)) info->update_seq_num = n;
    if (seq && !(info->update_seq = repl_jval_text(seq))) {
        err_set(err, MIMEO_ENOMEM, "error", "out of memory");
        rc = MIMEO_ENOMEM;
    }
    jval_free(v);
    return rc;
}

void repl_reply_rev(const repl_resp *r, const char *member, char rev[MIMEO_REV_MAX]) {
    rev[0] = 0;
    jval *v = NULL;
    if (json_tree_parse(r->body.data, r->body.len, NULL, &v, NULL) != 0) return;
    const jval *jr = jval_get(v, member);
    if (jr && jr->type == JV_STRING && jr->len < MIMEO_REV_MAX) {
        memcpy(rev, jr->str, jr->len);
        rev[jr->len] = 0;
    }
    jval_free(v);
}

int repl_reply_refusals(const repl_resp *r, repl_refusal_fn fn, void *ctx, mimeo_err *err) {
    jval *v = NULL;
    /* A body that is not an array of entries lists no refusal: CouchDB's new_edits:false
     * answers [] (or nothing useful) when all was written. */
    if (json_tree_parse(r->body.data, r->body.len, NULL, &v, NULL) != 0 || v->type != JV_ARRAY) {
        jval_free(v);
        return 0;
    }
    int rc = 0;
    for (size_t i = 0; !rc && i < v->count; i++) {
        const jval *id = jval_get(v->items[i], "id"), *e = jval_get(v->items[i], "error");
        bool ide = id && id->type == JV_STRING, ee = e && e->type == JV_STRING;
        repl_refusal f = { ide ? id->str : "", ide ? id->len : 0, ee ? e->str : "error",
                           ee ? e->len : 5 };
        if ((rc = fn(ctx, &f)) != 0) err_set(err, rc, "error", "%s", mimeo_strerror(rc));
    }
    jval_free(v);
    return rc;
}

/* Grows two parallel arrays (elements of size sa and sb) to hold need; *alloc changes only
 * when both did, so a failure leaves them consistent. */
static int repl_grow2(void **a, size_t sa, void **b, size_t sb, size_t *alloc, size_t need) {
    if (need <= *alloc) return 0;
    size_t na = *alloc ? *alloc * 2 : 64;
    while (na < need) na *= 2;
    void *np = realloc(*a, na * sa);
    if (!np) return MIMEO_ENOMEM;
    *a = np;
    np = realloc(*b, na * sb);
    if (!np) return MIMEO_ENOMEM;
    *b = np;
    *alloc = na;
    return 0;
}

/* {"results":[{"seq","id","changes":[{"rev"},…],…},…],"last_seq","pending"}: depth 1 is
 * the reply, 2 the results, 3 a row, 4 its changes, 5 one change. */
typedef struct repl_cx {
    repl_change_fn fn;
    void          *ctx;
    int            fn_rc;
    unsigned       depth;
    int            key1;        /* 0 other, 1 results, 2 last_seq, 3 pending */
    int            key3;        /* 0 other, 1 id, 2 seq, 3 changes */
    bool           key5_rev;
    bool           in_results, in_row, in_changes, in_change, saw_results;
    bool           has_id, has_changes;
    buf            id;
    repl_revlist   revs;
    buf            row_seq;     /* JSON text of the last row's seq */
    buf            last_seq;    /* JSON text; empty when absent or null */
    int64_t        pending;
    size_t         rows;
} repl_cx;

static int cx_start(void *ctx) {
    repl_cx *x = ctx;
    unsigned d = ++x->depth;
    if (d == 2) x->in_results = x->key1 == 1;
    if (d == 2 && x->in_results) x->saw_results = true;
    if (d == 3) {
        x->in_row = x->in_results;
        x->key3 = 0;
        x->has_id = x->has_changes = false;
        revlist_reset(&x->revs);
    }
    if (d == 4) x->in_changes = x->in_row && x->key3 == 3;
    if (d == 4 && x->in_changes) x->has_changes = true;
    if (d == 5) {
        x->in_change = x->in_changes;
        x->key5_rev = false;
    }
    return 0;
}

static int cx_end(void *ctx) {
    repl_cx *x = ctx;
    unsigned d = x->depth--;
    if (d == 2) x->in_results = false;
    if (d == 4) x->in_changes = false;
    if (d == 5) x->in_change = false;
    if (d != 3 || !x->in_row) return 0;
    x->in_row = false;
    x->rows++;
    if (!x->has_id || !x->has_changes) return 0;
    const char **p = revlist_ptrs(&x->revs);
    if (!p) return MIMEO_ENOMEM;
    repl_want w = { x->id.data ? x->id.data : "", x->id.len, p, x->revs.lens, x->revs.n,
                    NULL, NULL, 0 };
    if ((x->fn_rc = x->fn(x->ctx, &w)) != 0) return x->fn_rc;
    return 0;
}

static int cx_key(void *ctx, const char *s, size_t n) {
    repl_cx *x = ctx;
    if (x->depth == 1)
        x->key1 = n == 7 && memcmp(s, "results", 7) == 0 ? 1
                : n == 8 && memcmp(s, "last_seq", 8) == 0 ? 2
                : n == 7 && memcmp(s, "pending", 7) == 0 ? 3 : 0;
    else if (x->depth == 3 && x->in_row)
        x->key3 = n == 2 && memcmp(s, "id", 2) == 0 ? 1
                : n == 3 && memcmp(s, "seq", 3) == 0 ? 2
                : n == 7 && memcmp(s, "changes", 7) == 0 ? 3 : 0;
    else if (x->depth == 5 && x->in_change)
        x->key5_rev = n == 3 && memcmp(s, "rev", 3) == 0;
    return 0;
}

/* A scalar seq (or any scalar) as JSON text into b: number text as it came, strings quoted. */
static int cx_scalar(repl_cx *x, const char *text, size_t n, bool str) {
    buf *b = NULL;
    if (x->depth == 1 && x->key1 == 2) b = &x->last_seq;
    else if (x->depth == 3 && x->in_row && x->key3 == 2) b = &x->row_seq;
    if (!b) return 0;
    buf_reset(b);
    return str ? json_put_str(b, text, n) : buf_put(b, text, n);
}

static int cx_string(void *ctx, const char *s, size_t n) {
    repl_cx *x = ctx;
    if (x->depth == 3 && x->in_row && x->key3 == 1) {
        x->has_id = true;
        buf_reset(&x->id);
        return buf_put(&x->id, s, n);
    }
    if (x->depth == 5 && x->in_change && x->key5_rev) return revlist_add(&x->revs, s, n);
    return cx_scalar(x, s, n, true);
}

static int cx_number(void *ctx, const char *s, size_t n) {
    repl_cx *x = ctx;
    if (x->depth == 1 && x->key1 == 3) {
        int64_t v = 0;
        size_t i = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9' && v < INT64_MAX / 10)
            v = v * 10 + (s[i++] - '0');
        if (i == n && n > 0) x->pending = v;
        return 0;
    }
    return cx_scalar(x, s, n, false);
}

static int cx_null(void *ctx) {
    repl_cx *x = ctx;
    if (x->depth == 1 && x->key1 == 2) buf_reset(&x->last_seq);
    return 0;
}

static const json_handlers cx_handlers = {
    .on_null = cx_null, .on_number = cx_number, .on_string = cx_string,
    .on_start_map = cx_start, .on_key = cx_key, .on_end_map = cx_end,
    .on_start_array = cx_start, .on_end_array = cx_end,
};

int repl_reply_changes(const repl_resp *r, repl_change_fn fn, void *ctx, repl_page *page,
                       mimeo_err *err) {
    page->last_seq = NULL;
    page->pending = -1;
    page->rows = 0;
    repl_cx x;
    memset(&x, 0, sizeof x);
    x.fn = fn;
    x.ctx = ctx;
    x.pending = -1;
    buf_init(&x.id, 0);
    buf_init(&x.revs.text, 0);
    buf_init(&x.row_seq, 0);
    buf_init(&x.last_seq, 0);
    int rc = repl_events(r, &cx_handlers, &x, &x.fn_rc, &x.saw_results,
                         "_changes answered no results array", err);
    if (!rc) {
        page->pending = x.pending;
        page->rows = x.rows;
        buf *last = x.last_seq.len ? &x.last_seq : x.rows && x.row_seq.len ? &x.row_seq : NULL;
        if (last && !(page->last_seq = repl_strndup(last->data, last->len))) {
            err_set(err, MIMEO_ENOMEM, "error", "out of memory");
            rc = MIMEO_ENOMEM;
        }
    }
    buf_destroy(&x.id);
    revlist_destroy(&x.revs);
    buf_destroy(&x.row_seq);
    buf_destroy(&x.last_seq);
    return rc;
}

/* Per-worker buffers, reused from batch to batch. */
typedef struct repl_scratch {
    buf        docs, sub, text;
    repl_resp  resp;
    /* what the target lacks: wants whose strings live in text (offsets until the answer
     * is complete, then pointers) */
    repl_want *wants;
    size_t    *want_at;        /* per want: where its id is among offs */
    size_t     nwants, wants_alloc;
    size_t    *offs;           /* every string in text: id, then its revs, per want */
    size_t    *lens;           /* their lengths */
    size_t     noffs, offs_alloc;
    const char **revp;         /* the rev pointers of every want */
    /* the fetched documents, each one's span in docs */
    size_t    *starts, *ends;
    size_t     count, alloc;
    repl_docset att;           /* the fetched documents with attachments (repl_att.c) */
} repl_scratch;

#define DOCS_PREFIX "{\"new_edits\":false,\"docs\":["

/* Copies a string into s->text, recording its offset and length. */
static int repl_text_put(repl_scratch *s, const char *p, size_t n) {
    s->offs[s->noffs] = s->text.len;
    s->lens[s->noffs++] = n;
    return buf_put(&s->text, p, n) || buf_putc(&s->text, '\0') ? MIMEO_ENOMEM : 0;
}

/* Collects one _revs_diff entry: copies id and revs into s->text (the entry is borrowed). */
static int repl_take_missing(void *ctx, const repl_want *w) {
    repl_scratch *s = ctx;
    if (repl_grow2((void **)&s->wants, sizeof *s->wants, (void **)&s->want_at,
                   sizeof *s->want_at, &s->wants_alloc, s->nwants + 1) ||
        repl_grow2((void **)&s->offs, sizeof *s->offs, (void **)&s->lens, sizeof *s->lens,
                   &s->offs_alloc, s->noffs + 1 + w->nrevs + w->nancs))
        return MIMEO_ENOMEM;
    /* offsets for now, pointers once the answer is complete: s->text moves as it grows */
    repl_want *nw = &s->wants[s->nwants];
    memset(nw, 0, sizeof *nw);
    nw->id_len = w->id_len;
    nw->nrevs = w->nrevs;
    nw->nancs = w->nancs;
    s->want_at[s->nwants] = s->noffs;
    int rc = repl_text_put(s, w->id, w->id_len);
    for (size_t k = 0; !rc && k < w->nrevs; k++) rc = repl_text_put(s, w->revs[k], w->rev_lens[k]);
    for (size_t k = 0; !rc && k < w->nancs; k++) rc = repl_text_put(s, w->ancs[k], w->anc_lens[k]);
    if (!rc) s->nwants++;
    return rc;
}

/* Turns the collected wants' offsets into pointers, once s->text no longer moves. */
static int repl_wants_fix(repl_scratch *s) {
    if (s->noffs == 0) return 0;
    const char **rp = realloc(s->revp, s->noffs * sizeof *rp);
    if (!rp) return MIMEO_ENOMEM;
    s->revp = rp;
    for (size_t i = 0; i < s->noffs; i++) rp[i] = s->text.data + s->offs[i];
    for (size_t i = 0; i < s->nwants; i++) {
        size_t at = s->want_at[i];
        s->wants[i].id = rp[at];
        s->wants[i].revs = rp + at + 1;
        s->wants[i].rev_lens = s->lens + at + 1;
        s->wants[i].ancs = rp + at + 1 + s->wants[i].nrevs;
        s->wants[i].anc_lens = s->lens + at + 1 + s->wants[i].nrevs;
    }
    return 0;
}

/* Step 5a, the answer: POST target/_revs_diff; the entries into s->wants. */
static int repl_revs_diff(repl_job *j, const buf *diff, repl_scratch *s, mimeo_err *err) {
    s->nwants = 0;
    s->noffs = 0;
    buf_reset(&s->text);
    int rc = j->tgt->ops->revs_diff(j->tgt, diff->data, diff->len, repl_take_missing, s,
                                    &s->resp, err);
    if (rc) return rc;
    if (s->resp.status != 200) {
        repl_err_from_resp(err, &s->resp, "_revs_diff on the target");
        return MIMEO_EIO;
    }
    if (repl_wants_fix(s)) {
        err_set(err, MIMEO_ENOMEM, "error", "out of memory");
        return MIMEO_ENOMEM;
    }
    return 0;
}

/* Starts (again) the _bulk_docs body the fetched documents are copied into. */
static int repl_docs_begin(repl_scratch *s) {
    s->count = 0;
    s->att.count = 0;
    buf_reset(&s->att.text);
    buf_reset(&s->docs);
    return buf_puts(&s->docs, DOCS_PREFIX) ? MIMEO_ENOMEM : 0;
}

/* One fetched document into the _bulk_docs body (the writer's side of the endpoints). */
static int repl_take_doc(void *ctx, const repl_doc *d) {
    repl_scratch *s = ctx;
    /* Revisions with attachments take their own path (repl_att.c); a local source's body
     * that merely mentions the name goes there too, harmlessly. */
    if (d->atts) {
        repl_docset *a = &s->att;
        if (repl_grow2((void **)&a->starts, sizeof *a->starts, (void **)&a->ends,
                       sizeof *a->ends, &a->alloc, a->count + 1))
            return MIMEO_ENOMEM;
        a->starts[a->count] = a->text.len;
        if (buf_put(&a->text, d->json, d->len)) return MIMEO_ENOMEM;
        a->ends[a->count++] = a->text.len;
        return 0;
    }
    if (repl_grow2((void **)&s->starts, sizeof *s->starts, (void **)&s->ends, sizeof *s->ends,
                   &s->alloc, s->count + 1))
        return MIMEO_ENOMEM;
    if (s->count > 0 && buf_putc(&s->docs, ',')) return MIMEO_ENOMEM;
    s->starts[s->count] = s->docs.len;
    if (d->cut_end) {
        if (buf_put(&s->docs, d->json, d->cut_at) ||
            buf_put(&s->docs, d->json + d->cut_end, d->len - d->cut_end))
            return MIMEO_ENOMEM;
    } else if (buf_put(&s->docs, d->json, d->len)) {
        return MIMEO_ENOMEM;
    }
    s->ends[s->count++] = s->docs.len;
    return 0;
}

/* Step 5b with _bulk_get: the documents into s->docs. *fallback is set when they must be
 * fetched one by one instead (no _bulk_get, a revision not served, a reply over the cap). */
static int repl_fetch_bulk(repl_job *j, repl_scratch *s, bool *fallback, mimeo_err *err) {
    size_t unserved = 0;
    int rc = j->src->ops->bulk_get(j->src, s->wants, s->nwants, repl_take_doc, s, &unserved,
                                   &s->resp, err);
    if (rc == MIMEO_ETOOLARGE) {
        /* Over the reply cap as a whole: one document at a time fits, or fails alone. */
        *fallback = true;
        return repl_docs_begin(s);
    }
    if (rc) return rc;
    long st = s->resp.status;
    if (st == 400 || st == 404 || st == 405 || st == 501) {
        atomic_store(&j->src->no_bulk_get, true);   /* every worker learns the same */
        *fallback = true;
        return 0;
    }
    if (st != 200) {
        repl_err_from_resp(err, &s->resp, "_bulk_get on the source");
        return MIMEO_EIO;
    }
    atomic_fetch_add(&j->stats.bulk_get_docs, s->count);
    if (unserved > 0) {
        /* Some revision was not served (a peer's bug, or a race with compaction): fetch the
         * whole batch again document by document, which either gets it or confirms it is
         * gone. Duplicates are harmless to new_edits:false. */
        *fallback = true;
        return repl_docs_begin(s);
    }
    return 0;
}

/* 0 when the source database still answers GET /{db} with 200; else the job's error. */
static int repl_source_present(repl_job *j, mimeo_err *err) {
    repl_resp r;
    repl_resp_init(&r);
    repl_db_info info = { NULL, -1 };
    int rc = j->src->ops->info(j->src, &info, &r, err);
    free(info.update_seq);
    if (!rc && r.status != 200) {
        if (r.status == 404)
            err_set(err, MIMEO_ENOTFOUND, "db_not_found", "could not open %s",
                    j->src->display);
        else
            repl_err_from_resp(err, &r, "GET on the source");
        rc = MIMEO_EIO;
    }
    repl_resp_destroy(&r);
    return rc;
}

/* Step 5b without _bulk_get: one open_revs GET per document, all its missing revs at once. */
static int repl_fetch_each(repl_job *j, repl_scratch *s, mimeo_err *err) {
    for (size_t i = 0; i < s->nwants; i++) {
        int rc = j->src->ops->open_revs(j->src, &s->wants[i], repl_take_doc, s, &s->resp, err);
        if (rc) return rc;
        /* A document purged since the feed was read is gone; a missing database is not,
         * and skipping its documents would checkpoint past them. Servers word the two 404s
         * differently (CouchDB says "Database does not exist.", PouchDB "missing"), so the
         * database itself is asked. */
        if (s->resp.status == 404) {
            if ((rc = repl_source_present(j, err)) != 0) return rc;
            continue;
        }
        if (s->resp.status != 200) {
            repl_err_from_resp(err, &s->resp, "open_revs on the source");
            return MIMEO_EIO;
        }
    }
    return 0;
}

static int repl_count_refusal(void *ctx, const repl_refusal *r) {
    (void)r;
    (*(size_t *)ctx)++;
    return 0;
}

/* Step 5c: POST target/_bulk_docs with documents [lo, hi) of the fetched spans; a refusal
 * of the whole request halves it. */
static int repl_write(repl_job *j, repl_scratch *s, size_t lo, size_t hi, mimeo_err *err) {
    const char *body;
    size_t len;
    if (lo == 0 && hi == s->count) {
        body = s->docs.data;
        len = s->docs.len;
    } else {
        buf_reset(&s->sub);
        int rc = buf_puts(&s->sub, DOCS_PREFIX);
        for (size_t i = lo; !rc && i < hi; i++) {
            if (i > lo) rc = buf_putc(&s->sub, ',');
            if (!rc) rc = buf_put(&s->sub, s->docs.data + s->starts[i],
                                  s->ends[i] - s->starts[i]);
        }
        if (!rc) rc = buf_puts(&s->sub, "]}");
        if (rc) {
            err_set(err, MIMEO_ENOMEM, "error", "out of memory");
            return MIMEO_ENOMEM;
        }
        body = s->sub.data;
        len = s->sub.len;
    }
    size_t failures = 0;
    int rc = j->tgt->ops->bulk_docs(j->tgt, body, len, repl_count_refusal, &failures,
                                    &s->resp, err);
    if (rc) return rc;
    long st = s->resp.status;
    /* A refusal of the whole request (too large, or one document the target cannot parse,
     * e.g. nested deeper than it accepts) is narrowed down by halving, so that only the
     * documents refused on their own count as failures and the others are written. */
    if (st == 413 || st == 400) {
        if (hi - lo == 1) {
            atomic_fetch_add(&j->stats.doc_write_failures, 1);
            return 0;
        }
        size_t mid = lo + (hi - lo) / 2;
        rc = repl_write(j, s, lo, mid, err);
        if (!rc) rc = repl_write(j, s, mid, hi, err);
        return rc;
    }
    if (st != 201 && st != 200 && st != 202 && st != 417) {
        repl_err_from_resp(err, &s->resp, "_bulk_docs on the target");
        return MIMEO_EIO;
    }
    if (failures > hi - lo) failures = hi - lo;
    atomic_fetch_add(&j->stats.doc_write_failures, failures);
    atomic_fetch_add(&j->stats.docs_written, (hi - lo) - failures);
    atomic_fetch_add(&repl_totals.doc_write_failures, failures);
    atomic_fetch_add(&repl_totals.docs_written, (hi - lo) - failures);
    return 0;
}

/* One batch, steps 5a–5c: what the target lacks, fetched from the source, written. */
static int repl_process(repl_job *j, repl_batch *b, repl_scratch *s, mimeo_err *err) {
    size_t nmissing = 0;
    int rc;
    if (b->nrevs == 0) return 0;
    atomic_fetch_add(&j->stats.missing_checked, b->nrevs);
    if ((rc = repl_revs_diff(j, &b->diff, s, err)) != 0) return rc;

    for (size_t i = 0; i < s->nwants; i++) nmissing += s->wants[i].nrevs;
    atomic_fetch_add(&j->stats.missing_found, nmissing);
    if (nmissing == 0) return 0;
    if ((rc = repl_docs_begin(s)) != 0) goto nomem;
    atomic_fetch_add(&j->stats.bulk_get_attempts, nmissing);
    bool fallback = atomic_load(&j->src->no_bulk_get);
    if (!fallback && (rc = repl_fetch_bulk(j, s, &fallback, err)) != 0) return rc;
    if (fallback && (rc = repl_fetch_each(j, s, err)) != 0) return rc;
    atomic_fetch_add(&j->stats.docs_read, s->count + s->att.count);
    atomic_fetch_add(&repl_totals.docs_read, s->count + s->att.count);

    if (s->count > 0) {
        if (buf_puts(&s->docs, "]}")) goto nomem;
        if ((rc = repl_write(j, s, 0, s->count, err)) != 0) return rc;
    }
    return repl_att_write(j, s->wants, s->nwants, &s->att, err);
nomem:
    err_set(err, MIMEO_ENOMEM, "error", "out of memory");
    return MIMEO_ENOMEM;
}

static void *repl_worker(void *arg) {
    repl_job *j = arg;
    /* named so that profiles and top tell the replication's work from the server's */
    pthread_setname_np(pthread_self(), "mimeo-repl");
    repl_scratch s;
    memset(&s, 0, sizeof s);
    buf_init(&s.docs, 0);
    buf_init(&s.sub, 0);
    buf_init(&s.text, 0);
    buf_init(&s.att.text, 0);
    repl_resp_init(&s.resp);
    for (;;) {
        pthread_mutex_lock(&j->lock);
        while (!j->queue_head && !j->reading_done && !j->failed && !atomic_load(&j->cancel))
            pthread_cond_wait(&j->cond, &j->lock);
        repl_batch *b = j->failed || atomic_load(&j->cancel) ? NULL : j->queue_head;
        if (b) {
            j->queue_head = b->qnext;
            if (!j->queue_head) j->queue_tail = NULL;
        }
        pthread_mutex_unlock(&j->lock);
        if (!b) break;

        mimeo_err e;
        memset(&e, 0, sizeof e);
        int rc = repl_process(j, b, &s, &e);
        if (rc) {
            repl_fail(j, &e);
            break;
        }
        repl_touch(j);
        pthread_mutex_lock(&j->lock);
        b->done = true;
        repl_retire_locked(j);
        pthread_mutex_unlock(&j->lock);
        repl_maybe_checkpoint(j, false);
    }
    buf_destroy(&s.docs);
    buf_destroy(&s.sub);
    buf_destroy(&s.text);
    repl_resp_destroy(&s.resp);
    free(s.wants);
    free(s.want_at);
    free(s.offs);
    free(s.lens);
    free(s.revp);
    free(s.starts);
    free(s.ends);
    buf_destroy(&s.att.text);
    free(s.att.starts);
    free(s.att.ends);
    return NULL;
}

/* ---- step 4: the reader ------------------------------------------------------------------ */
/* Appends a batch to the feed order (and, when it has rows, to the work queue), waiting
 * while too many are in flight. False when the job stopped meanwhile (b is freed). */
static bool repl_enqueue(repl_job *j, repl_batch *b, bool work) {
    pthread_mutex_lock(&j->lock);
    while (j->inflight >= REPL_INFLIGHT && !j->failed && !atomic_load(&j->cancel))
        pthread_cond_wait(&j->cond, &j->lock);
    if (j->failed || atomic_load(&j->cancel)) {
        pthread_mutex_unlock(&j->lock);
        repl_batch_free(b);
        return false;
    }
    b->no = j->next_batch_no++;
    if (j->order_tail) j->order_tail->onext = b;
    else j->order_head = b;
    j->order_tail = b;
    j->inflight++;
    if (work) {
        if (j->queue_tail) j->queue_tail->qnext = b;
        else j->queue_head = b;
        j->queue_tail = b;
    } else {
        b->done = true;
        repl_retire_locked(j);
    }
    pthread_cond_broadcast(&j->cond);
    pthread_mutex_unlock(&j->lock);
    return true;
}

/* Step 4's rows, straight into the batch's step 5a question: {"id":["rev",…],…}. */
static int repl_take_change(void *ctx, const repl_want *row) {
    repl_batch *b = ctx;
    if (row->nrevs == 0) return 0;
    int rc = buf_putc(&b->diff, b->nids++ ? ',' : '{');
    if (!rc) rc = json_put_str(&b->diff, row->id, row->id_len);
    if (!rc) rc = buf_puts(&b->diff, ":[");
    for (size_t k = 0; !rc && k < row->nrevs; k++) {
        if (k) rc = buf_putc(&b->diff, ',');
        if (!rc) rc = json_put_str(&b->diff, row->revs[k], row->rev_lens[k]);
    }
    if (!rc) rc = buf_putc(&b->diff, ']');
    b->nrevs += row->nrevs;
    return rc ? MIMEO_ENOMEM : 0;
}

/* A seq that is a plain integer (mimeo, PouchDB) as a number. */
static bool repl_seq_num(const char *s, int64_t *out) {
    if (!s || *s < '0' || *s > '9') return false;
    int64_t v = 0;
    for (; *s >= '0' && *s <= '9'; s++) {
        if (v > (INT64_MAX - 9) / 10) return false;
        v = v * 10 + (*s - '0');
    }
    *out = v;
    return *s == 0;
}

static int repl_read(repl_job *j, mimeo_err *err) {
    char *since = strdup(j->start_seq ? j->start_seq : "0");
    if (!since) goto nomem;
    repl_resp r;
    repl_resp_init(&r);
    int rc = 0;
    size_t limit = j->req.batch_size;
    while (!atomic_load(&j->cancel)) {
        pthread_mutex_lock(&j->lock);
        bool failed = j->failed;
        pthread_mutex_unlock(&j->lock);
        if (failed) break;
        /* Long-poll no longer than a checkpoint interval, so an idle job still records
         * what it wrote last in time. */
        unsigned wait = 0;
        if (j->req.continuous && atomic_load(&j->caught_up)) {
            wait = REPL_LONGPOLL_MS;
            if (j->req.checkpoint_interval_ms < wait) wait = j->req.checkpoint_interval_ms;
            if (wait < 100) wait = 100;
        }
        atomic_store(&j->state, REPL_ST_RUNNING);
        repl_batch *b = calloc(1, sizeof *b);
        if (!b) goto nomem_r;
        buf_init(&b->diff, 0);
        repl_page page = { NULL, -1, 0 };
        rc = j->src->ops->changes(j->src, since, strlen(since), limit, j->req.doc_ids, wait,
                                  repl_take_change, b, &page, &r, err);
        if (!rc && r.status != 200) {
            if (r.status == 404)
                err_set(err, MIMEO_ENOTFOUND, "db_not_found", "could not read the changes of %s",
                             j->src->display);
            else
                repl_err_from_resp(err, &r, "_changes on the source");
            rc = MIMEO_EIO;
        }
        if (!rc && b->nids && buf_putc(&b->diff, '}')) rc = MIMEO_ENOMEM;
        if (rc) {
            free(page.last_seq);
            repl_batch_free(b);
            if (rc == MIMEO_ENOMEM) goto nomem_r;
            break;
        }
        b->last_seq = page.last_seq ? page.last_seq : strdup(since);
        if (!b->last_seq) {
            repl_batch_free(b);
            goto nomem_r;
        }
        int64_t last_n;
        if (page.pending >= 0)
            atomic_store(&j->stats.changes_pending, (uint64_t)page.pending);
        else if (j->src_update_seq >= 0 && repl_seq_num(b->last_seq, &last_n))
            /* Peers without "pending" (PouchDB) number their changes: estimate. */
            atomic_store(&j->stats.changes_pending,
                         j->src_update_seq > last_n ? (uint64_t)(j->src_update_seq - last_n)
                                                    : 0);
        size_t n = page.rows;
        free(since);
        since = strdup(b->last_seq);
        if (!since) {
            repl_batch_free(b);
            goto nomem_r;
        }
        pthread_mutex_lock(&j->lock);
        if (n > 0 || !j->source_seq) repl_set_str(&j->source_seq, b->last_seq);
        pthread_mutex_unlock(&j->lock);
        if (!repl_enqueue(j, b, n > 0)) break;
        /* The end of the feed: an empty page, or a short one that says nothing is
         * pending. A short page alone is not enough: a server may cap its pages below
         * our limit, and stopping there would complete with changes left behind. */
        bool at_end = n == 0 || (n < limit && page.pending == 0);
        if (at_end) {
            if (!j->req.continuous) break;
            atomic_store(&j->caught_up, true);
            if (n == 0) repl_maybe_checkpoint(j, false);
        }
    }
    repl_resp_destroy(&r);
    free(since);
    return rc;
nomem_r:
    repl_resp_destroy(&r);
    free(since);
nomem:
    err_set(err, MIMEO_ENOMEM, "error", "out of memory");
    return MIMEO_ENOMEM;
}

/* ---- the whole run ---------------------------------------------------------------------- */
static int repl_start(repl_job *j, mimeo_err *err) {
    int rc;
    unsigned char sid[16];
    random_bytes(sid, sizeof sid);
    hex_encode(sid, sizeof sid, j->session_id);
    repl_rfc1123(j->start_time, sizeof j->start_time);
    if ((rc = repl_open_ep(j, &j->req.source, false, &j->src, err)) != 0) return rc;
    if (repl_filter_on(&j->req.filter)) j->src->filter = &j->req.filter;
    if ((rc = repl_check_db(j, j->src, true, err)) != 0) return rc;
    if ((rc = repl_open_ep(j, &j->req.target, j->req.create_target, &j->tgt, err)) != 0)
        return rc;
    if ((rc = repl_check_db(j, j->tgt, false, err)) != 0) return rc;

    jval *sc = repl_ckpt_get(j->src, j->rep_id, &j->src_ckpt_rev);
    jval *tc = repl_ckpt_get(j->tgt, j->rep_id, &j->tgt_ckpt_rev);
    char *seq = repl_ckpt_compare(j, sc, tc);
    jval_free(sc);
    jval_free(tc);
    if (j->req.since_seq) {
        free(seq);
        seq = strdup(j->req.since_seq);
    }
    pthread_mutex_lock(&j->lock);
    j->start_seq = seq ? seq : strdup("0");
    j->ckpt_seq = j->start_seq ? strdup(j->start_seq) : NULL;
    j->through_seq = j->start_seq ? strdup(j->start_seq) : NULL;
    pthread_mutex_unlock(&j->lock);
    if (!j->start_seq || !j->ckpt_seq || !j->through_seq) {
        err_set(err, MIMEO_ENOMEM, "error", "out of memory");
        return MIMEO_ENOMEM;
    }
    j->last_ckpt_ms = clock_ms();
    /* From here on a vanished peer is given time to come back. */
    j->src->retries = j->req.retries;
    j->tgt->retries = j->req.retries;
    return 0;
}

int repl_job_run(repl_job *j, char **result, size_t *result_len) {
    if (result) *result = NULL;
    repl_job_reset(j);
    mimeo_err err;
    memset(&err, 0, sizeof err);
    atomic_store(&j->state, REPL_ST_INITIALIZING);
    int rc = repl_start(j, &err);
    if (rc) {
        repl_fail(j, &err);
        return rc;
    }
    atomic_store(&j->state, REPL_ST_RUNNING);
    unsigned nworkers = j->req.workers;
    pthread_t tids[16];
    unsigned started = 0;
    for (; started < nworkers; started++)
        if (pthread_create(&tids[started], NULL, repl_worker, j) != 0) break;
    if (started == 0) {
        err_set(&err, MIMEO_ENOMEM, "error", "could not start a worker thread");
        repl_fail(j, &err);
        return MIMEO_ENOMEM;
    }
    rc = repl_read(j, &err);
    if (rc && rc != MIMEO_ECLOSED) repl_fail(j, &err);
    pthread_mutex_lock(&j->lock);
    j->reading_done = true;
    pthread_cond_broadcast(&j->cond);
    pthread_mutex_unlock(&j->lock);
    for (unsigned i = 0; i < started; i++) pthread_join(tids[i], NULL);

    pthread_mutex_lock(&j->lock);
    bool failed = j->failed;
    bool all_done = j->order_head == NULL;
    pthread_mutex_unlock(&j->lock);
    /* Keep what was written, even after a failure; a dead peer gets no second chance
     * here, or the error would wait for a whole retry budget. */
    bool stopping = atomic_load(&j->stopping);
    if (failed || stopping) {
        j->src->retries = 0;
        j->tgt->retries = 0;
    }
    /* Transfers were aborted by the stop; lift that for the last checkpoint only. */
    if (stopping) {
        atomic_store(&j->src->timeout_ms, REPL_STOP_TIMEOUT_MS);
        atomic_store(&j->tgt->timeout_ms, REPL_STOP_TIMEOUT_MS);
        atomic_store(&j->cancel, false);
    }
    repl_maybe_checkpoint(j, true);
    if (stopping) atomic_store(&j->cancel, true);
    if (failed) {
        atomic_store(&j->state, REPL_ST_CRASHING);
        return j->error.code ? j->error.code : MIMEO_EIO;
    }
    if (stopping && j->req.continuous) return 0;
    if (stopping && !all_done) {
        err_set(&err, MIMEO_ECLOSED, "cancelled", "the replication was cancelled");
        repl_fail(j, &err);
        return MIMEO_ECLOSED;
    }
    atomic_store(&j->state, REPL_ST_COMPLETED);
    if (!result) return 0;
    buf b;
    buf_init(&b, 0);
    pthread_mutex_lock(&j->lock);
    char *through = strdup(j->through_seq ? j->through_seq : "0");
    pthread_mutex_unlock(&j->lock);
    if (through && j->start_seq && strcmp(through, j->start_seq) == 0 &&
        atomic_load(&j->stats.missing_checked) == 0) {
        rc = buf_puts(&b, "{\"ok\":true,\"no_changes\":true}");
    } else {
        rc = buf_puts(&b, "{\"ok\":true,");
        if (!rc) rc = repl_put_log(j, &b, through ? through : "0");
        if (!rc) rc = buf_putc(&b, '}');
    }
    free(through);
    if (rc) {
        buf_destroy(&b);
        return MIMEO_ENOMEM;
    }
    *result = buf_detach(&b, result_len);
    return 0;
}

/* Stops a running job soon: requests in flight are aborted, waits end. */
void repl_job_cancel(repl_job *j) {
    atomic_store(&j->stopping, true);
    atomic_store(&j->cancel, true);
    pthread_mutex_lock(&j->lock);
    pthread_cond_broadcast(&j->cond);
    pthread_mutex_unlock(&j->lock);
}

int repl_job_put_stats(repl_job *j, buf *b) {
    int rc = repl_put_counters(b, &j->stats, false);
    pthread_mutex_lock(&j->lock);
    rc |= buf_printf(b, ",\"checkpointed_source_seq\":%s,\"source_seq\":%s,\"through_seq\":%s",
                     j->ckpt_seq ? j->ckpt_seq : "null", j->source_seq ? j->source_seq : "null",
                     j->through_seq ? j->through_seq : "null");
    pthread_mutex_unlock(&j->lock);
    return rc;
}
