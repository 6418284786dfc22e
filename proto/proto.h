/*
 * proto.h - Ferry wire protocol v1: frame layout, encoder and decoder.
 *
 * This is the one codec shared by ferryd and libferry. It does no I/O and no
 * allocation: the decoder reads a caller's buffer and hands back slices that
 * point into it (valid as long as that buffer is), and the encoder writes into
 * a caller's buffer through a bounds-checked writer. docs/PROTOCOL.md is the
 * normative description; the layout comments here mirror it.
 *
 * Frame (all integers big-endian):
 *
 *   u32 length      bytes after this field: 6 + body length
 *   u8  type        enum proto_type
 *   u8  flags       0 unless the type defines bits (ERROR: PROTO_ERROR_FATAL)
 *   u32 request_id  chosen by the requester, echoed in the reply
 *   ...  body       type-specific, exactly length - 6 bytes
 *
 * Primitive fields:
 *   str16  = u16 n, then n bytes  (topic names, ids, keys, header names/values)
 *   bytes32 = u32 n, then n bytes (payloads)
 *
 * Every length is checked against what remains in the frame before it is
 * used, and a frame's body must be consumed exactly: trailing bytes are
 * MALFORMED, except in HELLO_OK and inside TOPICS_OK and GROUPS_OK entries,
 * where later revisions may append fields.
 *
 * Invariants the decoder guarantees when it returns > 0:
 *   - every slice lies inside [buf, buf + returned);
 *   - a PUBLISH's messages, the headers of every message and of a DELIVER,
 *     and the entries of PUBLISH_ACK, TOPICS_OK, ACK_OK and GROUPS_OK have
 *     all been walked once, so the iterators over them cannot fail;
 *   - counts are within the documented maxima (PROTO_MAX_*), and so are
 *     the ranged fields (sub_id != 0, start, max_in_flight, attempt >= 1,
 *     ACK_OK codes <= FERRY_WIRE_CODE_MAX).
 * Semantic checks (topic and group name alphabet, message size against the
 * broker's configured limit) are separate functions so that broker and
 * client apply exactly the same rules.
 */
#ifndef FERRY_PROTO_H
#define FERRY_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "ferry_codes.h"

#define PROTO_VERSION 1

/* u32 length + u8 type + u8 flags + u32 request_id. */
#define PROTO_HEADER_BYTES 10
/* The smallest legal value of the length field: type + flags + request_id. */
#define PROTO_MIN_LENGTH 6

/*
 * Frame size limits. A peer never accepts a frame whose length field exceeds
 * its limit and never allocates what such a field claims.
 *  - PROTO_HANDSHAKE_MAX_FRAME: before HELLO is accepted the broker reads at
 *    most this much, so an unauthenticated peer cannot make it buffer more.
 *  - PROTO_DEFAULT_MAX_FRAME: the broker's default, advertised in HELLO_OK;
 *    a 1 MiB message plus its topic, id, key and headers fits with room.
 *  - PROTO_ABSOLUTE_MAX_FRAME: no configuration may exceed this (64 MiB);
 *    it keeps every length computation far from 32-bit overflow.
 */
#define PROTO_HANDSHAKE_MAX_FRAME (64u * 1024u)
#define PROTO_DEFAULT_MAX_FRAME (4u * 1024u * 1024u)
#define PROTO_ABSOLUTE_MAX_FRAME (64u * 1024u * 1024u)

/* Default maximum message size (key + headers + payload), configurable. */
#define PROTO_DEFAULT_MAX_MESSAGE (1024u * 1024u)

/* Field maxima, fixed by the protocol (not configurable). */
#define PROTO_MAX_TOPIC 200 /* topic name bytes */
/* A topic a client names into existence (a publish): room for the 6 bytes
 * of "_dead." in front of it, its dead-letter topic (PROTOCOL.md §8). */
#define PROTO_MAX_PUBLISH_TOPIC (PROTO_MAX_TOPIC - 6)
#define PROTO_MAX_ID 128             /* message id bytes */
#define PROTO_MAX_KEY 1024           /* message key bytes */
#define PROTO_MAX_HEADERS 64         /* headers per message */
#define PROTO_MAX_HEADER_NAME 255    /* header name bytes */
#define PROTO_MAX_HEADER_VALUE 65535 /* header value bytes (str16) */
#define PROTO_MAX_BATCH 10000        /* messages in one PUBLISH */
#define PROTO_MAX_CLIENT_NAME 255    /* HELLO client name bytes */
#define PROTO_MAX_TOKEN 1024         /* HELLO token bytes */
#define PROTO_MAX_ERROR_TEXT 1024    /* ERROR message bytes */
#define PROTO_MAX_TOPICS 100000      /* entries in one TOPICS_OK */
#define PROTO_MAX_GROUP 200          /* consumer group name bytes */
#define PROTO_MAX_ACKS 10000         /* sequences in one ACK / ACK_OK */
#define PROTO_MAX_WINDOW 65535       /* SUBSCRIBE / CREDIT max_in_flight */
#define PROTO_MAX_REASON 1024        /* NACK reason bytes */
#define PROTO_MAX_GROUPS 100000      /* entries in one GROUPS_OK */
#define PROTO_MAX_BACKOFF 16         /* SUBSCRIBE backoff schedule entries */
#define PROTO_MAX_FLOOR_KEEP 1000    /* sequences in one FLOOR_OK */
#define PROTO_MAX_PEEK 1000          /* messages in one PEEK / PEEK_OK */
/* SUBSCRIBE max_deliveries asking for no delivery limit (0 asks for the
 * broker's default). */
