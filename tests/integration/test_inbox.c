/*
 * test_inbox.c - the idempotent inbox (issue 4, client/inbox.c) against the
 * real ferryd and real SQLite databases: claims, the handle helper's
 * commit-then-ack order, handler failures, a consumer process that exits
 * between its COMMIT and its ack (the FERRY_INBOX_TEST_EXIT_ENV hook), two
 * consumer processes racing on expired leases, replays within and beyond
 * the window, and a purge that keeps the table bounded over a long run.
 *
 * Each test gets its own broker (fixture) and its own database, DIR/app.db
 * in the broker's temporary directory, in WAL mode. The handler used
 * throughout appends a row to `effects` (no unique constraint, so a second
 * run of a handler shows as a second row) and counts its runs.
 *
 * Child processes are forked (the test has no threads of its own at that
 * moment) and never return into cmocka: they report through their exit
 * status, and the parent asserts on it and on the database.
 */
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <cmocka.h>
#include <sqlite3.h>

#include "harness.h"
#include "it_util.h"

#define TOPIC "orders"
#define GROUP "inventory"
/* How long a delivery that must come may take. */
#define WAIT_MS 10000
/* Child processes are killed after this long. */
#define CHILD_MAX_MS 60000

struct fx {
    struct it_fx it;
    char db_path[HARNESS_PATH_BYTES + 16];
};

static int setup(void **state)
{
    if (it_fx_setup(state, sizeof(struct fx), NULL, "test-inbox") != 0)
        return -1;
    struct fx *fx = *state;
    snprintf(fx->db_path, sizeof fx->db_path, "%s/app.db", fx->it.b.dir);
    return 0;
}

/* ----- the application database ------------------------------------------ */

/* Opens path as an application would: WAL, a busy timeout, the inbox and
 * the effects table installed. Returns NULL on failure (for children). */
static sqlite3 *app_db_open(const char *path)
{
    sqlite3 *db = NULL;
    if (sqlite3_open(path, &db) != SQLITE_OK) {
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 5000);
    if (sqlite3_exec(db,
                     "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                     "CREATE TABLE IF NOT EXISTS effects ("
                     " id INTEGER PRIMARY KEY AUTOINCREMENT,"
                     " msg_id TEXT NOT NULL, seq INTEGER NOT NULL, pid INTEGER NOT NULL)",
                     NULL, NULL, NULL) != SQLITE_OK ||
        ferry_inbox_install(db) != 0) {
        sqlite3_close(db);
        return NULL;
    }
    return db;
}

static sqlite3 *must_db(const char *path)
{
    sqlite3 *db = app_db_open(path);
    if (!db)
        fail_msg("cannot open %s", path);
    return db;
}

/* One integer from sql (first column of the first row). */
static int64_t q_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        fail_msg("prepare %s: %s", sql, sqlite3_errmsg(db));
    int src = sqlite3_step(st);
    if (src != SQLITE_ROW)
        fail_msg("%s: no row (%s)", sql, sqlite3_errmsg(db));
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static void must_exec(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
        fail_msg("%s: %s", sql, err ? err : "?");
}

/* The handler: one row in effects per run; fails while fail_left > 0;
 * sleeps sleep_ms first when sleep_every divides the sequence. */
struct app {
    int runs;
    int fail_left;
    int sleep_every;
    int sleep_ms;
    int fail_first_mod; /* fail the first attempt of seqs divisible by it */
};

static int effect_handler(void *userdata, sqlite3 *db, const ferry_delivery *d)
{
    struct app *a = userdata;
    a->runs++;
    if (a->sleep_every && d->seq % (uint64_t)a->sleep_every == 0)
        it_sleep_ms(a->sleep_ms);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "INSERT INTO effects(msg_id, seq, pid) VALUES (?1, ?2, ?3)", -1, &st,
                           NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(st, 1, d->id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)d->seq);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)getpid());
    int src = sqlite3_step(st);
    sqlite3_finalize(st);
    if (src != SQLITE_DONE)
        return -1;
    if (a->fail_left > 0) {
        a->fail_left--;
        return -7; /* after writing: the rollback must undo it */
    }
    if (a->fail_first_mod && d->attempt == 1 && d->seq % (uint64_t)a->fail_first_mod == 0)
        return -8;
    return 0;
}

/* A handler that breaks the contract: it applies its effect and commits. */
static int committing_handler(void *userdata, sqlite3 *db, const ferry_delivery *d)
{
    int rc = effect_handler(userdata, db, d);
    return rc != 0 ? rc : sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
}

static int count_commits(void *arg)
{
    (*(int *)arg)++;
    return 0;
}

/* ----- broker helpers ------------------------------------------------------ */

/* Publishes n messages "m<i>" (i from first) in batches; ids are the
 * broker's. */
static void publish_n(ferry_conn *c, size_t first, size_t n)
{
    enum { CHUNK = 500 };
    static ferry_msg msgs[CHUNK];
    static char bodies[CHUNK][32];
    for (size_t done = 0; done < n;) {
        size_t k = n - done < CHUNK ? n - done : CHUNK;
        for (size_t j = 0; j < k; j++) {
            memset(&msgs[j], 0, sizeof msgs[j]);
            msgs[j].topic = TOPIC;
            msgs[j].payload = bodies[j];
            msgs[j].payload_len =
                (size_t)snprintf(bodies[j], sizeof bodies[j], "m%zu", first + done + j);
        }
        int r = ferry_publish_batch(c, msgs, k, NULL);
        if (r != 0)
            fail_msg("publish: %s (%s)", ferry_strerror(r), ferry_errmsg(c));
        done += k;
    }
}

static ferry_sub *subscribe(ferry_conn *c, uint32_t window, uint32_t ack_wait_ms,
                            uint16_t max_deliveries)
{
    ferry_sub_options o = FERRY_SUB_OPTIONS_INIT;
    o.start = FERRY_START_EARLIEST;
    o.max_in_flight = window;
    o.ack_wait_ms = ack_wait_ms;
    o.max_deliveries = max_deliveries;
    ferry_sub *s = NULL;
    int r = ferry_subscribe(c, TOPIC, GROUP, &o, &s);
    if (r != 0)
        fail_msg("subscribe: %s (%s)", ferry_strerror(r), ferry_errmsg(c));
    return s;
}

static ferry_delivery *recv_one(ferry_conn *c)
{
    ferry_delivery *d = NULL;
    int r = ferry_receive(c, WAIT_MS, &d);
    if (r != 0)
        fail_msg("no delivery within %d ms: %s (%s)", WAIT_MS, ferry_strerror(r), ferry_errmsg(c));
    return d;
}

static ferry_group_info must_group(ferry_conn *c)
{
    ferry_group_info *list = NULL, gi;
    size_t n = 0;
    int r = ferry_groups(c, TOPIC, &list, &n);
    if (r != 0)
        fail_msg("groups: %s (%s)", ferry_strerror(r), ferry_errmsg(c));
    int found = 0;
    memset(&gi, 0, sizeof gi);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(list[i].group, GROUP) == 0) {
            gi = list[i];
            found = 1;
        }
    }
    ferry_groups_free(list);
    if (!found)
        fail_msg("group %s not listed", GROUP);
    return gi;
}

/* Waits until the group has nothing left to do (every message acked). */
static void wait_group_done(ferry_conn *c, uint64_t head)
{
    int64_t deadline = harness_now_ms() + WAIT_MS;
    ferry_group_info gi;
    for (;;) {
        gi = must_group(c);
        if (gi.lag == 0 && gi.ack_floor == head + 1 && gi.in_flight == 0)
            return;
        if (harness_now_ms() > deadline)
            fail_msg("group not done: cursor %" PRIu64 " floor %" PRIu64 " lag %" PRIu64
                     " in flight %u",
                     gi.cursor, gi.ack_floor, gi.lag, gi.in_flight);
        it_sleep_ms(20);
    }
}

