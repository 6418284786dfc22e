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

#include "harness.h"

/* The fixture most tests keep in cmocka's state: a broker and, when the
 * setup connected one, a connection to it. A test that keeps more makes
 * this the first member of its own struct, passes that struct's size to
 * the setup and calls the teardown from its own once it has released the
 * rest. */
struct it_fx {
    struct harness_broker b;
    ferry_conn *c; /* NULL unless it_fx_setup connected it */
};

/* A cmocka setup: allocates size zeroed bytes (at least a struct it_fx,
 * which begins them) into *state and starts a broker with broker_args (a
 * NULL-terminated list, or NULL). Returns 0, or -1 when it failed (the
 * harness has then printed why). */
int it_fx_start(void **state, size_t size, const char *const *broker_args);

/* As it_fx_start, then connects c with FERRY_OPTIONS_INIT and client_name
 * (NULL: the default), printing "setup: ferry_connect(...)" and removing
 * the broker when that fails. */
int it_fx_setup(void **state, size_t size, const char *const *broker_args, const char *client_name);

/* The cmocka teardown of either: closes c, checks the broker's log
 * (harness_check_log), removes the broker (harness_cleanup) and frees the
 * fixture. Returns the log check's result; 0 when *state is NULL. */
int it_fx_teardown(void **state);

/* As it_fx_teardown, but stops a broker still running (harness_stop)
 * before the log check. Returns -1 when it did not exit 0 or the log
 * check failed, else 0. */
int it_fx_teardown_stop(void **state);

/* Sleeps ms milliseconds, resuming after signals. */
void it_sleep_ms(int ms);

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

#endif /* FERRY_IT_UTIL_H */
