/*
 * cmd_topics.c - `ferry topics`: list the broker's topics; `ferry topics
 * set TOPIC`: set one topic's retention.
 *
 * The listing is a table sorted by name (TOPIC, MESSAGES, BYTES, FIRST,
 * HEAD, CREATED in UTC ISO 8601, RATE, DEAD, RETENTION), or with --json one
 * JSON array of objects. Every topic is listed, the broker's own `_dead.*`
 * included. DEAD is the message count of the topic's dead-letter topic
 * `_dead.<name>` when the same listing holds it, else 0. RETENTION is last
 * because it is the one column that may hold spaces ("age=7d count=10000
 * bytes=1GiB acked"); every column before it is one word.
 *
 * `set` sends TOPIC_CONFIG, which replaces all four retention settings: an
 * option not given is set to the broker's default. (The broker reports only
 * effective values, so "keep what it is" cannot be told from "the default"
 * by reading them back.) It then lists the topics again and prints the
 * topic's row.
 *
 * `delete TOPIC` sends DELETE (with --force: the topic's consumer groups
 * go with it; without, a topic that has any is refused by the broker) and
 * prints `deleted topic orders (1,204 messages, 2 consumer groups)`, or
 * with --json {"topic": ..., "deleted": true, "messages": N, "groups": N}.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

enum {
    OPT_JSON = CLI_OPT_FIRST_COMMAND,
    OPT_MAX_AGE,
    OPT_MAX_COUNT,
    OPT_MAX_BYTES,
    OPT_DELETE_ACKED,
    OPT_FORCE,
};

/* "_dead." + a topic name + NUL. */
#define DEAD_NAME_BYTES (6 + 200 + 1)
/* The largest limit: the broker keeps limits as signed 64-bit numbers, and
 * 2^64-1 on the wire means "the broker's default". */
#define LIMIT_MAX ((uint64_t)INT64_MAX)

static const char usage_text[] =
    "Usage: ferry topics [OPTIONS] [TOPIC]\n"
    "       ferry topics set TOPIC [--max-age DURATION|none|default]\n"
    "                              [--max-count N|none|default]\n"
    "                              [--max-bytes SIZE|none|default]\n"
    "                              [--delete-acked on|off|default]\n"
    "       ferry topics delete TOPIC [--force] [--json]\n"
    "\n"
    "Lists the broker's topics (the broker's own _dead.* ones included): name,\n"
    "messages and bytes stored, first and last (head) sequence number, creation\n"
    "time (UTC), publish rate (messages/s over the last 10 s), dead letters\n"
    "(messages in _dead.TOPIC) and retention (e.g. 'age=7d count=10000\n"
    "bytes=1GiB acked'; '-' when nothing is deleted; '?' from an older broker).\n"
    "With TOPIC, only that topic (an error when there is none).\n"
    "\n"
    "'topics set' replaces TOPIC's retention (creating the topic if needed) and\n"
    "prints its row. Each setting not given is set to the broker's default (its\n"
    "--retention-* options), so 'ferry topics set TOPIC' alone resets all four.\n"
    "Each takes 'none' (no limit; for --delete-acked the same as 'off') or\n"
    "'default' (the broker's default) instead of a value.\n"
    "\n"
    "'topics delete' deletes TOPIC, its dead letters (_dead.TOPIC) and its\n"
    "messages (the broker frees their space in the background) and ends its\n"
    "subscriptions; a later publish to the name starts a new topic at sequence\n"
    "1. A topic with consumer groups is refused unless --force deletes them\n"
    "too. Needs a token with the admin right.\n"
    "\n"
    "Options of 'topics set':\n"
    "  --max-age DURATION   delete messages older than this: 500ms, 30s, 15m,\n"
    "                       12h, 7d (a bare number is milliseconds)\n"
    "  --max-count N        keep at most the N newest messages\n"
    "  --max-bytes SIZE     keep at most SIZE bytes (key + headers + payload):\n"
    "                       a number of bytes, or with K, M, G, T (KiB, MiB, GiB,\n"
    "                       TiB: powers of 1024)\n"
    "  --delete-acked on|off  delete messages once every group of the topic\n"
    "                       acked them\n"
    "\n"
    "Options of 'topics delete':\n"
    "  --force              delete the topic's consumer groups with it\n"
    "\n"
    "Options:\n"
    "  --json               print a JSON array of objects with the keys topic,\n"
    "                       messages, bytes, first_seq, head_seq, created_ms,\n"
    "                       max_age_ms, max_count, max_bytes (0: no limit),\n"
    "                       delete_acked, publish_rate, dead_lettered (messages\n"
    "                       in _dead.TOPIC); with 'topics delete' one object\n"
    "                       with the keys topic, deleted (true), messages and\n"
    "                       groups (how many were deleted)\n" CLI_COMMON_HELP;

