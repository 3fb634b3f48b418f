/* validate_doc_update: which design documents of a database have one (cached per database),
 * and running them on the documents of a write, in query-server processes (src/js), on the
 * caller's thread before the write job is queued. Owns the environment's query-server pool,
 * started on the first validation (mimeo_options.query_server, os_process_timeout). */
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "db_int.h"
#include "../js/qs.h"

#define DESIGN_PREFIX "_design/"
#define DESIGN_PREFIX_LEN 8

typedef struct vdu_ddoc {
    char  *id;
    size_t id_len;
    char   rev[MIMEO_REV_MAX];
    char  *json;        /* the whole document, only kept when it validates */
    size_t json_len;
} vdu_ddoc;

/* The design documents of one database as of one update_seq; shared by the writes that
 * read it (refs), never changed once made. */
typedef struct vdu_set {
    unsigned  refs;
    vdu_ddoc *ddocs;
    size_t    count;
    size_t    validators;
} vdu_set;

typedef struct vdu_entry {
    uint64_t          dbid;
    uint64_t          seq;
    vdu_set          *set;
    struct vdu_entry *next;
} vdu_entry;

typedef struct vdu_state {
    pthread_mutex_t lock;
    vdu_entry      *entries;
    qs_pool        *pool;    /* made on the first validation */
    char            command[PATH_MAX + 16];
    unsigned        timeout_ms;
} vdu_state;

struct db_vdu {
    mimeo_db  *db;
    vdu_state *st;
    vdu_set   *set;
    qs_proc   *proc;
    buf        user_ctx;
    buf        sec;
    buf        line;
    buf        reply;
    buf        reason;   /* the last rejection's whole message (mimeo_err cuts it) */
};

static const char vdu_key = 0;

static void set_unref(vdu_set *s) {
    if (!s || --s->refs) return;
    for (size_t i = 0; i < s->count; i++) {
        free(s->ddocs[i].id);
        free(s->ddocs[i].json);
    }
    free(s->ddocs);
    free(s);
}

/* Drops a reference to s under the state's lock: the cache shares sets between writes. */
static void set_release(vdu_state *st, vdu_set *s) {
    pthread_mutex_lock(&st->lock);
    set_unref(s);
    pthread_mutex_unlock(&st->lock);
}

/* The query server beside the running binary: build/mimeo-js for build/mimeo and for the
 * sanitizer builds build/asan/mimeo and build/tsan/mimeo, so tests need no configuration. */
static void default_command(char *out, size_t cap) {
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        snprintf(out, cap, "mimeo-js");
        return;
    }
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (slash) *slash = 0;
    size_t len = strlen(exe);
    if ((len >= 5 && strcmp(exe + len - 5, "/asan") == 0) ||
        (len >= 5 && strcmp(exe + len - 5, "/tsan") == 0))
        exe[len - 5] = 0;
    snprintf(out, cap, "%s/mimeo-js", exe);
}

static void *state_make(mimeo_env *env) {
    vdu_state *st = calloc(1, sizeof *st);
    if (!st) return NULL;
    pthread_mutex_init(&st->lock, NULL);
    if (env->opts.query_server && env->opts.query_server[0])
        snprintf(st->command, sizeof st->command, "%s", env->opts.query_server);
    else
        default_command(st->command, sizeof st->command);
    st->timeout_ms = env->opts.os_process_timeout ? env->opts.os_process_timeout : 5000;
    return st;
}

static void state_destroy(void *arg) {
    vdu_state *st = arg;
    while (st->entries) {
        vdu_entry *e = st->entries;
        st->entries = e->next;
        set_unref(e->set);
        free(e);
    }
    if (st->pool) qs_pool_free(st->pool);
    pthread_mutex_destroy(&st->lock);
    free(st);
}

/* Whether the stored body (JSON object text) has a string member validate_doc_update. */
static bool body_validates(const MDB_val *body) {
    jval *tree = NULL;
    if (json_tree_parse(body->mv_data, body->mv_size, NULL, &tree, NULL) != 0) return false;
    const jval *f = jval_get(tree, "validate_doc_update");
    bool yes = f && f->type == JV_STRING && f->len > 0;
    jval_free(tree);
    return yes;
}

