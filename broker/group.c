/*
 * group.c - consumer groups on the loop thread.
 *
 * A group is a durable cursor on a topic. For the sequences it has reached
 * it tracks, in memory:
 *
 *   floor   every sequence below is acked (persisted)
 *   next    the next sequence to deliver for the first time
 *   acked   a bitmap of the sequences in [floor, next) acked out of order
 *           (persisted as rows of group_acks)
 *   entries one per sequence in [floor, next) that is not acked:
 *             FETCHING  given to a subscription, its bytes being read
 *             INFLIGHT  delivered, leased until due_ms
 *             READY     waiting for a subscription with room (a lease
 *                       expired, a nack, a disconnect); in the ready queue
 *             WAITING   nacked with a delay, ready at due_ms
 *
 * Invariant: every sequence in [floor, next) is either acked or has an
 * entry. The floor moves up over acked sequences as soon as the lowest
 * unacked one is acked.
 *
 * Delivery is pushed: a commit that stores messages hands them to the
 * groups that have caught up with the topic straight from the batch's
 * memory (no read), and a group that is behind, or redeliveries, read their
 * messages through an OP_FETCH in the next commit. Nothing polls: leases
 * and nack delays sit in one min-heap of due times behind a single
 * uv_timer armed for the earliest.
 *
 * Flow control: a subscription has a window (max in flight); a message is
 * given to it only while its in-flight count is below the window, and each
 * ack, nack or expiry frees a slot. Subscriptions of a group take turns.
 */
#include "group.h"

#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "broker.h"
#include "clock.h"
#include "commit.h"
#include "conn.h"
#include "group_internal.h"
#include "log.h"
#include "seqset.h"
#include "store.h"

/* ---- small helpers ---------------------------------------------------- */

static char *dup_bytes(const void *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = 0;
    }
    return s;
}

/* ---- topics ----------------------------------------------------------- */

struct ltopic *topic_lookup(struct groups *g, const uint8_t *name, size_t len, int create)
{
    struct ltopic *t = namemap_find(&g->topics, name, len);
    if (t || !create)
        return t;
    t = calloc(1, sizeof(*t));
    if (!t || !(t->name = dup_bytes(name, len))) {
        free(t);
        return NULL;
    }
    t->name_len = len;
    if (namemap_insert(&g->topics, &t->link, t->name, len) < 0) {
        free(t->name);
        free(t);
        return NULL;
    }
    g->topic_name_bytes += len;
    return t;
}

/* A TOPICS_OK entry: entry_length, the name, eleven fields (§4.7). */
#define TOPICS_OK_ENTRY_BYTES(name_len) (2 + 2 + (size_t)(name_len) + 5 * 8 + 3 * 8 + 1 + 8)

size_t groups_topics_ok_bound(struct broker *b)
{
    struct groups *g = G(b);
    /* The loop knows every topic the last commit left; the batches pending
     * and committing may create one per message and per op at most. */
    size_t fresh = b->pending->messages + b->pending->nops;
    if (b->committing)
        fresh += b->committing->messages + b->committing->nops;
    size_t n = g->topics.count + fresh;
    size_t bytes = PROTO_HEADER_BYTES + 4;
    if (n > PROTO_MAX_TOPICS)
        return bytes + PROTO_MAX_TOPICS * TOPICS_OK_ENTRY_BYTES(PROTO_MAX_TOPIC);
    return bytes + g->topics.count * TOPICS_OK_ENTRY_BYTES(0) + g->topic_name_bytes +
           fresh * TOPICS_OK_ENTRY_BYTES(PROTO_MAX_TOPIC);
}

struct group *group_find(struct ltopic *t, const uint8_t *name, size_t len)
{
    for (struct group *gr = t->groups; gr; gr = gr->next_in_topic)
        if (gr->name_len == len && memcmp(gr->name, name, len) == 0)
            return gr;
    return NULL;
}

/* ---- timers ------------------------------------------------------------ */

static void on_timer(uv_timer_t *t);

static void timer_rearm(struct groups *g)
{
    if (g->closing)
        return;
    if (!g->heap.len) {
        uv_timer_stop(&g->timer);
        g->timer_due = 0;
        return;
    }
    uint64_t due = g->heap.items[0].due_ms;
    if (g->timer_due == due)
        return;
    uint64_t now = clock_mono_ms();
    uv_timer_start(&g->timer, on_timer, due > now ? due - now : 0, 0);
    g->timer_due = due;
}

/* Earlier first; equal times in sequence order, so that a burst of
 * expired leases is redelivered in order (seqset.h). */
