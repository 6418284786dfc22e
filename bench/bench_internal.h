/*
 * bench_internal.h - pieces shared by the bench/ sources.
 *
 * bench_util.c: clock, PRNG, UUID-like ids, the pre-generated workload and
 *               percentiles.
 * bench_pub.c:  producer threads against a running ferryd, loopback RTT.
 * bench_raw.c:  the raw-SQLite ceiling and the fdatasync probe.
 * bench.c:      command line, orchestration and output.
 *
 * Everything that is timed is generated beforehand, so the measured loops
 * only publish (or insert) and read the clock.
 */
#ifndef FERRY_BENCH_INTERNAL_H
#define FERRY_BENCH_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* A UUID-like id is 36 characters: 8-4-4-4-12 hex digits. */
#define BENCH_ID_LEN 36

/* splitmix64: fast, statistically good enough for ids and payload bytes. */
struct bench_rng {
    uint64_t state;
};

/* Seeds from getrandom(); falls back to the clock and pid if it fails. */
void bench_rng_seed(struct bench_rng *r);
uint64_t bench_rng_next(struct bench_rng *r);
void bench_rng_fill(struct bench_rng *r, void *buf, size_t len);

/* Writes a random version-4 UUID string and its terminating NUL into out. */
void bench_uuid(struct bench_rng *r, char out[BENCH_ID_LEN + 1]);

/* CLOCK_MONOTONIC in nanoseconds. */
int64_t bench_now_ns(void);

/* Unix time in milliseconds (CLOCK_REALTIME). */
int64_t bench_unix_ms(void);

/*
 * The rows both the broker run and the raw-SQLite run store: count random
 * ids and count payloads of size bytes. Payloads are windows into one
 * random pool; as long as count * size fits the pool's cap (64 MiB) no two
 * payloads share bytes.
 */
struct bench_workload {
    size_t count;
    size_t size;
    char *ids; /* count entries of BENCH_ID_LEN + 1 bytes, NUL-terminated */
    unsigned char *pool;
    size_t pool_len;
};

/* Returns 0, or -1 when out of memory. */
int bench_workload_init(struct bench_workload *w, size_t count, size_t size, struct bench_rng *r);
void bench_workload_free(struct bench_workload *w);

static inline const char *bench_workload_id(const struct bench_workload *w, size_t i)
{
    return w->ids + i * (BENCH_ID_LEN + 1);
}

const void *bench_workload_payload(const struct bench_workload *w, size_t i);

/* Nearest-rank percentiles of n durations in nanoseconds, reported in µs. */
struct bench_pct {
    double p50_us;
    double p99_us;
    double p999_us;
    double max_us;
    double mean_us;
};

/* Sorts ns in place. n == 0 gives all zeroes. */
void bench_percentiles(int64_t *ns, size_t n, struct bench_pct *out);

/* ---- bench_pub.c ---- */

struct ferry_conn;

struct bench_pub_config {
    const char *server;
    const char *topic;
    size_t window;    /* 1: synchronous ferry_publish */
    size_t producers; /* >= 1 */
    size_t warmup;    /* messages published by producer 0 before timing */
};

struct bench_pub_result {
    size_t acked;      /* messages acknowledged without error */
    size_t failed;     /* publishes that failed or never got an ack */
    size_t duplicates; /* acks with the duplicate flag (should be 0) */
    double wall_s;     /* first send to last ack */
    struct bench_pct latency;
    char error[512]; /* first failure, empty if none */
};

/*
 * Connects cfg->producers connections, publishes the workload (ids
 * cfg->warmup .. count-1; the first cfg->warmup ids are the warm-up) split
 * evenly across one thread per connection, and measures each message's
 * publish -> ack latency. rtt_samples > 0 first measures that many pings on
 * the first connection into *rtt (may be NULL when rtt_samples is 0).
 * Returns 0 when the run completed (res->failed may still be > 0), -1 when
 * it could not start (res->error says why).
 */
int bench_pub_run(const struct bench_pub_config *cfg, const struct bench_workload *w,
                  size_t rtt_samples, struct bench_pct *rtt, struct bench_pub_result *res);

/* ---- bench_raw.c ---- */

struct bench_raw_result {
    size_t rows;
    double wall_s;
    double rows_per_s;
    char error[512];
};

/*
 * Inserts rows [first, w->count) of the workload into a fresh WAL database
 * in dir, 1000 rows per transaction, with the given synchronous mode
 * ("FULL" or "NORMAL") and a 128 MiB page cache; msg_id is UNIQUE when
 * unique_id, a plain column otherwise. Removes the database files
 * afterwards. Returns 0 or -1 (res->error says why).
 */
int bench_raw_run(const char *dir, const char *sync_mode, int unique_id,
                  const struct bench_workload *w, size_t first, struct bench_raw_result *res);

/*
 * Writes 100 bytes and calls fdatasync, samples times, on a file in dir,
 * either appending (append != 0, the file grows) or overwriting the same
 * preallocated bytes. Removes the file afterwards. Returns 0 or -1.
 */
int bench_fdatasync_probe(const char *dir, size_t samples, int append, struct bench_pct *out,
                          char *err, size_t err_len);

#endif /* FERRY_BENCH_INTERNAL_H */
