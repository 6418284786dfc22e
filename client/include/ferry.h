/*
 * ferry.h - libferry, the C client for the Ferry message broker.
 *
 * A ferry_conn is one TCP connection to ferryd speaking protocol v1
 * (docs/PROTOCOL.md). It publishes messages, one at a time or as atomic
 * batches, synchronously or pipelined with a bounded in-flight window; and
 * it consumes: subscriptions to consumer groups, whose deliveries are
 * pushed by the broker within a credit window and received with
 * ferry_receive or a callback, then acked, nacked or touched.
 *
 * Conventions used by every function below:
 *   - Fallible calls return 0 on success or a negative FERRY_E* code
 *     (ferry_codes.h); ferry_strerror() gives its static text and
 *     ferry_errmsg() the detail of the last failure on that connection
 *     (for broker errors, the broker's own message).
 *   - Out-parameters come last. Whatever a *_new or ferry_connect returns is
 *     released by the matching NULL-safe *_free / ferry_close.
 *   - Pointers passed in (topics, payloads, headers) are borrowed for the
 *     duration of the call only; libferry copies what it keeps.
 *   - Thread-safety: a ferry_conn may be used by one thread at a time. Calls
 *     on different connections are independent. Callbacks run on the thread
 *     that made the libferry call during which the reply arrived. A callback
 *     may call libferry on the same connection (publish again, flush, poll),
 *     except ferry_close.
 *   - When a call that takes a callback returns an error, that callback will
 *     never be called for it; once it returned 0, the callback is called
 *     exactly once (at the latest from ferry_close).
 *   - No call keeps a hidden global or thread-local state; ferry_strerror is
 *     safe from any thread.
 */
#ifndef FERRY_H
#define FERRY_H

#include <stddef.h>
#include <stdint.h>

#include "ferry_codes.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && defined(FERRY_BUILDING_LIB)
#define FERRY_API __attribute__((visibility("default")))
#else
#define FERRY_API
#endif

#define FERRY_VERSION_STRING "0.1.0"
#define FERRY_DEFAULT_SERVER "127.0.0.1:7411"

typedef struct ferry_conn ferry_conn;

/* Connection options. Zero-initialise, then set what you need; every field
 * left 0 takes the default named beside it. Copied by ferry_connect. */
typedef struct ferry_options {
    const char *token;       /* auth token, NULL for none */
    const char *client_name; /* shown in the broker's log, NULL: "libferry" */
    int connect_timeout_ms;  /* 0: 5000; TCP connect + handshake; < 0: no limit */
    int request_timeout_ms;  /* 0: 30000; a synchronous call waiting for its reply,
                                or ferry_publish_async waiting for room; < 0: no limit */
    uint32_t max_in_flight;  /* 0: 1000; pipelined publishes awaiting acks */
    const char *producer_id; /* NULL: none. 1..128 printable ASCII naming a
                                producer whose messages carry producer_seq:
                                the broker then keeps the producer's
                                high-water mark and acks any producer_seq at
                                or below it as a duplicate, however long after
                                (the outbox relay's clock-free dedupe). One
                                producer id must be used by one publisher at a
                                time, with producer_seq increasing. */
} ferry_options;

/* One header of a message: a name and a value of value_len bytes. */
typedef struct ferry_header {
    const char *name; /* NUL-terminated, 1..255 bytes */
    const void *value;
    size_t value_len; /* 0..65535 */
} ferry_header;

/* A message to publish. Zero-initialise, then set the fields you need. */
typedef struct ferry_msg {
    const char *topic;   /* required; see docs/PROTOCOL.md for the rules */
    const void *payload; /* may be NULL when payload_len is 0 */
    size_t payload_len;
    const char *id;  /* idempotency key, 1..128 printable ASCII; NULL:
                        the broker assigns a unique one */
    const void *key; /* optional, 0..1024 bytes */
    size_t key_len;
    const ferry_header *headers;
    size_t header_count;   /* 0..64 */
    int64_t deliver_at_ms; /* 0: deliver at once; else Unix ms not-before */
    uint64_t producer_seq; /* with ferry_options.producer_id: this message's
                              position in the producer's stream (>= 1,
                              increasing); 0: none. In one batch either every
                              message has one or none does. A duplicate found
                              this way is acked with duplicate = 1 and the
                              original seq, or seq 0 when the broker no
                              longer remembers the message id. */
} ferry_msg;

