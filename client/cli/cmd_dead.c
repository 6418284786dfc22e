/*
 * cmd_dead.c - `ferry dead replay TOPIC`: redrive the dead letters of TOPIC
 * (the broker's topic `_dead.TOPIC`, PROTOCOL.md §9.6) to the groups that
 * dead-lettered them, or with --republish publish them back to TOPIC.
 *
 * It consumes `_dead.TOPIC` as a tracking consumer group
 * (--tracking-group; default ferry-redrive, ferry-redrive.<G> with
 * --group G, ferry-replay with --republish; created at the earliest dead
 * letter). A redrive (the default) sends each dead letter back to the
 * group named in its ferry-dead-group header, and to no other, as the same
 * message (REDRIVE, PROTOCOL.md §9.6): one line `<dead seq> -> <seq>
 * <group>`. With --group G, the dead letters of other groups are passed
 * over (acked in G's own tracking group, so another run still sees them).
 *
 * With --republish, each dead letter becomes a copy published to TOPIC,
 * which every group of TOPIC receives as a new message: same key and
 * payload, the original headers without the broker's `ferry-dead-*` ones,
 * plus `ferry-replayed-from: _dead.TOPIC/<dead seq>` and
 * `ferry-original-id: <the original id>`. The copy's message id is
 * `<ferry-dead-id>~replay-<dead seq>`: derived from the dead letter alone,
 * so a replay interrupted and run again (or a group sought back) is
 * acknowledged by the broker as a duplicate, never stored twice. Only after
 * the publish is durable is the dead letter acked (pipelined); a failed
 * publish stops the command and leaves that dead letter unacked: the
 * unsubscribe at exit gives it back to the group for the next run.
 *
 * One line per dead letter: `<dead seq> -> <new seq>`, plus ` duplicate`
 * when the broker already had the copy (the number is then the original).
 *
 * The group is created with the largest max_deliveries (65535), so the
 * replay group itself never dead-letters a dead letter. --count shrinks the
 * window as in `ferry sub`, so that no more dead letters are taken than
 * wanted. Waits are sliced so that SIGINT and SIGTERM end it promptly.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

#define DEAD_DEFAULT_TIMEOUT_MS 1000
#define DEAD_WINDOW 100 /* dead letters in flight at once */
#define DEAD_SLICE_MS 200
#define DEAD_FLUSH_TIMEOUT_MS 30000
#define DEAD_PREFIX "_dead."
#define DEAD_HEADER_PREFIX "ferry-dead-"
#define DEAD_ID_HEADER "ferry-dead-id"
#define REPLAYED_FROM_HEADER "ferry-replayed-from"
#define ORIGINAL_ID_HEADER "ferry-original-id"
#define DEAD_GROUP_HEADER "ferry-dead-group"
#define REDRIVE_DEFAULT_GROUP "ferry-redrive"
#define REPUBLISH_DEFAULT_GROUP "ferry-replay"
#define TOPIC_MAX 200
#define ID_MAX 128
#define HEADERS_MAX 64

enum {
    OPT_GROUP = CLI_OPT_FIRST_COMMAND,
    OPT_COUNT,
    OPT_TIMEOUT_MS,
    OPT_TRACKING_GROUP,
    OPT_REPUBLISH,
    OPT_JSON
};

