/* mesh data: moves documents between the copies of every meshed database. Eager push: a
 * committed write queues a one-shot push replication of its database to `fanout` peers chosen
 * at random (re-chosen when membership changes), and since replicated writes commit too, a
 * change hops on until every node has it. Anti-entropy: every round one random live peer's
 * summary (update_seq per database) is compared with what this node last pulled from and
 * pushed to it, and only the databases that moved are replicated, both ways. A node-wide pool
 * of workers runs the replications, at most a few per peer, so a slow peer cannot hold them all. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "mesh_data.h"
#include "../common/buf.h"
#include "../json/json.h"

#define TICK_MS        100
#define QUEUE_MAX      20000     /* pending triggers; past it they are dropped (counted) and
                                    the next anti-entropy round finds what they would have */
#define HASH_SLOTS     1024
#define RETRY_MAX      4
#define RETRY_BASE_MS  500
#define SUMMARY_MAX    (64u << 20)
#define ROUND_BACKLOG  64        /* a periodic round waits while more tasks than this queue: */
#define ROUND_DEFER    5         /* what it would add is mostly queued already; at most this
                                    many periods in a row, then it runs anyway */
#define PREFER_SCAN    1024      /* pending tasks searched for a better peer to pull from */
#define SAVE_MS        1000      /* progress reaches the disk at most this late (a kill -9
                                    loses at most that much: a few replications that find
                                    nothing after the restart) */

enum { T_PUSH, T_PULL, T_ROUND };

struct task {
    int kind;
    char *db;                    /* NULL for a round */
    struct mesh_peer peer;
    int64_t peer_seq;            /* a pull: the peer's update_seq in its summary */
    uint64_t not_before;         /* monotonic ms */
    unsigned tries;
    bool running, again;
    struct task *next;           /* pending list */
    struct task *hnext;          /* hash chain */
};

struct stat_row {
    struct mesh_sync_stat s;
    bool mismatch;               /* the peer's copy is of another incarnation of the db */
    bool loaded;                 /* the progress saved by an earlier process was read */
    bool dirty;                  /* pushed_seq or pulled_seq moved since the last save */
    bool pull_failing;           /* the last pull from the peer failed: summaries do not
                                    count it as pulling until one succeeds */
    struct stat_row *hnext;
    struct stat_row *lnext;      /* every row, newest first */
};

struct dirty {
    char *db;
    struct dirty *next;
};

/* When each database last changed, in this process's generations (summary?since=). */
struct gen_row {
    char *db;
    uint64_t gen;
    struct gen_row *hnext;
};

/* Where this node stands in a peer's summaries: its epoch and the generation read through. */
struct peer_cursor {
    char name[MESH_NAME_MAX + 1];
    char epoch[33];
    uint64_t gen;
    struct peer_cursor *next;
};

struct mesh_data {
    struct mesh_data_opts o;
    char self[MESH_NAME_MAX + 1];
    char *password;
    pthread_mutex_t mu;
    pthread_cond_t cond;         /* scheduler: dirty databases, stop */
    pthread_cond_t work;         /* workers: a task may be ready */
    bool stop;
    pthread_t sched;
    pthread_t *workers;
    struct task **running;       /* per worker: its task, or NULL */
    void *slots_mem;             /* the workers' arguments */
    unsigned nworkers;

    struct task *head, *tail;    /* pending, in order */
    struct task *slots[HASH_SLOTS];
    size_t npending, nrunning;

    struct dirty *dirty;         /* databases written since the scheduler last looked */
    size_t ndirty;
    bool dirty_overflow;

    struct mesh_peer *eager;     /* the eager set */
    size_t neager;
    uint64_t members_sig;

    struct stat_row *stats[HASH_SLOTS];
    struct stat_row *stat_list;
    size_t nstats;

    /* Summaries: this process's epoch (random, so a restart is a new one) and generation,
     * bumped by every commit that advances a meshed database. */
    char epoch[33];
    uint64_t gen;
    struct gen_row *gens[HASH_SLOTS];
    struct peer_cursor *cursors;

    struct mesh_data_counters c;
    uint64_t rng;
    uint64_t started_ms;         /* monotonic, at start: summaries say how fresh this node is */
};

/* The commit observer outlives nothing it points at: mesh_data_free clears `d` under `mu`
 * before freeing, so a hook running on the writer thread sees either a live node or none. */
static struct {
    pthread_mutex_t mu;
    struct mesh_data *d;
} g_hook = { PTHREAD_MUTEX_INITIALIZER, NULL };

static uint64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t rnd(struct mesh_data *d) {
    d->rng ^= d->rng << 13;
    d->rng ^= d->rng >> 7;
    d->rng ^= d->rng << 17;
    return d->rng;
}

