/*
 * js_internal.h - libferry over NATS JetStream (js.c): what the rest of
 * client/ calls on a connection whose c->js is set.
 */
#ifndef FERRY_JS_INTERNAL_H
#define FERRY_JS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <strings.h>

#include "ferry.h"

struct ferry__js;
struct ferry__js_sub;
struct ferry_sub;

/* 1 when addr is a JetStream address (nats://...). */
static inline int ferry__is_js_address(const char *addr)
{
    return addr && (addr[0] == 'n' || addr[0] == 'N') && !strncasecmp(addr, "nats://", 7);
}

/* Connects c (already allocated, options applied) to the JetStream address
 * addr and makes sure its stream exists. Returns 0 or a FERRY_E* with why. */
int ferry__js_connect(ferry_conn *c, const char *addr, const ferry_options *o, char *why,
                      size_t why_len);
/* At ferry_close: stops the subscriptions' threads, fails publishes without
 * an outcome (their callbacks run), before the consumer side is freed. */
void ferry__js_close(ferry_conn *c);
/* Then: closes the NATS connection and frees c->js. */
void ferry__js_free(ferry_conn *c);

int ferry__js_publish(ferry_conn *c, const ferry_msg *m, ferry_ack *ack);
int ferry__js_publish_async(ferry_conn *c, const ferry_msg *m, ferry_publish_cb cb, void *ud);
int ferry__js_flush(ferry_conn *c, int timeout_ms);
int ferry__js_poll(ferry_conn *c);
size_t ferry__js_in_flight(const ferry_conn *c);
int ferry__js_ping(ferry_conn *c, uint64_t *rtt_us);

/* The relay's window: publishes msgs[0..n) pipelined and waits for every
 * outcome (or the request timeout). *stored is the length of the prefix
 * JetStream stored (acks filled for it); returns 0 when all were, else the
 * first failure's code (ferry_errmsg says which, and whether later ones
 * were stored anyway). */
int ferry__js_publish_window(ferry_conn *c, const ferry_msg *msgs, size_t n, ferry_ack *acks,
                             size_t *stored);
/* The stream's name, and its last sequence. */
const char *ferry__js_stream(const ferry_conn *c);
int ferry__js_last_seq(ferry_conn *c, uint64_t *last);
/* Reads the stream's messages after sequence `after` up to its last one
 * (headers only) and calls found for each published under producer (its
 * Ferry-Producer header) with its stream sequence and Ferry-Producer-Seq.
 * *last_out: the stream's last sequence when the scan began. */
int ferry__js_scan(ferry_conn *c, uint64_t after, const char *producer,
                   void (*found)(void *ud, uint64_t stream_seq, uint64_t producer_seq), void *ud,
                   uint64_t *last_out);

/* Consuming: s is allocated and attached by ferry_subscribe (names,
 * window, options checked); this creates or finds its durable consumer,
 * fills s's settings and starts its fetch thread. */
int ferry__js_subscribe(ferry_conn *c, struct ferry_sub *s, const ferry_sub_options *o);
/* Stops s's fetch thread; its outstanding deliveries go back to the group. */
void ferry__js_unsubscribe(struct ferry_sub *s);
/* Frees what ferry__js_subscribe allocated (when the last reference to s
 * goes). */
void ferry__js_sub_free(struct ferry__js_sub *j);
/* Drops the queued deliveries of s (NULL: of every subscription). */
void ferry__js_queue_purge(ferry_conn *c, const struct ferry_sub *s);
int ferry__js_receive(ferry_conn *c, int timeout_ms, ferry_delivery **out);
/* Runs delivery callbacks for queued deliveries; returns how many ran. */
int ferry__js_run_callbacks(ferry_conn *c);
int ferry__js_ack(struct ferry_sub *s, const uint64_t *seqs, size_t n, int sync);
int ferry__js_nack(struct ferry_sub *s, uint64_t seq, uint32_t delay_ms, const char *reason);
int ferry__js_touch(struct ferry_sub *s, uint64_t seq);
int ferry__js_set_window(struct ferry_sub *s, uint32_t window);
/* The group's ack floor: every stream sequence below *floor is acked. */
int ferry__js_floor(struct ferry_sub *s, uint64_t *floor);
int ferry__js_seek(ferry_conn *c, const char *topic, const char *group, ferry_start start,
                   uint64_t value);

/* For tests/fuzz/fuzz_js.c: the address parser (0, or -1 with why), and
 * the decoding of a received natsMsg (a natsMsg *) into a delivery of a
 * detached subscription (free it with ferry_delivery_free). */
int ferry__js_parse_address_test(const char *addr, char *why, size_t why_len);
int ferry__js_decode_test(void *nats_msg, uint64_t stream_seq, uint64_t delivered,
                          ferry_delivery **out);

#endif /* FERRY_JS_INTERNAL_H */
