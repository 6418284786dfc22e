/*
 * test_faultfs.c - the power-loss filesystem (tests/support/faultfs.c):
 * this binary re-executes itself as "test_faultfs child SCENARIO DATA CTL"
 * under the shim ($FAULTFS_LIB), the child writes and syncs in a set
 * pattern and usually SIGKILLs itself, and the parent checks what a power
 * cut leaves: only fsynced bytes, nothing of a failed fsync, half of a cut
 * fsync, EIO for poisoned reads, and a SQLite WAL database that keeps every
 * commit made with synchronous=FULL (and loses them without syncs).
 *
 * The child reports a failed check by exiting with a non-zero status; its
 * stderr (the shim's "faultfs:" lines) goes to child.log in the test's
 * temporary directory, printed when a test fails. FAULTFS_KEEP=1 keeps the
 * directories.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sqlite3.h>

#include "faultfs.h"

#define BLK 4096
#define SQL_ROWS 300
#define SQL_BLOB 700

struct ctx {
    char base[256];
    char data[300];
    char shadow[300];
    char ctl[300];
    char log[300];
};

static void path_in(char *out, size_t size, const char *dir, const char *name)
{
    int n = snprintf(out, size, "%s/%s", dir, name);
    assert_true(n > 0 && (size_t)n < size);
}

static int ctx_setup(void **state)
{
    struct ctx *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -1;
    const char *tmp = getenv("TMPDIR");
    snprintf(c->base, sizeof(c->base), "%s/faultfs.XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (mkdtemp(c->base) == NULL) {
        free(c);
        return -1;
    }
    snprintf(c->data, sizeof(c->data), "%s/data", c->base);
    snprintf(c->shadow, sizeof(c->shadow), "%s/shadow", c->base);
    snprintf(c->ctl, sizeof(c->ctl), "%s/rules", c->base);
    snprintf(c->log, sizeof(c->log), "%s/child.log", c->base);
    if (mkdir(c->data, 0755) < 0) {
        free(c);
        return -1;
    }
    *state = c;
    return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static int ctx_teardown(void **state)
{
    struct ctx *c = *state;
    const char *keep = getenv("FAULTFS_KEEP");
    if (keep != NULL && strcmp(keep, "1") == 0)
        fprintf(stderr, "faultfs test: kept %s\n", c->base);
    else
        nftw(c->base, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(c);
    return 0;
}

/* A malloc'd copy of the file (NUL-terminated, *len without it), or NULL. */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    size_t r;
    while (buf != NULL && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            char *nb = realloc(buf, cap * 2 + 1);
            if (nb == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf != NULL) {
        buf[n] = '\0';
        if (len != NULL)
            *len = n;
    }
    return buf;
}

static void put_file(const char *path, int byte, size_t len)
{
    char *buf = malloc(len);
    assert_non_null(buf);
    memset(buf, byte, len);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    free(buf);
}

static void show_log(const struct ctx *c)
{
    char *log = slurp(c->log, NULL);
    fprintf(stderr, "---- child.log ----\n%s---- end ----\n", log ? log : "(none)\n");
    free(log);
}

static int log_has(const struct ctx *c, const char *needle)
{
    char *log = slurp(c->log, NULL);
    int found = log != NULL && strstr(log, needle) != NULL;
    free(log);
    return found;
}

/* Runs this binary as "child SCENARIO DATA CTL" under the shim; returns the
 * wait status. */
static int run_child_env(const struct ctx *c, const char *scenario, const char *max_ranges)
{
    const char *lib = getenv("FAULTFS_LIB");
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(c->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd < 0 || dup2(fd, 2) < 0)
            _exit(120);
        if (faultfs_setenv(lib, c->data, c->shadow, c->ctl) != 0)
            _exit(121);
        if (max_ranges != NULL)
            setenv("FAULTFS_MAX_RANGES", max_ranges, 1);
        char *argv[] = {"test_faultfs",  "child",        (char *)scenario,
                        (char *)c->data, (char *)c->ctl, NULL};
        execv("/proc/self/exe", argv);
        _exit(122);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return status;
}

