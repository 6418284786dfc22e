/*
 * group_stats.c - what the loop knows of its topics and groups, as plain
 * numbers: the GROUPS frame (consumer.c), the HTTP API and /metrics
 * (http_*.c) all read them here, so every view shows the same figures.
 */
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "clock.h"
#include "group.h"
#include "group_internal.h"
#include "store.h"

/* Rates over the last minute: 60 complete seconds. */
#define MINUTE_SECONDS 60

static int cmp_bytes(const char *a, size_t al, const char *b, size_t bl)
{
    int r = memcmp(a, b, al < bl ? al : bl);
    return r ? r : (al > bl) - (al < bl);
}

static int cmp_group(const void *x, const void *y)
{
    const struct group *a = *(struct group *const *)x, *b = *(struct group *const *)y;
    int r = cmp_bytes(a->topic->name, a->topic->name_len, b->topic->name, b->topic->name_len);
    return r ? r : cmp_bytes(a->name, a->name_len, b->name, b->name_len);
}

static int cmp_topic(const void *x, const void *y)
{
    const struct ltopic *a = *(struct ltopic *const *)x, *b = *(struct ltopic *const *)y;
    return cmp_bytes(a->name, a->name_len, b->name, b->name_len);
}

static int name_is(const struct ltopic *t, const char *name, size_t len)
{
    return !name || (len == t->name_len && !memcmp(name, t->name, len));
}

static void group_stat_fill(struct broker *b, struct group *gr, int64_t wall, struct group_stat *gs)
{
    struct ltopic *t = gr->topic;
    uint32_t in_flight = 0, consumers = 0;
    uint64_t acked_above = 0;
    for (struct sub *s = gr->subs; s; s = s->next_in_group)
        consumers++;
    if (gr->map.slots) {
        for (size_t k = 0; k <= gr->map.mask; k++) {
            struct entry *e = &gr->map.slots[k];
            if (e->seq && (e->state == E_INFLIGHT || e->state == E_FETCHING))
                in_flight++;
        }
    }
    /* The oldest message not yet done is the first one still stored from
     * the floor on, whether waiting, in flight or to be redelivered: its
     * age since it was stored. */
    uint64_t oldest = 0;
    int64_t ts = t->id ? store_first_ts(b->store, t->id, gr->floor, t->head) : -1;
    if (ts >= 0 && wall > ts)
        oldest = (uint64_t)(wall - ts);
    for (uint64_t s = gr->floor; s < gr->next; s++)
        acked_above += (uint64_t)acked_test(gr, s);
    uint64_t total = t->head >= gr->floor ? t->head - gr->floor + 1 : 0;
    *gs = (struct group_stat){
        .info =
            {
                .topic = {(const uint8_t *)t->name, t->name_len},
                .group = {(const uint8_t *)gr->name, gr->name_len},
                .cursor = gr->next,
                .ack_floor = gr->floor,
                .lag = total - acked_above,
                .in_flight = in_flight,
                .consumers = consumers,
                .redelivered = gr->redelivered,
                .dead_lettered = gr->dead_lettered,
                .oldest_unacked_ms = oldest,
                .ack_wait_ms = gr->ack_wait_ms,
                .max_deliveries = gr->max_deliveries,
            },
        .acks = gr->acks,
        .ack_rate_1s = rate_last_second(&gr->rate_acks, wall),
        .ack_rate_1m = rate_average(&gr->rate_acks, wall, MINUTE_SECONDS),
    };
}

int groups_group_stats(struct broker *b, const char *topic, size_t topic_len,
                       struct group_stat **out, size_t *n)
{
    struct groups *g = G(b);
    size_t ngroups = 0;
    *out = NULL;
    *n = 0;
    for (struct ltopic *t = namemap_first(&g->topics); t; t = namemap_next(&g->topics, t))
        if (name_is(t, topic, topic_len))
            for (struct group *gr = t->groups; gr; gr = gr->next_in_topic)
                ngroups++;
    struct group **all = malloc((ngroups ? ngroups : 1) * sizeof(*all));
    struct group_stat *gs = malloc((ngroups ? ngroups : 1) * sizeof(*gs));
    if (!all || !gs) {
        free(all);
        free(gs);
        return -1;
    }
    size_t na = 0;
    for (struct ltopic *t = namemap_first(&g->topics); t; t = namemap_next(&g->topics, t))
        if (name_is(t, topic, topic_len))
            for (struct group *gr = t->groups; gr; gr = gr->next_in_topic)
                all[na++] = gr;
    /* Listed in byte order of topic, then group name. */
    qsort(all, na, sizeof(*all), cmp_group);
    int64_t wall = clock_wall_ms();
    for (size_t i = 0; i < na; i++)
        group_stat_fill(b, all[i], wall, &gs[i]);
    free(all);
    *out = gs;
    *n = na;
    return 0;
}

int groups_topic_stats(struct broker *b, const char *topic, size_t topic_len,
                       struct topic_stat **out, size_t *n)
{
    struct groups *g = G(b);
    size_t count = 0;
    *out = NULL;
    *n = 0;
    for (struct ltopic *t = namemap_first(&g->topics); t; t = namemap_next(&g->topics, t))
        count += t->id && name_is(t, topic, topic_len);
    struct ltopic **all = malloc((count ? count : 1) * sizeof(*all));
    struct topic_stat *ts = malloc((count ? count : 1) * sizeof(*ts));
    if (!all || !ts) {
        free(all);
        free(ts);
        return -1;
    }
    size_t na = 0;
    for (struct ltopic *t = namemap_first(&g->topics); t; t = namemap_next(&g->topics, t))
        if (t->id && name_is(t, topic, topic_len))
            all[na++] = t;
    qsort(all, na, sizeof(*all), cmp_topic);
    int64_t wall = clock_wall_ms();
    for (size_t i = 0; i < na; i++) {
        struct ltopic *t = all[i];
        uint32_t ngroups = 0;
        for (struct group *gr = t->groups; gr; gr = gr->next_in_topic)
            ngroups++;
        uint64_t dead = 0;
        if (t->name[0] != '_' && t->name_len + 6 <= PROTO_MAX_TOPIC) {
            char dn[PROTO_MAX_TOPIC + 1];
            memcpy(dn, "_dead.", 6);
            memcpy(dn + 6, t->name, t->name_len);
            struct ltopic *d = topic_lookup(g, (const uint8_t *)dn, t->name_len + 6, 0);
            if (d)
                dead = d->view.count;
        }
        ts[i] = (struct topic_stat){
            .name = t->name,
            .name_len = t->name_len,
            .v = t->view,
            .stored = t->stored,
            .bytes_in = t->bytes_in,
            .rate_in_1s = rate_last_second(&t->rate_in, wall),
            .rate_in_1m = rate_average(&t->rate_in, wall, MINUTE_SECONDS),
            .rate_in_10s = rate_recent(&t->rate_in, wall, 10),
            .rate_out_1s = rate_last_second(&t->rate_out, wall),
            .rate_out_1m = rate_average(&t->rate_out, wall, MINUTE_SECONDS),
            .dead_letters = dead,
            .groups = ngroups,
        };
        /* The loop's head is the newest it knows (a commit's results may
         * be newer than the view of the last commit that touched it). */
        if (t->head > ts[i].v.head)
            ts[i].v.head = t->head;
    }
    free(all);
    *out = ts;
    *n = na;
    return 0;
}

uint32_t groups_conn_subs(const struct conn *c)
{
    uint32_t n = 0;
    for (const struct sub *s = c->subs; s; s = s->next_in_conn)
        n++;
    return n;
}
