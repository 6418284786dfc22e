/*
 * cmd_seek.c - `ferry seek TOPIC --group G --to POSITION`: move a consumer
 * group's cursor (replay from an earlier point, or skip ahead) and print
 * the new cursor.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

enum { OPT_GROUP = CLI_OPT_FIRST_COMMAND, OPT_TO, OPT_JSON };

static const char usage_text[] =
    "Usage: ferry seek [OPTIONS] TOPIC --group GROUP --to POSITION\n"
    "\n"
    "Moves the cursor of consumer group GROUP on TOPIC to POSITION (creating\n"
    "the group there if needed) and prints the new cursor: the next sequence\n"
    "number the group delivers. The group then receives every message from\n"
    "there again (or skips those before it); its deliveries in flight are\n"
    "forgotten and come again. A sequence past the topic's head + 1 is\n"
    "refused with the valid range; one before the oldest message still\n"
    "stored moves the group to that message, with a warning on stderr.\n"
    "\n"
    "Options:\n"
    "  --group GROUP        the consumer group (required)\n"
    "  --to POSITION        where to move it (required)\n"
    "  --json               print {\"topic\":\"T\",\"group\":\"G\",\"cursor\":N}\n" CLI_COMMON_HELP
    "\n" CLI_POSITION_HELP;

int cmd_seek(struct cli *cli, int argc, char **argv)
{
    static const struct option longopts[] = {
        CLI_COMMON_LONGOPTS,
        {"group", required_argument, NULL, OPT_GROUP},
        {"to", required_argument, NULL, OPT_TO},
        {"json", no_argument, NULL, OPT_JSON},
        {NULL, 0, NULL, 0},
    };
    const char *group = NULL;
    const char *to = NULL;
    int json = 0;
    ferry_start start = FERRY_START_EARLIEST;
    uint64_t value = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        if (cli_common_option(cli, opt, optarg))
            continue;
        switch (opt) {
        case 'h':
            fputs(usage_text, stdout);
            return CLI_EXIT_OK;
        case OPT_GROUP:
            group = optarg;
            break;
        case OPT_JSON:
            json = 1;
            break;
        case OPT_TO:
            to = optarg;
            if (cli_parse_position(to, &start, &value) < 0)
                return cli_usage_error("seek",
                                       "--to wants earliest, latest, a sequence number "
                                       "or a time, not '%s'",
                                       to);
            break;
        default:
            return cli_bad_option("seek", opt, argv);
        }
    }
    int npos = argc - optind;
    if (npos < 1)
        return cli_usage_error("seek", "missing TOPIC");
    if (npos > 1)
        return cli_usage_error("seek", "unexpected argument '%s'", argv[optind + 1]);
    if (!group)
        return cli_usage_error("seek", "missing --group");
    if (!to)
        return cli_usage_error("seek", "missing --to");

    ferry_conn *c;
    int rc = cli_connect(cli, "seek", NULL, &c);
    if (rc != CLI_EXIT_OK)
        return rc;
    uint64_t cursor;
    rc = ferry_seek(c, argv[optind], group, start, value, &cursor);
    if (rc < 0) {
        rc = cli_fail("seek", rc, ferry_errmsg(c));
        ferry_close(c);
        return rc;
    }
    ferry_close(c);
    /* The broker takes a sequence before the oldest message kept as that
     * message: say so, the output is the cursor taken. */
    if (start == FERRY_START_SEQ && value && cursor > value)
        fprintf(stderr,
                "ferry: seek: messages before %" PRIu64
                " are no longer stored (retention or deletion): the group starts at %" PRIu64 "\n",
                cursor, cursor);
    int bad = 0;
    if (json)
        bad = cli_json_print(json_pack(
                  "{s:o,s:o,s:o}", "topic", cli_json_str(argv[optind], strlen(argv[optind])),
                  "group", cli_json_str(group, strlen(group)), "cursor", cli_json_u64(cursor))) < 0;
    else
        printf("%" PRIu64 "\n", cursor);
    if (fflush(stdout) != 0 || bad)
        return cli_fail("seek", FERRY_EIO, "cannot write standard output");
    return CLI_EXIT_OK;
}
