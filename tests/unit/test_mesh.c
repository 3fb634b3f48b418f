/* Mesh tests: the wire codec (round trips, truncation, tampering), then a deterministic
 * discrete-event simulator that runs the real state machine (src/mesh/mesh.c) for 200+ nodes
 * over a fake network with seeded loss, delay (hence reordering), partitions, crashes and
 * restarts, and checks what SWIM promises. Every run prints its seed; rerun one with
 * `SEED=n build/asan/tests/test_mesh [scenario]`. */
#include <inttypes.h>

#include "check.h"
#include "mimeo.h"
#include "mesh/mesh.h"

static uint64_t g_seed;

static const uint8_t SECRET[32] = "mesh-test-secret-0123456789abcde";

/* ---- codec -------------------------------------------------------------------------------- */

static size_t build_msg(uint8_t **out, const uint8_t *key, size_t keylen) {
    struct mesh_hdr h;
    memset(&h, 0, sizeof h);
    h.type = MESH_T_PING_REQ;
    h.seq = 77;
    strcpy(h.name, "n1");
    strcpy(h.url, "http://127.0.0.1:5984");
    h.probe = 9;
    strcpy(h.target, "n2");
    strcpy(h.target_url, "http://127.0.0.1:5985");
    struct mesh_wbuf w;
    mesh_wire_begin(&w, 1400, &h);
    struct mesh_rec r;
    memset(&r, 0, sizeof r);
    r.kind = MESH_K_SUSPECT;
    r.incarnation = 5;
    strcpy(r.name, "n3");
    strcpy(r.extra, "n1");
    uint8_t rec[300];
    size_t n = mesh_wire_rec_encode(&r, rec, sizeof rec);
    CHECK(n > 0 && mesh_wire_add(&w, rec, n));
    memset(&r, 0, sizeof r);
    r.kind = MESH_K_DB;
    r.version = 1ull << 40;
    r.deleted = 1;
    strcpy(r.name, "userdb-abc");
    n = mesh_wire_rec_encode(&r, rec, sizeof rec);
    CHECK(n > 0 && mesh_wire_add(&w, rec, n));
    CHECK_EQ_INT(mesh_wire_finish(&w, key, keylen, 2), 0);
    *out = w.p;
    return w.len;
}

static void test_wire_roundtrip(void) {
    uint8_t *msg;
    size_t len = build_msg(&msg, SECRET, sizeof SECRET);
    struct mesh_hdr h;
    CHECK_EQ_INT(mesh_wire_parse(SECRET, sizeof SECRET, msg, len, &h), 0);
    CHECK_EQ_INT(h.type, MESH_T_PING_REQ);
    CHECK_EQ_INT(h.seq, 77);
    CHECK_EQ_STR(h.name, "n1");
    CHECK_EQ_STR(h.target_url, "http://127.0.0.1:5985");
    CHECK_EQ_INT(h.probe, 9);
    CHECK_EQ_INT(h.nrec, 2);
    size_t off = h.rec_off;
    struct mesh_rec r;
    CHECK_EQ_INT(mesh_wire_rec_next(msg, &h, &off, &r), 1);
    CHECK_EQ_INT(r.kind, MESH_K_SUSPECT);
    CHECK_EQ_INT(r.incarnation, 5);
    CHECK_EQ_STR(r.extra, "n1");
    CHECK_EQ_INT(mesh_wire_rec_next(msg, &h, &off, &r), 1);
    CHECK_EQ_INT(r.kind, MESH_K_DB);
    CHECK(r.version == 1ull << 40 && r.deleted == 1);
    CHECK_EQ_STR(r.name, "userdb-abc");
    CHECK_EQ_INT(mesh_wire_rec_next(msg, &h, &off, &r), 0);
    free(msg);
}

/* Every prefix fails cleanly; every flipped bit fails the MAC; a wrong key fails the MAC. */
static void test_wire_tamper(void) {
    uint8_t *msg;
    size_t len = build_msg(&msg, SECRET, sizeof SECRET);
    struct mesh_hdr h;
    for (size_t i = 0; i < len; i++) CHECK(mesh_wire_parse(SECRET, sizeof SECRET, msg, i, &h) != 0);
    int bad = 0;
    for (size_t i = 0; i < len * 8; i++) {
        msg[i / 8] ^= (uint8_t)(1u << (i % 8));
        if (mesh_wire_parse(SECRET, sizeof SECRET, msg, len, &h) == 0) bad++;
        msg[i / 8] ^= (uint8_t)(1u << (i % 8));
    }
    CHECK_EQ_INT(bad, 0);
    const uint8_t other[32] = "another-secret-another-secret-00";
    CHECK_EQ_INT(mesh_wire_parse(other, sizeof other, msg, len, &h), MIMEO_ECORRUPT);
    free(msg);

    /* Authenticated but inconsistent (a peer with the secret and a bug): rejected whole. */
    struct mesh_config cfg;
    mesh_config_default(&cfg);
    cfg.name = "x";
    cfg.url = "sim://x";
    cfg.secret = SECRET;
    cfg.secret_len = sizeof SECRET;
    struct mesh *m = mesh_new(&cfg, 0);
    CHECK(m != NULL);
    len = build_msg(&msg, SECRET, sizeof SECRET);
    /* Claim 3 records where there are 2: re-MAC so only the count is wrong. */
    struct mesh_hdr hh;
    CHECK_EQ_INT(mesh_wire_parse(SECRET, sizeof SECRET, msg, len, &hh), 0);
    msg[hh.rec_off - 1] = 3;
    struct mesh_wbuf w = { msg, len - MESH_MAC_LEN, len, 1 << 20, hh.rec_off - 2, 0 };
    CHECK_EQ_INT(mesh_wire_finish(&w, SECRET, sizeof SECRET, 3), 0);
    CHECK_EQ_INT(mesh_recv(m, w.p, w.len, 1), MIMEO_EINVAL);
    struct mesh_stats st;
    mesh_stats_get(m, &st);
    CHECK_EQ_INT(st.malformed, 1);
    CHECK_EQ_INT(mesh_member_count(m), 1);
    free(w.p);
    mesh_free(m);

    cfg.secret_len = 8;    /* too short a secret: refused */
    CHECK(mesh_new(&cfg, 0) == NULL);
    cfg.secret = NULL;
    CHECK(mesh_new(&cfg, 0) == NULL);
}

/* ---- the simulator ------------------------------------------------------------------------- */

enum { EV_DELIVER = 0, EV_TIMER = 1 };

struct ev {
    uint64_t t, order;
    int kind, node, from;
    uint32_t gen;
    uint8_t *data;
    size_t len;
};

struct node {
    struct mesh *m;
    int up, left, group;
    uint32_t gen;               /* bumped on crash, so timers of a former life are ignored */
    uint64_t sched;
    char name[16], url[32];
    int saw_db_delete;          /* got a MESH_EV_DB "deleted" event (for the restart case) */
};

struct sim {
    struct node *n;
    int nn;
    struct ev *heap;
    size_t nheap, capheap;
    uint64_t now, order, rng;
    uint32_t loss_pct, dmin, dmax;
    struct mesh_config cfg;
    uint64_t false_dead, suspicions_seen, delivered, dropped;
    /* Capture of one message for the replay test. */
    uint8_t *captured;
    size_t captured_len;
    int captured_to, capture;
    /* Messages queued to node `watch` by any node but `lag` (the reap test). */
    int watch, lag;
    uint64_t watch_sent;
};

