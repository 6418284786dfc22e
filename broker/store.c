/*
 * store.c - the SQLite store behind ferryd.
 *
 * On-disk format (schema version 1, PRAGMA user_version = 1; PRAGMA
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
#include "store_io.h"

#define TOPIC_ID_MAX ((1LL << 23) - 1)
#define SEQ_MAX ((1LL << 40) - 1)
/* WAL frames (pages) after which the checkpointer is woken, and after
 * which a commit checkpoints by itself to bound the WAL. */
#define WAL_CKPT_FRAMES 1000
#define WAL_HARD_FRAMES 65536
/* Frames left for the committer to copy itself (see maybe_checkpoint). */
#define WAL_CKPT_TAIL 256
/* dedupe_log rows purged per commit, at least. */
#define DEDUPE_PURGE_MIN 2000

struct topic_counters {
    uint64_t head, first, count, bytes;
};

/* Retention limits; 0 means no limit. */
struct retention {
    uint64_t max_age_ms;
    uint64_t max_count;
    uint64_t max_bytes;
    int delete_acked;
};

/* A topic's own retention: each field UINT64_MAX (delete_acked -1) when
 * it follows the broker's default. */
struct topic_retention {
    uint64_t max_age_ms, max_count, max_bytes;
    int delete_acked;
};

#define RATE_SLOTS 10 /* seconds the publish rate is averaged over */

struct topic {
    int64_t id;
    struct topic_retention own, saved_own;
    uint64_t rate_count[RATE_SLOTS]; /* messages stored in second rate_sec[i] */
    int64_t rate_sec[RATE_SLOTS];
    char *name;
    size_t name_len;
    int64_t created_ms;
    struct topic_counters c;
    struct topic_counters saved;     /* valid while in_txn */
    struct topic_counters persisted; /* as the topics row holds them */
    int64_t persisted_ms;
    int written_in_txn; /* its row is written by the running transaction */
    int in_txn;         /* touched by the running transaction */
    int created_in_txn;
    struct topic *next_dirty;
    struct topic *hnext;
};

enum stmt_id {
    ST_BEGIN,
    ST_BEGIN_READ,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_TOPIC_INSERT,
    ST_TOPIC_UPDATE,
    ST_MSG_INSERT,
    ST_DLOG_INSERT,
    ST_DLOG_GET,
    ST_DLOG_OLDEST,
    ST_DLOG_DELETE_UPTO,
    ST_GROUP_UPSERT,
    ST_GROUP_FLOOR,
    ST_GACK_INSERT,
    ST_GACK_DELETE_BELOW,
    ST_GACK_DELETE_ALL,
    ST_FETCH,
    ST_RET_SCAN,
    ST_RET_DELETE,
    ST_MIN_FLOOR,
    ST_TOPIC_CONFIG,
    ST_PRODUCER_SET,
    ST_ATTEMPT_SET,
    ST_ATTEMPT_DELETE,
    ST_ATTEMPT_DELETE_ALL,
    ST__COUNT
};

static const char *const stmt_sql[ST__COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_BEGIN_READ] = "BEGIN DEFERRED",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_TOPIC_INSERT] = "INSERT INTO topics(name, created_ms) VALUES (?1, ?2)",
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
    [ST_MIN_FLOOR] = "SELECT min(ack_floor), count(*) FROM groups WHERE topic = ?1",
    [ST_FETCH] = "SELECT msg_id, key, headers, payload, ts_ms, deliver_at_ms FROM messages "
                 "WHERE rid = ?1",
};

/* A producer's high-water mark (the outbox relay's sequence): anything at
 * or below it was stored before. */
struct producer {
    char *id;
    size_t id_len;
    uint64_t hwm, saved_hwm;
    int in_txn;
    struct producer *next;
    struct producer *next_dirty;
};

struct dd_change {
    uint64_t h, log_id;
};

struct store {
    struct retention retention; /* the defaults for every topic */
    uint64_t retained_deleted;
    sqlite3 *db;
    sqlite3_stmt *st[ST__COUNT];
    uint64_t dedupe_window_ms;
    uint64_t dedupe_max_ids;
    /* The timestamp of the oldest dedupe_log row (INT64_MAX: none), so
     * that commits skip the purge query while nothing is due. */
    int64_t dd_oldest_ms, dd_oldest_before;
    struct dedupe_index dd;
    /* Index changes of the running transaction: additions are undone if it
     * fails, removals (of purged rows) are applied only if it commits. */
    struct dd_change *dd_added, *dd_removed;
    size_t n_added, cap_added, n_removed, cap_removed;

    struct topic **buckets;
    size_t nbuckets;
    size_t ntopics;
    struct topic *dirty; /* topics touched by the running transaction */

    /* The checkpointer: its own connection and thread. */
    sqlite3 *ckpt_db;
    /* A read-only connection for the loop thread's rare lookups. */
    sqlite3 *rdb;
    sqlite3_stmt *rd_ts;
    pthread_t ckpt_thread;
    int ckpt_started;
    pthread_mutex_t ckpt_mu;
    pthread_cond_t ckpt_cv;
    int ckpt_wanted, ckpt_stop;
    /* Held while a checkpoint runs, by whichever thread runs it: a
     * checkpoint that fails exits the process holding it, so that no
     * other checkpoint can complete (and restart the WAL) meanwhile. */
    pthread_mutex_t ckpt_run_mu;
    /* --sync normal: the checkpointer fsyncs the WAL every sync_interval_ms
     * when a commit wrote to it since (wal_dirty, set by the committer). */
    int sync_full;
    uint64_t sync_interval_ms;
    int wal_dirty;
    int wal_fd;
    char *path;     /* the database file */
    int wal_frames; /* frames in the WAL after the last commit */
    int ckpt_mark;  /* wal_frames when the checkpointer was last woken */
    /* Written by the checkpointer thread, read by the committer. */
    int ckpt_busy;       /* a background checkpoint is running */
    int ckpt_backfilled; /* frames the last one copied into the database */

    struct producer *producers; /* few: one per outbox database */
    struct producer *dirty_producers;

    /* Disk space for acks on a full disk, and the page cap (0: none). */
    struct reserve rsv;
    uint64_t cap_pages;

    uint64_t rng;
    struct buf scratch;
    struct store_stats stats;
    uint64_t stored_before, dups_before; /* stats at BEGIN, restored on failure */
    char errmsg[256];
};

static void topic_count_rate(struct topic *t, int64_t now_ms);
static struct producer *producer_get(struct store *s, const uint8_t *id, size_t len);
static void producer_touch(struct store *s, struct producer *p);
static struct retention effective_retention(const struct store *s, const struct topic *t);

/* ---- helpers ---------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t hash_name(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* A UUIDv7-style id: 48 bits of Unix ms, then random bits, as 36 chars. */
static void make_id(struct store *s, int64_t now_ms, char out[37])
{
    uint8_t b[16];
    uint64_t r1 = splitmix64(&s->rng), r2 = splitmix64(&s->rng);
    uint64_t ms = (uint64_t)now_ms;
    for (int i = 0; i < 6; i++)
        b[i] = (uint8_t)(ms >> (40 - 8 * i));
    for (int i = 0; i < 8; i++)
        b[6 + i] = (uint8_t)(r1 >> (8 * i));
    b[14] = (uint8_t)r2;
    b[15] = (uint8_t)(r2 >> 8);
    b[6] = (uint8_t)(0x70 | (b[6] & 0x0f));
    b[8] = (uint8_t)(0x80 | (b[8] & 0x3f));
    static const char hex[] = "0123456789abcdef";
    int o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = 0;
}

/* The reason of the last failure on s->db, as the client and the log see
 * it. A page that cannot be read is a "disk read error" whatever SQLite's
 * words for it ("database disk image is malformed"). */
static void set_err(struct store *s, const char *what)
{
    int rc = sqlite3_extended_errcode(s->db);
    if (store_io_is_read_error(rc))
        snprintf(s->errmsg, sizeof(s->errmsg), "%s: disk read error (a page of %s cannot be read)",
                 what, s->path);
    else
        snprintf(s->errmsg, sizeof(s->errmsg), "%s: %s", what, sqlite3_errmsg(s->db));
}

static int map_sqlite_error(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_FULL:
        return FERRY_ESTORAGE_FULL;
    default:
        return FERRY_ESTORAGE;
    }
}

/* Steps a statement that returns no row, then resets it. */
static int step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* ---- topic map -------------------------------------------------------- */

static struct topic *topic_find(struct store *s, const uint8_t *name, size_t len)
{
    if (!s->nbuckets)
        return NULL;
    struct topic *t = s->buckets[hash_name(name, len) & (s->nbuckets - 1)];
    for (; t; t = t->hnext)
        if (t->name_len == len && memcmp(t->name, name, len) == 0)
            return t;
    return NULL;
}

static int topic_map_insert(struct store *s, struct topic *t)
{
    if (s->ntopics + 1 > s->nbuckets) {
        size_t n = s->nbuckets ? s->nbuckets * 2 : 64;
        struct topic **nb = calloc(n, sizeof(*nb));
        if (!nb)
            return -1;
        for (size_t i = 0; i < s->nbuckets; i++) {
            struct topic *x = s->buckets[i];
            while (x) {
                struct topic *next = x->hnext;
                size_t h = hash_name((const uint8_t *)x->name, x->name_len) & (n - 1);
                x->hnext = nb[h];
                nb[h] = x;
                x = next;
            }
        }
        free(s->buckets);
        s->buckets = nb;
        s->nbuckets = n;
    }
    size_t h = hash_name((const uint8_t *)t->name, t->name_len) & (s->nbuckets - 1);
    t->hnext = s->buckets[h];
    s->buckets[h] = t;
    s->ntopics++;
    return 0;
}

static void topic_map_remove(struct store *s, struct topic *t)
{
    size_t h = hash_name((const uint8_t *)t->name, t->name_len) & (s->nbuckets - 1);
    struct topic **pp = &s->buckets[h];
    while (*pp && *pp != t)
        pp = &(*pp)->hnext;
    if (*pp) {
        *pp = t->hnext;
        s->ntopics--;
    }
}

static struct topic *topic_new(const char *name, size_t len)
{
    struct topic *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->name = malloc(len + 1);
    if (!t->name) {
        free(t);
        return NULL;
    }
    memcpy(t->name, name, len);
    t->name[len] = 0;
    t->name_len = len;
    t->own = (struct topic_retention){UINT64_MAX, UINT64_MAX, UINT64_MAX, -1};
    return t;
}

static void topic_free(struct topic *t)
{
    if (t) {
        free(t->name);
        free(t);
    }
}

/* Marks t as touched by this transaction, saving its counters once. */
static void topic_touch(struct store *s, struct topic *t)
{
    if (t->in_txn)
        return;
    t->in_txn = 1;
    t->saved = t->c;
    t->saved_own = t->own;
    t->next_dirty = s->dirty;
    s->dirty = t;
}

/* Finds or creates (inside the open transaction) the topic. Returns NULL
 * and sets *err on failure. */
