/*
 * pending.c - requests awaiting replies, and routing each incoming frame.
 *
 * Every request written to the broker is queued here, in write order, as a
 * ring entry: a pipelined publish (callback + userdata), a pipelined ack
 * (ferry_ack_async; failures kept for ferry_flush) or a synchronous call
 * (a waiter on its caller's stack, or none for a reply nobody waits for). The broker answers
 * requests in order, so each reply must carry the front entry's request id and the frame type that
 * entry expects (or ERROR); any other frame breaks the stream and kills the
 * connection with FERRY_EPROTOCOL, failing every entry.
 *
 * Frames that are not replies:
 *   DELIVER               request id 0, routed by consume.c to its
 *                         subscription's callback or the delivery queue;
 *   PING                  answered with PONG (same request id);
 *   ERROR, FATAL flag     the broker is closing: every entry fails with the
 *                         code and the connection is dead;
 *   ERROR, request id 0   a connection-level notice without FATAL: ignored.
 *
 * Reentrancy: the read cursor is advanced before a frame is routed and an
 * entry is popped before its callback runs, so a callback may publish again
 * (or flush, or poll), which may in turn dispatch later frames.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

uint32_t ferry__next_request_id(ferry_conn *c)
{
    uint32_t id = c->next_id++;
    if (c->next_id == 0)
        c->next_id = 1; /* 0 means "the connection" in ERROR frames */
    return id;
}

int ferry__pending_push(ferry_conn *c, const struct ferry__pending *p)
{
    if (c->plen == c->pcap) {
        size_t ncap = c->pcap ? c->pcap * 2 : 64;
        struct ferry__pending *n = malloc(ncap * sizeof *n);
        if (!n)
            return FERRY_ENOMEM;
        for (size_t i = 0; i < c->plen; i++)
            n[i] = c->pend[(c->phead + i) % c->pcap];
        free(c->pend);
        c->pend = n;
        c->pcap = ncap;
        c->phead = 0;
    }
    c->pend[(c->phead + c->plen) % c->pcap] = *p;
    c->plen++;
    if (p->async)
        c->async_in_flight++;
    if (p->ack_async)
        c->acks_in_flight++;
    return 0;
}

static struct ferry__pending *pending_front(ferry_conn *c)
{
    return c->plen ? &c->pend[c->phead] : NULL;
}

static void pending_pop(ferry_conn *c, struct ferry__pending *out)
{
    *out = c->pend[c->phead];
    c->phead = (c->phead + 1) % c->pcap;
    c->plen--;
    if (out->async)
        c->async_in_flight--;
    if (out->ack_async)
        c->acks_in_flight--;
}

static int waiter_done(const ferry_conn *c, const void *arg)
{
    (void)c;
    return ((const struct ferry__waiter *)arg)->done;
}

int ferry__request(ferry_conn *c, size_t frame_start, uint32_t request_id, uint8_t reply_type,
                   uint16_t count, struct ferry__waiter *w, int64_t deadline_us)
{
    if (c->js) {
        /* A ferryd request on a JetStream connection: the admin calls
         * (topics, groups, peek, redrive, deletes...) have no meaning
         * there. */
        c->wlen = frame_start;
        return ferry__seterr(c, FERRY_EUNSUPPORTED,
                             "not available over JetStream (use JetStream's own tools; "
                             "docs/SCALING.md)");
    }
    struct ferry__pending p = {
        .request_id = request_id,
        .reply_type = reply_type,
        .count = count,
        .waiter = w,
    };
    w->done = 0;
    w->status = 0;
    if (ferry__pending_push(c, &p) < 0) {
        c->wlen = frame_start;
        return ferry__seterr(c, FERRY_ENOMEM, "out of memory");
    }

    int rc = ferry__pump(c, deadline_us, waiter_done, w);
    if (w->done)
        return w->status;
    if (rc == FERRY_ETIMEOUT) {
        /* Detach: the reply may still come and must then be dropped, not
         * written into this caller's (gone) stack frame. */
        for (size_t i = 0; i < c->plen; i++) {
            struct ferry__pending *e = &c->pend[(c->phead + i) % c->pcap];
            if (e->request_id == request_id)
                e->waiter = NULL;
        }
        return ferry__seterr(c, FERRY_ETIMEOUT, "no reply from the broker within the timeout");
    }
    return rc;
}

