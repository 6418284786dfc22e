/*
 * test_conformance.c - docs/PROTOCOL.md against the real ferryd, over raw
 * frames (issue 20): one case per MUST the broker must keep, named after the
 * spec's section (test_s<section>_<rule>), plus the behaviour a client
 * relies on where the spec once was silent or disagreed with the broker.
 * A change to PROTOCOL.md's broker rules comes with a case here, and a
 * broker change that breaks one fails it.
 *
 * Every frame is built with the reference codec (proto/) or by hand when it
 * must be wrong, and every reply is decoded with it; libferry is not used,
 * so nothing here depends on what the client library does for its user.
 * Timeouts are asserted only where §1 gives a precision (10 % or 100 ms);
 * every other wait only guards against a hang.
 */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "it_util.h"

/* A wait that only guards against a hang. */
#define WAIT_MS (10000 * harness_slowdown())

/* DELIVERs that came before a reply, kept for next_deliver (copies). */
#define STASH_MAX 64
static uint8_t *stash[STASH_MAX];
static size_t stash_len[STASH_MAX], stash_n;

static int setup_args(void **state, const char *const *args)
{
    return it_fx_start(state, sizeof(struct it_fx), args);
}

static int setup(void **state)
{
    return setup_args(state, NULL);
}

static int setup_timeouts(void **state)
{
    static const char *const args[] = {"--handshake-timeout", "1s", "--idle-timeout", "1s", NULL};
    return setup_args(state, args);
}

static int teardown(void **state)
{
    while (stash_n)
        free(stash[--stash_n]);
    return it_fx_teardown_stop(state);
}

/* ----- raw frames ------------------------------------------------------------ */

static uint8_t rbuf[8 << 20];

static int dial(struct it_fx *fx)
{
    int fd = harness_connect(fx->b.addr);
    assert_true(fd >= 0);
    return fd;
}

/* A connection past HELLO_OK. */
static int dial_ready(struct it_fx *fx)
{
    int fd = dial(fx);
    assert_int_equal(harness_handshake(fd, NULL), 0);
    return fd;
}

static void put_header(uint8_t *p, uint32_t length, uint8_t type, uint8_t flags, uint32_t rid)
{
    proto_wr32(p, length);
    p[4] = type;
    p[5] = flags;
    proto_wr32(p + 6, rid);
}

static void send_bytes(int fd, const void *p, size_t n)
{
    assert_int_equal(harness_send(fd, p, n), 0);
}

/* Sends a frame and returns the next reply; DELIVERs before it are kept. */
static void request(int fd, const uint8_t *frame, size_t len, struct proto_frame *f)
{
    assert_int_equal(harness_send(fd, frame, len), 0);
    for (;;) {
        int r = harness_read_frame(fd, rbuf, sizeof rbuf, WAIT_MS, f);
        if (r != 1)
            fail_msg("no reply to a frame of type 0x%02x: %d", frame[4], r);
        if (f->type != PROTO_DELIVER)
            return;
        size_t n = (size_t)proto_rd32(rbuf) + 4;
        assert_true(stash_n < STASH_MAX);
        stash[stash_n] = malloc(n);
        assert_non_null(stash[stash_n]);
        memcpy(stash[stash_n], rbuf, n);
        stash_len[stash_n++] = n;
    }
}

static void read_frame(int fd, struct proto_frame *f)
{
    int r = harness_read_frame(fd, rbuf, sizeof rbuf, WAIT_MS, f);
    if (r != 1)
        fail_msg("no frame: %d", r);
}

/* Reads the fatal ERROR that must come, and the close after it. */
static void expect_fatal(int fd, int code, uint32_t rid)
{
    struct proto_frame f;
    read_frame(fd, &f);
    if (f.type != PROTO_ERROR)
        fail_msg("frame type 0x%02x where a fatal ERROR %s was due", f.type, proto_strerror(code));
    if (f.u.error.code != (uint16_t)-code)
        fail_msg("ERROR code %u (%.*s), want %u (%s)", f.u.error.code, (int)f.u.error.message.len,
                 (const char *)f.u.error.message.ptr, (unsigned)-code, proto_strerror(code));
    assert_true(f.flags & PROTO_ERROR_FATAL);
    assert_int_equal(f.request_id, rid);
    assert_int_equal(harness_wait_closed(fd, WAIT_MS), 1);
}

/* A per-request ERROR: code, request id, not FATAL. */
static void expect_error(const struct proto_frame *f, int code, uint32_t rid)
{
    if (f->type != PROTO_ERROR || f->u.error.code != (uint16_t)-code)
        fail_msg("frame type 0x%02x (code %u), want ERROR %s", f->type,
                 f->type == PROTO_ERROR ? f->u.error.code : 0, proto_strerror(code));
    assert_false(f->flags & PROTO_ERROR_FATAL);
    assert_int_equal(f->request_id, rid);
}

