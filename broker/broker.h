/*
 * broker.h - the broker's shared types: configuration, the broker, a
 * connection. There is no global broker; every function takes its pointer.
 */
#ifndef FERRY_BROKER_H
#define FERRY_BROKER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "auth.h"
#include "batch.h"

struct store;
struct sub;
struct groups;

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
    struct auth auth; /* tokens from the config file; none: no authentication */
};

/* Connection states; see conn.c for the transitions. */
enum conn_state {
    CONN_HANDSHAKE, /* waiting for HELLO; frames limited to 64 KiB */
    CONN_READY,     /* serving requests */
    CONN_CLOSING,   /* a fatal error or shutdown: reading stopped, flushing */
    CONN_CLOSED,    /* uv_close called */
};

struct conn {
    uv_tcp_t tcp;
    struct broker *broker;
    enum conn_state state;
    uint64_t id;
    char peer[64];
    int refs; /* 1 for the handle + 1 per op in a batch */

    uint8_t *rbuf; /* bytes read and not yet decoded */
    size_t rlen;
    size_t rcap;
    int reading;

    struct buf wq;    /* replies waiting to be written */
    struct buf wbusy; /* the buffer of the uv_write in flight */
    uv_write_t wreq;
    int writing;

    size_t outstanding;       /* request bytes (and ops) queued for the commit */
    size_t replies_owed;      /* reply bytes those ops may still produce */
    uint64_t outstanding_ops; /* requests not yet replied */
    uint64_t last_active_ms;
    uint64_t accepted_ms;

    struct sub *subs;               /* this connection's subscriptions (group.c) */
    const struct auth_token *token; /* who authenticated (NULL: nobody / auth off) */
    int auth_failed;                /* a wrong token: answered by the next tick */
    uint32_t hello_request_id;      /* for that answer */
    uint64_t auth_failed_ms;        /* when it came */
    int flush_queued;               /* on the broker's flush_list */
    uint32_t fetching;              /* messages being read for this connection's deliveries */
    struct conn *next_flush;

    struct conn *prev, *next;
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
    uint64_t last_maintenance_ms;

    struct conn *conns;
    int nconns;
    uint64_t next_conn_id;
    enum broker_stopping stopping;
    int lock_fd;

    struct groups *groups; /* consumer groups (group.c) */
    int defer_flush;       /* answering a batch: flush connections at its end */
    struct conn *flush_list;
    struct buf scratch; /* a reply being encoded (server.c) */

    uint64_t published, duplicates, commits;
    /* Replies larger than what their op owed its connection: each breaks
     * the per-connection bound (conn.c), so there must never be one. Read
     * by tests (fuzz_conn) from another thread, hence atomic. */
    _Atomic uint64_t reply_overruns;
};

int broker_init(struct broker *b, uv_loop_t *loop, const struct broker_config *cfg);
/* Starts listening; logs the address and writes the ready file. */
int broker_start(struct broker *b);
/* Releases what broker_init acquired, after the loop has stopped. */
void broker_destroy(struct broker *b);

/* Called by conn.c. */
struct op *broker_enqueue(struct broker *b, struct conn *c, enum op_kind kind, size_t wire_bytes);
/* Raises what op's connection is owed in reply bytes to at least bytes:
 * the largest reply the op can get (an op the store answers starts at
 * OP_ERROR_REPLY_MAX, an OP_REPLY at 0). */
void broker_owe_reply(struct op *op, size_t bytes);
void broker_conn_closed(struct broker *b, struct conn *c);

/* conn.c */
void conn_accept(struct broker *b);
void conn_on_replies(struct conn *c, const uint8_t *data, size_t len);
void conn_op_done(struct conn *c, const struct op *op);
void conn_resume_reading(struct conn *c);
/* Flushes the connections that queued replies while defer_flush was set. */
void conn_flush_deferred(struct broker *b);
void conn_pause_reading(struct conn *c);
/* Ends the connection: optional fatal ERROR first, then close after flush. */
void conn_fail(struct conn *c, int code, const char *msg);
/* As conn_fail, with the request id of the frame the error answers (a
 * HELLO refused with VERSION or AUTH, a first frame that is not HELLO). */
void conn_fail_request(struct conn *c, uint32_t request_id, int code, const char *msg);
void conn_unref(struct conn *c);
/* Closes at once, dropping unsent replies (shutdown of a stuck client). */
void conn_abort(struct conn *c);
/* Sends a reply in request order (at once when nothing is outstanding). */
void conn_reply(struct conn *c, uint32_t request_id, const uint8_t *frame, size_t len);
void conn_reply_error(struct conn *c, uint32_t request_id, int code, const char *msg);
/* Encodes a DELIVER straight into the connection's outgoing bytes. */
struct proto_deliver;
void conn_send_deliver(struct conn *c, uint8_t flags, const struct proto_deliver *d);
void conn_tick(struct conn *c, uint64_t now_ms);

uint64_t broker_now_ms(void); /* monotonic */
int64_t broker_wall_ms(void);

#endif
