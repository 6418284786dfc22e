/*
 * test_peek.c - `ferry peek` and ferry_peek (PROTOCOL.md §9.17) beyond the
 * cases of test_consume.c, against the real ferryd:
 *
 *  - a dead-letter topic `_dead.T` peeks like any other: the dead letter
 *    of a group with max_deliveries 1 that nacked comes with the original's
 *    headers and the six ferry-dead-* ones, in order (ferry_peek and
 *    `ferry peek --json`), and peeking it consumes nothing;
 *  - `--time` (and from_time_ms) starts at the first message stored at or
 *    after the time, as Unix ms and as a UTC ISO 8601 time;
 *  - `--follow` runs as a child, prints a message published after it
 *    started, ends by itself after `--count`, and exits 0 on SIGTERM and
 *    on SIGINT (cmd_peek.c);
 *  - a token without the consume right on a topic gets DENIED from a peek,
 *    through libferry and the CLI, whether the topic exists or not, and
 *    the connection goes on.
 *
 * The CLI is the one meson built, named by FERRY_CLI.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "harness.h"
#include "it_util.h"

#define CLI_TIMEOUT_MS 30000
#define WAIT_MS 10000
#define MAX_ARGV 32

static int setup(void **state)
{
    if (!getenv("FERRY_CLI")) {
        fprintf(stderr, "setup: the environment variable FERRY_CLI is not set\n");
        return -1;
    }
    return it_fx_setup(state, sizeof(struct it_fx), NULL, "test_peek");
}

/* argv for `ferry --server ADDR [--token-file F] ARGS...` from the NULL-
 * terminated list ap. */
static void cli_argv(char **argv, const char *addr, const char *token_file, va_list ap)
{
    int argc = 0;
    argv[argc++] = getenv("FERRY_CLI");
    argv[argc++] = "--server";
    argv[argc++] = (char *)addr;
    if (token_file) {
        argv[argc++] = "--token-file";
        argv[argc++] = (char *)token_file;
    }
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) {
        assert_true(argc < MAX_ARGV - 1);
        argv[argc++] = (char *)a;
    }
    argv[argc] = NULL;
}

/* Runs the CLI to its end into *out. */
static void cli_run(const struct harness_broker *b, const char *token_file,
                    struct harness_output *out, ...)
{
    char *argv[MAX_ARGV];
    va_list ap;
    va_start(ap, out);
    cli_argv(argv, b->addr, token_file, ap);
    va_end(ap);
    assert_int_equal(harness_run(b->dir, argv, NULL, CLI_TIMEOUT_MS, out), 0);
}

/* Runs a CLI command that must exit 0 and print exactly want. */
static void cli_expect(const struct harness_broker *b, const char *want, ...)
{
    char *argv[MAX_ARGV];
    va_list ap;
    va_start(ap, want);
    cli_argv(argv, b->addr, NULL, ap);
    va_end(ap);
    struct harness_output out;
    assert_int_equal(harness_run(b->dir, argv, NULL, CLI_TIMEOUT_MS, &out), 0);
    if (out.status != 0 || strcmp(out.out, want) != 0)
        fail_msg("ferry %s %s ...: exit %d\n stdout: \"%s\"\n want:   \"%s\"\n stderr: %s", argv[3],
                 argv[4] ? argv[4] : "", out.status, out.out, want, out.err);
    harness_output_free(&out);
}

static uint64_t publish(ferry_conn *c, const char *topic, const char *payload,
                        const ferry_header *h, size_t nh)
{
    ferry_msg m = {.topic = topic, .payload = payload, .payload_len = strlen(payload)};
    m.headers = h;
    m.header_count = nh;
    ferry_ack ack;
    int rc = ferry_publish(c, &m, &ack);
    if (rc != 0)
        fail_msg("publish %s to %s: %s (%s)", payload, topic, ferry_strerror(rc), ferry_errmsg(c));
    return ack.seq;
}

static const char *header(const ferry_delivery *d, size_t i, const char *name)
{
    if (i >= d->header_count)
        fail_msg("seq %" PRIu64 " has %zu headers, no header %zu (%s)", d->seq, d->header_count, i,
                 name);
    if (strcmp(d->headers[i].name, name) != 0)
        fail_msg("header %zu is %s, want %s", i, d->headers[i].name, name);
    return (const char *)d->headers[i].value;
}

