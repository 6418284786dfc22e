/*
 * internal.h - libferry's private state, shared by the files in client/.
 *
 * A ferry_conn owns one non-blocking TCP socket, a read buffer, a write
 * buffer and a ring of pending requests. The files divide the work:
 *
 *   conn.c     socket, connect + handshake, buffers, non-blocking I/O and the
 *              one wait loop (ferry__pump) every blocking call goes through;
 *              it knows the consumer side only through the wait hooks
 *              ferry_subscribe installs (struct ferry__wait_hooks)
 *   pending.c  the ring of requests awaiting replies and the routing of each
 *              incoming frame to the request it answers
 *   publish.c  message validation and encoding; sync, batch and pipelined
 *              publish
 *   consume.c  subscriptions, the delivery queue, ack/nack/touch/credit
 *              (synchronous and pipelined), unsubscribe
 *   admin.c    ping, topics, groups, seek, server info
 *   error.c    error text, per-connection detail, connection death
 *
 * Invariants:
 *   - Requests are written in the order they are queued, the broker answers
 *     them in that order, so a reply always belongs to the ring's front entry;
 *     anything else is FERRY_EPROTOCOL and kills the connection.
 *   - User callbacks run only after their ring entry has been popped and the
 *     read cursor advanced past the frame, and no code keeps a pointer into
 *     a buffer across a callback. A callback may therefore call back into
 *     libferry on the same connection (except ferry_close).
 *   - Once dead is non-zero the socket is never used again and the ring is
 *     empty; every later call returns FERRY_ECLOSED.
 *   - DELIVER frames (request id 0) are not replies: they may arrive between
 *     any two replies and never touch the ring. A delivery for a subscription
 *     with a callback goes to it at once; any other joins the connection's
 *     delivery queue in arrival order. The broker sends no more than each
 *     subscription's window unacknowledged, so the queue is bounded by the
 *     sum of the windows.
 *   - SUB_END frames (request id 0) are not replies either: the broker ended
 *     a subscription (its topic or group was deleted). It stays attached,
 *     marked ended, until ferry_unsubscribe or ferry_close; ferry_receive
 *     reports the end once its queued deliveries are gone.
 */
#ifndef FERRY_INTERNAL_H
#define FERRY_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry.h"
#include "js_internal.h"
#include "proto.h"

/* Room for the broker's longest ERROR text (PROTO_MAX_ERROR_TEXT) plus a
 * prefix naming what failed. */
#define FERRY__ERRMSG_BYTES (PROTO_MAX_ERROR_TEXT + 256)

/* Initial size of each buffer, and the least free space the read buffer
 * offers each recv(): hundreds of acks arrive per system call. */
#define FERRY__BUF_INITIAL_BYTES (64u * 1024u)

/* ferry_publish_async writes at once when this much is buffered unsent. Big
 * enough to turn hundreds of small publishes into one send(), small enough to
 * fit in one socket buffer. */
#define FERRY__COALESCE_BYTES (64u * 1024u)

/* Below COALESCE_BYTES, ferry_publish_async still writes when the pipeline
 * was idle or when nothing was written for this long: a steady trickle of
 * publishes goes out at once, a tight loop is gathered into few writes. */
#define FERRY__LINGER_US 200

/* ferry_publish_async stops and drains (reading acks meanwhile) once this
 * much is buffered unsent, so a broker that reads slower than we publish
 * costs bounded memory, not max_in_flight * max_frame. */
#define FERRY__WBUF_HIGH_BYTES (8u * 1024u * 1024u)

/* Option defaults, as documented in ferry.h. */
#define FERRY__DEFAULT_CONNECT_TIMEOUT_MS 5000
#define FERRY__DEFAULT_REQUEST_TIMEOUT_MS 30000
#define FERRY__DEFAULT_MAX_IN_FLIGHT 1000u
#define FERRY__DEFAULT_SUB_WINDOW 100u

struct ferry__waiter;

/*
 * Consumer work that the waits must do, installed on a connection by its
 * first ferry_subscribe (consume.c) and kept until ferry_close. Until then
 * the pointer is NULL, and the waits of a connection that only publishes or
 * administers (ferry__pump, ferry_poll) run none of it.
 */
