/*
 * bench_cmds.c - `ferry bench consume`, `ferry bench e2e` and `ferry bench
 * backlog`: command lines, orchestration and output.
 *
 * consume  fills a topic (untimed), then C consumers of one group receive
 *          and ack all of it: consume+ack messages/s, and a check that
 *          every sequence arrived exactly once.
 * e2e      a publisher at a steady rate and one caught-up consumer:
 *          publish -> delivery latency percentiles.
 * backlog  publish and consume+ack rates on an empty topic, then on a topic
 *          holding N messages another group never consumed: the ratios
 *          say whether cost per message grows with the backlog.
 *
 * Text output by default; --json prints one flat object that bench/run.sh
 * reads with sed.
 */
#include "bench_internal.h"

#include <ferry.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CMD_MAX_MESSAGES ((size_t)100000000)
#define CMD_MAX_SIZE ((size_t)16 * 1024 * 1024)
#define CMD_MAX_CONSUMERS 256
#define CMD_MAX_SUB_WINDOW 65535
/* No delivery for this long ends a consume run as failed. */
#define CMD_STALL_MS 30000
/* The targets (2-core machine, --sync full). */
#define TARGET_CONSUME_1 150000.0
#define TARGET_E2E_P99_US 2000.0
#define TARGET_BACKLOG_RATIO 0.90

/* ---- consume ----------------------------------------------------------- */

static void consume_usage(FILE *f)
{
    fprintf(f,
            "usage: ferry bench consume [options]\n"
            "\n"
            "Publishes N messages (pipelined, untimed), then C consumers, one connection\n"
            "each, all in one group starting at the first of them, receive and ack them\n"
            "(pipelined acks) until the group has them all. Reports consume+ack\n"
            "messages/s, from the first delivery to the broker's answer to the last ack,\n"
            "and checks that every sequence arrived: duplicates and missing are counted.\n"
            "\n"
            "  --server HOST:PORT  broker address (default $FERRY_SERVER, else %s)\n"
            "  --topic T           topic (default bench-consume)\n"
            "  --messages N        messages to consume (default 200000)\n"
            "  --size S            payload bytes per message (default 100)\n"
            "  --consumers C       consumer threads, one connection each (default 1)\n"
            "  --window W          each subscription's max in flight, 1..65535 (default 1000);\n"
            "                      also the fill's publish window\n"
            "  --group G           the consumer group (default: a fresh unique name)\n"
            "  --no-fill           publish nothing: consume the N oldest messages of T\n"
            "  --keep              keep the topic and the group at the end; by default\n"
            "                      the run deletes the topic when it created it, else\n"
            "                      the group when it created that\n"
            "  --json              print one JSON object instead of text\n",
            FERRY_DEFAULT_SERVER);
}

struct consume_opts {
    const char *server, *topic, *group;
    size_t messages, size, consumers, window;
    int no_fill, json, keep;
};

static void print_consume_json(const struct consume_opts *o, const struct bench_fill_result *fill,
                               const struct bench_consume_result *r, uint64_t first_seq)
{
    printf("{\"bench\":\"consume\",\"server\":");
    bench_json_string(o->server);
    printf(",\"topic\":");
    bench_json_string(o->topic);
    printf(",\"group\":");
    bench_json_string(o->group);
    printf(",\"messages\":%zu,\"size\":%zu,\"consumers\":%zu,\"window\":%zu,\"filled\":%s",
           o->messages, o->size, o->consumers, o->window, o->no_fill ? "false" : "true");
    if (!o->no_fill) {
        printf(",\"fill_s\":%.6f,\"fill_msgs_per_s\":%.1f", fill->wall_s,
               fill->wall_s > 0 ? (double)fill->acked / fill->wall_s : 0.0);
    }
    printf(",\"first_seq\":%llu,\"msgs_per_s\":%.1f,\"mb_per_s\":%.3f,\"wall_s\":%.6f",
           (unsigned long long)first_seq, r->msgs_per_s, r->msgs_per_s * (double)o->size / 1e6,
           r->wall_s);
    printf(",\"deliveries\":%zu,\"distinct\":%zu,\"duplicates\":%zu,\"missing\":%zu,"
           "\"redelivered\":%zu,\"outside\":%zu,\"min_share\":%zu,\"max_share\":%zu",
           r->deliveries, r->distinct, r->duplicates, r->missing, r->redelivered, r->outside,
           r->min_share, r->max_share);
    if (r->have_group) {
        printf(",\"group_floor\":%llu,\"group_lag\":%llu,\"group_in_flight\":%u",
               (unsigned long long)r->group_floor, (unsigned long long)r->group_lag,
               (unsigned)r->group_in_flight);
    }
    if (r->error[0] != '\0') {
        printf(",\"error\":");
        bench_json_string(r->error);
    }
    printf("}\n");
}

