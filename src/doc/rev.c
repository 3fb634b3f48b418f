/* Revision ids ("N-hash") and document ids: the text rules CouchDB applies before anything
 * touches a revision tree, and mimeo's deterministic hash for new revisions. Everything here
 * is pure and bounded by its input length; the HTTP and db layers call these on untrusted
 * bytes. */
#include "revtree.h"

#include "mimeo.h"

#include <nettle/sha2.h>
#include <string.h>

/* ---- revision ids ---------------------------------------------------------------------- */

/* Characters a verbatim hash may hold. Quotes and backslashes are refused because rev ids are
 * echoed inside JSON strings and HTTP headers (ETag, If-Match) without escaping. */
static bool hash_char_ok(unsigned char c) {
    return c > 0x20 && c < 0x7f && c != '"' && c != '\'' && c != '\\';
}

/* A hex digit in lowercase, or 0: one lookup per character of every revision parsed. */
static const char rev_hex_lower[256] = {
    ['0'] = '0', ['1'] = '1', ['2'] = '2', ['3'] = '3', ['4'] = '4', ['5'] = '5', ['6'] = '6',
    ['7'] = '7', ['8'] = '8', ['9'] = '9', ['a'] = 'a', ['b'] = 'b', ['c'] = 'c', ['d'] = 'd',
    ['e'] = 'e', ['f'] = 'f', ['A'] = 'a', ['B'] = 'b', ['C'] = 'c', ['D'] = 'd', ['E'] = 'e',
    ['F'] = 'f',
};

int rev_hash_check(const char *s, size_t n, char *hash, size_t *hash_len) {
    if (!s || n == 0 || n > REV_HASH_MAX) return MIMEO_EBADREV;
    if (n == 32) {
        /* CouchDB stores a 32-char id as 16 binary bytes and prints it in lowercase, so a
         * 32-char id that is not hex cannot exist, and case does not distinguish ids. */
        for (size_t i = 0; i < 32; i++) {
            char c = rev_hex_lower[(unsigned char)s[i]];
            if (!c) return MIMEO_EBADREV;
            hash[i] = c;
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            if (!hash_char_ok((unsigned char)s[i])) return MIMEO_EBADREV;
            hash[i] = s[i];
        }
    }
    hash[n] = 0;
    *hash_len = n;
    return 0;
}

int rev_parse(const char *s, size_t n, bool allow_zero, uint64_t *gen, char *hash,
              size_t *hash_len) {
    if (!s) return MIMEO_EBADREV;
    const char *dash = memchr(s, '-', n);
    if (!dash || dash == s) return MIMEO_EBADREV;
    uint64_t g = 0;
    /* Leading zeros are accepted as CouchDB's list_to_integer does ("01-x" is generation 1);
     * signs are not. */
    for (const char *p = s; p < dash; p++) {
        if (*p < '0' || *p > '9') return MIMEO_EBADREV;
        unsigned d = (unsigned)(*p - '0');
        if (g > (UINT64_MAX - d) / 10) return MIMEO_EBADREV;
        g = g * 10 + d;
    }
    if (g == 0 && !allow_zero) return MIMEO_EBADREV;
    /* The hash is everything after the first '-', so it may itself contain '-'. */
    size_t off = (size_t)(dash - s) + 1;
    int rc = rev_hash_check(dash + 1, n - off, hash, hash_len);
    if (rc) return rc;
    *gen = g;
    return 0;
}

size_t rev_format(char *out, uint64_t gen, const char *hash, size_t hash_len) {
    char num[24];
    size_t k = sizeof num;
    do {
        num[--k] = (char)('0' + gen % 10);
        gen /= 10;
    } while (gen);
    size_t n = sizeof num - k;
    if (n + 1 + hash_len >= MIMEO_REV_MAX) {
        out[0] = 0;
        return 0;
    }
    memcpy(out, num + k, n);
    out[n] = '-';
    memcpy(out + n + 1, hash, hash_len);
    out[n + 1 + hash_len] = 0;
    return n + 1 + hash_len;
}

int rev_put(buf *b, uint64_t gen, const char *hash, size_t hash_len) {
    char text[MIMEO_REV_MAX];
    size_t n = rev_format(text, gen, hash, hash_len);
    return n ? buf_put(b, text, n) : MIMEO_EBADREV;
}

/* Each field is length-prefixed (8 bytes, big-endian) so that no two different
 * (parent, deleted, body) triples feed the hash the same byte stream. The tag names the
 * scheme: "mimeo-rev-1" was MD5; "mimeo-rev-2" is SHA-256 cut to 128 bits, because Nettle
 * runs SHA-256 on the CPU's SHA extensions where present (0.9 µs for a 1 KB body against
 * MD5's 2.0 µs here), and every new revision's body passes through it. Rev ids are opaque
 * to the protocol (any 32 hex digits do); only two nodes making the same edit independently
 * (a CRDT merge) need the same scheme to reach the same id, and a node of the old scheme
 * merely adds one more conflict that merges away. */
void rev_hash_new(const char *parent_rev, size_t parent_len, bool deleted,
                  const char *body, size_t body_len, char out[33]) {
    static const char tag[] = "mimeo-rev-2";
    struct sha256_ctx ctx;
    unsigned char len8[8], digest[16];
    unsigned char del = deleted ? 1 : 0;

    sha256_init(&ctx);
    sha256_update(&ctx, sizeof tag - 1, (const uint8_t *)tag);
    be64_put(len8, parent_len);
    sha256_update(&ctx, 8, len8);
    if (parent_len) sha256_update(&ctx, parent_len, (const uint8_t *)parent_rev);
    sha256_update(&ctx, 1, &del);
    be64_put(len8, body_len);
    sha256_update(&ctx, 8, len8);
    if (body_len) sha256_update(&ctx, body_len, (const uint8_t *)body);
    sha256_digest(&ctx, sizeof digest, digest);
    hex_encode(digest, sizeof digest, out);
}

/* ---- document ids ---------------------------------------------------------------------- */

static bool has_prefix(const char *s, size_t n, const char *prefix) {
    size_t k = strlen(prefix);
    return n >= k && memcmp(s, prefix, k) == 0;
}

int docid_validate(const char *id, size_t n, const char **reason) {
    return docid_validate_max(id, n, MIMEO_ID_MAX, reason);
}

int docid_validate_max(const char *id, size_t n, size_t max, const char **reason) {
    const char *why = NULL;
    /* The checks run in CouchDB's order (couch_doc:validate_docid), so an id that breaks two
     * rules gets the same reason from both servers. */
    if (!id || n == 0)
        why = "Document id must not be empty";
    else if (n == 8 && memcmp(id, "_design/", 8) == 0)
        why = "Illegal document id `_design/`";
    else if (n == 7 && memcmp(id, "_local/", 7) == 0)
        why = "Illegal document id `_local/`";
    else if (n > max)
        why = "Document id is too long";
    else if (!utf8_valid(id, n))
        why = "Document id must be valid UTF-8";
    else if (id[0] == '_' && !has_prefix(id, n, "_design/") && !has_prefix(id, n, "_local/"))
        why = "Only reserved document ids may start with underscore.";
    if (reason) *reason = why;
    return why ? MIMEO_EBADID : 0;
}
