/* Authentication and authorization of every request, in one place before routing (CouchDB
 * 3's chttpd_auth_request, written as a table of path rules): who the request is (Basic,
 * AuthSession cookie, or anonymous — everyone is admin when no admin exists on a loopback
 * server), whether it may do what it asks, the _users rules (passwords hashed before the
 * handler stores the body, other users' documents hidden), and where _security objects live:
 * as _local documents of _users keyed by the database's name and creation time, so a
 * re-created database starts from the default again. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "http_int.h"
#include "../mesh/mesh_node.h"

#define SEC_CACHE_SLOTS 64

typedef struct http_admin_entry {
    char    name[AUTH_NAME_MAX + 1];
    auth_pw pw;
} http_admin_entry;

typedef struct sec_cache_slot {
    char    *key;    /* "<start time>:<db name>", NULL when empty */
    char    *json;   /* the stored object's text */
    jval    *tree;   /* parsed, for the member checks of every request (NULL: parse json) */
} sec_cache_slot;

/* _users accounts as last read, by name. Reading and parsing the document was most of what a
 * request by a _users account cost (a GET: 100k instructions against 57k open). An entry
 * stands only while _users is the same database (creation time) at the same update_seq as
 * was read before the document: every write to _users (a new password, new roles, a deleted
 * user) moves update_seq, so the next request reads the document again. */
#define USER_CACHE_SLOTS 64
typedef struct user_cache_slot {
    char     name[AUTH_NAME_MAX + 1];   /* "" when empty */
    uint64_t created_us, seq;
    auth_pw  pw;
    size_t   nroles;
    char    *roles[AUTH_MAX_ROLES];
} user_cache_slot;

struct http_auth {
    http_admin_entry *admins;
    size_t            nadmins;
    unsigned char     secret[64];
    size_t            secret_len;
    auth_cache        cache;
    auth_throttle     throttle;
    auth_pw           dummy;          /* checked for unknown names: same cost as a real one */
    pthread_mutex_t   users_lock;
    user_cache_slot   users[USER_CACHE_SLOTS];
    /* Moves on every commit that touches _users (http_auth_users_touched), before the
     * writer's reply can leave: a connection's memoized account stands while it is unmoved. */
    atomic_uint_fast64_t users_gen;
};

/* _security objects by "<env>:<key>", shared by every server of the process (HTTP and HTTPS
 * serve the same databases: a PUT through one must be seen by the other). */
static pthread_mutex_t sec_lock = PTHREAD_MUTEX_INITIALIZER;
/* Held around every read of a stored object that fills the cache and every write, so that a
 * reader that missed cannot put an object older than a concurrent PUT's into the cache. */
static pthread_mutex_t sec_io_lock = PTHREAD_MUTEX_INITIALIZER;
static sec_cache_slot  sec_cache[SEC_CACHE_SLOTS];

/* "e<address in hex>:", the start of every cache key of one environment. */
static size_t http_sec_env_prefix(const void *env, char out[32]);

/* Password hashes at once, for the whole process: the HTTP and HTTPS servers share the
 * cores (auth.h, "the password-hash gate"). */
static auth_gate       hash_gate;
static pthread_once_t  hash_gate_once = PTHREAD_ONCE_INIT;
static void hash_gate_init(void) { auth_gate_init(&hash_gate, 1); }

/* ---- start and stop ----------------------------------------------------------------------- */