static const vdu_ddoc *set_find(const vdu_set *s, const char *id, size_t len, const char *rev) {
    for (size_t i = 0; s && i < s->count; i++)
        if (s->ddocs[i].id_len == len && memcmp(s->ddocs[i].id, id, len) == 0 &&
            strcmp(s->ddocs[i].rev, rev) == 0)
            return &s->ddocs[i];
    return NULL;
}

/* Reads the live design documents of db (a seek into the _design/ range of the id index:
 * a database without any costs one read transaction and one cursor step). Documents whose
 * id and winning rev are in old are taken from there, so only changed ones are parsed. */
static int scan(mimeo_db *db, const vdu_set *old, vdu_set **out, uint64_t *seq, uint64_t *dbid) {
    db_snap sn;
    int rc = db_snap_begin(db, &sn, NULL);
    if (rc) return rc;
    *seq = sn.m.update_seq;
    *dbid = sn.m.dbid;
    vdu_set *s = calloc(1, sizeof *s);
    if (!s) {
        db_snap_end(&sn);
        return MIMEO_ENOMEM;
    }
    s->refs = 1;
    size_t cap = 0;
    db_doc_cursor c;
    rc = db_doc_cursor_open(&c, sn.txn, sn.t, sn.m.dbid, false);
    if (rc) goto out_snap;
    rc = db_doc_cursor_seek(&c, DESIGN_PREFIX, DESIGN_PREFIX_LEN, false);
    buf tmp;
    buf_init(&tmp, 0);
    while (!rc) {
        const char *id;
        size_t id_len;
        const unsigned char *rec;
        size_t rec_len;
        rc = db_doc_cursor_next(&c, &id, &id_len, &rec, &rec_len);
        if (rc == MIMEO_ENOTFOUND) { rc = 0; break; }
        if (rc) break;
        if (id_len < DESIGN_PREFIX_LEN || memcmp(id, DESIGN_PREFIX, DESIGN_PREFIX_LEN) != 0) break;
        db_doc d;
        db_doc_init(&d);
        rc = db_doc_decode(rec, rec_len, &d);
        if (rc || d.tree.count == 0 || revtree_all_deleted(&d.tree)) {
            db_doc_destroy(&d);
            continue;
        }
        uint32_t w = (uint32_t)revtree_winner(&d.tree);
        buf_reset(&tmp);
        rc = db_rev_put(&tmp, &d.tree.nodes[w]);
        if (rc || tmp.len >= MIMEO_REV_MAX) { db_doc_destroy(&d); break; }
        if (ARRAY_GROW(s->ddocs, cap, s->count + 1)) {
            rc = MIMEO_ENOMEM;
            db_doc_destroy(&d);
            break;
        }
        vdu_ddoc *dd = &s->ddocs[s->count];
        memset(dd, 0, sizeof *dd);
        memcpy(dd->rev, tmp.data, tmp.len);
        dd->rev[tmp.len] = 0;
        dd->id = malloc(id_len + 1);
        if (!dd->id) { rc = MIMEO_ENOMEM; db_doc_destroy(&d); break; }
        memcpy(dd->id, id, id_len);
        dd->id[id_len] = 0;
        dd->id_len = id_len;
        s->count++;
        const vdu_ddoc *prev = set_find(old, id, id_len, dd->rev);
        if (prev) {
            if (prev->json) {
                dd->json = malloc(prev->json_len + 1);
                if (!dd->json) rc = MIMEO_ENOMEM;
                else memcpy(dd->json, prev->json, prev->json_len + 1);
                dd->json_len = prev->json_len;
            }
        } else {
            MDB_val body;
            rc = db_body_get(sn.txn, sn.t, sn.m.dbid, &d.tree.nodes[w], &body);
            if (!rc && body_validates(&body)) {
                buf_reset(&tmp);
                rc = db_doc_json(&tmp, sn.txn, sn.t, sn.m.dbid, dd->id, id_len, &d, w, NULL, NULL);
                if (!rc) dd->json = buf_detach(&tmp, &dd->json_len);
            }
        }
        if (dd->json) s->validators++;
        db_doc_destroy(&d);
    }
    buf_destroy(&tmp);
    db_doc_cursor_close(&c);
out_snap:
    db_snap_end(&sn);
    if (rc) {
        set_unref(s);
        return rc;
    }
    *out = s;
    return 0;
}

