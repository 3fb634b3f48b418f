/* mesh transport: the thin adapter between the pure state machine (mesh.c) and the world.
 * A loop thread owns the UDP socket and the clock and is the only caller of mesh_tick; a
 * sender thread POSTs stream messages (push-pull) to peers' /_mesh so a slow peer never
 * delays a probe; the HTTP server delivers POSTed messages under the same mutex. Every second
 * the loop also reconciles the local databases with the gossiped registry. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <nettle/hmac.h>

#include "mimeo.h"
#include "mesh_data.h"
#include "mesh_node.h"
#include "../common/buf.h"

#define SCAN_MS 1000
#define STREAM_QUEUE_MAX 64
#define ADDR_CACHE 64

struct stream_job {
    char url[MESH_URL_MAX + 16];
    uint8_t *data;
    size_t len;
};

struct addr_ent {
    char url[MESH_URL_MAX + 1];
    struct sockaddr_storage sa;
    socklen_t salen;
    int ok;
};

struct stamp {
    char *db;
    uint64_t version;
    struct stamp *next;
};

#define STAMP_SLOTS 1024

struct mesh_node {
    struct mesh *m;
    pthread_mutex_t mu;
    int fd;
    int wake[2];
    pthread_t loop, sender;
    bool stop;
    mimeo_env *env;
    char *databases;
    char self_name[MESH_NAME_MAX + 1];
    char http_pw[2 * SHA256_DIGEST_SIZE + 1];   /* the _mesh principal's password */
    struct mesh_data *data;

    /* sender queue, guarded by mu */
    pthread_cond_t qcond;
    struct stream_job queue[STREAM_QUEUE_MAX];
    size_t qhead, qlen;

    struct addr_ent addrs[ADDR_CACHE];
    size_t naddr_next;

    /* local database names seen at the previous scan (sorted as mimeo_db_list gives them) */
    char **seen;
    size_t nseen;
    /* The registry version each local copy belongs to (its _local/mimeo-mesh stamp), as
     * read or written by db_scan; a copy without a known stamp moves no data. */
    struct stamp *stamps[STAMP_SLOTS];
    bool scanned, rescan;       /* rescan: the registry changed, reconcile now */
    uint64_t next_scan;
};

/* Read by HTTP threads (the server runs before the node starts): atomic. */
static _Atomic(struct mesh_node *) g_node;

struct mesh_node *mesh_node_current(void) {
    return atomic_load(&g_node);
}

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void wake_loop(struct mesh_node *n) {
    char c = 1;
    ssize_t r = write(n->wake[1], &c, 1);
    (void)r;
}

/* "http://host:port/…" → host and port (IPv6 hosts in brackets). 0 or -1. */
static int url_hostport(const char *url, char *host, size_t hcap, char *port, size_t pcap) {
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    const char *hs = p, *he;
    if (*p == '[') {
        hs = p + 1;
        he = strchr(hs, ']');
        if (!he) return -1;
        p = he + 1;
    } else {
        he = p + strcspn(p, ":/");
        p = he;
    }
    if ((size_t)(he - hs) >= hcap || he == hs) return -1;
    memcpy(host, hs, (size_t)(he - hs));
    host[he - hs] = '\0';
    if (*p != ':') return -1;
    p++;
    size_t pl = strspn(p, "0123456789");
    if (pl == 0 || pl >= pcap) return -1;
    memcpy(port, p, pl);
    port[pl] = '\0';
    return 0;
}

static const struct addr_ent *resolve(struct mesh_node *n, const char *url) {
    for (size_t i = 0; i < ADDR_CACHE; i++)
        if (n->addrs[i].url[0] && strcmp(n->addrs[i].url, url) == 0) return &n->addrs[i];
    struct addr_ent *e = &n->addrs[n->naddr_next++ % ADDR_CACHE];
    memset(e, 0, sizeof *e);
    snprintf(e->url, sizeof e->url, "%s", url);
    char host[256], port[16];
    if (url_hostport(url, host, sizeof host, port, sizeof port) == 0) {
        struct addrinfo hints = { .ai_socktype = SOCK_DGRAM }, *res = NULL;
        if (getaddrinfo(host, port, &hints, &res) == 0 && res) {
            memcpy(&e->sa, res->ai_addr, res->ai_addrlen);
            e->salen = res->ai_addrlen;
            e->ok = 1;
        }
        if (res) freeaddrinfo(res);
    }
    return e;
}

/* ---- databases ---------------------------------------------------------------------------- */

static bool db_meshed(const struct mesh_node *n, const char *name, size_t len) {
    if (len == 0 || name[0] == '_') return false;     /* _users, _replicator stay local */
    const char *p = n->databases;
    if (strcmp(p, "*") == 0) return true;
    while (*p) {
        size_t l = strcspn(p, ",");
        const char *s = p;
        size_t sl = l;
        while (sl && (*s == ' ' || *s == '\t')) { s++; sl--; }
        while (sl && (s[sl - 1] == ' ' || s[sl - 1] == '\t')) sl--;
        if (sl == len && memcmp(s, name, len) == 0) return true;
        p += l;
        if (*p == ',') p++;
    }
    return false;
}

