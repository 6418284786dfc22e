/*
 * test_hostile.c - bad input costs the sender, not the broker.
 *
 * Over raw sockets, each test sends something a broker must survive:
 * garbage, frames that claim gigabytes, truncated frames, unknown types,
 * wrong versions, frames before the handshake, reserved types, too many
 * connections, idle and stalled peers. It asserts the exact ERROR frame
 * (code, FATAL flag) and that the connection is closed (or kept, for
 * non-fatal errors), while a normal libferry connection opened beforehand
 * (the "canary") keeps publishing before, during and after, with its
 * sequence numbers going up by exactly one each time.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "it_util.h"

#define IO_TIMEOUT_MS 10000
/* How much the broker's RSS may grow while refusing frames that claim
 * hundreds of MiB: far less than any claim, far more than noise. */
#define RSS_SLACK_KIB (20 * 1024)

struct fx {
    struct harness_broker b;
    ferry_conn *canary;
    uint64_t canary_seq;
};

static int setup_args(void **state, const char *const *args)
{
    struct fx *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    *state = fx;
    if (harness_start(&fx->b, args) != 0)
        return -1;
    char err[256] = "";
    int r = ferry_connect(fx->b.addr, NULL, &fx->canary, err, sizeof err);
    if (r != 0) {
        fprintf(stderr, "setup: ferry_connect: %s (%s)\n", ferry_strerror(r), err);
        harness_cleanup(&fx->b);
        return -1;
    }
    return 0;
}

static int setup(void **state)
{
    return setup_args(state, NULL);
}

static int setup_max_conn(void **state)
{
    static const char *const args[] = {"--max-connections", "4", NULL};
    return setup_args(state, args);
}

static int setup_small_cache(void **state)
{
    static const char *const args[] = {"--cache-mb", "8", NULL};
    return setup_args(state, args);
}

static int setup_idle(void **state)
{
    struct fx *fx = calloc(1, sizeof *fx);
    static const char *const args[] = {"--idle-timeout-ms", "2000", "--handshake-timeout", "2000",
                                       NULL};
    if (!fx)
        return -1;
    *state = fx;
    return harness_start(&fx->b, args) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    if (fx) {
        ferry_close(fx->canary);
        /* A broker that survived everything also stops cleanly. */
        int st = fx->b.pid ? harness_stop(&fx->b) : 0;
        if (st != 0)
            harness_dump_log(&fx->b);
        if (harness_check_log(&fx->b) != 0)
            st = -1;
        harness_cleanup(&fx->b);
        free(fx);
        if (st != 0) {
            fprintf(stderr, "teardown: ferryd exit status %d, expected 0\n", st);
            return -1;
        }
    }
    return 0;
}

/* One synchronous publish on conn, which must be acked at exactly *seq + 1. */
static void publish_on(ferry_conn *c, const char *topic, uint64_t *seq)
{
    ferry_msg m;
    memset(&m, 0, sizeof m);
    m.topic = topic;
    m.payload = "alive";
    m.payload_len = 5;
    ferry_ack ack;
    int r = ferry_publish(c, &m, &ack);
    if (r != 0)
        print_error("publish on %s: %s (%s)\n", topic, ferry_strerror(r), ferry_errmsg(c));
    assert_int_equal(r, 0);
    assert_int_equal(ack.seq, ++*seq);
    assert_int_equal(ack.duplicate, 0);
}

static void canary(struct fx *fx)
{
    publish_on(fx->canary, "canary", &fx->canary_seq);
}

static int raw_connect(struct fx *fx)
{
    int fd = harness_connect(fx->b.addr);
    if (fd < 0)
        print_error("connect %s: %s\n", fx->b.addr, strerror(-fd));
    assert_true(fd >= 0);
    return fd;
}

static int raw_connect_hello(struct fx *fx, uint32_t *max_frame)
{
    int fd = raw_connect(fx);
    assert_int_equal(harness_handshake(fd, max_frame), 0);
    return fd;
}

/* Sends bytes that a peer which has already closed may refuse: the broker
 * is allowed to have answered and closed before the last byte arrives. */
static void send_hostile(int fd, const void *buf, size_t len)
{
    int r = harness_send(fd, buf, len);
    if (r != 0 && r != -EPIPE && r != -ECONNRESET)
        fail_msg("send: %s", strerror(-r));
}

