/* mesh: membership and gossip for a mimeo cluster, as a pure state machine.
 *
 * SWIM with Lifeguard's refinements, in the shape of HashiCorp memberlist: randomised
 * round-robin probes, k indirect probes, suspicion whose timeout shrinks with independent
 * confirmations, refutation by incarnation, piggybacked updates retransmitted about
 * λ·log N times, a periodic full-state push-pull, and a local health multiplier that slows a
 * node down when it itself is the slow one. On top of membership the same machinery converges
 * the set of meshed databases (live / deleted, with a version) across the cluster.
 *
 * Purity. The core never reads a clock, opens a socket or starts a thread: the caller feeds it
 * messages (mesh_recv) and the time (mesh_tick), and drains what it wants sent (mesh_out_pop)
 * and what changed (mesh_event_pop). mesh_next_deadline says when to call mesh_tick next.
 * The same code runs in the deterministic simulator (tests/unit/test_mesh.c) and behind the
 * UDP/HTTP adapter. A struct mesh is not thread-safe: one owner drives it.
 *
 * Addressing. A member is named (unique, ≤ 64 bytes) and reachable at its advertised URL
 * (≤ 200 bytes, e.g. "http://10.0.0.5:5984"). Outgoing messages are addressed to a URL; a
 * datagram message (stream == 0, ≤ max_packet bytes) goes over UDP to the URL's host and port,
 * a stream message (push-pull, any size up to MESH_STREAM_MAX) over HTTP. The adapter decides
 * the mapping; the core only knows URLs.
 *
 * ---- wire format (all integers big-endian) ----------------------------------------------
 *
 *   0       1       2       3
 *  +-------+-------+-------+-------+
 *  | 0x6d  | 0x01  | type  | flags |  magic 'm', version 1, MESH_T_*, MESH_F_* bits
 *  +-------+-------+-------+-------+
 *  |        sequence (u64)         |  per-sender, strictly increasing across restarts
 *  |                               |  (replay protection, see below)
 *  +-------------------------------+
 *  |  sender incarnation (u32)     |  an authenticated message proves its sender alive
 *  +-------+-----------------------+
 *  | nlen  | sender name (nlen)    |
 *  +-------+-----------------------+
 *  | ulen  | sender url (ulen)     |  where replies go
 *  +-------+-----------------------+
 *  | body, by type:                |
 *  |   PING     probe u32, target name (u8 len + bytes)
 *  |   PING_REQ probe u32, target name, target url (u8 len + bytes each)
 *  |   ACK/NACK probe u32
 *  |   GOSSIP: empty
 *  |   SYNC     empty, or with MESH_F_DIGEST the registry digest (u64)
 *  +-------------------------------+
 *  | nrec (u16), then nrec records |  piggybacked updates, or the full state in a SYNC
 *  +-------------------------------+
 *  |   HMAC-SHA256 (32 bytes)      |  over every byte before it, keyed by the mesh secret
 *  +-------------------------------+
 *
 *  record:  kind u8 = ALIVE 1 | SUSPECT 2 | DEAD 3 | LEFT 4
 *             incarnation u32, name (u8 len + bytes), extra (u8 len + bytes):
 *             the member's URL for ALIVE, the accuser's name for SUSPECT and DEAD,
 *             empty for LEFT
 *           kind u8 = DB 5
 *             state u8 (0 live, 1 deleted), version u64, db name (u8 len + bytes)
 *
 * Authentication. A message whose MAC does not verify is dropped before any field is used,
 * so a node without the secret can neither join nor inject members. Replay. Each node keeps,
 * per sender name, the highest sequence seen and a 64-message window below it (as IPsec
 * does): a sequence seen before or older than the window is dropped. A node's first sequence
 * comes from its configuration (the adapter uses wall-clock microseconds, the simulator its
 * clock), so a restarted node is not mistaken for a replay of its former life; the state a
 * message carries is ordered by incarnation and db version, so even a replay that slipped the
 * window could not roll anything back.
 */
#ifndef MIMEO_MESH_H
#define MIMEO_MESH_H

#include <stddef.h>
#include <stdint.h>

#define MESH_NAME_MAX 64
#define MESH_URL_MAX 200
#define MESH_DB_MAX 238
#define MESH_MAC_LEN 32
#define MESH_STREAM_MAX (8u << 20)
#define MESH_NEVER UINT64_MAX

enum mesh_type {
    MESH_T_PING = 1,
    MESH_T_PING_REQ = 2,
    MESH_T_ACK = 3,
    MESH_T_NACK = 4,
    MESH_T_GOSSIP = 5,
    MESH_T_SYNC = 6,
};

/* SYNC flag: the sender wants the receiver's state back (a push-pull request). */
#define MESH_F_REPLY 0x01
/* SYNC flag: the records are the members only, and the body carries a digest of the sender's
 * database registry instead of its entries. A push-pull request goes out so; a receiver whose
 * registry digests the same answers in kind (members only), one whose registry differs
 * answers with its whole registry and MESH_F_REPLY, and the requester answers that with its
 * own. An idle mesh so sends members only, however many databases it holds. */
