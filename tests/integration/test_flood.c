/*
 * test_flood.c - every request type answered within the per-connection
 * bound (issue 20): a client that pipelines one request type without ever
 * reading the replies costs ferryd bounded memory, and a publish on another
 * connection is answered meanwhile.
 *
 * One case per request type of PROTOCOL.md §4 and §9: each starts a broker
 * holding FLOOD_TOPICS topics with long names and FLOOD_GROUPS groups (so
 * that a TOPICS_OK or GROUPS_OK is tens of KiB: a reply much larger than
 * its request), opens a raw connection, handshakes, sends one request and
 * reads its reply (to learn the reply's size), then sends copies of the
 * same frame for FLOOD_MS without reading anything, stopping once the
 * replies it asked for would reach FLOOD_REPLY_MIB (enough to exceed the
 * bound several times over, few enough that a broker without the bound
 * does not take the machine down). Meanwhile ferryd's VmRSS is sampled and
 * a second connection (libferry) publishes every PUBLISH_EVERY_MS and
 * times each round trip. Then the flooding connection closes, and the same
 * goes on for AFTER_CLOSE_MS: what it leaves behind must not grow ferryd
 * either.
 *
 * The bound (docs/OPERATIONS.md): per connection 8 MiB of requests
 * awaiting commit and 8 MiB of replies owed or unsent, a read buffer of one
 * frame (4 MiB), and the group-commit batches that hold those requests and
 * replies on the way (kept for reuse: twice each); FLOOD_BOUND_MIB adds
 * SLACK for the allocator and SQLite. The RSS growth and the publish
 * latency are printed; the growth is asserted except under a sanitizer or
 * valgrind (harness_rss_unreliable), and the latency against
 * PUBLISH_MAX_MS (harness_slowdown() times longer under valgrind).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "it_util.h"

#define FLOOD_TOPICS 60
#define FLOOD_GROUPS 60
#define NAME_BYTES 150
#define FLOOD_MS 2000
#define FLOOD_REPLY_MIB 256
#define AFTER_CLOSE_MS 1000
#define SAMPLE_MS 20
#define PUBLISH_EVERY_MS 100
/* 8 (requests) + 8 (replies) + 4 (read buffer) + 2 x 2 x 8 (the batches'
 * copies of both) + 24 slack. */
#define FLOOD_BOUND_MIB (8 + 8 + 4 + 32 + 24)
#define PUBLISH_MAX_MS 2000

struct fx {
    struct it_fx it;
    long rss0_kib;
    ferry_conn *pub;
};

/* The topic holding the flood's subscription, and a topic name of
 * NAME_BYTES bytes. */
#define FLOOD_TOPIC "flood-0"

static void long_name(char *out, const char *prefix, int i)
{
    int n = snprintf(out, NAME_BYTES + 1, "%s-%03d-", prefix, i);
    memset(out + n, 'x', (size_t)(NAME_BYTES - n));
    out[NAME_BYTES] = 0;
}

static int setup(void **state)
{
    static const char *const args[] = {"--cache-mb", "16", NULL};
    if (it_fx_start(state, sizeof(struct fx), args) != 0)
        return -1;
    struct fx *fx = *state;
    ferry_options o = FERRY_OPTIONS_INIT;
    o.client_name = "flood-setup";
    o.request_timeout_ms = 30000 * harness_slowdown();
    char err[256];
    ferry_conn *c = NULL;
    if (ferry_connect(fx->it.b.addr, &o, &c, err, sizeof err) != 0)
        return -1;
    for (int i = 0; i < FLOOD_TOPICS; i++) {
        char name[NAME_BYTES + 1];
        long_name(name, "flood", i);
        if (i == 0)
            strcpy(name, FLOOD_TOPIC);
        ferry_msg m;
        memset(&m, 0, sizeof m);
        m.topic = name;
        m.payload = "x";
        m.payload_len = 1;
        ferry_ack ack;
        if (ferry_publish(c, &m, &ack) != 0)
            return -1;
    }
    for (int i = 0; i < FLOOD_GROUPS; i++) {
        char name[NAME_BYTES + 1];
        long_name(name, "g", i);
        if (ferry_seek(c, FLOOD_TOPIC, name, FERRY_START_EARLIEST, 0, NULL) != 0)
            return -1;
    }
    ferry_close(c);
    o.client_name = "flood-publisher";
    if (ferry_connect(fx->it.b.addr, &o, &fx->pub, err, sizeof err) != 0)
        return -1;
    fx->rss0_kib = harness_rss_kib(fx->it.b.pid);
    return fx->rss0_kib > 0 ? 0 : -1;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    if (!fx)
        return 0;
    ferry_close(fx->pub);
    return it_fx_teardown_stop(state);
}

