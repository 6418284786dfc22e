/*
 * test_proto.c - unit tests for the protocol v1 codec (proto/proto.c).
 *
 * The frames below are written out byte by byte, one field per line, so a
 * test failure points at a field and a reader can check the layout against
 * docs/PROTOCOL.md without running anything. The nine vectors marked "spec"
 * are also printed in the "Test vectors" section of docs/PROTOCOL.md; when
 * the test is given that file's path as argv[1] (meson does this), it checks
 * that the document still shows exactly these bytes.
 *
 * Decoding of truncated and hostile input always happens on an exactly-sized
 * heap copy, so a sanitizer build reports any read past the end.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto.h"

/* A proto_slice initialiser for a string literal. */
/* clang-format off */
#define SL(s) {(const uint8_t *)(s), sizeof(s) - 1}
/* clang-format on */

/* Set from argv[1]: docs/PROTOCOL.md, whose test vectors must match ours. */
static const char *spec_path;

/* clang-format off */

/* --- Spec vectors (also in docs/PROTOCOL.md) --------------------------- */

static const uint8_t v_hello[] = {
    0x00, 0x00, 0x00, 0x12, /* length 18 */
    0x01, /* type HELLO */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x01, /* request_id 1 */
    0x00, 0x01, /* version 1 */
    0x00, 0x03, 'a', 'p', 'p', /* client_name "app" */
    0x00, 0x03, 't', 'o', 'k', /* token "tok" */
};

static const uint8_t v_hello_ok[] = {
    0x00, 0x00, 0x00, 0x2a, /* length 42 */
    0x02, /* type HELLO_OK */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x01, /* request_id 1 */
    0x00, 0x01, /* version 1 */
    0x00, 0x40, 0x00, 0x00, /* max_frame_bytes 4 MiB */
    0x00, 0x10, 0x00, 0x00, /* max_message_bytes 1 MiB */
    0x00, 0x00, 0x27, 0x10, /* max_batch 10000 */
    0x00, 0x00, 0x00, 0x00, 0x05, 0x26, 0x5c, 0x00, /* dedupe_window_ms 24 h */
    0x00, 0x0c, 'f', 'e', 'r', 'r', 'y', 'd', ' ', '0', '.', '1', '.', '0', /* server_name "ferryd 0.1.0" */
};

static const uint8_t v_publish[] = {
    0x00, 0x00, 0x00, 0x36, /* length 54 */
    0x10, /* type PUBLISH */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x02, /* request_id 2 */
    0x00, 0x01, /* count 1 */
    0x00, 0x06, 'o', 'r', 'd', 'e', 'r', 's', /* topic "orders" */
    0x00, 0x02, 'o', '1', /* id "o1" */
    0x00, 0x00, /* key (empty) */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* deliver_at_ms 0 */
    0x00, 0x01, /* header_count 1 */
    0x00, 0x02, 'c', 't', /* header name "ct" */
    0x00, 0x04, 'j', 's', 'o', 'n', /* header value "json" */
    0x00, 0x00, 0x00, 0x08, '{', '"', 'i', 'd', '"', ':', '1', '}', /* payload "{"id":1}" */
};

static const uint8_t v_publish_ack[] = {
    0x00, 0x00, 0x00, 0x15, /* length 21 */
    0x11, /* type PUBLISH_ACK */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x02, /* request_id 2 */
    0x00, 0x01, /* count 1 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, /* seq 1 */
    0x00, /* flags */
    0x00, 0x02, 'o', '1', /* id "o1" */
};

static const uint8_t v_error[] = {
    0x00, 0x00, 0x00, 0x13, /* length 19 */
    0x03, /* type ERROR */
    0x01, /* flags */
    0x00, 0x00, 0x00, 0x00, /* request_id 0 */
    0x00, 0x01, /* code 1 MALFORMED */
    0x00, 0x09, 'b', 'a', 'd', ' ', 'f', 'r', 'a', 'm', 'e', /* message "bad frame" */
};

/* --- Further frames -------------------------------------------------- */

static const uint8_t v_ping[] = {
    0x00, 0x00, 0x00, 0x06, /* length 6 */
    0x04, /* type PING */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x07, /* request_id 7 */
};

static const uint8_t v_pong[] = {
    0x00, 0x00, 0x00, 0x06, /* length 6 */
    0x05, /* type PONG */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x07, /* request_id 7 */
};

static const uint8_t v_topics[] = {
    0x00, 0x00, 0x00, 0x06, /* length 6 */
    0x30, /* type TOPICS */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x03, /* request_id 3 */
};

static const uint8_t v_topics_ok[] = {
    0x00, 0x00, 0x00, 0x6f, /* length 111 */
    0x31, /* type TOPICS_OK */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x03, /* request_id 3 */
    0x00, 0x00, 0x00, 0x02, /* count 2 */
    0x00, 0x30, /* entry_length 48 */
    0x00, 0x06, 'o', 'r', 'd', 'e', 'r', 's', /* name "orders" */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, /* head_seq 42 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, /* first_seq 1 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, /* message_count 42 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0xd2, /* bytes 1234 */
    0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, /* created_ms */
    0x00, 0x31, /* entry_length 49 (2 appended bytes) */
    0x00, 0x05, 'a', 'u', 'd', 'i', 't', /* name "audit" */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* head_seq 0 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* first_seq 0 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* message_count 0 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* bytes 0 */
    0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x01, /* created_ms */
    0xbe, 0xef, /* appended by a later revision */
};

static const uint8_t v_publish_batch[] = {
    0x00, 0x00, 0x00, 0x7f, /* length 127 */
    0x10, /* type PUBLISH */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x09, /* request_id 9 */
    0x00, 0x03, /* count 3 */
    0x00, 0x06, 'o', 'r', 'd', 'e', 'r', 's', /* [0] topic "orders" */
    0x00, 0x02, 'o', '1', /* id "o1" */
    0x00, 0x03, 'c', '4', '2', /* key "c42" */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* deliver_at_ms */
    0x00, 0x02, /* header_count 2 */
    0x00, 0x02, 'c', 't', /* name "ct" */
    0x00, 0x04, 'j', 's', 'o', 'n', /* value "json" */
    0x00, 0x05, 't', 'r', 'a', 'c', 'e', /* name "trace" */
    0x00, 0x03, 'a', 'b', 'c', /* value "abc" */
    0x00, 0x00, 0x00, 0x02, '{', '}', /* payload "{}" */
    0x00, 0x06, 'o', 'r', 'd', 'e', 'r', 's', /* [1] topic "orders" */
    0x00, 0x00, /* id (empty) */
    0x00, 0x00, /* key (empty) */
    0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, /* deliver_at_ms */
    0x00, 0x00, /* header_count 0 */
    0x00, 0x00, 0x00, 0x00, /* payload (empty) */
    0x00, 0x09, 'a', 'u', 'd', 'i', 't', '.', 'l', 'o', 'g', /* [2] topic "audit.log" */
    0x00, 0x03, 'a', '-', '9', /* id "a-9" */
    0x00, 0x00, /* key (empty) */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* deliver_at_ms */
    0x00, 0x01, /* header_count 1 */
    0x00, 0x01, 'x', /* name "x" */
    0x00, 0x00, /* value (empty) */
    0x00, 0x00, 0x00, 0x01, 'z', /* payload "z" */
};

static const uint8_t v_publish_ack_batch[] = {
    0x00, 0x00, 0x00, 0x30, /* length 48 */
    0x11, /* type PUBLISH_ACK */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x09, /* request_id 9 */
    0x00, 0x03, /* count 3 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, /* seq 1 */
    0x00, /* flags */
    0x00, 0x02, 'o', '1', /* id "o1" */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, /* seq 2 */
    0x00, /* flags */
    0x00, 0x02, 'm', '2', /* id "m2" */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, /* seq 7 */
    0x01, /* flags DUPLICATE */
    0x00, 0x03, 'a', '-', '9', /* id "a-9" */
};

static const uint8_t v_topics_ok_one[] = {
    0x00, 0x00, 0x00, 0x3c, /* length 60 */
    0x31, /* type TOPICS_OK */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x03, /* request_id 3 */
    0x00, 0x00, 0x00, 0x01, /* count 1 */
    0x00, 0x30, /* entry_length 48 */
    0x00, 0x06, 'o', 'r', 'd', 'e', 'r', 's', /* name "orders" */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, /* head_seq 42 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, /* first_seq 1 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, /* message_count 42 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0xd2, /* bytes 1234 */
    0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, /* created_ms */
};

/* --- Consumer-group frames (the four marked "spec" are in PROTOCOL.md) -- */

/* spec */
static const uint8_t v_subscribe[] = {
    0x00, 0x00, 0x00, 0x30, /* length 48 */
    0x20, /* type SUBSCRIBE */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x03, /* request_id 3 */
    0x00, 0x00, 0x00, 0x01, /* sub_id 1 */
    0x00, 0x06, 'o', 'r', 'd', 'e', 'r', 's', /* topic "orders" */
    0x00, 0x09, 'i', 'n', 'v', 'e', 'n', 't', 'o', 'r', 'y', /* group "inventory" */
    0x00, /* start EARLIEST */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* start_value 0 */
    0x00, 0x00, 0x00, 0x64, /* max_in_flight 100 */
    0x00, 0x00, 0x75, 0x30, /* ack_wait_ms 30000 */
    0x00, 0x05, /* max_deliveries 5 */
};

static const uint8_t v_subscribe_ok[] = {
    0x00, 0x00, 0x00, 0x20, /* length 32 */
    0x21, /* type SUBSCRIBE_OK */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x03, /* request_id 3 */
    0x00, 0x00, 0x00, 0x01, /* sub_id 1 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, /* cursor 1 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, /* head_seq 42 */
    0x00, 0x00, 0x75, 0x30, /* ack_wait_ms 30000 */
    0x00, 0x05, /* max_deliveries 5 */
};

/* spec: the message of v_publish, delivered for the first time. */
static const uint8_t v_deliver[] = {
    0x00, 0x00, 0x00, 0x3c, /* length 60 */
    0x22, /* type DELIVER */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x00, /* request_id 0 */
    0x00, 0x00, 0x00, 0x01, /* sub_id 1 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, /* seq 1 */
    0x00, 0x00, 0x00, 0x01, /* attempt 1 */
    0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, /* ts_ms 1700000000000 */
    0x00, 0x02, 'o', '1', /* id "o1" */
    0x00, 0x00, /* key (empty) */
    0x00, 0x01, /* header_count 1 */
    0x00, 0x02, 'c', 't', /* header name "ct" */
    0x00, 0x04, 'j', 's', 'o', 'n', /* header value "json" */
    0x00, 0x00, 0x00, 0x08, '{', '"', 'i', 'd', '"', ':', '1', '}', /* payload "{"id":1}" */
};

static const uint8_t v_deliver_redelivered[] = {
    0x00, 0x00, 0x00, 0x39, /* length 57 */
    0x22, /* type DELIVER */
    0x01, /* flags REDELIVERED */
    0x00, 0x00, 0x00, 0x00, /* request_id 0 */
    0xff, 0xff, 0xff, 0xff, /* sub_id 4294967295 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, /* seq 7 */
    0x00, 0x00, 0x00, 0x03, /* attempt 3 */
    0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x01, /* ts_ms */
    0x00, 0x03, 'a', '-', '9', /* id "a-9" */
    0x00, 0x03, 'c', '4', '2', /* key "c42" */
    0x00, 0x02, /* header_count 2 */
    0x00, 0x01, 'x', /* name "x" */
    0x00, 0x00, /* value (empty) */
    0x00, 0x01, 'y', /* name "y" */
    0x00, 0x01, 'z', /* value "z" */
    0x00, 0x00, 0x00, 0x00, /* payload (empty) */
};

/* spec */
static const uint8_t v_ack[] = {
    0x00, 0x00, 0x00, 0x1c, /* length 28 */
    0x23, /* type ACK */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x04, /* request_id 4 */
    0x00, 0x00, 0x00, 0x01, /* sub_id 1 */
    0x00, 0x02, /* count 2 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, /* seq 1 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, /* seq 7 */
};

/* spec: seq 1 acked, seq 7 never delivered to the group. */
static const uint8_t v_ack_ok[] = {
    0x00, 0x00, 0x00, 0x1c, /* length 28 */
    0x29, /* type ACK_OK */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x04, /* request_id 4 */
    0x00, 0x02, /* count 2 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, /* seq 1 */
    0x00, 0x00, /* code 0 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, /* seq 7 */
    0x00, 0x13, /* code 19 NOT_DELIVERED */
};

static const uint8_t v_ack_ok_empty[] = {
    0x00, 0x00, 0x00, 0x08, /* length 8 */
    0x29, /* type ACK_OK */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x08, /* request_id 8 */
    0x00, 0x00, /* count 0 */
};

static const uint8_t v_nack[] = {
    0x00, 0x00, 0x00, 0x1f, /* length 31 */
    0x24, /* type NACK */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x05, /* request_id 5 */
    0x00, 0x00, 0x00, 0x01, /* sub_id 1 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, /* seq 3 */
    0x00, 0x00, 0x13, 0x88, /* delay_ms 5000 */
    0x00, 0x07, 't', 'i', 'm', 'e', 'o', 'u', 't', /* reason "timeout" */
};

static const uint8_t v_touch[] = {
    0x00, 0x00, 0x00, 0x12, /* length 18 */
    0x25, /* type TOUCH */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x06, /* request_id 6 */
    0x00, 0x00, 0x00, 0x01, /* sub_id 1 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, /* seq 3 */
};

static const uint8_t v_credit[] = {
    0x00, 0x00, 0x00, 0x0e, /* length 14 */
    0x26, /* type CREDIT */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x07, /* request_id 7 */
    0x00, 0x00, 0x00, 0x01, /* sub_id 1 */
    0x00, 0x00, 0x00, 0xc8, /* max_in_flight 200 */
};

static const uint8_t v_unsubscribe[] = {
    0x00, 0x00, 0x00, 0x0a, /* length 10 */
    0x27, /* type UNSUBSCRIBE */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x08, /* request_id 8 */
    0x00, 0x00, 0x00, 0x01, /* sub_id 1 */
};

static const uint8_t v_seek[] = {
    0x00, 0x00, 0x00, 0x22, /* length 34 */
    0x28, /* type SEEK */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x09, /* request_id 9 */
    0x00, 0x06, 'o', 'r', 'd', 'e', 'r', 's', /* topic "orders" */
    0x00, 0x09, 'i', 'n', 'v', 'e', 'n', 't', 'o', 'r', 'y', /* group "inventory" */
    0x02, /* start SEQ */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x64, /* value 100 */
};

static const uint8_t v_groups[] = {
    0x00, 0x00, 0x00, 0x0e, /* length 14 */
    0x32, /* type GROUPS */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x0a, /* request_id 10 */
    0x00, 0x06, 'o', 'r', 'd', 'e', 'r', 's', /* topic "orders" */
};

static const uint8_t v_groups_all[] = {
    0x00, 0x00, 0x00, 0x08, /* length 8 */
    0x32, /* type GROUPS */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x0a, /* request_id 10 */
    0x00, 0x00, /* topic (empty: every topic) */
};

static const uint8_t v_groups_ok[] = {
    0x00, 0x00, 0x00, 0xae, /* length 174 */
    0x33, /* type GROUPS_OK */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x0a, /* request_id 10 */
    0x00, 0x00, 0x00, 0x02, /* count 2 */
    0x00, 0x51, /* entry_length 81 */
    0x00, 0x06, 'o', 'r', 'd', 'e', 'r', 's', /* topic "orders" */
    0x00, 0x09, 'i', 'n', 'v', 'e', 'n', 't', 'o', 'r', 'y', /* group "inventory" */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x28, /* cursor 40 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x25, /* ack_floor 37 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x06, /* lag 6 */
    0x00, 0x00, 0x00, 0x03, /* in_flight 3 */
    0x00, 0x00, 0x00, 0x02, /* consumers 2 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, /* redelivered 4 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, /* dead_lettered 1 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0xdc, /* oldest_unacked_ms 1500 */
    0x00, 0x00, 0x75, 0x30, /* ack_wait_ms 30000 */
    0x00, 0x05, /* max_deliveries 5 */
    0x00, 0x4f, /* entry_length 79 (2 appended bytes) */
    0x00, 0x06, 'o', 'r', 'd', 'e', 'r', 's', /* topic "orders" */
    0x00, 0x05, 'e', 'm', 'a', 'i', 'l', /* group "email" */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2b, /* cursor 43 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2b, /* ack_floor 43 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* lag 0 */
    0x00, 0x00, 0x00, 0x00, /* in_flight 0 */
    0x00, 0x00, 0x00, 0x00, /* consumers 0 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* redelivered 0 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* dead_lettered 0 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* oldest_unacked_ms 0 */
    0x00, 0x00, 0xea, 0x60, /* ack_wait_ms 60000 */
    0x00, 0x00, /* max_deliveries 0 */
    0xbe, 0xef, /* appended by a later revision */
};

/* v_groups_ok's first entry alone: what proto_groups_ok_add() writes. */
static const uint8_t v_groups_ok_one[] = {
    0x00, 0x00, 0x00, 0x5d, /* length 93 */
    0x33, /* type GROUPS_OK */
    0x00, /* flags */
    0x00, 0x00, 0x00, 0x0a, /* request_id 10 */
    0x00, 0x00, 0x00, 0x01, /* count 1 */
    0x00, 0x51, /* entry_length 81 */
    0x00, 0x06, 'o', 'r', 'd', 'e', 'r', 's', /* topic "orders" */
    0x00, 0x09, 'i', 'n', 'v', 'e', 'n', 't', 'o', 'r', 'y', /* group "inventory" */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x28, /* cursor 40 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x25, /* ack_floor 37 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x06, /* lag 6 */
    0x00, 0x00, 0x00, 0x03, /* in_flight 3 */
    0x00, 0x00, 0x00, 0x02, /* consumers 2 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, /* redelivered 4 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, /* dead_lettered 1 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0xdc, /* oldest_unacked_ms 1500 */
    0x00, 0x00, 0x75, 0x30, /* ack_wait_ms 30000 */
    0x00, 0x05, /* max_deliveries 5 */
};

/* clang-format on */

struct vector {
    const char *name;
    const uint8_t *bytes;
    size_t len;
};

/* clang-format off */
#define VEC(v) {#v, (v), sizeof(v)}
/* clang-format on */

/* Every valid frame above. */
static const struct vector valid_vectors[] = {
    VEC(v_hello),     VEC(v_hello_ok),      VEC(v_publish),       VEC(v_publish_ack),
    VEC(v_error),     VEC(v_ping),          VEC(v_pong),          VEC(v_topics),
    VEC(v_topics_ok), VEC(v_topics_ok_one), VEC(v_publish_batch), VEC(v_publish_ack_batch),
    VEC(v_subscribe), VEC(v_subscribe_ok),  VEC(v_deliver),       VEC(v_deliver_redelivered),
    VEC(v_ack),       VEC(v_ack_ok),        VEC(v_ack_ok_empty),  VEC(v_nack),
    VEC(v_touch),     VEC(v_credit),        VEC(v_unsubscribe),   VEC(v_seek),
    VEC(v_groups),    VEC(v_groups_all),    VEC(v_groups_ok),     VEC(v_groups_ok_one),
};

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* --- Helpers ----------------------------------------------------------- */

static void assert_bytes(const uint8_t *got, size_t got_len, const void *want, size_t want_len)
{
    assert_int_equal(got_len, want_len);
    if (want_len > 0)
        assert_memory_equal(got, want, want_len);
}

#define assert_slice(s, str) assert_bytes((s).ptr, (s).len, (str), strlen(str))

/* A heap copy of exactly n bytes (NULL for 0), so that ASan sees over-reads. */
static uint8_t *heap_copy(const uint8_t *bytes, size_t n)
{
    uint8_t *buf;

    if (n == 0)
        return NULL;
    buf = malloc(n);
    assert_non_null(buf);
    memcpy(buf, bytes, n);
    return buf;
}

/* proto_decode on an exact heap copy; only the return value survives. */
static ptrdiff_t decode_copy(const uint8_t *bytes, size_t n, uint32_t max_frame)
{
    uint8_t *buf = heap_copy(bytes, n);
    struct proto_frame f;
    ptrdiff_t rc = proto_decode(buf, n, max_frame, &f);

    free(buf);
    return rc;
}

static void decode_ok(const uint8_t *bytes, size_t n, struct proto_frame *f)
{
    assert_int_equal(proto_decode(bytes, n, PROTO_DEFAULT_MAX_FRAME, f), (ptrdiff_t)n);
}

/* A scratch area for frames built field by field; big enough for a PUBLISH
 * of PROTO_MAX_BATCH + 1 minimal messages. */
static uint8_t scratch[512 * 1024];

/* n bytes of ch, for filling fields. Valid until the next call. */
static const uint8_t *filled(uint8_t ch, size_t n)
{
    static uint8_t fill[70000];

    assert_true(n <= sizeof fill);
    memset(fill, ch, n);
    return fill;
}

static void put_filled_str16(struct proto_writer *w, uint8_t ch, size_t n)
{
    proto_put_u16(w, (uint16_t)n);
    proto_put_raw(w, filled(ch, n), n);
}

/* Ends a frame built in scratch and returns its size. */
static size_t end_scratch(struct proto_writer *w, size_t start)
{
    assert_int_equal(proto_frame_end(w, start), 0);
    return w->len;
}

static size_t build_hello(size_t name_len, size_t token_len)
{
    struct proto_writer w;
    size_t start;

    proto_writer_init(&w, scratch, sizeof scratch);
    start = proto_frame_begin(&w, PROTO_HELLO, 0, 1);
    proto_put_u16(&w, 1);
    put_filled_str16(&w, 'n', name_len);
    put_filled_str16(&w, 't', token_len);
    return end_scratch(&w, start);
}

static size_t build_error(uint16_t code, size_t message_len)
{
    struct proto_writer w;
    size_t start;

    proto_writer_init(&w, scratch, sizeof scratch);
    start = proto_frame_begin(&w, PROTO_ERROR, 0, 1);
    proto_put_u16(&w, code);
    put_filled_str16(&w, 'm', message_len);
    return end_scratch(&w, start);
}

/* The shape of the messages build_publish() writes, field by field, with no
 * regard for the protocol's maxima. */
struct msg_shape {
    size_t topic_len;
    size_t id_len;
    size_t key_len;
    uint16_t header_count;
    size_t header_name_len;
    size_t payload_len;
};

static const struct msg_shape small_msg = {1, 0, 0, 0, 1, 0};

