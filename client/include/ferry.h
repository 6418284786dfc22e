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
 *
 * The ABI (libferry.so.0): within one soname, functions are only added,
 * never changed or removed, and a struct changes only as follows.
 *   - The option structs the caller passes in (ferry_options,
 *     ferry_sub_options, ferry_relay_options, ferry_pg_relay_options) begin
 *     with `size`, which the
 *     caller sets to sizeof the struct as its own ferry.h declares it (the
 *     FERRY_*_OPTIONS_INIT initialisers do). New fields are only ever
 *     appended. The library reads `size` bytes: fields a program built
 *     against an older ferry.h does not have take their defaults; fields of
 *     a newer ferry.h than the library knows must be zero (their defaults),
 *     else the call fails with FERRY_EUNSUPPORTED. A size below that of the
 *     first layout (0 among them: a struct zero-initialised without its
 *     initialiser) fails with FERRY_EINVALID.
 *   - Every other struct (ferry_msg, ferry_header, ferry_ack, ferry_delivery,
 *     the *_info and *_stats structs, ferry_retention) keeps its layout for
 *     the life of the soname: they are passed in arrays or filled by the
 *     library, so a new field there means a new function, or soname 1.
 *   - Enum values and FERRY_E* codes are only added; a program must treat a
 *     code it does not know as an error.
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

/* Connection options. Start from FERRY_OPTIONS_INIT (or set size to
 * sizeof(ferry_options) and every other field to 0), then set what you
 * need; every field left 0 takes the default named beside it. Copied by
 * ferry_connect. See "The ABI" above for size. */
typedef struct ferry_options {
    size_t size;             /* sizeof(ferry_options) */
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

/* ferry_options o = FERRY_OPTIONS_INIT; everything at its default. */
#define FERRY_OPTIONS_INIT                                                                         \
    {                                                                                              \
        .size = sizeof(ferry_options)                                                              \
    }

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
 * address or option, or opts->size unset), FERRY_EUNSUPPORTED (an option
 * this library does not know, see "The ABI"), FERRY_ECONNECT (unresolvable, refused, or the peer
 * hung up during the handshake), FERRY_ETIMEOUT, FERRY_EAUTH,
 * FERRY_EVERSION, FERRY_ETOO_MANY_CONNECTIONS, FERRY_EPROTOCOL (not a ferry
 * broker), ...; if errmsg is not NULL it receives up to errmsg_len bytes of
 * detail (NUL-terminated, without the address), e.g. "Connection refused".
 * Name resolution (getaddrinfo) is not bounded by connect_timeout_ms.
 *
 * NATS JetStream instead of ferryd (docs/SCALING.md): addr
 * "nats://HOST:PORT[,HOST:PORT...][?stream=NAME&prefix=P&replicas=N&dedupe_ms=MS]"
 * connects through the NATS C client to those servers (a cluster: any of
 * them; it reconnects by itself for as long as the connection is kept) and
 * makes sure the stream exists (default FERRY holding the subjects
 * "ferry.>"; created with the given replicas and duplicate window when
 * missing). The same calls then work on the connection: ferry_publish and
 * ferry_publish_async (acked by JetStream's PubAck; a message id seen
 * within the stream's duplicate window is acked with duplicate = 1),
 * ferry_subscribe (the group is a durable pull consumer), ferry_receive,
 * the delivery calls, ferry_sub_set_window, ferry_sub_set_callback,
 * ferry_seek, ferry_flush, ferry_poll, ferry_ping and the inbox.
 * ferry_delivery.seq is the stream's sequence (increasing per topic, with
 * gaps). Everything else, ferry_publish_batch included (JetStream has no
 * atomic batch), returns FERRY_EUNSUPPORTED. opts->token is sent as the
 * NATS token; max_in_flight bounds the pipelined publishes;
 * request_timeout_ms bounds each JetStream request. */
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

/* Subscription options. Start from FERRY_SUB_OPTIONS_INIT, then set what
 * you need; every field left 0 takes the default named beside it. Copied by
 * ferry_subscribe. See "The ABI" at the top for size. */
typedef struct ferry_sub_options {
    size_t size;             /* sizeof(ferry_sub_options) */
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
    int topic_must_exist;    /* 0 (default): a topic that does not exist yet
                                is created, so an application may subscribe
                                before its first publish; 1: refused with
                                FERRY_EUNKNOWN_TOPIC and nothing is created
                                (a broker older than this flag ignores it
                                and creates the topic) */
} ferry_sub_options;

/* ferry_sub_options o = FERRY_SUB_OPTIONS_INIT; everything at its default. */
#define FERRY_SUB_OPTIONS_INIT                                                                     \
    {                                                                                              \
        .size = sizeof(ferry_sub_options)                                                          \
    }

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
 * option out of range, or opts->size unset), FERRY_EDENIED,
 * FERRY_EUNSUPPORTED (a broker without consumer groups, or an option this
 * library does not know), FERRY_EUNKNOWN_TOPIC (with topic_must_exist, a
 * topic that does not exist), a connection error, or FERRY_ETIMEOUT (then an
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
 * close). NULL is a no-op returning 0. On a subscription the broker ended
 * (see ferry_receive) it only frees s and returns 0. */
FERRY_API int ferry_unsubscribe(ferry_sub *s);

/* Returns the next queued delivery of any subscription of c without a
 * callback, waiting up to timeout_ms for one (0: do not wait beyond reading
 * what has arrived; < 0: wait forever). Pipelined acks are sent before
 * waiting. On success *out is the caller's (ferry_delivery_free). Returns
 * FERRY_ETIMEOUT (*out NULL) when none arrived; delivery callbacks and
 * publish callbacks may have run meanwhile.
 * With out NULL it serves callbacks only: it returns 0 once at least one
 * delivery callback has run, FERRY_ETIMEOUT when none did within
 * timeout_ms; queued deliveries stay queued.
 * A subscription the broker ends (its topic or group was deleted:
 * ferry_topic_delete, ferry_group_delete) delivers nothing more; the
 * deliveries of it already queued are still returned (or passed to its
 * callback), and then ferry_receive, with out NULL or not, returns the
 * broker's reason once, with *out NULL: FERRY_EUNKNOWN_TOPIC or
 * FERRY_EUNKNOWN_GROUP, ferry_errmsg "subscription to TOPIC/GROUP ended:
 * <the broker's text>". From the end on, acks, nacks, touches and
 * ferry_sub_set_window on it fail with FERRY_EUNKNOWN_SUBSCRIPTION without
 * asking the broker; ferry_unsubscribe frees it, sends nothing and returns
 * 0. The connection's other subscriptions go on. */
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
 * ferry_sub_options; a group that does not exist is created there, on a
 * topic that must exist) and
 * waits until the move is durable. The group then delivers every message
 * from the new cursor on again, as first deliveries (replay), or skips those
 * below it. Its in-flight deliveries are forgotten: their slots are freed,
 * and acking one of them later succeeds below the new cursor and fails with
 * FERRY_ENOT_DELIVERED at or above it. Fills *cursor_out (may be NULL) with
 * the new cursor: the next sequence the group will deliver. Returns 0,
 * FERRY_EINVALID_TOPIC, FERRY_EINVALID_GROUP, FERRY_EINVALID (also a
 * FERRY_START_SEQ value past the topic's head + 1: nothing is moved or
 * created, and ferry_errmsg gives the range), FERRY_EUNKNOWN_TOPIC (no
 * such topic: nothing is created), another broker error, or a connection
 * error. */
