/*
 * group_delete.c - DELETE: a topic (with its dead-letter topic and the
 * consumer groups of both) or one consumer group.
 *
 * In three steps, so that nothing the loop frees is still named by an op:
 *
 * 1. The frame (groups_on_delete): the topic and groups are marked
 *    `deleting`, their subscriptions end at once (each subscriber gets a
 *    SUB_END; in-flight messages are simply dropped, neither dead-lettered
 *    nor counted as attempts), their timers go, and an OP_DELETE joins the
 *    pending batch. While deleting, the topic and groups take no new
 *    subscription, seek, redrive, floor or peek (INVALID, "being deleted");
 *    publishes go on, and follow the deletion in the store: they make a new
 *    topic of the name.
 * 2. The batch committed (groups_deletes_done, which server.c calls first
 *    after a commit, before groups_after_commit):
 *    the deleted topics and groups leave the registry and are buried; a
 *    failed deletion clears the marks instead (the subscriptions stay
 *    ended: their clients subscribe again).
 * 3. After the batch's replies (groups_after_replies, group.c): the buried
 *    are freed.
 *    Ops of that batch that named them (fetches queued before the deletion)
 *    have been read by then, and no op queued since names them: a deleting
 *    group has no subscription, no timer and dispatches nothing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "broker.h"
#include "commit.h"
#include "conn.h"
#include "ferry_codes.h"
#include "group.h"
#include "group_internal.h"
#include "log.h"
#include "seqset.h"

/* Tells the subscriber its subscription is over, and forgets it. Its
 * in-flight messages go back to the group unrecorded: the group is going. */
static void sub_drop(struct groups *g, struct sub *s, int code, const char *why)
{
    struct conn *c = s->conn;
    uint8_t frame[PROTO_HEADER_BYTES + 8 + PROTO_MAX_ERROR_TEXT];
    struct proto_writer w;
    proto_writer_init(&w, frame, sizeof frame);
    struct proto_sub_end end = {s->sub_id, (uint16_t)-code, {(const uint8_t *)why, strlen(why)}};
    /* In order with the connection's replies: after the SUBSCRIBE_OK of a
     * subscription whose group is still being created. */
    if (proto_encode_sub_end(&w, &end) == 0)
        commit_reply(c, 0, frame, w.len);
    struct sub **pp = &c->subs;
    while (*pp && *pp != s)
        pp = &(*pp)->next_in_conn;
    if (*pp)
        *pp = s->next_in_conn;
    struct group *gr = s->group;
    if (gr->map.slots)
        for (size_t i = 0; i <= gr->map.mask; i++) {
            struct entry *e = &gr->map.slots[i];
            if (e->seq && e->holder == s && (e->state == E_INFLIGHT || e->state == E_FETCHING))
                entry_make_ready(g, gr, e);
        }
    struct sub **gp = &gr->subs;
    while (*gp && *gp != s)
        gp = &(*gp)->next_in_group;
    if (*gp)
        *gp = s->next_in_group;
    if (gr->turn == s)
        gr->turn = NULL;
    free(s);
}

static void group_mark(struct groups *g, struct group *gr, int code, const char *why)
{
    gr->deleting = 1;
    while (gr->subs)
        sub_drop(g, gr->subs, code, why);
    /* Its timers stay until it is buried: if the deletion fails, its
     * waiting messages still come due. A deleting group's timers only make
     * entries ready; it dispatches nothing. */
}

static uint32_t topic_mark(struct groups *g, struct ltopic *t, const char *why)
{
    uint32_t n = 0;
    t->deleting = 1;
    for (struct group *gr = t->groups; gr; gr = gr->next_in_topic, n++)
        group_mark(g, gr, FERRY_EUNKNOWN_TOPIC, why);
    return n;
}

static uint32_t count_groups(const struct ltopic *t)
{
    uint32_t n = 0;
    for (const struct group *gr = t ? t->groups : NULL; gr; gr = gr->next_in_topic)
        n++;
    return n;
}