static bool same_docs(const vdu_set *a, const vdu_set *b) {
    if (!a || a->count != b->count) return false;
    for (size_t i = 0; i < b->count; i++)
        if (!set_find(a, b->ddocs[i].id, b->ddocs[i].id_len, b->ddocs[i].rev)) return false;
    return true;
}

/* The set for db now. The cache is keyed by the database's update_seq: while nothing was
 * written since the last look, a write costs one mutex and a list walk; after writes, one
 * _design/ range seek (see scan), and design documents are parsed only when their revs
 * changed. So a database with no validate function pays nothing measurable. */
static int current_set(vdu_state *st, mimeo_db *db, vdu_set **out) {
    db_meta m;
    int rc = db_meta_snapshot(db, &m);
    if (rc) return rc;
    vdu_set *old = NULL;
    pthread_mutex_lock(&st->lock);
    vdu_entry *e = st->entries;
    while (e && e->dbid != m.dbid) e = e->next;
    if (e && e->seq == m.update_seq) {
        e->set->refs++;
        *out = e->set;
        pthread_mutex_unlock(&st->lock);
        return 0;
    }
    if (e) {
        old = e->set;
        old->refs++;
    }
    pthread_mutex_unlock(&st->lock);

    vdu_set *s = NULL;
    uint64_t seq, dbid;
    rc = scan(db, old, &s, &seq, &dbid);
    if (rc) {
        set_release(st, old); /* other threads count references to it under the lock */
        return rc;
    }
    if (same_docs(old, s)) {
        set_unref(s);
        s = old;
        old = NULL;
    }
    pthread_mutex_lock(&st->lock);
    for (e = st->entries; e && e->dbid != dbid; e = e->next) {}
    if (!e && (e = calloc(1, sizeof *e))) {
        e->dbid = dbid;
        e->next = st->entries;
        st->entries = e;
    }
    if (e && (!e->set || seq >= e->seq)) {
        if (e->set != s) {
            vdu_set *prev = e->set;
            s->refs++;
            e->set = s;
            if (prev) set_unref(prev);
        }
        e->seq = seq;
    }
    pthread_mutex_unlock(&st->lock);
    /* released outside the list walk: the old set may still be shared */
    set_release(st, old);
    *out = s;
    return 0;
}

static int user_ctx_json(buf *b, mimeo_db *db, const mimeo_user_ctx *u) {
    int rc = buf_puts(b, "{\"db\":");
    if (!rc) rc = json_put_cstr(b, db->name);
    if (!rc) rc = buf_puts(b, ",\"name\":");
    if (!rc) rc = u && u->name ? json_put_cstr(b, u->name) : buf_puts(b, "null");
    if (!rc) rc = buf_puts(b, ",\"roles\":[");
    if (!u) {
        if (!rc) rc = buf_puts(b, "\"_admin\"");
    } else {
        for (size_t i = 0; i < u->role_count && !rc; i++) {
            if (i) rc = buf_putc(b, ',');
            if (!rc) rc = json_put_cstr(b, u->roles[i]);
        }
    }
    if (!rc) rc = buf_puts(b, "]}");
    return rc;
}

