/* CRDT documents over the public document calls: which documents are CRDT documents (the
 * rules of _design/crdt), applying ops (read the live leaves, join, apply, write a child of
 * the winner, retry on conflict), and the deterministic merge of a document with several
 * live leaves. Reads and writes go through mimeo.h's calls, except the write hook's pre-check
 * (one read snapshot per batch over revision trees and stored bodies: under selector rules it
 * runs for every written document); the merge's bytes come from src/crdt. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "db_int.h"
#include "../crdt/crdt.h"
#include "../query/selector.h"

#define CRDT_DDOC       "_design/crdt"
#define CRDT_ATTEMPTS   32   /* writes lost to concurrent writers before giving up */

static atomic_uint_fast64_t stat_ops, stat_merges, stat_kept, stat_hook_reads;

void mimeo_crdt_stats_get(mimeo_crdt_stats *out) {
    out->ops_applied = atomic_load(&stat_ops);
    out->merges_written = atomic_load(&stat_merges);
    out->conflicts_kept = atomic_load(&stat_kept);
    out->hook_docs_read = atomic_load(&stat_hook_reads);
}

/* Whether member name k is the state's, by its bytes (a name may hold a NUL: "$crdt\u0000"
 * is an ordinary member, as src/crdt reads it). */
static bool is_state_member(const char *k, size_t kl) {
    return kl == strlen(CRDT_MEMBER) && memcmp(k, CRDT_MEMBER, kl) == 0;
}

/* One clock per process: a hybrid logical clock stays one if several environments share it,
 * and every stamp a node issues is then after every stamp it issued before. */
static pthread_mutex_t hlc_lock = PTHREAD_MUTEX_INITIALIZER;
static crdt_hlc hlc;

/* Writers of one document on this node take turns: ops from many clients on one hot document
 * would otherwise read the same leaf, all but one lose the write, and retry in a storm.
 * Striped by a hash of (database, id); recursive because a merge written by an apply may run
 * the write hook on the same thread, for the same document. Other nodes' writers (replicated
 * batches) still meet the retry loop. */
#define DOC_LOCKS 64
static pthread_mutex_t doc_locks[DOC_LOCKS];
static pthread_once_t doc_locks_once = PTHREAD_ONCE_INIT;

static void doc_locks_init(void) {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    for (int i = 0; i < DOC_LOCKS; i++) pthread_mutex_init(&doc_locks[i], &a);
    pthread_mutexattr_destroy(&a);
}

