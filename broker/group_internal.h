/*
 * group_internal.h - what group.c (delivery, leases, redelivery, the
 * registry of topics and groups, loading) shares with consumer.c (the
 * consumer frames). Not for other files: they use group.h.
 *
 * Ownership: struct groups owns its topics (struct ltopic, in a hash map
 * by name), each topic its groups, each group its entries and sequence
 * containers (seqset.h); a connection owns its subscriptions (struct sub,
 * in two lists: its connection's and its group's), freed by sub_end.
 * Threads: the loop thread only.
 */
#ifndef FERRY_BROKER_GROUP_INTERNAL_H
#define FERRY_BROKER_GROUP_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "metrics.h"
#include "namemap.h"
#include "op.h"
#include "proto.h"
#include "seqset.h"

struct broker;
struct batch;
struct conn;
struct op;

/* The longest delay a NACK may ask for (longer ones are cut to it). */
#define MAX_NACK_DELAY_MS (24ull * 3600 * 1000)

/* Most sequences one OP_FETCH reads. */
#define FETCH_MAX 256

struct sub;

struct sub {
    struct conn *conn;
    struct group *group;
    uint32_t sub_id;
    uint32_t window;
    uint32_t in_flight; /* entries FETCHING or INFLIGHT held by this sub */
    uint32_t ack_wait_ms;
    int awaiting_ok; /* its SUBSCRIBE_OK waits for the commit creating the group */
    struct sub *next_in_group;
    struct sub *next_in_conn;
};

struct ltopic {
    struct name_link link; /* first: in the groups' topic map (namemap.h) */
    char *name;
    size_t name_len;
    int64_t id; /* 0 until the store has created the topic */
    uint64_t head;
    uint64_t first; /* the lowest sequence retention kept (0: unknown) */
    struct group *groups;
    /* For looking (group_stats.c): the store's view after the last commit
     * that touched the topic, and what came and went since start. */
    struct topic_view view;
    uint64_t stored, bytes_in; /* messages and bytes appended since start */
    struct rate_ring rate_in;  /* messages stored, per second */
    struct rate_ring rate_out; /* acks of all its groups, per second */
    int deleting;              /* a DELETE of it is committing (group_delete.c) */
    struct ltopic *next_buried;
};

struct group {
    struct ltopic *topic;
    char *name;
    size_t name_len;
    int64_t id;
    uint64_t floor, next;
    uint64_t origin;         /* where the group started (or was last moved to) */
    uint64_t reached;        /* the highest `next` before a seek: given out below */
    struct acked_bits acked; /* for [floor, floor + its cap) */
    struct entry_map map;
    struct seq_ring ready; /* sequences whose entry became READY, oldest first */
    struct sub *subs;
    struct sub *turn; /* the subscription served first next time */
    uint32_t ack_wait_ms;
    uint16_t max_deliveries;
    uint8_t backoff_count;      /* 0: the broker's --redelivery-backoff */
    uint64_t acks;              /* acks taken since start (a redriven message's too) */
    struct rate_ring rate_acks; /* per second */
    uint32_t backoff_ms[PROTO_MAX_BACKOFF];
    int fetching_first; /* an OP_FETCH for first deliveries is pending */
    int acks_unsaved;   /* a commit holding this group's acks failed: the next
                           ACK rewrites the whole ack state */
    int dirty;
    struct group *next_in_topic;
    struct group *next_dirty;
    uint64_t redelivered, dead_lettered;
    uint64_t read_error_ms; /* when a failed fetch was last logged */
    int deleting;           /* a DELETE of it is committing: no deliveries, no timers */
    int deleted;            /* deleted: out of its topic, freed after the batch */
    /* Attempts recorded before the last restart, by sequence (ascending):
     * a first delivery after the restart starts from them. */
    struct restored {
        uint64_t seq;
        uint32_t attempts;
    } * restored;
    size_t nrestored, restored_pos;
};

/* A fetch that could not read its messages (a disk read error) is tried
 * again after this long, not at once: a bad sector fails every try. */
#define FETCH_RETRY_MS 1000

