/*
 * test_delete_cli.c - deleting topics and consumer groups end to end
 * against the real ferryd: libferry's ferry_topic_delete and
 * ferry_group_delete (a live subscription ends with the broker's reason, a
 * re-created name starts at sequence 1, the dead letters go too), `ferry
 * topics delete` and `ferry groups delete` (refusal without --force, text
 * and --json output, unknown names), a `ferry sub` that a deletion ends,
 * and `ferry bench`, which deletes what a run created unless --keep.
 *
 * The CLI is the binary meson built, named by FERRY_CLI; it runs as a
 * child with its output captured (harness_run). The broker runs without
 * tokens, so every connection has the admin right.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "it_util.h"

#define CLI_TIMEOUT_MS 60000
#define MAX_ARGV 32
#define WAIT_MS 10000 /* for the broker to do something it will do */
#define LEASE_MS 200

static int setup(void **state)
{
    if (!getenv("FERRY_CLI")) {
        fprintf(stderr, "setup: the environment variable FERRY_CLI is not set\n");
        return -1;
    }
    return it_fx_setup(state, sizeof(struct it_fx), NULL, "test_delete_cli");
}

/* ----- the CLI ------------------------------------------------------------- */

/* Runs `ferry --server ADDR ARGS...` (a NULL-terminated va_list). */
static void cli_vrun(struct it_fx *fx, struct harness_output *out, va_list ap)
{
    char *argv[MAX_ARGV];
    int argc = 0;
    argv[argc++] = getenv("FERRY_CLI");
    argv[argc++] = "--server";
    argv[argc++] = fx->b.addr;
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) {
        assert_true(argc < MAX_ARGV - 1);
        argv[argc++] = (char *)a;
    }
    argv[argc] = NULL;
    assert_int_equal(harness_run(fx->b.dir, argv, NULL, CLI_TIMEOUT_MS, out), 0);
}

static void cli_run(struct it_fx *fx, struct harness_output *out, ...)
{
    va_list ap;
    va_start(ap, out);
    cli_vrun(fx, out, ap);
    va_end(ap);
}

/* Runs a command that must exit 0 and print exactly want. */
static void cli_expect(struct it_fx *fx, const char *want, ...)
{
    struct harness_output out;
    va_list ap;
    va_start(ap, want);
    cli_vrun(fx, &out, ap);
    va_end(ap);
    if (out.status != 0 || strcmp(out.out, want) != 0)
        print_error("exit %d\n stdout: \"%s\"\n want: \"%s\"\n stderr: %s\n", out.status, out.out,
                    want, out.err);
    assert_int_equal(out.status, 0);
    assert_string_equal(out.out, want);
    harness_output_free(&out);
}

/* Runs a command that must fail: exit 1, nothing on stdout, one line on
 * stderr that begins with prefix and contains has (NULL: anything). */
static void cli_fails(struct it_fx *fx, const char *prefix, const char *has, ...)
{
    struct harness_output out;
    va_list ap;
    va_start(ap, has);
    cli_vrun(fx, &out, ap);
    va_end(ap);
    int ok = out.status == 1 && out.out_len == 0 && out.err_len > 1 &&
             strchr(out.err, '\n') == out.err + out.err_len - 1 &&
             strncmp(out.err, prefix, strlen(prefix)) == 0 && (!has || strstr(out.err, has));
    if (!ok)
        print_error("exit %d, want 1\n stdout: \"%s\"\n stderr: \"%s\"\n want: \"%s...%s...\"\n",
                    out.status, out.out, out.err, prefix, has ? has : "");
    assert_true(ok);
    harness_output_free(&out);
}

/* 1 when `ferry topics` lists topic (its first column). */
static int cli_lists_topic(struct it_fx *fx, const char *cmd, const char *topic)
{
    struct harness_output out;
    cli_run(fx, &out, cmd, NULL);
    assert_int_equal(out.status, 0);
    int found = 0;
    for (char *save = NULL, *l = strtok_r(out.out, "\n", &save); l;
         l = strtok_r(NULL, "\n", &save)) {
        size_t n = strcspn(l, " \t");
        if (n == strlen(topic) && strncmp(l, topic, n) == 0)
            found = 1;
    }
    harness_output_free(&out);
    return found;
}