/* ----- the measurements ------------------------------------------------------ */

struct meter {
    long rss_max_kib;
    long samples;
    int64_t next_sample, next_publish;
    int64_t lat_max_ms, lat_sum_ms;
    long publishes;
};

static void meter_init(struct meter *m)
{
    memset(m, 0, sizeof *m);
    m->next_sample = m->next_publish = harness_now_ms();
}

/* Samples the RSS and publishes on the other connection when they are due. */
static void meter_step(struct fx *fx, struct meter *m)
{
    int64_t now = harness_now_ms();
    if (now >= m->next_sample) {
        long kib = harness_rss_kib(fx->it.b.pid);
        assert_true(kib > 0);
        if (kib > m->rss_max_kib)
            m->rss_max_kib = kib;
        m->samples++;
        m->next_sample = now + SAMPLE_MS;
    }
    if (now >= m->next_publish) {
        ferry_msg msg;
        memset(&msg, 0, sizeof msg);
        msg.topic = "flood-canary";
        msg.payload = "alive";
        msg.payload_len = 5;
        ferry_ack ack;
        int64_t t0 = harness_now_ms();
        int rc = ferry_publish(fx->pub, &msg, &ack);
        if (rc != 0)
            fail_msg("publish on the other connection: %s (%s)", ferry_strerror(rc),
                     ferry_errmsg(fx->pub));
        int64_t lat = harness_now_ms() - t0;
        if (lat > m->lat_max_ms)
            m->lat_max_ms = lat;
        m->lat_sum_ms += lat;
        m->publishes++;
        m->next_publish = harness_now_ms() + PUBLISH_EVERY_MS;
    }
}

/* ----- the flood ------------------------------------------------------------- */

/* What a case sends: its frame, and what to do on the connection first. */
struct flood_case {
    const char *name;
    uint8_t frame[128 * 1024];
    size_t len;
    int subscribe_first; /* a live subscription 1 on FLOOD_TOPIC */
};

static void raw_subscribe(int fd)
{
    uint8_t buf[4096];
    struct proto_writer w;
    struct proto_subscribe s = {
        .sub_id = 1,
        .topic = {(const uint8_t *)FLOOD_TOPIC, strlen(FLOOD_TOPIC)},
        .group = {(const uint8_t *)"flood-sub", 9},
        .start = PROTO_START_LATEST,
        .max_in_flight = 10,
    };
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_subscribe(&w, 2, &s), 0);
    struct proto_frame f;
    assert_int_equal(harness_request(fd, buf, w.len, buf, sizeof buf, 10000, &f), 1);
    assert_int_equal(f.type, PROTO_SUBSCRIBE_OK);
}