static void ping(int fd, uint32_t rid)
{
    uint8_t p[PROTO_HEADER_BYTES];
    put_header(p, 6, PROTO_PING, 0, rid);
    struct proto_frame f;
    request(fd, p, sizeof p, &f);
    assert_int_equal(f.type, PROTO_PONG);
    assert_int_equal(f.request_id, rid);
}

static size_t build_hello(uint8_t *buf, size_t cap, uint16_t version, uint32_t rid,
                          const char *token)
{
    struct proto_writer w;
    struct proto_hello h = {.version = version};
    if (token)
        h.token = (struct proto_slice){(const uint8_t *)token, strlen(token)};
    proto_writer_init(&w, buf, cap);
    assert_int_equal(proto_encode_hello(&w, rid, &h), 0);
    return w.len;
}

/* A PUBLISH of n messages to topic[i] with id[i] (NULL: none). */
static size_t build_publish(uint8_t *buf, size_t cap, uint32_t rid, int n,
                            const char *const *topics, const char *const *ids)
{
    struct proto_writer w;
    proto_writer_init(&w, buf, cap);
    size_t start = proto_publish_begin(&w, rid);
    for (int i = 0; i < n; i++) {
        struct proto_msg m;
        memset(&m, 0, sizeof m);
        m.topic = (struct proto_slice){(const uint8_t *)topics[i], strlen(topics[i])};
        if (ids && ids[i])
            m.id = (struct proto_slice){(const uint8_t *)ids[i], strlen(ids[i])};
        m.payload = (struct proto_slice){(const uint8_t *)"p", 1};
        proto_publish_add(&w, &m, NULL);
    }
    assert_int_equal(proto_publish_end(&w, start, (uint16_t)n), 0);
    return w.len;
}

/* Publishes one message and returns its sequence. */
static uint64_t publish1(int fd, const char *topic, const char *id)
{
    uint8_t buf[1024];
    size_t n = build_publish(buf, sizeof buf, 50, 1, &topic, &id);
    struct proto_frame f;
    request(fd, buf, n, &f);
    if (f.type != PROTO_PUBLISH_ACK)
        fail_msg("publish to %s: frame type 0x%02x (code %u)", topic, f.type,
                 f.type == PROTO_ERROR ? f.u.error.code : 0);
    struct proto_ack_iter it;
    struct proto_ack_entry e;
    proto_ack_iter_init(&it, &f.u.publish_ack);
    assert_int_equal(proto_ack_next(&it, &e), 1);
    return e.seq;
}

static void subscribe(int fd, uint32_t sub_id, const char *topic, const char *group,
                      uint16_t max_deliveries, uint32_t window, struct proto_subscribe_ok *ok)
{
    uint8_t buf[1024];
    struct proto_writer w;
    struct proto_subscribe s = {
        .sub_id = sub_id,
        .topic = {(const uint8_t *)topic, strlen(topic)},
        .group = {(const uint8_t *)group, strlen(group)},
        .start = PROTO_START_EARLIEST,
        .max_in_flight = window,
        .ack_wait_ms = 30000,
        .max_deliveries = max_deliveries,
    };
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_subscribe(&w, 60, &s), 0);
    struct proto_frame f;
    request(fd, buf, w.len, &f);
    if (f.type != PROTO_SUBSCRIBE_OK)
        fail_msg("subscribe %s/%s: frame type 0x%02x (code %u)", topic, group, f.type,
                 f.type == PROTO_ERROR ? f.u.error.code : 0);
    if (ok)
        *ok = f.u.subscribe_ok;
}

static void seek(int fd, const char *topic, const char *group, uint8_t start, uint64_t value)
{
    uint8_t buf[1024];
    struct proto_writer w;
    struct proto_seek s = {
        .topic = {(const uint8_t *)topic, strlen(topic)},
        .group = {(const uint8_t *)group, strlen(group)},
        .start = start,
        .value = value,
    };
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_seek(&w, 61, &s), 0);
    struct proto_frame f;
    request(fd, buf, w.len, &f);
    assert_int_equal(f.type, PROTO_ACK_OK);
}

/* The next DELIVER (a kept one first), whatever else comes being a
 * failure. d's slices stay valid until the next call. */
