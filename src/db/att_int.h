/* Internals of attachments shared by src/db: the blob store (blob.c) and the _attachments
 * member of documents (att.c). The key layout of the blobs table is drawn in blob.c. */
#ifndef MIMEO_ATT_INT_H
#define MIMEO_ATT_INT_H

#include <nettle/md5.h>
#include <nettle/sha2.h>
#include <zlib.h>

#include "db_int.h"

/* Stored bytes per chunk value: big enough that a chunk is a few contiguous overflow pages
 * written in one go, small enough that a stream holds only one. */
#define BLOB_CHUNK ((size_t)128 << 10)
/* Bytes an upload buffers before committing them (a multiple of BLOB_CHUNK). A big upload
 * holds two such buffers: one filling while the other commits (blob.c's flusher). */
#define BLOB_MEM ((size_t)2 << 20)

struct blob_flusher;

struct mimeo_blob {
    mimeo_env       *env;
    int              level;       /* > 0: compress what is written */
    bool             gzip_input;
    bool             z_on;
    z_stream         z;
    struct md5_ctx   md5;
    struct sha256_ctx sha;
    unsigned char   *chunk;       /* stored bytes not yet committed (≤ BLOB_MEM, or the
                                     whole blob when in_memory) */
    size_t           chunk_len;
    size_t           chunk_cap;
    unsigned char    md5_raw[16];
    unsigned char   *spare;       /* the other BLOB_MEM buffer of a big upload */
    struct blob_flusher *fl;      /* commits full buffers while the next fills (NULL: none
                                     yet, or it could not start: commits are synchronous) */
    uint64_t         sid;         /* storage id once a chunk was committed; 0 before */
    uint32_t         nchunks;     /* chunks committed */
    uint64_t         length;      /* content bytes */
    uint64_t         stored;      /* stored bytes */
    bool             z_end;       /* gzip_input: the stream's end was seen */
    bool             in_memory;   /* never flushed: written whole by the first write that
                                     names it (inline data, already in memory) */
    bool             finished, failed;
    bool             by_ref;      /* names bytes already stored (mimeo_blob_ref_new): no
                                     chunks of its own, and linking it only counts */
    mimeo_blob_info  info;
};

/* What the blobs table says of one blob. */
typedef struct blob_meta {
    uint64_t      refs;
    uint64_t      sid;
    uint64_t      stored;
    uint64_t      length;
    unsigned char md5[16];
    bool          gzip;
} blob_meta;

/* Reads the record of blob sha: 0, MIMEO_ENOTFOUND, MIMEO_ECORRUPT. */
int  blob_meta_get(MDB_txn *txn, const store_tables *t, const unsigned char sha[32],
                   blob_meta *m);
/* One more reference to the finished blob b, written into txn: the blob is published
 * (its pending chunks become its own) or, when the same bytes are already stored, counted
 * and its own chunks dropped. Does not change b (write jobs may run twice). */
int  blob_link(MDB_txn *txn, const store_tables *t, const mimeo_blob *b);
/* One more / one less reference to a stored blob; the last one deletes it. */
int  blob_ref(MDB_txn *txn, const store_tables *t, const unsigned char sha[32]);
int  blob_unref(MDB_txn *txn, const store_tables *t, const unsigned char sha[32],
                size_t *budget);
/* Chunk idx of storage id sid, borrowed from txn. */
int  blob_chunk_get(MDB_txn *txn, const store_tables *t, uint64_t sid, uint32_t idx,
                    MDB_val *out);
/* Removes uploads that a crash left pending (at open, before any writer). */
int  blob_sweep(mimeo_env *env);
/* "md5-" + base64 of md5, NUL-ended (out ≥ 29 bytes). */
void blob_digest_text(const unsigned char md5[16], char *out);

/* ---- references of revision bodies ----------------------------------------------------
 * A revision whose body holds _attachments has a record naming its blobs:
 *   version(1)=1 · varint att_off · varint count · count × { sha(32) · varint revpos ·
 *   varint name_len · name · varint type_len · type }
 * att_off is where the body's "_attachments" member starts (at its comma, or right after
 * the opening brace): body[0, att_off) + "}" is the body without it. */
