/*
 * fuzz_proto.c - fuzz target for the protocol codec (proto/proto.c).
 *
 * The input is treated as a byte stream from a peer: frames are decoded one
 * after another, as a connection's read loop would, until the decoder asks
 * for more or reports an error. For every frame it accepts, the target checks
 * the promises proto.h makes and aborts when one is broken:
 *   - the result is bytes consumed, 0, or one of the documented errors;
 *   - every slice lies inside the frame;
 *   - every iterator yields exactly the frame's count and ends at the end of
 *     its bytes (so walking a decoded frame cannot fail);
 *   - the frame minus its last byte asks for more;
 *   - every frame re-encodes, through the public encoders, to the same bytes
 *     (the encoding is canonical; see check_reencoding() for the exceptions),
 *     the re-encoding decodes to the same fields, and one byte less of room
 *     makes the encoder fail without writing past its buffer;
 *   - proto_deliver_bytes() is the size of the DELIVER it describes.
 *
 * Built with -Dfuzzing=true this is a libFuzzer binary; otherwise replay.c
 * supplies main() and the committed corpus runs as a test.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

/* The limit the broker applies after the handshake. */
#define FUZZ_MAX_FRAME PROTO_DEFAULT_MAX_FRAME

static void check_slice(struct proto_slice s, const uint8_t *lo, const uint8_t *hi)
{
    if (s.len == 0)
        return;
    CHECK(s.ptr != NULL && s.ptr >= lo && s.ptr <= hi && s.len <= (size_t)(hi - s.ptr));
}

