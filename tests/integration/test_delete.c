/*
 * test_delete.c - DELETE of topics and consumer groups against a real
 * ferryd, over raw frames (PROTOCOL.md §4.9): what goes at once, what stays,
 * that live subscriptions are told (SUB_END), that a deletion is durable and
 * its purge survives kill -9, that a deleted name starts over at sequence 1
 * with its message ids forgotten, and that publishes keep being served
 * while a large topic is purged.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "ferry.h"
#include "harness.h"
#include "it_util.h"
#include "proto.h"

#define IO_MS 10000

struct fx {
    struct harness_broker b;
    int fd; /* a raw connection, handshaken */
    uint32_t rid;
    uint8_t buf[1 << 16];
};

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    *state = fx;
    fx->fd = -1;
    if (harness_start(&fx->b, NULL) != 0)
        return -1;
    fx->fd = harness_connect(fx->b.addr);
    if (fx->fd < 0 || harness_handshake(fx->fd, NULL) != 0)
        return -1;
    fx->rid = 10;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    if (fx->fd >= 0)
        close(fx->fd);
    harness_stop(&fx->b);
    harness_cleanup(&fx->b);
    free(fx);
    return 0;
}

static void reconnect(struct fx *fx)
{
    if (fx->fd >= 0)
        close(fx->fd);
    fx->fd = harness_connect(fx->b.addr);
    assert_true(fx->fd >= 0);
    assert_int_equal(harness_handshake(fx->fd, NULL), 0);
}

/* Sends DELETE; returns 0 with *ok filled, or the ERROR's wire code (its
 * text in msg). */
static int del(struct fx *fx, const char *topic, const char *group, int force,
               struct proto_delete_ok *ok, char *msg, size_t msglen)
{
    uint8_t frame[1024];
    struct proto_writer w;
    proto_writer_init(&w, frame, sizeof frame);
    struct proto_delete d = {{(const uint8_t *)topic, strlen(topic)},
                             {(const uint8_t *)(group ? group : ""), group ? strlen(group) : 0},
                             force ? PROTO_DELETE_FORCE : 0};
    uint32_t rid = ++fx->rid;
    assert_int_equal(proto_encode_delete(&w, rid, &d), 0);
    struct proto_frame f;
    assert_int_equal(harness_request(fx->fd, frame, w.len, fx->buf, sizeof fx->buf, IO_MS, &f), 1);
    assert_int_equal(f.request_id, rid);
    if (f.type == PROTO_ERROR) {
        if (msg)
            snprintf(msg, msglen, "%.*s", (int)f.u.error.message.len,
                     (const char *)f.u.error.message.ptr);
        return f.u.error.code;
    }
    assert_int_equal(f.type, PROTO_DELETE_OK);
    if (ok)
        *ok = f.u.delete_ok;
    return 0;
}

static void publish_n(ferry_conn *c, const char *topic, int n, uint64_t *last_seq)
{
    char payload[64];
    for (int i = 0; i < n; i++) {
        snprintf(payload, sizeof payload, "%s-%d", topic, i);
        ferry_msg m = {.topic = topic, .payload = payload, .payload_len = strlen(payload)};
        ferry_ack ack;
        assert_int_equal(ferry_publish(c, &m, &ack), 0);
        if (last_seq)
            *last_seq = ack.seq;
    }
}

static void publish_batch_n(ferry_conn *c, const char *topic, int n)
{
    static char payload[200];
    memset(payload, 'p', sizeof payload);
    ferry_msg ms[500];
    for (int done = 0; done < n;) {
        int k = n - done < 500 ? n - done : 500;
        for (int i = 0; i < k; i++)
            ms[i] = (ferry_msg){.topic = topic, .payload = payload, .payload_len = sizeof payload};
        assert_int_equal(ferry_publish_batch(c, ms, (size_t)k, NULL), 0);
        done += k;
    }
}

/* Whether topic is listed (TOPICS), and its head. */
static int listed(ferry_conn *c, const char *topic, uint64_t *head)
{
    ferry_topic_info info;
    int found = it_topic(c, topic, &info);
    if (found && head)
        *head = info.head_seq;
    return found;
}

static size_t group_count(ferry_conn *c, const char *topic)
{
    ferry_group_info *gs = NULL;
    size_t n = 0;
    assert_int_equal(ferry_groups(c, topic, &gs, &n), 0);
    ferry_groups_free(gs);
    return n;
}

