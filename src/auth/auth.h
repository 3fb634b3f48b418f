/* Users, password hashes, sessions and _security decisions — CouchDB 3's model, as pure
 * functions where possible (no I/O but the CSPRNG and the clock the caller passes in):
 * PBKDF2 hashes in CouchDB's config and _users formats, the AuthSession cookie, the rules
 * of _users documents, membership in a database's _security, a cache of successful password
 * checks and the failed-login slowdown. The HTTP layer (src/http/authz.c) wires them up. */
#ifndef MIMEO_AUTH_H
#define MIMEO_AUTH_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mimeo.h"
#include "../common/buf.h"
#include "../json/json.h"

/* ---- password hashes ----------------------------------------------------------------------
 * derived = PBKDF2-HMAC-prf(password bytes, salt *text bytes as-is*, iterations, hash size).
 * New hashes use SHA-256 and a 32-hex random salt (CouchDB 3.4+); SHA-1 ("sha", CouchDB's
 * older default, key 20 bytes) is read so that hashes made by CouchDB keep working. */
typedef enum { AUTH_PRF_SHA1 = 1, AUTH_PRF_SHA256 = 2 } auth_prf;

#define AUTH_SALT_MAX 128
#define AUTH_KEY_MAX  32
#define AUTH_DEFAULT_ITERATIONS 600000u
#define AUTH_MAX_ITERATIONS 10000000u  /* refuse stored hashes that would cost minutes */

typedef struct auth_pw {
    auth_prf      prf;
    unsigned      iterations;
    char          salt[AUTH_SALT_MAX + 1];
    size_t        salt_len;
    unsigned char key[AUTH_KEY_MAX];
    size_t        key_len;
} auth_pw;

/* A new hash of pw with a random salt: SHA-256, `iterations` (0 → the default). */
int  auth_pw_new(const char *pw, size_t n, unsigned iterations, auth_pw *out);
/* Parses a config-file hash: "-pbkdf2:sha256-<hex>,<salt>,<iterations>" (what mimeo writes,
 * as CouchDB 3.4+) or "-pbkdf2-<hex>,<salt>,<iterations>" (SHA-1, older CouchDB).
 * 0 or MIMEO_EINVAL. */
int  auth_pw_parse_config(const char *s, auth_pw *out);
/* True when s looks like a config hash (starts "-pbkdf2"): anything else is a plain password
 * to be hashed on start. */
bool auth_pw_is_hashed(const char *s);
/* Formats h as a config hash into out (NUL-terminated). 0 or MIMEO_ETOOLARGE. */
int  auth_pw_format_config(const auth_pw *h, char *out, size_t outlen);
/* Reads the hash fields of a _users document (password_scheme "pbkdf2", pbkdf2_prf,
 * iterations, salt, derived_key). 0, or MIMEO_ENOTFOUND when the doc has no usable hash. */
int  auth_pw_from_user_doc(const jval *doc, auth_pw *out);
/* Runs PBKDF2 on pw and compares with h in constant time. */
bool auth_pw_check(const auth_pw *h, const char *pw, size_t n);
/* Constant-time equality of two n-byte strings. */
bool auth_ct_equal(const void *a, const void *b, size_t n);

/* ---- checked-password cache ---------------------------------------------------------------
 * PBKDF2 at 600k iterations costs ~0.5 s: Basic auth on every request cannot pay that. A
 * successful check is remembered as SHA-256(salt ‖ password) beside the stored key it was
 * checked against; a later request with the same password and an unchanged stored hash
 * costs one SHA-256. A changed password (new salt or key) misses. */
#define AUTH_CACHE_SLOTS 256
typedef struct auth_cache_slot {
    uint64_t      tag;                 /* hash of name, 0 when empty */
    unsigned char key[AUTH_KEY_MAX];   /* the stored derived key it was checked against */
    unsigned char proof[32];           /* SHA-256(salt ‖ password) */
} auth_cache_slot;
typedef struct auth_cache {
    pthread_mutex_t lock;
    auth_cache_slot slot[AUTH_CACHE_SLOTS];
} auth_cache;

void auth_cache_init(auth_cache *c);
void auth_cache_destroy(auth_cache *c);
/* True only when this password was checked against this stored hash before (no PBKDF2). */
bool auth_cache_hit(auth_cache *c, const char *name, const auth_pw *h, const char *pw, size_t n);
/* auth_pw_check through the cache (name selects the slot). */
bool auth_cache_check(auth_cache *c, const char *name, const auth_pw *h, const char *pw,
                      size_t n);

