/*
 * cmd_stats.c - `ferry stats`: a live view of the broker's topics and
 * consumer groups, refreshed every interval (like `top`).
 *
 * Each interval it lists the topics (ferry_topics) and the groups
 * (ferry_groups) and computes the rates from the previous sample, client
 * side: a topic's rate_in is Δhead_seq/Δt, a group's ack_rate is
 * Δ(head_seq − lag)/Δt, head − lag being the sequences up to the head the
 * group has done with (acked or dead-lettered), whatever its floor. A topic
 * or group not in the previous sample has no rate yet ("-", JSON null).
 *
 * On a terminal each table replaces the last (ANSI clear and home);
 * otherwise one table per interval is printed after the other. --once
 * takes two samples one interval apart, prints one table and exits. --json
 * prints one object {"topics":[...],"groups":[...]} per interval and line,
 * each entry the object `ferry topics --json` / `ferry groups --json`
 * prints plus rate_in / ack_rate. SIGINT and SIGTERM end it with status 0.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

enum { OPT_INTERVAL = CLI_OPT_FIRST_COMMAND, OPT_ONCE, OPT_JSON, OPT_TOPIC };

static const char usage_text[] =
    "Usage: ferry stats [OPTIONS]\n"
    "\n"
    "A live view of the broker, refreshed every interval: per topic the\n"
    "messages stored, the head sequence and the publish rate (RATE_IN, msg/s);\n"
    "per consumer group the lag, messages in flight, live consumers, the ack\n"
    "rate (ACK_RATE, msg/s), redeliveries and dead-lettered messages. Rates\n"
    "are measured between two samples ('-' until there are two). On a\n"
    "terminal the view is redrawn in place; otherwise one table is printed\n"
    "per interval. Ctrl-C ends it.\n"
    "\n"
    "Options:\n"
    "  --interval MS        time between samples (default 1000, 100 to 3600000)\n"
    "  --once               take two samples one interval apart, print one\n"
    "                       table and exit\n"
    "  --json               one JSON object per interval and line:\n"
    "                       {\"topics\":[...],\"groups\":[...]}, the objects of\n"
    "                       'ferry topics --json' with rate_in and of 'ferry\n"
    "                       groups --json' with ack_rate (msg/s, null without\n"
    "                       an earlier sample)\n"
    "  --topic NAME         only topic NAME and its groups\n" CLI_COMMON_HELP;

static volatile sig_atomic_t stop_signal;

static void on_stop(int sig)
{
    (void)sig;
    stop_signal = 1;
}

/* SIGINT and SIGTERM without SA_RESTART: the sleep between samples ends
 * at once. */
static int install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0)
        return -1;
    return 0;
}

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Sleeps ms, or less when a signal asks to stop. */
static void sleep_ms(uint64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (!stop_signal && nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* One sample: topics sorted by name, groups by topic then group. */
struct sample {
    int64_t at_us;
    ferry_topic_info *topics;
    size_t ntopics;
    ferry_group_info *groups;
    size_t ngroups;
};

static void sample_free(struct sample *s)
{
    ferry_topics_free(s->topics);
    ferry_groups_free(s->groups);
    memset(s, 0, sizeof *s);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const ferry_topic_info *)a)->name, ((const ferry_topic_info *)b)->name);
}

static int by_topic_group(const void *a, const void *b)
{
    const ferry_group_info *x = a, *y = b;
    int d = strcmp(x->topic, y->topic);
    return d ? d : strcmp(x->group, y->group);
}

static const ferry_topic_info *find_topic(const struct sample *s, const char *name)
{
    ferry_topic_info key;
    snprintf(key.name, sizeof key.name, "%s", name);
    return bsearch(&key, s->topics, s->ntopics, sizeof *s->topics, by_name);
}

static const ferry_group_info *find_group(const struct sample *s, const ferry_group_info *g)
{
    return bsearch(g, s->groups, s->ngroups, sizeof *s->groups, by_topic_group);
}

/* Takes a sample (only: just that topic, which must exist). Returns the
 * exit status. */
static int take(ferry_conn *c, const char *only, struct sample *s)
{
    memset(s, 0, sizeof *s);
    int rc = ferry_topics(c, &s->topics, &s->ntopics);
    if (rc < 0 && stop_signal)
        return CLI_EXIT_FAIL; /* cut short by Ctrl-C: nothing to report */
    if (rc < 0)
        return cli_fail("stats", rc, ferry_errmsg(c));
    qsort(s->topics, s->ntopics, sizeof *s->topics, by_name);
    if (only) {
        const ferry_topic_info *t = find_topic(s, only);
        if (!t) {
            char detail[300];
            snprintf(detail, sizeof detail, "no such topic: %s", only);
            sample_free(s);
            return cli_fail("stats", FERRY_EUNKNOWN_TOPIC, detail);
        }
    }
    rc = ferry_groups(c, only, &s->groups, &s->ngroups);
    if (rc < 0) {
        int status = stop_signal ? CLI_EXIT_FAIL : cli_fail("stats", rc, ferry_errmsg(c));
        ferry_topics_free(s->topics);
        s->topics = NULL;
        return status;
    }
    qsort(s->groups, s->ngroups, sizeof *s->groups, by_topic_group);
    s->at_us = mono_us();
    return CLI_EXIT_OK;
}