/* ----- child consumers ----------------------------------------------------- */

/* What a child consumer does: connect, subscribe, handle deliveries with
 * ferry_inbox_handle until `stop_after_idle_ms` without one (or forever
 * when 0), then flush its acks and exit 0. Exit codes above 0 and below 9
 * name a failure; 9 is the test hook's. */
struct child_spec {
    const char *addr;
    const char *db_path;
    uint32_t window;
    uint32_t ack_wait_ms;
    uint16_t max_deliveries;
    int stop_after_idle_ms;
    int sleep_every, sleep_ms;
    const char *exit_after_commit; /* the hook's value, NULL: unset */
    int batch;                     /* take what has arrived, ferry_inbox_handle_batch */
};

static void child_main(const struct child_spec *cs)
{
    if (cs->exit_after_commit)
        setenv(FERRY_INBOX_TEST_EXIT_ENV, cs->exit_after_commit, 1);
    else
        unsetenv(FERRY_INBOX_TEST_EXIT_ENV);
    sqlite3 *db = app_db_open(cs->db_path);
    if (!db)
        _exit(2);
    ferry_conn *c = NULL;
    if (ferry_connect(cs->addr, NULL, &c, NULL, 0) != 0)
        _exit(3);
    ferry_sub_options o = FERRY_SUB_OPTIONS_INIT;
    o.start = FERRY_START_EARLIEST;
    o.max_in_flight = cs->window;
    o.ack_wait_ms = cs->ack_wait_ms;
    o.max_deliveries = cs->max_deliveries;
    ferry_sub *s = NULL;
    if (ferry_subscribe(c, TOPIC, GROUP, &o, &s) != 0)
        _exit(4);
    struct app a = {0, 0, cs->sleep_every, cs->sleep_ms, 0};
    for (;;) {
        ferry_delivery *d = NULL;
        int r = ferry_receive(c, cs->stop_after_idle_ms > 0 ? cs->stop_after_idle_ms : -1, &d);
        if (r == FERRY_ETIMEOUT)
            break;
        if (r != 0)
            _exit(5);
        if (cs->batch) {
            ferry_delivery *ds[64];
            size_t n = 1;
            ds[0] = d;
            while (n < 64 && ferry_receive(c, 0, &ds[n]) == 0)
                n++;
            r = ferry_inbox_handle_batch(db, GROUP, ds, n, effect_handler, &a, 0, NULL);
            for (size_t i = 0; i < n; i++)
                ferry_delivery_free(ds[i]);
        } else {
            r = ferry_inbox_handle(db, GROUP, d, effect_handler, &a, 0);
            ferry_delivery_free(d);
        }
        if (r < 0)
            _exit(6);
    }
    if (ferry_flush(c, 10000) != 0)
        _exit(7);
    ferry_close(c);
    sqlite3_close(db);
    _exit(0);
}

static pid_t child_start(const struct child_spec *cs)
{
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
#ifdef __linux__
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
#endif
        child_main(cs);
    }
    return pid;
}

/* Waits for pid; returns its exit code, or 128 + signal. Kills it after
 * CHILD_MAX_MS. */
static int child_wait(pid_t pid)
{
    int64_t deadline = harness_now_ms() + CHILD_MAX_MS;
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (harness_now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            fail_msg("child %d still running after %d ms", (int)pid, CHILD_MAX_MS);
        }
        it_sleep_ms(10);
    }
}

/* ----- 1. install and claim ------------------------------------------------ */

static void test_inbox_install_idempotent_and_versioned(void **state)
{
    struct fx *fx = *state;
    sqlite3 *db = must_db(fx->db_path);
    assert_int_equal(ferry_inbox_install(db), 0);
    assert_int_equal(ferry_inbox_install(db), 0);
    assert_int_equal(q_int(db, "SELECT value FROM ferry_inbox_meta WHERE name = 'schema_version'"),
                     2);
    /* The layout the documentation promises, and its purge indexes. */
    assert_int_equal(q_int(db, "SELECT count(*) FROM pragma_table_info('ferry_inbox')"), 5);
    assert_int_equal(q_int(db, "SELECT count(*) FROM pragma_index_list('ferry_inbox')"
                               " WHERE name IN ('ferry_inbox_processed', 'ferry_inbox_seq')"),
                     2);
    assert_int_equal(q_int(db, "SELECT group_concat(name, ',') = 'grp,topic,seq' FROM "
                               "pragma_index_info('ferry_inbox_seq')"),
                     1);
    assert_int_equal(q_int(db, "SELECT count(*) FROM sqlite_schema WHERE name = 'ferry_inbox'"
                               " AND sql LIKE '%WITHOUT ROWID%'"),
                     1);
    /* A dropped table is made again; inside the caller's transaction, in
     * a savepoint: the transaction stays open, and its rollback undoes it. */
    must_exec(db, "DROP TABLE ferry_inbox");
    must_exec(db, "BEGIN");
    assert_int_equal(ferry_inbox_install(db), 0);
    assert_int_equal(sqlite3_get_autocommit(db), 0);
    assert_int_equal(q_int(db, "SELECT count(*) FROM sqlite_schema WHERE name = 'ferry_inbox'"), 1);
    must_exec(db, "ROLLBACK");
    assert_int_equal(q_int(db, "SELECT count(*) FROM sqlite_schema WHERE name = 'ferry_inbox'"), 0);
    assert_int_equal(ferry_inbox_install(db), 0);
    assert_int_equal(q_int(db, "SELECT count(*) FROM sqlite_schema WHERE name = 'ferry_inbox'"), 1);
    /* A version 1 layout (no sequence index) is brought to version 2, its
     * claims kept. */
    must_exec(db, "INSERT INTO ferry_inbox VALUES ('g', 'm1', 't', 1, 1);"
                  "DROP INDEX ferry_inbox_seq;"
                  "UPDATE ferry_inbox_meta SET value = '1' WHERE name = 'schema_version'");
    assert_int_equal(ferry_inbox_install(db), 0);
    assert_int_equal(q_int(db, "SELECT value FROM ferry_inbox_meta WHERE name = 'schema_version'"),
                     2);
    assert_int_equal(q_int(db, "SELECT count(*) FROM pragma_index_list('ferry_inbox')"
                               " WHERE name = 'ferry_inbox_seq'"),
                     1);
    assert_int_equal(q_int(db, "SELECT count(*) FROM ferry_inbox"), 1);
    /* A newer layout is refused, not damaged. */
    must_exec(db, "UPDATE ferry_inbox_meta SET value = '3' WHERE name = 'schema_version'");
    assert_int_equal(ferry_inbox_install(db), FERRY_EUNSUPPORTED);
    assert_int_equal(sqlite3_get_autocommit(db), 1);
    assert_int_equal(ferry_inbox_install(NULL), FERRY_EINVALID);
    sqlite3_close(db);
}

