/*
 * main.c - ferryd's command line: parse options, run the broker loop.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <ini.h>

#include "auth.h"
#include "broker.h"
#include "log.h"
#include "proto.h"

static const char usage[] =
    "usage: ferryd [options]\n"
    "\n"
    "Ferry message broker: durable topics in one SQLite database.\n"
    "\n"
    "  --listen HOST:PORT        address to listen on (default 127.0.0.1:7411);\n"
    "                            port 0 picks a free port\n"
    "  --http HOST:PORT          serve metrics (/metrics), a JSON API (/api/v1/...) and\n"
    "                            a live dashboard (/) over HTTP on this address\n"
    "                            (default: off; with tokens, requests need an admin\n"
    "                            token: Authorization: Bearer TOKEN)\n"
    "  --data DIR                data folder, created if missing (default ./ferry-data)\n"
    "  --sync full|normal        full (default): every publish is fsynced to disk\n"
    "                            before it is acknowledged; survives power loss.\n"
    "                            normal: acknowledged once written to the OS and\n"
    "                            fsynced every --sync-interval; survives a crash or\n"
    "                            kill -9 of ferryd, but a power loss or OS crash\n"
    "                            loses what was acknowledged in the last interval\n"
    "  --sync-interval DURATION  with --sync normal, fsync the WAL this often when\n"
    "                            anything was written (default 1s; 10ms to 1h)\n"
    "  --max-message-bytes N     largest key + headers + payload (default 1048576)\n"
    "  --max-batch N             most messages in one batch publish (default 10000)\n"
    "  --dedupe-window DURATION  how long message ids are remembered for idempotent\n"
    "                            publish, e.g. 90s, 30m, 48h, 7d (default 48h)\n"
    "  --dedupe-window-ms N      the same in milliseconds\n"
    "  --dedupe-max-ids N        remember at most N ids (the oldest are forgotten\n"
    "                            first); the index costs up to 32 bytes an id\n"
    "                            (default 10000000)\n"
    "  --retention-max-age DURATION    delete messages older than this (default: keep)\n"
    "  --retention-max-count N   keep at most the N newest messages of each topic\n"
    "  --retention-max-bytes N   keep at most N bytes (key + headers + payload) a topic\n"
    "  --retention-delete-acked  delete messages once every group of their topic\n"
    "                            has acked them (topics without groups keep theirs)\n"
    "  --redelivery-backoff LIST wait before redelivering a message whose lease ran\n"
    "                            out: the k-th of these durations before the k-th\n"
    "                            redelivery, the last repeated, e.g. 1s,5s,30s\n"
    "                            (default: at once)\n"
    "  --max-connections N       connections beyond this are refused (default 1024)\n"
    "  --handshake-timeout DURATION  close connections that have not sent HELLO\n"
    "                            by then (default 10s)\n"
    "  --idle-timeout DURATION   close connections silent this long (default: never)\n"
    "  --idle-timeout-ms N       the same in milliseconds (0: never)\n"
    "  --cache-mb N              SQLite page cache in MiB (default 128)\n"
    "  --max-db-mb N             cap the database at N MiB: publishes beyond it fail\n"
    "                            with \"storage full\" (default: no cap)\n"
    "  --disk-reserve-mb N       keep N MiB of disk allocated in the data folder\n"
    "                            (ferry.reserve) and free it when the disk fills,\n"
    "                            so that acks still fit while publishes are\n"
    "                            refused; 0: none (default 64)\n"
    "  --config FILE             read settings ([broker]: these options without --)\n"
    "                            and tokens ([token NAME]) from FILE; the command\n"
    "                            line overrides it. Without tokens ferryd only\n"
    "                            listens on loopback addresses\n"
    "  --ready-file PATH         once listening, write HOST:PORT to PATH\n"
    "  --log-level LEVEL         debug, info (default), warn or error\n"
    "  -h, --help, -V, --version\n";

/* Parses "123", "123ms", "30s", "5m", "48h", "7d" into milliseconds. */
static int parse_duration_ms(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s)
        return -1;
    uint64_t mul;
    if (!*end || !strcmp(end, "ms"))
        mul = 1;
    else if (!strcmp(end, "s"))
        mul = 1000;
    else if (!strcmp(end, "m"))
        mul = 60000;
    else if (!strcmp(end, "h"))
        mul = 3600000;
    else if (!strcmp(end, "d"))
        mul = 86400000;
    else
        return -1;
    if (v > UINT64_MAX / mul)
        return -1;
    *out = v * mul;
    return 0;
}