static int run_child(const struct ctx *c, const char *scenario)
{
    return run_child_env(c, scenario, NULL);
}

static void expect_killed(const struct ctx *c, int status)
{
    if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL) {
        fprintf(stderr, "child: status %#x (exit %d), wanted SIGKILL\n", status,
                WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        show_log(c);
        fail();
    }
}

static void expect_exit0(const struct ctx *c, int status)
{
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "child: status %#x (exit %d), wanted exit 0\n", status,
                WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        show_log(c);
        fail();
    }
}

static int all_bytes(const char *p, size_t len, int byte)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)p[i] != (unsigned char)byte)
            return 0;
    return 1;
}

static int skip_without_lib(void)
{
    const char *lib = getenv("FAULTFS_LIB");
    return lib == NULL || lib[0] == '\0';
}

/* ---- the child side ---- */

#define CHECK(cond, code)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "child: %s failed (errno %d)\n", #cond, errno);                        \
            _exit(code);                                                                           \
        }                                                                                          \
    } while (0)

static void die(void)
{
    fflush(NULL);
    kill(getpid(), SIGKILL);
    for (;;)
        pause();
}

static int open_in(const char *data, const char *name, int flags)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", data, name);
    return open(path, flags, 0644);
}

static void fill(char *buf, int byte, size_t len)
{
    memset(buf, byte, len);
}

/* write A, fsync, write B (writev and pwrite), an untracked file, SIGKILL */
static void child_basic(const char *data)
{
    char a[BLK], b[BLK];
    fill(a, 'A', BLK);
    fill(b, 'B', BLK);
    int fd = open_in(data, "ferry.db", O_RDWR | O_CREAT);
    CHECK(fd >= 0, 2);
    CHECK(write(fd, a, BLK) == BLK, 3);
    CHECK(fsync(fd) == 0, 4);
    struct iovec iov[2] = {{b, BLK / 2}, {b, BLK / 2}};
    CHECK(writev(fd, iov, 2) == BLK, 5);
    CHECK(pwrite(fd, b, 16, 0) == 16, 6);
    int other = open_in(data, "other.bin", O_RDWR | O_CREAT);
    CHECK(other >= 0, 7);
    CHECK(write(other, "untracked", 9) == 9, 8);
    die();
}

/* Both files exist (1000 'X'): ferry.db is reopened with O_TRUNC and
 * rewritten without a sync; ferry.db-wal is cut to 10 bytes, written at 500
 * and synced. */
static void child_existing(const char *data)
{
    char y[BLK];
    fill(y, 'Y', BLK);
    int fd = open_in(data, "ferry.db", O_RDWR | O_TRUNC);
    CHECK(fd >= 0, 2);
    CHECK(write(fd, y, 100) == 100, 3);
    int wal = open64("ferry.db-wal", O_RDWR); /* relative: the cwd is data */
    CHECK(wal >= 0, 4);
    CHECK(ftruncate64(wal, 10) == 0, 5);
    CHECK(pwrite64(wal, "ZZZZZZZZZZ", 10, 500) == 10, 6);
    CHECK(fdatasync(wal) == 0, 7);
    die();
}

/* fail-fsync ferry.db 1: A is dropped, C (synced later) survives. */
static void child_failsync(const char *data)
{
    char a[BLK], c[BLK];
    fill(a, 'A', BLK);
    fill(c, 'C', BLK);
    int fd = open_in(data, "ferry.db", O_RDWR | O_CREAT);
    CHECK(fd >= 0, 2);
    CHECK(pwrite(fd, a, BLK, 0) == BLK, 3);
    errno = 0;
    CHECK(fsync(fd) == -1 && errno == EIO, 4);
    CHECK(fsync(fd) == 0, 5);
    CHECK(pwrite(fd, c, BLK, BLK) == BLK, 6);
    CHECK(fdatasync(fd) == 0, 7);
    die();
}