/* Sequences up to the topic's head the group is done with. */
static uint64_t group_done(const struct sample *s, const ferry_group_info *g)
{
    const ferry_topic_info *t = find_topic(s, g->topic);
    uint64_t head = t ? t->head_seq : g->cursor ? g->cursor - 1 : 0;
    return head > g->lag ? head - g->lag : 0;
}

/* msg/s between two counts dt_us apart. */
static double rate(uint64_t before, uint64_t now, int64_t dt_us)
{
    if (dt_us <= 0 || now < before)
        return 0;
    return (double)(now - before) * 1e6 / (double)dt_us;
}

/* A topic's or group's rate; < 0 when the earlier sample lacks it. */
static double topic_rate(const struct sample *prev, const struct sample *cur,
                         const ferry_topic_info *t)
{
    const ferry_topic_info *p = prev ? find_topic(prev, t->name) : NULL;
    return p ? rate(p->head_seq, t->head_seq, cur->at_us - prev->at_us) : -1;
}

static double group_rate(const struct sample *prev, const struct sample *cur,
                         const ferry_group_info *g)
{
    const ferry_group_info *p = prev ? find_group(prev, g) : NULL;
    return p ? rate(group_done(prev, p), group_done(cur, g), cur->at_us - prev->at_us) : -1;
}

static json_t *rate_json(double r)
{
    return r < 0 ? json_null() : json_real(round(r * 10) / 10);
}

static int only_this(const char *only, const char *name)
{
    return !only || strcmp(only, name) == 0;
}

static int print_json(const struct sample *prev, const struct sample *cur, const char *only)
{
    uint64_t *dead = cli_dead_counts(cur->topics, cur->ntopics);
    json_t *topics = json_array(), *groups = json_array();
    json_t *all = json_pack("{s:o,s:o}", "topics", topics, "groups", groups);
    int bad = !dead || !all;
    for (size_t i = 0; !bad && i < cur->ntopics; i++) {
        const ferry_topic_info *t = &cur->topics[i];
        if (!only_this(only, t->name))
            continue;
        json_t *o = cli_topic_json(t, dead[i]);
        bad = !o || cli_json_set(o, "rate_in", rate_json(topic_rate(prev, cur, t))) < 0 ||
              json_array_append_new(topics, o) < 0;
    }
    for (size_t i = 0; !bad && i < cur->ngroups; i++) {
        const ferry_group_info *g = &cur->groups[i];
        json_t *o = cli_group_json(g);
        bad = !o || cli_json_set(o, "ack_rate", rate_json(group_rate(prev, cur, g))) < 0 ||
              json_array_append_new(groups, o) < 0;
    }
    free(dead);
    if (bad) {
        json_decref(all);
        return -1;
    }
    return cli_json_print(all);
}

