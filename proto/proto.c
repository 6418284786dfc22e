/*
 * proto.c - Ferry wire protocol v1: decoder, iterators, semantic checks and
 * encoder. The frame layout is described in proto.h and, normatively, in
 * docs/PROTOCOL.md.
 *
 * Decoding goes through a cursor (struct cur) that holds the unread part of
 * one frame as [p, end). Every read first compares the bytes it wants with
 * end - p, so no length taken from the wire is ever added to a pointer before
 * it is known to fit; lengths are size_t and never summed. A failed read
 * leaves the cursor where it was and returns -1.
 *
 * The decoder validates a frame completely before it returns > 0: every
 * count is within its maximum, every variable-length field lies inside the
 * frame and under its maximum, and the body is consumed exactly. The
 * iterators reuse the very same read functions, so walking a decoded frame
 * cannot fail; if one is handed a hand-made struct that does not hold, it
 * stops (returns 0) instead of reading past the end.
 *
 * Encoding goes through struct proto_writer. A writer that would pass cap
 * sets overflow and writes nothing more; the whole-frame helpers also set it
 * when asked to encode a field over its protocol maximum, so whatever they
 * produce successfully the decoder accepts.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "proto.h"

/* --- Decoding ---------------------------------------------------------- */

struct cur {
    const uint8_t *p;
    const uint8_t *end;
};

static size_t cur_left(const struct cur *c)
{
    return (size_t)(c->end - c->p);
}

static int rd_u8(struct cur *c, uint8_t *v)
{
    if (cur_left(c) < 1)
        return -1;
    *v = c->p[0];
    c->p += 1;
    return 0;
}

static int rd_u16(struct cur *c, uint16_t *v)
{
    if (cur_left(c) < 2)
        return -1;
    *v = proto_rd16(c->p);
    c->p += 2;
    return 0;
}

static int rd_u32(struct cur *c, uint32_t *v)
{
    if (cur_left(c) < 4)
        return -1;
    *v = proto_rd32(c->p);
    c->p += 4;
    return 0;
}

static int rd_u64(struct cur *c, uint64_t *v)
{
    if (cur_left(c) < 8)
        return -1;
    *v = proto_rd64(c->p);
    c->p += 8;
    return 0;
}

/* n bytes as a slice; the cursor must hold them. */
static int rd_slice(struct cur *c, size_t n, struct proto_slice *s)
{
    if (n > cur_left(c))
        return -1;
    s->ptr = c->p;
    s->len = n;
    c->p += n;
    return 0;
}

/* str16 of min..max bytes. On failure the cursor is unchanged. */
static int rd_str16(struct cur *c, size_t min, size_t max, struct proto_slice *s)
{
    struct cur save = *c;
    uint16_t n;

    if (rd_u16(c, &n) < 0 || n < min || n > max || rd_slice(c, n, s) < 0) {
        *c = save;
        return -1;
    }
    return 0;
}

static int rd_bytes32(struct cur *c, struct proto_slice *s)
{
    struct cur save = *c;
    uint32_t n;

    if (rd_u32(c, &n) < 0 || rd_slice(c, n, s) < 0) {
        *c = save;
        return -1;
    }
    return 0;
}

/* One header: str16 name (1..255), str16 value. */
static int rd_header(struct cur *c, struct proto_header *h)
{
    struct cur save = *c;

    if (rd_str16(c, 1, PROTO_MAX_HEADER_NAME, &h->name) < 0 ||
        rd_str16(c, 0, PROTO_MAX_HEADER_VALUE, &h->value) < 0) {
        *c = save;
        return -1;
    }
    return 0;
}

/* u16 header_count (0..64), then that many headers, each walked and
 * checked; *headers is set to the encoded pairs. Shared by PUBLISH messages
 * and DELIVER, so both follow exactly the same rules. */
static int rd_headers(struct cur *c, uint16_t *count, struct proto_slice *headers)
{
    struct cur save = *c;
    struct proto_header h;
    const uint8_t *start;
    uint16_t i;

    if (rd_u16(c, count) < 0 || *count > PROTO_MAX_HEADERS)
        goto fail;
    start = c->p;
    for (i = 0; i < *count; i++) {
        if (rd_header(c, &h) < 0)
            goto fail;
    }
    headers->ptr = start;
    headers->len = (size_t)(c->p - start);
    return 0;
fail:
    *c = save;
    return -1;
}

/* One PUBLISH message, headers walked and checked. Structural limits only;
 * the topic alphabet and the message size are proto_msg_check()'s job. */
static int rd_msg(struct cur *c, struct proto_msg *m)
{
    struct cur save = *c;

    if (rd_str16(c, 0, PROTO_MAX_TOPIC, &m->topic) < 0 ||
        rd_str16(c, 0, PROTO_MAX_ID, &m->id) < 0 || rd_str16(c, 0, PROTO_MAX_KEY, &m->key) < 0 ||
        rd_u64(c, &m->deliver_at_ms) < 0 || rd_headers(c, &m->header_count, &m->headers) < 0 ||
        rd_bytes32(c, &m->payload) < 0) {
        *c = save;
        return -1;
    }
    return 0;
}

/* One PUBLISH_ACK entry: u64 seq, u8 flags, str16 id (0..128). */
static int rd_ack(struct cur *c, struct proto_ack_entry *a)
{
    struct cur save = *c;

    if (rd_u64(c, &a->seq) < 0 || rd_u8(c, &a->flags) < 0 ||
        rd_str16(c, 0, PROTO_MAX_ID, &a->id) < 0) {
        *c = save;
        return -1;
    }
    return 0;
}

/* One TOPICS_OK entry: u16 entry_length, then that many bytes holding the
 * v1 fields followed by anything a later revision appends (skipped). */
static int rd_topic(struct cur *c, struct proto_topic_info *t)
{
    struct cur save = *c;
    struct proto_slice entry;
    struct cur e;
    uint16_t n;

    if (rd_u16(c, &n) < 0 || rd_slice(c, n, &entry) < 0)
        goto fail;
    e.p = entry.ptr;
    e.end = entry.ptr + entry.len;
    if (rd_str16(&e, 0, PROTO_MAX_TOPIC, &t->name) < 0 || rd_u64(&e, &t->head_seq) < 0 ||
        rd_u64(&e, &t->first_seq) < 0 || rd_u64(&e, &t->message_count) < 0 ||
        rd_u64(&e, &t->bytes) < 0 || rd_u64(&e, &t->created_ms) < 0)
        goto fail;
    /* The retention fields came later: an entry too short for them lacks
     * them; bytes after what this revision knows are skipped. */
    t->has_config = 0;
    t->max_age_ms = t->max_count = t->max_bytes = t->publish_rate = 0;
    t->delete_acked = 0;
    if (e.end - e.p >= 4 * 8 + 1) {
        if (rd_u64(&e, &t->max_age_ms) < 0 || rd_u64(&e, &t->max_count) < 0 ||
            rd_u64(&e, &t->max_bytes) < 0 || rd_u8(&e, &t->delete_acked) < 0 ||
            rd_u64(&e, &t->publish_rate) < 0)
            goto fail;
        t->has_config = 1;
    }
    return 0;
fail:
    *c = save;
    return -1;
}

/* A u32 sub_id; 0 is never a subscription. */
static int rd_sub_id(struct cur *c, uint32_t *v)
{
    struct cur save = *c;

    if (rd_u32(c, v) < 0 || *v == 0) {
        *c = save;
        return -1;
    }
    return 0;
}

/* A u8 start position, PROTO_START_EARLIEST..PROTO_START_TIME. */
static int rd_start(struct cur *c, uint8_t *v)
{
    struct cur save = *c;

    if (rd_u8(c, v) < 0 || *v > PROTO_START_TIME) {
        *c = save;
        return -1;
    }
    return 0;
}

/* A u32 credit window, 1..PROTO_MAX_WINDOW. */
static int rd_window(struct cur *c, uint32_t *v)
{
    struct cur save = *c;

    if (rd_u32(c, v) < 0 || *v == 0 || *v > PROTO_MAX_WINDOW) {
        *c = save;
        return -1;
    }
    return 0;
}

/* One ACK_OK entry: u64 seq, u16 code (0 or a wire code). */
static int rd_ack_ok(struct cur *c, uint64_t *seq, uint16_t *code)
{
    struct cur save = *c;

    if (rd_u64(c, seq) < 0 || rd_u16(c, code) < 0 || *code > FERRY_WIRE_CODE_MAX) {
        *c = save;
        return -1;
    }
    return 0;
}