void timer_add(struct groups *g, struct group *gr, uint64_t seq, uint64_t due)
{
    int top = due_heap_push(&g->heap, due, gr, seq);
    if (top < 0)
        log_error("out of memory for delivery timers");
    else if (top)
        timer_rearm(g);
}

void mark_dirty(struct groups *g, struct group *gr)
{
    if (!gr->dirty) {
        gr->dirty = 1;
        gr->next_dirty = g->dirty;
        g->dirty = gr;
    }
}

/*
 * Attempt counts are durable where it costs nothing on the hot path: an
 * entry's count is written (OP_ATTEMPT, in the next group commit, no fsync
 * of its own) when one of its attempts fails — a nack, a lease expiry, its
 * consumer gone — and deleted when the message is done, only for entries
 * that have such a row (`saved`). A delivery that is acked at its first
 * attempt, the common case, writes nothing more than before. A failure's
 * row is committed before the message's next delivery goes out (that one
 * needs a fetch, which rides the same commit), so a restart, clean or
 * kill -9, loses only the attempt in flight at that moment: it counts as
 * not made. A redrive is recorded the same way (with the dead letter it is
 * read from) until it is acked. c: any connection of the group's, which
 * the op references.
 */
struct op *record_entry(struct groups *g, struct group *gr, struct conn *c, struct entry *e,
                        uint32_t attempts, int keep)
{
    if (!c || g->broker->stopping || (!keep && !e->saved))
        return NULL;
    struct broker *b = g->broker;
    struct op *op = commit_enqueue(b, c, OP_ATTEMPT, 0);
    if (!op) {
        log_error("out of memory recording the attempts of %s/%llu", gr->topic->name,
                  (unsigned long long)e->seq);
        return NULL;
    }
    op->u.attempt = (struct op_attempt){
        .group_id = gr->id,
        .seq = e->seq,
        .attempts = attempts,
        .dead_seq = e->dead_seq,
        .keep = keep != 0,
    };
    e->saved = keep != 0;
    return op;
}

/* attempts 0: the message is done, its row (if any) goes. */
void record_attempts(struct groups *g, struct group *gr, struct conn *c, struct entry *e,
                     uint32_t attempts)
{
    record_entry(g, gr, c, e, attempts, attempts != 0);
}

/* An entry goes back to the group for redelivery. */
void entry_make_ready(struct groups *g, struct group *gr, struct entry *e)
{
    if (e->holder && (e->state == E_INFLIGHT || e->state == E_FETCHING))
        e->holder->in_flight--;
    e->holder = NULL;
    e->state = E_READY;
    e->due_ms = 0;
    if (ready_push(gr, e->seq) < 0)
        log_error("out of memory queueing a redelivery");
    mark_dirty(g, gr);
}

/* The broker's backoff before redelivering a message whose lease ran out
 * after `attempts` deliveries: the k-th value for the k-th redelivery, the
 * last one repeated; 0 without a schedule. */
uint64_t redelivery_backoff(const struct broker *b, const struct group *gr, uint32_t attempts)
{
    if (attempts == 0)
        return 0;
    if (gr->backoff_count) {
        uint32_t i = attempts - 1 < gr->backoff_count ? attempts - 1 : gr->backoff_count - 1u;
        return gr->backoff_ms[i];
    }
    const struct broker_config *cfg = &b->cfg;
    if (!cfg->backoff_count)
        return 0;
    uint32_t i = attempts - 1 < cfg->backoff_count ? attempts - 1 : cfg->backoff_count - 1;
    return cfg->backoff_ms[i];
}

static int out_of_attempts(const struct group *gr, const struct entry *e);
static void dead_letter(struct groups *g, struct group *gr, struct conn *c, struct entry *e,
                        const char *why);

/* A delivery in flight ended without an ack (a lease expiry, a nack, its
 * consumer gone): when that was its last allowed attempt, it is
 * dead-lettered now, with why (NULL: as the entry's state says), and 1 is
 * returned; else 0 and the caller gives it back for redelivery. Not while
 * the broker stops: a message in flight then is no consumer's failure. */
int dead_letter_if_last(struct groups *g, struct group *gr, struct entry *e, const char *why)
{
    if (!out_of_attempts(gr, e) || g->broker->stopping || !e->holder)
        return 0;
    struct conn *c = e->holder->conn;
    if (e->state == E_INFLIGHT || e->state == E_FETCHING)
        e->holder->in_flight--;
    e->holder = NULL;
    dead_letter(g, gr, c, e, why);
    mark_dirty(g, gr); /* its slot is free */
    return 1;
}