static pthread_mutex_t *doc_lock(mimeo_db *db, const char *id, size_t id_len) {
    pthread_once(&doc_locks_once, doc_locks_init);
    uint64_t h = 1469598103934665603ull;
    for (const char *p = mimeo_db_name(db); *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull;
    for (size_t i = 0; i < id_len; i++) h = (h ^ (unsigned char)id[i]) * 1099511628211ull;
    return &doc_locks[h % DOC_LOCKS];
}

/* After a lost race with another node's write: wait a little, more each time, so that
 * retries spread out. */
static void backoff(int attempt) {
    unsigned r;
    random_bytes(&r, sizeof r);
    long us = (long)(r % (unsigned)(100 * (attempt + 1)));
    struct timespec ts = {0, us * 1000};
    nanosleep(&ts, NULL);
}

static uint64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int fail(mimeo_err *err, int code, const char *error, const char *reason) {
    db_err_set(err, code, error, reason);
    return code;
}

/* ---- rules ---------------------------------------------------------------------------------- */

/* A {"selector": …} rule matches a document whose body (with its _id; for a CRDT document
 * the plain values beside $crdt) matches the Mango selector (src/query/selector.h, CouchDB's
 * rules). With selector rules, ids alone no longer decide: the write hook and _crdt_merge look
 * at every document's leaves. A rule whose selector does not parse matches nothing. */
typedef struct crdt_rules {
    jval *ddoc;       /* _design/crdt, or NULL when there is none */
    const jval *list; /* its "rules" array (borrowed from ddoc), or NULL */
    selector **sel;   /* per rule: its parsed selector, or NULL (list->count entries) */
    bool  selectors;  /* some rule is a selector */
} crdt_rules;

static void rules_destroy(crdt_rules *r) {
    for (size_t i = 0; r->sel && r->list && i < r->list->count; i++) selector_free(r->sel[i]);
    free(r->sel);
    jval_free(r->ddoc);
    memset(r, 0, sizeof *r);
}

/* A design document that cannot be read as rules declares nothing: documents stay ordinary
 * documents, which is always safe. */
static int rules_load(mimeo_db *db, crdt_rules *r, mimeo_err *err) {
    memset(r, 0, sizeof *r);
    char *json = NULL;
    size_t len = 0;
    mimeo_err e = {0};
    int rc = mimeo_doc_get(db, CRDT_DDOC, strlen(CRDT_DDOC), NULL, &json, &len, &e);
    if (rc == MIMEO_ENOTFOUND || rc == MIMEO_EDELETED) {
        if (e.reason[0] && strcmp(e.reason, "Database does not exist.") == 0) {
            if (err) *err = e;
            return rc;
        }
        return 0;
    }
    if (rc) {
        if (err) *err = e;
        return rc;
    }
    rc = json_tree_parse(json, len, NULL, &r->ddoc, NULL);
    mimeo_free(json);
    if (rc) return 0;
    const jval *list = jval_get(r->ddoc, "rules");
    if (!list || list->type != JV_ARRAY) return 0;
    r->list = list;
    r->sel = calloc(list->count ? list->count : 1, sizeof *r->sel);
    if (!r->sel) {
        rules_destroy(r);
        return db_err(err, MIMEO_ENOMEM);
    }
    for (size_t i = 0; i < list->count; i++) {
        const jval *sv = jval_get(list->items[i], "selector");
        if (!sv || sv->type != JV_OBJECT) continue;
        mimeo_err se = {0};
        int src = selector_from_jval(sv, &r->sel[i], &se);
        if (src == MIMEO_ENOMEM) {
            rules_destroy(r);
            return db_err(err, src);
        }
        if (src == 0) r->selectors = true;
    }
    return 0;
}

/* Whether a prefix rule matches id. Ids starting with '_' (design documents) never match. */
static bool rules_match_id(const crdt_rules *r, const char *id, size_t id_len) {
    if (!r->list || id_len == 0 || id[0] == '_') return false;
    for (size_t i = 0; i < r->list->count; i++) {
        const jval *prefix = jval_get(r->list->items[i], "prefix");
        if (prefix && prefix->type == JV_STRING && prefix->len <= id_len &&
            memcmp(prefix->str, id, prefix->len) == 0)
            return true;
    }
    return false;
}

/* Whether a selector rule matches the document doc (a body with its _id). Selectors see the
 * members a client reads, not the state under $crdt: the same answer for a stored leaf and
 * for the plain value an op is about to write. */
static bool rules_match_doc(const crdt_rules *r, const jval *doc) {
    if (!r->selectors || !doc || doc->type != JV_OBJECT) return false;
    jval view = *doc;
    size_t n = doc->count ? doc->count : 1;
    view.keys = malloc(n * sizeof *view.keys);
    view.key_lens = malloc(n * sizeof *view.key_lens);
    view.items = malloc(n * sizeof *view.items);
    bool match = false;
    if (view.keys && view.key_lens && view.items) {
        view.count = 0;
        for (size_t i = 0; i < doc->count; i++) {
            if (is_state_member(doc->keys[i], doc->key_lens[i])) continue;
            view.keys[view.count] = doc->keys[i];
            view.key_lens[view.count] = doc->key_lens[i];
            view.items[view.count++] = doc->items[i];
        }
        for (size_t i = 0; !match && i < r->list->count; i++)
            match = r->sel[i] && selector_match(r->sel[i], &view);
    }
    free(view.keys);
    free(view.key_lens);
    free(view.items);
    return match;
}

static int rules_match_stored(mimeo_db *db, const crdt_rules *r, const char *id, size_t id_len,
                              bool *match, mimeo_err *err);

int mimeo_crdt_rules_match(mimeo_db *db, const char *id, size_t id_len, bool *match,
                           mimeo_err *err) {
    *match = false;
    crdt_rules r;
    int rc = rules_load(db, &r, err);
    if (rc) return rc;
    rc = rules_match_stored(db, &r, id, id_len, match, err);
    rules_destroy(&r);
    return rc;
}

/* ---- leaves --------------------------------------------------------------------------------- */

typedef struct leaf {
    char       rev[MIMEO_REV_MAX];
    const jval *doc;     /* borrowed from leaves.tree */
    crdt_state s;
    bool       valid;     /* the body reads as a CRDT state */
    bool       canonical; /* the body is exactly the canonical body of that state */
    bool       plain_ok;  /* its plain members show that state's values (only the bytes of
                             $crdt or the order of members may differ) */
} leaf;

typedef struct leaves {
    jval  *tree;
    leaf  *live;         /* best first: live[0] is the winner */
    size_t n;
    bool   any_invalid;
    char   invalid_reason[MIMEO_ERR_REASON_MAX];
} leaves;

static void leaves_destroy(leaves *L) {
    for (size_t i = 0; i < L->n; i++) crdt_state_destroy(&L->live[i].s);
    free(L->live);
    jval_free(L->tree);
    memset(L, 0, sizeof *L);
}

/* The body as stored: the members that are not `_` members, re-emitted compactly. */
static int body_bytes(const jval *doc, buf *out) {
    int rc = buf_putc(out, '{');
    bool first = true;
    for (size_t i = 0; !rc && i < doc->count; i++) {
        if (doc->key_lens[i] && doc->keys[i][0] == '_') continue;
        if (!first) rc = buf_putc(out, ',');
        first = false;
        if (!rc) rc = json_put_str(out, doc->keys[i], doc->key_lens[i]);
        if (!rc) rc = buf_putc(out, ':');
        if (!rc) rc = json_put_jval(out, doc->items[i]);
    }
    return rc ? rc : buf_putc(out, '}');
}

/* The plain members (not `_` members, not $crdt) as canonical JSON: the form crdt_render
 * writes, so the two compare by bytes. */
static int plain_canon(const jval *doc, buf *out) {
    jval view = *doc;
    view.keys = malloc((doc->count ? doc->count : 1) * sizeof *view.keys);
    view.key_lens = malloc((doc->count ? doc->count : 1) * sizeof *view.key_lens);
    view.items = malloc((doc->count ? doc->count : 1) * sizeof *view.items);
    int rc = 0;
    if (!view.keys || !view.key_lens || !view.items) rc = MIMEO_ENOMEM;
    view.count = 0;
    for (size_t i = 0; !rc && i < doc->count; i++) {
        if ((doc->key_lens[i] && doc->keys[i][0] == '_') ||
            is_state_member(doc->keys[i], doc->key_lens[i]))
            continue;
        view.keys[view.count] = doc->keys[i];
        view.key_lens[view.count] = doc->key_lens[i];
        view.items[view.count++] = doc->items[i];
    }
    if (!rc) rc = crdt_canon(out, &view);
    free(view.keys);
    free(view.key_lens);
    free(view.items);
    return rc;
}

static bool leaves_match(const crdt_rules *r, const char *id, size_t id_len, const leaves *L);

/* Reads every live leaf of id (none when the document is missing or deleted). With gate set,
 * a document no rule covers stops after reading the bodies (*covered false, no states read):
 * with selector rules the write hook looks at every written document, and most are plain. */
static int leaves_load_gated(mimeo_db *db, const char *id, size_t id_len, const crdt_rules *gate,
                             bool *covered, leaves *L, mimeo_err *err) {
    memset(L, 0, sizeof *L);
    /* A missing document is covered only by a prefix rule (no body to match). */
    if (covered) *covered = !gate || rules_match_id(gate, id, id_len);
    char *json = NULL;
    size_t len = 0;
    mimeo_err e = {0};
    int rc = mimeo_doc_open_revs(db, id, id_len, "all", 3, NULL, &json, &len, &e);
    if (rc == MIMEO_ENOTFOUND && strcmp(e.reason, "Database does not exist.") != 0) return 0;
    if (rc) {
        if (err) *err = e;
        return rc;
    }
    rc = json_tree_parse(json, len, NULL, &L->tree, err);
    mimeo_free(json);
    if (rc) return rc;
    if (L->tree->type != JV_ARRAY) return fail(err, MIMEO_EIO, "error", "bad open_revs reply");
    L->live = calloc(L->tree->count ? L->tree->count : 1, sizeof *L->live);
    if (!L->live) return db_err(err, MIMEO_ENOMEM);
    for (size_t i = 0; i < L->tree->count; i++) {
        const jval *doc = jval_get(L->tree->items[i], "ok");
        const jval *del = jval_get(doc, "_deleted");
        const jval *rev = jval_get(doc, "_rev");
        if (!doc || doc->type != JV_OBJECT || !rev || rev->type != JV_STRING ||
            rev->len >= MIMEO_REV_MAX)
            continue;
        if (del && del->type == JV_BOOL && del->boolean) continue;
        leaf *lf = &L->live[L->n++];
        memcpy(lf->rev, rev->str, rev->len + 1);
        lf->doc = doc;
        crdt_state_init(&lf->s);
    }
    if (gate) {
        bool match = leaves_match(gate, id, id_len, L);
        if (covered) *covered = match;
        if (!match) return 0;
    }
    buf have, want;
    buf_init(&have, 0);
    buf_init(&want, 0);
    for (size_t i = 0; !rc && i < L->n; i++) {
        leaf *lf = &L->live[i];
        const jval *doc = lf->doc;
        mimeo_err pe = {0};
        int prc = crdt_body_read(doc, &lf->s, NULL, &pe);
        if (prc == MIMEO_ENOMEM) rc = db_err(err, prc);
        if (prc) {
            L->any_invalid = true;
            snprintf(L->invalid_reason, sizeof L->invalid_reason, "%s: %.100s", lf->rev, pe.reason);
            continue;
        }
        lf->valid = true;
        buf_reset(&have);
        buf_reset(&want);
        rc = body_bytes(doc, &have);
        if (!rc) rc = crdt_body_write(&lf->s, &want);
        if (rc) rc = db_err(err, rc);
        lf->canonical = !rc && have.len == want.len && memcmp(have.data, want.data, have.len) == 0;
        lf->plain_ok = lf->canonical;
        if (!rc && !lf->canonical) {
            buf_reset(&have);
            buf_reset(&want);
            rc = plain_canon(doc, &have);
            if (!rc) rc = crdt_render(&lf->s, &want);
            if (rc) rc = db_err(err, rc);
            lf->plain_ok = !rc && have.len == want.len && memcmp(have.data, want.data, have.len) == 0;
        }
    }
    buf_destroy(&have);
    buf_destroy(&want);
    return rc;
}

static int leaves_load(mimeo_db *db, const char *id, size_t id_len, leaves *L, mimeo_err *err) {
    return leaves_load_gated(db, id, id_len, NULL, NULL, L, err);
}

/* The join of every valid live leaf. */
static int leaves_join(const leaves *L, crdt_state *out) {
    for (size_t i = 0; i < L->n; i++) {
        if (!L->live[i].valid) continue;
        int rc = crdt_join(out, &L->live[i].s);
        if (rc) return rc;
    }
    return 0;
}

/* A document is a CRDT document while its id matches a prefix rule or any of its live leaves
 * matches a selector rule: a pure function of the leaf set, so every node decides the same
 * for the same conflict, and a document that matched keeps being merged until every branch
 * has stopped matching. */
static bool leaves_match(const crdt_rules *r, const char *id, size_t id_len, const leaves *L) {
    if (rules_match_id(r, id, id_len)) return true;
    if (!r->selectors || id_len == 0 || id[0] == '_') return false;
    for (size_t i = 0; i < L->n; i++)
        if (rules_match_doc(r, L->live[i].doc)) return true;
    return false;
}

static int rules_match_stored(mimeo_db *db, const crdt_rules *r, const char *id, size_t id_len,
                              bool *match, mimeo_err *err) {
    *match = rules_match_id(r, id, id_len);
    if (*match || !r->selectors) return 0;
    leaves L;
    int rc = leaves_load(db, id, id_len, &L, err);
    if (!rc) *match = leaves_match(r, id, id_len, &L);
    leaves_destroy(&L);
    return rc;
}

/* Whether the document id with plain value `value` (the JSON object crdt_render wrote)
 * matches a rule. */
static int value_matches(const crdt_rules *r, const char *id, size_t id_len, const buf *value,
                         bool *match) {
    *match = rules_match_id(r, id, id_len);
    if (*match || !r->selectors) return 0;
    buf b;
    buf_init(&b, value->len + id_len + 16);
    int rc = buf_puts(&b, "{\"_id\":");
    if (!rc) rc = json_put_str(&b, id, id_len);
    if (!rc && value->len > 2) rc = buf_putc(&b, ',');
    if (!rc) rc = buf_put(&b, value->data + 1, value->len - 1);
    jval *doc = NULL;
    if (!rc) rc = json_tree_parse(b.data, b.len, NULL, &doc, NULL);
    if (!rc) *match = rules_match_doc(r, doc);
    jval_free(doc);
    buf_destroy(&b);
    return rc == MIMEO_ENOMEM ? rc : 0;
}

/* ---- the write ------------------------------------------------------------------------------ */

/* One atomic write: a child of `parent` (NULL: a new or re-created document) with the
 * canonical body of s, and a tombstone on every other valid live leaf. Revision ids are
 * mimeo's (parent, deleted, body) hashes, so the same write on any node gives the same ids.
 * MIMEO_ECONFLICT when a leaf moved meanwhile (nothing written). */
static int write_state(mimeo_db *db, const char *id, size_t id_len, const leaves *L,
                       const crdt_state *s, char rev_out[MIMEO_REV_MAX], mimeo_err *err) {
    buf b, body;
    buf_init(&b, 0);
    buf_init(&body, 0);
    int rc = crdt_body_write(s, &body);
    if (!rc) rc = buf_puts(&b, "{\"all_or_nothing\":true,\"docs\":[{\"_id\":");
    if (!rc) rc = json_put_str(&b, id, id_len);
    if (!rc && L->n) {
        rc = buf_puts(&b, ",\"_rev\":");
        if (!rc) rc = json_put_cstr(&b, L->live[0].rev);
    }
    if (!rc) rc = buf_putc(&b, ',');
    if (!rc) rc = buf_put(&b, body.data + 1, body.len - 1);
    for (size_t i = 1; !rc && i < L->n; i++) {
        if (!L->live[i].valid) continue;
        rc = buf_puts(&b, ",{\"_id\":");
        if (!rc) rc = json_put_str(&b, id, id_len);
        if (!rc) rc = buf_puts(&b, ",\"_rev\":");
        if (!rc) rc = json_put_cstr(&b, L->live[i].rev);
        if (!rc) rc = buf_puts(&b, ",\"_deleted\":true}");
    }
    if (!rc) rc = buf_puts(&b, "]}");
    buf_destroy(&body);
    if (rc) {
        buf_destroy(&b);
        return db_err(err, rc);
    }
    char *out = NULL;
    size_t out_len = 0;
    mimeo_err e = {0};
    rc = mimeo_bulk_docs(db, b.data, b.len, &out, &out_len, &e);
    buf_destroy(&b);
    if (rc == MIMEO_EEXPECTATION) {
        mimeo_free(out);
        return fail(err, MIMEO_ECONFLICT, "conflict", "Document update conflict.");
    }
    if (rc) {
        mimeo_free(out);
        if (err) *err = e;
        return rc;
    }
    jval *reply = NULL;
    rc = json_tree_parse(out, out_len, NULL, &reply, err);
    mimeo_free(out);
    if (rc) return rc;
    const jval *first = reply->type == JV_ARRAY && reply->count ? reply->items[0] : NULL;
    const jval *rev = jval_get(first, "rev");
    const jval *error = jval_get(first, "error");
    if (error) rc = fail(err, MIMEO_ECONFLICT, "conflict", "Document update conflict.");
    else if (!rev || rev->type != JV_STRING || rev->len >= MIMEO_REV_MAX)
        rc = fail(err, MIMEO_EIO, "error", "bad _bulk_docs reply");
    else memcpy(rev_out, rev->str, rev->len + 1);
    jval_free(reply);
    return rc;
}

/* ---- ops ------------------------------------------------------------------------------------ */

void mimeo_crdt_result_destroy(mimeo_crdt_result *res) {
    if (!res) return;
    free(res->id);
    free(res->value);
    memset(res, 0, sizeof *res);
}

/* One caller of mimeo_crdt_apply waiting for its ops to be written. Callers that arrive
 * while a write of the same document is in flight queue up, and the next write applies all
 * their ops at once (each caller's ops atomically, in arrival order): a hot document takes one
 * durable write per group of callers instead of one per caller. */
typedef struct apply_req {
    struct apply_req  *next;
    mimeo_db          *db;
    const char        *id;
    size_t             id_len;
    const crdt_ops    *ops;
    const crdt_rules  *rules; /* set when the result must match a selector rule */
    mimeo_crdt_result *res;
    mimeo_err          err;
    int                rc;
    bool               done;
} apply_req;

typedef struct apply_queue {
    pthread_mutex_t lock;
    pthread_cond_t  cond;   /* broadcast when a group is done */
    apply_req      *head;
    bool            busy;   /* a caller is writing groups for this stripe */
} apply_queue;

static apply_queue queues[DOC_LOCKS];
static pthread_once_t queues_once = PTHREAD_ONCE_INIT;

static void queues_init(void) {
    for (int i = 0; i < DOC_LOCKS; i++) {
        pthread_mutex_init(&queues[i].lock, NULL);
        pthread_cond_init(&queues[i].cond, NULL);
    }
}

static bool same_doc(const apply_req *a, const apply_req *b) {
    return a->db == b->db && a->id_len == b->id_len && memcmp(a->id, b->id, a->id_len) == 0;
}

/* Applies a group of requests for one document in one write, retrying on lost races. Sets
 * each request's rc (and res on success). The document's lock is held by the caller. */
static void apply_group(apply_req **group, size_t n) {
    mimeo_db *db = group[0]->db;
    const char *id = group[0]->id;
    size_t id_len = group[0]->id_len;
    const char *node = mimeo_env_uuid(db->env);
    buf v;
    buf_init(&v, 0);
    int rc = 0;
    char rev[MIMEO_REV_MAX] = "";
    for (int attempt = 0; attempt < CRDT_ATTEMPTS; attempt++) {
        leaves L;
        crdt_state s;
        crdt_state_init(&s);
        mimeo_err e = {0};
        rc = leaves_load(db, id, id_len, &L, &e);
        if (!rc && L.n && !L.live[0].valid)
            rc = fail(&e, MIMEO_ECONFLICT, "conflict",
                      "The document's winning revision is not a CRDT state");
        if (!rc) rc = leaves_join(&L, &s);
        size_t applied = 0;
        for (size_t i = 0; !rc && i < n; i++) {
            apply_req *q = group[i];
            mimeo_crdt_result_destroy(q->res);
            q->err = (mimeo_err){0};
            /* Whether the document is a CRDT document after these ops is known only once
             * they are applied: keep the state before them to take them back. */
            crdt_state before;
            crdt_state_init(&before);
            if (q->rules && crdt_state_copy(&before, &s) != 0) {
                crdt_state_destroy(&before);
                rc = MIMEO_ENOMEM;
                break;
            }
            pthread_mutex_lock(&hlc_lock);
            q->rc = crdt_apply(&s, q->ops, node, &hlc, wall_ms(), &q->err);
            pthread_mutex_unlock(&hlc_lock);
            if (q->rc == MIMEO_ENOMEM) rc = MIMEO_ENOMEM;
            buf_reset(&v);
            int wrc = q->rc ? 0 : crdt_render(&s, &v);
            if (!q->rc && !wrc && q->rules) {
                bool match = false;
                wrc = value_matches(q->rules, id, id_len, &v, &match);
                if (!wrc && !match) {
                    wrc = crdt_state_copy(&s, &before);
                    q->rc = fail(&q->err, MIMEO_EINVAL, "bad_request",
                                 "Not a CRDT document: no rule of _design/crdt matches its id, "
                                 "nor its value after these ops");
                }
            }
            crdt_state_destroy(&before);
            if (wrc) {
                rc = wrc;
                break;
            }
            if (q->rc) continue; /* this caller's ops are refused; the others go on */
            applied++;
            if (!wrc) {
                buf_cstr(&v);
                q->res->value = malloc(v.len + 1);
                q->res->id = malloc(id_len + 1);
                if (!q->res->value || !q->res->id) wrc = MIMEO_ENOMEM;
            }
            if (wrc) {
                rc = wrc;
                break;
            }
            memcpy(q->res->value, v.data, v.len + 1);
            q->res->value_len = v.len;
            memcpy(q->res->id, id, id_len);
            q->res->id[id_len] = 0;
        }
        if (!rc && applied) rc = write_state(db, id, id_len, &L, &s, rev, &e);
        bool retry = rc == MIMEO_ECONFLICT && !(L.n && !L.live[0].valid);
        leaves_destroy(&L);
        crdt_state_destroy(&s);
        if (retry) {
            backoff(attempt);
            rc = MIMEO_ECONFLICT;
            e = (mimeo_err){0};
            db_err_set(&e, rc, "conflict", "Too many concurrent writers; try again");
            if (attempt + 1 < CRDT_ATTEMPTS) continue;
        }
        if (rc) {
            for (size_t i = 0; i < n; i++) {
                if (group[i]->rc && group[i]->rc != MIMEO_ENOMEM) continue;
                group[i]->rc = rc;
                if (!e.error[0]) db_err(&e, rc);
                group[i]->err = e;
            }
        }
        break;
    }
    for (size_t i = 0; i < n; i++) {
        apply_req *q = group[i];
        if (q->rc) {
            mimeo_crdt_result_destroy(q->res);
            continue;
        }
        memcpy(q->res->rev, rev, sizeof rev);
        atomic_fetch_add(&stat_ops, q->ops->count);
    }
    buf_destroy(&v);
}

/* Writes the group of the first queued request of stripe qi. Called with the queue's lock
 * held and busy set; returns the same way. One group per turn: a caller whose ops are written
 * leaves, and a waiting caller takes the next turn. */
static void apply_turn(apply_queue *aq, int qi) {
    if (aq->head) {
        apply_req *first = aq->head;
        size_t n = 0;
        for (apply_req *q = aq->head; q; q = q->next)
            if (same_doc(q, first)) n++;
        apply_req **group = malloc(n * sizeof *group);
        size_t k = 0;
        apply_req **link = &aq->head;
        while (*link) {
            apply_req *q = *link;
            if (group && same_doc(q, first)) {
                group[k++] = q;
                *link = q->next;
            } else if (!group && q == first) {
                *link = q->next;
            } else {
                link = &q->next;
            }
        }
        pthread_mutex_unlock(&aq->lock);
        if (group) {
            pthread_mutex_t *dl = &doc_locks[qi];
            pthread_mutex_lock(dl);
            apply_group(group, k);
            pthread_mutex_unlock(dl);
        } else {
            first->rc = db_err(&first->err, MIMEO_ENOMEM);
        }
        pthread_mutex_lock(&aq->lock);
        if (group) for (size_t i = 0; i < k; i++) group[i]->done = true;
        else first->done = true;
        free(group);
        pthread_cond_broadcast(&aq->cond);
    }
}

int mimeo_crdt_apply(mimeo_db *db, const char *id, size_t id_len, const char *ops_json,
                     size_t ops_len, mimeo_crdt_result *res, mimeo_err *err) {
    memset(res, 0, sizeof *res);
    int rc = db_docid_check(db->env, id, id_len, err);
    if (rc) return rc;
    if (id[0] == '_')
        return fail(err, MIMEO_EINVAL, "bad_request", "Design and local documents are not CRDT documents");
    crdt_ops ops;
    if ((rc = crdt_ops_parse(ops_json, ops_len, &db->env->limits, &ops, err))) return rc;

    crdt_rules rules;
    bool by_id = false;
    if (!(rc = rules_load(db, &rules, err))) {
        by_id = rules_match_id(&rules, id, id_len);
        if (!by_id && !rules.selectors)
            rc = fail(err, MIMEO_EINVAL, "bad_request",
                      "Not a CRDT document: no rule of _design/crdt matches its id");
    }
    if (rc) {
        rules_destroy(&rules);
        crdt_ops_destroy(&ops);
        return rc;
    }
    pthread_once(&queues_once, queues_init);
    int qi = (int)(doc_lock(db, id, id_len) - doc_locks);
    apply_queue *aq = &queues[qi];
    apply_req me = {.db = db, .id = id, .id_len = id_len, .ops = &ops, .res = res,
                    .rules = by_id ? NULL : &rules};
    pthread_mutex_lock(&aq->lock);
    apply_req **tail = &aq->head;
    while (*tail) tail = &(*tail)->next;
    *tail = &me;
    while (!me.done) {
        if (!aq->busy) {
            aq->busy = true;
            apply_turn(aq, qi);
            aq->busy = false;
            pthread_cond_broadcast(&aq->cond);
        } else {
            pthread_cond_wait(&aq->cond, &aq->lock);
        }
    }
    pthread_mutex_unlock(&aq->lock);
    crdt_ops_destroy(&ops);
    rules_destroy(&rules);
    if (me.rc) {
        if (err) *err = me.err;
        mimeo_crdt_result_destroy(res);
    }
    return me.rc;
}

/* ---- merge ---------------------------------------------------------------------------------- */

/* tidy: also rewrite a lone leaf whose body is not canonical. Without it, a lone leaf is
 * rewritten only when its plain members disagree with its state (a client scribbled on a
 * counter or a set): a client that PUTs registers gets to keep its revision as the leaf, so
 * its next PUT with the rev it was given does not conflict. */
static int merge_locked(mimeo_db *db, const crdt_rules *rules, const char *id, size_t id_len,
                        bool tidy, mimeo_crdt_outcome *outcome, char rev[MIMEO_REV_MAX],
                        mimeo_err *err);

static int merge_one(mimeo_db *db, const crdt_rules *rules, const char *id, size_t id_len,
                     bool tidy, mimeo_crdt_outcome *outcome, char rev[MIMEO_REV_MAX],
                     mimeo_err *err) {
    pthread_mutex_t *lock = doc_lock(db, id, id_len);
    pthread_mutex_lock(lock);
    int rc = merge_locked(db, rules, id, id_len, tidy, outcome, rev, err);
    pthread_mutex_unlock(lock);
    return rc;
}

static int merge_locked(mimeo_db *db, const crdt_rules *rules, const char *id, size_t id_len,
                        bool tidy, mimeo_crdt_outcome *outcome, char rev[MIMEO_REV_MAX],
                        mimeo_err *err) {
    *outcome = MIMEO_CRDT_UNCHANGED;
    rev[0] = 0;
    for (int attempt = 0; attempt < CRDT_ATTEMPTS; attempt++) {
        leaves L;
        bool covered;
        int rc = leaves_load_gated(db, id, id_len, rules, &covered, &L, err);
        if (rc) {
            leaves_destroy(&L);
            return rc;
        }
        if (!covered) {
            *outcome = MIMEO_CRDT_NOT_CRDT;
            leaves_destroy(&L);
            return 0;
        }
        if (L.n) snprintf(rev, MIMEO_REV_MAX, "%s", L.live[0].rev);
        if (L.any_invalid) {
            /* Never merge what we cannot read: the leaves stay an ordinary conflict (a lone
             * leaf that is no state is simply not merged). */
            if (L.n > 1) {
                *outcome = MIMEO_CRDT_KEPT;
                atomic_fetch_add(&stat_kept, 1);
                fprintf(stderr, "mimeo: crdt: %s/%.*s left as a conflict: %s\n",
                        mimeo_db_name(db), (int)(id_len > 200 ? 200 : id_len), id,
                        L.invalid_reason);
            }
            leaves_destroy(&L);
            return 0;
        }
        if (L.n == 0 || (L.n == 1 && (tidy ? L.live[0].canonical : L.live[0].plain_ok))) {
            leaves_destroy(&L);
            return 0;
        }
        crdt_state s;
        crdt_state_init(&s);
        rc = leaves_join(&L, &s);
        if (!rc) rc = write_state(db, id, id_len, &L, &s, rev, err);
        crdt_state_destroy(&s);
        leaves_destroy(&L);
        if (rc == MIMEO_ECONFLICT) {
            backoff(attempt);
            continue;
        }
        if (rc) return rc;
        *outcome = MIMEO_CRDT_MERGED;
        atomic_fetch_add(&stat_merges, 1);
        return 0;
    }
    return fail(err, MIMEO_ECONFLICT, "conflict", "Too many concurrent writers; try again");
}

int mimeo_crdt_merge(mimeo_db *db, const char *id, size_t id_len, mimeo_crdt_outcome *outcome,
                     char rev[MIMEO_REV_MAX], mimeo_err *err) {
    int rc = db_docid_check(db->env, id, id_len, err);
    if (rc) return rc;
    crdt_rules rules;
    if ((rc = rules_load(db, &rules, err))) return rc;
    rc = merge_one(db, &rules, id, id_len, true, outcome, rev, err);
    rules_destroy(&rules);
    return rc;
}

/* ---- the write hook's pre-check --------------------------------------------------------- */

/* Whether a stored body (a compact JSON object, as src/json writes it) may have a top-level
 * member named "$crdt". Exact on raw text: a top-level key spelt with an escape counts as a
 * "maybe" (it could spell "$crdt"), and a "maybe" only sends the document down the careful
 * path, which parses it. Stored bodies are re-emitted by src/json, which never escapes '$' (a
 * key a client sent as "\u0024crdt" is stored as a plain "$crdt"); the escape rule keeps the
 * answer sound for a body stored as the client sent it. A body with no "$crdt" text and no
 * backslash at all (nearly every plain document) is answered by two memory scans; only the
 * rest are walked byte by byte, which tells a nested key or a value "$crdt" from a member. */
static bool body_may_hold_state(const char *p, size_t n) {
    if (!memmem(p, n, "\"$crdt\"", 7) && !memchr(p, '\\', n)) return false;
    int depth = 0;
    bool key_next = false;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '"') {
            size_t j = i + 1;
            bool esc = false;
            while (j < n && p[j] != '"') {
                if (p[j] == '\\') {
                    esc = true;
                    j++;
                }
                j++;
            }
            if (j >= n) return true; /* not the JSON we wrote: let the parser say */
            if (depth == 1 && key_next &&
                (esc || (j - i - 1 == 5 && memcmp(p + i + 1, "$crdt", 5) == 0)))
                return true;
            key_next = false;
            i = j;
        } else if (c == '{' || c == '[') {
            depth++;
            key_next = depth == 1 && c == '{';
        } else if (c == '}' || c == ']') {
            depth--;
        } else if (c == ',') {
            key_next = depth == 1;
        }
    }
    return false;
}