/* cut-in-fsync ferry.db 1: the first fsync passes, the second writes the
 * first two of four dirty ranges and dies. */
static void child_cut(const char *data)
{
    char buf[BLK];
    int fd = open_in(data, "ferry.db", O_RDWR | O_CREAT);
    CHECK(fd >= 0, 2);
    fill(buf, 'P', BLK);
    CHECK(pwrite(fd, buf, BLK, 0) == BLK, 3);
    CHECK(fsync(fd) == 0, 4);
    /* out of order, with gaps, so that none coalesce */
    const int order[4] = {3, 1, 0, 2};
    for (int i = 0; i < 4; i++) {
        fill(buf, 'a' + order[i], BLK);
        CHECK(pwrite(fd, buf, BLK, (off_t)(2 + 2 * order[i]) * BLK) == BLK, 5);
    }
    /* a second descriptor: the dirty state is per file */
    int fd2 = open_in(data, "ferry.db", O_RDWR);
    CHECK(fd2 >= 0, 6);
    fsync(fd2);
    _exit(7); /* the fsync must not return */
}

/* poison-read POISONED-SECTOR: only reads returning those bytes fail. */
static void child_poison(const char *data, const char *ctl)
{
    char buf[2 * BLK], got[2 * BLK];
    fill(buf, 'h', BLK);
    fill(buf + BLK, 'p', BLK);
    memcpy(buf + BLK + 100, "POISONED-SECTOR", 15);
    int fd = open_in(data, "ferry.db", O_RDWR | O_CREAT);
    CHECK(fd >= 0, 2);
    CHECK(write(fd, buf, sizeof(buf)) == (ssize_t)sizeof(buf), 3);
    CHECK(fsync(fd) == 0, 4);
    CHECK(pread(fd, got, BLK, 0) == BLK && memcmp(got, buf, BLK) == 0, 5);
    errno = 0;
    CHECK(pread(fd, got, BLK, BLK) == -1 && errno == EIO, 6);
    errno = 0;
    CHECK(pread64(fd, got, 2 * BLK, 0) == -1 && errno == EIO, 7);
    CHECK(pread64(fd, got, 10, BLK + 2000) == 10, 8);
    CHECK(pread(fd, got, 10, BLK + 110) == 10, 9); /* the tail of the string only */
    CHECK(lseek(fd, 0, SEEK_SET) == 0, 10);
    errno = 0;
    CHECK(read(fd, got, sizeof(got)) == -1 && errno == EIO, 11);
    int other = open_in(data, "other.bin", O_RDWR | O_CREAT);
    CHECK(other >= 0, 12);
    CHECK(pwrite(other, buf, sizeof(buf), 0) == (ssize_t)sizeof(buf), 13);
    CHECK(pread(other, got, sizeof(got), 0) == (ssize_t)sizeof(got), 14);
    /* new rules are picked up at the next read */
    CHECK(faultfs_rules(ctl, "# nothing poisoned now\n") == 0, 15);
    CHECK(pread(fd, got, sizeof(got), 0) == (ssize_t)sizeof(got), 16);
    CHECK(memcmp(got, buf, sizeof(buf)) == 0, 17);
    _exit(0);
}

/* Random pwrites, ftruncates and fsyncs against an in-memory model of the
 * live file; the last synced state goes to the untracked expect.bin. */