struct name_list {
    char **v;
    size_t n, cap;
    const struct mesh_node *node;
};

static int collect_db(void *ctx, const char *name, size_t len) {
    struct name_list *l = ctx;
    if (!db_meshed(l->node, name, len)) return 0;
    if (ARRAY_GROW(l->v, l->cap, l->n + 1)) return 1;
    if (!(l->v[l->n] = strndup(name, len))) return 1;
    l->n++;
    return 0;
}

/* The lists of names are kept in byte order (mimeo_db_list's), so lookups are binary
 * searches: a scan of thousands of databases every second stays cheap. */
static size_t list_pos(char **v, size_t n, const char *s, bool *found) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(v[mid], s);
        if (c == 0) { *found = true; return mid; }
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    *found = false;
    return lo;
}

static bool list_has(char **v, size_t n, const char *s) {
    bool found;
    list_pos(v, n, s, &found);
    return found;
}

static void list_remove(struct name_list *l, const char *s) {
    bool found;
    size_t i = list_pos(l->v, l->n, s, &found);
    if (!found) return;
    free(l->v[i]);
    memmove(&l->v[i], &l->v[i + 1], (l->n - i - 1) * sizeof *l->v);
    l->n--;
}

static void list_insert(struct name_list *l, const char *s) {
    bool found;
    size_t i = list_pos(l->v, l->n, s, &found);
    if (found || ARRAY_GROW(l->v, l->cap, l->n + 1)) return;
    char *z = strdup(s);
    if (!z) return;
    memmove(&l->v[i + 1], &l->v[i], (l->n - i) * sizeof *l->v);
    l->v[i] = z;
    l->n++;
}

/* ---- version stamps ---------------------------------------------------------------------- */
/* A local copy records, in _local/mimeo-mesh, the registry version of the database it was
 * made for. A copy stamped older than the registry's live version belongs to a database that
 * was deleted and created again while this node was away: its documents must not flow into
 * the new one, so the copy is dropped and started again empty. */

#define STAMP_ID "mimeo-mesh"

static unsigned stamp_slot(const char *db) {
    uint32_t h = 2166136261u;
    for (; *db; db++) h = (h ^ (unsigned char)*db) * 16777619u;
    return h % STAMP_SLOTS;
}

static struct stamp *stamp_find(struct mesh_node *n, const char *db) {
    for (struct stamp *st = n->stamps[stamp_slot(db)]; st; st = st->next)
        if (strcmp(st->db, db) == 0) return st;
    return NULL;
}

static void stamp_set(struct mesh_node *n, const char *db, uint64_t version) {
    struct stamp *st = stamp_find(n, db);
    if (!st) {
        st = calloc(1, sizeof *st);
        if (!st || !(st->db = strdup(db))) { free(st); return; }
        unsigned h = stamp_slot(db);
        st->next = n->stamps[h];
        n->stamps[h] = st;
    }
    st->version = version;
}

static void stamp_forget(struct mesh_node *n, const char *db) {
    for (struct stamp **pp = &n->stamps[stamp_slot(db)]; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->db, db) != 0) continue;
        struct stamp *st = *pp;
        *pp = st->next;
        free(st->db);
        free(st);
        return;
    }
}

/* The stamp on disk: its version, 0 when there is none (a copy made before stamps, or by a
 * user between two scans), or -1 when it cannot be read. */
static int64_t stamp_read(struct mesh_node *n, const char *db) {
    mimeo_db *h = NULL;
    if (mimeo_db_open(n->env, db, &h, NULL) != 0) return -1;
    char *json = NULL;
    size_t len = 0;
    int rc = mimeo_local_get(h, STAMP_ID, sizeof STAMP_ID - 1, &json, &len, NULL);
    mimeo_db_close(h);
    if (rc == MIMEO_ENOTFOUND) return 0;
    if (rc != 0) return -1;
    const char *v = json ? strstr(json, "\"version\":") : NULL;
    int64_t out = v ? (int64_t)strtoull(v + 10, NULL, 10) : 0;
    mimeo_free(json);
    return out;
}

