/*
 * consume.c - subscriptions, deliveries, acks.
 *
 * A subscription (struct ferry_sub) is attached to its connection's list
 * from just before its SUBSCRIBE is written until its UNSUBSCRIBE is
 * answered (or the connection closes). DELIVER frames name it by sub_id; a
 * delivery for an id not in the list, or for one whose UNSUBSCRIBE is on
 * its way (closing), is dropped: the broker gives those messages back to the
 * group itself. Sub ids are never reused on a connection, so a late
 * delivery cannot reach the wrong subscription.
 *
 * Each delivery is copied out of the read buffer into one allocation (the
 * public struct, then its strings and bytes) that holds a reference on its
 * subscription; topic and group point into the subscription. So a delivery
 * outlives every later call: ferry_unsubscribe and ferry_close only detach
 * the subscription (c = NULL) and drop the connection's reference, and the
 * memory goes with the last delivery.
 *
 * Routing a delivery: to the subscription's callback when it has one, else
 * to the tail of the connection's queue, which ferry_receive pops. Delivery
 * callbacks never nest: one that arrives while another callback runs (say
 * during its synchronous ferry_delivery_ack) is queued and marked as backlog, and
 * the backlog is served in order once the running callback returns, so a
 * steady stream cannot grow the stack one callback per delivery. Setting a
 * callback later marks the backlog too.
 *
 * Acks. ferry_delivery_ack and friends are one synchronous request each,
 * answered by ACK_OK with a code per sequence. ferry_delivery_ack_async
 * appends the sequence to its subscription's unsent list; acks_encode turns
 * each list into ACK frames (one per subscription, split at what a frame
 * holds), queued as ack_async ring entries. It runs whenever a wait blocks
 * (ferry__pump, through the wait hooks ferry_subscribe installs), from
 * ferry_poll, and from ferry_delivery_ack_async itself once a quarter of the
 * window is waiting or nothing was written for FERRY__LINGER_US, so a tight
 * loop batches while a trickle still goes out at once. A failed pipelined
 * ack is kept (the first one) for the next ferry_flush.
 *
 * Ends. A SUB_END frame says the broker ended a subscription (its topic
 * or group was deleted) and forgot it. The subscription stays attached,
 * marked ended (end_code): deliveries already queued for it may still be
 * received, later ones are dropped, its unsent acks are forgotten and every
 * request on it fails here with FERRY_EUNKNOWN_SUBSCRIPTION. Once none of
 * its deliveries is queued any more, ferry_receive returns end_code, once;
 * ferry_unsubscribe then only frees it, sending nothing.
 *
 * Credit: the broker counts in-flight deliveries per subscription and sends
 * while fewer than the window are unacked; acks, nacks and lease expiries
 * free slots. The client only sets the window (SUBSCRIBE, CREDIT).
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void acks_encode(ferry_conn *c);

/* Largest number of sequences in one ACK frame under the broker's frame
 * limit: header + sub_id + count, then 8 bytes each. */
static size_t acks_per_frame(const ferry_conn *c)
{
    size_t room = (c->info.max_frame_bytes - PROTO_MIN_LENGTH - 4 - 2) / 8;
    return room < PROTO_MAX_ACKS ? room : PROTO_MAX_ACKS;
}

static struct ferry_sub *sub_find(ferry_conn *c, uint32_t sub_id)
{
    for (struct ferry_sub *s = c->subs; s; s = s->next)
        if (s->sub_id == sub_id)
            return s;
    return NULL;
}

static void sub_unref(struct ferry_sub *s)
{
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1) {
        ferry__js_sub_free(s->js);
        free(s->acks);
        free(s);
    }
}

/* Drops every queued delivery of s (or of every subscription when s is
 * NULL). */
static void queue_purge(ferry_conn *c, const struct ferry_sub *s)
{
    if (c->js) {
        ferry__js_queue_purge(c, s);
        return;
    }
    struct ferry__delivery **pp = &c->dq_head;
    c->dq_tail = NULL;
    while (*pp) {
        struct ferry__delivery *d = *pp;
        if (!s || d->sub == s) {
            *pp = d->next;
            c->dq_len--;
            ferry_delivery_free(&d->pub);
        } else {
            c->dq_tail = d;
            pp = &d->next;
        }
    }
}

/* Takes s off its connection: its unsent acks are forgotten, later calls on
 * its deliveries fail with `ended`, and the connection's reference goes. */
static void sub_detach(struct ferry_sub *s, int ended)
{
    ferry_conn *c = s->c;
    for (struct ferry_sub **pp = &c->subs; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    }
    c->acks_unsent -= s->nacks;
    s->nacks = 0;
    if (s->end_code && !s->end_reported)
        c->ends_unreported--;
    s->next = NULL;
    s->c = NULL;
    s->ended = ended;
    sub_unref(s);
}

void ferry__consume_close(ferry_conn *c)
{
    queue_purge(c, NULL);
    while (c->subs)
        sub_detach(c->subs, FERRY_ECLOSED);
}

/* ------------------------------------------------------------------------
 * Receiving.
 */

