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
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "mimeo.h"
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

    /* sender queue, guarded by mu */
    pthread_cond_t qcond;
    struct stream_job queue[STREAM_QUEUE_MAX];
    size_t qhead, qlen;

    struct addr_ent addrs[ADDR_CACHE];
    size_t naddr_next;

    /* local database names seen at the previous scan (sorted as mimeo_db_list gives them) */
    char **seen;
    size_t nseen;
    bool scanned, rescan;       /* rescan: the registry changed, reconcile now */
    uint64_t next_scan;
};

static struct mesh_node *g_node;

struct mesh_node *mesh_node_current(void) {
    return g_node;
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

static bool list_has(char **v, size_t n, const char *s) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], s) == 0) return true;
    return false;
}

/* First tell the mesh what users did here since the last scan, then make the local set
 * follow the registry. In that order a local delete is announced before the registry could
 * make us recreate it. Called with mu held. */
static void db_scan(struct mesh_node *n, uint64_t now) {
    struct name_list cur = { .node = n };
    if (mimeo_db_list(n->env, NULL, collect_db, &cur) != 0) goto out;
    for (size_t i = 0; i < cur.n; i++) {
        if (!n->scanned) mesh_db_observe(n->m, cur.v[i], now);
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
                for (size_t k = 0; k < cur.n; k++)
                    if (strcmp(cur.v[k], d.name) == 0) { free(cur.v[k]); cur.v[k] = cur.v[--cur.n]; break; }
            }
        } else if (!d.deleted && !here) {
            int rc = mimeo_db_create(n->env, d.name, &e);
            if (rc == 0 || rc == MIMEO_EEXIST) {
                if (rc == 0) fprintf(stderr, "mesh: created database %s (created in the mesh)\n", d.name);
                collect_db(&cur, d.name, strlen(d.name));
            }
        }
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
    g_node = n;
    *out = n;
    return 0;
fail_thread:
    snprintf(err, errlen, "mesh: cannot start threads");
fail:
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
    if (g_node == n) g_node = NULL;
    pthread_mutex_lock(&n->mu);
    n->stop = true;
    pthread_cond_broadcast(&n->qcond);
    pthread_mutex_unlock(&n->mu);
    wake_loop(n);
    pthread_join(n->loop, NULL);
    pthread_join(n->sender, NULL);
    for (size_t i = 0; i < n->qlen; i++) free(n->queue[(n->qhead + i) % STREAM_QUEUE_MAX].data);
    close(n->fd);
    close(n->wake[0]);
    close(n->wake[1]);
    for (size_t i = 0; i < n->nseen; i++) free(n->seen[i]);
    free(n->seen);
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
    char t[32];
    int k = snprintf(t, sizeof t, fmt, v);
    sb_put(b, t, (size_t)k);
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
    sb_fmt(&b, ",\"awareness\":%llu}}\n", st.awareness);
    if (b.oom) { free(b.p); return NULL; }
    return b.p;
}
