/*
 * test_cli_admin.c - the `ferry` CLI's administration commands end to end
 * against the real ferryd: `ferry topics set` (retention, through
 * libferry's ferry_topic_config), the RATE / DEAD / RETENTION columns and
 * JSON fields of `ferry topics`, and `ferry dead replay`.
 *
 * The binary is the one meson built, named by FERRY_CLI; it runs as a child
 * with its output captured (harness_run). Dead letters are made through
 * libferry: a group with max_deliveries 1 and a 200 ms lease whose delivery
 * is never acked.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "it_util.h"

#define CLI_TIMEOUT_MS 30000
#define MAX_ARGV 32
#define WAIT_MS 10000 /* for the broker to do something it will do */
#define LEASE_MS 200

static int setup_args(void **state, const char *const *args)
{
    if (!getenv("FERRY_CLI")) {
        fprintf(stderr, "setup: the environment variable FERRY_CLI is not set\n");
        return -1;
    }
    return it_fx_start(state, sizeof(struct it_fx), args);
}

static int setup(void **state)
{
    return setup_args(state, NULL);
}

/* A broker whose default retention keeps at most 1000 messages a topic. */
static int setup_default_count(void **state)
{
    static const char *const args[] = {"--retention-max-count", "1000", NULL};
    return setup_args(state, args);
}

/* Runs `ferry --server SERVER ARGS...` (args a NULL-terminated va_list)
 * and fills *out. server NULL means the fixture's broker. */
static void cli_vrun(struct it_fx *fx, const char *server, struct harness_output *out, va_list ap)
{
    char *argv[MAX_ARGV];
    int argc = 0;
    argv[argc++] = getenv("FERRY_CLI");
    argv[argc++] = "--server";
    argv[argc++] = (char *)(server ? server : fx->b.addr);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) {
        assert_true(argc < MAX_ARGV - 1);
        argv[argc++] = (char *)a;
    }
    argv[argc] = NULL;
    assert_int_equal(harness_run(fx->b.dir, argv, NULL, CLI_TIMEOUT_MS, out), 0);
}

static void cli_run(struct it_fx *fx, const char *server, struct harness_output *out, ...)
{
    va_list ap;
    va_start(ap, out);
    cli_vrun(fx, server, out, ap);
    va_end(ap);
}

/* Runs a command that must exit 0; returns its output (free it). */
static struct harness_output cli_ok(struct it_fx *fx, ...)
{
    struct harness_output out;
    va_list ap;
    va_start(ap, fx);
    cli_vrun(fx, NULL, &out, ap);
    va_end(ap);
    if (out.status != 0)
        print_error("exit %d\n stdout: \"%s\"\n stderr: %s\n", out.status, out.out, out.err);
    assert_int_equal(out.status, 0);
    return out;
}

/* Runs a command that must exit 0 and print exactly want. */
static void cli_expect(struct it_fx *fx, const char *want, ...)
{
    struct harness_output out;
    va_list ap;
    va_start(ap, want);
    cli_vrun(fx, NULL, &out, ap);
    va_end(ap);
    if (out.status != 0 || strcmp(out.out, want) != 0)
        print_error("exit %d\n stdout: \"%s\"\n want: \"%s\"\n stderr: %s\n", out.status, out.out,
                    want, out.err);
    assert_int_equal(out.status, 0);
    assert_string_equal(out.out, want);
    harness_output_free(&out);
}

/* Runs a command that must be refused as a usage error (exit 2, nothing on
 * stdout, one line on stderr). */
static void cli_usage(struct it_fx *fx, ...)
{
    struct harness_output out;
    va_list ap;
    va_start(ap, fx);
    cli_vrun(fx, NULL, &out, ap);
    va_end(ap);
    if (out.status != 2)
        print_error("exit %d, want 2\n stdout: \"%s\"\n stderr: %s\n", out.status, out.out,
                    out.err);
    assert_int_equal(out.status, 2);
    assert_string_equal(out.out, "");
    assert_true(out.err_len > 1);
    assert_ptr_equal(strchr(out.err, '\n'), out.err + out.err_len - 1);
    harness_output_free(&out);
}