/* ----- libferry helpers -------------------------------------------------- */

static uint64_t publish(ferry_conn *c, const char *topic, const char *payload)
{
    ferry_msg m;
    memset(&m, 0, sizeof m);
    m.topic = topic;
    m.payload = payload;
    m.payload_len = strlen(payload);
    ferry_ack ack;
    int r = ferry_publish(c, &m, &ack);
    if (r != 0)
        print_error("publish to %s: %s (%s)\n", topic, ferry_strerror(r), ferry_errmsg(c));
    assert_int_equal(r, 0);
    return ack.seq;
}

/* Creates group on topic (joins and leaves: the group stays). */
static void make_group(ferry_conn *c, const char *topic, const char *group)
{
    ferry_sub *s = NULL;
    int r = ferry_subscribe(c, topic, group, NULL, &s);
    if (r != 0)
        print_error("subscribe %s/%s: %s (%s)\n", topic, group, ferry_strerror(r), ferry_errmsg(c));
    assert_int_equal(r, 0);
    assert_int_equal(ferry_unsubscribe(s), 0);
}

/* The number of groups the broker lists for topic (0 for an unknown one),
 * and whether one is named group (when not NULL). */
static size_t groups_of(ferry_conn *c, const char *topic, const char *group, int *has)
{
    ferry_group_info *g = NULL;
    size_t n = 0;
    int r = ferry_groups(c, NULL, &g, &n);
    assert_int_equal(r, 0);
    size_t count = 0;
    if (has)
        *has = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(g[i].topic, topic) != 0)
            continue;
        count++;
        if (group && has && strcmp(g[i].group, group) == 0)
            *has = 1;
    }
    ferry_groups_free(g);
    return count;
}

/* Receives on c until the subscription's end is reported: returns that
 * code; deliveries before it are counted into *before and freed. */
static int receive_until_end(ferry_conn *c, size_t *before)
{
    int64_t deadline = harness_now_ms() + WAIT_MS;
    *before = 0;
    for (;;) {
        ferry_delivery *d = NULL;
        int r = ferry_receive(c, 200, &d);
        if (r == 0) {
            (*before)++;
            ferry_delivery_free(d);
            continue;
        }
        assert_null(d);
        if (r != FERRY_ETIMEOUT)
            return r;
        if (harness_now_ms() > deadline)
            fail_msg("no end of the subscription within %d ms", WAIT_MS);
    }
}

/* ----- libferry ------------------------------------------------------------ */

/* A subscriber on one connection, the deletion from another: the
 * subscriber's ferry_receive returns FERRY_EUNKNOWN_TOPIC once, its
 * requests then fail locally, unsubscribe succeeds; the name starts over
 * at sequence 1. */
