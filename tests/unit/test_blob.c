/* Attachments in the library: inline data stored as blobs and read back as stubs and data,
 * stubs keeping the parent's attachment, missing_stub, gzip for text types, blobs shared
 * by content and released by compaction and database deletion, chunked uploads (big,
 * discarded, cut by a "crash"), the chunked reader with seek, and atts_since. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nettle/base64.h>
#include <nettle/md5.h>

#include "check.h"
#include "mimeo.h"

static char tmpdir[256];
static mimeo_env *env;
static mimeo_db *db;

static void open_env(void) {
    mimeo_err e;
    CHECK_EQ_INT(mimeo_env_open(tmpdir, NULL, &env, &e), 0);
}

static void setup(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/mimeo-test-blob-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        exit(1);
    }
    open_env();
    mimeo_err e;
    CHECK_EQ_INT(mimeo_db_create(env, "db", &e), 0);
    CHECK_EQ_INT(mimeo_db_open(env, "db", &db, &e), 0);
}

static void teardown(void) {
    mimeo_db_close(db);
    mimeo_env_close(env);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
}

static mimeo_blob_stats stats(void) {
    mimeo_blob_stats s;
    CHECK_EQ_INT(mimeo_blob_stats_get(env, &s), 0);
    return s;
}

static int put(const char *id, const char *json, char rev[MIMEO_REV_MAX], mimeo_err *e) {
    mimeo_put_result res;
    int rc = mimeo_doc_put(db, id, strlen(id), json, strlen(json), NULL, &res, e);
    if (!rc) {
        if (rev) memcpy(rev, res.rev, MIMEO_REV_MAX);
        mimeo_free(res.id);
    }
    return rc;
}

static char *get(const char *id, const mimeo_get_opts *o) {
    char *out = NULL;
    size_t n;
    mimeo_err e;
    if (mimeo_doc_get(db, id, strlen(id), o, &out, &n, &e) != 0) return NULL;
    return out;
}

static void md5_text(const void *p, size_t n, char out[32]) {
    struct md5_ctx c;
    unsigned char d[16];
    md5_init(&c);
    md5_update(&c, n, p);
    md5_digest(&c, 16, d);
    struct base64_encode_ctx b;
    base64_encode_init(&b);
    memcpy(out, "md5-", 4);
    size_t k = base64_encode_update(&b, out + 4, 16, d);
    k += base64_encode_final(&b, out + 4 + k);
    out[4 + k] = 0;
}

/* Reads a whole attachment through the reader. */
static unsigned char *read_att(const char *id, const char *rev, const char *name, bool decode,
                               size_t *len, mimeo_att_info *info) {
    mimeo_att_reader *r;
    mimeo_err e;
    if (mimeo_att_open(db, id, strlen(id), rev, name, strlen(name), decode, &r, info, &e))
        return NULL;
    size_t cap = 1 << 16, n = 0;
    unsigned char *out = malloc(cap);
    for (;;) {
        if (n + 4096 > cap) out = realloc(out, cap *= 2);
        size_t got;
        if (mimeo_att_read(r, out + n, 4096, &got) != 0) {
            free(out);
            out = NULL;
            break;
        }
        if (got == 0) break;
        n += got;
    }
    mimeo_att_close(r);
    *len = n;
    return out;
}