#define PROTO_DELIVERIES_UNLIMITED 0xffffu

enum proto_type {
    PROTO_HELLO = 0x01,        /* client -> server */
    PROTO_HELLO_OK = 0x02,     /* server -> client */
    PROTO_ERROR = 0x03,        /* server -> client */
    PROTO_PING = 0x04,         /* either way; empty body */
    PROTO_PONG = 0x05,         /* reply to PING; empty body */
    PROTO_PUBLISH = 0x10,      /* client -> server: 1..PROTO_MAX_BATCH messages, atomic */
    PROTO_PUBLISH_ACK = 0x11,  /* server -> client */
    PROTO_TOPICS = 0x30,       /* client -> server; empty body */
    PROTO_TOPICS_OK = 0x31,    /* server -> client */
    PROTO_GROUPS = 0x32,       /* client -> server */
    PROTO_GROUPS_OK = 0x33,    /* server -> client */
    PROTO_TOPIC_CONFIG = 0x34, /* client -> server; answered by ACK_OK (no entries) */
    PROTO_DELETE = 0x35,       /* client -> server; answered by DELETE_OK */
    PROTO_DELETE_OK = 0x36,    /* server -> client */
    PROTO_SUB_END = 0x37,      /* server -> client, request_id 0: a subscription ended */
    /* Consumer groups (see the layouts below). */
    PROTO_SUBSCRIBE = 0x20,
    PROTO_SUBSCRIBE_OK = 0x21,
    PROTO_DELIVER = 0x22,
    PROTO_ACK = 0x23,
    PROTO_NACK = 0x24,
    PROTO_TOUCH = 0x25,
    PROTO_CREDIT = 0x26,
    PROTO_UNSUBSCRIBE = 0x27,
    PROTO_SEEK = 0x28,
    PROTO_ACK_OK = 0x29,
    PROTO_REDRIVE = 0x2a, /* client -> server; answered by ACK_OK (one entry) */
    PROTO_FLOOR = 0x2b,   /* client -> server; answered by FLOOR_OK */
    PROTO_FLOOR_OK = 0x2c,
    PROTO_PEEK = 0x2d, /* client -> server; answered by PEEK_OK */
    PROTO_PEEK_OK = 0x2e,
};

/* ERROR flags: the sender closes the connection after this frame. */
#define PROTO_ERROR_FATAL 0x01
/* PUBLISH_ACK per-message flags: the message id was already stored. */
#define PROTO_ACK_DUPLICATE 0x01

struct proto_slice {
    const uint8_t *ptr;
    size_t len;
};

/*
 * HELLO body:
 *   u16   version        PROTO_VERSION
 *   str16 client_name    free text for logs, may be empty (<= 255)
 *   str16 token          empty when none (<= 1024)
 */
struct proto_hello {
    uint16_t version;
    struct proto_slice client_name;
    struct proto_slice token;
};

/*
 * HELLO_OK body:
 *   u16   version              the version the server will speak
 *   u32   max_frame_bytes      largest frame the server accepts from now on
 *   u32   max_message_bytes    largest key + headers + payload
 *   u32   max_batch            largest message count in one PUBLISH
 *   u64   dedupe_window_ms     how long message ids are remembered
 *   str16 server_name          e.g. "ferryd 0.1.0"
 *   ...   (later revisions may append fields; a v1 client ignores them)
 */
struct proto_hello_ok {
    uint16_t version;
    uint32_t max_frame_bytes;
    uint32_t max_message_bytes;
    uint32_t max_batch;
    uint64_t dedupe_window_ms;
    struct proto_slice server_name;
};

/*
 * ERROR body:
 *   u16   code      a wire code from ferry_codes.h (1..99; others are MALFORMED)
 *   str16 message   human-readable detail (<= 1024)
 * The request_id is that of the failed request, or 0 for the connection.
 */
struct proto_error {
    uint16_t code;
    struct proto_slice message;
};

/*
 * PUBLISH body:
 *   u16 count                       1..PROTO_MAX_BATCH
 *   count x message:
 *     str16   topic                 1..200 bytes, see proto_topic_valid()
 *     str16   id                    0..128 bytes; empty: the broker makes one
 *     str16   key                   0..1024 bytes; empty: no key
 *     u64     deliver_at_ms         0 = now; Unix ms not-before time (stored;
 *                                   honoured by consumer delivery)
 *     u16     header_count          0..64
 *     header_count x (str16 name (1..255), str16 value)
 *     bytes32 payload
 * The whole frame is one atomic unit: all messages are stored, or none.
 *
 * With the frame flag PROTO_PUBLISH_PRODUCER the body is instead:
 *   str16 producer_id               1..128 bytes, as a message id
 *   u16   count
 *   count x (u64 producer_seq, message as above)   producer_seq >= 1
 * The broker keeps each producer's high-water mark of producer_seq: a
 * message at or below it is a duplicate, however long after (see
 * docs/PROTOCOL.md §6.4).
 */
