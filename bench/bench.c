/*
 * bench.c - `ferry bench`: command line, orchestration and output.
 *
 * `ferry bench pub` measures, in one run and on one machine:
 *   1. the broker: N messages of S random bytes with random UUID-like ids,
 *      published by P producers (one connection each) with W in flight per
 *      connection; messages/s, MB/s and publish -> ack latency percentiles;
 *   2. the raw-SQLite ceiling for the same rows and sync mode (bench_raw.c),
 *      and the ratio broker/raw;
 *   3. for W = 1, the floors of a synchronous publish: one fdatasync and one
 *      loopback round trip, and whether p50 meets 1.2 x their sum.
 *
 * The order is fixed so that each phase runs on an idle machine as far as
 * the bench can arrange it: generate everything, probe fdatasync, connect,
 * ping, warm up, publish, then raw SQLite once the broker has gone quiet.
 */
#include "bench.h"
#include "bench_internal.h"

#include <errno.h>
#include <ferry.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BENCH_DEFAULT_MESSAGES 100000
#define BENCH_DEFAULT_SIZE 100
#define BENCH_DEFAULT_WINDOW 1000
#define BENCH_DEFAULT_TOPIC "bench"
#define BENCH_DEFAULT_WARMUP 100
/* Samples for the W=1 floors: enough for a stable median in well under 1 s. */
#define BENCH_FLOOR_SAMPLES 1000
/* The W=1 target: p50 <= this factor x (fdatasync p50 + RTT p50). */
#define BENCH_TARGET_FACTOR 1.2
/* Sanity bounds on the command line, not limits of the broker. */
#define BENCH_MAX_SIZE ((size_t)64 * 1024 * 1024)
#define BENCH_MAX_PRODUCERS 1024
#define BENCH_MAX_WINDOW 1000000

struct pub_opts {
    const char *server;
    const char *topic;
    const char *raw_dir;
    const char *sync; /* "full" or "normal" */
    size_t messages;
    size_t size;
    size_t window;
    size_t producers;
    size_t warmup;
    int no_raw;
    int raw_unique; /* --raw-index unique (default) or none */
    int json;
    int keep; /* --keep: do not delete the topic */
};

static void pub_usage(FILE *f)
{
    fprintf(f,
            "usage: ferry bench pub [options]\n"
            "\n"
            "Publishes N messages to a running ferryd and reports messages/s, MB/s and\n"
            "publish->ack latency; in the same run, the raw-SQLite ceiling for the same\n"
            "rows and sync mode on this machine, and the ratio broker/raw.\n"
            "\n"
            "  --server HOST:PORT  broker address (default $FERRY_SERVER, else %s)\n"
            "  --messages N        messages to publish, in total (default %d)\n"
            "  --size S            payload bytes per message (default %d)\n"
            "  --window W          publishes in flight per connection (default %d);\n"
            "                      1 publishes synchronously and also measures the\n"
            "                      fdatasync and loopback-RTT floors and the p50 target\n"
            "  --producers P       producer threads, one connection each (default 1)\n"
            "  --topic T           topic to publish to (default %s)\n"
            "  --warmup K          untimed publishes before the run (default %d)\n"
            "  --sync full|normal  the broker's sync mode, used for the raw-SQLite run\n"
            "                      (default full; must match how ferryd was started)\n"
            "  --raw-dir DIR       where the raw-SQLite database and fdatasync probe go\n"
            "                      (default: the current directory); put it on the\n"
            "                      broker's disk\n"
            "  --raw-index unique|none\n"
            "                      unique (default): the raw table's msg_id has a UNIQUE\n"
            "                      index, the issue's ceiling; none: no index on msg_id\n"
            "  --no-raw            skip the raw-SQLite run\n"
            "  --keep              keep the topic at the end; by default a topic the\n"
            "                      run created is deleted (an existing one is kept)\n"
            "  --json              print one JSON object instead of text\n",
            FERRY_DEFAULT_SERVER, BENCH_DEFAULT_MESSAGES, BENCH_DEFAULT_SIZE, BENCH_DEFAULT_WINDOW,
            BENCH_DEFAULT_TOPIC, BENCH_DEFAULT_WARMUP);
}

static int parse_size(const char *opt, const char *s, size_t min, size_t max, size_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (s[0] == '\0' || s[0] == '-' || *end != '\0' || errno != 0 || v < min || v > max) {
        fprintf(stderr, "ferry bench: %s wants an integer in %zu..%zu, got '%s'\n", opt, min, max,
                s);
        return -1;
    }
    *out = (size_t)v;
    return 0;
}

