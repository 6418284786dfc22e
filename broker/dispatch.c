/*
 * dispatch.c - what each frame a client sends means: frame type to
 * handler. The handshake (HELLO, and the token check), the frames the
 * broker answers itself or through the store (PING, PUBLISH, TOPICS,
 * TOPIC_CONFIG), the token's rights over each frame; the consumer frames
 * go to their handlers (consumer.c).
 */
#include "dispatch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "broker.h"
#include "clock.h"
#include "commit.h"
#include "conn.h"
#include "group.h"
#include "log.h"
#include "proto.h"

static void on_hello(struct conn *c, const struct proto_frame *f)
{
    const struct proto_hello *h = &f->u.hello;
    if (h->version != PROTO_VERSION) {
        char msg[96];
        snprintf(msg, sizeof(msg), "client speaks version %u, this broker speaks %u", h->version,
                 PROTO_VERSION);
        conn_fail_request(c, f->request_id, FERRY_EVERSION, msg);
        return;
    }
    const struct broker_config *cfg = &c->broker->cfg;
    if (auth_enabled(&cfg->auth)) {
        c->token = auth_check(&cfg->auth, h->token.ptr, h->token.len);
        if (!c->token) {
            /* Answered AUTH_DELAY_MS later (by a tick): a wrong token
             * costs the guesser time, never the broker. Not logged: it
             * may be someone's real secret, mistyped. */
            conn_pause_reading(c);
            c->auth_failed = 1;
            c->auth_failed_ms = clock_mono_ms();
            c->hello_request_id = f->request_id;
            log_info("conn %llu %s: refused: %s token", (unsigned long long)c->id, c->peer,
                     h->token.len ? "wrong" : "no");
            return;
        }
        log_debug("conn %llu %s: authenticated as %s", (unsigned long long)c->id, c->peer,
                  auth_token_name(c->token));
    }
    struct proto_hello_ok ok = {
        .version = PROTO_VERSION,
        .max_frame_bytes = cfg->max_frame_bytes,
        .max_message_bytes = cfg->max_message_bytes,
        .max_batch = cfg->max_batch,
        .dedupe_window_ms = cfg->dedupe_window_ms,
        .server_name = {(const uint8_t *)"ferryd " FERRY_BROKER_VERSION,
                        sizeof("ferryd " FERRY_BROKER_VERSION) - 1},
    };
    uint8_t frame[128];
    struct proto_writer w;
    proto_writer_init(&w, frame, sizeof(frame));
    proto_encode_hello_ok(&w, f->request_id, &ok);
    c->state = CONN_READY;
    char name[64];
    size_t n = h->client_name.len < sizeof(name) - 1 ? h->client_name.len : sizeof(name) - 1;
    for (size_t i = 0; i < n; i++) {
        uint8_t ch = h->client_name.ptr[i];
        name[i] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    name[n] = 0;
    memcpy(c->client, name, n + 1 <= sizeof(c->client) ? n + 1 : sizeof(c->client));
    c->client[sizeof(c->client) - 1] = 0;
    log_debug("conn %llu %s: hello from \"%s\"", (unsigned long long)c->id, c->peer, name);
    commit_reply(c, f->request_id, frame, w.len);
}

static void on_publish(struct conn *c, const struct proto_frame *f, size_t wire_bytes)
{
    const struct broker_config *cfg = &c->broker->cfg;
    const struct proto_publish *p = &f->u.publish;
    if (p->count > cfg->max_batch) {
        char msg[96];
        snprintf(msg, sizeof(msg), "batch of %u messages exceeds the maximum of %u", p->count,
                 cfg->max_batch);
        commit_reply_error(c, f->request_id, FERRY_EINVALID, msg);
        return;
    }
    struct proto_msg_iter it;
    struct proto_msg m;
    proto_msg_iter_init(&it, p);
    /* Its PUBLISH_ACK: an entry per message, with the message's id or the
     * 36 characters of the one the broker assigns. */
    size_t ack_bytes = PROTO_HEADER_BYTES + 2;
    for (unsigned i = 0; proto_msg_next(&it, &m); i++) {
        ack_bytes += 8 + 1 + 2 + (m.id.len ? m.id.len : 36);
        int rc = proto_msg_check(&m, cfg->max_message_bytes);
        if (rc) {
            char msg[160];
            if (rc == FERRY_EMESSAGE_TOO_LARGE)
                snprintf(msg, sizeof(msg), "message %u: %llu bytes exceeds the maximum of %u", i,
                         (unsigned long long)proto_msg_size(&m), cfg->max_message_bytes);
            else if (rc == FERRY_EINVALID_TOPIC)
                snprintf(msg, sizeof(msg),
                         "message %u: topic names are 1-194 bytes of [A-Za-z0-9._-], starting "
                         "with a letter or digit",
                         i);
            else
                snprintf(msg, sizeof(msg), "message %u: %s", i, proto_strerror(rc));
            commit_reply_error(c, f->request_id, rc, msg);
            return;
        }
    }
    struct op *op = commit_enqueue(c->broker, c, OP_PUBLISH, wire_bytes);
    if (!op) {
        conn_fail(c, FERRY_EINTERNAL, "out of memory");
        return;
    }
    commit_owe_reply(op, ack_bytes);
    struct batch *b = c->broker->pending;
    struct op_publish *pw = &op->u.publish;
    op->request_id = f->request_id;
    pw->count = p->count;
    pw->has_producer = p->has_producer;
    if ((p->has_producer && batch_put(b, p->producer.ptr, p->producer.len, &pw->producer) < 0) ||
        batch_put(b, p->msgs.ptr, p->msgs.len, &pw->msgs) < 0) {
        /* Turn it into an error reply rather than lose the ordering. */
        op->kind = OP_REPLY;
        op->out_len = 0;
        conn_fail(c, FERRY_EINTERNAL, "out of memory");
        return;
    }
    b->messages += p->count;
}

/* TOPIC_CONFIG: set a topic's retention; the ACK_OK goes out after the
 * commit. */
static void on_topic_config(struct conn *c, const struct proto_frame *f, size_t wire_bytes)
{
    const struct proto_topic_config *tc = &f->u.topic_config;
    if (proto_sub_topic_valid(tc->topic.ptr, tc->topic.len) != 0) {
        commit_reply_error(c, f->request_id, FERRY_EINVALID_TOPIC, "invalid topic name");
        return;
    }
    struct op *op = commit_enqueue(c->broker, c, OP_TOPIC_CONFIG, wire_bytes);
    if (!op) {
        conn_fail(c, FERRY_EINTERNAL, "out of memory");
        return;
    }
    struct batch *b = c->broker->pending;
    struct op_topic_config *cw = &op->u.config;
    op->request_id = f->request_id;
    cw->max_age_ms = tc->max_age_ms;
    cw->max_count = tc->max_count;
    cw->max_bytes = tc->max_bytes;
    cw->delete_acked = tc->delete_acked;
    uint8_t frame[PROTO_HEADER_BYTES + 2];
    struct proto_writer w;
    proto_writer_init(&w, frame, sizeof(frame));
    size_t start = proto_ack_ok_begin(&w, f->request_id);
    proto_ack_ok_end(&w, start, 0);
    op->out_off = b->out.len;
    if (batch_put(b, tc->topic.ptr, tc->topic.len, &cw->topic) < 0 ||
        buf_append(&b->out, frame, w.len) < 0) {
        op->kind = OP_REPLY;
        op->out_len = 0;
        conn_fail(c, FERRY_EINTERNAL, "out of memory");
        return;
    }
    op->out_len = w.len;
}

/* Checks the connection's token against what the frame asks for; replies
 * DENIED (and returns 0) when it may not. */
static int conn_permitted(struct conn *c, const struct proto_frame *f)
{
    const struct auth *a = &c->broker->cfg.auth;
    if (!auth_enabled(a))
        return 1;
    char msg[320];
    const struct proto_slice *topic = NULL;
    enum auth_right right = AUTH_CONSUME;
    switch (f->type) {
    case PROTO_PUBLISH: {
        struct proto_msg_iter it;
        struct proto_msg m;
        proto_msg_iter_init(&it, &f->u.publish);
        while (proto_msg_next(&it, &m)) {
            if (!auth_allows(a, c->token, AUTH_PUBLISH, m.topic.ptr, m.topic.len)) {
                snprintf(msg, sizeof(msg), "token %s may not publish to %.*s",
                         auth_token_name(c->token), (int)m.topic.len, (const char *)m.topic.ptr);
                commit_reply_error(c, f->request_id, FERRY_EDENIED, msg);
                return 0;
            }
        }
        return 1;
    }
    case PROTO_SUBSCRIBE:
        topic = &f->u.subscribe.topic;
        break;
    case PROTO_SEEK:
        topic = &f->u.seek.topic;
        break;
    case PROTO_REDRIVE:
        topic = &f->u.redrive.topic;
        break;
    case PROTO_FLOOR:
        topic = &f->u.floor.topic;
        break;
    case PROTO_PEEK:
        topic = &f->u.peek.topic;
        break;
    case PROTO_TOPICS:
    case PROTO_GROUPS:
    case PROTO_TOPIC_CONFIG:
    case PROTO_DELETE:
        if (auth_admin(a, c->token))
            return 1;
        snprintf(msg, sizeof(msg), "token %s has no admin right", auth_token_name(c->token));
        commit_reply_error(c, f->request_id, FERRY_EDENIED, msg);
        return 0;
    default:
        return 1; /* acks and the like act on a subscription already allowed */
    }
    if (auth_allows(a, c->token, right, topic->ptr, topic->len) ||
        ((f->type == PROTO_SEEK || f->type == PROTO_REDRIVE || f->type == PROTO_FLOOR) &&
         auth_admin(a, c->token)))
        return 1;
    snprintf(msg, sizeof(msg), "token %s may not consume %.*s", auth_token_name(c->token),
             (int)topic->len, (const char *)topic->ptr);
    commit_reply_error(c, f->request_id, FERRY_EDENIED, msg);
    return 0;
}

void dispatch_frame(struct conn *c, const struct proto_frame *f, size_t wire_bytes)
{
    if (c->state == CONN_HANDSHAKE) {
        if (f->type != PROTO_HELLO) {
            conn_fail_request(c, f->request_id, FERRY_EHANDSHAKE, "the first frame must be HELLO");
            return;
        }
        on_hello(c, f);
        return;
    }
    if (!conn_permitted(c, f))
        return;
    switch (f->type) {
    case PROTO_PUBLISH:
        on_publish(c, f, wire_bytes);
        return;
    case PROTO_PING: {
        uint8_t frame[PROTO_HEADER_BYTES];
        struct proto_writer w;
        proto_writer_init(&w, frame, sizeof(frame));
        proto_encode_empty(&w, PROTO_PONG, f->request_id);
        commit_reply(c, f->request_id, frame, w.len);
        return;
    }
    case PROTO_PONG:
        return;
    case PROTO_TOPICS: {
        struct op *op = commit_enqueue(c->broker, c, OP_TOPICS, wire_bytes);
        if (op) {
            op->request_id = f->request_id;
            commit_owe_reply(op, groups_topics_ok_bound(c->broker));
        } else
            conn_fail(c, FERRY_EINTERNAL, "out of memory");
        return;
    }
    case PROTO_HELLO:
        commit_reply_error(c, f->request_id, FERRY_EINVALID, "handshake already done");
        return;
    case PROTO_SUBSCRIBE:
        groups_on_subscribe(c, f, wire_bytes);
        return;
    case PROTO_ACK:
        groups_on_ack(c, f, wire_bytes);
        return;
    case PROTO_NACK:
        groups_on_nack(c, f);
        return;
    case PROTO_TOUCH:
        groups_on_touch(c, f);
        return;
    case PROTO_CREDIT:
        groups_on_credit(c, f);
        return;
    case PROTO_UNSUBSCRIBE:
        groups_on_unsubscribe(c, f);
        return;
    case PROTO_SEEK:
        groups_on_seek(c, f, wire_bytes);
        return;
    case PROTO_GROUPS:
        groups_on_groups(c, f);
        return;
    case PROTO_REDRIVE:
        groups_on_redrive(c, f);
        return;
    case PROTO_FLOOR:
        groups_on_floor(c, f);
        return;
    case PROTO_PEEK:
        groups_on_peek(c, f);
        return;
    case PROTO_TOPIC_CONFIG:
        on_topic_config(c, f, wire_bytes);
        return;
    case PROTO_DELETE:
        groups_on_delete(c, f, wire_bytes);
        return;
    default: {
        char msg[64];
        snprintf(msg, sizeof(msg), "frame type 0x%02x is not sent by clients", f->type);
        conn_fail(c, FERRY_EUNKNOWN_TYPE, msg);
        return;
    }
    }
}
