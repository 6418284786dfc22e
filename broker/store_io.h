/*
 * store_io.h - how the store meets a failing disk. Internal to the store
 * (store*.c, the broker files that include sqlite3.h); codes are SQLite's.
 *
 * Two kinds of failure are told apart:
 *
 *  - Failures that only fail the work at hand: a WAL write or fsync in a
 *    commit (the commit is rolled back, its frames are never part of the
 *    database and the next commit writes over them), a full disk, a read
 *    that could not be served. The caller answers with an error and goes on.
 *
 *  - Failures after which SQLite may believe that pages are on disk that are
 *    not: any I/O error from a checkpoint (it copies WAL frames into the
 *    database file and fsyncs it) or from the periodic WAL fsync of
 *    `--sync normal`. After a failed fsync Linux marks the dirty pages clean
 *    and forgets them; SQLite has already counted earlier checkpoint rounds
 *    as copied and would restart the WAL over frames whose pages never
 *    reached the disk (PostgreSQL's "fsyncgate", 2018). Only WAL recovery
 *    at the next open, which recopies every frame, repairs that. So
 *    store_io_fatal() logs one line and exits at once, without
 *    sqlite3_close (a clean close would checkpoint and delete the WAL).
 *
 * Every I/O error SQLite reports is logged (rate-limited, with the file and
 * the system call) and counted, from whichever thread meets it.
 */
#ifndef FERRY_BROKER_STORE_IO_H
#define FERRY_BROKER_STORE_IO_H

#include <stdint.h>

/* ferryd's exit status after a fatal storage error (sysexits' EX_IOERR):
 * a supervisor (systemd Restart=on-failure, script/server) starts it again
 * and WAL recovery replays every acknowledged message. */
#define STORE_IO_EXIT 74

/* Installs SQLite's error-log hook; once per process, before the first
 * connection opens (later calls do nothing). Thread-safe. */
void store_io_init(void);

/* Whether a checkpoint's (or a database or WAL fsync's) result code means
 * the database file may no longer hold what SQLite believes: any I/O error
 * or corruption. SQLITE_BUSY and SQLITE_LOCKED (another checkpoint or a
 * reader), SQLITE_FULL (a write refused for space: nothing was lost, the
 * frames are copied again later) and SQLITE_NOMEM are not. */
int store_io_is_fatal(int rc);

/* Logs "<op> of <file> failed during <during>: <detail>; exiting so that
 * recovery replays the WAL" and exits with STORE_IO_EXIT without running
 * atexit handlers or closing anything. <op> and the detail come from the
 * last system call SQLite reported failing on this thread, else from rc and
 * sys_errno (sqlite3_system_errno). */
_Noreturn void store_io_fatal(const char *file, const char *during, int rc, int sys_errno);

/* Whether rc is a failure to read the database or the WAL (an I/O read
 * error, a short read, or a page that does not parse). */
int store_io_is_read_error(int rc);

/* Counts one I/O error met outside SQLite (the store's own fsyncs). */
void store_io_count(void);

/* I/O errors since the process started (SQLite's and the store's own). */
uint64_t store_io_errors(void);

#endif