#define MESH_F_DIGEST 0x02

enum mesh_kind {
    MESH_K_ALIVE = 1,
    MESH_K_SUSPECT = 2,
    MESH_K_DEAD = 3,
    MESH_K_LEFT = 4,
    MESH_K_DB = 5,
};

enum mesh_state { MESH_ALIVE = 0, MESH_SUSPECT = 1, MESH_DEAD = 2, MESH_LEFT = 3 };

/* "alive", "suspect", "dead", "left". */
const char *mesh_state_name(int state);

/* Tunables. mesh_config_default fills memberlist's LAN profile; every field may be changed
 * before mesh_new. name, url and secret are borrowed until mesh_new returns. */
struct mesh_config {
    const char *name;
    const char *url;
    const uint8_t *secret;          /* required, ≥ 16 bytes: there is no default secret */
    size_t secret_len;
    uint64_t seed;                  /* the core's random choices; any value */
    uint64_t seq_start;             /* first message sequence; above any earlier life's */
    uint32_t probe_interval_ms;     /* 1000: one probe per period */
    uint32_t probe_timeout_ms;      /* 500: direct ack deadline before indirect probes */
    uint32_t indirect_checks;       /* 3: k members asked to probe on our behalf */
    uint32_t gossip_interval_ms;    /* 200 */
    uint32_t gossip_nodes;          /* 3: the fanout of each gossip round */
    uint32_t gossip_to_dead_ms;     /* 30000: dead members still get gossip this long */
    uint32_t retransmit_mult;       /* 4: λ, an update goes out λ·⌈log10(N+1)⌉ times */
    uint32_t suspicion_mult;        /* 4: min timeout = mult·log10(N)·probe interval */
    uint32_t suspicion_max_mult;    /* 6: max timeout = this × min timeout */
    uint32_t pushpull_interval_ms;  /* 30000, scaled up past 32 members like memberlist */
    uint32_t reconnect_interval_ms; /* 10000: a push-pull to a random dead member */
    uint32_t reap_dead_ms;          /* 86400000: a member dead this long is forgotten (0 never) */
    uint32_t reap_left_ms;          /* 86400000: the same for a member that left (0 never) */
    uint32_t join_retry_max_ms;     /* 30000: join backoff cap (starts at 1 s) */
    uint32_t awareness_max;         /* 8: Lifeguard local health multiplier cap */
    uint32_t max_packet;            /* 1400: datagram budget, piggyback fills up to it */
};

void mesh_config_default(struct mesh_config *cfg);

struct mesh;

/* New state machine for this node, alive at incarnation 0, knowing nobody. NULL when the
 * config is unusable (no name/url, names too long, no or short secret) or out of memory. */
struct mesh *mesh_new(const struct mesh_config *cfg, uint64_t now_ms);
void mesh_free(struct mesh *m);

/* Starts joining through the given URLs (borrowed during the call): a push-pull to each,
 * repeated with doubling backoff while no other member answers. 0 or MIMEO_EINVAL. */
int mesh_join(struct mesh *m, const char *const *urls, size_t n, uint64_t now_ms);

/* One message received (from anyone: the MAC decides). 0 when accepted; MIMEO_EINVAL when
 * dropped (malformed, bad MAC, replay, not for us); stats say which. */
int mesh_recv(struct mesh *m, const uint8_t *data, size_t len, uint64_t now_ms);

/* Runs every timer due at now_ms. */
void mesh_tick(struct mesh *m, uint64_t now_ms);

/* The earliest time mesh_tick has work (MESH_NEVER for none). Valid until the next call. */
uint64_t mesh_next_deadline(const struct mesh *m);

/* Announces that this node leaves: LEFT at its incarnation, sent directly to a few members
 * and gossiped. The node then stops probing and answering probes. */
void mesh_leave(struct mesh *m, uint64_t now_ms);
/* 1 once the LEFT announcement has been gossiped enough that the process may exit. */
int mesh_leave_done(const struct mesh *m);

/* ---- output ----------------------------------------------------------------------------- */

struct mesh_msg {
    char to[MESH_URL_MAX + 1];
    int stream;                     /* 1: reliable (HTTP), 0: datagram (UDP) */
    size_t len;
    uint8_t *data;                  /* new: the caller frees it with free() */
};

/* Next message to send, oldest first: 1 and *out filled, or 0 when there is none. */
int mesh_out_pop(struct mesh *m, struct mesh_msg *out);

enum mesh_event_type {
    MESH_EV_MEMBER = 1,             /* a member's state changed (or it appeared) */
    MESH_EV_DB = 2,                 /* a database became live or deleted */
    MESH_EV_JOIN_RETRY = 3,         /* nobody answered the join; retrying in `delay_ms` */
    MESH_EV_REAPED = 4,             /* a member dead or left too long is forgotten (`state`) */
};

struct mesh_event {
    int type;
    char name[MESH_DB_MAX + 1];     /* member or database name */
    int state;                      /* MESH_ALIVE… for members, 0 live / 1 deleted for dbs */
    uint32_t incarnation;
    uint64_t delay_ms;
};

