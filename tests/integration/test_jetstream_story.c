/*
 * test_jetstream_story.c - the order story of examples/orders (issue 4)
 * with the relay sending to NATS JetStream and the inventory and e-mail
 * services consuming over nats:// (issue 14):
 *   - one nats-server; while a few thousand orders flow, the relay, the two
 *     consumers and nats-server itself are SIGKILLed at random moments and
 *     started again (nats-server on the same port and store);
 *   - a 3-node JetStream cluster on loopback, the stream created with
 *     ?replicas=3, one node SIGKILLed mid-run and not restarted.
 * Each time orders_check must say every order had its effects exactly once,
 * every outbox row was sent and the stream holds exactly N events.
 *
 * Environment: FERRY_CLI and ORDERS_BIN, set by meson. STORY_SEED=n
 * replays a kill schedule. Sanitizer builds do fewer kills.
 */
#include <fcntl.h>
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
#include <nats/nats.h>
#include <sqlite3.h>

#include "harness.h"
#include "it_util.h"
#include "nats_harness.h"

#if defined(__SANITIZE_ADDRESS__)
#define STORY_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define STORY_SANITIZED 1
#endif
#endif
#ifndef STORY_SANITIZED
#define STORY_SANITIZED 0
#endif

#define N_ORDERS 3000

enum { P_ORDER, P_RELAY, P_INVENTORY, P_EMAIL, P_COUNT };
static const char *const names[P_COUNT] = {"order_service", "relay", "inventory_service",
                                           "email_service"};

struct story {
    struct nats_server ns[3];
    int nodes;
    char addr[256];
    char orders_db[600], inventory_db[600], email_db[600];
    char *argv[P_COUNT][16];
    char log[P_COUNT][600];
    pid_t pid[P_COUNT];
    int finished;
    uint64_t rng;
};

static uint64_t rnd(struct story *s)
{
    s->rng ^= s->rng << 13;
    s->rng ^= s->rng >> 7;
    s->rng ^= s->rng << 17;
    return s->rng;
}

static int between(struct story *s, int lo, int hi)
{
    return lo + (int)(rnd(s) % (uint64_t)(hi - lo + 1));
}

static void dump(const char *path)
{
    FILE *f = fopen(path, "r");
    fprintf(stderr, "----- %s -----\n", path);
    if (f) {
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0)
            fwrite(buf, 1, n, stderr);
        fclose(f);
    }
    fprintf(stderr, "----- end -----\n");
}

static void start(struct story *s, int i)
{
    int fd = open(s->log[i], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    dprintf(fd, "=== test_jetstream_story: start %s\n", names[i]);
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
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2(devnull, STDIN_FILENO);
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        execv(s->argv[i][0], s->argv[i]);
        _exit(127);
    }
    close(fd);
    s->pid[i] = pid;
}

/* Reaps i if it exited; fails on an unexpected exit. 1 when not running. */
static int reap(struct story *s, int i)
{
    if (!s->pid[i])
        return 1;
    int st;
    if (waitpid(s->pid[i], &st, WNOHANG) != s->pid[i])
        return 0;
    s->pid[i] = 0;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
        if (i == P_ORDER)
            s->finished = 1;
        return 1;
    }
    if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)) {
        dump(s->log[i]);
        fail_msg("%s exited unexpectedly (status 0x%x)", names[i], st);
    }
    return 1;
}

static void kill9(struct story *s, int i)
{
    if (!s->pid[i])
        return;
    kill(s->pid[i], SIGKILL);
    waitpid(s->pid[i], NULL, 0);
    s->pid[i] = 0;
}

static char *dup_s(const char *v)
{
    char *p = strdup(v);
    assert_non_null(p);
    return p;
}

