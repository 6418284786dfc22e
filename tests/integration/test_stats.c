/*
 * test_stats.c - `ferry stats`: the rates it computes from two samples, the
 * exact counters it passes on, --topic, the table and its errors.
 *
 * Timing is never asserted tightly: a rate is checked to be above zero and
 * below an absurd bound; the counters of a group nobody consumes are exact.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "it_util.h"

#define CLI_TIMEOUT_MS 30000
#define MAX_ARGV 32
#define WAIT_MS 5000

static int setup(void **state)
{
    if (!getenv("FERRY_CLI")) {
        fprintf(stderr, "setup: the environment variable FERRY_CLI is not set\n");
        return -1;
    }
    return it_fx_start(state, sizeof(struct it_fx), NULL);
}

struct run {
    struct it_fx *fx;
    char *argv[MAX_ARGV];
    struct harness_output out;
    int rc;
};

/* Fills r->argv with `ferry --server ADDR ARGS...` (NULL-terminated). */
static void run_args(struct run *r, struct it_fx *fx, va_list ap)
{
    int argc = 0;
    r->fx = fx;
    r->argv[argc++] = getenv("FERRY_CLI");
    r->argv[argc++] = "--server";
    r->argv[argc++] = fx->b.addr;
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) {
        assert_true(argc < MAX_ARGV - 1);
        r->argv[argc++] = (char *)a;
    }
    r->argv[argc] = NULL;
}

static void *run_thread(void *arg)
{
    struct run *r = arg;
    r->rc = harness_run(r->fx->b.dir, r->argv, NULL, CLI_TIMEOUT_MS, &r->out);
    return NULL;
}

/* Runs the CLI to its end; out must be freed. */
static void cli_run(struct it_fx *fx, struct harness_output *out, ...)
{
    struct run r;
    va_list ap;
    va_start(ap, out);
    run_args(&r, fx, ap);
    va_end(ap);
    assert_int_equal(harness_run(fx->b.dir, r.argv, NULL, CLI_TIMEOUT_MS, out), 0);
}

/* Runs a command that must succeed; returns its stdout (free it). */
static char *cli_ok(struct it_fx *fx, ...)
{
    struct run r;
    va_list ap;
    va_start(ap, fx);
    run_args(&r, fx, ap);
    va_end(ap);
    assert_int_equal(harness_run(fx->b.dir, r.argv, NULL, CLI_TIMEOUT_MS, &r.out), 0);
    if (r.out.status != 0)
        print_error("ferry %s ...: exit %d\n stdout: %s\n stderr: %s\n", r.argv[3], r.out.status,
                    r.out.out, r.out.err);
    assert_int_equal(r.out.status, 0);
    char *s = r.out.out;
    r.out.out = NULL;
    harness_output_free(&r.out);
    return s;
}

/* The number after "key": in the object of s that holds anchor (the first
 * one), which must be there. */
static double number_in(const char *s, const char *anchor, const char *key)
{
    const char *a = strstr(s, anchor);
    if (!a)
        print_error("no %s in %s\n", anchor, s);
    assert_non_null(a);
    const char *start = a;
    while (start > s && *start != '{')
        start--;
    const char *end = strchr(a, '}');
    assert_non_null(end);
    char k[64];
    snprintf(k, sizeof k, "\"%s\":", key);
    const char *v = strstr(start, k);
    if (!v || v > end)
        print_error("no %s in the object of %s in %s\n", k, anchor, s);
    assert_true(v && v < end);
    char *stop;
    double d = strtod(v + strlen(k), &stop);
    assert_true(stop != v + strlen(k)); /* a number, not null */
    return d;
}

static void publish(ferry_conn *c, const char *topic, const char *payload)
{
    ferry_msg m;
    memset(&m, 0, sizeof m);
    m.topic = topic;
    m.payload = payload;
    m.payload_len = strlen(payload);
    ferry_ack ack;
    assert_int_equal(ferry_publish(c, &m, &ack), 0);
}

