/*
 * cmd_pub.c - `ferry pub TOPIC [DATA]`: publish messages.
 *
 * With DATA: one synchronous publish; prints the sequence number, plus
 * " duplicate" when the broker already had the message id.
 *
 * Without DATA: every line of standard input (without its '\n') is one
 * message, published pipelined (ferry_publish_async) and printed in input
 * order as its ack arrives. --id would give every line the same id, so it is
 * refused; --id-prefix P gives line N the id "P<N>" instead, which makes
 * re-running the same import idempotent. While standard input has nothing
 * more to read, the command waits for every ack and flushes its output, so
 * interactive use answers each line at once and a file or pipe streams at
 * full speed.
 *
 * A line larger than the broker's maximum message is reported and skipped;
 * any other error stops reading. The exit status is 1 when any message was
 * not published.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

#define PUB_MAX_HEADERS 64 /* ferry.h: header_count 0..64 */
#define PUB_WINDOW 1000    /* pipelined publishes in flight (the library default) */
#define PUB_FLUSH_TIMEOUT_MS 30000
#define PUB_MAX_LINE_ERRORS 20 /* per-line errors printed before only counting */
#define PUB_READ_CHUNK (64 * 1024)

enum {
    OPT_ID = CLI_OPT_FIRST_COMMAND,
    OPT_ID_PREFIX,
    OPT_KEY,
    OPT_HEADER,
    OPT_JSON,
    OPT_FILE,
    OPT_LINES
};

/* The largest file --file reads: more than any broker accepts as one
 * message (it answers MESSAGE_TOO_LARGE with its own limit). */
#define PUB_MAX_FILE_BYTES (256u << 20)

static const char usage_text[] =
    "Usage: ferry pub [OPTIONS] TOPIC [DATA]\n"
    "\n"
    "Publishes DATA as one message and prints its sequence number (followed by\n"
    "' duplicate' when the broker already stored that message id). With --file,\n"
    "publishes the whole file (or all of standard input, '-') as one message.\n"
    "Otherwise (--lines, the default without DATA) publishes each line of\n"
    "standard input as one message and prints one line per message, in order.\n"
    "\n"
    "Options:\n"
    "  --file PATH          the file's bytes are the payload of one message\n"
    "                       ('-': all of standard input)\n"
    "  --lines              one message per line of standard input (the default\n"
    "                       without DATA or --file)\n"
    "  --id ID              message id (idempotency key); DATA or --file only\n"
    "  --id-prefix PREFIX   stdin only: line N gets the id PREFIX<N>\n"
    "  --key KEY            message key\n"
    "  --header NAME=VALUE  add a header (repeatable, at most 64)\n"
    "  --json               print {\"topic\",\"seq\",\"id\",\"duplicate\"} per "
    "message\n" CLI_COMMON_HELP "\n"
    "Exit status: 0 all published, 1 an error (any message not published),\n"
    "2 a usage error. Use '--' before DATA that starts with '-'.\n";

struct pub_opts {
    const char *topic;
    const char *id;
    const char *id_prefix;
    const char *key;
    ferry_header headers[PUB_MAX_HEADERS];
    size_t header_count;
    int json;
};

static void print_ack(const struct pub_opts *o, const ferry_ack *ack)
{
    if (o->json) {
        cli_json_print(
            json_pack("{s:o,s:o,s:o,s:b}", "topic", cli_json_str(o->topic, strlen(o->topic)), "seq",
                      cli_json_u64(ack->seq), "id", cli_json_str(ack->id, strlen(ack->id)),
                      "duplicate", ack->duplicate ? 1 : 0));
    } else {
        printf("%" PRIu64 "%s\n", ack->seq, ack->duplicate ? " duplicate" : "");
    }
}

static void fill_msg(const struct pub_opts *o, ferry_msg *m)
{
    memset(m, 0, sizeof *m);
    m->topic = o->topic;
    m->id = o->id;
    if (o->key) {
        m->key = o->key;
        m->key_len = strlen(o->key);
    }
    m->headers = o->headers;
    m->header_count = o->header_count;
}

