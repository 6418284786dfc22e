/*
 * publish.c - publishing: validation, encoding, sync, batch and pipelined.
 *
 * Every publish becomes one PUBLISH frame appended to the write buffer.
 * Before it is committed there the frame is decoded back and each message
 * run through proto_msg_check with the broker's announced limits, the very
 * checks the broker applies, so a bad topic, id or size fails at once with
 * a clear message and no round trip. What the codec cannot even represent
 * (NULL pointers, fields over their wire maxima) is rejected before
 * encoding.
 *
 * Synchronous publishes queue a waiter behind any pipelined ones and wait
 * for it, so the acks before it are dispatched (callbacks run) first.
 *
 * Pipelined publishes (ferry_publish_async) are bounded twice: by
 * max_in_flight unacknowledged requests and by FERRY__WBUF_HIGH_BYTES
 * buffered unsent. The write policy: write at once when the pipeline was
 * idle, when FERRY__COALESCE_BYTES are buffered, or when nothing was written
 * for FERRY__LINGER_US; otherwise leave the frame for the next write, so a
 * tight loop of small publishes leaves in few send() calls.
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* Builds the codec's view of msg (headers into hdrs) after checking what the
 * encoder cannot represent. where is "" or "message N: " for errmsg. */
static int convert_msg(ferry_conn *c, const char *where, const ferry_msg *m, struct proto_msg *pm,
                       struct proto_header *hdrs)
{
    memset(pm, 0, sizeof *pm);
    if (!m->topic)
        return ferry__seterr(c, FERRY_EINVALID_TOPIC, "%sno topic", where);
    size_t tlen = strlen(m->topic);
    if (tlen == 0 || tlen > PROTO_MAX_TOPIC)
        return ferry__seterr(c, FERRY_EINVALID_TOPIC, "%stopic name is %zu bytes; use 1-%u", where,
                             tlen, (unsigned)PROTO_MAX_TOPIC);
    size_t idlen = 0;
    if (m->id) {
        idlen = strlen(m->id);
        if (idlen == 0)
            return ferry__seterr(c, FERRY_EINVALID_ID,
                                 "%sempty message id (leave id NULL to have the broker assign one)",
                                 where);
        if (idlen > PROTO_MAX_ID)
            return ferry__seterr(c, FERRY_EINVALID_ID, "%smessage id is %zu bytes; at most %u",
                                 where, idlen, (unsigned)PROTO_MAX_ID);
    }
    if (m->key_len > PROTO_MAX_KEY)
        return ferry__seterr(c, FERRY_EINVALID, "%skey is %zu bytes; at most %u", where, m->key_len,
                             (unsigned)PROTO_MAX_KEY);
    if ((m->key_len && !m->key) || (m->payload_len && !m->payload))
        return ferry__seterr(c, FERRY_EINVALID, "%sNULL key or payload with a non-zero length",
                             where);
    if (m->payload_len > UINT32_MAX)
        return ferry__seterr(c, FERRY_EMESSAGE_TOO_LARGE, "%spayload is %zu bytes", where,
                             m->payload_len);
    if (m->header_count > PROTO_MAX_HEADERS)
        return ferry__seterr(c, FERRY_EINVALID, "%s%zu headers; at most %u", where, m->header_count,
                             (unsigned)PROTO_MAX_HEADERS);
    if (m->header_count && !m->headers)
        return ferry__seterr(c, FERRY_EINVALID, "%sNULL headers with header_count %zu", where,
                             m->header_count);
    if (m->deliver_at_ms < 0)
        return ferry__seterr(c, FERRY_EINVALID, "%snegative deliver_at_ms", where);

    for (size_t i = 0; i < m->header_count; i++) {
        const ferry_header *h = &m->headers[i];
        size_t nlen = h->name ? strlen(h->name) : 0;
        if (nlen == 0 || nlen > PROTO_MAX_HEADER_NAME)
            return ferry__seterr(c, FERRY_EINVALID, "%sheader %zu: name must be 1-%u bytes", where,
                                 i, (unsigned)PROTO_MAX_HEADER_NAME);
        if (h->value_len > PROTO_MAX_HEADER_VALUE || (h->value_len && !h->value))
            return ferry__seterr(c, FERRY_EINVALID,
                                 "%sheader \"%s\": value must be 0-%u bytes and not NULL", where,
                                 h->name, (unsigned)PROTO_MAX_HEADER_VALUE);
        hdrs[i].name = (struct proto_slice){(const uint8_t *)h->name, nlen};
        hdrs[i].value = (struct proto_slice){h->value, h->value_len};
    }