static const char usage_text[] =
    "Usage: ferry dead replay [OPTIONS] TOPIC\n"
    "\n"
    "Redrives the dead letters of TOPIC (the messages the broker moved to\n"
    "_dead.TOPIC after their group's maximum deliveries): each goes back to\n"
    "the consumer group that dead-lettered it, and only to it, as the same\n"
    "message (its sequence and id, attempt 1, a 'ferry-redriven' header), so\n"
    "that group's inbox recognises an effect already applied and no other\n"
    "group sees it again. One line per dead letter: '<dead seq> -> <seq> <group>'.\n"
    "\n"
    "With --republish, each dead letter is instead published back to TOPIC\n"
    "as a new message that EVERY group of TOPIC receives: its key and\n"
    "payload, its original headers without the ferry-dead-* ones, the headers\n"
    "'ferry-replayed-from: _dead.TOPIC/<dead seq>' and 'ferry-original-id',\n"
    "and the message id '<original id>~replay-<dead seq>'. One line per dead\n"
    "letter: '<dead seq> -> <new seq>', plus ' duplicate' when that copy was\n"
    "already published (by an earlier run). With --json, one JSON object per\n"
    "line instead: {\"dead_seq\":N,\"seq\":N,\"group\":\"G\"} for a redrive,\n"
    "{\"dead_seq\":N,\"seq\":N,\"duplicate\":false} for a copy.\n"
    "\n"
    "A dead letter is acked (in the tracking group) only once its redrive or\n"
    "copy is accepted by the broker, so an interrupted run can simply be run\n"
    "again. A run takes the dead letters stored before it started: one that\n"
    "fails again and is dead-lettered anew meanwhile is left for the next run.\n"
    "\n"
    "Options:\n"
    "  --group GROUP        redrive only the dead letters of consumer group GROUP\n"
    "  --republish          publish copies to TOPIC instead (every group gets them)\n"
    "  --json               one JSON object per dead letter (see above)\n"
    "  --tracking-group G   the consumer group on _dead.TOPIC that tracks what was\n"
    "                       done (default " REDRIVE_DEFAULT_GROUP ", " REDRIVE_DEFAULT_GROUP
    ".GROUP with\n"
    "                       --group, " REPUBLISH_DEFAULT_GROUP
    " with --republish); a new one starts\n"
    "                       at the earliest dead letter. To go over them again:\n"
    "                       ferry seek _dead.TOPIC --group G --to earliest\n"
    "  --count N            stop after N dead letters\n"
    "  --timeout-ms N       stop after N ms without a dead letter (default 1000)\n" CLI_COMMON_HELP
    "\n"
    "Exit status: 0 after --count dead letters, the timeout or a signal; 1 an\n"
    "error (the dead letter being replayed stays in _dead.TOPIC, unacked);\n"
    "2 a usage error. To look at dead letters without replaying them:\n"
    "ferry sub _dead.TOPIC --group inspect --no-ack --json\n";

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct replay_opts {
    const char *topic;
    char dead_topic[sizeof DEAD_PREFIX + TOPIC_MAX];
    const char *group;      /* the tracking group on _dead.TOPIC */
    const char *only_group; /* --group: redrive only its dead letters (NULL: all) */
    int republish;
    int json;
    char group_buf[TOPIC_MAX + 1];
    uint64_t count; /* 0: no limit */
    long timeout_ms;
};

/* FNV-1a, 64 bits: a stable digest of an id too long to quote whole. */
static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 14695981039346656037u;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211u;
    }
    return h;
}

/* The copy's message id: "<base>~replay-<seq>", base being the original
 * id (the dead letter's ferry-dead-id header, or its own id without one).
 * When that is over 128 bytes, base is cut and followed by "~" and a digest
 * of the whole of it, so the id stays the same for every run. */
static void replay_id(const ferry_delivery *d, char out[ID_MAX + 1])
{
    const char *base = d->id;
    size_t blen = strlen(d->id);
    for (size_t i = 0; i < d->header_count; i++) /* the last: the broker's own */
        if (strcmp(d->headers[i].name, DEAD_ID_HEADER) == 0) {
            base = d->headers[i].value;
            blen = d->headers[i].value_len;
        }
    char suffix[48];
    int slen = snprintf(suffix, sizeof suffix, "~replay-%" PRIu64, d->seq);
    if (blen + (size_t)slen <= ID_MAX) {
        snprintf(out, ID_MAX + 1, "%.*s%s", (int)blen, base, suffix);
        return;
    }
    /* "~" + 16 hex digits of digest. */
    size_t keep = ID_MAX - (size_t)slen - 17;
    snprintf(out, ID_MAX + 1, "%.*s~%016" PRIx64 "%s", (int)keep, base, fnv1a(base, blen), suffix);
}