/* ----- formatting --------------------------------------------------------- */

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

/* v in the largest of the units that divides it exactly ("7d", "90m",
 * "1GiB", "1500ms"); units[] from largest to smallest, the last of factor
 * 1. */
struct unit {
    const char *name;
    uint64_t factor;
};

static const struct unit duration_units[] = {
    {"d", 86400000}, {"h", 3600000}, {"m", 60000}, {"s", 1000}, {"ms", 1},
};
static const struct unit size_units[] = {
    {"TiB", (uint64_t)1 << 40},
    {"GiB", (uint64_t)1 << 30},
    {"MiB", (uint64_t)1 << 20},
    {"KiB", (uint64_t)1 << 10},
    {"", 1},
};

static int format_exact(char *buf, size_t len, uint64_t v, const struct unit *units, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (v % units[i].factor == 0)
            return snprintf(buf, len, "%" PRIu64 "%s", v / units[i].factor, units[i].name);
    return snprintf(buf, len, "%" PRIu64, v);
}

#define N_UNITS(a) (sizeof(a) / sizeof((a)[0]))

/* The RETENTION column: "age=7d count=10000 bytes=1GiB acked", the parts
 * that apply, or "-" when nothing is deleted ("?" when unknown). */
static void format_retention(const ferry_topic_info *t, char *buf, size_t len)
{
    if (!t->has_retention) {
        snprintf(buf, len, "?");
        return;
    }
    size_t used = 0;
    buf[0] = '\0';
#define PART(...)                                                                                  \
    do {                                                                                           \
        if (used > 0 && used < len)                                                                \
            buf[used++] = ' ';                                                                     \
        if (used < len) {                                                                          \
            int n_ = snprintf(buf + used, len - used, __VA_ARGS__);                                \
            used += n_ > 0 ? (size_t)n_ : 0;                                                       \
        }                                                                                          \
    } while (0)
    char v[32];
    if (t->max_age_ms) {
        format_exact(v, sizeof v, t->max_age_ms, duration_units, N_UNITS(duration_units));
        PART("age=%s", v);
    }
    if (t->max_count)
        PART("count=%" PRIu64, t->max_count);
    if (t->max_bytes) {
        format_exact(v, sizeof v, t->max_bytes, size_units, N_UNITS(size_units));
        PART("bytes=%s", v);
    }
    if (t->delete_acked)
        PART("acked");
#undef PART
    if (used == 0)
        snprintf(buf, len, "-");
    else if (used >= len)
        buf[len - 1] = '\0';
}

/* The number of messages in each topic's dead-letter topic, when the
 * listing (sorted by name) holds it. */
uint64_t *cli_dead_counts(const ferry_topic_info *t, size_t n)
{
    uint64_t *dead = calloc(n ? n : 1, sizeof *dead);
    if (!dead)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        ferry_topic_info key;
        int len = snprintf(key.name, sizeof key.name, "_dead.%s", t[i].name);
        if (len < 0 || (size_t)len >= sizeof key.name)
            continue; /* no dead-letter topic for a name this long */
        const ferry_topic_info *d = bsearch(&key, t, n, sizeof *t, by_name);
        if (d)
            dead[i] = d->message_count;
    }
    return dead;
}

