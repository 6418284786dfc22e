/*
 * bench_raw.c - what this machine's disk and SQLite can do without a broker.
 *
 * The raw-SQLite ceiling stores the same rows the broker stored (same ids,
 * same payloads, same count) in the simplest shape that still does the
 * broker's essential work: a table keyed by sequence number with a UNIQUE
 * index on the random message id (the dedupe lookup), WAL mode, the same
 * synchronous mode and the broker's default 128 MiB page cache, 1000 rows per
 * transaction through one prepared statement. (--raw-index none drops the
 * UNIQUE index: the bound for a broker that dedupes without a B-tree keyed
 * by the random id.) One thread, no network, no
 * protocol: an upper bound for what a broker built on SQLite can reach.
 *
 * The fdatasync probe gives the other floor, that of one durable write, used
 * for the W=1 latency target.
 */
#include "bench_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RAW_ROWS_PER_TXN 1000
#define RAW_DB_NAME "raw.db"
#define RAW_FSYNC_NAME "fdatasync.dat"
#define RAW_FSYNC_WRITE 100
/* The page-append probe's write: one 4 KiB block, new each time. */
#define RAW_FSYNC_PAGE 4096
/* The overwrite probe cycles through this many preallocated bytes. */
#define RAW_FSYNC_REGION (128 * 1024)

static void raw_unlink_db(const char *dir)
{
    static const char *const suffix[] = {"", "-wal", "-shm", "-journal"};
    char path[4096];
    for (size_t i = 0; i < sizeof suffix / sizeof suffix[0]; i++) {
        snprintf(path, sizeof path, "%s/%s%s", dir, RAW_DB_NAME, suffix[i]);
        unlink(path);
    }
}

static int raw_exec(sqlite3 *db, const char *sql, struct bench_raw_result *res)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(res->error, sizeof res->error, "raw sqlite: %s: %s", sql,
                 msg != NULL ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

int bench_raw_run(const char *dir, const char *sync_mode, int unique_id,
                  const struct bench_workload *w, size_t first, struct bench_raw_result *res)
{
    memset(res, 0, sizeof *res);
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, RAW_DB_NAME) >= sizeof path) {
        snprintf(res->error, sizeof res->error, "raw sqlite: directory name too long");
        return -1;
    }
    raw_unlink_db(dir);

    sqlite3 *db = NULL;
    sqlite3_stmt *ins = NULL;
    int rc = -1;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK) {
        snprintf(res->error, sizeof res->error, "raw sqlite: open %.300s: %s", path,
                 db != NULL ? sqlite3_errmsg(db) : "out of memory");
        goto out;
    }
    char pragma[64];
    snprintf(pragma, sizeof pragma, "PRAGMA synchronous=%s", sync_mode);
    if (raw_exec(db, "PRAGMA journal_mode=WAL", res) < 0 || raw_exec(db, pragma, res) < 0 ||
        raw_exec(db, "PRAGMA cache_size=-131072", res) < 0 ||
        raw_exec(db,
                 unique_id ? "CREATE TABLE m (seq INTEGER PRIMARY KEY, msg_id TEXT NOT NULL UNIQUE,"
                             " payload BLOB NOT NULL, ts_ms INTEGER NOT NULL)"
                           : "CREATE TABLE m (seq INTEGER PRIMARY KEY, msg_id TEXT NOT NULL,"
                             " payload BLOB NOT NULL, ts_ms INTEGER NOT NULL)",
                 res) < 0) {
        goto out;
    }
    if (sqlite3_prepare_v2(db, "INSERT INTO m (seq, msg_id, payload, ts_ms) VALUES (?, ?, ?, ?)",
                           -1, &ins, NULL) != SQLITE_OK) {
        snprintf(res->error, sizeof res->error, "raw sqlite: prepare: %s", sqlite3_errmsg(db));
        goto out;
    }

    size_t rows = w->count - first;
    int64_t t0 = bench_now_ns();
    for (size_t i = 0; i < rows; i++) {
        size_t k = first + i;
        if (i % RAW_ROWS_PER_TXN == 0 && raw_exec(db, "BEGIN", res) < 0) {
            goto out;
        }
        sqlite3_bind_int64(ins, 1, (sqlite3_int64)(i + 1));
        sqlite3_bind_text(ins, 2, bench_workload_id(w, k), BENCH_ID_LEN, SQLITE_STATIC);
        if (w->size == 0) {
            sqlite3_bind_zeroblob(ins, 3, 0); /* a NULL blob would break NOT NULL */
        } else {
            sqlite3_bind_blob(ins, 3, bench_workload_payload(w, k), (int)w->size, SQLITE_STATIC);
        }
        sqlite3_bind_int64(ins, 4, bench_unix_ms());
        if (sqlite3_step(ins) != SQLITE_DONE) {
            snprintf(res->error, sizeof res->error, "raw sqlite: insert: %s", sqlite3_errmsg(db));
            goto out;
        }
        sqlite3_reset(ins);
        if ((i % RAW_ROWS_PER_TXN == RAW_ROWS_PER_TXN - 1 || i + 1 == rows) &&
            raw_exec(db, "COMMIT", res) < 0) {
            goto out;
        }
    }
    int64_t t1 = bench_now_ns();
    res->rows = rows;
    res->wall_s = (double)(t1 - t0) / 1e9;
    res->rows_per_s = res->wall_s > 0 ? (double)rows / res->wall_s : 0;
    rc = 0;