static void print_consume_human(const struct consume_opts *o, const struct bench_fill_result *fill,
                                const struct bench_consume_result *r, uint64_t first_seq)
{
    char a[64], b[64];
    printf("ferry bench consume: %zu msgs x %zu B, %zu consumer(s), window %zu, topic %s, group "
           "%s\n",
           o->messages, o->size, o->consumers, o->window, o->topic, o->group);
    if (!o->no_fill) {
        printf("  fill         %s msgs in %.2f s (%s msg/s, untimed), seqs %llu..%llu\n",
               bench_fmt_thousands((double)fill->acked, a, sizeof a), fill->wall_s,
               bench_fmt_thousands(fill->wall_s > 0 ? (double)fill->acked / fill->wall_s : 0, b,
                                   sizeof b),
               (unsigned long long)fill->first_seq, (unsigned long long)fill->last_seq);
    }
    printf("  consume+ack  %s msg/s   %.1f MB/s   (%s msgs, first delivery -> last ack %.3f s)\n",
           bench_fmt_thousands(r->msgs_per_s, a, sizeof a), r->msgs_per_s * (double)o->size / 1e6,
           bench_fmt_thousands((double)r->distinct, b, sizeof b), r->wall_s);
    printf("  check        seqs %llu..%llu: %zu received, %zu missing, %zu duplicates, %zu "
           "redelivered",
           (unsigned long long)first_seq, (unsigned long long)(first_seq + o->messages - 1),
           r->distinct, r->missing, r->duplicates, r->redelivered);
    if (r->outside > 0) {
        printf(", %zu outside the range", r->outside);
    }
    printf("\n");
    if (o->consumers > 1) {
        printf("  share        %zu .. %zu deliveries per consumer (", r->min_share, r->max_share);
        for (size_t i = 0; i < o->consumers && i < BENCH_SHARES; i++) {
            printf("%s%zu", i > 0 ? " " : "", r->share[i]);
        }
        printf("%s)\n", o->consumers > BENCH_SHARES ? " ..." : "");
    }
    if (r->have_group) {
        printf("  group        ack floor %llu, lag %llu, in flight %u (after the run)\n",
               (unsigned long long)r->group_floor, (unsigned long long)r->group_lag,
               (unsigned)r->group_in_flight);
    }
    if (o->consumers == 1) {
        printf("  target       >= %s msg/s with one consumer (--sync full): %s\n",
               bench_fmt_thousands(TARGET_CONSUME_1, a, sizeof a),
               r->msgs_per_s >= TARGET_CONSUME_1 ? "ok" : "MISSED");
    }
    if (r->error[0] != '\0') {
        printf("  FAILED       %s\n", r->error);
    }
}

static int consume_body(struct consume_opts o);

int bench_consume_main(int argc, char **argv)
{
    char group[128];
    bench_unique_name("bench-consume", group, sizeof group);
    struct consume_opts o = {
        .server = bench_default_server(),
        .topic = "bench-consume",
        .group = group,
        .messages = 200000,
        .size = 100,
        .consumers = 1,
        .window = 1000,
    };
    const struct bench_opt spec[] = {
        {"--server", BENCH_OPT_STR, &o.server, 0, 0},
        {"--topic", BENCH_OPT_STR, &o.topic, 0, 0},
        {"--group", BENCH_OPT_STR, &o.group, 0, 0},
        {"--messages", BENCH_OPT_SIZE, &o.messages, 1, CMD_MAX_MESSAGES},
        {"--size", BENCH_OPT_SIZE, &o.size, 0, CMD_MAX_SIZE},
        {"--consumers", BENCH_OPT_SIZE, &o.consumers, 1, CMD_MAX_CONSUMERS},
        {"--window", BENCH_OPT_SIZE, &o.window, 1, CMD_MAX_SUB_WINDOW},
        {"--no-fill", BENCH_OPT_FLAG, &o.no_fill, 0, 0},
        {"--keep", BENCH_OPT_FLAG, &o.keep, 0, 0},
        {"--json", BENCH_OPT_FLAG, &o.json, 0, 0},
    };
    int prc = bench_opts_parse("consume", argc, argv, spec, sizeof spec / sizeof spec[0]);
    if (prc == 1) {
        consume_usage(stdout);
        return 0;
    }
    if (prc != 0) {
        return 2;
    }
    static struct bench_cleanup cl;
    bench_cleanup_init(&cl, o.server, o.keep, o.json);
    bench_cleanup_topic(&cl, o.topic);
    bench_cleanup_group(&cl, o.topic, o.group);
    int status = consume_body(o);
    bench_cleanup_finish(&cl);
    return status;
}

