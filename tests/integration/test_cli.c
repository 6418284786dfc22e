/*
 * test_cli.c - the `ferry` command-line tool end to end against the real
 * ferryd: what it prints, what it exits with, and what ends up stored.
 *
 * The binary is the one meson built, named by the environment variable
 * FERRY_CLI; it runs as a child with stdin fed from a file and stdout and
 * stderr captured (harness_run). Output is compared exactly where the
 * format is fixed by the issue (`pub` prints the sequence number, then
 * " duplicate" when so); listings are parsed minimally.
 */
#include <errno.h>
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

static int setup(void **state)
{
    if (!getenv("FERRY_CLI")) {
        fprintf(stderr, "setup: the environment variable FERRY_CLI is not set\n");
        return -1;
    }
    return it_fx_start(state, sizeof(struct it_fx), NULL);
}

/* Runs `ferry --server SERVER ARGS...` (args NULL-terminated) with stdin
 * and fills *out. server NULL means the fixture's broker. */
static void cli_run(struct it_fx *fx, const char *server, const char *stdin_data,
                    struct harness_output *out, ...)
{
    char *argv[MAX_ARGV];
    int argc = 0;
    argv[argc++] = getenv("FERRY_CLI");
    argv[argc++] = "--server";
    argv[argc++] = (char *)(server ? server : fx->b.addr);
    va_list ap;
    va_start(ap, out);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) {
        assert_true(argc < MAX_ARGV - 1);
        argv[argc++] = (char *)a;
    }
    va_end(ap);
    argv[argc] = NULL;
    assert_int_equal(harness_run(fx->b.dir, argv, stdin_data, CLI_TIMEOUT_MS, out), 0);
}

/* Runs a command that must succeed and print exactly want on stdout. */
static void cli_expect(struct it_fx *fx, const char *stdin_data, const char *want, ...)
{
    char *argv[MAX_ARGV];
    int argc = 0;
    argv[argc++] = getenv("FERRY_CLI");
    argv[argc++] = "--server";
    argv[argc++] = fx->b.addr;
    va_list ap;
    va_start(ap, want);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) {
        assert_true(argc < MAX_ARGV - 1);
        argv[argc++] = (char *)a;
    }
    va_end(ap);
    argv[argc] = NULL;
    struct harness_output out;
    assert_int_equal(harness_run(fx->b.dir, argv, stdin_data, CLI_TIMEOUT_MS, &out), 0);
    if (out.status != 0 || strcmp(out.out, want) != 0)
        print_error("ferry %s %s ...: exit %d\n stdout: \"%s\"\n want: \"%s\"\n stderr: %s\n",
                    argv[3], argc > 4 ? argv[4] : "", out.status, out.out, want, out.err);
    assert_int_equal(out.status, 0);
    assert_string_equal(out.out, want);
    harness_output_free(&out);
}

static void stop_clean(struct it_fx *fx)
{
    int st = harness_stop(&fx->b);
    if (st != 0)
        harness_dump_log(&fx->b);
    assert_int_equal(st, 0);
}

/* A failure is one line on stderr (ending in its only newline), nothing on
 * stdout, and an exit status 1..127 (not a signal). */
static void assert_one_line_failure(const struct harness_output *out)
{
    if (out->status == 0 || out->status > 127)
        print_error("exit %d\n stderr: %s\n", out->status, out->err);
    assert_in_range(out->status, 1, 127);
    assert_string_equal(out->out, "");
    assert_true(out->err_len > 1);
    assert_int_equal(out->err[out->err_len - 1], '\n');
    assert_ptr_equal(strchr(out->err, '\n'), out->err + out->err_len - 1);
}

/* ----- pub -------------------------------------------------------------- */

