/* mesh core: the SWIM/Lifeguard membership state machine and the gossiped database registry.
 * Time, messages in and messages out all pass through the calls in mesh.h; nothing here reads
 * a clock or touches a socket, so the simulator in tests/unit/test_mesh.c drives exactly this
 * code. Protocol reasoning follows memberlist (HashiCorp) and the Lifeguard paper. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mimeo.h"
#include "mesh.h"
#include "../common/buf.h"

#define MAX_CONFIRM 8          /* distinct confirmations counted per suspicion */
#define MAX_RELAYS 64          /* ping-reqs relayed at once; more are refused */
#define MAX_BCAST 1024         /* queued piggyback updates; the most-sent are dropped first */
#define EVENT_RING 4096
#define REC_MAX 288
#define LEAVE_DIRECT 8         /* members told directly on leave, besides gossip */
#define MAX_TOMBS 4096         /* reaped members remembered; the soonest to expire go first */

enum { CLS_MEMBER = 0, CLS_DB = 1 };

/* Replay window: highest sequence seen from a sender and a bitmap of the 64 below. */
struct seqwin {
    int valid;
    uint64_t max, bits;
};

struct member {
    char name[MESH_NAME_MAX + 1];
    char url[MESH_URL_MAX + 1];
    uint64_t hash;
    uint32_t inc;
    int state;
    uint64_t state_since, last_heard;
    struct seqwin win;
    /* Lifeguard suspicion: the deadline moves earlier as distinct members confirm. */
    uint64_t susp_start, susp_deadline, susp_min, susp_max;
    uint32_t susp_k, susp_n;
    uint64_t susp_seen[MAX_CONFIRM + 1];
};

/* A reaped member: the incarnation it was last known dead or left at, so that a stale record
 * of it still circulating cannot bring it back, and its replay window, so that an old message
 * of its own cannot either. Kept as long again as the member was kept after its death. */
struct tomb {
    char name[MESH_NAME_MAX + 1];
    uint32_t inc;
    struct seqwin win;
    uint64_t until;
};

struct dbent {
    char name[MESH_DB_MAX + 1];
    uint64_t hash;
    uint64_t version;
    int deleted;
};

struct bcast {
    int cls;
    char name[MESH_DB_MAX + 1];
    uint8_t data[REC_MAX];
    size_t len;
    uint32_t transmits;
    uint64_t id;
};

/* A ping-req we are carrying out for someone else: our probe id, theirs, where to answer. */
struct relay {
    uint32_t our_id, their_id;
    char to[MESH_URL_MAX + 1];
    uint64_t deadline;
};

struct probe {
    int active, acked, indirect_sent;
    uint32_t id;
    size_t target;
    uint64_t direct_deadline, end;
    uint32_t nacks, expected_nacks;
};

/* Open-addressing index of names to array positions (members or dbs). */
struct index {
    int32_t *slot;
    size_t cap;
};

struct mesh {
    struct mesh_config cfg;
    uint8_t *secret;
    uint64_t rng;
    uint64_t seq;
    uint32_t probe_ctr;
    int leaving;

    struct member *mem;
    size_t nmem, capmem;
    struct index midx;
    size_t *order;              /* randomised round-robin probe order (member positions) */
    size_t norder, order_pos;
    size_t nsuspect;
    size_t *slist;              /* positions of the suspect members, nsuspect of them */
    size_t nlive;               /* members alive or suspect, self included */

    struct tomb *tombs;
    size_t ntomb, captomb;
    uint64_t next_reap;         /* earliest reap or tombstone expiry due */

    struct dbent *db;
    size_t ndb, capdb;
    struct index didx;

    struct bcast *bq;
    size_t nbq, capbq;
    uint64_t bcast_id;

    struct relay relays[MAX_RELAYS];
    size_t nrelay;

    struct probe probe;
    uint32_t awareness;

    uint64_t next_probe, next_gossip, next_pushpull, next_reconnect, next_join;
    uint64_t join_backoff;
    char **seeds;
    size_t nseeds;

    struct mesh_msg *out;
    size_t nout, capout, out_head;

    struct mesh_event events[EVENT_RING];
    size_t ev_head, ev_count;

    struct mesh_stats stats;
};

const char *mesh_state_name(int state) {
    switch (state) {
    case MESH_ALIVE: return "alive";
    case MESH_SUSPECT: return "suspect";
    case MESH_DEAD: return "dead";
    case MESH_LEFT: return "left";
    default: return "unknown";
    }
}

void mesh_config_default(struct mesh_config *c) {
    memset(c, 0, sizeof *c);
    c->probe_interval_ms = 1000;
    c->probe_timeout_ms = 500;
    c->indirect_checks = 3;
    c->gossip_interval_ms = 200;
    c->gossip_nodes = 3;
    c->gossip_to_dead_ms = 30000;
    c->retransmit_mult = 4;
    c->suspicion_mult = 4;
    c->suspicion_max_mult = 6;
    c->pushpull_interval_ms = 30000;
    c->reconnect_interval_ms = 10000;
    c->reap_dead_ms = 86400000;
    c->reap_left_ms = 86400000;
    c->join_retry_max_ms = 30000;
    c->awareness_max = 8;
    c->max_packet = 1400;
}

/* ---- small helpers ---------------------------------------------------------------------- */

