/*
 * store.h - ferryd's SQLite store: topics, messages, dedupe.
 *
 * The store is used by one thread at a time: opened and closed on the loop
 * thread while no commit runs, and otherwise only from the group-commit
 * worker (store_commit). It is the only broker file that includes sqlite3.h.
 */
#ifndef FERRY_BROKER_STORE_H
#define FERRY_BROKER_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "batch.h"

struct store;

struct store_config {
    const char *path;          /* the database file */
    int sync_full;             /* 1: fsync every commit (synchronous=FULL) */
    uint64_t sync_interval_ms; /* sync_full 0: fsync the WAL this often (0: 1000) */
    int cache_mb;              /* SQLite page cache */
    uint64_t dedupe_window_ms; /* ids are remembered this long... */
    uint64_t dedupe_max_ids;   /* ...unless more than this many (0: 10,000,000) */
    uint64_t max_db_bytes;     /* 0: no cap; else publishes fail with STORAGE_FULL beyond */
    /* Space kept for acks when the disk or the cap is full (reserve.h):
     * reserve_dir/ferry.reserve of reserve_bytes (0: none; NULL dir: none). */
    const char *reserve_dir;
    uint64_t reserve_bytes;
    /* Retention for every topic; 0 (false) means no such limit. */
    uint64_t retention_max_age_ms;
    uint64_t retention_max_count;
    uint64_t retention_max_bytes;
    int retention_delete_acked;
};

/* Opens (creating and migrating as needed) the database. On failure returns
 * a FERRY_E* code and writes a reason into err. */
int store_open(const struct store_config *cfg, struct store **out, char *err, size_t errlen);
void store_close(struct store *s);

/*
 * Runs every op of b in one transaction and writes each op's results
 * (op.h): typed records in b's result arrays, or a reply in b->out for
 * the ops the store answers itself. If the transaction fails, nothing of it is kept and every
 * OP_PUBLISH is answered with an ERROR carrying the cause (STORAGE_FULL,
 * STORAGE). now_ms stamps the messages. An OP_FETCH whose read fails is
 * answered alone (op->status FERRY_ESTORAGE, nothing in out) while the
 * rest of the transaction commits.
 *
 * Never returns if a checkpoint it runs fails (store_io.h): the process
 * exits so that WAL recovery repairs what SQLite can no longer trust.
 */
void store_commit(struct store *s, struct batch *b, int64_t now_ms);

/* Loading the consumer-group state at start (loop thread, before any
 * commit runs). Each callback returns 0, or -1 to stop with an error. */
struct store_load_cbs {
    void *arg;
    int (*topic)(void *arg, int64_t id, const char *name, size_t len, const struct topic_view *v);
    int (*group_row)(void *arg, int64_t id, const char *topic, size_t topic_len, const char *name,
                     size_t name_len, uint64_t floor, uint32_t ack_wait_ms, uint16_t max_deliveries,
                     uint64_t origin, const uint32_t *backoff_ms, uint8_t backoff_count);
    int (*ack)(void *arg, int64_t group_id, uint64_t seq);
    /* Attempts used up by a message not yet done, in (group, seq) order. */
    int (*attempts)(void *arg, int64_t group_id, uint64_t seq, uint32_t attempts,
                    uint64_t dead_seq);
};
int store_load_groups(struct store *s, const struct store_load_cbs *cb);

/* The first sequence of a topic stored at or after time_ms (head + 1 when
 * none). Uses a separate read-only connection: safe on the loop thread
 * while a commit runs on the worker. */
/* On the loop thread (read-only connection): the original sequence and
 * group of the dead letter dead_seq of the topic dead_topic_id (a
 * `_dead.` topic), from its ferry-dead-* headers. 0, FERRY_EINVALID when
 * there is no such dead letter, or FERRY_ESTORAGE. */
/* On the loop thread (read-only connection): the group's ack floor as
 * committed (every sequence below it is durably done for the group; 1
 * when the group is not stored yet) and, ascending, up to cap of the
 * sequences below it that the group dead-lettered and whose dead letter
 * is still stored in the topic dead_topic_id (0: none), which a redrive
 * can bring back, and those being redriven (not yet acked). With more than cap of them, *floor is
 * lowered to the first left out. 0 or FERRY_ESTORAGE. */
int store_read_floor(struct store *s, int64_t group_id, int64_t dead_topic_id, uint64_t *floor,
                     uint64_t *keep, uint16_t cap, uint16_t *n);
int store_read_dead(struct store *s, int64_t dead_topic_id, uint64_t dead_seq, uint64_t *seq,
                    char *group, size_t group_cap, size_t *group_len);
uint64_t store_seq_at_time(struct store *s, int64_t topic_id, int64_t time_ms, uint64_t head);

/* When the first message of a topic stored in [from, head] was stored
 * (Unix ms), or -1 when none is. The same read-only connection as
 * store_seq_at_time, so also safe on the loop thread. */
int64_t store_first_ts(struct store *s, int64_t topic_id, uint64_t from, uint64_t head);

/* On the loop thread (read-only connection): the messages of the topic
 * topic_id stored in [from, head], ascending, at most max of them. Each is
 * handed to cb as a DELIVER's fields (sub_id and attempt 0; its slices are
 * valid during the call only); cb returns 0 for more, 1 to stop. Returns
 * 0 or FERRY_ESTORAGE. Reads nothing but the messages table. */
int store_peek(struct store *s, int64_t topic_id, uint64_t from, uint64_t head, uint32_t max,
               int (*cb)(void *arg, const struct proto_deliver *d), void *arg);

/* Counters for logs and tests. */
struct store_stats {
    uint64_t topics;
    uint64_t messages_stored; /* since open */
    uint64_t duplicates;      /* since open */
    uint64_t commits;
    uint64_t failed_commits;
    uint64_t dedupe_purged;  /* ids forgotten (window passed or evicted) */
    uint64_t dedupe_evicted; /* ids forgotten early: over dedupe_max_ids */
    uint64_t dedupe_ids;     /* ids remembered now */
    uint64_t dedupe_bytes;   /* memory of the in-memory index */
    uint64_t io_errors;      /* I/O errors met by the process (store_io.h) */
    int reserve_held;        /* the disk reserve file holds its blocks */
    int reserve_released;    /* released on a full disk: publishes refused */
    uint64_t purging;        /* deleted topics whose rows are still being freed */
    uint64_t purged;         /* rows of deleted topics freed since open */
};
void store_get_stats(const struct store *s, struct store_stats *out);

/* The SQLite error text of the last failure, for logs. */
const char *store_last_error(const struct store *s);

#endif
