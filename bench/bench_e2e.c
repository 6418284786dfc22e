/*
 * bench_e2e.c - end-to-end latency: a paced publisher and one consumer.
 *
 * The consumer subscribes first (a fresh group starting at the latest
 * message, so it is caught up and gets each message pushed from the
 * broker's committed batch), on its own connection and thread. The
 * publisher, on another connection and thread, then publishes message i at
 * t0 + i / rate on CLOCK_MONOTONIC: it sleeps until that time
 * (clock_nanosleep with an absolute deadline and a 1 ns timer slack), reads
 * the clock, writes the reading and i into the first 16 payload bytes,
 * calls ferry_publish_async and then ferry_poll, which sends the message at
 * once (libferry may otherwise hold it for up to 200 us to coalesce writes)
 * and runs the callbacks of the acks that have arrived. A publisher that
 * falls behind its schedule publishes what is due without sleeping; how far
 * behind it got is reported, since a late send shows up as a lower rate,
 * not as latency.
 *
 * The consumer takes the clock as soon as ferry_receive returns a delivery:
 * latency = that reading - the send time in the payload (the same clock on
 * the same machine). It then acks with ferry_delivery_ack_async, as a real
 * consumer would, so the broker commits acks while it publishes. Messages
 * of the first warmup_s seconds are checked like the others but left out
 * of the percentiles.
 */
#include "bench_internal.h"

#include <errno.h>
#include <ferry.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

#define E2E_FLUSH_TIMEOUT_MS 60000
/* After the last publish, how long the consumer waits for stragglers. */
#define E2E_DRAIN_MS 10000
/* A send this late counts as behind schedule. */
#define E2E_BEHIND_NS 1000000

struct e2e_pub;

struct e2e_slot {
    struct e2e_pub *p;
    size_t i;
};

struct e2e_shared {
    const struct bench_e2e_config *cfg;
    size_t total;           /* messages to publish */
    size_t warm;            /* the first warm of them are not measured */
    int64_t *send_ns;       /* per message: the time written into its payload */
    int64_t *lat_ns;        /* per message: delivery latency, -1 until received */
    int8_t *pub_state;      /* per message: 0 not sent, 1 sent, 2 acked, -1 failed */
    struct e2e_slot *slots; /* per message: its ack callback's userdata */
    atomic_size_t acked;
    atomic_int pub_done; /* 1: every publish has its outcome */
    atomic_int abort;
    struct bench_gate gate;
};

struct e2e_pub {
    struct e2e_shared *sh;
    ferry_conn *conn;
    double behind_max_ns;
    size_t behind_1ms;
    size_t failed;
    int rc;
    char errmsg[256];
};

struct e2e_cons {
    struct e2e_shared *sh;
    ferry_conn *conn;
    ferry_sub *sub;
    size_t received, duplicates, foreign;
    int rc;
    char errmsg[256];
};

static void e2e_pub_fail(struct e2e_pub *p, int rc, const char *what)
{
    if (p->rc == 0) {
        p->rc = rc;
        snprintf(p->errmsg, sizeof p->errmsg, "%s: %s%s%s", what, ferry_strerror(rc),
                 ferry_errmsg(p->conn)[0] != '\0' ? ": " : "", ferry_errmsg(p->conn));
    }
}

/* userdata is the message's slot. */
static void e2e_on_ack(void *userdata, int status, const ferry_ack *ack)
{
    struct e2e_slot *slot = userdata;
    struct e2e_shared *sh = slot->p->sh;
    (void)ack;
    if (status < 0) {
        sh->pub_state[slot->i] = -1;
        slot->p->failed++;
        e2e_pub_fail(slot->p, status, "publish");
    } else {
        sh->pub_state[slot->i] = 2;
        atomic_fetch_add(&sh->acked, 1);
    }
}

