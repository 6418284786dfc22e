/*
 * test_ops.c - operating ferryd day to day: private files, databases that
 * are not ferryd's, the version flag, and the CLI's file publishing and
 * secret-bearing options.
 *
 *  - Started with a permissive umask, ferryd still makes its folder 0700 and
 *    its files 0600, and warns about a folder made open before.
 *  - A ferry.db another program made is refused and left byte for byte as
 *    it was; one made by a ferryd that predates the application id is
 *    adopted.
 *  - `ferry pub --file` sends a file (newlines, NULs and all) as one
 *    message, `--file -` all of standard input; `--token SECRET` is refused
 *    without the secret in the error.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "it_util.h"

#define RUN_TIMEOUT_MS 30000

struct fx {
    struct harness_broker b;
    char dir[HARNESS_PATH_BYTES / 2];
    char data[HARNESS_PATH_BYTES];
};

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    *state = fx;
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(fx->dir, sizeof fx->dir, "%s/ferry-ops-XXXXXX", tmp);
    if (!mkdtemp(fx->dir))
        return -1;
    snprintf(fx->data, sizeof fx->data, "%s/data", fx->dir);
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    int rc = 0;
    if (fx) {
        if (fx->b.pid || fx->b.dir[0])
            rc = harness_check_log(&fx->b);
        harness_cleanup(&fx->b);
        char cmd[HARNESS_PATH_BYTES + 16];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx->dir);
        if (!getenv("HARNESS_KEEP") && system(cmd) != 0)
            rc = -1;
        free(fx);
    }
    return rc;
}

static mode_t mode_of(const char *dir, const char *name)
{
    char path[HARNESS_PATH_BYTES * 2];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    struct stat st;
    if (stat(path, &st) != 0)
        fail_msg("stat %s: %s", path, strerror(errno));
    return st.st_mode & 07777;
}

/* Runs ferryd with the data folder and extra arguments, expecting it to
 * exit by itself (it must refuse to start). */
static void run_ferryd(struct fx *fx, const char *extra, struct harness_output *out)
{
    struct harness_cmd cmd;
    assert_true(harness_ferryd_argv(&cmd) > 0);
    char *argv[HARNESS_MAX_WRAPPER_ARGS + 8];
    int n = 0;
    for (int i = 0; i < cmd.argc; i++)
        argv[n++] = cmd.argv[i];
    argv[n++] = "--data";
    argv[n++] = fx->data;
    argv[n++] = "--listen";
    argv[n++] = "127.0.0.1:0";
    if (extra)
        argv[n++] = (char *)extra;
    argv[n] = NULL;
    assert_int_equal(harness_run(fx->dir, argv, NULL, RUN_TIMEOUT_MS * harness_slowdown(), out), 0);
}

/* Publishes one message with a text payload through libferry. */
static void publish_text(struct fx *fx, const char *topic, const char *text)
{
    ferry_conn *c = it_connect(fx->b.addr);
    ferry_msg m;
    memset(&m, 0, sizeof m);
    m.topic = topic;
    m.payload = text;
    m.payload_len = strlen(text);
    ferry_ack ack;
    assert_int_equal(ferry_publish(c, &m, &ack), 0);
    ferry_close(c);
}

static void test_ops_files_are_private_whatever_the_umask(void **state)
{
    struct fx *fx = *state;
    /* A folder ferryd makes itself (the harness makes the one it is given;
     * the later --data wins). */
    char fresh[HARNESS_PATH_BYTES + 16];
    snprintf(fresh, sizeof fresh, "%s/fresh", fx->data);
    const char *const args[] = {"--data", fresh, NULL};
    mode_t old = umask(022);
    int r = harness_start_dir(&fx->b, fx->data, args);
    umask(old);
    assert_int_equal(r, 0);
    publish_text(fx, "private", "secret");
    assert_int_equal(mode_of(fx->data, "fresh"), 0700);
    static const char *const files[] = {"ferry.db", "ferry.db-wal", "ferry.db-shm", "ferryd.lock",
                                        "ferry.reserve"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        mode_t md = mode_of(fresh, files[i]);
        if (md != 0600)
            fail_msg("%s is %04o, not 0600", files[i], (unsigned)md);
    }
    assert_false(it_file_has(fx->b.log_path, "open to other users"));
}

