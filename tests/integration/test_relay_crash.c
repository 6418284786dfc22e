/*
 * test_relay_crash.c - the outbox's guarantee through crashes, with real
 * processes and real SIGKILLs:
 *   - a producer killed right after its COMMIT, before any relay ran: the
 *     event is delivered once a relay starts;
 *   - a relay killed after the broker acked a batch but before it marked
 *     the rows (the FERRY_RELAY_CRASH_AFTER_ACK hook): the re-publish is
 *     acked as duplicate and nothing is stored twice, also when the
 *     broker's message-id window has long passed (the producer mark);
 *   - two relays on one database: one publishes, the other stands by and
 *     takes over when the first is killed;
 *   - a relay started while the broker is down, and a broker killed under
 *     a relay with a backlog: it reconnects and catches up.
 * "Nothing stored twice" is checked white-box in the broker's messages_v
 * after stopping it: every payload once, in outbox order.
 */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "it_util.h"
#include "relay_it.h"

#define WAIT_MS 30000

struct fx {
    struct it_fx it;
    char db_path[HARNESS_PATH_BYTES + 16];
    char log_a[HARNESS_PATH_BYTES + 16];
    char log_b[HARNESS_PATH_BYTES + 16];
    sqlite3 *db;
    pid_t relay_a, relay_b;
};

static int setup_args(void **state, const char *const *args)
{
    if (!getenv("FERRY_CLI")) {
        fprintf(stderr, "setup: the environment variable FERRY_CLI is not set\n");
        return -1;
    }
    if (it_fx_start(state, sizeof(struct fx), args) != 0)
        return -1;
    struct fx *fx = *state;
    snprintf(fx->db_path, sizeof fx->db_path, "%s/app.db", fx->it.b.dir);
    snprintf(fx->log_a, sizeof fx->log_a, "%s/relay-a.log", fx->it.b.dir);
    snprintf(fx->log_b, sizeof fx->log_b, "%s/relay-b.log", fx->it.b.dir);
    return 0;
}

static int setup(void **state)
{
    return setup_args(state, NULL);
}

/* The broker forgets message ids after 1 ms: only the producer mark can
 * recognise a re-publish. */
static int setup_no_id_window(void **state)
{
    static const char *const args[] = {"--dedupe-window-ms", "1", NULL};
    return setup_args(state, args);
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    int rc = 0;
    if (fx) {
        if (fx->relay_a > 0)
            rit_kill9(fx->relay_a);
        if (fx->relay_b > 0)
            rit_kill9(fx->relay_b);
        if (fx->db)
            sqlite3_close(fx->db);
        const char *logs[] = {fx->log_a, fx->log_b};
        for (int i = 0; i < 2; i++) {
            if (it_file_has(logs[i], "runtime error:") || it_file_has(logs[i], "Sanitizer")) {
                rit_dump(logs[i]);
                rc = -1;
            }
        }
    }
    int log_rc = it_fx_teardown(state);
    return rc ? rc : log_rc;
}

/* Stops the broker and asserts that topic holds exactly the payloads
 * "<prefix>-<i>" for i in [0, n), once each, in that order. */
static void assert_stored_once(struct fx *fx, const char *topic, const char *prefix, long n)
{
    int st = harness_stop(&fx->it.b);
    if (st != 0)
        harness_dump_log(&fx->it.b);
    assert_int_equal(st, 0);
    struct harness_row *rows = NULL;
    long got = harness_db_rows(&fx->it.b, topic, &rows);
    if (got != n)
        print_error("%s holds %ld messages, want %ld\n", topic, got, n);
    assert_int_equal(got, n);
    for (long i = 0; i < n; i++) {
        char want[64];
        int len = snprintf(want, sizeof want, "%s-%ld", prefix, i);
        if (rows[i].payload_len != (size_t)len || memcmp(rows[i].payload, want, (size_t)len) != 0)
            print_error("message %ld is \"%.*s\", want \"%s\"\n", i, (int)rows[i].payload_len,
                        (const char *)rows[i].payload, want);
        assert_int_equal(rows[i].payload_len, len);
        assert_memory_equal(rows[i].payload, want, (size_t)len);
        assert_int_equal(rows[i].seq, (uint64_t)i + 1);
    }
    harness_db_rows_free(rows, got);
}

