/*
 * test_memory.c - bounded memory (issue 5): a consumer that stops reading
 * its socket while 100,000 messages wait, and producers that flood faster
 * than the disk, cost ferryd bounded memory, and another client keeps
 * publishing and consuming meanwhile.
 *
 * The bounds come from ferryd's limits (docs/OPERATIONS.md, broker.h):
 *   - the SQLite page cache: --cache-mb, CACHE_MB here (default 128);
 *   - the group-commit batches: the pending one stops taking requests once
 *     it holds more than 64 MiB (every connection's reading pauses), plus
 *     the frame that crossed the line (max_frame_bytes, 4 MiB), while a
 *     second one of that size commits: 2 x 68 MiB of requests, plus the
 *     replies of the one being answered, no larger than its requests for
 *     the publishes used here (a 47-byte ack entry answers a 45-byte
 *     message), held in the batch and copied to the connections' write
 *     queues (past their 8 MiB: a commit's replies are never held back):
 *     2 x 68 MiB; ferryd keeps these buffers for reuse;
 *   - each connection: 8 MiB of unsent replies (the write queue) before
 *     ferryd stops reading it, one such buffer being written, and a read
 *     buffer of one frame (4 MiB): 20 MiB;
 *   - a subscription: its window of deliveries, which ferryd pushes into
 *     the connection's write queue ("a slow consumer gets no more than its
 *     window"), read by the commit that fetched them into that batch's
 *     replies first: 2 x window x DELIVER size;
 *   - SLACK_MIB for the rest: allocator fragmentation, SQLite's scratch
 *     and its other two connections, thread stacks.
 * Each test states its own sum in its assertion message. Buffers kept for
 * reuse count as held, so the peak (VmHWM) is checked as well as VmRSS
 * sampled every SAMPLE_MS.
 *
 * Under AddressSanitizer (its allocator quarantines freed memory and pads
 * every block) or valgrind (memcheck's shadow memory is part of the RSS;
 * script/valgrind sets FERRY_UNDER_VALGRIND=1) the scenarios run and are
 * checked for progress and correctness, and the RSS figures are printed,
 * but not asserted.
 *
 * A canary client (libferry, its own thread) publishes to its own topic and
 * consumes it with its own group throughout; each scenario requires it to
 * have made progress (round trips completed) while the pressure was on,
 * within generous timeouts: no throughput figure is asserted.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "it_util.h"

#if defined(__SANITIZE_ADDRESS__)
#define MEM_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MEM_SANITIZED 1
#endif
#endif
#ifndef MEM_SANITIZED
#define MEM_SANITIZED 0
#endif

#define CACHE_MB 16
#define BATCHES_MIB (4 * (64 + 4))
#define PER_CONN_MIB (8 + 8 + 4)
#define SLACK_MIB 32
#define SAMPLE_MS 100

/* (a) the consumer that stops reading */
#define WAITING 100000
#define SLOW_PAYLOAD 1024
/* Big, and far enough below WAITING that a broker pushing more than the
 * window would exceed the bound. */
#define SLOW_WINDOW 20000
/* A DELIVER of one of those messages: header, fields, a 36-byte id. */
#define SLOW_DELIVER_BYTES (SLOW_PAYLOAD + 128)
#define SLOW_WATCH_MS 3000
/* The connection with many subscriptions. */
#define MANY_SUBS 16

/* (b) the flood */
#define FLOODERS 8
#define FLOOD_MSGS_PER_FRAME 500
#define FLOOD_PAYLOAD 16
#define FLOOD_MAX_MS 20000
#define FLOOD_STALL_MS 2000

/* The canary must complete a round trip within this, however loaded;
 * harness_slowdown() times longer under valgrind, where a commit of the
 * flood's 64 MiB batches takes minutes. */
#define CANARY_TIMEOUT_MS (30000 * harness_slowdown())

struct canary {
    const char *addr;
    pthread_t th;
    int started;
    atomic_int stop;
    atomic_int failed;
    atomic_size_t rounds; /* publish + receive + ack, each completed */
    char err[512];
};

struct fx {
    struct harness_broker b;
    long rss0_kib; /* right after the start */
    struct canary can;
};