static void test_ops_open_folder_made_before_is_reported(void **state)
{
    struct fx *fx = *state;
    assert_int_equal(mkdir(fx->data, 0755), 0);
    assert_int_equal(chmod(fx->data, 0755), 0);
    assert_int_equal(harness_start_dir(&fx->b, fx->data, NULL), 0);
    assert_true(it_file_has(fx->b.log_path, "is open to other users (mode 0755)"));
    assert_true(it_file_has(fx->b.log_path, "chmod 700"));
}

static void sql(sqlite3 *db, const char *q)
{
    char *err = NULL;
    if (sqlite3_exec(db, q, NULL, NULL, &err) != SQLITE_OK)
        fail_msg("%s: %s", q, err);
}

static void test_ops_foreign_database_is_refused_and_untouched(void **state)
{
    struct fx *fx = *state;
    assert_int_equal(mkdir(fx->data, 0700), 0);
    char path[HARNESS_PATH_BYTES + 16];
    snprintf(path, sizeof path, "%s/ferry.db", fx->data);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sql(db, "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT);"
            "INSERT INTO users(name) VALUES ('ada');");
    sqlite3_close(db);
    size_t before_len = 0, after_len = 0;
    char *before = harness_slurp(path, &before_len);

    struct harness_output out;
    run_ferryd(fx, NULL, &out);
    char *after = harness_slurp(path, &after_len);
    int same = before_len == after_len && !memcmp(before, after, before_len);
    if (out.status != 1 || !strstr(out.err, "is not a Ferry database"))
        fail_msg("ferryd status %d, stderr:\n%s", out.status, out.err);
    harness_output_free(&out);
    free(before);
    free(after);
    assert_true(same);
    /* Nothing was added beside it either: no WAL, no lock on the file. */
    char wal[HARNESS_PATH_BYTES + 32];
    snprintf(wal, sizeof wal, "%s-wal", path);
    assert_int_equal(access(wal, F_OK), -1);
}

static void test_ops_database_of_an_older_ferryd_is_adopted(void **state)
{
    struct fx *fx = *state;
    assert_int_equal(harness_start_dir(&fx->b, fx->data, NULL), 0);
    publish_text(fx, "old", "x");
    assert_int_equal(harness_stop(&fx->b), 0);
    /* As a ferryd before the application id left it. */
    sqlite3 *db = NULL;
    assert_int_equal(harness_db_open(&fx->b, &db), 0);
    sql(db, "PRAGMA application_id = 0");
    sqlite3_close(db);
    assert_int_equal(harness_restart(&fx->b), 0);
    assert_int_equal(harness_stop(&fx->b), 0);
    assert_int_equal(harness_db_open(&fx->b, &db), 0);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA application_id", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int64(st, 0), 0x46455259);
    sqlite3_finalize(st);
    sqlite3_close(db);
    struct harness_row *rows = NULL;
    assert_int_equal(harness_db_rows(&fx->b, "old", &rows), 1);
    harness_db_rows_free(rows, 1);
}

/* The inspection query of docs/OPERATIONS.md searches one topic's range
 * of the primary key, in order, without a sort (issue 19: it scanned every
 * message and sorted them). */