static unsigned hash3(int kind, const char *db, const char *peer) {
    uint32_t h = 2166136261u ^ (uint32_t)kind;
    for (const char *p = db ? db : ""; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
    h = (h ^ 0xff) * 16777619u;
    for (const char *p = peer; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
    return h % HASH_SLOTS;
}

static bool same_key(const struct task *t, int kind, const char *db, const char *peer) {
    if (t->kind != kind || strcmp(t->peer.name, peer) != 0) return false;
    if (!t->db || !db) return t->db == db;
    return strcmp(t->db, db) == 0;
}

/* ---- statistics -------------------------------------------------------------------------- */

/* The row of (db, peer), or NULL. Called with mu held. */
static struct stat_row *stat_find(struct mesh_data *d, const char *db, const char *peer) {
    for (struct stat_row *r = d->stats[hash3(0, db, peer)]; r; r = r->hnext)
        if (strcmp(r->s.db, db) == 0 && strcmp(r->s.peer, peer) == 0) return r;
    return NULL;
}

/* The row of (db, peer), made on first use; NULL when out of memory. Called with mu held. */
static struct stat_row *stat_get(struct mesh_data *d, const char *db, const char *peer) {
    struct stat_row *r = stat_find(d, db, peer);
    if (r) return r;
    unsigned h = hash3(0, db, peer);
    if (strlen(db) >= sizeof ((struct mesh_sync_stat *)0)->db) return NULL;
    r = calloc(1, sizeof *r);
    if (!r) return NULL;
    snprintf(r->s.db, sizeof r->s.db, "%s", db);
    snprintf(r->s.peer, sizeof r->s.peer, "%s", peer);
    r->s.pushed_seq = r->s.peer_seq = r->s.pulled_seq = -1;
    r->s.behind = r->s.pull_behind = -1;
    r->hnext = d->stats[h];
    d->stats[h] = r;
    r->lnext = d->stat_list;
    d->stat_list = r;
    d->nstats++;
    return r;
}

/* ---- the queue --------------------------------------------------------------------------- */

/* Queues (kind, db, peer) unless it is already pending; a running one is marked to run
 * again when it ends, so a write that lands during a push is pushed too. Called with mu. */
static void enqueue(struct mesh_data *d, int kind, const char *db, const struct mesh_peer *p,
                    int64_t peer_seq) {
    unsigned h = hash3(kind, db, p->name);
    for (struct task *t = d->slots[h]; t; t = t->hnext) {
        if (!same_key(t, kind, db, p->name)) continue;
        if (peer_seq > t->peer_seq) t->peer_seq = peer_seq;
        if (t->running) t->again = true;
        else t->peer = *p;          /* a member back at another URL */
        return;
    }
    if (d->npending + d->nrunning >= QUEUE_MAX) {
        d->c.dropped++;
        return;
    }
    struct task *t = calloc(1, sizeof *t);
    if (!t || (db && !(t->db = strdup(db)))) {
        free(t);
        d->c.dropped++;
        return;
    }
    t->kind = kind;
    t->peer = *p;
    t->peer_seq = peer_seq;
    t->hnext = d->slots[h];
    d->slots[h] = t;
    if (d->tail) d->tail->next = t;
    else d->head = t;
    d->tail = t;
    d->npending++;
    pthread_cond_signal(&d->work);
}

static void pending_append(struct mesh_data *d, struct task *t) {
    t->next = NULL;
    if (d->tail) d->tail->next = t;
    else d->head = t;
    d->tail = t;
    d->npending++;
}

static void task_forget(struct mesh_data *d, struct task *t) {
    unsigned h = hash3(t->kind, t->db, t->peer.name);
    for (struct task **pp = &d->slots[h]; *pp; pp = &(*pp)->hnext)
        if (*pp == t) { *pp = t->hnext; break; }
    free(t->db);
    free(t);
}

/* How many changes this node is behind peer in db, by the peer's last summary; -1 unknown.
 * Called with mu held. */
static int64_t pull_lag(struct mesh_data *d, const char *db, const char *peer) {
    const struct stat_row *r = stat_find(d, db, peer);
    if (!r || r->s.peer_seq < 0) return -1;
    return r->s.peer_seq - (r->s.pulled_seq > 0 ? r->s.pulled_seq : 0);
}

/* Whether t may start now besides what runs: its peer below its share of the workers, and
 * a pull not while another pull of its database runs (from any peer: the same revisions
 * would arrive twice, each written). Called with mu held. */
static bool may_start(struct mesh_data *d, const struct task *t) {
    unsigned per_peer = d->nworkers > 1 ? d->nworkers / 2 : 1, busy = 0;
    for (unsigned i = 0; i < d->nworkers; i++) {
        const struct task *r = d->running[i];
        if (!r) continue;
        busy += strcmp(r->peer.name, t->peer.name) == 0;
        if (t->kind == T_PULL && r->kind == T_PULL && strcmp(r->db, t->db) == 0) return false;
    }
    return busy < per_peer;
}

/* The first pending task that may run now (due, may_start); of the pending pulls of one
 * database, the one from the peer furthest ahead. NULL and *wait_ms the time to the next due
 * one. Called with mu held. */
static struct task *take(struct mesh_data *d, uint64_t now, uint64_t *wait_ms) {
    *wait_ms = 1000;
    struct task *prev = NULL;
    for (struct task *t = d->head; t; prev = t, t = t->next) {
        if (t->not_before > now) {
            if (t->not_before - now < *wait_ms) *wait_ms = t->not_before - now;
            continue;
        }
        if (!may_start(d, t)) continue;
        if (t->kind == T_PULL) {
            int64_t best = pull_lag(d, t->db, t->peer.name);
            struct task *bprev = prev;
            unsigned seen = 0;
            for (struct task *p = t, *u = t->next; u && seen < PREFER_SCAN; p = u, u = u->next, seen++) {
                if (u->kind != T_PULL || strcmp(u->db, t->db) != 0 || u->not_before > now) continue;
                int64_t lag = pull_lag(d, u->db, u->peer.name);
                if (lag > best && may_start(d, u)) {
                    best = lag;
                    t = u;
                    bprev = p;
                }
            }
            prev = bprev;
        }
        if (prev) prev->next = t->next;
        else d->head = t->next;
        if (d->tail == t) d->tail = prev;
        t->next = NULL;
        d->npending--;
        return t;
    }
    return NULL;
}

/* ---- talking to peers -------------------------------------------------------------------- */

/* base (without trailing slashes) + "/" + db with everything but [a-z0-9_-] escaped. */
static int put_db_url(buf *b, const char *base, const char *db) {
    size_t bl = strlen(base);
    while (bl && base[bl - 1] == '/') bl--;
    int rc = buf_printf(b, "%.*s/", (int)bl, base);
    for (const unsigned char *p = (const unsigned char *)db; rc == 0 && *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-')
            rc = buf_putc(b, (char)*p);
        else
            rc = buf_printf(b, "%%%02X", *p);
    }
    return rc;
}

static size_t collect(char *p, size_t s, size_t nm, void *u) {
    buf *b = u;
    if (b->len + s * nm > SUMMARY_MAX) return 0;
    return buf_put(b, p, s * nm) == 0 ? s * nm : 0;
}

/* GET {peer}/_mesh/summary into out. 0, or -1 (unreachable, refused, not JSON). */
static int fetch_summary(struct mesh_data *d, const struct mesh_peer *p, const char *epoch,
                         uint64_t since, jval **out) {
    *out = NULL;
    CURL *c = curl_easy_init();
    if (!c) return -1;
    buf url, body;
    buf_init(&url, 0);
    buf_init(&body, 0);
    size_t bl = strlen(p->url);
    while (bl && p->url[bl - 1] == '/') bl--;
    int rc = -1;
    long status = 0;
    if (buf_printf(&url, "%.*s/_mesh/summary", (int)bl, p->url) != 0) goto out;
    if (epoch && buf_printf(&url, "?epoch=%s&since=%llu", epoch, (unsigned long long)since) != 0)
        goto out;
    curl_easy_setopt(c, CURLOPT_URL, url.data);
    curl_easy_setopt(c, CURLOPT_USERNAME, MESH_HTTP_USER);
    curl_easy_setopt(c, CURLOPT_PASSWORD, d->password);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)d->o.timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)(d->o.timeout_ms < 2000 ? d->o.timeout_ms : 2000));
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
    if (curl_easy_perform(c) != CURLE_OK) goto out;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200) goto out;
    if (json_tree_parse(body.data ? body.data : "", body.len, NULL, out, NULL) != 0) goto out;
    rc = 0;
out:
    curl_easy_cleanup(c);
    buf_destroy(&url);
    buf_destroy(&body);
    return rc;
}