#define PROTO_PUBLISH_PRODUCER 0x01

struct proto_publish {
    uint16_t count;
    struct proto_slice msgs;     /* the encoded messages, already validated */
    struct proto_slice producer; /* empty unless PROTO_PUBLISH_PRODUCER */
    int has_producer;
};

struct proto_msg {
    struct proto_slice topic;
    struct proto_slice id;
    struct proto_slice key;
    uint64_t deliver_at_ms;
    uint16_t header_count;
    struct proto_slice headers; /* header_count encoded (name, value) pairs */
    struct proto_slice payload;
    uint64_t producer_seq; /* 0 unless the frame carries a producer */
};

struct proto_header {
    struct proto_slice name;
    struct proto_slice value;
};

/*
 * PUBLISH_ACK body:
 *   u16 count                       equals the PUBLISH's count
 *   count x (u64 seq, u8 flags, str16 id)   in the PUBLISH's order
 * flags bit PROTO_ACK_DUPLICATE: the id was seen before; seq is the original.
 */
struct proto_publish_ack {
    uint16_t count;
    struct proto_slice acks; /* validated */
};

struct proto_ack_entry {
    uint64_t seq;
    uint8_t flags;
    struct proto_slice id;
};

/*
 * TOPICS_OK body:
 *   u32 count
 *   count x (u16 entry_length, entry), entry:
 *     str16 name
 *     u64   head_seq        highest sequence assigned (0: none yet)
 *     u64   first_seq       lowest sequence still stored (0: none stored)
 *     u64   message_count   messages stored
 *     u64   bytes           stored key + header + payload bytes
 *     u64   created_ms      Unix ms
 *   then (absent from entries of brokers that predate them):
 *     u64   max_age_ms      the topic's effective retention; 0: no limit
 *     u64   max_count
 *     u64   max_bytes
 *     u8    delete_acked    1: messages go once every group acked them
 *     u64   publish_rate    messages stored per second, over the last 10 s
 *     ...   (later revisions may append fields inside the entry)
 *
 * TOPIC_CONFIG body (client -> server), answered by ACK_OK with no entry:
 *   str16 topic             the topic (created if missing)
 *   u64   max_age_ms        PROTO_RETENTION_DEFAULT: the broker's default;
 *   u64   max_count           0: no limit; else the limit
 *   u64   max_bytes
 *   u8    delete_acked      0 off, 1 on, PROTO_DELETE_ACKED_DEFAULT: default
 */
#define PROTO_RETENTION_DEFAULT UINT64_MAX
#define PROTO_DELETE_ACKED_DEFAULT 0xff

struct proto_topic_config {
    struct proto_slice topic;
    uint64_t max_age_ms;
    uint64_t max_count;
    uint64_t max_bytes;
    uint8_t delete_acked;
};

/*
 * DELETE body (client -> server), answered by DELETE_OK once durable:
 *   str16 topic             the topic (1..200 bytes, an existing one)
 *   str16 group             empty: delete the topic (and its dead-letter
 *                           topic _dead.<topic>); else delete this group
 * Frame flag PROTO_DELETE_FORCE (0x01): a topic with consumer groups is
 * deleted with them (without it, refused with INVALID).
 *
 * DELETE_OK body (server -> client):
 *   u64   messages          messages deleted (purged in the background)
 *   u32   groups            consumer groups deleted
 *
 * SUB_END body (server -> client, request_id 0, not a reply):
 *   u32   sub_id            the subscription the broker ended
 *   u16   code              why, a wire code (UNKNOWN_TOPIC, UNKNOWN_GROUP)
 *   str16 message           0..1024 bytes of detail
 */
#define PROTO_DELETE_FORCE 0x01

struct proto_delete {
    struct proto_slice topic;
    struct proto_slice group; /* len 0: the topic */
    uint8_t flags;            /* the frame's (PROTO_DELETE_FORCE) */
};

struct proto_delete_ok {
    uint64_t messages;
    uint32_t groups;
};

struct proto_sub_end {
    uint32_t sub_id;
    uint16_t code;
    struct proto_slice message;
};

struct proto_topics_ok {
    uint32_t count;
    struct proto_slice entries; /* validated */
};

struct proto_topic_info {
    struct proto_slice name;
    uint64_t head_seq;
    uint64_t first_seq;
    uint64_t message_count;
    uint64_t bytes;
    uint64_t created_ms;
    /* Appended fields; has_config is 0 when the entry lacks them. */
    int has_config;
    uint64_t max_age_ms;
    uint64_t max_count;
    uint64_t max_bytes;
    uint8_t delete_acked;
    uint64_t publish_rate;
};