struct group_due {
    uint64_t due_ms;
    struct group *group;
    uint64_t seq;
};

static void on_timer(uv_timer_t *t)
{
    struct groups *g = t->data;
    uint64_t now = clock_mono_ms();
    g->timer_due = 0;
    while (g->heap.len && g->heap.items[0].due_ms <= now) {
        struct due_item due = g->heap.items[0];
        due_heap_pop(&g->heap);
        struct group_due it = {due.due_ms, due.owner, due.seq};
        struct entry *e = entry_get(it.group, it.seq);
        /* Stale items (acked, touched, redelivered since) are skipped. */
        if (!e || e->due_ms != it.due_ms)
            continue;
        if (e->state == E_INFLIGHT) {
            /* The next turn goes to another subscription than the one
             * that let the lease run out. */
            if (e->holder)
                it.group->turn = e->holder->next_in_group;
            if (dead_letter_if_last(g, it.group, e, NULL))
                continue;
            record_attempts(g, it.group, e->holder ? e->holder->conn : NULL, e, e->attempt);
            uint64_t wait = redelivery_backoff(g->broker, it.group, e->attempt);
            if (wait)
                entry_wait(g, it.group, e, wait);
            else
                entry_make_ready(g, it.group, e);
        } else if (e->state == E_WAITING) {
            entry_make_ready(g, it.group, e);
        }
    }
    timer_rearm(g);
    groups_dispatch_dirty(g->broker);
}

/* ---- delivery ---------------------------------------------------------- */

/* DELIVERs count against the connection's limit of unsent bytes, and the
 * messages being fetched for it against a cap of their own: a consumer
 * that stops reading its socket costs the broker a bounded amount,
 * whatever its windows. */
#define CONN_MAX_FETCHING 1024
static int conn_can_take_deliveries(const struct conn *c)
{
    return c->wq.len < c->broker->cfg.conn_max_pending_bytes && c->fetching < CONN_MAX_FETCHING;
}

/* The next subscription of gr with room, taking turns; NULL if none. */
static struct sub *pick_sub(struct group *gr)
{
    struct sub *start = gr->turn ? gr->turn : gr->subs;
    struct sub *s = start;
    if (!s)
        return NULL;
    do {
        struct sub *next = s->next_in_group ? s->next_in_group : gr->subs;
        if (s->in_flight < s->window && s->conn->state == CONN_READY && !s->awaiting_ok &&
            conn_can_take_deliveries(s->conn)) {
            gr->turn = next;
            return s;
        }
        s = next;
    } while (s != start);
    return NULL;
}

/* Sends d to s as the delivery's attempt-th attempt. */
static void send_deliver(struct sub *s, struct proto_deliver *d, uint32_t attempt)
{
    d->sub_id = s->sub_id;
    d->attempt = attempt;
    conn_send_deliver(s->conn, attempt > 1 ? PROTO_DELIVER_REDELIVERED : 0, d);
}

static void entry_inflight(struct groups *g, struct group *gr, struct entry *e, struct sub *s)
{
    uint64_t now = clock_mono_ms();
    e->state = E_INFLIGHT;
    e->holder = s;
    e->nacked = 0;
    e->attempt++;
    e->sent_ms = now;
    if (e->attempt > 1)
        gr->redelivered++;
    e->due_ms = now + s->ack_wait_ms;
    timer_add(g, gr, e->seq, e->due_ms);
}

/* Queues an OP_FETCH of seqs for s. With dead_seqs, a redrive's fetch from
 * the dead-letter topic dead_topic_id (store_groups.c, fetch_redrive). */
static int queue_fetch(struct groups *g, struct group *gr, struct sub *s, const uint64_t *seqs,
                       uint32_t n, int64_t dead_topic_id, const uint64_t *dead_seqs, int first)
{
    struct broker *b = g->broker;
    struct op *op = commit_enqueue(b, s->conn, OP_FETCH, 0);
    if (!op)
        return -1;
    struct batch *bt = b->pending;
    struct op_fetch *fw = &op->u.fetch;
    fw->group = gr;
    fw->sub_id = s->sub_id;
    fw->first = first;
    fw->topic_id = dead_seqs ? dead_topic_id : gr->topic->id;
    s->conn->fetching += n;
    if (batch_put_u64s(bt, seqs, n, &fw->seqs) < 0 ||
        (dead_seqs && batch_put_u64s(bt, dead_seqs, n, &fw->dead_seqs) < 0)) {
        fw->seqs.n = fw->dead_seqs.n = 0; /* answered as a failed read */
        op->status = FERRY_EINTERNAL;
    }
    return 0;
}

