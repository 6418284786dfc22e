/*
 * inbox.c - the idempotent inbox: exactly-once effects on the consuming
 * side (ferry.h "The inbox", docs/INBOX.md).
 *
 * The broker delivers at least once. A consumer whose effects live in a
 * SQLite database makes them happen exactly once by recording, in the same
 * transaction as the effect, the id of the message that caused it:
 *
 *   ferry_inbox(grp, msg_id, topic, seq, processed_ms)
 *       PRIMARY KEY (grp, msg_id), WITHOUT ROWID
 *   ferry_inbox_processed ON ferry_inbox(processed_ms)    -- for the purge
 *
 * `grp` is the application's name for the consumer (normally the consumer
 * group), so that several consumers can share one database. The primary key
 * makes at most one transaction that records (grp, msg_id) commit; the
 * effect commits with it or not at all. ferry_inbox_handle wraps the whole
 * sequence: BEGIN IMMEDIATE, claim, the handler when the claim is fresh,
 * COMMIT, and only then the ack.
 *
 * Versions: the layout's version is recorded in ferry_inbox_meta
 * (name 'schema_version', value '1'; the outbox keeps its own, in
 * ferry_outbox_meta). ferry_inbox_install creates what is missing, taking
 * the write lock only then, and refuses a layout newer than this library
 * knows.
 *
 * Statements are prepared per call (a few microseconds each): a helper
 * that takes a bare sqlite3 * has nowhere to keep them, and the cost is
 * far below the transaction's own.
 *
 * This file also holds ferry_sub_info_get, the getter of a subscription's
 * settings that the inbox window is computed from.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "internal.h"

/* The layout this library creates and understands. */
#define FERRY__INBOX_VERSION 2

/* BEGIN IMMEDIATE or COMMIT that keep meeting SQLITE_BUSY (beyond the
 * connection's own busy timeout) are retried, with a backoff doubling from
 * BUSY_FIRST_MS to BUSY_MAX_MS, for half of the delivery's lease (so that a
 * nack still reaches the broker before the lease ends), but at least
 * BUSY_MIN_BUDGET_MS and at most BUSY_MAX_BUDGET_MS. */
#define BUSY_FIRST_MS 1
#define BUSY_MAX_MS 50
#define BUSY_MIN_BUDGET_MS 1000
#define BUSY_MAX_BUDGET_MS 10000

/* The nack reason of a failed handler, and of a database failure. */
#define REASON_BYTES 160

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Maps a SQLite result code to a FERRY_E*: a lock that stayed taken is a
 * timeout, anything else a storage error (sqlite3_errmsg has the detail). */
static int db_err(int src)
{
    switch (src & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return FERRY_ETIMEOUT;
    case SQLITE_NOMEM:
        return FERRY_ENOMEM;
    default:
        return FERRY_ESTORAGE;
    }
}

static int is_busy(int src)
{
    return (src & 0xff) == SQLITE_BUSY || (src & 0xff) == SQLITE_LOCKED;
}

