/* Rows and cursors (mimeo.h): the fields rows carry, iteration across many slices (long skips,
 * runs of tombstones, thousands of doc_ids and keys), continuation tokens, waiting at the end
 * of a feed (and being told the database is gone), and the single-document and bulk reads. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mimeo.h"
#include "check.h"
#include "json/json.h"

static char tmpdir[256];
static mimeo_env *env;

static mimeo_db *fresh_db(const char *name) {
    mimeo_err err;
    mimeo_db_delete(env, name, &err);
    CHECK_EQ_INT(mimeo_db_create(env, name, &err), 0);
    mimeo_db *db = NULL;
    CHECK_EQ_INT(mimeo_db_open(env, name, &db, &err), 0);
    return db;
}

static int put_len(mimeo_db *db, const char *id, size_t id_len, const char *json,
                   char rev[MIMEO_REV_MAX]) {
    mimeo_put_result res;
    mimeo_err err;
    int rc = mimeo_doc_put(db, id, id_len, json, strlen(json), NULL, &res, &err);
    if (rc == 0) {
        if (rev) strcpy(rev, res.rev);
        mimeo_free(res.id);
    }
    return rc;
}

static int put(mimeo_db *db, const char *id, const char *json, char rev[MIMEO_REV_MAX]) {
    return put_len(db, id, strlen(id), json, rev);
}

/* Puts n docs "<prefix>NNNNN" in one _bulk_docs. */
static void put_many(mimeo_db *db, const char *prefix, int from, int n, bool deleted) {
    size_t cap = (size_t)n * 64 + 64;
    char *body = malloc(cap);
    size_t len = (size_t)snprintf(body, cap, "{\"docs\":[");
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(body + len, cap - len, "%s{\"_id\":\"%s%05d\"%s}", i ? "," : "",
                                prefix, from + i, deleted ? ",\"_deleted\":true" : "");
    len += (size_t)snprintf(body + len, cap - len, "]}");
    char *out = NULL;
    size_t out_len = 0;
    mimeo_err err;
    CHECK_EQ_INT(mimeo_bulk_docs(db, body, len, &out, &out_len, &err), 0);
    mimeo_free(out);
    free(body);
}