static uint64_t sim_rand(struct sim *s) {
    uint64_t z = (s->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int ev_less(const struct ev *a, const struct ev *b) {
    return a->t < b->t || (a->t == b->t && a->order < b->order);
}

static void heap_push(struct sim *s, struct ev e) {
    if (s->nheap == s->capheap) {
        s->capheap = s->capheap ? s->capheap * 2 : 1024;
        s->heap = realloc(s->heap, s->capheap * sizeof *s->heap);
    }
    e.order = s->order++;
    size_t i = s->nheap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!ev_less(&e, &s->heap[p])) break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = e;
}

static struct ev heap_pop(struct sim *s) {
    struct ev top = s->heap[0], last = s->heap[--s->nheap];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= s->nheap) break;
        if (c + 1 < s->nheap && ev_less(&s->heap[c + 1], &s->heap[c])) c++;
        if (!ev_less(&s->heap[c], &last)) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (s->nheap) s->heap[i] = last;
    return top;
}

static int url_node(const char *url) {
    if (strncmp(url, "sim://", 6) != 0) return -1;
    return atoi(url + 6);
}

static void node_events(struct sim *s, int i) {
    struct mesh_event e;
    while (mesh_event_pop(s->n[i].m, &e)) {
        if (e.type == MESH_EV_MEMBER) {
            int j = atoi(e.name + 1);
            if (e.state == MESH_SUSPECT) s->suspicions_seen++;
            if (getenv("MESH_TRACE") && strcmp(getenv("MESH_TRACE"), e.name) == 0)
                fprintf(stderr, "  t=%" PRIu64 " %s: %s %s inc %u\n", s->now, s->n[i].name,
                        e.name, mesh_state_name(e.state), e.incarnation);
            if (e.state == MESH_DEAD && j >= 0 && j < s->nn && s->n[j].up && !s->n[j].left &&
                s->n[j].group == s->n[i].group)
            {
                s->false_dead++;
                if (getenv("MESH_DEBUG"))
                    fprintf(stderr, "  t=%" PRIu64 " %s declares %s dead (inc %u)\n", s->now,
                            s->n[i].name, e.name, e.incarnation);
            }
        } else if (e.type == MESH_EV_DB && e.state == 1) {
            s->n[i].saw_db_delete = 1;
        }
    }
}

/* Sends what node i queued, then books its next timer. */
static void node_flush(struct sim *s, int i, int after_tick) {
    struct node *nd = &s->n[i];
    struct mesh_msg msg;
    while (mesh_out_pop(nd->m, &msg)) {
        int to = url_node(msg.to);
        if (to == s->watch && i != s->lag) s->watch_sent++;
        /* Datagrams are lost at the configured rate; streams (TCP) only by partitions. */
        if (to < 0 || to >= s->nn || (!msg.stream && sim_rand(s) % 1000 < s->loss_pct * 10)) {
            s->dropped++;
            free(msg.data);
            continue;
        }
        if (s->capture && to != i && !msg.stream && s->n[to].up) {
            s->captured = malloc(msg.len);
            memcpy(s->captured, msg.data, msg.len);
            s->captured_len = msg.len;
            s->captured_to = to;
            s->capture = 0;
        }
        uint64_t d = s->dmin + sim_rand(s) % (s->dmax - s->dmin + 1);
        struct ev e = { .t = s->now + d, .kind = EV_DELIVER, .node = to, .from = i,
                        .data = msg.data, .len = msg.len };
        heap_push(s, e);
    }
    node_events(s, i);
    uint64_t d = mesh_next_deadline(nd->m);
    uint64_t floor = s->now + (after_tick ? 1 : 0);
    if (d < floor) d = floor;
    if (d != nd->sched && d != MESH_NEVER) {
        nd->sched = d;
        struct ev e = { .t = d, .kind = EV_TIMER, .node = i, .gen = nd->gen };
        heap_push(s, e);
    }
}

static void node_start(struct sim *s, int i, int join_via) {
    struct node *nd = &s->n[i];
    struct mesh_config cfg = s->cfg;
    cfg.name = nd->name;
    cfg.url = nd->url;
    cfg.secret = SECRET;
    cfg.secret_len = sizeof SECRET;
    cfg.seed = sim_rand(s);
    if (i == s->lag) cfg.reap_dead_ms = cfg.reap_left_ms = 0;   /* forgets nobody */
    /* Sequences start at a million per simulated ms: above anything an earlier life sent. */
    cfg.seq_start = (s->now + 1) * 1000000ull;
    nd->m = mesh_new(&cfg, s->now);
    nd->up = 1;
    nd->left = 0;
    nd->sched = MESH_NEVER;
    nd->gen++;
    if (join_via >= 0) {
        const char *seed = s->n[join_via].url;
        mesh_join(nd->m, &seed, 1, s->now);
    }
    node_flush(s, i, 0);
}

static void node_crash(struct sim *s, int i) {
    struct node *nd = &s->n[i];
    mesh_free(nd->m);
    nd->m = NULL;
    nd->up = 0;
    nd->gen++;
}

static void sim_init(struct sim *s, int nn, uint64_t seed) {
    memset(s, 0, sizeof *s);
    s->nn = nn;
    s->n = calloc((size_t)nn, sizeof *s->n);
    s->rng = seed;
    s->dmin = 1;
    s->dmax = 20;
    s->watch = s->lag = -1;
    mesh_config_default(&s->cfg);
    for (int i = 0; i < nn; i++) {
        snprintf(s->n[i].name, sizeof s->n[i].name, "n%d", i);
        snprintf(s->n[i].url, sizeof s->n[i].url, "sim://%d", i);
    }
}

static void sim_free(struct sim *s) {
    for (int i = 0; i < s->nn; i++) mesh_free(s->n[i].m);
    for (size_t i = 0; i < s->nheap; i++) free(s->heap[i].data);
    free(s->heap);
    free(s->n);
    free(s->captured);
}

static void sim_run_until(struct sim *s, uint64_t until) {
    while (s->nheap && s->heap[0].t <= until) {
        struct ev e = heap_pop(s);
        s->now = e.t;
        struct node *nd = &s->n[e.node];
        if (e.kind == EV_DELIVER) {
            /* A partition cuts links by the groups in force at delivery time. */
            if (nd->up && s->n[e.from].group == nd->group) {
                s->delivered++;
                mesh_recv(nd->m, e.data, e.len, s->now);
                node_flush(s, e.node, 0);
            } else {
                s->dropped++;
            }
            free(e.data);
        } else if (nd->up && e.gen == nd->gen && e.t == nd->sched) {
            nd->sched = MESH_NEVER;
            mesh_tick(nd->m, s->now);
            node_flush(s, e.node, 1);
        }
    }
    s->now = until;
}

/* What node i should believe about node j right now. */
static int expected_state(const struct sim *s, int i, int j) {
    if (s->n[j].left) return MESH_LEFT;
    if (!s->n[j].up || s->n[j].group != s->n[i].group) return MESH_DEAD;
    return MESH_ALIVE;
}

/* 1 when every up node holds the expected state of every node (a dead or left node may also
 * be unknown to a node that started after it went), and all agree on incarnations of the
 * living. With verbose, prints the first disagreement. */
static int views_agree(const struct sim *s, int verbose) {
    for (int j = 0; j < s->nn; j++) {
        int64_t inc = -1;
        for (int i = 0; i < s->nn; i++) {
            if (!s->n[i].up || s->n[i].left || i == j) continue;
            struct mesh_member_info mi;
            int want = expected_state(s, i, j);
            if (mesh_member_find(s->n[i].m, s->n[j].name, &mi) != 0) {
                if (want == MESH_ALIVE) {
                    if (verbose) fprintf(stderr, "  %s does not know %s\n", s->n[i].name, s->n[j].name);
                    return 0;
                }
                continue;
            }
            if (mi.state != want) {
                if (verbose)
                    fprintf(stderr, "  %s holds %s %s (inc %u), expected %s\n", s->n[i].name,
                            s->n[j].name, mesh_state_name(mi.state), mi.incarnation,
                            mesh_state_name(want));
                return 0;
            }
            if (want == MESH_ALIVE && s->n[i].group == 0) {
                if (inc >= 0 && inc != mi.incarnation) {
                    if (verbose) fprintf(stderr, "  incarnations of %s differ\n", s->n[j].name);
                    return 0;
                }
                inc = mi.incarnation;
            }
        }
    }
    return 1;
}

