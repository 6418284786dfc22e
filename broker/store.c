/*
 * store.c - the SQLite store behind ferryd: opening (schema, migrations,
 * loading), closing, counters. The rest of the store is in store_txn.c,
 * store_publish.c, store_groups.c, store_topics.c, store_ckpt.c and
 * store_util.c (see store_internal.h).
 *
 * On-disk format (PRAGMA user_version = the number of migrations run; PRAGMA
 * application_id = 0x46455259, "FERY": ferryd opens no database of another
 * program, see check_owner):
 *
 *   topics(id, name, created_ms, head_seq, first_seq, msg_count, bytes)
 *       One row per topic. head_seq is the last sequence handed out and is
 *       persisted so that sequences stay dense and are never reused, even
 *       when retention has deleted every message.
 *
 *   messages(rid INTEGER PRIMARY KEY, msg_id, key, headers, payload, ts_ms,
 *            deliver_at_ms)
 *       rid = (topic id << 40) | seq. Using the rowid as the (topic, seq)
 *       key means a message costs one B-tree insert at the right-hand edge
 *       of its topic's range, with no secondary index; reading a topic in
 *       order is a rowid range scan. Topic ids stay below 2^23 and sequences
 *       below 2^40. headers is the wire encoding (u16 count, then str16
 *       name / str16 value pairs) or NULL.
 *
 *   dedupe_log(id INTEGER PRIMARY KEY, topic_id, seq, msg_id, ts_ms)
 *       Every producer-given message id, in insertion (and so time) order:
 *       appends touch only the right-hand edge of the B-tree, and purging
 *       deletes from the left, a few thousand rows per commit. Rows leave
 *       once older than the dedupe window, or earlier when there are more
 *       than the configured maximum of remembered ids. An in-memory hash
 *       index over this table (dedupe.h) answers "seen before?" without a
 *       random B-tree write per message; it is rebuilt from the table at
 *       start. Broker-assigned ids are not entered: nobody can re-send an
 *       id before the ack told them what it was.
 *
 *   meta(name, value): reserved for broker-wide settings.
 *
 *   groups(id, topic, name, created_ms, ack_floor, ack_wait_ms,
 *          max_deliveries, origin, backoff)
 *       One row per consumer group: every sequence below ack_floor is
 *       acked; backoff is its redelivery schedule as text ("1000,5000",
 *       ms) or NULL for the broker's.
 *
 *   group_acks(group_id, seq) WITHOUT ROWID
 *       Sequences acked at or above their group's floor.
 *
 *   producers(id, hwm, updated_ms) WITHOUT ROWID
 *       Each producer's high-water mark (the outbox relay's sequence).
 *
 *   group_attempts(group_id, seq, attempts, dead_seq) WITHOUT ROWID
 *       (schema version 2) The attempts a message not yet done used up,
 *       written when one fails; a redrive not yet acked (dead_seq: the
 *       dead letter it is read from).
 *
 * In memory the store keeps each topic's counters (head, first, count,
 * bytes); they are changed during a transaction, written back to `topics`
 * before COMMIT, and restored from a saved copy if the transaction fails.
 *
 * Checkpoints (copying the WAL back into the database file, with their own
 * fsyncs) run on a checkpointer thread with its own connection, so a commit
 * never waits for one; only if the WAL outgrows WAL_HARD_FRAMES because
 * passive checkpoints cannot catch up does a commit checkpoint itself.
 *
 * Every statement is prepared once in store_open. The store is single
 * threaded by contract (see store.h).
 */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "dedupe.h"
#include "ferry_codes.h"
#include "log.h"
#include "proto.h"
#include "reserve.h"
#include "store_dead.h"
#include "store_internal.h"
#include "store_io.h"

