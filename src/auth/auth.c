/* Password hashes (PBKDF2 via Nettle), constant-time compares, the checked-password cache,
 * the failed-login slowdown, AuthSession cookies and Basic credentials. No I/O except the
 * kernel's CSPRNG for salts; the caller passes the clock in. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <nettle/base64.h>
#include <nettle/hmac.h>
#include <nettle/pbkdf2.h>
#include <nettle/sha1.h>
#include <nettle/sha2.h>

#include "auth.h"

/* ---- small helpers ------------------------------------------------------------------------ */
/* Eight bytes a step: every request with credentials compares its whole Authorization header
 * or cookie with the one its connection proved, and byte steps were most of what that cost.
 * The accumulator is volatile so that no compiler turns the OR chain into an early exit. */
bool auth_ct_equal(const void *a, const void *b, size_t n) {
    const unsigned char *x = a, *y = b;
    volatile uint64_t d = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t u, v;
        memcpy(&u, x + i, 8);
        memcpy(&v, y + i, 8);
        d |= u ^ v;
    }
    for (; i < n; i++) d |= (uint64_t)(x[i] ^ y[i]);
    return d == 0;
}

/* FNV-1a over a few byte strings: slot selection only, never a security decision. */
static uint64_t auth_tag(const char *a, const char *b) {
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = a; p && *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    h = (h ^ 0xff) * 1099511628211ULL;   /* separator: ("ab","c") differs from ("a","bc") */
    for (const char *p = b; p && *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return h ? h : 1;
}

/* ---- password hashes ---------------------------------------------------------------------- */
static size_t auth_prf_len(auth_prf prf) {
    return prf == AUTH_PRF_SHA1 ? SHA1_DIGEST_SIZE : SHA256_DIGEST_SIZE;
}

static void auth_derive(auth_prf prf, unsigned iterations, const char *salt, size_t salt_len,
                        const char *pw, size_t n, unsigned char *out) {
    if (prf == AUTH_PRF_SHA1)
        pbkdf2_hmac_sha1(n, (const uint8_t *)pw, iterations, salt_len, (const uint8_t *)salt,
                         SHA1_DIGEST_SIZE, out);
    else
        pbkdf2_hmac_sha256(n, (const uint8_t *)pw, iterations, salt_len,
                           (const uint8_t *)salt, SHA256_DIGEST_SIZE, out);
}

int auth_pw_new(const char *pw, size_t n, unsigned iterations, auth_pw *out) {
    memset(out, 0, sizeof *out);
    unsigned char raw[16];
    random_bytes(raw, sizeof raw);
    hex_encode(raw, sizeof raw, out->salt);
    out->salt_len = 2 * sizeof raw;
    out->prf = AUTH_PRF_SHA256;
    out->iterations = iterations ? iterations : AUTH_DEFAULT_ITERATIONS;
    out->key_len = SHA256_DIGEST_SIZE;
    auth_derive(out->prf, out->iterations, out->salt, out->salt_len, pw, n, out->key);
    return 0;
}

bool auth_pw_is_hashed(const char *s) {
    return strncmp(s, "-pbkdf2", 7) == 0;
}

/* Fills salt, key and iterations from text fields; false when any is unusable. */
static bool auth_pw_fill(auth_pw *out, auth_prf prf, const char *key, size_t key_len,
                         const char *salt, size_t salt_len, const char *iter, size_t iter_len) {
    memset(out, 0, sizeof *out);
    out->prf = prf;
    out->key_len = auth_prf_len(prf);
    if (!hex_decode(key, key_len, out->key, out->key_len)) return false;
    if (salt_len == 0 || salt_len > AUTH_SALT_MAX) return false;
    memcpy(out->salt, salt, salt_len);
    out->salt_len = salt_len;
    if (iter_len == 0 || iter_len > 9) return false;
    unsigned long v = 0;
    for (size_t i = 0; i < iter_len; i++) {
        if (iter[i] < '0' || iter[i] > '9') return false;
        v = v * 10 + (unsigned long)(iter[i] - '0');
    }
    if (v == 0 || v > AUTH_MAX_ITERATIONS) return false;
    out->iterations = (unsigned)v;
    return true;
}

int auth_pw_parse_config(const char *s, auth_pw *out) {
    auth_prf prf;
    const char *p;
    if (strncmp(s, "-pbkdf2:sha256-", 15) == 0) { prf = AUTH_PRF_SHA256; p = s + 15; }
    else if (strncmp(s, "-pbkdf2:sha-", 12) == 0) { prf = AUTH_PRF_SHA1; p = s + 12; }
    else if (strncmp(s, "-pbkdf2-", 8) == 0) { prf = AUTH_PRF_SHA1; p = s + 8; }
    else return MIMEO_EINVAL;
    const char *c1 = strchr(p, ',');
    if (!c1) return MIMEO_EINVAL;
    const char *c2 = strchr(c1 + 1, ',');
    if (!c2) return MIMEO_EINVAL;
    if (!auth_pw_fill(out, prf, p, (size_t)(c1 - p), c1 + 1, (size_t)(c2 - c1 - 1), c2 + 1,
                      strlen(c2 + 1)))
        return MIMEO_EINVAL;
    if (memchr(out->salt, ',', out->salt_len)) return MIMEO_EINVAL;
    return 0;
}

int auth_pw_format_config(const auth_pw *h, char *out, size_t outlen) {
    char hex[2 * AUTH_KEY_MAX + 1];
    hex_encode(h->key, h->key_len, hex);
    int n = snprintf(out, outlen, "-pbkdf2:%s-%s,%.*s,%u",
                     h->prf == AUTH_PRF_SHA1 ? "sha" : "sha256", hex, (int)h->salt_len,
                     h->salt, h->iterations);
    return n < 0 || (size_t)n >= outlen ? MIMEO_ETOOLARGE : 0;
}

int auth_pw_from_user_doc(const jval *doc, auth_pw *out) {
    const jval *scheme = jval_get(doc, "password_scheme");
    if (!scheme || scheme->type != JV_STRING || strcmp(scheme->str, "pbkdf2") != 0)
        return MIMEO_ENOTFOUND;
    const jval *prfv = jval_get(doc, "pbkdf2_prf");
    auth_prf prf = AUTH_PRF_SHA1;   /* documents older than CouchDB 3.4 carry no prf */
    if (prfv) {
        if (prfv->type != JV_STRING) return MIMEO_ENOTFOUND;
        if (strcmp(prfv->str, "sha256") == 0) prf = AUTH_PRF_SHA256;
        else if (strcmp(prfv->str, "sha") != 0) return MIMEO_ENOTFOUND;
    }
    const jval *key = jval_get(doc, "derived_key");
    const jval *salt = jval_get(doc, "salt");
    const jval *iter = jval_get(doc, "iterations");
    if (!key || key->type != JV_STRING || !salt || salt->type != JV_STRING || !iter ||
        iter->type != JV_NUMBER)
        return MIMEO_ENOTFOUND;
    if (!auth_pw_fill(out, prf, key->str, key->len, salt->str, salt->len, iter->str, iter->len))
        return MIMEO_ENOTFOUND;
    return 0;
}

bool auth_pw_check(const auth_pw *h, const char *pw, size_t n) {
    unsigned char got[AUTH_KEY_MAX];
    if (h->key_len != auth_prf_len(h->prf)) return false;
    auth_derive(h->prf, h->iterations, h->salt, h->salt_len, pw, n, got);
    return auth_ct_equal(got, h->key, h->key_len);
}

/* ---- checked-password cache --------------------------------------------------------------- */
void auth_cache_init(auth_cache *c) {
    memset(c->slot, 0, sizeof c->slot);
    pthread_mutex_init(&c->lock, NULL);
}

void auth_cache_destroy(auth_cache *c) {
    pthread_mutex_destroy(&c->lock);
    memset(c->slot, 0, sizeof c->slot);
}

static void auth_proof(const auth_pw *h, const char *pw, size_t n, unsigned char out[32]) {
    struct sha256_ctx ctx;
    sha256_init(&ctx);
    sha256_update(&ctx, h->salt_len, (const uint8_t *)h->salt);
    sha256_update(&ctx, n, (const uint8_t *)pw);
    sha256_digest(&ctx, SHA256_DIGEST_SIZE, out);
}

/* Whether the slot of name holds h's key with pw's proof; *slot, *tag and proof are set
 * for a caller that stores on a miss. */
static bool auth_cache_find(auth_cache *c, const char *name, const auth_pw *h, const char *pw,
                            size_t n, auth_cache_slot **slot, uint64_t *tag,
                            unsigned char proof[32]) {
    *tag = auth_tag(name, "");
    auth_cache_slot *s = *slot = &c->slot[*tag % AUTH_CACHE_SLOTS];
    auth_proof(h, pw, n, proof);
    pthread_mutex_lock(&c->lock);
    bool hit = s->tag == *tag && auth_ct_equal(s->key, h->key, AUTH_KEY_MAX) &&
               auth_ct_equal(s->proof, proof, 32);
    pthread_mutex_unlock(&c->lock);
    return hit;
}

bool auth_cache_hit(auth_cache *c, const char *name, const auth_pw *h, const char *pw, size_t n) {
    auth_cache_slot *s;
    uint64_t tag;
    unsigned char proof[32];
    return auth_cache_find(c, name, h, pw, n, &s, &tag, proof);
}

bool auth_cache_check(auth_cache *c, const char *name, const auth_pw *h, const char *pw,
                      size_t n) {
    auth_cache_slot *s;
    uint64_t tag;
    unsigned char proof[32];
    if (auth_cache_find(c, name, h, pw, n, &s, &tag, proof)) return true;
    if (!auth_pw_check(h, pw, n)) return false;
    pthread_mutex_lock(&c->lock);
    s->tag = tag;
    memset(s->key, 0, sizeof s->key);
    memcpy(s->key, h->key, h->key_len);
    memcpy(s->proof, proof, sizeof proof);
    pthread_mutex_unlock(&c->lock);
    return true;
}

/* ---- the password-hash gate --------------------------------------------------------------- */
void auth_gate_init(auth_gate *g, unsigned limit) {
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    /* Waits are measured on the monotonic clock: a wall-clock step must not stretch them. */
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g->freed, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&g->lock, NULL);
    g->limit = limit ? limit : 1;
    g->active = g->peak = 0;
    g->refused = 0;
}