/* The next thing on fd is an ERROR with the FATAL flag and code want, and
 * then the broker closes the connection. */
static void expect_fatal(int fd, int want)
{
    uint16_t code = 0;
    uint8_t flags = 0;
    int r = harness_read_error(fd, IO_TIMEOUT_MS, &code, &flags, NULL);
    if (r != 1)
        fail_msg("expected a fatal ERROR %d (%s), got %d", -want, ferry_strerror(want), r);
    if (code != (uint16_t)-want)
        fail_msg("expected ERROR code %d (%s), got %u (%s)", -want, ferry_strerror(want), code,
                 ferry_strerror(-(int)code));
    assert_int_equal(flags & PROTO_ERROR_FATAL, PROTO_ERROR_FATAL);
    assert_int_equal(harness_wait_closed(fd, IO_TIMEOUT_MS), 1);
}

static void send_ping_expect_pong(int fd, uint32_t req)
{
    uint8_t buf[256];
    struct proto_writer w;
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_empty(&w, PROTO_PING, req), 0);
    assert_int_equal(harness_send(fd, buf, w.len), 0);
    struct proto_frame f;
    assert_int_equal(harness_read_frame(fd, buf, sizeof buf, IO_TIMEOUT_MS, &f), 1);
    if (f.type == PROTO_ERROR)
        print_error("PING %u answered by ERROR %u (%.*s)\n", req, f.u.error.code,
                    (int)f.u.error.message.len, (const char *)f.u.error.message.ptr);
    assert_int_equal(f.type, PROTO_PONG);
    assert_int_equal(f.request_id, req);
}

/* A bare frame header: length, type, flags 0, request id. */
static void put_header(uint8_t *p, uint32_t length, uint8_t type, uint32_t req)
{
    proto_wr32(p, length);
    p[4] = type;
    p[5] = 0;
    proto_wr32(p + 6, req);
}

/* Sends raw bytes on a fresh connection (after the handshake when
 * handshake is set) and expects a fatal error want, with the canary
 * publishing before, between and after. */
static void hostile_case(struct fx *fx, int handshake, const void *bytes, size_t len, int want)
{
    canary(fx);
    int fd = handshake ? raw_connect_hello(fx, NULL) : raw_connect(fx);
    send_hostile(fd, bytes, len);
    canary(fx);
    expect_fatal(fd, want);
    close(fd);
    canary(fx);
}

/* ----- garbage ---------------------------------------------------------- */

static void test_hostile_length_below_minimum_malformed(void **state)
{
    struct fx *fx = *state;
    static const uint8_t bytes[] = {0, 0, 0, 2, 0xff, 0xff};
    hostile_case(fx, 0, bytes, sizeof bytes, FERRY_EMALFORMED);
    hostile_case(fx, 1, bytes, sizeof bytes, FERRY_EMALFORMED);
}

static void test_hostile_malformed_hello_fatal(void **state)
{
    struct fx *fx = *state;
    uint8_t buf[128];

    /* A HELLO whose body is one byte: no room for the version. */
    put_header(buf, PROTO_MIN_LENGTH + 1, PROTO_HELLO, 1);
    buf[10] = 0;
    hostile_case(fx, 0, buf, 11, FERRY_EMALFORMED);

    /* A HELLO whose client name claims 65535 bytes in an 8-byte body. */
    put_header(buf, PROTO_MIN_LENGTH + 8, PROTO_HELLO, 1);
    proto_wr16(buf + 10, PROTO_VERSION);
    proto_wr16(buf + 12, 0xffff);
    memcpy(buf + 14, "abcd", 4);
    hostile_case(fx, 0, buf, 18, FERRY_EMALFORMED);

    /* A valid HELLO with three trailing bytes in its body. */
    size_t n = harness_build_hello(buf, sizeof buf, PROTO_VERSION, 1);
    assert_true(n > 0);
    memcpy(buf + n, "xyz", 3);
    proto_wr32(buf, proto_rd32(buf) + 3);
    hostile_case(fx, 0, buf, n + 3, FERRY_EMALFORMED);
}