int db_vdu_begin(mimeo_db *db, const mimeo_user_ctx *user, db_vdu **out) {
    *out = NULL;
    vdu_state *st = mimeo_env_state(db->env, &vdu_key, state_make, state_destroy);
    if (!st) return MIMEO_ENOMEM;
    vdu_set *s = NULL;
    int rc = current_set(st, db, &s);
    if (rc) return rc;
    if (!s->validators) {
        set_release(st, s);
        return 0;
    }
    db_vdu *v = calloc(1, sizeof *v);
    if (!v) {
        set_release(st, s);
        return MIMEO_ENOMEM;
    }
    v->db = db;
    v->st = st;
    v->set = s;
    buf_init(&v->user_ctx, 0);
    buf_init(&v->sec, 0);
    buf_init(&v->line, 0);
    buf_init(&v->reply, 0);
    buf_init(&v->reason, 0);
    rc = user_ctx_json(&v->user_ctx, db, user);
    /* secObj goes to the function as JSON: re-emit it so text from the caller is checked */
    jval *sec = NULL;
    if (!rc && user && user->security && user->security_len &&
        json_tree_parse(user->security, user->security_len, NULL, &sec, NULL) == 0 &&
        sec->type == JV_OBJECT)
        rc = json_put_jval(&v->sec, sec);
    else if (!rc)
        rc = buf_puts(&v->sec, "{}");
    jval_free(sec);
    if (rc) {
        db_vdu_end(v);
        return rc;
    }
    *out = v;
    return 0;
}

void db_vdu_end(db_vdu *v) {
    if (!v) return;
    if (v->proc) qs_release(v->st->pool, v->proc);
    set_release(v->st, v->set);
    buf_destroy(&v->user_ctx);
    buf_destroy(&v->sec);
    buf_destroy(&v->line);
    buf_destroy(&v->reply);
    buf_destroy(&v->reason);
    free(v);
}

/* A process of the pool, which the first caller makes (validations and design document
 * checks share it). */
static int pool_acquire(vdu_state *st, qs_proc **p, mimeo_err *e) {
    pthread_mutex_lock(&st->lock);
    int rc = 0;
    if (!st->pool) {
        qs_config cfg = {.command = st->command, .timeout_ms = st->timeout_ms};
        rc = qs_pool_new(&cfg, &st->pool);
    }
    pthread_mutex_unlock(&st->lock);
    if (rc) {
        db_err_set(e, MIMEO_EIO, "os_process_error", "cannot start the query server");
        return MIMEO_EIO;
    }
    return qs_acquire(st->pool, p, e);
}

static int proc_get(db_vdu *v, mimeo_err *e) {
    return v->proc ? 0 : pool_acquire(v->st, &v->proc, e);
}

/* One call on the held process; a failed process is given back (the pool discards it) so
 * the next document gets a fresh one. */
static void proc_drop(db_vdu *v, mimeo_err *e) {
    qs_release(v->st->pool, v->proc);
    v->proc = NULL;
    if (!e->error[0]) db_err_set(e, MIMEO_EIO, "os_process_error", "the query server failed");
}

static int call(db_vdu *v, mimeo_err *e) {
    int rc = qs_call(v->proc, v->line.data, v->line.len, &v->reply, e);
    if (rc) proc_drop(v, e);
    return rc;
}

/* A thrown value's message: strings as they are, anything else as its JSON. */
static void thrown_reason(db_vdu *v, const jval *m, mimeo_err *e, int code, const char *name) {
    buf *b = &v->reason;
    buf_reset(b);
    if (m->type == JV_STRING) buf_put(b, m->str, m->len);
    else json_put_jval(b, m);
    db_err_set(e, code, name, b->data ? buf_cstr(b) : "");
}

