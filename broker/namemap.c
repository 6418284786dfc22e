/*
 * namemap.c - a hash map of named things (namemap.h).
 */
#include "namemap.h"

#include <stdlib.h>
#include <string.h>

/* FNV-1a. */
static uint64_t name_hash(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

void *namemap_find(const struct namemap *m, const void *name, size_t len)
{
    if (!m->nbuckets)
        return NULL;
    uint64_t h = name_hash(name, len);
    for (struct name_link *l = m->buckets[h & (m->nbuckets - 1)]; l; l = l->next)
        if (l->hash == h && l->len == len && memcmp(l->name, name, len) == 0)
            return l;
    return NULL;
}

int namemap_insert(struct namemap *m, struct name_link *l, const char *name, size_t len)
{
    if (m->count + 1 > m->nbuckets) {
        size_t n = m->nbuckets ? m->nbuckets * 2 : 64;
        struct name_link **nb = calloc(n, sizeof(*nb));
        if (!nb)
            return -1;
        for (size_t i = 0; i < m->nbuckets; i++) {
            struct name_link *x = m->buckets[i];
            while (x) {
                struct name_link *nx = x->next;
                x->next = nb[x->hash & (n - 1)];
                nb[x->hash & (n - 1)] = x;
                x = nx;
            }
        }
        free(m->buckets);
        m->buckets = nb;
        m->nbuckets = n;
    }
    l->name = name;
    l->len = len;
    l->hash = name_hash((const uint8_t *)name, len);
    l->next = m->buckets[l->hash & (m->nbuckets - 1)];
    m->buckets[l->hash & (m->nbuckets - 1)] = l;
    m->count++;
    return 0;
}

void namemap_remove(struct namemap *m, struct name_link *l)
{
    if (!m->nbuckets)
        return;
    struct name_link **pp = &m->buckets[l->hash & (m->nbuckets - 1)];
    while (*pp && *pp != l)
        pp = &(*pp)->next;
    if (*pp) {
        *pp = l->next;
        l->next = NULL;
        m->count--;
    }
}

static void *first_from(const struct namemap *m, size_t i)
{
    for (; i < m->nbuckets; i++)
        if (m->buckets[i])
            return m->buckets[i];
    return NULL;
}

void *namemap_first(const struct namemap *m)
{
    return first_from(m, 0);
}

void *namemap_next(const struct namemap *m, const void *thing)
{
    const struct name_link *l = thing;
    if (l->next)
        return l->next;
    return first_from(m, (size_t)(l->hash & (m->nbuckets - 1)) + 1);
}

void namemap_free(struct namemap *m)
{
    free(m->buckets);
    m->buckets = NULL;
    m->nbuckets = m->count = 0;
}
