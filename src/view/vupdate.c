/* Bringing view indexes up to date, and the environment's view state: the query-server
 * pool the map and reduce functions run in (its own, so a long index build never holds up
 * validate_doc_update), one updater per index at a time, the running builds listed as
 * /_active_tasks entries, and the background updates of update=lazy queries.
 *
 * An update reads the changes feed after the index's seq with the winning documents, runs
 * every map function of the index on each (one map_doc call per document), and writes the
 * rows of a batch in one durable transaction that also moves the index's seq; a map
 * function that throws skips that document for that view (CouchDB; the query server logs
 * it). A query server that times out or dies fails the update: the batches written stay. */
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "view_int.h"
#include "../db/db_int.h"
#include "../query/collate.h"

#define BATCH_DOCS  2000
#define BATCH_BYTES ((size_t)16 << 20)
/* map_doc requests in flight at once: each process round trip costs two context switches,
 * so documents go in windows; the window's bytes stay well under the socket buffer. */
#define WINDOW_DOCS  64
#define WINDOW_BYTES (48 * 1024)

typedef struct vtask {
    uint64_t      dbid, idx;
    char         *db, *ddoc;
    uint64_t      done, total;
    int64_t       started, updated;
    struct vtask *next;
} vtask;

typedef struct vstate {
    pthread_mutex_t lock;
    pthread_cond_t  cond;      /* an updater finished; a background thread ended */
    qs_pool        *pool;
    char            command[PATH_MAX + 16];
    unsigned        timeout_ms;
    vtask          *tasks;     /* running updaters */
    unsigned        background;
    atomic_bool     closing;
} vstate;

static const char vstate_key = 0;

static void log_line(void *ctx, const char *text, size_t len) {
    (void)ctx;
    fprintf(stderr, "mimeo: view: %.*s\n", (int)(len > 2000 ? 2000 : len), text);
}

static void *state_make(mimeo_env *env) {
    vstate *st = calloc(1, sizeof *st);
    if (!st) return NULL;
    pthread_mutex_init(&st->lock, NULL);
    pthread_cond_init(&st->cond, NULL);
    if (env->opts.query_server && env->opts.query_server[0])
        snprintf(st->command, sizeof st->command, "%s", env->opts.query_server);
    else if (qs_default_command(st->command, sizeof st->command) != 0)
        snprintf(st->command, sizeof st->command, "mimeo-js");
    st->timeout_ms = env->opts.os_process_timeout ? env->opts.os_process_timeout : 5000;
    return st;
}

static void state_destroy(void *arg) {
    vstate *st = arg;
    pthread_mutex_lock(&st->lock);
    st->closing = true;
    while (st->background) pthread_cond_wait(&st->cond, &st->lock);
    pthread_mutex_unlock(&st->lock);
    if (st->pool) qs_pool_free(st->pool);
    pthread_cond_destroy(&st->cond);
    pthread_mutex_destroy(&st->lock);
    free(st);
}

static vstate *state(mimeo_db *db) {
    return mimeo_env_state(db->env, &vstate_key, state_make, state_destroy);
}

static qs_pool *pool_st(vstate *st) {
    pthread_mutex_lock(&st->lock);
    if (!st->pool) {
        qs_config cfg = {.command = st->command, .timeout_ms = st->timeout_ms,
                         .log = log_line};
        if (qs_pool_new(&cfg, &st->pool) != 0) st->pool = NULL;
    }
    qs_pool *p = st->pool;
    pthread_mutex_unlock(&st->lock);
    return p;
}

qs_pool *view_pool(mimeo_db *db) {
    vstate *st = state(db);
    return st ? pool_st(st) : NULL;
}

static int proc_st(vstate *st, qs_proc **out, buf *line, buf *reply, mimeo_err *err) {
    *out = NULL;
    qs_pool *pool = pool_st(st);
    if (!pool) {
        view_err(err, MIMEO_EIO, "os_process_error", "cannot start the query server");
        return MIMEO_EIO;
    }
    qs_proc *q;
    int rc = qs_acquire(pool, &q, err);
    if (rc) return rc;
    buf_reset(line);
    buf_printf(line, "[\"reset\",{\"reduce_limit\":true,\"timeout\":%u}]", st->timeout_ms);
    rc = qs_call(q, line->data, line->len, reply, err);
    if (!rc && qs_reply_error(reply->data, reply->len, err)) rc = MIMEO_EIO;
    if (rc) {
        qs_release(pool, q);
        return rc;
    }
    *out = q;
    return 0;
}

