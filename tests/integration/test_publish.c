/*
 * test_publish.c - publishing against the real ferryd: ordering, restart,
 * atomic batches, idempotent ids, validation errors and what the store
 * holds afterwards.
 *
 * Each test gets its own broker on an ephemeral port and its own data
 * folder (fixture setup/teardown), so sequence numbers start at 1 in every
 * test and the expected values below are exact. White-box checks read the
 * documented view messages_v after the broker has been stopped.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "it_util.h"

static int setup_args(void **state, const char *const *args)
{
    return it_fx_setup(state, sizeof(struct it_fx), args, NULL);
}

static int setup(void **state)
{
    return setup_args(state, NULL);
}

static int setup_small(void **state)
{
    static const char *const args[] = {"--max-message-bytes", "1000", NULL};
    return setup_args(state, args);
}

static int setup_short_dedupe(void **state)
{
    static const char *const args[] = {"--dedupe-window-ms", "2000", NULL};
    return setup_args(state, args);
}

static int setup_few_ids(void **state)
{
    static const char *const args[] = {"--dedupe-max-ids", "100", NULL};
    return setup_args(state, args);
}

/* Stops the broker cleanly after closing the fixture's connection, and
 * asserts the exit status is 0. */
static void stop_clean(struct it_fx *fx)
{
    ferry_close(fx->c);
    fx->c = NULL;
    int st = harness_stop(&fx->b);
    if (st != 0)
        harness_dump_log(&fx->b);
    assert_int_equal(st, 0);
}

static void restart(struct it_fx *fx)
{
    assert_int_equal(harness_restart(&fx->b), 0);
    fx->c = it_connect(fx->b.addr);
}

static ferry_msg msg_of(const char *topic, const char *id, const char *payload)
{
    ferry_msg m;
    memset(&m, 0, sizeof m);
    m.topic = topic;
    m.id = id;
    m.payload = payload;
    m.payload_len = payload ? strlen(payload) : 0;
    return m;
}

/* Publishes synchronously and asserts the exact ack. */
static void pub_expect(ferry_conn *c, const char *topic, const char *id, uint64_t seq, int dup)
{
    ferry_msg m = msg_of(topic, id, "x");
    ferry_ack ack;
    memset(&ack, 0, sizeof ack);
    int r = ferry_publish(c, &m, &ack);
    if (r != 0)
        print_error("publish %s/%s: %s (%s)\n", topic, id ? id : "(null)", ferry_strerror(r),
                    ferry_errmsg(c));
    assert_int_equal(r, 0);
    assert_int_equal(ack.seq, seq);
    assert_int_equal(ack.duplicate, dup);
    if (id)
        assert_string_equal(ack.id, id);
}

/* ----- 10,000 pipelined publishes, restart, all present ----------------- */

#define BULK_N 10000
#define BULK_PAYLOAD 100

struct bulk_rec {
    struct bulk_ctx *ctx;
    size_t index;
    int calls;
    int status;
    uint64_t seq;
    int dup;
    char id[129];
};

struct bulk_ctx {
    size_t order[BULK_N];
    size_t n_order;
};

static void on_bulk_ack(void *ud, int status, const ferry_ack *ack)
{
    struct bulk_rec *r = ud;
    r->calls++;
    r->status = status;
    if (ack) {
        r->seq = ack->seq;
        r->dup = ack->duplicate;
        snprintf(r->id, sizeof r->id, "%s", ack->id);
    }
    if (r->ctx->n_order < BULK_N)
        r->ctx->order[r->ctx->n_order] = r->index;
    r->ctx->n_order++;
}

static void test_publish_10000_pipelined_all_present_after_restart(void **state)
{
    struct it_fx *fx = *state;
    char(*ids)[37] = calloc(BULK_N, 37);
    struct bulk_rec *recs = calloc(BULK_N, sizeof *recs);
    struct bulk_ctx *ctx = calloc(1, sizeof *ctx);
    assert_non_null(ids);
    assert_non_null(recs);
    assert_non_null(ctx);
    uint64_t rng = harness_seed();
    uint8_t payload[BULK_PAYLOAD];
    int64_t t0 = harness_wall_ms();

    for (size_t i = 0; i < BULK_N; i++) {
        harness_uuid(&rng, ids[i]);
        it_payload(i, payload, sizeof payload);
        recs[i].ctx = ctx;
        recs[i].index = i;
        ferry_msg m;
        memset(&m, 0, sizeof m);
        m.topic = "orders";
        m.id = ids[i];
        m.payload = payload;
        m.payload_len = sizeof payload;
        int r = ferry_publish_async(fx->c, &m, on_bulk_ack, &recs[i]);
        if (r != 0)
            print_error("publish_async #%zu: %s (%s)\n", i, ferry_strerror(r), ferry_errmsg(fx->c));
        assert_int_equal(r, 0);
    }
    assert_int_equal(ferry_flush(fx->c, 60000), 0);
    assert_int_equal(ferry_in_flight(fx->c), 0);
    int64_t t1 = harness_wall_ms();

    /* Every callback ran once, in publish order, with seq = position. */
    assert_int_equal(ctx->n_order, BULK_N);
    for (size_t i = 0; i < BULK_N; i++) {
        assert_int_equal(recs[i].calls, 1);
        assert_int_equal(recs[i].status, 0);
        assert_int_equal(recs[i].seq, i + 1);
        assert_int_equal(recs[i].dup, 0);
        assert_string_equal(recs[i].id, ids[i]);
        assert_int_equal(ctx->order[i], i);
    }

    ferry_topic_info ti;
    assert_int_equal(it_topic(fx->c, "orders", &ti), 1);
    assert_int_equal(ti.head_seq, BULK_N);
    assert_int_equal(ti.first_seq, 1);
    assert_int_equal(ti.message_count, BULK_N);
    assert_int_equal(ti.bytes, (uint64_t)BULK_N * BULK_PAYLOAD);

    stop_clean(fx);
    restart(fx);
    memset(&ti, 0, sizeof ti);
    assert_int_equal(it_topic(fx->c, "orders", &ti), 1);
    assert_int_equal(ti.head_seq, BULK_N);
    assert_int_equal(ti.message_count, BULK_N);
    assert_int_equal(ti.bytes, (uint64_t)BULK_N * BULK_PAYLOAD);
    /* The sequence goes on where it stopped. */
    pub_expect(fx->c, "orders", "after-restart", BULK_N + 1, 0);
    stop_clean(fx);

    struct harness_row *rows;
    long n = harness_db_rows(&fx->b, "orders", &rows);
    assert_int_equal(n, BULK_N + 1);
    for (long i = 0; i < BULK_N; i++) {
        it_payload((size_t)i, payload, sizeof payload);
        assert_int_equal(rows[i].seq, (uint64_t)i + 1);
        assert_string_equal(rows[i].msg_id, ids[i]);
        assert_int_equal(rows[i].payload_len, BULK_PAYLOAD);
        assert_memory_equal(rows[i].payload, payload, BULK_PAYLOAD);
        assert_int_equal(rows[i].key_len, 0);
        /* A Unix-ms timestamp taken while publishing (1 s of slack). */
        assert_in_range(rows[i].ts_ms, t0 - 1000, t1 + 1000);
    }
    assert_string_equal(rows[BULK_N].msg_id, "after-restart");
    harness_db_rows_free(rows, n);
    free(ids);
    free(recs);
    free(ctx);
}