/* A failure is one line on stderr, nothing on stdout, exit 1..127. */
static void assert_one_line_failure(const struct harness_output *out)
{
    if (out->status == 0 || out->status > 127)
        print_error("exit %d\n stderr: %s\n", out->status, out->err);
    assert_in_range(out->status, 1, 127);
    assert_string_equal(out->out, "");
    assert_true(out->err_len > 1);
    assert_ptr_equal(strchr(out->err, '\n'), out->err + out->err_len - 1);
}

/* ----- tables ------------------------------------------------------------ */

#define MAX_LINES 16
#define MAX_TOKENS 16

/* Splits text (modified) into lines of whitespace-separated tokens.
 * Returns the line count. */
static int split_table(char *text, char *tok[MAX_LINES][MAX_TOKENS], int ntok[MAX_LINES])
{
    int lines = 0;
    for (char *save = NULL, *l = strtok_r(text, "\n", &save); l && lines < MAX_LINES;
         l = strtok_r(NULL, "\n", &save), lines++) {
        ntok[lines] = 0;
        for (char *s2 = NULL, *t = strtok_r(l, " \t", &s2); t && ntok[lines] < MAX_TOKENS;
             t = strtok_r(NULL, " \t", &s2))
            tok[lines][ntok[lines]++] = t;
    }
    return lines;
}

/* The `ferry topics` columns; RETENTION is last and may span tokens. */
enum { C_TOPIC, C_MESSAGES, C_BYTES, C_FIRST, C_HEAD, C_CREATED, C_RATE, C_DEAD, C_RETENTION };

static void assert_topics_header(char *const *tok, int ntok)
{
    static const char *const want[] = {"TOPIC",   "MESSAGES", "BYTES", "FIRST",    "HEAD",
                                       "CREATED", "RATE",     "DEAD",  "RETENTION"};
    assert_int_equal(ntok, 9);
    for (int i = 0; i < 9; i++)
        assert_string_equal(tok[i], want[i]);
}

/* The RETENTION column of a row, its tokens joined by single spaces. */
static void row_retention(char *const *tok, int ntok, char *buf, size_t len)
{
    buf[0] = '\0';
    for (int i = C_RETENTION; i < ntok; i++) {
        if (i > C_RETENTION)
            strncat(buf, " ", len - strlen(buf) - 1);
        strncat(buf, tok[i], len - strlen(buf) - 1);
    }
}

/* Runs `ferry ARGS...` (a table-printing command) and finds the row of
 * topic: copies its tokens into row (each at most 63 bytes) and returns
 * their number, or 0 when the table has no such row. */
struct row {
    char tok[MAX_TOKENS][64];
    int n;
};

static int table_row(struct harness_output *out, const char *topic, struct row *r)
{
    char *tok[MAX_LINES][MAX_TOKENS];
    int ntok[MAX_LINES];
    int lines = split_table(out->out, tok, ntok);
    assert_true(lines >= 1);
    assert_topics_header(tok[0], ntok[0]);
    memset(r, 0, sizeof *r);
    for (int l = 1; l < lines; l++) {
        assert_true(ntok[l] > C_RETENTION);
        if (strcmp(tok[l][C_TOPIC], topic) != 0)
            continue;
        for (int i = 0; i < ntok[l]; i++)
            snprintf(r->tok[i], sizeof r->tok[i], "%s", tok[l][i]);
        r->n = ntok[l];
        return r->n;
    }
    return 0;
}

static void row_retention_of(const struct row *r, char *buf, size_t len)
{
    char *tok[MAX_TOKENS];
    for (int i = 0; i < r->n; i++)
        tok[i] = (char *)r->tok[i];
    row_retention(tok, r->n, buf, len);
}