int view_proc(mimeo_db *db, qs_proc **out, buf *line, buf *reply, mimeo_err *err) {
    vstate *st = state(db);
    if (!st) {
        view_err(err, MIMEO_EIO, "os_process_error", "cannot start the query server");
        return MIMEO_EIO;
    }
    return proc_st(st, out, line, reply, err);
}

/* ---- tasks --------------------------------------------------------------------------------- */

static int64_t now_s(void) { return (int64_t)time(NULL); }

static vtask *task_find(vstate *st, uint64_t dbid, uint64_t idx) {
    for (vtask *t = st->tasks; t; t = t->next)
        if (t->dbid == dbid && t->idx == idx) return t;
    return NULL;
}

bool view_updating(mimeo_db *db, uint64_t idx) {
    vstate *st = state(db);
    db_meta m;
    if (!st || db_meta_snapshot(db, &m)) return false;
    pthread_mutex_lock(&st->lock);
    bool yes = task_find(st, m.dbid, idx) != NULL;
    pthread_mutex_unlock(&st->lock);
    return yes;
}

int mimeo_view_tasks(mimeo_env *env, char **json_out, size_t *out_len) {
    *json_out = NULL;
    vstate *st = mimeo_env_state(env, &vstate_key, state_make, state_destroy);
    buf b;
    buf_init(&b, 0);
    buf_putc(&b, '[');
    if (st) {
        pthread_mutex_lock(&st->lock);
        bool first = true;
        for (vtask *t = st->tasks; t; t = t->next) {
            if (!first) buf_putc(&b, ',');
            first = false;
            uint64_t total = t->total ? t->total : 1;
            unsigned pct = (unsigned)(t->done >= total ? 100 : t->done * 100 / total);
            buf_puts(&b, "{\"type\":\"indexer\",\"database\":");
            json_put_cstr(&b, t->db);
            buf_puts(&b, ",\"design_document\":");
            json_put_cstr(&b, t->ddoc);
            buf_printf(&b, ",\"progress\":%u,\"changes_done\":%" PRIu64 ",\"total_changes\":%"
                       PRIu64 ",\"started_on\":%" PRId64 ",\"updated_on\":%" PRId64
                       ",\"node\":\"nonode@nohost\",\"pid\":\"<0.0.0>\"}",
                       pct, t->done, t->total, t->started, t->updated);
        }
        pthread_mutex_unlock(&st->lock);
    }
    int rc = buf_putc(&b, ']');
    if (rc) {
        buf_destroy(&b);
        return rc;
    }
    *json_out = buf_detach(&b, out_len);
    return *json_out ? 0 : MIMEO_ENOMEM;
}

/* ---- one update ----------------------------------------------------------------------------- */

typedef struct upd {
    vstate     *st;
    mimeo_db   *db;
    const vdef *d;
    qs_proc    *q;
    buf         line, reply;
    /* the batch: documents, their emits, and the bytes they point into */
    vstore_doc *docs;
    size_t      ndocs, docs_cap;
    vstore_emit *emits;
    size_t      nemits, emits_cap;
    buf         data;      /* ids, keys, values, collation keys of the batch */
    size_t     *offs;      /* per emit: offsets into data, fixed up before writing */
    size_t      offs_cap;
    /* the window: batch documents whose map_doc reply is still to be read */
    size_t      win[WINDOW_DOCS];
    size_t      nwin, win_bytes;
} upd;

