/*
 * bench_consume.c - the untimed fill and the consumer threads behind `bench
 * consume` and `bench backlog`.
 *
 * The fill publishes a range of the pre-generated workload on one
 * connection, pipelined, and checks that it got contiguous sequence
 * numbers, so that the consumers know exactly which sequences to expect.
 *
 * The consumers: one connection and one thread each, all in one group. The
 * connections are opened first; the threads are then released together,
 * subscribe (the group starts at the range's first sequence) and loop on
 * ferry_receive -> ferry_delivery_ack_async -> ferry_delivery_free, which
 * is what an application that acks after handling each message does with
 * this API. Each delivery marks its sequence in a shared array of counters,
 * so the run ends as soon as the group as a whole has received the whole
 * range, and duplicates and gaps are counted exactly.
 *
 * Timing: from the earliest first delivery of any consumer to the moment
 * the last consumer's ferry_flush returned, i.e. the broker had answered
 * (after its commit) every ack. A consumer that runs dry for a moment
 * flushes at once and records that time, so one that is idle when the
 * range completes does not add its wait to the run.
 */
#include "bench_internal.h"

#include <ferry.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How long ferry_flush may wait for the last acks. */
#define CONS_FLUSH_TIMEOUT_MS 60000
/* ferry_receive's wait while this consumer has acks not yet flushed, and
 * while it has none (it then only watches for the end of the run). */
#define CONS_WAIT_DIRTY_MS 1
#define CONS_WAIT_IDLE_MS 20

void bench_gate_set(struct bench_gate *g, int state)
{
    pthread_mutex_lock(&g->mu);
    g->state = state;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

int bench_gate_wait(struct bench_gate *g)
{
    pthread_mutex_lock(&g->mu);
    while (g->state == 0) {
        pthread_cond_wait(&g->cv, &g->mu);
    }
    int state = g->state;
    pthread_mutex_unlock(&g->mu);
    return state;
}

/* ---- the fill ---------------------------------------------------------- */

struct fill_state {
    struct bench_fill_result *res;
    ferry_conn *conn;
};

static void fill_on_ack(void *userdata, int status, const ferry_ack *ack)
{
    struct fill_state *f = userdata;
    struct bench_fill_result *r = f->res;
    if (status < 0) {
        if (r->failed++ == 0) {
            snprintf(r->error, sizeof r->error, "publish: %s: %s", ferry_strerror(status),
                     ferry_errmsg(f->conn));
        }
        return;
    }
    if (ack->duplicate) {
        r->duplicates++;
        return;
    }
    if (r->acked == 0 || ack->seq < r->first_seq) {
        r->first_seq = ack->seq;
    }
    if (r->acked == 0 || ack->seq > r->last_seq) {
        r->last_seq = ack->seq;
    }
    r->acked++;
}

int bench_fill(const char *server, const char *topic, const struct bench_workload *w, size_t begin,
               size_t end, size_t window, struct bench_fill_result *res)
{
    memset(res, 0, sizeof *res);
    ferry_options opts = FERRY_OPTIONS_INIT;
    opts.client_name = "ferry-bench-fill";
    opts.max_in_flight = (uint32_t)(window > 0 ? window : 1);
    char err[256] = "";
    struct fill_state f = {.res = res};
    int rc = ferry_connect(server, &opts, &f.conn, err, sizeof err);
    if (rc < 0) {
        snprintf(res->error, sizeof res->error, "connect %s: %s%s%s", server, ferry_strerror(rc),
                 err[0] != '\0' ? ": " : "", err);
        return -1;
    }
    int64_t t0 = bench_now_ns();
    for (size_t i = begin; i < end && rc == 0; i++) {
        ferry_msg m;
        memset(&m, 0, sizeof m);
        m.topic = topic;
        m.id = bench_workload_id(w, i);
        m.payload = bench_workload_payload(w, i);
        m.payload_len = w->size;
        rc = ferry_publish_async(f.conn, &m, fill_on_ack, &f);
        if (rc < 0) {
            snprintf(res->error, sizeof res->error, "publish to '%s': %s: %s", topic,
                     ferry_strerror(rc), ferry_errmsg(f.conn));
        }
    }
    int frc = ferry_flush(f.conn, CONS_FLUSH_TIMEOUT_MS);
    res->wall_s = (double)(bench_now_ns() - t0) / 1e9;
    if (rc == 0 && frc < 0) {
        rc = frc;
        snprintf(res->error, sizeof res->error, "flush: %s: %s", ferry_strerror(frc),
                 ferry_errmsg(f.conn));
    }
    ferry_close(f.conn);
    if (rc < 0 || res->failed > 0) {
        return -1;
    }
    size_t n = end - begin;
    if (res->acked != n || res->duplicates > 0 || res->last_seq - res->first_seq + 1 != n) {
        snprintf(res->error, sizeof res->error,
                 "fill of '%s': %zu of %zu stored as new messages (%zu duplicates), sequences "
                 "%llu..%llu are not contiguous; is another producer publishing to it?",
                 topic, res->acked, n, res->duplicates, (unsigned long long)res->first_seq,
                 (unsigned long long)res->last_seq);
        return -1;
    }
    return 0;
}

/* ---- topics and groups ------------------------------------------------- */

static ferry_conn *admin_connect(const char *server, char *err, size_t err_len)
{
    ferry_options opts = FERRY_OPTIONS_INIT;
    opts.client_name = "ferry-bench";
    ferry_conn *c = NULL;
    char detail[256] = "";
    int rc = ferry_connect(server, &opts, &c, detail, sizeof detail);
    if (rc < 0) {
        snprintf(err, err_len, "connect %s: %s%s%s", server, ferry_strerror(rc),
                 detail[0] != '\0' ? ": " : "", detail);
        return NULL;
    }
    return c;
}

int bench_topic_head(const char *server, const char *topic, uint64_t *head, uint64_t *first,
                     uint64_t *count, char *err, size_t err_len)
{
    ferry_conn *c = admin_connect(server, err, err_len);
    if (c == NULL) {
        return -1;
    }
    ferry_topic_info *t = NULL;
    size_t n = 0;
    int rc = ferry_topics(c, &t, &n);
    if (rc < 0) {
        snprintf(err, err_len, "topics: %s: %s", ferry_strerror(rc), ferry_errmsg(c));
        ferry_close(c);
        return -1;
    }
    int found = -1;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(t[i].name, topic) == 0) {
            *head = t[i].head_seq;
            *first = t[i].first_seq;
            *count = t[i].message_count;
            found = 0;
            break;
        }
    }
    if (found < 0) {
        snprintf(err, err_len, "the broker has no topic '%s'", topic);
    }
    ferry_topics_free(t);
    ferry_close(c);
    return found;
}