static void next_deliver(int fd, struct proto_deliver *d)
{
    struct proto_frame f;
    if (stash_n) {
        size_t n = stash_len[0];
        memcpy(rbuf, stash[0], n);
        free(stash[0]);
        memmove(stash, stash + 1, (stash_n - 1) * sizeof stash[0]);
        memmove(stash_len, stash_len + 1, (stash_n - 1) * sizeof stash_len[0]);
        stash_n--;
        assert_int_equal(proto_decode(rbuf, n, PROTO_ABSOLUTE_MAX_FRAME, &f), (ptrdiff_t)n);
    } else {
        read_frame(fd, &f);
    }
    if (f.type != PROTO_DELIVER)
        fail_msg("frame type 0x%02x where a DELIVER was due", f.type);
    *d = f.u.deliver;
}

/* Sends ACK, NACK (reason "r") and reads the ACK_OK's first code. */
static uint16_t ack_nack(int fd, uint8_t type, uint32_t sub_id, uint64_t seq)
{
    uint8_t buf[256];
    struct proto_writer w;
    proto_writer_init(&w, buf, sizeof buf);
    if (type == PROTO_ACK) {
        assert_int_equal(proto_encode_ack(&w, 62, sub_id, &seq, 1), 0);
    } else {
        struct proto_nack n = {.sub_id = sub_id, .seq = seq, .reason = {(const uint8_t *)"r", 1}};
        assert_int_equal(proto_encode_nack(&w, 62, &n), 0);
    }
    struct proto_frame f;
    request(fd, buf, w.len, &f);
    assert_int_equal(f.type, PROTO_ACK_OK);
    struct proto_ack_ok_iter it;
    uint64_t s;
    uint16_t code;
    proto_ack_ok_iter_init(&it, &f.u.ack_ok);
    assert_int_equal(proto_ack_ok_next(&it, &s, &code), 1);
    assert_int_equal(s, seq);
    return code;
}

/* GROUPS for one topic, the entry of one group. */
static void group_info(int fd, const char *topic, const char *group, struct proto_group_info *out)
{
    uint8_t buf[512];
    struct proto_writer w;
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_groups(&w, 63, topic, strlen(topic)), 0);
    struct proto_frame f;
    request(fd, buf, w.len, &f);
    assert_int_equal(f.type, PROTO_GROUPS_OK);
    struct proto_group_iter it;
    proto_group_iter_init(&it, &f.u.groups_ok);
    while (proto_group_next(&it, out) == 1)
        if (out->group.len == strlen(group) && !memcmp(out->group.ptr, group, out->group.len))
            return;
    fail_msg("GROUPS %s does not list %s", topic, group);
}

/* ----- §1 transport and connection life ---------------------------------------- */

/* §1: "The first frame MUST be HELLO": another well-formed client frame is
 * a fatal HANDSHAKE, carrying that frame's request id (§4.3). */
static void test_s1_first_frame_must_be_hello(void **state)
{
    struct it_fx *fx = *state;
    int fd = dial(fx);
    uint8_t p[PROTO_HEADER_BYTES];
    put_header(p, 6, PROTO_PING, 0, 77);
    send_bytes(fd, p, sizeof p);
    expect_fatal(fd, FERRY_EHANDSHAKE, 77);
    close(fd);
}

/* §1, §2: an undefined type as the first frame is UNKNOWN_TYPE (§2's rules
 * come first), not HANDSHAKE. */
static void test_s1_undefined_first_frame_unknown_type(void **state)
{
    struct it_fx *fx = *state;
    int fd = dial(fx);
    uint8_t p[PROTO_HEADER_BYTES];
    put_header(p, 6, 0x7e, 0, 5);
    send_bytes(fd, p, sizeof p);
    expect_fatal(fd, FERRY_EUNKNOWN_TYPE, 0);
    close(fd);
}

/* §1: before HELLO_OK, a length above 65536 is FRAME_TOO_LARGE. */
static void test_s1_handshake_frame_limit(void **state)
{
    struct it_fx *fx = *state;
    int fd = dial(fx);
    uint8_t p[PROTO_HEADER_BYTES];
    put_header(p, PROTO_HANDSHAKE_MAX_FRAME + 1, PROTO_HELLO, 0, 1);
    send_bytes(fd, p, sizeof p);
    expect_fatal(fd, FERRY_EFRAME_TOO_LARGE, 0);
    close(fd);
}

/* §1: after HELLO_OK the client MUST NOT exceed max_frame_bytes; a frame
 * that does is FRAME_TOO_LARGE, answered from its length alone, while the
 * body is still to come. */