static int teach(upd *u, mimeo_err *err) {
    int rc = proc_st(u->st, &u->q, &u->line, &u->reply, err);
    if (rc) return rc;
    if (u->d->lib) {
        buf_reset(&u->line);
        buf_puts(&u->line, "[\"add_lib\",");
        buf_puts(&u->line, u->d->lib);
        buf_putc(&u->line, ']');
        rc = qs_call(u->q, u->line.data, u->line.len, &u->reply, err);
        if (!rc && qs_reply_error(u->reply.data, u->reply.len, err)) rc = MIMEO_EINVAL;
    }
    for (size_t i = 0; !rc && i < u->d->nviews; i++) {
        buf_reset(&u->line);
        buf_puts(&u->line, "[\"add_fun\",");
        json_put_cstr(&u->line, u->d->views[i].map);
        rc = buf_putc(&u->line, ']');
        if (!rc) rc = qs_call(u->q, u->line.data, u->line.len, &u->reply, err);
        if (!rc && qs_reply_error(u->reply.data, u->reply.len, err)) rc = MIMEO_EINVAL;
    }
    return rc;
}

/* Stores (offset-based) ids, keys and values; pointers are made when the batch is written,
 * since data may move while it grows. */
static int batch_doc(upd *u, const char *id, size_t id_len, size_t *id_off) {
    if (u->ndocs == u->docs_cap && ARRAY_GROW(u->docs, u->docs_cap, u->ndocs + 1))
        return MIMEO_ENOMEM;
    *id_off = u->data.len;
    if (buf_put(&u->data, id, id_len)) return MIMEO_ENOMEM;
    vstore_doc *d = &u->docs[u->ndocs++];
    memset(d, 0, sizeof *d);
    d->id = (const char *)(uintptr_t)*id_off; /* fixed up later */
    d->id_len = id_len;
    d->emits = (const vstore_emit *)(uintptr_t)u->nemits;
    return 0;
}

/* Adds an emit of batch document di (its emits are added together, in one run). */
static int batch_emit(upd *u, size_t di, unsigned view, const jval *k, const jval *v, buf *ck) {
    if (u->nemits == u->emits_cap) {
        size_t nc = u->emits_cap ? u->emits_cap * 2 : 1024;
        vstore_emit *g = realloc(u->emits, nc * sizeof *g);
        if (!g) return MIMEO_ENOMEM;
        u->emits = g;
        size_t *o = realloc(u->offs, nc * 3 * sizeof *o);
        if (!o) return MIMEO_ENOMEM;
        u->offs = o;
        /* raised only once both arrays hold nc: the capacity covers them together */
        u->emits_cap = nc;
    }
    vstore_emit *e = &u->emits[u->nemits];
    size_t *o = &u->offs[u->nemits * 3];
    e->view = view;
    buf_reset(ck);
    int rc = collate_key_put(ck, k);
    if (rc) return rc;
    o[0] = u->data.len;
    e->ckey_len = ck->len;
    if (buf_put(&u->data, ck->data, ck->len)) return MIMEO_ENOMEM;
    o[1] = u->data.len;
    if (json_put_jval(&u->data, k)) return MIMEO_ENOMEM;
    e->key_len = u->data.len - o[1];
    o[2] = u->data.len;
    if (json_put_jval(&u->data, v)) return MIMEO_ENOMEM;
    e->value_len = u->data.len - o[2];
    u->nemits++;
    u->docs[di].n++;
    return 0;
}

static int batch_write(upd *u, uint64_t from, uint64_t to) {
    const char *base = u->data.data;
    for (size_t i = 0; i < u->nemits; i++) {
        size_t *o = &u->offs[i * 3];
        u->emits[i].ckey = (const unsigned char *)base + o[0];
        u->emits[i].key = base + o[1];
        u->emits[i].value = base + o[2];
    }
    for (size_t i = 0; i < u->ndocs; i++) {
        u->docs[i].id = base + (size_t)(uintptr_t)u->docs[i].id;
        u->docs[i].emits = u->emits + (size_t)(uintptr_t)u->docs[i].emits;
    }
    int rc = vstore_apply(u->db, u->d->idx, (unsigned)u->d->nviews, u->d->ddoc_id,
                          u->d->ddoc_id_len, from, to, u->docs, u->ndocs);
    u->ndocs = u->nemits = 0;
    buf_reset(&u->data);
    return rc;
}

static int window_drain(upd *u, buf *ck, mimeo_err *err);