/* Publishes the copy of d to o->topic and waits for its durable ack. */
static int republish(ferry_conn *c, const struct replay_opts *o, const ferry_delivery *d,
                     ferry_ack *ack)
{
    ferry_header headers[HEADERS_MAX];
    size_t n = 0;
    for (size_t i = 0; i < d->header_count; i++) {
        if (strncmp(d->headers[i].name, DEAD_HEADER_PREFIX, strlen(DEAD_HEADER_PREFIX)) == 0)
            continue;
        if (n == HEADERS_MAX - 1) {
            char detail[128];
            snprintf(detail, sizeof detail,
                     "dead letter %" PRIu64 " has more than %d headers besides ferry-dead-*",
                     d->seq, HEADERS_MAX - 1);
            return cli_fail("dead replay", FERRY_EINVALID, detail);
        }
        headers[n++] = d->headers[i];
    }
    char from[sizeof o->dead_topic + 24];
    snprintf(from, sizeof from, "%s/%" PRIu64, o->dead_topic, d->seq);
    headers[n].name = REPLAYED_FROM_HEADER;
    headers[n].value = from;
    headers[n].value_len = strlen(from);
    n++;
    const char *orig = d->id;
    size_t orig_len = strlen(d->id);
    for (size_t i = 0; i < d->header_count; i++) /* the last: the broker's own */
        if (strcmp(d->headers[i].name, DEAD_ID_HEADER) == 0) {
            orig = d->headers[i].value;
            orig_len = d->headers[i].value_len;
        }
    if (n < HEADERS_MAX) {
        headers[n].name = ORIGINAL_ID_HEADER;
        headers[n].value = orig;
        headers[n].value_len = orig_len;
        n++;
    }

    char id[ID_MAX + 1];
    replay_id(d, id);
    ferry_msg m;
    memset(&m, 0, sizeof m);
    m.topic = o->topic;
    m.id = id;
    m.key = d->key;
    m.key_len = d->key_len;
    m.headers = headers;
    m.header_count = n;
    m.payload = d->payload;
    m.payload_len = d->payload_len;
    int rc = ferry_publish(c, &m, ack);
    if (rc < 0) {
        char what[64];
        snprintf(what, sizeof what, "dead replay: dead letter %" PRIu64, d->seq);
        return cli_fail(what, rc, ferry_errmsg(c));
    }
    return CLI_EXIT_OK;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The replay loop. Returns the exit status. It takes the dead letters
 * stored before it started: a message that fails again at once is
 * dead-lettered again, as a new dead letter, which this run must not
 * redrive once more (it would go round for as long as the group fails). */
static int replay(ferry_conn *c, ferry_sub *s, const struct replay_opts *o, uint32_t window)
{
    uint64_t done = 0;
    int64_t last_ms = now_ms();
    const int64_t started_ms = wall_ms();
    while (!cli_stop_signal && (o->count == 0 || done < o->count)) {
        int64_t left_ms = last_ms + o->timeout_ms - now_ms();
        int slice = left_ms <= 0 ? 0 : left_ms < DEAD_SLICE_MS ? (int)left_ms : DEAD_SLICE_MS;
        ferry_delivery *d;
        int rc = ferry_receive(c, slice, &d);
        if (rc == FERRY_ETIMEOUT) {
            if (now_ms() - last_ms >= o->timeout_ms)
                break;
            continue;
        }
        if (rc < 0)
            return cli_fail("dead replay", rc, ferry_errmsg(c));
        if (d->ts_ms > started_ms) {
            /* Dead-lettered during this run: left for the next one. */
            ferry_delivery_free(d);
            break;
        }

        ferry_ack ack;
        const char *dgroup = NULL;
        for (size_t i = 0; i < d->header_count; i++) /* the last: the broker's own */
            if (strcmp(d->headers[i].name, DEAD_GROUP_HEADER) == 0)
                dgroup = d->headers[i].value;
        int skip = !o->republish && o->only_group && (!dgroup || strcmp(dgroup, o->only_group));
        int status = CLI_EXIT_OK;
        if (o->republish) {
            status = republish(c, o, d, &ack);
        } else if (!skip) {
            uint64_t seq = 0;
            rc = ferry_redrive(c, o->topic, dgroup, d->seq, &seq);
            if (rc < 0) {
                char what[64];
                snprintf(what, sizeof what, "dead replay: dead letter %" PRIu64, d->seq);
                status = cli_fail(what, rc, ferry_errmsg(c));
            }
            ack.seq = seq;
            ack.duplicate = 0;
        }
        if (status != CLI_EXIT_OK) {
            ferry_delivery_free(d); /* unacked: back to the group at exit */
            return status;
        }
        char dgroup_copy[TOPIC_MAX + 1] = "";
        if (dgroup)
            snprintf(dgroup_copy, sizeof dgroup_copy, "%s", dgroup);
        if (skip) {
            /* Another group's: not this run's business. */
            rc = ferry_delivery_ack_async(d);
            ferry_delivery_free(d);
            if (rc < 0)
                return cli_fail("dead replay: ack", rc, ferry_errmsg(c));
            last_ms = now_ms();
            continue;
        }
        done++;

        /* With --count, shrink the window to what is still wanted before
         * the ack frees a slot, so the broker does not send more. */
        uint64_t wanted = o->count ? o->count - done : 0;
        if (wanted > 0 && wanted < window) {
            window = (uint32_t)wanted;
            rc = ferry_sub_set_window(s, window);
            if (rc < 0) {
                ferry_delivery_free(d);
                return cli_fail("dead replay", rc, ferry_errmsg(c));
            }
        }
        /* The copy is durable: the dead letter is done. */
        rc = ferry_delivery_ack_async(d);
        uint64_t dead_seq = d->seq;
        ferry_delivery_free(d);
        if (rc < 0)
            return cli_fail("dead replay: ack", rc, ferry_errmsg(c));

        if (o->json && o->republish) {
            cli_json_print(json_pack("{s:o,s:o,s:b}", "dead_seq", cli_json_u64(dead_seq), "seq",
                                     cli_json_u64(ack.seq), "duplicate", ack.duplicate ? 1 : 0));
        } else if (o->json) {
            cli_json_print(json_pack("{s:o,s:o,s:o}", "dead_seq", cli_json_u64(dead_seq), "seq",
                                     cli_json_u64(ack.seq), "group",
                                     cli_json_str(dgroup_copy, strlen(dgroup_copy))));
        } else if (o->republish) {
            printf("%" PRIu64 " -> %" PRIu64 "%s\n", dead_seq, ack.seq,
                   ack.duplicate ? " duplicate" : "");
        } else {
            printf("%" PRIu64 " -> %" PRIu64 " %s\n", dead_seq, ack.seq, dgroup_copy);
        }
        if (fflush(stdout) != 0) {
            int err = errno;
            if (err == EPIPE)
                return CLI_EXIT_OK; /* the reader left: stop quietly */
            fprintf(stderr, "ferry: dead replay: writing standard output: %s\n", strerror(err));
            return CLI_EXIT_FAIL;
        }
        last_ms = now_ms();
    }
    return CLI_EXIT_OK;
}

/* 1 when the broker lists the topic, 0 when not, < 0 (status printed) on
 * failure. */
static int topic_exists(ferry_conn *c, const char *name)
{
    ferry_topic_info *t;
    size_t n;
    int rc = ferry_topics(c, &t, &n);
    if (rc < 0) {
        cli_fail("dead replay", rc, ferry_errmsg(c));
        return -1;
    }
    int found = 0;
    for (size_t i = 0; i < n && !found; i++)
        found = strcmp(t[i].name, name) == 0;
    ferry_topics_free(t);
    return found;
}

static int run_replay(struct cli *cli, const struct replay_opts *o)
{
    if (cli_catch_stop_signals() < 0)
        return cli_fail("dead replay", FERRY_EIO, strerror(errno));
    ferry_conn *c;
    int status = cli_connect(cli, "dead replay", NULL, &c);
    if (status != CLI_EXIT_OK)
        return status;

    /* No dead-letter topic: nothing to replay. Subscribing would create an
     * empty _dead.TOPIC (and the group) for nothing. */
    int exists = topic_exists(c, o->dead_topic);
    if (exists <= 0) {
        ferry_close(c);
        return exists < 0 ? CLI_EXIT_FAIL : CLI_EXIT_OK;
    }

    uint32_t window = DEAD_WINDOW;
    if (o->count && o->count < window)
        window = (uint32_t)o->count;
    ferry_sub_options so = {
        .size = sizeof(ferry_sub_options),
        .start = FERRY_START_EARLIEST,
        .max_in_flight = window,
        .max_deliveries = UINT16_MAX,
    };
    ferry_sub *s;
    int rc = ferry_subscribe(c, o->dead_topic, o->group, &so, &s);
    if (rc < 0) {
        status = cli_fail("dead replay", rc, ferry_errmsg(c));
        ferry_close(c);
        return status;
    }

    status = replay(c, s, o, window);

    /* Wait for the acks of what was replayed, then leave the group, which
     * gives back whatever was received and not replayed. */
    rc = ferry_flush(c, DEAD_FLUSH_TIMEOUT_MS);
    if (rc < 0 && status == CLI_EXIT_OK)
        status = cli_fail("dead replay: ack", rc, ferry_errmsg(c));
    rc = ferry_unsubscribe(s);
    if (rc < 0 && status == CLI_EXIT_OK && rc != FERRY_ECLOSED)
        status = cli_fail("dead replay: unsubscribe", rc, ferry_errmsg(c));
    ferry_close(c);
    return status;
}

int cmd_dead(struct cli *cli, int argc, char **argv)
{
    static const struct option longopts[] = {
        CLI_COMMON_LONGOPTS,
        {"group", required_argument, NULL, OPT_GROUP},
        {"count", required_argument, NULL, OPT_COUNT},
        {"timeout-ms", required_argument, NULL, OPT_TIMEOUT_MS},
        {"tracking-group", required_argument, NULL, OPT_TRACKING_GROUP},
        {"republish", no_argument, NULL, OPT_REPUBLISH},
        {"json", no_argument, NULL, OPT_JSON},
        {NULL, 0, NULL, 0},
    };
    struct replay_opts o = {.timeout_ms = DEAD_DEFAULT_TIMEOUT_MS};
    uint64_t v;
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
            o.only_group = optarg;
            break;
        case OPT_TRACKING_GROUP:
            o.group = optarg;
            break;
        case OPT_REPUBLISH:
            o.republish = 1;
            break;
        case OPT_JSON:
            o.json = 1;
            break;
        case OPT_COUNT:
            rc = cli_parse_number("dead replay", "--count", optarg, 1, UINT64_MAX, &o.count);
            if (rc != CLI_EXIT_OK)
                return rc;
            break;
        case OPT_TIMEOUT_MS:
            rc = cli_parse_number("dead replay", "--timeout-ms", optarg, 0, 1000000000, &v);
            if (rc != CLI_EXIT_OK)
                return rc;
            o.timeout_ms = (long)v;
            break;
        default:
            return cli_bad_option("dead", opt, argv);
        }
    }
    int npos = argc - optind;
    if (npos < 1)
        return cli_usage_error("dead", "missing the subcommand: replay");
    if (strcmp(argv[optind], "replay") != 0)
        return cli_usage_error("dead", "unknown subcommand '%s' (there is: replay)", argv[optind]);
    if (npos < 2)
        return cli_usage_error("dead replay", "missing TOPIC");
    if (npos > 2)
        return cli_usage_error("dead replay", "unexpected argument '%s'", argv[optind + 2]);
    o.topic = argv[optind + 1];
    if (o.topic[0] == '_')
        return cli_usage_error("dead replay",
                               "'%s' is a topic of the broker's own; name the topic the dead "
                               "letters came from ('orders' for _dead.orders)",
                               o.topic);
    if (strlen(o.topic) > TOPIC_MAX - strlen(DEAD_PREFIX))
        return cli_usage_error("dead replay",
                               "a topic of more than %zu bytes has no dead-letter topic",
                               TOPIC_MAX - strlen(DEAD_PREFIX));
    snprintf(o.dead_topic, sizeof o.dead_topic, "%s%s", DEAD_PREFIX, o.topic);
    if (o.republish && o.only_group)
        return cli_usage_error("dead replay",
                               "--group picks the dead letters to redrive; a --republish "
                               "goes to every group");
    if (!o.group) {
        if (o.republish)
            o.group = REPUBLISH_DEFAULT_GROUP;
        else if (!o.only_group)
            o.group = REDRIVE_DEFAULT_GROUP;
        else if (strlen(o.only_group) + sizeof REDRIVE_DEFAULT_GROUP > TOPIC_MAX)
            return cli_usage_error("dead replay", "--group is too long to name its tracking "
                                                  "group: give --tracking-group");
        else {
            snprintf(o.group_buf, sizeof o.group_buf, "%s.%s", REDRIVE_DEFAULT_GROUP, o.only_group);
            o.group = o.group_buf;
        }
    }
    return run_replay(cli, &o);
}