static void test_s1_max_frame_bytes_enforced(void **state)
{
    struct it_fx *fx = *state;
    int fd = dial(fx);
    uint32_t max_frame = 0;
    assert_int_equal(harness_handshake(fd, &max_frame), 0);
    /* §10: max(4 MiB, max_message_bytes + 64 KiB): 4 MiB by default. */
    assert_int_equal(max_frame, PROTO_DEFAULT_MAX_FRAME);
    uint8_t p[PROTO_HEADER_BYTES];
    put_header(p, max_frame + 1, PROTO_PUBLISH, 0, 3);
    send_bytes(fd, p, sizeof p);
    expect_fatal(fd, FERRY_EFRAME_TOO_LARGE, 0);
    close(fd);
}

/* §1: a token sent to a broker that has none is ignored. */
static void test_s1_token_without_tokens_ignored(void **state)
{
    struct it_fx *fx = *state;
    int fd = dial(fx);
    uint8_t buf[256];
    size_t n = build_hello(buf, sizeof buf, PROTO_VERSION, 4, "some-secret-token");
    struct proto_frame f;
    request(fd, buf, n, &f);
    assert_int_equal(f.type, PROTO_HELLO_OK);
    assert_int_equal(f.request_id, 4);
    ping(fd, 5);
    close(fd);
}

/* §1: timeouts fire within 10 % or 100 ms of their setting, whichever is
 * larger: the handshake timeout (1 s here) and the idle timeout (1 s). */
static void test_s1_timeouts_precise(void **state)
{
    struct it_fx *fx = *state;
    const int64_t setting = 1000, slack = 100;
    int fd = dial(fx);
    int64_t t0 = harness_now_ms();
    expect_fatal(fd, FERRY_ETIMEOUT_IDLE, 0);
    int64_t hs = harness_now_ms() - t0;
    close(fd);

    fd = dial_ready(fx);
    t0 = harness_now_ms();
    expect_fatal(fd, FERRY_ETIMEOUT_IDLE, 0);
    int64_t idle = harness_now_ms() - t0;
    close(fd);
    print_message("handshake timeout 1 s: closed after %lld ms; idle timeout 1 s: closed after "
                  "%lld ms (allowed %lld..%lld ms)\n",
                  (long long)hs, (long long)idle, (long long)setting,
                  (long long)(setting + slack * harness_slowdown()));
    /* A connection is not closed early; late by at most the slack (times
     * the slowdown under valgrind, where every step is slower). */
    assert_true(hs >= setting - 5 && hs <= setting + slack * harness_slowdown());
    assert_true(idle >= setting - 5 && idle <= setting + slack * harness_slowdown());
}

/* §1: a PING keeps a connection alive past its idle timeout. */
static void test_s1_ping_keeps_alive(void **state)
{
    struct it_fx *fx = *state;
    int fd = dial_ready(fx);
    for (int i = 0; i < 8; i++) {
        it_sleep_ms(300);
        ping(fd, 10 + (uint32_t)i);
    }
    close(fd);
}

/* ----- §2 frame layout ----------------------------------------------------------- */

/* §2 rule 1: length < 6 is MALFORMED, request id 0. */
static void test_s2_length_below_minimum_malformed(void **state)
{
    struct it_fx *fx = *state;
    int fd = dial_ready(fx);
    uint8_t p[PROTO_HEADER_BYTES];
    put_header(p, 5, PROTO_PING, 0, 9);
    send_bytes(fd, p, sizeof p);
    expect_fatal(fd, FERRY_EMALFORMED, 0);
    close(fd);
}

/* §2 rule 2: a type sent in the wrong direction is UNKNOWN_TYPE, judged
 * from the header alone: the broker answers before the body it announces
 * has arrived (it never will). Also an undefined type. */
static void test_s2_type_judged_from_header(void **state)
{
    struct it_fx *fx = *state;
    static const uint8_t types[] = {
        PROTO_HELLO_OK,
        PROTO_ERROR,
        PROTO_PUBLISH_ACK,
        PROTO_SUBSCRIBE_OK,
        PROTO_DELIVER,
        PROTO_ACK_OK,
        PROTO_TOPICS_OK,
        PROTO_GROUPS_OK,
        PROTO_FLOOR_OK,
        0x00,
        0x06,
        0x12,
        PROTO_PEEK_OK,
        0x2f,
        PROTO_DELETE_OK,
        PROTO_SUB_END,
        0x38,
        0xff,
    };
    for (size_t i = 0; i < sizeof types; i++) {
        int fd = dial_ready(fx);
        uint8_t p[PROTO_HEADER_BYTES];
        put_header(p, 6 + 100, types[i], 0, 21);
        send_bytes(fd, p, sizeof p);
        expect_fatal(fd, FERRY_EUNKNOWN_TYPE, 0);
        close(fd);
    }
}

