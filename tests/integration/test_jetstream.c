/*
 * test_jetstream.c - libferry over NATS JetStream (issue 14) against a real
 * nats-server that each test starts (tests/support/nats_harness.h), using
 * only the public API on nats:// addresses: publish and consume (id, a
 * binary key, headers, payload, two groups, duplicates), nack with a delay,
 * touch, lease expiry, dead letters, the window, seek, what is unsupported,
 * and `ferry relay --to nats://...` draining an outbox, also after a crash
 * longer than the duplicate window (the recovery scan).
 */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <nats/nats.h>
#include <sqlite3.h>

#include "harness.h"
#include "it_util.h"
#include "nats_harness.h"
#include "relay_it.h"

#define WAIT_MS 20000
#define RELAY_N 2000

struct fx {
    struct nats_server ns;
    ferry_conn *c;
    char db_path[600];
    char log_path[600];
};

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    if (nats_server_start(&fx->ns) != 0) {
        free(fx);
        return -1;
    }
    snprintf(fx->db_path, sizeof fx->db_path, "%s/app.db", fx->ns.dir);
    snprintf(fx->log_path, sizeof fx->log_path, "%s/relay.log", fx->ns.dir);
    ferry_options o = FERRY_OPTIONS_INIT;
    char err[256] = "";
    int rc = ferry_connect(fx->ns.url, &o, &fx->c, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "setup: ferry_connect(%s): %s (%s)\n", fx->ns.url, ferry_strerror(rc), err);
        nats_server_cleanup(&fx->ns);
        free(fx);
        return -1;
    }
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    int rc = 0;
    if (!fx)
        return 0;
    if (fx->c)
        ferry_close(fx->c);
    if (it_file_has(fx->log_path, "runtime error:") || it_file_has(fx->log_path, "Sanitizer")) {
        rit_dump(fx->log_path);
        rc = -1;
    }
    nats_server_cleanup(&fx->ns);
    free(fx);
    return rc;
}

static ferry_sub *sub_opts(ferry_conn *c, const char *topic, const char *group, uint32_t window,
                           uint32_t ack_wait_ms, uint16_t max_deliveries)
{
    ferry_sub_options so = FERRY_SUB_OPTIONS_INIT;
    so.start = FERRY_START_EARLIEST;
    so.max_in_flight = window;
    so.ack_wait_ms = ack_wait_ms;
    so.max_deliveries = max_deliveries;
    ferry_sub *s = NULL;
    int rc = ferry_subscribe(c, topic, group, &so, &s);
    if (rc != 0)
        print_error("subscribe %s/%s: %s (%s)\n", topic, group, ferry_strerror(rc),
                    ferry_errmsg(c));
    assert_int_equal(rc, 0);
    return s;
}

/* The next delivery of sub (others on c are not expected). */
static ferry_delivery *recv_one(ferry_conn *c, int timeout_ms)
{
    ferry_delivery *d = NULL;
    int rc = ferry_receive(c, timeout_ms, &d);
    if (rc != 0)
        print_error("ferry_receive: %s (%s)\n", ferry_strerror(rc), ferry_errmsg(c));
    assert_int_equal(rc, 0);
    assert_non_null(d);
    return d;
}

/* Asserts nothing arrives within ms. */
static void recv_none(ferry_conn *c, int ms)
{
    ferry_delivery *d = NULL;
    int rc = ferry_receive(c, ms, &d);
    if (rc == 0) {
        print_error("unexpected delivery seq %" PRIu64 " id %s attempt %u\n", d->seq, d->id,
                    d->attempt);
        ferry_delivery_free(d);
    }
    assert_int_equal(rc, FERRY_ETIMEOUT);
}