/* Accepts "--opt VALUE" and "--opt=VALUE". Returns 2 on a usage error, 1
 * when help was printed, 0 otherwise. */
static int pub_parse(int argc, char **argv, struct pub_opts *o)
{
    memset(o, 0, sizeof *o);
    const char *env_server = getenv("FERRY_SERVER");
    o->server = env_server != NULL && env_server[0] != '\0' ? env_server : FERRY_DEFAULT_SERVER;
    o->topic = BENCH_DEFAULT_TOPIC;
    o->sync = "full";
    o->messages = BENCH_DEFAULT_MESSAGES;
    o->size = BENCH_DEFAULT_SIZE;
    o->window = BENCH_DEFAULT_WINDOW;
    o->producers = 1;
    o->warmup = BENCH_DEFAULT_WARMUP;
    o->raw_unique = 1;

    for (int i = 0; i < argc; i++) {
        char *arg = argv[i];
        char name[32];
        const char *val = NULL;
        char *eq = strchr(arg, '=');
        if (strncmp(arg, "--", 2) == 0 && eq != NULL && (size_t)(eq - arg) < sizeof name) {
            memcpy(name, arg, (size_t)(eq - arg));
            name[eq - arg] = '\0';
            val = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", arg);
        }

        if (strcmp(name, "-h") == 0 || strcmp(name, "--help") == 0) {
            pub_usage(stdout);
            return 1;
        }
        if (strcmp(name, "--no-raw") == 0 && val == NULL) {
            o->no_raw = 1;
            continue;
        }
        if (strcmp(name, "--json") == 0 && val == NULL) {
            o->json = 1;
            continue;
        }
        if (strcmp(name, "--keep") == 0 && val == NULL) {
            o->keep = 1;
            continue;
        }
        static const char *const with_value[] = {
            "--server", "--messages", "--size", "--window", "--producers",
            "--topic",  "--raw-dir",  "--sync", "--warmup", "--raw-index",
        };
        int known = 0;
        for (size_t k = 0; k < sizeof with_value / sizeof with_value[0]; k++) {
            known |= strcmp(name, with_value[k]) == 0;
        }
        if (!known) {
            fprintf(stderr, "ferry bench pub: unknown option '%s' (see --help)\n", arg);
            return 2;
        }
        if (val == NULL) {
            if (i + 1 >= argc) {
                fprintf(stderr, "ferry bench pub: %s needs a value\n", name);
                return 2;
            }
            val = argv[++i];
        }
        int bad = 0;
        if (strcmp(name, "--server") == 0) {
            o->server = val;
        } else if (strcmp(name, "--topic") == 0) {
            o->topic = val;
        } else if (strcmp(name, "--raw-dir") == 0) {
            o->raw_dir = val;
        } else if (strcmp(name, "--sync") == 0) {
            if (strcmp(val, "full") != 0 && strcmp(val, "normal") != 0) {
                fprintf(stderr, "ferry bench pub: --sync is full or normal, got '%s'\n", val);
                return 2;
            }
            o->sync = val;
        } else if (strcmp(name, "--raw-index") == 0) {
            if (strcmp(val, "unique") != 0 && strcmp(val, "none") != 0) {
                fprintf(stderr, "ferry bench pub: --raw-index is unique or none, got '%s'\n", val);
                return 2;
            }
            o->raw_unique = strcmp(val, "unique") == 0;
        } else if (strcmp(name, "--messages") == 0) {
            bad = parse_size(name, val, 1, SIZE_MAX / 64, &o->messages);
        } else if (strcmp(name, "--size") == 0) {
            bad = parse_size(name, val, 0, BENCH_MAX_SIZE, &o->size);
        } else if (strcmp(name, "--window") == 0) {
            bad = parse_size(name, val, 1, BENCH_MAX_WINDOW, &o->window);
        } else if (strcmp(name, "--producers") == 0) {
            bad = parse_size(name, val, 1, BENCH_MAX_PRODUCERS, &o->producers);
        } else if (strcmp(name, "--warmup") == 0) {
            bad = parse_size(name, val, 0, 1000000, &o->warmup);
        }
        if (bad) {
            return 2;
        }
    }
    if (o->producers > o->messages) {
        fprintf(stderr, "ferry bench pub: more producers (%zu) than messages (%zu)\n", o->producers,
                o->messages);
        return 2;
    }
    return 0;
}

