/*
 * test_pg.c - the Postgres outbox, relay and inbox (issue 11) against a
 * real private PostgreSQL cluster (tests/support/pg_harness.h, started once
 * for the suite and stopped by its PID) and the real ferryd (one per
 * test). The relay runs as the real `ferry relay --pg` process (FERRY_CLI).
 * Each test uses a schema of its own in the one cluster.
 *
 * What it shows: the idempotent install and its CHECK constraints; a row
 * reaching the broker on the trigger's NOTIFY while the safety re-scan is a
 * minute away; a transaction holding a lower id that commits last is not
 * skipped and arrives after the later one (commit order); a rollback
 * leaves no event; kill -9 of the relay after the broker's ack and before
 * the DELETE re-publishes only duplicates (the topic holds each row once,
 * in order); two relays: the second stands by on the advisory lock and
 * takes over after a kill -9, nothing lost or doubled; an immediate
 * restart of Postgres; a row the broker refuses is marked failed without
 * blocking the others; bad input (URL, schema, permission) gets one line
 * and a non-zero exit; and the inbox's claim in the caller's transaction.
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
#include <libpq-fe.h>

#include "harness.h"
#include "it_util.h"
#include "pg_harness.h"
#include "relay_it.h"

#define WAIT_MS 30000

static struct pg_cluster cluster;

struct fx {
    struct harness_broker b;
    char log_path[HARNESS_PATH_BYTES + 16];
    char schema[32];
    PGconn *pg;
    int seq; /* for subscription group names */
};

static int group_setup(void **state)
{
    (void)state;
    if (!getenv("FERRY_CLI")) {
        fprintf(stderr, "setup: the environment variable FERRY_CLI is not set\n");
        return -1;
    }
    return pg_cluster_start(&cluster);
}

static int group_teardown(void **state)
{
    (void)state;
    pg_cluster_cleanup(&cluster);
    return 0;
}

static int setup(void **state)
{
    static int n;
    struct fx *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    *state = fx;
    if (harness_start(&fx->b, NULL) != 0)
        return -1;
    snprintf(fx->log_path, sizeof fx->log_path, "%s/relay.log", fx->b.dir);
    snprintf(fx->schema, sizeof fx->schema, "t%d_%d", (int)getpid(), ++n);
    fx->pg = pg_cluster_connect(&cluster);
    return fx->pg ? 0 : -1;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    if (!fx)
        return 0;
    int bad = harness_check_log(&fx->b);
    PQfinish(fx->pg);
    harness_cleanup(&fx->b);
    free(fx);
    return bad;
}

/* ----- helpers --------------------------------------------------------- */

static void sql(PGconn *pg, const char *fmt, ...)
{
    char buf[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    assert_int_equal(pg_exec(pg, buf), 0);
}

static long long count(PGconn *pg, const char *fmt, ...)
{
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return pg_count(pg, buf);
}

/* `ferry relay --pg URL --schema S --server ADDR extra...`, output to the
 * fixture's log; env_kv set in the child only. */
static pid_t relay_start(struct fx *fx, const char *const *extra, const char *env_kv)
{
    const char *cli = getenv("FERRY_CLI");
    char *argv[32];
    int argc = 0;
    argv[argc++] = (char *)cli;
    argv[argc++] = "relay";
    argv[argc++] = "--pg";
    argv[argc++] = cluster.url;
    argv[argc++] = "--schema";
    argv[argc++] = fx->schema;
    argv[argc++] = "--server";
    argv[argc++] = fx->b.addr;
    for (int i = 0; extra && extra[i] && argc < 30; i++)
        argv[argc++] = (char *)extra[i];
    argv[argc] = NULL;
    char *kv = env_kv ? strdup(env_kv) : NULL;
    FILE *log = fopen(fx->log_path, "a");
    assert_non_null(log);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fileno(log), STDOUT_FILENO);
        dup2(fileno(log), STDERR_FILENO);
        if (kv)
            putenv(kv);
        execv(cli, argv);
        _exit(127);
    }
    fclose(log);
    free(kv);
    return pid;
}

/* Runs the CLI with args; captures stdout+stderr into out. Returns the exit
 * status. */
static int cli_run(const char *const *args, char *out, size_t out_len)
{
    const char *cli = getenv("FERRY_CLI");
    char *argv[32];
    int argc = 0;
    argv[argc++] = (char *)cli;
    for (int i = 0; args[i] && argc < 30; i++)
        argv[argc++] = (char *)args[i];
    argv[argc] = NULL;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], STDOUT_FILENO);
        dup2(fds[1], STDERR_FILENO);
        execv(cli, argv);
        _exit(127);
    }
    close(fds[1]);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < out_len && (r = read(fds[0], out + n, out_len - 1 - n)) > 0)
        n += (size_t)r;
    out[n] = '\0';
    close(fds[0]);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Receives n messages of topic from the start (a new group) and stores
 * their payloads (NUL-terminated, up to 63 bytes) in out[i]. */
static void read_topic(struct fx *fx, const char *topic, int n, char (*out)[64])
{
    ferry_conn *c = it_connect(fx->b.addr);
    ferry_sub_options so = FERRY_SUB_OPTIONS_INIT;
    so.start = FERRY_START_EARLIEST;
    so.max_in_flight = 1000;
    char group[32];
    snprintf(group, sizeof group, "check%d", ++fx->seq);
    ferry_sub *s = NULL;
    assert_int_equal(ferry_subscribe(c, topic, group, &so, &s), 0);
    for (int i = 0; i < n; i++) {
        ferry_delivery *d = NULL;
        int rc = ferry_receive(c, WAIT_MS, &d);
        if (rc != 0)
            print_error("receive %d of %d: %s\n", i, n, ferry_strerror(rc));
        assert_int_equal(rc, 0);
        size_t len = d->payload_len < 63 ? d->payload_len : 63;
        memcpy(out[i], d->payload, len);
        out[i][len] = '\0';
        ferry_delivery_ack_async(d);
        ferry_delivery_free(d);
    }
    ferry_close(c);
}