/* Whether "_dead.<topic>" fits in a topic name: on a topic where it does
 * not (a derived topic with a long name, or one an older broker created),
 * a group has no delivery limit, since its messages could go nowhere. */
int dead_letter_fits(const struct ltopic *t)
{
    return t->name_len + 6 <= PROTO_MAX_TOPIC;
}

/* A new group's delivery limit from SUBSCRIBE's max_deliveries: 0 asks
 * for the default, PROTO_DELIVERIES_UNLIMITED for none (reported as 0). */
uint16_t delivery_limit(const struct ltopic *t, uint16_t requested)
{
    if (!dead_letter_fits(t) || requested == PROTO_DELIVERIES_UNLIMITED)
        return 0;
    return requested ? requested : GROUP_DEFAULT_MAX_DELIVERIES;
}

/* The entry's last delivery was its last allowed attempt (and its message
 * has a dead-letter topic to go to). */
static int out_of_attempts(const struct group *gr, const struct entry *e)
{
    return gr->max_deliveries && e->attempt >= gr->max_deliveries && dead_letter_fits(gr->topic);
}

/* Out of attempts: the message moves to the topic's dead-letter topic
 * (store_groups.c copies it with headers saying why) and counts as acked here.
 * The op rides the next group commit on c (any live or closing connection
 * of the group's: it only holds a reference). why: the reason, or NULL for
 * the one the entry's last attempt ended with (a nack or a lease expiry).
 * The entry must have no holder. */
static void dead_letter(struct groups *g, struct group *gr, struct conn *c, struct entry *e,
                        const char *why)
{
    struct broker *b = g->broker;
    uint64_t seq = e->seq;
    uint32_t attempts = e->attempt;
    char reason[256];
    if (why)
        snprintf(reason, sizeof(reason), "%s", why);
    else if (e->nacked && e->reason)
        snprintf(reason, sizeof(reason), "nacked: %s", e->reason);
    else
        snprintf(reason, sizeof(reason), "%s", e->nacked ? "nacked" : "lease expired");
    int redriven = e->dead_seq != 0;
    entry_remove(gr, e);
    if (!redriven) {
        acked_set(gr, seq);
        floor_advance(gr);
    }
    gr->dead_lettered++;
    struct op *op = commit_enqueue(b, c, OP_DEAD_LETTER, 0);
    if (!op) {
        log_error("out of memory dead-lettering %s/%llu", gr->topic->name, (unsigned long long)seq);
        return;
    }
    struct batch *bt = b->pending;
    struct op_dead_letter *dw = &op->u.dead;
    dw->group = gr;
    dw->group_id = gr->id;
    dw->floor = gr->floor;
    dw->topic_id = gr->topic->id;
    dw->seq = seq;
    dw->attempts = attempts;
    if (batch_put(bt, gr->topic->name, gr->topic->name_len, &dw->topic) < 0 ||
        batch_put(bt, gr->name, gr->name_len, &dw->group_name) < 0 ||
        batch_put(bt, reason, strlen(reason), &dw->reason) < 0) {
        log_error("out of memory dead-lettering %s/%llu", gr->topic->name, (unsigned long long)seq);
        op->kind = OP_REPLY; /* nothing to write; its attempts row stays */
        return;
    }
    log_info("group %s: %s/%llu dead-lettered after %u attempt(s) (%s)", gr->name, gr->topic->name,
             (unsigned long long)seq, attempts, reason);
}

/* Gives every subscription of gr with room what it can get now. */
/* The dead-letter topic of gr's topic, as the loop knows it (NULL when
 * it has none yet). */
struct ltopic *dead_topic_of(struct groups *g, const struct group *gr)
{
    char name[PROTO_MAX_TOPIC + 7];
    if (gr->topic->name_len + 6 > PROTO_MAX_TOPIC)
        return NULL;
    memcpy(name, "_dead.", 6);
    memcpy(name + 6, gr->topic->name, gr->topic->name_len);
    return topic_lookup(g, (const uint8_t *)name, gr->topic->name_len + 6, 0);
}

