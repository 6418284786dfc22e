/*
 * test_backoff.c - a group's redelivery backoff schedule: a message whose
 * lease ran out waits the schedule's delay before it is delivered again,
 * the schedule survives a restart, and the broker-wide schedule applies to
 * groups without their own.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "harness.h"
#include "it_util.h"

static int setup(void **state)
{
    /* The broker's default: 100 ms (groups with their own schedule ignore it). */
    static const char *const args[] = {"--redelivery-backoff", "100ms", "--sync", "normal", NULL};
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

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Receives the next delivery and returns how long it took. */
static int64_t wait_delivery(ferry_conn *c, uint32_t attempt)
{
    int64_t t0 = now_ms();
    ferry_delivery *d = NULL;
    assert_int_equal(ferry_receive(c, 10000, &d), 0);
    assert_int_equal(d->attempt, attempt);
    ferry_delivery_free(d);
    return now_ms() - t0;
}

static void test_backoff_group_schedule_delays_redelivery(void **state)
{
    struct it_fx *fx = *state;
    ferry_conn *c = it_connect(fx->b.addr);
    ferry_msg m = {.topic = "jobs", .payload = "x", .payload_len = 1};
    assert_int_equal(ferry_publish(c, &m, NULL), 0);
    ferry_sub_options o = {.size = sizeof(ferry_sub_options),
                           .start = FERRY_START_EARLIEST,
                           .max_in_flight = 10,
                           .ack_wait_ms = 200,
                           .max_deliveries = 10,
                           .backoff_count = 2,
                           .backoff_ms = {600, 1200}};
    ferry_sub *s;
    assert_int_equal(ferry_subscribe(c, "jobs", "slow", &o, &s), 0);
    /* The broker's horizon: 10 attempts x (lease + the longest wait, here
     * the 24-hour cap on nack delays). */
    ferry_sub_info info;
    assert_int_equal(ferry_sub_info_get(s, &info), 0);
    assert_int_equal(info.redelivery_horizon_ms, 10ull * (200 + 24ull * 3600 * 1000));
    wait_delivery(c, 1);
    /* Lease 200 ms, then the first backoff value. */
    int64_t t = wait_delivery(c, 2);
    assert_true(t >= 750);
    t = wait_delivery(c, 3);
    assert_true(t >= 1350);
    ferry_close(c);
    /* The broker has seen the disconnect (the third attempt's failure)
     * before it is stopped: one it saw only while stopping would not count. */
    c = it_connect(fx->b.addr);
    int64_t deadline = now_ms() + 10000;
    for (;;) {
        ferry_group_info *g = NULL;
        size_t n = 0;
        assert_int_equal(ferry_groups(c, "jobs", &g, &n), 0);
        int gone = n == 1 && g[0].consumers == 0;
        ferry_groups_free(g);
        if (gone || now_ms() > deadline)
            break;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    /* And a publish after it: its ack follows the commit holding it. */
    ferry_msg other = {.topic = "elsewhere", .payload = "x", .payload_len = 1};
    assert_int_equal(ferry_publish(c, &other, NULL), 0);
    ferry_close(c);

    /* After a restart the group keeps its schedule: the last value repeats. */
    assert_int_equal(harness_stop(&fx->b), 0);
    assert_int_equal(harness_restart(&fx->b), 0);
    c = it_connect(fx->b.addr);
    ferry_sub_options plain = {
        .size = sizeof(ferry_sub_options), .max_in_flight = 10, .ack_wait_ms = 200};
    assert_int_equal(ferry_subscribe(c, "jobs", "slow", &plain, &s), 0);
    /* Attempts count on after a restart: three failed (two leases, the
     * disconnect), so this is the fourth, and the fifth waits for the
     * last value of the schedule. */
    wait_delivery(c, 4);
    t = wait_delivery(c, 5);
    assert_true(t >= 1350);
    ferry_close(c);
}

static void test_backoff_broker_default_applies_without_schedule(void **state)
{
    struct it_fx *fx = *state;
    ferry_conn *c = it_connect(fx->b.addr);
    ferry_msg m = {.topic = "quick", .payload = "x", .payload_len = 1};
    assert_int_equal(ferry_publish(c, &m, NULL), 0);
    ferry_sub_options o = {
        .size = sizeof(ferry_sub_options), .max_in_flight = 10, .ack_wait_ms = 200};
    ferry_sub *s;
    assert_int_equal(ferry_subscribe(c, "quick", "g", &o, &s), 0);
    wait_delivery(c, 1);
    int64_t t = wait_delivery(c, 2);
    assert_true(t >= 280); /* 200 ms lease + 100 ms default backoff */
    assert_true(t < 5000);
    ferry_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_backoff_group_schedule_delays_redelivery, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_backoff_broker_default_applies_without_schedule, setup,
                                        teardown),
    };
    if (getenv("IT_FILTER"))
        cmocka_set_test_filter(getenv("IT_FILTER"));
    return cmocka_run_group_tests_name("backoff", tests, NULL, NULL);
}