int ferry__request_nowait(ferry_conn *c, size_t frame_start, uint32_t request_id,
                          uint8_t reply_type)
{
    if (c->js) {
        c->wlen = frame_start;
        return FERRY_EUNSUPPORTED;
    }
    struct ferry__pending p = {.request_id = request_id, .reply_type = reply_type};
    if (ferry__pending_push(c, &p) < 0) {
        c->wlen = frame_start;
        return ferry__seterr(c, FERRY_ENOMEM, "out of memory");
    }
    return 0;
}

/* Kills the connection keeping the detail already in errmsg. */
static void kill_with_errmsg(ferry_conn *c, int code)
{
    char detail[FERRY__ERRMSG_BYTES];
    memcpy(detail, c->errmsg, sizeof detail);
    ferry__kill(c, code, "%s", detail);
}

void ferry__fail_all(ferry_conn *c, int code)
{
    char detail[FERRY__ERRMSG_BYTES];
    memcpy(detail, c->errmsg, sizeof detail);
    while (c->plen > 0) {
        struct ferry__pending p;
        pending_pop(c, &p);
        if (p.waiter) {
            p.waiter->status = code;
            p.waiter->done = 1;
        } else if (p.cb) {
            /* An earlier callback may have called in and replaced it. */
            memcpy(c->errmsg, detail, sizeof detail);
            p.cb(p.userdata, code, NULL);
        }
    }
}

/* Reads the single ack of a one-message pipelined publish. */
static int read_single_ack(ferry_conn *c, const struct proto_frame *f, ferry_ack *ack)
{
    const struct proto_publish_ack *pa = &f->u.publish_ack;
    if (pa->count != 1)
        return ferry__seterr(c, FERRY_EPROTOCOL, "%u acks for a one-message publish",
                             (unsigned)pa->count);
    struct proto_ack_iter it;
    struct proto_ack_entry e;
    proto_ack_iter_init(&it, pa);
    if (proto_ack_next(&it, &e) != 1 || e.id.len > PROTO_MAX_ID)
        return ferry__seterr(c, FERRY_EPROTOCOL, "a malformed ack entry");
    ack->seq = e.seq;
    ack->duplicate = (e.flags & PROTO_ACK_DUPLICATE) != 0;
    memcpy(ack->id, e.id.ptr, e.id.len);
    ack->id[e.id.len] = '\0';
    return 0;
}

static void route_error(ferry_conn *c, const struct proto_frame *f)
{
    uint16_t wire = f->u.error.code;
    int code = (wire >= 1 && wire <= FERRY_WIRE_CODE_MAX) ? -(int)wire : FERRY_EPROTOCOL;
    const struct proto_slice *m = &f->u.error.message;
    int mlen = m->len > PROTO_MAX_ERROR_TEXT ? PROTO_MAX_ERROR_TEXT : (int)m->len;

    if (f->flags & PROTO_ERROR_FATAL) {
        ferry__kill(c, code, "%.*s", mlen, (const char *)m->ptr);
        return;
    }
    if (f->request_id == 0)
        return;

    struct ferry__pending *h = pending_front(c);
    if (!h || h->request_id != f->request_id) {
        ferry__kill(c, FERRY_EPROTOCOL, "ERROR for request %u while %s", (unsigned)f->request_id,
                    h ? "another was due" : "none was pending");
        return;
    }
    struct ferry__pending p;
    pending_pop(c, &p);
    if (p.ack_async) {
        char detail[FERRY__ERRMSG_BYTES];
        snprintf(detail, sizeof detail, "%.*s", mlen, (const char *)m->ptr);
        ferry__ack_failed(c, p.sub_id, 0, code, detail);
        return;
    }
    ferry__seterr(c, code, "%.*s", mlen, (const char *)m->ptr);
    if (p.waiter) {
        p.waiter->status = code;
        p.waiter->done = 1;
    } else if (p.cb) {
        p.cb(p.userdata, code, NULL);
    }
}