static int64_t jnum(const jval *v) {
    if (!v || (v->type != JV_NUMBER && v->type != JV_STRING) || !v->str) return -1;
    char *end = NULL;
    unsigned long long x = strtoull(v->str, &end, 10);
    if (end == v->str) return -1;
    return (int64_t)x;
}

/* This node's update_seq of db; -1 when it has no such database. */
static int64_t local_seq(struct mesh_data *d, const char *db) {
    mimeo_db *h = NULL;
    if (mimeo_db_open(d->o.env, db, &h, NULL) != 0) return -1;
    mimeo_db_info info;
    int rc = mimeo_db_info_get(h, &info);
    mimeo_db_close(h);
    return rc == 0 ? (int64_t)info.update_seq : -1;
}

/* One push or pull of t->db with t->peer. 0, or a negative code. */
static int replicate(struct mesh_data *d, const struct task *t, uint64_t *read_n,
                     uint64_t *written, int64_t *src_seq) {
    *read_n = *written = 0;
    *src_seq = -1;
    buf b, url;
    buf_init(&b, 0);
    buf_init(&url, 0);
    int rc = put_db_url(&url, t->peer.url, t->db);
    const char *local_key = t->kind == T_PUSH ? "source" : "target";
    const char *remote_key = t->kind == T_PUSH ? "target" : "source";
    if (rc == 0) rc = buf_printf(&b, "{\"%s\":", local_key);
    if (rc == 0) rc = json_put_cstr(&b, t->db);
    if (rc == 0) rc = buf_printf(&b, ",\"%s\":{\"url\":", remote_key);
    if (rc == 0) rc = json_put_cstr(&b, url.data);
    if (rc == 0) rc = buf_puts(&b, ",\"auth\":{\"basic\":{\"username\":\"" MESH_HTTP_USER
                                   "\",\"password\":");
    if (rc == 0) rc = json_put_cstr(&b, d->password);
    if (rc == 0)
        rc = buf_printf(&b, "}}},\"worker_processes\":1,\"worker_batch_size\":%u,"
                            "\"connection_timeout\":%u,\"retries_per_request\":1}",
                        d->o.batch, d->o.timeout_ms);
    buf_destroy(&url);
    if (rc != 0) {
        buf_destroy(&b);
        return MIMEO_ENOMEM;
    }
    char *out = NULL;
    size_t outlen = 0;
    unsigned status = 0;
    mimeo_err err = { 0 };
    rc = mimeo_replicate(d->o.env, b.data, b.len, &out, &outlen, &status, &err);
    buf_destroy(&b);
    if (rc == 0 && out) {
        jval *v = NULL;
        if (json_tree_parse(out, outlen, NULL, &v, NULL) == 0) {
            *src_seq = jnum(jval_get(v, "source_last_seq"));
            const jval *h = jval_get(v, "history");
            if (h && h->type == JV_ARRAY && h->count) {
                int64_t r = jnum(jval_get(h->items[0], "docs_read"));
                int64_t w = jnum(jval_get(h->items[0], "docs_written"));
                *read_n = r > 0 ? (uint64_t)r : 0;
                *written = w > 0 ? (uint64_t)w : 0;
            }
            jval_free(v);
        }
    }
    mimeo_free(out);
    return rc;
}

/* ---- progress on disk --------------------------------------------------------------------- */
/* What this node knows of each (database, peer) outlives the process, in the database's own
 * _local/mimeo-mesh-peer:<peer> = {"version":V,"pushed_seq":N,"pulled_seq":M}: without it
 * the first round after a restart would run one replication each way per database and peer
 * only to learn that they are in step. V is the registry version the copy was made for; a
 * copy dropped and made again starts without local documents anyway, and a stale V is
 * ignored. Rows are saved by the scheduler at most SAVE_MS after they move, and at stop. */

#define PROGRESS_PREFIX "mimeo-mesh-peer:"

struct progress {
    int64_t pushed, pulled;
};

/* The saved progress of (db, peer) into *p (-1 each where nothing usable is saved). */
static void progress_read(struct mesh_data *d, const char *db, const char *peer,
                          struct progress *p) {
    p->pushed = p->pulled = -1;
    uint64_t version = mesh_node_db_version(d->o.node, db);
    char id[sizeof PROGRESS_PREFIX + MESH_NAME_MAX];
    int il = snprintf(id, sizeof id, PROGRESS_PREFIX "%s", peer);
    mimeo_db *h = NULL;
    if (il < 0 || (size_t)il >= sizeof id || mimeo_db_open(d->o.env, db, &h, NULL) != 0) return;
    char *json = NULL;
    size_t len = 0;
    jval *v = NULL;
    if (mimeo_local_get(h, id, (size_t)il, &json, &len, NULL) == 0 && json &&
        json_tree_parse(json, len, NULL, &v, NULL) == 0 &&
        jnum(jval_get(v, "version")) == (int64_t)version) {
        p->pushed = jnum(jval_get(v, "pushed_seq"));
        p->pulled = jnum(jval_get(v, "pulled_seq"));
    }
    jval_free(v);
    mimeo_free(json);
    mimeo_db_close(h);
}

static void progress_write(struct mesh_data *d, const char *db, const char *peer,
                           const struct progress *p) {
    char id[sizeof PROGRESS_PREFIX + MESH_NAME_MAX];
    int il = snprintf(id, sizeof id, PROGRESS_PREFIX "%s", peer);
    mimeo_db *h = NULL;
    if (il < 0 || (size_t)il >= sizeof id || mimeo_db_open(d->o.env, db, &h, NULL) != 0) return;
    /* The current _rev, since a local put checks it. */
    char rev[MIMEO_REV_MAX] = "";
    char *old = NULL;
    size_t ol = 0;
    jval *v = NULL;
    if (mimeo_local_get(h, id, (size_t)il, &old, &ol, NULL) == 0 && old &&
        json_tree_parse(old, ol, NULL, &v, NULL) == 0) {
        const jval *r = jval_get(v, "_rev");
        if (r && r->type == JV_STRING && r->len < sizeof rev) memcpy(rev, r->str, r->len);
    }
    jval_free(v);
    mimeo_free(old);
    /* Unknown is null, not 0: a 0 pulled_seq would claim the peer holds nothing. */
    char pushed[24] = "null", pulled[24] = "null", body[128];
    if (p->pushed >= 0) snprintf(pushed, sizeof pushed, "%lld", (long long)p->pushed);
    if (p->pulled >= 0) snprintf(pulled, sizeof pulled, "%lld", (long long)p->pulled);
    int bl = snprintf(body, sizeof body, "{\"version\":%llu,\"pushed_seq\":%s,\"pulled_seq\":%s}",
                      (unsigned long long)mesh_node_db_version(d->o.node, db), pushed, pulled);
    mimeo_put_result res;
    memset(&res, 0, sizeof res);
    mimeo_local_put(h, id, (size_t)il, body, (size_t)bl, rev[0] ? rev : NULL, &res, NULL);
    mimeo_free(res.id);
    mimeo_db_close(h);
}

