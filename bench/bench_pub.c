/*
 * bench_pub.c - producer threads publishing the workload to a running ferryd.
 *
 * One connection and one thread per producer. Every connection is opened
 * (and the warm-up published) before the threads are released together
 * through a gate, so connection set-up and topic creation stay outside
 * the measurement. Each message has a slot with its send and ack times:
 * the send time is read just before ferry_publish_async (or ferry_publish
 * for a window of 1), the ack time inside its callback (or after the
 * synchronous call returns). Wall time runs from the earliest send to the
 * latest ack across all producers.
 *
 * A window W > 1 is libferry's own in-flight bound (max_in_flight = W):
 * ferry_publish_async blocks, running callbacks, while W publishes await
 * their acks, so the send time includes any wait for room in the window -
 * the latency a user of the async API observes.
 */
#include "bench_internal.h"

#include <ferry.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The status of a slot whose publish was never acknowledged. */
#define SLOT_PENDING 1

/* How long ferry_flush may wait for the last acks before the run fails. */
#define PUB_FLUSH_TIMEOUT_MS 120000

struct slot {
    int64_t send_ns;
    int64_t ack_ns;
    int32_t status; /* SLOT_PENDING, 0, or a negative FERRY_E* */
    int32_t duplicate;
};

/* Holds the producer threads until all exist, then releases them together;
 * or tells them to quit if one could not be created. */
struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int state; /* 0: wait, 1: go, -1: quit */
};