static void test_change_rows_carry_fields(void) {
    mimeo_db *db = fresh_db("rows");
    char r1[MIMEO_REV_MAX], r2[MIMEO_REV_MAX];
    CHECK_EQ_INT(put(db, "a", "{\"v\":1}", r1), 0);
    CHECK_EQ_INT(put(db, "b", "{\"v\":2}", r2), 0);
    /* A conflict on b: a replicated sibling. */
    mimeo_put_opts po = {0};
    po.new_edits_false = true;
    mimeo_put_result res;
    mimeo_err err;
    const char *sib = "{\"_id\":\"b\",\"_rev\":\"1-0000\",\"w\":9}";
    CHECK_EQ_INT(mimeo_doc_put(db, NULL, 0, sib, strlen(sib), &po, &res, &err), 0);
    mimeo_free(res.id);
    /* A deleted one. */
    mimeo_put_result dr;
    CHECK_EQ_INT(mimeo_doc_delete(db, "a", 1, r1, &dr, &err), 0);
    mimeo_free(dr.id);

    mimeo_changes_opts o = {0};
    o.include_docs = true;
    o.conflicts = true;
    mimeo_cursor *cur = NULL;
    CHECK_EQ_INT(mimeo_changes_open(db, &o, &cur, &err), 0);
    const mimeo_row *row;
    CHECK_EQ_INT(mimeo_cursor_next(cur, &row, &err), 0);
    CHECK(row != NULL);
    if (row) {
        CHECK_EQ_INT(row->id_len, 1);
        CHECK(memcmp(row->id, "b", 1) == 0);
        CHECK_EQ_INT(row->seq, 3);
        CHECK_EQ_STR(row->rev, r2);   /* "1-<md5>" wins over "1-0000" */
        CHECK(!row->deleted);
        CHECK_EQ_INT(row->leaf_count, 2);
        if (row->leaf_count == 2) {
            CHECK_EQ_STR(row->leaves[0].rev, r2);
            CHECK_EQ_STR(row->leaves[1].rev, "1-0000");
        }
        CHECK(row->body && row->body_len == 7 && memcmp(row->body, "{\"v\":2}", 7) == 0);
        CHECK(row->json == NULL);
    }
    CHECK_EQ_INT(mimeo_cursor_next(cur, &row, &err), 0);
    CHECK(row != NULL);
    if (row) {
        CHECK(memcmp(row->id, "a", 1) == 0);
        CHECK(row->deleted);
        CHECK_EQ_INT(row->seq, 4);
        CHECK(row->body && row->body_len == 2);
    }
    CHECK_EQ_INT(mimeo_cursor_next(cur, &row, &err), 0);
    CHECK(row == NULL);
    CHECK_EQ_INT(mimeo_cursor_last_seq(cur), 4);
    CHECK_EQ_INT(mimeo_cursor_pending(cur), 0);
    mimeo_cursor_close(cur);

    /* The same through the single-document read. */
    CHECK_EQ_INT(mimeo_doc_open(db, "b", 1, NULL, &cur, &err), 0);
    CHECK_EQ_INT(mimeo_cursor_next(cur, &row, &err), 0);
    CHECK(row && row->json && strstr(row->json, "\"v\":2") && strcmp(row->rev, r2) == 0);
    mimeo_cursor_close(cur);
    CHECK_EQ_INT(mimeo_doc_open(db, "a", 1, NULL, &cur, &err), MIMEO_EDELETED);
    CHECK(cur == NULL);
    mimeo_db_close(db);
}

static void test_ids_with_nul(void) {
    mimeo_db *db = fresh_db("nul");
    CHECK_EQ_INT(put_len(db, "x\0y", 3, "{}", NULL), 0);
    mimeo_changes_opts o = {0};
    mimeo_cursor *cur;
    mimeo_err err;
    const mimeo_row *row;
    CHECK_EQ_INT(mimeo_changes_open(db, &o, &cur, &err), 0);
    CHECK_EQ_INT(mimeo_cursor_next(cur, &row, &err), 0);
    CHECK(row && row->id_len == 3 && memcmp(row->id, "x\0y", 3) == 0);
    mimeo_cursor_close(cur);
    mimeo_all_docs_opts a = {0};
    a.inclusive_end = true;
    CHECK_EQ_INT(mimeo_all_docs_open(db, &a, &cur, &err), 0);
    CHECK_EQ_INT(mimeo_cursor_next(cur, &row, &err), 0);
    CHECK(row && row->id_len == 3 && memcmp(row->id, "x\0y", 3) == 0);
    mimeo_cursor_close(cur);
    mimeo_db_close(db);
}

/* Counts the rows of a cursor, checking each id is greater (or smaller) than the last. */
static size_t drain(mimeo_cursor *cur, bool descending, char first[16]) {
    size_t n = 0;
    char last[64] = "";
    const mimeo_row *row;
    mimeo_err err;
    while (mimeo_cursor_next(cur, &row, &err) == 0 && row) {
        if (row->status == 0 && n && (descending ? strcmp(row->id, last) >= 0 : strcmp(row->id, last) <= 0))
            CHECK(!"rows out of order");
        snprintf(last, sizeof last, "%s", row->id);
        if (n == 0 && first) snprintf(first, 16, "%s", row->id);
        n++;
    }
    return n;
}