static int parse_uint(const char *s, unsigned long long max, unsigned long long *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || v > max)
        return -1;
    *out = v;
    return 0;
}

/* HOST:PORT, [V6]:PORT; localhost becomes 127.0.0.1. */
static int parse_hostport(const char *s, char *out, size_t cap, int *out_port)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s)
        return -1;
    const char *host = s;
    size_t hlen = (size_t)(colon - s);
    if (host[0] == '[' && hlen >= 2 && host[hlen - 1] == ']') {
        host++;
        hlen -= 2;
    }
    if (hlen >= cap || hlen == 0)
        return -1;
    unsigned long long port;
    if (parse_uint(colon + 1, 65535, &port) < 0)
        return -1;
    memcpy(out, host, hlen);
    out[hlen] = 0;
    if (!strcmp(out, "localhost"))
        strcpy(out, "127.0.0.1");
    *out_port = (int)port;
    return 0;
}

static int parse_listen(const char *s, struct broker_config *cfg)
{
    return parse_hostport(s, cfg->listen_host, sizeof(cfg->listen_host), &cfg->listen_port);
}

static int mkdir_p(const char *path)
{
    char tmp[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof(tmp))
        return -1;
    memcpy(tmp, path, n + 1);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    }
    if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
        return -1;
    return 0;
}

static void close_handle(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static int bad(const char *opt, const char *val)
{
    fprintf(stderr, "ferryd: invalid value for %s: %s\n(see ferryd --help)\n", opt, val);
    return 2;
}

enum {
    OPT_LISTEN = 256,
    OPT_DATA,
    OPT_SYNC,
    OPT_SYNC_INTERVAL,
    OPT_MAXMSG,
    OPT_MAXBATCH,
    OPT_DEDUPE,
    OPT_DEDUPE_MS,
    OPT_MAXCONN,
    OPT_BACKOFF,
    OPT_RET_AGE,
    OPT_RET_COUNT,
    OPT_RET_BYTES,
    OPT_RET_ACKED,
    OPT_DEDUPE_MAX,
    OPT_HSTIMEOUT,
    OPT_IDLE,
    OPT_IDLE_MS,
    OPT_CACHE,
    OPT_MAXDB,
    OPT_RESERVE,
    OPT_READY,
    OPT_LOGLEVEL,
    OPT_HELP,
    OPT_VERSION,
    OPT_CONFIG,
    OPT_HTTP
};
static const struct option opts[] = {
    {"listen", required_argument, NULL, OPT_LISTEN},
    {"data", required_argument, NULL, OPT_DATA},
    {"sync", required_argument, NULL, OPT_SYNC},
    {"sync-interval", required_argument, NULL, OPT_SYNC_INTERVAL},
    {"max-message-bytes", required_argument, NULL, OPT_MAXMSG},
    {"max-batch", required_argument, NULL, OPT_MAXBATCH},
    {"dedupe-window", required_argument, NULL, OPT_DEDUPE},
    {"dedupe-window-ms", required_argument, NULL, OPT_DEDUPE_MS},
    {"max-connections", required_argument, NULL, OPT_MAXCONN},
    {"redelivery-backoff", required_argument, NULL, OPT_BACKOFF},
    {"retention-max-age", required_argument, NULL, OPT_RET_AGE},
    {"retention-max-count", required_argument, NULL, OPT_RET_COUNT},
    {"retention-max-bytes", required_argument, NULL, OPT_RET_BYTES},
    {"retention-delete-acked", no_argument, NULL, OPT_RET_ACKED},
    {"dedupe-max-ids", required_argument, NULL, OPT_DEDUPE_MAX},
    {"handshake-timeout", required_argument, NULL, OPT_HSTIMEOUT},
    {"idle-timeout", required_argument, NULL, OPT_IDLE},
    {"idle-timeout-ms", required_argument, NULL, OPT_IDLE_MS},
    {"cache-mb", required_argument, NULL, OPT_CACHE},
    {"max-db-mb", required_argument, NULL, OPT_MAXDB},
    {"disk-reserve-mb", required_argument, NULL, OPT_RESERVE},
    {"ready-file", required_argument, NULL, OPT_READY},
    {"log-level", required_argument, NULL, OPT_LOGLEVEL},
    {"config", required_argument, NULL, OPT_CONFIG},
    {"http", required_argument, NULL, OPT_HTTP},
    {"help", no_argument, NULL, OPT_HELP},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0},
};

