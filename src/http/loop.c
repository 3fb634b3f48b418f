/* The server's own threads, beside libmicrohttpd's event threads: a bounded pool of workers
 * that run routes and feed steps, and one timer thread. A task that has to wait (a changes
 * feed with nothing new) is armed as a waiter instead of holding a thread: it is queued for a
 * worker again on its database's next commit (mimeo_env_watch), when its time is due, or at
 * shutdown, whichever comes first. The pool grows (to HTTP_WORKERS_MAX) only while every
 * worker is stuck on a long route. The timer thread also sweeps connections for the header
 * and body timeouts (server.c) once a second. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "http_int.h"

#define HTTP_WAIT_BUCKETS 1024   /* waiters hashed by database handle */
#define HTTP_SWEEP_MS     1000
#define HTTP_STALL_MS     100    /* a task queued this long with no worker free: add one */
#define HTTP_WORKERS_MAX  256
#define HTTP_HANGUP_MS    3000   /* how often armed waiters' sockets are checked */

struct http_loop {
    http_server    *srv;
    pthread_mutex_t lock;
    pthread_cond_t  work_cv;      /* workers wait here for tasks */
    pthread_cond_t  timer_cv;     /* the timer thread waits here for an earlier due time */
    http_task      *head, *tail;  /* the work queue */
    bool            stop;
    unsigned        nworkers;     /* started so far */
    unsigned        max_workers;  /* the pool grows to this when routes block for long */
    unsigned        idle;         /* workers waiting for a task */
    pthread_t      *workers;
    pthread_t       timer;
    bool            timer_started;
    http_task      *buckets[HTTP_WAIT_BUCKETS];
    http_task     **heap;         /* waiters with a due time, earliest first */
    size_t          heap_len, heap_cap;
    size_t          armed;        /* waiters armed now */
    bool            watching;     /* woken by its environment's commits (loop_watch_add) */
};

/* ---- the work queue --------------------------------------------------------------------- */
static void loop_push(struct http_loop *l, http_task *t) {
    t->next = NULL;
    t->queued = clock_ms();
    if (l->tail) l->tail->next = t;
    else l->head = t;
    l->tail = t;
}

void http_loop_submit(http_server *s, http_task *t) {
    struct http_loop *l = s->loop;
    pthread_mutex_lock(&l->lock);
    loop_push(l, t);
    pthread_cond_signal(&l->work_cv);
    pthread_mutex_unlock(&l->lock);
}

static void *loop_worker(void *arg) {
    struct http_loop *l = arg;
    pthread_setname_np(pthread_self(), "mimeo-worker");
    pthread_mutex_lock(&l->lock);
    for (;;) {
        l->idle++;
        while (!l->head && !l->stop) pthread_cond_wait(&l->work_cv, &l->lock);
        l->idle--;
        http_task *t = l->head;
        if (!t) break;   /* stopping and nothing left */
        l->head = t->next;
        if (!l->head) l->tail = NULL;
        pthread_mutex_unlock(&l->lock);
        t->run(t);
        pthread_mutex_lock(&l->lock);
    }
    pthread_mutex_unlock(&l->lock);
    return NULL;
}

/* ---- the timer heap --------------------------------------------------------------------- */
static void heap_set(struct http_loop *l, size_t i, http_task *t) {
    l->heap[i] = t;
    t->heap_i = i + 1;
}

static void heap_up(struct http_loop *l, size_t i) {
    http_task *t = l->heap[i];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (l->heap[p]->due <= t->due) break;
        heap_set(l, i, l->heap[p]);
        i = p;
    }
    heap_set(l, i, t);
}

static void heap_down(struct http_loop *l, size_t i) {
    http_task *t = l->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= l->heap_len) break;
        if (c + 1 < l->heap_len && l->heap[c + 1]->due < l->heap[c]->due) c++;
        if (l->heap[c]->due >= t->due) break;
        heap_set(l, i, l->heap[c]);
        i = c;
    }
    heap_set(l, i, t);
}

static void heap_remove(struct http_loop *l, http_task *t) {
    if (!t->heap_i) return;
    size_t i = t->heap_i - 1;
    t->heap_i = 0;
    http_task *last = l->heap[--l->heap_len];
    if (last == t) return;
    heap_set(l, i, last);
    heap_up(l, i);
    heap_down(l, last->heap_i - 1);
}