void auth_gate_destroy(auth_gate *g) {
    pthread_cond_destroy(&g->freed);
    pthread_mutex_destroy(&g->lock);
}

void auth_gate_set_limit(auth_gate *g, unsigned limit) {
    pthread_mutex_lock(&g->lock);
    g->limit = limit ? limit : 1;
    pthread_cond_broadcast(&g->freed);
    pthread_mutex_unlock(&g->lock);
}

int auth_gate_enter(auth_gate *g, unsigned wait_ms) {
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += wait_ms / 1000;
    until.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&g->lock);
    while (g->active >= g->limit) {
        if (pthread_cond_timedwait(&g->freed, &g->lock, &until) == ETIMEDOUT &&
            g->active >= g->limit) {
            g->refused++;
            pthread_mutex_unlock(&g->lock);
            return MIMEO_EBUSY;
        }
    }
    g->active++;
    if (g->active > g->peak) g->peak = g->active;
    pthread_mutex_unlock(&g->lock);
    return 0;
}

void auth_gate_leave(auth_gate *g) {
    pthread_mutex_lock(&g->lock);
    g->active--;
    pthread_cond_signal(&g->freed);
    pthread_mutex_unlock(&g->lock);
}

/* ---- replication hosts -------------------------------------------------------------------- */
bool auth_host_allowed(const char *allowed, const char *url) {
    if (!allowed || !allowed[0]) return true;
    const char *sep = strstr(url, "://");
    if (!sep) return true;   /* a local database name */
    const char *h = sep + 3;
    const char *end = h + strcspn(h, "/?#");
    const char *at = NULL;
    for (const char *p = h; p < end; p++)
        if (*p == '@') at = p;
    if (at) h = at + 1;
    const char *hend = h;
    if (*h == '[') {
        const char *rb = memchr(h, ']', (size_t)(end - h));
        hend = rb ? rb + 1 : end;
    } else {
        while (hend < end && *hend != ':') hend++;
    }
    size_t hl = (size_t)(hend - h), al = (size_t)(end - h);   /* host, host:port */
    const char *p = allowed;
    while (*p) {
        while (*p == ' ' || *p == ',') p++;
        const char *s = p;
        while (*p && *p != ',') p++;
        const char *e = p;
        while (e > s && e[-1] == ' ') e--;
        size_t n = (size_t)(e - s);
        if (n == 0) continue;
        if ((n == hl && strncasecmp(s, h, n) == 0) || (n == al && strncasecmp(s, h, n) == 0))
            return true;
    }
    return false;
}

