/*
 * consumer.c - the consumer frames a READY connection sends: SUBSCRIBE,
 * ACK, NACK, TOUCH, CREDIT, UNSUBSCRIBE, SEEK, REDRIVE, FLOOR and GROUPS. Each
 * changes the groups' state (group_internal.h) and answers, at once or
 * through the commit that makes the change durable. Loop thread only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "broker.h"
#include "clock.h"
#include "commit.h"
#include "conn.h"
#include "group.h"
#include "group_internal.h"
#include "log.h"
#include "seqset.h"
#include "store.h"

/* The connection's subscription sub_id, or NULL after replying
 * UNKNOWN_SUBSCRIPTION to the frame. */
static struct sub *sub_or_reply(struct conn *c, const struct proto_frame *f, uint32_t sub_id)
{
    struct sub *s = sub_find(c, sub_id);
    if (!s)
        commit_reply_error(c, f->request_id, FERRY_EUNKNOWN_SUBSCRIPTION, "no such subscription");
    return s;
}

/* Queues an OP_GROUP_SAVE whose reply (already encoded) goes out after the
 * commit. */
static struct op *save_group(struct conn *c, struct group *gr, uint32_t request_id,
                             size_t wire_bytes)
{
    struct broker *b = c->broker;
    struct op *op = commit_enqueue(b, c, OP_GROUP_SAVE, wire_bytes);
    if (!op)
        return NULL;
    op->request_id = request_id;
    struct batch *bt = b->pending;
    struct op_group_save *sw = &op->u.save;
    sw->group_id = gr->id;
    sw->floor = gr->floor;
    sw->origin = gr->origin;
    sw->ack_wait_ms = gr->ack_wait_ms;
    sw->max_deliveries = gr->max_deliveries;
    if (batch_put(bt, gr->topic->name, gr->topic->name_len, &sw->topic) < 0 ||
        batch_put(bt, gr->name, gr->name_len, &sw->name) < 0 ||
        batch_put_u32s(bt, gr->backoff_ms, gr->backoff_count, &sw->backoff_ms) < 0) {
        op->kind = OP_REPLY;
        conn_fail(c, FERRY_EINTERNAL, "out of memory");
        return NULL;
    }
    return op;
}

/* Puts a loop-encoded reply into op's output. */
static void op_set_reply(struct op *op, struct batch *bt, const uint8_t *frame, size_t len)
{
    op->out_off = bt->out.len;
    op->out_len = buf_append(&bt->out, frame, len) == 0 ? len : 0;
    commit_owe_reply(op, len);
}

/* The first sequence of a topic at or after a position; for TIME the
 * store is asked. */
/* The first sequence a group can still be given: the oldest message kept,
 * or past the head when retention left none. */
static uint64_t first_kept(const struct ltopic *t)
{
    if (!t->view.count)
        return t->head + 1;
    return t->first > 1 ? t->first : 1;
}

/* Where a group starts or is moved to. A sequence before the oldest message
 * kept is clamped to it (those before are gone: a group there would count
 * them as lag and wait for nothing); the reply carries the position taken. */
static uint64_t start_seq(struct broker *b, struct ltopic *t, uint8_t start, uint64_t value)
{
    uint64_t lo = first_kept(t), at;
    switch (start) {
    case PROTO_START_LATEST:
        return t->head + 1;
    case PROTO_START_SEQ:
        at = value ? value : 1;
        break;
    case PROTO_START_TIME:
        at = t->id ? store_seq_at_time(b->store, t->id, (int64_t)value, t->head) : 1;
        break;
    default:
        at = 1;
        break;
    }
    return at < lo ? lo : at;
}

/* The longest a message of gr can take from one delivery to its last
 * redelivery: every attempt's lease plus the longest wait before the next
 * (a backoff step, or a nack delay, which ferryd caps at
 * MAX_NACK_DELAY_MS). An inbox that keeps its records this long can never
 * run a handler twice for a redelivery. UINT64_MAX without a delivery
 * limit. Touches extend leases: applications that touch add their own
 * margin (docs/INBOX.md). */
static uint64_t redelivery_horizon(const struct broker *b, const struct group *gr,
                                   uint32_t ack_wait_ms)
{
    if (!gr->max_deliveries)
        return UINT64_MAX;
    uint64_t wait = MAX_NACK_DELAY_MS;
    for (uint32_t k = 1; k <= gr->max_deliveries; k++) {
        uint64_t w = redelivery_backoff(b, gr, k);
        if (w > wait)
            wait = w;
    }
    uint64_t lease = ack_wait_ms > gr->ack_wait_ms ? ack_wait_ms : gr->ack_wait_ms;
    return (uint64_t)gr->max_deliveries * (lease + wait);
}

