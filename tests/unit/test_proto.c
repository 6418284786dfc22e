/*
 * test_proto.c - unit tests for the protocol v1 codec (proto/proto.c).
 *
 * The frames below are written out byte by byte, one field per line, so a
 * test failure points at a field and a reader can check the layout against
 * docs/PROTOCOL.md without running anything. The five vectors marked "spec"
 * are also printed in the "Test vectors" section of docs/PROTOCOL.md; when
 * the test is given that file's path as argv[1] (meson does this), it checks
 * that the document still shows exactly these bytes.
 *
 * Decoding of truncated and hostile input always happens on an exactly-sized
 * heap copy, so a sanitizer build reports any read past the end.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto.h"

/* A proto_slice initialiser for a string literal. */
/* clang-format off */
#define SL(s) {(const uint8_t *)(s), sizeof(s) - 1}
/* clang-format on */

/* Set from argv[1]: docs/PROTOCOL.md, whose test vectors must match ours. */
static const char *spec_path;

/* clang-format off */

/* --- Spec vectors (also in docs/PROTOCOL.md) --------------------------- */

static const uint8_t v_hello[] = {
    0x00, 0x00, 0x00, 0x12, /* length 18 */
    0x01, /* type HELLO */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x01, /* request_id 1 */
    0x00, 0x01, /* version 1 */
    0x00, 0x03, 'a', 'p', 'p', /* client_name "app" */
    0x00, 0x03, 't', 'o', 'k', /* token "tok" */
};

static const uint8_t v_hello_ok[] = {
    0x00, 0x00, 0x00, 0x2a, /* length 42 */
    0x02, /* type HELLO_OK */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x01, /* request_id 1 */
    0x00, 0x01, /* version 1 */
    0x00, 0x40, 0x00, 0x00, /* max_frame_bytes 4 MiB */
    0x00, 0x10, 0x00, 0x00, /* max_message_bytes 1 MiB */
    0x00, 0x00, 0x27, 0x10, /* max_batch 10000 */
    0x00, 0x00, 0x00, 0x00, 0x05, 0x26, 0x5c, 0x00, /* dedupe_window_ms 24 h */
    0x00, 0x0c, 'f', 'e', 'r', 'r', 'y', 'd', ' ', '0', '.', '1', '.', '0', /* server_name "ferryd 0.1.0" */
};

static const uint8_t v_publish[] = {
    0x00, 0x00, 0x00, 0x36, /* length 54 */
    0x10, /* type PUBLISH */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x02, /* request_id 2 */
    0x00, 0x01, /* count 1 */
    0x00, 0x06, 'o', 'r', 'd', 'e', 'r', 's', /* topic "orders" */
    0x00, 0x02, 'o', '1', /* id "o1" */
    0x00, 0x00, /* key (empty) */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* deliver_at_ms 0 */
    0x00, 0x01, /* header_count 1 */
    0x00, 0x02, 'c', 't', /* header name "ct" */
    0x00, 0x04, 'j', 's', 'o', 'n', /* header value "json" */
    0x00, 0x00, 0x00, 0x08, '{', '"', 'i', 'd', '"', ':', '1', '}', /* payload "{"id":1}" */
};

static const uint8_t v_publish_ack[] = {
    0x00, 0x00, 0x00, 0x15, /* length 21 */
    0x11, /* type PUBLISH_ACK */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x02, /* request_id 2 */
    0x00, 0x01, /* count 1 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, /* seq 1 */
    0x00, /* flags */
    0x00, 0x02, 'o', '1', /* id "o1" */
};

static const uint8_t v_error[] = {
    0x00, 0x00, 0x00, 0x13, /* length 19 */
    0x03, /* type ERROR */
    0x01, /* flags */
    0x00, 0x00, 0x00, 0x00, /* request_id 0 */
    0x00, 0x01, /* code 1 MALFORMED */
    0x00, 0x09, 'b', 'a', 'd', ' ', 'f', 'r', 'a', 'm', 'e', /* message "bad frame" */
};

/* --- Further frames -------------------------------------------------- */

static const uint8_t v_ping[] = {
    0x00, 0x00, 0x00, 0x06, /* length 6 */
    0x04, /* type PING */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x07, /* request_id 7 */
};

static const uint8_t v_pong[] = {
    0x00, 0x00, 0x00, 0x06, /* length 6 */
    0x05, /* type PONG */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x07, /* request_id 7 */
};

static const uint8_t v_topics[] = {
    0x00, 0x00, 0x00, 0x06, /* length 6 */
    0x30, /* type TOPICS */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x03, /* request_id 3 */
};

static const uint8_t v_topics_ok[] = {
    0x00, 0x00, 0x00, 0x6f, /* length 111 */
    0x31, /* type TOPICS_OK */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x03, /* request_id 3 */
    0x00, 0x00, 0x00, 0x02, /* count 2 */
    0x00, 0x30, /* entry_length 48 */
    0x00, 0x06, 'o', 'r', 'd', 'e', 'r', 's', /* name "orders" */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, /* head_seq 42 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, /* first_seq 1 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, /* message_count 42 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0xd2, /* bytes 1234 */
    0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, /* created_ms */
    0x00, 0x31, /* entry_length 49 (2 appended bytes) */
    0x00, 0x05, 'a', 'u', 'd', 'i', 't', /* name "audit" */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* head_seq 0 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* first_seq 0 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* message_count 0 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* bytes 0 */
    0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x01, /* created_ms */
    0xbe, 0xef, /* appended by a later revision */
};

static const uint8_t v_publish_batch[] = {
    0x00, 0x00, 0x00, 0x7f, /* length 127 */
    0x10, /* type PUBLISH */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x09, /* request_id 9 */
    0x00, 0x03, /* count 3 */
    0x00, 0x06, 'o', 'r', 'd', 'e', 'r', 's', /* [0] topic "orders" */
    0x00, 0x02, 'o', '1', /* id "o1" */
    0x00, 0x03, 'c', '4', '2', /* key "c42" */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* deliver_at_ms */
    0x00, 0x02, /* header_count 2 */
    0x00, 0x02, 'c', 't', /* name "ct" */
    0x00, 0x04, 'j', 's', 'o', 'n', /* value "json" */
    0x00, 0x05, 't', 'r', 'a', 'c', 'e', /* name "trace" */
    0x00, 0x03, 'a', 'b', 'c', /* value "abc" */
    0x00, 0x00, 0x00, 0x02, '{', '}', /* payload "{}" */
    0x00, 0x06, 'o', 'r', 'd', 'e', 'r', 's', /* [1] topic "orders" */
    0x00, 0x00, /* id (empty) */
    0x00, 0x00, /* key (empty) */
    0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, /* deliver_at_ms */
    0x00, 0x00, /* header_count 0 */
    0x00, 0x00, 0x00, 0x00, /* payload (empty) */
    0x00, 0x09, 'a', 'u', 'd', 'i', 't', '.', 'l', 'o', 'g', /* [2] topic "audit.log" */
    0x00, 0x03, 'a', '-', '9', /* id "a-9" */
    0x00, 0x00, /* key (empty) */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* deliver_at_ms */
    0x00, 0x01, /* header_count 1 */
    0x00, 0x01, 'x', /* name "x" */
    0x00, 0x00, /* value (empty) */
    0x00, 0x00, 0x00, 0x01, 'z', /* payload "z" */
};

static const uint8_t v_publish_ack_batch[] = {
    0x00, 0x00, 0x00, 0x30, /* length 48 */
    0x11, /* type PUBLISH_ACK */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x09, /* request_id 9 */
    0x00, 0x03, /* count 3 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, /* seq 1 */
    0x00, /* flags */
    0x00, 0x02, 'o', '1', /* id "o1" */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, /* seq 2 */
    0x00, /* flags */
    0x00, 0x02, 'm', '2', /* id "m2" */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, /* seq 7 */
    0x01, /* flags DUPLICATE */
    0x00, 0x03, 'a', '-', '9', /* id "a-9" */
};

static const uint8_t v_reserved[] = {
    0x00, 0x00, 0x00, 0x09, /* length 9 */
    0x22, /* type DELIVER (reserved) */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x05, /* request_id 5 */
    0x01, 0x02, 0x03, /* opaque body */
};

static const uint8_t v_topics_ok_one[] = {
    0x00, 0x00, 0x00, 0x3c, /* length 60 */
    0x31, /* type TOPICS_OK */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x03, /* request_id 3 */
    0x00, 0x00, 0x00, 0x01, /* count 1 */
    0x00, 0x30, /* entry_length 48 */
    0x00, 0x06, 'o', 'r', 'd', 'e', 'r', 's', /* name "orders" */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, /* head_seq 42 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, /* first_seq 1 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, /* message_count 42 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0xd2, /* bytes 1234 */
    0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, /* created_ms */
};

/* clang-format on */

struct vector {
    const char *name;
    const uint8_t *bytes;
    size_t len;
};

/* clang-format off */
#define VEC(v) {#v, (v), sizeof(v)}
/* clang-format on */

/* Every valid frame above. */
static const struct vector valid_vectors[] = {
    VEC(v_hello),     VEC(v_hello_ok),      VEC(v_publish),       VEC(v_publish_ack),
    VEC(v_error),     VEC(v_ping),          VEC(v_pong),          VEC(v_topics),
    VEC(v_topics_ok), VEC(v_topics_ok_one), VEC(v_publish_batch), VEC(v_publish_ack_batch),
    VEC(v_reserved),
};

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* --- Helpers ----------------------------------------------------------- */

static void assert_bytes(const uint8_t *got, size_t got_len, const void *want, size_t want_len)
{
    assert_int_equal(got_len, want_len);
    if (want_len > 0)
        assert_memory_equal(got, want, want_len);
}

#define assert_slice(s, str) assert_bytes((s).ptr, (s).len, (str), strlen(str))

/* A heap copy of exactly n bytes (NULL for 0), so that ASan sees over-reads. */
static uint8_t *heap_copy(const uint8_t *bytes, size_t n)
{
    uint8_t *buf;

    if (n == 0)
        return NULL;
    buf = malloc(n);
    assert_non_null(buf);
    memcpy(buf, bytes, n);
    return buf;
}

/* proto_decode on an exact heap copy; only the return value survives. */
static ptrdiff_t decode_copy(const uint8_t *bytes, size_t n, uint32_t max_frame)
{
    uint8_t *buf = heap_copy(bytes, n);
    struct proto_frame f;
    ptrdiff_t rc = proto_decode(buf, n, max_frame, &f);

    free(buf);
    return rc;
}