static void test_hostile_http_request_fatal(void **state)
{
    struct fx *fx = *state;
    static const char req[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    canary(fx);
    int fd = raw_connect(fx);
    send_hostile(fd, req, sizeof req - 1);
    uint16_t code = 0;
    uint8_t flags = 0;
    assert_int_equal(harness_read_error(fd, IO_TIMEOUT_MS, &code, &flags, NULL), 1);
    /* "GET " read as a length is ~1.2 GB: too large before the handshake. */
    assert_int_equal(code, -FERRY_EFRAME_TOO_LARGE);
    assert_int_equal(flags & PROTO_ERROR_FATAL, PROTO_ERROR_FATAL);
    assert_int_equal(harness_wait_closed(fd, IO_TIMEOUT_MS), 1);
    close(fd);
    canary(fx);
}

/* Complete frames of random type and body as the first frame: never a
 * valid HELLO, so each must end in a fatal error and a close. */
static void test_hostile_random_first_frames_fatal(void **state)
{
    struct fx *fx = *state;
    uint64_t rng = harness_seed() | 1; /* xorshift needs a non-zero state */
    for (int i = 0; i < 32; i++) {
        uint8_t buf[64];
        for (size_t j = 0; j < sizeof buf; j++) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            buf[j] = (uint8_t)(rng >> 24);
        }
        proto_wr32(buf, sizeof buf - 4);
        if (buf[4] == PROTO_HELLO)
            buf[4] = 0x7f;
        canary(fx);
        int fd = raw_connect(fx);
        send_hostile(fd, buf, sizeof buf);
        uint16_t code = 0;
        uint8_t flags = 0;
        int r = harness_read_error(fd, IO_TIMEOUT_MS, &code, &flags, NULL);
        if (r != 1)
            fail_msg("frame type 0x%02x: expected an ERROR, got %d", buf[4], r);
        if (code != -FERRY_EHANDSHAKE && code != -FERRY_EUNKNOWN_TYPE && code != -FERRY_EMALFORMED)
            fail_msg("frame type 0x%02x: unexpected ERROR code %u", buf[4], code);
        assert_int_equal(flags & PROTO_ERROR_FATAL, PROTO_ERROR_FATAL);
        assert_int_equal(harness_wait_closed(fd, IO_TIMEOUT_MS), 1);
        close(fd);
    }
    canary(fx);
}

/* ----- size claims ------------------------------------------------------ */

static void test_hostile_huge_length_claims_no_allocation(void **state)
{
    struct fx *fx = *state;
    uint8_t hdr[PROTO_HEADER_BYTES];
    canary(fx);
    long rss0 = harness_rss_kib(fx->b.pid);
    assert_true(rss0 > 0);

    /* 4 GiB and 100 MiB before the handshake. */
    put_header(hdr, 0xffffffffu, PROTO_HELLO, 1);
    hostile_case(fx, 0, hdr, sizeof hdr, FERRY_EFRAME_TOO_LARGE);
    put_header(hdr, 100u * 1024 * 1024, PROTO_HELLO, 1);
    hostile_case(fx, 0, hdr, sizeof hdr, FERRY_EFRAME_TOO_LARGE);
    /* Just over the 64 KiB handshake limit. */
    put_header(hdr, PROTO_HANDSHAKE_MAX_FRAME + 1, PROTO_HELLO, 1);
    hostile_case(fx, 0, hdr, sizeof hdr, FERRY_EFRAME_TOO_LARGE);

    /* 4 GiB and 100 MiB after it, on ten connections at once. */
    int fds[10];
    for (int i = 0; i < 10; i++) {
        fds[i] = raw_connect_hello(fx, NULL);
        put_header(hdr, i % 2 ? 0xffffffffu : 100u * 1024 * 1024, PROTO_PUBLISH, 2);
        send_hostile(fds[i], hdr, sizeof hdr);
    }
    canary(fx);
    for (int i = 0; i < 10; i++) {
        expect_fatal(fds[i], FERRY_EFRAME_TOO_LARGE);
        close(fds[i]);
    }
    canary(fx);
    long rss1 = harness_rss_kib(fx->b.pid);
    print_message("ferryd VmRSS %ld KiB before, %ld KiB after\n", rss0, rss1);
    assert_true(rss1 > 0);
    assert_true(rss1 <= rss0 + RSS_SLACK_KIB);
}

