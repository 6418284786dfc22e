/*
 * order_service - takes orders: each order is a row in its own database,
 * orders.db, and its event ("order placed", topic "orders") is written in
 * the SAME transaction with ferry_outbox_put. So the event exists exactly
 * when the order does, whenever this process dies; a relay (`ferry relay
 * --db orders.db`, or --relay here for one in a thread) forwards it.
 *
 *   orders(id, customer, sku, qty, amount_cents, created_us)
 *
 * It writes orders until the table holds --count of them, at --rate per
 * second, and exits 0 (with --relay, once the relay thread has sent them
 * all). Started again after a crash it goes on from the last
 * committed order, so a run that is killed and restarted any number of
 * times ends with orders 1..count, each with exactly one event.
 */
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ferry.h>

#include "common.h"
#ifdef ORDERS_PG
#include "common_pg.h"
#endif

/* clang-format off */
static const char schema[] =
    "CREATE TABLE IF NOT EXISTS orders ("
    "  id INTEGER PRIMARY KEY,"
    "  customer TEXT NOT NULL,"
    "  sku TEXT NOT NULL,"
    "  qty INTEGER NOT NULL,"
    "  amount_cents INTEGER NOT NULL,"
    "  created_us INTEGER NOT NULL);";
/* clang-format on */

static const char *prog = "order_service";