static void install(struct fx *fx)
{
    assert_int_equal(ferry_pg_outbox_install(fx->pg, fx->schema), 0);
}

/* n rows "<prefix>-<i>" for i in [first, first + n) in one transaction. */
static void put_n(struct fx *fx, const char *topic, const char *prefix, int first, int n)
{
    sql(fx->pg,
        "INSERT INTO %s.outbox (topic, payload) SELECT '%s', convert_to('%s-' || i, 'UTF8')"
        " FROM generate_series(%d, %d) AS i ORDER BY i",
        fx->schema, topic, prefix, first, first + n - 1);
}

static void check_sequence(char (*got)[64], const char *prefix, int first, int n)
{
    for (int i = 0; i < n; i++) {
        char want[64];
        snprintf(want, sizeof want, "%s-%d", prefix, first + i);
        if (strcmp(got[i], want) != 0)
            print_error("message %d: got %s, want %s\n", i, got[i], want);
        assert_string_equal(got[i], want);
    }
}

/* ----- install ---------------------------------------------------------- */

static void test_install_idempotent_checked_and_versioned(void **state)
{
    struct fx *fx = *state;
    install(fx);
    install(fx); /* again: only reads */
    char out[4096];
    const char *args[] = {"relay", "--pg", cluster.url, "--schema", fx->schema, "--install", NULL};
    assert_int_equal(cli_run(args, out, sizeof out), 0);
    char pid1[4096];
    snprintf(pid1, sizeof pid1, "%s", out);
    assert_non_null(strstr(pid1, "outbox-"));
    assert_int_equal(cli_run(args, out, sizeof out), 0);
    assert_string_equal(out, pid1); /* the producer id is generated once */
    assert_int_equal(count(fx->pg,
                           "SELECT count(*) FROM %s.outbox_meta WHERE name = "
                           "'schema_version' AND value = '1'",
                           fx->schema),
                     1);

    /* The CHECK constraints refuse what the broker would refuse, in the
     * application's INSERT. */
    const char *bad[] = {
        "INSERT INTO %s.outbox (topic, payload) VALUES ('-bad', 'x')",
        "INSERT INTO %s.outbox (topic, payload) VALUES ('has space', 'x')",
        "INSERT INTO %s.outbox (topic, msg_id, payload) VALUES ('t', 'a b', 'x')",
        "INSERT INTO %s.outbox (topic, headers, payload) VALUES ('t', '[1,2]', 'x')",
        "INSERT INTO %s.outbox (topic, payload, deliver_at_ms) VALUES ('t', 'x', -1)",
        "INSERT INTO %s.outbox (topic, key, payload) VALUES ('t', decode(repeat('00', 1025), "
        "'hex'), 'x')",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char q[512];
        snprintf(q, sizeof q, bad[i], fx->schema);
        PGresult *r = PQexec(fx->pg, q);
        assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
        assert_string_equal(PQresultErrorField(r, PG_DIAG_SQLSTATE), "23514");
        PQclear(r);
    }
    /* The relay's columns are not the application's: id is GENERATED ALWAYS. */
    PGresult *r = PQexec(fx->pg, "SELECT 1"); /* keep the connection fresh */
    PQclear(r);
    char q[256];
    snprintf(q, sizeof q, "INSERT INTO %s.outbox (id, topic, payload) VALUES (5, 't', 'x')",
             fx->schema);
    r = PQexec(fx->pg, q);
    assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
    PQclear(r);

    /* ferry_pg_outbox_put checks as the broker will, and inserts. */
    ferry_msg m = {0};
    m.topic = "bad topic";
    m.payload = "x";
    m.payload_len = 1;
    assert_int_equal(ferry_pg_outbox_put(fx->pg, fx->schema, &m, NULL), FERRY_EINVALID_TOPIC);
    m.topic = "orders";
    ferry_header h[2] = {{"trace-id", "a\"b", 3}, {"content-type", "text/plain", 10}};
    m.headers = h;
    m.header_count = 2;
    char id[129];
    assert_int_equal(ferry_pg_outbox_put(fx->pg, fx->schema, &m, id), 0);
    assert_int_equal(strlen(id), 32);
    assert_int_equal(count(fx->pg,
                           "SELECT count(*) FROM %s.outbox WHERE headers->>'trace-id' = "
                           "'a\"b'",
                           fx->schema),
                     1);

    /* A bad schema name, a transaction open: refused. */
    assert_int_equal(ferry_pg_outbox_install(fx->pg, "Bad-Name"), FERRY_EINVALID);
    assert_int_equal(ferry_pg_outbox_install(fx->pg, "pg_x"), FERRY_EINVALID);
    sql(fx->pg, "BEGIN");
    assert_int_equal(ferry_pg_outbox_install(fx->pg, fx->schema), FERRY_EINVALID);
    sql(fx->pg, "ROLLBACK");

    /* A newer layout is refused, by the library and the CLI. */
    sql(fx->pg, "UPDATE %s.outbox_meta SET value = '2' WHERE name = 'schema_version'", fx->schema);
    assert_int_equal(ferry_pg_outbox_install(fx->pg, fx->schema), FERRY_EUNSUPPORTED);
    assert_int_equal(cli_run(args, out, sizeof out), 1);
    assert_non_null(strstr(out, "newer layout"));
}

/* ----- relaying ---------------------------------------------------------- */