static void test_ops_inspection_query_uses_the_key(void **state)
{
    struct fx *fx = *state;
    assert_int_equal(harness_start_dir(&fx->b, fx->data, NULL), 0);
    publish_text(fx, "a", "a1");
    publish_text(fx, "orders", "o1");
    publish_text(fx, "b", "b1");
    publish_text(fx, "orders", "o2");
    assert_int_equal(harness_stop(&fx->b), 0);
    sqlite3 *db = NULL;
    assert_int_equal(harness_db_open(&fx->b, &db), 0);
    static const char q[] = "SELECT topic, seq, msg_id, payload FROM messages_v"
                            " WHERE topic = 'orders' ORDER BY rid LIMIT 10";
    char plan[1024] = "";
    sqlite3_stmt *st = NULL;
    char eq[sizeof q + 32];
    snprintf(eq, sizeof eq, "EXPLAIN QUERY PLAN %s", q);
    assert_int_equal(sqlite3_prepare_v2(db, eq, -1, &st, NULL), SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
        strncat(plan, (const char *)sqlite3_column_text(st, 3), sizeof plan - strlen(plan) - 2);
        strncat(plan, ";", sizeof plan - strlen(plan) - 1);
    }
    sqlite3_finalize(st);
    if (strstr(plan, "SCAN") || strstr(plan, "TEMP B-TREE") || !strstr(plan, "INTEGER PRIMARY KEY"))
        fail_msg("the inspection query's plan: %s", plan);
    assert_int_equal(sqlite3_prepare_v2(db, q, -1, &st, NULL), SQLITE_OK);
    for (int i = 1; i <= 2; i++) {
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        assert_string_equal((const char *)sqlite3_column_text(st, 0), "orders");
        assert_int_equal(sqlite3_column_int64(st, 1), i);
        char want[8];
        snprintf(want, sizeof want, "o%d", i);
        assert_int_equal(sqlite3_column_bytes(st, 3), 2);
        assert_memory_equal(sqlite3_column_blob(st, 3), want, 2);
    }
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

static void test_ops_ferryd_short_version_flag(void **state)
{
    struct fx *fx = *state;
    struct harness_output out;
    run_ferryd(fx, "-V", &out);
    assert_int_equal(out.status, 0);
    assert_non_null(strstr(out.out, "ferryd "));
    harness_output_free(&out);
}

static void run_cli(struct fx *fx, char *const *args, const char *stdin_data,
                    struct harness_output *out)
{
    const char *cli = getenv("FERRY_CLI");
    assert_non_null(cli);
    char *argv[16];
    int n = 0;
    argv[n++] = (char *)cli;
    for (; args[n - 1]; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    assert_int_equal(harness_run(fx->dir, argv, stdin_data, RUN_TIMEOUT_MS, out), 0);
}

static void test_ops_pub_file_is_one_message(void **state)
{
    struct fx *fx = *state;
    assert_int_equal(harness_start_dir(&fx->b, fx->data, NULL), 0);
    /* 200 KB with newlines and NUL bytes: too big for a command line, and
     * not lines. */
    enum { BYTES = 200000 };
    static uint8_t content[BYTES];
    it_payload(7, content, sizeof content);
    for (size_t i = 0; i < BYTES; i += 1000) {
        content[i] = '\n';
        content[i + 1] = 0;
    }
    char path[HARNESS_PATH_BYTES + 16];
    snprintf(path, sizeof path, "%s/body.bin", fx->dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(content, 1, BYTES, f), BYTES);
    fclose(f);

    struct harness_output out;
    run_cli(fx, (char *[]){"pub", "--server", fx->b.addr, "files", "--file", path, NULL}, NULL,
            &out);
    if (out.status != 0)
        fail_msg("ferry pub --file: %d %s", out.status, out.err);
    assert_string_equal(out.out, "1\n");
    harness_output_free(&out);
    run_cli(
        fx,
        (char *[]){"pub", "--server", fx->b.addr, "files", "--file", "-", "--id", "stdin-1", NULL},
        "line one\nline two\n", &out);
    assert_int_equal(out.status, 0);
    assert_string_equal(out.out, "2\n");
    harness_output_free(&out);
    run_cli(fx, (char *[]){"pub", "--server", fx->b.addr, "files", "data", "--file", path, NULL},
            NULL, &out);
    assert_int_equal(out.status, 2);
    harness_output_free(&out);

    assert_int_equal(harness_stop(&fx->b), 0);
    struct harness_row *rows = NULL;
    long n = harness_db_rows(&fx->b, "files", &rows);
    assert_int_equal(n, 2);
    assert_int_equal(rows[0].payload_len, BYTES);
    assert_memory_equal(rows[0].payload, content, BYTES);
    assert_int_equal(rows[1].payload_len, strlen("line one\nline two\n"));
    assert_string_equal(rows[1].msg_id, "stdin-1");
    harness_db_rows_free(rows, n);
}

static void test_ops_token_prefix_is_refused_without_echo(void **state)
{
    struct fx *fx = *state;
    struct harness_output out;
    run_cli(fx, (char *[]){"--token", "s3cr3t-value-1234", "topics", NULL}, NULL, &out);
    assert_int_equal(out.status, 2);
    assert_null(strstr(out.err, "s3cr3t"));
    assert_non_null(strstr(out.err, "--token-file PATH in full"));
    harness_output_free(&out);
    run_cli(fx, (char *[]){"topics", "--tok=s3cr3t-value-1234", NULL}, NULL, &out);
    assert_int_equal(out.status, 2);
    assert_null(strstr(out.err, "s3cr3t"));
    harness_output_free(&out);
    /* The CLI's rough edges: one topic by name; "no such topic" once. */
    assert_int_equal(harness_start_dir(&fx->b, fx->data, NULL), 0);
    publish_text(fx, "named", "x");
    run_cli(fx, (char *[]){"topics", "--server", fx->b.addr, "named", NULL}, NULL, &out);
    assert_int_equal(out.status, 0);
    assert_non_null(strstr(out.out, "named"));
    harness_output_free(&out);
    run_cli(fx, (char *[]){"topics", "--server", fx->b.addr, "nosuch", NULL}, NULL, &out);
    assert_int_equal(out.status, 1);
    assert_string_equal(out.err, "ferry: topics: no such topic: nosuch\n");
    harness_output_free(&out);
    run_cli(fx, (char *[]){"groups", "--server", fx->b.addr, "nosuch", NULL}, NULL, &out);
    assert_int_equal(out.status, 1);
    assert_null(strstr(out.err, "no such topic: no such topic"));
    harness_output_free(&out);
    /* "--to" is seek's own option, not a prefix to refuse (on a topic that
     * exists: a seek creates none). */
    publish_text(fx, "t", "x");
    run_cli(fx, (char *[]){"seek", "--server", fx->b.addr, "t", "--group", "g", "--to", "1", NULL},
            NULL, &out);
    if (out.status != 0)
        fail_msg("ferry seek --to: %d %s", out.status, out.err);
    harness_output_free(&out);
}

static void test_ops_relay_on_a_missing_database_leaves_nothing(void **state)
{
    struct fx *fx = *state;
    char db[HARNESS_PATH_BYTES + 16], lock[HARNESS_PATH_BYTES + 32];
    snprintf(db, sizeof db, "%s/typo.db", fx->dir);
    snprintf(lock, sizeof lock, "%s.relay.lock", db);
    struct harness_output out;
    run_cli(fx, (char *[]){"relay", "--db", db, "--server", "127.0.0.1:1", NULL}, NULL, &out);
    assert_int_equal(out.status, 1);
    harness_output_free(&out);
    assert_int_equal(access(db, F_OK), -1);
    assert_int_equal(access(lock, F_OK), -1);
}

static void test_ops_example_option_without_value_is_a_usage_error(void **state)
{
    struct fx *fx = *state;
    const char *sh = getenv("ORDERS_RUN_SH");
    assert_non_null(sh);
    struct harness_output out;
    char *argv[] = {(char *)sh, "--orders", NULL};
    assert_int_equal(harness_run(fx->dir, argv, NULL, RUN_TIMEOUT_MS, &out), 0);
    assert_int_equal(out.status, 2);
    assert_non_null(strstr(out.err, "--orders needs a value"));
    harness_output_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ops_files_are_private_whatever_the_umask, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ops_open_folder_made_before_is_reported, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ops_foreign_database_is_refused_and_untouched, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ops_database_of_an_older_ferryd_is_adopted, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ops_ferryd_short_version_flag, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ops_inspection_query_uses_the_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ops_pub_file_is_one_message, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ops_token_prefix_is_refused_without_echo, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ops_example_option_without_value_is_a_usage_error,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_ops_relay_on_a_missing_database_leaves_nothing, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