void groups_on_subscribe(struct conn *c, const struct proto_frame *f, size_t wire_bytes)
{
    struct groups *g = G(c->broker);
    const struct proto_subscribe *sp = &f->u.subscribe;
    int rc;
    if ((rc = proto_sub_topic_valid(sp->topic.ptr, sp->topic.len)) != 0) {
        commit_reply_error(c, f->request_id, FERRY_EINVALID_TOPIC, "invalid topic name");
        return;
    }
    if (proto_group_valid(sp->group.ptr, sp->group.len) != 0) {
        commit_reply_error(c, f->request_id, FERRY_EINVALID_GROUP,
                           "group names are 1-200 bytes of [A-Za-z0-9._-], starting with a "
                           "letter or digit");
        return;
    }
    if (sub_find(c, sp->sub_id)) {
        commit_reply_error(c, f->request_id, FERRY_EINVALID,
                           "sub_id already used by a subscription on this connection");
        return;
    }
    struct ltopic *t = topic_lookup(g, sp->topic.ptr, sp->topic.len, 0);
    if (!t && (f->flags & PROTO_SUBSCRIBE_TOPIC_MUST_EXIST)) {
        char msg[300];
        snprintf(msg, sizeof msg, "no such topic: %.*s", (int)sp->topic.len,
                 (const char *)sp->topic.ptr);
        commit_reply_error(c, f->request_id, FERRY_EUNKNOWN_TOPIC, msg);
        return;
    }
    if (!t)
        t = topic_lookup(g, sp->topic.ptr, sp->topic.len, 1);
    if (!t) {
        commit_reply_error(c, f->request_id, FERRY_EINTERNAL, "out of memory");
        return;
    }
    struct group *gr = group_find(t, sp->group.ptr, sp->group.len);
    if (refuse_if_deleting(c, f->request_id, t, gr))
        return;
    int created = 0;
    if (!gr) {
        gr = group_new(g, t, sp->group.ptr, sp->group.len);
        if (!gr) {
            commit_reply_error(c, f->request_id, FERRY_EINTERNAL, "out of memory");
            return;
        }
        gr->origin = gr->floor = gr->next = start_seq(c->broker, t, sp->start, sp->start_value);
        gr->ack_wait_ms = sp->ack_wait_ms ? sp->ack_wait_ms : GROUP_DEFAULT_ACK_WAIT_MS;
        gr->max_deliveries = delivery_limit(t, sp->max_deliveries);
        gr->backoff_count = sp->backoff_count;
        memcpy(gr->backoff_ms, sp->backoff_ms, sizeof(gr->backoff_ms));
        created = 1;
        log_info("group %s created on topic %s at sequence %llu", gr->name, t->name,
                 (unsigned long long)gr->floor);
    }
    struct sub *s = calloc(1, sizeof(*s));
    if (!s) {
        commit_reply_error(c, f->request_id, FERRY_EINTERNAL, "out of memory");
        return;
    }
    s->conn = c;
    s->group = gr;
    s->sub_id = sp->sub_id;
    s->window = sp->max_in_flight;
    s->ack_wait_ms = sp->ack_wait_ms ? sp->ack_wait_ms : gr->ack_wait_ms;
    s->next_in_conn = c->subs;
    c->subs = s;
    s->next_in_group = gr->subs;
    gr->subs = s;

    struct proto_subscribe_ok ok = {
        .sub_id = sp->sub_id,
        .cursor = gr->next,
        .head_seq = t->head,
        .ack_wait_ms = s->ack_wait_ms,
        .max_deliveries = gr->max_deliveries,
        .has_horizon = 1,
        .redelivery_horizon_ms = redelivery_horizon(c->broker, gr, s->ack_wait_ms),
    };
    uint8_t frame[64];
    struct proto_writer w;
    proto_writer_init(&w, frame, sizeof(frame));
    proto_encode_subscribe_ok(&w, f->request_id, &ok);
    if (created) {
        /* Nothing is delivered before the SUBSCRIBE_OK, which waits for
         * the commit that creates the group. */
        struct op *op = save_group(c, gr, f->request_id, wire_bytes);
        if (op) {
            op_set_reply(op, c->broker->pending, frame, w.len);
            op->u.save.sub_id = s->sub_id;
            s->awaiting_ok = 1;
        }
    } else {
        commit_reply(c, f->request_id, frame, w.len);
    }
    mark_dirty(g, gr);
}