static void test_hostile_frame_over_negotiated_max_fatal(void **state)
{
    struct fx *fx = *state;
    uint32_t max_frame = 0;
    canary(fx);
    int fd = raw_connect_hello(fx, &max_frame);
    assert_true(max_frame >= PROTO_HANDSHAKE_MAX_FRAME);
    assert_true(max_frame <= PROTO_ABSOLUTE_MAX_FRAME);
    uint8_t hdr[PROTO_HEADER_BYTES];
    put_header(hdr, max_frame + 1, PROTO_PUBLISH, 9);
    send_hostile(fd, hdr, sizeof hdr);
    canary(fx);
    expect_fatal(fd, FERRY_EFRAME_TOO_LARGE);
    close(fd);
    canary(fx);
}

/* A PUBLISH of exactly the negotiated maximum passes the framing layer and
 * is refused for its message size only: non-fatal, the connection goes on. */
static void test_hostile_frame_at_max_message_too_large_nonfatal(void **state)
{
    struct fx *fx = *state;
    uint32_t max_frame = 0;
    int fd = raw_connect_hello(fx, &max_frame);
    ferry_server_info si;
    ferry_server_info_get(fx->canary, &si);
    assert_int_equal(si.max_frame_bytes, max_frame);
    assert_true(max_frame > si.max_message_bytes + 64);

    /* Frame = 4 + 6 + u16 count + str16 topic(1) + str16 id(0) + str16
     * key(0) + u64 + u16 + bytes32 payload. */
    size_t overhead = 4 + 6 + 2 + (2 + 1) + 2 + 2 + 8 + 2 + 4;
    size_t payload_len = (size_t)max_frame + 4 - overhead;
    uint8_t *buf = malloc((size_t)max_frame + 4);
    uint8_t *payload = calloc(1, payload_len);
    assert_non_null(buf);
    assert_non_null(payload);
    size_t n =
        harness_build_publish(buf, (size_t)max_frame + 4, 3, "t", NULL, payload, payload_len);
    assert_int_equal(n, (size_t)max_frame + 4);
    assert_int_equal(proto_rd32(buf), max_frame);
    assert_int_equal(harness_send(fd, buf, n), 0);
    uint16_t code = 0;
    uint8_t flags = 0xff;
    uint32_t req = 0;
    assert_int_equal(harness_read_error(fd, IO_TIMEOUT_MS, &code, &flags, &req), 1);
    assert_int_equal(code, -FERRY_EMESSAGE_TOO_LARGE);
    assert_int_equal(flags & PROTO_ERROR_FATAL, 0);
    assert_int_equal(req, 3);
    send_ping_expect_pong(fd, 4);
    close(fd);
    free(buf);
    free(payload);
    canary(fx);
}

/* ----- truncation ------------------------------------------------------- */

static void test_hostile_truncated_frame_then_close_broker_fine(void **state)
{
    struct fx *fx = *state;
    uint8_t buf[64];
    memset(buf, 0, sizeof buf);

    /* Before the handshake: a HELLO header claiming 1000 bytes, 3 sent. */
    int fd = raw_connect(fx);
    put_header(buf, 1000, PROTO_HELLO, 1);
    assert_int_equal(harness_send(fd, buf, PROTO_HEADER_BYTES + 3), 0);
    canary(fx); /* the broker is not stuck waiting for the rest */
    close(fd);
    canary(fx);

    /* After it: a PUBLISH claiming 1000 bytes, 10 sent, then half a header. */
    fd = raw_connect_hello(fx, NULL);
    put_header(buf, 1000, PROTO_PUBLISH, 2);
    assert_int_equal(harness_send(fd, buf, PROTO_HEADER_BYTES + 10), 0);
    canary(fx);
    close(fd);
    fd = raw_connect_hello(fx, NULL);
    assert_int_equal(harness_send(fd, buf, 5), 0);
    canary(fx);
    close(fd);
    canary(fx);

    /* Nothing of the truncated publish was stored, and new connections
     * work as before. */
    ferry_topic_info ti;
    assert_int_equal(it_topic(fx->canary, "canary", &ti), 1);
    assert_int_equal(ti.message_count, fx->canary_seq);
    fd = raw_connect_hello(fx, NULL);
    send_ping_expect_pong(fd, 77);
    close(fd);
}

/* ----- protocol violations ---------------------------------------------- */

