/* Server configuration: one table of every option (section, name, type, default, flag),
 * read from an INI file (inih) and overridden by command-line flags. */
#ifndef MIMEO_CLI_CONFIG_H
#define MIMEO_CLI_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "mimeo.h"
#include "../http/http.h"

#define CFG_MAX_ADMINS 32

typedef struct cli_config {
    char     data_dir[4096];
    char     bind_address[64];
    unsigned port;
    size_t   max_request_size;
    size_t   max_buffered;
    unsigned max_connections;
    unsigned idle_timeout;
    unsigned max_connections_per_address;
    unsigned header_timeout;
    unsigned body_timeout;
    unsigned worker_threads;
    unsigned event_threads;
    size_t   connection_memory;
    unsigned changes_timeout;
    unsigned js_procs;               /* [query_server_config] os_process_limit */
    size_t   max_document_size;
    size_t   max_document_id_length;
    unsigned max_json_depth;
    unsigned max_bulk_docs_count;
    unsigned max_bulk_get_count;
    unsigned max_revs_diff_count;
    unsigned max_keys_count;
    unsigned revs_limit;
    size_t   initial_map_size;
    char     query_server[4096];     /* [query_servers] javascript */
    unsigned os_process_timeout;     /* [couchdb], ms */
    char     att_compressible_types[1024]; /* [attachments] compressible_types */
    unsigned att_compression_level;  /* [attachments] compression_level; 0: none */
    bool     cors_enable;
    char     cors_origins[2048];
    bool     cors_credentials;
    char     cors_methods[256];
    char     cors_headers[1024];
    unsigned cors_max_age;
    size_t   repl_max_response_size;
    char     repl_cafile[1024];
    unsigned repl_max_jobs;          /* [replicator] max_jobs */
    unsigned repl_interval;          /* [replicator] interval, ms */
    /* accounts and sessions (security) */
    bool     require_valid_user;
    bool     admin_only_all_dbs;
    char     default_security[16];
    unsigned auth_timeout;
    unsigned auth_iterations;
    unsigned auth_max_hashes;
    unsigned auth_hash_wait_ms;
    char     auth_secret[132];
    char     auth_same_site[16];
    char     www_authenticate[256];
    char     admin_file[4096];
    char     allowed_hosts[2048];
    bool     http_enable;
    char     tls_cert[4096];
    char     tls_key[4096];
    unsigned tls_port;
    size_t   nadmins;                              /* [admins] name = password or hash */
    char     admin_names[CFG_MAX_ADMINS][128];
    char     admin_values[CFG_MAX_ADMINS][256];
    char     config_path[4096];                    /* the --config file, for rewriting */
    const char *admin_name_ptrs[CFG_MAX_ADMINS];   /* filled by config_to_http */
    const char *admin_value_ptrs[CFG_MAX_ADMINS];
    /* [mesh]: see docs/mesh.md; the mesh runs when any of join/name/advertise/secret_file
     * is set. */
    struct cli_mesh_config {
        char     join[4096];
        char     name[65];
        char     advertise[201];
        char     secret_file[4096];
        char     databases[4096];
        unsigned fanout;
        unsigned probe_interval_ms;
        unsigned probe_timeout_ms;
        unsigned indirect_checks;
        unsigned gossip_interval_ms;
        unsigned pushpull_interval_ms;
        unsigned suspicion_mult;
        unsigned retransmit_mult;
        unsigned reap_dead_ms;
        unsigned reap_left_ms;
        unsigned anti_entropy_interval_ms;
        bool     eager_push;
        unsigned replication_workers;
        unsigned replication_batch;
        unsigned replication_timeout_ms;
    } mesh;
} cli_config;

/* Fills every field with its default from the table. */
void config_defaults(cli_config *c);
/* Reads an INI file; unknown keys are reported on stderr and ignored (a CouchDB local.ini
 * has many sections mimeo does not use). 0, or -1 with err filled. */
int  config_load_file(cli_config *c, const char *path, char *err, size_t errlen);
/* The same from INI text in memory (name stands for the file in messages); c->config_path is
 * left as it is. */
int  config_load_string(cli_config *c, const char *text, const char *name, char *err,
                        size_t errlen);
/* Sets one option by section and name. 0, or -1 with err filled. */
int  config_set(cli_config *c, const char *section, const char *name, const char *value,
                char *err, size_t errlen);
/* Parses a whole decimal number in [min, max] into *out; units: K, M, G suffixes (powers
 * of 1024) allowed. False for anything else (sign, blanks, trailing text, overflow). */
bool config_parse_number(const char *text, uint64_t min, uint64_t max, bool units,
                         uint64_t *out);
/* The option a command-line flag ("--port") sets, as section and name; false if none. */
bool config_flag(const char *flag, const char **section, const char **name);
/* Prints the options table (for --help). */
void config_print(FILE *out);

/* Server admins: hashes every plain password of [admins] (PBKDF2, random salt) and, when
 * they came from the --config file, rewrites the file with the hashes in their place (same
 * mode, atomic rename) so that plain passwords do not stay on disk. 0, or -1 with err. */
int  config_admins_hash(cli_config *c, char *err, size_t errlen);
/* With no admin configured and c->admin_file set: reads "name:password" from that file, or
 * creates it (mode 0600) with admin "admin" and a random password; adds the admin. Sets
 * *created when the file was made now. 0, or -1 with err. */
int  config_admin_file(cli_config *c, bool *created, char *err, size_t errlen);
/* The cookie secret: [chttpd_auth] secret, else DIR/.auth_secret (made once, mode 0600). */
int  config_secret(cli_config *c, const char *dir, char *err, size_t errlen);
/* True for 127.0.0.0/8 and ::1. */
bool config_bind_is_loopback(const char *addr);

/* Views of the configuration for the library and the HTTP server (borrowing c's strings). */
void config_to_options(const cli_config *c, mimeo_options *o);
void config_to_http(const cli_config *c, http_config *h);
void config_to_replicator(const cli_config *c, mimeo_replicator_options *r);

#endif