/* A first delivery after a restart: the attempts recorded for it before. */
static void restore_attempts(struct group *gr, struct entry *e)
{
    while (gr->restored_pos < gr->nrestored && gr->restored[gr->restored_pos].seq < e->seq)
        gr->restored_pos++;
    if (gr->restored_pos < gr->nrestored && gr->restored[gr->restored_pos].seq == e->seq) {
        e->attempt = gr->restored[gr->restored_pos].attempts;
        e->saved = 1;
        gr->restored_pos++;
    }
    if (gr->restored && gr->restored_pos >= gr->nrestored) {
        free(gr->restored);
        gr->restored = NULL;
        gr->nrestored = gr->restored_pos = 0;
    }
}

static void dispatch(struct groups *g, struct group *gr)
{
    uint64_t seqs[FETCH_MAX], rseqs[FETCH_MAX], rdead[FETCH_MAX];
    if (g->closing || g->broker->stopping || gr->deleting)
        return;
    for (;;) {
        struct sub *s = pick_sub(gr);
        if (!s)
            return;
        uint32_t room = s->window - s->in_flight;
        if (room > FETCH_MAX)
            room = FETCH_MAX;
        uint32_t n = 0, nr = 0;
        int first_round = 0;
        uint64_t seq;
        while (n + nr < room && ready_pop(gr, &seq)) {
            struct entry *e = entry_get(gr, seq);
            if (!e || e->state != E_READY)
                continue;
            if (out_of_attempts(gr, e)) {
                dead_letter(g, gr, s->conn, e, NULL);
                continue;
            }
            e->state = E_FETCHING;
            e->holder = s;
            s->in_flight++;
            if (e->dead_seq) {
                rseqs[nr] = seq;
                rdead[nr++] = e->dead_seq;
            } else {
                seqs[n++] = seq;
            }
        }
        if (nr) {
            struct ltopic *dt = dead_topic_of(g, gr);
            if (queue_fetch(g, gr, s, rseqs, nr, dt ? dt->id : 0, rdead, 0) < 0) {
                log_error("out of memory fetching deliveries");
                return;
            }
            if (n == 0)
                continue;
        }
        if (gr->next < gr->topic->first && gr->next == gr->floor && gr->map.count == 0) {
            /* Retention deleted what this group had not reached yet. */
            gr->floor = gr->next = gr->topic->first;
        }
        if (n == 0 && nr == 0 && !gr->fetching_first && gr->next <= gr->topic->head &&
            gr->topic->id) {
            while (n < room && gr->next <= gr->topic->head) {
                if (acked_test(gr, gr->next)) {
                    /* Acked before a restart (group_acks): skip it. */
                    gr->next++;
                    continue;
                }
                if (acked_reserve(gr, gr->next) < 0)
                    break;
                struct entry *e = entry_add(gr, gr->next);
                if (!e)
                    break;
                restore_attempts(gr, e);
                e->state = E_FETCHING;
                e->holder = s;
                s->in_flight++;
                seqs[n++] = gr->next++;
            }
            if (n) {
                gr->fetching_first = 1;
                first_round = 1;
            }
        }
        if (n == 0)
            return;
        if (queue_fetch(g, gr, s, seqs, n, 0, NULL, gr->fetching_first && first_round) < 0) {
            log_error("out of memory fetching deliveries");
            return;
        }
    }
}

void groups_dispatch_dirty(struct broker *b)
{
    struct groups *g = G(b);
    if (!g)
        return;
    while (g->dirty) {
        struct group *gr = g->dirty;
        g->dirty = gr->next_dirty;
        gr->dirty = 0;
        gr->next_dirty = NULL;
        dispatch(g, gr);
    }
}

/* ---- after a commit ----------------------------------------------------- */

/* How long until a message with this not-before time is due (0: now). */
static uint64_t delay_ms(uint64_t deliver_at_ms)
{
    int64_t now = clock_wall_ms();
    return deliver_at_ms > (uint64_t)now ? deliver_at_ms - (uint64_t)now : 0;
}

/* A delayed message: no delivery yet; it becomes READY when due. */
void entry_wait(struct groups *g, struct group *gr, struct entry *e, uint64_t ms)
{
    if (e->holder && (e->state == E_INFLIGHT || e->state == E_FETCHING))
        e->holder->in_flight--;
    e->holder = NULL;
    e->state = E_WAITING;
    e->due_ms = clock_mono_ms() + ms;
    timer_add(g, gr, e->seq, e->due_ms);
}

/* Live delivery: a message just stored goes straight to each caught-up
 * group with a subscription that has room, from the batch's memory. */