static struct topic *topic_get(struct store *s, const uint8_t *name, size_t len, int64_t now_ms,
                               int *err)
{
    struct topic *t = topic_find(s, name, len);
    if (t) {
        topic_touch(s, t);
        return t;
    }
    t = topic_new((const char *)name, len);
    if (!t) {
        *err = FERRY_EINTERNAL;
        return NULL;
    }
    sqlite3_stmt *st = s->st[ST_TOPIC_INSERT];
    sqlite3_bind_text(st, 1, t->name, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now_ms);
    int rc = step_done(st);
    if (rc != SQLITE_OK) {
        set_err(s, "create topic");
        topic_free(t);
        *err = map_sqlite_error(rc);
        return NULL;
    }
    t->id = sqlite3_last_insert_rowid(s->db);
    if (t->id > TOPIC_ID_MAX) {
        snprintf(s->errmsg, sizeof(s->errmsg), "topic id space exhausted");
        topic_free(t);
        *err = FERRY_ESTORAGE;
        return NULL;
    }
    t->created_ms = now_ms;
    t->created_in_txn = 1;
    if (topic_map_insert(s, t) < 0) {
        topic_free(t);
        *err = FERRY_EINTERNAL;
        return NULL;
    }
    topic_touch(s, t);
    return t;
}

/* Writes every touched topic's counters back (inside the transaction). */
/*
 * Writes touched topics' counters back (inside the transaction), but a
 * topic's row at most once a second unless forced: under load that saves a
 * page write per commit. What the row lags behind is recovered at open
 * from the messages after its head (see recover_topic), so nothing is lost.
 */
#define TOPIC_PERSIST_MS 1000
static int topics_flush(struct store *s, int64_t now_ms, int force)
{
    sqlite3_stmt *st = s->st[ST_TOPIC_UPDATE];
    for (struct topic *t = s->dirty; t; t = t->next_dirty) {
        if (!t->created_in_txn && memcmp(&t->c, &t->persisted, sizeof(t->c)) == 0)
            continue;
        if (!t->created_in_txn && !force && now_ms - t->persisted_ms < TOPIC_PERSIST_MS)
            continue;
        sqlite3_bind_int64(st, 1, t->id);
        sqlite3_bind_int64(st, 2, (int64_t)t->c.head);
        sqlite3_bind_int64(st, 3, (int64_t)t->c.first);
        sqlite3_bind_int64(st, 4, (int64_t)t->c.count);
        sqlite3_bind_int64(st, 5, (int64_t)t->c.bytes);
        int rc = step_done(st);
        if (rc != SQLITE_OK) {
            set_err(s, "update topic");
            return rc;
        }
        t->written_in_txn = 1;
    }
    return SQLITE_OK;
}

/* Every topic whose row lags: touched so the next flush writes it. */
static void topics_touch_lagging(struct store *s)
{
    for (size_t i = 0; i < s->nbuckets; i++)
        for (struct topic *t = s->buckets[i]; t; t = t->hnext)
            if (memcmp(&t->c, &t->persisted, sizeof(t->c)) != 0)
                topic_touch(s, t);
}

/* Ends the transaction's bookkeeping: keep (ok) or restore the counters. */
static void topics_settle(struct store *s, struct batch *b, int ok)
{
    struct topic *t = s->dirty;
    while (t) {
        struct topic *next = t->next_dirty;
        if (ok && t->written_in_txn) {
            t->persisted = t->c;
            t->persisted_ms = b ? b->now_ms : 0;
        }
        t->written_in_txn = 0;
        if (ok && b &&
            (t->created_in_txn || t->c.head != t->saved.head || t->c.first != t->saved.first)) {
            /* Tell the loop. */
            struct topic_update *u = vec_push(&b->topic_updates, sizeof(*u));
            if (u) {
                *u = (struct topic_update){
                    t->id, t->c.head, t->c.first, {b->topic_names.len, t->name_len}};
                if (buf_append(&b->topic_names, t->name, t->name_len) < 0)
                    b->topic_updates.len--;
            }
        }
        if (!ok) {
            if (t->created_in_txn) {
                topic_map_remove(s, t);
                topic_free(t);
                t = next;
                continue;
            }
            t->c = t->saved;
            t->own = t->saved_own;
        }
        t->in_txn = 0;
        t->created_in_txn = 0;
        t->next_dirty = NULL;
        t = next;
    }
    s->dirty = NULL;
}

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
    for (size_t i = 0; i < s->nbuckets; i++)
        for (struct topic *t = s->buckets[i]; t; t = t->hnext)
            if ((rc = recover_topic(s, t)) != SQLITE_OK)
                return rc;
    return SQLITE_OK;
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

static int on_wal_commit(void *arg, sqlite3 *db, const char *name, int frames)
{
    (void)db;
    (void)name;
    ((struct store *)arg)->wal_frames = frames;
    return SQLITE_OK;
}

/*
 * Every checkpoint goes through here. A checkpoint copies WAL frames into
 * the database file and fsyncs it; if any of that fails, SQLite may already
 * count frames as copied whose pages never reached the disk (store_io.h),
 * and the process exits with ckpt_run_mu held, before any other checkpoint
 * can complete and let the WAL start over. With wait 0 the checkpoint is
 * skipped (SQLITE_BUSY) while another runs, as SQLite itself would.
 */
static int checkpoint(struct store *s, sqlite3 *db, int mode, int wait, int *nlog, int *nckpt)
{
    if (wait)
        pthread_mutex_lock(&s->ckpt_run_mu);
    else if (pthread_mutex_trylock(&s->ckpt_run_mu) != 0)
        return SQLITE_BUSY;
    int rc = sqlite3_wal_checkpoint_v2(db, NULL, mode, nlog, nckpt);
    if (store_io_is_fatal(rc))
        store_io_fatal(s->path, "a checkpoint", rc, sqlite3_system_errno(db));
    pthread_mutex_unlock(&s->ckpt_run_mu);
    return rc;
}