struct groups {
    struct broker *broker;
    struct namemap topics;   /* every topic the loop knows, by name */
    size_t topic_name_bytes; /* of every topic, summed (a TOPICS_OK's size) */
    struct due_heap heap;    /* leases and delays, items owned by a group */
    uv_timer_t timer;
    uint64_t timer_due; /* 0: not armed */
    struct group *dirty;
    int64_t next_group_id;
    int closing;
    /* Deleted groups and topics, out of the registry, freed once the batch
     * that deleted them is done with them (group_delete.c). */
    struct group *buried;
    struct ltopic *buried_topics;
    /* While loading (groups_init): the loaded groups sorted by id, and the
     * last one found (the store gives ack and attempt rows in (group, seq)
     * order, so most look-ups hit it). Freed once loaded. */
    struct group **loading;
    size_t nloading, loading_cap;
    int loading_sorted;
    struct group *loading_last;
};

/* The group registry, sequences and delivery (group.c). */
int dead_letter_fits(const struct ltopic *t);
int dead_letter_if_last(struct groups *g, struct group *gr, struct entry *e, const char *why);
struct ltopic *dead_topic_of(struct groups *g, const struct group *gr);
uint16_t delivery_limit(const struct ltopic *t, uint16_t requested);
void entry_make_ready(struct groups *g, struct group *gr, struct entry *e);
void entry_wait(struct groups *g, struct group *gr, struct entry *e, uint64_t ms);
struct group *group_find(struct ltopic *t, const uint8_t *name, size_t len);
struct group *group_new(struct groups *g, struct ltopic *t, const uint8_t *name, size_t len);
void mark_dirty(struct groups *g, struct group *gr);
void record_attempts(struct groups *g, struct group *gr, struct conn *c, struct entry *e,
                     uint32_t attempts);
struct op *record_entry(struct groups *g, struct group *gr, struct conn *c, struct entry *e,
                        uint32_t attempts, int keep);
uint64_t redelivery_backoff(const struct broker *b, const struct group *gr, uint32_t attempts);
void sub_end(struct groups *g, struct sub *s, const char *why);
struct sub *sub_find(struct conn *c, uint32_t sub_id);
void timer_add(struct groups *g, struct group *gr, uint64_t seq, uint64_t due);
struct ltopic *topic_lookup(struct groups *g, const uint8_t *name, size_t len, int create);
void group_free(struct group *gr);

/* Deleting topics and groups (group_delete.c). */
int refuse_if_deleting(struct conn *c, uint32_t request_id, const struct ltopic *t,
                       const struct group *gr);

static inline struct groups *G(struct broker *b)
{
    return b->groups;
}

/* ---- a group's sequences (seqset.h) ------------------------------------ */

static inline struct entry *entry_get(struct group *gr, uint64_t seq)
{
    return entry_map_get(&gr->map, seq);
}

static inline struct entry *entry_add(struct group *gr, uint64_t seq)
{
    return entry_map_add(&gr->map, seq);
}

static inline void entry_remove(struct group *gr, struct entry *e)
{
    entry_map_remove(&gr->map, e);
}

static inline int acked_test(const struct group *gr, uint64_t seq)
{
    return acked_bits_test(&gr->acked, gr->floor, seq);
}

static inline int acked_reserve(struct group *gr, uint64_t seq)
{
    return acked_bits_reserve(&gr->acked, gr->floor, seq);
}

static inline int acked_set(struct group *gr, uint64_t seq)
{
    return acked_bits_set(&gr->acked, gr->floor, seq);
}

/* Moves the floor over acked sequences, clearing their bits. */
static inline void floor_advance(struct group *gr)
{
    while (gr->floor < gr->next && acked_test(gr, gr->floor)) {
        acked_bits_clear(&gr->acked, gr->floor);
        gr->floor++;
    }
}

static inline int ready_push(struct group *gr, uint64_t seq)
{
    return seq_ring_push(&gr->ready, seq);
}

static inline int ready_pop(struct group *gr, uint64_t *seq)
{
    return seq_ring_pop(&gr->ready, seq);
}

#endif