/* ---- failed-login slowdown ---------------------------------------------------------------- */
#define AUTH_THROTTLE_FORGET_MS (3600u * 1000u)

void auth_throttle_init(auth_throttle *t) {
    memset(t->slot, 0, sizeof t->slot);
    random_bytes(t->key, sizeof t->key);
    pthread_mutex_init(&t->lock, NULL);
}

void auth_throttle_destroy(auth_throttle *t) {
    pthread_mutex_destroy(&t->lock);
}

/* HMAC-SHA256(random key, name NUL addr), 64 bits: an attacker cannot pick a pair that
 * shares a slot with the pair it is guessing. */
static uint64_t auth_throttle_tag(const auth_throttle *t, const char *name, const char *addr) {
    struct hmac_sha256_ctx ctx;
    unsigned char mac[SHA256_DIGEST_SIZE];
    hmac_sha256_set_key(&ctx, sizeof t->key, t->key);
    hmac_sha256_update(&ctx, strlen(name) + 1, (const uint8_t *)name);
    hmac_sha256_update(&ctx, strlen(addr), (const uint8_t *)addr);
    hmac_sha256_digest(&ctx, sizeof mac, mac);
    uint64_t tag = 0;
    for (int i = 0; i < 8; i++) tag = tag << 8 | mac[i];
    return tag ? tag : 1;
}