/* Makes the data folder's entries (the database and WAL files) durable. */
static int fsync_dir_of(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    size_t n = slash ? (size_t)(slash - path) : 1;
    if (n == 0)
        n = 1; /* "/ferry.db" */
    if (n >= sizeof(dir))
        return -1;
    memcpy(dir, slash ? path : ".", n);
    dir[n] = 0;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

/*
 * --sync normal: SQLite fsyncs the WAL only when it checkpoints, which at a
 * low rate may be never. The checkpointer fsyncs it every sync_interval_ms
 * when commits wrote to it since, so that a power loss loses at most the
 * last interval of acknowledged work. fsync on a second descriptor flushes
 * the same file. A failure is fatal like a checkpoint's: the WAL pages
 * Linux dropped hold committed frames that a later checkpoint would copy
 * from a disk that never got them.
 */
static void sync_wal(struct store *s)
{
    if (!__atomic_exchange_n(&s->wal_dirty, 0, __ATOMIC_ACQ_REL))
        return;
    char wal[4200];
    snprintf(wal, sizeof(wal), "%s-wal", s->path);
    if (s->wal_fd < 0) {
        s->wal_fd = open(wal, O_RDONLY | O_CLOEXEC);
        if (s->wal_fd < 0) {
            log_warn("cannot open %s to fsync it: %s", wal, strerror(errno));
            return;
        }
        /* The WAL's directory entry, too: SQLite syncs it only at the WAL's
         * first fsync of its own, which here may come much later. */
        if (fsync_dir_of(s->path) != 0) {
            store_io_count();
            store_io_fatal(wal, "the periodic WAL fsync (the folder's entry)",
                           SQLITE_IOERR_DIR_FSYNC, errno);
        }
    }
    if (fdatasync(s->wal_fd) != 0) {
        store_io_count();
        store_io_fatal(wal, "the periodic WAL fsync", SQLITE_IOERR_FSYNC, errno);
    }
}

static void *checkpointer(void *arg)
{
    struct store *s = arg;
    uint64_t interval = s->sync_full ? 0 : s->sync_interval_ms;
    pthread_mutex_lock(&s->ckpt_mu);
    for (;;) {
        while (!s->ckpt_wanted && !s->ckpt_stop) {
            if (!interval) {
                pthread_cond_wait(&s->ckpt_cv, &s->ckpt_mu);
                continue;
            }
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_sec += (time_t)(interval / 1000);
            until.tv_nsec += (long)(interval % 1000) * 1000000L;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            if (pthread_cond_timedwait(&s->ckpt_cv, &s->ckpt_mu, &until) == ETIMEDOUT) {
                pthread_mutex_unlock(&s->ckpt_mu);
                sync_wal(s);
                pthread_mutex_lock(&s->ckpt_mu);
            }
        }
        if (s->ckpt_stop)
            break;
        s->ckpt_wanted = 0;
        pthread_mutex_unlock(&s->ckpt_mu);
        /* PASSIVE never blocks the writer; frames it cannot copy yet are
         * copied by the next round. */
        int nlog = 0, nckpt = 0;
        __atomic_store_n(&s->ckpt_busy, 1, __ATOMIC_RELEASE);
        if (checkpoint(s, s->ckpt_db, SQLITE_CHECKPOINT_PASSIVE, 1, &nlog, &nckpt) == SQLITE_OK)
            __atomic_store_n(&s->ckpt_backfilled, nckpt, __ATOMIC_RELEASE);
        __atomic_store_n(&s->ckpt_busy, 0, __ATOMIC_RELEASE);
        pthread_mutex_lock(&s->ckpt_mu);
    }
    pthread_mutex_unlock(&s->ckpt_mu);
    if (interval)
        sync_wal(s); /* what the last commits wrote */
    return NULL;
}

/* Starts the checkpointer thread, which every checkpoint but the committer's
 * own catch-up runs on (SQLite's automatic checkpoints are off). */
static int start_checkpointer(struct store *s, const struct store_config *cfg)
{
    if (sqlite3_open_v2(cfg->path, &s->ckpt_db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK)
        goto fail;
    sqlite3_extended_result_codes(s->ckpt_db, 1);
    if (sqlite3_exec(s->ckpt_db,
                     cfg->sync_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL",
                     NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    pthread_mutex_init(&s->ckpt_mu, NULL);
    /* The periodic WAL fsync waits on the monotonic clock. */
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->ckpt_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&s->ckpt_thread, NULL, checkpointer, s) != 0) {
        pthread_mutex_destroy(&s->ckpt_mu);
        pthread_cond_destroy(&s->ckpt_cv);
        goto fail;
    }
    s->ckpt_started = 1;
    sqlite3_wal_autocheckpoint(s->db, 0);
    sqlite3_wal_hook(s->db, on_wal_commit, s);
    return 0;
fail:
    snprintf(s->errmsg, sizeof(s->errmsg), "cannot start the checkpointer: %s",
             s->ckpt_db ? sqlite3_errmsg(s->ckpt_db) : "out of memory");
    sqlite3_close(s->ckpt_db);
    s->ckpt_db = NULL;
    return -1;
}

static void stop_checkpointer(struct store *s)
{
    if (!s->ckpt_started)
        return;
    pthread_mutex_lock(&s->ckpt_mu);
    s->ckpt_stop = 1;
    pthread_cond_signal(&s->ckpt_cv);
    pthread_mutex_unlock(&s->ckpt_mu);
    pthread_join(s->ckpt_thread, NULL);
    pthread_mutex_destroy(&s->ckpt_mu);
    pthread_cond_destroy(&s->ckpt_cv);
    sqlite3_close(s->ckpt_db);
    s->ckpt_db = NULL;
    s->ckpt_started = 0;
}

/*
 * After a commit. The checkpointer thread copies the bulk of the WAL into
 * the database without delaying commits, but while commits keep appending
 * it can never copy the very last frames, and SQLite only starts the WAL
 * over from its beginning once every frame is copied. A WAL that never
 * restarts grows, and appending to a growing file syncs slower than
 * rewriting one in place. So once the thread has copied all but a few
 * frames, the committer copies the rest itself (a few pages and the
 * database's fsync, once every ~4 MiB of WAL), and the next commit
 * restarts the WAL.
 */
static void maybe_checkpoint(struct store *s)
{
    if (!s->sync_full)
        __atomic_store_n(&s->wal_dirty, 1, __ATOMIC_RELEASE);
    if (!s->ckpt_started || s->wal_frames < WAL_CKPT_FRAMES)
        return;
    int busy = __atomic_load_n(&s->ckpt_busy, __ATOMIC_ACQUIRE);
    int done = __atomic_load_n(&s->ckpt_backfilled, __ATOMIC_ACQUIRE);
    if (!busy && done > 0 && done <= s->wal_frames && s->wal_frames - done <= WAL_CKPT_TAIL) {
        checkpoint(s, s->db, SQLITE_CHECKPOINT_PASSIVE, 0, NULL, NULL);
        __atomic_store_n(&s->ckpt_backfilled, 0, __ATOMIC_RELEASE);
        s->ckpt_mark = 0;
        return;
    }
    if (s->wal_frames >= WAL_HARD_FRAMES) {
        checkpoint(s, s->db, SQLITE_CHECKPOINT_PASSIVE, 0, NULL, NULL);
        return;
    }
    if (busy || s->wal_frames - s->ckpt_mark < WAL_CKPT_TAIL)
        return;
    s->ckpt_mark = s->wal_frames;
    pthread_mutex_lock(&s->ckpt_mu);
    s->ckpt_wanted = 1;
    pthread_cond_signal(&s->ckpt_cv);
    pthread_mutex_unlock(&s->ckpt_mu);
}

/* On a full disk the WAL must not grow into the space kept for acks: past
 * FULL_WAL_FRAMES it is copied back and restarted, so that the next
 * commits reuse the blocks its file already has. A checkpoint that cannot
 * finish at once (a reader, the checkpointer thread) is tried again after
 * the next commit. */
#define FULL_WAL_FRAMES 64

static void shrink_wal(struct store *s)
{
    if (s->wal_frames < FULL_WAL_FRAMES)
        return;
    sqlite3_busy_timeout(s->db, 100);
    int rc = checkpoint(s, s->db, SQLITE_CHECKPOINT_RESTART, 0, NULL, NULL);
    sqlite3_busy_timeout(s->db, 5000);
    if (rc == SQLITE_OK) {
        s->wal_frames = 0;
        s->ckpt_mark = 0;
        __atomic_store_n(&s->ckpt_backfilled, 0, __ATOMIC_RELEASE);
    }
}

/* SQLite keeps max_page_count at least the current size. */
static void set_max_pages(struct store *s, uint64_t pages)
{
    char sql[96];
    snprintf(sql, sizeof(sql), "PRAGMA max_page_count = %llu", (unsigned long long)pages);
    sqlite3_exec(s->db, sql, NULL, NULL, NULL);
}

int store_open(const struct store_config *cfg, struct store **out, char *err, size_t errlen)
{
    struct store *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return FERRY_ENOMEM;
    }
    store_io_init();
    s->wal_fd = -1;
    s->sync_full = cfg->sync_full;
    s->sync_interval_ms = cfg->sync_interval_ms ? cfg->sync_interval_ms : 1000;
    if (!(s->path = strdup(cfg->path))) {
        free(s);
        snprintf(err, errlen, "out of memory");
        return FERRY_ENOMEM;
    }
    pthread_mutex_init(&s->ckpt_run_mu, NULL);
    s->dedupe_window_ms = cfg->dedupe_window_ms;
    s->retention.max_age_ms = cfg->retention_max_age_ms;
    s->retention.max_count = cfg->retention_max_count;
    s->retention.max_bytes = cfg->retention_max_bytes;
    s->retention.delete_acked = cfg->retention_delete_acked;
    s->dedupe_max_ids = cfg->dedupe_max_ids ? cfg->dedupe_max_ids : 10000000;
    s->dd_oldest_ms = INT64_MIN; /* unknown until the first purge looks */
    if (getrandom(&s->rng, sizeof(s->rng), 0) != sizeof(s->rng))
        s->rng = (uint64_t)clock_wall_ms() ^ (uint64_t)(uintptr_t)s;
    if (dedupe_init(&s->dd, splitmix64(&s->rng)) < 0) {
        pthread_mutex_destroy(&s->ckpt_run_mu);
        free(s->path);
        free(s);
        snprintf(err, errlen, "out of memory");
        return FERRY_ENOMEM;
    }

    int rc = sqlite3_open_v2(
        cfg->path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "open %s: %s", cfg->path,
                 s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        store_close(s);
        return FERRY_ESTORAGE;
    }
    sqlite3_extended_result_codes(s->db, 1);
    sqlite3_busy_timeout(s->db, 5000);
    if (check_owner(s) != SQLITE_OK) {
        snprintf(err, errlen, "%s", s->errmsg);
        store_close(s);
        return FERRY_ESTORAGE;
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
        store_close(s);
        return FERRY_ESTORAGE;
    }
    if (cfg->max_db_bytes) {
        s->cap_pages = cfg->max_db_bytes / 4096 ? cfg->max_db_bytes / 4096 : 1;
        set_max_pages(s, s->cap_pages);
    }
    if (cfg->reserve_dir)
        reserve_init(&s->rsv, cfg->reserve_dir, cfg->reserve_bytes);
    /* WAL must really be on: group commit and crash safety assume it. */
    sqlite3_stmt *jm;
    if (sqlite3_prepare_v2(s->db, "PRAGMA journal_mode", -1, &jm, NULL) == SQLITE_OK) {
        int wal = sqlite3_step(jm) == SQLITE_ROW &&
                  strcmp((const char *)sqlite3_column_text(jm, 0), "wal") == 0;
        sqlite3_finalize(jm);
        if (!wal) {
            snprintf(err, errlen, "%s: cannot switch the database to WAL mode", cfg->path);
            store_close(s);
            return FERRY_ESTORAGE;
        }
    }

    if ((rc = migrate(s)) != SQLITE_OK || (rc = mark_owner(s)) != SQLITE_OK ||
        (rc = load_topics(s)) != SQLITE_OK || (rc = load_dedupe(s)) != SQLITE_OK ||
        (rc = load_producers(s)) != SQLITE_OK) {
        if (!s->errmsg[0])
            set_err(s, "open");
        snprintf(err, errlen, "%s", s->errmsg);
        store_close(s);
        return FERRY_ESTORAGE;
    }
    /* The schema and the migrations were committed with synchronous=FULL
     * (a power cut must never take the schema); now the configured mode,
     * and the folder's entries for the files just created. */
    if (!cfg->sync_full && sqlite3_exec(s->db, "PRAGMA synchronous = NORMAL", NULL, NULL, NULL))
        set_err(s, "configure");
    if (fsync_dir_of(cfg->path) != 0) {
        snprintf(err, errlen, "fsync of the folder of %s: %s", cfg->path, strerror(errno));
        store_close(s);
        return FERRY_ESTORAGE;
    }
    for (int i = 0; i < ST__COUNT; i++) {
        rc = sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL);
        if (rc != SQLITE_OK) {
            snprintf(err, errlen, "prepare \"%s\": %s", stmt_sql[i], sqlite3_errmsg(s->db));
            store_close(s);
            return FERRY_ESTORAGE;
        }
    }
    if (start_checkpointer(s, cfg) != 0) {
        snprintf(err, errlen, "%s", s->errmsg);
        store_close(s);
        return FERRY_ESTORAGE;
    }
    if (sqlite3_open_v2(cfg->path, &s->rdb, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) ==
        SQLITE_OK)
        sqlite3_prepare_v2(s->rdb,
                           "SELECT rid, ts_ms FROM messages WHERE rid >= ?1 AND rid <= ?2 "
                           "ORDER BY rid LIMIT 1",
                           -1, &s->rd_ts, NULL);
    s->stats.topics = s->ntopics;
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
    for (size_t i = 0; i < s->nbuckets; i++) {
        struct topic *t = s->buckets[i];
        while (t) {
            struct topic *next = t->hnext;
            topic_free(t);
            t = next;
        }
    }
    free(s->buckets);
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
    out->topics = s->ntopics;
    out->dedupe_ids = s->dd.count;
    out->dedupe_bytes = dedupe_memory(&s->dd);
    out->io_errors = store_io_errors();
}

const char *store_last_error(const struct store *s)
{
    return s->errmsg;
}

/* ---- dedupe ----------------------------------------------------------- */

static int dd_note(struct dd_change **arr, size_t *n, size_t *cap, uint64_t h, uint64_t log_id)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 1024;
        struct dd_change *p = realloc(*arr, nc * sizeof(*p));
        if (!p)
            return -1;
        *arr = p;
        *cap = nc;
    }
    (*arr)[(*n)++] = (struct dd_change){h, log_id};
    return 0;
}

/*
 * Inside the transaction: deletes the oldest dedupe_log rows that are past
 * the window, or beyond the maximum number of remembered ids, at most
 * `limit` of them. Their index entries are removed when the commit succeeds.
 */
static int dedupe_purge(struct store *s, int64_t now_ms, uint64_t batch_msgs)
{
    int64_t limit = (int64_t)batch_msgs * 2;
    if (limit < DEDUPE_PURGE_MIN)
        limit = DEDUPE_PURGE_MIN;
    uint64_t live = s->dd.count;
    int64_t cutoff = now_ms - (int64_t)s->dedupe_window_ms;
    if (s->dd_oldest_ms >= cutoff && live <= s->dedupe_max_ids)
        return SQLITE_OK;
    int64_t stop_ts = INT64_MIN; /* unknown: the limit ran out first */
    int64_t seen = 0;
    sqlite3_stmt *st = s->st[ST_DLOG_OLDEST];
    sqlite3_bind_int64(st, 1, limit);
    int64_t last = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t ts = sqlite3_column_int64(st, 3);
        seen++;
        if (ts >= cutoff && live <= s->dedupe_max_ids) {
            stop_ts = ts;
            break;
        }
        last = sqlite3_column_int64(st, 0);
        uint64_t h = dedupe_hash(&s->dd, sqlite3_column_int64(st, 1), sqlite3_column_blob(st, 2),
                                 (size_t)sqlite3_column_bytes(st, 2));
        if (dd_note(&s->dd_removed, &s->n_removed, &s->cap_removed, h, (uint64_t)last) < 0) {
            sqlite3_reset(st);
            return SQLITE_NOMEM;
        }
        if (ts >= cutoff)
            s->stats.dedupe_evicted++;
        live--;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        set_err(s, "purge dedupe");
        return rc;
    }
    if (rc == SQLITE_DONE && seen < limit)
        stop_ts = INT64_MAX; /* the log is empty now */
    s->dd_oldest_ms = stop_ts;
    if (!last)
        return SQLITE_OK;
    st = s->st[ST_DLOG_DELETE_UPTO];
    sqlite3_bind_int64(st, 1, last);
    if ((rc = step_done(st)) != SQLITE_OK) {
        set_err(s, "purge dedupe");
        return rc;
    }
    return SQLITE_OK;
}

