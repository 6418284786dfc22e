/*
 * test_client_delete.c - libferry's side of deleting topics and groups,
 * against a scripted fake broker on a thread (no ferryd): what
 * ferry_topic_delete and ferry_group_delete send and return, and how a
 * subscription the broker ends (SUB_END) behaves: its queued deliveries
 * are still received, then ferry_receive returns the broker's code once,
 * requests on it fail locally, ferry_unsubscribe frees it without
 * sending UNSUBSCRIBE, and the connection's other subscriptions go on.
 *
 * The fake answers HELLO, PING, DELETE (by the topic's name: "nosuch" is
 * unknown, "hasgroups" needs FORCE, else DELETE_OK), SUBSCRIBE (by the
 * topic: "ends" gets two deliveries and a SUB_END at once, "cbends" one
 * and a SUB_END for its group, anything else only SUBSCRIBE_OK; every
 * SUBSCRIBE_OK is preceded by a SUB_END for a sub id nobody has), ACK,
 * CREDIT, TOUCH and UNSUBSCRIBE (ACK_OK), and counts what it got.
 */
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include <ferry.h>

#include "proto.h"

/* ----- the fake broker ------------------------------------------------------- */

struct fake {
    int listen_fd;
    char addr[64];
    pthread_t th;
    int joined;
    /* What it received, by frame type (read after the thread ended). */
    int got[256];
    uint32_t racing_sub; /* its UNSUBSCRIBE meets a SUB_END */
    uint8_t last_delete_flags;
    char last_delete_group[PROTO_MAX_GROUP + 1];
};

static void put_sub_end(struct proto_writer *w, uint32_t sub_id, uint16_t code, const char *msg)
{
    struct proto_sub_end e = {
        .sub_id = sub_id, .code = code, .message = {(const uint8_t *)msg, strlen(msg)}};
    assert_int_equal(proto_encode_sub_end(w, &e), 0);
}

static void put_deliver(struct proto_writer *w, uint32_t sub_id, uint64_t seq)
{
    struct proto_deliver d = {.sub_id = sub_id,
                              .seq = seq,
                              .attempt = 1,
                              .ts_ms = 1,
                              .id = {(const uint8_t *)"m", 1},
                              .payload = {(const uint8_t *)"hello", 5}};
    assert_int_equal(proto_encode_deliver(w, 0, &d), 0);
}

static void answer(struct fake *fk, const struct proto_frame *f, struct proto_writer *w)
{
    fk->got[f->type]++;
    switch (f->type) {
    case PROTO_HELLO: {
        struct proto_hello_ok ok = {.version = PROTO_VERSION,
                                    .max_frame_bytes = PROTO_DEFAULT_MAX_FRAME,
                                    .max_message_bytes = PROTO_DEFAULT_MAX_MESSAGE,
                                    .max_batch = 100,
                                    .dedupe_window_ms = 60000,
                                    .server_name = {(const uint8_t *)"fake", 4}};
        proto_encode_hello_ok(w, f->request_id, &ok);
        break;
    }
    case PROTO_PING:
        proto_encode_empty(w, PROTO_PONG, f->request_id);
        break;
    case PROTO_DELETE: {
        const struct proto_delete *d = &f->u.del;
        fk->last_delete_flags = d->flags;
        snprintf(fk->last_delete_group, sizeof fk->last_delete_group, "%.*s", (int)d->group.len,
                 (const char *)d->group.ptr);
        char t[PROTO_MAX_TOPIC + 1];
        snprintf(t, sizeof t, "%.*s", (int)d->topic.len, (const char *)d->topic.ptr);
        if (strcmp(t, "nosuch") == 0) {
            proto_encode_error(w, f->request_id, 0, 23, "no such topic: nosuch", 21);
        } else if (strcmp(t, "hasgroups") == 0 && d->group.len == 0 &&
                   !(d->flags & PROTO_DELETE_FORCE)) {
            const char *m = "topic hasgroups has 2 consumer groups";
            proto_encode_error(w, f->request_id, 0, 14, m, strlen(m));
        } else {
            struct proto_delete_ok ok = {d->group.len ? 0 : 1204, d->group.len ? 1 : 2};
            proto_encode_delete_ok(w, f->request_id, &ok);
        }
        break;
    }
    case PROTO_SUBSCRIBE: {
        const struct proto_subscribe *s = &f->u.subscribe;
        put_sub_end(w, 999, 23, "not yours"); /* an unknown sub id: ignored */
        struct proto_subscribe_ok ok = {.sub_id = s->sub_id,
                                        .cursor = 1,
                                        .head_seq = 2,
                                        .ack_wait_ms = 30000,
                                        .max_deliveries = 5};
        proto_encode_subscribe_ok(w, f->request_id, &ok);
        if (s->topic.len == 4 && memcmp(s->topic.ptr, "ends", 4) == 0) {
            put_deliver(w, s->sub_id, 1);
            put_deliver(w, s->sub_id, 2);
            put_sub_end(w, s->sub_id, 23, "topic ends was deleted");
            put_deliver(w, s->sub_id, 3);           /* after its end: dropped */
            put_sub_end(w, s->sub_id, 23, "twice"); /* ignored */
        } else if (s->topic.len == 6 && memcmp(s->topic.ptr, "racing", 6) == 0) {
            fk->racing_sub = s->sub_id;
        } else if (s->topic.len == 6 && memcmp(s->topic.ptr, "cbends", 6) == 0) {
            put_deliver(w, s->sub_id, 1);
            put_sub_end(w, s->sub_id, 21, "group g of topic cbends was deleted");
        }
        break;
    }
    case PROTO_ACK: {
        size_t st = proto_ack_ok_begin(w, f->request_id);
        for (uint16_t i = 0; i < f->u.ack.count; i++)
            proto_ack_ok_add(w, proto_rd64(f->u.ack.seqs.ptr + 8 * (size_t)i), 0);
        proto_ack_ok_end(w, st, f->u.ack.count);
        break;
    }
    case PROTO_UNSUBSCRIBE:
        if (fk->racing_sub && f->u.sub_op.sub_id == fk->racing_sub) {
            /* The topic was deleted just before the UNSUBSCRIBE came. */
            put_sub_end(w, fk->racing_sub, 23, "topic racing was deleted");
            proto_encode_error(w, f->request_id, 0, 20, "no such subscription", 20);
            break;
        }
        /* fall through */
    case PROTO_CREDIT:
    case PROTO_TOUCH: {
        size_t st = proto_ack_ok_begin(w, f->request_id);
        proto_ack_ok_end(w, st, 0);
        break;
    }
    default:
        break;
    }
}