static int setup(void **state)
{
    static const char *const args[] = {"--cache-mb", "16", NULL};
    struct fx *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    *state = fx;
    if (harness_start(&fx->b, args) != 0)
        return -1;
    fx->rss0_kib = harness_rss_kib(fx->b.pid);
    return fx->rss0_kib > 0 ? 0 : -1;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    if (!fx)
        return 0;
    atomic_store(&fx->can.stop, 1);
    if (fx->can.started)
        pthread_join(fx->can.th, NULL);
    int st = fx->b.pid ? harness_stop(&fx->b) : 0;
    if (st != 0)
        harness_dump_log(&fx->b);
    if (harness_check_log(&fx->b) != 0)
        st = -1;
    harness_cleanup(&fx->b);
    free(fx);
    return st == 0 ? 0 : -1;
}

/* Why ferryd's RSS cannot be held to a bound ("a sanitizer": this test
 * itself was built with ASan, so ferryd was too, one build; or what
 * harness_rss_unreliable says), or NULL. */
static const char *rss_unreliable(pid_t pid)
{
    if (MEM_SANITIZED)
        return "a sanitizer";
    return harness_rss_unreliable(pid);
}

/* ----- the canary ------------------------------------------------------------ */

static void canary_fail(struct canary *cn, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void canary_fail(struct canary *cn, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cn->err, sizeof cn->err, fmt, ap);
    va_end(ap);
    atomic_store(&cn->failed, 1);
}

/* Publishes one message to its own topic, receives it through its own
 * group, acks it: one round. */
static void *canary_main(void *arg)
{
    struct canary *cn = arg;
    ferry_options o = FERRY_OPTIONS_INIT;
    o.client_name = "memory-canary";
    o.request_timeout_ms = CANARY_TIMEOUT_MS;
    o.connect_timeout_ms = CANARY_TIMEOUT_MS;
    ferry_conn *c = NULL;
    char err[256] = "";
    int rc = ferry_connect(cn->addr, &o, &c, err, sizeof err);
    if (rc != 0) {
        canary_fail(cn, "connect: %s (%s)", ferry_strerror(rc), err);
        return NULL;
    }
    ferry_sub_options so = FERRY_SUB_OPTIONS_INIT;
    so.start = FERRY_START_LATEST;
    so.max_in_flight = 10;
    ferry_sub *s = NULL;
    if ((rc = ferry_subscribe(c, "mem-canary", "mem-canary-g", &so, &s)) != 0) {
        canary_fail(cn, "subscribe: %s (%s)", ferry_strerror(rc), ferry_errmsg(c));
        ferry_close(c);
        return NULL;
    }
    uint64_t last = 0;
    while (!atomic_load(&cn->stop)) {
        ferry_msg m;
        memset(&m, 0, sizeof m);
        m.topic = "mem-canary";
        m.payload = "alive";
        m.payload_len = 5;
        ferry_ack ack;
        if ((rc = ferry_publish(c, &m, &ack)) != 0) {
            canary_fail(cn, "publish: %s (%s)", ferry_strerror(rc), ferry_errmsg(c));
            break;
        }
        if (ack.seq != last + 1 && last != 0) {
            canary_fail(cn, "publish acked at seq %" PRIu64 " after %" PRIu64, ack.seq, last);
            break;
        }
        last = ack.seq;
        ferry_delivery *d = NULL;
        if ((rc = ferry_receive(c, CANARY_TIMEOUT_MS, &d)) != 0) {
            canary_fail(cn, "receive seq %" PRIu64 ": %s (%s)", ack.seq, ferry_strerror(rc),
                        ferry_errmsg(c));
            break;
        }
        uint64_t got = d->seq;
        rc = ferry_delivery_ack(d);
        ferry_delivery_free(d);
        if (rc != 0 || got != ack.seq) {
            canary_fail(cn, "delivery of seq %" PRIu64 " (published %" PRIu64 "), ack: %s", got,
                        ack.seq, ferry_strerror(rc));
            break;
        }
        atomic_fetch_add(&cn->rounds, 1);
        it_sleep_ms(5);
    }
    ferry_close(c);
    return NULL;
}

static void canary_start(struct fx *fx)
{
    fx->can.addr = fx->b.addr;
    atomic_init(&fx->can.stop, 0);
    atomic_init(&fx->can.failed, 0);
    atomic_init(&fx->can.rounds, 0);
    assert_int_equal(pthread_create(&fx->can.th, NULL, canary_main, &fx->can), 0);
    fx->can.started = 1;
}

static void canary_check(struct fx *fx)
{
    if (atomic_load(&fx->can.failed))
        fail_msg("the canary client: %s", fx->can.err);
}