static int stamp_write(struct mesh_node *n, const char *db, uint64_t version) {
    mimeo_db *h = NULL;
    if (mimeo_db_open(n->env, db, &h, NULL) != 0) return -1;
    char body[64];
    int bl = snprintf(body, sizeof body, "{\"version\":%llu}", (unsigned long long)version);
    char *old = NULL;
    size_t ol = 0;
    char rev[MIMEO_REV_MAX] = "";
    if (mimeo_local_get(h, STAMP_ID, sizeof STAMP_ID - 1, &old, &ol, NULL) == 0 && old) {
        const char *r = strstr(old, "\"_rev\":\"");
        if (r) {
            r += 8;
            size_t k = strcspn(r, "\"");
            if (k < sizeof rev) { memcpy(rev, r, k); rev[k] = '\0'; }
        }
    }
    mimeo_free(old);
    mimeo_put_result res;
    memset(&res, 0, sizeof res);
    int rc = mimeo_local_put(h, STAMP_ID, sizeof STAMP_ID - 1, body, (size_t)bl,
                             rev[0] ? rev : NULL, &res, NULL);
    mimeo_free(res.id);
    mimeo_db_close(h);
    if (rc == 0) stamp_set(n, db, version);
    return rc;
}

/* First tell the mesh what users did here since the last scan, then make the local set
 * follow the registry. In that order a local delete is announced before the registry could
 * make us recreate it. Called with mu held. */
static void db_scan(struct mesh_node *n, uint64_t now) {
    struct name_list cur = { .node = n };
    if (mimeo_db_list(n->env, NULL, collect_db, &cur) != 0) goto out;
    for (size_t i = 0; i < cur.n; i++) {
        if (!n->scanned) {
            int64_t v = stamp_read(n, cur.v[i]);
            if (v > 0) stamp_set(n, cur.v[i], (uint64_t)v);
            mesh_db_observe_at(n->m, cur.v[i], v > 0 ? (uint64_t)v : 0, now);
        }
        else if (!list_has(n->seen, n->nseen, cur.v[i])) mesh_db_create(n->m, cur.v[i], now);
    }
    if (n->scanned)
        for (size_t i = 0; i < n->nseen; i++)
            if (!list_has(cur.v, cur.n, n->seen[i])) mesh_db_delete(n->m, n->seen[i], now);
    for (size_t i = 0; i < mesh_db_count(n->m); i++) {
        struct mesh_db_info d;
        mesh_db_get(n->m, i, &d);
        if (!db_meshed(n, d.name, strlen(d.name))) continue;
        bool here = list_has(cur.v, cur.n, d.name);
        mimeo_err e = { 0 };
        if (d.deleted && here) {
            if (mimeo_db_delete(n->env, d.name, &e) == 0) {
                fprintf(stderr, "mesh: deleted database %s (deleted in the mesh)\n", d.name);
                list_remove(&cur, d.name);
            }
        } else if (!d.deleted && !here) {
            int rc = mimeo_db_create(n->env, d.name, &e);
            if (rc == 0 || rc == MIMEO_EEXIST) {
                if (rc == 0) fprintf(stderr, "mesh: created database %s (created in the mesh)\n", d.name);
                list_insert(&cur, d.name);
                if (rc == 0) stamp_write(n, d.name, d.version);
            }
        } else if (!d.deleted && here) {
            const struct stamp *st = stamp_find(n, d.name);
            int64_t v = st ? (int64_t)st->version : stamp_read(n, d.name);
            if (v == 0) {
                stamp_write(n, d.name, d.version);      /* made here, or before stamps */
            } else if (v > 0 && (uint64_t)v < d.version) {
                /* Deleted and created again while this copy was away. */
                stamp_forget(n, d.name);
                if (mimeo_db_delete(n->env, d.name, &e) == 0 &&
                    mimeo_db_create(n->env, d.name, &e) == 0) {
                    fprintf(stderr, "mesh: database %s was deleted and created again in the mesh "
                                    "(version %llu → %llu); the old copy is dropped\n", d.name,
                            (unsigned long long)v, (unsigned long long)d.version);
                    stamp_write(n, d.name, d.version);
                }
            } else if (v > 0 && !st) {
                stamp_set(n, d.name, (uint64_t)v);
            }
        }
        if (d.deleted) stamp_forget(n, d.name);
    }
    for (size_t i = 0; i < n->nseen; i++) free(n->seen[i]);
    free(n->seen);
    n->seen = cur.v;
    n->nseen = cur.n;
    n->scanned = true;
    return;
out:
    for (size_t i = 0; i < cur.n; i++) free(cur.v[i]);
    free(cur.v);
}

/* ---- what the data mover borrows (mesh_data.h) -------------------------------------------- */

struct mesh_peer *mesh_node_peers(struct mesh_node *n, size_t *count) {
    *count = 0;
    pthread_mutex_lock(&n->mu);
    size_t total = mesh_member_count(n->m), k = 0;
    struct mesh_peer *v = total ? calloc(total, sizeof *v) : NULL;
    for (size_t i = 0; v && i < total; i++) {
        struct mesh_member_info mi;
        mesh_member_get(n->m, i, &mi);
        if (mi.is_self || mi.state != MESH_ALIVE) continue;
        snprintf(v[k].name, sizeof v[k].name, "%s", mi.name);
        snprintf(v[k].url, sizeof v[k].url, "%s", mi.url);
        k++;
    }
    pthread_mutex_unlock(&n->mu);
    if (k == 0) { free(v); return NULL; }
    *count = k;
    return v;
}