/* Marks which written documents the write hook must read leaf by leaf. Under selector rules
 * every written document is a suspect, and nearly all are plain: a document that is missing,
 * has no live leaf, or has one live leaf whose body holds no $crdt member needs no merge
 * write whatever the rules say (that leaf reads as a map of registers showing exactly its own
 * members). That is decided here from the revision tree and the stored body, in one read
 * snapshot for the batch, without the per-document read, JSON reply and parse of the careful
 * path; a prefix rule's documents always take that path. Returns NULL (check everything)
 * when the snapshot cannot be read. */
static bool *hook_suspects(mimeo_db *db, const crdt_rules *r, const char *const *ids,
                           const size_t *id_lens, size_t count) {
    bool *check = calloc(count, sizeof *check);
    if (!check) return NULL;
    db_snap sn;
    if (db_snap_begin(db, &sn, NULL)) {
        free(check);
        return NULL;
    }
    db_doc d;
    db_doc_init(&d);
    uint32_t *idx = NULL;
    size_t idx_cap = 0;
    for (size_t i = 0; i < count; i++) {
        if (rules_match_id(r, ids[i], id_lens[i])) {
            check[i] = true;
            continue;
        }
        if (id_lens[i] == 0 || ids[i][0] == '_') continue; /* never covered */
        int rc = db_doc_load(sn.txn, sn.t, sn.m.dbid, ids[i], id_lens[i], &d);
        if (rc == MIMEO_ENOTFOUND) continue;
        if (!rc && d.tree.count > idx_cap) {
            uint32_t *g = realloc(idx, d.tree.count * sizeof *g);
            if (g) {
                idx = g;
                idx_cap = d.tree.count;
            } else {
                rc = MIMEO_ENOMEM;
            }
        }
        if (rc) {
            check[i] = true; /* the careful path meets the same error and says so */
            continue;
        }
        uint32_t n = revtree_leaves(&d.tree, idx), live = 0, last = 0;
        for (uint32_t k = 0; k < n; k++) {
            if (d.tree.nodes[idx[k]].flags & REVTREE_DELETED) continue;
            live++;
            last = idx[k];
        }
        if (live > 1) {
            check[i] = true;
        } else if (live == 1) {
            MDB_val body;
            check[i] = db_body_get(sn.txn, sn.t, sn.m.dbid, &d.tree.nodes[last], &body) != 0 ||
                       body_may_hold_state(body.mv_data, body.mv_size);
        }
    }
    free(idx);
    db_doc_destroy(&d);
    db_snap_end(&sn);
    return check;
}