/* Rows of messages in topic id's rid range, read from ferry.db. */
static long rows_of_id(struct fx *fx, int64_t id)
{
    sqlite3 *db = NULL;
    assert_int_equal(harness_db_open(&fx->b, &db), 0);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT count(*) FROM messages WHERE rid >= (?1 << 40) "
                                        "AND rid < ((?1 + 1) << 40)",
                                        -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_int64(st, 1, id);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    long n = (long)sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

static int64_t db_int(struct fx *fx, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(harness_db_open(&fx->b, &db), 0);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    int64_t v = -1;
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_type(st, 0) == SQLITE_NULL ? -2 : sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* Waits until the broker purged every row of topic id (the purge runs in
 * steps after the deletion). */
static void wait_purged(struct fx *fx, int64_t id)
{
    for (int i = 0; i < 600 && rows_of_id(fx, id) > 0; i++)
        it_sleep_ms(50);
    assert_int_equal(rows_of_id(fx, id), 0);
}

static int64_t topic_id(struct fx *fx, const char *name)
{
    char sql[300];
    snprintf(sql, sizeof sql, "SELECT id FROM topics WHERE name = '%s'", name);
    return db_int(fx, sql);
}

/* A topic without groups goes at once; its name starts over at 1 and its
 * message ids are forgotten; the rows are purged and the id never reused. */
static void test_delete_topic_starts_over(void **state)
{
    struct fx *fx = *state;
    ferry_conn *c = it_connect(fx->b.addr);
    ferry_msg m = {.topic = "scratch", .payload = "x", .payload_len = 1, .id = "order-1"};
    ferry_ack ack;
    assert_int_equal(ferry_publish(c, &m, &ack), 0);
    publish_n(c, "scratch", 9, NULL);
    publish_n(c, "other", 3, NULL);
    int64_t id = topic_id(fx, "scratch");
    assert_true(id > 0);

    struct proto_delete_ok ok;
    assert_int_equal(del(fx, "scratch", NULL, 0, &ok, NULL, 0), 0);
    assert_int_equal(ok.messages, 10);
    assert_int_equal(ok.groups, 0);
    assert_false(listed(c, "scratch", NULL));
    assert_true(listed(c, "other", NULL));
    /* A second delete finds nothing. */
    char msg[256];
    assert_int_equal(del(fx, "scratch", NULL, 0, NULL, msg, sizeof msg), -FERRY_EUNKNOWN_TOPIC);
    assert_non_null(strstr(msg, "no such topic: scratch"));

    wait_purged(fx, id);
    char sql[200];
    snprintf(sql, sizeof sql, "SELECT purged_ms FROM deleted_topics WHERE id = %lld",
             (long long)id);
    assert_true(db_int(fx, sql) > 0);

    /* Same name: a new topic, from 1, the old id not reused; the id
     * published before is new again. */
    assert_int_equal(ferry_publish(c, &m, &ack), 0);
    assert_int_equal(ack.seq, 1);
    assert_false(ack.duplicate);
    assert_true(topic_id(fx, "scratch") > id);
    uint64_t head = 0;
    assert_true(listed(c, "scratch", &head));
    assert_int_equal(head, 1);
    ferry_close(c);
}

/* A topic with a group needs FORCE; with it, groups, the dead-letter topic
 * and the subscriptions go; the subscriber is told with SUB_END. */
static void test_delete_topic_with_groups_needs_force(void **state)
{
    struct fx *fx = *state;
    ferry_conn *c = it_connect(fx->b.addr);
    publish_n(c, "jobs", 5, NULL);

    /* A live subscription on a raw connection. */
    int sfd = harness_connect(fx->b.addr);
    assert_true(sfd >= 0);
    assert_int_equal(harness_handshake(sfd, NULL), 0);
    uint8_t frame[512];
    struct proto_writer w;
    proto_writer_init(&w, frame, sizeof frame);
    struct proto_subscribe sp = {.sub_id = 7,
                                 .topic = {(const uint8_t *)"jobs", 4},
                                 .group = {(const uint8_t *)"workers", 7},
                                 .start = PROTO_START_EARLIEST,
                                 .max_in_flight = 2};
    assert_int_equal(proto_encode_subscribe(&w, 3, &sp), 0);
    uint8_t *buf = malloc(1 << 16);
    struct proto_frame f;
    assert_int_equal(harness_request(sfd, frame, w.len, buf, 1 << 16, IO_MS, &f), 1);
    assert_int_equal(f.type, PROTO_SUBSCRIBE_OK);
    assert_int_equal(group_count(c, "jobs"), 1);

    char msg[512];
    assert_int_equal(del(fx, "jobs", NULL, 0, NULL, msg, sizeof msg), -FERRY_EINVALID);
    assert_non_null(strstr(msg, "1 consumer group"));
    assert_non_null(strstr(msg, "--force"));
    assert_true(listed(c, "jobs", NULL));

    struct proto_delete_ok ok;
    assert_int_equal(del(fx, "jobs", NULL, 1, &ok, NULL, 0), 0);
    assert_int_equal(ok.groups, 1);
    assert_int_equal(ok.messages, 5);
    assert_false(listed(c, "jobs", NULL));
    assert_false(listed(c, "_dead.jobs", NULL));

    /* The subscriber: its two deliveries, then SUB_END, nothing after. */
    int got_end = 0;
    for (int i = 0; i < 10 && !got_end; i++) {
        int r = harness_read_frame(sfd, buf, 1 << 16, IO_MS, &f);
        assert_int_equal(r, 1);
        if (f.type == PROTO_SUB_END) {
            assert_int_equal(f.u.sub_end.sub_id, 7);
            assert_int_equal(f.u.sub_end.code, -FERRY_EUNKNOWN_TOPIC);
            assert_true(f.u.sub_end.message.len > 0);
            got_end = 1;
        } else {
            assert_int_equal(f.type, PROTO_DELIVER);
        }
    }
    assert_true(got_end);
    /* Its acks now name no subscription; the connection lives on. */
    proto_writer_init(&w, frame, sizeof frame);
    size_t start = proto_frame_begin(&w, PROTO_ACK, 0, 4);
    proto_put_u32(&w, 7);
    proto_put_u16(&w, 1);
    proto_put_u64(&w, 1);
    assert_int_equal(proto_frame_end(&w, start), 0);
    assert_int_equal(harness_request(sfd, frame, w.len, buf, 1 << 16, IO_MS, &f), 1);
    assert_int_equal(f.type, PROTO_ERROR);
    assert_int_equal(f.u.error.code, -FERRY_EUNKNOWN_SUBSCRIPTION);
    free(buf);
    close(sfd);

    /* Subscribing again creates a new topic and group, from the start. */
    publish_n(c, "jobs", 1, NULL);
    assert_int_equal(group_count(c, "jobs"), 0);
    ferry_close(c);
}

/* One group goes; the topic and the other group's position stay; the
 * name subscribes again as a new group. Durable across a restart. */
static void test_delete_group_keeps_the_rest(void **state)
{
    struct fx *fx = *state;
    ferry_conn *c = it_connect(fx->b.addr);
    publish_n(c, "audit", 6, NULL);
    ferry_sub_options so = FERRY_SUB_OPTIONS_INIT;
    so.start = FERRY_START_EARLIEST;
    ferry_sub *a = NULL, *b = NULL;
    assert_int_equal(ferry_subscribe(c, "audit", "keep", &so, &a), 0);
    assert_int_equal(ferry_subscribe(c, "audit", "drop", &so, &b), 0);
    /* keep acks three. */
    for (int i = 0; i < 3; i++) {
        ferry_delivery *d = NULL;
        for (;;) {
            assert_int_equal(ferry_receive(c, IO_MS, &d), 0);
            if (d->sub == a)
                break;
            ferry_delivery_free(d);
        }
        assert_int_equal(ferry_delivery_ack(d), 0);
        ferry_delivery_free(d);
    }
    assert_int_equal(ferry_unsubscribe(a), 0);
    assert_int_equal(ferry_unsubscribe(b), 0);
    ferry_close(c);
    c = it_connect(fx->b.addr);

    char msg[256];
    assert_int_equal(del(fx, "audit", "nope", 0, NULL, msg, sizeof msg), -FERRY_EUNKNOWN_GROUP);
    assert_int_equal(del(fx, "nosuch", "drop", 0, NULL, msg, sizeof msg), -FERRY_EUNKNOWN_TOPIC);
    struct proto_delete_ok ok;
    assert_int_equal(del(fx, "audit", "drop", 0, &ok, NULL, 0), 0);
    assert_int_equal(ok.groups, 1);
    assert_int_equal(ok.messages, 0);
    assert_int_equal(group_count(c, "audit"), 1);
    assert_true(listed(c, "audit", NULL));

    ferry_close(c);
    close(fx->fd);
    fx->fd = -1;
    assert_int_equal(harness_kill9(&fx->b), 0);
    assert_int_equal(harness_restart(&fx->b), 0);
    reconnect(fx);
    c = it_connect(fx->b.addr);
    ferry_group_info *gs = NULL;
    size_t n = 0;
    assert_int_equal(ferry_groups(c, "audit", &gs, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(gs[0].group, "keep");
    assert_int_equal(gs[0].ack_floor, 4);
    ferry_groups_free(gs);
    assert_int_equal(db_int(fx, "SELECT count(*) FROM groups WHERE name = 'drop'"), 0);
    ferry_close(c);
}

/* A big topic: DELETE_OK comes at once, publishes elsewhere are served
 * while its rows go in steps, and a kill -9 in the middle of the purge
 * leaves it deleted and purging on at the next start. */
static int setup_slow_purge(void **state)
{
    /* 10 rows a step: the purge of 20,000 takes 2,000 commits, so the
     * kill -9 below lands in its middle. */
    setenv("FERRY_TEST_PURGE_STEP", "10", 1);
    int rc = setup(state);
    unsetenv("FERRY_TEST_PURGE_STEP");
    return rc;
}

static void test_delete_purge_survives_kill9(void **state)
{
    struct fx *fx = *state;
    ferry_conn *c = it_connect(fx->b.addr);
    publish_batch_n(c, "big", 20000);
    int64_t id = topic_id(fx, "big");
    struct proto_delete_ok ok;
    assert_int_equal(del(fx, "big", NULL, 0, &ok, NULL, 0), 0);
    assert_int_equal(ok.messages, 20000);
    /* Publishing goes on meanwhile. */
    uint64_t seq = 0;
    publish_n(c, "live", 20, &seq);
    assert_int_equal(seq, 20);
    ferry_close(c);
    close(fx->fd);
    fx->fd = -1;
    assert_int_equal(harness_kill9(&fx->b), 0);
    long left = rows_of_id(fx, id);
    assert_true(left > 0 && left < 20000);
    /* Restarted with the normal step (the environment is read at start). */
    assert_int_equal(harness_restart(&fx->b), 0);
    reconnect(fx);
    c = it_connect(fx->b.addr);
    assert_false(listed(c, "big", NULL));
    wait_purged(fx, id);
    uint64_t head = 0;
    assert_true(listed(c, "live", &head));
    assert_int_equal(head, 20);
    ferry_close(c);
}

/* The dead-letter topic goes with its topic; deleted on its own, the
 * group's record of what it can redrive goes with it. */
static void test_delete_dead_letter_topic(void **state)
{
    struct fx *fx = *state;
    ferry_conn *c = it_connect(fx->b.addr);
    publish_n(c, "mail", 2, NULL);
    ferry_sub_options so = FERRY_SUB_OPTIONS_INIT;
    so.max_deliveries = 1;
    so.max_in_flight = 1;
    ferry_sub *s = NULL;
    assert_int_equal(ferry_subscribe(c, "mail", "send", &so, &s), 0);
    ferry_delivery *d = NULL;
    assert_int_equal(ferry_receive(c, IO_MS, &d), 0);
    assert_int_equal(ferry_delivery_nack(d, 0, "bounce"), 0); /* its only attempt */
    ferry_delivery_free(d);
    for (int i = 0; i < 100 && !listed(c, "_dead.mail", NULL); i++)
        it_sleep_ms(20);
    assert_true(listed(c, "_dead.mail", NULL));
    uint64_t floor = 0, keep[4];
    size_t nkeep = 0;
    for (int i = 0; i < 100; i++) {
        assert_int_equal(ferry_group_floor(c, "mail", "send", &floor, keep, 4, &nkeep), 0);
        if (nkeep == 1)
            break;
        it_sleep_ms(20);
    }
    assert_int_equal(nkeep, 1);
    assert_int_equal(keep[0], 1);

    /* _dead.mail alone: the group's redrivable record goes. */
    ferry_delete_result r = {.size = sizeof r};
    assert_int_equal(ferry_topic_delete(c, "_dead.mail", 0, &r), 0);
    assert_int_equal(r.messages, 1);
    assert_false(listed(c, "_dead.mail", NULL));
    assert_int_equal(ferry_group_floor(c, "mail", "send", &floor, keep, 4, &nkeep), 0);
    assert_int_equal(nkeep, 0);

    /* Dead-letter again, then the topic with --force: both go. */
    assert_int_equal(ferry_receive(c, IO_MS, &d), 0);
    assert_int_equal(d->seq, 2);
    assert_int_equal(ferry_delivery_nack(d, 0, "bounce"), 0);
    ferry_delivery_free(d);
    for (int i = 0; i < 100 && !listed(c, "_dead.mail", NULL); i++)
        it_sleep_ms(20);
    assert_true(listed(c, "_dead.mail", NULL));
    assert_int_equal(ferry_topic_delete(c, "mail", 0, &r), FERRY_EINVALID);
    assert_int_equal(ferry_topic_delete(c, "mail", FERRY_DELETE_FORCE, &r), 0);
    assert_int_equal(r.groups, 1);
    assert_int_equal(r.messages, 3);
    assert_false(listed(c, "mail", NULL));
    assert_false(listed(c, "_dead.mail", NULL));
    /* The subscription ended with the topic. */
    assert_int_equal(ferry_receive(c, IO_MS, &d), FERRY_EUNKNOWN_TOPIC);
    assert_int_equal(db_int(fx, "SELECT count(*) FROM group_dead"), 0);
    assert_int_equal(db_int(fx, "SELECT count(*) FROM groups"), 0);
    ferry_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_delete_topic_starts_over, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_topic_with_groups_needs_force, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_group_keeps_the_rest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_dead_letter_topic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_purge_survives_kill9, setup_slow_purge,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