static void test_long_scans_in_slices(void) {
    mimeo_db *db = fresh_db("long");
    /* A run of tombstones longer than a slice's scan bound, then live rows. */
    put_many(db, "a", 0, 3000, true);
    put_many(db, "b", 0, 700, false);
    mimeo_err err;
    mimeo_cursor *cur;
    char first[16] = "";

    mimeo_all_docs_opts a = {0};
    a.inclusive_end = true;
    CHECK_EQ_INT(mimeo_all_docs_open(db, &a, &cur, &err), 0);
    CHECK_EQ_INT(drain(cur, false, first), 700);
    CHECK_EQ_STR(first, "b00000");
    mimeo_cursor_close(cur);

    a.skip = 650;
    CHECK_EQ_INT(mimeo_all_docs_open(db, &a, &cur, &err), 0);
    CHECK_EQ_INT(drain(cur, false, first), 50);
    CHECK_EQ_STR(first, "b00650");
    mimeo_cursor_close(cur);

    a.skip = 0;
    a.descending = true;
    a.limit = 10;
    CHECK_EQ_INT(mimeo_all_docs_open(db, &a, &cur, &err), 0);
    CHECK_EQ_INT(drain(cur, true, first), 10);
    CHECK_EQ_STR(first, "b00699");
    mimeo_cursor_close(cur);

    /* doc_ids naming more documents than one slice looks up. */
    size_t nids = 2500;
    char (*ids)[8] = malloc(nids * sizeof *ids);
    const char **idv = malloc(nids * sizeof *idv);
    size_t *idl = malloc(nids * sizeof *idl);
    for (size_t i = 0; i < nids; i++) {
        snprintf(ids[i], sizeof ids[i], "%c%05zu", i % 2 ? 'a' : 'b', i / 2);
        idv[i] = ids[i];
        idl[i] = 6;
    }
    mimeo_changes_opts o = {0};
    o.doc_ids = idv;
    o.doc_id_lens = idl;
    o.doc_id_count = nids;
    CHECK_EQ_INT(mimeo_changes_open(db, &o, &cur, &err), 0);
    size_t n = 0;
    uint64_t prev = 0;
    const mimeo_row *row;
    while (mimeo_cursor_next(cur, &row, &err) == 0 && row) {
        CHECK(row->seq > prev);
        prev = row->seq;
        n++;
    }
    CHECK_EQ_INT(n, 1250 + 700);   /* every named tombstone a, the 700 live b */
    CHECK_EQ_INT(mimeo_cursor_last_seq(cur), 3700);
    mimeo_cursor_close(cur);

    o.descending = true;
    CHECK_EQ_INT(mimeo_changes_open(db, &o, &cur, &err), 0);
    n = 0;
    prev = UINT64_MAX;
    while (mimeo_cursor_next(cur, &row, &err) == 0 && row) {
        CHECK(row->seq < prev);
        prev = row->seq;
        n++;
    }
    CHECK_EQ_INT(n, 1950);
    mimeo_cursor_close(cur);
    free(ids);
    free(idv);
    free(idl);
    mimeo_db_close(db);
}

static void test_keys_descending_whole_list(void) {
    mimeo_db *db = fresh_db("keys");
    put_many(db, "k", 0, 600, false);
    size_t nkeys = 900;
    char (*keys)[8] = malloc(nkeys * sizeof *keys);
    const char **kv = malloc(nkeys * sizeof *kv);
    size_t *kl = malloc(nkeys * sizeof *kl);
    for (size_t i = 0; i < nkeys; i++) {
        snprintf(keys[i], sizeof keys[i], "k%05zu", i);
        kv[i] = keys[i];
        kl[i] = 6;
    }
    mimeo_all_docs_opts a = {0};
    a.keys = kv;
    a.key_lens = kl;
    a.key_count = nkeys;
    a.descending = true;
    mimeo_cursor *cur;
    mimeo_err err;
    CHECK_EQ_INT(mimeo_all_docs_open(db, &a, &cur, &err), 0);
    const mimeo_row *row;
    size_t i = 0, missing = 0;
    while (mimeo_cursor_next(cur, &row, &err) == 0 && row) {
        CHECK_EQ_STR(row->id, keys[nkeys - 1 - i]);
        if (row->status == MIMEO_ENOTFOUND) missing++;
        i++;
    }
    CHECK_EQ_INT(i, nkeys);
    CHECK_EQ_INT(missing, 300);
    mimeo_cursor_close(cur);
    free(keys);
    free(kv);
    free(kl);
    mimeo_db_close(db);
}

