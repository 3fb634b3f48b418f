/* validate_doc_update through the library API (src/db/validate.c): the user context of
 * mimeo_put_opts, mimeo_doc_delete_as and mimeo_bulk_docs_as, the system writer (NULL: roles
 * ["_admin"]), replicated batches, and the per-database cache following design documents.
 * Needs the query server: build/mimeo-js, or $MIMEO_JS. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "mimeo.h"

static char tmpdir[64];
static mimeo_env *env;

static const char DDOC[] =
    "{\"validate_doc_update\":\"function(n, o, u, s) {"
    " if (n.bad) throw({forbidden: 'bad'});"
    " if (n.admin_only && u.roles.indexOf('_admin') < 0) throw({unauthorized: 'admins only'});"
    " if (n.who) throw({forbidden: u.db + '|' + u.name + '|' + u.roles.join(',') + '|' + JSON.stringify(s)});"
    " if (n._deleted && o && o.keep) throw({forbidden: 'kept'}); }\"}";

static mimeo_db *db_with_rules(const char *name) {
    mimeo_db *db = NULL;
    CHECK_EQ_INT(mimeo_db_create(env, name, NULL), 0);
    CHECK_EQ_INT(mimeo_db_open(env, name, &db, NULL), 0);
    mimeo_put_result res = {0};
    CHECK_EQ_INT(mimeo_doc_put(db, "_design/r", 9, DDOC, strlen(DDOC), NULL, &res, NULL), 0);
    mimeo_free(res.id);
    return db;
}

static int put(mimeo_db *db, const char *id, const char *json, const mimeo_user_ctx *user,
               mimeo_put_result *res, mimeo_err *err) {
    mimeo_put_opts o = {.user = user};
    memset(res, 0, sizeof *res);
    memset(err, 0, sizeof *err);
    int rc = mimeo_doc_put(db, id, strlen(id), json, strlen(json), &o, res, err);
    mimeo_free(res->id);
    res->id = NULL;
    return rc;
}

static void test_users(void) {
    mimeo_db *db = db_with_rules("users");
    mimeo_put_result res;
    mimeo_err err;
    CHECK_EQ_INT(put(db, "a", "{\"bad\":1}", NULL, &res, &err), MIMEO_EFORBIDDEN);
    CHECK_EQ_STR(err.error, "forbidden");
    CHECK_EQ_STR(err.reason, "bad");
    /* NULL is the system: an admin. */
    CHECK_EQ_INT(put(db, "b", "{\"admin_only\":1}", NULL, &res, &err), 0);
    const char *roles[] = {"editor", "x"};
    const char sec[] = "{\"members\":{\"names\":[\"ann\"]}}";
    mimeo_user_ctx ann = {.name = "ann", .roles = roles, .role_count = 2, .security = sec,
                          .security_len = strlen(sec)};
    CHECK_EQ_INT(put(db, "c", "{\"admin_only\":1}", &ann, &res, &err), MIMEO_EUNAUTHORIZED);
    CHECK_EQ_STR(err.error, "unauthorized");
    CHECK_EQ_STR(err.reason, "admins only");
    CHECK_EQ_INT(put(db, "d", "{\"who\":1}", &ann, &res, &err), MIMEO_EFORBIDDEN);
    CHECK_EQ_STR(err.reason, "users|ann|editor,x|{\"members\":{\"names\":[\"ann\"]}}");
    mimeo_user_ctx anon = {0};
    CHECK_EQ_INT(put(db, "e", "{\"who\":1}", &anon, &res, &err), MIMEO_EFORBIDDEN);
    CHECK_EQ_STR(err.reason, "users|null||{}");
    char *json = NULL;
    size_t len = 0;
    CHECK_EQ_INT(mimeo_doc_get(db, "c", 1, NULL, &json, &len, NULL), MIMEO_ENOTFOUND);
    /* Deletes: oldDoc is the current document. */
    CHECK_EQ_INT(put(db, "k", "{\"keep\":true}", NULL, &res, &err), 0);
    mimeo_put_result del = {0};
    CHECK_EQ_INT(mimeo_doc_delete_as(db, "k", 1, res.rev, &ann, &del, &err), MIMEO_EFORBIDDEN);
    CHECK_EQ_STR(err.reason, "kept");
    mimeo_db_close(db);
}

static void test_bulk(void) {
    mimeo_db *db = db_with_rules("bulk");
    const char body[] = "{\"docs\":[{\"_id\":\"x\"},{\"_id\":\"y\",\"admin_only\":1},{\"_id\":\"z\",\"bad\":1}]}";
    const char *roles[] = {"r"};
    mimeo_user_ctx bob = {.name = "bob", .roles = roles, .role_count = 1};
    mimeo_bulk_docs_opts bo = {.user = &bob};
    char *out = NULL;
    size_t n = 0;
    mimeo_err err = {0};
    CHECK_EQ_INT(mimeo_bulk_docs_as(db, body, strlen(body), &bo, &out, &n, &err), 0);
    CHECK(out && strstr(out, "{\"id\":\"y\",\"error\":\"unauthorized\",\"reason\":\"admins only\"}"));
    CHECK(out && strstr(out, "{\"id\":\"z\",\"error\":\"forbidden\",\"reason\":\"bad\"}"));
    CHECK(out && strstr(out, "{\"ok\":true,\"id\":\"x\""));
    mimeo_free(out);
    /* Replicated (new_edits false), as the local replication endpoint writes: system. */
    const char rep[] = "{\"new_edits\":false,\"docs\":[{\"_id\":\"p\",\"_rev\":\"1-aa\",\"admin_only\":1},"
                       "{\"_id\":\"q\",\"_rev\":\"1-bb\",\"bad\":1}]}";
    CHECK_EQ_INT(mimeo_bulk_docs(db, rep, strlen(rep), &out, &n, &err), 0);
    CHECK_EQ_STR(out, "[{\"id\":\"q\",\"rev\":\"1-bb\",\"error\":\"forbidden\",\"reason\":\"bad\"}]");
    mimeo_free(out);
    mimeo_db_info info;
    CHECK_EQ_INT(mimeo_db_info_get(db, &info), 0);
    CHECK_EQ_INT((int)info.doc_count, 3); /* _design/r, x, p */
    mimeo_db_close(db);
}

int main(void) {
    const char *js = getenv("MIMEO_JS");
    if (!js || !js[0]) js = "build/mimeo-js";
    if (access(js, X_OK) != 0) {
        fprintf(stderr, "test_validate: %s missing (make build/mimeo-js)\n", js);
        return 1;
    }
    snprintf(tmpdir, sizeof tmpdir, "/tmp/mimeo-test-vdu-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    mimeo_options opts = {.query_server = js, .os_process_timeout = 5000};
    mimeo_err err;
    if (mimeo_env_open(tmpdir, &opts, &env, &err) != 0) {
        fprintf(stderr, "env open: %s\n", err.reason);
        return 1;
    }
    RUN(test_users);
    RUN(test_bulk);
    mimeo_env_close(env);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return check_report();
}
