/*
 * test_story.c - the order -> inventory story of issue 4 end to end, with
 * real processes and real kill -9: examples/orders/order_service writes
 * orders and their events in one transaction each, `ferry relay` forwards
 * the outbox to ferryd, and inventory_service (group "inventory") and
 * email_service (group "email") apply each order through the inbox. While
 * at least 10,000 orders flow, the order service, the relay, the broker and
 * the inventory service are each SIGKILLed several times at random moments
 * (and the e-mail service too), and started again after a random pause.
 *
 * At the end, white-box SQL on every database:
 *   - orders.db holds orders 1..N, and every outbox row was sent;
 *   - inventory.db holds exactly one reservation per order, matching it,
 *     and the stock counters add up; email.db exactly one e-mail per order;
 *   - each inbox holds one claim per order;
 *   - the broker stored each order's event once (the relay's re-publishes
 *     after its crashes were recognised as duplicates);
 *   - both groups have nothing left in flight or waiting;
 *   - the example's own checker (orders_check) agrees.
 *
 * The broker keeps one port across its restarts (--listen with a port
 * picked up front), so the services' --server stays valid.
 *
 * Environment: FERRYD, FERRY_CLI, and ORDERS_BIN (the folder holding the
 * example programs), set by meson. FERRY_LONG=1 runs 50,000 orders with
 * more kills; STORY_SEED=n replays a kill schedule. Sanitizer builds do
 * fewer kills and a lower rate, to stay within the time limit.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <cmocka.h>
#include <sqlite3.h>

#include "harness.h"
#include "it_util.h"

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

#define TOPIC "orders"
/* How long the end of the story may take once the last order is written. */
#define DRAIN_MS 60000
/* Checked every so often while waiting. */
#define POLL_MS 50

enum { P_ORDER, P_RELAY, P_INVENTORY, P_EMAIL, P_BROKER, P_COUNT };

static const char *const proc_names[P_COUNT] = {"order_service", "relay", "inventory_service",
                                                "email_service", "ferryd"};

struct proc {
    char *argv[16];
    char log[HARNESS_PATH_BYTES];
    pid_t pid;
    int kills;
    int finished;         /* order_service: exited 0, all orders written */
    int hook_next;        /* at the next start, set the inbox's exit-after-commit
                             hook to this (0: not) */
    int hook_exits;       /* runs that ended through the hook (exit 9) */
    int hooked;           /* the current run has the hook set */
    const char *exit_env; /* at the next start, set this variable to "1" */
};

struct story {
    struct harness_broker b;
    char addr[64];
    char orders_db[HARNESS_PATH_BYTES], inventory_db[HARNESS_PATH_BYTES],
        email_db[HARNESS_PATH_BYTES];
    struct proc p[P_COUNT];
    long n_orders;
    uint64_t rng;
};

static uint64_t rnd(struct story *s)
{
    /* splitmix64 */
    uint64_t z = (s->rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int rnd_between(struct story *s, int lo, int hi)
{
    return lo + (int)(rnd(s) % (uint64_t)(hi - lo + 1));
}

/* A free loopback port: bound, read, released (ferryd binds it next, with
 * SO_REUSEADDR). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static char *xstrdup(const char *s)
{
    char *d = strdup(s);
    assert_non_null(d);
    return d;
}

static const char *env_or_fail(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v)
        fail_msg("the environment variable %s is not set (meson test sets it)", name);
    return v;
}

/* ----- processes ------------------------------------------------------- */

static void dump_tail(const char *path, const char *name);

static void proc_start(struct story *s, int i)
{
    struct proc *p = &s->p[i];
    assert_int_equal(p->pid, 0);
    int logfd = open(p->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    assert_true(logfd >= 0);
    dprintf(logfd, "=== test_story: start %s\n", proc_names[i]);
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
        dup2(logfd, STDOUT_FILENO);
        dup2(logfd, STDERR_FILENO);
        if (p->hook_next > 0) {
            char v[16];
            snprintf(v, sizeof v, "%d", p->hook_next);
            setenv(FERRY_INBOX_TEST_EXIT_ENV, v, 1);
        } else {
            unsetenv(FERRY_INBOX_TEST_EXIT_ENV);
        }
        if (p->exit_env)
            setenv(p->exit_env, "1", 1);
        execv(p->argv[0], p->argv);
        _exit(127);
    }
    close(logfd);
    p->pid = pid;
    p->hooked = p->hook_next;
    p->hook_next = 0;
    p->exit_env = NULL;
}

/* Reaps p when it has exited. Returns 1 when it is not running (any more). */
static int proc_reap(struct story *s, int i)
{
    struct proc *p = &s->p[i];
    if (p->pid == 0)
        return 1;
    int st;
    pid_t r = waitpid(p->pid, &st, WNOHANG);
    if (r != p->pid)
        return 0;
    p->pid = 0;
    if (i == P_ORDER && WIFEXITED(st) && WEXITSTATUS(st) == 0) {
        p->finished = 1;
    } else if (p->hooked && WIFEXITED(st) && WEXITSTATUS(st) == 9) {
        /* Died between a COMMIT and its ack, on purpose: start it again. */
        p->hook_exits++;
        fprintf(stderr, "story: %s exited right after a commit, before its ack (the hook)\n",
                proc_names[i]);
        proc_start(s, i);
    } else if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) &&
               !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
        dump_tail(p->log, proc_names[i]);
        fail_msg("%s exited unexpectedly (status 0x%x); its log: %s", proc_names[i], st, p->log);
    }
    return 1;
}

