/* libFuzzer driver for the `_revisions` path: a document as the replicator ships it (with
 * `_rev`, `_revisions`, `_deleted`) written through _bulk_docs with new_edits=false (the
 * first input byte may switch to new_edits=true), so JSON splitting, the _revisions checks,
 * merge and stemming into the stored tree, and reading it back all see arbitrary input. Each
 * accepted document must read back as JSON that parses, with every requested meta member.
 * The data folder is on /dev/shm when there is one (commits there cost no disk flush); the
 * database is recreated every 5,000 inputs so that it stays small. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "json/json.h"
#include "mimeo.h"

static mimeo_env *env;
static mimeo_db *db;
static unsigned runs;

static void fuzz_check(int cond) {
    if (!cond) abort();
}

static void fuzz_cleanup(void) {
    if (db) mimeo_db_close(db);
    if (env) mimeo_env_close(env);
}

static void fuzz_reset_db(void) {
    mimeo_err err;
    if (db) mimeo_db_close(db);
    db = NULL;
    mimeo_db_delete(env, "f", &err);
    fuzz_check(mimeo_db_create(env, "f", &err) == 0);
    fuzz_check(mimeo_db_open(env, "f", &db, &err) == 0);
}

static void fuzz_init(void) {
    char dir[] = "/dev/shm/mimeo-fuzz-XXXXXX";
    char alt[] = "/tmp/mimeo-fuzz-XXXXXX";
    const char *d = mkdtemp(dir);
    if (!d) d = mkdtemp(alt);
    fuzz_check(d != NULL);
    mimeo_err err;
    fuzz_check(mimeo_env_open(d, NULL, &env, &err) == 0);
    /* The data folder is unlinked at once: the open environment keeps its files. */
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
    if (system(cmd) != 0) abort();
    fuzz_reset_db();
    atexit(fuzz_cleanup);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!env) fuzz_init();
    if (++runs % 5000 == 0) fuzz_reset_db();
    bool new_edits = size > 0 && data[0] == '!';
    const char *doc = (const char *)data + new_edits;
    size_t doc_len = size - new_edits;

    buf body = BUF_INIT;
    buf_printf(&body, "{\"new_edits\":%s,\"docs\":[", new_edits ? "true" : "false");
    buf_put(&body, doc, doc_len);
    buf_puts(&body, "]}");
    char *reply = NULL;
    size_t reply_len = 0;
    mimeo_err err;
    int rc = mimeo_bulk_docs(db, body.data, body.len, &reply, &reply_len, &err);
    buf_destroy(&body);
    if (rc != 0) {
        fuzz_check(reply == NULL);
        return 0;
    }
    json_error je;
    fuzz_check(reply && json_parse(reply, reply_len, NULL, NULL, NULL, &je) == 0);
    mimeo_free(reply);

    /* Read the document back with every meta member: valid JSON, or a clean not-found. */
    json_doc d;
    /* (_local documents have no revision tree and no _revisions.) */
    if (json_doc_parse(doc, doc_len, NULL, &d, &je) == 0 && d.id &&
        !(d.id_len >= 7 && memcmp(d.id, "_local/", 7) == 0)) {
        mimeo_get_opts o = {0};
        o.revs = o.revs_info = o.conflicts = o.deleted_conflicts = true;
        char *json = NULL;
        size_t len = 0;
        rc = mimeo_doc_get(db, d.id, d.id_len, &o, &json, &len, &err);
        if (rc == 0) {
            fuzz_check(json_parse(json, len, NULL, NULL, NULL, &je) == 0);
            fuzz_check(strstr(json, "\"_revisions\":") != NULL);
        } else {
            fuzz_check(json == NULL);
        }
        mimeo_free(json);
        json = NULL;
        rc = mimeo_doc_open_revs(db, d.id, d.id_len, "all", 3, &o, &json, &len, &err);
        if (rc == 0) fuzz_check(json_parse(json, len, NULL, NULL, NULL, &je) == 0);
        mimeo_free(json);
    }
    json_doc_destroy(&d);
    return 0;
}
