/*
 * test_crash.c - durability under crashes: what the client saw acked is
 * what the broker has after kill -9 and restart, with the same sequence
 * numbers, dense from 1.
 *
 * Publishers run in forked child processes (each with its own libferry
 * connection, pipelining with a window of 1000) and append one line per
 * ack, "ID SEQ\n", to their own file with write(2) as each ack arrives, so
 * the record survives whatever happens next. The parent kills the broker
 * while they publish, restarts it, and checks three ways: re-publishing
 * every acked id must answer "duplicate" with the recorded sequence; the
 * topic listing must agree; and, with the broker stopped, messages_v must
 * hold every acked id at its sequence, with the payload the id encodes,
 * and sequences 1..head without a gap.
 *
 * Timing only decides *when* the kill lands, never whether a test passes:
 * the checks hold for any moment of the kill.
 */
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
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <cmocka.h>

#include "harness.h"
#include "it_util.h"

#define TOPIC "crash"
#define PUBLISHERS 2
#define CYCLES 3
#define PAYLOAD_BYTES 100
#define WINDOW 1000
/* A publisher gives up on its own after this long, so that a parent that
 * failed can never leave one running. */
#define CHILD_MAX_MS 120000
/* A publisher batch in the atomicity test. */
#define BATCH 10

static int setup(void **state)
{
    return it_fx_start(state, sizeof(struct it_fx), NULL);
}

/* --sync normal gives up power-loss durability, not crash durability: a
 * kill -9 must still lose nothing that was acked. */
static int setup_sync_normal(void **state)
{
    static const char *const args[] = {"--sync", "normal", NULL};
    return it_fx_start(state, sizeof(struct it_fx), args);
}

/* ----- the publisher child ---------------------------------------------- */

struct child_ctx {
    int fd;
    int failed_acks;
};

static void on_child_ack(void *ud, int status, const ferry_ack *ack)
{
    struct child_ctx *cc = ud;
    if (status != 0 || !ack) {
        cc->failed_acks++;
        return;
    }
    char line[192];
    int n = snprintf(line, sizeof line, "%s %" PRIu64 "\n", ack->id, ack->seq);
    if (write(cc->fd, line, (size_t)n) != n)
        _exit(5);
}

/* Exit codes of a publisher: 0 it published until the broker went away;
 * 3 it could not connect; 4 it ran for CHILD_MAX_MS without the broker
 * going away; 5 it could not record an ack. */
static int run_child(const char *addr, const char *ack_path, int cycle, int proc, int batches)
{
#ifdef __linux__
    prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
    struct child_ctx cc = {.fd = open(ack_path, O_WRONLY | O_CREAT | O_APPEND, 0644)};
    if (cc.fd < 0)
        return 5;
    ferry_options o = FERRY_OPTIONS_INIT;
    o.request_timeout_ms = 10000;
    o.max_in_flight = WINDOW;
    ferry_conn *c = NULL;
    if (ferry_connect(addr, &o, &c, NULL, 0) != 0)
        return 3;
    uint64_t rng = harness_seed() ^ ((uint64_t)proc << 56);
    int64_t end = harness_now_ms() + CHILD_MAX_MS;
    uint8_t payload[BATCH][PAYLOAD_BYTES];
    char ids[BATCH][128];
    int rc = 4;
    for (size_t n = 0; harness_now_ms() < end; n++) {
        if (!batches) {
            char uuid[37];
            harness_uuid(&rng, uuid);
            snprintf(ids[0], sizeof ids[0], "c%d-p%d-%zu-%s", cycle, proc, n, uuid);
            it_payload(n, payload[0], PAYLOAD_BYTES);
            ferry_msg m;
            memset(&m, 0, sizeof m);
            m.topic = TOPIC;
            m.id = ids[0];
            m.payload = payload[0];
            m.payload_len = PAYLOAD_BYTES;
            if (ferry_publish_async(c, &m, on_child_ack, &cc) != 0) {
                rc = 0;
                break;
            }
        } else {
            ferry_msg msgs[BATCH];
            ferry_ack acks[BATCH];
            for (int j = 0; j < BATCH; j++) {
                snprintf(ids[j], sizeof ids[j], "b%d-p%d-%zu-%d", cycle, proc, n, j);
                it_payload(n * BATCH + (size_t)j, payload[j], PAYLOAD_BYTES);
                memset(&msgs[j], 0, sizeof msgs[j]);
                msgs[j].topic = TOPIC;
                msgs[j].id = ids[j];
                msgs[j].payload = payload[j];
                msgs[j].payload_len = PAYLOAD_BYTES;
            }
            if (ferry_publish_batch(c, msgs, BATCH, acks) != 0) {
                rc = 0;
                break;
            }
            for (int j = 0; j < BATCH; j++)
                on_child_ack(&cc, 0, &acks[j]);
        }
    }
    /* Whatever is still in flight gets its callback here or in close. */
    ferry_flush(c, 10000);
    ferry_close(c);
    close(cc.fd);
    return rc;
}

