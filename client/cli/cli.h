/*
 * cli.h - what the `ferry` command-line tool's files share.
 *
 * main.c owns the command table and the global options; each command lives
 * in its own cmd_<name>.c and is one `int cmd_<name>(struct cli *, argc,
 * argv)` returning the process exit status. Commands accept the global
 * options after their name too (`ferry pub --server H:P t x`), through
 * CLI_COMMON_LONGOPTS and cli_common_option().
 *
 * Exit statuses: 0 success, 1 a runtime or broker error, 2 a usage error.
 * Error lines: `ferry: <what>: <ferry_strerror>(: <detail>)`, one per error.
 */
#ifndef FERRY_CLI_H
#define FERRY_CLI_H

#include <getopt.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "ferry.h"

#define CLI_EXIT_OK 0
#define CLI_EXIT_FAIL 1
#define CLI_EXIT_USAGE 2

/* The global options, resolved: server is never NULL. */
struct cli {
    const char *server;     /* --server, else $FERRY_SERVER, else FERRY_DEFAULT_SERVER */
    const char *token_file; /* --token-file, NULL for none */
};

/* Long-option values outside the range of short options. */
enum {
    CLI_OPT_SERVER = 0x100,
    CLI_OPT_TOKEN_FILE,
    CLI_OPT_FIRST_COMMAND /* commands number their own options from here */
};

/* Every command's getopt_long table starts with these. */
/* clang-format off */
#define CLI_COMMON_LONGOPTS                                                    \
    {"server", required_argument, NULL, CLI_OPT_SERVER},                       \
    {"token-file", required_argument, NULL, CLI_OPT_TOKEN_FILE},               \
    {"help", no_argument, NULL, 'h'}
/* clang-format on */

/* Help text for the common options, for command usage messages. */
#define CLI_COMMON_HELP                                                                            \
    "  --server HOST:PORT   broker address (default $FERRY_SERVER or " FERRY_DEFAULT_SERVER ")\n"  \
    "  --token-file PATH    read the auth token from PATH\n"                                       \
    "  -h, --help           show this help\n"

typedef int (*cli_command_fn)(struct cli *cli, int argc, char **argv);

/* Applies a common option returned by getopt_long. Returns 1 when opt was
 * one (handled), 0 otherwise. */
int cli_common_option(struct cli *cli, int opt, const char *arg);

/* Reports getopt_long's '?' or ':' for command cmd; returns CLI_EXIT_USAGE. */
int cli_bad_option(const char *cmd, int opt, char **argv);

/* Prints `ferry: <cmd>: <message> (see 'ferry <cmd> --help')`; returns
 * CLI_EXIT_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Prints `ferry: <what>: <ferry_strerror(err)>: <detail>` (the detail part
 * only when detail is not empty); returns CLI_EXIT_FAIL. */
int cli_fail(const char *what, int err, const char *detail);

/* Connects to cli->server with the token file's token, naming the client
 * "ferry <cmd>". On failure prints the error and returns CLI_EXIT_FAIL. */
int cli_connect(const struct cli *cli, const char *cmd, const ferry_options *base,
                ferry_conn **out);

/* JSON output is built with jansson and printed one value per line. */

/* A JSON string of s[0..len): the bytes as they are when valid UTF-8, else
 * with each invalid byte replaced by U+FFFD (jansson takes only UTF-8).
 * NULL when out of memory. */
json_t *cli_json_str(const void *s, size_t len);

/* A JSON integer of v (capped at 2^63-1, the largest jansson holds). */
json_t *cli_json_u64(uint64_t v);

/* A JSON string of data[0..len) in standard base64 (RFC 4648, padded). */
json_t *cli_json_base64(const void *data, size_t len);

/* json_object_set_new, failing (-1) when value is NULL. */
int cli_json_set(json_t *obj, const char *key, json_t *value);

/* Writes v compact (keys in insertion order) and a newline to stdout and
 * releases v. Returns 0, or -1 when v is NULL or the write failed. */
int cli_json_print(json_t *v);

/* A delivery as `ferry sub` and `ferry peek` print it (cmd_sub.c): "SEQ\tPAYLOAD"
 * with each newline written as the two characters \n; or one JSON object
 * (docs/CLI.md), without group, attempt and redelivered when d->group is
 * NULL (a peeked message). The JSON one returns 0 or -1. */
void cli_print_delivery(const ferry_delivery *d);

/* The commands that run until a signal (sub, peek, dead replay): SIGINT and
 * SIGTERM set cli_stop_signal (a second one ends the process at once) and
 * SIGPIPE is ignored. Returns 0, or -1 with errno set. */
extern volatile sig_atomic_t cli_stop_signal;
int cli_catch_stop_signals(void);
int cli_print_delivery_json(const ferry_delivery *d);

/* 1 when s[0..len) is valid UTF-8. */
int cli_utf8_valid(const void *s, size_t len);

/* Parses a position in a topic, as --from and --to take it:
 *   earliest | latest       the oldest stored message | only new ones
 *   SEQ                     a sequence number, 1 or more
 *   MSms                    a time in Unix milliseconds ("1767225600000ms")
 *   YYYY-MM-DDTHH:MM:SS[.fff]Z, YYYY-MM-DD   a time in UTC (ISO 8601)
 * Returns 0 with *start and *value set, or -1. */
int cli_parse_position(const char *arg, ferry_start *start, uint64_t *value);

/* Parses a decimal number in [min, max] given to option opt of command cmd
 * (no sign, no suffix). Returns CLI_EXIT_OK with *out set, or prints a
 * usage error and returns CLI_EXIT_USAGE. */
int cli_parse_number(const char *cmd, const char *opt, const char *arg, uint64_t min, uint64_t max,
                     uint64_t *out);

/* Help text describing the positions above, for usage messages. */
#define CLI_POSITION_HELP                                                                          \
    "POSITION is earliest, latest, a sequence number (42), a UTC time in\n"                        \
    "ISO 8601 (2026-11-27T04:00:00Z, 2026-11-27T04:00:00.250Z, 2026-11-27)\n"                      \
    "or Unix milliseconds with an ms suffix (1795752000000ms).\n"

/* What `ferry topics --json` and `ferry groups --json` print for one
 * topic or group (cmd_topics.c, cmd_groups.c; `ferry stats` adds to them).
 * dead: the message count of the topic's _dead.<name>. NULL when out of
 * memory. */
json_t *cli_topic_json(const ferry_topic_info *t, uint64_t dead);
json_t *cli_group_json(const ferry_group_info *g);

/* The message count of each topic's dead-letter topic _dead.<name> when
 * the listing t (sorted by name with strcmp) holds it, else 0: an array of
 * n, to free(). NULL when out of memory. */
uint64_t *cli_dead_counts(const ferry_topic_info *t, size_t n);

/* The commands. */
int cmd_pub(struct cli *cli, int argc, char **argv);
int cmd_sub(struct cli *cli, int argc, char **argv);
int cmd_peek(struct cli *cli, int argc, char **argv);
int cmd_topics(struct cli *cli, int argc, char **argv);
int cmd_groups(struct cli *cli, int argc, char **argv);
int cmd_seek(struct cli *cli, int argc, char **argv);
int cmd_dead(struct cli *cli, int argc, char **argv);
int cmd_relay(struct cli *cli, int argc, char **argv);
int cmd_stats(struct cli *cli, int argc, char **argv);
int cmd_bench(struct cli *cli, int argc, char **argv);

#endif /* FERRY_CLI_H */
