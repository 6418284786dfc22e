/*
 * cmd_relay.c - `ferry relay --db PATH`: the outbox relay as a sidecar
 * process (libferry's ferry_relay), plus --status, --install and --drain.
 *
 * The relay runs until SIGINT or SIGTERM (ferry_relay_stop from the signal
 * handler, which is async-signal-safe) and logs to stderr. --status reads
 * the outbox without connecting to the broker and tells whether a relay
 * holds the database's relay lock.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>
#ifdef FERRY_HAVE_POSTGRES
#include <libpq-fe.h>
#endif

#include "cli.h"

enum {
    OPT_DB = CLI_OPT_FIRST_COMMAND,
    OPT_BATCH,
    OPT_RETENTION,
    OPT_POLL_MS,
    OPT_STATUS,
    OPT_JSON,
    OPT_INSTALL,
    OPT_DRAIN,
    OPT_PG,
    OPT_SCHEMA,
    OPT_RESCAN_MS,
};

static const char usage_text[] =
    "Usage: ferry relay --db PATH [OPTIONS]\n"
    "       ferry relay --db PATH --status [--json]\n"
    "       ferry relay --db PATH --install\n"
    "       ferry relay --pg URL [--schema NAME] [OPTIONS]\n"
    "       ferry relay --pg URL [--schema NAME] --status [--json] | --install\n"
    "\n"
    "Relays the transactional outbox of the SQLite database PATH to the broker:\n"
    "publishes the committed rows of its ferry_outbox table in order, and marks\n"
    "each sent once the broker stored it durably (docs/OUTBOX.md). Runs until\n"
    "SIGINT or SIGTERM. One relay per database is active: another started on\n"
    "the same database stands by and takes over when the active one stops.\n"
    "With --pg, the same for the table SCHEMA.outbox of a PostgreSQL database:\n"
    "committed rows are claimed in commit order (never skipped when ids commit\n"
    "out of order) and deleted once the broker stored them; one relay per\n"
    "outbox holds its advisory lock, others stand by (docs/OUTBOX.md, PostgreSQL).\n"
    "\n"
    "Options:\n"
    "  --db PATH            the application's SQLite database\n"
    "  --pg URL             or the application's PostgreSQL database (a libpq URL,\n"
    "                       postgresql://USER@HOST/DB, or key=value string): relays\n"
    "                       SCHEMA.outbox, woken by NOTIFY at each COMMIT\n"
    "  --schema NAME        with --pg: the schema of the outbox (default ferry)\n"
    "  --rescan-ms N        with --pg: the safety re-scan when no NOTIFY came,\n"
    "                       100-3600000 (default 10000)\n"
    "                       (--retention and --poll-ms are for --db only)\n"
    "  --to ADDR            where to relay: ferryd's HOST:PORT, or NATS JetStream,\n"
    "                       nats://HOST:PORT[,HOST:PORT...][?stream=NAME&...]\n"
    "                       (docs/SCALING.md); the same as --server\n"
    "  --batch N            rows per publish, 1-10000 (default 1000); over\n"
    "                       JetStream, publishes in flight at once\n"
    "  --retention DURATION delete sent rows this long after they were sent\n"
    "                       (default 1h; 0: at once; 'forever': never).\n"
    "                       DURATION: 500ms, 30s, 10m, 1h, 7d (bare: ms)\n"
    "  --poll-ms N          look for commits of other processes every N ms,\n"
    "                       1-10000 (default 5)\n"
    "  --drain              exit once no row is waiting\n"
    "  --status             print the outbox's state and exit (no broker needed)\n"
    "  --json               with --status: print one JSON object\n"
    "  --install            create the outbox tables when missing, print the\n"
    "                       database's producer id and exit\n" CLI_COMMON_HELP "\n"
    "Exit status: 0 stopped by a signal or drained, 1 an error, 2 a usage error.\n";

static ferry_relay *volatile running_relay;
#ifdef FERRY_HAVE_POSTGRES
static ferry_pg_relay *volatile running_pg_relay;
#endif

static void on_signal(int sig)
{
    (void)sig;
    ferry_relay_stop(running_relay);
#ifdef FERRY_HAVE_POSTGRES
    ferry_pg_relay_stop(running_pg_relay);
#endif
}

/* While a relay runs, SIGINT and SIGTERM stop it (on_signal) and SIGPIPE
 * is ignored; afterwards SIGINT and SIGTERM are the default again. */
