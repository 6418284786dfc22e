/*
 * publish.c - publishing: validation, encoding, sync, batch and pipelined.
 *
 * Every publish becomes one PUBLISH frame appended to the write buffer.
 * Each message is converted once into the codec's view (struct proto_msg),
 * checked and encoded from it. What the codec cannot even represent (NULL
 * pointers, fields over their wire maxima) is rejected first; then each
 * message gets the checks the broker applies (proto_msg_check's: topic and
 * id alphabet, size against the announced max_message_bytes), so a bad
 * topic, id or size fails at once with a clear message and no round trip.
 * The frame is committed to the buffer (wlen moved past it) only when every
 * message passed.
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
 * encoder cannot represent, and counts in *size the bytes it weighs against
 * max_message_bytes (proto_msg_size: key, header names and values,
 * payload). where is "" or "message N: " for errmsg. */
static int convert_msg(ferry_conn *c, const char *where, const ferry_msg *m, struct proto_msg *pm,
                       struct proto_header *hdrs, uint64_t *size)
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

    uint64_t weight = (uint64_t)m->key_len + (uint64_t)m->payload_len;
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
        weight += (uint64_t)nlen + (uint64_t)h->value_len;
    }

    pm->topic = (struct proto_slice){(const uint8_t *)m->topic, tlen};
    pm->id = (struct proto_slice){(const uint8_t *)m->id, idlen};
    pm->key = (struct proto_slice){m->key, m->key_len};
    pm->deliver_at_ms = (uint64_t)m->deliver_at_ms;
    pm->header_count = (uint16_t)m->header_count;
    pm->payload = (struct proto_slice){m->payload, m->payload_len};
    *size = weight;
    return 0;
}

static void where_fmt(char *buf, size_t len, size_t count, size_t i)
{
    if (count > 1)
        snprintf(buf, len, "message %zu: ", i);
    else
        buf[0] = '\0';
}

/* The broker's own checks of one message (proto_msg_check: topic alphabet,
 * id alphabet, weight against the announced max_message_bytes), run on the
 * codec's view of it before it is encoded rather than on a decoded copy. */
static int check_msg(ferry_conn *c, const char *where, const struct proto_msg *m, uint64_t size)
{
    int rc = proto_topic_valid(m->topic.ptr, m->topic.len);
    if (rc < 0)
        return ferry__seterr(c, rc,
                             "%s\"%.*s\": a topic is 1-%u of [A-Za-z0-9._-], starting "
                             "with a letter or digit",
                             where, (int)m->topic.len, (const char *)m->topic.ptr,
                             (unsigned)PROTO_MAX_PUBLISH_TOPIC);
    if (m->id.len > 0 && (rc = proto_id_valid(m->id.ptr, m->id.len)) < 0)
        return ferry__seterr(
            c, rc, "%s\"%.*s\": an id is 1-%u printable ASCII characters, no spaces", where,
            (int)m->id.len, (const char *)m->id.ptr, (unsigned)PROTO_MAX_ID);
    if (size > c->info.max_message_bytes)
        return ferry__seterr(c, FERRY_EMESSAGE_TOO_LARGE,
                             "%smessage is %llu bytes (key + headers + payload); the broker "
                             "accepts at most %u",
                             where, (unsigned long long)size, (unsigned)c->info.max_message_bytes);
    return 0;
}

/* Makes room for n more bytes after the len bytes of the frame being written
 * at wbuf + *start (beyond wlen), which the write buffer may move; re-aims
 * the writer at the frame's new place. */
static int frame_reserve(ferry_conn *c, size_t *start, struct proto_writer *w, size_t n)
{
    if (w->cap - w->len >= n)
        return 0;
    c->wlen = *start + w->len; /* the partial frame is kept by a move */
    int rc = ferry__wbuf_reserve(c, n);
    *start = c->wlen - w->len;
    c->wlen = *start;
    if (rc < 0)
        return rc;
    w->buf = c->wbuf + *start;
    w->cap = c->wcap - *start;
    return 0;
}

