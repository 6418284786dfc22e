/*
 * seqset.h - the containers of a consumer group's sequences, apart from
 * what they mean: an entry map keyed by sequence, a bitmap of sequences
 * acked above a floor, a ring of sequences ready for redelivery, and a
 * min-heap of due times. Pure data structures: no I/O, no clock, no other
 * broker file; unit-tested on their own (tests/unit/test_seqset.c).
 *
 * Ownership: each container owns its memory (free it with its _free);
 * the entry map also owns each entry's reason string (freed when the
 * entry is removed or the map freed). The pointers an entry or a heap item
 * holds (holder, owner) are the caller's and never followed here.
 * Threads: the loop thread only (group.c), like everything of a group.
 */
#ifndef FERRY_BROKER_SEQSET_H
#define FERRY_BROKER_SEQSET_H

#include <stddef.h>
#include <stdint.h>

struct sub;

/* ---- entry map: open addressing keyed by seq (never 0) -------------- */

enum entry_state { E_FETCHING = 1, E_INFLIGHT, E_READY, E_WAITING };

struct entry {
    uint64_t seq; /* 0: empty slot */
    struct sub *holder;
    uint64_t due_ms;
    uint32_t attempt; /* deliveries so far */
    uint8_t state;    /* enum entry_state */
    uint8_t nacked;   /* the last delivery ended in a nack (else a lease expiry) */
    uint8_t saved;    /* its attempts are recorded in the store (group_attempts) */
    uint64_t sent_ms; /* when the current delivery went out */
    char *reason;     /* the last nack's reason (malloc'd, owned by the map), or NULL */
    /* A redrive (REDRIVE): the message was done for the group (dead-
     * lettered), and is delivered again from this sequence of the topic's
     * dead-letter topic. Such an entry may lie below the floor, and its
     * sequence's acked bit stays set. 0: an ordinary entry. */
    uint64_t dead_seq;
};

struct entry_map {
    struct entry *slots; /* mask + 1 of them; walk them to visit every entry */
    size_t mask;
    size_t count;
};

struct entry *entry_map_get(const struct entry_map *m, uint64_t seq);
/* Adds a zeroed entry for seq (which must have none). NULL when out of
 * memory. The pointer is valid until the next add or remove. */
struct entry *entry_map_add(struct entry_map *m, uint64_t seq);
/* Removes e (a pointer from get or add), freeing its reason. */
void entry_map_remove(struct entry_map *m, struct entry *e);
/* Removes every entry, keeping the slots. */
void entry_map_clear(struct entry_map *m);
void entry_map_free(struct entry_map *m);

/* ---- acked bitmap: bits for [floor, floor + cap), circular by seq ---- */

struct acked_bits {
    uint64_t *words;
    size_t cap; /* power of two, in bits; 0: none yet */
};

/* Whether seq is acked: below floor always, at or above as its bit says. */
int acked_bits_test(const struct acked_bits *a, uint64_t floor, uint64_t seq);
/* Sets seq's bit (seq >= floor), growing the map. Returns 0 or -1. */
int acked_bits_set(struct acked_bits *a, uint64_t floor, uint64_t seq);
/* Makes the map cover [floor, seq]. Returns 0 or -1. */
int acked_bits_reserve(struct acked_bits *a, uint64_t floor, uint64_t seq);
/* Clears seq's bit (inside the covered range). */
void acked_bits_clear(struct acked_bits *a, uint64_t seq);
/* Clears every bit. */
void acked_bits_reset(struct acked_bits *a);
void acked_bits_free(struct acked_bits *a);

/* ---- ready ring: sequences in the order they became ready ----------- */

struct seq_ring {
    uint64_t *v;
    size_t cap, head, len;
};

int seq_ring_push(struct seq_ring *r, uint64_t seq); /* 0 or -1 */
int seq_ring_pop(struct seq_ring *r, uint64_t *seq); /* 1, or 0 when empty */
void seq_ring_free(struct seq_ring *r);

/* ---- due-time heap: earliest first, equal times in sequence order ---- */

struct due_item {
    uint64_t due_ms;
    void *owner; /* the caller's (a group) */
    uint64_t seq;
};

struct due_heap {
    struct due_item *items; /* items[0] is the earliest */
    size_t len, cap;
};

/* Adds an item. Returns 1 when it is the new earliest, 0 when not, -1
 * when out of memory. */
int due_heap_push(struct due_heap *h, uint64_t due_ms, void *owner, uint64_t seq);
/* Removes the earliest item (the heap must not be empty). */
void due_heap_pop(struct due_heap *h);
/* Removes every item whose owner drop() says 1 of, in one O(n) pass (for
 * deleted groups); returns how many went. */
size_t due_heap_drop_if(struct due_heap *h, int (*drop)(const void *owner));
void due_heap_free(struct due_heap *h);

#endif
