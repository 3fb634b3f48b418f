/* Embedding libmimeo: open a data folder, create a database, write and read a document,
 * and follow the changes feed as rows of a cursor. Usage: example DATA_DIR */
#include <stdio.h>
#include <string.h>

#include "mimeo.h"

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DATA_DIR\n", argv[0]);
        return 2;
    }
    mimeo_env *env;
    mimeo_err err;
    if (mimeo_env_open(argv[1], NULL, &env, &err)) {
        fprintf(stderr, "open: %s\n", err.reason);
        return 1;
    }
    int rc = mimeo_db_create(env, "notes", &err);
    if (rc && rc != MIMEO_EEXIST) goto fail;

    mimeo_db *db;
    if ((rc = mimeo_db_open(env, "notes", &db, &err))) goto fail;

    const char *doc = "{\"title\":\"hello\",\"tags\":[\"embedded\"]}";
    mimeo_put_result put;
    rc = mimeo_doc_put(db, NULL, 0, doc, strlen(doc), NULL, &put, &err);
    if (rc) goto fail_db;
    printf("put: id=%s rev=%s\n", put.id, put.rev);

    char *json;
    size_t len;
    rc = mimeo_doc_get(db, put.id, strlen(put.id), NULL, &json, &len, &err);
    mimeo_free(put.id);
    if (rc) goto fail_db;
    printf("get: %.*s\n", (int)len, json);
    mimeo_free(json);

    /* Rows carry the metadata as fields (ids may hold NUL: use id_len) and the stored body;
     * they are borrowed from the cursor until the next call. */
    mimeo_changes_opts since_zero = {0};
    since_zero.include_docs = true;
    mimeo_cursor *cur;
    if ((rc = mimeo_changes_open(db, &since_zero, &cur, &err))) goto fail_db;
    const mimeo_row *row;
    while ((rc = mimeo_cursor_next(cur, &row, &err)) == 0 && row)
        printf("change: seq=%llu id=%.*s rev=%s%s body=%.*s\n", (unsigned long long)row->seq,
               (int)row->id_len, row->id, row->rev, row->deleted ? " (deleted)" : "",
               (int)row->body_len, row->body);
    uint64_t last_seq = mimeo_cursor_last_seq(cur);
    mimeo_cursor_close(cur);
    if (rc) goto fail_db;
    printf("last_seq: %llu\n", (unsigned long long)last_seq);

    mimeo_db_close(db);
    mimeo_env_close(env);
    return 0;
fail_db:
    mimeo_db_close(db);
fail:
    fprintf(stderr, "error: %s: %s\n", err.error, err.reason);
    mimeo_env_close(env);
    return 1;
}
