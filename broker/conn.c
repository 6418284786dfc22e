/*
 * conn.c - one client connection: reading, decoding, writing (conn.h).
 *
 * State machine:
 *
 *   HANDSHAKE --HELLO ok--> READY --fatal error / EOF / shutdown--> CLOSING
 *       |                                                             |
 *       +--bad first frame, timeout, wrong version------------------->+
 *                                                                     v
 *                                             replies flushed --> CLOSED
 *
 * Reading: bytes land in rbuf; complete frames are decoded in place and
 * dispatched; a partial frame stays at the front. rbuf grows only to the
 * size the frame header announces, and only after proto_decode has checked
 * that size against the limit of the current state (64 KiB during the
 * handshake, max_frame_bytes after), so a peer can never make the broker
 * allocate what an oversized header claims.
 *
 * Ordering (commit.h): every reply on a connection leaves in request
 * order, which the layer above keeps; this file writes bytes in the order
 * it is given them.
 *
 * Backpressure: when a connection's requests awaiting commit, or its unsent
 * replies, exceed conn_max_pending_bytes, the connection stops being read
 * (and stops decoding what it has buffered) until they drain. While the
 * pending batch is over 1/32 of batch_max_bytes, connections with
 * more than LIGHT_CONN_BYTES awaiting commit stop too; over the whole limit,
 * every connection does.
 */
#include <stdlib.h>
#include <string.h>

#include "conn.h"

#include "broker.h"
#include "clock.h"
#include "log.h"
#include "proto.h"

#define RBUF_INITIAL (64u * 1024u)

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void conn_process(struct conn *c);
static void conn_flush(struct conn *c);

static uint32_t frame_limit(const struct conn *c)
{
    return c->state == CONN_HANDSHAKE ? PROTO_HANDSHAKE_MAX_FRAME : c->broker->cfg.max_frame_bytes;
}

static void conn_free(struct conn *c)
{
    free(c->rbuf);
    buf_free(&c->wq);
    buf_free(&c->wbusy);
    free(c);
}

void conn_unref(struct conn *c)
{
    if (--c->refs == 0)
        conn_free(c);
}

/* A closed connection's buffers go at once, not when its last op is
 * answered. */
static void conn_release(struct conn *c)
{
    free(c->rbuf);
    c->rbuf = NULL;
    c->rlen = c->rcap = 0;
    buf_free(&c->wq);
    buf_free(&c->wbusy);
}

static void on_close(uv_handle_t *h)
{
    struct conn *c = h->data;
    struct broker *b = c->broker;
    c->state = CONN_CLOSED;
    conn_release(c);
    if (c->prev)
        c->prev->next = c->next;
    else
        b->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    b->nconns--;
    b->events.on_closed(c);
    conn_unref(c);
}

static void conn_close_now(struct conn *c)
{
    if (uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    uv_close((uv_handle_t *)&c->tcp, on_close);
}

void conn_abort(struct conn *c)
{
    conn_pause_reading(c);
    c->state = CONN_CLOSING;
    c->wq.len = 0;
    conn_close_now(c);
}

void conn_pause_reading(struct conn *c)
{
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
    }
}

/* A connection with more than this awaiting commit counts as heavy. */
#define LIGHT_CONN_BYTES (256u << 10)

static int over_limit(const struct conn *c)
{
    const struct broker *b = c->broker;
    size_t lim = b->cfg.conn_max_pending_bytes;
    /* Replies count from the moment their request is taken: those owed by
     * requests awaiting commit, those queued and the write in flight. */
    if (c->outstanding > lim || c->wq.len + c->wbusy.len + c->replies_owed > lim)
        return 1;
    /* Heavy connections stop at 1/32 of the batch limit: the rest is
     * kept for connections with little in flight, so that producers
     * flooding faster than the disk do not stall the others, and commits
     * stay short enough for their acks to come soon. */
    size_t batch = b->pending->in.len, batch_lim = b->cfg.batch_max_bytes;
    return batch > batch_lim || (c->outstanding > LIGHT_CONN_BYTES && batch > batch_lim / 32);
}

void conn_resume_reading(struct conn *c)
{
    if (c->state > CONN_READY || c->broker->stopping || c->reading || over_limit(c))
        return;
    /* Frames that arrived before the pause are handled first. */
    conn_process(c);
    if (c->state > CONN_READY || over_limit(c))
        return;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
        c->reading = 1;
}