/* `ferry topics` must list topic with this RETENTION and DEAD. */
static void expect_topics_row(struct it_fx *fx, const char *topic, const char *retention,
                              const char *dead)
{
    struct harness_output out = cli_ok(fx, "topics", NULL);
    struct row r;
    if (table_row(&out, topic, &r) == 0)
        fail_msg("ferry topics lists no %s", topic);
    char ret[256];
    row_retention_of(&r, ret, sizeof ret);
    assert_string_equal(ret, retention);
    assert_string_equal(r.tok[C_DEAD], dead);
    assert_int_equal(strlen(r.tok[C_CREATED]), 20); /* 2026-01-02T03:04:05Z */
    harness_output_free(&out);
}

/* `ferry topics --json` must hold want (a fragment of one object). */
static void expect_json_has(struct it_fx *fx, const char *want)
{
    struct harness_output out = cli_ok(fx, "topics", "--json", NULL);
    if (!strstr(out.out, want))
        print_error("ferry topics --json:\n %s\n lacks: %s\n", out.out, want);
    assert_non_null(strstr(out.out, want));
    assert_int_equal(out.out[0], '[');
    assert_string_equal(out.out + out.out_len - 2, "]\n");
    harness_output_free(&out);
}

/* ----- libferry helpers ------------------------------------------------- */

static void publish(ferry_conn *c, const char *topic, const char *id, const char *payload,
                    const ferry_header *hs, size_t nh, uint64_t want_seq)
{
    ferry_msg m;
    memset(&m, 0, sizeof m);
    m.topic = topic;
    m.id = id;
    m.payload = payload;
    m.payload_len = strlen(payload);
    m.headers = hs;
    m.header_count = nh;
    ferry_ack ack;
    int r = ferry_publish(c, &m, &ack);
    if (r != 0)
        print_error("publish: %s (%s)\n", ferry_strerror(r), ferry_errmsg(c));
    assert_int_equal(r, 0);
    if (want_seq)
        assert_int_equal(ack.seq, want_seq);
}

/* Waits until topic holds at least (at_least) or at most (!at_least) n
 * messages; returns the last count seen. */
static uint64_t wait_count(ferry_conn *c, const char *topic, uint64_t n, int at_least)
{
    int64_t deadline = harness_now_ms() + WAIT_MS;
    uint64_t have = 0;
    for (;;) {
        ferry_topic_info ti;
        have = it_topic(c, topic, &ti) ? ti.message_count : 0;
        if (at_least ? have >= n : have <= n)
            return have;
        if (harness_now_ms() > deadline)
            fail_msg("%s holds %llu messages after %d ms, want %s %llu", topic,
                     (unsigned long long)have, WAIT_MS, at_least ? "at least" : "at most",
                     (unsigned long long)n);
        usleep(50 * 1000);
    }
}

/* Makes the first n messages of topic (published by the caller) dead: a
 * group with max_deliveries 1 and a short lease receives and never acks
 * them, then leaves, so that it does not take what is replayed later. */
static void kill_messages(const char *addr, const char *topic, size_t n)
{
    ferry_conn *c = it_connect(addr);
    ferry_sub_options o = FERRY_SUB_OPTIONS_INIT;
    o.start = FERRY_START_EARLIEST;
    o.max_in_flight = 100;
    o.ack_wait_ms = LEASE_MS;
    o.max_deliveries = 1;
    ferry_sub *s = NULL;
    assert_int_equal(ferry_subscribe(c, topic, "doomed", &o, &s), 0);
    for (size_t i = 0; i < n; i++) {
        ferry_delivery *d = NULL;
        int r = ferry_receive(c, WAIT_MS, &d);
        if (r != 0)
            fail_msg("delivery %zu of %s: %s (%s)", i, topic, ferry_strerror(r), ferry_errmsg(c));
        assert_int_equal(d->attempt, 1);
        ferry_delivery_free(d); /* never acked: the lease expires */
    }
    char dead[256];
    snprintf(dead, sizeof dead, "_dead.%s", topic);
    wait_count(c, dead, n, 1);
    assert_int_equal(ferry_unsubscribe(s), 0);
    ferry_close(c);
}