/* Runs sql (statements without results). Returns the SQLite code. */
static int exec(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

/* Runs sql, retrying while it fails with SQLITE_BUSY, until budget_ms is
 * spent. For BEGIN IMMEDIATE and COMMIT: a COMMIT that is busy leaves the
 * transaction open, so retrying it is correct. Returns the SQLite code. */
static int exec_retry(sqlite3 *db, const char *sql, int budget_ms)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int backoff = BUSY_FIRST_MS;
    for (;;) {
        int src = exec(db, sql);
        if (!is_busy(src))
            return src;
        clock_gettime(CLOCK_MONOTONIC, &t);
        int64_t spent = (int64_t)(t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
        if (spent >= budget_ms)
            return src;
        /* A little jitter, so that consumers stuck behind the same writer
         * do not retry in lockstep. */
        sleep_ms(backoff + (int)(t.tv_nsec % backoff));
        if (backoff < BUSY_MAX_MS)
            backoff *= 2;
    }
}

/* Ends whatever transaction is open on db (nothing when none). */
static void rollback(sqlite3 *db)
{
    if (!sqlite3_get_autocommit(db))
        exec(db, "ROLLBACK");
}

/* ------------------------------------------------------------------------
 * Install.
 */

/* The layout's version recorded in ferry_inbox_meta: 0 when none (or no
 * meta table yet), > 0 the version, < 0 a FERRY_E*. */
static int recorded_version(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    int src = sqlite3_prepare_v2(
        db, "SELECT value FROM ferry_inbox_meta WHERE name = 'schema_version'", -1, &st, NULL);
    if (src != SQLITE_OK) {
        sqlite3_finalize(st);
        return src == SQLITE_ERROR ? 0 : db_err(src); /* "no such table" */
    }
    int v = 0;
    src = sqlite3_step(st);
    if (src == SQLITE_ROW)
        v = (int)strtol((const char *)sqlite3_column_text(st, 0), NULL, 10);
    else if (src != SQLITE_DONE)
        v = db_err(src);
    sqlite3_finalize(st);
    return v;
}

/* 1 when the inbox is installed at our version, 0 when install has work to
 * do, FERRY_EUNSUPPORTED for a newer layout, another FERRY_E* on failure. */
static int installed(sqlite3 *db)
{
    int v = recorded_version(db);
    if (v < 0)
        return v;
    if (v > FERRY__INBOX_VERSION)
        return FERRY_EUNSUPPORTED; /* made by a newer libferry */
    if (v < FERRY__INBOX_VERSION)
        return 0;
    /* The table itself (someone may have dropped it to start afresh). */
    sqlite3_stmt *st = NULL;
    int src = sqlite3_prepare_v2(db, "SELECT 1 FROM ferry_inbox LIMIT 0", -1, &st, NULL);
    sqlite3_finalize(st);
    return src == SQLITE_OK ? 1 : 0;
}

/* Creates what is missing; under the write lock. */
static int install_steps(sqlite3 *db)
{
    int rc = installed(db);
    if (rc != 0)
        return rc < 0 ? rc : 0;
    int v = recorded_version(db);
    if (v < 0)
        return v;
    /* Version 1: the table, from a fresh database (or one whose table was
     * dropped). */
    int src = exec(db, "CREATE TABLE IF NOT EXISTS ferry_inbox_meta ("
                       " name TEXT PRIMARY KEY,"
                       " value TEXT NOT NULL"
                       ") WITHOUT ROWID;"
                       "CREATE TABLE IF NOT EXISTS ferry_inbox ("
                       " grp TEXT NOT NULL,"
                       " msg_id TEXT NOT NULL,"
                       " topic TEXT NOT NULL,"
                       " seq INTEGER NOT NULL,"
                       " processed_ms INTEGER NOT NULL,"
                       " PRIMARY KEY (grp, msg_id)"
                       ") WITHOUT ROWID;"
                       "CREATE INDEX IF NOT EXISTS ferry_inbox_processed"
                       " ON ferry_inbox(processed_ms);");
    /* Version 2: claims found by sequence, for ferry_inbox_purge_acked. */
    if (src == SQLITE_OK)
        src = exec(db, "CREATE INDEX IF NOT EXISTS ferry_inbox_seq"
                       " ON ferry_inbox(grp, topic, seq);"
                       "INSERT INTO ferry_inbox_meta(name, value) VALUES ('schema_version', '2')"
                       " ON CONFLICT(name) DO UPDATE SET value = excluded.value");
    return src == SQLITE_OK ? 0 : db_err(src);
}

int ferry_inbox_install(sqlite3 *db)
{
    if (!db)
        return FERRY_EINVALID;
    /* Installed already (every start but the first): no write lock, so
     * that many consumers starting at once do not queue for it. */
    int rc = installed(db);
    if (rc != 0)
        return rc < 0 ? rc : 0;
    if (!sqlite3_get_autocommit(db)) {
        /* Inside the caller's transaction: a savepoint, so that a failure
         * undoes only our part. */
        int src = exec(db, "SAVEPOINT ferry_inbox_install");
        if (src != SQLITE_OK)
            return db_err(src);
        rc = install_steps(db);
        if (rc < 0)
            exec(db, "ROLLBACK TO ferry_inbox_install");
        exec(db, "RELEASE ferry_inbox_install");
        return rc;
    }
    int src = exec_retry(db, "BEGIN IMMEDIATE", BUSY_MAX_BUDGET_MS);
    if (src != SQLITE_OK)
        return db_err(src);
    rc = install_steps(db);
    if (rc == 0) {
        src = exec_retry(db, "COMMIT", BUSY_MAX_BUDGET_MS);
        if (src != SQLITE_OK)
            rc = db_err(src);
    }
    if (rc < 0)
        rollback(db);
    return rc;
}

/* ------------------------------------------------------------------------
 * Claim.
 */

int ferry_inbox_claim(sqlite3 *db, const char *group, const ferry_delivery *d)
{
    if (!db || !group || !*group || !d || !d->topic)
        return FERRY_EINVALID;
    if (!d->id || !*d->id)
        return FERRY_EINVALID_ID;
    /* Outside a transaction the claim would commit on its own, apart from
     * the effect it is meant to guard. */
    if (sqlite3_get_autocommit(db))
        return FERRY_EINVALID;

    /* ON CONFLICT names the primary key, so that any other failure (a NOT
     * NULL, a missing table) is an error and never passes for "seen". */
    sqlite3_stmt *st = NULL;
    int src = sqlite3_prepare_v2(db,
                                 "INSERT INTO ferry_inbox(grp, msg_id, topic, seq, processed_ms)"
                                 " VALUES (?1, ?2, ?3, ?4, ?5)"
                                 " ON CONFLICT(grp, msg_id) DO NOTHING",
                                 -1, &st, NULL);
    if (src != SQLITE_OK)
        return db_err(src);
    sqlite3_bind_text(st, 1, group, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, d->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, d->topic, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)d->seq);
    sqlite3_bind_int64(st, 5, wall_ms());
    src = sqlite3_step(st);
    int rc;
    if (src == SQLITE_DONE)
        rc = sqlite3_changes(db) == 1 ? FERRY_INBOX_FRESH : FERRY_INBOX_SEEN;
    else
        rc = db_err(src);
    sqlite3_finalize(st);
    return rc;
}

