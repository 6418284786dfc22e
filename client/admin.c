/*
 * admin.c - requests that are neither publishing nor consuming: ping,
 * topics (list, retention, delete), consumer groups (list, seek, delete),
 * peek, server info.
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
    if (c->js)
        return ferry__js_ping(c, rtt_us);
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
        if (e.has_config) {
            d->has_retention = 1;
            d->max_age_ms = e.max_age_ms;
            d->max_count = e.max_count;
            d->max_bytes = e.max_bytes;
            d->delete_acked = e.delete_acked != 0;
            d->publish_rate = e.publish_rate;
        }
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

struct groups_out {
    ferry_group_info *list;
    size_t count;
};

static int on_groups_ok(ferry_conn *c, struct ferry__waiter *w, const struct proto_frame *f)
{
    struct groups_out *out = w->ctx;
    const struct proto_groups_ok *g = &f->u.groups_ok;

    ferry_group_info *list = calloc(g->count ? g->count : 1, sizeof *list);
    if (!list)
        return ferry__seterr(c, FERRY_ENOMEM, "out of memory for %u groups", (unsigned)g->count);

    struct proto_group_iter it;
    struct proto_group_info e;
    proto_group_iter_init(&it, g);
    for (uint32_t i = 0; i < g->count; i++) {
        if (proto_group_next(&it, &e) != 1 || e.topic.len > PROTO_MAX_TOPIC ||
            e.group.len > PROTO_MAX_GROUP) {
            free(list);
            return ferry__seterr(c, FERRY_EPROTOCOL, "a malformed GROUPS_OK entry");
        }
        ferry_group_info *d = &list[i];
        memcpy(d->topic, e.topic.ptr, e.topic.len);
        d->topic[e.topic.len] = '\0';
        memcpy(d->group, e.group.ptr, e.group.len);
        d->group[e.group.len] = '\0';
        d->cursor = e.cursor;
        d->ack_floor = e.ack_floor;
        d->lag = e.lag;
        d->in_flight = e.in_flight;
        d->consumers = e.consumers;
        d->redelivered = e.redelivered;
        d->dead_lettered = e.dead_lettered;
        d->oldest_unacked_ms = e.oldest_unacked_ms;
        d->ack_wait_ms = e.ack_wait_ms;
        d->max_deliveries = e.max_deliveries;
    }
    out->list = list;
    out->count = g->count;
    return 0;
}

int ferry_groups(ferry_conn *c, const char *topic, ferry_group_info **out, size_t *count)
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
    size_t tlen = topic ? strlen(topic) : 0;
    if (tlen > 0 && (rc = ferry__check_names(c, topic, NULL)) < 0)
        return rc;

    if (ferry__wbuf_reserve(c, PROTO_HEADER_BYTES + 2 + tlen) < 0)
        return ferry__seterr(c, FERRY_ENOMEM, "out of memory");
    uint32_t id = ferry__next_request_id(c);
    size_t start = c->wlen;
    struct proto_writer pw;
    proto_writer_init(&pw, c->wbuf + start, c->wcap - start);
    if (proto_encode_groups(&pw, id, topic, tlen) < 0)
        return ferry__seterr(c, FERRY_EINVALID, "cannot encode GROUPS");
    c->wlen += pw.len;

    struct groups_out res = {0};
    struct ferry__waiter w = {.on_reply = on_groups_ok, .ctx = &res};
    rc = ferry__request(c, start, id, PROTO_GROUPS_OK, 0, &w,
                        ferry__deadline(c->request_timeout_ms));
    if (rc < 0) {
        free(res.list);
        return rc;
    }
    *out = res.list;
    *count = res.count;
    return 0;
}

void ferry_groups_free(ferry_group_info *groups)
{
    free(groups);
}

/* TOPIC_CONFIG is answered, once durable, by ACK_OK without entries. */
static int on_topic_config_ok(ferry_conn *c, struct ferry__waiter *w, const struct proto_frame *f)
{
    (void)w;
    uint64_t seq = 0;
    return ferry__ack_ok_status(c, f, 0, &seq);
}

