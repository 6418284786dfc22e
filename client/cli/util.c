/*
 * util.c - what every command needs: option helpers, error lines, the
 * connection (with the token file), JSON values (jansson), base64, positions in a
 * topic, numbers.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

/* A token is at most 1024 bytes (the protocol's limit); the file may add a
 * trailing newline or other whitespace. */
#define TOKEN_FILE_MAX 4096

int cli_common_option(struct cli *cli, int opt, const char *arg)
{
    switch (opt) {
    case CLI_OPT_SERVER:
        cli->server = arg;
        return 1;
    case CLI_OPT_TOKEN_FILE:
        cli->token_file = arg;
        return 1;
    default:
        return 0;
    }
}

int cli_bad_option(const char *cmd, int opt, char **argv)
{
    const char *arg = optind > 0 ? argv[optind - 1] : "?";
    char prefix[64], hint[64];
    snprintf(prefix, sizeof prefix, "ferry: %s%s", cmd ? cmd : "", cmd ? ": " : "");
    snprintf(hint, sizeof hint, "ferry %s%s--help", cmd ? cmd : "", cmd ? " " : "");
    if (opt == ':')
        fprintf(stderr, "%soption '%s' needs a value (see '%s')\n", prefix, arg, hint);
    else if (optopt > 0 && optopt < 0x100)
        fprintf(stderr, "%sunknown option '-%c' (see '%s')\n", prefix, optopt, hint);
    else
        fprintf(stderr, "%sunknown option '%s' (see '%s')\n", prefix, arg, hint);
    return CLI_EXIT_USAGE;
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "ferry: %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see 'ferry %s --help')\n", cmd);
    return CLI_EXIT_USAGE;
}

int cli_fail(const char *what, int err, const char *detail)
{
    /* A broker message that already begins with the code's text ("no such
     * topic") is not said twice. */
    const char *text = ferry_strerror(err);
    if (detail && *detail && !strncmp(detail, text, strlen(text)))
        fprintf(stderr, "ferry: %s: %s\n", what, detail);
    else if (detail && *detail)
        fprintf(stderr, "ferry: %s: %s: %s\n", what, ferry_strerror(err), detail);
    else
        fprintf(stderr, "ferry: %s: %s\n", what, ferry_strerror(err));
    return CLI_EXIT_FAIL;
}

/* Reads the token: the whole file less trailing whitespace, one line. */
static int read_token(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "ferry: cannot read token file %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t n = fread(buf, 1, len - 1, f);
    int bad = ferror(f) || !feof(f);
    fclose(f);
    if (bad) {
        fprintf(stderr, "ferry: token file %s: unreadable or longer than %zu bytes\n", path,
                len - 1);
        return -1;
    }
    buf[n] = '\0';
    while (n > 0 && strchr(" \t\r\n", buf[n - 1]))
        buf[--n] = '\0';
    if (n == 0 || strlen(buf) != n || strchr(buf, '\n')) {
        fprintf(stderr, "ferry: token file %s: expected one non-empty line\n", path);
        return -1;
    }
    return 0;
}

