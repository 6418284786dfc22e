/*
 * dispatch.h - frame type to handler (dispatch.c), for the broker's
 * conn_events.on_frame. Loop thread only.
 */
#ifndef FERRY_BROKER_DISPATCH_H
#define FERRY_BROKER_DISPATCH_H

#include <stddef.h>

struct conn;
struct proto_frame;

/* Handles one decoded frame of c (in the handshake, the HELLO). */
void dispatch_frame(struct conn *c, const struct proto_frame *f, size_t wire_bytes);

#endif
