/*
 * common.c - see common.h.
 */
#include "common.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

volatile sig_atomic_t common_stop;

static void on_signal(int sig)
{
    (void)sig;
    common_stop = 1;
}

void common_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

int64_t common_wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t common_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void common_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL); /* a signal cuts it short, on purpose */
}

void common_log(const char *prog, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    fprintf(stderr, "%02d:%02d:%02d %s: %s\n", tm.tm_hour, tm.tm_min, tm.tm_sec, prog, msg);
}

sqlite3 *common_db_open(const char *prog, const char *path, const char *synchronous,
                        const char *schema_sql)
{
    sqlite3 *db = NULL;
    if (sqlite3_open(path, &db) != SQLITE_OK) {
        common_log(prog, "cannot open %s: %s", path, db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        return NULL;
    }
    /* Writers wait for each other up to 5 s before SQLITE_BUSY; WAL lets
     * readers (orders_check, ferry relay --status) in meanwhile. */
    sqlite3_busy_timeout(db, 5000);
    char pragmas[128];
    snprintf(pragmas, sizeof pragmas, "PRAGMA journal_mode=WAL; PRAGMA synchronous=%s;",
             synchronous);
    char *err = NULL;
    if (sqlite3_exec(db, pragmas, NULL, NULL, &err) != SQLITE_OK ||
        (schema_sql && sqlite3_exec(db, schema_sql, NULL, NULL, &err) != SQLITE_OK)) {
        common_log(prog, "%s: %s", path, err ? err : sqlite3_errmsg(db));
        sqlite3_free(err);
        sqlite3_close(db);
        return NULL;
    }
    return db;
}

void make_order(int64_t id, struct order *o)
{
    memset(o, 0, sizeof *o);
    o->order_id = id;
    snprintf(o->customer, sizeof o->customer, "customer-%" PRId64, (id * 7919) % 1000);
    snprintf(o->sku, sizeof o->sku, "sku-%" PRId64, id % 20);
    o->qty = (int)(1 + id % 3);
    o->amount_cents = o->qty * 1999;
}

int order_to_json(const struct order *o, char *buf, size_t cap)
{
    return snprintf(buf, cap,
                    "{\"order_id\":%" PRId64 ",\"customer\":\"%s\",\"sku\":\"%s\",\"qty\":%d,"
                    "\"amount_cents\":%" PRId64 ",\"created_us\":%" PRId64 "}",
                    o->order_id, o->customer, o->sku, o->qty, o->amount_cents, o->created_us);
}

/* The text after "key": in the NUL-terminated json, or NULL. The payload
 * is our own format: flat, no nesting, no escapes. */
static const char *field(const char *json, const char *key)
{
    char pat[48];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(json, pat);
    return p ? p + strlen(pat) : NULL;
}

static int int_field(const char *json, const char *key, int64_t *out)
{
    const char *p = field(json, key);
    if (!p)
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(p, &end, 10);
    if (end == p || errno)
        return -1;
    *out = v;
    return 0;
}

static int str_field(const char *json, const char *key, char *out, size_t cap)
{
    const char *p = field(json, key);
    if (!p || *p != '"')
        return -1;
    p++;
    const char *q = strchr(p, '"');
    if (!q || (size_t)(q - p) >= cap)
        return -1;
    memcpy(out, p, (size_t)(q - p));
    out[q - p] = '\0';
    return 0;
}

int order_from_json(const void *payload, size_t len, struct order *o)
{
    char json[ORDER_JSON_BYTES + 1];
    if (len > ORDER_JSON_BYTES)
        return -1;
    memcpy(json, payload, len);
    json[len] = '\0';
    int64_t qty;
    memset(o, 0, sizeof *o);
    if (int_field(json, "order_id", &o->order_id) < 0 ||
        str_field(json, "customer", o->customer, sizeof o->customer) < 0 ||
        str_field(json, "sku", o->sku, sizeof o->sku) < 0 || int_field(json, "qty", &qty) < 0 ||
        int_field(json, "amount_cents", &o->amount_cents) < 0 ||
        int_field(json, "created_us", &o->created_us) < 0)
        return -1;
    o->qty = (int)qty;
    return 0;
}

int64_t common_parse_int(const char *prog, const char *opt, const char *value)
{
    char *end;
    errno = 0;
    long long v = strtoll(value, &end, 10);
    if (!*value || *end || errno || v < 0) {
        fprintf(stderr, "%s: %s wants a non-negative integer, not '%s'\n", prog, opt, value);
        exit(2);
    }
    return v;
}