static void test_inline_stub_and_data(void) {
    setup();
    char rev1[MIMEO_REV_MAX], rev2[MIMEO_REV_MAX];
    mimeo_err e;
    /* "hello world", binary type: stored as it is, CouchDB's digest of the bytes. */
    CHECK_EQ_INT(put("a", "{\"x\":1,\"_attachments\":{\"f.bin\":{\"content_type\":"
                          "\"application/octet-stream\",\"data\":\"aGVsbG8gd29ybGQ=\"}}}",
                     rev1, &e), 0);
    char *doc = get("a", NULL);
    CHECK(doc && strstr(doc, "\"x\":1,\"_attachments\":{\"f.bin\":{\"content_type\":"
                             "\"application/octet-stream\",\"revpos\":1,\"digest\":"
                             "\"md5-XrY7u+Ae7tCTyyK7j1rNww==\",\"length\":11,\"stub\":true}}"));
    mimeo_free(doc);
    mimeo_get_opts o = {.attachments = true};
    doc = get("a", &o);
    CHECK(doc && strstr(doc, "\"data\":\"aGVsbG8gd29ybGQ=\""));
    mimeo_free(doc);
    /* A stub keeps it; the new revision's body changes. */
    char body[256];
    snprintf(body, sizeof body, "{\"_rev\":\"%s\",\"x\":2,\"_attachments\":{\"f.bin\":{\"stub\":true}}}", rev1);
    CHECK_EQ_INT(put("a", body, rev2, &e), 0);
    size_t n;
    mimeo_att_info info;
    unsigned char *bytes = read_att("a", NULL, "f.bin", true, &n, &info);
    CHECK(bytes && n == 11 && memcmp(bytes, "hello world", 11) == 0);
    CHECK_EQ_INT(info.revpos, 1);
    CHECK_EQ_STR(info.rev, rev2);
    free(bytes);
    CHECK_EQ_INT(stats().blobs, 1);
    /* A stub the parent lacks. */
    snprintf(body, sizeof body, "{\"_rev\":\"%s\",\"_attachments\":{\"nope\":{\"stub\":true}}}", rev2);
    CHECK_EQ_INT(put("a", body, NULL, &e), MIMEO_EPRECONDITION);
    CHECK_EQ_STR(e.error, "missing_stub");
    CHECK_EQ_INT(put("b", "{\"_attachments\":{\"x\":{\"stub\":true}}}", NULL, &e), MIMEO_EPRECONDITION);
    /* Bad names and _local docs. */
    CHECK_EQ_INT(put("c", "{\"_attachments\":{\"_x\":{\"data\":\"\"}}}", NULL, &e), MIMEO_EINVAL);
    CHECK_EQ_INT(put("_local/c", "{\"_attachments\":{\"x\":{\"data\":\"\"}}}", NULL, &e), MIMEO_EINVAL);
    CHECK_EQ_INT(put("c", "{\"_attachments\":{\"x\":{\"data\":\"!!notbase64\"}}}", NULL, &e), MIMEO_EINVAL);
    /* Omitting _attachments drops them; the old revisions still hold the blob until
     * compaction. */
    char rev3[MIMEO_REV_MAX];
    snprintf(body, sizeof body, "{\"_rev\":\"%s\",\"x\":3}", rev2);
    CHECK_EQ_INT(put("a", body, rev3, &e), 0);
    CHECK_EQ_INT(stats().blobs, 1);
    CHECK_EQ_INT(mimeo_db_compact(db, &e), 0);
    CHECK_EQ_INT(stats().blobs, 0);
    CHECK_EQ_INT(stats().bytes, 0);
    teardown();
}

static void test_gzip_text(void) {
    setup();
    mimeo_err e;
    char text[4096], b64[6000], json[7000];
    for (size_t i = 0; i < sizeof text; i++) text[i] = "abcabcabd\n"[i % 10];
    struct base64_encode_ctx c;
    base64_encode_init(&c);
    size_t k = base64_encode_update(&c, b64, sizeof text, (const uint8_t *)text);
    k += base64_encode_final(&c, b64 + k);
    b64[k] = 0;
    snprintf(json, sizeof json, "{\"_attachments\":{\"t.txt\":{\"content_type\":\"text/plain\","
                                "\"data\":\"%s\"}}}", b64);
    CHECK_EQ_INT(put("t", json, NULL, &e), 0);
    size_t n;
    mimeo_att_info info;
    unsigned char *raw = read_att("t", NULL, "t.txt", false, &n, &info);
    CHECK(info.gzip);
    CHECK_EQ_INT(info.length, sizeof text);
    CHECK(info.encoded_length < 200);
    CHECK(raw && n == info.encoded_length && raw[0] == 0x1f && raw[1] == 0x8b);
    char d[32];
    if (raw) md5_text(raw, n, d);
    CHECK_EQ_STR(info.digest, d);     /* the digest of the stored (gzip) bytes */
    free(raw);
    unsigned char *plain = read_att("t", NULL, "t.txt", true, &n, NULL);
    CHECK(plain && n == sizeof text && memcmp(plain, text, n) == 0);
    free(plain);
    mimeo_get_opts o = {.att_encoding_info = true};
    char *doc = get("t", &o);
    CHECK(doc && strstr(doc, "\"length\":4096,\"stub\":true,\"encoding\":\"gzip\",\"encoded_length\":"));
    mimeo_free(doc);
    mimeo_get_opts od = {.attachments = true};
    doc = get("t", &od);
    CHECK(doc && strstr(doc, b64));   /* inline data is the decoded content */
    mimeo_free(doc);
    teardown();
}