FERRY_API int ferry_seek(ferry_conn *c, const char *topic, const char *group, ferry_start start,
                         uint64_t value, uint64_t *cursor_out);

/* Redrives a dead letter: the message at sequence dead_seq of the topic's
 * dead-letter topic `_dead.<topic>` goes back to the consumer group that
 * dead-lettered it, and only to it, as the same message: its original
 * sequence and message id, attempt 1 again, plus the header
 * `ferry-redriven: _dead.<topic>/<dead_seq>`. Every other group of the
 * topic sees nothing, and the group's inbox recognises an effect already
 * applied. group may be NULL or "" (the group named in the dead letter's
 * ferry-dead-group header); a group that is not that one is refused with
 * FERRY_EINVALID. Waits for the broker's reply; fills *seq_out (may be
 * NULL) with the original sequence. A message the group has not done yet,
 * or one being redriven already, is left as it is (still 0). The redrive
 * is durable when this returns and lasts until the group acks it, across
 * broker restarts; a ferry_seek of the group before that forgets it
 * (redrive the dead letter again). Returns 0, FERRY_EUNKNOWN_TOPIC (no dead letters),
 * FERRY_EINVALID (no such dead letter, or another group's),
 * FERRY_EUNKNOWN_GROUP, FERRY_EUNKNOWN_TYPE from a broker that predates
 * REDRIVE (it closes the connection), or a connection error. */
FERRY_API int ferry_redrive(ferry_conn *c, const char *topic, const char *group, uint64_t dead_seq,
                            uint64_t *seq_out);

/* Options of ferry_peek. Start from FERRY_PEEK_OPTIONS_INIT; see "The
 * ABI" above for size. */
typedef struct ferry_peek_options {
    size_t size;           /* sizeof(ferry_peek_options) */
    uint64_t from_seq;     /* the first sequence wanted; 0: the first kept */
    int64_t from_time_ms;  /* 0: unused; else start at the first message
                              stored at or after this Unix ms (and at or
                              after from_seq) */
    uint32_t max_messages; /* 0: 100; at most FERRY_PEEK_MAX (1000) */
    uint32_t max_bytes;    /* bound of the broker's reply frame; 0: its max
                              frame. At least one message comes if one is
                              stored from the start on, whatever its size */
} ferry_peek_options;

/* ferry_peek_options o = FERRY_PEEK_OPTIONS_INIT; everything at its default. */
#define FERRY_PEEK_OPTIONS_INIT                                                                    \
    {                                                                                              \
        .size = sizeof(ferry_peek_options)                                                         \
    }

#define FERRY_PEEK_MAX 1000

/* What ferry_peek read; released by ferry_peek_result_free. */
typedef struct ferry_peek_result {
    ferry_delivery **msgs; /* count messages, ascending seq; sub and group
                              are NULL and attempt 0: they are not
                              deliveries and cannot be acked (each may also
                              be freed alone with ferry_delivery_free) */
    size_t count;
    uint64_t next_seq; /* where a follow-up peek starts (from_seq) */
    uint64_t head_seq; /* the topic's highest sequence (0: none yet) */
} ferry_peek_result;

/* Reads stored messages of topic (a topic, or `_dead.<topic>`) without a
 * consumer group: no lease, no attempt counted, nothing written, no group
 * or topic created; the same messages can be peeked any number of times.
 * opts may be NULL (from the first kept message, up to 100 of them). The
 * broker pushes nothing: to follow a topic, peek again from next_seq.
 * Needs the consume right on the topic. On success fills *out (release it
 * with ferry_peek_result_free, also after an error: it is then empty) and
 * returns 0; else FERRY_EINVALID (bad arguments, an option out of range),
 * FERRY_EINVALID_TOPIC, FERRY_EUNKNOWN_TOPIC (no such topic), FERRY_EDENIED,
 * FERRY_EUNSUPPORTED (an option this library does not know),
 * FERRY_EUNKNOWN_TYPE from a broker that predates PEEK (it closes the
 * connection), or a connection error. */
FERRY_API int ferry_peek(ferry_conn *c, const char *topic, const ferry_peek_options *opts,
                         ferry_peek_result *out);

/* Frees what ferry_peek filled in and empties r. NULL-safe. */
FERRY_API void ferry_peek_result_free(ferry_peek_result *r);

/* The most sequences ferry_group_floor reports as redrivable (FLOOR_OK's
 * limit; docs/PROTOCOL.md §9.16). */
#define FERRY_FLOOR_KEEP_MAX 1000

/* Asks the broker for a group's durable ack floor: every sequence of the
 * topic below *floor_out is done for the group, its ack (or dead letter)
 * committed, and is delivered to the group again only after a ferry_seek
 * that moves the group back, or by a redrive. The sequences a redrive can
 * still bring back (dead-lettered by the group, their dead letter still
 * stored) are written to keep, ascending, *nkeep of them; when there are
 * more than keep_cap (at most FERRY_FLOOR_KEEP_MAX are reported), *floor_out
 * is lowered to the first left out, so that every redrivable sequence
 * below it is listed. An ack not yet committed is not counted: the floor
 * may lag the acks by a group commit. Needs the consume right on the topic
 * (or admin). Returns 0, FERRY_EINVALID, FERRY_EUNKNOWN_TOPIC,
 * FERRY_EUNKNOWN_GROUP, FERRY_EDENIED, FERRY_ESTORAGE (the broker could
 * not read it), FERRY_EUNKNOWN_TYPE from a broker that predates FLOOR (it
 * closes the connection), or a connection error. */
FERRY_API int ferry_group_floor(ferry_conn *c, const char *topic, const char *group,
                                uint64_t *floor_out, uint64_t *keep, size_t keep_cap,
                                size_t *nkeep);

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
    /* The topic's effective retention and publish rate. A broker that
     * predates them does not report them: has_retention is then 0 and the
     * fields below are 0. */
    int has_retention;     /* 1 when the broker reported the fields below */
    uint64_t max_age_ms;   /* messages older than this are deleted; 0: no limit */
    uint64_t max_count;    /* at most this many are kept; 0: no limit */
    uint64_t max_bytes;    /* at most this many bytes are kept; 0: no limit */
    int delete_acked;      /* 1: deleted once every group of the topic acked them */
    uint64_t publish_rate; /* messages stored per second, over the last 10 s */
} ferry_topic_info;

/* Lists the broker's topics, in the broker's order, including the ones it
 * derives (names starting with '_', such as the dead letters
 * "_dead.<topic>"). On success *out is an array of *count entries, never
 * NULL even when *count is 0 (free it with ferry_topics_free); on failure
 * *out is NULL and *count 0. */