/* One GROUPS_OK entry, framed like a TOPICS_OK entry: u16 entry_length,
 * then the v1 fields and whatever a later revision appends (skipped). */
static int rd_group(struct cur *c, struct proto_group_info *g)
{
    struct cur save = *c;
    struct proto_slice entry;
    struct cur e;
    uint16_t n;

    if (rd_u16(c, &n) < 0 || rd_slice(c, n, &entry) < 0)
        goto fail;
    e.p = entry.ptr;
    e.end = entry.ptr + entry.len;
    if (rd_str16(&e, 0, PROTO_MAX_TOPIC, &g->topic) < 0 ||
        rd_str16(&e, 0, PROTO_MAX_GROUP, &g->group) < 0 || rd_u64(&e, &g->cursor) < 0 ||
        rd_u64(&e, &g->ack_floor) < 0 || rd_u64(&e, &g->lag) < 0 || rd_u32(&e, &g->in_flight) < 0 ||
        rd_u32(&e, &g->consumers) < 0 || rd_u64(&e, &g->redelivered) < 0 ||
        rd_u64(&e, &g->dead_lettered) < 0 || rd_u64(&e, &g->oldest_unacked_ms) < 0 ||
        rd_u32(&e, &g->ack_wait_ms) < 0 || rd_u16(&e, &g->max_deliveries) < 0)
        goto fail;
    return 0;
fail:
    *c = save;
    return -1;
}

static int type_known(uint8_t type)
{
    switch (type) {
    case PROTO_HELLO:
    case PROTO_HELLO_OK:
    case PROTO_ERROR:
    case PROTO_PING:
    case PROTO_PONG:
    case PROTO_PUBLISH:
    case PROTO_PUBLISH_ACK:
    case PROTO_SUBSCRIBE:
    case PROTO_SUBSCRIBE_OK:
    case PROTO_DELIVER:
    case PROTO_ACK:
    case PROTO_NACK:
    case PROTO_TOUCH:
    case PROTO_CREDIT:
    case PROTO_UNSUBSCRIBE:
    case PROTO_SEEK:
    case PROTO_REDRIVE:
    case PROTO_FLOOR:
    case PROTO_FLOOR_OK:
    case PROTO_PEEK:
    case PROTO_PEEK_OK:
    case PROTO_ACK_OK:
    case PROTO_TOPICS:
    case PROTO_TOPICS_OK:
    case PROTO_GROUPS:
    case PROTO_GROUPS_OK:
    case PROTO_TOPIC_CONFIG:
    case PROTO_DELETE:
    case PROTO_DELETE_OK:
    case PROTO_SUB_END:
        return 1;
    default:
        return 0;
    }
}

/* Kept for source compatibility: every type that was reserved is now
 * defined and decoded in full. */
int proto_type_reserved(uint8_t type)
{
    (void)type;
    return 0;
}

/*
 * The header checks happen as early as the bytes allow: the length field is
 * judged as soon as its 4 bytes are there, so an oversized or undersized
 * frame is refused before any of it is buffered.
 */
int proto_peek_header(const uint8_t *buf, size_t len, uint32_t max_frame, uint32_t *length_out,
                      uint8_t *type_out, uint32_t *request_id_out)
{
    uint32_t length;

    if (max_frame > PROTO_ABSOLUTE_MAX_FRAME)
        max_frame = PROTO_ABSOLUTE_MAX_FRAME;
    if (len < 4)
        return 0;
    length = proto_rd32(buf);
    if (length_out)
        *length_out = length;
    if (length < PROTO_MIN_LENGTH)
        return FERRY_EMALFORMED;
    if (length > max_frame)
        return FERRY_EFRAME_TOO_LARGE;
    if (len < PROTO_HEADER_BYTES)
        return 0;
    if (type_out)
        *type_out = buf[4];
    if (request_id_out)
        *request_id_out = proto_rd32(buf + 6);
    return PROTO_HEADER_BYTES;
}

static int decode_hello(struct cur *c, struct proto_hello *h)
{
    if (rd_u16(c, &h->version) < 0 || rd_str16(c, 0, PROTO_MAX_CLIENT_NAME, &h->client_name) < 0 ||
        rd_str16(c, 0, PROTO_MAX_TOKEN, &h->token) < 0)
        return -1;
    return 0;
}

static int decode_hello_ok(struct cur *c, struct proto_hello_ok *h)
{
    if (rd_u16(c, &h->version) < 0 || rd_u32(c, &h->max_frame_bytes) < 0 ||
        rd_u32(c, &h->max_message_bytes) < 0 || rd_u32(c, &h->max_batch) < 0 ||
        rd_u64(c, &h->dedupe_window_ms) < 0 || rd_str16(c, 0, UINT16_MAX, &h->server_name) < 0)
        return -1;
    /* Fields appended by later revisions are skipped. */
    c->p = c->end;
    return 0;
}

static int decode_error(struct cur *c, struct proto_error *e)
{
    if (rd_u16(c, &e->code) < 0 || e->code == 0 || e->code > FERRY_WIRE_CODE_MAX ||
        rd_str16(c, 0, PROTO_MAX_ERROR_TEXT, &e->message) < 0)
        return -1;
    return 0;
}

/* Walks every message once so that proto_msg_next() cannot fail later. */
static int decode_publish(struct cur *c, struct proto_publish *pub, int producer)
{
    struct proto_msg m;
    const uint8_t *start;
    uint16_t i;
    uint64_t pseq;

    pub->has_producer = producer;
    pub->producer.ptr = NULL;
    pub->producer.len = 0;
    if (producer && (rd_str16(c, 1, PROTO_MAX_ID, &pub->producer) < 0))
        return -1;
    if (rd_u16(c, &pub->count) < 0 || pub->count == 0 || pub->count > PROTO_MAX_BATCH)
        return -1;
    start = c->p;
    for (i = 0; i < pub->count; i++) {
        if (producer && (rd_u64(c, &pseq) < 0 || pseq == 0))
            return -1;
        if (rd_msg(c, &m) < 0)
            return -1;
    }
    pub->msgs.ptr = start;
    pub->msgs.len = (size_t)(c->p - start);
    return 0;
}

static int decode_publish_ack(struct cur *c, struct proto_publish_ack *ack)
{
    struct proto_ack_entry a;
    const uint8_t *start;
    uint16_t i;

    if (rd_u16(c, &ack->count) < 0 || ack->count == 0 || ack->count > PROTO_MAX_BATCH)
        return -1;
    start = c->p;
    for (i = 0; i < ack->count; i++) {
        if (rd_ack(c, &a) < 0)
            return -1;
    }
    ack->acks.ptr = start;
    ack->acks.len = (size_t)(c->p - start);
    return 0;
}

static int decode_topics_ok(struct cur *c, struct proto_topics_ok *t)
{
    struct proto_topic_info info;
    const uint8_t *start;
    uint32_t i;

    if (rd_u32(c, &t->count) < 0 || t->count > PROTO_MAX_TOPICS)
        return -1;
    start = c->p;
    for (i = 0; i < t->count; i++) {
        if (rd_topic(c, &info) < 0)
            return -1;
    }
    t->entries.ptr = start;
    t->entries.len = (size_t)(c->p - start);
    return 0;
}

static int decode_subscribe(struct cur *c, struct proto_subscribe *s)
{
    if (rd_sub_id(c, &s->sub_id) < 0 || rd_str16(c, 0, PROTO_MAX_TOPIC, &s->topic) < 0 ||
        rd_str16(c, 0, PROTO_MAX_GROUP, &s->group) < 0 || rd_start(c, &s->start) < 0 ||
        rd_u64(c, &s->start_value) < 0 || rd_window(c, &s->max_in_flight) < 0 ||
        rd_u32(c, &s->ack_wait_ms) < 0 || rd_u16(c, &s->max_deliveries) < 0)
        return -1;
    /* The optional backoff schedule. */
    s->backoff_count = 0;
    if (c->p == c->end)
        return 0;
    /* Present means at least one entry: a count of 0 is sent by omitting it. */
    if (rd_u8(c, &s->backoff_count) < 0 || s->backoff_count == 0 ||
        s->backoff_count > PROTO_MAX_BACKOFF)
        return -1;
    for (uint8_t i = 0; i < s->backoff_count; i++)
        if (rd_u32(c, &s->backoff_ms[i]) < 0)
            return -1;
    return 0;
}

