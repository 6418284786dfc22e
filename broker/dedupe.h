/*
 * dedupe.h - the in-memory index of recently stored message ids.
 *
 * Why in memory: message ids are random, so an on-disk B-tree keyed by them
 * dirties one random page per insert, and every commit then writes (and
 * fsyncs) a page per message: on a 2-core VM that caps a broker near 40,000
 * messages/s however it batches. Instead the store appends each id to
 * dedupe_log (insertion order, so sequential pages) and this index maps a
 * keyed 64-bit hash of (topic, id) to the log row. The index is rebuilt from
 * the log at start, and entries leave it when the store purges their log
 * rows (older than the window, or beyond the entry cap).
 *
 * A hash match is only a candidate: the store reads the log row and compares
 * the real id, so a collision can never make a new message look like a
 * duplicate. The hash is XXH3 with a per-process random seed, so nobody can
 * precompute colliding ids to slow the probing down.
 *
 * Open addressing, linear probing, backward-shift deletion; 16 bytes a slot,
 * at most 70% full. Single-threaded (the store's thread).
 */
#ifndef FERRY_BROKER_DEDUPE_H
#define FERRY_BROKER_DEDUPE_H

#include <stddef.h>
#include <stdint.h>

struct dedupe_index {
    struct dedupe_slot *slots;
    size_t mask; /* capacity - 1; capacity is a power of two */
    size_t count;
    uint64_t seed;
};

struct dedupe_slot {
    uint64_t h;      /* 0 marks an empty slot; real hashes have bit 0 set */
    uint64_t log_id; /* the dedupe_log row */
};

int dedupe_init(struct dedupe_index *d, uint64_t seed);
void dedupe_free(struct dedupe_index *d);

/* The index's hash of an id within a topic. */
uint64_t dedupe_hash(const struct dedupe_index *d, int64_t topic_id, const void *id, size_t len);

/* Adds an entry (equal hashes may coexist). Returns 0 or -1 (no memory). */
int dedupe_add(struct dedupe_index *d, uint64_t h, uint64_t log_id);

/* Removes the entry (h, log_id) if present. Returns 1 if removed. */
int dedupe_remove(struct dedupe_index *d, uint64_t h, uint64_t log_id);

/* Iterates the candidates for h: start with *pos = 0; each call returns 1
 * and the next log_id, or 0 when there are no more. The index must not
 * change during the iteration. */
int dedupe_next(const struct dedupe_index *d, uint64_t h, size_t *pos, uint64_t *log_id);

/* Bytes held by the table. */
size_t dedupe_memory(const struct dedupe_index *d);

#endif
