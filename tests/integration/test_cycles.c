/*
 * test_cycles.c - crash cycles: producers and consumers run against ferryd
 * while the test kills the broker with SIGKILL at random moments, over and
 * over, restarting it each time (issue 5).
 *
 * The actors are threads of this process, each with its own libferry
 * connection, so their records survive every broker crash:
 *
 *   producers  (PRODUCERS) publish pipelined (ferry_publish_async, a window
 *              of WINDOW) messages with ids "pP-N" and payloads derived from
 *              the id, paced to RATE messages a second. Each ack is recorded
 *              (id, seq, duplicate flag) in the callback, as it arrives.
 *              When the connection dies, every id without an ack is sent
 *              again on the next connection: the broker's dedupe makes that
 *              safe, and the ack of a resent id that was already stored says
 *              "duplicate" with the original sequence.
 *   consumers  two consumer groups: GROUP_A with two consumers sharing the
 *              work, GROUP_B with one. Each delivery is checked and recorded
 *              by a delivery callback the moment libferry reads it from the
 *              socket; the consumer then acks in batches (ferry_sub_ack) and
 *              records each sequence as "acked" only when that call returned
 *              success, i.e. the broker's ACK_OK (sent once the ack is
 *              durable) was received.
 *
 * The test thread kills the broker CYCLES times (at least 20), each time
 * after a random 100-600 ms of traffic, and restarts it on the same data
 * folder; actors notice the dead connection, reconnect to the new address
 * and resume. Then producers stop making new ids, resend what is unacked,
 * and the groups drain. Checked:
 *   - no delivery to a group of a sequence after an ack of it by that group
 *     had returned success (a delivery read late from the socket of a
 *     broker run older than the ack is not counted: it was sent before);
 *   - every publish acked is stored exactly once: with the broker stopped,
 *     messages_v holds sequences 1..head without a gap, every message id
 *     once, each one of ours with its payload, each acked id at its acked
 *     sequence (duplicate acks included), and nothing else;
 *   - an ack says "duplicate" only for an id sent before;
 *   - every stored message was delivered to each group at least once, and
 *     the groups end with nothing pending (cursor head + 1, lag 0);
 *   - PRAGMA integrity_check says ok; no sanitizer report in the log.
 *
 * Bounds: DEFAULT_CYCLES (SANITIZED_CYCLES under ASan), FERRY_CYCLES=N to
 * choose, FERRY_LONG=1 for LONG_CYCLES. Timing decides only when a kill
 * lands, never whether the test passes.
 */
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "it_util.h"

#if defined(__SANITIZE_ADDRESS__)
#define CY_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CY_SANITIZED 1
#endif
#endif
#ifndef CY_SANITIZED
#define CY_SANITIZED 0
#endif

#define TOPIC "cycles"
#define GROUP_A "cycles-a"
#define GROUP_B "cycles-b"
#define PRODUCERS 2
#define CONSUMERS 3 /* two in GROUP_A, one in GROUP_B */
#define NGROUPS 2
#define WINDOW 200    /* pipelined publishes in flight per producer */
#define RATE 2500     /* new messages a second per producer */
#define BURST 400     /* most new messages a producer catches up at once */
#define SUB_WINDOW 64 /* deliveries in flight per consumer */
#define PAYLOAD_BYTES 48
#define DEFAULT_CYCLES 30
#define SANITIZED_CYCLES 24
#define LONG_CYCLES 200
#define KILL_MIN_MS 100
#define KILL_MAX_MS 600
/* Generous limits for the end: producers resend and groups drain. */
#define DRAIN_MS 60000
#define STALL_MS 20000
/* A consumer acks at most this many sequences in one call. */
#define ACK_MAX 256

enum { ID_NONE = 0, ID_INFLIGHT, ID_RETRY, ID_ACKED };

/* Where the broker is now. Actors read it before each connect. */
struct where {
    pthread_mutex_t mu;
    char addr[64];
    int epoch; /* the broker run: +1 at every restart */
    int up;
};

