/*
 * broker.h - the broker's configuration and the broker itself: what every
 * part of it shares (the loop, the store, the batches, the connections,
 * the groups). There is no global broker; every function takes its
 * pointer. Everything here lives on the loop thread, except the batch
 * being committed (batch.h) and the store (store.h), which belong to the
 * commit worker while a commit runs.
 */
#ifndef FERRY_BROKER_H
#define FERRY_BROKER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "auth.h"
#include "batch.h"
#include "conn.h"
#include "metrics.h"
#include "store.h"

struct store;
struct sub;
struct groups;
struct http;

struct broker_config {
    char listen_host[256];
    int listen_port;
    char data_dir[4096];
    int sync_full;
    uint64_t sync_interval_ms; /* --sync normal: the WAL's fsync period */
    int cache_mb;
    uint64_t max_db_bytes;  /* 0: unlimited */
    uint64_t reserve_bytes; /* disk kept for acks on a full disk (reserve.h) */
    uint32_t max_message_bytes;
    uint32_t max_frame_bytes; /* derived: max(4 MiB, max_message + 64 KiB) */
    uint32_t max_batch;
    uint64_t dedupe_window_ms;
    uint64_t dedupe_max_ids;
    uint64_t retention_max_age_ms, retention_max_count, retention_max_bytes;
    int retention_delete_acked;
    /* Waits before redelivering after a lease ran out (the k-th value for
     * the k-th redelivery, the last repeated). */
    uint64_t backoff_ms[16];
    uint32_t backoff_count;
    int max_connections;
    uint64_t handshake_timeout_ms;
    uint64_t idle_timeout_ms; /* 0: never */
    /* A connection whose requests awaiting commit, or replies awaiting the
     * socket, exceed this stops being read until they drain. */
    size_t conn_max_pending_bytes;
    /* All connections stop being read while the batch waiting for the
     * commit holds more than this; those with much awaiting commit, at
     * 1/32 of it (conn.c). */
    size_t batch_max_bytes;
    char ready_file[4096];
    char http_host[256]; /* --http HOST:PORT; empty: no HTTP listener */
    int http_port;
    struct auth auth; /* tokens from the config file; none: no authentication */
};

/* Shutdown (server.c): a signal moves RUNNING to DRAINING, in which the
 * listener is closed and the commits in flight and pending finish; once
 * none is left, CLOSING: each connection flushes its replies and closes
 * (cut off after a grace period). */
enum broker_stopping {
    BROKER_RUNNING = 0,
    BROKER_DRAINING,
    BROKER_CLOSING,
};

struct broker {
    uv_loop_t *loop;
    struct broker_config cfg;
    struct store *store;
    uv_tcp_t server;
    uv_signal_t sigint, sigterm;
    uv_prepare_t prepare; /* end of each pass: hands the pending batch over */
    uv_idle_t drain;      /* while active, the loop polls without blocking */
    int read_in_pass;     /* some connection read bytes during this pass */
    int deferrals;        /* passes the pending batch waited for more input */
    uv_timer_t tick;      /* timeouts and maintenance, once a second */
    uv_timer_t linger;    /* at shutdown: cuts off clients that do not read */
    int linger_active;
    uv_work_t work;

    struct batch batches[2];
    struct batch *pending;    /* filled by this loop pass */
    struct batch *committing; /* with the worker, or NULL */
    int maintenance_due;
    /* The store has deleted topics' rows left to free: an empty commit
     * purges the next step (store_txn.c). */
    int purge_due;
    uint64_t last_maintenance_ms;

    struct conn *conns;
    int nconns;
    uint64_t next_conn_id;
    enum broker_stopping stopping;
    int lock_fd;

    /* What the connections report (conn.h), and what a finished commit
     * does (commit.h): set by broker_init (server.c). */
    struct conn_events events;
    void (*on_commit_done)(struct broker *b, struct batch *done);

    struct groups *groups; /* consumer groups (group.c) */
    int defer_flush;       /* answering a batch: flush connections at its end */
    struct conn *flush_list;
    struct buf scratch; /* a reply being encoded (commit.c) */

    uint64_t published, duplicates, commits;
    /* Since start, over every connection (conn.c). */
    uint64_t frames_in, frames_out, bytes_in, bytes_out, accepted;
    int64_t started_ms; /* wall clock */
    /* Each commit: its time from hand-over to result, and its messages;
     * fsyncs are timed in the store (store_io.h). */
    struct histo commit_seconds, commit_messages;
    struct http *http; /* the HTTP listener (http.h), or NULL */
    /* The store's counters as of the last commit (or the open): the store
     * is the worker's while a commit runs. */
    struct store_stats store_stats;
    /* Replies larger than what their op owed its connection: each breaks
     * the per-connection bound (conn.c), so there must never be one. Read
     * by tests (fuzz_conn) from another thread, hence atomic. */
    _Atomic uint64_t reply_overruns;
};

/* The one loopback rule: whether a listen address reaches only this
 * machine (::1, 127.*, localhost). Without tokens ferryd listens only on
 * such an address. */
int broker_is_loopback(const char *host);

int broker_init(struct broker *b, uv_loop_t *loop, const struct broker_config *cfg);
/* Starts listening; logs the address and writes the ready file. */
int broker_start(struct broker *b);
/* Releases what broker_init acquired, after the loop has stopped. */
void broker_destroy(struct broker *b);

#endif