/* The run after the options: returns the exit status. */
static int consume_body(struct consume_opts o)
{

    struct bench_fill_result fill;
    memset(&fill, 0, sizeof fill);
    uint64_t first_seq = 0;
    if (!o.no_fill) {
        struct bench_workload w;
        struct bench_rng rng;
        bench_rng_seed(&rng);
        if (bench_workload_init(&w, o.messages, o.size, &rng) < 0) {
            fprintf(stderr, "ferry bench: out of memory for %zu messages of %zu bytes\n",
                    o.messages, o.size);
            return 1;
        }
        int frc = bench_fill(o.server, o.topic, &w, 0, o.messages, o.window, &fill);
        bench_workload_free(&w);
        if (frc < 0) {
            fprintf(stderr, "ferry bench: %s\n", fill.error);
            return 1;
        }
        first_seq = fill.first_seq;
    } else {
        uint64_t head = 0, first = 0, count = 0;
        char err[512];
        if (bench_topic_head(o.server, o.topic, &head, &first, &count, err, sizeof err) < 0) {
            fprintf(stderr, "ferry bench: %s\n", err);
            return 1;
        }
        if (count < o.messages || head - first + 1 < o.messages) {
            fprintf(stderr, "ferry bench: topic '%s' holds %llu messages, fewer than %zu\n",
                    o.topic, (unsigned long long)count, o.messages);
            return 1;
        }
        first_seq = first;
    }

    struct bench_consume_config cfg = {
        .server = o.server,
        .topic = o.topic,
        .group = o.group,
        .first_seq = first_seq,
        .count = o.messages,
        .consumers = o.consumers,
        .window = o.window,
        .stall_ms = CMD_STALL_MS,
    };
    struct bench_consume_result r;
    int rc = bench_consume_run(&cfg, &r);
    if (rc < 0 && r.deliveries == 0) {
        fprintf(stderr, "ferry bench: %s\n", r.error);
        return 1;
    }
    if (o.json) {
        print_consume_json(&o, &fill, &r, first_seq);
    } else {
        print_consume_human(&o, &fill, &r, first_seq);
    }
    fflush(stdout);
    if (rc < 0 || r.missing > 0) {
        fprintf(stderr, "ferry bench: %s\n", r.error);
        return 1;
    }
    return 0;
}

/* ---- e2e --------------------------------------------------------------- */

static void e2e_usage(FILE *f)
{
    fprintf(f,
            "usage: ferry bench e2e [options]\n"
            "\n"
            "One consumer (fresh group, start latest, acking each delivery) and one\n"
            "publisher at a steady rate, each on its own connection; every payload carries\n"
            "its CLOCK_MONOTONIC send time. Reports publish -> delivery latency\n"
            "percentiles and the rate achieved.\n"
            "\n"
            "  --server HOST:PORT  broker address (default $FERRY_SERVER, else %s)\n"
            "  --topic T           topic (default bench-e2e); nobody else may publish to it\n"
            "  --group G           the consumer group (default: a fresh unique name)\n"
            "  --rate R            messages per second (default 10000)\n"
            "  --seconds D         measured seconds (default 10)\n"
            "  --warmup K          seconds at the same rate before, not measured (default 1)\n"
            "  --size S            payload bytes, at least 16 (default 100)\n"
            "  --window W          publishes in flight and the consumer's window,\n"
            "                      1..65535 (default 1000)\n"
            "  --samples FILE      write one line per message to FILE: index, send time\n"
            "                      (ns from the first), latency (ns; -1: lost), warm-up\n"
            "  --keep              keep the topic and the group at the end; by default\n"
            "                      the run deletes the topic when it created it, else\n"
            "                      the group when it created that\n"
            "  --json              print one JSON object instead of text\n",
            FERRY_DEFAULT_SERVER);
}

static int e2e_body(const char *server, const char *topic, const char *grp, const char *samples,
                    size_t rate, size_t seconds, size_t warmup, size_t size, size_t window,
                    int json);