/* Finishes the transaction's index bookkeeping. */
static void dedupe_settle(struct store *s, int ok)
{
    if (ok) {
        for (size_t i = 0; i < s->n_removed; i++)
            s->stats.dedupe_purged +=
                (uint64_t)dedupe_remove(&s->dd, s->dd_removed[i].h, s->dd_removed[i].log_id);
    } else {
        for (size_t i = 0; i < s->n_added; i++)
            dedupe_remove(&s->dd, s->dd_added[i].h, s->dd_added[i].log_id);
    }
    s->n_added = s->n_removed = 0;
}

/* Looks (topic, id) up: 1 and *seq when stored, 0 when not, or a negated
 * SQLite code. Every hash candidate is checked against its log row. */
static int dedupe_lookup(struct store *s, uint64_t h, int64_t topic_id, const uint8_t *id,
                         size_t len, uint64_t *seq)
{
    size_t pos = 0;
    uint64_t log_id;
    sqlite3_stmt *st = s->st[ST_DLOG_GET];
    while (dedupe_next(&s->dd, h, &pos, &log_id)) {
        sqlite3_bind_int64(st, 1, (int64_t)log_id);
        int rc = sqlite3_step(st);
        int found = 0;
        if (rc == SQLITE_ROW) {
            found = sqlite3_column_int64(st, 0) == topic_id &&
                    (size_t)sqlite3_column_bytes(st, 2) == len &&
                    memcmp(sqlite3_column_blob(st, 2), id, len) == 0;
            if (found)
                *seq = (uint64_t)sqlite3_column_int64(st, 1);
        } else if (rc != SQLITE_DONE) {
            set_err(s, "dedupe lookup");
            sqlite3_reset(st);
            return -rc;
        }
        sqlite3_reset(st);
        if (found)
            return 1;
    }
    return 0;
}

/* ---- publish ---------------------------------------------------------- */

/* Stores one message (or recognises it as a duplicate) and, given res,
 * writes its outcome there. Returns an SQLite code. */
static int publish_one(struct store *s, const struct proto_msg *m, int64_t now_ms, int *ferr,
                       struct publish_result *res, struct producer *pr)
{
    struct topic *t = topic_get(s, m->topic.ptr, m->topic.len, now_ms, ferr);
    if (!t)
        return SQLITE_ERROR;
    uint64_t seq = 0;
    int rc;

    uint64_t h = 0;
    /* At or below its producer's high-water mark: stored before, however
     * long ago. The original sequence is known while the id is remembered
     * (else 0). */
    int below_hwm = pr && m->producer_seq && m->producer_seq <= pr->hwm;
    if (m->id.len || below_hwm) {
        int found = 0;
        if (m->id.len) {
            h = dedupe_hash(&s->dd, t->id, m->id.ptr, m->id.len);
            found = dedupe_lookup(s, h, t->id, m->id.ptr, m->id.len, &seq);
            if (found < 0)
                return -found;
        }
        if (found || below_hwm) {
            s->stats.duplicates++;
            if (res) {
                res->seq = seq;
                res->duplicate = 1;
            }
            return SQLITE_OK;
        }
    }

    if (t->c.head >= (uint64_t)SEQ_MAX) {
        snprintf(s->errmsg, sizeof(s->errmsg), "topic %s: sequence space exhausted", t->name);
        *ferr = FERRY_ESTORAGE;
        return SQLITE_ERROR;
    }
    seq = t->c.head + 1;
    char gen_id[OP_GEN_ID_BYTES + 1];
    const uint8_t *id = m->id.ptr;
    size_t id_len = m->id.len;
    if (!id_len) {
        make_id(s, now_ms, gen_id);
        id = (const uint8_t *)gen_id;
        id_len = OP_GEN_ID_BYTES;
    }

    sqlite3_stmt *st = s->st[ST_MSG_INSERT];
    sqlite3_bind_int64(st, 1, (int64_t)((uint64_t)t->id << 40 | seq));
    sqlite3_bind_text(st, 2, (const char *)id, (int)id_len, SQLITE_STATIC);
    if (m->key.len)
        sqlite3_bind_blob(st, 3, m->key.ptr, (int)m->key.len, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 3);
    if (m->header_count) {
        s->scratch.len = 0;
        uint8_t cnt[2];
        proto_wr16(cnt, m->header_count);
        if (buf_append(&s->scratch, cnt, 2) < 0 ||
            buf_append(&s->scratch, m->headers.ptr, m->headers.len) < 0) {
            sqlite3_reset(st);
            *ferr = FERRY_EINTERNAL;
            return SQLITE_NOMEM;
        }
        sqlite3_bind_blob(st, 4, s->scratch.data, (int)s->scratch.len, SQLITE_STATIC);
    } else {
        sqlite3_bind_null(st, 4);
    }
    sqlite3_bind_blob(st, 5, m->payload.len ? (const void *)m->payload.ptr : (const void *)"",
                      (int)m->payload.len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, now_ms);
    sqlite3_bind_int64(st, 7, (int64_t)m->deliver_at_ms);
    if ((rc = step_done(st)) != SQLITE_OK) {
        set_err(s, "insert message");
        return rc;
    }
    if (m->id.len) {
        st = s->st[ST_DLOG_INSERT];
        sqlite3_bind_int64(st, 1, t->id);
        sqlite3_bind_int64(st, 2, (int64_t)seq);
        sqlite3_bind_text(st, 3, (const char *)m->id.ptr, (int)m->id.len, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, now_ms);
        if ((rc = step_done(st)) != SQLITE_OK) {
            set_err(s, "insert dedupe record");
            return rc;
        }
        uint64_t log_id = (uint64_t)sqlite3_last_insert_rowid(s->db);
        if (s->dd_oldest_ms == INT64_MAX)
            s->dd_oldest_ms = now_ms;
        if (dedupe_add(&s->dd, h, log_id) < 0 ||
            dd_note(&s->dd_added, &s->n_added, &s->cap_added, h, log_id) < 0) {
            *ferr = FERRY_EINTERNAL;
            return SQLITE_NOMEM;
        }
    }
    if (pr && m->producer_seq > pr->hwm) {
        producer_touch(s, pr);
        pr->hwm = m->producer_seq;
    }
    t->c.head = seq;
    if (!t->c.first)
        t->c.first = seq;
    t->c.count++;
    t->c.bytes += proto_msg_size(m);
    topic_count_rate(t, now_ms);
    s->stats.messages_stored++;

    if (res) {
        res->seq = seq;
        res->duplicate = 0;
        res->generated = !m->id.len;
        if (res->generated)
            memcpy(res->id, gen_id, OP_GEN_ID_BYTES);
    }
    return SQLITE_OK;
}

static struct producer *producer_get(struct store *s, const uint8_t *id, size_t len)
{
    for (struct producer *p = s->producers; p; p = p->next)
        if (p->id_len == len && memcmp(p->id, id, len) == 0)
            return p;
    struct producer *p = calloc(1, sizeof(*p));
    if (!p || !(p->id = malloc(len + 1))) {
        free(p);
        return NULL;
    }
    memcpy(p->id, id, len);
    p->id[len] = 0;
    p->id_len = len;
    p->next = s->producers;
    s->producers = p;
    return p;
}

static void producer_touch(struct store *s, struct producer *p)
{
    if (p->in_txn)
        return;
    p->in_txn = 1;
    p->saved_hwm = p->hwm;
    p->next_dirty = s->dirty_producers;
    s->dirty_producers = p;
}

/* Inside the transaction: the touched producers' marks. */
static int producers_flush(struct store *s, int64_t now_ms)
{
    sqlite3_stmt *st = s->st[ST_PRODUCER_SET];
    for (struct producer *p = s->dirty_producers; p; p = p->next_dirty) {
        sqlite3_bind_text(st, 1, p->id, (int)p->id_len, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, (int64_t)p->hwm);
        sqlite3_bind_int64(st, 3, now_ms);
        int rc = step_done(st);
        if (rc != SQLITE_OK) {
            set_err(s, "producer mark");
            return rc;
        }
    }
    return SQLITE_OK;
}

static void producers_settle(struct store *s, int ok)
{
    struct producer *p = s->dirty_producers;
    while (p) {
        struct producer *next = p->next_dirty;
        if (!ok)
            p->hwm = p->saved_hwm;
        p->in_txn = 0;
        p->next_dirty = NULL;
        p = next;
    }
    s->dirty_producers = NULL;
}

/* Stores an OP_PUBLISH's messages; their outcomes go to b->results. */
static int publish_op(struct store *s, struct batch *b, struct op *op, int64_t now_ms, int *ferr)
{
    struct op_publish *pw = &op->u.publish;
    pw->results = b->results.len;
    struct proto_publish pub;
    batch_publish_of(b, op, &pub);
    struct producer *pr = NULL;
    if (pub.has_producer && !(pr = producer_get(s, pub.producer.ptr, pub.producer.len))) {
        *ferr = FERRY_EINTERNAL;
        return SQLITE_NOMEM;
    }
    struct proto_msg_iter it;
    struct proto_msg m;
    proto_msg_iter_init(&it, &pub);
    for (uint16_t i = 0; i < pw->count && proto_msg_next(&it, &m); i++) {
        struct publish_result *res = vec_push(&b->results, sizeof(*res));
        if (!res) {
            *ferr = FERRY_EINTERNAL;
            return SQLITE_NOMEM;
        }
        int rc = publish_one(s, &m, now_ms, ferr, res, pr);
        if (rc != SQLITE_OK)
            return rc;
    }
    if (b->results.len - pw->results != pw->count) {
        *ferr = FERRY_EINTERNAL;
        return SQLITE_INTERNAL;
    }
    return SQLITE_OK;
}

/* ---- topics listing --------------------------------------------------- */

static int cmp_topic(const void *a, const void *b)
{
    const struct topic *x = *(const struct topic *const *)a;
    const struct topic *y = *(const struct topic *const *)b;
    return strcmp(x->name, y->name);
}

/* Messages stored per second over the last RATE_SLOTS seconds. */
static uint64_t topic_rate(const struct topic *t, int64_t now_ms)
{
    int64_t sec = now_ms / 1000;
    uint64_t sum = 0;
    for (int i = 0; i < RATE_SLOTS; i++)
        if (t->rate_sec[i] > sec - RATE_SLOTS && t->rate_sec[i] <= sec)
            sum += t->rate_count[i];
    return sum / RATE_SLOTS;
}

