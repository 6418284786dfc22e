/*
 * ferry.h - libferry, the C client for the Ferry message broker.
 *
 * A ferry_conn is one TCP connection to ferryd speaking protocol v1
 * (docs/PROTOCOL.md). It publishes messages, one at a time or as atomic
 * batches, synchronously or pipelined with a bounded in-flight window.
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
 * first to send them) get their callbacks with FERRY_ECLOSED. NULL is a
 * no-op. Must not be called from a callback of the same connection. */
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
 * ack (callbacks run here). timeout_ms < 0 waits forever. Returns 0, or
 * FERRY_ETIMEOUT / a connection error; a broker error for one publish is
 * reported to its callback, not here. */
FERRY_API int ferry_flush(ferry_conn *c, int timeout_ms);

/* Without blocking: sends what is buffered as far as the socket takes it and
 * runs callbacks for acks that have already arrived. Returns 0 or the error
 * that closed the connection (pending callbacks then got it too). */
FERRY_API int ferry_poll(ferry_conn *c);

/* Pipelined publishes (ferry_publish_async) awaiting their ack. */
FERRY_API size_t ferry_in_flight(const ferry_conn *c);

/* Round trip to the broker; fills *rtt_us when not NULL. Like every
 * synchronous call it waits behind pipelined publishes already in flight. */
FERRY_API int ferry_ping(ferry_conn *c, uint64_t *rtt_us);

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