static size_t build_publish(uint16_t count_field, unsigned nmsgs, const struct msg_shape *s)
{
    struct proto_writer w;
    size_t start;
    unsigned i, j;

    proto_writer_init(&w, scratch, sizeof scratch);
    start = proto_frame_begin(&w, PROTO_PUBLISH, 0, 1);
    proto_put_u16(&w, count_field);
    for (i = 0; i < nmsgs; i++) {
        put_filled_str16(&w, 't', s->topic_len);
        put_filled_str16(&w, 'i', s->id_len);
        put_filled_str16(&w, 'k', s->key_len);
        proto_put_u64(&w, 0);
        proto_put_u16(&w, s->header_count);
        for (j = 0; j < s->header_count; j++) {
            put_filled_str16(&w, 'h', s->header_name_len);
            put_filled_str16(&w, 'v', 1);
        }
        proto_put_u32(&w, (uint32_t)s->payload_len);
        proto_put_raw(&w, filled('p', s->payload_len), s->payload_len);
    }
    assert_false(w.overflow);
    return end_scratch(&w, start);
}

static size_t build_publish_ack(uint16_t count_field, unsigned n, size_t id_len)
{
    struct proto_writer w;
    size_t start;
    unsigned i;

    proto_writer_init(&w, scratch, sizeof scratch);
    start = proto_frame_begin(&w, PROTO_PUBLISH_ACK, 0, 1);
    proto_put_u16(&w, count_field);
    for (i = 0; i < n; i++) {
        proto_put_u64(&w, i + 1);
        proto_put_u8(&w, 0);
        put_filled_str16(&w, 'i', id_len);
    }
    return end_scratch(&w, start);
}

/* TOPICS_OK with n entries whose entry_length is name + 42 + extra. */
static size_t build_topics_ok(uint32_t count_field, unsigned n, size_t name_len, size_t extra)
{
    struct proto_writer w;
    size_t start;
    unsigned i;

    proto_writer_init(&w, scratch, sizeof scratch);
    start = proto_frame_begin(&w, PROTO_TOPICS_OK, 0, 1);
    proto_put_u32(&w, count_field);
    for (i = 0; i < n; i++) {
        proto_put_u16(&w, (uint16_t)(2 + name_len + 40 + extra));
        put_filled_str16(&w, 'n', name_len);
        proto_put_raw(&w, filled(0, 40 + extra), 40 + extra);
    }
    return end_scratch(&w, start);
}

/* A frame of type with body bytes, length field patched. */
static size_t build_raw(uint8_t type, const void *body, size_t body_len)
{
    struct proto_writer w;
    size_t start;

    proto_writer_init(&w, scratch, sizeof scratch);
    start = proto_frame_begin(&w, type, 0, 1);
    proto_put_raw(&w, body, body_len);
    return end_scratch(&w, start);
}

/* --- Decoding valid frames --------------------------------------------- */

static void test_proto_hello_decodes(void **state)
{
    struct proto_frame f;

    (void)state;
    assert_int_equal(proto_decode(v_hello, sizeof v_hello, PROTO_HANDSHAKE_MAX_FRAME, &f), 22);
    assert_int_equal(f.type, PROTO_HELLO);
    assert_int_equal(f.flags, 0);
    assert_int_equal(f.request_id, 1);
    assert_ptr_equal(f.body.ptr, v_hello + PROTO_HEADER_BYTES);
    assert_int_equal(f.body.len, 12);
    assert_int_equal(f.u.hello.version, 1);
    assert_slice(f.u.hello.client_name, "app");
    assert_slice(f.u.hello.token, "tok");
}

static void test_proto_hello_ok_decodes(void **state)
{
    struct proto_frame f;

    (void)state;
    decode_ok(v_hello_ok, sizeof v_hello_ok, &f);
    assert_int_equal(f.type, PROTO_HELLO_OK);
    assert_int_equal(f.request_id, 1);
    assert_int_equal(f.u.hello_ok.version, 1);
    assert_int_equal(f.u.hello_ok.max_frame_bytes, 4194304);
    assert_int_equal(f.u.hello_ok.max_message_bytes, 1048576);
    assert_int_equal(f.u.hello_ok.max_batch, 10000);
    assert_int_equal(f.u.hello_ok.dedupe_window_ms, 86400000);
    assert_slice(f.u.hello_ok.server_name, "ferryd 0.1.0");
}

static void test_proto_error_decodes(void **state)
{
    struct proto_frame f;

    (void)state;
    decode_ok(v_error, sizeof v_error, &f);
    assert_int_equal(f.type, PROTO_ERROR);
    assert_int_equal(f.flags, PROTO_ERROR_FATAL);
    assert_int_equal(f.request_id, 0);
    assert_int_equal(f.u.error.code, -FERRY_EMALFORMED);
    assert_slice(f.u.error.message, "bad frame");
}

static void test_proto_empty_body_frames_decode(void **state)
{
    struct proto_frame f;

    (void)state;
    decode_ok(v_ping, sizeof v_ping, &f);
    assert_int_equal(f.type, PROTO_PING);
    assert_int_equal(f.request_id, 7);
    assert_int_equal(f.body.len, 0);
    decode_ok(v_pong, sizeof v_pong, &f);
    assert_int_equal(f.type, PROTO_PONG);
    assert_int_equal(f.request_id, 7);
    assert_int_equal(f.body.len, 0);
    decode_ok(v_topics, sizeof v_topics, &f);
    assert_int_equal(f.type, PROTO_TOPICS);
    assert_int_equal(f.request_id, 3);
    assert_int_equal(f.body.len, 0);
}

static void test_proto_publish_decodes(void **state)
{
    struct proto_frame f;
    struct proto_msg_iter it;
    struct proto_header_iter hit;
    struct proto_msg m;
    struct proto_header h;

    (void)state;
    decode_ok(v_publish, sizeof v_publish, &f);
    assert_int_equal(f.type, PROTO_PUBLISH);
    assert_int_equal(f.request_id, 2);
    assert_int_equal(f.u.publish.count, 1);
    assert_ptr_equal(f.u.publish.msgs.ptr, v_publish + 12);
    assert_int_equal(f.u.publish.msgs.len, sizeof v_publish - 12);

    proto_msg_iter_init(&it, &f.u.publish);
    assert_int_equal(proto_msg_next(&it, &m), 1);
    assert_slice(m.topic, "orders");
    assert_slice(m.id, "o1");
    assert_int_equal(m.key.len, 0);
    assert_int_equal(m.deliver_at_ms, 0);
    assert_int_equal(m.header_count, 1);
    assert_slice(m.payload, "{\"id\":1}");
    proto_header_iter_init(&hit, &m);
    assert_int_equal(proto_header_next(&hit, &h), 1);
    assert_slice(h.name, "ct");
    assert_slice(h.value, "json");
    assert_int_equal(proto_header_next(&hit, &h), 0);
    assert_int_equal(proto_msg_next(&it, &m), 0);
    assert_int_equal(proto_msg_next(&it, &m), 0);
}

static void test_proto_publish_ack_decodes(void **state)
{
    struct proto_frame f;
    struct proto_ack_iter it;
    struct proto_ack_entry a;

    (void)state;
    decode_ok(v_publish_ack, sizeof v_publish_ack, &f);
    assert_int_equal(f.type, PROTO_PUBLISH_ACK);
    assert_int_equal(f.request_id, 2);
    assert_int_equal(f.u.publish_ack.count, 1);
    proto_ack_iter_init(&it, &f.u.publish_ack);
    assert_int_equal(proto_ack_next(&it, &a), 1);
    assert_int_equal(a.seq, 1);
    assert_int_equal(a.flags, 0);
    assert_slice(a.id, "o1");
    assert_int_equal(proto_ack_next(&it, &a), 0);
}

static void test_proto_publish_batch_iterates_messages_and_headers(void **state)
{
    struct proto_frame f;
    struct proto_msg_iter it;
    struct proto_header_iter hit;
    struct proto_msg m;
    struct proto_header h;

    (void)state;
    decode_ok(v_publish_batch, sizeof v_publish_batch, &f);
    assert_int_equal(f.request_id, 9);
    assert_int_equal(f.u.publish.count, 3);
    proto_msg_iter_init(&it, &f.u.publish);

    assert_int_equal(proto_msg_next(&it, &m), 1);
    assert_slice(m.topic, "orders");
    assert_slice(m.id, "o1");
    assert_slice(m.key, "c42");
    assert_int_equal(m.deliver_at_ms, 0);
    assert_int_equal(m.header_count, 2);
    assert_slice(m.payload, "{}");
    proto_header_iter_init(&hit, &m);
    assert_int_equal(proto_header_next(&hit, &h), 1);
    assert_slice(h.name, "ct");
    assert_slice(h.value, "json");
    assert_int_equal(proto_header_next(&hit, &h), 1);
    assert_slice(h.name, "trace");
    assert_slice(h.value, "abc");
    assert_int_equal(proto_header_next(&hit, &h), 0);
    assert_int_equal(proto_msg_check(&m, PROTO_DEFAULT_MAX_MESSAGE), 0);

    assert_int_equal(proto_msg_next(&it, &m), 1);
    assert_slice(m.topic, "orders");
    assert_int_equal(m.id.len, 0);
    assert_int_equal(m.key.len, 0);
    assert_int_equal(m.deliver_at_ms, 1700000000000ull);
    assert_int_equal(m.header_count, 0);
    assert_int_equal(m.headers.len, 0);
    assert_int_equal(m.payload.len, 0);
    proto_header_iter_init(&hit, &m);
    assert_int_equal(proto_header_next(&hit, &h), 0);
    assert_int_equal(proto_msg_check(&m, PROTO_DEFAULT_MAX_MESSAGE), 0);

    assert_int_equal(proto_msg_next(&it, &m), 1);
    assert_slice(m.topic, "audit.log");
    assert_slice(m.id, "a-9");
    assert_int_equal(m.header_count, 1);
    assert_slice(m.payload, "z");
    proto_header_iter_init(&hit, &m);
    assert_int_equal(proto_header_next(&hit, &h), 1);
    assert_slice(h.name, "x");
    assert_int_equal(h.value.len, 0);
    assert_int_equal(proto_header_next(&hit, &h), 0);

    assert_int_equal(proto_msg_next(&it, &m), 0);
}

static void test_proto_publish_ack_batch_iterates(void **state)
{
    static const struct {
        uint64_t seq;
        uint8_t flags;
        const char *id;
    } want[] = {{1, 0, "o1"}, {2, 0, "m2"}, {7, PROTO_ACK_DUPLICATE, "a-9"}};
    struct proto_frame f;
    struct proto_ack_iter it;
    struct proto_ack_entry a;
    size_t i;

    (void)state;
    decode_ok(v_publish_ack_batch, sizeof v_publish_ack_batch, &f);
    assert_int_equal(f.u.publish_ack.count, 3);
    proto_ack_iter_init(&it, &f.u.publish_ack);
    for (i = 0; i < ARRAY_LEN(want); i++) {
        assert_int_equal(proto_ack_next(&it, &a), 1);
        assert_int_equal(a.seq, want[i].seq);
        assert_int_equal(a.flags, want[i].flags);
        assert_slice(a.id, want[i].id);
    }
    assert_int_equal(proto_ack_next(&it, &a), 0);
}

static void test_proto_topics_ok_iterates_and_skips_appended_fields(void **state)
{
    struct proto_frame f;
    struct proto_topic_iter it;
    struct proto_topic_info t;

    (void)state;
    decode_ok(v_topics_ok, sizeof v_topics_ok, &f);
    assert_int_equal(f.type, PROTO_TOPICS_OK);
    assert_int_equal(f.request_id, 3);
    assert_int_equal(f.u.topics_ok.count, 2);
    proto_topic_iter_init(&it, &f.u.topics_ok);
    assert_int_equal(proto_topic_next(&it, &t), 1);
    assert_slice(t.name, "orders");
    assert_int_equal(t.head_seq, 42);
    assert_int_equal(t.first_seq, 1);
    assert_int_equal(t.message_count, 42);
    assert_int_equal(t.bytes, 1234);
    assert_int_equal(t.created_ms, 1700000000000ull);
    assert_int_equal(proto_topic_next(&it, &t), 1);
    assert_slice(t.name, "audit");
    assert_int_equal(t.head_seq, 0);
    assert_int_equal(t.first_seq, 0);
    assert_int_equal(t.message_count, 0);
    assert_int_equal(t.bytes, 0);
    assert_int_equal(t.created_ms, 1700000000001ull);
    assert_int_equal(proto_topic_next(&it, &t), 0);

    /* An empty list is legal. */
    decode_ok(scratch, build_topics_ok(0, 0, 0, 0), &f);
    assert_int_equal(f.u.topics_ok.count, 0);
    proto_topic_iter_init(&it, &f.u.topics_ok);
    assert_int_equal(proto_topic_next(&it, &t), 0);
}

/* The consumer-group types were once reserved, with bodies left unparsed;
 * now no type is reserved and their bodies are held to their layouts. */
static void test_proto_no_type_is_reserved_any_more(void **state)
{
    unsigned type;

    (void)state;
    for (type = 0; type <= UINT8_MAX; type++)
        assert_false(proto_type_reserved((uint8_t)type));
    for (type = PROTO_SUBSCRIBE; type <= PROTO_ACK_OK; type++) {
        assert_int_equal(
            decode_copy(scratch, build_raw((uint8_t)type, NULL, 0), PROTO_DEFAULT_MAX_FRAME),
            FERRY_EMALFORMED);
        assert_int_equal(
            decode_copy(scratch, build_raw((uint8_t)type, "anything", 8), PROTO_DEFAULT_MAX_FRAME),
            FERRY_EMALFORMED);
    }
}

static void test_proto_consecutive_frames_decode_in_order(void **state)
{
    uint8_t buf[sizeof v_hello + sizeof v_publish + sizeof v_ping];
    static const uint8_t types[] = {PROTO_HELLO, PROTO_PUBLISH, PROTO_PING};
    struct proto_frame f;
    size_t off = 0, i;
    ptrdiff_t n;

    (void)state;
    memcpy(buf, v_hello, sizeof v_hello);
    memcpy(buf + sizeof v_hello, v_publish, sizeof v_publish);
    memcpy(buf + sizeof v_hello + sizeof v_publish, v_ping, sizeof v_ping);
    for (i = 0; i < ARRAY_LEN(types); i++) {
        n = proto_decode(buf + off, sizeof buf - off, PROTO_DEFAULT_MAX_FRAME, &f);
        assert_true(n > 0);
        assert_int_equal(f.type, types[i]);
        off += (size_t)n;
    }
    assert_int_equal(off, sizeof buf);
    assert_int_equal(proto_decode(buf + off, 0, PROTO_DEFAULT_MAX_FRAME, &f), 0);
}

static void test_proto_peek_header_reports_fields(void **state)
{
    uint32_t length = 0, request_id = 0;
    uint8_t type = 0;

    (void)state;
    assert_int_equal(proto_peek_header(v_publish, sizeof v_publish, PROTO_DEFAULT_MAX_FRAME,
                                       &length, &type, &request_id),
                     PROTO_HEADER_BYTES);
    assert_int_equal(length, 54);
    assert_int_equal(type, PROTO_PUBLISH);
    assert_int_equal(request_id, 2);
    /* The header alone is enough; out-pointers may be NULL. */
    assert_int_equal(
        proto_peek_header(v_publish, PROTO_HEADER_BYTES, PROTO_DEFAULT_MAX_FRAME, NULL, NULL, NULL),
        PROTO_HEADER_BYTES);
    assert_int_equal(proto_peek_header(v_publish, 9, PROTO_DEFAULT_MAX_FRAME, NULL, NULL, NULL), 0);
    assert_int_equal(proto_peek_header(NULL, 0, PROTO_DEFAULT_MAX_FRAME, NULL, NULL, NULL), 0);
}

/* --- Truncation -------------------------------------------------------- */

static void test_proto_truncated_frames_need_more_at_every_offset(void **state)
{
    size_t i, cut;

    (void)state;
    for (i = 0; i < ARRAY_LEN(valid_vectors); i++) {
        const struct vector *v = &valid_vectors[i];

        for (cut = 0; cut < v->len; cut++) {
            uint8_t *buf = heap_copy(v->bytes, cut);
            struct proto_frame f;
            int peek;

            if (proto_decode(buf, cut, PROTO_DEFAULT_MAX_FRAME, &f) != 0)
                fail_msg("%s cut at %zu did not ask for more", v->name, cut);
            peek = proto_peek_header(buf, cut, PROTO_DEFAULT_MAX_FRAME, NULL, NULL, NULL);
            assert_int_equal(peek, cut < PROTO_HEADER_BYTES ? 0 : PROTO_HEADER_BYTES);
            free(buf);
        }
        if (decode_copy(v->bytes, v->len, PROTO_DEFAULT_MAX_FRAME) != (ptrdiff_t)v->len)
            fail_msg("%s does not decode whole", v->name);
    }
}

/* --- Header errors ----------------------------------------------------- */

static void test_proto_oversized_length_is_rejected_from_header(void **state)
{
    /* length 65537: one over the handshake limit; no body follows. */
    static const uint8_t big[] = {0x00, 0x01, 0x00, 0x01, 0x10, 0x00, 0x00, 0x00, 0x00, 0x01};
    static const uint8_t at_max[] = {0x00, 0x01, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x01};
    static const uint8_t huge[] = {0xff, 0xff, 0xff, 0xff};
    static const uint8_t abs_plus1[] = {0x04, 0x00, 0x00, 0x01};
    static const uint8_t abs_max[] = {0x04, 0x00, 0x00, 0x00};
    uint32_t length = 0;
    size_t n;

    (void)state;
    for (n = 4; n <= sizeof big; n++) {
        assert_int_equal(decode_copy(big, n, PROTO_HANDSHAKE_MAX_FRAME), FERRY_EFRAME_TOO_LARGE);
        assert_int_equal(proto_peek_header(big, n, PROTO_HANDSHAKE_MAX_FRAME, &length, NULL, NULL),
                         FERRY_EFRAME_TOO_LARGE);
        assert_int_equal(length, 65537);
    }
    /* Fewer than 4 bytes say nothing yet. */
    assert_int_equal(decode_copy(big, 3, PROTO_HANDSHAKE_MAX_FRAME), 0);
    /* Exactly at the limit is fine: the body has not arrived. */
    assert_int_equal(decode_copy(at_max, sizeof at_max, PROTO_HANDSHAKE_MAX_FRAME), 0);
    assert_int_equal(decode_copy(big, sizeof big, PROTO_DEFAULT_MAX_FRAME), 0);
    /* max_frame is capped at PROTO_ABSOLUTE_MAX_FRAME. */
    assert_int_equal(decode_copy(huge, sizeof huge, UINT32_MAX), FERRY_EFRAME_TOO_LARGE);
    assert_int_equal(decode_copy(abs_plus1, sizeof abs_plus1, UINT32_MAX), FERRY_EFRAME_TOO_LARGE);
    assert_int_equal(decode_copy(abs_max, sizeof abs_max, UINT32_MAX), 0);
    assert_int_equal(proto_peek_header(abs_plus1, 4, UINT32_MAX, NULL, NULL, NULL),
                     FERRY_EFRAME_TOO_LARGE);
}