/* ----- single and batch ------------------------------------------------- */

static void test_publish_sync_single_acked_and_listed(void **state)
{
    struct it_fx *fx = *state;
    ferry_msg m = msg_of("single", "one", "hello");
    ferry_ack ack;
    memset(&ack, 0, sizeof ack);
    assert_int_equal(ferry_publish(fx->c, &m, &ack), 0);
    assert_int_equal(ack.seq, 1);
    assert_int_equal(ack.duplicate, 0);
    assert_string_equal(ack.id, "one");
    assert_int_equal(ferry_ping(fx->c, NULL), 0);

    ferry_topic_info ti;
    assert_int_equal(it_topic(fx->c, "single", &ti), 1);
    assert_string_equal(ti.name, "single");
    assert_int_equal(ti.head_seq, 1);
    assert_int_equal(ti.first_seq, 1);
    assert_int_equal(ti.message_count, 1);
    assert_int_equal(ti.bytes, 5);
    assert_int_equal(it_topic(fx->c, "never-published", &ti), 0);

    /* The limits announced at the handshake are the documented defaults;
     * the dedupe window covers a relay that was down for a day. */
    ferry_server_info si;
    memset(&si, 0, sizeof si);
    ferry_server_info_get(fx->c, &si);
    assert_int_equal(si.version, PROTO_VERSION);
    assert_int_equal(si.max_message_bytes, PROTO_DEFAULT_MAX_MESSAGE);
    assert_int_equal(si.max_frame_bytes, PROTO_DEFAULT_MAX_FRAME);
    assert_int_equal(si.max_batch, PROTO_MAX_BATCH);
    assert_true(si.dedupe_window_ms >= 24ull * 3600 * 1000);
    assert_true(si.server_name[0] != '\0');

    /* SIGINT stops it as cleanly as SIGTERM. */
    ferry_close(fx->c);
    fx->c = NULL;
    assert_int_equal(harness_stop_signal(&fx->b, SIGINT), 0);
    struct harness_row *rows;
    long n = harness_db_rows(&fx->b, "single", &rows);
    assert_int_equal(n, 1);
    assert_int_equal(rows[0].seq, 1);
    assert_string_equal(rows[0].msg_id, "one");
    assert_int_equal(rows[0].payload_len, 5);
    assert_memory_equal(rows[0].payload, "hello", 5);
    harness_db_rows_free(rows, n);
}

static void test_publish_empty_payload_stored(void **state)
{
    struct it_fx *fx = *state;
    ferry_msg m = msg_of("empty", "e1", NULL);
    ferry_ack ack;
    assert_int_equal(ferry_publish(fx->c, &m, &ack), 0);
    assert_int_equal(ack.seq, 1);
    stop_clean(fx);
    struct harness_row *rows;
    long n = harness_db_rows(&fx->b, "empty", &rows);
    assert_int_equal(n, 1);
    assert_int_equal(rows[0].payload_len, 0);
    harness_db_rows_free(rows, n);
}

/* A second connection publishing to the same topic from a thread, so that
 * batches on the main connection race with single publishes. */
#define RACE_N 2000
struct racer {
    const char *addr;
    int failures;
    uint64_t *seqs;
    size_t n;
};

static void on_race_ack(void *ud, int status, const ferry_ack *ack)
{
    struct racer *r = ud;
    if (status != 0 || !ack) {
        r->failures++;
        return;
    }
    if (r->n < RACE_N)
        r->seqs[r->n] = ack->seq;
    r->n++;
}

static void *race_main(void *arg)
{
    struct racer *r = arg;
    ferry_options o = FERRY_OPTIONS_INIT;
    o.max_in_flight = 50;
    ferry_conn *c = NULL;
    if (ferry_connect(r->addr, &o, &c, NULL, 0) != 0) {
        r->failures = RACE_N;
        return NULL;
    }
    for (int i = 0; i < RACE_N; i++) {
        ferry_msg m = msg_of("mixed", NULL, "racer");
        if (ferry_publish_async(c, &m, on_race_ack, r) != 0)
            r->failures++;
    }
    if (ferry_flush(c, 60000) != 0)
        r->failures++;
    ferry_close(c);
    return NULL;
}

static void test_publish_batch_consecutive_while_racing(void **state)
{
    struct it_fx *fx = *state;
    enum { BATCHES = 20, PER = 10, TOTAL = RACE_N + BATCHES * PER };
    struct racer rc = {.addr = fx->b.addr};
    rc.seqs = calloc(RACE_N, sizeof *rc.seqs);
    unsigned char *seen = calloc(TOTAL + 1, 1);
    assert_non_null(rc.seqs);
    assert_non_null(seen);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, race_main, &rc), 0);

    for (int b = 0; b < BATCHES; b++) {
        ferry_msg msgs[PER];
        ferry_ack acks[PER];
        char ids[PER][32];
        for (int j = 0; j < PER; j++) {
            snprintf(ids[j], sizeof ids[j], "batch-%d-%d", b, j);
            msgs[j] = msg_of("mixed", ids[j], "batched");
        }
        memset(acks, 0, sizeof acks);
        int r = ferry_publish_batch(fx->c, msgs, PER, acks);
        if (r != 0)
            print_error("batch %d: %s (%s)\n", b, ferry_strerror(r), ferry_errmsg(fx->c));
        assert_int_equal(r, 0);
        for (int j = 0; j < PER; j++) {
            /* Atomic: ten consecutive sequence numbers, nothing between. */
            assert_int_equal(acks[j].seq, acks[0].seq + (uint64_t)j);
            assert_int_equal(acks[j].duplicate, 0);
            assert_string_equal(acks[j].id, ids[j]);
            assert_in_range(acks[j].seq, 1, TOTAL);
            assert_int_equal(seen[acks[j].seq], 0);
            seen[acks[j].seq] = 1;
        }
    }
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(rc.failures, 0);
    assert_int_equal(rc.n, RACE_N);
    for (size_t i = 0; i < RACE_N; i++) {
        assert_in_range(rc.seqs[i], 1, TOTAL);
        assert_int_equal(seen[rc.seqs[i]], 0);
        seen[rc.seqs[i]] = 1;
        /* One connection's acks come back in its own order. */
        if (i > 0)
            assert_true(rc.seqs[i] > rc.seqs[i - 1]);
    }
    ferry_topic_info ti;
    assert_int_equal(it_topic(fx->c, "mixed", &ti), 1);
    assert_int_equal(ti.head_seq, TOTAL);
    assert_int_equal(ti.message_count, TOTAL);
    free(rc.seqs);
    free(seen);
}