static const char *header_value(const ferry_delivery *d, const char *name)
{
    for (size_t i = 0; i < d->header_count; i++)
        if (strcmp(d->headers[i].name, name) == 0)
            return d->headers[i].value;
    return NULL;
}

/* ----- ferry topics set ---------------------------------------------------- */

static void test_topics_set_shows_retention(void **state)
{
    struct it_fx *fx = *state;

    /* All four, on a topic that does not exist yet: it is created. The
     * command prints the topic's row with the new retention. */
    struct harness_output out =
        cli_ok(fx, "topics", "set", "t1", "--max-age", "7d", "--max-count", "10000", "--max-bytes",
               "1GiB", "--delete-acked", "on", NULL);
    struct row r;
    assert_int_equal(table_row(&out, "t1", &r) > 0, 1);
    char ret[256];
    row_retention_of(&r, ret, sizeof ret);
    assert_string_equal(ret, "age=7d count=10000 bytes=1GiB acked");
    assert_string_equal(r.tok[C_MESSAGES], "0");
    assert_string_equal(r.tok[C_RATE], "0");
    assert_string_equal(r.tok[C_DEAD], "0");
    harness_output_free(&out);

    expect_json_has(fx, "{\"topic\":\"t1\",\"messages\":0,\"bytes\":0,\"first_seq\":0,"
                        "\"head_seq\":0,\"created_ms\":");
    expect_json_has(fx, ",\"max_age_ms\":604800000,\"max_count\":10000,\"max_bytes\":1073741824,"
                        "\"delete_acked\":true,\"publish_rate\":0,\"dead_lettered\":0}");
    expect_topics_row(fx, "t1", "age=7d count=10000 bytes=1GiB acked", "0");

    /* libferry reports the same. */
    ferry_conn *c = it_connect(fx->b.addr);
    ferry_topic_info ti;
    assert_int_equal(it_topic(c, "t1", &ti), 1);
    assert_int_equal(ti.has_retention, 1);
    assert_int_equal(ti.max_age_ms, 604800000);
    assert_int_equal(ti.max_count, 10000);
    assert_int_equal(ti.max_bytes, 1073741824);
    assert_int_equal(ti.delete_acked, 1);

    /* A setting not given is the broker's default (here: no limit). */
    out = cli_ok(fx, "topics", "set", "t1", "--max-count", "5", NULL);
    harness_output_free(&out);
    expect_json_has(fx,
                    ",\"max_age_ms\":0,\"max_count\":5,\"max_bytes\":0,\"delete_acked\":false,");
    expect_topics_row(fx, "t1", "count=5", "0");

    /* Other units, and --json on set: the one topic's object. */
    out = cli_ok(fx, "topics", "set", "t1", "--max-age", "90m", "--max-bytes", "1500", "--json",
                 NULL);
    assert_int_equal(out.out[0], '[');
    assert_non_null(strstr(out.out, "\"topic\":\"t1\""));
    assert_non_null(strstr(out.out, "\"max_age_ms\":5400000,\"max_count\":0,\"max_bytes\":1500,"));
    assert_null(strstr(out.out, "},{")); /* one object */
    harness_output_free(&out);
    expect_topics_row(fx, "t1", "age=90m bytes=1500", "0");

    /* No option: every setting back to the default. */
    out = cli_ok(fx, "topics", "set", "t1", NULL);
    assert_int_equal(table_row(&out, "t1", &r) > 0, 1);
    row_retention_of(&r, ret, sizeof ret);
    assert_string_equal(ret, "-");
    harness_output_free(&out);
    assert_int_equal(it_topic(c, "t1", &ti), 1);
    assert_int_equal(ti.max_age_ms, 0);
    assert_int_equal(ti.max_count, 0);
    assert_int_equal(ti.max_bytes, 0);
    assert_int_equal(ti.delete_acked, 0);
    ferry_close(c);
}

