/* src/auth: password hashes against published PBKDF2 vectors and Node's crypto, cookies,
 * Basic credentials, the checked-password cache, the failed-login slowdown, _security
 * membership and the _users document rules (incl. CVE-2017-12635's duplicate roles). */
#include "check.h"

#include "auth/auth.h"

static jval *tree(const char *s) {
    jval *v = NULL;
    json_error e;
    if (json_tree_parse(s, strlen(s), NULL, &v, &e) != 0) return NULL;
    return v;
}

static void test_pbkdf2_vectors(void) {
    auth_pw h;
    /* RFC 6070 (SHA-1): P="password", S="salt", c=1 — the older "-pbkdf2-" config form. */
    CHECK_EQ_INT(auth_pw_parse_config("-pbkdf2-0c60c80f961f0e71f3a9b524af6012062fe037a6,salt,1",
                                      &h), 0);
    CHECK(h.prf == AUTH_PRF_SHA1);
    CHECK(auth_pw_check(&h, "password", 8));
    CHECK(!auth_pw_check(&h, "passwore", 8));
    /* RFC 7914 §11 (SHA-256): P="passwd", S="salt", c=1, first 32 bytes. */
    CHECK_EQ_INT(auth_pw_parse_config("-pbkdf2:sha256-55ac046e56e3089fec1691c22544b605f9418521"
                                      "6dde0465e68b9d57c20dacbc,salt,1", &h), 0);
    CHECK(auth_pw_check(&h, "passwd", 6));
    CHECK(!auth_pw_check(&h, "passwd", 5));
    /* Node: crypto.pbkdf2Sync("hunter2", salt, 1000, 32, "sha256") — a _users document. */
    jval *doc = tree("{\"password_scheme\":\"pbkdf2\",\"pbkdf2_prf\":\"sha256\",\"iterations\":1000,"
                     "\"salt\":\"4d1fa2c0b8e2a3f6c9d1e7b5a3c2f1e0\",\"derived_key\":"
                     "\"32c468c0349c60fdd70dc90ff1cc1fa97ea4da35df48a6135d1868d85136a339\"}");
    CHECK(doc != NULL);
    CHECK_EQ_INT(auth_pw_from_user_doc(doc, &h), 0);
    CHECK(auth_pw_check(&h, "hunter2", 7));
    CHECK(!auth_pw_check(&h, "hunter3", 7));
    jval_free(doc);
}

