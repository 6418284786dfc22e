/*
 * clock.h - the broker's one clock: monotonic time for timeouts, leases
 * and durations, wall time for what is stored (message timestamps) and
 * shown. Safe on any thread.
 */
#ifndef FERRY_BROKER_CLOCK_H
#define FERRY_BROKER_CLOCK_H

#include <stdint.h>

uint64_t clock_mono_us(void); /* monotonic, microseconds */
uint64_t clock_mono_ms(void); /* monotonic, milliseconds */
int64_t clock_wall_ms(void);  /* Unix time, milliseconds */

#endif
