/*
 * bench_opts.c - option parsing and output helpers shared by `bench
 * consume`, `bench e2e` and `bench backlog`.
 *
 * Options are described by a table (name, kind, destination, bounds) so
 * that each subcommand lists its options once. The same spellings as
 * `bench pub` are accepted: "--opt VALUE" and "--opt=VALUE".
 */
#include "bench_internal.h"

#include <errno.h>
#include <ferry.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int opt_size(const char *cmd, const struct bench_opt *o, const char *s)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (s[0] == '\0' || s[0] == '-' || *end != '\0' || errno != 0 || v < o->min || v > o->max) {
        fprintf(stderr, "ferry bench %s: %s wants an integer in %zu..%zu, got '%s'\n", cmd, o->name,
                o->min, o->max, s);
        return -1;
    }
    *(size_t *)o->dst = (size_t)v;
    return 0;
}

int bench_opts_parse(const char *cmd, int argc, char **argv, const struct bench_opt *opts,
                     size_t nopts)
{
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            return 1;
        }
    }
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        const char *eq = strchr(arg, '=');
        size_t nlen = strncmp(arg, "--", 2) == 0 && eq != NULL ? (size_t)(eq - arg) : strlen(arg);
        const char *val = strncmp(arg, "--", 2) == 0 && eq != NULL ? eq + 1 : NULL;
        const struct bench_opt *o = NULL;
        for (size_t k = 0; k < nopts; k++) {
            if (strlen(opts[k].name) == nlen && strncmp(opts[k].name, arg, nlen) == 0) {
                o = &opts[k];
                break;
            }
        }
        if (o == NULL) {
            fprintf(stderr, "ferry bench %s: unknown option '%s' (see --help)\n", cmd, arg);
            return 2;
        }
        if (o->kind == BENCH_OPT_FLAG) {
            if (val != NULL) {
                fprintf(stderr, "ferry bench %s: %s takes no value\n", cmd, o->name);
                return 2;
            }
            *(int *)o->dst = 1;
            continue;
        }
        if (val == NULL) {
            if (i + 1 >= argc) {
                fprintf(stderr, "ferry bench %s: %s needs a value\n", cmd, o->name);
                return 2;
            }
            val = argv[++i];
        }
        if (o->kind == BENCH_OPT_STR) {
            if (val[0] == '\0') {
                fprintf(stderr, "ferry bench %s: %s needs a non-empty value\n", cmd, o->name);
                return 2;
            }
            *(const char **)o->dst = val;
        } else if (opt_size(cmd, o, val) < 0) {
            return 2;
        }
    }
    return 0;
}

const char *bench_default_server(void)
{
    const char *env = getenv("FERRY_SERVER");
    return env != NULL && env[0] != '\0' ? env : FERRY_DEFAULT_SERVER;
}

void bench_unique_name(const char *prefix, char *out, size_t len)
{
    snprintf(out, len, "%s-%ld-%lld", prefix, (long)getpid(), (long long)bench_unix_ms());
}

const char *bench_fmt_thousands(double v, char *buf, size_t len)
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

const char *bench_fmt_us(double us, char *buf, size_t len)
{
    if (us < 1000) {
        snprintf(buf, len, "%.0f µs", us);
    } else if (us < 1000000) {
        snprintf(buf, len, "%.2f ms", us / 1000);
    } else {
        snprintf(buf, len, "%.2f s", us / 1000000);
    }
    return buf;
}

void bench_json_string(const char *s)
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