static void publish_simple(ferry_conn *c, const char *topic, const char *id, const char *payload,
                           ferry_ack *ack)
{
    ferry_msg m = {0};
    m.topic = topic;
    m.id = id;
    m.payload = payload;
    m.payload_len = strlen(payload);
    ferry_ack a;
    int rc = ferry_publish(c, &m, ack ? ack : &a);
    if (rc != 0)
        print_error("publish %s: %s (%s)\n", id, ferry_strerror(rc), ferry_errmsg(c));
    assert_int_equal(rc, 0);
}

static const char *header(const ferry_delivery *d, const char *name, size_t *len)
{
    for (size_t i = 0; i < d->header_count; i++)
        if (strcasecmp(d->headers[i].name, name) == 0) {
            if (len)
                *len = d->headers[i].value_len;
            return (const char *)d->headers[i].value;
        }
    return NULL;
}

/* a. publish and consume */
static void test_publish_consume(void **state)
{
    struct fx *fx = *state;
    static const uint8_t key[] = {'k', 0, 0xff, 'z'};
    ferry_header hs[2] = {{"Trace", "abc-1", 5}, {"Tenant", "t42", 3}};
    ferry_msg m = {0};
    m.topic = "orders";
    m.id = "order-1";
    m.key = key;
    m.key_len = sizeof key;
    m.headers = hs;
    m.header_count = 2;
    m.payload = "hello\0world";
    m.payload_len = 11;
    ferry_ack ack;
    assert_int_equal(ferry_publish(fx->c, &m, &ack), 0);
    assert_int_equal(ack.duplicate, 0);
    ferry_ack ack2;
    assert_int_equal(ferry_publish(fx->c, &m, &ack2), 0);
    assert_int_equal(ack2.duplicate, 1);
    assert_int_equal(ack2.seq, ack.seq);

    for (int g = 0; g < 2; g++) {
        ferry_conn *c = it_connect(fx->ns.url);
        sub_opts(c, "orders", g == 0 ? "inv" : "email", 10, 0, 0);
        ferry_delivery *d = recv_one(c, WAIT_MS);
        assert_string_equal(d->id, "order-1");
        assert_int_equal(d->seq, ack.seq);
        assert_int_equal(d->attempt, 1);
        assert_int_equal(d->redelivered, 0);
        assert_int_equal(d->key_len, sizeof key);
        assert_memory_equal(d->key, key, sizeof key);
        assert_int_equal(d->payload_len, 11);
        assert_memory_equal(d->payload, "hello\0world", 11);
        size_t len = 0;
        const char *v = header(d, "Trace", &len);
        assert_non_null(v);
        assert_int_equal(len, 5);
        assert_memory_equal(v, "abc-1", 5);
        v = header(d, "Tenant", &len);
        assert_non_null(v);
        assert_memory_equal(v, "t42", 3);
        assert_int_equal(ferry_delivery_ack(d), 0);
        ferry_delivery_free(d);
        recv_none(c, 1000); /* the duplicate was not stored */
        ferry_close(c);
    }
}

