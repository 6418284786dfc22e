/*
 * consumer.c - see consumer.h.
 *
 * Failure handling, which is the point of the example:
 *   - ferryd down or restarting: ferry_connect fails or the connection
 *     dies; the loop closes it and connects again with a backoff from
 *     50 ms to 1 s. Deliveries in flight go back to the group; those whose
 *     effect was committed find their claim when they come again.
 *   - this process killed at any point: the database holds each effect
 *     with its claim or neither; the broker redelivers what was not acked.
 *   - a handler failure (an order that does not parse): rolled back and
 *     nacked with --retry-delay-ms; after the group's max deliveries the
 *     broker moves it to _dead.orders.
 */
#include "consumer.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#ifdef ORDERS_PG
#include "common_pg.h"
#endif

/* Reconnect backoff. */
#define BACKOFF_FIRST_MS 50
#define BACKOFF_MAX_MS 1000
/* How long one ferry_receive waits, so that signals and --until are seen. */
#define RECEIVE_SLICE_MS 200
/* Most deliveries applied in one transaction. */
#define MAX_BATCH 128
/* Most claims one purge deletes: a short write lock. */
#define PURGE_MAX_ROWS 10000

void consumer_parse_args(struct consumer_cfg *cfg, int argc, char **argv, const char *about)
{
    static const struct option longopts[] = {
        {"server", required_argument, NULL, 's'},
        {"db", required_argument, NULL, 'd'},
        {"pg", required_argument, NULL, 'G'},
        {"schema", required_argument, NULL, 'S'},
        {"group", required_argument, NULL, 'g'},
        {"topic", required_argument, NULL, 't'},
        {"window", required_argument, NULL, 'w'},
        {"ack-wait-ms", required_argument, NULL, 'a'},
        {"max-deliveries", required_argument, NULL, 'm'},
        {"retry-delay-ms", required_argument, NULL, 'r'},
        {"purge-window-ms", required_argument, NULL, 'p'},
        {"purge-every-ms", required_argument, NULL, 'P'},
        {"until", required_argument, NULL, 'u'},
        {"sync", required_argument, NULL, 'y'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *env = getenv("FERRY_SERVER");
    cfg->server = env && *env ? env : FERRY_DEFAULT_SERVER;
    cfg->topic = ORDERS_TOPIC;
    cfg->synchronous = "FULL";
    cfg->window = 64;
    cfg->retry_delay_ms = 1000;
    cfg->purge_every_ms = 10000;
    int opt;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 's':
            cfg->server = optarg;
            break;
        case 'd':
            cfg->db_path = optarg;
            break;
        case 'G':
            cfg->pg_conninfo = optarg;
            break;
        case 'S':
            cfg->pg_schema = optarg;
            break;
        case 'g':
            cfg->group = optarg;
            break;
        case 't':
            cfg->topic = optarg;
            break;
        case 'w':
            cfg->window = (uint32_t)common_parse_int(cfg->prog, "--window", optarg);
            break;
        case 'a':
            cfg->ack_wait_ms = (uint32_t)common_parse_int(cfg->prog, "--ack-wait-ms", optarg);
            break;
        case 'm':
            cfg->max_deliveries = (uint16_t)common_parse_int(cfg->prog, "--max-deliveries", optarg);
            break;
        case 'r':
            cfg->retry_delay_ms = (uint32_t)common_parse_int(cfg->prog, "--retry-delay-ms", optarg);
            break;
        case 'p':
            cfg->purge_window_ms = common_parse_int(cfg->prog, "--purge-window-ms", optarg);
            break;
        case 'P':
            cfg->purge_every_ms = (int)common_parse_int(cfg->prog, "--purge-every-ms", optarg);
            break;
        case 'u':
            cfg->until = common_parse_int(cfg->prog, "--until", optarg);
            break;
        case 'y':
            if (strcmp(optarg, "full") != 0 && strcmp(optarg, "normal") != 0) {
                fprintf(stderr, "%s: --sync is full or normal\n", cfg->prog);
                exit(2);
            }
            cfg->synchronous = strcmp(optarg, "full") == 0 ? "FULL" : "NORMAL";
            break;
        case 'h':
            printf("usage: %s --db FILE [options]\n"
                   "       %s --pg CONNINFO [--schema S] [options]\n\n%s\n\n"
                   "  --server HOST:PORT     ferryd (default $FERRY_SERVER or %s)\n"
                   "  --db FILE              the service's SQLite database (created)\n"
                   "  --pg CONNINFO          PostgreSQL instead (a libpq URL or key=value\n"
                   "                         string): the tables and the inbox in --schema\n"
                   "  --schema S             the Postgres schema (default: the group's name)\n"
                   "  --group NAME           consumer group (default %s)\n"
                   "  --topic NAME           topic (default %s)\n"
                   "  --window N             deliveries in flight (default 64)\n"
                   "  --ack-wait-ms MS       lease (default: the group's)\n"
                   "  --max-deliveries N     for a new group (default: the broker's)\n"
                   "  --retry-delay-ms MS    nack delay after a failed handler (default 1000)\n"
                   "  --purge-window-ms MS   keep inbox claims above the broker's floor\n"
                   "                         this long (default: the redelivery horizon, at\n"
                   "                         least 7 days; a shorter one is for\n"
                   "                         demonstrations only)\n"
                   "  --purge-every-ms MS    how often to purge: claims below the broker's\n"
                   "                         floor, then past the window (default 10000)\n"
                   "  --until N              exit once N effects are in the database\n"
                   "  --sync full|normal     the database's synchronous (default full)\n",
                   cfg->prog, cfg->prog, about, FERRY_DEFAULT_SERVER, cfg->group, ORDERS_TOPIC);
            exit(0);
        default:
            exit(2);
        }
    }
    if (!cfg->db_path == !cfg->pg_conninfo || optind < argc) {
        fprintf(stderr, "%s: usage: %s --db FILE | --pg CONNINFO [options] (--help)\n", cfg->prog,
                cfg->prog);
        exit(2);
    }
#ifndef ORDERS_PG
    if (cfg->pg_conninfo) {
        fprintf(stderr, "%s: built without PostgreSQL (libpq): no --pg\n", cfg->prog);
        exit(2);
    }
#endif
    if (!cfg->pg_schema)
        cfg->pg_schema = cfg->group;
}