static void test_proto_length_under_six_is_malformed(void **state)
{
    uint8_t buf[10] = {0, 0, 0, 0, PROTO_PING, 0, 0, 0, 0, 1};
    uint8_t length;

    (void)state;
    for (length = 0; length < PROTO_MIN_LENGTH; length++) {
        buf[3] = length;
        assert_int_equal(decode_copy(buf, 4, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
        assert_int_equal(decode_copy(buf, sizeof buf, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
        assert_int_equal(
            proto_peek_header(buf, sizeof buf, PROTO_DEFAULT_MAX_FRAME, NULL, NULL, NULL),
            FERRY_EMALFORMED);
    }
    buf[3] = PROTO_MIN_LENGTH;
    assert_int_equal(decode_copy(buf, sizeof buf, PROTO_DEFAULT_MAX_FRAME), sizeof buf);
}

/* TOPIC_CONFIG from literal bytes, truncation, a bad delete_acked; a
 * TOPICS_OK entry with the appended retention fields round-trips, and one
 * without them still decodes (has_config 0). */
static void test_proto_topic_config_and_extended_topic_entry(void **state)
{
    (void)state;
    static const uint8_t frame[] = {
        0x00, 0x00, 0x00, 0x23, 0x34, 0x00, 0x00, 0x00, 0x00, 0x09, /* header */
        0x00, 0x02, 't',  'x',                                      /* topic */
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xe8,             /* max_age_ms 1000 */
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,             /* max_count default */
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,             /* max_bytes none */
        0x01,                                                       /* delete_acked */
    };
    struct proto_frame f;
    assert_int_equal(proto_decode(frame, sizeof(frame), PROTO_DEFAULT_MAX_FRAME, &f),
                     (ptrdiff_t)sizeof(frame));
    assert_int_equal(f.type, PROTO_TOPIC_CONFIG);
    assert_int_equal(f.request_id, 9);
    assert_int_equal(f.u.topic_config.topic.len, 2);
    assert_int_equal(f.u.topic_config.max_age_ms, 1000);
    assert_true(f.u.topic_config.max_count == PROTO_RETENTION_DEFAULT);
    assert_int_equal(f.u.topic_config.max_bytes, 0);
    assert_int_equal(f.u.topic_config.delete_acked, 1);
    for (size_t n = 0; n < sizeof(frame); n++)
        assert_int_equal(proto_decode(frame, n, PROTO_DEFAULT_MAX_FRAME, &f), 0);
    uint8_t buf[512];
    struct proto_writer w;
    proto_writer_init(&w, buf, sizeof(buf));
    struct proto_topic_config tc = {
        {(const uint8_t *)"tx", 2}, 1000, PROTO_RETENTION_DEFAULT, 0, 1};
    assert_int_equal(proto_encode_topic_config(&w, 9, &tc), 0);
    assert_int_equal(w.len, sizeof(frame));
    assert_memory_equal(buf, frame, sizeof(frame));
    uint8_t bad[sizeof(frame)];
    memcpy(bad, frame, sizeof(frame));
    bad[sizeof(frame) - 1] = 2;
    assert_int_equal(proto_decode(bad, sizeof(bad), PROTO_DEFAULT_MAX_FRAME, &f), FERRY_EMALFORMED);
    tc.delete_acked = 2;
    proto_writer_init(&w, buf, sizeof(buf));
    assert_int_equal(proto_encode_topic_config(&w, 9, &tc), -1);

    struct proto_topic_info in[2] = {
        {.name = {(const uint8_t *)"a", 1},
         .head_seq = 5,
         .first_seq = 2,
         .message_count = 4,
         .bytes = 40,
         .created_ms = 7,
         .has_config = 1,
         .max_age_ms = 60000,
         .max_count = 10,
         .max_bytes = 0,
         .delete_acked = 1,
         .publish_rate = 123},
        {.name = {(const uint8_t *)"b", 1},
         .head_seq = 1,
         .first_seq = 1,
         .message_count = 1,
         .bytes = 1,
         .created_ms = 8},
    };
    proto_writer_init(&w, buf, sizeof(buf));
    size_t start = proto_topics_ok_begin(&w, 3);
    proto_topics_ok_add(&w, &in[0]);
    proto_topics_ok_add(&w, &in[1]);
    assert_int_equal(proto_topics_ok_end(&w, start, 2), 0);
    assert_true(proto_decode(buf, w.len, PROTO_DEFAULT_MAX_FRAME, &f) > 0);
    struct proto_topic_iter it;
    struct proto_topic_info out;
    proto_topic_iter_init(&it, &f.u.topics_ok);
    assert_true(proto_topic_next(&it, &out));
    assert_int_equal(out.has_config, 1);
    assert_int_equal(out.max_age_ms, 60000);
    assert_int_equal(out.max_count, 10);
    assert_int_equal(out.delete_acked, 1);
    assert_int_equal(out.publish_rate, 123);
    assert_true(proto_topic_next(&it, &out));
    assert_int_equal(out.has_config, 0);
    assert_int_equal(out.head_seq, 1);
    assert_false(proto_topic_next(&it, &out));
}

/* A producer PUBLISH: literal bytes, the iterator's producer_seq, every
 * truncation, producer_seq 0 and an empty producer id rejected. */
static void test_proto_publish_with_producer(void **state)
{
    (void)state;
    static const uint8_t frame[] = {
        0x00, 0x00, 0x00, 0x2d, 0x10, 0x01, 0x00, 0x00, 0x00, 0x05, /* header, flag PRODUCER */
        0x00, 0x02, 'p',  '1',                                      /* producer_id */
        0x00, 0x01,                                                 /* count */
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07,             /* producer_seq 7 */
        0x00, 0x01, 't',                                            /* topic */
        0x00, 0x02, 'i',  'd',                                      /* id */
        0x00, 0x00,                                                 /* key */
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,             /* deliver_at_ms */
        0x00, 0x00,                                                 /* header_count */
        0x00, 0x00, 0x00, 0x02, 'h',  'i',                          /* payload */
    };
    struct proto_frame f;
    assert_int_equal(proto_decode(frame, sizeof(frame), PROTO_DEFAULT_MAX_FRAME, &f),
                     (ptrdiff_t)sizeof(frame));
    assert_int_equal(f.type, PROTO_PUBLISH);
    assert_int_equal(f.u.publish.has_producer, 1);
    assert_int_equal(f.u.publish.producer.len, 2);
    assert_memory_equal(f.u.publish.producer.ptr, "p1", 2);
    struct proto_msg_iter it;
    struct proto_msg m;
    proto_msg_iter_init(&it, &f.u.publish);
    assert_true(proto_msg_next(&it, &m));
    assert_int_equal(m.producer_seq, 7);
    assert_int_equal(m.id.len, 2);
    assert_int_equal(m.payload.len, 2);
    assert_false(proto_msg_next(&it, &m));
    for (size_t n = 0; n < sizeof(frame); n++)
        assert_int_equal(proto_decode(frame, n, PROTO_DEFAULT_MAX_FRAME, &f), 0);

    uint8_t buf[128];
    struct proto_writer w;
    proto_writer_init(&w, buf, sizeof(buf));
    size_t start = proto_publish_begin_producer(&w, 5, "p1", 2);
    struct proto_msg pm = {.topic = {(const uint8_t *)"t", 1},
                           .id = {(const uint8_t *)"id", 2},
                           .payload = {(const uint8_t *)"hi", 2}};
    proto_publish_add_seq(&w, 7, &pm, NULL);
    assert_int_equal(proto_publish_end(&w, start, 1), 0);
    assert_int_equal(w.len, sizeof(frame));
    assert_memory_equal(buf, frame, sizeof(frame));

    uint8_t bad[sizeof(frame)];
    memcpy(bad, frame, sizeof(frame));
    bad[23] = 0; /* producer_seq 0 */
    assert_int_equal(proto_decode(bad, sizeof(bad), PROTO_DEFAULT_MAX_FRAME, &f), FERRY_EMALFORMED);
    proto_writer_init(&w, buf, sizeof(buf));
    start = proto_publish_begin_producer(&w, 5, "", 0);
    assert_true(w.overflow);
    proto_writer_init(&w, buf, sizeof(buf));
    start = proto_publish_begin_producer(&w, 5, "p1", 2);
    proto_publish_add_seq(&w, 0, &pm, NULL);
    assert_true(w.overflow);
}

/* SUBSCRIBE's optional backoff schedule round-trips; over the maximum, or
 * cut inside the list, is MALFORMED; without it the frame is as before. */
static void test_proto_subscribe_backoff_schedule(void **state)
{
    (void)state;
    struct proto_subscribe sub = {.sub_id = 3,
                                  .topic = {(const uint8_t *)"t", 1},
                                  .group = {(const uint8_t *)"g", 1},
                                  .max_in_flight = 10,
                                  .backoff_count = 3,
                                  .backoff_ms = {1000, 5000, 30000}};
    uint8_t buf[256];
    struct proto_writer w;
    proto_writer_init(&w, buf, sizeof(buf));
    assert_int_equal(proto_encode_subscribe(&w, 1, &sub), 0);
    struct proto_frame f;
    assert_int_equal(proto_decode(buf, w.len, PROTO_DEFAULT_MAX_FRAME, &f), (ptrdiff_t)w.len);
    assert_int_equal(f.u.subscribe.backoff_count, 3);
    assert_int_equal(f.u.subscribe.backoff_ms[2], 30000);
    /* The last u32 cut short: malformed (the length says the body ends
     * inside the list). */
    uint8_t cut[256];
    memcpy(cut, buf, w.len);
    proto_wr32(cut, (uint32_t)(w.len - 4 - 2));
    assert_int_equal(proto_decode(cut, w.len - 2, PROTO_DEFAULT_MAX_FRAME, &f), FERRY_EMALFORMED);
    /* Over the maximum. */
    memcpy(cut, buf, w.len);
    cut[w.len - 13] = PROTO_MAX_BACKOFF + 1;
    assert_int_equal(proto_decode(cut, w.len, PROTO_DEFAULT_MAX_FRAME, &f), FERRY_EMALFORMED);
    sub.backoff_count = PROTO_MAX_BACKOFF + 1;
    proto_writer_init(&w, buf, sizeof(buf));
    assert_int_equal(proto_encode_subscribe(&w, 1, &sub), -1);
    /* Without a schedule: count 0 on decode, no trailing byte on encode. */
    sub.backoff_count = 0;
    proto_writer_init(&w, buf, sizeof(buf));
    assert_int_equal(proto_encode_subscribe(&w, 1, &sub), 0);
    assert_int_equal(proto_decode(buf, w.len, PROTO_DEFAULT_MAX_FRAME, &f), (ptrdiff_t)w.len);
    assert_int_equal(f.u.subscribe.backoff_count, 0);
    assert_int_equal(w.len, PROTO_HEADER_BYTES + 4 + 3 + 3 + 1 + 8 + 4 + 4 + 2);
}

/* SUBSCRIBE_OK's optional redelivery horizon: present, absent, cut. */
static void test_proto_subscribe_ok_horizon(void **state)
{
    (void)state;
    struct proto_subscribe_ok ok = {.sub_id = 2,
                                    .cursor = 5,
                                    .ack_wait_ms = 1000,
                                    .max_deliveries = 3,
                                    .has_horizon = 1,
                                    .redelivery_horizon_ms = 123456};
    uint8_t buf[64];
    struct proto_writer w;
    proto_writer_init(&w, buf, sizeof(buf));
    assert_int_equal(proto_encode_subscribe_ok(&w, 9, &ok), 0);
    assert_int_equal(w.len, PROTO_HEADER_BYTES + 4 + 8 + 8 + 4 + 2 + 8);
    struct proto_frame f;
    assert_int_equal(proto_decode(buf, w.len, PROTO_DEFAULT_MAX_FRAME, &f), (ptrdiff_t)w.len);
    assert_int_equal(f.u.subscribe_ok.has_horizon, 1);
    assert_int_equal(f.u.subscribe_ok.redelivery_horizon_ms, 123456);
    /* Cut inside the horizon: malformed. */
    proto_wr32(buf, (uint32_t)(w.len - 4 - 3));
    assert_int_equal(proto_decode(buf, w.len - 3, PROTO_DEFAULT_MAX_FRAME, &f), FERRY_EMALFORMED);
    ok.has_horizon = 0;
    proto_writer_init(&w, buf, sizeof(buf));
    assert_int_equal(proto_encode_subscribe_ok(&w, 9, &ok), 0);
    assert_int_equal(proto_decode(buf, w.len, PROTO_DEFAULT_MAX_FRAME, &f), (ptrdiff_t)w.len);
    assert_int_equal(f.u.subscribe_ok.has_horizon, 0);
}

static void test_proto_redrive_round_trip(void **state)
{
    uint8_t buf[64];
    struct proto_writer w;
    struct proto_frame f;
    struct proto_redrive r = {{(const uint8_t *)"orders", 6}, {(const uint8_t *)"inv", 3}, 7};

    (void)state;
    proto_writer_init(&w, buf, sizeof(buf));
    assert_int_equal(proto_encode_redrive(&w, 5, &r), 0);
    assert_int_equal(w.len, PROTO_HEADER_BYTES + 2 + 6 + 2 + 3 + 8);
    assert_int_equal(proto_decode(buf, w.len, PROTO_DEFAULT_MAX_FRAME, &f), (ptrdiff_t)w.len);
    assert_int_equal(f.type, PROTO_REDRIVE);
    assert_int_equal(f.request_id, 5);
    assert_int_equal(f.u.redrive.topic.len, 6);
    assert_memory_equal(f.u.redrive.topic.ptr, "orders", 6);
    assert_int_equal(f.u.redrive.group.len, 3);
    assert_int_equal(f.u.redrive.dead_seq, 7);
    /* A byte short or one too many: malformed. */
    buf[3]--;
    assert_int_equal(proto_decode(buf, w.len - 1, PROTO_DEFAULT_MAX_FRAME, &f), FERRY_EMALFORMED);
}

/* FLOOR_OK, as printed in PROTOCOL.md §11: floor 11, sequence 1 kept. */
/* clang-format off */
static const uint8_t v_floor_ok[] = {
    0x00, 0x00, 0x00, 0x18, /* length 24 */
    0x2c,                   /* FLOOR_OK */
    0x00,
    0x00, 0x00, 0x00, 0x06, /* request_id 6 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0b, /* floor 11 */
    0x00, 0x01,                                     /* count 1 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, /* seq 1 */
};

static const uint8_t v_delete[] = {
    0x00, 0x00, 0x00, 0x0e, 0x35, 0x01, 0x00, 0x00, 0x00, 0x07,
    0x00, 0x04, 'j', 'o', 'b', 's', 0x00, 0x00,
};

static const uint8_t v_delete_ok[] = {
    0x00, 0x00, 0x00, 0x12, 0x36, 0x00, 0x00, 0x00, 0x00, 0x07,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x02,
};

static const uint8_t v_sub_end[] = {
    0x00, 0x00, 0x00, 0x20, 0x37, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x03, 0x00, 0x17, 0x00, 0x12,
    't', 'o', 'p', 'i', 'c', ' ', 'j', 'o', 'b', 's', ' ', 'd', 'e', 'l', 'e', 't', 'e', 'd',
};
/* clang-format on */

/* The spec's DELETE vectors are what the encoders write. */
static void test_proto_delete_vectors_encode(void **state)
{
    (void)state;
    uint8_t buf[64];
    struct proto_writer w;
    struct proto_delete d = {{(const uint8_t *)"jobs", 4}, {NULL, 0}, PROTO_DELETE_FORCE};
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_delete(&w, 7, &d), 0);
    assert_int_equal(w.len, sizeof v_delete);
    assert_memory_equal(buf, v_delete, sizeof v_delete);
    struct proto_delete_ok ok = {12, 2};
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_delete_ok(&w, 7, &ok), 0);
    assert_memory_equal(buf, v_delete_ok, sizeof v_delete_ok);
    struct proto_sub_end e = {3, 23, {(const uint8_t *)"topic jobs deleted", 18}};
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_sub_end(&w, &e), 0);
    assert_int_equal(w.len, sizeof v_sub_end);
    assert_memory_equal(buf, v_sub_end, sizeof v_sub_end);
}

static void test_proto_floor_round_trip(void **state)
{
    uint8_t buf[64];
    struct proto_writer w;
    struct proto_frame f;
    struct proto_floor r = {{(const uint8_t *)"orders", 6}, {(const uint8_t *)"inv", 3}};

    (void)state;
    proto_writer_init(&w, buf, sizeof(buf));
    assert_int_equal(proto_encode_floor(&w, 5, &r), 0);
    assert_int_equal(w.len, PROTO_HEADER_BYTES + 2 + 6 + 2 + 3);
    assert_int_equal(proto_decode(buf, w.len, PROTO_DEFAULT_MAX_FRAME, &f), (ptrdiff_t)w.len);
    assert_int_equal(f.type, PROTO_FLOOR);
    assert_int_equal(f.request_id, 5);
    assert_memory_equal(f.u.floor.topic.ptr, "orders", 6);
    assert_memory_equal(f.u.floor.group.ptr, "inv", 3);
    buf[3]--;
    assert_int_equal(proto_decode(buf, w.len - 1, PROTO_DEFAULT_MAX_FRAME, &f), FERRY_EMALFORMED);

    uint64_t keep[3] = {1, 4, 9};
    proto_writer_init(&w, buf, sizeof(buf));
    assert_int_equal(proto_encode_floor_ok(&w, 6, 11, keep, 1), 0);
    assert_int_equal(w.len, sizeof v_floor_ok);
    assert_memory_equal(buf, v_floor_ok, sizeof v_floor_ok);
    proto_writer_init(&w, buf, sizeof(buf));
    assert_int_equal(proto_encode_floor_ok(&w, 6, 10, keep, 3), 0);
    assert_int_equal(proto_decode(buf, w.len, PROTO_DEFAULT_MAX_FRAME, &f), (ptrdiff_t)w.len);
    assert_int_equal(f.type, PROTO_FLOOR_OK);
    assert_int_equal(f.u.floor_ok.floor, 10);
    assert_int_equal(f.u.floor_ok.count, 3);
    assert_int_equal(f.u.floor_ok.seqs.len, 24);
    /* Sequences must be ascending, non-zero and below the floor. */
    proto_writer_init(&w, buf, sizeof(buf));
    assert_int_equal(proto_encode_floor_ok(&w, 6, 9, keep, 3), -1);
    keep[1] = 1;
    proto_writer_init(&w, buf, sizeof(buf));
    assert_int_equal(proto_encode_floor_ok(&w, 6, 20, keep, 3), -1);
    memcpy(buf, v_floor_ok, sizeof v_floor_ok);
    buf[17] = 0x01; /* floor 1: the kept 1 is not below it */
    assert_int_equal(proto_decode(buf, sizeof v_floor_ok, PROTO_DEFAULT_MAX_FRAME, &f),
                     FERRY_EMALFORMED);
    memcpy(buf, v_floor_ok, sizeof v_floor_ok);
    buf[sizeof v_floor_ok - 1] = 0x00; /* seq 0 */
    assert_int_equal(proto_decode(buf, sizeof v_floor_ok, PROTO_DEFAULT_MAX_FRAME, &f),
                     FERRY_EMALFORMED);
    memcpy(buf, v_floor_ok, sizeof v_floor_ok);
    buf[19] = 0x02; /* count 2, one sequence */
    assert_int_equal(proto_decode(buf, sizeof v_floor_ok, PROTO_DEFAULT_MAX_FRAME, &f),
                     FERRY_EMALFORMED);
}

static void test_proto_delete_roundtrip_and_limits(void **state)
{
    (void)state;
    uint8_t buf[512];
    struct proto_writer w;
    struct proto_frame f;
    struct proto_delete d = {
        {(const uint8_t *)"orders", 6}, {(const uint8_t *)"billing", 7}, PROTO_DELETE_FORCE};
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_delete(&w, 9, &d), 0);
    assert_int_equal(proto_decode(buf, w.len, PROTO_DEFAULT_MAX_FRAME, &f), (ptrdiff_t)w.len);
    assert_int_equal(f.type, PROTO_DELETE);
    assert_int_equal(f.request_id, 9);
    assert_int_equal(f.u.del.flags, PROTO_DELETE_FORCE);
    assert_int_equal(f.u.del.topic.len, 6);
    assert_memory_equal(f.u.del.group.ptr, "billing", 7);
    /* An undefined flag bit is ignored (§2); an empty topic is refused. */
    buf[5] = 0x02;
    assert_int_equal(proto_decode(buf, w.len, PROTO_DEFAULT_MAX_FRAME, &f), (ptrdiff_t)w.len);
    assert_int_equal(f.u.del.flags, 0);
    d.topic.len = 0;
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_delete(&w, 9, &d), -1);

    struct proto_delete_ok ok = {123456789012ull, 3};
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_delete_ok(&w, 4, &ok), 0);
    assert_int_equal(w.len, PROTO_HEADER_BYTES + 12);
    assert_int_equal(proto_decode(buf, w.len, PROTO_DEFAULT_MAX_FRAME, &f), (ptrdiff_t)w.len);
    assert_true(f.u.delete_ok.messages == 123456789012ull && f.u.delete_ok.groups == 3);

    struct proto_sub_end e = {5, 23, {(const uint8_t *)"topic orders was deleted", 24}};
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_sub_end(&w, &e), 0);
    assert_int_equal(proto_decode(buf, w.len, PROTO_DEFAULT_MAX_FRAME, &f), (ptrdiff_t)w.len);
    assert_int_equal(f.request_id, 0);
    assert_int_equal(f.u.sub_end.sub_id, 5);
    assert_int_equal(f.u.sub_end.code, 23);
    assert_int_equal(f.u.sub_end.message.len, 24);
    /* Not a reply: a request id makes it malformed, as does sub_id 0. */
    buf[9] = 1;
    assert_int_equal(proto_decode(buf, w.len, PROTO_DEFAULT_MAX_FRAME, &f), FERRY_EMALFORMED);
    buf[9] = 0;
    buf[PROTO_HEADER_BYTES + 3] = 0;
    assert_int_equal(proto_decode(buf, w.len, PROTO_DEFAULT_MAX_FRAME, &f), FERRY_EMALFORMED);
}

static void test_proto_unknown_type_is_rejected(void **state)
{
    static const uint8_t unknown[] = {0x00, 0x06, 0x0f, 0x12, 0x1f, 0x2f, 0x3f, 0x38, 0x80, 0xff};
    uint8_t buf[12] = {0x00, 0x00, 0x00, 0x08, 0, 0, 0, 0, 0, 1, 0xab, 0xcd};
    size_t i;

    (void)state;
    for (i = 0; i < sizeof unknown; i++) {
        buf[4] = unknown[i];
        assert_int_equal(decode_copy(buf, sizeof buf, PROTO_DEFAULT_MAX_FRAME),
                         FERRY_EUNKNOWN_TYPE);
        /* Known from the header, before the body arrives. */
        assert_int_equal(decode_copy(buf, PROTO_HEADER_BYTES, PROTO_DEFAULT_MAX_FRAME),
                         FERRY_EUNKNOWN_TYPE);
        /* Not before the header is complete. */
        assert_int_equal(decode_copy(buf, PROTO_HEADER_BYTES - 1, PROTO_DEFAULT_MAX_FRAME), 0);
    }
}

/* --- Body errors ------------------------------------------------------- */

static void test_proto_trailing_bytes_are_malformed(void **state)
{
    static const struct vector strict[] = {
        VEC(v_hello),         VEC(v_publish),
        VEC(v_publish_ack),   VEC(v_error),
        VEC(v_ping),          VEC(v_pong),
        VEC(v_topics),        VEC(v_topics_ok),
        VEC(v_publish_batch), VEC(v_publish_ack_batch),
        VEC(v_subscribe),     VEC(v_subscribe_ok),
        VEC(v_deliver),       VEC(v_deliver_redelivered),
        VEC(v_ack),           VEC(v_ack_ok),
        VEC(v_ack_ok_empty),  VEC(v_nack),
        VEC(v_touch),         VEC(v_credit),
        VEC(v_unsubscribe),   VEC(v_seek),
        VEC(v_groups),        VEC(v_groups_all),
        VEC(v_groups_ok),     VEC(v_groups_ok_one),
    };
    uint8_t buf[1024];
    struct proto_frame f;
    size_t i;

    (void)state;
    for (i = 0; i < ARRAY_LEN(strict); i++) {
        const struct vector *v = &strict[i];

        memcpy(buf, v->bytes, v->len);
        buf[v->len] = 0;
        proto_wr32(buf, proto_rd32(buf) + 1);
        if (decode_copy(buf, v->len + 1, PROTO_DEFAULT_MAX_FRAME) != FERRY_EMALFORMED)
            fail_msg("%s with a trailing byte was accepted", v->name);
    }

    /* HELLO_OK may grow: appended fields are ignored. */
    memcpy(buf, v_hello_ok, sizeof v_hello_ok);
    memcpy(buf + sizeof v_hello_ok, "\x00\x01\x02", 3);
    proto_wr32(buf, proto_rd32(buf) + 3);
    decode_ok(buf, sizeof v_hello_ok + 3, &f);
    assert_int_equal(f.u.hello_ok.max_batch, 10000);
    assert_slice(f.u.hello_ok.server_name, "ferryd 0.1.0");
}