/* Runs until the views agree, polling every step_ms, up to limit_ms; the time it took, or
 * UINT64_MAX (after printing a disagreement). */
static uint64_t run_until_agree(struct sim *s, uint64_t step_ms, uint64_t limit_ms) {
    uint64_t t0 = s->now;
    while (s->now - t0 <= limit_ms) {
        if (views_agree(s, 0)) return s->now - t0;
        sim_run_until(s, s->now + step_ms);
    }
    views_agree(s, 1);
    return UINT64_MAX;
}

static void seed_fail(const char *scenario, uint64_t seed) {
    fprintf(stderr, "mesh simulation failed: SEED=%" PRIu64 " scenario=%s\n", g_seed, scenario);
    (void)seed;
}

#define NODES 200

/* Start NODES nodes a few ms apart, each joining through node 0. */
static void sim_boot(struct sim *s) {
    node_start(s, 0, -1);
    for (int i = 1; i < s->nn; i++) {
        sim_run_until(s, s->now + 5);
        node_start(s, i, 0);
    }
}

/* ---- failure detection bound ----
 * With the defaults (probe interval T = 1 s, probe timeout 500 ms, 3 indirect probes, gossip
 * every 200 ms to 3 members, λ = 4, suspicion_mult 4, suspicion_max_mult 6) and n live
 * members, a crashed node c is dead everywhere within
 *
 *   T_first + T_susp + T_spread
 *
 * T_first: time until some member's probe of c fails. Each of the n−1 members probes c once
 *   per round of its own shuffled order (n−1 periods long, awareness 0 in a healthy
 *   cluster), at a uniformly random slot, independently of the others. The chance that no
 *   member probes c in a given period is (1 − 1/(n−1))^(n−1) ≤ 1/e, so the chance that none
 *   has in P periods is ≤ e^−P; with P = 20 that is 2·10^−9. The failing probe itself ends
 *   one (unscaled) period later: T_first ≤ 21·T.
 * T_susp: the suspicion timeout of the first accuser, at most max = suspicion_max_mult ·
 *   suspicion_mult · log10(n) · T (55.2 s for n = 200) — it only shrinks with confirmations
 *   (with k = 2 confirmations, min = 9.2 s is what one usually sees).
 * T_spread: the DEAD update is pushed by every member that has it to 3 random members per
 *   200 ms round, 12 times (λ·⌈log10(n+1)⌉): the informed set grows about 4× per round, so
 *   ⌈log4 200⌉ = 4 rounds reach most members and the remaining ones are each missed with
 *   probability ≈ e^−3 per round afterwards; 25 rounds (5 s) leave a given member uninformed
 *   with probability < 10^−20. Message delay (≤ 20 ms a hop) is within those rounds.
 * So: bound = 21·T + max + 25·200 ms = 21 + 55.2 + 5 = 81.2 s for n = 200.
 */
/* ln x for x > 0 without libm (the test links what the library links). */
static double t_ln(double x) {
    int e = 0;
    while (x >= 2) { x /= 2; e++; }
    while (x < 1) { x *= 2; e--; }
    double t = (x - 1) / (x + 1), t2 = t * t, sum = 0, term = t;
    for (int k = 1; k < 40; k += 2) { sum += term / k; term *= t2; }
    return 2 * sum + e * 0.69314718055994530942;
}

static uint64_t dead_bound_ms(const struct mesh_config *c, int n) {
    double scale = t_ln(n) / t_ln(10);
    if (scale < 1) scale = 1;
    double susp_max = (double)c->suspicion_max_mult * c->suspicion_mult * scale * c->probe_interval_ms;
    return (uint64_t)(21.0 * c->probe_interval_ms + susp_max + 25.0 * c->gossip_interval_ms);
}

/* Every up node holds the same database registry as the first up node. */
static int dbs_agree(const struct sim *s, int verbose) {
    int ref = -1;
    for (int i = 0; i < s->nn; i++)
        if (s->n[i].up && !s->n[i].left) { ref = i; break; }
    if (ref < 0) return 1;
    const struct mesh *r = s->n[ref].m;
    for (int i = 0; i < s->nn; i++) {
        if (!s->n[i].up || s->n[i].left) continue;
        const struct mesh *m = s->n[i].m;
        if (mesh_db_count(m) != mesh_db_count(r)) {
            if (verbose) fprintf(stderr, "  %s knows %zu dbs, %s %zu\n", s->n[i].name,
                                 mesh_db_count(m), s->n[ref].name, mesh_db_count(r));
            return 0;
        }
        for (size_t k = 0; k < mesh_db_count(r); k++) {
            struct mesh_db_info a, b;
            mesh_db_get(r, k, &a);
            if (mesh_db_find(m, a.name, &b) != 0 || a.deleted != b.deleted || a.version != b.version) {
                if (verbose) fprintf(stderr, "  %s differs on db %s\n", s->n[i].name, a.name);
                return 0;
            }
        }
    }
    return 1;
}

/* A node that every gossip send of a registry change missed is repaired by push-pull, whose
 * period at N = 200 is 4 × 30 s: allow two periods. The time it took, or UINT64_MAX. */
static uint64_t run_until_dbs_agree(struct sim *s, uint64_t limit_ms) {
    uint64_t t0 = s->now;
    while (s->now - t0 <= limit_ms) {
        if (dbs_agree(s, 0)) return s->now - t0;
        sim_run_until(s, s->now + 1000);
    }
    dbs_agree(s, 1);
    return UINT64_MAX;
}

static int live_nodes(const struct sim *s) {
    int n = 0;
    for (int i = 0; i < s->nn; i++) n += s->n[i].up && !s->n[i].left;
    return n;
}

static int pick_up_node(struct sim *s, int lo, int hi) {
    for (;;) {
        int i = lo + (int)(sim_rand(s) % (uint64_t)(hi - lo));
        if (s->n[i].up && !s->n[i].left) return i;
    }
}

/* Join through one seed, a crash declared dead everywhere within the derived bound, a
 * graceful leave seen as left, a restart that refutes its death, an outsider without the
 * secret who can neither join nor inject, and a replayed message that changes nothing. */
