/* Replication jobs as the outside sees them: mimeo_replicate (POST /_replicate), the
 * registry of running jobs (one per replication id), continuous jobs on their own threads
 * with crash-and-retry back-off, the _replicator database manager, and the JSON producers
 * for /_active_tasks and /_scheduler/{jobs,docs}. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "repl_int.h"
#include "../auth/auth.h"

#define REPL_DB                 "_replicator"
#define REPL_CRASH_BACKOFF_MS   1000     /* first wait before a crashed job runs again */
#define REPL_CRASH_BACKOFF_MAX  60000
#define REPL_DOC_MAX_CRASHES    5        /* a one-shot _replicator job then fails */

typedef struct repl_entry repl_entry;
struct repl_entry {
    repl_entry *next;
    repl_reg   *reg;
    mimeo_env  *env;
    repl_job   *job;         /* NULL for a finished _replicator doc */
    char        id[48];      /* replication id, "+continuous" for continuous jobs */
    bool        transient;   /* a one-shot mimeo_replicate call owns the job */
    bool        threaded;    /* a thread of ours runs it */
    pthread_t   thread;
    char       *doc_id;      /* _replicator document, or NULL */
    char       *doc_spec;    /* the document's members that define the job */
    char       *source, *target;  /* display forms */
    bool        continuous;
    atomic_int  state;
    unsigned    error_count;
    char        last_error[MIMEO_ERR_REASON_MAX + 40];
    char       *final_stats; /* stats members kept after a job ended */
    int64_t     start_time, last_updated;
    unsigned    pid;
    /* scheduling, under the registry's lock */
    bool        active;      /* holds one of the registry's max_jobs slots */
    bool        yield;       /* asked to make way for a pending job */
    bool        quit;        /* being stopped for good */
    uint64_t    ticket;      /* place in the pending queue; 0: not waiting */
    uint64_t    active_ms;   /* when it took its slot */
    int64_t     stopped_at;  /* when it last made way (0: never) */
};

/* The registry of one environment's jobs, kept in the environment itself
 * (mimeo_env_state), so two environments in one process never see each other's jobs and
 * the registry lives exactly as long as its environment. Jobs between two URLs (no
 * environment) have a registry of their own. */
struct repl_reg {
    mimeo_env      *env;
    pthread_mutex_t lock;         /* guards everything below and the entries' fields */
    repl_entry     *entries;
    unsigned        next_pid;
    bool            stopped;      /* mimeo_replicator_stop ran: no new jobs, ever */
    bool            mgr_running;  /* the _replicator manager thread exists */
    pthread_t       mgr;
    atomic_bool     mgr_stop;
    atomic_size_t   max_response; /* default cap of a peer's reply, bytes; 0: built in */
    /* The scheduler: threaded jobs take one of max_jobs slots or wait, pending, in ticket
     * order; every interval_ms the head of the queue makes up to REPL_MAX_CHURN of the
     * longest-running continuous jobs stop and queue again. */
    pthread_cond_t  sched;        /* a slot freed, the limits changed, or a waiter must quit */
    unsigned        active;       /* slots held */
    uint64_t        next_ticket;
    uint64_t        last_turn_ms;
    atomic_uint     max_jobs;     /* 0: REPL_MAX_JOBS */
    atomic_uint     interval_ms;  /* 0: REPL_INTERVAL_MS */
    char            cafile[1024]; /* [replicator] cafile; "": the system CA store */
    char            allowed_hosts[2048]; /* [replicator] allowed_hosts; "": any */
};

static repl_reg repl_reg_none = {
    .lock = PTHREAD_MUTEX_INITIALIZER, .next_pid = 100, .sched = PTHREAD_COND_INITIALIZER,
};
static const char repl_reg_key = 0;   /* its address names the state in mimeo_env_state */

static void *repl_reg_make(mimeo_env *env) {
    repl_reg *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->env = env;
    g->next_pid = 100;
    pthread_mutex_init(&g->lock, NULL);
    pthread_cond_init(&g->sched, NULL);
    return g;
}

static void repl_reg_stop(repl_reg *g, bool forever);

static void repl_reg_destroy(void *p) {
    repl_reg *g = p;
    repl_reg_stop(g, true);   /* a caller that skipped mimeo_replicator_stop */
    pthread_mutex_destroy(&g->lock);
    pthread_cond_destroy(&g->sched);
    free(g);
}

/* The registry of env (made on first use); NULL only when out of memory. */
repl_reg *repl_reg_of(mimeo_env *env) {
    if (!env) return &repl_reg_none;
    return mimeo_env_state(env, &repl_reg_key, repl_reg_make, repl_reg_destroy);
}

static const char *const repl_state_names[] = {
    "initializing", "running", "pending", "crashing", "completed", "failed"
};

static void repl_iso8601(int64_t t, char *out, size_t n) {
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    if (strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0 && n) out[0] = 0;
}

static unsigned repl_status_for(const mimeo_err *e) {
    if (strcmp(e->error, "bad_request") == 0 || e->code == MIMEO_EBADJSON) return 400;
    if (strcmp(e->error, "not_found") == 0) return 404;
    if (strcmp(e->error, "unauthorized") == 0) return 401;
    if (strcmp(e->error, "too_many_jobs") == 0) return 503;
    if (strcmp(e->error, "forbidden") == 0) return 403;
    return 500;
}

/* ---- the registry ----------------------------------------------------------------------- */
static repl_entry *repl_entry_new(repl_reg *g, repl_job *job, const char *id) {
    repl_entry *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->reg = g;
    e->env = g->env;
    e->job = job;
    snprintf(e->id, sizeof e->id, "%s", id);
    if (job) {
        e->continuous = job->req.continuous;
        e->source = repl_url_display(job->req.source.url);
        e->target = repl_url_display(job->req.target.url);
    }
    e->start_time = e->last_updated = (int64_t)time(NULL);
    atomic_store(&e->state, REPL_ST_PENDING);
    return e;
}

static void repl_entry_free(repl_entry *e) {
    if (!e) return;
    repl_job_free(e->job);
    free(e->doc_id);
    free(e->doc_spec);
    free(e->source);
    free(e->target);
    free(e->final_stats);
    free(e);
}