int http_auth_start(http_server *s, char *errbuf, size_t errlen) {
    const http_auth_cfg *c = &s->cfg.auth;
    struct http_auth *a = calloc(1, sizeof *a);
    if (!a) {
        snprintf(errbuf, errlen, "out of memory");
        return -1;
    }
    a->admins = calloc(c->nadmins ? c->nadmins : 1, sizeof *a->admins);
    if (!a->admins) {
        free(a);
        snprintf(errbuf, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < c->nadmins; i++) {
        http_admin_entry *e = &a->admins[a->nadmins];
        if (strlen(c->admin_names[i]) > AUTH_NAME_MAX ||
            auth_pw_parse_config(c->admin_hashes[i], &e->pw) != 0) {
            snprintf(errbuf, errlen, "[admins] %s: not a password hash mimeo can read",
                     c->admin_names[i]);
            free(a->admins);
            free(a);
            return -1;
        }
        snprintf(e->name, sizeof e->name, "%s", c->admin_names[i]);
        a->nadmins++;
    }
    /* The secret: hex from the configuration, else random for this run (cookies then end
     * with the process). */
    size_t hl = c->secret ? strlen(c->secret) : 0;
    if (hl >= 32 && hl % 2 == 0 && hl / 2 <= sizeof a->secret) {
        for (size_t i = 0; i < hl / 2; i++) {
            int h = hex_digit(c->secret[2 * i]), l = hex_digit(c->secret[2 * i + 1]);
            if (h < 0 || l < 0) { hl = 0; break; }
            a->secret[i] = (unsigned char)(h << 4 | l);
        }
        a->secret_len = hl / 2;
    }
    if (a->secret_len == 0) {
        random_bytes(a->secret, 32);
        a->secret_len = 32;
    }
    auth_cache_init(&a->cache);
    auth_throttle_init(&a->throttle);
    pthread_mutex_init(&a->users_lock, NULL);
    pthread_once(&hash_gate_once, hash_gate_init);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    auth_gate_set_limit(&hash_gate, c->max_hashes ? c->max_hashes
                                                  : (unsigned)(cores > 0 ? cores : 1));
    auth_pw_new("", 0, c->iterations, &a->dummy);
    s->auth = a;

    /* _users holds the accounts and the _security objects: it exists from the start. */
    mimeo_err e = {0};
    int rc = mimeo_db_create(s->env, "_users", &e);
    if (rc != 0 && rc != MIMEO_EEXIST) {
        snprintf(errbuf, errlen, "cannot create _users: %s", e.reason[0] ? e.reason
                                                                         : mimeo_strerror(rc));
        http_auth_stop(s);
        return -1;
    }
    return 0;
}

void http_auth_stop(http_server *s) {
    struct http_auth *a = s->auth;
    if (!a) return;
    auth_cache_destroy(&a->cache);
    auth_throttle_destroy(&a->throttle);
    for (size_t i = 0; i < USER_CACHE_SLOTS; i++)
        for (size_t j = 0; j < a->users[i].nroles; j++) free(a->users[i].roles[j]);
    memset(a->users, 0, sizeof a->users);
    pthread_mutex_destroy(&a->users_lock);
    /* Forget this environment's cached objects: another one may later live at its address. */
    pthread_mutex_lock(&sec_lock);
    char prefix[32];
    size_t pl = http_sec_env_prefix(s->env, prefix);
    for (size_t i = 0; i < SEC_CACHE_SLOTS; i++) {
        if (!sec_cache[i].key || strncmp(sec_cache[i].key, prefix, pl) != 0) continue;
        free(sec_cache[i].key);
        free(sec_cache[i].json);
        jval_free(sec_cache[i].tree);
        sec_cache[i].key = sec_cache[i].json = NULL;
        sec_cache[i].tree = NULL;
    }
    pthread_mutex_unlock(&sec_lock);
    memset(a->secret, 0, sizeof a->secret);
    free(a->admins);
    free(a);
    s->auth = NULL;
}

/* ---- accounts ----------------------------------------------------------------------------- */
static jval *http_users_doc(mimeo_db *db, const char *name) {
    buf id;
    buf_init(&id, 0);
    jval *doc = NULL;
    char *json = NULL;
    size_t len = 0;
    if (buf_puts(&id, AUTH_USER_PREFIX) == 0 && buf_puts(&id, name) == 0 &&
        mimeo_doc_get(db, id.data, id.len, NULL, &json, &len, NULL) == 0)
        json_tree_parse(json, len, NULL, &doc, NULL);
    mimeo_free(json);
    buf_destroy(&id);
    return doc;
}

static user_cache_slot *http_user_slot(struct http_auth *a, const char *name) {
    uint32_t h = 2166136261u;
    for (const char *p = name; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
    return &a->users[h % USER_CACHE_SLOTS];
}

/* 0 with *pw and u filled when the cached account still stands for _users as `info`. */
static int http_user_cached(struct http_auth *a, const char *name, size_t nlen,
                            const mimeo_db_info *info, auth_pw *pw, auth_user *u) {
    int rc = MIMEO_ENOTFOUND;
    pthread_mutex_lock(&a->users_lock);
    const user_cache_slot *c = http_user_slot(a, name);
    if (c->seq == info->update_seq && c->created_us == info->instance_start_time &&
        strcmp(c->name, name) == 0) {
        *pw = c->pw;
        u->known = true;
        memcpy(u->name, name, nlen + 1);
        rc = 0;
        for (size_t i = 0; rc == 0 && i < c->nroles; i++)
            rc = auth_user_add_role(u, c->roles[i], strlen(c->roles[i]));
    }
    pthread_mutex_unlock(&a->users_lock);
    if (rc != 0) auth_user_destroy(u);
    return rc;
}

static void http_user_keep(struct http_auth *a, const mimeo_db_info *info, const auth_pw *pw,
                           const auth_user *u) {
    user_cache_slot n = { .created_us = info->instance_start_time, .seq = info->update_seq,
                          .pw = *pw };
    memcpy(n.name, u->name, sizeof n.name);
    for (size_t i = 0; i < u->nroles; i++) {
        if (!(n.roles[i] = strdup(u->roles[i]))) {
            for (size_t j = 0; j < i; j++) free(n.roles[j]);
            return;   /* not kept: the next request reads the document again */
        }
        n.nroles = i + 1;
    }
    pthread_mutex_lock(&a->users_lock);
    user_cache_slot *c = http_user_slot(a, u->name);
    /* A reader that read an older _users must not replace a newer entry. */
    if (c->name[0] && c->created_us == n.created_us && c->seq > n.seq) {
        pthread_mutex_unlock(&a->users_lock);
        for (size_t i = 0; i < n.nroles; i++) free(n.roles[i]);
        return;
    }
    for (size_t i = 0; i < c->nroles; i++) free(c->roles[i]);
    *c = n;
    pthread_mutex_unlock(&a->users_lock);
}

/* Which _users a lookup read, for the connection memo: an account stands only while _users
 * is still that database at that update_seq; a config admin stands for the server's life. */
typedef struct users_stamp {
    bool     account;   /* from _users (else a config admin) */
    uint64_t gen;       /* users_gen, read before anything of _users */
} users_stamp;

void http_auth_users_touched(http_server *s) {
    atomic_fetch_add(&s->auth->users_gen, 1);
}

static int http_auth_lookup_stamped(http_server *s, const char *name, auth_pw *pw, auth_user *u,
                                    users_stamp *st) {
    struct http_auth *a = s->auth;
    memset(u, 0, sizeof *u);
    memset(st, 0, sizeof *st);
    size_t nlen = strlen(name);
    if (nlen == 0 || nlen > AUTH_NAME_MAX) return MIMEO_ENOTFOUND;
    for (size_t i = 0; i < a->nadmins; i++) {
        if (strcmp(a->admins[i].name, name) != 0) continue;
        *pw = a->admins[i].pw;
        u->known = true;
        memcpy(u->name, name, nlen + 1);   /* runs on every authenticated request */
        return auth_user_add_role(u, "_admin", 6);
    }
    st->account = true;
    st->gen = atomic_load(&a->users_gen);
    mimeo_db *db = NULL;
    if (mimeo_db_open(s->env, "_users", &db, NULL) != 0) return MIMEO_ENOTFOUND;
    /* update_seq is read before the document: the document is then at least that new, so an
     * entry can only be older than its stamp says if a write came between, and that write's
     * seq sends the next request back to the document. */
    mimeo_db_info info;
    bool stamped = mimeo_db_info_get(db, &info) == 0;
    if (stamped && http_user_cached(a, name, nlen, &info, pw, u) == 0) {
        mimeo_db_close(db);
        return 0;
    }
    jval *doc = http_users_doc(db, name);
    mimeo_db_close(db);
    if (!doc) return MIMEO_ENOTFOUND;
    int rc = auth_pw_from_user_doc(doc, pw);
    if (rc == 0) {
        u->known = true;
        memcpy(u->name, name, nlen + 1);
        const jval *roles = jval_get(doc, "roles");
        for (size_t i = 0; rc == 0 && roles && roles->type == JV_ARRAY && i < roles->count; i++)
            if (roles->items[i]->type == JV_STRING)
                rc = auth_user_add_role(u, roles->items[i]->str, roles->items[i]->len);
    }
    jval_free(doc);
    if (rc != 0) auth_user_destroy(u);
    else if (stamped) http_user_keep(a, &info, pw, u);
    return rc;
}

int http_auth_lookup(http_server *s, const char *name, auth_pw *pw, auth_user *u) {
    users_stamp st;
    return http_auth_lookup_stamped(s, name, pw, u, &st);
}

static void http_client_addr(http_req *r, char *out, size_t n) {
    snprintf(out, n, "?");
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr) return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)n);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)n);
}

static void http_sleep_ms(int64_t ms) {
    struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0) {}
}

static int http_auth_login_stamped(http_req *r, const char *name, const char *password,
                                   auth_user *u, auth_pw *pw, users_stamp *st) {
    struct http_auth *a = r->srv->auth;
    auth_pw h;
    /* Fast path for Basic on every request: a password already proven right against the
     * stored hash needs neither PBKDF2 nor the slowdown (which only has to slow wrong ones). */
    if (http_auth_lookup_stamped(r->srv, name, &h, u, st) == 0) {
        if (auth_cache_hit(&a->cache, name, &h, password, strlen(password))) {
            if (pw) *pw = h;
            return 0;
        }
        auth_user_destroy(u);
    }
    char addr[64];
    http_client_addr(r, addr, sizeof addr);
    int64_t wait = auth_throttle_enter(&a->throttle, name, addr, clock_ms());
    if (wait < 0) return MIMEO_ECONFLICT;   /* too many failures queued: not even checked */
    if (wait > 0) http_sleep_ms(wait);
    /* Unchecked when no hash slot frees in time: neither a success nor a failure. */
    if (auth_gate_enter(&hash_gate, r->srv->cfg.auth.hash_wait_ms) != 0) return MIMEO_EBUSY;
    bool ok;
    if (http_auth_lookup_stamped(r->srv, name, &h, u, st) == 0) {
        ok = auth_cache_check(&a->cache, name, &h, password, strlen(password));
    } else {
        /* Unknown name: spend the same time as a wrong password, so that timing does not
         * tell which names exist. */
        auth_pw_check(&a->dummy, password, strlen(password));
        ok = false;
    }
    auth_gate_leave(&hash_gate);
    auth_throttle_result(&a->throttle, name, addr, ok, clock_ms());
    if (!ok) {
        auth_user_destroy(u);
        return MIMEO_ENOTFOUND;
    }
    if (pw) *pw = h;
    return 0;
}

