/*
 * outbox_internal.h - what outbox.c and relay.c share: the outbox schema
 * (docs/OUTBOX.md is its contract) and a few SQLite helpers.
 *
 * Schema version 1:
 *   ferry_outbox_meta   name/value pairs: 'schema_version' ('1') and
 *                       'producer_id' (generated once per database)
 *   ferry_outbox        one row per message, seq AUTOINCREMENT so that a seq
 *                       is never reused, even after the rows below it were
 *                       purged: the broker's producer high-water mark relies
 *                       on it
 *   ferry_outbox_unsent partial index of the rows not yet sent: the relay's
 *                       reads and the lag figures cost O(waiting rows), not
 *                       O(rows kept for the retention)
 */
#ifndef FERRY_OUTBOX_INTERNAL_H
#define FERRY_OUTBOX_INTERNAL_H

#include <stdint.h>

#include <sqlite3.h>

#include "ferry.h"

#define FERRY__OUTBOX_SCHEMA_VERSION 1

/* The 'now' of SQLite in Unix milliseconds, as the created_ms default. */
#define FERRY__OUTBOX_NOW_MS_SQL "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"

/* Maps a SQLite result code: 0 for success, FERRY_ETIMEOUT for a lock that
 * stayed taken beyond the busy timeout (SQLITE_BUSY, SQLITE_LOCKED),
 * FERRY_ESTORAGE for anything else (sqlite3_errmsg has the detail). */
int ferry__outbox_err(int src);

/* Runs sql (no result rows); returns 0 or ferry__outbox_err's code. */
int ferry__outbox_exec(sqlite3 *db, const char *sql);

/* Reads the database's producer id into out. Returns 0, FERRY_ESTORAGE, or
 * FERRY_EUNSUPPORTED when the outbox is not installed. */
int ferry__outbox_read_producer_id(sqlite3 *db, char out[129]);

/* Unix milliseconds by the wall clock. */
int64_t ferry__wall_ms(void);

#endif /* FERRY_OUTBOX_INTERNAL_H */
