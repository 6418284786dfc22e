/*
 * test_inspect.c - reading a stopped broker's ferry.db the way
 * docs/OPERATIONS.md says: the SQLite extension ferry_sqlite (sqlite/)
 * shows the binary headers column readably.
 *
 *  - Messages published through libferry with headers (a repeated name, a
 *    name with a quote and a control character, a value that is not UTF-8,
 *    none at all, an empty list) come out of ferry_headers() and
 *    ferry_header() on messages_v exactly as documented, loaded into this
 *    program's SQLite with sqlite3_load_extension.
 *  - A headers blob that is not the store's encoding fails the statement
 *    with "ferry_headers: malformed headers blob".
 *  - The documented command, `sqlite3 -readonly -cmd '.load PATH' ferry.db
 *    "SELECT ..."`, works with the real sqlite3 shell.
 *
 * The module is named by the environment variable FERRY_SQLITE_EXT (the
 * built ferry_sqlite.so), the shell by SQLITE3_CLI (meson finds it; a
 * missing sqlite3, which script/bootstrap installs, fails the test);
 * SQLITE3_PRELOAD, when not empty, is the LD_PRELOAD the shell needs in a
 * sanitizer build.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "harness.h"
#include "it_util.h"

#define RUN_TIMEOUT_MS 30000

static int setup(void **state)
{
    if (!getenv("FERRY_SQLITE_EXT")) {
        fprintf(stderr, "setup: the environment variable FERRY_SQLITE_EXT is not set\n");
        return -1;
    }
    return it_fx_setup(state, sizeof(struct it_fx), NULL, "test_inspect");
}

static void publish(ferry_conn *c, const char *payload, const ferry_header *h, size_t n)
{
    ferry_msg m = {.topic = "orders", .payload = payload, .payload_len = strlen(payload)};
    m.headers = h;
    m.header_count = n;
    ferry_ack ack;
    int rc = ferry_publish(c, &m, &ack);
    if (rc != 0)
        fail_msg("publish %s: %s (%s)", payload, ferry_strerror(rc), ferry_errmsg(c));
}

#define H(n, v)                                                                                    \
    {                                                                                              \
        .name = (n), .value = (v), .value_len = sizeof(v) - 1                                      \
    }

/* The messages of the test, 1..5 on topic orders, one on another topic. */
static void publish_all(struct it_fx *fx)
{
    const ferry_header h1[] = {H("trace", "t-1"), H("a", "1"), H("b", "x"), H("a", "2"),
                               H("a", "3")};
    const ferry_header h2[] = {H("q\"uo\x01te", "tab\there \"q\" back\\slash\n")};
    const ferry_header h4[] = {H("trace", "\xff\xfe"), H("trace", "second"),
                               H("caf\xc3\xa9", "\xe2\x82\xac")};
    const ferry_header h5[] = {H("empty", "")};
    publish(fx->c, "m1", h1, 5);
    publish(fx->c, "m2", h2, 1);
    publish(fx->c, "m3", NULL, 0);
    publish(fx->c, "m4", h4, 3);
    publish(fx->c, "m5", h5, 1);
    const ferry_header other[] = {H("trace", "not-orders")};
    ferry_msg m = {.topic = "payments", .payload = "p", .payload_len = 1};
    m.headers = other;
    m.header_count = 1;
    assert_int_equal(ferry_publish(fx->c, &m, NULL), 0);
    ferry_close(fx->c);
    fx->c = NULL;
    int st = harness_stop(&fx->b);
    if (st != 0)
        harness_dump_log(&fx->b);
    assert_int_equal(st, 0);
}

static sqlite3 *open_with_extension(struct it_fx *fx)
{
    sqlite3 *db = NULL;
    assert_int_equal(harness_db_open(&fx->b, &db), 0);
    /* The C API only: SQL's load_extension() stays off. */
    assert_int_equal(sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 1, NULL),
                     SQLITE_OK);
    char *err = NULL;
    int rc = sqlite3_load_extension(db, getenv("FERRY_SQLITE_EXT"), NULL, &err);
    if (rc != SQLITE_OK)
        fail_msg("sqlite3_load_extension(%s): %s", getenv("FERRY_SQLITE_EXT"), err ? err : "?");
    sqlite3_free(err);
    return db;
}

/* Expected column values: NULL for SQL NULL; text compared exactly; a blob
 * written as "X'hex'". */
struct want {
    const char *headers;
    const char *trace;
};