static void test_inbox_claim_fresh_then_seen(void **state)
{
    struct fx *fx = *state;
    sqlite3 *db = must_db(fx->db_path);
    publish_n(fx->it.c, 1, 2);
    ferry_sub *s = subscribe(fx->it.c, 10, 0, 0);
    ferry_delivery *d1 = recv_one(fx->it.c);
    ferry_delivery *d2 = recv_one(fx->it.c);
    assert_int_equal(d1->seq, 1);

    /* Outside a transaction a claim would commit apart from its effect. */
    assert_int_equal(ferry_inbox_claim(db, GROUP, d1), FERRY_EINVALID);

    must_exec(db, "BEGIN IMMEDIATE");
    assert_int_equal(ferry_inbox_claim(db, GROUP, d1), FERRY_INBOX_FRESH);
    /* Twice in one transaction: the second sees the first. */
    assert_int_equal(ferry_inbox_claim(db, GROUP, d1), FERRY_INBOX_SEEN);
    must_exec(db, "COMMIT");

    must_exec(db, "BEGIN IMMEDIATE");
    assert_int_equal(ferry_inbox_claim(db, GROUP, d1), FERRY_INBOX_SEEN);
    /* Another group's claim is its own. */
    assert_int_equal(ferry_inbox_claim(db, "email", d1), FERRY_INBOX_FRESH);
    /* A rolled-back claim was never made. */
    assert_int_equal(ferry_inbox_claim(db, GROUP, d2), FERRY_INBOX_FRESH);
    must_exec(db, "ROLLBACK");
    must_exec(db, "BEGIN IMMEDIATE");
    assert_int_equal(ferry_inbox_claim(db, GROUP, d2), FERRY_INBOX_FRESH);
    assert_int_equal(ferry_inbox_claim(db, "email", d1), FERRY_INBOX_FRESH);
    must_exec(db, "COMMIT");

    /* What was recorded. */
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM ferry_inbox WHERE grp = '%s' AND msg_id = '%s'"
             " AND topic = '%s' AND seq = 1 AND processed_ms BETWEEN %" PRId64 " AND %" PRId64,
             GROUP, d1->id, TOPIC, harness_wall_ms() - 60000, harness_wall_ms() + 1000);
    assert_int_equal(q_int(db, sql), 1);
    assert_int_equal(q_int(db, "SELECT count(*) FROM ferry_inbox"), 3);

    /* Bad arguments are errors, never "seen". */
    must_exec(db, "BEGIN IMMEDIATE");
    assert_int_equal(ferry_inbox_claim(db, "", d1), FERRY_EINVALID);
    assert_int_equal(ferry_inbox_claim(db, NULL, d1), FERRY_EINVALID);
    assert_int_equal(ferry_inbox_claim(db, GROUP, NULL), FERRY_EINVALID);
    ferry_delivery fake = *d1;
    fake.id = "";
    assert_int_equal(ferry_inbox_claim(db, GROUP, &fake), FERRY_EINVALID_ID);
    must_exec(db, "ROLLBACK");
    /* A missing table is a storage error, not "seen". */
    must_exec(db, "DROP TABLE ferry_inbox");
    must_exec(db, "BEGIN IMMEDIATE");
    assert_int_equal(ferry_inbox_claim(db, GROUP, d1), FERRY_ESTORAGE);
    must_exec(db, "ROLLBACK");

    ferry_delivery_free(d1);
    ferry_delivery_free(d2);
    assert_int_equal(ferry_unsubscribe(s), 0);
    sqlite3_close(db);
}

/* ----- 2. handle ------------------------------------------------------------ */

static void test_inbox_handle_runs_handler_once_commits_then_acks(void **state)
{
    struct fx *fx = *state;
    sqlite3 *db = must_db(fx->db_path);
    publish_n(fx->it.c, 1, 3);
    ferry_sub *s = subscribe(fx->it.c, 10, 0, 0);
    struct app a = {0};
    for (int i = 1; i <= 3; i++) {
        ferry_delivery *d = recv_one(fx->it.c);
        assert_int_equal(ferry_inbox_handle(db, GROUP, d, effect_handler, &a, 0),
                         FERRY_INBOX_FRESH);
        assert_int_equal(sqlite3_get_autocommit(db), 1);
        /* The same delivery again (as a redelivery would bring it): the
         * handler is skipped, the ack is repeated. */
        assert_int_equal(ferry_inbox_handle(db, GROUP, d, effect_handler, &a, 0), FERRY_INBOX_SEEN);
        ferry_delivery_free(d);
    }
    assert_int_equal(a.runs, 3);
    assert_int_equal(q_int(db, "SELECT count(*) FROM effects"), 3);
    assert_int_equal(q_int(db, "SELECT count(DISTINCT msg_id) FROM effects"), 3);
    assert_int_equal(ferry_flush(fx->it.c, WAIT_MS), 0);
    wait_group_done(fx->it.c, 3);

    /* No transaction may be open: the helper's COMMIT would take it. */
    publish_n(fx->it.c, 4, 1);
    ferry_delivery *d = recv_one(fx->it.c);
    must_exec(db, "BEGIN");
    assert_int_equal(ferry_inbox_handle(db, GROUP, d, effect_handler, &a, 0), FERRY_EINVALID);
    must_exec(db, "ROLLBACK");
    assert_int_equal(ferry_inbox_handle(db, GROUP, d, NULL, &a, 0), FERRY_EINVALID);
    assert_int_equal(ferry_inbox_handle(db, GROUP, d, effect_handler, &a, 0), FERRY_INBOX_FRESH);
    ferry_delivery_free(d);

    /* A handler that ends the transaction itself: reported, nacked; what
     * it committed holds its claim, so the redelivery is skipped. */
    publish_n(fx->it.c, 5, 1);
    d = recv_one(fx->it.c);
    assert_int_equal(d->seq, 5);
    assert_int_equal(ferry_inbox_handle(db, GROUP, d, committing_handler, &a, 0), FERRY_ESTORAGE);
    assert_int_equal(sqlite3_get_autocommit(db), 1);
    ferry_delivery_free(d);
    d = recv_one(fx->it.c);
    assert_int_equal(d->seq, 5);
    assert_int_equal(d->attempt, 2);
    assert_int_equal(ferry_inbox_handle(db, GROUP, d, effect_handler, &a, 0), FERRY_INBOX_SEEN);
    ferry_delivery_free(d);
    assert_int_equal(q_int(db, "SELECT count(*) FROM effects WHERE seq = 5"), 1);
    assert_int_equal(ferry_unsubscribe(s), 0);
    sqlite3_close(db);
}

static void test_inbox_handler_failure_rolls_back_nacks_redelivery_succeeds(void **state)
{
    struct fx *fx = *state;
    sqlite3 *db = must_db(fx->db_path);
    publish_n(fx->it.c, 1, 1);
    ferry_sub *s = subscribe(fx->it.c, 10, 0, 0);
    struct app a = {0};
    a.fail_left = 2;

    enum { DELAY_MS = 300 };
    for (uint32_t attempt = 1; attempt <= 3; attempt++) {
        int64_t t0 = harness_now_ms();
        ferry_delivery *d = recv_one(fx->it.c);
        int64_t waited = harness_now_ms() - t0;
        assert_int_equal(d->seq, 1);
        assert_int_equal(d->attempt, attempt);
        /* The nack's delay holds the redelivery back (a little tolerance:
         * the broker counts whole milliseconds). */
        if (attempt > 1 && waited < DELAY_MS - 20)
            fail_msg("attempt %u came after %" PRId64 " ms, before the %d ms delay", attempt,
                     waited, DELAY_MS);
        int r = ferry_inbox_handle(db, GROUP, d, effect_handler, &a, DELAY_MS);
        ferry_delivery_free(d);
        if (attempt < 3) {
            assert_int_equal(r, FERRY_INBOX_RETRY);
            /* Rolled back: neither the effect nor the claim is there. */
            assert_int_equal(q_int(db, "SELECT count(*) FROM effects"), 0);
            assert_int_equal(q_int(db, "SELECT count(*) FROM ferry_inbox"), 0);
            assert_int_equal(sqlite3_get_autocommit(db), 1);
        } else {
            assert_int_equal(r, FERRY_INBOX_FRESH);
        }
    }
    assert_int_equal(a.runs, 3);
    assert_int_equal(q_int(db, "SELECT count(*) FROM effects"), 1);
    assert_int_equal(q_int(db, "SELECT count(*) FROM ferry_inbox"), 1);
    assert_int_equal(ferry_flush(fx->it.c, WAIT_MS), 0);
    wait_group_done(fx->it.c, 1);
    ferry_group_info gi = must_group(fx->it.c);
    assert_int_equal(gi.redelivered, 2);
    assert_int_equal(gi.dead_lettered, 0);
    assert_int_equal(ferry_unsubscribe(s), 0);
    sqlite3_close(db);
}