int ferry_topic_config(ferry_conn *c, const char *topic, const ferry_retention *r)
{
    if (!c)
        return FERRY_EINVALID;
    int rc = ferry__begin(c);
    if (rc < 0)
        return rc;
    rc = ferry__check_names(c, topic, NULL);
    if (rc < 0)
        return rc;
    ferry_retention dflt = {FERRY_RETENTION_DEFAULT, FERRY_RETENTION_DEFAULT,
                            FERRY_RETENTION_DEFAULT, FERRY_DELETE_ACKED_DEFAULT};
    if (!r)
        r = &dflt;
    if (r->delete_acked < FERRY_DELETE_ACKED_DEFAULT || r->delete_acked > 1)
        return ferry__seterr(c, FERRY_EINVALID, "delete_acked %d; use 0, 1 or -1 (default)",
                             r->delete_acked);

    size_t tlen = strlen(topic);
    struct proto_topic_config tc = {
        .topic = {(const uint8_t *)topic, tlen},
        .max_age_ms = r->max_age_ms,
        .max_count = r->max_count,
        .max_bytes = r->max_bytes,
        .delete_acked = r->delete_acked < 0 ? PROTO_DELETE_ACKED_DEFAULT : (uint8_t)r->delete_acked,
    };
    if (ferry__wbuf_reserve(c, PROTO_HEADER_BYTES + 2 + tlen + 3 * 8 + 1) < 0)
        return ferry__seterr(c, FERRY_ENOMEM, "out of memory");
    uint32_t id = ferry__next_request_id(c);
    size_t start = c->wlen;
    struct proto_writer pw;
    proto_writer_init(&pw, c->wbuf + start, c->wcap - start);
    if (proto_encode_topic_config(&pw, id, &tc) < 0)
        return ferry__seterr(c, FERRY_EINVALID, "cannot encode TOPIC_CONFIG");
    c->wlen += pw.len;

    struct ferry__waiter w = {.on_reply = on_topic_config_ok};
    return ferry__request(c, start, id, PROTO_ACK_OK, 0, &w,
                          ferry__deadline(c->request_timeout_ms));
}

/* DELETE is answered, once durable, by DELETE_OK: what went. */
static int on_delete_ok(ferry_conn *c, struct ferry__waiter *w, const struct proto_frame *f)
{
    (void)c;
    *(struct proto_delete_ok *)w->ctx = f->u.delete_ok;
    return 0;
}

#define DELETE_RESULT_SIZE_0 FERRY__END_OF(ferry_delete_result, groups)

/* One DELETE of topic (group NULL) or of one group of it. */
static int delete_request(ferry_conn *c, const char *topic, const char *group, int flags,
                          ferry_delete_result *out)
{
    int rc = ferry__begin(c);
    if (rc < 0)
        return rc;
    rc = ferry__check_names(c, topic, group);
    if (rc < 0)
        return rc;
    if (flags & ~FERRY_DELETE_FORCE)
        return ferry__seterr(c, FERRY_EINVALID, "unknown flags 0x%x; use 0 or FERRY_DELETE_FORCE",
                             (unsigned)flags);
    if (out && out->size < DELETE_RESULT_SIZE_0)
        return ferry__seterr(c, FERRY_EINVALID,
                             "ferry_delete_result.size is %zu; set it to "
                             "sizeof(ferry_delete_result)",
                             out->size);

    size_t tlen = strlen(topic), glen = group ? strlen(group) : 0;
    struct proto_delete d = {
        .topic = {(const uint8_t *)topic, tlen},
        .group = {(const uint8_t *)(group ? group : ""), glen},
        .flags = (flags & FERRY_DELETE_FORCE) ? PROTO_DELETE_FORCE : 0,
    };
    if (ferry__wbuf_reserve(c, PROTO_HEADER_BYTES + 2 + tlen + 2 + glen) < 0)
        return ferry__seterr(c, FERRY_ENOMEM, "out of memory");
    uint32_t id = ferry__next_request_id(c);
    size_t start = c->wlen;
    struct proto_writer pw;
    proto_writer_init(&pw, c->wbuf + start, c->wcap - start);
    if (proto_encode_delete(&pw, id, &d) < 0)
        return ferry__seterr(c, FERRY_EINVALID, "cannot encode DELETE");
    c->wlen += pw.len;

    struct proto_delete_ok res = {0};
    struct ferry__waiter w = {.on_reply = on_delete_ok, .ctx = &res};
    rc = ferry__request(c, start, id, PROTO_DELETE_OK, 0, &w,
                        ferry__deadline(c->request_timeout_ms));
    if (rc == 0 && out) {
        out->messages = res.messages;
        out->groups = res.groups;
    }
    return rc;
}

