/*
 * test_retention.c - retention against the real ferryd: by count, age and
 * bytes; sequences stay dense and are never reused; the table and the
 * database file stay bounded while messages stream through.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "it_util.h"

static int start(void **state, const char *const *args)
{
    return it_fx_start(state, sizeof(struct it_fx), args);
}

static int setup_count(void **state)
{
    static const char *const args[] = {"--retention-max-count", "1000", "--sync", "normal", NULL};
    return start(state, args);
}

static int setup_age(void **state)
{
    static const char *const args[] = {"--retention-max-age", "1s", NULL};
    return start(state, args);
}

static int setup_bytes(void **state)
{
    static const char *const args[] = {"--retention-max-bytes", "10000", NULL};
    return start(state, args);
}

static int teardown(void **state)
{
    struct it_fx *fx = *state;
    assert_int_equal(harness_stop(&fx->b), 0);
    harness_cleanup(&fx->b);
    free(fx);
    return 0;
}

/* Publishes n messages of size bytes to topic, pipelined, broker-assigned
 * ids (so the dedupe log does not grow). */
static void publish_n(ferry_conn *c, const char *topic, size_t n, size_t size)
{
    uint8_t *payload = malloc(size ? size : 1);
    assert_non_null(payload);
    for (size_t i = 0; i < n; i++) {
        it_payload(i, payload, size);
        ferry_msg m = {.topic = topic, .payload = payload, .payload_len = size};
        assert_int_equal(ferry_publish_async(c, &m, NULL, NULL), 0);
    }
    assert_int_equal(ferry_flush(c, 60000), 0);
    free(payload);
}

static off_t db_bytes(const struct it_fx *fx)
{
    char path[HARNESS_PATH_BYTES + 16];
    struct stat st;
    snprintf(path, sizeof(path), "%s/ferry.db", fx->b.data_dir);
    assert_int_equal(stat(path, &st), 0);
    return st.st_size;
}

/* 300,000 messages through a topic that keeps 1,000: the topic holds the
 * newest 1,000, sequences keep counting, and the database file stops
 * growing once freed pages are being reused. */
static void test_retention_count_keeps_table_and_file_bounded(void **state)
{
    struct it_fx *fx = *state;
    ferry_conn *c = it_connect_opts(fx->b.addr, 60000, 2000);
    publish_n(c, "stream", 100000, 100);
    off_t after_100k = db_bytes(fx);
    publish_n(c, "stream", 200000, 100);
    off_t after_300k = db_bytes(fx);

    ferry_topic_info ti;
    assert_int_equal(it_topic(c, "stream", &ti), 1);
    assert_int_equal(ti.head_seq, 300000);
    /* Retention runs in steps inside the commits: within one step of it. */
    assert_true(ti.message_count >= 1000 && ti.message_count <= 1000 + 4000);
    assert_int_equal(ti.first_seq, ti.head_seq - ti.message_count + 1);
    /* Three times the traffic, the same file (give or take the WAL's
     * checkpoint timing). */
    assert_true(after_300k <= after_100k + after_100k / 2);

    ferry_msg m = {.topic = "stream", .payload = "x", .payload_len = 1};
    ferry_ack ack;
    assert_int_equal(ferry_publish(c, &m, &ack), 0);
    assert_int_equal(ack.seq, 300001);
    ferry_close(c);
}

/* Messages older than the age limit go even while nobody publishes, and
 * the next message still gets the next sequence. */
static void test_retention_age_deletes_idle_topic(void **state)
{
    struct it_fx *fx = *state;
    ferry_conn *c = it_connect(fx->b.addr);
    publish_n(c, "old", 100, 10);
    ferry_topic_info ti;
    assert_int_equal(it_topic(c, "old", &ti), 1);
    assert_int_equal(ti.message_count, 100);
    /* Age 1 s; the broker's maintenance pass runs every second. */
    for (int i = 0; i < 50; i++) {
        usleep(100 * 1000);
        assert_int_equal(it_topic(c, "old", &ti), 1);
        if (ti.message_count == 0)
            break;
    }
    assert_int_equal(ti.message_count, 0);
    assert_int_equal(ti.bytes, 0);
    assert_int_equal(ti.head_seq, 100);
    ferry_msg m = {.topic = "old", .payload = "y", .payload_len = 1};
    ferry_ack ack;
    assert_int_equal(ferry_publish(c, &m, &ack), 0);
    assert_int_equal(ack.seq, 101);
    assert_int_equal(it_topic(c, "old", &ti), 1);
    assert_int_equal(ti.message_count, 1);
    assert_int_equal(ti.first_seq, 101);
    ferry_close(c);
}