static uint64_t rnd(struct mesh *m) {
    /* splitmix64: enough for peer choice, and reproducible from the configured seed. */
    uint64_t z = (m->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static size_t rnd_below(struct mesh *m, size_t n) {
    return n ? (size_t)(rnd(m) % n) : 0;
}

/* Natural logarithm for x > 0, to about 1e-12, so the core needs no libm: x = f·2^e with f in
 * [1,2), ln f = 2·atanh((f-1)/(f+1)) as a short series. */
static double mesh_ln(double x) {
    if (x <= 0) return 0;
    int e = 0;
    while (x >= 2) { x /= 2; e++; }
    while (x < 1) { x *= 2; e--; }
    double t = (x - 1) / (x + 1), t2 = t * t, sum = 0, term = t;
    for (int k = 1; k < 40; k += 2) { sum += term / k; term *= t2; }
    return 2 * sum + e * 0.69314718055994530942;
}

static double mesh_log10(double x) { return mesh_ln(x) / 2.30258509299404568402; }
static double mesh_log2(double x) { return mesh_ln(x) / 0.69314718055994530942; }

static double mesh_ceil(double x) {
    double t = (double)(int64_t)x;
    return t < x ? t + 1 : t;
}

static uint64_t name_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    /* FNV's low bits are weak for names like n1, n2…; the index uses the low bits. */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h ? h : 1;
}

static const char *mem_name(const struct mesh *m, size_t i) { return m->mem[i].name; }
static const char *db_name(const struct mesh *m, size_t i) { return m->db[i].name; }
static uint64_t mem_hash(const struct mesh *m, size_t i) { return m->mem[i].hash; }
static uint64_t db_hash(const struct mesh *m, size_t i) { return m->db[i].hash; }

static long idx_find(const struct mesh *m, const struct index *ix, const char *name, uint64_t h,
                     const char *(*get)(const struct mesh *, size_t),
                     uint64_t (*hget)(const struct mesh *, size_t)) {
    if (!ix->cap) return -1;
    for (size_t s = h & (ix->cap - 1);; s = (s + 1) & (ix->cap - 1)) {
        int32_t v = ix->slot[s];
        if (v < 0) return -1;
        if (hget(m, (size_t)v) == h && strcmp(get(m, (size_t)v), name) == 0) return v;
    }
}

/* Makes room for one more entry beside the n present, keeping the index at most half full. */
static int idx_reserve(const struct mesh *m, struct index *ix, size_t n,
                       uint64_t (*hget)(const struct mesh *, size_t)) {
    if (ix->cap && (n + 1) * 2 <= ix->cap) return 0;
    size_t cap = ix->cap ? ix->cap : 16;
    while ((n + 1) * 2 > cap) cap *= 2;
    int32_t *slot = malloc(cap * sizeof *slot);
    if (!slot) return MIMEO_ENOMEM;
    for (size_t i = 0; i < cap; i++) slot[i] = -1;
    for (size_t i = 0; i < n; i++) {
        size_t s = hget(m, i) & (cap - 1);
        while (slot[s] >= 0) s = (s + 1) & (cap - 1);
        slot[s] = (int32_t)i;
    }
    free(ix->slot);
    ix->slot = slot;
    ix->cap = cap;
    return 0;
}

static void idx_put(struct index *ix, uint64_t h, size_t i) {
    size_t s = h & (ix->cap - 1);
    while (ix->slot[s] >= 0) s = (s + 1) & (ix->cap - 1);
    ix->slot[s] = (int32_t)i;
}

static struct member *mem_find(const struct mesh *m, const char *name) {
    long i = idx_find(m, &m->midx, name, name_hash(name), mem_name, mem_hash);
    return i < 0 ? NULL : &m->mem[i];
}

static struct dbent *db_find(const struct mesh *m, const char *name) {
    long i = idx_find(m, &m->didx, name, name_hash(name), db_name, db_hash);
    return i < 0 ? NULL : &m->db[i];
}

static void event_push(struct mesh *m, int type, const char *name, int state, uint32_t inc,
                       uint64_t delay) {
    if (m->ev_count == EVENT_RING) return;
    struct mesh_event *e = &m->events[(m->ev_head + m->ev_count) % EVENT_RING];
    memset(e, 0, sizeof *e);
    e->type = type;
    snprintf(e->name, sizeof e->name, "%s", name);
    e->state = state;
    e->incarnation = inc;
    e->delay_ms = delay;
    m->ev_count++;
}

/* Members that count toward N: everyone not dead or gone, self included. */
static size_t live_count(const struct mesh *m) {
    return m->nlive;
}

static uint64_t scaled(const struct mesh *m, uint64_t ms) {
    return ms * (m->awareness + 1);
}

/* Lifeguard local health: failed probes and refutations mean *we* may be the slow one, so
 * we probe less eagerly (fewer false accusations); successes bring the score back down. */
static void awareness_add(struct mesh *m, int delta) {
    long v = (long)m->awareness + delta;
    long max = m->cfg.awareness_max ? (long)m->cfg.awareness_max - 1 : 0;
    if (v < 0) v = 0;
    if (v > max) v = max;
    m->awareness = (uint32_t)v;
}

/* ---- broadcast queue (piggybacked updates) ---------------------------------------------- */

static uint32_t retransmit_limit(const struct mesh *m) {
    double n = (double)live_count(m);
    return m->cfg.retransmit_mult * (uint32_t)mesh_ceil(mesh_log10(n + 1));
}

static void bcast_rec(struct mesh *m, const struct mesh_rec *r) {
    int cls = r->kind == MESH_K_DB ? CLS_DB : CLS_MEMBER;
    struct bcast *b = NULL;
    /* A newer update about the same member or db replaces the queued one: only the latest
     * state is worth retransmitting. */
    for (size_t i = 0; i < m->nbq; i++)
        if (m->bq[i].cls == cls && strcmp(m->bq[i].name, r->name) == 0) { b = &m->bq[i]; break; }
    if (!b) {
        if (m->nbq == MAX_BCAST) {
            size_t worst = 0;
            for (size_t i = 1; i < m->nbq; i++)
                if (m->bq[i].transmits > m->bq[worst].transmits) worst = i;
            b = &m->bq[worst];
        } else {
            if (ARRAY_GROW(m->bq, m->capbq, m->nbq + 1)) return;
            b = &m->bq[m->nbq++];
        }
    }
    b->cls = cls;
    snprintf(b->name, sizeof b->name, "%s", r->name);
    b->len = mesh_wire_rec_encode(r, b->data, sizeof b->data);
    b->transmits = 0;
    b->id = ++m->bcast_id;
}

static void bcast_member(struct mesh *m, int kind, const struct member *mm, const char *from) {
    struct mesh_rec r;
    memset(&r, 0, sizeof r);
    r.kind = kind;
    r.incarnation = mm->inc;
    snprintf(r.name, sizeof r.name, "%s", mm->name);
    snprintf(r.extra, sizeof r.extra, "%s", kind == MESH_K_ALIVE ? mm->url : from);
    bcast_rec(m, &r);
}

static int bcast_cmp(const void *a, const void *b) {
    const struct bcast *x = a, *y = b;
    if (x->transmits != y->transmits) return x->transmits < y->transmits ? -1 : 1;
    return x->id > y->id ? -1 : x->id < y->id;
}

/* Fills w with the least-sent updates first (newest first among equals), counts each one's
 * transmissions, and retires those sent λ·log N times. Returns the number added. */
static uint16_t piggyback(struct mesh *m, struct mesh_wbuf *w) {
    if (!m->nbq) return 0;
    qsort(m->bq, m->nbq, sizeof *m->bq, bcast_cmp);
    uint32_t limit = retransmit_limit(m);
    uint16_t n = 0;
    for (size_t i = 0; i < m->nbq && n < 0xffff; i++) {
        if (!m->bq[i].len) continue;
        if (mesh_wire_add(w, m->bq[i].data, m->bq[i].len)) {
            m->bq[i].transmits++;
            n++;
        }
    }
    size_t j = 0;
    for (size_t i = 0; i < m->nbq; i++)
        if (m->bq[i].transmits < limit && m->bq[i].len) m->bq[j++] = m->bq[i];
    m->nbq = j;
    return n;
}

/* ---- sending ---------------------------------------------------------------------------- */

static void out_push(struct mesh *m, const char *to, int stream, uint8_t *data, size_t len) {
    if (m->out_head == m->nout) m->out_head = m->nout = 0;
    if (m->nout == m->capout) {
        if (m->out_head > 0) {
            memmove(m->out, m->out + m->out_head, (m->nout - m->out_head) * sizeof *m->out);
            m->nout -= m->out_head;
            m->out_head = 0;
        }
        if (ARRAY_GROW(m->out, m->capout, m->nout + 1)) { free(data); return; }
    }
    struct mesh_msg *msg = &m->out[m->nout++];
    snprintf(msg->to, sizeof msg->to, "%s", to);
    msg->stream = stream;
    msg->data = data;
    msg->len = len;
    m->stats.msgs_sent++;
    m->stats.bytes_sent += len;
}

static void member_rec(const struct member *mm, const char *self, struct mesh_rec *r) {
    memset(r, 0, sizeof *r);
    static const int kinds[] = { MESH_K_ALIVE, MESH_K_SUSPECT, MESH_K_DEAD, MESH_K_LEFT };
    r->kind = kinds[mm->state];
    r->incarnation = mm->inc;
    snprintf(r->name, sizeof r->name, "%s", mm->name);
    if (mm->state == MESH_ALIVE) snprintf(r->extra, sizeof r->extra, "%s", mm->url);
    else if (mm->state != MESH_LEFT) snprintf(r->extra, sizeof r->extra, "%s", self);
}

/* Builds one message and queues it. `first` (may be NULL) goes before the piggybacked
 * updates (Lifeguard's buddy system: a suspect learns of its suspicion from the probe). */
static void send_msg(struct mesh *m, const char *to, struct mesh_hdr *h,
                     const struct mesh_rec *first) {
    h->seq = m->seq++;
    h->incarnation = m->mem[0].inc;
    snprintf(h->name, sizeof h->name, "%s", m->mem[0].name);
    snprintf(h->url, sizeof h->url, "%s", m->mem[0].url);
    int stream = h->type == MESH_T_SYNC;
    struct mesh_wbuf w;
    mesh_wire_begin(&w, stream ? MESH_STREAM_MAX : m->cfg.max_packet, h);
    uint16_t n = 0;
    uint8_t rec[REC_MAX];
    if (first) {
        size_t len = mesh_wire_rec_encode(first, rec, sizeof rec);
        if (len && mesh_wire_add(&w, rec, len)) n++;
    }
    if (stream) {
        struct mesh_rec r;
        for (size_t i = 0; i < m->nmem && n < 0xffff; i++) {
            member_rec(&m->mem[i], m->mem[0].name, &r);
            size_t len = mesh_wire_rec_encode(&r, rec, sizeof rec);
            if (len && mesh_wire_add(&w, rec, len)) n++;
        }
        for (size_t i = 0; !(h->flags & MESH_F_DIGEST) && i < m->ndb && n < 0xffff; i++) {
            memset(&r, 0, sizeof r);
            r.kind = MESH_K_DB;
            r.version = m->db[i].version;
            r.deleted = m->db[i].deleted;
            snprintf(r.name, sizeof r.name, "%s", m->db[i].name);
            size_t len = mesh_wire_rec_encode(&r, rec, sizeof rec);
            if (len && mesh_wire_add(&w, rec, len)) n++;
        }
    } else {
        n = (uint16_t)(n + piggyback(m, &w));
    }
    if (mesh_wire_finish(&w, m->secret, m->cfg.secret_len, n) != 0) {
        free(w.p);
        return;
    }
    out_push(m, to, stream, w.p, w.len);
}

static void send_simple(struct mesh *m, const char *to, int type, int flags, uint32_t probe) {
    struct mesh_hdr h;
    memset(&h, 0, sizeof h);
    h.type = type;
    h.flags = flags;
    h.probe = probe;
    send_msg(m, to, &h, NULL);
}

/* Up to k distinct random members matching `want` (a bitmask of 1 << state), never self nor
 * `skip`; positions into out. */
static int pick_ok(const struct mesh *m, size_t i, unsigned want, size_t skip, uint64_t now,
                   int recent_dead) {
    if (i == 0 || i == skip) return 0;
    const struct member *mm = &m->mem[i];
    if ((want >> mm->state) & 1) return 1;
    return recent_dead && mm->state == MESH_DEAD && now - mm->state_since < m->cfg.gossip_to_dead_ms;
}

static size_t pick(struct mesh *m, unsigned want, size_t skip, size_t k, size_t *out,
                   uint64_t now, int recent_dead) {
    /* Usually most members qualify: draw at random and retry, which is O(k), and fall back
     * to a full scan only when draws keep missing (few candidates). */
    size_t got = 0;
    for (size_t tries = 0; got < k && tries < 4 * k + 8 && m->nmem > 1; tries++) {
        size_t i = 1 + rnd_below(m, m->nmem - 1), dup = 0;
        for (size_t j = 0; j < got; j++) dup |= out[j] == i;
        if (!dup && pick_ok(m, i, want, skip, now, recent_dead)) out[got++] = i;
    }
    if (got == k) return got;
    size_t *cand = malloc(m->nmem * sizeof *cand);
    if (!cand) return 0;
    size_t n = 0;
    for (size_t i = 1; i < m->nmem; i++)
        if (pick_ok(m, i, want, skip, now, recent_dead)) cand[n++] = i;
    got = 0;
    for (; got < k && got < n; got++) {
        size_t j = got + rnd_below(m, n - got);
        size_t t = cand[got];
        cand[got] = cand[j];
        cand[j] = t;
        out[got] = cand[got];
    }
    free(cand);
    return got;
}

/* ---- state changes ---------------------------------------------------------------------- */

static void suspicion_start(struct mesh *m, struct member *mm, const char *accuser, uint64_t now) {
    size_t n = live_count(m);
    uint32_t k = m->cfg.suspicion_mult > 2 ? m->cfg.suspicion_mult - 2 : 0;
    if (k > MAX_CONFIRM) k = MAX_CONFIRM;
    if (n < 2 || n - 2 < k) k = 0;
    double scale = mesh_log10((double)(n > 1 ? n : 1));
    if (scale < 1) scale = 1;
    uint64_t min = (uint64_t)(m->cfg.suspicion_mult * scale * m->cfg.probe_interval_ms);
    mm->susp_min = min;
    mm->susp_max = min * m->cfg.suspicion_max_mult;
    mm->susp_k = k;
    mm->susp_n = 0;
    mm->susp_seen[0] = name_hash(accuser);
    mm->susp_start = now;
    mm->susp_deadline = now + (k ? mm->susp_max : min);
}

/* Lifeguard: each independent confirmation pulls the deadline in, logarithmically from the
 * max timeout down to the min once k members agree. 1 when the confirmation was new. */
static int suspicion_confirm(struct member *mm, const char *from) {
    if (mm->susp_n >= mm->susp_k) return 0;
    uint64_t h = name_hash(from);
    for (uint32_t i = 0; i <= mm->susp_n; i++)
        if (mm->susp_seen[i] == h) return 0;
    mm->susp_seen[++mm->susp_n] = h;
    double frac = mesh_ln((double)mm->susp_n + 1) / mesh_ln((double)mm->susp_k + 1);
    double t = (double)mm->susp_max - frac * (double)(mm->susp_max - mm->susp_min);
    if (t < (double)mm->susp_min) t = (double)mm->susp_min;
    mm->susp_deadline = mm->susp_start + (uint64_t)t;
    return 1;
}

/* ---- forgetting members (Serf's reconnect_timeout and tombstone_timeout) ---------------- */

static uint32_t reap_after(const struct mesh *m, int state) {
    if (state == MESH_DEAD) return m->cfg.reap_dead_ms;
    if (state == MESH_LEFT) return m->cfg.reap_left_ms;
    return 0;
}

static struct tomb *tomb_find(struct mesh *m, const char *name) {
    /* Linear: only consulted for names not in the member table, which is rare. */
    for (size_t i = 0; i < m->ntomb; i++)
        if (strcmp(m->tombs[i].name, name) == 0) return &m->tombs[i];
    return NULL;
}

static void tomb_add(struct mesh *m, const struct member *mm, uint64_t until) {
    struct tomb *t = tomb_find(m, mm->name);
    if (!t && m->ntomb == MAX_TOMBS) {
        size_t first = 0;
        for (size_t i = 1; i < m->ntomb; i++)
            if (m->tombs[i].until < m->tombs[first].until) first = i;
        t = &m->tombs[first];
    }
    if (!t) {
        if (ARRAY_GROW(m->tombs, m->captomb, m->ntomb + 1)) return;
        t = &m->tombs[m->ntomb++];
    }
    snprintf(t->name, sizeof t->name, "%s", mm->name);
    t->inc = mm->inc;
    t->win = mm->win;
    t->until = until;
}

/* Takes member i out of the table, the probe order and the update queue; the last member
 * moves into its place (the caller rebuilds the name index). i is dead or left, so it is
 * neither suspect nor counted live. */
static void member_remove(struct mesh *m, size_t i) {
    size_t last = m->nmem - 1;
    size_t j = 0;
    for (size_t k = 0; k < m->nbq; k++)
        if (!(m->bq[k].cls == CLS_MEMBER && strcmp(m->bq[k].name, m->mem[i].name) == 0))
            m->bq[j++] = m->bq[k];
    m->nbq = j;
    for (size_t k = 0; k < m->norder; k++) {
        if (m->order[k] != i) continue;
        memmove(&m->order[k], &m->order[k + 1], (m->norder - k - 1) * sizeof *m->order);
        m->norder--;
        if (k < m->order_pos) m->order_pos--;
        break;
    }
    if (m->probe.active && m->probe.target == i) m->probe.active = 0;
    if (i != last) {
        m->mem[i] = m->mem[last];
        for (size_t k = 0; k < m->norder; k++)
            if (m->order[k] == last) m->order[k] = i;
        for (size_t k = 0; k < m->nsuspect; k++)
            if (m->slist[k] == last) m->slist[k] = i;
        if (m->probe.target == last) m->probe.target = i;
    }
    m->nmem--;
}

/* Forgets members dead or left for longer than their timeout, expires old tombstones, and
 * works out when to look again. */
static void reap(struct mesh *m, uint64_t now) {
    m->next_reap = MESH_NEVER;
    int removed = 0;
    for (size_t i = 1; i < m->nmem;) {
        struct member *mm = &m->mem[i];
        uint32_t after = reap_after(m, mm->state);
        uint64_t at = mm->state_since + after;
        if (!after || at > now) {
            if (after && at < m->next_reap) m->next_reap = at;
            i++;
            continue;
        }
        tomb_add(m, mm, now + after);
        event_push(m, MESH_EV_REAPED, mm->name, mm->state, mm->inc, 0);
        member_remove(m, i);    /* the last member now sits at i: look at it next */
        removed = 1;
    }
    if (removed) {
        for (size_t s = 0; s < m->midx.cap; s++) m->midx.slot[s] = -1;
        for (size_t i = 0; i < m->nmem; i++) idx_put(&m->midx, m->mem[i].hash, i);
    }
    for (size_t i = 0; i < m->ntomb;) {
        if (m->tombs[i].until <= now) {
            m->tombs[i] = m->tombs[--m->ntomb];
            continue;
        }
        if (m->tombs[i].until < m->next_reap) m->next_reap = m->tombs[i].until;
        i++;
    }
}

static void set_state(struct mesh *m, struct member *mm, int state, uint64_t now) {
    size_t pos = (size_t)(mm - m->mem);
    if (mm->state == MESH_SUSPECT && state != MESH_SUSPECT) {
        for (size_t i = 0; i < m->nsuspect; i++)
            if (m->slist[i] == pos) { m->slist[i] = m->slist[--m->nsuspect]; break; }
    }
    if (mm->state != MESH_SUSPECT && state == MESH_SUSPECT) m->slist[m->nsuspect++] = pos;
    if (mm->state <= MESH_SUSPECT && state > MESH_SUSPECT) m->nlive--;
    if (mm->state > MESH_SUSPECT && state <= MESH_SUSPECT) m->nlive++;
    int changed = mm->state != state;
    mm->state = state;
    if (changed) mm->state_since = now;
    uint32_t after = reap_after(m, state);
    if (changed && after && now + after < m->next_reap) m->next_reap = now + after;
    event_push(m, MESH_EV_MEMBER, mm->name, state, mm->inc, 0);
}

/* We are accused (suspect/dead) or someone holds a newer incarnation of us: outbid it. */
static void refute(struct mesh *m, uint32_t inc) {
    struct member *self = &m->mem[0];
    self->inc = (inc > self->inc ? inc : self->inc) + 1;
    bcast_member(m, MESH_K_ALIVE, self, NULL);
    awareness_add(m, 1);
    m->stats.refutes++;
}

static int member_add(struct mesh *m, const char *name, const char *url, uint32_t inc,
                      uint64_t now) {
    if (m->nmem == m->capmem) {
        size_t cap = m->capmem ? m->capmem * 2 : 16;
        struct member *p = realloc(m->mem, cap * sizeof *p);
        if (!p) return MIMEO_ENOMEM;
        m->mem = p;
        size_t *o = realloc(m->order, cap * sizeof *o);
        if (!o) return MIMEO_ENOMEM;
        m->order = o;
        o = realloc(m->slist, cap * sizeof *o);
        if (!o) return MIMEO_ENOMEM;
        m->slist = o;
        m->capmem = cap;
    }
    if (idx_reserve(m, &m->midx, m->nmem, mem_hash) != 0) return MIMEO_ENOMEM;
    struct member *mm = &m->mem[m->nmem];
    memset(mm, 0, sizeof *mm);
    snprintf(mm->name, sizeof mm->name, "%s", name);
    snprintf(mm->url, sizeof mm->url, "%s", url);
    mm->hash = name_hash(name);
    mm->inc = inc;
    mm->state = MESH_ALIVE;
    mm->state_since = now;
    idx_put(&m->midx, mm->hash, m->nmem);
    m->nlive++;
    /* A newcomer goes to a random place in the probe order, as memberlist does, so that a
     * burst of joins does not make everyone probe the newest member at once. */
    size_t at = rnd_below(m, m->norder + 1);
    m->order[m->norder] = m->order[at];
    m->order[at] = m->nmem;
    m->norder++;
    m->nmem++;
    return 0;
}

static void on_alive(struct mesh *m, const struct mesh_rec *r, uint64_t now) {
    struct member *mm = mem_find(m, r->name);
    if (mm == &m->mem[0]) {
        /* Someone believes in a later life of ours (a message from before our restart). */
        if (!m->leaving && r->incarnation > mm->inc) refute(m, r->incarnation);
        return;
    }
    if (!mm) {
        /* Reaped: only a later life than the one we buried counts; records of that one may
         * circulate for as long as some member still lists it. */
        struct tomb *t = tomb_find(m, r->name);
        if (t && r->incarnation <= t->inc) return;
        struct seqwin win = { 0 };
        if (t) {
            win = t->win;
            *t = m->tombs[--m->ntomb];
        }
        if (member_add(m, r->name, r->extra, r->incarnation, now) != 0) return;
        mm = &m->mem[m->nmem - 1];
        mm->win = win;
        event_push(m, MESH_EV_MEMBER, mm->name, MESH_ALIVE, mm->inc, 0);
        bcast_member(m, MESH_K_ALIVE, mm, NULL);
        return;
    }
    if (r->incarnation <= mm->inc) return;
    mm->inc = r->incarnation;
    snprintf(mm->url, sizeof mm->url, "%s", r->extra);
    set_state(m, mm, MESH_ALIVE, now);
    bcast_member(m, MESH_K_ALIVE, mm, NULL);
}

static void on_suspect(struct mesh *m, const char *name, uint32_t inc, const char *accuser,
                       uint64_t now) {
    struct member *mm = mem_find(m, name);
    if (!mm || inc < mm->inc || mm->state >= MESH_DEAD) return;
    if (mm == &m->mem[0]) {
        if (!m->leaving) refute(m, inc);
        return;
    }
    if (mm->state == MESH_SUSPECT) {
        /* Re-gossip a new confirmation so others can count it too. */
        if (suspicion_confirm(mm, accuser)) {
            struct mesh_rec r;
            memset(&r, 0, sizeof r);
            r.kind = MESH_K_SUSPECT;
            r.incarnation = inc;
            snprintf(r.name, sizeof r.name, "%s", name);
            snprintf(r.extra, sizeof r.extra, "%s", accuser);
            bcast_rec(m, &r);
        }
        return;
    }
    mm->inc = inc;
    suspicion_start(m, mm, accuser, now);
    set_state(m, mm, MESH_SUSPECT, now);
    m->stats.suspicions++;
    bcast_member(m, MESH_K_SUSPECT, mm, accuser);
}

static void on_dead(struct mesh *m, const char *name, uint32_t inc, const char *accuser,
                    int left, uint64_t now) {
    struct member *mm = mem_find(m, name);
    if (!mm || inc < mm->inc) return;
    if (mm->state == MESH_LEFT || (mm->state == MESH_DEAD && !left)) return;
    if (mm == &m->mem[0]) {
        if (!m->leaving) refute(m, inc);
        return;
    }
    mm->inc = inc;
    set_state(m, mm, left ? MESH_LEFT : MESH_DEAD, now);
    bcast_member(m, left ? MESH_K_LEFT : MESH_K_DEAD, mm, accuser);
}

static int db_apply(struct mesh *m, const char *name, uint64_t version, int deleted, int local) {
    struct dbent *d = db_find(m, name);
    if (!d) {
        if (ARRAY_GROW(m->db, m->capdb, m->ndb + 1)) return MIMEO_ENOMEM;
        if (idx_reserve(m, &m->didx, m->ndb, db_hash) != 0) return MIMEO_ENOMEM;
        d = &m->db[m->ndb];
        memset(d, 0, sizeof *d);
        snprintf(d->name, sizeof d->name, "%s", name);
        d->hash = name_hash(name);
        idx_put(&m->didx, d->hash, m->ndb);
        m->ndb++;
    } else if (version < d->version || (version == d->version && (d->deleted || !deleted))) {
        return 0;   /* older, or the same; a tie between live and deleted goes to deleted */
    }
    d->version = version;
    d->deleted = deleted;
    /* A change made here needs no event: the caller already did it on disk. */
    if (!local) event_push(m, MESH_EV_DB, name, deleted, 0, 0);
    struct mesh_rec r;
    memset(&r, 0, sizeof r);
    r.kind = MESH_K_DB;
    r.version = version;
    r.deleted = deleted;
    snprintf(r.name, sizeof r.name, "%s", name);
    bcast_rec(m, &r);
    return 0;
}

static void apply_rec(struct mesh *m, const struct mesh_rec *r, int from_sync, uint64_t now) {
    switch (r->kind) {
    case MESH_K_ALIVE:
        on_alive(m, r, now);
        break;
    case MESH_K_SUSPECT:
        on_suspect(m, r->name, r->incarnation, r->extra, now);
        break;
    case MESH_K_DEAD:
        /* A full-state exchange only suspects what the other side calls dead, so that a
         * member wrongly declared dead on one side gets its chance to refute (memberlist). */
        if (from_sync) on_suspect(m, r->name, r->incarnation, r->extra, now);
        else on_dead(m, r->name, r->incarnation, r->extra, 0, now);
        break;
    case MESH_K_LEFT:
        on_dead(m, r->name, r->incarnation, r->name, 1, now);
        break;
    case MESH_K_DB:
        db_apply(m, r->name, r->version, r->deleted, 0);
        break;
    }
}

/* ---- lifecycle -------------------------------------------------------------------------- */

struct mesh *mesh_new(const struct mesh_config *cfg, uint64_t now) {
    if (!cfg->name || !cfg->url || !cfg->secret || cfg->secret_len < 16) return NULL;
    size_t nl = strlen(cfg->name), ul = strlen(cfg->url);
    if (nl == 0 || nl > MESH_NAME_MAX || ul == 0 || ul > MESH_URL_MAX) return NULL;
    if (!cfg->probe_interval_ms || !cfg->gossip_interval_ms || cfg->max_packet < 512) return NULL;
    struct mesh *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->cfg = *cfg;
    m->secret = malloc(cfg->secret_len);
    if (!m->secret) { free(m); return NULL; }
    memcpy(m->secret, cfg->secret, cfg->secret_len);
    m->cfg.name = m->cfg.url = NULL;
    m->cfg.secret = NULL;
    m->rng = cfg->seed;
    m->seq = cfg->seq_start;
    if (member_add(m, cfg->name, cfg->url, 0, now) != 0) { mesh_free(m); return NULL; }
    m->norder = 0;   /* self is never probed */
    m->next_probe = now + rnd_below(m, cfg->probe_interval_ms);
    m->next_gossip = now + cfg->gossip_interval_ms;
    m->next_pushpull = now + cfg->pushpull_interval_ms;
    m->next_reconnect = now + cfg->reconnect_interval_ms;
    m->next_join = MESH_NEVER;
    m->next_reap = MESH_NEVER;
    m->join_backoff = 1000;
    return m;
}

void mesh_free(struct mesh *m) {
    if (!m) return;
    for (size_t i = m->out_head; i < m->nout; i++) free(m->out[i].data);
    free(m->out);
    for (size_t i = 0; i < m->nseeds; i++) free(m->seeds[i]);
    free(m->seeds);
    free(m->mem);
    free(m->order);
    free(m->slist);
    free(m->midx.slot);
    free(m->db);
    free(m->didx.slot);
    free(m->bq);
    free(m->tombs);
    free(m->secret);
    free(m);
}

/* A SYNC to `to`: flags MESH_F_REPLY and/or MESH_F_DIGEST (members and the registry's
 * digest; without it, members and every registry entry). */
static void send_sync(struct mesh *m, const char *to, int flags) {
    struct mesh_hdr h;
    memset(&h, 0, sizeof h);
    h.type = MESH_T_SYNC;
    h.flags = flags;
    if (flags & MESH_F_DIGEST) h.digest = mesh_db_digest(m);
    send_msg(m, to, &h, NULL);
}

/* Requests carry the digest; answers follow the table at MESH_F_DIGEST in mesh.h. */
static void answer_sync(struct mesh *m, const struct mesh_hdr *h) {
    if (!(h->flags & MESH_F_REPLY)) return;
    if (!(h->flags & MESH_F_DIGEST)) send_sync(m, h->url, 0);
    else if (h->digest == mesh_db_digest(m)) send_sync(m, h->url, MESH_F_DIGEST);
    else send_sync(m, h->url, MESH_F_REPLY);
}

int mesh_join(struct mesh *m, const char *const *urls, size_t n, uint64_t now) {
    for (size_t i = 0; i < n; i++) {
        if (!urls[i] || !urls[i][0] || strlen(urls[i]) > MESH_URL_MAX) return MIMEO_EINVAL;
        char **s = realloc(m->seeds, (m->nseeds + 1) * sizeof *s);
        if (!s) return MIMEO_ENOMEM;
        m->seeds = s;
        if (!(m->seeds[m->nseeds] = strdup(urls[i]))) return MIMEO_ENOMEM;
        m->nseeds++;
        send_sync(m, urls[i], MESH_F_REPLY | MESH_F_DIGEST);
    }
    m->join_backoff = 1000;
    m->next_join = now + m->join_backoff;
    return 0;
}

void mesh_leave(struct mesh *m, uint64_t now) {
    if (m->leaving) return;
    m->leaving = 1;
    struct member *self = &m->mem[0];
    set_state(m, self, MESH_LEFT, now);
    bcast_member(m, MESH_K_LEFT, self, NULL);
    m->probe.active = 0;
    size_t to[LEAVE_DIRECT];
    size_t n = pick(m, 1u << MESH_ALIVE | 1u << MESH_SUSPECT, SIZE_MAX, LEAVE_DIRECT, to, now, 0);
    for (size_t i = 0; i < n; i++) send_simple(m, m->mem[to[i]].url, MESH_T_GOSSIP, 0, 0);
}

int mesh_leave_done(const struct mesh *m) {
    if (!m->leaving) return 0;
    for (size_t i = 0; i < m->nbq; i++)
        if (m->bq[i].cls == CLS_MEMBER && strcmp(m->bq[i].name, m->mem[0].name) == 0) {
            for (size_t j = 1; j < m->nmem; j++)
                if (m->mem[j].state <= MESH_SUSPECT) return 0;
            return 1;
        }
    return 1;
}

/* ---- receiving -------------------------------------------------------------------------- */

static int seq_fresh(const struct seqwin *w, uint64_t seq) {
    if (!w->valid || seq > w->max) return 1;
    uint64_t d = w->max - seq;
    return d < 64 && !((w->bits >> d) & 1);
}

static void seq_mark(struct seqwin *w, uint64_t seq) {
    if (!w->valid) {
        w->valid = 1;
        w->max = seq;
        w->bits = 1;
    } else if (seq > w->max) {
        uint64_t d = seq - w->max;
        w->bits = d >= 64 ? 1 : (w->bits << d) | 1;
        w->max = seq;
    } else {
        w->bits |= 1ull << (w->max - seq);
    }
}

static void on_ack(struct mesh *m, uint32_t id, uint64_t now) {
    struct probe *p = &m->probe;
    if (p->active && !p->acked && id == p->id && now <= p->end) {
        p->acked = 1;
        awareness_add(m, -1);
        return;
    }
    for (size_t i = 0; i < m->nrelay; i++) {
        if (m->relays[i].our_id != id) continue;
        send_simple(m, m->relays[i].to, MESH_T_ACK, 0, m->relays[i].their_id);
        m->relays[i] = m->relays[--m->nrelay];
        return;
    }
}

int mesh_recv(struct mesh *m, const uint8_t *data, size_t len, uint64_t now) {
    struct mesh_hdr h;
    int rc = mesh_wire_parse(m->secret, m->cfg.secret_len, data, len, &h);
    if (rc == MIMEO_ECORRUPT) { m->stats.bad_mac++; return MIMEO_EINVAL; }
    if (rc != 0) { m->stats.malformed++; return MIMEO_EINVAL; }
    /* Validate every record before applying any, so a bad message changes nothing. */
    size_t off = h.rec_off, count = 0;
    struct mesh_rec r;
    while ((rc = mesh_wire_rec_next(data, &h, &off, &r)) == 1) count++;
    if (rc < 0 || count != h.nrec) { m->stats.malformed++; return MIMEO_EINVAL; }

    struct member *from = mem_find(m, h.name);
    struct tomb *gone = from ? NULL : tomb_find(m, h.name);
    if (from == &m->mem[0] || (from && !seq_fresh(&from->win, h.seq)) ||
        (gone && !seq_fresh(&gone->win, h.seq))) {
        m->stats.replayed++;
        return MIMEO_EINVAL;
    }
    m->stats.msgs_recv++;
    m->stats.bytes_recv += len;
    if (from) {
        seq_mark(&from->win, h.seq);
        from->last_heard = now;
    }
    if (gone) seq_mark(&gone->win, h.seq);
    if (m->leaving) return 0;

    /* The message itself proves its sender alive at the incarnation it states. Besides
     * introducing joiners, this delivers a refutation to everyone the refuter talks to,
     * beyond what gossip's λ·log N retransmissions reach: at 10% loss and 200 members, a
     * member missed by a refutation's gossip (≈ e^-11 per member) would otherwise declare the
     * refuter dead when its suspicion timer ran out. */
    memset(&r, 0, sizeof r);
    r.kind = MESH_K_ALIVE;
    r.incarnation = h.incarnation;
    snprintf(r.name, sizeof r.name, "%s", h.name);
    snprintf(r.extra, sizeof r.extra, "%s", h.url);
    on_alive(m, &r, now);
    off = h.rec_off;
    while (mesh_wire_rec_next(data, &h, &off, &r) == 1) apply_rec(m, &r, h.type == MESH_T_SYNC, now);
    if (!from && (from = mem_find(m, h.name)) != NULL) {
        seq_mark(&from->win, h.seq);
        from->last_heard = now;
    }
    if (!from && (gone = tomb_find(m, h.name)) != NULL) {
        /* A member we forgot speaks at an incarnation we last knew dead or left (it
         * restarted). Telling it so makes it refute with a higher incarnation, which every
         * member takes from gossip; its messages at the old one do not re-add it, since
         * a stale record could say as much. */
        struct mesh_rec d;
        memset(&d, 0, sizeof d);
        d.kind = MESH_K_DEAD;
        d.incarnation = gone->inc;
        snprintf(d.name, sizeof d.name, "%s", h.name);
        snprintf(d.extra, sizeof d.extra, "%s", m->mem[0].name);
        struct mesh_hdr g;
        memset(&g, 0, sizeof g);
        g.type = MESH_T_GOSSIP;
        send_msg(m, h.url, &g, &d);
    }

    switch (h.type) {
    case MESH_T_PING:
        /* A ping meant for a former holder of our address is not ours to answer. */
        if (strcmp(h.target, m->mem[0].name) != 0) return MIMEO_EINVAL;
        send_simple(m, h.url, MESH_T_ACK, 0, h.probe);
        break;
    case MESH_T_PING_REQ: {
        if (m->nrelay == MAX_RELAYS) break;
        struct relay *rl = &m->relays[m->nrelay++];
        rl->our_id = ++m->probe_ctr;
        rl->their_id = h.probe;
        snprintf(rl->to, sizeof rl->to, "%s", h.url);
        rl->deadline = now + m->cfg.probe_timeout_ms;
        struct mesh_hdr p;
        memset(&p, 0, sizeof p);
        p.type = MESH_T_PING;
        p.probe = rl->our_id;
        snprintf(p.target, sizeof p.target, "%s", h.target);
        send_msg(m, h.target_url, &p, NULL);
        break;
    }
    case MESH_T_ACK:
        on_ack(m, h.probe, now);
        break;
    case MESH_T_NACK:
        if (m->probe.active && h.probe == m->probe.id) m->probe.nacks++;
        break;
    case MESH_T_SYNC:
        answer_sync(m, &h);
        break;
    default:
        break;
    }
    return 0;
}

/* ---- timers ----------------------------------------------------------------------------- */

static int probe_next_target(struct mesh *m, size_t *out) {
    for (int pass = 0; pass < 2; pass++) {
        while (m->order_pos < m->norder) {
            size_t i = m->order[m->order_pos++];
            if (m->mem[i].state <= MESH_SUSPECT) { *out = i; return 1; }
        }
        /* End of a round: reshuffle, so each member is probed once per round in an order
         * no one can predict (SWIM's bounded time-to-first-detection). */
        for (size_t i = m->norder; i > 1; i--) {
            size_t j = rnd_below(m, i);
            size_t t = m->order[i - 1];
            m->order[i - 1] = m->order[j];
            m->order[j] = t;
        }
        m->order_pos = 0;
    }
    return 0;
}

static void probe_start(struct mesh *m, uint64_t now) {
    size_t t;
    uint64_t interval = scaled(m, m->cfg.probe_interval_ms);
    m->next_probe = now + interval;
    if (!probe_next_target(m, &t)) return;
    struct probe *p = &m->probe;
    memset(p, 0, sizeof *p);
    p->active = 1;
    p->id = ++m->probe_ctr;
    p->target = t;
    p->direct_deadline = now + m->cfg.probe_timeout_ms;
    p->end = now + interval;
    m->stats.probes++;
    struct member *mm = &m->mem[t];
    struct mesh_hdr h;
    memset(&h, 0, sizeof h);
    h.type = MESH_T_PING;
    h.probe = p->id;
    snprintf(h.target, sizeof h.target, "%s", mm->name);
    struct mesh_rec buddy;
    if (mm->state == MESH_SUSPECT) member_rec(mm, m->mem[0].name, &buddy);
    send_msg(m, mm->url, &h, mm->state == MESH_SUSPECT ? &buddy : NULL);
}

static void probe_indirect(struct mesh *m) {
    struct probe *p = &m->probe;
    p->indirect_sent = 1;
    size_t k = m->cfg.indirect_checks, got;
    size_t *to = malloc((k ? k : 1) * sizeof *to);
    if (!to) return;
    got = pick(m, 1u << MESH_ALIVE, p->target, k, to, 0, 0);
    struct member *t = &m->mem[p->target];
    for (size_t i = 0; i < got; i++) {
        struct mesh_hdr h;
        memset(&h, 0, sizeof h);
        h.type = MESH_T_PING_REQ;
        h.probe = p->id;
        snprintf(h.target, sizeof h.target, "%s", t->name);
        snprintf(h.target_url, sizeof h.target_url, "%s", t->url);
        send_msg(m, m->mem[to[i]].url, &h, NULL);
    }
    p->expected_nacks = (uint32_t)got;
    free(to);
}

static void probe_finish(struct mesh *m, uint64_t now) {
    struct probe *p = &m->probe;
    p->active = 0;
    if (p->acked) return;
    m->stats.probes_failed++;
    /* Missing nacks mean our own network is the problem more than the target is. */
    if (p->expected_nacks) {
        if (p->nacks < p->expected_nacks) awareness_add(m, (int)(p->expected_nacks - p->nacks));
    } else {
        awareness_add(m, 1);
    }
    struct member *mm = &m->mem[p->target];
    on_suspect(m, mm->name, mm->inc, m->mem[0].name, now);
}

static void gossip_round(struct mesh *m, uint64_t now) {
    size_t k = m->cfg.gossip_nodes;
    size_t *to = malloc((k ? k : 1) * sizeof *to);
    if (!to) return;
    size_t got = pick(m, 1u << MESH_ALIVE | 1u << MESH_SUSPECT, SIZE_MAX, k, to, now, 1);
    for (size_t i = 0; i < got && m->nbq; i++) send_simple(m, m->mem[to[i]].url, MESH_T_GOSSIP, 0, 0);
    free(to);
}

/* memberlist's push-pull scaling: beyond 32 members, the interval grows with log2(N/32) so
 * the full-state traffic of the whole cluster grows like N·log N, not N². */
static uint64_t pushpull_interval(const struct mesh *m) {
    size_t n = live_count(m);
    uint64_t iv = m->cfg.pushpull_interval_ms;
    if (n <= 32) return iv;
    double mult = mesh_ceil(mesh_log2((double)n) - 5.0) + 1.0;
    return (uint64_t)(mult * (double)iv);
}

static int has_live_peer(const struct mesh *m) {
    return m->nlive > (m->mem[0].state <= MESH_SUSPECT ? 1u : 0u);
}

void mesh_tick(struct mesh *m, uint64_t now) {
    for (size_t i = 0; i < m->nrelay;) {
        if (m->relays[i].deadline <= now) {
            send_simple(m, m->relays[i].to, MESH_T_NACK, 0, m->relays[i].their_id);
            m->relays[i] = m->relays[--m->nrelay];
        } else {
            i++;
        }
    }
    if (m->nbq && now >= m->next_gossip) {
        m->next_gossip = now + m->cfg.gossip_interval_ms;
        gossip_round(m, now);
    }
    if (now >= m->next_reap) reap(m, now);
    if (m->leaving) return;

    struct probe *p = &m->probe;
    if (p->active && !p->acked && !p->indirect_sent && now >= p->direct_deadline)
        probe_indirect(m);
    if (p->active && now >= p->end) probe_finish(m, now);
    if (!p->active && now >= m->next_probe) probe_start(m, now);

    for (size_t i = 0; i < m->nsuspect;) {
        struct member *mm = &m->mem[m->slist[i]];
        if (mm->susp_deadline <= now) on_dead(m, mm->name, mm->inc, m->mem[0].name, 0, now);
        else i++;   /* on_dead took it off the list, so the same i is the next one */
    }

    int peer = has_live_peer(m);
    if (now >= m->next_pushpull) {
        m->next_pushpull = now + pushpull_interval(m);
        size_t t;
        if (pick(m, 1u << MESH_ALIVE, SIZE_MAX, 1, &t, now, 0) == 1)
            send_sync(m, m->mem[t].url, MESH_F_REPLY | MESH_F_DIGEST);
    }
    if (now >= m->next_reconnect) {
        /* Both sides of a healed partition hold each other dead; nothing would ever probe
         * across. A periodic push-pull to a random dead member finds the way back. */
        m->next_reconnect = now + m->cfg.reconnect_interval_ms;
        size_t t;
        if (pick(m, 1u << MESH_DEAD, SIZE_MAX, 1, &t, now, 0) == 1)
            send_sync(m, m->mem[t].url, MESH_F_REPLY | MESH_F_DIGEST);
    }
    if (m->nseeds) {
        if (peer) {
            m->join_backoff = 1000;
            m->next_join = MESH_NEVER;
        } else if (m->next_join == MESH_NEVER) {
            m->next_join = now + m->join_backoff;
        } else if (now >= m->next_join) {
            for (size_t i = 0; i < m->nseeds; i++)
                send_sync(m, m->seeds[i], MESH_F_REPLY | MESH_F_DIGEST);
            m->join_backoff *= 2;
            if (m->join_backoff > m->cfg.join_retry_max_ms) m->join_backoff = m->cfg.join_retry_max_ms;
            m->next_join = now + m->join_backoff;
            event_push(m, MESH_EV_JOIN_RETRY, m->seeds[0], 0, 0, m->join_backoff);
        }
    }
}

uint64_t mesh_next_deadline(const struct mesh *m) {
    uint64_t d = MESH_NEVER;
#define AT(t) do { if ((t) < d) d = (t); } while (0)
    for (size_t i = 0; i < m->nrelay; i++) AT(m->relays[i].deadline);
    if (m->nbq) AT(m->next_gossip);
    AT(m->next_reap);
    if (m->leaving) return d;
    const struct probe *p = &m->probe;
    if (p->active) {
        if (!p->acked && !p->indirect_sent) AT(p->direct_deadline);
        AT(p->end);
    } else {
        AT(m->next_probe);
    }
    for (size_t i = 0; i < m->nsuspect; i++) AT(m->mem[m->slist[i]].susp_deadline);
    AT(m->next_pushpull);
    AT(m->next_reconnect);
    if (m->nseeds) {
        if (has_live_peer(m) != (m->next_join == MESH_NEVER)) AT(0);   /* state to settle */
        else AT(m->next_join);
    }
#undef AT
    return d;
}

/* ---- queries and local changes ---------------------------------------------------------- */

int mesh_out_pop(struct mesh *m, struct mesh_msg *out) {
    if (m->out_head >= m->nout) return 0;
    *out = m->out[m->out_head++];
    return 1;
}

int mesh_event_pop(struct mesh *m, struct mesh_event *out) {
    if (!m->ev_count) return 0;
    *out = m->events[m->ev_head];
    m->ev_head = (m->ev_head + 1) % EVENT_RING;
    m->ev_count--;
    return 1;
}

static void member_info(const struct mesh *m, size_t i, struct mesh_member_info *o) {
    const struct member *mm = &m->mem[i];
    o->name = mm->name;
    o->url = mm->url;
    o->state = mm->state;
    o->incarnation = mm->inc;
    o->last_heard_ms = mm->last_heard;
    o->state_since_ms = mm->state_since;
    o->is_self = i == 0;
}

size_t mesh_member_count(const struct mesh *m) { return m->nmem; }

int mesh_member_get(const struct mesh *m, size_t i, struct mesh_member_info *out) {
    if (i >= m->nmem) return MIMEO_ENOTFOUND;
    member_info(m, i, out);
    return 0;
}

int mesh_member_find(const struct mesh *m, const char *name, struct mesh_member_info *out) {
    const struct member *mm = mem_find(m, name);
    if (!mm) return MIMEO_ENOTFOUND;
    member_info(m, (size_t)(mm - m->mem), out);
    return 0;
}

static int db_name_ok(const char *db) {
    size_t n = db ? strlen(db) : 0;
    return n > 0 && n <= MESH_DB_MAX;
}

int mesh_db_create(struct mesh *m, const char *db, uint64_t now) {
    if (!db_name_ok(db)) return MIMEO_EINVAL;
    const struct dbent *d = db_find(m, db);
    if (d && !d->deleted) return 0;
    return db_apply(m, db, d ? d->version + 1 : 1, 0, 1);
}

int mesh_db_delete(struct mesh *m, const char *db, uint64_t now) {
    if (!db_name_ok(db)) return MIMEO_EINVAL;
    const struct dbent *d = db_find(m, db);
    if (d && d->deleted) return 0;
    return db_apply(m, db, d ? d->version + 1 : 1, 1, 1);
}

int mesh_db_observe(struct mesh *m, const char *db, uint64_t now) {
    return mesh_db_observe_at(m, db, 0, now);
}

int mesh_db_observe_at(struct mesh *m, const char *db, uint64_t version, uint64_t now) {
    if (!db_name_ok(db)) return MIMEO_EINVAL;
    const struct dbent *d = db_find(m, db);
    /* Known deleted at or after the copy's version: the local copy is a leftover; say so
     * like any remote delete. */
    if (d && d->deleted && d->version >= version) event_push(m, MESH_EV_DB, db, 1, 0, 0);
    if (d && d->version >= version) return 0;
    return db_apply(m, db, version ? version : 1, 0, 1);
}

size_t mesh_db_count(const struct mesh *m) { return m->ndb; }

uint64_t mesh_db_digest(const struct mesh *m) {
    /* A sum of mixed per-entry hashes: the same whatever the order the entries were learnt. */
    uint64_t sum = m->ndb;
    for (size_t i = 0; i < m->ndb; i++) {
        uint64_t h = m->db[i].hash ^ (m->db[i].version * 2 + (m->db[i].deleted ? 1 : 0)) * 0x9e3779b97f4a7c15ull;
        h ^= h >> 31;
        h *= 0xbf58476d1ce4e5b9ull;
        h ^= h >> 29;
        sum += h;
    }
    return sum;
}

int mesh_db_get(const struct mesh *m, size_t i, struct mesh_db_info *out) {
    if (i >= m->ndb) return MIMEO_ENOTFOUND;
    out->name = m->db[i].name;
    out->deleted = m->db[i].deleted;
    out->version = m->db[i].version;
    return 0;
}

int mesh_db_find(const struct mesh *m, const char *db, struct mesh_db_info *out) {
    const struct dbent *d = db_find(m, db);
    if (!d) return MIMEO_ENOTFOUND;
    return mesh_db_get(m, (size_t)(d - m->db), out);
}

void mesh_stats_get(const struct mesh *m, struct mesh_stats *out) {
    *out = m->stats;
    out->awareness = m->awareness;
}