static const char *const stmt_sql[ST__COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_BEGIN_READ] = "BEGIN DEFERRED",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    /* A topic id is never used twice, not even one of a deleted topic
     * (its rows may still be being purged): the next after every id of
     * topics and deleted_topics. */
    [ST_TOPIC_INSERT] = "INSERT INTO topics(id, name, created_ms) VALUES (1 + max(coalesce((SELECT "
                        "max(id) FROM topics), 0), coalesce((SELECT max(id) FROM "
                        "deleted_topics), 0)), ?1, ?2)",
    [ST_TOPIC_UPDATE] = "UPDATE topics SET head_seq = ?2, first_seq = ?3, msg_count = ?4, "
                        "bytes = ?5 WHERE id = ?1",
    [ST_MSG_INSERT] = "INSERT INTO messages(rid, msg_id, key, headers, payload, ts_ms, "
                      "deliver_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    [ST_DLOG_INSERT] =
        "INSERT INTO dedupe_log(topic_id, seq, msg_id, ts_ms) VALUES (?1, ?2, ?3, ?4)",
    [ST_DLOG_GET] = "SELECT topic_id, seq, msg_id FROM dedupe_log WHERE id = ?1",
    [ST_DLOG_OLDEST] = "SELECT id, topic_id, msg_id, ts_ms FROM dedupe_log ORDER BY id LIMIT ?1",
    [ST_DLOG_DELETE_UPTO] = "DELETE FROM dedupe_log WHERE id <= ?1",
    [ST_GROUP_UPSERT] = "INSERT INTO groups(id, topic, name, created_ms, ack_floor, ack_wait_ms, "
                        "max_deliveries, origin, backoff) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, "
                        "?9) ON "
                        "CONFLICT(id) DO UPDATE SET ack_floor = excluded.ack_floor, ack_wait_ms = "
                        "excluded.ack_wait_ms, max_deliveries = excluded.max_deliveries, origin = "
                        "excluded.origin, backoff = excluded.backoff",
    [ST_GROUP_FLOOR] = "UPDATE groups SET ack_floor = ?2 WHERE id = ?1",
    [ST_GACK_INSERT] = "INSERT OR IGNORE INTO group_acks(group_id, seq) VALUES (?1, ?2)",
    [ST_GACK_DELETE_BELOW] = "DELETE FROM group_acks WHERE group_id = ?1 AND seq < ?2",
    [ST_GACK_DELETE_ALL] = "DELETE FROM group_acks WHERE group_id = ?1",
    [ST_RET_SCAN] = "SELECT rid, ts_ms, length(key), headers, length(payload) FROM messages "
                    "WHERE rid >= ?1 AND rid <= ?2 ORDER BY rid LIMIT ?3",
    [ST_RET_DELETE] = "DELETE FROM messages WHERE rid >= ?1 AND rid <= ?2",
    [ST_PRODUCER_SET] = "INSERT INTO producers(id, hwm, updated_ms) VALUES (?1, ?2, ?3) "
                        "ON CONFLICT(id) DO UPDATE SET hwm = excluded.hwm, "
                        "updated_ms = excluded.updated_ms",
    [ST_TOPIC_CONFIG] = "UPDATE topics SET max_age_ms = ?2, max_count = ?3, max_bytes = ?4, "
                        "delete_acked = ?5 WHERE id = ?1",
    [ST_ATTEMPT_SET] = "INSERT INTO group_attempts(group_id, seq, attempts, dead_seq) VALUES (?1, "
                       "?2, ?3, ?4) ON CONFLICT(group_id, seq) DO UPDATE SET attempts = "
                       "excluded.attempts, dead_seq = excluded.dead_seq",
    [ST_ATTEMPT_DELETE] = "DELETE FROM group_attempts WHERE group_id = ?1 AND seq = ?2",
    [ST_ATTEMPT_DELETE_ALL] = "DELETE FROM group_attempts WHERE group_id = ?1",
    [ST_GDEAD_INSERT] =
        "INSERT OR IGNORE INTO group_dead(group_id, seq, dead_seq) VALUES (?1, ?2, ?3)",
    [ST_GDEAD_PRUNE] = "DELETE FROM group_dead WHERE dead_seq <= ?2 AND group_id IN "
                       "(SELECT id FROM groups WHERE topic = ?1)",
    [ST_MIN_FLOOR] = "SELECT min(ack_floor), count(*) FROM groups WHERE topic = ?1",
    [ST_TOPIC_DELETE] = "DELETE FROM topics WHERE id = ?1",
    [ST_DELTOPIC_INSERT] = "INSERT INTO deleted_topics(id, name, deleted_ms, messages) "
                           "VALUES (?1, ?2, ?3, ?4)",
    [ST_DELTOPIC_DONE] = "UPDATE deleted_topics SET purged_ms = ?2 WHERE id = ?1",
    [ST_PURGE_CUT] =
        "SELECT rid FROM messages WHERE rid >= ?1 AND rid <= ?2 ORDER BY rid LIMIT 1 OFFSET ?3",
    [ST_PURGE_DELETE] = "DELETE FROM messages WHERE rid >= ?1 AND rid <= ?2",
    [ST_FETCH] = "SELECT msg_id, key, headers, payload, ts_ms, deliver_at_ms FROM messages "
                 "WHERE rid = ?1",
};

