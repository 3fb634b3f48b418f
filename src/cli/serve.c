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

static void serve_usage(FILE *out)
{
    fprintf(out,
            "usage: mimeo serve [--data DIR] [--bind ADDR] [--port N] [--config FILE]\n"
            "                   [--set SECTION.KEY=VALUE]…\n\n"
            "Options can also be set in an INI file (--config); flags win over the file.\n"
            "Every option, by INI section:\n");
    config_print(out);
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
    { NULL, 0, NULL, 0 },
};

/* Precedence: defaults, then the --config file (wherever it appears), then the flags in
 * order. -1 after printing one line on stderr; exits 0 after --help. */
static int serve_parse(int argc, char **argv, cli_config *c)
{
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
    mimeo_replicator_options ro;
    config_to_replicator(&cfg, &ro);
    mimeo_replicator_configure(env, &ro);
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
    bool v6 = strchr(cfg.bind_address, ':') != NULL;
    printf("mimeo listening on http://%s%s%s:%u\n", v6 ? "[" : "", cfg.bind_address,
           v6 ? "]" : "", http_server_port(srv));
    fflush(stdout);
    fprintf(stderr, "mimeo: data in %s\n", cfg.data_dir);

    int sig = 0;
    sigwait(&stop, &sig);
    fprintf(stderr, "mimeo: %s received, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    http_server_quiesce(srv);     /* no new connections; waiting feeds end */
    mimeo_replicator_stop(env);   /* also cancels one-shot /_replicate calls in flight */
    http_server_free(srv);        /* requests finish; every db handle is closed */
    mimeo_env_close(env);         /* commits writes in flight */
    fprintf(stderr, "mimeo: stopped\n");
    return 0;
}