static void test_cli_pub_prints_sequence(void **state)
{
    struct it_fx *fx = *state;
    cli_expect(fx, NULL, "1\n", "pub", "t1", "hello", NULL);
    cli_expect(fx, NULL, "2\n", "pub", "t1", "world", NULL);
    cli_expect(fx, NULL, "1\n", "pub", "t2", "other", NULL);
    stop_clean(fx);
    struct harness_row *rows;
    long n = harness_db_rows(&fx->b, "t1", &rows);
    assert_int_equal(n, 2);
    assert_int_equal(rows[0].payload_len, 5);
    assert_memory_equal(rows[0].payload, "hello", 5);
    assert_memory_equal(rows[1].payload, "world", 5);
    assert_int_equal(strlen(rows[0].msg_id), 36); /* the broker made one */
    harness_db_rows_free(rows, n);
}

static void test_cli_pub_same_id_twice_prints_duplicate(void **state)
{
    struct it_fx *fx = *state;
    cli_expect(fx, NULL, "1\n", "pub", "t1", "hello", NULL);
    cli_expect(fx, NULL, "2\n", "pub", "--id", "x", "t1", "hello", NULL);
    cli_expect(fx, NULL, "2 duplicate\n", "pub", "--id", "x", "t1", "hello", NULL);
    cli_expect(fx, NULL, "3\n", "pub", "--id", "y", "t1", "hello", NULL);
    stop_clean(fx);
    struct harness_row *rows;
    long n = harness_db_rows(&fx->b, "t1", &rows);
    assert_int_equal(n, 3);
    assert_string_equal(rows[1].msg_id, "x");
    assert_string_equal(rows[2].msg_id, "y");
    harness_db_rows_free(rows, n);
}

static void test_cli_pub_stdin_one_message_per_line(void **state)
{
    struct it_fx *fx = *state;
    cli_expect(fx, "alpha\nbeta\ngamma\n", "1\n2\n3\n", "pub", "lines", NULL);
    /* A last line without its newline is still a message. */
    cli_expect(fx, "delta\nepsilon", "4\n5\n", "pub", "lines", NULL);
    stop_clean(fx);
    static const char *const want[] = {"alpha", "beta", "gamma", "delta", "epsilon"};
    struct harness_row *rows;
    long n = harness_db_rows(&fx->b, "lines", &rows);
    assert_int_equal(n, 5);
    for (long i = 0; i < n; i++) {
        assert_int_equal(rows[i].seq, (uint64_t)i + 1);
        assert_int_equal(rows[i].payload_len, strlen(want[i]));
        assert_memory_equal(rows[i].payload, want[i], strlen(want[i]));
    }
    harness_db_rows_free(rows, n);
}

static void test_cli_pub_key_and_headers_stored(void **state)
{
    struct it_fx *fx = *state;
    cli_expect(fx, NULL, "1\n", "pub", "--key", "K", "--header", "k=v", "--header", "trace=abc",
               "--id", "hk-1", "keyed", "body", NULL);

    /* bytes = key (1) + headers (1 + 1, 5 + 3) + payload (4). */
    ferry_conn *c = it_connect(fx->b.addr);
    ferry_topic_info ti;
    assert_int_equal(it_topic(c, "keyed", &ti), 1);
    assert_int_equal(ti.message_count, 1);
    assert_int_equal(ti.bytes, 1 + (1 + 1) + (5 + 3) + 4);
    ferry_close(c);

    stop_clean(fx);
    struct harness_row *rows;
    long n = harness_db_rows(&fx->b, "keyed", &rows);
    assert_int_equal(n, 1);
    assert_string_equal(rows[0].msg_id, "hk-1");
    assert_int_equal(rows[0].key_len, 1);
    assert_memory_equal(rows[0].key, "K", 1);
    assert_int_equal(rows[0].payload_len, 4);
    assert_memory_equal(rows[0].payload, "body", 4);
    static const uint8_t want_headers[] = {0,   2,   0,   1,   'k', 0, 1, 'v', 0,   5,
                                           't', 'r', 'a', 'c', 'e', 0, 3, 'a', 'b', 'c'};
    assert_int_equal(rows[0].headers_len, sizeof want_headers);
    assert_memory_equal(rows[0].headers, want_headers, sizeof want_headers);
    harness_db_rows_free(rows, n);
}

