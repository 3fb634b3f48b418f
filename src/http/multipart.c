/* MIME multipart bodies (RFC 2046) as CouchDB reads and writes them: the streaming parser
 * behind multipart/related document writes and multipart/mixed open_revs replies, and the
 * pieces of CouchDB's layout for writing them. The parser holds one header block (capped)
 * and the count of delimiter bytes matched so far, never a part's data, so memory does not
 * grow with the body. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "multipart.h"
#include "../common/err.h"

enum {
    MP_PREAMBLE,    /* before the first delimiter: ignored */
    MP_AFTER_DELIM, /* a delimiter was read: "--" (the end), padding or CRLF follows */
    MP_DASH,        /* one '-' of the closing "--" read */
    MP_PAD,         /* transport padding (spaces, tabs) before the CRLF */
    MP_CR,          /* the CR of the delimiter line's CRLF read */
    MP_HEADERS,     /* a part's header block */
    MP_DATA,        /* a part's data, up to the next delimiter */
    MP_EPILOGUE     /* after the closing delimiter: ignored */
};

/* ---- header values -------------------------------------------------------------------- */
static bool mp_space(char c) {
    return c == ' ' || c == '\t';
}

bool multipart_type_is(const char *value, const char *type) {
    if (!value) return false;
    while (mp_space(*value)) value++;
    size_t n = strlen(type);
    if (strncasecmp(value, type, n) != 0) return false;
    const char *q = value + n;
    while (mp_space(*q)) q++;
    return *q == '\0' || *q == ';';
}

/* RFC 2045 token characters. */
static bool mp_tchar(unsigned char c) {
    return c > 32 && c < 127 && !strchr("()<>@,;:\\\"/[]?=", c);
}

long multipart_param(const char *value, const char *name, char *out, size_t cap) {
    if (!value || cap == 0) return -1;
    const char *q = strchr(value, ';');
    size_t nlen = strlen(name);
    while (q && *q == ';') {
        q++;
        while (mp_space(*q)) q++;
        const char *k = q;
        while (mp_tchar((unsigned char)*q)) q++;
        size_t klen = (size_t)(q - k);
        while (mp_space(*q)) q++;
        if (*q != '=' || klen == 0) return -1;
        q++;
        while (mp_space(*q)) q++;
        bool match = klen == nlen && strncasecmp(k, name, nlen) == 0;
        size_t len = 0;
        if (*q == '"') {
            for (q++;; q++) {
                if (*q == '\0') return -1;          /* unterminated quoted-string */
                if (*q == '"') { q++; break; }
                if (*q == '\\') {
                    q++;
                    if (*q == '\0') return -1;
                }
                if (match) {
                    if (len + 1 >= cap) return -1;
                    out[len++] = *q;
                }
            }
        } else {
            const char *v = q;
            while (mp_tchar((unsigned char)*q)) q++;
            len = (size_t)(q - v);
            if (match) {
                if (len == 0 || len + 1 > cap) return -1;
                memcpy(out, v, len);
            }
        }
        if (match) {
            out[len] = '\0';
            return (long)len;
        }
        while (mp_space(*q)) q++;
        if (*q != ';' && *q != '\0') return -1;
    }
    return -1;
}

const char *multipart_header(const multipart_part *part, const char *name) {
    for (size_t i = 0; i < part->nheaders; i++)
        if (strcasecmp(part->names[i], name) == 0) return part->values[i];
    return NULL;
}

/* ---- the parser ----------------------------------------------------------------------- */
static int mp_fail(multipart_parser *p, mimeo_err *err, const char *reason) {
    p->failed = MIMEO_EINVAL;
    err_set(err, MIMEO_EINVAL, "bad_request", "%s", reason);
    return MIMEO_EINVAL;
}

/* A callback's failure: kept so that later calls return it again. */
static int mp_cb_fail(multipart_parser *p, int rc, mimeo_err *err) {
    (void)err;   /* the callback filled it */
    p->failed = rc;
    return rc;
}