static void decode_ok(const uint8_t *bytes, size_t n, struct proto_frame *f)
{
    assert_int_equal(proto_decode(bytes, n, PROTO_DEFAULT_MAX_FRAME, f), (ptrdiff_t)n);
}

/* A scratch area for frames built field by field; big enough for a PUBLISH
 * of PROTO_MAX_BATCH + 1 minimal messages. */
static uint8_t scratch[512 * 1024];

/* n bytes of ch, for filling fields. Valid until the next call. */
static const uint8_t *filled(uint8_t ch, size_t n)
{
    static uint8_t fill[70000];

    assert_true(n <= sizeof fill);
    memset(fill, ch, n);
    return fill;
}

static void put_filled_str16(struct proto_writer *w, uint8_t ch, size_t n)
{
    proto_put_u16(w, (uint16_t)n);
    proto_put_raw(w, filled(ch, n), n);
}

/* Ends a frame built in scratch and returns its size. */
static size_t end_scratch(struct proto_writer *w, size_t start)
{
    assert_int_equal(proto_frame_end(w, start), 0);
    return w->len;
}

static size_t build_hello(size_t name_len, size_t token_len)
{
    struct proto_writer w;
    size_t start;

    proto_writer_init(&w, scratch, sizeof scratch);
    start = proto_frame_begin(&w, PROTO_HELLO, 0, 1);
    proto_put_u16(&w, 1);
    put_filled_str16(&w, 'n', name_len);
    put_filled_str16(&w, 't', token_len);
    return end_scratch(&w, start);
}

static size_t build_error(uint16_t code, size_t message_len)
{
    struct proto_writer w;
    size_t start;

    proto_writer_init(&w, scratch, sizeof scratch);
    start = proto_frame_begin(&w, PROTO_ERROR, 0, 1);
    proto_put_u16(&w, code);
    put_filled_str16(&w, 'm', message_len);
    return end_scratch(&w, start);
}

/* The shape of the messages build_publish() writes, field by field, with no
 * regard for the protocol's maxima. */
struct msg_shape {
    size_t topic_len;
    size_t id_len;
    size_t key_len;
    uint16_t header_count;
    size_t header_name_len;
    size_t payload_len;
};

static const struct msg_shape small_msg = {1, 0, 0, 0, 1, 0};

static size_t build_publish(uint16_t count_field, unsigned nmsgs, const struct msg_shape *s)
{
    struct proto_writer w;
    size_t start;
    unsigned i, j;

    proto_writer_init(&w, scratch, sizeof scratch);
    start = proto_frame_begin(&w, PROTO_PUBLISH, 0, 1);
    proto_put_u16(&w, count_field);
    for (i = 0; i < nmsgs; i++) {
        put_filled_str16(&w, 't', s->topic_len);
        put_filled_str16(&w, 'i', s->id_len);
        put_filled_str16(&w, 'k', s->key_len);
        proto_put_u64(&w, 0);
        proto_put_u16(&w, s->header_count);
        for (j = 0; j < s->header_count; j++) {
            put_filled_str16(&w, 'h', s->header_name_len);
            put_filled_str16(&w, 'v', 1);
        }
        proto_put_u32(&w, (uint32_t)s->payload_len);
        proto_put_raw(&w, filled('p', s->payload_len), s->payload_len);
    }
    assert_false(w.overflow);
    return end_scratch(&w, start);
}

static size_t build_publish_ack(uint16_t count_field, unsigned n, size_t id_len)
{
    struct proto_writer w;
    size_t start;
    unsigned i;

    proto_writer_init(&w, scratch, sizeof scratch);
    start = proto_frame_begin(&w, PROTO_PUBLISH_ACK, 0, 1);
    proto_put_u16(&w, count_field);
    for (i = 0; i < n; i++) {
        proto_put_u64(&w, i + 1);
        proto_put_u8(&w, 0);
        put_filled_str16(&w, 'i', id_len);
    }
    return end_scratch(&w, start);
}

/* TOPICS_OK with n entries whose entry_length is name + 42 + extra. */
static size_t build_topics_ok(uint32_t count_field, unsigned n, size_t name_len, size_t extra)
{
    struct proto_writer w;
    size_t start;
    unsigned i;

    proto_writer_init(&w, scratch, sizeof scratch);
    start = proto_frame_begin(&w, PROTO_TOPICS_OK, 0, 1);
    proto_put_u32(&w, count_field);
    for (i = 0; i < n; i++) {
        proto_put_u16(&w, (uint16_t)(2 + name_len + 40 + extra));
        put_filled_str16(&w, 'n', name_len);
        proto_put_raw(&w, filled(0, 40 + extra), 40 + extra);
    }
    return end_scratch(&w, start);
}

/* A frame of type with body bytes, length field patched. */
static size_t build_raw(uint8_t type, const void *body, size_t body_len)
{
    struct proto_writer w;
    size_t start;

    proto_writer_init(&w, scratch, sizeof scratch);
    start = proto_frame_begin(&w, type, 0, 1);
    proto_put_raw(&w, body, body_len);
    return end_scratch(&w, start);
}

/* --- Decoding valid frames --------------------------------------------- */

static void test_proto_hello_decodes(void **state)
{
    struct proto_frame f;

    (void)state;
    assert_int_equal(proto_decode(v_hello, sizeof v_hello, PROTO_HANDSHAKE_MAX_FRAME, &f), 22);
    assert_int_equal(f.type, PROTO_HELLO);
    assert_int_equal(f.flags, 0);
    assert_int_equal(f.request_id, 1);
    assert_ptr_equal(f.body.ptr, v_hello + PROTO_HEADER_BYTES);
    assert_int_equal(f.body.len, 12);
    assert_int_equal(f.u.hello.version, 1);
    assert_slice(f.u.hello.client_name, "app");
    assert_slice(f.u.hello.token, "tok");
}

static void test_proto_hello_ok_decodes(void **state)
{
    struct proto_frame f;

    (void)state;
    decode_ok(v_hello_ok, sizeof v_hello_ok, &f);
    assert_int_equal(f.type, PROTO_HELLO_OK);
    assert_int_equal(f.request_id, 1);
    assert_int_equal(f.u.hello_ok.version, 1);
    assert_int_equal(f.u.hello_ok.max_frame_bytes, 4194304);
    assert_int_equal(f.u.hello_ok.max_message_bytes, 1048576);
    assert_int_equal(f.u.hello_ok.max_batch, 10000);
    assert_int_equal(f.u.hello_ok.dedupe_window_ms, 86400000);
    assert_slice(f.u.hello_ok.server_name, "ferryd 0.1.0");
}

static void test_proto_error_decodes(void **state)
{
    struct proto_frame f;

    (void)state;
    decode_ok(v_error, sizeof v_error, &f);
    assert_int_equal(f.type, PROTO_ERROR);
    assert_int_equal(f.flags, PROTO_ERROR_FATAL);
    assert_int_equal(f.request_id, 0);
    assert_int_equal(f.u.error.code, -FERRY_EMALFORMED);
    assert_slice(f.u.error.message, "bad frame");
}

static void test_proto_empty_body_frames_decode(void **state)
{
    struct proto_frame f;

    (void)state;
    decode_ok(v_ping, sizeof v_ping, &f);
    assert_int_equal(f.type, PROTO_PING);
    assert_int_equal(f.request_id, 7);
    assert_int_equal(f.body.len, 0);
    decode_ok(v_pong, sizeof v_pong, &f);
    assert_int_equal(f.type, PROTO_PONG);
    assert_int_equal(f.request_id, 7);
    assert_int_equal(f.body.len, 0);
    decode_ok(v_topics, sizeof v_topics, &f);
    assert_int_equal(f.type, PROTO_TOPICS);
    assert_int_equal(f.request_id, 3);
    assert_int_equal(f.body.len, 0);
}

static void test_proto_publish_decodes(void **state)
{
    struct proto_frame f;
    struct proto_msg_iter it;
    struct proto_header_iter hit;
    struct proto_msg m;
    struct proto_header h;

    (void)state;
    decode_ok(v_publish, sizeof v_publish, &f);
    assert_int_equal(f.type, PROTO_PUBLISH);
    assert_int_equal(f.request_id, 2);
    assert_int_equal(f.u.publish.count, 1);
    assert_ptr_equal(f.u.publish.msgs.ptr, v_publish + 12);
    assert_int_equal(f.u.publish.msgs.len, sizeof v_publish - 12);

    proto_msg_iter_init(&it, &f.u.publish);
    assert_int_equal(proto_msg_next(&it, &m), 1);
    assert_slice(m.topic, "orders");
    assert_slice(m.id, "o1");
    assert_int_equal(m.key.len, 0);
    assert_int_equal(m.deliver_at_ms, 0);
    assert_int_equal(m.header_count, 1);
    assert_slice(m.payload, "{\"id\":1}");
    proto_header_iter_init(&hit, &m);
    assert_int_equal(proto_header_next(&hit, &h), 1);
    assert_slice(h.name, "ct");
    assert_slice(h.value, "json");
    assert_int_equal(proto_header_next(&hit, &h), 0);
    assert_int_equal(proto_msg_next(&it, &m), 0);
    assert_int_equal(proto_msg_next(&it, &m), 0);
}

static void test_proto_publish_ack_decodes(void **state)
{
    struct proto_frame f;
    struct proto_ack_iter it;
    struct proto_ack_entry a;

    (void)state;
    decode_ok(v_publish_ack, sizeof v_publish_ack, &f);
    assert_int_equal(f.type, PROTO_PUBLISH_ACK);
    assert_int_equal(f.request_id, 2);
    assert_int_equal(f.u.publish_ack.count, 1);
    proto_ack_iter_init(&it, &f.u.publish_ack);
    assert_int_equal(proto_ack_next(&it, &a), 1);
    assert_int_equal(a.seq, 1);
    assert_int_equal(a.flags, 0);
    assert_slice(a.id, "o1");
    assert_int_equal(proto_ack_next(&it, &a), 0);
}