int mimeo_crdt_after_write(mimeo_db *db, const char *const *ids, const size_t *id_lens,
                           size_t count) {
    if (!count) return 0;
    crdt_rules rules;
    int rc = rules_load(db, &rules, NULL);
    if (rc || !rules.list) {
        rules_destroy(&rules);
        return rc;
    }
    bool *check = rules.selectors ? hook_suspects(db, &rules, ids, id_lens, count) : NULL;
    for (size_t i = 0; !rc && i < count; i++) {
        /* the cheap tests first: without selector rules, the id alone decides */
        if (!rules.selectors && !rules_match_id(&rules, ids[i], id_lens[i])) continue;
        if (check && !check[i]) continue;
        /* a merge's own write names its id once per leaf it writes or deletes: one read */
        if (i && id_lens[i] == id_lens[i - 1] && memcmp(ids[i], ids[i - 1], id_lens[i]) == 0)
            continue;
        atomic_fetch_add(&stat_hook_reads, 1);
        mimeo_crdt_outcome o;
        char rev[MIMEO_REV_MAX];
        rc = merge_one(db, &rules, ids[i], id_lens[i], false, &o, rev, NULL);
        if (rc == MIMEO_ECONFLICT) rc = 0; /* the next write's hook merges it */
    }
    free(check);
    rules_destroy(&rules);
    return rc;
}