/* While `stats --once --json --interval 1000` samples, 200 messages are
 * published over about 1.6 s and a consumer acks each: the topic's rate_in
 * and the consumer's ack_rate are above zero; a group that consumes nothing
 * has ack_rate 0, and afterwards its lag is exactly the 200. */
static void test_stats_rates_while_publishing(void **state)
{
    struct it_fx *fx = *state;
    ferry_conn *pc = it_connect(fx->b.addr);
    ferry_conn *cc = it_connect(fx->b.addr);
    uint64_t cursor;
    ferry_sub_options so = {.size = sizeof(ferry_sub_options), .start = FERRY_START_EARLIEST};
    ferry_sub *s;
    /* The subscription creates the topic; a seek would not (it needs one). */
    assert_int_equal(ferry_subscribe(cc, "paced", "worker", &so, &s), 0);
    assert_int_equal(ferry_seek(pc, "paced", "paused", FERRY_START_EARLIEST, 0, &cursor), 0);

    struct run r;
    memset(&r, 0, sizeof r);
    {
        const char *args[] = {"stats", "--once", "--json", "--interval", "1000", NULL};
        int argc = 0;
        r.fx = fx;
        r.argv[argc++] = getenv("FERRY_CLI");
        r.argv[argc++] = "--server";
        r.argv[argc++] = fx->b.addr;
        for (int i = 0; args[i]; i++)
            r.argv[argc++] = (char *)args[i];
        r.argv[argc] = NULL;
    }
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, run_thread, &r), 0);
    for (int i = 0; i < 200; i++) {
        publish(pc, "paced", "tick");
        ferry_delivery *d;
        assert_int_equal(ferry_receive(cc, WAIT_MS, &d), 0);
        assert_int_equal(ferry_delivery_ack(d), 0);
        ferry_delivery_free(d);
        it_sleep_ms(8);
    }
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(r.rc, 0);
    if (r.out.status != 0)
        print_error("stats: exit %d\n stderr: %s\n", r.out.status, r.out.err);
    assert_int_equal(r.out.status, 0);
    /* One object, one line. */
    assert_true(r.out.out_len > 2 && r.out.out[0] == '{');
    assert_ptr_equal(strchr(r.out.out, '\n'), r.out.out + r.out.out_len - 1);
    assert_non_null(strstr(r.out.out, "{\"topics\":["));
    assert_non_null(strstr(r.out.out, "],\"groups\":["));

    double rate_in = number_in(r.out.out, "\"topic\":\"paced\"", "rate_in");
    assert_true(rate_in > 0 && rate_in < 100000);
    double ack = number_in(r.out.out, "\"group\":\"worker\"", "ack_rate");
    assert_true(ack > 0 && ack < 100000);
    assert_true(number_in(r.out.out, "\"group\":\"paused\"", "ack_rate") == 0);
    /* The keys of `ferry topics --json` and `ferry groups --json` are there. */
    number_in(r.out.out, "\"topic\":\"paced\"", "head_seq");
    number_in(r.out.out, "\"topic\":\"paced\"", "dead_lettered");
    number_in(r.out.out, "\"group\":\"paused\"", "dead_lettered");
    number_in(r.out.out, "\"group\":\"paused\"", "in_flight");
    harness_output_free(&r.out);

    /* Nothing moves now: the counters are exact and the rates zero. */
    char *out = cli_ok(fx, "stats", "--once", "--json", "--interval", "100", NULL);
    assert_true(number_in(out, "\"topic\":\"paced\"", "head_seq") == 200);
    assert_true(number_in(out, "\"topic\":\"paced\"", "messages") == 200);
    assert_true(number_in(out, "\"topic\":\"paced\"", "rate_in") == 0);
    assert_true(number_in(out, "\"group\":\"paused\"", "lag") == 200);
    assert_true(number_in(out, "\"group\":\"paused\"", "in_flight") == 0);
    assert_true(number_in(out, "\"group\":\"paused\"", "consumers") == 0);
    assert_true(number_in(out, "\"group\":\"worker\"", "lag") == 0);
    assert_true(number_in(out, "\"group\":\"worker\"", "consumers") == 1);
    assert_true(number_in(out, "\"group\":\"worker\"", "ack_rate") == 0);
    free(out);
    ferry_close(cc);
    ferry_close(pc);
}

