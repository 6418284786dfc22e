/*
 * relay_it.c - see relay_it.h.
 */
#include "relay_it.h"

#include "it_util.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

sqlite3 *rit_app_open(const char *path)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open(path, &db);
    if (rc != SQLITE_OK)
        print_error("sqlite3_open(%s): %s\n", path, db ? sqlite3_errmsg(db) : "?");
    assert_int_equal(rc, SQLITE_OK);
    sqlite3_busy_timeout(db, 10000);
    assert_int_equal(sqlite3_exec(db, "PRAGMA journal_mode = WAL", NULL, NULL, NULL), SQLITE_OK);
    rc = ferry_outbox_install(db);
    if (rc != 0)
        print_error("ferry_outbox_install: %s (%s)\n", ferry_strerror(rc), sqlite3_errmsg(db));
    assert_int_equal(rc, 0);
    return db;
}

void rit_put_n(sqlite3 *db, const char *topic, const char *prefix, int first, int n)
{
    assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    for (int i = first; i < first + n; i++) {
        char payload[160];
        int len = snprintf(payload, sizeof payload, "%s-%d", prefix, i);
        ferry_msg m;
        memset(&m, 0, sizeof m);
        m.topic = topic;
        m.payload = payload;
        m.payload_len = (size_t)len;
        int rc = ferry_outbox_put(db, &m, NULL);
        if (rc != 0)
            print_error("ferry_outbox_put: %s (%s)\n", ferry_strerror(rc), sqlite3_errmsg(db));
        assert_int_equal(rc, 0);
    }
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
}

static const char *find_sqlite3_shell(void)
{
    static const char *const paths[] = {"/usr/bin/sqlite3", "/usr/local/bin/sqlite3",
                                        "/bin/sqlite3"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
        if (access(paths[i], X_OK) == 0)
            return paths[i];
    return NULL;
}

int rit_shell(const char *dir, const char *path, const char *sql)
{
    const char *shell = find_sqlite3_shell();
    if (!shell)
        return -1;
    char *argv[] = {(char *)shell, "-bail", (char *)path, NULL};
    struct harness_output out;
    /* The script on stdin, after a busy timeout (the shell's .timeout). */
    size_t len = strlen(sql) + 64;
    char *script = malloc(len);
    assert_non_null(script);
    snprintf(script, len, ".timeout 10000\n%s\n", sql);
    assert_int_equal(harness_run(dir, argv, script, 30000, &out), 0);
    free(script);
    if (out.status != 0)
        print_error("sqlite3 shell exited %d: %s%s\n", out.status, out.out, out.err);
    assert_int_equal(out.status, 0);
    harness_output_free(&out);
    return 0;
}

long rit_count(const char *path, const char *where)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 10000);
    char sql[512];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM ferry_outbox%s%s", where ? " WHERE " : "",
             where ? where : "");
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        print_error("%s: %s\n", sql, sqlite3_errmsg(db));
    assert_int_equal(rc, SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    long n = (long)sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

pid_t rit_relay_start(const char *db, const char *server, const char *log_path,
                      const char *const *extra, const char *env_kv)
{
    const char *cli = getenv("FERRY_CLI");
    assert_non_null(cli);
    char *argv[32];
    int argc = 0;
    argv[argc++] = (char *)cli;
    argv[argc++] = "relay";
    argv[argc++] = "--db";
    argv[argc++] = (char *)db;
    argv[argc++] = "--server";
    argv[argc++] = (char *)server;
    for (int i = 0; extra && extra[i] && argc < 30; i++)
        argv[argc++] = (char *)extra[i];
    argv[argc] = NULL;
    char *kv = env_kv ? strdup(env_kv) : NULL;

    int logfd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    assert_true(logfd >= 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2(devnull, STDIN_FILENO);
        dup2(logfd, STDOUT_FILENO);
        dup2(logfd, STDERR_FILENO);
        if (kv)
            putenv(kv);
        execv(cli, argv);
        _exit(127);
    }
    free(kv);
    close(logfd);
    return pid;
}

int rit_wait_exit(pid_t pid, int timeout_ms)
{
    int64_t deadline = harness_now_ms() + timeout_ms;
    for (;;) {
        int st;
        pid_t p = waitpid(pid, &st, WNOHANG);
        if (p == pid) {
            if (WIFEXITED(st))
                return WEXITSTATUS(st);
            if (WIFSIGNALED(st))
                return 128 + WTERMSIG(st);
            return -1;
        }
        if (harness_now_ms() >= deadline)
            return -1;
        it_sleep_ms(10);
    }
}

int rit_relay_stop(pid_t pid)
{
    kill(pid, SIGTERM);
    int st = rit_wait_exit(pid, 10000);
    if (st < 0) {
        fprintf(stderr, "relay %d did not stop within 10 s of SIGTERM; killing it\n", (int)pid);
        rit_kill9(pid);
    }
    return st;
}

void rit_kill9(pid_t pid)
{
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

void rit_dump(const char *path)
{
    size_t len;
    char *s = harness_slurp(path, &len);
    fprintf(stderr, "----- %s -----\n%s----- end of %s -----\n", path, s ? s : "", path);
    free(s);
}

int rit_wait_log(const char *path, const char *needle, int timeout_ms)
{
    int64_t deadline = harness_now_ms() + timeout_ms;
    while (harness_now_ms() < deadline) {
        if (it_file_has(path, needle))
            return 1;
        it_sleep_ms(20);
    }
    if (it_file_has(path, needle))
        return 1;
    fprintf(stderr, "no \"%s\" within %d ms in:\n", needle, timeout_ms);
    rit_dump(path);
    return 0;
}

uint64_t rit_topic_count(const char *addr, const char *topic)
{
    ferry_conn *c = NULL;
    if (ferry_connect(addr, NULL, &c, NULL, 0) != 0)
        return 0;
    ferry_topic_info *list = NULL;
    size_t n = 0;
    uint64_t count = 0;
    if (ferry_topics(c, &list, &n) == 0) {
        for (size_t i = 0; i < n; i++)
            if (strcmp(list[i].name, topic) == 0)
                count = list[i].message_count;
        ferry_topics_free(list);
    }
    ferry_close(c);
    return count;
}

uint64_t rit_wait_topic_count(const char *addr, const char *topic, uint64_t want, int timeout_ms)
{
    int64_t deadline = harness_now_ms() + timeout_ms;
    uint64_t n = 0;
    while (harness_now_ms() < deadline) {
        n = rit_topic_count(addr, topic);
        if (n >= want)
            return n;
        it_sleep_ms(50);
    }
    return rit_topic_count(addr, topic);
}

int rit_wait_drained(const char *path, int timeout_ms)
{
    int64_t deadline = harness_now_ms() + timeout_ms;
    while (harness_now_ms() < deadline) {
        if (rit_count(path, "sent_ms IS NULL") == 0)
            return 1;
        it_sleep_ms(50);
    }
    return rit_count(path, "sent_ms IS NULL") == 0;
}

int rit_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}