static void topic_count_rate(struct topic *t, int64_t now_ms)
{
    int64_t sec = now_ms / 1000;
    int i = (int)(sec % RATE_SLOTS);
    if (t->rate_sec[i] != sec) {
        t->rate_sec[i] = sec;
        t->rate_count[i] = 0;
    }
    t->rate_count[i]++;
}

static int topics_op(struct store *s, struct batch *b, struct op *op, int64_t now_ms)
{
    struct topic **all = malloc((s->ntopics ? s->ntopics : 1) * sizeof(*all));
    if (!all)
        return FERRY_EINTERNAL;
    size_t n = 0;
    for (size_t i = 0; i < s->nbuckets; i++)
        for (struct topic *t = s->buckets[i]; t; t = t->hnext)
            all[n++] = t;
    qsort(all, n, sizeof(*all), cmp_topic);
    if (n > PROTO_MAX_TOPICS)
        n = PROTO_MAX_TOPICS;
    size_t need = PROTO_HEADER_BYTES + 4 + n * (2 + 2 + PROTO_MAX_TOPIC + 9 * 8 + 1);
    if (buf_reserve(&b->out, need) < 0) {
        free(all);
        return FERRY_EINTERNAL;
    }
    struct proto_writer w;
    proto_writer_init(&w, b->out.data + b->out.len, b->out.cap - b->out.len);
    size_t start = proto_topics_ok_begin(&w, op->request_id);
    for (size_t i = 0; i < n; i++) {
        struct proto_topic_info ti = {
            .name = {(const uint8_t *)all[i]->name, all[i]->name_len},
            .head_seq = all[i]->c.head,
            .first_seq = all[i]->c.count ? all[i]->c.first : 0,
            .message_count = all[i]->c.count,
            .bytes = all[i]->c.bytes,
            .created_ms = (uint64_t)all[i]->created_ms,
            .has_config = 1,
        };
        struct retention r = effective_retention(s, all[i]);
        ti.max_age_ms = r.max_age_ms;
        ti.max_count = r.max_count;
        ti.max_bytes = r.max_bytes;
        ti.delete_acked = (uint8_t)(r.delete_acked ? 1 : 0);
        ti.publish_rate = topic_rate(all[i], now_ms);
        proto_topics_ok_add(&w, &ti);
    }
    free(all);
    if (proto_topics_ok_end(&w, start, (uint32_t)n) < 0)
        return FERRY_EINTERNAL;
    op->out_off = b->out.len;
    op->out_len = w.len;
    b->out.len += w.len;
    return 0;
}

/* ---- consumer groups -------------------------------------------------- */

/* Creates the group or moves it (a seek): either way no ack above the
 * floor is kept. Its backoff list is stored as text, "1000,5000". */
static int group_save_op(struct store *s, struct batch *b, struct op *op, int64_t now_ms)
{
    const struct op_group_save *sw = &op->u.save;
    const uint8_t *topic = batch_bytes(b, sw->topic), *name = batch_bytes(b, sw->name);
    /* A group creates its topic (PROTOCOL.md §9.1), which TOPICS then
     * lists like any other. */
    int err = 0;
    if (!topic_get(s, topic, sw->topic.len, now_ms, &err))
        return err == FERRY_EINTERNAL ? SQLITE_NOMEM : SQLITE_ERROR;
    sqlite3_stmt *st = s->st[ST_GROUP_UPSERT];
    sqlite3_bind_int64(st, 1, sw->group_id);
    sqlite3_bind_text(st, 2, (const char *)topic, (int)sw->topic.len, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, (const char *)name, (int)sw->name.len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, now_ms);
    sqlite3_bind_int64(st, 5, (int64_t)sw->floor);
    sqlite3_bind_int64(st, 6, sw->ack_wait_ms);
    sqlite3_bind_int64(st, 7, sw->max_deliveries);
    sqlite3_bind_int64(st, 8, (int64_t)sw->origin);
    const uint32_t *ms = batch_u32s(b, sw->backoff_ms);
    char backoff[PROTO_MAX_BACKOFF * 12] = "";
    size_t bl = 0;
    for (uint32_t i = 0; i < sw->backoff_ms.n && i < PROTO_MAX_BACKOFF; i++)
        bl += (size_t)snprintf(backoff + bl, sizeof(backoff) - bl, "%s%u", i ? "," : "", ms[i]);
    if (bl)
        sqlite3_bind_text(st, 9, backoff, (int)bl, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, 9);
    int rc = step_done(st);
    if (rc != SQLITE_OK) {
        set_err(s, "save group");
        return rc;
    }
    st = s->st[ST_GACK_DELETE_ALL];
    sqlite3_bind_int64(st, 1, sw->group_id);
    if ((rc = step_done(st)) == SQLITE_OK) {
        st = s->st[ST_ATTEMPT_DELETE_ALL];
        sqlite3_bind_int64(st, 1, sw->group_id);
        rc = step_done(st);
    }
    if (rc != SQLITE_OK)
        set_err(s, "save group");
    return rc;
}

/* Records the attempts a message has used up (after one failed) and, for
 * a redrive, the dead letter it is read from; with keep 0 forgets them
 * (the message is done). */
static int attempt_op(struct store *s, const struct op *op)
{
    const struct op_attempt *aw = &op->u.attempt;
    sqlite3_stmt *st = s->st[aw->keep ? ST_ATTEMPT_SET : ST_ATTEMPT_DELETE];
    sqlite3_bind_int64(st, 1, aw->group_id);
    sqlite3_bind_int64(st, 2, (int64_t)aw->seq);
    if (aw->keep) {
        sqlite3_bind_int64(st, 3, aw->attempts);
        sqlite3_bind_int64(st, 4, (int64_t)aw->dead_seq);
    }
    int rc = step_done(st);
    if (rc != SQLITE_OK)
        set_err(s, "record attempts");
    return rc;
}

/* A group's new floor, and the sequences acked above it. */
static int group_ack_op(struct store *s, const struct batch *b, const struct op *op)
{
    const struct op_group_ack *aw = &op->u.ack;
    int64_t gid = aw->group_id;
    int64_t floor = (int64_t)aw->floor;
    const uint64_t *acked = batch_u64s(b, aw->acked);
    uint32_t n = aw->acked.n;
    sqlite3_stmt *st = s->st[ST_GROUP_FLOOR];
    sqlite3_bind_int64(st, 1, gid);
    sqlite3_bind_int64(st, 2, floor);
    int rc = step_done(st);
    if (rc == SQLITE_OK) {
        st = s->st[ST_GACK_DELETE_BELOW];
        sqlite3_bind_int64(st, 1, gid);
        sqlite3_bind_int64(st, 2, floor);
        rc = step_done(st);
    }
    st = s->st[ST_GACK_INSERT];
    for (uint32_t i = 0; rc == SQLITE_OK && i < n; i++) {
        sqlite3_bind_int64(st, 1, gid);
        sqlite3_bind_int64(st, 2, (int64_t)acked[i]);
        rc = step_done(st);
    }
    if (rc != SQLITE_OK)
        set_err(s, "record acks");
    return rc;
}

/* Appends a message read for delivery: its bytes to b->out, its record to
 * b->fetched. Returns 0 or -1 (out of memory). */
static int fetched_add(struct batch *b, const struct proto_deliver *d, uint64_t deliver_at_ms)
{
    if (buf_reserve(&b->out, d->id.len + d->key.len + d->headers.len + d->payload.len) < 0)
        return -1;
    struct fetched_msg *fm = vec_push(&b->fetched, sizeof(*fm));
    if (!fm)
        return -1;
    fm->seq = d->seq;
    fm->ts_ms = d->ts_ms;
    fm->deliver_at_ms = deliver_at_ms;
    fm->header_count = d->header_count;
    const struct proto_slice *from[4] = {&d->id, &d->key, &d->headers, &d->payload};
    struct op_bytes *to[4] = {&fm->id, &fm->key, &fm->headers, &fm->payload};
    for (int i = 0; i < 4; i++) {
        to[i]->off = b->out.len;
        to[i]->len = from[i]->len;
        buf_append(&b->out, from[i]->ptr, from[i]->len); /* reserved above */
    }
    return 0;
}

/* Reads an OP_FETCH's messages, in request order, skipping those no longer
 * stored. A read that fails fails this op alone (op->status; see
 * fetch_all); only running out of memory fails the commit. */
static int fetch_op(struct store *s, struct batch *b, struct op *op, int *ferr)
{
    struct op_fetch *fw = &op->u.fetch;
    uint64_t topic_id = (uint64_t)fw->topic_id;
    const uint64_t *seqs = batch_u64s(b, fw->seqs);
    sqlite3_stmt *st = s->st[ST_FETCH];
    size_t out_mark = b->out.len;
    fw->results = b->fetched.len;
    for (uint32_t i = 0; i < fw->seqs.n; i++) {
        uint64_t seq = seqs[i];
        sqlite3_bind_int64(st, 1, (int64_t)(topic_id << 40 | seq));
        int rc = sqlite3_step(st);
        if (rc == SQLITE_DONE) {
            sqlite3_reset(st);
            continue;
        }
        if (rc != SQLITE_ROW) {
            sqlite3_reset(st);
            set_err(s, "fetch message");
            b->out.len = out_mark;
            b->fetched.len = fw->results;
            op->status = FERRY_ESTORAGE;
            log_error("topic id %llu: %s while fetching seq %llu; the group reads it again later",
                      (unsigned long long)topic_id, s->errmsg, (unsigned long long)seq);
            return SQLITE_OK;
        }
        const uint8_t *hdr = sqlite3_column_blob(st, 2);
        size_t hlen = (size_t)sqlite3_column_bytes(st, 2);
        struct proto_deliver d = {
            .seq = seq,
            .ts_ms = (uint64_t)sqlite3_column_int64(st, 4),
            .id = {sqlite3_column_text(st, 0), (size_t)sqlite3_column_bytes(st, 0)},
            .key = {sqlite3_column_blob(st, 1), (size_t)sqlite3_column_bytes(st, 1)},
            .header_count = hdr && hlen >= 2 ? proto_rd16(hdr) : 0,
            .headers = {hdr && hlen >= 2 ? hdr + 2 : NULL, hdr && hlen >= 2 ? hlen - 2 : 0},
            .payload = {sqlite3_column_blob(st, 3), (size_t)sqlite3_column_bytes(st, 3)},
        };
        int bad = fetched_add(b, &d, (uint64_t)sqlite3_column_int64(st, 5)) < 0;
        sqlite3_reset(st);
        if (bad) {
            *ferr = FERRY_EINTERNAL;
            return SQLITE_NOMEM;
        }
    }
    fw->nresults = b->fetched.len - fw->results;
    return SQLITE_OK;
}

static int fetch_redrive(struct store *s, struct batch *b, struct op *op, int *ferr);

/*
 * Every OP_FETCH of the batch, in one read transaction of its own before
 * the write transaction. Fetches read committed messages only, so they need
 * nothing of the batch's writes; kept apart, a read that fails (a bad
 * sector: SQLite rolls back the whole transaction on any I/O error) costs
 * the fetches and not the publishes and acks of other connections.
 */