static void proc_kill9(struct story *s, int i)
{
    struct proc *p = &s->p[i];
    if (i == P_BROKER) {
        assert_int_equal(harness_kill9(&s->b), 0);
    } else {
        kill(p->pid, SIGKILL);
        int st;
        waitpid(p->pid, &st, 0);
        p->pid = 0;
        /* Killed before its hook fired: arm it again for the next run. */
        p->hook_next = p->hooked;
        p->hooked = 0;
    }
    p->kills++;
}

static void proc_restart(struct story *s, int i)
{
    if (i == P_BROKER) {
        assert_int_equal(harness_restart(&s->b), 0);
        assert_string_equal(s->b.addr, s->addr);
    } else {
        proc_start(s, i);
    }
}

/* SIGTERM and wait: the services flush their acks and print a summary. */
static void proc_stop(struct story *s, int i)
{
    struct proc *p = &s->p[i];
    if (p->pid == 0)
        return;
    kill(p->pid, SIGTERM);
    int64_t deadline = harness_now_ms() + 15000;
    while (!proc_reap(s, i)) {
        if (harness_now_ms() > deadline) {
            kill(p->pid, SIGKILL);
            fail_msg("%s did not stop on SIGTERM", proc_names[i]);
        }
        it_sleep_ms(10);
    }
}

static void dump_tail(const char *path, const char *name)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, size > 4000 ? size - 4000 : 0, SEEK_SET);
    fprintf(stderr, "----- %s (end of %s) -----\n", name, path);
    char line[1024];
    while (fgets(line, sizeof line, f))
        fputs(line, stderr);
    fclose(f);
}