/* Acks one sequence in memory. Returns the ACK_OK code for it. */
/* An ack taken: counted for the group and its topic (metrics.h). */
static void count_ack(struct group *gr)
{
    int64_t now = clock_wall_ms();
    gr->acks++;
    rate_add(&gr->rate_acks, now, 1);
    rate_add(&gr->topic->rate_out, now, 1);
}

static uint16_t ack_one(struct groups *g, struct group *gr, struct conn *c, uint64_t seq,
                        int *changed)
{
    struct entry *re = seq ? entry_get(gr, seq) : NULL;
    if (re && re->dead_seq) {
        /* A redriven message: done again (its ack was recorded when it was
         * dead-lettered, so nothing more is written). */
        if (re->holder && (re->state == E_INFLIGHT || re->state == E_FETCHING))
            re->holder->in_flight--;
        record_attempts(g, gr, c, re, 0);
        entry_remove(gr, re);
        mark_dirty(g, gr);
        count_ack(gr);
        return 0;
    }
    if (seq && seq < gr->reached && (seq >= gr->next || seq < gr->origin))
        return 0; /* given out before a seek moved the group: no effect */
    if (seq == 0 || seq >= gr->next || seq < gr->origin)
        return (uint16_t)-FERRY_ENOT_DELIVERED;
    if (acked_test(gr, seq))
        return 0; /* already acked: idempotent */
    struct entry *e = entry_get(gr, seq);
    if (!e)
        return 0;
    if (e->holder && (e->state == E_INFLIGHT || e->state == E_FETCHING))
        e->holder->in_flight--;
    record_attempts(g, gr, c, e, 0);
    entry_remove(gr, e);
    if (acked_set(gr, seq) < 0)
        return (uint16_t)-FERRY_EINTERNAL;
    *changed = 1;
    count_ack(gr);
    mark_dirty(g, gr);
    return 0;
}

void groups_on_ack(struct conn *c, const struct proto_frame *f, size_t wire_bytes)
{
    struct groups *g = G(c->broker);
    const struct proto_ack *a = &f->u.ack;
    struct sub *s = sub_or_reply(c, f, a->sub_id);
    if (!s)
        return;
    struct group *gr = s->group;
    size_t need = PROTO_HEADER_BYTES + 2 + (size_t)a->count * 10;
    uint8_t *frame = malloc(need);
    if (!frame) {
        commit_reply_error(c, f->request_id, FERRY_EINTERNAL, "out of memory");
        return;
    }
    struct proto_writer w;
    proto_writer_init(&w, frame, need);
    size_t start = proto_ack_ok_begin(&w, f->request_id);
    int changed = 0;
    for (uint16_t i = 0; i < a->count; i++) {
        uint64_t seq = proto_rd64(a->seqs.ptr + 8 * (size_t)i);
        proto_ack_ok_add(&w, seq, ack_one(g, gr, c, seq, &changed));
    }
    proto_ack_ok_end(&w, start, a->count);
    floor_advance(gr);
    if (!changed && !gr->acks_unsaved) {
        commit_reply(c, f->request_id, frame, w.len);
        free(frame);
        return;
    }
    /* Persist the floor and the acks above it. */
    struct broker *b = c->broker;
    struct op *op = commit_enqueue(b, c, OP_GROUP_ACK, wire_bytes);
    if (!op) {
        free(frame);
        conn_fail(c, FERRY_EINTERNAL, "out of memory");
        return;
    }
    op->request_id = f->request_id;
    struct batch *bt = b->pending;
    struct op_group_ack *aw = &op->u.ack;
    aw->group = gr;
    aw->group_id = gr->id;
    aw->floor = gr->floor;
    uint64_t few[64], *acked = few;
    size_t cap = gr->acks_unsaved ? (size_t)(gr->next - gr->floor) : a->count;
    if (cap > 64 && !(acked = malloc(cap * sizeof(*acked)))) {
        free(frame);
        op->kind = OP_REPLY;
        conn_fail(c, FERRY_EINTERNAL, "out of memory");
        return;
    }
    uint32_t n = 0;
    if (gr->acks_unsaved) {
        /* An earlier commit of acks failed (its client got an ERROR): this
         * one saves every ack above the floor, so that an ACK_OK always
         * means durable. */
        for (uint64_t seq = gr->floor; seq < gr->next; seq++)
            if (acked_test(gr, seq))
                acked[n++] = seq;
        gr->acks_unsaved = 0;
    } else {
        for (uint16_t i = 0; i < a->count; i++) {
            uint64_t seq = proto_rd64(a->seqs.ptr + 8 * (size_t)i);
            if (seq >= gr->floor && seq < gr->next && acked_test(gr, seq))
                acked[n++] = seq;
        }
    }
    int bad = batch_put_u64s(bt, acked, n, &aw->acked) < 0;
    if (acked != few)
        free(acked);
    if (bad) {
        free(frame);
        op->kind = OP_REPLY;
        conn_fail(c, FERRY_EINTERNAL, "out of memory");
        return;
    }
    op_set_reply(op, bt, frame, w.len);
    free(frame);
}