/* A chunked upload of several chunks, shared by content across docs and databases,
 * read back in pieces with seek. */
static void test_big_blob_dedupe(void) {
    setup();
    mimeo_err e;
    size_t size = (5u << 20) + 12345;
    unsigned char *data = malloc(size);
    for (size_t i = 0; i < size; i++) data[i] = (unsigned char)(i * 2654435761u >> 13);
    CHECK_EQ_INT(mimeo_db_create(env, "other", &e), 0);
    mimeo_db *other;
    CHECK_EQ_INT(mimeo_db_open(env, "other", &other, &e), 0);
    for (int d = 0; d < 4; d++) {
        mimeo_blob *b;
        CHECK_EQ_INT(mimeo_blob_new(env, NULL, &b), 0);
        for (size_t off = 0; off < size; off += 100000)
            CHECK_EQ_INT(mimeo_blob_write(b, data + off, size - off < 100000 ? size - off : 100000), 0);
        CHECK_EQ_INT(mimeo_blob_finish(b), 0);
        if (d == 0) CHECK(stats().pending == 1);
        char id[16];
        snprintf(id, sizeof id, "d%d", d);
        mimeo_put_result res;
        CHECK_EQ_INT(mimeo_att_put(d == 3 ? other : db, id, strlen(id), "dir/big.bin", 11, NULL,
                                   "application/octet-stream", b, NULL, &res, &e), 0);
        mimeo_free(res.id);
        mimeo_blob_free(b);
        CHECK_EQ_INT(stats().pending, 0);
    }
    mimeo_blob_stats s = stats();
    CHECK_EQ_INT(s.blobs, 1);
    CHECK_EQ_INT(s.bytes, size);
    mimeo_att_reader *r;
    mimeo_att_info info;
    CHECK_EQ_INT(mimeo_att_open(db, "d1", 2, NULL, "dir/big.bin", 11, false, &r, &info, &e), 0);
    CHECK_EQ_INT(info.length, size);
    unsigned char piece[1000];
    size_t got;
    CHECK_EQ_INT(mimeo_att_seek(r, 2000000), 0);
    CHECK_EQ_INT(mimeo_att_read(r, piece, sizeof piece, &got), 0);
    CHECK(got == sizeof piece && memcmp(piece, data + 2000000, got) == 0);
    mimeo_att_close(r);
    size_t n;
    unsigned char *all = read_att("d2", NULL, "dir/big.bin", true, &n, NULL);
    CHECK(all && n == size && memcmp(all, data, size) == 0);
    free(all);
    /* Deleting one database keeps the blob for the others; deleting the attachment from
     * every doc and compacting frees it. */
    mimeo_db_close(other);
    CHECK_EQ_INT(mimeo_db_delete(env, "other", &e), 0);
    CHECK_EQ_INT(stats().blobs, 1);
    for (int d = 0; d < 3; d++) {
        char id[16];
        snprintf(id, sizeof id, "d%d", d);
        mimeo_att_info ai;
        mimeo_att_reader *rr;
        CHECK_EQ_INT(mimeo_att_open(db, id, 2, NULL, "dir/big.bin", 11, false, &rr, &ai, &e), 0);
        mimeo_att_close(rr);
        mimeo_put_result res;
        CHECK_EQ_INT(mimeo_att_delete(db, id, 2, "dir/big.bin", 11, ai.rev, NULL, &res, &e), 0);
        mimeo_free(res.id);
    }
    CHECK_EQ_INT(mimeo_db_compact(db, &e), 0);
    s = stats();
    CHECK_EQ_INT(s.blobs, 0);
    free(data);
    teardown();
}

/* Uploads that never make it into a document leave nothing: freed, or cut by a crash
 * (the environment closed with the blob unfinished, then reopened). */