static void test_tokens_resume(void) {
    mimeo_db *db = fresh_db("tokens");
    put_many(db, "t", 0, 40, false);
    mimeo_err err;
    mimeo_cursor *cur;
    const mimeo_row *row;
    mimeo_all_docs_opts a = {0};
    a.inclusive_end = true;
    a.limit = 15;
    CHECK_EQ_INT(mimeo_all_docs_open(db, &a, &cur, &err), 0);
    for (int i = 0; i < 15; i++) CHECK_EQ_INT(mimeo_cursor_next(cur, &row, &err), 0);
    char *tok = NULL;
    size_t tl;
    CHECK_EQ_INT(mimeo_cursor_token(cur, &tok, &tl), 0);
    mimeo_cursor_close(cur);
    CHECK(tok && tl == strlen(tok));
    a.resume = tok;
    CHECK_EQ_INT(mimeo_all_docs_open(db, &a, &cur, &err), 0);
    CHECK_EQ_INT(mimeo_cursor_next(cur, &row, &err), 0);
    CHECK(row && strcmp(row->id, "t00015") == 0);
    mimeo_cursor_close(cur);
    mimeo_free(tok);

    mimeo_changes_opts o = {0};
    o.limit = 10;
    CHECK_EQ_INT(mimeo_changes_open(db, &o, &cur, &err), 0);
    while (mimeo_cursor_next(cur, &row, &err) == 0 && row) {}
    CHECK_EQ_INT(mimeo_cursor_token(cur, &tok, &tl), 0);
    mimeo_cursor_close(cur);
    o.resume = tok;
    CHECK_EQ_INT(mimeo_changes_open(db, &o, &cur, &err), 0);
    CHECK_EQ_INT(mimeo_cursor_next(cur, &row, &err), 0);
    CHECK(row && row->seq == 11);
    mimeo_cursor_close(cur);
    mimeo_free(tok);

    o.resume = "garbage";
    CHECK_EQ_INT(mimeo_changes_open(db, &o, &cur, &err), MIMEO_EINVAL);
    mimeo_db_close(db);
}

typedef struct later {
    const char *name;
    bool        drop;
} later;

static void *write_later(void *arg) {
    later *l = arg;
    usleep(200 * 1000);
    mimeo_err err;
    if (l->drop) {
        mimeo_db_delete(env, l->name, &err);
    } else {
        mimeo_db *db;
        if (mimeo_db_open(env, l->name, &db, &err) == 0) {
            put(db, "late", "{}", NULL);
            mimeo_db_close(db);
        }
    }
    return NULL;
}

static void test_wait_at_the_end(void) {
    mimeo_db *db = fresh_db("wait");
    put(db, "first", "{}", NULL);
    mimeo_err err;
    mimeo_cursor *cur;
    const mimeo_row *row;
    mimeo_changes_opts o = {0};
    CHECK_EQ_INT(mimeo_changes_open(db, &o, &cur, &err), 0);
    CHECK_EQ_INT(mimeo_cursor_next(cur, &row, &err), 0);
    CHECK_EQ_INT(mimeo_cursor_next(cur, &row, &err), 0);
    CHECK(row == NULL);
    CHECK_EQ_INT(mimeo_cursor_wait(cur, 50), 0);

    later l = {"wait", false};
    pthread_t th;
    pthread_create(&th, NULL, write_later, &l);
    CHECK_EQ_INT(mimeo_cursor_wait(cur, 10000), 1);
    pthread_join(th, NULL);
    CHECK_EQ_INT(mimeo_cursor_next(cur, &row, &err), 0);
    CHECK(row && strcmp(row->id, "late") == 0);

    /* Deleted while waiting: told at once, not at the timeout. */
    l.drop = true;
    CHECK_EQ_INT(mimeo_cursor_next(cur, &row, &err), 0);
    CHECK(row == NULL);
    pthread_create(&th, NULL, write_later, &l);
    uint64_t t0 = check_now_ms();
    CHECK_EQ_INT(mimeo_cursor_wait(cur, 10000), MIMEO_ENOTFOUND);
    CHECK(check_now_ms() - t0 < 5000);
    pthread_join(th, NULL);
    CHECK_EQ_INT(mimeo_cursor_wait(cur, 10000), MIMEO_ENOTFOUND);
    mimeo_cursor_close(cur);
    mimeo_db_close(db);
}