static void test_topics_set_default_follows_broker(void **state)
{
    struct it_fx *fx = *state;
    /* The broker keeps 1000 messages a topic by default. */
    struct harness_output out = cli_ok(fx, "topics", "set", "t", "--max-age", "1h", NULL);
    harness_output_free(&out);
    expect_topics_row(fx, "t", "age=1h count=1000", "0");
    expect_json_has(fx, "\"max_age_ms\":3600000,\"max_count\":1000,\"max_bytes\":0,");

    out = cli_ok(fx, "topics", "set", "t", "--max-count", "none", "--max-age", "default", NULL);
    harness_output_free(&out);
    expect_topics_row(fx, "t", "-", "0");

    out = cli_ok(fx, "topics", "set", "t", NULL);
    harness_output_free(&out);
    expect_topics_row(fx, "t", "count=1000", "0");
}

static void test_topics_set_max_count_takes_effect(void **state)
{
    struct it_fx *fx = *state;
    ferry_conn *c = it_connect(fx->b.addr);
    for (int i = 1; i <= 50; i++) {
        char payload[32];
        snprintf(payload, sizeof payload, "m%d", i);
        publish(c, "r", NULL, payload, NULL, 0, (uint64_t)i);
    }
    struct harness_output out = cli_ok(fx, "topics", "set", "r", "--max-count", "10", NULL);
    harness_output_free(&out);

    uint64_t left = wait_count(c, "r", 10, 0);
    assert_true(left <= 10);
    ferry_topic_info ti;
    assert_int_equal(it_topic(c, "r", &ti), 1);
    assert_int_equal(ti.head_seq, 50);
    assert_true(ti.first_seq >= 41);
    assert_int_equal(ti.max_count, 10);

    /* The limit keeps holding as more come. */
    for (int i = 51; i <= 70; i++)
        publish(c, "r", NULL, "more", NULL, 0, (uint64_t)i);
    wait_count(c, "r", 10, 0);
    expect_topics_row(fx, "r", "count=10", "0");
    ferry_close(c);
}

/* ----- dead letters ----------------------------------------------------------- */

