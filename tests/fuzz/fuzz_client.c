/*
 * fuzz_client.c - fuzz target for libferry's handling of what a broker
 * sends: the handshake reply, replies, DELIVERs, errors, PINGs, and garbage,
 * arriving whole, split or interleaved.
 *
 * A fake broker thread listens on 127.0.0.1 (one socket for the process)
 * and serves one connection per input: it reads the client's HELLO and
 * answers it with a valid HELLO_OK, then writes the input's bytes, in
 * segments, and finally shuts its side down, so the client always ends
 * (EOF) however little the bytes make sense. Meanwhile the client runs one
 * of a few scripts of libferry calls (publish, consume, admin) with short
 * timeouts, then closes.
 *
 * Input layout:
 *   byte 0   the script (SCRIPTS of them);
 *   byte 1   flags: bit 0 = the input's first segment replaces HELLO_OK
 *            (the handshake itself is fuzzed);
 *   rest     segments separated by SEP (4 bytes), at most MAX_SEGMENTS. The
 *            broker writes segment k once the client has sent k + 1 frames
 *            after its HELLO (or nothing new came for IDLE_MS), so replies
 *            can answer requests that exist: libferry reads replies in
 *            order and kills a connection on a reply to nothing.
 *
 * Checked, beyond what ASan/UBSan/LSan report (a crash, a read past a
 * buffer, a leak): every call returns 0 or a documented negative code, with
 * ferry_errmsg a NUL-terminated string; what a successful call returns
 * holds what ferry.h promises (lists never NULL, names NUL-terminated
 * within their arrays, each delivery's id, key, payload and header values
 * followed by a NUL byte). The whole of every returned object is read, so
 * that a bad length or pointer is caught.
 *
 * Built with -Dfuzzing=true this is a libFuzzer binary; otherwise replay.c
 * supplies main() and the committed corpus (tests/fuzz/corpus/client) runs
 * as a test.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <ferry.h>

#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_client: check failed at line %d: %s\n", __LINE__, #cond);        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define SCRIPTS 5
#define MAX_SEGMENTS 8
#define IDLE_MS 30
/* A broker that stalls is not the subject: every wait is short. */
#define TIMEOUT_MS 500
static const uint8_t SEP[4] = {0xf0, 0x5a, 0x5a, 0x0f};

/* ----- the fake broker ---------------------------------------------------- */

static int listen_fd = -1;
static char listen_addr[64];

struct session {
    const uint8_t *seg[MAX_SEGMENTS];
    size_t seg_len[MAX_SEGMENTS];
    int nseg;
    int fuzz_hello;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void listen_once(void)
{
    if (listen_fd >= 0)
        return;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    CHECK(listen(fd, 16) == 0);
    socklen_t len = sizeof a;
    CHECK(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    snprintf(listen_addr, sizeof listen_addr, "127.0.0.1:%u", (unsigned)ntohs(a.sin_port));
    listen_fd = fd;
}

/* The client's bytes, parsed into frames by their length prefix. */
struct inbound {
    uint8_t buf[1 << 16];
    size_t len;
    size_t frames; /* complete frames seen */
    uint32_t hello_id;
    int eof;
};

/* Reads what is there (waiting up to wait_ms for the first byte) and
 * counts complete frames, dropping their bytes. Returns 1 if anything
 * arrived. */
static int pump_in(int fd, struct inbound *in, int wait_ms)
{
    if (in->eof)
        return 0;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, wait_ms) <= 0)
        return 0;
    ssize_t n = recv(fd, in->buf + in->len, sizeof in->buf - in->len, MSG_DONTWAIT);
    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EINTR))
            in->eof = 1;
        return 0;
    }
    in->len += (size_t)n;
    for (;;) {
        if (in->len < PROTO_HEADER_BYTES)
            break;
        uint32_t flen = proto_rd32(in->buf);
        if (in->frames == 0)
            in->hello_id = proto_rd32(in->buf + 6);
        if ((size_t)flen + 4 > in->len) {
            if ((size_t)flen + 4 > sizeof in->buf)
                in->len = 0; /* a frame larger than we keep: skip its bytes */
            break;
        }
        memmove(in->buf, in->buf + flen + 4, in->len - flen - 4);
        in->len -= flen + 4;
        in->frames++;
    }
    return 1;
}

