/*
 * commit.h - the group-commit pipeline: the pending batch the loop fills,
 * the batch the worker commits, the hand-over between them, and the
 * ordering of every reply on a connection.
 *
 * The loop appends one typed op (op.h) per request that needs the store
 * to the pending batch (commit_enqueue). commit_start hands the pending
 * batch to the worker thread (uv_queue_work), which runs store_commit on
 * it; back on the loop the broker's on_commit_done hook (server.c) gets
 * the finished batch, sends its replies (commit_answer) and releases it
 * (commit_release).
 *
 * Ordering: replies on one connection leave in request order. A reply
 * the loop makes on its own (commit_reply) goes out at once when nothing
 * of its connection is outstanding, and otherwise joins the pending batch
 * as an OP_REPLY behind the rest.
 *
 * Ownership: a batch belongs to the loop while pending and to the worker
 * while committing, never to both (batch.h). Each op holds a reference on
 * its connection, dropped by commit_release, and counts against the
 * connection's bounds (conn.h) until commit_answer.
 */
#ifndef FERRY_BROKER_COMMIT_H
#define FERRY_BROKER_COMMIT_H

#include <stddef.h>
#include <stdint.h>

#include "op.h"

struct broker;
struct batch;
struct conn;

/* Appends an op of c's to the pending batch; wire_bytes is what the
 * request cost. NULL when out of memory. */
struct op *commit_enqueue(struct broker *b, struct conn *c, enum op_kind kind, size_t wire_bytes);
/* Raises what op's connection is owed in reply bytes to at least bytes:
 * the largest reply the op can get (an op the store answers starts at
 * OP_ERROR_REPLY_MAX, an OP_REPLY at 0). */
void commit_owe_reply(struct op *op, size_t bytes);

/* Hands the pending batch to the worker, unless one is committing or
 * there is nothing to do (no op, no maintenance due). */
void commit_start(struct broker *b);

/* After a commit: each op's reply to its connection, in op order (a
 * stored PUBLISH's PUBLISH_ACK encoded here from its results). */
void commit_answer(struct broker *b, struct batch *done);
/* Drops the ops' references and empties the batch for reuse. */
void commit_release(struct batch *done);

/* A reply in request order (see above). */
void commit_reply(struct conn *c, uint32_t request_id, const uint8_t *frame, size_t len);
void commit_reply_error(struct conn *c, uint32_t request_id, int code, const char *msg);

/* c closed: what it left in the pending batch that only it would read
 * (topic listings) is not done. */
void commit_conn_closed(struct broker *b, struct conn *c);

#endif
