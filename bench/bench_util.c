/*
 * bench_util.c - clock, PRNG, ids, workload and percentiles for bench/.
 *
 * The PRNG is splitmix64 seeded once from getrandom(): every id and payload
 * byte of a run is produced before the clock starts, so its speed only
 * matters for start-up time, and its quality only has to make the ids
 * uniformly random (the case the broker's dedupe index must handle: no
 * locality to exploit).
 */
#include "bench_internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* The payload pool's cap: beyond it payloads start sharing bytes, which
 * changes nothing for SQLite (it does not compress) and bounds memory. */
#define BENCH_POOL_CAP ((size_t)64 * 1024 * 1024)

void bench_rng_seed(struct bench_rng *r)
{
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed) {
        seed = (uint64_t)bench_now_ns() ^ ((uint64_t)getpid() << 32);
    }
    r->state = seed;
}

uint64_t bench_rng_next(struct bench_rng *r)
{
    uint64_t z = (r->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void bench_rng_fill(struct bench_rng *r, void *buf, size_t len)
{
    unsigned char *p = buf;
    while (len >= 8) {
        uint64_t v = bench_rng_next(r);
        memcpy(p, &v, 8);
        p += 8;
        len -= 8;
    }
    if (len > 0) {
        uint64_t v = bench_rng_next(r);
        memcpy(p, &v, len);
    }
}

void bench_uuid(struct bench_rng *r, char out[BENCH_ID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    uint64_t hi = bench_rng_next(r);
    uint64_t lo = bench_rng_next(r);
    unsigned char b[16];
    for (int i = 0; i < 8; i++) {
        b[i] = (unsigned char)(hi >> (8 * i));
        b[8 + i] = (unsigned char)(lo >> (8 * i));
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) {
            out[o++] = '-';
        }
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 0x0f];
    }
    out[o] = '\0';
}

int64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t bench_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int bench_workload_init(struct bench_workload *w, size_t count, size_t size, struct bench_rng *r)
{
    memset(w, 0, sizeof *w);
    w->count = count;
    w->size = size;
    w->ids = malloc(count * (BENCH_ID_LEN + 1) + 1);
    if (w->ids == NULL) {
        return -1;
    }
    for (size_t i = 0; i < count; i++) {
        bench_uuid(r, w->ids + i * (BENCH_ID_LEN + 1));
    }
    size_t want = count > 0 && size > BENCH_POOL_CAP / count ? BENCH_POOL_CAP : count * size;
    if (want < size) {
        want = size; /* one payload larger than the cap still gets its bytes */
    }
    w->pool_len = want + 1;
    w->pool = malloc(w->pool_len);
    if (w->pool == NULL) {
        bench_workload_free(w);
        return -1;
    }
    bench_rng_fill(r, w->pool, w->pool_len);
    return 0;
}

void bench_workload_free(struct bench_workload *w)
{
    free(w->ids);
    free(w->pool);
    memset(w, 0, sizeof *w);
}

const void *bench_workload_payload(const struct bench_workload *w, size_t i)
{
    /* Windows start size bytes apart, wrapping within the pool. */
    size_t span = w->pool_len - w->size; /* >= 1 */
    size_t off = w->size == 0 ? 0 : (size_t)(((uint64_t)i * w->size) % span);
    return w->pool + off;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a;
    int64_t y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest rank: the smallest value with at least q of the samples <= it. */
static double rank_us(const int64_t *sorted, size_t n, double q)
{
    double r = q * (double)n;
    size_t k = (size_t)r;
    if ((double)k < r) {
        k++;
    }
    if (k == 0) {
        k = 1;
    }
    if (k > n) {
        k = n;
    }
    return (double)sorted[k - 1] / 1000.0;
}

void bench_percentiles(int64_t *ns, size_t n, struct bench_pct *out)
{
    memset(out, 0, sizeof *out);
    if (n == 0) {
        return;
    }
    qsort(ns, n, sizeof *ns, cmp_i64);
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        sum += (double)ns[i];
    }
    out->p50_us = rank_us(ns, n, 0.50);
    out->p99_us = rank_us(ns, n, 0.99);
    out->p999_us = rank_us(ns, n, 0.999);
    out->max_us = (double)ns[n - 1] / 1000.0;
    out->mean_us = sum / (double)n / 1000.0;
}