static int run_one(db_vdu *v, const vdu_ddoc *dd, const char *new_doc, size_t new_len,
                   const char *old_doc, size_t old_len, mimeo_err *e) {
    int rc = proc_get(v, e);
    if (rc) return rc;
    /* The process learns each design document revision once. Its name there is
     * "db:id@rev", not the id: a process serves every database, where the same id may
     * hold different functions, and a new revision must not find the old one's code. */
    buf key;
    buf_init(&key, 0);
    rc = buf_puts(&key, v->db->name);
    if (!rc) rc = buf_putc(&key, ':');
    if (!rc) rc = buf_put(&key, dd->id, dd->id_len);
    if (!rc) rc = buf_putc(&key, '@');
    if (!rc) rc = buf_puts(&key, dd->rev);
    if (!rc) {
        rc = qs_proc_teach(v->proc, key.data, key.len, key.data, key.len, dd->json, dd->json_len,
                           &v->line, &v->reply, e);
        /* The function's own error (MIMEO_EINVAL) keeps the process; a failed call does not. */
        if (rc && rc != MIMEO_EINVAL && rc != MIMEO_ENOMEM) proc_drop(v, e);
    }
    if (rc) {
        buf_destroy(&key);
        return rc;
    }
    buf_reset(&v->line);
    rc = buf_puts(&v->line, "[\"ddoc\",");
    if (!rc) rc = json_put_str(&v->line, key.data, key.len);
    buf_destroy(&key);
    if (!rc) rc = buf_puts(&v->line, ",[\"validate_doc_update\"],[");
    if (!rc) rc = buf_put(&v->line, new_doc, new_len);
    if (!rc) rc = buf_putc(&v->line, ',');
    if (!rc) rc = old_doc ? buf_put(&v->line, old_doc, old_len) : buf_puts(&v->line, "null");
    if (!rc) rc = buf_putc(&v->line, ',');
    if (!rc) rc = buf_put(&v->line, v->user_ctx.data, v->user_ctx.len);
    if (!rc) rc = buf_putc(&v->line, ',');
    if (!rc) rc = buf_put(&v->line, v->sec.data, v->sec.len);
    if (!rc) rc = buf_puts(&v->line, "]]");
    if (rc) return db_err(e, rc);
    if ((rc = call(v, e))) return rc;
    if (qs_reply_error(v->reply.data, v->reply.len, e)) {
        /* CouchDB answers a function's own error (render_error, …) with 500, a function
         * that does not compile with 400 (compilation_error has its row in src/http). */
        if (strcmp(e->error, "compilation_error") != 0) e->code = MIMEO_EIO;
        return e->code;
    }
    jval *r = NULL;
    if (json_tree_parse(v->reply.data, v->reply.len, NULL, &r, NULL) != 0) {
        db_err_set(e, MIMEO_EIO, "os_process_error", "the query server's reply is not JSON");
        return MIMEO_EIO;
    }
    rc = 0;
    const jval *m;
    if (r->type == JV_OBJECT && (m = jval_get(r, "forbidden"))) {
        thrown_reason(v, m, e, MIMEO_EFORBIDDEN, "forbidden");
        rc = MIMEO_EFORBIDDEN;
    } else if (r->type == JV_OBJECT && (m = jval_get(r, "unauthorized"))) {
        thrown_reason(v, m, e, MIMEO_EUNAUTHORIZED, "unauthorized");
        rc = MIMEO_EUNAUTHORIZED;
    } else if (!(r->type == JV_NUMBER && r->len == 1 && r->str[0] == '1') &&
               !(r->type == JV_BOOL && r->boolean)) {
        db_err_set(e, MIMEO_EIO, "os_process_error", "unexpected reply from the query server");
        rc = MIMEO_EIO;
    }
    jval_free(r);
    return rc;
}

int db_vdu_check(db_vdu *v, const char *id, size_t id_len, const char *new_doc, size_t new_len,
                 mimeo_err *e) {
    memset(e, 0, sizeof *e);
    char *old = NULL;
    size_t old_len = 0;
    /* oldDoc is the current winner; null for a new or deleted document. */
    if (mimeo_doc_get(v->db, id, id_len, NULL, &old, &old_len, NULL) != 0) old = NULL;
    int rc = 0;
    for (size_t i = 0; i < v->set->count && !rc; i++) {
        const vdu_ddoc *dd = &v->set->ddocs[i];
        if (dd->json) rc = run_one(v, dd, new_doc, new_len, old, old_len, e);
    }
    mimeo_free(old);
    if (rc && !e->error[0]) db_err(e, rc);
    if (rc && rc != MIMEO_EFORBIDDEN && rc != MIMEO_EUNAUTHORIZED) {
        buf_reset(&v->reason);
        buf_puts(&v->reason, e->reason);
    }
    return rc;
}

const char *db_vdu_reason(db_vdu *v) {
    return v->reason.data ? buf_cstr(&v->reason) : "";
}

/* ---- design documents themselves (couch_mrview:validate) ----------------------------------- */

/* A refused design document: the reason, made from fmt, goes whole to *reason (malloc'd;
 * mimeo_err cuts it) and cut to e. */