/* Serves one connection until the client closes it. */
static void *fake_main(void *arg)
{
    struct fake *fk = arg;
    int fd = accept(fk->listen_fd, NULL, NULL);
    if (fd < 0)
        return NULL;
    static uint8_t in[1 << 16], out[1 << 16];
    size_t len = 0;
    for (;;) {
        ssize_t r = recv(fd, in + len, sizeof in - len, 0);
        if (r <= 0)
            break;
        len += (size_t)r;
        struct proto_writer w;
        proto_writer_init(&w, out, sizeof out);
        for (;;) {
            struct proto_frame f;
            ptrdiff_t k = proto_decode(in, len, sizeof in, &f);
            if (k <= 0)
                break;
            answer(fk, &f, &w);
            memmove(in, in + k, len - (size_t)k);
            len -= (size_t)k;
        }
        if (w.len > 0 && send(fd, out, w.len, MSG_NOSIGNAL) != (ssize_t)w.len)
            break;
    }
    close(fd);
    return NULL;
}

static int setup(void **state)
{
    struct fake *fk = calloc(1, sizeof *fk);
    if (!fk)
        return -1;
    fk->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (fk->listen_fd < 0 || bind(fk->listen_fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(fk->listen_fd, 1) != 0 ||
        getsockname(fk->listen_fd, (struct sockaddr *)&a, &alen) != 0)
        return -1;
    snprintf(fk->addr, sizeof fk->addr, "127.0.0.1:%u", (unsigned)ntohs(a.sin_port));
    if (pthread_create(&fk->th, NULL, fake_main, fk) != 0)
        return -1;
    *state = fk;
    return 0;
}

static int teardown(void **state)
{
    struct fake *fk = *state;
    if (!fk->joined)
        pthread_join(fk->th, NULL);
    close(fk->listen_fd);
    free(fk);
    return 0;
}

static ferry_conn *connect_fake(struct fake *fk)
{
    ferry_options o = FERRY_OPTIONS_INIT;
    o.request_timeout_ms = 5000;
    ferry_conn *c = NULL;
    char err[256];
    int rc = ferry_connect(fk->addr, &o, &c, err, sizeof err);
    if (rc != 0)
        fail_msg("connect: %s", err);
    return c;
}

/* Closes c and waits for the fake to see it (its counts are final). */
static void finish(struct fake *fk, ferry_conn *c)
{
    ferry_close(c);
    pthread_join(fk->th, NULL);
    fk->joined = 1;
}

/* ----- the tests ---------------------------------------------------------------- */

static void test_topic_delete(void **state)
{
    struct fake *fk = *state;
    ferry_conn *c = connect_fake(fk);
    ferry_delete_result r = {.size = sizeof r};
    assert_int_equal(ferry_topic_delete(c, "orders", FERRY_DELETE_FORCE, &r), 0);
    assert_int_equal(r.messages, 1204);
    assert_int_equal(r.groups, 2);
    assert_int_equal(fk->last_delete_flags, PROTO_DELETE_FORCE);
    assert_string_equal(fk->last_delete_group, "");
    assert_int_equal(ferry_topic_delete(c, "orders", 0, NULL), 0);
    assert_int_equal(fk->last_delete_flags, 0);

    /* The broker's refusals, with its text. */
    assert_int_equal(ferry_topic_delete(c, "hasgroups", 0, &r), FERRY_EINVALID);
    assert_string_equal(ferry_errmsg(c), "topic hasgroups has 2 consumer groups");
    assert_int_equal(ferry_topic_delete(c, "nosuch", FERRY_DELETE_FORCE, NULL),
                     FERRY_EUNKNOWN_TOPIC);

    /* Refused here, nothing sent. */
    int sent = fk->got[PROTO_DELETE];
    ferry_delete_result small = {.size = sizeof(size_t)};
    assert_int_equal(ferry_topic_delete(c, "orders", 0, &small), FERRY_EINVALID);
    assert_non_null(strstr(ferry_errmsg(c), "size"));
    assert_int_equal(ferry_topic_delete(c, "orders", 0x80, NULL), FERRY_EINVALID);
    assert_int_equal(ferry_topic_delete(c, "bad topic", 0, NULL), FERRY_EINVALID_TOPIC);
    assert_int_equal(ferry_topic_delete(c, NULL, 0, NULL), FERRY_EINVALID_TOPIC);
    assert_int_equal(ferry_topic_delete(c, "", 0, NULL), FERRY_EINVALID_TOPIC);
    assert_int_equal(ferry_topic_delete(NULL, "orders", 0, NULL), FERRY_EINVALID);
    assert_int_equal(fk->got[PROTO_DELETE], sent);
    finish(fk, c);
}

static void test_group_delete(void **state)
{
    struct fake *fk = *state;
    ferry_conn *c = connect_fake(fk);
    ferry_delete_result r = {.size = sizeof r};
    assert_int_equal(ferry_group_delete(c, "orders", "billing", &r), 0);
    assert_int_equal(r.messages, 0);
    assert_int_equal(r.groups, 1);
    assert_string_equal(fk->last_delete_group, "billing");
    assert_int_equal(fk->last_delete_flags, 0);
    int sent = fk->got[PROTO_DELETE];
    assert_int_equal(ferry_group_delete(c, "orders", "", NULL), FERRY_EINVALID_GROUP);
    assert_int_equal(ferry_group_delete(c, "orders", NULL, NULL), FERRY_EINVALID_GROUP);
    assert_int_equal(ferry_group_delete(c, "orders", "bad group", NULL), FERRY_EINVALID_GROUP);
    assert_int_equal(ferry_group_delete(c, "", "g", NULL), FERRY_EINVALID_TOPIC);
    assert_int_equal(fk->got[PROTO_DELETE], sent);
    assert_int_equal(ferry_group_delete(c, "nosuch", "g", NULL), FERRY_EUNKNOWN_TOPIC);
    finish(fk, c);
}

static void test_sub_end(void **state)
{
    struct fake *fk = *state;
    ferry_conn *c = connect_fake(fk);
    ferry_sub *live = NULL, *s = NULL;
    assert_int_equal(ferry_subscribe(c, "other", "g", NULL, &live), 0);
    assert_int_equal(ferry_subscribe(c, "ends", "g", NULL, &s), 0);

    /* The deliveries queued before the end come first. */
    ferry_delivery *d1 = NULL, *d2 = NULL, *d = NULL;
    assert_int_equal(ferry_receive(c, 1000, &d1), 0);
    assert_int_equal(d1->seq, 1);
    assert_int_equal(ferry_receive(c, 1000, &d2), 0);
    assert_int_equal(d2->seq, 2);

    /* Then the end, once. */
    assert_int_equal(ferry_receive(c, 1000, &d), FERRY_EUNKNOWN_TOPIC);
    assert_null(d);
    assert_string_equal(ferry_errmsg(c), "subscription to ends/g ended: topic ends was deleted");
    assert_int_equal(ferry_receive(c, 50, &d), FERRY_ETIMEOUT);
    assert_int_equal(ferry_receive(c, 0, NULL), FERRY_ETIMEOUT);

    /* Requests on it fail here. */
    int acks = fk->got[PROTO_ACK];
    assert_int_equal(ferry_delivery_ack(d2), FERRY_EUNKNOWN_SUBSCRIPTION);
    assert_string_equal(ferry_errmsg(c),
                        "the subscription to ends/g ended: topic ends was deleted");
    assert_int_equal(ferry_delivery_ack(d1), FERRY_EUNKNOWN_SUBSCRIPTION);
    assert_int_equal(ferry_delivery_ack_async(d1), FERRY_EUNKNOWN_SUBSCRIPTION);
    assert_int_equal(ferry_delivery_nack(d1, 0, NULL), FERRY_EUNKNOWN_SUBSCRIPTION);
    assert_int_equal(ferry_delivery_touch(d1), FERRY_EUNKNOWN_SUBSCRIPTION);
    uint64_t seq = 1;
    assert_int_equal(ferry_sub_ack(s, &seq, 1), FERRY_EUNKNOWN_SUBSCRIPTION);
    assert_int_equal(ferry_sub_set_window(s, 5), FERRY_EUNKNOWN_SUBSCRIPTION);
    assert_int_equal(ferry_flush(c, 1000), 0);
    assert_int_equal(fk->got[PROTO_ACK], acks);

    /* Freed locally; the deliveries outlive it. */
    assert_int_equal(ferry_unsubscribe(s), 0);
    assert_int_equal(ferry_delivery_ack(d1), FERRY_EUNKNOWN_SUBSCRIPTION);
    ferry_delivery_free(d1);
    ferry_delivery_free(d2);

    /* The connection and its other subscription go on. */
    uint64_t rtt;
    assert_int_equal(ferry_ping(c, &rtt), 0);
    assert_int_equal(ferry_sub_set_window(live, 7), 0);
    assert_int_equal(ferry_unsubscribe(live), 0);
    finish(fk, c);
    assert_int_equal(fk->got[PROTO_UNSUBSCRIBE], 1); /* live's only */
}

static void on_delivery(void *ud, ferry_delivery *d)
{
    (*(int *)ud)++;
    ferry_delivery_free(d);
}

static void test_sub_end_callback(void **state)
{
    struct fake *fk = *state;
    ferry_conn *c = connect_fake(fk);
    ferry_sub *s = NULL;
    int calls = 0;
    /* The delivery and the end may arrive inside ferry_subscribe already:
     * the delivery waits in the queue until the callback is set. */
    assert_int_equal(ferry_subscribe(c, "cbends", "g", NULL, &s), 0);
    assert_int_equal(ferry_sub_set_callback(s, on_delivery, &calls), 0);
    int rc = ferry_receive(c, 1000, NULL);
    if (rc == 0) {
        assert_int_equal(calls, 1);
        rc = ferry_receive(c, 1000, NULL);
    }
    assert_int_equal(rc, FERRY_EUNKNOWN_GROUP);
    assert_int_equal(calls, 1);
    assert_string_equal(ferry_errmsg(c),
                        "subscription to cbends/g ended: group g of topic cbends was deleted");
    assert_int_equal(ferry_receive(c, 50, NULL), FERRY_ETIMEOUT);
    assert_int_equal(ferry_unsubscribe(s), 0);
    finish(fk, c);
    assert_int_equal(fk->got[PROTO_UNSUBSCRIBE], 0);
}

/* ferry_close with an ended subscription not yet reported nor freed. */
static void test_sub_end_then_close(void **state)
{
    struct fake *fk = *state;
    ferry_conn *c = connect_fake(fk);
    ferry_sub *s = NULL;
    assert_int_equal(ferry_subscribe(c, "ends", "g", NULL, &s), 0);
    ferry_delivery *d = NULL;
    assert_int_equal(ferry_receive(c, 1000, &d), 0);
    finish(fk, c);
    assert_int_equal(ferry_delivery_ack(d), FERRY_ECLOSED);
    (void)s; /* freed with its last delivery */
    ferry_delivery_free(d);
}

/* An UNSUBSCRIBE that crosses the broker's SUB_END succeeds. */
static void test_unsubscribe_crosses_sub_end(void **state)
{
    struct fake *fk = *state;
    ferry_conn *c = connect_fake(fk);
    ferry_sub *s = NULL;
    assert_int_equal(ferry_subscribe(c, "racing", "g", NULL, &s), 0);
    assert_int_equal(ferry_unsubscribe(s), 0);
    assert_string_equal(ferry_errmsg(c), "");
    assert_int_equal(ferry_receive(c, 50, NULL), FERRY_ETIMEOUT); /* nothing to report */
    finish(fk, c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_topic_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sub_end, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sub_end_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sub_end_then_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unsubscribe_crosses_sub_end, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