static void on_write(uv_write_t *req, int status)
{
    struct conn *c = req->data;
    c->writing = 0;
    c->wbusy.len = 0;
    if (status < 0) {
        if (c->state <= CONN_READY)
            log_debug("conn %llu %s: write failed: %s", (unsigned long long)c->id, c->peer,
                      uv_strerror(status));
        c->wq.len = 0;
        c->state = CONN_CLOSING;
        conn_close_now(c);
        conn_unref(c);
        return;
    }
    if (c->wq.len)
        conn_flush(c);
    else if (c->state == CONN_CLOSING)
        conn_close_now(c);
    else
        conn_resume_reading(c);
    if (c->state == CONN_READY)
        c->broker->events.on_writable(c);
    conn_unref(c);
}

/* Starts a write of everything queued, unless one is already running (its
 * callback writes the rest, so replies coalesce into few syscalls). */
static void conn_flush(struct conn *c)
{
    if (c->writing || c->state == CONN_CLOSED || uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    if (!c->wq.len) {
        if (c->state == CONN_CLOSING)
            conn_close_now(c);
        return;
    }
    /* Most writes complete at once: try that first (no write request, no
     * epoll change); hand uv_write only what the socket did not take. */
    uv_buf_t tb = uv_buf_init((char *)c->wq.data, (unsigned)c->wq.len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &tb, 1);
    if (n > 0) {
        if ((size_t)n == c->wq.len) {
            c->wq.len = 0;
            /* (A connection paused for its unsent replies is resumed after
             * the next commit; resuming here could re-enter conn_process.) */
            if (c->state == CONN_CLOSING)
                conn_close_now(c);
            return;
        }
        memmove(c->wq.data, c->wq.data + n, c->wq.len - (size_t)n);
        c->wq.len -= (size_t)n;
    } else if (n != UV_EAGAIN && n != UV_ENOSYS) {
        c->wq.len = 0;
        c->state = CONN_CLOSING;
        conn_close_now(c);
        return;
    }
    struct buf t = c->wbusy;
    c->wbusy = c->wq;
    c->wq = t;
    c->wq.len = 0;
    uv_buf_t ub = uv_buf_init((char *)c->wbusy.data, (unsigned)c->wbusy.len);
    c->wreq.data = c;
    int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &ub, 1, on_write);
    if (rc < 0) {
        c->wbusy.len = 0;
        c->state = CONN_CLOSING;
        conn_close_now(c);
        return;
    }
    c->writing = 1;
    c->refs++;
}

/* While a finished batch is being answered, connections are flushed once
 * at its end (conn_flush_deferred) so their replies leave in one write. */
static void conn_flush_soon(struct conn *c)
{
    struct broker *b = c->broker;
    if (!b->defer_flush) {
        conn_flush(c);
        return;
    }
    if (!c->flush_queued) {
        c->flush_queued = 1;
        c->refs++;
        c->next_flush = b->flush_list;
        b->flush_list = c;
    }
}

void conn_flush_deferred(struct broker *b)
{
    b->defer_flush = 0;
    while (b->flush_list) {
        struct conn *c = b->flush_list;
        b->flush_list = c->next_flush;
        c->next_flush = NULL;
        c->flush_queued = 0;
        conn_flush(c);
        conn_unref(c);
    }
}

/* Appends reply bytes (from a finished batch) and writes them. */
/* Counts len bytes of whole frames going out. */
static void count_out(struct conn *c, const uint8_t *data, size_t len)
{
    uint64_t frames = 0;
    for (size_t off = 0; off + 4 <= len; frames++)
        off += 4 + ((size_t)data[off] << 24 | (size_t)data[off + 1] << 16 |
                    (size_t)data[off + 2] << 8 | data[off + 3]);
    c->frames_out += frames;
    c->bytes_out += len;
    c->broker->frames_out += frames;
    c->broker->bytes_out += len;
}

void conn_on_replies(struct conn *c, const uint8_t *data, size_t len)
{
    if (c->state >= CONN_CLOSING || !len)
        return;
    count_out(c, data, len);
    if (buf_append(&c->wq, data, len) < 0) {
        log_error("conn %llu %s: out of memory for replies", (unsigned long long)c->id, c->peer);
        conn_fail(c, 0, NULL);
        return;
    }
    conn_flush_soon(c);
}

void conn_write_now(struct conn *c, const uint8_t *frame, size_t len)
{
    if (buf_append(&c->wq, frame, len) < 0) {
        conn_fail(c, 0, NULL);
        return;
    }
    count_out(c, frame, len);
    conn_flush(c);
}

void conn_send_deliver(struct conn *c, uint8_t flags, const struct proto_deliver *d)
{
    if (c->state >= CONN_CLOSING)
        return;
    size_t need = proto_deliver_bytes(d);
    if (buf_reserve(&c->wq, need) < 0) {
        conn_fail(c, 0, NULL);
        return;
    }
    struct proto_writer w;
    proto_writer_init(&w, c->wq.data + c->wq.len, need);
    if (proto_encode_deliver(&w, flags, d) < 0) {
        log_error("conn %llu: cannot encode a DELIVER of seq %llu", (unsigned long long)c->id,
                  (unsigned long long)d->seq);
        return;
    }
    count_out(c, c->wq.data + c->wq.len, w.len);
    c->wq.len += w.len;
    conn_flush_soon(c);
}

