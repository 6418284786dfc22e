/*
 * pg_latency.c - commit-to-effect latency with both services on
 * PostgreSQL (bench/pg_relay.sh runs it; not a test).
 *
 *   pg_latency CONNINFO SCHEMA BROKER RATE COUNT
 *
 * A producer thread commits COUNT single-row transactions into
 * SCHEMA.outbox at RATE per second (one INSERT + COMMIT each, on a fixed
 * schedule), recording the time just before each COMMIT. A `ferry relay
 * --pg` (started by the script) forwards them. A consumer thread subscribed
 * to the topic applies each message through the Postgres inbox
 * (ferry_pg_inbox_handle: claim + an effect row in one transaction, on its
 * own Postgres connection) and records when that COMMIT returned. Prints
 * the COMMIT-issued -> effect-committed latency: p50, p90, p99, max, and
 * the rate achieved, as one line "key=value ...".
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
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
    ferry_conn *c = arg;
    PGconn *pg = connect_pg();
    for (long got = 0; got < count;) {
        ferry_delivery *d;
        int rc = ferry_receive(c, 30000, &d);
        if (rc < 0) {
            fprintf(stderr, "pg_latency: receive: %s (%ld of %ld)\n", ferry_strerror(rc), got,
                    count);
            exit(1);
        }
        char buf[32];
        size_t n = d->payload_len < sizeof buf - 1 ? d->payload_len : sizeof buf - 1;
        memcpy(buf, d->payload, n);
        buf[n] = '\0';
        long i = strtol(buf, NULL, 10);
        rc = ferry_pg_inbox_handle(pg, schema, "bench", d, effect, NULL, 100);
        if (rc == FERRY_INBOX_FRESH && i >= 0 && i < count && !t_effect[i]) {
            t_effect[i] = now_us();
            got++;
        }
        ferry_delivery_free(d);
    }
    ferry_flush(c, 10000);
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
    if (argc != 6) {
        fprintf(stderr, "usage: pg_latency CONNINFO SCHEMA BROKER RATE COUNT\n");
        return 2;
    }
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

    snprintf(sql, sizeof sql,
             "INSERT INTO %s.outbox (topic, payload) VALUES ('pg-latency', convert_to($1, 'UTF8'))",
             schema);
    int64_t start = now_us();
    for (long i = 0; i < count; i++) {
        int64_t due = start + i * 1000000 / rate;
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
            return 1;
        }
        PQclear(r);
        t_commit[i] = now_us();
        must(pg, "COMMIT");
    }
    int64_t end = now_us();
    pthread_join(th, NULL);
    ferry_close(c);
    PQfinish(pg);

    int64_t *lat = calloc((size_t)count, sizeof *lat);
    for (long i = 0; i < count; i++)
        lat[i] = t_effect[i] - t_commit[i];
    qsort(lat, (size_t)count, sizeof *lat, cmp64);
    printf("rate=%.0f count=%ld p50_us=%" PRId64 " p90_us=%" PRId64 " p99_us=%" PRId64
           " max_us=%" PRId64 "\n",
           (double)count * 1e6 / (double)(end - start), count, lat[count / 2], lat[count * 9 / 10],
           lat[count * 99 / 100], lat[count - 1]);
    return 0;
}
