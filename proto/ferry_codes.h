/*
 * ferry_codes.h - the one table of Ferry error codes.
 *
 * Every fallible libferry call returns 0 or a negative FERRY_E* value taken
 * from this table, and the broker sends the same numbers (positive, as a u16)
 * in ERROR frames. Codes 1-99 travel on the wire and are listed in
 * docs/PROTOCOL.md; codes 100 and above only ever arise inside the client
 * (a socket that would not connect, a timeout) and are never sent.
 *
 * The X-macro gives each code its name, its number and a static one-line
 * description; ferry_strerror() and the broker's log both read it, so the
 * text a user sees is the same wherever the error surfaced.
 *
 * Numbers are part of the protocol: never renumber, only append.
 *
 * The codec owns this table (it lives in proto/ and includes nothing);
 * libferry installs it beside ferry.h, which includes it, so a program
 * only ever writes #include <ferry.h>.
 */
#ifndef FERRY_CODES_H
#define FERRY_CODES_H

/* X(NAME, number, "description") */
#define FERRY_ERRNO_MAP(X)                                                                         \
    X(MALFORMED, 1, "malformed frame")                                                             \
    X(FRAME_TOO_LARGE, 2, "frame larger than the negotiated maximum")                              \
    X(VERSION, 3, "unsupported protocol version")                                                  \
    X(UNKNOWN_TYPE, 4, "unknown frame type")                                                       \
    X(HANDSHAKE, 5, "handshake required before any other frame")                                   \
    X(AUTH, 6, "authentication failed")                                                            \
    X(INVALID_TOPIC, 7, "invalid topic name")                                                      \
    X(MESSAGE_TOO_LARGE, 8, "message larger than the broker's maximum")                            \
    X(STORAGE_FULL, 9, "storage full")                                                             \
    X(STORAGE, 10, "storage error")                                                                \
    X(SHUTTING_DOWN, 11, "broker is shutting down")                                                \
    X(UNSUPPORTED, 12, "operation not supported by this broker")                                   \
    X(TOO_MANY_CONNECTIONS, 13, "too many connections")                                            \
    X(INVALID, 14, "invalid argument")                                                             \
    X(DENIED, 15, "permission denied")                                                             \
    X(INVALID_ID, 16, "invalid message id")                                                        \
    X(TIMEOUT_IDLE, 17, "connection idle for too long")                                            \
    X(INTERNAL, 18, "internal broker error")                                                       \
    X(NOT_DELIVERED, 19, "the group was never given this message")                                 \
    X(UNKNOWN_SUBSCRIPTION, 20, "no such subscription on this connection")                         \
    X(UNKNOWN_GROUP, 21, "no such consumer group")                                                 \
    X(INVALID_GROUP, 22, "invalid consumer group name")                                            \
    X(UNKNOWN_TOPIC, 23, "no such topic")                                                          \
    X(CONNECT, 100, "cannot connect to the broker")                                                \
    X(TIMEOUT, 101, "operation timed out")                                                         \
    X(CLOSED, 102, "connection closed")                                                            \
    X(NOMEM, 103, "out of memory")                                                                 \
    X(IO, 104, "network I/O error")                                                                \
    X(PROTOCOL, 105, "unexpected reply from the broker")                                           \
    X(BUSY, 106, "too many requests in flight")

/* The codes as negative values, the form every libferry call returns. */
enum ferry_error {
    FERRY_OK = 0,
#define FERRY__ERR_ENUM(name, num, text) FERRY_E##name = -(num),
    FERRY_ERRNO_MAP(FERRY__ERR_ENUM)
#undef FERRY__ERR_ENUM
};

/* The highest code that may travel on the wire; larger ones are client-side. */
#define FERRY_WIRE_CODE_MAX 99

#endif /* FERRY_CODES_H */