out:
    sqlite3_finalize(ins);
    sqlite3_close(db);
    raw_unlink_db(dir);
    return rc;
}

int bench_fdatasync_probe(const char *dir, size_t samples, enum bench_fsync_probe kind,
                          struct bench_pct *out, char *err, size_t err_len)
{
    int append = kind != BENCH_FSYNC_OVERWRITE;
    size_t wlen = kind == BENCH_FSYNC_APPEND_PAGE ? RAW_FSYNC_PAGE : RAW_FSYNC_WRITE;
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, RAW_FSYNC_NAME) >= sizeof path) {
        snprintf(err, err_len, "fdatasync probe: directory name too long");
        return -1;
    }
    int64_t *ns = calloc(samples > 0 ? samples : 1, sizeof *ns);
    unsigned char buf[RAW_FSYNC_PAGE];
    memset(buf, 'f', sizeof buf);
    int rc = -1;
    int fd = -1;
    if (ns == NULL) {
        snprintf(err, err_len, "fdatasync probe: out of memory");
        goto out;
    }
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, err_len, "fdatasync probe: open %s: %s", path, strerror(errno));
        goto out;
    }
    if (!append) {
        /* Allocate the region and make its size durable so that each sample
         * flushes data only, no metadata. */
        unsigned char *zero = calloc(1, RAW_FSYNC_REGION);
        ssize_t n = zero != NULL ? pwrite(fd, zero, RAW_FSYNC_REGION, 0) : -1;
        free(zero);
        if (n != RAW_FSYNC_REGION || fsync(fd) != 0) {
            snprintf(err, err_len, "fdatasync probe: preallocate %s: %s", path, strerror(errno));
            goto out;
        }
    }
    for (size_t i = 0; i < samples; i++) {
        off_t off = (off_t)((i * RAW_FSYNC_WRITE) % (RAW_FSYNC_REGION - RAW_FSYNC_WRITE));
        int64_t t0 = bench_now_ns();
        ssize_t n = append ? write(fd, buf, wlen) : pwrite(fd, buf, wlen, off);
        if (n != (ssize_t)wlen || fdatasync(fd) != 0) {
            snprintf(err, err_len, "fdatasync probe: %s: %s", path, strerror(errno));
            goto out;
        }
        ns[i] = bench_now_ns() - t0;
    }
    bench_percentiles(ns, samples, out);
    rc = 0;
out:
    if (fd >= 0) {
        close(fd);
    }
    unlink(path);
    free(ns);
    return rc;
}