FERRY_API int ferry_topics(ferry_conn *c, ferry_topic_info **out, size_t *count);
FERRY_API void ferry_topics_free(ferry_topic_info *topics);

/* In a ferry_retention limit: follow the broker's default (its
 * --retention-* options) rather than a value of the topic's own. */
#define FERRY_RETENTION_DEFAULT UINT64_MAX
/* In ferry_retention.delete_acked: follow the broker's default. */
#define FERRY_DELETE_ACKED_DEFAULT (-1)

/* One topic's retention, for ferry_topic_config. Each limit is
 * FERRY_RETENTION_DEFAULT (the broker's default), 0 (no limit) or the
 * limit. Note that a zero-initialised ferry_retention means "no limits,
 * delete_acked off", not "the broker's defaults": set each field. */
typedef struct ferry_retention {
    uint64_t max_age_ms; /* delete messages older than this (ms since stored) */
    uint64_t max_count;  /* keep at most this many messages */
    uint64_t max_bytes;  /* keep at most this many bytes (key + headers + payload) */
    int delete_acked;    /* 1: delete a message once every group of the topic
                            acked it; 0: do not; FERRY_DELETE_ACKED_DEFAULT (-1):
                            the broker's default */
} ferry_retention;

/* Sets the retention of topic (creating the topic if it does not exist yet)
 * and waits until the change is durable. All four settings are replaced:
 * there is no "leave as it is" (ferry_topics reports only effective values,
 * which cannot tell an explicit setting from a default). r NULL sets every
 * one to the broker's default. The topic may be one the broker derives
 * ("_dead.orders"). Retention deletes from the front of the topic, in steps
 * within the broker's commits and once a second, so a new limit takes a
 * moment to be reached on a large topic; ferry_topics shows the new
 * settings at once. Returns 0, FERRY_EINVALID_TOPIC, FERRY_EINVALID
 * (delete_acked not -1, 0 or 1), FERRY_EDENIED (the token lacks the admin
 * right), another broker error, or a connection error (a broker that
 * predates TOPIC_CONFIG closes the connection with FERRY_EUNKNOWN_TYPE). */
FERRY_API int ferry_topic_config(ferry_conn *c, const char *topic, const ferry_retention *r);

/* What ferry_topic_delete or ferry_group_delete removed. Set size to
 * sizeof(ferry_delete_result) before the call (later versions may append
 * fields). */
typedef struct ferry_delete_result {
    size_t size;
    uint64_t messages; /* messages the topic held (0 for a group) */
    uint32_t groups;   /* consumer groups deleted */
} ferry_delete_result;

/* ferry_topic_delete flag: delete the topic's consumer groups with it. */
#define FERRY_DELETE_FORCE 0x01

/* Deletes topic, its dead-letter topic "_dead.<topic>", their messages and
 * (with FERRY_DELETE_FORCE) their consumer groups, and waits until the
 * deletion is durable. The topic is gone at once: its name lists no more,
 * its subscriptions end (their connections see FERRY_EUNKNOWN_TOPIC from
 * ferry_receive), and its message ids are forgotten; the broker frees the
 * stored rows afterwards in bounded steps (a kill -9 meanwhile resumes
 * them at the next start). A publish to the same name afterwards creates a
 * new, empty topic whose sequences start again at 1. Requires the admin
 * right. out may be NULL. Returns 0, FERRY_EUNKNOWN_TOPIC,
 * FERRY_EINVALID (the topic has consumer groups and flags lacks
 * FERRY_DELETE_FORCE, or it is already being deleted),
 * FERRY_EINVALID_TOPIC, FERRY_EDENIED, another broker error, or a
 * connection error (a broker that predates DELETE closes the connection
 * with FERRY_EUNKNOWN_TYPE). */
FERRY_API int ferry_topic_delete(ferry_conn *c, const char *topic, int flags,
                                 ferry_delete_result *out);

/* Deletes one consumer group of topic (its position, acks, attempts and
 * the record of what it dead-lettered) and waits until that is durable.
 * Its subscriptions end (FERRY_EUNKNOWN_GROUP from ferry_receive on their
 * connections); the topic and its messages stay, and a message kept only
 * for this group (delete_acked retention) may now go. Subscribing with the
 * same name afterwards creates a new group at its start position.
 * Requires the admin right. out may be NULL. Returns 0,
 * FERRY_EUNKNOWN_TOPIC, FERRY_EUNKNOWN_GROUP, FERRY_EINVALID_GROUP,
 * FERRY_EDENIED, another broker error, or a connection error. */
FERRY_API int ferry_group_delete(ferry_conn *c, const char *topic, const char *group,
                                 ferry_delete_result *out);

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

/*
 * The inbox: exactly-once effects on the consuming side (docs/INBOX.md).
 *
 * The broker delivers at least once: a message comes again after a lease
 * expiry, a nack, a disconnect or a crash anywhere between a handler's
 * work and the broker's record of its ack. A consumer whose effects live
 * in a SQLite database makes each of them happen exactly once by recording
 * the message's id in the table ferry_inbox of that same database, in the
 * same transaction as the effect:
 *
 *   BEGIN IMMEDIATE; claim (group, id); effect, only when the claim is
 *   fresh; COMMIT; then ack.
 *
 * Why exactly once, for every message the group receives:
 *   - at most once: the claim is the primary key (group, message id) of
 *     ferry_inbox, so of all the transactions that try to record one
 *     message, at most one commits; the effect commits with its claim or
 *     not at all (one transaction), and every later delivery, in this
 *     process or another on the same database, finds the claim and skips
 *     the handler (BEGIN IMMEDIATE orders them: the second waits for the
 *     first's COMMIT, then sees its row);
 *   - at least once: the ack is sent only after the COMMIT returned, so
 *     the broker forgets no message whose effect is not durable; a crash
 *     or failure before the COMMIT leaves neither claim nor effect, and the
 *     broker delivers the message again, until it succeeds or the group's
 *     max deliveries send it to the dead-letter topic;
 *   - a crash between the COMMIT and the ack, or a lost ack, costs one
 *     redelivery, which finds the claim and is acked without running the
 *     handler;
 *   - claims are purged only after the window (ferry_inbox_window_ms), so
 *     no redelivery can come after its claim is gone. A SEEK (replay) that
 *     goes back further than the window runs the handlers again: that is
 *     what a replay is for. Within the window it finds the claims.
 * The effect must be made through db, inside the transaction the helper
 * opened (no COMMIT, ROLLBACK or BEGIN in the handler; SAVEPOINTs are
 * fine). Anything outside the database (an HTTP call, a real e-mail) stays
 * at least once. "Durable" means the database's synchronous setting:
 * journal_mode=WAL with synchronous=NORMAL survives a kill -9 of the
 * process, synchronous=FULL also a power loss.
 *
 * A database error is FERRY_ESTORAGE (sqlite3_errmsg(db) has the detail);
 * a database that stayed locked beyond the connection's busy timeout and
 * the retries below is FERRY_ETIMEOUT. The inbox functions take the
 * application's own sqlite3 handle; libferry does not open databases. A
 * handle is used by one thread at a time, as SQLite requires of a
 * connection in its multi-thread mode.
 */