/* Writes all of buf, reading (and counting) the client's bytes meanwhile so
 * that neither side can block the other. */
static void send_all(int fd, struct inbound *in, const uint8_t *buf, size_t len)
{
    int64_t deadline = now_ms() + 2000;
    while (len > 0 && now_ms() < deadline) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR)
            return; /* the client is gone */
        struct pollfd p = {.fd = fd, .events = POLLOUT | POLLIN};
        poll(&p, 1, 10);
        if (p.revents & POLLIN)
            pump_in(fd, in, 0);
    }
}

static void *broker_main(void *arg)
{
    struct session *s = arg;
    struct pollfd p = {.fd = listen_fd, .events = POLLIN};
    if (poll(&p, 1, 2000) <= 0)
        return NULL; /* the client never connected (it failed before) */
    int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return NULL;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct inbound *in = calloc(1, sizeof *in);
    CHECK(in != NULL);
    /* The HELLO. */
    int64_t deadline = now_ms() + 2000;
    while (in->frames < 1 && !in->eof && now_ms() < deadline)
        pump_in(fd, in, 50);
    int k = 0;
    if (!s->fuzz_hello) {
        uint8_t frame[128];
        struct proto_writer w;
        struct proto_hello_ok ok = {
            .version = PROTO_VERSION,
            .max_frame_bytes = PROTO_DEFAULT_MAX_FRAME,
            .max_message_bytes = PROTO_DEFAULT_MAX_MESSAGE,
            .max_batch = 100,
            .dedupe_window_ms = 60000,
            .server_name = {(const uint8_t *)"fuzz", 4},
        };
        proto_writer_init(&w, frame, sizeof frame);
        CHECK(proto_encode_hello_ok(&w, in->hello_id, &ok) == 0);
        send_all(fd, in, frame, w.len);
    } else if (s->nseg > 0) {
        send_all(fd, in, s->seg[0], s->seg_len[0]);
        k = 1;
    }
    /* Segment j after j + 1 frames beyond the HELLO (with a fuzzed
     * HELLO_OK, segment j >= 1 after j). */
    for (; k < s->nseg; k++) {
        size_t want = 1 + (size_t)(s->fuzz_hello ? k : k + 1);
        while (in->frames < want && !in->eof && pump_in(fd, in, IDLE_MS)) {
        }
        send_all(fd, in, s->seg[k], s->seg_len[k]);
    }
    shutdown(fd, SHUT_WR);
    /* Drain until the client closes, so it never meets a reset. */
    deadline = now_ms() + 3000;
    while (!in->eof && now_ms() < deadline) {
        pump_in(fd, in, 50);
        in->len = 0;
    }
    free(in);
    close(fd);
    return NULL;
}

/* ----- checks ------------------------------------------------------------- */

static volatile uint8_t sink;

/* Reads every byte (ASan checks each one). */
static void touch(const void *p, size_t n)
{
    const volatile uint8_t *b = p;
    uint8_t x = 0;
    for (size_t i = 0; i < n; i++)
        x ^= b[i];
    sink ^= x;
}

static int debug = -1;

static void check_rc(ferry_conn *c, int rc)
{
    if (debug < 0)
        debug = getenv("FUZZ_CLIENT_DEBUG") != NULL;
    if (debug)
        fprintf(stderr, " %d", rc);
    CHECK(rc <= 0);
    CHECK(ferry_strerror(rc) != NULL);
    if (c) {
        const char *m = ferry_errmsg(c);
        CHECK(m != NULL);
        touch(m, strlen(m) + 1);
    }
}