/* Adds one document to the batch and, when it has rows to compute, sends its map_doc
 * request (the reply is read by window_drain). */
static int map_send(upd *u, const mimeo_row *row, buf *ck, mimeo_err *err) {
    size_t id_off;
    int rc = batch_doc(u, row->id, row->id_len, &id_off);
    if (rc) return rc;
    bool design = row->id_len >= 8 && memcmp(row->id, "_design/", 8) == 0;
    if (row->deleted || !row->body || (design && !u->d->include_design) || !u->d->nviews)
        return 0;
    buf *l = &u->line;
    buf_reset(l);
    buf_puts(l, "[\"map_doc\",{\"_id\":");
    json_put_str(l, row->id, row->id_len);
    buf_puts(l, ",\"_rev\":");
    json_put_str(l, row->rev, row->rev_len);
    if (u->d->local_seq) buf_printf(l, ",\"_local_seq\":%" PRIu64, row->seq);
    if (row->body_len > 2) {
        buf_putc(l, ',');
        buf_put(l, row->body + 1, row->body_len - 1);
    } else {
        buf_putc(l, '}');
    }
    if ((rc = buf_putc(l, ']'))) return rc;
    /* a large document waits for the window to empty: the socket holds only so much */
    if (u->nwin && u->win_bytes + l->len > WINDOW_BYTES && (rc = window_drain(u, ck, err)))
        return rc;
    if ((rc = qs_send(u->q, l->data, l->len, err))) return rc;
    u->win[u->nwin++] = u->ndocs - 1;
    u->win_bytes += l->len;
    return 0;
}

/* Reads the replies of the window, in order, and adds their rows to the batch. */
static int window_drain(upd *u, buf *ck, mimeo_err *err) {
    int rc = 0;
    for (size_t w = 0; w < u->nwin; w++) {
        /* every reply is read, even after an error, so the process stays in step */
        if (rc) {
            mimeo_err ignored;
            if (qs_recv(u->q, &u->reply, &ignored)) break;
            continue;
        }
        if ((rc = qs_recv(u->q, &u->reply, err))) break;
        if (qs_reply_error(u->reply.data, u->reply.len, err)) {
            rc = MIMEO_EIO;
            continue;
        }
        size_t di = u->win[w];
        u->docs[di].emits = (const vstore_emit *)(uintptr_t)u->nemits;
        jval *res = NULL;
        json_limits lim = {0, u->reply.len + 1};
        if (json_tree_parse(u->reply.data, u->reply.len, &lim, &res, NULL) != 0 ||
            res->type != JV_ARRAY) {
            if (res) jval_free(res);
            view_err(err, MIMEO_EIO, "os_process_error",
                     "the query server's map_doc reply is not a list");
            rc = MIMEO_EIO;
            continue;
        }
        for (size_t f = 0; !rc && f < res->count && f < u->d->nviews; f++) {
            const jval *rows = res->items[f];
            if (rows->type != JV_ARRAY) continue;
            for (size_t i = 0; !rc && i < rows->count; i++) {
                const jval *kv = rows->items[i];
                if (kv->type != JV_ARRAY || kv->count != 2) continue;
                rc = batch_emit(u, di, (unsigned)f, kv->items[0], kv->items[1], ck);
            }
        }
        jval_free(res);
    }
    u->nwin = 0;
    u->win_bytes = 0;
    return rc;
}

