/*
 * op.h - the records the loop hands the group-commit worker, and the
 * results the worker hands back.
 *
 * One struct op per request (or piece of group work) in a batch (batch.h).
 * Its kind says which member of its union u holds the work; every field is
 * typed, and the bytes of variable length that the work needs (topic and
 * group names, the messages of a PUBLISH, lists of sequences) are copied
 * by the loop into the batch's `in` buffer and named by offset (struct
 * op_bytes, struct op_array), because that buffer moves while it grows.
 * No record has a byte layout of its own: nothing outside proto/ reads a
 * field at an offset.
 *
 * Results come back the same way: the store fills the result fields of
 * the op (status, and for a PUBLISH and a FETCH an index into the batch's
 * typed result arrays) and never encodes a reply that the loop would
 * decode again. The replies the store does encode (an ERROR in place of a
 * reply when the transaction fails, a TOPICS_OK) go to the client as they
 * are.
 *
 * Threads: the loop fills an op while its batch is pending; the worker
 * reads it and writes its results while the batch commits; the loop reads
 * the results after the commit. The pointers to loop objects (struct
 * group, struct conn) are never followed by the worker.
 */
#ifndef FERRY_BROKER_OP_H
#define FERRY_BROKER_OP_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"

struct conn;
struct group;

enum op_kind {
    OP_PUBLISH, /* u.publish; result: a publish_result per message, or an ERROR */
    OP_TOPICS,  /* the store encodes the TOPICS_OK */
    OP_REPLY,   /* out was encoded by the loop (an ERROR or a PONG) */
    /* Consumer groups (group.c and consumer.c build them, store_groups.c runs them). The reply
     * in out is encoded by the loop and replaced by an ERROR if the
     * transaction fails. */
    OP_GROUP_SAVE,   /* u.save: creates or rewrites a group's row */
    OP_GROUP_ACK,    /* u.ack: a group's new ack floor and acks above it */
    OP_FETCH,        /* u.fetch; result: a fetched_msg per message still stored */
    OP_DEAD_LETTER,  /* u.dead: a message to move to its dead-letter topic */
    OP_TOPIC_CONFIG, /* u.config: a topic's retention; its ACK_OK in out */
    OP_ATTEMPT,      /* u.attempt: the attempts a message used up; no reply */
    OP_DELETE,       /* u.del: a topic (with its groups) or one group; the store
                        encodes the DELETE_OK */
};

/* Bytes in the batch's in buffer (batch_put). */
struct op_bytes {
    size_t off;
    size_t len;
};

/* n values in the batch's in buffer, aligned for their type
 * (batch_put_u64s, batch_put_u32s). */
struct op_array {
    size_t off;
    uint32_t n;
};

struct op_publish {
    uint16_t count;
    int has_producer;
    struct op_bytes producer;
    /* The PUBLISH body's messages as sent (each with its u64 producer_seq
     * when has_producer), walked with proto_msg_iter (batch_publish_of). */
    struct op_bytes msgs;
    /* Result: count publish_results from this index of batch->results. */
    size_t results;
};

/* A message's outcome: its sequence (for a duplicate, the original one, 0
 * when no longer known) and, for a message sent without an id, the id the
 * broker gave it. */
#define OP_GEN_ID_BYTES 36
struct publish_result {
    uint64_t seq;
    uint8_t duplicate;
    uint8_t generated; /* id holds the assigned id */
    char id[OP_GEN_ID_BYTES];
};

struct op_group_save {
    int64_t group_id;
    uint64_t floor;
    uint64_t origin;
    uint32_t ack_wait_ms;
    uint16_t max_deliveries;
    struct op_bytes topic, name;
    struct op_array backoff_ms; /* uint32_t; none: the broker's default */
    uint32_t sub_id;            /* the SUBSCRIBE it answers (0: a seek) */
};