#define OPTION_HELP 100
#define OPTION_VERSION 101

/* Sizes, counts and the dedupe window: 0, 2 for a bad value, -1 when ch
 * is not one of these. */
static int set_limit_option(struct broker_config *cfg, int ch, const char *arg)
{
    unsigned long long v;
    switch (ch) {
    case OPT_MAXMSG:
        if (parse_uint(arg, PROTO_ABSOLUTE_MAX_FRAME - 65536, &v) < 0 || v < 1)
            return bad("--max-message-bytes", arg);
        cfg->max_message_bytes = (uint32_t)v;
        break;
    case OPT_MAXBATCH:
        if (parse_uint(arg, PROTO_MAX_BATCH, &v) < 0 || v < 1)
            return bad("--max-batch", arg);
        cfg->max_batch = (uint32_t)v;
        break;
    case OPT_DEDUPE:
        if (parse_duration_ms(arg, &cfg->dedupe_window_ms) < 0 || !cfg->dedupe_window_ms)
            return bad("--dedupe-window", arg);
        break;
    case OPT_DEDUPE_MS:
        if (parse_uint(arg, UINT64_MAX, &v) < 0 || v < 1)
            return bad("--dedupe-window-ms", arg);
        cfg->dedupe_window_ms = v;
        break;
    case OPT_DEDUPE_MAX:
        if (parse_uint(arg, 1ull << 32, &v) < 0 || v < 1)
            return bad("--dedupe-max-ids", arg);
        cfg->dedupe_max_ids = v;
        break;
    case OPT_MAXCONN:
        if (parse_uint(arg, 1000000, &v) < 0 || v < 1)
            return bad("--max-connections", arg);
        cfg->max_connections = (int)v;
        break;
    case OPT_CACHE:
        if (parse_uint(arg, 1 << 20, &v) < 0 || v < 1)
            return bad("--cache-mb", arg);
        cfg->cache_mb = (int)v;
        break;
    case OPT_MAXDB:
        if (parse_uint(arg, 1ull << 30, &v) < 0 || v < 1)
            return bad("--max-db-mb", arg);
        cfg->max_db_bytes = v << 20;
        break;
    case OPT_RESERVE:
        if (parse_uint(arg, 1ull << 20, &v) < 0)
            return bad("--disk-reserve-mb", arg);
        cfg->reserve_bytes = v << 20;
        break;
    default:
        return -1;
    }
    return 0;
}