/* Copies DELIVER d into one allocation. Returns NULL when out of memory. */
static struct ferry__delivery *delivery_copy(struct ferry_sub *s, const struct proto_frame *f)
{
    const struct proto_deliver *pd = &f->u.deliver;
    struct proto_header_iter it;
    struct proto_header h;

    /* Layout: struct, header array, then id, key, each name and value, and
     * the payload, each NUL-terminated. */
    size_t hdr_off = sizeof(struct ferry__delivery);
    hdr_off =
        (hdr_off + _Alignof(ferry_header) - 1) / _Alignof(ferry_header) * _Alignof(ferry_header);
    size_t bytes_off = hdr_off + (size_t)pd->header_count * sizeof(ferry_header);
    size_t total = bytes_off + pd->id.len + 1 + pd->key.len + 1 + pd->payload.len + 1;
    proto_deliver_header_iter_init(&it, pd);
    while (proto_header_next(&it, &h) == 1)
        total += h.name.len + 1 + h.value.len + 1;

    unsigned char *block = malloc(total);
    if (!block)
        return NULL;
    struct ferry__delivery *dl = (struct ferry__delivery *)block;
    ferry_header *hdrs = (ferry_header *)(block + hdr_off);
    unsigned char *p = block + bytes_off;

#define COPY_OUT(dst, slice)                                                                       \
    do {                                                                                           \
        if ((slice).len)                                                                           \
            memcpy(p, (slice).ptr, (slice).len);                                                   \
        p[(slice).len] = '\0';                                                                     \
        (dst) = p;                                                                                 \
        p += (slice).len + 1;                                                                      \
    } while (0)

    memset(dl, 0, sizeof *dl);
    ferry_delivery *d = &dl->pub;
    const void *v;
    COPY_OUT(v, pd->id);
    d->id = v;
    COPY_OUT(d->key, pd->key);
    d->key_len = pd->key.len;
    size_t i = 0;
    proto_deliver_header_iter_init(&it, pd);
    while (i < pd->header_count && proto_header_next(&it, &h) == 1) {
        COPY_OUT(v, h.name);
        hdrs[i].name = v;
        COPY_OUT(hdrs[i].value, h.value);
        hdrs[i].value_len = h.value.len;
        i++;
    }
    COPY_OUT(d->payload, pd->payload);
    d->payload_len = pd->payload.len;
#undef COPY_OUT

    d->headers = i ? hdrs : NULL;
    d->header_count = i;
    d->sub = s;
    d->topic = s->topic;
    d->group = s->group;
    d->seq = pd->seq;
    d->attempt = pd->attempt;
    d->redelivered = pd->attempt > 1 || (f->flags & PROTO_DELIVER_REDELIVERED) != 0;
    d->ts_ms = (int64_t)pd->ts_ms;
    dl->sub = s;
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return dl;
}

static void queue_push(ferry_conn *c, struct ferry__delivery *d)
{
    d->next = NULL;
    if (c->dq_tail)
        c->dq_tail->next = d;
    else
        c->dq_head = d;
    c->dq_tail = d;
    c->dq_len++;
}

/* The link pointing at the oldest queued delivery that ferry_receive may
 * return: one of a subscription without a callback. The others are backlog
 * (run_backlog), queued while a callback ran. Usually the head. */
static struct ferry__delivery **queue_find_plain(ferry_conn *c, struct ferry__delivery **prev)
{
    struct ferry__delivery **pp = &c->dq_head;
    *prev = NULL;
    while (*pp && (*pp)->sub->cb) {
        *prev = *pp;
        pp = &(*pp)->next;
    }
    return pp;
}

/* Unlinks *pp (prev: the entry before it, NULL at the head). */
static struct ferry__delivery *queue_unlink(ferry_conn *c, struct ferry__delivery **pp,
                                            struct ferry__delivery *prev)
{
    struct ferry__delivery *d = *pp;
    *pp = d->next;
    if (c->dq_tail == d)
        c->dq_tail = prev;
    c->dq_len--;
    d->next = NULL;
    return d;
}

/* Runs s's callback for d, marking the connection as inside one. */
static void run_callback(ferry_conn *c, struct ferry__delivery *d)
{
    ferry_delivery_cb cb = d->sub->cb;
    void *userdata = d->sub->userdata;
    c->cb_depth++;
    c->cb_deliveries++;
    cb(userdata, &d->pub);
    c->cb_depth--;
}

static void run_backlog(ferry_conn *c)
{
    if (c->cb_depth > 0)
        return; /* the outermost callback's caller serves it */
    c->dq_backlog = 0;
    for (;;) {
        /* Restart from the head each time: the callback may have received,
         * unsubscribed or queued more. */
        struct ferry__delivery **pp = &c->dq_head, *prev = NULL;
        while (*pp && !(*pp)->sub->cb) {
            prev = *pp;
            pp = &(*pp)->next;
        }
        if (!*pp || c->dead)
            return;
        run_callback(c, queue_unlink(c, pp, prev));
    }
}