static int slice_eq(struct proto_slice a, struct proto_slice b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

/* Walks count headers from an initialised iterator over the encoded
 * headers slice into out (room for PROTO_MAX_HEADERS). */
static void walk_header_iter(struct proto_header_iter *it, uint16_t count,
                             struct proto_slice headers, const uint8_t *lo, const uint8_t *hi,
                             struct proto_header *out)
{
    struct proto_header h;
    uint16_t n = 0;

    CHECK(count <= PROTO_MAX_HEADERS);
    check_slice(headers, lo, hi);
    while (proto_header_next(it, &h)) {
        CHECK(n < count);
        CHECK(h.name.len >= 1 && h.name.len <= PROTO_MAX_HEADER_NAME);
        check_slice(h.name, lo, hi);
        check_slice(h.value, lo, hi);
        CHECK(h.name.ptr >= headers.ptr && h.value.ptr + h.value.len <= headers.ptr + headers.len);
        out[n++] = h;
    }
    CHECK(n == count);
    CHECK(it->p == it->end);
}

/* Walks a message's headers into out (room for PROTO_MAX_HEADERS). */
static void walk_headers(const struct proto_msg *m, const uint8_t *lo, const uint8_t *hi,
                         struct proto_header *out)
{
    struct proto_header_iter it;

    proto_header_iter_init(&it, m);
    walk_header_iter(&it, m->header_count, m->headers, lo, hi, out);
}

/* The same for a DELIVER's headers. */
static void walk_deliver_headers(const struct proto_deliver *d, const uint8_t *lo,
                                 const uint8_t *hi, struct proto_header *out)
{
    struct proto_header_iter it;

    proto_deliver_header_iter_init(&it, d);
    walk_header_iter(&it, d->header_count, d->headers, lo, hi, out);
}

/* A topic or group name as the decoder promises it; the semantic checks
 * give one of their documented answers. */
static void check_name(struct proto_slice s, const uint8_t *lo, const uint8_t *hi)
{
    int rc;

    CHECK(s.len <= PROTO_MAX_TOPIC && s.len <= PROTO_MAX_GROUP);
    check_slice(s, lo, hi);
    rc = proto_topic_valid(s.ptr, s.len);
    CHECK(rc == 0 || rc == FERRY_EINVALID_TOPIC);
    rc = proto_sub_topic_valid(s.ptr, s.len);
    CHECK(rc == 0 || rc == FERRY_EINVALID_TOPIC);
    /* Every publishable name is also subscribable. */
    if (proto_topic_valid(s.ptr, s.len) == 0)
        CHECK(rc == 0);
    rc = proto_group_valid(s.ptr, s.len);
    CHECK(rc == (proto_topic_valid(s.ptr, s.len) == 0 ? 0 : FERRY_EINVALID_GROUP));
}

static void check_msg(const struct proto_msg *m, const uint8_t *lo, const uint8_t *hi)
{
    struct proto_header headers[PROTO_MAX_HEADERS];
    uint64_t size;
    int rc;

    CHECK(m->topic.len <= PROTO_MAX_TOPIC && m->id.len <= PROTO_MAX_ID &&
          m->key.len <= PROTO_MAX_KEY);
    check_slice(m->topic, lo, hi);
    check_slice(m->id, lo, hi);
    check_slice(m->key, lo, hi);
    check_slice(m->payload, lo, hi);
    walk_headers(m, lo, hi, headers);

    size = proto_msg_size(m);
    CHECK(size >= (uint64_t)m->key.len + m->payload.len);
    CHECK(size <= (uint64_t)(hi - lo));
    rc = proto_msg_check(m, PROTO_DEFAULT_MAX_MESSAGE);
    CHECK(rc == 0 || rc == FERRY_EINVALID_TOPIC || rc == FERRY_EINVALID_ID ||
          rc == FERRY_EMESSAGE_TOO_LARGE);
    if (rc == 0)
        CHECK(proto_topic_valid(m->topic.ptr, m->topic.len) == 0);
    rc = proto_id_valid(m->id.ptr, m->id.len);
    CHECK(rc == 0 || rc == FERRY_EINVALID_ID);
}

/* Checks a decoded frame's fields and walks every iterator over it. */
static void walk_frame(const struct proto_frame *f, const uint8_t *lo, const uint8_t *hi)
{
    check_slice(f->body, lo, hi);
    CHECK(f->body.len == (size_t)(hi - lo) - PROTO_HEADER_BYTES);

    switch (f->type) {
    case PROTO_HELLO:
        CHECK(f->u.hello.client_name.len <= PROTO_MAX_CLIENT_NAME);
        CHECK(f->u.hello.token.len <= PROTO_MAX_TOKEN);
        check_slice(f->u.hello.client_name, lo, hi);
        check_slice(f->u.hello.token, lo, hi);
        break;
    case PROTO_HELLO_OK:
        check_slice(f->u.hello_ok.server_name, lo, hi);
        break;
    case PROTO_ERROR:
        CHECK(f->u.error.code >= 1 && f->u.error.code <= FERRY_WIRE_CODE_MAX);
        CHECK(f->u.error.message.len <= PROTO_MAX_ERROR_TEXT);
        check_slice(f->u.error.message, lo, hi);
        CHECK(proto_strerror(f->u.error.code) != NULL);
        break;
    case PROTO_PING:
    case PROTO_PONG:
    case PROTO_TOPICS:
        CHECK(f->body.len == 0);
        break;
    case PROTO_PUBLISH: {
        struct proto_msg_iter it;
        struct proto_msg m;
        uint32_t n = 0;

        CHECK(f->u.publish.count >= 1 && f->u.publish.count <= PROTO_MAX_BATCH);
        check_slice(f->u.publish.msgs, lo, hi);
        proto_msg_iter_init(&it, &f->u.publish);
        while (proto_msg_next(&it, &m)) {
            check_msg(&m, lo, hi);
            n++;
        }
        CHECK(n == f->u.publish.count);
        CHECK(it.p == it.end);
        break;
    }
    case PROTO_PUBLISH_ACK: {
        struct proto_ack_iter it;
        struct proto_ack_entry a;
        uint32_t n = 0;

        CHECK(f->u.publish_ack.count >= 1 && f->u.publish_ack.count <= PROTO_MAX_BATCH);
        check_slice(f->u.publish_ack.acks, lo, hi);
        proto_ack_iter_init(&it, &f->u.publish_ack);
        while (proto_ack_next(&it, &a)) {
            CHECK(a.id.len <= PROTO_MAX_ID);
            check_slice(a.id, lo, hi);
            n++;
        }
        CHECK(n == f->u.publish_ack.count);
        CHECK(it.p == it.end);
        break;
    }
    case PROTO_TOPICS_OK: {
        struct proto_topic_iter it;
        struct proto_topic_info t;
        uint32_t n = 0;

        CHECK(f->u.topics_ok.count <= PROTO_MAX_TOPICS);
        check_slice(f->u.topics_ok.entries, lo, hi);
        proto_topic_iter_init(&it, &f->u.topics_ok);
        while (proto_topic_next(&it, &t)) {
            CHECK(t.name.len <= PROTO_MAX_TOPIC);
            check_slice(t.name, lo, hi);
            n++;
        }
        CHECK(n == f->u.topics_ok.count);
        CHECK(it.p == it.end);
        break;
    }
    case PROTO_SUBSCRIBE:
        CHECK(f->u.subscribe.sub_id != 0);
        check_name(f->u.subscribe.topic, lo, hi);
        check_name(f->u.subscribe.group, lo, hi);
        CHECK(f->u.subscribe.start <= PROTO_START_TIME);
        CHECK(f->u.subscribe.max_in_flight >= 1 &&
              f->u.subscribe.max_in_flight <= PROTO_MAX_WINDOW);
        break;
    case PROTO_SUBSCRIBE_OK:
        CHECK(f->u.subscribe_ok.sub_id != 0);
        break;
    case PROTO_DELIVER: {
        struct proto_header headers[PROTO_MAX_HEADERS];
        const struct proto_deliver *d = &f->u.deliver;

        CHECK(f->request_id == 0 && d->sub_id != 0 && d->attempt >= 1);
        CHECK(d->id.len <= PROTO_MAX_ID && d->key.len <= PROTO_MAX_KEY);
        check_slice(d->id, lo, hi);
        check_slice(d->key, lo, hi);
        check_slice(d->payload, lo, hi);
        walk_deliver_headers(d, lo, hi, headers);
        CHECK(proto_deliver_bytes(d) == (size_t)(hi - lo));
        break;
    }
    case PROTO_ACK:
        CHECK(f->u.ack.sub_id != 0);
        CHECK(f->u.ack.count >= 1 && f->u.ack.count <= PROTO_MAX_ACKS);
        CHECK(f->u.ack.seqs.len == (size_t)f->u.ack.count * 8);
        check_slice(f->u.ack.seqs, lo, hi);
        break;
    case PROTO_NACK:
        CHECK(f->u.nack.sub_id != 0);
        CHECK(f->u.nack.reason.len <= PROTO_MAX_REASON);
        check_slice(f->u.nack.reason, lo, hi);
        break;
    case PROTO_TOUCH:
    case PROTO_UNSUBSCRIBE:
        CHECK(f->u.sub_op.sub_id != 0);
        if (f->type == PROTO_UNSUBSCRIBE)
            CHECK(f->u.sub_op.value == 0);
        break;
    case PROTO_CREDIT:
        CHECK(f->u.sub_op.sub_id != 0);
        CHECK(f->u.sub_op.value >= 1 && f->u.sub_op.value <= PROTO_MAX_WINDOW);
        break;
    case PROTO_ACK_OK: {
        struct proto_ack_ok_iter it;
        uint64_t seq;
        uint16_t code;
        uint32_t n = 0;

        CHECK(f->u.ack_ok.count <= PROTO_MAX_ACKS);
        check_slice(f->u.ack_ok.entries, lo, hi);
        CHECK(f->u.ack_ok.entries.len == (size_t)f->u.ack_ok.count * 10);
        proto_ack_ok_iter_init(&it, &f->u.ack_ok);
        while (proto_ack_ok_next(&it, &seq, &code)) {
            CHECK(code <= FERRY_WIRE_CODE_MAX);
            CHECK(proto_strerror(code) != NULL);
            n++;
        }
        CHECK(n == f->u.ack_ok.count);
        CHECK(it.p == it.end);
        break;
    }
    case PROTO_SEEK:
        check_name(f->u.seek.topic, lo, hi);
        check_name(f->u.seek.group, lo, hi);
        CHECK(f->u.seek.start <= PROTO_START_TIME);
        break;
    case PROTO_REDRIVE:
        check_name(f->u.redrive.topic, lo, hi);
        check_name(f->u.redrive.group, lo, hi);
        break;
    case PROTO_FLOOR:
        check_name(f->u.floor.topic, lo, hi);
        check_name(f->u.floor.group, lo, hi);
        break;
    case PROTO_FLOOR_OK: {
        const struct proto_floor_ok *fo = &f->u.floor_ok;
        CHECK(fo->count <= PROTO_MAX_FLOOR_KEEP && fo->seqs.len == 8 * (size_t)fo->count);
        check_slice(fo->seqs, lo, hi);
        uint64_t prev = 0;
        for (uint16_t i = 0; i < fo->count; i++) {
            uint64_t seq = proto_rd64(fo->seqs.ptr + 8 * (size_t)i);
            CHECK(seq > prev && seq < fo->floor);
            prev = seq;
        }
        break;
    }
    case PROTO_GROUPS:
        check_name(f->u.groups.topic, lo, hi);
        break;
    case PROTO_TOPIC_CONFIG:
        check_name(f->u.topic_config.topic, lo, hi);
        CHECK(f->u.topic_config.delete_acked <= 1 ||
              f->u.topic_config.delete_acked == PROTO_DELETE_ACKED_DEFAULT);
        break;
    case PROTO_GROUPS_OK: {
        struct proto_group_iter it;
        struct proto_group_info g;
        uint32_t n = 0;

        CHECK(f->u.groups_ok.count <= PROTO_MAX_GROUPS);
        check_slice(f->u.groups_ok.entries, lo, hi);
        proto_group_iter_init(&it, &f->u.groups_ok);
        while (proto_group_next(&it, &g)) {
            check_name(g.topic, lo, hi);
            check_name(g.group, lo, hi);
            n++;
        }
        CHECK(n == f->u.groups_ok.count);
        CHECK(it.p == it.end);
        break;
    }
    case PROTO_PEEK:
        check_name(f->u.peek.topic, lo, hi);
        CHECK(f->u.peek.max_messages >= 1 && f->u.peek.max_messages <= PROTO_MAX_PEEK);
        break;
    case PROTO_PEEK_OK: {
        struct proto_peek_iter it;
        struct proto_deliver d;
        struct proto_header h;
        uint32_t n = 0;
        CHECK(f->u.peek_ok.count <= PROTO_MAX_PEEK);
        check_slice(f->u.peek_ok.entries, lo, hi);
        proto_peek_iter_init(&it, &f->u.peek_ok);
        while (proto_peek_next(&it, &d)) {
            check_slice(d.id, lo, hi);
            check_slice(d.key, lo, hi);
            check_slice(d.payload, lo, hi);
            walk_deliver_headers(&d, lo, hi, &h);
            n++;
        }
        CHECK(n == f->u.peek_ok.count);
        CHECK(it.p == it.end);
        break;
    }
    case PROTO_DELETE:
        check_name(f->u.del.topic, lo, hi);
        CHECK(f->u.del.topic.len >= 1);
        check_slice(f->u.del.group, lo, hi);
        CHECK(f->u.del.group.len <= PROTO_MAX_GROUP);
        CHECK((f->u.del.flags & ~PROTO_DELETE_FORCE) == 0);
        break;
    case PROTO_DELETE_OK:
        break;
    case PROTO_SUB_END:
        CHECK(f->request_id == 0 && f->u.sub_end.sub_id != 0);
        CHECK(f->u.sub_end.code >= 1 && f->u.sub_end.code <= FERRY_WIRE_CODE_MAX);
        check_slice(f->u.sub_end.message, lo, hi);
        break;
    default:
        /* proto_decode() returns > 0 only for the types above. */
        CHECK(0);
        break;
    }
    CHECK(!proto_type_reserved(f->type));
}

/* Room for the sequences of one ACK while it is re-encoded. */
static uint64_t ack_seqs[PROTO_MAX_ACKS];

/* Encodes f again with the public encoders; returns the encoder's result. */
static int reencode(const struct proto_frame *f, struct proto_writer *w)
{
    size_t start;

    switch (f->type) {
    case PROTO_HELLO:
        return proto_encode_hello(w, f->request_id, &f->u.hello);
    case PROTO_HELLO_OK:
        return proto_encode_hello_ok(w, f->request_id, &f->u.hello_ok);
    case PROTO_ERROR:
        return proto_encode_error(w, f->request_id, f->flags, f->u.error.code,
                                  (const char *)f->u.error.message.ptr, f->u.error.message.len);
    case PROTO_PUBLISH: {
        struct proto_header headers[PROTO_MAX_HEADERS];
        struct proto_msg_iter it;
        struct proto_header_iter hit;
        struct proto_msg m;
        size_t total = 0;
        uint16_t n;

        start = proto_publish_begin(w, f->request_id);
        proto_msg_iter_init(&it, &f->u.publish);
        while (proto_msg_next(&it, &m)) {
            proto_header_iter_init(&hit, &m);
            n = 0;
            while (n < m.header_count && proto_header_next(&hit, &headers[n]))
                n++;
            CHECK(n == m.header_count);
            total += proto_publish_msg_bytes(&m, headers);
            proto_publish_add(w, &m, headers);
        }
        CHECK(total == f->u.publish.msgs.len);
        return proto_publish_end(w, start, f->u.publish.count);
    }
    case PROTO_PUBLISH_ACK: {
        struct proto_ack_iter it;
        struct proto_ack_entry a;

        start = proto_publish_ack_begin(w, f->request_id);
        proto_ack_iter_init(&it, &f->u.publish_ack);
        while (proto_ack_next(&it, &a))
            proto_publish_ack_add(w, a.seq, a.flags, a.id.ptr, a.id.len);
        return proto_publish_ack_end(w, start, f->u.publish_ack.count);
    }
    case PROTO_TOPICS_OK: {
        struct proto_topic_iter it;
        struct proto_topic_info t;

        start = proto_topics_ok_begin(w, f->request_id);
        proto_topic_iter_init(&it, &f->u.topics_ok);
        while (proto_topic_next(&it, &t))
            proto_topics_ok_add(w, &t);
        return proto_topics_ok_end(w, start, f->u.topics_ok.count);
    }
    case PROTO_SUBSCRIBE:
        return proto_encode_subscribe(w, f->request_id, &f->u.subscribe);
    case PROTO_SUBSCRIBE_OK:
        return proto_encode_subscribe_ok(w, f->request_id, &f->u.subscribe_ok);
    case PROTO_DELIVER:
        return proto_encode_deliver(w, f->flags, &f->u.deliver);
    case PROTO_ACK: {
        uint16_t i;

        for (i = 0; i < f->u.ack.count; i++)
            ack_seqs[i] = proto_rd64(f->u.ack.seqs.ptr + (size_t)i * 8);
        return proto_encode_ack(w, f->request_id, f->u.ack.sub_id, ack_seqs, f->u.ack.count);
    }
    case PROTO_NACK:
        return proto_encode_nack(w, f->request_id, &f->u.nack);
    case PROTO_TOUCH:
    case PROTO_CREDIT:
    case PROTO_UNSUBSCRIBE:
        return proto_encode_sub_op(w, f->type, f->request_id, f->u.sub_op.sub_id,
                                   f->u.sub_op.value);
    case PROTO_ACK_OK: {
        struct proto_ack_ok_iter it;
        uint64_t seq;
        uint16_t code;

        start = proto_ack_ok_begin(w, f->request_id);
        proto_ack_ok_iter_init(&it, &f->u.ack_ok);
        while (proto_ack_ok_next(&it, &seq, &code))
            proto_ack_ok_add(w, seq, code);
        return proto_ack_ok_end(w, start, f->u.ack_ok.count);
    }
    case PROTO_SEEK:
        return proto_encode_seek(w, f->request_id, &f->u.seek);
    case PROTO_REDRIVE:
        return proto_encode_redrive(w, f->request_id, &f->u.redrive);
    case PROTO_FLOOR:
        return proto_encode_floor(w, f->request_id, &f->u.floor);
    case PROTO_FLOOR_OK: {
        uint64_t seqs[PROTO_MAX_FLOOR_KEEP];
        for (uint16_t i = 0; i < f->u.floor_ok.count; i++)
            seqs[i] = proto_rd64(f->u.floor_ok.seqs.ptr + 8 * (size_t)i);
        return proto_encode_floor_ok(w, f->request_id, f->u.floor_ok.floor, seqs,
                                     f->u.floor_ok.count);
    }
    case PROTO_GROUPS:
        return proto_encode_groups(w, f->request_id, f->u.groups.topic.ptr, f->u.groups.topic.len);
    case PROTO_TOPIC_CONFIG:
        return proto_encode_topic_config(w, f->request_id, &f->u.topic_config);
    case PROTO_GROUPS_OK: {
        struct proto_group_iter it;
        struct proto_group_info g;

        start = proto_groups_ok_begin(w, f->request_id);
        proto_group_iter_init(&it, &f->u.groups_ok);
        while (proto_group_next(&it, &g))
            proto_groups_ok_add(w, &g);
        return proto_groups_ok_end(w, start, f->u.groups_ok.count);
    }
    case PROTO_PEEK:
        return proto_encode_peek(w, f->request_id, &f->u.peek);
    case PROTO_PEEK_OK: {
        struct proto_peek_iter it;
        struct proto_deliver d;
        size_t pstart =
            proto_peek_ok_begin(w, f->request_id, f->u.peek_ok.next_seq, f->u.peek_ok.head_seq);
        proto_peek_iter_init(&it, &f->u.peek_ok);
        while (proto_peek_next(&it, &d))
            proto_peek_ok_add(w, &d);
        return proto_peek_ok_end(w, pstart, f->u.peek_ok.count, f->u.peek_ok.next_seq);
    }
    case PROTO_DELETE:
        return proto_encode_delete(w, f->request_id, &f->u.del);
    case PROTO_DELETE_OK:
        return proto_encode_delete_ok(w, f->request_id, &f->u.delete_ok);
    case PROTO_SUB_END:
        return proto_encode_sub_end(w, &f->u.sub_end);
    default: /* PING, PONG, TOPICS */
        return proto_encode_empty(w, f->type, f->request_id);
    }
}

static void check_same_msgs(const struct proto_publish *a, const struct proto_publish *b)
{
    struct proto_msg_iter ia, ib;
    struct proto_header_iter ha, hb;
    struct proto_msg ma, mb;
    struct proto_header x, y;

    CHECK(a->count == b->count);
    proto_msg_iter_init(&ia, a);
    proto_msg_iter_init(&ib, b);
    while (proto_msg_next(&ia, &ma)) {
        CHECK(proto_msg_next(&ib, &mb));
        CHECK(slice_eq(ma.topic, mb.topic) && slice_eq(ma.id, mb.id) && slice_eq(ma.key, mb.key));
        CHECK(ma.deliver_at_ms == mb.deliver_at_ms && ma.header_count == mb.header_count);
        CHECK(slice_eq(ma.payload, mb.payload));
        proto_header_iter_init(&ha, &ma);
        proto_header_iter_init(&hb, &mb);
        while (proto_header_next(&ha, &x)) {
            CHECK(proto_header_next(&hb, &y));
            CHECK(slice_eq(x.name, y.name) && slice_eq(x.value, y.value));
        }
        CHECK(!proto_header_next(&hb, &y));
    }
    CHECK(!proto_msg_next(&ib, &mb));
}

static void check_same_acks(const struct proto_publish_ack *a, const struct proto_publish_ack *b)
{
    struct proto_ack_iter ia, ib;
    struct proto_ack_entry x, y;

    CHECK(a->count == b->count);
    proto_ack_iter_init(&ia, a);
    proto_ack_iter_init(&ib, b);
    while (proto_ack_next(&ia, &x)) {
        CHECK(proto_ack_next(&ib, &y));
        CHECK(x.seq == y.seq && x.flags == y.flags && slice_eq(x.id, y.id));
    }
    CHECK(!proto_ack_next(&ib, &y));
}

static void check_same_topics(const struct proto_topics_ok *a, const struct proto_topics_ok *b)
{
    struct proto_topic_iter ia, ib;
    struct proto_topic_info x, y;

    CHECK(a->count == b->count);
    proto_topic_iter_init(&ia, a);
    proto_topic_iter_init(&ib, b);
    while (proto_topic_next(&ia, &x)) {
        CHECK(proto_topic_next(&ib, &y));
        CHECK(slice_eq(x.name, y.name) && x.head_seq == y.head_seq && x.first_seq == y.first_seq &&
              x.message_count == y.message_count && x.bytes == y.bytes &&
              x.created_ms == y.created_ms);
    }
    CHECK(!proto_topic_next(&ib, &y));
}

static void check_same_deliver(const struct proto_deliver *a, const struct proto_deliver *b)
{
    struct proto_header_iter ha, hb;
    struct proto_header x, y;

    CHECK(a->sub_id == b->sub_id && a->seq == b->seq && a->attempt == b->attempt &&
          a->ts_ms == b->ts_ms && a->header_count == b->header_count);
    CHECK(slice_eq(a->id, b->id) && slice_eq(a->key, b->key) && slice_eq(a->payload, b->payload));
    CHECK(slice_eq(a->headers, b->headers));
    proto_deliver_header_iter_init(&ha, a);
    proto_deliver_header_iter_init(&hb, b);
    while (proto_header_next(&ha, &x)) {
        CHECK(proto_header_next(&hb, &y));
        CHECK(slice_eq(x.name, y.name) && slice_eq(x.value, y.value));
    }
    CHECK(!proto_header_next(&hb, &y));
}

static void check_same_ack_oks(const struct proto_ack_ok *a, const struct proto_ack_ok *b)
{
    struct proto_ack_ok_iter ia, ib;
    uint64_t sa, sb;
    uint16_t ca, cb;

    CHECK(a->count == b->count);
    proto_ack_ok_iter_init(&ia, a);
    proto_ack_ok_iter_init(&ib, b);
    while (proto_ack_ok_next(&ia, &sa, &ca)) {
        CHECK(proto_ack_ok_next(&ib, &sb, &cb));
        CHECK(sa == sb && ca == cb);
    }
    CHECK(!proto_ack_ok_next(&ib, &sb, &cb));
}

static void check_same_groups(const struct proto_groups_ok *a, const struct proto_groups_ok *b)
{
    struct proto_group_iter ia, ib;
    struct proto_group_info x, y;

    CHECK(a->count == b->count);
    proto_group_iter_init(&ia, a);
    proto_group_iter_init(&ib, b);
    while (proto_group_next(&ia, &x)) {
        CHECK(proto_group_next(&ib, &y));
        CHECK(slice_eq(x.topic, y.topic) && slice_eq(x.group, y.group));
        CHECK(x.cursor == y.cursor && x.ack_floor == y.ack_floor && x.lag == y.lag &&
              x.in_flight == y.in_flight && x.consumers == y.consumers &&
              x.redelivered == y.redelivered && x.dead_lettered == y.dead_lettered &&
              x.oldest_unacked_ms == y.oldest_unacked_ms && x.ack_wait_ms == y.ack_wait_ms &&
              x.max_deliveries == y.max_deliveries);
    }
    CHECK(!proto_group_next(&ib, &y));
}

/* Decoded f (from the n bytes at frame) and g (its re-encoding) must agree. */
static void check_same_frame(const struct proto_frame *f, const struct proto_frame *g)
{
    CHECK(g->type == f->type && g->request_id == f->request_id);
    /* ERROR, DELIVER, SUBSCRIBE and DELETE encoders take the flags; the
     * others write 0. */
    CHECK(g->flags ==
          (f->type == PROTO_ERROR || f->type == PROTO_DELIVER || f->type == PROTO_SUBSCRIBE
               ? f->flags
           : f->type == PROTO_DELETE ? (f->flags & PROTO_DELETE_FORCE)
                                     : 0));
    switch (f->type) {
    case PROTO_HELLO:
        CHECK(g->u.hello.version == f->u.hello.version);
        CHECK(slice_eq(g->u.hello.client_name, f->u.hello.client_name));
        CHECK(slice_eq(g->u.hello.token, f->u.hello.token));
        break;
    case PROTO_HELLO_OK:
        CHECK(g->u.hello_ok.version == f->u.hello_ok.version);
        CHECK(g->u.hello_ok.max_frame_bytes == f->u.hello_ok.max_frame_bytes);
        CHECK(g->u.hello_ok.max_message_bytes == f->u.hello_ok.max_message_bytes);
        CHECK(g->u.hello_ok.max_batch == f->u.hello_ok.max_batch);
        CHECK(g->u.hello_ok.dedupe_window_ms == f->u.hello_ok.dedupe_window_ms);
        CHECK(slice_eq(g->u.hello_ok.server_name, f->u.hello_ok.server_name));
        break;
    case PROTO_ERROR:
        CHECK(g->u.error.code == f->u.error.code);
        CHECK(slice_eq(g->u.error.message, f->u.error.message));
        break;
    case PROTO_PUBLISH:
        check_same_msgs(&g->u.publish, &f->u.publish);
        break;
    case PROTO_PUBLISH_ACK:
        check_same_acks(&g->u.publish_ack, &f->u.publish_ack);
        break;
    case PROTO_TOPICS_OK:
        check_same_topics(&g->u.topics_ok, &f->u.topics_ok);
        break;
    case PROTO_SUBSCRIBE: {
        const struct proto_subscribe *a = &f->u.subscribe, *b = &g->u.subscribe;

        CHECK(a->sub_id == b->sub_id && slice_eq(a->topic, b->topic) &&
              slice_eq(a->group, b->group) && a->start == b->start &&
              a->start_value == b->start_value && a->max_in_flight == b->max_in_flight &&
              a->ack_wait_ms == b->ack_wait_ms && a->max_deliveries == b->max_deliveries);
        break;
    }
    case PROTO_SUBSCRIBE_OK: {
        const struct proto_subscribe_ok *a = &f->u.subscribe_ok, *b = &g->u.subscribe_ok;

        CHECK(a->sub_id == b->sub_id && a->cursor == b->cursor && a->head_seq == b->head_seq &&
              a->ack_wait_ms == b->ack_wait_ms && a->max_deliveries == b->max_deliveries);
        break;
    }
    case PROTO_DELIVER:
        check_same_deliver(&f->u.deliver, &g->u.deliver);
        break;
    case PROTO_ACK:
        CHECK(f->u.ack.sub_id == g->u.ack.sub_id && f->u.ack.count == g->u.ack.count);
        CHECK(slice_eq(f->u.ack.seqs, g->u.ack.seqs));
        break;
    case PROTO_NACK:
        CHECK(f->u.nack.sub_id == g->u.nack.sub_id && f->u.nack.seq == g->u.nack.seq &&
              f->u.nack.delay_ms == g->u.nack.delay_ms);
        CHECK(slice_eq(f->u.nack.reason, g->u.nack.reason));
        break;
    case PROTO_TOUCH:
    case PROTO_CREDIT:
    case PROTO_UNSUBSCRIBE:
        CHECK(f->u.sub_op.sub_id == g->u.sub_op.sub_id && f->u.sub_op.value == g->u.sub_op.value);
        break;
    case PROTO_ACK_OK:
        check_same_ack_oks(&f->u.ack_ok, &g->u.ack_ok);
        break;
    case PROTO_SEEK:
        CHECK(slice_eq(f->u.seek.topic, g->u.seek.topic) &&
              slice_eq(f->u.seek.group, g->u.seek.group) && f->u.seek.start == g->u.seek.start &&
              f->u.seek.value == g->u.seek.value);
        break;
    case PROTO_REDRIVE:
        CHECK(slice_eq(f->u.redrive.topic, g->u.redrive.topic) &&
              slice_eq(f->u.redrive.group, g->u.redrive.group) &&
              f->u.redrive.dead_seq == g->u.redrive.dead_seq);
        break;
    case PROTO_FLOOR:
        CHECK(slice_eq(f->u.floor.topic, g->u.floor.topic) &&
              slice_eq(f->u.floor.group, g->u.floor.group));
        break;
    case PROTO_FLOOR_OK:
        CHECK(f->u.floor_ok.floor == g->u.floor_ok.floor &&
              f->u.floor_ok.count == g->u.floor_ok.count &&
              slice_eq(f->u.floor_ok.seqs, g->u.floor_ok.seqs));
        break;
    case PROTO_GROUPS:
        CHECK(slice_eq(f->u.groups.topic, g->u.groups.topic));
        break;
    case PROTO_TOPIC_CONFIG: {
        const struct proto_topic_config *a = &f->u.topic_config, *b = &g->u.topic_config;
        CHECK(slice_eq(a->topic, b->topic) && a->max_age_ms == b->max_age_ms &&
              a->max_count == b->max_count && a->max_bytes == b->max_bytes &&
              a->delete_acked == b->delete_acked);
        break;
    }
    case PROTO_GROUPS_OK:
        check_same_groups(&f->u.groups_ok, &g->u.groups_ok);
        break;
    case PROTO_PEEK:
        CHECK(slice_eq(f->u.peek.topic, g->u.peek.topic) &&
              f->u.peek.from_seq == g->u.peek.from_seq &&
              f->u.peek.from_time_ms == g->u.peek.from_time_ms &&
              f->u.peek.max_messages == g->u.peek.max_messages &&
              f->u.peek.max_bytes == g->u.peek.max_bytes);
        break;
    case PROTO_PEEK_OK:
        CHECK(f->u.peek_ok.next_seq == g->u.peek_ok.next_seq &&
              f->u.peek_ok.head_seq == g->u.peek_ok.head_seq &&
              f->u.peek_ok.count == g->u.peek_ok.count &&
              slice_eq(f->u.peek_ok.entries, g->u.peek_ok.entries));
        break;
    case PROTO_DELETE:
        CHECK(slice_eq(f->u.del.topic, g->u.del.topic) &&
              slice_eq(f->u.del.group, g->u.del.group) && f->u.del.flags == g->u.del.flags);
        break;
    case PROTO_DELETE_OK:
        CHECK(f->u.delete_ok.messages == g->u.delete_ok.messages &&
              f->u.delete_ok.groups == g->u.delete_ok.groups);
        break;
    case PROTO_SUB_END:
        CHECK(f->u.sub_end.sub_id == g->u.sub_end.sub_id &&
              f->u.sub_end.code == g->u.sub_end.code &&
              slice_eq(f->u.sub_end.message, g->u.sub_end.message));
        break;
    default:
        CHECK(g->body.len == 0);
        break;
    }
}

/*
 * Re-encodes f into a buffer of exactly the original's size. The encoding
 * is canonical, so the bytes are the original's except for undefined flag
 * bits (which encoders do not carry) and, in HELLO_OK, TOPICS_OK and
 * GROUPS_OK, fields a later revision appended (which decoders skip): those
 * make the re-encoding shorter.
 */
static void check_reencoding(const struct proto_frame *f, const uint8_t *frame, size_t n)
{
    struct proto_writer w;
    struct proto_frame g;
    uint8_t *buf;
    size_t len;
    int rc;

    buf = malloc(n);
    CHECK(buf != NULL);
    proto_writer_init(&w, buf, n);
    rc = reencode(f, &w);
    CHECK(rc == 0 && !w.overflow && w.len <= n);
    len = w.len;
    if (len == n) {
        CHECK(memcmp(buf, frame, 5) == 0);
        CHECK(memcmp(buf + 6, frame + 6, n - 6) == 0);
    } else {
        CHECK(f->type == PROTO_HELLO_OK || f->type == PROTO_TOPICS_OK ||
              f->type == PROTO_GROUPS_OK);
    }
    CHECK(proto_decode(buf, len, FUZZ_MAX_FRAME, &g) == (ptrdiff_t)len);
    check_same_frame(f, &g);
    free(buf);

    /* One byte short: the encoder fails and stays inside its buffer. */
    buf = malloc(len - 1);
    CHECK(buf != NULL);
    proto_writer_init(&w, buf, len - 1);
    CHECK(reencode(f, &w) == -1);
    CHECK(w.overflow && w.len <= len - 1);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t off = 0;

    if (size == 0)
        return 0;
    for (;;) {
        const uint8_t *frame = data + off;
        size_t left = size - off;
        struct proto_frame f, tmp;
        uint32_t length = 0;
        ptrdiff_t rc;
        size_t n;
        int peek;

        rc = proto_decode(frame, left, FUZZ_MAX_FRAME, &f);
        peek = proto_peek_header(frame, left, FUZZ_MAX_FRAME, &length, NULL, NULL);
        if (rc <= 0) {
            CHECK(rc == 0 || rc == FERRY_EMALFORMED || rc == FERRY_EFRAME_TOO_LARGE ||
                  rc == FERRY_EUNKNOWN_TYPE);
            /* Header errors are the peek's errors. */
            if (peek < 0)
                CHECK(rc == peek);
            return 0;
        }
        n = (size_t)rc;
        CHECK(n >= PROTO_HEADER_BYTES && n <= left && peek == PROTO_HEADER_BYTES);
        CHECK(length == n - 4 && length <= FUZZ_MAX_FRAME);

        walk_frame(&f, frame, frame + n);
        /* The same frame, its last byte missing, asks for more. */
        CHECK(proto_decode(frame, n - 1, FUZZ_MAX_FRAME, &tmp) == 0);
        /* A tighter limit refuses it only for its size. */
        rc = proto_decode(frame, n, PROTO_HANDSHAKE_MAX_FRAME, &tmp);
        CHECK(rc == (length > PROTO_HANDSHAKE_MAX_FRAME ? FERRY_EFRAME_TOO_LARGE : (ptrdiff_t)n));
        check_reencoding(&f, frame, n);
        off += n;
    }
}