struct save_row {
    char db[sizeof ((struct mesh_sync_stat *)0)->db];
    char peer[MESH_NAME_MAX + 1];
    struct progress p;
};

/* Writes every row that moved since the last save. Called with mu held; releases it while
 * it writes (the store must not be called under mu: the commit hook takes it). Only one
 * thread saves at a time (the scheduler, then mesh_data_free after it stopped). */
static void progress_save(struct mesh_data *d) {
    struct save_row *v = NULL;
    size_t n = 0, cap = 0;
    for (struct stat_row *r = d->stat_list; r; r = r->lnext) {
        if (!r->dirty) continue;
        if (ARRAY_GROW(v, cap, n + 1)) break;        /* the rest stays dirty: next time */
        r->dirty = false;
        memcpy(v[n].db, r->s.db, sizeof v[n].db);
        memcpy(v[n].peer, r->s.peer, sizeof v[n].peer);
        v[n].p = (struct progress){ r->s.pushed_seq, r->s.pulled_seq };
        n++;
    }
    if (!n) { free(v); return; }
    pthread_mutex_unlock(&d->mu);
    for (size_t i = 0; i < n; i++) progress_write(d, v[i].db, v[i].peer, &v[i].p);
    pthread_mutex_lock(&d->mu);
    free(v);
}

struct round_db {
    char *name;
    int64_t peer_seq;
};

static struct peer_cursor *cursor_of(struct mesh_data *d, const char *peer) {
    for (struct peer_cursor *c = d->cursors; c; c = c->next)
        if (strcmp(c->name, peer) == 0) return c;
    return NULL;
}

/* Whether a summary's "pulling" says its node is pulling db from self. The form of earlier
 * versions ("db":1, from any peer) is not taken as such: pushing to a node that pulls anyway
 * costs revisions written twice, skipping a push it needs leaves its copy behind. */
static bool pulls_from(const jval *pulling, const char *db, const char *self) {
    const jval *from = pulling && pulling->type == JV_OBJECT ? jval_get(pulling, db) : NULL;
    if (!from || from->type != JV_ARRAY) return false;
    for (size_t i = 0; i < from->count; i++)
        if (from->items[i]->type == JV_STRING && from->items[i]->len == strlen(self) &&
            memcmp(from->items[i]->str, self, from->items[i]->len) == 0)
            return true;
    return false;
}

/* An anti-entropy round with t->peer: the peer's summary (only what changed there since the
 * last complete round, once there was one), then a pull for every database the peer is
 * known to be ahead in and a push for every one this node moved on since it last pushed. */
static int run_round(struct mesh_data *d, const struct task *t, bool *incomplete) {
    *incomplete = false;
    char epoch[33] = "";
    uint64_t since = 0;
    pthread_mutex_lock(&d->mu);
    struct peer_cursor *pc = cursor_of(d, t->peer.name);
    if (pc) {
        memcpy(epoch, pc->epoch, sizeof epoch);
        since = pc->gen;
    }
    pthread_mutex_unlock(&d->mu);
    jval *v = NULL;
    if (fetch_summary(d, &t->peer, epoch[0] ? epoch : NULL, since, &v) != 0) return MIMEO_EIO;
    const jval *dbs = jval_get(v, "dbs");
    const jval *vers = jval_get(v, "versions");
    const jval *ep = jval_get(v, "epoch");
    int64_t gen = jnum(jval_get(v, "gen"));
    /* A peer catching up takes what it lacks by its own pulls: pushing the same databases
     * to it meanwhile writes their revisions twice. A node just started pulls from every
     * peer at once (sched_main), so it is left alone for its first period; later, only the
     * databases it says it is pulling from this node, by a pull that has not failed: a pull
     * from another peer may not bring what only this node has, and a failing one (a link
     * that carries summaries but not data) would hold back the very push that repairs it
     * for as long as the peer keeps queuing it. A push skipped is decided again next round. */
    const jval *pulling = jval_get(v, "pulling");
    int64_t uptime = jnum(jval_get(v, "uptime_ms"));
    bool fresh = uptime >= 0 && (uint64_t)uptime < d->o.anti_entropy_ms;
    size_t n = dbs && dbs->type == JV_OBJECT ? dbs->count : 0;
    struct round_db *rd = calloc(n ? n : 1, sizeof *rd);
    if (!rd) { jval_free(v); return MIMEO_ENOMEM; }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name = dbs->keys[i];
        if (!mesh_node_db_wanted(d->o.node, name, strlen(name))) {
            /* Skipping a database this node has not taken in yet would move the cursor past
             * it for good: an idle database is not listed in the next summaries, and a node
             * that heard of its peers before the registry reached it (a lost push-pull) or
             * before its copies were made would never pull it. */
            int64_t pv = jnum(jval_get(vers, name));
            if (mesh_node_db_coming(d->o.node, name, strlen(name), pv > 0 ? (uint64_t)pv : 0))
                *incomplete = true;
            continue;
        }
        if (local_seq(d, name) < 0) {   /* the registry has not created it here yet */
            *incomplete = true;
            continue;
        }
        /* Copies made for different incarnations of the database (deleted and created again)
         * exchange nothing until the older one is dropped and made again. */
        if (jnum(jval_get(vers, name)) != (int64_t)mesh_node_db_version(d->o.node, name)) {
            *incomplete = true;
            pthread_mutex_lock(&d->mu);
            struct stat_row *r = stat_get(d, name, t->peer.name);
            if (r) {
                r->mismatch = true;
                r->s.peer_seq = r->s.pulled_seq = -1;      /* nothing known of that copy */
            }
            pthread_mutex_unlock(&d->mu);
            continue;
        }
        rd[k].name = dbs->keys[i];
        rd[k].peer_seq = jnum(dbs->items[i]);
        k++;
    }
    /* What this node knows of the peer, summary applied; then every row of the peer. */
    struct mine_row {
        char *db;
        bool load;               /* not loaded from the disk yet */
        struct progress saved;
        int64_t ls;
    } *mine = NULL;
    size_t nmine = 0, cap = 0;
    pthread_mutex_lock(&d->mu);
    d->c.summaries++;
    for (size_t i = 0; i < k; i++) {
        struct stat_row *r = stat_get(d, rd[i].name, t->peer.name);
        if (!r || rd[i].peer_seq < 0) continue;
        r->mismatch = false;
        r->s.peer_seq = rd[i].peer_seq;
        if (rd[i].peer_seq == 0) r->s.pulled_seq = 0;
    }
    for (struct stat_row *r = d->stat_list; r; r = r->lnext) {
        if (strcmp(r->s.peer, t->peer.name) != 0) continue;
        if (ARRAY_GROW(mine, cap, nmine + 1) || !(mine[nmine].db = strdup(r->s.db))) {
            *incomplete = true;
            break;
        }
        mine[nmine].load = !r->loaded;
        nmine++;
    }
    pthread_mutex_unlock(&d->mu);
    for (size_t i = 0; i < nmine; i++) {
        struct mine_row *m = &mine[i];
        m->ls = mesh_node_db_wanted(d->o.node, m->db, strlen(m->db)) ? local_seq(d, m->db) : -1;
        m->saved = (struct progress){ -1, -1 };
        if (m->load && m->ls >= 0) progress_read(d, m->db, t->peer.name, &m->saved);
    }
    pthread_mutex_lock(&d->mu);
    for (size_t i = 0; i < nmine; i++) {
        struct mine_row *m = &mine[i];
        if (m->ls < 0) continue;
        struct stat_row *r = stat_get(d, m->db, t->peer.name);
        if (!r) continue;
        if (m->load && !r->loaded) {
            /* What this process learnt meanwhile is newer than what the last one saved. */
            r->loaded = true;
            if (r->s.pushed_seq < m->saved.pushed) r->s.pushed_seq = m->saved.pushed;
            if (r->s.pulled_seq < 0) r->s.pulled_seq = m->saved.pulled;
        }
        if (r->mismatch) continue;
        if (r->s.peer_seq > 0 && r->s.pulled_seq != r->s.peer_seq)
            enqueue(d, T_PULL, m->db, &t->peer, r->s.peer_seq);
        if (m->ls == 0) r->s.pushed_seq = 0;
        else if (r->s.pushed_seq != m->ls && !fresh && !pulls_from(pulling, m->db, d->self))
            enqueue(d, T_PUSH, m->db, &t->peer, -1);
    }
    /* Read through gen only when every database it listed could be taken in: one still
     * missing here is listed again next time. */
    if (!*incomplete && ep && ep->type == JV_STRING && ep->len < sizeof epoch && gen >= 0) {
        pc = cursor_of(d, t->peer.name);
        if (!pc && (pc = calloc(1, sizeof *pc))) {
            snprintf(pc->name, sizeof pc->name, "%s", t->peer.name);
            pc->next = d->cursors;
            d->cursors = pc;
        }
        if (pc) {
            snprintf(pc->epoch, sizeof pc->epoch, "%s", ep->str);
            pc->gen = (uint64_t)gen;
        }
    }
    pthread_mutex_unlock(&d->mu);
    for (size_t i = 0; i < nmine; i++) free(mine[i].db);
    free(mine);
    free(rd);
    jval_free(v);
    return 0;
}