void ferry__on_deliver(ferry_conn *c, const struct proto_frame *f)
{
    if (f->request_id != 0) {
        ferry__kill(c, FERRY_EPROTOCOL, "DELIVER with request id %u, not 0",
                    (unsigned)f->request_id);
        return;
    }
    struct ferry_sub *s = sub_find(c, f->u.deliver.sub_id);
    if (!s || s->closing || s->end_code)
        return; /* an ended subscription: the broker takes it back itself */
    if (f->u.deliver.id.len > PROTO_MAX_ID || f->u.deliver.key.len > PROTO_MAX_KEY) {
        ferry__kill(c, FERRY_EPROTOCOL, "DELIVER of seq %llu with an oversized id or key",
                    (unsigned long long)f->u.deliver.seq);
        return;
    }
    struct ferry__delivery *d = delivery_copy(s, f);
    if (!d) {
        ferry__kill(c, FERRY_ENOMEM, "out of memory for a delivery of %zu bytes",
                    f->u.deliver.payload.len);
        return;
    }
    if (!s->cb) {
        queue_push(c, d);
        return;
    }
    if (c->cb_depth == 0 && !c->dq_backlog) {
        run_callback(c, d);
    } else {
        /* Behind earlier ones, or inside a callback: in order, later. */
        queue_push(c, d);
        c->dq_backlog = 1;
    }
    if (c->dq_backlog && c->cb_depth == 0)
        run_backlog(c);
}

void ferry__on_sub_end(ferry_conn *c, const struct proto_frame *f)
{
    const struct proto_sub_end *e = &f->u.sub_end;
    struct ferry_sub *s = sub_find(c, e->sub_id);
    if (!s || s->end_code)
        return; /* not ours (any more): nothing to end */
    /* The decoder admits codes 1..FERRY_WIRE_CODE_MAX only. */
    s->end_code = -(int)e->code;
    size_t n = e->message.len < sizeof s->end_msg ? e->message.len : sizeof s->end_msg - 1;
    if (n)
        memcpy(s->end_msg, e->message.ptr, n);
    s->end_msg[n] = '\0';
    if (s->closing) {
        /* Its UNSUBSCRIBE is on its way, to be refused as unknown: that
         * is its success (ferry_unsubscribe). Nothing to report. */
        s->end_reported = 1;
        return;
    }
    /* The broker forgot it: acks not yet sent would only be refused. */
    c->acks_unsent -= s->nacks;
    s->nacks = 0;
    c->ends_unreported++;
}

/* The error every request on s meets once it is ending or ended, or 0. */
static int sub_gone(struct ferry_sub *s)
{
    if (s->end_code)
        return ferry__seterr(s->c, FERRY_EUNKNOWN_SUBSCRIPTION,
                             "the subscription to %s/%s ended: %s", s->topic, s->group,
                             s->end_msg[0] ? s->end_msg : ferry_strerror(s->end_code));
    if (s->closing)
        return ferry__seterr(s->c, FERRY_EUNKNOWN_SUBSCRIPTION,
                             "the subscription to %s/%s is ending", s->topic, s->group);
    return 0;
}

/* An ended subscription whose end ferry_receive may report now: none of
 * its deliveries is queued any more. NULL when there is none. */
static struct ferry_sub *end_ready(const ferry_conn *c)
{
    if (c->ends_unreported == 0)
        return NULL;
    for (struct ferry_sub *s = c->subs; s; s = s->next) {
        if (!s->end_code || s->end_reported)
            continue;
        const struct ferry__delivery *d = c->dq_head;
        while (d && d->sub != s)
            d = d->next;
        if (!d)
            return s;
    }
    return NULL;
}

/* Reports s's end (once): ferry_receive's error. */
static int end_report(ferry_conn *c, struct ferry_sub *s)
{
    s->end_reported = 1;
    c->ends_unreported--;
    return ferry__seterr(c, s->end_code, "subscription to %s/%s ended: %s", s->topic, s->group,
                         s->end_msg[0] ? s->end_msg : ferry_strerror(s->end_code));
}

static int queue_ready(const ferry_conn *c, const void *arg)
{
    (void)arg;
    for (const struct ferry__delivery *d = c->dq_head; d; d = d->next)
        if (!d->sub->cb)
            return 1;
    return end_ready(c) != NULL;
}

static int callback_ran(const ferry_conn *c, const void *arg)
{
    return c->cb_deliveries != *(const uint64_t *)arg || end_ready(c) != NULL;
}