json_t *cli_topic_json(const ferry_topic_info *t, uint64_t dead)
{
    json_t *o =
        json_pack("{s:o,s:o,s:o,s:o,s:o,s:I}", "topic", cli_json_str(t->name, strlen(t->name)),
                  "messages", cli_json_u64(t->message_count), "bytes", cli_json_u64(t->bytes),
                  "first_seq", cli_json_u64(t->first_seq), "head_seq", cli_json_u64(t->head_seq),
                  "created_ms", (json_int_t)t->created_ms);
    if (!o)
        return NULL;
    int rc;
    if (t->has_retention)
        rc = cli_json_set(o, "max_age_ms", cli_json_u64(t->max_age_ms)) |
             cli_json_set(o, "max_count", cli_json_u64(t->max_count)) |
             cli_json_set(o, "max_bytes", cli_json_u64(t->max_bytes)) |
             cli_json_set(o, "delete_acked", json_boolean(t->delete_acked)) |
             cli_json_set(o, "publish_rate", cli_json_u64(t->publish_rate));
    else
        rc = cli_json_set(o, "max_age_ms", json_null()) |
             cli_json_set(o, "max_count", json_null()) | cli_json_set(o, "max_bytes", json_null()) |
             cli_json_set(o, "delete_acked", json_null()) |
             cli_json_set(o, "publish_rate", json_null());
    rc |= cli_json_set(o, "dead_lettered", cli_json_u64(dead));
    if (rc) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* Every topic, or with only just that one. */
static int print_json(const ferry_topic_info *t, const uint64_t *dead, size_t n, const char *only)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++) {
        if (only && strcmp(t[i].name, only) != 0)
            continue;
        json_t *o = cli_topic_json(&t[i], dead[i]);
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

static void format_rate(const ferry_topic_info *t, char *buf, size_t len)
{
    if (t->has_retention)
        snprintf(buf, len, "%" PRIu64, t->publish_rate);
    else
        snprintf(buf, len, "?");
}

/* The table; with only, just that topic's row (widths from it alone). */
static void print_table(const ferry_topic_info *t, const uint64_t *dead, size_t n, const char *only)
{
    int w_name = 5, w_msgs = 8, w_bytes = 5, w_first = 5, w_head = 4, w_created = 7, w_rate = 4,
        w_dead = 4;
    for (size_t i = 0; i < n; i++) {
        if (only && strcmp(t[i].name, only) != 0)
            continue;
        int len = (int)strlen(t[i].name);
        char buf[32];
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
        WIDEN(w_dead, dead[i]);
#undef WIDEN
        format_time(t[i].created_ms, buf, sizeof buf);
        len = (int)strlen(buf);
        w_created = len > w_created ? len : w_created;
        format_rate(&t[i], buf, sizeof buf);
        len = (int)strlen(buf);
        w_rate = len > w_rate ? len : w_rate;
    }
    printf("%-*s  %*s  %*s  %*s  %*s  %-*s  %*s  %*s  %s\n", w_name, "TOPIC", w_msgs, "MESSAGES",
           w_bytes, "BYTES", w_first, "FIRST", w_head, "HEAD", w_created, "CREATED", w_rate, "RATE",
           w_dead, "DEAD", "RETENTION");
    for (size_t i = 0; i < n; i++) {
        if (only && strcmp(t[i].name, only) != 0)
            continue;
        char created[32], rate[32], retention[128];
        format_time(t[i].created_ms, created, sizeof created);
        format_rate(&t[i], rate, sizeof rate);
        format_retention(&t[i], retention, sizeof retention);
        printf("%-*s  %*" PRIu64 "  %*" PRIu64 "  %*" PRIu64 "  %*" PRIu64 "  %-*s  %*s  %*" PRIu64
               "  %s\n",
               w_name, t[i].name, w_msgs, t[i].message_count, w_bytes, t[i].bytes, w_first,
               t[i].first_seq, w_head, t[i].head_seq, w_created, created, w_rate, rate, w_dead,
               dead[i], retention);
    }
}

/* Lists the topics and prints them (only: just that one, which must be
 * listed; asked: the user named it, so its absence is "no such topic"
 * rather than a broker that does not list what it just made). Returns the
 * exit status. */
static int list(ferry_conn *c, const char *what, int json, const char *only, int asked)
{
    ferry_topic_info *topics;
    size_t n;
    int rc = ferry_topics(c, &topics, &n);
    if (rc < 0)
        return cli_fail(what, rc, ferry_errmsg(c));

    qsort(topics, n, sizeof *topics, by_name);
    uint64_t *dead = cli_dead_counts(topics, n);
    if (!dead) {
        ferry_topics_free(topics);
        return cli_fail(what, FERRY_ENOMEM, "");
    }
    int status = CLI_EXIT_OK;
    if (only) {
        ferry_topic_info key;
        snprintf(key.name, sizeof key.name, "%s", only);
        if (!bsearch(&key, topics, n, sizeof *topics, by_name)) {
            char detail[300];
            if (asked) {
                snprintf(detail, sizeof detail, "no such topic: %s", only);
                status = cli_fail(what, FERRY_EUNKNOWN_TOPIC, detail);
            } else {
                snprintf(detail, sizeof detail, "the broker does not list topic %s", only);
                status = cli_fail(what, FERRY_EPROTOCOL, detail);
            }
        }
    }
    int bad = 0;
    if (status == CLI_EXIT_OK) {
        if (json)
            bad = print_json(topics, dead, n, only) < 0;
        else
            print_table(topics, dead, n, only);
    }
    free(dead);
    ferry_topics_free(topics);
    if (status == CLI_EXIT_OK && (fflush(stdout) != 0 || bad))
        return cli_fail(what, FERRY_EIO, "cannot write standard output");
    return status;
}

/* ----- topics set ------------------------------------------------------------ */

/* One retention setting as given: NULL when absent (the broker's default). */
struct set_opts {
    const char *max_age, *max_count, *max_bytes, *delete_acked;
};

/* "none" -> 0, "default" -> FERRY_RETENTION_DEFAULT; else 1 (a value to
 * parse). */
static int keyword(const char *arg, uint64_t *out)
{
    if (strcmp(arg, "none") == 0) {
        *out = 0;
        return 0;
    }
    if (strcmp(arg, "default") == 0) {
        *out = FERRY_RETENTION_DEFAULT;
        return 0;
    }
    return 1;
}

/* A number followed by one of units[] (exact names; none when a unit ""
 * is listed), 1..LIMIT_MAX in all. Returns 0, -2 for a zero, else -1. */
static int parse_with_unit(const char *arg, const struct unit *units, size_t n, uint64_t *out)
{
    if (arg[0] < '0' || arg[0] > '9')
        return -1;
    char *end;
    unsigned long long v = strtoull(arg, &end, 10);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(end, units[i].name) != 0)
            continue;
        if (v == 0)
            return -2;
        if (v > LIMIT_MAX / units[i].factor)
            return -1;
        *out = v * units[i].factor;
        return 0;
    }
    return -1;
}