#define RND_SPAN (1 << 20)
static void child_random(const char *data)
{
    static char live[2 * RND_SPAN], synced[2 * RND_SPAN], buf[512];
    size_t size = 0, synced_size = 0;
    uint64_t x = 88172645463325252ULL;
#define NEXT() (x ^= x << 13, x ^= x >> 7, x ^= x << 17, x)
    int fd = open_in(data, "ferry.db", O_RDWR | O_CREAT);
    CHECK(fd >= 0, 2);
    for (int op = 1; op <= 40000; op++) {
        uint64_t r = NEXT();
        if (r % 997 == 0) {
            size_t to = (size_t)(NEXT() % RND_SPAN);
            CHECK(ftruncate(fd, (off_t)to) == 0, 3);
            if (to < size)
                memset(live + to, 0, size - to);
            size = to;
        } else {
            size_t off = (size_t)(NEXT() % RND_SPAN), len = 1 + (size_t)(NEXT() % 300);
            memset(buf, (int)(NEXT() % 255) + 1, len);
            CHECK(pwrite(fd, buf, len, (off_t)off) == (ssize_t)len, 4);
            memcpy(live + off, buf, len);
            if (off + len > size)
                size = off + len;
        }
        if (op % 7000 == 0) {
            CHECK(fsync(fd) == 0, 5);
            memcpy(synced, live, sizeof(live));
            synced_size = size;
        }
    }
    int out = open_in(data, "expect.bin", O_WRONLY | O_CREAT | O_TRUNC);
    CHECK(out >= 0 && write(out, synced, synced_size) == (ssize_t)synced_size, 6);
    CHECK(close(out) == 0, 7);
    die();
#undef NEXT
}

static void sql_blob(unsigned char *b, int id)
{
    for (int i = 0; i < SQL_BLOB; i++)
        b[i] = (unsigned char)((id * 31 + i) % 251);
}

/* A WAL database; full: synchronous=FULL and checkpoints on the way. Every
 * row is its own commit; a last transaction stays open. */
static void child_sqlite(const char *data, int full)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/ferry.db", data);
    sqlite3 *db, *rdb;
    CHECK(sqlite3_open(path, &db) == SQLITE_OK, 2);
    char sql[256];
    snprintf(sql, sizeof(sql),
             "PRAGMA journal_mode=WAL; PRAGMA synchronous=%s; PRAGMA wal_autocheckpoint=50;"
             "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB NOT NULL);",
             full ? "FULL" : "OFF");
    CHECK(sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK, 3);
    CHECK(sqlite3_open(path, &rdb) == SQLITE_OK, 4); /* a second connection, more fds */
    sqlite3_stmt *ins, *cnt;
    CHECK(sqlite3_prepare_v2(db, "INSERT INTO t(id, v) VALUES(?, ?)", -1, &ins, NULL) == SQLITE_OK,
          5);
    CHECK(sqlite3_prepare_v2(rdb, "SELECT count(*) FROM t", -1, &cnt, NULL) == SQLITE_OK, 6);
    unsigned char blob[SQL_BLOB];
    for (int id = 1; id <= SQL_ROWS + 40; id++) {
        if (id == SQL_ROWS + 1)
            CHECK(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK, 7);
        sql_blob(blob, id);
        sqlite3_bind_int(ins, 1, id);
        sqlite3_bind_blob(ins, 2, blob, SQL_BLOB, SQLITE_STATIC);
        CHECK(sqlite3_step(ins) == SQLITE_DONE, 8);
        sqlite3_reset(ins);
        if (id == SQL_ROWS / 2 && full)
            CHECK(sqlite3_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL) ==
                      SQLITE_OK,
                  9);
        if (id % 50 == 0 && id <= SQL_ROWS) {
            CHECK(sqlite3_step(cnt) == SQLITE_ROW && sqlite3_column_int(cnt, 0) == id, 10);
            sqlite3_reset(cnt);
        }
    }
    die(); /* with the last transaction open */
}

