/* libFuzzer driver for routing (src/http/route.c) and the handlers' reading of paths and
 * query arguments: the first input byte picks the method (GET, HEAD, POST with no body, or
 * an unknown one), the rest is the request target. Requests are built in memory as
 * server.c builds them and routed against a real environment holding one database with a
 * few documents; PUT and DELETE are left out so the data stays fixed. Every request must get
 * exactly one reply with a real status, a 405 must carry Allow, and nothing may crash. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http/http_int.h"

static http_server srv;

static void fuzz_check(int cond) {
    if (!cond) abort();
}

static void fuzz_cleanup(void) {
    if (srv.env) mimeo_env_close(srv.env);
}

static void fuzz_init(void) {
    char dir[] = "/dev/shm/mimeo-fuzz-route-XXXXXX";
    char alt[] = "/tmp/mimeo-fuzz-route-XXXXXX";
    const char *d = mkdtemp(dir);
    if (!d) d = mkdtemp(alt);
    fuzz_check(d != NULL);
    mimeo_err err;
    fuzz_check(mimeo_env_open(d, NULL, &srv.env, &err) == 0);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
    if (system(cmd) != 0) abort();
    srv.limits.max_depth = 64;
    srv.limits.max_doc_bytes = 1 << 20;
    srv.cfg.max_request_size = 1 << 20;
    srv.cfg.changes_timeout_ms = 0; /* feeds answer at once */
    fuzz_check(mimeo_db_create(srv.env, "db", &err) == 0);
    mimeo_db *db;
    fuzz_check(mimeo_db_open(srv.env, "db", &db, &err) == 0);
    const char *bulk = "{\"docs\":[{\"_id\":\"a\",\"v\":1},{\"_id\":\"b\",\"_deleted\":true},"
                       "{\"_id\":\"_design/x\",\"views\":{}},{\"_id\":\"c/d\"}]}";
    char *reply;
    size_t len;
    fuzz_check(mimeo_bulk_docs(db, bulk, strlen(bulk), &reply, &len, &err) == 0);
    mimeo_free(reply);
    mimeo_put_result res;
    fuzz_check(mimeo_local_put(db, "l", 1, "{\"x\":1}", 7, NULL, &res, &err) == 0);
    mimeo_free(res.id);
    mimeo_db_close(db);
    atexit(fuzz_cleanup);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!srv.env) fuzz_init();
    if (size == 0) return 0;
    static const http_method methods[] = {HTTP_GET, HTTP_HEAD, HTTP_POST, HTTP_OTHER};
    http_method m = methods[data[0] & 3];
    char *target = malloc(size);
    if (!target) return 0;
    memcpy(target, data + 1, size - 1);
    target[size - 1] = '\0';
    http_req *r = http_req_new(target);
    if (!r) { free(target); return 0; }
    r->srv = &srv;
    r->method = m;
    buf_init(&r->body, srv.cfg.max_request_size);
    buf_init(&r->scratch, 0);
    http_route(r);

    fuzz_check(r->resp != NULL);
    fuzz_check(r->status >= 200 && r->status <= 599);
    if (r->status == 405) fuzz_check(MHD_get_response_header(r->resp, MHD_HTTP_HEADER_ALLOW) != NULL);

    MHD_destroy_response(r->resp);
    if (r->db) mimeo_db_close(r->db);
    buf_destroy(&r->body);
    buf_destroy(&r->scratch);
    free(r);
    free(target);
    return 0;
}