/*
 * Consumer groups.
 *
 * SUBSCRIBE (client -> server), answered by SUBSCRIBE_OK or ERROR:
 *   u32   sub_id          chosen by the client; unique among the live
 *                         subscriptions of this connection; 0 is invalid
 *   str16 topic           1..200 bytes, see proto_sub_topic_valid()
 *   str16 group           1..200 bytes, see proto_group_valid()
 *   u8    start           PROTO_START_*: where a group that does not exist
 *                         yet begins; ignored for an existing group
 *   u64   start_value     the sequence (START_SEQ) or Unix ms (START_TIME)
 *   u32   max_in_flight   1..65535: most unacked deliveries to this
 *                         subscription at once (its credit window)
 *   u32   ack_wait_ms     lease of each delivery; 0: the group's setting
 *   u16   max_deliveries  attempts before dead-lettering; 0: the group's
 *   then, optionally (a SUBSCRIBE may end before it):
 *   u8    backoff_count   1..PROTO_MAX_BACKOFF (none: leave the field out)
 *   backoff_count x u32   the new group's redelivery backoff in ms: the k-th
 *                         before the k-th redelivery after an expired lease,
 *                         the last repeated (new group only, like
 *                         max_deliveries)
 *
 * Frame flag PROTO_SUBSCRIBE_TOPIC_MUST_EXIST (0x01): a topic that does not
 * exist is refused with UNKNOWN_TOPIC instead of created.
 *
 * SUBSCRIBE_OK (server -> client):
 *   u32   sub_id
 *   u64   cursor          the next sequence the group delivers first
 *   u64   head_seq        the topic's head when subscribing
 *   u32   ack_wait_ms     the lease this subscription gets
 *   u16   max_deliveries  the group's setting
 *   then, optionally: u64 redelivery_horizon_ms (see the struct)
 *
 * DELIVER (server -> client, request_id 0, flags PROTO_DELIVER_REDELIVERED
 * when attempt > 1):
 *   u32     sub_id
 *   u64     seq
 *   u32     attempt        1 for the first delivery (0 is MALFORMED)
 *   u64     ts_ms          when the message was stored
 *   str16   id
 *   str16   key
 *   u16     header_count, header_count x (str16 name, str16 value)
 *   bytes32 payload
 *
 * ACK (client -> server): u32 sub_id, u16 count (1..10000), count x u64 seq.
 * NACK: u32 sub_id, u64 seq, u32 delay_ms, str16 reason (<= 1024).
 * TOUCH: u32 sub_id, u64 seq.
 * CREDIT: u32 sub_id, u32 max_in_flight (1..65535): the new window.
 * UNSUBSCRIBE: u32 sub_id.
 * Each is answered by ACK_OK (or a per-request ERROR):
 *   u16 count, count x (u64 seq, u16 code)
 * with one entry per sequence of the request (ACK: count entries; NACK and
 * TOUCH: one; CREDIT and UNSUBSCRIBE: none). code is 0 for success
 * (including an ack of something already acked) or a wire error code such
 * as NOT_DELIVERED for that sequence alone.
 *
 * SEEK (client -> server): str16 topic, str16 group, u8 start, u64 value.
 * Moves the group's cursor; answered by ACK_OK with one entry whose seq is
 * the new cursor.
 *
 * GROUPS (client -> server): str16 topic (empty: every topic).
 * GROUPS_OK: u32 count, count x (u16 entry_length, entry):
 *   str16 topic, str16 group,
 *   u64 cursor, u64 ack_floor (every seq below is acked), u64 lag (messages
 *   not yet acked), u32 in_flight, u32 consumers, u64 redelivered,
 *   u64 dead_lettered, u64 oldest_unacked_ms (age; 0 when none),
 *   u32 ack_wait_ms, u16 max_deliveries
 *   ... (later revisions may append fields inside the entry)
 */
enum proto_start {
    PROTO_START_EARLIEST = 0,
    PROTO_START_LATEST = 1,
    PROTO_START_SEQ = 2,
    PROTO_START_TIME = 3,
};

#define PROTO_DELIVER_REDELIVERED 0x01

struct proto_subscribe {
    uint32_t sub_id;
    struct proto_slice topic;
    struct proto_slice group;
    uint8_t start;
    uint64_t start_value;
    uint32_t max_in_flight;
    uint32_t ack_wait_ms;
    uint16_t max_deliveries;
    uint8_t backoff_count; /* 0: none given */
    uint32_t backoff_ms[16];
    /* The frame's flags (PROTO_SUBSCRIBE_TOPIC_MUST_EXIST): written by the
     * encoder, copied from the frame by the decoder. */
    uint8_t flags;
};

struct proto_subscribe_ok {
    uint32_t sub_id;
    uint64_t cursor;
    uint64_t head_seq;
    uint32_t ack_wait_ms;
    uint16_t max_deliveries;
    /* Optional (absent from older brokers): the longest a message of this
     * group can take from a delivery to its last redelivery; UINT64_MAX: no
     * bound. An inbox keeps its records at least this long. */
    int has_horizon;
    uint64_t redelivery_horizon_ms;
};

struct proto_deliver {
    uint32_t sub_id;
    uint64_t seq;
    uint32_t attempt;
    uint64_t ts_ms;
    struct proto_slice id;
    struct proto_slice key;
    uint16_t header_count;
    struct proto_slice headers; /* as in struct proto_msg */
    struct proto_slice payload;
};

struct proto_ack {
    uint32_t sub_id;
    uint16_t count;
    struct proto_slice seqs; /* count x u64; read with proto_rd64 */
};

struct proto_nack {
    uint32_t sub_id;
    uint64_t seq;
    uint32_t delay_ms;
    struct proto_slice reason;
};