/* ---- merging many documents ------------------------------------------------------------------ */

typedef struct id_list {
    char  **ids;
    size_t *lens;
    size_t  n, alloc;
    const char *prefix;
    size_t  prefix_len;
} id_list;

static void id_list_destroy(id_list *l) {
    for (size_t i = 0; i < l->n; i++) free(l->ids[i]);
    free(l->ids);
    free(l->lens);
    memset(l, 0, sizeof *l);
}

static int id_list_add(id_list *l, const char *id, size_t len) {
    if (l->n == l->alloc) {
        size_t na = l->alloc ? l->alloc * 2 : 64;
        char **g = realloc(l->ids, na * sizeof *g);
        if (!g) return MIMEO_ENOMEM;
        l->ids = g;
        size_t *h = realloc(l->lens, na * sizeof *h);
        if (!h) return MIMEO_ENOMEM;
        l->lens = h;
        l->alloc = na;
    }
    char *c = malloc(len + 1);
    if (!c) return MIMEO_ENOMEM;
    memcpy(c, id, len);
    c[len] = 0;
    l->ids[l->n] = c;
    l->lens[l->n++] = len;
    return 0;
}

#define SCAN_PAST_PREFIX 1

static int scan_row(void *ctx, const char *json, size_t len) {
    id_list *l = ctx;
    jval *row = NULL;
    if (json_tree_parse(json, len, NULL, &row, NULL)) return MIMEO_EIO;
    const jval *id = jval_get(row, "id");
    int rc = 0;
    if (!id || id->type != JV_STRING) rc = MIMEO_EIO;
    else if (l->prefix && (id->len < l->prefix_len || memcmp(id->str, l->prefix, l->prefix_len)))
        rc = SCAN_PAST_PREFIX; /* ids are in byte order: the prefix's range has ended */
    else if (id->len == 0 || id->str[0] != '_')
        rc = id_list_add(l, id->str, id->len);
    jval_free(row);
    return rc;
}

