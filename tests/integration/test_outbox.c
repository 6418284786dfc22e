/*
 * test_outbox.c - the transactional outbox and its relay against the real
 * ferryd: install, put inside the caller's transaction, rows written by
 * another program (the sqlite3 shell) relayed like the library's own,
 * headers, the purge after the retention, failed rows, `ferry relay
 * --status`, and a relay running as a thread of the application woken by
 * ferry_relay_notify.
 *
 * Each test gets its own broker (harness) and its own application database
 * in the broker's temporary directory. The relay runs as the real `ferry
 * relay` process (FERRY_CLI) except in the in-process test.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "it_util.h"
#include "relay_it.h"

#define WAIT_MS 20000

struct fx {
    struct it_fx it;
    char db_path[HARNESS_PATH_BYTES + 16];
    char log_path[HARNESS_PATH_BYTES + 16];
    sqlite3 *db;
    pid_t relay;
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
    snprintf(fx->log_path, sizeof fx->log_path, "%s/relay.log", fx->it.b.dir);
    return 0;
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

static int teardown(void **state)
{
    struct fx *fx = *state;
    int rc = 0;
    if (fx) {
        if (fx->relay > 0)
            rit_kill9(fx->relay);
        if (fx->db)
            sqlite3_close(fx->db);
        if (it_file_has(fx->log_path, "runtime error:") || it_file_has(fx->log_path, "Sanitizer")) {
            rit_dump(fx->log_path);
            rc = -1;
        }
    }
    int log_rc = it_fx_teardown(state);
    return rc ? rc : log_rc;
}

/* Runs `ferry relay ARGS...` to completion; returns its output. */
static void cli(struct fx *fx, struct harness_output *out, const char *a1, const char *a2,
                const char *a3, const char *a4)
{
    char *argv[12];
    int n = 0;
    argv[n++] = getenv("FERRY_CLI");
    argv[n++] = "relay";
    argv[n++] = "--db";
    argv[n++] = fx->db_path;
    argv[n++] = "--server";
    argv[n++] = fx->it.b.addr;
    const char *more[] = {a1, a2, a3, a4};
    for (int i = 0; i < 4 && more[i]; i++)
        argv[n++] = (char *)more[i];
    argv[n] = NULL;
    assert_int_equal(harness_run(fx->it.b.dir, argv, NULL, 60000, out), 0);
}

static void relay_drain(struct fx *fx)
{
    struct harness_output out;
    cli(fx, &out, "--drain", NULL, NULL, NULL);
    if (out.status != 0)
        print_error("ferry relay --drain exited %d:\n%s%s\n", out.status, out.out, out.err);
    assert_int_equal(out.status, 0);
    harness_output_free(&out);
}