static void test_dead_letter_replay(void **state)
{
    struct it_fx *fx = *state;
    ferry_conn *c = it_connect(fx->b.addr);
    ferry_header hs[2] = {{"trace", "abc", 3}, {"content-type", "text/plain", 10}};
    ferry_msg m;
    memset(&m, 0, sizeof m);
    m.topic = "orders";
    m.id = "order-7";
    m.key = "cust-1";
    m.key_len = 6;
    m.headers = hs;
    m.header_count = 2;
    m.payload = "ship it";
    m.payload_len = 7;
    ferry_ack ack;
    assert_int_equal(ferry_publish(c, &m, &ack), 0);
    assert_int_equal(ack.seq, 1);

    kill_messages(fx->b.addr, "orders", 1);

    /* DEAD counts the dead-letter topic, which is listed too. */
    expect_topics_row(fx, "orders", "-", "1");
    expect_topics_row(fx, "_dead.orders", "-", "0");
    expect_json_has(fx, "\"topic\":\"orders\",\"messages\":1,");
    expect_json_has(fx, "\"publish_rate\":");
    {
        struct harness_output out = cli_ok(fx, "topics", "--json", NULL);
        const char *o = strstr(out.out, "{\"topic\":\"orders\"");
        assert_non_null(o);
        const char *end = strchr(o, '}');
        assert_non_null(end);
        const char *dl = strstr(o, "\"dead_lettered\":1}");
        assert_true(dl != NULL && dl < end + 1);
        harness_output_free(&out);
    }

    cli_expect(fx, "1 -> 2\n", "dead", "replay", "orders", "--republish", "--count", "1", NULL);

    /* The copy: same key and payload, the original headers and the replay
     * header, none of the broker's ferry-dead-* ones, a derived id. */
    ferry_sub_options o = FERRY_SUB_OPTIONS_INIT;
    o.start = FERRY_START_SEQ;
    o.start_value = 2;
    ferry_sub *s = NULL;
    assert_int_equal(ferry_subscribe(c, "orders", "check", &o, &s), 0);
    ferry_delivery *d = NULL;
    assert_int_equal(ferry_receive(c, WAIT_MS, &d), 0);
    assert_int_equal(d->seq, 2);
    assert_string_equal(d->id, "order-7~replay-1");
    assert_int_equal(d->key_len, 6);
    assert_memory_equal(d->key, "cust-1", 6);
    assert_int_equal(d->payload_len, 7);
    assert_memory_equal(d->payload, "ship it", 7);
    assert_int_equal(d->header_count, 4);
    assert_string_equal(d->headers[0].name, "trace");
    assert_string_equal(d->headers[0].value, "abc");
    assert_string_equal(d->headers[1].name, "content-type");
    assert_string_equal(d->headers[1].value, "text/plain");
    assert_string_equal(header_value(d, "ferry-replayed-from"), "_dead.orders/1");
    assert_string_equal(header_value(d, "ferry-original-id"), "order-7");
    assert_int_equal(ferry_delivery_ack(d), 0);
    ferry_delivery_free(d);
    assert_int_equal(ferry_unsubscribe(s), 0);

    /* The dead letter is done for the replay group; it stays stored. */
    ferry_group_info *g = NULL;
    size_t ng = 0;
    assert_int_equal(ferry_groups(c, "_dead.orders", &g, &ng), 0);
    int found = 0;
    for (size_t i = 0; i < ng; i++) {
        if (strcmp(g[i].group, "ferry-replay") != 0)
            continue;
        found = 1;
        assert_int_equal(g[i].lag, 0);
        assert_int_equal(g[i].in_flight, 0);
        assert_int_equal(g[i].consumers, 0);
    }
    ferry_groups_free(g);
    assert_true(found);

    /* Nothing more to replay: a timeout, no output, exit 0. */
    cli_expect(fx, "", "dead", "replay", "orders", "--republish", "--timeout-ms", "300", NULL);

    /* Replayed again after a seek: the broker knows the copy's id. */
    cli_expect(fx, "1\n", "seek", "_dead.orders", "--group", "ferry-replay", "--to", "earliest",
               NULL);
    cli_expect(fx, "1 -> 2 duplicate\n", "dead", "replay", "orders", "--republish", "--count", "1",
               NULL);
    ferry_topic_info ti;
    assert_int_equal(it_topic(c, "orders", &ti), 1);
    assert_int_equal(ti.head_seq, 2);
    assert_int_equal(ti.message_count, 2);
    ferry_close(c);
}

static void test_dead_replay_count_and_rest(void **state)
{
    struct it_fx *fx = *state;
    ferry_conn *c = it_connect(fx->b.addr);
    publish(c, "jobs", "j-1", "one", NULL, 0, 1);
    publish(c, "jobs", "j-2", "two", NULL, 0, 2);
    publish(c, "jobs", "j-3", "three", NULL, 0, 3);
    kill_messages(fx->b.addr, "jobs", 3);
    expect_topics_row(fx, "jobs", "-", "3");

    /* Two, then the rest (the third was not taken by the first run), in
     * their own group. */
    cli_expect(fx, "1 -> 4\n2 -> 5\n", "dead", "replay", "jobs", "--count", "2", "--republish",
               "--tracking-group", "again", NULL);
    cli_expect(fx, "3 -> 6\n", "dead", "replay", "jobs", "--republish", "--tracking-group", "again",
               "--timeout-ms", "500", NULL);

    /* Another group replays everything once more: all duplicates. */
    cli_expect(fx, "1 -> 4 duplicate\n2 -> 5 duplicate\n3 -> 6 duplicate\n", "dead", "replay",
               "jobs", "--republish", "--timeout-ms", "500", NULL);
    ferry_topic_info ti;
    assert_int_equal(it_topic(c, "jobs", &ti), 1);
    assert_int_equal(ti.message_count, 6);
    ferry_close(c);
}

/* The default is a redrive: each dead letter goes back to the group that
 * dead-lettered it, as the same message; nothing is published to the
 * topic. --group picks one group's; others' are passed over. */
