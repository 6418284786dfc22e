/*
 * store_vfs.h - the store's files, timed: a thin SQLite VFS over the
 * default one that measures every sync (fsync/fdatasync of ferry.db and
 * its WAL, on whichever thread makes it) into a histogram for /metrics.
 * Everything else passes straight through.
 */
#ifndef FERRY_BROKER_STORE_VFS_H
#define FERRY_BROKER_STORE_VFS_H

#include "metrics.h"

/* Registers the timed VFS as SQLite's default; once per process (called
 * by store_io_init after SQLite's log hook). Returns 0 or -1. */
int store_vfs_install(void);

/* The syncs' durations, in seconds, since start. */
const struct histo *store_vfs_sync_seconds(void);

#endif