/* The broker's acknowledgement of one stored message. */
typedef struct ferry_ack {
    uint64_t seq;  /* the per-topic sequence number */
    int duplicate; /* 1 when the id was already stored: seq is the original */
    char id[129];  /* the message id (the broker's when it assigned one) */
} ferry_ack;

/* Connects to addr ("HOST:PORT" or "[IPV6]:PORT"; NULL means
 * FERRY_DEFAULT_SERVER) and performs the handshake. opts may be NULL. On
 * success stores a new connection in *out (release with ferry_close) and
 * returns 0. On failure stores NULL and returns FERRY_EINVALID (a bad
 * address or option), FERRY_ECONNECT (unresolvable, refused, or the peer
 * hung up during the handshake), FERRY_ETIMEOUT, FERRY_EAUTH,
 * FERRY_EVERSION, FERRY_ETOO_MANY_CONNECTIONS, FERRY_EPROTOCOL (not a ferry
 * broker), ...; if errmsg is not NULL it receives up to errmsg_len bytes of
 * detail (NUL-terminated, without the address), e.g. "Connection refused".
 * Name resolution (getaddrinfo) is not bounded by connect_timeout_ms. */
FERRY_API int ferry_connect(const char *addr, const ferry_options *opts, ferry_conn **out,
                            char *errmsg, size_t errmsg_len);

/* Closes the connection and frees it. Pipelined publishes that were not yet
 * acknowledged (including any still in the write buffer: call ferry_flush
 * first to send them) get their callbacks with FERRY_ECLOSED; pipelined acks
 * not yet sent are lost (the broker redelivers those messages). Every
 * subscription of c ends and its ferry_sub handle is freed: do not call
 * ferry_unsubscribe on it afterwards. Deliveries already returned stay
 * valid until ferry_delivery_free; acking them fails with FERRY_ECLOSED.
 * Deliveries still queued are dropped (the broker gives them to another
 * consumer). NULL is a no-op. Must not be called from a callback of the
 * same connection. */
FERRY_API void ferry_close(ferry_conn *c);

/* Publishes one message and waits for its durable acknowledgement. Fills
 * *ack when not NULL. Returns 0, a broker error (FERRY_EINVALID_TOPIC,
 * FERRY_EMESSAGE_TOO_LARGE, FERRY_ESTORAGE_FULL, ...) or a connection error.
 * The message is first checked against the protocol's rules and the limits
 * the broker announced (ferry_server_info_get), so an invalid topic or id
 * (FERRY_EINVALID_TOPIC, FERRY_EINVALID_ID), a too large message
 * (FERRY_EMESSAGE_TOO_LARGE) or a malformed header (FERRY_EINVALID) fails
 * without a round trip. Pipelined publishes already in flight are completed
 * first (their callbacks run), so ordering on the connection is preserved.
 * On FERRY_ETIMEOUT the message may still be stored; publish it again with
 * the same id to find out (a duplicate ack). The connection stays usable. */
FERRY_API int ferry_publish(ferry_conn *c, const ferry_msg *msg, ferry_ack *ack);

/* Publishes count messages atomically: the broker stores all or none. acks
 * (when not NULL) must hold count entries and is filled in order. count is
 * 1..max_batch and the encoded batch must fit in one frame (max_frame_bytes,
 * else FERRY_EFRAME_TOO_LARGE); a failed check names the message by index
 * in ferry_errmsg. Otherwise as ferry_publish. */
FERRY_API int ferry_publish_batch(ferry_conn *c, const ferry_msg *msgs, size_t count,
                                  ferry_ack *acks);

/* Called once per pipelined publish with status 0 and the ack, or a negative
 * FERRY_E* and ack NULL. The ack is borrowed for the duration of the call. */
typedef void (*ferry_publish_cb)(void *userdata, int status, const ferry_ack *ack);