static int64_t next_order_id(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    int64_t id = -1;
    if (sqlite3_prepare_v2(db, "SELECT ifnull(max(id), 0) + 1 FROM orders", -1, &st, NULL) ==
            SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        id = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return id;
}

/* One order and its event, in one transaction. Returns 0, or -1 (logged;
 * rolled back). */
static int place_order(sqlite3 *db, const char *topic, int64_t id)
{
    struct order o;
    make_order(id, &o);
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        common_log(prog, "BEGIN: %s", sqlite3_errmsg(db));
        return -1;
    }
    /* The order's time is taken as late as it can be while still going
     * into the row: commit-to-effect latency is measured from here. */
    o.created_us = common_wall_us();
    sqlite3_stmt *st = NULL;
    int ok = sqlite3_prepare_v2(db,
                                "INSERT INTO orders(id, customer, sku, qty, amount_cents,"
                                " created_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                                -1, &st, NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_bind_int64(st, 1, o.order_id);
        sqlite3_bind_text(st, 2, o.customer, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, o.sku, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 4, o.qty);
        sqlite3_bind_int64(st, 5, o.amount_cents);
        sqlite3_bind_int64(st, 6, o.created_us);
        ok = sqlite3_step(st) == SQLITE_DONE;
    }
    sqlite3_finalize(st);
    if (!ok) {
        common_log(prog, "insert order %" PRId64 ": %s", id, sqlite3_errmsg(db));
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }

    /* The event, in the same transaction. Its id names the order, so that
     * every copy of it anywhere (broker, inboxes) is recognisable. */
    char payload[ORDER_JSON_BYTES], msg_id[32];
    int len = order_to_json(&o, payload, sizeof payload);
    snprintf(msg_id, sizeof msg_id, "order-%" PRId64, id);
    ferry_msg m;
    memset(&m, 0, sizeof m);
    m.topic = topic;
    m.id = msg_id;
    m.key = o.customer;
    m.key_len = strlen(o.customer);
    m.payload = payload;
    m.payload_len = (size_t)len;
    int rc = ferry_outbox_put(db, &m, NULL);
    if (rc != 0) {
        common_log(prog, "outbox put for order %" PRId64 ": %s (%s)", id, ferry_strerror(rc),
                   sqlite3_errmsg(db));
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        common_log(prog, "COMMIT of order %" PRId64 ": %s", id, sqlite3_errmsg(db));
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    return 0;
}

/* Where the orders go: SQLite (--db) or PostgreSQL (--pg). place writes
 * one order and its event in one transaction (0, or -1: rolled back);
 * resume says which order to write after a failure (-1: cannot tell yet,
 * the database is out of reach). */
struct store {
    void *h;
    int (*place)(void *h, const char *topic, int64_t id);
    int64_t (*resume)(void *h, int64_t id);
};

static int sqlite_place(void *h, const char *topic, int64_t id)
{
    return place_order(h, topic, id);
}

static int64_t sqlite_resume(void *h, int64_t id)
{
    (void)h;
    return id; /* rolled back: the same order again */
}

#ifdef ORDERS_PG
/* --pg: the order row and its event (ferry_pg_outbox_put) in one Postgres
 * transaction, in the schema --schema names (orders.orders and
 * orders.outbox by default). */
struct pg_store {
    PGconn *pg;
    const char *conninfo, *schema;
    int backoff_ms;
};

/* Connects (again), installs the outbox and the orders table. */
static int pg_open(struct pg_store *ps, int quiet)
{
    PQfinish(ps->pg);
    ps->pg = common_pg_connect(prog, ps->conninfo, ps->schema, quiet);
    if (!ps->pg)
        return -1;
    int rc = ferry_pg_outbox_install(ps->pg, ps->schema);
    if (rc != 0) {
        if (!quiet)
            common_log(prog, "outbox install: %s (%s)", ferry_strerror(rc),
                       common_pg_errmsg(ps->pg));
        return -1;
    }
    return common_pg_exec(prog, ps->pg,
                          "CREATE TABLE IF NOT EXISTS orders ("
                          "  id bigint PRIMARY KEY,"
                          "  customer text NOT NULL,"
                          "  sku text NOT NULL,"
                          "  qty integer NOT NULL,"
                          "  amount_cents bigint NOT NULL,"
                          "  created_us bigint NOT NULL)",
                          quiet);
}

static int64_t pg_next_order_id(PGconn *pg)
{
    return common_pg_int(pg, "SELECT coalesce(max(id), 0) + 1 FROM orders");
}

static int pg_place(void *h, const char *topic, int64_t id)
{
    struct pg_store *ps = h;
    PGconn *pg = ps->pg;
    if (!pg || PQstatus(pg) != CONNECTION_OK)
        return -1;
    struct order o;
    make_order(id, &o);
    if (common_pg_exec(prog, pg, "BEGIN", 0) < 0)
        return -1;
    o.created_us = common_wall_us();
    char v[6][32];
    snprintf(v[0], sizeof v[0], "%" PRId64, o.order_id);
    snprintf(v[1], sizeof v[1], "%s", o.customer);
    snprintf(v[2], sizeof v[2], "%s", o.sku);
    snprintf(v[3], sizeof v[3], "%d", o.qty);
    snprintf(v[4], sizeof v[4], "%" PRId64, o.amount_cents);
    snprintf(v[5], sizeof v[5], "%" PRId64, o.created_us);
    const char *vals[6] = {v[0], v[1], v[2], v[3], v[4], v[5]};
    PGresult *r = PQexecParams(pg,
                               "INSERT INTO orders(id, customer, sku, qty, amount_cents,"
                               " created_us) VALUES ($1, $2, $3, $4, $5, $6)",
                               6, NULL, vals, NULL, NULL, 0);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) {
        common_log(prog, "insert order %" PRId64 ": %s", id, common_pg_errmsg(pg));
        common_pg_exec(prog, pg, "ROLLBACK", 1);
        return -1;
    }
    char payload[ORDER_JSON_BYTES], msg_id[32];
    int len = order_to_json(&o, payload, sizeof payload);
    snprintf(msg_id, sizeof msg_id, "order-%" PRId64, id);
    ferry_msg m;
    memset(&m, 0, sizeof m);
    m.topic = topic;
    m.id = msg_id;
    m.key = o.customer;
    m.key_len = strlen(o.customer);
    m.payload = payload;
    m.payload_len = (size_t)len;
    int rc = ferry_pg_outbox_put(pg, ps->schema, &m, NULL);
    if (rc != 0) {
        common_log(prog, "outbox put for order %" PRId64 ": %s (%s)", id, ferry_strerror(rc),
                   common_pg_errmsg(pg));
        common_pg_exec(prog, pg, "ROLLBACK", 1);
        return -1;
    }
    /* A COMMIT whose answer is lost (the server died) may have committed:
     * pg_resume reads where the orders stand. */
    if (common_pg_exec(prog, pg, "COMMIT", 0) < 0) {
        common_pg_exec(prog, pg, "ROLLBACK", 1);
        return -1;
    }
    ps->backoff_ms = 0;
    return 0;
}