/* The slot of a pair. An empty or stale slot is taken; a slot that another live pair holds
 * is shared (both then count each other's failures: stricter, never looser — taking it over
 * would let a guesser wipe its own record by failing once under a colliding pair). */
static auth_throttle_slot *auth_throttle_slot_of(auth_throttle *t, uint64_t tag,
                                                 uint64_t now_ms) {
    auth_throttle_slot *s = &t->slot[tag % AUTH_THROTTLE_SLOTS];
    if (s->tag == 0 || (s->last_ms && now_ms - s->last_ms > AUTH_THROTTLE_FORGET_MS &&
                        now_ms >= s->next_ms)) {
        s->tag = tag;
        s->failures = 0;
        s->next_ms = 0;
        s->last_ms = 0;
    }
    return s;
}

static uint64_t auth_throttle_delay(unsigned failures) {
    if (failures < AUTH_THROTTLE_FREE) return 0;
    unsigned k = failures - AUTH_THROTTLE_FREE;
    if (k > 16) k = 16;
    uint64_t d = (uint64_t)AUTH_THROTTLE_BASE_MS << k;
    return d > AUTH_THROTTLE_MAX_MS ? AUTH_THROTTLE_MAX_MS : d;
}

int64_t auth_throttle_enter(auth_throttle *t, const char *name, const char *addr,
                            uint64_t now_ms) {
    uint64_t tag = auth_throttle_tag(t, name, addr);
    pthread_mutex_lock(&t->lock);
    auth_throttle_slot *s = auth_throttle_slot_of(t, tag, now_ms);
    uint64_t d = auth_throttle_delay(s->failures);
    int64_t wait = 0;
    if (d > 0) {
        /* Attempts queue: each one takes the next free time plus the delay. */
        uint64_t at = (s->next_ms > now_ms ? s->next_ms : now_ms) + d;
        if (at - now_ms > AUTH_THROTTLE_QUEUE_MS) {
            pthread_mutex_unlock(&t->lock);
            return -1;
        }
        s->next_ms = at;
        wait = (int64_t)(at - now_ms);
    }
    pthread_mutex_unlock(&t->lock);
    return wait;
}