static int decode_subscribe_ok(struct cur *c, struct proto_subscribe_ok *s)
{
    if (rd_sub_id(c, &s->sub_id) < 0 || rd_u64(c, &s->cursor) < 0 || rd_u64(c, &s->head_seq) < 0 ||
        rd_u32(c, &s->ack_wait_ms) < 0 || rd_u16(c, &s->max_deliveries) < 0)
        return -1;
    s->has_horizon = 0;
    s->redelivery_horizon_ms = 0;
    if (c->p != c->end) {
        if (rd_u64(c, &s->redelivery_horizon_ms) < 0)
            return -1;
        s->has_horizon = 1;
    }
    return 0;
}

/* Headers are walked like a PUBLISH message's, so that
 * proto_deliver_header_iter_init() + proto_header_next() cannot fail. */
static int decode_deliver(struct cur *c, struct proto_deliver *d)
{
    if (rd_sub_id(c, &d->sub_id) < 0 || rd_u64(c, &d->seq) < 0 || rd_u32(c, &d->attempt) < 0 ||
        d->attempt == 0 || rd_u64(c, &d->ts_ms) < 0 || rd_str16(c, 0, PROTO_MAX_ID, &d->id) < 0 ||
        rd_str16(c, 0, PROTO_MAX_KEY, &d->key) < 0 ||
        rd_headers(c, &d->header_count, &d->headers) < 0 || rd_bytes32(c, &d->payload) < 0)
        return -1;
    return 0;
}

static int decode_ack(struct cur *c, struct proto_ack *a)
{
    if (rd_sub_id(c, &a->sub_id) < 0 || rd_u16(c, &a->count) < 0 || a->count == 0 ||
        a->count > PROTO_MAX_ACKS || rd_slice(c, (size_t)a->count * 8, &a->seqs) < 0)
        return -1;
    return 0;
}

static int decode_nack(struct cur *c, struct proto_nack *n)
{
    if (rd_sub_id(c, &n->sub_id) < 0 || rd_u64(c, &n->seq) < 0 || rd_u32(c, &n->delay_ms) < 0 ||
        rd_str16(c, 0, PROTO_MAX_REASON, &n->reason) < 0)
        return -1;
    return 0;
}

/* TOUCH (u64 seq), CREDIT (u32 window) and UNSUBSCRIBE (nothing more). */
static int decode_sub_op(struct cur *c, uint8_t type, struct proto_sub_op *op)
{
    uint32_t window;

    if (rd_sub_id(c, &op->sub_id) < 0)
        return -1;
    switch (type) {
    case PROTO_TOUCH:
        return rd_u64(c, &op->value);
    case PROTO_CREDIT:
        if (rd_window(c, &window) < 0)
            return -1;
        op->value = window;
        return 0;
    default:
        op->value = 0;
        return 0;
    }
}

static int decode_ack_ok(struct cur *c, struct proto_ack_ok *a)
{
    const uint8_t *start;
    uint64_t seq;
    uint16_t code, i;

    if (rd_u16(c, &a->count) < 0 || a->count > PROTO_MAX_ACKS)
        return -1;
    start = c->p;
    for (i = 0; i < a->count; i++) {
        if (rd_ack_ok(c, &seq, &code) < 0)
            return -1;
    }
    a->entries.ptr = start;
    a->entries.len = (size_t)(c->p - start);
    return 0;
}

static int decode_floor_ok(struct cur *c, struct proto_floor_ok *f)
{
    uint64_t prev = 0, seq;

    if (rd_u64(c, &f->floor) < 0 || rd_u16(c, &f->count) < 0 || f->count > PROTO_MAX_FLOOR_KEEP)
        return -1;
    f->seqs.ptr = c->p;
    for (uint16_t i = 0; i < f->count; i++) {
        if (rd_u64(c, &seq) < 0 || seq == 0 || seq <= prev || seq >= f->floor)
            return -1;
        prev = seq;
    }
    f->seqs.len = (size_t)(c->p - f->seqs.ptr);
    return 0;
}

/* One PEEK_OK entry: a DELIVER's message fields without sub_id and
 * attempt. */
static int rd_peek_entry(struct cur *c, struct proto_deliver *d)
{
    struct cur save = *c;

    memset(d, 0, sizeof *d);
    if (rd_u64(c, &d->seq) < 0 || rd_u64(c, &d->ts_ms) < 0 ||
        rd_str16(c, 0, PROTO_MAX_ID, &d->id) < 0 || rd_str16(c, 0, PROTO_MAX_KEY, &d->key) < 0 ||
        rd_headers(c, &d->header_count, &d->headers) < 0 || rd_bytes32(c, &d->payload) < 0) {
        *c = save;
        return -1;
    }
    return 0;
}

static int decode_peek(struct cur *c, struct proto_peek *p)
{
    if (rd_str16(c, 0, PROTO_MAX_TOPIC, &p->topic) < 0 || rd_u64(c, &p->from_seq) < 0 ||
        rd_u64(c, &p->from_time_ms) < 0 || rd_u32(c, &p->max_messages) < 0 ||
        p->max_messages == 0 || p->max_messages > PROTO_MAX_PEEK || rd_u32(c, &p->max_bytes) < 0)
        return -1;
    return 0;
}

static int decode_peek_ok(struct cur *c, struct proto_peek_ok *p)
{
    struct proto_deliver d;

    if (rd_u64(c, &p->next_seq) < 0 || rd_u64(c, &p->head_seq) < 0 || rd_u32(c, &p->count) < 0 ||
        p->count > PROTO_MAX_PEEK)
        return -1;
    p->entries.ptr = c->p;
    for (uint32_t i = 0; i < p->count; i++)
        if (rd_peek_entry(c, &d) < 0)
            return -1;
    p->entries.len = (size_t)(c->p - p->entries.ptr);
    return 0;
}

static int decode_seek(struct cur *c, struct proto_seek *s)
{
    if (rd_str16(c, 0, PROTO_MAX_TOPIC, &s->topic) < 0 ||
        rd_str16(c, 0, PROTO_MAX_GROUP, &s->group) < 0 || rd_start(c, &s->start) < 0 ||
        rd_u64(c, &s->value) < 0)
        return -1;
    return 0;
}

static int decode_groups_ok(struct cur *c, struct proto_groups_ok *g)
{
    struct proto_group_info info;
    const uint8_t *start;
    uint32_t i;

    if (rd_u32(c, &g->count) < 0 || g->count > PROTO_MAX_GROUPS)
        return -1;
    start = c->p;
    for (i = 0; i < g->count; i++) {
        if (rd_group(c, &info) < 0)
            return -1;
    }
    g->entries.ptr = start;
    g->entries.len = (size_t)(c->p - start);
    return 0;
}