/* ---- failed-login slowdown ----------------------------------------------------------------
 * Per (user name, client address): the first AUTH_THROTTLE_FREE failures cost nothing; each
 * later attempt must wait a delay that doubles per failure up to AUTH_THROTTLE_MAX_MS, and
 * attempts from the same pair queue behind each other (a guesser gains nothing from parallel
 * connections). A success resets the pair. Other addresses are never affected, so a guesser
 * cannot lock the owner out (CouchDB's lockout can), and the owner from the guessing address
 * still gets in after at most one delay when it retries sequentially. Entries live in a fixed
 * table: memory does not grow with the number of guessed names. */
#define AUTH_THROTTLE_SLOTS   4096
#define AUTH_THROTTLE_FREE    3
#define AUTH_THROTTLE_BASE_MS 250
#define AUTH_THROTTLE_MAX_MS  8000
#define AUTH_THROTTLE_QUEUE_MS 30000   /* attempts that would wait longer are refused */

typedef struct auth_throttle_slot {
    uint64_t tag;          /* hash of (name, address); 0 when empty */
    unsigned failures;
    uint64_t next_ms;      /* earliest time the next attempt may be checked */
    uint64_t last_ms;      /* time of the last failure (entries expire after an hour) */
} auth_throttle_slot;
typedef struct auth_throttle {
    pthread_mutex_t    lock;
    unsigned char      key[32];   /* random: which pairs share a slot cannot be chosen */
    auth_throttle_slot slot[AUTH_THROTTLE_SLOTS];
} auth_throttle;

void auth_throttle_init(auth_throttle *t);
void auth_throttle_destroy(auth_throttle *t);
/* Reserves an attempt at time now_ms: returns how long to wait before checking the password
 * (0 for a clean pair), or -1 when the queue for this pair is longer than
 * AUTH_THROTTLE_QUEUE_MS (answer without checking). */
int64_t auth_throttle_enter(auth_throttle *t, const char *name, const char *addr,
                            uint64_t now_ms);
/* The outcome of the attempt. */
void auth_throttle_result(auth_throttle *t, const char *name, const char *addr, bool ok,
                          uint64_t now_ms);

/* ---- the password-hash gate ---------------------------------------------------------------
 * PBKDF2 at 600k iterations keeps a core busy for ~0.4 s. The slowdown above queues attempts
 * per (name, address) only: many parallel wrong passwords under different names or from
 * different addresses would still run one PBKDF2 each at once and starve the node. The gate
 * lets at most `limit` hashes run at a time; a caller beyond that waits up to wait_ms for a
 * slot and then gives up unchecked (the HTTP layer answers 503 with Retry-After). */
typedef struct auth_gate {
    pthread_mutex_t lock;
    pthread_cond_t  freed;
    unsigned        limit;      /* hashes at once, at least 1 */
    unsigned        active;     /* hashes running now */
    unsigned        peak;       /* most ever running at once (for tests and metrics) */
    uint64_t        refused;    /* callers that gave up waiting */
} auth_gate;

void auth_gate_init(auth_gate *g, unsigned limit);
void auth_gate_destroy(auth_gate *g);
/* Changes the limit (0 → 1); callers already inside stay. */
void auth_gate_set_limit(auth_gate *g, unsigned limit);
/* Takes a slot, waiting up to wait_ms for one. 0, or MIMEO_EBUSY when none freed in time
 * (then auth_gate_leave must not be called). */
int  auth_gate_enter(auth_gate *g, unsigned wait_ms);
void auth_gate_leave(auth_gate *g);

/* ---- replication hosts --------------------------------------------------------------------
 * [replicator] allowed_hosts: "host" (any port) or "host:port", comma-separated, an IPv6 host
 * in brackets as in URLs; NULL or "" allows any. The host of url is taken after any
 * "user:password@" (http://127.0.0.1@169.254.169.254/ names 169.254.169.254). Text without
 * "://" is a local database name, not a host, and passes. */
bool auth_host_allowed(const char *allowed, const char *url);

/* ---- AuthSession cookies ------------------------------------------------------------------
 * value = base64url(name ":" HEXSECONDS ":" MAC), MAC = HMAC-SHA256(secret ‖ user salt,
 * name ":" HEXSECONDS) — CouchDB's cookie. A new salt (password change) voids old cookies. */
#define AUTH_NAME_MAX 256