/* Retention, redelivery and connection timeouts: as set_limit_option. */
static int set_lifetime_option(struct broker_config *cfg, int ch, const char *arg)
{
    unsigned long long v;
    switch (ch) {
    case OPT_RET_AGE:
        if (parse_duration_ms(arg, &cfg->retention_max_age_ms) < 0 || !cfg->retention_max_age_ms)
            return bad("--retention-max-age", arg);
        break;
    case OPT_RET_COUNT:
        if (parse_uint(arg, UINT64_MAX, &v) < 0 || v < 1)
            return bad("--retention-max-count", arg);
        cfg->retention_max_count = v;
        break;
    case OPT_RET_BYTES:
        if (parse_uint(arg, UINT64_MAX, &v) < 0 || v < 1)
            return bad("--retention-max-bytes", arg);
        cfg->retention_max_bytes = v;
        break;
    case OPT_RET_ACKED:
        cfg->retention_delete_acked = 1;
        break;
    case OPT_BACKOFF: {
        char list[256];
        if (strlen(arg) >= sizeof(list))
            return bad("--redelivery-backoff", arg);
        strcpy(list, arg);
        cfg->backoff_count = 0;
        char *save = NULL;
        for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            if (cfg->backoff_count == 16 ||
                parse_duration_ms(tok, &cfg->backoff_ms[cfg->backoff_count]) < 0)
                return bad("--redelivery-backoff", arg);
            cfg->backoff_count++;
        }
        break;
    }
    case OPT_HSTIMEOUT:
        if (parse_duration_ms(arg, &cfg->handshake_timeout_ms) < 0)
            return bad("--handshake-timeout", arg);
        break;
    case OPT_IDLE:
        if (parse_duration_ms(arg, &cfg->idle_timeout_ms) < 0)
            return bad("--idle-timeout", arg);
        break;
    case OPT_IDLE_MS:
        if (parse_uint(arg, UINT64_MAX, &v) < 0)
            return bad("--idle-timeout-ms", arg);
        cfg->idle_timeout_ms = v;
        break;
    default:
        return -1;
    }
    return 0;
}

/* Applies one option, from the command line or the config file. Returns 0,
 * 2 for a bad value (after saying so), or OPTION_HELP / OPTION_VERSION. */
static int set_option(struct broker_config *cfg, int ch, const char *arg)
{
    int rc = set_limit_option(cfg, ch, arg);
    if (rc < 0)
        rc = set_lifetime_option(cfg, ch, arg);
    if (rc >= 0)
        return rc;
    switch (ch) {
    case OPT_LISTEN:
        if (parse_listen(arg, cfg) < 0)
            return bad("--listen", arg);
        break;
    case OPT_HTTP:
        if (!strcmp(arg, "off") || !strcmp(arg, "")) {
            cfg->http_host[0] = 0;
            break;
        }
        if (parse_hostport(arg, cfg->http_host, sizeof(cfg->http_host), &cfg->http_port) < 0)
            return bad("--http", arg);
        break;
    case OPT_DATA:
        if (!*arg || strlen(arg) >= sizeof(cfg->data_dir) - 32)
            return bad("--data", arg);
        strcpy(cfg->data_dir, arg);
        break;
    case OPT_SYNC:
        if (!strcmp(arg, "full"))
            cfg->sync_full = 1;
        else if (!strcmp(arg, "normal"))
            cfg->sync_full = 0;
        else
            return bad("--sync", arg);
        break;
    case OPT_SYNC_INTERVAL:
        if (parse_duration_ms(arg, &cfg->sync_interval_ms) < 0 || cfg->sync_interval_ms < 10 ||
            cfg->sync_interval_ms > 3600000)
            return bad("--sync-interval", arg);
        break;
    case OPT_READY:
        if (strlen(arg) >= sizeof(cfg->ready_file) - 8)
            return bad("--ready-file", arg);
        strcpy(cfg->ready_file, arg);
        break;
    case OPT_LOGLEVEL:
        if (!strcmp(arg, "debug"))
            log_set_level(LOG_DEBUG);
        else if (!strcmp(arg, "info"))
            log_set_level(LOG_INFO);
        else if (!strcmp(arg, "warn"))
            log_set_level(LOG_WARN);
        else if (!strcmp(arg, "error"))
            log_set_level(LOG_ERROR);
        else
            return bad("--log-level", arg);
        break;
    case 'V':
        return OPTION_VERSION;
    case 'h':
    case OPT_HELP:
        return OPTION_HELP;
    case OPT_VERSION:
        return OPTION_VERSION;
    case OPT_CONFIG:
        return 0; /* read before any other option */
    default:
        fputs(usage, stderr);
        return 2;
    }
    return 0;
}