static void check_column(sqlite3_stmt *st, int col, const char *want, long row)
{
    int type = sqlite3_column_type(st, col);
    if (!want) {
        if (type != SQLITE_NULL)
            fail_msg("row %ld column %d: want NULL, got \"%s\"", row, col,
                     (const char *)sqlite3_column_text(st, col));
        return;
    }
    if (strncmp(want, "X'", 2) == 0) {
        assert_int_equal(type, SQLITE_BLOB);
        const unsigned char *b = sqlite3_column_blob(st, col);
        int n = sqlite3_column_bytes(st, col);
        char hex[256] = "X'";
        for (int i = 0; i < n && i < 100; i++)
            snprintf(hex + strlen(hex), sizeof hex - strlen(hex), "%02X", b[i]);
        strcat(hex, "'");
        assert_string_equal(hex, want);
        return;
    }
    if (type != SQLITE_TEXT)
        fail_msg("row %ld column %d: want text \"%s\", got type %d", row, col, want, type);
    const char *got = (const char *)sqlite3_column_text(st, col);
    assert_int_equal(sqlite3_column_bytes(st, col), (int)strlen(want));
    if (strcmp(got, want) != 0)
        fail_msg("row %ld column %d:\n got  %s\n want %s", row, col, got, want);
}

static const struct want wants[] = {
    {"{\"trace\":\"t-1\",\"a\":[\"1\",\"2\",\"3\"],\"b\":\"x\"}", "t-1"},
    {"{\"q\\\"uo\\u0001te\":\"tab\\u0009here \\\"q\\\" back\\\\slash\\u000a\"}", NULL},
    {NULL, NULL},
    {"{\"trace\":[\"\xef\xbf\xbd\xef\xbf\xbd\",\"second\"],\"caf\xc3\xa9\":\"\xe2\x82\xac\"}",
     "X'FFFE'"},
    {"{\"empty\":\"\"}", NULL},
};
#define NWANT (sizeof wants / sizeof wants[0])

static const char query[] = "SELECT ferry_headers(headers), ferry_header(headers,'trace')"
                            " FROM messages_v WHERE topic='orders' ORDER BY rid";

static void test_inspect_headers_readable(void **state)
{
    struct it_fx *fx = *state;
    publish_all(fx);
    sqlite3 *db = open_with_extension(fx);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, query, -1, &st, NULL), SQLITE_OK);
    long n = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        assert_true(n < (long)NWANT);
        check_column(st, 0, wants[n].headers, n + 1);
        check_column(st, 1, wants[n].trace, n + 1);
        n++;
    }
    assert_int_equal(rc, SQLITE_DONE);
    assert_int_equal(n, NWANT);
    sqlite3_finalize(st);

    /* The JSON is JSON to SQLite's own functions, the second value of a
     * repeated name included; other names and lookups. */
    static const struct {
        const char *sql, *want;
    } more[] = {
        {"SELECT group_concat(json_valid(ferry_headers(headers)), ',') FROM messages_v"
         " WHERE topic='orders' AND headers IS NOT NULL",
         "1,1,1,1"},
        {"SELECT json_extract(ferry_headers(headers), '$.a[1]') FROM messages_v"
         " WHERE topic='orders' AND seq=1",
         "2"},
        {"SELECT ferry_header(headers, 'a') || ferry_header(headers, 'b') FROM messages_v"
         " WHERE topic='orders' AND seq=1",
         "1x"},
        {"SELECT ferry_header(headers, 'q\"uo' || char(1) || 'te') FROM messages_v"
         " WHERE topic='orders' AND seq=2",
         "tab\there \"q\" back\\slash\n"},
        {"SELECT quote(ferry_header(headers, 'empty')) FROM messages_v"
         " WHERE topic='orders' AND seq=5",
         "''"},
        {"SELECT ferry_header(headers, 'trace') FROM messages_v WHERE topic='payments'",
         "not-orders"},
        {"SELECT ferry_headers(x'0000')", "{}"},
        {"SELECT quote(ferry_headers(NULL)) || quote(ferry_header(NULL, 'a'))"
         " || quote(ferry_header(x'0000', NULL))",
         "NULLNULLNULL"},
    };
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++) {
        assert_int_equal(sqlite3_prepare_v2(db, more[i].sql, -1, &st, NULL), SQLITE_OK);
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW)
            fail_msg("%s: %s", more[i].sql, sqlite3_errmsg(db));
        const char *got = (const char *)sqlite3_column_text(st, 0);
        if (!got || strcmp(got, more[i].want) != 0)
            fail_msg("%s:\n got  %s\n want %s", more[i].sql, got ? got : "NULL", more[i].want);
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
}

/* The error of a statement whose only row is sql's. */
static void expect_error(sqlite3 *db, const char *sql, const char *want)
{
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    }
    if (rc != SQLITE_ERROR || strcmp(sqlite3_errmsg(db), want) != 0)
        fail_msg("%s: step %d, \"%s\"; want the error \"%s\"", sql, rc, sqlite3_errmsg(db), want);
    sqlite3_finalize(st);
}

