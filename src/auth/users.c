/* Who a request is (auth_user), _security membership, and the rules of _users documents
 * (CouchDB's _auth design document, written out in C): pure functions over small trees. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"

/* ---- auth_user ---------------------------------------------------------------------------- */
void auth_user_destroy(auth_user *u) {
    for (size_t i = 0; i < u->nroles; i++) free(u->roles[i]);
    memset(u, 0, sizeof *u);
}

int auth_user_add_role(auth_user *u, const char *role, size_t n) {
    if (u->nroles >= AUTH_MAX_ROLES) return 0;
    char *r = strndup(role, n);
    if (!r) return MIMEO_ENOMEM;
    u->roles[u->nroles++] = r;
    return 0;
}

bool auth_user_has_role(const auth_user *u, const char *role) {
    for (size_t i = 0; i < u->nroles; i++)
        if (strcmp(u->roles[i], role) == 0) return true;
    return false;
}

int auth_user_json(buf *b, const auth_user *u) {
    int rc = buf_puts(b, "{\"name\":");
    if (rc == 0) rc = u->known ? json_put_cstr(b, u->name) : buf_puts(b, "null");
    if (rc == 0) rc = buf_puts(b, ",\"roles\":[");
    for (size_t i = 0; rc == 0 && i < u->nroles; i++) {
        if (i) rc = buf_putc(b, ',');
        if (rc == 0) rc = json_put_cstr(b, u->roles[i]);
    }
    if (rc == 0) rc = buf_puts(b, "]}");
    return rc;
}

/* ---- _security ---------------------------------------------------------------------------- */
const char *auth_security_default(bool admin_only) {
    return admin_only ? "{\"members\":{\"roles\":[\"_admin\"]},\"admins\":{\"roles\":[\"_admin\"]}}"
                      : "{}";
}

static int auth_sec_err(mimeo_err *err, const char *reason) {
    if (err) {
        err->code = MIMEO_EINVAL;
        snprintf(err->error, sizeof err->error, "bad_request");
        snprintf(err->reason, sizeof err->reason, "%s", reason);
    }
    return MIMEO_EINVAL;
}

static bool auth_string_array(const jval *v) {
    if (!v || v->type != JV_ARRAY) return false;
    for (size_t i = 0; i < v->count; i++)
        if (v->items[i]->type != JV_STRING) return false;
    return true;
}

int auth_security_validate(const jval *sec, mimeo_err *err) {
    if (!sec || sec->type != JV_OBJECT)
        return auth_sec_err(err, "Security object must be a JSON object");
    static const char *const groups[] = { "admins", "members", "readers" };
    for (size_t g = 0; g < 3; g++) {
        const jval *o = jval_get(sec, groups[g]);
        if (!o) continue;
        if (o->type != JV_OBJECT) return auth_sec_err(err, "names and roles must be in an object");
        const jval *names = jval_get(o, "names"), *roles = jval_get(o, "roles");
        if (names && !auth_string_array(names))
            return auth_sec_err(err, "names must be a JSON list of strings");
        if (roles && !auth_string_array(roles))
            return auth_sec_err(err, "roles must be a JSON list of strings");
    }
    return 0;
}

static bool auth_listed(const jval *list, const char *s) {
    if (!list || list->type != JV_ARRAY) return false;
    for (size_t i = 0; i < list->count; i++)
        if (list->items[i]->type == JV_STRING && strcmp(list->items[i]->str, s) == 0)
            return true;
    return false;
}

/* Is u in group {names, roles}? */
static bool auth_in_group(const auth_user *u, const jval *group) {
    if (!group || group->type != JV_OBJECT) return false;
    if (u->known && auth_listed(jval_get(group, "names"), u->name)) return true;
    const jval *roles = jval_get(group, "roles");
    for (size_t i = 0; i < u->nroles; i++)
        if (auth_listed(roles, u->roles[i])) return true;
    return false;
}

static bool auth_group_empty(const jval *group) {
    if (!group || group->type != JV_OBJECT) return true;
    const jval *n = jval_get(group, "names"), *r = jval_get(group, "roles");
    return (!n || n->type != JV_ARRAY || n->count == 0) &&
           (!r || r->type != JV_ARRAY || r->count == 0);
}

bool auth_is_db_admin(const auth_user *u, const jval *sec) {
    if (auth_user_is_admin(u)) return true;
    return auth_in_group(u, jval_get(sec, "admins"));
}

bool auth_is_member(const auth_user *u, const jval *sec) {
    if (auth_is_db_admin(u, sec)) return true;
    const jval *members = jval_get(sec, "members");
    if (!members) members = jval_get(sec, "readers");
    if (auth_group_empty(members)) return true;   /* no members: a public database */
    return auth_in_group(u, members);
}

/* ---- _users documents --------------------------------------------------------------------- */
static int auth_forbid(mimeo_err *err, const char *reason) {
    if (err) {
        err->code = MIMEO_EINVAL;
        snprintf(err->error, sizeof err->error, "forbidden");
        snprintf(err->reason, sizeof err->reason, "%s", reason);
    }
    return MIMEO_EINVAL;
}