/* --topic shows that topic and its groups only. */
static void test_stats_topic_filter(void **state)
{
    struct it_fx *fx = *state;
    ferry_conn *c = it_connect(fx->b.addr);
    uint64_t cursor;
    for (int i = 0; i < 5; i++)
        publish(c, "alpha", "a");
    for (int i = 0; i < 3; i++)
        publish(c, "beta", "b");
    assert_int_equal(ferry_seek(c, "alpha", "ga", FERRY_START_EARLIEST, 0, &cursor), 0);
    assert_int_equal(ferry_seek(c, "beta", "gb", FERRY_START_EARLIEST, 0, &cursor), 0);
    ferry_close(c);

    char *out =
        cli_ok(fx, "stats", "--once", "--json", "--interval", "100", "--topic", "alpha", NULL);
    assert_true(number_in(out, "\"group\":\"ga\"", "lag") == 5);
    assert_true(number_in(out, "\"topic\":\"alpha\"", "messages") == 5);
    assert_null(strstr(out, "beta"));
    assert_null(strstr(out, "\"gb\""));
    free(out);

    /* Without it, both. */
    out = cli_ok(fx, "stats", "--once", "--json", "--interval", "100", NULL);
    assert_true(number_in(out, "\"group\":\"gb\"", "lag") == 3);
    assert_true(number_in(out, "\"group\":\"ga\"", "lag") == 5);
    free(out);

    /* A topic that is not there: one error line, status 1. */
    struct harness_output o;
    cli_run(fx, &o, "stats", "--once", "--interval", "100", "--topic", "nosuch", NULL);
    assert_int_equal(o.status, 1);
    assert_string_equal(o.out, "");
    assert_string_equal(o.err, "ferry: stats: no such topic: nosuch\n");
    harness_output_free(&o);
}

/* The table: the header lines of both tables, one row each, rates with one
 * decimal. Usage errors exit 2. */
static void test_stats_table(void **state)
{
    struct it_fx *fx = *state;
    ferry_conn *c = it_connect(fx->b.addr);
    uint64_t cursor;
    publish(c, "orders", "x");
    assert_int_equal(ferry_seek(c, "orders", "billing", FERRY_START_EARLIEST, 0, &cursor), 0);
    ferry_close(c);

    char *out = cli_ok(fx, "stats", "--once", "--interval", "100", NULL);
    assert_int_equal(strncmp(out, "TOPIC ", 6), 0);
    assert_non_null(strstr(out, "MESSAGES"));
    assert_non_null(strstr(out, "RATE_IN\n"));
    assert_non_null(strstr(out, "\norders "));
    assert_non_null(strstr(out, "\nTOPIC   GROUP"));
    assert_non_null(strstr(out, "ACK_RATE"));
    assert_non_null(strstr(out, "DEAD\n"));
    assert_non_null(strstr(out, "\norders  billing"));
    assert_non_null(strstr(out, " 0.0 "));
    assert_null(strstr(out, "\033[")); /* not a terminal: no redraw */
    free(out);

    struct harness_output o;
    cli_run(fx, &o, "stats", "--interval", "5", NULL);
    assert_int_equal(o.status, 2);
    harness_output_free(&o);
    cli_run(fx, &o, "stats", "extra", NULL);
    assert_int_equal(o.status, 2);
    harness_output_free(&o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_stats_rates_while_publishing, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_stats_topic_filter, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_stats_table, setup, it_fx_teardown),
    };
    /* IT_FILTER=pattern runs only the matching tests (cmocka's wildcards). */
    if (getenv("IT_FILTER"))
        cmocka_set_test_filter(getenv("IT_FILTER"));
    return cmocka_run_group_tests_name("stats", tests, NULL, NULL);
}