static void catch_stop_signals(int on)
{
    if (!on) {
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        return;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* DURATION: digits with ms, s, m, h or d (none: ms), or "forever".
 * Returns 0 with *out set (FERRY_RELAY_KEEP_FOREVER for forever), or -1. */
static int parse_duration(const char *s, int64_t *out)
{
    if (strcmp(s, "forever") == 0) {
        *out = FERRY_RELAY_KEEP_FOREVER;
        return 0;
    }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *s == '-' || *s == '+')
        return -1;
    unsigned long long mul;
    if (strcmp(end, "ms") == 0)
        mul = 1;
    else if (strcmp(end, "s") == 0)
        mul = 1000;
    else if (strcmp(end, "m") == 0)
        mul = 60000;
    else if (strcmp(end, "h") == 0)
        mul = 3600000;
    else if (strcmp(end, "d") == 0)
        mul = 86400000;
    else if (*end == '\0')
        mul = 1; /* as ferryd's durations: a bare number is ms */
    else
        return -1;
    if (v > (unsigned long long)INT64_MAX / mul)
        return -1;
    *out = (int64_t)(v * mul);
    return 0;
}

static int parse_uint(const char *s, unsigned long long min, unsigned long long max,
                      unsigned long long *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-' || *s == '+' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/* The token file: one line, trailing whitespace ignored (as cli_connect). */
static int read_token_file(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "ferry: relay: cannot read token file %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t n = fread(buf, 1, len - 1, f);
    int bad = ferror(f) || !feof(f);
    fclose(f);
    buf[n] = '\0';
    while (n > 0 && strchr(" \t\r\n", buf[n - 1]))
        buf[--n] = '\0';
    if (bad || n == 0 || strlen(buf) != n || strchr(buf, '\n')) {
        fprintf(stderr, "ferry: relay: token file %s: expected one non-empty line\n", path);
        return -1;
    }
    return 0;
}

/* Whether a relay holds the database's lock: 1 (with its pid in pid, when
 * it wrote one), 0, or -1 when unknown. */
static int relay_running(const char *db, long *pid)
{
    char path[4096];
    *pid = 0;
    if ((size_t)snprintf(path, sizeof path, "%s%s", db, FERRY_RELAY_LOCK_SUFFIX) >= sizeof path)
        return -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    int held = 0;
    if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
        flock(fd, LOCK_UN);
    } else if (errno == EWOULDBLOCK) {
        held = 1;
        char buf[32];
        ssize_t n = read(fd, buf, sizeof buf - 1);
        if (n > 0) {
            buf[n] = '\0';
            *pid = strtol(buf, NULL, 10);
        }
    } else {
        held = -1;
    }
    close(fd);
    return held;
}

static void fmt_age(char *buf, size_t len, int64_t ms)
{
    if (ms < 1000)
        snprintf(buf, len, "%" PRId64 " ms", ms);
    else if (ms < 120000)
        snprintf(buf, len, "%.1f s", (double)ms / 1000.0);
    else if (ms < 2 * 3600000)
        snprintf(buf, len, "%.1f min", (double)ms / 60000.0);
    else
        snprintf(buf, len, "%.1f h", (double)ms / 3600000.0);
}

static void fmt_time(char *buf, size_t len, int64_t ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

static int64_t wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static int open_db(const char *path, int flags, sqlite3 **db)
{
    int rc = sqlite3_open_v2(path, db, flags, NULL);
    if (rc != SQLITE_OK) {
        fprintf(stderr, "ferry: relay: cannot open %s: %s\n", path,
                *db ? sqlite3_errmsg(*db) : sqlite3_errstr(rc));
        sqlite3_close(*db);
        *db = NULL;
        return CLI_EXIT_FAIL;
    }
    sqlite3_busy_timeout(*db, 5000);
    return CLI_EXIT_OK;
}

static int status(const char *path, int json)
{
    sqlite3 *db;
    if (open_db(path, SQLITE_OPEN_READONLY, &db) != CLI_EXIT_OK)
        return CLI_EXIT_FAIL;
    ferry_outbox_stats s;
    int rc = ferry_outbox_stats_get(db, &s);
    if (rc == FERRY_EUNSUPPORTED) {
        fprintf(stderr, "ferry: relay: %s has no outbox (see 'ferry relay --install')\n", path);
        sqlite3_close(db);
        return CLI_EXIT_FAIL;
    }
    if (rc < 0) {
        char detail[512];
        snprintf(detail, sizeof detail, "%s", sqlite3_errmsg(db));
        sqlite3_close(db);
        return cli_fail("relay: cannot read the outbox", rc, detail);
    }
    sqlite3_close(db);
    long pid;
    int running = relay_running(path, &pid);
    int64_t now = wall_ms();

    if (json) {
        if (cli_json_print(json_pack(
                "{s:o,s:o,s:b,s:I,s:o,s:o,s:I,s:o,s:I,s:I,s:o,s:o}", "db",
                cli_json_str(path, strlen(path)), "producer_id",
                cli_json_str(s.producer_id, strlen(s.producer_id)), "relay_running", running == 1,
                "relay_pid", (json_int_t)pid, "waiting", cli_json_u64(s.waiting),
                "oldest_waiting_seq", cli_json_u64(s.oldest_waiting_seq), "oldest_waiting_ms",
                (json_int_t)s.oldest_waiting_ms, "last_sent_seq", cli_json_u64(s.last_sent_seq),
                "last_sent_ms", (json_int_t)s.last_sent_ms, "last_sent_age_ms",
                (json_int_t)(s.last_sent_ms ? now - s.last_sent_ms : 0), "last_broker_seq",
                cli_json_u64(s.last_broker_seq), "failed", cli_json_u64(s.failed))) < 0)
            return cli_fail("relay", FERRY_EIO, "cannot write standard output");
    } else {
        char age[32], when[80];
        printf("database     %s\n", path);
        printf("producer id  %s\n", s.producer_id);
        if (running == 1 && pid > 0)
            printf("relay        running (pid %ld)\n", pid);
        else
            printf("relay        %s\n", running == 1   ? "running"
                                        : running == 0 ? "not running"
                                                       : "unknown");
        if (s.waiting) {
            fmt_age(age, sizeof age, s.oldest_waiting_ms);
            printf("waiting      %" PRIu64 " rows, oldest %s (seq %" PRIu64 ")\n", s.waiting, age,
                   s.oldest_waiting_seq);
        } else {
            printf("waiting      0 rows\n");
        }
        if (s.last_sent_seq) {
            fmt_age(age, sizeof age, now > s.last_sent_ms ? now - s.last_sent_ms : 0);
            fmt_time(when, sizeof when, s.last_sent_ms);
            printf("last sent    seq %" PRIu64 " at %s (%s ago), broker seq %" PRIu64 "\n",
                   s.last_sent_seq, when, age, s.last_broker_seq);
        } else {
            printf("last sent    none kept\n");
        }
        printf("failed       %" PRIu64 " rows%s\n", s.failed,
               s.failed ? " (SELECT seq, error FROM ferry_outbox WHERE error IS NOT NULL)" : "");
    }
    if (fflush(stdout) != 0)
        return cli_fail("relay", FERRY_EIO, "cannot write standard output");
    return CLI_EXIT_OK;
}

static int install(const char *path)
{
    sqlite3 *db;
    if (open_db(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, &db) != CLI_EXIT_OK)
        return CLI_EXIT_FAIL;
    int rc = ferry_outbox_install(db);
    ferry_outbox_stats s;
    if (rc == 0)
        rc = ferry_outbox_stats_get(db, &s);
    if (rc < 0) {
        char detail[512];
        snprintf(detail, sizeof detail, "%s",
                 rc == FERRY_EUNSUPPORTED ? "the outbox there is of a newer layout"
                                          : sqlite3_errmsg(db));
        sqlite3_close(db);
        return cli_fail("relay: cannot install the outbox", rc, detail);
    }
    sqlite3_close(db);
    printf("%s\n", s.producer_id);
    if (fflush(stdout) != 0)
        return cli_fail("relay", FERRY_EIO, "cannot write standard output");
    return CLI_EXIT_OK;
}

#ifdef FERRY_HAVE_POSTGRES
/* PQerrorMessage on one line. */
static const char *pg_err(PGconn *pg, char *buf, size_t len)
{
    snprintf(buf, len, "%s", pg ? PQerrorMessage(pg) : "out of memory");
    for (char *p = buf; *p; p++)
        if (*p == '\n')
            *p = (p[1] ? ' ' : '\0');
    return buf;
}

static PGconn *pg_open(const char *url)
{
    char e[600];
    char *perr = NULL;
    PQconninfoOption *parsed = PQconninfoParse(url, &perr);
    if (!parsed) {
        snprintf(e, sizeof e, "%s", perr ? perr : "out of memory");
        e[strcspn(e, "\n")] = '\0';
        PQfreemem(perr);
        fprintf(stderr, "ferry: relay: --pg: not a Postgres connection string: %s\n", e);
        return NULL;
    }
    PQconninfoFree(parsed);
    PGconn *pg = PQconnectdb(url);
    if (PQstatus(pg) != CONNECTION_OK) {
        fprintf(stderr, "ferry: relay: cannot connect to Postgres: %s\n", pg_err(pg, e, sizeof e));
        PQfinish(pg);
        return NULL;
    }
    return pg;
}

static int pg_install(const char *url, const char *schema)
{
    PGconn *pg = pg_open(url);
    if (!pg)
        return CLI_EXIT_FAIL;
    char e[600];
    int rc = ferry_pg_outbox_install(pg, schema);
    ferry_pg_outbox_stats s;
    if (rc == 0)
        rc = ferry_pg_outbox_stats_get(pg, schema, &s);
    if (rc < 0) {
        if (rc == FERRY_EUNSUPPORTED)
            snprintf(e, sizeof e, "the outbox there is of a newer layout");
        else
            pg_err(pg, e, sizeof e);
        PQfinish(pg);
        return cli_fail("relay: cannot install the outbox", rc, e);
    }
    PQfinish(pg);
    printf("%s\n", s.producer_id);
    if (fflush(stdout) != 0)
        return cli_fail("relay", FERRY_EIO, "cannot write standard output");
    return CLI_EXIT_OK;
}

static int pg_status(const char *url, const char *schema, int json)
{
    PGconn *pg = pg_open(url);
    if (!pg)
        return CLI_EXIT_FAIL;
    const char *sch = schema && *schema ? schema : "ferry";
    ferry_pg_outbox_stats s;
    int rc = ferry_pg_outbox_stats_get(pg, schema, &s);
    if (rc == FERRY_EUNSUPPORTED) {
        fprintf(stderr,
                "ferry: relay: no outbox of this layout in schema %s (see 'ferry relay --pg URL"
                " --install')\n",
                sch);
        PQfinish(pg);
        return CLI_EXIT_FAIL;
    }
    if (rc < 0) {
        char e[600];
        pg_err(pg, e, sizeof e);
        PQfinish(pg);
        return cli_fail("relay: cannot read the outbox", rc, e);
    }
    PQfinish(pg);
    int64_t now = wall_ms();
    if (json) {
        if (cli_json_print(json_pack(
                "{s:o,s:o,s:b,s:I,s:o,s:o,s:o,s:I,s:o,s:o,s:I,s:I,s:o}", "schema",
                cli_json_str(sch, strlen(sch)), "producer_id",
                cli_json_str(s.producer_id, strlen(s.producer_id)), "relay_running",
                s.relay_pid != 0, "relay_backend_pid", (json_int_t)s.relay_pid, "waiting",
                cli_json_u64(s.waiting), "claimed", cli_json_u64(s.claimed), "oldest_waiting_id",
                cli_json_u64(s.oldest_waiting_id), "oldest_waiting_ms",
                (json_int_t)s.oldest_waiting_ms, "sent", cli_json_u64(s.sent), "last_sent_seq",
                cli_json_u64(s.last_sent_seq), "last_sent_ms", (json_int_t)s.last_sent_ms,
                "last_sent_age_ms", (json_int_t)(s.last_sent_ms ? now - s.last_sent_ms : 0),
                "failed", cli_json_u64(s.failed))) < 0)
            return cli_fail("relay", FERRY_EIO, "cannot write standard output");
    } else {
        char age[32], when[80];
        printf("schema       %s\n", sch);
        printf("producer id  %s\n", s.producer_id);
        if (s.relay_pid)
            printf("relay        running (Postgres backend pid %d)\n", s.relay_pid);
        else
            printf("relay        not running\n");
        if (s.waiting) {
            fmt_age(age, sizeof age, s.oldest_waiting_ms);
            printf("waiting      %" PRIu64 " rows, oldest %s (id %" PRIu64 ")\n", s.waiting, age,
                   s.oldest_waiting_id);
        } else {
            printf("waiting      0 rows\n");
        }
        if (s.last_sent_seq) {
            fmt_age(age, sizeof age, now > s.last_sent_ms ? now - s.last_sent_ms : 0);
            fmt_time(when, sizeof when, s.last_sent_ms);
            printf("last sent    producer seq %" PRIu64 " at %s (%s ago); %" PRIu64
                   " rows sent in all\n",
                   s.last_sent_seq, when, age, s.sent);
        } else {
            printf("last sent    none yet\n");
        }
        printf("failed       %" PRIu64 " rows%s%s%s\n", s.failed,
               s.failed ? " (SELECT id, error FROM " : "", s.failed ? sch : "",
               s.failed ? ".outbox_failed)" : "");
    }
    if (fflush(stdout) != 0)
        return cli_fail("relay", FERRY_EIO, "cannot write standard output");
    return CLI_EXIT_OK;
}

static int pg_run(struct cli *cli, const ferry_relay_options *o, const char *url,
                  const char *schema, int rescan_ms)
{
    ferry_pg_relay_options po = FERRY_PG_RELAY_OPTIONS_INIT;
    po.conninfo = url;
    po.schema = schema;
    po.server = o->server;
    po.token = o->token;
    po.batch = o->batch;
    po.rescan_ms = rescan_ms;
    po.drain = o->drain;
    ferry_pg_relay *r;
    char err[700];
    int rc = ferry_pg_relay_new(&po, &r, err, sizeof err);
    if (rc < 0)
        return cli_fail("relay", rc, err);
    running_pg_relay = r;
    catch_stop_signals(1);
    rc = ferry_pg_relay_run(r);
    catch_stop_signals(0);
    running_pg_relay = NULL;
    ferry_pg_relay_free(r);
    (void)cli;
    return rc < 0 ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}
#endif

/* What the command line asked for. */
struct relay_args {
    ferry_relay_options o;
    int do_status, json, do_install;
    const char *pg_url, *schema;
    int rescan_ms;
    int sqlite_only; /* an option only the SQLite relay has was given */
};

/* Parses argv into *a. Returns -1 to go on, or the exit status. */
static int parse_args(struct cli *cli, int argc, char **argv, struct relay_args *a)
{
    static const struct option longopts[] = {
        CLI_COMMON_LONGOPTS,
        {"db", required_argument, NULL, OPT_DB},
        {"to", required_argument, NULL, CLI_OPT_SERVER},
        {"batch", required_argument, NULL, OPT_BATCH},
        {"retention", required_argument, NULL, OPT_RETENTION},
        {"poll-ms", required_argument, NULL, OPT_POLL_MS},
        {"status", no_argument, NULL, OPT_STATUS},
        {"json", no_argument, NULL, OPT_JSON},
        {"install", no_argument, NULL, OPT_INSTALL},
        {"drain", no_argument, NULL, OPT_DRAIN},
        {"pg", required_argument, NULL, OPT_PG},
        {"schema", required_argument, NULL, OPT_SCHEMA},
        {"rescan-ms", required_argument, NULL, OPT_RESCAN_MS},
        {NULL, 0, NULL, 0},
    };
    ferry_relay_options *o = &a->o;
    unsigned long long v;
    int opt;
    while ((opt = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        if (cli_common_option(cli, opt, optarg))
            continue;
        switch (opt) {
        case 'h':
            fputs(usage_text, stdout);
            return CLI_EXIT_OK;
        case OPT_DB:
            o->db_path = optarg;
            break;
        case OPT_BATCH:
            if (parse_uint(optarg, 1, 10000, &v) < 0)
                return cli_usage_error("relay", "--batch wants 1-10000, not '%s'", optarg);
            o->batch = (uint32_t)v;
            break;
        case OPT_RETENTION:
            if (parse_duration(optarg, &o->retention_ms) < 0)
                return cli_usage_error("relay",
                                       "--retention wants a duration (500ms, 30s, 10m, 1h, 7d), "
                                       "0 or 'forever', not '%s'",
                                       optarg);
            if (o->retention_ms == 0)
                o->retention_ms = 1; /* 0 means the default in the options */
            a->sqlite_only = 1;
            break;
        case OPT_POLL_MS:
            if (parse_uint(optarg, 1, 10000, &v) < 0)
                return cli_usage_error("relay", "--poll-ms wants 1-10000, not '%s'", optarg);
            o->poll_interval_ms = (int)v;
            a->sqlite_only = 1;
            break;
        case OPT_PG:
            a->pg_url = optarg;
            break;
        case OPT_SCHEMA:
            a->schema = optarg;
            break;
        case OPT_RESCAN_MS:
            if (parse_uint(optarg, 100, 3600000, &v) < 0)
                return cli_usage_error("relay", "--rescan-ms wants 100-3600000, not '%s'", optarg);
            a->rescan_ms = (int)v;
            break;
        case OPT_STATUS:
            a->do_status = 1;
            break;
        case OPT_JSON:
            a->json = 1;
            break;
        case OPT_INSTALL:
            a->do_install = 1;
            break;
        case OPT_DRAIN:
            o->drain = 1;
            break;
        default:
            return cli_bad_option("relay", opt, argv);
        }
    }
    if (optind < argc)
        return cli_usage_error("relay", "unexpected argument '%s'", argv[optind]);
    return -1;
}

/* The combinations that make no sense. Returns -1 when a holds none, or
 * the exit status. */
static int check_args(const struct relay_args *a)
{
    if (a->o.db_path && a->pg_url)
        return cli_usage_error("relay", "--db and --pg exclude each other");
    if (!a->o.db_path && !a->pg_url)
        return cli_usage_error("relay", "missing --db (SQLite) or --pg (PostgreSQL)");
    if (!a->pg_url && (a->schema || a->rescan_ms))
        return cli_usage_error("relay", "--schema and --rescan-ms go with --pg");
    if (a->pg_url && a->sqlite_only)
        return cli_usage_error("relay", "--retention and --poll-ms go with --db (the Postgres"
                                        " relay deletes rows once acked and is woken by NOTIFY)");
    if (a->pg_url && a->schema) {
        /* The library checks it too; say so before connecting. */
        const char *schema = a->schema;
        size_t n = strlen(schema);
        int ok = n >= 1 && n <= 50 &&
                 ((schema[0] >= 'a' && schema[0] <= 'z') || schema[0] == '_') &&
                 strncmp(schema, "pg_", 3) != 0 &&
                 strspn(schema, "abcdefghijklmnopqrstuvwxyz0123456789_") == n;
        if (!ok)
            return cli_usage_error("relay",
                                   "--schema wants 1-50 of [a-z0-9_] starting with a letter or '_'"
                                   " (not pg_...), not '%s'",
                                   schema);
    }
#ifndef FERRY_HAVE_POSTGRES
    if (a->pg_url) {
        fprintf(stderr, "ferry: relay: --pg: this ferry was built without PostgreSQL support"
                        " (libpq)\n");
        return CLI_EXIT_FAIL;
    }
#endif
    if (a->do_status && a->do_install)
        return cli_usage_error("relay", "--status and --install exclude each other");
    if (a->json && !a->do_status)
        return cli_usage_error("relay", "--json goes with --status");
    return -1;
}

/* Runs the SQLite relay until SIGINT or SIGTERM (or, with --drain, until
 * nothing is waiting). o->token is wiped once the relay has its copy. */
static int sqlite_run(ferry_relay_options *o, char *token, size_t token_len)
{
    ferry_relay *r;
    char err[512];
    int rc = ferry_relay_new(o, &r, err, sizeof err);
    if (o->token)
        memset(token, 0, token_len);
    if (rc < 0)
        return cli_fail("relay", rc, err);

    running_relay = r;
    catch_stop_signals(1);
    rc = ferry_relay_run(r);
    catch_stop_signals(0);
    running_relay = NULL;
    ferry_relay_free(r);
    /* The relay logged why it gave up. */
    return rc < 0 ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}

int cmd_relay(struct cli *cli, int argc, char **argv)
{
    struct relay_args a = {.o = FERRY_RELAY_OPTIONS_INIT};
    int rc = parse_args(cli, argc, argv, &a);
    if (rc < 0)
        rc = check_args(&a);
    if (rc >= 0)
        return rc;
#ifdef FERRY_HAVE_POSTGRES
    if (a.pg_url && a.do_status)
        return pg_status(a.pg_url, a.schema, a.json);
    if (a.pg_url && a.do_install)
        return pg_install(a.pg_url, a.schema);
#endif
    if (a.do_status)
        return status(a.o.db_path, a.json);
    if (a.do_install)
        return install(a.o.db_path);

    char token[4096];
    if (cli->token_file) {
        if (read_token_file(cli->token_file, token, sizeof token) < 0)
            return CLI_EXIT_FAIL;
        a.o.token = token;
    }
    a.o.server = cli->server;
#ifdef FERRY_HAVE_POSTGRES
    if (a.pg_url) {
        int prc = pg_run(cli, &a.o, a.pg_url, a.schema, a.rescan_ms);
        if (a.o.token)
            memset(token, 0, sizeof token);
        return prc;
    }
#endif
    return sqlite_run(&a.o, token, sizeof token);
}