ptrdiff_t proto_decode(const uint8_t *buf, size_t len, uint32_t max_frame, struct proto_frame *out)
{
    uint32_t length, request_id;
    uint8_t type;
    struct cur c;
    int rc;

    rc = proto_peek_header(buf, len, max_frame, &length, &type, &request_id);
    if (rc <= 0)
        return rc;
    if (!type_known(type))
        return FERRY_EUNKNOWN_TYPE;
    /* len >= PROTO_HEADER_BYTES here, so len - 4 cannot wrap. */
    if (length > len - 4)
        return 0;

    memset(out, 0, sizeof *out);
    out->type = type;
    out->flags = buf[5];
    out->request_id = request_id;
    out->body.ptr = buf + PROTO_HEADER_BYTES;
    out->body.len = length - PROTO_MIN_LENGTH;
    c.p = out->body.ptr;
    c.end = c.p + out->body.len;

    switch (type) {
    case PROTO_HELLO:
        rc = decode_hello(&c, &out->u.hello);
        break;
    case PROTO_HELLO_OK:
        rc = decode_hello_ok(&c, &out->u.hello_ok);
        break;
    case PROTO_ERROR:
        rc = decode_error(&c, &out->u.error);
        break;
    case PROTO_PUBLISH:
        rc = decode_publish(&c, &out->u.publish, out->flags & PROTO_PUBLISH_PRODUCER);
        break;
    case PROTO_PUBLISH_ACK:
        rc = decode_publish_ack(&c, &out->u.publish_ack);
        break;
    case PROTO_TOPICS_OK:
        rc = decode_topics_ok(&c, &out->u.topics_ok);
        break;
    case PROTO_SUBSCRIBE:
        rc = decode_subscribe(&c, &out->u.subscribe);
        out->u.subscribe.flags = out->flags;
        break;
    case PROTO_SUBSCRIBE_OK:
        rc = decode_subscribe_ok(&c, &out->u.subscribe_ok);
        break;
    case PROTO_DELIVER:
        /* Not a reply: a DELIVER always carries request_id 0. */
        rc = request_id != 0 ? -1 : decode_deliver(&c, &out->u.deliver);
        break;
    case PROTO_ACK:
        rc = decode_ack(&c, &out->u.ack);
        break;
    case PROTO_NACK:
        rc = decode_nack(&c, &out->u.nack);
        break;
    case PROTO_TOUCH:
    case PROTO_CREDIT:
    case PROTO_UNSUBSCRIBE:
        rc = decode_sub_op(&c, type, &out->u.sub_op);
        break;
    case PROTO_ACK_OK:
        rc = decode_ack_ok(&c, &out->u.ack_ok);
        break;
    case PROTO_SEEK:
        rc = decode_seek(&c, &out->u.seek);
        break;
    case PROTO_REDRIVE:
        rc = rd_str16(&c, 0, PROTO_MAX_TOPIC, &out->u.redrive.topic) < 0 ||
                     rd_str16(&c, 0, PROTO_MAX_GROUP, &out->u.redrive.group) < 0 ||
                     rd_u64(&c, &out->u.redrive.dead_seq) < 0
                 ? -1
                 : 0;
        break;
    case PROTO_FLOOR:
        rc = rd_str16(&c, 0, PROTO_MAX_TOPIC, &out->u.floor.topic) < 0 ||
                     rd_str16(&c, 0, PROTO_MAX_GROUP, &out->u.floor.group) < 0
                 ? -1
                 : 0;
        break;
    case PROTO_FLOOR_OK:
        rc = decode_floor_ok(&c, &out->u.floor_ok);
        break;
    case PROTO_PEEK:
        rc = decode_peek(&c, &out->u.peek);
        break;
    case PROTO_PEEK_OK:
        rc = decode_peek_ok(&c, &out->u.peek_ok);
        break;
    case PROTO_GROUPS:
        rc = rd_str16(&c, 0, PROTO_MAX_TOPIC, &out->u.groups.topic);
        break;
    case PROTO_GROUPS_OK:
        rc = decode_groups_ok(&c, &out->u.groups_ok);
        break;
    case PROTO_TOPIC_CONFIG: {
        struct proto_topic_config *tc = &out->u.topic_config;
        rc = rd_str16(&c, 0, PROTO_MAX_TOPIC, &tc->topic) < 0 || rd_u64(&c, &tc->max_age_ms) < 0 ||
                     rd_u64(&c, &tc->max_count) < 0 || rd_u64(&c, &tc->max_bytes) < 0 ||
                     rd_u8(&c, &tc->delete_acked) < 0 ||
                     (tc->delete_acked > 1 && tc->delete_acked != PROTO_DELETE_ACKED_DEFAULT)
                 ? -1
                 : 0;
        break;
    }
    case PROTO_DELETE: {
        struct proto_delete *d = &out->u.del;
        d->flags = out->flags & PROTO_DELETE_FORCE; /* undefined bits are ignored (§2) */
        rc = rd_str16(&c, 1, PROTO_MAX_TOPIC, &d->topic) < 0 ||
                     rd_str16(&c, 0, PROTO_MAX_GROUP, &d->group) < 0
                 ? -1
                 : 0;
        break;
    }
    case PROTO_DELETE_OK:
        rc = rd_u64(&c, &out->u.delete_ok.messages) < 0 || rd_u32(&c, &out->u.delete_ok.groups) < 0
                 ? -1
                 : 0;
        break;
    case PROTO_SUB_END: {
        struct proto_sub_end *e = &out->u.sub_end;
        rc = request_id != 0 || rd_u32(&c, &e->sub_id) < 0 || e->sub_id == 0 ||
                     rd_u16(&c, &e->code) < 0 || e->code == 0 || e->code > FERRY_WIRE_CODE_MAX ||
                     rd_str16(&c, 0, PROTO_MAX_ERROR_TEXT, &e->message) < 0
                 ? -1
                 : 0;
        break;
    }
    default:    /* PING, PONG, TOPICS */
        rc = 0; /* empty body: the trailing-bytes check below enforces it */
        break;
    }
    if (rc < 0 || c.p != c.end)
        return FERRY_EMALFORMED;
    return (ptrdiff_t)length + 4;
}

/* --- Iterators --------------------------------------------------------- */

/* Sets up [p, end) over a slice; a NULL slice gives an empty range without
 * doing arithmetic on a null pointer. */
static void range_init(const struct proto_slice *s, const uint8_t **p, const uint8_t **end)
{
    if (s->ptr == NULL) {
        *p = NULL;
        *end = NULL;
        return;
    }
    *p = s->ptr;
    *end = s->ptr + s->len;
}

void proto_msg_iter_init(struct proto_msg_iter *it, const struct proto_publish *pub)
{
    range_init(&pub->msgs, &it->p, &it->end);
    it->left = it->p ? pub->count : 0;
    it->producer = pub->has_producer;
}

int proto_msg_next(struct proto_msg_iter *it, struct proto_msg *out)
{
    struct cur c = {it->p, it->end};

    if (it->left == 0)
        return 0;
    out->producer_seq = 0;
    if ((it->producer && rd_u64(&c, &out->producer_seq) < 0) || rd_msg(&c, out) < 0) {
        it->left = 0;
        return 0;
    }
    it->p = c.p;
    it->left--;
    return 1;
}

void proto_header_iter_init(struct proto_header_iter *it, const struct proto_msg *msg)
{
    range_init(&msg->headers, &it->p, &it->end);
    it->left = it->p ? msg->header_count : 0;
}

int proto_header_next(struct proto_header_iter *it, struct proto_header *out)
{
    struct cur c = {it->p, it->end};

    if (it->left == 0)
        return 0;
    if (rd_header(&c, out) < 0) {
        it->left = 0;
        return 0;
    }
    it->p = c.p;
    it->left--;
    return 1;
}

void proto_ack_iter_init(struct proto_ack_iter *it, const struct proto_publish_ack *ack)
{
    range_init(&ack->acks, &it->p, &it->end);
    it->left = it->p ? ack->count : 0;
}

int proto_ack_next(struct proto_ack_iter *it, struct proto_ack_entry *out)
{
    struct cur c = {it->p, it->end};

    if (it->left == 0)
        return 0;
    if (rd_ack(&c, out) < 0) {
        it->left = 0;
        return 0;
    }
    it->p = c.p;
    it->left--;
    return 1;
}

void proto_topic_iter_init(struct proto_topic_iter *it, const struct proto_topics_ok *t)
{
    range_init(&t->entries, &it->p, &it->end);
    it->left = it->p ? t->count : 0;
}

int proto_topic_next(struct proto_topic_iter *it, struct proto_topic_info *out)
{
    struct cur c = {it->p, it->end};

    if (it->left == 0)
        return 0;
    if (rd_topic(&c, out) < 0) {
        it->left = 0;
        return 0;
    }
    it->p = c.p;
    it->left--;
    return 1;
}

void proto_ack_ok_iter_init(struct proto_ack_ok_iter *it, const struct proto_ack_ok *a)
{
    range_init(&a->entries, &it->p, &it->end);
    it->left = it->p ? a->count : 0;
}

int proto_ack_ok_next(struct proto_ack_ok_iter *it, uint64_t *seq, uint16_t *code)
{
    struct cur c = {it->p, it->end};

    if (it->left == 0)
        return 0;
    if (rd_ack_ok(&c, seq, code) < 0) {
        it->left = 0;
        return 0;
    }
    it->p = c.p;
    it->left--;
    return 1;
}

void proto_group_iter_init(struct proto_group_iter *it, const struct proto_groups_ok *g)
{
    range_init(&g->entries, &it->p, &it->end);
    it->left = it->p ? g->count : 0;
}

int proto_group_next(struct proto_group_iter *it, struct proto_group_info *out)
{
    struct cur c = {it->p, it->end};

    if (it->left == 0)
        return 0;
    if (rd_group(&c, out) < 0) {
        it->left = 0;
        return 0;
    }
    it->p = c.p;
    it->left--;
    return 1;
}

void proto_peek_iter_init(struct proto_peek_iter *it, const struct proto_peek_ok *p)
{
    range_init(&p->entries, &it->p, &it->end);
    it->left = it->p ? p->count : 0;
}

int proto_peek_next(struct proto_peek_iter *it, struct proto_deliver *out)
{
    struct cur c;

    if (it->left == 0)
        return 0;
    c.p = it->p;
    c.end = it->end;
    if (rd_peek_entry(&c, out) < 0) {
        it->left = 0;
        return 0;
    }
    it->p = c.p;
    it->left--;
    return 1;
}