/* A cursor at its end frees its slice while it waits (idle feeds keep none); each write
 * after that is read again from its place, with the body and leaves asked for. */
static void test_wait_releases_the_slice(void) {
    mimeo_db *db = fresh_db("idle");
    put(db, "a", "{\"v\":0}", NULL);
    mimeo_err err;
    mimeo_cursor *cur;
    const mimeo_row *row;
    mimeo_changes_opts o = {0};
    o.include_docs = true;
    o.all_docs_style = true;
    CHECK_EQ_INT(mimeo_changes_open(db, &o, &cur, &err), 0);
    CHECK_EQ_INT(mimeo_cursor_next(cur, &row, &err), 0);
    CHECK(row && strcmp(row->id, "a") == 0 && row->body && row->leaf_count == 1);
    CHECK_EQ_INT(mimeo_cursor_next(cur, &row, &err), 0);
    CHECK(row == NULL);
    for (int i = 1; i <= 3; i++) {
        CHECK_EQ_INT(mimeo_cursor_wait(cur, 0), 0);
        CHECK_EQ_INT(mimeo_cursor_wait(cur, 0), 0);   /* released twice: harmless */
        char id[16], body[32];
        snprintf(id, sizeof id, "w%d", i);
        snprintf(body, sizeof body, "{\"v\":%d}", i);
        CHECK_EQ_INT(put(db, id, body, NULL), 0);
        CHECK_EQ_INT(mimeo_cursor_wait(cur, 0), 1);
        CHECK_EQ_INT(mimeo_cursor_next(cur, &row, &err), 0);
        CHECK(row && strcmp(row->id, id) == 0 && row->seq == (uint64_t)i + 1);
        CHECK(row && row->body && strstr(row->body, body + 1) && row->leaf_count == 1);
        CHECK_EQ_INT(mimeo_cursor_next(cur, &row, &err), 0);
        CHECK(row == NULL);
        CHECK_EQ_INT(mimeo_cursor_last_seq(cur), (uint64_t)i + 1);
    }
    mimeo_cursor_close(cur);
    mimeo_db_close(db);
}