/* §2 rule 3: no bytes may follow the last field: MALFORMED. */
static void test_s2_trailing_bytes_malformed(void **state)
{
    struct it_fx *fx = *state;
    int fd = dial_ready(fx);
    uint8_t p[PROTO_HEADER_BYTES + 1];
    put_header(p, 7, PROTO_PING, 0, 9);
    p[10] = 0;
    send_bytes(fd, p, sizeof p);
    expect_fatal(fd, FERRY_EMALFORMED, 0);
    close(fd);
}

/* §2: undefined flag bits MUST be ignored on receipt. */
static void test_s2_undefined_flags_ignored(void **state)
{
    struct it_fx *fx = *state;
    int fd = dial_ready(fx);
    uint8_t p[PROTO_HEADER_BYTES];
    put_header(p, 6, PROTO_PING, 0xfe, 31);
    struct proto_frame f;
    request(fd, p, sizeof p, &f);
    assert_int_equal(f.type, PROTO_PONG);
    assert_int_equal(f.request_id, 31);
    close(fd);
}

/* §2, §1: EOF inside a frame: the partial frame is dropped, nothing of it
 * happens, and the broker goes on. */
static void test_s2_eof_inside_frame_discarded(void **state)
{
    struct it_fx *fx = *state;
    int fd = dial_ready(fx);
    uint8_t buf[1024];
    const char *topic = "eof-topic";
    size_t n = build_publish(buf, sizeof buf, 8, 1, &topic, NULL);
    send_bytes(fd, buf, n - 1);
    close(fd);
    fd = dial_ready(fx);
    uint8_t t[PROTO_HEADER_BYTES];
    put_header(t, 6, PROTO_TOPICS, 0, 2);
    struct proto_frame f;
    request(fd, t, sizeof t, &f);
    assert_int_equal(f.type, PROTO_TOPICS_OK);
    assert_int_equal(f.u.topics_ok.count, 0);
    close(fd);
}

/* ----- §4 frame types ------------------------------------------------------------ */

/* §4.1: a version the broker does not speak is a fatal VERSION, with the
 * HELLO's request id. */
static void test_s4_1_version_fatal_with_request_id(void **state)
{
    struct it_fx *fx = *state;
    int fd = dial(fx);
    uint8_t buf[256];
    size_t n = build_hello(buf, sizeof buf, 2, 41, NULL);
    send_bytes(fd, buf, n);
    expect_fatal(fd, FERRY_EVERSION, 41);
    close(fd);
}

/* §4.1: a second HELLO is INVALID, per request; the connection goes on. */
static void test_s4_1_second_hello_invalid(void **state)
{
    struct it_fx *fx = *state;
    int fd = dial_ready(fx);
    uint8_t buf[256];
    size_t n = build_hello(buf, sizeof buf, PROTO_VERSION, 42, NULL);
    struct proto_frame f;
    request(fd, buf, n, &f);
    expect_error(&f, FERRY_EINVALID, 42);
    ping(fd, 43);
    close(fd);
}

/* §4.4: the receiver MUST answer PING with a PONG of the same request id;
 * an unsolicited PONG is ignored. */
static void test_s4_4_ping_pong(void **state)
{
    struct it_fx *fx = *state;
    int fd = dial_ready(fx);
    uint8_t p[PROTO_HEADER_BYTES];
    put_header(p, 6, PROTO_PONG, 0, 3);
    send_bytes(fd, p, sizeof p);
    ping(fd, 0xdeadbeef);
    close(fd);
}

/* §4.5: a batch over max_batch is INVALID; of the per-message rules the
 * first offending message wins, and the message names its index
 * ("message N: "); nothing of a refused PUBLISH is stored. */
static void test_s4_5_batch_errors(void **state)
{
    struct it_fx *fx = *state;
    int fd = dial_ready(fx);
    static uint8_t buf[1 << 20];
    const char *mixed[] = {"batch", "batch", "bad topic", "batch"};
    const char *ids[] = {"ok-1", "has space", NULL, NULL};
    size_t n = build_publish(buf, sizeof buf, 70, 4, mixed, ids);
    struct proto_frame f;
    request(fd, buf, n, &f);
    expect_error(&f, FERRY_EINVALID_ID, 70);
    assert_true(f.u.error.message.len >= 11 && !memcmp(f.u.error.message.ptr, "message 1: ", 11));
    const char *ids2[] = {"ok-1", NULL, NULL, NULL};
    n = build_publish(buf, sizeof buf, 71, 4, mixed, ids2);
    request(fd, buf, n, &f);
    expect_error(&f, FERRY_EINVALID_TOPIC, 71);
    assert_true(f.u.error.message.len >= 11 && !memcmp(f.u.error.message.ptr, "message 2: ", 11));
    /* Nothing of either was stored: the topic's first message is 1. */
    assert_int_equal(publish1(fd, "batch", "ok-1"), 1);
    close(fd);
}

