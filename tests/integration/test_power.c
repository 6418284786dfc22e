/*
 * test_power.c - power cuts and failing fsyncs: nothing acknowledged is
 * lost.
 *
 * ferryd runs under the faultfs shim (tests/support/faultfs.h), which keeps
 * a "durable image" of ferry.db and its WAL holding only what was fsynced,
 * and models Linux after a failed fsync: the dirty pages are forgotten. A
 * power cut is: SIGKILL ferryd, replace each file by its image, drop the
 * shared memory. A publisher in a child process pipelines messages and
 * appends "N SEQ T\n" to a file as each ack arrives (T: monotonic ms), so
 * the record survives whatever happens to the broker. After the cut ferryd
 * starts again without the shim and, stopped, its store must hold every
 * acknowledged message at its sequence with its payload, and pass
 * integrity_check.
 *
 * The cases:
 *  - one fsync of ferry.db fails during a checkpoint (pages dropped), then
 *    power is cut: ferryd must exit by itself (it cannot trust the database
 *    file any more) and recovery must keep every ack;
 *  - one WAL fsync fails in a commit: that commit fails, ferryd goes on,
 *    and a later cut loses nothing acked;
 *  - cuts at random moments and inside WAL and database fsyncs;
 *  - --sync normal: a cut loses at most the last --sync-interval of acks
 *    (asserted for acks older than twice the interval), and never the
 *    schema;
 *  - an unreadable page: the fetch that meets it fails alone, the commit's
 *    other publishes and acks go through, and the log says "disk read
 *    error".
 *
 * Timing decides when a cut lands, never whether a case passes.
 */
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <cmocka.h>

#include "faultfs.h"
#include "harness.h"
#include "it_util.h"

#define TOPIC "power"
/* Payloads big enough that a few seconds of publishing fill the WAL past
 * the broker's checkpoint threshold (1,000 pages) many times. */
#define PAYLOAD_BYTES 1000
#define WINDOW 200
/* A publisher gives up on its own after this long. */
#define CHILD_MAX_MS 120000
/* In the read-error case: the marker the shim refuses to read, placed past
 * the part of a payload SQLite keeps in the table's leaf page, so that only
 * the message's overflow pages hold it. */
#define POISON "FERRY-POISON-PAGE"
#define POISON_BYTES 8000
#define POISON_AT 7000
#define SYNC_INTERVAL_MS 200

struct fx {
    struct harness_broker b;
    char dir[HARNESS_PATH_BYTES / 2];
    char data[HARNESS_PATH_BYTES];
    char shadow[HARNESS_PATH_BYTES];
    char ctl[HARNESS_PATH_BYTES];
    const char *lib;
    int started;
};

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    *state = fx;
    fx->lib = getenv("FAULTFS_LIB");
    if (!fx->lib) {
        fprintf(stderr, "FAULTFS_LIB is not set (meson passes it)\n");
        return -1;
    }
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(fx->dir, sizeof fx->dir, "%s/ferry-power-XXXXXX", tmp);
    if (!mkdtemp(fx->dir))
        return -1;
    snprintf(fx->data, sizeof fx->data, "%s/data", fx->dir);
    snprintf(fx->shadow, sizeof fx->shadow, "%s/shadow", fx->dir);
    snprintf(fx->ctl, sizeof fx->ctl, "%s/rules", fx->dir);
    if (mkdir(fx->data, 0700) < 0 || mkdir(fx->shadow, 0700) < 0)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    int rc = 0;
    if (fx) {
        if (fx->started)
            rc = harness_check_log(&fx->b);
        harness_cleanup(&fx->b);
        if (!getenv("HARNESS_KEEP"))
            nftw(fx->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        free(fx);
    }
    return rc;
}

static void rules(struct fx *fx, const char *text)
{
    assert_int_equal(faultfs_rules(fx->ctl, text), 0);
}

/* Starts (the first time) or restarts ferryd, under the shim or not. */
static void start(struct fx *fx, int shim, const char *const *args)
{
    if (shim)
        assert_int_equal(faultfs_setenv(fx->lib, fx->data, fx->shadow, fx->ctl), 0);
    int r = fx->started ? harness_restart(&fx->b) : harness_start_dir(&fx->b, fx->data, args);
    if (shim)
        faultfs_unsetenv();
    if (r != 0)
        fail_msg("ferryd did not start (%d)", r);
    fx->started = 1;
}

/* Waits up to ms for ferryd to exit by itself. Returns its exit status
 * (128 + signal when killed by one), or -1 if it is still running. */