/* "1234567" -> "1,234,567". */
static const char *fmt_thousands(double v, char *buf, size_t len)
{
    char digits[32];
    snprintf(digits, sizeof digits, "%.0f", v < 0 ? 0 : v);
    size_t n = strlen(digits), o = 0;
    for (size_t i = 0; i < n && o + 2 < len; i++) {
        if (i > 0 && (n - i) % 3 == 0) {
            buf[o++] = ',';
        }
        buf[o++] = digits[i];
    }
    buf[o] = '\0';
    return buf;
}

/* A duration in µs, in the unit that keeps it readable. */
static const char *fmt_us(double us, char *buf, size_t len)
{
    if (us < 1000) {
        snprintf(buf, len, "%.0f µs", us);
    } else if (us < 1000000) {
        snprintf(buf, len, "%.1f ms", us / 1000);
    } else {
        snprintf(buf, len, "%.2f s", us / 1000000);
    }
    return buf;
}

struct pub_report {
    const struct pub_opts *o;
    struct bench_pub_result pub;
    double msgs_per_s;
    double mb_per_s;
    int have_raw;
    struct bench_raw_result raw;
    int have_floors;
    struct bench_pct fsync_append;
    struct bench_pct fsync_overwrite;
    struct bench_pct fsync_page;
    struct bench_pct rtt;
    double target_us;
    int target_ok;
    double target_page_us; /* the same target against the page-append probe */
    int target_page_ok;
};

static void print_json_string(const char *s)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        if (*p == '"' || *p == '\\') {
            printf("\\%c", *p);
        } else if (*p < 0x20) {
            printf("\\u%04x", *p);
        } else {
            putchar(*p);
        }
    }
    putchar('"');
}

/* One flat object, so that shell scripts can pick fields with sed. */
static void print_json(const struct pub_report *r)
{
    const struct pub_opts *o = r->o;
    printf("{\"bench\":\"pub\",\"server\":");
    print_json_string(o->server);
    printf(",\"topic\":");
    print_json_string(o->topic);
    printf(",\"messages\":%zu,\"size\":%zu,\"window\":%zu,\"producers\":%zu,\"warmup\":%zu,"
           "\"sync\":\"%s\"",
           o->messages, o->size, o->window, o->producers, o->warmup, o->sync);
    printf(",\"sqlite_version\":\"%s\"", sqlite3_libversion());
    printf(",\"acked\":%zu,\"failed\":%zu,\"duplicates\":%zu,\"wall_s\":%.6f", r->pub.acked,
           r->pub.failed, r->pub.duplicates, r->pub.wall_s);
    printf(",\"msgs_per_s\":%.1f,\"mb_per_s\":%.3f", r->msgs_per_s, r->mb_per_s);
    printf(",\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f,\"mean_us\":%.1f",
           r->pub.latency.p50_us, r->pub.latency.p99_us, r->pub.latency.p999_us,
           r->pub.latency.max_us, r->pub.latency.mean_us);
    if (r->have_raw) {
        printf(",\"raw_rows\":%zu,\"raw_wall_s\":%.6f,\"raw_rows_per_s\":%.1f,\"raw_txn_rows\":"
               "1000,\"raw_index\":\"%s\",\"ratio\":%.3f",
               r->raw.rows, r->raw.wall_s, r->raw.rows_per_s, o->raw_unique ? "unique" : "none",
               r->raw.rows_per_s > 0 ? r->msgs_per_s / r->raw.rows_per_s : 0.0);
    } else {
        printf(",\"raw_rows_per_s\":null,\"ratio\":null");
    }
    if (r->have_floors) {
        printf(",\"fdatasync_p50_us\":%.1f,\"fdatasync_p99_us\":%.1f,"
               "\"fdatasync_overwrite_p50_us\":%.1f,\"rtt_p50_us\":%.1f,\"rtt_p99_us\":%.1f,"
               "\"target_p50_us\":%.1f,\"target_ok\":%s,\"fdatasync_page_p50_us\":%.1f,"
               "\"target_page_p50_us\":%.1f,\"target_page_ok\":%s",
               r->fsync_append.p50_us, r->fsync_append.p99_us, r->fsync_overwrite.p50_us,
               r->rtt.p50_us, r->rtt.p99_us, r->target_us, r->target_ok ? "true" : "false",
               r->fsync_page.p50_us, r->target_page_us, r->target_page_ok ? "true" : "false");
    }
    if (r->pub.error[0] != '\0') {
        printf(",\"error\":");
        print_json_string(r->pub.error);
    }
    printf("}\n");
}