static void gate_set(struct gate *g, int state)
{
    pthread_mutex_lock(&g->mu);
    g->state = state;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static int gate_wait(struct gate *g)
{
    pthread_mutex_lock(&g->mu);
    while (g->state == 0) {
        pthread_cond_wait(&g->cv, &g->mu);
    }
    int state = g->state;
    pthread_mutex_unlock(&g->mu);
    return state;
}

struct producer {
    const struct bench_pub_config *cfg;
    const struct bench_workload *w;
    ferry_conn *conn;
    struct slot *slots; /* indexed like the workload */
    size_t begin, end;  /* workload indices this producer publishes */
    struct gate *start;
    int rc;           /* first failure of this producer, 0 if none */
    char errmsg[256]; /* its detail */
};

static void pub_fill_msg(const struct producer *p, size_t i, ferry_msg *m)
{
    memset(m, 0, sizeof *m);
    m->topic = p->cfg->topic;
    m->id = bench_workload_id(p->w, i);
    m->payload = bench_workload_payload(p->w, i);
    m->payload_len = p->w->size;
}

static void pub_fail(struct producer *p, int rc, const char *what)
{
    if (p->rc == 0) {
        p->rc = rc;
        snprintf(p->errmsg, sizeof p->errmsg, "%s: %s%s%s", what, ferry_strerror(rc),
                 ferry_errmsg(p->conn)[0] != '\0' ? ": " : "", ferry_errmsg(p->conn));
    }
}

static void pub_on_ack(void *userdata, int status, const ferry_ack *ack)
{
    struct slot *s = userdata;
    s->ack_ns = bench_now_ns();
    s->status = status;
    s->duplicate = status == 0 && ack != NULL && ack->duplicate;
}

static void *pub_thread(void *arg)
{
    struct producer *p = arg;
    ferry_msg m;
    ferry_ack ack;
    if (gate_wait(p->start) < 0) {
        return NULL;
    }
    for (size_t i = p->begin; i < p->end; i++) {
        struct slot *s = &p->slots[i];
        pub_fill_msg(p, i, &m);
        if (p->cfg->window == 1) {
            s->send_ns = bench_now_ns();
            int rc = ferry_publish(p->conn, &m, &ack);
            s->ack_ns = bench_now_ns();
            s->status = rc;
            s->duplicate = rc == 0 && ack.duplicate;
            if (rc < 0) {
                pub_fail(p, rc, "publish");
                return NULL;
            }
        } else {
            s->send_ns = bench_now_ns();
            int rc = ferry_publish_async(p->conn, &m, pub_on_ack, s);
            if (rc < 0) {
                /* No callback will come for this one. */
                s->status = rc;
                pub_fail(p, rc, "publish_async");
                break;
            }
        }
    }
    if (p->cfg->window > 1) {
        int rc = ferry_flush(p->conn, PUB_FLUSH_TIMEOUT_MS);
        if (rc < 0) {
            pub_fail(p, rc, "flush");
        }
    }
    return NULL;
}

static int pub_rtt(ferry_conn *c, size_t samples, struct bench_pct *out, char *err, size_t len)
{
    int64_t *ns = calloc(samples, sizeof *ns);
    if (ns == NULL) {
        snprintf(err, len, "out of memory");
        return -1;
    }
    /* A few untimed pings first: the first ones pay for cold caches. */
    for (size_t i = 0; i < samples + 20; i++) {
        int64_t t0 = bench_now_ns();
        int rc = ferry_ping(c, NULL);
        int64_t t1 = bench_now_ns();
        if (rc < 0) {
            snprintf(err, len, "ping: %s: %s", ferry_strerror(rc), ferry_errmsg(c));
            free(ns);
            return -1;
        }
        if (i >= 20) {
            ns[i - 20] = t1 - t0;
        }
    }
    bench_percentiles(ns, samples, out);
    free(ns);
    return 0;
}

int bench_pub_run(const struct bench_pub_config *cfg, const struct bench_workload *w,
                  size_t rtt_samples, struct bench_pct *rtt, struct bench_pub_result *res)
{
    memset(res, 0, sizeof *res);
    size_t first = cfg->warmup;
    size_t total = w->count - first;
    size_t np = cfg->producers;
    struct producer *prods = calloc(np, sizeof *prods);
    struct slot *slots = calloc(w->count, sizeof *slots);
    pthread_t *threads = calloc(np, sizeof *threads);
    int64_t *lat = NULL;
    struct gate start = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    size_t started = 0;
    int rc = -1;

    if (prods == NULL || slots == NULL || threads == NULL) {
        snprintf(res->error, sizeof res->error, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < w->count; i++) {
        slots[i].status = SLOT_PENDING;
    }

    ferry_options opts = FERRY_OPTIONS_INIT;
    opts.client_name = "ferry-bench";
    opts.max_in_flight = cfg->window > 1 ? (uint32_t)cfg->window : 1;
    size_t next = first;
    for (size_t k = 0; k < np; k++) {
        struct producer *p = &prods[k];
        char err[256] = "";
        p->cfg = cfg;
        p->w = w;
        p->slots = slots;
        p->start = &start;
        p->begin = next;
        p->end = next + total / np + (k < total % np ? 1 : 0);
        next = p->end;
        int crc = ferry_connect(cfg->server, &opts, &p->conn, err, sizeof err);
        if (crc < 0) {
            snprintf(res->error, sizeof res->error, "connect %s: %s%s%s", cfg->server,
                     ferry_strerror(crc), err[0] != '\0' ? ": " : "", err);
            goto out;
        }
    }

    if (rtt_samples > 0 &&
        pub_rtt(prods[0].conn, rtt_samples, rtt, res->error, sizeof res->error) < 0) {
        goto out;
    }

    /* Warm-up: creates the topic and primes both sides, untimed. */
    for (size_t i = 0; i < first; i++) {
        ferry_msg m;
        pub_fill_msg(&prods[0], i, &m);
        int prc = ferry_publish(prods[0].conn, &m, NULL);
        if (prc < 0) {
            snprintf(res->error, sizeof res->error, "warm-up publish to '%s': %s: %s", cfg->topic,
                     ferry_strerror(prc), ferry_errmsg(prods[0].conn));
            goto out;
        }
    }

    for (; started < np; started++) {
        if (pthread_create(&threads[started], NULL, pub_thread, &prods[started]) != 0) {
            break;
        }
    }
    gate_set(&start, started == np ? 1 : -1);
    for (size_t k = 0; k < started; k++) {
        pthread_join(threads[k], NULL);
    }
    if (started < np) {
        snprintf(res->error, sizeof res->error, "cannot start producer thread %zu", started);
        goto out;
    }

    lat = malloc((total > 0 ? total : 1) * sizeof *lat);
    if (lat == NULL) {
        snprintf(res->error, sizeof res->error, "out of memory");
        goto out;
    }
    int64_t t_first = INT64_MAX, t_last = INT64_MIN;
    size_t n = 0;
    for (size_t i = first; i < w->count; i++) {
        const struct slot *s = &slots[i];
        if (s->status != 0) {
            res->failed++;
            continue;
        }
        if (s->send_ns < t_first) {
            t_first = s->send_ns;
        }
        if (s->ack_ns > t_last) {
            t_last = s->ack_ns;
        }
        res->duplicates += s->duplicate != 0;
        lat[n++] = s->ack_ns - s->send_ns;
    }
    res->acked = n;
    res->wall_s = n > 0 ? (double)(t_last - t_first) / 1e9 : 0;
    bench_percentiles(lat, n, &res->latency);
    for (size_t k = 0; k < np; k++) {
        if (prods[k].rc != 0) {
            snprintf(res->error, sizeof res->error, "producer %zu: %s", k, prods[k].errmsg);
            break;
        }
    }
    if (res->failed > 0 && res->error[0] == '\0') {
        int first_status = SLOT_PENDING;
        for (size_t i = first; i < w->count && first_status == SLOT_PENDING; i++) {
            if (slots[i].status < 0) {
                first_status = slots[i].status;
            }
        }
        snprintf(res->error, sizeof res->error, "%zu publishes failed (%s)", res->failed,
                 first_status < 0 ? ferry_strerror(first_status) : "never acknowledged");
    }
    rc = 0;
out:
    if (prods != NULL) {
        for (size_t k = 0; k < np; k++) {
            ferry_close(prods[k].conn);
        }
    }
    free(lat);
    free(threads);
    free(slots);
    free(prods);
    return rc;
}