static int64_t pg_resume(void *h, int64_t id)
{
    struct pg_store *ps = h;
    (void)id;
    if (!ps->pg || PQstatus(ps->pg) != CONNECTION_OK) {
        /* Postgres restarting: connect again, backing off to 1 s. */
        ps->backoff_ms = ps->backoff_ms ? ps->backoff_ms * 2 : 50;
        if (ps->backoff_ms > 1000)
            ps->backoff_ms = 1000;
        common_sleep_ms(ps->backoff_ms);
        if (pg_open(ps, 1) < 0)
            return -1;
        common_log(prog, "connected to PostgreSQL again");
    }
    return pg_next_order_id(ps->pg);
}
#endif

/* --relay: the library's relay on a thread of this process, woken after
 * each commit (ferry_relay_notify) instead of by its data_version poll. */
static void *relay_main(void *arg)
{
    int rc = ferry_relay_run(arg);
    if (rc != 0)
        common_log(prog, "relay: %s", ferry_strerror(rc));
    return NULL;
}

/* Waits until the outbox has nothing waiting (or a signal). */
static void relay_drain(sqlite3 *db)
{
    ferry_outbox_stats st;
    int64_t next_log = common_mono_ms() + 5000;
    while (!common_stop && ferry_outbox_stats_get(db, &st) == 0 && st.waiting > 0) {
        if (common_mono_ms() >= next_log) {
            common_log(prog, "waiting for the relay: %" PRIu64 " events not yet sent", st.waiting);
            next_log = common_mono_ms() + 5000;
        }
        common_sleep_ms(20);
    }
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: %s --db FILE --count N [options]\n"
            "       %s --pg CONNINFO [--schema S] --count N [options]\n\n"
            "Writes orders 1..N into FILE, each with its event in the outbox (one\n"
            "transaction each), then exits. Restarted, it resumes after the last one.\n\n"
            "  --db FILE           the order database (created)\n"
            "  --pg CONNINFO       PostgreSQL instead (a libpq URL or key=value string):\n"
            "                      the tables orders and outbox in --schema\n"
            "  --schema S          the Postgres schema (default orders; created)\n"
            "  --count N           total orders the database should hold\n"
            "  --rate R            orders per second (default 100; 0: as fast as it can)\n"
            "  --topic NAME        the events' topic (default %s)\n"
            "  --relay HOST:PORT   run the outbox relay in a thread, publishing to this\n"
            "                      ferryd (default: leave it to `ferry relay --db FILE`)\n"
            "  --sync full|normal  the database's synchronous (default normal: the relay\n"
            "                      syncs the outbox before it publishes)\n",
            prog, prog, ORDERS_TOPIC);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"db", required_argument, NULL, 'd'},   {"count", required_argument, NULL, 'n'},
        {"rate", required_argument, NULL, 'r'}, {"topic", required_argument, NULL, 't'},
        {"sync", required_argument, NULL, 'y'}, {"relay", required_argument, NULL, 'R'},
        {"pg", required_argument, NULL, 'P'},   {"schema", required_argument, NULL, 'S'},
        {"help", no_argument, NULL, 'h'},       {NULL, 0, NULL, 0},
    };
    /* synchronous=NORMAL (in WAL mode) by default: a commit survives a
     * crash of this process at once, and the relay makes the outbox rows
     * durable (fdatasync of the WAL) before it publishes them, so a power
     * loss can only take back an order together with its unpublished
     * event. FULL adds an fsync to every order. */
    const char *db_path = NULL, *topic = ORDERS_TOPIC, *sync = "NORMAL", *relay_server = NULL;
    const char *pg_conninfo = NULL, *pg_schema = "orders";
    int64_t count = -1, rate = 100;
    int opt;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 'd':
            db_path = optarg;
            break;
        case 'n':
            count = common_parse_int(prog, "--count", optarg);
            break;
        case 'r':
            rate = common_parse_int(prog, "--rate", optarg);
            break;
        case 't':
            topic = optarg;
            break;
        case 'y':
            sync = strcmp(optarg, "normal") == 0 ? "NORMAL" : "FULL";
            break;
        case 'R':
            relay_server = optarg;
            break;
        case 'P':
            pg_conninfo = optarg;
            break;
        case 'S':
            pg_schema = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!db_path == !pg_conninfo || count < 0 || optind < argc) {
        usage(stderr);
        return 2;
    }
    if (pg_conninfo && relay_server) {
        fprintf(stderr, "%s: --relay is for --db; with --pg run `ferry relay --pg`\n", prog);
        return 2;
    }
    common_signals();
    struct store store;
    sqlite3 *db = NULL;
    int64_t id;
    const char *where = db_path;