static void test_publish_batch_with_invalid_topic_stores_nothing(void **state)
{
    struct it_fx *fx = *state;
    ferry_msg msgs[3] = {msg_of("good", "g1", "a"), msg_of("bad topic!", "g2", "b"),
                         msg_of("good", "g3", "c")};
    ferry_ack acks[3];
    assert_int_equal(ferry_publish_batch(fx->c, msgs, 3, acks), FERRY_EINVALID_TOPIC);

    /* Nothing of the batch was stored: the first publish to "good" is 1
     * and the ids of the rejected batch are not duplicates. */
    ferry_topic_info ti;
    assert_int_equal(it_topic(fx->c, "good", &ti), 0);
    pub_expect(fx->c, "good", "g1", 1, 0);
    pub_expect(fx->c, "good", "g3", 2, 0);
}

/* The same, on the wire: the broker itself rejects the whole batch (a
 * client library might have caught it first) with a non-fatal error that
 * echoes the request id. */
static void test_publish_raw_batch_with_invalid_topic_rejected_whole(void **state)
{
    struct it_fx *fx = *state;
    int fd = harness_connect(fx->b.addr);
    assert_true(fd >= 0);
    assert_int_equal(harness_handshake(fd, NULL), 0);

    static const char *const topics[3] = {"rawgood", "bad topic", "rawgood"};
    static const char *const ids[3] = {"r1", "r2", "r3"};
    uint8_t buf[4096];
    struct proto_writer w;
    proto_writer_init(&w, buf, sizeof buf);
    size_t start = proto_publish_begin(&w, 77);
    for (int i = 0; i < 3; i++) {
        struct proto_msg m;
        memset(&m, 0, sizeof m);
        m.topic.ptr = (const uint8_t *)topics[i];
        m.topic.len = strlen(topics[i]);
        m.id.ptr = (const uint8_t *)ids[i];
        m.id.len = strlen(ids[i]);
        m.payload.ptr = (const uint8_t *)"p";
        m.payload.len = 1;
        proto_publish_add(&w, &m, NULL);
    }
    assert_int_equal(proto_publish_end(&w, start, 3), 0);
    assert_int_equal(harness_send(fd, buf, w.len), 0);

    uint16_t code = 0;
    uint8_t flags = 0xff;
    uint32_t req = 0;
    assert_int_equal(harness_read_error(fd, 10000, &code, &flags, &req), 1);
    assert_int_equal(code, -FERRY_EINVALID_TOPIC);
    assert_int_equal(flags & PROTO_ERROR_FATAL, 0);
    assert_int_equal(req, 77);

    /* The connection still works: a ping, then a valid publish that gets
     * sequence 1 because nothing of the batch was stored. */
    w.len = 0;
    assert_int_equal(proto_encode_empty(&w, PROTO_PING, 78), 0);
    assert_int_equal(harness_send(fd, buf, w.len), 0);
    struct proto_frame f;
    assert_int_equal(harness_read_frame(fd, buf, sizeof buf, 10000, &f), 1);
    assert_int_equal(f.type, PROTO_PONG);
    assert_int_equal(f.request_id, 78);

    size_t n = harness_build_publish(buf, sizeof buf, 79, "rawgood", "r1", "p", 1);
    assert_true(n > 0);
    assert_int_equal(harness_send(fd, buf, n), 0);
    assert_int_equal(harness_read_frame(fd, buf, sizeof buf, 10000, &f), 1);
    assert_int_equal(f.type, PROTO_PUBLISH_ACK);
    assert_int_equal(f.request_id, 79);
    assert_int_equal(f.u.publish_ack.count, 1);
    struct proto_ack_iter it;
    struct proto_ack_entry e;
    proto_ack_iter_init(&it, &f.u.publish_ack);
    assert_int_equal(proto_ack_next(&it, &e), 1);
    assert_int_equal(e.seq, 1);
    assert_int_equal(e.flags & PROTO_ACK_DUPLICATE, 0);
    assert_int_equal(e.id.len, 2);
    assert_memory_equal(e.id.ptr, "r1", 2);
    close(fd);
}

/* ----- more batches and sizes ------------------------------------------- */

/* One batch may span topics; each topic gets its own sequence, and the
 * listing shows every topic. */
static void test_publish_batch_across_300_topics_listed(void **state)
{
    struct it_fx *fx = *state;
    enum { N = 300 };
    static char names[N][16];
    static ferry_msg msgs[N];
    static ferry_ack acks[N];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "topic-%03d", i);
        msgs[i] = msg_of(names[i], NULL, "m");
    }
    assert_int_equal(ferry_publish_batch(fx->c, msgs, N, acks), 0);
    for (int i = 0; i < N; i++)
        assert_int_equal(acks[i].seq, 1);
    pub_expect(fx->c, "topic-150", NULL, 2, 0);

    ferry_topic_info *list = NULL;
    size_t count = 0;
    assert_int_equal(ferry_topics(fx->c, &list, &count), 0);
    assert_int_equal(count, N);
    unsigned char seen[N] = {0};
    for (size_t i = 0; i < count; i++) {
        int k = -1;
        assert_int_equal(sscanf(list[i].name, "topic-%d", &k), 1);
        assert_in_range(k, 0, N - 1);
        assert_int_equal(seen[k], 0);
        seen[k] = 1;
        assert_int_equal(list[i].head_seq, k == 150 ? 2 : 1);
        assert_int_equal(list[i].message_count, k == 150 ? 2 : 1);
    }
    ferry_topics_free(list);
}