/* ---- the config file ------------------------------------------------- */

struct config_ctx {
    struct broker_config *cfg;
    const char *path;
    int status;
};

/* inih calls this for every "key = value" line. [broker] keys are the
 * long option names; [token NAME] sections define tokens (auth.h). */
static int on_config(void *user, const char *section, const char *name, const char *value)
{
    struct config_ctx *cx = user;
    char err[256];
    if (strncmp(section, "token ", 6) == 0) {
        if (auth_set(&cx->cfg->auth, section + 6, name, value, err, sizeof(err)) < 0) {
            fprintf(stderr, "ferryd: %s: %s\n", cx->path, err);
            cx->status = 2;
            return 0;
        }
        return 1;
    }
    if (strcmp(section, "broker") != 0) {
        fprintf(stderr, "ferryd: %s: unknown section [%s]\n", cx->path, section);
        cx->status = 2;
        return 0;
    }
    for (const struct option *o = opts; o->name; o++) {
        if (strcmp(o->name, name) != 0 || o->val == OPT_CONFIG || o->val == OPT_HELP ||
            o->val == OPT_VERSION)
            continue;
        const char *v = value;
        if (o->has_arg == no_argument) {
            if (!strcmp(value, "false") || !strcmp(value, "no") || !strcmp(value, "0"))
                return 1;
            v = NULL;
        }
        if (set_option(cx->cfg, o->val, v) != 0) {
            cx->status = 2;
            return 0;
        }
        return 1;
    }
    fprintf(stderr, "ferryd: %s: unknown setting \"%s\" in [broker]\n", cx->path, name);
    cx->status = 2;
    return 0;
}

static int load_config(struct broker_config *cfg, const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0) {
        fprintf(stderr, "ferryd: cannot read config %s: %s\n", path, strerror(errno));
        return 2;
    }
    struct config_ctx cx = {cfg, path, 0};
    int rc = ini_parse(path, on_config, &cx);
    if (cx.status)
        return cx.status;
    if (rc != 0) {
        if (rc > 0)
            fprintf(stderr, "ferryd: %s:%d: cannot parse this line\n", path, rc);
        else
            fprintf(stderr, "ferryd: cannot read config %s\n", path);
        return 2;
    }
    char err[256];
    if (auth_finish(&cfg->auth, err, sizeof(err)) < 0) {
        fprintf(stderr, "ferryd: %s: %s\n", path, err);
        return 2;
    }
    if (cfg->auth.ntokens && (st.st_mode & 077))
        fprintf(stderr,
                "ferryd: warning: %s holds token secrets and is readable by others "
                "(chmod 600 it)\n",
                path);
    return 0;
}

/* A data folder or database made before (by another program, or a ferryd
 * with a looser umask) may be open to other local users, who could then
 * read every message with sqlite3: say so once at start. */
static void warn_if_shared(const char *dir, const char *file)
{
    char path[4200];
    struct stat st;
    snprintf(path, sizeof(path), "%s%s", dir, file);
    if (stat(path, &st) == 0 && (st.st_mode & 077))
        log_warn("%s is open to other users (mode %04o): they can read every message; chmod %s "
                 "it",
                 path, (unsigned)(st.st_mode & 07777), S_ISDIR(st.st_mode) ? "700" : "600");
}

static void default_config(struct broker_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    strcpy(cfg->listen_host, "127.0.0.1");
    cfg->listen_port = 7411;
    strcpy(cfg->data_dir, "./ferry-data");
    cfg->sync_full = 1;
    cfg->sync_interval_ms = 1000;
    cfg->cache_mb = 128;
    cfg->max_message_bytes = PROTO_DEFAULT_MAX_MESSAGE;
    cfg->max_batch = PROTO_MAX_BATCH;
    cfg->dedupe_window_ms = 48ull * 3600 * 1000;
    cfg->dedupe_max_ids = 10000000;
    cfg->max_connections = 1024;
    cfg->handshake_timeout_ms = 10000;
    cfg->idle_timeout_ms = 0;
    cfg->conn_max_pending_bytes = 8u << 20;
    cfg->batch_max_bytes = 64u << 20;
    cfg->reserve_bytes = 64u << 20;
}