static void test_topic_delete_ends_subscription(void **state)
{
    struct it_fx *fx = *state;
    ferry_conn *sc = it_connect(fx->b.addr);
    ferry_sub_options o = FERRY_SUB_OPTIONS_INIT;
    o.start = FERRY_START_EARLIEST;
    ferry_sub *s = NULL;
    assert_int_equal(ferry_subscribe(sc, "doomed", "g", &o, &s), 0);
    assert_int_equal(publish(fx->c, "doomed", "one"), 1);
    assert_int_equal(publish(fx->c, "doomed", "two"), 2);
    ferry_delivery *d = NULL;
    assert_int_equal(ferry_receive(sc, WAIT_MS, &d), 0);
    assert_int_equal(d->seq, 1);

    /* Without FORCE the group protects the topic. */
    ferry_delete_result r = {.size = sizeof r};
    assert_int_equal(ferry_topic_delete(fx->c, "doomed", 0, &r), FERRY_EINVALID);
    ferry_topic_info ti;
    assert_int_equal(it_topic(fx->c, "doomed", &ti), 1);

    int rc = ferry_topic_delete(fx->c, "doomed", FERRY_DELETE_FORCE, &r);
    if (rc != 0)
        print_error("topic delete: %s (%s)\n", ferry_strerror(rc), ferry_errmsg(fx->c));
    assert_int_equal(rc, 0);
    assert_int_equal(r.messages, 2);
    assert_int_equal(r.groups, 1);
    assert_int_equal(it_topic(fx->c, "doomed", &ti), 0);
    assert_int_equal(groups_of(fx->c, "doomed", NULL, NULL), 0);

    size_t before = 0;
    assert_int_equal(receive_until_end(sc, &before), FERRY_EUNKNOWN_TOPIC);
    assert_true(before <= 1); /* seq 2, if it was on its way */
    assert_non_null(strstr(ferry_errmsg(sc), "subscription to doomed/g ended"));
    /* Reported once; the subscription is gone at the broker. */
    ferry_delivery *none = NULL;
    assert_int_equal(ferry_receive(sc, 100, &none), FERRY_ETIMEOUT);
    assert_int_equal(ferry_delivery_ack(d), FERRY_EUNKNOWN_SUBSCRIPTION);
    assert_int_equal(ferry_sub_set_window(s, 10), FERRY_EUNKNOWN_SUBSCRIPTION);
    assert_int_equal(ferry_unsubscribe(s), 0);
    ferry_delivery_free(d);
    uint64_t rtt;
    assert_int_equal(ferry_ping(sc, &rtt), 0); /* the connection lives on */

    /* A new topic of the same name. */
    assert_int_equal(publish(fx->c, "doomed", "again"), 1);
    assert_int_equal(it_topic(fx->c, "doomed", &ti), 1);
    assert_int_equal(ti.message_count, 1);
    ferry_close(sc);
}

/* A callback subscription learns of the end through ferry_receive too. */
static void on_delivery(void *ud, ferry_delivery *d)
{
    (*(int *)ud)++;
    ferry_delivery_free(d);
}

static void test_topic_delete_ends_callback_subscription(void **state)
{
    struct it_fx *fx = *state;
    ferry_conn *sc = it_connect(fx->b.addr);
    ferry_sub *s = NULL;
    assert_int_equal(ferry_subscribe(sc, "cbtopic", "g", NULL, &s), 0);
    int calls = 0;
    assert_int_equal(ferry_sub_set_callback(s, on_delivery, &calls), 0);
    publish(fx->c, "cbtopic", "x");
    int64_t deadline = harness_now_ms() + WAIT_MS;
    while (calls == 0 && harness_now_ms() < deadline)
        ferry_receive(sc, 100, NULL);
    assert_int_equal(calls, 1);
    assert_int_equal(ferry_topic_delete(fx->c, "cbtopic", FERRY_DELETE_FORCE, NULL), 0);
    int rc = FERRY_ETIMEOUT;
    while (rc == FERRY_ETIMEOUT && harness_now_ms() < deadline + WAIT_MS)
        rc = ferry_receive(sc, 100, NULL);
    assert_int_equal(rc, FERRY_EUNKNOWN_TOPIC);
    assert_int_equal(ferry_unsubscribe(s), 0);
    ferry_close(sc);
}