static const struct unit duration_in[] = {
    {"", 1}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000},
};
static const struct unit size_in[] = {
    {"", 1},
    {"K", (uint64_t)1 << 10},
    {"KiB", (uint64_t)1 << 10},
    {"M", (uint64_t)1 << 20},
    {"MiB", (uint64_t)1 << 20},
    {"G", (uint64_t)1 << 30},
    {"GiB", (uint64_t)1 << 30},
    {"T", (uint64_t)1 << 40},
    {"TiB", (uint64_t)1 << 40},
};
static const struct unit count_in[] = {{"", 1}};

/* Parses one limit option; a usage error when it is not right. */
static int parse_limit(const char *opt, const char *arg, const struct unit *units, size_t n,
                       const char *want, uint64_t *out)
{
    if (keyword(arg, out) == 0)
        return CLI_EXIT_OK;
    int rc = parse_with_unit(arg, units, n, out);
    if (rc == 0)
        return CLI_EXIT_OK;
    if (rc == -2)
        return cli_usage_error("topics set", "%s %s: say 'none' for no limit", opt, arg);
    return cli_usage_error("topics set", "%s wants %s, 'none' or 'default', not '%s'", opt, want,
                           arg);
}

static int parse_set(const struct set_opts *o, ferry_retention *r)
{
    r->max_age_ms = r->max_count = r->max_bytes = FERRY_RETENTION_DEFAULT;
    r->delete_acked = FERRY_DELETE_ACKED_DEFAULT;
    int rc;
    if (o->max_age &&
        (rc = parse_limit("--max-age", o->max_age, duration_in, N_UNITS(duration_in),
                          "a duration (500ms, 30s, 15m, 12h, 7d)", &r->max_age_ms)) != CLI_EXIT_OK)
        return rc;
    if (o->max_count && (rc = parse_limit("--max-count", o->max_count, count_in, N_UNITS(count_in),
                                          "a number", &r->max_count)) != CLI_EXIT_OK)
        return rc;
    if (o->max_bytes &&
        (rc = parse_limit("--max-bytes", o->max_bytes, size_in, N_UNITS(size_in),
                          "a size (1000000, 512K, 64MiB, 1G)", &r->max_bytes)) != CLI_EXIT_OK)
        return rc;
    if (o->delete_acked) {
        if (strcmp(o->delete_acked, "on") == 0)
            r->delete_acked = 1;
        else if (strcmp(o->delete_acked, "off") == 0 || strcmp(o->delete_acked, "none") == 0)
            r->delete_acked = 0;
        else if (strcmp(o->delete_acked, "default") != 0)
            return cli_usage_error(
                "topics set", "--delete-acked wants on, off or default, not '%s'", o->delete_acked);
    }
    return CLI_EXIT_OK;
}