/* ---- workers ----------------------------------------------------------------------------- */

static void gen_bump(struct mesh_data *d, const char *db, size_t len);

struct wslot {
    struct mesh_data *d;
    unsigned i;
};

static void run_task(struct mesh_data *d, struct task *t) {
    uint64_t nread = 0, nwritten = 0;
    int64_t src_seq = -1, before = -1;
    bool incomplete = false;
    int rc;
    if (t->kind == T_ROUND) {
        rc = run_round(d, t, &incomplete);
    } else {
        before = mesh_node_db_wanted(d->o.node, t->db, strlen(t->db)) ? local_seq(d, t->db) : -1;
        if (before < 0) {               /* deleted or not meshed: nothing to move */
            t->tries = 0;
            return;
        }
        rc = replicate(d, t, &nread, &nwritten, &src_seq);
    }
    pthread_mutex_lock(&d->mu);
    if (rc == 0) d->c.replications += t->kind != T_ROUND;
    else d->c.failures++;
    d->c.docs_read += nread;
    d->c.docs_written += nwritten;
    struct stat_row *r = t->db ? stat_get(d, t->db, t->peer.name) : NULL;
    if (r && rc == 0) {
        r->s.last_sync_ms = wall_ms();
        r->s.docs_written += nwritten;
        if (t->kind == T_PUSH) {
            /* Everything committed here before the push started is on the peer now. */
            int64_t s = src_seq > before ? src_seq : before;
            if (s > r->s.pushed_seq) {
                r->s.pushed_seq = s;
                r->dirty = true;
            }
        } else {
            int64_t s = t->peer_seq;
            if (src_seq > s) s = src_seq;
            if (s >= 0 && s != r->s.pulled_seq) {
                r->s.pulled_seq = s;
                r->dirty = true;
            }
            if (s > r->s.peer_seq) r->s.peer_seq = s;
            r->pull_failing = false;
        }
    } else if (r) {
        r->s.failures++;
        if (t->kind == T_PULL && !r->pull_failing) {
            /* The database goes into this node's next summaries: a peer that holds what
             * could not be pulled may know nothing of this copy (it did not change since
             * that peer's cursor, and its eager set may not hold this node) and so would
             * never push it here. */
            r->pull_failing = true;
            gen_bump(d, t->db, strlen(t->db));
        }
    }
    pthread_mutex_unlock(&d->mu);
    t->tries = rc == 0 && !incomplete ? 0 : t->tries + 1;
}

/* done, a pull of its database from its peer, has just succeeded: the pulls of that
 * database from other peers still pending wait one anti-entropy period, since they would
 * mostly find the same revisions. What only they could bring (writes that reached their
 * peer and not done's) comes that much later; a catching-up node first takes each database
 * from one peer, then looks at the others. Called with mu held. */
static void defer_pulls(struct mesh_data *d, const struct task *done, uint64_t now) {
    uint64_t until = now + d->o.anti_entropy_ms;
    for (struct task *t = d->head; t; t = t->next)
        if (t->kind == T_PULL && t->not_before < until && strcmp(t->db, done->db) == 0 &&
            strcmp(t->peer.name, done->peer.name) != 0)
            t->not_before = until;
}