void proto_deliver_header_iter_init(struct proto_header_iter *it, const struct proto_deliver *d)
{
    range_init(&d->headers, &it->p, &it->end);
    it->left = it->p ? d->header_count : 0;
}

/* --- Semantic checks --------------------------------------------------- */

static int is_alnum(uint8_t ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
}

/* 1..max bytes of A-Z a-z 0-9 . _ -, the first a letter or digit. */
static int name_valid(const uint8_t *name, size_t len, size_t max)
{
    size_t i;

    if (name == NULL || len == 0 || len > max || !is_alnum(name[0]))
        return FERRY_EINVALID_TOPIC;
    for (i = 1; i < len; i++) {
        uint8_t ch = name[i];
        if (!is_alnum(ch) && ch != '.' && ch != '_' && ch != '-')
            return FERRY_EINVALID_TOPIC;
    }
    return 0;
}

int proto_topic_valid(const uint8_t *name, size_t len)
{
    return name_valid(name, len, PROTO_MAX_PUBLISH_TOPIC);
}

int proto_sub_topic_valid(const uint8_t *name, size_t len)
{
    /* "_" + a name: the topics the broker derives. Up to 200 bytes, so
     * that every dead-letter topic, and a topic an older broker created
     * with a longer name, can be named. */
    if (name != NULL && len > 1 && len <= PROTO_MAX_TOPIC && name[0] == '_')
        return name_valid(name + 1, len - 1, PROTO_MAX_TOPIC - 1);
    return name_valid(name, len, PROTO_MAX_TOPIC);
}

int proto_group_valid(const uint8_t *name, size_t len)
{
    return name_valid(name, len, PROTO_MAX_GROUP) == 0 ? 0 : FERRY_EINVALID_GROUP;
}

int proto_id_valid(const uint8_t *id, size_t len)
{
    size_t i;

    if (id == NULL || len == 0 || len > PROTO_MAX_ID)
        return FERRY_EINVALID_ID;
    for (i = 0; i < len; i++) {
        if (id[i] < 0x21 || id[i] > 0x7e)
            return FERRY_EINVALID_ID;
    }
    return 0;
}

uint64_t proto_msg_size(const struct proto_msg *msg)
{
    struct proto_header_iter it;
    struct proto_header h;
    uint64_t size = (uint64_t)msg->key.len + (uint64_t)msg->payload.len;

    proto_header_iter_init(&it, msg);
    while (proto_header_next(&it, &h))
        size += (uint64_t)h.name.len + (uint64_t)h.value.len;
    return size;
}

int proto_msg_check(const struct proto_msg *msg, uint32_t max_message_bytes)
{
    int rc;

    rc = proto_topic_valid(msg->topic.ptr, msg->topic.len);
    if (rc < 0)
        return rc;
    if (msg->id.len > 0) {
        rc = proto_id_valid(msg->id.ptr, msg->id.len);
        if (rc < 0)
            return rc;
    }
    if (proto_msg_size(msg) > max_message_bytes)
        return FERRY_EMESSAGE_TOO_LARGE;
    return 0;
}

/* --- Encoding ---------------------------------------------------------- */

void proto_writer_init(struct proto_writer *w, uint8_t *buf, size_t cap)
{
    w->buf = buf;
    w->cap = buf ? cap : 0;
    w->len = 0;
    w->overflow = 0;
}

/* Reserves n > 0 bytes at the end, or marks the writer overflowed. The
 * invariant len <= cap makes cap - len safe. */
static uint8_t *w_reserve(struct proto_writer *w, size_t n)
{
    uint8_t *p;

    if (w->overflow)
        return NULL;
    if (n > w->cap - w->len) {
        w->overflow = 1;
        return NULL;
    }
    p = w->buf + w->len;
    w->len += n;
    return p;
}

/* Marks the writer failed: a field over its maximum, a bad count. */
static void w_fail(struct proto_writer *w)
{
    w->overflow = 1;
}

void proto_put_u8(struct proto_writer *w, uint8_t v)
{
    uint8_t *p = w_reserve(w, 1);
    if (p)
        p[0] = v;
}

void proto_put_u16(struct proto_writer *w, uint16_t v)
{
    uint8_t *p = w_reserve(w, 2);
    if (p)
        proto_wr16(p, v);
}

void proto_put_u32(struct proto_writer *w, uint32_t v)
{
    uint8_t *p = w_reserve(w, 4);
    if (p)
        proto_wr32(p, v);
}

void proto_put_u64(struct proto_writer *w, uint64_t v)
{
    uint8_t *p = w_reserve(w, 8);
    if (p)
        proto_wr64(p, v);
}

void proto_put_raw(struct proto_writer *w, const void *src, size_t n)
{
    uint8_t *p;

    if (n == 0)
        return;
    if (src == NULL) {
        w_fail(w);
        return;
    }
    p = w_reserve(w, n);
    if (p)
        memcpy(p, src, n);
}

void proto_put_str16(struct proto_writer *w, const void *p, size_t n)
{
    if (n > UINT16_MAX) {
        w_fail(w);
        return;
    }
    proto_put_u16(w, (uint16_t)n);
    proto_put_raw(w, p, n);
}

void proto_put_bytes32(struct proto_writer *w, const void *p, size_t n)
{
    if (n > UINT32_MAX) {
        w_fail(w);
        return;
    }
    proto_put_u32(w, (uint32_t)n);
    proto_put_raw(w, p, n);
}

size_t proto_frame_begin(struct proto_writer *w, uint8_t type, uint8_t flags, uint32_t request_id)
{
    size_t start = w->len;

    proto_put_u32(w, 0); /* patched by proto_frame_end() */
    proto_put_u8(w, type);
    proto_put_u8(w, flags);
    proto_put_u32(w, request_id);
    return start;
}

int proto_frame_end(struct proto_writer *w, size_t start)
{
    size_t length;

    if (w->overflow)
        return -1;
    if (start > w->len || w->len - start < PROTO_HEADER_BYTES) {
        w_fail(w);
        return -1;
    }
    length = w->len - start - 4;
    if (length > PROTO_ABSOLUTE_MAX_FRAME) {
        w_fail(w);
        return -1;
    }
    proto_wr32(w->buf + start, (uint32_t)length);
    return 0;
}

int proto_encode_hello(struct proto_writer *w, uint32_t request_id, const struct proto_hello *h)
{
    size_t start;

    if (h->client_name.len > PROTO_MAX_CLIENT_NAME || h->token.len > PROTO_MAX_TOKEN) {
        w_fail(w);
        return -1;
    }
    start = proto_frame_begin(w, PROTO_HELLO, 0, request_id);
    proto_put_u16(w, h->version);
    proto_put_str16(w, h->client_name.ptr, h->client_name.len);
    proto_put_str16(w, h->token.ptr, h->token.len);
    return proto_frame_end(w, start);
}

int proto_encode_hello_ok(struct proto_writer *w, uint32_t request_id,
                          const struct proto_hello_ok *h)
{
    size_t start = proto_frame_begin(w, PROTO_HELLO_OK, 0, request_id);

    proto_put_u16(w, h->version);
    proto_put_u32(w, h->max_frame_bytes);
    proto_put_u32(w, h->max_message_bytes);
    proto_put_u32(w, h->max_batch);
    proto_put_u64(w, h->dedupe_window_ms);
    proto_put_str16(w, h->server_name.ptr, h->server_name.len);
    return proto_frame_end(w, start);
}

/*
 * The message is detail for a human, so a long one is cut to
 * PROTO_MAX_ERROR_TEXT bytes (at a UTF-8 character boundary) rather than
 * failing the frame: an error must still reach the peer. The code must be a
 * wire code (1..FERRY_WIRE_CODE_MAX); pass -FERRY_E*, not FERRY_E*.
 */
int proto_encode_error(struct proto_writer *w, uint32_t request_id, uint8_t flags, uint16_t code,
                       const char *message, size_t message_len)
{
    size_t start;

    if (code == 0 || code > FERRY_WIRE_CODE_MAX) {
        w_fail(w);
        return -1;
    }
    if (message == NULL)
        message_len = 0;
    if (message_len > PROTO_MAX_ERROR_TEXT) {
        message_len = PROTO_MAX_ERROR_TEXT;
        /* Back off over at most three UTF-8 continuation bytes. */
        while (message_len > PROTO_MAX_ERROR_TEXT - 3 &&
               ((uint8_t)message[message_len] & 0xc0) == 0x80)
            message_len--;
    }
    start = proto_frame_begin(w, PROTO_ERROR, flags, request_id);
    proto_put_u16(w, code);
    proto_put_str16(w, message, message_len);
    return proto_frame_end(w, start);
}