/* ---- schema ----------------------------------------------------------- */

/* Numbered migrations: migrations[i] takes user_version i to i + 1. */
static const char *const migrations[] = {
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;"
    "CREATE TABLE topics ("
    "  id INTEGER PRIMARY KEY,"
    "  name TEXT NOT NULL UNIQUE,"
    "  created_ms INTEGER NOT NULL,"
    "  head_seq INTEGER NOT NULL DEFAULT 0,"
    "  first_seq INTEGER NOT NULL DEFAULT 0,"
    "  msg_count INTEGER NOT NULL DEFAULT 0,"
    "  bytes INTEGER NOT NULL DEFAULT 0,"
    "  max_age_ms INTEGER," /* retention; NULL: the broker's default */
    "  max_count INTEGER,"
    "  max_bytes INTEGER,"
    "  delete_acked INTEGER);"
    "CREATE TABLE messages ("
    "  rid INTEGER PRIMARY KEY,"
    "  msg_id TEXT NOT NULL,"
    "  key BLOB,"
    "  headers BLOB,"
    "  payload BLOB NOT NULL,"
    "  ts_ms INTEGER NOT NULL,"
    "  deliver_at_ms INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE dedupe_log (id INTEGER PRIMARY KEY, topic_id INTEGER NOT NULL,"
    "  seq INTEGER NOT NULL, msg_id TEXT NOT NULL, ts_ms INTEGER NOT NULL);"
    "CREATE VIEW messages_v AS SELECT t.name AS topic, m.rid & 1099511627775 AS seq,"
    "  m.msg_id AS msg_id, m.key AS key, m.headers AS headers, m.payload AS payload,"
    "  m.ts_ms AS ts_ms, m.deliver_at_ms AS deliver_at_ms"
    "  FROM messages m JOIN topics t ON t.id = (m.rid >> 40);"
    "CREATE TABLE groups ("
    "  id INTEGER PRIMARY KEY,"
    "  topic TEXT NOT NULL,"
    "  name TEXT NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  ack_floor INTEGER NOT NULL,"
    "  ack_wait_ms INTEGER NOT NULL,"
    "  max_deliveries INTEGER NOT NULL,"
    "  origin INTEGER NOT NULL DEFAULT 1,"
    "  backoff TEXT,"
    "  UNIQUE (topic, name));"
    "CREATE TABLE group_acks (group_id INTEGER NOT NULL, seq INTEGER NOT NULL,"
    "  PRIMARY KEY (group_id, seq)) WITHOUT ROWID;"
    "CREATE TABLE producers (id TEXT PRIMARY KEY, hwm INTEGER NOT NULL,"
    "  updated_ms INTEGER NOT NULL) WITHOUT ROWID;",
    /* 2: the attempts a message not yet done has used up, written when an
     * attempt fails (OP_ATTEMPT), deleted when it is done; and redrives not
     * yet acked (dead_seq: the dead letter they are read from). */
    "CREATE TABLE group_attempts (group_id INTEGER NOT NULL, seq INTEGER NOT NULL,"
    "  attempts INTEGER NOT NULL, dead_seq INTEGER NOT NULL DEFAULT 0,"
    "  PRIMARY KEY (group_id, seq)) WITHOUT ROWID;",
    /* 3: the messages each group dead-lettered (seq) and where the dead
     * letter is (dead_seq, in _dead.<topic>): what a redrive can still
     * bring back to the group below its ack floor (FLOOR_OK). Rows go
     * with their dead letter's retention; filled from the dead letters
     * already stored by backfill_group_dead. */
    "CREATE TABLE group_dead (group_id INTEGER NOT NULL, seq INTEGER NOT NULL,"
    "  dead_seq INTEGER NOT NULL, PRIMARY KEY (group_id, seq, dead_seq)) WITHOUT ROWID;",
    /* 4: messages_v joins on the range of a topic's rids, so that a query
     * by topic searches the primary key instead of scanning every message,
     * and shows rid (ORDER BY rid is by seq within a topic, without a
     * sort). */
    "DROP VIEW messages_v;"
    "CREATE VIEW messages_v AS SELECT t.name AS topic, m.rid & 1099511627775 AS seq,"
    "  m.msg_id AS msg_id, m.key AS key, m.headers AS headers, m.payload AS payload,"
    "  m.ts_ms AS ts_ms, m.deliver_at_ms AS deliver_at_ms, m.rid AS rid"
    "  FROM topics t JOIN messages m ON m.rid >= (t.id << 40) AND m.rid < ((t.id + 1) << 40);",
    /* 5: deleted topics. Their ids are kept for good, so that no new
     * topic takes one (message rids embed it); the messages of a deleted
     * topic are purged in steps after the deletion commits (purged_ms
     * set when none is left). */
    "CREATE TABLE deleted_topics (id INTEGER PRIMARY KEY, name TEXT NOT NULL,"
    "  deleted_ms INTEGER NOT NULL, messages INTEGER NOT NULL, purged_ms INTEGER);",
};
#define SCHEMA_VERSION ((int)(sizeof(migrations) / sizeof(migrations[0])))

