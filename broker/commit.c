/*
 * commit.c - the group-commit pipeline (commit.h).
 */
#include "commit.h"

#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "broker.h"
#include "clock.h"
#include "conn.h"
#include "log.h"
#include "proto.h"
#include "store.h"

struct op *commit_enqueue(struct broker *b, struct conn *c, enum op_kind kind, size_t wire_bytes)
{
    struct op *op = batch_add(b->pending, kind);
    if (!op)
        return NULL;
    op->conn = c;
    op->request_id = 0;
    /* The op's own memory counts with the request: otherwise a flood of
     * tiny requests would cost far more than the bytes it sends. */
    op->wire_bytes = wire_bytes + sizeof(*op);
    c->refs++;
    c->outstanding += op->wire_bytes;
    c->outstanding_ops++;
    if (kind != OP_REPLY && kind != OP_FETCH && kind != OP_DEAD_LETTER)
        commit_owe_reply(op, OP_ERROR_REPLY_MAX);
    return op;
}

void commit_owe_reply(struct op *op, size_t bytes)
{
    if (bytes <= op->reply_bytes)
        return;
    op->conn->replies_owed += bytes - op->reply_bytes;
    op->reply_bytes = bytes;
}

/* ---- the worker ------------------------------------------------------- */

static void work_cb(uv_work_t *req)
{
    struct broker *b = req->data;
    store_commit(b->store, b->committing, clock_wall_ms());
}

static void after_work_cb(uv_work_t *req, int status)
{
    struct broker *b = req->data;
    struct batch *done = b->committing;
    (void)status;
    b->committing = NULL;
    b->on_commit_done(b, done);
}

void commit_start(struct broker *b)
{
    if (b->committing || (!b->pending->nops && !b->maintenance_due && !b->purge_due))
        return;
    b->purge_due = 0;
    struct batch *next = b->pending == &b->batches[0] ? &b->batches[1] : &b->batches[0];
    b->committing = b->pending;
    b->committing->maintenance = b->maintenance_due;
    b->maintenance_due = 0;
    b->pending = next;
    b->work.data = b;
    int rc = uv_queue_work(b->loop, &b->work, work_cb, after_work_cb);
    if (rc < 0) {
        /* Cannot happen with a valid loop; run inline rather than lose it. */
        log_error("uv_queue_work: %s; committing on the loop thread", uv_strerror(rc));
        work_cb(&b->work);
        after_work_cb(&b->work, 0);
    }
}

/* ---- answering -------------------------------------------------------- */

/* The op no longer counts against its connection's bounds. */
static void op_done(struct conn *c, const struct op *op)
{
    c->outstanding -= op->wire_bytes;
    c->replies_owed -= op->reply_bytes;
    c->outstanding_ops--;
}

void commit_answer(struct broker *b, struct batch *done)
{
    for (size_t i = 0; i < done->nops; i++) {
        struct op *op = &done->ops[i];
        struct conn *c = op->conn;
        if (op->kind != OP_FETCH) {
            const uint8_t *reply = done->out.data + op->out_off;
            size_t len = op->out_len;
            if (op->kind == OP_PUBLISH && !op->status) {
                /* Stored: its PUBLISH_ACK from the typed results. */
                b->scratch.len = 0;
                len = 0;
                if (batch_encode_publish_ack(done, op, &b->scratch) == 0) {
                    reply = b->scratch.data;
                    len = b->scratch.len;
                }
            }
            if (len > op->reply_bytes) {
                atomic_fetch_add(&b->reply_overruns, 1);
                log_error("conn %llu: a %zu-byte reply where %zu were owed (op kind %d)",
                          (unsigned long long)c->id, len, op->reply_bytes, (int)op->kind);
            }
            conn_on_replies(c, reply, len);
        }
        op_done(c, op);
    }
}

void commit_release(struct batch *done)
{
    for (size_t i = 0; i < done->nops; i++)
        conn_unref(done->ops[i].conn);
    batch_reset(done);
}

/* ---- replies in request order ----------------------------------------- */

void commit_reply(struct conn *c, uint32_t request_id, const uint8_t *frame, size_t len)
{
    if (c->outstanding_ops == 0) {
        conn_write_now(c, frame, len);
        return;
    }
    struct op *op = commit_enqueue(c->broker, c, OP_REPLY, 0);
    if (!op) {
        conn_fail(c, FERRY_EINTERNAL, "out of memory");
        return;
    }
    op->request_id = request_id;
    struct batch *b = c->broker->pending;
    op->out_off = b->out.len;
    op->out_len = len;
    commit_owe_reply(op, len);
    if (buf_append(&b->out, frame, len) < 0)
        op->out_len = 0;
}

void commit_reply_error(struct conn *c, uint32_t request_id, int code, const char *msg)
{
    uint8_t frame[PROTO_HEADER_BYTES + 4 + 512];
    struct proto_writer w;
    size_t mlen = strlen(msg);
    if (mlen > 512)
        mlen = 512;
    proto_writer_init(&w, frame, sizeof(frame));
    proto_encode_error(&w, request_id, 0, (uint16_t)-code, msg, mlen);
    commit_reply(c, request_id, frame, w.len);
}

/* Its listings would only be thrown away (the batch with the worker
 * cannot be touched; it is answered, to nobody, when it returns). */
void commit_conn_closed(struct broker *b, struct conn *c)
{
    struct batch *p = b->pending;
    if (c->outstanding_ops)
        for (size_t i = 0; i < p->nops; i++)
            if (p->ops[i].conn == c && p->ops[i].kind == OP_TOPICS) {
                p->ops[i].kind = OP_REPLY;
                p->ops[i].out_len = 0;
            }
}