/*
 * Appends one PUBLISH of msgs[0..count) with request_id at wlen, converting
 * each message once and encoding it straight away. On failure the write
 * buffer is unchanged and errmsg says which message and why.
 *
 * Which failure is reported, when a batch has several: the first message the
 * encoder cannot represent (convert_msg), else a frame over the broker's
 * max_frame_bytes, else the first message the broker would refuse
 * (check_msg). Once the frame is known to be refused, the remaining messages
 * are still converted (so the first of the first kind is found) but no
 * longer encoded.
 */
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
    if (ferry__wbuf_reserve(c, total) < 0)
        return ferry__seterr(c, FERRY_ENOMEM, "out of memory for a %zu-byte frame", total);

    size_t start = c->wlen;
    struct proto_writer w;
    proto_writer_init(&w, c->wbuf + start, c->wcap - start);
    size_t begin = producer ? proto_publish_begin_producer(&w, request_id, c->producer_id, plen)
                            : proto_publish_begin(&w, request_id);
    int refused = 0; /* the first check_msg failure */
    int fits = 1;    /* total within max_frame_bytes */
    for (size_t i = 0; i < count; i++) {
        const ferry_msg *m = &msgs[i];
        where_fmt(where, sizeof where, count, i);
        if ((m->producer_seq != 0) != (msgs[0].producer_seq != 0))
            return ferry__seterr(c, FERRY_EINVALID,
                                 "%seither every message of a batch has a producer_seq or none",
                                 where);
        if (m->producer_seq && !c->producer_id[0])
            return ferry__seterr(c, FERRY_EINVALID,
                                 "%sproducer_seq needs ferry_options.producer_id", where);
        uint64_t size = 0;
        int rc = convert_msg(c, where, m, &pm, hdrs, &size);
        if (rc < 0)
            return rc;
        size_t bytes = proto_publish_msg_bytes(&pm, hdrs) + (producer ? 8 : 0);
        total += bytes;
        if (total - 4 > c->info.max_frame_bytes)
            fits = 0;
        if (!refused)
            refused = check_msg(c, where, &pm, size);
        if (!fits || refused)
            continue;
        if (frame_reserve(c, &start, &w, bytes) < 0)
            return ferry__seterr(c, FERRY_ENOMEM, "out of memory for a %zu-byte frame", total);
        if (producer)
            proto_publish_add_seq(&w, m->producer_seq, &pm, hdrs);
        else
            proto_publish_add(&w, &pm, hdrs);
    }
    if (!fits) {
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
    if (refused)
        return refused; /* errmsg set by check_msg */
    if (proto_publish_end(&w, begin, (uint16_t)count) < 0 || w.len != total)
        return ferry__seterr(c, FERRY_EINVALID, "cannot encode PUBLISH (%zu of %zu bytes)", w.len,
                             total);
    c->wlen = start + w.len;
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
    if (c->js)
        return ferry__seterr(c, FERRY_EUNSUPPORTED,
                             "JetStream stores each message on its own: no atomic batch "
                             "(publish them one by one; docs/SCALING.md)");

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
    if (c && c->js) {
        int rc = ferry__begin(c);
        return rc < 0 ? rc : ferry__js_publish(c, msg, ack);
    }
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
    if (c->js)
        return ferry__js_publish_async(c, msg, cb, userdata);

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
    if (c->js)
        return ferry__js_flush(c, timeout_ms);
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
    if (c->js)
        return ferry__js_poll(c);
    if (c->hooks) {
        c->hooks->before_check(c);
        c->hooks->before_block(c);
    }
    if (ferry__write_some(c) < 0 || ferry__read_some(c) < 0)
        return c->dead;
    /* Callbacks run by the read may have acked. */
    if (c->hooks)
        c->hooks->before_block(c);
    if (ferry__write_some(c) < 0)
        return c->dead;
    return 0;
}

size_t ferry_in_flight(const ferry_conn *c)
{
    if (c && c->js)
        return ferry__js_in_flight(c);
    return c ? c->async_in_flight : 0;
}