/* Next event, oldest first: 1 and *out filled, or 0. Events beyond 4096 unread are dropped
 * (the state queries below stay right). */
int mesh_event_pop(struct mesh *m, struct mesh_event *out);

/* ---- state ------------------------------------------------------------------------------ */

struct mesh_member_info {
    const char *name;               /* borrowed until the next mesh_recv/mesh_tick/mesh_join */
    const char *url;
    int state;
    uint32_t incarnation;
    uint64_t last_heard_ms;         /* time of its last authenticated message, 0 never */
    uint64_t state_since_ms;
    int is_self;
};

/* Members known, self included (index 0). Dead and left members stay listed until
 * reap_dead_ms / reap_left_ms after they became so; then they are forgotten, and only a newer
 * incarnation of them (which only they can raise) brings them back. */
size_t mesh_member_count(const struct mesh *m);
int mesh_member_get(const struct mesh *m, size_t i, struct mesh_member_info *out);
/* 0 and *out, or MIMEO_ENOTFOUND. */
int mesh_member_find(const struct mesh *m, const char *name, struct mesh_member_info *out);

/* Meshed databases: a last-writer-wins register per name ordered by version, a deleted entry
 * winning a tie, so a deleted database comes back only through a newer create. */
int mesh_db_create(struct mesh *m, const char *db, uint64_t now_ms);
int mesh_db_delete(struct mesh *m, const char *db, uint64_t now_ms);
/* The adapter found `db` on disk at start: announces it live only if the mesh knows nothing
 * about it (a deleted entry heard later still wins and asks for the local copy to go). */
int mesh_db_observe(struct mesh *m, const char *db, uint64_t now_ms);
/* The same for a copy made for registry version `version` (0: unknown): the mesh learns that
 * version unless it knows the same or a newer one; known deleted at or after it, the copy is
 * a leftover (an event asks for it to go). */
int mesh_db_observe_at(struct mesh *m, const char *db, uint64_t version, uint64_t now_ms);

struct mesh_db_info {
    const char *name;               /* borrowed, like mesh_member_info */
    int deleted;
    uint64_t version;
};
size_t mesh_db_count(const struct mesh *m);
/* An order-independent digest of the registry (names, versions, deleted flags): two nodes
 * whose registries hold the same entries have the same digest. */
uint64_t mesh_db_digest(const struct mesh *m);
int mesh_db_get(const struct mesh *m, size_t i, struct mesh_db_info *out);
int mesh_db_find(const struct mesh *m, const char *db, struct mesh_db_info *out);

struct mesh_stats {
    uint64_t msgs_sent, bytes_sent, msgs_recv, bytes_recv;
    uint64_t bad_mac, replayed, malformed;
    uint64_t probes, probes_failed, suspicions, refutes;
    uint32_t awareness;             /* current local health score, 0 = healthy */
};
void mesh_stats_get(const struct mesh *m, struct mesh_stats *out);

/* ---- wire (mesh_wire.c) ----------------------------------------------------------------- */

struct mesh_rec {
    int kind;
    uint32_t incarnation;           /* members */
    uint64_t version;               /* dbs */
    int deleted;
    char name[MESH_DB_MAX + 1];
    char extra[MESH_URL_MAX + 1];
};

struct mesh_hdr {
    int type, flags;
    uint64_t seq;
    uint32_t incarnation;
    char name[MESH_NAME_MAX + 1];
    char url[MESH_URL_MAX + 1];
    uint32_t probe;
    uint64_t digest;                /* SYNC with MESH_F_DIGEST */
    char target[MESH_NAME_MAX + 1];
    char target_url[MESH_URL_MAX + 1];
    uint16_t nrec;
    size_t rec_off;                 /* offset of the first record */
    size_t rec_end;                 /* offset of the MAC */
};

struct mesh_wbuf {
    uint8_t *p;
    size_t len, cap, limit;
    size_t nrec_off;                /* where mesh_wire_finish patches the record count */
    int err;
};

/* Parses and authenticates; 0, or MIMEO_EINVAL (malformed) / MIMEO_ECORRUPT (bad MAC). */
int mesh_wire_parse(const uint8_t *key, size_t keylen, const uint8_t *data, size_t len,
                    struct mesh_hdr *h);
/* Next record at *off (advanced): 1, 0 at the end, MIMEO_EINVAL when malformed. */
int mesh_wire_rec_next(const uint8_t *data, const struct mesh_hdr *h, size_t *off,
                       struct mesh_rec *r);
void mesh_wire_begin(struct mesh_wbuf *w, size_t limit, const struct mesh_hdr *h);
/* Appends an encoded record if it fits the limit (with room for the MAC): 1 yes, 0 no. */
int mesh_wire_add(struct mesh_wbuf *w, const uint8_t *rec, size_t len);
size_t mesh_wire_rec_encode(const struct mesh_rec *r, uint8_t *out, size_t cap);
/* Writes nrec and the MAC; 0 or MIMEO_ENOMEM / MIMEO_ETOOLARGE. */
int mesh_wire_finish(struct mesh_wbuf *w, const uint8_t *key, size_t keylen, uint16_t nrec);

#endif