static void test_sim_lifecycle(void) {
    struct sim s;
    sim_init(&s, NODES, g_seed ^ 0x1111);
    sim_boot(&s);
    uint64_t t = run_until_agree(&s, 500, 120000);
    CHECK(t != UINT64_MAX);
    if (getenv("CHECK_VERBOSE")) fprintf(stderr, "  join of %d nodes converged in %" PRIu64 " ms\n", NODES, t);

    /* Idle cost: with nothing changing, a node sends its probe, acks others' probes and one
     * full-state push-pull per interval. Estimated: 2 pings + 2 acks of ~50 bytes a second,
     * plus 2 × 200 × ~30 bytes per push-pull spread over its interval: ≲ 1 KB/s. The issue's
     * target is 2 KB/s (message bytes; UDP/IP headers add 28 per datagram). A 60 s window
     * holds every node's first push-pull (at 30 s). */
    uint64_t sent0 = 0, sent1 = 0;
    struct mesh_stats st;
    for (int i = 0; i < NODES; i++) { mesh_stats_get(s.n[i].m, &st); sent0 += st.bytes_sent; }
    sim_run_until(&s, s.now + 60000);
    for (int i = 0; i < NODES; i++) { mesh_stats_get(s.n[i].m, &st); sent1 += st.bytes_sent; }
    uint64_t per_node = (sent1 - sent0) / NODES / 60;
    CHECK(per_node <= 2048);
    if (getenv("CHECK_VERBOSE")) fprintf(stderr, "  idle: %" PRIu64 " bytes/s per node\n", per_node);

    /* Crash one member: dead everywhere within the bound. */
    int c = pick_up_node(&s, 1, NODES);
    node_crash(&s, c);
    uint64_t bound = dead_bound_ms(&s.cfg, NODES);
    uint64_t t0 = s.now, took = UINT64_MAX;
    while (s.now - t0 <= bound) {
        sim_run_until(&s, s.now + 100);
        if (views_agree(&s, 0)) { took = s.now - t0; break; }
    }
    if (took == UINT64_MAX) views_agree(&s, 1);
    CHECK(took <= bound);
    if (getenv("CHECK_VERBOSE"))
        fprintf(stderr, "  crash of n%d dead everywhere in %" PRIu64 " ms (bound %" PRIu64 ")\n", c, took, bound);

    /* A replayed message changes nothing and is counted. */
    s.capture = 1;
    sim_run_until(&s, s.now + 2000);
    CHECK(s.captured != NULL);
    if (s.captured) {
        struct mesh_stats before, after;
        mesh_stats_get(s.n[s.captured_to].m, &before);
        CHECK_EQ_INT(mesh_recv(s.n[s.captured_to].m, s.captured, s.captured_len, s.now), MIMEO_EINVAL);
        mesh_stats_get(s.n[s.captured_to].m, &after);
        CHECK_EQ_INT(after.replayed, before.replayed + 1);
    }

    /* Graceful leave: left, not dead, everywhere. */
    int l = pick_up_node(&s, 1, NODES);
    mesh_leave(s.n[l].m, s.now);
    node_flush(&s, l, 0);
    s.n[l].left = 1;
    uint64_t tl = s.now;
    while (!mesh_leave_done(s.n[l].m) && s.now - tl < 10000) sim_run_until(&s, s.now + 100);
    CHECK(mesh_leave_done(s.n[l].m));
    node_crash(&s, l);
    s.n[l].left = 1;
    t = run_until_agree(&s, 200, 30000);
    CHECK(t != UINT64_MAX);

    /* The crashed node restarts with an empty state: it learns it was declared dead, refutes
     * with a higher incarnation and is alive everywhere again. */
    node_start(&s, c, 0);
    t = run_until_agree(&s, 500, 60000);
    CHECK(t != UINT64_MAX);
    struct mesh_member_info mi;
    CHECK_EQ_INT(mesh_member_find(s.n[0].m, s.n[c].name, &mi), 0);
    CHECK(mi.incarnation > 0);

    /* An outsider with the wrong secret: its join and a forged member are rejected. */
    struct mesh_config ec = s.cfg;
    const uint8_t bad[32] = "not-the-mesh-secret-not-the-mesh";
    ec.name = "evil";
    ec.url = "sim://99999";
    ec.secret = bad;
    ec.secret_len = sizeof bad;
    struct mesh *evil = mesh_new(&ec, s.now);
    const char *seed = s.n[0].url;
    mesh_join(evil, &seed, 1, s.now);
    struct mesh_msg msg;
    struct mesh_stats st0, st1;
    mesh_stats_get(s.n[0].m, &st0);
    int rejected = 0, sent = 0;
    while (mesh_out_pop(evil, &msg)) {
        sent++;
        rejected += mesh_recv(s.n[0].m, msg.data, msg.len, s.now) == MIMEO_EINVAL;
        free(msg.data);
    }
    mesh_stats_get(s.n[0].m, &st1);
    CHECK(sent > 0 && rejected == sent);
    CHECK_EQ_INT(st1.bad_mac, st0.bad_mac + (uint64_t)sent);
    mesh_free(evil);
    sim_run_until(&s, s.now + 5000);
    for (int i = 0; i < NODES; i++)
        if (s.n[i].up) CHECK(mesh_member_find(s.n[i].m, "evil", &mi) == MIMEO_ENOTFOUND);
    if (check_case_failed) seed_fail("lifecycle", g_seed);
    sim_free(&s);
}

/* 10% datagram loss and 1–50 ms delay for two simulated minutes: live nodes are (almost
 * never) declared dead. The rate, derived:
 * - Per probe, the direct round trip fails with 1−0.9² = 0.19, each indirect path (4
 *   messages) with 1−0.9⁴ = 0.34, all three with 0.04: ≈ 0.8% of probes end in a suspicion,
 *   ≈ 1.5/s across 200 nodes, ≈ 160 in the run.
 * - Every member holds each suspicion and must hear the refutation before its timer ends
 *   (≥ 9.2 s, ≈ 30 s with one confirmation, 55 s with none). Two channels carry it: the
 *   refutation's gossip (each member that has it sends it λ·⌈log10 201⌉ = 12 times to random
 *   members; a given member misses all ≈ 200·12·0.9 sends w.p. e^−10.9 ≈ 2·10^−5), and any
 *   message from the refuter, whose header carries its new incarnation (≈ 15 gossip messages a
 *   second to random members while updates are queued; none reaches a given member in 30 s
 *   w.p. ≈ e^−(30·15·0.9/199) ≈ 0.13).
 * - So ≈ 2.6·10^−6 per member and suspicion, × 200 members × 160 suspicions ≈ 0.08 expected
 *   false deaths per run (measured: 1 in 66 seeds). The bound asserted is at most one per run
 *   (for an expectation of 0.08, two or more happen in 0.3% of runs; measured rate: 0.015). */
static void test_sim_loss(void) {
    struct sim s;
    sim_init(&s, NODES, g_seed ^ 0x2222);
    sim_boot(&s);
    CHECK(run_until_agree(&s, 500, 120000) != UINT64_MAX);
    s.loss_pct = 10;
    s.dmax = 50;
    s.false_dead = 0;
    s.suspicions_seen = 0;
    sim_run_until(&s, s.now + 120000);
    CHECK(s.false_dead <= 1);
    if (getenv("CHECK_VERBOSE"))
        fprintf(stderr, "  10%% loss: %" PRIu64 " suspicion events, %" PRIu64 " false deaths\n",
                s.suspicions_seen, s.false_dead);
    s.loss_pct = 0;
    CHECK(run_until_agree(&s, 500, 30000) != UINT64_MAX);
    if (check_case_failed) seed_fail("loss", g_seed);
    sim_free(&s);
}

/* A partition into halves: each side declares the other dead, databases are created and
 * deleted on both sides and on a node that is down; after the heal the views merge, the
 * registries converge, and a deleted database stays deleted — also on a node that comes back
 * with an empty state and a leftover local copy. */
static void test_sim_partition(void) {
    struct sim s;
    sim_init(&s, NODES, g_seed ^ 0x3333);
    s.dmax = 30;
    sim_boot(&s);
    CHECK(run_until_agree(&s, 500, 120000) != UINT64_MAX);

    const char *dbs[] = { "a", "b", "c" };
    for (int k = 0; k < 3; k++) {
        int i = pick_up_node(&s, 0, NODES);
        mesh_db_create(s.n[i].m, dbs[k], s.now);
        node_flush(&s, i, 0);
    }
    CHECK(run_until_dbs_agree(&s, 240000) != UINT64_MAX);

    int away = pick_up_node(&s, 1, NODES);
    node_crash(&s, away);
    for (int i = NODES / 2; i < NODES; i++) s.n[i].group = 1;
    sim_run_until(&s, s.now + 2000);

    int x = pick_up_node(&s, 0, NODES / 2), y = pick_up_node(&s, NODES / 2, NODES);
    mesh_db_delete(s.n[x].m, "a", s.now);
    mesh_db_create(s.n[x].m, "d", s.now);
    node_flush(&s, x, 0);
    mesh_db_delete(s.n[y].m, "b", s.now);
    mesh_db_create(s.n[y].m, "e", s.now);
    node_flush(&s, y, 0);

    uint64_t bound = dead_bound_ms(&s.cfg, NODES);
    uint64_t t = run_until_agree(&s, 1000, bound + 30000);
    CHECK(t != UINT64_MAX);
    if (getenv("CHECK_VERBOSE")) fprintf(stderr, "  partition: sides split in %" PRIu64 " ms\n", t);

    for (int i = 0; i < NODES; i++) s.n[i].group = 0;
    t = run_until_agree(&s, 1000, 120000);
    CHECK(t != UINT64_MAX);
    if (getenv("CHECK_VERBOSE")) fprintf(stderr, "  partition: healed views merged in %" PRIu64 " ms\n", t);
    t = run_until_dbs_agree(&s, 240000);
    CHECK(t != UINT64_MAX);
    if (getenv("CHECK_VERBOSE")) fprintf(stderr, "  partition: registries agree %" PRIu64 " ms later\n", t);

    /* The node that was away returns empty-handed but with "a" still on its disk. */
    node_start(&s, away, 0);
    mesh_db_observe(s.n[away].m, "a", s.now);
    node_flush(&s, away, 0);
    CHECK(run_until_agree(&s, 500, 60000) != UINT64_MAX);
    CHECK(run_until_dbs_agree(&s, 240000) != UINT64_MAX);
    CHECK(s.n[away].saw_db_delete);
    struct { const char *name; int deleted; } want[] = {
        { "a", 1 }, { "b", 1 }, { "c", 0 }, { "d", 0 }, { "e", 0 } };
    for (int i = 0; i < NODES; i++) {
        if (!s.n[i].up) continue;
        for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
            struct mesh_db_info di;
            CHECK(mesh_db_find(s.n[i].m, want[k].name, &di) == 0 && di.deleted == want[k].deleted);
        }
    }
    CHECK_EQ_INT(live_nodes(&s), NODES);
    if (check_case_failed) seed_fail("partition", g_seed);
    sim_free(&s);
}

