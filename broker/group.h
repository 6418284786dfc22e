/*
 * group.h - consumer groups (group.c, consumer.c): subscriptions, push delivery with credit,
 * leases, acks, redelivery, seek.
 *
 * All of this state lives on the loop thread. What must survive a restart
 * is persisted through the group commit (store.c): each group's row (its
 * ack floor and settings), the sequences acked above the floor, and the
 * attempts used up by messages whose attempts failed (group_attempts). What
 * is in flight is not persisted: after a restart every message from the
 * floor up that is not recorded as acked is delivered again, which is
 * exactly at-least-once, its attempt counting on from the recorded ones.
 */
#ifndef FERRY_BROKER_GROUP_H
#define FERRY_BROKER_GROUP_H

#include <stddef.h>
#include <stdint.h>

#include "op.h"
#include "proto.h"

struct broker;
struct conn;
struct batch;
struct op;
struct store;

#define GROUP_DEFAULT_ACK_WAIT_MS 30000u
#define GROUP_DEFAULT_MAX_DELIVERIES 5u

/* Sets up the (empty) group registry and loads groups from the store. */
int groups_init(struct broker *b);
/* Closes the timer handle (shutdown), then groups_free after the loop. */
void groups_close(struct broker *b);
void groups_free(struct broker *b);

/* Frame handlers (consumer.c), called by dispatch.c for a READY connection. */
void groups_on_subscribe(struct conn *c, const struct proto_frame *f, size_t wire_bytes);
void groups_on_ack(struct conn *c, const struct proto_frame *f, size_t wire_bytes);
void groups_on_nack(struct conn *c, const struct proto_frame *f);
void groups_on_touch(struct conn *c, const struct proto_frame *f);
void groups_on_credit(struct conn *c, const struct proto_frame *f);
void groups_on_unsubscribe(struct conn *c, const struct proto_frame *f);
void groups_on_seek(struct conn *c, const struct proto_frame *f, size_t wire_bytes);
void groups_on_groups(struct conn *c, const struct proto_frame *f);
void groups_on_redrive(struct conn *c, const struct proto_frame *f);
void groups_on_floor(struct conn *c, const struct proto_frame *f);
void groups_on_peek(struct conn *c, const struct proto_frame *f);
void groups_on_delete(struct conn *c, const struct proto_frame *f, size_t wire_bytes);
/* The most bytes a TOPICS_OK answered by the next commits can take: what
 * a TOPICS request owes its connection (conn.c). */
size_t groups_topics_ok_bound(struct broker *b);

/* The connection is closing: its subscriptions end and their in-flight
 * messages go back to their groups at once. */
void groups_conn_closed(struct conn *c);
/* The connection's unsent replies drained: its subscriptions may receive
 * again (DELIVERs count against the connection's outgoing limit). */
void groups_conn_writable(struct conn *c);

/* What the loop knows of one topic and one group (group_stats.c): the
 * numbers of the GROUPS frame, the HTTP API and /metrics. Names point into
 * the loop's memory: valid until the loop runs on. */
struct topic_stat {
    const char *name;
    size_t name_len;
    struct topic_view v;              /* after the last commit that touched it */
    uint64_t stored, bytes_in;        /* appended since start */
    uint64_t rate_in_1s, rate_out_1s; /* stored, acked (all groups): last second */
    uint64_t rate_in_10s;             /* as TOPICS' publish_rate */
    double rate_in_1m, rate_out_1m;   /* per second over the last minute */
    uint64_t dead_letters;            /* messages kept in _dead.<name> */
    uint32_t groups;
};
struct group_stat {
    struct proto_group_info info; /* as a GROUPS_OK entry carries it */
    uint64_t acks;                /* taken since start */
    uint64_t ack_rate_1s;
    double ack_rate_1m;
};
/* Snapshots in byte order of (topic, group) names, of every topic the
 * store holds (or only topic, when not NULL). Return 0 and a malloc'd
 * array (free it), or -1 out of memory. */
int groups_topic_stats(struct broker *b, const char *topic, size_t topic_len,
                       struct topic_stat **out, size_t *n);
int groups_group_stats(struct broker *b, const char *topic, size_t topic_len,
                       struct group_stat **out, size_t *n);

/* The subscriptions a connection holds. */
uint32_t groups_conn_subs(const struct conn *c);

/* After a commit (loop thread): learn new topic heads, push fresh messages
 * to caught-up groups straight from the batch, hand fetched messages to
 * their subscriptions. Called before the batch's replies are sent. */
/* A finished batch's DELETEs (group_delete.c): the deleted topics and groups
 * leave the registry. Called before groups_after_commit (a publish after a
 * deletion made a new topic of the name, which its topic update names). */
void groups_deletes_done(struct broker *b, struct batch *done);
void groups_after_commit(struct broker *b, struct batch *done);
/* After the replies of a commit were queued (SUBSCRIBE_OKs included):
 * subscriptions of groups this commit created may now receive. */
void groups_after_replies(struct broker *b, struct batch *done);
/* After the replies of a commit went out: deliver what became possible. */
void groups_dispatch_dirty(struct broker *b);

#endif