static void expect_header(const ferry_delivery *d, size_t i, const char *name, const char *want)
{
    const char *v = header(d, i, name);
    size_t n = d->headers[i].value_len;
    if (n != strlen(want) || memcmp(v, want, n) != 0)
        fail_msg("header %s is \"%.*s\", want \"%s\"", name, (int)n, v, want);
}

/* ----- dead letters ----------------------------------------------------- */

/* Peeks topic until it holds at least want messages (the dead letter is
 * published by the group commit after the nack's reply). */
static void peek_until(ferry_conn *c, const char *topic, size_t want, ferry_peek_result *r)
{
    int64_t end = harness_now_ms() + WAIT_MS * harness_slowdown();
    for (;;) {
        int rc = ferry_peek(c, topic, NULL, r);
        if (rc == 0 && r->count >= want)
            return;
        if (rc != 0 && rc != FERRY_EUNKNOWN_TOPIC)
            fail_msg("peek %s: %s (%s)", topic, ferry_strerror(rc), ferry_errmsg(c));
        ferry_peek_result_free(r);
        if (harness_now_ms() > end)
            fail_msg("%s holds fewer than %zu messages after %d ms", topic, want, WAIT_MS);
        it_sleep_ms(20);
    }
}

static void test_peek_dead_letter_topic(void **state)
{
    struct it_fx *fx = *state;
    const ferry_header hs[] = {{"trace", "abc", 3}, {"content-type", "text/plain", 10}};
    ferry_msg m = {.topic = "orders", .id = "order-42", .payload = "poison", .payload_len = 6};
    m.key = "cust-7";
    m.key_len = 6;
    m.headers = hs;
    m.header_count = 2;
    ferry_ack ack;
    assert_int_equal(ferry_publish(fx->c, &m, &ack), 0);
    assert_int_equal(ack.seq, 1);

    /* One attempt only, nacked: dead at once. */
    ferry_sub_options so = FERRY_SUB_OPTIONS_INIT;
    so.start = FERRY_START_EARLIEST;
    so.max_deliveries = 1;
    ferry_sub *s = NULL;
    assert_int_equal(ferry_subscribe(fx->c, "orders", "inventory", &so, &s), 0);
    ferry_delivery *d = NULL;
    assert_int_equal(ferry_receive(fx->c, WAIT_MS, &d), 0);
    assert_int_equal(d->seq, 1);
    assert_int_equal(d->attempt, 1);
    assert_int_equal(ferry_delivery_nack(d, 0, "bad sku"), 0);
    ferry_delivery_free(d);

    ferry_conn *p = it_connect(fx->b.addr);
    ferry_peek_result r;
    peek_until(p, "_dead.orders", 1, &r);
    assert_int_equal(r.count, 1);
    assert_int_equal(r.head_seq, 1);
    assert_int_equal(r.next_seq, 2);
    const ferry_delivery *x = r.msgs[0];
    assert_string_equal(x->topic, "_dead.orders");
    assert_int_equal(x->seq, 1);
    assert_int_equal(x->attempt, 0);
    assert_null(x->group);
    assert_string_not_equal(x->id, "order-42"); /* the dead letter's own, broker-assigned */
    assert_int_equal(x->key_len, 6);
    assert_memory_equal(x->key, "cust-7", 6);
    assert_int_equal(x->payload_len, 6);
    assert_memory_equal(x->payload, "poison", 6);
    assert_int_equal(x->header_count, 2 + 6);
    expect_header(x, 0, "trace", "abc");
    expect_header(x, 1, "content-type", "text/plain");
    expect_header(x, 2, "ferry-dead-topic", "orders");
    expect_header(x, 3, "ferry-dead-seq", "1");
    expect_header(x, 4, "ferry-dead-group", "inventory");
    expect_header(x, 5, "ferry-dead-attempts", "1");
    expect_header(x, 6, "ferry-dead-reason", "nacked: bad sku");
    expect_header(x, 7, "ferry-dead-id", "order-42");
    char dead_id[129];
    snprintf(dead_id, sizeof dead_id, "%s", x->id);
    ferry_peek_result_free(&r);

    /* The CLI shows the same, headers and all. */
    cli_expect(&fx->b, "1\tpoison\n", "peek", "_dead.orders", NULL);
    struct harness_output out;
    cli_run(&fx->b, NULL, &out, "peek", "_dead.orders", "--json", NULL);
    assert_int_equal(out.status, 0);
    json_error_t jerr;
    json_t *o = json_loads(out.out, JSON_DISABLE_EOF_CHECK, &jerr);
    if (!o || out.out[out.out_len - 1] != '\n' ||
        strchr(out.out, '\n') != out.out + out.out_len - 1)
        fail_msg("ferry peek --json: not one JSON line: %s (%s)", out.out, jerr.text);
    assert_string_equal(json_string_value(json_object_get(o, "topic")), "_dead.orders");
    assert_int_equal(json_integer_value(json_object_get(o, "seq")), 1);
    assert_string_equal(json_string_value(json_object_get(o, "id")), dead_id);
    assert_string_equal(json_string_value(json_object_get(o, "payload")), "poison");
    assert_null(json_object_get(o, "group"));
    assert_null(json_object_get(o, "attempt"));
    json_t *h = json_object_get(o, "headers");
    assert_int_equal(json_object_size(h), 8);
    static const char *const want[][2] = {
        {"trace", "abc"},
        {"content-type", "text/plain"},
        {"ferry-dead-topic", "orders"},
        {"ferry-dead-seq", "1"},
        {"ferry-dead-group", "inventory"},
        {"ferry-dead-attempts", "1"},
        {"ferry-dead-reason", "nacked: bad sku"},
        {"ferry-dead-id", "order-42"},
    };
    for (size_t i = 0; i < 8; i++) {
        const char *v = json_string_value(json_object_get(h, want[i][0]));
        if (!v || strcmp(v, want[i][1]) != 0)
            fail_msg("--json headers.%s is %s, want %s", want[i][0], v ? v : "missing", want[i][1]);
    }
    json_decref(o);
    harness_output_free(&out);

    /* Peeking consumed nothing: a group on the dead letters still gets it,
     * at attempt 1, and the original group's dead count is one. */
    ferry_sub *ds = NULL;
    ferry_sub_options dso = FERRY_SUB_OPTIONS_INIT;
    dso.start = FERRY_START_EARLIEST;
    assert_int_equal(ferry_subscribe(p, "_dead.orders", "ops", &dso, &ds), 0);
    assert_int_equal(ferry_receive(p, WAIT_MS, &d), 0);
    assert_int_equal(d->seq, 1);
    assert_int_equal(d->attempt, 1);
    assert_int_equal(ferry_delivery_ack(d), 0);
    ferry_delivery_free(d);
    ferry_group_info *gi = NULL;
    size_t n = 0;
    assert_int_equal(ferry_groups(p, "orders", &gi, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(gi[0].dead_lettered, 1);
    ferry_groups_free(gi);
    ferry_close(p);
}

/* ----- --time ----------------------------------------------------------- */

static void sleep_until_wall(int64_t t)
{
    while (harness_wall_ms() < t)
        it_sleep_ms(5);
}

static void test_peek_from_time(void **state)
{
    struct it_fx *fx = *state;
    publish(fx->c, "orders", "m1", NULL, 0);
    publish(fx->c, "orders", "m2", NULL, 0);
    /* A whole second after m2, so that the ISO form (to the second) falls
     * between the two pairs as well. */
    int64_t t = (harness_wall_ms() / 1000 + 1) * 1000;
    sleep_until_wall(t + 20);
    publish(fx->c, "orders", "m3", NULL, 0);
    publish(fx->c, "orders", "m4", NULL, 0);

    ferry_peek_options po = FERRY_PEEK_OPTIONS_INIT;
    po.from_time_ms = t;
    ferry_peek_result r;
    assert_int_equal(ferry_peek(fx->c, "orders", &po, &r), 0);
    assert_int_equal(r.count, 2);
    assert_int_equal(r.msgs[0]->seq, 3);
    assert_int_equal(r.msgs[1]->seq, 4);
    assert_true(r.msgs[0]->ts_ms >= t);
    assert_int_equal(r.next_seq, 5);
    int64_t ts3 = r.msgs[0]->ts_ms;
    ferry_peek_result_free(&r);
    /* "At or after": from m3's own time exactly, m3 is the first. */
    po.from_time_ms = ts3;
    assert_int_equal(ferry_peek(fx->c, "orders", &po, &r), 0);
    assert_true(r.count >= 1);
    assert_int_equal(r.msgs[0]->seq, 3);
    ferry_peek_result_free(&r);
    po.from_time_ms = 1; /* long ago: everything */
    assert_int_equal(ferry_peek(fx->c, "orders", &po, &r), 0);
    assert_int_equal(r.count, 4);
    assert_true(r.msgs[1]->ts_ms < t);
    ferry_peek_result_free(&r);

    char ms[32], iso[32];
    snprintf(ms, sizeof ms, "%" PRId64 "ms", t);
    time_t secs = (time_t)(t / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    strftime(iso, sizeof iso, "%Y-%m-%dT%H:%M:%SZ", &tm);
    cli_expect(&fx->b, "3\tm3\n4\tm4\n", "peek", "orders", "--time", ms, NULL);
    cli_expect(&fx->b, "3\tm3\n4\tm4\n", "peek", "orders", "--time", iso, NULL);
    cli_expect(&fx->b, "3\tm3\n", "peek", "orders", "--time", iso, "--count", "1", NULL);
    /* After the last message: nothing, and success. */
    snprintf(ms, sizeof ms, "%" PRId64 "ms", harness_wall_ms() + 60000);
    cli_expect(&fx->b, "", "peek", "orders", "--time", ms, NULL);
    /* --time and --from exclude each other: a usage error. */
    struct harness_output out;
    cli_run(&fx->b, NULL, &out, "peek", "orders", "--time", iso, "--from", "2", NULL);
    assert_int_equal(out.status, 2);
    assert_string_equal(out.out, "");
    harness_output_free(&out);
}

/* ----- --follow --------------------------------------------------------- */

struct child {
    pid_t pid;
    char out_path[HARNESS_PATH_BYTES + 32];
    char err_path[HARNESS_PATH_BYTES + 32];
};

/* Starts `ferry --server ADDR ARGS...` with stdout and stderr in files. */
static void spawn(const struct harness_broker *b, struct child *ch, const char *tag, ...)
{
    char *argv[MAX_ARGV];
    va_list ap;
    va_start(ap, tag);
    cli_argv(argv, b->addr, NULL, ap);
    va_end(ap);
    snprintf(ch->out_path, sizeof ch->out_path, "%s/%s.out", b->dir, tag);
    snprintf(ch->err_path, sizeof ch->err_path, "%s/%s.err", b->dir, tag);
    int outfd = open(ch->out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int errfd = open(ch->err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int infd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    assert_true(outfd >= 0 && errfd >= 0 && infd >= 0);
    ch->pid = fork();
    assert_true(ch->pid >= 0);
    if (ch->pid == 0) {
        dup2(infd, STDIN_FILENO);
        dup2(outfd, STDOUT_FILENO);
        dup2(errfd, STDERR_FILENO);
        execv(argv[0], argv);
        _exit(127);
    }
    close(outfd);
    close(errfd);
    close(infd);
}

/* Waits until the child's stdout is exactly want; fails at once when it
 * is not a beginning of want. */
static void wait_output(const struct child *ch, const char *want)
{
    int64_t end = harness_now_ms() + WAIT_MS * harness_slowdown();
    for (;;) {
        size_t n;
        char *got = harness_slurp(ch->out_path, &n);
        assert_non_null(got);
        int same = strcmp(got, want) == 0;
        if (same) {
            free(got);
            return;
        }
        if (harness_now_ms() > end || strncmp(got, want, n) != 0) {
            size_t en;
            char *err = harness_slurp(ch->err_path, &en);
            fail_msg("ferry peek --follow printed \"%s\", want \"%s\" (stderr: %s)", got, want,
                     err ? err : "");
        }
        free(got);
        it_sleep_ms(20);
    }
}

/* Waits for the child's exit. Returns its status, 128 + signal, or -1
 * after killing it when it did not end within WAIT_MS. */
static int wait_child(struct child *ch)
{
    int64_t end = harness_now_ms() + WAIT_MS * harness_slowdown();
    int st;
    for (;;) {
        pid_t r = waitpid(ch->pid, &st, WNOHANG);
        if (r == ch->pid)
            break;
        assert_true(r == 0 || errno == EINTR);
        if (harness_now_ms() > end) {
            kill(ch->pid, SIGKILL);
            waitpid(ch->pid, NULL, 0);
            ch->pid = 0;
            return -1;
        }
        it_sleep_ms(10);
    }
    ch->pid = 0;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void expect_stderr_empty(const struct child *ch)
{
    size_t n;
    char *err = harness_slurp(ch->err_path, &n);
    assert_non_null(err);
    if (n != 0)
        fail_msg("ferry peek --follow wrote to stderr: %s", err);
    free(err);
}

static void follow_then_signal(struct it_fx *fx, int sig, const char *tag)
{
    struct child ch;
    spawn(&fx->b, &ch, tag, "peek", "follow", "--follow", NULL);
    wait_output(&ch, "1\tf1\n");
    /* Published after it reached the head: its next poll finds it. */
    publish(fx->c, "follow", "f2", NULL, 0);
    wait_output(&ch, "1\tf1\n2\tf2\n");
    publish(fx->c, "follow", "f3\nmore", NULL, 0);
    wait_output(&ch, "1\tf1\n2\tf2\n3\tf3\\nmore\n");
    /* Still running: follow does not stop at the head. */
    assert_int_equal(waitpid(ch.pid, NULL, WNOHANG), 0);
    assert_int_equal(kill(ch.pid, sig), 0);
    int st = wait_child(&ch);
    if (st != 0)
        fail_msg("ferry peek --follow after signal %d exited %d, want 0", sig, st);
    expect_stderr_empty(&ch);
    wait_output(&ch, "1\tf1\n2\tf2\n3\tf3\\nmore\n");
}

static void test_peek_follow(void **state)
{
    struct it_fx *fx = *state;
    publish(fx->c, "follow", "f1", NULL, 0);
    follow_then_signal(fx, SIGTERM, "follow-term");
}

static void test_peek_follow_sigint_and_count(void **state)
{
    struct it_fx *fx = *state;
    publish(fx->c, "follow", "f1", NULL, 0);
    follow_then_signal(fx, SIGINT, "follow-int");

    /* --count ends a follow by itself once N messages are printed, the
     * last of them published while it waits; --json lines as it goes. */
    struct child ch;
    spawn(&fx->b, &ch, "follow-count", "peek", "follow", "--from", "3", "--follow", "--count", "2",
          "--json", NULL);
    int64_t end = harness_now_ms() + WAIT_MS * harness_slowdown();
    size_t n = 0;
    char *got;
    while ((got = harness_slurp(ch.out_path, &n)) && n == 0 && harness_now_ms() < end) {
        free(got);
        it_sleep_ms(20);
    }
    assert_non_null(got);
    assert_non_null(strstr(got, "\"seq\":3"));
    free(got);
    assert_int_equal(waitpid(ch.pid, NULL, WNOHANG), 0);
    publish(fx->c, "follow", "f4", NULL, 0);
    int st = wait_child(&ch);
    assert_int_equal(st, 0);
    expect_stderr_empty(&ch);
    got = harness_slurp(ch.out_path, &n);
    assert_non_null(got);
    char *nl = strchr(got, '\n');
    assert_non_null(nl);
    assert_non_null(strstr(nl + 1, "\"seq\":4"));
    assert_non_null(strstr(nl + 1, "\"payload\":\"f4\""));
    assert_int_equal(got[n - 1], '\n');
    assert_ptr_equal(strchr(nl + 1, '\n'), got + n - 1);
    free(got);
}

/* ----- the consume right ------------------------------------------------ */

#define READER_SECRET "reader-secret-0123456789abc"
#define WRITER_SECRET "writer-secret-abcdefghijklm"

struct auth_fx {
    struct it_fx fx; /* first: it_fx_teardown frees it */
    char conf[HARNESS_PATH_BYTES + 32];
    char reader_file[HARNESS_PATH_BYTES + 32];
    char writer_file[HARNESS_PATH_BYTES + 32];
};

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, 0600), 0);
}

static int setup_auth(void **state)
{
    if (!getenv("FERRY_CLI")) {
        fprintf(stderr, "setup: the environment variable FERRY_CLI is not set\n");
        return -1;
    }
    struct auth_fx *a = calloc(1, sizeof *a);
    if (!a)
        return -1;
    *state = a;
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(a->conf, sizeof a->conf, "%s/ferry-peek-auth-XXXXXX", tmp);
    int fd = mkstemp(a->conf);
    if (fd < 0)
        return -1;
    FILE *f = fdopen(fd, "w");
    if (!f)
        return -1;
    fprintf(f, "[broker]\n"
               "sync = normal\n"
               "\n"
               "[token reader]\n"
               "secret = " READER_SECRET "\n"
               "consume = orders\n"
               "\n"
               "[token writer]\n"
               "secret = " WRITER_SECRET "\n"
               "publish = *\n");
    fclose(f);
    chmod(a->conf, 0600);
    const char *args[] = {"--config", a->conf, NULL};
    return harness_start(&a->fx.b, args) == 0 ? 0 : -1;
}

static int teardown_auth(void **state)
{
    struct auth_fx *a = *state;
    if (a && a->conf[0])
        unlink(a->conf);
    return it_fx_teardown(state);
}

static ferry_conn *connect_as(const char *addr, const char *secret)
{
    ferry_options o = FERRY_OPTIONS_INIT;
    o.token = secret;
    ferry_conn *c = NULL;
    char err[256] = "";
    int rc = ferry_connect(addr, &o, &c, err, sizeof err);
    if (rc != 0)
        fail_msg("connect: %s (%s)", ferry_strerror(rc), err);
    return c;
}

static void expect_denied(ferry_conn *c, const char *topic, const char *token)
{
    ferry_peek_result r;
    int rc = ferry_peek(c, topic, NULL, &r);
    if (rc != FERRY_EDENIED)
        fail_msg("peek %s as %s: %d %s (%s), want DENIED", topic, token, rc, ferry_strerror(rc),
                 ferry_errmsg(c));
    assert_int_equal(r.count, 0);
    ferry_peek_result_free(&r);
    char want[256];
    snprintf(want, sizeof want, "token %s may not consume %s", token, topic);
    if (!strstr(ferry_errmsg(c), want))
        fail_msg("peek %s as %s: \"%s\", want \"%s\"", topic, token, ferry_errmsg(c), want);
}

static void test_peek_denied_without_consume_right(void **state)
{
    struct auth_fx *a = *state;
    const struct harness_broker *b = &a->fx.b;
    ferry_conn *w = connect_as(b->addr, WRITER_SECRET);
    publish(w, "orders", "o1", NULL, 0);
    publish(w, "payments", "p1", NULL, 0);

    /* The writer may publish but not consume: no peek anywhere, a topic
     * that does not exist included (DENIED, not UNKNOWN_TOPIC). */
    expect_denied(w, "orders", "writer");
    expect_denied(w, "payments", "writer");
    expect_denied(w, "nosuch", "writer");
    /* The connection goes on. */
    publish(w, "orders", "o2", NULL, 0);
    ferry_close(w);

    /* The reader consumes orders only: its dead letters are another topic. */
    ferry_conn *r = connect_as(b->addr, READER_SECRET);
    expect_denied(r, "payments", "reader");
    expect_denied(r, "_dead.orders", "reader");
    ferry_peek_result pr;
    assert_int_equal(ferry_peek(r, "orders", NULL, &pr), 0);
    assert_int_equal(pr.count, 2);
    ferry_peek_result_free(&pr);
    ferry_close(r);

    /* The CLI: exit 1, one line on stderr, nothing printed. */
    snprintf(a->reader_file, sizeof a->reader_file, "%s/reader.token", b->dir);
    snprintf(a->writer_file, sizeof a->writer_file, "%s/writer.token", b->dir);
    write_file(a->reader_file, READER_SECRET "\n");
    write_file(a->writer_file, WRITER_SECRET "\n");
    struct harness_output out;
    cli_run(b, a->writer_file, &out, "peek", "orders", NULL);
    if (out.status != 1 || out.out_len != 0 ||
        !strstr(out.err, "token writer may not consume orders") ||
        strchr(out.err, '\n') != out.err + out.err_len - 1)
        fail_msg("ferry peek as writer: exit %d\n stdout: %s\n stderr: %s", out.status, out.out,
                 out.err);
    harness_output_free(&out);
    cli_run(b, a->reader_file, &out, "peek", "payments", "--follow", NULL);
    if (out.status != 1 || out.out_len != 0 ||
        !strstr(out.err, "token reader may not consume payments"))
        fail_msg("ferry peek --follow as reader: exit %d\n stdout: %s\n stderr: %s", out.status,
                 out.out, out.err);
    harness_output_free(&out);
    cli_run(b, a->reader_file, &out, "peek", "orders", NULL);
    assert_int_equal(out.status, 0);
    assert_string_equal(out.out, "1\to1\n2\to2\n");
    harness_output_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_peek_dead_letter_topic, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_peek_from_time, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_peek_follow, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_peek_follow_sigint_and_count, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_peek_denied_without_consume_right, setup_auth,
                                        teardown_auth),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
