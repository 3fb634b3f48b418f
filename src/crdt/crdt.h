/* CRDT documents: the state of a document whose concurrent edits merge by themselves, the
 * operations that change it, the join of two states, and the canonical bytes of both the
 * state and the plain document rendered from it. Pure code, no I/O: every function here is a
 * function of its arguments (the clock is passed in), so the merge of a set of leaves is the
 * same bytes on every node. The format and the rules are described in docs/crdt.md. */
#ifndef MIMEO_CRDT_H
#define MIMEO_CRDT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/buf.h"
#include "../json/json.h"
#include "mimeo.h"

/* The reserved top-level member that holds the state (not an `_` member: CouchDB and PouchDB
 * refuse unknown ones). Also in mimeo.h as MIMEO_CRDT_MEMBER. */
#define CRDT_MEMBER "$crdt"
#define CRDT_FORMAT 1
#define CRDT_NODE_MAX 64    /* bytes of a node id */
#define CRDT_PATH_MAX 32    /* keys in an op's path */
/* Node id of the implicit assigns read from a plain PUT (see crdt_body_read). */
#define CRDT_PLAIN_NODE "plain"

/* A hybrid-logical-clock stamp: l = physical milliseconds (the greatest seen), c = logical
 * counter, node = tie-break. All-zero (l = c = 0, node "") is "never", below every stamp.
 * Stamps are totally ordered by (l, c, node bytes). */
typedef struct crdt_stamp {
    uint64_t l, c;
    char     node[CRDT_NODE_MAX + 1];
} crdt_stamp;

/* node → count: PN-counter halves, set version vectors and set element dots. */
typedef struct crdt_ctr {
    char     node[CRDT_NODE_MAX + 1];
    uint64_t n;
} crdt_ctr;

typedef struct crdt_elem {
    char     *val;   /* canonical JSON text of the element (see crdt_canon) */
    size_t    len;
    crdt_ctr *dots;  /* the adds that keep it alive, sorted by (node, n); never empty */
    size_t    ndots;
} crdt_elem;

typedef struct crdt_field crdt_field;

/* One field. kind: 'c' counter, 'r' register, 's' set, 'm' map. t: the greatest stamp of an
 * op on it or below it; d: the greatest delete; the field shows iff t > d. */
typedef struct crdt_node {
    char        kind;
    crdt_stamp  t, d;
    crdt_ctr   *p, *n;   size_t np, nn;     /* counter: increments, decrements by node */
    crdt_stamp  rs;      char *rval; size_t rlen; /* register: stamp and canonical value */
    crdt_ctr   *vv;      size_t nvv;        /* set: greatest dot seen per node */
    crdt_elem  *el;      size_t nel;        /* set: elements sorted by value bytes */
    crdt_field *f;       size_t nf;         /* map: fields sorted by key bytes */
} crdt_node;

struct crdt_field {
    char      *key;
    size_t     klen;
    crdt_node *node;
};

/* A document's state: the root map. */
typedef struct crdt_state {
    crdt_node root;
} crdt_state;

void crdt_state_init(crdt_state *s);
void crdt_state_destroy(crdt_state *s);
/* dst must be initialised (its contents are replaced). 0 or MIMEO_ENOMEM. */
int  crdt_state_copy(crdt_state *dst, const crdt_state *src);
/* The greatest stamp anywhere in s (all-zero for an empty state). */
void crdt_state_max_stamp(const crdt_state *s, crdt_stamp *out);

/* ---- canonical bytes ---------------------------------------------------------------------- */
/* Appends v as canonical JSON: compact, object keys sorted by bytes, strings escaped as
 * json_put_str does, numbers as their source text. */
int crdt_canon(buf *b, const jval *v);
/* Appends the state's canonical encoding (the value of the "$crdt" member). */
int crdt_state_encode(const crdt_state *s, buf *out);
/* Appends the plain value: an object of the visible fields (counter → integer, register →
 * value, set → sorted array, map → object), keys sorted by bytes. */
int crdt_render(const crdt_state *s, buf *out);
/* Appends the whole canonical body: the plain fields followed by "$crdt":state. */
int crdt_body_write(const crdt_state *s, buf *out);