static void test_discard_and_sweep(void) {
    setup();
    unsigned char chunk[65536];
    memset(chunk, 7, sizeof chunk);
    mimeo_blob *b;
    CHECK_EQ_INT(mimeo_blob_new(env, NULL, &b), 0);
    for (int i = 0; i < 100; i++) CHECK_EQ_INT(mimeo_blob_write(b, chunk, sizeof chunk), 0);
    CHECK_EQ_INT(stats().pending, 1);
    mimeo_blob_free(b);
    CHECK_EQ_INT(stats().pending, 0);
    CHECK_EQ_INT(stats().blobs, 0);

    /* A crash: a child process uploads part of a blob and dies without a word. */
    mimeo_db_close(db);
    mimeo_env_close(env);
    pid_t pid = fork();
    if (pid == 0) {
        mimeo_env *cenv;
        mimeo_blob *cb;
        if (mimeo_env_open(tmpdir, NULL, &cenv, NULL) || mimeo_blob_new(cenv, NULL, &cb)) _exit(2);
        for (int i = 0; i < 100; i++)
            if (mimeo_blob_write(cb, chunk, sizeof chunk)) _exit(3);
        mimeo_blob_stats cs;
        if (mimeo_blob_stats_get(cenv, &cs) || cs.pending != 1) _exit(4);
        _exit(0);
    }
    int status = -1;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    open_env();
    mimeo_err e;
    CHECK_EQ_INT(mimeo_db_open(env, "db", &db, &e), 0);
    CHECK_EQ_INT(stats().pending, 0);
    CHECK_EQ_INT(stats().blobs, 0);
    teardown();
}

static void test_atts_since_and_follows(void) {
    setup();
    mimeo_err e;
    char rev1[MIMEO_REV_MAX], rev2[MIMEO_REV_MAX], body[512];
    CHECK_EQ_INT(put("s", "{\"_attachments\":{\"a\":{\"data\":\"YQ==\"}}}", rev1, &e), 0);
    snprintf(body, sizeof body, "{\"_rev\":\"%s\",\"_attachments\":{\"a\":{\"stub\":true},"
                                "\"b\":{\"data\":\"Yg==\"}}}", rev1);
    CHECK_EQ_INT(put("s", body, rev2, &e), 0);
    const char *since[] = {rev1};
    mimeo_get_opts o = {.atts_since = since, .atts_since_count = 1};
    char *doc = get("s", &o);
    CHECK(doc && strstr(doc, "\"a\":{\"content_type\":\"application/octet-stream\",\"revpos\":1,"));
    CHECK(doc && strstr(doc, "\"length\":1,\"stub\":true}"));
    CHECK(doc && strstr(doc, "\"data\":\"Yg==\""));
    CHECK(doc && !strstr(doc, "\"data\":\"YQ==\""));
    mimeo_free(doc);
    mimeo_get_opts f = {.attachments = true, .att_follows = true};
    doc = get("s", &f);
    CHECK(doc && strstr(doc, "\"length\":1,\"follows\":true}"));
    mimeo_free(doc);
    /* A replicated revision whose stub names what its stored ancestor has. */
    snprintf(body, sizeof body, "{\"_rev\":\"3-aaaa\",\"_revisions\":{\"start\":3,\"ids\":"
                                "[\"aaaa\",\"%s\"]},\"_attachments\":{\"b\":{\"stub\":true,"
                                "\"revpos\":2}}}", strchr(rev2, '-') + 1);
    mimeo_put_opts po = {.new_edits_false = true};
    mimeo_put_result res;
    CHECK_EQ_INT(mimeo_doc_put(db, "s", 1, body, strlen(body), &po, &res, &e), 0);
    mimeo_free(res.id);
    size_t n;
    unsigned char *bb = read_att("s", "3-aaaa", "b", true, &n, NULL);
    CHECK(bb && n == 1 && bb[0] == 'b');
    free(bb);
    /* follows data given as a blob, with a digest that does not match. */
    mimeo_blob *b;
    CHECK_EQ_INT(mimeo_blob_new(env, NULL, &b), 0);
    CHECK_EQ_INT(mimeo_blob_write(b, "xyz", 3), 0);
    CHECK_EQ_INT(mimeo_blob_finish(b), 0);
    mimeo_att_blob ab = {"f", 1, b};
    mimeo_put_opts fo = {.atts = &ab, .att_count = 1};
    const char *bad = "{\"_attachments\":{\"f\":{\"follows\":true,\"digest\":\"md5-AAAAAAAAAAAAAAAAAAAAAA==\"}}}";
    CHECK_EQ_INT(mimeo_doc_put(db, "fo", 2, bad, strlen(bad), &fo, &res, &e), MIMEO_EINVAL);
    CHECK_EQ_STR(e.error, "content_md5_mismatch");
    const char *good = "{\"_attachments\":{\"f\":{\"follows\":true,\"content_type\":\"x/y\"}}}";
    CHECK_EQ_INT(mimeo_doc_put(db, "fo", 2, good, strlen(good), &fo, &res, &e), 0);
    mimeo_free(res.id);
    mimeo_blob_free(b);
    bb = read_att("fo", NULL, "f", true, &n, NULL);
    CHECK(bb && n == 3 && memcmp(bb, "xyz", 3) == 0);
    free(bb);
    teardown();
}