static void test_notify_wakes_relay_headers_keys_rollback(void **state)
{
    struct fx *fx = *state;
    install(fx);
    /* The safety re-scan a minute away: only the NOTIFY can bring a row
     * within the wait below. */
    const char *extra[] = {"--rescan-ms", "60000", NULL};
    pid_t relay = relay_start(fx, extra, NULL);
    assert_true(rit_wait_log(fx->log_path, "active on the outbox", WAIT_MS));
    it_sleep_ms(200); /* let it finish its first (empty) claim and go idle */

    int64_t t0 = harness_now_ms();
    sql(fx->pg,
        "INSERT INTO %s.outbox (topic, msg_id, key, headers, payload) VALUES ('orders', 'o-1',"
        " 'k1', '{\"trace-id\":\"abc\",\"n\":5,\"z\":null}', convert_to('first', 'UTF8'))",
        fx->schema);
    assert_int_equal(rit_wait_topic_count(fx->b.addr, "orders", 1, 20000), 1);
    int64_t t1 = harness_now_ms();
    print_message("COMMIT -> stored by the broker: %" PRId64 " ms (re-scan every 60 s)\n", t1 - t0);

    /* A rolled-back transaction leaves no event. */
    sql(fx->pg, "BEGIN");
    sql(fx->pg, "INSERT INTO %s.outbox (topic, payload) VALUES ('orders', 'rolled back')",
        fx->schema);
    sql(fx->pg, "ROLLBACK");
    sql(fx->pg, "INSERT INTO %s.outbox (topic, payload) VALUES ('orders', 'second')", fx->schema);
    assert_int_equal(rit_wait_topic_count(fx->b.addr, "orders", 2, 20000), 2);
    it_sleep_ms(300);
    assert_int_equal(rit_topic_count(fx->b.addr, "orders"), 2);

    ferry_conn *c = it_connect(fx->b.addr);
    ferry_sub_options so = FERRY_SUB_OPTIONS_INIT;
    so.start = FERRY_START_EARLIEST;
    ferry_sub *s;
    assert_int_equal(ferry_subscribe(c, "orders", "hdr", &so, &s), 0);
    ferry_delivery *d;
    assert_int_equal(ferry_receive(c, WAIT_MS, &d), 0);
    assert_string_equal(d->id, "o-1");
    assert_int_equal(d->key_len, 2);
    assert_memory_equal(d->key, "k1", 2);
    assert_int_equal(d->header_count, 3);
    assert_string_equal(d->headers[0].name, "trace-id");
    assert_memory_equal(d->headers[0].value, "abc", 3);
    assert_string_equal(d->headers[1].name, "n");
    assert_memory_equal(d->headers[1].value, "5", 1);
    assert_int_equal(d->headers[2].value_len, 0);
    assert_memory_equal(d->payload, "first", 5);
    ferry_delivery_free(d);
    assert_int_equal(ferry_receive(c, WAIT_MS, &d), 0);
    assert_memory_equal(d->payload, "second", 6);
    ferry_delivery_free(d);
    ferry_close(c);

    /* Sent rows are deleted: the table holds only what waits. */
    assert_int_equal(count(fx->pg, "SELECT count(*) FROM %s.outbox", fx->schema), 0);
    char out[4096];
    const char *st[] = {"relay",    "--pg",     cluster.url, "--schema",
                        fx->schema, "--status", "--json",    NULL};
    assert_int_equal(cli_run(st, out, sizeof out), 0);
    assert_non_null(strstr(out, "\"relay_running\":true"));
    assert_non_null(strstr(out, "\"waiting\":0"));
    assert_non_null(strstr(out, "\"sent\":2"));
    assert_int_equal(rit_relay_stop(relay), 0);
    assert_int_equal(cli_run(st, out, sizeof out), 0);
    assert_non_null(strstr(out, "\"relay_running\":false"));
}

