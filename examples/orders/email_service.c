/*
 * email_service - consumer group "email" on topic "orders": "sends" the
 * order confirmation by recording it in its own database, email.db,
 * exactly once.
 *
 *   emails(id, order_id, recipient, subject, order_created_us, effect_us)
 *       one row per e-mail; no unique constraint on order_id on purpose
 *
 * A real service would hand the mail to an SMTP relay. That call is outside
 * the database, so it would be at least once, not exactly once: the way to
 * keep it exactly once is the outbox again, a row here that a separate
 * sender works through. This example stops at the row.
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
    "CREATE TABLE IF NOT EXISTS emails ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  order_id INTEGER NOT NULL,"
    "  recipient TEXT NOT NULL,"
    "  subject TEXT NOT NULL,"
    "  order_created_us INTEGER NOT NULL,"
    "  stored_ms INTEGER NOT NULL,"
    "  effect_us INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS emails_order ON emails(order_id);";
/* clang-format on */

/* The e-mail of d's order; -1 when d does not parse. */
static int compose(const ferry_delivery *d, struct order *o, char recipient[64], char subject[96])
{
    if (order_from_json(d->payload, d->payload_len, o) < 0)
        return -1;
    snprintf(recipient, 64, "%s@example.com", o->customer);
    snprintf(subject, 96, "Your order %lld: %d x %s", (long long)o->order_id, o->qty, o->sku);
    return 0;
}

static int send_confirmation(void *userdata, sqlite3 *db, const ferry_delivery *d)
{
    (void)userdata;
    struct order o;
    char recipient[64], subject[96];
    if (compose(d, &o, recipient, subject) < 0)
        return -1;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO emails(order_id, recipient, subject, order_created_us,"
                           " stored_ms, effect_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                           -1, &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int64(st, 1, o.order_id);
    sqlite3_bind_text(st, 2, recipient, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, subject, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, o.created_us);
    sqlite3_bind_int64(st, 5, d->ts_ms);
    sqlite3_bind_int64(st, 6, common_wall_us());
    int src = sqlite3_step(st);
    sqlite3_finalize(st);
    return src == SQLITE_DONE ? 0 : -1;
}

#ifdef ORDERS_PG
/* --pg: the same table in the service's schema (search_path). */
/* clang-format off */
static const char pg_schema[] =
    "CREATE TABLE IF NOT EXISTS emails ("
    "  id bigserial PRIMARY KEY,"
    "  order_id bigint NOT NULL,"
    "  recipient text NOT NULL,"
    "  subject text NOT NULL,"
    "  order_created_us bigint NOT NULL,"
    "  stored_ms bigint NOT NULL,"
    "  effect_us bigint NOT NULL);"
    "CREATE INDEX IF NOT EXISTS emails_order ON emails(order_id);";
/* clang-format on */

static int send_confirmation_pg(void *userdata, PGconn *pg, const ferry_delivery *d)
{
    (void)userdata;
    struct order o;
    char recipient[64], subject[96], v[4][32];
    if (compose(d, &o, recipient, subject) < 0)
        return -1;
    snprintf(v[0], sizeof v[0], "%" PRId64, o.order_id);
    snprintf(v[1], sizeof v[1], "%" PRId64, o.created_us);
    snprintf(v[2], sizeof v[2], "%" PRId64, d->ts_ms);
    snprintf(v[3], sizeof v[3], "%" PRId64, common_wall_us());
    const char *vals[6] = {v[0], recipient, subject, v[1], v[2], v[3]};
    PGresult *r = PQexecParams(pg,
                               "INSERT INTO emails(order_id, recipient, subject, order_created_us,"
                               " stored_ms, effect_us) VALUES ($1, $2, $3, $4, $5, $6)",
                               6, NULL, vals, NULL, NULL, 0);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    return ok ? 0 : -1;
}
#endif

int main(int argc, char **argv)
{
    struct consumer_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.prog = "email_service";
    cfg.group = "email";
    cfg.schema_sql = schema;
    cfg.count_sql = "SELECT count(*) FROM emails";
    cfg.handler = send_confirmation;
#ifdef ORDERS_PG
    cfg.pg_schema_sql = pg_schema;
    cfg.pg_handler = send_confirmation_pg;
#endif
    consumer_parse_args(&cfg, argc, argv,
                        "Consumer group 'email' of topic 'orders': records the confirmation\n"
                        "e-mail of each order in its database, exactly once.");
    common_signals();
    return consumer_run(&cfg);
}