static int get_int(struct store *s, const char *sql, int64_t *out)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(st, 0);
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = SQLITE_NOTFOUND;
    }
    sqlite3_finalize(st);
    return rc;
}

static int migrate(struct store *s)
{
    int64_t v = 0;
    int rc = get_int(s, "PRAGMA user_version", &v);
    if (rc != SQLITE_OK) {
        set_err(s, "read schema version");
        return rc;
    }
    if (v > SCHEMA_VERSION) {
        snprintf(s->errmsg, sizeof(s->errmsg),
                 "database schema version %lld is newer than this ferryd knows (%d)", (long long)v,
                 SCHEMA_VERSION);
        return SQLITE_ERROR;
    }
    for (int i = (int)v; i < SCHEMA_VERSION; i++) {
        char sql[64];
        snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", i + 1);
        if ((rc = sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL)) != SQLITE_OK ||
            (rc = sqlite3_exec(s->db, migrations[i], NULL, NULL, NULL)) != SQLITE_OK ||
            (i == 2 && (rc = backfill_group_dead(s->db)) != SQLITE_OK) ||
            (rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL)) != SQLITE_OK ||
            (rc = sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL)) != SQLITE_OK) {
            set_err(s, "migrate schema");
            sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
            return rc;
        }
    }
    return SQLITE_OK;
}

/* PRAGMA application_id of a database made by ferryd: "FERY". */
#define FERRY_APPLICATION_ID 1178948185 /* 0x46455259 */
#define STR_(x) #x
#define STR(x) STR_(x)

/*
 * Before ferryd changes anything in the file (even its journal mode): is it
 * ferryd's? A database with Ferry's application id is; so is an empty one
 * (new: it gets the id) and one with Ferry's tables and no id (made by a
 * ferryd before the id existed; it gets it too). Anything else is some
 * other program's database, which ferryd must not fill with its tables.
 */
