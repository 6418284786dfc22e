/*
 * batch.c - growable buffers and the op list of a group-commit batch.
 */
#include "batch.h"

#include <stdlib.h>
#include <string.h>

void batch_publish_of(const struct batch *b, const struct op *op, struct proto_publish *pub)
{
    const uint8_t *p = b->in.data + op->in_off;
    size_t n = op->in_len;
    memset(pub, 0, sizeof(*pub));
    pub->count = op->count;
    if (op->producer) {
        uint16_t plen = proto_rd16(p);
        pub->has_producer = 1;
        pub->producer.ptr = p + 2;
        pub->producer.len = plen;
        p += 2 + plen;
        n -= 2 + (size_t)plen;
    }
    pub->msgs.ptr = p;
    pub->msgs.len = n;
}

int buf_reserve(struct buf *b, size_t n)
{
    if (b->cap - b->len >= n)
        return 0;
    size_t need = b->len + n;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < need)
        cap *= 2;
    uint8_t *p = realloc(b->data, cap);
    if (!p)
        return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

int buf_append(struct buf *b, const void *p, size_t n)
{
    if (buf_reserve(b, n) < 0)
        return -1;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void buf_free(struct buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

struct op *batch_add(struct batch *b, enum op_kind kind)
{
    if (b->nops == b->cap_ops) {
        size_t cap = b->cap_ops ? b->cap_ops * 2 : 256;
        struct op *ops = realloc(b->ops, cap * sizeof(*ops));
        if (!ops)
            return NULL;
        b->ops = ops;
        b->cap_ops = cap;
    }
    struct op *op = &b->ops[b->nops++];
    memset(op, 0, sizeof(*op));
    op->kind = kind;
    return op;
}

void batch_reset(struct batch *b)
{
    b->nops = 0;
    b->in.len = 0;
    b->out.len = 0;
    b->topics.len = 0;
    b->messages = 0;
    b->maintenance = 0;
    b->commit_status = 0;
    b->commit_us = 0;
}

void batch_free(struct batch *b)
{
    free(b->ops);
    b->ops = NULL;
    b->nops = b->cap_ops = 0;
    buf_free(&b->in);
    buf_free(&b->out);
    buf_free(&b->topics);
}
