/*
 * batch.h - the unit of group commit.
 *
 * The event loop appends every request it decodes during a pass to the
 * *pending* batch. When the store is idle, the loop hands the pending batch
 * to a worker thread, which runs all of it in one SQLite transaction (one
 * fsync) and writes each request's reply frame into the batch's output
 * buffer. Back on the loop, the replies are copied to their connections in
 * the order the ops were appended, so replies on one connection always come
 * in request order.
 *
 * Ownership: a batch belongs to the loop thread while it is pending and to
 * the worker while it commits; the two never touch it at the same time (the
 * handover is uv_queue_work / its after-callback). Ops hold a reference on
 * their connection, so a connection that closes mid-commit is freed only
 * after its last op is answered.
 */
#ifndef FERRY_BROKER_BATCH_H
#define FERRY_BROKER_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"

struct conn;

enum op_kind {
    OP_PUBLISH, /* in: the PUBLISH body's messages; out: PUBLISH_ACK or ERROR */
    OP_TOPICS,  /* out: TOPICS_OK */
    OP_REPLY,   /* out was encoded by the loop (an ERROR or a PONG) */
    /* Consumer groups (group.c builds them, store.c runs them). The reply
     * in out is encoded by the loop and replaced by an ERROR if the
     * transaction fails. Record layouts are in store.c. */
    OP_GROUP_SAVE,   /* in: a group's row; creates or rewrites it */
    OP_GROUP_ACK,    /* in: a group's new ack floor and acks above it */
    OP_FETCH,        /* in: topic and sequences; out: DELIVER frames for group.c */
    OP_DEAD_LETTER,  /* in: a message to move to its dead-letter topic */
    OP_TOPIC_CONFIG, /* in: a TOPIC_CONFIG body; out: its ACK_OK */
    OP_ATTEMPT,      /* in: the attempts a message used up (0: forget them); no reply */
};

/* The largest ERROR the store puts in place of an op's reply when the
 * transaction fails (store.c cuts its detail to fit). */
#define OP_ERROR_TEXT_MAX 200
#define OP_ERROR_REPLY_MAX (PROTO_HEADER_BYTES + 4 + OP_ERROR_TEXT_MAX)

struct op {
    enum op_kind kind;
    struct conn *conn;
    uint32_t request_id;
    uint16_t count; /* OP_PUBLISH: messages */
    int status;     /* 0, or the FERRY_E* the op failed with */
    size_t in_off;  /* OP_PUBLISH: the encoded messages in batch->in */
    size_t in_len;
    size_t out_off; /* the reply frame in batch->out */
    size_t out_len;
    /* What the op costs its connection until it is answered, for the
     * connection's bounds (conn.c): the request bytes and the op itself,
     * and the most reply bytes it can produce (reply_bytes, at least
     * OP_ERROR_REPLY_MAX for an op the store answers). */
    size_t wire_bytes;
    size_t reply_bytes;
    /* OP_FETCH: who asked (a group of the loop's) and for which subscription. */
    void *group;
    uint32_t sub_id;
    int redrive;     /* OP_FETCH of redriven messages from a dead-letter topic (store.c) */
    int first_fetch; /* OP_FETCH of first deliveries (group.c) */
    /* OP_PUBLISH with a producer: in holds u16 length, the producer id, then
     * the messages (each preceded by its u64 producer_seq). */
    int producer;
};

struct buf {
    uint8_t *data;
    size_t len;
    size_t cap;
};

struct batch {
    struct op *ops;
    size_t nops;
    size_t cap_ops;
    struct buf in;     /* copies of request bodies */
    struct buf out;    /* encoded reply frames */
    uint64_t messages; /* messages in all OP_PUBLISH ops */
    int maintenance;   /* run a retention / purge step in this transaction */
    int64_t now_ms;    /* the time stamped on this batch's messages */
    /* Filled by the store: (u64 topic id, u64 head, u64 first, str16 name)
     * for every topic this transaction created, appended to or trimmed. */
    struct buf topics;
    /* Filled by the store for logs and metrics. */
    int commit_status;  /* 0 or FERRY_E* for the whole transaction */
    uint64_t commit_us; /* time spent in the transaction */
};

/* The PUBLISH an OP_PUBLISH op holds, for proto_msg_iter_init(). */
void batch_publish_of(const struct batch *b, const struct op *op, struct proto_publish *pub);

/* Makes sure b has room for n more bytes. Returns 0 or -1 (out of memory). */
int buf_reserve(struct buf *b, size_t n);
/* Appends n bytes. Returns 0 or -1. */
int buf_append(struct buf *b, const void *p, size_t n);
void buf_free(struct buf *b);

/* Appends a zeroed op and returns it, or NULL when out of memory. */
struct op *batch_add(struct batch *b, enum op_kind kind);
/* Empties b for reuse, keeping its allocations. */
void batch_reset(struct batch *b);
void batch_free(struct batch *b);

#endif