/* Queues one message for publishing without waiting for its ack. When
 * max_in_flight publishes are already unacknowledged (or several MiB are
 * buffered unsent) it first waits up to request_timeout_ms for acks to make
 * room, running their callbacks; FERRY_ETIMEOUT if none come. cb may be
 * NULL. Returns 0 once the message is sent or buffered; an error return
 * (validation as in ferry_publish, a dead connection) means nothing was
 * queued and cb will not be called.
 * To coalesce writes, a message may stay in the write buffer (at most
 * 64 KiB of them, for at most 200 us of further publishing) while earlier
 * publishes are in flight; the next ferry_publish_async, ferry_poll,
 * ferry_flush or synchronous call sends it, so end a burst with one. */
FERRY_API int ferry_publish_async(ferry_conn *c, const ferry_msg *msg, ferry_publish_cb cb,
                                  void *userdata);

/* Sends everything buffered and waits until every pipelined publish has its
 * ack (callbacks run here) and every pipelined ack (ferry_delivery_ack_async) its
 * ACK_OK. timeout_ms < 0 waits forever. Returns 0, FERRY_ETIMEOUT, a
 * connection error, or the first error a pipelined ack met since the
 * previous flush (e.g. FERRY_ENOT_DELIVERED; ferry_errmsg names the
 * sequence; reported once). A broker error for one publish is reported to
 * its callback, not here. */
FERRY_API int ferry_flush(ferry_conn *c, int timeout_ms);

/* Without blocking: sends what is buffered (pipelined acks included) as far
 * as the socket takes it, runs callbacks for acks that have already arrived
 * and delivery callbacks for deliveries that have (others are queued for
 * ferry_receive). Returns 0 or the error that closed the connection (pending
 * callbacks then got it too). */
FERRY_API int ferry_poll(ferry_conn *c);

/* Pipelined publishes (ferry_publish_async) awaiting their ack. */
FERRY_API size_t ferry_in_flight(const ferry_conn *c);

/* Round trip to the broker; fills *rtt_us when not NULL. Like every
 * synchronous call it waits behind pipelined publishes already in flight. */
FERRY_API int ferry_ping(ferry_conn *c, uint64_t *rtt_us);

/*
 * Consuming.
 *
 * A consumer group is a named, durable cursor on a topic: every group gets
 * every message, and the consumers of one group share them. ferry_subscribe
 * joins a group (creating it at the given start when it does not exist yet)
 * and grants the broker a window of max_in_flight unacknowledged
 * deliveries; the broker pushes messages as they come, never more than the
 * window. Acks and nacks free slots, so credit needs no further care.
 *
 * Each delivery carries a lease (ack wait). ferry_delivery_ack ends it; ferry_delivery_nack
 * gives the message back for redelivery (after an optional delay);
 * ferry_delivery_touch extends the lease. A lease that expires, or a connection that
 * closes, gives the message to another consumer of the group (attempt + 1,
 * redelivered set); after the group's max deliveries it goes to the
 * topic's dead-letter topic. Acks are idempotent: acking twice, or after a
 * redelivery was acked elsewhere, succeeds.
 *
 * Deliveries arrive on the connection between any replies. Those of a
 * subscription with a callback (ferry_sub_set_callback) go to it during
 * whichever call reads them; the others wait in the connection's queue, in
 * arrival order, for ferry_receive. Nothing is dropped while waiting for an
 * unrelated reply (a publish ack, an ACK_OK). The queue is bounded by the
 * sum of the windows.
 *
 * Ownership: a ferry_delivery is the caller's from ferry_receive (or from
 * the callback) until ferry_delivery_free; its fields stay valid until then
 * and are independent of every later call, including ferry_unsubscribe and
 * ferry_close. ferry_delivery_free may be called from any thread; every
 * other call on a delivery (ferry_delivery_ack, ...) uses its connection and follows
 * the connection's one-thread-at-a-time rule.
 */

/* Where a group that does not exist yet begins. */
typedef enum ferry_start {
    FERRY_START_EARLIEST = 0, /* the oldest message still stored */
    FERRY_START_LATEST = 1,   /* only messages published from now on */
    FERRY_START_SEQ = 2,      /* start_value is the first sequence to deliver */
    FERRY_START_TIME = 3,     /* start_value is Unix ms: the first message stored
                                 at or after it */
} ferry_start;

