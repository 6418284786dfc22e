/*
 * metrics.h - the broker's measuring instruments: latency histograms and
 * per-second rate rings (metrics.c). Layer 0: no broker state.
 *
 * A histogram has fixed bucket bounds (in seconds, Prometheus style:
 * cumulative when read) and may be written from any thread (relaxed
 * atomics; a reader sees each counter whole, not all of them at one
 * instant). A rate ring counts events per wall-clock second over the last
 * RATE_RING_SECONDS and belongs to one thread.
 */
#ifndef FERRY_BROKER_METRICS_H
#define FERRY_BROKER_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Latency buckets: 50 µs .. 10 s (upper bounds, seconds), then +Inf. */
#define HISTO_LATENCY_BUCKETS 16
extern const double histo_latency_bounds[HISTO_LATENCY_BUCKETS];
/* Messages per commit: 1 .. 8192, then +Inf. */
#define HISTO_COUNT_BUCKETS 14
extern const double histo_count_bounds[HISTO_COUNT_BUCKETS];

struct histo {
    const double *bounds;
    size_t nbounds;                                     /* bucket[nbounds] is +Inf */
    _Atomic uint64_t bucket[HISTO_LATENCY_BUCKETS + 1]; /* not cumulative */
    _Atomic uint64_t count;
    _Atomic uint64_t sum_micro; /* sum of observations, in millionths */
};

void histo_init(struct histo *h, const double *bounds, size_t nbounds);
/* Records one observation of v (seconds, or a count). */
void histo_add(struct histo *h, double v);
/* A consistent-enough copy: cumulative[i] for bounds[i], cumulative[nbounds]
 * for +Inf (== *count), *sum in the unit observed. */
void histo_read(const struct histo *h, uint64_t *cumulative, uint64_t *count, double *sum);

#define RATE_RING_SECONDS 64

/* 512 bytes: one per topic and group. */
struct rate_ring {
    uint32_t sec[RATE_RING_SECONDS]; /* the Unix second slot i counts */
    uint32_t n[RATE_RING_SECONDS];
};

void rate_add(struct rate_ring *r, int64_t now_ms, uint64_t n);
/* Events in the last complete second before now_ms. */
uint64_t rate_last_second(const struct rate_ring *r, int64_t now_ms);
/* Events per second over the `seconds` complete seconds before now_ms
 * (1..RATE_RING_SECONDS - 2). */
double rate_average(const struct rate_ring *r, int64_t now_ms, int seconds);
/* Events in the current second and the seconds-1 before it, divided by
 * seconds and rounded down: the 10 s publish rate `ferry topics` shows. */
uint64_t rate_recent(const struct rate_ring *r, int64_t now_ms, int seconds);

#endif