static void reply_one(struct conn *c, uint32_t request_id, uint64_t seq, uint16_t code, int any)
{
    uint8_t frame[PROTO_HEADER_BYTES + 2 + 10];
    struct proto_writer w;
    proto_writer_init(&w, frame, sizeof(frame));
    size_t start = proto_ack_ok_begin(&w, request_id);
    if (any)
        proto_ack_ok_add(&w, seq, code);
    proto_ack_ok_end(&w, start, any ? 1 : 0);
    commit_reply(c, request_id, frame, w.len);
}

/* The entry a nack or touch names, if this subscription holds it. */
static struct entry *held_entry(struct sub *s, uint64_t seq, uint16_t *code)
{
    struct group *gr = s->group;
    struct entry *e = seq ? entry_get(gr, seq) : NULL;
    if (!(e && e->dead_seq) && (seq == 0 || seq >= gr->next || seq < gr->origin)) {
        *code = (uint16_t)-FERRY_ENOT_DELIVERED;
        return NULL;
    }
    *code = 0;
    if (!e || e->holder != s || e->state != E_INFLIGHT)
        return NULL; /* acked, or no longer this consumer's: nothing to do */
    return e;
}

void groups_on_nack(struct conn *c, const struct proto_frame *f)
{
    struct groups *g = G(c->broker);
    const struct proto_nack *n = &f->u.nack;
    struct sub *s = sub_or_reply(c, f, n->sub_id);
    if (!s)
        return;
    uint16_t code;
    struct entry *e = held_entry(s, n->seq, &code);
    if (e) {
        e->nacked = 1;
        free(e->reason);
        e->reason = NULL;
        if (n->reason.len) {
            size_t rl = n->reason.len < 200 ? n->reason.len : 200;
            if ((e->reason = malloc(rl + 1))) {
                for (size_t i = 0; i < rl; i++) {
                    uint8_t ch = n->reason.ptr[i];
                    e->reason[i] = ch >= 0x20 && ch != 0x7f ? (char)ch : '?';
                }
                e->reason[rl] = 0;
            }
        }
        /* At its last attempt it is dead-lettered at once, whatever the delay. */
        if (!dead_letter_if_last(g, s->group, e, NULL)) {
            record_attempts(g, s->group, c, e, e->attempt);
            /* The delay is capped, so that the redelivery horizon stays finite. */
            if (n->delay_ms)
                entry_wait(g, s->group, e,
                           n->delay_ms < MAX_NACK_DELAY_MS ? n->delay_ms : MAX_NACK_DELAY_MS);
            else
                entry_make_ready(g, s->group, e);
        }
        mark_dirty(g, s->group); /* its slot is free */
    }
    reply_one(c, f->request_id, n->seq, code, 1);
}

void groups_on_touch(struct conn *c, const struct proto_frame *f)
{
    struct groups *g = G(c->broker);
    const struct proto_sub_op *t = &f->u.sub_op;
    struct sub *s = sub_or_reply(c, f, t->sub_id);
    if (!s)
        return;
    uint16_t code;
    struct entry *e = held_entry(s, t->value, &code);
    if (e) {
        e->due_ms = clock_mono_ms() + s->ack_wait_ms;
        timer_add(g, s->group, e->seq, e->due_ms);
    }
    reply_one(c, f->request_id, t->value, code, 1);
}