static int wait_broker_exit(struct fx *fx, int ms)
{
    int64_t end = harness_now_ms() + ms * harness_slowdown();
    for (;;) {
        int st = 0;
        pid_t r = waitpid(fx->b.pid, &st, WNOHANG);
        if (r == fx->b.pid) {
            fx->b.pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        if (harness_now_ms() >= end)
            return -1;
        it_sleep_ms(5);
    }
}

/* Waits up to ms for needle in the broker's log; 1 when it came. */
static int wait_log(struct fx *fx, const char *needle, int ms)
{
    int64_t end = harness_now_ms() + ms * harness_slowdown();
    while (!it_file_has(fx->b.log_path, needle)) {
        if (harness_now_ms() >= end)
            return 0;
        it_sleep_ms(10);
    }
    return 1;
}

/* The power cut: ferryd and the publisher die, and only what was fsynced
 * stays on the disk. */
static void power_cut(struct fx *fx, pid_t publisher)
{
    if (fx->b.pid)
        harness_kill9(&fx->b);
    if (publisher > 0) {
        kill(publisher, SIGKILL);
        waitpid(publisher, NULL, 0);
    }
    int n = faultfs_power_cut(fx->data, fx->shadow, NULL);
    if (n < 0)
        fail_msg("power cut: %s", strerror(-n));
}

/* ----- the publisher ----------------------------------------------------- */

static void payload_for(const char *prefix, uint64_t n, uint8_t *buf, size_t len)
{
    int k = snprintf((char *)buf, len, "%s-%" PRIu64 ":", prefix, n);
    it_payload((size_t)n, buf + k, len - (size_t)k);
}

struct pub_ctx {
    int fd;
};

static void on_ack(void *ud, int status, const ferry_ack *ack)
{
    struct pub_ctx *pc = ud;
    if (status != 0 || !ack)
        return; /* not acked: nothing promised */
    /* The id is "PREFIX-N": record N, the sequence and the time. */
    const char *dash = strrchr(ack->id, '-');
    char line[128];
    int k = snprintf(line, sizeof line, "%s %" PRIu64 " %" PRId64 "\n", dash ? dash + 1 : "?",
                     ack->seq, harness_now_ms());
    if (write(pc->fd, line, (size_t)k) != k)
        _exit(5);
}

/* Publishes PREFIX-0, PREFIX-1, ... until the broker goes away: pipelined
 * (WINDOW in flight) when pace_ms is 0, else one at a time, pace_ms apart. */
static int run_publisher(const char *addr, const char *ack_path, const char *prefix, int pace_ms)
{
#ifdef __linux__
    prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
    struct pub_ctx pc = {.fd = open(ack_path, O_WRONLY | O_CREAT | O_APPEND, 0644)};
    if (pc.fd < 0)
        return 5;
    ferry_options o = FERRY_OPTIONS_INIT;
    o.request_timeout_ms = 10000;
    o.max_in_flight = WINDOW;
    ferry_conn *c = NULL;
    if (ferry_connect(addr, &o, &c, NULL, 0) != 0)
        return 3;
    static uint8_t payload[PAYLOAD_BYTES];
    char id[64];
    int64_t end = harness_now_ms() + CHILD_MAX_MS;
    for (uint64_t n = 0; harness_now_ms() < end; n++) {
        snprintf(id, sizeof id, "%s-%" PRIu64, prefix, n);
        payload_for(prefix, n, payload, sizeof payload);
        ferry_msg m;
        memset(&m, 0, sizeof m);
        m.topic = TOPIC;
        m.id = id;
        m.payload = payload;
        m.payload_len = sizeof payload;
        if (pace_ms) {
            ferry_ack ack;
            if (ferry_publish(c, &m, &ack) == 0)
                on_ack(&pc, 0, &ack);
            else if (ferry_ping(c, NULL) != 0)
                break;
            it_sleep_ms(pace_ms);
        } else if (ferry_publish_async(c, &m, on_ack, &pc) != 0) {
            break;
        }
    }
    ferry_close(c);
    close(pc.fd);
    return 0;
}

static pid_t spawn_publisher(struct fx *fx, const char *ack_path, const char *prefix, int pace_ms)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(run_publisher(fx->b.addr, ack_path, prefix, pace_ms));
    return pid;
}

static long count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    long n = 0;
    int ch;
    while ((ch = getc(f)) != EOF)
        n += ch == '\n';
    fclose(f);
    return n;
}