int bench_group_create(const char *server, const char *topic, const char *group, char *err,
                       size_t err_len)
{
    ferry_conn *c = admin_connect(server, err, err_len);
    if (c == NULL) {
        return -1;
    }
    ferry_sub_options so = FERRY_SUB_OPTIONS_INIT;
    so.start = FERRY_START_EARLIEST;
    so.max_in_flight = 1;
    ferry_sub *s = NULL;
    int rc = ferry_subscribe(c, topic, group, &so, &s);
    if (rc == 0) {
        rc = ferry_unsubscribe(s);
    }
    if (rc < 0) {
        snprintf(err, err_len, "creating group '%s' on '%s': %s: %s", group, topic,
                 ferry_strerror(rc), ferry_errmsg(c));
    }
    ferry_close(c);
    return rc < 0 ? -1 : 0;
}

/* ---- the consumers ----------------------------------------------------- */

struct cons_shared {
    const struct bench_consume_config *cfg;
    atomic_uint *seen; /* deliveries per sequence of the range */
    atomic_size_t distinct;
    atomic_int done;               /* 1: the range is complete; 2: give up */
    _Atomic int64_t last_progress; /* ns of the latest delivery (or start) */
    struct bench_gate gate;
};

struct consumer {
    struct cons_shared *sh;
    ferry_conn *conn;
    size_t deliveries, duplicates, redelivered, outside;
    int64_t t_first; /* first delivery, 0 if none */
    int64_t t_last;  /* the latest flush that completed acks, 0 if none */
    int rc;
    char errmsg[256];
};

