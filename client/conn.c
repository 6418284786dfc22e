/*
 * conn.c - the connection: socket, handshake, buffers and I/O.
 *
 * The socket is non-blocking from the start and every wait is a poll() in
 * ferry__pump, the one loop that drives a connection: it writes what is
 * buffered, reads what arrives, and dispatches frames (running callbacks)
 * until its caller's condition holds or its deadline passes. Reading while
 * waiting to write matters: a broker that stops reading us while its acks to
 * us are unread would otherwise deadlock with us.
 *
 * Buffers:
 *   read   [rpos, rlen) received, not yet decoded. It grows to hold the
 *          largest frame announced by a header, never past max_in_frame
 *          (the codec rejects a longer length before we allocate for it).
 *   write  [wpos, wlen) encoded, not yet sent. Encoders append at wlen and
 *          may roll wlen back when validation fails; sends advance wpos.
 *
 * On a connection that has subscribed, every wait also runs what the
 * consumer side needs (c->hooks, installed by ferry_subscribe): queued
 * deliveries that now have a callback before each test of the condition,
 * pipelined acks to encode before each block. A connection that never
 * subscribed has no hooks and its waits do none of that.
 *
 * Frame limits: until HELLO_OK the broker may send at most
 * PROTO_HANDSHAKE_MAX_FRAME (an unknown peer cannot make us buffer more).
 * After it we send at most the broker's max_frame_bytes and accept up to
 * PROTO_ABSOLUTE_MAX_FRAME: replies such as a long TOPICS_OK may be larger
 * than what the broker accepts, and the broker is now authenticated.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/* Longest "HOST:PORT" we parse: a DNS name (253) plus brackets and port. */
#define ADDR_MAX 300

int64_t ferry__now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t ferry__deadline(int timeout_ms)
{
    if (timeout_ms < 0)
        return -1;
    return ferry__now_us() + (int64_t)timeout_ms * 1000;
}

/* Milliseconds poll() may wait before deadline: -1 for none, rounded up so a
 * wait never ends just short of its deadline and spins. */
static int remaining_ms(int64_t deadline_us)
{
    if (deadline_us < 0)
        return -1;
    int64_t left = deadline_us - ferry__now_us();
    if (left <= 0)
        return 0;
    left = (left + 999) / 1000;
    return left > 1000000000 ? 1000000000 : (int)left;
}

/* Splits "HOST:PORT" or "[V6]:PORT" into host and port. */
static int parse_addr(const char *addr, char *host, size_t host_len, char *port, size_t port_len)
{
    size_t n = strlen(addr);
    if (n == 0 || n >= ADDR_MAX)
        return -1;
    const char *colon = strrchr(addr, ':');
    if (!colon || colon[1] == '\0')
        return -1;
    const char *h = addr;
    size_t hlen = (size_t)(colon - addr);
    if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
        h++;
        hlen -= 2;
    } else if (memchr(h, ':', hlen)) {
        return -1; /* a bare IPv6 address needs brackets */
    }
    if (hlen == 0 || hlen >= host_len)
        return -1;
    const char *p = colon + 1;
    size_t plen = strlen(p);
    if (plen >= port_len || plen > 5 || strspn(p, "0123456789") != plen)
        return -1;
    long portnum = strtol(p, NULL, 10);
    if (portnum < 1 || portnum > 65535)
        return -1;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    memcpy(port, p, plen + 1);
    return 0;
}

/* One non-blocking connect() to ai, waiting until deadline. Returns the
 * socket, or -1 with errno set (ETIMEDOUT when the deadline passed). */
static int connect_one(const struct addrinfo *ai, int64_t deadline_us)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0)
        return -1;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
        return fd;
    if (errno != EINPROGRESS && errno != EINTR)
        goto fail;

    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        int timeout = remaining_ms(deadline_us);
        if (timeout == 0) {
            errno = ETIMEDOUT;
            goto fail;
        }
        int n = poll(&pfd, 1, timeout);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto fail;
        if (n == 0)
            continue; /* the next round sees the deadline */
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            goto fail;
        if (err != 0) {
            errno = err;
            goto fail;
        }
        return fd;
    }

fail:;
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

