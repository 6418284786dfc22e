/*
 * consumer.h - the loop both consuming services run: connect to ferryd
 * (again and again while it is down), join the consumer group, and hand
 * what arrives to ferry_inbox_handle_batch with the service's handler, so that
 * each order's effect is applied exactly once in the service's database.
 * Every so often it purges the inbox: the claims below the group's durable
 * ack floor that the broker reports (ferry_inbox_purge_acked), and those
 * older than the window ferry_inbox_window_ms derives from the
 * subscription's settings.
 *
 * With --pg CONNINFO (when built with libpq) the service's tables and its
 * inbox are in PostgreSQL, in the schema --schema names (default: the
 * group's name), and each delivery goes through ferry_pg_inbox_handle
 * (one transaction each); the purges are ferry_pg_inbox_purge_acked and
 * ferry_pg_inbox_purge. A lost Postgres connection is made again with the
 * same backoff as the broker's.
 */
#ifndef ORDERS_CONSUMER_H
#define ORDERS_CONSUMER_H

#include <stdint.h>

#include <ferry.h>
#include <sqlite3.h>

/* A test hook: when set (to anything), the service _exit(8)s as soon as a
 * delivery arrives, before handling it (test_story's dead-letter phase). */
#define CONSUMER_TEST_EXIT_ON_RECEIVE_ENV "ORDERS_TEST_EXIT_ON_RECEIVE"

struct consumer_cfg {
    /* Set by the service. */
    const char *prog;
    const char *group;      /* default group name (--group overrides) */
    const char *schema_sql; /* the service's own tables */
    const char *count_sql;  /* SELECT count(*) of the effects applied so far */
    ferry_inbox_handler handler;
    void *handler_ctx;
    /* The same for --pg: the tables (run with search_path set to the
     * schema, so unqualified), and the handler, which runs inside
     * ferry_pg_inbox_handle's transaction. */
    const char *pg_schema_sql;
    ferry_pg_inbox_handler pg_handler;

    /* From the command line (consumer_parse_args). */
    const char *server;
    const char *db_path;
    const char *pg_conninfo; /* --pg (then db_path is NULL) */
    const char *pg_schema;   /* --schema; default: the group's name */
    const char *topic;
    const char *synchronous;
    uint32_t window;
    uint32_t ack_wait_ms;
    uint16_t max_deliveries;
    uint32_t retry_delay_ms;
    int64_t purge_window_ms; /* 0: ferry_inbox_window_ms's rule */
    int purge_every_ms;
    int64_t until; /* exit once count_sql reaches it; 0: run until a signal */
};

/* Fills cfg's command-line part from argv (exits on --help or a usage
 * error); about is the service's one-paragraph description for --help. */
void consumer_parse_args(struct consumer_cfg *cfg, int argc, char **argv, const char *about);

/* Runs the service until SIGINT/SIGTERM or --until. Returns the exit
 * status: 0, or 1 when the database could not be opened. */
int consumer_run(const struct consumer_cfg *cfg);

#endif /* ORDERS_CONSUMER_H */
