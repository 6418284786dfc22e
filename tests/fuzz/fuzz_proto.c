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
 *   - every frame the encoders can produce (all but a reserved type with a
 *     body) re-encodes, through the public encoders, to the same bytes (the
 *     encoding is canonical; see check_reencoding() for the two exceptions),
 *     the re-encoding decodes to the same fields, and one byte less of room
 *     makes the encoder fail without writing past its buffer.
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

/* Walks a message's headers into out (room for PROTO_MAX_HEADERS). */
static void walk_headers(const struct proto_msg *m, const uint8_t *lo, const uint8_t *hi,
                         struct proto_header *out)
{
    struct proto_header_iter it;
    struct proto_header h;
    uint16_t n = 0;

    CHECK(m->header_count <= PROTO_MAX_HEADERS);
    check_slice(m->headers, lo, hi);
    proto_header_iter_init(&it, m);
    while (proto_header_next(&it, &h)) {
        CHECK(n < m->header_count);
        CHECK(h.name.len >= 1 && h.name.len <= PROTO_MAX_HEADER_NAME);
        check_slice(h.name, lo, hi);
        check_slice(h.value, lo, hi);
        out[n++] = h;
    }
    CHECK(n == m->header_count);
    CHECK(it.p == it.end);
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
    default:
        CHECK(proto_type_reserved(f->type));
        break;
    }
}

/* Encodes f again with the public encoders. Returns the encoder's result,
 * or 1 for a frame the encoders cannot produce (a reserved type with a
 * body). */
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
    default:
        if (f->body.len > 0)
            return 1;
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

/* Decoded f (from the n bytes at frame) and g (its re-encoding) must agree. */
static void check_same_frame(const struct proto_frame *f, const struct proto_frame *g)
{
    CHECK(g->type == f->type && g->request_id == f->request_id);
    CHECK(g->flags == (f->type == PROTO_ERROR ? f->flags : 0));
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
    default:
        CHECK(g->body.len == 0);
        break;
    }
}

/*
 * Re-encodes f into a buffer of exactly the original's size. The encoding
 * is canonical, so the bytes are the original's except for undefined flag
 * bits (which encoders do not carry) and, in HELLO_OK and TOPICS_OK, fields
 * a later revision appended (which decoders skip): those make the
 * re-encoding shorter.
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
    if (rc == 1) {
        free(buf);
        return;
    }
    CHECK(rc == 0 && !w.overflow && w.len <= n);
    len = w.len;
    if (len == n) {
        CHECK(memcmp(buf, frame, 5) == 0);
        CHECK(memcmp(buf + 6, frame + 6, n - 6) == 0);
    } else {
        CHECK(f->type == PROTO_HELLO_OK || f->type == PROTO_TOPICS_OK);
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