static pid_t spawn_child(const char *addr, const char *ack_path, int cycle, int proc, int batches)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(run_child(addr, ack_path, cycle, proc, batches));
    return pid;
}

/* Waits (generously) for a publisher to finish and asserts that it exited
 * on its own with status 0. */
static void reap_child(pid_t pid)
{
    int st = 0;
    int64_t deadline = harness_now_ms() + 60000;
    pid_t r;
    while ((r = waitpid(pid, &st, WNOHANG)) == 0 && harness_now_ms() < deadline)
        it_sleep_ms(10);
    if (r == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        fail_msg("publisher %d did not notice the broker going away within 60 s", (int)pid);
    }
    if (!WIFEXITED(st))
        fail_msg("publisher %d died of signal %d", (int)pid, WTERMSIG(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

static off_t file_size(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 ? sb.st_size : 0;
}

/* Waits until every publisher has recorded at least one ack, so the kill
 * lands while pipelining is in full flow. */
static void wait_first_acks(struct it_fx *fx, char paths[][HARNESS_PATH_BYTES + 32], int n)
{
    int64_t deadline = harness_now_ms() + 30000;
    for (int i = 0; i < n; i++) {
        while (file_size(paths[i]) == 0) {
            if (harness_now_ms() >= deadline) {
                harness_dump_log(&fx->b);
                fail_msg("publisher %d recorded no ack within 30 s", i);
            }
            it_sleep_ms(5);
        }
    }
}

/* ----- the ack records -------------------------------------------------- */

struct acked {
    char id[129];
    uint64_t seq;
};

struct ack_log {
    struct acked *v;
    size_t n, cap;
};

static void load_acks(const char *path, struct ack_log *log)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[256];
    while (fgets(line, sizeof line, f)) {
        struct acked a;
        unsigned long long seq;
        assert_int_equal(sscanf(line, "%128s %llu", a.id, &seq), 2);
        a.seq = seq;
        if (log->n == log->cap) {
            log->cap = log->cap ? log->cap * 2 : 4096;
            log->v = realloc(log->v, log->cap * sizeof *log->v);
            assert_non_null(log->v);
        }
        log->v[log->n++] = a;
    }
    fclose(f);
}

/* Re-publishes every acked id (same topic, same payload) in batches and
 * requires the broker to call each a duplicate of its recorded sequence. */
static void republish_expect_duplicates(const char *addr, const struct ack_log *log, size_t from)
{
    enum { CHUNK = 1000 };
    static ferry_msg msgs[CHUNK];
    static ferry_ack acks[CHUNK];
    static uint8_t payload[PAYLOAD_BYTES];
    ferry_conn *c = it_connect(addr);
    it_payload(0, payload, sizeof payload);
    for (size_t i = from; i < log->n; i += CHUNK) {
        size_t k = log->n - i < CHUNK ? log->n - i : CHUNK;
        for (size_t j = 0; j < k; j++) {
            memset(&msgs[j], 0, sizeof msgs[j]);
            msgs[j].topic = TOPIC;
            msgs[j].id = log->v[i + j].id;
            msgs[j].payload = payload;
            msgs[j].payload_len = sizeof payload;
        }
        int r = ferry_publish_batch(c, msgs, k, acks);
        if (r != 0)
            print_error("republish: %s (%s)\n", ferry_strerror(r), ferry_errmsg(c));
        assert_int_equal(r, 0);
        for (size_t j = 0; j < k; j++) {
            if (acks[j].duplicate != 1 || acks[j].seq != log->v[i + j].seq)
                print_error("acked %s at %" PRIu64 ", after restart: seq %" PRIu64
                            " duplicate %d\n",
                            log->v[i + j].id, log->v[i + j].seq, acks[j].seq, acks[j].duplicate);
            assert_int_equal(acks[j].duplicate, 1);
            assert_int_equal(acks[j].seq, log->v[i + j].seq);
        }
    }
    ferry_close(c);
}

/* The payload index a publisher encoded in an id ("c0-p1-N-uuid" or
 * "b0-p1-N-J"). */
static size_t payload_index(const char *id)
{
    int cycle, proc, j;
    size_t n;
    char kind;
    if (sscanf(id, "%c%d-p%d-%zu-%d", &kind, &cycle, &proc, &n, &j) == 5 && kind == 'b')
        return n * BATCH + (size_t)j;
    assert_int_equal(sscanf(id, "%c%d-p%d-%zu-", &kind, &cycle, &proc, &n), 4);
    return n;
}

/* Stops the broker and checks the store: dense sequences 1..head, every
 * payload matching its id, every acked id at its acked sequence. Returns
 * the rows (free with harness_db_rows_free). */
static long check_store(struct it_fx *fx, const struct ack_log *log, struct harness_row **out)
{
    int st = harness_stop(&fx->b);
    if (st != 0)
        harness_dump_log(&fx->b);
    assert_int_equal(st, 0);
    struct harness_row *rows;
    long n = harness_db_rows(&fx->b, TOPIC, &rows);
    assert_true(n > 0);
    uint8_t payload[PAYLOAD_BYTES];
    for (long i = 0; i < n; i++) {
        assert_int_equal(rows[i].seq, (uint64_t)i + 1);
        it_payload(payload_index(rows[i].msg_id), payload, sizeof payload);
        assert_int_equal(rows[i].payload_len, PAYLOAD_BYTES);
        assert_memory_equal(rows[i].payload, payload, PAYLOAD_BYTES);
    }
    for (size_t i = 0; i < log->n; i++) {
        const struct acked *a = &log->v[i];
        if (a->seq < 1 || a->seq > (uint64_t)n)
            fail_msg("acked %s at seq %" PRIu64 " but the store ends at %ld", a->id, a->seq, n);
        if (strcmp(rows[a->seq - 1].msg_id, a->id) != 0)
            fail_msg("acked %s at seq %" PRIu64 " but the store has %s there", a->id, a->seq,
                     rows[a->seq - 1].msg_id);
    }
    *out = rows;
    return n;
}

/* After a restart: the listing agrees with what was acked, and the topic
 * is dense (count == head, first == 1). */
static void check_listing(const char *addr, const struct ack_log *log)
{
    uint64_t max_seq = 0;
    for (size_t i = 0; i < log->n; i++)
        if (log->v[i].seq > max_seq)
            max_seq = log->v[i].seq;
    ferry_conn *c = it_connect(addr);
    ferry_topic_info ti;
    assert_int_equal(it_topic(c, TOPIC, &ti), 1);
    if (ti.head_seq < max_seq)
        fail_msg("after restart the head is %" PRIu64 " but seq %" PRIu64 " was acked", ti.head_seq,
                 max_seq);
    assert_int_equal(ti.first_seq, 1);
    assert_int_equal(ti.message_count, ti.head_seq);
    assert_int_equal(ti.bytes, ti.head_seq * PAYLOAD_BYTES);
    ferry_close(c);
}

/* One round: start PUBLISHERS children, let them publish, end the broker
 * with the given signal, reap them, restart, load their acks into log. */
static void publish_and_end(struct it_fx *fx, int cycle, int sig, int batches, struct ack_log *log)
{
    char paths[PUBLISHERS][HARNESS_PATH_BYTES + 32];
    pid_t kids[PUBLISHERS];
    for (int p = 0; p < PUBLISHERS; p++) {
        snprintf(paths[p], sizeof paths[p], "%s/acks-%d-%d", fx->b.dir, cycle, p);
        kids[p] = spawn_child(fx->b.addr, paths[p], cycle, p, batches);
    }
    wait_first_acks(fx, paths, PUBLISHERS);
    it_sleep_ms(500 + rand() % 500);
    if (sig == SIGKILL) {
        assert_int_equal(harness_kill9(&fx->b), 0);
    } else {
        int st = harness_stop(&fx->b);
        if (st != 0)
            harness_dump_log(&fx->b);
        assert_int_equal(st, 0);
    }
    for (int p = 0; p < PUBLISHERS; p++)
        reap_child(kids[p]);
    size_t before = log->n;
    for (int p = 0; p < PUBLISHERS; p++)
        load_acks(paths[p], log);
    print_message("cycle %d: %zu acks recorded before the %s\n", cycle, log->n - before,
                  sig == SIGKILL ? "kill -9" : "SIGTERM");
    assert_true(log->n > before);
    assert_int_equal(harness_restart(&fx->b), 0);
}

static void test_crash_kill9_during_pipelined_publish_keeps_acked(void **state)
{
    struct it_fx *fx = *state;
    struct ack_log log = {0};
    srand((unsigned)harness_seed());
    for (int cycle = 0; cycle < CYCLES; cycle++) {
        size_t from = log.n;
        publish_and_end(fx, cycle, SIGKILL, 0, &log);
        if (cycle == 1) {
            /* A second crash right after recovery loses nothing either. */
            assert_int_equal(harness_kill9(&fx->b), 0);
            assert_int_equal(harness_restart(&fx->b), 0);
        }
        check_listing(fx->b.addr, &log);
        republish_expect_duplicates(fx->b.addr, &log, from);
    }
    /* New publishes continue right after the recovered head. */
    ferry_conn *c = it_connect(fx->b.addr);
    ferry_topic_info ti;
    assert_int_equal(it_topic(c, TOPIC, &ti), 1);
    uint8_t payload[PAYLOAD_BYTES];
    it_payload(7, payload, sizeof payload);
    ferry_msg m;
    memset(&m, 0, sizeof m);
    m.topic = TOPIC;
    m.id = "c9-p9-7-final";
    m.payload = payload;
    m.payload_len = sizeof payload;
    ferry_ack ack;
    assert_int_equal(ferry_publish(c, &m, &ack), 0);
    assert_int_equal(ack.seq, ti.head_seq + 1);
    assert_int_equal(ack.duplicate, 0);
    ferry_close(c);

    struct harness_row *rows;
    long n = check_store(fx, &log, &rows);
    assert_int_equal(n, (long)ti.head_seq + 1);
    assert_string_equal(rows[n - 1].msg_id, "c9-p9-7-final");
    harness_db_rows_free(rows, n);
    free(log.v);
}

static void test_crash_kill9_sync_normal_keeps_acked(void **state)
{
    struct it_fx *fx = *state;
    struct ack_log log = {0};
    srand((unsigned)harness_seed());
    for (int cycle = 0; cycle < 2; cycle++) {
        size_t from = log.n;
        publish_and_end(fx, cycle, SIGKILL, 0, &log);
        check_listing(fx->b.addr, &log);
        republish_expect_duplicates(fx->b.addr, &log, from);
    }
    struct harness_row *rows;
    long n = check_store(fx, &log, &rows);
    harness_db_rows_free(rows, n);
    free(log.v);
}

static void test_crash_sigterm_during_pipelined_publish_exits_0_keeps_acked(void **state)
{
    struct it_fx *fx = *state;
    struct ack_log log = {0};
    srand((unsigned)harness_seed());
    publish_and_end(fx, 0, SIGTERM, 0, &log);
    check_listing(fx->b.addr, &log);
    republish_expect_duplicates(fx->b.addr, &log, 0);
    struct harness_row *rows;
    long n = check_store(fx, &log, &rows);
    harness_db_rows_free(rows, n);
    free(log.v);
}

/* kill -9 while publishers send batches of BATCH: every batch is in the
 * store whole, at consecutive sequences, or not at all. */
static void test_crash_kill9_during_batches_all_or_nothing(void **state)
{
    struct it_fx *fx = *state;
    struct ack_log log = {0};
    srand((unsigned)harness_seed());
    for (int cycle = 0; cycle < 2; cycle++) {
        size_t from = log.n;
        publish_and_end(fx, cycle, SIGKILL, 1, &log);
        republish_expect_duplicates(fx->b.addr, &log, from);
    }
    struct harness_row *rows;
    long n = check_store(fx, &log, &rows);
    for (long i = 0; i < n;) {
        int cycle, proc, j;
        size_t bn;
        assert_int_equal(sscanf(rows[i].msg_id, "b%d-p%d-%zu-%d", &cycle, &proc, &bn, &j), 4);
        if (j != 0)
            fail_msg("seq %ld holds %s: a batch does not start with its first message", i + 1,
                     rows[i].msg_id);
        assert_true(i + BATCH <= n);
        for (int k = 0; k < BATCH; k++) {
            char want[128];
            snprintf(want, sizeof want, "b%d-p%d-%zu-%d", cycle, proc, bn, k);
            assert_string_equal(rows[i + k].msg_id, want);
        }
        i += BATCH;
    }
    harness_db_rows_free(rows, n);
    free(log.v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_crash_kill9_during_pipelined_publish_keeps_acked,
                                        setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_crash_kill9_sync_normal_keeps_acked, setup_sync_normal,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(
            test_crash_sigterm_during_pipelined_publish_exits_0_keeps_acked, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_crash_kill9_during_batches_all_or_nothing, setup,
                                        it_fx_teardown),
    };
    /* IT_FILTER=pattern runs only the matching tests (cmocka's wildcards). */
    if (getenv("IT_FILTER"))
        cmocka_set_test_filter(getenv("IT_FILTER"));
    return cmocka_run_group_tests_name("crash", tests, NULL, NULL);
}
