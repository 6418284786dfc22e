/*
 * seqset.c - a group's sequence containers (seqset.h).
 */
#include "seqset.h"

#include <stdlib.h>
#include <string.h>

/* ---- entry map -------------------------------------------------------- */

static size_t seq_home(uint64_t seq, size_t mask)
{
    return (size_t)((seq * 0x9e3779b97f4a7c15ULL) >> 20) & mask;
}

struct entry *entry_map_get(const struct entry_map *m, uint64_t seq)
{
    if (!m->slots || !seq)
        return NULL;
    size_t i = seq_home(seq, m->mask);
    while (m->slots[i].seq) {
        if (m->slots[i].seq == seq)
            return &m->slots[i];
        i = (i + 1) & m->mask;
    }
    return NULL;
}

static int entry_map_grow(struct entry_map *m)
{
    size_t cap = m->slots ? (m->mask + 1) * 2 : 64;
    struct entry *ns = calloc(cap, sizeof(*ns));
    if (!ns)
        return -1;
    if (m->slots) {
        for (size_t i = 0; i <= m->mask; i++) {
            if (!m->slots[i].seq)
                continue;
            size_t j = seq_home(m->slots[i].seq, cap - 1);
            while (ns[j].seq)
                j = (j + 1) & (cap - 1);
            ns[j] = m->slots[i];
        }
    }
    free(m->slots);
    m->slots = ns;
    m->mask = cap - 1;
    return 0;
}

struct entry *entry_map_add(struct entry_map *m, uint64_t seq)
{
    /* At most 70% full. */
    if (!m->slots || (m->count + 1) * 10 > (m->mask + 1) * 7) {
        if (entry_map_grow(m) < 0)
            return NULL;
    }
    size_t i = seq_home(seq, m->mask);
    while (m->slots[i].seq)
        i = (i + 1) & m->mask;
    struct entry *e = &m->slots[i];
    memset(e, 0, sizeof(*e));
    e->seq = seq;
    m->count++;
    return e;
}

void entry_map_remove(struct entry_map *m, struct entry *e)
{
    free(e->reason);
    e->reason = NULL;
    /* Backward-shift deletion: later entries of the probe chain move into
     * the hole when their home allows. */
    size_t mask = m->mask;
    size_t hole = (size_t)(e - m->slots);
    size_t j = hole;
    for (;;) {
        j = (j + 1) & mask;
        if (!m->slots[j].seq)
            break;
        size_t home = seq_home(m->slots[j].seq, mask);
        int movable = hole <= j ? (home <= hole || home > j) : (home <= hole && home > j);
        if (movable) {
            m->slots[hole] = m->slots[j];
            hole = j;
        }
    }
    memset(&m->slots[hole], 0, sizeof(m->slots[hole]));
    m->count--;
}

void entry_map_clear(struct entry_map *m)
{
    if (!m->slots)
        return;
    for (size_t i = 0; i <= m->mask; i++)
        free(m->slots[i].reason);
    memset(m->slots, 0, (m->mask + 1) * sizeof(*m->slots));
    m->count = 0;
}

void entry_map_free(struct entry_map *m)
{
    entry_map_clear(m);
    free(m->slots);
    memset(m, 0, sizeof(*m));
}

/* ---- acked bitmap ----------------------------------------------------- */

int acked_bits_test(const struct acked_bits *a, uint64_t floor, uint64_t seq)
{
    if (seq < floor)
        return 1;
    if (seq >= floor + a->cap)
        return 0;
    size_t bit = (size_t)(seq & (a->cap - 1));
    return (int)((a->words[bit / 64] >> (bit % 64)) & 1);
}

void acked_bits_clear(struct acked_bits *a, uint64_t seq)
{
    size_t bit = (size_t)(seq & (a->cap - 1));
    a->words[bit / 64] &= ~(1ULL << (bit % 64));
}