static int publish_one(ferry_conn *c, const struct pub_opts *o, const char *data, size_t len)
{
    ferry_msg m;
    fill_msg(o, &m);
    m.payload = data;
    m.payload_len = len;
    ferry_ack ack;
    int rc = ferry_publish(c, &m, &ack);
    if (rc < 0)
        return cli_fail("pub", rc, ferry_errmsg(c));
    print_ack(o, &ack);
    return CLI_EXIT_OK;
}

/* Reads all of path ("-": standard input) into a malloc'd buffer. Returns
 * 0, or prints why and returns CLI_EXIT_FAIL. */
static int read_file(const char *path, char **out, size_t *len)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f) {
        fprintf(stderr, "ferry: pub: cannot open %s: %s\n", path, strerror(errno));
        return CLI_EXIT_FAIL;
    }
    size_t cap = 64 * 1024, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n == cap) {
            char *bigger = cap < PUB_MAX_FILE_BYTES ? realloc(buf, cap * 2) : NULL;
            if (!bigger)
                break;
            buf = bigger;
            cap *= 2;
        }
        size_t k = fread(buf + n, 1, cap - n, f);
        n += k;
        if (k == 0)
            break;
    }
    int bad = !buf || ferror(f) || n == cap;
    int e = errno;
    if (f != stdin)
        fclose(f);
    if (bad) {
        fprintf(stderr, "ferry: pub: cannot read %s: %s\n", path,
                !buf || n == cap ? "larger than 256 MiB, or out of memory" : strerror(e));
        free(buf);
        return CLI_EXIT_FAIL;
    }
    *out = buf;
    *len = n;
    return CLI_EXIT_OK;
}

/* Standard-input mode. Callbacks arrive in publish order, so the line
 * number of each queued message waits in a FIFO for its ack. */
struct stream {
    const struct pub_opts *o;
    ferry_conn *c;
    uint64_t *lines; /* ring of queued line numbers */
    size_t cap, head, len;
    uint64_t failed;
    unsigned printed;
    int stop; /* an error every later line would repeat: stop reading */
};

static void line_error(struct stream *s, uint64_t line, int err, const char *detail)
{
    s->failed++;
    if (err != FERRY_EMESSAGE_TOO_LARGE) {
        if (s->stop)
            return; /* the error that stopped us, repeated for each pending line */
        s->stop = 1;
    }
    if (s->printed++ >= PUB_MAX_LINE_ERRORS)
        return;
    char what[64];
    snprintf(what, sizeof what, "pub: line %" PRIu64, line);
    cli_fail(what, err, detail);
}

static void on_ack(void *userdata, int status, const ferry_ack *ack)
{
    struct stream *s = userdata;
    uint64_t line = s->lines[s->head];
    s->head = (s->head + 1) % s->cap;
    s->len--;
    if (status == 0)
        print_ack(s->o, ack);
    else
        line_error(s, line, status, ferry_errmsg(s->c));
}

/* Line reader over a raw fd, so that it knows when input has run dry. */
struct reader {
    int fd;
    char *buf;
    size_t cap, start, end;
    size_t limit; /* longest line accepted */
    int eof;
    int skipping; /* discarding the rest of a line over limit */
};

/* Before blocking on input: wait for every ack and show the output. */
static void on_idle(struct stream *s)
{
    if (ferry_in_flight(s->c) > 0) {
        int rc = ferry_flush(s->c, PUB_FLUSH_TIMEOUT_MS);
        if (rc < 0 && !s->stop) {
            s->stop = 1;
            cli_fail("pub", rc, ferry_errmsg(s->c));
        }
    }
    fflush(stdout);
}

/* Returns 1 and a line (too_long set, contents dropped, for one over
 * limit), 0 at end of input, or -1 on a read error. */