static void fetch_all(struct store *s, struct batch *b)
{
    size_t i = 0;
    while (i < b->nops && b->ops[i].kind != OP_FETCH)
        i++;
    if (i == b->nops)
        return;
    int in_read = step_done(s->st[ST_BEGIN_READ]) == SQLITE_OK;
    int ferr = 0;
    for (; i < b->nops; i++) {
        struct op *op = &b->ops[i];
        if (op->kind != OP_FETCH || op->status)
            continue;
        if ((op->u.fetch.dead_seqs.n ? fetch_redrive(s, b, op, &ferr)
                                     : fetch_op(s, b, op, &ferr)) != SQLITE_OK)
            op->status = ferr ? ferr : FERRY_EINTERNAL;
    }
    if (in_read && !sqlite3_get_autocommit(s->db) && step_done(s->st[ST_COMMIT]) != SQLITE_OK)
        step_done(s->st[ST_ROLLBACK]);
}

/* Appends one header pair (str16 name, str16 value) to the scratch buffer. */
static int put_header(struct buf *h, const char *name, const void *value, size_t len)
{
    uint8_t l[2];
    size_t nl = strlen(name);
    proto_wr16(l, (uint16_t)nl);
    if (buf_append(h, l, 2) < 0 || buf_append(h, name, nl) < 0)
        return -1;
    proto_wr16(l, (uint16_t)len);
    return buf_append(h, l, 2) < 0 || buf_append(h, value, len) < 0 ? -1 : 0;
}

/* The broker's own headers of a dead letter (the last of each name: a
 * message dead-lettered twice carries the later ones last). */
struct dead_info {
    struct proto_slice seq, group, id;
};

static void dead_info_of(const uint8_t *hdr, size_t hlen, struct dead_info *out)
{
    memset(out, 0, sizeof(*out));
    if (!hdr || hlen < 2)
        return;
    struct proto_msg m = {.header_count = proto_rd16(hdr), .headers = {hdr + 2, hlen - 2}};
    struct proto_header_iter hi;
    struct proto_header h;
    proto_header_iter_init(&hi, &m);
    while (proto_header_next(&hi, &h)) {
        if (h.name.len == 14 && memcmp(h.name.ptr, "ferry-dead-seq", 14) == 0)
            out->seq = h.value;
        else if (h.name.len == 16 && memcmp(h.name.ptr, "ferry-dead-group", 16) == 0)
            out->group = h.value;
        else if (h.name.len == 13 && memcmp(h.name.ptr, "ferry-dead-id", 13) == 0)
            out->id = h.value;
    }
}

static uint64_t slice_u64(struct proto_slice v)
{
    uint64_t n = 0;
    for (size_t i = 0; i < v.len && i < 20; i++) {
        if (v.ptr[i] < '0' || v.ptr[i] > '9')
            return 0;
        n = n * 10 + (uint64_t)(v.ptr[i] - '0');
    }
    return n;
}

int store_read_dead(struct store *s, int64_t dead_topic_id, uint64_t dead_seq, uint64_t *seq,
                    char *group, size_t group_cap, size_t *group_len)
{
    sqlite3_stmt *st;
    if (!s->rdb || sqlite3_prepare_v2(s->rdb, "SELECT headers FROM messages WHERE rid = ?1", -1,
                                      &st, NULL) != SQLITE_OK)
        return FERRY_ESTORAGE;
    sqlite3_bind_int64(st, 1, (int64_t)((uint64_t)dead_topic_id << 40 | dead_seq));
    int rc = sqlite3_step(st);
    int ret = FERRY_EINVALID;
    if (rc == SQLITE_ROW) {
        struct dead_info di;
        dead_info_of(sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0), &di);
        *seq = slice_u64(di.seq);
        if (*seq && di.group.len && di.group.len <= group_cap && di.id.len) {
            memcpy(group, di.group.ptr, di.group.len);
            *group_len = di.group.len;
            ret = 0;
        }
    } else if (rc != SQLITE_DONE) {
        ret = FERRY_ESTORAGE;
    }
    sqlite3_finalize(st);
    return ret;
}

/*
 * A redrive's fetch (dead_seqs given): its topic is the dead-letter topic,
 * seqs the original sequences. Each dead letter still stored whose
 * ferry-dead-seq is the original sequence becomes a DELIVER of the
 * original message: its sequence, its id (ferry-dead-id), key, payload,
 * its headers without the ferry-dead-* ones, plus
 * `ferry-redriven: _dead.<topic>/<dead seq>`; ts_ms is the dead letter's.
 */
static int fetch_redrive(struct store *s, struct batch *b, struct op *op, int *ferr)
{
    struct op_fetch *fw = &op->u.fetch;
    uint64_t topic_id = (uint64_t)fw->topic_id;
    const uint64_t *seqs = batch_u64s(b, fw->seqs), *dead_seqs = batch_u64s(b, fw->dead_seqs);
    uint32_t n = fw->seqs.n;
    sqlite3_stmt *st = s->st[ST_FETCH];
    struct topic *dt = NULL;
    for (size_t i = 0; i < s->nbuckets && !dt; i++)
        for (struct topic *t = s->buckets[i]; t; t = t->hnext)
            if (t->id == (int64_t)topic_id) {
                dt = t;
                break;
            }
    fw->results = b->fetched.len;
    for (uint32_t i = 0; i < n && dt; i++) {
        uint64_t seq = seqs[i];
        uint64_t dseq = dead_seqs[i];
        sqlite3_bind_int64(st, 1, (int64_t)(topic_id << 40 | dseq));
        if (sqlite3_step(st) != SQLITE_ROW) {
            sqlite3_reset(st);
            continue;
        }
        const uint8_t *hdr = sqlite3_column_blob(st, 2);
        size_t hlen = (size_t)sqlite3_column_bytes(st, 2);
        struct dead_info di;
        dead_info_of(hdr, hlen, &di);
        if (slice_u64(di.seq) != seq || !di.id.len) {
            sqlite3_reset(st);
            continue;
        }
        struct buf h = {0};
        uint16_t count = 0;
        int bad = 0;
        if (hdr && hlen >= 2) {
            struct proto_msg om = {.header_count = proto_rd16(hdr), .headers = {hdr + 2, hlen - 2}};
            struct proto_header_iter hi;
            struct proto_header hd;
            proto_header_iter_init(&hi, &om);
            while (proto_header_next(&hi, &hd)) {
                if (hd.name.len >= 11 && memcmp(hd.name.ptr, "ferry-dead-", 11) == 0)
                    continue;
                if (hd.name.len == 14 && memcmp(hd.name.ptr, "ferry-redriven", 14) == 0)
                    continue;
                uint8_t l[2];
                proto_wr16(l, (uint16_t)hd.name.len);
                bad |= buf_append(&h, l, 2) < 0 || buf_append(&h, hd.name.ptr, hd.name.len) < 0;
                proto_wr16(l, (uint16_t)hd.value.len);
                bad |= buf_append(&h, l, 2) < 0 || buf_append(&h, hd.value.ptr, hd.value.len) < 0;
                count++;
            }
        }
        char from[PROTO_MAX_TOPIC + 32];
        int fl = snprintf(from, sizeof(from), "%.*s/%llu", (int)dt->name_len, dt->name,
                          (unsigned long long)dseq);
        bad |= put_header(&h, "ferry-redriven", from, (size_t)fl) < 0;
        count++;
        struct proto_deliver d = {
            .seq = seq,
            .ts_ms = (uint64_t)sqlite3_column_int64(st, 4),
            .id = di.id,
            .key = {sqlite3_column_blob(st, 1), (size_t)sqlite3_column_bytes(st, 1)},
            .header_count = count,
            .headers = {h.data, h.len},
            .payload = {sqlite3_column_blob(st, 3), (size_t)sqlite3_column_bytes(st, 3)},
        };
        bad = bad || fetched_add(b, &d, 0) < 0;
        buf_free(&h);
        sqlite3_reset(st);
        if (bad) {
            *ferr = FERRY_EINTERNAL;
            return SQLITE_NOMEM;
        }
    }
    fw->nresults = b->fetched.len - fw->results;
    return SQLITE_OK;
}

/*
 * Copies the message to the topic "_dead.<topic>" with headers naming
 * where it came from, and records it as acked for the group (like
 * OP_GROUP_ACK with one seq).
 */
static int dead_letter_op(struct store *s, struct batch *b, struct op *op, int64_t now_ms,
                          int *ferr)
{
    const struct op_dead_letter *dw = &op->u.dead;
    uint64_t topic_id = (uint64_t)dw->topic_id, seq = dw->seq;
    uint32_t attempts = dw->attempts;
    size_t tl = dw->topic.len, gl = dw->group_name.len, rl = dw->reason.len;
    const uint8_t *tname = batch_bytes(b, dw->topic);
    const uint8_t *gname = batch_bytes(b, dw->group_name);
    const uint8_t *reason = batch_bytes(b, dw->reason);

    sqlite3_stmt *st = s->st[ST_FETCH];
    sqlite3_bind_int64(st, 1, (int64_t)(topic_id << 40 | seq));
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && (size_t)tl + 6 <= PROTO_MAX_TOPIC) {
        /* Copy what the new message needs before the statement is reset. */
        struct buf h = {0};
        char dname[PROTO_MAX_TOPIC + 1];
        char num[24];
        memcpy(dname, "_dead.", 6);
        memcpy(dname + 6, tname, tl);
        const uint8_t *oh = sqlite3_column_blob(st, 2);
        size_t ohl = (size_t)sqlite3_column_bytes(st, 2);
        uint16_t count = oh && ohl >= 2 ? proto_rd16(oh) : 0;
        int bad = 0;
        if (count > PROTO_MAX_HEADERS - 6) {
            /* Keep room for ours: drop the original's last headers. */
            struct proto_msg om = {.header_count = count, .headers = {oh + 2, ohl - 2}};
            struct proto_header_iter hi;
            struct proto_header hd;
            proto_header_iter_init(&hi, &om);
            for (uint16_t i = 0; i < PROTO_MAX_HEADERS - 6 && proto_header_next(&hi, &hd); i++) {
                uint8_t l[2];
                proto_wr16(l, (uint16_t)hd.name.len);
                bad |= buf_append(&h, l, 2) < 0 || buf_append(&h, hd.name.ptr, hd.name.len) < 0;
                proto_wr16(l, (uint16_t)hd.value.len);
                bad |= buf_append(&h, l, 2) < 0 || buf_append(&h, hd.value.ptr, hd.value.len) < 0;
            }
            count = PROTO_MAX_HEADERS - 6;
        } else if (count) {
            bad |= buf_append(&h, oh + 2, ohl - 2) < 0;
        }
        bad |= put_header(&h, "ferry-dead-topic", tname, tl) < 0;
        snprintf(num, sizeof(num), "%llu", (unsigned long long)seq);
        bad |= put_header(&h, "ferry-dead-seq", num, strlen(num)) < 0;
        bad |= put_header(&h, "ferry-dead-group", gname, gl) < 0;
        snprintf(num, sizeof(num), "%u", attempts);
        bad |= put_header(&h, "ferry-dead-attempts", num, strlen(num)) < 0;
        bad |= put_header(&h, "ferry-dead-reason", reason, rl) < 0;
        bad |= put_header(&h, "ferry-dead-id", sqlite3_column_text(st, 0),
                          (size_t)sqlite3_column_bytes(st, 0)) < 0;
        struct buf key = {0}, payload = {0};
        bad |=
            buf_append(&key, sqlite3_column_blob(st, 1), (size_t)sqlite3_column_bytes(st, 1)) < 0;
        bad |= buf_append(&payload, sqlite3_column_blob(st, 3),
                          (size_t)sqlite3_column_bytes(st, 3)) < 0;
        sqlite3_reset(st);
        if (!bad) {
            struct proto_msg m = {
                .topic = {(const uint8_t *)dname, (size_t)tl + 6},
                .key = {key.data, key.len},
                .header_count = (uint16_t)(count + 6),
                .headers = {h.data, h.len},
                .payload = {payload.data, payload.len},
            };
            rc = publish_one(s, &m, now_ms, ferr, NULL, NULL);
        } else {
            *ferr = FERRY_EINTERNAL;
            rc = SQLITE_NOMEM;
        }
        buf_free(&h);
        buf_free(&key);
        buf_free(&payload);
        if (rc != SQLITE_OK)
            return rc;
    } else {
        sqlite3_reset(st);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
            set_err(s, "dead-letter");
            return rc;
        }
    }
    /* The group's ack of it. */
    int64_t gid = dw->group_id, floor = (int64_t)dw->floor;
    st = s->st[ST_GROUP_FLOOR];
    sqlite3_bind_int64(st, 1, gid);
    sqlite3_bind_int64(st, 2, floor);
    rc = step_done(st);
    if (rc == SQLITE_OK) {
        st = s->st[ST_ATTEMPT_DELETE];
        sqlite3_bind_int64(st, 1, gid);
        sqlite3_bind_int64(st, 2, (int64_t)seq);
        rc = step_done(st);
    }
    if (rc == SQLITE_OK && (int64_t)seq >= floor) {
        st = s->st[ST_GACK_INSERT];
        sqlite3_bind_int64(st, 1, gid);
        sqlite3_bind_int64(st, 2, (int64_t)seq);
        rc = step_done(st);
    }
    if (rc != SQLITE_OK)
        set_err(s, "dead-letter");
    return rc;
}

