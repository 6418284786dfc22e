/*
 * cmd_groups.c - `ferry groups [TOPIC]`: list consumer groups and their
 * progress.
 *
 * A table sorted by topic, then group (TOPIC, GROUP, CURSOR, LAG, IN_FLIGHT,
 * CONSUMERS, REDELIVERED, DEAD, OLDEST_UNACKED as a duration), or with
 * --json one JSON array of objects carrying every field.
 *
 * `ferry groups delete TOPIC --group G` deletes one group (DELETE with a
 * group) and prints `deleted group G of topic TOPIC`, or with --json
 * {"topic": ..., "group": ..., "deleted": true}.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

enum { OPT_JSON = CLI_OPT_FIRST_COMMAND, OPT_GROUP };

static const char usage_text[] =
    "Usage: ferry groups [OPTIONS] [TOPIC]\n"
    "       ferry groups delete TOPIC --group GROUP [--json]\n"
    "\n"
    "Lists the consumer groups of TOPIC, or of every topic: the cursor (next\n"
    "sequence delivered for the first time), lag (messages not yet done),\n"
    "messages in flight, live consumers, redeliveries, dead-lettered messages\n"
    "and the age of the oldest unacked delivery.\n"
    "\n"
    "'groups delete' deletes consumer group GROUP of TOPIC: its position, acks\n"
    "and dead-letter record; its subscriptions end. The topic and its messages\n"
    "stay; subscribing to GROUP again starts a new group. Needs a token with\n"
    "the admin right.\n"
    "\n"
    "Options:\n"
    "  --group GROUP        with 'groups delete': the group to delete (required)\n"
    "  --json               print a JSON array of objects with the keys topic,\n"
    "                       group, cursor, ack_floor, lag, in_flight, consumers,\n"
    "                       redelivered, dead_lettered, oldest_unacked_ms,\n"
    "                       ack_wait_ms, max_deliveries; with 'groups delete'\n"
    "                       one object with the keys topic, group and deleted\n"
    "                       (true)\n" CLI_COMMON_HELP;

static int by_topic_group(const void *a, const void *b)
{
    const ferry_group_info *x = a, *y = b;
    int d = strcmp(x->topic, y->topic);
    return d ? d : strcmp(x->group, y->group);
}

/* A short duration: "-" for 0, then 850ms, 12.3s, 4m05s, 2h03m, 3d04h. */
static void format_age(uint64_t ms, char *buf, size_t len)
{
    if (ms == 0)
        snprintf(buf, len, "-");
    else if (ms < 1000)
        snprintf(buf, len, "%" PRIu64 "ms", ms);
    else if (ms < 60000)
        snprintf(buf, len, "%" PRIu64 ".%" PRIu64 "s", ms / 1000, ms % 1000 / 100);
    else if (ms < 3600000)
        snprintf(buf, len, "%" PRIu64 "m%02" PRIu64 "s", ms / 60000, ms / 1000 % 60);
    else if (ms < 86400000)
        snprintf(buf, len, "%" PRIu64 "h%02" PRIu64 "m", ms / 3600000, ms / 60000 % 60);
    else
        snprintf(buf, len, "%" PRIu64 "d%02" PRIu64 "h", ms / 86400000, ms / 3600000 % 24);
}

json_t *cli_group_json(const ferry_group_info *g)
{
    return json_pack(
        "{s:o,s:o,s:o,s:o,s:o,s:I,s:I,s:o,s:o,s:o,s:I,s:I}", "topic",
        cli_json_str(g->topic, strlen(g->topic)), "group", cli_json_str(g->group, strlen(g->group)),
        "cursor", cli_json_u64(g->cursor), "ack_floor", cli_json_u64(g->ack_floor), "lag",
        cli_json_u64(g->lag), "in_flight", (json_int_t)g->in_flight, "consumers",
        (json_int_t)g->consumers, "redelivered", cli_json_u64(g->redelivered), "dead_lettered",
        cli_json_u64(g->dead_lettered), "oldest_unacked_ms", cli_json_u64(g->oldest_unacked_ms),
        "ack_wait_ms", (json_int_t)g->ack_wait_ms, "max_deliveries", (json_int_t)g->max_deliveries);
}

static int print_json(const ferry_group_info *g, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++) {
        json_t *o = cli_group_json(&g[i]);
        if (!o || json_array_append_new(a, o) < 0) {
            json_decref(a);
            a = NULL;
        }
    }
    return cli_json_print(a);
}

static int width_u64(uint64_t v)
{
    char buf[24];
    return snprintf(buf, sizeof buf, "%" PRIu64, v);
}

#define WIDEN(w, v)                                                                                \
    do {                                                                                           \
        int x_ = width_u64(v);                                                                     \
        w = x_ > w ? x_ : w;                                                                       \
    } while (0)

