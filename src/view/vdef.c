/* A design document's view index definition: its views (map and reduce sources), language,
 * options and views.lib, and the signature that names the index. Everything the rows depend
 * on is in the signature, so a changed design document gets a new index; the storage id also
 * covers the ICU collator version, since stored collation keys are only valid for it. */
#include <nettle/md5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "view_int.h"
#include "../query/collate.h"

void view_err(mimeo_err *err, int code, const char *error, const char *reason) {
    if (!err) return;
    err->code = code;
    snprintf(err->error, sizeof err->error, "%s", error);
    snprintf(err->reason, sizeof err->reason, "%s", reason);
}

void vdef_free(vdef *d) {
    if (!d) return;
    for (size_t i = 0; i < d->nviews; i++) {
        free(d->views[i].name);
        free(d->views[i].map);
        free(d->views[i].reduce);
    }
    free(d->views);
    free(d->ddoc_id);
    free(d->language);
    free(d->lib);
    free(d);
}

int vdef_find(const vdef *d, const char *name, size_t len) {
    for (size_t i = 0; i < d->nviews; i++)
        if (strlen(d->views[i].name) == len && memcmp(d->views[i].name, name, len) == 0)
            return (int)i;
    return -1;
}

static char *dup_n(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

static int view_cmp(const void *a, const void *b) {
    return strcmp(((const vdef_view *)a)->name, ((const vdef_view *)b)->name);
}

/* Each part of the signature's material is length-prefixed, so no two definitions give the
 * same bytes. */
static void md5_part(struct md5_ctx *c, const char *s, size_t n) {
    char len[24];
    int w = snprintf(len, sizeof len, "%zu:", n);
    md5_update(c, (size_t)w, (const uint8_t *)len);
    if (n) md5_update(c, n, (const uint8_t *)s);
}

static bool opt_true(const jval *opts, const char *name) {
    const jval *v = jval_get(opts, name);
    return v && v->type == JV_BOOL && v->boolean;
}

int vdef_from_json(const char *id, size_t id_len, const char *json, size_t len, vdef **out,
                   mimeo_err *err) {
    *out = NULL;
    jval *doc = NULL;
    json_limits lim = {0, len + 1};
    if (json_tree_parse(json, len, &lim, &doc, NULL) != 0 || doc->type != JV_OBJECT) {
        if (doc) jval_free(doc);
        view_err(err, MIMEO_EINVAL, "invalid_design_doc", "the design document is not JSON");
        return MIMEO_EINVAL;
    }
    int rc = MIMEO_ENOMEM;
    vdef *d = calloc(1, sizeof *d);
    buf tmp;
    buf_init(&tmp, 0);
    if (!d) goto out;
    d->ddoc_id = dup_n(id, id_len);
    d->ddoc_id_len = id_len;
    const jval *lang = jval_get(doc, "language");
    if (lang && lang->type == JV_STRING) d->language = dup_n(lang->str, lang->len);
    else d->language = dup_n("javascript", 10);
    if (!d->ddoc_id || !d->language) goto out;
    const jval *opts = jval_get(doc, "options");
    d->include_design = opt_true(opts, "include_design");
    d->local_seq = opt_true(opts, "local_seq");
    const jval *views = jval_get(doc, "views");
    if (views && views->type == JV_OBJECT) {
        d->views = calloc(views->count ? views->count : 1, sizeof *d->views);
        if (!d->views) goto out;
        for (size_t i = 0; i < views->count; i++) {
            const jval *v = views->items[i];
            if (strcmp(views->keys[i], "lib") == 0) {
                buf_reset(&tmp);
                if (json_put_jval(&tmp, v)) goto out;
                if (!(d->lib = dup_n(tmp.data, tmp.len))) goto out;
                continue;
            }
            const jval *map = jval_get(v, "map");
            if (!map || map->type != JV_STRING) continue;
            vdef_view *w = &d->views[d->nviews++];
            w->name = dup_n(views->keys[i], views->key_lens[i]);
            w->map = dup_n(map->str, map->len);
            if (!w->name || !w->map) goto out;
            const jval *red = jval_get(v, "reduce");
            if (red && red->type == JV_STRING) {
                if (!(w->reduce = dup_n(red->str, red->len))) goto out;
                if (view_reduce_builtin(red->str, red->len, &w->rkind)) {
                    w->rtype = VRED_BUILTIN;
                } else if (red->len && red->str[0] == '_') {
                    char reason[MIMEO_ERR_REASON_MAX];
                    snprintf(reason, sizeof reason,
                             "Builtin reduce function %.100s is not supported", red->str);
                    view_err(err, MIMEO_EINVAL, "invalid_design_doc", reason);
                    rc = MIMEO_EINVAL;
                    goto out;
                } else {
                    w->rtype = VRED_JS;
                }
            }
        }
        qsort(d->views, d->nviews, sizeof *d->views, view_cmp);
    }
    if (d->nviews > VSTORE_VIEWS_MAX) {
        view_err(err, MIMEO_EINVAL, "invalid_design_doc", "too many views in one design document");
        rc = MIMEO_EINVAL;
        goto out;
    }
    /* the signature: language, options that change rows, lib, then each view */
    struct md5_ctx c;
    md5_init(&c);
    md5_part(&c, d->language, strlen(d->language));
    md5_part(&c, d->include_design ? "d" : "", d->include_design);
    md5_part(&c, d->local_seq ? "s" : "", d->local_seq);
    md5_part(&c, d->lib ? d->lib : "", d->lib ? strlen(d->lib) : 0);
    for (size_t i = 0; i < d->nviews; i++) {
        const vdef_view *w = &d->views[i];
        md5_part(&c, w->name, strlen(w->name));
        md5_part(&c, w->map, strlen(w->map));
        md5_part(&c, w->reduce ? w->reduce : "", w->reduce ? strlen(w->reduce) : 0);
    }
    struct md5_ctx c2 = c;
    uint8_t dig[MD5_DIGEST_SIZE];
    md5_digest(&c, sizeof dig, dig);
    hex_encode(dig, sizeof dig, d->sig);
    d->sig[32] = 0;
    char ver[9];
    collate_version(ver);
    md5_part(&c2, ver, 8);
    md5_digest(&c2, sizeof dig, dig);
    d->idx = be64_get(dig);
    if (!d->idx) d->idx = 1; /* 0 is the directory's */
    *out = d;
    d = NULL;
    rc = 0;
out:
    buf_destroy(&tmp);
    vdef_free(d);
    jval_free(doc);
    return rc;
}

int vdef_load(mimeo_db *db, const char *name, size_t name_len, vdef **out, mimeo_err *err) {
    *out = NULL;
    buf id;
    buf_init(&id, 0);
    if (buf_puts(&id, "_design/") || buf_put(&id, name, name_len)) {
        buf_destroy(&id);
        return MIMEO_ENOMEM;
    }
    char *json = NULL;
    size_t len = 0;
    int rc = mimeo_doc_get(db, id.data, id.len, NULL, &json, &len, err);
    if (rc == MIMEO_EDELETED) {
        view_err(err, MIMEO_ENOTFOUND, "not_found", "deleted");
        rc = MIMEO_ENOTFOUND;
    } else if (rc == MIMEO_ENOTFOUND) {
        view_err(err, MIMEO_ENOTFOUND, "not_found", "missing");
    }
    if (!rc) rc = vdef_from_json(id.data, id.len, json, len, out, err);
    mimeo_free(json);
    buf_destroy(&id);
    return rc;
}