int ferry_receive(ferry_conn *c, int timeout_ms, ferry_delivery **out)
{
    if (out)
        *out = NULL;
    if (!c)
        return FERRY_EINVALID;
    int rc = ferry__begin(c);
    if (rc < 0)
        return rc;
    if (c->js)
        return ferry__js_receive(c, timeout_ms, out);

    uint64_t cb_before = c->cb_deliveries;
    int (*ready)(const ferry_conn *, const void *) = out ? queue_ready : callback_ran;
    if (c->dq_backlog)
        run_backlog(c);
    struct ferry_sub *ended = end_ready(c);
    if (ended)
        return end_report(c, ended);
    if (!ready(c, &cb_before)) {
        /* Read what has come first, so that a zero timeout still sees it. */
        if (c->acks_unsent > 0)
            acks_encode(c);
        if (ferry__write_some(c) < 0 || ferry__read_some(c) < 0)
            return c->dead;
        if (c->dq_backlog)
            run_backlog(c);
        if (!ready(c, &cb_before) && timeout_ms != 0) {
            rc = ferry__pump(c, ferry__deadline(timeout_ms), ready, &cb_before);
            if (rc < 0 && rc != FERRY_ETIMEOUT)
                return rc;
        }
        if ((ended = end_ready(c)) != NULL)
            return end_report(c, ended);
        if (!ready(c, &cb_before))
            return ferry__seterr(c, FERRY_ETIMEOUT, "no delivery within %d ms", timeout_ms);
    }
    if (out) {
        struct ferry__delivery *prev;
        struct ferry__delivery **pp = queue_find_plain(c, &prev);
        *out = &queue_unlink(c, pp, prev)->pub;
    }
    return 0;
}

void ferry_delivery_free(ferry_delivery *d)
{
    if (!d)
        return;
    struct ferry__delivery *dl = (struct ferry__delivery *)d;
    struct ferry_sub *s = dl->sub;
    free(dl);
    if (s) /* NULL for a peeked message (ferry_peek) */
        sub_unref(s);
}

