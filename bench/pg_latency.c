/*
 * pg_latency.c - commit-to-effect latency with both services on
 * PostgreSQL (bench/pg_relay.sh runs it; not a test).
 *
 *   pg_latency CONNINFO SCHEMA BROKER RATE COUNT [PRODUCERS]
 *
 * PRODUCERS threads (default 4, each its own Postgres connection, as a
 * service's request handlers would be) commit COUNT single-row
 * transactions in all into SCHEMA.outbox at RATE per second in all (one
 * INSERT + COMMIT each, on a fixed schedule: order i is due at i / RATE s,
 * taken by thread i % PRODUCERS), recording the time just before each
 * COMMIT. One connection alone cannot: each COMMIT waits for its own WAL
 * flush, a few hundred a second on these disks, while concurrent commits
 * share one. A `ferry relay --pg` (started by the script) forwards them. A
 * consumer thread subscribed to the topic applies the messages through the
 * Postgres inbox on its own connection, in batches of what has arrived
 * (ferry_pg_inbox_handle_batch: claim + an effect row per message, one
 * COMMIT per batch), and records when that COMMIT returned. Prints the
 * COMMIT-issued -> effect-committed latency: p50, p90, p99, max, and the
 * rate achieved, as one line "key=value ...".
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ferry.h>
#include <libpq-fe.h>

static const char *conninfo, *schema, *broker;
static long rate, count;
static int64_t *t_commit; /* us, before COMMIT */
static int64_t *t_effect; /* us, after the effect's COMMIT */

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static PGconn *connect_pg(void)
{
    PGconn *pg = PQconnectdb(conninfo);
    if (PQstatus(pg) != CONNECTION_OK) {
        fprintf(stderr, "pg_latency: %s", PQerrorMessage(pg));
        exit(1);
    }
    return pg;
}

static void must(PGconn *pg, const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "pg_latency: %s: %s", sql, PQerrorMessage(pg));
        exit(1);
    }
    PQclear(r);
}

static int effect(void *userdata, PGconn *pg, const ferry_delivery *d)
{
    char sql[256];
    snprintf(sql, sizeof sql, "INSERT INTO %s.bench_effects VALUES ($1)", schema);
    const char *v[1] = {d->id};
    PGresult *r = PQexecParams(pg, sql, 1, NULL, v, NULL, NULL, 0);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    (void)userdata;
    return ok ? 0 : -1;
}

static void *consumer(void *arg)
{
    enum { BATCH = 256 };
    ferry_conn *c = arg;
    PGconn *pg = connect_pg();
    ferry_delivery *ds[BATCH];
    int out[BATCH];
    for (long got = 0; got < count;) {
        size_t n = 0;
        int rc = ferry_receive(c, 30000, &ds[n]);
        if (rc < 0) {
            fprintf(stderr, "pg_latency: receive: %s (%ld of %ld)\n", ferry_strerror(rc), got,
                    count);
            exit(1);
        }
        n++;
        while (n < BATCH && ferry_receive(c, 0, &ds[n]) == 0)
            n++;
        rc = ferry_pg_inbox_handle_batch(pg, schema, "bench", ds, n, effect, NULL, 100, out);
        int64_t t = now_us();
        for (size_t k = 0; k < n; k++) {
            char buf[32];
            size_t len = ds[k]->payload_len < sizeof buf - 1 ? ds[k]->payload_len : sizeof buf - 1;
            memcpy(buf, ds[k]->payload, len);
            buf[len] = '\0';
            long i = strtol(buf, NULL, 10);
            if (rc == 0 && out[k] == FERRY_INBOX_FRESH && i >= 0 && i < count && !t_effect[i]) {
                t_effect[i] = t;
                got++;
            }
            ferry_delivery_free(ds[k]);
        }
    }
    ferry_flush(c, 10000);
    PQfinish(pg);
    return NULL;
}

static int nproducers = 4;
static int64_t start_us;