static void test_open_revs_bulk_get_revs_diff(void) {
    mimeo_db *db = fresh_db("bulk");
    char r1[MIMEO_REV_MAX], r2[MIMEO_REV_MAX], r3[MIMEO_REV_MAX];
    char body[160];
    CHECK_EQ_INT(put(db, "d", "{\"v\":1}", r1), 0);
    snprintf(body, sizeof body, "{\"_rev\":\"%s\",\"v\":2}", r1);
    CHECK_EQ_INT(put(db, "d", body, r2), 0);
    snprintf(body, sizeof body, "{\"_rev\":\"%s\",\"v\":3}", r2);
    CHECK_EQ_INT(put(db, "d", body, r3), 0);
    mimeo_err err;
    mimeo_cursor *cur;
    const mimeo_row *row;
    mimeo_get_opts go = {0};
    go.latest = true;
    char revs[400];
    snprintf(revs, sizeof revs, "[\"%s\",\"%s\",\"%s\",\"9-zz\"]", r1, r2, r3);
    CHECK_EQ_INT(mimeo_open_revs_open(db, "d", 1, revs, strlen(revs), &go, &cur, &err), 0);
    int ok = 0, missing = 0;
    while (mimeo_cursor_next(cur, &row, &err) == 0 && row) {
        if (row->status == 0) {
            ok++;
            CHECK_EQ_STR(row->rev, r3);
            CHECK(row->json && strstr(row->json, "\"v\":3"));
        } else {
            missing++;
            CHECK_EQ_STR(row->rev, "9-zz");
        }
    }
    CHECK_EQ_INT(ok, 1);
    CHECK_EQ_INT(missing, 1);
    mimeo_cursor_close(cur);

    /* _bulk_get naming the same document many times: one row per entry, across slices. */
    size_t n = 300, cap = n * 16 + 32, len;
    char *req = malloc(cap);
    len = (size_t)snprintf(req, cap, "{\"docs\":[");
    for (size_t i = 0; i < n; i++) len += (size_t)snprintf(req + len, cap - len, "%s{\"id\":\"d\"}", i ? "," : "");
    len += (size_t)snprintf(req + len, cap - len, "]}");
    CHECK_EQ_INT(mimeo_bulk_get_open(db, req, len, NULL, &cur, &err), 0);
    size_t rows = 0;
    while (mimeo_cursor_next(cur, &row, &err) == 0 && row) {
        CHECK(row->json && strncmp(row->json, "{\"id\":\"d\",\"docs\":[{\"ok\":", 24) == 0);
        rows++;
    }
    CHECK_EQ_INT(rows, n);
    mimeo_cursor_close(cur);
    free(req);

    char diff[300];
    snprintf(diff, sizeof diff, "{\"d\":[\"%s\",\"4-aa\"],\"e\":[\"1-bb\"]}", r3);
    CHECK_EQ_INT(mimeo_revs_diff_open(db, diff, strlen(diff), &cur, &err), 0);
    rows = 0;
    while (mimeo_cursor_next(cur, &row, &err) == 0 && row) {
        if (rows == 0) CHECK(strncmp(row->json, "\"d\":{\"missing\":[\"4-aa\"],\"possible_ancestors\":[", 46) == 0);
        else CHECK_EQ_STR(row->json, "\"e\":{\"missing\":[\"1-bb\"]}");
        /* the missing revisions also come as the row's leaves, NUL-terminated */
        CHECK_EQ_INT(row->leaf_count, 1);
        if (row->leaf_count == 1) {
            CHECK_EQ_STR(row->leaves[0].rev, rows == 0 ? "4-aa" : "1-bb");
            CHECK_EQ_INT(row->leaves[0].rev_len, 4);
        }
        rows++;
    }
    CHECK_EQ_INT(rows, 2);
    mimeo_cursor_close(cur);
    const char *bad = "{\"d\":[\"nope\"]}";
    CHECK_EQ_INT(mimeo_revs_diff_open(db, bad, strlen(bad), &cur, &err), MIMEO_EBADREV);
    mimeo_db_close(db);
}

/* The row's follows descriptors say what its JSON's "follows":true attachments say. */
static void check_follows(const mimeo_row *row, size_t want) {
    CHECK_EQ_INT(row->follow_count, want);
    jval *doc = NULL;
    CHECK_EQ_INT(json_tree_parse(row->json, row->json_len, NULL, &doc, NULL), 0);
    const jval *atts = jval_get(doc, "_attachments");
    size_t k = 0;
    for (size_t i = 0; atts && i < atts->count; i++) {
        const jval *a = atts->items[i];
        const jval *f = jval_get(a, "follows");
        if (!f || !f->boolean) continue;
        CHECK(k < row->follow_count);
        if (k >= row->follow_count) break;
        const mimeo_att_follow *d = &row->follows[k++];
        CHECK_EQ_INT(d->name_len, atts->key_lens[i]);
        CHECK(memcmp(d->name, atts->keys[i], d->name_len) == 0 && d->name[d->name_len] == 0);
        const jval *ct = jval_get(a, "content_type"), *enc = jval_get(a, "encoding");
        CHECK_EQ_STR(d->content_type, ct ? ct->str : "");
        CHECK_EQ_INT(d->content_type_len, ct ? ct->len : 0);
        int64_t len = -1, enc_len = -1;
        CHECK(jval_as_i64(jval_get(a, "length"), &len) && (uint64_t)len == d->length);
        CHECK_EQ_INT(d->gzip, enc != NULL && strcmp(enc->str, "gzip") == 0);
        if (d->gzip)
            CHECK(jval_as_i64(jval_get(a, "encoded_length"), &enc_len) &&
                  (uint64_t)enc_len == d->encoded_length);
        else
            CHECK_EQ_INT(d->encoded_length, d->length);
    }
    CHECK_EQ_INT(k, want);
    jval_free(doc);
}