int store_load_groups(struct store *s, const struct store_load_cbs *cb)
{
    sqlite3_stmt *st;
    int rc;
    /* The in-memory counters, not the rows: a row may lag behind the
     * messages after a crash (recover_topic brought the counters up). */
    for (size_t i = 0; i < s->nbuckets; i++)
        for (struct topic *t = s->buckets[i]; t; t = t->hnext)
            if (cb->topic(cb->arg, t->id, t->name, t->name_len, t->c.head, t->c.first) < 0)
                return FERRY_ENOMEM;
    rc = sqlite3_prepare_v2(
        s->db,
        "SELECT id, topic, name, ack_floor, ack_wait_ms, max_deliveries, origin, backoff "
        "FROM groups",
        -1, &st, NULL);
    if (rc != SQLITE_OK)
        return FERRY_ESTORAGE;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        /* The backoff column: "1000,5000,30000". */
        uint32_t backoff[PROTO_MAX_BACKOFF];
        uint8_t nb = 0;
        for (const char *p = (const char *)sqlite3_column_text(st, 7);
             p && *p && nb < PROTO_MAX_BACKOFF;) {
            char *end;
            unsigned long v = strtoul(p, &end, 10);
            if (end == p)
                break;
            backoff[nb++] = (uint32_t)v;
            p = *end == ',' ? end + 1 : end;
        }
        if (cb->group(cb->arg, sqlite3_column_int64(st, 0),
                      (const char *)sqlite3_column_text(st, 1), (size_t)sqlite3_column_bytes(st, 1),
                      (const char *)sqlite3_column_text(st, 2), (size_t)sqlite3_column_bytes(st, 2),
                      (uint64_t)sqlite3_column_int64(st, 3), (uint32_t)sqlite3_column_int64(st, 4),
                      (uint16_t)sqlite3_column_int64(st, 5), (uint64_t)sqlite3_column_int64(st, 6),
                      backoff, nb) < 0)
            break;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return FERRY_ESTORAGE;
    rc = sqlite3_prepare_v2(s->db, "SELECT group_id, seq FROM group_acks", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return FERRY_ESTORAGE;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        if (cb->ack(cb->arg, sqlite3_column_int64(st, 0), (uint64_t)sqlite3_column_int64(st, 1)) <
            0)
            break;
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return FERRY_ESTORAGE;
    /* Rows left below a floor (the group moved on in a commit that did not
     * reach them) are dropped; the rest, in sequence order per group. */
    if (sqlite3_exec(s->db,
                     "DELETE FROM group_attempts WHERE NOT EXISTS (SELECT 1 FROM groups g "
                     "WHERE g.id = group_id AND (g.ack_floor <= seq OR dead_seq != 0))",
                     NULL, NULL, NULL) != SQLITE_OK)
        return FERRY_ESTORAGE;
    rc = sqlite3_prepare_v2(s->db,
                            "SELECT group_id, seq, attempts, dead_seq FROM group_attempts "
                            "ORDER BY group_id, seq",
                            -1, &st, NULL);
    if (rc != SQLITE_OK)
        return FERRY_ESTORAGE;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        if (cb->attempts(
                cb->arg, sqlite3_column_int64(st, 0), (uint64_t)sqlite3_column_int64(st, 1),
                (uint32_t)sqlite3_column_int64(st, 2), (uint64_t)sqlite3_column_int64(st, 3)) < 0)
            break;
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : FERRY_ESTORAGE;
}

/* On the loop thread, with the store's read-only connection: the first
 * sequence at or after time_ms (binary search over the topic's rowid
 * range; stored timestamps only go up within a topic unless the clock was
 * set back). Returns head + 1 when every message is older. */
uint64_t store_seq_at_time(struct store *s, int64_t topic_id, int64_t time_ms, uint64_t head)
{
    if (!s->rdb || !s->rd_ts)
        return 1;
    uint64_t lo = 1, hi = head + 1;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        sqlite3_bind_int64(s->rd_ts, 1, (int64_t)((uint64_t)topic_id << 40 | mid));
        sqlite3_bind_int64(s->rd_ts, 2, (int64_t)((uint64_t)topic_id << 40 | head));
        int64_t ts = INT64_MAX, rid = 0;
        if (sqlite3_step(s->rd_ts) == SQLITE_ROW) {
            rid = sqlite3_column_int64(s->rd_ts, 0);
            ts = sqlite3_column_int64(s->rd_ts, 1);
        }
        sqlite3_reset(s->rd_ts);
        if (!rid) {
            hi = mid; /* nothing stored from mid on */
            continue;
        }
        if (ts >= time_ms)
            hi = mid;
        else
            lo = ((uint64_t)rid & SEQ_MAX) + 1;
    }
    return lo;
}

int64_t store_first_ts(struct store *s, int64_t topic_id, uint64_t from, uint64_t head)
{
    if (!s->rdb || !s->rd_ts || from > head || from == 0)
        return -1;
    sqlite3_bind_int64(s->rd_ts, 1, (int64_t)((uint64_t)topic_id << 40 | from));
    sqlite3_bind_int64(s->rd_ts, 2, (int64_t)((uint64_t)topic_id << 40 | head));
    int64_t ts = -1;
    if (sqlite3_step(s->rd_ts) == SQLITE_ROW)
        ts = sqlite3_column_int64(s->rd_ts, 1);
    sqlite3_reset(s->rd_ts);
    return ts;
}

/* ---- retention ---------------------------------------------------------- */

/* Rows deleted per topic and commit, at least: small steps, so that a large
 * purge never makes one commit (and the acks waiting on it) slow. */
#define RETENTION_STEP_MIN 2000

/* The bytes a stored row counts (as proto_msg_size). */
static uint64_t row_bytes(sqlite3_stmt *st)
{
    const uint8_t *h = sqlite3_column_blob(st, 3);
    size_t hl = (size_t)sqlite3_column_bytes(st, 3);
    uint64_t hb = h && hl >= 2 ? hl - 2 - 4 * (uint64_t)proto_rd16(h) : 0;
    return (uint64_t)sqlite3_column_int64(st, 2) + hb + (uint64_t)sqlite3_column_int64(st, 4);
}

/*
 * Deletes from the front of topic t what its retention no longer keeps:
 * beyond max_count, older than max_age, beyond max_bytes, and (with
 * delete_acked) what every group of the topic has acked. At most `budget`
 * rows; returns an SQLite code.
 */
/* A topic's retention: its own settings, else the broker's defaults. */
static struct retention effective_retention(const struct store *s, const struct topic *t)
{
    struct retention r = s->retention;
    if (t->own.max_age_ms != UINT64_MAX)
        r.max_age_ms = t->own.max_age_ms;
    if (t->own.max_count != UINT64_MAX)
        r.max_count = t->own.max_count;
    if (t->own.max_bytes != UINT64_MAX)
        r.max_bytes = t->own.max_bytes;
    if (t->own.delete_acked >= 0)
        r.delete_acked = t->own.delete_acked;
    return r;
}

static int retain_topic(struct store *s, struct topic *t, int64_t now_ms, int64_t budget)
{
    const struct retention rr = effective_retention(s, t);
    const struct retention *r = &rr;
    if (!t->c.count || (!r->max_age_ms && !r->max_count && !r->max_bytes && !r->delete_acked))
        return SQLITE_OK;
    uint64_t keep_from = t->c.first; /* the first sequence that stays */
    if (r->max_count && t->c.count > r->max_count)
        keep_from = t->c.head - r->max_count + 1;
    if (r->delete_acked) {
        sqlite3_stmt *q = s->st[ST_MIN_FLOOR];
        sqlite3_bind_text(q, 1, t->name, (int)t->name_len, SQLITE_STATIC);
        if (sqlite3_step(q) == SQLITE_ROW && sqlite3_column_int64(q, 1) > 0) {
            uint64_t floor = (uint64_t)sqlite3_column_int64(q, 0);
            if (floor > keep_from)
                keep_from = floor > t->c.head + 1 ? t->c.head + 1 : floor;
        }
        sqlite3_reset(q);
    }
    int64_t cutoff = r->max_age_ms ? now_ms - (int64_t)r->max_age_ms : INT64_MIN;
    if (keep_from <= t->c.first && !r->max_age_ms && (!r->max_bytes || t->c.bytes <= r->max_bytes))
        return SQLITE_OK;

    /* Walk from the front, deciding row by row. */
    sqlite3_stmt *st = s->st[ST_RET_SCAN];
    uint64_t base = (uint64_t)t->id << 40;
    sqlite3_bind_int64(st, 1, (int64_t)(base | t->c.first));
    sqlite3_bind_int64(st, 2, (int64_t)(base | t->c.head));
    sqlite3_bind_int64(st, 3, budget);
    uint64_t last = 0, n = 0, bytes = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        uint64_t seq = (uint64_t)sqlite3_column_int64(st, 0) & (uint64_t)SEQ_MAX;
        uint64_t size = row_bytes(st);
        int go = seq < keep_from || sqlite3_column_int64(st, 1) < cutoff ||
                 (r->max_bytes && t->c.bytes - bytes > r->max_bytes);
        if (!go)
            break;
        last = seq;
        n++;
        bytes += size;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        set_err(s, "retention");
        return rc;
    }
    if (!n)
        return SQLITE_OK;
    st = s->st[ST_RET_DELETE];
    sqlite3_bind_int64(st, 1, (int64_t)(base | t->c.first));
    sqlite3_bind_int64(st, 2, (int64_t)(base | last));
    if ((rc = step_done(st)) != SQLITE_OK) {
        set_err(s, "retention");
        return rc;
    }
    topic_touch(s, t);
    t->c.count -= n;
    t->c.bytes -= bytes;
    t->c.first = t->c.count ? last + 1 : 0;
    s->retained_deleted += n;
    return SQLITE_OK;
}