int bench_e2e_main(int argc, char **argv)
{
    char group[128];
    bench_unique_name("bench-e2e", group, sizeof group);
    const char *server = bench_default_server(), *topic = "bench-e2e", *grp = group;
    const char *samples = NULL;
    size_t rate = 10000, seconds = 10, warmup = 1, size = 100, window = 1000;
    int json = 0, keep = 0;
    const struct bench_opt spec[] = {
        {"--server", BENCH_OPT_STR, &server, 0, 0},
        {"--topic", BENCH_OPT_STR, &topic, 0, 0},
        {"--group", BENCH_OPT_STR, &grp, 0, 0},
        {"--rate", BENCH_OPT_SIZE, &rate, 1, 10000000},
        {"--seconds", BENCH_OPT_SIZE, &seconds, 1, 86400},
        {"--warmup", BENCH_OPT_SIZE, &warmup, 0, 3600},
        {"--size", BENCH_OPT_SIZE, &size, 16, CMD_MAX_SIZE},
        {"--window", BENCH_OPT_SIZE, &window, 1, CMD_MAX_SUB_WINDOW},
        {"--samples", BENCH_OPT_STR, &samples, 0, 0},
        {"--keep", BENCH_OPT_FLAG, &keep, 0, 0},
        {"--json", BENCH_OPT_FLAG, &json, 0, 0},
    };
    int prc = bench_opts_parse("e2e", argc, argv, spec, sizeof spec / sizeof spec[0]);
    if (prc == 1) {
        e2e_usage(stdout);
        return 0;
    }
    if (prc != 0) {
        return 2;
    }
    if ((double)rate * (double)(seconds + warmup) > 200e6) {
        fprintf(stderr, "ferry bench e2e: --rate x (--seconds + --warmup) is over 200,000,000\n");
        return 2;
    }
    static struct bench_cleanup cl;
    bench_cleanup_init(&cl, server, keep, json);
    bench_cleanup_topic(&cl, topic);
    bench_cleanup_group(&cl, topic, grp);
    int status = e2e_body(server, topic, grp, samples, rate, seconds, warmup, size, window, json);
    bench_cleanup_finish(&cl);
    return status;
}

/* The run after the options: returns the exit status. */
static int e2e_body(const char *server, const char *topic, const char *grp, const char *samples,
                    size_t rate, size_t seconds, size_t warmup, size_t size, size_t window,
                    int json)
{
    struct bench_e2e_config cfg = {
        .server = server,
        .topic = topic,
        .group = grp,
        .rate = (double)rate,
        .seconds = (double)seconds,
        .warmup_s = (double)warmup,
        .size = size,
        .window = window,
        .samples_path = samples,
    };
    struct bench_e2e_result r;
    int rc = bench_e2e_run(&cfg, &r);
    if (rc < 0 && r.received == 0) {
        fprintf(stderr, "ferry bench: %s\n", r.error);
        return 1;
    }
    const struct bench_pct *l = &r.latency;
    int target_ok = l->p99_us < TARGET_E2E_P99_US;
    if (json) {
        printf("{\"bench\":\"e2e\",\"server\":");
        bench_json_string(server);
        printf(",\"topic\":");
        bench_json_string(topic);
        printf(",\"group\":");
        bench_json_string(grp);
        printf(",\"rate\":%zu,\"seconds\":%zu,\"warmup\":%zu,\"size\":%zu,\"window\":%zu", rate,
               seconds, warmup, size, window);
        printf(",\"achieved_rate\":%.1f,\"published\":%zu,\"pub_failed\":%zu,\"received\":%zu,"
               "\"missing\":%zu,\"duplicates\":%zu,\"measured\":%zu",
               r.achieved_rate, r.published, r.pub_failed, r.received, r.missing, r.duplicates,
               r.measured);
        printf(",\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f,"
               "\"mean_us\":%.1f,\"behind_max_us\":%.1f,\"behind_1ms\":%zu,\"target_ok\":%s",
               l->p50_us, l->p99_us, l->p999_us, l->max_us, l->mean_us, r.behind_max_us,
               r.behind_1ms, target_ok ? "true" : "false");
        if (r.error[0] != '\0') {
            printf(",\"error\":");
            bench_json_string(r.error);
        }
        printf("}\n");
    } else {
        char a[64], b[64], c[64], d[64], e[64];
        printf("ferry bench e2e: %zu msg/s for %zu s (+%zu s warm-up), %zu B, window %zu, topic "
               "%s\n",
               rate, seconds, warmup, size, window, topic);
        printf("  latency   publish -> delivery p50 %s  p99 %s  p999 %s  max %s  (mean %s, "
               "%zu samples)\n",
               bench_fmt_us(l->p50_us, a, sizeof a), bench_fmt_us(l->p99_us, b, sizeof b),
               bench_fmt_us(l->p999_us, c, sizeof c), bench_fmt_us(l->max_us, d, sizeof d),
               bench_fmt_us(l->mean_us, e, sizeof e), r.measured);
        printf("  rate      %s msg/s achieved; publisher at most %s behind schedule (%zu sends "
               "> 1 ms late)\n",
               bench_fmt_thousands(r.achieved_rate, a, sizeof a),
               bench_fmt_us(r.behind_max_us, b, sizeof b), r.behind_1ms);
        printf("  check     %zu published, %zu received, %zu missing, %zu duplicates\n",
               r.published, r.received, r.missing, r.duplicates);
        printf("  target    p99 < 2 ms at 10,000 msg/s (--sync full): %s\n",
               target_ok ? "ok" : "MISSED");
        if (r.error[0] != '\0') {
            printf("  FAILED    %s\n", r.error);
        }
    }
    fflush(stdout);
    if (rc < 0 || r.missing > 0 || r.pub_failed > 0) {
        if (r.error[0] != '\0') {
            fprintf(stderr, "ferry bench: %s\n", r.error);
        }
        return 1;
    }
    return 0;
}

