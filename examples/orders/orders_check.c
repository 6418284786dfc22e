/*
 * orders_check - what each service of the order story did, and whether
 * every order's effect happened exactly once. Reads the three databases
 * (white-box SQL, read-only, while the services may still run):
 *
 *   orders.db     orders written; outbox rows relayed and waiting
 *   inventory.db  reservations, stock reserved
 *   email.db      e-mails "sent"
 *
 * The checks, each must hold: every order has exactly one reservation and
 * exactly one e-mail, matching it (sku, quantity); none exists for an order
 * that does not; the stock counters add up to the reservations.
 *
 * --wait-ms T first waits up to T ms for every order to have its effects
 * in both databases (exit 3 when they do not). --latency prints the
 * commit-to-effect latency: from the producer's timestamp in the order
 * (taken just before its COMMIT) to the consumer's (taken just before its
 * own COMMIT), per consumer, over orders from --latency-from on.
 *
 * --pg CONNINFO reads the same from PostgreSQL instead, where --orders,
 * --inventory and --email name the services' schemas (default orders,
 * inventory, email): the checks are the same SQL over other table names.
 * There the relay deletes what it published, so the outbox holds only what
 * waits; --latency is for the SQLite databases.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "common.h"
#ifdef ORDERS_PG
#include "common_pg.h"
#endif

static const char *prog = "orders_check";

/* The databases: SQLite (attached under main, inv, mail) or Postgres. */
static sqlite3 *lite;
#ifdef ORDERS_PG
static PGconn *pg;
#endif

/* The tables the checks name, as {orders} ... in their SQL. */
enum { T_ORDERS, T_OUTBOX, T_RESERVATIONS, T_STOCK, T_INV_INBOX, T_EMAILS, T_MAIL_INBOX, T_COUNT };
static const char *const t_keys[T_COUNT] = {"{orders}",    "{outbox}", "{reservations}", "{stock}",
                                            "{inv_inbox}", "{emails}", "{mail_inbox}"};
static char t_names[T_COUNT][80] = {"main.orders",     "main.ferry_outbox", "inv.reservations",
                                    "inv.stock",       "inv.ferry_inbox",   "mail.emails",
                                    "mail.ferry_inbox"};

/* sql with each {table} replaced by its name. */
static const char *expand(const char *sql)
{
    static char out[2048];
    size_t n = 0;
    while (*sql && n < sizeof out - 1) {
        int t = 0;
        while (t < T_COUNT && strncmp(sql, t_keys[t], strlen(t_keys[t])) != 0)
            t++;
        if (t < T_COUNT) {
            n += (size_t)snprintf(out + n, sizeof out - n, "%s", t_names[t]);
            sql += strlen(t_keys[t]);
        } else {
            out[n++] = *sql++;
        }
    }
    out[n < sizeof out ? n : sizeof out - 1] = '\0';
    return out;
}

static sqlite3 *open_all_sqlite(const char *orders, const char *inventory, const char *email)
{
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(orders, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        fprintf(stderr, "%s: %s: %s\n", prog, orders, db ? sqlite3_errmsg(db) : "?");
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 5000);
    sqlite3_stmt *st = NULL;
    const char *files[2] = {inventory, email}, *names[2] = {"inv", "mail"};
    for (int i = 0; i < 2; i++) {
        /* Attached databases are opened with the main one's flags: read-only.
         * ATTACH takes its file and its name as expressions: bind both. */
        sqlite3_prepare_v2(db, "ATTACH ?1 AS ?2", -1, &st, NULL);
        sqlite3_bind_text(st, 1, files[i], -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, names[i], -1, SQLITE_STATIC);
        int src = sqlite3_step(st);
        sqlite3_finalize(st);
        if (src != SQLITE_DONE) {
            fprintf(stderr, "%s: attach %s: %s\n", prog, files[i], sqlite3_errmsg(db));
            sqlite3_close(db);
            return NULL;
        }
    }
    return db;
}