/* Waits until the canary completed `more` rounds beyond `from`. */
static void canary_progress(struct fx *fx, size_t from, size_t more, const char *when)
{
    int64_t deadline = harness_now_ms() + CANARY_TIMEOUT_MS;
    while (atomic_load(&fx->can.rounds) < from + more) {
        canary_check(fx);
        if (harness_now_ms() > deadline) {
            harness_dump_log(&fx->b);
            fail_msg("%s: the canary client made %zu round trips in %d ms, want %zu", when,
                     atomic_load(&fx->can.rounds) - from, CANARY_TIMEOUT_MS, more);
        }
        it_sleep_ms(10);
    }
}

/* ----- measuring ------------------------------------------------------------- */

struct rss_watch {
    long max_kib;
    long samples;
};

static void rss_sample(struct fx *fx, struct rss_watch *w)
{
    long kib = harness_rss_kib(fx->b.pid);
    assert_true(kib > 0);
    if (kib > w->max_kib)
        w->max_kib = kib;
    w->samples++;
}

/* Asserts the peak since base_kib was measured against base_kib +
 * bound_mib (whose terms `terms` spells out), or only reports it under a
 * sanitizer or valgrind. */
static void within_bound(struct fx *fx, const struct rss_watch *w, long base_kib, long bound_mib,
                         const char *terms, const char *what)
{
    long bound_kib = base_kib + bound_mib * 1024;
    long hwm = harness_hwm_kib(fx->b.pid);
    print_message("%s: ferryd VmRSS %ld KiB before, max %ld KiB over %ld samples, VmHWM %ld KiB; "
                  "bound %ld KiB = %ld KiB + %s = %ld MiB\n",
                  what, base_kib, w->max_kib, w->samples, hwm, bound_kib, base_kib, terms,
                  bound_mib);
    const char *why = rss_unreliable(fx->b.pid);
    if (why) {
        print_message("%s: ferryd runs under %s: RSS not asserted under %s\n", what, why, why);
        return;
    }
    if (w->max_kib > bound_kib || hwm > bound_kib)
        fail_msg("%s: ferryd's memory exceeds the bound its limits give: VmRSS max %ld KiB, "
                 "VmHWM %ld KiB > %ld KiB (%ld KiB before + %s)",
                 what, w->max_kib, hwm, bound_kib, base_kib, terms);
}

/* ----- (a) a consumer that stops reading ------------------------------------ */

static void publish_waiting(struct fx *fx)
{
    enum { CHUNK = 1000 };
    static ferry_msg msgs[CHUNK];
    static uint8_t payload[SLOW_PAYLOAD];
    ferry_conn *c = it_connect(fx->b.addr);
    it_payload(1, payload, sizeof payload);
    for (size_t done = 0; done < WAITING; done += CHUNK) {
        for (size_t j = 0; j < CHUNK; j++) {
            memset(&msgs[j], 0, sizeof msgs[j]);
            msgs[j].topic = "mem-slow";
            msgs[j].payload = payload;
            msgs[j].payload_len = sizeof payload;
        }
        int r = ferry_publish_batch(c, msgs, CHUNK, NULL);
        if (r != 0)
            fail_msg("publish: %s (%s)", ferry_strerror(r), ferry_errmsg(c));
    }
    ferry_close(c);
}

/* Opens a raw connection with a small receive buffer, after the
 * handshake; raw_subscribe then subscribes a group of mem-slow (from the
 * earliest, window SLOW_WINDOW). */
static int raw_consumer(struct fx *fx)
{
    int fd = harness_connect(fx->b.addr);
    assert_true(fd >= 0);
    int small = 16384;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    assert_int_equal(harness_handshake(fd, NULL), 0);
    return fd;
}

static void raw_subscribe(int fd, uint32_t sub_id, const char *group)
{
    uint8_t frame[512];
    struct proto_writer w;
    struct proto_subscribe sub = {
        .sub_id = sub_id,
        .topic = {(const uint8_t *)"mem-slow", 8},
        .group = {(const uint8_t *)group, strlen(group)},
        .start = PROTO_START_EARLIEST,
        .max_in_flight = SLOW_WINDOW,
        .ack_wait_ms = 600000,
    };
    proto_writer_init(&w, frame, sizeof frame);
    assert_int_equal(proto_encode_subscribe(&w, 1 + sub_id, &sub), 0);
    assert_int_equal(harness_send(fd, frame, w.len), 0);
}

/* Reads the SUBSCRIBE_OK of request_id, the first frame of a connection
 * that subscribed once. */