static void sleep_until(int64_t due_ns)
{
    struct timespec ts = {.tv_sec = due_ns / 1000000000, .tv_nsec = due_ns % 1000000000};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static void *e2e_pub_thread(void *arg)
{
    struct e2e_pub *p = arg;
    struct e2e_shared *sh = p->sh;
    const struct bench_e2e_config *cfg = sh->cfg;
    /* The slots are the run's, not this thread's: a callback that comes
     * only at ferry_close (after a failed flush) still finds its slot. */
    struct e2e_slot *slots = sh->slots;
    unsigned char *payload = malloc(cfg->size);
    if (payload == NULL) {
        snprintf(p->errmsg, sizeof p->errmsg, "out of memory");
        p->rc = FERRY_ENOMEM;
        atomic_store(&sh->pub_done, 1);
        return NULL;
    }
    struct bench_rng rng;
    bench_rng_seed(&rng);
    bench_rng_fill(&rng, payload, cfg->size);
    /* Wake up on time rather than up to 50 us late (the default slack). */
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);

    if (bench_gate_wait(&sh->gate) < 0) {
        atomic_store(&sh->pub_done, 1);
        free(payload);
        return NULL;
    }
    double interval_ns = 1e9 / cfg->rate;
    int64_t t0 = bench_now_ns() + 1000000;
    char id[BENCH_ID_LEN + 1];
    for (size_t i = 0; i < sh->total && atomic_load(&sh->abort) == 0; i++) {
        int64_t due = t0 + (int64_t)((double)i * interval_ns);
        if (bench_now_ns() < due) {
            sleep_until(due);
        }
        bench_uuid(&rng, id);
        ferry_msg m;
        memset(&m, 0, sizeof m);
        m.topic = cfg->topic;
        m.id = id;
        m.payload = payload;
        m.payload_len = cfg->size;
        uint64_t idx = i;
        int64_t now = bench_now_ns();
        memcpy(payload, &now, 8);
        memcpy(payload + 8, &idx, 8);
        sh->send_ns[i] = now;
        sh->pub_state[i] = 1;
        slots[i] = (struct e2e_slot){p, i};
        int rc = ferry_publish_async(p->conn, &m, e2e_on_ack, &slots[i]);
        if (rc < 0) {
            sh->pub_state[i] = -1;
            p->failed++;
            e2e_pub_fail(p, rc, "publish_async");
            break;
        }
        rc = ferry_poll(p->conn);
        if (rc < 0) {
            e2e_pub_fail(p, rc, "poll");
            break;
        }
        double behind = (double)(now - due);
        if (behind > p->behind_max_ns) {
            p->behind_max_ns = behind;
        }
        p->behind_1ms += now - due > E2E_BEHIND_NS;
    }
    int rc = ferry_flush(p->conn, E2E_FLUSH_TIMEOUT_MS);
    if (rc < 0) {
        e2e_pub_fail(p, rc, "flush");
    }
    atomic_store(&sh->pub_done, 1);
    free(payload);
    return NULL;
}

static void e2e_cons_fail(struct e2e_cons *k, int rc, const char *what)
{
    if (k->rc == 0) {
        k->rc = rc;
        snprintf(k->errmsg, sizeof k->errmsg, "%s: %s%s%s", what, ferry_strerror(rc),
                 ferry_errmsg(k->conn)[0] != '\0' ? ": " : "", ferry_errmsg(k->conn));
    }
    atomic_store(&k->sh->abort, 1);
}