static int run_set(struct cli *cli, const char *topic, const ferry_retention *r, int json)
{
    ferry_conn *c;
    int rc = cli_connect(cli, "topics set", NULL, &c);
    if (rc != CLI_EXIT_OK)
        return rc;
    rc = ferry_topic_config(c, topic, r);
    if (rc < 0) {
        rc = cli_fail("topics set", rc, ferry_errmsg(c));
        ferry_close(c);
        return rc;
    }
    rc = list(c, "topics set", json, topic, 0);
    ferry_close(c);
    return rc;
}

/* ----- topics delete ---------------------------------------------------------- */

/* v with a comma between each group of three digits: "1,204". */
static void format_count(uint64_t v, char *buf, size_t len)
{
    char digits[24];
    int n = snprintf(digits, sizeof digits, "%" PRIu64, v);
    size_t o = 0;
    for (int i = 0; i < n && o + 2 < len; i++) {
        if (i > 0 && (n - i) % 3 == 0)
            buf[o++] = ',';
        buf[o++] = digits[i];
    }
    buf[o] = '\0';
}

static int run_delete(struct cli *cli, const char *topic, int force, int json)
{
    ferry_conn *c;
    int rc = cli_connect(cli, "topics delete", NULL, &c);
    if (rc != CLI_EXIT_OK)
        return rc;
    ferry_delete_result r = {.size = sizeof r};
    rc = ferry_topic_delete(c, topic, force ? FERRY_DELETE_FORCE : 0, &r);
    if (rc < 0) {
        char detail[1400];
        const char *msg = ferry_errmsg(c);
        if (rc == FERRY_EUNKNOWN_TOPIC && !strstr(msg, topic)) {
            /* The broker says only "no such topic": name it. */
            snprintf(detail, sizeof detail, "no such topic: %s", topic);
            msg = detail;
        }
        if (rc == FERRY_EUNKNOWN_TYPE) {
            snprintf(detail, sizeof detail, "%.1300s (a broker older than DELETE)", msg);
            msg = detail;
        }
        rc = cli_fail("topics delete", rc, msg);
        ferry_close(c);
        return rc;
    }
    ferry_close(c);

    int bad = 0;
    if (json) {
        json_t *o =
            json_pack("{s:o,s:b,s:o,s:I}", "topic", cli_json_str(topic, strlen(topic)), "deleted",
                      1, "messages", cli_json_u64(r.messages), "groups", (json_int_t)r.groups);
        bad = cli_json_print(o) < 0;
    } else {
        char msgs[32];
        format_count(r.messages, msgs, sizeof msgs);
        printf("deleted topic %s (%s message%s, %" PRIu32 " consumer group%s)\n", topic, msgs,
               r.messages == 1 ? "" : "s", r.groups, r.groups == 1 ? "" : "s");
    }
    if (fflush(stdout) != 0 || bad)
        return cli_fail("topics delete", FERRY_EIO, "cannot write standard output");
    return CLI_EXIT_OK;
}