static void raw_subscribe_ok(int fd, uint32_t request_id)
{
    static uint8_t rbuf[1 << 16];
    struct proto_frame f;
    assert_int_equal(harness_read_frame(fd, rbuf, sizeof rbuf, 10000, &f), 1);
    assert_int_equal(f.type, PROTO_SUBSCRIBE_OK);
    assert_int_equal(f.request_id, request_id);
}

/* Deliveries in flight to the groups of mem-slow, by the broker's
 * listing. */
static uint64_t in_flight(struct fx *fx)
{
    ferry_conn *c = it_connect(fx->b.addr);
    ferry_group_info *list = NULL;
    size_t n = 0;
    assert_int_equal(ferry_groups(c, "mem-slow", &list, &n), 0);
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += list[i].in_flight;
    ferry_groups_free(list);
    ferry_close(c);
    return sum;
}

/* Samples until the broker has delivered `windows` (every window full:
 * all it will ever queue for the consumer), then for SLOW_WATCH_MS more,
 * while the canary goes on. */
static void watch(struct fx *fx, struct rss_watch *rw, uint64_t windows, const char *what)
{
    size_t from = atomic_load(&fx->can.rounds);
    int64_t full = harness_now_ms() + CANARY_TIMEOUT_MS;
    uint64_t got, last = 0;
    int64_t last_change = harness_now_ms();
    /* The broker queues a connection's DELIVERs only up to its outgoing
     * limit (8 MiB of unsent bytes): it may stop short of the windows. So
     * this waits until every window is full or nothing more comes for 2 s. */
    while ((got = in_flight(fx)) < windows) {
        if (got != last) {
            last = got;
            last_change = harness_now_ms();
        } else if (got > 0 && harness_now_ms() - last_change > 2000) {
            break;
        }
        if (harness_now_ms() > full)
            fail_msg("%s: %" PRIu64 " of %" PRIu64 " deliveries sent after %d ms", what, got,
                     windows, CANARY_TIMEOUT_MS);
        rss_sample(fx, rw);
        canary_check(fx);
        it_sleep_ms(SAMPLE_MS);
    }
    int64_t end = harness_now_ms() + SLOW_WATCH_MS;
    while (harness_now_ms() < end) {
        rss_sample(fx, rw);
        canary_check(fx);
        it_sleep_ms(SAMPLE_MS);
    }
    canary_progress(fx, from, 3, what);
    print_message("the canary made %zu round trips %s\n", atomic_load(&fx->can.rounds) - from,
                  what);
}

/* One subscription, window SLOW_WINDOW, 100,000 messages of 1 KiB waiting,
 * and the consumer reads nothing after its SUBSCRIBE_OK. */
static void test_memory_consumer_stops_reading_100000_waiting(void **state)
{
    struct fx *fx = *state;
    publish_waiting(fx);
    canary_start(fx);
    canary_progress(fx, 0, 3, "before the slow consumer");
    long base = harness_rss_kib(fx->b.pid);

    int fd = raw_consumer(fx);
    raw_subscribe(fd, 1, "mem-slow-g");
    raw_subscribe_ok(fd, 2);
    struct rss_watch rw = {0, 0};
    watch(fx, &rw, SLOW_WINDOW, "while the consumer did not read");

    /* Cache, the window twice, the two connections, slack. */
    long window_mib = (2L * SLOW_WINDOW * SLOW_DELIVER_BYTES + (1 << 20) - 1) >> 20;
    long bound = CACHE_MB + window_mib + 2 * PER_CONN_MIB + SLACK_MIB;
    char terms[256];
    snprintf(terms, sizeof terms,
             "%d MiB cache + 2 x %d x %d bytes (the window, queued and fetched) + 2 x %d MiB "
             "(connections) + %d MiB slack",
             CACHE_MB, SLOW_WINDOW, SLOW_DELIVER_BYTES, PER_CONN_MIB, SLACK_MIB);
    within_bound(fx, &rw, base, bound, terms,
                 "a consumer not reading, 100,000 messages of 1 KiB waiting");

    /* Reading again, the consumer gets its whole window, in order. */
    static uint8_t rbuf[1 << 16];
    int64_t deadline = harness_now_ms() + CANARY_TIMEOUT_MS;
    for (uint64_t want = 1; want <= SLOW_WINDOW; want++) {
        struct proto_frame f;
        int r = harness_read_frame(fd, rbuf, sizeof rbuf, 10000, &f);
        if (r != 1 || f.type != PROTO_DELIVER || f.u.deliver.seq != want ||
            harness_now_ms() > deadline)
            fail_msg("reading again: delivery %" PRIu64 " of the window did not come (read %d, "
                     "type 0x%02x)",
                     want, r, r == 1 ? f.type : 0);
    }
    close(fd);
    size_t from = atomic_load(&fx->can.rounds);
    canary_progress(fx, from, 3, "after the slow consumer left");
}