void auth_throttle_result(auth_throttle *t, const char *name, const char *addr, bool ok,
                          uint64_t now_ms) {
    uint64_t tag = auth_throttle_tag(t, name, addr);
    pthread_mutex_lock(&t->lock);
    if (ok) {
        /* Only the pair's own record is cleared: a success never wipes another's. */
        auth_throttle_slot *s = &t->slot[tag % AUTH_THROTTLE_SLOTS];
        if (s->tag == tag) memset(s, 0, sizeof *s);
        pthread_mutex_unlock(&t->lock);
        return;
    }
    auth_throttle_slot *s = auth_throttle_slot_of(t, tag, now_ms);
    if (s->failures < 1000000) s->failures++;
    s->last_ms = now_ms;
    pthread_mutex_unlock(&t->lock);
}

/* ---- AuthSession cookies ------------------------------------------------------------------ */
/* Longer secrets are cut here: the HMAC key is the secret followed by the salt. */
#define AUTH_SECRET_MAX 512

static void auth_cookie_mac(const char *data, size_t n, const char *salt, size_t salt_len,
                            const unsigned char *secret, size_t secret_len,
                            unsigned char out[32]) {
    /* CouchDB keys the HMAC with the server secret followed by the user's salt. */
    struct hmac_sha256_ctx ctx;
    unsigned char keybuf[AUTH_SECRET_MAX + AUTH_SALT_MAX];
    size_t kl = 0;
    if (secret_len > AUTH_SECRET_MAX) secret_len = AUTH_SECRET_MAX;
    memcpy(keybuf, secret, secret_len);
    kl += secret_len;
    memcpy(keybuf + kl, salt, salt_len);
    kl += salt_len;
    hmac_sha256_set_key(&ctx, kl, keybuf);
    hmac_sha256_update(&ctx, n, (const uint8_t *)data);
    hmac_sha256_digest(&ctx, SHA256_DIGEST_SIZE, out);
    memset(keybuf, 0, sizeof keybuf);
}

int auth_cookie_make(buf *out, const char *name, uint64_t t, const char *salt, size_t salt_len,
                     const unsigned char *secret, size_t secret_len) {
    size_t nl = strlen(name);
    if (nl > AUTH_NAME_MAX || salt_len > AUTH_SALT_MAX) return MIMEO_EINVAL;
    char raw[AUTH_NAME_MAX + 32 + 40];
    int hl = snprintf(raw, sizeof raw, "%s:%llX", name, (unsigned long long)t);
    if (hl < 0 || (size_t)hl >= sizeof raw - 40) return MIMEO_EINVAL;
    unsigned char mac[32];
    auth_cookie_mac(raw, (size_t)hl, salt, salt_len, secret, secret_len, mac);
    raw[hl] = ':';
    memcpy(raw + hl + 1, mac, sizeof mac);
    size_t rl = (size_t)hl + 1 + sizeof mac;

    char enc[BASE64_ENCODE_LENGTH(sizeof raw) + 8];
    struct base64_encode_ctx ec;
    base64url_encode_init(&ec);
    size_t el = base64_encode_update(&ec, enc, rl, (const uint8_t *)raw);
    el += base64_encode_final(&ec, enc + el);
    /* CouchDB's cookies carry no '=' padding. */
    while (el > 0 && enc[el - 1] == '=') el--;
    return buf_put(out, enc, el);
}