static void print_human(const struct pub_report *r)
{
    const struct pub_opts *o = r->o;
    char a[64], b[64], c[64], d[64], e[64];
    printf("ferry bench pub: %zu msgs x %zu B, window %zu, %zu producer(s), sync %s\n", o->messages,
           o->size, o->window, o->producers, o->sync);
    printf("  broker     %s msg/s   %.1f MB/s   ack latency p50 %s  p99 %s  p999 %s  max %s\n",
           fmt_thousands(r->msgs_per_s, a, sizeof a), r->mb_per_s,
           fmt_us(r->pub.latency.p50_us, b, sizeof b), fmt_us(r->pub.latency.p99_us, c, sizeof c),
           fmt_us(r->pub.latency.p999_us, d, sizeof d), fmt_us(r->pub.latency.max_us, e, sizeof e));
    if (r->have_raw) {
        printf("  raw sqlite %s rows/s  (same rows, sync %s, 1000/txn%s)   broker/raw %.2f\n",
               fmt_thousands(r->raw.rows_per_s, a, sizeof a), o->sync,
               o->raw_unique ? "" : ", no index on msg_id",
               r->raw.rows_per_s > 0 ? r->msgs_per_s / r->raw.rows_per_s : 0.0);
    }
    if (r->have_floors) {
        printf("  floors     fdatasync p50 %s (100 B appended; %s overwriting; %s appending "
               "4 KiB pages)   loopback rtt p50 %s\n",
               fmt_us(r->fsync_append.p50_us, a, sizeof a),
               fmt_us(r->fsync_overwrite.p50_us, b, sizeof b),
               fmt_us(r->fsync_page.p50_us, d, sizeof d), fmt_us(r->rtt.p50_us, c, sizeof c));
        printf("  target     p50 <= 1.2 x (fdatasync p50 + rtt p50) = %.0f µs: %s (p50 %.0f µs)\n",
               r->target_us, r->target_ok ? "ok" : "MISSED", r->pub.latency.p50_us);
        printf("             with the 4 KiB page-append fdatasync: %.0f µs: %s\n",
               r->target_page_us, r->target_page_ok ? "ok" : "MISSED");
    }
    if (r->pub.duplicates > 0) {
        printf("  warning    %zu acks carried the duplicate flag (ids are random: a broker bug?)\n",
               r->pub.duplicates);
    }
    if (r->pub.failed > 0) {
        printf("  FAILED     %zu of %zu publishes: %s\n", r->pub.failed, o->messages, r->pub.error);
    }
}

/* Removes the directory bench made for raw SQLite (its files are already
 * gone; rmdir fails harmlessly if something else was put there). */
static void raw_dir_remove(const char *dir)
{
    if (dir != NULL && rmdir(dir) != 0) {
        fprintf(stderr, "ferry bench: could not remove %s: %s\n", dir, strerror(errno));
    }
}