int ferry_topic_delete(ferry_conn *c, const char *topic, int flags, ferry_delete_result *out)
{
    if (!c)
        return FERRY_EINVALID;
    return delete_request(c, topic, NULL, flags, out);
}

int ferry_group_delete(ferry_conn *c, const char *topic, const char *group,
                       ferry_delete_result *out)
{
    if (!c)
        return FERRY_EINVALID;
    return delete_request(c, topic, group ? group : "", 0, out);
}

/* SEEK is answered by ACK_OK with one entry: the new cursor and a code. */
struct seek_out {
    uint64_t cursor;
    int entry_failed;
};

static int on_seek_ok(ferry_conn *c, struct ferry__waiter *w, const struct proto_frame *f)
{
    struct seek_out *out = w->ctx;
    const struct proto_ack_ok *a = &f->u.ack_ok;
    struct proto_ack_ok_iter it;
    uint64_t seq;
    uint16_t code;
    proto_ack_ok_iter_init(&it, a);
    if (a->count != 1 || proto_ack_ok_next(&it, &seq, &code) != 1)
        return ferry__seterr(c, FERRY_EPROTOCOL, "ACK_OK with %u entries for a SEEK",
                             (unsigned)a->count);
    if (code > FERRY_WIRE_CODE_MAX)
        return ferry__seterr(c, FERRY_EPROTOCOL, "ACK_OK with code %u for a SEEK", (unsigned)code);
    if (code != 0) {
        out->entry_failed = 1;
        return -(int)code;
    }
    out->cursor = seq;
    return 0;
}

int ferry_seek(ferry_conn *c, const char *topic, const char *group, ferry_start start,
               uint64_t value, uint64_t *cursor_out)
{
    if (!c)
        return FERRY_EINVALID;
    int rc = ferry__begin(c);
    if (rc < 0)
        return rc;
    rc = ferry__check_names(c, topic, group ? group : "");
    if (rc < 0)
        return rc;
    if ((unsigned)start > FERRY_START_TIME)
        return ferry__seterr(c, FERRY_EINVALID, "unknown start %d", (int)start);
    if (c->js) {
        if (cursor_out)
            *cursor_out = 0; /* JetStream does not say where the new consumer starts */
        return ferry__js_seek(c, topic, group, start, value);
    }

    size_t tlen = strlen(topic), glen = strlen(group);
    struct proto_seek s = {
        .topic = {(const uint8_t *)topic, tlen},
        .group = {(const uint8_t *)group, glen},
        .start = (uint8_t)start,
        .value = value,
    };
    if (ferry__wbuf_reserve(c, PROTO_HEADER_BYTES + 2 + tlen + 2 + glen + 1 + 8) < 0)
        return ferry__seterr(c, FERRY_ENOMEM, "out of memory");
    uint32_t id = ferry__next_request_id(c);
    size_t fstart = c->wlen;
    struct proto_writer pw;
    proto_writer_init(&pw, c->wbuf + fstart, c->wcap - fstart);
    if (proto_encode_seek(&pw, id, &s) < 0)
        return ferry__seterr(c, FERRY_EINVALID, "cannot encode SEEK");
    c->wlen += pw.len;

    struct seek_out res = {0};
    struct ferry__waiter w = {.on_reply = on_seek_ok, .ctx = &res};
    rc = ferry__request(c, fstart, id, PROTO_ACK_OK, 0, &w, ferry__deadline(c->request_timeout_ms));
    if (rc < 0 && res.entry_failed)
        ferry__seterr(c, rc, "topic %s, group %s", topic, group);
    if (rc == 0 && cursor_out)
        *cursor_out = res.cursor;
    return rc;
}

