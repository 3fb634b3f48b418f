/* mesh node: the adapter that runs the pure mesh state machine (mesh.h) in a server process.
 * One thread owns a UDP socket (probes and gossip, on the HTTP port number of the advertised
 * URL) and the timers; a second sends stream messages (push-pull) as HTTP POSTs to the peer's
 * /_mesh; the HTTP server hands POSTed bodies back in with mesh_node_deliver. The node also
 * keeps the local set of meshed databases in step with the gossiped registry. */
#ifndef MIMEO_MESH_NODE_H
#define MIMEO_MESH_NODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mimeo.h"
#include "mesh.h"

struct mesh_node_opts {
    const char *name;               /* unique in the mesh; default: the advertised host:port */
    const char *advertise;          /* http://host:port other nodes reach us at */
    const char *bind;               /* the address the UDP socket binds (the HTTP one) */
    unsigned port;                  /* UDP port: the HTTP port */
    const char *join;               /* comma-separated URLs, may be NULL/empty (first node) */
    const uint8_t *secret;          /* required */
    size_t secret_len;
    const char *databases;          /* "*" (every non-system db), a comma list, or "" (none) */
    struct mesh_config tun;         /* timing; name/url/secret/seed fields are ignored */
    mimeo_env *env;                 /* borrowed: must outlive the node */
    /* Moving the data (mesh_data.c); 0 → the default given. */
    unsigned anti_entropy_ms;       /* push-pull round with one random peer: 10000 */
    unsigned repl_workers;          /* replications running at once, node-wide: 4 */
    unsigned repl_batch;            /* changes per request: 500 */
    unsigned repl_timeout_ms;       /* per request to a peer: 10000 */
    bool no_eager_push;             /* true: only anti-entropy moves data */
};

struct mesh_node;

/* Starts the node; 0, or -1 with err filled (bad options, socket in use, no secret). */
int mesh_node_start(const struct mesh_node_opts *o, struct mesh_node **out, char *err,
                    size_t errlen);
/* Announces LEFT and waits (at most max_wait_ms) until it has been gossiped. */
void mesh_node_leave(struct mesh_node *n, unsigned max_wait_ms);
/* Stops the threads and frees the node. */
void mesh_node_free(struct mesh_node *n);

/* The running node of this process, or NULL (for the HTTP handlers). */
struct mesh_node *mesh_node_current(void);

/* A message that arrived over HTTP. 0 or MIMEO_EINVAL (rejected). */
int mesh_node_deliver(struct mesh_node *n, const void *data, size_t len);

/* The core's counters and how many members are in each state (by_state[MESH_ALIVE…
 * MESH_LEFT], self included), read under the node's lock (for the metrics endpoint). */
void mesh_node_stats(struct mesh_node *n, struct mesh_stats *st, uint64_t by_state[4]);

/* GET /_mesh's body: new JSON text, the caller frees it with free(); NULL when out of memory. */
char *mesh_node_status_json(struct mesh_node *n);

/* Whether password is the mesh's node-to-node HTTP password (user "_mesh"; compared in
 * constant time). false when n is NULL. */
bool mesh_node_http_auth(struct mesh_node *n, const char *password);

/* GET /_mesh/summary's body (new text, free()), NULL when out of memory; epoch NULL or
 * unknown: every database, else those changed after generation since (mesh_data.h). */
char *mesh_node_summary_json(struct mesh_node *n, const char *epoch, uint64_t since);

/* How one meshed database stands with one peer, as this node knows it. Seqs are update_seq
 * values (one per change); -1 is "not known yet". */
struct mesh_sync_stat {
    char db[240];
    char peer[MESH_NAME_MAX + 1];
    int64_t last_sync_ms;     /* wall-clock ms since the epoch of the last replication with
                                 the peer that completed (either way); 0 never */
    uint64_t local_seq;       /* this node's update_seq of db */
    int64_t pushed_seq;       /* the peer's checkpoint in this node's db: every change up to
                                 it is on the peer */
    int64_t behind;           /* changes of this node the peer may lack: local − pushed */
    int64_t peer_seq;         /* the peer's update_seq, last seen */
    int64_t pulled_seq;       /* this node's checkpoint in the peer's db */
    int64_t pull_behind;      /* changes of the peer this node has not pulled: peer − pulled */
    uint64_t docs_written;    /* revisions written by replications with the peer, both ways */
    uint64_t failures;        /* replications with the peer that failed */
};
/* Every (database, peer) row this node has: a new array (free()), its length returned;
 * 0 and *out NULL when there is nothing (or no mesh, or out of memory). Thread-safe; for
 * GET /_mesh, metrics and `mimeo mesh status`. */
size_t mesh_node_sync_stats(struct mesh_node *n, struct mesh_sync_stat **out);

/* Node-wide counters of the data mover. */
struct mesh_data_counters {
    uint64_t replications;    /* completed */
    uint64_t failures;
    uint64_t docs_read, docs_written;
    uint64_t summaries;       /* anti-entropy summaries fetched */
    uint64_t rounds_deferred; /* periodic rounds put off while the queue was long */
    uint64_t dropped;         /* triggers dropped because the queue was full */
    uint64_t queued, running; /* now */
};
void mesh_node_data_counters(struct mesh_node *n, struct mesh_data_counters *out);

/* Reads a secret file: its bytes without trailing whitespace, at least 16 of them.
 * 0 and *out (new, free()) or -1 with err filled. */
int mesh_secret_read(const char *path, uint8_t **out, size_t *len, char *err, size_t errlen);

#endif
