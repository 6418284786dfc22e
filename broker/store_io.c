/*
 * store_io.c - I/O errors of the store: logged, counted, and fatal where
 * SQLite's picture of the disk may be wrong (see store_io.h).
 *
 * SQLite reports every failed system call of its unix VFS through its
 * error log (SQLITE_CONFIG_LOG) as "os_unix.c:LINE: (ERRNO) CALL(PATH) -
 * TEXT", on the thread that made the call. The hook turns that into a log
 * line naming the operation and the file, counts it, and keeps the last one
 * per thread so that a fatal exit can say which file and call failed.
 * Corruption reports ("database corruption at line ...") are logged and
 * counted the same way. Lines are rate-limited to LOG_BURST a second; the
 * number suppressed is told with the next line.
 */
#include "store_io.h"

#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "store_vfs.h"

/* Log lines a second at most: a failing disk fails every call, and a
 * log that floods hides the line that matters. */
#define LOG_BURST 5

static pthread_once_t hook_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t rate_mu = PTHREAD_MUTEX_INITIALIZER;
static int64_t rate_sec;
static int rate_lines;
static uint64_t rate_dropped;
static uint64_t io_errors; /* atomic */

/* The last failed system call SQLite reported on this thread, as
 * "fsync of /data/ferry.db" and its error text. */
static _Thread_local char last_op[320];
static _Thread_local char last_detail[128];

/* Whether a line may be logged now; *dropped gets how many were not since
 * the last one that was. */
static int rate_ok(uint64_t *dropped)
{
    int ok;
    pthread_mutex_lock(&rate_mu);
    int64_t now = (int64_t)(clock_mono_ms() / 1000);
    if (now != rate_sec) {
        rate_sec = now;
        rate_lines = 0;
    }
    ok = rate_lines < LOG_BURST;
    if (ok) {
        rate_lines++;
        *dropped = rate_dropped;
        rate_dropped = 0;
    } else {
        rate_dropped++;
    }
    pthread_mutex_unlock(&rate_mu);
    return ok;
}

/* SQLite's names for its system calls, as an operation a reader knows. */
static const char *op_name(const char *call, size_t len)
{
    static const struct {
        const char *call, *op;
    } names[] = {
        {"full_fsync", "fsync"}, {"fsync", "fsync"},        {"fdatasync", "fsync"},
        {"read", "read"},        {"pread", "read"},         {"write", "write"},
        {"seek", "write"},       {"ftruncate", "truncate"}, {"open", "open"},
        {"close", "close"},      {"unlink", "delete"},      {"fstat", "stat"},
        {"mmap", "mmap"},        {"fchown", "chown"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strlen(names[i].call) == len && !memcmp(names[i].call, call, len))
            return names[i].op;
    return NULL;
}

/* Parses "os_unix.c:LINE: (ERRNO) CALL(PATH) - TEXT" into last_op and
 * last_detail. Returns 0, or -1 when msg has another shape. */
static int parse_os_error(const char *msg)
{
    if (strncmp(msg, "os_unix.c:", 10) != 0)
        return -1;
    const char *p = strstr(msg, ") ");
    const char *num = strstr(msg, ": (");
    if (!p || !num)
        return -1;
    int err = atoi(num + 3);
    const char *call = p + 2, *open = strchr(call, '(');
    const char *close = open ? strstr(open, ") - ") : NULL;
    if (!open || !close)
        return -1;
    const char *op = op_name(call, (size_t)(open - call));
    snprintf(last_op, sizeof(last_op), "%s%.*s of %.*s", op ? "" : "call ",
             op ? (int)strlen(op) : (int)(open - call), op ? op : call, (int)(close - open - 1),
             open + 1);
    /* Some builds of SQLite leave the text empty (no strerror_r). */
    snprintf(last_detail, sizeof(last_detail), "%s",
             close[4]  ? close + 4
             : err > 0 ? strerror(err)
                       : "unknown error");
    return 0;
}

static void on_sqlite_log(void *arg, int code, const char *msg)
{
    (void)arg;
    int primary = code & 0xff;
    if (primary == SQLITE_NOTICE) {
        /* e.g. "recovered 5120 frames from WAL file ...": worth seeing. */
        log_info("storage: %s", msg);
        return;
    }
    if (primary != SQLITE_IOERR && primary != SQLITE_CORRUPT)
        return;
    /* "statement aborts at N: [...]" repeats an error already reported
     * by the system call that caused it. */
    if (strncmp(msg, "statement aborts", 16) == 0)
        return;
    __atomic_add_fetch(&io_errors, 1, __ATOMIC_RELAXED);
    int parsed = parse_os_error(msg) == 0;
    uint64_t dropped = 0;
    if (!rate_ok(&dropped))
        return;
    char more[64] = "";
    if (dropped)
        snprintf(more, sizeof(more), " (%llu more not logged)", (unsigned long long)dropped);
    if (parsed)
        log_error("storage I/O error: %s failed: %s%s", last_op, last_detail, more);
    else
        log_error("storage error: %s%s", msg, more);
}

static void install_hook(void)
{
    /* Fails with SQLITE_MISUSE if SQLite is already in use (a unit test
     * that opened a database first): then errors are not logged, only
     * returned. */
    sqlite3_config(SQLITE_CONFIG_LOG, on_sqlite_log, NULL);
    /* After the hook: registering a VFS initialises SQLite. */
    if (store_vfs_install() < 0)
        log_warn("cannot install the timed VFS: fsync latency is not measured");
}

void store_io_init(void)
{
    pthread_once(&hook_once, install_hook);
}

int store_io_is_fatal(int rc)
{
    int primary = rc & 0xff;
    if (rc == SQLITE_IOERR_NOMEM)
        return 0;
    return primary == SQLITE_IOERR || primary == SQLITE_CORRUPT;
}

int store_io_is_read_error(int rc)
{
    return rc == SQLITE_IOERR_READ || rc == SQLITE_IOERR_SHORT_READ ||
           (rc & 0xff) == SQLITE_CORRUPT;
}

static const char *op_of_code(int rc)
{
    switch (rc) {
    case SQLITE_IOERR_FSYNC:
    case SQLITE_IOERR_DIR_FSYNC:
        return "fsync";
    case SQLITE_IOERR_WRITE:
        return "write";
    case SQLITE_IOERR_READ:
    case SQLITE_IOERR_SHORT_READ:
        return "read";
    case SQLITE_IOERR_TRUNCATE:
        return "truncate";
    default:
        return (rc & 0xff) == SQLITE_CORRUPT ? "reading a page" : "I/O";
    }
}

_Noreturn void store_io_fatal(const char *file, const char *during, int rc, int sys_errno)
{
    char op[400], detail[200];
    if (last_op[0] && strstr(last_op, file)) {
        snprintf(op, sizeof(op), "%s", last_op);
        snprintf(detail, sizeof(detail), "%s", last_detail);
    } else {
        snprintf(op, sizeof(op), "%s of %s", op_of_code(rc), file);
        snprintf(detail, sizeof(detail), "%s%s%s", sqlite3_errstr(rc), sys_errno ? ": " : "",
                 sys_errno ? strerror(sys_errno) : "");
    }
    log_error("%s failed during %s: %s; exiting so that recovery replays the WAL", op, during,
              detail);
    _exit(STORE_IO_EXIT);
}

void store_io_count(void)
{
    __atomic_add_fetch(&io_errors, 1, __ATOMIC_RELAXED);
}

uint64_t store_io_errors(void)
{
    return __atomic_load_n(&io_errors, __ATOMIC_RELAXED);
}