typedef struct sqlite3 sqlite3;

/* ferry_inbox_claim and ferry_inbox_handle: the message was processed
 * before (the handler was skipped), or is recorded now. */
#define FERRY_INBOX_SEEN 0
#define FERRY_INBOX_FRESH 1
/* ferry_inbox_handle: the handler failed; its transaction was rolled back
 * and the delivery nacked for a retry. */
#define FERRY_INBOX_RETRY 2

/* The least window an inbox claim is kept: 7 days. It covers the
 * redelivery horizon of any reasonable group setting and, beyond it,
 * outages: a message whose ack was lost is redelivered only when the
 * broker and a consumer of the group run again. */
#define FERRY_INBOX_MIN_WINDOW_MS (7LL * 24 * 60 * 60 * 1000)

/* Test hook (crash tests only): when this environment variable holds a
 * number N >= 1, the process calls _exit(9) right after the COMMIT that
 * holds its Nth fresh claim in ferry_inbox_handle(_batch), before any ack
 * of that transaction is sent. Counted per process; inert unless set. */
#define FERRY_INBOX_TEST_EXIT_ENV "FERRY_TEST_INBOX_EXIT_AFTER_COMMIT"

/* Creates the inbox's tables in db when they do not exist yet: ferry_inbox
 * (grp TEXT, msg_id TEXT, topic TEXT, seq INTEGER, processed_ms INTEGER,
 * PRIMARY KEY (grp, msg_id)) WITHOUT ROWID, its index on processed_ms, and
 * ferry_inbox_meta (name, value), which records the layout's version
 * ('schema_version'). Idempotent: call it at every start; when all is in
 * place it only reads. Otherwise it runs in its own transaction, or in a
 * savepoint of the caller's when one is open. Returns 0, FERRY_EUNSUPPORTED
 * (the database holds a newer layout than this libferry knows),
 * FERRY_ESTORAGE, FERRY_ETIMEOUT or FERRY_EINVALID (db NULL). */
FERRY_API int ferry_inbox_install(sqlite3 *db);

/* Records d's message id for group (the application's name for this
 * consumer, normally the consumer group; any non-empty text) in the
 * transaction the caller has open on db, and says whether it is new:
 * FERRY_INBOX_FRESH (1): recorded now, apply the effect in the same
 * transaction; FERRY_INBOX_SEEN (0): processed before, skip it (and ack).
 * The claim is undone if the caller rolls back. Call it first in the
 * transaction, opened with BEGIN IMMEDIATE (a deferred transaction may
 * fail with SQLITE_BUSY_SNAPSHOT at its first write). Returns 1, 0,
 * FERRY_EINVALID (an argument NULL or empty, or no transaction open),
 * FERRY_EINVALID_ID (d has no id), FERRY_ESTORAGE or FERRY_ETIMEOUT.
 * Message ids are unique within a topic; when one group name serves
 * several topics whose ids may coincide, use a group name per topic. */
FERRY_API int ferry_inbox_claim(sqlite3 *db, const char *group, const ferry_delivery *d);

/* A message handler for ferry_inbox_handle: applies d's effect through db,
 * inside the transaction that is open (not ending it). Returns 0 on
 * success; anything else is a failure that rolls the transaction back and
 * nacks d. */
typedef int (*ferry_inbox_handler)(void *userdata, sqlite3 *db, const ferry_delivery *d);

/* Processes d exactly once (see above): BEGIN IMMEDIATE, ferry_inbox_claim,
 * h only when the claim is fresh, COMMIT, then the ack, pipelined
 * (ferry_delivery_ack_async: sent with the connection's next call; its
 * loss costs one redelivery, which is skipped). A handler failure (h
 * returns non-zero) or a database failure rolls back and nacks d with
 * delay retry_delay_ms. SQLITE_BUSY on BEGIN or COMMIT, beyond db's own
 * busy timeout, is retried with backoff for half of d's lease (1..10 s).
 * No transaction may be open on db. d stays the caller's (free it after).
 * Returns:
 *   FERRY_INBOX_FRESH (1)  the handler ran and its effect committed; acked
 *   FERRY_INBOX_SEEN (0)   processed before: skipped, acked again
 *   FERRY_INBOX_RETRY (2)  the handler failed: rolled back, nacked
 *   < 0                    FERRY_EINVALID (no transaction may be open, an
 *                          argument NULL), a database error (FERRY_ESTORAGE,
 *                          FERRY_ETIMEOUT: rolled back, nacked), or the
 *                          error of the ack or nack (a closed connection:
 *                          the broker redelivers; a failed ack comes after
 *                          a successful COMMIT, so the effect is kept). */
FERRY_API int ferry_inbox_handle(sqlite3 *db, const char *group, ferry_delivery *d,
                                 ferry_inbox_handler h, void *userdata, uint32_t retry_delay_ms);

/* ferry_inbox_handle for n deliveries (1 or more) in ONE transaction: one
 * BEGIN IMMEDIATE and one COMMIT (one fsync) for the lot, the consumer's
 * group commit. Each delivery is claimed and handled in a savepoint of its
 * own, so a handler failure rolls back only that delivery's claim and
 * effect, which is then nacked with retry_delay_ms; the others commit and
 * are acked after the COMMIT. A consumer takes what has arrived
 * (ferry_receive with timeout 0 after a first delivery) and hands it over:
 * alone when idle, in batches under load. A message that appears twice in
 * one batch is handled once. outcomes (NULL, or n entries) receives each
 * delivery's result as ferry_inbox_handle returns it. Returns 0, or the
 * error that undid the whole batch (BEGIN, COMMIT, a handler that ended the
 * transaction; every delivery then nacked, its outcome that error), or
 * FERRY_EINVALID / FERRY_ENOMEM before anything was done. The deliveries
 * stay the caller's. */
FERRY_API int ferry_inbox_handle_batch(sqlite3 *db, const char *group, ferry_delivery *const *ds,
                                       size_t n, ferry_inbox_handler h, void *userdata,
                                       uint32_t retry_delay_ms, int *outcomes);

/* Deletes claims processed more than older_than_ms ago (by the wall
 * clock), oldest first, at most max_rows of them (0: all). Runs in the
 * caller's transaction when one is open, else on its own. Returns the
 * number deleted, FERRY_EINVALID (a negative argument), FERRY_ESTORAGE or
 * FERRY_ETIMEOUT. Call it every so often from the consumer with
 * older_than_ms = ferry_inbox_window_ms(...) and a bounded max_rows.
 * A window shorter than the redelivery horizon lets a late redelivery run
 * its handler a second time: keep the rule of ferry_inbox_window_ms. */
FERRY_API int ferry_inbox_purge(sqlite3 *db, int64_t older_than_ms, int max_rows);