/* A batch: one transaction, one COMMIT; a failing handler undoes only its
 * own delivery (nacked, redelivered, then applied); a message twice in one
 * batch is applied once. */
static void test_inbox_batch_one_commit_failures_isolated_duplicate_once(void **state)
{
    struct fx *fx = *state;
    sqlite3 *db = must_db(fx->db_path);
    enum { N = 20 };
    publish_n(fx->it.c, 1, N);
    ferry_sub *s = subscribe(fx->it.c, N, 0, 0);
    ferry_delivery *ds[N + 1];
    for (int i = 0; i < N; i++) {
        ds[i] = recv_one(fx->it.c);
        assert_int_equal(ds[i]->seq, (uint64_t)i + 1);
    }
    ds[N] = ds[0]; /* seq 1 once more, at the end */
    struct app a = {0};
    a.fail_first_mod = 5;
    int commits = 0;
    sqlite3_commit_hook(db, count_commits, &commits);
    int out[N + 1];
    assert_int_equal(ferry_inbox_handle_batch(db, GROUP, ds, N + 1, effect_handler, &a, 100, out),
                     0);
    sqlite3_commit_hook(db, NULL, NULL);
    assert_int_equal(commits, 1);
    for (int i = 0; i < N; i++)
        assert_int_equal(out[i], (i + 1) % 5 == 0 ? FERRY_INBOX_RETRY : FERRY_INBOX_FRESH);
    assert_int_equal(out[N], FERRY_INBOX_SEEN);
    assert_int_equal(a.runs, N);
    assert_int_equal(q_int(db, "SELECT count(*) FROM effects"), N - N / 5);
    assert_int_equal(q_int(db, "SELECT count(*) FROM effects WHERE seq % 5 = 0"), 0);
    assert_int_equal(q_int(db, "SELECT count(*) FROM ferry_inbox"), N - N / 5);
    for (int i = 0; i < N; i++)
        ferry_delivery_free(ds[i]);

    /* The four failures come back (attempt 2) and are applied. */
    ferry_delivery *again[N / 5];
    for (int i = 0; i < N / 5; i++) {
        again[i] = recv_one(fx->it.c);
        assert_int_equal(again[i]->seq % 5, 0);
        assert_int_equal(again[i]->attempt, 2);
    }
    assert_int_equal(
        ferry_inbox_handle_batch(db, GROUP, again, N / 5, effect_handler, &a, 100, NULL), 0);
    for (int i = 0; i < N / 5; i++)
        ferry_delivery_free(again[i]);
    assert_int_equal(q_int(db, "SELECT count(*) FROM effects"), N);
    assert_int_equal(q_int(db, "SELECT count(DISTINCT msg_id) FROM effects"), N);
    assert_int_equal(ferry_flush(fx->it.c, WAIT_MS), 0);
    wait_group_done(fx->it.c, N);

    /* Arguments, and no transaction may be open. */
    assert_int_equal(ferry_inbox_handle_batch(db, GROUP, ds, 0, effect_handler, &a, 0, NULL),
                     FERRY_EINVALID);
    assert_int_equal(ferry_inbox_handle_batch(db, GROUP, NULL, 1, effect_handler, &a, 0, NULL),
                     FERRY_EINVALID);
    ferry_delivery *nul = NULL;
    assert_int_equal(ferry_inbox_handle_batch(db, GROUP, &nul, 1, effect_handler, &a, 0, NULL),
                     FERRY_EINVALID);
    assert_int_equal(ferry_unsubscribe(s), 0);
    sqlite3_close(db);
}

/* ----- 3. a consumer that dies between COMMIT and ack ---------------------- */

static void test_inbox_killed_after_commit_before_ack_redelivery_skips_handler(void **state)
{
    struct fx *fx = *state;
    sqlite3 *db = must_db(fx->db_path);
    enum { N = 20 };
    publish_n(fx->it.c, 1, N);

    /* The first consumer process commits its 5th message and exits (9)
     * before that message's ack is sent; the acks of 1..4 were pipelined
     * and may or may not have gone out. */
    struct child_spec cs = {0};
    cs.addr = fx->it.b.addr;
    cs.db_path = fx->db_path;
    cs.window = 1; /* one at a time: the 5th is message 5 */
    cs.ack_wait_ms = 60000;
    cs.stop_after_idle_ms = 2000;
    cs.exit_after_commit = "5";
    int code = child_wait(child_start(&cs));
    assert_int_equal(code, 9);
    assert_int_equal(q_int(db, "SELECT count(*) FROM effects"), 5);
    assert_int_equal(q_int(db, "SELECT count(*) FROM ferry_inbox"), 5);
    assert_int_equal(q_int(db, "SELECT max(seq) FROM effects"), 5);

    /* The broker saw the connection close: message 5 (at least) comes
     * again at once, though the lease is a minute. In this process: its
     * redelivery finds the claim, the handler does not run, the ack goes. */
    ferry_sub *s = subscribe(fx->it.c, 100, 60000, 0);
    struct app a = {0};
    int seen = 0, fresh = 0, redelivered_5 = 0;
    int64_t deadline = harness_now_ms() + WAIT_MS;
    while (fresh < N - 5) {
        if (harness_now_ms() > deadline)
            fail_msg("only %d fresh of %d after %d ms", fresh, N - 5, WAIT_MS);
        ferry_delivery *d = recv_one(fx->it.c);
        if (d->seq == 5) {
            assert_true(d->attempt >= 2);
            redelivered_5 = 1;
        }
        int r = ferry_inbox_handle(db, GROUP, d, effect_handler, &a, 0);
        if (d->seq <= 5)
            assert_int_equal(r, FERRY_INBOX_SEEN);
        else
            assert_int_equal(r, FERRY_INBOX_FRESH);
        seen += r == FERRY_INBOX_SEEN;
        fresh += r == FERRY_INBOX_FRESH;
        ferry_delivery_free(d);
    }
    assert_true(redelivered_5);
    assert_true(seen >= 1); /* message 5 at least: its claim was found */
    assert_int_equal(a.runs, N - 5);
    assert_int_equal(ferry_flush(fx->it.c, WAIT_MS), 0);
    wait_group_done(fx->it.c, N);
    /* Every effect exactly once. */
    assert_int_equal(q_int(db, "SELECT count(*) FROM effects"), N);
    assert_int_equal(q_int(db, "SELECT count(DISTINCT msg_id) FROM effects"), N);
    assert_int_equal(q_int(db, "SELECT count(*) FROM ferry_inbox"), N);
    assert_int_equal(ferry_unsubscribe(s), 0);
    sqlite3_close(db);
}