static void test_cli_pub_invalid_topic_fails_one_line(void **state)
{
    struct it_fx *fx = *state;
    struct harness_output out;
    cli_run(fx, NULL, NULL, &out, "pub", "bad topic", "x", NULL);
    assert_one_line_failure(&out);
    harness_output_free(&out);
}

/* ----- topics ----------------------------------------------------------- */

/* Publishes count messages of payload_len bytes to topic via libferry. */
static void fill_topic(const char *addr, const char *topic, int count, size_t payload_len)
{
    ferry_conn *c = it_connect(addr);
    uint8_t payload[64];
    it_payload(0, payload, sizeof payload);
    for (int i = 0; i < count; i++) {
        ferry_msg m;
        memset(&m, 0, sizeof m);
        m.topic = topic;
        m.payload = payload;
        m.payload_len = payload_len;
        ferry_ack ack;
        assert_int_equal(ferry_publish(c, &m, &ack), 0);
    }
    ferry_close(c);
}

/* Splits text into lines and each line into whitespace-separated tokens:
 * tok[line][i], at most 8 lines of 12 tokens. Returns the line count. */
#define MAX_LINES 8
#define MAX_TOKENS 12
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

/* One row of the table: name, messages, bytes, first, head, an ISO 8601
 * UTC time, the publish rate, no dead letters and no retention ("-"). */
static void assert_topic_row(char *const *tok, int ntok, const char *name, const char *messages,
                             const char *bytes, const char *first, const char *head)
{
    assert_int_equal(ntok, 9);
    assert_string_equal(tok[0], name);
    assert_string_equal(tok[1], messages);
    assert_string_equal(tok[2], bytes);
    assert_string_equal(tok[3], first);
    assert_string_equal(tok[4], head);
    assert_int_equal(strlen(tok[5]), 20); /* 2026-01-02T03:04:05Z */
    assert_int_equal(tok[5][10], 'T');
    assert_int_equal(tok[5][19], 'Z');
    assert_true(tok[6][0] >= '0' && tok[6][0] <= '9'); /* RATE */
    assert_string_equal(tok[7], "0");                  /* DEAD */
    assert_string_equal(tok[8], "-");                  /* RETENTION */
}

static void test_cli_topics_lists_counts(void **state)
{
    struct it_fx *fx = *state;
    fill_topic(fx->b.addr, "t2", 1, 7);
    fill_topic(fx->b.addr, "t1", 3, 10);

    struct harness_output out;
    cli_run(fx, NULL, NULL, &out, "topics", NULL);
    if (out.status != 0)
        print_error("ferry topics: exit %d\n stderr: %s\n", out.status, out.err);
    assert_int_equal(out.status, 0);
    char *tok[MAX_LINES][MAX_TOKENS];
    int ntok[MAX_LINES];
    /* A header, then one row per topic sorted by name. */
    assert_int_equal(split_table(out.out, tok, ntok), 3);
    assert_int_equal(ntok[0], 9);
    assert_string_equal(tok[0][0], "TOPIC");
    assert_string_equal(tok[0][1], "MESSAGES");
    assert_string_equal(tok[0][2], "BYTES");
    assert_string_equal(tok[0][4], "HEAD");
    assert_string_equal(tok[0][6], "RATE");
    assert_string_equal(tok[0][7], "DEAD");
    assert_string_equal(tok[0][8], "RETENTION");
    assert_topic_row(tok[1], ntok[1], "t1", "3", "30", "1", "3");
    assert_topic_row(tok[2], ntok[2], "t2", "1", "7", "1", "1");
    harness_output_free(&out);

    cli_run(fx, NULL, NULL, &out, "topics", "--json", NULL);
    if (out.status != 0)
        print_error("ferry topics --json: exit %d\n stderr: %s\n", out.status, out.err);
    assert_int_equal(out.status, 0);
    assert_int_equal(out.out[0], '[');
    assert_true(out.out_len >= 3);
    assert_string_equal(out.out + out.out_len - 2, "]\n");
    assert_non_null(strstr(out.out, "{\"topic\":\"t1\",\"messages\":3,\"bytes\":30,"
                                    "\"first_seq\":1,\"head_seq\":3,\"created_ms\":"));
    assert_non_null(strstr(out.out, "{\"topic\":\"t2\",\"messages\":1,\"bytes\":7,"
                                    "\"first_seq\":1,\"head_seq\":1,\"created_ms\":"));
    assert_null(strstr(out.out, "\"t3\""));
    harness_output_free(&out);
}