int auth_cookie_parse(const char *v, size_t n, auth_cookie *out) {
    memset(out, 0, sizeof *out);
    if (n == 0 || n > 2 * (AUTH_NAME_MAX + 64)) return MIMEO_EINVAL;
    char padded[2 * (AUTH_NAME_MAX + 64) + 4];
    memcpy(padded, v, n);
    while (n % 4) padded[n++] = '=';
    uint8_t raw[BASE64_DECODE_LENGTH(sizeof padded)];
    size_t rl = sizeof raw;
    struct base64_decode_ctx dc;
    base64url_decode_init(&dc);
    if (!base64_decode_update(&dc, &rl, raw, n, padded) || !base64_decode_final(&dc))
        return MIMEO_EINVAL;
    /* name ':' HEXTIME ':' MAC — names cannot contain ':' (the _users rules refuse it), the
     * MAC is binary and may. */
    const uint8_t *c1 = memchr(raw, ':', rl);
    if (!c1 || c1 == raw || (size_t)(c1 - raw) > AUTH_NAME_MAX) return MIMEO_EINVAL;
    const uint8_t *t = c1 + 1;
    const uint8_t *c2 = memchr(t, ':', rl - (size_t)(t - raw));
    if (!c2 || c2 == t || c2 - t > 15) return MIMEO_EINVAL;
    uint64_t time = 0;
    for (const uint8_t *p = t; p < c2; p++) {
        int d = hex_digit(*p);
        if (d < 0) return MIMEO_EINVAL;
        time = time << 4 | (uint64_t)d;
    }
    size_t ml = rl - (size_t)(c2 + 1 - raw);
    if (ml != 32) return MIMEO_EINVAL;
    memcpy(out->name, raw, (size_t)(c1 - raw));
    out->name[c1 - raw] = '\0';
    if (strlen(out->name) != (size_t)(c1 - raw)) return MIMEO_EINVAL;   /* NUL inside */
    out->time = time;
    memcpy(out->mac, c2 + 1, ml);
    out->mac_len = ml;
    return 0;
}

/* A session cookie comes back on every request, and its HMAC (keyed by the secret and the
 * user's salt: about seven SHA-256 blocks) would be most of what an authenticated GET costs.
 * A MAC once verified is remembered beside everything it was computed over; the same cookie
 * under the same salt and secret is then taken on compares alone. A changed password (new
 * salt) or secret misses and is verified afresh; expiry is checked on every request. */
#define AUTH_COOKIE_MEMO 64
typedef struct {
    unsigned char mac[32];
    uint64_t      time;
    char          name[AUTH_NAME_MAX + 1];
    char          salt[AUTH_SALT_MAX];
    size_t        salt_len;
    unsigned char secret[AUTH_SECRET_MAX];
    size_t        secret_len;
} auth_cookie_memo;
static auth_cookie_memo cookie_memo[AUTH_COOKIE_MEMO];
static pthread_mutex_t cookie_memo_lock = PTHREAD_MUTEX_INITIALIZER;

static auth_cookie_memo *auth_cookie_memo_slot(const unsigned char mac[32]) {
    uint64_t h;
    memcpy(&h, mac, sizeof h);
    return &cookie_memo[h % AUTH_COOKIE_MEMO];
}