static void test_hostile_unknown_type_fatal(void **state)
{
    struct fx *fx = *state;
    uint8_t hdr[PROTO_HEADER_BYTES];
    put_header(hdr, PROTO_MIN_LENGTH, 0x7f, 5);
    hostile_case(fx, 1, hdr, sizeof hdr, FERRY_EUNKNOWN_TYPE);
    put_header(hdr, PROTO_MIN_LENGTH, 0x00, 5);
    hostile_case(fx, 1, hdr, sizeof hdr, FERRY_EUNKNOWN_TYPE);
    put_header(hdr, PROTO_MIN_LENGTH, 0xff, 5);
    hostile_case(fx, 1, hdr, sizeof hdr, FERRY_EUNKNOWN_TYPE);
}

static void test_hostile_wrong_version_fatal(void **state)
{
    struct fx *fx = *state;
    uint8_t buf[128];
    size_t n = harness_build_hello(buf, sizeof buf, PROTO_VERSION + 1, 1);
    assert_true(n > 0);
    hostile_case(fx, 0, buf, n, FERRY_EVERSION);
    n = harness_build_hello(buf, sizeof buf, 0, 1);
    hostile_case(fx, 0, buf, n, FERRY_EVERSION);
    n = harness_build_hello(buf, sizeof buf, 0xffff, 1);
    hostile_case(fx, 0, buf, n, FERRY_EVERSION);
}

static void test_hostile_first_frame_not_hello_fatal(void **state)
{
    struct fx *fx = *state;
    uint8_t buf[256];
    struct proto_writer w;
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_empty(&w, PROTO_PING, 1), 0);
    hostile_case(fx, 0, buf, w.len, FERRY_EHANDSHAKE);

    w.len = 0;
    assert_int_equal(proto_encode_empty(&w, PROTO_TOPICS, 1), 0);
    hostile_case(fx, 0, buf, w.len, FERRY_EHANDSHAKE);

    /* A well-formed PUBLISH before HELLO is refused and stores nothing. */
    size_t n = harness_build_publish(buf, sizeof buf, 1, "sneaky", "s1", "x", 1);
    assert_true(n > 0);
    hostile_case(fx, 0, buf, n, FERRY_EHANDSHAKE);
    ferry_topic_info ti;
    assert_int_equal(it_topic(fx->canary, "sneaky", &ti), 0);
}

/* Consumer-group frames: an empty body where one is required is a
 * MALFORMED frame (fatal); a frame only the broker sends is UNKNOWN_TYPE
 * (fatal); a well-formed ACK naming no subscription is a per-request
 * UNKNOWN_SUBSCRIPTION and the connection keeps working. */
static void test_hostile_consumer_frames(void **state)
{
    struct fx *fx = *state;
    static const uint8_t requests[] = {PROTO_SUBSCRIBE, PROTO_ACK,    PROTO_NACK,
                                       PROTO_TOUCH,     PROTO_CREDIT, PROTO_UNSUBSCRIBE,
                                       PROTO_SEEK,      PROTO_GROUPS};
    /* Frames only the broker sends, each with a well-formed body (an empty
     * list), so that the direction is what is wrong. */
    static const uint8_t replies[] = {PROTO_ACK_OK, PROTO_GROUPS_OK};
    static const uint8_t reply_body_len[] = {2, 4};
    for (size_t i = 0; i < sizeof(requests); i++) {
        int fd = raw_connect_hello(fx, NULL);
        uint8_t hdr[PROTO_HEADER_BYTES];
        put_header(hdr, PROTO_MIN_LENGTH, requests[i], 7);
        send_hostile(fd, hdr, sizeof hdr);
        expect_fatal(fd, FERRY_EMALFORMED);
        close(fd);
        canary(fx);
    }
    for (size_t i = 0; i < sizeof(replies); i++) {
        int fd = raw_connect_hello(fx, NULL);
        uint8_t frame[PROTO_HEADER_BYTES + 4] = {0};
        put_header(frame, PROTO_MIN_LENGTH + reply_body_len[i], replies[i], 7);
        send_hostile(fd, frame, PROTO_HEADER_BYTES + reply_body_len[i]);
        expect_fatal(fd, FERRY_EUNKNOWN_TYPE);
        close(fd);
        canary(fx);
    }
    int fd = raw_connect_hello(fx, NULL);
    uint8_t buf[256];
    struct proto_writer w;
    uint64_t seq = 1;
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_ack(&w, 41, 99, &seq, 1), 0);
    assert_int_equal(harness_send(fd, buf, w.len), 0);
    uint16_t code = 0;
    uint8_t flags = 0xff;
    uint32_t req = 0;
    assert_int_equal(harness_read_error(fd, IO_TIMEOUT_MS, &code, &flags, &req), 1);
    assert_int_equal(code, -FERRY_EUNKNOWN_SUBSCRIPTION);
    assert_int_equal(flags & PROTO_ERROR_FATAL, 0);
    assert_int_equal(req, 41);
    send_ping_expect_pong(fd, 42);
    close(fd);
    canary(fx);
}