int http_auth_login(http_req *r, const char *name, const char *password, auth_user *u,
                    auth_pw *pw) {
    users_stamp st;
    return http_auth_login_stamped(r, name, password, u, pw, &st);
}

void http_auth_reply_failure(http_req *r, int rc) {
    if (rc == MIMEO_EBUSY) {
        http_reply_error(r, 503, "service_unavailable",
                         "Too many password checks in progress; retry later.");
        http_header(r, "Retry-After", "1");
        return;
    }
    http_reply_error(r, 401, "unauthorized",
                     rc == MIMEO_ECONFLICT ? "Too many failed logins; try again later."
                                           : "Name or password is incorrect.");
}

/* The Set-Cookie value for a session of u (salt from its hash), into r->set_cookie. */
void http_auth_set_cookie(http_req *r, const char *name, const auth_pw *pw, bool clear) {
    struct http_auth *a = r->srv->auth;
    const http_auth_cfg *c = &r->srv->cfg.auth;
    buf b;
    buf_init(&b, 0);
    buf_puts(&b, "AuthSession=");
    if (!clear)
        auth_cookie_make(&b, name, (uint64_t)time(NULL), pw->salt, pw->salt_len, a->secret,
                         a->secret_len);
    /* Expires beside Max-Age, as CouchDB: some clients (nano) read only Expires. */
    time_t until = clear ? 0 : time(NULL) + (time_t)c->timeout_s;
    struct tm tm;
    char date[64];
    gmtime_r(&until, &tm);
    strftime(date, sizeof date, "%a, %d-%b-%Y %H:%M:%S GMT", &tm);
    buf_printf(&b, "; Version=1; Expires=%s; Max-Age=%u; Path=/; HttpOnly", date,
               clear ? 0 : c->timeout_s);
    if (c->secure_cookie) buf_puts(&b, "; Secure");
    if (c->same_site && c->same_site[0]) buf_printf(&b, "; SameSite=%s", c->same_site);
    free(r->set_cookie);
    r->set_cookie = buf_detach(&b, NULL);
}

/* The AuthSession cookie of the request, if any (a pointer into the header, and its length). */
static const char *http_session_cookie(http_req *r, size_t *len) {
    const char *v = MHD_lookup_connection_value(r->conn, MHD_COOKIE_KIND, "AuthSession");
    if (!v || !v[0]) return NULL;
    *len = strlen(v);
    return v;
}

/* Credentials a connection has already proven, and what they proved. Clients keep their
 * connections open (PouchDB, nano and loadgen all do) and send the same Authorization header
 * or cookie every time; matching it against the one proven before skips the base64, the
 * password proof's SHA-256, the cookie's parse and MAC, the account's lookup and, for the
 * last database asked about, the _security check. The memo stands only while what it was
 * derived from does:
 *  - a _users account's, while no commit has touched _users since it was looked up (every
 *    write to it — a new password, new roles, a deleted user, _users deleted — moves
 *    users_gen before the write is answered, and the next request then looks the user up
 *    again and checks the stored hash or salt as proven); a config admin's, for the
 *    server's life (the configuration is read once);
 *  - a cookie's, while auth_cookie_fresh says it has not expired (and past half its life the
 *    reply still carries a fresh one);
 *  - the standing in a database (admin, member), while it is the same database (name and
 *    creation time) and no _security object has been stored since (sec_generation).
 * The header is kept while the connection lives, as it sits in the connection's buffers
 * anyway for each request. */
struct http_auth_memo {
    bool          cookie;                /* an AuthSession cookie, else a Basic header */
    char         *raw;                   /* what the client sent */
    size_t        raw_len;
    char          name[AUTH_NAME_MAX + 1];
    unsigned char key[AUTH_KEY_MAX];     /* Basic: the stored derived key it matched */
    size_t        key_len;
    auth_cookie   ck;                    /* cookie: as parsed */
    auth_pw       pw;                    /* cookie: the user's hash (its salt for a refresh) */
    auth_user     user;                  /* who it proved to be, with the roles */
    users_stamp   stamp;                 /* the _users it was looked up in */
    bool          standing;              /* db_* below hold */
    uint64_t      sec_gen;               /* sec_generation when the standing was found */
    char         *db_name;
    uint64_t      db_created;
    bool          db_admin, member;
};

/* Moves on every _security object stored in this process (HTTP and HTTPS servers share the
 * objects): a connection's memoized standing in a database stands only while it is unmoved. */
static atomic_uint_fast64_t sec_generation;

void http_auth_memo_free(struct http_auth_memo *m) {
    if (!m) return;
    if (m->raw) memset(m->raw, 0, m->raw_len);
    free(m->raw);
    free(m->db_name);
    auth_user_destroy(&m->user);
    memset(m, 0, sizeof *m);
    free(m);
}

static struct http_auth_memo *http_auth_memo_match(http_req *r, bool cookie, const char *raw,
                                                   size_t n) {
    struct http_auth_memo **mp = http_req_auth_memo(r), *m = mp ? *mp : NULL;
    if (!m || m->cookie != cookie || m->raw_len != n || !auth_ct_equal(m->raw, raw, n))
        return NULL;
    return m;
}

/* Whether the user m proved is still as it was looked up (see above). */
static bool http_auth_memo_current(http_server *s, const struct http_auth_memo *m) {
    return !m->stamp.account || m->stamp.gen == atomic_load(&s->auth->users_gen);
}

static int http_auth_user_copy(auth_user *dst, const auth_user *src) {
    dst->known = src->known;
    memcpy(dst->name, src->name, sizeof dst->name);
    dst->nroles = 0;
    for (size_t i = 0; i < src->nroles; i++)
        if (auth_user_add_role(dst, src->roles[i], strlen(src->roles[i])) != 0) {
            auth_user_destroy(dst);
            return MIMEO_ENOMEM;
        }
    return 0;
}

/* The memo's user as r's (r->user empty before); false (r->user left empty) when out of memory. */
static bool http_auth_memo_use(http_req *r, const struct http_auth_memo *m) {
    if (http_auth_user_copy(&r->user, &m->user) != 0) return false;
    r->memo_user = true;
    return true;
}

/* Remembers what r just proved (r->user, looked up in st); a failure to allocate only costs
 * the next request a check. A memo of the same credentials keeps its standing only when the
 * user is unchanged, which a fresh lookup cannot promise: it starts over. */
