/*
 * it_util.c - see it_util.h.
 */
#include "it_util.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "harness.h"

ferry_conn *it_connect_opts(const char *addr, int request_timeout_ms, uint32_t max_in_flight)
{
    ferry_options o = FERRY_OPTIONS_INIT;
    o.client_name = "integration-test";
    o.request_timeout_ms = request_timeout_ms;
    o.max_in_flight = max_in_flight;
    ferry_conn *c = NULL;
    char err[256] = "";
    int r = ferry_connect(addr, &o, &c, err, sizeof err);
    if (r != 0)
        print_error("ferry_connect(%s): %s (%s)\n", addr, ferry_strerror(r), err);
    assert_int_equal(r, 0);
    assert_non_null(c);
    return c;
}

ferry_conn *it_connect(const char *addr)
{
    return it_connect_opts(addr, 0, 0);
}

int it_topic(ferry_conn *c, const char *name, ferry_topic_info *out)
{
    ferry_topic_info *list = NULL;
    size_t n = 0;
    int r = ferry_topics(c, &list, &n);
    if (r != 0)
        print_error("ferry_topics: %s (%s)\n", ferry_strerror(r), ferry_errmsg(c));
    assert_int_equal(r, 0);
    int found = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(list[i].name, name) == 0) {
            *out = list[i];
            found = 1;
        }
    }
    ferry_topics_free(list);
    return found;
}

void it_payload(size_t i, uint8_t *buf, size_t len)
{
    char head[32];
    int n = snprintf(head, sizeof head, "msg-%08zu-", i);
    for (size_t j = 0; j < len; j++)
        buf[j] = j < (size_t)n ? (uint8_t)head[j] : (uint8_t)('a' + (i * 7 + j) % 26);
}

int it_file_count(const char *path, const char *needle)
{
    size_t len;
    char *s = harness_slurp(path, &len);
    int n = 0;
    for (const char *p = s; p && (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    free(s);
    return n;
}

int it_file_has(const char *path, const char *needle)
{
    return it_file_count(path, needle) > 0;
}

int it_fx_start(void **state, size_t size, const char *const *broker_args)
{
    struct it_fx *fx = calloc(1, size);
    if (!fx)
        return -1;
    *state = fx;
    return harness_start(&fx->b, broker_args) == 0 ? 0 : -1;
}

int it_fx_setup(void **state, size_t size, const char *const *broker_args, const char *client_name)
{
    if (it_fx_start(state, size, broker_args) != 0)
        return -1;
    struct it_fx *fx = *state;
    ferry_options o = FERRY_OPTIONS_INIT;
    o.client_name = client_name;
    char err[256] = "";
    int r = ferry_connect(fx->b.addr, &o, &fx->c, err, sizeof err);
    if (r != 0) {
        fprintf(stderr, "setup: ferry_connect(%s): %s (%s)\n", fx->b.addr, ferry_strerror(r), err);
        harness_cleanup(&fx->b);
        return -1;
    }
    return 0;
}

int it_fx_teardown(void **state)
{
    struct it_fx *fx = *state;
    int rc = 0;
    if (fx) {
        ferry_close(fx->c);
        rc = harness_check_log(&fx->b);
        harness_cleanup(&fx->b);
        free(fx);
    }
    return rc;
}

int it_fx_teardown_stop(void **state)
{
    struct it_fx *fx = *state;
    if (!fx)
        return 0;
    ferry_close(fx->c);
    int st = fx->b.pid ? harness_stop(&fx->b) : 0;
    int log_ok = harness_check_log(&fx->b);
    harness_cleanup(&fx->b);
    free(fx);
    return st == 0 && log_ok == 0 ? 0 : -1;
}

void it_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}