/* The same with batches: the consumer process exits right after the COMMIT
 * of the batch that holds its 7th fresh claim; none of that batch was
 * acked. Every one of them comes again, finds its claim, and is acked. */
static void test_inbox_batch_killed_after_commit_before_acks_each_effect_once(void **state)
{
    struct fx *fx = *state;
    sqlite3 *db = must_db(fx->db_path);
    enum { N = 200 };
    publish_n(fx->it.c, 1, N);
    struct child_spec cs = {0};
    cs.addr = fx->it.b.addr;
    cs.db_path = fx->db_path;
    cs.window = 50;
    cs.ack_wait_ms = 60000;
    cs.stop_after_idle_ms = 2000;
    cs.exit_after_commit = "7";
    cs.batch = 1;
    assert_int_equal(child_wait(child_start(&cs)), 9);
    int64_t committed = q_int(db, "SELECT count(*) FROM effects");
    assert_true(committed >= 7);
    assert_int_equal(q_int(db, "SELECT count(*) FROM ferry_inbox"), committed);

    /* Another consumer process finishes the work, in batches too. */
    cs.exit_after_commit = NULL;
    assert_int_equal(child_wait(child_start(&cs)), 0);
    wait_group_done(fx->it.c, N);
    assert_int_equal(q_int(db, "SELECT count(*) FROM effects"), N);
    assert_int_equal(q_int(db, "SELECT count(DISTINCT msg_id) FROM effects"), N);
    /* The redeliveries of the batch that was committed but not acked. */
    ferry_group_info gi = must_group(fx->it.c);
    assert_true(gi.redelivered >= 1);
    sqlite3_close(db);
}

/* Two consumer processes on one database, with a lease shorter than some
 * handlers take: the broker hands those messages to the other process while
 * the first still works on them. BEGIN IMMEDIATE orders the two: the second
 * waits for the first's COMMIT and finds its claim. */
static void test_inbox_two_consumers_racing_on_expired_leases_each_effect_once(void **state)
{
    struct fx *fx = *state;
    sqlite3 *db = must_db(fx->db_path);
    enum { N = 300 };
    publish_n(fx->it.c, 1, N);
    struct child_spec cs = {0};
    cs.addr = fx->it.b.addr;
    cs.db_path = fx->db_path;
    cs.window = 4;
    cs.ack_wait_ms = 150;
    cs.max_deliveries = 1000; /* churn, not dead letters */
    cs.stop_after_idle_ms = 3000;
    cs.sleep_every = 25; /* every 25th message takes twice the lease */
    cs.sleep_ms = 300;
    pid_t p1 = child_start(&cs);
    pid_t p2 = child_start(&cs);
    assert_int_equal(child_wait(p1), 0);
    assert_int_equal(child_wait(p2), 0);
    wait_group_done(fx->it.c, N);
    assert_int_equal(q_int(db, "SELECT count(*) FROM effects"), N);
    assert_int_equal(q_int(db, "SELECT count(DISTINCT msg_id) FROM effects"), N);
    assert_int_equal(q_int(db, "SELECT count(*) FROM ferry_inbox"), N);
    /* The race did happen: slow messages were redelivered. */
    ferry_group_info gi = must_group(fx->it.c);
    if (gi.redelivered == 0)
        fail_msg("no redelivery: the lease never expired under a slow handler");
    sqlite3_close(db);
}

/* ----- 4. replay and purge ---------------------------------------------- */

static void test_inbox_seek_within_window_skips_beyond_window_reruns(void **state)
{
    struct fx *fx = *state;
    sqlite3 *db = must_db(fx->db_path);
    enum { N = 10 };
    publish_n(fx->it.c, 1, N);
    ferry_sub *s = subscribe(fx->it.c, 100, 0, 0);
    struct app a = {0};
    for (int i = 0; i < N; i++) {
        ferry_delivery *d = recv_one(fx->it.c);
        assert_int_equal(ferry_inbox_handle(db, GROUP, d, effect_handler, &a, 0),
                         FERRY_INBOX_FRESH);
        ferry_delivery_free(d);
    }
    assert_int_equal(ferry_flush(fx->it.c, WAIT_MS), 0);
    wait_group_done(fx->it.c, N);

    /* A replay within the window: first deliveries again, all skipped. */
    assert_int_equal(ferry_seek(fx->it.c, TOPIC, GROUP, FERRY_START_SEQ, 1, NULL), 0);
    for (int i = 0; i < N; i++) {
        ferry_delivery *d = recv_one(fx->it.c);
        assert_int_equal(d->attempt, 1);
        assert_int_equal(ferry_inbox_handle(db, GROUP, d, effect_handler, &a, 0), FERRY_INBOX_SEEN);
        ferry_delivery_free(d);
    }
    assert_int_equal(a.runs, N);

    /* Once the claims are past the window (a 0 ms window here), a replay
     * runs the handlers again: that is what it is for. */
    assert_int_equal(ferry_flush(fx->it.c, WAIT_MS), 0);
    wait_group_done(fx->it.c, N);
    it_sleep_ms(5);
    assert_int_equal(ferry_inbox_purge(db, 0, 0), N);
    assert_int_equal(ferry_seek(fx->it.c, TOPIC, GROUP, FERRY_START_SEQ, 1, NULL), 0);
    for (int i = 0; i < N; i++) {
        ferry_delivery *d = recv_one(fx->it.c);
        assert_int_equal(ferry_inbox_handle(db, GROUP, d, effect_handler, &a, 0),
                         FERRY_INBOX_FRESH);
        ferry_delivery_free(d);
    }
    assert_int_equal(a.runs, 2 * N);
    assert_int_equal(q_int(db, "SELECT count(*) FROM effects"), 2 * N);
    assert_int_equal(ferry_unsubscribe(s), 0);
    sqlite3_close(db);
}

/* Issue 9's finding, replayed: inventory commits its effect and crashes
 * before the ack, then crashes again (max_deliveries 2), so the message is
 * dead-lettered although its effect happened; e-mail handled it long ago.
 * A redrive (what `ferry dead replay` does) brings it back to inventory
 * only, under its id: the inbox skips the handler. Effects: exactly one in
 * each group (with the old replay, two in inventory and two in e-mail). */