static int update_run(upd *u, vtask *task, vstate *st, mimeo_err *err) {
    vstore_meta *m = malloc(sizeof *m);
    if (!m) return MIMEO_ENOMEM;
    int rc = vstore_meta_get(u->db, u->d->idx, m);
    uint64_t from = m->seq;
    free(m);
    if (rc) return rc;
    mimeo_db_info info;
    if ((rc = mimeo_db_info_get(u->db, &info))) return rc;
    if (info.update_seq <= from) return 0;
    pthread_mutex_lock(&st->lock);
    task->total = info.update_seq - from;
    pthread_mutex_unlock(&st->lock);
    if ((rc = teach(u, err))) return rc;
    mimeo_changes_opts co = {.since = from, .include_docs = true};
    mimeo_cursor *cur = NULL;
    if ((rc = mimeo_changes_open(u->db, &co, &cur, err))) return rc;
    buf ck;
    buf_init(&ck, 0);
    uint64_t last = from;
    for (;;) {
        const mimeo_row *row;
        if ((rc = mimeo_cursor_next(cur, &row, err))) break;
        if (row) {
            if ((rc = map_send(u, row, &ck, err))) break;
            last = row->seq;
        }
        bool full = u->ndocs >= BATCH_DOCS || u->data.len >= BATCH_BYTES;
        if ((full || !row || u->nwin == WINDOW_DOCS || u->win_bytes >= WINDOW_BYTES) &&
            (rc = window_drain(u, &ck, err)))
            break;
        if ((full || !row) && (u->ndocs || last != from)) {
            if ((rc = batch_write(u, from, last))) break;
            pthread_mutex_lock(&st->lock);
            task->done += last - from;
            task->updated = now_s();
            pthread_mutex_unlock(&st->lock);
            from = last;
        }
        if (!row) break;
        if (st->closing) {
            rc = MIMEO_ECLOSED;
            break;
        }
    }
    buf_destroy(&ck);
    mimeo_cursor_close(cur);
    return rc;
}

static int update_st(vstate *st, mimeo_db *db, const vdef *d, mimeo_err *err) {
    db_meta dm;
    int rc = db_meta_snapshot(db, &dm);
    if (rc) return rc;
    pthread_mutex_lock(&st->lock);
    while (task_find(st, dm.dbid, d->idx)) pthread_cond_wait(&st->cond, &st->lock);
    vtask *t = calloc(1, sizeof *t);
    if (t) {
        t->dbid = dm.dbid;
        t->idx = d->idx;
        t->db = strdup(mimeo_db_name(db));
        t->ddoc = strdup(d->ddoc_id);
        t->started = t->updated = now_s();
        t->next = st->tasks;
        st->tasks = t;
    }
    pthread_mutex_unlock(&st->lock);
    if (!t) return MIMEO_ENOMEM;
    upd u = {.st = st, .db = db, .d = d};
    buf_init(&u.line, 0);
    buf_init(&u.reply, 0);
    buf_init(&u.data, 0);
    for (int tries = 0;; tries++) {
        rc = update_run(&u, t, st, err);
        /* someone else moved the index (another process of this environment cannot; a
         * dropped and rebuilt index can): read its seq again */
        if (rc != MIMEO_ECONFLICT || tries == 3) break;
        u.ndocs = u.nemits = 0;
        buf_reset(&u.data);
    }
    if (u.q) qs_release(pool_st(st), u.q);
    buf_destroy(&u.line);
    buf_destroy(&u.reply);
    buf_destroy(&u.data);
    free(u.docs);
    free(u.emits);
    free(u.offs);
    pthread_mutex_lock(&st->lock);
    for (vtask **p = &st->tasks; *p; p = &(*p)->next)
        if (*p == t) {
            *p = t->next;
            break;
        }
    pthread_cond_broadcast(&st->cond);
    pthread_mutex_unlock(&st->lock);
    free(t->db);
    free(t->ddoc);
    free(t);
    if (rc && rc != MIMEO_ENOTFOUND)
        fprintf(stderr, "mimeo: view index %s of %s: %s: %s\n", d->ddoc_id, mimeo_db_name(db),
                err && err->error[0] ? err->error : mimeo_strerror(rc),
                err && err->reason[0] ? err->reason : "");
    return rc;
}

/* After rows changed: the blocks around the changes (vstore.h), with each view's built-in
 * reducer for their partial reductions. */
static int repair(mimeo_db *db, const vdef *d) {
    int kinds[VSTORE_VIEWS_MAX];
    for (size_t i = 0; i < d->nviews; i++)
        kinds[i] = d->views[i].rtype == VRED_BUILTIN ? (int)d->views[i].rkind : -1;
    return vstore_blocks_repair(db, d->idx, (unsigned)d->nviews, kinds);
}