/* b. nack with a delay, touch, lease expiry */
static void test_nack_touch_lease(void **state)
{
    struct fx *fx = *state;
    ferry_conn *c = it_connect(fx->ns.url);
    sub_opts(c, "orders", "inv", 10, 1000, 5);
    publish_simple(fx->c, "orders", "n-1", "p1", NULL);
    ferry_delivery *d = recv_one(c, WAIT_MS);
    assert_string_equal(d->id, "n-1");
    assert_int_equal(ferry_delivery_nack(d, 1500, "later"), 0);
    ferry_delivery_free(d);
    recv_none(c, 700); /* well inside the delay */
    d = recv_one(c, WAIT_MS);
    assert_string_equal(d->id, "n-1");
    assert_int_equal(d->attempt, 2);
    assert_int_equal(d->redelivered, 1);
    assert_int_equal(ferry_delivery_ack(d), 0);
    ferry_delivery_free(d);

    /* touch at 600 ms twice with a 1000 ms lease: no redelivery */
    publish_simple(fx->c, "orders", "t-1", "p2", NULL);
    d = recv_one(c, WAIT_MS);
    assert_string_equal(d->id, "t-1");
    assert_int_equal(d->attempt, 1);
    for (int i = 0; i < 3; i++) {
        recv_none(c, 600);
        assert_int_equal(ferry_delivery_touch(d), 0);
    }
    assert_int_equal(ferry_delivery_ack(d), 0);
    ferry_delivery_free(d);
    recv_none(c, 1500);
    ferry_close(c);

    /* an unacked delivery with a 500 ms lease comes back */
    c = it_connect(fx->ns.url);
    sub_opts(c, "orders", "lease", 10, 500, 5);
    publish_simple(fx->c, "orders", "l-1", "p3", NULL);
    int seen_first = 0;
    for (;;) {
        d = recv_one(c, WAIT_MS);
        if (strcmp(d->id, "l-1") != 0) { /* the earlier ones of the topic */
            assert_int_equal(ferry_delivery_ack(d), 0);
            ferry_delivery_free(d);
            continue;
        }
        if (!seen_first) {
            assert_int_equal(d->attempt, 1);
            seen_first = 1;
            ferry_delivery_free(d); /* neither acked nor nacked */
            continue;
        }
        assert_int_equal(d->attempt, 2);
        assert_int_equal(d->redelivered, 1);
        assert_int_equal(ferry_delivery_ack(d), 0);
        ferry_delivery_free(d);
        break;
    }
    ferry_close(c);
}

/* c. max_deliveries = 2: dead letters */
static void test_dead_letter(void **state)
{
    struct fx *fx = *state;
    ferry_conn *c = it_connect(fx->ns.url);
    sub_opts(c, "orders", "inv", 10, 5000, 2);
    publish_simple(fx->c, "orders", "d-1", "poison", NULL);
    for (uint32_t a = 1; a <= 2; a++) {
        ferry_delivery *d = recv_one(c, WAIT_MS);
        assert_string_equal(d->id, "d-1");
        assert_int_equal(d->attempt, a);
        assert_int_equal(ferry_delivery_nack(d, 0, "bad"), 0);
        ferry_delivery_free(d);
    }
    recv_none(c, 2000);
    ferry_close(c);

    c = it_connect(fx->ns.url);
    sub_opts(c, "_dead.orders", "ops", 10, 0, 0);
    ferry_delivery *d = recv_one(c, WAIT_MS);
    assert_int_equal(d->payload_len, 6);
    assert_memory_equal(d->payload, "poison", 6);
    if (!header(d, "Ferry-Dead-Reason", NULL)) {
        for (size_t i = 0; i < d->header_count; i++)
            print_error("header %s\n", d->headers[i].name);
    }
    assert_non_null(header(d, "Ferry-Dead-Reason", NULL));
    assert_int_equal(ferry_delivery_ack(d), 0);
    ferry_delivery_free(d);
    recv_none(c, 1000);
    ferry_close(c);
}

/* d. the window */
static void test_window(void **state)
{
    struct fx *fx = *state;
    for (int i = 0; i < 10; i++) {
        char id[16];
        snprintf(id, sizeof id, "w-%d", i);
        publish_simple(fx->c, "orders", id, "w", NULL);
    }
    ferry_conn *c = it_connect(fx->ns.url);
    sub_opts(c, "orders", "inv", 3, 30000, 0);
    ferry_delivery *ds[3];
    for (int i = 0; i < 3; i++)
        ds[i] = recv_one(c, WAIT_MS);
    recv_none(c, 1500);
    assert_int_equal(ferry_delivery_ack(ds[0]), 0);
    ferry_delivery *d = recv_one(c, WAIT_MS);
    recv_none(c, 1000);
    ferry_delivery_free(d);
    for (int i = 0; i < 3; i++)
        ferry_delivery_free(ds[i]);
    ferry_close(c);
}

