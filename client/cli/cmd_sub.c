/*
 * cmd_sub.c - `ferry sub TOPIC --group G`: receive messages of a consumer
 * group and print them, one per line.
 *
 * Each message is printed and standard output flushed before it is acked
 * (pipelined, ferry_delivery_ack_async), so an ack never precedes the
 * output it stands for: a crash or a closed pipe costs a redelivery, never
 * a message. --no-ack leaves every message in flight; the unsubscribe at
 * exit gives them back to the group at once.
 *
 * --count N shrinks the window to what is still wanted before acking, so
 * the broker sends no more than N messages in all (but at most one more
 * that the unsubscribe gives back: the window cannot be 0), and repeated
 * `--count 1` runs do not push other messages towards dead-lettering.
 *
 * Waits are sliced (SUB_SLICE_MS) so that SIGINT and SIGTERM, which only
 * set a flag, end the command promptly: it then waits for the acks already
 * sent, unsubscribes and exits 0.
 *
 * A subscription the broker ends because its topic or group was deleted
 * (`ferry topics delete`, `ferry groups delete`: SUB_END) makes
 * ferry_receive return FERRY_EUNKNOWN_TOPIC or FERRY_EUNKNOWN_GROUP once
 * the messages already received are printed: that is printed as an error
 * ("ferry: sub: no such topic: subscription to T/G ended: ...") and the
 * exit status is 1.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

#define SUB_DEFAULT_WINDOW 100 /* the library default */
#define SUB_SLICE_MS 200       /* longest wait before looking at the signal flag */
#define SUB_FLUSH_TIMEOUT_MS 30000

enum {
    OPT_GROUP = CLI_OPT_FIRST_COMMAND,
    OPT_FROM,
    OPT_COUNT,
    OPT_NO_ACK,
    OPT_JSON,
    OPT_WINDOW,
    OPT_TIMEOUT_MS,
    OPT_CREATE,
};

static const char usage_text[] =
    "Usage: ferry sub [OPTIONS] TOPIC --group GROUP\n"
    "\n"
    "Receives the messages of consumer group GROUP on TOPIC and prints one line\n"
    "per message: its sequence number, a tab, and the payload (a newline in the\n"
    "payload printed as \\n). Each message is acked after it is printed. Runs\n"
    "until --count messages, --timeout-ms without one, or SIGINT/SIGTERM; exits\n"
    "1 when the topic or the group is deleted meanwhile.\n"
    "\n"
    "Options:\n"
    "  --group GROUP        the consumer group (required); created if new\n"
    "  --from POSITION      where a new group starts (default earliest); an\n"
    "                       existing group keeps its cursor (see 'ferry seek')\n"
    "  --count N            exit after N messages\n"
    "  --no-ack             do not ack: the messages go back to the group at exit\n"
    "  --json               print one JSON object per message with every field\n"
    "  --window N           messages in flight at once, 1-65535 (default 100)\n"
    "  --timeout-ms N       exit after N ms without a message\n"
    "  --create             create TOPIC if it does not exist (without it, an\n"
    "                       unknown topic is an error, so a typo creates nothing)\n" CLI_COMMON_HELP
    "\n" CLI_POSITION_HELP "\n"
    "Exit status: 0 after --count messages, a timeout or a signal; 1 an error;\n"
    "2 a usage error.\n";

struct sub_opts {
    const char *topic;
    const char *group;
    ferry_start start;
    uint64_t start_value;
    uint64_t count; /* 0: no limit */
    int no_ack;
    int json;
    uint32_t window;
    long timeout_ms; /* < 0: none */
    int create;
};

void cli_print_delivery(const ferry_delivery *d)
{
    printf("%" PRIu64 "\t", d->seq);
    const char *p = d->payload;
    size_t left = d->payload_len;
    while (left > 0) {
        const char *nl = memchr(p, '\n', left);
        size_t n = nl ? (size_t)(nl - p) : left;
        fwrite(p, 1, n, stdout);
        if (!nl)
            break;
        fputs("\\n", stdout);
        p += n + 1;
        left -= n + 1;
    }
    putchar('\n');
}

/* "name":"text" when valid UTF-8, else "name_b64":"base64". */
static int json_bytes(json_t *o, const char *name, const void *p, size_t len)
{
    if (cli_utf8_valid(p, len))
        return cli_json_set(o, name, json_stringn(p, len));
    char key[32];
    snprintf(key, sizeof key, "%s_b64", name);
    return cli_json_set(o, key, cli_json_base64(p, len));
}