/* Subscription options. Zero-initialise, then set what you need; every field
 * left 0 takes the default named beside it. Copied by ferry_subscribe. */
typedef struct ferry_sub_options {
    ferry_start start;       /* for a new group only; an existing group keeps
                                its cursor (move it with ferry_seek) */
    uint64_t start_value;    /* FERRY_START_SEQ / FERRY_START_TIME */
    uint32_t max_in_flight;  /* 0: 100; 1..65535 unacked deliveries at once */
    uint32_t ack_wait_ms;    /* 0: the group's lease; for a new group, non-zero
                                also becomes the group's */
    uint16_t max_deliveries; /* new group only: attempts before dead-lettering;
                                0: the broker's default */
    uint8_t backoff_count;   /* new group only: 0, or how many of backoff_ms
                                are its redelivery backoff (at most 16) */
    uint32_t backoff_ms[16]; /* wait before the k-th redelivery after an
                                expired lease (the last value repeats); without
                                it the broker's --redelivery-backoff applies */
} ferry_sub_options;

/* One subscription on a connection; freed by ferry_unsubscribe or
 * ferry_close. */
typedef struct ferry_sub ferry_sub;

/* One delivered message. Every pointer is valid until ferry_delivery_free;
 * id, key, each header's name and value, and payload are each followed by
 * a NUL byte not counted in their lengths, so text can be used as a C
 * string (binary data may contain NULs of its own). */
typedef struct ferry_delivery {
    ferry_sub *sub; /* the subscription it came to; as a handle valid only
                       while that subscription is (see ferry_unsubscribe) */
    const char *topic;
    const char *group;
    uint64_t seq;     /* the message's sequence number in the topic */
    uint32_t attempt; /* 1 for the first delivery */
    int redelivered;  /* 1 when attempt > 1 */
    int64_t ts_ms;    /* when the broker stored it, Unix ms */
    const char *id;   /* the message id */
    const void *key;  /* empty (key_len 0) when it has none */
    size_t key_len;
    const ferry_header *headers;
    size_t header_count;
    const void *payload;
    size_t payload_len;
} ferry_delivery;

/* Joins consumer group `group` of `topic` and waits for the broker's
 * SUBSCRIBE_OK. Both are 1..200 of [A-Za-z0-9._-] starting with a letter or
 * digit; the topic may also be one the broker derives, "_" followed by such a
 * name (the dead letters of a topic, see docs/PROTOCOL.md).
 * opts may be NULL. On success stores the subscription in *out and returns
 * 0; deliveries may then arrive during any call on c. On failure *out is
 * NULL: FERRY_EINVALID_TOPIC, FERRY_EINVALID_GROUP, FERRY_EINVALID (an
 * option out of range), FERRY_EDENIED, FERRY_EUNSUPPORTED (a broker without
 * consumer groups), a connection error, or FERRY_ETIMEOUT (then an
 * UNSUBSCRIBE is sent after it, in case the broker did subscribe). One
 * connection may hold any number of subscriptions, several of the same group
 * included. */
FERRY_API int ferry_subscribe(ferry_conn *c, const char *topic, const char *group,
                              const ferry_sub_options *opts, ferry_sub **out);

/* Ends the subscription: first sends its pipelined acks, then UNSUBSCRIBE,
 * and waits for the broker's ACK_OK. The broker gives every message still
 * unacked by this subscription back to the group at once, including those
 * queued here and not yet received: they are dropped, as is any delivery
 * for it that arrives meanwhile (its callback is not called any more).
 * Frees s in every case, even when an error is returned; deliveries already
 * received stay valid, and ferry_delivery_ack on them then fails with
 * FERRY_EUNKNOWN_SUBSCRIPTION. Returns 0, FERRY_ETIMEOUT, or a connection
 * error (the broker then returns the messages when it sees the connection
 * close). NULL is a no-op returning 0. */
FERRY_API int ferry_unsubscribe(ferry_sub *s);

/* Returns the next queued delivery of any subscription of c without a
 * callback, waiting up to timeout_ms for one (0: do not wait beyond reading
 * what has arrived; < 0: wait forever). Pipelined acks are sent before
 * waiting. On success *out is the caller's (ferry_delivery_free). Returns
 * FERRY_ETIMEOUT (*out NULL) when none arrived; delivery callbacks and
 * publish callbacks may have run meanwhile.
 * With out NULL it serves callbacks only: it returns 0 once at least one
 * delivery callback has run, FERRY_ETIMEOUT when none did within
 * timeout_ms; queued deliveries stay queued. */
