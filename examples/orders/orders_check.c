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
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "common.h"

static const char *prog = "orders_check";

static sqlite3 *open_all(const char *orders, const char *inventory, const char *email)
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
static int64_t q(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
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
static int check(sqlite3 *db, const char *what, const char *sql)
{
    int64_t bad = q(db, sql);
    printf("  %-62s %s\n", what, bad == 0 ? "ok" : "FAILED");
    if (bad != 0)
        printf("    (%" PRId64 " offending rows: %s)\n", bad, sql);
    return bad != 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"orders", required_argument, NULL, 'o'}, {"inventory", required_argument, NULL, 'i'},
        {"email", required_argument, NULL, 'e'},  {"wait-ms", required_argument, NULL, 'w'},
        {"latency", no_argument, NULL, 'l'},      {"latency-from", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    const char *orders = "orders.db", *inventory = "inventory.db", *email = "email.db";
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
        case 'h':
            printf("usage: %s [--orders F] [--inventory F] [--email F] [--wait-ms T]\n"
                   "       [--latency [--latency-from ORDER]]\n",
                   prog);
            return 0;
        default:
            return 2;
        }
    }

    sqlite3 *db = open_all(orders, inventory, email);
    if (!db)
        return 1;

    int64_t n_orders = q(db, "SELECT count(*) FROM main.orders");
    if (wait_ms > 0) {
        int64_t deadline = common_mono_ms() + wait_ms;
        for (;;) {
            int64_t r = q(db, "SELECT count(DISTINCT order_id) FROM inv.reservations");
            int64_t m = q(db, "SELECT count(DISTINCT order_id) FROM mail.emails");
            if (r >= n_orders && m >= n_orders)
                break;
            if (common_mono_ms() > deadline) {
                fprintf(stderr,
                        "%s: after %" PRId64 " ms: %" PRId64 " of %" PRId64
                        " orders reserved, %" PRId64 " e-mailed\n",
                        prog, wait_ms, r, n_orders, m);
                sqlite3_close(db);
                return 3;
            }
            common_sleep_ms(100);
        }
    }

    /* One read transaction: the figures below are one moment's. */
    sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    printf("order_service      %" PRId64 " orders written to %s\n", n_orders, orders);
    printf("relay              %" PRId64 " events relayed, %" PRId64 " waiting in the outbox\n",
           n_orders - q(db, "SELECT count(*) FROM main.ferry_outbox WHERE sent_ms IS NULL"),
           q(db, "SELECT count(*) FROM main.ferry_outbox WHERE sent_ms IS NULL"));
    printf("inventory_service  %" PRId64 " orders reserved (%" PRId64 " units of stock), %" PRId64
           " inbox claims kept\n",
           q(db, "SELECT count(*) FROM inv.reservations"),
           q(db, "SELECT ifnull(sum(reserved), 0) FROM inv.stock"),
           q(db, "SELECT count(*) FROM inv.ferry_inbox"));
    printf(
        "email_service      %" PRId64 " confirmation e-mails sent, %" PRId64 " inbox claims kept\n",
        q(db, "SELECT count(*) FROM mail.emails"), q(db, "SELECT count(*) FROM mail.ferry_inbox"));

    printf("exactly once:\n");
    int failed = 0;
    failed += check(db, "every order reserved exactly once",
                    "SELECT count(*) FROM main.orders o LEFT JOIN (SELECT order_id, count(*) AS n"
                    " FROM inv.reservations GROUP BY order_id) r ON r.order_id = o.id"
                    " WHERE ifnull(r.n, 0) != 1");
    failed += check(db, "no reservation without its order",
                    "SELECT count(*) FROM inv.reservations"
                    " WHERE order_id NOT IN (SELECT id FROM main.orders)");
    failed +=
        check(db, "each reservation matches its order (sku, quantity)",
              "SELECT count(*) FROM inv.reservations r JOIN main.orders o ON o.id = r.order_id"
              " WHERE r.sku != o.sku OR r.qty != o.qty OR r.order_created_us != o.created_us");
    failed +=
        check(db, "stock counters add up to the reservations",
              "SELECT count(*) FROM inv.stock s WHERE s.reserved != (SELECT ifnull(sum(qty), 0)"
              " FROM inv.reservations r WHERE r.sku = s.sku AND r.status = 'reserved')");
    failed += check(db, "every order e-mailed exactly once",
                    "SELECT count(*) FROM main.orders o LEFT JOIN (SELECT order_id, count(*) AS n"
                    " FROM mail.emails GROUP BY order_id) m ON m.order_id = o.id"
                    " WHERE ifnull(m.n, 0) != 1");
    failed += check(
        db, "no e-mail without its order",
        "SELECT count(*) FROM mail.emails WHERE order_id NOT IN (SELECT id FROM main.orders)");
    failed +=
        check(db, "one outbox event per order",
              "SELECT count(*) FROM main.orders o WHERE (SELECT count(*) FROM main.ferry_outbox"
              " b WHERE b.msg_id = 'order-' || o.id) > 1");
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);

    if (want_latency) {
        /* stored_ms is ferryd's clock in whole ms: the split is +-1 ms. */
        printf("latency, producer's commit -> consumer's committed effect:\n");
        latency(db, "inventory", "effect_us - order_created_us", "inv.reservations", lat_from);
        latency(db, "email", "effect_us - order_created_us", "mail.emails", lat_from);
        printf("  of which (inventory):\n");
        latency(db, "  commit -> stored by ferryd", "stored_ms * 1000 - order_created_us",
                "inv.reservations", lat_from);
        latency(db, "  stored -> effect committed", "effect_us - stored_ms * 1000",
                "inv.reservations", lat_from);
    }
    sqlite3_close(db);
    printf("%s\n",
           failed ? "RESULT: FAILED" : "RESULT: every order's effect happened exactly once");
    return failed ? 1 : 0;
}