/* The byte limit keeps the newest messages that fit. */
static void test_retention_bytes_limit(void **state)
{
    struct it_fx *fx = *state;
    ferry_conn *c = it_connect(fx->b.addr);
    publish_n(c, "big", 500, 100);
    ferry_topic_info ti;
    assert_int_equal(it_topic(c, "big", &ti), 1);
    assert_true(ti.bytes <= 10000);
    assert_int_equal(ti.message_count, 100);
    assert_int_equal(ti.first_seq, 401);
    assert_int_equal(ti.head_seq, 500);

    /* The counters are right after a restart too. */
    ferry_close(c);
    assert_int_equal(harness_stop(&fx->b), 0);
    assert_int_equal(harness_restart(&fx->b), 0);
    c = it_connect(fx->b.addr);
    assert_int_equal(it_topic(c, "big", &ti), 1);
    assert_int_equal(ti.message_count, 100);
    assert_int_equal(ti.bytes, 10000);
    assert_int_equal(ti.first_seq, 401);
    ferry_close(c);
}

/* A seek (or a new group's start) before the oldest message kept takes
 * that message: nothing before it can be delivered, and the group's lag
 * counts only what is there. Past head + 1 stays refused. */
static void test_retention_seek_before_first_kept_is_clamped(void **state)
{
    struct it_fx *fx = *state;
    ferry_conn *c = it_connect(fx->b.addr);
    publish_n(c, "short", 1500, 64);
    ferry_topic_info ti;
    for (int i = 0; i < 200; i++) {
        assert_true(it_topic(c, "short", &ti));
        if (ti.first_seq == 501)
            break;
        it_sleep_ms(50);
    }
    assert_int_equal(ti.first_seq, 501);
    uint64_t cursor = 0;
    assert_int_equal(ferry_seek(c, "short", "late", FERRY_START_SEQ, 3, &cursor), 0);
    assert_int_equal(cursor, 501);
    assert_int_equal(ferry_seek(c, "short", "late", FERRY_START_EARLIEST, 0, &cursor), 0);
    assert_int_equal(cursor, 501);
    assert_int_equal(ferry_seek(c, "short", "late", FERRY_START_SEQ, 900, &cursor), 0);
    assert_int_equal(cursor, 900);
    assert_int_equal(ferry_seek(c, "short", "late", FERRY_START_SEQ, 1501, &cursor), 0);
    assert_int_equal(cursor, 1501);
    assert_int_equal(ferry_seek(c, "short", "late", FERRY_START_SEQ, 1502, &cursor),
                     FERRY_EINVALID);
    assert_int_equal(ferry_seek(c, "short", "late", FERRY_START_SEQ, 2, &cursor), 0);
    ferry_group_info *gs = NULL;
    size_t n = 0;
    assert_int_equal(ferry_groups(c, "short", &gs, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(gs[0].cursor, 501);
    assert_int_equal(gs[0].lag, 1000);
    ferry_groups_free(gs);
    ferry_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_retention_count_keeps_table_and_file_bounded,
                                        setup_count, teardown),
        cmocka_unit_test_setup_teardown(test_retention_age_deletes_idle_topic, setup_age, teardown),
        cmocka_unit_test_setup_teardown(test_retention_bytes_limit, setup_bytes, teardown),
        cmocka_unit_test_setup_teardown(test_retention_seek_before_first_kept_is_clamped,
                                        setup_count, teardown),
    };
    if (getenv("IT_FILTER"))
        cmocka_set_test_filter(getenv("IT_FILTER"));
    return cmocka_run_group_tests_name("retention", tests, NULL, NULL);
}