/* The ids the rules can match: each prefix's range, or every id when a selector rule is
 * present (its matches are only known from the bodies). */
static int scan_ids(mimeo_db *db, const crdt_rules *rules, id_list *l, mimeo_err *err) {
    if (!rules->list) return 0;
    size_t passes = rules->selectors ? 1 : rules->list->count;
    for (size_t i = 0; i < passes; i++) {
        mimeo_all_docs_opts o;
        memset(&o, 0, sizeof o);
        o.inclusive_end = true;
        l->prefix = NULL;
        l->prefix_len = 0;
        if (!rules->selectors) {
            const jval *p = jval_get(rules->list->items[i], "prefix");
            if (!p || p->type != JV_STRING) continue;
            o.startkey = p->str;
            o.startkey_len = p->len;
            l->prefix = p->str;
            l->prefix_len = p->len;
        }
        int rc = mimeo_all_docs(db, &o, scan_row, l, err);
        if (rc == SCAN_PAST_PREFIX) rc = 0;
        if (rc) return rc;
    }
    return 0;
}

static int put_id_rev(buf *b, bool *first, const char *id, size_t len, const char *rev) {
    int rc = buf_puts(b, *first ? "{\"id\":" : ",{\"id\":");
    *first = false;
    if (!rc) rc = json_put_str(b, id, len);
    if (!rc && rev) {
        rc = buf_puts(b, ",\"rev\":");
        if (!rc) rc = json_put_cstr(b, rev);
    }
    return rc ? rc : buf_putc(b, '}');
}

