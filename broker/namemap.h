/*
 * namemap.h - a hash map of named things (topics), one implementation for
 * the loop's registry (group.c) and the store's (store_topics.c), which
 * each keep their own map because they live on different threads.
 *
 * Intrusive: the thing embeds a struct name_link as its first member, so
 * that a link's address is the thing's; the map never allocates or frees
 * things, only its bucket array. The name the link points to must stay
 * valid while the thing is in the map.
 */
#ifndef FERRY_BROKER_NAMEMAP_H
#define FERRY_BROKER_NAMEMAP_H

#include <stddef.h>
#include <stdint.h>

struct name_link {
    const char *name;
    size_t len;
    uint64_t hash;
    struct name_link *next;
};

struct namemap {
    struct name_link **buckets;
    size_t nbuckets; /* a power of two, or 0 */
    size_t count;
};

/* The thing named so (its link), or NULL. */
void *namemap_find(const struct namemap *m, const void *name, size_t len);
/* Adds l, naming it name/len (which must not be in the map). Returns 0,
 * or -1 when out of memory (then nothing changed). */
int namemap_insert(struct namemap *m, struct name_link *l, const char *name, size_t len);
void namemap_remove(struct namemap *m, struct name_link *l);
/* Iteration in no particular order: first, then next of the one before
 * (which may be removed or freed once next returned). */
void *namemap_first(const struct namemap *m);
void *namemap_next(const struct namemap *m, const void *thing);
/* Frees the bucket array (not the things). */
void namemap_free(struct namemap *m);

#endif