/* Lines of the file at path that contain needle. */
static int count_lines(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    char line[1024];
    int n = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

/* ----- white-box SQL --------------------------------------------------- */

static sqlite3 *db_ro(const char *path)
{
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        fail_msg("open %s: %s", path, db ? sqlite3_errmsg(db) : "?");
    sqlite3_busy_timeout(db, 5000);
    return db;
}

/* One integer from sql on the database at path; -1 when it fails (say a
 * table that a service has not made yet). */
static int64_t q_path(const char *path, const char *sql)
{
    if (access(path, F_OK) != 0)
        return -1;
    sqlite3 *db = db_ro(path);
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static int64_t q_must(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    if (sqlite3_step(st) != SQLITE_ROW)
        fail_msg("%s: no row: %s", sql, sqlite3_errmsg(db));
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static void expect_q(sqlite3 *db, const char *what, const char *sql, int64_t want)
{
    int64_t got = q_must(db, sql);
    if (got != want)
        fail_msg("%s: %" PRId64 ", want %" PRId64 " (%s)", what, got, want, sql);
    fprintf(stderr, "story:   %-52s %" PRId64 "\n", what, got);
}

/* Both groups done: every message acked, nothing in flight or waiting. */
static int groups_done(struct story *s, char *why, size_t why_len)
{
    ferry_options o = FERRY_OPTIONS_INIT;
    o.connect_timeout_ms = 2000;
    o.request_timeout_ms = 5000;
    ferry_conn *c = NULL;
    if (ferry_connect(s->addr, &o, &c, NULL, 0) != 0) {
        snprintf(why, why_len, "broker not reachable");
        return 0;
    }
    ferry_group_info *list = NULL;
    size_t n = 0;
    int done = 0;
    if (ferry_groups(c, TOPIC, &list, &n) == 0) {
        done = n == 2;
        for (size_t i = 0; i < n; i++) {
            if (list[i].lag != 0 || list[i].in_flight != 0 || list[i].ack_floor != list[i].cursor)
                done = 0;
            if (i == 0)
                snprintf(why, why_len,
                         "%s: cursor %" PRIu64 " floor %" PRIu64 " lag %" PRIu64 " in flight %u",
                         list[i].group, list[i].cursor, list[i].ack_floor, list[i].lag,
                         list[i].in_flight);
        }
        ferry_groups_free(list);
    }
    ferry_close(c);
    return done;
}

/* ----- the story -------------------------------------------------------- */

static void story_setup(struct story *s)
{
    const char *bin = env_or_fail("ORDERS_BIN");
    const char *cli = env_or_fail("FERRY_CLI");
    const char *seed = getenv("STORY_SEED");
    s->rng = seed ? strtoull(seed, NULL, 10) : harness_seed();
    fprintf(stderr, "story: STORY_SEED=%" PRIu64 "\n", s->rng);

    char port_arg[32];
    snprintf(port_arg, sizeof port_arg, "127.0.0.1:%d", free_port());
    const char *args[] = {"--listen", port_arg, NULL};
    assert_int_equal(harness_start(&s->b, args), 0);
    snprintf(s->addr, sizeof s->addr, "%s", s->b.addr);
    assert_string_equal(s->addr, port_arg);

    snprintf(s->orders_db, sizeof s->orders_db, "%s/orders.db", s->b.dir);
    snprintf(s->inventory_db, sizeof s->inventory_db, "%s/inventory.db", s->b.dir);
    snprintf(s->email_db, sizeof s->email_db, "%s/email.db", s->b.dir);
    char path[HARNESS_PATH_BYTES], count[32], rate[32];
    int long_run = getenv("FERRY_LONG") != NULL;
    s->n_orders = long_run ? 50000 : 10000;
    /* Fast enough to finish in time, slow enough that the order service
     * lives through its share of the kills. */
    int r = STORY_SANITIZED ? 250 : long_run ? 600 : 400;
    snprintf(count, sizeof count, "%ld", s->n_orders);
    snprintf(rate, sizeof rate, "%d", r);

    struct proc *p = s->p;
    snprintf(path, sizeof path, "%s/order_service", bin);
    char **a = p[P_ORDER].argv;
    a[0] = xstrdup(path), a[1] = xstrdup("--db"), a[2] = xstrdup(s->orders_db);
    a[3] = xstrdup("--count"), a[4] = xstrdup(count), a[5] = xstrdup("--rate");
    a[6] = xstrdup(rate);

    a = p[P_RELAY].argv;
    a[0] = xstrdup(cli), a[1] = xstrdup("relay"), a[2] = xstrdup("--db");
    a[3] = xstrdup(s->orders_db), a[4] = xstrdup("--server"), a[5] = xstrdup(s->addr);

    const char *svc[2] = {"inventory_service", "email_service"};
    const char *dbs[2] = {s->inventory_db, s->email_db};
    for (int k = 0; k < 2; k++) {
        snprintf(path, sizeof path, "%s/%s", bin, svc[k]);
        a = p[P_INVENTORY + k].argv;
        a[0] = xstrdup(path), a[1] = xstrdup("--db"), a[2] = xstrdup(dbs[k]);
        a[3] = xstrdup("--server"), a[4] = xstrdup(s->addr);
        /* A short lease: a consumer killed while the broker was down
         * leaves leases that only expiry returns. */
        a[5] = xstrdup("--ack-wait-ms"), a[6] = xstrdup("5000");
        a[7] = xstrdup("--max-deliveries"), a[8] = xstrdup("1000");
    }
    for (int i = 0; i < P_COUNT; i++)
        snprintf(p[i].log, sizeof p[i].log, "%s/%s.log", s->b.dir, proc_names[i]);
    snprintf(p[P_BROKER].log, sizeof p[P_BROKER].log, "%s", s->b.log_path);
}

static void story_dump(struct story *s)
{
    for (int i = 0; i < P_COUNT; i++)
        dump_tail(s->p[i].log, proc_names[i]);
}

static void story_cleanup(struct story *s)
{
    for (int i = 0; i < P_BROKER; i++) {
        if (s->p[i].pid) {
            kill(s->p[i].pid, SIGKILL);
            waitpid(s->p[i].pid, NULL, 0);
            s->p[i].pid = 0;
        }
        for (int k = 0; s->p[i].argv[k]; k++)
            free(s->p[i].argv[k]);
    }
    harness_cleanup(&s->b);
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
    int rc = 0;
    if (s) {
        rc = harness_check_log(&s->b);
        story_cleanup(s);
        free(s);
    }
    return rc;
}

/* The orders written so far. */
static int64_t orders_written(struct story *s)
{
    return q_path(s->orders_db, "SELECT count(*) FROM orders");
}

static void test_story_10000_orders_through_kill9_of_every_process_each_effect_once(void **state)
{
    struct story *s = *state;
    story_setup(s);
    int long_run = getenv("FERRY_LONG") != NULL;
    int kills_each = STORY_SANITIZED ? 3 : long_run ? 10 : 4;
    int64_t t_start = harness_now_ms();

    /* The order service first: the relay needs its database. */
    proc_start(s, P_ORDER);
    while (q_path(s->orders_db, "SELECT count(*) FROM ferry_outbox") < 0) {
        proc_reap(s, P_ORDER);
        if (harness_now_ms() - t_start > 10000)
            fail_msg("order_service did not create %s", s->orders_db);
        it_sleep_ms(10);
    }
    /* Each consumer's first run also dies right after its Nth commit,
     * before the ack: the window the inbox exists for, hit for sure. */
    s->p[P_INVENTORY].hook_next = rnd_between(s, 20, 400);
    s->p[P_EMAIL].hook_next = rnd_between(s, 20, 400);
    for (int i = P_RELAY; i < P_BROKER; i++)
        proc_start(s, i);

    /* The kill schedule: every victim kills_each times, in random order,
     * at random moments while orders are being written; the order service
     * is only killed while it still has orders to write. */
    int victims[P_COUNT * 16], nv = 0;
    for (int k = 0; k < kills_each; k++)
        for (int i = 0; i < P_COUNT; i++)
            victims[nv++] = i;
    for (int i = nv - 1; i > 0; i--) {
        int j = (int)(rnd(s) % (uint64_t)(i + 1));
        int t = victims[i];
        victims[i] = victims[j];
        victims[j] = t;
    }
    int next = 0;
    int64_t next_kill_at = harness_now_ms() + rnd_between(s, 300, 1500);
    int order_kills_skipped = 0;
    while (next < nv || !s->p[P_ORDER].finished) {
        it_sleep_ms(POLL_MS);
        for (int i = 0; i < P_BROKER; i++)
            proc_reap(s, i);
        if (harness_now_ms() - t_start > 170000) {
            story_dump(s);
            fail_msg("the story did not finish writing orders in time (%" PRId64 " of %ld)",
                     orders_written(s), s->n_orders);
        }
        if (next >= nv || harness_now_ms() < next_kill_at)
            continue;
        int v = victims[next++];
        if (v == P_ORDER && s->p[P_ORDER].finished) {
            order_kills_skipped++;
            continue;
        }
        /* A random moment: a random pause since the last kill, whatever
         * each process is doing. */
        int64_t written = orders_written(s);
        if (v != P_BROKER && s->p[v].pid == 0)
            proc_start(s, v);
        proc_kill9(s, v);
        int pause = rnd_between(s, 20, 700);
        fprintf(stderr,
                "story: %6.1f s: kill -9 %-17s (orders written %" PRId64 "), back in %d ms\n",
                (harness_now_ms() - t_start) / 1000.0, proc_names[v], written, pause);
        it_sleep_ms(pause);
        proc_restart(s, v);
        next_kill_at = harness_now_ms() + rnd_between(s, 200, 1800);
    }
    int64_t t_written = harness_now_ms();
    fprintf(stderr, "story: %6.1f s: all %ld orders written\n", (t_written - t_start) / 1000.0,
            s->n_orders);

    /* Everything flows out: the outbox empties, both services apply every
     * order, both groups have nothing left. */
    char why[256] = "";
    for (;;) {
        for (int i = 0; i < P_BROKER; i++)
            proc_reap(s, i);
        int64_t waiting = q_path(s->orders_db, "SELECT count(*) FROM ferry_outbox"
                                               " WHERE sent_ms IS NULL");
        int64_t inv = q_path(s->inventory_db, "SELECT count(DISTINCT order_id) FROM reservations");
        int64_t mail = q_path(s->email_db, "SELECT count(DISTINCT order_id) FROM emails");
        if (waiting == 0 && inv == s->n_orders && mail == s->n_orders &&
            groups_done(s, why, sizeof why))
            break;
        if (harness_now_ms() - t_written > DRAIN_MS) {
            story_dump(s);
            fail_msg("not drained after %d ms: outbox waiting %" PRId64 ", reserved %" PRId64
                     ", e-mailed %" PRId64 " of %ld; %s",
                     DRAIN_MS, waiting, inv, mail, s->n_orders, why);
        }
        it_sleep_ms(100);
    }
    int64_t t_done = harness_now_ms();
    fprintf(stderr, "story: %6.1f s: every order applied by both services\n",
            (t_done - t_start) / 1000.0);
    /* Late duplicates would come now, if any could: give them a moment. */
    it_sleep_ms(500);
    for (int i = P_RELAY; i < P_BROKER; i++)
        proc_stop(s, i);
    assert_true(s->p[P_ORDER].finished);
    for (int i = 0; i < P_COUNT; i++) {
        fprintf(stderr, "story: %-17s killed %d times\n", proc_names[i], s->p[i].kills);
        if (!(i == P_ORDER && order_kills_skipped > 0))
            assert_int_equal(s->p[i].kills, kills_each);
    }
    assert_true(s->p[P_ORDER].kills >= 1);
    /* Each consumer died once between a COMMIT and its ack, and the
     * redelivery of that message found its claim (the service logs each
     * such skip). */
    for (int i = P_INVENTORY; i <= P_EMAIL; i++) {
        assert_int_equal(s->p[i].hook_exits, 1);
        int skipped = count_lines(s->p[i].log, "already applied");
        fprintf(stderr, "story: %-17s redeliveries skipped by the inbox: %d\n", proc_names[i],
                skipped);
        assert_true(skipped >= 1);
    }
    /* A sanitizer build of the services reports into their logs. */
    static const char *const needles[] = {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                                          "runtime error:"};
    for (int i = 0; i < P_BROKER; i++)
        for (size_t k = 0; k < sizeof needles / sizeof needles[0]; k++)
            if (count_lines(s->p[i].log, needles[k]) > 0) {
                dump_tail(s->p[i].log, proc_names[i]);
                fail_msg("%s's log holds a sanitizer report", proc_names[i]);
            }
    assert_int_equal(harness_stop(&s->b), 0);

    /* ----- white-box checks ----- */
    long n = s->n_orders;
    fprintf(stderr, "story: white-box checks\n");
    sqlite3 *db = NULL;
    char sql[2 * HARNESS_PATH_BYTES + 64];
    assert_int_equal(sqlite3_open_v2(s->orders_db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    snprintf(sql, sizeof sql, "ATTACH '%s' AS inv; ATTACH '%s' AS mail;", s->inventory_db,
             s->email_db);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);

    expect_q(db, "orders written", "SELECT count(*) FROM orders", n);
    expect_q(db, "orders numbered 1..N", "SELECT max(id) - min(id) + 1 FROM orders", n);
    expect_q(db, "outbox rows not sent (or failed)",
             "SELECT count(*) FROM ferry_outbox WHERE sent_ms IS NULL OR error IS NOT NULL", 0);
    expect_q(db, "reservations", "SELECT count(*) FROM inv.reservations", n);
    expect_q(db, "orders reserved other than exactly once",
             "SELECT count(*) FROM orders o LEFT JOIN (SELECT order_id, count(*) AS k"
             " FROM inv.reservations GROUP BY order_id) r ON r.order_id = o.id"
             " WHERE ifnull(r.k, 0) != 1",
             0);
    expect_q(db, "reservations not matching their order",
             "SELECT count(*) FROM inv.reservations r LEFT JOIN orders o ON o.id = r.order_id"
             " WHERE o.id IS NULL OR r.sku != o.sku OR r.qty != o.qty"
             " OR r.order_created_us != o.created_us",
             0);
    expect_q(db, "stock units reserved (sum of order quantities)",
             "SELECT (SELECT sum(reserved) FROM inv.stock) - (SELECT sum(qty) FROM orders)", 0);
    expect_q(db, "e-mails", "SELECT count(*) FROM mail.emails", n);
    expect_q(db, "orders e-mailed other than exactly once",
             "SELECT count(*) FROM orders o LEFT JOIN (SELECT order_id, count(*) AS k"
             " FROM mail.emails GROUP BY order_id) m ON m.order_id = o.id"
             " WHERE ifnull(m.k, 0) != 1",
             0);
    /* The floor purge forgets claims as the broker's floor passes them:
     * what is left are claims of orders, none twice. */
    expect_q(db, "inventory inbox claims of no order",
             "SELECT count(*) FROM inv.ferry_inbox i LEFT JOIN orders o"
             " ON i.msg_id = 'order-' || o.id WHERE o.id IS NULL OR i.grp != 'inventory'"
             " OR i.topic != 'orders'",
             0);
    expect_q(db, "e-mail inbox claims of no order",
             "SELECT count(*) FROM mail.ferry_inbox i LEFT JOIN orders o"
             " ON i.msg_id = 'order-' || o.id WHERE o.id IS NULL OR i.grp != 'email'"
             " OR i.topic != 'orders'",
             0);
    sqlite3_close(db);

    /* The broker stored each event once. */
    struct harness_row *rows = NULL;
    long nrows = harness_db_rows(&s->b, TOPIC, &rows);
    assert_true(nrows >= 0);
    sqlite3 *mem = NULL;
    assert_int_equal(sqlite3_open(":memory:", &mem), SQLITE_OK);
    assert_int_equal(sqlite3_exec(mem, "CREATE TABLE m(id TEXT)", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(mem, "INSERT INTO m VALUES (?1)", -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_exec(mem, "BEGIN", NULL, NULL, NULL);
    for (long i = 0; i < nrows; i++) {
        sqlite3_bind_text(st, 1, rows[i].msg_id, -1, SQLITE_STATIC);
        sqlite3_step(st);
        sqlite3_reset(st);
    }
    sqlite3_exec(mem, "COMMIT", NULL, NULL, NULL);
    sqlite3_finalize(st);
    harness_db_rows_free(rows, nrows);
    expect_q(mem, "events stored by the broker", "SELECT count(*) FROM m", n);
    expect_q(mem, "distinct events stored by the broker", "SELECT count(DISTINCT id) FROM m", n);
    sqlite3_close(mem);

    /* The example's own checker agrees (it is what run.sh prints). */
    char checker[HARNESS_PATH_BYTES];
    snprintf(checker, sizeof checker, "%s/orders_check", env_or_fail("ORDERS_BIN"));
    char *argv[] = {checker,         "--orders", s->orders_db, "--inventory",
                    s->inventory_db, "--email",  s->email_db,  NULL};
    struct harness_output out;
    assert_int_equal(harness_run(s->b.dir, argv, NULL, 30000, &out), 0);
    fputs(out.out, stderr);
    if (out.status != 0)
        fail_msg("orders_check: status %d: %s", out.status, out.err);
    harness_output_free(&out);
    fprintf(stderr, "story: %.1f s in all\n", (harness_now_ms() - t_start) / 1000.0);
}

/* Waits for process i to exit on its own with status want. */
static void proc_wait_exit(struct story *s, int i, int want)
{
    struct proc *p = &s->p[i];
    int64_t deadline = harness_now_ms() + DRAIN_MS;
    int st = 0;
    for (;;) {
        pid_t r = waitpid(p->pid, &st, WNOHANG);
        if (r == p->pid)
            break;
        if (harness_now_ms() > deadline) {
            story_dump(s);
            fail_msg("%s did not exit (want status %d)", proc_names[i], want);
        }
        it_sleep_ms(10);
    }
    p->pid = 0;
    p->hooked = 0;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != want) {
        dump_tail(p->log, proc_names[i]);
        fail_msg("%s: status 0x%x, want exit %d", proc_names[i], st, want);
    }
}

/* Waits until sql on path gives want. */
static void wait_q(struct story *s, const char *path, const char *sql, int64_t want)
{
    int64_t deadline = harness_now_ms() + DRAIN_MS, got = -1;
    while ((got = q_path(path, sql)) != want) {
        for (int i = 0; i < P_BROKER; i++)
            proc_reap(s, i);
        if (harness_now_ms() > deadline) {
            story_dump(s);
            fail_msg("%s: %s gives %" PRId64 ", want %" PRId64, path, sql, got, want);
        }
        it_sleep_ms(POLL_MS);
    }
}

/*
 * Issue 9's finding, as the story: the inventory service commits order
 * N+1's effect and dies before the ack, then dies twice more with the
 * message in hand (max deliveries 3), so the message is dead-lettered
 * although its effect happened. Meanwhile it purges its inbox by the
 * broker's floor every 200 ms. `ferry dead replay orders` (the redrive)
 * then brings it back to inventory only, whose inbox still holds the claim
 * (the floor kept it): every order's effect exactly once in both groups.
 */
static void test_story_dead_letter_then_redrive_each_effect_once(void **state)
{
    struct story *s = *state;
    story_setup(s);
    enum { N = 20 };
    s->n_orders = N + 1;
    struct proc *p = s->p;
    free(p[P_ORDER].argv[4]);
    p[P_ORDER].argv[4] = xstrdup("20");
    for (int i = P_INVENTORY; i <= P_EMAIL; i++) {
        char **a = p[i].argv;
        free(a[8]);
        a[8] = xstrdup("3");
        a[9] = xstrdup("--purge-every-ms"), a[10] = xstrdup("200");
    }
    proc_start(s, P_ORDER);
    int64_t t0 = harness_now_ms();
    while (q_path(s->orders_db, "SELECT count(*) FROM ferry_outbox") < 0) {
        proc_reap(s, P_ORDER);
        if (harness_now_ms() - t0 > 10000)
            fail_msg("order_service did not create %s", s->orders_db);
        it_sleep_ms(10);
    }
    for (int i = P_RELAY; i < P_BROKER; i++)
        proc_start(s, i);
    wait_q(s, s->inventory_db, "SELECT count(DISTINCT order_id) FROM reservations", N);
    wait_q(s, s->email_db, "SELECT count(DISTINCT order_id) FROM emails", N);
    while (!proc_reap(s, P_ORDER))
        it_sleep_ms(10);
    assert_true(s->p[P_ORDER].finished);

    /* Order N+1, with inventory down; e-mail handles it at once. */
    proc_stop(s, P_INVENTORY);
    free(p[P_ORDER].argv[4]);
    p[P_ORDER].argv[4] = xstrdup("21");
    p[P_ORDER].finished = 0;
    proc_start(s, P_ORDER);
    wait_q(s, s->email_db, "SELECT count(DISTINCT order_id) FROM emails", N + 1);
    while (!proc_reap(s, P_ORDER))
        it_sleep_ms(10);

    /* Attempt 1: the effect commits, the service dies before the ack. */
    p[P_INVENTORY].hook_next = 1;
    proc_start(s, P_INVENTORY);
    proc_wait_exit(s, P_INVENTORY, 9);
    /* Attempts 2 and 3: it dies with the message in hand. */
    for (int k = 0; k < 2; k++) {
        p[P_INVENTORY].exit_env = "ORDERS_TEST_EXIT_ON_RECEIVE";
        proc_start(s, P_INVENTORY);
        proc_wait_exit(s, P_INVENTORY, 8);
    }
    ferry_conn *c = it_connect(s->addr);
    ferry_topic_info ti;
    memset(&ti, 0, sizeof ti);
    int64_t deadline = harness_now_ms() + 10000;
    while ((it_topic(c, "_dead." TOPIC, &ti) != 1 || ti.message_count == 0) &&
           harness_now_ms() < deadline)
        it_sleep_ms(10);
    assert_int_equal(ti.message_count, 1);

    /* Back to normal; its purges by the floor run several times. */
    proc_start(s, P_INVENTORY);
    wait_q(s, s->inventory_db,
           "SELECT count(*) FROM ferry_inbox WHERE seq <= 20 AND grp = 'inventory'", 0);
    /* The dead letter's claim, kept by the floor purge. */
    assert_int_equal(
        q_path(s->inventory_db, "SELECT count(*) FROM ferry_inbox WHERE msg_id = 'order-21'"), 1);
    wait_q(s, s->inventory_db, "SELECT count(*) FROM reservations WHERE order_id = 21", 1);

    /* The redrive. */
    char *argv[] = {
        (char *)env_or_fail("FERRY_CLI"), "dead", "replay", TOPIC, "--server", s->addr, NULL};
    struct harness_output out;
    assert_int_equal(harness_run(s->b.dir, argv, NULL, 30000, &out), 0);
    if (out.status != 0)
        fail_msg("ferry dead replay: status %d: %s", out.status, out.err);
    fputs(out.out, stderr);
    harness_output_free(&out);
    char why[256] = "";
    deadline = harness_now_ms() + DRAIN_MS;
    while (count_lines(p[P_INVENTORY].log, "already applied") < 1 ||
           !groups_done(s, why, sizeof why)) {
        proc_reap(s, P_INVENTORY);
        if (harness_now_ms() > deadline) {
            story_dump(s);
            fail_msg("the redrive was not acked: %s", why);
        }
        it_sleep_ms(POLL_MS);
    }
    it_sleep_ms(500); /* a second delivery would come now, if any could */
    for (int i = P_RELAY; i < P_BROKER; i++)
        proc_stop(s, i);
    ferry_close(c);
    assert_int_equal(harness_stop(&s->b), 0);

    sqlite3 *db = NULL;
    char sql[2 * HARNESS_PATH_BYTES + 64];
    assert_int_equal(sqlite3_open_v2(s->orders_db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    snprintf(sql, sizeof sql, "ATTACH '%s' AS inv; ATTACH '%s' AS mail;", s->inventory_db,
             s->email_db);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    expect_q(db, "orders", "SELECT count(*) FROM orders", N + 1);
    expect_q(db, "orders reserved other than exactly once",
             "SELECT count(*) FROM orders o LEFT JOIN (SELECT order_id, count(*) AS k"
             " FROM inv.reservations GROUP BY order_id) r ON r.order_id = o.id"
             " WHERE ifnull(r.k, 0) != 1",
             0);
    expect_q(db, "orders e-mailed other than exactly once",
             "SELECT count(*) FROM orders o LEFT JOIN (SELECT order_id, count(*) AS k"
             " FROM mail.emails GROUP BY order_id) m ON m.order_id = o.id"
             " WHERE ifnull(m.k, 0) != 1",
             0);
    expect_q(db, "stock units reserved (sum of order quantities)",
             "SELECT (SELECT sum(reserved) FROM inv.stock) - (SELECT sum(qty) FROM orders)", 0);
    sqlite3_close(db);
    char checker[HARNESS_PATH_BYTES];
    snprintf(checker, sizeof checker, "%s/orders_check", env_or_fail("ORDERS_BIN"));
    char *cargv[] = {checker,         "--orders", s->orders_db, "--inventory",
                     s->inventory_db, "--email",  s->email_db,  NULL};
    assert_int_equal(harness_run(s->b.dir, cargv, NULL, 30000, &out), 0);
    fputs(out.out, stderr);
    if (out.status != 0)
        fail_msg("orders_check: status %d: %s", out.status, out.err);
    harness_output_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_story_10000_orders_through_kill9_of_every_process_each_effect_once, setup,
            teardown),
        cmocka_unit_test_setup_teardown(test_story_dead_letter_then_redrive_each_effect_once, setup,
                                        teardown),
    };
    if (getenv("IT_FILTER"))
        cmocka_set_test_filter(getenv("IT_FILTER"));
    return cmocka_run_group_tests_name("story", tests, NULL, NULL);
}