/* A batch of exactly the announced maximum count is one atomic unit. */
static void test_publish_max_batch_consecutive(void **state)
{
    struct it_fx *fx = *state;
    ferry_server_info si;
    ferry_server_info_get(fx->c, &si);
    assert_int_equal(si.max_batch, PROTO_MAX_BATCH);
    size_t n = si.max_batch;
    ferry_msg *msgs = calloc(n, sizeof *msgs);
    ferry_ack *acks = calloc(n, sizeof *acks);
    char(*ids)[24] = calloc(n, 24);
    assert_non_null(msgs);
    assert_non_null(acks);
    assert_non_null(ids);
    pub_expect(fx->c, "big-batch", "before", 1, 0);
    for (size_t i = 0; i < n; i++) {
        snprintf(ids[i], 24, "bb-%zu", i);
        msgs[i] = msg_of("big-batch", ids[i], "payload");
    }
    assert_int_equal(ferry_publish_batch(fx->c, msgs, n, acks), 0);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(acks[i].seq, i + 2);
        assert_int_equal(acks[i].duplicate, 0);
        assert_string_equal(acks[i].id, ids[i]);
    }
    /* The same batch again: all duplicates, nothing stored. */
    assert_int_equal(ferry_publish_batch(fx->c, msgs, n, acks), 0);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(acks[i].seq, i + 2);
        assert_int_equal(acks[i].duplicate, 1);
    }
    pub_expect(fx->c, "big-batch", "after", n + 2, 0);
    free(msgs);
    free(acks);
    free(ids);
}

/* The default limit, 1 MiB, is inclusive; a message of that size is
 * stored byte for byte. */
static void test_publish_default_max_message_round_trip(void **state)
{
    struct it_fx *fx = *state;
    size_t max = PROTO_DEFAULT_MAX_MESSAGE;
    uint8_t *big = malloc(max + 1);
    assert_non_null(big);
    it_payload(42, big, max + 1);
    ferry_msg m;
    memset(&m, 0, sizeof m);
    m.topic = "large";
    m.id = "large-1";
    m.payload = big;
    m.payload_len = max;
    ferry_ack ack;
    assert_int_equal(ferry_publish(fx->c, &m, &ack), 0);
    assert_int_equal(ack.seq, 1);
    m.id = "large-2";
    m.payload_len = max + 1;
    assert_int_equal(ferry_publish(fx->c, &m, &ack), FERRY_EMESSAGE_TOO_LARGE);
    pub_expect(fx->c, "large", "small", 2, 0);

    stop_clean(fx);
    struct harness_row *rows;
    long n = harness_db_rows(&fx->b, "large", &rows);
    assert_int_equal(n, 2);
    assert_int_equal(rows[0].payload_len, max);
    assert_memory_equal(rows[0].payload, big, max);
    harness_db_rows_free(rows, n);
    free(big);
}

/* With --dedupe-window-ms 2000 an id is a duplicate right away and stops
 * being one eventually, never before one window has passed. Only a lower
 * bound on time is asserted, which a slow machine cannot break. */