static int check_owner(struct store *s)
{
    int64_t app = 0, tables = 0, ours = 0;
    int rc = get_int(s, "PRAGMA application_id", &app);
    if (rc == SQLITE_OK)
        rc = get_int(s, "SELECT count(*) FROM sqlite_schema WHERE type = 'table'", &tables);
    if (rc == SQLITE_OK)
        rc = get_int(s,
                     "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN "
                     "('topics', 'messages', 'dedupe_log', 'meta')",
                     &ours);
    if (rc != SQLITE_OK) {
        set_err(s, "read the database header");
        return rc;
    }
    if (app == FERRY_APPLICATION_ID || (app == 0 && (tables == 0 || ours == 4)))
        return SQLITE_OK;
    snprintf(s->errmsg, sizeof(s->errmsg),
             "%s is not a Ferry database (application_id 0x%08llx, %lld table(s)); refusing to "
             "add Ferry's tables to it: give --data a folder of its own",
             s->path, (unsigned long long)(uint32_t)app, (long long)tables);
    return SQLITE_ERROR;
}

/* Gives a database ferryd adopted (check_owner) Ferry's application id. */
static int mark_owner(struct store *s)
{
    int64_t app = 0;
    int rc = get_int(s, "PRAGMA application_id", &app);
    if (rc == SQLITE_OK && app != FERRY_APPLICATION_ID)
        rc = sqlite3_exec(s->db, "PRAGMA application_id = " STR(FERRY_APPLICATION_ID), NULL, NULL,
                          NULL);
    if (rc != SQLITE_OK)
        set_err(s, "mark the database as Ferry's");
    return rc;
}

/* A topic's row is written at most once a second (topics_flush), so after
 * a crash it may lag: the messages stored after its head are counted back
 * in. They are at most a second's worth. */
static int recover_topic(struct store *s, struct topic *t)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->db,
                                "SELECT rid, length(key), headers, length(payload) FROM messages "
                                "WHERE rid > ?1 AND rid <= ?2 ORDER BY rid",
                                -1, &st, NULL);
    if (rc != SQLITE_OK) {
        set_err(s, "recover topic");
        return rc;
    }
    sqlite3_bind_int64(st, 1, (int64_t)((uint64_t)t->id << 40 | t->c.head));
    sqlite3_bind_int64(st, 2, (int64_t)((uint64_t)t->id << 40 | (uint64_t)SEQ_MAX));
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        uint64_t seq = (uint64_t)sqlite3_column_int64(st, 0) & (uint64_t)SEQ_MAX;
        const uint8_t *h = sqlite3_column_blob(st, 2);
        size_t hl = (size_t)sqlite3_column_bytes(st, 2);
        /* proto_msg_size: key + header names and values + payload; the
         * stored headers add a u16 count and two u16 lengths a header. */
        uint64_t hb = h && hl >= 2 ? hl - 2 - 4 * (uint64_t)proto_rd16(h) : 0;
        t->c.bytes +=
            (uint64_t)sqlite3_column_int64(st, 1) + hb + (uint64_t)sqlite3_column_int64(st, 3);
        t->c.count++;
        if (!t->c.first)
            t->c.first = seq;
        t->c.head = seq;
    }
    sqlite3_finalize(st);
    t->persisted = t->c;
    t->persisted.head = 0; /* differs: the next flush rewrites the row */
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* The deleted topics whose messages are not all purged yet. */
static int load_purges(struct store *s)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(
        s->db, "SELECT id FROM deleted_topics WHERE purged_ms IS NULL ORDER BY id", -1, &st, NULL);
    if (rc != SQLITE_OK) {
        set_err(s, "load deleted topics");
        return rc;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (s->npurge == s->cap_purge) {
            size_t cap = s->cap_purge ? 2 * s->cap_purge : 8;
            int64_t *p = realloc(s->purge_ids, cap * sizeof(*p));
            if (!p) {
                sqlite3_finalize(st);
                snprintf(s->errmsg, sizeof(s->errmsg), "out of memory loading deleted topics");
                return SQLITE_NOMEM;
            }
            s->purge_ids = p;
            s->cap_purge = cap;
        }
        s->purge_ids[s->npurge++] = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int load_topics(struct store *s)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->db,
                                "SELECT id, name, created_ms, head_seq, first_seq, msg_count, "
                                "bytes, max_age_ms, max_count, max_bytes, delete_acked FROM topics",
                                -1, &st, NULL);
    if (rc != SQLITE_OK) {
        set_err(s, "load topics");
        return rc;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 1);
        size_t len = (size_t)sqlite3_column_bytes(st, 1);
        struct topic *t = topic_new(name ? name : "", len);
        if (!t || topic_map_insert(s, t) < 0) {
            topic_free(t);
            sqlite3_finalize(st);
            snprintf(s->errmsg, sizeof(s->errmsg), "out of memory loading topics");
            return SQLITE_NOMEM;
        }
        t->id = sqlite3_column_int64(st, 0);
        t->created_ms = sqlite3_column_int64(st, 2);
        t->c.head = (uint64_t)sqlite3_column_int64(st, 3);
        t->c.first = (uint64_t)sqlite3_column_int64(st, 4);
        t->c.count = (uint64_t)sqlite3_column_int64(st, 5);
        t->c.bytes = (uint64_t)sqlite3_column_int64(st, 6);
        t->own.max_age_ms = sqlite3_column_type(st, 7) == SQLITE_NULL
                                ? UINT64_MAX
                                : (uint64_t)sqlite3_column_int64(st, 7);
        t->own.max_count = sqlite3_column_type(st, 8) == SQLITE_NULL
                               ? UINT64_MAX
                               : (uint64_t)sqlite3_column_int64(st, 8);
        t->own.max_bytes = sqlite3_column_type(st, 9) == SQLITE_NULL
                               ? UINT64_MAX
                               : (uint64_t)sqlite3_column_int64(st, 9);
        t->own.delete_acked =
            sqlite3_column_type(st, 10) == SQLITE_NULL ? -1 : sqlite3_column_int(st, 10);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        set_err(s, "load topics");
        return rc;
    }
    for (struct topic *t = namemap_first(&s->topics); t; t = namemap_next(&s->topics, t))
        if ((rc = recover_topic(s, t)) != SQLITE_OK)
            return rc;
    return load_purges(s);
}