static void route_reply(ferry_conn *c, const struct proto_frame *f)
{
    struct ferry__pending *h = pending_front(c);
    if (!h) {
        ferry__kill(c, FERRY_EPROTOCOL, "unsolicited frame of type 0x%02x", (unsigned)f->type);
        return;
    }
    if (h->request_id != f->request_id) {
        ferry__kill(c, FERRY_EPROTOCOL, "reply to request %u while request %u was due",
                    (unsigned)f->request_id, (unsigned)h->request_id);
        return;
    }
    if (h->reply_type != f->type) {
        ferry__kill(c, FERRY_EPROTOCOL, "frame type 0x%02x in reply to request %u, not 0x%02x",
                    (unsigned)f->type, (unsigned)f->request_id, (unsigned)h->reply_type);
        return;
    }

    /* Validate while the entry is still queued, so that a bad reply fails
     * it in order with everything behind it. */
    struct ferry__pending p;
    if (h->async) {
        ferry_ack ack;
        if (read_single_ack(c, f, &ack) < 0) {
            kill_with_errmsg(c, FERRY_EPROTOCOL);
            return;
        }
        pending_pop(c, &p);
        if (p.cb)
            p.cb(p.userdata, 0, &ack);
    } else if (h->ack_async) {
        uint64_t seq = 0;
        int status = ferry__ack_ok_status(c, f, h->count, &seq);
        if (status == FERRY_EPROTOCOL) {
            kill_with_errmsg(c, FERRY_EPROTOCOL);
            return;
        }
        pending_pop(c, &p);
        if (status < 0)
            ferry__ack_failed(c, p.sub_id, seq, status, "");
    } else if (h->waiter) {
        int status = h->waiter->on_reply ? h->waiter->on_reply(c, h->waiter, f) : 0;
        if (status == FERRY_EPROTOCOL) {
            kill_with_errmsg(c, FERRY_EPROTOCOL);
            return;
        }
        pending_pop(c, &p);
        p.waiter->status = status;
        p.waiter->done = 1;
    } else {
        pending_pop(c, &p); /* its caller timed out and left */
    }
}

static void route(ferry_conn *c, const struct proto_frame *f)
{
    switch (f->type) {
    case PROTO_PING: {
        if (ferry__wbuf_reserve(c, PROTO_HEADER_BYTES) < 0) {
            ferry__kill(c, FERRY_ENOMEM, "out of memory");
            return;
        }
        struct proto_writer w;
        proto_writer_init(&w, c->wbuf + c->wlen, c->wcap - c->wlen);
        if (proto_encode_empty(&w, PROTO_PONG, f->request_id) == 0)
            c->wlen += w.len;
        return;
    }
    case PROTO_ERROR:
        route_error(c, f);
        return;
    case PROTO_DELIVER:
        ferry__on_deliver(c, f);
        return;
    case PROTO_SUB_END:
        ferry__on_sub_end(c, f);
        return;
    default:
        route_reply(c, f);
        return;
    }
}

void ferry__dispatch(ferry_conn *c)
{
    while (!c->dead && c->rpos < c->rlen) {
        struct proto_frame f;
        ptrdiff_t n = proto_decode(c->rbuf + c->rpos, c->rlen - c->rpos, c->max_in_frame, &f);
        if (n == 0)
            return;
        if (n < 0) {
            ferry__kill(c, FERRY_EPROTOCOL, "undecodable frame from the broker: %s",
                        ferry_strerror((int)n));
            return;
        }
        c->rpos += (size_t)n;
        route(c, &f);
    }
}