static void test_inbox_dead_letter_then_redrive_each_effect_once(void **state)
{
    struct fx *fx = *state;
    char email_path[HARNESS_PATH_BYTES + 32];
    snprintf(email_path, sizeof email_path, "%s/email.db", fx->it.b.dir);
    sqlite3 *db = must_db(fx->db_path), *edb = must_db(email_path);
    publish_n(fx->it.c, 1, 1);
    struct app a = {0}, ea = {0};

    ferry_conn *ce = it_connect(fx->it.b.addr);
    ferry_sub_options eo = FERRY_SUB_OPTIONS_INIT;
    ferry_sub *es = NULL;
    assert_int_equal(ferry_subscribe(ce, TOPIC, "email", &eo, &es), 0);
    ferry_delivery *e = recv_one(ce);
    assert_int_equal(ferry_inbox_handle(edb, "email", e, effect_handler, &ea, 0),
                     FERRY_INBOX_FRESH);
    ferry_delivery_free(e);
    assert_int_equal(ferry_flush(ce, WAIT_MS), 0);

    /* Attempt 1: the effect commits, the process dies before the ack. */
    ferry_conn *ci = it_connect(fx->it.b.addr);
    subscribe(ci, 10, 0, 2);
    ferry_delivery *d = recv_one(ci);
    char id[160];
    snprintf(id, sizeof id, "%s", d->id);
    must_exec(db, "BEGIN IMMEDIATE");
    assert_int_equal(ferry_inbox_claim(db, GROUP, d), FERRY_INBOX_FRESH);
    assert_int_equal(effect_handler(&a, db, d), 0);
    must_exec(db, "COMMIT");
    ferry_delivery_free(d);
    ferry_close(ci);
    /* Attempt 2: seen, and the process dies again before the ack. */
    ci = it_connect(fx->it.b.addr);
    subscribe(ci, 10, 0, 2);
    d = recv_one(ci);
    assert_int_equal(d->attempt, 2);
    must_exec(db, "BEGIN IMMEDIATE");
    assert_int_equal(ferry_inbox_claim(db, GROUP, d), FERRY_INBOX_SEEN);
    must_exec(db, "ROLLBACK");
    ferry_delivery_free(d);
    ferry_close(ci);
    int64_t deadline = harness_now_ms() + WAIT_MS;
    ferry_topic_info ti;
    memset(&ti, 0, sizeof ti);
    while ((it_topic(fx->it.c, "_dead." TOPIC, &ti) != 1 || ti.message_count == 0) &&
           harness_now_ms() < deadline)
        it_sleep_ms(10);
    assert_int_equal(ti.message_count, 1);
    assert_int_equal(must_group(fx->it.c).dead_lettered, 1);

    /* The redrive: to inventory only, the same message. */
    uint64_t seq = 0;
    assert_int_equal(ferry_redrive(fx->it.c, TOPIC, NULL, 1, &seq), 0);
    assert_int_equal(seq, 1);
    ci = it_connect(fx->it.b.addr);
    subscribe(ci, 10, 0, 2);
    d = recv_one(ci);
    assert_int_equal(d->seq, 1);
    assert_int_equal(d->attempt, 1);
    assert_string_equal(d->id, id);
    assert_int_equal(ferry_inbox_handle(db, GROUP, d, effect_handler, &a, 0), FERRY_INBOX_SEEN);
    ferry_delivery_free(d);
    assert_int_equal(ferry_flush(ci, WAIT_MS), 0);
    wait_group_done(fx->it.c, 1);
    ferry_delivery *none = NULL;
    assert_int_equal(ferry_receive(ce, 300, &none), FERRY_ETIMEOUT);

    assert_int_equal(a.runs, 1);
    assert_int_equal(ea.runs, 1);
    assert_int_equal(q_int(db, "SELECT count(*) FROM effects"), 1);
    assert_int_equal(q_int(edb, "SELECT count(*) FROM effects"), 1);
    ferry_close(ci);
    ferry_close(ce);
    sqlite3_close(edb);
    sqlite3_close(db);
}

static void test_inbox_purge_keeps_table_bounded_over_long_run(void **state)
{
    struct fx *fx = *state;
    sqlite3 *db = must_db(fx->db_path);
    int n_total = getenv("FERRY_LONG") ? 100000 : 20000;
    enum { ROUND = 1000, WINDOW_MS = 150, PURGE_MAX = 5000 };
    ferry_sub *s = subscribe(fx->it.c, 500, 0, 0);
    struct app a = {0};
    int64_t max_rows = 0;
    for (int done = 0; done < n_total; done += ROUND) {
        publish_n(fx->it.c, (size_t)done + 1, ROUND);
        for (int i = 0; i < ROUND; i++) {
            ferry_delivery *d = recv_one(fx->it.c);
            assert_int_equal(ferry_inbox_handle(db, GROUP, d, effect_handler, &a, 0),
                             FERRY_INBOX_FRESH);
            ferry_delivery_free(d);
        }
        int64_t rows = q_int(db, "SELECT count(*) FROM ferry_inbox");
        if (rows > max_rows)
            max_rows = rows;
        /* What a consumer does every so often: purge, bounded. */
        it_sleep_ms(WINDOW_MS / 3);
        /* The purge's own clock reads at least this: a slow machine (or
         * valgrind) between the purge and the check below must not count
         * rows that passed the window in between. */
        int64_t purge_ms = harness_wall_ms();
        int purged = ferry_inbox_purge(db, WINDOW_MS, PURGE_MAX);
        assert_true(purged >= 0);
        assert_true(purged <= PURGE_MAX);
        /* Below the limit, everything past the window went. */
        if (purged < PURGE_MAX) {
            char sql[160];
            snprintf(sql, sizeof sql,
                     "SELECT count(*) FROM ferry_inbox WHERE processed_ms < %" PRId64,
                     purge_ms - WINDOW_MS - 50);
            assert_int_equal(q_int(db, sql), 0);
        }
    }
    /* Bounded by what a window (and a round) holds, not by the run. */
    if (max_rows > 5 * ROUND)
        fail_msg("the inbox grew to %" PRId64 " rows over %d messages", max_rows, n_total);
    it_sleep_ms(WINDOW_MS + 10);
    /* max_rows bounds one call; repeated calls empty it. */
    int64_t left = q_int(db, "SELECT count(*) FROM ferry_inbox");
    if (left > 0) {
        assert_int_equal(ferry_inbox_purge(db, WINDOW_MS, 1), 1);
        assert_int_equal(q_int(db, "SELECT count(*) FROM ferry_inbox"), left - 1);
    }
    while (ferry_inbox_purge(db, WINDOW_MS, 100) > 0) {
    }
    assert_int_equal(q_int(db, "SELECT count(*) FROM ferry_inbox"), 0);
    assert_int_equal(q_int(db, "SELECT count(*) FROM effects"), n_total);
    assert_int_equal(a.runs, n_total);
    /* The purge walks the processed_ms index. */
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "EXPLAIN QUERY PLAN SELECT grp, msg_id FROM ferry_inbox"
                                        " WHERE processed_ms < 1 ORDER BY processed_ms LIMIT 5",
                                        -1, &st, NULL),
                     SQLITE_OK);
    int uses_index = 0;
    while (sqlite3_step(st) == SQLITE_ROW)
        if (strstr((const char *)sqlite3_column_text(st, 3), "ferry_inbox_processed"))
            uses_index = 1;
    sqlite3_finalize(st);
    assert_true(uses_index);
    /* Arguments. */
    assert_int_equal(ferry_inbox_purge(db, -1, 0), FERRY_EINVALID);
    assert_int_equal(ferry_inbox_purge(db, 0, -1), FERRY_EINVALID);
    assert_int_equal(ferry_inbox_purge(db, INT64_MAX, 0), 0);
    assert_int_equal(ferry_unsubscribe(s), 0);
    sqlite3_close(db);
}

/* Waits until the broker's durable floor of the group reaches want. */
static uint64_t wait_floor(ferry_conn *c, uint64_t want, uint64_t *keep, size_t cap, size_t *n)
{
    int64_t deadline = harness_now_ms() + WAIT_MS;
    uint64_t floor = 0;
    for (;;) {
        int r = ferry_group_floor(c, TOPIC, GROUP, &floor, keep, cap, n);
        if (r != 0)
            fail_msg("ferry_group_floor: %s (%s)", ferry_strerror(r), ferry_errmsg(c));
        if (floor >= want)
            return floor;
        if (harness_now_ms() > deadline)
            fail_msg("floor %" PRIu64 ", want %" PRIu64, floor, want);
        it_sleep_ms(10);
    }
}

/* Dead-letters message 1 of the topic (max_deliveries 2) after its effect
 * committed on the first attempt: the consumer dies before the ack, twice.
 * Returns its message id in id. */
