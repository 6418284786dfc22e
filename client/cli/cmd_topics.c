/*
 * cmd_topics.c - `ferry topics`: list the broker's topics.
 *
 * A table sorted by name (TOPIC, MESSAGES, BYTES, FIRST, HEAD, CREATED; the
 * time in UTC, ISO 8601), or with --json one JSON array of objects.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

enum { OPT_JSON = CLI_OPT_FIRST_COMMAND };

static const char usage_text[] =
    "Usage: ferry topics [OPTIONS]\n"
    "\n"
    "Lists the broker's topics: name, messages stored, bytes stored, first and\n"
    "last (head) sequence number, and creation time (UTC).\n"
    "\n"
    "Options:\n"
    "  --json               print a JSON array of objects with the keys topic,\n"
    "                       messages, bytes, first_seq, head_seq, created_ms\n" CLI_COMMON_HELP;

static int by_name(const void *a, const void *b)
{
    return strcmp(((const ferry_topic_info *)a)->name, ((const ferry_topic_info *)b)->name);
}

static void format_time(int64_t ms, char *buf, size_t len)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (ms <= 0 || !gmtime_r(&t, &tm) || strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(buf, len, "-");
}

static void print_json(const ferry_topic_info *t, size_t n)
{
    putchar('[');
    for (size_t i = 0; i < n; i++) {
        fputs(i ? ",{\"topic\":" : "{\"topic\":", stdout);
        cli_json_string(stdout, t[i].name, strlen(t[i].name));
        printf(",\"messages\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"first_seq\":%" PRIu64
               ",\"head_seq\":%" PRIu64 ",\"created_ms\":%" PRId64 "}",
               t[i].message_count, t[i].bytes, t[i].first_seq, t[i].head_seq, t[i].created_ms);
    }
    puts("]");
}

static int width_u64(uint64_t v)
{
    char buf[24];
    return snprintf(buf, sizeof buf, "%" PRIu64, v);
}

static void print_table(const ferry_topic_info *t, size_t n)
{
    int w_name = 5, w_msgs = 8, w_bytes = 5, w_first = 5, w_head = 4;
    for (size_t i = 0; i < n; i++) {
        int len = (int)strlen(t[i].name);
        w_name = len > w_name ? len : w_name;
#define WIDEN(w, v)                                                                                \
    do {                                                                                           \
        int x_ = width_u64(v);                                                                     \
        w = x_ > w ? x_ : w;                                                                       \
    } while (0)
        WIDEN(w_msgs, t[i].message_count);
        WIDEN(w_bytes, t[i].bytes);
        WIDEN(w_first, t[i].first_seq);
        WIDEN(w_head, t[i].head_seq);
#undef WIDEN
    }
    printf("%-*s  %*s  %*s  %*s  %*s  %s\n", w_name, "TOPIC", w_msgs, "MESSAGES", w_bytes, "BYTES",
           w_first, "FIRST", w_head, "HEAD", "CREATED");
    for (size_t i = 0; i < n; i++) {
        char created[32];
        format_time(t[i].created_ms, created, sizeof created);
        printf("%-*s  %*" PRIu64 "  %*" PRIu64 "  %*" PRIu64 "  %*" PRIu64 "  %s\n", w_name,
               t[i].name, w_msgs, t[i].message_count, w_bytes, t[i].bytes, w_first, t[i].first_seq,
               w_head, t[i].head_seq, created);
    }
}

int cmd_topics(struct cli *cli, int argc, char **argv)
{
    static const struct option longopts[] = {
        CLI_COMMON_LONGOPTS,
        {"json", no_argument, NULL, OPT_JSON},
        {NULL, 0, NULL, 0},
    };
    int json = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        if (cli_common_option(cli, opt, optarg))
            continue;
        switch (opt) {
        case 'h':
            fputs(usage_text, stdout);
            return CLI_EXIT_OK;
        case OPT_JSON:
            json = 1;
            break;
        default:
            return cli_bad_option("topics", opt, argv);
        }
    }
    if (optind < argc)
        return cli_usage_error("topics", "unexpected argument '%s'", argv[optind]);

    ferry_conn *c;
    int rc = cli_connect(cli, "topics", NULL, &c);
    if (rc != CLI_EXIT_OK)
        return rc;
    ferry_topic_info *topics;
    size_t n;
    rc = ferry_topics(c, &topics, &n);
    if (rc < 0) {
        rc = cli_fail("topics", rc, ferry_errmsg(c));
        ferry_close(c);
        return rc;
    }
    ferry_close(c);

    qsort(topics, n, sizeof *topics, by_name);
    if (json)
        print_json(topics, n);
    else
        print_table(topics, n);
    ferry_topics_free(topics);
    if (fflush(stdout) != 0)
        return cli_fail("topics", FERRY_EIO, "cannot write standard output");
    return CLI_EXIT_OK;
}