static void test_publish_dedupe_window_expires(void **state)
{
    struct it_fx *fx = *state;
    ferry_server_info si;
    ferry_server_info_get(fx->c, &si);
    assert_int_equal(si.dedupe_window_ms, 2000);

    int64_t t0 = harness_now_ms();
    pub_expect(fx->c, "window", "W", 1, 0);
    pub_expect(fx->c, "window", "W", 1, 1);
    int64_t deadline = t0 + 60000;
    ferry_ack ack;
    for (;;) {
        ferry_msg m = msg_of("window", "W", "again");
        assert_int_equal(ferry_publish(fx->c, &m, &ack), 0);
        if (!ack.duplicate)
            break;
        assert_int_equal(ack.seq, 1);
        if (harness_now_ms() > deadline)
            fail_msg("id still remembered 60 s after a 2 s dedupe window");
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
    int64_t forgotten_after = harness_now_ms() - t0;
    print_message("id forgotten after %lld ms\n", (long long)forgotten_after);
    assert_true(forgotten_after >= 2000);
    /* Forgotten means stored anew, at the next sequence. */
    assert_int_equal(ack.seq, 2);
    pub_expect(fx->c, "window", "W", 2, 1);
}

/* Three PUBLISH frames in one write, the middle one invalid: they land in
 * one group commit, and the bad one fails alone, in order. */
static void test_publish_raw_pipeline_error_in_middle_isolated(void **state)
{
    struct it_fx *fx = *state;
    int fd = harness_connect(fx->b.addr);
    assert_true(fd >= 0);
    assert_int_equal(harness_handshake(fd, NULL), 0);
    uint8_t buf[4096];
    size_t n = harness_build_publish(buf, sizeof buf, 11, "piped", "p1", "a", 1);
    n += harness_build_publish(buf + n, sizeof buf - n, 12, "piped", "bad id", "b", 1);
    n += harness_build_publish(buf + n, sizeof buf - n, 13, "piped", "p3", "c", 1);
    n += harness_build_publish(buf + n, sizeof buf - n, 14, "piped", "p1", "d", 1);
    assert_int_equal(harness_send(fd, buf, n), 0);

    static const struct {
        uint32_t req;
        uint8_t type;
        uint64_t seq;
        int dup;
    } want[4] = {{11, PROTO_PUBLISH_ACK, 1, 0},
                 {12, PROTO_ERROR, 0, 0},
                 {13, PROTO_PUBLISH_ACK, 2, 0},
                 {14, PROTO_PUBLISH_ACK, 1, 1}};
    for (int i = 0; i < 4; i++) {
        struct proto_frame f;
        assert_int_equal(harness_read_frame(fd, buf, sizeof buf, 10000, &f), 1);
        assert_int_equal(f.request_id, want[i].req);
        assert_int_equal(f.type, want[i].type);
        if (f.type == PROTO_ERROR) {
            assert_int_equal(f.u.error.code, -FERRY_EINVALID_ID);
            assert_int_equal(f.flags & PROTO_ERROR_FATAL, 0);
            continue;
        }
        struct proto_ack_iter it;
        struct proto_ack_entry e;
        proto_ack_iter_init(&it, &f.u.publish_ack);
        assert_int_equal(proto_ack_next(&it, &e), 1);
        assert_int_equal(e.seq, want[i].seq);
        assert_int_equal(!!(e.flags & PROTO_ACK_DUPLICATE), want[i].dup);
    }
    close(fd);
}

/* Fifty connections publishing at once, each from its own thread: the
 * topic ends dense, and each connection sees its own sequence numbers
 * rising. */
#define CONC_CONNS 50
#define CONC_PER 200
struct conc {
    const char *addr;
    int index;
    int failures;
    uint64_t seqs[CONC_PER];
};

static void *conc_main(void *arg)
{
    struct conc *w = arg;
    ferry_conn *c = NULL;
    if (ferry_connect(w->addr, NULL, &c, NULL, 0) != 0) {
        w->failures = CONC_PER;
        return NULL;
    }
    for (int i = 0; i < CONC_PER; i++) {
        char id[32];
        snprintf(id, sizeof id, "w%d-%d", w->index, i);
        ferry_msg m = msg_of("shared", id, id);
        ferry_ack ack;
        if (ferry_publish(c, &m, &ack) != 0 || ack.duplicate || strcmp(ack.id, id) != 0)
            w->failures++;
        else
            w->seqs[i] = ack.seq;
    }
    ferry_close(c);
    return NULL;
}

static void test_publish_50_connections_concurrently_dense(void **state)
{
    struct it_fx *fx = *state;
    struct conc *ws = calloc(CONC_CONNS, sizeof *ws);
    pthread_t th[CONC_CONNS];
    assert_non_null(ws);
    for (int i = 0; i < CONC_CONNS; i++) {
        ws[i].addr = fx->b.addr;
        ws[i].index = i;
        assert_int_equal(pthread_create(&th[i], NULL, conc_main, &ws[i]), 0);
    }
    for (int i = 0; i < CONC_CONNS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    enum { TOTAL = CONC_CONNS * CONC_PER };
    unsigned char *seen = calloc(TOTAL + 1, 1);
    assert_non_null(seen);
    for (int i = 0; i < CONC_CONNS; i++) {
        assert_int_equal(ws[i].failures, 0);
        for (int j = 0; j < CONC_PER; j++) {
            assert_in_range(ws[i].seqs[j], 1, TOTAL);
            assert_int_equal(seen[ws[i].seqs[j]], 0);
            seen[ws[i].seqs[j]] = 1;
            if (j > 0)
                assert_true(ws[i].seqs[j] > ws[i].seqs[j - 1]);
        }
    }
    stop_clean(fx);
    struct harness_row *rows;
    long n = harness_db_rows(&fx->b, "shared", &rows);
    assert_int_equal(n, TOTAL);
    for (long i = 0; i < n; i++) {
        int w = -1, k = -1;
        assert_int_equal(sscanf(rows[i].msg_id, "w%d-%d", &w, &k), 2);
        assert_in_range(w, 0, CONC_CONNS - 1);
        assert_in_range(k, 0, CONC_PER - 1);
        /* The row at each sequence is the message that was acked with it,
         * payload included. */
        assert_int_equal(ws[w].seqs[k], rows[i].seq);
        assert_int_equal(rows[i].payload_len, strlen(rows[i].msg_id));
        assert_memory_equal(rows[i].payload, rows[i].msg_id, rows[i].payload_len);
    }
    harness_db_rows_free(rows, n);
    free(seen);
    free(ws);
}

/* With --dedupe-max-ids 100 the index forgets the oldest ids first: after
 * 150 ids the newest is still a duplicate, the first one is not. */
static void test_publish_dedupe_max_ids_forgets_oldest(void **state)
{
    struct it_fx *fx = *state;
    char id[32];
    for (int i = 0; i < 150; i++) {
        snprintf(id, sizeof id, "cap-%d", i);
        pub_expect(fx->c, "capped", id, (uint64_t)i + 1, 0);
    }
    pub_expect(fx->c, "capped", "cap-149", 150, 1);
    pub_expect(fx->c, "capped", "cap-100", 101, 1);
    pub_expect(fx->c, "capped", "cap-0", 151, 0);
}

/* ----- idempotent ids --------------------------------------------------- */

static void test_publish_duplicate_id_within_batch_stored_once(void **state)
{
    struct it_fx *fx = *state;
    ferry_msg msgs[3] = {msg_of("dup", "A", "1"), msg_of("dup", "B", "2"), msg_of("dup", "A", "3")};
    ferry_ack acks[3];
    memset(acks, 0, sizeof acks);
    assert_int_equal(ferry_publish_batch(fx->c, msgs, 3, acks), 0);
    assert_int_equal(acks[0].seq, 1);
    assert_int_equal(acks[0].duplicate, 0);
    assert_int_equal(acks[1].seq, 2);
    assert_int_equal(acks[1].duplicate, 0);
    assert_int_equal(acks[2].seq, 1);
    assert_int_equal(acks[2].duplicate, 1);
    assert_string_equal(acks[2].id, "A");

    ferry_topic_info ti;
    assert_int_equal(it_topic(fx->c, "dup", &ti), 1);
    assert_int_equal(ti.head_seq, 2);
    assert_int_equal(ti.message_count, 2);

    stop_clean(fx);
    struct harness_row *rows;
    long n = harness_db_rows(&fx->b, "dup", &rows);
    assert_int_equal(n, 2);
    assert_string_equal(rows[0].msg_id, "A");
    /* The first payload wins: the duplicate stored nothing. */
    assert_memory_equal(rows[0].payload, "1", 1);
    assert_string_equal(rows[1].msg_id, "B");
    harness_db_rows_free(rows, n);
}

/* Two publishes of one id in flight together land in one group commit. */
struct dup_pair {
    int calls;
    uint64_t seq[2];
    int dup[2];
    int status[2];
};

static void on_dup_ack(void *ud, int status, const ferry_ack *ack)
{
    struct dup_pair *p = ud;
    if (p->calls < 2) {
        p->status[p->calls] = status;
        p->seq[p->calls] = ack ? ack->seq : 0;
        p->dup[p->calls] = ack ? ack->duplicate : -1;
    }
    p->calls++;
}

static void test_publish_duplicate_id_in_one_pipeline_stored_once(void **state)
{
    struct it_fx *fx = *state;
    struct dup_pair p;
    memset(&p, 0, sizeof p);
    ferry_msg a = msg_of("pipe", "same", "first");
    ferry_msg b = msg_of("pipe", "same", "second");
    assert_int_equal(ferry_publish_async(fx->c, &a, on_dup_ack, &p), 0);
    assert_int_equal(ferry_publish_async(fx->c, &b, on_dup_ack, &p), 0);
    assert_int_equal(ferry_flush(fx->c, 30000), 0);
    assert_int_equal(p.calls, 2);
    assert_int_equal(p.status[0], 0);
    assert_int_equal(p.status[1], 0);
    assert_int_equal(p.seq[0], 1);
    assert_int_equal(p.dup[0], 0);
    assert_int_equal(p.seq[1], 1);
    assert_int_equal(p.dup[1], 1);
    pub_expect(fx->c, "pipe", "next", 2, 0);
}

static void test_publish_duplicate_id_across_batches_connections_restart(void **state)
{
    struct it_fx *fx = *state;
    ferry_msg b1[2] = {msg_of("idem", "A", "a"), msg_of("idem", "B", "b")};
    ferry_msg b2[2] = {msg_of("idem", "B", "b-again"), msg_of("idem", "C", "c")};
    ferry_ack acks[2];
    assert_int_equal(ferry_publish_batch(fx->c, b1, 2, acks), 0);
    assert_int_equal(acks[0].seq, 1);
    assert_int_equal(acks[1].seq, 2);
    assert_int_equal(ferry_publish_batch(fx->c, b2, 2, acks), 0);
    assert_int_equal(acks[0].seq, 2);
    assert_int_equal(acks[0].duplicate, 1);
    assert_string_equal(acks[0].id, "B");
    assert_int_equal(acks[1].seq, 3);
    assert_int_equal(acks[1].duplicate, 0);

    /* A single publish of an id first seen in a batch. */
    pub_expect(fx->c, "idem", "A", 1, 1);

    /* Another connection sees the same ids. */
    ferry_conn *c2 = it_connect(fx->b.addr);
    pub_expect(c2, "idem", "A", 1, 1);
    pub_expect(c2, "idem", "C", 3, 1);
    pub_expect(c2, "idem", "D", 4, 0);
    ferry_close(c2);

    /* A clean restart keeps the dedupe records. */
    stop_clean(fx);
    restart(fx);
    pub_expect(fx->c, "idem", "A", 1, 1);
    pub_expect(fx->c, "idem", "B", 2, 1);
    pub_expect(fx->c, "idem", "D", 4, 1);
    pub_expect(fx->c, "idem", "E", 5, 0);

    /* And so does a crash. */
    ferry_close(fx->c);
    fx->c = NULL;
    assert_int_equal(harness_kill9(&fx->b), 0);
    restart(fx);
    pub_expect(fx->c, "idem", "C", 3, 1);
    pub_expect(fx->c, "idem", "E", 5, 1);
    pub_expect(fx->c, "idem", "F", 6, 0);

    stop_clean(fx);
    struct harness_row *rows;
    long n = harness_db_rows(&fx->b, "idem", &rows);
    static const char *const want[] = {"A", "B", "C", "D", "E", "F"};
    assert_int_equal(n, 6);
    for (long i = 0; i < n; i++) {
        assert_int_equal(rows[i].seq, (uint64_t)i + 1);
        assert_string_equal(rows[i].msg_id, want[i]);
    }
    /* B's payload is the first one's, not the duplicate's. */
    assert_int_equal(rows[1].payload_len, 1);
    assert_memory_equal(rows[1].payload, "b", 1);
    harness_db_rows_free(rows, n);
}

static void test_publish_same_id_in_two_topics_two_messages(void **state)
{
    struct it_fx *fx = *state;
    pub_expect(fx->c, "first", "X", 1, 0);
    pub_expect(fx->c, "second", "X", 1, 0);
    pub_expect(fx->c, "second", "X", 1, 1);
    pub_expect(fx->c, "first", "X", 1, 1);
    pub_expect(fx->c, "first", "Y", 2, 0);
    ferry_topic_info ti;
    assert_int_equal(it_topic(fx->c, "first", &ti), 1);
    assert_int_equal(ti.message_count, 2);
    assert_int_equal(it_topic(fx->c, "second", &ti), 1);
    assert_int_equal(ti.message_count, 1);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_publish_broker_assigned_ids_unique(void **state)
{
    struct it_fx *fx = *state;
    enum { N = 200 };
    char *ids[N];
    ferry_msg msgs[N / 2];
    ferry_ack acks[N / 2];
    for (int i = 0; i < N / 2; i++)
        msgs[i] = msg_of("anon", NULL, "no id");
    assert_int_equal(ferry_publish_batch(fx->c, msgs, N / 2, acks), 0);
    for (int i = 0; i < N / 2; i++) {
        assert_int_equal(acks[i].seq, (uint64_t)i + 1);
        assert_int_equal(acks[i].duplicate, 0);
        ids[i] = strdup(acks[i].id);
    }
    for (int i = N / 2; i < N; i++) {
        ferry_ack ack;
        ferry_msg m = msg_of("anon", NULL, "no id");
        assert_int_equal(ferry_publish(fx->c, &m, &ack), 0);
        assert_int_equal(ack.seq, (uint64_t)i + 1);
        assert_int_equal(ack.duplicate, 0);
        ids[i] = strdup(ack.id);
    }
    for (int i = 0; i < N; i++) {
        assert_non_null(ids[i]);
        assert_int_equal(strlen(ids[i]), 36);
        assert_int_equal(proto_id_valid((const uint8_t *)ids[i], 36), 0);
    }

    /* The store holds exactly the ids the acks named. */
    stop_clean(fx);
    struct harness_row *rows;
    long n = harness_db_rows(&fx->b, "anon", &rows);
    assert_int_equal(n, N);
    for (long i = 0; i < n; i++)
        assert_string_equal(rows[i].msg_id, ids[i]);
    harness_db_rows_free(rows, n);

    qsort(ids, N, sizeof ids[0], cmp_str);
    for (int i = 1; i < N; i++)
        assert_string_not_equal(ids[i - 1], ids[i]);
    for (int i = 0; i < N; i++)
        free(ids[i]);
}

/* ----- validation ------------------------------------------------------- */

static void test_publish_invalid_topic_rejected_connection_usable(void **state)
{
    struct it_fx *fx = *state;
    char too_long[PROTO_MAX_TOPIC + 2];
    memset(too_long, 'a', sizeof too_long - 1);
    too_long[sizeof too_long - 1] = '\0';
    const char *bad[] = {"bad topic", "",        "_reserved", "-dash-first",
                         "slash/no",  "nul\x01", too_long};
    uint64_t seq = 0;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ferry_msg m = msg_of(bad[i], NULL, "x");
        ferry_ack ack;
        int r = ferry_publish(fx->c, &m, &ack);
        if (r != FERRY_EINVALID_TOPIC)
            print_error("topic \"%s\": got %d (%s)\n", bad[i], r, ferry_strerror(r));
        assert_int_equal(r, FERRY_EINVALID_TOPIC);
        pub_expect(fx->c, "ok", NULL, ++seq, 0);
    }
    /* 195 bytes is one too many: "_dead." + the name must fit (issue 20). */
    too_long[PROTO_MAX_PUBLISH_TOPIC + 1] = '\0';
    ferry_msg lm = msg_of(too_long, NULL, "x");
    ferry_ack lack;
    assert_int_equal(ferry_publish(fx->c, &lm, &lack), FERRY_EINVALID_TOPIC);
    /* The longest legal name and the whole alphabet are accepted. */
    too_long[PROTO_MAX_PUBLISH_TOPIC] = '\0';
    pub_expect(fx->c, too_long, NULL, 1, 0);
    pub_expect(fx->c, "Az09._-", NULL, 1, 0);
    /* Invalid ids are refused the same way. */
    char long_id[PROTO_MAX_ID + 2];
    memset(long_id, 'i', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = '\0';
    const char *bad_ids[] = {"has space", "tab\there", long_id};
    for (size_t i = 0; i < sizeof bad_ids / sizeof bad_ids[0]; i++) {
        ferry_msg m = msg_of("ok", bad_ids[i], "x");
        ferry_ack ack;
        assert_int_equal(ferry_publish(fx->c, &m, &ack), FERRY_EINVALID_ID);
        pub_expect(fx->c, "ok", NULL, ++seq, 0);
    }
    long_id[PROTO_MAX_ID] = '\0';
    pub_expect(fx->c, "ok", long_id, ++seq, 0);
}

/* Sends one raw PUBLISH and expects a non-fatal ERROR with want_code, then
 * a PING answered on the same connection. */
static void raw_expect_nonfatal(const char *addr, const char *topic, const char *id,
                                size_t payload_len, uint16_t want_code)
{
    int fd = harness_connect(addr);
    assert_true(fd >= 0);
    assert_int_equal(harness_handshake(fd, NULL), 0);
    uint8_t *buf = malloc(payload_len + 4096);
    uint8_t *payload = calloc(1, payload_len + 1);
    assert_non_null(buf);
    assert_non_null(payload);
    size_t n = harness_build_publish(buf, payload_len + 4096, 5, topic, id, payload, payload_len);
    assert_true(n > 0);
    assert_int_equal(harness_send(fd, buf, n), 0);
    uint16_t code = 0;
    uint8_t flags = 0xff;
    uint32_t req = 0;
    assert_int_equal(harness_read_error(fd, 10000, &code, &flags, &req), 1);
    assert_int_equal(code, want_code);
    assert_int_equal(flags & PROTO_ERROR_FATAL, 0);
    assert_int_equal(req, 5);

    struct proto_writer w;
    proto_writer_init(&w, buf, 64);
    assert_int_equal(proto_encode_empty(&w, PROTO_PING, 6), 0);
    assert_int_equal(harness_send(fd, buf, w.len), 0);
    struct proto_frame f;
    assert_int_equal(harness_read_frame(fd, buf, payload_len + 4096, 10000, &f), 1);
    assert_int_equal(f.type, PROTO_PONG);
    assert_int_equal(f.request_id, 6);
    close(fd);
    free(buf);
    free(payload);
}

static void test_publish_raw_invalid_topic_and_id_nonfatal(void **state)
{
    struct it_fx *fx = *state;
    raw_expect_nonfatal(fx->b.addr, "bad topic", NULL, 1, (uint16_t)-FERRY_EINVALID_TOPIC);
    raw_expect_nonfatal(fx->b.addr, "_dead", NULL, 1, (uint16_t)-FERRY_EINVALID_TOPIC);
    raw_expect_nonfatal(fx->b.addr, "fine", "bad id", 1, (uint16_t)-FERRY_EINVALID_ID);
    ferry_topic_info ti;
    assert_int_equal(it_topic(fx->c, "fine", &ti), 0);
    pub_expect(fx->c, "fine", NULL, 1, 0);
}

static void test_publish_oversized_message_rejected_connection_usable(void **state)
{
    struct it_fx *fx = *state;
    ferry_server_info si;
    memset(&si, 0, sizeof si);
    ferry_server_info_get(fx->c, &si);
    assert_int_equal(si.version, PROTO_VERSION);
    assert_int_equal(si.max_message_bytes, 1000);
    assert_true(si.max_frame_bytes >= 1000);

    static uint8_t big[1001];
    ferry_msg m;
    memset(&m, 0, sizeof m);
    m.topic = "sized";
    m.payload = big;
    ferry_ack ack;

    m.payload_len = 1000; /* exactly the limit */
    assert_int_equal(ferry_publish(fx->c, &m, &ack), 0);
    assert_int_equal(ack.seq, 1);

    m.payload_len = 1001;
    assert_int_equal(ferry_publish(fx->c, &m, &ack), FERRY_EMESSAGE_TOO_LARGE);

    /* The key and headers count too: 10 + 991 = 1001. */
    m.payload_len = 991;
    m.key = "0123456789";
    m.key_len = 10;
    assert_int_equal(ferry_publish(fx->c, &m, &ack), FERRY_EMESSAGE_TOO_LARGE);
    ferry_header h = {.name = "h", .value = "v", .value_len = 1};
    m.key_len = 8; /* 8 + (1 + 1) + 991 = 1001 */
    m.headers = &h;
    m.header_count = 1;
    assert_int_equal(ferry_publish(fx->c, &m, &ack), FERRY_EMESSAGE_TOO_LARGE);
    m.key_len = 7; /* 1000 */
    assert_int_equal(ferry_publish(fx->c, &m, &ack), 0);
    assert_int_equal(ack.seq, 2);

    pub_expect(fx->c, "sized", NULL, 3, 0);

    /* The broker enforces it on its own, not only the client. */
    raw_expect_nonfatal(fx->b.addr, "sized", NULL, 1001, (uint16_t)-FERRY_EMESSAGE_TOO_LARGE);
    pub_expect(fx->c, "sized", NULL, 4, 0);
    ferry_topic_info ti;
    assert_int_equal(it_topic(fx->c, "sized", &ti), 1);
    assert_int_equal(ti.message_count, 4);
    assert_int_equal(ti.bytes, 1000 + 1000 + 1 + 1);
}

static void test_publish_headers_and_key_round_trip(void **state)
{
    struct it_fx *fx = *state;
    static const uint8_t bin[3] = {0x00, 0x01, 0xff};
    ferry_header hs[2] = {{.name = "content-type", .value = "text/plain", .value_len = 10},
                          {.name = "bin", .value = bin, .value_len = 3}};
    ferry_msg m;
    memset(&m, 0, sizeof m);
    m.topic = "hk";
    m.id = "with-key";
    m.key = "k\0y";
    m.key_len = 3;
    m.headers = hs;
    m.header_count = 2;
    m.payload = "body";
    m.payload_len = 4;
    m.deliver_at_ms = 4102444800000; /* 2100-01-01: stored, honoured by delivery later */
    ferry_ack ack;
    assert_int_equal(ferry_publish(fx->c, &m, &ack), 0);
    assert_int_equal(ack.seq, 1);
    pub_expect(fx->c, "hk", "no-key", 2, 0);

    /* bytes = key + header names and values + payloads. */
    ferry_topic_info ti;
    assert_int_equal(it_topic(fx->c, "hk", &ti), 1);
    assert_int_equal(ti.bytes, 3 + (12 + 10) + (3 + 3) + 4 + 1);

    stop_clean(fx);
    struct harness_row *rows;
    long n = harness_db_rows(&fx->b, "hk", &rows);
    assert_int_equal(n, 2);
    assert_int_equal(rows[0].key_len, 3);
    assert_memory_equal(rows[0].key, "k\0y", 3);
    assert_int_equal(rows[0].payload_len, 4);
    assert_memory_equal(rows[0].payload, "body", 4);
    assert_int_equal(rows[1].key_len, 0);
    /* Headers as the store documents them: u16 count, then str16 pairs. */
    static const uint8_t want_headers[] = {
        0, 2,                                                                 /* count */
        0, 12, 'c',  'o',  'n',  't', 'e', 'n', 't', '-', 't', 'y', 'p', 'e', /* name */
        0, 10, 't',  'e',  'x',  't', '/', 'p', 'l', 'a', 'i', 'n',           /* value */
        0, 3,  'b',  'i',  'n',                                               /* name */
        0, 3,  0x00, 0x01, 0xff,                                              /* value */
    };
    assert_int_equal(rows[0].headers_len, sizeof want_headers);
    assert_memory_equal(rows[0].headers, want_headers, sizeof want_headers);
    assert_null(rows[1].headers);
    assert_int_equal(rows[0].deliver_at_ms, 4102444800000);
    assert_int_equal(rows[1].deliver_at_ms, 0);
    harness_db_rows_free(rows, n);
}

/*
 * ferry.h "The ABI": an option struct is read up to its size. Programs
 * built against another ferry.h are played here by structs of another
 * size: the first layout (no field beyond it), a newer one with an extra
 * field at 0 (accepted) and not at 0 (refused, FERRY_EUNSUPPORTED), and
 * size left 0 (FERRY_EINVALID, saying so).
 */
static void test_publish_option_structs_grow_by_size(void **state)
{
    struct it_fx *fx = *state;
    char err[256] = "";
    ferry_conn *c = NULL;

    ferry_options zero = {0};
    assert_int_equal(ferry_connect(fx->b.addr, &zero, &c, err, sizeof err), FERRY_EINVALID);
    assert_null(c);
    assert_non_null(strstr(err, "ferry_options.size is 0"));

    ferry_options first = FERRY_OPTIONS_INIT;
    first.size = offsetof(ferry_options, producer_id) + sizeof(first.producer_id);
    assert_int_equal(ferry_connect(fx->b.addr, &first, &c, err, sizeof err), 0);
    ferry_close(c);

    struct {
        ferry_options o;
        uint64_t newer;
    } big = {.o = FERRY_OPTIONS_INIT};
    big.o.size = sizeof big;
    assert_int_equal(ferry_connect(fx->b.addr, &big.o, &c, err, sizeof err), 0);
    ferry_close(c);
    big.newer = 1;
    c = NULL;
    assert_int_equal(ferry_connect(fx->b.addr, &big.o, &c, err, sizeof err), FERRY_EUNSUPPORTED);
    assert_null(c);
    assert_non_null(strstr(err, "does not know"));

    ferry_sub *sub = NULL;
    ferry_sub_options so = {0};
    assert_int_equal(ferry_subscribe(fx->c, "opts", "g", &so, &sub), FERRY_EINVALID);
    assert_non_null(strstr(ferry_errmsg(fx->c), "ferry_sub_options.size is 0"));
    struct {
        ferry_sub_options o;
        uint32_t newer[2];
    } bigs = {.o = FERRY_SUB_OPTIONS_INIT, .newer = {0, 7}};
    bigs.o.size = sizeof bigs;
    assert_int_equal(ferry_subscribe(fx->c, "opts", "g", &bigs.o, &sub), FERRY_EUNSUPPORTED);
    bigs.newer[1] = 0;
    assert_int_equal(ferry_subscribe(fx->c, "opts", "g", &bigs.o, &sub), 0);
    assert_int_equal(ferry_unsubscribe(sub), 0);

    ferry_relay *r = NULL;
    ferry_relay_options ro = {.db_path = "/nonexistent/app.db"};
    assert_int_equal(ferry_relay_new(&ro, &r, err, sizeof err), FERRY_EINVALID);
    assert_non_null(strstr(err, "ferry_relay_options.size is 0"));
    ro.size = sizeof ro;
    assert_int_equal(ferry_relay_new(&ro, &r, err, sizeof err), 0);
    ferry_relay_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_publish_10000_pipelined_all_present_after_restart,
                                        setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_publish_sync_single_acked_and_listed, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_publish_option_structs_grow_by_size, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_publish_empty_payload_stored, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_publish_batch_consecutive_while_racing, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_publish_batch_with_invalid_topic_stores_nothing, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_publish_raw_batch_with_invalid_topic_rejected_whole,
                                        setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_publish_batch_across_300_topics_listed, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_publish_max_batch_consecutive, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_publish_default_max_message_round_trip, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_publish_dedupe_window_expires, setup_short_dedupe,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_publish_dedupe_max_ids_forgets_oldest, setup_few_ids,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_publish_raw_pipeline_error_in_middle_isolated, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_publish_50_connections_concurrently_dense, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_publish_duplicate_id_within_batch_stored_once, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_publish_duplicate_id_in_one_pipeline_stored_once,
                                        setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(
            test_publish_duplicate_id_across_batches_connections_restart, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_publish_same_id_in_two_topics_two_messages, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_publish_broker_assigned_ids_unique, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_publish_invalid_topic_rejected_connection_usable,
                                        setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_publish_raw_invalid_topic_and_id_nonfatal, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_publish_oversized_message_rejected_connection_usable,
                                        setup_small, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_publish_headers_and_key_round_trip, setup,
                                        it_fx_teardown),
    };
    /* IT_FILTER=pattern runs only the matching tests (cmocka's wildcards). */
    if (getenv("IT_FILTER"))
        cmocka_set_test_filter(getenv("IT_FILTER"));
    return cmocka_run_group_tests_name("publish", tests, NULL, NULL);
}