static void test_follows_descriptors(void) {
    mimeo_db *db = fresh_db("follows");
    char r1[MIMEO_REV_MAX], r2[MIMEO_REV_MAX], body[1024];
    /* a plain one, a text one stored gzip, a name with a NUL and a quote */
    /* 400 'x' in base64: 'eHh4' repeated 133 times, then 'eA==' */
    char b64[540] = "";
    for (int i = 0; i < 133; i++) strcat(b64, "eHh4");
    strcat(b64, "eA==");
    snprintf(body, sizeof body, "{\"v\":1,\"_attachments\":{\"a.bin\":{\"data\":\"YWJj\"},"
             "\"t.txt\":{\"content_type\":\"text/plain\",\"data\":\"%s\"}}}", b64);
    CHECK_EQ_INT(put(db, "d", body, r1), 0);
    snprintf(body, sizeof body, "{\"_rev\":\"%s\",\"_attachments\":{\"a.bin\":{\"stub\":true},"
             "\"t.txt\":{\"stub\":true},\"n\\u0000\\\"q\":{\"content_type\":\"image/png\","
             "\"data\":\"AAEC\"}}}", r1);
    CHECK_EQ_INT(put(db, "d", body, r2), 0);
    mimeo_err err;
    mimeo_cursor *cur;
    const mimeo_row *row;

    mimeo_get_opts go = {.attachments = true, .att_follows = true};
    uint64_t before = json_parse_calls;
    CHECK_EQ_INT(mimeo_doc_open(db, "d", 1, &go, &cur, &err), 0);
    CHECK_EQ_INT(mimeo_cursor_next(cur, &row, &err), 0);
    /* the descriptors cost no parse of the row */
    CHECK_EQ_INT(json_parse_calls - before, 0);
    CHECK(row != NULL);
    if (row) {
        check_follows(row, 3);
        if (row->follow_count == 3) {
            bool seen_gzip = false, seen_nul = false;
            for (size_t i = 0; i < 3; i++) {
                const mimeo_att_follow *f = &row->follows[i];
                if (strcmp(f->name, "t.txt") == 0) {
                    CHECK_EQ_INT(f->length, 400);
                    CHECK(f->gzip && f->encoded_length < 400);
                    seen_gzip = f->gzip;
                }
                if (f->name_len == 4 && memcmp(f->name, "n\0\"q", 4) == 0) {
                    seen_nul = true;
                    CHECK_EQ_STR(f->content_type, "image/png");
                    CHECK_EQ_INT(f->length, 3);
                }
            }
            CHECK(seen_gzip);
            CHECK(seen_nul);
        }
    }
    mimeo_cursor_close(cur);

    /* atts_since: only what changed after r1 follows; the rest are stubs */
    const char *since[] = {r1};
    mimeo_get_opts gs = {.attachments = true, .att_follows = true, .atts_since = since,
                         .atts_since_count = 1};
    CHECK_EQ_INT(mimeo_doc_open(db, "d", 1, &gs, &cur, &err), 0);
    CHECK_EQ_INT(mimeo_cursor_next(cur, &row, &err), 0);
    if (row) {
        check_follows(row, 1);
        if (row->follow_count == 1) CHECK_EQ_INT(row->follows[0].name_len, 4);
    }
    mimeo_cursor_close(cur);

    /* open_revs: each revision's row has its own descriptors, across the rows */
    char revs[200];
    snprintf(revs, sizeof revs, "[\"%s\",\"%s\"]", r1, r2);
    CHECK_EQ_INT(mimeo_open_revs_open(db, "d", 1, revs, strlen(revs), &go, &cur, &err), 0);
    size_t rows = 0;
    while (mimeo_cursor_next(cur, &row, &err) == 0 && row) {
        CHECK_EQ_INT(row->status, 0);
        check_follows(row, strcmp(row->rev, r1) == 0 ? 2 : 3);
        rows++;
    }
    CHECK_EQ_INT(rows, 2);
    mimeo_cursor_close(cur);

    /* without att_follows: none */
    mimeo_get_opts plain = {.attachments = true};
    CHECK_EQ_INT(mimeo_doc_open(db, "d", 1, &plain, &cur, &err), 0);
    CHECK_EQ_INT(mimeo_cursor_next(cur, &row, &err), 0);
    if (row) {
        CHECK_EQ_INT(row->follow_count, 0);
        CHECK(row->follows == NULL);
    }
    mimeo_cursor_close(cur);
    mimeo_db_close(db);
}

