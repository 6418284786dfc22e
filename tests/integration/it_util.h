/*
 * it_util.h - small helpers shared by the integration tests on top of the
 * harness and libferry. The functions that can fail assert with cmocka, so
 * they may only be called from inside a running cmocka test.
 */
#ifndef FERRY_IT_UTIL_H
#define FERRY_IT_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include <ferry.h>

/* Connects to addr with default options and asserts that it worked,
 * printing the library's detail when it did not. */
ferry_conn *it_connect(const char *addr);

/* As it_connect with a request timeout and in-flight window. */
ferry_conn *it_connect_opts(const char *addr, int request_timeout_ms, uint32_t max_in_flight);

/* Looks up one topic with ferry_topics. Returns 1 and fills *out when the
 * broker lists it, 0 when it does not; asserts that the call succeeded. */
int it_topic(ferry_conn *c, const char *name, ferry_topic_info *out);

/* Fills buf with len deterministic bytes for message number i, so that a
 * payload can be re-derived from its index when checking the store. */
void it_payload(size_t i, uint8_t *buf, size_t len);

/* Number of times needle occurs in the file at path (a log, say). */
int it_file_count(const char *path, const char *needle);

/* 1 when the file at path contains needle. */
int it_file_has(const char *path, const char *needle);

/* Sleeps ms milliseconds, resuming after signals. */
void it_sleep_ms(int ms);

#endif /* FERRY_IT_UTIL_H */