static void test_proto_publish_batch_iterates_messages_and_headers(void **state)
{
    struct proto_frame f;
    struct proto_msg_iter it;
    struct proto_header_iter hit;
    struct proto_msg m;
    struct proto_header h;

    (void)state;
    decode_ok(v_publish_batch, sizeof v_publish_batch, &f);
    assert_int_equal(f.request_id, 9);
    assert_int_equal(f.u.publish.count, 3);
    proto_msg_iter_init(&it, &f.u.publish);

    assert_int_equal(proto_msg_next(&it, &m), 1);
    assert_slice(m.topic, "orders");
    assert_slice(m.id, "o1");
    assert_slice(m.key, "c42");
    assert_int_equal(m.deliver_at_ms, 0);
    assert_int_equal(m.header_count, 2);
    assert_slice(m.payload, "{}");
    proto_header_iter_init(&hit, &m);
    assert_int_equal(proto_header_next(&hit, &h), 1);
    assert_slice(h.name, "ct");
    assert_slice(h.value, "json");
    assert_int_equal(proto_header_next(&hit, &h), 1);
    assert_slice(h.name, "trace");
    assert_slice(h.value, "abc");
    assert_int_equal(proto_header_next(&hit, &h), 0);
    assert_int_equal(proto_msg_check(&m, PROTO_DEFAULT_MAX_MESSAGE), 0);

    assert_int_equal(proto_msg_next(&it, &m), 1);
    assert_slice(m.topic, "orders");
    assert_int_equal(m.id.len, 0);
    assert_int_equal(m.key.len, 0);
    assert_int_equal(m.deliver_at_ms, 1700000000000ull);
    assert_int_equal(m.header_count, 0);
    assert_int_equal(m.headers.len, 0);
    assert_int_equal(m.payload.len, 0);
    proto_header_iter_init(&hit, &m);
    assert_int_equal(proto_header_next(&hit, &h), 0);
    assert_int_equal(proto_msg_check(&m, PROTO_DEFAULT_MAX_MESSAGE), 0);

    assert_int_equal(proto_msg_next(&it, &m), 1);
    assert_slice(m.topic, "audit.log");
    assert_slice(m.id, "a-9");
    assert_int_equal(m.header_count, 1);
    assert_slice(m.payload, "z");
    proto_header_iter_init(&hit, &m);
    assert_int_equal(proto_header_next(&hit, &h), 1);
    assert_slice(h.name, "x");
    assert_int_equal(h.value.len, 0);
    assert_int_equal(proto_header_next(&hit, &h), 0);

    assert_int_equal(proto_msg_next(&it, &m), 0);
}

static void test_proto_publish_ack_batch_iterates(void **state)
{
    static const struct {
        uint64_t seq;
        uint8_t flags;
        const char *id;
    } want[] = {{1, 0, "o1"}, {2, 0, "m2"}, {7, PROTO_ACK_DUPLICATE, "a-9"}};
    struct proto_frame f;
    struct proto_ack_iter it;
    struct proto_ack_entry a;
    size_t i;

    (void)state;
    decode_ok(v_publish_ack_batch, sizeof v_publish_ack_batch, &f);
    assert_int_equal(f.u.publish_ack.count, 3);
    proto_ack_iter_init(&it, &f.u.publish_ack);
    for (i = 0; i < ARRAY_LEN(want); i++) {
        assert_int_equal(proto_ack_next(&it, &a), 1);
        assert_int_equal(a.seq, want[i].seq);
        assert_int_equal(a.flags, want[i].flags);
        assert_slice(a.id, want[i].id);
    }
    assert_int_equal(proto_ack_next(&it, &a), 0);
}

static void test_proto_topics_ok_iterates_and_skips_appended_fields(void **state)
{
    struct proto_frame f;
    struct proto_topic_iter it;
    struct proto_topic_info t;

    (void)state;
    decode_ok(v_topics_ok, sizeof v_topics_ok, &f);
    assert_int_equal(f.type, PROTO_TOPICS_OK);
    assert_int_equal(f.request_id, 3);
    assert_int_equal(f.u.topics_ok.count, 2);
    proto_topic_iter_init(&it, &f.u.topics_ok);
    assert_int_equal(proto_topic_next(&it, &t), 1);
    assert_slice(t.name, "orders");
    assert_int_equal(t.head_seq, 42);
    assert_int_equal(t.first_seq, 1);
    assert_int_equal(t.message_count, 42);
    assert_int_equal(t.bytes, 1234);
    assert_int_equal(t.created_ms, 1700000000000ull);
    assert_int_equal(proto_topic_next(&it, &t), 1);
    assert_slice(t.name, "audit");
    assert_int_equal(t.head_seq, 0);
    assert_int_equal(t.first_seq, 0);
    assert_int_equal(t.message_count, 0);
    assert_int_equal(t.bytes, 0);
    assert_int_equal(t.created_ms, 1700000000001ull);
    assert_int_equal(proto_topic_next(&it, &t), 0);

    /* An empty list is legal. */
    decode_ok(scratch, build_topics_ok(0, 0, 0, 0), &f);
    assert_int_equal(f.u.topics_ok.count, 0);
    proto_topic_iter_init(&it, &f.u.topics_ok);
    assert_int_equal(proto_topic_next(&it, &t), 0);
}

static void test_proto_reserved_types_decode_header_only(void **state)
{
    struct proto_frame f;
    unsigned type;

    (void)state;
    decode_ok(v_reserved, sizeof v_reserved, &f);
    assert_int_equal(f.type, PROTO_DELIVER);
    assert_int_equal(f.request_id, 5);
    assert_bytes(f.body.ptr, f.body.len, "\x01\x02\x03", 3);

    for (type = PROTO_SUBSCRIBE; type <= PROTO_ACK_OK; type++) {
        assert_true(proto_type_reserved((uint8_t)type));
        decode_ok(scratch, build_raw((uint8_t)type, NULL, 0), &f);
        assert_int_equal(f.type, type);
        assert_int_equal(f.body.len, 0);
        decode_ok(scratch, build_raw((uint8_t)type, "anything", 8), &f);
        assert_bytes(f.body.ptr, f.body.len, "anything", 8);
    }
    assert_false(proto_type_reserved(0x1f));
    assert_false(proto_type_reserved(0x2a));
    assert_false(proto_type_reserved(PROTO_PUBLISH));
    assert_false(proto_type_reserved(PROTO_TOPICS));
}

static void test_proto_consecutive_frames_decode_in_order(void **state)
{
    uint8_t buf[sizeof v_hello + sizeof v_publish + sizeof v_ping];
    static const uint8_t types[] = {PROTO_HELLO, PROTO_PUBLISH, PROTO_PING};
    struct proto_frame f;
    size_t off = 0, i;
    ptrdiff_t n;

    (void)state;
    memcpy(buf, v_hello, sizeof v_hello);
    memcpy(buf + sizeof v_hello, v_publish, sizeof v_publish);
    memcpy(buf + sizeof v_hello + sizeof v_publish, v_ping, sizeof v_ping);
    for (i = 0; i < ARRAY_LEN(types); i++) {
        n = proto_decode(buf + off, sizeof buf - off, PROTO_DEFAULT_MAX_FRAME, &f);
        assert_true(n > 0);
        assert_int_equal(f.type, types[i]);
        off += (size_t)n;
    }
    assert_int_equal(off, sizeof buf);
    assert_int_equal(proto_decode(buf + off, 0, PROTO_DEFAULT_MAX_FRAME, &f), 0);
}

static void test_proto_peek_header_reports_fields(void **state)
{
    uint32_t length = 0, request_id = 0;
    uint8_t type = 0;

    (void)state;
    assert_int_equal(proto_peek_header(v_publish, sizeof v_publish, PROTO_DEFAULT_MAX_FRAME,
                                       &length, &type, &request_id),
                     PROTO_HEADER_BYTES);
    assert_int_equal(length, 54);
    assert_int_equal(type, PROTO_PUBLISH);
    assert_int_equal(request_id, 2);
    /* The header alone is enough; out-pointers may be NULL. */
    assert_int_equal(
        proto_peek_header(v_publish, PROTO_HEADER_BYTES, PROTO_DEFAULT_MAX_FRAME, NULL, NULL, NULL),
        PROTO_HEADER_BYTES);
    assert_int_equal(proto_peek_header(v_publish, 9, PROTO_DEFAULT_MAX_FRAME, NULL, NULL, NULL), 0);
    assert_int_equal(proto_peek_header(NULL, 0, PROTO_DEFAULT_MAX_FRAME, NULL, NULL, NULL), 0);
}

/* --- Truncation -------------------------------------------------------- */

static void test_proto_truncated_frames_need_more_at_every_offset(void **state)
{
    size_t i, cut;

    (void)state;
    for (i = 0; i < ARRAY_LEN(valid_vectors); i++) {
        const struct vector *v = &valid_vectors[i];

        for (cut = 0; cut < v->len; cut++) {
            uint8_t *buf = heap_copy(v->bytes, cut);
            struct proto_frame f;
            int peek;

            if (proto_decode(buf, cut, PROTO_DEFAULT_MAX_FRAME, &f) != 0)
                fail_msg("%s cut at %zu did not ask for more", v->name, cut);
            peek = proto_peek_header(buf, cut, PROTO_DEFAULT_MAX_FRAME, NULL, NULL, NULL);
            assert_int_equal(peek, cut < PROTO_HEADER_BYTES ? 0 : PROTO_HEADER_BYTES);
            free(buf);
        }
        if (decode_copy(v->bytes, v->len, PROTO_DEFAULT_MAX_FRAME) != (ptrdiff_t)v->len)
            fail_msg("%s does not decode whole", v->name);
    }
}

/* --- Header errors ----------------------------------------------------- */