static void print_table(const ferry_group_info *g, size_t n)
{
    int w_topic = 5, w_group = 5, w_cursor = 6, w_lag = 3, w_inf = 9, w_cons = 9, w_red = 11,
        w_dead = 4;
    for (size_t i = 0; i < n; i++) {
        int len = (int)strlen(g[i].topic);
        w_topic = len > w_topic ? len : w_topic;
        len = (int)strlen(g[i].group);
        w_group = len > w_group ? len : w_group;
        WIDEN(w_cursor, g[i].cursor);
        WIDEN(w_lag, g[i].lag);
        WIDEN(w_inf, g[i].in_flight);
        WIDEN(w_cons, g[i].consumers);
        WIDEN(w_red, g[i].redelivered);
        WIDEN(w_dead, g[i].dead_lettered);
    }
    printf("%-*s  %-*s  %*s  %*s  %*s  %*s  %*s  %*s  %s\n", w_topic, "TOPIC", w_group, "GROUP",
           w_cursor, "CURSOR", w_lag, "LAG", w_inf, "IN_FLIGHT", w_cons, "CONSUMERS", w_red,
           "REDELIVERED", w_dead, "DEAD", "OLDEST_UNACKED");
    for (size_t i = 0; i < n; i++) {
        char age[32];
        format_age(g[i].oldest_unacked_ms, age, sizeof age);
        printf("%-*s  %-*s  %*" PRIu64 "  %*" PRIu64 "  %*" PRIu32 "  %*" PRIu32 "  %*" PRIu64
               "  %*" PRIu64 "  %s\n",
               w_topic, g[i].topic, w_group, g[i].group, w_cursor, g[i].cursor, w_lag, g[i].lag,
               w_inf, g[i].in_flight, w_cons, g[i].consumers, w_red, g[i].redelivered, w_dead,
               g[i].dead_lettered, age);
    }
}

static int run_delete(struct cli *cli, const char *topic, const char *group, int json)
{
    ferry_conn *c;
    int rc = cli_connect(cli, "groups delete", NULL, &c);
    if (rc != CLI_EXIT_OK)
        return rc;
    ferry_delete_result r = {.size = sizeof r};
    rc = ferry_group_delete(c, topic, group, &r);
    if (rc < 0) {
        char detail[1400];
        const char *msg = ferry_errmsg(c);
        /* The broker may say only "no such topic" or "no such consumer
         * group": name what is missing. */
        if (rc == FERRY_EUNKNOWN_TOPIC && !strstr(msg, topic)) {
            snprintf(detail, sizeof detail, "no such topic: %s", topic);
            msg = detail;
        } else if (rc == FERRY_EUNKNOWN_GROUP && !strstr(msg, group)) {
            snprintf(detail, sizeof detail, "no such consumer group: %s of topic %s", group, topic);
            msg = detail;
        }
        if (rc == FERRY_EUNKNOWN_TYPE) {
            snprintf(detail, sizeof detail, "%.1300s (a broker older than DELETE)", msg);
            msg = detail;
        }
        rc = cli_fail("groups delete", rc, msg);
        ferry_close(c);
        return rc;
    }
    ferry_close(c);

    int bad = 0;
    if (json)
        bad = cli_json_print(json_pack("{s:o,s:o,s:b}", "topic", cli_json_str(topic, strlen(topic)),
                                       "group", cli_json_str(group, strlen(group)), "deleted", 1)) <
              0;
    else
        printf("deleted group %s of topic %s\n", group, topic);
    if (fflush(stdout) != 0 || bad)
        return cli_fail("groups delete", FERRY_EIO, "cannot write standard output");
    return CLI_EXIT_OK;
}

int cmd_groups(struct cli *cli, int argc, char **argv)
{
    static const struct option longopts[] = {
        CLI_COMMON_LONGOPTS,
        {"json", no_argument, NULL, OPT_JSON},
        {"group", required_argument, NULL, OPT_GROUP},
        {NULL, 0, NULL, 0},
    };
    int json = 0;
    const char *group = NULL;
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
        case OPT_GROUP:
            group = optarg;
            break;
        default:
            return cli_bad_option("groups", opt, argv);
        }
    }
    int npos = argc - optind;
    if (npos > 0 && strcmp(argv[optind], "delete") == 0) {
        if (npos < 2)
            return cli_usage_error("groups delete", "missing TOPIC");
        if (npos > 2)
            return cli_usage_error("groups delete", "unexpected argument '%s'", argv[optind + 2]);
        if (!group)
            return cli_usage_error("groups delete", "missing --group");
        return run_delete(cli, argv[optind + 1], group, json);
    }
    if (group)
        return cli_usage_error("groups", "--group only goes with 'ferry groups delete TOPIC'");
    if (npos > 1)
        return cli_usage_error("groups", "unexpected argument '%s'", argv[optind + 1]);
    const char *topic = optind < argc ? argv[optind] : NULL;

    ferry_conn *c;
    int rc = cli_connect(cli, "groups", NULL, &c);
    if (rc != CLI_EXIT_OK)
        return rc;
    ferry_group_info *groups;
    size_t n;
    rc = ferry_groups(c, topic, &groups, &n);
    if (rc == FERRY_EUNKNOWN_TOPIC && topic && !strstr(ferry_errmsg(c), topic)) {
        /* The broker says only "no such topic": name it, as topics does. */
        char detail[300];
        snprintf(detail, sizeof detail, "no such topic: %s", topic);
        rc = cli_fail("groups", rc, detail);
        ferry_close(c);
        return rc;
    }
    if (rc < 0) {
        rc = cli_fail("groups", rc, ferry_errmsg(c));
        ferry_close(c);
        return rc;
    }
    ferry_close(c);

    qsort(groups, n, sizeof *groups, by_topic_group);
    int bad = 0;
    if (json)
        bad = print_json(groups, n) < 0;
    else
        print_table(groups, n);
    ferry_groups_free(groups);
    if (fflush(stdout) != 0 || bad)
        return cli_fail("groups", FERRY_EIO, "cannot write standard output");
    return CLI_EXIT_OK;
}
