/*
 * inventory_service - consumer group "inventory" on topic "orders": reserves
 * stock for each order in its own database, inventory.db, exactly once.
 *
 * Tables (besides the inbox):
 *   stock(sku, on_hand, reserved)       seeded with 20 products (sku-0..sku-19,
 *                                       as order_service uses), plenty of each
 *   reservations(id, order_id, sku, qty, status, order_created_us, effect_us)
 *                                       one row per applied order; no unique
 *                                       constraint on order_id on purpose: a
 *                                       second application would show as a
 *                                       second row (orders_check looks)
 *
 * The handler runs inside ferry_inbox_handle's transaction: the reservation,
 * the stock counter and the inbox claim commit together or not at all.
 */
#include <stdio.h>
#include <string.h>

#include "common.h"
#include "consumer.h"
#ifdef ORDERS_PG
#include <inttypes.h>
#include <libpq-fe.h>
#endif

/* clang-format off */
static const char schema[] =
    "CREATE TABLE IF NOT EXISTS stock ("
    "  sku TEXT PRIMARY KEY,"
    "  on_hand INTEGER NOT NULL,"
    "  reserved INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS reservations ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  order_id INTEGER NOT NULL,"
    "  sku TEXT NOT NULL,"
    "  qty INTEGER NOT NULL,"
    "  status TEXT NOT NULL,"               /* reserved | backorder */
    "  order_created_us INTEGER NOT NULL,"  /* from the event: the producer's commit */
    "  stored_ms INTEGER NOT NULL,"         /* when ferryd stored the event */
    "  effect_us INTEGER NOT NULL);"        /* just before this transaction's COMMIT */
    "CREATE INDEX IF NOT EXISTS reservations_order ON reservations(order_id);"
    "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < 20)"
    "  INSERT OR IGNORE INTO stock(sku, on_hand) SELECT 'sku-' || i, 100000000 FROM n;";
/* clang-format on */

/* Reserves d's order. Returns 0, or -1 (rolled back and retried). */
static int reserve(void *userdata, sqlite3 *db, const ferry_delivery *d)
{
    (void)userdata;
    struct order o;
    if (order_from_json(d->payload, d->payload_len, &o) < 0)
        return -1; /* poison: retried, then dead-lettered by the broker */

    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "UPDATE stock SET reserved = reserved + ?1"
                           " WHERE sku = ?2 AND on_hand - reserved >= ?1",
                           -1, &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int(st, 1, o.qty);
    sqlite3_bind_text(st, 2, o.sku, -1, SQLITE_STATIC);
    int src = sqlite3_step(st);
    sqlite3_finalize(st);
    if (src != SQLITE_DONE)
        return -1;
    const char *status = sqlite3_changes(db) == 1 ? "reserved" : "backorder";

    if (sqlite3_prepare_v2(
            db,
            "INSERT INTO reservations(order_id, sku, qty, status,"
            " order_created_us, stored_ms, effect_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            -1, &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int64(st, 1, o.order_id);
    sqlite3_bind_text(st, 2, o.sku, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 3, o.qty);
    sqlite3_bind_text(st, 4, status, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, o.created_us);
    sqlite3_bind_int64(st, 6, d->ts_ms);
    sqlite3_bind_int64(st, 7, common_wall_us());
    src = sqlite3_step(st);
    sqlite3_finalize(st);
    return src == SQLITE_DONE ? 0 : -1;
}

#ifdef ORDERS_PG
/* --pg: the same tables in the service's schema (search_path). */
/* clang-format off */
static const char pg_schema[] =
    "CREATE TABLE IF NOT EXISTS stock ("
    "  sku text PRIMARY KEY,"
    "  on_hand bigint NOT NULL,"
    "  reserved bigint NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS reservations ("
    "  id bigserial PRIMARY KEY,"
    "  order_id bigint NOT NULL,"
    "  sku text NOT NULL,"
    "  qty integer NOT NULL,"
    "  status text NOT NULL,"
    "  order_created_us bigint NOT NULL,"
    "  stored_ms bigint NOT NULL,"
    "  effect_us bigint NOT NULL);"
    "CREATE INDEX IF NOT EXISTS reservations_order ON reservations(order_id);"
    "INSERT INTO stock(sku, on_hand) SELECT 'sku-' || i, 100000000"
    "  FROM generate_series(0, 19) i ON CONFLICT DO NOTHING;";
/* clang-format on */

/* reserve() in ferry_pg_inbox_handle's transaction. */
static int reserve_pg(void *userdata, PGconn *pg, const ferry_delivery *d)
{
    (void)userdata;
    struct order o;
    if (order_from_json(d->payload, d->payload_len, &o) < 0)
        return -1;
    char v[7][32];
    snprintf(v[0], sizeof v[0], "%d", o.qty);
    snprintf(v[1], sizeof v[1], "%s", o.sku);
    const char *upd[2] = {v[0], v[1]};
    PGresult *r = PQexecParams(pg,
                               "UPDATE stock SET reserved = reserved + $1"
                               " WHERE sku = $2 AND on_hand - reserved >= $1",
                               2, NULL, upd, NULL, NULL, 0);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    const char *status = ok && strcmp(PQcmdTuples(r), "1") == 0 ? "reserved" : "backorder";
    PQclear(r);
    if (!ok)
        return -1;
    snprintf(v[2], sizeof v[2], "%" PRId64, o.order_id);
    snprintf(v[3], sizeof v[3], "%s", status);
    snprintf(v[4], sizeof v[4], "%" PRId64, o.created_us);
    snprintf(v[5], sizeof v[5], "%" PRId64, d->ts_ms);
    snprintf(v[6], sizeof v[6], "%" PRId64, common_wall_us());
    const char *ins[7] = {v[2], v[1], v[0], v[3], v[4], v[5], v[6]};
    r = PQexecParams(pg,
                     "INSERT INTO reservations(order_id, sku, qty, status, order_created_us,"
                     " stored_ms, effect_us) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                     7, NULL, ins, NULL, NULL, 0);
    ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    return ok ? 0 : -1;
}
#endif

int main(int argc, char **argv)
{
    struct consumer_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.prog = "inventory_service";
    cfg.group = "inventory";
    cfg.schema_sql = schema;
    cfg.count_sql = "SELECT count(*) FROM reservations";
    cfg.handler = reserve;
#ifdef ORDERS_PG
    cfg.pg_schema_sql = pg_schema;
    cfg.pg_handler = reserve_pg;
#endif
    consumer_parse_args(&cfg, argc, argv,
                        "Consumer group 'inventory' of topic 'orders': reserves stock for each\n"
                        "order in its database, exactly once (ferry_inbox_handle).");
    common_signals();
    return consumer_run(&cfg);
}