static void text_of(sqlite3 *db, const char *sql, char *buf, size_t len)
{
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    buf[0] = '\0';
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
        snprintf(buf, len, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
}

static ferry_sub *subscribe(ferry_conn *c, const char *topic)
{
    ferry_sub_options so = FERRY_SUB_OPTIONS_INIT;
    so.start = FERRY_START_EARLIEST;
    so.max_in_flight = 1000;
    ferry_sub *s = NULL;
    int rc = ferry_subscribe(c, topic, "check", &so, &s);
    if (rc != 0)
        print_error("subscribe: %s (%s)\n", ferry_strerror(rc), ferry_errmsg(c));
    assert_int_equal(rc, 0);
    return s;
}

static ferry_delivery *receive(ferry_conn *c)
{
    ferry_delivery *d = NULL;
    int rc = ferry_receive(c, WAIT_MS, &d);
    if (rc != 0)
        print_error("receive: %s (%s)\n", ferry_strerror(rc), ferry_errmsg(c));
    assert_int_equal(rc, 0);
    assert_int_equal(ferry_delivery_ack_async(d), 0);
    return d;
}

static const char *header(const ferry_delivery *d, const char *name, size_t nth)
{
    for (size_t i = 0; i < d->header_count; i++)
        if (strcmp(d->headers[i].name, name) == 0 && nth-- == 0)
            return d->headers[i].value;
    return NULL;
}

/* ----- install ---------------------------------------------------------- */

static void test_install_idempotent_and_versioned(void **state)
{
    struct fx *fx = *state;
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(fx->db_path, &db), SQLITE_OK);

    /* Inside the caller's transaction: undone by its rollback. */
    assert_int_equal(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(ferry_outbox_install(db), 0);
    assert_int_equal(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    ferry_outbox_stats s1, s2;
    assert_int_equal(ferry_outbox_stats_get(db, &s1), FERRY_EUNSUPPORTED);

    assert_int_equal(ferry_outbox_install(db), 0);
    assert_int_equal(ferry_outbox_stats_get(db, &s1), 0);
    assert_int_equal(strncmp(s1.producer_id, "outbox-", 7), 0);
    assert_int_equal(strlen(s1.producer_id), 7 + 32);
    for (int i = 0; i < 3; i++)
        assert_int_equal(ferry_outbox_install(db), 0);
    assert_int_equal(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(ferry_outbox_install(db), 0);
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(ferry_outbox_stats_get(db, &s2), 0);
    assert_string_equal(s1.producer_id, s2.producer_id); /* generated once */

    char v[64];
    text_of(db, "SELECT value FROM ferry_outbox_meta WHERE name = 'schema_version'", v, sizeof v);
    assert_string_equal(v, "1");

    /* The producer id of a copied database is renewed by deleting it. */
    assert_int_equal(sqlite3_exec(db, "DELETE FROM ferry_outbox_meta WHERE name = 'producer_id'",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(ferry_outbox_install(db), 0);
    assert_int_equal(ferry_outbox_stats_get(db, &s2), 0);
    assert_string_not_equal(s1.producer_id, s2.producer_id);

    /* A newer layout is refused, not touched. */
    assert_int_equal(sqlite3_exec(db,
                                  "UPDATE ferry_outbox_meta SET value = '2'"
                                  " WHERE name = 'schema_version'",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(ferry_outbox_install(db), FERRY_EUNSUPPORTED);
    text_of(db, "SELECT value FROM ferry_outbox_meta WHERE name = 'schema_version'", v, sizeof v);
    assert_string_equal(v, "2");
    assert_int_equal(ferry_outbox_install(NULL), FERRY_EINVALID);
    sqlite3_close(db);
}

/* ----- put -------------------------------------------------------------- */

static void test_put_in_rolled_back_transaction_stores_nothing(void **state)
{
    struct fx *fx = *state;
    fx->db = rit_app_open(fx->db_path);
    sqlite3 *db = fx->db;
    assert_int_equal(sqlite3_exec(db, "CREATE TABLE orders(id TEXT PRIMARY KEY, total INTEGER)",
                                  NULL, NULL, NULL),
                     SQLITE_OK);

    ferry_msg m;
    memset(&m, 0, sizeof m);
    m.topic = "orders";
    m.payload = "{\"order\":1}";
    m.payload_len = strlen(m.payload);
    m.id = "order-1";
    char id[129];

    /* The business write and the event, rolled back together. */
    assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(db, "INSERT INTO orders VALUES ('order-1', 42)", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(ferry_outbox_put(db, &m, id), 0);
    assert_string_equal(id, "order-1");
    assert_int_equal(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(rit_count(fx->db_path, NULL), 0);

    /* Committed together: one with the caller's id, one generated. */
    assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(db, "INSERT INTO orders VALUES ('order-1', 42)", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(ferry_outbox_put(db, &m, id), 0);
    m.id = NULL;
    assert_int_equal(ferry_outbox_put(db, &m, id), 0);
    assert_int_equal(strlen(id), 32);
    assert_int_equal(strspn(id, "0123456789abcdef"), 32);

    /* Refused at once, the transaction stays usable. */
    m.id = "order-1";
    assert_int_equal(ferry_outbox_put(db, &m, id), FERRY_ESTORAGE);
    assert_int_equal(sqlite3_extended_errcode(db), SQLITE_CONSTRAINT_UNIQUE);
    assert_string_equal(id, "");
    m.id = "has space";
    assert_int_equal(ferry_outbox_put(db, &m, NULL), FERRY_EINVALID_ID);
    m.id = NULL;
    m.topic = "_dead.orders";
    assert_int_equal(ferry_outbox_put(db, &m, NULL), FERRY_EINVALID_TOPIC);
    m.topic = "orders";
    ferry_header h = {"bin", "a\0b", 3};
    m.headers = &h;
    m.header_count = 1;
    assert_int_equal(ferry_outbox_put(db, &m, NULL), FERRY_EINVALID);
    m.header_count = 0;
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(rit_count(fx->db_path, NULL), 2);

    /* The table refuses what the broker would, for a plain INSERT too. */
    assert_int_not_equal(
        sqlite3_exec(db, "INSERT INTO ferry_outbox(topic, payload) VALUES ('bad topic', 'x')", NULL,
                     NULL, NULL),
        SQLITE_OK);
    assert_int_not_equal(sqlite3_exec(db,
                                      "INSERT INTO ferry_outbox(topic, payload, headers)"
                                      " VALUES ('t', 'x', '[1,2]')",
                                      NULL, NULL, NULL),
                         SQLITE_OK);
    assert_int_not_equal(sqlite3_exec(db,
                                      "INSERT INTO ferry_outbox(topic, payload, msg_id)"
                                      " VALUES ('t', 'x', 'a b')",
                                      NULL, NULL, NULL),
                         SQLITE_OK);
    assert_int_equal(rit_count(fx->db_path, NULL), 2);

    relay_drain(fx);
    assert_int_equal(rit_topic_count(fx->it.b.addr, "orders"), 2);
    assert_int_equal(rit_count(fx->db_path, "sent_ms IS NOT NULL AND broker_seq > 0"), 2);
}

/* ----- other programs --------------------------------------------------- */

static void test_rows_from_the_sqlite3_shell_relayed_like_the_librarys(void **state)
{
    struct fx *fx = *state;
    fx->db = rit_app_open(fx->db_path);
    rit_put_n(fx->db, "orders", "lib", 0, 5);
    if (rit_shell(fx->it.b.dir, fx->db_path,
                  "BEGIN;\n"
                  "INSERT INTO ferry_outbox(topic, payload) VALUES ('orders', 'shell-0');\n"
                  "INSERT INTO ferry_outbox(topic, payload) VALUES ('orders', 'shell-1');\n"
                  "INSERT INTO ferry_outbox(topic, key, payload, deliver_at_ms)\n"
                  "  VALUES ('orders', 'k1', 'shell-2', 0);\n"
                  "COMMIT;") < 0)
        skip();
    rit_put_n(fx->db, "orders", "lib", 5, 5);

    fx->relay = rit_relay_start(fx->db_path, fx->it.b.addr, fx->log_path, NULL, NULL);
    ferry_conn *c = it_connect(fx->it.b.addr);
    subscribe(c, "orders");
    static const char *const want[] = {"lib-0",   "lib-1",   "lib-2",   "lib-3", "lib-4",
                                       "shell-0", "shell-1", "shell-2", "lib-5", "lib-6",
                                       "lib-7",   "lib-8",   "lib-9"};
    sqlite3_stmt *st = NULL;
    assert_int_equal(
        sqlite3_prepare_v2(fx->db, "SELECT msg_id FROM ferry_outbox WHERE seq = ?1", -1, &st, NULL),
        SQLITE_OK);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        ferry_delivery *d = receive(c);
        assert_int_equal(d->seq, i + 1);
        assert_int_equal(d->payload_len, strlen(want[i]));
        assert_memory_equal(d->payload, want[i], d->payload_len);
        /* The message id is the row's msg_id, the SQL default for the
         * shell's rows. */
        sqlite3_bind_int64(st, 1, (int64_t)i + 1);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        assert_string_equal(d->id, (const char *)sqlite3_column_text(st, 0));
        sqlite3_reset(st);
        if (strcmp(want[i], "shell-2") == 0) {
            assert_int_equal(d->key_len, 2);
            assert_memory_equal(d->key, "k1", 2);
        } else {
            assert_int_equal(d->key_len, 0);
        }
        ferry_delivery_free(d);
    }
    sqlite3_finalize(st);
    assert_int_equal(ferry_flush(c, WAIT_MS), 0);
    ferry_close(c);

    assert_true(rit_wait_drained(fx->db_path, WAIT_MS));
    assert_int_equal(rit_count(fx->db_path, "broker_seq = seq"), 13);
    assert_int_equal(rit_relay_stop(fx->relay), 0);
    fx->relay = 0;
    assert_true(it_file_has(fx->log_path, "stopped; relayed 13 rows"));
}

static void test_headers_json_arrive_as_headers(void **state)
{
    struct fx *fx = *state;
    fx->db = rit_app_open(fx->db_path);
    if (rit_shell(fx->it.b.dir, fx->db_path,
                  "INSERT INTO ferry_outbox(topic, headers, payload) VALUES ('audit',"
                  " '{\"trace-id\":\"abc-123\",\"n\":5,\"flag\":true,\"empty\":\"\","
                  "\"quote\":\"say \\\"hi\\\"\\nbye\",\"utf8\":\"\xc5\xbc\xc3\xb3\xc5\x82w\"}',"
                  " 'from-shell');") < 0)
        skip();
    ferry_header hs[] = {{"a", "1", 1}, {"a", "2", 1}, {"content-type", "application/json", 16}};
    ferry_msg m;
    memset(&m, 0, sizeof m);
    m.topic = "audit";
    m.payload = "from-lib";
    m.payload_len = 8;
    m.headers = hs;
    m.header_count = 3;
    assert_int_equal(ferry_outbox_put(fx->db, &m, NULL), 0);
    char json[256];
    text_of(fx->db, "SELECT headers FROM ferry_outbox WHERE seq = 2", json, sizeof json);
    assert_string_equal(json, "{\"a\":\"1\",\"a\":\"2\",\"content-type\":\"application/json\"}");

    relay_drain(fx);
    ferry_conn *c = it_connect(fx->it.b.addr);
    subscribe(c, "audit");
    ferry_delivery *d = receive(c);
    assert_int_equal(d->header_count, 6);
    assert_string_equal(d->headers[0].name, "trace-id"); /* in document order */
    assert_string_equal(header(d, "trace-id", 0), "abc-123");
    assert_string_equal(header(d, "n", 0), "5");
    assert_string_equal(header(d, "flag", 0), "true");
    assert_string_equal(header(d, "empty", 0), "");
    assert_string_equal(header(d, "quote", 0), "say \"hi\"\nbye");
    assert_string_equal(header(d, "utf8", 0), "\xc5\xbc\xc3\xb3\xc5\x82w");
    ferry_delivery_free(d);
    d = receive(c);
    assert_int_equal(d->header_count, 3);
    assert_string_equal(header(d, "a", 0), "1");
    assert_string_equal(header(d, "a", 1), "2");
    assert_string_equal(header(d, "content-type", 0), "application/json");
    ferry_delivery_free(d);
    assert_int_equal(ferry_flush(c, WAIT_MS), 0);
    ferry_close(c);
}

/* ----- retention -------------------------------------------------------- */

static void test_sent_rows_purged_after_the_retention(void **state)
{
    struct fx *fx = *state;
    fx->db = rit_app_open(fx->db_path);
    rit_put_n(fx->db, "orders", "o", 0, 3000);
    static const char *const args[] = {"--retention", "300ms", NULL};
    fx->relay = rit_relay_start(fx->db_path, fx->it.b.addr, fx->log_path, args, NULL);
    assert_true(rit_wait_drained(fx->db_path, WAIT_MS));
    int64_t t0 = harness_now_ms();
    while (rit_count(fx->db_path, NULL) > 0 && harness_now_ms() - t0 < WAIT_MS)
        it_sleep_ms(50);
    assert_int_equal(rit_count(fx->db_path, NULL), 0);
    /* Not before the retention: at least 300 ms after the last was sent. */
    assert_true(harness_now_ms() - t0 >= 200);

    /* seq is never reused (AUTOINCREMENT): the broker's producer mark
     * stays below the new rows. */
    rit_put_n(fx->db, "orders", "p", 0, 10);
    char v[32];
    text_of(fx->db, "SELECT min(seq) FROM ferry_outbox", v, sizeof v);
    assert_string_equal(v, "3001");
    assert_int_equal(rit_wait_topic_count(fx->it.b.addr, "orders", 3010, WAIT_MS), 3010);
    t0 = harness_now_ms();
    while (rit_count(fx->db_path, NULL) > 0 && harness_now_ms() - t0 < WAIT_MS)
        it_sleep_ms(50);
    assert_int_equal(rit_count(fx->db_path, NULL), 0);
    assert_int_equal(rit_relay_stop(fx->relay), 0);
    fx->relay = 0;
}

/* ----- failed rows ------------------------------------------------------ */

static void test_unpublishable_row_marked_failed_and_kept(void **state)
{
    struct fx *fx = *state; /* the broker takes at most 1000 bytes */
    fx->db = rit_app_open(fx->db_path);
    rit_put_n(fx->db, "orders", "before", 0, 3);
    static char big[2000];
    memset(big, 'x', sizeof big);
    ferry_msg m;
    memset(&m, 0, sizeof m);
    m.topic = "orders";
    m.payload = big;
    m.payload_len = sizeof big;
    assert_int_equal(ferry_outbox_put(fx->db, &m, NULL), 0);
    rit_put_n(fx->db, "orders", "after", 0, 3);

    static const char *const args[] = {"--retention", "0", NULL};
    fx->relay = rit_relay_start(fx->db_path, fx->it.b.addr, fx->log_path, args, NULL);
    assert_int_equal(rit_wait_topic_count(fx->it.b.addr, "orders", 6, WAIT_MS), 6);
    /* The sent rows are purged at once; the failed one stays. */
    int64_t t0 = harness_now_ms();
    while (rit_count(fx->db_path, NULL) > 1 && harness_now_ms() - t0 < WAIT_MS)
        it_sleep_ms(50);
    assert_int_equal(rit_count(fx->db_path, NULL), 1);
    assert_int_equal(rit_count(fx->db_path, "seq = 4 AND error LIKE '%larger than%'"
                                            " AND sent_ms IS NOT NULL AND broker_seq IS NULL"),
                     1);
    assert_true(it_file_has(fx->log_path, "seq 4 can never be published"));

    struct harness_output out;
    cli(fx, &out, "--status", NULL, NULL, NULL);
    assert_int_equal(out.status, 0);
    assert_non_null(strstr(out.out, "failed       1 rows"));
    harness_output_free(&out);
    assert_int_equal(rit_relay_stop(fx->relay), 0);
    fx->relay = 0;
    assert_int_equal(rit_topic_count(fx->it.b.addr, "orders"), 6);
}

/* ----- status ----------------------------------------------------------- */

static void test_status_reports_lag(void **state)
{
    struct fx *fx = *state;
    struct harness_output out;

    /* No outbox yet. */
    cli(fx, &out, "--status", NULL, NULL, NULL);
    assert_int_equal(out.status, 1);
    harness_output_free(&out);

    fx->db = rit_app_open(fx->db_path);
    rit_put_n(fx->db, "orders", "o", 0, 20);
    it_sleep_ms(300);
    cli(fx, &out, "--status", "--json", NULL, NULL);
    assert_int_equal(out.status, 0);
    assert_non_null(strstr(out.out, "\"relay_running\":false"));
    assert_non_null(strstr(out.out, "\"waiting\":20,"));
    assert_non_null(strstr(out.out, "\"oldest_waiting_seq\":1,"));
    assert_non_null(strstr(out.out, "\"last_sent_seq\":0,"));
    const char *age = strstr(out.out, "\"oldest_waiting_ms\":");
    assert_non_null(age);
    long ms = strtol(age + strlen("\"oldest_waiting_ms\":"), NULL, 10);
    assert_true(ms >= 250 && ms < 60000);
    harness_output_free(&out);
    cli(fx, &out, "--status", NULL, NULL, NULL);
    assert_int_equal(out.status, 0);
    assert_non_null(strstr(out.out, "waiting      20 rows, oldest "));
    assert_non_null(strstr(out.out, "relay        not running"));
    harness_output_free(&out);

    fx->relay = rit_relay_start(fx->db_path, fx->it.b.addr, fx->log_path, NULL, NULL);
    assert_true(rit_wait_drained(fx->db_path, WAIT_MS));
    cli(fx, &out, "--status", "--json", NULL, NULL);
    assert_int_equal(out.status, 0);
    char want[64];
    snprintf(want, sizeof want, "\"relay_running\":true,\"relay_pid\":%d", (int)fx->relay);
    assert_non_null(strstr(out.out, want));
    assert_non_null(strstr(out.out, "\"waiting\":0,"));
    assert_non_null(strstr(out.out, "\"last_sent_seq\":20,"));
    assert_non_null(strstr(out.out, "\"last_broker_seq\":20,"));
    harness_output_free(&out);
    assert_int_equal(rit_relay_stop(fx->relay), 0);
    fx->relay = 0;
}

static void test_relay_logs_its_lag_every_10_s(void **state)
{
    struct fx *fx = *state;
    fx->db = rit_app_open(fx->db_path);
    rit_put_n(fx->db, "orders", "o", 0, 5);
    /* Nobody listens there: the rows wait, and the log says so. */
    char nowhere[64];
    snprintf(nowhere, sizeof nowhere, "127.0.0.1:%d", rit_free_port());
    fx->relay = rit_relay_start(fx->db_path, nowhere, fx->log_path, NULL, NULL);
    assert_true(rit_wait_log(fx->log_path, "lag: 5 rows waiting, oldest ", 20000));
    assert_true(it_file_has(fx->log_path, "not connected to the broker"));
    assert_int_equal(rit_relay_stop(fx->relay), 0);
    fx->relay = 0;
}

/* ----- the relay as a thread of the application -------------------------- */

struct logbuf {
    pthread_mutex_t mu;
    char text[65536];
    size_t len;
};

static void log_to_buf(void *ud, int level, const char *line)
{
    struct logbuf *b = ud;
    pthread_mutex_lock(&b->mu);
    int n = snprintf(b->text + b->len, sizeof b->text - b->len, "%d %s\n", level, line);
    if (n > 0 && (size_t)n < sizeof b->text - b->len)
        b->len += (size_t)n;
    pthread_mutex_unlock(&b->mu);
}

struct runner {
    ferry_relay *r;
    int rc;
};

static void *run_relay(void *arg)
{
    struct runner *run = arg;
    run->rc = ferry_relay_run(run->r);
    return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_in_process_relay_woken_by_notify(void **state)
{
    struct fx *fx = *state;
    fx->db = rit_app_open(fx->db_path);
    static struct logbuf lb = {.mu = PTHREAD_MUTEX_INITIALIZER};
    lb.len = 0;
    ferry_relay_options o = FERRY_RELAY_OPTIONS_INIT;
    o.db_path = fx->db_path;
    o.server = fx->it.b.addr;
    o.poll_interval_ms = 10000; /* so that only the notify can be quick */
    o.log = log_to_buf;
    o.log_userdata = &lb;
    struct runner run = {0};
    char err[256];
    assert_int_equal(ferry_relay_new(&o, &run.r, err, sizeof err), 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, run_relay, &run), 0);

    ferry_relay_stats st;
    int64_t t0 = harness_now_ms();
    do {
        it_sleep_ms(10);
        ferry_relay_stats_get(run.r, &st);
    } while (!(st.active && st.connected) && harness_now_ms() - t0 < WAIT_MS);
    assert_true(st.active && st.connected);
    it_sleep_ms(100); /* past the first data_version check */

    ferry_conn *c = it_connect(fx->it.b.addr);
    subscribe(c, "orders");
    enum { N = 50 };
    int64_t lat_us[N];
    for (int i = 0; i < N; i++) {
        rit_put_n(fx->db, "orders", "n", i, 1);
        int64_t t = harness_now_ms();
        ferry_relay_notify(run.r);
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        ferry_delivery *d = receive(c);
        clock_gettime(CLOCK_MONOTONIC, &b);
        lat_us[i] = (b.tv_sec - a.tv_sec) * 1000000 + (b.tv_nsec - a.tv_nsec) / 1000;
        assert_true(harness_now_ms() - t < 5000); /* not the 10 s poll */
        char want[32];
        snprintf(want, sizeof want, "n-%d", i);
        assert_int_equal(d->payload_len, strlen(want));
        assert_memory_equal(d->payload, want, d->payload_len);
        ferry_delivery_free(d);
    }
    qsort(lat_us, N, sizeof lat_us[0], cmp_i64);
    fprintf(stderr,
            "commit -> notify -> relay -> broker -> consumer: p50 %" PRId64 " us, max %" PRId64
            " us\n",
            lat_us[N / 2], lat_us[N - 1]);
    assert_int_equal(ferry_flush(c, WAIT_MS), 0);
    ferry_close(c);

    ferry_relay_stop(run.r);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(run.rc, 0);
    ferry_relay_stats_get(run.r, &st);
    assert_int_equal(st.published, N);
    assert_int_equal(st.duplicates, 0);
    assert_int_equal(st.last_seq, N);
    assert_int_equal(st.active, 0);
    assert_int_equal(ferry_relay_run(run.r), 0); /* stopped stays stopped */
    ferry_relay_free(run.r);
    pthread_mutex_lock(&lb.mu);
    assert_non_null(strstr(lb.text, "active on"));
    pthread_mutex_unlock(&lb.mu);
}

/* Reads utime + stime of pid in clock ticks. */
static long cpu_ticks(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    long ut = 0, stt = 0;
    /* Fields after the command: state (3) ... utime (14), stime (15). */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %ld %ld", &ut, &stt) != 2)
        return -1;
    return ut + stt;
}

static void test_idle_relay_costs_little_cpu(void **state)
{
    struct fx *fx = *state;
    fx->db = rit_app_open(fx->db_path);
    fx->relay = rit_relay_start(fx->db_path, fx->it.b.addr, fx->log_path, NULL, NULL);
    assert_true(rit_wait_log(fx->log_path, "connected to", WAIT_MS));
    it_sleep_ms(500);
    long a = cpu_ticks(fx->relay);
    int64_t t0 = harness_now_ms();
    it_sleep_ms(3000);
    long b = cpu_ticks(fx->relay);
    int64_t t1 = harness_now_ms();
    assert_true(a >= 0 && b >= a);
    double cpu_ms = (double)(b - a) * 1000.0 / (double)sysconf(_SC_CLK_TCK);
    double share = cpu_ms / (double)(t1 - t0);
    fprintf(stderr, "idle relay (5 ms data_version poll): %.1f ms CPU in %" PRId64 " ms (%.2f%%)\n",
            cpu_ms, t1 - t0, share * 100.0);
    assert_true(share < 0.10);
    /* And it still answers at once. */
    rit_put_n(fx->db, "orders", "o", 0, 1);
    assert_int_equal(rit_wait_topic_count(fx->it.b.addr, "orders", 1, WAIT_MS), 1);
    assert_int_equal(rit_relay_stop(fx->relay), 0);
    fx->relay = 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_install_idempotent_and_versioned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_put_in_rolled_back_transaction_stores_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_rows_from_the_sqlite3_shell_relayed_like_the_librarys,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_headers_json_arrive_as_headers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sent_rows_purged_after_the_retention, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unpublishable_row_marked_failed_and_kept, setup_small,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_status_reports_lag, setup, teardown),
        cmocka_unit_test_setup_teardown(test_relay_logs_its_lag_every_10_s, setup, teardown),
        cmocka_unit_test_setup_teardown(test_in_process_relay_woken_by_notify, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_relay_costs_little_cpu, setup, teardown),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