/*
 * The same, with MANY_SUBS subscriptions (each its own group) on one
 * connection that reads nothing. The connection's documented limit is
 * 8 MiB of unsent replies before ferryd stops reading it; a broker that
 * held DELIVERs to that limit too would stay within the bound below.
 *
 * The broker bug this test found, now fixed: DELIVER frames were not
 * subject to the connection's outgoing limit, so a client that stopped
 * reading made ferryd buffer windows x subscriptions x message size, which
 * nothing bounded. pick_sub() (broker/group.c) now skips connections whose
 * unsent bytes or messages being fetched are over their limits
 * (conn_can_take_deliveries), and the subscriptions resume once the
 * connection's write queue drains. Here 16 x 20000 deliveries of 1 KiB.
 */
static void test_memory_connection_many_subscriptions_not_reading(void **state)
{
    struct fx *fx = *state;
    publish_waiting(fx);
    canary_start(fx);
    canary_progress(fx, 0, 3, "before the slow consumer");
    long base = harness_rss_kib(fx->b.pid);

    /* It reads nothing at all, not even its SUBSCRIBE_OKs: the broker's
     * listing tells when every window is full. */
    int fd = raw_consumer(fx);
    for (uint32_t i = 1; i <= MANY_SUBS; i++) {
        char group[32];
        snprintf(group, sizeof group, "mem-many-%u", i);
        raw_subscribe(fd, i, group);
    }
    struct rss_watch rw = {0, 0};
    watch(fx, &rw, (uint64_t)MANY_SUBS * SLOW_WINDOW,
          "while the consumer of 16 subscriptions did not read");

    /* Cache, the slow connection (its write queue, the one being
     * written, its read buffer) and the DELIVERs of one fetch (8 MiB, as
     * much as the queue may take), the canary, slack. */
    long bound = CACHE_MB + PER_CONN_MIB + 8 + PER_CONN_MIB + SLACK_MIB;
    char terms[256];
    snprintf(terms, sizeof terms,
             "%d MiB cache + %d MiB (the slow connection) + 8 MiB (one fetch for it) + %d MiB "
             "(the canary) + %d MiB slack",
             CACHE_MB, PER_CONN_MIB, PER_CONN_MIB, SLACK_MIB);
    within_bound(fx, &rw, base, bound, terms,
                 "one connection, 16 subscriptions of window 20000, not reading");
    close(fd);
    size_t from = atomic_load(&fx->can.rounds);
    canary_progress(fx, from, 3, "after the slow consumer left");
}

/* ----- (b) producers flooding -------------------------------------------------- */

/* Fills buf with PUBLISH frames of FLOOD_MSGS_PER_FRAME tiny messages
 * without ids (the broker's acks then outweigh the requests). Returns the
 * bytes written. */
static size_t build_flood(uint8_t *buf, size_t cap, int frames)
{
    static const uint8_t payload[FLOOD_PAYLOAD] = "flood-flood-floo";
    size_t len = 0;
    for (int i = 0; i < frames; i++) {
        struct proto_writer w;
        proto_writer_init(&w, buf + len, cap - len);
        size_t start = proto_publish_begin(&w, 100u + (uint32_t)i);
        for (int j = 0; j < FLOOD_MSGS_PER_FRAME; j++) {
            struct proto_msg m;
            memset(&m, 0, sizeof m);
            m.topic.ptr = (const uint8_t *)"mem-flood";
            m.topic.len = 9;
            m.payload.ptr = payload;
            m.payload.len = sizeof payload;
            proto_publish_add(&w, &m, NULL);
        }
        if (proto_publish_end(&w, start, FLOOD_MSGS_PER_FRAME) != 0)
            return 0;
        len += w.len;
    }
    return len;
}