static void wait_acks(struct fx *fx, const char *ack_path, long n)
{
    int64_t end = harness_now_ms() + 60000 * harness_slowdown();
    while (count_lines(ack_path) < n) {
        if (harness_now_ms() >= end) {
            harness_dump_log(&fx->b);
            fail_msg("fewer than %ld acks within 60 s", n);
        }
        it_sleep_ms(10);
    }
}

/* ----- checking the store ----------------------------------------------- */

struct check {
    long acked, kept, lost_recent;
};

/*
 * With the broker stopped: every ack in ack_path of an ack received before
 * deadline_ms (INT64_MAX: all) must be in the store at its sequence, with
 * the id and payload it was published with. Acks after the deadline are
 * counted as kept or lost_recent, not asserted.
 */
static struct check check_acks(struct fx *fx, const char *ack_path, const char *prefix,
                               int64_t deadline_ms)
{
    struct harness_row *rows = NULL;
    long nrows = harness_db_rows(&fx->b, TOPIC, &rows);
    assert_true(nrows >= 0);
    struct check ck = {0, 0, 0};
    FILE *f = fopen(ack_path, "r");
    assert_non_null(f);
    static uint8_t want[PAYLOAD_BYTES];
    char line[128];
    while (fgets(line, sizeof line, f)) {
        unsigned long long n, seq;
        long long t;
        assert_int_equal(sscanf(line, "%llu %llu %lld", &n, &seq, &t), 3);
        ck.acked++;
        char id[64];
        snprintf(id, sizeof id, "%s-%llu", prefix, n);
        /* Rows come in sequence order, dense from the first kept one. */
        const struct harness_row *r = NULL;
        if (nrows > 0 && seq >= rows[0].seq && seq - rows[0].seq < (uint64_t)nrows)
            r = &rows[seq - rows[0].seq];
        int ok = r && r->seq == seq && !strcmp(r->msg_id, id);
        if (ok) {
            payload_for(prefix, n, want, sizeof want);
            ok = r->payload_len == sizeof want && !memcmp(r->payload, want, sizeof want);
        }
        if (ok) {
            ck.kept++;
            continue;
        }
        if (t >= deadline_ms) {
            ck.lost_recent++;
            continue;
        }
        fclose(f);
        harness_dump_log(&fx->b);
        harness_db_rows_free(rows, nrows);
        fail_msg("acked %s at seq %llu (%lld ms before the deadline) is not in the store", id, seq,
                 (long long)(deadline_ms == INT64_MAX ? 0 : deadline_ms - t));
    }
    fclose(f);
    harness_db_rows_free(rows, nrows);
    return ck;
}