/* e. seek to earliest redelivers everything */
static void test_seek(void **state)
{
    struct fx *fx = *state;
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof id, "s-%d", i);
        publish_simple(fx->c, "orders", id, "s", NULL);
    }
    ferry_conn *c = it_connect(fx->ns.url);
    sub_opts(c, "orders", "inv", 10, 0, 0);
    for (int i = 0; i < 5; i++) {
        ferry_delivery *d = recv_one(c, WAIT_MS);
        assert_int_equal(ferry_delivery_ack(d), 0);
        ferry_delivery_free(d);
    }
    recv_none(c, 1000);
    int rc = ferry_seek(c, "orders", "inv", FERRY_START_EARLIEST, 0, NULL);
    if (rc != 0)
        print_error("ferry_seek: %s (%s)\n", ferry_strerror(rc), ferry_errmsg(c));
    assert_int_equal(rc, 0);
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof id, "s-%d", i);
        ferry_delivery *d = recv_one(c, WAIT_MS);
        assert_string_equal(d->id, id);
        assert_int_equal(ferry_delivery_ack(d), 0);
        ferry_delivery_free(d);
    }
    recv_none(c, 1000);
    ferry_close(c);
}

/* f. unsupported */
static void test_unsupported(void **state)
{
    struct fx *fx = *state;
    ferry_msg ms[2] = {{0}, {0}};
    ms[0].topic = ms[1].topic = "orders";
    ms[0].payload = ms[1].payload = "x";
    ms[0].payload_len = ms[1].payload_len = 1;
    ferry_ack acks[2];
    assert_int_equal(ferry_publish_batch(fx->c, ms, 2, acks), FERRY_EUNSUPPORTED);
    ferry_topic_info *ts = NULL;
    size_t n = 0;
    assert_int_equal(ferry_topics(fx->c, &ts, &n), FERRY_EUNSUPPORTED);
}