int ferry_redrive(ferry_conn *c, const char *topic, const char *group, uint64_t dead_seq,
                  uint64_t *seq_out)
{
    if (!c || !topic)
        return FERRY_EINVALID;
    int rc = ferry__begin(c);
    if (rc < 0)
        return rc;
    size_t tlen = strlen(topic), glen = group ? strlen(group) : 0;
    if (tlen > PROTO_MAX_TOPIC || glen > PROTO_MAX_GROUP)
        return ferry__seterr(c, FERRY_EINVALID, "topic or group name too long");
    struct proto_redrive r = {
        .topic = {(const uint8_t *)topic, tlen},
        .group = {(const uint8_t *)(group ? group : ""), glen},
        .dead_seq = dead_seq,
    };
    if (ferry__wbuf_reserve(c, PROTO_HEADER_BYTES + 2 + tlen + 2 + glen + 8) < 0)
        return ferry__seterr(c, FERRY_ENOMEM, "out of memory");
    uint32_t id = ferry__next_request_id(c);
    size_t fstart = c->wlen;
    struct proto_writer pw;
    proto_writer_init(&pw, c->wbuf + fstart, c->wcap - fstart);
    if (proto_encode_redrive(&pw, id, &r) < 0)
        return ferry__seterr(c, FERRY_EINVALID, "cannot encode REDRIVE");
    c->wlen += pw.len;

    struct seek_out res = {0};
    struct ferry__waiter w = {.on_reply = on_seek_ok, .ctx = &res};
    rc = ferry__request(c, fstart, id, PROTO_ACK_OK, 0, &w, ferry__deadline(c->request_timeout_ms));
    if (rc == 0 && seq_out)
        *seq_out = res.cursor;
    return rc;
}

struct floor_out {
    uint64_t floor;
    uint64_t *keep;
    size_t cap, n;
};

static int on_floor_ok(ferry_conn *c, struct ferry__waiter *w, const struct proto_frame *f)
{
    (void)c;
    struct floor_out *out = w->ctx;
    const struct proto_floor_ok *r = &f->u.floor_ok;
    out->floor = r->floor;
    out->n = 0;
    for (uint16_t i = 0; i < r->count; i++) {
        uint64_t seq = proto_rd64(r->seqs.ptr + 8 * (size_t)i);
        if (out->n == out->cap) {
            out->floor = seq; /* no room: the floor stops at the first left out */
            break;
        }
        out->keep[out->n++] = seq;
    }
    return 0;
}

int ferry_group_floor(ferry_conn *c, const char *topic, const char *group, uint64_t *floor_out,
                      uint64_t *keep, size_t keep_cap, size_t *nkeep)
{
    if (!c || !topic || !group || !floor_out || !nkeep || (keep_cap && !keep))
        return FERRY_EINVALID;
    int rc = ferry__begin(c);
    if (rc < 0)
        return rc;
    size_t tlen = strlen(topic), glen = strlen(group);
    if (tlen > PROTO_MAX_TOPIC || glen > PROTO_MAX_GROUP)
        return ferry__seterr(c, FERRY_EINVALID, "topic or group name too long");
    struct proto_floor r = {
        .topic = {(const uint8_t *)topic, tlen},
        .group = {(const uint8_t *)group, glen},
    };
    if (ferry__wbuf_reserve(c, PROTO_HEADER_BYTES + 2 + tlen + 2 + glen) < 0)
        return ferry__seterr(c, FERRY_ENOMEM, "out of memory");
    uint32_t id = ferry__next_request_id(c);
    size_t fstart = c->wlen;
    struct proto_writer pw;
    proto_writer_init(&pw, c->wbuf + fstart, c->wcap - fstart);
    if (proto_encode_floor(&pw, id, &r) < 0)
        return ferry__seterr(c, FERRY_EINVALID, "cannot encode FLOOR");
    c->wlen += pw.len;

    struct floor_out res = {.keep = keep, .cap = keep_cap};
    struct ferry__waiter w = {.on_reply = on_floor_ok, .ctx = &res};
    rc = ferry__request(c, fstart, id, PROTO_FLOOR_OK, 0, &w,
                        ferry__deadline(c->request_timeout_ms));
    if (rc == 0) {
        *floor_out = res.floor;
        *nkeep = res.n;
    }
    return rc;
}