static void dead_letter_applied_first(struct fx *fx, sqlite3 *db, struct app *a, char *id,
                                      size_t idcap)
{
    for (int attempt = 1; attempt <= 2; attempt++) {
        ferry_conn *ci = it_connect(fx->it.b.addr);
        subscribe(ci, 1, 0, 2);
        ferry_delivery *d = recv_one(ci);
        assert_int_equal(d->seq, 1);
        assert_int_equal(d->attempt, attempt);
        snprintf(id, idcap, "%s", d->id);
        must_exec(db, "BEGIN IMMEDIATE");
        int fresh = ferry_inbox_claim(db, GROUP, d);
        assert_int_equal(fresh, attempt == 1 ? FERRY_INBOX_FRESH : FERRY_INBOX_SEEN);
        if (fresh == FERRY_INBOX_FRESH)
            assert_int_equal(effect_handler(a, db, d), 0);
        must_exec(db, "COMMIT");
        ferry_delivery_free(d);
        ferry_close(ci);
    }
    int64_t deadline = harness_now_ms() + WAIT_MS;
    while (must_group(fx->it.c).dead_lettered == 0 && harness_now_ms() < deadline)
        it_sleep_ms(10);
    assert_int_equal(must_group(fx->it.c).dead_lettered, 1);
}

/* The bounded purge (issue 9, item 4): claims below the broker's durable
 * floor are forgotten, except a dead-lettered message's, which a redrive
 * can bring back. The redrive after the purge then still finds its claim:
 * no effect twice. A SEEK back lowers the floor. */
static void test_inbox_purge_acked_forgets_below_floor_keeps_redrivable(void **state)
{
    struct fx *fx = *state;
    sqlite3 *db = must_db(fx->db_path);
    enum { N = 10 };
    struct app a = {0};
    char id[160];
    publish_n(fx->it.c, 1, 1);
    dead_letter_applied_first(fx, db, &a, id, sizeof id);

    publish_n(fx->it.c, 2, N - 1);
    ferry_conn *ci = it_connect(fx->it.b.addr);
    ferry_sub *s = subscribe(ci, 100, 0, 2);
    for (int i = 0; i < N - 1; i++) {
        ferry_delivery *d = recv_one(ci);
        assert_int_equal(ferry_inbox_handle(db, GROUP, d, effect_handler, &a, 0),
                         FERRY_INBOX_FRESH);
        ferry_delivery_free(d);
    }
    assert_int_equal(ferry_flush(ci, WAIT_MS), 0);
    uint64_t keep[4];
    size_t n = 99;
    assert_int_equal(wait_floor(ci, N + 1, keep, 4, &n), N + 1);
    assert_int_equal(n, 1);
    assert_int_equal(keep[0], 1);
    /* No room for the list: the floor stops at the first one left out. */
    uint64_t floor = 0;
    assert_int_equal(ferry_group_floor(ci, TOPIC, GROUP, &floor, NULL, 0, &n), 0);
    assert_int_equal(floor, 1);
    assert_int_equal(n, 0);

    assert_int_equal(q_int(db, "SELECT count(*) FROM ferry_inbox"), N);
    assert_int_equal(ferry_inbox_purge_acked(db, GROUP, s, 0), N - 1);
    assert_int_equal(q_int(db, "SELECT count(*) FROM ferry_inbox"), 1);
    assert_int_equal(q_int(db, "SELECT seq FROM ferry_inbox"), 1);
    assert_int_equal(ferry_inbox_purge_acked(db, GROUP, s, 0), 0);

    /* The redrive comes to a claim that is still there. */
    uint64_t seq = 0;
    assert_int_equal(ferry_redrive(fx->it.c, TOPIC, GROUP, 1, &seq), 0);
    assert_int_equal(seq, 1);
    ferry_delivery *d = recv_one(ci);
    assert_int_equal(d->seq, 1);
    assert_string_equal(d->id, id);
    assert_int_equal(ferry_inbox_handle(db, GROUP, d, effect_handler, &a, 0), FERRY_INBOX_SEEN);
    ferry_delivery_free(d);
    assert_int_equal(ferry_flush(ci, WAIT_MS), 0);
    wait_group_done(fx->it.c, N);
    /* Acked again, it can be redriven again: still kept. */
    assert_int_equal(ferry_inbox_purge_acked(db, GROUP, s, 0), 0);
    assert_int_equal(q_int(db, "SELECT count(*) FROM ferry_inbox"), 1);
    assert_int_equal(a.runs, N);
    assert_int_equal(q_int(db, "SELECT count(*) FROM effects"), N);
    assert_int_equal(q_int(db, "SELECT count(DISTINCT msg_id) FROM effects"), N);

    /* Another grp's claims and another topic's are not touched. */
    must_exec(db, "INSERT INTO ferry_inbox VALUES ('other', 'x', '" TOPIC "', 2, 1),"
                  " ('" GROUP "', 'y', 'elsewhere', 2, 1)");
    assert_int_equal(ferry_inbox_purge_acked(db, GROUP, s, 0), 0);
    assert_int_equal(q_int(db, "SELECT count(*) FROM ferry_inbox"), 3);
    must_exec(db, "DELETE FROM ferry_inbox WHERE grp = 'other' OR topic = 'elsewhere'");

    /* A SEEK back: the floor follows it down. */
    assert_int_equal(ferry_seek(fx->it.c, TOPIC, GROUP, FERRY_START_SEQ, 5, NULL), 0);
    assert_int_equal(ferry_group_floor(fx->it.c, TOPIC, GROUP, &floor, keep, 4, &n), 0);
    assert_int_equal(floor, 5);
    assert_int_equal(n, 1);

    /* Arguments, and what the broker refuses. */
    uint64_t bad[2] = {3, 2};
    assert_int_equal(ferry_inbox_forget(db, GROUP, TOPIC, 5, bad, 2, 0), FERRY_EINVALID);
    bad[0] = 5;
    assert_int_equal(ferry_inbox_forget(db, GROUP, TOPIC, 5, bad, 1, 0), FERRY_EINVALID);
    assert_int_equal(ferry_inbox_forget(db, GROUP, TOPIC, 5, NULL, 0, -1), FERRY_EINVALID);
    assert_int_equal(ferry_inbox_forget(NULL, GROUP, TOPIC, 5, NULL, 0, 0), FERRY_EINVALID);
    assert_int_equal(ferry_inbox_purge_acked(db, GROUP, NULL, 0), FERRY_EINVALID);
    assert_int_equal(ferry_group_floor(fx->it.c, TOPIC, "nobody", &floor, keep, 4, &n),
                     FERRY_EUNKNOWN_GROUP);
    assert_int_equal(ferry_group_floor(fx->it.c, "nowhere", GROUP, &floor, keep, 4, &n),
                     FERRY_EUNKNOWN_TOPIC);
    assert_int_equal(ferry_group_floor(fx->it.c, "bad topic", GROUP, &floor, keep, 4, &n),
                     FERRY_EINVALID_TOPIC);
    ferry_close(ci);
    sqlite3_close(db);
}

/* max_rows bounds one forget; lowest sequences first; the claims kept
 * between the ranges stay. */