struct ferry__wait_hooks {
    /* Before each test of a wait's condition: hands queued deliveries of
     * subscriptions that now have a callback to it. */
    void (*before_check)(ferry_conn *c);
    /* Before each write and block: encodes unsent pipelined acks, which
     * hold window slots until sent, or the broker could wait for them while
     * we wait for it. */
    void (*before_block)(ferry_conn *c);
};

/*
 * A synchronous caller's slot. The caller keeps it on its stack and waits in
 * ferry__pump until done; on_reply runs when the answering frame arrives and
 * copies out whatever it needs (the frame's slices die with the read buffer).
 * It returns the status for the caller; FERRY_EPROTOCOL also kills the
 * connection. A caller that gives up (timeout) detaches its slot first.
 */
typedef int (*ferry__reply_fn)(ferry_conn *c, struct ferry__waiter *w, const struct proto_frame *f);

struct ferry__waiter {
    int done;
    int status;
    ferry__reply_fn on_reply;
    void *ctx; /* on_reply's output, owned by the caller */
};

/* One request awaiting its reply, of one of three kinds:
 *   async = 1       a pipelined publish: cb (may be NULL) gets the outcome;
 *   ack_async = 1   a pipelined ACK (ferry_ack_async): the first failure is
 *                   kept in ack_err for the next ferry_flush;
 *   otherwise       a synchronous call: waiter, or NULL once its caller gave
 *                   up (timeout) or never waited (fire and forget): the
 *                   reply is then checked and dropped. */
struct ferry__pending {
    uint32_t request_id;
    uint8_t reply_type; /* the frame type that answers it (or ERROR) */
    uint8_t async;      /* counted in async_in_flight */
    uint8_t ack_async;  /* counted in acks_in_flight */
    uint16_t count;     /* messages in a PUBLISH, sequences in an ACK */
    uint32_t sub_id;    /* ack_async: the subscription, for error text */
    ferry_publish_cb cb;
    void *userdata;
    struct ferry__waiter *waiter;
};

/* A subscription (ferry.h: ferry_sub). Referenced by its connection while
 * attached (c != NULL) and by every delivery of it not yet freed; freed
 * when the last reference goes, so ferry_delivery_free and ferry_ack on a
 * delivery never touch freed memory, whatever the order of
 * ferry_unsubscribe, ferry_close and ferry_delivery_free. refs is atomic
 * because a delivery may be freed on another thread. */
struct ferry_sub {
    ferry_conn *c;            /* NULL once unsubscribed or its connection closed */
    struct ferry__js_sub *js; /* over JetStream (js.c), else NULL */
    uint32_t sub_id;
    int closing; /* UNSUBSCRIBE sent: deliveries for it are dropped */
    int ended;   /* once detached: what calls on its deliveries return */
    /* SUB_END: the broker ended it (its topic or group was deleted). The
     * negative FERRY_E* of the wire code, 0 while live; the broker forgot
     * it, so nothing more is sent for it and ferry_unsubscribe only frees
     * it. ferry_receive reports it once (end_reported) after the last
     * queued delivery of it. */
    int end_code;
    int end_reported;
    char end_msg[PROTO_MAX_ERROR_TEXT + 1];
    _Atomic unsigned long refs;
    struct ferry_sub *next; /* the connection's list */

    char topic[PROTO_MAX_TOPIC + 1];
    char group[PROTO_MAX_GROUP + 1];
    uint32_t window; /* max_in_flight granted to the broker */
    uint32_t ack_wait_ms;
    uint16_t max_deliveries;
    uint64_t horizon_ms; /* from SUBSCRIBE_OK; 0: the broker did not say */

    ferry_delivery_cb cb;
    void *userdata;

    /* Sequences acked with ferry_ack_async and not yet encoded. */
    uint64_t *acks;
    size_t nacks, acks_cap;
};

/* A delivery as allocated: the public part first, then the strings and
 * bytes it points to, in the same block. */
struct ferry__delivery {
    ferry_delivery pub;
    struct ferry_sub *sub; /* holds a reference */
    uint32_t sub_id;
    struct ferry__delivery *next; /* the connection's queue */
};

struct ferry_conn {
    int fd;
    /* Over JetStream (a nats:// address, js.c): the NATS connection and
     * its state; fd is then -1 and the buffers and ring stay unused. The
     * delivery queue below is shared with the fetch threads under its
     * mutex. NULL for ferryd. */
    struct ferry__js *js;