void groups_on_credit(struct conn *c, const struct proto_frame *f)
{
    struct groups *g = G(c->broker);
    const struct proto_sub_op *t = &f->u.sub_op;
    struct sub *s = sub_or_reply(c, f, t->sub_id);
    if (!s)
        return;
    s->window = (uint32_t)t->value;
    mark_dirty(g, s->group);
    reply_one(c, f->request_id, 0, 0, 0);
}

void groups_on_unsubscribe(struct conn *c, const struct proto_frame *f)
{
    struct groups *g = G(c->broker);
    const struct proto_sub_op *t = &f->u.sub_op;
    struct sub **pp = &c->subs;
    while (*pp && (*pp)->sub_id != t->sub_id)
        pp = &(*pp)->next_in_conn;
    if (!*pp) {
        commit_reply_error(c, f->request_id, FERRY_EUNKNOWN_SUBSCRIPTION, "no such subscription");
        return;
    }
    struct sub *s = *pp;
    *pp = s->next_in_conn;
    sub_end(g, s, "consumer unsubscribed");
    reply_one(c, f->request_id, 0, 0, 0);
}

void groups_on_seek(struct conn *c, const struct proto_frame *f, size_t wire_bytes)
{
    struct groups *g = G(c->broker);
    const struct proto_seek *sk = &f->u.seek;
    if (proto_group_valid(sk->group.ptr, sk->group.len) != 0) {
        commit_reply_error(c, f->request_id, FERRY_EINVALID_GROUP, "invalid group name");
        return;
    }
    struct ltopic *t = topic_lookup(g, sk->topic.ptr, sk->topic.len, 0);
    if (!t && proto_sub_topic_valid(sk->topic.ptr, sk->topic.len) != 0) {
        commit_reply_error(c, f->request_id, FERRY_EINVALID_TOPIC, "invalid topic name");
        return;
    }
    /* A SEEK creates no topic: a typo must not leave one behind. */
    if (!t) {
        char msg[300];
        snprintf(msg, sizeof msg, "no such topic: %.*s", (int)sk->topic.len,
                 (const char *)sk->topic.ptr);
        commit_reply_error(c, f->request_id, FERRY_EUNKNOWN_TOPIC, msg);
        return;
    }
    uint64_t head = t->head;
    /* Past head + 1 nothing can ever come: a group moved there would wait
     * for sequences the topic has not reached, and take none of the
     * messages published meanwhile. Refused with the range. */
    if (sk->start == PROTO_START_SEQ && sk->value > head + 1) {
        char why[320];
        snprintf(why, sizeof why, "sequence %llu is past the head of %s: seek to 1-%llu",
                 (unsigned long long)sk->value, t->name, (unsigned long long)(head + 1));
        commit_reply_error(c, f->request_id, FERRY_EINVALID, why);
        return;
    }
    struct group *gr = group_find(t, sk->group.ptr, sk->group.len);
    if (refuse_if_deleting(c, f->request_id, t, gr))
        return;
    if (!gr) {
        gr = group_new(g, t, sk->group.ptr, sk->group.len);
        if (gr) {
            gr->ack_wait_ms = GROUP_DEFAULT_ACK_WAIT_MS;
            gr->max_deliveries = delivery_limit(t, 0);
        }
    }
    if (!gr) {
        commit_reply_error(c, f->request_id, FERRY_EINTERNAL, "out of memory");
        return;
    }
    uint64_t target = start_seq(c->broker, t, sk->start, sk->value);
    /* Forget everything in flight: from the target on, all is delivered
     * again. Subscriptions keep their windows. */
    if (gr->map.slots) {
        for (size_t i = 0; i <= gr->map.mask; i++) {
            struct entry *e = &gr->map.slots[i];
            if (e->seq && e->holder && (e->state == E_INFLIGHT || e->state == E_FETCHING))
                e->holder->in_flight--;
        }
        entry_map_clear(&gr->map);
    }
    acked_bits_reset(&gr->acked);
    gr->ready.len = 0;
    gr->fetching_first = 0;
    free(gr->restored);
    gr->restored = NULL;
    gr->nrestored = gr->restored_pos = 0;
    if (gr->next > gr->reached)
        gr->reached = gr->next;
    gr->origin = gr->floor = gr->next = target;
    log_info("group %s on topic %s moved to sequence %llu", gr->name, t->name,
             (unsigned long long)target);
    uint8_t frame[PROTO_HEADER_BYTES + 2 + 10];
    struct proto_writer w;
    proto_writer_init(&w, frame, sizeof(frame));
    size_t start = proto_ack_ok_begin(&w, f->request_id);
    proto_ack_ok_add(&w, target, 0);
    proto_ack_ok_end(&w, start, 1);
    struct op *op = save_group(c, gr, f->request_id, wire_bytes);
    if (op)
        op_set_reply(op, c->broker->pending, frame, w.len);
    mark_dirty(g, gr);
}