/* A blob made by naming a stored attachment (local replication): the write that carries it
 * counts a reference and writes no byte; when the bytes were dropped meanwhile the write
 * fails with MIMEO_ENOTFOUND (the replicator then copies) and stores nothing. */
static void test_blob_ref(void) {
    setup();
    mimeo_err e;
    char rev1[MIMEO_REV_MAX], want[32];
    CHECK_EQ_INT(put("a", "{\"_attachments\":{\"x.bin\":{\"content_type\":"
                          "\"application/octet-stream\",\"data\":\"aGVsbG8gcmVm\"}}}", rev1, &e), 0);
    md5_text("hello ref", 9, want);
    mimeo_blob_stats s0 = stats();
    mimeo_blob *b;
    CHECK_EQ_INT(mimeo_blob_ref_new(db, "a", 1, rev1, "x.bin", 5, &b, &e), 0);
    mimeo_blob_info bi;
    CHECK_EQ_INT(mimeo_blob_info_get(b, &bi), 0);
    CHECK(strcmp(bi.digest, want) == 0);
    CHECK(bi.length == 9);
    CHECK_EQ_INT(mimeo_blob_write(b, "x", 1), MIMEO_EINVAL);   /* finished: no more bytes */
    const char *doc = "{\"_attachments\":{\"x.bin\":{\"follows\":true,\"content_type\":"
                      "\"application/octet-stream\",\"length\":9}}}";
    mimeo_att_blob ab = {.name = "x.bin", .name_len = 5, .blob = b};
    mimeo_put_opts o = {.atts = &ab, .att_count = 1};
    mimeo_put_result res;
    CHECK_EQ_INT(mimeo_doc_put(db, "b", 1, doc, strlen(doc), &o, &res, &e), 0);
    mimeo_free(res.id);
    mimeo_blob_free(b);
    mimeo_blob_stats s1 = stats();
    CHECK(s1.blobs == s0.blobs && s1.bytes == s0.bytes && s1.bytes_in == s0.bytes_in);
    size_t n;
    unsigned char *got = read_att("b", NULL, "x.bin", true, &n, NULL);
    CHECK(got && n == 9 && memcmp(got, "hello ref", 9) == 0);
    free(got);
    /* Named, then dropped before the write: the write fails and counts nothing. */
    char rev_c[MIMEO_REV_MAX];
    CHECK_EQ_INT(put("c", "{\"_attachments\":{\"y.bin\":{\"content_type\":"
                          "\"application/octet-stream\",\"data\":\"b25seSBj\"}}}", rev_c, &e), 0);
    CHECK_EQ_INT(mimeo_blob_ref_new(db, "c", 1, rev_c, "y.bin", 5, &b, &e), 0);
    CHECK_EQ_INT(mimeo_doc_delete(db, "c", 1, rev_c, NULL, &e), 0);
    CHECK_EQ_INT(mimeo_db_compact(db, &e), 0);
    mimeo_blob_stats s2 = stats();
    CHECK(s2.blobs == s1.blobs);
    ab = (mimeo_att_blob){.name = "y.bin", .name_len = 5, .blob = b};
    const char *doc2 = "{\"_attachments\":{\"y.bin\":{\"follows\":true,\"content_type\":"
                       "\"application/octet-stream\",\"length\":6}}}";
    CHECK_EQ_INT(mimeo_doc_put(db, "d", 1, doc2, strlen(doc2), &o, &res, &e), MIMEO_ENOTFOUND);
    mimeo_blob_free(b);
    CHECK(stats().blobs == s1.blobs);
    CHECK(get("d", NULL) == NULL);
    /* An attachment that is not there cannot be named. */
    CHECK_EQ_INT(mimeo_blob_ref_new(db, "a", 1, rev1, "nope", 4, &b, &e), MIMEO_ENOTFOUND);
    CHECK(b == NULL);
    teardown();
}

int main(void) {
    RUN(test_inline_stub_and_data);
    RUN(test_gzip_text);
    RUN(test_big_blob_dedupe);
    RUN(test_discard_and_sweep);
    RUN(test_atts_since_and_follows);
    RUN(test_blob_ref);
    return check_report();
}
