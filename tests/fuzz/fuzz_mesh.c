/* libFuzzer driver for the mesh wire codec and state machine (src/mesh): the input, with a
 * valid MAC appended (so the fuzzer gets past authentication and reaches the parsers), is
 * delivered to a fresh node, whose timers then run. Beyond "no crash, no overrun, no leak" it
 * checks that every record that parses re-encodes to the same bytes, and that whatever the
 * node accepted leaves names non-empty and the node still able to build its full state.
 * Build: make build/fuzz/fuzz_mesh (see the Makefile's fuzz target). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <nettle/hmac.h>

#include "mimeo.h"
#include "mesh/mesh.h"

static const uint8_t KEY[32] = "fuzz-mesh-secret-0123456789abcde";

static void fuzz_check(int cond) {
    if (!cond) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 1 << 16) return 0;
    uint8_t *msg = malloc(size + MESH_MAC_LEN);
    if (!msg) return 0;
    memcpy(msg, data, size);
    struct hmac_sha256_ctx ctx;
    hmac_sha256_set_key(&ctx, sizeof KEY, KEY);
    hmac_sha256_update(&ctx, size, msg);
    hmac_sha256_digest(&ctx, MESH_MAC_LEN, msg + size);
    size_t len = size + MESH_MAC_LEN;

    struct mesh_hdr h;
    if (mesh_wire_parse(KEY, sizeof KEY, msg, len, &h) == 0) {
        size_t off = h.rec_off;
        struct mesh_rec r;
        size_t start = off;
        while (mesh_wire_rec_next(msg, &h, &off, &r) == 1) {
            uint8_t enc[300];
            size_t n = mesh_wire_rec_encode(&r, enc, sizeof enc);
            fuzz_check(n == off - start && memcmp(enc, msg + start, n) == 0);
            start = off;
        }
    }

    struct mesh_config cfg;
    mesh_config_default(&cfg);
    cfg.name = "fuzz";
    cfg.url = "http://127.0.0.1:1";
    cfg.secret = KEY;
    cfg.secret_len = sizeof KEY;
    struct mesh *m = mesh_new(&cfg, 1000);
    fuzz_check(m != NULL);
    mesh_recv(m, msg, len, 1000);
    mesh_recv(m, msg, len, 1001);            /* the same again: a replay, dropped */
    for (uint64_t t = 1000; t < 120000; t += 700) mesh_tick(m, t);
    for (size_t i = 0; i < mesh_member_count(m); i++) {
        struct mesh_member_info mi;
        fuzz_check(mesh_member_get(m, i, &mi) == 0 && mi.name[0] && mi.state >= 0 && mi.state <= 3);
    }
    for (size_t i = 0; i < mesh_db_count(m); i++) {
        struct mesh_db_info di;
        fuzz_check(mesh_db_get(m, i, &di) == 0 && di.name[0]);
    }
    struct mesh_msg out;
    while (mesh_out_pop(m, &out)) {
        struct mesh_hdr oh;
        fuzz_check(mesh_wire_parse(KEY, sizeof KEY, out.data, out.len, &oh) == 0);
        free(out.data);
    }
    struct mesh_event ev;
    while (mesh_event_pop(m, &ev)) {}
    mesh_free(m);
    free(msg);
    return 0;
}