int multipart_init_boundary(multipart_parser *p, const char *boundary, size_t len,
                            const multipart_handlers *h, void *ctx, mimeo_err *err) {
    memset(p, 0, sizeof *p);
    buf_init(&p->hdr, MULTIPART_HEADERS_MAX);
    p->h = h;
    p->ctx = ctx;
    if (len == 0 || len > MULTIPART_BOUNDARY_MAX)
        return mp_fail(p, err, "multipart boundary must be 1 to 200 characters");
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)boundary[i];
        /* The delimiter scan relies on the boundary holding no CR: the only place a match
         * can restart is its leading CR. */
        if (c < 32 || c >= 127)
            return mp_fail(p, err, "multipart boundary holds a control or non-ASCII byte");
    }
    memcpy(p->delim, "\r\n--", 4);
    memcpy(p->delim + 4, boundary, len);
    p->dlen = len + 4;
    p->state = MP_PREAMBLE;
    /* The first delimiter may open the body with no CRLF before it: match as if one was
     * read. */
    p->match = 2;
    return 0;
}

int multipart_init(multipart_parser *p, const char *ctype, const multipart_handlers *h,
                   void *ctx, mimeo_err *err) {
    char b[MULTIPART_BOUNDARY_MAX + 1];
    long n = -1;
    bool multi = ctype && strncasecmp(ctype + strspn(ctype, " \t"), "multipart/", 10) == 0;
    if (multi) n = multipart_param(ctype, "boundary", b, sizeof b);
    if (n <= 0) {
        memset(p, 0, sizeof *p);
        buf_init(&p->hdr, MULTIPART_HEADERS_MAX);
        return mp_fail(p, err, multi ? "multipart body without a valid boundary parameter"
                                     : "expected a multipart Content-Type");
    }
    return multipart_init_boundary(p, b, (size_t)n, h, ctx, err);
}

void multipart_destroy(multipart_parser *p) {
    buf_destroy(&p->hdr);
}

/* Splits the header block (CRLF-terminated lines, the empty line excluded) in place into
 * part's names and values. */
static int mp_headers_parse(multipart_parser *p, multipart_part *part, mimeo_err *err) {
    memset(part, 0, sizeof *part);
    part->content_length = -1;
    char *s = p->hdr.data;
    size_t n = p->hdr.len;
    size_t i = 0;
    while (i < n) {
        char *line = s + i;
        char *crlf = NULL;
        for (size_t k = i; k + 1 < n; k++)
            if (s[k] == '\r' && s[k + 1] == '\n') { crlf = s + k; break; }
        if (!crlf) return mp_fail(p, err, "multipart part header line without CRLF");
        size_t llen = (size_t)(crlf - line);
        i += llen + 2;
        *crlf = '\0';
        if (memchr(line, '\r', llen) || memchr(line, '\n', llen) || memchr(line, '\0', llen))
            return mp_fail(p, err, "multipart part header holds a bare CR, LF or NUL");
        if (llen > 0 && mp_space(line[0]))
            return mp_fail(p, err, "folded multipart part headers are not supported");
        char *colon = memchr(line, ':', llen);
        if (!colon || colon == line) return mp_fail(p, err, "malformed multipart part header");
        for (char *c = line; c < colon; c++)
            if (!mp_tchar((unsigned char)*c))
                return mp_fail(p, err, "malformed multipart part header name");
        *colon = '\0';
        char *v = colon + 1, *end = line + llen;
        while (v < end && mp_space(*v)) v++;
        while (end > v && mp_space(end[-1])) end--;
        *end = '\0';
        if (part->nheaders == MULTIPART_NHEADERS_MAX)
            return mp_fail(p, err, "too many multipart part headers");
        part->names[part->nheaders] = line;
        part->values[part->nheaders++] = v;
        if (strcasecmp(line, "Content-Length") == 0) {
            if (part->content_length >= 0)
                return mp_fail(p, err, "multipart part with two Content-Length headers");
            int64_t len = 0;
            if (*v == '\0') return mp_fail(p, err, "malformed multipart Content-Length");
            for (const char *d = v; *d; d++) {
                if (*d < '0' || *d > '9' || len > (INT64_MAX - 9) / 10)
                    return mp_fail(p, err, "malformed multipart Content-Length");
                len = len * 10 + (*d - '0');
            }
            part->content_length = len;
        }
    }
    return 0;
}