/* Inside the transaction: retention for the topics this commit touched,
 * and for every topic on a maintenance commit (time passes for idle
 * topics too). */
static int retention_step(struct store *s, struct batch *b, int64_t now_ms)
{
    int64_t budget = (int64_t)b->messages * 2;
    if (budget < RETENTION_STEP_MIN)
        budget = RETENTION_STEP_MIN;
    int rc = SQLITE_OK;
    if (b->maintenance) {
        for (size_t i = 0; rc == SQLITE_OK && i < s->nbuckets; i++)
            for (struct topic *t = s->buckets[i]; rc == SQLITE_OK && t; t = t->hnext)
                rc = retain_topic(s, t, now_ms, budget);
        return rc;
    }
    /* topic_touch prepends to s->dirty; the ones already there are walked. */
    for (struct topic *t = s->dirty; rc == SQLITE_OK && t; t = t->next_dirty)
        rc = retain_topic(s, t, now_ms, budget);
    return rc;
}

/* A topic's own retention (TOPIC_CONFIG). */
static int topic_config_op(struct store *s, struct batch *b, struct op *op, int64_t now_ms,
                           int *ferr)
{
    const struct op_topic_config *cw = &op->u.config;
    struct topic *t = topic_get(s, batch_bytes(b, cw->topic), cw->topic.len, now_ms, ferr);
    if (!t)
        return SQLITE_ERROR;
    struct topic_retention own = {
        cw->max_age_ms, cw->max_count, cw->max_bytes,
        cw->delete_acked == PROTO_DELETE_ACKED_DEFAULT ? -1 : cw->delete_acked};
    sqlite3_stmt *st = s->st[ST_TOPIC_CONFIG];
    sqlite3_bind_int64(st, 1, t->id);
    uint64_t vals[3] = {own.max_age_ms, own.max_count, own.max_bytes};
    for (int i = 0; i < 3; i++) {
        if (vals[i] == UINT64_MAX)
            sqlite3_bind_null(st, 2 + i);
        else
            sqlite3_bind_int64(st, 2 + i, (int64_t)(vals[i] > INT64_MAX ? INT64_MAX : vals[i]));
    }
    if (own.delete_acked < 0)
        sqlite3_bind_null(st, 5);
    else
        sqlite3_bind_int(st, 5, own.delete_acked);
    int rc = step_done(st);
    if (rc != SQLITE_OK) {
        set_err(s, "configure topic");
        return rc;
    }
    /* Takes effect at once; a failed commit restores it in topics_settle. */
    t->own = own;
    return SQLITE_OK;
}

/* ---- the transaction -------------------------------------------------- */

static void reply_error(struct batch *b, struct op *op, int code, const char *msg)
{
    /* Cut to what the op's connection was charged for it (batch.h). */
    size_t mlen = strlen(msg);
    if (mlen > OP_ERROR_TEXT_MAX)
        mlen = OP_ERROR_TEXT_MAX;
    op->status = code;
    if (buf_reserve(&b->out, PROTO_HEADER_BYTES + 4 + mlen) < 0) {
        op->out_len = 0; /* the connection layer treats this as fatal */
        return;
    }
    struct proto_writer w;
    proto_writer_init(&w, b->out.data + b->out.len, b->out.cap - b->out.len);
    proto_encode_error(&w, op->request_id, 0, (uint16_t)-code, msg, mlen);
    op->out_off = b->out.len;
    op->out_len = w.len;
    b->out.len += w.len;
}

/* One transaction over the batch. With only_small, publishes and dead
 * letters are left out (and so are purging and retention): the second try
 * after the disk filled up, so that acks and group changes, which need
 * little space, still get through. Returns an SQLite code; on failure
 * everything of the transaction was rolled back and undone in memory. */
static int run_txn(struct store *s, struct batch *b, int64_t now_ms, int only_small, int *ferr)
{
    b->results.len = 0;
    s->stored_before = s->stats.messages_stored;
    s->dd_oldest_before = s->dd_oldest_ms;
    s->dups_before = s->stats.duplicates;
    int rc = step_done(s->st[ST_BEGIN]);
    if (rc != SQLITE_OK)
        set_err(s, "begin");

    for (size_t i = 0; rc == SQLITE_OK && i < b->nops; i++) {
        struct op *op = &b->ops[i];
        if (op->kind == OP_PUBLISH) {
            if (!only_small)
                rc = publish_op(s, b, op, now_ms, ferr);
        } else if (op->kind == OP_GROUP_SAVE) {
            rc = group_save_op(s, b, op, now_ms);
        } else if (op->kind == OP_GROUP_ACK) {
            rc = group_ack_op(s, b, op);
        } else if (op->kind == OP_ATTEMPT) {
            rc = attempt_op(s, op);
        } else if (op->kind == OP_TOPIC_CONFIG) {
            rc = topic_config_op(s, b, op, now_ms, ferr);
        } else if (op->kind == OP_DEAD_LETTER) {
            if (!only_small)
                rc = dead_letter_op(s, b, op, now_ms, ferr);
        } else if (op->kind == OP_TOPICS) {
            int e = topics_op(s, b, op, now_ms);
            if (e)
                reply_error(b, op, e, "cannot list topics");
        }
    }
    if (rc == SQLITE_OK && !only_small)
        rc = dedupe_purge(s, now_ms, b->messages);
    if (rc == SQLITE_OK && !only_small)
        rc = retention_step(s, b, now_ms);
    if (rc == SQLITE_OK)
        rc = producers_flush(s, now_ms);
    if (rc == SQLITE_OK && b->maintenance && !only_small)
        topics_touch_lagging(s);
    if (rc == SQLITE_OK && (rc = topics_flush(s, now_ms, b->maintenance)) == SQLITE_OK) {
        rc = step_done(s->st[ST_COMMIT]);
        if (rc != SQLITE_OK)
            set_err(s, "commit");
    }

    if (rc == SQLITE_OK) {
        topics_settle(s, b, 1);
        dedupe_settle(s, 1);
        producers_settle(s, 1);
        maybe_checkpoint(s);
        s->stats.commits++;
        return SQLITE_OK;
    }
    if (!sqlite3_get_autocommit(s->db))
        step_done(s->st[ST_ROLLBACK]);
    topics_settle(s, b, 0);
    dedupe_settle(s, 0);
    producers_settle(s, 0);
    s->dd_oldest_ms = s->dd_oldest_before;
    s->stats.failed_commits++;
    s->stats.messages_stored = s->stored_before;
    s->stats.duplicates = s->dups_before;
    return rc;
}

/* Whether a batch holds small writes worth a second try on a full disk. */
static int has_small_writes(const struct batch *b)
{
    for (size_t i = 0; i < b->nops; i++)
        if (b->ops[i].kind == OP_GROUP_ACK || b->ops[i].kind == OP_GROUP_SAVE ||
            b->ops[i].kind == OP_ATTEMPT || b->ops[i].kind == OP_TOPIC_CONFIG)
            return 1;
    return 0;
}

void store_commit(struct store *s, struct batch *b, int64_t now_ms)
{
    uint64_t t0 = clock_mono_us();
    int ferr = 0;
    b->now_ms = now_ms;
    /* While the disk reserve is released, publishes and dead letters are
     * refused without a try: the space left is for acks. */
    int refused = !reserve_restore(&s->rsv, now_ms);
    fetch_all(s, b);
    int rc = refused ? SQLITE_FULL : run_txn(s, b, now_ms, 0, &ferr);
    if (rc == SQLITE_OK) {
        b->commit_status = 0;
        b->commit_us = clock_mono_us() - t0;
        return;
    }
    int code = ferr ? ferr : map_sqlite_error(rc);
    const char *why = s->errmsg;
    if (refused)
        why = "storage full: the disk is full; message not stored (publishing resumes once "
              "space is freed)";
    else if (code == FERRY_ESTORAGE_FULL)
        why = "storage full: message not stored";
    if (code == FERRY_ESTORAGE_FULL && !refused &&
        (!s->cap_pages || reserve_fs_free(&s->rsv) < s->rsv.bytes))
        reserve_release(&s->rsv); /* the filesystem, not the cap, is full */
    if (refused || (code == FERRY_ESTORAGE_FULL && has_small_writes(b))) {
        /* The disk is full: the publishes fail, but acks and group changes
         * take a second transaction of their own, so that consumers keep
         * going while producers wait for space. Under a page cap they may
         * take the database up to the reserve's size beyond it. (Refused
         * publishes take this path too, so that the batch's reads, such
         * as topic listings, are answered.) */
        size_t mark = b->out.len;
        b->topic_updates.len = 0;
        b->topic_names.len = 0;
        /* Copy the WAL back first: the next transaction can then start the
         * WAL over and write into space the file already has. */
        if (!refused)
            checkpoint(s, s->db, SQLITE_CHECKPOINT_PASSIVE, 0, NULL, NULL);
        if (s->cap_pages)
            set_max_pages(s, s->cap_pages + s->rsv.bytes / 4096);
        int ferr2 = 0;
        rc = run_txn(s, b, now_ms, 1, &ferr2);
        if (s->cap_pages)
            set_max_pages(s, s->cap_pages);
        if (rc == SQLITE_OK) {
            for (size_t i = 0; i < b->nops; i++) {
                struct op *op = &b->ops[i];
                if (op->kind == OP_PUBLISH)
                    reply_error(b, op, code, why);
                else if (op->kind == OP_DEAD_LETTER)
                    op->status = code;
            }
            shrink_wal(s);
            b->commit_status = 0;
            b->commit_us = clock_mono_us() - t0;
            return;
        }
        b->out.len = mark;
    }
    b->commit_status = code;
    /* Nothing of this transaction was kept: every write fails. */
    for (size_t i = 0; i < b->nops; i++) {
        struct op *op = &b->ops[i];
        if (op->kind == OP_PUBLISH || op->kind == OP_GROUP_SAVE || op->kind == OP_GROUP_ACK ||
            op->kind == OP_TOPIC_CONFIG || (op->kind == OP_ATTEMPT && op->request_id))
            reply_error(b, op, code, why);
    }
    b->commit_us = clock_mono_us() - t0;
}