    /* Limits: from the options, then from HELLO_OK. */
    int request_timeout_ms; /* < 0: wait forever */
    uint32_t max_in_flight;
    uint32_t max_in_frame; /* largest frame accepted from the broker */
    ferry_server_info info;
    char producer_id[PROTO_MAX_ID + 1]; /* empty: none (ferry_options.producer_id) */

    /* Read buffer: bytes [rpos, rlen) are received and not yet decoded. */
    uint8_t *rbuf;
    size_t rcap, rpos, rlen;

    /* Write buffer: bytes [wpos, wlen) are encoded and not yet sent. */
    uint8_t *wbuf;
    size_t wcap, wpos, wlen;
    int64_t last_write_us; /* monotonic time of the last send attempt */

    /* Ring of pending requests, oldest at phead. */
    struct ferry__pending *pend;
    size_t pcap, phead, plen;
    size_t async_in_flight; /* entries with async = 1 */
    uint32_t next_id;

    /* Consumer side (consume.c). */
    const struct ferry__wait_hooks *hooks; /* NULL until the first subscribe */
    struct ferry_sub *subs;                /* attached subscriptions */
    uint32_t next_sub_id;
    struct ferry__delivery *dq_head, *dq_tail; /* queued deliveries, oldest first */
    size_t dq_len;
    int dq_backlog;         /* the queue may hold deliveries of subscriptions that
                               now have a callback */
    uint64_t cb_deliveries; /* delivery callbacks run so far */
    int cb_depth;           /* > 0 while a delivery callback runs */
    size_t ends_unreported; /* subscriptions with end_code, not yet reported */
    size_t acks_unsent;     /* sum of the subscriptions' nacks */
    size_t acks_in_flight;  /* entries with ack_async = 1 */
    int ack_err;            /* first failure of a pipelined ack since the last flush */
    char ack_errmsg[FERRY__ERRMSG_BYTES];

    /* 0 while usable; else the code that killed the connection. */
    int dead;
    char dead_msg[FERRY__ERRMSG_BYTES];

    char errmsg[FERRY__ERRMSG_BYTES];
};

/* conn.c */
/* Copies the caller's option struct src (ferry_options, ferry_sub_options,
 * ferry_relay_options: `size` first) into dst of this library's dst_size
 * bytes, under the rule of ferry.h's "The ABI": fields src lacks are 0 in
 * dst. min_size is the size of the struct's first layout. Returns 0,
 * FERRY_EINVALID (src->size below min_size) or FERRY_EUNSUPPORTED (a
 * non-zero byte beyond dst_size), with the reason in why. opts.c. */
int ferry__copy_options(void *dst, size_t dst_size, const void *src, size_t min_size,
                        const char *what, char *why, size_t why_len);

/* The end of a struct's last field: the size of its first layout is the
 * end of the last field it had (a constant, however the struct grows).
 * A field appended later starts at or after the previous layout's sizeof
 * (pad explicitly), so that an older program's tail padding, which nothing
 * initialises for sure, is never read as an option. */
#define FERRY__END_OF(type, field) (offsetof(type, field) + sizeof(((type *)0)->field))
#define FERRY__OPTIONS_SIZE_0 FERRY__END_OF(ferry_options, producer_id)
#define FERRY__SUB_OPTIONS_SIZE_0 FERRY__END_OF(ferry_sub_options, backoff_ms)
#define FERRY__RELAY_OPTIONS_SIZE_0 FERRY__END_OF(ferry_relay_options, log_userdata)
#define FERRY__PG_RELAY_OPTIONS_SIZE_0 FERRY__END_OF(ferry_pg_relay_options, log_userdata)

int64_t ferry__now_us(void);
/* Deadline for a wait of timeout_ms (< 0: none, returned as -1). */
int64_t ferry__deadline(int timeout_ms);
/* Makes room for n more bytes at wbuf + wlen. Returns 0 or FERRY_ENOMEM. */
int ferry__wbuf_reserve(ferry_conn *c, size_t n);
/* Sends what the socket takes without blocking. Returns 0 or the error that
 * killed the connection. */