/*
 * FLOOR: the group's ack floor as the store has it durably, and the
 * sequences below it that a redrive can still bring back (dead-lettered by
 * the group, their dead letter still stored). A consumer's inbox may
 * forget its claims of every other sequence below the floor: the broker
 * delivers none of them to the group again, unless a SEEK moves the group
 * back. Read on the loop from the committed state (store_read_floor), so
 * an ack not yet committed is not in it.
 */
void groups_on_floor(struct conn *c, const struct proto_frame *f)
{
    struct groups *g = G(c->broker);
    const struct proto_floor *r = &f->u.floor;
    if (proto_topic_valid(r->topic.ptr, r->topic.len) != 0) {
        commit_reply_error(c, f->request_id, FERRY_EINVALID_TOPIC, "invalid topic name");
        return;
    }
    if (proto_group_valid(r->group.ptr, r->group.len) != 0) {
        commit_reply_error(c, f->request_id, FERRY_EINVALID_GROUP, "invalid group name");
        return;
    }
    struct ltopic *t = topic_lookup(g, r->topic.ptr, r->topic.len, 0);
    if (!t) {
        commit_reply_error(c, f->request_id, FERRY_EUNKNOWN_TOPIC, "no such topic");
        return;
    }
    struct group *gr = group_find(t, r->group.ptr, r->group.len);
    if (!gr) {
        commit_reply_error(c, f->request_id, FERRY_EUNKNOWN_GROUP, "no such group");
        return;
    }
    if (refuse_if_deleting(c, f->request_id, t, gr))
        return;
    struct ltopic *dt = dead_topic_of(g, gr);
    uint64_t floor = 1;
    uint64_t *keep = malloc(PROTO_MAX_FLOOR_KEEP * sizeof(*keep));
    uint16_t n = 0;
    int rc = keep ? store_read_floor(c->broker->store, gr->id, dt ? dt->id : 0, &floor, keep,
                                     PROTO_MAX_FLOOR_KEEP, &n)
                  : FERRY_EINTERNAL;
    if (rc != 0) {
        free(keep);
        commit_reply_error(c, f->request_id, rc, "cannot read the group's floor");
        return;
    }
    if (floor == 0)
        floor = 1;
    size_t cap = PROTO_HEADER_BYTES + 10 + 8 * (size_t)n;
    uint8_t *frame = malloc(cap);
    struct proto_writer w;
    if (frame) {
        proto_writer_init(&w, frame, cap);
        if (proto_encode_floor_ok(&w, f->request_id, floor, keep, n) == 0)
            commit_reply(c, f->request_id, frame, w.len);
        else
            commit_reply_error(c, f->request_id, FERRY_EINTERNAL, "cannot encode FLOOR_OK");
    } else {
        commit_reply_error(c, f->request_id, FERRY_EINTERNAL, "out of memory");
    }
    free(frame);
    free(keep);
}

/*
 * REDRIVE: the dead letter dead_seq of _dead.<topic> goes back to the group
 * that dead-lettered it (or the group named, which must be that one), and
 * to no other: the same message, under its original sequence and id, with
 * attempt 1 again and a `ferry-redriven` header. The reply (ACK_OK, one
 * entry: the original sequence) says the redrive is queued; a message the
 * group has not done yet (in flight or waiting), or one already being
 * redriven, is left as it is (code 0). The redrive is recorded (with its
 * attempts, group_attempts) until it is acked, and survives a restart; a
 * SEEK of the group forgets it.
 */