static int child_main(int argc, char **argv)
{
    if (argc < 5)
        return 100;
    const char *scenario = argv[2], *data = argv[3], *ctl = argv[4];
    if (chdir(data) < 0)
        return 101;
    if (strcmp(scenario, "basic") == 0)
        child_basic(data);
    else if (strcmp(scenario, "existing") == 0)
        child_existing(data);
    else if (strcmp(scenario, "failsync") == 0)
        child_failsync(data);
    else if (strcmp(scenario, "cut") == 0)
        child_cut(data);
    else if (strcmp(scenario, "random") == 0)
        child_random(data);
    else if (strcmp(scenario, "poison") == 0)
        child_poison(data, ctl);
    else if (strcmp(scenario, "sqlite_full") == 0)
        child_sqlite(data, 1);
    else if (strcmp(scenario, "sqlite_off") == 0)
        child_sqlite(data, 0);
    return 102;
}

/* ---- the tests ---- */

static char *data_file(const struct ctx *c, const char *name, size_t *len)
{
    char path[512];
    path_in(path, sizeof(path), c->data, name);
    return slurp(path, len);
}

/* (1) write A, fsync, write B, SIGKILL, power cut: A only. */
static void test_unsynced_writes_are_lost(void **state)
{
    struct ctx *c = *state;
    if (skip_without_lib())
        skip();
    expect_killed(c, run_child(c, "basic"));
    size_t len;
    char *live = data_file(c, "ferry.db", &len);
    assert_non_null(live);
    assert_int_equal(len, 2 * BLK); /* before the cut the B's are there */
    free(live);
    assert_int_equal(faultfs_power_cut(c->data, c->shadow, NULL), 1);
    live = data_file(c, "ferry.db", &len);
    assert_non_null(live);
    assert_int_equal(len, BLK);
    assert_true(all_bytes(live, len, 'A'));
    free(live);
    /* untracked files are left alone */
    live = data_file(c, "other.bin", &len);
    assert_non_null(live);
    assert_int_equal(len, 9);
    free(live);
    /* a second cut changes nothing: the images equal the files */
    assert_int_equal(faultfs_power_cut(c->data, c->shadow, NULL), 1);
    live = data_file(c, "ferry.db", &len);
    assert_int_equal(len, BLK);
    free(live);
}

/* Files that exist before the process are durable; O_TRUNC and ftruncate
 * are pending until a sync. */
static void test_existing_files_and_truncation(void **state)
{
    struct ctx *c = *state;
    if (skip_without_lib())
        skip();
    char db[512], wal[512];
    path_in(db, sizeof(db), c->data, "ferry.db");
    path_in(wal, sizeof(wal), c->data, "ferry.db-wal");
    put_file(db, 'X', 1000);
    put_file(wal, 'X', 1000);
    expect_killed(c, run_child(c, "existing"));
    assert_int_equal(faultfs_power_cut(c->data, c->shadow, NULL), 2);
    size_t len;
    char *p = data_file(c, "ferry.db", &len);
    assert_non_null(p);
    assert_int_equal(len, 1000);
    assert_true(all_bytes(p, len, 'X'));
    free(p);
    p = data_file(c, "ferry.db-wal", &len);
    assert_non_null(p);
    assert_int_equal(len, 510);
    assert_true(all_bytes(p, 10, 'X'));
    assert_true(all_bytes(p + 10, 490, 0)); /* truncated, then extended */
    assert_true(all_bytes(p + 500, 10, 'Z'));
    free(p);
}

/* (2) a failed fsync forgets its data; a later synced write survives. */
static void test_failed_fsync_drops_dirty_data(void **state)
{
    struct ctx *c = *state;
    if (skip_without_lib())
        skip();
    assert_int_equal(faultfs_rules(c->ctl, "# one failure\nfail-fsync ferry.db 1\n"), 0);
    expect_killed(c, run_child(c, "failsync"));
    assert_int_equal(faultfs_power_cut(c->data, c->shadow, NULL), 1);
    size_t len;
    char *p = data_file(c, "ferry.db", &len);
    assert_non_null(p);
    assert_int_equal(len, 2 * BLK);
    assert_null(memchr(p, 'A', len));
    assert_true(all_bytes(p, BLK, 0));
    assert_true(all_bytes(p + BLK, BLK, 'C'));
    free(p);
    if (!log_has(c, "faultfs: fsync of ferry.db failed (injected EIO, 1 dirty ranges dropped)")) {
        show_log(c);
        fail();
    }
}