#ifdef ORDERS_PG
    struct pg_store ps = {NULL, pg_conninfo, pg_schema, 0};
    if (pg_conninfo) {
        if (pg_open(&ps, 0) < 0) {
            PQfinish(ps.pg);
            return 1;
        }
        store = (struct store){&ps, pg_place, pg_resume};
        where = pg_schema;
        id = pg_next_order_id(ps.pg);
        if (id < 1) {
            common_log(prog, "cannot read orders: %s", common_pg_errmsg(ps.pg));
            PQfinish(ps.pg);
            return 1;
        }
    } else
#else
    if (pg_conninfo) {
        fprintf(stderr, "%s: built without PostgreSQL (libpq): no --pg\n", prog);
        return 2;
    }
#endif
    {
        db = common_db_open(prog, db_path, sync, schema);
        if (!db)
            return 1;
        int rc = ferry_outbox_install(db);
        if (rc != 0) {
            common_log(prog, "outbox install: %s (%s)", ferry_strerror(rc), sqlite3_errmsg(db));
            sqlite3_close(db);
            return 1;
        }
        store = (struct store){db, sqlite_place, sqlite_resume};
        id = next_order_id(db);
        if (id < 1) {
            common_log(prog, "cannot read orders: %s", sqlite3_errmsg(db));
            sqlite3_close(db);
            return 1;
        }
    }

    int64_t first = id;
    int rc;

    ferry_relay *relay = NULL;
    pthread_t relay_thread;
    if (relay_server) {
        ferry_relay_options ro = FERRY_RELAY_OPTIONS_INIT;
        ro.db_path = db_path;
        ro.server = relay_server;
        char err[256] = "";
        rc = ferry_relay_new(&ro, &relay, err, sizeof err);
        if (rc != 0 || pthread_create(&relay_thread, NULL, relay_main, relay) != 0) {
            common_log(prog, "relay: %s (%s)", ferry_strerror(rc), err);
            ferry_relay_free(relay);
            sqlite3_close(db);
            return 1;
        }
    }
    if (id <= count)
        common_log(prog, "placing orders %" PRId64 "..%" PRId64 " at %" PRId64 "/s", id, count,
                   rate);

    /* Paced on an absolute schedule, so that the average rate holds
     * whatever a single commit costs. */
    int64_t t0 = common_wall_us(), next_log = common_mono_ms() + 5000;
    int failures = 0;
    while (id <= count && !common_stop) {
        if (rate > 0) {
            int64_t due = t0 + (id - first) * 1000000 / rate;
            int64_t wait_us = due - common_wall_us();
            if (wait_us > 0) {
                struct timespec ts = {wait_us / 1000000, (long)(wait_us % 1000000) * 1000};
                nanosleep(&ts, NULL);
                continue; /* a signal may have cut it short */
            }
        }
        if (store.place(store.h, topic, id) == 0) {
            ferry_relay_notify(relay); /* NULL (no --relay): nothing */
            id++;
            failures = 0;
        } else if (++failures > 100) {
            common_log(prog, "giving up after 100 failures in a row");
            break;
        } else {
            int64_t again = store.resume(store.h, id);
            if (again > 0)
                id = again;
        }
        if (common_mono_ms() >= next_log) {
            common_log(prog, "%" PRId64 " orders placed", id - 1);
            next_log = common_mono_ms() + 5000;
        }
    }
    if (relay) {
        relay_drain(db);
        ferry_relay_stop(relay);
        pthread_join(relay_thread, NULL);
        ferry_relay_stats rs;
        ferry_relay_stats_get(relay, &rs);
        common_log(prog, "relay: %" PRIu64 " events published (%" PRIu64 " duplicates)",
                   rs.published, rs.duplicates);
        ferry_relay_free(relay);
    }
    common_log(prog, "stopping: %" PRId64 " orders placed by this run, %" PRId64 " in %s",
               id - first, id - 1, where);
    sqlite3_close(db);
#ifdef ORDERS_PG
    PQfinish(ps.pg);
#endif
    return id > count ? 0 : 1;
}
