/*
 * conn.h - one client connection: the transport and its state machine.
 *
 * conn.c reads bytes, cuts them into frames (rejecting what the state
 * does not allow: oversized frames, types clients do not send), and hands
 * each decoded frame up through the broker's conn_events; it writes what
 * it is given, coalescing writes, applies backpressure and the timeouts,
 * and closes. It knows nothing of what frames mean: dispatch.c does.
 *
 * Ownership and threads: loop thread only. A connection is freed when its
 * last reference goes: 1 for the handle, 1 per op in a batch (commit.h), 1
 * per write in flight, 1 while it waits on the flush list. It stays
 * linked in the broker's list until its handle is closed.
 */
#ifndef FERRY_BROKER_CONN_H
#define FERRY_BROKER_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "batch.h"

struct broker;
struct sub;
struct auth_token;
struct proto_frame;
struct proto_deliver;

/* Connection states; see conn.c for the transitions. */
enum conn_state {
    CONN_HANDSHAKE, /* waiting for HELLO; frames limited to 64 KiB */
    CONN_READY,     /* serving requests */
    CONN_CLOSING,   /* a fatal error or shutdown: reading stopped, flushing */
    CONN_CLOSED,    /* uv_close called */
};

struct conn {
    uv_tcp_t tcp;
    struct broker *broker;
    enum conn_state state;
    uint64_t id;
    char peer[64];
    int refs; /* 1 for the handle + 1 per op in a batch */

    uint8_t *rbuf; /* bytes read and not yet decoded */
    size_t rlen;
    size_t rcap;
    int reading;

    struct buf wq;    /* replies waiting to be written */
    struct buf wbusy; /* the buffer of the uv_write in flight */
    uv_write_t wreq;
    int writing;

    size_t outstanding;       /* request bytes (and ops) queued for the commit */
    size_t replies_owed;      /* reply bytes those ops may still produce */
    uint64_t outstanding_ops; /* requests not yet replied */
    uint64_t last_active_ms;
    uint64_t accepted_ms;

    struct sub *subs;               /* this connection's subscriptions (group.c) */
    const struct auth_token *token; /* who authenticated (NULL: nobody / auth off) */
    int auth_failed;                /* a wrong token: answered by the next tick */
    uint32_t hello_request_id;      /* for that answer */
    uint64_t auth_failed_ms;        /* when it came */
    int flush_queued;               /* on the broker's flush_list */
    uint32_t fetching;              /* messages being read for this connection's deliveries */
    struct conn *next_flush;

    /* What it has sent and been sent (the broker sums them too). */
    uint64_t frames_in, frames_out, bytes_in, bytes_out;
    char client[64]; /* the HELLO's client name, printable ASCII */

    struct conn *prev, *next;
};

/* What a connection reports to the layer above (set in struct broker). */
struct conn_events {
    /* A decoded frame, of wire_bytes bytes, that clients may send (in the
     * handshake: any such frame; the handler moves the state on). */
    void (*on_frame)(struct conn *c, const struct proto_frame *f, size_t wire_bytes);
    /* Its handle closed; it is unlinked and freed when its last reference
     * goes. */
    void (*on_closed)(struct conn *c);
    /* A READY connection wrote everything queued: it may take more. */
    void (*on_writable)(struct conn *c);
};

/* Accepts a connection on the broker's listener. */
void conn_accept(struct broker *b);
/* Timeouts; called by the broker's tick. */
void conn_tick(struct conn *c, uint64_t now_ms);

/* Appends reply bytes (from a finished batch) and writes them, coalesced
 * with the others of the batch while the broker defers flushes. */
void conn_on_replies(struct conn *c, const uint8_t *data, size_t len);
/* Writes a frame at once (a reply nothing outstanding waits before). */
void conn_write_now(struct conn *c, const uint8_t *frame, size_t len);
/* Encodes a DELIVER straight into the connection's outgoing bytes. */
void conn_send_deliver(struct conn *c, uint8_t flags, const struct proto_deliver *d);
/* Flushes the connections that queued replies while defer_flush was set. */
void conn_flush_deferred(struct broker *b);

void conn_pause_reading(struct conn *c);
void conn_resume_reading(struct conn *c);
/* Ends the connection: optional fatal ERROR first, then close after flush. */
void conn_fail(struct conn *c, int code, const char *msg);
/* As conn_fail, with the request id of the frame the error answers (a
 * HELLO refused with VERSION or AUTH, a first frame that is not HELLO). */
void conn_fail_request(struct conn *c, uint32_t request_id, int code, const char *msg);
/* Closes at once, dropping unsent replies (shutdown of a stuck client). */
void conn_abort(struct conn *c);
void conn_unref(struct conn *c);

#endif