static void test_cli_topics_empty_broker(void **state)
{
    struct it_fx *fx = *state;
    struct harness_output out;
    cli_run(fx, NULL, NULL, &out, "topics", "--json", NULL);
    assert_int_equal(out.status, 0);
    assert_string_equal(out.out, "[]\n");
    harness_output_free(&out);
}

static void test_cli_pub_json_and_id_prefix(void **state)
{
    struct it_fx *fx = *state;
    cli_expect(fx, NULL, "{\"topic\":\"t1\",\"seq\":1,\"id\":\"j\",\"duplicate\":false}\n", "pub",
               "--json", "--id", "j", "t1", "x", NULL);
    cli_expect(fx, NULL, "{\"topic\":\"t1\",\"seq\":1,\"id\":\"j\",\"duplicate\":true}\n", "pub",
               "--json", "--id", "j", "t1", "x", NULL);
    /* A relay-like replay of the same input: ids from line numbers, so the
     * second run stores nothing. */
    cli_expect(fx, "one\ntwo\n", "2\n3\n", "pub", "--id-prefix", "line-", "t1", NULL);
    cli_expect(fx, "one\ntwo\n", "2 duplicate\n3 duplicate\n", "pub", "--id-prefix", "line-", "t1",
               NULL);
    stop_clean(fx);
    struct harness_row *rows;
    long n = harness_db_rows(&fx->b, "t1", &rows);
    assert_int_equal(n, 3);
    assert_string_equal(rows[1].msg_id, "line-1");
    assert_string_equal(rows[2].msg_id, "line-2");
    harness_db_rows_free(rows, n);
}

static void test_cli_usage_error_exits_2(void **state)
{
    struct it_fx *fx = *state;
    struct harness_output out;
    cli_run(fx, NULL, NULL, &out, "pub", NULL);
    assert_int_equal(out.status, 2);
    assert_string_equal(out.out, "");
    assert_true(out.err_len > 0);
    harness_output_free(&out);
    cli_run(fx, NULL, NULL, &out, "no-such-command", NULL);
    assert_int_equal(out.status, 2);
    harness_output_free(&out);
}

/* ----- errors ----------------------------------------------------------- */

static void test_cli_unreachable_broker_fails_one_line(void **state)
{
    struct it_fx *fx = *state;
    struct harness_output out;
    cli_run(fx, "127.0.0.1:1", NULL, &out, "pub", "t1", "x", NULL);
    assert_one_line_failure(&out);
    harness_output_free(&out);
    cli_run(fx, "127.0.0.1:1", NULL, &out, "topics", NULL);
    assert_one_line_failure(&out);
    harness_output_free(&out);
    cli_run(fx, "127.0.0.1:1", NULL, &out, "topics", "--json", NULL);
    assert_one_line_failure(&out);
    harness_output_free(&out);
}

/* sub --json: bytes that are not UTF-8 in the payload and key go to
 * payload_b64 / key_b64, in a header value become U+FFFD; control
 * characters are escaped; a repeated header name is once in headers (the
 * last value) and in order in header_list. */