/* Only for the types whose body is empty: PING, PONG, TOPICS. (Before the
 * consumer-group frames were defined it also wrote their types, whose
 * bodies were unparsed; each of them now has a body of its own.) */
int proto_encode_empty(struct proto_writer *w, uint8_t type, uint32_t request_id)
{
    size_t start;

    if (type != PROTO_PING && type != PROTO_PONG && type != PROTO_TOPICS) {
        w_fail(w);
        return -1;
    }
    start = proto_frame_begin(w, type, 0, request_id);
    return proto_frame_end(w, start);
}

/* Patches the u16 or u32 count that follows the header of the frame at
 * start, then the frame's length. */
static int end_counted(struct proto_writer *w, size_t start, uint32_t count, size_t count_bytes)
{
    if (w->overflow)
        return -1;
    if (start > w->len || w->len - start < PROTO_HEADER_BYTES + count_bytes) {
        w_fail(w);
        return -1;
    }
    if (count_bytes == 2)
        proto_wr16(w->buf + start + PROTO_HEADER_BYTES, (uint16_t)count);
    else
        proto_wr32(w->buf + start + PROTO_HEADER_BYTES, count);
    return proto_frame_end(w, start);
}

size_t proto_publish_begin(struct proto_writer *w, uint32_t request_id)
{
    size_t start = proto_frame_begin(w, PROTO_PUBLISH, 0, request_id);

    proto_put_u16(w, 0); /* count, patched by proto_publish_end() */
    return start;
}

/* headers holds m->header_count entries (may be NULL when that is 0); the
 * encoded m->headers slice is not used. */
void proto_publish_add(struct proto_writer *w, const struct proto_msg *m,
                       const struct proto_header *headers)
{
    uint16_t i;

    if (m->topic.len > PROTO_MAX_TOPIC || m->id.len > PROTO_MAX_ID || m->key.len > PROTO_MAX_KEY ||
        m->header_count > PROTO_MAX_HEADERS || (m->header_count > 0 && headers == NULL)) {
        w_fail(w);
        return;
    }
    for (i = 0; i < m->header_count; i++) {
        if (headers[i].name.len == 0 || headers[i].name.len > PROTO_MAX_HEADER_NAME ||
            headers[i].value.len > PROTO_MAX_HEADER_VALUE) {
            w_fail(w);
            return;
        }
    }
    proto_put_str16(w, m->topic.ptr, m->topic.len);
    proto_put_str16(w, m->id.ptr, m->id.len);
    proto_put_str16(w, m->key.ptr, m->key.len);
    proto_put_u64(w, m->deliver_at_ms);
    proto_put_u16(w, m->header_count);
    for (i = 0; i < m->header_count; i++) {
        proto_put_str16(w, headers[i].name.ptr, headers[i].name.len);
        proto_put_str16(w, headers[i].value.ptr, headers[i].value.len);
    }
    proto_put_bytes32(w, m->payload.ptr, m->payload.len);
}

size_t proto_publish_begin_producer(struct proto_writer *w, uint32_t request_id,
                                    const void *producer, size_t producer_len)
{
    size_t start = proto_frame_begin(w, PROTO_PUBLISH, PROTO_PUBLISH_PRODUCER, request_id);

    if (producer_len == 0 || producer_len > PROTO_MAX_ID) {
        w_fail(w);
        return start;
    }
    proto_put_str16(w, producer, producer_len);
    proto_put_u16(w, 0); /* count, patched by proto_publish_end() */
    return start;
}

void proto_publish_add_seq(struct proto_writer *w, uint64_t producer_seq, const struct proto_msg *m,
                           const struct proto_header *headers)
{
    if (producer_seq == 0) {
        w_fail(w);
        return;
    }
    proto_put_u64(w, producer_seq);
    proto_publish_add(w, m, headers);
}

int proto_publish_end(struct proto_writer *w, size_t start, uint16_t count)
{
    if (count == 0 || count > PROTO_MAX_BATCH) {
        w_fail(w);
        return -1;
    }
    if (!w->overflow && start + PROTO_HEADER_BYTES + 2 <= w->len &&
        (w->buf[start + 5] & PROTO_PUBLISH_PRODUCER)) {
        /* The count follows the producer id. */
        size_t at =
            start + PROTO_HEADER_BYTES + 2 + proto_rd16(w->buf + start + PROTO_HEADER_BYTES);
        if (at + 2 > w->len) {
            w_fail(w);
            return -1;
        }
        proto_wr16(w->buf + at, count);
        return proto_frame_end(w, start);
    }
    return end_counted(w, start, count, 2);
}

/* Saturating, so that absurd inputs give SIZE_MAX rather than wrapping. */
static size_t sat_add(size_t a, size_t b)
{
    return b > SIZE_MAX - a ? SIZE_MAX : a + b;
}

size_t proto_publish_msg_bytes(const struct proto_msg *m, const struct proto_header *headers)
{
    /* topic, id, key prefixes + deliver_at_ms + header_count + payload prefix */
    size_t n = 2 + 2 + 2 + 8 + 2 + 4;
    uint16_t i;

    n = sat_add(n, m->topic.len);
    n = sat_add(n, m->id.len);
    n = sat_add(n, m->key.len);
    n = sat_add(n, m->payload.len);
    for (i = 0; headers && i < m->header_count; i++) {
        n = sat_add(n, 4);
        n = sat_add(n, headers[i].name.len);
        n = sat_add(n, headers[i].value.len);
    }
    return n;
}

size_t proto_publish_ack_begin(struct proto_writer *w, uint32_t request_id)
{
    size_t start = proto_frame_begin(w, PROTO_PUBLISH_ACK, 0, request_id);

    proto_put_u16(w, 0); /* count, patched by proto_publish_ack_end() */
    return start;
}

void proto_publish_ack_add(struct proto_writer *w, uint64_t seq, uint8_t flags, const void *id,
                           size_t id_len)
{
    if (id_len > PROTO_MAX_ID) {
        w_fail(w);
        return;
    }
    proto_put_u64(w, seq);
    proto_put_u8(w, flags);
    proto_put_str16(w, id, id_len);
}

int proto_publish_ack_end(struct proto_writer *w, size_t start, uint16_t count)
{
    if (count == 0 || count > PROTO_MAX_BATCH) {
        w_fail(w);
        return -1;
    }
    return end_counted(w, start, count, 2);
}

size_t proto_topics_ok_begin(struct proto_writer *w, uint32_t request_id)
{
    size_t start = proto_frame_begin(w, PROTO_TOPICS_OK, 0, request_id);

    proto_put_u32(w, 0); /* count, patched by proto_topics_ok_end() */
    return start;
}

void proto_topics_ok_add(struct proto_writer *w, const struct proto_topic_info *t)
{
    if (t->name.len > PROTO_MAX_TOPIC) {
        w_fail(w);
        return;
    }
    /* entry_length: str16 name + five u64, then (has_config) four u64 and
     * a u8. */
    proto_put_u16(w, (uint16_t)(2 + t->name.len + 5 * 8 + (t->has_config ? 4 * 8 + 1 : 0)));
    proto_put_str16(w, t->name.ptr, t->name.len);
    proto_put_u64(w, t->head_seq);
    proto_put_u64(w, t->first_seq);
    proto_put_u64(w, t->message_count);
    proto_put_u64(w, t->bytes);
    proto_put_u64(w, t->created_ms);
    if (t->has_config) {
        proto_put_u64(w, t->max_age_ms);
        proto_put_u64(w, t->max_count);
        proto_put_u64(w, t->max_bytes);
        proto_put_u8(w, t->delete_acked);
        proto_put_u64(w, t->publish_rate);
    }
}

int proto_topics_ok_end(struct proto_writer *w, size_t start, uint32_t count)
{
    if (count > PROTO_MAX_TOPICS) {
        w_fail(w);
        return -1;
    }
    return end_counted(w, start, count, 4);
}

/* --- Consumer-group frames --------------------------------------------- */