static void assert_integrity(struct fx *fx)
{
    sqlite3 *db = NULL;
    assert_int_equal(harness_db_open(&fx->b, &db), 0);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    const char *res = (const char *)sqlite3_column_text(st, 0);
    if (strcmp(res, "ok") != 0)
        fail_msg("integrity_check: %s", res);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* After the cut: ferryd must come back on what the disk kept, and stop
 * cleanly; then the store is checked. */
static void restart_and_stop(struct fx *fx)
{
    start(fx, 0, NULL);
    int st = harness_stop(&fx->b);
    if (st != 0) {
        harness_dump_log(&fx->b);
        fail_msg("ferryd stopped with status %d after the power cut", st);
    }
    assert_integrity(fx);
}

static void ack_path_of(struct fx *fx, const char *name, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s.acks", fx->dir, name);
}

/* ----- the cases --------------------------------------------------------- */

/* The fsyncgate case: a failed database fsync during a checkpoint must stop
 * ferryd before SQLite can start the WAL over frames whose pages are not on
 * the disk; recovery then recopies every frame. */
static void test_power_failed_db_fsync_exits_and_keeps_every_ack(void **state)
{
    struct fx *fx = *state;
    char acks[HARNESS_PATH_BYTES + 32];
    ack_path_of(fx, "dbsync", acks, sizeof acks);
    start(fx, 1, NULL);
    pid_t pub = spawn_publisher(fx, acks, "d", 0);
    wait_acks(fx, acks, 500);
    rules(fx, "fail-fsync ferry.db 1\n");
    if (!wait_log(fx, "faultfs: fsync of ferry.db failed", 60000)) {
        harness_dump_log(&fx->b);
        fail_msg("no checkpoint fsync of ferry.db within 60 s");
    }
    /* Today's promise: it exits at once. Left running, it would go on
     * acking for a few seconds, checkpointing over the lost pages. */
    int st = wait_broker_exit(fx, 3000);
    long acked = count_lines(acks);
    power_cut(fx, pub);
    rules(fx, "");
    restart_and_stop(fx);
    struct check ck = check_acks(fx, acks, "d", INT64_MAX);
    print_message("failed db fsync: ferryd exit status %d; %ld acked, %ld kept\n", st, ck.acked,
                  ck.kept);
    assert_int_equal(ck.kept, ck.acked);
    assert_true(ck.acked >= acked);
    assert_int_equal(st, 74);
    assert_true(it_file_has(fx->b.log_path, "exiting so that recovery replays the WAL"));
}

/* A WAL fsync that fails in a commit fails that commit only. */
static void test_power_failed_wal_fsync_fails_one_commit(void **state)
{
    struct fx *fx = *state;
    char acks[HARNESS_PATH_BYTES + 32];
    ack_path_of(fx, "walsync", acks, sizeof acks);
    start(fx, 1, NULL);
    pid_t pub = spawn_publisher(fx, acks, "w", 0);
    wait_acks(fx, acks, 500);
    rules(fx, "fail-fsync ferry.db-wal 1\n");
    if (!wait_log(fx, "faultfs: fsync of ferry.db-wal failed", 30000))
        fail_msg("no WAL fsync within 30 s");
    long before = count_lines(acks);
    wait_acks(fx, acks, before + 2000); /* and it goes on acking */
    assert_int_equal(wait_broker_exit(fx, 0), -1);
    assert_true(it_file_has(fx->b.log_path, "commit of"));
    power_cut(fx, pub);
    rules(fx, "");
    restart_and_stop(fx);
    struct check ck = check_acks(fx, acks, "w", INT64_MAX);
    print_message("failed WAL fsync: %ld acked, %ld kept\n", ck.acked, ck.kept);
    assert_int_equal(ck.kept, ck.acked);
}

/* Power cuts at a random moment, inside a WAL fsync and inside a database
 * fsync, one after the other on the same data folder. */
static void test_power_cuts_at_random_and_inside_fsyncs(void **state)
{
    struct fx *fx = *state;
    uint64_t rng = harness_seed();
    static const char *const kinds[] = {"random", "wal", "db", "random", "wal", "db"};
    enum { ROUNDS = sizeof kinds / sizeof kinds[0] };
    char acks[ROUNDS][HARNESS_PATH_BYTES + 32];
    char prefix[ROUNDS][16];
    for (int i = 0; i < ROUNDS; i++) {
        char name[32];
        snprintf(name, sizeof name, "round%d", i);
        ack_path_of(fx, name, acks[i], sizeof acks[i]);
        snprintf(prefix[i], sizeof prefix[i], "r%d", i);
        start(fx, 1, NULL);
        pid_t pub = spawn_publisher(fx, acks[i], prefix[i], 0);
        wait_acks(fx, acks[i], 200);
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        int r = (int)(rng >> 33);
        char text[96];
        if (!strcmp(kinds[i], "random")) {
            it_sleep_ms(100 + r % 1400);
        } else {
            snprintf(text, sizeof text, "cut-in-fsync %s %d\n",
                     !strcmp(kinds[i], "wal") ? "ferry.db-wal" : "ferry.db",
                     !strcmp(kinds[i], "wal") ? 5 + r % 200 : 0);
            rules(fx, text);
            if (wait_broker_exit(fx, 30000) < 0)
                fail_msg("round %d: the cut inside an fsync did not come within 30 s", i);
        }
        power_cut(fx, pub);
        rules(fx, "");
        print_message("round %d (%s): %ld acked\n", i, kinds[i], count_lines(acks[i]));
    }
    restart_and_stop(fx);
    for (int i = 0; i < ROUNDS; i++) {
        struct check ck = check_acks(fx, acks[i], prefix[i], INT64_MAX);
        assert_int_equal(ck.kept, ck.acked);
    }
}

/* --sync normal: a cut loses at most the acks of the last interval; the
 * first start's schema never. */
static void test_power_sync_normal_loses_at_most_the_interval(void **state)
{
    struct fx *fx = *state;
    char acks[HARNESS_PATH_BYTES + 32];
    ack_path_of(fx, "normal", acks, sizeof acks);
    char interval[32];
    snprintf(interval, sizeof interval, "%dms", SYNC_INTERVAL_MS);
    const char *const args[] = {"--sync", "normal", "--sync-interval", interval, NULL};
    start(fx, 1, args);
    /* A low rate, as in a quiet service: the WAL never grows to a
     * checkpoint (whose fsyncs would cover the acks anyway). */
    pid_t pub = spawn_publisher(fx, acks, "n", 10);
    wait_acks(fx, acks, 50);
    it_sleep_ms(600 + (int)(harness_seed() % 600));
    int64_t cut = harness_now_ms();
    power_cut(fx, pub);
    restart_and_stop(fx);
    struct check ck = check_acks(fx, acks, "n", cut - 2 * SYNC_INTERVAL_MS);
    print_message("--sync normal, interval %d ms: %ld acked, %ld kept, %ld of the last %d ms "
                  "lost\n",
                  SYNC_INTERVAL_MS, ck.acked, ck.kept, ck.lost_recent, 2 * SYNC_INTERVAL_MS);
    assert_true(ck.kept > 0);
}

/* Reads one delivery on c within ms; NULL when none came. */
static ferry_delivery *receive(ferry_conn *c, int ms)
{
    ferry_delivery *d = NULL;
    int r = ferry_receive(c, ms, &d);
    if (r == FERRY_ETIMEOUT)
        return NULL;
    if (r != 0)
        fail_msg("receive: %s (%s)", ferry_strerror(r), ferry_errmsg(c));
    return d;
}

/* An unreadable page costs the fetch that meets it, not the commit it
 * shares with other connections' publishes and acks. */
static void test_power_read_error_fails_only_the_fetch(void **state)
{
    struct fx *fx = *state;
    start(fx, 1, NULL);
    ferry_conn *c = it_connect(fx->b.addr);
    static uint8_t big[POISON_BYTES];
    for (int i = 0; i < 20; i++) {
        it_payload((size_t)i, big, sizeof big);
        memcpy(big + POISON_AT, POISON, strlen(POISON));
        ferry_msg m;
        memset(&m, 0, sizeof m);
        m.topic = "bad";
        m.payload = big;
        m.payload_len = sizeof big;
        ferry_ack ack;
        assert_int_equal(ferry_publish(c, &m, &ack), 0);
    }
    ferry_close(c);
    assert_int_equal(harness_stop(&fx->b), 0); /* everything into ferry.db */

    rules(fx, "poison-read " POISON "\n");
    start(fx, 1, NULL);
    ferry_conn *reader = it_connect(fx->b.addr);
    ferry_conn *other = it_connect(fx->b.addr);
    ferry_sub_options so = FERRY_SUB_OPTIONS_INIT;
    so.start = FERRY_START_EARLIEST;
    ferry_sub *bad = NULL, *good = NULL;
    assert_int_equal(ferry_subscribe(reader, "bad", "g", &so, &bad), 0);
    assert_int_equal(ferry_subscribe(other, "good", "g", &so, &good), 0);
    /* The reader's group keeps failing to fetch; meanwhile the other
     * connection publishes, receives and acks in the same commits. */
    int failed = 0;
    for (int i = 0; i < 100; i++) {
        ferry_msg m;
        memset(&m, 0, sizeof m);
        m.topic = "good";
        m.payload = "x";
        m.payload_len = 1;
        ferry_ack ack;
        int r = ferry_publish(other, &m, &ack);
        if (r != 0) {
            print_error("publish %d: %s (%s)\n", i, ferry_strerror(r), ferry_errmsg(other));
            failed++;
            continue;
        }
        ferry_delivery *d = receive(other, 5000 * harness_slowdown());
        assert_non_null(d);
        r = ferry_delivery_ack(d);
        if (r != 0) {
            print_error("ack %d: %s (%s)\n", i, ferry_strerror(r), ferry_errmsg(other));
            failed++;
        }
        ferry_delivery_free(d);
        ferry_poll(reader);
    }
    assert_null(receive(reader, 100));
    assert_int_equal(failed, 0);
    assert_true(wait_log(fx, "disk read error", 5000));
    /* Readable again: the group gets its messages after the retry. */
    rules(fx, "");
    ferry_delivery *d = receive(reader, 10000 * harness_slowdown());
    assert_non_null(d);
    assert_int_equal(d->seq, 1);
    ferry_delivery_free(d);
    ferry_close(reader);
    ferry_close(other);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_power_failed_db_fsync_exits_and_keeps_every_ack, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_power_failed_wal_fsync_fails_one_commit, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_power_cuts_at_random_and_inside_fsyncs, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_power_sync_normal_loses_at_most_the_interval, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_power_read_error_fails_only_the_fetch, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