/* §4.5, §8: a topic a publish creates is at most 194 bytes, so that its
 * dead-letter topic fits in 200: 195 is INVALID_TOPIC. */
static void test_s4_5_topic_fits_dead_letter(void **state)
{
    struct it_fx *fx = *state;
    int fd = dial_ready(fx);
    char name[PROTO_MAX_TOPIC + 1];
    memset(name, 't', sizeof name);
    name[PROTO_MAX_PUBLISH_TOPIC + 1] = 0;
    uint8_t buf[1024];
    const char *topic = name;
    size_t n = build_publish(buf, sizeof buf, 72, 1, &topic, NULL);
    struct proto_frame f;
    request(fd, buf, n, &f);
    expect_error(&f, FERRY_EINVALID_TOPIC, 72);
    name[PROTO_MAX_PUBLISH_TOPIC] = 0;
    assert_int_equal(publish1(fd, name, NULL), 1);
    close(fd);
}

/* §4.7, §9.1: a group creates its topic, and TOPICS lists it at once,
 * before any message; entries in byte order of name. */
static void test_s4_7_topics_lists_group_topics(void **state)
{
    struct it_fx *fx = *state;
    int fd = dial_ready(fx);
    subscribe(fd, 1, "by-subscribe", "g", 0, 10, NULL);
    /* A SEEK creates no topic (§9.7): its group's SUBSCRIBE did. */
    subscribe(fd, 2, "by-seek", "s", 0, 10, NULL);
    seek(fd, "by-seek", "g", PROTO_START_EARLIEST, 0);
    publish1(fd, "by-publish", NULL);
    uint8_t t[PROTO_HEADER_BYTES];
    put_header(t, 6, PROTO_TOPICS, 0, 80);
    struct proto_frame f;
    request(fd, t, sizeof t, &f);
    assert_int_equal(f.type, PROTO_TOPICS_OK);
    assert_int_equal(f.request_id, 80);
    static const char *want[] = {"by-publish", "by-seek", "by-subscribe"};
    struct proto_topic_iter it;
    struct proto_topic_info ti;
    proto_topic_iter_init(&it, &f.u.topics_ok);
    size_t i = 0;
    while (proto_topic_next(&it, &ti) == 1) {
        assert_true(i < 3);
        if (ti.name.len != strlen(want[i]) || memcmp(ti.name.ptr, want[i], ti.name.len))
            fail_msg("TOPICS entry %zu is %.*s, want %s", i, (int)ti.name.len,
                     (const char *)ti.name.ptr, want[i]);
        i++;
    }
    assert_int_equal(i, 3);
    close(fd);
}

/* ----- §5 request ids and ordering --------------------------------------------- */

/* §5: every request is answered by one frame with its request id, in the
 * order received, whether the loop or the store answers it. */
static void test_s5_replies_in_request_order(void **state)
{
    struct it_fx *fx = *state;
    int fd = dial_ready(fx);
    uint8_t buf[4096];
    size_t n = 0;
    const char *topic = "order";
    for (uint32_t i = 0; i < 8; i++) {
        if (i % 2 == 0) {
            n += build_publish(buf + n, sizeof buf - n, 100 + i, 1, &topic, NULL);
        } else {
            put_header(buf + n, 6, i % 4 == 1 ? PROTO_PING : PROTO_TOPICS, 0, 100 + i);
            n += PROTO_HEADER_BYTES;
        }
    }
    send_bytes(fd, buf, n);
    for (uint32_t i = 0; i < 8; i++) {
        struct proto_frame f;
        read_frame(fd, &f);
        assert_int_equal(f.request_id, 100 + i);
        assert_int_equal(f.type, i % 2 == 0   ? PROTO_PUBLISH_ACK
                                 : i % 4 == 1 ? PROTO_PONG
                                              : PROTO_TOPICS_OK);
    }
    close(fd);
}

/* ----- §9 consumer groups -------------------------------------------------------- */

/* §9.6: max_deliveries 65535 asks for no limit (0 asks for the default). */
static void test_s9_6_unlimited_deliveries(void **state)
{
    struct it_fx *fx = *state;
    int fd = dial_ready(fx);
    struct proto_subscribe_ok ok;
    subscribe(fd, 1, "unlimited", "g", PROTO_DELIVERIES_UNLIMITED, 10, &ok);
    assert_int_equal(ok.max_deliveries, 0);
    assert_true(ok.has_horizon);
    assert_true(ok.redelivery_horizon_ms == UINT64_MAX);
    subscribe(fd, 2, "unlimited", "g-default", 0, 10, &ok);
    assert_int_equal(ok.max_deliveries, 5);
    close(fd);
}