void groups_on_redrive(struct conn *c, const struct proto_frame *f)
{
    struct groups *g = G(c->broker);
    const struct proto_redrive *r = &f->u.redrive;
    if (proto_topic_valid(r->topic.ptr, r->topic.len) != 0) {
        commit_reply_error(c, f->request_id, FERRY_EINVALID_TOPIC,
                           "name the topic the dead letters came from");
        return;
    }
    if (r->group.len && proto_group_valid(r->group.ptr, r->group.len) != 0) {
        commit_reply_error(c, f->request_id, FERRY_EINVALID_GROUP, "invalid group name");
        return;
    }
    struct ltopic *t = topic_lookup(g, r->topic.ptr, r->topic.len, 0);
    struct group tmp = {.topic = t};
    struct ltopic *dt = t ? dead_topic_of(g, &tmp) : NULL;
    if (refuse_if_deleting(c, f->request_id, t, NULL) ||
        refuse_if_deleting(c, f->request_id, dt, NULL))
        return;
    if (!t || !dt || !dt->id) {
        commit_reply_error(c, f->request_id, FERRY_EUNKNOWN_TOPIC, "the topic has no dead letters");
        return;
    }
    uint64_t seq = 0;
    char gname[PROTO_MAX_GROUP];
    size_t glen = 0;
    int rc =
        store_read_dead(c->broker->store, dt->id, r->dead_seq, &seq, gname, sizeof(gname), &glen);
    if (rc != 0) {
        commit_reply_error(c, f->request_id, rc,
                           rc == FERRY_EINVALID ? "no such dead letter" : "cannot read it");
        return;
    }
    if (r->group.len && (r->group.len != glen || memcmp(r->group.ptr, gname, glen) != 0)) {
        char msg[300];
        snprintf(msg, sizeof(msg), "dead letter %llu was dead-lettered by group %.*s",
                 (unsigned long long)r->dead_seq, (int)glen, gname);
        commit_reply_error(c, f->request_id, FERRY_EINVALID, msg);
        return;
    }
    struct group *gr = group_find(t, (const uint8_t *)gname, glen);
    if (!gr) {
        commit_reply_error(c, f->request_id, FERRY_EUNKNOWN_GROUP, "its group no longer exists");
        return;
    }
    if (refuse_if_deleting(c, f->request_id, t, gr))
        return;
    if (!entry_get(gr, seq) && acked_test(gr, seq) &&
        seq < (gr->reached > gr->next ? gr->reached : gr->next)) {
        struct entry *e = entry_add(gr, seq);
        if (!e || ready_push(gr, seq) < 0) {
            if (e)
                entry_remove(gr, e);
            commit_reply_error(c, f->request_id, FERRY_EINTERNAL, "out of memory");
            return;
        }
        e->dead_seq = r->dead_seq;
        e->state = E_READY;
        /* Durable before the reply: the redrive survives a restart. */
        struct op *op = record_entry(g, gr, c, e, 0, 1);
        if (op) {
            uint8_t frame[PROTO_HEADER_BYTES + 2 + 10];
            struct proto_writer w;
            proto_writer_init(&w, frame, sizeof(frame));
            size_t start = proto_ack_ok_begin(&w, f->request_id);
            proto_ack_ok_add(&w, seq, 0);
            proto_ack_ok_end(&w, start, 1);
            op->request_id = f->request_id;
            op_set_reply(op, c->broker->pending, frame, w.len);
        }
        log_info("group %s: %s/%llu redriven from %s/%llu", gr->name, t->name,
                 (unsigned long long)seq, dt->name, (unsigned long long)r->dead_seq);
        mark_dirty(g, gr);
        if (op)
            return;
    }
    reply_one(c, f->request_id, seq, 0, 1);
}

/* PEEK: encodes stored messages into one PEEK_OK, bounded by its bytes. */
struct peek_out {
    struct buf out;
    struct proto_writer w;
    size_t bound; /* the reply's frame bytes at most (but one message always) */
    uint32_t count;
    uint64_t next;
    int failed;
};

static int peek_add(void *arg, const struct proto_deliver *d)
{
    struct peek_out *p = arg;
    size_t n = proto_peek_entry_bytes(d);
    if (p->count && p->out.len + n > p->bound)
        return 1;
    if (buf_reserve(&p->out, n) < 0) {
        p->failed = 1;
        return 1;
    }
    proto_writer_init(&p->w, p->out.data, p->out.cap);
    p->w.len = p->out.len;
    proto_peek_ok_add(&p->w, d);
    if (p->w.overflow) {
        p->failed = 1;
        return 1;
    }
    p->out.len = p->w.len;
    p->count++;
    p->next = d->seq + 1;
    return 0;
}

/*
 * PEEK: a topic's stored messages, read on the loop through the store's
 * read-only connection. No group, no lease, no attempt: nothing changes
 * and nothing is written. Bounded by max_messages (<= 1000) and the frame
 * size, so the work per request is too.
 */