static void test_lower_id_committing_last_is_not_skipped(void **state)
{
    struct fx *fx = *state;
    install(fx);
    pid_t relay = relay_start(fx, NULL, NULL);
    assert_true(rit_wait_log(fx->log_path, "active on the outbox", WAIT_MS));

    PGconn *a = pg_cluster_connect(&cluster);
    assert_non_null(a);
    for (int round = 0; round < 5; round++) {
        /* A takes the lower id and holds its transaction open; B takes the
         * next id and commits; the relay publishes B; then A commits. */
        sql(a, "BEGIN");
        sql(a, "INSERT INTO %s.outbox (topic, payload) VALUES ('race', 'a%d')", fx->schema, round);
        sql(fx->pg, "INSERT INTO %s.outbox (topic, payload) VALUES ('race', 'b%d')", fx->schema,
            round);
        assert_int_equal(rit_wait_topic_count(fx->b.addr, "race", (uint64_t)(2 * round + 1), 20000),
                         2 * round + 1);
        assert_int_equal(count(fx->pg,
                               "SELECT count(*) FROM %s.outbox WHERE id < (SELECT max(id) FROM "
                               "%s.outbox)",
                               fx->schema, fx->schema),
                         0); /* A's row is not visible yet */
        sql(a, "COMMIT");
        assert_int_equal(rit_wait_topic_count(fx->b.addr, "race", (uint64_t)(2 * round + 2), 20000),
                         2 * round + 2);
    }
    /* Also in one implicit transaction (a single simple query) that the
     * server holds open on a lock after its INSERT, released by the test
     * once the later row is at the broker. */
    PGconn *l = pg_cluster_connect(&cluster);
    assert_non_null(l);
    sql(l, "SELECT pg_advisory_lock(4242)");
    PGresult *r;
    char q[512];
    snprintf(q, sizeof q,
             "INSERT INTO %s.outbox (topic, payload) VALUES ('race', 'a5');"
             " SELECT pg_advisory_xact_lock(4242);",
             fx->schema);
    assert_int_equal(PQsendQuery(a, q), 1);
    int64_t deadline = harness_now_ms() + WAIT_MS;
    while (count(l, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%%pg_advisory_xact_lock(4242)%%'") != 1) {
        assert_true(harness_now_ms() < deadline);
        it_sleep_ms(10);
    }
    sql(fx->pg, "INSERT INTO %s.outbox (topic, payload) VALUES ('race', 'b5')", fx->schema);
    assert_int_equal(rit_wait_topic_count(fx->b.addr, "race", 11, 20000), 11);
    sql(l, "SELECT pg_advisory_unlock(4242)");
    while ((r = PQgetResult(a)) != NULL) {
        assert_int_not_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
        PQclear(r);
    }
    PQfinish(l);
    assert_int_equal(rit_wait_topic_count(fx->b.addr, "race", 12, 20000), 12);
    PQfinish(a);

    char got[12][64];
    read_topic(fx, "race", 12, got);
    for (int round = 0; round < 6; round++) {
        char wb[8], wa[8];
        snprintf(wb, sizeof wb, "b%d", round);
        snprintf(wa, sizeof wa, "a%d", round);
        assert_string_equal(got[2 * round], wb); /* commit order */
        assert_string_equal(got[2 * round + 1], wa);
    }
    assert_int_equal(rit_relay_stop(relay), 0);
}

static void test_kill9_after_ack_republishes_only_duplicates(void **state)
{
    struct fx *fx = *state;
    install(fx);
    enum { N = 5000 };
    put_n(fx, "crash", "m", 0, N);
    const char *extra[] = {"--batch", "500", NULL};
    pid_t relay = relay_start(fx, extra, FERRY_RELAY_CRASH_ENV "=3");
    assert_int_equal(rit_wait_exit(relay, WAIT_MS), 9);
    /* Two batches deleted; the third acked by the broker but not deleted. */
    assert_int_equal(count(fx->pg, "SELECT count(*) FROM %s.outbox", fx->schema), N - 1000);
    assert_int_equal(rit_topic_count(fx->b.addr, "crash"), 1500);

    const char *drain[] = {"--batch", "500", "--drain", NULL};
    relay = relay_start(fx, drain, NULL);
    assert_int_equal(rit_wait_exit(relay, WAIT_MS * 2), 0);
    assert_true(rit_wait_log(fx->log_path, "acked as duplicates", 1000));
    assert_int_equal(count(fx->pg, "SELECT count(*) FROM %s.outbox", fx->schema), 0);
    assert_int_equal(rit_topic_count(fx->b.addr, "crash"), N);
    static char got[N][64];
    read_topic(fx, "crash", N, got);
    check_sequence(got, "m", 0, N);
}

static void test_second_relay_stands_by_and_takes_over(void **state)
{
    struct fx *fx = *state;
    install(fx);
    pid_t a = relay_start(fx, NULL, NULL);
    assert_true(rit_wait_log(fx->log_path, "active on the outbox", WAIT_MS));
    pid_t b = relay_start(fx, NULL, NULL);
    assert_true(rit_wait_log(fx->log_path, "standing by", WAIT_MS));
    put_n(fx, "two", "m", 0, 300);
    assert_int_equal(rit_wait_topic_count(fx->b.addr, "two", 300, WAIT_MS), 300);
    /* Writers keep going while the active relay dies. */
    put_n(fx, "two", "m", 300, 300);
    rit_kill9(a);
    assert_true(rit_wait_log(fx->log_path, "taking over", WAIT_MS));
    put_n(fx, "two", "m", 600, 400);
    assert_int_equal(rit_wait_topic_count(fx->b.addr, "two", 1000, WAIT_MS), 1000);
    it_sleep_ms(300);
    assert_int_equal(rit_topic_count(fx->b.addr, "two"), 1000);
    static char got[1000][64];
    read_topic(fx, "two", 1000, got);
    check_sequence(got, "m", 0, 1000);
    assert_int_equal(rit_relay_stop(b), 0);
}

static void test_postgres_immediate_restart(void **state)
{
    struct fx *fx = *state;
    install(fx);
    pid_t relay = relay_start(fx, NULL, NULL);
    assert_true(rit_wait_log(fx->log_path, "active on the outbox", WAIT_MS));
    put_n(fx, "pgr", "m", 0, 200);
    assert_int_equal(rit_wait_topic_count(fx->b.addr, "pgr", 200, WAIT_MS), 200);
    PQfinish(fx->pg);
    fx->pg = NULL;
    assert_int_equal(pg_cluster_stop(&cluster, 1), 0); /* pg_ctl -m immediate */
    assert_int_equal(pg_cluster_restart(&cluster), 0);
    fx->pg = pg_cluster_connect(&cluster);
    assert_non_null(fx->pg);
    put_n(fx, "pgr", "m", 200, 200);
    assert_int_equal(rit_wait_topic_count(fx->b.addr, "pgr", 400, WAIT_MS), 400);
    assert_true(rit_wait_log(fx->log_path, "lost the Postgres connection", 1000));
    static char got[400][64];
    read_topic(fx, "pgr", 400, got);
    check_sequence(got, "m", 0, 400);
    assert_int_equal(rit_relay_stop(relay), 0);
}

static void test_refused_row_marked_failed_others_go_on(void **state)
{
    struct fx *fx = *state;
    install(fx);
    /* 65 headers: a JSON object the CHECK accepts, the broker does not. */
    char hdr[2048] = "{";
    for (int i = 0; i < 65; i++)
        snprintf(hdr + strlen(hdr), sizeof hdr - strlen(hdr), "%s\"h%d\":\"v\"", i ? "," : "", i);
    strcat(hdr, "}");
    put_n(fx, "good", "g", 0, 10);
    sql(fx->pg, "INSERT INTO %s.outbox (topic, headers, payload) VALUES ('bad', '%s', 'x')",
        fx->schema, hdr);
    put_n(fx, "good", "g", 10, 10);
    const char *drain[] = {"--drain", NULL};
    pid_t relay = relay_start(fx, drain, NULL);
    assert_int_equal(rit_wait_exit(relay, WAIT_MS), 0);
    assert_int_equal(rit_topic_count(fx->b.addr, "good"), 20);
    assert_int_equal(
        count(fx->pg, "SELECT count(*) FROM %s.outbox_failed WHERE error LIKE '%%more than 64%%'",
              fx->schema),
        1);
    char out[4096];
    const char *st[] = {"relay", "--pg", cluster.url, "--schema", fx->schema, "--status", NULL};
    assert_int_equal(cli_run(st, out, sizeof out), 0);
    assert_non_null(strstr(out, "failed       1 rows"));
    static char got[20][64];
    read_topic(fx, "good", 20, got);
    check_sequence(got, "g", 0, 20);
}

static void test_bad_input_one_line_and_exit_status(void **state)
{
    struct fx *fx = *state;
    char out[4096], url[256];
    /* Nothing listens there. */
    snprintf(url, sizeof url, "postgresql://ferry@127.0.0.1:%d/postgres", rit_free_port());
    const char *a1[] = {"relay", "--pg", url, "--server", fx->b.addr, NULL};
    assert_int_equal(cli_run(a1, out, sizeof out), 1);
    assert_non_null(strstr(out, "cannot connect to Postgres"));
    /* No such database. */
    snprintf(url, sizeof url, "postgresql://ferry@127.0.0.1:%d/nosuchdb", cluster.port);
    const char *a2[] = {"relay", "--pg", url, "--status", NULL};
    assert_int_equal(cli_run(a2, out, sizeof out), 1);
    assert_non_null(strstr(out, "nosuchdb"));
    /* Not a URL. */
    const char *a3[] = {"relay", "--pg", "postgresql://[oops", "--install", NULL};
    assert_int_equal(cli_run(a3, out, sizeof out), 1);
    assert_non_null(strstr(out, "not a Postgres connection string"));
    /* Usage errors. */
    const char *a4[] = {"relay", "--pg", cluster.url, "--schema", "Bad", NULL};
    assert_int_equal(cli_run(a4, out, sizeof out), 2);
    const char *a5[] = {"relay", "--pg", cluster.url, "--db", "x.db", NULL};
    assert_int_equal(cli_run(a5, out, sizeof out), 2);
    const char *a6[] = {"relay", "--pg", cluster.url, "--retention", "1h", NULL};
    assert_int_equal(cli_run(a6, out, sizeof out), 2);
    /* A role without the right to create the schema. */
    sql(fx->pg, "DO $$ BEGIN CREATE ROLE ferry_app LOGIN; EXCEPTION WHEN duplicate_object THEN "
                "NULL; END $$");
    sql(fx->pg, "REVOKE CREATE ON DATABASE postgres FROM PUBLIC");
    snprintf(url, sizeof url, "postgresql://ferry_app@127.0.0.1:%d/postgres", cluster.port);
    const char *a7[] = {"relay", "--pg", url, "--schema", fx->schema, "--server", fx->b.addr, NULL};
    assert_int_equal(cli_run(a7, out, sizeof out), 1);
    assert_non_null(strstr(out, "cannot install or read the outbox"));
    assert_non_null(strstr(out, "permission denied"));
    /* An outbox it may not read. */
    install(fx);
    assert_int_equal(cli_run(a7, out, sizeof out), 1);
    assert_non_null(strstr(out, "permission denied"));
    /* Relayed once granted. */
    sql(fx->pg, "GRANT USAGE ON SCHEMA %s TO ferry_app", fx->schema);
    sql(fx->pg, "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %s TO ferry_app",
        fx->schema);
    put_n(fx, "granted", "m", 0, 3);
    const char *a8[] = {"relay",    "--pg",     url,       "--schema", fx->schema,
                        "--server", fx->b.addr, "--drain", NULL};
    assert_int_equal(cli_run(a8, out, sizeof out), 0);
    assert_int_equal(rit_topic_count(fx->b.addr, "granted"), 3);
}

/* ----- the inbox --------------------------------------------------------- */

static int effect(void *userdata, PGconn *pg, const ferry_delivery *d)
{
    const char *schema = userdata;
    char q[256];
    snprintf(q, sizeof q, "INSERT INTO %s.effects VALUES ($1)", schema);
    const char *v[1] = {d->id};
    PGresult *r = PQexecParams(pg, q, 1, NULL, v, NULL, NULL, 0);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    return ok ? 0 : -1;
}

static void test_inbox_claims_in_the_callers_transaction(void **state)
{
    struct fx *fx = *state;
    assert_int_equal(ferry_pg_inbox_install(fx->pg, fx->schema), 0);
    assert_int_equal(ferry_pg_inbox_install(fx->pg, fx->schema), 0);
    ferry_delivery d = {0};
    d.topic = "orders";
    d.id = "m-1";
    d.seq = 1;
    /* No transaction open: refused. */
    assert_int_equal(ferry_pg_inbox_claim(fx->pg, fx->schema, "inv", &d), FERRY_EINVALID);
    sql(fx->pg, "BEGIN");
    assert_int_equal(ferry_pg_inbox_claim(fx->pg, fx->schema, "inv", &d), FERRY_INBOX_FRESH);
    sql(fx->pg, "ROLLBACK"); /* undoes the claim */
    sql(fx->pg, "BEGIN");
    assert_int_equal(ferry_pg_inbox_claim(fx->pg, fx->schema, "inv", &d), FERRY_INBOX_FRESH);
    sql(fx->pg, "COMMIT");
    sql(fx->pg, "BEGIN");
    assert_int_equal(ferry_pg_inbox_claim(fx->pg, fx->schema, "inv", &d), FERRY_INBOX_SEEN);
    /* Another group is another claim. */
    assert_int_equal(ferry_pg_inbox_claim(fx->pg, fx->schema, "mail", &d), FERRY_INBOX_FRESH);
    sql(fx->pg, "COMMIT");

    /* Two transactions on one message: the second waits for the first and
     * takes the claim only when the first rolled back. */
    PGconn *b = pg_cluster_connect(&cluster);
    d.id = "m-2";
    sql(fx->pg, "BEGIN");
    assert_int_equal(ferry_pg_inbox_claim(fx->pg, fx->schema, "inv", &d), FERRY_INBOX_FRESH);
    char q[256];
    snprintf(q, sizeof q,
             "BEGIN; INSERT INTO %s.inbox (grp, msg_id, topic, seq) VALUES ('inv', 'm-2', "
             "'orders', 2) ON CONFLICT DO NOTHING",
             fx->schema);
    assert_int_equal(PQsendQuery(b, q), 1);
    it_sleep_ms(200);
    PQconsumeInput(b);
    assert_int_equal(PQisBusy(b), 1); /* blocked on the first's key */
    sql(fx->pg, "ROLLBACK");
    PGresult *r, *last = NULL;
    while ((r = PQgetResult(b)) != NULL) {
        PQclear(last);
        last = r;
    }
    assert_string_equal(PQcmdTuples(last), "1"); /* fresh for b */
    PQclear(last);
    sql(b, "COMMIT");
    PQfinish(b);

    /* Purge: old claims, bounded per call. */
    sql(fx->pg,
        "INSERT INTO %s.inbox (grp, msg_id, topic, seq, processed_ms) SELECT 'old', 'o' || i,"
        " 't', i, 1000 FROM generate_series(1, 25) i",
        fx->schema);
    assert_int_equal(ferry_pg_inbox_purge(fx->pg, fx->schema, 60000, 10), 10);
    assert_int_equal(ferry_pg_inbox_purge(fx->pg, fx->schema, 60000, 100), 15);
    assert_int_equal(ferry_pg_inbox_purge(fx->pg, fx->schema, 60000, 100), 0);
    assert_int_equal(count(fx->pg, "SELECT count(*) FROM %s.inbox", fx->schema), 3);

    /* ferry_pg_inbox_handle with the broker: each effect once, also when a
     * message comes again. */
    sql(fx->pg, "CREATE TABLE %s.effects (id text)", fx->schema);
    ferry_conn *c = it_connect(fx->b.addr);
    for (int i = 0; i < 3; i++) {
        char id[16], body[16];
        snprintf(id, sizeof id, "e-%d", i);
        snprintf(body, sizeof body, "%d", i);
        ferry_msg m = {0};
        m.topic = "inbox";
        m.id = id;
        m.payload = body;
        m.payload_len = strlen(body);
        assert_int_equal(ferry_publish(c, &m, NULL), 0);
    }
    ferry_sub_options so = FERRY_SUB_OPTIONS_INIT;
    so.start = FERRY_START_EARLIEST;
    so.ack_wait_ms = 60000;
    ferry_sub *s;
    assert_int_equal(ferry_subscribe(c, "inbox", "inv", &so, &s), 0);
    for (int i = 0; i < 3; i++) {
        ferry_delivery *dd;
        assert_int_equal(ferry_receive(c, WAIT_MS, &dd), 0);
        /* Claimed once before by an earlier process that died before its
         * ack: the handler must not run again. */
        if (i == 1) {
            sql(fx->pg, "BEGIN");
            assert_int_equal(ferry_pg_inbox_claim(fx->pg, fx->schema, "inv", dd),
                             FERRY_INBOX_FRESH);
            sql(fx->pg, "INSERT INTO %s.effects VALUES ('e-1')", fx->schema);
            sql(fx->pg, "COMMIT");
        }
        int rc = ferry_pg_inbox_handle(fx->pg, fx->schema, "inv", dd, effect, fx->schema, 0);
        assert_int_equal(rc, i == 1 ? FERRY_INBOX_SEEN : FERRY_INBOX_FRESH);
        ferry_delivery_free(dd);
    }
    assert_int_equal(ferry_flush(c, WAIT_MS), 0);
    ferry_close(c);
    assert_int_equal(count(fx->pg, "SELECT count(*) FROM %s.effects", fx->schema), 3);
    assert_int_equal(count(fx->pg, "SELECT count(DISTINCT id) FROM %s.effects", fx->schema), 3);
}

/* Publishes n messages to topic, message i (1..n) with id and payload
 * "<prefix>-<i>". */
static void publish_ids(ferry_conn *c, const char *topic, const char *prefix, int n)
{
    for (int i = 1; i <= n; i++) {
        char id[32];
        snprintf(id, sizeof id, "%s-%d", prefix, i);
        ferry_msg m = {0};
        m.topic = topic;
        m.id = id;
        m.payload = id;
        m.payload_len = strlen(id);
        assert_int_equal(ferry_publish(c, &m, NULL), 0);
    }
}

/* Subscribes group to topic from its first message, with a lease long
 * enough that nothing comes again unasked. */
static ferry_sub *subscribe_earliest(ferry_conn *c, const char *topic, const char *group,
                                     uint16_t max_deliveries)
{
    ferry_sub_options so = FERRY_SUB_OPTIONS_INIT;
    so.start = FERRY_START_EARLIEST;
    so.ack_wait_ms = 60000;
    so.max_deliveries = max_deliveries;
    ferry_sub *s = NULL;
    assert_int_equal(ferry_subscribe(c, topic, group, &so, &s), 0);
    return s;
}

/* The floor purge (ferry_pg_inbox_purge_acked): a layout-1 inbox is brought
 * to layout 2 (the inbox_seq index); claims below the broker's floor are
 * forgotten except the dead-lettered message's, whose redrive then still
 * finds its claim (no second effect); other groups' and topics' claims stay. */
static void test_inbox_purge_acked_forgets_below_floor_keeps_redrivable(void **state)
{
    struct fx *fx = *state;
    enum { N = 10 };
    assert_int_equal(ferry_pg_inbox_install(fx->pg, fx->schema), 0);
    sql(fx->pg, "DROP INDEX %s.inbox_seq", fx->schema);
    sql(fx->pg, "UPDATE %s.inbox_meta SET value = '1' WHERE name = 'schema_version'", fx->schema);
    assert_int_equal(ferry_pg_inbox_install(fx->pg, fx->schema), 0);
    assert_int_equal(count(fx->pg,
                           "SELECT count(*) FROM pg_indexes WHERE schemaname = '%s'"
                           " AND indexname = 'inbox_seq'",
                           fx->schema),
                     1);
    assert_int_equal(count(fx->pg,
                           "SELECT value::int FROM %s.inbox_meta WHERE name = "
                           "'schema_version'",
                           fx->schema),
                     FERRY_PG_INBOX_SCHEMA_VERSION);
    sql(fx->pg, "CREATE TABLE %s.effects (id text)", fx->schema);

    ferry_conn *c = it_connect(fx->b.addr);
    publish_ids(c, "floor", "f", N);
    ferry_sub *s = subscribe_earliest(c, "floor", "inv", 1);
    /* 1: applied and committed, then its ack is lost and it fails its last
     * attempt (a nack at max_deliveries 1): dead-lettered. */
    ferry_delivery *d;
    assert_int_equal(ferry_receive(c, WAIT_MS, &d), 0);
    assert_int_equal(d->seq, 1);
    sql(fx->pg, "BEGIN");
    assert_int_equal(ferry_pg_inbox_claim(fx->pg, fx->schema, "inv", d), FERRY_INBOX_FRESH);
    sql(fx->pg, "INSERT INTO %s.effects VALUES ('f-1')", fx->schema);
    sql(fx->pg, "COMMIT");
    assert_int_equal(ferry_delivery_nack(d, 0, "ack lost"), 0);
    ferry_delivery_free(d);
    for (int i = 2; i <= N; i++) {
        assert_int_equal(ferry_receive(c, WAIT_MS, &d), 0);
        assert_int_equal(ferry_pg_inbox_handle(fx->pg, fx->schema, "inv", d, effect, fx->schema, 0),
                         FERRY_INBOX_FRESH);
        ferry_delivery_free(d);
    }
    assert_int_equal(ferry_flush(c, WAIT_MS), 0);
    uint64_t floor = 0, keep[4];
    size_t n = 0;
    for (int tries = 0; tries < WAIT_MS / 10; tries++) {
        assert_int_equal(ferry_group_floor(c, "floor", "inv", &floor, keep, 4, &n), 0);
        if (floor == N + 1)
            break;
        it_sleep_ms(10);
    }
    assert_int_equal(floor, N + 1);
    assert_int_equal(n, 1);
    assert_int_equal(keep[0], 1);

    sql(fx->pg,
        "INSERT INTO %s.inbox (grp, msg_id, topic, seq) VALUES ('other', 'x', 'floor', 2),"
        " ('inv', 'y', 'elsewhere', 2)",
        fx->schema);
    assert_int_equal(count(fx->pg, "SELECT count(*) FROM %s.inbox", fx->schema), N + 2);
    assert_int_equal(ferry_pg_inbox_purge_acked(fx->pg, fx->schema, "inv", s, 4), 4);
    assert_int_equal(ferry_pg_inbox_purge_acked(fx->pg, fx->schema, "inv", s, 1000), N - 5);
    assert_int_equal(ferry_pg_inbox_purge_acked(fx->pg, fx->schema, "inv", s, 1000), 0);
    assert_int_equal(count(fx->pg, "SELECT count(*) FROM %s.inbox", fx->schema), 3);
    assert_int_equal(
        count(fx->pg, "SELECT seq FROM %s.inbox WHERE grp = 'inv' AND topic = 'floor'", fx->schema),
        1);

    /* The redrive comes to a claim that is still there. */
    uint64_t seq = 0;
    assert_int_equal(ferry_redrive(c, "floor", "inv", 1, &seq), 0);
    assert_int_equal(seq, 1);
    assert_int_equal(ferry_receive(c, WAIT_MS, &d), 0);
    assert_int_equal(d->seq, 1);
    assert_int_equal(ferry_pg_inbox_handle(fx->pg, fx->schema, "inv", d, effect, fx->schema, 0),
                     FERRY_INBOX_SEEN);
    ferry_delivery_free(d);
    assert_int_equal(ferry_flush(c, WAIT_MS), 0);
    assert_int_equal(count(fx->pg, "SELECT count(*) FROM %s.effects", fx->schema), N);
    assert_int_equal(count(fx->pg, "SELECT count(DISTINCT id) FROM %s.effects", fx->schema), N);

    uint64_t bad[2] = {3, 2};
    assert_int_equal(ferry_pg_inbox_forget(fx->pg, fx->schema, "inv", "floor", 5, bad, 2, 10),
                     FERRY_EINVALID);
    assert_int_equal(ferry_pg_inbox_forget(fx->pg, fx->schema, "inv", "floor", 5, NULL, 0, 0),
                     FERRY_EINVALID);
    assert_int_equal(ferry_pg_inbox_purge_acked(fx->pg, fx->schema, "inv", NULL, 10),
                     FERRY_EINVALID);
    ferry_close(c);
}

/* A handler that fails for every fifth sequence on its first attempt. */
static int effect_fail_fifth(void *userdata, PGconn *pg, const ferry_delivery *d)
{
    if (d->seq % 5 == 0 && d->attempt == 1) {
        /* A failed statement, as a real handler's would be: the savepoint
         * must undo it without aborting the batch. */
        PGresult *r = PQexec(pg, "SELECT 1/0");
        PQclear(r);
        return -1;
    }
    return effect(userdata, pg, d);
}

/* ferry_pg_inbox_handle_batch: one transaction for N deliveries, failures
 * isolated in their savepoints and nacked, a duplicate in the batch handled
 * once; the failures' redeliveries then apply, each effect once. */
static void test_inbox_batch_one_commit_failures_isolated_duplicate_once(void **state)
{
    struct fx *fx = *state;
    enum { N = 20 };
    assert_int_equal(ferry_pg_inbox_install(fx->pg, fx->schema), 0);
    sql(fx->pg, "CREATE TABLE %s.effects (id text)", fx->schema);
    ferry_conn *c = it_connect(fx->b.addr);
    publish_ids(c, "batch", "b", N);
    subscribe_earliest(c, "batch", "inv", 0);
    ferry_delivery *ds[N + 1];
    for (int i = 0; i < N; i++) {
        assert_int_equal(ferry_receive(c, WAIT_MS, &ds[i]), 0);
        assert_int_equal(ds[i]->seq, (uint64_t)i + 1);
    }
    ds[N] = ds[0]; /* seq 1 once more, at the end */
    int out[N + 1];
    assert_int_equal(ferry_pg_inbox_handle_batch(fx->pg, fx->schema, "inv", ds, N + 1,
                                                 effect_fail_fifth, fx->schema, 100, out),
                     0);
    for (int i = 0; i < N; i++)
        assert_int_equal(out[i], (i + 1) % 5 == 0 ? FERRY_INBOX_RETRY : FERRY_INBOX_FRESH);
    assert_int_equal(out[N], FERRY_INBOX_SEEN);
    assert_int_equal(count(fx->pg, "SELECT count(*) FROM %s.effects", fx->schema), N - N / 5);
    assert_int_equal(count(fx->pg, "SELECT count(*) FROM %s.inbox WHERE seq %% 5 = 0", fx->schema),
                     0);
    for (int i = 0; i < N; i++)
        ferry_delivery_free(ds[i]);

    ferry_delivery *again[N / 5];
    for (int i = 0; i < N / 5; i++) {
        assert_int_equal(ferry_receive(c, WAIT_MS, &again[i]), 0);
        assert_int_equal(again[i]->seq % 5, 0);
        assert_int_equal(again[i]->attempt, 2);
    }
    assert_int_equal(ferry_pg_inbox_handle_batch(fx->pg, fx->schema, "inv", again, N / 5,
                                                 effect_fail_fifth, fx->schema, 100, NULL),
                     0);
    for (int i = 0; i < N / 5; i++)
        ferry_delivery_free(again[i]);
    assert_int_equal(count(fx->pg, "SELECT count(*) FROM %s.effects", fx->schema), N);
    assert_int_equal(count(fx->pg, "SELECT count(DISTINCT id) FROM %s.effects", fx->schema), N);
    assert_int_equal(ferry_flush(c, WAIT_MS), 0);

    /* Arguments, and no transaction may be open. */
    assert_int_equal(
        ferry_pg_inbox_handle_batch(fx->pg, fx->schema, "inv", ds, 0, effect, fx->schema, 0, NULL),
        FERRY_EINVALID);
    ferry_delivery *nul = NULL;
    assert_int_equal(ferry_pg_inbox_handle_batch(fx->pg, fx->schema, "inv", &nul, 1, effect,
                                                 fx->schema, 0, NULL),
                     FERRY_EINVALID);
    sql(fx->pg, "BEGIN");
    assert_int_equal(ferry_pg_inbox_handle_batch(fx->pg, fx->schema, "inv", again, 1, effect,
                                                 fx->schema, 0, NULL),
                     FERRY_EINVALID);
    sql(fx->pg, "ROLLBACK");
    ferry_close(c);
}

/* The documented Python example (examples/postgres/outbox_psycopg.py,
 * docs/OUTBOX.md "Writing from any language"): psycopg writes the orders
 * and their events in one transaction each; the relay publishes every
 * committed one, in order, with its key and headers, and nothing of the
 * rolled-back one. */
static void test_psycopg_example_committed_events_only(void **state)
{
    struct fx *fx = *state;
    enum { N = 25 };
    const char *py = getenv("PYTHON");
    const char *src = getenv("FERRY_SOURCE_ROOT");
    assert_non_null(py);
    assert_non_null(src);
    install(fx);
    char script[1024], n[16], out[4096];
    snprintf(script, sizeof script, "%s/examples/postgres/outbox_psycopg.py", src);
    snprintf(n, sizeof n, "%d", N);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], STDOUT_FILENO);
        dup2(fds[1], STDERR_FILENO);
        execl(py, py, script, cluster.url, "--schema", fx->schema, "--orders", n, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    size_t len = 0;
    ssize_t r;
    while (len + 1 < sizeof out && (r = read(fds[0], out + len, sizeof out - 1 - len)) > 0)
        len += (size_t)r;
    out[len] = '\0';
    close(fds[0]);
    int st;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        print_error("outbox_psycopg.py: %s\n", out);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_non_null(strstr(out, "placed 25"));
    assert_int_equal(count(fx->pg, "SELECT count(*) FROM shop_orders"), N);
    assert_int_equal(count(fx->pg, "SELECT count(*) FROM %s.outbox", fx->schema), N);

    const char *drain[] = {"relay",    "--pg",     cluster.url, "--schema", fx->schema,
                           "--server", fx->b.addr, "--drain",   NULL};
    assert_int_equal(cli_run(drain, out, sizeof out), 0);
    assert_int_equal(count(fx->pg, "SELECT count(*) FROM %s.outbox", fx->schema), 0);

    ferry_conn *c = it_connect(fx->b.addr);
    ferry_sub_options so = FERRY_SUB_OPTIONS_INIT;
    so.start = FERRY_START_EARLIEST;
    ferry_sub *s;
    assert_int_equal(ferry_subscribe(c, "orders", "py", &so, &s), 0);
    for (int i = 1; i <= N; i++) {
        ferry_delivery *d;
        assert_int_equal(ferry_receive(c, WAIT_MS, &d), 0);
        char want[64];
        snprintf(want, sizeof want, "order-%d", i);
        assert_string_equal(d->id, want);
        snprintf(want, sizeof want, "{\"order\": %d, \"total\": %d}", i, 1000 + i);
        assert_int_equal(d->payload_len, strlen(want));
        assert_memory_equal(d->payload, want, d->payload_len);
        snprintf(want, sizeof want, "customer-%d", i % 10);
        assert_int_equal(d->key_len, strlen(want));
        assert_memory_equal(d->key, want, d->key_len);
        assert_int_equal(d->header_count, 1);
        assert_string_equal(d->headers[0].name, "content-type");
        assert_string_equal((const char *)d->headers[0].value, "application/json");
        assert_int_equal(ferry_delivery_ack(d), 0);
        ferry_delivery_free(d);
    }
    ferry_topic_info ti;
    assert_int_equal(it_topic(c, "orders", &ti), 1);
    assert_int_equal(ti.message_count, N);
    ferry_close(c);
    sql(fx->pg, "DROP TABLE shop_orders");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_install_idempotent_checked_and_versioned, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_notify_wakes_relay_headers_keys_rollback, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_lower_id_committing_last_is_not_skipped, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_kill9_after_ack_republishes_only_duplicates, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_second_relay_stands_by_and_takes_over, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_postgres_immediate_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_row_marked_failed_others_go_on, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_bad_input_one_line_and_exit_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_inbox_purge_acked_forgets_below_floor_keeps_redrivable,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_inbox_batch_one_commit_failures_isolated_duplicate_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_psycopg_example_committed_events_only, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_inbox_claims_in_the_callers_transaction, setup,
                                        teardown),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
