/* mesh node: the adapter that runs the pure mesh state machine (mesh.h) in a server process.
 * One thread owns a UDP socket (probes and gossip, on the HTTP port number of the advertised
 * URL) and the timers; a second sends stream messages (push-pull) as HTTP POSTs to the peer's
 * /_mesh; the HTTP server hands POSTed bodies back in with mesh_node_deliver. The node also
 * keeps the local set of meshed databases in step with the gossiped registry. */
#ifndef MIMEO_MESH_NODE_H
#define MIMEO_MESH_NODE_H

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

/* Reads a secret file: its bytes without trailing whitespace, at least 16 of them.
 * 0 and *out (new, free()) or -1 with err filled. */
int mesh_secret_read(const char *path, uint8_t **out, size_t *len, char *err, size_t errlen);

#endif