struct run {
    const struct consumer_cfg *cfg;
    sqlite3 *db; /* --db */
    PGconn *pg;  /* --pg */
    int pg_backoff;
    ferry_conn *c;
    ferry_sub *s;
    int64_t window_ms; /* the purge window in force */
    uint64_t fresh, seen, retried, failed, reconnects, purged;
    int64_t max_rows;   /* the most claims left in the inbox by a purge */
    int64_t max_before; /* the most claims a purge found */
};

/* ----- the service's database: SQLite (--db) or PostgreSQL (--pg) ----- */

static int is_pg(const struct run *r)
{
    return r->cfg->pg_conninfo != NULL;
}

/* One integer from sql; -1 when it fails (a table not made yet). */
static int64_t store_int(struct run *r, const char *sql)
{
#ifdef ORDERS_PG
    if (is_pg(r))
        return r->pg ? common_pg_int(r->pg, sql) : -1;
#endif
    sqlite3_stmt *st = NULL;
    int64_t n = -1;
    if (sqlite3_prepare_v2(r->db, sql, -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

static const char *store_errmsg(struct run *r)
{
#ifdef ORDERS_PG
    if (is_pg(r))
        return common_pg_errmsg(r->pg);
#endif
    return sqlite3_errmsg(r->db);
}

/* Opens the database (again, for Postgres), the service's tables and the
 * inbox. Returns 0, or -1 (logged unless quiet). */
static int store_open(struct run *r, int quiet)
{
    const struct consumer_cfg *cfg = r->cfg;
    int rc;
#ifdef ORDERS_PG
    if (is_pg(r)) {
        PQfinish(r->pg);
        r->pg = common_pg_connect(cfg->prog, cfg->pg_conninfo, cfg->pg_schema, quiet);
        if (!r->pg)
            return -1;
        if ((rc = ferry_pg_inbox_install(r->pg, cfg->pg_schema)) != 0) {
            if (!quiet)
                common_log(cfg->prog, "inbox install in schema %s: %s (%s)", cfg->pg_schema,
                           ferry_strerror(rc), common_pg_errmsg(r->pg));
        } else if (!cfg->pg_schema_sql ||
                   common_pg_exec(cfg->prog, r->pg, cfg->pg_schema_sql, quiet) == 0) {
            return 0;
        }
        PQfinish(r->pg); /* down: made again by the next store_open */
        r->pg = NULL;
        return -1;
    }
#endif
    r->db = common_db_open(cfg->prog, cfg->db_path, cfg->synchronous, cfg->schema_sql);
    if (!r->db)
        return -1;
    if ((rc = ferry_inbox_install(r->db)) != 0) {
        common_log(cfg->prog, "inbox install: %s (%s)", ferry_strerror(rc), sqlite3_errmsg(r->db));
        return -1;
    }
    return 0;
}

/* 1 when the Postgres connection is lost (SQLite: never). */
static int store_down(const struct run *r)
{
#ifdef ORDERS_PG
    if (is_pg(r))
        return !r->pg || PQstatus(r->pg) != CONNECTION_OK;
#endif
    (void)r;
    return 0;
}

static void store_close(struct run *r)
{
#ifdef ORDERS_PG
    PQfinish(r->pg);
    r->pg = NULL;
#endif
    sqlite3_close(r->db);
    r->db = NULL;
}

/* Applies a batch through the inbox, an outcome each (docs/INBOX.md):
 * SQLite in one transaction (ferry_inbox_handle_batch), Postgres one
 * transaction a delivery (ferry_pg_inbox_handle). Returns < 0 when the
 * whole batch failed. */
static int store_handle(struct run *r, ferry_delivery **batch, size_t n, int *outcomes)
{
    const struct consumer_cfg *cfg = r->cfg;
#ifdef ORDERS_PG
    if (is_pg(r)) {
        for (size_t i = 0; i < n; i++)
            outcomes[i] =
                ferry_pg_inbox_handle(r->pg, cfg->pg_schema, cfg->group, batch[i], cfg->pg_handler,
                                      cfg->handler_ctx, cfg->retry_delay_ms);
        return 0;
    }
#endif
    return ferry_inbox_handle_batch(r->db, cfg->group, batch, n, cfg->handler, cfg->handler_ctx,
                                    cfg->retry_delay_ms, outcomes);
}

/* The purge by the broker's floor, then by the window. Returns what the
 * floor purge returned. */
static int store_purge(struct run *r, int *window_purged)
{
    const struct consumer_cfg *cfg = r->cfg;
    int purged = 0;
    *window_purged = 0;
#ifdef ORDERS_PG
    if (is_pg(r)) {
        if (r->s)
            purged =
                ferry_pg_inbox_purge_acked(r->pg, cfg->pg_schema, cfg->group, r->s, PURGE_MAX_ROWS);
        if (r->window_ms > 0)
            *window_purged =
                ferry_pg_inbox_purge(r->pg, cfg->pg_schema, r->window_ms, PURGE_MAX_ROWS);
        return purged;
    }
#endif
    if (r->s)
        purged = ferry_inbox_purge_acked(r->db, cfg->group, r->s, PURGE_MAX_ROWS);
    if (r->window_ms > 0)
        *window_purged = ferry_inbox_purge(r->db, r->window_ms, PURGE_MAX_ROWS);
    return purged;
}

/* Connects and subscribes. Returns 0, or -1 (logged once per outage). */
static int join(struct run *r, int *down_logged)
{
    const struct consumer_cfg *cfg = r->cfg;
    ferry_options o = FERRY_OPTIONS_INIT;
    o.client_name = cfg->prog;
    o.connect_timeout_ms = 2000;
    o.request_timeout_ms = 10000;
    char err[256] = "";
    int rc = ferry_connect(cfg->server, &o, &r->c, err, sizeof err);
    if (rc != 0) {
        if (!*down_logged)
            common_log(cfg->prog, "cannot reach ferryd at %s (%s: %s); retrying", cfg->server,
                       ferry_strerror(rc), err);
        *down_logged = 1;
        return -1;
    }
    ferry_sub_options so = FERRY_SUB_OPTIONS_INIT;
    so.start = FERRY_START_EARLIEST;
    so.max_in_flight = cfg->window;
    so.ack_wait_ms = cfg->ack_wait_ms;
    so.max_deliveries = cfg->max_deliveries;
    ferry_sub *s = NULL;
    rc = ferry_subscribe(r->c, cfg->topic, cfg->group, &so, &s);
    r->s = s;
    if (rc != 0) {
        if (!*down_logged)
            common_log(cfg->prog, "subscribe %s/%s: %s (%s); retrying", cfg->topic, cfg->group,
                       ferry_strerror(rc), ferry_errmsg(r->c));
        *down_logged = 1;
        ferry_close(r->c);
        r->c = NULL;
        return -1;
    }
    ferry_sub_info si;
    ferry_sub_info_get(s, &si);
    /* The window rule (docs/INBOX.md): the group's horizon with our
     * longest nack delay (the example's groups have no redelivery backoff
     * and never touch), never less than 7 days; a demonstration may ask
     * for less. */
    r->window_ms =
        cfg->purge_window_ms > 0
            ? cfg->purge_window_ms
            : ferry_inbox_window_ms(si.ack_wait_ms, si.max_deliveries, cfg->retry_delay_ms);
    common_log(cfg->prog,
               "subscribed to %s as group %s at %s: lease %u ms, max deliveries %u, "
               "inbox window %" PRId64 " s",
               cfg->topic, cfg->group, cfg->server, si.ack_wait_ms, si.max_deliveries,
               r->window_ms == INT64_MAX ? (int64_t)-1 : r->window_ms / 1000);
    *down_logged = 0;
    return 0;
}

static void drop(struct run *r, const char *why, int rc)
{
    common_log(r->cfg->prog, "%s: %s (%s); reconnecting", why, ferry_strerror(rc),
               ferry_errmsg(r->c));
    ferry_close(r->c);
    r->c = NULL;
    r->s = NULL;
    r->reconnects++;
}

/* Applies a batch through the inbox and counts what happened. */
static void handle(struct run *r, ferry_delivery **batch, size_t n)
{
    const struct consumer_cfg *cfg = r->cfg;
    int outcomes[MAX_BATCH];
    int rc = store_handle(r, batch, n, outcomes);
    if (rc < 0)
        common_log(cfg->prog, "a batch of %zu failed: %s (%s); nacked", n, ferry_strerror(rc),
                   store_errmsg(r));
    int conn_suspect = 0;
    for (size_t i = 0; i < n; i++) {
        const ferry_delivery *d = batch[i];
        switch (outcomes[i]) {
        case FERRY_INBOX_FRESH:
            r->fresh++;
            break;
        case FERRY_INBOX_SEEN:
            /* A redelivery of a message whose effect committed while its
             * ack was lost (a crash, a broker restart). */
            r->seen++;
            common_log(cfg->prog, "seq %" PRIu64 " (%s, attempt %u): already applied, acked again",
                       d->seq, d->id, d->attempt);
            break;
        case FERRY_INBOX_RETRY:
            r->retried++;
            common_log(cfg->prog, "seq %" PRIu64 " (%s): handler failed, retry in %u ms", d->seq,
                       d->id, cfg->retry_delay_ms);
            break;
        default:
            r->failed++;
            conn_suspect = 1;
            if (rc == 0)
                common_log(cfg->prog, "seq %" PRIu64 " (%s): %s (%s)", d->seq, d->id,
                           ferry_strerror(outcomes[i]),
                           outcomes[i] == FERRY_ESTORAGE ? store_errmsg(r) : ferry_errmsg(r->c));
        }
    }
    /* A failed ack or nack usually means a dead connection. */
    if (conn_suspect && (rc = ferry_poll(r->c)) < 0)
        drop(r, "connection lost", rc);
}

/* The inbox purges (docs/INBOX.md): the claims below the broker's durable
 * floor, which cannot be delivered again, and those older than the window
 * (what the floor keeps: redrivable dead letters). */
static int64_t inbox_rows(struct run *r)
{
    /* Postgres: the schema's inbox (search_path). */
    return store_int(r,
                     is_pg(r) ? "SELECT count(*) FROM inbox" : "SELECT count(*) FROM ferry_inbox");
}

static void purge(struct run *r)
{
    int64_t rows = inbox_rows(r);
    if (rows > r->max_before)
        r->max_before = rows;
    int window_purged;
    int purged = store_purge(r, &window_purged);
    if (purged > 0)
        r->purged += (uint64_t)purged;
    else if (purged == FERRY_ESTORAGE)
        common_log(r->cfg->prog, "floor purge: %s (%s)", ferry_strerror(purged), store_errmsg(r));
    else if (purged < 0 && purged != FERRY_ETIMEOUT)
        common_log(r->cfg->prog, "floor purge: %s (%s)", ferry_strerror(purged),
                   ferry_errmsg(r->c));
    if (window_purged > 0)
        r->purged += (uint64_t)window_purged;
    if ((rows = inbox_rows(r)) > r->max_rows)
        r->max_rows = rows;
}

int consumer_run(const struct consumer_cfg *cfg)
{
    struct run r;
    memset(&r, 0, sizeof r);
    r.cfg = cfg;
    r.pg_backoff = BACKOFF_FIRST_MS;
    if (store_open(&r, 0) < 0) {
        store_close(&r);
        return 1;
    }
    int rc;

    int exit_on_receive = getenv(CONSUMER_TEST_EXIT_ON_RECEIVE_ENV) != NULL;
    int backoff = BACKOFF_FIRST_MS, down_logged = 0;
    int64_t next_purge = common_mono_ms() + cfg->purge_every_ms;
    int64_t next_count = 0;
    while (!common_stop) {
        if (store_down(&r)) {
            /* Postgres restarting: nothing can be applied meanwhile; what
             * the broker sends waits (or its lease runs out and it comes
             * again). */
            common_sleep_ms(r.pg_backoff);
            r.pg_backoff = r.pg_backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : r.pg_backoff * 2;
            if (store_open(&r, 1) == 0) {
                common_log(cfg->prog, "connected to PostgreSQL again");
                r.pg_backoff = BACKOFF_FIRST_MS;
            }
            continue;
        }
        if (!r.c) {
            if (join(&r, &down_logged) < 0) {
                common_sleep_ms(backoff);
                backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
                continue;
            }
            backoff = BACKOFF_FIRST_MS;
        }

        /* Wait for one delivery, then take whatever else has arrived: one
         * transaction (one fsync) for the lot. Alone when idle, batches
         * under load: the consumer's group commit. */
        ferry_delivery *batch[MAX_BATCH];
        size_t n = 0;
        rc = ferry_receive(r.c, RECEIVE_SLICE_MS, &batch[0]);
        if (rc == 0 && exit_on_receive) {
            /* The test hook: a consumer that dies with each delivery. */
            common_log(cfg->prog, "seq %" PRIu64 " (attempt %u): exiting (%s)", batch[0]->seq,
                       batch[0]->attempt, CONSUMER_TEST_EXIT_ON_RECEIVE_ENV);
            _exit(8);
        }
        if (rc == 0) {
            n = 1;
            while (n < MAX_BATCH && ferry_receive(r.c, 0, &batch[n]) == 0)
                n++;
            handle(&r, batch, n);
            for (size_t i = 0; i < n; i++)
                ferry_delivery_free(batch[i]);
        } else if (rc != FERRY_ETIMEOUT) {
            drop(&r, "connection lost", rc);
        }

        int64_t now = common_mono_ms();
        if (cfg->purge_every_ms > 0 && now >= next_purge && r.c) {
            purge(&r);
            next_purge = now + cfg->purge_every_ms;
        }
        if (cfg->until > 0 && now >= next_count) {
            if (store_int(&r, cfg->count_sql) >= cfg->until)
                break;
            next_count = now + 100;
        }
    }

    if (r.c) {
        ferry_flush(r.c, 5000); /* the last pipelined acks */
        ferry_close(r.c);
    }
    common_log(cfg->prog,
               "stopping: %" PRIu64 " applied, %" PRIu64 " duplicates skipped, %" PRIu64
               " retried, %" PRIu64 " failed, %" PRIu64 " reconnects, %" PRIu64
               " inbox claims purged (inbox at most %" PRId64 " rows before a purge, %" PRId64
               " after); %" PRId64 " effects in %s",
               r.fresh, r.seen, r.retried, r.failed, r.reconnects, r.purged, r.max_before,
               r.max_rows, store_int(&r, cfg->count_sql),
               is_pg(&r) ? cfg->pg_schema : cfg->db_path);
    store_close(&r);
    return 0;
}