int ferry_sub_set_callback(ferry_sub *s, ferry_delivery_cb cb, void *userdata)
{
    if (!s)
        return FERRY_EINVALID;
    s->cb = cb;
    s->userdata = userdata;
    /* Over JetStream the fetch threads share the queue; ferry_poll and
     * ferry_receive run the callbacks of whatever is queued. */
    if (cb && s->c && !s->c->js) {
        for (const struct ferry__delivery *d = s->c->dq_head; d; d = d->next) {
            if (d->sub == s) {
                s->c->dq_backlog = 1;
                break;
            }
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Requests.
 */

/* Reserves need bytes at the end of the write buffer and points w there. */
static int frame_open(ferry_conn *c, size_t need, struct proto_writer *w)
{
    if (ferry__wbuf_reserve(c, need) < 0)
        return ferry__seterr(c, FERRY_ENOMEM, "out of memory");
    proto_writer_init(w, c->wbuf + c->wlen, c->wcap - c->wlen);
    return 0;
}

/* Commits the frame an encoder wrote through w (enc_rc its result). */
static int frame_commit(ferry_conn *c, struct proto_writer *w, int enc_rc, const char *what)
{
    if (enc_rc < 0 || w->overflow)
        return ferry__seterr(c, FERRY_EINVALID, "cannot encode %s", what);
    if (w->len - 4 > c->info.max_frame_bytes)
        return ferry__seterr(c, FERRY_EFRAME_TOO_LARGE,
                             "%s encodes to %zu bytes; the broker accepts frames of at most %u",
                             what, w->len, (unsigned)c->info.max_frame_bytes);
    c->wlen += w->len;
    return 0;
}

int ferry__ack_ok_status(ferry_conn *c, const struct proto_frame *f, size_t expect,
                         uint64_t *seq_out)
{
    const struct proto_ack_ok *a = &f->u.ack_ok;
    if (a->count != expect)
        return ferry__seterr(c, FERRY_EPROTOCOL, "ACK_OK with %u entries for a request of %zu",
                             (unsigned)a->count, expect);
    struct proto_ack_ok_iter it;
    uint64_t seq;
    uint16_t code;
    proto_ack_ok_iter_init(&it, a);
    while (proto_ack_ok_next(&it, &seq, &code) == 1) {
        if (code == 0)
            continue;
        if (code > FERRY_WIRE_CODE_MAX)
            return ferry__seterr(c, FERRY_EPROTOCOL, "ACK_OK with code %u for seq %llu",
                                 (unsigned)code, (unsigned long long)seq);
        *seq_out = seq;
        return -(int)code;
    }
    return 0;
}

/* A synchronous ACK, NACK, TOUCH, CREDIT or UNSUBSCRIBE: ACK_OK expected
 * with `expect` entries. entry_failed tells a per-sequence failure (the
 * request was otherwise applied) from a failure of the whole request. */
struct ack_wait {
    size_t expect;
    uint64_t seq; /* of the first failing entry */
    int entry_failed;
};

static int on_ack_ok(ferry_conn *c, struct ferry__waiter *w, const struct proto_frame *f)
{
    struct ack_wait *x = w->ctx;
    int rc = ferry__ack_ok_status(c, f, x->expect, &x->seq);
    if (rc < 0 && rc != FERRY_EPROTOCOL)
        x->entry_failed = 1;
    return rc;
}

/* Sends the frame appended at start and waits for its ACK_OK. On a failure
 * of one sequence, errmsg names it and the subscription. */
static int ack_request(ferry_conn *c, const struct ferry_sub *s, size_t start, uint32_t id,
                       struct ack_wait *x)
{
    struct ferry__waiter w = {.on_reply = on_ack_ok, .ctx = x};
    int rc =
        ferry__request(c, start, id, PROTO_ACK_OK, 0, &w, ferry__deadline(c->request_timeout_ms));
    if (rc < 0 && x->entry_failed && s)
        ferry__seterr(c, rc, "seq %llu (topic %s, group %s)", (unsigned long long)x->seq, s->topic,
                      s->group);
    return rc;
}

/* The live subscription of d, on a usable connection: 0, or the error every
 * request on d would meet. Clears errmsg (a public call starts). */
static int delivery_sub(const ferry_delivery *d, struct ferry_sub **out)
{
    if (!d)
        return FERRY_EINVALID;
    struct ferry_sub *s = ((const struct ferry__delivery *)d)->sub;
    *out = s;
    if (!s)
        return FERRY_EINVALID; /* a peeked message (ferry_peek): nothing to ack */
    if (!s->c)
        return s->ended;
    int rc = ferry__begin(s->c);
    if (rc < 0)
        return rc;
    return sub_gone(s);
}

/* Acks n sequences of s in frames of at most acks_per_frame(), each waited
 * for. Per-sequence failures do not stop the later frames; the first is
 * returned. */
static int ack_seqs(struct ferry_sub *s, const uint64_t *seqs, size_t n)
{
    ferry_conn *c = s->c;
    size_t per = acks_per_frame(c);
    int first = 0;
    char first_msg[FERRY__ERRMSG_BYTES] = "";
    for (size_t done = 0; done < n;) {
        size_t k = n - done < per ? n - done : per;
        struct proto_writer w;
        int rc = frame_open(c, PROTO_HEADER_BYTES + 6 + 8 * k, &w);
        if (rc < 0)
            return rc;
        size_t start = c->wlen;
        uint32_t id = ferry__next_request_id(c);
        rc = frame_commit(c, &w, proto_encode_ack(&w, id, s->sub_id, seqs + done, (uint16_t)k),
                          "ACK");
        if (rc < 0)
            return rc;
        struct ack_wait x = {.expect = k};
        rc = ack_request(c, s, start, id, &x);
        if (rc < 0 && !x.entry_failed)
            return rc;
        if (rc < 0 && first == 0) {
            first = rc;
            snprintf(first_msg, sizeof first_msg, "%s", c->errmsg);
        }
        done += k;
    }
    if (first < 0)
        ferry__seterr(c, first, "%s", first_msg);
    return first;
}

int ferry_delivery_ack(const ferry_delivery *d)
{
    struct ferry_sub *s;
    int rc = delivery_sub(d, &s);
    if (rc < 0)
        return rc;
    if (s->js)
        return ferry__js_ack(s, &d->seq, 1, 1);
    return ack_seqs(s, &d->seq, 1);
}

int ferry_sub_ack(ferry_sub *s, const uint64_t *seqs, size_t n)
{
    if (!s)
        return FERRY_EINVALID;
    if (!s->c)
        return s->ended;
    int rc = ferry__begin(s->c);
    if (rc < 0)
        return rc;
    if (n == 0 || !seqs)
        return ferry__seterr(s->c, FERRY_EINVALID, "no sequences to ack");
    if ((rc = sub_gone(s)) < 0)
        return rc;
    if (s->js)
        return ferry__js_ack(s, seqs, n, 1);
    return ack_seqs(s, seqs, n);
}

int ferry_delivery_ack_async(const ferry_delivery *d)
{
    struct ferry_sub *s;
    int rc = delivery_sub(d, &s);
    if (rc < 0)
        return rc;
    if (s->js)
        return ferry__js_ack(s, &d->seq, 1, 0);
    ferry_conn *c = s->c;
    if (s->nacks == s->acks_cap) {
        size_t ncap = s->acks_cap ? s->acks_cap * 2 : 64;
        uint64_t *n = realloc(s->acks, ncap * sizeof *n);
        if (!n)
            return ferry__seterr(c, FERRY_ENOMEM, "out of memory");
        s->acks = n;
        s->acks_cap = ncap;
    }
    s->acks[s->nacks++] = d->seq;
    c->acks_unsent++;

    /* A quarter of the window: enough to batch, early enough that the broker
     * always has freed slots to fill while we work through the rest. */
    size_t batch = s->window / 4 ? s->window / 4 : 1;
    if (s->nacks >= batch || ferry__now_us() - c->last_write_us >= FERRY__LINGER_US) {
        acks_encode(c);
        ferry__write_some(c); /* a failure kills c; the next flush reports it */
    }
    return 0;
}

/* Encodes every subscription's unsent async acks as ACK frames (one per
 * subscription, split at what a frame holds) and queues their replies. */
static void acks_encode(ferry_conn *c)
{
    if (c->dead) {
        for (struct ferry_sub *s = c->subs; s; s = s->next)
            s->nacks = 0;
        c->acks_unsent = 0;
        return;
    }
    size_t per = acks_per_frame(c);
    for (struct ferry_sub *s = c->subs; s && c->acks_unsent > 0; s = s->next) {
        size_t done = 0;
        while (done < s->nacks) {
            size_t k = s->nacks - done < per ? s->nacks - done : per;
            struct proto_writer w;
            if (frame_open(c, PROTO_HEADER_BYTES + 6 + 8 * k, &w) < 0)
                break; /* out of memory: keep them for the next attempt */
            size_t start = c->wlen;
            uint32_t id = ferry__next_request_id(c);
            if (frame_commit(c, &w,
                             proto_encode_ack(&w, id, s->sub_id, s->acks + done, (uint16_t)k),
                             "ACK") < 0)
                break;
            struct ferry__pending p = {
                .request_id = id,
                .reply_type = PROTO_ACK_OK,
                .ack_async = 1,
                .count = (uint16_t)k,
                .sub_id = s->sub_id,
            };
            if (ferry__pending_push(c, &p) < 0) {
                c->wlen = start;
                break;
            }
            done += k;
        }
        if (done > 0) {
            memmove(s->acks, s->acks + done, (s->nacks - done) * sizeof *s->acks);
            s->nacks -= done;
            c->acks_unsent -= done;
        }
    }
}

void ferry__ack_failed(ferry_conn *c, uint32_t sub_id, uint64_t seq, int code, const char *detail)
{
    if (c->ack_err < 0)
        return; /* the first one is reported */
    c->ack_err = code;
    const struct ferry_sub *s = sub_find(c, sub_id);
    char where[2 * PROTO_MAX_TOPIC + 64];
    if (s)
        snprintf(where, sizeof where, "topic %s, group %s", s->topic, s->group);
    else
        snprintf(where, sizeof where, "subscription %u", (unsigned)sub_id);
    if (seq)
        snprintf(c->ack_errmsg, sizeof c->ack_errmsg, "pipelined ack of seq %llu (%s)%s%s",
                 (unsigned long long)seq, where, *detail ? ": " : "", detail);
    else
        snprintf(c->ack_errmsg, sizeof c->ack_errmsg, "pipelined ack (%s)%s%s", where,
                 *detail ? ": " : "", detail);
}

int ferry_delivery_nack(const ferry_delivery *d, uint32_t delay_ms, const char *reason)
{
    struct ferry_sub *s;
    int rc = delivery_sub(d, &s);
    if (rc < 0)
        return rc;
    ferry_conn *c = s->c;
    size_t rlen = reason ? strlen(reason) : 0;
    if (rlen > PROTO_MAX_REASON)
        return ferry__seterr(c, FERRY_EINVALID, "reason is %zu bytes; at most %u", rlen,
                             (unsigned)PROTO_MAX_REASON);
    if (s->js)
        return ferry__js_nack(s, d->seq, delay_ms, reason);
    struct proto_nack n = {
        .sub_id = s->sub_id,
        .seq = d->seq,
        .delay_ms = delay_ms,
        .reason = {(const uint8_t *)reason, rlen},
    };
    struct proto_writer w;
    rc = frame_open(c, PROTO_HEADER_BYTES + 4 + 8 + 4 + 2 + rlen, &w);
    if (rc < 0)
        return rc;
    size_t start = c->wlen;
    uint32_t id = ferry__next_request_id(c);
    rc = frame_commit(c, &w, proto_encode_nack(&w, id, &n), "NACK");
    if (rc < 0)
        return rc;
    struct ack_wait x = {.expect = 1};
    return ack_request(c, s, start, id, &x);
}

/* TOUCH, CREDIT or UNSUBSCRIBE of s, answered by ACK_OK of expect entries. */
static int sub_op(struct ferry_sub *s, uint8_t type, uint64_t value, size_t expect,
                  const char *what)
{
    ferry_conn *c = s->c;
    struct proto_writer w;
    int rc = frame_open(c, PROTO_HEADER_BYTES + 4 + 8, &w);
    if (rc < 0)
        return rc;
    size_t start = c->wlen;
    uint32_t id = ferry__next_request_id(c);
    rc = frame_commit(c, &w, proto_encode_sub_op(&w, type, id, s->sub_id, value), what);
    if (rc < 0)
        return rc;
    struct ack_wait x = {.expect = expect};
    return ack_request(c, s, start, id, &x);
}

int ferry_delivery_touch(const ferry_delivery *d)
{
    struct ferry_sub *s;
    int rc = delivery_sub(d, &s);
    if (rc < 0)
        return rc;
    if (s->js)
        return ferry__js_touch(s, d->seq);
    return sub_op(s, PROTO_TOUCH, d->seq, 1, "TOUCH");
}

int ferry_sub_set_window(ferry_sub *s, uint32_t max_in_flight)
{
    if (!s)
        return FERRY_EINVALID;
    if (!s->c)
        return s->ended;
    int rc = ferry__begin(s->c);
    if (rc < 0)
        return rc;
    if (max_in_flight == 0 || max_in_flight > PROTO_MAX_WINDOW)
        return ferry__seterr(s->c, FERRY_EINVALID, "window of %u; use 1-%u",
                             (unsigned)max_in_flight, (unsigned)PROTO_MAX_WINDOW);
    if ((rc = sub_gone(s)) < 0)
        return rc;
    if (s->js)
        return ferry__js_set_window(s, max_in_flight);
    rc = sub_op(s, PROTO_CREDIT, max_in_flight, 0, "CREDIT");
    if (rc == 0)
        s->window = max_in_flight;
    return rc;
}

/* ------------------------------------------------------------------------
 * Subscribing.
 */

int ferry__check_names(ferry_conn *c, const char *topic, const char *group)
{
    size_t tlen = topic ? strlen(topic) : 0;
    if (proto_sub_topic_valid((const uint8_t *)topic, tlen) < 0)
        return ferry__seterr(c, FERRY_EINVALID_TOPIC,
                             "\"%.*s\": a topic is 1-%u of [A-Za-z0-9._-], starting with a letter "
                             "or digit (or '_' for the broker's own topics)",
                             PROTO_MAX_TOPIC + 1, topic ? topic : "", (unsigned)PROTO_MAX_TOPIC);
    if (!group)
        return 0;
    size_t glen = strlen(group);
    if (proto_group_valid((const uint8_t *)group, glen) < 0)
        return ferry__seterr(c, FERRY_EINVALID_GROUP,
                             "\"%.*s\": a group is 1-%u of [A-Za-z0-9._-], starting with a letter "
                             "or digit",
                             PROTO_MAX_GROUP + 1, group, (unsigned)PROTO_MAX_GROUP);
    return 0;
}

static int on_subscribe_ok(ferry_conn *c, struct ferry__waiter *w, const struct proto_frame *f)
{
    struct ferry_sub *s = w->ctx;
    const struct proto_subscribe_ok *ok = &f->u.subscribe_ok;
    if (ok->sub_id != s->sub_id)
        return ferry__seterr(c, FERRY_EPROTOCOL, "SUBSCRIBE_OK for subscription %u, not %u",
                             (unsigned)ok->sub_id, (unsigned)s->sub_id);
    s->ack_wait_ms = ok->ack_wait_ms;
    s->max_deliveries = ok->max_deliveries;
    s->horizon_ms = ok->has_horizon ? ok->redelivery_horizon_ms : 0;
    return 0;
}

/* A sub id not in use on c (ids only grow; 0 is invalid). */
static uint32_t next_sub_id(ferry_conn *c)
{
    for (;;) {
        uint32_t id = c->next_sub_id++;
        if (id != 0 && !sub_find(c, id))
            return id;
    }
}

static void hook_backlog(ferry_conn *c)
{
    if (c->dq_backlog)
        run_backlog(c);
}

static void hook_acks(ferry_conn *c)
{
    if (c->acks_unsent > 0)
        acks_encode(c);
}

/* What every wait of a connection that has subscribed runs (internal.h). */
static const struct ferry__wait_hooks consumer_hooks = {
    .before_check = hook_backlog,
    .before_block = hook_acks,
};

int ferry_subscribe(ferry_conn *c, const char *topic, const char *group,
                    const ferry_sub_options *opts, ferry_sub **out)
{
    if (out)
        *out = NULL;
    if (!c)
        return FERRY_EINVALID;
    int rc = ferry__begin(c);
    if (rc < 0)
        return rc;
    if (!out)
        return ferry__seterr(c, FERRY_EINVALID, "out must not be NULL");
    rc = ferry__check_names(c, topic, group ? group : "");
    if (rc < 0)
        return rc;
    ferry_sub_options o = FERRY_SUB_OPTIONS_INIT;
    char why[160];
    if (opts && (rc = ferry__copy_options(&o, sizeof o, opts, FERRY__SUB_OPTIONS_SIZE_0,
                                          "ferry_sub_options", why, sizeof why)) < 0)
        return ferry__seterr(c, rc, "%s", why);
    if (o.max_in_flight == 0)
        o.max_in_flight = FERRY__DEFAULT_SUB_WINDOW;
    if (o.max_in_flight > PROTO_MAX_WINDOW)
        return ferry__seterr(c, FERRY_EINVALID, "max_in_flight %u; use 1-%u",
                             (unsigned)o.max_in_flight, (unsigned)PROTO_MAX_WINDOW);
    if ((unsigned)o.start > FERRY_START_TIME)
        return ferry__seterr(c, FERRY_EINVALID, "unknown start %d", (int)o.start);
    if (o.backoff_count > PROTO_MAX_BACKOFF)
        return ferry__seterr(c, FERRY_EINVALID, "%u backoff values; at most %d",
                             (unsigned)o.backoff_count, (int)PROTO_MAX_BACKOFF);

    struct ferry_sub *s = calloc(1, sizeof *s);
    if (!s)
        return ferry__seterr(c, FERRY_ENOMEM, "out of memory");
    size_t tlen = strlen(topic), glen = strlen(group);
    memcpy(s->topic, topic, tlen + 1);
    memcpy(s->group, group, glen + 1);
    s->window = o.max_in_flight;
    s->sub_id = next_sub_id(c);
    atomic_init(&s->refs, 1);
    /* Attached before SUBSCRIBE is sent: deliveries may follow SUBSCRIBE_OK
     * in the same read, before this call returns. From now on every wait
     * serves the consumer side. */
    s->c = c;
    s->next = c->subs;
    c->subs = s;
    if (c->js) {
        rc = ferry__js_subscribe(c, s, &o);
        if (rc < 0) {
            ferry__js_unsubscribe(s);
            sub_detach(s, FERRY_EUNKNOWN_SUBSCRIPTION);
            return rc;
        }
        *out = s;
        return 0;
    }
    c->hooks = &consumer_hooks;

    struct proto_subscribe ps = {
        .sub_id = s->sub_id,
        .topic = {(const uint8_t *)topic, tlen},
        .group = {(const uint8_t *)group, glen},
        .start = (uint8_t)o.start,
        .start_value = o.start_value,
        .max_in_flight = o.max_in_flight,
        .ack_wait_ms = o.ack_wait_ms,
        .max_deliveries = o.max_deliveries,
        .backoff_count = o.backoff_count,
        .flags = o.topic_must_exist ? PROTO_SUBSCRIBE_TOPIC_MUST_EXIST : 0,
    };
    memcpy(ps.backoff_ms, o.backoff_ms, sizeof(ps.backoff_ms));
    struct proto_writer w;
    rc = frame_open(c,
                    PROTO_HEADER_BYTES + 4 + 2 + tlen + 2 + glen + 1 + 8 + 4 + 4 + 2 + 1 +
                        4 * (size_t)o.backoff_count,
                    &w);
    size_t start = c->wlen;
    uint32_t id = ferry__next_request_id(c);
    if (rc == 0)
        rc = frame_commit(c, &w, proto_encode_subscribe(&w, id, &ps), "SUBSCRIBE");
    struct ferry__waiter waiter = {.on_reply = on_subscribe_ok, .ctx = s};
    if (rc == 0)
        rc = ferry__request(c, start, id, PROTO_SUBSCRIBE_OK, 0, &waiter,
                            ferry__deadline(c->request_timeout_ms));
    if (rc < 0) {
        if (rc == FERRY_ETIMEOUT && !c->dead) {
            /* The broker may yet subscribe us: end it, not waiting. */
            char detail[FERRY__ERRMSG_BYTES];
            snprintf(detail, sizeof detail, "%s", c->errmsg);
            struct proto_writer uw;
            if (frame_open(c, PROTO_HEADER_BYTES + 4 + 8, &uw) == 0) {
                size_t ustart = c->wlen;
                uint32_t uid = ferry__next_request_id(c);
                if (frame_commit(c, &uw,
                                 proto_encode_sub_op(&uw, PROTO_UNSUBSCRIBE, uid, s->sub_id, 0),
                                 "UNSUBSCRIBE") == 0)
                    ferry__request_nowait(c, ustart, uid, PROTO_ACK_OK);
            }
            ferry__seterr(c, rc, "%s", detail);
        }
        queue_purge(c, s);
        sub_detach(s, FERRY_EUNKNOWN_SUBSCRIPTION);
        return rc;
    }
    *out = s;
    return 0;
}

static int unsubscribe_ok(ferry_conn *c, struct ferry__waiter *w, const struct proto_frame *f)
{
    (void)w;
    uint64_t seq;
    return ferry__ack_ok_status(c, f, 0, &seq);
}

int ferry_unsubscribe(ferry_sub *s)
{
    if (!s)
        return 0;
    ferry_conn *c = s->c;
    if (!c)
        return s->ended; /* detached by ferry_close: nothing left to free */
    if (s->end_code) {
        /* The broker ended it and forgot it (SUB_END): nothing to send. */
        ferry__js_unsubscribe(s);
        c->errmsg[0] = '\0';
        queue_purge(c, s);
        sub_detach(s, FERRY_EUNKNOWN_SUBSCRIPTION);
        return 0;
    }
    int rc = ferry__begin(c);
    if (rc == 0 && c->js) {
        ferry__js_unsubscribe(s);
        queue_purge(c, s);
        sub_detach(s, FERRY_EUNKNOWN_SUBSCRIPTION);
        return 0;
    }
    if (rc == 0) {
        /* Acks first, so that the broker applies them before it gives the
         * rest back. */
        if (c->acks_unsent > 0)
            acks_encode(c);
        s->closing = 1;
        queue_purge(c, s);
        struct proto_writer w;
        rc = frame_open(c, PROTO_HEADER_BYTES + 4 + 8, &w);
        size_t start = c->wlen;
        uint32_t id = ferry__next_request_id(c);
        if (rc == 0)
            rc = frame_commit(c, &w, proto_encode_sub_op(&w, PROTO_UNSUBSCRIBE, id, s->sub_id, 0),
                              "UNSUBSCRIBE");
        struct ferry__waiter waiter = {.on_reply = unsubscribe_ok};
        if (rc == 0)
            rc = ferry__request(c, start, id, PROTO_ACK_OK, 0, &waiter,
                                ferry__deadline(c->request_timeout_ms));
        if (rc == FERRY_EUNKNOWN_SUBSCRIPTION && s->end_code) {
            /* The broker ended it first (SUB_END) and forgot it. */
            c->errmsg[0] = '\0';
            rc = 0;
        }
        queue_purge(c, s);
    }
    sub_detach(s, FERRY_EUNKNOWN_SUBSCRIPTION);
    return rc;
}