/* The dead letters of a topic go with it. */
static void test_topic_delete_takes_dead_letters(void **state)
{
    struct it_fx *fx = *state;
    publish(fx->c, "withdead", "poison");
    ferry_conn *sc = it_connect(fx->b.addr);
    ferry_sub_options o = FERRY_SUB_OPTIONS_INIT;
    o.start = FERRY_START_EARLIEST;
    o.ack_wait_ms = LEASE_MS;
    o.max_deliveries = 1;
    ferry_sub *s = NULL;
    assert_int_equal(ferry_subscribe(sc, "withdead", "doomed", &o, &s), 0);
    ferry_delivery *d = NULL;
    assert_int_equal(ferry_receive(sc, WAIT_MS, &d), 0);
    ferry_delivery_free(d); /* never acked: dead after the lease */
    ferry_topic_info ti;
    int64_t deadline = harness_now_ms() + WAIT_MS;
    while (!(it_topic(fx->c, "_dead.withdead", &ti) && ti.message_count == 1)) {
        assert_true(harness_now_ms() < deadline);
        it_sleep_ms(50);
    }
    assert_int_equal(ferry_unsubscribe(s), 0);
    ferry_close(sc);

    ferry_delete_result r = {.size = sizeof r};
    assert_int_equal(ferry_topic_delete(fx->c, "withdead", FERRY_DELETE_FORCE, &r), 0);
    assert_int_equal(it_topic(fx->c, "withdead", &ti), 0);
    assert_int_equal(it_topic(fx->c, "_dead.withdead", &ti), 0);
    assert_int_equal(ferry_topic_delete(fx->c, "withdead", 0, NULL), FERRY_EUNKNOWN_TOPIC);
}

/* Deleting one group ends its subscriptions with FERRY_EUNKNOWN_GROUP;
 * the topic and the other group stay. */
static void test_group_delete_ends_subscription(void **state)
{
    struct it_fx *fx = *state;
    publish(fx->c, "keepme", "a");
    make_group(fx->c, "keepme", "other");
    ferry_conn *sc = it_connect(fx->b.addr);
    ferry_sub *s = NULL;
    assert_int_equal(ferry_subscribe(sc, "keepme", "gone", NULL, &s), 0);
    ferry_delete_result r = {.size = sizeof r};
    int rc = ferry_group_delete(fx->c, "keepme", "gone", &r);
    if (rc != 0)
        print_error("group delete: %s (%s)\n", ferry_strerror(rc), ferry_errmsg(fx->c));
    assert_int_equal(rc, 0);
    assert_int_equal(r.groups, 1);
    size_t before = 0;
    assert_int_equal(receive_until_end(sc, &before), FERRY_EUNKNOWN_GROUP);
    assert_non_null(strstr(ferry_errmsg(sc), "subscription to keepme/gone ended"));
    assert_int_equal(ferry_unsubscribe(s), 0);
    ferry_close(sc);
    int has = 0;
    assert_int_equal(groups_of(fx->c, "keepme", "other", &has), 1);
    assert_true(has);
    ferry_topic_info ti;
    assert_int_equal(it_topic(fx->c, "keepme", &ti), 1);
    assert_int_equal(ferry_group_delete(fx->c, "keepme", "gone", NULL), FERRY_EUNKNOWN_GROUP);
    assert_int_equal(ferry_group_delete(fx->c, "nosuchtopic", "g", NULL), FERRY_EUNKNOWN_TOPIC);
}

/* ----- ferry topics delete, ferry groups delete --------------------------- */

static void test_cli_topic_delete(void **state)
{
    struct it_fx *fx = *state;
    for (int i = 0; i < 3; i++)
        publish(fx->c, "orders", "o");
    make_group(fx->c, "orders", "billing");

    /* Refused without --force, with the broker's reason; still there. */
    cli_fails(fx, "ferry: topics delete: invalid argument", NULL, "topics", "delete", "orders",
              NULL);
    assert_true(cli_lists_topic(fx, "topics", "orders"));

    cli_expect(fx, "deleted topic orders (3 messages, 1 consumer group)\n", "topics", "delete",
               "orders", "--force", NULL);
    assert_false(cli_lists_topic(fx, "topics", "orders"));
    assert_false(cli_lists_topic(fx, "groups", "orders"));
    cli_fails(fx, "ferry: topics: no such topic", "orders", "topics", "orders", NULL);

    /* --json, and a topic without groups needs no --force. */
    publish(fx->c, "plain", "p");
    publish(fx->c, "plain", "q");
    cli_expect(fx, "{\"topic\":\"plain\",\"deleted\":true,\"messages\":2,\"groups\":0}\n", "topics",
               "delete", "plain", "--json", NULL);
    assert_false(cli_lists_topic(fx, "topics", "plain"));

    cli_fails(fx, "ferry: topics delete: no such topic", "nosuchtopic", "topics", "delete",
              "nosuchtopic", NULL);
    cli_fails(fx, "ferry: topics delete: no such topic", "nosuchtopic", "topics", "delete",
              "nosuchtopic", "--force", "--json", NULL);
}