/* ------------------------------------------------------------------------
 * Handle.
 */

/* The test hook (ferry.h, FERRY_INBOX_TEST_EXIT_ENV): _exit(9) right after
 * the COMMIT that holds the Nth fresh claim of this process, before any ack
 * of it. The count is the one piece of process-wide state in libferry, and
 * it only moves while the variable is set. */
static void test_exit_hook(size_t fresh_in_commit)
{
    static atomic_long fresh_commits;
    const char *v = getenv(FERRY_INBOX_TEST_EXIT_ENV);
    if (!v || !*v || fresh_in_commit == 0)
        return;
    long n = strtol(v, NULL, 10);
    if (n <= 0)
        return;
    long before = atomic_fetch_add(&fresh_commits, (long)fresh_in_commit);
    if (before < n && n <= before + (long)fresh_in_commit)
        _exit(9);
}

/* How long a busy database may hold up d: half of its lease, within the
 * limits above. */
static int busy_budget_ms(const ferry_delivery *d)
{
    uint32_t lease = d->sub ? d->sub->ack_wait_ms : 0;
    uint32_t half = lease / 2;
    if (half < BUSY_MIN_BUDGET_MS)
        return BUSY_MIN_BUDGET_MS;
    if (half > BUSY_MAX_BUDGET_MS)
        return BUSY_MAX_BUDGET_MS;
    return (int)half;
}

/* Where one delivery of a batch stands. */
enum { TODO_ACK = 1, TODO_NACK = 2 };

/* Processes one delivery inside the batch's open transaction, in a
 * savepoint of its own so that its failure undoes only its claim and its
 * effect. Sets *todo and returns the delivery's outcome (FRESH, SEEN, RETRY
 * or a FERRY_E*); returns FERRY_ESTORAGE with *txn_lost set when the
 * transaction itself is gone (the handler ended it, or SQLite rolled it
 * back after an error). */