static int load_producers(struct store *s)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->db, "SELECT id, hwm FROM producers", -1, &st, NULL);
    if (rc != SQLITE_OK) {
        set_err(s, "load producers");
        return rc;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct producer *p =
            producer_get(s, sqlite3_column_text(st, 0), (size_t)sqlite3_column_bytes(st, 0));
        if (!p) {
            sqlite3_finalize(st);
            return SQLITE_NOMEM;
        }
        p->hwm = (uint64_t)sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Rebuilds the in-memory index from dedupe_log. */
static int load_dedupe(struct store *s)
{
    sqlite3_stmt *st;
    int rc =
        sqlite3_prepare_v2(s->db, "SELECT id, topic_id, msg_id FROM dedupe_log", -1, &st, NULL);
    if (rc != SQLITE_OK) {
        set_err(s, "load dedupe index");
        return rc;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        uint64_t h = dedupe_hash(&s->dd, sqlite3_column_int64(st, 1), sqlite3_column_blob(st, 2),
                                 (size_t)sqlite3_column_bytes(st, 2));
        if (dedupe_add(&s->dd, h, (uint64_t)sqlite3_column_int64(st, 0)) < 0) {
            sqlite3_finalize(st);
            snprintf(s->errmsg, sizeof(s->errmsg), "out of memory loading the dedupe index");
            return SQLITE_NOMEM;
        }
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        set_err(s, "load dedupe index");
        return rc;
    }
    return SQLITE_OK;
}

/* A store with cfg's settings and nothing opened; NULL when out of memory. */
static struct store *store_alloc(const struct store_config *cfg)
{
    struct store *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->wal_fd = -1;
    s->sync_full = cfg->sync_full;
    s->sync_interval_ms = cfg->sync_interval_ms ? cfg->sync_interval_ms : 1000;
    if (!(s->path = strdup(cfg->path))) {
        free(s);
        return NULL;
    }
    pthread_mutex_init(&s->ckpt_run_mu, NULL);
    s->dedupe_window_ms = cfg->dedupe_window_ms;
    s->retention.max_age_ms = cfg->retention_max_age_ms;
    s->retention.max_count = cfg->retention_max_count;
    s->retention.max_bytes = cfg->retention_max_bytes;
    s->retention.delete_acked = cfg->retention_delete_acked;
    s->dedupe_max_ids = cfg->dedupe_max_ids ? cfg->dedupe_max_ids : 10000000;
    s->dd_oldest_ms = INT64_MIN; /* unknown until the first purge looks */
    const char *step = getenv("FERRY_TEST_PURGE_STEP");
    if (step && atoll(step) > 0)
        s->purge_step_test = atoll(step);
    if (getrandom(&s->rng, sizeof(s->rng), 0) != sizeof(s->rng))
        s->rng = (uint64_t)clock_wall_ms() ^ (uint64_t)(uintptr_t)s;
    if (dedupe_init(&s->dd, splitmix64(&s->rng)) < 0) {
        pthread_mutex_destroy(&s->ckpt_run_mu);
        free(s->path);
        free(s);
        return NULL;
    }
    return s;
}

/* Opens the database file, refuses one ferryd did not make, and sets it up:
 * WAL (checked: group commit and crash safety assume it), synchronous FULL
 * until the schema is in place, the cache, the page cap, the disk reserve.
 * Returns 0, or -1 with err set. */
static int open_db(struct store *s, const struct store_config *cfg, char *err, size_t errlen)
{
    int rc = sqlite3_open_v2(
        cfg->path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "open %s: %s", cfg->path,
                 s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        return -1;
    }
    sqlite3_extended_result_codes(s->db, 1);
    sqlite3_busy_timeout(s->db, 5000);
    if (check_owner(s) != SQLITE_OK) {
        snprintf(err, errlen, "%s", s->errmsg);
        return -1;
    }
    char pragmas[512];
    snprintf(pragmas, sizeof(pragmas),
             "PRAGMA journal_mode = WAL;"
             "PRAGMA synchronous = %s;"
             "PRAGMA cache_size = -%d;"
             "PRAGMA temp_store = MEMORY;"
             "PRAGMA journal_size_limit = 67108864;"
             "PRAGMA foreign_keys = OFF;",
             "FULL", (cfg->cache_mb > 0 ? cfg->cache_mb : 128) * 1024);
    char *emsg = NULL;
    rc = sqlite3_exec(s->db, pragmas, NULL, NULL, &emsg);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "configure %s: %s", cfg->path, emsg ? emsg : sqlite3_errstr(rc));
        sqlite3_free(emsg);
        return -1;
    }
    if (cfg->max_db_bytes) {
        s->cap_pages = cfg->max_db_bytes / 4096 ? cfg->max_db_bytes / 4096 : 1;
        set_max_pages(s, s->cap_pages);
    }
    if (cfg->reserve_dir)
        reserve_init(&s->rsv, cfg->reserve_dir, cfg->reserve_bytes);
    sqlite3_stmt *jm;
    if (sqlite3_prepare_v2(s->db, "PRAGMA journal_mode", -1, &jm, NULL) == SQLITE_OK) {
        int wal = sqlite3_step(jm) == SQLITE_ROW &&
                  strcmp((const char *)sqlite3_column_text(jm, 0), "wal") == 0;
        sqlite3_finalize(jm);
        if (!wal) {
            snprintf(err, errlen, "%s: cannot switch the database to WAL mode", cfg->path);
            return -1;
        }
    }
    return 0;
}