/* Forgets the claims the broker can no longer deliver again: deletes
 * claims of grp for messages of topic whose sequence is below floor and
 * not among keep (nkeep sequences, ascending, each below floor), at most
 * max_rows of them (0: all), lowest sequence first. floor and keep are
 * what ferry_group_floor reported for the group whose deliveries grp
 * claims. Runs in the caller's transaction when one is open, else on its
 * own. Returns the number deleted, FERRY_EINVALID (a bad argument, keep
 * not ascending or not below floor), FERRY_ESTORAGE or FERRY_ETIMEOUT.
 * Keeps what is left: claims at or above the floor (at most about the
 * group's window of deliveries in flight, plus those acked above a
 * message still pending), and claims of redrivable dead letters, which
 * the time window (ferry_inbox_purge) still bounds. A ferry_seek that
 * moves the group back below the floor delivers messages whose claims are
 * forgotten: their handlers run again (a deliberate replay). */
FERRY_API int ferry_inbox_forget(sqlite3 *db, const char *grp, const char *topic, uint64_t floor,
                                 const uint64_t *keep, size_t nkeep, int max_rows);

/* ferry_group_floor on s's connection for s's topic and group, then
 * ferry_inbox_forget with what it reported: the bounded purge (see
 * docs/INBOX.md "Keeping the inbox small"). Call it every so often from
 * the consumer's loop, between deliveries, with a bounded max_rows; it
 * waits for the broker's reply (one round trip). Returns the number of
 * claims deleted, FERRY_EINVALID, FERRY_ECLOSED (s has ended), or what
 * ferry_group_floor and ferry_inbox_forget return. */
FERRY_API int ferry_inbox_purge_acked(sqlite3 *db, const char *grp, ferry_sub *s, int max_rows);

/* The window an inbox claim must be kept: the redelivery horizon, the
 * longest a message may still be delivered after its first delivery,
 * max_deliveries x (ack_wait_ms + max_delay_ms), but never less than
 * FERRY_INBOX_MIN_WINDOW_MS. ack_wait_ms and max_deliveries are the
 * group's (ferry_sub_info_get after subscribing: what SUBSCRIBE_OK said;
 * with several consumers, the longest lease any of them uses); max_delay_ms
 * is the longest wait between two attempts, the larger of the longest nack
 * delay the application uses and the longest step of the group's
 * redelivery backoff (its SUBSCRIBE backoff_ms, else ferryd's
 * --redelivery-backoff; SUBSCRIBE_OK does not report it), plus the longest
 * the application extends a lease with ferry_delivery_touch.
 * max_deliveries 0 (no limit)
 * has no horizon: INT64_MAX (nothing is ever old enough; give such a group
 * a max_deliveries). */
FERRY_API int64_t ferry_inbox_window_ms(uint32_t ack_wait_ms, uint16_t max_deliveries,
                                        uint32_t max_delay_ms);

/* A subscription's settings, as the broker confirmed them (SUBSCRIBE_OK). */
typedef struct ferry_sub_info {
    char topic[201];
    char group[201];
    uint32_t max_in_flight;         /* the window granted (ferry_sub_set_window) */
    uint32_t ack_wait_ms;           /* the lease of each delivery */
    uint16_t max_deliveries;        /* the group's attempts before dead-lettering; 0: no limit */
    uint64_t redelivery_horizon_ms; /* the broker's bound on how long after a delivery
                                       the message can be redelivered (leases, backoff,
                                       nack delays); UINT64_MAX: unbounded; 0: the
                                       broker did not say. Pass it to
                                       ferry_inbox_window_ms' callers as the floor. */
} ferry_sub_info;

/* Copies s's settings into *out. Returns 0, or FERRY_EINVALID when s or
 * out is NULL. */
FERRY_API int ferry_sub_info_get(const ferry_sub *s, ferry_sub_info *out);

/*
 * The transactional outbox and its relay (docs/OUTBOX.md).
 *
 * A producer that changes its own SQLite database and must announce the
 * change writes the message into the table ferry_outbox of that database,
 * in the same transaction (ferry_outbox_put, or a plain INSERT from any
 * language: docs/OUTBOX.md is the table's contract). The message then
 * exists if and only if the change committed. A relay (ferry_relay_*, or
 * the `ferry relay` sidecar) reads the committed rows in seq order (which
 * is commit order), publishes them in atomic batches with the row's msg_id
 * as the message id and, under the database's producer id, the row's seq
 * as producer_seq, and marks them sent only after the broker's durable
 * ack. A crash anywhere only causes a re-publish, which the broker acks as
 * a duplicate however long after (its producer high-water mark), so every
 * committed message is stored exactly once.
 *
 * The outbox functions take the application's own sqlite3 handle and work
 * in whatever transaction it has open. A database error is FERRY_ESTORAGE
 * (sqlite3_errmsg(db) has the detail), a lock held beyond the busy timeout
 * FERRY_ETIMEOUT.
 */

/* The outbox layout this libferry creates and understands. */
#define FERRY_OUTBOX_SCHEMA_VERSION 1

/* Creates the outbox tables in db when they do not exist yet (ferry_outbox,
 * its two partial indexes, and ferry_outbox_meta with the schema version
 * and this database's producer id, generated once). Idempotent and cheap
 * once installed (one read): call it at every start. Takes the write lock
 * only when something is missing: in its own transaction, or in a savepoint
 * of the caller's when one is open. Returns 0, FERRY_EUNSUPPORTED (the
 * database holds a newer outbox layout), FERRY_ESTORAGE, FERRY_ETIMEOUT or
 * FERRY_EINVALID (db NULL). */
FERRY_API int ferry_outbox_install(sqlite3 *db);

/* Inserts msg into the outbox in the transaction the caller has open on db
 * (without one, the row commits at once); it is published once that
 * transaction commits, and never if it rolls back. msg->id is the message
 * id when set (1..128 printable ASCII, unique in the outbox), else one is
 * generated (32 lower-case hex digits); either way it is copied into id_out
 * when not NULL. msg->producer_seq is ignored (the relay numbers rows by
 * their seq). Headers are stored as a JSON object, so their names and
 * values must be UTF-8 text without NUL bytes. Checks what the broker will
 * check except the size limit it announces: returns 0, FERRY_EINVALID_TOPIC,
 * FERRY_EINVALID_ID, FERRY_EINVALID (key over 1024 bytes, a bad header,
 * negative deliver_at_ms), FERRY_ENOMEM, FERRY_ESTORAGE (e.g. an id already
 * in the outbox: SQLITE_CONSTRAINT_UNIQUE; the caller's transaction stays
 * open) or FERRY_ETIMEOUT. After the COMMIT, ferry_relay_notify wakes a
 * relay running in the same process at once; any other relay notices within
 * its poll interval. */
FERRY_API int ferry_outbox_put(sqlite3 *db, const ferry_msg *msg, char id_out[129]);