static void *worker_main(void *arg) {
    struct wslot *w = arg;
    struct mesh_data *d = w->d;
    pthread_mutex_lock(&d->mu);
    while (!d->stop) {
        uint64_t wait = 0;
        struct task *t = take(d, mono_ms(), &wait);
        if (!t) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += (time_t)(wait / 1000);
            ts.tv_nsec += (long)(wait % 1000) * 1000000L;
            if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
            pthread_cond_timedwait(&d->work, &d->mu, &ts);
            continue;
        }
        t->running = true;
        t->again = false;
        d->running[w->i] = t;
        d->nrunning++;
        pthread_mutex_unlock(&d->mu);

        run_task(d, t);

        pthread_mutex_lock(&d->mu);
        d->running[w->i] = NULL;
        d->nrunning--;
        t->running = false;
        if (t->kind == T_PULL && t->tries == 0) defer_pulls(d, t, mono_ms());
        bool retry = t->tries > 0 && t->tries <= RETRY_MAX;
        if ((t->again || retry) && !d->stop) {
            /* A failure backs off; a trigger that came meanwhile runs at once. */
            t->not_before = t->again ? 0 : mono_ms() + ((uint64_t)RETRY_BASE_MS << (t->tries - 1));
            if (t->again) t->tries = 0;
            t->again = false;
            pending_append(d, t);
            pthread_cond_signal(&d->work);
        } else {
            task_forget(d, t);
        }
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

/* ---- scheduler --------------------------------------------------------------------------- */

/* db changed: it gets the next generation. Called with mu held. */
static void gen_bump(struct mesh_data *d, const char *db, size_t len) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)db[i]) * 16777619u;
    h %= HASH_SLOTS;
    d->gen++;
    for (struct gen_row *g = d->gens[h]; g; g = g->hnext)
        if (strlen(g->db) == len && memcmp(g->db, db, len) == 0) { g->gen = d->gen; return; }
    struct gen_row *g = malloc(sizeof *g);
    if (!g || !(g->db = strndup(db, len))) {
        /* Out of memory: a new epoch makes every peer read a full summary instead. */
        free(g);
        snprintf(d->epoch, sizeof d->epoch, "%016llx%016llx", (unsigned long long)rnd(d),
                 (unsigned long long)rnd(d));
        return;
    }
    g->gen = d->gen;
    g->hnext = d->gens[h];
    d->gens[h] = g;
}

static void on_commit(void *ctx, const char *db, size_t len, uint64_t seq) {
    (void)ctx;
    (void)seq;
    pthread_mutex_lock(&g_hook.mu);
    struct mesh_data *d = g_hook.d;
    if (d) {
        pthread_mutex_lock(&d->mu);
        gen_bump(d, db, len);
        bool known = false;
        for (struct dirty *x = d->dirty; x && !known; x = x->next)
            known = strlen(x->db) == len && memcmp(x->db, db, len) == 0;
        if (!known && d->ndirty < QUEUE_MAX) {
            struct dirty *x = malloc(sizeof *x);
            if (x && (x->db = strndup(db, len))) {
                x->next = d->dirty;
                d->dirty = x;
                d->ndirty++;
            } else {
                free(x);
            }
        }
        pthread_cond_signal(&d->cond);
        pthread_mutex_unlock(&d->mu);
    }
    pthread_mutex_unlock(&g_hook.mu);
}

static uint64_t peers_sig(const struct mesh_peer *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        for (const char *s = p[i].name; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
        for (const char *s = p[i].url; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
        h = (h ^ 0xff) * 1099511628211ull;
    }
    return h ^ n;
}

static bool peer_in(const struct mesh_peer *set, size_t n, const struct mesh_peer *p) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(set[i].name, p->name) == 0 && strcmp(set[i].url, p->url) == 0) return true;
    return false;
}

static void *sched_main(void *arg) {
    struct mesh_data *d = arg;
    struct mesh_peer *known = NULL;     /* the peers of the previous look */
    size_t nknown = 0;
    struct mesh_peer *ever = NULL;      /* every peer (name and URL) seen so far */
    size_t never = 0, capever = 0;
    uint64_t next_round = mono_ms() + d->o.anti_entropy_ms;
    uint64_t next_save = mono_ms() + SAVE_MS;
    unsigned deferred = 0;
    pthread_mutex_lock(&d->mu);
    while (!d->stop) {
        if (!d->dirty) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += TICK_MS * 1000000L;
            if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
            pthread_cond_timedwait(&d->cond, &d->mu, &ts);
        }
        if (d->stop) break;
        struct dirty *dl = d->dirty;
        d->dirty = NULL;
        d->ndirty = 0;
        pthread_mutex_unlock(&d->mu);

        size_t np = 0;
        struct mesh_peer *peers = mesh_node_peers(d->o.node, &np);
        /* Only the databases still wanted (the node's lock, so outside ours). */
        for (struct dirty **pp = &dl; *pp;) {
            struct dirty *x = *pp;
            if (d->o.eager && mesh_node_db_wanted(d->o.node, x->db, strlen(x->db))) {
                pp = &x->next;
            } else {
                *pp = x->next;
                free(x->db);
                free(x);
            }
        }
        uint64_t now = mono_ms();

        pthread_mutex_lock(&d->mu);
        uint64_t sig = peers_sig(peers, np);
        if (sig != d->members_sig) {
            d->members_sig = sig;
            /* A fresh eager set: this node's successor on the ring of member names, then
             * random live peers (a partial Fisher-Yates). Random choices alone leave some
             * node out of every other node's set now and then — with fanout 3 each node is
             * missed by all N−1 others with probability ≈ e⁻³, so 1.6 nodes of 32 on
             * average — and such a node gets writes only by anti-entropy. The ring gives
             * every node at least one pusher; the random ones keep the hops O(log N). */
            size_t want = d->o.fanout < np ? d->o.fanout : np, first = 0;
            if (want) {
                size_t succ = SIZE_MAX, lowest = 0;
                for (size_t i = 0; i < np; i++) {
                    if (strcmp(peers[i].name, peers[lowest].name) < 0) lowest = i;
                    if (strcmp(peers[i].name, d->self) > 0 &&
                        (succ == SIZE_MAX || strcmp(peers[i].name, peers[succ].name) < 0))
                        succ = i;
                }
                if (succ == SIZE_MAX) succ = lowest;      /* the ring wraps around */
                struct mesh_peer tmp = peers[0];
                peers[0] = peers[succ];
                peers[succ] = tmp;
                first = 1;
            }
            for (size_t i = first; i < want; i++) {
                size_t j = i + (size_t)(rnd(d) % (np - i));
                struct mesh_peer tmp = peers[i];
                peers[i] = peers[j];
                peers[j] = tmp;
            }
            free(d->eager);
            d->eager = want ? malloc(want * sizeof *d->eager) : NULL;
            d->neager = d->eager ? want : 0;
            if (d->eager) memcpy(d->eager, peers, want * sizeof *d->eager);
            /* A peer this process never saw (at this URL) gets a round at once: that is how
             * a restarted, empty or returning node catches up without waiting. One that
             * was only suspected a moment does not (under load that would be every second). */
            for (size_t i = 0; i < np; i++) {
                if (peer_in(ever, never, &peers[i])) continue;
                enqueue(d, T_ROUND, NULL, &peers[i], -1);
                if (!ARRAY_GROW(ever, capever, never + 1)) ever[never++] = peers[i];
            }
            free(known);
            known = peers;
            nknown = np;
            peers = NULL;
        }
        free(peers);
        for (struct dirty *x = dl; x;) {
            for (size_t i = 0; i < d->neager; i++) enqueue(d, T_PUSH, x->db, &d->eager[i], -1);
            struct dirty *nx = x->next;
            free(x->db);
            free(x);
            x = nx;
        }
        if (now >= next_round) {
            if (d->npending > ROUND_BACKLOG && deferred < ROUND_DEFER) {
                deferred++;
                d->c.rounds_deferred++;
            } else if (nknown) {
                deferred = 0;
                enqueue(d, T_ROUND, NULL, &known[rnd(d) % nknown], -1);
            }
            /* ±10% jitter keeps the nodes' rounds from lining up. */
            uint64_t span = d->o.anti_entropy_ms / 5 + 1;
            next_round = now + d->o.anti_entropy_ms - span / 2 + rnd(d) % span;
        }
        if (now >= next_save) {
            next_save = now + SAVE_MS;
            progress_save(d);
        }
    }
    pthread_mutex_unlock(&d->mu);
    free(known);
    free(ever);
    return NULL;
}