/* Resolves host:port and connects to the first address that answers. */
static int open_socket(ferry_conn *c, const char *host, const char *port, int64_t deadline_us)
{
    struct addrinfo hints = {0};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0)
        return ferry__seterr(c, FERRY_ECONNECT, "cannot resolve %s: %s", host,
                             gai == EAI_SYSTEM ? strerror(errno) : gai_strerror(gai));

    int err = ECONNREFUSED;
    for (const struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = connect_one(ai, deadline_us);
        if (fd >= 0) {
            c->fd = fd;
            break;
        }
        err = errno;
        if (err == ETIMEDOUT)
            break;
    }
    freeaddrinfo(res);
    if (c->fd < 0) {
        if (err == ETIMEDOUT)
            return ferry__seterr(c, FERRY_ETIMEOUT, "no connection within the connect timeout");
        return ferry__seterr(c, FERRY_ECONNECT, "%s", strerror(err));
    }

    int one = 1;
    /* Requests are small and latency matters more than segment count; the
     * write buffer already coalesces. */
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(c->fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    return 0;
}

/* Answers the handshake: adopt the broker's limits. */
static int on_hello_ok(ferry_conn *c, struct ferry__waiter *w, const struct proto_frame *f)
{
    const struct proto_hello_ok *h = &f->u.hello_ok;
    if (h->version != PROTO_VERSION)
        return ferry__seterr(c, FERRY_EVERSION, "the broker speaks protocol version %u, not %u",
                             (unsigned)h->version, (unsigned)PROTO_VERSION);
    /* A frame must hold at least a one-message PUBLISH header and a few
     * bytes; anything smaller is a broken broker, not a configuration. */
    if (h->max_frame_bytes < 64 || h->max_batch == 0)
        return ferry__seterr(c, FERRY_EPROTOCOL,
                             "the broker announced unusable limits (max_frame %u, max_batch %u)",
                             (unsigned)h->max_frame_bytes, (unsigned)h->max_batch);

    ferry_server_info *info = &c->info;
    info->version = h->version;
    info->max_frame_bytes = h->max_frame_bytes < PROTO_ABSOLUTE_MAX_FRAME
                                ? h->max_frame_bytes
                                : PROTO_ABSOLUTE_MAX_FRAME;
    info->max_message_bytes = h->max_message_bytes;
    info->max_batch = h->max_batch < PROTO_MAX_BATCH ? h->max_batch : PROTO_MAX_BATCH;
    info->dedupe_window_ms = h->dedupe_window_ms;
    size_t n = h->server_name.len < sizeof info->server_name - 1 ? h->server_name.len
                                                                 : sizeof info->server_name - 1;
    memcpy(info->server_name, h->server_name.ptr, n);
    info->server_name[n] = '\0';
    c->max_in_frame = PROTO_ABSOLUTE_MAX_FRAME;
    return 0;
}

static int handshake(ferry_conn *c, const ferry_options *opts, int64_t deadline_us)
{
    const char *name = opts && opts->client_name ? opts->client_name : "libferry";
    const char *token = opts && opts->token ? opts->token : "";
    struct proto_hello h = {
        .version = PROTO_VERSION,
        .client_name = {(const uint8_t *)name, strlen(name)},
        .token = {(const uint8_t *)token, strlen(token)},
    };
    size_t need = PROTO_HEADER_BYTES + 2 + 2 + h.client_name.len + 2 + h.token.len;
    if (ferry__wbuf_reserve(c, need) < 0)
        return ferry__seterr(c, FERRY_ENOMEM, "out of memory");
    uint32_t id = ferry__next_request_id(c);
    size_t start = c->wlen;
    struct proto_writer w;
    proto_writer_init(&w, c->wbuf + start, c->wcap - start);
    if (proto_encode_hello(&w, id, &h) < 0)
        return ferry__seterr(c, FERRY_EINVALID, "cannot encode HELLO");
    c->wlen += w.len;

    struct ferry__waiter waiter = {.on_reply = on_hello_ok};
    int rc = ferry__request(c, start, id, PROTO_HELLO_OK, 0, &waiter, deadline_us);
    if (rc == FERRY_ETIMEOUT && waiter.done == 0)
        return ferry__seterr(c, FERRY_ETIMEOUT, "no handshake reply within the connect timeout");
    /* A peer that hangs up or breaks the stream mid-handshake is a failed
     * connect; the broker's own refusals (auth, version, too many
     * connections) keep their codes. */
    if (rc == FERRY_ECLOSED || rc == FERRY_EIO || rc == FERRY_EPROTOCOL) {
        char detail[FERRY__ERRMSG_BYTES];
        snprintf(detail, sizeof detail, "%s", c->errmsg);
        if (rc == FERRY_EPROTOCOL)
            return ferry__seterr(c, rc, "handshake: %s (is this a ferry broker?)", detail);
        return ferry__seterr(c, FERRY_ECONNECT, "handshake: %s", detail);
    }
    if (rc == 0 && c->dead) /* HELLO_OK arrived, and then the hang-up */
        return ferry__seterr(c, FERRY_ECONNECT, "handshake: %s", c->dead_msg);
    return rc;
}