/* (3) a power cut inside an fsync leaves a prefix of the dirty ranges. */
static void test_cut_in_fsync_leaves_prefix(void **state)
{
    struct ctx *c = *state;
    if (skip_without_lib())
        skip();
    assert_int_equal(faultfs_rules(c->ctl, "cut-in-fsync ferry.db 1\n"), 0);
    expect_killed(c, run_child(c, "cut"));
    if (!log_has(c, "faultfs: power cut inside fsync of ferry.db")) {
        show_log(c);
        fail();
    }
    assert_int_equal(faultfs_power_cut(c->data, c->shadow, NULL), 1);
    size_t len;
    char *p = data_file(c, "ferry.db", &len);
    assert_non_null(p);
    assert_int_equal(len, 9 * BLK);
    assert_true(all_bytes(p, BLK, 'P'));
    assert_true(all_bytes(p + 2 * BLK, BLK, 'a'));
    assert_true(all_bytes(p + 4 * BLK, BLK, 'b'));
    assert_true(all_bytes(p + 6 * BLK, BLK, 0));
    assert_true(all_bytes(p + 8 * BLK, BLK, 0));
    free(p);
}

/* Random writes and truncations: the image is exactly the last synced
 * state, also when the dirty ranges are bounded (merged) on the way. */
static void check_random(void **state, const char *max_ranges)
{
    struct ctx *c = *state;
    if (skip_without_lib())
        skip();
    expect_killed(c, run_child_env(c, "random", max_ranges));
    assert_int_equal(faultfs_power_cut(c->data, c->shadow, NULL), 1);
    size_t len, want_len;
    char *p = data_file(c, "ferry.db", &len);
    char *want = data_file(c, "expect.bin", &want_len);
    assert_non_null(p);
    assert_non_null(want);
    assert_int_equal(len, want_len);
    assert_memory_equal(p, want, len);
    free(p);
    free(want);
}

static void test_random_writes_match_model(void **state)
{
    check_random(state, NULL);
}

static void test_random_writes_bounded_ranges(void **state)
{
    check_random(state, "64");
}

/* (4) poisoned bytes make exactly the reads that return them fail. */
static void test_poison_read(void **state)
{
    struct ctx *c = *state;
    if (skip_without_lib())
        skip();
    assert_int_equal(faultfs_rules(c->ctl, "poison-read POISONED-SECTOR\n"), 0);
    expect_exit0(c, run_child(c, "poison"));
    if (!log_has(c, "faultfs: read of ferry.db failed (injected EIO)")) {
        show_log(c);
        fail();
    }
}

/* Opens the database after a power cut; returns the number of rows, or -1
 * when the table is gone, after checking integrity and every row's bytes. */