struct producer {
    int index;
    struct where *w;
    atomic_int *stop_new;
    atomic_int *abort_all;
    pthread_t th;
    int started;
    /* Per id number N (id "pP-N"): state, sends, acked sequence. */
    size_t n_ids, cap;
    uint8_t *state;
    uint16_t *sends;
    uint64_t *seq;
    atomic_size_t acked; /* ids with an ack */
    size_t inflight;     /* ids sent on the current connection, no outcome yet */
    size_t resent;       /* sends beyond the first */
    size_t dup_acks;     /* acks saying "duplicate" */
    size_t connects;     /* connections made */
    atomic_int finished; /* every id acked after stop_new */
    atomic_int failed;   /* err is set */
    char err[512];       /* the first violation */
};

struct group_log {
    const char *name;
    pthread_mutex_t mu;
    size_t cap;            /* sequences 0..cap-1 have room */
    uint32_t *deliveries;  /* per sequence, over every run */
    int32_t *ack_epoch;    /* the broker run an ack of it succeeded in; -1 none */
    size_t acks_confirmed; /* sequences with ack_epoch set */
    size_t doubt;          /* acks sent whose reply never came */
    size_t redelivered;    /* deliveries with attempt > 1 */
    atomic_int failed;     /* err is set */
    char err[512];         /* the first violation */
};

struct consumer {
    int index;
    struct where *w;
    struct group_log *g;
    atomic_int *stop;
    pthread_t th;
    int started;
    int epoch; /* of the current connection */
    uint64_t *pending;
    size_t npending, cap;
    size_t connects;
    atomic_size_t delivered;
    char err[512];
};

struct fx {
    struct it_fx it;
    struct where w;
    atomic_int stop_new, stop_consumers, abort_all;
    struct producer prod[PRODUCERS];
    struct consumer cons[CONSUMERS];
    struct group_log groups[NGROUPS];
};

static int setup(void **state)
{
    if (it_fx_start(state, sizeof(struct fx), NULL) != 0)
        return -1;
    struct fx *fx = *state;
    pthread_mutex_init(&fx->w.mu, NULL);
    snprintf(fx->w.addr, sizeof fx->w.addr, "%s", fx->it.b.addr);
    fx->w.up = 1;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    if (fx) {
        /* A failed test leaves actors running: end them before freeing. */
        atomic_store(&fx->abort_all, 1);
        atomic_store(&fx->stop_consumers, 1);
        for (int p = 0; p < PRODUCERS; p++)
            if (fx->prod[p].started)
                pthread_join(fx->prod[p].th, NULL);
        for (int i = 0; i < CONSUMERS; i++)
            if (fx->cons[i].started)
                pthread_join(fx->cons[i].th, NULL);
        for (int p = 0; p < PRODUCERS; p++) {
            free(fx->prod[p].state);
            free(fx->prod[p].sends);
            free(fx->prod[p].seq);
        }
        for (int i = 0; i < CONSUMERS; i++)
            free(fx->cons[i].pending);
        for (int g = 0; g < NGROUPS; g++) {
            free(fx->groups[g].deliveries);
            free(fx->groups[g].ack_epoch);
            pthread_mutex_destroy(&fx->groups[g].mu);
        }
        pthread_mutex_destroy(&fx->w.mu);
    }
    return it_fx_teardown(state);
}

/* Copies the broker's current address; returns its epoch, or -1 while it
 * is down. */
static int where_get(struct where *w, char addr[64])
{
    pthread_mutex_lock(&w->mu);
    int epoch = w->up ? w->epoch : -1;
    memcpy(addr, w->addr, 64);
    pthread_mutex_unlock(&w->mu);
    return epoch;
}

/* Connects with short timeouts; NULL while the broker is down. */
static ferry_conn *actor_connect(struct where *w, int *epoch, const char *name)
{
    char addr[64];
    *epoch = where_get(w, addr);
    if (*epoch < 0)
        return NULL;
    ferry_options o = FERRY_OPTIONS_INIT;
    o.client_name = name;
    o.connect_timeout_ms = 2000;
    o.request_timeout_ms = 5000;
    o.max_in_flight = WINDOW;
    ferry_conn *c = NULL;
    if (ferry_connect(addr, &o, &c, NULL, 0) != 0)
        return NULL;
    return c;
}

/* The payload of id "pP-N": a pure function of the id, so the store can be
 * checked against it. */
static void payload_for(int p, size_t n, uint8_t out[PAYLOAD_BYTES])
{
    it_payload((size_t)p * 1000000000u + n, out, PAYLOAD_BYTES);
}

/* ----- producers ---------------------------------------------------------- */

/* Callbacks run on the producer's own thread (the one calling libferry). */
static _Thread_local struct producer *tl_prod;