typedef struct entries {
    int  n, failed;
    char text[512];
} entries;

static int entry_seen(void *ctx, const mimeo_bulk_entry *e) {
    entries *x = ctx;
    size_t at = strlen(x->text);
    snprintf(x->text + at, sizeof x->text - at, "%s%.*s:%s", x->n ? "," : "", (int)e->id_len,
             e->id, e->code ? e->error : (e->rev ? "ok" : "norev"));
    x->n++;
    if (e->code) x->failed++;
    return 0;
}

/* _bulk_docs results as entries (what a member's _bulk_docs builds its reply from): the
 * request is the only text parsed. */
static void test_bulk_entries_parse_once(void) {
    mimeo_db *db = fresh_db("entries");
    char r1[MIMEO_REV_MAX];
    CHECK_EQ_INT(put(db, "b", "{}", r1), 0);
    const char *req = "{\"docs\":[{\"_id\":\"a\"},{\"_id\":\"b\"},{\"_id\":\"c\",\"v\":1}]}";
    entries x = {0};
    mimeo_bulk_docs_opts o = {.entry_fn = entry_seen, .entry_ctx = &x};
    char *out = NULL;
    size_t len = 0;
    mimeo_err err;
    uint64_t before = json_parse_calls;
    CHECK_EQ_INT(mimeo_bulk_docs_as(db, req, strlen(req), &o, &out, &len, &err), 0);
    CHECK_EQ_INT(json_parse_calls - before, 1);
    CHECK(out == NULL);
    CHECK_EQ_INT(x.n, 3);
    CHECK_EQ_INT(x.failed, 1);
    CHECK_EQ_STR(x.text, "a:ok,b:conflict,c:ok");
    mimeo_db_close(db);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/mimeo-test-rows-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    mimeo_err err;
    if (mimeo_env_open(tmpdir, NULL, &env, &err) != 0) {
        fprintf(stderr, "env open: %s\n", err.reason);
        return 1;
    }
    RUN(test_change_rows_carry_fields);
    RUN(test_ids_with_nul);
    RUN(test_long_scans_in_slices);
    RUN(test_keys_descending_whole_list);
    RUN(test_tokens_resume);
    RUN(test_wait_at_the_end);
    RUN(test_wait_releases_the_slice);
    RUN(test_open_revs_bulk_get_revs_diff);
    RUN(test_follows_descriptors);
    RUN(test_bulk_entries_parse_once);
    mimeo_env_close(env);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return check_report();
}