/* ---- what others read -------------------------------------------------------------------- */

struct sum_ctx {
    struct mesh_data *d;
    buf *b;
    buf *vers;          /* the "versions" object, built alongside "dbs" */
    bool first;
    int rc;
};

static int sum_put(struct sum_ctx *s, const char *name) {
    int64_t seq = local_seq(s->d, name);
    if (seq < 0) return 0;
    if (!s->first) {
        s->rc |= buf_putc(s->b, ',');
        s->rc |= buf_putc(s->vers, ',');
    }
    s->first = false;
    s->rc |= json_put_cstr(s->b, name);
    s->rc |= buf_printf(s->b, ":%lld", (long long)seq);
    s->rc |= json_put_cstr(s->vers, name);
    s->rc |= buf_printf(s->vers, ":%llu",
                        (unsigned long long)mesh_node_db_version(s->d->o.node, name));
    return s->rc;
}

static int sum_db(void *ctx, const char *name, size_t len) {
    struct sum_ctx *s = ctx;
    if (!mesh_node_db_wanted(s->d->o.node, name, len)) return 0;
    char *z = strndup(name, len);
    if (!z) { s->rc = MIMEO_ENOMEM; return 1; }
    sum_put(s, z);
    free(z);
    return s->rc ? 1 : 0;
}

struct pull_pair {
    const char *db, *peer;
};

static int cmp_pair(const void *a, const void *b) {
    const struct pull_pair *x = a, *y = b;
    int c = strcmp(x->db, y->db);
    return c ? c : strcmp(x->peer, y->peer);
}

static bool pull_healthy(struct mesh_data *d, const struct task *t) {
    if (!t || t->kind != T_PULL || t->tries) return false;
    const struct stat_row *r = stat_find(d, t->db, t->peer.name);
    return r && !r->pull_failing;
}

/* The "pulling" members of a summary: "db":["peer",…] for every database with a pull queued
 * or running here, with the peers it is pulled from, each once. A pull that failed last time
 * is left out (run_round: its peer pushes instead). Called with mu held. */
static int pulling_json(struct mesh_data *d, buf *out) {
    struct pull_pair *v = NULL;
    size_t n = 0, cap = 0;
    for (struct task *t = d->head; t; t = t->next)
        if (pull_healthy(d, t) && !ARRAY_GROW(v, cap, n + 1))
            v[n++] = (struct pull_pair){ t->db, t->peer.name };
    for (unsigned i = 0; i < d->nworkers; i++)
        if (pull_healthy(d, d->running[i]) && !ARRAY_GROW(v, cap, n + 1))
            v[n++] = (struct pull_pair){ d->running[i]->db, d->running[i]->peer.name };
    if (n > 1) qsort(v, n, sizeof *v, cmp_pair);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        bool same_db = i && strcmp(v[i].db, v[i - 1].db) == 0;
        if (same_db && strcmp(v[i].peer, v[i - 1].peer) == 0) continue;
        if (same_db) {
            rc = buf_putc(out, ',');
        } else {
            if (i) rc = buf_puts(out, "],");
            if (rc == 0) rc = json_put_cstr(out, v[i].db);
            if (rc == 0) rc = buf_puts(out, ":[");
        }
        if (rc == 0) rc = json_put_cstr(out, v[i].peer);
    }
    if (rc == 0 && n) rc = buf_putc(out, ']');
    free(v);
    return rc;
}

char *mesh_data_summary_json(struct mesh_data *d, const char *epoch, uint64_t since) {
    buf b, vers;
    buf_init(&b, 0);
    buf_init(&vers, 0);
    struct sum_ctx s = { d, &b, &vers, true, 0 };
    /* Incremental only within this process's epoch and up to its generation; anything else
     * (a restart, a cursor from the future) gets everything. */
    char **names = NULL;
    size_t n = 0, cap = 0;
    buf pulling;
    buf_init(&pulling, 0);
    pthread_mutex_lock(&d->mu);
    char my_epoch[33];
    memcpy(my_epoch, d->epoch, sizeof my_epoch);
    uint64_t gen = d->gen;
    uint64_t uptime = mono_ms() - d->started_ms;
    int prc = pulling_json(d, &pulling);
    bool full = !epoch || strcmp(epoch, d->epoch) != 0 || since > d->gen;
    for (unsigned h = 0; !full && h < HASH_SLOTS; h++)
        for (struct gen_row *g = d->gens[h]; g && !full; g = g->hnext) {
            if (g->gen <= since) continue;
            if (ARRAY_GROW(names, cap, n + 1) || !(names[n] = strdup(g->db))) full = true;
            else n++;
        }
    pthread_mutex_unlock(&d->mu);
    s.rc = buf_printf(&b, "{\"epoch\":\"%s\",\"gen\":%llu,\"full\":%s,\"dbs\":{", my_epoch,
                      (unsigned long long)gen, full ? "true" : "false");
    if (full) {
        if (s.rc == 0 && mimeo_db_list(d->o.env, NULL, sum_db, &s) != 0 && s.rc == 0)
            s.rc = MIMEO_EIO;
    } else {
        for (size_t i = 0; i < n && s.rc == 0; i++)
            if (mesh_node_db_wanted(d->o.node, names[i], strlen(names[i]))) sum_put(&s, names[i]);
    }
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    if (s.rc == 0) s.rc = buf_puts(&b, "},\"versions\":{");
    if (s.rc == 0 && vers.len) s.rc = buf_put(&b, vers.data, vers.len);
    if (s.rc == 0) s.rc = prc;
    if (s.rc == 0)
        s.rc = buf_printf(&b, "},\"uptime_ms\":%llu,\"pulling\":{%.*s}}\n",
                          (unsigned long long)uptime, (int)pulling.len,
                          pulling.data ? pulling.data : "");
    buf_destroy(&vers);
    buf_destroy(&pulling);
    if (s.rc != 0) {
        buf_destroy(&b);
        return NULL;
    }
    return buf_detach(&b, NULL);
}