static void format_rate(double r, char *buf, size_t len)
{
    if (r < 0)
        snprintf(buf, len, "-");
    else
        snprintf(buf, len, "%.1f", r);
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
#define WIDEN_S(w, s)                                                                              \
    do {                                                                                           \
        int x_ = (int)strlen(s);                                                                   \
        w = x_ > w ? x_ : w;                                                                       \
    } while (0)

static void print_topics(const struct sample *prev, const struct sample *cur, const char *only)
{
    int w_name = 5, w_msgs = 8, w_head = 4, w_rate = 7;
    char r[32];
    for (size_t i = 0; i < cur->ntopics; i++) {
        const ferry_topic_info *t = &cur->topics[i];
        if (!only_this(only, t->name))
            continue;
        WIDEN_S(w_name, t->name);
        WIDEN(w_msgs, t->message_count);
        WIDEN(w_head, t->head_seq);
        format_rate(topic_rate(prev, cur, t), r, sizeof r);
        WIDEN_S(w_rate, r);
    }
    printf("%-*s  %*s  %*s  %*s\n", w_name, "TOPIC", w_msgs, "MESSAGES", w_head, "HEAD", w_rate,
           "RATE_IN");
    for (size_t i = 0; i < cur->ntopics; i++) {
        const ferry_topic_info *t = &cur->topics[i];
        if (!only_this(only, t->name))
            continue;
        format_rate(topic_rate(prev, cur, t), r, sizeof r);
        printf("%-*s  %*" PRIu64 "  %*" PRIu64 "  %*s\n", w_name, t->name, w_msgs, t->message_count,
               w_head, t->head_seq, w_rate, r);
    }
}

static void print_groups(const struct sample *prev, const struct sample *cur)
{
    int w_topic = 5, w_group = 5, w_lag = 3, w_inf = 9, w_cons = 9, w_rate = 8, w_red = 11,
        w_dead = 4;
    char r[32];
    for (size_t i = 0; i < cur->ngroups; i++) {
        const ferry_group_info *g = &cur->groups[i];
        WIDEN_S(w_topic, g->topic);
        WIDEN_S(w_group, g->group);
        WIDEN(w_lag, g->lag);
        WIDEN(w_inf, g->in_flight);
        WIDEN(w_cons, g->consumers);
        WIDEN(w_red, g->redelivered);
        WIDEN(w_dead, g->dead_lettered);
        format_rate(group_rate(prev, cur, g), r, sizeof r);
        WIDEN_S(w_rate, r);
    }
    printf("%-*s  %-*s  %*s  %*s  %*s  %*s  %*s  %*s\n", w_topic, "TOPIC", w_group, "GROUP", w_lag,
           "LAG", w_inf, "IN_FLIGHT", w_cons, "CONSUMERS", w_rate, "ACK_RATE", w_red, "REDELIVERED",
           w_dead, "DEAD");
    for (size_t i = 0; i < cur->ngroups; i++) {
        const ferry_group_info *g = &cur->groups[i];
        format_rate(group_rate(prev, cur, g), r, sizeof r);
        printf("%-*s  %-*s  %*" PRIu64 "  %*" PRIu32 "  %*" PRIu32 "  %*s  %*" PRIu64 "  %*" PRIu64
               "\n",
               w_topic, g->topic, w_group, g->group, w_lag, g->lag, w_inf, g->in_flight, w_cons,
               g->consumers, w_rate, r, w_red, g->redelivered, w_dead, g->dead_lettered);
    }
}

static void print_table(const struct sample *prev, const struct sample *cur, const char *only,
                        int redraw, int first)
{
    if (redraw)
        fputs("\033[H\033[2J", stdout);
    else if (!first)
        putchar('\n'); /* one blank line between the tables of two intervals */
    print_topics(prev, cur, only);
    putchar('\n');
    print_groups(prev, cur);
}

int cmd_stats(struct cli *cli, int argc, char **argv)
{
    static const struct option longopts[] = {
        CLI_COMMON_LONGOPTS,
        {"interval", required_argument, NULL, OPT_INTERVAL},
        {"once", no_argument, NULL, OPT_ONCE},
        {"json", no_argument, NULL, OPT_JSON},
        {"topic", required_argument, NULL, OPT_TOPIC},
        {NULL, 0, NULL, 0},
    };
    uint64_t interval = 1000;
    int once = 0, json = 0;
    const char *only = NULL;
    int opt;
    while ((opt = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        if (cli_common_option(cli, opt, optarg))
            continue;
        switch (opt) {
        case 'h':
            fputs(usage_text, stdout);
            return CLI_EXIT_OK;
        case OPT_INTERVAL: {
            int rc = cli_parse_number("stats", "--interval", optarg, 100, 3600000, &interval);
            if (rc != CLI_EXIT_OK)
                return rc;
            break;
        }
        case OPT_ONCE:
            once = 1;
            break;
        case OPT_JSON:
            json = 1;
            break;
        case OPT_TOPIC:
            if (!*optarg)
                return cli_usage_error("stats", "--topic wants a topic name");
            only = optarg;
            break;
        default:
            return cli_bad_option("stats", opt, argv);
        }
    }
    if (optind < argc)
        return cli_usage_error("stats", "unexpected argument '%s'", argv[optind]);
    if (install_signals() < 0)
        return cli_fail("stats", FERRY_EIO, strerror(errno));

    ferry_conn *c;
    int status = cli_connect(cli, "stats", NULL, &c);
    if (status != CLI_EXIT_OK)
        return status;
    int redraw = !json && !once && isatty(STDOUT_FILENO);
    struct sample prev = {0}, cur = {0};
    int first = 1;
    status = take(c, only, &prev);
    while (status == CLI_EXIT_OK && !stop_signal) {
        sleep_ms(interval);
        if (stop_signal)
            break;
        status = take(c, only, &cur);
        if (status != CLI_EXIT_OK)
            break;
        int bad = 0;
        if (json)
            bad = print_json(&prev, &cur, only) < 0;
        else
            print_table(&prev, &cur, only, redraw, first);
        first = 0;
        sample_free(&prev);
        prev = cur;
        memset(&cur, 0, sizeof cur);
        if (fflush(stdout) != 0 || bad) {
            status = errno == EPIPE ? CLI_EXIT_OK
                                    : cli_fail("stats", FERRY_EIO, "cannot write standard output");
            break;
        }
        if (once)
            break;
    }
    sample_free(&prev);
    ferry_close(c);
    /* Interrupted: a clean end, even when the signal cut a request short. */
    return stop_signal ? CLI_EXIT_OK : status;
}
