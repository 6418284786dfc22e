/*
 * batch.c - growable buffers, the op list and the result arrays of a
 * group-commit batch.
 */
#include "batch.h"

#include <stdlib.h>
#include <string.h>

void batch_publish_of(const struct batch *b, const struct op *op, struct proto_publish *pub)
{
    const struct op_publish *p = &op->u.publish;
    memset(pub, 0, sizeof(*pub));
    pub->count = p->count;
    if (p->has_producer) {
        pub->has_producer = 1;
        pub->producer.ptr = batch_bytes(b, p->producer);
        pub->producer.len = p->producer.len;
    }
    pub->msgs.ptr = batch_bytes(b, p->msgs);
    pub->msgs.len = p->msgs.len;
}

int batch_encode_publish_ack(const struct batch *b, const struct op *op, struct buf *out)
{
    const struct op_publish *p = &op->u.publish;
    const struct publish_result *res = (const struct publish_result *)b->results.data + p->results;
    size_t need = PROTO_HEADER_BYTES + 2 + (size_t)p->count * (8 + 1 + 2 + PROTO_MAX_ID);
    if (p->results + p->count > b->results.len || buf_reserve(out, need) < 0)
        return -1;
    struct proto_writer w;
    proto_writer_init(&w, out->data + out->len, out->cap - out->len);
    size_t start = proto_publish_ack_begin(&w, op->request_id);
    struct proto_publish pub;
    batch_publish_of(b, op, &pub);
    struct proto_msg_iter it;
    struct proto_msg m;
    proto_msg_iter_init(&it, &pub);
    for (uint16_t i = 0; i < p->count && proto_msg_next(&it, &m); i++) {
        const struct publish_result *r = &res[i];
        if (r->generated)
            proto_publish_ack_add(&w, r->seq, r->duplicate ? PROTO_ACK_DUPLICATE : 0, r->id,
                                  sizeof(r->id));
        else
            proto_publish_ack_add(&w, r->seq, r->duplicate ? PROTO_ACK_DUPLICATE : 0, m.id.ptr,
                                  m.id.len);
    }
    if (proto_publish_ack_end(&w, start, p->count) < 0)
        return -1;
    out->len += w.len;
    return 0;
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

void *vec_push(struct vec *v, size_t size)
{
    if (v->len == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 256;
        void *p = realloc(v->data, cap * size);
        if (!p)
            return NULL;
        v->data = p;
        v->cap = cap;
    }
    void *e = (uint8_t *)v->data + v->len++ * size;
    memset(e, 0, size);
    return e;
}

void vec_free(struct vec *v)
{
    free(v->data);
    v->data = NULL;
    v->len = v->cap = 0;
}

int batch_put(struct batch *b, const void *p, size_t n, struct op_bytes *out)
{
    out->off = b->in.len;
    out->len = n;
    return buf_append(&b->in, p, n);
}

/* Pads b->in to a multiple of 8 bytes (its data is malloc'd, so aligned). */
static int in_align(struct batch *b)
{
    static const uint8_t zero[8];
    size_t pad = (8 - b->in.len % 8) % 8;
    return buf_append(&b->in, zero, pad);
}

int batch_put_u64s(struct batch *b, const uint64_t *v, uint32_t n, struct op_array *out)
{
    if (in_align(b) < 0)
        return -1;
    out->off = b->in.len;
    out->n = n;
    return buf_append(&b->in, v, (size_t)n * sizeof(*v));
}

int batch_put_u32s(struct batch *b, const uint32_t *v, uint32_t n, struct op_array *out)
{
    if (in_align(b) < 0)
        return -1;
    out->off = b->in.len;
    out->n = n;
    return buf_append(&b->in, v, (size_t)n * sizeof(*v));
}

const uint8_t *batch_bytes(const struct batch *b, struct op_bytes r)
{
    return r.len ? b->in.data + r.off : (const uint8_t *)"";
}

const uint64_t *batch_u64s(const struct batch *b, struct op_array a)
{
    return (const uint64_t *)(const void *)(b->in.data + a.off);
}

const uint32_t *batch_u32s(const struct batch *b, struct op_array a)
{
    return (const uint32_t *)(const void *)(b->in.data + a.off);
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
    b->results.len = 0;
    b->fetched.len = 0;
    b->topic_updates.len = 0;
    b->topic_names.len = 0;
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
    vec_free(&b->results);
    vec_free(&b->fetched);
    vec_free(&b->topic_updates);
    buf_free(&b->topic_names);
}
