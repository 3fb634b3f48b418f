/* MIME multipart bodies as CouchDB uses them (multipart/related documents with attachments,
 * multipart/mixed open_revs replies): a push parser that hands each part's bytes over in
 * chunks, so a part of any size costs a fixed amount of memory, and the writer's pieces laid
 * out byte for byte as CouchDB writes them. No I/O and no HTTP library here: the server and
 * the replicator (libcurl) both feed it. Names start with multipart_. */
#ifndef MIMEO_MULTIPART_H
#define MIMEO_MULTIPART_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mimeo.h"
#include "../common/buf.h"

#define MULTIPART_BOUNDARY_MAX 200   /* RFC 2046 says 70; a little slack for odd clients */
#define MULTIPART_HEADERS_MAX  16384 /* bytes of one part's header block */
#define MULTIPART_NHEADERS_MAX 32

/* One part's headers, as received: names and values NUL-terminated, values trimmed, folded
 * lines joined. Borrowed by the begin callback for its call only. */
typedef struct multipart_part {
    size_t      nheaders;
    const char *names[MULTIPART_NHEADERS_MAX];
    const char *values[MULTIPART_NHEADERS_MAX];
    int64_t     content_length;   /* Content-Length, or -1 when absent */
} multipart_part;

/* The callbacks of a parser. A nonzero return (a negative MIMEO_E* code) stops the parse:
 * multipart_feed returns it, and err is the callback's to fill. Data of a part arrives in
 * pieces of any size (possibly zero pieces for an empty part), in order. */
typedef struct multipart_handlers {
    int (*on_begin)(void *ctx, const multipart_part *part, mimeo_err *err);
    int (*on_data)(void *ctx, const char *p, size_t n, mimeo_err *err);
    int (*on_end)(void *ctx, mimeo_err *err);
} multipart_handlers;

typedef struct multipart_parser {
    const multipart_handlers *h;
    void   *ctx;
    char    delim[MULTIPART_BOUNDARY_MAX + 4];   /* "\r\n--" boundary */
    size_t  dlen;
    size_t  match;       /* bytes of delim matched so far */
    int     state;
    bool    in_part;     /* on_begin was called, on_end not yet */
    uint64_t part_bytes; /* data bytes of the current part */
    int64_t  part_len;   /* its Content-Length, or -1 */
    size_t  nparts;
    buf     hdr;         /* the header block being read (capped) */
    int     failed;      /* the first error, repeated by later calls */
} multipart_parser;

/* Whether value (a Content-Type header) names media type `type` (case-insensitive, any
 * parameters after it). */
bool multipart_type_is(const char *value, const char *type);
/* Copies parameter `name` of a header value (token or quoted-string, unescaped) into out
 * (cap bytes, NUL-terminated). Returns its length, or -1 when absent, malformed or too
 * long. */
long multipart_param(const char *value, const char *name, char *out, size_t cap);
/* A header of part by name (case-insensitive), or NULL. */
const char *multipart_header(const multipart_part *part, const char *name);

/* Prepares p for a body whose Content-Type is ctype (multipart/related or multipart/mixed,
 * with a boundary parameter). 0, or MIMEO_EINVAL with err filled (bad_request). Destroy
 * with multipart_destroy in every case. */
int  multipart_init(multipart_parser *p, const char *ctype, const multipart_handlers *h,
                    void *ctx, mimeo_err *err);
/* The same with the boundary given directly. */
int  multipart_init_boundary(multipart_parser *p, const char *boundary, size_t len,
                             const multipart_handlers *h, void *ctx, mimeo_err *err);
/* Feeds the next n bytes of the body. 0, a callback's code, or MIMEO_EINVAL with err filled
 * (bad_request) for malformed input; after a failure every call returns it again. */
int  multipart_feed(multipart_parser *p, const char *data, size_t n, mimeo_err *err);
/* The body ended: 0 when the closing delimiter was read, else MIMEO_EINVAL (a cut body). */
int  multipart_finish(multipart_parser *p, mimeo_err *err);
void multipart_destroy(multipart_parser *p);

/* ---- writing, as CouchDB lays it out ---------------------------------------------------
 *   --B\r\nContent-Type: application/json\r\n\r\n{doc}
 *   \r\n--B\r\nContent-Disposition: attachment; filename="a.png"\r\nContent-Type: image/png
 *   \r\nContent-Length: 5[\r\nContent-Encoding: gzip]\r\n\r\n<5 bytes>
 *   \r\n--B--
 * A multipart/mixed reply (open_revs) holds such bodies as parts:
 *   --O\r\nContent-Type: multipart/related; boundary="B"\r\n\r\n<body>\r\n--O
 *   \r\nContent-Type: application/json\r\n\r\n{doc}\r\n--O--                       */

/* A new random boundary: 32 lowercase hex digits (as CouchDB's uuids) into out. */
void multipart_boundary_new(char out[33]);
/* `multipart/related; boundary="B"` (or mixed) into b. */
int  multipart_put_ctype(buf *b, const char *subtype, const char *boundary);
/* The opening of the document part, up to its JSON: "--B\r\nContent-Type: application/json
 * \r\n\r\n". */
int  multipart_put_doc_head(buf *b, const char *boundary);
/* The delimiter and headers of one attachment part, up to its data. name is written as a
 * quoted-string (CouchDB writes it raw; '"' and '\' are escaped here so it parses back). */
int  multipart_put_att_head(buf *b, const char *boundary, const char *name, size_t name_len,
                            const char *content_type, uint64_t length, bool gzip);
/* "\r\n--B--": the end of a body. */
int  multipart_put_close(buf *b, const char *boundary);

#endif
