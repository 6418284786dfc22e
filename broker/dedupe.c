/*
 * dedupe.c - open-addressing hash index of recent message ids; see dedupe.h.
 */
#include "dedupe.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define INITIAL_CAPACITY 4096
/* Grow past 7/10 full: probe chains stay short with linear probing. */
#define MAX_LOAD_NUM 7
#define MAX_LOAD_DEN 10

int dedupe_init(struct dedupe_index *d, uint64_t seed)
{
    d->slots = calloc(INITIAL_CAPACITY, sizeof(*d->slots));
    if (!d->slots)
        return -1;
    d->mask = INITIAL_CAPACITY - 1;
    d->count = 0;
    d->seed = seed;
    return 0;
}

void dedupe_free(struct dedupe_index *d)
{
    free(d->slots);
    d->slots = NULL;
    d->mask = 0;
    d->count = 0;
}

uint64_t dedupe_hash(const struct dedupe_index *d, int64_t topic_id, const void *id, size_t len)
{
    uint64_t h =
        XXH3_64bits_withSeed(id, len, d->seed ^ ((uint64_t)topic_id * 0x9e3779b97f4a7c15ULL));
    return h | 1;
}

/* The slot where a hash's probe starts. Bit 0 of every hash is forced to 1
 * (0 marks empty slots), so it is shifted out. */
static size_t home_of(uint64_t h, size_t mask)
{
    return (size_t)(h >> 1) & mask;
}

static int grow(struct dedupe_index *d)
{
    size_t cap = (d->mask + 1) * 2;
    struct dedupe_slot *ns = calloc(cap, sizeof(*ns));
    if (!ns)
        return -1;
    for (size_t i = 0; i <= d->mask; i++) {
        struct dedupe_slot s = d->slots[i];
        if (!s.h)
            continue;
        size_t j = home_of(s.h, cap - 1);
        while (ns[j].h)
            j = (j + 1) & (cap - 1);
        ns[j] = s;
    }
    free(d->slots);
    d->slots = ns;
    d->mask = cap - 1;
    return 0;
}

int dedupe_add(struct dedupe_index *d, uint64_t h, uint64_t log_id)
{
    if ((d->count + 1) * MAX_LOAD_DEN > (d->mask + 1) * MAX_LOAD_NUM && grow(d) < 0)
        return -1;
    size_t i = home_of(h, d->mask);
    while (d->slots[i].h)
        i = (i + 1) & d->mask;
    d->slots[i].h = h;
    d->slots[i].log_id = log_id;
    d->count++;
    return 0;
}

int dedupe_remove(struct dedupe_index *d, uint64_t h, uint64_t log_id)
{
    size_t i = home_of(h, d->mask);
    while (d->slots[i].h) {
        if (d->slots[i].h == h && d->slots[i].log_id == log_id)
            break;
        i = (i + 1) & d->mask;
    }
    if (!d->slots[i].h)
        return 0;
    /* Backward-shift deletion: pull later members of the cluster into the
     * hole when their home slot is at or before it, so no tombstones. */
    size_t hole = i;
    size_t j = i;
    for (;;) {
        j = (j + 1) & d->mask;
        if (!d->slots[j].h)
            break;
        size_t home = home_of(d->slots[j].h, d->mask);
        /* Is home cyclically outside (hole, j]? Then j may move to hole. */
        int movable = hole <= j ? (home <= hole || home > j) : (home <= hole && home > j);
        if (movable) {
            d->slots[hole] = d->slots[j];
            hole = j;
        }
    }
    d->slots[hole].h = 0;
    d->slots[hole].log_id = 0;
    d->count--;
    return 1;
}

int dedupe_next(const struct dedupe_index *d, uint64_t h, size_t *pos, uint64_t *log_id)
{
    /* *pos counts slots already examined from h's home. */
    size_t i = (home_of(h, d->mask) + *pos) & d->mask;
    while (d->slots[i].h) {
        (*pos)++;
        if (d->slots[i].h == h) {
            *log_id = d->slots[i].log_id;
            return 1;
        }
        i = (i + 1) & d->mask;
    }
    return 0;
}

size_t dedupe_memory(const struct dedupe_index *d)
{
    return (d->mask + 1) * sizeof(struct dedupe_slot);
}
