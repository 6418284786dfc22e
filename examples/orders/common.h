/*
 * common.h - what the programs of the order story share: opening an
 * application database, clocks, signals, logging, and the order event's
 * payload (one line of JSON, written by order_service and read by the
 * consumers).
 *
 * The event of order 42:
 *   {"order_id":42,"customer":"customer-7","sku":"sku-3","qty":2,
 *    "amount_cents":4990,"created_us":1700000000123456}
 * created_us is the wall clock when order_service began the order's
 * transaction: the consumers store it beside their effect, which is how
 * commit-to-effect latency is measured (orders_check --latency).
 */
#ifndef ORDERS_COMMON_H
#define ORDERS_COMMON_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#define ORDERS_TOPIC "orders"
/* Longest payload an order event takes, with room to spare. */
#define ORDER_JSON_BYTES 256

struct order {
    int64_t order_id;
    char customer[32];
    char sku[32];
    int qty;
    int64_t amount_cents;
    int64_t created_us;
};

/* Set by SIGINT and SIGTERM once common_signals() ran. */
extern volatile sig_atomic_t common_stop;

/* Installs the SIGINT/SIGTERM handlers (no SA_RESTART, so waits return). */
void common_signals(void);

/* Wall-clock microseconds since the epoch, and monotonic milliseconds. */
int64_t common_wall_us(void);
int64_t common_mono_ms(void);
void common_sleep_ms(int ms);

/* Prints "PROG: message\n" to stderr, with the wall time. */
void common_log(const char *prog, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Opens (creating) path in WAL mode with the given synchronous setting
 * ("FULL" or "NORMAL") and a busy timeout, then runs schema_sql (may be
 * NULL). Returns NULL (after logging) on failure. */
sqlite3 *common_db_open(const char *prog, const char *path, const char *synchronous,
                        const char *schema_sql);

/* The order with this id (created_us left 0): deterministic, so that
 * every backend of order_service writes the same orders. */
void make_order(int64_t id, struct order *o);

/* Formats o as the event payload. Returns its length. */
int order_to_json(const struct order *o, char *buf, size_t cap);

/* Parses an event payload. Returns 0, or -1 when a field is missing. */
int order_from_json(const void *payload, size_t len, struct order *o);

/* Parses a non-negative integer option value; exits with a usage error
 * naming opt when it is not one. */
int64_t common_parse_int(const char *prog, const char *opt, const char *value);

#endif /* ORDERS_COMMON_H */
