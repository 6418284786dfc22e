/*
 * store_ckpt.c - the store's WAL: checkpoints on a thread of their own
 * (with their own connection, so that a commit never waits for one),
 * the WAL's fsync under --sync normal, and the database's page cap.
 * The checkpointer thread touches only the fields store_internal.h marks
 * as its own, under ckpt_mu.
 */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "dedupe.h"
#include "ferry_codes.h"
#include "log.h"
#include "proto.h"
#include "reserve.h"
#include "store_internal.h"
#include "store_io.h"

static int on_wal_commit(void *arg, sqlite3 *db, const char *name, int frames)
{
    (void)db;
    (void)name;
    ((struct store *)arg)->wal_frames = frames;
    return SQLITE_OK;
}

/*
 * Every checkpoint goes through here. A checkpoint copies WAL frames into
 * the database file and fsyncs it; if any of that fails, SQLite may already
 * count frames as copied whose pages never reached the disk (store_io.h),
 * and the process exits with ckpt_run_mu held, before any other checkpoint
 * can complete and let the WAL start over. With wait 0 the checkpoint is
 * skipped (SQLITE_BUSY) while another runs, as SQLite itself would.
 */
int checkpoint(struct store *s, sqlite3 *db, int mode, int wait, int *nlog, int *nckpt)
{
    if (wait)
        pthread_mutex_lock(&s->ckpt_run_mu);
    else if (pthread_mutex_trylock(&s->ckpt_run_mu) != 0)
        return SQLITE_BUSY;
    int rc = sqlite3_wal_checkpoint_v2(db, NULL, mode, nlog, nckpt);
    if (store_io_is_fatal(rc))
        store_io_fatal(s->path, "a checkpoint", rc, sqlite3_system_errno(db));
    pthread_mutex_unlock(&s->ckpt_run_mu);
    return rc;
}