static void test_proto_empty_body_types_reject_a_body(void **state)
{
    (void)state;
    assert_int_equal(decode_copy(scratch, build_raw(PROTO_PING, "x", 1), PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
    assert_int_equal(decode_copy(scratch, build_raw(PROTO_PONG, "x", 1), PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
    assert_int_equal(
        decode_copy(scratch, build_raw(PROTO_TOPICS, "xy", 2), PROTO_DEFAULT_MAX_FRAME),
        FERRY_EMALFORMED);
}

static void test_proto_short_bodies_are_malformed(void **state)
{
    static const uint8_t types[] = {
        PROTO_HELLO,     PROTO_HELLO_OK,  PROTO_ERROR,        PROTO_PUBLISH,     PROTO_PUBLISH_ACK,
        PROTO_TOPICS_OK, PROTO_SUBSCRIBE, PROTO_SUBSCRIBE_OK, PROTO_DELIVER,     PROTO_ACK,
        PROTO_NACK,      PROTO_TOUCH,     PROTO_CREDIT,       PROTO_UNSUBSCRIBE, PROTO_SEEK,
        PROTO_ACK_OK,    PROTO_GROUPS,    PROTO_GROUPS_OK};
    size_t i;

    (void)state;
    /* A complete frame whose body stops early: no amount of waiting helps. */
    for (i = 0; i < sizeof types; i++) {
        assert_int_equal(
            decode_copy(scratch, build_raw(types[i], NULL, 0), PROTO_DEFAULT_MAX_FRAME),
            FERRY_EMALFORMED);
        assert_int_equal(
            decode_copy(scratch, build_raw(types[i], "\x00", 1), PROTO_DEFAULT_MAX_FRAME),
            FERRY_EMALFORMED);
    }
}

static void test_proto_field_lengths_past_the_body_are_malformed(void **state)
{
    uint8_t buf[256];

    (void)state;
    /* HELLO token says 4 bytes, 3 follow. */
    memcpy(buf, v_hello, sizeof v_hello);
    buf[18] = 4;
    assert_int_equal(decode_copy(buf, sizeof v_hello, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
    /* PUBLISH payload length 0xffffffff. */
    memcpy(buf, v_publish, sizeof v_publish);
    memset(buf + 46, 0xff, 4);
    assert_int_equal(decode_copy(buf, sizeof v_publish, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
    /* PUBLISH header value length 0xffff. */
    memcpy(buf, v_publish, sizeof v_publish);
    buf[40] = 0xff;
    buf[41] = 0xff;
    assert_int_equal(decode_copy(buf, sizeof v_publish, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
    /* PUBLISH_ACK id length runs past the end. */
    memcpy(buf, v_publish_ack, sizeof v_publish_ack);
    buf[22] = 3;
    assert_int_equal(decode_copy(buf, sizeof v_publish_ack, PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
    /* TOPICS_OK entry_length past the end, and too short for the v1 fields. */
    memcpy(buf, v_topics_ok_one, sizeof v_topics_ok_one);
    buf[15] = 49;
    assert_int_equal(decode_copy(buf, sizeof v_topics_ok_one, PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
    assert_int_equal(decode_copy(scratch, build_topics_ok(1, 1, 6, 0), PROTO_DEFAULT_MAX_FRAME),
                     (ptrdiff_t)(10 + 4 + 2 + 8 + 40));
    proto_wr16(scratch + 14, 47);
    assert_int_equal(decode_copy(scratch, 10 + 4 + 2 + 8 + 40, PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
    /* HELLO_OK cut inside its fixed fields. */
    memcpy(buf, v_hello_ok, sizeof v_hello_ok);
    proto_wr32(buf, 6 + 20);
    assert_int_equal(decode_copy(buf, 10 + 20, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
}

static void test_proto_fields_over_their_maximum_are_malformed(void **state)
{
    struct msg_shape s;
    const uint32_t max = PROTO_DEFAULT_MAX_FRAME;

    (void)state;
    /* HELLO: client name 255 / token 1024 pass, one more fails. */
    assert_true(decode_copy(scratch, build_hello(255, 1024), max) > 0);
    assert_int_equal(decode_copy(scratch, build_hello(256, 0), max), FERRY_EMALFORMED);
    assert_int_equal(decode_copy(scratch, build_hello(0, 1025), max), FERRY_EMALFORMED);

    /* ERROR text. */
    assert_true(decode_copy(scratch, build_error(1, 1024), max) > 0);
    assert_int_equal(decode_copy(scratch, build_error(1, 1025), max), FERRY_EMALFORMED);

    /* PUBLISH: topic 200, id 128, key 1024, 64 headers, header name 255. */
    s = (struct msg_shape){200, 128, 1024, 64, 255, 10};
    assert_true(decode_copy(scratch, build_publish(1, 1, &s), max) > 0);
    s.topic_len = 201;
    assert_int_equal(decode_copy(scratch, build_publish(1, 1, &s), max), FERRY_EMALFORMED);
    s.topic_len = 200;
    s.id_len = 129;
    assert_int_equal(decode_copy(scratch, build_publish(1, 1, &s), max), FERRY_EMALFORMED);
    s.id_len = 128;
    s.key_len = 1025;
    assert_int_equal(decode_copy(scratch, build_publish(1, 1, &s), max), FERRY_EMALFORMED);
    s.key_len = 1024;
    s.header_count = 65;
    assert_int_equal(decode_copy(scratch, build_publish(1, 1, &s), max), FERRY_EMALFORMED);
    s.header_count = 64;
    s.header_name_len = 256;
    assert_int_equal(decode_copy(scratch, build_publish(1, 1, &s), max), FERRY_EMALFORMED);
    s.header_name_len = 0;
    assert_int_equal(decode_copy(scratch, build_publish(1, 1, &s), max), FERRY_EMALFORMED);

    /* PUBLISH_ACK id. */
    assert_true(decode_copy(scratch, build_publish_ack(1, 1, 128), max) > 0);
    assert_int_equal(decode_copy(scratch, build_publish_ack(1, 1, 129), max), FERRY_EMALFORMED);

    /* TOPICS_OK name. */
    assert_true(decode_copy(scratch, build_topics_ok(1, 1, 200, 0), max) > 0);
    assert_int_equal(decode_copy(scratch, build_topics_ok(1, 1, 201, 0), max), FERRY_EMALFORMED);
}

static void test_proto_publish_count_zero_is_malformed(void **state)
{
    (void)state;
    assert_int_equal(decode_copy(scratch, build_publish(0, 0, &small_msg), PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
    /* A count of 0 followed by a message is no better. */
    assert_int_equal(decode_copy(scratch, build_publish(0, 1, &small_msg), PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
}

static void test_proto_publish_count_over_max_is_malformed(void **state)
{
    size_t n;

    (void)state;
    n = build_publish(PROTO_MAX_BATCH, PROTO_MAX_BATCH, &small_msg);
    assert_int_equal(decode_copy(scratch, n, PROTO_DEFAULT_MAX_FRAME), (ptrdiff_t)n);
    n = build_publish(PROTO_MAX_BATCH + 1, PROTO_MAX_BATCH + 1, &small_msg);
    assert_int_equal(decode_copy(scratch, n, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
    n = build_publish(UINT16_MAX, 1, &small_msg);
    assert_int_equal(decode_copy(scratch, n, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
}

static void test_proto_publish_count_must_match_messages(void **state)
{
    (void)state;
    /* Says 2, holds 1. */
    assert_int_equal(decode_copy(scratch, build_publish(2, 1, &small_msg), PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
    /* Says 1, holds 2: the second is trailing bytes. */
    assert_int_equal(decode_copy(scratch, build_publish(1, 2, &small_msg), PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
}

static void test_proto_publish_ack_and_topics_ok_counts_are_checked(void **state)
{
    size_t n;

    (void)state;
    n = build_publish_ack(0, 0, 2);
    assert_int_equal(decode_copy(scratch, n, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
    n = build_publish_ack(PROTO_MAX_BATCH + 1, PROTO_MAX_BATCH + 1, 0);
    assert_int_equal(decode_copy(scratch, n, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
    n = build_publish_ack(3, 2, 2);
    assert_int_equal(decode_copy(scratch, n, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
    n = build_topics_ok(PROTO_MAX_TOPICS + 1, 0, 0, 0);
    assert_int_equal(decode_copy(scratch, n, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
    n = build_topics_ok(2, 1, 5, 0);
    assert_int_equal(decode_copy(scratch, n, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
}

static void test_proto_error_code_outside_wire_range_is_malformed(void **state)
{
    (void)state;
    assert_int_equal(decode_copy(scratch, build_error(0, 3), PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
    assert_int_equal(decode_copy(scratch, build_error(100, 3), PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
    assert_int_equal(decode_copy(scratch, build_error(UINT16_MAX, 3), PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
    assert_true(decode_copy(scratch, build_error(FERRY_WIRE_CODE_MAX, 3), PROTO_DEFAULT_MAX_FRAME) >
                0);
}

static void test_proto_undefined_flags_are_passed_through(void **state)
{
    uint8_t buf[sizeof v_publish];
    struct proto_frame f;

    (void)state;
    memcpy(buf, v_publish, sizeof buf);
    buf[5] = 0x80;
    decode_ok(buf, sizeof buf, &f);
    assert_int_equal(f.flags, 0x80);
    assert_int_equal(f.u.publish.count, 1);
}

/* --- Encoding ---------------------------------------------------------- */

enum {
    ENC_HELLO,
    ENC_HELLO_OK,
    ENC_ERROR,
    ENC_PING,
    ENC_PONG,
    ENC_TOPICS,
    ENC_PUBLISH,
    ENC_PUBLISH_ACK,
    ENC_TOPICS_OK,
    ENC_PUBLISH_BATCH,
    ENC_PUBLISH_ACK_BATCH,
    ENC_SUBSCRIBE,
    ENC_SUBSCRIBE_OK,
    ENC_DELIVER,
    ENC_DELIVER_REDELIVERED,
    ENC_ACK,
    ENC_ACK_OK,
    ENC_ACK_OK_EMPTY,
    ENC_NACK,
    ENC_TOUCH,
    ENC_CREDIT,
    ENC_UNSUBSCRIBE,
    ENC_SEEK,
    ENC_GROUPS,
    ENC_GROUPS_ALL,
    ENC_GROUPS_OK,
    ENC_COUNT
};

static const struct vector encoded_vectors[ENC_COUNT] = {
    [ENC_HELLO] = VEC(v_hello),
    [ENC_HELLO_OK] = VEC(v_hello_ok),
    [ENC_ERROR] = VEC(v_error),
    [ENC_PING] = VEC(v_ping),
    [ENC_PONG] = VEC(v_pong),
    [ENC_TOPICS] = VEC(v_topics),
    [ENC_PUBLISH] = VEC(v_publish),
    [ENC_PUBLISH_ACK] = VEC(v_publish_ack),
    [ENC_TOPICS_OK] = VEC(v_topics_ok_one),
    [ENC_PUBLISH_BATCH] = VEC(v_publish_batch),
    [ENC_PUBLISH_ACK_BATCH] = VEC(v_publish_ack_batch),
    [ENC_SUBSCRIBE] = VEC(v_subscribe),
    [ENC_SUBSCRIBE_OK] = VEC(v_subscribe_ok),
    [ENC_DELIVER] = VEC(v_deliver),
    [ENC_DELIVER_REDELIVERED] = VEC(v_deliver_redelivered),
    [ENC_ACK] = VEC(v_ack),
    [ENC_ACK_OK] = VEC(v_ack_ok),
    [ENC_ACK_OK_EMPTY] = VEC(v_ack_ok_empty),
    [ENC_NACK] = VEC(v_nack),
    [ENC_TOUCH] = VEC(v_touch),
    [ENC_CREDIT] = VEC(v_credit),
    [ENC_UNSUBSCRIBE] = VEC(v_unsubscribe),
    [ENC_SEEK] = VEC(v_seek),
    [ENC_GROUPS] = VEC(v_groups),
    [ENC_GROUPS_ALL] = VEC(v_groups_all),
    [ENC_GROUPS_OK] = VEC(v_groups_ok_one),
};

/* Encodes, with the public encoders, the frame encoded_vectors[which] shows. */
static int encode_vector(int which, struct proto_writer *w)
{
    static const struct proto_hello hello = {1, SL("app"), SL("tok")};
    static const struct proto_hello_ok hello_ok = {1,     4194304,  1048576,
                                                   10000, 86400000, SL("ferryd 0.1.0")};
    static const struct proto_header one_header[] = {{SL("ct"), SL("json")}};
    static const struct proto_header batch_headers0[] = {{SL("ct"), SL("json")},
                                                         {SL("trace"), SL("abc")}};
    static const struct proto_header batch_headers2[] = {{SL("x"), {NULL, 0}}};
    static const struct proto_topic_info orders = {.name = SL("orders"),
                                                   .head_seq = 42,
                                                   .first_seq = 1,
                                                   .message_count = 42,
                                                   .bytes = 1234,
                                                   .created_ms = 1700000000000ull};
    static const struct proto_subscribe sub = {
        1, SL("orders"), SL("inventory"), PROTO_START_EARLIEST, 0, 100, 30000, 5, 0, {0}, 0};
    static const struct proto_subscribe_ok sub_ok = {1, 1, 42, 30000, 5, 0, 0};
    static const struct proto_deliver deliver = {.sub_id = 1,
                                                 .seq = 1,
                                                 .attempt = 1,
                                                 .ts_ms = 1700000000000ull,
                                                 .id = SL("o1"),
                                                 .header_count = 1,
                                                 .headers = SL("\x00\x02"
                                                               "ct\x00\x04"
                                                               "json"),
                                                 .payload = SL("{\"id\":1}")};
    static const struct proto_deliver redelivered = {.sub_id = UINT32_MAX,
                                                     .seq = 7,
                                                     .attempt = 3,
                                                     .ts_ms = 1700000000001ull,
                                                     .id = SL("a-9"),
                                                     .key = SL("c42"),
                                                     .header_count = 2,
                                                     .headers = SL("\x00\x01x\x00\x00"
                                                                   "\x00\x01y\x00\x01z")};
    static const uint64_t seqs[] = {1, 7};
    static const struct proto_nack nack = {1, 3, 5000, SL("timeout")};
    static const struct proto_seek seek = {SL("orders"), SL("inventory"), PROTO_START_SEQ, 100};
    static const struct proto_group_info inventory = {
        SL("orders"), SL("inventory"), 40, 37, 6, 3, 2, 4, 1, 1500, 30000, 5};
    struct proto_msg m;
    size_t start;

    switch (which) {
    case ENC_HELLO:
        return proto_encode_hello(w, 1, &hello);
    case ENC_HELLO_OK:
        return proto_encode_hello_ok(w, 1, &hello_ok);
    case ENC_ERROR:
        return proto_encode_error(w, 0, PROTO_ERROR_FATAL, -FERRY_EMALFORMED, "bad frame", 9);
    case ENC_PING:
        return proto_encode_empty(w, PROTO_PING, 7);
    case ENC_PONG:
        return proto_encode_empty(w, PROTO_PONG, 7);
    case ENC_TOPICS:
        return proto_encode_empty(w, PROTO_TOPICS, 3);
    case ENC_PUBLISH:
        start = proto_publish_begin(w, 2);
        m = (struct proto_msg){
            .topic = SL("orders"), .id = SL("o1"), .header_count = 1, .payload = SL("{\"id\":1}")};
        proto_publish_add(w, &m, one_header);
        return proto_publish_end(w, start, 1);
    case ENC_PUBLISH_ACK:
        start = proto_publish_ack_begin(w, 2);
        proto_publish_ack_add(w, 1, 0, "o1", 2);
        return proto_publish_ack_end(w, start, 1);
    case ENC_TOPICS_OK:
        start = proto_topics_ok_begin(w, 3);
        proto_topics_ok_add(w, &orders);
        return proto_topics_ok_end(w, start, 1);
    case ENC_PUBLISH_BATCH:
        start = proto_publish_begin(w, 9);
        m = (struct proto_msg){.topic = SL("orders"),
                               .id = SL("o1"),
                               .key = SL("c42"),
                               .header_count = 2,
                               .payload = SL("{}")};
        proto_publish_add(w, &m, batch_headers0);
        m = (struct proto_msg){.topic = SL("orders"), .deliver_at_ms = 1700000000000ull};
        proto_publish_add(w, &m, NULL);
        m = (struct proto_msg){
            .topic = SL("audit.log"), .id = SL("a-9"), .header_count = 1, .payload = SL("z")};
        proto_publish_add(w, &m, batch_headers2);
        return proto_publish_end(w, start, 3);
    case ENC_PUBLISH_ACK_BATCH:
        start = proto_publish_ack_begin(w, 9);
        proto_publish_ack_add(w, 1, 0, "o1", 2);
        proto_publish_ack_add(w, 2, 0, "m2", 2);
        proto_publish_ack_add(w, 7, PROTO_ACK_DUPLICATE, "a-9", 3);
        return proto_publish_ack_end(w, start, 3);
    case ENC_SUBSCRIBE:
        return proto_encode_subscribe(w, 3, &sub);
    case ENC_SUBSCRIBE_OK:
        return proto_encode_subscribe_ok(w, 3, &sub_ok);
    case ENC_DELIVER:
        return proto_encode_deliver(w, 0, &deliver);
    case ENC_DELIVER_REDELIVERED:
        return proto_encode_deliver(w, PROTO_DELIVER_REDELIVERED, &redelivered);
    case ENC_ACK:
        return proto_encode_ack(w, 4, 1, seqs, 2);
    case ENC_ACK_OK:
        start = proto_ack_ok_begin(w, 4);
        proto_ack_ok_add(w, 1, 0);
        proto_ack_ok_add(w, 7, -FERRY_ENOT_DELIVERED);
        return proto_ack_ok_end(w, start, 2);
    case ENC_ACK_OK_EMPTY:
        start = proto_ack_ok_begin(w, 8);
        return proto_ack_ok_end(w, start, 0);
    case ENC_NACK:
        return proto_encode_nack(w, 5, &nack);
    case ENC_TOUCH:
        return proto_encode_sub_op(w, PROTO_TOUCH, 6, 1, 3);
    case ENC_CREDIT:
        return proto_encode_sub_op(w, PROTO_CREDIT, 7, 1, 200);
    case ENC_UNSUBSCRIBE:
        /* The value is ignored. */
        return proto_encode_sub_op(w, PROTO_UNSUBSCRIBE, 8, 1, 12345);
    case ENC_SEEK:
        return proto_encode_seek(w, 9, &seek);
    case ENC_GROUPS:
        return proto_encode_groups(w, 10, "orders", 6);
    case ENC_GROUPS_ALL:
        return proto_encode_groups(w, 10, NULL, 0);
    case ENC_GROUPS_OK:
        start = proto_groups_ok_begin(w, 10);
        proto_groups_ok_add(w, &inventory);
        return proto_groups_ok_end(w, start, 1);
    default:
        fail();
        return -1;
    }
}

static void test_proto_encoders_reproduce_vectors(void **state)
{
    uint8_t buf[1024];
    struct proto_writer w;
    int i;

    (void)state;
    for (i = 0; i < ENC_COUNT; i++) {
        const struct vector *v = &encoded_vectors[i];

        /* An exactly-sized buffer is enough. */
        proto_writer_init(&w, buf, v->len);
        if (encode_vector(i, &w) != 0)
            fail_msg("encoding %s failed", v->name);
        assert_false(w.overflow);
        assert_bytes(buf, w.len, v->bytes, v->len);
    }
}

static void test_proto_encoders_fail_cleanly_at_every_short_cap(void **state)
{
    uint8_t buf[1024 + 16];
    struct proto_writer w;
    size_t cap, k;
    int i;

    (void)state;
    for (i = 0; i < ENC_COUNT; i++) {
        const struct vector *v = &encoded_vectors[i];

        for (cap = 0; cap < v->len; cap++) {
            memset(buf, 0xa5, sizeof buf);
            proto_writer_init(&w, buf, cap);
            if (encode_vector(i, &w) != -1)
                fail_msg("%s fit in %zu bytes", v->name, cap);
            assert_true(w.overflow);
            assert_true(w.len <= cap);
            for (k = cap; k < sizeof buf; k++)
                assert_int_equal(buf[k], 0xa5);
        }
    }
}

static void test_proto_round_trip_each_type(void **state)
{
    static const uint8_t types[] = {PROTO_PING, PROTO_PONG, PROTO_TOPICS};
    size_t cap = 256 * 1024;
    uint8_t *buf = malloc(cap);
    struct proto_header headers[PROTO_MAX_HEADERS];
    struct proto_writer w;
    struct proto_frame f;
    struct proto_hello hello;
    struct proto_hello_ok hok;
    struct proto_msg m, got;
    struct proto_msg_iter mit;
    struct proto_header_iter hit;
    struct proto_header h;
    struct proto_ack_iter ait;
    struct proto_ack_entry a;
    struct proto_topic_info t;
    struct proto_topic_iter tit;
    uint8_t name[PROTO_MAX_HEADERS][PROTO_MAX_HEADER_NAME];
    uint8_t big[PROTO_MAX_KEY];
    size_t start, i;

    (void)state;
    assert_non_null(buf);
    memset(big, 'k', sizeof big);

    /* HELLO with both strings at their maximum. */
    hello =
        (struct proto_hello){PROTO_VERSION, {big, PROTO_MAX_CLIENT_NAME}, {big, PROTO_MAX_TOKEN}};
    proto_writer_init(&w, buf, cap);
    assert_int_equal(proto_encode_hello(&w, 0xfffffffe, &hello), 0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.type, PROTO_HELLO);
    assert_int_equal(f.request_id, 0xfffffffe);
    assert_int_equal(f.u.hello.version, PROTO_VERSION);
    assert_bytes(f.u.hello.client_name.ptr, f.u.hello.client_name.len, big, PROTO_MAX_CLIENT_NAME);
    assert_bytes(f.u.hello.token.ptr, f.u.hello.token.len, big, PROTO_MAX_TOKEN);

    /* HELLO_OK with extreme numbers. */
    hok = (struct proto_hello_ok){2, UINT32_MAX, 1, UINT32_MAX - 1, UINT64_MAX, {NULL, 0}};
    proto_writer_init(&w, buf, cap);
    assert_int_equal(proto_encode_hello_ok(&w, 4, &hok), 0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.type, PROTO_HELLO_OK);
    assert_int_equal(f.u.hello_ok.version, 2);
    assert_int_equal(f.u.hello_ok.max_frame_bytes, UINT32_MAX);
    assert_int_equal(f.u.hello_ok.max_message_bytes, 1);
    assert_int_equal(f.u.hello_ok.max_batch, UINT32_MAX - 1);
    assert_int_equal(f.u.hello_ok.dedupe_window_ms, UINT64_MAX);
    assert_int_equal(f.u.hello_ok.server_name.len, 0);

    /* ERROR, per-request, text at its maximum. */
    proto_writer_init(&w, buf, cap);
    assert_int_equal(proto_encode_error(&w, 77, 0, -FERRY_EINVALID_TOPIC, (const char *)big,
                                        PROTO_MAX_ERROR_TEXT),
                     0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.type, PROTO_ERROR);
    assert_int_equal(f.flags, 0);
    assert_int_equal(f.request_id, 77);
    assert_int_equal(f.u.error.code, -FERRY_EINVALID_TOPIC);
    assert_bytes(f.u.error.message.ptr, f.u.error.message.len, big, PROTO_MAX_ERROR_TEXT);

    /* Empty-body types. */
    for (i = 0; i < sizeof types; i++) {
        proto_writer_init(&w, buf, cap);
        assert_int_equal(proto_encode_empty(&w, types[i], UINT32_MAX), 0);
        assert_int_equal(w.len, PROTO_HEADER_BYTES);
        decode_ok(buf, w.len, &f);
        assert_int_equal(f.type, types[i]);
        assert_int_equal(f.request_id, UINT32_MAX);
        assert_int_equal(f.body.len, 0);
    }

    /* PUBLISH: every field at its maximum, twice. */
    for (i = 0; i < PROTO_MAX_HEADERS; i++) {
        memset(name[i], 'a' + (int)(i % 26), sizeof name[i]);
        headers[i].name = (struct proto_slice){name[i], sizeof name[i]};
        headers[i].value = (struct proto_slice){big, i};
    }
    m = (struct proto_msg){.topic = {big, PROTO_MAX_TOPIC},
                           .id = {big, PROTO_MAX_ID},
                           .key = {big, PROTO_MAX_KEY},
                           .deliver_at_ms = UINT64_MAX,
                           .header_count = PROTO_MAX_HEADERS,
                           .payload = {big, 1000}};
    proto_writer_init(&w, buf, cap);
    start = proto_publish_begin(&w, 5);
    proto_publish_add(&w, &m, headers);
    proto_publish_add(&w, &m, headers);
    assert_int_equal(proto_publish_end(&w, start, 2), 0);
    assert_int_equal(w.len, PROTO_HEADER_BYTES + 2 + 2 * proto_publish_msg_bytes(&m, headers));
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.u.publish.count, 2);
    proto_msg_iter_init(&mit, &f.u.publish);
    while (proto_msg_next(&mit, &got)) {
        assert_bytes(got.topic.ptr, got.topic.len, big, PROTO_MAX_TOPIC);
        assert_bytes(got.id.ptr, got.id.len, big, PROTO_MAX_ID);
        assert_bytes(got.key.ptr, got.key.len, big, PROTO_MAX_KEY);
        assert_int_equal(got.deliver_at_ms, UINT64_MAX);
        assert_int_equal(got.header_count, PROTO_MAX_HEADERS);
        assert_bytes(got.payload.ptr, got.payload.len, big, 1000);
        proto_header_iter_init(&hit, &got);
        for (i = 0; proto_header_next(&hit, &h); i++) {
            assert_bytes(h.name.ptr, h.name.len, name[i], PROTO_MAX_HEADER_NAME);
            assert_bytes(h.value.ptr, h.value.len, big, i);
        }
        assert_int_equal(i, PROTO_MAX_HEADERS);
    }
    assert_int_equal(mit.left, 0);

    /* PUBLISH_ACK: extreme seq, id at its maximum. */
    proto_writer_init(&w, buf, cap);
    start = proto_publish_ack_begin(&w, 6);
    proto_publish_ack_add(&w, UINT64_MAX, PROTO_ACK_DUPLICATE, big, PROTO_MAX_ID);
    proto_publish_ack_add(&w, 0, 0, NULL, 0);
    assert_int_equal(proto_publish_ack_end(&w, start, 2), 0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.request_id, 6);
    proto_ack_iter_init(&ait, &f.u.publish_ack);
    assert_int_equal(proto_ack_next(&ait, &a), 1);
    assert_int_equal(a.seq, UINT64_MAX);
    assert_int_equal(a.flags, PROTO_ACK_DUPLICATE);
    assert_bytes(a.id.ptr, a.id.len, big, PROTO_MAX_ID);
    assert_int_equal(proto_ack_next(&ait, &a), 1);
    assert_int_equal(a.seq, 0);
    assert_int_equal(a.id.len, 0);
    assert_int_equal(proto_ack_next(&ait, &a), 0);

    /* TOPICS_OK: 100 entries, names at their maximum. */
    proto_writer_init(&w, buf, cap);
    start = proto_topics_ok_begin(&w, 8);
    for (i = 0; i < 100; i++) {
        t = (struct proto_topic_info){.name = {big, PROTO_MAX_TOPIC},
                                      .head_seq = i,
                                      .first_seq = i + 1,
                                      .message_count = i + 2,
                                      .bytes = i + 3,
                                      .created_ms = UINT64_MAX};
        proto_topics_ok_add(&w, &t);
    }
    assert_int_equal(proto_topics_ok_end(&w, start, 100), 0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.u.topics_ok.count, 100);
    proto_topic_iter_init(&tit, &f.u.topics_ok);
    for (i = 0; proto_topic_next(&tit, &t); i++) {
        assert_bytes(t.name.ptr, t.name.len, big, PROTO_MAX_TOPIC);
        assert_int_equal(t.head_seq, i);
        assert_int_equal(t.first_seq, i + 1);
        assert_int_equal(t.message_count, i + 2);
        assert_int_equal(t.bytes, i + 3);
        assert_int_equal(t.created_ms, UINT64_MAX);
    }
    assert_int_equal(i, 100);

    free(buf);
}

static void test_proto_writer_overflow_is_sticky(void **state)
{
    uint8_t buf[8];
    struct proto_writer w;

    (void)state;
    memset(buf, 0xee, sizeof buf);
    proto_writer_init(&w, buf, 5);
    proto_put_u32(&w, 0x01020304);
    assert_false(w.overflow);
    assert_int_equal(w.len, 4);
    proto_put_u16(&w, 0xffff); /* needs 2, 1 left */
    assert_true(w.overflow);
    assert_int_equal(w.len, 4);
    proto_put_u8(&w, 0x55); /* would fit, but the writer has failed */
    assert_int_equal(w.len, 4);
    assert_int_equal(buf[4], 0xee);
    proto_put_raw(&w, "", 0);
    proto_put_u64(&w, 1);
    proto_put_str16(&w, "a", 1);
    proto_put_bytes32(&w, "a", 1);
    assert_int_equal(w.len, 4);
    assert_memory_equal(buf, "\x01\x02\x03\x04\xee\xee\xee\xee", 8);

    /* A writer over no buffer fails on the first byte. */
    proto_writer_init(&w, NULL, 100);
    assert_int_equal(w.cap, 0);
    proto_put_u8(&w, 1);
    assert_true(w.overflow);

    /* Each primitive, exactly fitting, in big-endian order. */
    proto_writer_init(&w, buf, 8);
    proto_put_u64(&w, 0x0102030405060708ull);
    assert_false(w.overflow);
    assert_memory_equal(buf, "\x01\x02\x03\x04\x05\x06\x07\x08", 8);
    proto_writer_init(&w, buf, 8);
    proto_put_u8(&w, 0xaa);
    proto_put_u16(&w, 0x0102);
    proto_put_bytes32(&w, "z", 1);
    assert_false(w.overflow);
    assert_int_equal(w.len, 8);
    assert_memory_equal(buf, "\xaa\x01\x02\x00\x00\x00\x01z", 8);
}

static void test_proto_put_str16_over_65535_overflows(void **state)
{
    size_t cap = 70000;
    uint8_t *buf = malloc(cap);
    struct proto_writer w;

    (void)state;
    assert_non_null(buf);
    proto_writer_init(&w, buf, cap);
    proto_put_str16(&w, filled('s', 65536), 65536);
    assert_true(w.overflow);
    assert_int_equal(w.len, 0);

    proto_writer_init(&w, buf, cap);
    proto_put_str16(&w, filled('s', 65535), 65535);
    assert_false(w.overflow);
    assert_int_equal(w.len, 65537);
    assert_int_equal(proto_rd16(buf), 65535);

    /* NULL bytes with a length is a caller error, not a crash. */
    proto_writer_init(&w, buf, cap);
    proto_put_str16(&w, NULL, 3);
    assert_true(w.overflow);
    free(buf);
}

static void test_proto_frame_end_patches_length(void **state)
{
    uint8_t buf[32];
    struct proto_writer w;
    size_t start;

    (void)state;
    proto_writer_init(&w, buf, sizeof buf);
    proto_put_raw(&w, "zz", 2); /* a frame need not start at 0 */
    start = proto_frame_begin(&w, PROTO_PING, 0, 0x0a0b0c0d);
    assert_int_equal(start, 2);
    assert_int_equal(proto_frame_end(&w, start), 0);
    assert_bytes(buf + 2, w.len - 2, "\x00\x00\x00\x06\x04\x00\x0a\x0b\x0c\x0d", 10);
    /* A start that leaves no room for a header is refused. */
    assert_int_equal(proto_frame_end(&w, w.len - 3), -1);
    assert_true(w.overflow);
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_frame_end(&w, 5), -1);
}

static void test_proto_counted_frames_reject_bad_counts(void **state)
{
    uint8_t buf[256];
    struct proto_writer w;
    struct proto_msg m = {.topic = SL("t")};
    size_t start;

    (void)state;
    proto_writer_init(&w, buf, sizeof buf);
    start = proto_publish_begin(&w, 1);
    assert_int_equal(proto_publish_end(&w, start, 0), -1);
    assert_true(w.overflow);

    proto_writer_init(&w, buf, sizeof buf);
    start = proto_publish_begin(&w, 1);
    proto_publish_add(&w, &m, NULL);
    assert_int_equal(proto_publish_end(&w, start, PROTO_MAX_BATCH + 1), -1);

    proto_writer_init(&w, buf, sizeof buf);
    start = proto_publish_ack_begin(&w, 1);
    assert_int_equal(proto_publish_ack_end(&w, start, 0), -1);

    proto_writer_init(&w, buf, sizeof buf);
    start = proto_topics_ok_begin(&w, 1);
    assert_int_equal(proto_topics_ok_end(&w, start, PROTO_MAX_TOPICS + 1), -1);

    proto_writer_init(&w, buf, sizeof buf);
    start = proto_topics_ok_begin(&w, 1);
    assert_int_equal(proto_topics_ok_end(&w, start, 0), 0);
}

static void test_proto_encoders_reject_fields_over_max(void **state)
{
    uint8_t buf[4096];
    struct proto_writer w;
    struct proto_header hs[PROTO_MAX_HEADERS + 1];
    struct proto_msg ok = {.topic = SL("t")}, m;
    struct proto_hello hello = {1, {NULL, 0}, {NULL, 0}};
    struct proto_topic_info t = {.name = {NULL, 0}};
    const uint8_t *fill = filled('a', 2048);
    size_t start, i;

    (void)state;
    for (i = 0; i < ARRAY_LEN(hs); i++)
        hs[i] = (struct proto_header){SL("n"), SL("v")};

#define EXPECT_PUBLISH_FAILS(msg, headers)                                                         \
    do {                                                                                           \
        proto_writer_init(&w, buf, sizeof buf);                                                    \
        start = proto_publish_begin(&w, 1);                                                        \
        proto_publish_add(&w, &(msg), (headers));                                                  \
        assert_int_equal(proto_publish_end(&w, start, 1), -1);                                     \
    } while (0)

    m = ok;
    m.topic = (struct proto_slice){fill, PROTO_MAX_TOPIC + 1};
    EXPECT_PUBLISH_FAILS(m, NULL);
    m = ok;
    m.id = (struct proto_slice){fill, PROTO_MAX_ID + 1};
    EXPECT_PUBLISH_FAILS(m, NULL);
    m = ok;
    m.key = (struct proto_slice){fill, PROTO_MAX_KEY + 1};
    EXPECT_PUBLISH_FAILS(m, NULL);
    m = ok;
    m.header_count = PROTO_MAX_HEADERS + 1;
    EXPECT_PUBLISH_FAILS(m, hs);
    m = ok;
    m.header_count = 1; /* headers missing */
    EXPECT_PUBLISH_FAILS(m, NULL);
    hs[0].name = (struct proto_slice){NULL, 0};
    EXPECT_PUBLISH_FAILS(m, hs);
    hs[0].name = (struct proto_slice){fill, PROTO_MAX_HEADER_NAME + 1};
    EXPECT_PUBLISH_FAILS(m, hs);
#undef EXPECT_PUBLISH_FAILS

    hello.client_name = (struct proto_slice){fill, PROTO_MAX_CLIENT_NAME + 1};
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_hello(&w, 1, &hello), -1);
    hello.client_name = (struct proto_slice){NULL, 0};
    hello.token = (struct proto_slice){fill, PROTO_MAX_TOKEN + 1};
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_hello(&w, 1, &hello), -1);

    proto_writer_init(&w, buf, sizeof buf);
    start = proto_publish_ack_begin(&w, 1);
    proto_publish_ack_add(&w, 1, 0, fill, PROTO_MAX_ID + 1);
    assert_int_equal(proto_publish_ack_end(&w, start, 1), -1);

    t.name = (struct proto_slice){fill, PROTO_MAX_TOPIC + 1};
    proto_writer_init(&w, buf, sizeof buf);
    start = proto_topics_ok_begin(&w, 1);
    proto_topics_ok_add(&w, &t);
    assert_int_equal(proto_topics_ok_end(&w, start, 1), -1);

    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_error(&w, 1, 0, 0, "x", 1), -1);
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_error(&w, 1, 0, FERRY_WIRE_CODE_MAX + 1, "x", 1), -1);
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_error(&w, 1, 0, (uint16_t)FERRY_EAUTH, "x", 1), -1);

    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_empty(&w, PROTO_HELLO, 1), -1);
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_empty(&w, 0x77, 1), -1);
    /* Every consumer-group frame has a body. */
    for (i = PROTO_SUBSCRIBE; i <= PROTO_GROUPS_OK; i++) {
        if (i == PROTO_TOPICS)
            continue;
        proto_writer_init(&w, buf, sizeof buf);
        assert_int_equal(proto_encode_empty(&w, (uint8_t)i, 1), -1);
        assert_int_equal(w.len, 0);
    }
}

static void test_proto_encode_error_truncates_long_text(void **state)
{
    uint8_t buf[2048];
    char text[1500];
    struct proto_writer w;
    struct proto_frame f;

    (void)state;
    memset(text, 'x', sizeof text);
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_error(&w, 1, 0, 14, text, sizeof text), 0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.u.error.message.len, PROTO_MAX_ERROR_TEXT);

    /* A two-byte character straddling the limit is dropped whole. */
    text[PROTO_MAX_ERROR_TEXT - 1] = (char)0xc3;
    text[PROTO_MAX_ERROR_TEXT] = (char)0xa9;
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_error(&w, 1, 0, 14, text, sizeof text), 0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.u.error.message.len, PROTO_MAX_ERROR_TEXT - 1);

    /* A NULL message is an empty one. */
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_error(&w, 1, 0, 14, NULL, 5), 0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.u.error.message.len, 0);
}

static void test_proto_publish_msg_bytes_matches_encoding(void **state)
{
    static const struct proto_header hs[] = {{SL("ct"), SL("json")}, {SL("trace"), SL("abc")}};
    struct proto_msg m = {.topic = SL("orders"),
                          .id = SL("o1"),
                          .key = SL("c42"),
                          .header_count = 2,
                          .payload = SL("{}")};
    uint8_t buf[256];
    struct proto_writer w;

    (void)state;
    proto_writer_init(&w, buf, sizeof buf);
    proto_publish_add(&w, &m, hs);
    assert_false(w.overflow);
    assert_int_equal(proto_publish_msg_bytes(&m, hs), w.len);
    /* The first message of v_publish_batch is this one. */
    assert_bytes(buf, w.len, v_publish_batch + 12, w.len);
}

/* --- Consumer-group frames --------------------------------------------- */

/* The fields of a SUBSCRIBE that the range tests vary. */
struct sub_shape {
    uint32_t sub_id;
    size_t topic_len;
    size_t group_len;
    uint8_t start;
    uint32_t max_in_flight;
};

static const struct sub_shape good_sub = {1, 6, 9, PROTO_START_EARLIEST, 100};

/* SUBSCRIBE written field by field, with no regard for the maxima. */
static size_t build_subscribe(const struct sub_shape *s)
{
    struct proto_writer w;
    size_t start;

    proto_writer_init(&w, scratch, sizeof scratch);
    start = proto_frame_begin(&w, PROTO_SUBSCRIBE, 0, 1);
    proto_put_u32(&w, s->sub_id);
    put_filled_str16(&w, 't', s->topic_len);
    put_filled_str16(&w, 'g', s->group_len);
    proto_put_u8(&w, s->start);
    proto_put_u64(&w, 0);
    proto_put_u32(&w, s->max_in_flight);
    proto_put_u32(&w, 0);
    proto_put_u16(&w, 0);
    return end_scratch(&w, start);
}

static size_t build_seek(size_t topic_len, size_t group_len, uint8_t start_pos)
{
    struct proto_writer w;
    size_t start;

    proto_writer_init(&w, scratch, sizeof scratch);
    start = proto_frame_begin(&w, PROTO_SEEK, 0, 1);
    put_filled_str16(&w, 't', topic_len);
    put_filled_str16(&w, 'g', group_len);
    proto_put_u8(&w, start_pos);
    proto_put_u64(&w, 5);
    return end_scratch(&w, start);
}

static size_t build_groups(size_t topic_len)
{
    struct proto_writer w;
    size_t start;

    proto_writer_init(&w, scratch, sizeof scratch);
    start = proto_frame_begin(&w, PROTO_GROUPS, 0, 1);
    put_filled_str16(&w, 't', topic_len);
    return end_scratch(&w, start);
}

static size_t build_nack(uint32_t sub_id, size_t reason_len)
{
    struct proto_writer w;
    size_t start;

    proto_writer_init(&w, scratch, sizeof scratch);
    start = proto_frame_begin(&w, PROTO_NACK, 0, 1);
    proto_put_u32(&w, sub_id);
    proto_put_u64(&w, 3);
    proto_put_u32(&w, 0);
    put_filled_str16(&w, 'r', reason_len);
    return end_scratch(&w, start);
}

/* The fields of a DELIVER that the range tests vary. */
struct deliver_shape {
    uint32_t request_id;
    uint32_t sub_id;
    uint32_t attempt;
    size_t id_len;
    size_t key_len;
    uint16_t header_count;
    size_t header_name_len;
    size_t payload_len;
};

static const struct deliver_shape good_deliver = {0, 1, 1, 2, 0, 1, 2, 8};

static size_t build_deliver(const struct deliver_shape *d)
{
    struct proto_writer w;
    size_t start;
    unsigned j;

    proto_writer_init(&w, scratch, sizeof scratch);
    start = proto_frame_begin(&w, PROTO_DELIVER, 0, d->request_id);
    proto_put_u32(&w, d->sub_id);
    proto_put_u64(&w, 1);
    proto_put_u32(&w, d->attempt);
    proto_put_u64(&w, 0);
    put_filled_str16(&w, 'i', d->id_len);
    put_filled_str16(&w, 'k', d->key_len);
    proto_put_u16(&w, d->header_count);
    for (j = 0; j < d->header_count; j++) {
        put_filled_str16(&w, 'h', d->header_name_len);
        put_filled_str16(&w, 'v', 1);
    }
    proto_put_u32(&w, (uint32_t)d->payload_len);
    proto_put_raw(&w, filled('p', d->payload_len), d->payload_len);
    assert_false(w.overflow);
    return end_scratch(&w, start);
}

/* ACK with count_field in the count and n sequences after it. */
static size_t build_ack(uint32_t sub_id, uint16_t count_field, unsigned n)
{
    struct proto_writer w;
    size_t start;
    unsigned i;

    proto_writer_init(&w, scratch, sizeof scratch);
    start = proto_frame_begin(&w, PROTO_ACK, 0, 1);
    proto_put_u32(&w, sub_id);
    proto_put_u16(&w, count_field);
    for (i = 0; i < n; i++)
        proto_put_u64(&w, i + 1);
    return end_scratch(&w, start);
}

/* ACK_OK with n entries whose code is code. */
static size_t build_ack_ok(uint16_t count_field, unsigned n, uint16_t code)
{
    struct proto_writer w;
    size_t start;
    unsigned i;

    proto_writer_init(&w, scratch, sizeof scratch);
    start = proto_frame_begin(&w, PROTO_ACK_OK, 0, 1);
    proto_put_u16(&w, count_field);
    for (i = 0; i < n; i++) {
        proto_put_u64(&w, i + 1);
        proto_put_u16(&w, code);
    }
    return end_scratch(&w, start);
}

/* GROUPS_OK with n entries whose entry_length is the names + 66 + extra. */
static size_t build_groups_ok(uint32_t count_field, unsigned n, size_t topic_len, size_t group_len,
                              size_t extra)
{
    struct proto_writer w;
    size_t start;
    unsigned i;

    proto_writer_init(&w, scratch, sizeof scratch);
    start = proto_frame_begin(&w, PROTO_GROUPS_OK, 0, 1);
    proto_put_u32(&w, count_field);
    for (i = 0; i < n; i++) {
        proto_put_u16(&w, (uint16_t)(2 + topic_len + 2 + group_len + 62 + extra));
        put_filled_str16(&w, 't', topic_len);
        put_filled_str16(&w, 'g', group_len);
        proto_put_raw(&w, filled(0, 62 + extra), 62 + extra);
    }
    return end_scratch(&w, start);
}

/* TOUCH (u64), CREDIT (u32) or UNSUBSCRIBE (nothing) after sub_id. */
static size_t build_sub_op(uint8_t type, uint32_t sub_id, uint64_t value)
{
    struct proto_writer w;
    size_t start;

    proto_writer_init(&w, scratch, sizeof scratch);
    start = proto_frame_begin(&w, type, 0, 1);
    proto_put_u32(&w, sub_id);
    if (type == PROTO_TOUCH)
        proto_put_u64(&w, value);
    else if (type == PROTO_CREDIT)
        proto_put_u32(&w, (uint32_t)value);
    return end_scratch(&w, start);
}

static ptrdiff_t decode_scratch(size_t n)
{
    return decode_copy(scratch, n, PROTO_DEFAULT_MAX_FRAME);
}

static void test_proto_subscribe_decodes(void **state)
{
    struct proto_frame f;

    (void)state;
    decode_ok(v_subscribe, sizeof v_subscribe, &f);
    assert_int_equal(f.type, PROTO_SUBSCRIBE);
    assert_int_equal(f.request_id, 3);
    assert_int_equal(f.u.subscribe.sub_id, 1);
    assert_slice(f.u.subscribe.topic, "orders");
    assert_slice(f.u.subscribe.group, "inventory");
    assert_int_equal(f.u.subscribe.start, PROTO_START_EARLIEST);
    assert_int_equal(f.u.subscribe.start_value, 0);
    assert_int_equal(f.u.subscribe.max_in_flight, 100);
    assert_int_equal(f.u.subscribe.ack_wait_ms, 30000);
    assert_int_equal(f.u.subscribe.max_deliveries, 5);
}

static void test_proto_subscribe_ok_decodes(void **state)
{
    struct proto_frame f;

    (void)state;
    decode_ok(v_subscribe_ok, sizeof v_subscribe_ok, &f);
    assert_int_equal(f.type, PROTO_SUBSCRIBE_OK);
    assert_int_equal(f.request_id, 3);
    assert_int_equal(f.u.subscribe_ok.sub_id, 1);
    assert_int_equal(f.u.subscribe_ok.cursor, 1);
    assert_int_equal(f.u.subscribe_ok.head_seq, 42);
    assert_int_equal(f.u.subscribe_ok.ack_wait_ms, 30000);
    assert_int_equal(f.u.subscribe_ok.max_deliveries, 5);
}

static void test_proto_deliver_decodes_and_iterates_headers(void **state)
{
    struct proto_frame f;
    struct proto_header_iter it;
    struct proto_header h;

    (void)state;
    decode_ok(v_deliver, sizeof v_deliver, &f);
    assert_int_equal(f.type, PROTO_DELIVER);
    assert_int_equal(f.flags, 0);
    assert_int_equal(f.request_id, 0);
    assert_int_equal(f.u.deliver.sub_id, 1);
    assert_int_equal(f.u.deliver.seq, 1);
    assert_int_equal(f.u.deliver.attempt, 1);
    assert_int_equal(f.u.deliver.ts_ms, 1700000000000ull);
    assert_slice(f.u.deliver.id, "o1");
    assert_int_equal(f.u.deliver.key.len, 0);
    assert_int_equal(f.u.deliver.header_count, 1);
    assert_bytes(f.u.deliver.headers.ptr, f.u.deliver.headers.len,
                 "\x00\x02"
                 "ct\x00\x04"
                 "json",
                 10);
    assert_slice(f.u.deliver.payload, "{\"id\":1}");
    proto_deliver_header_iter_init(&it, &f.u.deliver);
    assert_int_equal(proto_header_next(&it, &h), 1);
    assert_slice(h.name, "ct");
    assert_slice(h.value, "json");
    assert_int_equal(proto_header_next(&it, &h), 0);
    assert_int_equal(proto_header_next(&it, &h), 0);

    decode_ok(v_deliver_redelivered, sizeof v_deliver_redelivered, &f);
    assert_int_equal(f.flags, PROTO_DELIVER_REDELIVERED);
    assert_int_equal(f.u.deliver.sub_id, UINT32_MAX);
    assert_int_equal(f.u.deliver.seq, 7);
    assert_int_equal(f.u.deliver.attempt, 3);
    assert_slice(f.u.deliver.id, "a-9");
    assert_slice(f.u.deliver.key, "c42");
    assert_int_equal(f.u.deliver.header_count, 2);
    assert_int_equal(f.u.deliver.payload.len, 0);
    proto_deliver_header_iter_init(&it, &f.u.deliver);
    assert_int_equal(proto_header_next(&it, &h), 1);
    assert_slice(h.name, "x");
    assert_int_equal(h.value.len, 0);
    assert_int_equal(proto_header_next(&it, &h), 1);
    assert_slice(h.name, "y");
    assert_slice(h.value, "z");
    assert_int_equal(proto_header_next(&it, &h), 0);
}

/* The broker builds a DELIVER from a stored PUBLISH message: its encoded
 * headers slice goes into the DELIVER as is. */
static void test_proto_deliver_reuses_publish_headers(void **state)
{
    struct proto_frame f;
    struct proto_msg_iter it;
    struct proto_msg m;
    struct proto_deliver d;
    struct proto_writer w;
    uint8_t buf[sizeof v_deliver];

    (void)state;
    decode_ok(v_publish, sizeof v_publish, &f);
    proto_msg_iter_init(&it, &f.u.publish);
    assert_int_equal(proto_msg_next(&it, &m), 1);
    d = (struct proto_deliver){.sub_id = 1,
                               .seq = 1,
                               .attempt = 1,
                               .ts_ms = 1700000000000ull,
                               .id = m.id,
                               .key = m.key,
                               .header_count = m.header_count,
                               .headers = m.headers,
                               .payload = m.payload};
    assert_int_equal(proto_deliver_bytes(&d), sizeof v_deliver);
    proto_writer_init(&w, buf, sizeof buf);
    assert_int_equal(proto_encode_deliver(&w, 0, &d), 0);
    assert_bytes(buf, w.len, v_deliver, sizeof v_deliver);
}

static void test_proto_ack_decodes(void **state)
{
    struct proto_frame f;

    (void)state;
    decode_ok(v_ack, sizeof v_ack, &f);
    assert_int_equal(f.type, PROTO_ACK);
    assert_int_equal(f.request_id, 4);
    assert_int_equal(f.u.ack.sub_id, 1);
    assert_int_equal(f.u.ack.count, 2);
    assert_ptr_equal(f.u.ack.seqs.ptr, v_ack + 16);
    assert_int_equal(f.u.ack.seqs.len, 16);
    assert_int_equal(proto_rd64(f.u.ack.seqs.ptr), 1);
    assert_int_equal(proto_rd64(f.u.ack.seqs.ptr + 8), 7);
}

static void test_proto_ack_ok_iterates(void **state)
{
    struct proto_frame f;
    struct proto_ack_ok_iter it;
    uint64_t seq;
    uint16_t code;

    (void)state;
    decode_ok(v_ack_ok, sizeof v_ack_ok, &f);
    assert_int_equal(f.type, PROTO_ACK_OK);
    assert_int_equal(f.request_id, 4);
    assert_int_equal(f.u.ack_ok.count, 2);
    proto_ack_ok_iter_init(&it, &f.u.ack_ok);
    assert_int_equal(proto_ack_ok_next(&it, &seq, &code), 1);
    assert_int_equal(seq, 1);
    assert_int_equal(code, 0);
    assert_int_equal(proto_ack_ok_next(&it, &seq, &code), 1);
    assert_int_equal(seq, 7);
    assert_int_equal(code, -FERRY_ENOT_DELIVERED);
    assert_int_equal(proto_ack_ok_next(&it, &seq, &code), 0);
    assert_int_equal(proto_ack_ok_next(&it, &seq, &code), 0);

    /* The reply to CREDIT and UNSUBSCRIBE: no entries. */
    decode_ok(v_ack_ok_empty, sizeof v_ack_ok_empty, &f);
    assert_int_equal(f.u.ack_ok.count, 0);
    assert_int_equal(f.u.ack_ok.entries.len, 0);
    proto_ack_ok_iter_init(&it, &f.u.ack_ok);
    assert_int_equal(proto_ack_ok_next(&it, &seq, &code), 0);
}

static void test_proto_nack_touch_credit_unsubscribe_decode(void **state)
{
    struct proto_frame f;

    (void)state;
    decode_ok(v_nack, sizeof v_nack, &f);
    assert_int_equal(f.type, PROTO_NACK);
    assert_int_equal(f.request_id, 5);
    assert_int_equal(f.u.nack.sub_id, 1);
    assert_int_equal(f.u.nack.seq, 3);
    assert_int_equal(f.u.nack.delay_ms, 5000);
    assert_slice(f.u.nack.reason, "timeout");

    decode_ok(v_touch, sizeof v_touch, &f);
    assert_int_equal(f.type, PROTO_TOUCH);
    assert_int_equal(f.request_id, 6);
    assert_int_equal(f.u.sub_op.sub_id, 1);
    assert_int_equal(f.u.sub_op.value, 3);

    decode_ok(v_credit, sizeof v_credit, &f);
    assert_int_equal(f.type, PROTO_CREDIT);
    assert_int_equal(f.request_id, 7);
    assert_int_equal(f.u.sub_op.sub_id, 1);
    assert_int_equal(f.u.sub_op.value, 200);

    decode_ok(v_unsubscribe, sizeof v_unsubscribe, &f);
    assert_int_equal(f.type, PROTO_UNSUBSCRIBE);
    assert_int_equal(f.request_id, 8);
    assert_int_equal(f.u.sub_op.sub_id, 1);
    assert_int_equal(f.u.sub_op.value, 0);
}

static void test_proto_seek_and_groups_decode(void **state)
{
    struct proto_frame f;

    (void)state;
    decode_ok(v_seek, sizeof v_seek, &f);
    assert_int_equal(f.type, PROTO_SEEK);
    assert_int_equal(f.request_id, 9);
    assert_slice(f.u.seek.topic, "orders");
    assert_slice(f.u.seek.group, "inventory");
    assert_int_equal(f.u.seek.start, PROTO_START_SEQ);
    assert_int_equal(f.u.seek.value, 100);

    decode_ok(v_groups, sizeof v_groups, &f);
    assert_int_equal(f.type, PROTO_GROUPS);
    assert_int_equal(f.request_id, 10);
    assert_slice(f.u.groups.topic, "orders");
    decode_ok(v_groups_all, sizeof v_groups_all, &f);
    assert_int_equal(f.u.groups.topic.len, 0);
}

static void test_proto_groups_ok_iterates_and_skips_appended_fields(void **state)
{
    struct proto_frame f;
    struct proto_group_iter it;
    struct proto_group_info g;

    (void)state;
    decode_ok(v_groups_ok, sizeof v_groups_ok, &f);
    assert_int_equal(f.type, PROTO_GROUPS_OK);
    assert_int_equal(f.request_id, 10);
    assert_int_equal(f.u.groups_ok.count, 2);
    proto_group_iter_init(&it, &f.u.groups_ok);
    assert_int_equal(proto_group_next(&it, &g), 1);
    assert_slice(g.topic, "orders");
    assert_slice(g.group, "inventory");
    assert_int_equal(g.cursor, 40);
    assert_int_equal(g.ack_floor, 37);
    assert_int_equal(g.lag, 6);
    assert_int_equal(g.in_flight, 3);
    assert_int_equal(g.consumers, 2);
    assert_int_equal(g.redelivered, 4);
    assert_int_equal(g.dead_lettered, 1);
    assert_int_equal(g.oldest_unacked_ms, 1500);
    assert_int_equal(g.ack_wait_ms, 30000);
    assert_int_equal(g.max_deliveries, 5);
    /* The second entry carries 2 appended bytes; the iterator steps over
     * them and lands exactly on the end. */
    assert_int_equal(proto_group_next(&it, &g), 1);
    assert_slice(g.topic, "orders");
    assert_slice(g.group, "email");
    assert_int_equal(g.cursor, 43);
    assert_int_equal(g.ack_floor, 43);
    assert_int_equal(g.lag, 0);
    assert_int_equal(g.in_flight, 0);
    assert_int_equal(g.consumers, 0);
    assert_int_equal(g.oldest_unacked_ms, 0);
    assert_int_equal(g.ack_wait_ms, 60000);
    assert_int_equal(g.max_deliveries, 0);
    assert_ptr_equal(it.p, v_groups_ok + sizeof v_groups_ok);
    assert_int_equal(proto_group_next(&it, &g), 0);

    /* An empty list is legal; so is an entry extended by a lot. */
    decode_ok(scratch, build_groups_ok(0, 0, 0, 0, 0), &f);
    assert_int_equal(f.u.groups_ok.count, 0);
    proto_group_iter_init(&it, &f.u.groups_ok);
    assert_int_equal(proto_group_next(&it, &g), 0);
    decode_ok(scratch, build_groups_ok(2, 2, 3, 4, 1000), &f);
    proto_group_iter_init(&it, &f.u.groups_ok);
    assert_int_equal(proto_group_next(&it, &g), 1);
    assert_int_equal(g.topic.len, 3);
    assert_int_equal(g.group.len, 4);
    assert_int_equal(proto_group_next(&it, &g), 1);
    assert_int_equal(proto_group_next(&it, &g), 0);
}

/* Each consumer frame whose sub_id is 0 is MALFORMED; with 1 it passes. */
static void test_proto_sub_id_zero_is_malformed(void **state)
{
    static const uint8_t sub_op_types[] = {PROTO_TOUCH, PROTO_CREDIT, PROTO_UNSUBSCRIBE};
    struct sub_shape s = good_sub;
    struct deliver_shape d = good_deliver;
    uint8_t buf[64];
    size_t i;

    (void)state;
    assert_true(decode_scratch(build_subscribe(&s)) > 0);
    s.sub_id = 0;
    assert_int_equal(decode_scratch(build_subscribe(&s)), FERRY_EMALFORMED);

    memcpy(buf, v_subscribe_ok, sizeof v_subscribe_ok);
    memset(buf + 10, 0, 4);
    assert_int_equal(decode_copy(buf, sizeof v_subscribe_ok, PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);

    assert_true(decode_scratch(build_deliver(&d)) > 0);
    d.sub_id = 0;
    assert_int_equal(decode_scratch(build_deliver(&d)), FERRY_EMALFORMED);

    assert_true(decode_scratch(build_ack(1, 1, 1)) > 0);
    assert_int_equal(decode_scratch(build_ack(0, 1, 1)), FERRY_EMALFORMED);

    assert_true(decode_scratch(build_nack(1, 0)) > 0);
    assert_int_equal(decode_scratch(build_nack(0, 0)), FERRY_EMALFORMED);

    for (i = 0; i < sizeof sub_op_types; i++) {
        assert_true(decode_scratch(build_sub_op(sub_op_types[i], 1, 1)) > 0);
        assert_int_equal(decode_scratch(build_sub_op(sub_op_types[i], 0, 1)), FERRY_EMALFORMED);
    }
}

static void test_proto_start_over_time_is_malformed(void **state)
{
    struct sub_shape s = good_sub;
    unsigned start;

    (void)state;
    for (start = PROTO_START_EARLIEST; start <= PROTO_START_TIME; start++) {
        s.start = (uint8_t)start;
        assert_true(decode_scratch(build_subscribe(&s)) > 0);
        assert_true(decode_scratch(build_seek(1, 1, (uint8_t)start)) > 0);
    }
    for (start = PROTO_START_TIME + 1; start <= UINT8_MAX; start++) {
        s.start = (uint8_t)start;
        assert_int_equal(decode_scratch(build_subscribe(&s)), FERRY_EMALFORMED);
        assert_int_equal(decode_scratch(build_seek(1, 1, (uint8_t)start)), FERRY_EMALFORMED);
    }
}

static void test_proto_window_outside_1_to_65535_is_malformed(void **state)
{
    static const uint32_t good[] = {1, 2, 100, PROTO_MAX_WINDOW};
    static const uint32_t bad[] = {0, PROTO_MAX_WINDOW + 1, 0x00100000, UINT32_MAX};
    struct sub_shape s = good_sub;
    size_t i;

    (void)state;
    for (i = 0; i < ARRAY_LEN(good); i++) {
        s.max_in_flight = good[i];
        assert_true(decode_scratch(build_subscribe(&s)) > 0);
        assert_true(decode_scratch(build_sub_op(PROTO_CREDIT, 1, good[i])) > 0);
    }
    for (i = 0; i < ARRAY_LEN(bad); i++) {
        s.max_in_flight = bad[i];
        assert_int_equal(decode_scratch(build_subscribe(&s)), FERRY_EMALFORMED);
        assert_int_equal(decode_scratch(build_sub_op(PROTO_CREDIT, 1, bad[i])), FERRY_EMALFORMED);
    }
}

static void test_proto_deliver_attempt_zero_and_request_id_are_malformed(void **state)
{
    struct deliver_shape d = good_deliver;
    uint8_t buf[sizeof v_deliver];

    (void)state;
    d.attempt = 0;
    assert_int_equal(decode_scratch(build_deliver(&d)), FERRY_EMALFORMED);
    d.attempt = UINT32_MAX;
    assert_true(decode_scratch(build_deliver(&d)) > 0);

    /* A DELIVER is never a reply: request_id must be 0. */
    d = good_deliver;
    d.request_id = 1;
    assert_int_equal(decode_scratch(build_deliver(&d)), FERRY_EMALFORMED);
    memcpy(buf, v_deliver, sizeof buf);
    buf[9] = 0x01;
    assert_int_equal(decode_copy(buf, sizeof buf, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
    /* Still judged only once the frame is whole. */
    assert_int_equal(decode_copy(buf, sizeof buf - 1, PROTO_DEFAULT_MAX_FRAME), 0);
}

static void test_proto_consumer_fields_over_their_maximum_are_malformed(void **state)
{
    struct sub_shape s = good_sub;
    struct deliver_shape d;

    (void)state;
    /* SUBSCRIBE topic and group: 200 pass, 201 fail, empty is decodable. */
    s.topic_len = PROTO_MAX_TOPIC;
    s.group_len = PROTO_MAX_GROUP;
    assert_true(decode_scratch(build_subscribe(&s)) > 0);
    s.topic_len = PROTO_MAX_TOPIC + 1;
    assert_int_equal(decode_scratch(build_subscribe(&s)), FERRY_EMALFORMED);
    s.topic_len = PROTO_MAX_TOPIC;
    s.group_len = PROTO_MAX_GROUP + 1;
    assert_int_equal(decode_scratch(build_subscribe(&s)), FERRY_EMALFORMED);
    s.topic_len = 0;
    s.group_len = 0;
    assert_true(decode_scratch(build_subscribe(&s)) > 0);

    /* SEEK likewise. */
    assert_true(decode_scratch(build_seek(PROTO_MAX_TOPIC, PROTO_MAX_GROUP, 0)) > 0);
    assert_true(decode_scratch(build_seek(0, 0, 0)) > 0);
    assert_int_equal(decode_scratch(build_seek(PROTO_MAX_TOPIC + 1, 1, 0)), FERRY_EMALFORMED);
    assert_int_equal(decode_scratch(build_seek(1, PROTO_MAX_GROUP + 1, 0)), FERRY_EMALFORMED);

    /* GROUPS topic. */
    assert_true(decode_scratch(build_groups(PROTO_MAX_TOPIC)) > 0);
    assert_int_equal(decode_scratch(build_groups(PROTO_MAX_TOPIC + 1)), FERRY_EMALFORMED);

    /* NACK reason. */
    assert_true(decode_scratch(build_nack(1, PROTO_MAX_REASON)) > 0);
    assert_int_equal(decode_scratch(build_nack(1, PROTO_MAX_REASON + 1)), FERRY_EMALFORMED);

    /* DELIVER: id 128, key 1024, 64 headers, header name 1..255. */
    d = (struct deliver_shape){
        0, 1, 1, PROTO_MAX_ID, PROTO_MAX_KEY, PROTO_MAX_HEADERS, PROTO_MAX_HEADER_NAME, 10};
    assert_true(decode_scratch(build_deliver(&d)) > 0);
    d.id_len = PROTO_MAX_ID + 1;
    assert_int_equal(decode_scratch(build_deliver(&d)), FERRY_EMALFORMED);
    d.id_len = PROTO_MAX_ID;
    d.key_len = PROTO_MAX_KEY + 1;
    assert_int_equal(decode_scratch(build_deliver(&d)), FERRY_EMALFORMED);
    d.key_len = PROTO_MAX_KEY;
    d.header_count = PROTO_MAX_HEADERS + 1;
    assert_int_equal(decode_scratch(build_deliver(&d)), FERRY_EMALFORMED);
    d.header_count = PROTO_MAX_HEADERS;
    d.header_name_len = PROTO_MAX_HEADER_NAME + 1;
    assert_int_equal(decode_scratch(build_deliver(&d)), FERRY_EMALFORMED);
    d.header_name_len = 0;
    assert_int_equal(decode_scratch(build_deliver(&d)), FERRY_EMALFORMED);

    /* GROUPS_OK topic and group. */
    assert_true(decode_scratch(build_groups_ok(1, 1, PROTO_MAX_TOPIC, PROTO_MAX_GROUP, 0)) > 0);
    assert_int_equal(decode_scratch(build_groups_ok(1, 1, PROTO_MAX_TOPIC + 1, 1, 0)),
                     FERRY_EMALFORMED);
    assert_int_equal(decode_scratch(build_groups_ok(1, 1, 1, PROTO_MAX_GROUP + 1, 0)),
                     FERRY_EMALFORMED);

    /* ACK_OK code: 0..99. */
    assert_true(decode_scratch(build_ack_ok(1, 1, FERRY_WIRE_CODE_MAX)) > 0);
    assert_int_equal(decode_scratch(build_ack_ok(1, 1, FERRY_WIRE_CODE_MAX + 1)), FERRY_EMALFORMED);
    assert_int_equal(decode_scratch(build_ack_ok(1, 1, UINT16_MAX)), FERRY_EMALFORMED);
}

static void test_proto_consumer_counts_are_checked(void **state)
{
    size_t n;

    (void)state;
    /* ACK: 1..10000, and exactly that many sequences. */
    n = build_ack(1, PROTO_MAX_ACKS, PROTO_MAX_ACKS);
    assert_int_equal(decode_scratch(n), (ptrdiff_t)n);
    assert_int_equal(decode_scratch(build_ack(1, 0, 0)), FERRY_EMALFORMED);
    assert_int_equal(decode_scratch(build_ack(1, 0, 1)), FERRY_EMALFORMED);
    assert_int_equal(decode_scratch(build_ack(1, PROTO_MAX_ACKS + 1, PROTO_MAX_ACKS + 1)),
                     FERRY_EMALFORMED);
    assert_int_equal(decode_scratch(build_ack(1, UINT16_MAX, 1)), FERRY_EMALFORMED);
    assert_int_equal(decode_scratch(build_ack(1, 3, 2)), FERRY_EMALFORMED);
    assert_int_equal(decode_scratch(build_ack(1, 2, 3)), FERRY_EMALFORMED);

    /* ACK_OK: 0..10000. */
    n = build_ack_ok(PROTO_MAX_ACKS, PROTO_MAX_ACKS, 0);
    assert_int_equal(decode_scratch(n), (ptrdiff_t)n);
    assert_int_equal(decode_scratch(build_ack_ok(PROTO_MAX_ACKS + 1, PROTO_MAX_ACKS + 1, 0)),
                     FERRY_EMALFORMED);
    assert_int_equal(decode_scratch(build_ack_ok(2, 1, 0)), FERRY_EMALFORMED);
    assert_int_equal(decode_scratch(build_ack_ok(0, 1, 0)), FERRY_EMALFORMED);

    /* GROUPS_OK: 0..100000, entries as counted, each covering the v1
     * fields. */
    assert_int_equal(decode_scratch(build_groups_ok(PROTO_MAX_GROUPS + 1, 0, 0, 0, 0)),
                     FERRY_EMALFORMED);
    assert_int_equal(decode_scratch(build_groups_ok(UINT32_MAX, 0, 0, 0, 0)), FERRY_EMALFORMED);
    assert_int_equal(decode_scratch(build_groups_ok(2, 1, 1, 1, 0)), FERRY_EMALFORMED);
    assert_int_equal(decode_scratch(build_groups_ok(1, 2, 1, 1, 0)), FERRY_EMALFORMED);
    n = build_groups_ok(1, 1, 1, 1, 0);
    proto_wr16(scratch + 14, (uint16_t)(proto_rd16(scratch + 14) - 1));
    assert_int_equal(decode_scratch(n), FERRY_EMALFORMED);
}

static void test_proto_consumer_field_lengths_past_the_body_are_malformed(void **state)
{
    uint8_t buf[256];

    (void)state;
    /* SUBSCRIBE group length runs into the fixed fields and past the end. */
    memcpy(buf, v_subscribe, sizeof v_subscribe);
    buf[23] = 100;
    assert_int_equal(decode_copy(buf, sizeof v_subscribe, PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
    /* DELIVER payload length 0xffffffff. */
    memcpy(buf, v_deliver, sizeof v_deliver);
    memset(buf + 52, 0xff, 4);
    assert_int_equal(decode_copy(buf, sizeof v_deliver, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
    /* DELIVER header_count 2, one header present. */
    memcpy(buf, v_deliver, sizeof v_deliver);
    buf[41] = 2;
    assert_int_equal(decode_copy(buf, sizeof v_deliver, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
    /* NACK reason says 8 bytes, 7 follow. */
    memcpy(buf, v_nack, sizeof v_nack);
    buf[27] = 8;
    assert_int_equal(decode_copy(buf, sizeof v_nack, PROTO_DEFAULT_MAX_FRAME), FERRY_EMALFORMED);
    /* GROUPS_OK first entry_length past the end. */
    memcpy(buf, v_groups_ok_one, sizeof v_groups_ok_one);
    buf[15] = 0x52;
    assert_int_equal(decode_copy(buf, sizeof v_groups_ok_one, PROTO_DEFAULT_MAX_FRAME),
                     FERRY_EMALFORMED);
    /* TOUCH cut inside seq; CREDIT with a u64 where a u32 belongs. */
    assert_int_equal(decode_scratch(build_raw(PROTO_TOUCH, "\x00\x00\x00\x01\x00\x00\x00", 7)),
                     FERRY_EMALFORMED);
    assert_int_equal(decode_scratch(build_raw(
                         PROTO_CREDIT, "\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01", 12)),
                     FERRY_EMALFORMED);
    /* UNSUBSCRIBE with anything after sub_id. */
    assert_int_equal(decode_scratch(build_raw(PROTO_UNSUBSCRIBE, "\x00\x00\x00\x01\x00", 5)),
                     FERRY_EMALFORMED);
}

static void test_proto_deliver_bytes_matches_encoding(void **state)
{
    uint8_t payload[3000];
    uint8_t headers[PROTO_MAX_HEADERS * (2 + 3 + 2 + 5)];
    struct proto_deliver d = {.sub_id = 9, .seq = 1, .attempt = 1};
    struct proto_writer w;
    struct proto_frame f;
    uint8_t *buf = malloc(8192);
    size_t hlen = 0, i, n;

    (void)state;
    assert_non_null(buf);
    memset(payload, 'p', sizeof payload);
    for (i = 0; i < PROTO_MAX_HEADERS; i++) {
        memcpy(headers + hlen,
               "\x00\x03"
               "abc\x00\x05"
               "value",
               12);
        hlen += 12;
    }
    /* Empty, then each variable field grown. */
    for (i = 0; i < 5; i++) {
        if (i >= 1)
            d.id = (struct proto_slice){payload, PROTO_MAX_ID};
        if (i >= 2)
            d.key = (struct proto_slice){payload, PROTO_MAX_KEY};
        if (i >= 3) {
            d.header_count = PROTO_MAX_HEADERS;
            d.headers = (struct proto_slice){headers, hlen};
        }
        if (i >= 4)
            d.payload = (struct proto_slice){payload, sizeof payload};
        n = proto_deliver_bytes(&d);
        proto_writer_init(&w, buf, 8192);
        assert_int_equal(proto_encode_deliver(&w, 0, &d), 0);
        assert_int_equal(w.len, n);
        decode_ok(buf, n, &f);
        assert_int_equal(f.u.deliver.header_count, d.header_count);
        /* An exactly-sized buffer is enough; one byte less is not. */
        proto_writer_init(&w, buf, n);
        assert_int_equal(proto_encode_deliver(&w, 0, &d), 0);
        proto_writer_init(&w, buf, n - 1);
        assert_int_equal(proto_encode_deliver(&w, 0, &d), -1);
    }
    /* PROTOCOL.md §9.10: a DELIVER is its message size + 428 bytes at most
     * (here: a 128-byte id and 64 headers, the worst case). */
    assert_int_equal(proto_deliver_bytes(&d),
                     428 + PROTO_MAX_KEY + PROTO_MAX_HEADERS * (3 + 5) + sizeof payload);
    free(buf);
}

static void test_proto_consumer_round_trips(void **state)
{
    static uint64_t seqs[PROTO_MAX_ACKS];
    size_t cap = 2 * 1024 * 1024;
    uint8_t *buf = malloc(cap);
    uint8_t big[PROTO_MAX_KEY];
    struct proto_writer w;
    struct proto_frame f;
    struct proto_subscribe sub;
    struct proto_subscribe_ok sok;
    struct proto_nack nack;
    struct proto_seek seek;
    struct proto_group_info g;
    struct proto_group_iter git;
    struct proto_ack_ok_iter ait;
    uint64_t seq;
    uint16_t code;
    size_t start, i;

    (void)state;
    assert_non_null(buf);
    memset(big, 'a', sizeof big);

    /* SUBSCRIBE with every field at an extreme. */
    sub = (struct proto_subscribe){UINT32_MAX,
                                   {big, PROTO_MAX_TOPIC},
                                   {big, PROTO_MAX_GROUP},
                                   PROTO_START_TIME,
                                   UINT64_MAX,
                                   PROTO_MAX_WINDOW,
                                   UINT32_MAX,
                                   UINT16_MAX,
                                   0,
                                   {0},
                                   0};
    proto_writer_init(&w, buf, cap);
    assert_int_equal(proto_encode_subscribe(&w, 11, &sub), 0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.type, PROTO_SUBSCRIBE);
    assert_int_equal(f.request_id, 11);
    assert_int_equal(f.u.subscribe.sub_id, UINT32_MAX);
    assert_bytes(f.u.subscribe.topic.ptr, f.u.subscribe.topic.len, big, PROTO_MAX_TOPIC);
    assert_bytes(f.u.subscribe.group.ptr, f.u.subscribe.group.len, big, PROTO_MAX_GROUP);
    assert_int_equal(f.u.subscribe.start, PROTO_START_TIME);
    assert_int_equal(f.u.subscribe.start_value, UINT64_MAX);
    assert_int_equal(f.u.subscribe.max_in_flight, PROTO_MAX_WINDOW);
    assert_int_equal(f.u.subscribe.ack_wait_ms, UINT32_MAX);
    assert_int_equal(f.u.subscribe.max_deliveries, UINT16_MAX);

    sok = (struct proto_subscribe_ok){1, UINT64_MAX, UINT64_MAX - 1, 1, 0, 0, 0};
    proto_writer_init(&w, buf, cap);
    assert_int_equal(proto_encode_subscribe_ok(&w, 12, &sok), 0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.u.subscribe_ok.sub_id, 1);
    assert_int_equal(f.u.subscribe_ok.cursor, UINT64_MAX);
    assert_int_equal(f.u.subscribe_ok.head_seq, UINT64_MAX - 1);
    assert_int_equal(f.u.subscribe_ok.ack_wait_ms, 1);
    assert_int_equal(f.u.subscribe_ok.max_deliveries, 0);

    /* ACK of PROTO_MAX_ACKS sequences. */
    for (i = 0; i < PROTO_MAX_ACKS; i++)
        seqs[i] = UINT64_MAX - i;
    proto_writer_init(&w, buf, cap);
    assert_int_equal(proto_encode_ack(&w, 13, 2, seqs, PROTO_MAX_ACKS), 0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.u.ack.sub_id, 2);
    assert_int_equal(f.u.ack.count, PROTO_MAX_ACKS);
    for (i = 0; i < PROTO_MAX_ACKS; i++)
        assert_int_equal(proto_rd64(f.u.ack.seqs.ptr + 8 * i), UINT64_MAX - i);

    /* ACK_OK with PROTO_MAX_ACKS entries. */
    proto_writer_init(&w, buf, cap);
    start = proto_ack_ok_begin(&w, 13);
    for (i = 0; i < PROTO_MAX_ACKS; i++)
        proto_ack_ok_add(&w, seqs[i], (uint16_t)(i % (FERRY_WIRE_CODE_MAX + 1)));
    assert_int_equal(proto_ack_ok_end(&w, start, PROTO_MAX_ACKS), 0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.u.ack_ok.count, PROTO_MAX_ACKS);
    proto_ack_ok_iter_init(&ait, &f.u.ack_ok);
    for (i = 0; proto_ack_ok_next(&ait, &seq, &code); i++) {
        assert_int_equal(seq, seqs[i]);
        assert_int_equal(code, i % (FERRY_WIRE_CODE_MAX + 1));
    }
    assert_int_equal(i, PROTO_MAX_ACKS);

    /* NACK with the longest reason. */
    nack = (struct proto_nack){3, UINT64_MAX, UINT32_MAX, {big, PROTO_MAX_REASON}};
    proto_writer_init(&w, buf, cap);
    assert_int_equal(proto_encode_nack(&w, 14, &nack), 0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.u.nack.sub_id, 3);
    assert_int_equal(f.u.nack.seq, UINT64_MAX);
    assert_int_equal(f.u.nack.delay_ms, UINT32_MAX);
    assert_bytes(f.u.nack.reason.ptr, f.u.nack.reason.len, big, PROTO_MAX_REASON);

    /* TOUCH, CREDIT, UNSUBSCRIBE. */
    proto_writer_init(&w, buf, cap);
    assert_int_equal(proto_encode_sub_op(&w, PROTO_TOUCH, 15, 4, UINT64_MAX), 0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.type, PROTO_TOUCH);
    assert_int_equal(f.u.sub_op.value, UINT64_MAX);
    proto_writer_init(&w, buf, cap);
    assert_int_equal(proto_encode_sub_op(&w, PROTO_CREDIT, 16, 4, PROTO_MAX_WINDOW), 0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.type, PROTO_CREDIT);
    assert_int_equal(f.u.sub_op.value, PROTO_MAX_WINDOW);
    proto_writer_init(&w, buf, cap);
    assert_int_equal(proto_encode_sub_op(&w, PROTO_UNSUBSCRIBE, 17, UINT32_MAX, 0), 0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.type, PROTO_UNSUBSCRIBE);
    assert_int_equal(f.u.sub_op.sub_id, UINT32_MAX);
    assert_int_equal(w.len, PROTO_HEADER_BYTES + 4);

    /* SEEK by time. */
    seek = (struct proto_seek){{big, PROTO_MAX_TOPIC}, {big, 1}, PROTO_START_TIME, UINT64_MAX};
    proto_writer_init(&w, buf, cap);
    assert_int_equal(proto_encode_seek(&w, 18, &seek), 0);
    decode_ok(buf, w.len, &f);
    assert_bytes(f.u.seek.topic.ptr, f.u.seek.topic.len, big, PROTO_MAX_TOPIC);
    assert_bytes(f.u.seek.group.ptr, f.u.seek.group.len, big, 1);
    assert_int_equal(f.u.seek.start, PROTO_START_TIME);
    assert_int_equal(f.u.seek.value, UINT64_MAX);

    /* GROUPS with the longest topic. */
    proto_writer_init(&w, buf, cap);
    assert_int_equal(proto_encode_groups(&w, 19, big, PROTO_MAX_TOPIC), 0);
    decode_ok(buf, w.len, &f);
    assert_bytes(f.u.groups.topic.ptr, f.u.groups.topic.len, big, PROTO_MAX_TOPIC);

    /* GROUPS_OK: 1000 entries, names at their maximum. */
    proto_writer_init(&w, buf, cap);
    start = proto_groups_ok_begin(&w, 20);
    for (i = 0; i < 1000; i++) {
        g = (struct proto_group_info){{big, PROTO_MAX_TOPIC},
                                      {big, PROTO_MAX_GROUP},
                                      i,
                                      i + 1,
                                      i + 2,
                                      (uint32_t)i + 3,
                                      (uint32_t)i + 4,
                                      i + 5,
                                      i + 6,
                                      UINT64_MAX,
                                      UINT32_MAX,
                                      UINT16_MAX};
        proto_groups_ok_add(&w, &g);
    }
    assert_int_equal(proto_groups_ok_end(&w, start, 1000), 0);
    decode_ok(buf, w.len, &f);
    assert_int_equal(f.u.groups_ok.count, 1000);
    proto_group_iter_init(&git, &f.u.groups_ok);
    for (i = 0; proto_group_next(&git, &g); i++) {
        assert_bytes(g.topic.ptr, g.topic.len, big, PROTO_MAX_TOPIC);
        assert_bytes(g.group.ptr, g.group.len, big, PROTO_MAX_GROUP);
        assert_int_equal(g.cursor, i);
        assert_int_equal(g.ack_floor, i + 1);
        assert_int_equal(g.lag, i + 2);
        assert_int_equal(g.in_flight, i + 3);
        assert_int_equal(g.consumers, i + 4);
        assert_int_equal(g.redelivered, i + 5);
        assert_int_equal(g.dead_lettered, i + 6);
        assert_int_equal(g.oldest_unacked_ms, UINT64_MAX);
        assert_int_equal(g.ack_wait_ms, UINT32_MAX);
        assert_int_equal(g.max_deliveries, UINT16_MAX);
    }
    assert_int_equal(i, 1000);

    free(buf);
}

static void test_proto_consumer_encoders_reject_what_decoders_reject(void **state)
{
    static const uint64_t seqs[PROTO_MAX_ACKS + 1];
    uint8_t buf[4096];
    const uint8_t *fill = filled('a', 2048);
    struct proto_writer w;
    const struct proto_subscribe sub_ok = {
        1, SL("orders"), SL("inventory"), PROTO_START_EARLIEST, 0, 100, 0, 0, 0, {0}, 0};
    const struct proto_deliver del_ok = {.sub_id = 1, .attempt = 1, .id = SL("x")};
    struct proto_subscribe sub;
    struct proto_subscribe_ok sok = {0, 1, 1, 1, 1, 0, 0};
    struct proto_deliver d;
    struct proto_nack nack = {1, 1, 0, {NULL, 0}};
    struct proto_seek seek = {SL("t"), SL("g"), PROTO_START_LATEST, 0};
    struct proto_group_info g = {0};
    size_t start;

    (void)state;
#define EXPECT_FAIL(call)                                                                          \
    do {                                                                                           \
        memset(buf, 0xa5, sizeof buf);                                                             \
        proto_writer_init(&w, buf, sizeof buf);                                                    \
        assert_int_equal((call), -1);                                                              \
        assert_true(w.overflow);                                                                   \
    } while (0)
#define EXPECT_OK(call)                                                                            \
    do {                                                                                           \
        proto_writer_init(&w, buf, sizeof buf);                                                    \
        assert_int_equal((call), 0);                                                               \
        assert_true(proto_decode(buf, w.len, PROTO_DEFAULT_MAX_FRAME, &(struct proto_frame){0}) >  \
                    0);                                                                            \
    } while (0)

    EXPECT_OK(proto_encode_subscribe(&w, 1, &sub_ok));
    sub = sub_ok;
    sub.sub_id = 0;
    EXPECT_FAIL(proto_encode_subscribe(&w, 1, &sub));
    /* Nothing at all was written. */
    assert_int_equal(w.len, 0);
    assert_int_equal(buf[0], 0xa5);
    sub = sub_ok;
    sub.topic = (struct proto_slice){fill, PROTO_MAX_TOPIC + 1};
    EXPECT_FAIL(proto_encode_subscribe(&w, 1, &sub));
    sub = sub_ok;
    sub.group = (struct proto_slice){fill, PROTO_MAX_GROUP + 1};
    EXPECT_FAIL(proto_encode_subscribe(&w, 1, &sub));
    sub = sub_ok;
    sub.start = PROTO_START_TIME + 1;
    EXPECT_FAIL(proto_encode_subscribe(&w, 1, &sub));
    sub = sub_ok;
    sub.max_in_flight = 0;
    EXPECT_FAIL(proto_encode_subscribe(&w, 1, &sub));
    sub.max_in_flight = PROTO_MAX_WINDOW + 1;
    EXPECT_FAIL(proto_encode_subscribe(&w, 1, &sub));

    EXPECT_FAIL(proto_encode_subscribe_ok(&w, 1, &sok));

    EXPECT_OK(proto_encode_deliver(&w, 0, &del_ok));
    d = del_ok;
    d.sub_id = 0;
    EXPECT_FAIL(proto_encode_deliver(&w, 0, &d));
    d = del_ok;
    d.attempt = 0;
    EXPECT_FAIL(proto_encode_deliver(&w, 0, &d));
    d = del_ok;
    d.id = (struct proto_slice){fill, PROTO_MAX_ID + 1};
    EXPECT_FAIL(proto_encode_deliver(&w, 0, &d));
    d = del_ok;
    d.key = (struct proto_slice){fill, PROTO_MAX_KEY + 1};
    EXPECT_FAIL(proto_encode_deliver(&w, 0, &d));
    /* Headers must be exactly header_count well-formed pairs. */
    d = del_ok;
    d.header_count = 1;
    EXPECT_FAIL(proto_encode_deliver(&w, 0, &d));
    d.headers = (struct proto_slice)SL("\x00\x01n\x00\x01v");
    EXPECT_OK(proto_encode_deliver(&w, 0, &d));
    d.header_count = 2;
    EXPECT_FAIL(proto_encode_deliver(&w, 0, &d));
    d.header_count = 0;
    EXPECT_FAIL(proto_encode_deliver(&w, 0, &d));
    d.header_count = 1;
    d.headers = (struct proto_slice)SL("\x00\x01n\x00\x01v\x00");
    EXPECT_FAIL(proto_encode_deliver(&w, 0, &d));
    d.headers = (struct proto_slice)SL("\x00\x00\x00\x01v");
    EXPECT_FAIL(proto_encode_deliver(&w, 0, &d));
    d.headers = (struct proto_slice)SL("\x00\x01n\x00\x02v");
    EXPECT_FAIL(proto_encode_deliver(&w, 0, &d));
    d.headers = (struct proto_slice){NULL, 6};
    EXPECT_FAIL(proto_encode_deliver(&w, 0, &d));
    d.header_count = PROTO_MAX_HEADERS + 1;
    EXPECT_FAIL(proto_encode_deliver(&w, 0, &d));
    d = del_ok;
    d.payload = (struct proto_slice){NULL, 1};
    EXPECT_FAIL(proto_encode_deliver(&w, 0, &d));

    EXPECT_OK(proto_encode_ack(&w, 1, 1, seqs, 2));
    EXPECT_FAIL(proto_encode_ack(&w, 1, 0, seqs, 1));
    EXPECT_FAIL(proto_encode_ack(&w, 1, 1, seqs, 0));
    EXPECT_FAIL(proto_encode_ack(&w, 1, 1, seqs, PROTO_MAX_ACKS + 1));
    EXPECT_FAIL(proto_encode_ack(&w, 1, 1, NULL, 1));

    EXPECT_OK(proto_encode_nack(&w, 1, &nack));
    nack.reason = (struct proto_slice){fill, PROTO_MAX_REASON + 1};
    EXPECT_FAIL(proto_encode_nack(&w, 1, &nack));
    nack.reason = (struct proto_slice){NULL, 0};
    nack.sub_id = 0;
    EXPECT_FAIL(proto_encode_nack(&w, 1, &nack));

    EXPECT_FAIL(proto_encode_sub_op(&w, PROTO_TOUCH, 1, 0, 1));
    EXPECT_FAIL(proto_encode_sub_op(&w, PROTO_UNSUBSCRIBE, 1, 0, 0));
    EXPECT_FAIL(proto_encode_sub_op(&w, PROTO_CREDIT, 1, 1, 0));
    EXPECT_FAIL(proto_encode_sub_op(&w, PROTO_CREDIT, 1, 1, PROTO_MAX_WINDOW + 1));
    EXPECT_FAIL(proto_encode_sub_op(&w, PROTO_CREDIT, 1, 1, (uint64_t)1 << 32 | 1));
    EXPECT_FAIL(proto_encode_sub_op(&w, PROTO_ACK, 1, 1, 1));
    EXPECT_FAIL(proto_encode_sub_op(&w, PROTO_PING, 1, 1, 1));

    EXPECT_OK(proto_encode_seek(&w, 1, &seek));
    seek.start = PROTO_START_TIME + 1;
    EXPECT_FAIL(proto_encode_seek(&w, 1, &seek));
    seek.start = PROTO_START_SEQ;
    seek.topic = (struct proto_slice){fill, PROTO_MAX_TOPIC + 1};
    EXPECT_FAIL(proto_encode_seek(&w, 1, &seek));
    seek.topic = (struct proto_slice){NULL, 0};
    seek.group = (struct proto_slice){fill, PROTO_MAX_GROUP + 1};
    EXPECT_FAIL(proto_encode_seek(&w, 1, &seek));

    EXPECT_FAIL(proto_encode_groups(&w, 1, fill, PROTO_MAX_TOPIC + 1));

    proto_writer_init(&w, buf, sizeof buf);
    start = proto_ack_ok_begin(&w, 1);
    proto_ack_ok_add(&w, 1, FERRY_WIRE_CODE_MAX + 1);
    assert_int_equal(proto_ack_ok_end(&w, start, 1), -1);
    proto_writer_init(&w, buf, sizeof buf);
    start = proto_ack_ok_begin(&w, 1);
    assert_int_equal(proto_ack_ok_end(&w, start, PROTO_MAX_ACKS + 1), -1);

    g.topic = (struct proto_slice){fill, PROTO_MAX_TOPIC + 1};
    proto_writer_init(&w, buf, sizeof buf);
    start = proto_groups_ok_begin(&w, 1);
    proto_groups_ok_add(&w, &g);
    assert_int_equal(proto_groups_ok_end(&w, start, 1), -1);
    g.topic = (struct proto_slice){NULL, 0};
    g.group = (struct proto_slice){fill, PROTO_MAX_GROUP + 1};
    proto_writer_init(&w, buf, sizeof buf);
    start = proto_groups_ok_begin(&w, 1);
    proto_groups_ok_add(&w, &g);
    assert_int_equal(proto_groups_ok_end(&w, start, 1), -1);
    proto_writer_init(&w, buf, sizeof buf);
    start = proto_groups_ok_begin(&w, 1);
    assert_int_equal(proto_groups_ok_end(&w, start, PROTO_MAX_GROUPS + 1), -1);
    proto_writer_init(&w, buf, sizeof buf);
    start = proto_groups_ok_begin(&w, 1);
    assert_int_equal(proto_groups_ok_end(&w, start, 0), 0);
#undef EXPECT_FAIL
#undef EXPECT_OK
}

static void test_proto_consumer_iterators_over_empty_structs_stop(void **state)
{
    struct proto_ack_ok ack_ok = {0};
    struct proto_groups_ok groups_ok = {0};
    struct proto_deliver d = {0};
    struct proto_ack_ok_iter ait;
    struct proto_group_iter git;
    struct proto_header_iter hit;
    struct proto_group_info g;
    struct proto_header h;
    uint64_t seq;
    uint16_t code;

    (void)state;
    ack_ok.count = 5;
    proto_ack_ok_iter_init(&ait, &ack_ok);
    assert_int_equal(proto_ack_ok_next(&ait, &seq, &code), 0);
    groups_ok.count = 5;
    proto_group_iter_init(&git, &groups_ok);
    assert_int_equal(proto_group_next(&git, &g), 0);
    d.header_count = 3;
    proto_deliver_header_iter_init(&hit, &d);
    assert_int_equal(proto_header_next(&hit, &h), 0);

    /* A count larger than the bytes hold stops at the end of the bytes. */
    ack_ok.entries = (struct proto_slice){v_ack_ok + 12, sizeof v_ack_ok - 12};
    proto_ack_ok_iter_init(&ait, &ack_ok);
    assert_int_equal(proto_ack_ok_next(&ait, &seq, &code), 1);
    assert_int_equal(proto_ack_ok_next(&ait, &seq, &code), 1);
    assert_int_equal(proto_ack_ok_next(&ait, &seq, &code), 0);
    groups_ok.entries = (struct proto_slice){v_groups_ok + 14, sizeof v_groups_ok - 14};
    proto_group_iter_init(&git, &groups_ok);
    assert_int_equal(proto_group_next(&git, &g), 1);
    assert_int_equal(proto_group_next(&git, &g), 1);
    assert_int_equal(proto_group_next(&git, &g), 0);
    d.headers = (struct proto_slice){v_deliver + 42, 10};
    proto_deliver_header_iter_init(&hit, &d);
    assert_int_equal(proto_header_next(&hit, &h), 1);
    assert_int_equal(proto_header_next(&hit, &h), 0);
}

/* --- Semantic rules ---------------------------------------------------- */

static int topic_ok(const char *s)
{
    return proto_topic_valid((const uint8_t *)s, strlen(s));
}

static int id_ok(const char *s)
{
    return proto_id_valid((const uint8_t *)s, strlen(s));
}

static void test_proto_topic_validation_rules(void **state)
{
    static const char *good[] = {"a",       "Z",      "0",  "orders", "orders.v2",
                                 "a_b-c.d", "9lives", "x-", "x_",     "x."};
    static const char *bad[] = {"",    "_dlq", ".hidden", "-x", "a b", "a/b", "a*", "a>",
                                "a:b", "a\tb", "a\x7f",   "é",  "aé",  "a,b", "a#"};
    uint8_t name[PROTO_MAX_TOPIC + 1];
    size_t i;

    (void)state;
    for (i = 0; i < ARRAY_LEN(good); i++) {
        if (topic_ok(good[i]) != 0)
            fail_msg("\"%s\" was refused", good[i]);
    }
    for (i = 0; i < ARRAY_LEN(bad); i++) {
        if (topic_ok(bad[i]) != FERRY_EINVALID_TOPIC)
            fail_msg("\"%s\" was accepted", bad[i]);
    }
    assert_int_equal(proto_topic_valid((const uint8_t *)"a\0b", 3), FERRY_EINVALID_TOPIC);
    assert_int_equal(proto_topic_valid(NULL, 0), FERRY_EINVALID_TOPIC);

    /* 194 bytes at most, so that "_dead.<topic>" fits in 200 (issue 20). */
    memset(name, 'a', sizeof name);
    assert_int_equal(PROTO_MAX_PUBLISH_TOPIC, 194);
    assert_int_equal(proto_topic_valid(name, PROTO_MAX_PUBLISH_TOPIC), 0);
    assert_int_equal(proto_topic_valid(name, PROTO_MAX_PUBLISH_TOPIC + 1), FERRY_EINVALID_TOPIC);
    assert_int_equal(proto_topic_valid(name, PROTO_MAX_TOPIC), FERRY_EINVALID_TOPIC);
    assert_int_equal(proto_topic_valid(name, PROTO_MAX_TOPIC + 1), FERRY_EINVALID_TOPIC);
}

/* Group names follow the topic rules, but answer INVALID_GROUP. */
static void test_proto_group_validation_rules(void **state)
{
    static const char *good[] = {"a", "Z", "0", "inventory", "email.v2", "a_b-c.d", "9lives"};
    static const char *bad[] = {"", "_dlq", ".hidden", "-x", "a b", "a/b", "a*", "é", "a,b"};
    uint8_t name[PROTO_MAX_GROUP + 1];
    size_t i;

    (void)state;
    for (i = 0; i < ARRAY_LEN(good); i++) {
        if (proto_group_valid((const uint8_t *)good[i], strlen(good[i])) != 0)
            fail_msg("\"%s\" was refused", good[i]);
    }
    for (i = 0; i < ARRAY_LEN(bad); i++) {
        if (proto_group_valid((const uint8_t *)bad[i], strlen(bad[i])) != FERRY_EINVALID_GROUP)
            fail_msg("\"%s\" was accepted", bad[i]);
    }
    assert_int_equal(proto_group_valid(NULL, 0), FERRY_EINVALID_GROUP);
    assert_int_equal(proto_group_valid((const uint8_t *)"a\0b", 3), FERRY_EINVALID_GROUP);
    memset(name, 'g', sizeof name);
    assert_int_equal(proto_group_valid(name, PROTO_MAX_GROUP), 0);
    assert_int_equal(proto_group_valid(name, PROTO_MAX_GROUP + 1), FERRY_EINVALID_GROUP);
}

/* A consumer may also name the topics the broker derives: '_' + a name. */
static void test_proto_sub_topic_validation_rules(void **state)
{
    static const char *good[] = {"orders", "a", "_dead.orders", "_a", "_9", "_x-y.z"};
    static const char *bad[] = {"", "_", "__dead", "_.x", "_-x", "_a b", ".x", "-x", "a*", "_é"};
    uint8_t name[PROTO_MAX_TOPIC + 1];
    size_t i;

    (void)state;
    for (i = 0; i < ARRAY_LEN(good); i++) {
        if (proto_sub_topic_valid((const uint8_t *)good[i], strlen(good[i])) != 0)
            fail_msg("\"%s\" was refused", good[i]);
    }
    for (i = 0; i < ARRAY_LEN(bad); i++) {
        if (proto_sub_topic_valid((const uint8_t *)bad[i], strlen(bad[i])) != FERRY_EINVALID_TOPIC)
            fail_msg("\"%s\" was accepted", bad[i]);
    }
    assert_int_equal(proto_sub_topic_valid(NULL, 0), FERRY_EINVALID_TOPIC);
    assert_int_equal(proto_sub_topic_valid(NULL, 5), FERRY_EINVALID_TOPIC);
    /* Still not publishable. */
    assert_int_equal(topic_ok("_dead.orders"), FERRY_EINVALID_TOPIC);
    /* 200 bytes in all, the '_' included. */
    memset(name, 'a', sizeof name);
    name[0] = '_';
    assert_int_equal(proto_sub_topic_valid(name, PROTO_MAX_TOPIC), 0);
    assert_int_equal(proto_sub_topic_valid(name, PROTO_MAX_TOPIC + 1), FERRY_EINVALID_TOPIC);
    name[0] = 'a';
    assert_int_equal(proto_sub_topic_valid(name, PROTO_MAX_TOPIC), 0);
    assert_int_equal(proto_sub_topic_valid(name, PROTO_MAX_TOPIC + 1), FERRY_EINVALID_TOPIC);
    /* The dead-letter topic of the longest publishable name. */
    memcpy(name, "_dead.", 6);
    assert_int_equal(proto_sub_topic_valid(name, 6 + PROTO_MAX_PUBLISH_TOPIC), 0);
}

static void test_proto_id_validation_rules(void **state)
{
    static const char *good[] = {
        "x", "!", "~", "o-1", "0190a6b2-7c1e-7a3f-9b2d-5e8f00c4d1aa", "ord:42/line#3"};
    static const char *bad[] = {"", " ", "a b", "a\tb", "a\x7f", "\x80", "é", "a\n"};
    uint8_t id[PROTO_MAX_ID + 1];
    size_t i;

    (void)state;
    for (i = 0; i < ARRAY_LEN(good); i++) {
        if (id_ok(good[i]) != 0)
            fail_msg("\"%s\" was refused", good[i]);
    }
    for (i = 0; i < ARRAY_LEN(bad); i++) {
        if (id_ok(bad[i]) != FERRY_EINVALID_ID)
            fail_msg("\"%s\" was accepted", bad[i]);
    }
    assert_int_equal(proto_id_valid(NULL, 0), FERRY_EINVALID_ID);
    memset(id, '~', sizeof id);
    assert_int_equal(proto_id_valid(id, PROTO_MAX_ID), 0);
    assert_int_equal(proto_id_valid(id, PROTO_MAX_ID + 1), FERRY_EINVALID_ID);
}

/* The first message of v_publish_batch: key "c42", headers ct=json and
 * trace=abc, payload "{}": 3 + (2 + 4) + (5 + 3) + 2 = 19 bytes. */
static void first_batch_msg(struct proto_msg *m)
{
    struct proto_frame f;
    struct proto_msg_iter it;

    decode_ok(v_publish_batch, sizeof v_publish_batch, &f);
    proto_msg_iter_init(&it, &f.u.publish);
    assert_int_equal(proto_msg_next(&it, m), 1);
}

static void test_proto_msg_size_counts_key_headers_payload(void **state)
{
    struct proto_msg m;

    (void)state;
    first_batch_msg(&m);
    assert_int_equal(proto_msg_size(&m), 19);
    m = (struct proto_msg){0};
    assert_int_equal(proto_msg_size(&m), 0);
}

static void test_proto_msg_check_enforces_size_topic_and_id(void **state)
{
    struct proto_msg m, bad;

    (void)state;
    first_batch_msg(&m);
    assert_int_equal(proto_msg_check(&m, 19), 0);
    assert_int_equal(proto_msg_check(&m, 18), FERRY_EMESSAGE_TOO_LARGE);
    assert_int_equal(proto_msg_check(&m, 0), FERRY_EMESSAGE_TOO_LARGE);

    bad = m;
    bad.topic = (struct proto_slice)SL("_orders.dlq");
    assert_int_equal(proto_msg_check(&bad, 1000), FERRY_EINVALID_TOPIC);
    bad.topic = (struct proto_slice){NULL, 0};
    assert_int_equal(proto_msg_check(&bad, 1000), FERRY_EINVALID_TOPIC);
    /* The topic is judged first. */
    assert_int_equal(proto_msg_check(&bad, 0), FERRY_EINVALID_TOPIC);

    bad = m;
    bad.id = (struct proto_slice)SL("has space");
    assert_int_equal(proto_msg_check(&bad, 1000), FERRY_EINVALID_ID);
    /* An empty id asks the broker for one: fine. */
    bad.id = (struct proto_slice){NULL, 0};
    assert_int_equal(proto_msg_check(&bad, 1000), 0);
}

static void test_proto_iterators_over_empty_structs_stop(void **state)
{
    struct proto_publish pub = {0};
    struct proto_publish_ack ack = {0};
    struct proto_topics_ok tok = {0};
    struct proto_msg m = {0};
    struct proto_msg_iter mit;
    struct proto_header_iter hit;
    struct proto_ack_iter ait;
    struct proto_topic_iter tit;
    struct proto_header h;
    struct proto_ack_entry a;
    struct proto_topic_info t;

    (void)state;
    pub.count = 3; /* a count without bytes must not be trusted */
    proto_msg_iter_init(&mit, &pub);
    assert_int_equal(proto_msg_next(&mit, &m), 0);
    m.header_count = 2;
    proto_header_iter_init(&hit, &m);
    assert_int_equal(proto_header_next(&hit, &h), 0);
    ack.count = 1;
    proto_ack_iter_init(&ait, &ack);
    assert_int_equal(proto_ack_next(&ait, &a), 0);
    tok.count = 1;
    proto_topic_iter_init(&tit, &tok);
    assert_int_equal(proto_topic_next(&tit, &t), 0);

    /* A count larger than the bytes hold stops at the end of the bytes. */
    pub.msgs = (struct proto_slice){v_publish + 12, sizeof v_publish - 12};
    proto_msg_iter_init(&mit, &pub);
    assert_int_equal(proto_msg_next(&mit, &m), 1);
    assert_int_equal(proto_msg_next(&mit, &m), 0);
    assert_int_equal(proto_msg_next(&mit, &m), 0);
}

/* --- Error text -------------------------------------------------------- */

static void test_proto_strerror_covers_each_code(void **state)
{
    (void)state;
#define CHECK_TEXT(name, num, text)                                                                \
    assert_string_equal(proto_strerror(FERRY_E##name), text);                                      \
    assert_string_equal(proto_strerror(num), text);
    FERRY_ERRNO_MAP(CHECK_TEXT)
#undef CHECK_TEXT
    assert_string_equal(proto_strerror(-FERRY_EMALFORMED), "malformed frame");
    assert_string_equal(proto_strerror(0), "success");
    assert_string_equal(proto_strerror(24), "unknown error");
    assert_string_equal(proto_strerror(-24), "unknown error");
    assert_string_equal(proto_strerror(-99), "unknown error");
    assert_string_equal(proto_strerror(1000), "unknown error");
    assert_string_equal(proto_strerror(INT_MIN), "unknown error");
    assert_string_equal(proto_strerror(INT_MAX), "unknown error");
}

/* --- The document ------------------------------------------------------ */

static char *read_file(const char *path)
{
    FILE *fp = fopen(path, "rb");
    char *text;
    long n;

    if (fp == NULL)
        return NULL;
    if (fseek(fp, 0, SEEK_END) != 0 || (n = ftell(fp)) < 0 || fseek(fp, 0, SEEK_SET) != 0) {
        fclose(fp);
        return NULL;
    }
    text = malloc((size_t)n + 1);
    if (text && fread(text, 1, (size_t)n, fp) != (size_t)n) {
        free(text);
        text = NULL;
    }
    if (text)
        text[n] = '\0';
    fclose(fp);
    return text;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Parses the hex bytes of the fenced block that follows "<!-- vector:name -->"
 * in text ('#' starts a comment to the end of the line). Returns the byte
 * count, or -1 when the block is missing or holds anything but hex pairs,
 * white space and comments. */
static long spec_vector(const char *text, const char *name, uint8_t *out, size_t cap)
{
    char marker[64];
    const char *p, *end;
    size_t n = 0;

    snprintf(marker, sizeof marker, "<!-- vector:%s -->", name);
    p = strstr(text, marker);
    if (p == NULL || (p = strstr(p, "```")) == NULL || (p = strchr(p, '\n')) == NULL ||
        (end = strstr(p, "```")) == NULL)
        return -1;
    while (p < end) {
        int hi, lo;

        if (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t') {
            p++;
            continue;
        }
        if (*p == '#') { /* a comment runs to the end of the line */
            while (p < end && *p != '\n')
                p++;
            continue;
        }
        if (end - p < 2 || (hi = hex_digit(p[0])) < 0 || (lo = hex_digit(p[1])) < 0 || n == cap)
            return -1;
        out[n++] = (uint8_t)(hi << 4 | lo);
        p += 2;
    }
    return (long)n;
}

static void test_proto_spec_vectors_match_protocol_md(void **state)
{
    static const struct vector spec[] = {
        {"hello", v_hello, sizeof v_hello},
        {"hello_ok", v_hello_ok, sizeof v_hello_ok},
        {"publish", v_publish, sizeof v_publish},
        {"publish_ack", v_publish_ack, sizeof v_publish_ack},
        {"error", v_error, sizeof v_error},
        {"subscribe", v_subscribe, sizeof v_subscribe},
        {"deliver", v_deliver, sizeof v_deliver},
        {"ack", v_ack, sizeof v_ack},
        {"ack_ok", v_ack_ok, sizeof v_ack_ok},
        {"floor_ok", v_floor_ok, sizeof v_floor_ok},
        {"delete", v_delete, sizeof v_delete},
        {"delete_ok", v_delete_ok, sizeof v_delete_ok},
        {"sub_end", v_sub_end, sizeof v_sub_end},
    };
    uint8_t bytes[256];
    char *text;
    size_t i;

    (void)state;
    if (spec_path == NULL)
        skip();
    text = read_file(spec_path);
    if (text == NULL)
        fail_msg("cannot read %s", spec_path);
    for (i = 0; i < ARRAY_LEN(spec); i++) {
        long n = spec_vector(text, spec[i].name, bytes, sizeof bytes);

        if (n < 0)
            fail_msg("%s: no readable vector:%s block", spec_path, spec[i].name);
        if ((size_t)n != spec[i].len || memcmp(bytes, spec[i].bytes, spec[i].len) != 0)
            fail_msg("%s: vector:%s differs from the test's bytes", spec_path, spec[i].name);
    }
    free(text);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_proto_hello_decodes),
        cmocka_unit_test(test_proto_hello_ok_decodes),
        cmocka_unit_test(test_proto_error_decodes),
        cmocka_unit_test(test_proto_empty_body_frames_decode),
        cmocka_unit_test(test_proto_publish_decodes),
        cmocka_unit_test(test_proto_publish_ack_decodes),
        cmocka_unit_test(test_proto_publish_batch_iterates_messages_and_headers),
        cmocka_unit_test(test_proto_publish_ack_batch_iterates),
        cmocka_unit_test(test_proto_topics_ok_iterates_and_skips_appended_fields),
        cmocka_unit_test(test_proto_no_type_is_reserved_any_more),
        cmocka_unit_test(test_proto_consecutive_frames_decode_in_order),
        cmocka_unit_test(test_proto_peek_header_reports_fields),
        cmocka_unit_test(test_proto_truncated_frames_need_more_at_every_offset),
        cmocka_unit_test(test_proto_oversized_length_is_rejected_from_header),
        cmocka_unit_test(test_proto_length_under_six_is_malformed),
        cmocka_unit_test(test_proto_redrive_round_trip),
        cmocka_unit_test(test_proto_floor_round_trip),
        cmocka_unit_test(test_proto_unknown_type_is_rejected),
        cmocka_unit_test(test_proto_delete_roundtrip_and_limits),
        cmocka_unit_test(test_proto_delete_vectors_encode),
        cmocka_unit_test(test_proto_topic_config_and_extended_topic_entry),
        cmocka_unit_test(test_proto_publish_with_producer),
        cmocka_unit_test(test_proto_subscribe_backoff_schedule),
        cmocka_unit_test(test_proto_subscribe_ok_horizon),
        cmocka_unit_test(test_proto_trailing_bytes_are_malformed),
        cmocka_unit_test(test_proto_empty_body_types_reject_a_body),
        cmocka_unit_test(test_proto_short_bodies_are_malformed),
        cmocka_unit_test(test_proto_field_lengths_past_the_body_are_malformed),
        cmocka_unit_test(test_proto_fields_over_their_maximum_are_malformed),
        cmocka_unit_test(test_proto_publish_count_zero_is_malformed),
        cmocka_unit_test(test_proto_publish_count_over_max_is_malformed),
        cmocka_unit_test(test_proto_publish_count_must_match_messages),
        cmocka_unit_test(test_proto_publish_ack_and_topics_ok_counts_are_checked),
        cmocka_unit_test(test_proto_error_code_outside_wire_range_is_malformed),
        cmocka_unit_test(test_proto_undefined_flags_are_passed_through),
        cmocka_unit_test(test_proto_encoders_reproduce_vectors),
        cmocka_unit_test(test_proto_encoders_fail_cleanly_at_every_short_cap),
        cmocka_unit_test(test_proto_round_trip_each_type),
        cmocka_unit_test(test_proto_writer_overflow_is_sticky),
        cmocka_unit_test(test_proto_put_str16_over_65535_overflows),
        cmocka_unit_test(test_proto_frame_end_patches_length),
        cmocka_unit_test(test_proto_counted_frames_reject_bad_counts),
        cmocka_unit_test(test_proto_encoders_reject_fields_over_max),
        cmocka_unit_test(test_proto_encode_error_truncates_long_text),
        cmocka_unit_test(test_proto_publish_msg_bytes_matches_encoding),
        cmocka_unit_test(test_proto_subscribe_decodes),
        cmocka_unit_test(test_proto_subscribe_ok_decodes),
        cmocka_unit_test(test_proto_deliver_decodes_and_iterates_headers),
        cmocka_unit_test(test_proto_deliver_reuses_publish_headers),
        cmocka_unit_test(test_proto_ack_decodes),
        cmocka_unit_test(test_proto_ack_ok_iterates),
        cmocka_unit_test(test_proto_nack_touch_credit_unsubscribe_decode),
        cmocka_unit_test(test_proto_seek_and_groups_decode),
        cmocka_unit_test(test_proto_groups_ok_iterates_and_skips_appended_fields),
        cmocka_unit_test(test_proto_sub_id_zero_is_malformed),
        cmocka_unit_test(test_proto_start_over_time_is_malformed),
        cmocka_unit_test(test_proto_window_outside_1_to_65535_is_malformed),
        cmocka_unit_test(test_proto_deliver_attempt_zero_and_request_id_are_malformed),
        cmocka_unit_test(test_proto_consumer_fields_over_their_maximum_are_malformed),
        cmocka_unit_test(test_proto_consumer_counts_are_checked),
        cmocka_unit_test(test_proto_consumer_field_lengths_past_the_body_are_malformed),
        cmocka_unit_test(test_proto_deliver_bytes_matches_encoding),
        cmocka_unit_test(test_proto_consumer_round_trips),
        cmocka_unit_test(test_proto_consumer_encoders_reject_what_decoders_reject),
        cmocka_unit_test(test_proto_consumer_iterators_over_empty_structs_stop),
        cmocka_unit_test(test_proto_topic_validation_rules),
        cmocka_unit_test(test_proto_id_validation_rules),
        cmocka_unit_test(test_proto_group_validation_rules),
        cmocka_unit_test(test_proto_sub_topic_validation_rules),
        cmocka_unit_test(test_proto_msg_size_counts_key_headers_payload),
        cmocka_unit_test(test_proto_msg_check_enforces_size_topic_and_id),
        cmocka_unit_test(test_proto_iterators_over_empty_structs_stop),
        cmocka_unit_test(test_proto_strerror_covers_each_code),
        cmocka_unit_test(test_proto_spec_vectors_match_protocol_md),
    };

    if (argc > 1)
        spec_path = argv[1];
    return cmocka_run_group_tests(tests, NULL, NULL);
}