static void deliver_fresh(struct groups *g, struct ltopic *t, const struct proto_msg *m,
                          uint64_t seq, const uint8_t *id, size_t id_len, int64_t ts)
{
    struct proto_deliver d = {
        .seq = seq,
        .ts_ms = (uint64_t)ts,
        .id = {id, id_len},
        .key = m->key,
        .header_count = m->header_count,
        .headers = m->headers,
        .payload = m->payload,
    };
    for (struct group *gr = t->groups; gr; gr = gr->next_in_topic) {
        if (gr->next != seq || gr->fetching_first)
            continue;
        struct sub *s = pick_sub(gr);
        if (!s || acked_reserve(gr, seq) < 0)
            continue;
        struct entry *e = entry_add(gr, seq);
        if (!e)
            continue;
        gr->next++;
        if (delay_ms(m->deliver_at_ms)) {
            entry_wait(g, gr, e, delay_ms(m->deliver_at_ms));
            continue;
        }
        entry_inflight(g, gr, e, s);
        s->in_flight++;
        send_deliver(s, &d, e->attempt);
    }
}

static void apply_topic_updates(struct groups *g, struct batch *done)
{
    const struct topic_update *u = done->topic_updates.data;
    for (size_t i = 0; i < done->topic_updates.len; i++) {
        int64_t id = u[i].id;
        uint64_t head = u[i].v.head, first = u[i].v.first;
        struct ltopic *t =
            topic_lookup(g, done->topic_names.data + u[i].name.off, u[i].name.len, 1);
        if (t) {
            t->id = id;
            t->view = u[i].v;
            if (u[i].stored) {
                t->stored += u[i].stored;
                t->bytes_in += u[i].bytes_in;
                rate_add(&t->rate_in, done->now_ms, u[i].stored);
            }
            if (first > t->first) {
                t->first = first;
                for (struct group *gr = t->groups; gr; gr = gr->next_in_topic)
                    mark_dirty(g, gr);
            }
            if (head > t->head) {
                t->head = head;
                /* Messages not published by a client (dead letters) reach
                 * their groups through a fetch. */
                for (struct group *gr = t->groups; gr; gr = gr->next_in_topic)
                    mark_dirty(g, gr);
            }
        }
    }
}

/* Fresh messages of one PUBLISH op, paired with their results. */
static void publish_op_done(struct groups *g, struct batch *done, struct op *op)
{
    const struct op_publish *pw = &op->u.publish;
    if (op->status || pw->results + pw->count > done->results.len)
        return;
    const struct publish_result *r =
        (const struct publish_result *)done->results.data + pw->results;
    struct proto_publish pub;
    batch_publish_of(done, op, &pub);
    struct proto_msg_iter mi;
    struct proto_msg m;
    proto_msg_iter_init(&mi, &pub);
    for (uint16_t i = 0; i < pw->count && proto_msg_next(&mi, &m); i++) {
        if (r[i].duplicate)
            continue;
        struct ltopic *t = topic_lookup(g, m.topic.ptr, m.topic.len, 0);
        if (!t || !t->groups)
            continue;
        const uint8_t *id = r[i].generated ? (const uint8_t *)r[i].id : m.id.ptr;
        size_t id_len = r[i].generated ? sizeof(r[i].id) : m.id.len;
        deliver_fresh(g, t, &m, r[i].seq, id, id_len, done->now_ms);
        for (struct group *gr = t->groups; gr; gr = gr->next_in_topic)
            if (gr->next <= r[i].seq)
                mark_dirty(g, gr);
    }
}

struct sub *sub_find(struct conn *c, uint32_t sub_id)
{
    for (struct sub *s = c->subs; s; s = s->next_in_conn)
        if (s->sub_id == sub_id)
            return s;
    return NULL;
}

/* Fetched messages go to the subscription that asked, if it still holds
 * their entries; sequences the store did not return are gone (deleted by
 * retention) and count as acked. */
