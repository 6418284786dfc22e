/*
 * reserve.h - disk space set aside so that acks still fit on a full disk.
 *
 * A publish needs space; an ack, a group change or a topic setting needs a
 * few pages. When the filesystem of the data folder fills up, both would
 * fail, and consumers could not drain what is stored. So ferryd keeps a
 * file of real, allocated blocks in the data folder (ferry.reserve,
 * --disk-reserve-mb). The first time a commit fails for lack of space the
 * file is deleted: its blocks take the acks that follow, while publishes
 * are refused with STORAGE_FULL without touching the disk. Once the
 * filesystem has twice the reserve free again, the file is allocated anew
 * and publishes are accepted.
 *
 * Used by the store from whichever thread commits (one at a time).
 */
#ifndef FERRY_BROKER_RESERVE_H
#define FERRY_BROKER_RESERVE_H

#include <stdint.h>

struct reserve {
    char path[4200];
    uint64_t bytes;   /* the configured size; 0: no reserve */
    int held;         /* the file holds its blocks */
    int released;     /* deleted on a full disk: publishes are refused */
    int wanted;       /* could not be allocated at start: tried again later */
    int64_t check_ms; /* when released: the next free-space check */
};

/* Allocates (or completes) dir/ferry.reserve of bytes. A reserve that
 * cannot be allocated is logged and tried again once twice its size is
 * free (publishes are not refused meanwhile); 0 bytes removes the file. */
void reserve_init(struct reserve *r, const char *dir, uint64_t bytes);

/* The bytes free for an unprivileged writer on the filesystem of the
 * reserve's folder (UINT64_MAX when unknown). */
uint64_t reserve_fs_free(const struct reserve *r);

/* A commit failed for lack of space: deletes the file (if held) so that
 * the following small writes fit. */
void reserve_release(struct reserve *r);

/* While released (or wanted): at most every 200 ms, checks whether the
 * filesystem has twice the reserve free and if so allocates the file
 * again. Returns 1 once publishes may go to disk again (also when nothing
 * was released). */
int reserve_restore(struct reserve *r, int64_t now_ms);

#endif
