/* mimeo serve: reads the configuration, opens the data directory, starts the HTTP server,
 * prints "mimeo listening on http://ADDR:PORT" (tests parse that line), and on SIGINT or
 * SIGTERM stops accepting, lets requests in flight finish, closes the store and exits 0. */
#include <getopt.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mimeo.h"
#include "cli.h"
#include "config.h"
#include "../http/http.h"
#include "../mesh/mesh_node.h"

/* Accounts before the server starts: hash [admins], create or read the admin file, apply
 * protected mode (no admin: loopback only, everyone admin), load the cookie secret. Prints
 * what a user must know first. 0, or -1 after printing why. */
static int serve_security(cli_config *cfg) {
    char err[512];
    bool created = false;
    if (config_admin_file(cfg, &created, err, sizeof err) != 0 ||
        config_admins_hash(cfg, err, sizeof err) != 0 ||
        config_secret(cfg, cfg->data_dir, err, sizeof err) != 0) {
        fprintf(stderr, "mimeo serve: %s\n", err);
        return -1;
    }
    if (cfg->nadmins == 0 && !config_bind_is_loopback(cfg->bind_address)) {
        fprintf(stderr, "mimeo serve: refusing to listen on %s with no admin configured: add "
                "one under [admins] (name = password) in --config, or --admin-file FILE\n",
                cfg->bind_address);
        return -1;
    }
    if (cfg->nadmins == 0)
        fprintf(stderr, "mimeo: WARNING: no admin configured: every client of %s is a server "
                "admin (loopback only). Add [admins] or --admin-file to require logins.\n",
                cfg->bind_address);
    else if (cfg->admin_file[0] && created)
        printf("mimeo: created admin '%s'; its password is in %s (readable only by you)\n",
               cfg->admin_names[0], cfg->admin_file);
    else if (cfg->admin_file[0])
        printf("mimeo: admin '%s'; its password is in %s\n", cfg->admin_names[0],
               cfg->admin_file);
    fflush(stdout);
    return 0;
}