/* ----- the command ------------------------------------------------------------ */

int cmd_topics(struct cli *cli, int argc, char **argv)
{
    static const struct option longopts[] = {
        CLI_COMMON_LONGOPTS,
        {"json", no_argument, NULL, OPT_JSON},
        {"max-age", required_argument, NULL, OPT_MAX_AGE},
        {"max-count", required_argument, NULL, OPT_MAX_COUNT},
        {"max-bytes", required_argument, NULL, OPT_MAX_BYTES},
        {"delete-acked", required_argument, NULL, OPT_DELETE_ACKED},
        {"force", no_argument, NULL, OPT_FORCE},
        {NULL, 0, NULL, 0},
    };
    int json = 0, force = 0;
    struct set_opts so = {0};
    const char *set_opt = NULL; /* the first set option seen, for errors */
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
        case OPT_MAX_AGE:
            so.max_age = optarg;
            set_opt = set_opt ? set_opt : "--max-age";
            break;
        case OPT_MAX_COUNT:
            so.max_count = optarg;
            set_opt = set_opt ? set_opt : "--max-count";
            break;
        case OPT_MAX_BYTES:
            so.max_bytes = optarg;
            set_opt = set_opt ? set_opt : "--max-bytes";
            break;
        case OPT_DELETE_ACKED:
            so.delete_acked = optarg;
            set_opt = set_opt ? set_opt : "--delete-acked";
            break;
        case OPT_FORCE:
            force = 1;
            break;
        default:
            return cli_bad_option("topics", opt, argv);
        }
    }

    int npos = argc - optind;
    if (npos > 0 && strcmp(argv[optind], "delete") == 0) {
        if (set_opt)
            return cli_usage_error("topics delete", "%s only goes with 'ferry topics set TOPIC'",
                                   set_opt);
        if (npos < 2)
            return cli_usage_error("topics delete", "missing TOPIC");
        if (npos > 2)
            return cli_usage_error("topics delete", "unexpected argument '%s'", argv[optind + 2]);
        return run_delete(cli, argv[optind + 1], force, json);
    }
    if (force)
        return cli_usage_error("topics", "--force only goes with 'ferry topics delete TOPIC'");
    if (npos > 0 && strcmp(argv[optind], "set") == 0) {
        if (npos < 2)
            return cli_usage_error("topics set", "missing TOPIC");
        if (npos > 2)
            return cli_usage_error("topics set", "unexpected argument '%s'", argv[optind + 2]);
        ferry_retention r;
        int rc = parse_set(&so, &r);
        if (rc != CLI_EXIT_OK)
            return rc;
        return run_set(cli, argv[optind + 1], &r, json);
    }
    if (npos > 1)
        return cli_usage_error("topics", "unexpected argument '%s'", argv[optind + 1]);
    if (set_opt)
        return cli_usage_error("topics", "%s only goes with 'ferry topics set TOPIC'", set_opt);

    ferry_conn *c;
    int rc = cli_connect(cli, "topics", NULL, &c);
    if (rc != CLI_EXIT_OK)
        return rc;
    rc = list(c, "topics", json, npos == 1 ? argv[optind] : NULL, 1);
    ferry_close(c);
    return rc;
}