static int check_options(const ferry_options *o, char *why, size_t why_len)
{
    if (o->producer_id &&
        proto_id_valid((const uint8_t *)o->producer_id, strlen(o->producer_id)) != 0) {
        snprintf(why, why_len, "producer_id must be 1-128 bytes of printable ASCII");
        return FERRY_EINVALID;
    }
    if (o->token && strlen(o->token) > PROTO_MAX_TOKEN) {
        snprintf(why, why_len, "token longer than %u bytes", (unsigned)PROTO_MAX_TOKEN);
        return FERRY_EINVALID;
    }
    if (o->client_name && strlen(o->client_name) > PROTO_MAX_CLIENT_NAME) {
        snprintf(why, why_len, "client name longer than %u bytes", (unsigned)PROTO_MAX_CLIENT_NAME);
        return FERRY_EINVALID;
    }
    return 0;
}

int ferry_connect(const char *addr, const ferry_options *opts, ferry_conn **out, char *errmsg,
                  size_t errmsg_len)
{
    char why[FERRY__ERRMSG_BYTES] = "";
    char host[ADDR_MAX], port[8];
    ferry_conn *c = NULL;
    int rc;

    if (out)
        *out = NULL;
    if (!addr)
        addr = FERRY_DEFAULT_SERVER;
    if (!out) {
        snprintf(why, sizeof why, "out must not be NULL");
        rc = FERRY_EINVALID;
        goto done;
    }
    int js = ferry__is_js_address(addr);
    if (!js && parse_addr(addr, host, sizeof host, port, sizeof port) < 0) {
        snprintf(why, sizeof why, "address \"%.*s\" is not HOST:PORT", ADDR_MAX, addr);
        rc = FERRY_EINVALID;
        goto done;
    }
    ferry_options o = FERRY_OPTIONS_INIT;
    if (opts && (rc = ferry__copy_options(&o, sizeof o, opts, FERRY__OPTIONS_SIZE_0,
                                          "ferry_options", why, sizeof why)) < 0)
        goto done;
    opts = &o;
    rc = check_options(opts, why, sizeof why);
    if (rc < 0)
        goto done;

    c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(why, sizeof why, "out of memory");
        rc = FERRY_ENOMEM;
        goto done;
    }
    c->fd = -1;
    c->next_id = 1;
    c->next_sub_id = 1;
    c->max_in_frame = PROTO_HANDSHAKE_MAX_FRAME;
    c->info.max_frame_bytes = PROTO_HANDSHAKE_MAX_FRAME;
    c->request_timeout_ms = FERRY__DEFAULT_REQUEST_TIMEOUT_MS;
    c->max_in_flight = FERRY__DEFAULT_MAX_IN_FLIGHT;
    int connect_timeout_ms = FERRY__DEFAULT_CONNECT_TIMEOUT_MS;
    if (opts) {
        if (opts->request_timeout_ms != 0)
            c->request_timeout_ms = opts->request_timeout_ms < 0 ? -1 : opts->request_timeout_ms;
        if (opts->connect_timeout_ms != 0)
            connect_timeout_ms = opts->connect_timeout_ms < 0 ? -1 : opts->connect_timeout_ms;
        if (opts->max_in_flight != 0)
            c->max_in_flight = opts->max_in_flight;
        if (opts->producer_id)
            snprintf(c->producer_id, sizeof(c->producer_id), "%s", opts->producer_id);
    }

    c->rbuf = malloc(FERRY__BUF_INITIAL_BYTES);
    c->wbuf = malloc(FERRY__BUF_INITIAL_BYTES);
    if (!c->rbuf || !c->wbuf) {
        snprintf(why, sizeof why, "out of memory");
        rc = FERRY_ENOMEM;
        goto done;
    }
    c->rcap = c->wcap = FERRY__BUF_INITIAL_BYTES;

    if (js) {
        rc = ferry__js_connect(c, addr, opts, why, sizeof why);
        goto done;
    }
    int64_t deadline = ferry__deadline(connect_timeout_ms);
    rc = open_socket(c, host, port, deadline);
    if (rc == 0)
        rc = handshake(c, opts, deadline);
    if (rc < 0)
        snprintf(why, sizeof why, "%s", c->errmsg);

done:
    if (rc < 0) {
        ferry_close(c);
        if (errmsg && errmsg_len > 0)
            snprintf(errmsg, errmsg_len, "%s", why);
        return rc;
    }
    c->errmsg[0] = '\0';
    if (errmsg && errmsg_len > 0)
        errmsg[0] = '\0';
    *out = c;
    return 0;
}