/* ---- backlog ----------------------------------------------------------- */

static void backlog_usage(FILE *f)
{
    fprintf(f,
            "usage: ferry bench backlog [options]\n"
            "\n"
            "Compares publish and consume+ack rates on an empty topic with the same on a\n"
            "topic holding N messages that another group never consumes (so they stay\n"
            "stored). Untimed set-up: a warm-up (K messages published and consumed on a\n"
            "topic of their own), then the group that never consumes and the N messages\n"
            "on PREFIX.backlog. Then R rounds, each with both phases, in alternating order:\n"
            "  (a) publish M messages to a fresh topic PREFIX.empty.<round> (as `bench pub`),\n"
            "      then a fresh group consumes and acks them (as `bench consume`);\n"
            "  (b) publish M more to PREFIX.backlog, then a fresh group consumes and acks\n"
            "      those M, starting near the head.\n"
            "Reports the median of each rate over the rounds and the ratios (b)/(a); the\n"
            "target is >= 0.90 for both.\n"
            "\n"
            "  --server HOST:PORT  broker address (default $FERRY_SERVER, else %s)\n"
            "  --topic PREFIX      topic name prefix (default: bench-backlog-<pid>-<ms>);\n"
            "                      its topics must be new\n"
            "  --backlog N         messages waiting in phase (b) (default 1000000)\n"
            "  --messages M        messages published and consumed per phase (default 200000)\n"
            "  --rounds R          rounds of (a) and (b) (default 3)\n"
            "  --size S            payload bytes per message (default 100)\n"
            "  --window W          publish window, and each subscription's, 1..65535\n"
            "                      (default 1000)\n"
            "  --consumers C       consumers in the timed consume runs (default 1)\n"
            "  --warmup K          warm-up messages (default: M; 0 for none)\n"
            "  --edge-ok           let the newest topic be a measured one (see below)\n"
            "  --keep              keep the topics at the end (by default the run deletes\n"
            "                      those it created, with their groups)\n"
            "  --json              print one JSON object instead of text\n"
            "\n"
            "Messages of all topics share one table keyed by (topic id, seq), so the\n"
            "topic created last appends at the right edge of the B-tree, which is cheaper\n"
            "than appending in the middle, as every older topic does. By default the\n"
            "empty topics are created (one message each) before the backlog topic and a\n"
            "topic PREFIX.last after both, so that (a) and (b) both append in the middle.\n"
            "With --edge-ok the empty topic of each round is created when it is first\n"
            "measured, the newest topic then, and (a) gets the right edge.\n",
            FERRY_DEFAULT_SERVER);
}

/* One phase of one round: the two rates. */
struct phase {
    double pub_rate;
    double cons_rate;
    size_t duplicates;
    uint64_t first_seq; /* the consumer's first sequence */
};

struct backlog_opts {
    const char *server;
    size_t backlog, messages, rounds, size, window, consumers, warm;
    int edge_ok, json, keep;
};

/* Publishes one message to topic (creating it). Returns 0 or -1 (reported). */
static int publish_one(const char *server, const char *topic, struct bench_rng *rng)
{
    struct bench_workload w;
    struct bench_fill_result fr;
    if (bench_workload_init(&w, 1, 16, rng) < 0) {
        fprintf(stderr, "ferry bench: out of memory\n");
        return -1;
    }
    int rc = bench_fill(server, topic, &w, 0, 1, 1, &fr);
    bench_workload_free(&w);
    if (rc < 0) {
        fprintf(stderr, "ferry bench: %s\n", fr.error);
    }
    return rc;
}

/* Publishes warmup + n fresh messages to topic (timed after the warm-up, as
 * `bench pub`), then consumes the n timed ones with a fresh group. Returns
 * 0 or -1 (reported). */