/* How many up nodes other than j and `lag` list node j (in any state); with all, how many
 * there are. */
static int listed_by_ex(const struct sim *s, int j, int all) {
    int n = 0;
    struct mesh_member_info mi;
    for (int i = 0; i < s->nn; i++)
        if (i != j && i != s->lag && s->n[i].up && !s->n[i].left)
            n += all || mesh_member_find(s->n[i].m, s->n[j].name, &mi) == 0;
    return n;
}
static int listed_by(const struct sim *s, int j) { return listed_by_ex(s, j, 0); }

#define REAP_NODES 64

/* Forgetting members across a mesh (reap_dead_ms 180 s, reap_left_ms 60 s here). One node,
 * the laggard, is configured to forget nobody, so it keeps gossiping and push-pulling stale
 * records of the forgotten. A partition shorter than the reap window heals as before; a
 * crashed node, dead everywhere, is listed until reap_dead_ms after its death and by nobody
 * (but the laggard) after, gets no message from anyone, and stays forgotten through two
 * push-pull periods; a node that left is forgotten after reap_left_ms; the forgotten node
 * restarts, is told of its death, refutes and is alive everywhere again. */
static void test_sim_reap(void) {
    struct sim s;
    sim_init(&s, REAP_NODES, g_seed ^ 0x4444);
    s.cfg.reap_dead_ms = 180000;
    s.cfg.reap_left_ms = 60000;
    s.lag = REAP_NODES - 1;
    sim_boot(&s);
    CHECK(run_until_agree(&s, 500, 120000) != UINT64_MAX);

    uint64_t bound = dead_bound_ms(&s.cfg, REAP_NODES);
    uint64_t t0 = s.now;
    for (int i = REAP_NODES / 2; i < REAP_NODES; i++) s.n[i].group = 1;
    CHECK(run_until_agree(&s, 1000, bound + 30000) != UINT64_MAX);
    for (int i = 0; i < REAP_NODES; i++) s.n[i].group = 0;
    CHECK(run_until_agree(&s, 1000, 120000) != UINT64_MAX);
    CHECK(s.now - t0 < s.cfg.reap_dead_ms);
    if (getenv("CHECK_VERBOSE")) fprintf(stderr, "  reap: partition healed after %" PRIu64 " ms\n", s.now - t0);

    int c = pick_up_node(&s, 1, REAP_NODES - 1);
    node_crash(&s, c);
    uint64_t crashed = s.now;
    CHECK(run_until_agree(&s, 500, bound) != UINT64_MAX);
    sim_run_until(&s, crashed + s.cfg.reap_dead_ms - 1);      /* nobody's timeout is up */
    CHECK_EQ_INT(listed_by(&s, c), listed_by_ex(&s, c, 1));
    sim_run_until(&s, crashed + bound + s.cfg.reap_dead_ms + 1);
    CHECK_EQ_INT(listed_by(&s, c), 0);
    struct mesh_member_info mi;
    CHECK(mesh_member_find(s.n[s.lag].m, s.n[c].name, &mi) == 0 && mi.state == MESH_DEAD);
    for (int i = 0; i < REAP_NODES; i++)
        if (s.n[i].up && i != s.lag) CHECK_EQ_INT(mesh_member_count(s.n[i].m), REAP_NODES - 1);
    /* N = 63: a push-pull period is 2 × 30 s; two of them, with the laggard's stale state. */
    s.watch = c;
    s.watch_sent = 0;
    sim_run_until(&s, s.now + 130000);
    CHECK_EQ_INT(listed_by(&s, c), 0);
    CHECK_EQ_INT(s.watch_sent, 0);
    CHECK(views_agree(&s, 1));

    int l = pick_up_node(&s, 1, REAP_NODES - 1);
    mesh_leave(s.n[l].m, s.now);
    node_flush(&s, l, 0);
    s.n[l].left = 1;
    uint64_t tl = s.now;
    while (!mesh_leave_done(s.n[l].m) && s.now - tl < 10000) sim_run_until(&s, s.now + 100);
    node_crash(&s, l);
    s.n[l].left = 1;
    CHECK(run_until_agree(&s, 200, 30000) != UINT64_MAX);
    CHECK_EQ_INT(listed_by(&s, l), listed_by_ex(&s, l, 1));
    sim_run_until(&s, s.now + s.cfg.reap_left_ms + 1);
    CHECK_EQ_INT(listed_by(&s, l), 0);
    CHECK(mesh_member_find(s.n[s.lag].m, s.n[l].name, &mi) == 0 && mi.state == MESH_LEFT);

    node_start(&s, c, 0);
    CHECK(run_until_agree(&s, 500, 60000) != UINT64_MAX);
    CHECK_EQ_INT(listed_by(&s, c), listed_by_ex(&s, c, 1));
    CHECK(mesh_member_find(s.n[0].m, s.n[c].name, &mi) == 0 && mi.incarnation > 0);
    if (check_case_failed) seed_fail("reap", g_seed);
    sim_free(&s);
}