typedef struct auth_cookie {
    char          name[AUTH_NAME_MAX + 1];
    uint64_t      time;         /* seconds since the epoch when it was made */
    unsigned char mac[32];
    size_t        mac_len;
} auth_cookie;

/* Appends the cookie value for name made at time t to out. */
int  auth_cookie_make(buf *out, const char *name, uint64_t t, const char *salt, size_t salt_len,
                      const unsigned char *secret, size_t secret_len);
/* Splits a cookie value. 0 or MIMEO_EINVAL (bad base64, missing parts, name too long). */
int  auth_cookie_parse(const char *v, size_t n, auth_cookie *out);
/* True when c has not expired: made no later than now (60 s of clock skew allowed) and
 * now < time + timeout. A cookie whose MAC was proven stays valid while this holds and its
 * user's salt is unchanged. */
bool auth_cookie_fresh(const auth_cookie *c, uint64_t now, unsigned timeout);
/* True when c's MAC matches and it is fresh (auth_cookie_fresh). */
bool auth_cookie_valid(const auth_cookie *c, const char *salt, size_t salt_len,
                       const unsigned char *secret, size_t secret_len, uint64_t now,
                       unsigned timeout);

/* Splits "Basic base64(name:password)" into name and password (new strings, free() them).
 * 0 or MIMEO_EINVAL. */
int  auth_basic_parse(const char *header, char **name, char **password);

/* ---- who is asking ------------------------------------------------------------------------ */
#define AUTH_MAX_ROLES 64
typedef struct auth_user {
    bool        known;                 /* false: anonymous */
    char        name[AUTH_NAME_MAX + 1];
    size_t      nroles;
    char       *roles[AUTH_MAX_ROLES]; /* owned (auth_user_destroy) */
} auth_user;

void auth_user_destroy(auth_user *u);
/* Adds a role (copied); MIMEO_ENOMEM, or silently ignored past AUTH_MAX_ROLES. */
int  auth_user_add_role(auth_user *u, const char *role, size_t n);
bool auth_user_has_role(const auth_user *u, const char *role);
static inline bool auth_user_is_admin(const auth_user *u) {
    return auth_user_has_role(u, "_admin");
}
/* Appends {"name":…|null,"roles":[…]} to b. */
int  auth_user_json(buf *b, const auth_user *u);

/* ---- _security ----------------------------------------------------------------------------
 * {"admins":{"names":[],"roles":[]},"members":{"names":[],"roles":[]}}. "readers" is read as
 * an old name of "members". */
/* Checks a _security body for PUT: an object whose admins/members (when present) are
 * objects whose names/roles (when present) are arrays of strings. 0 or MIMEO_EINVAL with
 * err filled (bad_request, CouchDB's reasons). */
int  auth_security_validate(const jval *sec, mimeo_err *err);
/* The object a database without a stored one has: admin_only → members and admins both
 * {"roles":["_admin"]} (CouchDB 3's default); else {}. Static text. */
const char *auth_security_default(bool admin_only);
/* Server admin, or listed in sec's admins by name or role. */
bool auth_is_db_admin(const auth_user *u, const jval *sec);
/* A db admin, or listed in members; a database whose members list no names and no roles is
 * open to everyone. */
bool auth_is_member(const auth_user *u, const jval *sec);

/* ---- _users documents --------------------------------------------------------------------- */
#define AUTH_USER_PREFIX "org.couchdb.user:"

/* Checks and rewrites a _users document write: id is the document id, doc the new body
 * (parsed; members beginning with _ included), old the stored winner (NULL if none or
 * deleted), u the writer. CouchDB's _users rules: _id = "org.couchdb.user:" + name, type
 * "user", roles an array of strings, names not empty, not starting with _ and without ':';
 * a non-admin may only create their own signup with no roles, or update their own document
 * without changing roles or name. A cleartext "password" is replaced by password_scheme
 * "pbkdf2", pbkdf2_prf "sha256", iterations, salt, derived_key (the hash of the new
 * password), and "password_sha" is dropped. Deletions (doc->_deleted) need an admin or the
 * owner. On success out receives the JSON to store. Errors carry CouchDB's error names:
 * forbidden (MIMEO_EINVAL with error "forbidden"), bad_request, doc_validation. */
int auth_user_doc_prepare(const char *id, size_t id_len, const jval *doc, const jval *old,
                          const auth_user *u, unsigned iterations, buf *out, mimeo_err *err);

#endif