static int backlog_phase(const struct backlog_opts *o, const char *topic, size_t n,
                         struct bench_rng *rng, struct phase *ph)
{
    const size_t warmup = 100;
    struct bench_workload w;
    if (bench_workload_init(&w, warmup + n, o->size, rng) < 0) {
        fprintf(stderr, "ferry bench: out of memory for the workload\n");
        return -1;
    }
    struct bench_pub_config pc = {
        .server = o->server,
        .topic = topic,
        .window = o->window,
        .producers = 1,
        .warmup = warmup,
    };
    struct bench_pub_result pub;
    int rc = bench_pub_run(&pc, &w, 0, NULL, &pub);
    bench_workload_free(&w);
    if (rc < 0 || pub.failed > 0) {
        fprintf(stderr, "ferry bench: publish to '%s': %s\n", topic, pub.error);
        return -1;
    }
    ph->pub_rate = pub.wall_s > 0 ? (double)pub.acked / pub.wall_s : 0;

    uint64_t head = 0, first = 0, count = 0;
    char err[512];
    if (bench_topic_head(o->server, topic, &head, &first, &count, err, sizeof err) < 0) {
        fprintf(stderr, "ferry bench: %s\n", err);
        return -1;
    }
    ph->first_seq = head - n + 1;
    char group[128];
    bench_unique_name("consumer", group, sizeof group);
    struct bench_consume_config cc = {
        .server = o->server,
        .topic = topic,
        .group = group,
        .first_seq = ph->first_seq,
        .count = n,
        .consumers = o->consumers,
        .window = o->window,
        .stall_ms = CMD_STALL_MS,
    };
    struct bench_consume_result cr;
    if (bench_consume_run(&cc, &cr) < 0 || cr.missing > 0) {
        fprintf(stderr, "ferry bench: consume from '%s': %s\n", topic, cr.error);
        return -1;
    }
    ph->cons_rate = cr.msgs_per_s;
    ph->duplicates = cr.duplicates;
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median of n values (the mean of the middle two for an even n). */
static double median(const double *v, size_t n)
{
    double *s = malloc(n * sizeof *s);
    if (s == NULL || n == 0) {
        free(s);
        return 0;
    }
    memcpy(s, v, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_double);
    double m = n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
    free(s);
    return m;
}

static void print_rates_json(const char *name, const double *v, size_t n)
{
    printf(",\"%s\":[", name);
    for (size_t i = 0; i < n; i++) {
        printf("%s%.1f", i > 0 ? "," : "", v[i]);
    }
    printf("]");
}

int bench_backlog_main(int argc, char **argv)
{
    char prefix_buf[128];
    bench_unique_name("bench-backlog", prefix_buf, sizeof prefix_buf);
    const char *prefix = prefix_buf;
    struct backlog_opts o = {
        .server = bench_default_server(),
        .backlog = 1000000,
        .messages = 200000,
        .rounds = 3,
        .size = 100,
        .window = 1000,
        .consumers = 1,
        .warm = SIZE_MAX,
    };
    const struct bench_opt spec[] = {
        {"--server", BENCH_OPT_STR, &o.server, 0, 0},
        {"--topic", BENCH_OPT_STR, &prefix, 0, 0},
        {"--backlog", BENCH_OPT_SIZE, &o.backlog, 1, CMD_MAX_MESSAGES},
        {"--messages", BENCH_OPT_SIZE, &o.messages, 1, CMD_MAX_MESSAGES},
        {"--rounds", BENCH_OPT_SIZE, &o.rounds, 1, 100},
        {"--size", BENCH_OPT_SIZE, &o.size, 0, CMD_MAX_SIZE},
        {"--window", BENCH_OPT_SIZE, &o.window, 1, CMD_MAX_SUB_WINDOW},
        {"--consumers", BENCH_OPT_SIZE, &o.consumers, 1, CMD_MAX_CONSUMERS},
        {"--warmup", BENCH_OPT_SIZE, &o.warm, 0, CMD_MAX_MESSAGES},
        {"--edge-ok", BENCH_OPT_FLAG, &o.edge_ok, 0, 0},
        {"--keep", BENCH_OPT_FLAG, &o.keep, 0, 0},
        {"--json", BENCH_OPT_FLAG, &o.json, 0, 0},
    };
    int prc = bench_opts_parse("backlog", argc, argv, spec, sizeof spec / sizeof spec[0]);
    if (prc == 1) {
        backlog_usage(stdout);
        return 0;
    }
    if (prc != 0) {
        return 2;
    }
    if (o.warm == SIZE_MAX) {
        o.warm = o.messages;
    }
    if (strlen(prefix) > 150) {
        fprintf(stderr, "ferry bench backlog: --topic is at most 150 characters\n");
        return 2;
    }
    char t_warm[200], t_full[200], idle[200], t_edge[200];
    snprintf(t_warm, sizeof t_warm, "%s.warmup", prefix);
    snprintf(t_edge, sizeof t_edge, "%s.last", prefix);
    snprintf(t_full, sizeof t_full, "%s.backlog", prefix);
    snprintf(idle, sizeof idle, "%s.idle", prefix);

    /* Every topic the run writes to, in the order it creates them. */
    static struct bench_cleanup cl;
    static char t_empties[100][200];
    const char *names[104];
    size_t nnames = 0;
    bench_cleanup_init(&cl, o.server, o.keep, o.json);
    if (o.warm > 0) {
        names[nnames++] = t_warm;
    }
    for (size_t r = 0; r < o.rounds && r < 100; r++) {
        snprintf(t_empties[r], sizeof t_empties[r], "%s.empty.%zu", prefix, r + 1);
        names[nnames++] = t_empties[r];
    }
    names[nnames++] = t_full;
    if (!o.edge_ok) {
        names[nnames++] = t_edge;
    }
    bench_cleanup_topics(&cl, names, nnames);

    int status = 1;
    struct bench_rng rng;
    bench_rng_seed(&rng);
    struct phase *a = calloc(o.rounds, sizeof *a), *b = calloc(o.rounds, sizeof *b);
    double *v = calloc(4 * o.rounds, sizeof *v);
    struct bench_fill_result fill;
    struct bench_workload wfill;
    memset(&wfill, 0, sizeof wfill);
    char err[512];
    if (a == NULL || b == NULL || v == NULL) {
        fprintf(stderr, "ferry bench: out of memory\n");
        goto out;
    }

    /* Warm-up: the same work on a topic of its own, so that the first
     * phase does not pay alone for a fresh broker's first commits (a WAL
     * that still grows, cold caches). */
    if (o.warm > 0) {
        struct phase w;
        if (backlog_phase(&o, t_warm, o.warm, &rng, &w) < 0) {
            goto out;
        }
    }

    /* Topic placement. Messages are keyed (topic id << 40 | seq) in one
     * table, so the newest topic appends at the right edge of its B-tree
     * and every older one in the middle, which costs more per message
     * whatever the backlog. Unless --edge-ok, the empty topics are created
     * (one message each) before the backlog topic, and a topic created
     * after all of them takes the right edge, so that (a) and (b) both
     * append in the middle, like any topic but the newest. */
    if (!o.edge_ok) {
        for (size_t r = 0; r < o.rounds; r++) {
            char t_empty[200];
            snprintf(t_empty, sizeof t_empty, "%s.empty.%zu", prefix, r + 1);
            if (publish_one(o.server, t_empty, &rng) < 0) {
                goto out;
            }
        }
    }

    /* The backlog: its group exists first, so that no retention of the
     * "delete once acked" kind could take the messages. */
    if (bench_group_create(o.server, t_full, idle, err, sizeof err) < 0) {
        fprintf(stderr, "ferry bench: %s\n", err);
        goto out;
    }
    if (bench_workload_init(&wfill, o.backlog, o.size, &rng) < 0) {
        fprintf(stderr, "ferry bench: out of memory for the backlog\n");
        goto out;
    }
    if (bench_fill(o.server, t_full, &wfill, 0, o.backlog, o.window, &fill) < 0) {
        fprintf(stderr, "ferry bench: %s\n", fill.error);
        goto out;
    }
    bench_workload_free(&wfill);
    if (!o.edge_ok && publish_one(o.server, t_edge, &rng) < 0) {
        goto out;
    }

    /* Rounds, (a) first in odd rounds and (b) first in even ones, so that
     * a drift of the machine over the run does not favour either. */
    for (size_t r = 0; r < o.rounds; r++) {
        char t_empty[200];
        snprintf(t_empty, sizeof t_empty, "%s.empty.%zu", prefix, r + 1);
        for (int k = 0; k < 2; k++) {
            int do_a = (k == 0) == (r % 2 == 0);
            if (backlog_phase(&o, do_a ? t_empty : t_full, o.messages, &rng, do_a ? &a[r] : &b[r]) <
                0) {
                goto out;
            }
        }
    }
    uint64_t head = 0, first = 0, stored = 0;
    if (bench_topic_head(o.server, t_full, &head, &first, &stored, err, sizeof err) < 0) {
        fprintf(stderr, "ferry bench: %s\n", err);
        goto out;
    }

    double *pa = v, *pb = v + o.rounds, *ca = v + 2 * o.rounds, *cb = v + 3 * o.rounds;
    size_t dups = 0;
    for (size_t r = 0; r < o.rounds; r++) {
        pa[r] = a[r].pub_rate;
        pb[r] = b[r].pub_rate;
        ca[r] = a[r].cons_rate;
        cb[r] = b[r].cons_rate;
        dups += a[r].duplicates + b[r].duplicates;
    }
    double mpa = median(pa, o.rounds), mpb = median(pb, o.rounds);
    double mca = median(ca, o.rounds), mcb = median(cb, o.rounds);
    double pub_ratio = mpa > 0 ? mpb / mpa : 0;
    double cons_ratio = mca > 0 ? mcb / mca : 0;
    int pub_ok = pub_ratio >= TARGET_BACKLOG_RATIO;
    int cons_ok = cons_ratio >= TARGET_BACKLOG_RATIO;
    if (o.json) {
        printf("{\"bench\":\"backlog\",\"server\":");
        bench_json_string(o.server);
        printf(",\"topic_prefix\":");
        bench_json_string(prefix);
        printf(",\"backlog\":%zu,\"messages\":%zu,\"rounds\":%zu,\"size\":%zu,\"window\":%zu,"
               "\"consumers\":%zu,\"warmup\":%zu,\"edge_ok\":%s",
               o.backlog, o.messages, o.rounds, o.size, o.window, o.consumers, o.warm,
               o.edge_ok ? "true" : "false");
        printf(",\"fill_s\":%.6f,\"stored_backlog_topic\":%llu", fill.wall_s,
               (unsigned long long)stored);
        printf(",\"pub_empty\":%.1f,\"pub_backlog\":%.1f,\"pub_ratio\":%.3f", mpa, mpb, pub_ratio);
        printf(",\"consume_empty\":%.1f,\"consume_backlog\":%.1f,\"consume_ratio\":%.3f", mca, mcb,
               cons_ratio);
        print_rates_json("pub_empty_rounds", pa, o.rounds);
        print_rates_json("pub_backlog_rounds", pb, o.rounds);
        print_rates_json("consume_empty_rounds", ca, o.rounds);
        print_rates_json("consume_backlog_rounds", cb, o.rounds);
        printf(",\"duplicates\":%zu,\"pub_ok\":%s,\"consume_ok\":%s}\n", dups,
               pub_ok ? "true" : "false", cons_ok ? "true" : "false");
    } else {
        char x[64], y[64];
        printf("ferry bench backlog: %zu msgs x %zu B per phase, %zu round(s), backlog %zu, "
               "window %zu, %zu consumer(s), warm-up %zu\n",
               o.messages, o.size, o.rounds, o.backlog, o.window, o.consumers, o.warm);
        printf("  placement    %s\n",
               o.edge_ok ? "--edge-ok: (a) appends at the right edge of the messages B-tree, "
                           "(b) in the middle"
                         : "(a) and (b) both append in the middle of the messages B-tree");
        printf("  fill         %s msgs into %s in %.2f s (untimed); group %s never consumes\n",
               bench_fmt_thousands((double)o.backlog, x, sizeof x), t_full, fill.wall_s, idle);
        printf("  %-12s %16s %16s %8s   (median of %zu rounds)\n", "", "empty topic",
               "with backlog", "ratio", o.rounds);
        printf("  %-12s %10s msg/s %10s msg/s %8.2f   %s\n", "publish",
               bench_fmt_thousands(mpa, x, sizeof x), bench_fmt_thousands(mpb, y, sizeof y),
               pub_ratio, pub_ok ? "ok" : "MISSED");
        printf("  %-12s %10s msg/s %10s msg/s %8.2f   %s\n", "consume+ack",
               bench_fmt_thousands(mca, x, sizeof x), bench_fmt_thousands(mcb, y, sizeof y),
               cons_ratio, cons_ok ? "ok" : "MISSED");
        for (size_t r = 0; r < o.rounds; r++) {
            char x2[64], y2[64];
            printf("  round %-2zu     publish %s / %s (%.2f), consume+ack %s / %s (%.2f)%s\n",
                   r + 1, bench_fmt_thousands(pa[r], x, sizeof x),
                   bench_fmt_thousands(pb[r], y, sizeof y), pa[r] > 0 ? pb[r] / pa[r] : 0.0,
                   bench_fmt_thousands(ca[r], x2, sizeof x2),
                   bench_fmt_thousands(cb[r], y2, sizeof y2), ca[r] > 0 ? cb[r] / ca[r] : 0.0,
                   r % 2 ? ", (b) first" : "");
        }
        printf("  check        %llu messages stored in %s (seqs %llu..%llu); %zu duplicates\n",
               (unsigned long long)stored, t_full, (unsigned long long)first,
               (unsigned long long)head, dups);
        printf("  target       each ratio >= %.2f\n", TARGET_BACKLOG_RATIO);
    }
    fflush(stdout);
    status = 0;
out:
    bench_cleanup_finish(&cl);
    bench_workload_free(&wfill);
    free(a);
    free(b);
    free(v);
    return status;
}