/* The state of an outbox, for monitoring (`ferry relay --status`). */
typedef struct ferry_outbox_stats {
    char producer_id[129];       /* this database's producer id */
    uint64_t waiting;            /* rows not yet sent */
    uint64_t oldest_waiting_seq; /* the first of them; 0: none */
    int64_t oldest_waiting_ms;   /* its age (now - created_ms); 0: none */
    uint64_t last_sent_seq;      /* the last row sent, while it is kept; 0: none */
    int64_t last_sent_ms;        /* when it was marked sent, Unix ms; 0: none */
    uint64_t last_broker_seq;    /* its sequence number in its topic (0: the broker
                                    acked a re-publish without remembering it) */
    uint64_t failed;             /* rows the relay gave up on (error set) */
} ferry_outbox_stats;

/* Fills *out from db's outbox (one read transaction unless the caller has
 * one open). Costs O(waiting + failed rows). Returns 0, FERRY_EUNSUPPORTED
 * (no outbox installed), FERRY_ESTORAGE, FERRY_ETIMEOUT or FERRY_EINVALID. */
FERRY_API int ferry_outbox_stats_get(sqlite3 *db, ferry_outbox_stats *out);

typedef struct ferry_relay ferry_relay;

/* Log levels of the relay's log lines. */
#define FERRY_LOG_DEBUG 0
#define FERRY_LOG_INFO 1
#define FERRY_LOG_WARN 2
#define FERRY_LOG_ERROR 3

/* Receives each log line (no newline); called on the thread running
 * ferry_relay_run. */
typedef void (*ferry_relay_log_fn)(void *userdata, int level, const char *line);

/* ferry_relay_options.retention_ms: never purge sent rows. */
#define FERRY_RELAY_KEEP_FOREVER (-1)

/* The file whose flock makes one relay per database active: the database's
 * path followed by this. Created next to it, never deleted. */
#define FERRY_RELAY_LOCK_SUFFIX ".relay.lock"

/* Test hook (crash tests only): when this environment variable holds N >= 1
 * at ferry_relay_new, the process calls _exit(9) right after the broker
 * acked its Nth batch, before the rows are marked sent. */
#define FERRY_RELAY_CRASH_ENV "FERRY_RELAY_CRASH_AFTER_ACK"

/* Relay options. Start from FERRY_RELAY_OPTIONS_INIT, then set what you
 * need; every field left 0 takes the default named beside it. Copied by
 * ferry_relay_new. See "The ABI" at the top for size. */
typedef struct ferry_relay_options {
    size_t size;            /* sizeof(ferry_relay_options) */
    const char *db_path;    /* required: the application's database file */
    const char *server;     /* NULL: FERRY_DEFAULT_SERVER; a nats:// address
                               relays to JetStream (docs/SCALING.md) */
    const char *token;      /* NULL: none */
    uint32_t batch;         /* 0: 1000; 1..10000 rows per PUBLISH (also bounded
                               by the broker's max_batch and max frame); over
                               JetStream the publishes in flight at once */
    int64_t retention_ms;   /* 0: 1 hour; sent rows are deleted this long after
                               they were sent; FERRY_RELAY_KEEP_FOREVER: never */
    int poll_interval_ms;   /* 0: 5; how often PRAGMA data_version is read for
                               commits of other connections; 1..10000 */
    int drain;              /* 1: ferry_relay_run returns once no row is waiting */
    ferry_relay_log_fn log; /* NULL: timestamped lines on stderr */
    void *log_userdata;
} ferry_relay_options;

/* ferry_relay_options o = FERRY_RELAY_OPTIONS_INIT; then set db_path. */
#define FERRY_RELAY_OPTIONS_INIT                                                                   \
    {                                                                                              \
        .size = sizeof(ferry_relay_options)                                                        \
    }

/* Creates a relay for opts->db_path; nothing is opened until ferry_relay_run.
 * Returns 0 with *out set, FERRY_EINVALID (errmsg, when not NULL, says
 * which option; also opts->size unset), FERRY_EUNSUPPORTED (an option this
 * library does not know) or FERRY_ENOMEM. */
FERRY_API int ferry_relay_new(const ferry_relay_options *opts, ferry_relay **out, char *errmsg,
                              size_t errmsg_len);

/* Runs the relay on the calling thread until ferry_relay_stop (or, with
 * drain, until nothing is waiting). First takes the database's relay lock
 * (FERRY_RELAY_LOCK_SUFFIX), standing by while another relay holds it and
 * taking over when that one stops or dies; then opens its own connection
 * to the database (installing the outbox when missing) and to the broker,
 * reconnecting with backoff (100 ms doubling to 5 s) while the broker is
 * unreachable. Logs through opts->log: its start, the lock, connection
 * changes, failures, and the lag every 10 s while there is traffic.
 * Returns 0 once stopped, or a fatal error: FERRY_ESTORAGE (the database
 * cannot be opened or used), FERRY_EUNSUPPORTED (a newer outbox layout),
 * FERRY_EAUTH / FERRY_EVERSION (the broker refused us), FERRY_EBUSY
 * (already running on another thread). A stop takes effect at once while
 * idle or standing by; otherwise after the publish or connection attempt in
 * flight (normally milliseconds; at most the 30 s request timeout or the
 * 5 s connect timeout against a broker that hangs). Rows published but not
 * yet marked are published again by the next run, as duplicates. Over
 * JetStream (a nats:// server) each connection first reads the stream back
 * from the position recorded in the database (ferry_outbox_meta row
 * "jetstream_seq:<stream>") and marks sent the rows it finds stored, so that
 * no row is stored twice even after JetStream's duplicate window;
 * publishes then go in windows of `batch`, each row marked sent after its
 * PubAck (docs/SCALING.md says what holds across a failed publish). */
FERRY_API int ferry_relay_run(ferry_relay *r);

/* Asks ferry_relay_run to return. Thread-safe and async-signal-safe (may be
 * called from a signal handler). NULL is a no-op. */
FERRY_API void ferry_relay_stop(ferry_relay *r);

/* Wakes the relay to look for new rows now, rather than at its next
 * data_version check: call it after committing a transaction that wrote to
 * the outbox, when the relay runs in the same process. Thread-safe and
 * async-signal-safe. NULL is a no-op. */
FERRY_API void ferry_relay_notify(ferry_relay *r);

/* Frees the relay; it must not be running. NULL is a no-op. */
FERRY_API void ferry_relay_free(ferry_relay *r);

/* What a relay has done since ferry_relay_new; readable from any thread. */
typedef struct ferry_relay_stats {
    int active;          /* 1 while it holds the database's relay lock */
    int connected;       /* 1 while connected to the broker */
    uint64_t published;  /* rows acked by the broker and marked sent */
    uint64_t duplicates; /* of those, re-publishes the broker already had */
    uint64_t failed;     /* rows marked failed (never publishable) */
    uint64_t purged;     /* sent rows deleted after the retention */
    uint64_t reconnects; /* connections after the first */
    uint64_t last_seq;   /* the last row marked sent */
} ferry_relay_stats;

/* Copies r's counters into *out (all 0 for a NULL r). */
FERRY_API void ferry_relay_stats_get(const ferry_relay *r, ferry_relay_stats *out);

