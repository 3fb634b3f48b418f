/* Embedding libmimeo: open a data folder, create a database, write and read a document,
 * and follow the changes feed. Usage: example DATA_DIR */
#include <stdio.h>
#include <string.h>

#include "mimeo.h"

static int print_row(void *ctx, const char *json, size_t len) {
    (void)ctx;
    printf("change: %.*s\n", (int)len, json);
    return 0;
}

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

    mimeo_changes_opts since_zero = {0};
    uint64_t last_seq;
    rc = mimeo_changes(db, &since_zero, print_row, NULL, &last_seq, NULL, &err);
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