static int reader_next(struct reader *r, struct stream *s, const char **line, size_t *len,
                       int *too_long)
{
    *too_long = 0;
    for (;;) {
        char *p = r->buf + r->start;
        char *nl = memchr(p, '\n', r->end - r->start);
        if (nl || (r->eof && (r->start < r->end || r->skipping))) {
            size_t n = nl ? (size_t)(nl - p) : r->end - r->start;
            r->start += n + (nl ? 1 : 0);
            *too_long = r->skipping || n > r->limit;
            r->skipping = 0;
            *line = p;
            *len = n;
            return 1;
        }
        if (r->eof)
            return 0;

        size_t have = r->end - r->start;
        if (r->skipping || have > r->limit) {
            r->skipping = 1;
            r->start = r->end = 0;
        } else if (r->start > 0) {
            memmove(r->buf, r->buf + r->start, have);
            r->start = 0;
            r->end = have;
        }
        if (r->end == r->cap) {
            size_t ncap = r->cap * 2 > r->limit + 1 ? r->limit + 1 : r->cap * 2;
            char *nb = realloc(r->buf, ncap);
            if (!nb) {
                errno = ENOMEM;
                return -1;
            }
            r->buf = nb;
            r->cap = ncap;
        }

        struct pollfd pfd = {.fd = r->fd, .events = POLLIN};
        if (poll(&pfd, 1, 0) == 0)
            on_idle(s);
        if (s->stop)
            return 0;
        ssize_t n = read(r->fd, r->buf + r->end, r->cap - r->end);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            r->eof = 1;
        r->end += (size_t)n;
    }
}

static int publish_stdin(ferry_conn *c, const struct pub_opts *o)
{
    ferry_server_info info;
    ferry_server_info_get(c, &info);
    struct stream s = {.o = o, .c = c, .cap = PUB_WINDOW + 1};
    struct reader r = {.fd = STDIN_FILENO, .limit = info.max_message_bytes};
    r.cap = PUB_READ_CHUNK < r.limit + 1 ? PUB_READ_CHUNK : r.limit + 1;
    s.lines = malloc(s.cap * sizeof *s.lines);
    r.buf = malloc(r.cap);
    if (!s.lines || !r.buf) {
        free(s.lines);
        free(r.buf);
        return cli_fail("pub", FERRY_ENOMEM, "");
    }

    int status = CLI_EXIT_OK;
    uint64_t lineno = 0;
    char id[256];
    const char *line;
    size_t len;
    int too_long;
    int got = 0;
    while (!s.stop && (got = reader_next(&r, &s, &line, &len, &too_long)) == 1) {
        lineno++;
        if (too_long) {
            char detail[128];
            snprintf(detail, sizeof detail, "the line is longer than the broker's %u bytes",
                     info.max_message_bytes);
            line_error(&s, lineno, FERRY_EMESSAGE_TOO_LARGE, detail);
            continue;
        }
        ferry_msg m;
        fill_msg(o, &m);
        m.payload = line;
        m.payload_len = len;
        if (o->id_prefix) {
            snprintf(id, sizeof id, "%s%" PRIu64, o->id_prefix, lineno);
            m.id = id;
        }
        /* Queue the line number first: the callback may run inside the call. */
        s.lines[(s.head + s.len) % s.cap] = lineno;
        s.len++;
        int rc = ferry_publish_async(c, &m, on_ack, &s);
        if (rc < 0) {
            s.len--; /* no callback will come for it */
            line_error(&s, lineno, rc, ferry_errmsg(c));
        }
    }
    if (got < 0 && !s.stop) {
        fprintf(stderr, "ferry: pub: reading standard input: %s\n", strerror(errno));
        status = CLI_EXIT_FAIL;
    }

    int rc = ferry_flush(c, PUB_FLUSH_TIMEOUT_MS);
    if (rc < 0 && !s.stop)
        cli_fail("pub", rc, ferry_errmsg(c));
    if (rc < 0 || s.failed > 0)
        status = CLI_EXIT_FAIL;
    if (s.failed > PUB_MAX_LINE_ERRORS || (s.failed > 1 && s.stop))
        fprintf(stderr, "ferry: pub: %" PRIu64 " of %" PRIu64 " messages not published\n", s.failed,
                lineno);
    free(s.lines);
    free(r.buf);
    return status;
}