size_t mesh_data_sync_stats(struct mesh_data *d, struct mesh_sync_stat **out) {
    *out = NULL;
    pthread_mutex_lock(&d->mu);
    size_t n = d->nstats, k = 0;
    struct mesh_sync_stat *v = n ? malloc(n * sizeof *v) : NULL;
    if (v)
        for (struct stat_row *r = d->stat_list; r && k < n; r = r->lnext) v[k++] = r->s;
    pthread_mutex_unlock(&d->mu);
    if (!v) return 0;
    /* The local seqs now, outside the lock; rows of one database are usually adjacent. */
    int64_t ls = -1;
    for (size_t i = 0; i < k; i++) {
        if (i == 0 || strcmp(v[i].db, v[i - 1].db) != 0) ls = local_seq(d, v[i].db);
        v[i].local_seq = ls > 0 ? (uint64_t)ls : 0;
        v[i].behind = v[i].pushed_seq < 0 ? -1
                    : ls > v[i].pushed_seq ? ls - v[i].pushed_seq : 0;
        v[i].pull_behind = v[i].pulled_seq < 0 || v[i].peer_seq < 0 ? -1
                         : v[i].peer_seq > v[i].pulled_seq ? v[i].peer_seq - v[i].pulled_seq : 0;
    }
    *out = v;
    return k;
}

void mesh_data_counters(struct mesh_data *d, struct mesh_data_counters *out) {
    pthread_mutex_lock(&d->mu);
    *out = d->c;
    out->queued = d->npending;
    out->running = d->nrunning;
    pthread_mutex_unlock(&d->mu);
}

/* ---- lifecycle --------------------------------------------------------------------------- */

/* What mesh_data_start set up before its threads: the last of a start that failed or a stop. */
static void release(struct mesh_data *d) {
    free(d->workers);
    free(d->running);
    free(d->password);
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->cond);
    pthread_cond_destroy(&d->work);
    free(d);
}

int mesh_data_start(const struct mesh_data_opts *o, struct mesh_data **out, char *err,
                    size_t errlen) {
    *out = NULL;
    struct mesh_data *d = calloc(1, sizeof *d);
    if (!d) { snprintf(err, errlen, "out of memory"); return -1; }
    d->o = *o;
    if (!d->o.fanout) d->o.fanout = 3;
    if (!d->o.anti_entropy_ms) d->o.anti_entropy_ms = 10000;
    if (!d->o.workers) d->o.workers = 4;
    if (d->o.workers > 64) d->o.workers = 64;
    if (!d->o.batch) d->o.batch = 500;
    if (!d->o.timeout_ms) d->o.timeout_ms = 10000;
    d->password = strdup(o->password ? o->password : "");
    snprintf(d->self, sizeof d->self, "%s", o->self ? o->self : "");
    d->o.self = NULL;
    d->nworkers = d->o.workers;
    d->started_ms = mono_ms();
    d->workers = calloc(d->nworkers, sizeof *d->workers);
    d->running = calloc(d->nworkers, sizeof *d->running);
    struct wslot *slots = calloc(d->nworkers, sizeof *slots);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    d->rng = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)d;
    if (!d->rng) d->rng = 88172645463325252ull;
    snprintf(d->epoch, sizeof d->epoch, "%016llx%016llx", (unsigned long long)rnd(d),
             (unsigned long long)rnd(d));
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cond, NULL);
    pthread_cond_init(&d->work, NULL);
    if (!d->password || !d->workers || !d->running || !slots) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    d->o.password = NULL;
    unsigned started = 0;
    for (; started < d->nworkers; started++) {
        slots[started] = (struct wslot){ d, started };
        if (pthread_create(&d->workers[started], NULL, worker_main, &slots[started]) != 0) break;
    }
    if (started < d->nworkers || pthread_create(&d->sched, NULL, sched_main, d) != 0) {
        pthread_mutex_lock(&d->mu);
        d->stop = true;
        pthread_cond_broadcast(&d->work);
        pthread_mutex_unlock(&d->mu);
        for (unsigned i = 0; i < started; i++) pthread_join(d->workers[i], NULL);
        snprintf(err, errlen, "mesh: cannot start the replication threads");
        goto fail;
    }
    d->slots_mem = slots;
    pthread_mutex_lock(&g_hook.mu);
    g_hook.d = d;
    pthread_mutex_unlock(&g_hook.mu);
    mimeo_env_on_commit(d->o.env, on_commit, NULL);
    *out = d;
    return 0;
fail:
    free(slots);
    release(d);
    return -1;
}

void mesh_data_free(struct mesh_data *d) {
    if (!d) return;
    mimeo_env_on_commit(d->o.env, NULL, NULL);
    pthread_mutex_lock(&g_hook.mu);
    if (g_hook.d == d) g_hook.d = NULL;
    pthread_mutex_unlock(&g_hook.mu);
    pthread_mutex_lock(&d->mu);
    d->stop = true;
    pthread_cond_broadcast(&d->cond);
    pthread_cond_broadcast(&d->work);
    pthread_mutex_unlock(&d->mu);
    pthread_join(d->sched, NULL);
    for (unsigned i = 0; i < d->nworkers; i++) pthread_join(d->workers[i], NULL);
    pthread_mutex_lock(&d->mu);
    progress_save(d);               /* a clean stop keeps everything learnt */
    pthread_mutex_unlock(&d->mu);
    for (unsigned h = 0; h < HASH_SLOTS; h++) {
        while (d->slots[h]) {
            struct task *t = d->slots[h];
            d->slots[h] = t->hnext;
            free(t->db);
            free(t);
        }
    }
    for (struct stat_row *r = d->stat_list; r;) {
        struct stat_row *nx = r->lnext;
        free(r);
        r = nx;
    }
    for (struct dirty *x = d->dirty; x;) {
        struct dirty *nx = x->next;
        free(x->db);
        free(x);
        x = nx;
    }
    for (unsigned h = 0; h < HASH_SLOTS; h++) {
        while (d->gens[h]) {
            struct gen_row *g = d->gens[h];
            d->gens[h] = g->hnext;
            free(g->db);
            free(g);
        }
    }
    while (d->cursors) {
        struct peer_cursor *c = d->cursors;
        d->cursors = c->next;
        free(c);
    }
    free(d->eager);
    free(d->slots_mem);
    release(d);
}
