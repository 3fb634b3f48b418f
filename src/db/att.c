/* The _attachments member of documents: reading it on writes (inline data, stubs, follows
 * data), storing a revision's attachments as stubs in its body plus a references record,
 * rewriting it on reads (data, follows, encoding info, atts_since), the standalone
 * attachment calls (put, delete) and the chunked reader. Blob storage itself is blob.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <nettle/base64.h>

#include "att_int.h"

#define DEFAULT_TYPES "text/*, application/javascript, application/json, application/xml"
#define OCTETS "application/octet-stream"

/* ---- compression choice ---------------------------------------------------------------- */

int mimeo_att_gzip_level(mimeo_env *env, const char *content_type) {
    int level = env->opts.att_compression_level;
    if (level < 0 || !content_type) return 0;
    if (level == 0) level = 8;
    if (level > 9) level = 9;
    const char *types = env->opts.att_compressible_types ? env->opts.att_compressible_types
                                                         : DEFAULT_TYPES;
    /* The media type without parameters or spaces. */
    while (*content_type == ' ') content_type++;
    size_t cl = strcspn(content_type, "; ");
    for (const char *p = types; *p;) {
        while (*p == ' ' || *p == ',') p++;
        const char *s = p;
        while (*p && *p != ',') p++;
        const char *e = p;
        while (e > s && e[-1] == ' ') e--;
        size_t n = (size_t)(e - s);
        if (n == 0) continue;
        if (n >= 2 && s[n - 1] == '*' && s[n - 2] == '/') {
            if (cl >= n - 1 && strncasecmp(content_type, s, n - 1) == 0) return level;
        } else if (n == cl && strncasecmp(content_type, s, n) == 0) {
            return level;
        }
    }
    return 0;
}

/* ---- references records -------------------------------------------------------------- */

static size_t key_refs(unsigned char *k, uint64_t dbid, uint64_t body) {
    k[0] = 'r';
    be64_put(k + 1, dbid);
    be64_put(k + 9, body);
    return 17;
}

static int refs_decode(const unsigned char *p, size_t n, att_refs *out) {
    const unsigned char *end = p + n;
    memset(out, 0, sizeof *out);
    if (n < 1 || p[0] != 1) return MIMEO_ECORRUPT;
    p++;
    uint64_t off, count;
    if (varint_get(&p, end, &off) || varint_get(&p, end, &count)) return MIMEO_ECORRUPT;
    if (count > n) return MIMEO_ECORRUPT;
    out->att_off = (size_t)off;
    out->refs = calloc(count ? count : 1, sizeof *out->refs);
    if (!out->refs) return MIMEO_ENOMEM;
    out->count = (size_t)count;
    for (size_t i = 0; i < count; i++) {
        att_ref *r = &out->refs[i];
        uint64_t l;
        if (end - p < 32) goto bad;
        memcpy(r->sha, p, 32);
        p += 32;
        if (varint_get(&p, end, &r->revpos) || varint_get(&p, end, &l) ||
            l > (uint64_t)(end - p)) goto bad;
        r->name = (const char *)p;
        r->name_len = (size_t)l;
        p += l;
        if (varint_get(&p, end, &l) || l > (uint64_t)(end - p)) goto bad;
        r->type = (const char *)p;
        r->type_len = (size_t)l;
        p += l;
    }
    return 0;
bad:
    free(out->refs);
    out->refs = NULL;
    return MIMEO_ECORRUPT;
}

int att_refs_load(MDB_txn *txn, const store_tables *t, uint64_t dbid, uint64_t body,
                  att_refs *out) {
    memset(out, 0, sizeof *out);
    unsigned char key[17];
    MDB_val k = {key_refs(key, dbid, body), key}, v;
    int rc = mdb_get(txn, t->blobs, &k, &v);
    if (rc) return store_err(rc);
    return refs_decode(v.mv_data, v.mv_size, out);
}

/* The entry of attachment name in r (the last one, should a record name it twice), or NULL. */
static const att_ref *refs_find(const att_refs *r, const char *name, size_t len) {
    for (size_t i = r->count; i-- > 0;)
        if (r->refs[i].name_len == len && memcmp(r->refs[i].name, name, len) == 0)
            return &r->refs[i];
    return NULL;
}

void att_refs_destroy(att_refs *r) {
    free(r->refs);
    r->refs = NULL;
    r->count = 0;
}

static int refs_drop_key(MDB_txn *txn, const store_tables *t, MDB_val *k, size_t *budget) {
    MDB_val v;
    int rc = mdb_get(txn, t->blobs, k, &v);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return store_err(rc);
    /* The record is read before anything is deleted: deletes may move its bytes. */
    unsigned char *copy = malloc(v.mv_size ? v.mv_size : 1);
    if (!copy) return MIMEO_ENOMEM;
    memcpy(copy, v.mv_data, v.mv_size);
    att_refs r;
    rc = refs_decode(copy, v.mv_size, &r);
    for (size_t i = 0; !rc && i < r.count; i++) rc = blob_unref(txn, t, r.refs[i].sha, budget);
    att_refs_destroy(&r);
    free(copy);
    if (!rc) rc = store_err(mdb_del(txn, t->blobs, k, NULL));
    if (budget && *budget) (*budget)--;
    return rc;
}