/* Makes the data folder's entries (the database and WAL files) durable. */
int fsync_dir_of(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    size_t n = slash ? (size_t)(slash - path) : 1;
    if (n == 0)
        n = 1; /* "/ferry.db" */
    if (n >= sizeof(dir))
        return -1;
    memcpy(dir, slash ? path : ".", n);
    dir[n] = 0;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

/*
 * --sync normal: SQLite fsyncs the WAL only when it checkpoints, which at a
 * low rate may be never. The checkpointer fsyncs it every sync_interval_ms
 * when commits wrote to it since, so that a power loss loses at most the
 * last interval of acknowledged work. fsync on a second descriptor flushes
 * the same file. A failure is fatal like a checkpoint's: the WAL pages
 * Linux dropped hold committed frames that a later checkpoint would copy
 * from a disk that never got them.
 */
static void sync_wal(struct store *s)
{
    if (!__atomic_exchange_n(&s->wal_dirty, 0, __ATOMIC_ACQ_REL))
        return;
    char wal[4200];
    snprintf(wal, sizeof(wal), "%s-wal", s->path);
    if (s->wal_fd < 0) {
        s->wal_fd = open(wal, O_RDONLY | O_CLOEXEC);
        if (s->wal_fd < 0) {
            log_warn("cannot open %s to fsync it: %s", wal, strerror(errno));
            return;
        }
        /* The WAL's directory entry, too: SQLite syncs it only at the WAL's
         * first fsync of its own, which here may come much later. */
        if (fsync_dir_of(s->path) != 0) {
            store_io_count();
            store_io_fatal(wal, "the periodic WAL fsync (the folder's entry)",
                           SQLITE_IOERR_DIR_FSYNC, errno);
        }
    }
    if (fdatasync(s->wal_fd) != 0) {
        store_io_count();
        store_io_fatal(wal, "the periodic WAL fsync", SQLITE_IOERR_FSYNC, errno);
    }
}

static void *checkpointer(void *arg)
{
    struct store *s = arg;
    uint64_t interval = s->sync_full ? 0 : s->sync_interval_ms;
    pthread_mutex_lock(&s->ckpt_mu);
    for (;;) {
        while (!s->ckpt_wanted && !s->ckpt_stop) {
            if (!interval) {
                pthread_cond_wait(&s->ckpt_cv, &s->ckpt_mu);
                continue;
            }
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_sec += (time_t)(interval / 1000);
            until.tv_nsec += (long)(interval % 1000) * 1000000L;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            if (pthread_cond_timedwait(&s->ckpt_cv, &s->ckpt_mu, &until) == ETIMEDOUT) {
                pthread_mutex_unlock(&s->ckpt_mu);
                sync_wal(s);
                pthread_mutex_lock(&s->ckpt_mu);
            }
        }
        if (s->ckpt_stop)
            break;
        s->ckpt_wanted = 0;
        pthread_mutex_unlock(&s->ckpt_mu);
        /* PASSIVE never blocks the writer; frames it cannot copy yet are
         * copied by the next round. */
        int nlog = 0, nckpt = 0;
        __atomic_store_n(&s->ckpt_busy, 1, __ATOMIC_RELEASE);
        if (checkpoint(s, s->ckpt_db, SQLITE_CHECKPOINT_PASSIVE, 1, &nlog, &nckpt) == SQLITE_OK)
            __atomic_store_n(&s->ckpt_backfilled, nckpt, __ATOMIC_RELEASE);
        __atomic_store_n(&s->ckpt_busy, 0, __ATOMIC_RELEASE);
        pthread_mutex_lock(&s->ckpt_mu);
    }
    pthread_mutex_unlock(&s->ckpt_mu);
    if (interval)
        sync_wal(s); /* what the last commits wrote */
    return NULL;
}

/* Starts the checkpointer thread, which every checkpoint but the committer's
 * own catch-up runs on (SQLite's automatic checkpoints are off). */
int start_checkpointer(struct store *s, const struct store_config *cfg)
{
    if (sqlite3_open_v2(cfg->path, &s->ckpt_db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK)
        goto fail;
    sqlite3_extended_result_codes(s->ckpt_db, 1);
    if (sqlite3_exec(s->ckpt_db,
                     cfg->sync_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL",
                     NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    pthread_mutex_init(&s->ckpt_mu, NULL);
    /* The periodic WAL fsync waits on the monotonic clock. */
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->ckpt_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&s->ckpt_thread, NULL, checkpointer, s) != 0) {
        pthread_mutex_destroy(&s->ckpt_mu);
        pthread_cond_destroy(&s->ckpt_cv);
        goto fail;
    }
    s->ckpt_started = 1;
    sqlite3_wal_autocheckpoint(s->db, 0);
    sqlite3_wal_hook(s->db, on_wal_commit, s);
    return 0;
fail:
    snprintf(s->errmsg, sizeof(s->errmsg), "cannot start the checkpointer: %s",
             s->ckpt_db ? sqlite3_errmsg(s->ckpt_db) : "out of memory");
    sqlite3_close(s->ckpt_db);
    s->ckpt_db = NULL;
    return -1;
}

void stop_checkpointer(struct store *s)
{
    if (!s->ckpt_started)
        return;
    pthread_mutex_lock(&s->ckpt_mu);
    s->ckpt_stop = 1;
    pthread_cond_signal(&s->ckpt_cv);
    pthread_mutex_unlock(&s->ckpt_mu);
    pthread_join(s->ckpt_thread, NULL);
    pthread_mutex_destroy(&s->ckpt_mu);
    pthread_cond_destroy(&s->ckpt_cv);
    sqlite3_close(s->ckpt_db);
    s->ckpt_db = NULL;
    s->ckpt_started = 0;
}

/*
 * After a commit. The checkpointer thread copies the bulk of the WAL into
 * the database without delaying commits, but while commits keep appending
 * it can never copy the very last frames, and SQLite only starts the WAL
 * over from its beginning once every frame is copied. A WAL that never
 * restarts grows, and appending to a growing file syncs slower than
 * rewriting one in place. So once the thread has copied all but a few
 * frames, the committer copies the rest itself (a few pages and the
 * database's fsync, once every ~4 MiB of WAL), and the next commit
 * restarts the WAL.
 */
void maybe_checkpoint(struct store *s)
{
    if (!s->sync_full)
        __atomic_store_n(&s->wal_dirty, 1, __ATOMIC_RELEASE);
    if (!s->ckpt_started || s->wal_frames < WAL_CKPT_FRAMES)
        return;
    int busy = __atomic_load_n(&s->ckpt_busy, __ATOMIC_ACQUIRE);
    int done = __atomic_load_n(&s->ckpt_backfilled, __ATOMIC_ACQUIRE);
    if (!busy && done > 0 && done <= s->wal_frames && s->wal_frames - done <= WAL_CKPT_TAIL) {
        checkpoint(s, s->db, SQLITE_CHECKPOINT_PASSIVE, 0, NULL, NULL);
        __atomic_store_n(&s->ckpt_backfilled, 0, __ATOMIC_RELEASE);
        s->ckpt_mark = 0;
        return;
    }
    if (s->wal_frames >= WAL_HARD_FRAMES) {
        checkpoint(s, s->db, SQLITE_CHECKPOINT_PASSIVE, 0, NULL, NULL);
        return;
    }
    if (busy || s->wal_frames - s->ckpt_mark < WAL_CKPT_TAIL)
        return;
    s->ckpt_mark = s->wal_frames;
    pthread_mutex_lock(&s->ckpt_mu);
    s->ckpt_wanted = 1;
    pthread_cond_signal(&s->ckpt_cv);
    pthread_mutex_unlock(&s->ckpt_mu);
}

/* On a full disk the WAL must not grow into the space kept for acks: past
 * FULL_WAL_FRAMES it is copied back and restarted, so that the next
 * commits reuse the blocks its file already has. A checkpoint that cannot
 * finish at once (a reader, the checkpointer thread) is tried again after
 * the next commit. */
#define FULL_WAL_FRAMES 64

void shrink_wal(struct store *s)
{
    if (s->wal_frames < FULL_WAL_FRAMES)
        return;
    sqlite3_busy_timeout(s->db, 100);
    int rc = checkpoint(s, s->db, SQLITE_CHECKPOINT_RESTART, 0, NULL, NULL);
    sqlite3_busy_timeout(s->db, 5000);
    if (rc == SQLITE_OK) {
        s->wal_frames = 0;
        s->ckpt_mark = 0;
        __atomic_store_n(&s->ckpt_backfilled, 0, __ATOMIC_RELEASE);
    }
}

/* SQLite keeps max_page_count at least the current size. */
void set_max_pages(struct store *s, uint64_t pages)
{
    char sql[96];
    snprintf(sql, sizeof(sql), "PRAGMA max_page_count = %llu", (unsigned long long)pages);
    sqlite3_exec(s->db, sql, NULL, NULL, NULL);
}