static void fetch_done(struct groups *g, struct batch *done, struct op *op)
{
    const struct op_fetch *fw = &op->u.fetch;
    struct group *gr = fw->group;
    const uint64_t *seqs = batch_u64s(done, fw->seqs);
    uint32_t n = fw->seqs.n;
    op->conn->fetching -= n;
    if (gr->deleted)
        return;
    if (op->status) {
        /* The read failed (store_groups.c logged why; fetches run apart from the
         * commit's writes, which stood): its messages wait and are fetched
         * again. */
        for (uint32_t i = 0; i < n; i++) {
            struct entry *e = entry_get(gr, seqs[i]);
            if (e && e->state == E_FETCHING)
                entry_wait(g, gr, e, FETCH_RETRY_MS);
        }
        gr->fetching_first = 0;
        uint64_t now = clock_mono_ms();
        if (!gr->read_error_ms || now - gr->read_error_ms >= 10000) {
            gr->read_error_ms = now;
            log_error("group %s of topic %s: %s while fetching %u message(s); trying again "
                      "every %d ms",
                      gr->name, gr->topic->name,
                      op->status == FERRY_ESTORAGE ? "disk read error" : "out of memory", n,
                      FETCH_RETRY_MS);
        }
        return;
    }
    struct sub *s = op->conn->state == CONN_READY ? sub_find(op->conn, fw->sub_id) : NULL;
    const struct fetched_msg *fm = (const struct fetched_msg *)done->fetched.data + fw->results;
    size_t left = fw->nresults;
    const uint8_t *bytes = done->out.data;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t seq = seqs[i];
        struct entry *e = entry_get(gr, seq);
        /* The store returns messages in request order, skipping missing ones. */
        const struct fetched_msg *got = NULL;
        if (left && fm->seq == seq) {
            got = fm++;
            left--;
        }
        if (!e || e->state != E_FETCHING)
            continue; /* acked, or the group was moved by a seek */
        if (!got) {
            /* Deleted before it could be delivered: nothing to deliver. */
            if (e->holder)
                e->holder->in_flight--;
            if (e->dead_seq) {
                log_warn("group %s: the dead letter %llu of %s is gone: sequence %llu is not "
                         "redriven",
                         gr->name, (unsigned long long)e->dead_seq, gr->topic->name,
                         (unsigned long long)seq);
                record_attempts(g, gr, op->conn, e, 0);
                entry_remove(gr, e);
                continue;
            }
            record_attempts(g, gr, op->conn, e, 0);
            entry_remove(gr, e);
            acked_set(gr, seq);
            floor_advance(gr);
            continue;
        }
        if (fw->first && delay_ms(got->deliver_at_ms)) {
            entry_wait(g, gr, e, delay_ms(got->deliver_at_ms));
            continue;
        }
        if (!s || e->holder != s) {
            entry_make_ready(g, gr, e);
            continue;
        }
        entry_inflight(g, gr, e, s);
        struct proto_deliver d = {
            .seq = seq,
            .ts_ms = got->ts_ms,
            .id = {bytes + got->id.off, got->id.len},
            .key = {bytes + got->key.off, got->key.len},
            .header_count = got->header_count,
            .headers = {bytes + got->headers.off, got->headers.len},
            .payload = {bytes + got->payload.off, got->payload.len},
        };
        send_deliver(s, &d, e->attempt);
    }
    if (fw->first)
        gr->fetching_first = 0;
    mark_dirty(g, gr);
}

/* The commit creating a subscription's group is done: deliveries may
 * start (they follow the SUBSCRIBE_OK, which goes out with this batch's
 * replies). If it failed, the client got an ERROR: the subscription ends. */
static void subscribe_done(struct groups *g, struct batch *done, struct op *op)
{
    struct conn *c = op->conn;
    struct sub **pp = &c->subs;
    while (*pp && (*pp)->sub_id != op->u.save.sub_id)
        pp = &(*pp)->next_in_conn;
    struct sub *s = *pp;
    if (!s || !s->awaiting_ok)
        return;
    if (done->commit_status) {
        *pp = s->next_in_conn;
        sub_end(g, s, "consumer disconnected");
        return;
    }
    s->awaiting_ok = 0;
    mark_dirty(g, s->group);
}

/* The groups and topics a DELETE buried (group_delete.c), once nothing
 * names them. */
static void free_buried(struct groups *g)
{
    if (!g->buried && !g->buried_topics)
        return;
    /* A buried group may still be on the dirty list. */
    struct group **pp = &g->dirty;
    while (*pp) {
        if ((*pp)->deleted) {
            struct group *gr = *pp;
            *pp = gr->next_dirty;
            gr->dirty = 0;
        } else {
            pp = &(*pp)->next_dirty;
        }
    }
    while (g->buried) {
        struct group *gr = g->buried;
        g->buried = gr->next_in_topic;
        group_free(gr);
    }
    while (g->buried_topics) {
        struct ltopic *t = g->buried_topics;
        g->buried_topics = t->next_buried;
        free(t->name);
        free(t);
    }
}

void groups_after_replies(struct broker *b, struct batch *done)
{
    struct groups *g = G(b);
    if (!g)
        return;
    for (size_t i = 0; i < done->nops; i++)
        if (done->ops[i].kind == OP_GROUP_SAVE && done->ops[i].u.save.sub_id)
            subscribe_done(g, done, &done->ops[i]);
    free_buried(g);
}