struct op_group_ack {
    struct group *group; /* the loop's, for a failed commit */
    int64_t group_id;
    uint64_t floor;
    struct op_array acked; /* uint64_t: sequences acked above the floor */
};

struct op_attempt {
    int64_t group_id;
    uint64_t seq;
    uint32_t attempts;
    uint64_t dead_seq; /* a redrive: the dead letter it is read from */
    int keep;          /* 0: the message is done, its row goes */
};

struct op_fetch {
    struct group *group; /* who asked, and for which subscription */
    uint32_t sub_id;
    int first;        /* first deliveries (group.c) */
    int64_t topic_id; /* the topic read (a redrive: the dead-letter topic) */
    struct op_array seqs;
    /* A redrive (REDRIVE): the dead letters to read, one per seq; n 0
     * otherwise. */
    struct op_array dead_seqs;
    /* Result: nresults fetched_msgs from this index of batch->fetched, in
     * request order, without the messages no longer stored. */
    size_t results, nresults;
};

/* A message read for delivery; the bytes are in the batch's out buffer. */
struct fetched_msg {
    uint64_t seq;
    uint64_t ts_ms;
    uint64_t deliver_at_ms;
    uint16_t header_count;
    struct op_bytes id, key, headers, payload;
};

struct op_dead_letter {
    struct group *group; /* the loop's, for a failed commit */
    int64_t group_id;
    uint64_t floor; /* the group's floor after the message left it */
    int64_t topic_id;
    uint64_t seq;
    uint32_t attempts;
    struct op_bytes topic, group_name, reason;
};

struct op_topic_config {
    struct op_bytes topic;
    uint64_t max_age_ms, max_count, max_bytes; /* UINT64_MAX: the broker's */
    uint8_t delete_acked;                      /* or PROTO_DELETE_ACKED_DEFAULT */
};

struct op_delete {
    struct op_bytes topic;
    struct op_bytes group; /* len 0: the topic, its dead-letter topic and their groups */
    struct op_bytes dead;  /* the dead-letter topic's name (len 0: none) */
    int64_t group_id;      /* a group's: the loop's id */
};

/* The largest ERROR the store puts in place of an op's reply when the
 * transaction fails (store_txn.c cuts its detail to fit). */
#define OP_ERROR_TEXT_MAX 200
#define OP_ERROR_REPLY_MAX (PROTO_HEADER_BYTES + 4 + OP_ERROR_TEXT_MAX)

struct op {
    enum op_kind kind;
    struct conn *conn;
    uint32_t request_id;
    int status;     /* 0, or the FERRY_E* the op failed with */
    size_t out_off; /* the reply frame in batch->out (out_len 0: none) */
    size_t out_len;
    /* What the op costs its connection until it is answered, for the
     * connection's bounds (conn.c): the request bytes and the op itself,
     * and the most reply bytes it can produce (reply_bytes, at least
     * OP_ERROR_REPLY_MAX for an op the store answers). */
    size_t wire_bytes;
    size_t reply_bytes;
    union {
        struct op_publish publish;
        struct op_group_save save;
        struct op_group_ack ack;
        struct op_attempt attempt;
        struct op_fetch fetch;
        struct op_dead_letter dead;
        struct op_topic_config config;
        struct op_delete del;
    } u;
};

/* A topic the transaction created, appended to or trimmed: what the loop
 * learns of it after the commit. The name is in batch->topic_names. */
struct topic_view {
    uint64_t head;
    uint64_t first; /* as the store keeps it: meaningful when count > 0 */
    uint64_t count, bytes;
    int64_t created_ms;
    /* Retention in effect (the topic's own, else the broker's); 0: none. */
    uint64_t max_age_ms, max_count, max_bytes;
    int delete_acked;
};

struct topic_update {
    int64_t id;
    struct topic_view v;
    uint64_t stored;   /* messages this transaction appended */
    uint64_t bytes_in; /* and their bytes */
    struct op_bytes name;
};

#endif