FERRY_API int ferry_receive(ferry_conn *c, int timeout_ms, ferry_delivery **out);

/* Frees a delivery (without acking it). NULL is a no-op. Thread-safe: may
 * be called from any thread, even while its connection is in use. */
FERRY_API void ferry_delivery_free(ferry_delivery *d);

/* Acks d and waits for the broker's ACK_OK, which it sends once the ack is
 * durable. Returns 0 (also when d was acked before: acks are idempotent),
 * FERRY_ENOT_DELIVERED (the group never had it), FERRY_EUNKNOWN_SUBSCRIPTION
 * (d's subscription has ended; the message was given back to the group),
 * FERRY_ECLOSED, or another error. d stays the caller's. */
FERRY_API int ferry_delivery_ack(const ferry_delivery *d);

/* Acks d without waiting for the reply: the ack is queued and sent, batched
 * with the other pipelined acks of the same subscription into one ACK frame,
 * once a quarter of the window is waiting, after 200 us without a write, or
 * at the next call that waits or polls (ferry_receive, ferry_poll,
 * ferry_flush, any synchronous call). Until sent, it still holds its slot
 * in the window. Failures that arrive later are reported by the next
 * ferry_flush. Returns 0 once queued, or an error found at once
 * (FERRY_EUNKNOWN_SUBSCRIPTION, FERRY_ECLOSED, FERRY_ENOMEM). Call
 * ferry_flush before ferry_close to be sure the acks reached the broker. */
FERRY_API int ferry_delivery_ack_async(const ferry_delivery *d);

/* Acks n (1 or more) sequences of s in one round trip (one ACK frame per
 * 10000) and waits for the replies. Returns 0 when every one succeeded, else
 * the first failure (e.g. FERRY_ENOT_DELIVERED) with its sequence in
 * ferry_errmsg; the others were still applied. */
FERRY_API int ferry_sub_ack(ferry_sub *s, const uint64_t *seqs, size_t n);

/* Gives d back to the group for redelivery, not before delay_ms (0: at
 * once; the group's backoff schedule may add to it). reason (NULL for none;
 * at most 1024 bytes) is kept as the last reason, shown in the dead-letter
 * headers. Waits for the broker's reply. Returns as ferry_delivery_ack. */
FERRY_API int ferry_delivery_nack(const ferry_delivery *d, uint32_t delay_ms, const char *reason);

/* Extends d's lease by the subscription's ack wait from now, for a handler
 * that needs longer. Waits for the broker's reply. Returns as ferry_delivery_ack. */
FERRY_API int ferry_delivery_touch(const ferry_delivery *d);

/* Sets s's window (1..65535 unacked deliveries) and waits for the broker's
 * reply. Shrinking takes effect as acks come in; deliveries already sent
 * are not taken back. */
FERRY_API int ferry_sub_set_window(ferry_sub *s, uint32_t max_in_flight);

/* Receives one delivery of a subscription with a callback. d is the
 * callback's own (not borrowed, unlike other callback arguments): free it
 * with ferry_delivery_free, now or later, on any thread. The callback may
 * call libferry on the same connection (ferry_delivery_ack, ferry_publish,
 * ...), except ferry_close. Delivery callbacks of one connection never nest:
 * deliveries that arrive while one runs (say during its synchronous ack)
 * wait, in order, until it returns; so a callback must not wait for another
 * delivery (ferry_receive with out NULL would only time out). */
typedef void (*ferry_delivery_cb)(void *userdata, ferry_delivery *d);

/* From now on, s's deliveries go to cb (NULL: to the queue again) during
 * whichever call on its connection reads them: ferry_receive, ferry_poll,
 * or any synchronous call. Deliveries of s already queued go to cb at the
 * start of the next such call, in order. Returns 0, or FERRY_EINVALID for
 * a NULL s. */
FERRY_API int ferry_sub_set_callback(ferry_sub *s, ferry_delivery_cb cb, void *userdata);