/* One integer; -1 when the query fails (a table not made yet). */
static int64_t q(const char *sql)
{
    sql = expand(sql);
#ifdef ORDERS_PG
    if (pg)
        return common_pg_int(pg, sql);
#endif
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    if (sqlite3_prepare_v2(lite, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Prints p50/p90/p99/max of expr (microseconds) over table. */
static void latency(sqlite3 *db, const char *what, const char *expr, const char *table,
                    int64_t from)
{
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT %s FROM %s WHERE order_id >= %" PRId64, expr, table, from);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        fprintf(stderr, "%s: %s\n", prog, sqlite3_errmsg(db));
        return;
    }
    size_t n = 0, cap = 4096;
    int64_t *v = malloc(cap * sizeof *v);
    while (v && sqlite3_step(st) == SQLITE_ROW) {
        if (n == cap) {
            int64_t *nv = realloc(v, 2 * cap * sizeof *v);
            if (!nv)
                break;
            v = nv;
            cap *= 2;
        }
        v[n++] = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    if (!v || n == 0) {
        printf("  %-28s no samples\n", what);
        free(v);
        return;
    }
    qsort(v, n, sizeof *v, cmp_i64);
#define PCT(p) (v[(size_t)((double)(n - 1) * (p))] / 1000.0)
    printf("  %-28s p50 %7.2f ms  p90 %7.2f ms  p99 %7.2f ms  max %7.2f ms  (%zu orders)\n", what,
           PCT(0.50), PCT(0.90), PCT(0.99), v[n - 1] / 1000.0, n);
#undef PCT
    free(v);
}

/* Prints one check and returns 1 when it failed. */
static int check(const char *what, const char *sql)
{
    int64_t bad = q(sql);
    printf("  %-62s %s\n", what, bad == 0 ? "ok" : "FAILED");
    if (bad != 0)
        printf("    (%" PRId64 " offending rows: %s)\n", bad, expand(sql));
    return bad != 0;
}

static void exec_sql(const char *sql)
{
#ifdef ORDERS_PG
    if (pg) {
        PQclear(PQexec(pg, sql));
        return;
    }
#endif
    sqlite3_exec(lite, sql, NULL, NULL, NULL);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"orders", required_argument, NULL, 'o'},
        {"inventory", required_argument, NULL, 'i'},
        {"email", required_argument, NULL, 'e'},
        {"wait-ms", required_argument, NULL, 'w'},
        {"latency", no_argument, NULL, 'l'},
        {"latency-from", required_argument, NULL, 'f'},
        {"pg", required_argument, NULL, 'P'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *pg_conninfo = NULL;
    const char *orders = NULL, *inventory = NULL, *email = NULL;
    int64_t wait_ms = 0, lat_from = 1;
    int want_latency = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 'o':
            orders = optarg;
            break;
        case 'i':
            inventory = optarg;
            break;
        case 'e':
            email = optarg;
            break;
        case 'w':
            wait_ms = common_parse_int(prog, "--wait-ms", optarg);
            break;
        case 'l':
            want_latency = 1;
            break;
        case 'f':
            lat_from = common_parse_int(prog, "--latency-from", optarg);
            break;
        case 'P':
            pg_conninfo = optarg;
            break;
        case 'h':
            printf("usage: %s [--orders F] [--inventory F] [--email F] [--wait-ms T]\n"
                   "       [--latency [--latency-from ORDER]]\n"
                   "       %s --pg CONNINFO [--orders S] [--inventory S] [--email S]\n"
                   "       [--wait-ms T]   (S: the services' schemas)\n",
                   prog, prog);
            return 0;
        default:
            return 2;
        }
    }

    if (pg_conninfo) {
#ifdef ORDERS_PG
        const char *schemas[3] = {orders ? orders : "orders", inventory ? inventory : "inventory",
                                  email ? email : "email"};
        for (int i = 0; i < 3; i++)
            if (!*schemas[i] ||
                strspn(schemas[i], "abcdefghijklmnopqrstuvwxyz0123456789_") != strlen(schemas[i])) {
                fprintf(stderr, "%s: a schema is [a-z0-9_]+, not '%s'\n", prog, schemas[i]);
                return 2;
            }
        if (want_latency) {
            fprintf(stderr, "%s: --latency is for the SQLite databases\n", prog);
            return 2;
        }
        static const int owner[T_COUNT] = {0, 0, 1, 1, 1, 2, 2};
        static const char *const table[T_COUNT] = {"orders", "outbox", "reservations", "stock",
                                                   "inbox",  "emails", "inbox"};
        for (int t = 0; t < T_COUNT; t++)
            snprintf(t_names[t], sizeof t_names[t], "%s.%s", schemas[owner[t]], table[t]);
        pg = common_pg_connect(prog, pg_conninfo, "public", 0);
        if (!pg)
            return 1;
        static char label[96];
        snprintf(label, sizeof label, "schema %s", schemas[0]);
        orders = label;
#else
        fprintf(stderr, "%s: built without PostgreSQL (libpq): no --pg\n", prog);
        return 2;
#endif
    } else {
        orders = orders ? orders : "orders.db";
        lite = open_all_sqlite(orders, inventory ? inventory : "inventory.db",
                               email ? email : "email.db");
        if (!lite)
            return 1;
    }
    /* Postgres deletes the outbox rows it published: all that is there
     * waits. */
    const char *waiting_sql = lite ? "SELECT count(*) FROM {outbox} WHERE sent_ms IS NULL"
                                   : "SELECT count(*) FROM {outbox}";

    int64_t n_orders = q("SELECT count(*) FROM {orders}");
    if (wait_ms > 0) {
        int64_t deadline = common_mono_ms() + wait_ms;
        for (;;) {
            n_orders = q("SELECT count(*) FROM {orders}");
            int64_t r = q("SELECT count(DISTINCT order_id) FROM {reservations}");
            int64_t m = q("SELECT count(DISTINCT order_id) FROM {emails}");
            if (n_orders >= 0 && r >= n_orders && m >= n_orders)
                break;
            if (common_mono_ms() > deadline) {
                fprintf(stderr,
                        "%s: after %" PRId64 " ms: %" PRId64 " of %" PRId64
                        " orders reserved, %" PRId64 " e-mailed\n",
                        prog, wait_ms, r, n_orders, m);
                sqlite3_close(lite);
#ifdef ORDERS_PG
                PQfinish(pg);
#endif
                return 3;
            }
            common_sleep_ms(100);
        }
    }

    /* One read transaction: the figures below are one moment's. */
    exec_sql(lite ? "BEGIN" : "BEGIN ISOLATION LEVEL REPEATABLE READ");
    int64_t waiting = q(waiting_sql);
    printf("order_service      %" PRId64 " orders written to %s\n", n_orders, orders);
    printf("relay              %" PRId64 " events relayed, %" PRId64 " waiting in the outbox\n",
           n_orders - waiting, waiting);
    printf("inventory_service  %" PRId64 " orders reserved (%" PRId64 " units of stock), %" PRId64
           " inbox claims kept\n",
           q("SELECT count(*) FROM {reservations}"),
           q("SELECT coalesce(sum(reserved), 0) FROM {stock}"),
           q("SELECT count(*) FROM {inv_inbox}"));
    printf("email_service      %" PRId64 " confirmation e-mails sent, %" PRId64
           " inbox claims kept\n",
           q("SELECT count(*) FROM {emails}"), q("SELECT count(*) FROM {mail_inbox}"));

    printf("exactly once:\n");
    int failed = 0;
    failed += check("every order reserved exactly once",
                    "SELECT count(*) FROM {orders} o LEFT JOIN (SELECT order_id, count(*) AS n"
                    " FROM {reservations} GROUP BY order_id) r ON r.order_id = o.id"
                    " WHERE coalesce(r.n, 0) != 1");
    failed += check("no reservation without its order",
                    "SELECT count(*) FROM {reservations}"
                    " WHERE order_id NOT IN (SELECT id FROM {orders})");
    failed +=
        check("each reservation matches its order (sku, quantity)",
              "SELECT count(*) FROM {reservations} r JOIN {orders} o ON o.id = r.order_id"
              " WHERE r.sku != o.sku OR r.qty != o.qty OR r.order_created_us != o.created_us");
    failed +=
        check("stock counters add up to the reservations",
              "SELECT count(*) FROM {stock} s WHERE s.reserved != (SELECT coalesce(sum(qty), 0)"
              " FROM {reservations} r WHERE r.sku = s.sku AND r.status = 'reserved')");
    failed += check("every order e-mailed exactly once",
                    "SELECT count(*) FROM {orders} o LEFT JOIN (SELECT order_id, count(*) AS n"
                    " FROM {emails} GROUP BY order_id) m ON m.order_id = o.id"
                    " WHERE coalesce(m.n, 0) != 1");
    failed +=
        check("no e-mail without its order",
              "SELECT count(*) FROM {emails} WHERE order_id NOT IN (SELECT id FROM {orders})");
    /* Postgres: a unique index on msg_id, and published rows deleted. */
    if (lite)
        failed += check("one outbox event per order",
                        "SELECT count(*) FROM {orders} o WHERE (SELECT count(*) FROM {outbox}"
                        " b WHERE b.msg_id = 'order-' || o.id) > 1");
    exec_sql("COMMIT");

    if (want_latency) {
        /* stored_ms is ferryd's clock in whole ms: the split is +-1 ms. */
        printf("latency, producer's commit -> consumer's committed effect:\n");
        latency(lite, "inventory", "effect_us - order_created_us", t_names[T_RESERVATIONS],
                lat_from);
        latency(lite, "email", "effect_us - order_created_us", t_names[T_EMAILS], lat_from);
        printf("  of which (inventory):\n");
        latency(lite, "  commit -> stored by ferryd", "stored_ms * 1000 - order_created_us",
                t_names[T_RESERVATIONS], lat_from);
        latency(lite, "  stored -> effect committed", "effect_us - stored_ms * 1000",
                t_names[T_RESERVATIONS], lat_from);
    }
    sqlite3_close(lite);
#ifdef ORDERS_PG
    PQfinish(pg);
#endif
    printf("%s\n",
           failed ? "RESULT: FAILED" : "RESULT: every order's effect happened exactly once");
    return failed ? 1 : 0;
}