static void test_cli_sub_json_bytes_and_headers(void **state)
{
    struct it_fx *fx = *state;
    ferry_conn *c = it_connect(fx->b.addr);
    ferry_header hs[] = {
        {.name = "h", .value = "v\xfe", .value_len = 2},
        {.name = "tab", .value = "a\tb\"\\", .value_len = 5},
        {.name = "h", .value = "2", .value_len = 1},
    };
    ferry_msg m;
    memset(&m, 0, sizeof m);
    m.topic = "raw";
    m.id = "m-1";
    m.key = "k\xff";
    m.key_len = 2;
    m.headers = hs;
    m.header_count = 3;
    m.payload = "a\xff\x00"
                "b";
    m.payload_len = 4;
    ferry_ack ack;
    assert_int_equal(ferry_publish(c, &m, &ack), 0);
    memset(&m, 0, sizeof m);
    m.topic = "raw";
    m.id = "plain";
    m.key = "k\xc3\xa9";
    m.key_len = 3;
    m.payload = "{\"x\":1}\n";
    m.payload_len = 8;
    assert_int_equal(ferry_publish(c, &m, &ack), 0);
    ferry_close(c);

    struct harness_output out;
    cli_run(fx, NULL, NULL, &out, "sub", "raw", "--group", "g", "--count", "2", "--json", NULL);
    if (out.status != 0)
        print_error("sub: exit %d\n stderr: %s\n", out.status, out.err);
    assert_int_equal(out.status, 0);
    const char *want1 =
        "{\"topic\":\"raw\",\"group\":\"g\",\"seq\":1,\"id\":\"m-1\",\"key_b64\":\"a/8=\","
        "\"headers\":{\"h\":\"2\",\"tab\":\"a\\tb\\\"\\\\\"},"
        "\"header_list\":[[\"h\",\"v\xef\xbf\xbd\"],[\"tab\",\"a\\tb\\\"\\\\\"],[\"h\",\"2\"]],"
        "\"attempt\":1,\"redelivered\":false,\"ts_ms\":";
    const char *tail1 = ",\"payload_b64\":\"Yf8AYg==\"}\n";
    const char *want2 = "{\"topic\":\"raw\",\"group\":\"g\",\"seq\":2,\"id\":\"plain\","
                        "\"key\":\"k\xc3\xa9\",\"headers\":{},\"attempt\":1,";
    const char *tail2 = ",\"payload\":\"{\\\"x\\\":1}\\n\"}\n";
    char *nl = strchr(out.out, '\n');
    assert_non_null(nl);
    if (strncmp(out.out, want1, strlen(want1)) != 0 || strncmp(nl + 1, want2, strlen(want2)) != 0)
        print_error("stdout: %s\n want: %s...%s\n %s...%s\n", out.out, want1, tail1, want2, tail2);
    assert_int_equal(strncmp(out.out, want1, strlen(want1)), 0);
    assert_int_equal(strncmp(nl + 1 - strlen(tail1), tail1, strlen(tail1)), 0);
    assert_int_equal(strncmp(nl + 1, want2, strlen(want2)), 0);
    assert_true(out.out_len > strlen(tail2));
    assert_string_equal(out.out + out.out_len - strlen(tail2), tail2);
    harness_output_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_cli_pub_prints_sequence, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_cli_pub_same_id_twice_prints_duplicate, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_cli_pub_stdin_one_message_per_line, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_cli_pub_key_and_headers_stored, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_cli_pub_invalid_topic_fails_one_line, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_cli_topics_lists_counts, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_cli_topics_empty_broker, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_cli_pub_json_and_id_prefix, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_cli_sub_json_bytes_and_headers, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_cli_usage_error_exits_2, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_cli_unreachable_broker_fails_one_line, setup,
                                        it_fx_teardown),
    };
    /* IT_FILTER=pattern runs only the matching tests (cmocka's wildcards). */
    if (getenv("IT_FILTER"))
        cmocka_set_test_filter(getenv("IT_FILTER"));
    return cmocka_run_group_tests_name("cli", tests, NULL, NULL);
}