/* The schema brought up to date and what the store keeps in memory loaded;
 * then the configured synchronous mode, the folder's entries made durable,
 * the persistent statements prepared. Returns 0, or -1 with err set. */
static int load_db(struct store *s, const struct store_config *cfg, char *err, size_t errlen)
{
    int rc;
    if ((rc = migrate(s)) != SQLITE_OK || (rc = mark_owner(s)) != SQLITE_OK ||
        (rc = load_topics(s)) != SQLITE_OK || (rc = load_dedupe(s)) != SQLITE_OK ||
        (rc = load_producers(s)) != SQLITE_OK) {
        if (!s->errmsg[0])
            set_err(s, "open");
        snprintf(err, errlen, "%s", s->errmsg);
        return -1;
    }
    /* The schema and the migrations were committed with synchronous=FULL
     * (a power cut must never take the schema); now the configured mode,
     * and the folder's entries for the files just created. */
    if (!cfg->sync_full && sqlite3_exec(s->db, "PRAGMA synchronous = NORMAL", NULL, NULL, NULL))
        set_err(s, "configure");
    if (fsync_dir_of(cfg->path) != 0) {
        snprintf(err, errlen, "fsync of the folder of %s: %s", cfg->path, strerror(errno));
        return -1;
    }
    for (int i = 0; i < ST__COUNT; i++) {
        rc = sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL);
        if (rc != SQLITE_OK) {
            snprintf(err, errlen, "prepare \"%s\": %s", stmt_sql[i], sqlite3_errmsg(s->db));
            return -1;
        }
    }
    return 0;
}