static void story_setup(struct story *s, const char *addr)
{
    const char *bin = getenv("ORDERS_BIN");
    const char *cli = getenv("FERRY_CLI");
    if (!bin || !cli)
        fail_msg("ORDERS_BIN and FERRY_CLI must be set (meson sets them)");
    const char *seed = getenv("STORY_SEED");
    s->rng = seed ? strtoull(seed, NULL, 10) : (uint64_t)harness_seed();
    if (!s->rng)
        s->rng = 88172645463325252ULL;
    fprintf(stderr, "story: STORY_SEED=%" PRIu64 "\n", s->rng);
    snprintf(s->addr, sizeof s->addr, "%s", addr);
    const char *dir = s->ns[0].dir;
    snprintf(s->orders_db, sizeof s->orders_db, "%s/orders.db", dir);
    snprintf(s->inventory_db, sizeof s->inventory_db, "%s/inventory.db", dir);
    snprintf(s->email_db, sizeof s->email_db, "%s/email.db", dir);
    char path[700], count[32], rate[32];
    snprintf(count, sizeof count, "%d", N_ORDERS);
    snprintf(rate, sizeof rate, "%d", STORY_SANITIZED ? 200 : 400);
    snprintf(path, sizeof path, "%s/order_service", bin);
    char **a = s->argv[P_ORDER];
    a[0] = dup_s(path), a[1] = dup_s("--db"), a[2] = dup_s(s->orders_db);
    a[3] = dup_s("--count"), a[4] = dup_s(count), a[5] = dup_s("--rate"), a[6] = dup_s(rate);
    a = s->argv[P_RELAY];
    a[0] = dup_s(cli), a[1] = dup_s("relay"), a[2] = dup_s("--db"), a[3] = dup_s(s->orders_db);
    a[4] = dup_s("--to"), a[5] = dup_s(s->addr);
    const char *svc[2] = {"inventory_service", "email_service"};
    const char *dbs[2] = {s->inventory_db, s->email_db};
    for (int k = 0; k < 2; k++) {
        snprintf(path, sizeof path, "%s/%s", bin, svc[k]);
        a = s->argv[P_INVENTORY + k];
        a[0] = dup_s(path), a[1] = dup_s("--db"), a[2] = dup_s(dbs[k]);
        a[3] = dup_s("--server"), a[4] = dup_s(s->addr);
        a[5] = dup_s("--ack-wait-ms"), a[6] = dup_s("5000");
        a[7] = dup_s("--max-deliveries"), a[8] = dup_s("1000");
    }
    for (int i = 0; i < P_COUNT; i++)
        snprintf(s->log[i], sizeof s->log[i], "%s/%s.log", dir, names[i]);
}

static int setup(void **state)
{
    struct story *s = calloc(1, sizeof *s);
    if (!s)
        return -1;
    *state = s;
    return 0;
}

static int teardown(void **state)
{
    struct story *s = *state;
    if (!s)
        return 0;
    for (int i = 0; i < P_COUNT; i++) {
        kill9(s, i);
        for (int k = 0; s->argv[i][k]; k++)
            free(s->argv[i][k]);
    }
    for (int i = 0; i < s->nodes; i++)
        nats_server_cleanup(&s->ns[i]);
    free(s);
    return 0;
}

static int64_t q(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 10000);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    int64_t v = -1;
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static uint64_t stream_msgs(struct story *s, const char *stream)
{
    for (int i = 0; i < s->nodes; i++) {
        if (!s->ns[i].pid)
            continue;
        natsConnection *nc = NULL;
        if (natsConnection_ConnectTo(&nc, s->ns[i].url) != NATS_OK)
            continue;
        jsCtx *js = NULL;
        jsStreamInfo *si = NULL;
        uint64_t n = UINT64_MAX;
        if (natsConnection_JetStream(&js, nc, NULL) == NATS_OK &&
            js_GetStreamInfo(&si, js, stream, NULL, NULL) == NATS_OK) {
            n = si->State.Msgs;
            jsStreamInfo_Destroy(si);
        }
        jsCtx_Destroy(js);
        natsConnection_Destroy(nc);
        if (n != UINT64_MAX)
            return n;
    }
    fail_msg("no server answered the stream info of %s", stream);
    return 0;
}

/* Runs the story; kill_node: the cluster's node killed mid-run (-1: the
 * random kills of the single-server story instead). */