/* TOUCH, CREDIT (value = max_in_flight) and UNSUBSCRIBE (value unused). */
struct proto_sub_op {
    uint32_t sub_id;
    uint64_t value;
};

struct proto_ack_ok {
    uint16_t count;
    struct proto_slice entries; /* count x (u64 seq, u16 code), validated */
};

struct proto_seek {
    struct proto_slice topic;
    struct proto_slice group;
    uint8_t start;
    uint64_t value;
};

/* REDRIVE (client -> server): str16 topic, str16 group (empty: the group
 * that dead-lettered it), u64 dead_seq (a sequence of _dead.<topic>).
 * Answered by ACK_OK with one entry: the message's original sequence. */
struct proto_redrive {
    struct proto_slice topic;
    struct proto_slice group;
    uint64_t dead_seq;
};

/* FLOOR (client -> server): str16 topic, str16 group. */
struct proto_floor {
    struct proto_slice topic;
    struct proto_slice group;
};

/* FLOOR_OK (server -> client): u64 floor, u16 count (0..PROTO_MAX_FLOOR_KEEP),
 * count x u64 seq, strictly ascending and each below floor: every
 * sequence below floor is done for the group, durably, and comes back to
 * it only by a SEEK, or by a redrive of one of the count sequences. */
struct proto_floor_ok {
    uint64_t floor;
    uint16_t count;
    struct proto_slice seqs; /* count x u64, validated */
};

/* SUBSCRIBE frame flag: refuse (UNKNOWN_TOPIC) rather than create a topic
 * that does not exist yet. */
#define PROTO_SUBSCRIBE_TOPIC_MUST_EXIST 0x01

/*
 * PEEK (client -> server), answered by PEEK_OK or ERROR: reads a topic's
 * messages without a group, lease or attempt; nothing is written.
 *   str16 topic          0..200 bytes, as in SUBSCRIBE (`_dead.<topic>` too)
 *   u64   from_seq       the first sequence wanted; 0: the first kept
 *   u64   from_time_ms   0: unused; else start at the first message stored
 *                        at or after this Unix ms (and at or after from_seq)
 *   u32   max_messages   1..PROTO_MAX_PEEK (0 or more is MALFORMED)
 *   u32   max_bytes      bound of the PEEK_OK frame; 0: the broker's
 *                        max frame (which also caps it)
 *
 * PEEK_OK (server -> client):
 *   u64   next_seq       where a follow-up PEEK starts
 *   u64   head_seq       the topic's highest sequence (0: none yet)
 *   u32   count          0..PROTO_MAX_PEEK
 *   count x entry, ascending seq:
 *     u64 seq, u64 ts_ms, str16 id (0..128), str16 key (0..1024),
 *     u16 header_count (0..64), headers as in DELIVER, bytes32 payload
 */
struct proto_peek {
    struct proto_slice topic;
    uint64_t from_seq;
    uint64_t from_time_ms;
    uint32_t max_messages;
    uint32_t max_bytes;
};

struct proto_peek_ok {
    uint64_t next_seq;
    uint64_t head_seq;
    uint32_t count;
    struct proto_slice entries; /* validated */
};

struct proto_groups {
    struct proto_slice topic;
};

struct proto_groups_ok {
    uint32_t count;
    struct proto_slice entries; /* validated */
};

struct proto_group_info {
    struct proto_slice topic;
    struct proto_slice group;
    uint64_t cursor;
    uint64_t ack_floor;
    uint64_t lag;
    uint32_t in_flight;
    uint32_t consumers;
    uint64_t redelivered;
    uint64_t dead_lettered;
    uint64_t oldest_unacked_ms;
    uint32_t ack_wait_ms;
    uint16_t max_deliveries;
};

struct proto_frame {
    uint8_t type;
    uint8_t flags;
    uint32_t request_id;
    struct proto_slice body;
    union {
        struct proto_hello hello;
        struct proto_hello_ok hello_ok;
        struct proto_error error;
        struct proto_publish publish;
        struct proto_publish_ack publish_ack;
        struct proto_topics_ok topics_ok;
        struct proto_subscribe subscribe;
        struct proto_subscribe_ok subscribe_ok;
        struct proto_deliver deliver;
        struct proto_ack ack;
        struct proto_nack nack;
        struct proto_sub_op sub_op; /* TOUCH, CREDIT, UNSUBSCRIBE */
        struct proto_ack_ok ack_ok;
        struct proto_seek seek;
        struct proto_redrive redrive;
        struct proto_floor floor;
        struct proto_floor_ok floor_ok;
        struct proto_groups groups;
        struct proto_groups_ok groups_ok;
        struct proto_topic_config topic_config;
        struct proto_peek peek;
        struct proto_peek_ok peek_ok;
        struct proto_delete del;
        struct proto_delete_ok delete_ok;
        struct proto_sub_end sub_end;
    } u;
};

/*
 * Reads the 10-byte header at buf. Returns PROTO_HEADER_BYTES when a header
 * is there, 0 when fewer bytes are available, FERRY_EMALFORMED when length <
 * PROTO_MIN_LENGTH, FERRY_EFRAME_TOO_LARGE when length > max_frame (capped at
 * PROTO_ABSOLUTE_MAX_FRAME). The length is judged as soon as its 4 bytes are
 * there. Lets a reader reject an oversized frame before it buffers any of it.
 * Out-pointers may be NULL.
 */
