/*
 * test_story_pg.c - the order story of issue 4 with the services on
 * PostgreSQL (issue 11), as examples/orders/run.sh --pg runs it: the order
 * service writes each order and its event in one Postgres transaction
 * (schema orders), `ferry relay --pg URL --schema orders` forwards the
 * outbox to ferryd, and the inventory and e-mail services apply each order
 * through the Postgres inbox (schemas inventory and email), purging it by
 * the broker's floor every 500 ms.
 *
 * While 3,000 orders flow, the order service, the relay, ferryd and both
 * consumers are each SIGKILLed several times at random moments (the order
 * service only while it still has orders to write) and started again
 * after a random pause, and Postgres itself is restarted once the way `pg_ctl -m
 * immediate` does it (SIGQUIT to the postmaster: no checkpoint, crash
 * recovery at the next start on the same data directory and port). Every
 * process connects again by itself.
 *
 * At the end, white-box SQL on the Postgres database:
 *   - orders 1..N, each with exactly one reservation (matching it) and one
 *     e-mail; the stock counters add up;
 *   - the outbox is empty (the relay deletes what the broker acked);
 *   - each inbox is bounded: while the story ran it never held more than
 *     INBOX_RUN_BOUND claims (the floor purge forgets them as the floor
 *     passes), and after the final purge at most INBOX_FINAL_BOUND; every
 *     claim left is one of an order;
 *   - the broker stored each order's event once;
 *   - both groups have nothing left in flight or waiting;
 *   - orders_check --pg agrees.
 *
 * Environment: FERRYD, FERRY_CLI and ORDERS_BIN, set by meson.
 * STORY_SEED=n replays a kill schedule. Sanitizer builds do fewer kills at
 * a lower rate.
 */
#include <errno.h>
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
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <cmocka.h>
#include <libpq-fe.h>

#include "harness.h"
#include "it_util.h"
#include "pg_harness.h"

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
#define DRAIN_MS 90000
#define POLL_MS 50
/* The most claims an inbox may hold at any sample while the story runs:
 * the floor purge every 500 ms keeps it to what arrived since the floor
 * last moved (a killed consumer's leases hold the floor for up to the 3 s
 * lease), far below the orders. */
#define INBOX_RUN_BOUND(n) ((n) / 2)
/* After the final purge, with every message acked: at most one window. */
#define INBOX_FINAL_BOUND 64

enum { P_ORDER, P_RELAY, P_INVENTORY, P_EMAIL, P_BROKER, P_COUNT };
/* The victim that is Postgres' immediate restart. */
#define V_POSTGRES P_COUNT

static const char *const proc_names[P_COUNT] = {"order_service", "relay", "inventory_service",
                                                "email_service", "ferryd"};

struct proc {
    char *argv[16];
    char log[HARNESS_PATH_BYTES];
    pid_t pid;
    int kills;
    int finished; /* order_service: exited 0, all orders written */
};

struct story {
    struct harness_broker b;
    struct pg_cluster pgc;
    PGconn *pg; /* the test's own connection (white-box reads) */
    char addr[64];
    struct proc p[P_COUNT];
    long n_orders;
    uint64_t rng;
    int64_t inbox_max[2]; /* the most claims sampled in each inbox */
};