int ferry__sub_floor(ferry_sub *s, uint64_t *floor, uint64_t **keep, size_t *nkeep)
{
    *keep = NULL;
    *nkeep = 0;
    if (!s->c)
        return FERRY_ECLOSED;
    if (s->js)
        return ferry__js_floor(s, floor); /* nothing redrivable: dead letters stay */
    uint64_t *k = malloc(FERRY_FLOOR_KEEP_MAX * sizeof(*k));
    if (!k)
        return FERRY_ENOMEM;
    int rc = ferry_group_floor(s->c, s->topic, s->group, floor, k, FERRY_FLOOR_KEEP_MAX, nkeep);
    if (rc < 0) {
        free(k);
        return rc;
    }
    *keep = k;
    return 0;
}

int ferry__keep_valid(uint64_t floor, const uint64_t *keep, size_t nkeep)
{
    if (nkeep && !keep)
        return 0;
    for (size_t i = 0; i < nkeep; i++)
        if (keep[i] >= floor || (i && keep[i] <= keep[i - 1]))
            return 0;
    return 1;
}

/* ---- peek ---- */

#define PEEK_OPTIONS_SIZE_0 sizeof(ferry_peek_options)

/* One PEEK_OK entry copied into one allocation, laid out like a received
 * delivery (consume.c) with no subscription, so ferry_delivery_free frees
 * it. */
static ferry_delivery *peek_copy(const struct proto_deliver *pd, const char *topic, size_t tlen)
{
    struct proto_header_iter it;
    struct proto_header h;
    size_t hdr_off = sizeof(struct ferry__delivery);
    hdr_off =
        (hdr_off + _Alignof(ferry_header) - 1) / _Alignof(ferry_header) * _Alignof(ferry_header);
    size_t bytes_off = hdr_off + (size_t)pd->header_count * sizeof(ferry_header);
    size_t total = bytes_off + tlen + 1 + pd->id.len + 1 + pd->key.len + 1 + pd->payload.len + 1;
    proto_deliver_header_iter_init(&it, pd);
    while (proto_header_next(&it, &h) == 1)
        total += h.name.len + 1 + h.value.len + 1;
    unsigned char *block = calloc(1, total);
    if (!block)
        return NULL;
    struct ferry__delivery *dl = (struct ferry__delivery *)block;
    ferry_header *hdrs = (ferry_header *)(block + hdr_off);
    unsigned char *p = block + bytes_off;
    ferry_delivery *d = &dl->pub;
#define COPY_OUT(dst, ptr_, len_)                                                                  \
    do {                                                                                           \
        if (len_)                                                                                  \
            memcpy(p, (ptr_), (len_));                                                             \
        p[(len_)] = '\0';                                                                          \
        (dst) = (const void *)p;                                                                   \
        p += (len_) + 1;                                                                           \
    } while (0)
    const void *v;
    COPY_OUT(v, topic, tlen);
    d->topic = v;
    COPY_OUT(v, pd->id.ptr, pd->id.len);
    d->id = v;
    COPY_OUT(d->key, pd->key.ptr, pd->key.len);
    d->key_len = pd->key.len;
    size_t i = 0;
    proto_deliver_header_iter_init(&it, pd);
    while (i < pd->header_count && proto_header_next(&it, &h) == 1) {
        COPY_OUT(v, h.name.ptr, h.name.len);
        hdrs[i].name = v;
        COPY_OUT(hdrs[i].value, h.value.ptr, h.value.len);
        hdrs[i].value_len = h.value.len;
        i++;
    }
    COPY_OUT(d->payload, pd->payload.ptr, pd->payload.len);
    d->payload_len = pd->payload.len;
#undef COPY_OUT
    d->headers = i ? hdrs : NULL;
    d->header_count = i;
    d->seq = pd->seq;
    d->ts_ms = (int64_t)pd->ts_ms;
    return d;
}

