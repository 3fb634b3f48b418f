/* Server configuration: one table of every option (section, name, type, default, flag),
 * read from an INI file (inih) and overridden by command-line flags. */
#ifndef MIMEO_CLI_CONFIG_H
#define MIMEO_CLI_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "mimeo.h"
#include "../http/http.h"

typedef struct cli_config {
    char     data_dir[4096];
    char     bind_address[64];
    unsigned port;
    size_t   max_request_size;
    unsigned max_connections;
    unsigned idle_timeout;
    unsigned changes_timeout;
    size_t   max_document_size;
    unsigned max_json_depth;
    unsigned revs_limit;
    size_t   initial_map_size;
    bool     cors_enable;
    char     cors_origins[2048];
    bool     cors_credentials;
    char     cors_methods[256];
    char     cors_headers[1024];
    unsigned cors_max_age;
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
    } mesh;
} cli_config;

/* Fills every field with its default from the table. */
void config_defaults(cli_config *c);
/* Reads an INI file; unknown keys are reported on stderr and ignored (a CouchDB local.ini
 * has many sections mimeo does not use). 0, or -1 with err filled. */
int  config_load_file(cli_config *c, const char *path, char *err, size_t errlen);
/* Sets one option by section and name. 0, or -1 with err filled. */
int  config_set(cli_config *c, const char *section, const char *name, const char *value,
                char *err, size_t errlen);
/* The option a command-line flag ("--port") sets, as section and name; false if none. */
bool config_flag(const char *flag, const char **section, const char **name);
/* Prints the options table (for --help). */
void config_print(FILE *out);

/* Views of the configuration for the library and the HTTP server (borrowing c's strings). */
void config_to_options(const cli_config *c, mimeo_options *o);
void config_to_http(const cli_config *c, http_config *h);

#endif
