/* mesh wire codec: builds and parses the authenticated messages drawn in mesh.h.
 * Every byte from the network is bounds-checked here; nothing is used before the MAC over the
 * whole message has verified (in constant time). */
#include <stdlib.h>
#include <string.h>

#include <nettle/hmac.h>
#include <nettle/memops.h>

#include "mimeo.h"
#include "mesh.h"

#define MESH_MAGIC 0x6d
#define MESH_VERSION 1

static void mac_compute(const uint8_t *key, size_t keylen, const uint8_t *data, size_t len,
                        uint8_t out[MESH_MAC_LEN]) {
    struct hmac_sha256_ctx ctx;
    hmac_sha256_set_key(&ctx, keylen, key);
    hmac_sha256_update(&ctx, len, data);
    hmac_sha256_digest(&ctx, MESH_MAC_LEN, out);
}

/* ---- reading ---------------------------------------------------------------------------- */

struct rd {
    const uint8_t *p;
    size_t off, end;
    int err;
};

static uint64_t rd_uint(struct rd *r, int bytes) {
    if (r->err || r->end - r->off < (size_t)bytes) { r->err = 1; return 0; }
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v = (v << 8) | r->p[r->off++];
    return v;
}

/* A length-prefixed string into out (cap includes the NUL); NULs inside are malformed, since
 * names and URLs are later used as C strings. */
static void rd_str(struct rd *r, char *out, size_t cap) {
    size_t n = (size_t)rd_uint(r, 1);
    if (r->err || n >= cap || r->end - r->off < n) { r->err = 1; out[0] = '\0'; return; }
    if (memchr(r->p + r->off, 0, n)) { r->err = 1; out[0] = '\0'; return; }
    memcpy(out, r->p + r->off, n);
    out[n] = '\0';
    r->off += n;
}

int mesh_wire_parse(const uint8_t *key, size_t keylen, const uint8_t *data, size_t len,
                    struct mesh_hdr *h) {
    memset(h, 0, sizeof *h);
    if (len < 4 + 8 + 4 + 2 + 2 + MESH_MAC_LEN || len > MESH_STREAM_MAX) return MIMEO_EINVAL;
    uint8_t mac[MESH_MAC_LEN];
    mac_compute(key, keylen, data, len - MESH_MAC_LEN, mac);
    if (!memeql_sec(mac, data + len - MESH_MAC_LEN, MESH_MAC_LEN)) return MIMEO_ECORRUPT;

    struct rd r = { data, 0, len - MESH_MAC_LEN, 0 };
    if (rd_uint(&r, 1) != MESH_MAGIC || rd_uint(&r, 1) != MESH_VERSION) return MIMEO_EINVAL;
    h->type = (int)rd_uint(&r, 1);
    h->flags = (int)rd_uint(&r, 1);
    h->seq = rd_uint(&r, 8);
    h->incarnation = (uint32_t)rd_uint(&r, 4);
    rd_str(&r, h->name, sizeof h->name);
    rd_str(&r, h->url, sizeof h->url);
    switch (h->type) {
    case MESH_T_PING:
        h->probe = (uint32_t)rd_uint(&r, 4);
        rd_str(&r, h->target, sizeof h->target);
        break;
    case MESH_T_PING_REQ:
        h->probe = (uint32_t)rd_uint(&r, 4);
        rd_str(&r, h->target, sizeof h->target);
        rd_str(&r, h->target_url, sizeof h->target_url);
        break;
    case MESH_T_ACK:
    case MESH_T_NACK:
        h->probe = (uint32_t)rd_uint(&r, 4);
        break;
    case MESH_T_GOSSIP:
        break;
    case MESH_T_SYNC:
        if (h->flags & MESH_F_DIGEST) h->digest = rd_uint(&r, 8);
        break;
    default:
        return MIMEO_EINVAL;
    }
    h->nrec = (uint16_t)rd_uint(&r, 2);
    if (r.err || h->name[0] == '\0' || h->url[0] == '\0') return MIMEO_EINVAL;
    h->rec_off = r.off;
    h->rec_end = r.end;
    return 0;
}