/* The current part is complete: its length checked against Content-Length, on_end. */
static int mp_part_end(multipart_parser *p, mimeo_err *err) {
    p->in_part = false;
    if (p->part_len >= 0 && p->part_bytes != (uint64_t)p->part_len) {
        char why[128];
        snprintf(why, sizeof why, "multipart part has %llu bytes, its Content-Length says %lld",
                 (unsigned long long)p->part_bytes, (long long)p->part_len);
        return mp_fail(p, err, why);
    }
    int rc = p->h->on_end ? p->h->on_end(p->ctx, err) : 0;
    return rc ? mp_cb_fail(p, rc, err) : 0;
}

static int mp_emit(multipart_parser *p, const char *d, size_t n, mimeo_err *err) {
    if (n == 0 || p->state != MP_DATA) return 0;
    p->part_bytes += n;
    if (p->part_len >= 0 && p->part_bytes > (uint64_t)p->part_len)
        return mp_fail(p, err, "multipart part is longer than its Content-Length");
    int rc = p->h->on_data ? p->h->on_data(p->ctx, d, n, err) : 0;
    return rc ? mp_cb_fail(p, rc, err) : 0;
}

/* Scans data[*i..n) for the delimiter, emitting what is not part of it (in MP_DATA) or
 * dropping it (MP_PREAMBLE). Returns 1 when a whole delimiter was read, 0 when the input
 * ran out first, or an error. */
static int mp_scan(multipart_parser *p, const char *data, size_t n, size_t *i, mimeo_err *err) {
    size_t at = *i;
    int rc = 0;
    while (at < n) {
        if (p->match == 0) {
            const char *cr = memchr(data + at, '\r', n - at);
            size_t end = cr ? (size_t)(cr - data) : n;
            if ((rc = mp_emit(p, data + at, end - at, err)) != 0) break;
            at = end;
            if (!cr) break;
            p->match = 1;
            at++;
            continue;
        }
        if (data[at] == p->delim[p->match]) {
            at++;
            if (++p->match == p->dlen) {
                p->match = 0;
                *i = at;
                return 1;
            }
            continue;
        }
        /* A false start: the bytes matched so far are data. The byte that broke the match
         * is looked at again, since it may be a CR beginning a delimiter. */
        size_t m = p->match;
        p->match = 0;
        if ((rc = mp_emit(p, p->delim, m, err)) != 0) break;
    }
    *i = at;
    return rc;
}

