/*
 * batch.h - the unit of group commit.
 *
 * The event loop appends every request it decodes during a pass to the
 * *pending* batch as a typed op (op.h). When the store is idle, the loop
 * hands the pending batch to a worker thread, which runs all of it in one
 * SQLite transaction (one fsync) and writes each op's results: typed
 * records in the batch's result arrays, or a reply frame the client gets
 * as it is. Back on the loop, the replies are sent to their connections in
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

#include "op.h"

struct buf {
    uint8_t *data;
    size_t len;
    size_t cap;
};

/* A growable array of elements of one size (vec_push). */
struct vec {
    void *data;
    size_t len; /* elements */
    size_t cap;
};

struct batch {
    struct op *ops;
    size_t nops;
    size_t cap_ops;
    struct buf in;     /* what the ops' op_bytes and op_arrays name */
    struct buf out;    /* encoded reply frames; the bytes of fetched messages */
    uint64_t messages; /* messages in all OP_PUBLISH ops */
    int maintenance;   /* run a retention / purge step in this transaction */
    int64_t now_ms;    /* the time stamped on this batch's messages */
    /* Results, filled by the store: struct publish_result (op_publish's
     * results), struct fetched_msg (op_fetch's), and a struct
     * topic_update for every topic this transaction created, appended to
     * or trimmed (names in topic_names). */
    struct vec results;
    struct vec fetched;
    struct vec topic_updates;
    struct buf topic_names;
    /* Filled by the store for logs and metrics. */
    int commit_status;  /* 0 or FERRY_E* for the whole transaction */
    uint64_t commit_us; /* time spent in the transaction */
};

/* The PUBLISH an OP_PUBLISH op holds, for proto_msg_iter_init(). */
void batch_publish_of(const struct batch *b, const struct op *op, struct proto_publish *pub);
/* The PUBLISH_ACK of a stored OP_PUBLISH (status 0): an entry per message,
 * from its publish_result and, unless the broker assigned it, the id the
 * message was sent with. Appends the frame to out. Returns 0 or -1. */
int batch_encode_publish_ack(const struct batch *b, const struct op *op, struct buf *out);

/* Makes sure b has room for n more bytes. Returns 0 or -1 (out of memory). */
int buf_reserve(struct buf *b, size_t n);
/* Appends n bytes. Returns 0 or -1. */
int buf_append(struct buf *b, const void *p, size_t n);
void buf_free(struct buf *b);

/* Appends a zeroed element of size bytes and returns it (valid until the
 * next push), or NULL when out of memory. */
void *vec_push(struct vec *v, size_t size);
void vec_free(struct vec *v);

/* Copies n bytes into b->in and names them in *out. Returns 0 or -1. */
int batch_put(struct batch *b, const void *p, size_t n, struct op_bytes *out);
/* Copies n values into b->in, aligned. Returns 0 or -1. */
int batch_put_u64s(struct batch *b, const uint64_t *v, uint32_t n, struct op_array *out);
int batch_put_u32s(struct batch *b, const uint32_t *v, uint32_t n, struct op_array *out);
/* What those name (valid until b->in grows again). */
const uint8_t *batch_bytes(const struct batch *b, struct op_bytes r);
const uint64_t *batch_u64s(const struct batch *b, struct op_array a);
const uint32_t *batch_u32s(const struct batch *b, struct op_array a);

/* Appends a zeroed op and returns it, or NULL when out of memory. */
struct op *batch_add(struct batch *b, enum op_kind kind);
/* Empties b for reuse, keeping its allocations. */
void batch_reset(struct batch *b);
void batch_free(struct batch *b);

#endif
