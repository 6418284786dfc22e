/*
 * cmd_peek.c - `ferry peek TOPIC`: print a topic's stored messages without
 * a consumer group (PEEK): no lease, no attempt counted, nothing written,
 * and no topic created.
 *
 * It pages through the topic with ferry_peek from the start position until
 * it reaches the head (or --count messages). --follow then polls: a PEEK
 * from the last next_seq every PEEK_POLL_MS, since the broker pushes
 * messages only to consumer groups. SIGINT and SIGTERM end it with 0.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

#define PEEK_POLL_MS 200
#define PEEK_PAGE 100

enum {
    OPT_FROM = CLI_OPT_FIRST_COMMAND,
    OPT_TIME,
    OPT_COUNT,
    OPT_FOLLOW,
    OPT_JSON,
};

static const char usage_text[] =
    "Usage: ferry peek [OPTIONS] TOPIC\n"
    "\n"
    "Prints the stored messages of TOPIC (or of its dead letters, _dead.TOPIC)\n"
    "without a consumer group: nothing is acked, leased, counted or created.\n"
    "One line per message: its sequence number, a tab, and the payload (a\n"
    "newline in the payload printed as \\n). Stops at the topic's head.\n"
    "\n"
    "Options:\n"
    "  --from SEQ           start at sequence SEQ (default: the first kept)\n"
    "  --time TIME          start at the first message stored at or after TIME\n"
    "                       (2026-11-27T04:00:00Z, 2026-11-27, or 1795752000000ms)\n"
    "  --count N            print at most N messages\n"
    "  --follow             after the head, poll for new messages every 200 ms\n"
    "                       until --count, SIGINT or SIGTERM\n"
    "  --json               print one JSON object per message with every field\n" CLI_COMMON_HELP
    "\n"
    "Exit status: 0 success; 1 an error (an unknown topic among them); 2 a\n"
    "usage error.\n";

struct peek_opts {
    const char *topic;
    uint64_t from_seq;
    int64_t from_time_ms;
    uint64_t count; /* 0: no limit */
    int follow;
    int json;
};

static int run(struct cli *cli, const struct peek_opts *o)
{
    if (cli_catch_stop_signals() < 0)
        return cli_fail("peek", FERRY_EIO, strerror(errno));
    ferry_conn *c;
    int status = cli_connect(cli, "peek", NULL, &c);
    if (status != CLI_EXIT_OK)
        return status;
    ferry_peek_options po = FERRY_PEEK_OPTIONS_INIT;
    po.from_seq = o->from_seq;
    po.from_time_ms = o->from_time_ms;
    uint64_t printed = 0;
    while (!cli_stop_signal && (o->count == 0 || printed < o->count)) {
        uint64_t want = o->count ? o->count - printed : PEEK_PAGE;
        po.max_messages = (uint32_t)(want < PEEK_PAGE ? want : PEEK_PAGE);
        ferry_peek_result r;
        int rc = ferry_peek(c, o->topic, &po, &r);
        if (rc < 0) {
            status = cli_fail("peek", rc, ferry_errmsg(c));
            break;
        }
        for (size_t i = 0; i < r.count; i++) {
            if (o->json)
                cli_print_delivery_json(r.msgs[i]);
            else
                cli_print_delivery(r.msgs[i]);
        }
        printed += r.count;
        int at_head = r.next_seq > r.head_seq;
        size_t got = r.count;
        po.from_seq = r.next_seq;
        po.from_time_ms = 0; /* the time found the start; from here on by sequence */
        ferry_peek_result_free(&r);
        if (fflush(stdout) != 0) {
            int err = errno;
            if (err != EPIPE)
                status = cli_fail("peek: writing standard output", FERRY_EIO, strerror(err));
            break;
        }
        if (at_head || got == 0) {
            if (!o->follow)
                break;
            struct timespec ts = {0, PEEK_POLL_MS * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    ferry_close(c);
    return status;
}

int cmd_peek(struct cli *cli, int argc, char **argv)
{
    static const struct option longopts[] = {
        CLI_COMMON_LONGOPTS,
        {"from", required_argument, NULL, OPT_FROM},
        {"time", required_argument, NULL, OPT_TIME},
        {"count", required_argument, NULL, OPT_COUNT},
        {"follow", no_argument, NULL, OPT_FOLLOW},
        {"json", no_argument, NULL, OPT_JSON},
        {NULL, 0, NULL, 0},
    };
    struct peek_opts o = {0};
    int have_from = 0, have_time = 0;
    ferry_start start;
    uint64_t v = 0;
    int rc, opt;
    while ((opt = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        if (cli_common_option(cli, opt, optarg))
            continue;
        switch (opt) {
        case 'h':
            fputs(usage_text, stdout);
            return CLI_EXIT_OK;
        case OPT_FROM:
            if ((rc = cli_parse_number("peek", "--from", optarg, 1, UINT64_MAX, &o.from_seq)) !=
                CLI_EXIT_OK)
                return rc;
            have_from = 1;
            break;
        case OPT_TIME:
            if (cli_parse_position(optarg, &start, &v) < 0 || start != FERRY_START_TIME ||
                v > INT64_MAX)
                return cli_usage_error("peek", "--time wants a UTC time or Unix ms, not '%s'",
                                       optarg);
            o.from_time_ms = (int64_t)v;
            have_time = 1;
            break;
        case OPT_COUNT:
            if ((rc = cli_parse_number("peek", "--count", optarg, 1, UINT64_MAX, &o.count)) !=
                CLI_EXIT_OK)
                return rc;
            break;
        case OPT_FOLLOW:
            o.follow = 1;
            break;
        case OPT_JSON:
            o.json = 1;
            break;
        default:
            return cli_bad_option("peek", opt, argv);
        }
    }
    if (have_from && have_time)
        return cli_usage_error("peek", "--from and --time exclude each other");
    int npos = argc - optind;
    if (npos < 1)
        return cli_usage_error("peek", "missing TOPIC");
    if (npos > 1)
        return cli_usage_error("peek", "unexpected argument '%s'", argv[optind + 1]);
    o.topic = argv[optind];
    return run(cli, &o);
}