int cmd_pub(struct cli *cli, int argc, char **argv)
{
    static const struct option longopts[] = {
        CLI_COMMON_LONGOPTS,
        {"id", required_argument, NULL, OPT_ID},
        {"id-prefix", required_argument, NULL, OPT_ID_PREFIX},
        {"key", required_argument, NULL, OPT_KEY},
        {"header", required_argument, NULL, OPT_HEADER},
        {"json", no_argument, NULL, OPT_JSON},
        {"file", required_argument, NULL, OPT_FILE},
        {"lines", no_argument, NULL, OPT_LINES},
        {NULL, 0, NULL, 0},
    };
    struct pub_opts o = {0};
    const char *file = NULL;
    int lines = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        if (cli_common_option(cli, opt, optarg))
            continue;
        switch (opt) {
        case 'h':
            fputs(usage_text, stdout);
            return CLI_EXIT_OK;
        case OPT_ID:
            o.id = optarg;
            break;
        case OPT_ID_PREFIX:
            o.id_prefix = optarg;
            break;
        case OPT_KEY:
            o.key = optarg;
            break;
        case OPT_HEADER: {
            char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg)
                return cli_usage_error("pub", "--header wants NAME=VALUE, not '%s'", optarg);
            if (o.header_count == PUB_MAX_HEADERS)
                return cli_usage_error("pub", "at most %d headers", PUB_MAX_HEADERS);
            *eq = '\0';
            o.headers[o.header_count++] = (ferry_header){optarg, eq + 1, strlen(eq + 1)};
            break;
        }
        case OPT_JSON:
            o.json = 1;
            break;
        case OPT_FILE:
            file = optarg;
            break;
        case OPT_LINES:
            lines = 1;
            break;
        default:
            return cli_bad_option("pub", opt, argv);
        }
    }
    int npos = argc - optind;
    if (npos < 1)
        return cli_usage_error("pub", "missing TOPIC");
    if (npos > 2)
        return cli_usage_error("pub", "unexpected argument '%s'", argv[optind + 2]);
    o.topic = argv[optind];
    const char *data = npos == 2 ? argv[optind + 1] : NULL;
    if ((data != NULL) + (file != NULL) + lines > 1)
        return cli_usage_error("pub", "give one of DATA, --file and --lines");
    if (file && o.id_prefix)
        return cli_usage_error("pub", "--id-prefix is for lines from standard input; use --id");
    if (data && o.id_prefix)
        return cli_usage_error("pub", "--id-prefix is for lines from standard input; use --id");
    if (!data && !file && o.id)
        return cli_usage_error("pub", "--id names one message; for lines from standard input "
                                      "use --id-prefix");
    if (o.id_prefix && strlen(o.id_prefix) > 100)
        return cli_usage_error("pub", "--id-prefix is longer than 100 bytes");

    ferry_options opts = {.size = sizeof(ferry_options), .max_in_flight = PUB_WINDOW};
    ferry_conn *c;
    int rc = cli_connect(cli, "pub", &opts, &c);
    if (rc != CLI_EXIT_OK)
        return rc;
    if (file) {
        char *buf = NULL;
        size_t len = 0;
        rc = read_file(file, &buf, &len);
        if (rc == CLI_EXIT_OK)
            rc = publish_one(c, &o, buf, len);
        free(buf);
    } else {
        rc = data ? publish_one(c, &o, data, strlen(data)) : publish_stdin(c, &o);
    }
    ferry_close(c);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "ferry: pub: writing standard output: %s\n", strerror(errno));
        rc = CLI_EXIT_FAIL;
    }
    return rc;
}