/* What ferry.h promises about a delivery. */
static void check_delivery(const ferry_delivery *d)
{
    CHECK(d->topic && d->group && d->id);
    touch(d->topic, strlen(d->topic) + 1);
    touch(d->group, strlen(d->group) + 1);
    CHECK(strlen(d->topic) <= PROTO_MAX_TOPIC);
    CHECK(strlen(d->group) <= PROTO_MAX_GROUP);
    CHECK(strlen(d->id) <= PROTO_MAX_ID);
    /* ferry.h: "1 when attempt > 1" (libferry also honours the frame's
     * REDELIVERED flag on an attempt of 1, which a broker never sends). */
    CHECK(d->attempt <= 1 || d->redelivered == 1);
    CHECK(d->redelivered == 0 || d->redelivered == 1);
    CHECK(d->payload != NULL || d->payload_len == 0);
    if (d->payload) {
        touch(d->payload, d->payload_len + 1);
        CHECK(((const char *)d->payload)[d->payload_len] == '\0');
    }
    if (d->key_len) {
        touch(d->key, d->key_len + 1);
        CHECK(((const char *)d->key)[d->key_len] == '\0');
    }
    CHECK(d->header_count <= PROTO_MAX_HEADERS);
    CHECK(d->header_count == 0 || d->headers != NULL);
    for (size_t i = 0; i < d->header_count; i++) {
        const ferry_header *h = &d->headers[i];
        CHECK(h->name != NULL);
        size_t nl = strlen(h->name);
        CHECK(nl >= 1 && nl <= PROTO_MAX_HEADER_NAME);
        CHECK(h->value != NULL || h->value_len == 0);
        if (h->value) {
            touch(h->value, h->value_len + 1);
            CHECK(((const char *)h->value)[h->value_len] == '\0');
        }
    }
}

static void check_info(ferry_conn *c)
{
    ferry_server_info si;
    ferry_server_info_get(c, &si);
    CHECK(memchr(si.server_name, '\0', sizeof si.server_name) != NULL);
    CHECK(si.max_frame_bytes <= PROTO_ABSOLUTE_MAX_FRAME);
    CHECK(si.max_batch <= PROTO_MAX_BATCH);
}

/* ----- the scripts --------------------------------------------------------- */

/* Pipelined publishes queued and their callbacks run, in this input: each
 * callback must run exactly once, at the latest in ferry_close. */
struct pub_ctx {
    int queued;
    int calls;
};
static struct pub_ctx pubs;

static void on_published(void *ud, int status, const ferry_ack *ack)
{
    struct pub_ctx *p = ud;
    p->calls++;
    CHECK(p->calls <= p->queued);
    CHECK(status <= 0);
    CHECK((status == 0) == (ack != NULL));
    if (ack)
        CHECK(memchr(ack->id, '\0', sizeof ack->id) != NULL);
}

static void set_msg(ferry_msg *m, const char *id, const ferry_header *h)
{
    memset(m, 0, sizeof *m);
    m->topic = "fuzz";
    m->payload = "payload";
    m->payload_len = 7;
    m->id = id;
    m->key = "k";
    m->key_len = 1;
    m->headers = h;
    m->header_count = h ? 1 : 0;
}

static void script_publish(ferry_conn *c)
{
    static const ferry_header h = {"h", "v", 1};
    ferry_msg m;
    ferry_ack ack;
    set_msg(&m, "id-1", &h);
    int rc = ferry_publish(c, &m, &ack);
    check_rc(c, rc);
    if (rc == 0)
        CHECK(memchr(ack.id, '\0', sizeof ack.id) != NULL);
    for (int i = 0; i < 3; i++) {
        set_msg(&m, i == 1 ? NULL : "id-2", NULL);
        pubs.queued++;
        rc = ferry_publish_async(c, &m, on_published, &pubs);
        check_rc(c, rc);
        pubs.queued -= rc != 0;
    }
    check_rc(c, ferry_flush(c, TIMEOUT_MS));
    ferry_msg batch[3];
    ferry_ack acks[3];
    for (int i = 0; i < 3; i++)
        set_msg(&batch[i], NULL, NULL);
    rc = ferry_publish_batch(c, batch, 3, acks);
    check_rc(c, rc);
    if (rc == 0)
        for (int i = 0; i < 3; i++)
            CHECK(memchr(acks[i].id, '\0', sizeof acks[i].id) != NULL);
    uint64_t rtt;
    check_rc(c, ferry_ping(c, &rtt));
    check_rc(c, ferry_poll(c));
}