void conn_fail(struct conn *c, int code, const char *msg)
{
    conn_fail_request(c, 0, code, msg);
}

void conn_fail_request(struct conn *c, uint32_t request_id, int code, const char *msg)
{
    if (c->state >= CONN_CLOSING)
        return;
    conn_pause_reading(c);
    c->state = CONN_CLOSING;
    if (code) {
        uint8_t frame[PROTO_HEADER_BYTES + 4 + 256];
        struct proto_writer w;
        size_t mlen = msg ? strlen(msg) : 0;
        if (mlen > 256)
            mlen = 256;
        proto_writer_init(&w, frame, sizeof(frame));
        proto_encode_error(&w, request_id, PROTO_ERROR_FATAL, (uint16_t)-code, msg ? msg : "",
                           mlen);
        /* Replies still queued are dropped: the fatal error is the last word. */
        c->wq.len = 0;
        if (!w.overflow)
            buf_append(&c->wq, frame, w.len);
        log_info("conn %llu %s: closing: %s%s%s", (unsigned long long)c->id, c->peer,
                 proto_strerror(code), msg ? ": " : "", msg ? msg : "");
    }
    conn_flush(c);
}

/* Whether clients send this frame type (PROTOCOL.md §4): the others are
 * UNKNOWN_TYPE from the header alone, whatever their body (§2 rule 2). */
static int client_sends(uint8_t type)
{
    switch (type) {
    case PROTO_HELLO:
    case PROTO_PING:
    case PROTO_PONG:
    case PROTO_PUBLISH:
    case PROTO_SUBSCRIBE:
    case PROTO_ACK:
    case PROTO_NACK:
    case PROTO_TOUCH:
    case PROTO_CREDIT:
    case PROTO_UNSUBSCRIBE:
    case PROTO_SEEK:
    case PROTO_TOPICS:
    case PROTO_GROUPS:
    case PROTO_TOPIC_CONFIG:
    case PROTO_REDRIVE:
    case PROTO_FLOOR:
    case PROTO_PEEK:
    case PROTO_DELETE:
        return 1;
    default:
        return 0;
    }
}

/* Decodes and dispatches the complete frames in rbuf, until it runs out,
 * the connection fails, or backpressure says stop. */