/* ----- producer killed after its commit ----------------------------------- */

/* In a child: one business transaction (the order and its event), COMMIT,
 * then SIGKILL itself before anything else can happen. */
static void producer_child(const char *path, int order)
{
    sqlite3 *db = NULL;
    if (sqlite3_open(path, &db) != SQLITE_OK)
        _exit(2);
    sqlite3_busy_timeout(db, 10000);
    if (ferry_outbox_install(db) != 0)
        _exit(3);
    char sql[128], payload[32], id[32];
    snprintf(sql, sizeof sql, "INSERT INTO orders(id, total) VALUES (%d, %d)", order, order * 10);
    int len = snprintf(payload, sizeof payload, "order-%d", order);
    snprintf(id, sizeof id, "order-%d", order);
    ferry_msg m;
    memset(&m, 0, sizeof m);
    m.topic = "orders";
    m.id = id;
    m.payload = payload;
    m.payload_len = (size_t)len;
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK ||
        ferry_outbox_put(db, &m, NULL) != 0 ||
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        _exit(4);
    raise(SIGKILL); /* no close, no checkpoint, no relay */
    _exit(5);
}

static void test_producer_killed_after_commit_event_delivered(void **state)
{
    struct fx *fx = *state;
    fx->db = rit_app_open(fx->db_path);
    assert_int_equal(sqlite3_exec(fx->db, "CREATE TABLE orders(id INTEGER PRIMARY KEY, total INT)",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(fx->db);
    fx->db = NULL;

    enum { N = 10 };
    for (int i = 0; i < N; i++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
            producer_child(fx->db_path, i);
        int st;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    }
    /* Committed, not yet published: waiting in the outbox. */
    assert_int_equal(rit_count(fx->db_path, "sent_ms IS NULL"), N);
    assert_int_equal(rit_topic_count(fx->it.b.addr, "orders"), 0);

    fx->relay_a = rit_relay_start(fx->db_path, fx->it.b.addr, fx->log_a, NULL, NULL);
    assert_true(rit_wait_drained(fx->db_path, WAIT_MS));
    ferry_conn *c = it_connect(fx->it.b.addr);
    ferry_sub_options so = FERRY_SUB_OPTIONS_INIT;
    ferry_sub *s = NULL;
    assert_int_equal(ferry_subscribe(c, "orders", "inventory", &so, &s), 0);
    for (int i = 0; i < N; i++) {
        ferry_delivery *d = NULL;
        assert_int_equal(ferry_receive(c, WAIT_MS, &d), 0);
        char want[32];
        snprintf(want, sizeof want, "order-%d", i);
        assert_string_equal(d->id, want);
        assert_int_equal(d->payload_len, strlen(want));
        assert_memory_equal(d->payload, want, d->payload_len);
        assert_int_equal(ferry_delivery_ack(d), 0);
        ferry_delivery_free(d);
    }
    ferry_close(c);
    assert_int_equal(rit_relay_stop(fx->relay_a), 0);
    fx->relay_a = 0;
}

/* ----- relay killed between the ack and the mark -------------------------- */

static void crash_after_ack(struct fx *fx, int expect_forgotten)
{
    enum { N = 2500 };
    fx->db = rit_app_open(fx->db_path);
    rit_put_n(fx->db, "orders", "o", 0, N);

    /* The first relay dies right after the broker acked its first batch
     * (1000 rows), before marking them. */
    fx->relay_a =
        rit_relay_start(fx->db_path, fx->it.b.addr, fx->log_a, NULL, FERRY_RELAY_CRASH_ENV "=1");
    int st = rit_wait_exit(fx->relay_a, WAIT_MS);
    fx->relay_a = 0;
    if (st != 9)
        rit_dump(fx->log_a);
    assert_int_equal(st, 9);
    assert_true(it_file_has(fx->log_a, "before marking them sent"));
    assert_int_equal(rit_topic_count(fx->it.b.addr, "orders"), 1000);
    assert_int_equal(rit_count(fx->db_path, "sent_ms IS NULL"), N); /* none marked */

    if (expect_forgotten)
        it_sleep_ms(50); /* well past the broker's 1 ms id window */

    /* The next relay publishes everything again: the first 1000 are acked
     * as duplicates, the rest stored. */
    fx->relay_b = rit_relay_start(fx->db_path, fx->it.b.addr, fx->log_b, NULL, NULL);
    assert_true(rit_wait_drained(fx->db_path, WAIT_MS));
    assert_true(rit_wait_log(fx->log_b, "1000 of seq 1-1000 were already stored", WAIT_MS));
    assert_int_equal(rit_relay_stop(fx->relay_b), 0);
    fx->relay_b = 0;
    assert_int_equal(rit_topic_count(fx->it.b.addr, "orders"), N);
    if (expect_forgotten) /* acked without its original sequence */
        assert_int_equal(rit_count(fx->db_path, "seq <= 1000 AND broker_seq = 0"), 1000);
    else
        assert_int_equal(rit_count(fx->db_path, "broker_seq = seq"), N);
    assert_int_equal(rit_count(fx->db_path, "seq > 1000 AND broker_seq = seq"), N - 1000);
    assert_stored_once(fx, "orders", "o", N);
}

static void test_relay_killed_after_ack_republish_is_duplicate(void **state)
{
    crash_after_ack(*state, 0);
}

static void test_relay_killed_after_ack_duplicate_beyond_the_id_window(void **state)
{
    crash_after_ack(*state, 1);
}

/* ----- two relays ---------------------------------------------------------- */

static void test_two_relays_one_active_second_takes_over(void **state)
{
    struct fx *fx = *state;
    fx->db = rit_app_open(fx->db_path);
    fx->relay_a = rit_relay_start(fx->db_path, fx->it.b.addr, fx->log_a, NULL, NULL);
    assert_true(rit_wait_log(fx->log_a, "connected to", WAIT_MS));
    fx->relay_b = rit_relay_start(fx->db_path, fx->it.b.addr, fx->log_b, NULL, NULL);
    assert_true(rit_wait_log(fx->log_b, "standing by", WAIT_MS));
    char want[64];
    snprintf(want, sizeof want, "another relay (pid %d)", (int)fx->relay_a);
    assert_true(it_file_has(fx->log_b, want));

    for (int i = 0; i < 10; i++)
        rit_put_n(fx->db, "orders", "o", i * 100, 100);
    assert_true(rit_wait_drained(fx->db_path, WAIT_MS));
    assert_int_equal(rit_topic_count(fx->it.b.addr, "orders"), 1000);
    /* Only the active one connected to the broker. */
    assert_false(it_file_has(fx->log_b, "connected to"));
    assert_int_equal(it_file_count(fx->log_b, "standing by"), 1); /* logged once */

    rit_kill9(fx->relay_a);
    fx->relay_a = 0;
    assert_true(rit_wait_log(fx->log_b, "taking over", WAIT_MS));
    for (int i = 10; i < 20; i++)
        rit_put_n(fx->db, "orders", "o", i * 100, 100);
    assert_true(rit_wait_drained(fx->db_path, WAIT_MS));
    assert_true(it_file_has(fx->log_b, "connected to"));

    /* A third one now stands by behind the second. */
    fx->relay_a = rit_relay_start(fx->db_path, fx->it.b.addr, fx->log_a, NULL, NULL);
    snprintf(want, sizeof want, "another relay (pid %d)", (int)fx->relay_b);
    assert_true(rit_wait_log(fx->log_a, want, WAIT_MS));
    assert_int_equal(rit_relay_stop(fx->relay_b), 0);
    fx->relay_b = 0;
    assert_true(rit_wait_log(fx->log_a, "taking over", WAIT_MS));
    rit_put_n(fx->db, "orders", "o", 2000, 100);
    assert_true(rit_wait_drained(fx->db_path, WAIT_MS));
    assert_int_equal(rit_relay_stop(fx->relay_a), 0);
    fx->relay_a = 0;
    assert_stored_once(fx, "orders", "o", 2100);
}

/* ----- the broker away ----------------------------------------------------- */

static void test_relay_catches_up_after_broker_starts(void **state)
{
    struct fx *fx = *state;
    /* A broker on a fixed port, stopped: the relay starts against nothing. */
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", rit_free_port());
    harness_cleanup(&fx->it.b);
    const char *const args[] = {"--listen", listen, NULL};
    assert_int_equal(harness_start(&fx->it.b, args), 0);
    assert_string_equal(fx->it.b.addr, listen);
    snprintf(fx->db_path, sizeof fx->db_path, "%s/app.db", fx->it.b.dir);
    snprintf(fx->log_a, sizeof fx->log_a, "%s/relay-a.log", fx->it.b.dir);
    snprintf(fx->log_b, sizeof fx->log_b, "%s/relay-b.log", fx->it.b.dir);
    assert_int_equal(harness_stop(&fx->it.b), 0);

    fx->db = rit_app_open(fx->db_path);
    rit_put_n(fx->db, "orders", "o", 0, 500);
    fx->relay_a = rit_relay_start(fx->db_path, listen, fx->log_a, NULL, NULL);
    assert_true(rit_wait_log(fx->log_a, "cannot connect to", WAIT_MS));
    it_sleep_ms(1500);
    rit_put_n(fx->db, "orders", "o", 500, 500);
    assert_int_equal(rit_count(fx->db_path, "sent_ms IS NULL"), 1000);
    /* Logged once, not at every attempt. */
    assert_int_equal(it_file_count(fx->log_a, "retrying with backoff"), 1);

    int64_t t0 = harness_now_ms();
    assert_int_equal(harness_restart(&fx->it.b), 0);
    assert_true(rit_wait_drained(fx->db_path, WAIT_MS));
    int64_t took = harness_now_ms() - t0;
    fprintf(stderr, "caught up %d rows %" PRId64 " ms after the broker started\n", 1000, took);
    assert_true(took < 10000); /* the backoff is capped at 5 s */
    assert_true(it_file_has(fx->log_a, "failed attempt"));
    assert_int_equal(rit_relay_stop(fx->relay_a), 0);
    fx->relay_a = 0;
    assert_stored_once(fx, "orders", "o", 1000);
}

static void test_broker_killed_under_a_backlog_nothing_lost_nothing_twice(void **state)
{
    struct fx *fx = *state;
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", rit_free_port());
    harness_cleanup(&fx->it.b);
    const char *const args[] = {"--listen", listen, NULL};
    assert_int_equal(harness_start(&fx->it.b, args), 0);
    snprintf(fx->db_path, sizeof fx->db_path, "%s/app.db", fx->it.b.dir);
    snprintf(fx->log_a, sizeof fx->log_a, "%s/relay-a.log", fx->it.b.dir);
    snprintf(fx->log_b, sizeof fx->log_b, "%s/relay-b.log", fx->it.b.dir);

    enum { N = 50000 };
    fx->db = rit_app_open(fx->db_path);
    rit_put_n(fx->db, "orders", "o", 0, N);
    static const char *const relay_args[] = {"--batch", "200", NULL};
    fx->relay_a = rit_relay_start(fx->db_path, listen, fx->log_a, relay_args, NULL);
    for (int round = 0; round < 3; round++) {
        /* Kill the broker in the middle of the stream. */
        uint64_t target = (uint64_t)(round + 1) * N / 5;
        assert_true(rit_wait_topic_count(listen, "orders", target, WAIT_MS) >= target);
        assert_int_equal(harness_kill9(&fx->it.b), 0);
        it_sleep_ms(300);
        assert_int_equal(harness_restart(&fx->it.b), 0);
    }
    assert_true(rit_wait_drained(fx->db_path, 60000));
    assert_int_equal(rit_relay_stop(fx->relay_a), 0);
    fx->relay_a = 0;
    assert_true(it_file_count(fx->log_a, "lost the broker connection") +
                    it_file_count(fx->log_a, "failed: ") >=
                1);
    assert_stored_once(fx, "orders", "o", N);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_producer_killed_after_commit_event_delivered, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_relay_killed_after_ack_republish_is_duplicate, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_relay_killed_after_ack_duplicate_beyond_the_id_window,
                                        setup_no_id_window, teardown),
        cmocka_unit_test_setup_teardown(test_two_relays_one_active_second_takes_over, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_relay_catches_up_after_broker_starts, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_broker_killed_under_a_backlog_nothing_lost_nothing_twice, setup, teardown),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