static void test_proto_oversized_length_is_rejected_from_header(void **state)
{
    /* length 65537: one over the handshake limit; no body follows. */
    static const uint8_t big[] = {0x00, 0x01, 0x00, 0x01, 0x10, 0x00, 0x00, 0x00, 0x00, 0x01};
    static const uint8_t at_max[] = {0x00, 0x01, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x01};
    static const uint8_t huge[] = {0xff, 0xff, 0xff, 0xff};
    static const uint8_t abs_plus1[] = {0x04, 0x00, 0x00, 0x01};
    static const uint8_t abs_max[] = {0x04, 0x00, 0x00, 0x00};
    uint32_t length = 0;
    size_t n;

    (void)state;
    for (n = 4; n <= sizeof big; n++) {
        assert_int_equal(decode_copy(big, n, PROTO_HANDSHAKE_MAX_FRAME), FERRY_EFRAME_TOO_LARGE);
        assert_int_equal(proto_peek_header(big, n, PROTO_HANDSHAKE_MAX_FRAME, &length, NULL, NULL),
                         FERRY_EFRAME_TOO_LARGE);
        assert_int_equal(length, 65537);
    }
    /* Fewer than 4 bytes say nothing yet. */
    assert_int_equal(decode_copy(big, 3, PROTO_HANDSHAKE_MAX_FRAME), 0);
    /* Exactly at the limit is fine: the body has not arrived. */
    assert_int_equal(decode_copy(at_max, sizeof at_max, PROTO_HANDSHAKE_MAX_FRAME), 0);
    assert_int_equal(decode_copy(big, sizeof big, PROTO_DEFAULT_MAX_FRAME), 0);
    /* max_frame is capped at PROTO_ABSOLUTE_MAX_FRAME. */
    assert_int_equal(decode_copy(huge, sizeof huge, UINT32_MAX), FERRY_EFRAME_TOO_LARGE);
    assert_int_equal(decode_copy(abs_plus1, sizeof abs_plus1, UINT32_MAX), FERRY_EFRAME_TOO_LARGE);
    assert_int_equal(decode_copy(abs_max, sizeof abs_max, UINT32_MAX), 0);
    assert_int_equal(proto_peek_header(abs_plus1, 4, UINT32_MAX, NULL, NULL, NULL),
                     FERRY_EFRAME_TOO_LARGE);
}

