/*
 * group_load.c - the groups at start: topics, groups, acks above the
 * floors and recorded attempts from the store (store_load_groups), in
 * O(acks + groups): ack and attempt rows find their group through an
 * index by id, built once the group rows are read. Loop thread, before
 * the loop runs.
 */
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "group.h"
#include "group_internal.h"
#include "log.h"
#include "seqset.h"
#include "store.h"

static int on_loaded_topic(void *arg, int64_t id, const char *name, size_t len,
                           const struct topic_view *v)
{
    struct groups *g = arg;
    struct ltopic *t = topic_lookup(g, (const uint8_t *)name, len, 1);
    if (!t)
        return -1;
    t->id = id;
    t->head = v->head;
    t->first = v->first;
    t->view = *v;
    return 0;
}

static int on_loaded_group(void *arg, int64_t id, const char *topic, size_t topic_len,
                           const char *name, size_t name_len, uint64_t floor, uint32_t ack_wait_ms,
                           uint16_t max_deliveries, uint64_t origin, const uint32_t *backoff_ms,
                           uint8_t backoff_count)
{
    struct groups *g = arg;
    struct ltopic *t = topic_lookup(g, (const uint8_t *)topic, topic_len, 1);
    if (!t)
        return -1;
    struct group *gr = group_new(g, t, (const uint8_t *)name, name_len);
    if (!gr)
        return -1;
    gr->id = id;
    if (id > g->next_group_id)
        g->next_group_id = id;
    gr->floor = gr->next = floor;
    gr->origin = origin;
    gr->ack_wait_ms = ack_wait_ms;
    gr->backoff_count = backoff_count;
    memcpy(gr->backoff_ms, backoff_ms, (size_t)backoff_count * sizeof(*backoff_ms));
    gr->max_deliveries = dead_letter_fits(t) ? max_deliveries : 0;
    if (g->nloading == g->loading_cap) {
        size_t cap = g->loading_cap ? g->loading_cap * 2 : 64;
        struct group **nl = realloc(g->loading, cap * sizeof(*nl));
        if (!nl)
            return -1;
        g->loading = nl;
        g->loading_cap = cap;
    }
    g->loading[g->nloading++] = gr;
    g->loading_sorted = 0;
    return 0;
}

static int cmp_group_id(const void *x, const void *y)
{
    int64_t a = (*(struct group *const *)x)->id, b = (*(struct group *const *)y)->id;
    return a < b ? -1 : a > b;
}

/* The loaded group with this id, or NULL: O(1) for rows in group order,
 * O(log groups) otherwise, instead of a walk over every group. */
static struct group *loaded_group(struct groups *g, int64_t id)
{
    if (g->loading_last && g->loading_last->id == id)
        return g->loading_last;
    if (!g->loading_sorted) {
        if (g->nloading)
            qsort(g->loading, g->nloading, sizeof(*g->loading), cmp_group_id);
        g->loading_sorted = 1;
    }
    size_t lo = 0, hi = g->nloading;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (g->loading[mid]->id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == g->nloading || g->loading[lo]->id != id)
        return NULL;
    return g->loading_last = g->loading[lo];
}

static int on_loaded_ack(void *arg, int64_t group_id, uint64_t seq)
{
    struct groups *g = arg;
    /* Acks above the floor: the group's cursor restarts at the floor, and
     * these are skipped when it gets there. */
    struct group *gr = loaded_group(g, group_id);
    /* A row below the floor (an older ferryd's dead-lettering left them)
     * is done already. */
    return gr && seq >= gr->floor ? acked_set(gr, seq) : 0;
}

static int on_loaded_attempts(void *arg, int64_t group_id, uint64_t seq, uint32_t attempts,
                              uint64_t dead_seq)
{
    struct groups *g = arg;
    struct group *gr = loaded_group(g, group_id);
    if (!gr)
        return 0;
    if (dead_seq) {
        /* A redrive not yet acked: waiting again. */
        if (!acked_test(gr, seq) || entry_get(gr, seq))
            return 0;
        struct entry *e = entry_add(gr, seq);
        if (!e || ready_push(gr, seq) < 0)
            return -1;
        e->dead_seq = dead_seq;
        e->attempt = attempts;
        e->saved = 1;
        e->state = E_READY;
        return 0;
    }
    if (acked_test(gr, seq))
        return 0;
    struct restored *nr = realloc(gr->restored, (gr->nrestored + 1) * sizeof(*gr->restored));
    if (!nr)
        return -1;
    gr->restored = nr;
    gr->restored[gr->nrestored++] = (struct restored){seq, attempts};
    return 0;
}

int groups_init(struct broker *b)
{
    struct groups *g = calloc(1, sizeof(*g));
    if (!g)
        return -1;
    g->broker = b;
    b->groups = g;
    uv_timer_init(b->loop, &g->timer);
    g->timer.data = g;
    struct store_load_cbs cbs = {
        .arg = g,
        .topic = on_loaded_topic,
        .group_row = on_loaded_group,
        .ack = on_loaded_ack,
        .attempts = on_loaded_attempts,
    };
    int rc = store_load_groups(b->store, &cbs);
    free(g->loading);
    g->loading = NULL;
    g->nloading = g->loading_cap = 0;
    g->loading_last = NULL;
    if (rc != 0)
        return -1;
    /* Sequences acked above the floor: the restart cursor skips them. */
    for (struct ltopic *t = namemap_first(&g->topics); t; t = namemap_next(&g->topics, t))
        for (struct group *gr = t->groups; gr; gr = gr->next_in_topic)
            gr->next = gr->floor;
    return 0;
}