static void test_dead_replay_redrives_to_its_group(void **state)
{
    struct it_fx *fx = *state;
    ferry_conn *c = it_connect(fx->b.addr);
    publish(c, "work", "w-1", "one", NULL, 0, 1);
    publish(c, "work", "w-2", "two", NULL, 0, 2);
    kill_messages(fx->b.addr, "work", 2);
    cli_expect(fx, "", "dead", "replay", "work", "--group", "other", "--timeout-ms", "300", NULL);
    cli_expect(fx, "1 -> 1 doomed\n2 -> 2 doomed\n", "dead", "replay", "work", "--group", "doomed",
               "--timeout-ms", "300", NULL);
    ferry_topic_info ti;
    assert_int_equal(it_topic(c, "work", &ti), 1);
    assert_int_equal(ti.head_seq, 2); /* nothing published */
    ferry_sub_options o = FERRY_SUB_OPTIONS_INIT;
    ferry_sub *s = NULL;
    assert_int_equal(ferry_subscribe(c, "work", "doomed", &o, &s), 0);
    for (uint64_t i = 1; i <= 2; i++) {
        ferry_delivery *d = NULL;
        assert_int_equal(ferry_receive(c, WAIT_MS, &d), 0);
        assert_int_equal(d->seq, i);
        assert_int_equal(d->attempt, 1);
        assert_string_equal(d->id, i == 1 ? "w-1" : "w-2");
        assert_string_equal(header_value(d, "ferry-redriven"),
                            i == 1 ? "_dead.work/1" : "_dead.work/2");
        assert_int_equal(ferry_delivery_ack(d), 0);
        ferry_delivery_free(d);
    }
    /* Again, with another tracking group, as JSON lines. */
    cli_expect(fx,
               "{\"dead_seq\":1,\"seq\":1,\"group\":\"doomed\"}\n"
               "{\"dead_seq\":2,\"seq\":2,\"group\":\"doomed\"}\n",
               "dead", "replay", "work", "--tracking-group", "again", "--json", "--timeout-ms",
               "300", NULL);
    /* seek --json names what it moved. */
    cli_expect(fx, "{\"topic\":\"work\",\"group\":\"doomed\",\"cursor\":1}\n", "seek", "work",
               "--group", "doomed", "--to", "earliest", "--json", NULL);
    ferry_close(c);
}

static void test_dead_replay_without_dead_letters(void **state)
{
    struct it_fx *fx = *state;
    ferry_conn *c = it_connect(fx->b.addr);
    publish(c, "calm", NULL, "fine", NULL, 0, 1);
    ferry_close(c);
    cli_expect(fx, "", "dead", "replay", "calm", NULL);
    cli_expect(fx, "", "dead", "replay", "never-was", "--timeout-ms", "0", NULL);
    /* Nothing was created for it. */
    struct harness_output out = cli_ok(fx, "topics", "--json", NULL);
    assert_null(strstr(out.out, "_dead."));
    assert_null(strstr(out.out, "never-was"));
    harness_output_free(&out);
}

/* ----- usage and errors -------------------------------------------------------- */