int proto_encode_subscribe(struct proto_writer *w, uint32_t request_id,
                           const struct proto_subscribe *s)
{
    size_t start;

    if (s->sub_id == 0 || s->topic.len > PROTO_MAX_TOPIC || s->group.len > PROTO_MAX_GROUP ||
        s->start > PROTO_START_TIME || s->max_in_flight == 0 ||
        s->max_in_flight > PROTO_MAX_WINDOW || s->backoff_count > PROTO_MAX_BACKOFF) {
        w_fail(w);
        return -1;
    }
    start = proto_frame_begin(w, PROTO_SUBSCRIBE, s->flags, request_id);
    proto_put_u32(w, s->sub_id);
    proto_put_str16(w, s->topic.ptr, s->topic.len);
    proto_put_str16(w, s->group.ptr, s->group.len);
    proto_put_u8(w, s->start);
    proto_put_u64(w, s->start_value);
    proto_put_u32(w, s->max_in_flight);
    proto_put_u32(w, s->ack_wait_ms);
    proto_put_u16(w, s->max_deliveries);
    if (s->backoff_count) {
        proto_put_u8(w, s->backoff_count);
        for (uint8_t i = 0; i < s->backoff_count; i++)
            proto_put_u32(w, s->backoff_ms[i]);
    }
    return proto_frame_end(w, start);
}

int proto_encode_subscribe_ok(struct proto_writer *w, uint32_t request_id,
                              const struct proto_subscribe_ok *s)
{
    size_t start;

    if (s->sub_id == 0) {
        w_fail(w);
        return -1;
    }
    start = proto_frame_begin(w, PROTO_SUBSCRIBE_OK, 0, request_id);
    proto_put_u32(w, s->sub_id);
    proto_put_u64(w, s->cursor);
    proto_put_u64(w, s->head_seq);
    proto_put_u32(w, s->ack_wait_ms);
    proto_put_u16(w, s->max_deliveries);
    if (s->has_horizon)
        proto_put_u64(w, s->redelivery_horizon_ms);
    return proto_frame_end(w, start);
}

/* True when headers holds exactly count well-formed (name, value) pairs,
 * which is what the decoder will demand of them. */
static int headers_valid(const struct proto_slice *headers, uint16_t count)
{
    struct cur c;
    struct proto_header h;
    uint16_t i;

    if (count > PROTO_MAX_HEADERS)
        return 0;
    if (headers->len == 0)
        return count == 0;
    if (headers->ptr == NULL)
        return 0;
    c.p = headers->ptr;
    c.end = headers->ptr + headers->len;
    for (i = 0; i < count; i++) {
        if (rd_header(&c, &h) < 0)
            return 0;
    }
    return c.p == c.end;
}

int proto_encode_deliver(struct proto_writer *w, uint8_t flags, const struct proto_deliver *d)
{
    size_t start;

    if (d->sub_id == 0 || d->attempt == 0 || d->id.len > PROTO_MAX_ID ||
        d->key.len > PROTO_MAX_KEY || !headers_valid(&d->headers, d->header_count)) {
        w_fail(w);
        return -1;
    }
    start = proto_frame_begin(w, PROTO_DELIVER, flags, 0);
    proto_put_u32(w, d->sub_id);
    proto_put_u64(w, d->seq);
    proto_put_u32(w, d->attempt);
    proto_put_u64(w, d->ts_ms);
    proto_put_str16(w, d->id.ptr, d->id.len);
    proto_put_str16(w, d->key.ptr, d->key.len);
    proto_put_u16(w, d->header_count);
    proto_put_raw(w, d->headers.ptr, d->headers.len);
    proto_put_bytes32(w, d->payload.ptr, d->payload.len);
    return proto_frame_end(w, start);
}

size_t proto_deliver_bytes(const struct proto_deliver *d)
{
    /* header + sub_id + seq + attempt + ts_ms + id, key prefixes +
     * header_count + payload prefix */
    size_t n = PROTO_HEADER_BYTES + 4 + 8 + 4 + 8 + 2 + 2 + 2 + 4;

    n = sat_add(n, d->id.len);
    n = sat_add(n, d->key.len);
    n = sat_add(n, d->headers.len);
    n = sat_add(n, d->payload.len);
    return n;
}

int proto_encode_ack(struct proto_writer *w, uint32_t request_id, uint32_t sub_id,
                     const uint64_t *seqs, uint16_t count)
{
    size_t start;
    uint16_t i;

    if (sub_id == 0 || count == 0 || count > PROTO_MAX_ACKS || seqs == NULL) {
        w_fail(w);
        return -1;
    }
    start = proto_frame_begin(w, PROTO_ACK, 0, request_id);
    proto_put_u32(w, sub_id);
    proto_put_u16(w, count);
    for (i = 0; i < count; i++)
        proto_put_u64(w, seqs[i]);
    return proto_frame_end(w, start);
}

int proto_encode_nack(struct proto_writer *w, uint32_t request_id, const struct proto_nack *n)
{
    size_t start;

    if (n->sub_id == 0 || n->reason.len > PROTO_MAX_REASON) {
        w_fail(w);
        return -1;
    }
    start = proto_frame_begin(w, PROTO_NACK, 0, request_id);
    proto_put_u32(w, n->sub_id);
    proto_put_u64(w, n->seq);
    proto_put_u32(w, n->delay_ms);
    proto_put_str16(w, n->reason.ptr, n->reason.len);
    return proto_frame_end(w, start);
}

int proto_encode_sub_op(struct proto_writer *w, uint8_t type, uint32_t request_id, uint32_t sub_id,
                        uint64_t value)
{
    size_t start;

    if (sub_id == 0 || (type != PROTO_TOUCH && type != PROTO_CREDIT && type != PROTO_UNSUBSCRIBE) ||
        (type == PROTO_CREDIT && (value == 0 || value > PROTO_MAX_WINDOW))) {
        w_fail(w);
        return -1;
    }
    start = proto_frame_begin(w, type, 0, request_id);
    proto_put_u32(w, sub_id);
    if (type == PROTO_TOUCH)
        proto_put_u64(w, value);
    else if (type == PROTO_CREDIT)
        proto_put_u32(w, (uint32_t)value);
    return proto_frame_end(w, start);
}

int proto_encode_seek(struct proto_writer *w, uint32_t request_id, const struct proto_seek *s)
{
    size_t start;

    if (s->topic.len > PROTO_MAX_TOPIC || s->group.len > PROTO_MAX_GROUP ||
        s->start > PROTO_START_TIME) {
        w_fail(w);
        return -1;
    }
    start = proto_frame_begin(w, PROTO_SEEK, 0, request_id);
    proto_put_str16(w, s->topic.ptr, s->topic.len);
    proto_put_str16(w, s->group.ptr, s->group.len);
    proto_put_u8(w, s->start);
    proto_put_u64(w, s->value);
    return proto_frame_end(w, start);
}

int proto_encode_redrive(struct proto_writer *w, uint32_t request_id, const struct proto_redrive *r)
{
    size_t start;

    if (r->topic.len > PROTO_MAX_TOPIC || r->group.len > PROTO_MAX_GROUP) {
        w_fail(w);
        return -1;
    }
    start = proto_frame_begin(w, PROTO_REDRIVE, 0, request_id);
    proto_put_str16(w, r->topic.ptr, r->topic.len);
    proto_put_str16(w, r->group.ptr, r->group.len);
    proto_put_u64(w, r->dead_seq);
    return proto_frame_end(w, start);
}

int proto_encode_floor(struct proto_writer *w, uint32_t request_id, const struct proto_floor *f)
{
    size_t start;

    if (f->topic.len > PROTO_MAX_TOPIC || f->group.len > PROTO_MAX_GROUP) {
        w_fail(w);
        return -1;
    }
    start = proto_frame_begin(w, PROTO_FLOOR, 0, request_id);
    proto_put_str16(w, f->topic.ptr, f->topic.len);
    proto_put_str16(w, f->group.ptr, f->group.len);
    return proto_frame_end(w, start);
}

int proto_encode_floor_ok(struct proto_writer *w, uint32_t request_id, uint64_t floor,
                          const uint64_t *seqs, uint16_t count)
{
    size_t start;

    if (count > PROTO_MAX_FLOOR_KEEP) {
        w_fail(w);
        return -1;
    }
    for (uint16_t i = 0; i < count; i++) {
        if (seqs[i] == 0 || seqs[i] >= floor || (i && seqs[i] <= seqs[i - 1])) {
            w_fail(w);
            return -1;
        }
    }
    start = proto_frame_begin(w, PROTO_FLOOR_OK, 0, request_id);
    proto_put_u64(w, floor);
    proto_put_u16(w, count);
    for (uint16_t i = 0; i < count; i++)
        proto_put_u64(w, seqs[i]);
    return proto_frame_end(w, start);
}