/* The finders and repl_unlink run under g->lock. */
static repl_entry *repl_find(repl_reg *g, const char *id) {
    for (repl_entry *e = g->entries; e; e = e->next)
        if (e->job && strcmp(e->id, id) == 0) return e;
    return NULL;
}

static repl_entry *repl_find_doc(repl_reg *g, const char *doc_id) {
    for (repl_entry *e = g->entries; e; e = e->next)
        if (e->doc_id && strcmp(e->doc_id, doc_id) == 0) return e;
    return NULL;
}

static void repl_unlink(repl_reg *g, repl_entry *e) {
    for (repl_entry **p = &g->entries; *p; p = &(*p)->next)
        if (*p == e) {
            *p = e->next;
            return;
        }
}

static void repl_link(repl_reg *g, repl_entry *e) {
    e->next = g->entries;
    g->entries = e;
}

/* Keeps the job's counters in the entry once the job is gone. */
static void repl_keep_stats(repl_entry *e) {
    if (!e->job) return;
    buf b;
    buf_init(&b, 0);
    if (repl_job_put_stats(e->job, &b) == 0) {
        size_t n;
        free(e->final_stats);
        e->final_stats = buf_detach(&b, &n);
    } else {
        buf_destroy(&b);
    }
}

/* ---- writing state back into _replicator documents --------------------------------------- */
static void repl_doc_write_state(mimeo_env *env, const char *doc_id, const char *state,
                                 const char *reason, const char *stats) {
    mimeo_db *db = NULL;
    if (mimeo_db_open(env, REPL_DB, &db, NULL) != 0) return;
    for (int attempt = 0; attempt < 3; attempt++) {
        char *json = NULL;
        size_t len = 0;
        mimeo_get_opts go;
        memset(&go, 0, sizeof go);
        if (mimeo_doc_get(db, doc_id, strlen(doc_id), &go, &json, &len, NULL) != 0) break;
        jval *v = NULL;
        int rc = json_tree_parse(json, len, NULL, &v, NULL);
        mimeo_free(json);
        if (rc || v->type != JV_OBJECT) {
            jval_free(v);
            break;
        }
        buf b;
        buf_init(&b, 0);
        buf_putc(&b, '{');
        size_t k = 0;
        for (size_t i = 0; i < v->count; i++) {
            if (strncmp(v->keys[i], "_replication_", 13) == 0) continue;
            if (k++ > 0) buf_putc(&b, ',');
            json_put_str(&b, v->keys[i], v->key_lens[i]);
            buf_putc(&b, ':');
            json_put_jval(&b, v->items[i]);
        }
        char now[32];
        repl_iso8601((int64_t)time(NULL), now, sizeof now);
        buf_printf(&b, "%s\"_replication_state\":\"%s\",\"_replication_state_time\":\"%s\"",
                   k ? "," : "", state, now);
        if (reason) {
            buf_puts(&b, ",\"_replication_state_reason\":");
            json_put_cstr(&b, reason);
        }
        if (stats) {
            buf_puts(&b, ",\"_replication_stats\":{");
            buf_puts(&b, stats);
            buf_putc(&b, '}');
        }
        buf_putc(&b, '}');
        jval_free(v);
        mimeo_put_result res;
        memset(&res, 0, sizeof res);
        rc = mimeo_doc_put(db, doc_id, strlen(doc_id), b.data, b.len, NULL, &res, NULL);
        buf_destroy(&b);
        mimeo_free(res.id);
        if (rc != MIMEO_ECONFLICT) break;
    }
    mimeo_db_close(db);
}

/* ---- threads of continuous and _replicator jobs ------------------------------------------- */
static bool repl_backoff_sleep(repl_job *j, unsigned ms) {
    uint64_t end = clock_ms() + ms;
    while (clock_ms() < end) {
        if (atomic_load(&j->stopping)) return false;
        struct timespec ts = { 0, 50 * 1000000L };
        nanosleep(&ts, NULL);
    }
    return !atomic_load(&j->stopping);
}

/* CouchDB's [replicator] max_jobs, interval and max_churn. Beyond max_jobs, up to
 * REPL_MAX_PENDING more jobs wait; past that a new job is refused (each waits on a thread of
 * its own, and clients must not be able to exhaust threads). */
#define REPL_MAX_JOBS     500
#define REPL_INTERVAL_MS  60000
#define REPL_MAX_CHURN    20
#define REPL_MAX_PENDING  2000

static unsigned repl_max_jobs(repl_reg *g) {
    unsigned m = atomic_load(&g->max_jobs);
    return m ? m : REPL_MAX_JOBS;
}

static unsigned repl_interval(repl_reg *g) {
    unsigned m = atomic_load(&g->interval_ms);
    return m ? m : REPL_INTERVAL_MS;
}

/* Under g->lock: whether e is first in the pending queue. */
static bool repl_queue_head(repl_reg *g, const repl_entry *e) {
    for (const repl_entry *x = g->entries; x; x = x->next)
        if (x->ticket && x->ticket < e->ticket) return false;
    return true;
}

/* Under g->lock, by the head of the queue: once per interval, asks up to REPL_MAX_CHURN
 * continuous jobs that have run a whole interval, longest first, to make way. They write a
 * checkpoint, stop, and queue again behind the ones waiting. */
static void repl_turn(repl_reg *g) {
    uint64_t now = clock_ms(), iv = repl_interval(g);
    if (now - g->last_turn_ms < iv) return;
    g->last_turn_ms = now;
    unsigned waiting = 0;
    for (repl_entry *x = g->entries; x; x = x->next) waiting += x->ticket != 0;
    for (unsigned n = 0; n < waiting && n < REPL_MAX_CHURN; n++) {
        repl_entry *oldest = NULL;
        for (repl_entry *x = g->entries; x; x = x->next)
            if (x->active && x->continuous && !x->yield && !x->quit && x->job &&
                now - x->active_ms >= iv && (!oldest || x->active_ms < oldest->active_ms))
                oldest = x;
        if (!oldest) break;
        oldest->yield = true;
        repl_job_cancel(oldest->job);
    }
}