/*
 * PostgreSQL: the outbox, its relay and the inbox for applications whose
 * data lives in Postgres (docs/OUTBOX.md and docs/INBOX.md, "PostgreSQL").
 *
 * Present when libferry was built with libpq (the meson feature
 * `postgres`, on when libpq is found). Every function takes the
 * application's own libpq connection (PGconn) where it works inside the
 * application's transaction; the relay opens its own. All the tables live
 * in one schema the application names (NULL or "": "ferry"): 1-50 of
 * [a-z0-9_] starting with a letter or '_' (FERRY_EINVALID otherwise).
 * A database error is FERRY_ESTORAGE, with PQerrorMessage(pg) holding
 * Postgres' detail. The SQL contract (tables, constraints, the NOTIFY
 * trigger) is what docs/OUTBOX.md documents: any language that runs SQL
 * in its own transaction gets the same guarantees.
 */
typedef struct pg_conn PGconn;

/* The Postgres outbox layout this libferry creates and understands. */
#define FERRY_PG_OUTBOX_SCHEMA_VERSION 1
/* The Postgres inbox layout this libferry creates and understands. */
#define FERRY_PG_INBOX_SCHEMA_VERSION 2

/* Creates the outbox in schema (the schema itself when missing; the table
 * <schema>.outbox with its CHECK constraints and indexes,
 * <schema>.outbox_meta with the schema version and the producer id, and
 * the statement trigger that NOTIFYs the relay on insert). Idempotent:
 * when everything is in place it only reads. Runs in a transaction of its
 * own, so no transaction may be open on pg (FERRY_EINVALID). Concurrent
 * installs are serialised by a transaction-level advisory lock. Returns 0,
 * FERRY_EINVALID (a bad schema name, pg NULL, a transaction open),
 * FERRY_EUNSUPPORTED (the schema holds a newer outbox layout) or
 * FERRY_ESTORAGE (e.g. no right to create the schema). */
FERRY_API int ferry_pg_outbox_install(PGconn *pg, const char *schema);

/* Inserts msg into <schema>.outbox in the transaction the caller has open
 * on pg (or on its own without one), as an application's INSERT would:
 * topic, payload, id (NULL: generated), key, headers (as a JSON object,
 * in order), deliver_at_ms. Checks msg as the broker will first
 * (FERRY_EINVALID_TOPIC, FERRY_EINVALID_ID, FERRY_EINVALID; header names
 * and values must be UTF-8 text without NUL bytes). Copies the message id
 * into id_out (129 bytes) when not NULL. A duplicate id is FERRY_ESTORAGE
 * (SQLSTATE 23505) and aborts the caller's transaction, as any failed
 * statement does in Postgres. */
FERRY_API int ferry_pg_outbox_put(PGconn *pg, const char *schema, const ferry_msg *msg,
                                  char id_out[129]);

/* The state of a Postgres outbox, for monitoring (`ferry relay --pg URL
 * --status`). */
typedef struct ferry_pg_outbox_stats {
    uint64_t waiting;           /* rows not yet published and deleted */
    int64_t oldest_waiting_ms;  /* age of the oldest of them (by created_ms); 0: none */
    uint64_t oldest_waiting_id; /* its id; 0: none */
    uint64_t claimed;           /* of the waiting, numbered by the relay (in flight) */
    uint64_t last_sent_seq;     /* the last producer sequence published; 0: none yet */
    int64_t last_sent_ms;       /* when, Unix ms; 0: none yet */
    uint64_t sent;              /* rows published (and deleted) since the install */
    uint64_t failed;            /* rows the relay gave up on (error set, kept) */
    int relay_pid;              /* backend pid of the active relay's session; 0: none */
    char producer_id[129];      /* this outbox's producer id */
} ferry_pg_outbox_stats;

/* Fills *out from the outbox in schema (one snapshot). Returns 0,
 * FERRY_EUNSUPPORTED (no outbox installed there, or a newer layout),
 * FERRY_EINVALID or FERRY_ESTORAGE. */
FERRY_API int ferry_pg_outbox_stats_get(PGconn *pg, const char *schema, ferry_pg_outbox_stats *out);

typedef struct ferry_pg_relay ferry_pg_relay;

/* Postgres relay options. Start from FERRY_PG_RELAY_OPTIONS_INIT, then set
 * what you need; every field left 0 takes the default named beside it.
 * Copied by ferry_pg_relay_new. See "The ABI" at the top for size. */
typedef struct ferry_pg_relay_options {
    size_t size;            /* sizeof(ferry_pg_relay_options) */
    const char *conninfo;   /* required: a libpq URL ("postgresql://...") or
                               "key=value" string */
    const char *schema;     /* NULL: "ferry" */
    const char *server;     /* NULL: FERRY_DEFAULT_SERVER */
    const char *token;      /* NULL: none */
    uint32_t batch;         /* 0: 1000; 1..10000 rows per PUBLISH */
    int rescan_ms;          /* 0: 10000; the safety re-scan when no NOTIFY came
                               (a lost NOTIFY cannot delay a row longer);
                               100..3600000 */
    int drain;              /* 1: ferry_pg_relay_run returns once no row is waiting */
    ferry_relay_log_fn log; /* NULL: timestamped lines on stderr */
    void *log_userdata;
} ferry_pg_relay_options;

/* ferry_pg_relay_options o = FERRY_PG_RELAY_OPTIONS_INIT; then set conninfo. */
#define FERRY_PG_RELAY_OPTIONS_INIT                                                                \
    {                                                                                              \
        .size = sizeof(ferry_pg_relay_options)                                                     \
    }

/* Creates a relay for opts->conninfo; nothing is opened until
 * ferry_pg_relay_run. Returns 0 with *out set, FERRY_EINVALID (errmsg,
 * when not NULL, says which option; also opts->size unset),
 * FERRY_EUNSUPPORTED (an option this library does not know) or
 * FERRY_ENOMEM. */
FERRY_API int ferry_pg_relay_new(const ferry_pg_relay_options *opts, ferry_pg_relay **out,
                                 char *errmsg, size_t errmsg_len);

/* Runs the relay on the calling thread until ferry_pg_relay_stop (or, with
 * drain, until nothing is waiting). Connects to Postgres, installs the
 * outbox when missing, LISTENs for the trigger's NOTIFY and takes the
 * outbox's session advisory lock, standing by (blocked on the lock, no
 * queries) while another relay holds it and taking over the moment that
 * session ends. Then, on every NOTIFY and every rescan_ms: numbers the
 * committed rows in a transaction of its own (the claim: producer
 * sequences in commit order), publishes them in atomic batches under the
 * outbox's producer id, and deletes them after the broker's durable ack.
 * A lost Postgres or broker connection is retried with backoff (100 ms
 * doubling to 5 s). Returns 0 once stopped, or a fatal error:
 * FERRY_ECONNECT (the first connection to Postgres failed: a wrong URL,
 * authentication, no such database), FERRY_ESTORAGE (the outbox cannot be
 * installed or read: a missing permission), FERRY_EUNSUPPORTED (a newer
 * layout), FERRY_EAUTH / FERRY_EVERSION (the broker refused us),
 * FERRY_EBUSY (already running). Honours FERRY_RELAY_CRASH_ENV. */