static void test_proto_length_under_six_is_malformed(void **state)
{
    uint8_t buf[10] = {0, 0, 0, 0, PROTO_PING, 0, 0, 0, 0, 1};
    uint8_t length;

    (void)state;
    for (length = 0; length < PROTO_MIN_LENGTH; length++) {
        buf[3] = length;
        assert_int_equal(decode_copy(buf, 4, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
        assert_int_equal(decode_copy(buf, sizeof buf, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
        assert_int_equal(
            proto_peek_header(buf, sizeof buf, PROTO_DEFAULT_MAX_FRAME, NULL, NULL, NULL),
            FERRY_EMALFORMED);
    }
    buf[3] = PROTO_MIN_LENGTH;
    assert_int_equal(decode_copy(buf, sizeof buf, PROTO_DEFAULT_MAX_FRAME), sizeof buf);
}

static void test_proto_unknown_type_is_rejected(void **state)
{
    static const uint8_t unknown[] = {0x00, 0x06, 0x0f, 0x12, 0x1f, 0x2a, 0x2f, 0x32, 0x80, 0xff};
    uint8_t buf[12] = {0x00, 0x00, 0x00, 0x08, 0, 0, 0, 0, 0, 1, 0xab, 0xcd};
    size_t i;

    (void)state;
    for (i = 0; i < sizeof unknown; i++) {
        buf[4] = unknown[i];
        assert_int_equal(decode_copy(buf, sizeof buf, PROTO_DEFAULT_MAX_FRAME),
                         FERRY_EUNKNOWN_TYPE);
        /* Known from the header, before the body arrives. */
        assert_int_equal(decode_copy(buf, PROTO_HEADER_BYTES, PROTO_DEFAULT_MAX_FRAME),
                         FERRY_EUNKNOWN_TYPE);
        /* Not before the header is complete. */
        assert_int_equal(decode_copy(buf, PROTO_HEADER_BYTES - 1, PROTO_DEFAULT_MAX_FRAME), 0);
    }
}

/* --- Body errors ------------------------------------------------------- */

static void test_proto_trailing_bytes_are_malformed(void **state)
{
    static const struct vector strict[] = {
        VEC(v_hello),         VEC(v_publish),
        VEC(v_publish_ack),   VEC(v_error),
        VEC(v_ping),          VEC(v_pong),
        VEC(v_topics),        VEC(v_topics_ok),
        VEC(v_publish_batch), VEC(v_publish_ack_batch),
    };
    uint8_t buf[1024];
    struct proto_frame f;
    size_t i;

    (void)state;
    for (i = 0; i < ARRAY_LEN(strict); i++) {
        const struct vector *v = &strict[i];

        memcpy(buf, v->bytes, v->len);
        buf[v->len] = 0;
        proto_wr32(buf, proto_rd32(buf) + 1);
        if (decode_copy(buf, v->len + 1, PROTO_DEFAULT_MAX_FRAME) != FERRY_EMALFORMED)
            fail_msg("%s with a trailing byte was accepted", v->name);
    }

    /* HELLO_OK may grow: appended fields are ignored. */
    memcpy(buf, v_hello_ok, sizeof v_hello_ok);
    memcpy(buf + sizeof v_hello_ok, "\x00\x01\x02", 3);
    proto_wr32(buf, proto_rd32(buf) + 3);
    decode_ok(buf, sizeof v_hello_ok + 3, &f);
    assert_int_equal(f.u.hello_ok.max_batch, 10000);
    assert_slice(f.u.hello_ok.server_name, "ferryd 0.1.0");
}

static void test_proto_empty_body_types_reject_a_body(void **state)
{
    (void)state;
    assert_int_equal(decode_copy(scratch, build_raw(PROTO_PING, "x", 1), PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
    assert_int_equal(decode_copy(scratch, build_raw(PROTO_PONG, "x", 1), PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
    assert_int_equal(
        decode_copy(scratch, build_raw(PROTO_TOPICS, "xy", 2), PROTO_DEFAULT_MAX_FRAME),
        FERRY_EMALFORMED);
}

static void test_proto_short_bodies_are_malformed(void **state)
{
    static const uint8_t types[] = {PROTO_HELLO,   PROTO_HELLO_OK,    PROTO_ERROR,
                                    PROTO_PUBLISH, PROTO_PUBLISH_ACK, PROTO_TOPICS_OK};
    size_t i;

    (void)state;
    /* A complete frame whose body stops early: no amount of waiting helps. */
    for (i = 0; i < sizeof types; i++) {
        assert_int_equal(
            decode_copy(scratch, build_raw(types[i], NULL, 0), PROTO_DEFAULT_MAX_FRAME),
            FERRY_EMALFORMED);
        assert_int_equal(
            decode_copy(scratch, build_raw(types[i], "\x00", 1), PROTO_DEFAULT_MAX_FRAME),
            FERRY_EMALFORMED);
    }
}

static void test_proto_field_lengths_past_the_body_are_malformed(void **state)
{
    uint8_t buf[256];

    (void)state;
    /* HELLO token says 4 bytes, 3 follow. */
    memcpy(buf, v_hello, sizeof v_hello);
    buf[18] = 4;
    assert_int_equal(decode_copy(buf, sizeof v_hello, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
    /* PUBLISH payload length 0xffffffff. */
    memcpy(buf, v_publish, sizeof v_publish);
    memset(buf + 46, 0xff, 4);
    assert_int_equal(decode_copy(buf, sizeof v_publish, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
    /* PUBLISH header value length 0xffff. */
    memcpy(buf, v_publish, sizeof v_publish);
    buf[40] = 0xff;
    buf[41] = 0xff;
    assert_int_equal(decode_copy(buf, sizeof v_publish, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
    /* PUBLISH_ACK id length runs past the end. */
    memcpy(buf, v_publish_ack, sizeof v_publish_ack);
    buf[22] = 3;
    assert_int_equal(decode_copy(buf, sizeof v_publish_ack, PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
    /* TOPICS_OK entry_length past the end, and too short for the v1 fields. */
    memcpy(buf, v_topics_ok_one, sizeof v_topics_ok_one);
    buf[15] = 49;
    assert_int_equal(decode_copy(buf, sizeof v_topics_ok_one, PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
    assert_int_equal(decode_copy(scratch, build_topics_ok(1, 1, 6, 0), PROTO_DEFAULT_MAX_FRAME),
                     (ptrdiff_t)(10 + 4 + 2 + 8 + 40));
    proto_wr16(scratch + 14, 47);
    assert_int_equal(decode_copy(scratch, 10 + 4 + 2 + 8 + 40, PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
    /* HELLO_OK cut inside its fixed fields. */
    memcpy(buf, v_hello_ok, sizeof v_hello_ok);
    proto_wr32(buf, 6 + 20);
    assert_int_equal(decode_copy(buf, 10 + 20, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
}

static void test_proto_fields_over_their_maximum_are_malformed(void **state)
{
    struct msg_shape s;
    const uint32_t max = PROTO_DEFAULT_MAX_FRAME;

    (void)state;
    /* HELLO: client name 255 / token 1024 pass, one more fails. */
    assert_true(decode_copy(scratch, build_hello(255, 1024), max) > 0);
    assert_int_equal(decode_copy(scratch, build_hello(256, 0), max), FERRY_EMALFORMED);
    assert_int_equal(decode_copy(scratch, build_hello(0, 1025), max), FERRY_EMALFORMED);

    /* ERROR text. */
    assert_true(decode_copy(scratch, build_error(1, 1024), max) > 0);
    assert_int_equal(decode_copy(scratch, build_error(1, 1025), max), FERRY_EMALFORMED);

    /* PUBLISH: topic 200, id 128, key 1024, 64 headers, header name 255. */
    s = (struct msg_shape){200, 128, 1024, 64, 255, 10};
    assert_true(decode_copy(scratch, build_publish(1, 1, &s), max) > 0);
    s.topic_len = 201;
    assert_int_equal(decode_copy(scratch, build_publish(1, 1, &s), max), FERRY_EMALFORMED);
    s.topic_len = 200;
    s.id_len = 129;
    assert_int_equal(decode_copy(scratch, build_publish(1, 1, &s), max), FERRY_EMALFORMED);
    s.id_len = 128;
    s.key_len = 1025;
    assert_int_equal(decode_copy(scratch, build_publish(1, 1, &s), max), FERRY_EMALFORMED);
    s.key_len = 1024;
    s.header_count = 65;
    assert_int_equal(decode_copy(scratch, build_publish(1, 1, &s), max), FERRY_EMALFORMED);
    s.header_count = 64;
    s.header_name_len = 256;
    assert_int_equal(decode_copy(scratch, build_publish(1, 1, &s), max), FERRY_EMALFORMED);
    s.header_name_len = 0;
    assert_int_equal(decode_copy(scratch, build_publish(1, 1, &s), max), FERRY_EMALFORMED);

    /* PUBLISH_ACK id. */
    assert_true(decode_copy(scratch, build_publish_ack(1, 1, 128), max) > 0);
    assert_int_equal(decode_copy(scratch, build_publish_ack(1, 1, 129), max), FERRY_EMALFORMED);

    /* TOPICS_OK name. */
    assert_true(decode_copy(scratch, build_topics_ok(1, 1, 200, 0), max) > 0);
    assert_int_equal(decode_copy(scratch, build_topics_ok(1, 1, 201, 0), max), FERRY_EMALFORMED);
}

static void test_proto_publish_count_zero_is_malformed(void **state)
{
    (void)state;
    assert_int_equal(decode_copy(scratch, build_publish(0, 0, &small_msg), PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
    /* A count of 0 followed by a message is no better. */
    assert_int_equal(decode_copy(scratch, build_publish(0, 1, &small_msg), PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
}

static void test_proto_publish_count_over_max_is_malformed(void **state)
{
    size_t n;

    (void)state;
    n = build_publish(PROTO_MAX_BATCH, PROTO_MAX_BATCH, &small_msg);
    assert_int_equal(decode_copy(scratch, n, PROTO_DEFAULT_MAX_FRAME), (ptrdiff_t)n);
    n = build_publish(PROTO_MAX_BATCH + 1, PROTO_MAX_BATCH + 1, &small_msg);
    assert_int_equal(decode_copy(scratch, n, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
    n = build_publish(UINT16_MAX, 1, &small_msg);
    assert_int_equal(decode_copy(scratch, n, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
}

static void test_proto_publish_count_must_match_messages(void **state)
{
    (void)state;
    /* Says 2, holds 1. */
    assert_int_equal(decode_copy(scratch, build_publish(2, 1, &small_msg), PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
    /* Says 1, holds 2: the second is trailing bytes. */
    assert_int_equal(decode_copy(scratch, build_publish(1, 2, &small_msg), PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
}

static void test_proto_publish_ack_and_topics_ok_counts_are_checked(void **state)
{
    size_t n;

    (void)state;
    n = build_publish_ack(0, 0, 2);
    assert_int_equal(decode_copy(scratch, n, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
    n = build_publish_ack(PROTO_MAX_BATCH + 1, PROTO_MAX_BATCH + 1, 0);
    assert_int_equal(decode_copy(scratch, n, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
    n = build_publish_ack(3, 2, 2);
    assert_int_equal(decode_copy(scratch, n, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
    n = build_topics_ok(PROTO_MAX_TOPICS + 1, 0, 0, 0);
    assert_int_equal(decode_copy(scratch, n, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
    n = build_topics_ok(2, 1, 5, 0);
    assert_int_equal(decode_copy(scratch, n, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
}

static void test_proto_error_code_outside_wire_range_is_malformed(void **state)
{
    (void)state;
    assert_int_equal(decode_copy(scratch, build_error(0, 3), PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
    assert_int_equal(decode_copy(scratch, build_error(100, 3), PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
    assert_int_equal(decode_copy(scratch, build_error(UINT16_MAX, 3), PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
    assert_true(decode_copy(scratch, build_error(FERRY_WIRE_CODE_MAX, 3), PROTO_DEFAULT_MAX_FRAME) >
                0);
}

static void test_proto_undefined_flags_are_passed_through(void **state)
{
    uint8_t buf[sizeof v_publish];
    struct proto_frame f;

    (void)state;
    memcpy(buf, v_publish, sizeof buf);
    buf[5] = 0x80;
    decode_ok(buf, sizeof buf, &f);
    assert_int_equal(f.flags, 0x80);
    assert_int_equal(f.u.publish.count, 1);
}

/* --- Encoding ---------------------------------------------------------- */

enum {
    ENC_HELLO,
    ENC_HELLO_OK,
    ENC_ERROR,
    ENC_PING,
    ENC_PONG,
    ENC_TOPICS,
    ENC_PUBLISH,
    ENC_PUBLISH_ACK,
    ENC_TOPICS_OK,
    ENC_PUBLISH_BATCH,
    ENC_PUBLISH_ACK_BATCH,
    ENC_COUNT
};

static const struct vector encoded_vectors[ENC_COUNT] = {
    [ENC_HELLO] = VEC(v_hello),
    [ENC_HELLO_OK] = VEC(v_hello_ok),
    [ENC_ERROR] = VEC(v_error),
    [ENC_PING] = VEC(v_ping),
    [ENC_PONG] = VEC(v_pong),
    [ENC_TOPICS] = VEC(v_topics),
    [ENC_PUBLISH] = VEC(v_publish),
    [ENC_PUBLISH_ACK] = VEC(v_publish_ack),
    [ENC_TOPICS_OK] = VEC(v_topics_ok_one),
    [ENC_PUBLISH_BATCH] = VEC(v_publish_batch),
    [ENC_PUBLISH_ACK_BATCH] = VEC(v_publish_ack_batch),
};

/* Encodes, with the public encoders, the frame encoded_vectors[which] shows. */
static int encode_vector(int which, struct proto_writer *w)
{
    static const struct proto_hello hello = {1, SL("app"), SL("tok")};
    static const struct proto_hello_ok hello_ok = {1,     4194304,  1048576,
                                                   10000, 86400000, SL("ferryd 0.1.0")};
    static const struct proto_header one_header[] = {{SL("ct"), SL("json")}};
    static const struct proto_header batch_headers0[] = {{SL("ct"), SL("json")},
                                                         {SL("trace"), SL("abc")}};
    static const struct proto_header batch_headers2[] = {{SL("x"), {NULL, 0}}};
    static const struct proto_topic_info orders = {SL("orders"), 42, 1, 42, 1234, 1700000000000ull};
    struct proto_msg m;
    size_t start;

    switch (which) {
    case ENC_HELLO:
        return proto_encode_hello(w, 1, &hello);
    case ENC_HELLO_OK:
        return proto_encode_hello_ok(w, 1, &hello_ok);
    case ENC_ERROR:
        return proto_encode_error(w, 0, PROTO_ERROR_FATAL, -FERRY_EMALFORMED, "bad frame", 9);
    case ENC_PING:
        return proto_encode_empty(w, PROTO_PING, 7);
    case ENC_PONG:
        return proto_encode_empty(w, PROTO_PONG, 7);
    case ENC_TOPICS:
        return proto_encode_empty(w, PROTO_TOPICS, 3);
    case ENC_PUBLISH:
        start = proto_publish_begin(w, 2);
        m = (struct proto_msg){
            .topic = SL("orders"), .id = SL("o1"), .header_count = 1, .payload = SL("{\"id\":1}")};
        proto_publish_add(w, &m, one_header);
        return proto_publish_end(w, start, 1);
    case ENC_PUBLISH_ACK:
        start = proto_publish_ack_begin(w, 2);
        proto_publish_ack_add(w, 1, 0, "o1", 2);
        return proto_publish_ack_end(w, start, 1);
    case ENC_TOPICS_OK:
        start = proto_topics_ok_begin(w, 3);
        proto_topics_ok_add(w, &orders);
        return proto_topics_ok_end(w, start, 1);
    case ENC_PUBLISH_BATCH:
        start = proto_publish_begin(w, 9);
        m = (struct proto_msg){.topic = SL("orders"),
                               .id = SL("o1"),
                               .key = SL("c42"),
                               .header_count = 2,
                               .payload = SL("{}")};
        proto_publish_add(w, &m, batch_headers0);
        m = (struct proto_msg){.topic = SL("orders"), .deliver_at_ms = 1700000000000ull};
        proto_publish_add(w, &m, NULL);
        m = (struct proto_msg){
            .topic = SL("audit.log"), .id = SL("a-9"), .header_count = 1, .payload = SL("z")};
        proto_publish_add(w, &m, batch_headers2);
        return proto_publish_end(w, start, 3);
    case ENC_PUBLISH_ACK_BATCH:
        start = proto_publish_ack_begin(w, 9);
        proto_publish_ack_add(w, 1, 0, "o1", 2);
        proto_publish_ack_add(w, 2, 0, "m2", 2);
        proto_publish_ack_add(w, 7, PROTO_ACK_DUPLICATE, "a-9", 3);
        return proto_publish_ack_end(w, start, 3);
    default:
        fail();
        return -1;
    }
}

static void test_proto_encoders_reproduce_vectors(void **state)
{
    uint8_t buf[1024];
    struct proto_writer w;
    int i;

    (void)state;
    for (i = 0; i < ENC_COUNT; i++) {
        const struct vector *v = &encoded_vectors[i];

        /* An exactly-sized buffer is enough. */
        proto_writer_init(&w, buf, v->len);
        if (encode_vector(i, &w) != 0)
            fail_msg("encoding %s failed", v->name);
        assert_false(w.overflow);
        assert_bytes(buf, w.len, v->bytes, v->len);
    }
}

static void test_proto_encoders_fail_cleanly_at_every_short_cap(void **state)
{
    uint8_t buf[1024 + 16];
    struct proto_writer w;
    size_t cap, k;
    int i;

    (void)state;
    for (i = 0; i < ENC_COUNT; i++) {
        const struct vector *v = &encoded_vectors[i];

        for (cap = 0; cap < v->len; cap++) {
            memset(buf, 0xa5, sizeof buf);
            proto_writer_init(&w, buf, cap);
            if (encode_vector(i, &w) != -1)
                fail_msg("%s fit in %zu bytes", v->name, cap);
            assert_true(w.overflow);
            assert_true(w.len <= cap);
            for (k = cap; k < sizeof buf; k++)
                assert_int_equal(buf[k], 0xa5);
        }
    }
}

static void test_proto_round_trip_each_type(void **state)
{
    static const uint8_t types[] = {PROTO_PING, PROTO_PONG, PROTO_TOPICS, PROTO_SUBSCRIBE,
                                    PROTO_ACK_OK};
    size_t cap = 256 * 1024;
    uint8_t *buf = malloc(cap);
    struct proto_header headers[PROTO_MAX_HEADERS];
    struct proto_writer w;
    struct proto_frame f;
    struct proto_hello hello;
    struct proto_hello_ok hok;
    struct proto_msg m, got;
    struct proto_msg_iter mit;
    struct proto_header_iter hit;
    struct proto_header h;
    struct proto_ack_iter ait;
    struct proto_ack_entry a;
    struct proto_topic_info t;
    struct proto_topic_iter tit;
    uint8_t name[PROTO_MAX_HEADERS][PROTO_MAX_HEADER_NAME];
    uint8_t big[PROTO_MAX_KEY];
    size_t start, i;

    (void)state;
    assert_non_null(buf);
    memset(big, 'k', sizeof big);

    /* HELLO with both strings at their maximum. */
    hello =
        (struct proto_hello){PROTO_VERSION, {big, PROTO_MAX_CLIENT_NAME}, {big, PROTO_MAX_TOKEN}};
    proto_writer_init(&w, buf, cap);
    assert_int_equal(proto_encode_hello(&w, 0xfffffffe, &hello), 0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.type, PROTO_HELLO);
    assert_int_equal(f.request_id, 0xfffffffe);
    assert_int_equal(f.u.hello.version, PROTO_VERSION);
    assert_bytes(f.u.hello.client_name.ptr, f.u.hello.client_name.len, big, PROTO_MAX_CLIENT_NAME);
    assert_bytes(f.u.hello.token.ptr, f.u.hello.token.len, big, PROTO_MAX_TOKEN);

    /* HELLO_OK with extreme numbers. */
    hok = (struct proto_hello_ok){2, UINT32_MAX, 1, UINT32_MAX - 1, UINT64_MAX, {NULL, 0}};
    proto_writer_init(&w, buf, cap);
    assert_int_equal(proto_encode_hello_ok(&w, 4, &hok), 0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.type, PROTO_HELLO_OK);
    assert_int_equal(f.u.hello_ok.version, 2);
    assert_int_equal(f.u.hello_ok.max_frame_bytes, UINT32_MAX);
    assert_int_equal(f.u.hello_ok.max_message_bytes, 1);
    assert_int_equal(f.u.hello_ok.max_batch, UINT32_MAX - 1);
    assert_int_equal(f.u.hello_ok.dedupe_window_ms, UINT64_MAX);
    assert_int_equal(f.u.hello_ok.server_name.len, 0);

    /* ERROR, per-request, text at its maximum. */
    proto_writer_init(&w, buf, cap);
    assert_int_equal(proto_encode_error(&w, 77, 0, -FERRY_EINVALID_TOPIC, (const char *)big,
                                        PROTO_MAX_ERROR_TEXT),
                     0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.type, PROTO_ERROR);
    assert_int_equal(f.flags, 0);
    assert_int_equal(f.request_id, 77);
    assert_int_equal(f.u.error.code, -FERRY_EINVALID_TOPIC);
    assert_bytes(f.u.error.message.ptr, f.u.error.message.len, big, PROTO_MAX_ERROR_TEXT);

    /* Empty-body types, including reserved ones. */
    for (i = 0; i < sizeof types; i++) {
        proto_writer_init(&w, buf, cap);
        assert_int_equal(proto_encode_empty(&w, types[i], UINT32_MAX), 0);
        assert_int_equal(w.len, PROTO_HEADER_BYTES);
        decode_ok(buf, w.len, &f);
        assert_int_equal(f.type, types[i]);
        assert_int_equal(f.request_id, UINT32_MAX);
        assert_int_equal(f.body.len, 0);
    }

    /* PUBLISH: every field at its maximum, twice. */
    for (i = 0; i < PROTO_MAX_HEADERS; i++) {
        memset(name[i], 'a' + (int)(i % 26), sizeof name[i]);
        headers[i].name = (struct proto_slice){name[i], sizeof name[i]};
        headers[i].value = (struct proto_slice){big, i};
    }
    m = (struct proto_msg){.topic = {big, PROTO_MAX_TOPIC},
                           .id = {big, PROTO_MAX_ID},
                           .key = {big, PROTO_MAX_KEY},
                           .deliver_at_ms = UINT64_MAX,
                           .header_count = PROTO_MAX_HEADERS,
                           .payload = {big, 1000}};
    proto_writer_init(&w, buf, cap);
    start = proto_publish_begin(&w, 5);
    proto_publish_add(&w, &m, headers);
    proto_publish_add(&w, &m, headers);
    assert_int_equal(proto_publish_end(&w, start, 2), 0);
    assert_int_equal(w.len, PROTO_HEADER_BYTES + 2 + 2 * proto_publish_msg_bytes(&m, headers));
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.u.publish.count, 2);
    proto_msg_iter_init(&mit, &f.u.publish);
    while (proto_msg_next(&mit, &got)) {
        assert_bytes(got.topic.ptr, got.topic.len, big, PROTO_MAX_TOPIC);
        assert_bytes(got.id.ptr, got.id.len, big, PROTO_MAX_ID);
        assert_bytes(got.key.ptr, got.key.len, big, PROTO_MAX_KEY);
        assert_int_equal(got.deliver_at_ms, UINT64_MAX);
        assert_int_equal(got.header_count, PROTO_MAX_HEADERS);
        assert_bytes(got.payload.ptr, got.payload.len, big, 1000);
        proto_header_iter_init(&hit, &got);
        for (i = 0; proto_header_next(&hit, &h); i++) {
            assert_bytes(h.name.ptr, h.name.len, name[i], PROTO_MAX_HEADER_NAME);
            assert_bytes(h.value.ptr, h.value.len, big, i);
        }
        assert_int_equal(i, PROTO_MAX_HEADERS);
    }
    assert_int_equal(mit.left, 0);

    /* PUBLISH_ACK: extreme seq, id at its maximum. */
    proto_writer_init(&w, buf, cap);
    start = proto_publish_ack_begin(&w, 6);
    proto_publish_ack_add(&w, UINT64_MAX, PROTO_ACK_DUPLICATE, big, PROTO_MAX_ID);
    proto_publish_ack_add(&w, 0, 0, NULL, 0);
    assert_int_equal(proto_publish_ack_end(&w, start, 2), 0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.request_id, 6);
    proto_ack_iter_init(&ait, &f.u.publish_ack);
    assert_int_equal(proto_ack_next(&ait, &a), 1);
    assert_int_equal(a.seq, UINT64_MAX);
    assert_int_equal(a.flags, PROTO_ACK_DUPLICATE);
    assert_bytes(a.id.ptr, a.id.len, big, PROTO_MAX_ID);
    assert_int_equal(proto_ack_next(&ait, &a), 1);
    assert_int_equal(a.seq, 0);
    assert_int_equal(a.id.len, 0);
    assert_int_equal(proto_ack_next(&ait, &a), 0);

    /* TOPICS_OK: 100 entries, names at their maximum. */
    proto_writer_init(&w, buf, cap);
    start = proto_topics_ok_begin(&w, 8);
    for (i = 0; i < 100; i++) {
        t = (struct proto_topic_info){{big, PROTO_MAX_TOPIC}, i, i + 1, i + 2, i + 3, UINT64_MAX};
        proto_topics_ok_add(&w, &t);
    }
    assert_int_equal(proto_topics_ok_end(&w, start, 100), 0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.u.topics_ok.count, 100);
    proto_topic_iter_init(&tit, &f.u.topics_ok);
    for (i = 0; proto_topic_next(&tit, &t); i++) {
        assert_bytes(t.name.ptr, t.name.len, big, PROTO_MAX_TOPIC);
        assert_int_equal(t.head_seq, i);
        assert_int_equal(t.first_seq, i + 1);
        assert_int_equal(t.message_count, i + 2);
        assert_int_equal(t.bytes, i + 3);
        assert_int_equal(t.created_ms, UINT64_MAX);
    }
    assert_int_equal(i, 100);

    free(buf);
}

static void test_proto_writer_overflow_is_sticky(void **state)
{
    uint8_t buf[8];
    struct proto_writer w;

    (void)state;
    memset(buf, 0xee, sizeof buf);
    proto_writer_init(&w, buf, 5);
    proto_put_u32(&w, 0x01020304);
    assert_false(w.overflow);
    assert_int_equal(w.len, 4);
    proto_put_u16(&w, 0xffff); /* needs 2, 1 left */
    assert_true(w.overflow);
    assert_int_equal(w.len, 4);
    proto_put_u8(&w, 0x55); /* would fit, but the writer has failed */
    assert_int_equal(w.len, 4);
    assert_int_equal(buf[4], 0xee);
    proto_put_raw(&w, "", 0);
    proto_put_u64(&w, 1);
    proto_put_str16(&w, "a", 1);
    proto_put_bytes32(&w, "a", 1);
    assert_int_equal(w.len, 4);
    assert_memory_equal(buf, "\x01\x02\x03\x04\xee\xee\xee\xee", 8);

    /* A writer over no buffer fails on the first byte. */
    proto_writer_init(&w, NULL, 100);
    assert_int_equal(w.cap, 0);
    proto_put_u8(&w, 1);
    assert_true(w.overflow);

    /* Each primitive, exactly fitting, in big-endian order. */
    proto_writer_init(&w, buf, 8);
    proto_put_u64(&w, 0x0102030405060708ull);
    assert_false(w.overflow);
    assert_memory_equal(buf, "\x01\x02\x03\x04\x05\x06\x07\x08", 8);
    proto_writer_init(&w, buf, 8);
    proto_put_u8(&w, 0xaa);
    proto_put_u16(&w, 0x0102);
    proto_put_bytes32(&w, "z", 1);
    assert_false(w.overflow);
    assert_int_equal(w.len, 8);
    assert_memory_equal(buf, "\xaa\x01\x02\x00\x00\x00\x01z", 8);
}

static void test_proto_put_str16_over_65535_overflows(void **state)
{
    size_t cap = 70000;
    uint8_t *buf = malloc(cap);
    struct proto_writer w;

    (void)state;
    assert_non_null(buf);
    proto_writer_init(&w, buf, cap);
    proto_put_str16(&w, filled('s', 65536), 65536);
    assert_true(w.overflow);
    assert_int_equal(w.len, 0);

    proto_writer_init(&w, buf, cap);
    proto_put_str16(&w, filled('s', 65535), 65535);
    assert_false(w.overflow);
    assert_int_equal(w.len, 65537);
    assert_int_equal(proto_rd16(buf), 65535);

    /* NULL bytes with a length is a caller error, not a crash. */
    proto_writer_init(&w, buf, cap);
    proto_put_str16(&w, NULL, 3);
    assert_true(w.overflow);
    free(buf);
}

static void test_proto_frame_end_patches_length(void **state)
{
    uint8_t buf[32];
    struct proto_writer w;
    size_t start;

    (void)state;
    proto_writer_init(&w, buf, sizeof buf);
    proto_put_raw(&w, "zz", 2); /* a frame need not start at 0 */
    start = proto_frame_begin(&w, PROTO_PING, 0, 0x0a0b0c0d);
    assert_int_equal(start, 2);
    assert_int_equal(proto_frame_end(&w, start), 0);
    assert_bytes(buf + 2, w.len - 2, "\x00\x00\x00\x06\x04\x00\x0a\x0b\x0c\x0d", 10);
    /* A start that leaves no room for a header is refused. */
    assert_int_equal(proto_frame_end(&w, w.len - 3), -1);
    assert_true(w.overflow);
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_frame_end(&w, 5), -1);
}

static void test_proto_counted_frames_reject_bad_counts(void **state)
{
    uint8_t buf[256];
    struct proto_writer w;
    struct proto_msg m = {.topic = SL("t")};
    size_t start;

    (void)state;
    proto_writer_init(&w, buf, sizeof buf);
    start = proto_publish_begin(&w, 1);
    assert_int_equal(proto_publish_end(&w, start, 0), -1);
    assert_true(w.overflow);

    proto_writer_init(&w, buf, sizeof buf);
    start = proto_publish_begin(&w, 1);
    proto_publish_add(&w, &m, NULL);
    assert_int_equal(proto_publish_end(&w, start, PROTO_MAX_BATCH + 1), -1);

    proto_writer_init(&w, buf, sizeof buf);
    start = proto_publish_ack_begin(&w, 1);
    assert_int_equal(proto_publish_ack_end(&w, start, 0), -1);

    proto_writer_init(&w, buf, sizeof buf);
    start = proto_topics_ok_begin(&w, 1);
    assert_int_equal(proto_topics_ok_end(&w, start, PROTO_MAX_TOPICS + 1), -1);

    proto_writer_init(&w, buf, sizeof buf);
    start = proto_topics_ok_begin(&w, 1);
    assert_int_equal(proto_topics_ok_end(&w, start, 0), 0);
}

static void test_proto_encoders_reject_fields_over_max(void **state)
{
    uint8_t buf[4096];
    struct proto_writer w;
    struct proto_header hs[PROTO_MAX_HEADERS + 1];
    struct proto_msg ok = {.topic = SL("t")}, m;
    struct proto_hello hello = {1, {NULL, 0}, {NULL, 0}};
    struct proto_topic_info t = {{NULL, 0}, 0, 0, 0, 0, 0};
    const uint8_t *fill = filled('a', 2048);
    size_t start, i;

    (void)state;
    for (i = 0; i < ARRAY_LEN(hs); i++)
        hs[i] = (struct proto_header){SL("n"), SL("v")};

#define EXPECT_PUBLISH_FAILS(msg, headers)                                                         \
    do {                                                                                           \
        proto_writer_init(&w, buf, sizeof buf);                                                    \
        start = proto_publish_begin(&w, 1);                                                        \
        proto_publish_add(&w, &(msg), (headers));                                                  \
        assert_int_equal(proto_publish_end(&w, start, 1), -1);                                     \
    } while (0)

    m = ok;
    m.topic = (struct proto_slice){fill, PROTO_MAX_TOPIC + 1};
    EXPECT_PUBLISH_FAILS(m, NULL);
    m = ok;
    m.id = (struct proto_slice){fill, PROTO_MAX_ID + 1};
    EXPECT_PUBLISH_FAILS(m, NULL);
    m = ok;
    m.key = (struct proto_slice){fill, PROTO_MAX_KEY + 1};
    EXPECT_PUBLISH_FAILS(m, NULL);
    m = ok;
    m.header_count = PROTO_MAX_HEADERS + 1;
    EXPECT_PUBLISH_FAILS(m, hs);
    m = ok;
    m.header_count = 1; /* headers missing */
    EXPECT_PUBLISH_FAILS(m, NULL);
    hs[0].name = (struct proto_slice){NULL, 0};
    EXPECT_PUBLISH_FAILS(m, hs);
    hs[0].name = (struct proto_slice){fill, PROTO_MAX_HEADER_NAME + 1};
    EXPECT_PUBLISH_FAILS(m, hs);
#undef EXPECT_PUBLISH_FAILS

    hello.client_name = (struct proto_slice){fill, PROTO_MAX_CLIENT_NAME + 1};
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_hello(&w, 1, &hello), -1);
    hello.client_name = (struct proto_slice){NULL, 0};
    hello.token = (struct proto_slice){fill, PROTO_MAX_TOKEN + 1};
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_hello(&w, 1, &hello), -1);

    proto_writer_init(&w, buf, sizeof buf);
    start = proto_publish_ack_begin(&w, 1);
    proto_publish_ack_add(&w, 1, 0, fill, PROTO_MAX_ID + 1);
    assert_int_equal(proto_publish_ack_end(&w, start, 1), -1);

    t.name = (struct proto_slice){fill, PROTO_MAX_TOPIC + 1};
    proto_writer_init(&w, buf, sizeof buf);
    start = proto_topics_ok_begin(&w, 1);
    proto_topics_ok_add(&w, &t);
    assert_int_equal(proto_topics_ok_end(&w, start, 1), -1);

    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_error(&w, 1, 0, 0, "x", 1), -1);
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_error(&w, 1, 0, FERRY_WIRE_CODE_MAX + 1, "x", 1), -1);
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_error(&w, 1, 0, (uint16_t)FERRY_EAUTH, "x", 1), -1);

    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_empty(&w, PROTO_HELLO, 1), -1);
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_empty(&w, 0x77, 1), -1);
}

static void test_proto_encode_error_truncates_long_text(void **state)
{
    uint8_t buf[2048];
    char text[1500];
    struct proto_writer w;
    struct proto_frame f;

    (void)state;
    memset(text, 'x', sizeof text);
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_error(&w, 1, 0, 14, text, sizeof text), 0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.u.error.message.len, PROTO_MAX_ERROR_TEXT);

    /* A two-byte character straddling the limit is dropped whole. */
    text[PROTO_MAX_ERROR_TEXT - 1] = (char)0xc3;
    text[PROTO_MAX_ERROR_TEXT] = (char)0xa9;
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_error(&w, 1, 0, 14, text, sizeof text), 0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.u.error.message.len, PROTO_MAX_ERROR_TEXT - 1);

    /* A NULL message is an empty one. */
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_error(&w, 1, 0, 14, NULL, 5), 0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.u.error.message.len, 0);
}

static void test_proto_publish_msg_bytes_matches_encoding(void **state)
{
    static const struct proto_header hs[] = {{SL("ct"), SL("json")}, {SL("trace"), SL("abc")}};
    struct proto_msg m = {.topic = SL("orders"),
                          .id = SL("o1"),
                          .key = SL("c42"),
                          .header_count = 2,
                          .payload = SL("{}")};
    uint8_t buf[256];
    struct proto_writer w;

    (void)state;
    proto_writer_init(&w, buf, sizeof buf);
    proto_publish_add(&w, &m, hs);
    assert_false(w.overflow);
    assert_int_equal(proto_publish_msg_bytes(&m, hs), w.len);
    /* The first message of v_publish_batch is this one. */
    assert_bytes(buf, w.len, v_publish_batch + 12, w.len);
}

/* --- Semantic rules ---------------------------------------------------- */

static int topic_ok(const char *s)
{
    return proto_topic_valid((const uint8_t *)s, strlen(s));
}

static int id_ok(const char *s)
{
    return proto_id_valid((const uint8_t *)s, strlen(s));
}

static void test_proto_topic_validation_rules(void **state)
{
    static const char *good[] = {"a",       "Z",      "0",  "orders", "orders.v2",
                                 "a_b-c.d", "9lives", "x-", "x_",     "x."};
    static const char *bad[] = {"",    "_dlq", ".hidden", "-x", "a b", "a/b", "a*", "a>",
                                "a:b", "a\tb", "a\x7f",   "é",  "aé",  "a,b", "a#"};
    uint8_t name[PROTO_MAX_TOPIC + 1];
    size_t i;

    (void)state;
    for (i = 0; i < ARRAY_LEN(good); i++) {
        if (topic_ok(good[i]) != 0)
            fail_msg("\"%s\" was refused", good[i]);
    }
    for (i = 0; i < ARRAY_LEN(bad); i++) {
        if (topic_ok(bad[i]) != FERRY_EINVALID_TOPIC)
            fail_msg("\"%s\" was accepted", bad[i]);
    }
    assert_int_equal(proto_topic_valid((const uint8_t *)"a\0b", 3), FERRY_EINVALID_TOPIC);
    assert_int_equal(proto_topic_valid(NULL, 0), FERRY_EINVALID_TOPIC);

    memset(name, 'a', sizeof name);
    assert_int_equal(proto_topic_valid(name, PROTO_MAX_TOPIC), 0);
    assert_int_equal(proto_topic_valid(name, PROTO_MAX_TOPIC + 1), FERRY_EINVALID_TOPIC);
}

static void test_proto_id_validation_rules(void **state)
{
    static const char *good[] = {
        "x", "!", "~", "o-1", "0190a6b2-7c1e-7a3f-9b2d-5e8f00c4d1aa", "ord:42/line#3"};
    static const char *bad[] = {"", " ", "a b", "a\tb", "a\x7f", "\x80", "é", "a\n"};
    uint8_t id[PROTO_MAX_ID + 1];
    size_t i;

    (void)state;
    for (i = 0; i < ARRAY_LEN(good); i++) {
        if (id_ok(good[i]) != 0)
            fail_msg("\"%s\" was refused", good[i]);
    }
    for (i = 0; i < ARRAY_LEN(bad); i++) {
        if (id_ok(bad[i]) != FERRY_EINVALID_ID)
            fail_msg("\"%s\" was accepted", bad[i]);
    }
    assert_int_equal(proto_id_valid(NULL, 0), FERRY_EINVALID_ID);
    memset(id, '~', sizeof id);
    assert_int_equal(proto_id_valid(id, PROTO_MAX_ID), 0);
    assert_int_equal(proto_id_valid(id, PROTO_MAX_ID + 1), FERRY_EINVALID_ID);
}

/* The first message of v_publish_batch: key "c42", headers ct=json and
 * trace=abc, payload "{}": 3 + (2 + 4) + (5 + 3) + 2 = 19 bytes. */
static void first_batch_msg(struct proto_msg *m)
{
    struct proto_frame f;
    struct proto_msg_iter it;

    decode_ok(v_publish_batch, sizeof v_publish_batch, &f);
    proto_msg_iter_init(&it, &f.u.publish);
    assert_int_equal(proto_msg_next(&it, m), 1);
}

static void test_proto_msg_size_counts_key_headers_payload(void **state)
{
    struct proto_msg m;

    (void)state;
    first_batch_msg(&m);
    assert_int_equal(proto_msg_size(&m), 19);
    m = (struct proto_msg){0};
    assert_int_equal(proto_msg_size(&m), 0);
}

static void test_proto_msg_check_enforces_size_topic_and_id(void **state)
{
    struct proto_msg m, bad;

    (void)state;
    first_batch_msg(&m);
    assert_int_equal(proto_msg_check(&m, 19), 0);
    assert_int_equal(proto_msg_check(&m, 18), FERRY_EMESSAGE_TOO_LARGE);
    assert_int_equal(proto_msg_check(&m, 0), FERRY_EMESSAGE_TOO_LARGE);

    bad = m;
    bad.topic = (struct proto_slice)SL("_orders.dlq");
    assert_int_equal(proto_msg_check(&bad, 1000), FERRY_EINVALID_TOPIC);
    bad.topic = (struct proto_slice){NULL, 0};
    assert_int_equal(proto_msg_check(&bad, 1000), FERRY_EINVALID_TOPIC);
    /* The topic is judged first. */
    assert_int_equal(proto_msg_check(&bad, 0), FERRY_EINVALID_TOPIC);

    bad = m;
    bad.id = (struct proto_slice)SL("has space");
    assert_int_equal(proto_msg_check(&bad, 1000), FERRY_EINVALID_ID);
    /* An empty id asks the broker for one: fine. */
    bad.id = (struct proto_slice){NULL, 0};
    assert_int_equal(proto_msg_check(&bad, 1000), 0);
}

static void test_proto_iterators_over_empty_structs_stop(void **state)
{
    struct proto_publish pub = {0};
    struct proto_publish_ack ack = {0};
    struct proto_topics_ok tok = {0};
    struct proto_msg m = {0};
    struct proto_msg_iter mit;
    struct proto_header_iter hit;
    struct proto_ack_iter ait;
    struct proto_topic_iter tit;
    struct proto_header h;
    struct proto_ack_entry a;
    struct proto_topic_info t;

    (void)state;
    pub.count = 3; /* a count without bytes must not be trusted */
    proto_msg_iter_init(&mit, &pub);
    assert_int_equal(proto_msg_next(&mit, &m), 0);
    m.header_count = 2;
    proto_header_iter_init(&hit, &m);
    assert_int_equal(proto_header_next(&hit, &h), 0);
    ack.count = 1;
    proto_ack_iter_init(&ait, &ack);
    assert_int_equal(proto_ack_next(&ait, &a), 0);
    tok.count = 1;
    proto_topic_iter_init(&tit, &tok);
    assert_int_equal(proto_topic_next(&tit, &t), 0);

    /* A count larger than the bytes hold stops at the end of the bytes. */
    pub.msgs = (struct proto_slice){v_publish + 12, sizeof v_publish - 12};
    proto_msg_iter_init(&mit, &pub);
    assert_int_equal(proto_msg_next(&mit, &m), 1);
    assert_int_equal(proto_msg_next(&mit, &m), 0);
    assert_int_equal(proto_msg_next(&mit, &m), 0);
}

/* --- Error text -------------------------------------------------------- */

static void test_proto_strerror_covers_each_code(void **state)
{
    (void)state;
#define CHECK_TEXT(name, num, text)                                                                \
    assert_string_equal(proto_strerror(FERRY_E##name), text);                                      \
    assert_string_equal(proto_strerror(num), text);
    FERRY_ERRNO_MAP(CHECK_TEXT)
#undef CHECK_TEXT
    assert_string_equal(proto_strerror(-FERRY_EMALFORMED), "malformed frame");
    assert_string_equal(proto_strerror(0), "success");
    assert_string_equal(proto_strerror(19), "unknown error");
    assert_string_equal(proto_strerror(-99), "unknown error");
    assert_string_equal(proto_strerror(1000), "unknown error");
    assert_string_equal(proto_strerror(INT_MIN), "unknown error");
    assert_string_equal(proto_strerror(INT_MAX), "unknown error");
}

/* --- The document ------------------------------------------------------ */

static char *read_file(const char *path)
{
    FILE *fp = fopen(path, "rb");
    char *text;
    long n;

    if (fp == NULL)
        return NULL;
    if (fseek(fp, 0, SEEK_END) != 0 || (n = ftell(fp)) < 0 || fseek(fp, 0, SEEK_SET) != 0) {
        fclose(fp);
        return NULL;
    }
    text = malloc((size_t)n + 1);
    if (text && fread(text, 1, (size_t)n, fp) != (size_t)n) {
        free(text);
        text = NULL;
    }
    if (text)
        text[n] = '\0';
    fclose(fp);
    return text;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Parses the hex bytes of the fenced block that follows "<!-- vector:name -->"
 * in text ('#' starts a comment to the end of the line). Returns the byte
 * count, or -1 when the block is missing or holds anything but hex pairs,
 * white space and comments. */
static long spec_vector(const char *text, const char *name, uint8_t *out, size_t cap)
{
    char marker[64];
    const char *p, *end;
    size_t n = 0;

    snprintf(marker, sizeof marker, "<!-- vector:%s -->", name);
    p = strstr(text, marker);
    if (p == NULL || (p = strstr(p, "```")) == NULL || (p = strchr(p, '\n')) == NULL ||
        (end = strstr(p, "```")) == NULL)
        return -1;
    while (p < end) {
        int hi, lo;

        if (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t') {
            p++;
            continue;
        }
        if (*p == '#') { /* a comment runs to the end of the line */
            while (p < end && *p != '\n')
                p++;
            continue;
        }
        if (end - p < 2 || (hi = hex_digit(p[0])) < 0 || (lo = hex_digit(p[1])) < 0 || n == cap)
            return -1;
        out[n++] = (uint8_t)(hi << 4 | lo);
        p += 2;
    }
    return (long)n;
}

static void test_proto_spec_vectors_match_protocol_md(void **state)
{
    static const struct vector spec[] = {
        {"hello", v_hello, sizeof v_hello},
        {"hello_ok", v_hello_ok, sizeof v_hello_ok},
        {"publish", v_publish, sizeof v_publish},
        {"publish_ack", v_publish_ack, sizeof v_publish_ack},
        {"error", v_error, sizeof v_error},
    };
    uint8_t bytes[256];
    char *text;
    size_t i;

    (void)state;
    if (spec_path == NULL)
        skip();
    text = read_file(spec_path);
    if (text == NULL)
        fail_msg("cannot read %s", spec_path);
    for (i = 0; i < ARRAY_LEN(spec); i++) {
        long n = spec_vector(text, spec[i].name, bytes, sizeof bytes);

        if (n < 0)
            fail_msg("%s: no readable vector:%s block", spec_path, spec[i].name);
        if ((size_t)n != spec[i].len || memcmp(bytes, spec[i].bytes, spec[i].len) != 0)
            fail_msg("%s: vector:%s differs from the test's bytes", spec_path, spec[i].name);
    }
    free(text);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_proto_hello_decodes),
        cmocka_unit_test(test_proto_hello_ok_decodes),
        cmocka_unit_test(test_proto_error_decodes),
        cmocka_unit_test(test_proto_empty_body_frames_decode),
        cmocka_unit_test(test_proto_publish_decodes),
        cmocka_unit_test(test_proto_publish_ack_decodes),
        cmocka_unit_test(test_proto_publish_batch_iterates_messages_and_headers),
        cmocka_unit_test(test_proto_publish_ack_batch_iterates),
        cmocka_unit_test(test_proto_topics_ok_iterates_and_skips_appended_fields),
        cmocka_unit_test(test_proto_reserved_types_decode_header_only),
        cmocka_unit_test(test_proto_consecutive_frames_decode_in_order),
        cmocka_unit_test(test_proto_peek_header_reports_fields),
        cmocka_unit_test(test_proto_truncated_frames_need_more_at_every_offset),
        cmocka_unit_test(test_proto_oversized_length_is_rejected_from_header),
        cmocka_unit_test(test_proto_length_under_six_is_malformed),
        cmocka_unit_test(test_proto_unknown_type_is_rejected),
        cmocka_unit_test(test_proto_trailing_bytes_are_malformed),
        cmocka_unit_test(test_proto_empty_body_types_reject_a_body),
        cmocka_unit_test(test_proto_short_bodies_are_malformed),
        cmocka_unit_test(test_proto_field_lengths_past_the_body_are_malformed),
        cmocka_unit_test(test_proto_fields_over_their_maximum_are_malformed),
        cmocka_unit_test(test_proto_publish_count_zero_is_malformed),
        cmocka_unit_test(test_proto_publish_count_over_max_is_malformed),
        cmocka_unit_test(test_proto_publish_count_must_match_messages),
        cmocka_unit_test(test_proto_publish_ack_and_topics_ok_counts_are_checked),
        cmocka_unit_test(test_proto_error_code_outside_wire_range_is_malformed),
        cmocka_unit_test(test_proto_undefined_flags_are_passed_through),
        cmocka_unit_test(test_proto_encoders_reproduce_vectors),
        cmocka_unit_test(test_proto_encoders_fail_cleanly_at_every_short_cap),
        cmocka_unit_test(test_proto_round_trip_each_type),
        cmocka_unit_test(test_proto_writer_overflow_is_sticky),
        cmocka_unit_test(test_proto_put_str16_over_65535_overflows),
        cmocka_unit_test(test_proto_frame_end_patches_length),
        cmocka_unit_test(test_proto_counted_frames_reject_bad_counts),
        cmocka_unit_test(test_proto_encoders_reject_fields_over_max),
        cmocka_unit_test(test_proto_encode_error_truncates_long_text),
        cmocka_unit_test(test_proto_publish_msg_bytes_matches_encoding),
        cmocka_unit_test(test_proto_topic_validation_rules),
        cmocka_unit_test(test_proto_id_validation_rules),
        cmocka_unit_test(test_proto_msg_size_counts_key_headers_payload),
        cmocka_unit_test(test_proto_msg_check_enforces_size_topic_and_id),
        cmocka_unit_test(test_proto_iterators_over_empty_structs_stop),
        cmocka_unit_test(test_proto_strerror_covers_each_code),
        cmocka_unit_test(test_proto_spec_vectors_match_protocol_md),
    };

    if (argc > 1)
        spec_path = argv[1];
    return cmocka_run_group_tests(tests, NULL, NULL);
}