static void test_inspect_malformed_blob_is_an_error(void **state)
{
    struct it_fx *fx = *state;
    publish_all(fx);
    sqlite3 *db = open_with_extension(fx);
    /* The stored headers of message 1 without their last byte: the last
     * value's length then reaches past the end. */
    char *err = NULL;
    assert_int_equal(sqlite3_exec(db,
                                  "UPDATE messages SET headers = substr(headers, 1,"
                                  " length(headers) - 1) WHERE rid = (SELECT rid FROM messages_v"
                                  " WHERE topic = 'orders' AND seq = 1)",
                                  NULL, NULL, &err),
                     SQLITE_OK);
    assert_int_equal(sqlite3_changes(db), 1);
    expect_error(db, query, "ferry_headers: malformed headers blob");
    expect_error(db,
                 "SELECT ferry_header(headers, 'trace') FROM messages_v"
                 " WHERE topic = 'orders' AND seq = 1",
                 "ferry_header: malformed headers blob");
    static const char *const bad[] = {
        "x''",                     /* no count */
        "x'00'",                   /* half a count */
        "x'0001'",                 /* a count of 1, no header */
        "x'000100016100'",         /* a name, half a value length */
        "x'0001000161000231'",     /* a value shorter than its length */
        "x'00010001610001310000'", /* bytes after the last header */
        "x'0002000161000131'",     /* one header of two */
        "x'ffff0001610001310001'", /* a count far beyond the blob */
        "x'0001ffff61'",           /* a name length past the end */
        "'text is not a blob'",    /* not the encoding either */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char sql[128];
        snprintf(sql, sizeof sql, "SELECT ferry_headers(%s)", bad[i]);
        expect_error(db, sql, "ferry_headers: malformed headers blob");
    }
    /* The other messages still read. */
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT ferry_headers(headers) FROM messages_v"
                                        " WHERE topic = 'orders' AND seq = 5",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "{\"empty\":\"\"}");
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* docs/OPERATIONS.md's command with the real sqlite3 shell: .load with the
 * module's path without its .so, as the documentation writes it. */
static void test_inspect_sqlite3_shell(void **state)
{
    struct it_fx *fx = *state;
    const char *shell = getenv("SQLITE3_CLI");
    if (!shell || !shell[0])
        fail_msg("SQLITE3_CLI is not set: meson found no sqlite3 (script/bootstrap installs it)");
    publish_all(fx);
    char mod[HARNESS_PATH_BYTES], load[HARNESS_PATH_BYTES + 16], db[HARNESS_PATH_BYTES + 16];
    snprintf(mod, sizeof mod, "%s", getenv("FERRY_SQLITE_EXT"));
    size_t ml = strlen(mod);
    assert_true(ml > 3 && strcmp(mod + ml - 3, ".so") == 0);
    mod[ml - 3] = '\0';
    snprintf(load, sizeof load, ".load %s", mod);
    snprintf(db, sizeof db, "%s/ferry.db", fx->b.data_dir);
    char *argv[] = {(char *)shell,
                    "-readonly",
                    "-cmd",
                    load,
                    db,
                    "SELECT seq, ferry_headers(headers) FROM messages_v"
                    " WHERE topic = 'orders' ORDER BY rid LIMIT 10",
                    NULL};
    /* A sanitizer build's module needs the runtimes preloaded into the
     * uninstrumented shell (meson sets SQLITE3_PRELOAD then). */
    const char *preload = getenv("SQLITE3_PRELOAD");
    char *old_preload = NULL, *old_asan = NULL;
    if (preload && preload[0]) {
        const char *p = getenv("LD_PRELOAD"), *a = getenv("ASAN_OPTIONS");
        old_preload = p ? strdup(p) : NULL;
        old_asan = a ? strdup(a) : NULL;
        char asan[1024];
        snprintf(asan, sizeof asan, "%s%sdetect_leaks=0", a ? a : "", a && a[0] ? ":" : "");
        assert_int_equal(setenv("LD_PRELOAD", preload, 1), 0);
        assert_int_equal(setenv("ASAN_OPTIONS", asan, 1), 0);
    }
    struct harness_output out;
    int rc = harness_run(fx->b.dir, argv, NULL, RUN_TIMEOUT_MS, &out);
    if (preload && preload[0]) {
        old_preload ? setenv("LD_PRELOAD", old_preload, 1) : unsetenv("LD_PRELOAD");
        old_asan ? setenv("ASAN_OPTIONS", old_asan, 1) : unsetenv("ASAN_OPTIONS");
        free(old_preload);
        free(old_asan);
    }
    assert_int_equal(rc, 0);
    static const char want[] =
        "1|{\"trace\":\"t-1\",\"a\":[\"1\",\"2\",\"3\"],\"b\":\"x\"}\n"
        "2|{\"q\\\"uo\\u0001te\":\"tab\\u0009here \\\"q\\\" back\\\\slash\\u000a\"}\n"
        "3|\n"
        "4|{\"trace\":[\"\xef\xbf\xbd\xef\xbf\xbd\",\"second\"],\"caf\xc3\xa9\":\"\xe2\x82\xac\"}\n"
        "5|{\"empty\":\"\"}\n";
    if (out.status != 0 || strcmp(out.out, want) != 0)
        fail_msg("sqlite3 %s: exit %d\n stdout: %s\n want:   %s\n stderr: %s", load, out.status,
                 out.out, want, out.err);
    harness_output_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_inspect_headers_readable, setup, it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_inspect_malformed_blob_is_an_error, setup,
                                        it_fx_teardown),
        cmocka_unit_test_setup_teardown(test_inspect_sqlite3_shell, setup, it_fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