    pm->topic = (struct proto_slice){(const uint8_t *)m->topic, tlen};
    pm->id = (struct proto_slice){(const uint8_t *)m->id, idlen};
    pm->key = (struct proto_slice){m->key, m->key_len};
    pm->deliver_at_ms = (uint64_t)m->deliver_at_ms;
    pm->header_count = (uint16_t)m->header_count;
    pm->payload = (struct proto_slice){m->payload, m->payload_len};
    return 0;
}

static void where_fmt(char *buf, size_t len, size_t count, size_t i)
{
    if (count > 1)
        snprintf(buf, len, "message %zu: ", i);
    else
        buf[0] = '\0';
}

/* The broker's own checks, run on the frame as it will be sent. */
static int check_encoded(ferry_conn *c, const uint8_t *frame, size_t len, size_t count)
{
    struct proto_frame f;
    ptrdiff_t n = proto_decode(frame, len, c->info.max_frame_bytes, &f);
    if (n != (ptrdiff_t)len || f.type != PROTO_PUBLISH)
        return ferry__seterr(c, FERRY_EINVALID, "the encoded PUBLISH does not decode (%s)",
                             n < 0 ? ferry_strerror((int)n) : "length mismatch");

    struct proto_msg_iter it;
    struct proto_msg m;
    proto_msg_iter_init(&it, &f.u.publish);
    for (size_t i = 0; proto_msg_next(&it, &m) == 1; i++) {
        int rc = proto_msg_check(&m, c->info.max_message_bytes);
        if (rc == 0)
            continue;
        char where[32];
        where_fmt(where, sizeof where, count, i);
        switch (rc) {
        case FERRY_EINVALID_TOPIC:
            return ferry__seterr(c, rc,
                                 "%s\"%.*s\": a topic is 1-%u of [A-Za-z0-9._-], starting "
                                 "with a letter or digit",
                                 where, (int)m.topic.len, (const char *)m.topic.ptr,
                                 (unsigned)PROTO_MAX_PUBLISH_TOPIC);
        case FERRY_EINVALID_ID:
            return ferry__seterr(
                c, rc, "%s\"%.*s\": an id is 1-%u printable ASCII characters, no spaces", where,
                (int)m.id.len, (const char *)m.id.ptr, (unsigned)PROTO_MAX_ID);
        case FERRY_EMESSAGE_TOO_LARGE:
            return ferry__seterr(c, rc,
                                 "%smessage is %llu bytes (key + headers + payload); the broker "
                                 "accepts at most %u",
                                 where, (unsigned long long)proto_msg_size(&m),
                                 (unsigned)c->info.max_message_bytes);
        default:
            return ferry__seterr(c, rc, "%s%s", where, ferry_strerror(rc));
        }
    }
    return 0;
}

/* Appends one PUBLISH of msgs[0..count) with request_id at wlen. On failure
 * the write buffer is unchanged and errmsg says which message and why. */