static void *e2e_cons_thread(void *arg)
{
    struct e2e_cons *k = arg;
    struct e2e_shared *sh = k->sh;
    if (bench_gate_wait(&sh->gate) < 0) {
        return NULL;
    }
    int64_t drain_since = 0;
    for (;;) {
        if (atomic_load(&sh->abort) != 0) {
            break;
        }
        if (atomic_load(&sh->pub_done) != 0) {
            if (k->received >= atomic_load(&sh->acked)) {
                break;
            }
            if (drain_since == 0) {
                drain_since = bench_now_ns();
            } else if (bench_now_ns() - drain_since > (int64_t)E2E_DRAIN_MS * 1000000) {
                break;
            }
        }
        ferry_delivery *d = NULL;
        int rc = ferry_receive(k->conn, 5, &d);
        if (rc == FERRY_ETIMEOUT) {
            continue;
        }
        if (rc < 0) {
            e2e_cons_fail(k, rc, "receive");
            break;
        }
        int64_t now = bench_now_ns();
        int64_t sent;
        uint64_t idx;
        if (d->payload_len >= 16) {
            memcpy(&sent, d->payload, 8);
            memcpy(&idx, (const unsigned char *)d->payload + 8, 8);
        } else {
            idx = UINT64_MAX;
            sent = 0;
        }
        if (idx >= sh->total) {
            k->foreign++; /* not this run's: someone else publishes here */
        } else if (sh->lat_ns[idx] >= 0) {
            k->duplicates++;
        } else {
            sh->lat_ns[idx] = now - sent;
            k->received++;
        }
        rc = ferry_delivery_ack_async(d);
        ferry_delivery_free(d);
        if (rc < 0) {
            e2e_cons_fail(k, rc, "ack");
            break;
        }
    }
    int rc = ferry_flush(k->conn, E2E_FLUSH_TIMEOUT_MS);
    if (rc < 0) {
        e2e_cons_fail(k, rc, "flush");
    }
    rc = ferry_unsubscribe(k->sub);
    if (rc < 0) {
        e2e_cons_fail(k, rc, "unsubscribe");
    }
    return NULL;
}

/* One line per message: index, send time (ns since the first send, whose
 * CLOCK_MONOTONIC time the header gives), latency in ns (-1: never
 * received), and 1 for a warm-up message. */