static void http_auth_memo_keep(http_req *r, bool cookie, const char *raw, size_t n,
                                const char *name, const auth_pw *h, const auth_cookie *ck,
                                const users_stamp *st) {
    struct http_auth_memo **mp = http_req_auth_memo(r);
    if (!mp || n > 4096) return;
    struct http_auth_memo *m = calloc(1, sizeof *m);
    if (!m || !(m->raw = malloc(n + 1))) {
        free(m);
        return;
    }
    memcpy(m->raw, raw, n);
    m->raw[n] = '\0';
    m->raw_len = n;
    m->cookie = cookie;
    snprintf(m->name, sizeof m->name, "%s", name);
    if (h) {
        m->pw = *h;
        memcpy(m->key, h->key, h->key_len);
        m->key_len = h->key_len;
    }
    if (ck) m->ck = *ck;
    m->stamp = *st;
    if (http_auth_user_copy(&m->user, &r->user) != 0) {
        http_auth_memo_free(m);
        return;
    }
    http_auth_memo_free(*mp);
    *mp = m;
    r->memo_user = true;
}

/* Basic credentials this connection proved before: from the memo while it stands, else
 * against the user's hash as it is now (and the memo renewed). */
static bool http_auth_memo_basic(http_req *r, const char *hdr) {
    size_t n = strlen(hdr);
    const struct http_auth_memo *m = http_auth_memo_match(r, false, hdr, n);
    if (!m) return false;
    if (http_auth_memo_current(r->srv, m)) return http_auth_memo_use(r, m);
    auth_pw h;
    users_stamp st;
    if (http_auth_lookup_stamped(r->srv, m->name, &h, &r->user, &st) != 0) return false;
    if (h.key_len == m->key_len && auth_ct_equal(h.key, m->key, m->key_len)) {
        char name[AUTH_NAME_MAX + 1];
        memcpy(name, m->name, sizeof name);   /* m is replaced */
        http_auth_memo_keep(r, false, hdr, n, name, &h, NULL, &st);
        return true;
    }
    auth_user_destroy(&r->user);
    return false;
}

/* Whether the request's credentials can be taken without a password hash or a failed-login
 * wait, so that the event thread may route it itself: no Basic header at all, or Basic
 * credentials the checked-password cache (or the mesh secret) proves. On a hit the user is
 * set here and http_authenticate does not look again; anything else is left untouched for a
 * worker. */
bool http_authenticate_quick(http_req *r) {
    const char *hdr = http_req_header(r, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!hdr || strncasecmp(hdr, "Basic", 5) != 0) return true;
    char *name = NULL, *pw = NULL;
    bool done = http_auth_memo_basic(r, hdr);
    if (!done && auth_basic_parse(hdr, &name, &pw) == 0) {
        auth_pw h;
        users_stamp st;
        if (strcmp(name, "_mesh") == 0) {
            if (mesh_node_http_auth(mesh_node_current(), pw)) {
                r->user.known = true;
                snprintf(r->user.name, sizeof r->user.name, "_mesh");
                done = auth_user_add_role(&r->user, "_admin", 6) == 0;
                if (!done) auth_user_destroy(&r->user);
            }
        } else if (http_auth_lookup_stamped(r->srv, name, &h, &r->user, &st) == 0) {
            done = auth_cache_hit(&r->srv->auth->cache, name, &h, pw, strlen(pw));
            if (done) http_auth_memo_keep(r, false, hdr, strlen(hdr), name, &h, NULL, &st);
            else auth_user_destroy(&r->user);
        }
    }
    if (pw) memset(pw, 0, strlen(pw));
    free(name);
    free(pw);
    if (done) {
        r->authn = "default";
        r->authn_done = true;
    }
    return done;
}

/* Who the request is. false after replying 401 (bad Basic credentials). */
static bool http_authenticate(http_req *r) {
    const http_auth_cfg *c = &r->srv->cfg.auth;
    struct http_auth *a = r->srv->auth;
    if (r->authn_done) return true;
    const char *hdr = http_req_header(r, MHD_HTTP_HEADER_AUTHORIZATION);
    if (hdr && strncasecmp(hdr, "Basic", 5) == 0) {
        char *name = NULL, *pw = NULL;
        int rc = auth_basic_parse(hdr, &name, &pw);
        /* Mesh nodes replicating with each other: the reserved "_mesh" principal, whose
         * password is derived from the mesh secret (src/mesh); it is a server admin. */
        if (rc == 0 && strcmp(name, "_mesh") == 0) {
            if (mesh_node_http_auth(mesh_node_current(), pw)) {
                r->user.known = true;
                snprintf(r->user.name, sizeof r->user.name, "_mesh");
                rc = auth_user_add_role(&r->user, "_admin", 6);
            } else if (!(http_seg_is(r, 0, "_mesh") && r->nseg == 1 && r->method == HTTP_POST)) {
                rc = MIMEO_ENOTFOUND;
            }   /* else anonymous: a mesh message's own MAC decides (and is counted) */
        } else if (rc == 0 && http_auth_memo_basic(r, hdr)) {
            rc = 0;
        } else if (rc == 0) {
            auth_pw h;
            users_stamp st;
            rc = http_auth_login_stamped(r, name, pw, &r->user, &h, &st);
            if (rc == 0) http_auth_memo_keep(r, false, hdr, strlen(hdr), name, &h, NULL, &st);
        }
        if (pw) memset(pw, 0, strlen(pw));
        free(name);
        free(pw);
        if (rc != 0) {
            http_auth_reply_failure(r, rc);
            return false;
        }
        r->authn = "default";
        return true;
    }
    size_t clen = 0;
    const char *cookie = http_session_cookie(r, &clen);
    if (cookie) {
        auth_cookie ck;
        auth_pw h;
        auth_user u;
        users_stamp st;
        uint64_t now = (uint64_t)time(NULL);
        const struct http_auth_memo *m = http_auth_memo_match(r, true, cookie, clen);
        if (m && auth_cookie_fresh(&m->ck, now, c->timeout_s) &&
            http_auth_memo_current(r->srv, m) && http_auth_memo_use(r, m)) {
            r->authn = "cookie";
            if (now > m->ck.time + c->timeout_s / 2)
                http_auth_set_cookie(r, m->ck.name, &m->pw, false);
            return true;
        }
        if (m) ck = m->ck;
        if ((m || auth_cookie_parse(cookie, clen, &ck) == 0) &&
            http_auth_lookup_stamped(r->srv, ck.name, &h, &u, &st) == 0) {
            if (auth_cookie_valid(&ck, h.salt, h.salt_len, a->secret, a->secret_len, now,
                                  c->timeout_s)) {
                r->user = u;
                r->authn = "cookie";
                http_auth_memo_keep(r, true, cookie, clen, ck.name, &h, &ck, &st);
                /* Past half its life the reply carries a fresh cookie. */
                if (now > ck.time + c->timeout_s / 2) http_auth_set_cookie(r, ck.name, &h, false);
                return true;
            }
            auth_user_destroy(&u);
        }
        /* A stale or forged cookie: the request goes on as anonymous, as in CouchDB. */
    }
    if (c->open) auth_user_add_role(&r->user, "_admin", 6);
    return true;
}

/* ---- _security storage -------------------------------------------------------------------- */
/* "security:<instance start time>:<db name>" — the _local id in _users. */
/* The keys below are built without printf: they are built for every request a
 * non-admin makes to a database, and formatting them cost more than the lookup. */
static size_t http_put_u64(char *out, uint64_t v, unsigned base) {
    char t[24];
    size_t n = 0;
    do t[n++] = "0123456789abcdef"[v % base]; while ((v /= base) != 0);
    for (size_t i = 0; i < n; i++) out[i] = t[n - 1 - i];
    return n;
}