int cli_connect(const struct cli *cli, const char *cmd, const ferry_options *base, ferry_conn **out)
{
    ferry_options opts = FERRY_OPTIONS_INIT;
    if (base)
        opts = *base;
    char name[64];
    snprintf(name, sizeof name, "ferry %s", cmd);
    opts.client_name = name;

    char token[TOKEN_FILE_MAX];
    if (cli->token_file) {
        if (read_token(cli->token_file, token, sizeof token) < 0)
            return CLI_EXIT_FAIL;
        opts.token = token;
    }

    char detail[1024];
    int rc = ferry_connect(cli->server, &opts, out, detail, sizeof detail);
    memset(token, 0, sizeof token);
    if (rc < 0) {
        char what[512];
        snprintf(what, sizeof what, "cannot connect to %s", cli->server);
        return cli_fail(what, rc, detail);
    }
    return CLI_EXIT_OK;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char b = s[0];
    size_t len;
    uint32_t cp;
    if (b < 0x80)
        return 1;
    if (b >= 0xc2 && b <= 0xdf) {
        len = 2;
        cp = b & 0x1f;
    } else if (b >= 0xe0 && b <= 0xef) {
        len = 3;
        cp = b & 0x0f;
    } else if (b >= 0xf0 && b <= 0xf4) {
        len = 4;
        cp = b & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    /* Overlong forms, UTF-16 surrogates, beyond U+10FFFF. */
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

json_t *cli_json_str(const void *str, size_t len)
{
    if (cli_utf8_valid(str, len))
        return json_stringn(str, len);
    /* Each invalid byte becomes U+FFFD: 3 bytes at most for each one. */
    const unsigned char *s = str;
    char *buf = malloc(len * 3 + 1);
    if (!buf)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = s[i] < 0x80 ? 1 : utf8_len(s + i, len - i);
        if (n == 0) {
            memcpy(buf + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        } else {
            memcpy(buf + o, s + i, n);
            o += n;
            i += n;
        }
    }
    json_t *v = json_stringn(buf, o);
    free(buf);
    return v;
}

int cli_json_set(json_t *obj, const char *key, json_t *value)
{
    if (!value)
        return -1;
    return json_object_set_new(obj, key, value);
}

json_t *cli_json_u64(uint64_t v)
{
    return json_integer(v > (uint64_t)INT64_MAX ? (json_int_t)INT64_MAX : (json_int_t)v);
}

int cli_json_print(json_t *v)
{
    if (!v)
        return -1;
    int rc = json_dumpf(v, stdout, JSON_COMPACT | JSON_REAL_PRECISION(15));
    json_decref(v);
    if (rc < 0 || putchar('\n') == EOF)
        return -1;
    return 0;
}

int cli_utf8_valid(const void *str, size_t len)
{
    const unsigned char *s = str;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_len(s + i, len - i);
        if (n == 0)
            return 0;
        i += n;
    }
    return 1;
}

json_t *cli_json_base64(const void *data, size_t len)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = data;
    char *out = malloc((len + 2) / 3 * 4 + 1);
    if (!out)
        return NULL;
    size_t i = 0, o = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = abc[v >> 18];
        out[o++] = abc[(v >> 12) & 63];
        out[o++] = abc[(v >> 6) & 63];
        out[o++] = abc[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = abc[v >> 18];
        out[o++] = abc[(v >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = abc[v >> 18];
        out[o++] = abc[(v >> 12) & 63];
        out[o++] = abc[(v >> 6) & 63];
        out[o++] = '=';
    }
    json_t *v = json_stringn(out, o);
    free(out);
    return v;
}

/* Parses exactly `digits` decimal digits at s. */
static int fixed_digits(const char *s, int digits, int *out)
{
    int v = 0;
    for (int i = 0; i < digits; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

/* "YYYY-MM-DDTHH:MM:SS[.fraction]Z" or "YYYY-MM-DD" (midnight UTC) to
 * Unix ms. Returns 0 or -1. */
static int parse_iso8601(const char *s, uint64_t *ms_out)
{
    struct tm tm = {0};
    int year, mon, day, hh = 0, mm = 0, ss = 0, ms = 0;
    if (fixed_digits(s, 4, &year) < 0 || s[4] != '-' || fixed_digits(s + 5, 2, &mon) < 0 ||
        s[7] != '-' || fixed_digits(s + 8, 2, &day) < 0)
        return -1;
    const char *p = s + 10;
    if (*p != '\0') {
        if ((*p != 'T' && *p != 't') || fixed_digits(p + 1, 2, &hh) < 0 || p[3] != ':' ||
            fixed_digits(p + 4, 2, &mm) < 0 || p[6] != ':' || fixed_digits(p + 7, 2, &ss) < 0)
            return -1;
        p += 9;
        if (*p == '.') {
            p++;
            int n = 0, scale = 100;
            while (*p >= '0' && *p <= '9') {
                if (n < 3)
                    ms += (*p - '0') * scale;
                scale /= 10;
                n++;
                p++;
            }
            if (n == 0 || n > 9)
                return -1;
        }
        if ((*p != 'Z' && *p != 'z') || p[1] != '\0')
            return -1;
    }
    if (year < 1970 || mon < 1 || mon > 12 || day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 59)
        return -1;
    tm.tm_year = year - 1900;
    tm.tm_mon = mon - 1;
    tm.tm_mday = day;
    tm.tm_hour = hh;
    tm.tm_min = mm;
    tm.tm_sec = ss;
    time_t t = timegm(&tm);
    /* timegm normalises 2026-02-30 into March: refuse what moved. */
    if (t == (time_t)-1 || tm.tm_mday != day || tm.tm_mon != mon - 1)
        return -1;
    *ms_out = (uint64_t)t * 1000u + (uint64_t)ms;
    return 0;
}

int cli_parse_position(const char *arg, ferry_start *start, uint64_t *value)
{
    *value = 0;
    if (strcmp(arg, "earliest") == 0) {
        *start = FERRY_START_EARLIEST;
        return 0;
    }
    if (strcmp(arg, "latest") == 0) {
        *start = FERRY_START_LATEST;
        return 0;
    }
    size_t digits = strspn(arg, "0123456789");
    if (digits > 0 && digits <= 19 && (arg[digits] == '\0' || strcmp(arg + digits, "ms") == 0)) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(arg, &end, 10);
        if (errno != 0)
            return -1;
        if (arg[digits] == '\0') {
            if (v == 0)
                return -1; /* sequences start at 1 */
            *start = FERRY_START_SEQ;
        } else {
            *start = FERRY_START_TIME;
        }
        *value = v;
        return 0;
    }
    if (parse_iso8601(arg, value) == 0) {
        *start = FERRY_START_TIME;
        return 0;
    }
    return -1;
}

int cli_parse_number(const char *cmd, const char *opt, const char *arg, uint64_t min, uint64_t max,
                     uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(arg, &end, 10);
    if (errno != 0 || end == arg || *end != '\0' || arg[0] < '0' || arg[0] > '9' || v < min ||
        v > max)
        return cli_usage_error(cmd, "%s wants a number from %" PRIu64 " to %" PRIu64 ", not '%s'",
                               opt, min, max, arg);
    *out = v;
    return CLI_EXIT_OK;
}

volatile sig_atomic_t cli_stop_signal;

static void on_stop_signal(int sig)
{
    cli_stop_signal = sig;
}

int cli_catch_stop_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    /* A second signal, e.g. while the acks are awaited, ends it at once. */
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0)
        return -1;
    /* A closed stdout shows as EPIPE from fflush, which the caller handles. */
    signal(SIGPIPE, SIG_IGN);
    return 0;
}