/* ---- waiters ---------------------------------------------------------------------------- */
static size_t bucket_of(const mimeo_db *db) {
    uintptr_t p = (uintptr_t)db;
    return (size_t)((p >> 4) ^ (p >> 14)) % HTTP_WAIT_BUCKETS;
}

/* Disarms t and queues it for a worker; under l->lock. */
static void loop_fire(struct http_loop *l, http_task *t) {
    if (t->wprev) t->wprev->wnext = t->wnext;
    else if (t->db) l->buckets[bucket_of(t->db)] = t->wnext;
    if (t->wnext) t->wnext->wprev = t->wprev;
    t->wprev = t->wnext = NULL;
    heap_remove(l, t);
    t->armed = false;
    l->armed--;
    loop_push(l, t);
}

bool http_loop_wait(http_server *s, http_task *t, mimeo_db *db, uint64_t seq, uint64_t due) {
    struct http_loop *l = s->loop;
    pthread_mutex_lock(&l->lock);
    /* The check runs under the lock the commit watcher takes, after the commit published
     * its seq: a commit either shows here or finds the waiter armed. */
    mimeo_db_info info;
    if (atomic_load(&s->stopping) ||
        (db && (mimeo_db_info_get(db, &info) != 0 || info.update_seq > seq))) {
        pthread_mutex_unlock(&l->lock);
        return false;
    }
    if (due && l->heap_len == l->heap_cap) {
        size_t cap = l->heap_cap ? l->heap_cap * 2 : 256;
        http_task **h = realloc(l->heap, cap * sizeof *h);
        if (!h) {
            pthread_mutex_unlock(&l->lock);
            return false;   /* the caller steps again: a busy loop only under no memory */
        }
        l->heap = h;
        l->heap_cap = cap;
    }
    t->db = db;
    t->due = due;
    t->armed = true;
    t->wprev = NULL;
    t->wnext = NULL;
    t->heap_i = 0;
    if (db) {
        http_task **b = &l->buckets[bucket_of(db)];
        t->wnext = *b;
        if (*b) (*b)->wprev = t;
        *b = t;
    }
    if (due) {
        l->heap[l->heap_len++] = t;
        heap_up(l, l->heap_len - 1);
        if (t->heap_i == 1) pthread_cond_signal(&l->timer_cv);
    }
    l->armed++;
    pthread_mutex_unlock(&l->lock);
    return true;
}

/* The commit watcher: on the writer thread, so it only moves tasks to the queue. */
static void loop_on_commit(struct http_loop *l, mimeo_db *db) {
    if (strcmp(mimeo_db_name(db), "_users") == 0) http_auth_users_touched(l->srv);
    pthread_mutex_lock(&l->lock);
    http_task *t = l->buckets[bucket_of(db)];
    bool any = false;
    while (t) {
        http_task *next = t->wnext;
        if (t->db == db) {
            loop_fire(l, t);
            any = true;
        }
        t = next;
    }
    if (any) pthread_cond_broadcast(&l->work_cv);
    pthread_mutex_unlock(&l->lock);
}

void http_loop_fire_all(http_server *s) {
    struct http_loop *l = s->loop;
    if (!l) return;
    pthread_mutex_lock(&l->lock);
    for (size_t i = 0; i < HTTP_WAIT_BUCKETS; i++)
        while (l->buckets[i]) loop_fire(l, l->buckets[i]);
    while (l->heap_len) loop_fire(l, l->heap[0]);
    pthread_cond_broadcast(&l->work_cv);
    pthread_mutex_unlock(&l->lock);
}

/* A suspended connection is not watched by libmicrohttpd, nor is a parked one (server.c): a
 * client that leaves an idle feed would hold its slot until the feed's next heartbeat or
 * timeout. So the sockets of armed waiters are peeked now and then; end of stream or an error
 * fires the waiter, marked. While armed, the connection is suspended (or parked, and only its
 * feed closes it, after it has run) and cannot be closed, so the descriptor is its own. */
static void loop_check_hangups(struct http_loop *l) {
    for (size_t i = 0; i < HTTP_WAIT_BUCKETS; i++) {
        http_task *t = l->buckets[i];
        while (t) {
            http_task *next = t->wnext;
            if (t->fd > 0 && http_fd_peer_gone(t->fd)) {
                t->hangup = true;
                loop_fire(l, t);
            }
            t = next;
        }
    }
}