uint64_t mesh_node_db_version(struct mesh_node *n, const char *db) {
    pthread_mutex_lock(&n->mu);
    const struct stamp *st = stamp_find(n, db);
    uint64_t v = st ? st->version : 0;
    pthread_mutex_unlock(&n->mu);
    return v;
}

enum db_state { DB_NO, DB_COMING, DB_WANTED };

/* Where db stands here, against a peer's copy made for registry version `version`. */
static enum db_state db_state(struct mesh_node *n, const char *db, size_t len, uint64_t version) {
    char name[256];
    if (len >= sizeof name || !db_meshed(n, db, len)) return DB_NO;
    memcpy(name, db, len);
    name[len] = '\0';
    struct mesh_db_info d;
    enum db_state s;
    pthread_mutex_lock(&n->mu);
    const struct stamp *st = stamp_find(n, name);
    if (mesh_db_find(n->m, name, &d) != 0) s = DB_COMING;               /* the registry is behind */
    else if (d.deleted) s = d.version < version ? DB_COMING : DB_NO;    /* or made again since */
    /* Live in the registry, and this copy stamped for that very version; or on its way. */
    else s = st && st->version == d.version ? DB_WANTED : DB_COMING;
    pthread_mutex_unlock(&n->mu);
    return s;
}

bool mesh_node_db_wanted(struct mesh_node *n, const char *db, size_t len) {
    return db_state(n, db, len, 0) == DB_WANTED;
}

bool mesh_node_db_coming(struct mesh_node *n, const char *db, size_t len, uint64_t version) {
    return db_state(n, db, len, version) == DB_COMING;
}

bool mesh_node_http_auth(struct mesh_node *n, const char *password) {
    if (!n || !password) return false;
    size_t want = strlen(n->http_pw);
    if (strlen(password) != want) return false;
    unsigned char diff = 0;
    for (size_t i = 0; i < want; i++) diff |= (unsigned char)(password[i] ^ n->http_pw[i]);
    return diff == 0;
}

char *mesh_node_summary_json(struct mesh_node *n, const char *epoch, uint64_t since) {
    return n->data ? mesh_data_summary_json(n->data, epoch, since) : NULL;
}

size_t mesh_node_sync_stats(struct mesh_node *n, struct mesh_sync_stat **out) {
    *out = NULL;
    return n && n->data ? mesh_data_sync_stats(n->data, out) : 0;
}

void mesh_node_data_counters(struct mesh_node *n, struct mesh_data_counters *out) {
    memset(out, 0, sizeof *out);
    if (n && n->data) mesh_data_counters(n->data, out);
}

/* ---- the loop ----------------------------------------------------------------------------- */

/* Sends what the state machine queued and logs what changed. Called with mu held. */
static void flush(struct mesh_node *n) {
    struct mesh_msg msg;
    while (mesh_out_pop(n->m, &msg)) {
        if (msg.stream) {
            if (n->qlen == STREAM_QUEUE_MAX) { free(msg.data); continue; }
            struct stream_job *j = &n->queue[(n->qhead + n->qlen++) % STREAM_QUEUE_MAX];
            snprintf(j->url, sizeof j->url, "%s", msg.to);
            j->data = msg.data;
            j->len = msg.len;
            pthread_cond_signal(&n->qcond);
            continue;
        }
        const struct addr_ent *a = resolve(n, msg.to);
        if (a->ok) sendto(n->fd, msg.data, msg.len, 0, (const struct sockaddr *)&a->sa, a->salen);
        free(msg.data);
    }
    struct mesh_event e;
    while (mesh_event_pop(n->m, &e)) {
        if (e.type == MESH_EV_MEMBER && strcmp(e.name, n->self_name) != 0)
            fprintf(stderr, "mesh: member %s is %s (incarnation %u)\n", e.name,
                    mesh_state_name(e.state), e.incarnation);
        else if (e.type == MESH_EV_REAPED)
            fprintf(stderr, "mesh: member %s forgotten after being %s too long\n", e.name,
                    mesh_state_name(e.state));
        else if (e.type == MESH_EV_JOIN_RETRY)
            fprintf(stderr, "mesh: no answer from %s yet; retrying in %llu ms\n", e.name,
                    (unsigned long long)e.delay_ms);
        else if (e.type == MESH_EV_DB)
            n->rescan = true;
    }
}