static void test_memory_flooding_producers_never_reading_acks(void **state)
{
    struct fx *fx = *state;
    canary_start(fx);
    canary_progress(fx, 0, 3, "before the flood");
    /* The canary's rate without the flood, for comparison (not asserted). */
    size_t quiet0 = atomic_load(&fx->can.rounds);
    int64_t quiet_t0 = harness_now_ms();
    it_sleep_ms(1000);
    double quiet_rate = (double)(atomic_load(&fx->can.rounds) - quiet0) * 1000.0 /
                        (double)(harness_now_ms() - quiet_t0);

    size_t cap = 4u << 20;
    uint8_t *chunk = malloc(cap);
    assert_non_null(chunk);
    size_t len = build_flood(chunk, cap, 64);
    assert_true(len > 0);

    int fds[FLOODERS];
    size_t off[FLOODERS], sent[FLOODERS];
    int64_t last_progress[FLOODERS];
    for (int i = 0; i < FLOODERS; i++) {
        fds[i] = harness_connect(fx->b.addr);
        assert_true(fds[i] >= 0);
        assert_int_equal(harness_handshake(fds[i], NULL), 0);
        assert_int_equal(fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK), 0);
        off[i] = sent[i] = 0;
        last_progress[i] = harness_now_ms();
    }

    struct rss_watch rw = {0, 0};
    size_t from = atomic_load(&fx->can.rounds);
    int64_t start = harness_now_ms(), next_sample = start;
    int stalled = 0;
    while (harness_now_ms() - start < FLOOD_MAX_MS) {
        stalled = 0;
        struct pollfd pfd[FLOODERS];
        for (int i = 0; i < FLOODERS; i++) {
            ssize_t n = send(fds[i], chunk + off[i], len - off[i], MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0) {
                sent[i] += (size_t)n;
                off[i] = (off[i] + (size_t)n) % len;
                last_progress[i] = harness_now_ms();
            } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                fail_msg("flooder %d: send: %s", i, strerror(errno));
            }
            /* FLOOD_STALL_MS without a byte taken: ferryd stopped reading it. */
            stalled += harness_now_ms() - last_progress[i] >= FLOOD_STALL_MS;
            pfd[i].fd = fds[i];
            pfd[i].events = POLLOUT;
        }
        if (harness_now_ms() >= next_sample) {
            rss_sample(fx, &rw);
            canary_check(fx);
            next_sample += SAMPLE_MS;
        }
        if (stalled == FLOODERS)
            break;
        poll(pfd, FLOODERS, 20);
    }
    size_t total = 0;
    for (int i = 0; i < FLOODERS; i++)
        total += sent[i];
    print_message("flood: %d connections sent %zu MiB in %lld ms; %d of %d stalled (ferryd "
                  "stopped reading them)\n",
                  FLOODERS, total >> 20, (long long)(harness_now_ms() - start), stalled, FLOODERS);
    rss_sample(fx, &rw);
    canary_progress(fx, from, 3, "during the flood");
    double flood_ms = (double)(harness_now_ms() - start);
    double flood_rate = (double)(atomic_load(&fx->can.rounds) - from) * 1000.0 / flood_ms;
    print_message("the canary made %zu round trips during the flood: %.0f/s, against %.0f/s "
                  "before it (%.2f; not asserted)\n",
                  atomic_load(&fx->can.rounds) - from, flood_rate, quiet_rate,
                  quiet_rate > 0 ? flood_rate / quiet_rate : 0.0);
    /* The flooders, the canary. */
    /* Cache, the batches, the flooders and the canary, slack. */
    long bound = CACHE_MB + BATCHES_MIB + (FLOODERS + 1) * PER_CONN_MIB + SLACK_MIB;
    char terms[256];
    snprintf(terms, sizeof terms,
             "%d MiB cache + %d MiB (batches: 2 x 68 MiB requests, 2 x 68 MiB replies) + "
             "%d x %d MiB (connections) + %d MiB slack",
             CACHE_MB, BATCHES_MIB, FLOODERS + 1, PER_CONN_MIB, SLACK_MIB);
    within_bound(fx, &rw, fx->rss0_kib, bound, terms,
                 "8 connections flooding pipelined publishes, acks unread");

    for (int i = 0; i < FLOODERS; i++)
        close(fds[i]);
    free(chunk);
    from = atomic_load(&fx->can.rounds);
    canary_progress(fx, from, 3, "after the flood");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_memory_consumer_stops_reading_100000_waiting, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_memory_connection_many_subscriptions_not_reading,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_memory_flooding_producers_never_reading_acks, setup,
                                        teardown),
    };
    /* IT_FILTER=pattern runs only the matching tests (cmocka's wildcards). */
    if (getenv("IT_FILTER"))
        cmocka_set_test_filter(getenv("IT_FILTER"));
    return cmocka_run_group_tests_name("memory", tests, NULL, NULL);
}
