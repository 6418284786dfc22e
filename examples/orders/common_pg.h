/*
 * common_pg.h - what the programs of the order story share when they run
 * on PostgreSQL (--pg CONNINFO): a connection whose search_path is the
 * service's schema, so that the services' SQL names their tables
 * unqualified, and small query helpers. Built only with libpq.
 *
 * Each service keeps its tables, and Ferry's outbox or inbox, in a schema
 * of its own (--schema; defaults: orders, inventory, email), so that the
 * three can share one database as the three SQLite files share a folder.
 */
#ifndef ORDERS_COMMON_PG_H
#define ORDERS_COMMON_PG_H

#include <stdint.h>

#include <libpq-fe.h>

/* Connects to conninfo, quietens notices and sets search_path to schema
 * (which need not exist yet). Returns NULL (after logging, unless quiet)
 * on failure. */
PGconn *common_pg_connect(const char *prog, const char *conninfo, const char *schema, int quiet);

/* Runs sql (no parameters, may hold several statements). Returns 0, or -1
 * after logging the error (unless quiet). */
int common_pg_exec(const char *prog, PGconn *pg, const char *sql, int quiet);

/* The first column of the first row of sql as an integer; -1 when the
 * query fails (a table not made yet, the server gone). */
int64_t common_pg_int(PGconn *pg, const char *sql);

/* PQerrorMessage without its trailing newline. */
const char *common_pg_errmsg(PGconn *pg);

#endif /* ORDERS_COMMON_PG_H */