/* ---- partial reductions of JavaScript reduces ------------------------------------------------
 * A block's partial for a JavaScript reduce is the function's reduce of the block's rows,
 * computed here after the blocks are repaired (outside any write transaction: the query
 * server runs in between) and stored only when the index did not move meanwhile. A query
 * rereduces the partials of the blocks inside its range. A function that fails on a block's
 * rows leaves "!" there, so queries read those rows and report the error as CouchDB does. */

/* The rows of one block, from its first row (the scan's seek) up to its last. */
typedef struct fill_rows {
    const unsigned char *last;
    size_t               last_len;
    buf                 *kvs;
    uint64_t             n;
    bool                 end;
} fill_rows;

static int fill_row(void *ctx, const vstore_row *r) {
    fill_rows *f = ctx;
    size_t m = r->rk_len < f->last_len ? r->rk_len : f->last_len;
    int c = memcmp(r->rk, f->last, m);
    if (c > 0 || (c == 0 && r->rk_len > f->last_len)) {
        f->end = true;
        return VSTORE_BEFORE;
    }
    if (f->n++) buf_putc(f->kvs, ',');
    int rc = view_put_kv(f->kvs, r);
    if (rc) return rc;
    if (c == 0 && r->rk_len == f->last_len) {
        f->end = true;
        return VSTORE_STOP;
    }
    return VSTORE_NEXT;
}

static int fill_view(mimeo_db *db, const vdef *d, unsigned view) {
    vstore_meta *m = malloc(sizeof *m);
    if (!m) return MIMEO_ENOMEM;
    int rc = vstore_meta_get(db, d->idx, m);
    uint64_t seq = m->seq;
    bool ok = m->blocks_ok;
    free(m);
    if (rc || !ok) return rc;
    blist l = {0};
    buf_init(&l.data, 0);
    buf last, kvs, texts, line, reply;
    buf_init(&last, 0);
    buf_init(&kvs, 0);
    buf_init(&texts, 0);
    buf_init(&line, 0);
    buf_init(&reply, 0);
    rc = blist_read(db, d->idx, view, NULL, NULL, &l);
    /* the blocks without a partial, in place */
    size_t kept = 0;
    for (size_t i = 0; !rc && i < l.n; i++)
        if (!l.e[i].part_len) l.e[kept++] = l.e[i];
    l.n = kept;
    size_t *offs = l.n ? calloc(l.n * 2, sizeof *offs) : NULL;
    if (!rc && l.n && !offs) rc = MIMEO_ENOMEM;
    qs_proc *p = NULL;
    mimeo_err err = {0};
    if (!rc && l.n && view_proc(db, &p, &line, &reply, &err) != 0) p = NULL;
    size_t done = 0;
    const unsigned char *base = (const unsigned char *)l.data.data;
    for (; !rc && p && done < l.n; done++) {
        struct bent *b = &l.e[done];
        buf_reset(&kvs);
        fill_rows fr = {base + b->last, b->last_len, &kvs, 0, false};
        bool rmore;
        rc = vstore_scan(db, d->idx, view, VSTORE_SEEK, base + b->first, b->first_len, false,
                         (size_t)b->count + 1, fill_row, &fr, &rmore, &last);
        if (rc < 0) break;
        rc = 0;
        offs[done * 2] = texts.len;
        if (fr.n != b->count || !fr.end) {
            offs[done * 2 + 1] = texts.len; /* moved under us: none stored */
            continue;
        }
        err = (mimeo_err){0};
        size_t before = texts.len;
        int crc = view_js_reduce(p, "reduce", d->views[view].reduce, kvs.data, kvs.len, &line,
                                 &reply, &texts, &err);
        if (crc == MIMEO_ENOMEM) {
            rc = crc;
            break;
        }
        if (crc) {
            texts.len = before;
            buf_putc(&texts, '!');
            /* a process that timed out or died: the function is left for queries to run */
            if (!strcmp(err.error, "os_process_error")) {
                offs[done * 2 + 1] = texts.len;
                done++;
                break;
            }
        }
        offs[done * 2 + 1] = texts.len;
    }
    if (p) qs_release(view_pool(db), p);
    /* the blocks after a dead process are marked too: the next updates do not wait for
     * the same timeout again on every block */
    if (!rc && p && done < l.n && !strcmp(err.error, "os_process_error")) {
        for (; done < l.n; done++) {
            offs[done * 2] = texts.len;
            buf_putc(&texts, '!');
            offs[done * 2 + 1] = texts.len;
        }
    }
    vstore_partial *parts = done ? calloc(done, sizeof *parts) : NULL;
    if (!rc && done && !parts) rc = MIMEO_ENOMEM;
    size_t np = 0;
    for (size_t i = 0; !rc && i < done; i++) {
        if (offs[i * 2 + 1] == offs[i * 2]) continue;
        struct bent *b = &l.e[i];
        parts[np++] = (vstore_partial){base + b->first, base + b->last, b->first_len, b->last_len,
                                       b->count, texts.data + offs[i * 2],
                                       offs[i * 2 + 1] - offs[i * 2]};
    }
    if (!rc && np) {
        rc = vstore_blocks_put_partials(db, d->idx, view, seq, parts, np);
        if (rc == MIMEO_ECONFLICT) rc = 0; /* the next update fills them */
    }
    free(parts);
    free(offs);
    blist_free(&l);
    buf_destroy(&last);
    buf_destroy(&kvs);
    buf_destroy(&texts);
    buf_destroy(&line);
    buf_destroy(&reply);
    return rc;
}

