/*
 * relay_it.h - what the outbox and relay integration tests share: an
 * application database with the outbox installed, `ferry relay` child
 * processes (the FERRY_CLI binary) with their logs, and waits on the
 * broker's and the outbox's state.
 *
 * Functions that can fail assert with cmocka, so they may only be called
 * from inside a running cmocka test (not from a forked child).
 */
#ifndef FERRY_RELAY_IT_H
#define FERRY_RELAY_IT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <ferry.h>
#include <sqlite3.h>

/* Opens (creating) the application database at path in WAL mode with a
 * busy timeout and installs the outbox. */
sqlite3 *rit_app_open(const char *path);

/* Inserts n rows into the outbox with ferry_outbox_put, in one transaction:
 * topic, payload "<prefix>-<i>" for i in [first, first + n). */
void rit_put_n(sqlite3 *db, const char *topic, const char *prefix, int first, int n);

/* Runs one SQL script on path with the sqlite3 command-line shell, as
 * another program would write to the outbox. Returns 0, or -1 when the
 * shell is not installed (the caller skips). Asserts it succeeded. */
int rit_shell(const char *dir, const char *path, const char *sql);

/* A count from path: SELECT count(*) ... (a fresh connection each time). */
long rit_count(const char *path, const char *where);

/* Starts `ferry relay --db db --server server extra...` with stdout and
 * stderr appended to log_path; env_kv ("NAME=VALUE" or NULL) is set in the
 * child only. Returns its pid. */
pid_t rit_relay_start(const char *db, const char *server, const char *log_path,
                      const char *const *extra, const char *env_kv);

/* Waits up to timeout_ms for pid to exit; returns its exit status, 128 +
 * signal, or -1 on timeout (it is then still running). */
int rit_wait_exit(pid_t pid, int timeout_ms);

/* SIGTERM and wait (SIGKILL after 10 s); returns the exit status. */
int rit_relay_stop(pid_t pid);

/* SIGKILL and reap. */
void rit_kill9(pid_t pid);

/* Waits until the file at path contains needle; returns 1, or 0 after
 * timeout_ms (the file is then printed). */
int rit_wait_log(const char *path, const char *needle, int timeout_ms);

/* Prints the file at path to stderr, framed. */
void rit_dump(const char *path);

/* The broker's message count of topic (0 when unknown), over a fresh
 * connection. */
uint64_t rit_topic_count(const char *addr, const char *topic);

/* Waits up to timeout_ms until topic holds want messages; returns the last
 * count seen. */
uint64_t rit_wait_topic_count(const char *addr, const char *topic, uint64_t want, int timeout_ms);

/* Waits up to timeout_ms until the outbox of path has no unsent row;
 * returns 1, or 0 on timeout. */
int rit_wait_drained(const char *path, int timeout_ms);

/* A free TCP port on 127.0.0.1 (bound and released). */
int rit_free_port(void);

#endif /* FERRY_RELAY_IT_H */