static bool auth_same_roles(const jval *a, const jval *b) {
    size_t na = a && a->type == JV_ARRAY ? a->count : 0;
    size_t nb = b && b->type == JV_ARRAY ? b->count : 0;
    if (na != nb) return false;
    for (size_t i = 0; i < na; i++) {
        const jval *x = a->items[i], *y = b->items[i];
        if (x->type != JV_STRING || y->type != JV_STRING || x->len != y->len ||
            memcmp(x->str, y->str, x->len) != 0)
            return false;
    }
    return true;
}

/* Members that the server writes from a cleartext password, and the password itself. */
static bool auth_hash_member(const char *k) {
    static const char *const names[] = { "password", "password_sha", "password_scheme",
                                         "pbkdf2_prf", "iterations", "salt", "derived_key" };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(k, names[i]) == 0) return true;
    return false;
}

int auth_user_doc_prepare(const char *id, size_t id_len, const jval *doc, const jval *old,
                          const auth_user *u, unsigned iterations, buf *out, mimeo_err *err) {
    bool admin = auth_user_is_admin(u);
    size_t pl = strlen(AUTH_USER_PREFIX);
    if (!doc || doc->type != JV_OBJECT) return auth_forbid(err, "doc must be an object");
    if (id_len <= pl || memcmp(id, AUTH_USER_PREFIX, pl) != 0)
        return auth_forbid(err, "Doc ID must be of the form org.couchdb.user:name");

    const jval *deleted = jval_get(doc, "_deleted");
    bool del = deleted && deleted->type == JV_BOOL && deleted->boolean;
    const jval *name = jval_get(doc, "name");
    const char *old_name = NULL;
    if (old) {
        const jval *on = jval_get(old, "name");
        if (on && on->type == JV_STRING) old_name = on->str;
    }
    if (del) {
        if (!admin && !(u->known && old_name && strcmp(old_name, u->name) == 0))
            return auth_forbid(err, "You may only delete your own user document.");
    } else {
        const jval *type = jval_get(doc, "type");
        if (!type || type->type != JV_STRING || strcmp(type->str, "user") != 0)
            return auth_forbid(err, "doc.type must be user");
        if (!name || name->type != JV_STRING) return auth_forbid(err, "doc.name is required");
        if (name->len == 0) return auth_forbid(err, "doc.name must not be empty");
        if (name->len != id_len - pl || memcmp(name->str, id + pl, name->len) != 0)
            return auth_forbid(err, "Doc ID must be of the form org.couchdb.user:name");
        if (name->len > AUTH_NAME_MAX) return auth_forbid(err, "doc.name is too long");
        if (name->str[0] == '_') return auth_forbid(err, "Username may not start with underscore.");
        if (memchr(name->str, ':', name->len) || strlen(name->str) != name->len)
            return auth_forbid(err, "Character `:` is not allowed in usernames.");
        const jval *roles = jval_get(doc, "roles");
        if (!auth_string_array(roles)) return auth_forbid(err, "doc.roles must be an array");
        if (!admin) {
            if (old) {
                if (!u->known || !old_name || strcmp(old_name, u->name) != 0)
                    return auth_forbid(err, "You may only update your own user document.");
                if (!auth_same_roles(roles, jval_get(old, "roles")))
                    return auth_forbid(err, "Only _admin may edit roles");
            } else if (roles->count != 0) {
                return auth_forbid(err, "Only _admin may set roles");
            }
        }
    }

    const jval *pw = jval_get(doc, "password");
    if (pw && pw->type != JV_STRING && pw->type != JV_NULL)
        return auth_forbid(err, "doc.password must be a string");
    bool hash = !del && pw && pw->type == JV_STRING;

    int rc = buf_putc(out, '{');
    bool first = true;
    for (size_t i = 0; rc == 0 && i < doc->count; i++) {
        const char *k = doc->keys[i];
        if (strcmp(k, "password") == 0 || (hash && auth_hash_member(k))) continue;
        if (!first) rc = buf_putc(out, ',');
        first = false;
        if (rc == 0) rc = json_put_key(out, k);
        if (rc == 0) rc = json_put_jval(out, doc->items[i]);
    }
    if (rc == 0 && hash) {
        auth_pw h;
        auth_pw_new(pw->str, pw->len, iterations, &h);
        char key[2 * AUTH_KEY_MAX + 1];
        hex_encode(h.key, h.key_len, key);
        rc = buf_printf(out,
                        "%s\"password_scheme\":\"pbkdf2\",\"pbkdf2_prf\":\"sha256\","
                        "\"iterations\":%u,\"salt\":\"%s\",\"derived_key\":\"%s\"",
                        first ? "" : ",", h.iterations, h.salt, key);
        memset(&h, 0, sizeof h);
    }
    if (rc == 0) rc = buf_putc(out, '}');
    if (rc != 0 && err) {
        err->code = rc;
        snprintf(err->error, sizeof err->error, "internal");
        snprintf(err->reason, sizeof err->reason, "out of memory");
    }
    return rc;
}
