/*
 * test_producer.c - the producer high-water mark: a producer's messages at
 * or below its mark are duplicates however long after, across restarts and
 * beyond the message-id dedupe window.
 */
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

static int setup(void **state)
{
    /* A 1 s dedupe window, so that only the mark can recognise old ids. */
    static const char *const args[] = {"--dedupe-window", "1s", "--sync", "normal", NULL};
    return it_fx_start(state, sizeof(struct it_fx), args);
}

static int teardown(void **state)
{
    struct it_fx *fx = *state;
    assert_int_equal(harness_stop(&fx->b), 0);
    harness_cleanup(&fx->b);
    free(fx);
    return 0;
}

static ferry_conn *connect_producer(struct it_fx *fx, const char *producer)
{
    ferry_options o = {.size = sizeof(ferry_options), .producer_id = producer};
    ferry_conn *c;
    char err[256];
    assert_int_equal(ferry_connect(fx->b.addr, &o, &c, err, sizeof(err)), 0);
    return c;
}

static void pub(ferry_conn *c, const char *topic, const char *id, uint64_t pseq, ferry_ack *ack)
{
    ferry_msg m = {
        .topic = topic, .payload = "x", .payload_len = 1, .id = id, .producer_seq = pseq};
    assert_int_equal(ferry_publish(c, &m, ack), 0);
}

static void test_producer_mark_dedupes_across_topics_and_restarts(void **state)
{
    struct it_fx *fx = *state;
    ferry_conn *c = connect_producer(fx, "outbox-a");
    ferry_ack ack;
    pub(c, "orders", "o-1", 1, &ack);
    assert_int_equal(ack.seq, 1);
    assert_int_equal(ack.duplicate, 0);
    pub(c, "emails", "e-2", 2, &ack);
    assert_int_equal(ack.seq, 1);
    pub(c, "orders", "o-3", 3, &ack);
    assert_int_equal(ack.seq, 2);

    /* Within the id window: a duplicate with its original sequence. */
    pub(c, "orders", "o-1", 1, &ack);
    assert_int_equal(ack.duplicate, 1);
    assert_int_equal(ack.seq, 1);
    ferry_close(c);

    /* After a restart and after the id window: still a duplicate (seq 0:
     * the id is forgotten), nothing stored twice. */
    assert_int_equal(harness_stop(&fx->b), 0);
    sleep(2);
    assert_int_equal(harness_restart(&fx->b), 0);
    c = connect_producer(fx, "outbox-a");
    /* Let a commit purge the expired ids. */
    ferry_msg other = {.topic = "misc", .payload = "y", .payload_len = 1};
    assert_int_equal(ferry_publish(c, &other, NULL), 0);
    pub(c, "orders", "o-3", 3, &ack);
    assert_int_equal(ack.duplicate, 1);
    pub(c, "emails", "e-2", 2, &ack);
    assert_int_equal(ack.duplicate, 1);
    pub(c, "orders", "o-4", 4, &ack);
    assert_int_equal(ack.duplicate, 0);
    assert_int_equal(ack.seq, 3);

    /* Another producer has its own mark. */
    ferry_conn *d = connect_producer(fx, "outbox-b");
    pub(d, "orders", "b-1", 1, &ack);
    assert_int_equal(ack.duplicate, 0);
    assert_int_equal(ack.seq, 4);
    ferry_close(d);

    ferry_topic_info ti;
    assert_int_equal(it_topic(c, "orders", &ti), 1);
    assert_int_equal(ti.message_count, 4);
    ferry_close(c);
}

/* A batch mixing what was stored with what was not: the old part is
 * acked as duplicate, the new part stored, in one atomic frame. */
static void test_producer_batch_resumes_after_partial(void **state)
{
    struct it_fx *fx = *state;
    ferry_conn *c = connect_producer(fx, "relay-x");
    ferry_msg m[4];
    char ids[4][8];
    for (int i = 0; i < 4; i++) {
        snprintf(ids[i], sizeof(ids[i]), "r-%d", i + 1);
        m[i] = (ferry_msg){.topic = "t",
                           .payload = "p",
                           .payload_len = 1,
                           .id = ids[i],
                           .producer_seq = (uint64_t)i + 1};
    }
    ferry_ack acks[4];
    assert_int_equal(ferry_publish_batch(c, m, 2, acks), 0);
    assert_int_equal(ferry_publish_batch(c, m, 4, acks), 0);
    assert_int_equal(acks[0].duplicate, 1);
    assert_int_equal(acks[1].duplicate, 1);
    assert_int_equal(acks[2].duplicate, 0);
    assert_int_equal(acks[3].duplicate, 0);
    assert_int_equal(acks[3].seq, 4);
    /* Mixing messages with and without a producer_seq is refused. */
    m[1].producer_seq = 0;
    assert_int_equal(ferry_publish_batch(c, m, 2, acks), FERRY_EINVALID);
    ferry_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_producer_mark_dedupes_across_topics_and_restarts,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_producer_batch_resumes_after_partial, setup, teardown),
    };
    if (getenv("IT_FILTER"))
        cmocka_set_test_filter(getenv("IT_FILTER"));
    return cmocka_run_group_tests_name("producer", tests, NULL, NULL);
}