static uint64_t rnd(struct story *s)
{
    uint64_t z = (s->rng += 0x9e3779b97f4a7c15ULL); /* splitmix64 */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int rnd_between(struct story *s, int lo, int hi)
{
    return lo + (int)(rnd(s) % (uint64_t)(hi - lo + 1));
}

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

static void story_dump(struct story *s)
{
    for (int i = 0; i < P_COUNT; i++)
        dump_tail(s->p[i].log, proc_names[i]);
    dump_tail(s->pgc.log_path, "postgres");
}

/* ----- processes ------------------------------------------------------- */

static void proc_start(struct story *s, int i)
{
    struct proc *p = &s->p[i];
    assert_int_equal(p->pid, 0);
    int logfd = open(p->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    assert_true(logfd >= 0);
    dprintf(logfd, "=== test_story_pg: start %s\n", proc_names[i]);
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
        execv(p->argv[0], p->argv);
        _exit(127);
    }
    close(logfd);
    p->pid = pid;
}

/* Reaps p when it has exited. Returns 1 when it is not running (any more). */
static int proc_reap(struct story *s, int i)
{
    struct proc *p = &s->p[i];
    if (p->pid == 0)
        return 1;
    int st;
    if (waitpid(p->pid, &st, WNOHANG) != p->pid)
        return 0;
    p->pid = 0;
    if (i == P_ORDER && WIFEXITED(st) && WEXITSTATUS(st) == 0) {
        p->finished = 1;
    } else if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) &&
               !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
        story_dump(s);
        fail_msg("%s exited unexpectedly (status 0x%x); its log: %s", proc_names[i], st, p->log);
    }
    return 1;
}

static void reap_all(struct story *s)
{
    for (int i = 0; i < P_BROKER; i++)
        proc_reap(s, i);
}

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

/* ----- white-box SQL --------------------------------------------------- */

/* One integer from sql on the test's connection, made again after a
 * Postgres restart; -1 when it fails (the server down, a table not made). */
static int64_t pq(struct story *s, const char *sql)
{
    if (!s->pg || PQstatus(s->pg) != CONNECTION_OK) {
        PQfinish(s->pg);
        s->pg = s->pgc.pid ? PQconnectdb(s->pgc.conninfo) : NULL;
        if (!s->pg || PQstatus(s->pg) != CONNECTION_OK)
            return -1;
    }
    PGresult *r = PQexec(s->pg, sql);
    int64_t v = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
        v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}

static void expect_q(struct story *s, const char *what, const char *sql, int64_t want)
{
    int64_t got = pq(s, sql);
    if (got != want)
        fail_msg("%s: %" PRId64 ", want %" PRId64 " (%s)", what, got, want, sql);
    fprintf(stderr, "story_pg:   %-52s %" PRId64 "\n", what, got);
}

