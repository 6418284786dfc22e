/*
 * pg_internal.h - what the Postgres outbox, relay and inbox share
 * (pg_outbox.c, pg_relay.c, pg_inbox.c; docs/OUTBOX.md and docs/INBOX.md,
 * "PostgreSQL", are their contract).
 *
 * Every object lives in one schema the application names (default
 * "ferry"): <schema>.outbox, <schema>.outbox_meta, the trigger function
 * <schema>.outbox_notify(), <schema>.inbox, <schema>.inbox_meta. A schema
 * name is 1-50 of [a-z0-9_] starting with a letter or '_', so that it
 * needs no quoting in SQL and the NOTIFY channel "ferry_outbox_<schema>"
 * stays within Postgres' 63-byte identifiers.
 */
#ifndef FERRY_PG_INTERNAL_H
#define FERRY_PG_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "ferry.h"

#define FERRY__PG_SCHEMA_MAX 50

/* The advisory lock of one outbox: pg_advisory_lock(FERRY__PG_LOCK_CLASS,
 * hashtext('<schema>.outbox')). 0x46525259 is "FRRY". */
#define FERRY__PG_LOCK_CLASS 1179800153

/* Unix ms of the server's clock, as the created_ms/processed_ms defaults. */
#define FERRY__PG_NOW_MS_SQL "(extract(epoch from clock_timestamp()) * 1000)::bigint"

/* The schema name to use: schema, or "ferry" when NULL or empty. Returns
 * NULL when it is not a valid schema name (above). */
const char *ferry__pg_schema(const char *schema);

/* Runs sql (no parameters); returns 0, or FERRY_ESTORAGE with
 * PQerrorMessage(pg) holding the detail (also for a lost connection). */
int ferry__pg_exec(PGconn *pg, const char *sql);

/* The first column of the first row of sql, copied into out (empty when
 * no row or NULL). Returns 0, 1 when no row, or FERRY_ESTORAGE. */
int ferry__pg_value(PGconn *pg, const char *sql, char *out, size_t out_len);

/* Formats SQL: every "@S" in fmt becomes the schema name (valid names
 * hold no '%'), then the rest is printf-formatted with the arguments.
 * Returns a malloc'd string (the caller frees it), or NULL without
 * memory. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
char *
ferry__pg_sql(const char *schema, const char *fmt, ...);

#endif /* FERRY_PG_INTERNAL_H */