int store_open(const struct store_config *cfg, struct store **out, char *err, size_t errlen)
{
    store_io_init();
    struct store *s = store_alloc(cfg);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return FERRY_ENOMEM;
    }
    if (open_db(s, cfg, err, errlen) < 0 || load_db(s, cfg, err, errlen) < 0) {
        store_close(s);
        return FERRY_ESTORAGE;
    }
    if (start_checkpointer(s, cfg) != 0) {
        snprintf(err, errlen, "%s", s->errmsg);
        store_close(s);
        return FERRY_ESTORAGE;
    }
    /* The loop's read-only connection (store_seq_at_time, store_first_ts,
     * store_read_dead, store_read_floor); without it those report a storage
     * error to the request that asked. */
    if (sqlite3_open_v2(cfg->path, &s->rdb, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) ==
        SQLITE_OK)
        sqlite3_prepare_v2(s->rdb,
                           "SELECT rid, ts_ms FROM messages WHERE rid >= ?1 AND rid <= ?2 "
                           "ORDER BY rid LIMIT 1",
                           -1, &s->rd_ts, NULL);
    s->stats.topics = s->topics.count;
    *out = s;
    return 0;
}

void store_close(struct store *s)
{
    if (!s)
        return;
    if (s->db && s->st[ST_BEGIN] && step_done(s->st[ST_BEGIN]) == SQLITE_OK) {
        /* Bring every topic's row up to date before a clean exit. */
        topics_touch_lagging(s);
        int rc = topics_flush(s, 0, 1);
        if (rc == SQLITE_OK)
            rc = step_done(s->st[ST_COMMIT]);
        if (rc != SQLITE_OK && !sqlite3_get_autocommit(s->db))
            step_done(s->st[ST_ROLLBACK]);
        topics_settle(s, NULL, rc == SQLITE_OK);
    }
    stop_checkpointer(s);
    sqlite3_finalize(s->rd_ts);
    sqlite3_close(s->rdb);
    for (int i = 0; i < ST__COUNT; i++)
        sqlite3_finalize(s->st[i]);
    if (s->db) {
        /* A clean close copies the WAL into the database file and deletes
         * it; done here first, checked like every checkpoint, so that a
         * failing disk still exits with the WAL in place. */
        if (s->st[ST_BEGIN])
            checkpoint(s, s->db, SQLITE_CHECKPOINT_TRUNCATE, 1, NULL, NULL);
        sqlite3_close(s->db);
    }
    if (s->wal_fd >= 0)
        close(s->wal_fd);
    pthread_mutex_destroy(&s->ckpt_run_mu);
    free(s->path);
    for (struct topic *t = namemap_first(&s->topics); t;) {
        struct topic *next = namemap_next(&s->topics, t);
        topic_free(t);
        t = next;
    }
    namemap_free(&s->topics);
    free(s->purge_ids);
    free(s->purge_added);
    while (s->producers) {
        struct producer *p = s->producers;
        s->producers = p->next;
        free(p->id);
        free(p);
    }
    dedupe_free(&s->dd);
    free(s->dd_added);
    free(s->dd_removed);
    buf_free(&s->scratch);
    free(s);
}

void store_get_stats(const struct store *s, struct store_stats *out)
{
    *out = s->stats;
    out->topics = s->topics.count;
    out->dedupe_ids = s->dd.count;
    out->dedupe_bytes = dedupe_memory(&s->dd);
    out->io_errors = store_io_errors();
    out->reserve_held = s->rsv.held;
    out->reserve_released = s->rsv.released;
    out->purging = s->npurge;
}

const char *store_last_error(const struct store *s)
{
    return s->errmsg;
}