static void test_inbox_forget_bounded_lowest_first(void **state)
{
    struct fx *fx = *state;
    sqlite3 *db = must_db(fx->db_path);
    must_exec(db,
              "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100)"
              " INSERT INTO ferry_inbox SELECT '" GROUP "', 'm' || i, '" TOPIC "', i, 1 FROM n");
    uint64_t keep[3] = {2, 50, 51};
    assert_int_equal(ferry_inbox_forget(db, GROUP, TOPIC, 60, keep, 3, 10), 10);
    assert_int_equal(q_int(db, "SELECT min(seq) FROM ferry_inbox WHERE seq <> 2"), 12);
    assert_int_equal(ferry_inbox_forget(db, GROUP, TOPIC, 60, keep, 3, 0), 59 - 3 - 10);
    assert_int_equal(q_int(db, "SELECT group_concat(seq, ',') FROM (SELECT seq FROM ferry_inbox"
                               " WHERE seq < 60 ORDER BY seq)") != 0,
                     1);
    assert_int_equal(q_int(db, "SELECT count(*) FROM ferry_inbox WHERE seq < 60"), 3);
    assert_int_equal(q_int(db, "SELECT count(*) FROM ferry_inbox"), 3 + 41);
    /* Inside the caller's transaction: its rollback undoes it. */
    must_exec(db, "BEGIN");
    assert_int_equal(ferry_inbox_forget(db, GROUP, TOPIC, 1000, NULL, 0, 0), 44);
    assert_int_equal(sqlite3_get_autocommit(db), 0);
    must_exec(db, "ROLLBACK");
    assert_int_equal(q_int(db, "SELECT count(*) FROM ferry_inbox"), 44);
    /* The forget walks the sequence index. */
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "EXPLAIN QUERY PLAN SELECT msg_id FROM ferry_inbox"
                                        " WHERE grp = 'g' AND topic = 't' AND seq >= 1 AND"
                                        " seq < 9 ORDER BY seq LIMIT 5",
                                        -1, &st, NULL),
                     SQLITE_OK);
    int uses_index = 0;
    while (sqlite3_step(st) == SQLITE_ROW)
        if (strstr((const char *)sqlite3_column_text(st, 3), "ferry_inbox_seq"))
            uses_index = 1;
    sqlite3_finalize(st);
    assert_true(uses_index);
    sqlite3_close(db);
}

/* Over a long run, the floor purge keeps the inbox at what is above the
 * floor: bounded by the window in flight, not by the run's length. */
static void test_inbox_purge_acked_keeps_table_bounded_by_window(void **state)
{
    struct fx *fx = *state;
    sqlite3 *db = must_db(fx->db_path);
    int n_total = getenv("FERRY_LONG") ? 100000 : 20000;
    enum { ROUND = 1000, WINDOW = 200 };
    ferry_sub *s = subscribe(fx->it.c, WINDOW, 0, 5);
    struct app a = {0};
    int64_t max_rows = 0;
    publish_n(fx->it.c, 1, ROUND);
    for (int done = 0; done < n_total; done += ROUND) {
        /* The next round is published while this one is consumed. */
        if (done + ROUND < n_total)
            publish_n(fx->it.c, (size_t)done + ROUND + 1, ROUND);
        for (int i = 0; i < ROUND; i++) {
            ferry_delivery *d = recv_one(fx->it.c);
            assert_int_equal(ferry_inbox_handle(db, GROUP, d, effect_handler, &a, 0),
                             FERRY_INBOX_FRESH);
            ferry_delivery_free(d);
            if (i % 100 == 99) {
                int purged = ferry_inbox_purge_acked(db, GROUP, s, 0);
                if (purged < 0)
                    fail_msg("purge: %s", ferry_strerror(purged));
                int64_t rows = q_int(db, "SELECT count(*) FROM ferry_inbox");
                if (rows > max_rows)
                    max_rows = rows;
            }
        }
    }
    /* What is above the floor: the window, the acks not yet committed (at
     * most the 100 since the last purge), and a group commit's lag. */
    print_message("inbox rows: at most %" PRId64 " over %d messages (window %d)\n", max_rows,
                  n_total, WINDOW);
    if (max_rows > 3 * WINDOW + 100)
        fail_msg("the inbox grew to %" PRId64 " rows over %d messages", max_rows, n_total);
    assert_int_equal(ferry_flush(fx->it.c, WAIT_MS), 0);
    wait_group_done(fx->it.c, (uint64_t)n_total);
    assert_true(ferry_inbox_purge_acked(db, GROUP, s, 0) >= 0);
    assert_int_equal(q_int(db, "SELECT count(*) FROM ferry_inbox"), 0);
    assert_int_equal(q_int(db, "SELECT count(*) FROM effects"), n_total);
    assert_int_equal(ferry_unsubscribe(s), 0);
    sqlite3_close(db);
}

/* The window rule, and the subscription settings it is computed from. */
static void test_inbox_window_never_below_horizon_or_floor(void **state)
{
    struct fx *fx = *state;
    /* Default groups (30 s x 5): the 7-day floor. */
    assert_true(ferry_inbox_window_ms(30000, 5, 0) == FERRY_INBOX_MIN_WINDOW_MS);
    /* A long horizon wins: 1000 attempts of (1 h lease + 1 h delay). */
    assert_true(ferry_inbox_window_ms(3600000, 1000, 3600000) == 1000LL * 7200000);
    assert_true(ferry_inbox_window_ms(UINT32_MAX, UINT16_MAX, UINT32_MAX) ==
                (int64_t)UINT16_MAX * 2 * (int64_t)UINT32_MAX);
    /* Unlimited redeliveries: no window is safe. */
    assert_true(ferry_inbox_window_ms(30000, 0, 0) == INT64_MAX);

    ferry_sub *s = subscribe(fx->it.c, 7, 4321, 3);
    ferry_sub_info si;
    assert_int_equal(ferry_sub_info_get(s, &si), 0);
    assert_string_equal(si.topic, TOPIC);
    assert_string_equal(si.group, GROUP);
    assert_int_equal(si.max_in_flight, 7);
    assert_int_equal(si.ack_wait_ms, 4321);
    assert_int_equal(si.max_deliveries, 3);
    assert_int_equal(ferry_sub_set_window(s, 9), 0);
    assert_int_equal(ferry_sub_info_get(s, &si), 0);
    assert_int_equal(si.max_in_flight, 9);
    assert_int_equal(ferry_sub_info_get(NULL, &si), FERRY_EINVALID);
    assert_int_equal(ferry_sub_info_get(s, NULL), FERRY_EINVALID);
    assert_int_equal(ferry_unsubscribe(s), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_inbox_install_idempotent_and_versioned, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_inbox_claim_fresh_then_seen, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_inbox_handle_runs_handler_once_commits_then_acks,
                                        setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(
            test_inbox_handler_failure_rolls_back_nacks_redelivery_succeeds, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(
            test_inbox_batch_one_commit_failures_isolated_duplicate_once, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(
            test_inbox_killed_after_commit_before_ack_redelivery_skips_handler, setup,
            it_fx_teardown),
        cmocka_unit_test_setup_teardown(
            test_inbox_batch_killed_after_commit_before_acks_each_effect_once, setup,
            it_fx_teardown),
        cmocka_unit_test_setup_teardown(
            test_inbox_two_consumers_racing_on_expired_leases_each_effect_once, setup,
            it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_inbox_seek_within_window_skips_beyond_window_reruns,
                                        setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_inbox_dead_letter_then_redrive_each_effect_once, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_inbox_purge_keeps_table_bounded_over_long_run, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_inbox_window_never_below_horizon_or_floor, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_inbox_purge_acked_forgets_below_floor_keeps_redrivable,
                                        setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_inbox_forget_bounded_lowest_first, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_inbox_purge_acked_keeps_table_bounded_by_window, setup,
                                        it_fx_teardown),
    };
    /* IT_FILTER=pattern runs only the matching tests (cmocka's wildcards). */
    if (getenv("IT_FILTER"))
        cmocka_set_test_filter(getenv("IT_FILTER"));
    return cmocka_run_group_tests_name("inbox", tests, NULL, NULL);
}