/* Messages in the stream, by libnats. */
static uint64_t stream_msgs(const char *url, const char *stream)
{
    natsConnection *nc = NULL;
    assert_int_equal(natsConnection_ConnectTo(&nc, url), NATS_OK);
    jsCtx *js = NULL;
    assert_int_equal(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus st = js_GetStreamInfo(&si, js, stream, NULL, &jerr);
    if (st != NATS_OK)
        print_error("js_GetStreamInfo: %s (%d)\n", natsStatus_GetText(st), (int)jerr);
    assert_int_equal(st, NATS_OK);
    uint64_t n = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return n;
}

/* Reads the whole topic back with a libferry group and checks it holds the
 * outbox's rows once each, in commit order, with their msg_id. */
static void check_relayed(struct fx *fx, const char *addr, const char *topic, int n)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(fx->db_path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(
        sqlite3_prepare_v2(db, "SELECT msg_id FROM ferry_outbox ORDER BY seq", -1, &st, NULL),
        SQLITE_OK);
    ferry_conn *c = it_connect(addr);
    sub_opts(c, topic, "check", 1000, 60000, 0);
    for (int i = 0; i < n; i++) {
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        const char *want = (const char *)sqlite3_column_text(st, 0);
        ferry_delivery *d = recv_one(c, WAIT_MS);
        char payload[32];
        snprintf(payload, sizeof payload, "r-%d", i);
        if (strcmp(d->id, want) != 0 || d->payload_len != strlen(payload) ||
            memcmp(d->payload, payload, d->payload_len) != 0)
            print_error("message %d: id %s payload %.*s, want id %s payload %s\n", i, d->id,
                        (int)d->payload_len, (const char *)d->payload, want, payload);
        assert_string_equal(d->id, want);
        assert_memory_equal(d->payload, payload, strlen(payload));
        assert_int_equal(ferry_delivery_ack(d), 0);
        ferry_delivery_free(d);
    }
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(db);
    recv_none(c, 1000);
    ferry_close(c);
}

static void fill_outbox(struct fx *fx, int n)
{
    sqlite3 *db = rit_app_open(fx->db_path);
    for (int i = 0; i < n; i += 500)
        rit_put_n(db, "orders", "r", i, n - i < 500 ? n - i : 500);
    sqlite3_close(db);
}

/* g. the relay drains an outbox into the stream */
static void test_relay(void **state)
{
    struct fx *fx = *state;
    if (!getenv("FERRY_CLI"))
        fail_msg("FERRY_CLI is not set");
    fill_outbox(fx, RELAY_N);
    static const char *const extra[] = {"--drain", NULL};
    char to[128];
    snprintf(to, sizeof to, "%s", fx->ns.url);
    pid_t p = rit_relay_start(fx->db_path, to, fx->log_path, extra, NULL);
    int st = rit_wait_exit(p, 120000);
    if (st != 0)
        rit_dump(fx->log_path);
    assert_int_equal(st, 0);
    assert_int_equal(rit_count(fx->db_path, "sent_ms IS NULL"), 0);
    assert_int_equal(stream_msgs(fx->ns.url, "FERRY"), RELAY_N);
    check_relayed(fx, fx->ns.url, "orders", RELAY_N);
}

/* h. the relay after a crash longer than the duplicate window */
static void test_relay_recovery(void **state)
{
    struct fx *fx = *state;
    if (!getenv("FERRY_CLI"))
        fail_msg("FERRY_CLI is not set");
    /* The stream first, with a 200 ms duplicate window. */
    natsConnection *nc = NULL;
    assert_int_equal(natsConnection_ConnectTo(&nc, fx->ns.url), NATS_OK);
    jsCtx *js = NULL;
    assert_int_equal(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    cfg.Name = "DUP";
    const char *subj[] = {"dup.>"};
    cfg.Subjects = subj;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_FileStorage;
    cfg.Duplicates = 200LL * 1000 * 1000;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus ns = js_AddStream(&si, js, &cfg, NULL, &jerr);
    if (ns != NATS_OK)
        print_error("js_AddStream: %s (%d)\n", natsStatus_GetText(ns), (int)jerr);
    assert_int_equal(ns, NATS_OK);
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);

    fill_outbox(fx, RELAY_N);
    char to[160];
    snprintf(to, sizeof to, "%s?stream=DUP&prefix=dup", fx->ns.url);
    static const char *const extra[] = {"--drain", NULL};
    pid_t p =
        rit_relay_start(fx->db_path, to, fx->log_path, extra, "FERRY_RELAY_CRASH_AFTER_ACK=1");
    int st = rit_wait_exit(p, 120000);
    if (st != 9)
        rit_dump(fx->log_path);
    assert_int_equal(st, 9);
    uint64_t stored = stream_msgs(fx->ns.url, "DUP");
    assert_true(stored > 0);
    /* The crash left acked rows unsent, else this test proves nothing. */
    long unsent = rit_count(fx->db_path, "sent_ms IS NULL");
    assert_true(unsent > (long)(RELAY_N - stored) || stored == RELAY_N);
    assert_true(unsent > 0);
    it_sleep_ms(1000); /* > the duplicate window */
    p = rit_relay_start(fx->db_path, to, fx->log_path, extra, NULL);
    st = rit_wait_exit(p, 120000);
    if (st != 0)
        rit_dump(fx->log_path);
    assert_int_equal(st, 0);
    assert_int_equal(rit_count(fx->db_path, "sent_ms IS NULL"), 0);
    uint64_t total = stream_msgs(fx->ns.url, "DUP");
    if (total != RELAY_N)
        rit_dump(fx->log_path);
    assert_int_equal(total, RELAY_N);
    check_relayed(fx, to, "orders", RELAY_N);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_publish_consume, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nack_touch_lease, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_letter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_window, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seek, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unsupported, setup, teardown),
        cmocka_unit_test_setup_teardown(test_relay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_relay_recovery, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