int multipart_feed(multipart_parser *p, const char *data, size_t n, mimeo_err *err) {
    if (p->failed) {
        err_set(err, p->failed, "bad_request", "malformed multipart body");
        return p->failed;
    }
    size_t i = 0;
    while (i < n) {
        switch (p->state) {
        case MP_PREAMBLE:
        case MP_DATA: {
            int r = mp_scan(p, data, n, &i, err);
            if (r < 0) return r;
            if (r == 0) return 0;
            if (p->state == MP_DATA) {
                int rc = mp_part_end(p, err);
                if (rc) return rc;
            }
            p->state = MP_AFTER_DELIM;
            break;
        }
        case MP_AFTER_DELIM: {
            char c = data[i++];
            if (c == '-') p->state = MP_DASH;
            else if (mp_space(c)) p->state = MP_PAD;
            else if (c == '\r') p->state = MP_CR;
            else return mp_fail(p, err, "multipart delimiter followed by unexpected bytes");
            break;
        }
        case MP_DASH:
            if (data[i++] != '-') return mp_fail(p, err, "malformed multipart close delimiter");
            p->state = MP_EPILOGUE;
            break;
        case MP_PAD: {
            char c = data[i++];
            if (c == '\r') p->state = MP_CR;
            else if (!mp_space(c))
                return mp_fail(p, err, "multipart delimiter followed by unexpected bytes");
            break;
        }
        case MP_CR:
            if (data[i++] != '\n') return mp_fail(p, err, "multipart delimiter line without CRLF");
            p->state = MP_HEADERS;
            buf_reset(&p->hdr);
            break;
        case MP_HEADERS: {
            /* Up to and including the blank line that ends the block: "\r\n" alone (no
             * headers) or the "\r\n\r\n" after the last header line. */
            bool done = false;
            while (i < n && !done) {
                char c = data[i++];
                if (buf_putc(&p->hdr, c) != 0)
                    return mp_fail(p, err, "multipart part headers are too large");
                if (c != '\n') continue;
                const char *h = p->hdr.data;
                size_t len = p->hdr.len;
                done = (len == 2 && h[0] == '\r') ||
                       (len >= 4 && memcmp(h + len - 4, "\r\n\r\n", 4) == 0);
            }
            if (!done) break;
            /* Drop the final empty line: the block is the header lines with their CRLFs. */
            p->hdr.len -= 2;
            multipart_part part;
            int rc = mp_headers_parse(p, &part, err);
            if (rc) return rc;
            p->nparts++;
            p->part_bytes = 0;
            p->part_len = part.content_length;
            p->in_part = true;
            p->state = MP_DATA;
            rc = p->h->on_begin ? p->h->on_begin(p->ctx, &part, err) : 0;
            if (rc) return mp_cb_fail(p, rc, err);
            break;
        }
        case MP_EPILOGUE:
            return 0;
        }
    }
    return 0;
}

int multipart_finish(multipart_parser *p, mimeo_err *err) {
    if (p->failed) {
        err_set(err, p->failed, "bad_request", "malformed multipart body");
        return p->failed;
    }
    if (p->state != MP_EPILOGUE)
        return mp_fail(p, err, p->nparts == 0 && p->state == MP_PREAMBLE
                                   ? "multipart body without a delimiter"
                                   : "multipart body ends before its closing delimiter");
    return 0;
}

/* ---- writing -------------------------------------------------------------------------- */
void multipart_boundary_new(char out[33]) {
    unsigned char r[16];
    random_bytes(r, sizeof r);
    hex_encode(r, sizeof r, out);
}

int multipart_put_ctype(buf *b, const char *subtype, const char *boundary) {
    return buf_printf(b, "multipart/%s; boundary=\"%s\"", subtype, boundary);
}

int multipart_put_doc_head(buf *b, const char *boundary) {
    return buf_printf(b, "--%s\r\nContent-Type: application/json\r\n\r\n", boundary);
}

int multipart_put_att_head(buf *b, const char *boundary, const char *name, size_t name_len,
                           const char *content_type, uint64_t length, bool gzip) {
    /* A CR or LF would end the header early: another header could be smuggled in. */
    if (memchr(name, '\r', name_len) || memchr(name, '\n', name_len) ||
        strpbrk(content_type, "\r\n"))
        return MIMEO_EINVAL;
    int rc = buf_printf(b, "\r\n--%s\r\nContent-Disposition: attachment; filename=\"",
                        boundary);
    for (size_t i = 0; !rc && i < name_len; i++) {
        if (name[i] == '"' || name[i] == '\\') rc = buf_putc(b, '\\');
        if (!rc) rc = buf_putc(b, name[i]);
    }
    if (!rc) rc = buf_printf(b, "\"\r\nContent-Type: %s\r\nContent-Length: %llu%s\r\n\r\n",
                             content_type, (unsigned long long)length,
                             gzip ? "\r\nContent-Encoding: gzip" : "");
    return rc;
}

int multipart_put_close(buf *b, const char *boundary) {
    return buf_printf(b, "\r\n--%s--", boundary);
}