/* §9.6: at the last attempt the message goes to _dead.<topic>: a new id,
 * the key, payload and headers kept, six ferry-dead-* headers after them;
 * a delivery given back by a disconnect counts as an attempt, and at the
 * last one it is dead-lettered at once ("consumer disconnected"). */
static void test_s9_6_dead_letter_copy(void **state)
{
    struct it_fx *fx = *state;
    int fd = dial_ready(fx);
    uint8_t buf[1024];
    struct proto_writer w;
    proto_writer_init(&w, buf, sizeof buf);
    size_t start = proto_publish_begin(&w, 90);
    struct proto_header h = {{(const uint8_t *)"ct", 2}, {(const uint8_t *)"json", 4}};
    struct proto_msg m = {
        .topic = {(const uint8_t *)"dl", 2},
        .id = {(const uint8_t *)"orig-1", 6},
        .key = {(const uint8_t *)"k1", 2},
        .header_count = 1,
        .payload = {(const uint8_t *)"body", 4},
    };
    proto_publish_add(&w, &m, &h);
    assert_int_equal(proto_publish_end(&w, start, 1), 0);
    struct proto_frame f;
    request(fd, buf, w.len, &f);
    assert_int_equal(f.type, PROTO_PUBLISH_ACK);
    close(fd);

    /* Two attempts: a nack, then a disconnect while in flight. */
    fd = dial_ready(fx);
    subscribe(fd, 1, "dl", "g", 2, 1, NULL);
    struct proto_deliver d;
    next_deliver(fd, &d);
    assert_int_equal(d.attempt, 1);
    assert_int_equal(ack_nack(fd, PROTO_NACK, 1, d.seq), 0);
    next_deliver(fd, &d);
    assert_int_equal(d.attempt, 2);
    close(fd);

    /* Out of attempts when its consumer went away, it went to the
     * dead-letter topic at once. */
    fd = dial_ready(fx);
    subscribe(fd, 1, "dl", "g", 2, 1, NULL);
    subscribe(fd, 2, "_dead.dl", "g", 0, 10, NULL);
    next_deliver(fd, &d);
    assert_false(d.id.len == 6 && !memcmp(d.id.ptr, "orig-1", 6));
    assert_true(d.id.len > 0);
    assert_int_equal(d.key.len, 2);
    assert_memory_equal(d.key.ptr, "k1", 2);
    assert_int_equal(d.payload.len, 4);
    assert_int_equal(d.header_count, 7);
    static const char *names[] = {"ct",
                                  "ferry-dead-topic",
                                  "ferry-dead-seq",
                                  "ferry-dead-group",
                                  "ferry-dead-attempts",
                                  "ferry-dead-reason",
                                  "ferry-dead-id"};
    static const char *values[] = {"json", "dl", "1", "g", "2", "consumer disconnected", "orig-1"};
    struct proto_msg dm = {.header_count = d.header_count, .headers = d.headers};
    struct proto_header_iter hi;
    struct proto_header hd;
    proto_header_iter_init(&hi, &dm);
    for (int i = 0; i < 7; i++) {
        assert_int_equal(proto_header_next(&hi, &hd), 1);
        if (hd.name.len != strlen(names[i]) || memcmp(hd.name.ptr, names[i], hd.name.len) ||
            hd.value.len != strlen(values[i]) || memcmp(hd.value.ptr, values[i], hd.value.len))
            fail_msg("header %d is %.*s: %.*s, want %s: %s", i, (int)hd.name.len,
                     (const char *)hd.name.ptr, (int)hd.value.len, (const char *)hd.value.ptr,
                     names[i], values[i]);
    }
    close(fd);
}

/* §9.1, §9.6: a topic whose dead-letter name would not fit (here the
 * dead-letter topic of a 194-byte topic: 200 bytes) has no delivery limit:
 * its messages are delivered again, never parked. */