int mesh_wire_rec_next(const uint8_t *data, const struct mesh_hdr *h, size_t *off,
                       struct mesh_rec *rec) {
    if (*off >= h->rec_end) return 0;
    struct rd r = { data, *off, h->rec_end, 0 };
    memset(rec, 0, sizeof *rec);
    rec->kind = (int)rd_uint(&r, 1);
    switch (rec->kind) {
    case MESH_K_ALIVE:
    case MESH_K_SUSPECT:
    case MESH_K_DEAD:
    case MESH_K_LEFT:
        rec->incarnation = (uint32_t)rd_uint(&r, 4);
        rd_str(&r, rec->name, MESH_NAME_MAX + 1);
        rd_str(&r, rec->extra, sizeof rec->extra);
        if (!r.err && rec->name[0] == '\0') r.err = 1;
        if (!r.err && rec->kind == MESH_K_ALIVE && rec->extra[0] == '\0') r.err = 1;
        break;
    case MESH_K_DB: {
        uint64_t st = rd_uint(&r, 1);
        rec->version = rd_uint(&r, 8);
        rd_str(&r, rec->name, sizeof rec->name);
        if (!r.err && (st > 1 || rec->name[0] == '\0')) r.err = 1;
        rec->deleted = (int)st;
        break;
    }
    default:
        return MIMEO_EINVAL;
    }
    if (r.err) return MIMEO_EINVAL;
    *off = r.off;
    return 1;
}

/* ---- writing ---------------------------------------------------------------------------- */

static void wb_put(struct mesh_wbuf *w, const void *src, size_t n) {
    if (w->err) return;
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 512;
        while (cap < w->len + n) cap *= 2;
        uint8_t *p = realloc(w->p, cap);
        if (!p) { w->err = MIMEO_ENOMEM; return; }
        w->p = p;
        w->cap = cap;
    }
    memcpy(w->p + w->len, src, n);
    w->len += n;
}

static void wb_uint(struct mesh_wbuf *w, uint64_t v, int bytes) {
    uint8_t b[8];
    for (int i = bytes - 1; i >= 0; i--) { b[i] = (uint8_t)v; v >>= 8; }
    wb_put(w, b, (size_t)bytes);
}

static void wb_str(struct mesh_wbuf *w, const char *s) {
    size_t n = strlen(s);
    if (n > 255) { w->err = MIMEO_EINVAL; return; }
    wb_uint(w, n, 1);
    wb_put(w, s, n);
}

void mesh_wire_begin(struct mesh_wbuf *w, size_t limit, const struct mesh_hdr *h) {
    memset(w, 0, sizeof *w);
    w->limit = limit;
    uint8_t head[4] = { MESH_MAGIC, MESH_VERSION, (uint8_t)h->type, (uint8_t)h->flags };
    wb_put(w, head, 4);
    wb_uint(w, h->seq, 8);
    wb_uint(w, h->incarnation, 4);
    wb_str(w, h->name);
    wb_str(w, h->url);
    switch (h->type) {
    case MESH_T_PING:
        wb_uint(w, h->probe, 4);
        wb_str(w, h->target);
        break;
    case MESH_T_PING_REQ:
        wb_uint(w, h->probe, 4);
        wb_str(w, h->target);
        wb_str(w, h->target_url);
        break;
    case MESH_T_ACK:
    case MESH_T_NACK:
        wb_uint(w, h->probe, 4);
        break;
    case MESH_T_SYNC:
        if (h->flags & MESH_F_DIGEST) wb_uint(w, h->digest, 8);
        break;
    default:
        break;
    }
    w->nrec_off = w->len;
    wb_uint(w, 0, 2);
}

int mesh_wire_add(struct mesh_wbuf *w, const uint8_t *rec, size_t len) {
    if (w->err || w->len + len + MESH_MAC_LEN > w->limit) return 0;
    wb_put(w, rec, len);
    return !w->err;
}

size_t mesh_wire_rec_encode(const struct mesh_rec *r, uint8_t *out, size_t cap) {
    struct mesh_wbuf w;
    memset(&w, 0, sizeof w);
    wb_uint(&w, (uint64_t)r->kind, 1);
    if (r->kind == MESH_K_DB) {
        wb_uint(&w, r->deleted ? 1 : 0, 1);
        wb_uint(&w, r->version, 8);
        wb_str(&w, r->name);
    } else {
        wb_uint(&w, r->incarnation, 4);
        wb_str(&w, r->name);
        wb_str(&w, r->extra);
    }
    size_t n = 0;
    if (!w.err && w.len <= cap) {
        memcpy(out, w.p, w.len);
        n = w.len;
    }
    free(w.p);
    return n;
}

int mesh_wire_finish(struct mesh_wbuf *w, const uint8_t *key, size_t keylen, uint16_t nrec) {
    if (w->err) return w->err;
    if (w->len + MESH_MAC_LEN > w->limit) return MIMEO_ETOOLARGE;
    w->p[w->nrec_off] = (uint8_t)(nrec >> 8);
    w->p[w->nrec_off + 1] = (uint8_t)nrec;
    uint8_t mac[MESH_MAC_LEN];
    mac_compute(key, keylen, w->p, w->len, mac);
    wb_put(w, mac, MESH_MAC_LEN);
    return w->err;
}