size_t http_loop_armed(http_server *s) {
    struct http_loop *l = s->loop;
    pthread_mutex_lock(&l->lock);
    size_t n = l->armed;
    pthread_mutex_unlock(&l->lock);
    return n;
}

/* ---- the timer thread ------------------------------------------------------------------- */
static bool loop_add_worker(struct http_loop *l);

static void *loop_timer(void *arg) {
    struct http_loop *l = arg;
    pthread_setname_np(pthread_self(), "mimeo-timer");
    uint64_t next_sweep = clock_ms() + HTTP_SWEEP_MS, next_hangup = next_sweep;
    pthread_mutex_lock(&l->lock);
    while (!l->stop) {
        uint64_t now = clock_ms();
        bool any = false;
        /* Every worker busy and a task waiting: routes are blocking (a long replication,
         * a slow query server). The pool grows rather than stall every other request. */
        if (l->head && l->idle == 0 && now - l->head->queued >= HTTP_STALL_MS &&
            l->nworkers < l->max_workers)
            loop_add_worker(l);
        while (l->heap_len && l->heap[0]->due <= now) {
            loop_fire(l, l->heap[0]);
            any = true;
        }
        if (any) pthread_cond_broadcast(&l->work_cv);
        if (now >= next_hangup) {
            size_t before = l->armed;
            loop_check_hangups(l);
            if (l->armed != before) pthread_cond_broadcast(&l->work_cv);
            next_hangup = now + HTTP_HANGUP_MS;
        }
        if (now >= next_sweep) {
            pthread_mutex_unlock(&l->lock);
            http_conns_sweep(l->srv, now);
            pthread_mutex_lock(&l->lock);
            next_sweep = now + HTTP_SWEEP_MS;
            continue;
        }
        uint64_t until = next_sweep;
        if (l->heap_len && l->heap[0]->due < until) until = l->heap[0]->due;
        if (l->head && now + HTTP_STALL_MS < until) until = now + HTTP_STALL_MS;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t ms = until > now ? until - now : 0;
        ts.tv_sec += (time_t)(ms / 1000);
        ts.tv_nsec += (long)(ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&l->timer_cv, &l->lock, &ts);
    }
    pthread_mutex_unlock(&l->lock);
    return NULL;
}

/* ---- one commit watcher per environment -------------------------------------------------- */
/* An environment has one watcher slot, and an HTTP and an HTTPS server may serve the same
 * one: each setting its own watcher would leave the first server's feeds never woken. So the
 * watcher is one per environment and wakes the loops of every server on it. Lock order:
 * watch_reg_lock, then the environment's watcher lock (mimeo_env_watch), then w->lock; the
 * watcher itself runs under the environment's lock and takes only w->lock. */
typedef struct loop_env_watch {
    struct loop_env_watch *next;
    mimeo_env             *env;
    pthread_mutex_t        lock;
    struct http_loop     **loops;
    size_t                 nloops;
} loop_env_watch;

static pthread_mutex_t watch_reg_lock = PTHREAD_MUTEX_INITIALIZER;
static loop_env_watch *watch_reg;

static void loop_env_on_commit(void *ctx, mimeo_db *db) {
    loop_env_watch *w = ctx;
    pthread_mutex_lock(&w->lock);
    for (size_t i = 0; i < w->nloops; i++) loop_on_commit(w->loops[i], db);
    pthread_mutex_unlock(&w->lock);
}

static int loop_watch_add(mimeo_env *env, struct http_loop *l) {
    pthread_mutex_lock(&watch_reg_lock);
    loop_env_watch *w = watch_reg;
    while (w && w->env != env) w = w->next;
    bool fresh = !w;
    if (fresh && (w = calloc(1, sizeof *w)) != NULL) {
        w->env = env;
        pthread_mutex_init(&w->lock, NULL);
    }
    struct http_loop **loops = w ? realloc(w->loops, (w->nloops + 1) * sizeof *loops) : NULL;
    if (!loops) {
        if (fresh && w) {
            pthread_mutex_destroy(&w->lock);
            free(w);
        }
        pthread_mutex_unlock(&watch_reg_lock);
        return -1;
    }
    pthread_mutex_lock(&w->lock);
    w->loops = loops;
    w->loops[w->nloops++] = l;
    pthread_mutex_unlock(&w->lock);
    if (fresh) {
        w->next = watch_reg;
        watch_reg = w;
        mimeo_env_watch(env, loop_env_on_commit, w);
    }
    pthread_mutex_unlock(&watch_reg_lock);
    return 0;
}