static void script_consume(ferry_conn *c)
{
    ferry_sub_options o = FERRY_SUB_OPTIONS_INIT;
    o.max_in_flight = 8;
    ferry_sub *s = NULL;
    int rc = ferry_subscribe(c, "fuzz", "g", &o, &s);
    check_rc(c, rc);
    CHECK((rc == 0) == (s != NULL));
    if (rc != 0)
        return;
    uint64_t seqs[8];
    size_t n = 0;
    ferry_delivery *kept[8];
    size_t nkept = 0;
    for (int i = 0; i < 8; i++) {
        ferry_delivery *d = NULL;
        rc = ferry_receive(c, 10, &d);
        check_rc(c, rc);
        CHECK((rc == 0) == (d != NULL));
        if (rc == FERRY_EUNKNOWN_TOPIC || rc == FERRY_EUNKNOWN_GROUP) {
            /* A SUB_END: reported once, then only timeouts. */
            CHECK(strstr(ferry_errmsg(c), "ended") != NULL);
            CHECK(ferry_receive(c, 0, &d) == FERRY_ETIMEOUT && d == NULL);
        }
        if (rc != 0)
            break;
        check_delivery(d);
        seqs[n++] = d->seq;
        switch (i % 5) {
        case 0:
            check_rc(c, ferry_delivery_ack(d));
            break;
        case 1:
            check_rc(c, ferry_delivery_ack_async(d));
            break;
        case 2:
            check_rc(c, ferry_delivery_nack(d, 10, "why"));
            break;
        case 3:
            check_rc(c, ferry_delivery_touch(d));
            break;
        default:
            break;
        }
        /* Some deliveries outlive the subscription and the connection. */
        if (i % 2 == 0 && nkept < 8)
            kept[nkept++] = d;
        else
            ferry_delivery_free(d);
    }
    if (n > 0)
        check_rc(c, ferry_sub_ack(s, seqs, n));
    check_rc(c, ferry_sub_set_window(s, 4));
    check_rc(c, ferry_flush(c, TIMEOUT_MS));
    check_rc(c, ferry_unsubscribe(s));
    for (size_t i = 0; i < nkept; i++) {
        check_delivery(kept[i]);
        check_rc(c, ferry_delivery_ack(kept[i]));
    }
    for (size_t i = 0; i < nkept; i++)
        ferry_delivery_free(kept[i]);
}

struct cb_ctx {
    int calls;
};
static struct cb_ctx cbs;

static void on_delivery(void *ud, ferry_delivery *d)
{
    struct cb_ctx *cx = ud;
    cx->calls++;
    check_delivery(d);
    ferry_delivery_ack_async(d);
    ferry_delivery_free(d);
}

static void script_callbacks(ferry_conn *c)
{
    ferry_sub *s1 = NULL, *s2 = NULL;
    ferry_sub_options o = FERRY_SUB_OPTIONS_INIT;
    o.start = FERRY_START_SEQ;
    o.start_value = 1;
    int rc = ferry_subscribe(c, "fuzz", "g1", &o, &s1);
    check_rc(c, rc);
    if (rc != 0)
        return;
    check_rc(c, ferry_sub_set_callback(s1, on_delivery, &cbs));
    rc = ferry_subscribe(c, "_dead.fuzz", "g2", NULL, &s2);
    check_rc(c, rc);
    for (int i = 0; i < 4; i++) {
        rc = ferry_receive(c, 10, NULL);
        check_rc(c, rc);
        if (rc != 0 && rc != FERRY_ETIMEOUT)
            break;
    }
    if (s2) {
        ferry_delivery *d = NULL;
        if (ferry_receive(c, 10, &d) == 0) {
            check_delivery(d);
            ferry_delivery_free(d);
        }
    }
    check_rc(c, ferry_poll(c));
    check_rc(c, ferry_flush(c, TIMEOUT_MS));
    /* s1 and s2 end with the connection. */
}

static void script_admin(ferry_conn *c)
{
    ferry_topic_info *topics = NULL;
    size_t n = 0;
    int rc = ferry_topics(c, &topics, &n);
    check_rc(c, rc);
    if (rc == 0) {
        CHECK(topics != NULL);
        for (size_t i = 0; i < n; i++) {
            CHECK(memchr(topics[i].name, '\0', sizeof topics[i].name) != NULL);
            touch(&topics[i], sizeof topics[i]);
        }
    } else {
        CHECK(topics == NULL && n == 0);
    }
    ferry_topics_free(topics);
    ferry_group_info *groups = NULL;
    rc = ferry_groups(c, NULL, &groups, &n);
    check_rc(c, rc);
    if (rc == 0) {
        CHECK(groups != NULL);
        for (size_t i = 0; i < n; i++) {
            CHECK(memchr(groups[i].topic, '\0', sizeof groups[i].topic) != NULL);
            CHECK(memchr(groups[i].group, '\0', sizeof groups[i].group) != NULL);
            touch(&groups[i], sizeof groups[i]);
        }
    } else {
        CHECK(groups == NULL && n == 0);
    }
    ferry_groups_free(groups);
    uint64_t cursor = 0;
    check_rc(c, ferry_seek(c, "fuzz", "g", FERRY_START_TIME, 1, &cursor));
    check_rc(c, ferry_ping(c, NULL));
    check_rc(c, ferry_groups(c, "fuzz", &groups, &n));
    ferry_groups_free(groups);
    ferry_delete_result dr = {.size = sizeof dr};
    check_rc(c, ferry_topic_delete(c, "fuzz", FERRY_DELETE_FORCE, &dr));
    check_rc(c, ferry_group_delete(c, "fuzz", "g", NULL));
}