int proto_peek_header(const uint8_t *buf, size_t len, uint32_t max_frame, uint32_t *length_out,
                      uint8_t *type_out, uint32_t *request_id_out);

/*
 * Decodes one complete frame from buf. Returns the bytes consumed (4 +
 * length) on success, 0 when buf holds less than one whole frame, or a
 * negative FERRY_E* code: FERRY_EMALFORMED (bad layout, bad count, trailing
 * bytes, a field over its maximum), FERRY_EFRAME_TOO_LARGE (length over
 * max_frame, reported as soon as the header is readable), FERRY_EUNKNOWN_TYPE
 * (a type this revision does not know). Every defined type is decoded in
 * full; a DELIVER whose request_id is not 0 is MALFORMED. Never reads outside
 * [buf, buf + len).
 */
ptrdiff_t proto_decode(const uint8_t *buf, size_t len, uint32_t max_frame, struct proto_frame *out);

/* Kept for source compatibility; always 0. It was true for 0x20..0x29 while
 * those types were reserved with unparsed bodies; they are now the
 * consumer-group frames and decode in full like every other type. */
int proto_type_reserved(uint8_t type);

/* Walks a PUBLISH's messages. Initialise with proto_msg_iter_init(); each
 * proto_msg_next() fills *out and returns 1, then 0 after the last one. */
struct proto_msg_iter {
    const uint8_t *p;
    const uint8_t *end;
    uint16_t left;
    int producer; /* each message is preceded by its u64 producer_seq */
};
void proto_msg_iter_init(struct proto_msg_iter *it, const struct proto_publish *pub);
int proto_msg_next(struct proto_msg_iter *it, struct proto_msg *out);

/* Walks one message's headers the same way. */
struct proto_header_iter {
    const uint8_t *p;
    const uint8_t *end;
    uint16_t left;
};
void proto_header_iter_init(struct proto_header_iter *it, const struct proto_msg *msg);
int proto_header_next(struct proto_header_iter *it, struct proto_header *out);

/* Walks PUBLISH_ACK entries. */
struct proto_ack_iter {
    const uint8_t *p;
    const uint8_t *end;
    uint16_t left;
};
void proto_ack_iter_init(struct proto_ack_iter *it, const struct proto_publish_ack *ack);
int proto_ack_next(struct proto_ack_iter *it, struct proto_ack_entry *out);

/* Walks TOPICS_OK entries. */
struct proto_topic_iter {
    const uint8_t *p;
    const uint8_t *end;
    uint32_t left;
};
void proto_topic_iter_init(struct proto_topic_iter *it, const struct proto_topics_ok *t);
int proto_topic_next(struct proto_topic_iter *it, struct proto_topic_info *out);

/*
 * Semantic rules shared by broker and client.
 * Topic name: 1..200 bytes of [A-Za-z0-9._-], first byte a letter or digit.
 * (Names starting with '_' are reserved for topics the broker derives, such
 * as dead letters, and cannot be published to directly.)
 * Message id: 1..128 bytes of printable ASCII (0x21..0x7e).
 * Returns 0 or FERRY_EINVALID_TOPIC / FERRY_EINVALID_ID.
 */
int proto_topic_valid(const uint8_t *name, size_t len);
int proto_id_valid(const uint8_t *id, size_t len);
/* The topic of SUBSCRIBE, SEEK and a non-empty GROUPS: a valid topic name,
 * or '_' followed by one (a broker-derived topic such as the dead letters
 * "_dead.<topic>"), 2..200 bytes in all. These may be consumed but not
 * published to. Returns 0 or FERRY_EINVALID_TOPIC. */
int proto_sub_topic_valid(const uint8_t *name, size_t len);

/* Bytes a message counts against max_message_bytes: key + each header's
 * name and value + payload. */
uint64_t proto_msg_size(const struct proto_msg *msg);

/* Full semantic check of one decoded message: topic, id (when not empty),
 * size. Returns 0, FERRY_EINVALID_TOPIC, FERRY_EINVALID_ID or
 * FERRY_EMESSAGE_TOO_LARGE. */
int proto_msg_check(const struct proto_msg *msg, uint32_t max_message_bytes);

/*
 * Encoding. A writer appends into a fixed buffer; once a write would pass
 * cap it sets overflow and writes nothing more, so a caller encodes a whole
 * frame and checks once. proto_frame_begin() reserves the header and
 * proto_frame_end() patches the length field.
 * The frame helpers below also set overflow (and return -1) when asked to
 * encode something the decoder would reject: a field over its PROTO_MAX_*, a
 * bad count, an ERROR code outside 1..99. So a failed frame is not always
 * cured by a larger buffer; size it with proto_publish_msg_bytes().
 */
struct proto_writer {
    uint8_t *buf;
    size_t cap;
    size_t len;
    int overflow;
};