typedef struct att_ref {
    unsigned char sha[32];
    uint64_t      revpos;
    const char   *name;       /* borrowed from the record */
    size_t        name_len;
    const char   *type;
    size_t        type_len;
} att_ref;

typedef struct att_refs {
    size_t   att_off;
    size_t   count;
    att_ref *refs;            /* new (free); strings borrowed from the record's memory */
} att_refs;

/* The record of body `body` of database dbid, decoded (strings borrowed from txn).
 * MIMEO_ENOTFOUND when the body has no attachments. */
int  att_refs_load(MDB_txn *txn, const store_tables *t, uint64_t dbid, uint64_t body,
                   att_refs *out);
void att_refs_destroy(att_refs *r);
/* Drops the record of a body that is being dropped, and its references. */
int  att_refs_drop(MDB_txn *txn, const store_tables *t, uint64_t dbid, uint64_t body);
/* Drops up to *budget records of a deleted database (1 when some remain, 0 when done). */
int  att_refs_drop_db(MDB_txn *txn, const store_tables *t, uint64_t dbid, size_t *budget);

/* ---- documents' _attachments (att.c) ---------------------------------------------------- */
enum { ATT_STUB, ATT_BLOB };

typedef struct att_entry {
    const char *name;         /* borrowed from the parsed document */
    size_t      name_len;
    int         kind;
    const char *type;         /* NULL: application/octet-stream (or the parent's, stubs) */
    size_t      type_len;
    uint64_t    revpos;
    bool        has_revpos;
    mimeo_blob *blob;         /* ATT_BLOB */
    bool        owned;        /* blob made from inline data: freed with the set */
} att_entry;

typedef struct att_set {
    bool       present;       /* the document had an _attachments member */
    att_entry *e;
    size_t     n;
} att_set;

/* Inline data already decoded in this request: PouchDB sends every revision of a batch
 * with all its attachment bodies inline, so the same text often comes many times. The
 * blobs belong to the sets that made them; the cache only points at them. */
typedef struct att_cache {
    struct att_cached { const char *text; size_t len; int level; mimeo_blob *blob; } *e;
    size_t n, cap;
} att_cache;
void att_cache_destroy(att_cache *c);

/* Reads a document's _attachments (calling thread): checks names, decodes and stores
 * inline data as blobs (cache may be NULL), finds follows data among atts. Errors filled
 * into err. */
int  att_prepare(mimeo_env *env, const jval *atts, bool local, const mimeo_att_blob *given,
                 size_t given_count, att_cache *cache, att_set *out, mimeo_err *err);
void att_set_destroy(att_set *s);

/* Writer thread. Resolves the set against src (the revision whose attachments stubs keep;
 * NULL: none) and appends the body to store — body plus the "_attachments" stubs — to out,
 * and the references record to rec. Reads only: MIMEO_EPRECONDITION for a stub that names
 * nothing; err_name receives the attachment's name for the reason. gen: the new revision's
 * generation (revpos of new data unless keep_revpos and the entry gives one). */
int  att_build(MDB_txn *txn, const store_tables *t, uint64_t dbid, const att_set *s,
               const revtree_node *src, uint64_t gen, bool keep_revpos, const buf *body,
               buf *out, buf *rec, const char **bad_name, size_t *bad_len);
/* Then, when the revision is stored under body id `body`: the record and its references. */
int  att_commit(MDB_txn *txn, const store_tables *t, uint64_t dbid, uint64_t body,
                const att_set *s, const buf *rec);

/* Appends a document's "_attachments" rewritten for a read with attachment options (data,
 * follows, encoding info), in place of the stored stubs: writes body[1, att_off) members
 * and the new member (leading comma when needed); fol (may be NULL) receives the
 * attachments marked "follows". */
int  att_json(buf *out, MDB_txn *txn, const store_tables *t, uint64_t dbid,
              const revtree *tree, uint32_t node, const MDB_val *body,
              const mimeo_get_opts *opts, db_follows *fol, bool *done);

#endif