static int bench_pub(int argc, char **argv)
{
    struct pub_opts o;
    int prc = pub_parse(argc, argv, &o);
    if (prc != 0) {
        return prc == 1 ? 0 : 2;
    }

    struct pub_report r;
    memset(&r, 0, sizeof r);
    r.o = &o;
    int want_floors = o.window == 1;
    int want_raw = !o.no_raw;
    int status = 1;
    char *dir = NULL;
    char err[512] = "";
    struct bench_workload w;
    memset(&w, 0, sizeof w);
    static struct bench_cleanup cl;
    bench_cleanup_init(&cl, o.server, o.keep, o.json);

    struct bench_rng rng;
    bench_rng_seed(&rng);
    if (bench_workload_init(&w, o.warmup + o.messages, o.size, &rng) < 0) {
        fprintf(stderr, "ferry bench: out of memory for %zu messages of %zu bytes\n", o.messages,
                o.size);
        goto out;
    }

    if (want_raw || want_floors) {
        const char *base = o.raw_dir != NULL ? o.raw_dir : ".";
        size_t len = strlen(base) + sizeof "/ferry-bench-raw.XXXXXX";
        dir = malloc(len);
        if (dir == NULL) {
            goto out;
        }
        snprintf(dir, len, "%s/ferry-bench-raw.XXXXXX", base);
        if (mkdtemp(dir) == NULL) {
            fprintf(stderr, "ferry bench: cannot create a directory in %s: %s%s\n", base,
                    strerror(errno), o.raw_dir == NULL ? " (use --raw-dir)" : "");
            free(dir);
            dir = NULL;
            goto out;
        }
    }

    if (want_floors) {
        if (bench_fdatasync_probe(dir, BENCH_FLOOR_SAMPLES, BENCH_FSYNC_APPEND, &r.fsync_append,
                                  err, sizeof err) < 0 ||
            bench_fdatasync_probe(dir, BENCH_FLOOR_SAMPLES, BENCH_FSYNC_OVERWRITE,
                                  &r.fsync_overwrite, err, sizeof err) < 0 ||
            bench_fdatasync_probe(dir, BENCH_FLOOR_SAMPLES, BENCH_FSYNC_APPEND_PAGE, &r.fsync_page,
                                  err, sizeof err) < 0) {
            fprintf(stderr, "ferry bench: %s\n", err);
            goto out;
        }
    }

    struct bench_pub_config cfg = {
        .server = o.server,
        .topic = o.topic,
        .window = o.window,
        .producers = o.producers,
        .warmup = o.warmup,
    };
    bench_cleanup_topic(&cl, o.topic);
    if (bench_pub_run(&cfg, &w, want_floors ? BENCH_FLOOR_SAMPLES : 0, &r.rtt, &r.pub) < 0) {
        fprintf(stderr, "ferry bench: %s\n", r.pub.error);
        goto out;
    }
    if (r.pub.wall_s > 0) {
        r.msgs_per_s = (double)r.pub.acked / r.pub.wall_s;
        r.mb_per_s = (double)r.pub.acked * (double)o.size / r.pub.wall_s / 1e6;
    }
    if (want_floors) {
        r.have_floors = 1;
        r.target_us = BENCH_TARGET_FACTOR * (r.fsync_append.p50_us + r.rtt.p50_us);
        r.target_ok = r.pub.latency.p50_us <= r.target_us;
        r.target_page_us = BENCH_TARGET_FACTOR * (r.fsync_page.p50_us + r.rtt.p50_us);
        r.target_page_ok = r.pub.latency.p50_us <= r.target_page_us;
    }

    if (want_raw) {
        const char *mode = strcmp(o.sync, "full") == 0 ? "FULL" : "NORMAL";
        if (bench_raw_run(dir, mode, o.raw_unique, &w, o.warmup, &r.raw) < 0) {
            fprintf(stderr, "ferry bench: %s\n", r.raw.error);
            goto out;
        }
        r.have_raw = 1;
    }

    if (o.json) {
        print_json(&r);
    } else {
        print_human(&r);
    }
    fflush(stdout);
    if (r.pub.failed > 0) {
        fprintf(stderr, "ferry bench: %s\n", r.pub.error);
    }
    status = r.pub.failed > 0 ? 1 : 0;
out:
    bench_cleanup_finish(&cl);
    raw_dir_remove(dir);
    free(dir);
    bench_workload_free(&w);
    return status;
}

static void bench_usage(FILE *f)
{
    fprintf(f, "usage: ferry bench pub|consume|e2e|backlog [options]\n"
               "  pub      publish throughput and publish->ack latency\n"
               "  consume  consume+ack throughput of one group, one or more consumers\n"
               "  e2e      publish->delivery latency at a steady rate\n"
               "  backlog  publish and consume+ack rates with and without a large backlog\n"
               "(ferry bench SUBCOMMAND --help for its options)\n");
}

int ferry_bench_main(int argc, char **argv)
{
    if (argc < 2) {
        bench_usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        bench_usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "pub") == 0) {
        return bench_pub(argc - 2, argv + 2);
    }
    if (strcmp(argv[1], "consume") == 0) {
        return bench_consume_main(argc - 2, argv + 2);
    }
    if (strcmp(argv[1], "e2e") == 0) {
        return bench_e2e_main(argc - 2, argv + 2);
    }
    if (strcmp(argv[1], "backlog") == 0) {
        return bench_backlog_main(argc - 2, argv + 2);
    }
    fprintf(stderr, "ferry bench: unknown benchmark '%s'\n", argv[1]);
    bench_usage(stderr);
    return 2;
}