static int handle_one(sqlite3 *db, const char *group, ferry_delivery *d, ferry_inbox_handler h,
                      void *userdata, int *todo, int *txn_lost, char *why, size_t why_len)
{
    *todo = TODO_NACK;
    int src = exec(db, "SAVEPOINT ferry_inbox_msg");
    if (src != SQLITE_OK) {
        snprintf(why, why_len, "inbox: SAVEPOINT failed: %s", sqlite3_errmsg(db));
        *txn_lost = sqlite3_get_autocommit(db);
        return db_err(src);
    }
    int claim = ferry_inbox_claim(db, group, d);
    int rc = claim;
    if (claim == FERRY_INBOX_FRESH) {
        int hrc = h(userdata, db, d);
        if (sqlite3_get_autocommit(db)) {
            /* The handler ended our transaction (COMMIT, ROLLBACK, or an
             * error after which SQLite rolled back). */
            snprintf(why, why_len, "inbox: the transaction ended inside the handler");
            *txn_lost = 1;
            return FERRY_ESTORAGE;
        }
        if (hrc != 0) {
            snprintf(why, why_len, "inbox: handler failed (%d)", hrc);
            rc = FERRY_INBOX_RETRY;
        }
    } else if (claim < 0) {
        snprintf(why, why_len, "inbox: claim failed: %s", sqlite3_errmsg(db));
    }
    if (rc == FERRY_INBOX_FRESH || rc == FERRY_INBOX_SEEN) {
        src = exec(db, "RELEASE ferry_inbox_msg");
        if (src == SQLITE_OK) {
            *todo = TODO_ACK;
            return rc;
        }
        snprintf(why, why_len, "inbox: RELEASE failed: %s", sqlite3_errmsg(db));
        rc = db_err(src);
    }
    /* Undo this delivery's claim and effect; the batch goes on. */
    if (exec(db, "ROLLBACK TO ferry_inbox_msg") != SQLITE_OK ||
        exec(db, "RELEASE ferry_inbox_msg") != SQLITE_OK || sqlite3_get_autocommit(db))
        *txn_lost = 1;
    return rc;
}

/* The core of ferry_inbox_handle and ferry_inbox_handle_batch: one
 * transaction for n deliveries, then the acks and nacks. outcomes has n
 * entries. Returns 0 or the error that undid the whole batch (every
 * delivery then nacked, and its outcome that error). */
static int handle_batch(sqlite3 *db, const char *group, ferry_delivery *const *ds, size_t n,
                        ferry_inbox_handler h, void *userdata, uint32_t retry_delay_ms,
                        int *outcomes, int *todo)
{
    char why[REASON_BYTES] = "";
    char first_why[REASON_BYTES] = "";
    int budget = busy_budget_ms(ds[0]);
    int batch_rc = 0;
    size_t fresh = 0;

    int src = exec_retry(db, "BEGIN IMMEDIATE", budget);
    if (src != SQLITE_OK) {
        snprintf(first_why, sizeof first_why, "inbox: BEGIN failed: %s", sqlite3_errstr(src));
        batch_rc = db_err(src);
    }
    for (size_t i = 0; i < n && batch_rc == 0; i++) {
        int lost = 0;
        why[0] = '\0';
        outcomes[i] = handle_one(db, group, ds[i], h, userdata, &todo[i], &lost, why, sizeof why);
        if (todo[i] == TODO_NACK && !first_why[0])
            snprintf(first_why, sizeof first_why, "%s", why);
        if (outcomes[i] == FERRY_INBOX_FRESH)
            fresh++;
        if (lost) {
            /* Whatever the handler did to the transaction, the claims
             * decide: nack everything, the redeliveries find what did
             * commit. */
            snprintf(first_why, sizeof first_why, "%s", why);
            batch_rc = FERRY_ESTORAGE;
        }
    }
    if (batch_rc == 0) {
        src = exec_retry(db, "COMMIT", budget);
        if (src != SQLITE_OK) {
            snprintf(first_why, sizeof first_why, "inbox: COMMIT failed: %s", sqlite3_errmsg(db));
            batch_rc = db_err(src);
        }
    }
    if (batch_rc != 0) {
        rollback(db);
        for (size_t i = 0; i < n; i++) {
            outcomes[i] = batch_rc;
            todo[i] = TODO_NACK;
        }
    } else {
        /* The effects and their claims are durable (under the database's
         * synchronous setting): only now may the broker forget the
         * messages. A crash from here to the acks is what the claims are
         * for. */
        test_exit_hook(fresh);
    }

    for (size_t i = 0; i < n; i++) {
        int r;
        if (todo[i] == TODO_ACK)
            r = ferry_delivery_ack_async(ds[i]);
        else
            r = ferry_delivery_nack(ds[i], retry_delay_ms, first_why[0] ? first_why : NULL);
        if (r < 0 && outcomes[i] >= 0)
            outcomes[i] = r; /* the connection's error: it needs a look */
    }
    return batch_rc;
}