void groups_after_commit(struct broker *b, struct batch *done)
{
    struct groups *g = G(b);
    if (!g)
        return;
    if (done->commit_status == 0)
        apply_topic_updates(g, done);
    for (size_t i = 0; i < done->nops; i++) {
        struct op *op = &done->ops[i];
        if (op->kind == OP_PUBLISH && done->commit_status == 0)
            publish_op_done(g, done, op);
        else if (op->kind == OP_FETCH)
            fetch_done(g, done, op);
        else if (op->kind == OP_GROUP_ACK && (done->commit_status || op->status))
            op->u.ack.group->acks_unsaved = 1; /* harmless on a deleted group */
        else if (op->kind == OP_DEAD_LETTER && (done->commit_status || op->status))
            op->u.dead.group->acks_unsaved = 1;
    }
}

/* ---- subscriptions ------------------------------------------------------ */

/* why: "consumer disconnected" or "consumer unsubscribed", the reason a
 * delivery at its last attempt is dead-lettered with. */
void sub_end(struct groups *g, struct sub *s, const char *why)
{
    struct group *gr = s->group;
    /* Its in-flight messages go back to the group at once; those at their
     * last attempt go to the dead-letter topic at once. dead_letter removes
     * entries, which moves others in the map: walk it again after each. */
    if (gr->map.slots) {
        for (size_t i = 0; i <= gr->map.mask; i++) {
            struct entry *e = &gr->map.slots[i];
            if (!e->seq || e->holder != s)
                continue;
            if (e->state == E_INFLIGHT && dead_letter_if_last(g, gr, e, why)) {
                i = (size_t)-1;
                continue;
            }
            if (e->state == E_INFLIGHT)
                record_attempts(g, gr, s->conn, e, e->attempt);
            if (e->state == E_INFLIGHT || e->state == E_FETCHING)
                entry_make_ready(g, gr, e);
        }
    }
    struct sub **pp = &gr->subs;
    while (*pp && *pp != s)
        pp = &(*pp)->next_in_group;
    if (*pp)
        *pp = s->next_in_group;
    if (gr->turn == s)
        gr->turn = NULL;
    mark_dirty(g, gr);
    free(s);
}

void groups_conn_writable(struct conn *c)
{
    struct groups *g = G(c->broker);
    if (!g || !conn_can_take_deliveries(c))
        return;
    for (struct sub *s = c->subs; s; s = s->next_in_conn)
        mark_dirty(g, s->group);
}

void groups_conn_closed(struct conn *c)
{
    struct groups *g = G(c->broker);
    struct sub *s = c->subs;
    c->subs = NULL;
    while (s) {
        struct sub *next = s->next_in_conn;
        sub_end(g, s, "consumer disconnected");
        s = next;
    }
    if (g)
        groups_dispatch_dirty(c->broker);
}

struct group *group_new(struct groups *g, struct ltopic *t, const uint8_t *name, size_t len)
{
    struct group *gr = calloc(1, sizeof(*gr));
    if (!gr || !(gr->name = dup_bytes(name, len))) {
        free(gr);
        return NULL;
    }
    gr->name_len = len;
    gr->topic = t;
    gr->id = ++g->next_group_id;
    gr->next_in_topic = t->groups;
    t->groups = gr;
    return gr;
}

void group_free(struct group *gr)
{
    entry_map_free(&gr->map);
    acked_bits_free(&gr->acked);
    seq_ring_free(&gr->ready);
    free(gr->restored);
    free(gr->name);
    free(gr);
}

/* ---- shutdown ------------------------------------------------------------- */

static void on_timer_closed(uv_handle_t *h)
{
    (void)h;
}

void groups_close(struct broker *b)
{
    struct groups *g = G(b);
    if (g && !g->closing) {
        g->closing = 1;
        uv_close((uv_handle_t *)&g->timer, on_timer_closed);
    }
}

void groups_free(struct broker *b)
{
    struct groups *g = G(b);
    if (!g)
        return;
    for (struct ltopic *t = namemap_first(&g->topics); t;) {
        struct ltopic *nt = namemap_next(&g->topics, t);
        struct group *gr = t->groups;
        while (gr) {
            struct group *ng = gr->next_in_topic;
            group_free(gr);
            gr = ng;
        }
        free(t->name);
        free(t);
        t = nt;
    }
    free_buried(g);
    namemap_free(&g->topics);
    due_heap_free(&g->heap);
    free(g);
    b->groups = NULL;
}