static int check_db(const struct ctx *c)
{
    char path[512];
    path_in(path, sizeof(path), c->data, "ferry.db");
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "ok");
    sqlite3_finalize(st);
    if (sqlite3_prepare_v2(db, "SELECT id, v FROM t ORDER BY id", -1, &st, NULL) != SQLITE_OK) {
        sqlite3_close(db);
        return -1;
    }
    int n = 0;
    unsigned char want[SQL_BLOB];
    while (sqlite3_step(st) == SQLITE_ROW) {
        n++;
        assert_int_equal(sqlite3_column_int(st, 0), n);
        sql_blob(want, n);
        assert_int_equal(sqlite3_column_bytes(st, 1), SQL_BLOB);
        assert_memory_equal(sqlite3_column_blob(st, 1), want, SQL_BLOB);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

/* (5) SQLite in WAL mode with synchronous=FULL keeps every commit. */
static void test_sqlite_wal_full_survives(void **state)
{
    struct ctx *c = *state;
    if (skip_without_lib())
        skip();
    expect_killed(c, run_child(c, "sqlite_full"));
    assert_int_equal(faultfs_power_cut(c->data, c->shadow, NULL), 2);
    char shm[512];
    path_in(shm, sizeof(shm), c->data, "ferry.db-shm");
    assert_int_equal(access(shm, F_OK), -1);
    assert_int_equal(check_db(c), SQL_ROWS);
}

/* ... and without syncs the power cut takes commits with it: the model
 * bites. */
static void test_sqlite_without_sync_loses_commits(void **state)
{
    struct ctx *c = *state;
    if (skip_without_lib())
        skip();
    expect_killed(c, run_child(c, "sqlite_off"));
    /* without the cut SQLite recovers them all from the WAL */
    faultfs_power_cut(c->data, c->shadow, NULL);
    int n = check_db(c);
    assert_true(n < SQL_ROWS);
}

/* faultfs_setenv / faultfs_unsetenv put the environment back. */
static void test_setenv_restores(void **state)
{
    struct ctx *c = *state;
    char *asan = getenv("ASAN_OPTIONS") ? strdup(getenv("ASAN_OPTIONS")) : NULL;
    char *preload = getenv("LD_PRELOAD") ? strdup(getenv("LD_PRELOAD")) : NULL;
    assert_int_equal(setenv("ASAN_OPTIONS", "detect_leaks=1", 1), 0);
    assert_int_equal(unsetenv("LD_PRELOAD"), 0);
    assert_int_equal(faultfs_setenv("/x/libfaultfs.so", c->data, c->shadow, c->ctl), 0);
    assert_string_equal(getenv("LD_PRELOAD"), "/x/libfaultfs.so");
    assert_string_equal(getenv("ASAN_OPTIONS"), "detect_leaks=1:verify_asan_link_order=0");
    assert_string_equal(getenv("FAULTFS_DIR"), c->data);
    assert_string_equal(getenv("FAULTFS_SHADOW"), c->shadow);
    assert_string_equal(getenv("FAULTFS_CTL"), c->ctl);
    struct stat st;
    assert_int_equal(stat(c->shadow, &st), 0);
    faultfs_unsetenv();
    assert_null(getenv("LD_PRELOAD"));
    assert_null(getenv("FAULTFS_DIR"));
    assert_null(getenv("FAULTFS_CTL"));
    assert_string_equal(getenv("ASAN_OPTIONS"), "detect_leaks=1");
    assert_int_equal(faultfs_setenv("/y.so", c->data, c->shadow, NULL), 0);
    assert_null(getenv("FAULTFS_CTL"));
    faultfs_unsetenv();
    assert_int_equal(faultfs_setenv(NULL, c->data, c->shadow, NULL), -EINVAL);
    if (asan != NULL)
        setenv("ASAN_OPTIONS", asan, 1);
    else
        unsetenv("ASAN_OPTIONS");
    if (preload != NULL)
        setenv("LD_PRELOAD", preload, 1);
    free(asan);
    free(preload);
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "child") == 0)
        return child_main(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_unsynced_writes_are_lost, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_existing_files_and_truncation, ctx_setup,
                                        ctx_teardown),
        cmocka_unit_test_setup_teardown(test_failed_fsync_drops_dirty_data, ctx_setup,
                                        ctx_teardown),
        cmocka_unit_test_setup_teardown(test_cut_in_fsync_leaves_prefix, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_random_writes_match_model, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_random_writes_bounded_ranges, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_poison_read, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_sqlite_wal_full_survives, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_sqlite_without_sync_loses_commits, ctx_setup,
                                        ctx_teardown),
        cmocka_unit_test_setup_teardown(test_setenv_restores, ctx_setup, ctx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