void groups_on_peek(struct conn *c, const struct proto_frame *f)
{
    struct groups *g = G(c->broker);
    const struct proto_peek *q = &f->u.peek;
    struct ltopic *t = topic_lookup(g, q->topic.ptr, q->topic.len, 0);
    if (!t && proto_sub_topic_valid(q->topic.ptr, q->topic.len) != 0) {
        commit_reply_error(c, f->request_id, FERRY_EINVALID_TOPIC, "invalid topic name");
        return;
    }
    if (!t) {
        char msg[300];
        snprintf(msg, sizeof msg, "no such topic: %.*s", (int)q->topic.len,
                 (const char *)q->topic.ptr);
        commit_reply_error(c, f->request_id, FERRY_EUNKNOWN_TOPIC, msg);
        return;
    }
    if (refuse_if_deleting(c, f->request_id, t, NULL))
        return;
    uint64_t from = q->from_seq ? q->from_seq : 1;
    if (q->from_time_ms && t->id) {
        uint64_t at = store_seq_at_time(c->broker->store, t->id, (int64_t)q->from_time_ms, t->head);
        if (at > from)
            from = at;
    }
    size_t max_frame = c->broker->cfg.max_frame_bytes;
    struct peek_out p = {
        .bound = q->max_bytes && q->max_bytes < max_frame ? q->max_bytes : max_frame,
        .next = from > t->head + 1 ? from : t->head + 1,
    };
    if (buf_reserve(&p.out, 4096) < 0) {
        commit_reply_error(c, f->request_id, FERRY_EINTERNAL, "out of memory");
        return;
    }
    proto_writer_init(&p.w, p.out.data, p.out.cap);
    size_t start = proto_peek_ok_begin(&p.w, f->request_id, 0, t->head);
    p.out.len = p.w.len;
    int rc = t->id
                 ? store_peek(c->broker->store, t->id, from, t->head, q->max_messages, peek_add, &p)
                 : 0;
    if (rc != 0 || p.failed) {
        buf_free(&p.out);
        commit_reply_error(c, f->request_id, rc ? rc : FERRY_EINTERNAL,
                           rc ? "cannot read the topic" : "cannot encode PEEK_OK");
        return;
    }
    proto_writer_init(&p.w, p.out.data, p.out.cap);
    p.w.len = p.out.len;
    if (proto_peek_ok_end(&p.w, start, p.count, p.next) == 0)
        commit_reply(c, f->request_id, p.out.data, p.w.len);
    else
        commit_reply_error(c, f->request_id, FERRY_EINTERNAL, "cannot encode PEEK_OK");
    buf_free(&p.out);
}

void groups_on_groups(struct conn *c, const struct proto_frame *f)
{
    struct groups *g = G(c->broker);
    const struct proto_groups *q = &f->u.groups;
    if (q->topic.len && !topic_lookup(g, q->topic.ptr, q->topic.len, 0)) {
        commit_reply_error(c, f->request_id, FERRY_EUNKNOWN_TOPIC, "no such topic");
        return;
    }
    struct buf out = {0};
    if (buf_reserve(&out, 4096) < 0) {
        commit_reply_error(c, f->request_id, FERRY_EINTERNAL, "out of memory");
        return;
    }
    struct group_stat *all;
    size_t na;
    if (groups_group_stats(c->broker, q->topic.len ? (const char *)q->topic.ptr : NULL,
                           q->topic.len, &all, &na) < 0) {
        buf_free(&out);
        commit_reply_error(c, f->request_id, FERRY_EINTERNAL, "out of memory");
        return;
    }
    uint32_t count = 0;
    struct proto_writer w;
    proto_writer_init(&w, out.data, out.cap);
    size_t start = proto_groups_ok_begin(&w, f->request_id);
    out.len = w.len;
    for (size_t ai = 0; ai < na; ai++) {
        const struct proto_group_info *gi = &all[ai].info;
        if (buf_reserve(&out, 2 + 4 + gi->topic.len + gi->group.len + 128) < 0)
            continue;
        proto_writer_init(&w, out.data, out.cap);
        w.len = out.len;
        proto_groups_ok_add(&w, gi);
        out.len = w.len;
        count++;
    }
    free(all);
    proto_writer_init(&w, out.data, out.cap);
    w.len = out.len;
    if (proto_groups_ok_end(&w, start, count) == 0)
        commit_reply(c, f->request_id, out.data, w.len);
    else
        commit_reply_error(c, f->request_id, FERRY_EINTERNAL, "cannot list groups");
    buf_free(&out);
}