int cli_print_delivery_json(const ferry_delivery *d)
{
    json_t *o = json_pack("{s:o}", "topic", cli_json_str(d->topic, strlen(d->topic)));
    if (!o)
        return -1;
    int rc = 0;
    if (d->group)
        rc |= cli_json_set(o, "group", cli_json_str(d->group, strlen(d->group)));
    rc |= cli_json_set(o, "seq", cli_json_u64(d->seq));
    rc |= cli_json_set(o, "id", cli_json_str(d->id, strlen(d->id)));
    rc |= d->key_len > 0 ? json_bytes(o, "key", d->key, d->key_len)
                         : cli_json_set(o, "key", json_null());
    /* headers is an object, which holds a name once (its last value, what
     * a JSON parser kept of a repeated key); when a name repeats,
     * header_list has every header in order as [name, value]. */
    json_t *h = json_object(), *list = json_array();
    for (size_t i = 0; h && list && i < d->header_count; i++) {
        /* A header name is UTF-8 on the wire; a name that is not is shown
         * lossily (U+FFFD) rather than dropped. */
        json_t *name = cli_json_str(d->headers[i].name, strlen(d->headers[i].name));
        json_t *value = cli_json_str(d->headers[i].value, d->headers[i].value_len);
        if (!name || !value || json_object_set(h, json_string_value(name), value) < 0 ||
            json_array_append_new(list, json_pack("[OO]", name, value)) < 0)
            rc = -1;
        json_decref(name);
        json_decref(value);
    }
    if (!list)
        rc = -1;
    int repeated = h && json_object_size(h) < d->header_count;
    rc |= cli_json_set(o, "headers", h);
    if (repeated)
        rc |= cli_json_set(o, "header_list", list);
    else
        json_decref(list);
    if (d->group) {
        rc |= cli_json_set(o, "attempt", json_integer(d->attempt));
        rc |= cli_json_set(o, "redelivered", json_boolean(d->redelivered));
    }
    rc |= cli_json_set(o, "ts_ms", json_integer(d->ts_ms));
    rc |= json_bytes(o, "payload", d->payload, d->payload_len);
    if (rc) {
        json_decref(o);
        return -1;
    }
    return cli_json_print(o);
}