int ferry__write_some(ferry_conn *c);
/* Receives what has arrived without blocking and dispatches every complete
 * frame. Returns 0 or the error that killed the connection. */
int ferry__read_some(ferry_conn *c);
/* Drives I/O (writes, reads, callbacks) until done(c, arg) is true, the
 * deadline (from ferry__deadline) passes, or the connection dies. Returns 0,
 * FERRY_ETIMEOUT or the code that killed the connection. */
int ferry__pump(ferry_conn *c, int64_t deadline_us, int (*done)(const ferry_conn *, const void *),
                const void *arg);

/* pending.c */
uint32_t ferry__next_request_id(ferry_conn *c);
int ferry__pending_push(ferry_conn *c, const struct ferry__pending *p);
/* Queues the request whose frame was just appended at [frame_start, wlen)
 * and waits for its reply until deadline_us (from ferry__deadline). When
 * queueing fails the frame is removed again. On timeout the waiter is
 * detached (the late reply will be dropped) and FERRY_ETIMEOUT returned;
 * otherwise returns w->status, or the error that killed the connection. */
int ferry__request(ferry_conn *c, size_t frame_start, uint32_t request_id, uint8_t reply_type,
                   uint16_t count, struct ferry__waiter *w, int64_t deadline_us);
/* Decodes and routes every complete frame in the read buffer. */
void ferry__dispatch(ferry_conn *c);
/* Completes every pending request with code (callbacks run). */
void ferry__fail_all(ferry_conn *c, int code);
/* Queues a request whose frame was just appended, without waiting: its reply
 * is checked in turn and dropped. Returns 0 or FERRY_ENOMEM (the frame is
 * then removed again). */
int ferry__request_nowait(ferry_conn *c, size_t frame_start, uint32_t request_id,
                          uint8_t reply_type);

/* consume.c */
/* Routes a DELIVER frame: to its subscription's callback, else the queue. */
void ferry__on_deliver(ferry_conn *c, const struct proto_frame *f);
/* Routes a SUB_END frame: marks its subscription ended (ignored for an
 * unknown sub id). */
void ferry__on_sub_end(ferry_conn *c, const struct proto_frame *f);
/* Records the first failure of a pipelined ack (for ferry_flush). */
void ferry__ack_failed(ferry_conn *c, uint32_t sub_id, uint64_t seq, int code, const char *detail);
/* Reads an ACK_OK into the first failing entry: returns 0 when every code is
 * 0, the entry's FERRY_E* (setting *seq_out) otherwise, or FERRY_EPROTOCOL
 * when it does not have expect entries. */
int ferry__ack_ok_status(ferry_conn *c, const struct proto_frame *f, size_t expect,
                         uint64_t *seq_out);
/* Checks a topic (publishable or broker-derived) and a group name as the
 * broker will; errmsg says why. Returns 0, FERRY_EINVALID_TOPIC or
 * FERRY_EINVALID_GROUP. group NULL skips the group. */
/* The floor of s's group on its topic and the redrivable sequences below
 * it (ferry_group_floor on s's connection, up to FERRY_FLOOR_KEEP_MAX), for
 * the inboxes' purge_acked. On 0, *keep is malloc'd: free it. On an error
 * it is NULL. admin.c. */
int ferry__sub_floor(ferry_sub *s, uint64_t *floor, uint64_t **keep, size_t *nkeep);

/* 1 when keep holds nkeep increasing sequences, each below floor: the
 * list an inbox's forget accepts. admin.c. */
int ferry__keep_valid(uint64_t floor, const uint64_t *keep, size_t nkeep);

int ferry__check_names(ferry_conn *c, const char *topic, const char *group);
/* At ferry_close: frees the queue and detaches every subscription. */
void ferry__consume_close(ferry_conn *c);

/* error.c */
/* Formats the connection's detail message and returns code. */
int ferry__seterr(ferry_conn *c, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* Kills the connection: closes the socket, records why (code and the detail
 * formatted here, also left in errmsg) and fails every pending request.
 * Returns code. Does nothing but return the original code when already dead. */
int ferry__kill(ferry_conn *c, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* Entry check of every public call: clears errmsg, and on a dead connection
 * sets it to the original reason and returns FERRY_ECLOSED. */
int ferry__begin(ferry_conn *c);

#endif /* FERRY_INTERNAL_H */
