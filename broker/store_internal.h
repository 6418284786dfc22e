/*
 * store_internal.h - what the files of the store share: the store's
 * struct, its topics and producers, the prepared statements, and the
 * functions one file of it calls in another. Only store*.c include it
 * (and only they include sqlite3.h).
 *
 *   store_txn.c      the transaction over a batch (store_commit)
 *   store.c          open, schema and migrations, loading, close
 *   store_publish.c  publish, dedupe, producers
 *   store_groups.c   groups, acks, attempts, fetches, dead letters
 *   store_topics.c   topic map and counters, TOPICS, retention
 *   store_ckpt.c     the checkpointer thread, WAL sync, page cap
 *   store_util.c     statement steps, error text, message ids
 *
 * in that order from the top: a file calls only files below it.
 *
 * Threads: the struct store is used by one thread at a time (store.h),
 * except the checkpointer's fields (ckpt_*, wal_dirty), shared with the
 * checkpointer thread under ckpt_mu, and the read-only connection rdb,
 * used from the loop thread.
 */
#ifndef FERRY_BROKER_STORE_INTERNAL_H
#define FERRY_BROKER_STORE_INTERNAL_H

#include <pthread.h>
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

#include "batch.h"
#include "dedupe.h"
#include "namemap.h"
#include "proto.h"
#include "reserve.h"
#include "store.h"

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
    struct name_link link; /* first: in the store's topic map (namemap.h) */
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
    int deleted_in_txn;    /* removed from the map by the running transaction */
    uint64_t bytes_in_txn; /* bytes the running transaction appended */
    struct topic *next_dirty;
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
    ST_GDEAD_INSERT,
    ST_GDEAD_PRUNE,
    ST_TOPIC_DELETE,
    ST_DELTOPIC_INSERT,
    ST_DELTOPIC_DONE,
    ST_PURGE_CUT,
    ST_PURGE_DELETE,
    ST__COUNT
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

    struct namemap topics; /* every topic, by name */
    /* Deleted topics whose messages are still being purged (their ids,
     * oldest first): rows of deleted_topics with purged_ms NULL. Added when
     * a deletion commits. */
    int64_t *purge_ids;
    size_t npurge, cap_purge;
    int64_t *purge_added; /* deletions of the running transaction */
    size_t nadded_purge, cap_added_purge;
    size_t purge_done;   /* queue entries the running transaction finished */
    uint64_t purge_rows; /* rows it freed */
    /* $FERRY_TEST_PURGE_STEP (tests only): rows per step instead, so that
     * a test can kill ferryd in the middle of a purge. */
    int64_t purge_step_test;
    int64_t purge_retry_ms; /* after a failed step: not before then */
    struct topic *dirty;    /* topics touched by the running transaction */

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

/* store_util.c */
uint64_t splitmix64(uint64_t *x);
void make_id(struct store *s, int64_t now_ms, char out[37]);
void set_err(struct store *s, const char *what);
int map_sqlite_error(int rc);
int step_done(sqlite3_stmt *st);

/* store_ckpt.c */
int checkpoint(struct store *s, sqlite3 *db, int mode, int wait, int *nlog, int *nckpt);
int fsync_dir_of(const char *path);
int start_checkpointer(struct store *s, const struct store_config *cfg);
void stop_checkpointer(struct store *s);
void maybe_checkpoint(struct store *s);
void shrink_wal(struct store *s);
void set_max_pages(struct store *s, uint64_t pages);

/* store_publish.c */
int dedupe_purge(struct store *s, int64_t now_ms, uint64_t batch_msgs);
void dedupe_settle(struct store *s, int ok);
int publish_one(struct store *s, const struct proto_msg *m, int64_t now_ms, int *ferr,
                struct publish_result *res, struct producer *pr);
struct producer *producer_get(struct store *s, const uint8_t *id, size_t len);
void producer_touch(struct store *s, struct producer *p);
int producers_flush(struct store *s, int64_t now_ms);
void producers_settle(struct store *s, int ok);
int publish_op(struct store *s, struct batch *b, struct op *op, int64_t now_ms, int *ferr);

/* store_topics.c */
int topic_map_insert(struct store *s, struct topic *t);
struct topic *topic_new(const char *name, size_t len);
void topic_free(struct topic *t);
struct topic *topic_get(struct store *s, const uint8_t *name, size_t len, int64_t now_ms, int *err);
int topics_flush(struct store *s, int64_t now_ms, int force);
void topics_touch_lagging(struct store *s);
void topics_settle(struct store *s, struct batch *b, int ok);
void topic_count_rate(struct topic *t, int64_t now_ms);
int topics_op(struct store *s, struct batch *b, struct op *op, int64_t now_ms);
struct retention effective_retention(const struct store *s, const struct topic *t);
/* What the loop is told of a topic (op.h). */
void topic_view_of(const struct store *s, const struct topic *t, struct topic_view *v);
int retention_step(struct store *s, struct batch *b, int64_t now_ms);
int topic_config_op(struct store *s, struct batch *b, struct op *op, int64_t now_ms, int *ferr);
struct topic *topic_find(struct store *s, const uint8_t *name, size_t len);
int topic_delete(struct store *s, struct topic *t, int64_t now_ms);
int purge_step(struct store *s, int64_t now_ms, int64_t budget);
void purge_settle(struct store *s, int ok);
void purge_commit(struct store *s, int ok);

/* store_groups.c */
int group_save_op(struct store *s, struct batch *b, struct op *op, int64_t now_ms);
int attempt_op(struct store *s, const struct op *op);
int group_ack_op(struct store *s, const struct batch *b, const struct op *op);
void fetch_all(struct store *s, struct batch *b);
int dead_letter_op(struct store *s, struct batch *b, struct op *op, int64_t now_ms, int *ferr);
int delete_op(struct store *s, struct batch *b, struct op *op, int64_t now_ms, int *op_err);

#endif