static void cons_fail(struct consumer *k, int rc, const char *what)
{
    if (k->rc == 0) {
        k->rc = rc;
        snprintf(k->errmsg, sizeof k->errmsg, "%s: %s%s%s", what, ferry_strerror(rc),
                 ferry_errmsg(k->conn)[0] != '\0' ? ": " : "", ferry_errmsg(k->conn));
    }
    atomic_store(&k->sh->done, 2);
}

static void cons_account(struct consumer *k, const ferry_delivery *d)
{
    struct cons_shared *sh = k->sh;
    const struct bench_consume_config *cfg = sh->cfg;
    k->deliveries++;
    k->redelivered += d->redelivered != 0;
    if (d->seq < cfg->first_seq || d->seq - cfg->first_seq >= cfg->count) {
        k->outside++;
        return;
    }
    if (atomic_fetch_add_explicit(&sh->seen[d->seq - cfg->first_seq], 1, memory_order_relaxed) >
        0) {
        k->duplicates++;
        return;
    }
    if (atomic_fetch_add(&sh->distinct, 1) + 1 == cfg->count) {
        atomic_store(&sh->done, 1);
    }
}

static void *cons_thread(void *arg)
{
    struct consumer *k = arg;
    struct cons_shared *sh = k->sh;
    const struct bench_consume_config *cfg = sh->cfg;
    if (bench_gate_wait(&sh->gate) < 0) {
        return NULL;
    }
    ferry_sub_options so = FERRY_SUB_OPTIONS_INIT;
    so.start = FERRY_START_SEQ;
    so.start_value = cfg->first_seq;
    so.max_in_flight = (uint32_t)cfg->window;
    ferry_sub *sub = NULL;
    int rc = ferry_subscribe(k->conn, cfg->topic, cfg->group, &so, &sub);
    if (rc < 0) {
        cons_fail(k, rc, "subscribe");
        return NULL;
    }
    int dirty = 0; /* acks queued since the last flush */
    while (atomic_load_explicit(&sh->done, memory_order_relaxed) == 0) {
        ferry_delivery *d = NULL;
        rc = ferry_receive(k->conn, dirty ? CONS_WAIT_DIRTY_MS : CONS_WAIT_IDLE_MS, &d);
        if (rc == FERRY_ETIMEOUT) {
            if (dirty) {
                /* Ran dry: complete the acks now, and note when. */
                rc = ferry_flush(k->conn, CONS_FLUSH_TIMEOUT_MS);
                if (rc < 0) {
                    cons_fail(k, rc, "flush");
                    break;
                }
                k->t_last = bench_now_ns();
                dirty = 0;
            }
            int64_t idle = bench_now_ns() - atomic_load(&sh->last_progress);
            if (idle > (int64_t)cfg->stall_ms * 1000000) {
                atomic_store(&sh->done, 2);
            }
            continue;
        }
        if (rc < 0) {
            cons_fail(k, rc, "receive");
            break;
        }
        int64_t now = bench_now_ns();
        if (k->t_first == 0) {
            k->t_first = now;
        }
        atomic_store_explicit(&sh->last_progress, now, memory_order_relaxed);
        cons_account(k, d);
        rc = ferry_delivery_ack_async(d);
        ferry_delivery_free(d);
        if (rc < 0) {
            cons_fail(k, rc, "ack");
            break;
        }
        dirty = 1;
    }
    if (dirty) {
        rc = ferry_flush(k->conn, CONS_FLUSH_TIMEOUT_MS);
        if (rc < 0) {
            cons_fail(k, rc, "flush");
        } else {
            k->t_last = bench_now_ns();
        }
    }
    /* Deliveries beyond the range, if any, go back to the group. */
    rc = ferry_unsubscribe(sub);
    if (rc < 0 && k->rc == 0) {
        cons_fail(k, rc, "unsubscribe");
    }
    return NULL;
}