int refuse_if_deleting(struct conn *c, uint32_t request_id, const struct ltopic *t,
                       const struct group *gr)
{
    char msg[300];
    /* _dead.T goes with T, even if the loop did not know it when T's
     * deletion began. */
    const struct ltopic *base =
        t && t->name_len > 6 && memcmp(t->name, "_dead.", 6) == 0
            ? topic_lookup(G(c->broker), (const uint8_t *)t->name + 6, t->name_len - 6, 0)
            : NULL;
    if (base && base->deleting)
        t = base;
    if (t && t->deleting)
        snprintf(msg, sizeof msg, "topic %s is being deleted", t->name);
    else if (gr && gr->deleting)
        snprintf(msg, sizeof msg, "group %s of topic %s is being deleted", gr->name,
                 gr->topic->name);
    else
        return 0;
    commit_reply_error(c, request_id, FERRY_EINVALID, msg);
    return 1;
}

void groups_on_delete(struct conn *c, const struct proto_frame *f, size_t wire_bytes)
{
    struct groups *g = G(c->broker);
    const struct proto_delete *d = &f->u.del;
    char msg[700];
    if (proto_sub_topic_valid(d->topic.ptr, d->topic.len) != 0) {
        commit_reply_error(c, f->request_id, FERRY_EINVALID_TOPIC, "invalid topic name");
        return;
    }
    if (d->group.len && proto_group_valid(d->group.ptr, d->group.len) != 0) {
        commit_reply_error(c, f->request_id, FERRY_EINVALID_GROUP, "invalid group name");
        return;
    }
    struct ltopic *t = topic_lookup(g, d->topic.ptr, d->topic.len, 0);
    if (!t) {
        snprintf(msg, sizeof msg, "no such topic: %.*s", (int)d->topic.len,
                 (const char *)d->topic.ptr);
        commit_reply_error(c, f->request_id, FERRY_EUNKNOWN_TOPIC, msg);
        return;
    }
    struct group *gr = NULL;
    if (d->group.len) {
        gr = group_find(t, d->group.ptr, d->group.len);
        if (!gr) {
            snprintf(msg, sizeof msg, "no such group: %.*s on topic %s", (int)d->group.len,
                     (const char *)d->group.ptr, t->name);
            commit_reply_error(c, f->request_id, FERRY_EUNKNOWN_GROUP, msg);
            return;
        }
    }
    if (refuse_if_deleting(c, f->request_id, t, gr))
        return;
    /* The dead-letter topic goes with its topic. */
    struct group probe = {.topic = t};
    struct ltopic *dt = gr ? NULL : dead_topic_of(g, &probe);
    if (dt && dt->deleting)
        dt = NULL;
    if (!gr && !(d->flags & PROTO_DELETE_FORCE)) {
        uint32_t n = count_groups(t) + count_groups(dt);
        if (n) {
            snprintf(msg, sizeof msg,
                     "topic %s has %u consumer group(s)%s: delete them first, or force it "
                     "(ferry topics delete --force)",
                     t->name, n, count_groups(dt) ? " (with its dead-letter topic's)" : "");
            commit_reply_error(c, f->request_id, FERRY_EINVALID, msg);
            return;
        }
    }
    struct op *op = commit_enqueue(c->broker, c, OP_DELETE, wire_bytes);
    if (!op) {
        conn_fail(c, FERRY_EINTERNAL, "out of memory");
        return;
    }
    struct batch *b = c->broker->pending;
    op->request_id = f->request_id;
    struct op_delete *od = &op->u.del;
    int rc = batch_put(b, d->topic.ptr, d->topic.len, &od->topic);
    if (rc == 0 && gr) {
        od->group_id = gr->id;
        rc = batch_put(b, d->group.ptr, d->group.len, &od->group);
    }
    /* The dead-letter topic by name: the store may have it though the loop
     * does not yet (a dead letter committing now). */
    char dead[PROTO_MAX_TOPIC + 7];
    if (rc == 0 && !gr && t->name_len + 6 <= PROTO_MAX_TOPIC) {
        memcpy(dead, "_dead.", 6);
        memcpy(dead + 6, t->name, t->name_len);
        rc = batch_put(b, dead, t->name_len + 6, &od->dead);
    }
    if (rc < 0) {
        op->kind = OP_REPLY;
        op->out_len = 0;
        conn_fail(c, FERRY_EINTERNAL, "out of memory");
        return;
    }
    if (gr) {
        snprintf(msg, sizeof msg, "group %s of topic %s was deleted", gr->name, t->name);
        group_mark(g, gr, FERRY_EUNKNOWN_GROUP, msg);
        log_info("deleting group %s of topic %s", gr->name, t->name);
        return;
    }
    snprintf(msg, sizeof msg, "topic %s was deleted", t->name);
    uint32_t n = topic_mark(g, t, msg);
    if (dt) {
        snprintf(msg, sizeof msg, "topic %s was deleted", dt->name);
        n += topic_mark(g, dt, msg);
    }
    log_info("deleting topic %s%s%s and %u consumer group(s)", t->name, dt ? " and " : "",
             dt ? dt->name : "", n);
}