static void *loop_main(void *arg) {
    struct mesh_node *n = arg;
    uint8_t pkt[65536];
    for (;;) {
        pthread_mutex_lock(&n->mu);
        if (n->stop) { pthread_mutex_unlock(&n->mu); break; }
        uint64_t now = now_ms();
        mesh_tick(n->m, now);
        flush(n);
        if (n->rescan || now >= n->next_scan) {
            n->rescan = false;
            db_scan(n, now);
            n->next_scan = now + SCAN_MS;
            flush(n);
        }
        uint64_t d = mesh_next_deadline(n->m);
        if (d > n->next_scan) d = n->next_scan;
        pthread_mutex_unlock(&n->mu);

        int timeout = d <= now ? 0 : (int)(d - now > 1000 ? 1000 : d - now);
        struct pollfd p[2] = { { n->fd, POLLIN, 0 }, { n->wake[0], POLLIN, 0 } };
        if (poll(p, 2, timeout) <= 0) continue;
        if (p[1].revents) {
            char c[64];
            while (read(n->wake[0], c, sizeof c) > 0) {}
        }
        if (p[0].revents & POLLIN) {
            for (int k = 0; k < 64; k++) {
                ssize_t r = recv(n->fd, pkt, sizeof pkt, MSG_DONTWAIT);
                if (r <= 0) break;
                pthread_mutex_lock(&n->mu);
                mesh_recv(n->m, pkt, (size_t)r, now_ms());
                flush(n);
                pthread_mutex_unlock(&n->mu);
            }
        }
    }
    return NULL;
}

static size_t discard(char *p, size_t s, size_t nm, void *u) {
    (void)p; (void)u;
    return s * nm;
}

static void *sender_main(void *arg) {
    struct mesh_node *n = arg;
    CURL *c = curl_easy_init();
    for (;;) {
        pthread_mutex_lock(&n->mu);
        while (!n->stop && n->qlen == 0) pthread_cond_wait(&n->qcond, &n->mu);
        if (n->stop && n->qlen == 0) { pthread_mutex_unlock(&n->mu); break; }
        struct stream_job j = n->queue[n->qhead];
        n->qhead = (n->qhead + 1) % STREAM_QUEUE_MAX;
        n->qlen--;
        pthread_mutex_unlock(&n->mu);
        if (c) {
            char url[MESH_URL_MAX + 16];
            size_t ul = strlen(j.url);
            while (ul && j.url[ul - 1] == '/') ul--;
            snprintf(url, sizeof url, "%.*s/_mesh", (int)ul, j.url);
            struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/octet-stream");
            curl_easy_reset(c);
            curl_easy_setopt(c, CURLOPT_URL, url);
            curl_easy_setopt(c, CURLOPT_POST, 1L);
            curl_easy_setopt(c, CURLOPT_POSTFIELDS, (const char *)j.data);
            curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)j.len);
            curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
            /* The message has its own MAC; the credential gets it past require_valid_user. */
            curl_easy_setopt(c, CURLOPT_USERNAME, MESH_HTTP_USER);
            curl_easy_setopt(c, CURLOPT_PASSWORD, n->http_pw);
            curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
            curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
            curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
            curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
            curl_easy_perform(c);
            curl_slist_free_all(h);
        }
        free(j.data);
    }
    if (c) curl_easy_cleanup(c);
    return NULL;
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

int mesh_secret_read(const char *path, uint8_t **out, size_t *len, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "mesh secret file %s: %s", path, strerror(errno));
        return -1;
    }
    uint8_t *b = malloc(4097);
    size_t n = b ? fread(b, 1, 4097, f) : 0;
    fclose(f);
    if (!b) { snprintf(err, errlen, "out of memory"); return -1; }
    if (n > 4096) {
        free(b);
        snprintf(err, errlen, "mesh secret file %s: larger than 4096 bytes", path);
        return -1;
    }
    while (n && (b[n - 1] == '\n' || b[n - 1] == '\r' || b[n - 1] == ' ' || b[n - 1] == '\t')) n--;
    if (n < 16) {
        free(b);
        snprintf(err, errlen, "mesh secret file %s: the secret must be at least 16 bytes", path);
        return -1;
    }
    *out = b;
    *len = n;
    return 0;
}

static void mesh_node_stop_threads(struct mesh_node *n) {
    pthread_mutex_lock(&n->mu);
    n->stop = true;
    pthread_cond_broadcast(&n->qcond);
    pthread_mutex_unlock(&n->mu);
    wake_loop(n);
    pthread_join(n->loop, NULL);
    pthread_join(n->sender, NULL);
}