int proto_encode_peek(struct proto_writer *w, uint32_t request_id, const struct proto_peek *p)
{
    size_t start;

    if (p->topic.len > PROTO_MAX_TOPIC || p->max_messages == 0 ||
        p->max_messages > PROTO_MAX_PEEK) {
        w_fail(w);
        return -1;
    }
    start = proto_frame_begin(w, PROTO_PEEK, 0, request_id);
    proto_put_str16(w, p->topic.ptr, p->topic.len);
    proto_put_u64(w, p->from_seq);
    proto_put_u64(w, p->from_time_ms);
    proto_put_u32(w, p->max_messages);
    proto_put_u32(w, p->max_bytes);
    return proto_frame_end(w, start);
}

size_t proto_peek_ok_begin(struct proto_writer *w, uint32_t request_id, uint64_t next_seq,
                           uint64_t head_seq)
{
    size_t start = proto_frame_begin(w, PROTO_PEEK_OK, 0, request_id);
    proto_put_u64(w, next_seq);
    proto_put_u64(w, head_seq);
    proto_put_u32(w, 0); /* count, patched by proto_peek_ok_end */
    return start;
}

void proto_peek_ok_add(struct proto_writer *w, const struct proto_deliver *d)
{
    if (d->id.len > PROTO_MAX_ID || d->key.len > PROTO_MAX_KEY ||
        !headers_valid(&d->headers, d->header_count)) {
        w_fail(w);
        return;
    }
    proto_put_u64(w, d->seq);
    proto_put_u64(w, d->ts_ms);
    proto_put_str16(w, d->id.ptr, d->id.len);
    proto_put_str16(w, d->key.ptr, d->key.len);
    proto_put_u16(w, d->header_count);
    proto_put_raw(w, d->headers.ptr, d->headers.len);
    proto_put_bytes32(w, d->payload.ptr, d->payload.len);
}

int proto_peek_ok_end(struct proto_writer *w, size_t start, uint32_t count, uint64_t next_seq)
{
    if (count > PROTO_MAX_PEEK)
        w_fail(w);
    if (w->overflow)
        return -1;
    proto_wr64(w->buf + start + PROTO_HEADER_BYTES, next_seq);
    proto_wr32(w->buf + start + PROTO_HEADER_BYTES + 16, count);
    return proto_frame_end(w, start);
}

size_t proto_peek_entry_bytes(const struct proto_deliver *d)
{
    /* seq + ts_ms + id, key prefixes + header_count + payload prefix */
    size_t n = 8 + 8 + 2 + 2 + 2 + 4;

    n = sat_add(n, d->id.len);
    n = sat_add(n, d->key.len);
    n = sat_add(n, d->headers.len);
    n = sat_add(n, d->payload.len);
    return n;
}

int proto_encode_groups(struct proto_writer *w, uint32_t request_id, const void *topic,
                        size_t topic_len)
{
    size_t start;

    if (topic_len > PROTO_MAX_TOPIC) {
        w_fail(w);
        return -1;
    }
    start = proto_frame_begin(w, PROTO_GROUPS, 0, request_id);
    proto_put_str16(w, topic, topic_len);
    return proto_frame_end(w, start);
}

int proto_encode_topic_config(struct proto_writer *w, uint32_t request_id,
                              const struct proto_topic_config *t)
{
    size_t start;

    if (t->topic.len > PROTO_MAX_TOPIC ||
        (t->delete_acked > 1 && t->delete_acked != PROTO_DELETE_ACKED_DEFAULT)) {
        w_fail(w);
        return -1;
    }
    start = proto_frame_begin(w, PROTO_TOPIC_CONFIG, 0, request_id);
    proto_put_str16(w, t->topic.ptr, t->topic.len);
    proto_put_u64(w, t->max_age_ms);
    proto_put_u64(w, t->max_count);
    proto_put_u64(w, t->max_bytes);
    proto_put_u8(w, t->delete_acked);
    return proto_frame_end(w, start);
}

size_t proto_ack_ok_begin(struct proto_writer *w, uint32_t request_id)
{
    size_t start = proto_frame_begin(w, PROTO_ACK_OK, 0, request_id);

    proto_put_u16(w, 0); /* count, patched by proto_ack_ok_end() */
    return start;
}

void proto_ack_ok_add(struct proto_writer *w, uint64_t seq, uint16_t code)
{
    if (code > FERRY_WIRE_CODE_MAX) {
        w_fail(w);
        return;
    }
    proto_put_u64(w, seq);
    proto_put_u16(w, code);
}

int proto_ack_ok_end(struct proto_writer *w, size_t start, uint16_t count)
{
    if (count > PROTO_MAX_ACKS) {
        w_fail(w);
        return -1;
    }
    return end_counted(w, start, count, 2);
}

size_t proto_groups_ok_begin(struct proto_writer *w, uint32_t request_id)
{
    size_t start = proto_frame_begin(w, PROTO_GROUPS_OK, 0, request_id);

    proto_put_u32(w, 0); /* count, patched by proto_groups_ok_end() */
    return start;
}

void proto_groups_ok_add(struct proto_writer *w, const struct proto_group_info *g)
{
    if (g->topic.len > PROTO_MAX_TOPIC || g->group.len > PROTO_MAX_GROUP) {
        w_fail(w);
        return;
    }
    /* entry_length: two str16 names + six u64 + three u32 + one u16. */
    proto_put_u16(w, (uint16_t)(2 + g->topic.len + 2 + g->group.len + 6 * 8 + 3 * 4 + 2));
    proto_put_str16(w, g->topic.ptr, g->topic.len);
    proto_put_str16(w, g->group.ptr, g->group.len);
    proto_put_u64(w, g->cursor);
    proto_put_u64(w, g->ack_floor);
    proto_put_u64(w, g->lag);
    proto_put_u32(w, g->in_flight);
    proto_put_u32(w, g->consumers);
    proto_put_u64(w, g->redelivered);
    proto_put_u64(w, g->dead_lettered);
    proto_put_u64(w, g->oldest_unacked_ms);
    proto_put_u32(w, g->ack_wait_ms);
    proto_put_u16(w, g->max_deliveries);
}

int proto_groups_ok_end(struct proto_writer *w, size_t start, uint32_t count)
{
    if (count > PROTO_MAX_GROUPS) {
        w_fail(w);
        return -1;
    }
    return end_counted(w, start, count, 4);
}

/* --- Error text -------------------------------------------------------- */

const char *proto_strerror(int code)
{
    switch (code) {
    case 0:
        return "success";
#define PROTO__STRERROR_CASE(name, num, text)                                                      \
    case (num):                                                                                    \
    case -(num):                                                                                   \
        return text;
        FERRY_ERRNO_MAP(PROTO__STRERROR_CASE)
#undef PROTO__STRERROR_CASE
    default:
        return "unknown error";
    }
}

int proto_encode_delete(struct proto_writer *w, uint32_t request_id, const struct proto_delete *d)
{
    if (d->topic.len < 1 || d->topic.len > PROTO_MAX_TOPIC || d->group.len > PROTO_MAX_GROUP ||
        (d->flags & ~PROTO_DELETE_FORCE) != 0) {
        w_fail(w);
        return -1;
    }
    size_t start = proto_frame_begin(w, PROTO_DELETE, d->flags, request_id);
    proto_put_str16(w, d->topic.ptr, d->topic.len);
    proto_put_str16(w, d->group.ptr, d->group.len);
    return proto_frame_end(w, start);
}

int proto_encode_delete_ok(struct proto_writer *w, uint32_t request_id,
                           const struct proto_delete_ok *d)
{
    size_t start = proto_frame_begin(w, PROTO_DELETE_OK, 0, request_id);
    proto_put_u64(w, d->messages);
    proto_put_u32(w, d->groups);
    return proto_frame_end(w, start);
}

int proto_encode_sub_end(struct proto_writer *w, const struct proto_sub_end *e)
{
    if (e->sub_id == 0 || e->code == 0 || e->code > FERRY_WIRE_CODE_MAX) {
        w_fail(w);
        return -1;
    }
    size_t mlen = e->message.len > PROTO_MAX_ERROR_TEXT ? PROTO_MAX_ERROR_TEXT : e->message.len;
    size_t start = proto_frame_begin(w, PROTO_SUB_END, 0, 0);
    proto_put_u32(w, e->sub_id);
    proto_put_u16(w, e->code);
    proto_put_str16(w, e->message.ptr, mlen);
    return proto_frame_end(w, start);
}