static void prod_fail(struct producer *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void prod_fail(struct producer *p, const char *fmt, ...)
{
    if (p->err[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, sizeof p->err, fmt, ap);
    va_end(ap);
    atomic_store(&p->failed, 1);
}

static void on_ack(void *ud, int status, const ferry_ack *ack)
{
    struct producer *p = tl_prod;
    size_t n = (size_t)(uintptr_t)ud;
    if (p->state[n] != ID_INFLIGHT) {
        prod_fail(p, "p%d-%zu: an outcome for an id not in flight (state %d)", p->index, n,
                  p->state[n]);
        return;
    }
    p->inflight--;
    if (status != 0) {
        /* The connection died before the ack: send it again. A broker
         * error other than the connection's is a failure. */
        if (status != FERRY_ECLOSED && status != FERRY_EIO && status != FERRY_ETIMEOUT &&
            status != FERRY_ESHUTTING_DOWN)
            prod_fail(p, "p%d-%zu: publish failed: %s", p->index, n, ferry_strerror(status));
        p->state[n] = ID_RETRY;
        return;
    }
    char want[32];
    snprintf(want, sizeof want, "p%d-%zu", p->index, n);
    if (strcmp(ack->id, want) != 0)
        prod_fail(p, "ack for %s names id %s", want, ack->id);
    if (ack->seq == 0)
        prod_fail(p, "ack for %s with seq 0", want);
    if (ack->duplicate) {
        p->dup_acks++;
        if (p->sends[n] < 2)
            prod_fail(p, "%s acked as a duplicate (seq %" PRIu64 ") though sent only once", want,
                      ack->seq);
    }
    p->state[n] = ID_ACKED;
    p->seq[n] = ack->seq;
    atomic_fetch_add(&p->acked, 1);
}

static int prod_grow(struct producer *p)
{
    if (p->n_ids < p->cap)
        return 0;
    size_t ncap = p->cap ? p->cap * 2 : 65536;
    uint8_t *st = realloc(p->state, ncap);
    if (!st)
        return -1;
    p->state = st;
    uint16_t *se = realloc(p->sends, ncap * sizeof *se);
    if (!se)
        return -1;
    p->sends = se;
    uint64_t *sq = realloc(p->seq, ncap * sizeof *sq);
    if (!sq)
        return -1;
    p->seq = sq;
    memset(p->state + p->cap, 0, ncap - p->cap);
    memset(p->sends + p->cap, 0, (ncap - p->cap) * sizeof *se);
    memset(p->seq + p->cap, 0, (ncap - p->cap) * sizeof *sq);
    p->cap = ncap;
    return 0;
}

/* Sends id n. Returns 0, or the libferry error (nothing was queued). */
static int prod_send(struct producer *p, ferry_conn *c, size_t n)
{
    char id[32];
    uint8_t payload[PAYLOAD_BYTES];
    snprintf(id, sizeof id, "p%d-%zu", p->index, n);
    payload_for(p->index, n, payload);
    ferry_msg m;
    memset(&m, 0, sizeof m);
    m.topic = TOPIC;
    m.id = id;
    m.payload = payload;
    m.payload_len = sizeof payload;
    p->state[n] = ID_INFLIGHT;
    p->inflight++;
    if (p->sends[n]++ > 0)
        p->resent++;
    int rc = ferry_publish_async(c, &m, on_ack, (void *)(uintptr_t)n);
    if (rc != 0) {
        /* Not queued: its callback will not run. (A callback of an earlier
         * publish may have run meanwhile; ours is still in flight here.) */
        p->inflight--;
        p->sends[n]--;
        p->state[n] = ID_RETRY;
    }
    return rc;
}

static void *producer_main(void *arg)
{
    struct producer *p = arg;
    tl_prod = p;
    char name[32];
    snprintf(name, sizeof name, "cycles-producer-%d", p->index);
    int64_t t0 = harness_now_ms();
    int64_t give_up = 0;
    size_t new_sent = 0;
    ferry_conn *c = NULL;
    size_t scan = 0; /* ids below this have no retry pending on c */
    while (!p->err[0] && !atomic_load(p->abort_all)) {
        if (!c) {
            int epoch;
            c = actor_connect(p->w, &epoch, name);
            if (!c) {
                it_sleep_ms(5);
                continue;
            }
            p->connects++;
            scan = 0;
        }
        int rc = 0;
        /* First the ids that lost their connection, oldest first. */
        for (; rc == 0 && scan < p->n_ids; scan++)
            if (p->state[scan] == ID_RETRY && (rc = prod_send(p, c, scan)) != 0)
                break;
        /* Then new ones, at RATE a second (with at most BURST of catch-up). */
        if (rc == 0 && !atomic_load(p->stop_new)) {
            int64_t due = (harness_now_ms() - t0) * RATE / 1000;
            if (due - (int64_t)new_sent > BURST)
                new_sent = (size_t)(due - BURST);
            while (rc == 0 && (int64_t)new_sent < due) {
                if (prod_grow(p) < 0) {
                    prod_fail(p, "out of memory");
                    break;
                }
                size_t n = p->n_ids++;
                new_sent++;
                rc = prod_send(p, c, n);
            }
        }
        if (rc == 0)
            rc = ferry_poll(c);
        if (rc == 0 && atomic_load(p->stop_new)) {
            if (!give_up)
                give_up = harness_now_ms() + DRAIN_MS;
            if (atomic_load(&p->acked) == p->n_ids) {
                atomic_store(&p->finished, 1);
                break;
            }
            if (harness_now_ms() > give_up) {
                prod_fail(p, "p%d: %zu of %zu ids still unacked %d ms after the last restart",
                          p->index, p->n_ids - atomic_load(&p->acked), p->n_ids, DRAIN_MS);
                break;
            }
            rc = ferry_flush(c, 200);
            if (rc == FERRY_ETIMEOUT)
                rc = 0;
        }
        if (rc != 0) {
            /* The broker went away: every id still in flight gets its
             * callback (FERRY_ECLOSED) in ferry_close and is resent. */
            ferry_close(c);
            c = NULL;
            if (p->inflight != 0)
                prod_fail(p, "p%d: %zu ids in flight after ferry_close", p->index, p->inflight);
            continue;
        }
        it_sleep_ms(1);
    }
    ferry_close(c);
    return NULL;
}

/* ----- consumers ---------------------------------------------------------- */

static void group_fail(struct group_log *g, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void group_fail(struct group_log *g, const char *fmt, ...)
{
    if (g->err[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->err, sizeof g->err, fmt, ap);
    va_end(ap);
    atomic_store(&g->failed, 1);
}

/* Under g->mu. */
static int group_grow(struct group_log *g, uint64_t seq)
{
    if (seq < g->cap)
        return 0;
    size_t ncap = g->cap ? g->cap : 65536;
    while (ncap <= seq)
        ncap *= 2;
    uint32_t *d = realloc(g->deliveries, ncap * sizeof *d);
    if (!d)
        return -1;
    g->deliveries = d;
    int32_t *a = realloc(g->ack_epoch, ncap * sizeof *a);
    if (!a)
        return -1;
    g->ack_epoch = a;
    memset(g->deliveries + g->cap, 0, (ncap - g->cap) * sizeof *d);
    for (size_t i = g->cap; i < ncap; i++)
        g->ack_epoch[i] = -1;
    g->cap = ncap;
    return 0;
}

/* Runs when libferry reads a DELIVER from the socket. */
static void on_delivery(void *ud, ferry_delivery *d)
{
    struct consumer *cs = ud;
    struct group_log *g = cs->g;
    int p;
    size_t n;
    char tail;
    uint8_t want[PAYLOAD_BYTES];
    if (sscanf(d->id, "p%d-%zu%c", &p, &n, &tail) != 2 || p < 0 || p >= PRODUCERS) {
        group_fail(g, "%s: seq %" PRIu64 " has id %s, not one of ours", g->name, d->seq, d->id);
    } else {
        payload_for(p, n, want);
        if (d->payload_len != PAYLOAD_BYTES || memcmp(d->payload, want, PAYLOAD_BYTES) != 0)
            group_fail(g, "%s: seq %" PRIu64 " (%s) delivered with the wrong payload", g->name,
                       d->seq, d->id);
    }
    if (strcmp(d->topic, TOPIC) != 0 || strcmp(d->group, g->name) != 0)
        group_fail(g, "a delivery for %s/%s reached %s", d->topic, d->group, g->name);
    pthread_mutex_lock(&g->mu);
    if (d->seq == 0 || group_grow(g, d->seq) < 0) {
        group_fail(g, "%s: seq %" PRIu64 " cannot be recorded", g->name, d->seq);
    } else {
        g->deliveries[d->seq]++;
        if (d->attempt > 1)
            g->redelivered++;
        int32_t ae = g->ack_epoch[d->seq];
        if (ae >= 0 && ae <= cs->epoch)
            group_fail(g,
                       "%s: seq %" PRIu64 " delivered again (attempt %u, broker run %d, consumer "
                       "%d) after an ack of it had succeeded in broker run %d",
                       g->name, d->seq, d->attempt, cs->epoch, cs->index, (int)ae);
    }
    pthread_mutex_unlock(&g->mu);
    if (cs->npending == cs->cap) {
        size_t ncap = cs->cap ? cs->cap * 2 : 1024;
        uint64_t *np = realloc(cs->pending, ncap * sizeof *np);
        if (!np) {
            group_fail(g, "out of memory");
            ferry_delivery_free(d);
            return;
        }
        cs->pending = np;
        cs->cap = ncap;
    }
    cs->pending[cs->npending++] = d->seq;
    atomic_fetch_add(&cs->delivered, 1);
    ferry_delivery_free(d);
}

static int conn_lost(int rc)
{
    return rc == FERRY_ECLOSED || rc == FERRY_EIO || rc == FERRY_ETIMEOUT ||
           rc == FERRY_ESHUTTING_DOWN || rc == FERRY_ECONNECT;
}

/* Acks what is pending, ACK_MAX at a time. Returns 0, or the error that
 * ended the connection. */
static int consumer_ack(struct consumer *cs, ferry_sub *s)
{
    struct group_log *g = cs->g;
    uint64_t seqs[ACK_MAX];
    while (cs->npending > 0) {
        size_t k = cs->npending < ACK_MAX ? cs->npending : ACK_MAX;
        memcpy(seqs, cs->pending, k * sizeof *seqs);
        /* Callbacks during the ack append to pending: take these out first. */
        memmove(cs->pending, cs->pending + k, (cs->npending - k) * sizeof *seqs);
        cs->npending -= k;
        int rc = ferry_sub_ack(s, seqs, k);
        if (rc != 0) {
            if (!conn_lost(rc))
                group_fail(g, "%s: ack of %zu delivered sequences failed: %s", g->name, k,
                           ferry_strerror(rc));
            /* In doubt: the broker may or may not have these. */
            pthread_mutex_lock(&g->mu);
            g->doubt += k;
            pthread_mutex_unlock(&g->mu);
            return rc;
        }
        pthread_mutex_lock(&g->mu);
        for (size_t i = 0; i < k; i++) {
            if (g->ack_epoch[seqs[i]] < 0) {
                g->ack_epoch[seqs[i]] = cs->epoch;
                g->acks_confirmed++;
            }
        }
        pthread_mutex_unlock(&g->mu);
    }
    return 0;
}

static void *consumer_main(void *arg)
{
    struct consumer *cs = arg;
    char name[32];
    snprintf(name, sizeof name, "cycles-consumer-%d", cs->index);
    ferry_conn *c = NULL;
    ferry_sub *s = NULL;
    while (!atomic_load(cs->stop) && !atomic_load(&cs->g->failed)) {
        if (!c) {
            c = actor_connect(cs->w, &cs->epoch, name);
            if (!c) {
                it_sleep_ms(5);
                continue;
            }
            cs->connects++;
            ferry_sub_options o = FERRY_SUB_OPTIONS_INIT;
            o.start = FERRY_START_SEQ;
            o.start_value = 1;
            o.max_in_flight = SUB_WINDOW;
            o.ack_wait_ms = 600000; /* no lease expires within the test */
            o.max_deliveries = 60000;
            int rc = ferry_subscribe(c, TOPIC, cs->g->name, &o, &s);
            if (rc == 0)
                rc = ferry_sub_set_callback(s, on_delivery, cs);
            if (rc != 0) {
                if (!conn_lost(rc))
                    group_fail(cs->g, "subscribe: %s (%s)", ferry_strerror(rc), ferry_errmsg(c));
                ferry_close(c);
                c = NULL;
                cs->npending = 0;
                continue;
            }
        }
        int rc = ferry_receive(c, 100, NULL);
        if (rc == FERRY_ETIMEOUT)
            rc = 0;
        if (rc == 0)
            rc = consumer_ack(cs, s);
        if (rc != 0) {
            if (!conn_lost(rc))
                group_fail(cs->g, "consumer %d: %s (%s)", cs->index, ferry_strerror(rc),
                           ferry_errmsg(c));
            /* Unacked deliveries come again from the next broker run. */
            ferry_close(c);
            c = NULL;
            cs->npending = 0;
        }
    }
    ferry_close(c);
    return NULL;
}

/* ----- the test ------------------------------------------------------------ */

static int cycles_wanted(void)
{
    const char *e = getenv("FERRY_CYCLES");
    if (e && atoi(e) > 0)
        return atoi(e);
    e = getenv("FERRY_LONG");
    if (e && *e && strcmp(e, "0") != 0)
        return LONG_CYCLES;
    return CY_SANITIZED ? SANITIZED_CYCLES : DEFAULT_CYCLES;
}

static size_t total_acked(struct fx *fx)
{
    size_t n = 0;
    for (int p = 0; p < PRODUCERS; p++)
        n += atomic_load(&fx->prod[p].acked);
    return n;
}

static void check_actors(struct fx *fx)
{
    for (int p = 0; p < PRODUCERS; p++)
        if (atomic_load(&fx->prod[p].failed))
            fail_msg("producer %d: %s", p, fx->prod[p].err);
    for (int g = 0; g < NGROUPS; g++)
        if (atomic_load(&fx->groups[g].failed))
            fail_msg("group %s: %s", fx->groups[g].name, fx->groups[g].err);
}

/* Waits until every producer has an ack and every consumer a delivery, so
 * that the first kill lands in full flow. */
static void wait_flowing(struct fx *fx)
{
    int64_t deadline = harness_now_ms() + 30000;
    for (;;) {
        int ok = 1;
        for (int p = 0; p < PRODUCERS; p++)
            ok &= atomic_load(&fx->prod[p].acked) > 0;
        for (int i = 0; i < CONSUMERS; i++)
            ok &= atomic_load(&fx->cons[i].delivered) > 0;
        if (ok)
            return;
        check_actors(fx);
        if (harness_now_ms() > deadline) {
            harness_dump_log(&fx->it.b);
            fail_msg("no traffic within 30 s of the start");
        }
        it_sleep_ms(10);
    }
}

static void kill_and_restart(struct fx *fx)
{
    pthread_mutex_lock(&fx->w.mu);
    fx->w.up = 0;
    pthread_mutex_unlock(&fx->w.mu);
    assert_int_equal(harness_kill9(&fx->it.b), 0);
    int r = harness_restart(&fx->it.b);
    if (r != 0)
        fail_msg("restart after kill -9 failed: %d", r);
    pthread_mutex_lock(&fx->w.mu);
    snprintf(fx->w.addr, sizeof fx->w.addr, "%s", fx->it.b.addr);
    fx->w.epoch++;
    fx->w.up = 1;
    pthread_mutex_unlock(&fx->w.mu);
}

/* Waits until both groups have everything acked (the broker's listing:
 * cursor head + 1, lag 0). Returns the head. */
static uint64_t wait_drained(struct fx *fx)
{
    ferry_conn *c = it_connect(fx->it.b.addr);
    int64_t start = harness_now_ms(), progress = start;
    uint64_t last_lag = UINT64_MAX;
    for (;;) {
        check_actors(fx);
        ferry_topic_info ti;
        assert_int_equal(it_topic(c, TOPIC, &ti), 1);
        ferry_group_info *list = NULL;
        size_t n = 0;
        int rc = ferry_groups(c, TOPIC, &list, &n);
        if (rc != 0)
            fail_msg("groups: %s (%s)", ferry_strerror(rc), ferry_errmsg(c));
        uint64_t lag = 0;
        int done = n == NGROUPS;
        for (size_t i = 0; i < n; i++) {
            lag += list[i].lag;
            done &= list[i].lag == 0 && list[i].cursor == ti.head_seq + 1;
        }
        ferry_groups_free(list);
        if (done) {
            ferry_close(c);
            return ti.head_seq;
        }
        if (lag != last_lag) {
            last_lag = lag;
            progress = harness_now_ms();
        }
        if (harness_now_ms() - progress > STALL_MS || harness_now_ms() - start > DRAIN_MS) {
            harness_dump_log(&fx->it.b);
            fail_msg("the groups did not drain: lag %" PRIu64 " (head %" PRIu64
                     "), unchanged for %lld ms",
                     lag, ti.head_seq, (long long)(harness_now_ms() - progress));
        }
        it_sleep_ms(100);
    }
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* With the broker stopped: every acked id exactly once at its sequence,
 * sequences dense, nothing else stored. Returns the row count. */
static long check_store(struct fx *fx, uint64_t head)
{
    struct harness_row *rows = NULL;
    long n = harness_db_rows(&fx->it.b, TOPIC, &rows);
    assert_true(n >= 0);
    if ((uint64_t)n != head)
        fail_msg("messages_v holds %ld rows of %s, the head is %" PRIu64, n, TOPIC, head);
    size_t ids = 0;
    for (int p = 0; p < PRODUCERS; p++)
        ids += fx->prod[p].n_ids;
    if ((size_t)n != ids)
        fail_msg("%ld messages stored for %zu ids published (each acked): not exactly once", n,
                 ids);
    char **sorted = malloc((size_t)(n ? n : 1) * sizeof *sorted);
    assert_non_null(sorted);
    uint8_t want[PAYLOAD_BYTES];
    for (long i = 0; i < n; i++) {
        if (rows[i].seq != (uint64_t)i + 1)
            fail_msg("row %ld has seq %" PRIu64 ": sequences are not dense from 1", i, rows[i].seq);
        int p;
        size_t k;
        char tail;
        if (sscanf(rows[i].msg_id, "p%d-%zu%c", &p, &k, &tail) != 2 || p < 0 || p >= PRODUCERS ||
            k >= fx->prod[p].n_ids)
            fail_msg("seq %" PRIu64 " holds id %s, which no producer sent", rows[i].seq,
                     rows[i].msg_id);
        payload_for(p, k, want);
        if (rows[i].payload_len != PAYLOAD_BYTES ||
            memcmp(rows[i].payload, want, PAYLOAD_BYTES) != 0)
            fail_msg("seq %" PRIu64 " (%s) holds the wrong payload", rows[i].seq, rows[i].msg_id);
        sorted[i] = rows[i].msg_id;
    }
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_str);
    for (long i = 1; i < n; i++)
        if (strcmp(sorted[i - 1], sorted[i]) == 0)
            fail_msg("id %s is stored twice", sorted[i]);
    free(sorted);
    for (int p = 0; p < PRODUCERS; p++) {
        struct producer *pr = &fx->prod[p];
        for (size_t k = 0; k < pr->n_ids; k++) {
            char id[32];
            snprintf(id, sizeof id, "p%d-%zu", p, k);
            if (pr->state[k] != ID_ACKED)
                fail_msg("%s was never acked", id);
            uint64_t s = pr->seq[k];
            if (s < 1 || s > (uint64_t)n || strcmp(rows[s - 1].msg_id, id) != 0)
                fail_msg("%s was acked at seq %" PRIu64 " but the store has %s there", id, s,
                         s >= 1 && s <= (uint64_t)n ? rows[s - 1].msg_id : "nothing");
        }
    }
    harness_db_rows_free(rows, n);
    return n;
}

static void check_integrity(struct fx *fx)
{
    sqlite3 *db;
    assert_int_equal(harness_db_open(&fx->it.b, &db), 0);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
    int rows = 0, ok = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *t = (const char *)sqlite3_column_text(st, 0);
        if (rows++ == 0 && t && strcmp(t, "ok") == 0)
            ok = 1;
        else
            print_error("integrity_check: %s\n", t ? t : "(null)");
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    assert_true(ok && rows == 1);
}

static void test_cycles_kill9_producers_consumers(void **state)
{
    struct fx *fx = *state;
    int cycles = cycles_wanted();
    uint64_t rng = harness_seed();
    print_message("%d kill -9 cycles (seed %" PRIu64 ")%s\n", cycles, rng,
                  CY_SANITIZED ? " under ASan" : "");
    srand((unsigned)rng);
    atomic_init(&fx->stop_new, 0);
    atomic_init(&fx->stop_consumers, 0);
    atomic_init(&fx->abort_all, 0);
    static const char *const names[NGROUPS] = {GROUP_A, GROUP_B};
    for (int g = 0; g < NGROUPS; g++) {
        fx->groups[g].name = names[g];
        atomic_init(&fx->groups[g].failed, 0);
        pthread_mutex_init(&fx->groups[g].mu, NULL);
        pthread_mutex_lock(&fx->groups[g].mu);
        assert_int_equal(group_grow(&fx->groups[g], 1), 0);
        pthread_mutex_unlock(&fx->groups[g].mu);
    }
    for (int p = 0; p < PRODUCERS; p++) {
        struct producer *pr = &fx->prod[p];
        pr->index = p;
        pr->w = &fx->w;
        pr->stop_new = &fx->stop_new;
        pr->abort_all = &fx->abort_all;
        atomic_init(&pr->acked, 0);
        atomic_init(&pr->finished, 0);
        atomic_init(&pr->failed, 0);
        assert_int_equal(pthread_create(&pr->th, NULL, producer_main, pr), 0);
        pr->started = 1;
    }
    for (int i = 0; i < CONSUMERS; i++) {
        struct consumer *cs = &fx->cons[i];
        cs->index = i;
        cs->w = &fx->w;
        cs->g = &fx->groups[i < 2 ? 0 : 1];
        cs->stop = &fx->stop_consumers;
        atomic_init(&cs->delivered, 0);
        assert_int_equal(pthread_create(&cs->th, NULL, consumer_main, cs), 0);
        cs->started = 1;
    }

    wait_flowing(fx);
    int64_t t0 = harness_now_ms();
    for (int cycle = 0; cycle < cycles; cycle++) {
        int delay = KILL_MIN_MS + rand() % (KILL_MAX_MS - KILL_MIN_MS + 1);
        it_sleep_ms(delay);
        check_actors(fx);
        size_t before = total_acked(fx);
        kill_and_restart(fx);
        if (cycle % 5 == 4 || cycle == cycles - 1)
            print_message("cycle %d: killed after %d ms; %zu publishes acked so far\n", cycle + 1,
                          delay, before);
    }
    int64_t t_cycles = harness_now_ms() - t0;

    /* The end: no new ids; everything unacked is resent, groups drain. */
    atomic_store(&fx->stop_new, 1);
    for (int p = 0; p < PRODUCERS; p++) {
        pthread_join(fx->prod[p].th, NULL);
        fx->prod[p].started = 0;
    }
    check_actors(fx);
    uint64_t head = wait_drained(fx);
    atomic_store(&fx->stop_consumers, 1);
    for (int i = 0; i < CONSUMERS; i++) {
        pthread_join(fx->cons[i].th, NULL);
        fx->cons[i].started = 0;
    }
    check_actors(fx);

    int st = harness_stop(&fx->it.b);
    if (st != 0)
        harness_dump_log(&fx->it.b);
    assert_int_equal(st, 0);
    long n = check_store(fx, head);
    for (int g = 0; g < NGROUPS; g++) {
        struct group_log *gl = &fx->groups[g];
        size_t again = 0;
        for (uint64_t s = 1; s <= (uint64_t)n; s++) {
            uint32_t d = s < gl->cap ? gl->deliveries[s] : 0;
            if (d == 0)
                fail_msg("%s: seq %" PRIu64 " of %ld was never delivered", gl->name, s, n);
            again += d > 1;
        }
        print_message("%s: %zu acks confirmed, %zu in doubt at a crash, %zu sequences delivered "
                      "more than once, %zu redeliveries within a run\n",
                      gl->name, gl->acks_confirmed, gl->doubt, again, gl->redelivered);
    }
    check_integrity(fx);
    size_t resent = 0, dups = 0, connects = 0;
    for (int p = 0; p < PRODUCERS; p++) {
        resent += fx->prod[p].resent;
        dups += fx->prod[p].dup_acks;
        connects += fx->prod[p].connects;
    }
    for (int i = 0; i < CONSUMERS; i++)
        connects += fx->cons[i].connects;
    print_message("%d kill -9 cycles in %lld ms: %ld messages stored exactly once, %zu resends "
                  "(%zu acked as duplicates), %zu connections\n",
                  cycles, (long long)t_cycles, n, resent, dups, connects);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_cycles_kill9_producers_consumers, setup, teardown),
    };
    /* IT_FILTER=pattern runs only the matching tests (cmocka's wildcards). */
    if (getenv("IT_FILTER"))
        cmocka_set_test_filter(getenv("IT_FILTER"));
    return cmocka_run_group_tests_name("cycles", tests, NULL, NULL);
}