static int write_samples(const char *path, const struct e2e_shared *sh,
                         struct bench_e2e_result *res)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        snprintf(res->error, sizeof res->error, "cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    int64_t t0 = sh->send_ns[0];
    fprintf(f, "# index send_ns latency_ns warmup; send_ns 0 is CLOCK_MONOTONIC %lld ns\n",
            (long long)t0);
    for (size_t i = 0; i < sh->total && sh->pub_state[i] != 0; i++) {
        fprintf(f, "%zu %lld %lld %d\n", i, (long long)(sh->send_ns[i] - t0),
                (long long)sh->lat_ns[i], i < sh->warm);
    }
    if (fclose(f) != 0) {
        snprintf(res->error, sizeof res->error, "cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

int bench_e2e_run(const struct bench_e2e_config *cfg, struct bench_e2e_result *res)
{
    memset(res, 0, sizeof *res);
    struct e2e_shared sh = {.cfg = cfg, .gate = BENCH_GATE_INIT};
    sh.warm = (size_t)(cfg->warmup_s * cfg->rate);
    sh.total = sh.warm + (size_t)(cfg->seconds * cfg->rate);
    atomic_init(&sh.acked, 0);
    atomic_init(&sh.pub_done, 0);
    atomic_init(&sh.abort, 0);
    struct e2e_pub p = {.sh = &sh};
    struct e2e_cons k = {.sh = &sh};
    pthread_t tp, tc;
    int have_tp = 0, have_tc = 0;
    int64_t *lat = NULL;
    int rc = -1;

    sh.send_ns = calloc(sh.total, sizeof *sh.send_ns);
    sh.lat_ns = malloc(sh.total * sizeof *sh.lat_ns);
    sh.pub_state = calloc(sh.total, sizeof *sh.pub_state);
    sh.slots = calloc(sh.total, sizeof *sh.slots);
    lat = malloc(sh.total * sizeof *lat);
    if (sh.total == 0 || sh.send_ns == NULL || sh.lat_ns == NULL || sh.pub_state == NULL ||
        sh.slots == NULL || lat == NULL) {
        snprintf(res->error, sizeof res->error,
                 sh.total == 0 ? "nothing to publish" : "out of memory");
        goto out;
    }
    for (size_t i = 0; i < sh.total; i++) {
        sh.lat_ns[i] = -1;
    }

    ferry_options opts = FERRY_OPTIONS_INIT;
    opts.max_in_flight = (uint32_t)cfg->window;
    char err[256] = "";
    opts.client_name = "ferry-bench-e2e-consumer";
    int crc = ferry_connect(cfg->server, &opts, &k.conn, err, sizeof err);
    if (crc == 0) {
        opts.client_name = "ferry-bench-e2e-publisher";
        crc = ferry_connect(cfg->server, &opts, &p.conn, err, sizeof err);
    }
    if (crc < 0) {
        snprintf(res->error, sizeof res->error, "connect %s: %s%s%s", cfg->server,
                 ferry_strerror(crc), err[0] != '\0' ? ": " : "", err);
        goto out;
    }
    ferry_sub_options so = FERRY_SUB_OPTIONS_INIT;
    so.start = FERRY_START_LATEST;
    so.max_in_flight = (uint32_t)cfg->window;
    crc = ferry_subscribe(k.conn, cfg->topic, cfg->group, &so, &k.sub);
    if (crc < 0) {
        snprintf(res->error, sizeof res->error, "subscribe to %s/%s: %s: %s", cfg->topic,
                 cfg->group, ferry_strerror(crc), ferry_errmsg(k.conn));
        goto out;
    }

    have_tc = pthread_create(&tc, NULL, e2e_cons_thread, &k) == 0;
    have_tp = have_tc && pthread_create(&tp, NULL, e2e_pub_thread, &p) == 0;
    bench_gate_set(&sh.gate, have_tp ? 1 : -1);
    if (have_tp) {
        pthread_join(tp, NULL);
    }
    if (have_tc) {
        pthread_join(tc, NULL);
    }
    if (!have_tp) {
        snprintf(res->error, sizeof res->error, "cannot start the e2e threads");
        goto out;
    }

    int64_t first_send = 0, last_send = 0;
    size_t n = 0;
    for (size_t i = 0; i < sh.total; i++) {
        if (sh.pub_state[i] == 2) {
            res->published++;
            if (sh.lat_ns[i] < 0) {
                res->missing++;
            }
        }
        if (sh.pub_state[i] == -1) {
            res->pub_failed++;
        }
        if (i >= sh.warm && sh.pub_state[i] != 0) {
            if (first_send == 0) {
                first_send = sh.send_ns[i];
            }
            last_send = sh.send_ns[i];
            if (sh.lat_ns[i] >= 0) {
                lat[n++] = sh.lat_ns[i];
            }
        }
    }
    size_t sent_measured = 0;
    for (size_t i = sh.warm; i < sh.total; i++) {
        sent_measured += sh.pub_state[i] != 0;
    }
    res->received = k.received;
    res->duplicates = k.duplicates;
    res->measured = n;
    res->behind_max_us = p.behind_max_ns / 1000.0;
    res->behind_1ms = p.behind_1ms;
    if (sent_measured > 1 && last_send > first_send) {
        res->achieved_rate = (double)(sent_measured - 1) / ((double)(last_send - first_send) / 1e9);
    }
    if (cfg->samples_path != NULL && write_samples(cfg->samples_path, &sh, res) < 0) {
        goto out;
    }
    bench_percentiles(lat, n, &res->latency);
    if (p.rc != 0) {
        snprintf(res->error, sizeof res->error, "publisher: %s", p.errmsg);
    } else if (k.rc != 0) {
        snprintf(res->error, sizeof res->error, "consumer: %s", k.errmsg);
    } else if (k.foreign > 0) {
        snprintf(res->error, sizeof res->error,
                 "%zu deliveries were not this run's messages: another producer publishes to "
                 "'%s'",
                 k.foreign, cfg->topic);
    }
    rc = p.rc != 0 || k.rc != 0 ? -1 : 0;
out:
    ferry_close(p.conn);
    ferry_close(k.conn); /* also ends k.sub if the consumer thread did not */
    free(lat);
    free(sh.send_ns);
    free(sh.lat_ns);
    free(sh.pub_state);
    free(sh.slots);
    return rc;
}