static void run(struct story *s, int kill_node)
{
    /* The order service creates orders.db and its outbox first. */
    start(s, P_ORDER);
    int64_t ready = harness_now_ms() + 30000;
    for (;;) {
        assert_true(harness_now_ms() < ready);
        reap(s, P_ORDER);
        if (access(s->orders_db, F_OK) == 0 &&
            q(s->orders_db, "SELECT count(*) FROM sqlite_master WHERE name = 'ferry_outbox'") == 1)
            break;
        it_sleep_ms(20);
    }
    for (int i = P_RELAY; i < P_COUNT; i++)
        start(s, i);
    int max_kills = STORY_SANITIZED ? 4 : 12;
    int kills = 0, node_killed = 0;
    int64_t deadline = harness_now_ms() + 100000;
    while (!s->finished) {
        assert_true(harness_now_ms() < deadline);
        it_sleep_ms(between(s, 300, 1200));
        for (int i = 0; i < P_COUNT; i++)
            if (reap(s, i) && i != P_ORDER && s->pid[i] == 0)
                start(s, i);
        if (s->finished)
            break;
        int64_t written = q(s->orders_db, "SELECT count(*) FROM orders");
        if (kill_node >= 0) {
            if (!node_killed && written > N_ORDERS / 3) {
                fprintf(stderr, "story: SIGKILL node n%d at order %" PRId64 "\n", kill_node + 1,
                        written);
                assert_int_equal(nats_server_kill(&s->ns[kill_node], SIGKILL), 0);
                node_killed = 1;
            }
            continue;
        }
        if (kills >= max_kills)
            continue;
        int victim = between(s, P_RELAY, P_COUNT); /* P_COUNT: nats-server */
        kills++;
        fprintf(stderr, "story: kill -9 %s at order %" PRId64 "\n",
                victim == P_COUNT ? "nats-server" : names[victim], written);
        if (victim == P_COUNT) {
            assert_int_equal(nats_server_kill(&s->ns[0], SIGKILL), 0);
            it_sleep_ms(between(s, 100, 1500));
            if (nats_server_restart(&s->ns[0]) != 0)
                fail_msg("nats-server did not restart");
        } else {
            kill9(s, victim);
            it_sleep_ms(between(s, 50, 1000));
            start(s, victim);
        }
    }
    fprintf(stderr, "story: all %d orders written after %d kills\n", N_ORDERS, kills);

    /* The checker waits for every effect, then checks each is once. */
    char checker[700];
    snprintf(checker, sizeof checker, "%s/orders_check", getenv("ORDERS_BIN"));
    char *argv[] = {checker,   "--orders",  s->orders_db, "--inventory", s->inventory_db,
                    "--email", s->email_db, "--wait-ms",  "60000",       NULL};
    struct harness_output out;
    assert_int_equal(harness_run(s->ns[0].dir, argv, NULL, 90000, &out), 0);
    if (out.status != 0) {
        for (int i = 0; i < P_COUNT; i++)
            dump(s->log[i]);
        print_error("orders_check exited %d:\n%s%s\n", out.status, out.out, out.err);
    }
    assert_int_equal(out.status, 0);
    harness_output_free(&out);
    assert_int_equal(q(s->orders_db, "SELECT count(*) FROM orders"), N_ORDERS);
    int64_t deadline2 = harness_now_ms() + 30000;
    while (q(s->orders_db, "SELECT count(*) FROM ferry_outbox WHERE sent_ms IS NULL") != 0 &&
           harness_now_ms() < deadline2)
        it_sleep_ms(100);
    assert_int_equal(q(s->orders_db, "SELECT count(*) FROM ferry_outbox WHERE sent_ms IS NULL"), 0);
    int64_t rows = q(s->orders_db, "SELECT count(*) FROM ferry_outbox");
    uint64_t stored = stream_msgs(s, "FERRY");
    if ((int64_t)stored != rows)
        dump(s->log[P_RELAY]);
    /* Every event once in the stream (no dead letters expected). */
    assert_int_equal(stored, rows);
    for (int i = 0; i < P_COUNT; i++)
        kill9(s, i);
}

static void test_story_kill9_relay_consumers_and_nats_server(void **state)
{
    struct story *s = *state;
    assert_int_equal(nats_server_start(&s->ns[0]), 0);
    s->nodes = 1;
    story_setup(s, s->ns[0].url);
    run(s, -1);
}

static void test_story_cluster_loses_a_node(void **state)
{
    struct story *s = *state;
    assert_int_equal(nats_cluster_start(s->ns), 0);
    s->nodes = 3;
    char url[200], addr[256];
    nats_cluster_url(s->ns, url, sizeof url);
    snprintf(addr, sizeof addr, "%s?replicas=3", url);
    story_setup(s, addr);
    run(s, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_story_kill9_relay_consumers_and_nats_server, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_story_cluster_loses_a_node, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