static void conn_process(struct conn *c)
{
    size_t off = 0;
    while (c->state <= CONN_READY && off < c->rlen) {
        if (over_limit(c)) {
            conn_pause_reading(c);
            break;
        }
        struct proto_frame f;
        ptrdiff_t n = proto_decode(c->rbuf + off, c->rlen - off, frame_limit(c), &f);
        /* The type is judged once the header's first five bytes are in,
         * before the body is looked at (or waited for), when the length
         * passed rule 1. */
        if (n >= 0 && c->rlen - off >= 5) {
            uint32_t len = proto_rd32(c->rbuf + off);
            if (len >= PROTO_MIN_LENGTH && len <= frame_limit(c) && !client_sends(c->rbuf[off + 4]))
                n = FERRY_EUNKNOWN_TYPE;
        }
        if (n == 0)
            break;
        if (n < 0) {
            char msg[96];
            if (n == FERRY_EFRAME_TOO_LARGE) {
                uint32_t len = proto_rd32(c->rbuf + off);
                snprintf(msg, sizeof(msg), "frame of %u bytes exceeds the limit of %u", len,
                         frame_limit(c));
            } else if (n == FERRY_EUNKNOWN_TYPE) {
                snprintf(msg, sizeof(msg), "frame type 0x%02x is not one a client sends",
                         c->rbuf[off + 4]);
            } else {
                snprintf(msg, sizeof(msg), "cannot decode frame");
            }
            int code = (int)n;
            /* Before HELLO, garbage is a failed handshake as much as a bad frame. */
            conn_fail(c, code, msg);
            off = c->rlen;
            break;
        }
        c->frames_in++;
        c->bytes_in += (size_t)n;
        c->broker->frames_in++;
        c->broker->bytes_in += (size_t)n;
        c->broker->events.on_frame(c, &f, (size_t)n);
        off += (size_t)n;
        c->last_active_ms = clock_mono_ms();
    }
    if (off) {
        memmove(c->rbuf, c->rbuf + off, c->rlen - off);
        c->rlen -= off;
    }
    /* Give back memory a large frame needed once. */
    if (c->rlen == 0 && c->rcap > 4 * RBUF_INITIAL) {
        uint8_t *p = realloc(c->rbuf, RBUF_INITIAL);
        if (p) {
            c->rbuf = p;
            c->rcap = RBUF_INITIAL;
        }
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = h->data;
    (void)suggested;
    size_t want = c->rcap;
    if (c->rlen >= 4) {
        /* Grow to hold the announced frame, but only within the limit; an
         * oversized header is rejected by proto_decode before we get here
         * again. */
        uint32_t len = proto_rd32(c->rbuf);
        if (len <= frame_limit(c) && (size_t)len + 4 > want)
            want = (size_t)len + 4;
    }
    if (c->rcap - c->rlen < 4096 && want == c->rcap)
        want = c->rcap * 2 <= (size_t)frame_limit(c) + 4 ? c->rcap * 2 : c->rcap;
    if (want > c->rcap) {
        uint8_t *p = realloc(c->rbuf, want);
        if (p) {
            c->rbuf = p;
            c->rcap = want;
        }
    }
    buf->base = (char *)c->rbuf + c->rlen;
    buf->len = c->rcap - c->rlen;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    (void)buf;
    if (nread < 0) {
        if (nread != UV_EOF && nread != UV_ECONNRESET)
            log_debug("conn %llu %s: read: %s", (unsigned long long)c->id, c->peer,
                      uv_strerror((int)nread));
        conn_pause_reading(c);
        c->state = CONN_CLOSING;
        c->wq.len = 0;
        if (!c->writing)
            conn_close_now(c);
        return;
    }
    if (nread == 0)
        return;
    c->rlen += (size_t)nread;
    c->broker->read_in_pass = 1;
    conn_process(c);
    /* A frame announcing more than is buffered, with no room to read more,
     * cannot happen: on_alloc grows rbuf to the frame size. */
}

/* How long a wrong token waits for its AUTH error: the guesser's time, not
 * the broker's (the connection is not read meanwhile). */
#define AUTH_DELAY_MS 500

void conn_tick(struct conn *c, uint64_t now_ms)
{
    const struct broker_config *cfg = &c->broker->cfg;
    if (c->auth_failed) {
        if (now_ms - c->auth_failed_ms >= AUTH_DELAY_MS) {
            c->auth_failed = 0;
            conn_fail_request(c, c->hello_request_id, FERRY_EAUTH, "wrong or missing token");
        }
        return; /* a refused HELLO is answered with AUTH, not a timeout */
    }
    if (c->state == CONN_HANDSHAKE && now_ms - c->accepted_ms > cfg->handshake_timeout_ms) {
        conn_fail(c, FERRY_ETIMEOUT_IDLE, "no handshake within the handshake timeout");
        return;
    }
    /* A consumer waiting for deliveries is not idle. */
    if (c->state == CONN_READY && cfg->idle_timeout_ms && c->outstanding_ops == 0 && !c->subs &&
        now_ms - c->last_active_ms > cfg->idle_timeout_ms)
        conn_fail(c, FERRY_ETIMEOUT_IDLE, "idle for longer than the idle timeout");
}

void conn_accept(struct broker *b)
{
    struct conn *c = calloc(1, sizeof(*c));
    if (!c) {
        log_error("accept: out of memory");
        return;
    }
    c->broker = b;
    c->refs = 1;
    c->state = CONN_HANDSHAKE;
    c->id = ++b->next_conn_id;
    c->rbuf = malloc(RBUF_INITIAL);
    if (!c->rbuf) {
        free(c);
        log_error("accept: out of memory");
        return;
    }
    c->rcap = RBUF_INITIAL;
    uv_tcp_init(b->loop, &c->tcp);
    c->tcp.data = c;
    /* Linked before accept so that on_close can always unlink it. */
    c->next = b->conns;
    if (b->conns)
        b->conns->prev = c;
    b->conns = c;
    b->nconns++;
    b->accepted++;
    if (uv_accept((uv_stream_t *)&b->server, (uv_stream_t *)&c->tcp) != 0) {
        c->state = CONN_CLOSING;
        conn_close_now(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
        char host[48] = "?";
        int port = 0;
        if (ss.ss_family == AF_INET) {
            uv_ip4_name((struct sockaddr_in *)&ss, host, sizeof(host));
            port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, host, sizeof(host));
            port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        }
        snprintf(c->peer, sizeof(c->peer), "%s:%d", host, port);
    }
    c->accepted_ms = c->last_active_ms = clock_mono_ms();
    if (b->nconns > b->cfg.max_connections) {
        conn_fail(c, FERRY_ETOO_MANY_CONNECTIONS, "the broker's connection limit is reached");
        return;
    }
    if (b->stopping) {
        conn_fail(c, FERRY_ESHUTTING_DOWN, "the broker is shutting down");
        return;
    }
    conn_resume_reading(c);
}