/* After an update: the blocks, then the JavaScript partials. Failing to compute partials is
 * no error for the query (it reads rows instead). */
static int maintain(mimeo_db *db, const vdef *d) {
    int rc = repair(db, d);
    for (size_t v = 0; !rc && v < d->nviews; v++) {
        if (d->views[v].rtype != VRED_JS) continue;
        int frc = fill_view(db, d, (unsigned)v);
        if (frc) fprintf(stderr, "mimeo: view index %s: partial reductions: %s\n", d->ddoc_id,
                         mimeo_strerror(frc));
    }
    return rc;
}

int view_update(mimeo_db *db, const vdef *d, mimeo_err *err) {
    vstate *st = state(db);
    int rc = st ? update_st(st, db, d, err) : MIMEO_ENOMEM;
    return rc ? rc : maintain(db, d);
}

/* ---- update=lazy ------------------------------------------------------------------------ */

typedef struct later {
    mimeo_env *env;
    vstate    *st;
    char      *db;
    char      *ddoc;
} later;

static void *later_main(void *arg) {
    later *l = arg;
    mimeo_db *db = NULL;
    mimeo_err e = {0};
    if (mimeo_db_open(l->env, l->db, &db, &e) == 0) {
        vdef *d = NULL;
        if (vdef_load(db, l->ddoc + 8, strlen(l->ddoc + 8), &d, &e) == 0) {
            if (update_st(l->st, db, d, &e) == 0) maintain(db, d);
            vdef_free(d);
        }
        mimeo_db_close(db);
    }
    pthread_mutex_lock(&l->st->lock);
    l->st->background--;
    pthread_cond_broadcast(&l->st->cond);
    pthread_mutex_unlock(&l->st->lock);
    free(l->db);
    free(l->ddoc);
    free(l);
    return NULL;
}

void view_update_later(mimeo_db *db, const vdef *d) {
    vstate *st = state(db);
    if (!st) return;
    later *l = calloc(1, sizeof *l);
    if (!l) return;
    l->env = db->env;
    l->st = st;
    l->db = strdup(mimeo_db_name(db));
    l->ddoc = strdup(d->ddoc_id);
    pthread_mutex_lock(&st->lock);
    bool ok = !st->closing && l->db && l->ddoc;
    if (ok) st->background++;
    pthread_mutex_unlock(&st->lock);
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (ok && pthread_create(&th, &at, later_main, l) == 0) {
        pthread_attr_destroy(&at);
        return;
    }
    pthread_attr_destroy(&at);
    if (ok) {
        pthread_mutex_lock(&st->lock);
        st->background--;
        pthread_cond_broadcast(&st->cond);
        pthread_mutex_unlock(&st->lock);
    }
    free(l->db);
    free(l->ddoc);
    free(l);
}