int acked_bits_reserve(struct acked_bits *a, uint64_t floor, uint64_t seq)
{
    if (seq < floor + a->cap)
        return 0;
    size_t cap = a->cap ? a->cap : 4096;
    while (seq >= floor + cap)
        cap *= 2;
    uint64_t *nb = calloc(cap / 64, sizeof(uint64_t));
    if (!nb)
        return -1;
    for (uint64_t s = floor; s < floor + a->cap; s++) {
        if (acked_bits_test(a, floor, s)) {
            size_t bit = (size_t)(s & (cap - 1));
            nb[bit / 64] |= 1ULL << (bit % 64);
        }
    }
    free(a->words);
    a->words = nb;
    a->cap = cap;
    return 0;
}

int acked_bits_set(struct acked_bits *a, uint64_t floor, uint64_t seq)
{
    if (seq < floor)
        return 0; /* below the floor: done already */
    if (acked_bits_reserve(a, floor, seq) < 0)
        return -1;
    size_t bit = (size_t)(seq & (a->cap - 1));
    a->words[bit / 64] |= 1ULL << (bit % 64);
    return 0;
}

void acked_bits_reset(struct acked_bits *a)
{
    if (a->words)
        memset(a->words, 0, a->cap / 8);
}

void acked_bits_free(struct acked_bits *a)
{
    free(a->words);
    a->words = NULL;
    a->cap = 0;
}

/* ---- ready ring ------------------------------------------------------- */

int seq_ring_push(struct seq_ring *r, uint64_t seq)
{
    if (r->len == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        uint64_t *nr = malloc(cap * sizeof(*nr));
        if (!nr)
            return -1;
        for (size_t i = 0; i < r->len; i++)
            nr[i] = r->v[(r->head + i) % r->cap];
        free(r->v);
        r->v = nr;
        r->cap = cap;
        r->head = 0;
    }
    r->v[(r->head + r->len) % r->cap] = seq;
    r->len++;
    return 0;
}

int seq_ring_pop(struct seq_ring *r, uint64_t *seq)
{
    if (!r->len)
        return 0;
    *seq = r->v[r->head];
    r->head = (r->head + 1) % r->cap;
    r->len--;
    return 1;
}

void seq_ring_free(struct seq_ring *r)
{
    free(r->v);
    memset(r, 0, sizeof(*r));
}

/* ---- due-time heap ---------------------------------------------------- */

static int due_less(const struct due_item *a, const struct due_item *b)
{
    return a->due_ms < b->due_ms || (a->due_ms == b->due_ms && a->seq < b->seq);
}

static void due_swap(struct due_item *a, struct due_item *b)
{
    struct due_item t = *a;
    *a = *b;
    *b = t;
}

int due_heap_push(struct due_heap *h, uint64_t due_ms, void *owner, uint64_t seq)
{
    if (h->len == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 256;
        struct due_item *n = realloc(h->items, cap * sizeof(*n));
        if (!n)
            return -1;
        h->items = n;
        h->cap = cap;
    }
    size_t i = h->len++;
    h->items[i] = (struct due_item){due_ms, owner, seq};
    while (i && due_less(&h->items[i], &h->items[(i - 1) / 2])) {
        due_swap(&h->items[(i - 1) / 2], &h->items[i]);
        i = (i - 1) / 2;
    }
    return i == 0;
}

void due_heap_pop(struct due_heap *h)
{
    h->items[0] = h->items[--h->len];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->len && due_less(&h->items[l], &h->items[m]))
            m = l;
        if (r < h->len && due_less(&h->items[r], &h->items[m]))
            m = r;
        if (m == i)
            break;
        due_swap(&h->items[i], &h->items[m]);
        i = m;
    }
}

static void due_sift_down(struct due_heap *h, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->len && due_less(&h->items[l], &h->items[m]))
            m = l;
        if (r < h->len && due_less(&h->items[r], &h->items[m]))
            m = r;
        if (m == i)
            break;
        due_swap(&h->items[i], &h->items[m]);
        i = m;
    }
}

size_t due_heap_drop_if(struct due_heap *h, int (*drop)(const void *owner))
{
    size_t kept = 0, n = h->len;
    for (size_t i = 0; i < n; i++)
        if (!drop(h->items[i].owner))
            h->items[kept++] = h->items[i];
    h->len = kept;
    for (size_t i = kept / 2; i-- > 0;)
        due_sift_down(h, i);
    return n - kept;
}

void due_heap_free(struct due_heap *h)
{
    free(h->items);
    memset(h, 0, sizeof(*h));
}