/* Numbers for --count, --window, --timeout-ms: decimal, in [min, max]. */
static int parse_number(const char *opt, const char *arg, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(arg, &end, 10);
    if (errno != 0 || end == arg || *end != '\0' || arg[0] == '-' || v < min || v > max)
        return cli_usage_error("sub", "%s wants a number from %" PRIu64 " to %" PRIu64 ", not '%s'",
                               opt, min, max, arg);
    *out = v;
    return CLI_EXIT_OK;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The receive loop. Returns the exit status. A reader of standard output
 * that went away (EPIPE) ends it quietly, like a signal. */
static int consume(ferry_conn *c, ferry_sub *s, const struct sub_opts *o)
{
    uint64_t received = 0;
    uint32_t window = o->window;
    int64_t last_ms = now_ms();
    while (!cli_stop_signal && (o->count == 0 || received < o->count)) {
        int64_t slice = SUB_SLICE_MS;
        if (o->timeout_ms >= 0) {
            int64_t left = last_ms + o->timeout_ms - now_ms();
            slice = left < 0 ? 0 : left < slice ? left : slice;
        }
        ferry_delivery *d;
        int rc = ferry_receive(c, (int)slice, &d);
        if (rc == FERRY_ETIMEOUT) {
            if (o->timeout_ms >= 0 && now_ms() - last_ms >= o->timeout_ms)
                break;
            continue;
        }
        if (rc < 0)
            return cli_fail("sub", rc, ferry_errmsg(c));
        last_ms = now_ms();
        received++;

        if (o->json)
            cli_print_delivery_json(d);
        else
            cli_print_delivery(d);
        if (fflush(stdout) != 0) {
            int err = errno;
            ferry_delivery_free(d); /* not acked: it was not written */
            if (err == EPIPE)
                return CLI_EXIT_OK;
            fprintf(stderr, "ferry: sub: writing standard output: %s\n", strerror(err));
            return CLI_EXIT_FAIL;
        }

        /* With --count, shrink the window to what is still wanted before
         * the ack frees a slot, so the broker does not send more. */
        uint64_t left = o->count ? o->count - received : 0;
        if (!o->no_ack && left > 0 && left < window) {
            window = (uint32_t)left;
            rc = ferry_sub_set_window(s, window);
            if (rc < 0) {
                ferry_delivery_free(d);
                return cli_fail("sub", rc, ferry_errmsg(c));
            }
        }
        if (!o->no_ack) {
            rc = ferry_delivery_ack_async(d);
            if (rc < 0) {
                ferry_delivery_free(d);
                return cli_fail("sub: ack", rc, ferry_errmsg(c));
            }
        }
        ferry_delivery_free(d);
    }
    return CLI_EXIT_OK;
}

static int run(struct cli *cli, const struct sub_opts *o)
{
    if (cli_catch_stop_signals() < 0)
        return cli_fail("sub", FERRY_EIO, strerror(errno));
    ferry_conn *c;
    int status = cli_connect(cli, "sub", NULL, &c);
    if (status != CLI_EXIT_OK)
        return status;

    ferry_sub_options so = {
        .size = sizeof(ferry_sub_options),
        .start = o->start,
        .start_value = o->start_value,
        .max_in_flight = o->window,
        .topic_must_exist = !o->create,
    };
    ferry_sub *s;
    int rc = ferry_subscribe(c, o->topic, o->group, &so, &s);
    if (rc < 0) {
        status = cli_fail("sub", rc, ferry_errmsg(c));
        ferry_close(c);
        return status;
    }

    status = consume(c, s, o);

    /* Wait for the acks of what was printed, then leave the group. */
    rc = ferry_flush(c, SUB_FLUSH_TIMEOUT_MS);
    if (rc < 0 && status == CLI_EXIT_OK)
        status = cli_fail("sub: ack", rc, ferry_errmsg(c));
    rc = ferry_unsubscribe(s);
    if (rc < 0 && status == CLI_EXIT_OK && rc != FERRY_ECLOSED)
        status = cli_fail("sub: unsubscribe", rc, ferry_errmsg(c));
    ferry_close(c);
    return status;
}

int cmd_sub(struct cli *cli, int argc, char **argv)
{
    static const struct option longopts[] = {
        CLI_COMMON_LONGOPTS,
        {"group", required_argument, NULL, OPT_GROUP},
        {"from", required_argument, NULL, OPT_FROM},
        {"count", required_argument, NULL, OPT_COUNT},
        {"no-ack", no_argument, NULL, OPT_NO_ACK},
        {"json", no_argument, NULL, OPT_JSON},
        {"window", required_argument, NULL, OPT_WINDOW},
        {"timeout-ms", required_argument, NULL, OPT_TIMEOUT_MS},
        {"create", no_argument, NULL, OPT_CREATE},
        {NULL, 0, NULL, 0},
    };
    struct sub_opts o = {
        .start = FERRY_START_EARLIEST, .window = SUB_DEFAULT_WINDOW, .timeout_ms = -1};
    uint64_t v = 0; /* set by parse_number on success; gcc -O3 cannot tell */
    int rc;
    int opt;
    while ((opt = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        if (cli_common_option(cli, opt, optarg))
            continue;
        switch (opt) {
        case 'h':
            fputs(usage_text, stdout);
            return CLI_EXIT_OK;
        case OPT_GROUP:
            o.group = optarg;
            break;
        case OPT_FROM:
            if (cli_parse_position(optarg, &o.start, &o.start_value) < 0)
                return cli_usage_error("sub",
                                       "--from wants earliest, latest, a sequence number "
                                       "or a time, not '%s'",
                                       optarg);
            break;
        case OPT_COUNT:
            if ((rc = parse_number("--count", optarg, 1, UINT64_MAX, &o.count)) != CLI_EXIT_OK)
                return rc;
            break;
        case OPT_NO_ACK:
            o.no_ack = 1;
            break;
        case OPT_JSON:
            o.json = 1;
            break;
        case OPT_WINDOW:
            if ((rc = parse_number("--window", optarg, 1, 65535, &v)) != CLI_EXIT_OK)
                return rc;
            o.window = (uint32_t)v;
            break;
        case OPT_TIMEOUT_MS:
            if ((rc = parse_number("--timeout-ms", optarg, 0, 1000000000, &v)) != CLI_EXIT_OK)
                return rc;
            o.timeout_ms = (long)v;
            break;
        case OPT_CREATE:
            o.create = 1;
            break;
        default:
            return cli_bad_option("sub", opt, argv);
        }
    }
    int npos = argc - optind;
    if (npos < 1)
        return cli_usage_error("sub", "missing TOPIC");
    if (npos > 1)
        return cli_usage_error("sub", "unexpected argument '%s'", argv[optind + 1]);
    o.topic = argv[optind];
    if (!o.group)
        return cli_usage_error("sub", "missing --group");
    /* No more in flight than will be printed: the rest would only be given
     * back, one more attempt each. */
    if (o.count && o.count < o.window)
        o.window = (uint32_t)o.count;
    return run(cli, &o);
}
