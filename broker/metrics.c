/*
 * metrics.c - latency histograms and rate rings (metrics.h).
 */
#include "metrics.h"

#include <string.h>

const double histo_latency_bounds[HISTO_LATENCY_BUCKETS] = {
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025,   0.05,   0.1,     0.25,   0.5,   1.0,    2.5,   10.0,
};

const double histo_count_bounds[HISTO_COUNT_BUCKETS] = {
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192,
};

void histo_init(struct histo *h, const double *bounds, size_t nbounds)
{
    memset(h, 0, sizeof(*h));
    h->bounds = bounds;
    h->nbounds = nbounds;
}

void histo_add(struct histo *h, double v)
{
    size_t i = 0;
    while (i < h->nbounds && v > h->bounds[i])
        i++;
    atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    if (v > 0)
        atomic_fetch_add_explicit(&h->sum_micro, (uint64_t)(v * 1e6 + 0.5), memory_order_relaxed);
}

void histo_read(const struct histo *h, uint64_t *cumulative, uint64_t *count, double *sum)
{
    uint64_t run = 0;
    for (size_t i = 0; i <= h->nbounds; i++) {
        run += atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
        cumulative[i] = run;
    }
    /* The buckets' total, not h->count: the two may be read between one
     * observation's increments, and +Inf must equal _count. */
    *count = run;
    *sum = (double)atomic_load_explicit(&h->sum_micro, memory_order_relaxed) / 1e6;
}

static int64_t floor_div(int64_t a, int64_t b)
{
    return a >= 0 ? a / b : -((-a + b - 1) / b);
}

void rate_add(struct rate_ring *r, int64_t now_ms, uint64_t n)
{
    int64_t s = floor_div(now_ms, 1000);
    if (s <= 0)
        return;
    size_t i = (size_t)(s % RATE_RING_SECONDS);
    if (r->sec[i] != (uint32_t)s) {
        r->sec[i] = (uint32_t)s;
        r->n[i] = 0;
    }
    r->n[i] = r->n[i] + n > UINT32_MAX ? UINT32_MAX : (uint32_t)(r->n[i] + n);
}

static uint64_t slot(const struct rate_ring *r, int64_t s)
{
    if (s <= 0)
        return 0;
    size_t i = (size_t)(s % RATE_RING_SECONDS);
    return r->sec[i] == (uint32_t)s ? r->n[i] : 0;
}

uint64_t rate_last_second(const struct rate_ring *r, int64_t now_ms)
{
    return slot(r, floor_div(now_ms, 1000) - 1);
}

uint64_t rate_recent(const struct rate_ring *r, int64_t now_ms, int seconds)
{
    if (seconds < 1)
        seconds = 1;
    if (seconds > RATE_RING_SECONDS - 2)
        seconds = RATE_RING_SECONDS - 2;
    int64_t now = floor_div(now_ms, 1000);
    uint64_t sum = 0;
    for (int k = 0; k < seconds; k++)
        sum += slot(r, now - k);
    return sum / (uint64_t)seconds;
}

double rate_average(const struct rate_ring *r, int64_t now_ms, int seconds)
{
    if (seconds < 1)
        seconds = 1;
    if (seconds > RATE_RING_SECONDS - 2)
        seconds = RATE_RING_SECONDS - 2;
    int64_t now = floor_div(now_ms, 1000);
    uint64_t sum = 0;
    for (int k = 1; k <= seconds; k++)
        sum += slot(r, now - k);
    return (double)sum / seconds;
}