/* The registry's merge by itself: later version wins, a tie goes to deleted, recreate works. */
static void test_db_register(void) {
    struct mesh_config cfg;
    mesh_config_default(&cfg);
    cfg.name = "solo";
    cfg.url = "sim://0";
    cfg.secret = SECRET;
    cfg.secret_len = sizeof SECRET;
    struct mesh *m = mesh_new(&cfg, 0);
    struct mesh_db_info di;
    CHECK_EQ_INT(mesh_db_create(m, "x", 0), 0);
    CHECK(mesh_db_find(m, "x", &di) == 0 && !di.deleted && di.version == 1);
    CHECK_EQ_INT(mesh_db_delete(m, "x", 0), 0);
    CHECK(mesh_db_find(m, "x", &di) == 0 && di.deleted && di.version == 2);
    CHECK_EQ_INT(mesh_db_observe(m, "x", 0), 0);     /* a leftover copy does not revive it */
    CHECK(mesh_db_find(m, "x", &di) == 0 && di.deleted);
    struct mesh_event e;
    int saw = 0;
    while (mesh_event_pop(m, &e)) saw += e.type == MESH_EV_DB && e.state == 1;
    CHECK_EQ_INT(saw, 1);
    CHECK_EQ_INT(mesh_db_create(m, "x", 0), 0);       /* a deliberate recreate does */
    CHECK(mesh_db_find(m, "x", &di) == 0 && !di.deleted && di.version == 3);
    CHECK_EQ_INT(mesh_db_create(m, "", 0), MIMEO_EINVAL);
    /* A copy found at start, stamped with the version it was made for. */
    CHECK_EQ_INT(mesh_db_observe_at(m, "y", 5, 0), 0);        /* unknown: that version */
    CHECK(mesh_db_find(m, "y", &di) == 0 && !di.deleted && di.version == 5);
    CHECK_EQ_INT(mesh_db_observe_at(m, "x", 7, 0), 0);        /* newer than live v3 */
    CHECK(mesh_db_find(m, "x", &di) == 0 && !di.deleted && di.version == 7);
    CHECK_EQ_INT(mesh_db_observe_at(m, "x", 4, 0), 0);        /* older: no change */
    CHECK(mesh_db_find(m, "x", &di) == 0 && !di.deleted && di.version == 7);
    CHECK_EQ_INT(mesh_db_delete(m, "x", 0), 0);                /* deleted v8 */
    while (mesh_event_pop(m, &e)) {}
    CHECK_EQ_INT(mesh_db_observe_at(m, "x", 7, 0), 0);        /* a leftover of v7 */
    CHECK(mesh_db_find(m, "x", &di) == 0 && di.deleted && di.version == 8);
    saw = 0;
    while (mesh_event_pop(m, &e)) saw += e.type == MESH_EV_DB && e.state == 1;
    CHECK_EQ_INT(saw, 1);
    CHECK_EQ_INT(mesh_db_observe_at(m, "x", 9, 0), 0);        /* made after that delete */
    CHECK(mesh_db_find(m, "x", &di) == 0 && !di.deleted && di.version == 9);
    mesh_free(m);
}

/* ---- one node, driven by hand ---------------------------------------------------------- */

static struct mesh *solo_new(const char *name) {
    struct mesh_config cfg;
    mesh_config_default(&cfg);
    cfg.name = name;
    cfg.url = "sim://0";
    cfg.secret = SECRET;
    cfg.secret_len = sizeof SECRET;
    cfg.seed = 7;
    return mesh_new(&cfg, 0);
}

/* A GOSSIP message from `from` (sequence seq, stating incarnation inc) carrying the given
 * records. *told (may be NULL): 1 when m answered `from` with a DEAD record about it. */
static int feed_ex(struct mesh *m, const char *from, uint32_t inc, uint64_t seq,
                   const struct mesh_rec *recs, size_t n, uint64_t now, int *told) {
    struct mesh_hdr h;
    memset(&h, 0, sizeof h);
    h.type = MESH_T_GOSSIP;
    h.seq = seq;
    h.incarnation = inc;
    snprintf(h.name, sizeof h.name, "%s", from);
    snprintf(h.url, sizeof h.url, "sim://%s", from);
    struct mesh_wbuf w;
    mesh_wire_begin(&w, 1 << 20, &h);
    for (size_t i = 0; i < n; i++) {
        uint8_t rec[300];
        size_t len = mesh_wire_rec_encode(&recs[i], rec, sizeof rec);
        mesh_wire_add(&w, rec, len);
    }
    mesh_wire_finish(&w, SECRET, sizeof SECRET, (uint16_t)n);
    int rc = mesh_recv(m, w.p, w.len, now);
    free(w.p);
    if (told) *told = 0;
    struct mesh_msg msg;
    while (mesh_out_pop(m, &msg)) {
        struct mesh_hdr a;
        if (told && strcmp(msg.to, h.url) == 0 &&
            mesh_wire_parse(SECRET, sizeof SECRET, msg.data, msg.len, &a) == 0) {
            size_t off = a.rec_off;
            struct mesh_rec r;
            while (mesh_wire_rec_next(msg.data, &a, &off, &r) == 1)
                if (r.kind == MESH_K_DEAD && strcmp(r.name, from) == 0) *told = 1;
        }
        free(msg.data);
    }
    return rc;
}

static int feed(struct mesh *m, const char *from, uint64_t seq, const struct mesh_rec *recs,
                size_t n, uint64_t now) {
    return feed_ex(m, from, 0, seq, recs, n, now, NULL);
}

/* mesh_tick, then answer every ping it sent with the target's ack, so that our own probes
 * never fail and never add accusations of their own to what a test feeds in. */
static void tick_answering(struct mesh *m, uint64_t now) {
    static uint64_t ack_seq = 1000000;
    mesh_tick(m, now);
    struct mesh_msg msg;
    while (mesh_out_pop(m, &msg)) {
        struct mesh_hdr h, a;
        if (mesh_wire_parse(SECRET, sizeof SECRET, msg.data, msg.len, &h) == 0 &&
            h.type == MESH_T_PING) {
            memset(&a, 0, sizeof a);
            a.type = MESH_T_ACK;
            a.seq = ack_seq++;
            a.probe = h.probe;
            snprintf(a.name, sizeof a.name, "%s", h.target);
            snprintf(a.url, sizeof a.url, "%s", msg.to);
            struct mesh_wbuf w;
            mesh_wire_begin(&w, 1400, &a);
            mesh_wire_finish(&w, SECRET, sizeof SECRET, 0);
            mesh_recv(m, w.p, w.len, now);
            free(w.p);
        }
        free(msg.data);
    }
}

static struct mesh_rec rec_of(int kind, const char *name, uint32_t inc, const char *extra) {
    struct mesh_rec r;
    memset(&r, 0, sizeof r);
    r.kind = kind;
    r.incarnation = inc;
    snprintf(r.name, sizeof r.name, "%s", name);
    snprintf(r.extra, sizeof r.extra, "%s", extra);
    return r;
}

static int state_of(const struct mesh *m, const char *name) {
    struct mesh_member_info mi;
    return mesh_member_find(m, name, &mi) == 0 ? mi.state : -1;
}

/* Lifeguard's suspicion: with N = 11 members (self included) min = 4·log10(11)·1 s = 4165
 * ms, max = 6·min = 24990 ms, k = 2 confirmations; the deadline is max with none, max −
 * (ln 2 / ln 3)(max − min) ≈ 11851 ms with one, min with two. A repeated confirmer counts
 * once, and a replayed message is dropped before it could count. */