static void unmark(struct ltopic *t, struct group *only)
{
    if (!t)
        return;
    if (!only)
        t->deleting = 0;
    for (struct group *gr = t->groups; gr; gr = gr->next_in_topic)
        if (!only || gr == only)
            gr->deleting = 0;
}

static void bury_group(struct groups *g, struct group *gr)
{
    struct group **pp = &gr->topic->groups;
    while (*pp && *pp != gr)
        pp = &(*pp)->next_in_topic;
    if (*pp)
        *pp = gr->next_in_topic;
    gr->deleted = 1;
    gr->next_in_topic = g->buried;
    g->buried = gr;
}

static void bury_topic(struct groups *g, struct ltopic *t, const char *why)
{
    while (t->groups) {
        if (!t->groups->deleting) /* made while the deletion committed */
            group_mark(g, t->groups, FERRY_EUNKNOWN_TOPIC, why);
        bury_group(g, t->groups);
    }
    namemap_remove(&g->topics, &t->link);
    g->topic_name_bytes -= t->name_len;
    t->next_buried = g->buried_topics;
    g->buried_topics = t;
}

static int group_is_deleted(const void *owner)
{
    return ((const struct group *)owner)->deleted;
}

static struct group *find_by_id(struct ltopic *t, int64_t id)
{
    for (struct group *gr = t ? t->groups : NULL; gr; gr = gr->next_in_topic)
        if (gr->id == id)
            return gr;
    return NULL;
}

void groups_deletes_done(struct broker *b, struct batch *done)
{
    struct groups *g = G(b);
    if (!g)
        return;
    for (size_t i = 0; i < done->nops; i++) {
        struct op *op = &done->ops[i];
        if (op->kind != OP_DELETE)
            continue;
        const struct op_delete *od = &op->u.del;
        struct ltopic *t = topic_lookup(g, batch_bytes(done, od->topic), od->topic.len, 0);
        struct ltopic *dt =
            od->dead.len ? topic_lookup(g, batch_bytes(done, od->dead), od->dead.len, 0) : NULL;
        struct group *gr = od->group.len ? find_by_id(t, od->group_id) : NULL;
        if (done->commit_status || op->status) {
            if (od->group.len) {
                if (gr)
                    unmark(t, gr);
            } else {
                unmark(t, NULL);
                unmark(dt, NULL);
            }
            if (t)
                log_warn("deleting %s%s%s failed; it stays", od->group.len ? "a group of " : "",
                         "topic ", t->name);
            continue;
        }
        if (od->group.len) {
            if (gr) {
                log_info("deleted group %s of topic %s", gr->name, t->name);
                bury_group(g, gr);
            }
            continue;
        }
        char why[PROTO_MAX_TOPIC + 32];
        if (t) {
            log_info("deleted topic %s", t->name);
            snprintf(why, sizeof why, "topic %s was deleted", t->name);
            bury_topic(g, t, why);
        }
        if (dt) {
            snprintf(why, sizeof why, "topic %s was deleted", dt->name);
            bury_topic(g, dt, why);
        }
    }
    /* The buried groups' timers, in one pass over the heap. */
    if (g->buried)
        due_heap_drop_if(&g->heap, group_is_deleted);
}