static void test_cli_group_delete(void **state)
{
    struct it_fx *fx = *state;
    publish(fx->c, "orders", "o");
    make_group(fx->c, "orders", "billing");
    make_group(fx->c, "orders", "shipping");

    cli_expect(fx, "deleted group billing of topic orders\n", "groups", "delete", "orders",
               "--group", "billing", NULL);
    int has = 0;
    assert_int_equal(groups_of(fx->c, "orders", "shipping", &has), 1);
    assert_true(has);
    assert_true(cli_lists_topic(fx, "topics", "orders"));

    cli_expect(fx, "{\"topic\":\"orders\",\"group\":\"shipping\",\"deleted\":true}\n", "groups",
               "delete", "orders", "--group", "shipping", "--json", NULL);
    assert_int_equal(groups_of(fx->c, "orders", NULL, NULL), 0);
    assert_true(cli_lists_topic(fx, "topics", "orders"));

    cli_fails(fx, "ferry: groups delete: no such consumer group", "billing", "groups", "delete",
              "orders", "--group", "billing", NULL);
    cli_fails(fx, "ferry: groups delete: no such topic", "nosuchtopic", "groups", "delete",
              "nosuchtopic", "--group", "g", NULL);
}

static void test_cli_delete_usage(void **state)
{
    struct it_fx *fx = *state;
    static const char *const cases[][6] = {
        {"topics", "delete", NULL},      {"topics", "delete", "a", "b", NULL},
        {"topics", "--force", NULL},     {"topics", "delete", "a", "--max-count", "3", NULL},
        {"groups", "delete", "a", NULL}, {"groups", "--group", "g", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct harness_output out;
        cli_run(fx, &out, cases[i][0], cases[i][1], cases[i][2], cases[i][3], cases[i][4], NULL);
        if (out.status != 2)
            print_error("case %zu: exit %d, want 2; stderr: %s\n", i, out.status, out.err);
        assert_int_equal(out.status, 2);
        harness_output_free(&out);
    }
}

/* ----- ferry sub ------------------------------------------------------------ */

struct sub_child {
    struct it_fx *fx;
    struct harness_output out;
};

static void *run_sub(void *arg)
{
    struct sub_child *k = arg;
    char *argv[] = {getenv("FERRY_CLI"), "--server", k->fx->b.addr,  "sub",   "live",
                    "--group",           "watcher",  "--timeout-ms", "30000", NULL};
    if (harness_run(k->fx->b.dir, argv, NULL, CLI_TIMEOUT_MS, &k->out) < 0)
        k->out.status = -2;
    return NULL;
}

static void test_cli_sub_ends_on_delete(void **state)
{
    struct it_fx *fx = *state;
    publish(fx->c, "live", "first");
    struct sub_child k = {.fx = fx};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, run_sub, &k), 0);
    /* Wait until the group has its consumer. */
    int64_t deadline = harness_now_ms() + WAIT_MS;
    for (;;) {
        ferry_group_info *g = NULL;
        size_t n = 0;
        int live = 0;
        if (ferry_groups(fx->c, "live", &g, &n) == 0)
            for (size_t i = 0; i < n; i++)
                live |= strcmp(g[i].group, "watcher") == 0 && g[i].consumers > 0;
        ferry_groups_free(g);
        if (live)
            break;
        if (harness_now_ms() > deadline) {
            pthread_join(th, NULL);
            fail_msg("ferry sub never joined: exit %d, stderr %s", k.out.status, k.out.err);
        }
        it_sleep_ms(50);
    }
    assert_int_equal(ferry_topic_delete(fx->c, "live", FERRY_DELETE_FORCE, NULL), 0);
    pthread_join(th, NULL);
    if (k.out.status != 1 || !strstr(k.out.err, "subscription to live/watcher ended"))
        print_error("ferry sub: exit %d\n stdout: %s\n stderr: %s\n", k.out.status, k.out.out,
                    k.out.err);
    assert_int_equal(k.out.status, 1);
    assert_string_equal(k.out.out, "1\tfirst\n");
    assert_non_null(strstr(k.out.err, "ferry: sub: no such topic: subscription to live/watcher "
                                      "ended"));
    harness_output_free(&k.out);
}