/* The config file, then the command line over it, then the checks and
 * the derived values. Returns -1 to run, else the exit status (0 after
 * --help or --version). */
static int configure(struct broker_config *cfg, int argc, char **argv)
{
    int ch, rc;
    default_config(cfg);
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "hV", opts, NULL)) != -1)
        if (ch == OPT_CONFIG && (rc = load_config(cfg, optarg)) != 0)
            return rc;
    opterr = 1;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "hV", opts, NULL)) != -1) {
        rc = set_option(cfg, ch, optarg);
        if (rc == OPTION_HELP || rc == OPTION_VERSION) {
            if (rc == OPTION_HELP)
                fputs(usage, stdout);
            else
                puts("ferryd " FERRY_BROKER_VERSION);
            return 0;
        }
        if (rc)
            return rc;
    }
    if (optind < argc) {
        fprintf(stderr, "ferryd: unexpected argument: %s\n", argv[optind]);
        return 2;
    }
    if (!auth_enabled(&cfg->auth) && !broker_is_loopback(cfg->listen_host)) {
        fprintf(stderr,
                "ferryd: refusing to listen on %s without authentication: configure tokens in "
                "a config file (--config, see docs/OPERATIONS.md) or listen on 127.0.0.1\n",
                cfg->listen_host);
        return 2;
    }
    if (cfg->http_host[0] && !auth_enabled(&cfg->auth) && !broker_is_loopback(cfg->http_host)) {
        fprintf(stderr,
                "ferryd: refusing to serve HTTP on %s without authentication: configure tokens "
                "(the HTTP listener needs one with the admin right) or use 127.0.0.1\n",
                cfg->http_host);
        return 2;
    }
    cfg->max_frame_bytes = PROTO_DEFAULT_MAX_FRAME;
    if (cfg->max_message_bytes + 65536u > cfg->max_frame_bytes)
        cfg->max_frame_bytes = cfg->max_message_bytes + 65536u;
    return -1;
}

/* Runs the broker until it stops. Returns the exit status. */
static int run(const struct broker_config *cfg)
{
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        log_error("cannot initialise the event loop");
        return 1;
    }
    struct broker *b = malloc(sizeof(*b));
    if (!b) {
        log_error("out of memory");
        return 1;
    }
    int status = 0;
    if (broker_init(b, &loop, cfg) < 0 || broker_start(b) < 0) {
        status = 1;
        /* Close whatever handles were opened, then drain the loop. */
        uv_walk(&loop, close_handle, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
    } else {
        uv_run(&loop, UV_RUN_DEFAULT);
    }
    broker_destroy(b);
    free(b);
    int rc = uv_loop_close(&loop);
    if (rc != 0 && status == 0) {
        log_error("event loop closed with handles still open: %s", uv_strerror(rc));
        status = 1;
    }
    return status;
}

int main(int argc, char **argv)
{
    struct broker_config cfg;
    int rc = configure(&cfg, argc, argv);
    if (rc >= 0) {
        auth_free(&cfg.auth);
        return rc;
    }
    signal(SIGPIPE, SIG_IGN);
    /* Messages are private: every folder and file ferryd creates (the data
     * folder, the database, its WAL, the lock, the reserve) is its user's
     * only, whatever the umask it was started with. */
    umask(077);
    if (mkdir_p(cfg.data_dir) < 0) {
        fprintf(stderr, "ferryd: cannot create data folder %s: %s\n", cfg.data_dir,
                strerror(errno));
        auth_free(&cfg.auth);
        return 1;
    }
    log_info("ferryd %s starting", FERRY_BROKER_VERSION);
    warn_if_shared(cfg.data_dir, "");
    warn_if_shared(cfg.data_dir, "/ferry.db");
    int status = run(&cfg);
    auth_free(&cfg.auth);
    log_info("stopped");
    return status;
}