void proto_writer_init(struct proto_writer *w, uint8_t *buf, size_t cap);
void proto_put_u8(struct proto_writer *w, uint8_t v);
void proto_put_u16(struct proto_writer *w, uint16_t v);
void proto_put_u32(struct proto_writer *w, uint32_t v);
void proto_put_u64(struct proto_writer *w, uint64_t v);
void proto_put_raw(struct proto_writer *w, const void *p, size_t n);
/* str16: n must be <= 65535, else the writer overflows. */
void proto_put_str16(struct proto_writer *w, const void *p, size_t n);
void proto_put_bytes32(struct proto_writer *w, const void *p, size_t n);

/* Starts a frame at the writer's current position; returns that offset. */
size_t proto_frame_begin(struct proto_writer *w, uint8_t type, uint8_t flags, uint32_t request_id);
/* Patches the length of the frame started at offset start. Returns 0, or
 * -1 when the writer overflowed. */
int proto_frame_end(struct proto_writer *w, size_t start);

/* Whole-frame encoders for the fixed-shape frames. Each returns 0, or -1 when
 * the writer overflowed (nothing about the buffer beyond cap is touched). */
int proto_encode_hello(struct proto_writer *w, uint32_t request_id, const struct proto_hello *h);
int proto_encode_hello_ok(struct proto_writer *w, uint32_t request_id,
                          const struct proto_hello_ok *h);
/* code is the positive wire code (-FERRY_E*); a message over
 * PROTO_MAX_ERROR_TEXT is cut at a UTF-8 boundary rather than failing. */
int proto_encode_error(struct proto_writer *w, uint32_t request_id, uint8_t flags, uint16_t code,
                       const char *message, size_t message_len);
/* PING, PONG or TOPICS; any other type fails (every other type has a
 * body). */
int proto_encode_empty(struct proto_writer *w, uint8_t type, uint32_t request_id);

/* A PUBLISH with a producer (PROTO_PUBLISH_PRODUCER): begin with this, add
 * each message with proto_publish_add_seq(), end with proto_publish_end(). */
size_t proto_publish_begin_producer(struct proto_writer *w, uint32_t request_id,
                                    const void *producer, size_t producer_len);
void proto_publish_add_seq(struct proto_writer *w, uint64_t producer_seq, const struct proto_msg *m,
                           const struct proto_header *headers);

/* PUBLISH is built incrementally: begin, add each message, end. headers
 * holds m->header_count entries (NULL only when that is 0); m->headers is
 * not used when encoding. */
size_t proto_publish_begin(struct proto_writer *w, uint32_t request_id);
void proto_publish_add(struct proto_writer *w, const struct proto_msg *m,
                       const struct proto_header *headers);
/* Patches count and length. Returns 0 or -1 on overflow or count 0. */
int proto_publish_end(struct proto_writer *w, size_t start, uint16_t count);

/* The encoded size of one message inside PUBLISH, for sizing buffers. */
size_t proto_publish_msg_bytes(const struct proto_msg *m, const struct proto_header *headers);

/* PUBLISH_ACK likewise. */
size_t proto_publish_ack_begin(struct proto_writer *w, uint32_t request_id);
void proto_publish_ack_add(struct proto_writer *w, uint64_t seq, uint8_t flags, const void *id,
                           size_t id_len);
int proto_publish_ack_end(struct proto_writer *w, size_t start, uint16_t count);

/* TOPICS_OK likewise. */
size_t proto_topics_ok_begin(struct proto_writer *w, uint32_t request_id);
void proto_topics_ok_add(struct proto_writer *w, const struct proto_topic_info *t);
int proto_topics_ok_end(struct proto_writer *w, size_t start, uint32_t count);

/* Consumer frames. Group names follow the topic name rules of
 * proto_topic_valid() (so no group name starts with '_') and are checked by
 * proto_group_valid(): 0 or FERRY_EINVALID_GROUP.
 * Each encoder below fails (-1, overflow set) on what the decoder would
 * reject: sub_id 0, a name over 200 bytes, start > PROTO_START_TIME,
 * max_in_flight outside 1..PROTO_MAX_WINDOW, DELIVER attempt 0, a NACK
 * reason over PROTO_MAX_REASON, ACK count outside 1..PROTO_MAX_ACKS, an
 * ACK_OK code over FERRY_WIRE_CODE_MAX, bad counts. */
int proto_group_valid(const uint8_t *name, size_t len);

int proto_encode_subscribe(struct proto_writer *w, uint32_t request_id,
                           const struct proto_subscribe *s);
int proto_encode_subscribe_ok(struct proto_writer *w, uint32_t request_id,
                              const struct proto_subscribe_ok *s);
/* d->headers holds the encoded header pairs (as stored, without the u16
 * count, which is d->header_count); they are checked to be exactly
 * header_count well-formed pairs. The frame's request_id is 0 and flags is
 * written as given (PROTO_DELIVER_REDELIVERED when d->attempt > 1). */
int proto_encode_deliver(struct proto_writer *w, uint8_t flags, const struct proto_deliver *d);
/* The encoded size of a DELIVER frame, header included: exactly what
 * proto_encode_deliver() writes for d. */
size_t proto_deliver_bytes(const struct proto_deliver *d);
int proto_encode_ack(struct proto_writer *w, uint32_t request_id, uint32_t sub_id,
                     const uint64_t *seqs, uint16_t count);