/* ---- reading ------------------------------------------------------------------------------ */
/* Decodes the value of a "$crdt" member into out (initialised, contents replaced).
 * MIMEO_EINVAL with err->reason for anything that is not a valid state (unknown format,
 * bad node references, dots beyond the version vector, wrong shapes); MIMEO_ENOMEM. */
int crdt_state_decode(crdt_state *out, const jval *v, mimeo_err *err);
/* Reads a document body (a JSON object; `_` members are skipped) into the state it stands
 * for: the "$crdt" state (empty when absent) plus, for a body whose plain fields were edited
 * by a client that knows nothing of CRDTs, an implicit assign of every register field whose
 * plain value differs (a new field is a new register; a register missing from the plain
 * fields is deleted; counters and sets change only by ops, so their plain values are
 * ignored). The implicit stamp is (max.l, max.c + 1, CRDT_PLAIN_NODE) where max is the
 * greatest stamp of the "$crdt" state: it follows everything the client read, and it is a
 * function of the body alone, so every node reads the same body the same way.
 * *edited (may be NULL) tells whether any implicit op was needed. Errors as decode. */
int crdt_body_read(const jval *body, crdt_state *out, bool *edited, mimeo_err *err);

/* ---- join --------------------------------------------------------------------------------- */
/* into := into ⊔ other. Commutative, associative and idempotent up to the canonical
 * encoding. Kinds that disagree on a field resolve by a fixed precedence (map > set >
 * counter > register): the higher kind's field is kept whole. 0 or MIMEO_ENOMEM. */
int crdt_join(crdt_state *into, const crdt_state *other);

/* ---- clock -------------------------------------------------------------------------------- */
typedef struct crdt_hlc {
    uint64_t l, c;
} crdt_hlc;
/* The next stamp of node: greater than h's last stamp and than `seen` (the greatest stamp of
 * the state about to be changed), and at least now_ms when the wall clock is ahead. A clock
 * far behind still orders its writes after everything it has seen; a clock far ahead drags
 * the others' l forward (they then count in c). h is updated. */
void crdt_hlc_next(crdt_hlc *h, uint64_t now_ms, const crdt_stamp *seen, const char *node,
                   crdt_stamp *out);
int  crdt_stamp_cmp(const crdt_stamp *a, const crdt_stamp *b);
/* A node id: 1..CRDT_NODE_MAX bytes of [0-9A-Za-z._:-]. */
bool crdt_node_valid(const char *s, size_t n);

/* ---- operations --------------------------------------------------------------------------- */
typedef enum { CRDT_OP_INCREMENT, CRDT_OP_ASSIGN, CRDT_OP_ADD, CRDT_OP_REMOVE,
               CRDT_OP_DELETE } crdt_op_kind;

typedef struct crdt_op {
    crdt_op_kind kind;
    char       **path;       /* keys, NUL-terminated */
    size_t      *path_lens;
    size_t       depth;
    int64_t      inc;        /* increment */
    char        *val;        /* assign/add/remove: canonical JSON text */
    size_t       vlen;
} crdt_op;

typedef struct crdt_ops {
    crdt_op *ops;
    size_t   count;
} crdt_ops;

/* Parses {"ops":[…]} (or a bare array of ops). Each op is {"op":"increment","path":[…],
 * "value":integer} | assign/add/remove with any JSON "value" | {"op":"delete","path":[…]}.
 * A path is a non-empty array of strings, at most CRDT_PATH_MAX; a key may be "" (an
 * ordinary name, as in CouchDB), but the first may not start with '_' nor be "$crdt".
 * Unknown members are refused. On error
 * MIMEO_EINVAL (or MIMEO_EBADJSON) with err filled and *out empty. */
int  crdt_ops_parse(const char *json, size_t len, const json_limits *limits, crdt_ops *out,
                    mimeo_err *err);
void crdt_ops_destroy(crdt_ops *ops);

/* Applies every op, in order, as `node`, each with the next stamp of h. All or nothing: on an
 * error (an op on a field of another kind, a path through a non-map, a counter overflow)
 * s is unchanged and err says which op failed (MIMEO_EINVAL). */
int crdt_apply(crdt_state *s, const crdt_ops *ops, const char *node, crdt_hlc *h,
               uint64_t now_ms, mimeo_err *err);

#endif