static void loop_watch_remove(mimeo_env *env, struct http_loop *l) {
    pthread_mutex_lock(&watch_reg_lock);
    loop_env_watch **pw = &watch_reg, *w;
    while ((w = *pw) && w->env != env) pw = &w->next;
    if (w) {
        pthread_mutex_lock(&w->lock);
        for (size_t i = 0; i < w->nloops; i++)
            if (w->loops[i] == l) {
                w->loops[i] = w->loops[--w->nloops];
                break;
            }
        bool empty = w->nloops == 0;
        pthread_mutex_unlock(&w->lock);
        if (empty) {
            /* Once mimeo_env_watch returns, no commit is still inside the old watcher. */
            mimeo_env_watch(env, NULL, NULL);
            *pw = w->next;
            pthread_mutex_destroy(&w->lock);
            free(w->loops);
            free(w);
        }
    }
    pthread_mutex_unlock(&watch_reg_lock);
}

/* ---- start and stop --------------------------------------------------------------------- */
/* Starts one more worker; under l->lock (or before other threads run). */
static bool loop_add_worker(struct http_loop *l) {
    /* Workers do little on their stack (the handlers keep big things on the heap). */
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, (size_t)1 << 20);
    bool ok = pthread_create(&l->workers[l->nworkers], &attr, loop_worker, l) == 0;
    pthread_attr_destroy(&attr);
    if (ok) l->nworkers++;
    return ok;
}

int http_loop_start(http_server *s, unsigned workers, char *errbuf, size_t errlen) {
    struct http_loop *l = calloc(1, sizeof *l);
    if (!l) {
        snprintf(errbuf, errlen, "out of memory");
        return -1;
    }
    l->srv = s;
    pthread_mutex_init(&l->lock, NULL);
    pthread_cond_init(&l->work_cv, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->timer_cv, &ca);
    pthread_condattr_destroy(&ca);
    l->max_workers = workers > HTTP_WORKERS_MAX ? workers : HTTP_WORKERS_MAX;
    l->workers = calloc(l->max_workers, sizeof *l->workers);
    s->loop = l;
    if (!l->workers) {
        snprintf(errbuf, errlen, "out of memory");
        http_loop_stop(s);
        return -1;
    }
    pthread_mutex_lock(&l->lock);
    while (l->nworkers < workers && loop_add_worker(l)) {}
    bool started = l->nworkers == workers;
    pthread_mutex_unlock(&l->lock);
    if (!started) {
        snprintf(errbuf, errlen, "cannot start worker threads");
        http_loop_stop(s);
        return -1;
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, (size_t)1 << 20);
    l->timer_started = pthread_create(&l->timer, &attr, loop_timer, l) == 0;
    pthread_attr_destroy(&attr);
    if (!l->timer_started) {
        snprintf(errbuf, errlen, "cannot start the timer thread");
        http_loop_stop(s);
        return -1;
    }
    if (loop_watch_add(s->env, l) != 0) {
        snprintf(errbuf, errlen, "out of memory");
        http_loop_stop(s);
        return -1;
    }
    l->watching = true;
    return 0;
}

void http_loop_stop(http_server *s) {
    struct http_loop *l = s->loop;
    if (!l) return;
    if (l->watching) loop_watch_remove(s->env, l);
    pthread_mutex_lock(&l->lock);
    l->stop = true;
    pthread_cond_broadcast(&l->work_cv);
    pthread_cond_signal(&l->timer_cv);
    pthread_mutex_unlock(&l->lock);
    /* The timer may add a worker until it stops: it goes first. */
    if (l->timer_started) pthread_join(l->timer, NULL);
    for (unsigned i = 0; i < l->nworkers; i++) pthread_join(l->workers[i], NULL);
    free(l->workers);
    free(l->heap);
    pthread_cond_destroy(&l->work_cv);
    pthread_cond_destroy(&l->timer_cv);
    pthread_mutex_destroy(&l->lock);
    free(l);
    s->loop = NULL;
}