int mesh_node_start(const struct mesh_node_opts *o, struct mesh_node **out, char *err,
                    size_t errlen) {
    *out = NULL;
    if (!o->secret || o->secret_len < 16) {
        snprintf(err, errlen, "the mesh needs a shared secret (--mesh-secret-file); there is no default");
        return -1;
    }
    if (!o->advertise || !o->advertise[0]) {
        snprintf(err, errlen, "the mesh needs an advertised URL (--advertise)");
        return -1;
    }
    char host[256], port[16];
    if (url_hostport(o->advertise, host, sizeof host, port, sizeof port) != 0) {
        snprintf(err, errlen, "--advertise %s: want http://host:port", o->advertise);
        return -1;
    }
    char defname[300];
    snprintf(defname, sizeof defname, "%s:%s", host, port);
    const char *name = o->name && o->name[0] ? o->name : defname;
    if (strlen(name) > MESH_NAME_MAX || strlen(o->advertise) > MESH_URL_MAX) {
        snprintf(err, errlen, "node name (≤ %d bytes) or advertised URL (≤ %d) too long",
                 MESH_NAME_MAX, MESH_URL_MAX);
        return -1;
    }

    struct mesh_node *n = calloc(1, sizeof *n);
    if (!n) { snprintf(err, errlen, "out of memory"); return -1; }
    n->fd = n->wake[0] = n->wake[1] = -1;
    n->env = o->env;
    memcpy(n->self_name, name, strlen(name) + 1);   /* length checked above */
    n->databases = strdup(o->databases ? o->databases : "*");
    pthread_mutex_init(&n->mu, NULL);
    pthread_cond_init(&n->qcond, NULL);
    {
        /* The node-to-node HTTP password: derived from the secret, never the secret itself. */
        struct hmac_sha256_ctx hc;
        uint8_t mac[SHA256_DIGEST_SIZE];
        hmac_sha256_set_key(&hc, o->secret_len, o->secret);
        hmac_sha256_update(&hc, sizeof MESH_HTTP_LABEL - 1, (const uint8_t *)MESH_HTTP_LABEL);
        hmac_sha256_digest(&hc, sizeof mac, mac);
        for (size_t i = 0; i < sizeof mac; i++) snprintf(n->http_pw + 2 * i, 3, "%02x", mac[i]);
    }

    char bport[16];
    snprintf(bport, sizeof bport, "%u", o->port);
    struct addrinfo hints = { .ai_socktype = SOCK_DGRAM, .ai_flags = AI_PASSIVE }, *res = NULL;
    if (getaddrinfo(o->bind, bport, &hints, &res) != 0 || !res) {
        snprintf(err, errlen, "mesh: cannot resolve %s", o->bind);
        goto fail;
    }
    n->fd = socket(res->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (n->fd < 0 || bind(n->fd, res->ai_addr, res->ai_addrlen) != 0) {
        snprintf(err, errlen, "mesh: cannot bind UDP %s:%u: %s", o->bind, o->port, strerror(errno));
        freeaddrinfo(res);
        goto fail;
    }
    freeaddrinfo(res);
    if (pipe2(n->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        snprintf(err, errlen, "mesh: pipe: %s", strerror(errno));
        goto fail;
    }

    struct mesh_config cfg = o->tun;
    cfg.name = name;
    cfg.url = o->advertise;
    cfg.secret = o->secret;
    cfg.secret_len = o->secret_len;
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    /* Wall-clock microseconds: a restarted node starts above every sequence it used before. */
    cfg.seq_start = (uint64_t)rt.tv_sec * 1000000 + (uint64_t)rt.tv_nsec / 1000;
    cfg.seed = cfg.seq_start ^ ((uint64_t)getpid() << 32);
    uint64_t now = now_ms();
    n->m = mesh_new(&cfg, now);
    if (!n->m) {
        snprintf(err, errlen, "mesh: invalid configuration");
        goto fail;
    }
    if (o->join && o->join[0]) {
        char *list = strdup(o->join), *save = NULL;
        const char *urls[64];
        size_t nu = 0;
        for (char *t = strtok_r(list, ",", &save); t && nu < 64; t = strtok_r(NULL, ",", &save)) {
            while (*t == ' ') t++;
            if (*t) urls[nu++] = t;
        }
        int rc = mesh_join(n->m, urls, nu, now);
        free(list);
        if (rc != 0) {
            snprintf(err, errlen, "mesh: bad --join list");
            goto fail;
        }
    }
    n->next_scan = now;
    if (pthread_create(&n->sender, NULL, sender_main, n) != 0) goto fail_thread;
    if (pthread_create(&n->loop, NULL, loop_main, n) != 0) {
        pthread_mutex_lock(&n->mu);
        n->stop = true;
        pthread_cond_broadcast(&n->qcond);
        pthread_mutex_unlock(&n->mu);
        pthread_join(n->sender, NULL);
        goto fail_thread;
    }
    struct mesh_data_opts dopts = {
        .env = o->env, .node = n, .password = n->http_pw, .self = name, .fanout = o->tun.gossip_nodes,
        .anti_entropy_ms = o->anti_entropy_ms, .workers = o->repl_workers,
        .batch = o->repl_batch, .timeout_ms = o->repl_timeout_ms, .eager = !o->no_eager_push,
    };
    if (o->env && mesh_data_start(&dopts, &n->data, err, errlen) != 0) {
        n->data = NULL;
        mesh_node_stop_threads(n);
        goto fail;
    }
    /* Published last: the HTTP threads read n->data through it. */
    atomic_store(&g_node, n);
    *out = n;
    return 0;
fail_thread:
    snprintf(err, errlen, "mesh: cannot start threads");
fail:
    for (size_t i = 0; i < n->qlen; i++) free(n->queue[(n->qhead + i) % STREAM_QUEUE_MAX].data);
    if (n->fd >= 0) close(n->fd);
    if (n->wake[0] >= 0) { close(n->wake[0]); close(n->wake[1]); }
    mesh_free(n->m);
    free(n->databases);
    pthread_mutex_destroy(&n->mu);
    pthread_cond_destroy(&n->qcond);
    free(n);
    return -1;
}

void mesh_node_leave(struct mesh_node *n, unsigned max_wait_ms) {
    pthread_mutex_lock(&n->mu);
    mesh_leave(n->m, now_ms());
    flush(n);
    pthread_mutex_unlock(&n->mu);
    wake_loop(n);
    uint64_t end = now_ms() + max_wait_ms;
    for (;;) {
        pthread_mutex_lock(&n->mu);
        int done = mesh_leave_done(n->m);
        pthread_mutex_unlock(&n->mu);
        if (done || now_ms() >= end) break;
        usleep(20000);
    }
}

void mesh_node_free(struct mesh_node *n) {
    if (!n) return;
    mesh_data_free(n->data);      /* it calls the node's accessors: first */
    n->data = NULL;
    struct mesh_node *self = n;
    atomic_compare_exchange_strong(&g_node, &self, NULL);
    mesh_node_stop_threads(n);
    for (size_t i = 0; i < n->qlen; i++) free(n->queue[(n->qhead + i) % STREAM_QUEUE_MAX].data);
    close(n->fd);
    close(n->wake[0]);
    close(n->wake[1]);
    for (size_t i = 0; i < n->nseen; i++) free(n->seen[i]);
    free(n->seen);
    for (size_t h = 0; h < STAMP_SLOTS; h++)
        while (n->stamps[h]) {
            struct stamp *st = n->stamps[h];
            n->stamps[h] = st->next;
            free(st->db);
            free(st);
        }
    mesh_free(n->m);
    free(n->databases);
    pthread_mutex_destroy(&n->mu);
    pthread_cond_destroy(&n->qcond);
    free(n);
}

int mesh_node_deliver(struct mesh_node *n, const void *data, size_t len) {
    pthread_mutex_lock(&n->mu);
    int rc = mesh_recv(n->m, data, len, now_ms());
    flush(n);
    pthread_mutex_unlock(&n->mu);
    wake_loop(n);
    return rc;
}

/* ---- status ------------------------------------------------------------------------------- */

struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
};

static void sb_put(struct sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 1024;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { b->oom = true; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

#define SB_LIT(b, lit) sb_put(b, lit, sizeof(lit) - 1)

static void sb_str(struct sbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') { char e[2] = { '\\', (char)c }; sb_put(b, e, 2); }
        else if (c < 0x20) { char e[8]; snprintf(e, sizeof e, "\\u%04x", c); sb_put(b, e, 6); }
        else sb_put(b, s, 1);
    }
    sb_put(b, "\"", 1);
}

static void sb_fmt(struct sbuf *b, const char *fmt, unsigned long long v) {
    char t[96];
    int k = snprintf(t, sizeof t, fmt, v);
    if (k < 0 || (size_t)k >= sizeof t) { b->oom = true; return; }   /* a format too long */
    sb_put(b, t, (size_t)k);
}

/* "sync": one row per meshed database and peer (mesh_node_sync_stats), and the data
 * mover's counters. */
static void sb_sync(struct sbuf *b, struct mesh_node *n) {
    struct mesh_sync_stat *v = NULL;
    size_t k = mesh_node_sync_stats(n, &v);
    SB_LIT(b, ",\"sync\":[");
    for (size_t i = 0; i < k; i++) {
        if (i) SB_LIT(b, ",");
        SB_LIT(b, "{\"db\":");
        sb_str(b, v[i].db);
        SB_LIT(b, ",\"peer\":");
        sb_str(b, v[i].peer);
        if (v[i].last_sync_ms) sb_fmt(b, ",\"last_sync_ms\":%llu", (unsigned long long)v[i].last_sync_ms);
        else SB_LIT(b, ",\"last_sync_ms\":null");
        sb_fmt(b, ",\"local_seq\":%llu", v[i].local_seq);
        const char *keys[] = { ",\"checkpointed_seq\":", ",\"behind\":", ",\"peer_seq\":",
                               ",\"pulled_seq\":", ",\"pull_behind\":" };
        int64_t vals[] = { v[i].pushed_seq, v[i].behind, v[i].peer_seq, v[i].pulled_seq,
                           v[i].pull_behind };
        for (size_t j = 0; j < 5; j++) {
            sb_put(b, keys[j], strlen(keys[j]));
            if (vals[j] < 0) SB_LIT(b, "null");
            else sb_fmt(b, "%llu", (unsigned long long)vals[j]);
        }
        sb_fmt(b, ",\"docs_written\":%llu", v[i].docs_written);
        sb_fmt(b, ",\"failures\":%llu}", v[i].failures);
    }
    free(v);
    struct mesh_data_counters c;
    mesh_node_data_counters(n, &c);
    SB_LIT(b, "],\"replication\":{");
    sb_fmt(b, "\"completed\":%llu", c.replications);
    sb_fmt(b, ",\"failed\":%llu", c.failures);
    sb_fmt(b, ",\"docs_read\":%llu", c.docs_read);
    sb_fmt(b, ",\"docs_written\":%llu", c.docs_written);
    sb_fmt(b, ",\"summaries\":%llu", c.summaries);
    sb_fmt(b, ",\"rounds_deferred\":%llu", c.rounds_deferred);
    sb_fmt(b, ",\"dropped\":%llu", c.dropped);
    sb_fmt(b, ",\"queued\":%llu", c.queued);
    sb_fmt(b, ",\"running\":%llu}", c.running);
}

void mesh_node_stats(struct mesh_node *n, struct mesh_stats *st, uint64_t by_state[4]) {
    for (int i = 0; i < 4; i++) by_state[i] = 0;
    pthread_mutex_lock(&n->mu);
    mesh_stats_get(n->m, st);
    for (size_t i = 0; i < mesh_member_count(n->m); i++) {
        struct mesh_member_info mi;
        if (mesh_member_get(n->m, i, &mi) == 0 && mi.state >= 0 && mi.state < 4)
            by_state[mi.state]++;
    }
    pthread_mutex_unlock(&n->mu);
}

char *mesh_node_status_json(struct mesh_node *n) {
    struct sbuf b = { 0 };
    pthread_mutex_lock(&n->mu);
    uint64_t now = now_ms();
    SB_LIT(&b, "{\"name\":");
    sb_str(&b, n->self_name);
    SB_LIT(&b, ",\"members\":[");
    for (size_t i = 0; i < mesh_member_count(n->m); i++) {
        struct mesh_member_info mi;
        mesh_member_get(n->m, i, &mi);
        if (i) SB_LIT(&b, ",");
        SB_LIT(&b, "{\"name\":");
        sb_str(&b, mi.name);
        SB_LIT(&b, ",\"url\":");
        sb_str(&b, mi.url);
        SB_LIT(&b, ",\"state\":");
        sb_str(&b, mesh_state_name(mi.state));
        sb_fmt(&b, ",\"incarnation\":%llu", mi.incarnation);
        if (mi.is_self) SB_LIT(&b, ",\"last_heard_ms\":0,\"self\":true}");
        else if (!mi.last_heard_ms) SB_LIT(&b, ",\"last_heard_ms\":null}");
        else sb_fmt(&b, ",\"last_heard_ms\":%llu}", now - mi.last_heard_ms);
    }
    SB_LIT(&b, "],\"databases\":[");
    for (size_t i = 0; i < mesh_db_count(n->m); i++) {
        struct mesh_db_info d;
        mesh_db_get(n->m, i, &d);
        if (i) SB_LIT(&b, ",");
        SB_LIT(&b, "{\"name\":");
        sb_str(&b, d.name);
        if (d.deleted) SB_LIT(&b, ",\"deleted\":true");
        else SB_LIT(&b, ",\"deleted\":false");
        sb_fmt(&b, ",\"version\":%llu}", d.version);
    }
    struct mesh_stats st;
    mesh_stats_get(n->m, &st);
    pthread_mutex_unlock(&n->mu);
    sb_fmt(&b, "],\"stats\":{\"msgs_sent\":%llu", st.msgs_sent);
    sb_fmt(&b, ",\"bytes_sent\":%llu", st.bytes_sent);
    sb_fmt(&b, ",\"msgs_recv\":%llu", st.msgs_recv);
    sb_fmt(&b, ",\"bytes_recv\":%llu", st.bytes_recv);
    sb_fmt(&b, ",\"bad_mac\":%llu", st.bad_mac);
    sb_fmt(&b, ",\"replayed\":%llu", st.replayed);
    sb_fmt(&b, ",\"probes\":%llu", st.probes);
    sb_fmt(&b, ",\"probes_failed\":%llu", st.probes_failed);
    sb_fmt(&b, ",\"awareness\":%llu}", st.awareness);
    sb_sync(&b, n);
    SB_LIT(&b, "}\n");
    if (b.oom) { free(b.p); return NULL; }
    return b.p;
}