static size_t http_sec_env_prefix(const void *env, char out[32]) {
    out[0] = 'e';
    size_t n = 1 + http_put_u64(out + 1, (uint64_t)(uintptr_t)env, 16);
    out[n++] = ':';
    return n;
}

static int http_sec_key(http_req *r, buf *key) {
    mimeo_db_info info;
    int rc = mimeo_db_info_get(r->db, &info);
    if (rc != 0) return rc;
    char num[32];
    size_t n = http_put_u64(num, info.instance_start_time, 10);
    num[n++] = ':';
    if ((rc = buf_puts(key, "security:")) != 0 || (rc = buf_put(key, num, n)) != 0) return rc;
    return buf_puts(key, mimeo_db_name(r->db));
}

static unsigned http_sec_slot(const char *key) {
    uint32_t h = 2166136261u;
    for (const char *p = key; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
    return h % SEC_CACHE_SLOTS;
}

/* The cache key: the environment's address, then the _local id. */
static char *http_sec_cache_key(http_req *r, const char *key) {
    char prefix[32];
    size_t pl = http_sec_env_prefix(r->srv->env, prefix), kl = strlen(key);
    char *k = malloc(pl + kl + 1);
    if (!k) return NULL;
    memcpy(k, prefix, pl);
    memcpy(k + pl, key, kl + 1);
    return k;
}

static void http_sec_cache_put(http_req *r, const char *key, const char *json) {
    char *k = http_sec_cache_key(r, key), *j = strdup(json);
    jval *tree = NULL;
    if (!k || !j) {
        free(k);
        free(j);
        return;
    }
    if (json_tree_parse(j, strlen(j), NULL, &tree, NULL) != 0) tree = NULL;
    pthread_mutex_lock(&sec_lock);
    sec_cache_slot *s = &sec_cache[http_sec_slot(k)];
    free(s->key);
    free(s->json);
    jval_free(s->tree);
    s->key = k;
    s->json = j;
    s->tree = tree;
    pthread_mutex_unlock(&sec_lock);
}

static int http_security_standing_read(http_req *r, bool *db_admin, bool *member);

/* Whether r's user is an admin / a member of r->db by its _security object: from the cached
 * tree when there is one (no copy, no parse), else through http_security_text. */
static int http_security_standing(http_req *r, bool *db_admin, bool *member) {
    /* The connection's memo, when r's user is its user (checked current for this request). */
    struct http_auth_memo **mp = r->memo_user ? http_req_auth_memo(r) : NULL, *m = mp ? *mp : NULL;
    mimeo_db_info dbi;
    const char *dbname = mimeo_db_name(r->db);
    uint64_t gen = atomic_load(&sec_generation);
    bool have_dbi = m && mimeo_db_info_get(r->db, &dbi) == 0;
    if (have_dbi && m->standing && m->sec_gen == gen && m->db_created == dbi.instance_start_time &&
        strcmp(m->db_name, dbname) == 0) {
        *db_admin = m->db_admin;
        *member = m->member;
        return 0;
    }
    int rc = http_security_standing_read(r, db_admin, member);
    /* gen was read before the object: a _security stored meanwhile moves it past the memo. */
    if (rc == 0 && have_dbi) {
        if (!m->db_name || strcmp(m->db_name, dbname) != 0) {
            char *n = strdup(dbname);
            if (!n) {
                m->standing = false;
                return rc;
            }
            free(m->db_name);
            m->db_name = n;
        }
        m->db_created = dbi.instance_start_time;
        m->sec_gen = gen;
        m->db_admin = *db_admin;
        m->member = *member;
        m->standing = true;
    }
    return rc;
}

static int http_security_standing_read(http_req *r, bool *db_admin, bool *member) {
    buf key;
    buf_init(&key, 0);
    char *ck = http_sec_key(r, &key) == 0 ? http_sec_cache_key(r, key.data) : NULL;
    buf_destroy(&key);
    bool hit = false;
    if (ck) {
        pthread_mutex_lock(&sec_lock);
        const sec_cache_slot *s = &sec_cache[http_sec_slot(ck)];
        if (s->key && s->tree && strcmp(s->key, ck) == 0) {
            *db_admin = auth_is_db_admin(&r->user, s->tree);
            *member = *db_admin || auth_is_member(&r->user, s->tree);
            hit = true;
        }
        pthread_mutex_unlock(&sec_lock);
        free(ck);
    }
    if (hit) return 0;
    char *text = http_security_text(r);
    jval *sec = NULL;
    if (!text || json_tree_parse(text, strlen(text), NULL, &sec, NULL) != 0) {
        free(text);
        return -1;
    }
    free(text);
    *db_admin = auth_is_db_admin(&r->user, sec);
    *member = *db_admin || auth_is_member(&r->user, sec);
    jval_free(sec);
    return 0;
}

/* The database's _security object as JSON text (new, free()); the default when none is
 * stored. r->db must be open. */
char *http_security_text(http_req *r) {
    buf key;
    buf_init(&key, 0);
    if (http_sec_key(r, &key) != 0) {
        buf_destroy(&key);
        return NULL;
    }
    char *out = NULL;
    char *ck = http_sec_cache_key(r, key.data);
    if (ck) {
        pthread_mutex_lock(&sec_lock);
        sec_cache_slot *s = &sec_cache[http_sec_slot(ck)];
        if (s->key && strcmp(s->key, ck) == 0) out = strdup(s->json);
        pthread_mutex_unlock(&sec_lock);
        free(ck);
    }
    if (out) {
        buf_destroy(&key);
        return out;
    }
    mimeo_db *users = NULL;
    char *json = NULL;
    size_t len = 0;
    jval *doc = NULL;
    buf obj;
    buf_init(&obj, 0);
    pthread_mutex_lock(&sec_io_lock);
    if (mimeo_db_open(r->srv->env, "_users", &users, NULL) == 0 &&
        mimeo_local_get(users, key.data, key.len, &json, &len, NULL) == 0 &&
        json_tree_parse(json, len, NULL, &doc, NULL) == 0 && jval_get(doc, "security"))
        json_put_jval(&obj, jval_get(doc, "security"));
    else
        buf_puts(&obj, auth_security_default(r->srv->cfg.auth.default_admin_only));
    mimeo_free(json);
    jval_free(doc);
    if (users) mimeo_db_close(users);
    out = buf_detach(&obj, NULL);
    if (out) http_sec_cache_put(r, key.data, out);
    pthread_mutex_unlock(&sec_io_lock);
    buf_destroy(&key);
    return out;
}

int http_security_store(http_req *r, const jval *sec, mimeo_err *err) {
    buf key, body;
    buf_init(&key, 0);
    buf_init(&body, 0);
    mimeo_db *users = NULL;
    char *old = NULL;
    size_t old_len = 0;
    jval *oldv = NULL;
    char rev[MIMEO_REV_MAX] = "";
    int rc = http_sec_key(r, &key);
    pthread_mutex_lock(&sec_io_lock);
    if (rc == 0) rc = mimeo_db_open(r->srv->env, "_users", &users, err);
    if (rc == 0 && mimeo_local_get(users, key.data, key.len, &old, &old_len, NULL) == 0 &&
        json_tree_parse(old, old_len, NULL, &oldv, NULL) == 0) {
        const jval *rv = jval_get(oldv, "_rev");
        if (rv && rv->type == JV_STRING) snprintf(rev, sizeof rev, "%s", rv->str);
    }
    if (rc == 0) rc = buf_puts(&body, "{\"security\":");
    if (rc == 0) rc = json_put_jval(&body, sec);
    if (rc == 0) rc = buf_putc(&body, '}');
    mimeo_put_result res = {0};
    if (rc == 0)
        rc = mimeo_local_put(users, key.data, key.len, body.data, body.len,
                             rev[0] ? rev : NULL, &res, err);
    mimeo_free(res.id);
    if (rc == 0) {
        buf txt;
        buf_init(&txt, 0);
        if (json_put_jval(&txt, sec) == 0) http_sec_cache_put(r, key.data, buf_cstr(&txt));
        buf_destroy(&txt);
    }
    /* Even a failed store may have written: memoized standings are looked at again. */
    atomic_fetch_add(&sec_generation, 1);
    pthread_mutex_unlock(&sec_io_lock);
    mimeo_free(old);
    jval_free(oldv);
    if (users) mimeo_db_close(users);
    buf_destroy(&key);
    buf_destroy(&body);
    return rc;
}

/* ---- authorization ------------------------------------------------------------------------ */
/* 401 for anonymous callers, 403 for known ones — CouchDB's split. */
static bool http_deny(http_req *r, const char *reason) {
    if (r->user.known) http_reply_error(r, 403, "forbidden", reason);
    else http_reply_error(r, 401, "unauthorized", reason);
    return false;
}

static bool http_need_admin(http_req *r) {
    if (auth_user_is_admin(&r->user)) return true;
    return http_deny(r, "You are not a server admin.");
}

/* Finds "_id" members that start with "_design/" at a given depth of a JSON body (1: a
 * document, 3: the documents of a _bulk_docs body). */
typedef struct design_scan {
    int  depth;
    int  want;
    bool at_id;
} design_scan;

static int ds_up(void *c) { ((design_scan *)c)->depth++; ((design_scan *)c)->at_id = false; return 0; }
static int ds_down(void *c) { ((design_scan *)c)->depth--; ((design_scan *)c)->at_id = false; return 0; }
static int ds_other(void *c) { ((design_scan *)c)->at_id = false; return 0; }
static int ds_bool(void *c, bool v) { (void)v; return ds_other(c); }
static int ds_num(void *c, const char *t, size_t n) { (void)t; (void)n; return ds_other(c); }
static int ds_key(void *c, const char *s, size_t n) {
    design_scan *d = c;
    d->at_id = d->depth == d->want && n == 3 && memcmp(s, "_id", 3) == 0;
    return 0;
}
static int ds_str(void *c, const char *s, size_t n) {
    design_scan *d = c;
    bool hit = d->at_id && n >= 8 && memcmp(s, "_design/", 8) == 0;
    d->at_id = false;
    return hit ? 1 : 0;
}

static bool http_body_has_design(http_req *r, int depth) {
    static const json_handlers h = { ds_other, ds_bool, ds_num, ds_str, ds_up, ds_key, ds_down,
                                     ds_up, ds_down };
    design_scan d = { 0, depth, false };
    if (r->body.len == 0) return false;
    return json_parse(r->body.data, r->body.len, &r->srv->limits, &h, &d, NULL) == 1;
}

/* The document id a single-document request addresses (decoded), or NULL. */
static const char *http_doc_id(http_req *r, size_t *len, bool *design) {
    *design = false;
    if (r->nseg < 2) return NULL;
    if (http_seg_is(r, 1, "_design") && r->nseg >= 3) {
        *design = true;
        *len = r->seg_len[2];
        return r->seg[2];
    }
    *len = r->seg_len[1];
    if (*len >= 8 && memcmp(r->seg[1], "_design/", 8) == 0) *design = true;
    return r->seg[1];
}

/* A request on a database: the rules of CouchDB 3 for members and db admins. */
static bool http_authorize_db(http_req *r) {
    bool server_admin = auth_user_is_admin(&r->user);
    if (r->nseg == 1 && (r->method == HTTP_PUT || r->method == HTTP_DELETE))
        return http_need_admin(r);
    if (server_admin) return true;   /* no need to read _security */
    if (!http_db(r)) return false;
    bool db_admin = false, member = false;
    if (http_security_standing(r, &db_admin, &member) != 0) {
        http_reply_error(r, 500, "internal", "cannot read the database's security object");
        return false;
    }
    if (db_admin) return true;
    if (!member) return http_deny(r, "You are not allowed to access this db.");
    /* A member, not a db admin. */
    if (r->nseg >= 2 && (http_seg_is(r, 1, "_compact") || http_seg_is(r, 1, "_view_cleanup") ||
                         (http_seg_is(r, 1, "_security") && r->method == HTTP_PUT) ||
                         (http_seg_is(r, 1, "_revs_limit") && r->method == HTTP_PUT)))
        return http_deny(r, "You are not a db or server admin.");
    bool ok = true;
    bool writes = r->method == HTTP_PUT || r->method == HTTP_DELETE || r->method == HTTP_POST;
    if (writes) {
        size_t idl;
        bool design = false;
        if (r->nseg == 1 && r->method == HTTP_POST) design = http_body_has_design(r, 1);
        else if (r->nseg == 2 && http_seg_is(r, 1, "_bulk_docs")) {
            /* CouchDB refuses only those entries; the handler writes the others. */
            r->bulk_no_design = http_body_has_design(r, 3);
        }
        else if (r->nseg >= 2 && r->seg[1][0] != '_') design = false;
        else if (r->nseg >= 2) http_doc_id(r, &idl, &design);
        /* POST …/_view/{view}: a query, not a design document write */
        if (design && r->nseg >= 4 && http_seg_is(r, 3, "_view")) design = false;
        if (design) ok = http_deny(r, "You are not a db or server admin.");
    }
    return ok;
}

/* An admin's _bulk_docs into _users: every account carrying a cleartext password goes through
 * the account rules and is hashed, so no path stores a plain password. Others are kept as
 * sent (replicated accounts are hashed already). */
static bool http_users_bulk(http_req *r) {
    jval *body = NULL;
    mimeo_err e = {0};
    if (json_tree_parse(r->body.data ? r->body.data : "", r->body.len, &r->srv->limits, &body,
                        &e) != 0)
        return true;   /* the handler answers the bad JSON */
    const jval *docs = jval_get(body, "docs");
    bool any = false;
    for (size_t i = 0; docs && docs->type == JV_ARRAY && i < docs->count; i++) {
        const jval *pw = jval_get(docs->items[i], "password");
        if (pw && pw->type == JV_STRING) any = true;
    }
    if (!any) {
        jval_free(body);
        return true;
    }
    if (!http_db(r)) {
        jval_free(body);
        return false;
    }
    size_t pl = strlen(AUTH_USER_PREFIX);
    buf out;
    buf_init(&out, r->body.cap);
    int rc = buf_putc(&out, '{');
    for (size_t k = 0; rc == 0 && k < body->count; k++) {
        if (k) rc = buf_putc(&out, ',');
        if (rc == 0) rc = json_put_key(&out, body->keys[k]);
        if (rc != 0) break;
        if (strcmp(body->keys[k], "docs") != 0 || body->items[k]->type != JV_ARRAY) {
            rc = json_put_jval(&out, body->items[k]);
            continue;
        }
        rc = buf_putc(&out, '[');
        for (size_t i = 0; rc == 0 && i < docs->count; i++) {
            const jval *d = docs->items[i];
            const jval *pw = jval_get(d, "password"), *idv = jval_get(d, "_id");
            if (i) rc = buf_putc(&out, ',');
            if (rc != 0) break;
            if (!pw || pw->type != JV_STRING) {
                rc = json_put_jval(&out, d);
                continue;
            }
            if (!idv || idv->type != JV_STRING || idv->len <= pl ||
                memcmp(idv->str, AUTH_USER_PREFIX, pl) != 0) {
                rc = MIMEO_EINVAL;
                snprintf(e.error, sizeof e.error, "forbidden");
                snprintf(e.reason, sizeof e.reason,
                         "Doc ID must be of the form org.couchdb.user:name");
                break;
            }
            jval *old = NULL;
            char *oj = NULL;
            size_t ol = 0;
            if (mimeo_doc_get(r->db, idv->str, idv->len, NULL, &oj, &ol, NULL) == 0)
                json_tree_parse(oj, ol, NULL, &old, NULL);
            mimeo_free(oj);
            rc = auth_user_doc_prepare(idv->str, idv->len, d, old, &r->user,
                                       r->srv->cfg.auth.iterations, &out, &e);
            jval_free(old);
        }
        if (rc == 0) rc = buf_putc(&out, ']');
    }
    if (rc == 0) rc = buf_putc(&out, '}');
    jval_free(body);
    if (rc != 0) {
        buf_destroy(&out);
        http_reply_err(r, rc, &e);
        return false;
    }
    buf_destroy(&r->body);
    r->body = out;
    return true;
}

/* The request body as a tree, or NULL after replying 400 (CouchDB's bad JSON errors). */
static jval *authz_body_tree(http_req *r) {
    jval *doc = NULL;
    mimeo_err e = {0};
    if (json_tree_parse(r->body.data ? r->body.data : "", r->body.len, &r->srv->limits, &doc,
                        &e) != 0) {
        http_reply_err(r, e.code ? e.code : MIMEO_EBADJSON, &e);
        return NULL;
    }
    return doc;
}

/* _users: accounts are read and written by their owner (and admins) whatever the database's
 * members say; the rest of the database follows its _security (admins only by default). */
static bool http_authorize_users(http_req *r) {
    bool admin = auth_user_is_admin(&r->user);
    size_t pl = strlen(AUTH_USER_PREFIX);
    /* The _security objects live here as _local docs: only /{db}/_security reaches them. */
    if ((http_seg_is(r, 1, "_local") && r->nseg >= 3 && strncmp(r->seg[2], "security:", 9) == 0) ||
        (r->nseg >= 2 && strncmp(r->seg[1], "_local/security:", 16) == 0)) {
        http_reply_error(r, 403, "forbidden", "Reserved for the server's security objects.");
        return false;
    }
    if (r->nseg == 2 && http_seg_is(r, 1, "_bulk_docs"))
        return admin ? http_users_bulk(r) : http_need_admin(r);
    bool user_doc = r->nseg == 2 && r->seg_len[1] > pl &&
                    memcmp(r->seg[1], AUTH_USER_PREFIX, pl) == 0;
    bool post_doc = r->nseg == 1 && r->method == HTTP_POST;
    if (!user_doc && !post_doc) return http_authorize_db(r);
    if (post_doc && !admin) return http_deny(r, "Only admins may POST to _users.");
    if (!http_db(r)) return false;

    const char *name = user_doc ? r->seg[1] + pl : NULL;
    bool owner = r->user.known && name && strcmp(name, r->user.name) == 0;
    if (r->method == HTTP_GET || r->method == HTTP_HEAD) {
        if (admin || owner) return true;
        http_reply_error(r, 404, "not_found", "missing");   /* hidden, as CouchDB does */
        return false;
    }
    if (r->method != HTTP_PUT && r->method != HTTP_DELETE && r->method != HTTP_POST) return true;
    if (r->method == HTTP_DELETE) {
        if (admin || owner) return true;
        return http_deny(r, "You may only delete your own user document.");
    }

    /* PUT /_users/org.couchdb.user:x or POST /_users (admins): check the rules, hash the
     * password, and hand the handler the rewritten body. */
    jval *doc = authz_body_tree(r);
    if (!doc) return false;
    const char *id;
    size_t id_len;
    if (user_doc) {
        id = r->seg[1];
        id_len = r->seg_len[1];
    } else {
        const jval *idv = jval_get(doc, "_id");
        if (!idv || idv->type != JV_STRING || idv->len <= pl ||
            memcmp(idv->str, AUTH_USER_PREFIX, pl) != 0) {
            jval_free(doc);
            return true;   /* an admin's other document: no account rules */
        }
        id = idv->str;
        id_len = idv->len;
    }
    jval *old = NULL;
    char *oj = NULL;
    size_t ol = 0;
    if (mimeo_doc_get(r->db, id, id_len, NULL, &oj, &ol, NULL) == 0)
        json_tree_parse(oj, ol, NULL, &old, NULL);
    mimeo_free(oj);
    /* A cleartext password is hashed here: anyone may sign up, so this PBKDF2 goes through
     * the same gate as the password checks. */
    const jval *pwv = jval_get(doc, "password");
    bool hashing = pwv && pwv->type == JV_STRING;
    if (hashing && auth_gate_enter(&hash_gate, r->srv->cfg.auth.hash_wait_ms) != 0) {
        jval_free(doc);
        jval_free(old);
        http_auth_reply_failure(r, MIMEO_EBUSY);
        return false;
    }
    buf out;
    buf_init(&out, r->body.cap);
    mimeo_err e = {0};
    int rc = auth_user_doc_prepare(id, id_len, doc, old, &r->user, r->srv->cfg.auth.iterations,
                                   &out, &e);
    if (hashing) auth_gate_leave(&hash_gate);
    jval_free(doc);
    jval_free(old);
    if (rc != 0) {
        buf_destroy(&out);
        if (strcmp(e.error, "forbidden") == 0 && !r->user.known)
            http_reply_error(r, 401, "unauthorized", e.reason);
        else
            http_reply_err(r, rc, &e);
        return false;
    }
    buf_destroy(&r->body);
    r->body = out;
    return true;
}

/* POST /_replicate by a user who is not a server admin: both ends must be URLs (the job
 * then acts with the credentials in them, through this server's checks); a bare database
 * name would let the replicator read or write a local database the user may not touch. */
static bool http_endpoint_is_url(const jval *v) {
    if (v && v->type == JV_OBJECT) v = jval_get(v, "url");
    if (!v || v->type != JV_STRING) return false;
    return strncasecmp(v->str, "http://", 7) == 0 || strncasecmp(v->str, "https://", 8) == 0;
}

/* [replicator] allowed_hosts: may a replication endpoint (a name, a URL, or {url}) be used?
 * (auth_host_allowed; the replicator checks again for jobs that arrive another way.) */
static bool http_endpoint_host_allowed(const char *allowed, const jval *v) {
    if (v && v->type == JV_OBJECT) v = jval_get(v, "url");
    if (!v || v->type != JV_STRING) return true;
    return auth_host_allowed(allowed, v->str);
}

/* Checks the endpoints of a replication (a POST /_replicate body or a _replicator doc):
 * allowed hosts for everyone, URLs only for non-admins. False after replying. */
static bool http_check_endpoints(http_req *r, const jval *body) {
    const jval *src = jval_get(body, "source"), *tgt = jval_get(body, "target");
    const char *allowed = r->srv->cfg.auth.allowed_hosts;
    if (!http_endpoint_host_allowed(allowed, src) || !http_endpoint_host_allowed(allowed, tgt)) {
        http_reply_error(r, 403, "forbidden",
                         "The replication names a host outside [replicator] allowed_hosts.");
        return false;
    }
    if (!auth_user_is_admin(&r->user) &&
        (!http_endpoint_is_url(src) || !http_endpoint_is_url(tgt)))
        return http_deny(r, "Only server admins may replicate local databases by name; use URLs.");
    return true;
}

static bool http_authorize_replicate(http_req *r) {
    if (r->method != HTTP_POST) return true;
    jval *body = NULL;
    if (json_tree_parse(r->body.data ? r->body.data : "", r->body.len, &r->srv->limits, &body,
                        NULL) != 0)
        return true;   /* the handler answers the bad JSON */
    bool ok = jval_get(body, "cancel") != NULL || http_check_endpoints(r, body);
    jval_free(body);
    return ok;
}

/* _replicator: any authenticated user may keep replication jobs there, each document owned
 * by its writer ("owner", set by the server); only the owner and admins read, change or
 * delete it — so the credentials in its URLs reach no one else. A non-admin's job must name
 * both ends by URL (as POST /_replicate). Listing the database (_all_docs, _changes, bulk
 * reads) and design documents follow its _security: admins only by default. */
static bool http_authorize_replicator(http_req *r) {
    bool admin = auth_user_is_admin(&r->user);
    bool single = r->nseg == 2 && r->seg[1][0] != '_';
    const char *allowed = r->srv->cfg.auth.allowed_hosts;
    if (admin && allowed && allowed[0] &&
        ((single && r->method == HTTP_PUT) || (r->nseg == 1 && r->method == HTTP_POST))) {
        jval *doc = NULL;
        if (json_tree_parse(r->body.data ? r->body.data : "", r->body.len, &r->srv->limits,
                            &doc, NULL) == 0) {
            bool ok = http_check_endpoints(r, doc);
            jval_free(doc);
            if (!ok) return false;
        }
    }
    if (admin || !single) return http_authorize_db(r);
    if (!r->user.known) return http_deny(r, "You must be logged in to use _replicator.");
    if (!http_db(r)) return false;
    jval *old = NULL;
    char *oj = NULL;
    size_t ol = 0;
    if (mimeo_doc_get(r->db, r->seg[1], r->seg_len[1], NULL, &oj, &ol, NULL) == 0)
        json_tree_parse(oj, ol, NULL, &old, NULL);
    mimeo_free(oj);
    const jval *owner = jval_get(old, "owner");
    bool mine = owner && owner->type == JV_STRING && strcmp(owner->str, r->user.name) == 0;
    if (old && !mine) {
        jval_free(old);
        if (r->method == HTTP_GET || r->method == HTTP_HEAD) {
            http_reply_error(r, 404, "not_found", "missing");
            return false;
        }
        return http_deny(r, "You may only change your own replication documents.");
    }
    jval_free(old);
    if (r->method != HTTP_PUT) return true;   /* reads of one's own or missing docs, deletes */

    jval *doc = authz_body_tree(r);
    if (!doc) return false;
    const jval *ow = jval_get(doc, "owner");
    const jval *del = jval_get(doc, "_deleted");
    bool deleting = del && del->type == JV_BOOL && del->boolean;
    if (ow && (ow->type != JV_STRING || strcmp(ow->str, r->user.name) != 0)) {
        jval_free(doc);
        return http_deny(r, "The owner of a replication document is its writer.");
    }
    if (!deleting && !http_check_endpoints(r, doc)) {
        jval_free(doc);
        return false;
    }
    /* Write the owner into the stored document. */
    buf out;
    buf_init(&out, r->body.cap);
    int rc = buf_putc(&out, '{');
    for (size_t i = 0; rc == 0 && i < doc->count; i++) {
        if (strcmp(doc->keys[i], "owner") == 0) continue;
        if (out.len > 1) rc = buf_putc(&out, ',');
        if (rc == 0) rc = json_put_key(&out, doc->keys[i]);
        if (rc == 0) rc = json_put_jval(&out, doc->items[i]);
    }
    if (rc == 0) rc = buf_puts(&out, out.len > 1 ? ",\"owner\":" : "\"owner\":");
    if (rc == 0) rc = json_put_cstr(&out, r->user.name);
    if (rc == 0) rc = buf_putc(&out, '}');
    jval_free(doc);
    if (rc != 0) {
        buf_destroy(&out);
        http_reply_err(r, rc, NULL);
        return false;
    }
    buf_destroy(&r->body);
    r->body = out;
    return true;
}

bool http_authorize(http_req *r) {
    const http_auth_cfg *c = &r->srv->cfg.auth;
    if (!http_authenticate(r)) return false;
    bool session = http_seg_is(r, 0, "_session") && r->nseg == 1;
    if (c->require_valid_user && !r->user.known && !auth_user_is_admin(&r->user) && !session &&
        !(http_seg_is(r, 0, "_up") && r->nseg == 1)) {
        http_reply_error(r, 401, "unauthorized", "Authentication required.");
        return false;
    }
    if (r->url_bad || r->nseg == 0) return true;
    const char *s0 = r->seg[0];
    if (http_seg_is(r, 0, "_users")) return http_authorize_users(r);
    if (http_seg_is(r, 0, "_replicator")) return http_authorize_replicator(r);
    if (http_seg_is(r, 0, "_global_changes")) return http_authorize_db(r);
    if (s0[0] == '_') {
        if (r->nseg == 1 && (session || http_seg_is(r, 0, "_up") || http_seg_is(r, 0, "_uuids")))
            return true;
        if (http_seg_is(r, 0, "_all_dbs") && r->nseg == 1 && !c->admin_only_all_dbs) return true;
        /* A peer's mesh message carries its own MAC over the shared mesh secret (src/mesh):
         * HTTP accounts play no part in it. Reading the mesh's state is for admins. */
        if (http_seg_is(r, 0, "_mesh") && r->nseg == 1 && r->method == HTTP_POST) return true;
        if (http_seg_is(r, 0, "_replicate") && r->nseg == 1) {
            if (r->user.known || auth_user_is_admin(&r->user)) return http_authorize_replicate(r);
            return http_deny(r, "You must be logged in to replicate.");
        }
        return http_need_admin(r);   /* _all_dbs, _active_tasks, _scheduler, _config, … */
    }
    return http_authorize_db(r);
}

/* Headers every reply may need: a (re)issued session cookie, and the Basic challenge when
 * configured (never by default: a browser would pop up a login box over a PouchDB app). */
void http_auth_reply_headers(http_req *r) {
    if (!r->resp) return;
    if (r->set_cookie)
        MHD_add_response_header(r->resp, MHD_HTTP_HEADER_SET_COOKIE, r->set_cookie);
    const char *www = r->srv->cfg.auth.www_authenticate;
    if (r->status == 401 && www && www[0])
        MHD_add_response_header(r->resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, www);
}