int ferry_inbox_handle(sqlite3 *db, const char *group, ferry_delivery *d, ferry_inbox_handler h,
                       void *userdata, uint32_t retry_delay_ms)
{
    if (!db || !group || !*group || !d || !h)
        return FERRY_EINVALID;
    /* Our COMMIT would commit the caller's transaction with it. */
    if (!sqlite3_get_autocommit(db))
        return FERRY_EINVALID;
    int outcome, todo;
    handle_batch(db, group, &d, 1, h, userdata, retry_delay_ms, &outcome, &todo);
    return outcome;
}

int ferry_inbox_handle_batch(sqlite3 *db, const char *group, ferry_delivery *const *ds, size_t n,
                             ferry_inbox_handler h, void *userdata, uint32_t retry_delay_ms,
                             int *outcomes)
{
    enum { SMALL = 64 };
    if (!db || !group || !*group || !ds || !h || n == 0)
        return FERRY_EINVALID;
    for (size_t i = 0; i < n; i++)
        if (!ds[i])
            return FERRY_EINVALID;
    if (!sqlite3_get_autocommit(db))
        return FERRY_EINVALID;
    int small_out[SMALL], small_todo[SMALL];
    int *out = outcomes, *todo = small_todo, *heap = NULL;
    if (n > SMALL) {
        heap = malloc((outcomes ? 1 : 2) * n * sizeof *heap);
        if (!heap)
            return FERRY_ENOMEM;
        todo = heap;
        if (!out)
            out = heap + n;
    } else if (!out) {
        out = small_out;
    }
    int rc = handle_batch(db, group, ds, n, h, userdata, retry_delay_ms, out, todo);
    free(heap);
    return rc;
}

/* ------------------------------------------------------------------------
 * Purge and window.
 */

int ferry_inbox_purge(sqlite3 *db, int64_t older_than_ms, int max_rows)
{
    if (!db || older_than_ms < 0 || max_rows < 0)
        return FERRY_EINVALID;
    int64_t now = wall_ms();
    if (older_than_ms >= now)
        return 0; /* nothing can be that old */
    sqlite3_stmt *st = NULL;
    /* The subquery walks ferry_inbox_processed from its oldest entry and
     * stops at the cutoff or the limit: the cost is the rows deleted, not
     * the table's size. */
    int src = sqlite3_prepare_v2(db,
                                 "DELETE FROM ferry_inbox WHERE (grp, msg_id) IN ("
                                 " SELECT grp, msg_id FROM ferry_inbox"
                                 " WHERE processed_ms < ?1"
                                 " ORDER BY processed_ms LIMIT ?2)",
                                 -1, &st, NULL);
    if (src != SQLITE_OK)
        return db_err(src);
    sqlite3_bind_int64(st, 1, now - older_than_ms);
    sqlite3_bind_int64(st, 2, max_rows > 0 ? max_rows : -1);
    src = sqlite3_step(st);
    int rc = src == SQLITE_DONE ? sqlite3_changes(db) : db_err(src);
    sqlite3_finalize(st);
    return rc;
}

