/*
 * store_dead.h - the broker's own ferry-dead-* headers of a dead letter,
 * read back: by a redrive (store_groups.c), FLOOR (store_read_floor) and
 * migration 3 (backfill_group_dead, which store.c runs). Below the rest of
 * the store: it takes the database handle, not the store.
 */
#ifndef FERRY_STORE_DEAD_H
#define FERRY_STORE_DEAD_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

#include "proto.h"

/* The broker's own headers of a dead letter (the last of each name: a
 * message dead-lettered twice carries the later ones last). */
struct dead_info {
    struct proto_slice seq, group_name, id;
};

/* Fills *out from a stored message's header block (u16 count, then the
 * pairs); a header not found stays empty. Slices point into hdr. */
void dead_info_of(const uint8_t *hdr, size_t hlen, struct dead_info *out);

/* The decimal number in v, 0 when v is empty, not all digits or too long. */
uint64_t slice_u64(struct proto_slice v);

/* Migration 3's data: a group_dead row for every dead letter stored, from
 * its ferry-dead-* headers (the group by the dead letter's topic and
 * ferry-dead-group name). Dead letters of groups that no longer exist are
 * skipped. */
int backfill_group_dead(sqlite3 *db);

#endif