/* Samples both inboxes' sizes (the bound while the story runs). */
static void sample_inboxes(struct story *s)
{
    static const char *const sql[2] = {"SELECT count(*) FROM inventory.inbox",
                                       "SELECT count(*) FROM email.inbox"};
    for (int k = 0; k < 2; k++) {
        int64_t n = pq(s, sql[k]);
        if (n > s->inbox_max[k])
            s->inbox_max[k] = n;
    }
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

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ----- the story -------------------------------------------------------- */

static void story_setup(struct story *s)
{
    const char *bin = env_or_fail("ORDERS_BIN");
    const char *cli = env_or_fail("FERRY_CLI");
    const char *seed = getenv("STORY_SEED");
    s->rng = seed ? strtoull(seed, NULL, 10) : harness_seed();
    fprintf(stderr, "story_pg: STORY_SEED=%" PRIu64 "\n", s->rng);

    if (pg_cluster_start(&s->pgc) != 0)
        fail_msg("cannot start a private PostgreSQL (see above)");
    fprintf(stderr, "story_pg: PostgreSQL at %s (pid %d)\n", s->pgc.url, (int)s->pgc.pid);

    char port_arg[32];
    snprintf(port_arg, sizeof port_arg, "127.0.0.1:%d", free_port());
    const char *args[] = {"--listen", port_arg, NULL};
    assert_int_equal(harness_start(&s->b, args), 0);
    snprintf(s->addr, sizeof s->addr, "%s", s->b.addr);
    assert_string_equal(s->addr, port_arg);

    s->n_orders = STORY_SANITIZED ? 2000 : 3000;
    char path[HARNESS_PATH_BYTES], count[32], rate[32];
    snprintf(count, sizeof count, "%ld", s->n_orders);
    snprintf(rate, sizeof rate, "%d", STORY_SANITIZED ? 100 : 150);

    struct proc *p = s->p;
    snprintf(path, sizeof path, "%s/order_service", bin);
    char **a = p[P_ORDER].argv;
    a[0] = xstrdup(path), a[1] = xstrdup("--pg"), a[2] = xstrdup(s->pgc.conninfo);
    a[3] = xstrdup("--count"), a[4] = xstrdup(count), a[5] = xstrdup("--rate");
    a[6] = xstrdup(rate);

    a = p[P_RELAY].argv;
    a[0] = xstrdup(cli), a[1] = xstrdup("relay"), a[2] = xstrdup("--pg");
    a[3] = xstrdup(s->pgc.url), a[4] = xstrdup("--schema"), a[5] = xstrdup("orders");
    a[6] = xstrdup("--server"), a[7] = xstrdup(s->addr);

    const char *svc[2] = {"inventory_service", "email_service"};
    for (int k = 0; k < 2; k++) {
        snprintf(path, sizeof path, "%s/%s", bin, svc[k]);
        a = p[P_INVENTORY + k].argv;
        a[0] = xstrdup(path), a[1] = xstrdup("--pg"), a[2] = xstrdup(s->pgc.conninfo);
        a[3] = xstrdup("--server"), a[4] = xstrdup(s->addr);
        /* A short lease: a consumer killed while the broker was down
         * leaves leases that only expiry returns. */
        a[5] = xstrdup("--ack-wait-ms"), a[6] = xstrdup("3000");
        a[7] = xstrdup("--max-deliveries"), a[8] = xstrdup("1000");
        a[9] = xstrdup("--purge-every-ms"), a[10] = xstrdup("500");
    }
    for (int i = 0; i < P_COUNT; i++)
        snprintf(p[i].log, sizeof p[i].log, "%s/%s.log", s->b.dir, proc_names[i]);
    snprintf(p[P_BROKER].log, sizeof p[P_BROKER].log, "%s", s->b.log_path);
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
        for (int i = 0; i < P_BROKER; i++) {
            if (s->p[i].pid) {
                kill(s->p[i].pid, SIGKILL);
                waitpid(s->p[i].pid, NULL, 0);
            }
            for (int k = 0; s->p[i].argv[k]; k++)
                free(s->p[i].argv[k]);
        }
        PQfinish(s->pg);
        if (s->b.dir[0])
            rc = harness_check_log(&s->b);
        harness_cleanup(&s->b);
        pg_cluster_cleanup(&s->pgc);
        free(s);
    }
    return rc;
}