static void test_suspicion_timeout(void) {
    struct mesh *m = solo_new("self");
    struct mesh_rec alive[10];
    char name[16];
    for (int i = 0; i < 10; i++) {
        snprintf(name, sizeof name, "p%d", i);
        alive[i] = rec_of(MESH_K_ALIVE, name, 0, "sim://x");
    }
    CHECK_EQ_INT(feed(m, "p1", 1, alive, 10, 0), 0);
    CHECK_EQ_INT(mesh_member_count(m), 11);
    struct mesh_rec s = rec_of(MESH_K_SUSPECT, "p9", 0, "p1");
    CHECK_EQ_INT(feed(m, "p1", 2, &s, 1, 0), 0);
    CHECK_EQ_INT(state_of(m, "p9"), MESH_SUSPECT);
    tick_answering(m, 4200);
    CHECK_EQ_INT(state_of(m, "p9"), MESH_SUSPECT);      /* no confirmation: max applies */
    s = rec_of(MESH_K_SUSPECT, "p9", 0, "p2");
    CHECK_EQ_INT(feed(m, "p2", 1, &s, 1, 4300), 0);
    CHECK_EQ_INT(feed(m, "p2", 1, &s, 1, 4301), MIMEO_EINVAL);  /* replay */
    s = rec_of(MESH_K_SUSPECT, "p9", 0, "p2");
    CHECK_EQ_INT(feed(m, "p3", 1, &s, 1, 4400), 0);     /* p2 again, relayed: not new */
    tick_answering(m, 11800);
    CHECK_EQ_INT(state_of(m, "p9"), MESH_SUSPECT);
    tick_answering(m, 11900);
    CHECK_EQ_INT(state_of(m, "p9"), MESH_DEAD);          /* one confirmation: ≈ 11851 ms */

    /* Two confirmations: min, now 4·log10(10)·1 s = 4000 ms since p9 is gone. */
    s = rec_of(MESH_K_SUSPECT, "p8", 0, "p1");
    CHECK_EQ_INT(feed(m, "p1", 3, &s, 1, 20000), 0);
    s = rec_of(MESH_K_SUSPECT, "p8", 0, "p2");
    CHECK_EQ_INT(feed(m, "p2", 2, &s, 1, 20100), 0);
    s = rec_of(MESH_K_SUSPECT, "p8", 0, "p3");
    CHECK_EQ_INT(feed(m, "p3", 2, &s, 1, 20200), 0);
    tick_answering(m, 23900);
    CHECK_EQ_INT(state_of(m, "p8"), MESH_SUSPECT);
    tick_answering(m, 24100);
    CHECK_EQ_INT(state_of(m, "p8"), MESH_DEAD);

    /* A refutation (higher incarnation) clears a suspicion; an older alive does not. */
    s = rec_of(MESH_K_SUSPECT, "p7", 0, "p1");
    CHECK_EQ_INT(feed(m, "p1", 4, &s, 1, 30000), 0);
    s = rec_of(MESH_K_ALIVE, "p7", 0, "sim://x");
    CHECK_EQ_INT(feed(m, "p1", 5, &s, 1, 30001), 0);
    CHECK_EQ_INT(state_of(m, "p7"), MESH_SUSPECT);
    s = rec_of(MESH_K_ALIVE, "p7", 1, "sim://x");
    CHECK_EQ_INT(feed(m, "p1", 6, &s, 1, 30002), 0);
    CHECK_EQ_INT(state_of(m, "p7"), MESH_ALIVE);
    /* Dead stays dead against an alive of the same incarnation. */
    s = rec_of(MESH_K_ALIVE, "p9", 0, "sim://x");
    CHECK_EQ_INT(feed(m, "p1", 7, &s, 1, 30003), 0);
    CHECK_EQ_INT(state_of(m, "p9"), MESH_DEAD);
    mesh_free(m);
}

/* Being suspected (or declared dead) makes a node outbid the accusation. */
static void test_refute(void) {
    struct mesh *m = solo_new("self");
    struct mesh_rec r = rec_of(MESH_K_ALIVE, "p1", 0, "sim://p1");
    CHECK_EQ_INT(feed(m, "p1", 1, &r, 1, 0), 0);
    r = rec_of(MESH_K_SUSPECT, "self", 0, "p1");
    CHECK_EQ_INT(feed(m, "p1", 2, &r, 1, 10), 0);
    struct mesh_member_info mi;
    mesh_member_find(m, "self", &mi);
    CHECK_EQ_INT(mi.state, MESH_ALIVE);
    CHECK_EQ_INT(mi.incarnation, 1);
    r = rec_of(MESH_K_DEAD, "self", 5, "p1");
    CHECK_EQ_INT(feed(m, "p1", 3, &r, 1, 20), 0);
    mesh_member_find(m, "self", &mi);
    CHECK_EQ_INT(mi.incarnation, 6);
    r = rec_of(MESH_K_SUSPECT, "self", 2, "p1");     /* stale: nothing to do */
    CHECK_EQ_INT(feed(m, "p1", 4, &r, 1, 30), 0);
    mesh_member_find(m, "self", &mi);
    CHECK_EQ_INT(mi.incarnation, 6);
    struct mesh_stats st;
    mesh_stats_get(m, &st);
    CHECK_EQ_INT(st.refutes, 2);
    mesh_free(m);
}

/* Forgetting members, by hand: a left member goes after reap_left_ms, a dead one after
 * reap_dead_ms, each with an event; then (while their tombstones last, as long again) records about them at the incarnation they were
 * buried at (alive, suspect, dead, left), from others or replayed from themselves, change
 * nothing; a restart of theirs speaking at that incarnation is told it is dead (so it
 * refutes); a higher incarnation, relayed or its own, brings it back. */
static void test_reap(void) {
    struct mesh_config cfg;
    mesh_config_default(&cfg);
    CHECK_EQ_INT(cfg.reap_dead_ms, 86400000);
    CHECK_EQ_INT(cfg.reap_left_ms, 86400000);
    cfg.name = "self";
    cfg.url = "sim://0";
    cfg.secret = SECRET;
    cfg.secret_len = sizeof SECRET;
    cfg.seed = 7;
    cfg.reap_dead_ms = 60000;
    cfg.reap_left_ms = 40000;
    struct mesh *m = mesh_new(&cfg, 0);
    struct mesh_rec r[5];
    r[0] = rec_of(MESH_K_ALIVE, "p1", 0, "sim://p1");
    r[1] = rec_of(MESH_K_ALIVE, "x", 2, "sim://x");
    r[2] = rec_of(MESH_K_ALIVE, "y", 0, "sim://y");
    CHECK_EQ_INT(feed(m, "p1", 1, r, 3, 0), 0);
    CHECK_EQ_INT(feed_ex(m, "x", 2, 100, NULL, 0, 500, NULL), 0);  /* x speaks, seq 100 */
    CHECK_EQ_INT(mesh_member_count(m), 4);
    r[0] = rec_of(MESH_K_DEAD, "x", 2, "p1");
    r[1] = rec_of(MESH_K_LEFT, "y", 0, "");
    CHECK_EQ_INT(feed(m, "p1", 2, r, 2, 1000), 0);
    CHECK_EQ_INT(state_of(m, "x"), MESH_DEAD);
    CHECK_EQ_INT(state_of(m, "y"), MESH_LEFT);
    CHECK_EQ_INT(mesh_next_deadline(m) <= 41000, 1);

    struct mesh_event e;
    while (mesh_event_pop(m, &e)) {}
    tick_answering(m, 40999);
    CHECK_EQ_INT(state_of(m, "y"), MESH_LEFT);
    tick_answering(m, 41000);
    CHECK_EQ_INT(state_of(m, "y"), -1);
    CHECK_EQ_INT(state_of(m, "x"), MESH_DEAD);
    int reaped = 0;
    while (mesh_event_pop(m, &e))
        reaped += e.type == MESH_EV_REAPED && strcmp(e.name, "y") == 0 && e.state == MESH_LEFT;
    CHECK_EQ_INT(reaped, 1);
    tick_answering(m, 60999);
    CHECK_EQ_INT(state_of(m, "x"), MESH_DEAD);
    tick_answering(m, 61000);
    CHECK_EQ_INT(state_of(m, "x"), -1);
    CHECK_EQ_INT(mesh_member_count(m), 2);
    CHECK_EQ_INT(state_of(m, "p1"), MESH_ALIVE);

    /* Stale records from a member that still lists them. */
    r[0] = rec_of(MESH_K_ALIVE, "x", 2, "sim://x");
    r[1] = rec_of(MESH_K_SUSPECT, "x", 2, "p1");
    r[2] = rec_of(MESH_K_DEAD, "x", 2, "p1");
    r[3] = rec_of(MESH_K_LEFT, "y", 0, "");
    r[4] = rec_of(MESH_K_ALIVE, "y", 0, "sim://y");
    CHECK_EQ_INT(feed(m, "p1", 5000000, r, 5, 62000), 0);
    CHECK_EQ_INT(state_of(m, "x"), -1);
    CHECK_EQ_INT(state_of(m, "y"), -1);
    CHECK_EQ_INT(mesh_member_count(m), 2);

    /* x's old message replayed: dropped as a replay, though x is no longer a member. */
    struct mesh_stats st0, st1;
    mesh_stats_get(m, &st0);
    int told = 0;
    CHECK_EQ_INT(feed_ex(m, "x", 2, 100, NULL, 0, 62500, &told), MIMEO_EINVAL);
    mesh_stats_get(m, &st1);
    CHECK_EQ_INT(st1.replayed, st0.replayed + 1);
    CHECK_EQ_INT(told, 0);

    /* x restarted: a fresh sequence but incarnation 0 ≤ 2: not re-added, told it is dead. */
    CHECK_EQ_INT(feed_ex(m, "x", 0, 1000, NULL, 0, 63000, &told), 0);
    CHECK_EQ_INT(told, 1);
    CHECK_EQ_INT(state_of(m, "x"), -1);
    /* Its refutation, relayed by p1: x is back. */
    r[0] = rec_of(MESH_K_ALIVE, "x", 3, "sim://x");
    CHECK_EQ_INT(feed(m, "p1", 5000001, r, 1, 63500), 0);
    CHECK_EQ_INT(state_of(m, "x"), MESH_ALIVE);
    struct mesh_member_info mi;
    CHECK(mesh_member_find(m, "x", &mi) == 0 && mi.incarnation == 3);
    /* x's replay window came back with it. */
    CHECK_EQ_INT(feed_ex(m, "x", 3, 1000, NULL, 0, 63600, NULL), MIMEO_EINVAL);
    /* y speaks itself at a higher incarnation than it left at: back, nothing to tell. */
    CHECK_EQ_INT(feed_ex(m, "y", 1, 9000, NULL, 0, 64000, &told), 0);
    CHECK_EQ_INT(told, 0);
    CHECK_EQ_INT(state_of(m, "y"), MESH_ALIVE);
    CHECK_EQ_INT(mesh_member_count(m), 4);
    mesh_free(m);
}