static bool auth_cookie_memo_holds(const auth_cookie_memo *m, const auth_cookie *c,
                                   const char *salt, size_t salt_len,
                                   const unsigned char *secret, size_t secret_len) {
    return m->salt_len == salt_len && m->secret_len == secret_len && m->time == c->time &&
           auth_ct_equal(m->mac, c->mac, 32) && strcmp(m->name, c->name) == 0 &&
           memcmp(m->salt, salt, salt_len) == 0 && memcmp(m->secret, secret, secret_len) == 0;
}

bool auth_cookie_fresh(const auth_cookie *c, uint64_t now, unsigned timeout) {
    return c->time <= now + 60 && now < c->time + timeout;   /* clock skew: 60 s */
}

bool auth_cookie_valid(const auth_cookie *c, const char *salt, size_t salt_len,
                       const unsigned char *secret, size_t secret_len, uint64_t now,
                       unsigned timeout) {
    if (c->mac_len != 32 || salt_len > AUTH_SALT_MAX) return false;
    if (!auth_cookie_fresh(c, now, timeout)) return false;
    if (secret_len > AUTH_SECRET_MAX) secret_len = AUTH_SECRET_MAX;   /* as auth_cookie_mac */
    auth_cookie_memo *m = auth_cookie_memo_slot(c->mac);
    pthread_mutex_lock(&cookie_memo_lock);
    bool known = auth_cookie_memo_holds(m, c, salt, salt_len, secret, secret_len);
    pthread_mutex_unlock(&cookie_memo_lock);
    if (known) return true;
    char data[AUTH_NAME_MAX + 32];
    int hl = snprintf(data, sizeof data, "%s:%llX", c->name, (unsigned long long)c->time);
    if (hl < 0 || (size_t)hl >= sizeof data) return false;
    unsigned char mac[32];
    auth_cookie_mac(data, (size_t)hl, salt, salt_len, secret, secret_len, mac);
    if (!auth_ct_equal(mac, c->mac, 32)) return false;
    pthread_mutex_lock(&cookie_memo_lock);
    memcpy(m->mac, mac, sizeof mac);
    m->time = c->time;
    snprintf(m->name, sizeof m->name, "%s", c->name);
    memcpy(m->salt, salt, salt_len);
    m->salt_len = salt_len;
    memcpy(m->secret, secret, secret_len);
    m->secret_len = secret_len;
    pthread_mutex_unlock(&cookie_memo_lock);
    return true;
}

/* ---- Basic credentials -------------------------------------------------------------------- */
int auth_basic_parse(const char *h, char **name, char **password) {
    *name = *password = NULL;
    while (*h == ' ') h++;
    if (strncasecmp(h, "Basic ", 6) != 0) return MIMEO_EINVAL;
    h += 6;
    while (*h == ' ') h++;
    size_t n = strlen(h);
    while (n > 0 && h[n - 1] == ' ') n--;
    if (n == 0 || n > 4096) return MIMEO_EINVAL;
    uint8_t *raw = malloc(BASE64_DECODE_LENGTH(n) + 1);
    if (!raw) return MIMEO_ENOMEM;
    size_t rl = BASE64_DECODE_LENGTH(n);
    struct base64_decode_ctx dc;
    base64_decode_init(&dc);
    if (!base64_decode_update(&dc, &rl, raw, n, h) || !base64_decode_final(&dc)) {
        free(raw);
        return MIMEO_EINVAL;
    }
    uint8_t *colon = memchr(raw, ':', rl);
    if (!colon || memchr(raw, '\0', rl)) {
        free(raw);
        return MIMEO_EINVAL;
    }
    size_t nl = (size_t)(colon - raw), pl = rl - nl - 1;
    *name = strndup((const char *)raw, nl);
    *password = strndup((const char *)colon + 1, pl);
    memset(raw, 0, rl);
    free(raw);
    if (!*name || !*password) {
        free(*name);
        free(*password);
        *name = *password = NULL;
        return MIMEO_ENOMEM;
    }
    return 0;
}