/* Publishing and consuming on one connection: replies and DELIVERs mix. */
static void script_mixed(ferry_conn *c)
{
    ferry_msg m;
    set_msg(&m, "mixed", NULL);
    pubs.queued++;
    int rc = ferry_publish_async(c, &m, on_published, &pubs);
    check_rc(c, rc);
    pubs.queued -= rc != 0;
    ferry_sub *s = NULL;
    rc = ferry_subscribe(c, "fuzz", "g", NULL, &s);
    check_rc(c, rc);
    pubs.queued++;
    rc = ferry_publish_async(c, &m, on_published, &pubs);
    check_rc(c, rc);
    pubs.queued -= rc != 0;
    ferry_delivery *d = NULL;
    rc = ferry_receive(c, 10, &d);
    check_rc(c, rc);
    if (rc == 0) {
        check_delivery(d);
        check_rc(c, ferry_delivery_ack_async(d));
        ferry_delivery_free(d);
    }
    ferry_topic_info *topics = NULL;
    size_t n = 0;
    if (ferry_topics(c, &topics, &n) == 0)
        ferry_topics_free(topics);
    check_rc(c, ferry_flush(c, TIMEOUT_MS));
    CHECK(ferry_in_flight(c) <= 2);
}

/* ----- the target ----------------------------------------------------------- */

static void split(struct session *s, const uint8_t *p, size_t n)
{
    s->nseg = 0;
    while (s->nseg < MAX_SEGMENTS) {
        const uint8_t *sep = NULL;
        if (s->nseg < MAX_SEGMENTS - 1 && n >= sizeof SEP)
            sep = memmem(p, n, SEP, sizeof SEP);
        size_t len = sep ? (size_t)(sep - p) : n;
        s->seg[s->nseg] = p;
        s->seg_len[s->nseg] = len;
        s->nseg++;
        if (!sep)
            break;
        p += len + sizeof SEP;
        n -= len + sizeof SEP;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    listen_once();
    struct session s;
    memset(&s, 0, sizeof s);
    memset(&pubs, 0, sizeof pubs);
    memset(&cbs, 0, sizeof cbs);
    s.fuzz_hello = data[1] & 1;
    split(&s, data + 2, size - 2);

    pthread_t th;
    CHECK(pthread_create(&th, NULL, broker_main, &s) == 0);
    ferry_options o = FERRY_OPTIONS_INIT;
    o.client_name = "fuzz";
    o.connect_timeout_ms = 2000;
    o.request_timeout_ms = TIMEOUT_MS;
    o.max_in_flight = 4;
    ferry_conn *c = NULL;
    char err[128];
    int rc = ferry_connect(listen_addr, &o, &c, err, sizeof err);
    check_rc(NULL, rc);
    CHECK((rc == 0) == (c != NULL));
    CHECK(memchr(err, '\0', sizeof err) != NULL);
    if (c) {
        check_info(c);
        switch (data[0] % SCRIPTS) {
        case 0:
            script_publish(c);
            break;
        case 1:
            script_consume(c);
            break;
        case 2:
            script_callbacks(c);
            break;
        case 3:
            script_admin(c);
            break;
        default:
            script_mixed(c);
            break;
        }
        ferry_close(c);
    }
    CHECK(pubs.calls == pubs.queued);
    pthread_join(th, NULL);
    if (debug > 0)
        fprintf(stderr, " (script %d)\n", data[0] % SCRIPTS);
    return 0;
}