static int ddoc_fail(mimeo_err *e, char **reason, const char *error, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int ddoc_fail(mimeo_err *e, char **reason, const char *error, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(reason, fmt, ap);
    va_end(ap);
    if (n < 0) {
        *reason = NULL;
        return MIMEO_ENOMEM;
    }
    db_err_set(e, MIMEO_EINVAL, error, *reason);
    return MIMEO_EINVAL;
}

static bool type_ok(const jval *v, const char *types) {
    if (!v) return true;
    if (v->type == JV_STRING && strstr(types, "string")) return true;
    if (v->type == JV_ARRAY && strstr(types, "array")) return true;
    if (v->type == JV_OBJECT && strstr(types, "object")) return true;
    return false;
}

/* "`path` field must have T type", CouchDB's words for a member of the wrong type. */
static int field_fail(mimeo_err *e, char **reason, const char *a, const char *b, const char *c,
                      const char *types) {
    return ddoc_fail(e, reason, "invalid_design_doc", "`%s%s%s%s%s` field must have %s type", a,
                     b ? "." : "", b ? b : "", c ? "." : "", c ? c : "", types);
}

/* Each member of object o (or, with sub, that member of each) of the given types; the first
 * that is not is named `name.key` (`name.key.sub`). */
static int each_ok(const jval *o, const char *name, const char *sub, const char *types,
                   mimeo_err *e, char **reason) {
    for (size_t i = 0; i < o->count; i++) {
        const jval *v = sub ? jval_get(o->items[i], sub) : o->items[i];
        if (!type_ok(v, types)) return field_fail(e, reason, name, o->keys[i], sub, types);
    }
    return 0;
}

/* Member name of doc, when present, of the given types. */
static int member_ok(const jval *doc, const char *name, const char *types, mimeo_err *e,
                     char **reason) {
    return type_ok(jval_get(doc, name), types) ? 0
                                               : field_fail(e, reason, name, NULL, NULL, types);
}

/* {name: object or string} members: filters, lists, shows, updates. */
static int funs_ok(const jval *doc, const char *name, mimeo_err *e, char **reason) {
    const jval *o = jval_get(doc, name);
    if (!o) return 0;
    if (o->type != JV_OBJECT) return field_fail(e, reason, name, NULL, NULL, "object");
    return each_ok(o, name, NULL, "object or string", e, reason);
}

static int fields_ok(const jval *doc, mimeo_err *e, char **reason) {
    /* CouchDB's order: the first wrong member is the one named */
    int rc = funs_ok(doc, "filters", e, reason);
    if (!rc) rc = member_ok(doc, "language", "string", e, reason);
    if (!rc) rc = funs_ok(doc, "lists", e, reason);
    if (!rc) rc = member_ok(doc, "options", "object", e, reason);
    if (!rc) rc = member_ok(doc, "rewrites", "string or array", e, reason);
    if (!rc) rc = funs_ok(doc, "shows", e, reason);
    if (!rc) rc = funs_ok(doc, "updates", e, reason);
    if (!rc) rc = member_ok(doc, "validate_doc_update", "string", e, reason);
    if (!rc) rc = member_ok(doc, "views", "object", e, reason);
    const jval *views = jval_get(doc, "views");
    if (rc || !views) return rc;
    if (!type_ok(jval_get(views, "lib"), "object"))
        return field_fail(e, reason, "views", "lib", NULL, "object");
    /* a "query" (Mango) design document's map is an object */
    const jval *lang = jval_get(doc, "language");
    const char *map_type =
        lang && lang->type == JV_STRING && strcmp(lang->str, "query") == 0 ? "object" : "string";
    rc = each_ok(views, "views", NULL, "object", e, reason);
    if (!rc) rc = each_ok(views, "views", "map", map_type, e, reason);
    if (!rc) rc = each_ok(views, "views", "reduce", "string", e, reason);
    if (rc) return rc;
    for (size_t i = 0; i < views->count; i++) {
        if (strcmp(views->keys[i], "lib") == 0 || jval_get(views->items[i], "map")) continue;
        return ddoc_fail(e, reason, "invalid_design_doc", "View `%s` must contain map function",
                         views->keys[i]);
    }
    return 0;
}

static bool builtin_reduce(const char *s) {
    static const char *const names[] = {"_sum", "_count", "_stats", "_approx_count_distinct"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strncmp(s, names[i], strlen(names[i])) == 0) return true;   /* CouchDB: a prefix */
    return false;
}

/* add_fun of one source; a compilation error becomes CouchDB's message for it. */
static int try_compile(qs_proc *p, buf *line, buf *reply, const char *kind, const char *view,
                       const jval *src, mimeo_err *e, char **reason) {
    buf_reset(line);
    int rc = buf_puts(line, "[\"add_fun\",");
    if (!rc) rc = json_put_str(line, src->str, src->len);
    if (!rc) rc = buf_putc(line, ']');
    if (rc) return rc;
    if ((rc = qs_call(p, line->data, line->len, reply, e))) return rc;
    mimeo_err qe;
    if (!qs_reply_error(reply->data, reply->len, &qe)) return 0;
    /* the whole message: the reply's third member, not qe's cut copy */
    jval *r = NULL;
    const char *text = qe.reason;
    if (json_tree_parse(reply->data, reply->len, NULL, &r, NULL) == 0 && r->type == JV_ARRAY &&
        r->count >= 3 && r->items[2]->type == JV_STRING)
        text = r->items[2]->str;
    rc = ddoc_fail(e, reason, "compilation_error",
                   "Compilation of the %s function in the '%s' view failed: %s", kind, view, text);
    jval_free(r);
    return rc;
}

static int compile_views(vdu_state *st, const jval *views, mimeo_err *e, char **reason) {
    qs_proc *p = NULL;
    int rc = pool_acquire(st, &p, e);
    if (rc) return rc;
    buf line, reply;
    buf_init(&line, 0);
    buf_init(&reply, 0);
    rc = qs_call(p, "[\"reset\"]", 9, &reply, e);
    for (size_t i = 0; i < views->count && !rc; i++) {
        if (strcmp(views->keys[i], "lib") == 0) continue;
        const jval *map = jval_get(views->items[i], "map");
        const jval *red = jval_get(views->items[i], "reduce");
        rc = try_compile(p, &line, &reply, "map", views->keys[i], map, e, reason);
        if (rc || !red) continue;
        if (red->str[0] == '_') {
            if (builtin_reduce(red->str)) continue;
            rc = ddoc_fail(e, reason, "invalid_design_doc",
                           "`%s` is not a supported reduce function.", red->str);
        } else {
            rc = try_compile(p, &line, &reply, "reduce", views->keys[i], red, e, reason);
        }
    }
    /* leave no compiled functions behind; a failed call discards the process at release */
    if (rc == MIMEO_EINVAL) {
        mimeo_err ignored;
        (void)qs_call(p, "[\"reset\"]", 9, &reply, &ignored);
    }
    qs_release(st->pool, p);
    buf_destroy(&line);
    buf_destroy(&reply);
    return rc;
}

int db_ddoc_check(mimeo_db *db, const char *body, size_t len, mimeo_err *e, char **reason) {
    memset(e, 0, sizeof *e);
    *reason = NULL;
    jval *doc = NULL;
    if (json_tree_parse(body, len, NULL, &doc, NULL) != 0) return 0;   /* checked on parse */
    int rc = doc->type == JV_OBJECT ? fields_ok(doc, e, reason) : 0;
    const jval *views = rc ? NULL : jval_get(doc, "views");
    const jval *lang = jval_get(doc, "language");
    /* CouchDB saves design documents of languages it has no server for without a look */
    bool js = !lang || (lang->type == JV_STRING && strcmp(lang->str, "javascript") == 0);
    bool any = false;
    for (size_t i = 0; views && i < views->count; i++)
        if (strcmp(views->keys[i], "lib") != 0) any = true;
    if (!rc && js && any) {
        vdu_state *st = mimeo_env_state(db->env, &vdu_key, state_make, state_destroy);
        rc = st ? compile_views(st, views, e, reason) : MIMEO_ENOMEM;
    }
    jval_free(doc);
    if (rc && !e->error[0]) db_err(e, rc);
    return rc;
}