struct peek_out {
    ferry_peek_result *r;
    const char *topic;
    size_t tlen;
};

static int on_peek_ok(ferry_conn *c, struct ferry__waiter *w, const struct proto_frame *f)
{
    struct peek_out *out = w->ctx;
    const struct proto_peek_ok *p = &f->u.peek_ok;
    ferry_peek_result *r = out->r;
    r->msgs = calloc(p->count ? p->count : 1, sizeof *r->msgs);
    if (!r->msgs)
        return ferry__seterr(c, FERRY_ENOMEM, "out of memory");
    struct proto_peek_iter it;
    struct proto_deliver d;
    proto_peek_iter_init(&it, p);
    while (proto_peek_next(&it, &d)) {
        ferry_delivery *m = peek_copy(&d, out->topic, out->tlen);
        if (!m) {
            ferry_peek_result_free(r);
            return ferry__seterr(c, FERRY_ENOMEM, "out of memory");
        }
        r->msgs[r->count++] = m;
    }
    r->next_seq = p->next_seq;
    r->head_seq = p->head_seq;
    return 0;
}

int ferry_peek(ferry_conn *c, const char *topic, const ferry_peek_options *opts,
               ferry_peek_result *out)
{
    if (out)
        memset(out, 0, sizeof *out);
    if (!c || !topic || !out)
        return FERRY_EINVALID;
    int rc = ferry__begin(c);
    if (rc < 0)
        return rc;
    ferry_peek_options o = FERRY_PEEK_OPTIONS_INIT;
    char why[160];
    if (opts && (rc = ferry__copy_options(&o, sizeof o, opts, PEEK_OPTIONS_SIZE_0,
                                          "ferry_peek_options", why, sizeof why)) < 0)
        return ferry__seterr(c, rc, "%s", why);
    if (o.max_messages == 0)
        o.max_messages = 100;
    if (o.max_messages > FERRY_PEEK_MAX || o.from_time_ms < 0)
        return ferry__seterr(c, FERRY_EINVALID, "max_messages is 1-%d, from_time_ms >= 0",
                             FERRY_PEEK_MAX);
    size_t tlen = strlen(topic);
    if (proto_sub_topic_valid((const uint8_t *)topic, tlen) != 0)
        return ferry__seterr(c, FERRY_EINVALID_TOPIC, "invalid topic name");
    struct proto_peek q = {
        .topic = {(const uint8_t *)topic, tlen},
        .from_seq = o.from_seq,
        .from_time_ms = (uint64_t)o.from_time_ms,
        .max_messages = o.max_messages,
        .max_bytes = o.max_bytes,
    };
    if (ferry__wbuf_reserve(c, PROTO_HEADER_BYTES + 2 + tlen + 24) < 0)
        return ferry__seterr(c, FERRY_ENOMEM, "out of memory");
    uint32_t id = ferry__next_request_id(c);
    size_t fstart = c->wlen;
    struct proto_writer pw;
    proto_writer_init(&pw, c->wbuf + fstart, c->wcap - fstart);
    if (proto_encode_peek(&pw, id, &q) < 0)
        return ferry__seterr(c, FERRY_EINVALID, "cannot encode PEEK");
    c->wlen += pw.len;
    struct peek_out res = {.r = out, .topic = topic, .tlen = tlen};
    struct ferry__waiter w = {.on_reply = on_peek_ok, .ctx = &res};
    rc =
        ferry__request(c, fstart, id, PROTO_PEEK_OK, 0, &w, ferry__deadline(c->request_timeout_ms));
    if (rc < 0)
        ferry_peek_result_free(out);
    return rc;
}

void ferry_peek_result_free(ferry_peek_result *r)
{
    if (!r)
        return;
    for (size_t i = 0; r->msgs && i < r->count; i++)
        ferry_delivery_free(r->msgs[i]);
    free(r->msgs);
    memset(r, 0, sizeof *r);
}

void ferry_server_info_get(const ferry_conn *c, ferry_server_info *out)
{
    if (!c || !out)
        return;
    *out = c->info;
}