/* Waits, pending, for a slot; false when e is stopped for good meanwhile. */
static bool repl_slot_take(repl_entry *e) {
    repl_reg *g = e->reg;
    pthread_mutex_lock(&g->lock);
    e->ticket = ++g->next_ticket;
    bool got = false;
    while (!e->quit) {
        if (g->active < repl_max_jobs(g) && repl_queue_head(g, e)) {
            g->active++;
            e->active = true;
            e->active_ms = clock_ms();
            got = true;
            break;
        }
        atomic_store(&e->state, REPL_ST_PENDING);
        if (repl_queue_head(g, e)) repl_turn(g);
        /* Timed: the head must come back for the next turn, and a cancelled job with it. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&g->sched, &g->lock, &ts);
    }
    e->ticket = 0;
    pthread_cond_broadcast(&g->sched); /* the next in the queue may be the head now */
    pthread_mutex_unlock(&g->lock);
    return got;
}

static void repl_slot_give(repl_entry *e) {
    repl_reg *g = e->reg;
    pthread_mutex_lock(&g->lock);
    if (e->active) {
        e->active = false;
        g->active--;
        pthread_cond_broadcast(&g->sched);
    }
    pthread_mutex_unlock(&g->lock);
}

/* After the job stopped: true when it stopped to make way (not for good), with the job
 * made runnable again and its slot given back. */
static bool repl_made_way(repl_entry *e) {
    repl_reg *g = e->reg;
    pthread_mutex_lock(&g->lock);
    bool yielded = e->yield && !e->quit;
    e->yield = false;
    if (yielded) {
        atomic_store(&e->job->stopping, false);
        atomic_store(&e->job->cancel, false);
        e->stopped_at = (int64_t)time(NULL);
        atomic_store(&e->state, REPL_ST_PENDING);
    }
    pthread_mutex_unlock(&g->lock);
    if (yielded) repl_slot_give(e);
    return yielded;
}

static void *repl_entry_thread(void *arg) {
    repl_entry *e = arg;
    repl_reg *g = e->reg;
    repl_job *j = e->job;
    unsigned crashes = 0;
    bool slot = false;
    for (;;) {
        if (!slot && !(slot = repl_slot_take(e))) break;
        atomic_store(&e->state, REPL_ST_RUNNING);
        char *result = NULL;
        size_t rlen = 0;
        int rc = repl_job_run(j, &result, &rlen);
        mimeo_free(result);
        if (repl_made_way(e)) {
            slot = false;
            continue;
        }
        if (atomic_load(&j->stopping)) break;
        pthread_mutex_lock(&g->lock);
        e->last_updated = (int64_t)time(NULL);
        pthread_mutex_unlock(&g->lock);
        if (rc == 0 && !j->req.continuous) {
            pthread_mutex_lock(&g->lock);
            repl_keep_stats(e);
            atomic_store(&e->state, REPL_ST_COMPLETED);
            char *stats = e->final_stats ? strdup(e->final_stats) : NULL;
            pthread_mutex_unlock(&g->lock);
            if (e->doc_id) repl_doc_write_state(e->env, e->doc_id, "completed", NULL, stats);
            free(stats);
            break;
        }
        /* A failure: crash, wait (doubling, with jitter from the endpoint's own retries),
         * and run again from the last checkpoint. Bad requests do not get better. */
        crashes++;
        pthread_mutex_lock(&g->lock);
        e->error_count++;
        snprintf(e->last_error, sizeof e->last_error, "%s: %s", j->error.error,
                 j->error.reason);
        bool hopeless = j->error.code == MIMEO_EINVAL || j->error.code == MIMEO_EBADJSON ||
                        (e->doc_id && !j->req.continuous && crashes >= REPL_DOC_MAX_CRASHES);
        atomic_store(&e->state, hopeless ? REPL_ST_FAILED : REPL_ST_CRASHING);
        if (hopeless) repl_keep_stats(e);
        char reason[sizeof e->last_error];
        memcpy(reason, e->last_error, sizeof reason);
        pthread_mutex_unlock(&g->lock);
        if (hopeless) {
            if (e->doc_id) repl_doc_write_state(e->env, e->doc_id, "failed", reason, NULL);
            break;
        }
        unsigned ms = REPL_CRASH_BACKOFF_MS;
        for (unsigned i = 1; i < crashes && ms < REPL_CRASH_BACKOFF_MAX; i++) ms *= 2;
        if (ms > REPL_CRASH_BACKOFF_MAX) ms = REPL_CRASH_BACKOFF_MAX;
        if (!repl_backoff_sleep(j, ms)) {
            if (repl_made_way(e)) {
                slot = false;
                continue;
            }
            break;
        }
    }
    if (slot) repl_slot_give(e);
    return NULL;
}

/* Under g->lock: starts e's thread (which runs the job once a slot is free) and links it.
 * MIMEO_ETOOLARGE when max_jobs run and REPL_MAX_PENDING wait already. */
static int repl_entry_start(repl_reg *g, repl_entry *e) {
    unsigned live = 0;
    for (repl_entry *x = g->entries; x; x = x->next) {
        int st = atomic_load(&x->state);
        live += x->threaded && st != REPL_ST_COMPLETED && st != REPL_ST_FAILED;
    }
    if (live >= repl_max_jobs(g) + REPL_MAX_PENDING) return MIMEO_ETOOLARGE;
    e->pid = g->next_pid++;
    e->threaded = true;
    if (pthread_create(&e->thread, NULL, repl_entry_thread, e) != 0) {
        e->threaded = false;
        return MIMEO_ENOMEM;
    }
    repl_link(g, e);
    return 0;
}

/* Stops e's job (or its wait for a slot) and waits for its thread. Call without g->lock;
 * e must be unlinked already (or about to be freed by the caller). */
static void repl_entry_stop(repl_entry *e) {
    repl_reg *g = e->reg;
    pthread_mutex_lock(&g->lock);
    e->quit = true;
    pthread_cond_broadcast(&g->sched);
    pthread_mutex_unlock(&g->lock);
    if (e->job) repl_job_cancel(e->job);
    if (e->threaded) pthread_join(e->thread, NULL);
    e->threaded = false;
}

int mimeo_replicator_configure(mimeo_env *env, const mimeo_replicator_options *opts) {
    repl_reg *g = repl_reg_of(env);
    if (!g) return MIMEO_ENOMEM;
    atomic_store(&g->max_response, opts ? opts->max_response_size : 0);
    atomic_store(&g->max_jobs, opts ? opts->max_jobs : 0);
    atomic_store(&g->interval_ms, opts ? opts->interval_ms : 0);
    const char *ca = opts && opts->cafile ? opts->cafile : "";
    const char *hosts = opts && opts->allowed_hosts ? opts->allowed_hosts : "";
    if (strlen(ca) >= sizeof g->cafile || strlen(hosts) >= sizeof g->allowed_hosts)
        return MIMEO_EINVAL;
    pthread_mutex_lock(&g->lock);
    snprintf(g->cafile, sizeof g->cafile, "%s", ca);
    pthread_cond_broadcast(&g->sched); /* a larger max_jobs frees slots at once */
    snprintf(g->allowed_hosts, sizeof g->allowed_hosts, "%s", hosts);
    pthread_mutex_unlock(&g->lock);
    return 0;
}

/* Parses a job description and checks its URLs against allowed_hosts: the HTTP layer
 * checks request bodies early, but _replicator documents also arrive by replication and
 * through bulk writes, and embedders call mimeo_replicate directly — this is the one check
 * every job passes. 0 with req filled, or an error with nothing to free. */
static int repl_reg_parse(repl_reg *g, const char *json, size_t len, repl_req *req,
                          mimeo_err *err) {
    int rc = repl_req_parse(json, len, req, err);
    if (rc) return rc;
    if (req->cancel) return 0;
    pthread_mutex_lock(&g->lock);
    bool ok = auth_host_allowed(g->allowed_hosts, req->source.url) &&
              auth_host_allowed(g->allowed_hosts, req->target.url);
    pthread_mutex_unlock(&g->lock);
    if (ok) return 0;
    repl_req_destroy(req);
    err_set(err, MIMEO_EFORBIDDEN, "forbidden",
            "The replication names a host outside [replicator] allowed_hosts.");
    return MIMEO_EFORBIDDEN;
}

/* A job of g for req (taken); the registry's settings fill what req leaves open. */
static repl_job *repl_reg_job_new(repl_reg *g, repl_req *req) {
    if (!req->max_response) req->max_response = atomic_load(&g->max_response);
    pthread_mutex_lock(&g->lock);
    bool nomem = false;
    if (g->cafile[0]) {
        if (!req->source.cafile) nomem |= !(req->source.cafile = strdup(g->cafile));
        if (!req->target.cafile) nomem |= !(req->target.cafile = strdup(g->cafile));
    }
    pthread_mutex_unlock(&g->lock);
    if (nomem) return NULL;
    return repl_job_new(g->env, req);
}

/* ---- mimeo_replicate ---------------------------------------------------------------------- */
static int repl_reply_id(const char *id, char **out, size_t *out_len) {
    buf b;
    buf_init(&b, 0);
    int rc = buf_puts(&b, "{\"ok\":true,\"_local_id\":");
    if (!rc) rc = json_put_cstr(&b, id);
    if (!rc) rc = buf_putc(&b, '}');
    if (rc) {
        buf_destroy(&b);
        return MIMEO_ENOMEM;
    }
    *out = buf_detach(&b, out_len);
    return 0;
}

static int repl_cancel(repl_reg *g, repl_req *req, char **out, size_t *out_len,
                       unsigned *status, mimeo_err *err) {
    char id[48];
    if (req->replication_id) {
        snprintf(id, sizeof id, "%s", req->replication_id);
    } else {
        char base[33];
        repl_req_id(g->env, req, base);
        snprintf(id, sizeof id, "%s%s", base, req->continuous ? "+continuous" : "");
    }
    pthread_mutex_lock(&g->lock);
    repl_entry *e = repl_find(g, id);
    if (!e && !strchr(id, '+')) {
        /* {"replication_id":"<base>","cancel":true} names a continuous job too. */
        char cid[48];
        snprintf(cid, sizeof cid, "%.32s+continuous", id);
        e = repl_find(g, cid);
    }
    if (e && e->doc_id) e = NULL;   /* _replicator jobs stop by deleting their doc */
    if (e && e->transient) {
        /* A one-shot call is running it: make it return; the caller cleans up. */
        repl_job_cancel(e->job);
        pthread_mutex_unlock(&g->lock);
        if (status) *status = 200;
        return repl_reply_id(id, out, out_len);
    }
    if (e) repl_unlink(g, e);
    pthread_mutex_unlock(&g->lock);
    if (!e) {
        err_set(err, MIMEO_ENOTFOUND, "not_found", "replication %s is not running", id);
        if (status) *status = 404;
        return MIMEO_ENOTFOUND;
    }
    repl_entry_stop(e);
    repl_entry_free(e);
    if (status) *status = 200;
    return repl_reply_id(id, out, out_len);
}

int mimeo_replicate(mimeo_env *env, const char *json, size_t len, char **json_out,
                    size_t *out_len, unsigned *status, mimeo_err *err) {
    size_t dummy_len;
    if (!out_len) out_len = &dummy_len;
    *json_out = NULL;
    repl_curl_init();
    repl_req req;
    mimeo_err e;
    memset(&e, 0, sizeof e);
    int rc;
    repl_reg *g = repl_reg_of(env);
    if (!g) {
        err_set(&e, MIMEO_ENOMEM, "error", "out of memory");
        rc = MIMEO_ENOMEM;
        goto fail;
    }
    rc = repl_reg_parse(g, json, len, &req, &e);
    if (rc) goto fail;
    if (req.cancel) {
        rc = repl_cancel(g, &req, json_out, out_len, status, &e);
        repl_req_destroy(&req);
        if (rc) goto fail;
        return 0;
    }
    if ((req.source.local || req.target.local) && !env) {
        repl_req_destroy(&req);
        err_set(&e, MIMEO_EINVAL, "bad_request",
                     "a bare database name needs a local data directory");
        rc = MIMEO_EINVAL;
        goto fail;
    }
    repl_job *j = repl_reg_job_new(g, &req);
    if (!j) {
        repl_req_destroy(&req);
        err_set(&e, MIMEO_ENOMEM, "error", "out of memory");
        rc = MIMEO_ENOMEM;
        goto fail;
    }
    char id[48];
    snprintf(id, sizeof id, "%s%s", j->rep_id, j->req.continuous ? "+continuous" : "");
    repl_entry *ent = repl_entry_new(g, j, id);
    if (!ent) {
        repl_job_free(j);
        err_set(&e, MIMEO_ENOMEM, "error", "out of memory");
        rc = MIMEO_ENOMEM;
        goto fail;
    }
    pthread_mutex_lock(&g->lock);
    if (g->stopped || atomic_load(&g->mgr_stop)) {
        pthread_mutex_unlock(&g->lock);
        repl_entry_free(ent);
        err_set(&e, MIMEO_ECLOSED, "error", "the node is shutting down");
        rc = MIMEO_ECLOSED;
        goto fail;
    }
    repl_entry *dup = repl_find(g, id);
    if (dup && j->req.continuous) {
        /* CouchDB answers a second start of the same continuous job with its id. */
        pthread_mutex_unlock(&g->lock);
        repl_entry_free(ent);
        if (status) *status = 202;
        return repl_reply_id(id, json_out, out_len);
    }
    if (j->req.continuous) {
        rc = repl_entry_start(g, ent);
        pthread_mutex_unlock(&g->lock);
        if (rc) {
            repl_entry_free(ent);
            if (rc == MIMEO_ETOOLARGE)
                err_set(&e, rc, "too_many_jobs",
                        "the node runs [replicator] max_jobs replication jobs and %u more wait",
                        REPL_MAX_PENDING);
            else
                err_set(&e, rc, "error", "could not start the job");
            goto fail;
        }
        if (status) *status = 202;
        return repl_reply_id(id, json_out, out_len);
    }
    /* One-shot: run here, listed in the registry meanwhile for _active_tasks. */
    ent->transient = true;
    ent->pid = g->next_pid++;
    atomic_store(&ent->state, REPL_ST_RUNNING);
    repl_link(g, ent);
    pthread_mutex_unlock(&g->lock);

    rc = repl_job_run(j, json_out, out_len);
    if (rc) e = j->error;

    pthread_mutex_lock(&g->lock);
    repl_unlink(g, ent);
    pthread_mutex_unlock(&g->lock);
    repl_entry_free(ent);
    if (rc) {
        if (!e.error[0]) err_set(&e, rc, "error", "%s", mimeo_strerror(rc));
        goto fail;
    }
    if (status) *status = 200;
    return 0;
fail:
    if (!e.code) e.code = rc;
    if (status) *status = repl_status_for(&e);
    if (err) *err = e;
    return rc;
}

/* ---- the _replicator manager ----------------------------------------------------------- */
typedef struct repl_row {
    char *id;
    bool  deleted;
    char *doc;       /* JSON text */
} repl_row;

typedef struct repl_rows {
    repl_row *v;
    size_t    n, alloc;
} repl_rows;

static int repl_row_cb(void *ctx, const char *json, size_t len) {
    repl_rows *rs = ctx;
    jval *v = NULL;
    if (json_tree_parse(json, len, NULL, &v, NULL) != 0) return 0;
    const jval *id = jval_get(v, "id");
    const jval *del = jval_get(v, "deleted");
    const jval *doc = jval_get(v, "doc");
    if (id && id->type == JV_STRING) {
        if (rs->n == rs->alloc) {
            size_t na = rs->alloc ? rs->alloc * 2 : 16;
            repl_row *nv = realloc(rs->v, na * sizeof *nv);
            if (!nv) {
                jval_free(v);
                return MIMEO_ENOMEM;
            }
            rs->v = nv;
            rs->alloc = na;
        }
        repl_row *r = &rs->v[rs->n++];
        r->id = strdup(id->str);
        r->deleted = del && del->type == JV_BOOL && del->boolean;
        r->doc = doc && doc->type == JV_OBJECT ? repl_jval_text(doc) : NULL;
    }
    jval_free(v);
    return 0;
}

/* The members of a _replicator doc that define its job (not _id, _rev, _replication_*). */
static char *repl_doc_spec(const jval *doc) {
    buf b;
    buf_init(&b, 0);
    buf_putc(&b, '{');
    size_t k = 0;
    for (size_t i = 0; i < doc->count; i++) {
        if (doc->keys[i][0] == '_') continue;
        if (k++ > 0) buf_putc(&b, ',');
        json_put_str(&b, doc->keys[i], doc->key_lens[i]);
        buf_putc(&b, ':');
        json_put_jval(&b, doc->items[i]);
    }
    buf_putc(&b, '}');
    size_t n;
    return buf_detach(&b, &n);
}

static void repl_doc_changed(repl_reg *g, const repl_row *row) {
    mimeo_env *env = g->env;
    if (!row->id || strncmp(row->id, "_design/", 8) == 0) return;
    jval *doc = NULL;
    char *spec = NULL;
    const char *state = NULL;
    if (!row->deleted && row->doc &&
        json_tree_parse(row->doc, strlen(row->doc), NULL, &doc, NULL) == 0) {
        spec = repl_doc_spec(doc);
        const jval *st = jval_get(doc, "_replication_state");
        if (st && st->type == JV_STRING) state = st->str;
    }
    pthread_mutex_lock(&g->lock);
    repl_entry *old = repl_find_doc(g, row->id);
    bool same = old && spec && old->doc_spec && strcmp(old->doc_spec, spec) == 0;
    if (same || (!old && !spec)) {
        /* Our own state write-back, or a deletion of a doc we never ran. */
        pthread_mutex_unlock(&g->lock);
        goto out;
    }
    if (old) repl_unlink(g, old);
    pthread_mutex_unlock(&g->lock);
    if (old) {
        repl_entry_stop(old);
        repl_entry_free(old);
    }
    if (!spec) goto out;   /* deleted: its job is stopped */

    bool terminal = state && (strcmp(state, "completed") == 0 || strcmp(state, "failed") == 0);
    repl_req req;
    mimeo_err e;
    memset(&e, 0, sizeof e);
    repl_entry *ent = NULL;
    if (terminal) {
        /* Finished before (maybe before a restart): listed, not run again. */
        ent = repl_entry_new(g, NULL, "");
        if (!ent) goto out;
        atomic_store(&ent->state, strcmp(state, "completed") == 0 ? REPL_ST_COMPLETED
                                                                  : REPL_ST_FAILED);
        jval *src = jval_get(doc, "source"), *tgt = jval_get(doc, "target");
        if (src && src->type == JV_OBJECT) src = jval_get(src, "url");
        if (tgt && tgt->type == JV_OBJECT) tgt = jval_get(tgt, "url");
        ent->source = src && src->type == JV_STRING ? repl_url_display(src->str) : NULL;
        ent->target = tgt && tgt->type == JV_STRING ? repl_url_display(tgt->str) : NULL;
        const jval *c = jval_get(doc, "continuous");
        ent->continuous = c && c->type == JV_BOOL && c->boolean;
        const jval *stats = jval_get(doc, "_replication_stats");
        if (stats && stats->type == JV_OBJECT) {
            char *t = repl_jval_text(stats);
            if (t && strlen(t) >= 2) {
                t[strlen(t) - 1] = '\0';
                ent->final_stats = strdup(t + 1);
            }
            free(t);
        }
    } else if (repl_reg_parse(g, row->doc, strlen(row->doc), &req, &e) != 0) {
        ent = repl_entry_new(g, NULL, "");
        if (!ent) goto out;
        atomic_store(&ent->state, REPL_ST_FAILED);
        ent->error_count = 1;
        snprintf(ent->last_error, sizeof ent->last_error, "%s: %s", e.error, e.reason);
        repl_doc_write_state(env, row->id, "failed", e.reason, NULL);
        /* That write changes the doc; keep the spec so the change is recognised. */
    } else {
        repl_job *j = repl_reg_job_new(g, &req);
        if (!j) {
            repl_req_destroy(&req);
            goto out;
        }
        char id[48];
        snprintf(id, sizeof id, "%s%s", j->rep_id, j->req.continuous ? "+continuous" : "");
        pthread_mutex_lock(&g->lock);
        repl_entry *twin = repl_find(g, id);
        char twin_doc[200] = "";
        if (twin) snprintf(twin_doc, sizeof twin_doc, "%s", twin->doc_id ? twin->doc_id : "");
        pthread_mutex_unlock(&g->lock);
        if (twin) {
            /* CouchDB: a second document describing a running replication fails. */
            ent = repl_entry_new(g, NULL, "");
            if (ent) {
                ent->source = repl_url_display(j->req.source.url);
                ent->target = repl_url_display(j->req.target.url);
            }
            repl_job_free(j);
            if (!ent) goto out;
            atomic_store(&ent->state, REPL_ST_FAILED);
            ent->error_count = 1;
            snprintf(ent->last_error, sizeof ent->last_error,
                     "duplicate: replication %s is already run by %s%.100s", id,
                     twin_doc[0] ? "document " : "a /_replicate request", twin_doc);
            repl_doc_write_state(env, row->id, "failed", ent->last_error, NULL);
        } else {
            ent = repl_entry_new(g, j, id);
            if (!ent) {
                repl_job_free(j);
                goto out;
            }
        }
    }
    ent->doc_id = strdup(row->id);
    ent->doc_spec = spec;
    spec = NULL;
    pthread_mutex_lock(&g->lock);
    if (ent->job) {
        int src = repl_entry_start(g, ent);
        if (src != 0) {
            pthread_mutex_unlock(&g->lock);
            repl_entry_free(ent);
            if (src == MIMEO_ETOOLARGE)
                repl_doc_write_state(env, row->id, "failed",
                                     "too many replication jobs wait for a slot", NULL);
            goto out;
        }
    } else {
        repl_link(g, ent);
    }
    pthread_mutex_unlock(&g->lock);
out:
    free(spec);
    jval_free(doc);
}

static void *repl_mgr_thread(void *arg) {
    repl_reg *g = arg;
    mimeo_db *db = NULL;
    uint64_t since = 0;
    while (!atomic_load(&g->mgr_stop)) {
        if (!db && mimeo_db_open(g->env, REPL_DB, &db, NULL) != 0) {
            /* Deleted under us: recreate and start over. */
            mimeo_db_create(g->env, REPL_DB, NULL);
            since = 0;
            struct timespec ts = { 0, 200 * 1000000L };
            nanosleep(&ts, NULL);
            continue;
        }
        mimeo_changes_opts o;
        memset(&o, 0, sizeof o);
        o.since = since;
        o.include_docs = true;
        o.limit = 200;
        repl_rows rows = { NULL, 0, 0 };
        uint64_t last = since;
        int rc = mimeo_changes(db, &o, repl_row_cb, &rows, &last, NULL, NULL);
        if (rc == MIMEO_ENOTFOUND) {
            mimeo_db_close(db);
            db = NULL;
        }
        for (size_t i = 0; i < rows.n; i++) {
            if (!atomic_load(&g->mgr_stop)) repl_doc_changed(g, &rows.v[i]);
            free(rows.v[i].id);
            free(rows.v[i].doc);
        }
        free(rows.v);
        if (rc == 0) since = last;
        if (db && rc == 0 && rows.n == 0) mimeo_changes_wait(db, since, 250);
    }
    if (db) mimeo_db_close(db);
    return NULL;
}

int mimeo_replicator_start(mimeo_env *env, mimeo_err *err) {
    repl_curl_init();
    repl_reg *g = repl_reg_of(env);
    if (!g) return MIMEO_ENOMEM;
    mimeo_err e;
    memset(&e, 0, sizeof e);
    int rc = mimeo_db_create(env, REPL_DB, &e);
    if (rc && rc != MIMEO_EEXIST) {
        if (err) *err = e;
        return rc;
    }
    pthread_mutex_lock(&g->lock);
    if (g->mgr_running || g->stopped) {
        pthread_mutex_unlock(&g->lock);
        return g->stopped ? MIMEO_ECLOSED : 0;
    }
    bool started = pthread_create(&g->mgr, NULL, repl_mgr_thread, g) == 0;
    g->mgr_running = started;
    pthread_mutex_unlock(&g->lock);
    if (!started) {
        err_set(err, MIMEO_ENOMEM, "error", "could not start the replicator thread");
        return MIMEO_ENOMEM;
    }
    return 0;
}

/* Stops the manager and every job of g; forever: refuse new jobs from now on. */
static void repl_reg_stop(repl_reg *g, bool forever) {
    pthread_mutex_lock(&g->lock);
    if (forever) g->stopped = true;
    atomic_store(&g->mgr_stop, true);
    bool joined = g->mgr_running;
    g->mgr_running = false;
    pthread_mutex_unlock(&g->lock);
    if (joined) pthread_join(g->mgr, NULL);

    /* Take every job out of the registry; one-shot calls are only cancelled (their callers
     * unlink and free them). */
    repl_entry *mine = NULL;
    pthread_mutex_lock(&g->lock);
    for (repl_entry **p = &g->entries; *p;) {
        repl_entry *e = *p;
        if (e->transient) {
            repl_job_cancel(e->job);
            p = &e->next;
            continue;
        }
        *p = e->next;
        e->next = mine;
        mine = e;
    }
    if (!forever) atomic_store(&g->mgr_stop, false);
    pthread_mutex_unlock(&g->lock);
    for (repl_entry *e = mine; e; e = e->next)
        if (e->job) repl_job_cancel(e->job);
    while (mine) {
        repl_entry *e = mine;
        mine = e->next;
        repl_entry_stop(e);
        repl_entry_free(e);
    }
}

void mimeo_replicator_stop(mimeo_env *env) {
    repl_reg *g = repl_reg_of(env);
    /* The mark outlives the manager: requests still in flight on open connections must not
     * start jobs on an environment about to close. Jobs between two URLs have no such
     * environment, and their registry takes jobs again afterwards. */
    if (g) repl_reg_stop(g, env != NULL);
}

/* ---- monitoring ---------------------------------------------------------------------------- */
static void repl_put_nstr(buf *b, const char *s) {
    if (s) json_put_cstr(b, s);
    else buf_puts(b, "null");
}

/* "tls_verify":false, when a remote end of j does not check certificates ("verify": false),
 * so whoever reads the status sees that the job trusts anything. */
static void repl_put_tls(buf *b, const repl_job *j) {
    if (!j) return;
    const repl_ep_spec *s = &j->req.source, *t = &j->req.target;
    if ((!s->local && s->no_verify) || (!t->local && t->no_verify))
        buf_puts(b, "\"tls_verify\":false,");
}

static void repl_put_stats(buf *b, repl_entry *e) {
    int st = atomic_load(&e->state);
    bool ended = st == REPL_ST_COMPLETED || st == REPL_ST_FAILED;
    if (e->job && (!ended || !e->final_stats))
        repl_job_put_stats(e->job, b);
    else if (e->final_stats)
        buf_puts(b, e->final_stats);
    else
        buf_puts(b, "\"docs_read\":0,\"docs_written\":0,\"doc_write_failures\":0");
}

/* The state the listings show, and its error (into error, n bytes; "" when none). A job
 * whose peer has kept failing for REPL_UNHEALTHY_MS is crashing, as CouchDB's would be by
 * then, even while its own retries go on. Under g->lock. */
static int repl_shown_state(repl_entry *e, char *error, size_t n) {
    int st = atomic_load(&e->state);
    error[0] = '\0';
    if ((st == REPL_ST_RUNNING || st == REPL_ST_INITIALIZING) && e->job &&
        repl_health_get(&e->job->health, REPL_UNHEALTHY_MS, error, n))
        return REPL_ST_CRASHING;
    if (st == REPL_ST_CRASHING || st == REPL_ST_FAILED) snprintf(error, n, "%s", e->last_error);
    return st;
}

/* One listing: the entries of env that want() accepts, each written by put(), as a bare
 * array (member NULL) or as {"total_rows":N,"offset":0,"<member>":[…]}. *count gets N. */
typedef bool (*repl_want_fn)(repl_entry *e, const void *arg);
typedef void (*repl_put_fn)(buf *b, repl_entry *e);

static int repl_list(mimeo_env *env, const char *member, repl_want_fn want, const void *arg,
                     repl_put_fn put, char **json_out, size_t *out_len, size_t *count) {
    repl_reg *g = repl_reg_of(env);
    if (!g) return MIMEO_ENOMEM;
    buf items;
    buf_init(&items, 0);
    size_t n = 0;
    pthread_mutex_lock(&g->lock);
    for (repl_entry *e = g->entries; e; e = e->next) {
        if (!want(e, arg)) continue;
        if (n++ > 0) buf_putc(&items, ',');
        put(&items, e);
    }
    pthread_mutex_unlock(&g->lock);
    buf b;
    buf_init(&b, 0);
    if (member) buf_printf(&b, "{\"total_rows\":%zu,\"offset\":0,\"%s\":", n, member);
    buf_putc(&b, '[');
    buf_put(&b, items.data ? items.data : "", items.len);
    int rc = buf_puts(&b, member ? "]}" : "]");
    buf_destroy(&items);
    if (rc) {
        buf_destroy(&b);
        return MIMEO_ENOMEM;
    }
    if (count) *count = n;
    *json_out = buf_detach(&b, out_len);
    return 0;
}

/* ---- GET /_active_tasks ---- */
static bool repl_want_task(repl_entry *e, const void *arg) {
    (void)arg;
    int st = atomic_load(&e->state);
    return e->job && (st == REPL_ST_RUNNING || st == REPL_ST_INITIALIZING);
}

static void repl_put_task(buf *b, repl_entry *e) {
    buf_puts(b, "{\"type\":\"replication\",\"replication_id\":");
    json_put_cstr(b, e->id);
    buf_puts(b, ",\"doc_id\":");
    repl_put_nstr(b, e->doc_id);
    buf_printf(b, ",\"database\":%s,\"user\":null,\"source\":",
               e->doc_id ? "\"" REPL_DB "\"" : "null");
    repl_put_nstr(b, e->source);
    buf_puts(b, ",\"target\":");
    repl_put_nstr(b, e->target);
    buf_printf(b, ",\"continuous\":%s,\"pid\":\"<0.%u.0>\",\"node\":\"mimeo@127.0.0.1\","
               "\"started_on\":%lld,\"updated_on\":%lld,\"checkpoint_interval\":%u,",
               e->continuous ? "true" : "false", e->pid, (long long)e->job->started_on,
               (long long)atomic_load(&e->job->updated_on), e->job->req.checkpoint_interval_ms);
    repl_put_tls(b, e->job);
    repl_job_put_stats(e->job, b);
    buf_printf(b, ",\"process_status\":\"%s\"}",
               atomic_load(&e->job->caught_up) ? "waiting" : "running");
}

int mimeo_active_tasks(mimeo_env *env, char **json_out, size_t *out_len) {
    return repl_list(env, NULL, repl_want_task, NULL, repl_put_task, json_out, out_len, NULL);
}

/* ---- GET /_scheduler/jobs ---- */
static bool repl_want_job(repl_entry *e, const void *arg) {
    (void)arg;
    int st = atomic_load(&e->state);
    return e->job && st != REPL_ST_COMPLETED && st != REPL_ST_FAILED;
}

static void repl_put_job(buf *b, repl_entry *e) {
    char start[32], upd[32], error[sizeof e->last_error];
    int st = repl_shown_state(e, error, sizeof error);
    repl_iso8601(e->start_time, start, sizeof start);
    repl_iso8601(atomic_load(&e->job->updated_on), upd, sizeof upd);
    buf_puts(b, "{\"id\":");
    json_put_cstr(b, e->id);
    buf_printf(b, ",\"database\":%s,\"doc_id\":", e->doc_id ? "\"" REPL_DB "\"" : "null");
    repl_put_nstr(b, e->doc_id);
    /* A pending job has no process (CouchDB: "pid":null) */
    if (st == REPL_ST_PENDING) buf_puts(b, ",\"pid\":null");
    else buf_printf(b, ",\"pid\":\"<0.%u.0>\"", e->pid);
    buf_puts(b, ",\"node\":\"mimeo@127.0.0.1\",\"source\":");
    repl_put_nstr(b, e->source);
    buf_puts(b, ",\"target\":");
    repl_put_nstr(b, e->target);
    buf_printf(b, ",\"user\":null,\"state\":\"%s\",\"start_time\":\"%s\","
               "\"last_updated\":\"%s\",\"history\":[", repl_state_names[st], start, upd);
    /* Newest first, as CouchDB lists them. */
    if (st == REPL_ST_CRASHING) {
        buf_printf(b, "{\"timestamp\":\"%s\",\"type\":\"crashed\",\"reason\":", upd);
        json_put_cstr(b, error);
        buf_puts(b, "},");
    }
    if (e->stopped_at) {
        char stop[32];
        repl_iso8601(e->stopped_at, stop, sizeof stop);
        buf_printf(b, "{\"timestamp\":\"%s\",\"type\":\"stopped\"},", stop);
    }
    if (st != REPL_ST_PENDING || e->stopped_at)
        buf_printf(b, "{\"timestamp\":\"%s\",\"type\":\"started\"},", start);
    buf_printf(b, "{\"timestamp\":\"%s\",\"type\":\"added\"}],\"info\":{", start);
    repl_put_tls(b, e->job);
    repl_job_put_stats(e->job, b);
    buf_puts(b, "}}");
}

int mimeo_scheduler_jobs(mimeo_env *env, char **json_out, size_t *out_len) {
    return repl_list(env, "jobs", repl_want_job, NULL, repl_put_job, json_out, out_len, NULL);
}

/* ---- GET /_scheduler/docs ---- */
static bool repl_want_doc(repl_entry *e, const void *arg) {
    const char *docid = arg;
    return e->doc_id && (!docid || strcmp(docid, e->doc_id) == 0);
}

static void repl_put_doc(buf *b, repl_entry *e) {
    char start[32], upd[32], error[sizeof e->last_error];
    int st = repl_shown_state(e, error, sizeof error);
    repl_iso8601(e->start_time, start, sizeof start);
    repl_iso8601(e->job ? (int64_t)atomic_load(&e->job->updated_on) : e->last_updated, upd,
                 sizeof upd);
    /* A peer failing right now counts as one more error until the job crashes for it. */
    unsigned errors = e->error_count + (st == REPL_ST_CRASHING &&
                                        atomic_load(&e->state) != REPL_ST_CRASHING);
    buf_puts(b, "{\"database\":\"" REPL_DB "\",\"doc_id\":");
    json_put_cstr(b, e->doc_id);
    buf_puts(b, ",\"id\":");
    repl_put_nstr(b, e->id[0] ? e->id : NULL);
    buf_printf(b, ",\"node\":\"mimeo@127.0.0.1\",\"source\":");
    repl_put_nstr(b, e->source);
    buf_puts(b, ",\"target\":");
    repl_put_nstr(b, e->target);
    buf_printf(b, ",\"state\":\"%s\",\"info\":{", repl_state_names[st]);
    repl_put_tls(b, e->job);
    if (error[0]) {
        buf_puts(b, "\"error\":");
        json_put_cstr(b, error);
    } else {
        repl_put_stats(b, e);
    }
    buf_printf(b, "},\"error_count\":%u,\"start_time\":\"%s\",\"last_updated\":\"%s\","
               "\"source_proxy\":null,\"target_proxy\":null}", errors, start, upd);
}

int mimeo_scheduler_docs(mimeo_env *env, const char *docid, char **json_out,
                         size_t *out_len, mimeo_err *err) {
    size_t n = 0;
    int rc = repl_list(env, docid ? NULL : "docs", repl_want_doc, docid, repl_put_doc,
                       json_out, out_len, &n);
    if (rc || !docid) return rc;
    if (n == 0) {
        mimeo_free(*json_out);
        *json_out = NULL;
        err_set(err, MIMEO_ENOTFOUND, "not_found", "missing");
        return MIMEO_ENOTFOUND;
    }
    /* One document: the object itself, not an array of one. */
    char *s = *json_out;
    *out_len -= 2;
    memmove(s, s + 1, *out_len);
    s[*out_len] = '\0';
    return 0;
}