/* Moves the cursor of group `group` on `topic` to start (with value, as in
 * ferry_sub_options; a group that does not exist is created there) and
 * waits until the move is durable. The group then delivers every message
 * from the new cursor on again, as first deliveries (replay), or skips those
 * below it. Its in-flight deliveries are forgotten: their slots are freed,
 * and acking one of them later succeeds below the new cursor and fails with
 * FERRY_ENOT_DELIVERED at or above it. Fills *cursor_out (may be NULL) with
 * the new cursor: the next sequence the group will deliver. Returns 0,
 * FERRY_EINVALID_TOPIC, FERRY_EINVALID_GROUP, FERRY_EINVALID, another broker
 * error, or a connection error. */
FERRY_API int ferry_seek(ferry_conn *c, const char *topic, const char *group, ferry_start start,
                         uint64_t value, uint64_t *cursor_out);

/* One consumer group as listed by ferry_groups(). */
typedef struct ferry_group_info {
    char topic[201];
    char group[201];
    uint64_t cursor;            /* the next sequence delivered for the first time */
    uint64_t ack_floor;         /* every sequence below it is done (acked or
                                   dead-lettered) */
    uint64_t lag;               /* messages not yet done: waiting, in flight or
                                   awaiting redelivery */
    uint32_t in_flight;         /* delivered, not yet acked */
    uint32_t consumers;         /* live subscriptions */
    uint64_t redelivered;       /* redeliveries so far */
    uint64_t dead_lettered;     /* messages moved to the dead-letter topic */
    uint64_t oldest_unacked_ms; /* age of the oldest message not yet done; 0: none */
    uint32_t ack_wait_ms;       /* the group's lease */
    uint16_t max_deliveries;    /* attempts before dead-lettering; 0: no limit */
} ferry_group_info;

/* Lists the consumer groups of topic (NULL or "": of every topic), in the
 * broker's order. On success *out is an array of *count entries, never NULL
 * even when *count is 0 (free it with ferry_groups_free); on failure *out is
 * NULL and *count 0. */
FERRY_API int ferry_groups(ferry_conn *c, const char *topic, ferry_group_info **out, size_t *count);
FERRY_API void ferry_groups_free(ferry_group_info *groups);

/* One topic as listed by ferry_topics(). */
typedef struct ferry_topic_info {
    char name[201];
    uint64_t head_seq;      /* highest sequence assigned, 0 if none */
    uint64_t first_seq;     /* lowest still stored, 0 if none */
    uint64_t message_count; /* messages stored */
    uint64_t bytes;         /* key + header + payload bytes stored */
    int64_t created_ms;     /* Unix ms */
} ferry_topic_info;

/* Lists the broker's topics, in the broker's order. On success *out is an
 * array of *count entries, never NULL even when *count is 0 (free it with
 * ferry_topics_free); on failure *out is NULL and *count 0. */
FERRY_API int ferry_topics(ferry_conn *c, ferry_topic_info **out, size_t *count);
FERRY_API void ferry_topics_free(ferry_topic_info *topics);

/* The limits the broker announced at the handshake. */
typedef struct ferry_server_info {
    uint16_t version;
    uint32_t max_frame_bytes;
    uint32_t max_message_bytes;
    uint32_t max_batch;
    uint64_t dedupe_window_ms;
    char server_name[256];
} ferry_server_info;

/* Copies the handshake's limits into *out. Fields are as the broker sent
 * them except max_frame_bytes and max_batch, clamped to the protocol's
 * maxima. */
FERRY_API void ferry_server_info_get(const ferry_conn *c, ferry_server_info *out);

/* Static text for a FERRY_E* code; never NULL. Thread-safe. */
FERRY_API const char *ferry_strerror(int err);

/* Detail of the most recent failure on c (empty when none): the broker's own
 * message for broker errors, else what the client saw. Each fallible call
 * on c clears it on entry; a callback that receives an error finds its
 * detail here while it runs. Valid until the next call on c. */
FERRY_API const char *ferry_errmsg(const ferry_conn *c);

/* "0.1.0": the library's version. */
FERRY_API const char *ferry_version(void);

#ifdef __cplusplus
}
#endif

#endif /* FERRY_H */