/* Deletes up to *budget claims of (grp, topic) with lo <= seq < hi. */
static int forget_range(sqlite3_stmt *st, uint64_t lo, uint64_t hi, int *budget, int *deleted)
{
    if (lo >= hi || *budget == 0)
        return SQLITE_OK;
    sqlite3_bind_int64(st, 3, (int64_t)lo);
    sqlite3_bind_int64(st, 4, (int64_t)hi);
    sqlite3_bind_int64(st, 5, *budget > 0 ? *budget : -1);
    int src = sqlite3_step(st);
    sqlite3_reset(st);
    if (src != SQLITE_DONE)
        return src;
    int n = sqlite3_changes(sqlite3_db_handle(st));
    *deleted += n;
    if (*budget > 0)
        *budget -= n;
    return SQLITE_OK;
}

int ferry_inbox_forget(sqlite3 *db, const char *grp, const char *topic, uint64_t floor,
                       const uint64_t *keep, size_t nkeep, int max_rows)
{
    if (!db || !grp || !topic || max_rows < 0 || !ferry__keep_valid(floor, keep, nkeep))
        return FERRY_EINVALID;
    if (floor > INT64_MAX)
        floor = INT64_MAX;
    sqlite3_stmt *st = NULL;
    /* The subquery walks ferry_inbox_seq over one range: the cost is the
     * rows deleted, not the table's size. */
    int src = sqlite3_prepare_v2(db,
                                 "DELETE FROM ferry_inbox WHERE grp = ?1 AND msg_id IN ("
                                 " SELECT msg_id FROM ferry_inbox"
                                 " WHERE grp = ?1 AND topic = ?2 AND seq >= ?3 AND seq < ?4"
                                 " ORDER BY seq LIMIT ?5)",
                                 -1, &st, NULL);
    if (src != SQLITE_OK)
        return db_err(src);
    sqlite3_bind_text(st, 1, grp, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, topic, -1, SQLITE_STATIC);
    int budget = max_rows > 0 ? max_rows : -1, deleted = 0;
    uint64_t lo = 0;
    for (size_t i = 0; src == SQLITE_OK && i <= nkeep; i++) {
        uint64_t hi = i < nkeep ? keep[i] : floor;
        src = forget_range(st, lo, hi, &budget, &deleted);
        lo = hi + 1;
    }
    sqlite3_finalize(st);
    return src == SQLITE_OK ? deleted : db_err(src);
}

int ferry_inbox_purge_acked(sqlite3 *db, const char *grp, ferry_sub *s, int max_rows)
{
    if (!db || !grp || !s || max_rows < 0)
        return FERRY_EINVALID;
    uint64_t floor = 0, *keep;
    size_t n;
    int rc = ferry__sub_floor(s, &floor, &keep, &n);
    if (rc == 0)
        rc = ferry_inbox_forget(db, grp, s->topic, floor, keep, n, max_rows);
    free(keep);
    return rc;
}

int64_t ferry_inbox_window_ms(uint32_t ack_wait_ms, uint16_t max_deliveries, uint32_t max_delay_ms)
{
    if (max_deliveries == 0)
        return INT64_MAX; /* redelivered without limit: no window is safe */
    int64_t horizon = (int64_t)max_deliveries * ((int64_t)ack_wait_ms + (int64_t)max_delay_ms);
    return horizon > FERRY_INBOX_MIN_WINDOW_MS ? horizon : FERRY_INBOX_MIN_WINDOW_MS;
}

int ferry_sub_info_get(const ferry_sub *s, ferry_sub_info *out)
{
    if (!s || !out)
        return FERRY_EINVALID;
    memset(out, 0, sizeof *out);
    snprintf(out->topic, sizeof out->topic, "%s", s->topic);
    snprintf(out->group, sizeof out->group, "%s", s->group);
    out->max_in_flight = s->window;
    out->ack_wait_ms = s->ack_wait_ms;
    out->max_deliveries = s->max_deliveries;
    out->redelivery_horizon_ms = s->horizon_ms;
    return 0;
}