FERRY_API int ferry_pg_relay_run(ferry_pg_relay *r);

/* Asks ferry_pg_relay_run to return. Thread-safe and async-signal-safe.
 * NULL is a no-op. */
FERRY_API void ferry_pg_relay_stop(ferry_pg_relay *r);

/* Frees the relay; it must not be running. NULL is a no-op. */
FERRY_API void ferry_pg_relay_free(ferry_pg_relay *r);

/* What a Postgres relay has done since ferry_pg_relay_new, readable from
 * any thread: active (1 while it holds the advisory lock), connected (to
 * the broker), published, duplicates, failed, purged (rows deleted after
 * their ack), reconnects, last_seq (the last producer sequence acked). */
FERRY_API void ferry_pg_relay_stats_get(const ferry_pg_relay *r, ferry_relay_stats *out);

/* Creates the inbox in schema when missing: <schema>.inbox (grp text,
 * msg_id text, topic text, seq bigint, processed_ms bigint, PRIMARY KEY
 * (grp, msg_id)), its index on processed_ms, and <schema>.inbox_meta with
 * the layout's version. Idempotent; no transaction may be open on pg.
 * Returns 0, FERRY_EINVALID, FERRY_EUNSUPPORTED (a newer layout) or
 * FERRY_ESTORAGE. */
FERRY_API int ferry_pg_inbox_install(PGconn *pg, const char *schema);

/* Records d's message id for group in the transaction the caller has open
 * on pg (INSERT ... ON CONFLICT DO NOTHING) and says whether it is new:
 * FERRY_INBOX_FRESH (1): apply the effect in the same transaction;
 * FERRY_INBOX_SEEN (0): processed before, skip it (and ack). A concurrent
 * transaction claiming the same message waits for the first one's end and
 * then sees its claim (or takes it, when the first rolled back). Returns
 * 1, 0, FERRY_EINVALID (an argument NULL or empty, or no transaction open
 * on pg), FERRY_EINVALID_ID (d has no id) or FERRY_ESTORAGE (the caller's
 * transaction is then aborted: roll it back). */
FERRY_API int ferry_pg_inbox_claim(PGconn *pg, const char *schema, const char *group,
                                   const ferry_delivery *d);

/* A message handler for ferry_pg_inbox_handle: applies d's effect through
 * pg, inside the transaction that is open (not ending it). Returns 0 on
 * success; anything else rolls back and nacks d. */
typedef int (*ferry_pg_inbox_handler)(void *userdata, PGconn *pg, const ferry_delivery *d);

/* Processes d exactly once: BEGIN, ferry_pg_inbox_claim, h only when the
 * claim is fresh, COMMIT, then the ack (ferry_delivery_ack_async). A
 * handler failure or a database failure (including a failed COMMIT, e.g.
 * a serialization failure) rolls back and nacks d with retry_delay_ms. No
 * transaction may be open on pg. Returns FERRY_INBOX_FRESH,
 * FERRY_INBOX_SEEN, FERRY_INBOX_RETRY (the handler failed) or < 0:
 * FERRY_EINVALID, FERRY_ESTORAGE (rolled back, nacked), or the error of the
 * ack or nack. */
FERRY_API int ferry_pg_inbox_handle(PGconn *pg, const char *schema, const char *group,
                                    ferry_delivery *d, ferry_pg_inbox_handler h, void *userdata,
                                    uint32_t retry_delay_ms);

/* ferry_pg_inbox_handle for n deliveries (1 or more) in ONE transaction: one
 * BEGIN and one COMMIT (one WAL flush) for the lot, the consumer's group
 * commit. Each delivery is claimed and handled in a savepoint of its own,
 * so a handler failure rolls back only that delivery's claim and effect,
 * which is then nacked with retry_delay_ms; the others commit and are
 * acked after the COMMIT. A consumer takes what has arrived (ferry_receive
 * with timeout 0 after a first delivery) and hands it over: alone when
 * idle, in batches under load. A message that appears twice in one batch
 * is handled once. outcomes (NULL, or n entries) receives each delivery's
 * result as ferry_pg_inbox_handle returns it. Returns 0, or the error that
 * undid the whole batch (BEGIN, COMMIT, a handler that ended the
 * transaction: every delivery then nacked, its outcome that error), or
 * FERRY_EINVALID (an argument NULL, a transaction open on pg) /
 * FERRY_ENOMEM before anything was done. The deliveries stay the
 * caller's. */
FERRY_API int ferry_pg_inbox_handle_batch(PGconn *pg, const char *schema, const char *group,
                                          ferry_delivery *const *ds, size_t n,
                                          ferry_pg_inbox_handler h, void *userdata,
                                          uint32_t retry_delay_ms, int *outcomes);

/* Deletes claims processed more than older_than_ms ago (by Postgres'
 * clock), oldest first, at most max_rows (1..100000) in one statement, so
 * no long lock is held: call it every so often with older_than_ms =
 * ferry_inbox_window_ms(...), as for the SQLite inbox. Runs in the
 * caller's transaction when one is open. Returns the number deleted,
 * FERRY_EINVALID or FERRY_ESTORAGE. */
FERRY_API int ferry_pg_inbox_purge(PGconn *pg, const char *schema, int64_t older_than_ms,
                                   int max_rows);

/* Deletes group's claims of topic below floor, except those of the
 * sequences in keep (nkeep of them, increasing, each below floor): the
 * claims of messages that can no longer be delivered to the group, as
 * ferry_inbox_forget does for SQLite. At most max_rows (1..100000), lowest
 * sequences first, in one statement (the inbox_seq index: its cost is the
 * rows deleted). Runs in the caller's transaction when one is open.
 * Returns the number deleted, FERRY_EINVALID or FERRY_ESTORAGE. */
FERRY_API int ferry_pg_inbox_forget(PGconn *pg, const char *schema, const char *group,
                                    const char *topic, uint64_t floor, const uint64_t *keep,
                                    size_t nkeep, int max_rows);

/* The bounded purge by the broker's floor, for the Postgres inbox: asks the
 * broker for sub's group floor and its redrivable dead letters
 * (ferry_group_floor on sub's connection) and forgets group's claims below
 * it (ferry_pg_inbox_forget). group is the inbox's group name (usually the
 * consumer group's). Call it every so often (every few thousand messages,
 * or seconds), and ferry_pg_inbox_purge with the window as well: that one
 * bounds the claims the floor keeps (redrivable dead letters), as
 * docs/INBOX.md says for SQLite. Returns the number
 * deleted, FERRY_EINVALID, FERRY_ECLOSED, the broker's error (as
 * ferry_group_floor) or FERRY_ESTORAGE. */
FERRY_API int ferry_pg_inbox_purge_acked(PGconn *pg, const char *schema, const char *group,
                                         ferry_sub *sub, int max_rows);

#ifdef __cplusplus
}
#endif

#endif /* FERRY_H */