static void cons_group_state(ferry_conn *c, const struct bench_consume_config *cfg,
                             struct bench_consume_result *res)
{
    ferry_group_info *g = NULL;
    size_t n = 0;
    if (ferry_groups(c, cfg->topic, &g, &n) < 0) {
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(g[i].group, cfg->group) == 0) {
            res->have_group = 1;
            res->group_floor = g[i].ack_floor;
            res->group_lag = g[i].lag;
            res->group_in_flight = g[i].in_flight;
        }
    }
    ferry_groups_free(g);
}

int bench_consume_run(const struct bench_consume_config *cfg, struct bench_consume_result *res)
{
    memset(res, 0, sizeof *res);
    size_t nc = cfg->consumers;
    struct cons_shared sh = {.cfg = cfg, .gate = BENCH_GATE_INIT};
    struct consumer *ks = calloc(nc, sizeof *ks);
    pthread_t *threads = calloc(nc, sizeof *threads);
    sh.seen = calloc(cfg->count > 0 ? cfg->count : 1, sizeof *sh.seen);
    size_t started = 0;
    int rc = -1;
    if (ks == NULL || threads == NULL || sh.seen == NULL) {
        snprintf(res->error, sizeof res->error, "out of memory");
        goto out;
    }
    atomic_init(&sh.distinct, 0);
    atomic_init(&sh.done, 0);

    ferry_options opts = FERRY_OPTIONS_INIT;
    opts.client_name = "ferry-bench-consumer";
    for (size_t i = 0; i < nc; i++) {
        char err[256] = "";
        ks[i].sh = &sh;
        int crc = ferry_connect(cfg->server, &opts, &ks[i].conn, err, sizeof err);
        if (crc < 0) {
            snprintf(res->error, sizeof res->error, "connect %s: %s%s%s", cfg->server,
                     ferry_strerror(crc), err[0] != '\0' ? ": " : "", err);
            goto out;
        }
    }
    atomic_init(&sh.last_progress, bench_now_ns());
    for (; started < nc; started++) {
        if (pthread_create(&threads[started], NULL, cons_thread, &ks[started]) != 0) {
            break;
        }
    }
    bench_gate_set(&sh.gate, started == nc ? 1 : -1);
    for (size_t i = 0; i < started; i++) {
        pthread_join(threads[i], NULL);
    }
    if (started < nc) {
        snprintf(res->error, sizeof res->error, "cannot start consumer thread %zu", started);
        goto out;
    }

    int64_t t_first = INT64_MAX, t_last = 0;
    int failed = 0;
    res->min_share = SIZE_MAX;
    for (size_t i = 0; i < nc; i++) {
        const struct consumer *k = &ks[i];
        res->deliveries += k->deliveries;
        res->duplicates += k->duplicates;
        res->redelivered += k->redelivered;
        res->outside += k->outside;
        if (i < BENCH_SHARES) {
            res->share[i] = k->deliveries;
        }
        res->min_share = k->deliveries < res->min_share ? k->deliveries : res->min_share;
        res->max_share = k->deliveries > res->max_share ? k->deliveries : res->max_share;
        if (k->t_first != 0 && k->t_first < t_first) {
            t_first = k->t_first;
        }
        if (k->t_last > t_last) {
            t_last = k->t_last;
        }
        if (k->rc != 0 && !failed) {
            failed = 1;
            snprintf(res->error, sizeof res->error, "consumer %zu: %s", i, k->errmsg);
        }
    }
    res->distinct = atomic_load(&sh.distinct);
    res->missing = cfg->count - res->distinct;
    if (t_first != INT64_MAX && t_last > t_first) {
        res->wall_s = (double)(t_last - t_first) / 1e9;
        res->msgs_per_s = (double)res->distinct / res->wall_s;
    }
    if (res->missing > 0 && res->error[0] == '\0') {
        snprintf(res->error, sizeof res->error,
                 "%zu of %zu messages never arrived (no delivery for %d ms)", res->missing,
                 cfg->count, cfg->stall_ms);
    }
    cons_group_state(ks[0].conn, cfg, res);
    rc = failed ? -1 : 0;
out:
    if (ks != NULL) {
        for (size_t i = 0; i < nc; i++) {
            ferry_close(ks[i].conn);
        }
    }
    free(sh.seen);
    free(threads);
    free(ks);
    return rc;
}