/* Runs one case; see the top of the file. */
static void flood(struct fx *fx, const struct flood_case *fc)
{
    int fd = harness_connect(fx->it.b.addr);
    assert_true(fd >= 0);
    assert_int_equal(harness_handshake(fd, NULL), 0);
    if (fc->subscribe_first)
        raw_subscribe(fd);
    /* One request, read: the size of one reply. */
    static uint8_t rbuf[64 * 1024 * 1024 + 16];
    struct proto_frame f;
    assert_int_equal(harness_request(fd, fc->frame, fc->len, rbuf, sizeof rbuf, 30000, &f), 1);
    size_t reply_bytes = (size_t)proto_rd32(rbuf) + 4;
    uint64_t max_requests = ((uint64_t)FLOOD_REPLY_MIB << 20) / reply_bytes;

    /* A chunk of whole copies of the frame, at least 64 KiB. */
    size_t copies = (64 * 1024 + fc->len - 1) / fc->len;
    uint8_t *chunk = malloc(copies * fc->len);
    assert_non_null(chunk);
    for (size_t i = 0; i < copies; i++)
        memcpy(chunk + i * fc->len, fc->frame, fc->len);
    size_t chunk_len = copies * fc->len;
    assert_int_equal(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);

    struct meter m;
    meter_init(&m);
    uint64_t sent = 0, max_bytes = max_requests * fc->len;
    size_t off = 0;
    int64_t t0 = harness_now_ms();
    int refused = 0;
    while (harness_now_ms() - t0 < FLOOD_MS && sent < max_bytes) {
        size_t want = chunk_len - off;
        if (want > max_bytes - sent)
            want = (size_t)(max_bytes - sent);
        ssize_t n = send(fd, chunk + off, want, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            sent += (uint64_t)n;
            off = (off + (size_t)n) % chunk_len;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            poll(&p, 1, SAMPLE_MS);
        } else {
            refused = 1; /* the broker closed: it must not have */
            break;
        }
        meter_step(fx, &m);
    }
    long rss_flood = m.rss_max_kib;
    int64_t lat_flood = m.lat_max_ms;
    long pubs_flood = m.publishes;
    close(fd);
    int64_t t1 = harness_now_ms();
    while (harness_now_ms() - t1 < AFTER_CLOSE_MS) {
        meter_step(fx, &m);
        it_sleep_ms(SAMPLE_MS / 2);
    }
    long rss_end = harness_rss_kib(fx->it.b.pid), hwm = harness_hwm_kib(fx->it.b.pid);
    long peak = m.rss_max_kib > hwm ? m.rss_max_kib : hwm;
    free(chunk);
    print_message("%s: %llu requests (%llu bytes) sent in %lld ms, %zu-byte replies; ferryd "
                  "VmRSS %ld KiB before, max %ld KiB while flooding, %ld KiB after the close, "
                  "VmHWM %ld KiB: growth %ld KiB (bound %d MiB); publish on another connection: "
                  "max %lld ms while flooding (%ld publishes), max %lld ms overall, mean %lld ms\n",
                  fc->name, (unsigned long long)(sent / fc->len), (unsigned long long)sent,
                  (long long)(t1 - t0), reply_bytes, fx->rss0_kib, rss_flood, rss_end, hwm,
                  peak - fx->rss0_kib, FLOOD_BOUND_MIB, (long long)lat_flood, pubs_flood,
                  (long long)m.lat_max_ms,
                  (long long)(m.publishes ? m.lat_sum_ms / m.publishes : 0));
    assert_false(refused);
    const char *why = harness_rss_unreliable(fx->it.b.pid);
    if (why)
        print_message("%s: ferryd runs under %s: RSS not asserted\n", fc->name, why);
    else if (peak - fx->rss0_kib > (long)FLOOD_BOUND_MIB * 1024)
        fail_msg("%s: ferryd grew by %ld KiB, more than the bound of %d MiB", fc->name,
                 peak - fx->rss0_kib, FLOOD_BOUND_MIB);
    if (m.lat_max_ms > (int64_t)PUBLISH_MAX_MS * harness_slowdown())
        fail_msg("%s: a publish on another connection took %lld ms (at most %d ms expected)",
                 fc->name, (long long)m.lat_max_ms, PUBLISH_MAX_MS * harness_slowdown());
    /* The broker still serves a new connection. */
    fd = harness_connect(fx->it.b.addr);
    assert_true(fd >= 0);
    assert_int_equal(harness_handshake(fd, NULL), 0);
    close(fd);
}

/* ----- the cases ------------------------------------------------------------- */

static struct flood_case fc;

static void begin(const char *name)
{
    memset(&fc, 0, sizeof fc);
    fc.name = name;
}

static void test_flood_ping(void **state)
{
    begin("PING");
    struct proto_writer w;
    proto_writer_init(&w, fc.frame, sizeof fc.frame);
    assert_int_equal(proto_encode_empty(&w, PROTO_PING, 7), 0);
    fc.len = w.len;
    flood(*state, &fc);
}

static void test_flood_topics(void **state)
{
    begin("TOPICS");
    struct proto_writer w;
    proto_writer_init(&w, fc.frame, sizeof fc.frame);
    assert_int_equal(proto_encode_empty(&w, PROTO_TOPICS, 7), 0);
    fc.len = w.len;
    flood(*state, &fc);
}

static void test_flood_groups(void **state)
{
    begin("GROUPS");
    struct proto_writer w;
    proto_writer_init(&w, fc.frame, sizeof fc.frame);
    assert_int_equal(proto_encode_groups(&w, 7, "", 0), 0);
    fc.len = w.len;
    flood(*state, &fc);
}

static void test_flood_hello_again(void **state)
{
    begin("HELLO (a second one)");
    fc.len = harness_build_hello(fc.frame, sizeof fc.frame, PROTO_VERSION, 7);
    flood(*state, &fc);
}

static void test_flood_publish(void **state)
{
    begin("PUBLISH");
    fc.len = harness_build_publish(fc.frame, sizeof fc.frame, 7, "flood-pub", NULL, "p", 1);
    flood(*state, &fc);
}

static void test_flood_publish_invalid(void **state)
{
    begin("PUBLISH (invalid topic)");
    fc.len = harness_build_publish(fc.frame, sizeof fc.frame, 7, "-bad", NULL, "p", 1);
    flood(*state, &fc);
}