static void test_pw_config_roundtrip(void) {
    auth_pw h, g;
    CHECK_EQ_INT(auth_pw_new("s3cret", 6, 100, &h), 0);
    CHECK_EQ_INT((int)h.salt_len, 32);
    char text[256];
    CHECK_EQ_INT(auth_pw_format_config(&h, text, sizeof text), 0);
    CHECK(strncmp(text, "-pbkdf2:sha256-", 15) == 0);
    CHECK(auth_pw_is_hashed(text));
    CHECK(!auth_pw_is_hashed("s3cret"));
    CHECK_EQ_INT(auth_pw_parse_config(text, &g), 0);
    CHECK(auth_pw_check(&g, "s3cret", 6));
    CHECK(!auth_pw_check(&g, "s3cres", 6));
    /* Two hashes of one password differ (random salts). */
    auth_pw h2;
    auth_pw_new("s3cret", 6, 100, &h2);
    CHECK(memcmp(h.salt, h2.salt, 32) != 0);
    /* Malformed hashes are refused, never accepted as "any password". */
    const char *bad[] = { "-pbkdf2-", "-pbkdf2-zz,salt,1", "-pbkdf2:sha256-00,salt,1",
                          "-pbkdf2-0c60c80f961f0e71f3a9b524af6012062fe037a6,,1",
                          "-pbkdf2-0c60c80f961f0e71f3a9b524af6012062fe037a6,salt,0",
                          "-pbkdf2-0c60c80f961f0e71f3a9b524af6012062fe037a6,salt,x",
                          "-pbkdf2-0c60c80f961f0e71f3a9b524af6012062fe037a6,salt,99999999999",
                          "-pbkdf2:md5-0c60c80f961f0e71f3a9b524af6012062fe037a6,salt,1",
                          "plain" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(auth_pw_parse_config(bad[i], &g) != 0);
    jval *doc = tree("{\"password_scheme\":\"simple\",\"password_sha\":\"00\",\"salt\":\"x\"}");
    CHECK_EQ_INT(auth_pw_from_user_doc(doc, &g), MIMEO_ENOTFOUND);
    jval_free(doc);
}

static void test_ct_equal(void) {
    CHECK(auth_ct_equal("abc", "abc", 3));
    CHECK(!auth_ct_equal("abc", "abd", 3));
    CHECK(auth_ct_equal("", "", 0));
    /* Word steps and the byte tail: a difference in any position, at any length. */
    char x[41], y[41];
    for (size_t n = 1; n <= sizeof x; n++)
        for (size_t at = 0; at < n; at++) {
            memset(x, 'k', n);
            memset(y, 'k', n);
            CHECK(auth_ct_equal(x, y, n));
            y[at] ^= 0x80;
            CHECK(!auth_ct_equal(x, y, n));
            CHECK(auth_ct_equal(x, y, at));   /* the bytes before it still match */
        }
}

static void test_cookie(void) {
    const unsigned char secret[] = "s3cr3t";
    buf b;
    buf_init(&b, 0);
    /* The same bytes Node gives for CouchDB's construction (see the file header). */
    CHECK_EQ_INT(auth_cookie_make(&b, "alice", 0x5F5E100, "4d1fa2c0", 8, secret, 6), 0);
    CHECK_EQ_STR(buf_cstr(&b), "YWxpY2U6NUY1RTEwMDrwLMEBXebn1L9um4nonGC8mGJGP29i47G_4NicHmolWg");
    auth_cookie c;
    CHECK_EQ_INT(auth_cookie_parse(b.data, b.len, &c), 0);
    CHECK_EQ_STR(c.name, "alice");
    CHECK_EQ_INT((long long)c.time, 0x5F5E100);
    CHECK(auth_cookie_valid(&c, "4d1fa2c0", 8, secret, 6, 0x5F5E100 + 10, 600));
    CHECK(!auth_cookie_valid(&c, "4d1fa2c0", 8, secret, 6, 0x5F5E100 + 600, 600));   /* expired */
    /* Freshness alone (what a connection's memo of a proven cookie rechecks): up to the
     * timeout, and no more than 60 s from the future. */
    CHECK(auth_cookie_fresh(&c, 0x5F5E100, 600));
    CHECK(auth_cookie_fresh(&c, 0x5F5E100 + 599, 600));
    CHECK(!auth_cookie_fresh(&c, 0x5F5E100 + 600, 600));
    CHECK(auth_cookie_fresh(&c, 0x5F5E100 - 60, 600));
    CHECK(!auth_cookie_fresh(&c, 0x5F5E100 - 61, 600));
    CHECK(!auth_cookie_valid(&c, "4d1fa2c1", 8, secret, 6, 0x5F5E100 + 10, 600));   /* new salt */
    CHECK(!auth_cookie_valid(&c, "4d1fa2c0", 8, (const unsigned char *)"other!", 6,
                             0x5F5E100 + 10, 600));
    /* A forged name with the original MAC fails. */
    auth_cookie f = c;
    strcpy(f.name, "admin");
    CHECK(!auth_cookie_valid(&f, "4d1fa2c0", 8, secret, 6, 0x5F5E100 + 10, 600));
    /* The verified MAC is remembered: the same cookie passes again, and anything that differs
     * from what was verified (one MAC bit, the time, a longer secret) still fails. */
    CHECK(auth_cookie_valid(&c, "4d1fa2c0", 8, secret, 6, 0x5F5E100 + 20, 600));
    f = c;
    f.mac[31] ^= 1;
    CHECK(!auth_cookie_valid(&f, "4d1fa2c0", 8, secret, 6, 0x5F5E100 + 10, 600));
    f = c;
    f.time += 1;
    CHECK(!auth_cookie_valid(&f, "4d1fa2c0", 8, secret, 6, 0x5F5E100 + 10, 600));
    CHECK(!auth_cookie_valid(&c, "4d1fa2c0", 8, (const unsigned char *)"s3cr3tX", 7,
                             0x5F5E100 + 10, 600));
    CHECK(!auth_cookie_valid(&c, "4d1fa2c", 7, secret, 6, 0x5F5E100 + 10, 600));
    /* Garbage in, an error out — never a crash. */
    const char *bad[] = { "", "!!!!", "YWxpY2U", "YWxpY2U6NUY1RTEwMDo", "Og" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(auth_cookie_parse(bad[i], strlen(bad[i]), &c) != 0);
    char big[5000];
    memset(big, 'A', sizeof big);
    CHECK(auth_cookie_parse(big, sizeof big, &c) != 0);
    buf_destroy(&b);
}

static void test_basic(void) {
    char *n, *p;
    CHECK_EQ_INT(auth_basic_parse("Basic YWxpY2U6czNjcjp0", &n, &p), 0);   /* alice:s3cr:t */
    CHECK_EQ_STR(n, "alice");
    CHECK_EQ_STR(p, "s3cr:t");
    free(n);
    free(p);
    CHECK_EQ_INT(auth_basic_parse("basic YWxpY2U6", &n, &p), 0);   /* empty password */
    CHECK_EQ_STR(p, "");
    free(n);
    free(p);
    CHECK(auth_basic_parse("Bearer abc", &n, &p) != 0);
    CHECK(auth_basic_parse("Basic !!!", &n, &p) != 0);
    CHECK(auth_basic_parse("Basic YWxpY2U=", &n, &p) != 0);   /* no colon */
    CHECK(auth_basic_parse("Basic ", &n, &p) != 0);
}

static void test_cache(void) {
    auth_cache c;
    auth_cache_init(&c);
    auth_pw h;
    auth_pw_new("right", 5, 20000, &h);
    uint64_t t0 = check_now_ms();
    CHECK(auth_cache_check(&c, "bob", &h, "right", 5));
    uint64_t slow = check_now_ms() - t0;
    t0 = check_now_ms();
    for (int i = 0; i < 100; i++) CHECK(auth_cache_check(&c, "bob", &h, "right", 5));
    uint64_t fast = check_now_ms() - t0;
    /* 100 cached checks cost less than one PBKDF2 at 20k iterations. */
    CHECK(fast <= slow + 1);
    CHECK(!auth_cache_check(&c, "bob", &h, "wrong", 5));
    /* A changed password (new hash) is not served from the cache. */
    auth_pw h2;
    auth_pw_new("other", 5, 1000, &h2);
    CHECK(!auth_cache_check(&c, "bob", &h2, "right", 5));
    CHECK(auth_cache_check(&c, "bob", &h2, "other", 5));
    auth_cache_destroy(&c);
}

static void test_throttle(void) {
    static auth_throttle t;
    auth_throttle_init(&t);
    uint64_t now = 1000000;
    /* A few failures cost nothing. */
    for (int i = 0; i < AUTH_THROTTLE_FREE; i++) {
        CHECK_EQ_INT(auth_throttle_enter(&t, "admin", "10.0.0.9", now), 0);
        auth_throttle_result(&t, "admin", "10.0.0.9", false, now);
    }
    /* Then each guess waits, and the waits grow. */
    int64_t w1 = auth_throttle_enter(&t, "admin", "10.0.0.9", now);
    CHECK(w1 >= AUTH_THROTTLE_BASE_MS);
    now += (uint64_t)w1;
    auth_throttle_result(&t, "admin", "10.0.0.9", false, now);
    int64_t w2 = auth_throttle_enter(&t, "admin", "10.0.0.9", now);
    CHECK(w2 > w1);
    /* Parallel guesses queue behind each other instead of all waiting the same delay. */
    int64_t w3 = auth_throttle_enter(&t, "admin", "10.0.0.9", now);
    CHECK(w3 > w2);
    /* Many failures: a guesser's total time grows at least linearly, the queue is bounded. */
    uint64_t spent = 0;
    for (int i = 0; i < 50; i++) {
        int64_t w = auth_throttle_enter(&t, "admin", "10.0.0.9", now);
        if (w < 0) { now += 1000; continue; }
        now += (uint64_t)w;
        spent += (uint64_t)w;
        auth_throttle_result(&t, "admin", "10.0.0.9", false, now);
    }
    CHECK(spent >= 40 * 1000);   /* 50 guesses took over 40 s of waiting */
    /* The owner from another address is not slowed at all: no lockout. */
    CHECK_EQ_INT(auth_throttle_enter(&t, "admin", "10.0.0.1", now), 0);
    /* Their success, and other pairs' successes, leave the guesser's record alone. */
    auth_throttle_result(&t, "admin", "10.0.0.1", true, now);
    for (int i = 0; i < 100; i++) {
        char addr[32];
        snprintf(addr, sizeof addr, "10.1.%d.%d", i / 250, i % 250);
        auth_throttle_result(&t, "someone", addr, true, now);
    }
    now += AUTH_THROTTLE_QUEUE_MS + 1;
    CHECK(auth_throttle_enter(&t, "admin", "10.0.0.9", now) >= AUTH_THROTTLE_BASE_MS);
    now += AUTH_THROTTLE_MAX_MS;
    /* From the guessing address, the right password still gets in after one bounded wait. */
    now += AUTH_THROTTLE_QUEUE_MS + 1;
    int64_t w = auth_throttle_enter(&t, "admin", "10.0.0.9", now);
    CHECK(w >= 0 && w <= AUTH_THROTTLE_MAX_MS);
    auth_throttle_result(&t, "admin", "10.0.0.9", true, now + (uint64_t)w);
    CHECK_EQ_INT(auth_throttle_enter(&t, "admin", "10.0.0.9", now + (uint64_t)w), 0);
    auth_throttle_destroy(&t);
}

static auth_user user(const char *name, const char *role) {
    auth_user u;
    memset(&u, 0, sizeof u);
    if (name) {
        u.known = true;
        strcpy(u.name, name);
    }
    if (role) auth_user_add_role(&u, role, strlen(role));
    return u;
}

static void test_security(void) {
    jval *sec = tree("{\"admins\":{\"names\":[\"ops\"],\"roles\":[\"dba\"]},"
                     "\"members\":{\"names\":[\"alice\"],\"roles\":[\"sales\"]}}");
    auth_user anon = user(NULL, NULL), alice = user("alice", NULL), bob = user("bob", NULL);
    auth_user seller = user("carol", "sales"), ops = user("ops", NULL), dba = user("dan", "dba");
    auth_user root = user("root", "_admin");
    CHECK(!auth_is_member(&anon, sec));
    CHECK(auth_is_member(&alice, sec));
    CHECK(!auth_is_member(&bob, sec));
    CHECK(auth_is_member(&seller, sec));
    CHECK(!auth_is_db_admin(&seller, sec));
    CHECK(auth_is_db_admin(&ops, sec) && auth_is_member(&ops, sec));
    CHECK(auth_is_db_admin(&dba, sec));
    CHECK(auth_is_db_admin(&root, sec));
    jval_free(sec);

    /* No members: public. CouchDB 3's default: admins only. */
    sec = tree("{\"admins\":{\"names\":[\"ops\"]},\"members\":{\"names\":[],\"roles\":[]}}");
    CHECK(auth_is_member(&anon, sec));
    CHECK(!auth_is_db_admin(&anon, sec));
    jval_free(sec);
    sec = tree(auth_security_default(true));
    CHECK(!auth_is_member(&anon, sec));
    CHECK(!auth_is_member(&alice, sec));
    CHECK(auth_is_member(&root, sec));
    jval_free(sec);
    sec = tree(auth_security_default(false));
    CHECK(auth_is_member(&anon, sec));
    jval_free(sec);
    /* "readers" is the old name of members. */
    sec = tree("{\"readers\":{\"names\":[\"alice\"]}}");
    CHECK(auth_is_member(&alice, sec) && !auth_is_member(&bob, sec));
    jval_free(sec);

    const char *bad[] = { "[]", "{\"admins\":[]}", "{\"members\":{\"names\":\"alice\"}}",
                          "{\"members\":{\"roles\":[1]}}" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sec = tree(bad[i]);
        mimeo_err e;
        CHECK_EQ_INT(auth_security_validate(sec, &e), MIMEO_EINVAL);
        jval_free(sec);
    }
    sec = tree("{\"admins\":{},\"members\":{\"names\":[\"a\"]},\"other\":1}");
    CHECK_EQ_INT(auth_security_validate(sec, NULL), 0);
    jval_free(sec);
    buf b;
    buf_init(&b, 0);
    auth_user_json(&b, &seller);
    CHECK_EQ_STR(buf_cstr(&b), "{\"name\":\"carol\",\"roles\":[\"sales\"]}");
    buf_reset(&b);
    auth_user_json(&b, &anon);
    CHECK_EQ_STR(buf_cstr(&b), "{\"name\":null,\"roles\":[]}");
    buf_destroy(&b);
    auth_user_destroy(&seller);
    auth_user_destroy(&dba);
    auth_user_destroy(&root);
}

/* Prepares a _users write; returns rc, the stored text in out. */
static int prep(const char *id, const char *doc, const char *old, const auth_user *u, buf *out,
                mimeo_err *e) {
    jval *d = tree(doc), *o = old ? tree(old) : NULL;
    buf_reset(out);
    memset(e, 0, sizeof *e);
    int rc = d ? auth_user_doc_prepare(id, strlen(id), d, o, u, 1000, out, e) : MIMEO_EBADJSON;
    jval_free(d);
    jval_free(o);
    return rc;
}

static void test_user_docs(void) {
    auth_user anon = user(NULL, NULL), alice = user("alice", NULL), bob = user("bob", NULL);
    auth_user root = user("root", "_admin");
    buf out;
    buf_init(&out, 0);
    mimeo_err e;

    /* Sign-up: the password is hashed, the cleartext never stored. */
    CHECK_EQ_INT(prep("org.couchdb.user:alice",
                      "{\"_id\":\"org.couchdb.user:alice\",\"name\":\"alice\",\"type\":\"user\","
                      "\"roles\":[],\"password\":\"wonder\"}", NULL, &anon, &out, &e), 0);
    CHECK(strstr(out.data, "wonder") == NULL);
    CHECK(strstr(out.data, "\"password\"") == NULL);
    CHECK(strstr(out.data, "\"password_scheme\":\"pbkdf2\"") != NULL);
    jval *stored = tree(out.data);
    auth_pw h;
    CHECK_EQ_INT(auth_pw_from_user_doc(stored, &h), 0);
    CHECK(auth_pw_check(&h, "wonder", 6));
    CHECK(!auth_pw_check(&h, "Wonder", 6));

    /* Sign-up with roles: only admins. */
    CHECK_EQ_INT(prep("org.couchdb.user:mallory",
                      "{\"name\":\"mallory\",\"type\":\"user\",\"roles\":[\"_admin\"],"
                      "\"password\":\"x\"}", NULL, &anon, &out, &e), MIMEO_EINVAL);
    CHECK_EQ_STR(e.error, "forbidden");
    CHECK_EQ_INT(prep("org.couchdb.user:mallory",
                      "{\"name\":\"mallory\",\"type\":\"user\",\"roles\":[\"ops\"],"
                      "\"password\":\"x\"}", NULL, &root, &out, &e), 0);

    /* CVE-2017-12635: two "roles" members — refused by the parser before any rule runs. */
    CHECK(tree("{\"name\":\"m\",\"type\":\"user\",\"roles\":[\"_admin\"],\"roles\":[],"
               "\"password\":\"x\"}") == NULL);
    CHECK(tree("{\"name\":\"m\",\"type\":\"user\",\"roles\":[],\"rol\\u0065s\":[\"_admin\"]}")
          == NULL);

    /* Updates: only the owner, without touching roles. */
    const char *old = "{\"name\":\"alice\",\"type\":\"user\",\"roles\":[\"sales\"]}";
    CHECK_EQ_INT(prep("org.couchdb.user:alice",
                      "{\"name\":\"alice\",\"type\":\"user\",\"roles\":[\"sales\"],"
                      "\"password\":\"new\"}", old, &alice, &out, &e), 0);
    CHECK_EQ_INT(prep("org.couchdb.user:alice",
                      "{\"name\":\"alice\",\"type\":\"user\",\"roles\":[\"sales\",\"_admin\"]}",
                      old, &alice, &out, &e), MIMEO_EINVAL);
    CHECK_EQ_STR(e.reason, "Only _admin may edit roles");
    CHECK_EQ_INT(prep("org.couchdb.user:alice",
                      "{\"name\":\"alice\",\"type\":\"user\",\"roles\":[\"sales\"],"
                      "\"password\":\"pwned\"}", old, &bob, &out, &e), MIMEO_EINVAL);
    CHECK_EQ_INT(prep("org.couchdb.user:alice",
                      "{\"name\":\"alice\",\"type\":\"user\",\"roles\":[\"sales\"],"
                      "\"password\":\"pwned\"}", old, &anon, &out, &e), MIMEO_EINVAL);
    CHECK_EQ_INT(prep("org.couchdb.user:alice",
                      "{\"name\":\"alice\",\"type\":\"user\",\"roles\":[\"x\"]}", old, &root,
                      &out, &e), 0);
    /* Deletion: owner or admin. */
    CHECK_EQ_INT(prep("org.couchdb.user:alice", "{\"_deleted\":true}", old, &bob, &out, &e),
                 MIMEO_EINVAL);
    CHECK_EQ_INT(prep("org.couchdb.user:alice", "{\"_deleted\":true}", old, &alice, &out, &e), 0);

    /* Shape. */
    const char *shapes[][2] = {
        { "org.couchdb.user:bob", "{\"name\":\"alice\",\"type\":\"user\",\"roles\":[]}" },
        { "org.couchdb.user:bob", "{\"name\":\"bob\",\"type\":\"admin\",\"roles\":[]}" },
        { "org.couchdb.user:bob", "{\"name\":\"bob\",\"type\":\"user\"}" },
        { "org.couchdb.user:bob", "{\"name\":\"bob\",\"type\":\"user\",\"roles\":[1]}" },
        { "org.couchdb.user:bob", "{\"name\":\"bob\",\"type\":\"user\",\"roles\":[],"
                                  "\"password\":7}" },
        { "org.couchdb.user:_bob", "{\"name\":\"_bob\",\"type\":\"user\",\"roles\":[]}" },
        { "org.couchdb.user:b:b", "{\"name\":\"b:b\",\"type\":\"user\",\"roles\":[]}" },
        { "bob", "{\"name\":\"bob\",\"type\":\"user\",\"roles\":[]}" },
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        CHECK_EQ_INT(prep(shapes[i][0], shapes[i][1], NULL, &root, &out, &e), MIMEO_EINVAL);
        CHECK_EQ_STR(e.error, "forbidden");
    }
    jval_free(stored);
    buf_destroy(&out);
    auth_user_destroy(&root);
}

/* The hash gate: 8 threads each run 5 real PBKDF2 checks through a gate of 2; at no moment
 * do more than 2 run (counted inside, independently of the gate's own peak), and a caller
 * that cannot get a slot within its wait is refused instead of queueing forever. */
#include <pthread.h>
static auth_gate gate_g;
static auth_pw gate_pw;
static pthread_mutex_t gate_count_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned gate_inside, gate_max_inside, gate_ran;

static void *gate_worker(void *arg) {
    (void)arg;
    for (int i = 0; i < 5; i++) {
        if (auth_gate_enter(&gate_g, 60000) != 0) continue;
        pthread_mutex_lock(&gate_count_lock);
        if (++gate_inside > gate_max_inside) gate_max_inside = gate_inside;
        pthread_mutex_unlock(&gate_count_lock);
        (void)auth_pw_check(&gate_pw, "wrong", 5);
        pthread_mutex_lock(&gate_count_lock);
        gate_inside--;
        gate_ran++;
        pthread_mutex_unlock(&gate_count_lock);
        auth_gate_leave(&gate_g);
    }
    return NULL;
}

static void test_gate(void) {
    auth_pw_new("right", 5, 20000, &gate_pw);
    auth_gate_init(&gate_g, 2);
    pthread_t t[8];
    for (int i = 0; i < 8; i++) pthread_create(&t[i], NULL, gate_worker, NULL);
    for (int i = 0; i < 8; i++) pthread_join(t[i], NULL);
    CHECK_EQ_INT(gate_ran, 40);
    CHECK(gate_max_inside <= 2);
    CHECK(gate_g.peak <= 2);
    CHECK_EQ_INT(gate_g.active, 0);

    /* Full gate: a caller waits its time out and is refused; a freed slot is taken again. */
    CHECK_EQ_INT(auth_gate_enter(&gate_g, 0), 0);
    CHECK_EQ_INT(auth_gate_enter(&gate_g, 0), 0);
    uint64_t t0 = check_now_ms();
    CHECK_EQ_INT(auth_gate_enter(&gate_g, 150), MIMEO_EBUSY);
    uint64_t waited = check_now_ms() - t0;
    CHECK(waited >= 140 && waited < 5000);
    CHECK_EQ_INT(gate_g.refused, 1);
    auth_gate_leave(&gate_g);
    CHECK_EQ_INT(auth_gate_enter(&gate_g, 0), 0);
    auth_gate_leave(&gate_g);
    auth_gate_leave(&gate_g);
    /* A higher limit lets more in at once. */
    auth_gate_set_limit(&gate_g, 3);
    for (int i = 0; i < 3; i++) CHECK_EQ_INT(auth_gate_enter(&gate_g, 0), 0);
    CHECK_EQ_INT(auth_gate_enter(&gate_g, 0), MIMEO_EBUSY);
    for (int i = 0; i < 3; i++) auth_gate_leave(&gate_g);
    auth_gate_destroy(&gate_g);
}

static void test_host_allowed(void) {
    const char *a = "127.0.0.1, peer.example:6984,[::1]";
    CHECK(auth_host_allowed(NULL, "http://10.0.0.1/x"));
    CHECK(auth_host_allowed("", "http://10.0.0.1/x"));
    CHECK(auth_host_allowed(a, "http://127.0.0.1:5984/db"));
    CHECK(auth_host_allowed(a, "http://u:p@127.0.0.1/db"));
    CHECK(auth_host_allowed(a, "https://PEER.example:6984/db"));
    CHECK(!auth_host_allowed(a, "https://peer.example:6985/db"));
    CHECK(auth_host_allowed(a, "http://[::1]:5984/db"));
    CHECK(!auth_host_allowed(a, "http://127.0.0.1@169.254.169.254/latest"));
    CHECK(!auth_host_allowed(a, "http://127.0.0.1.evil.example/x"));
    CHECK(!auth_host_allowed(a, "http://10.0.0.1/x?h=127.0.0.1"));
    CHECK(auth_host_allowed(a, "localdb"));   /* a database name, not a host */
}

int main(void) {
    RUN(test_pbkdf2_vectors);
    RUN(test_pw_config_roundtrip);
    RUN(test_ct_equal);
    RUN(test_cookie);
    RUN(test_basic);
    RUN(test_cache);
    RUN(test_throttle);
    RUN(test_gate);
    RUN(test_host_allowed);
    RUN(test_security);
    RUN(test_user_docs);
    return check_report();
}