static int encode_publish(ferry_conn *c, const ferry_msg *msgs, size_t count, uint32_t request_id)
{
    struct proto_msg pm;
    struct proto_header hdrs[PROTO_MAX_HEADERS];
    char where[32];

    if (count == 0 || !msgs)
        return ferry__seterr(c, FERRY_EINVALID, "no messages");
    if (count > c->info.max_batch)
        return ferry__seterr(c, FERRY_EINVALID, "batch of %zu messages; the broker accepts %u",
                             count, (unsigned)c->info.max_batch);

    /* With a producer id, messages that carry a producer_seq go in a
     * producer frame; a batch is all one or all the other. */
    int producer = c->producer_id[0] && msgs[0].producer_seq != 0;
    size_t plen = producer ? strlen(c->producer_id) : 0;
    size_t total = PROTO_HEADER_BYTES + 2 + (producer ? 2 + plen : 0);
    for (size_t i = 0; i < count; i++) {
        where_fmt(where, sizeof where, count, i);
        if ((msgs[i].producer_seq != 0) != (msgs[0].producer_seq != 0))
            return ferry__seterr(c, FERRY_EINVALID,
                                 "%seither every message of a batch has a producer_seq or none",
                                 where);
        if (msgs[i].producer_seq && !c->producer_id[0])
            return ferry__seterr(c, FERRY_EINVALID,
                                 "%sproducer_seq needs ferry_options.producer_id", where);
        int rc = convert_msg(c, where, &msgs[i], &pm, hdrs);
        if (rc < 0)
            return rc;
        total += proto_publish_msg_bytes(&pm, hdrs) + (producer ? 8 : 0);
    }
    if (total - 4 > c->info.max_frame_bytes) {
        if (count == 1)
            return ferry__seterr(c, FERRY_EMESSAGE_TOO_LARGE,
                                 "message encodes to %zu bytes; the broker accepts frames of at "
                                 "most %u",
                                 total, (unsigned)c->info.max_frame_bytes);
        return ferry__seterr(c, FERRY_EFRAME_TOO_LARGE,
                             "batch of %zu messages encodes to %zu bytes; the broker accepts "
                             "frames of at most %u: publish smaller batches",
                             count, total, (unsigned)c->info.max_frame_bytes);
    }
    if (ferry__wbuf_reserve(c, total) < 0)
        return ferry__seterr(c, FERRY_ENOMEM, "out of memory for a %zu-byte frame", total);

    struct proto_writer w;
    proto_writer_init(&w, c->wbuf + c->wlen, total);
    size_t start = producer ? proto_publish_begin_producer(&w, request_id, c->producer_id, plen)
                            : proto_publish_begin(&w, request_id);
    for (size_t i = 0; i < count; i++) {
        convert_msg(c, "", &msgs[i], &pm, hdrs); /* passed above */
        if (producer)
            proto_publish_add_seq(&w, msgs[i].producer_seq, &pm, hdrs);
        else
            proto_publish_add(&w, &pm, hdrs);
    }
    if (proto_publish_end(&w, start, (uint16_t)count) < 0 || w.len != total)
        return ferry__seterr(c, FERRY_EINVALID, "cannot encode PUBLISH (%zu of %zu bytes)", w.len,
                             total);

    int rc = check_encoded(c, c->wbuf + c->wlen, w.len, count);
    if (rc < 0)
        return rc;
    c->wlen += w.len;
    return 0;
}

struct batch_out {
    ferry_ack *acks; /* may be NULL */
    size_t count;
};

static int on_publish_ack(ferry_conn *c, struct ferry__waiter *w, const struct proto_frame *f)
{
    struct batch_out *out = w->ctx;
    const struct proto_publish_ack *pa = &f->u.publish_ack;
    if (pa->count != out->count)
        return ferry__seterr(c, FERRY_EPROTOCOL, "%u acks for a publish of %zu messages",
                             (unsigned)pa->count, out->count);
    struct proto_ack_iter it;
    struct proto_ack_entry e;
    proto_ack_iter_init(&it, pa);
    for (size_t i = 0; i < out->count; i++) {
        if (proto_ack_next(&it, &e) != 1 || e.id.len > PROTO_MAX_ID)
            return ferry__seterr(c, FERRY_EPROTOCOL, "a malformed ack entry");
        if (!out->acks)
            continue;
        ferry_ack *a = &out->acks[i];
        a->seq = e.seq;
        a->duplicate = (e.flags & PROTO_ACK_DUPLICATE) != 0;
        memcpy(a->id, e.id.ptr, e.id.len);
        a->id[e.id.len] = '\0';
    }
    return 0;
}

int ferry_publish_batch(ferry_conn *c, const ferry_msg *msgs, size_t count, ferry_ack *acks)
{
    if (!c)
        return FERRY_EINVALID;
    int rc = ferry__begin(c);
    if (rc < 0)
        return rc;

    uint32_t id = ferry__next_request_id(c);
    size_t start = c->wlen;
    rc = encode_publish(c, msgs, count, id);
    if (rc < 0)
        return rc;

    struct batch_out out = {acks, count};
    struct ferry__waiter w = {.on_reply = on_publish_ack, .ctx = &out};
    return ferry__request(c, start, id, PROTO_PUBLISH_ACK, (uint16_t)count, &w,
                          ferry__deadline(c->request_timeout_ms));
}