static void test_usage_errors(void **state)
{
    struct it_fx *fx = *state;
    cli_usage(fx, "topics", "set", NULL);
    cli_usage(fx, "topics", "set", "a", "b", NULL);
    cli_usage(fx, "topics", "set", "t", "--max-count", "0", NULL);
    cli_usage(fx, "topics", "set", "t", "--max-count", "-3", NULL);
    cli_usage(fx, "topics", "set", "t", "--max-age", "7y", NULL);
    cli_usage(fx, "topics", "set", "t", "--max-bytes", "1GB", NULL);
    cli_usage(fx, "topics", "set", "t", "--delete-acked", "maybe", NULL);
    cli_usage(fx, "topics", "--max-age", "1d", NULL);
    cli_usage(fx, "topics", "unset", "x",
              NULL); /* "topics NAME" lists NAME; two words are an error */
    cli_usage(fx, "dead", NULL);
    cli_usage(fx, "dead", "list", "t", NULL);
    cli_usage(fx, "dead", "replay", NULL);
    cli_usage(fx, "dead", "replay", "a", "b", NULL);
    cli_usage(fx, "dead", "replay", "_dead.t", NULL);
    cli_usage(fx, "dead", "replay", "t", "--count", "0", NULL);

    /* Nothing of it reached the broker. */
    struct harness_output out = cli_ok(fx, "topics", "--json", NULL);
    assert_string_equal(out.out, "[]\n");
    harness_output_free(&out);

    /* An invalid topic is the broker's (and libferry's) call: exit 1. */
    cli_run(fx, NULL, &out, "topics", "set", "bad topic", "--max-count", "3", NULL);
    assert_one_line_failure(&out);
    harness_output_free(&out);

    /* The help names the new commands. */
    out = cli_ok(fx, "--help", NULL);
    assert_non_null(strstr(out.out, "dead"));
    harness_output_free(&out);
    out = cli_ok(fx, "topics", "--help", NULL);
    assert_non_null(strstr(out.out, "ferry topics set TOPIC"));
    harness_output_free(&out);
    out = cli_ok(fx, "help", "dead", NULL);
    assert_non_null(strstr(out.out, "ferry dead replay"));
    harness_output_free(&out);
}

/* `ferry topics NAME` lists that topic alone (table and JSON); an unknown
 * NAME, for topics as for groups, is `no such topic: NAME`, status 1. */
static void test_one_topic_and_unknown_topic(void **state)
{
    struct it_fx *fx = *state;
    ferry_conn *c = it_connect(fx->b.addr);
    publish(c, "one", NULL, "a", NULL, 0, 1);
    publish(c, "two", NULL, "b", NULL, 0, 1);
    ferry_close(c);

    struct harness_output out = cli_ok(fx, "topics", "one", NULL);
    assert_int_equal(strncmp(out.out, "TOPIC ", 6), 0);
    assert_non_null(strstr(out.out, "\none "));
    assert_null(strstr(out.out, "two"));
    harness_output_free(&out);
    out = cli_ok(fx, "topics", "two", "--json", NULL);
    const char *want = "[{\"topic\":\"two\",\"messages\":1,";
    assert_int_equal(strncmp(out.out, want, strlen(want)), 0);
    assert_null(strstr(out.out, "\"one\""));
    harness_output_free(&out);

    cli_run(fx, NULL, &out, "topics", "nosuchtopic", NULL);
    assert_one_line_failure(&out);
    assert_int_equal(out.status, 1);
    assert_string_equal(out.err, "ferry: topics: no such topic: nosuchtopic\n");
    harness_output_free(&out);
    cli_run(fx, NULL, &out, "groups", "nosuchtopic", NULL);
    assert_one_line_failure(&out);
    assert_int_equal(out.status, 1);
    assert_string_equal(out.err, "ferry: groups: no such topic: nosuchtopic\n");
    harness_output_free(&out);
    cli_run(fx, NULL, &out, "groups", "nosuchtopic", "--json", NULL);
    assert_string_equal(out.err, "ferry: groups: no such topic: nosuchtopic\n");
    harness_output_free(&out);
}

static void test_unreachable_broker_fails_one_line(void **state)
{
    struct it_fx *fx = *state;
    struct harness_output out;
    cli_run(fx, "127.0.0.1:1", &out, "topics", "set", "t", "--max-count", "3", NULL);
    assert_one_line_failure(&out);
    harness_output_free(&out);
    cli_run(fx, "127.0.0.1:1", &out, "dead", "replay", "t", NULL);
    assert_one_line_failure(&out);
    harness_output_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_topics_set_shows_retention, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_topics_set_default_follows_broker, setup_default_count,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_topics_set_max_count_takes_effect, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_dead_letter_replay, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_dead_replay_count_and_rest, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_dead_replay_redrives_to_its_group, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_dead_replay_without_dead_letters, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_usage_errors, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_one_topic_and_unknown_topic, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_unreachable_broker_fails_one_line, setup,
                                        it_fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