static void test_s9_6_no_dead_letter_no_limit(void **state)
{
    struct it_fx *fx = *state;
    char name[PROTO_MAX_TOPIC + 1], dead[PROTO_MAX_TOPIC + 1];
    memset(name, 'n', PROTO_MAX_PUBLISH_TOPIC);
    name[PROTO_MAX_PUBLISH_TOPIC] = 0;
    memcpy(dead, "_dead.", 6);
    memcpy(dead + 6, name, PROTO_MAX_PUBLISH_TOPIC + 1);
    int fd = dial_ready(fx);
    publish1(fd, name, NULL);
    subscribe(fd, 1, name, "g", 1, 1, NULL);
    struct proto_deliver d;
    next_deliver(fd, &d);
    assert_int_equal(ack_nack(fd, PROTO_NACK, 1, d.seq), 0);
    struct proto_subscribe_ok ok;
    subscribe(fd, 2, dead, "g", 1, 1, &ok);
    assert_int_equal(ok.max_deliveries, 0);
    for (uint32_t attempt = 1; attempt <= 3; attempt++) {
        next_deliver(fd, &d);
        assert_int_equal(d.sub_id, 2);
        assert_int_equal(d.attempt, attempt);
        assert_int_equal(ack_nack(fd, PROTO_NACK, 2, d.seq), 0);
    }
    close(fd);
}

/* §9.5, §9.7: an ACK names a sequence, not a delivery: after a SEEK back,
 * the ack of the forgotten delivery acks the redelivery once it was sent. */
static void test_s9_7_ack_racing_seek_redelivery(void **state)
{
    struct it_fx *fx = *state;
    int fd = dial_ready(fx);
    publish1(fd, "race", NULL);
    subscribe(fd, 1, "race", "g", 0, 1, NULL);
    struct proto_deliver d;
    next_deliver(fd, &d);
    assert_int_equal(d.attempt, 1);
    seek(fd, "race", "g", PROTO_START_SEQ, 1);
    next_deliver(fd, &d);
    assert_int_equal(d.seq, 1);
    assert_int_equal(d.attempt, 1);
    assert_int_equal(ack_nack(fd, PROTO_ACK, 1, 1), 0);
    struct proto_group_info gi;
    group_info(fd, "race", "g", &gi);
    assert_int_equal(gi.lag, 0);
    assert_int_equal(gi.in_flight, 0);
    close(fd);
}

/* §9.14: oldest_unacked_ms is the age of the oldest message not yet done,
 * waiting ones included, and stays so after a restart. */
static void test_s9_14_oldest_unacked_counts_waiting(void **state)
{
    struct it_fx *fx = *state;
    int fd = dial_ready(fx);
    int64_t t0 = harness_wall_ms();
    for (int i = 0; i < 3; i++)
        publish1(fd, "waiting", NULL);
    seek(fd, "waiting", "g", PROTO_START_EARLIEST, 0);
    it_sleep_ms(300);
    struct proto_group_info gi;
    group_info(fd, "waiting", "g", &gi);
    int64_t span = harness_wall_ms() - t0;
    print_message("3 waiting, no consumer: lag %" PRIu64 ", oldest_unacked_ms %" PRIu64 "\n",
                  gi.lag, gi.oldest_unacked_ms);
    assert_int_equal(gi.lag, 3);
    assert_true(gi.oldest_unacked_ms >= 300 && gi.oldest_unacked_ms <= (uint64_t)span);
    close(fd);
    assert_int_equal(harness_stop(&fx->b), 0);
    assert_int_equal(harness_restart(&fx->b), 0);
    fd = dial_ready(fx);
    group_info(fd, "waiting", "g", &gi);
    print_message("after a restart: oldest_unacked_ms %" PRIu64 "\n", gi.oldest_unacked_ms);
    assert_true(gi.oldest_unacked_ms >= 300);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_s1_first_frame_must_be_hello, setup, teardown),
        cmocka_unit_test_setup_teardown(test_s1_undefined_first_frame_unknown_type, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_s1_handshake_frame_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_s1_max_frame_bytes_enforced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_s1_token_without_tokens_ignored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_s1_timeouts_precise, setup_timeouts, teardown),
        cmocka_unit_test_setup_teardown(test_s1_ping_keeps_alive, setup_timeouts, teardown),
        cmocka_unit_test_setup_teardown(test_s2_length_below_minimum_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_s2_type_judged_from_header, setup, teardown),
        cmocka_unit_test_setup_teardown(test_s2_trailing_bytes_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_s2_undefined_flags_ignored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_s2_eof_inside_frame_discarded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_s4_1_version_fatal_with_request_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_s4_1_second_hello_invalid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_s4_4_ping_pong, setup, teardown),
        cmocka_unit_test_setup_teardown(test_s4_5_batch_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_s4_5_topic_fits_dead_letter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_s4_7_topics_lists_group_topics, setup, teardown),
        cmocka_unit_test_setup_teardown(test_s5_replies_in_request_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_s9_6_unlimited_deliveries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_s9_6_dead_letter_copy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_s9_6_no_dead_letter_no_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_s9_7_ack_racing_seek_redelivery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_s9_14_oldest_unacked_counts_waiting, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