int mimeo_crdt_merge_all(mimeo_db *db, const char *const *ids, const size_t *id_lens,
                         size_t count, char **json_out, size_t *out_len, mimeo_err *err) {
    *json_out = NULL;
    *out_len = 0;
    crdt_rules rules;
    int rc = rules_load(db, &rules, err);
    if (rc) return rc;
    id_list scanned = {0};
    if (!ids) {
        if ((rc = scan_ids(db, &rules, &scanned, err))) goto out;
        ids = (const char *const *)scanned.ids;
        id_lens = scanned.lens;
        count = scanned.n;
    }
    buf merged, kept, other;
    buf_init(&merged, 0);
    buf_init(&kept, 0);
    buf_init(&other, 0);
    bool fm = true, fk = true, fo = true;
    for (size_t i = 0; !rc && i < count; i++) {
        mimeo_crdt_outcome o;
        char rev[MIMEO_REV_MAX];
        mimeo_err e = {0};
        if (db_docid_check(db->env, ids[i], id_lens[i], NULL)) {
            rc = put_id_rev(&other, &fo, ids[i], id_lens[i], NULL);
            continue;
        }
        rc = merge_one(db, &rules, ids[i], id_lens[i], true, &o, rev, &e);
        if (rc == MIMEO_ECONFLICT) {
            /* someone keeps writing it: report it as not merged this time */
            rc = put_id_rev(&kept, &fk, ids[i], id_lens[i], NULL);
            continue;
        }
        if (rc) {
            if (err) *err = e;
            break;
        }
        if (o == MIMEO_CRDT_MERGED) rc = put_id_rev(&merged, &fm, ids[i], id_lens[i], rev);
        else if (o == MIMEO_CRDT_KEPT) rc = put_id_rev(&kept, &fk, ids[i], id_lens[i], NULL);
        else if (o == MIMEO_CRDT_NOT_CRDT && !scanned.ids)
            rc = put_id_rev(&other, &fo, ids[i], id_lens[i], NULL);
    }
    if (!rc) {
        buf b;
        buf_init(&b, 0);
        rc = buf_printf(&b, "{\"ok\":true,\"checked\":%zu,\"merged\":[", count);
        if (!rc) rc = buf_put(&b, merged.data ? merged.data : "", merged.len);
        if (!rc) rc = buf_puts(&b, "],\"conflicts_kept\":[");
        if (!rc) rc = buf_put(&b, kept.data ? kept.data : "", kept.len);
        if (!rc) rc = buf_puts(&b, "],\"not_crdt\":[");
        if (!rc) rc = buf_put(&b, other.data ? other.data : "", other.len);
        if (!rc) rc = buf_puts(&b, "]}");
        if (!rc) {
            buf_cstr(&b);
            *json_out = buf_detach(&b, out_len);
        }
        buf_destroy(&b);
        if (rc) rc = db_err(err, rc);
    }
    buf_destroy(&merged);
    buf_destroy(&kept);
    buf_destroy(&other);
out:
    id_list_destroy(&scanned);
    rules_destroy(&rules);
    return rc;
}