static void *producer(void *arg)
{
    long self = (long)(intptr_t)arg;
    PGconn *pg = connect_pg();
    char sql[512];
    snprintf(sql, sizeof sql,
             "INSERT INTO %s.outbox (topic, payload) VALUES ('pg-latency', convert_to($1, 'UTF8'))",
             schema);
    for (long i = self; i < count; i += nproducers) {
        int64_t due = start_us + i * 1000000 / rate;
        int64_t now;
        while ((now = now_us()) < due) {
            struct timespec ts = {0, (long)((due - now) * 1000)};
            nanosleep(&ts, NULL);
        }
        char payload[32];
        snprintf(payload, sizeof payload, "%ld", i);
        const char *v[1] = {payload};
        must(pg, "BEGIN");
        PGresult *r = PQexecParams(pg, sql, 1, NULL, v, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            fprintf(stderr, "pg_latency: insert: %s", PQerrorMessage(pg));
            exit(1);
        }
        PQclear(r);
        t_commit[i] = now_us();
        must(pg, "COMMIT");
    }
    PQfinish(pg);
    return NULL;
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: pg_latency CONNINFO SCHEMA BROKER RATE COUNT [PRODUCERS]\n");
        return 2;
    }
    if (argc == 7)
        nproducers = atoi(argv[6]);
    if (nproducers < 1 || nproducers > 64)
        return 2;
    conninfo = argv[1];
    schema = argv[2];
    broker = argv[3];
    rate = strtol(argv[4], NULL, 10);
    count = strtol(argv[5], NULL, 10);
    if (rate < 1 || count < 1)
        return 2;
    t_commit = calloc((size_t)count, sizeof *t_commit);
    t_effect = calloc((size_t)count, sizeof *t_effect);
    PGconn *pg = connect_pg();
    if (ferry_pg_inbox_install(pg, schema) < 0) {
        fprintf(stderr, "pg_latency: inbox install: %s", PQerrorMessage(pg));
        return 1;
    }
    char sql[512];
    snprintf(sql, sizeof sql, "CREATE TABLE IF NOT EXISTS %s.bench_effects (id text)", schema);
    must(pg, sql);

    ferry_conn *c;
    char err[256];
    int rc = ferry_connect(broker, NULL, &c, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "pg_latency: connect %s: %s\n", broker, err);
        return 1;
    }
    ferry_sub_options so = FERRY_SUB_OPTIONS_INIT;
    so.start = FERRY_START_LATEST;
    so.max_in_flight = 1000;
    ferry_sub *s;
    if ((rc = ferry_subscribe(c, "pg-latency", "bench", &so, &s)) < 0) {
        fprintf(stderr, "pg_latency: subscribe: %s\n", ferry_strerror(rc));
        return 1;
    }
    pthread_t th;
    pthread_create(&th, NULL, consumer, c);

    start_us = now_us();
    pthread_t prod[64];
    for (int p = 0; p < nproducers; p++)
        pthread_create(&prod[p], NULL, producer, (void *)(intptr_t)p);
    for (int p = 0; p < nproducers; p++)
        pthread_join(prod[p], NULL);
    int64_t end = now_us();
    int64_t start = start_us;
    pthread_join(th, NULL);
    ferry_close(c);
    PQfinish(pg);

    int64_t *lat = calloc((size_t)count, sizeof *lat);
    for (long i = 0; i < count; i++)
        lat[i] = t_effect[i] - t_commit[i];
    qsort(lat, (size_t)count, sizeof *lat, cmp64);
    printf("rate=%.0f count=%ld producers=%d p50_us=%" PRId64 " p90_us=%" PRId64 " p99_us=%" PRId64
           " max_us=%" PRId64 "\n",
           (double)count * 1e6 / (double)(end - start), count, nproducers, lat[count / 2],
           lat[count * 9 / 10], lat[count * 99 / 100], lat[count - 1]);
    return 0;
}
