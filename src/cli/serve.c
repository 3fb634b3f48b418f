/* mimeo serve: reads the configuration, opens the data directory, starts the HTTP server,
 * prints "mimeo listening on http://ADDR:PORT" (tests parse that line), and on SIGINT or
 * SIGTERM stops accepting, lets requests in flight finish, closes the store and exits 0. */
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

static void serve_usage(FILE *out)
{
    fprintf(out,
            "usage: mimeo serve [--data DIR] [--bind ADDR] [--port N] [--config FILE]\n"
            "                   [--set SECTION.KEY=VALUE]…\n\n"
            "Options can also be set in an INI file (--config); flags win over the file.\n"
            "Every option, by INI section:\n");
    config_print(out);
}

/* "--port=5984" or "--port 5984": the value, advancing *i past it; NULL if missing. */
static const char *serve_value(int argc, char **argv, int *i, const char *flag)
{
    size_t fl = strlen(flag);
    if (strncmp(argv[*i], flag, fl) == 0 && argv[*i][fl] == '=') return argv[*i] + fl + 1;
    if (*i + 1 >= argc) return NULL;
    return argv[++*i];
}

/* The flag part of "--port=1" or "--port". */
static void serve_flag_name(const char *arg, char *out, size_t n)
{
    const char *eq = strchr(arg, '=');
    size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
    if (len >= n) len = n - 1;
    memcpy(out, arg, len);
    out[len] = '\0';
}

/* Applies "section.key=value". */
static int serve_set(cli_config *c, const char *spec, char *err, size_t errlen)
{
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

static int serve_parse(int argc, char **argv, cli_config *c)
{
    char err[512];
    /* The file first, wherever --config appears, so that flags override it. */
    for (int i = 1; i < argc; i++) {
        char flag[32];
        serve_flag_name(argv[i], flag, sizeof flag);
        if (strcmp(flag, "--config") != 0) continue;
        const char *path = serve_value(argc, argv, &i, "--config");
        if (!path) {
            fprintf(stderr, "mimeo serve: --config needs a file\n");
            return -1;
        }
        if (config_load_file(c, path, err, sizeof err) != 0) {
            fprintf(stderr, "mimeo serve: %s\n", err);
            return -1;
        }
    }
    for (int i = 1; i < argc; i++) {
        char flag[32];
        const char *section, *name;
        serve_flag_name(argv[i], flag, sizeof flag);
        if (strcmp(flag, "--help") == 0 || strcmp(flag, "-h") == 0) {
            serve_usage(stdout);
            exit(0);
        }
        if (strcmp(flag, "--config") == 0) {
            serve_value(argc, argv, &i, "--config");
            continue;
        }
        const char *v;
        if (strcmp(flag, "--set") == 0) {
            if (!(v = serve_value(argc, argv, &i, "--set"))) goto missing;
            if (serve_set(c, v, err, sizeof err) != 0) goto bad;
            continue;
        }
        if (config_flag(flag, &section, &name)) {
            if (!(v = serve_value(argc, argv, &i, flag))) goto missing;
            if (config_set(c, section, name, v, err, sizeof err) != 0) goto bad;
            continue;
        }
        fprintf(stderr, "mimeo serve: unknown option '%s'\n\n", argv[i]);
        serve_usage(stderr);
        return -1;
    missing:
        fprintf(stderr, "mimeo serve: %s needs a value\n", flag);
        return -1;
    bad:
        fprintf(stderr, "mimeo serve: %s\n", err);
        return -1;
    }
    return 0;
}

/* Starts the mesh when [mesh] asks for it (*out stays NULL when it does not). -1 after
 * printing why when it is asked for but cannot run, e.g. without a secret. */
static int serve_mesh_start(const cli_config *c, mimeo_env *env, unsigned port,
                            struct mesh_node **out)
{
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
        .env = env,
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

int cli_serve(int argc, char **argv)
{
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
    rc = mimeo_replicator_start(env, &err);
    if (rc != 0)
        fprintf(stderr, "mimeo serve: replication manager not started: %s\n",
                err.reason[0] ? err.reason : mimeo_strerror(rc));

    http_config hc;
    config_to_http(&cfg, &hc);
    char why[256];
    http_server *srv = http_server_start(env, &hc, why, sizeof why);
    if (!srv) {
        fprintf(stderr, "mimeo serve: %s\n", why);
        mimeo_replicator_stop(env);
        mimeo_env_close(env);
        return 1;
    }
    /* Before the listening line: a mesh that cannot start (no secret) stops the server. */
    struct mesh_node *mesh = NULL;
    if (serve_mesh_start(&cfg, env, http_server_port(srv), &mesh) != 0) {
        http_server_free(srv);
        mimeo_replicator_stop(env);
        mimeo_env_close(env);
        return 1;
    }
    bool v6 = strchr(cfg.bind_address, ':') != NULL;
    printf("mimeo listening on http://%s%s%s:%u\n", v6 ? "[" : "", cfg.bind_address,
           v6 ? "]" : "", http_server_port(srv));
    fflush(stdout);
    fprintf(stderr, "mimeo: data in %s\n", cfg.data_dir);


    int sig = 0;
    sigwait(&stop, &sig);
    fprintf(stderr, "mimeo: %s received, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    if (mesh) mesh_node_leave(mesh, 3000);   /* peers see "left", not "dead" */
    http_server_quiesce(srv);     /* no new connections; waiting feeds end */
    mimeo_replicator_stop(env);   /* also cancels one-shot /_replicate calls in flight */
    http_server_free(srv);        /* requests finish; every db handle is closed */
    mesh_node_free(mesh);         /* after the HTTP handlers that deliver to it */
    mimeo_env_close(env);         /* commits writes in flight */
    fprintf(stderr, "mimeo: stopped\n");
    return 0;
}