/* Reads a whole small file (a PEM certificate or key) into a new string; NULL on error. */
static char *serve_read_file(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    char *p = malloc(1 << 20);
    size_t n = p ? fread(p, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (!p || n == 0) {
        free(p);
        return NULL;
    }
    p[n] = '\0';
    return p;
}

/* The HTTPS server on [ssl] port, when a certificate is configured. *srv stays NULL without
 * one. The PEM texts are kept in pem[2] until the server is freed. 0, or -1 after printing. */
static int serve_tls_start(mimeo_env *env, const cli_config *cfg, const http_config *hc,
                           http_server **srv, char *pem[2]) {
    *srv = NULL;
    if (!cfg->tls_cert[0] && !cfg->tls_key[0]) return 0;
    pem[0] = serve_read_file(cfg->tls_cert);
    pem[1] = serve_read_file(cfg->tls_key);
    if (!pem[0] || !pem[1]) {
        fprintf(stderr, "mimeo serve: cannot read %s\n", !pem[0] ? cfg->tls_cert : cfg->tls_key);
        return -1;
    }
    http_config tc = *hc;
    tc.port = cfg->tls_port;
    tc.tls_cert_pem = pem[0];
    tc.tls_key_pem = pem[1];
    char why[256];
    *srv = http_server_start(env, &tc, why, sizeof why);
    if (!*srv) {
        fprintf(stderr, "mimeo serve: https: %s\n", why);
        return -1;
    }
    bool v6 = strchr(cfg->bind_address, ':') != NULL;
    printf("mimeo listening on https://%s%s%s:%u\n", v6 ? "[" : "", cfg->bind_address,
           v6 ? "]" : "", http_server_port(*srv));
    return 0;
}

static void serve_usage(FILE *out) {
    fprintf(out,
            "usage: mimeo serve [--data DIR] [--bind ADDR] [--port N] [--config FILE]\n"
            "                   [--admin-file FILE] [--tls-cert FILE --tls-key FILE [--tls-port N]]\n"
            "                   [--join URL[,URL…] [--node-name NAME] [--advertise URL]\n"
            "                    --mesh-secret-file FILE]\n"
            "                   [--set SECTION.KEY=VALUE]…\n\n"
            "Options can also be set in an INI file (--config); flags win over the file.\n"
            "Every option, by INI section:\n");
    config_print(out);
}

/* Applies "section.key=value". */
static int serve_set(cli_config *c, const char *spec, char *err, size_t errlen) {
    const char *dot = strchr(spec, '.');
    const char *eq = strchr(spec, '=');
    if (!dot || !eq || eq < dot) {
        snprintf(err, errlen, "--set wants SECTION.KEY=VALUE, got '%s'", spec);
        return -1;
    }
    char section[64], key[64];
    size_t sl = (size_t)(dot - spec), kl = (size_t)(eq - dot - 1);
    if (sl >= sizeof section || kl >= sizeof key) {
        snprintf(err, errlen, "--set: name too long in '%s'", spec);
        return -1;
    }
    memcpy(section, spec, sl);
    section[sl] = '\0';
    memcpy(key, dot + 1, kl);
    key[kl] = '\0';
    return config_set(c, section, key, eq + 1, err, errlen);
}

/* Every flag; SERVE_OPT_TABLE ones set the option of the config table named like the flag. */
enum { SERVE_OPT_CONFIG = 'c', SERVE_OPT_SET = 's', SERVE_OPT_HELP = 'h',
       SERVE_OPT_TABLE = 0x100 };
static const struct option serve_options[] = {
    { "config", required_argument, NULL, SERVE_OPT_CONFIG },
    { "set",    required_argument, NULL, SERVE_OPT_SET },
    { "help",   no_argument,       NULL, SERVE_OPT_HELP },
    { "data",   required_argument, NULL, SERVE_OPT_TABLE },
    { "bind",   required_argument, NULL, SERVE_OPT_TABLE },
    { "port",   required_argument, NULL, SERVE_OPT_TABLE },
    { "admin-file", required_argument, NULL, SERVE_OPT_TABLE },
    { "tls-cert", required_argument, NULL, SERVE_OPT_TABLE },
    { "tls-key",  required_argument, NULL, SERVE_OPT_TABLE },
    { "tls-port", required_argument, NULL, SERVE_OPT_TABLE },
    { "join",     required_argument, NULL, SERVE_OPT_TABLE },
    { "node-name", required_argument, NULL, SERVE_OPT_TABLE },
    { "advertise", required_argument, NULL, SERVE_OPT_TABLE },
    { "mesh-secret-file", required_argument, NULL, SERVE_OPT_TABLE },
    { NULL, 0, NULL, 0 },
};

/* Precedence: defaults, then the --config file (wherever it appears), then the flags in
 * order. -1 after printing one line on stderr; exits 0 after --help. */
static int serve_parse(int argc, char **argv, cli_config *c) {
    char err[512];
    /* First pass: only --config, quietly (the second pass reports mistakes). */
    opterr = 0;
    optind = 0;
    int ch, idx;
    while ((ch = getopt_long(argc, argv, "+hc:s:", serve_options, &idx)) != -1) {
        if (ch != SERVE_OPT_CONFIG) continue;
        if (config_load_file(c, optarg, err, sizeof err) != 0) {
            fprintf(stderr, "mimeo serve: %s\n", err);
            return -1;
        }
    }
    opterr = 1;
    optind = 0;
    while ((ch = getopt_long(argc, argv, "+hc:s:", serve_options, &idx)) != -1) {
        const char *section, *name;
        char flag[32];
        switch (ch) {
        case SERVE_OPT_HELP:
            serve_usage(stdout);
            exit(0);
        case SERVE_OPT_CONFIG:
            break;
        case SERVE_OPT_SET:
            if (serve_set(c, optarg, err, sizeof err) != 0) goto bad;
            break;
        case SERVE_OPT_TABLE:
            snprintf(flag, sizeof flag, "--%s", serve_options[idx].name);
            if (!config_flag(flag, &section, &name)) {
                snprintf(err, sizeof err, "%s: no such option in the table", flag);
                goto bad;
            }
            if (config_set(c, section, name, optarg, err, sizeof err) != 0) goto bad;
            break;
        default:   /* getopt_long said what was wrong */
            fprintf(stderr, "Run `mimeo serve --help` for the options.\n");
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "mimeo serve: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    return 0;
bad:
    fprintf(stderr, "mimeo serve: %s\n", err);
    return -1;
}

/* Starts the mesh when [mesh] asks for it (*out stays NULL when it does not). -1 after
 * printing why when it is asked for but cannot run, e.g. without a secret. */
static int serve_mesh_start(const cli_config *c, mimeo_env *env, unsigned port,
                            struct mesh_node **out) {
    *out = NULL;
    const struct cli_mesh_config *mc = &c->mesh;
    if (!mc->join[0] && !mc->name[0] && !mc->advertise[0] && !mc->secret_file[0]) return 0;
    if (!mc->secret_file[0]) {
        fprintf(stderr, "mimeo serve: the mesh needs a shared secret: --mesh-secret-file FILE "
                        "(there is no default secret)\n");
        return -1;
    }
    char err[512];
    uint8_t *secret = NULL;
    size_t slen = 0;
    if (mesh_secret_read(mc->secret_file, &secret, &slen, err, sizeof err) != 0) {
        fprintf(stderr, "mimeo serve: %s\n", err);
        return -1;
    }
    char adv[256];
    if (mc->advertise[0]) {
        snprintf(adv, sizeof adv, "%s", mc->advertise);
    } else if (strcmp(c->bind_address, "0.0.0.0") == 0 || strcmp(c->bind_address, "::") == 0) {
        fprintf(stderr, "mimeo serve: bound to every address, the mesh needs --advertise URL "
                        "(how the other nodes reach this one)\n");
        free(secret);
        return -1;
    } else {
        bool v6 = strchr(c->bind_address, ':') != NULL;
        snprintf(adv, sizeof adv, "http://%s%s%s:%u", v6 ? "[" : "", c->bind_address,
                 v6 ? "]" : "", port);
    }
    struct mesh_node_opts o = {
        .name = mc->name, .advertise = adv, .bind = c->bind_address, .port = port,
        .join = mc->join, .secret = secret, .secret_len = slen, .databases = mc->databases,
        .env = env, .anti_entropy_ms = mc->anti_entropy_interval_ms,
        .repl_workers = mc->replication_workers, .repl_batch = mc->replication_batch,
        .repl_timeout_ms = mc->replication_timeout_ms, .no_eager_push = !mc->eager_push,
    };
    mesh_config_default(&o.tun);
    o.tun.gossip_nodes = mc->fanout;
    o.tun.probe_interval_ms = mc->probe_interval_ms;
    o.tun.probe_timeout_ms = mc->probe_timeout_ms;
    o.tun.indirect_checks = mc->indirect_checks;
    o.tun.gossip_interval_ms = mc->gossip_interval_ms;
    o.tun.pushpull_interval_ms = mc->pushpull_interval_ms;
    o.tun.suspicion_mult = mc->suspicion_mult;
    o.tun.retransmit_mult = mc->retransmit_mult;
    o.tun.reap_dead_ms = mc->reap_dead_ms;
    o.tun.reap_left_ms = mc->reap_left_ms;
    int rc = mesh_node_start(&o, out, err, sizeof err);
    free(secret);
    if (rc != 0) {
        fprintf(stderr, "mimeo serve: %s\n", err);
        return -1;
    }
    fprintf(stderr, "mimeo: mesh node %s at %s%s%s\n", mc->name[0] ? mc->name : adv, adv,
            mc->join[0] ? ", joining " : "", mc->join);
    return 0;
}

int cli_serve(int argc, char **argv) {
    cli_config cfg;
    config_defaults(&cfg);
    if (serve_parse(argc, argv, &cfg) != 0) return 2;

    /* Signals are taken by sigwait below; blocking them before any thread starts makes
     * every MHD thread inherit the mask. A closed peer must not kill us either. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* Bulk request bodies are megabytes: above glibc's default thresholds each one would be
     * mmap'd, faulted in page by page and unmapped again (measured: a third of the server's
     * CPU in _bulk_docs). Keeping them in the heap lets requests reuse the memory. */
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);

    mimeo_options opts;
    config_to_options(&cfg, &opts);
    mimeo_env *env = NULL;
    mimeo_err err = {0};
    int rc = mimeo_env_open(cfg.data_dir, &opts, &env, &err);
    if (rc != 0) {
        fprintf(stderr, "mimeo serve: cannot open %s: %s\n", cfg.data_dir,
                err.reason[0] ? err.reason : mimeo_strerror(rc));
        return 1;
    }

    /* Jobs from the _replicator database resume with the node. */
    mimeo_replicator_options ro;
    config_to_replicator(&cfg, &ro);
    mimeo_replicator_configure(env, &ro);
    rc = mimeo_replicator_start(env, &err);
    if (rc != 0)
        fprintf(stderr, "mimeo serve: replication manager not started: %s\n",
                err.reason[0] ? err.reason : mimeo_strerror(rc));

    http_server *tls_srv = NULL, *srv = NULL;
    struct mesh_node *mesh = NULL;
    char *pem[2] = { NULL, NULL };
    if (serve_security(&cfg) != 0) goto fail;
    http_config hc;
    config_to_http(&cfg, &hc);
    char why[256];
    if (serve_tls_start(env, &cfg, &hc, &tls_srv, pem) != 0) goto fail;
    if (cfg.http_enable || !tls_srv) {
        srv = http_server_start(env, &hc, why, sizeof why);
        if (!srv) {
            fprintf(stderr, "mimeo serve: %s\n", why);
            goto fail;
        }
    }
    /* Before the listening line: a mesh that cannot start (no secret) stops the server. */
    if (serve_mesh_start(&cfg, env, http_server_port(srv ? srv : tls_srv), &mesh) != 0)
        goto fail;
    if (srv) {
        bool v6 = strchr(cfg.bind_address, ':') != NULL;
        printf("mimeo listening on http://%s%s%s:%u\n", v6 ? "[" : "", cfg.bind_address,
               v6 ? "]" : "", http_server_port(srv));
    }
    fflush(stdout);
    fprintf(stderr, "mimeo: data in %s\n", cfg.data_dir);


    int sig = 0;
    sigwait(&stop, &sig);
    fprintf(stderr, "mimeo: %s received, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    if (mesh) mesh_node_leave(mesh, 3000);   /* peers see "left", not "dead" */
    http_server_quiesce(srv);     /* no new connections; waiting feeds end */
    http_server_quiesce(tls_srv);
    mimeo_replicator_stop(env);   /* also cancels one-shot /_replicate calls in flight */
    http_server_free(srv);        /* requests finish; every db handle is closed */
    mesh_node_free(mesh);         /* after the HTTP handlers that deliver to it */
    http_server_free(tls_srv);
    free(pem[0]);
    free(pem[1]);
    mimeo_env_close(env);         /* commits writes in flight */
    fprintf(stderr, "mimeo: stopped\n");
    return 0;

fail:
    http_server_free(srv);
    http_server_free(tls_srv);
    free(pem[0]);
    free(pem[1]);
    mimeo_replicator_stop(env);
    mimeo_env_close(env);
    return 1;
}