static void test_story_pg_orders_through_kill9_and_postgres_restart_each_effect_once(void **state)
{
    struct story *s = *state;
    story_setup(s);
    int kills_each = STORY_SANITIZED ? 2 : 4;
    int64_t t_start = harness_now_ms();

    /* The order service first: it makes the outbox and the orders table. */
    proc_start(s, P_ORDER);
    while (pq(s, "SELECT count(*) FROM orders.orders") < 0) {
        proc_reap(s, P_ORDER);
        if (harness_now_ms() - t_start > 20000) {
            story_dump(s);
            fail_msg("order_service did not create orders.orders");
        }
        it_sleep_ms(10);
    }
    for (int i = P_RELAY; i < P_BROKER; i++)
        proc_start(s, i);

    /* The schedule: every process kills_each times, and Postgres once, in
     * random order at random moments; the order service's first kill in
     * the first third, while it surely still writes. */
    int victims[P_COUNT * 8 + 1], nv = 0;
    for (int k = 0; k < kills_each; k++)
        for (int i = 0; i < P_COUNT; i++)
            victims[nv++] = i;
    victims[nv++] = V_POSTGRES;
    for (int i = nv - 1; i > 0; i--) {
        int j = (int)(rnd(s) % (uint64_t)(i + 1));
        int t = victims[i];
        victims[i] = victims[j];
        victims[j] = t;
    }
    int first_order = 0;
    while (victims[first_order] != P_ORDER)
        first_order++;
    if (first_order >= nv / 3) {
        int j = rnd_between(s, 0, nv / 3 - 1);
        victims[first_order] = victims[j];
        victims[j] = P_ORDER;
    }
    int next = 0, pg_restarts = 0, order_kills_skipped = 0;
    int64_t next_kill_at = harness_now_ms() + rnd_between(s, 300, 1500);
    while (next < nv || !s->p[P_ORDER].finished) {
        it_sleep_ms(POLL_MS);
        reap_all(s);
        sample_inboxes(s);
        if (harness_now_ms() - t_start > 300000) {
            story_dump(s);
            fail_msg("the story did not finish writing orders in time (%" PRId64 " of %ld)",
                     pq(s, "SELECT count(*) FROM orders.orders"), s->n_orders);
        }
        if (next >= nv || harness_now_ms() < next_kill_at)
            continue;
        int v = victims[next++];
        if (v == P_ORDER && s->p[P_ORDER].finished) {
            order_kills_skipped++;
            continue;
        }
        int64_t written = pq(s, "SELECT count(*) FROM orders.orders");
        int pause = rnd_between(s, 20, 700);
        if (v == V_POSTGRES) {
            PQfinish(s->pg);
            s->pg = NULL;
            assert_int_equal(pg_cluster_stop(&s->pgc, 1), 0); /* pg_ctl -m immediate */
            fprintf(stderr,
                    "story_pg: %6.1f s: immediate stop of PostgreSQL (orders written %" PRId64
                    "), back in %d ms\n",
                    (harness_now_ms() - t_start) / 1000.0, written, pause);
            it_sleep_ms(pause);
            if (pg_cluster_restart(&s->pgc) != 0) {
                story_dump(s);
                fail_msg("PostgreSQL did not start again");
            }
            pg_restarts++;
        } else {
            if (v == P_BROKER) {
                assert_int_equal(harness_kill9(&s->b), 0);
            } else {
                if (s->p[v].pid == 0)
                    proc_start(s, v);
                kill(s->p[v].pid, SIGKILL);
                waitpid(s->p[v].pid, NULL, 0);
                s->p[v].pid = 0;
            }
            s->p[v].kills++;
            fprintf(stderr,
                    "story_pg: %6.1f s: kill -9 %-17s (orders written %" PRId64
                    "), back in %d ms\n",
                    (harness_now_ms() - t_start) / 1000.0, proc_names[v], written, pause);
            it_sleep_ms(pause);
            if (v == P_BROKER) {
                assert_int_equal(harness_restart(&s->b), 0);
                assert_string_equal(s->b.addr, s->addr);
            } else {
                proc_start(s, v);
            }
        }
        next_kill_at = harness_now_ms() + rnd_between(s, 200, 1800);
    }
    int64_t t_written = harness_now_ms();
    fprintf(stderr, "story_pg: %6.1f s: all %ld orders written\n", (t_written - t_start) / 1000.0,
            s->n_orders);

    /* Everything flows out: the outbox empties, both services apply every
     * order, both groups have nothing left. */
    char why[256] = "";
    for (;;) {
        reap_all(s);
        sample_inboxes(s);
        int64_t waiting = pq(s, "SELECT count(*) FROM orders.outbox");
        int64_t inv = pq(s, "SELECT count(DISTINCT order_id) FROM inventory.reservations");
        int64_t mail = pq(s, "SELECT count(DISTINCT order_id) FROM email.emails");
        if (waiting == 0 && inv == s->n_orders && mail == s->n_orders &&
            groups_done(s, why, sizeof why))
            break;
        if (harness_now_ms() - t_written > DRAIN_MS) {
            story_dump(s);
            fail_msg("not drained after %d ms: outbox %" PRId64 ", reserved %" PRId64
                     ", e-mailed %" PRId64 " of %ld; %s",
                     DRAIN_MS, waiting, inv, mail, s->n_orders, why);
        }
        it_sleep_ms(100);
    }
    fprintf(stderr, "story_pg: %6.1f s: every order applied by both services\n",
            (harness_now_ms() - t_start) / 1000.0);

    /* The final purge: with everything acked, the services' floor purges
     * (every 500 ms) forget the claims below the floor. */
    int64_t deadline = harness_now_ms() + 20000, inv_rows, mail_rows;
    while ((inv_rows = pq(s, "SELECT count(*) FROM inventory.inbox")) > INBOX_FINAL_BOUND ||
           (mail_rows = pq(s, "SELECT count(*) FROM email.inbox")) > INBOX_FINAL_BOUND ||
           inv_rows < 0 || mail_rows < 0) {
        reap_all(s);
        if (harness_now_ms() > deadline) {
            story_dump(s);
            fail_msg("the inboxes hold %" PRId64 " and %" PRId64
                     " claims after the final purges, want at most %d",
                     inv_rows, pq(s, "SELECT count(*) FROM email.inbox"), INBOX_FINAL_BOUND);
        }
        it_sleep_ms(100);
    }
    it_sleep_ms(500); /* late duplicates would come now, if any could */
    for (int i = P_RELAY; i < P_BROKER; i++)
        proc_stop(s, i);
    assert_true(s->p[P_ORDER].finished);
    for (int i = 0; i < P_COUNT; i++) {
        fprintf(stderr, "story_pg: %-17s killed %d times\n", proc_names[i], s->p[i].kills);
        assert_int_equal(s->p[i].kills, kills_each - (i == P_ORDER ? order_kills_skipped : 0));
    }
    assert_true(s->p[P_ORDER].kills >= 1);
    fprintf(stderr, "story_pg: PostgreSQL restarted (immediate) %d time(s)\n", pg_restarts);
    assert_int_equal(pg_restarts, 1);
    for (int i = P_INVENTORY; i <= P_EMAIL; i++)
        fprintf(stderr, "story_pg: %-17s redeliveries skipped by the inbox: %d\n", proc_names[i],
                count_lines(s->p[i].log, "already applied"));
    /* The restart cut the connections of those running: they said so
     * (a process started after it has nothing to say). */
    int reconnected = count_lines(s->p[P_RELAY].log, "lost the Postgres connection");
    for (int i = 0; i < P_BROKER; i++)
        if (i != P_RELAY)
            reconnected += count_lines(s->p[i].log, "connected to PostgreSQL again");
    fprintf(stderr, "story_pg: reconnections to PostgreSQL logged: %d\n", reconnected);
    assert_true(reconnected >= 1);
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
    fprintf(stderr, "story_pg: white-box checks\n");
    expect_q(s, "orders written", "SELECT count(*) FROM orders.orders", n);
    expect_q(s, "orders numbered 1..N", "SELECT max(id) - min(id) + 1 FROM orders.orders", n);
    expect_q(s, "outbox rows left (waiting or failed)", "SELECT count(*) FROM orders.outbox", 0);
    expect_q(s, "reservations", "SELECT count(*) FROM inventory.reservations", n);
    expect_q(s, "orders reserved other than exactly once",
             "SELECT count(*) FROM orders.orders o LEFT JOIN (SELECT order_id, count(*) AS k"
             " FROM inventory.reservations GROUP BY order_id) r ON r.order_id = o.id"
             " WHERE coalesce(r.k, 0) != 1",
             0);
    expect_q(s, "reservations not matching their order",
             "SELECT count(*) FROM inventory.reservations r LEFT JOIN orders.orders o"
             " ON o.id = r.order_id WHERE o.id IS NULL OR r.sku != o.sku OR r.qty != o.qty"
             " OR r.order_created_us != o.created_us",
             0);
    expect_q(s, "stock units reserved (sum of order quantities)",
             "SELECT (SELECT sum(reserved) FROM inventory.stock)"
             " - (SELECT sum(qty) FROM orders.orders)",
             0);
    expect_q(s, "e-mails", "SELECT count(*) FROM email.emails", n);
    expect_q(s, "orders e-mailed other than exactly once",
             "SELECT count(*) FROM orders.orders o LEFT JOIN (SELECT order_id, count(*) AS k"
             " FROM email.emails GROUP BY order_id) m ON m.order_id = o.id"
             " WHERE coalesce(m.k, 0) != 1",
             0);
    expect_q(s, "inventory inbox claims of no order",
             "SELECT count(*) FROM inventory.inbox i LEFT JOIN orders.orders o"
             " ON i.msg_id = 'order-' || o.id WHERE o.id IS NULL OR i.grp != 'inventory'"
             " OR i.topic != 'orders'",
             0);
    expect_q(s, "e-mail inbox claims of no order",
             "SELECT count(*) FROM email.inbox i LEFT JOIN orders.orders o"
             " ON i.msg_id = 'order-' || o.id WHERE o.id IS NULL OR i.grp != 'email'"
             " OR i.topic != 'orders'",
             0);
    inv_rows = pq(s, "SELECT count(*) FROM inventory.inbox");
    mail_rows = pq(s, "SELECT count(*) FROM email.inbox");
    fprintf(stderr,
            "story_pg:   inbox claims: inventory at most %" PRId64 " while running, %" PRId64
            " at the end; e-mail %" PRId64 " and %" PRId64 " (bounds %ld and %d)\n",
            s->inbox_max[0], inv_rows, s->inbox_max[1], mail_rows, INBOX_RUN_BOUND(n),
            INBOX_FINAL_BOUND);
    assert_true(inv_rows >= 0 && inv_rows <= INBOX_FINAL_BOUND);
    assert_true(mail_rows >= 0 && mail_rows <= INBOX_FINAL_BOUND);
    assert_true(s->inbox_max[0] <= INBOX_RUN_BOUND(n));
    assert_true(s->inbox_max[1] <= INBOX_RUN_BOUND(n));

    /* The broker stored each event once. */
    struct harness_row *rows = NULL;
    long nrows = harness_db_rows(&s->b, TOPIC, &rows);
    assert_true(nrows >= 0);
    char **ids = calloc((size_t)nrows + 1, sizeof *ids);
    assert_non_null(ids);
    for (long i = 0; i < nrows; i++)
        ids[i] = rows[i].msg_id;
    qsort(ids, (size_t)nrows, sizeof *ids, cmp_str);
    long distinct = 0;
    for (long i = 0; i < nrows; i++)
        distinct += i == 0 || strcmp(ids[i], ids[i - 1]) != 0;
    free(ids);
    harness_db_rows_free(rows, nrows);
    fprintf(stderr, "story_pg:   %-52s %ld\n", "events stored by the broker", nrows);
    fprintf(stderr, "story_pg:   %-52s %ld\n", "distinct events stored by the broker", distinct);
    assert_int_equal(nrows, n);
    assert_int_equal(distinct, n);

    /* The example's own checker agrees (what run.sh --pg prints). */
    char checker[HARNESS_PATH_BYTES];
    snprintf(checker, sizeof checker, "%s/orders_check", env_or_fail("ORDERS_BIN"));
    char *argv[] = {checker, "--pg", s->pgc.conninfo, NULL};
    struct harness_output out;
    assert_int_equal(harness_run(s->b.dir, argv, NULL, 30000, &out), 0);
    fputs(out.out, stderr);
    if (out.status != 0)
        fail_msg("orders_check --pg: status %d: %s", out.status, out.err);
    harness_output_free(&out);
    fprintf(stderr, "story_pg: %.1f s in all\n", (harness_now_ms() - t_start) / 1000.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_story_pg_orders_through_kill9_and_postgres_restart_each_effect_once, setup,
            teardown),
    };
    if (getenv("IT_FILTER"))
        cmocka_set_test_filter(getenv("IT_FILTER"));
    return cmocka_run_group_tests_name("story_pg", tests, NULL, NULL);
}