/* ----- ferry bench ---------------------------------------------------------- */

static void test_bench_cleans_up(void **state)
{
    struct it_fx *fx = *state;
    char want[256];
    struct harness_output out;

    cli_run(fx, &out, "bench", "pub", "--messages", "20", "--warmup", "0", "--no-raw", NULL);
    if (out.status != 0)
        print_error("bench pub: exit %d\n stdout: %s\n stderr: %s\n", out.status, out.out, out.err);
    assert_int_equal(out.status, 0);
    snprintf(want, sizeof want, "wrote to topic bench on %s; deleted it (--keep to keep it)\n",
             fx->b.addr);
    assert_non_null(strstr(out.out, want));
    harness_output_free(&out);
    ferry_topic_info ti;
    assert_int_equal(it_topic(fx->c, "bench", &ti), 0);

    cli_run(fx, &out, "bench", "pub", "--messages", "20", "--warmup", "0", "--no-raw", "--keep",
            NULL);
    assert_int_equal(out.status, 0);
    snprintf(want, sizeof want, "wrote to topic bench on %s; kept it (--keep)\n", fx->b.addr);
    assert_non_null(strstr(out.out, want));
    harness_output_free(&out);
    assert_int_equal(it_topic(fx->c, "bench", &ti), 1);
    assert_int_equal(ti.message_count, 20);

    /* An existing topic stays; a run on it keeps it (and says so). */
    cli_run(fx, &out, "bench", "pub", "--messages", "20", "--warmup", "0", "--no-raw", "--json",
            NULL);
    assert_int_equal(out.status, 0);
    assert_int_equal(out.out[0], '{'); /* one JSON object: the line is on stderr */
    assert_non_null(strstr(out.err, "; kept it (it existed before the run)"));
    harness_output_free(&out);
    assert_int_equal(it_topic(fx->c, "bench", &ti), 1);
    assert_int_equal(ti.message_count, 40);

    /* consume on that existing topic: its own group goes, the topic stays. */
    cli_run(fx, &out, "bench", "consume", "--topic", "bench", "--no-fill", "--messages", "10",
            "--group", "bench-it", NULL);
    if (out.status != 0)
        print_error("bench consume: exit %d\n stdout: %s\n stderr: %s\n", out.status, out.out,
                    out.err);
    assert_int_equal(out.status, 0);
    assert_non_null(strstr(out.out, "deleted group bench-it"));
    harness_output_free(&out);
    assert_int_equal(it_topic(fx->c, "bench", &ti), 1);
    assert_int_equal(groups_of(fx->c, "bench", NULL, NULL), 0);

    /* consume on a fresh topic: topic and group go. */
    cli_run(fx, &out, "bench", "consume", "--messages", "10", NULL);
    assert_int_equal(out.status, 0);
    assert_int_equal(it_topic(fx->c, "bench-consume", &ti), 0);
    harness_output_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_topic_delete_ends_subscription, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_topic_delete_ends_callback_subscription, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_topic_delete_takes_dead_letters, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_group_delete_ends_subscription, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_cli_topic_delete, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_cli_group_delete, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_cli_delete_usage, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_cli_sub_ends_on_delete, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_bench_cleans_up, setup, it_fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
