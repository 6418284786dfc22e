/*
 * faultfs.h - the test side of libfaultfs.so, the power-loss filesystem
 * (tests/support/faultfs.c describes the model and its limits).
 *
 * A crash test runs ferryd under the shim, so that every write to
 * <data_dir>/ferry.db and ferry.db-wal is mirrored into a "durable image"
 * in shadow_dir only when it is fsynced, then kills ferryd with SIGKILL and
 * calls faultfs_power_cut(), which replaces the live files by their images:
 * the data folder is then what a disk would hold after a power cut at the
 * moment of the kill. Faults (a failing fsync, a power cut in the middle of
 * one, an unreadable sector) are asked for with faultfs_rules() at any time,
 * also while ferryd runs.
 *
 *   faultfs_setenv(getenv("FAULTFS_LIB"), data_dir, shadow_dir, ctl_path);
 *   start ferryd (fork + exec)
 *   faultfs_unsetenv();
 *   faultfs_rules(ctl_path, "fail-fsync ferry.db-wal 1\n");
 *   ... kill(pid, SIGKILL); waitpid(pid, ...);
 *   faultfs_power_cut(data_dir, shadow_dir, NULL);
 *   restart ferryd (without the shim, or with it again) and check
 *
 * Nothing here asserts: each call returns 0 (or a count) on success and a
 * negative errno value on failure.
 */
#ifndef FERRY_TEST_FAULTFS_H
#define FERRY_TEST_FAULTFS_H

/* The files tracked when FAULTFS_FILES is not set. */
#define FAULTFS_DEFAULT_FILES "ferry.db,ferry.db-wal"

/* Atomically replaces the rules file ctl_path by text (written to a
 * temporary file beside it, then renamed), so that a running shim sees
 * either the old rules or the new ones, and resets its counters. text holds
 * one rule a line ('#' starts a comment):
 *   fail-fsync NAME COUNT    the next COUNT fsyncs of NAME fail with EIO and
 *                            drop its dirty data
 *   cut-in-fsync NAME SKIP   SKIP fsyncs of NAME pass, the next one writes
 *                            half its dirty ranges and SIGKILLs the process
 *   poison-read STRING       reads of tracked files whose bytes contain
 *                            STRING fail with EIO
 * An empty text removes every rule. */
int faultfs_rules(const char *ctl_path, const char *text);

/* After the process that ran under the shim is dead: replaces each tracked
 * file of data_dir (files_csv, a comma list of base names, or NULL for
 * FAULTFS_DEFAULT_FILES) by its image in shadow_dir, byte for byte; deletes
 * a tracked file that has no image, and <data_dir>/ferry.db-shm and the -shm
 * of every tracked "-wal" file (shared memory does not survive a power
 * cut). The images are kept, and equal the files afterwards. Call it only
 * after a run under the shim: a run without the shim in between leaves the
 * images stale, and a power cut would then bring back their older state
 * (a run under the shim takes new images of the files when it starts).
 * Returns the number of files restored from an image. */
int faultfs_power_cut(const char *data_dir, const char *shadow_dir, const char *files_csv);

/* Sets LD_PRELOAD (lib_path in front of what is there), FAULTFS_DIR,
 * FAULTFS_SHADOW and FAULTFS_CTL (unset when ctl_path is NULL) in this
 * process, so that the children it execs from now on run under the shim,
 * and appends verify_asan_link_order=0 to ASAN_OPTIONS so that a sanitizer
 * build accepts the preload. Creates shadow_dir when missing. The previous
 * LD_PRELOAD and ASAN_OPTIONS are saved for faultfs_unsetenv(); a second
 * call without an unsetenv in between keeps the first saved values. */
int faultfs_setenv(const char *lib_path, const char *data_dir, const char *shadow_dir,
                   const char *ctl_path);

/* Undoes faultfs_setenv(): restores LD_PRELOAD and ASAN_OPTIONS and unsets
 * the FAULTFS_* variables it set. Safe to call without a setenv. */
void faultfs_unsetenv(void);

#endif
