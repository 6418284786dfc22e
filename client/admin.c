/*
 * admin.c - requests that are not publishes: ping, topics, server info.
 *
 * Each is a synchronous round trip through ferry__request, so it waits
 * behind any pipelined publishes (whose callbacks run first). Replies are
 * copied out of the read buffer inside their on_reply handler; nothing here
 * points into a libferry buffer after the call returns.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* An empty-bodied request (PING, TOPICS) answered by reply_type. */
static int simple_request(ferry_conn *c, uint8_t type, uint8_t reply_type, struct ferry__waiter *w)
{
    if (ferry__wbuf_reserve(c, PROTO_HEADER_BYTES) < 0)
        return ferry__seterr(c, FERRY_ENOMEM, "out of memory");
    uint32_t id = ferry__next_request_id(c);
    size_t start = c->wlen;
    struct proto_writer pw;
    proto_writer_init(&pw, c->wbuf + start, c->wcap - start);
    if (proto_encode_empty(&pw, type, id) < 0)
        return ferry__seterr(c, FERRY_EINVALID, "cannot encode a frame of type 0x%02x",
                             (unsigned)type);
    c->wlen += pw.len;
    return ferry__request(c, start, id, reply_type, 0, w, ferry__deadline(c->request_timeout_ms));
}

int ferry_ping(ferry_conn *c, uint64_t *rtt_us)
{
    if (!c)
        return FERRY_EINVALID;
    int rc = ferry__begin(c);
    if (rc < 0)
        return rc;
    int64_t t0 = ferry__now_us();
    struct ferry__waiter w = {0};
    rc = simple_request(c, PROTO_PING, PROTO_PONG, &w);
    if (rc == 0 && rtt_us)
        *rtt_us = (uint64_t)(ferry__now_us() - t0);
    return rc;
}

struct topics_out {
    ferry_topic_info *list;
    size_t count;
};

static int on_topics_ok(ferry_conn *c, struct ferry__waiter *w, const struct proto_frame *f)
{
    struct topics_out *out = w->ctx;
    const struct proto_topics_ok *t = &f->u.topics_ok;

    /* Never NULL on success, even for no topics, so callers need not care. */
    ferry_topic_info *list = calloc(t->count ? t->count : 1, sizeof *list);
    if (!list)
        return ferry__seterr(c, FERRY_ENOMEM, "out of memory for %u topics", (unsigned)t->count);

    struct proto_topic_iter it;
    struct proto_topic_info e;
    proto_topic_iter_init(&it, t);
    for (uint32_t i = 0; i < t->count; i++) {
        if (proto_topic_next(&it, &e) != 1 || e.name.len > PROTO_MAX_TOPIC) {
            free(list);
            return ferry__seterr(c, FERRY_EPROTOCOL, "a malformed TOPICS_OK entry");
        }
        ferry_topic_info *d = &list[i];
        memcpy(d->name, e.name.ptr, e.name.len);
        d->name[e.name.len] = '\0';
        d->head_seq = e.head_seq;
        d->first_seq = e.first_seq;
        d->message_count = e.message_count;
        d->bytes = e.bytes;
        d->created_ms = (int64_t)e.created_ms;
    }
    out->list = list;
    out->count = t->count;
    return 0;
}

int ferry_topics(ferry_conn *c, ferry_topic_info **out, size_t *count)
{
    if (!c)
        return FERRY_EINVALID;
    if (out)
        *out = NULL;
    if (count)
        *count = 0;
    int rc = ferry__begin(c);
    if (rc < 0)
        return rc;
    if (!out || !count)
        return ferry__seterr(c, FERRY_EINVALID, "out and count must not be NULL");

    struct topics_out res = {0};
    struct ferry__waiter w = {.on_reply = on_topics_ok, .ctx = &res};
    rc = simple_request(c, PROTO_TOPICS, PROTO_TOPICS_OK, &w);
    if (rc < 0) {
        free(res.list); /* a reply may have arrived before the connection died */
        return rc;
    }
    *out = res.list;
    *count = res.count;
    return 0;
}

void ferry_topics_free(ferry_topic_info *topics)
{
    free(topics);
}

void ferry_server_info_get(const ferry_conn *c, ferry_server_info *out)
{
    if (!c || !out)
        return;
    *out = c->info;
}