int proto_encode_nack(struct proto_writer *w, uint32_t request_id, const struct proto_nack *n);
/* type is PROTO_TOUCH (value = seq), PROTO_CREDIT (value = max_in_flight)
 * or PROTO_UNSUBSCRIBE (value ignored). */
int proto_encode_sub_op(struct proto_writer *w, uint8_t type, uint32_t request_id, uint32_t sub_id,
                        uint64_t value);
int proto_encode_seek(struct proto_writer *w, uint32_t request_id, const struct proto_seek *s);
int proto_encode_redrive(struct proto_writer *w, uint32_t request_id,
                         const struct proto_redrive *r);
int proto_encode_floor(struct proto_writer *w, uint32_t request_id, const struct proto_floor *f);
/* FLOOR_OK with count sequences from seqs (ascending, below floor). */
int proto_encode_floor_ok(struct proto_writer *w, uint32_t request_id, uint64_t floor,
                          const uint64_t *seqs, uint16_t count);
int proto_encode_groups(struct proto_writer *w, uint32_t request_id, const void *topic,
                        size_t topic_len);

/* ACK_OK is built incrementally, like PUBLISH_ACK. */
size_t proto_ack_ok_begin(struct proto_writer *w, uint32_t request_id);
void proto_ack_ok_add(struct proto_writer *w, uint64_t seq, uint16_t code);
int proto_ack_ok_end(struct proto_writer *w, size_t start, uint16_t count);

struct proto_ack_ok_iter {
    const uint8_t *p;
    const uint8_t *end;
    uint16_t left;
};
void proto_ack_ok_iter_init(struct proto_ack_ok_iter *it, const struct proto_ack_ok *a);
int proto_ack_ok_next(struct proto_ack_ok_iter *it, uint64_t *seq, uint16_t *code);

/* GROUPS_OK likewise. */
size_t proto_groups_ok_begin(struct proto_writer *w, uint32_t request_id);
void proto_groups_ok_add(struct proto_writer *w, const struct proto_group_info *g);
int proto_groups_ok_end(struct proto_writer *w, size_t start, uint32_t count);

struct proto_group_iter {
    const uint8_t *p;
    const uint8_t *end;
    uint32_t left;
};
void proto_group_iter_init(struct proto_group_iter *it, const struct proto_groups_ok *g);
int proto_group_next(struct proto_group_iter *it, struct proto_group_info *out);

int proto_encode_topic_config(struct proto_writer *w, uint32_t request_id,
                              const struct proto_topic_config *t);

int proto_encode_peek(struct proto_writer *w, uint32_t request_id, const struct proto_peek *p);
int proto_encode_delete(struct proto_writer *w, uint32_t request_id, const struct proto_delete *d);
int proto_encode_delete_ok(struct proto_writer *w, uint32_t request_id,
                           const struct proto_delete_ok *d);
/* request_id 0; the message is cut to 1024 bytes. */
int proto_encode_sub_end(struct proto_writer *w, const struct proto_sub_end *e);

/* PEEK_OK is built incrementally: begin, add each message (a DELIVER's
 * fields; sub_id and attempt are not used), end. proto_peek_ok_add fails
 * like proto_encode_deliver on what the decoder would reject. */
size_t proto_peek_ok_begin(struct proto_writer *w, uint32_t request_id, uint64_t next_seq,
                           uint64_t head_seq);
void proto_peek_ok_add(struct proto_writer *w, const struct proto_deliver *d);
/* Patches count (<= PROTO_MAX_PEEK), next_seq and the length. */
int proto_peek_ok_end(struct proto_writer *w, size_t start, uint32_t count, uint64_t next_seq);
/* The encoded size of one PEEK_OK entry. */
size_t proto_peek_entry_bytes(const struct proto_deliver *d);

/* Walks PEEK_OK entries; each is filled into a proto_deliver (sub_id 0,
 * attempt 0), whose headers proto_deliver_header_iter_init() walks. */
struct proto_peek_iter {
    const uint8_t *p;
    const uint8_t *end;
    uint32_t left;
};
void proto_peek_iter_init(struct proto_peek_iter *it, const struct proto_peek_ok *p);
int proto_peek_next(struct proto_peek_iter *it, struct proto_deliver *out);

/* Headers of a DELIVER, walked like a message's. */
void proto_deliver_header_iter_init(struct proto_header_iter *it, const struct proto_deliver *d);

/* Big-endian helpers, also used by the store for its own formats. */
static inline uint16_t proto_rd16(const uint8_t *p)
{
    return (uint16_t)((uint16_t)p[0] << 8 | p[1]);
}
static inline uint32_t proto_rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t proto_rd64(const uint8_t *p)
{
    return (uint64_t)proto_rd32(p) << 32 | proto_rd32(p + 4);
}
static inline void proto_wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void proto_wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline void proto_wr64(uint8_t *p, uint64_t v)
{
    proto_wr32(p, (uint32_t)(v >> 32));
    proto_wr32(p + 4, (uint32_t)v);
}

/* The static description of a FERRY_E* code (negative) or wire code
 * (positive); "success" for 0, "unknown error" for numbers outside the table. */
const char *proto_strerror(int code);

#endif /* FERRY_PROTO_H */