int att_refs_drop(MDB_txn *txn, const store_tables *t, uint64_t dbid, uint64_t body) {
    unsigned char key[17];
    MDB_val k = {key_refs(key, dbid, body), key};
    return refs_drop_key(txn, t, &k, NULL);
}

int att_refs_drop_db(MDB_txn *txn, const store_tables *t, uint64_t dbid, size_t *budget) {
    enum { PAGE = 256 };
    for (;;) {
        if (*budget == 0) return 1;
        unsigned char keys[PAGE][17];
        size_t n = 0;
        MDB_cursor *cur;
        int rc = store_err(mdb_cursor_open(txn, t->blobs, &cur));
        if (rc) return rc;
        unsigned char start[17];
        MDB_val k = {key_refs(start, dbid, 0), start}, v;
        int mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        while (mrc == 0 && n < PAGE && k.mv_size == 17 && memcmp(k.mv_data, start, 9) == 0) {
            memcpy(keys[n++], k.mv_data, 17);
            mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
        mdb_cursor_close(cur);
        if (mrc && mrc != MDB_NOTFOUND) return store_err(mrc);
        if (n == 0) return 0;
        for (size_t i = 0; i < n; i++) {
            MDB_val dk = {17, keys[i]};
            if ((rc = refs_drop_key(txn, t, &dk, budget))) return rc;
        }
    }
}

/* The meta of a blob a references record names: a record never outlives its blobs, so a
 * missing one is corruption. */
static int ref_meta_get(MDB_txn *txn, const store_tables *t, const unsigned char *sha,
                        blob_meta *m) {
    int rc = blob_meta_get(txn, t, sha, m);
    return rc == MIMEO_ENOTFOUND ? MIMEO_ECORRUPT : rc;
}

/* ---- writes: reading _attachments ------------------------------------------------------ */

void att_set_destroy(att_set *s) {
    for (size_t i = 0; i < s->n; i++)
        if (s->e[i].owned) mimeo_blob_free(s->e[i].blob);
    free(s->e);
    memset(s, 0, sizeof *s);
}

static int bad(mimeo_err *err, const char *error, const char *fmt, const char *name,
               size_t len) {
    char reason[MIMEO_ERR_REASON_MAX];
    int n = len > 120 ? 120 : (int)len;
    snprintf(reason, sizeof reason, fmt, n, name);
    db_err_set(err, MIMEO_EINVAL, error, reason);
    return MIMEO_EINVAL;
}

/* Decodes base64 text into a new blob, compressed when its type says so. */
static int inline_blob(mimeo_env *env, const jval *data, const char *type, mimeo_blob **out) {
    mimeo_blob_opts o = {.gzip_level = mimeo_att_gzip_level(env, type ? type : OCTETS)};
    mimeo_blob *b;
    int rc = mimeo_blob_new(env, &o, &b);
    if (rc) return rc;
    /* Small data stays in memory until the write stores it (or finds it stored). Big data
     * (PouchDB sends 50 MiB attachments inline) streams through the blob's buffers like an
     * upload, so the request holds its text once, not the decoded bytes as well. */
    b->in_memory = data->len / 4 * 3 <= BLOB_MEM;
    struct base64_decode_ctx ctx;
    base64_decode_init(&ctx);
    uint8_t dst[BASE64_DECODE_LENGTH(16384)];
    for (size_t off = 0; !rc && off < data->len; off += 16384) {
        size_t n = data->len - off < 16384 ? data->len - off : 16384;
        size_t got = sizeof dst;
        if (!base64_decode_update(&ctx, &got, dst, n, data->str + off)) rc = 1;
        else rc = mimeo_blob_write(b, dst, got);
    }
    if (!rc && !base64_decode_final(&ctx)) rc = 1;
    if (!rc) rc = mimeo_blob_finish(b);
    if (rc) {
        mimeo_blob_free(b);
        return rc;
    }
    *out = b;
    return 0;
}

void att_cache_destroy(att_cache *c) {
    free(c->e);
    memset(c, 0, sizeof *c);
}

static mimeo_blob *cache_find(const att_cache *c, const jval *data, int level) {
    for (size_t i = 0; c && i < c->n; i++)
        if (c->e[i].len == data->len && c->e[i].level == level &&
            memcmp(c->e[i].text, data->str, data->len) == 0)
            return c->e[i].blob;
    return NULL;
}

static void cache_add(att_cache *c, const jval *data, int level, mimeo_blob *b) {
    if (!c || data->len < 64) return;
    if (ARRAY_GROW(c->e, c->cap, c->n + 1)) return;   /* only a lost shortcut */
    c->e[c->n++] = (struct att_cached){data->str, data->len, level, b};
}

int att_prepare(mimeo_env *env, const jval *atts, bool local, const mimeo_att_blob *given,
                size_t given_count, att_cache *cache, att_set *out, mimeo_err *err) {
    memset(out, 0, sizeof *out);
    if (!atts) return 0;
    out->present = true;
    if (local && atts->count) {
        db_err_set(err, MIMEO_EINVAL, "bad_request",
                   "Attachments are not allowed on _local documents");
        return MIMEO_EINVAL;
    }
    if (atts->type != JV_OBJECT) {
        db_err_set(err, MIMEO_EDOCVALIDATION, "doc_validation",
                   "Bad special document member: _attachments");
        return MIMEO_EDOCVALIDATION;
    }
    out->e = calloc(atts->count ? atts->count : 1, sizeof *out->e);
    if (!out->e) return db_err(err, MIMEO_ENOMEM);
    for (size_t i = 0; i < atts->count; i++) {
        att_entry *e = &out->e[out->n];
        const char *name = atts->keys[i];
        size_t nlen = atts->key_lens[i];
        const jval *v = atts->items[i];
        if (nlen > 0 && name[0] == '_')
            return bad(err, "bad_request",
                       "Attachment name '%.*s' starts with prohibited character '_'", name, nlen);
        if (v->type != JV_OBJECT)
            return bad(err, "bad_request", "Invalid attachment '%.*s'", name, nlen);
        e->name = name;
        e->name_len = nlen;
        const jval *ct = jval_get(v, "content_type"), *rp = jval_get(v, "revpos");
        const jval *stub = jval_get(v, "stub"), *data = jval_get(v, "data");
        const jval *follows = jval_get(v, "follows"), *digest = jval_get(v, "digest");
        if (ct && ct->type == JV_STRING) {
            e->type = ct->str;
            e->type_len = ct->len;
        }
        int64_t r;
        if (rp && jval_as_i64(rp, &r) && r >= 0) {
            e->revpos = (uint64_t)r;
            e->has_revpos = true;
        }
        if (stub && stub->type == JV_BOOL && stub->boolean) {
            e->kind = ATT_STUB;
        } else if (data && data->type == JV_STRING) {
            e->kind = ATT_BLOB;
            char type[256];
            snprintf(type, sizeof type, "%.*s", e->type ? (int)(e->type_len > 255 ? 255 : e->type_len) : 0,
                     e->type ? e->type : "");
            int level = mimeo_att_gzip_level(env, e->type ? type : OCTETS);
            if ((e->blob = cache_find(cache, data, level)) != NULL) {
                out->n++;
                continue;
            }
            int rc = inline_blob(env, data, e->type ? type : NULL, &e->blob);
            if (rc == MIMEO_ENOMEM || rc == MIMEO_ENOSPC || rc == MIMEO_EIO || rc == MIMEO_ECLOSED)
                return db_err(err, rc);
            if (rc) return bad(err, "bad_request", "Invalid attachment data for %.*s", name, nlen);
            e->owned = true;
            cache_add(cache, data, level, e->blob);
        } else if (follows && follows->type == JV_BOOL && follows->boolean) {
            e->kind = ATT_BLOB;
            for (size_t j = 0; j < given_count; j++)
                if (given[j].name_len == nlen && memcmp(given[j].name, name, nlen) == 0)
                    e->blob = given[j].blob;
            mimeo_blob_info bi;
            if (!e->blob || mimeo_blob_info_get(e->blob, &bi) != 0)
                return bad(err, "bad_request", "Attachment %.*s has no data", name, nlen);
            /* The sender's digest is of the bytes it sent: comparable when they are what
             * is stored (not compressed here). */
            if (digest && digest->type == JV_STRING && e->blob->level == 0 &&
                (digest->len != strlen(bi.digest) || memcmp(digest->str, bi.digest, digest->len)))
                return bad(err, "content_md5_mismatch",
                           "Possible message corruption (attachment %.*s).", name, nlen);
        } else {
            return bad(err, "bad_request", "Attachment %.*s has no data and is not a stub",
                       name, nlen);
        }
        out->n++;
    }
    return 0;
}

/* ---- writes: storing a revision's attachments ------------------------------------------ */

/* One attachment's member up to its digest, the part stubs and full entries share:
 * "name":{"content_type":…,"revpos":N,"digest":"…" (a comma first unless it is the first). */
static int put_att_head(buf *out, bool first, const char *name, size_t name_len,
                        const char *type, size_t type_len, uint64_t revpos, const char *digest) {
    int rc = first ? 0 : buf_putc(out, ',');
    if (!rc) rc = json_put_str(out, name, name_len);
    if (!rc) rc = buf_puts(out, ":{\"content_type\":");
    if (!rc) rc = json_put_str(out, type, type_len);
    if (!rc) rc = buf_printf(out, ",\"revpos\":%llu,\"digest\":\"%s\"",
                             (unsigned long long)revpos, digest);
    return rc;
}

static int put_varstr(buf *b, const char *s, size_t n) {
    int rc = buf_put_varint(b, n);
    if (!rc && n) rc = buf_put(b, s, n);
    return rc;
}

int att_build(MDB_txn *txn, const store_tables *t, uint64_t dbid, const att_set *s,
              const revtree_node *src, uint64_t gen, bool keep_revpos, const buf *body,
              buf *out, buf *rec, const char **bad_name, size_t *bad_len) {
    buf_reset(out);
    buf_reset(rec);
    if (s->n == 0) return buf_put(out, body->data, body->len);
    att_refs parent = {0};
    int rc = 0;
    if (src && (src->flags & REVTREE_HAS_BODY)) {
        rc = att_refs_load(txn, t, dbid, src->body, &parent);
        if (rc == MIMEO_ENOTFOUND) rc = 0;
        if (rc) return rc;
    }
    size_t off = body->len - 1;       /* the closing brace */
    rc = buf_put(out, body->data, off);
    if (!rc && off > 1) rc = buf_putc(out, ',');
    if (!rc) rc = buf_puts(out, "\"_attachments\":{");
    if (!rc) rc = buf_putc(rec, 1);
    if (!rc) rc = buf_put_varint(rec, off);
    if (!rc) rc = buf_put_varint(rec, s->n);
    for (size_t i = 0; !rc && i < s->n; i++) {
        const att_entry *e = &s->e[i];
        unsigned char sha[32];
        uint64_t revpos, length;
        char digest[32];
        const char *type;
        size_t type_len;
        if (e->kind == ATT_STUB) {
            const att_ref *p = refs_find(&parent, e->name, e->name_len);
            if (!p || (e->has_revpos && e->revpos != p->revpos)) {
                *bad_name = e->name;
                *bad_len = e->name_len;
                rc = MIMEO_EPRECONDITION;
                break;
            }
            blob_meta m;
            if ((rc = ref_meta_get(txn, t, p->sha, &m))) break;
            memcpy(sha, p->sha, 32);
            revpos = p->revpos;
            length = m.length;
            blob_digest_text(m.md5, digest);
            type = p->type;
            type_len = p->type_len;
        } else {
            memcpy(sha, e->blob->info.sha256, 32);
            revpos = keep_revpos && e->has_revpos ? e->revpos : gen;
            length = e->blob->info.length;
            memcpy(digest, e->blob->info.digest, sizeof digest);
            type = e->type ? e->type : OCTETS;
            type_len = e->type ? e->type_len : strlen(OCTETS);
        }
        rc = put_att_head(out, i == 0, e->name, e->name_len, type, type_len, revpos, digest);
        if (!rc) rc = buf_puts(out, ",\"length\":");
        if (!rc) rc = buf_put_u64(out, length);
        if (!rc) rc = buf_puts(out, ",\"stub\":true}");
        if (!rc) rc = buf_put(rec, sha, 32);
        if (!rc) rc = buf_put_varint(rec, revpos);
        if (!rc) rc = put_varstr(rec, e->name, e->name_len);
        if (!rc) rc = put_varstr(rec, type, type_len);
    }
    if (!rc) rc = buf_puts(out, "}}");
    att_refs_destroy(&parent);
    return rc;
}

int att_commit(MDB_txn *txn, const store_tables *t, uint64_t dbid, uint64_t body,
               const att_set *s, const buf *rec) {
    if (s->n == 0 || rec->len == 0) return 0;
    att_refs r;
    int rc = refs_decode((const unsigned char *)rec->data, rec->len, &r);
    if (rc) return rc;
    for (size_t i = 0; !rc && i < s->n && i < r.count; i++)
        rc = s->e[i].kind == ATT_BLOB ? blob_link(txn, t, s->e[i].blob)
                                      : blob_ref(txn, t, r.refs[i].sha);
    att_refs_destroy(&r);
    if (rc) return rc;
    unsigned char key[17];
    MDB_val k = {key_refs(key, dbid, body), key}, v = {rec->len, rec->data};
    return store_err(mdb_put(txn, t->blobs, &k, &v, 0));
}

/* ---- reads ---------------------------------------------------------------------------- */

/* Appends base64 of the blob's content (decoded when stored gzip) from inside txn. */
static int put_data(buf *out, MDB_txn *txn, const store_tables *t, const blob_meta *m) {
    struct base64_encode_ctx ctx;
    base64_encode_init(&ctx);
    z_stream z;
    memset(&z, 0, sizeof z);
    if (m->gzip && inflateInit2(&z, 15 + 16) != Z_OK) return MIMEO_ENOMEM;
    unsigned char plain[16384];
    int rc = 0;
    uint32_t n = (uint32_t)((m->stored + BLOB_CHUNK - 1) / BLOB_CHUNK);
    for (uint32_t i = 0; !rc && i < n; i++) {
        MDB_val c;
        if ((rc = blob_chunk_get(txn, t, m->sid, i, &c))) break;
        const unsigned char *p = c.mv_data;
        size_t len = c.mv_size;
        if (!m->gzip) {
            if ((rc = buf_reserve(out, BASE64_ENCODE_LENGTH(len) + 4))) break;
            out->len += base64_encode_update(&ctx, out->data + out->len, len, p);
            continue;
        }
        z.next_in = (unsigned char *)p;
        z.avail_in = (uInt)len;
        while (!rc && z.avail_in > 0) {
            z.next_out = plain;
            z.avail_out = sizeof plain;
            int zr = inflate(&z, Z_NO_FLUSH);
            if (zr != Z_OK && zr != Z_STREAM_END && zr != Z_BUF_ERROR) rc = MIMEO_ECORRUPT;
            size_t have = sizeof plain - z.avail_out;
            if (!rc && have && !(rc = buf_reserve(out, BASE64_ENCODE_LENGTH(have) + 4)))
                out->len += base64_encode_update(&ctx, out->data + out->len, have, plain);
            if (zr == Z_STREAM_END) break;
        }
    }
    if (m->gzip) inflateEnd(&z);
    if (!rc && !(rc = buf_reserve(out, BASE64_ENCODE_FINAL_LENGTH + 1))) {
        out->len += base64_encode_final(&ctx, out->data + out->len);
        out->data[out->len] = 0;
    }
    return rc;
}

/* Generation P of atts_since: of the newest ancestor of node (itself included) named in
 * the list; 0 when none is. */
static uint64_t since_gen(const revtree *tree, uint32_t node, const mimeo_get_opts *o) {
    uint32_t *idx = malloc(sizeof *idx * (tree->count ? tree->count : 1));
    if (!idx) return 0;
    uint32_t len = revtree_path(tree, node, idx);
    uint64_t p = 0;
    buf rev;
    buf_init(&rev, 0);
    for (uint32_t i = 0; i < len && !p; i++) {
        buf_reset(&rev);
        if (db_rev_put(&rev, &tree->nodes[idx[i]])) break;
        for (size_t j = 0; j < o->atts_since_count; j++)
            if (o->atts_since[j] && strcmp(o->atts_since[j], buf_cstr(&rev)) == 0) {
                p = tree->nodes[idx[i]].gen;
                break;
            }
    }
    buf_destroy(&rev);
    free(idx);
    return p;
}

int att_json(buf *out, MDB_txn *txn, const store_tables *t, uint64_t dbid,
             const revtree *tree, uint32_t node, const MDB_val *body,
             const mimeo_get_opts *o, db_follows *fol, bool *done) {
    *done = false;
    if (!o || !(o->attachments || o->atts_since_count || o->att_encoding_info || o->att_follows))
        return 0;
    const revtree_node *n = &tree->nodes[node];
    if (!(n->flags & REVTREE_HAS_BODY)) return 0;
    att_refs r;
    int rc = att_refs_load(txn, t, dbid, n->body, &r);
    if (rc == MIMEO_ENOTFOUND) return 0;
    if (rc) return rc;
    if (r.att_off < 1 || r.att_off > body->mv_size) {
        att_refs_destroy(&r);
        return MIMEO_ECORRUPT;
    }
    bool want_data = o->attachments || o->atts_since_count;
    uint64_t since = o->atts_since_count ? since_gen(tree, node, o) : 0;
    if (r.att_off > 1) {
        rc = buf_putc(out, ',');
        if (!rc) rc = buf_put(out, (const char *)body->mv_data + 1, r.att_off - 1);
    }
    if (!rc) rc = buf_puts(out, ",\"_attachments\":{");
    for (size_t i = 0; !rc && i < r.count; i++) {
        const att_ref *a = &r.refs[i];
        blob_meta m;
        if ((rc = ref_meta_get(txn, t, a->sha, &m))) break;
        char digest[32];
        blob_digest_text(m.md5, digest);
        bool data = want_data && a->revpos > since;
        rc = put_att_head(out, i == 0, a->name, a->name_len, a->type, a->type_len, a->revpos,
                          digest);
        bool enc_info = m.gzip && (o->att_encoding_info || (data && o->att_follows));
        if (rc) break;
        if (data && !o->att_follows) {
            rc = buf_puts(out, ",\"data\":\"");
            if (!rc) rc = put_data(out, txn, t, &m);
            if (!rc) rc = buf_putc(out, '"');
            enc_info = false; /* inline data is always the decoded content */
        } else {
            rc = buf_printf(out, ",\"length\":%llu,\"%s\":true", (unsigned long long)m.length,
                            data ? "follows" : "stub");
            if (!rc && data && fol)
                rc = db_follows_add(fol, a->name, a->name_len, a->type, a->type_len, m.length,
                                    m.stored, m.gzip);
        }
        if (!rc && enc_info)
            rc = buf_printf(out, ",\"encoding\":\"gzip\",\"encoded_length\":%llu",
                            (unsigned long long)m.stored);
        if (!rc) rc = buf_putc(out, '}');
    }
    if (!rc) rc = buf_putc(out, '}');
    att_refs_destroy(&r);
    if (!rc) *done = true;
    return rc;
}

/* ---- the chunked reader --------------------------------------------------------------- */

struct mimeo_att_reader {
    mimeo_env    *env;
    blob_meta     m;
    unsigned char sha[32];
    bool          decode;      /* inflating a gzip blob */
    z_stream      z;
    bool          z_on, z_end;
    char         *type;
    uint64_t      pos;         /* next stored byte to fetch */
    unsigned char *chunk;      /* stored bytes of chunk `have_idx` */
    size_t        chunk_len;
    int64_t       have_idx;
};

/* The node of revision rev in d that still has its body (-1: none); MIMEO_EBADREV with err
 * filled for a malformed rev. */
static int att_find_rev(const db_doc *d, const char *rev, int64_t *node, mimeo_err *err) {
    int rc = db_find_rev(&d->tree, rev, strlen(rev), node);
    if (rc == MIMEO_EBADREV) db_err_set(err, rc, "bad_request", "Invalid rev format");
    else if (!rc && *node >= 0 && !(d->tree.nodes[*node].flags & REVTREE_HAS_BODY)) *node = -1;
    return rc;
}

/* Finds revision rev (NULL: the winner) of id and its attachment name. */
static int att_locate(mimeo_db *db, const char *id, size_t id_len, const char *rev,
                      const char *name, size_t name_len, mimeo_att_reader *rd,
                      mimeo_att_info *info, mimeo_err *err) {
    db_snap sn;
    int rc = db_snap_begin(db, &sn, err);
    if (rc) return rc;
    db_doc d;
    db_doc_init(&d);
    att_refs r = {0};
    rc = db_doc_load(sn.txn, sn.t, sn.m.dbid, id, id_len, &d);
    int64_t node = -1;
    if (!rc && rev) {
        if ((rc = att_find_rev(&d, rev, &node, err)) == MIMEO_EBADREV) goto out;
        if (!rc && node < 0) rc = MIMEO_ENOTFOUND;
    } else if (!rc) {
        node = revtree_winner(&d.tree);
        if (node < 0) rc = MIMEO_ENOTFOUND;
        else if (d.tree.nodes[node].flags & REVTREE_DELETED) rc = MIMEO_EDELETED;
    }
    if (rc) {
        db_err(err, rc);
        goto out;
    }
    const revtree_node *n = &d.tree.nodes[node];
    rc = att_refs_load(sn.txn, sn.t, sn.m.dbid, n->body, &r);
    const att_ref *a = rc ? NULL : refs_find(&r, name, name_len);
    if (rc == MIMEO_ENOTFOUND || (!rc && !a)) {
        rc = MIMEO_ENOTFOUND;
        db_err_set(err, rc, "not_found", "Document is missing attachment");
        goto out;
    }
    if (rc) {
        db_err(err, rc);
        goto out;
    }
    if ((rc = ref_meta_get(sn.txn, sn.t, a->sha, &rd->m))) {
        db_err(err, rc);
        goto out;
    }
    memcpy(rd->sha, a->sha, 32);
    rd->type = malloc(a->type_len + 1);
    if (!rd->type) {
        rc = db_err(err, MIMEO_ENOMEM);
        goto out;
    }
    memcpy(rd->type, a->type, a->type_len);
    rd->type[a->type_len] = 0;
    if (info) {
        memset(info, 0, sizeof *info);
        info->content_type = rd->type;
        info->length = rd->m.length;
        info->encoded_length = rd->m.stored;
        info->gzip = rd->m.gzip;
        info->revpos = a->revpos;
        blob_digest_text(rd->m.md5, info->digest);
        buf rb;
        buf_init(&rb, MIMEO_REV_MAX - 1);
        if (db_rev_put(&rb, n) == 0) memcpy(info->rev, rb.data, rb.len + 1);
        buf_destroy(&rb);
    }
out:
    att_refs_destroy(&r);
    db_doc_destroy(&d);
    db_snap_end(&sn);
    return rc;
}

int mimeo_blob_ref_new(mimeo_db *db, const char *id, size_t id_len, const char *rev,
                       const char *name, size_t name_len, mimeo_blob **out, mimeo_err *err) {
    *out = NULL;
    mimeo_att_reader rd = {0};
    int rc = att_locate(db, id, id_len, rev, name, name_len, &rd, NULL, err);
    free(rd.type);
    if (rc) return rc;
    mimeo_blob *b = calloc(1, sizeof *b);
    if (!b) return db_err(err, MIMEO_ENOMEM);
    b->env = db->env;
    b->by_ref = b->finished = true;
    b->length = b->info.length = rd.m.length;
    b->stored = b->info.encoded_length = rd.m.stored;
    b->info.gzip = rd.m.gzip;
    memcpy(b->md5_raw, rd.m.md5, 16);
    memcpy(b->info.sha256, rd.sha, 32);
    blob_digest_text(rd.m.md5, b->info.digest);
    *out = b;
    return 0;
}

int mimeo_att_open(mimeo_db *db, const char *id, size_t id_len, const char *rev,
                   const char *name, size_t name_len, bool decode, mimeo_att_reader **out,
                   mimeo_att_info *info, mimeo_err *err) {
    *out = NULL;
    mimeo_att_reader *rd = calloc(1, sizeof *rd);
    if (!rd) return db_err(err, MIMEO_ENOMEM);
    rd->env = db->env;
    rd->have_idx = -1;
    int rc = att_locate(db, id, id_len, rev, name, name_len, rd, info, err);
    if (!rc && decode && rd->m.gzip) {
        if (inflateInit2(&rd->z, 15 + 16) != Z_OK) rc = db_err(err, MIMEO_ENOMEM);
        else rd->z_on = rd->decode = true;
    }
    if (rc) {
        mimeo_att_close(rd);
        return rc;
    }
    *out = rd;
    return 0;
}

int mimeo_att_seek(mimeo_att_reader *r, uint64_t offset) {
    if (r->decode) return MIMEO_EINVAL;
    r->pos = offset;
    return 0;
}

/* Makes chunk idx the current one, reading it in its own short snapshot. */
static int reader_fetch(mimeo_att_reader *r, uint32_t idx) {
    if (r->have_idx == (int64_t)idx) return 0;
    MDB_txn *txn;
    int rc = store_read_begin(r->env->store, &txn);
    if (rc) return rc;
    const store_tables *t = store_tables_get(r->env->store);
    /* The blob must still be the one opened: compaction may have dropped it since. */
    blob_meta m;
    rc = blob_meta_get(txn, t, r->sha, &m);
    if (!rc && m.sid != r->m.sid) rc = MIMEO_ENOTFOUND;
    MDB_val c;
    if (!rc) rc = blob_chunk_get(txn, t, r->m.sid, idx, &c);
    if (!rc && c.mv_size > BLOB_CHUNK) rc = MIMEO_ECORRUPT;
    if (!rc) {
        if (!r->chunk) r->chunk = malloc(BLOB_CHUNK);
        if (!r->chunk) rc = MIMEO_ENOMEM;
        else {
            memcpy(r->chunk, c.mv_data, c.mv_size);
            r->chunk_len = c.mv_size;
            r->have_idx = idx;
        }
    }
    store_read_end(r->env->store, txn);
    return rc;
}

/* Up to cap stored bytes from pos. */
static int reader_raw(mimeo_att_reader *r, unsigned char *out, size_t cap, size_t *got) {
    *got = 0;
    while (*got < cap && r->pos < r->m.stored) {
        uint32_t idx = (uint32_t)(r->pos / BLOB_CHUNK);
        size_t in = (size_t)(r->pos % BLOB_CHUNK);
        int rc = reader_fetch(r, idx);
        if (rc) return rc;
        if (in >= r->chunk_len) return MIMEO_ECORRUPT;
        size_t n = r->chunk_len - in;
        if (n > cap - *got) n = cap - *got;
        memcpy(out + *got, r->chunk + in, n);
        *got += n;
        r->pos += n;
    }
    return 0;
}

int mimeo_att_read(mimeo_att_reader *r, void *out, size_t cap, size_t *got) {
    *got = 0;
    if (!r->decode) return reader_raw(r, out, cap, got);
    /* Inflating: feed the rest of the current chunk, then the next ones. */
    while (*got == 0 && !r->z_end && cap > 0) {
        if (r->z.avail_in == 0) {
            if (r->pos >= r->m.stored) return MIMEO_ECORRUPT; /* stream ended early */
            uint32_t idx = (uint32_t)(r->pos / BLOB_CHUNK);
            int rc = reader_fetch(r, idx);
            if (rc) return rc;
            size_t in = (size_t)(r->pos % BLOB_CHUNK);
            r->z.next_in = r->chunk + in;
            r->z.avail_in = (uInt)(r->chunk_len - in);
            r->pos += r->chunk_len - in;
        }
        r->z.next_out = out;
        r->z.avail_out = (uInt)(cap > (1u << 30) ? (1u << 30) : cap);
        uInt before = r->z.avail_out;
        int zr = inflate(&r->z, Z_NO_FLUSH);
        if (zr != Z_OK && zr != Z_STREAM_END && zr != Z_BUF_ERROR) return MIMEO_ECORRUPT;
        *got = before - r->z.avail_out;
        if (zr == Z_STREAM_END) r->z_end = true;
    }
    return 0;
}

void mimeo_att_close(mimeo_att_reader *r) {
    if (!r) return;
    if (r->z_on) inflateEnd(&r->z);
    free(r->type);
    free(r->chunk);
    free(r);
}

/* ---- standalone put and delete -------------------------------------------------------- */

/* The document to write for PUT/DELETE /{db}/{id}/{name}: the body of revision rev (none:
 * {}), its other attachments as stubs, and, for a put, name as a follows entry. */
static int att_edit_json(mimeo_db *db, const char *id, size_t id_len, const char *rev,
                         const char *name, size_t name_len, const char *type, bool put,
                         buf *out, mimeo_err *err) {
    db_snap sn;
    int rc = db_snap_begin(db, &sn, err);
    if (rc) return rc;
    db_doc d;
    db_doc_init(&d);
    att_refs r = {0};
    MDB_val body = {2, "{}"};
    rc = db_doc_load(sn.txn, sn.t, sn.m.dbid, id, id_len, &d);
    if (rc == MIMEO_ENOTFOUND) rc = 0;
    int64_t node = -1;
    /* A stale or unknown rev (node -1): the write itself reports the conflict. */
    if (!rc && rev && (rc = att_find_rev(&d, rev, &node, err)) == MIMEO_EBADREV) goto out;
    if (!rc && node >= 0 && !(d.tree.nodes[node].flags & REVTREE_DELETED)) {
        const revtree_node *n = &d.tree.nodes[node];
        rc = db_body_get(sn.txn, sn.t, sn.m.dbid, n, &body);
        if (!rc) {
            rc = att_refs_load(sn.txn, sn.t, sn.m.dbid, n->body, &r);
            if (rc == MIMEO_ENOTFOUND) {
                rc = 0;
                r.att_off = body.mv_size - 1;
            }
        }
    } else {
        r.att_off = 1;
    }
    if (rc) {
        db_err(err, rc);
        goto out;
    }
    bool found = false;
    rc = buf_putc(out, '{');
    if (!rc && rev) {
        rc = buf_puts(out, "\"_rev\":");
        if (!rc) rc = json_put_cstr(out, rev);
        if (!rc && r.att_off > 1) rc = buf_putc(out, ',');
    }
    if (!rc && r.att_off > 1) rc = buf_put(out, (const char *)body.mv_data + 1, r.att_off - 1);
    if (!rc) rc = buf_puts(out, rev || r.att_off > 1 ? ",\"_attachments\":{" : "\"_attachments\":{");
    bool first = true;
    for (size_t i = 0; !rc && i < r.count; i++) {
        const att_ref *a = &r.refs[i];
        if (a->name_len == name_len && memcmp(a->name, name, name_len) == 0) {
            found = true;
            continue;
        }
        if (!first) rc = buf_putc(out, ',');
        first = false;
        if (!rc) rc = json_put_str(out, a->name, a->name_len);
        if (!rc) rc = buf_puts(out, ":{\"stub\":true}");
    }
    if (!rc && put) {
        if (!first) rc = buf_putc(out, ',');
        if (!rc) rc = json_put_str(out, name, name_len);
        if (!rc) rc = buf_puts(out, ":{\"follows\":true,\"content_type\":");
        if (!rc) rc = json_put_cstr(out, type ? type : OCTETS);
        if (!rc) rc = buf_putc(out, '}');
    }
    if (!rc) rc = buf_puts(out, "}}");
    if (rc) db_err(err, rc);
    else if (!put && !found) {
        rc = MIMEO_ENOTFOUND;
        db_err_set(err, rc, "not_found", "Document is missing attachment");
    }
out:
    att_refs_destroy(&r);
    db_doc_destroy(&d);
    db_snap_end(&sn);
    return rc;
}

/* PUT (ab: the attachment's blob) or DELETE (ab NULL) /{db}/{id}/{name}: the edited document
 * written as the next revision. */
static int att_edit(mimeo_db *db, const char *id, size_t id_len, const char *name,
                    size_t name_len, const char *rev, const char *type, const mimeo_att_blob *ab,
                    const mimeo_user_ctx *user, mimeo_put_result *res, mimeo_err *err) {
    if (res) {
        res->id = NULL;
        res->id_len = 0;
    }
    buf json;
    buf_init(&json, 0);
    int rc = att_edit_json(db, id, id_len, rev, name, name_len, type, ab != NULL, &json, err);
    if (!rc) {
        mimeo_put_opts o = {.user = user, .atts = ab, .att_count = ab ? 1 : 0};
        rc = mimeo_doc_put(db, id, id_len, json.data, json.len, &o, res, err);
    }
    buf_destroy(&json);
    return rc;
}

int mimeo_att_put(mimeo_db *db, const char *id, size_t id_len, const char *name,
                  size_t name_len, const char *rev, const char *content_type, mimeo_blob *blob,
                  const mimeo_user_ctx *user, mimeo_put_result *res, mimeo_err *err) {
    mimeo_att_blob ab = {name, name_len, blob};
    return att_edit(db, id, id_len, name, name_len, rev, content_type, &ab, user, res, err);
}

int mimeo_att_delete(mimeo_db *db, const char *id, size_t id_len, const char *name,
                     size_t name_len, const char *rev, const mimeo_user_ctx *user,
                     mimeo_put_result *res, mimeo_err *err) {
    return att_edit(db, id, id_len, name, name_len, rev, NULL, NULL, user, res, err);
}