void ferry_close(ferry_conn *c)
{
    if (!c)
        return;
    if (c->js)
        ferry__js_close(c);
    ferry__kill(c, FERRY_ECLOSED, "ferry_close was called");
    ferry__consume_close(c);
    if (c->js)
        ferry__js_free(c);
    free(c->rbuf);
    free(c->wbuf);
    free(c->pend);
    free(c);
}

/* Grows buf (capacity *cap, live bytes [*pos, *len)) so that n more bytes fit
 * after *len, first by moving the live bytes to the front. */
static int buf_reserve(uint8_t **buf, size_t *cap, size_t *pos, size_t *len, size_t n)
{
    if (*cap - *len >= n)
        return 0;
    if (*pos > 0) {
        memmove(*buf, *buf + *pos, *len - *pos);
        *len -= *pos;
        *pos = 0;
        if (*cap - *len >= n)
            return 0;
    }
    size_t want = *len + n;
    size_t ncap = *cap ? *cap : FERRY__BUF_INITIAL_BYTES;
    while (ncap < want)
        ncap = ncap > SIZE_MAX / 2 ? want : ncap * 2;
    uint8_t *nb = realloc(*buf, ncap);
    if (!nb)
        return FERRY_ENOMEM;
    *buf = nb;
    *cap = ncap;
    return 0;
}

int ferry__wbuf_reserve(ferry_conn *c, size_t n)
{
    return buf_reserve(&c->wbuf, &c->wcap, &c->wpos, &c->wlen, n);
}

int ferry__write_some(ferry_conn *c)
{
    if (c->dead)
        return c->dead;
    c->last_write_us = ferry__now_us();
    while (c->wpos < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->wpos, c->wlen - c->wpos, MSG_NOSIGNAL);
        if (n > 0) {
            c->wpos += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n < 0 && errno == EPIPE)
            return ferry__kill(c, FERRY_ECLOSED, "the broker closed the connection");
        return ferry__kill(c, FERRY_EIO, "send: %s", strerror(errno));
    }
    if (c->wpos == c->wlen)
        c->wpos = c->wlen = 0;
    return 0;
}

int ferry__read_some(ferry_conn *c)
{
    /* Bound the work done here so one call cannot starve its caller when
     * the broker streams faster than we dispatch. */
    for (int round = 0; round < 16 && !c->dead; round++) {
        if (c->rpos == c->rlen)
            c->rpos = c->rlen = 0;

        /* Room for the frame being received (its header says how big),
         * and at least a useful chunk for recv(). */
        size_t want = FERRY__BUF_INITIAL_BYTES / 2;
        size_t have = c->rlen - c->rpos;
        if (have >= 4) {
            uint32_t length = proto_rd32(c->rbuf + c->rpos);
            if (length <= c->max_in_frame && (size_t)length + 4 > have &&
                (size_t)length + 4 - have > want)
                want = (size_t)length + 4 - have;
        }
        if (buf_reserve(&c->rbuf, &c->rcap, &c->rpos, &c->rlen, want) < 0)
            return ferry__kill(c, FERRY_ENOMEM, "out of memory for a %zu-byte read buffer",
                               c->rlen + want);

        ssize_t n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
        if (n > 0) {
            c->rlen += (size_t)n;
            ferry__dispatch(c);
            continue;
        }
        if (n == 0)
            return ferry__kill(c, FERRY_ECLOSED, "the broker closed the connection");
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        if (errno == ECONNRESET)
            return ferry__kill(c, FERRY_ECLOSED, "the broker reset the connection");
        return ferry__kill(c, FERRY_EIO, "recv: %s", strerror(errno));
    }
    return c->dead;
}

int ferry__pump(ferry_conn *c, int64_t deadline_us, int (*done)(const ferry_conn *, const void *),
                const void *arg)
{
    for (;;) {
        if (c->dead)
            return c->dead;
        if (c->hooks)
            c->hooks->before_check(c);
        if (done(c, arg))
            return 0;
        if (c->hooks)
            c->hooks->before_block(c);
        if (ferry__write_some(c) < 0)
            continue;

        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        if (c->wpos < c->wlen)
            pfd.events |= POLLOUT;
        int timeout = remaining_ms(deadline_us);
        if (timeout == 0)
            return FERRY_ETIMEOUT;
        int n = poll(&pfd, 1, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return ferry__kill(c, FERRY_EIO, "poll: %s", strerror(errno));
        }
        if (n == 0)
            continue; /* the next round sees the deadline */
        if (pfd.revents & POLLNVAL)
            return ferry__kill(c, FERRY_EIO, "poll: the socket is not open");
        if (pfd.revents & (POLLIN | POLLHUP | POLLERR))
            ferry__read_some(c);
        /* POLLOUT is served by the write at the top of the loop. */
    }
}