/* Joining an unreachable seed: retries with a doubling delay up to the cap, each announced. */
static void test_join_backoff(void) {
    struct mesh *m = solo_new("lonely");
    const char *seed = "sim://nowhere";
    CHECK_EQ_INT(mesh_join(m, &seed, 1, 0), 0);
    uint64_t delays[8];
    int nd = 0, syncs = 0;
    for (uint64_t t = 0; t <= 120000 && nd < 8; t += 50) {
        mesh_tick(m, t);
        struct mesh_msg msg;
        while (mesh_out_pop(m, &msg)) {
            syncs += msg.stream && strcmp(msg.to, seed) == 0;
            free(msg.data);
        }
        struct mesh_event e;
        while (mesh_event_pop(m, &e))
            if (e.type == MESH_EV_JOIN_RETRY && nd < 8) delays[nd++] = e.delay_ms;
    }
    CHECK(nd >= 5);
    CHECK(syncs >= nd + 1);
    if (nd >= 5) {
        CHECK_EQ_INT(delays[0], 2000);
        CHECK_EQ_INT(delays[1], 4000);
        CHECK_EQ_INT(delays[3], 16000);
        CHECK_EQ_INT(delays[4], 30000);
    }
    mesh_free(m);
}

/* ---- push-pull carries the registry's digest ------------------------------------------ */

static struct mesh *pp_node(const char *name, const char *url) {
    struct mesh_config cfg;
    mesh_config_default(&cfg);
    cfg.name = name;
    cfg.url = url;
    cfg.secret = SECRET;
    cfg.secret_len = sizeof SECRET;
    cfg.seed = 11;
    return mesh_new(&cfg, 0);
}

struct pp_count {
    int msgs, dbrecs;
    size_t bytes;
};

/* Delivers the stream messages `from` queued for to_url to `to` (datagrams are dropped, so
 * only push-pull moves state); counts them, their bytes and their database records. */
static void pp_move(struct mesh *from, struct mesh *to, const char *to_url, uint64_t now,
                    struct pp_count *c) {
    struct mesh_msg msg;
    while (mesh_out_pop(from, &msg)) {
        struct mesh_hdr h;
        if (msg.stream && strcmp(msg.to, to_url) == 0 &&
            mesh_wire_parse(SECRET, sizeof SECRET, msg.data, msg.len, &h) == 0) {
            size_t off = h.rec_off;
            struct mesh_rec r;
            while (mesh_wire_rec_next(msg.data, &h, &off, &r) == 1) c->dbrecs += r.kind == MESH_K_DB;
            c->msgs++;
            c->bytes += msg.len;
            CHECK_EQ_INT(mesh_recv(to, msg.data, msg.len, now), 0);
        }
        free(msg.data);
    }
}

static struct pp_count pp_exchange(struct mesh *a, struct mesh *b, uint64_t now) {
    struct pp_count c = { 0 };
    const char *url = "sim://b";
    CHECK_EQ_INT(mesh_join(a, &url, 1, now), 0);       /* a push-pull to b, at once */
    for (int i = 0; i < 4; i++) {
        pp_move(a, b, "sim://b", now, &c);
        pp_move(b, a, "sim://a", now, &c);
    }
    return c;
}

/* Equal registries: request and answer carry members and the digest, not one database
 * entry (the digest replaced 200 of them). Different registries: the answer is the whole
 * registry with a request for the other's, which follows; both end with the union. */
static void test_pushpull_digest(void) {
    struct mesh *a = pp_node("a", "sim://a"), *b = pp_node("b", "sim://b");
    char name[32];
    for (int i = 0; i < 200; i++) {
        snprintf(name, sizeof name, "db%03d", i);
        CHECK_EQ_INT(mesh_db_create(a, name, 0), 0);
        CHECK_EQ_INT(mesh_db_create(b, name, 0), 0);
    }
    CHECK(mesh_db_digest(a) == mesh_db_digest(b));
    struct pp_count c = pp_exchange(a, b, 1);
    CHECK_EQ_INT(c.msgs, 2);
    CHECK_EQ_INT(c.dbrecs, 0);
    CHECK(c.bytes < 600);
    struct mesh_member_info mi;
    CHECK(mesh_member_find(a, "b", &mi) == 0 && mi.state == MESH_ALIVE);
    CHECK(mesh_member_find(b, "a", &mi) == 0 && mi.state == MESH_ALIVE);

    CHECK_EQ_INT(mesh_db_create(a, "only-a", 2), 0);
    CHECK_EQ_INT(mesh_db_delete(b, "db007", 2), 0);
    CHECK(mesh_db_digest(a) != mesh_db_digest(b));
    c = pp_exchange(a, b, 3);
    CHECK_EQ_INT(c.msgs, 3);
    CHECK_EQ_INT(c.dbrecs, 200 + 201);      /* b's registry, then a's (the union) */
    CHECK(mesh_db_digest(a) == mesh_db_digest(b));
    struct mesh_db_info di;
    CHECK(mesh_db_find(a, "db007", &di) == 0 && di.deleted);
    CHECK(mesh_db_find(b, "only-a", &di) == 0 && !di.deleted);

    /* Back in step: members only again. */
    c = pp_exchange(a, b, 4);
    CHECK_EQ_INT(c.msgs, 2);
    CHECK_EQ_INT(c.dbrecs, 0);
    mesh_free(a);
    mesh_free(b);
}

int main(int argc, char **argv) {
    const char *env = getenv("SEED");
    g_seed = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
    const char *only = argc > 1 ? argv[1] : NULL;
    fprintf(stderr, "test_mesh: SEED=%" PRIu64 "\n", g_seed);
#define SCEN(name, fn) if (!only || strcmp(only, name) == 0) RUN(fn)
    SCEN("wire", test_wire_roundtrip);
    SCEN("wire", test_wire_tamper);
    SCEN("db", test_db_register);
    SCEN("db", test_pushpull_digest);
    SCEN("solo", test_suspicion_timeout);
    SCEN("solo", test_refute);
    SCEN("solo", test_join_backoff);
    SCEN("solo", test_reap);
    SCEN("lifecycle", test_sim_lifecycle);
    SCEN("loss", test_sim_loss);
    SCEN("partition", test_sim_partition);
    SCEN("reap", test_sim_reap);
    if (check_failed) fprintf(stderr, "rerun with: SEED=%" PRIu64 " %s\n", g_seed, argv[0]);
    return check_report();
}