static void test_flood_topic_config(void **state)
{
    begin("TOPIC_CONFIG");
    struct proto_writer w;
    proto_writer_init(&w, fc.frame, sizeof fc.frame);
    size_t start = proto_frame_begin(&w, PROTO_TOPIC_CONFIG, 0, 7);
    proto_put_str16(&w, "flood-cfg", 9);
    proto_put_u64(&w, 0);
    proto_put_u64(&w, 1000);
    proto_put_u64(&w, 0);
    proto_put_u8(&w, 0);
    assert_int_equal(proto_frame_end(&w, start), 0);
    fc.len = w.len;
    flood(*state, &fc);
}

static void test_flood_subscribe(void **state)
{
    begin("SUBSCRIBE (a sub_id already live)");
    struct proto_writer w;
    struct proto_subscribe s = {
        .sub_id = 1,
        .topic = {(const uint8_t *)FLOOD_TOPIC, strlen(FLOOD_TOPIC)},
        .group = {(const uint8_t *)"flood-sub", 9},
        .max_in_flight = 10,
    };
    proto_writer_init(&w, fc.frame, sizeof fc.frame);
    assert_int_equal(proto_encode_subscribe(&w, 7, &s), 0);
    fc.len = w.len;
    fc.subscribe_first = 1;
    flood(*state, &fc);
}

static void test_flood_seek(void **state)
{
    begin("SEEK");
    struct proto_writer w;
    struct proto_seek s = {
        .topic = {(const uint8_t *)FLOOD_TOPIC, strlen(FLOOD_TOPIC)},
        .group = {(const uint8_t *)"flood-seek", 10},
        .start = PROTO_START_SEQ,
        .value = 1,
    };
    proto_writer_init(&w, fc.frame, sizeof fc.frame);
    assert_int_equal(proto_encode_seek(&w, 7, &s), 0);
    fc.len = w.len;
    flood(*state, &fc);
}

/* ACK of PROTO_MAX_ACKS sequences never delivered: an ACK_OK of 100 KB for
 * an 80 KB request. */
static void test_flood_ack(void **state)
{
    begin("ACK (10000 sequences)");
    static uint64_t seqs[PROTO_MAX_ACKS];
    for (int i = 0; i < PROTO_MAX_ACKS; i++)
        seqs[i] = 1000000 + (uint64_t)i;
    struct proto_writer w;
    proto_writer_init(&w, fc.frame, sizeof fc.frame);
    assert_int_equal(proto_encode_ack(&w, 7, 1, seqs, PROTO_MAX_ACKS), 0);
    fc.len = w.len;
    fc.subscribe_first = 1;
    flood(*state, &fc);
}

static void test_flood_nack(void **state)
{
    begin("NACK");
    struct proto_writer w;
    struct proto_nack n = {.sub_id = 1, .seq = 5, .reason = {(const uint8_t *)"r", 1}};
    proto_writer_init(&w, fc.frame, sizeof fc.frame);
    assert_int_equal(proto_encode_nack(&w, 7, &n), 0);
    fc.len = w.len;
    fc.subscribe_first = 1;
    flood(*state, &fc);
}

static void test_flood_touch(void **state)
{
    begin("TOUCH");
    struct proto_writer w;
    proto_writer_init(&w, fc.frame, sizeof fc.frame);
    assert_int_equal(proto_encode_sub_op(&w, PROTO_TOUCH, 7, 1, 5), 0);
    fc.len = w.len;
    fc.subscribe_first = 1;
    flood(*state, &fc);
}

static void test_flood_credit(void **state)
{
    begin("CREDIT");
    struct proto_writer w;
    proto_writer_init(&w, fc.frame, sizeof fc.frame);
    assert_int_equal(proto_encode_sub_op(&w, PROTO_CREDIT, 7, 1, 10), 0);
    fc.len = w.len;
    fc.subscribe_first = 1;
    flood(*state, &fc);
}

static void test_flood_unsubscribe_unknown(void **state)
{
    begin("UNSUBSCRIBE (no such subscription)");
    struct proto_writer w;
    proto_writer_init(&w, fc.frame, sizeof fc.frame);
    assert_int_equal(proto_encode_sub_op(&w, PROTO_UNSUBSCRIBE, 7, 99, 0), 0);
    fc.len = w.len;
    flood(*state, &fc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_flood_ping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flood_topics, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flood_groups, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flood_hello_again, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flood_publish, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flood_publish_invalid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flood_topic_config, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flood_subscribe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flood_seek, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flood_ack, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flood_nack, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flood_touch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flood_credit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flood_unsubscribe_unknown, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