int ferry_publish(ferry_conn *c, const ferry_msg *msg, ferry_ack *ack)
{
    return ferry_publish_batch(c, msg, 1, ack);
}

static int has_room(const ferry_conn *c, const void *arg)
{
    (void)arg;
    return c->async_in_flight < c->max_in_flight && c->wlen - c->wpos < FERRY__WBUF_HIGH_BYTES / 2;
}

int ferry_publish_async(ferry_conn *c, const ferry_msg *msg, ferry_publish_cb cb, void *userdata)
{
    if (!c)
        return FERRY_EINVALID;
    int rc = ferry__begin(c);
    if (rc < 0)
        return rc;
    if (!msg)
        return ferry__seterr(c, FERRY_EINVALID, "no message");

    if (c->async_in_flight >= c->max_in_flight || c->wlen - c->wpos >= FERRY__WBUF_HIGH_BYTES) {
        rc = ferry__pump(c, ferry__deadline(c->request_timeout_ms), has_room, NULL);
        if (rc == FERRY_ETIMEOUT)
            return ferry__seterr(c, rc,
                                 "%zu publishes unacknowledged and no ack within the request "
                                 "timeout",
                                 c->async_in_flight);
        if (rc < 0)
            return rc;
    }

    uint32_t id = ferry__next_request_id(c);
    size_t start = c->wlen;
    rc = encode_publish(c, msg, 1, id);
    if (rc < 0)
        return rc;
    struct ferry__pending p = {
        .request_id = id,
        .reply_type = PROTO_PUBLISH_ACK,
        .async = 1,
        .count = 1,
        .cb = cb,
        .userdata = userdata,
    };
    if (ferry__pending_push(c, &p) < 0) {
        c->wlen = start;
        return ferry__seterr(c, FERRY_ENOMEM, "out of memory");
    }

    /* From here the callback owns the outcome: a failed write kills the
     * connection, which reports to the callback, and we return 0. */
    if (c->wlen - c->wpos >= FERRY__COALESCE_BYTES || c->plen == 1 ||
        ferry__now_us() - c->last_write_us >= FERRY__LINGER_US)
        ferry__write_some(c);
    return 0;
}

static int all_acked(const ferry_conn *c, const void *arg)
{
    (void)arg;
    return c->async_in_flight == 0 && c->acks_in_flight == 0 && c->acks_unsent == 0 &&
           c->wpos == c->wlen;
}

int ferry_flush(ferry_conn *c, int timeout_ms)
{
    if (!c)
        return FERRY_EINVALID;
    int rc = ferry__begin(c);
    if (rc < 0)
        return rc;
    rc = ferry__pump(c, ferry__deadline(timeout_ms), all_acked, NULL);
    if (rc == FERRY_ETIMEOUT)
        return ferry__seterr(c, rc, "%zu publishes and %zu acks still unacknowledged after %d ms",
                             c->async_in_flight, c->acks_in_flight + c->acks_unsent, timeout_ms);
    if (rc == 0 && c->ack_err < 0) {
        /* Reported once: the next flush starts afresh. */
        rc = ferry__seterr(c, c->ack_err, "%s", c->ack_errmsg);
        c->ack_err = 0;
        c->ack_errmsg[0] = '\0';
    }
    return rc;
}

int ferry_poll(ferry_conn *c)
{
    if (!c)
        return FERRY_EINVALID;
    int rc = ferry__begin(c);
    if (rc < 0)
        return rc;
    if (c->dq_backlog)
        ferry__run_backlog(c);
    if (c->acks_unsent > 0)
        ferry__acks_encode(c);
    if (ferry__write_some(c) < 0 || ferry__read_some(c) < 0)
        return c->dead;
    /* Callbacks run by the read may have acked. */
    if (c->acks_unsent > 0)
        ferry__acks_encode(c);
    if (ferry__write_some(c) < 0)
        return c->dead;
    return 0;
}

size_t ferry_in_flight(const ferry_conn *c)
{
    return c ? c->async_in_flight : 0;
}