/* ----- peers that leave or stop reading ------------------------------- */

/* Appends count PUBLISH frames (topic, ids PREFIX-N from first, or
 * broker-assigned when prefix is NULL) to buf; returns the bytes used. */
static size_t build_publishes(uint8_t *buf, size_t cap, const char *topic, const char *prefix,
                              int first, int count)
{
    size_t used = 0;
    for (int i = 0; i < count; i++) {
        char id[64];
        if (prefix)
            snprintf(id, sizeof id, "%s-%d", prefix, first + i);
        size_t n = harness_build_publish(buf + used, cap - used, (uint32_t)(first + i + 1), topic,
                                         prefix ? id : NULL, "0123456789abcdef", 16);
        assert_true(n > 0);
        used += n;
    }
    return used;
}

/* Peers that pipeline publishes and hang up (some with a reset) before
 * their acks come back: the broker neither crashes nor stores anything
 * twice, and what it stored is dense; re-publishing every id afterwards
 * completes the set exactly. */
static void test_hostile_disconnect_with_publishes_in_flight(void **state)
{
    struct fx *fx = *state;
    enum { CONNS = 10, PER = 2000 };
    size_t cap = (size_t)PER * 128;
    uint8_t *buf = malloc(cap);
    assert_non_null(buf);
    for (int i = 0; i < CONNS; i++) {
        int fd = raw_connect_hello(fx, NULL);
        char prefix[16];
        snprintf(prefix, sizeof prefix, "gone%d", i);
        size_t n = build_publishes(buf, cap, "inflight", prefix, 0, PER);
        assert_int_equal(harness_send(fd, buf, n), 0);
        if (i % 2) {
            /* Abortive close: RST instead of FIN. */
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        close(fd);
        canary(fx);
    }
    free(buf);

    ferry_topic_info ti;
    int have = it_topic(fx->canary, "inflight", &ti);
    if (have) {
        assert_int_equal(ti.message_count, ti.head_seq);
        assert_true(ti.head_seq <= (uint64_t)CONNS * PER);
    }
    print_message("%llu of %d abandoned publishes were stored\n",
                  have ? (unsigned long long)ti.head_seq : 0ull, CONNS * PER);

    /* Publish every id again: each is either a duplicate of what the broker
     * stored or new, and in the end each id is stored exactly once. */
    static ferry_msg msgs[PER];
    static ferry_ack acks[PER];
    static char ids[PER][32];
    uint64_t dups = 0;
    for (int i = 0; i < CONNS; i++) {
        for (int j = 0; j < PER; j++) {
            snprintf(ids[j], sizeof ids[j], "gone%d-%d", i, j);
            memset(&msgs[j], 0, sizeof msgs[j]);
            msgs[j].topic = "inflight";
            msgs[j].id = ids[j];
            msgs[j].payload = "0123456789abcdef";
            msgs[j].payload_len = 16;
        }
        assert_int_equal(ferry_publish_batch(fx->canary, msgs, PER, acks), 0);
        for (int j = 0; j < PER; j++)
            dups += (uint64_t)acks[j].duplicate;
    }
    assert_int_equal(dups, have ? ti.head_seq : 0);
    assert_int_equal(it_topic(fx->canary, "inflight", &ti), 1);
    assert_int_equal(ti.head_seq, (uint64_t)CONNS * PER);
    assert_int_equal(ti.message_count, (uint64_t)CONNS * PER);
    canary(fx);
}

/* A peer that pipelines publishes and never reads an ack: the broker must
 * stop reading it (backpressure) rather than buffer replies without bound,
 * and go on serving everyone else. */
static void test_hostile_unread_acks_backpressure(void **state)
{
    struct fx *fx = *state;
    /* Far beyond what the broker should buffer for one connection. */
    const size_t give_up_bytes = 96u << 20;
    int fd = raw_connect_hello(fx, NULL);
    assert_int_equal(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
    size_t cap = 1000 * 128;
    uint8_t *chunk = malloc(cap);
    assert_non_null(chunk);
    size_t len = build_publishes(chunk, cap, "flood", NULL, 0, 1000);
    long rss0 = harness_rss_kib(fx->b.pid);

    size_t sent = 0, off = 0;
    int64_t last_progress = harness_now_ms();
    int64_t deadline = last_progress + 60000;
    int stalled = 0;
    while (sent < give_up_bytes && harness_now_ms() < deadline) {
        ssize_t n = send(fd, chunk + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            sent += (size_t)n;
            off = (off + (size_t)n) % len;
            last_progress = harness_now_ms();
            continue;
        }
        assert_true(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR));
        /* Two seconds without the broker taking a byte: it stopped
         * reading this connection. */
        if (harness_now_ms() - last_progress >= 2000) {
            stalled = 1;
            break;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        poll(&pfd, 1, 50);
    }
    long rss1 = harness_rss_kib(fx->b.pid);
    print_message("flood: %zu bytes taken before the broker stopped reading; VmRSS %ld -> %ld "
                  "KiB\n",
                  sent, rss0, rss1);
    assert_true(stalled);
    assert_true(sent < give_up_bytes);
    /* The broker may hold a few of its 8 MiB per-connection and batch
     * buffers and its 8 MiB page cache; not the flood. A sanitizer's
     * quarantine or valgrind's shadow memory makes the figure meaningless. */
    const char *why = harness_rss_unreliable(fx->b.pid);
    if (why)
        print_message("VmRSS growth %ld KiB not asserted under %s\n", rss1 - rss0, why);
    else
        assert_true(rss1 <= rss0 + 80 * 1024);

    /* Everyone else is served meanwhile. */
    for (int i = 0; i < 5; i++)
        canary(fx);
    int other = raw_connect_hello(fx, NULL);
    send_ping_expect_pong(other, 5);
    close(other);
    close(fd);
    free(chunk);
    canary(fx);
}

/* ----- connection limits ------------------------------------------------ */

static void test_hostile_max_connections_fifth_refused(void **state)
{
    struct fx *fx = *state;
    ferry_conn *c[3];
    uint64_t seq[3] = {0, 0, 0};
    char topic[3][16];
    for (int i = 0; i < 3; i++) {
        c[i] = it_connect(fx->b.addr);
        snprintf(topic[i], sizeof topic[i], "conn%d", i);
        publish_on(c[i], topic[i], &seq[i]);
    }
    canary(fx);

    /* Four are open (canary + 3): the fifth is refused at accept, with a
     * fatal TOO_MANY_CONNECTIONS on connection level (request id 0). */
    int fd = raw_connect(fx);
    uint16_t code = 0;
    uint8_t flags = 0;
    uint32_t req = 1;
    int r = harness_read_error(fd, IO_TIMEOUT_MS, &code, &flags, &req);
    assert_int_equal(r, 1);
    assert_int_equal(code, -FERRY_ETOO_MANY_CONNECTIONS);
    assert_int_equal(flags & PROTO_ERROR_FATAL, PROTO_ERROR_FATAL);
    assert_int_equal(req, 0);
    assert_int_equal(harness_wait_closed(fd, IO_TIMEOUT_MS), 1);
    close(fd);

    /* libferry reports it as an error, not a hang. */
    ferry_conn *extra = NULL;
    char err[256] = "";
    r = ferry_connect(fx->b.addr, NULL, &extra, err, sizeof err);
    if (r != FERRY_ETOO_MANY_CONNECTIONS)
        print_error("ferry_connect: %d %s (%s)\n", r, ferry_strerror(r), err);
    assert_int_equal(r, FERRY_ETOO_MANY_CONNECTIONS);
    assert_null(extra);

    for (int round = 0; round < 3; round++) {
        canary(fx);
        for (int i = 0; i < 3; i++)
            publish_on(c[i], topic[i], &seq[i]);
    }

    /* Once one closes, a new connection is accepted again (the broker may
     * need a moment to see the close). */
    ferry_close(c[2]);
    c[2] = NULL;
    int64_t deadline = harness_now_ms() + 10000;
    while ((r = ferry_connect(fx->b.addr, NULL, &extra, NULL, 0)) != 0 &&
           harness_now_ms() < deadline)
        it_sleep_ms(50);
    assert_int_equal(r, 0);
    uint64_t s = 0;
    publish_on(extra, "conn-new", &s);
    ferry_close(extra);
    for (int i = 0; i < 2; i++) {
        publish_on(c[i], topic[i], &seq[i]);
        ferry_close(c[i]);
    }
    canary(fx);
}

/* Checks, without blocking, whether the broker has ended fd: returns 1 once
 * it was closed (after an optional TIMEOUT_IDLE error), 0 while it is open. */
static int ended_by_broker(int fd)
{
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    if (poll(&pfd, 1, 0) != 1)
        return 0;
    uint16_t code = 0;
    uint8_t flags = 0;
    int r = harness_read_error(fd, IO_TIMEOUT_MS, &code, &flags, NULL);
    if (r == 1) {
        assert_int_equal(code, -FERRY_ETIMEOUT_IDLE);
        assert_int_equal(flags & PROTO_ERROR_FATAL, PROTO_ERROR_FATAL);
        assert_int_equal(harness_wait_closed(fd, IO_TIMEOUT_MS), 1);
    } else if (r != 0) {
        fail_msg("expected TIMEOUT_IDLE or a close, got %d", r);
    }
    return 1;
}

/* With --idle-timeout-ms 2000 and --handshake-timeout 2000: silent, stalled
 * and idle connections are closed, while one that pings every 100 ms (a
 * twentieth of the limit) is kept open throughout. */
static void test_hostile_idle_and_stalled_connections_closed(void **state)
{
    struct fx *fx = *state;
    int fds[3];
    /* Silent from the start. */
    fds[0] = raw_connect(fx);
    /* Half a HELLO, then nothing. */
    fds[1] = raw_connect(fx);
    uint8_t buf[128];
    size_t n = harness_build_hello(buf, sizeof buf, PROTO_VERSION, 1);
    assert_int_equal(harness_send(fds[1], buf, n / 2), 0);
    /* Handshaken, then nothing. */
    fds[2] = raw_connect_hello(fx, NULL);
    int busy = raw_connect_hello(fx, NULL);

    int open_left = 3, ended[3] = {0, 0, 0};
    int64_t deadline = harness_now_ms() + 30000;
    for (uint32_t ping = 10; open_left > 0; ping++) {
        if (harness_now_ms() > deadline)
            fail_msg("%d connection(s) still open 30 s after going quiet", open_left);
        send_ping_expect_pong(busy, ping);
        for (int i = 0; i < 3; i++) {
            if (!ended[i] && ended_by_broker(fds[i])) {
                ended[i] = 1;
                open_left--;
            }
        }
        it_sleep_ms(100);
    }
    for (int i = 0; i < 3; i++)
        close(fds[i]);
    send_ping_expect_pong(busy, 9999);
    close(busy);

    ferry_conn *c = it_connect(fx->b.addr);
    uint64_t seq = 0;
    publish_on(c, "after-idle", &seq);
    ferry_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hostile_length_below_minimum_malformed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_hostile_malformed_hello_fatal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_http_request_fatal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_random_first_frames_fatal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_huge_length_claims_no_allocation, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_hostile_frame_over_negotiated_max_fatal, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_hostile_frame_at_max_message_too_large_nonfatal, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_hostile_truncated_frame_then_close_broker_fine, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_hostile_unknown_type_fatal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_wrong_version_fatal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_first_frame_not_hello_fatal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_consumer_frames, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_disconnect_with_publishes_in_flight, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_hostile_unread_acks_backpressure, setup_small_cache,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_hostile_max_connections_fifth_refused, setup_max_conn,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_hostile_idle_and_stalled_connections_closed,
                                        setup_idle, teardown),
    };
    /* IT_FILTER=pattern runs only the matching tests (cmocka's wildcards). */
    if (getenv("IT_FILTER"))
        cmocka_set_test_filter(getenv("IT_FILTER"));
    return cmocka_run_group_tests_name("hostile", tests, NULL, NULL);
}
