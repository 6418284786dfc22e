/*
 * test_store.c - the broker's SQLite store on its own: sequences, dedupe,
 * atomic batches, storage-full rollback, reopen, dedupe generations.
 *
 * Batches are built the way the connection layer builds them: a PUBLISH
 * frame is encoded, decoded, and its message bytes copied into batch->in.
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

#include "batch.h"
#include "proto.h"
#include "store.h"

struct fixture {
    char dir[64];
    char path[128];
    struct store *store;
    struct store_config cfg;
    struct batch batch;
    struct buf ack; /* the last PUBLISH_ACK ack_of encoded */
    uint8_t frame[1 << 20];
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    strcpy(f->dir, "/tmp/ferry-test-store.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/ferry.db", f->dir);
    f->cfg.path = f->path;
    f->cfg.sync_full = 0;
    f->cfg.cache_mb = 8;
    f->cfg.dedupe_window_ms = 3600 * 1000;
    char err[256];
    assert_int_equal(store_open(&f->cfg, &f->store, err, sizeof(err)), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    store_close(f->store);
    batch_free(&f->batch);
    buf_free(&f->ack);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static void reopen(struct fixture *f)
{
    char err[256];
    store_close(f->store);
    assert_int_equal(store_open(&f->cfg, &f->store, err, sizeof(err)), 0);
}

struct tmsg {
    const char *topic;
    const char *id; /* NULL: none */
    const char *payload;
};

/* Appends one OP_PUBLISH op holding msgs to the fixture's batch. */
static struct op *add_publish(struct fixture *f, uint32_t rid, const struct tmsg *msgs, int n)
{
    struct proto_writer w;
    proto_writer_init(&w, f->frame, sizeof(f->frame));
    size_t start = proto_publish_begin(&w, rid);
    for (int i = 0; i < n; i++) {
        struct proto_msg m = {0};
        m.topic.ptr = (const uint8_t *)msgs[i].topic;
        m.topic.len = strlen(msgs[i].topic);
        if (msgs[i].id) {
            m.id.ptr = (const uint8_t *)msgs[i].id;
            m.id.len = strlen(msgs[i].id);
        }
        m.payload.ptr = (const uint8_t *)msgs[i].payload;
        m.payload.len = strlen(msgs[i].payload);
        proto_publish_add(&w, &m, NULL);
    }
    assert_int_equal(proto_publish_end(&w, start, (uint16_t)n), 0);
    struct proto_frame fr;
    assert_true(proto_decode(f->frame, w.len, PROTO_ABSOLUTE_MAX_FRAME, &fr) > 0);
    struct op *op = batch_add(&f->batch, OP_PUBLISH);
    assert_non_null(op);
    op->request_id = rid;
    op->u.publish.count = fr.u.publish.count;
    assert_int_equal(
        batch_put(&f->batch, fr.u.publish.msgs.ptr, fr.u.publish.msgs.len, &op->u.publish.msgs), 0);
    f->batch.messages += (uint64_t)n;
    return op;
}

/* Reads the i-th ack entry of the PUBLISH_ACK the broker sends for op's
 * results; fails the test on an ERROR. */
static struct proto_ack_entry ack_of(struct fixture *f, size_t opi, int i)
{
    struct op *op = &f->batch.ops[opi];
    assert_int_equal(op->status, 0);
    f->ack.len = 0;
    assert_int_equal(batch_encode_publish_ack(&f->batch, op, &f->ack), 0);
    struct proto_frame fr;
    assert_true(proto_decode(f->ack.data, f->ack.len, PROTO_ABSOLUTE_MAX_FRAME, &fr) > 0);
    assert_int_equal(fr.type, PROTO_PUBLISH_ACK);
    assert_int_equal(fr.request_id, op->request_id);
    struct proto_ack_iter it;
    struct proto_ack_entry e;
    proto_ack_iter_init(&it, &fr.u.publish_ack);
    for (int k = 0; k <= i; k++)
        assert_true(proto_ack_next(&it, &e));
    return e;
}

static int error_of(struct fixture *f, size_t opi)
{
    struct op *op = &f->batch.ops[opi];
    if (op->kind == OP_PUBLISH && !op->status)
        return 0; /* stored: its results make the PUBLISH_ACK */
    struct proto_frame fr;
    assert_true(proto_decode(f->batch.out.data + op->out_off, op->out_len, PROTO_ABSOLUTE_MAX_FRAME,
                             &fr) > 0);
    if (fr.type != PROTO_ERROR)
        return 0;
    return -(int)fr.u.error.code;
}

static void commit(struct fixture *f, int64_t now_ms)
{
    store_commit(f->store, &f->batch, now_ms);
}

static void test_store_publish_assigns_dense_seqs(void **state)
{
    struct fixture *f = *state;
    struct tmsg a[] = {{"orders", "a1", "x"}, {"orders", "a2", "y"}, {"users", NULL, "z"}};
    add_publish(f, 7, a, 3);
    struct tmsg b[] = {{"orders", NULL, "w"}};
    add_publish(f, 8, b, 1);
    commit(f, 1000);
    assert_int_equal(f->batch.commit_status, 0);
    assert_int_equal(ack_of(f, 0, 0).seq, 1);
    assert_int_equal(ack_of(f, 0, 1).seq, 2);
    assert_int_equal(ack_of(f, 0, 2).seq, 1); /* a new topic starts at 1 */
    assert_int_equal(ack_of(f, 1, 0).seq, 3);
    struct proto_ack_entry e = ack_of(f, 0, 2);
    assert_int_equal(e.id.len, 36); /* broker-assigned */
    assert_int_equal(e.flags, 0);
    assert_int_equal(proto_id_valid(e.id.ptr, e.id.len), 0);
}

static void test_store_duplicate_acked_with_original_seq(void **state)
{
    struct fixture *f = *state;
    struct tmsg a[] = {{"t", "dup", "1"}, {"t", "dup", "2"}, {"t", "other", "3"}};
    add_publish(f, 1, a, 3);
    commit(f, 1000);
    assert_int_equal(ack_of(f, 0, 0).seq, 1);
    assert_int_equal(ack_of(f, 0, 0).flags, 0);
    assert_int_equal(ack_of(f, 0, 1).seq, 1);
    assert_int_equal(ack_of(f, 0, 1).flags, PROTO_ACK_DUPLICATE);
    assert_int_equal(ack_of(f, 0, 2).seq, 2);
    batch_reset(&f->batch);

    /* After a reopen the id is still known; the same id in another topic is new. */
    reopen(f);
    struct tmsg b[] = {{"t", "dup", "again"}, {"t2", "dup", "new"}, {"t", "fresh", "n"}};
    add_publish(f, 2, b, 3);
    commit(f, 2000);
    assert_int_equal(ack_of(f, 0, 0).seq, 1);
    assert_int_equal(ack_of(f, 0, 0).flags, PROTO_ACK_DUPLICATE);
    assert_int_equal(ack_of(f, 0, 1).seq, 1);
    assert_int_equal(ack_of(f, 0, 1).flags, 0);
    assert_int_equal(ack_of(f, 0, 2).seq, 3); /* duplicates consumed no sequence */
    struct store_stats st;
    store_get_stats(f->store, &st);
    assert_int_equal(st.duplicates, 1);
    assert_int_equal(st.messages_stored, 2);
}

static void test_store_full_fails_whole_batch_and_keeps_earlier(void **state)
{
    struct fixture *f = *state;
    store_close(f->store);
    f->cfg.max_db_bytes = 256 * 1024;
    char err[256];
    assert_int_equal(store_open(&f->cfg, &f->store, err, sizeof(err)), 0);

    static char big[60000];
    memset(big, 'p', sizeof(big) - 1);
    uint64_t stored = 0;
    int failed = 0;
    for (int i = 0; i < 100 && !failed; i++) {
        char id[32];
        snprintf(id, sizeof(id), "m%d", i);
        struct tmsg m[] = {{"fill", id, big}};
        batch_reset(&f->batch);
        add_publish(f, (uint32_t)i, m, 1);
        commit(f, 1000 + i);
        if (f->batch.commit_status) {
            assert_int_equal(f->batch.commit_status, FERRY_ESTORAGE_FULL);
            assert_int_equal(error_of(f, 0), FERRY_ESTORAGE_FULL);
            failed = 1;
        } else {
            assert_int_equal(ack_of(f, 0, 0).seq, stored + 1);
            stored++;
        }
    }
    assert_true(failed);
    assert_true(stored > 0);

    /* A small message still fits, takes the next sequence: nothing of the
     * failed transaction (its sequence, its dedupe record) was kept. */
    batch_reset(&f->batch);
    struct tmsg small[] = {{"fill", "m-small", "s"}};
    add_publish(f, 500, small, 1);
    commit(f, 5000);
    assert_int_equal(f->batch.commit_status, 0);
    assert_int_equal(ack_of(f, 0, 0).seq, stored + 1);

    /* The space returns (cap lifted): publishing goes on, earlier ids dedupe. */
    store_close(f->store);
    f->cfg.max_db_bytes = 0;
    assert_int_equal(store_open(&f->cfg, &f->store, err, sizeof(err)), 0);
    batch_reset(&f->batch);
    struct tmsg again[] = {{"fill", "m0", "x"}, {"fill", "after", big}};
    add_publish(f, 501, again, 2);
    commit(f, 6000);
    assert_int_equal(f->batch.commit_status, 0);
    assert_int_equal(ack_of(f, 0, 0).seq, 1);
    assert_int_equal(ack_of(f, 0, 0).flags, PROTO_ACK_DUPLICATE);
    assert_int_equal(ack_of(f, 0, 1).seq, stored + 2);
}

static void test_store_topics_listing(void **state)
{
    struct fixture *f = *state;
    struct tmsg a[] = {{"zeta", NULL, "12345"}, {"alpha", NULL, "1"}, {"alpha", NULL, "22"}};
    add_publish(f, 1, a, 3);
    struct op *op = batch_add(&f->batch, OP_TOPICS);
    op->request_id = 9;
    commit(f, 1234);
    struct proto_frame fr;
    assert_true(proto_decode(f->batch.out.data + op->out_off, op->out_len, PROTO_ABSOLUTE_MAX_FRAME,
                             &fr) > 0);
    assert_int_equal(fr.type, PROTO_TOPICS_OK);
    assert_int_equal(fr.request_id, 9);
    assert_int_equal(fr.u.topics_ok.count, 2);
    struct proto_topic_iter it;
    struct proto_topic_info ti;
    proto_topic_iter_init(&it, &fr.u.topics_ok);
    assert_true(proto_topic_next(&it, &ti));
    assert_memory_equal(ti.name.ptr, "alpha", 5);
    assert_int_equal(ti.head_seq, 2);
    assert_int_equal(ti.first_seq, 1);
    assert_int_equal(ti.message_count, 2);
    assert_int_equal(ti.bytes, 3);
    assert_int_equal(ti.created_ms, 1234);
    assert_true(proto_topic_next(&it, &ti));
    assert_memory_equal(ti.name.ptr, "zeta", 4);
    assert_int_equal(ti.bytes, 5);
    assert_false(proto_topic_next(&it, &ti));
}

static void test_store_reopen_keeps_heads(void **state)
{
    struct fixture *f = *state;
    for (int i = 0; i < 3; i++) {
        batch_reset(&f->batch);
        struct tmsg a[] = {{"t", NULL, "x"}, {"t", NULL, "y"}};
        add_publish(f, 1, a, 2);
        commit(f, 1000);
        assert_int_equal(ack_of(f, 0, 1).seq, (uint64_t)(2 * i + 2));
        reopen(f);
    }
}

/* An id is remembered for the dedupe window, then forgotten. */
static void test_store_dedupe_window_expires(void **state)
{
    struct fixture *f = *state;
    store_close(f->store);
    f->cfg.dedupe_window_ms = 1000;
    char err[256];
    assert_int_equal(store_open(&f->cfg, &f->store, err, sizeof(err)), 0);
    int64_t t0 = 4000000000000;

    struct tmsg a[] = {{"t", "k", "1"}};
    add_publish(f, 1, a, 1);
    commit(f, t0);
    assert_int_equal(ack_of(f, 0, 0).flags, 0);

    batch_reset(&f->batch);
    add_publish(f, 2, a, 1);
    commit(f, t0 + 1000); /* exactly one window later: still known */
    assert_int_equal(ack_of(f, 0, 0).flags, PROTO_ACK_DUPLICATE);
    assert_int_equal(ack_of(f, 0, 0).seq, 1);

    batch_reset(&f->batch);
    struct tmsg other[] = {{"t", "z", "1"}};
    add_publish(f, 3, other, 1); /* this commit purges "k" */
    commit(f, t0 + 1001);
    struct store_stats st;
    store_get_stats(f->store, &st);
    assert_int_equal(st.dedupe_purged, 1);
    assert_int_equal(st.dedupe_ids, 1);

    /* Forgotten in memory and on disk: a reopen does not bring it back. */
    reopen(f);
    batch_reset(&f->batch);
    add_publish(f, 4, a, 1);
    commit(f, t0 + 1002);
    assert_int_equal(ack_of(f, 0, 0).flags, 0);
    assert_int_equal(ack_of(f, 0, 0).seq, 3);
}

/* Beyond the maximum of remembered ids the oldest are forgotten first. */
static void test_store_dedupe_max_ids_evicts_oldest(void **state)
{
    struct fixture *f = *state;
    store_close(f->store);
    f->cfg.dedupe_max_ids = 5;
    char err[256];
    assert_int_equal(store_open(&f->cfg, &f->store, err, sizeof(err)), 0);
    char ids[10][8];
    struct tmsg m[10];
    for (int i = 0; i < 10; i++) {
        snprintf(ids[i], sizeof(ids[i]), "id%d", i);
        m[i] = (struct tmsg){"t", ids[i], "x"};
    }
    add_publish(f, 1, m, 10);
    commit(f, 1000);
    struct store_stats st;
    store_get_stats(f->store, &st);
    assert_int_equal(st.dedupe_ids, 5);
    assert_int_equal(st.dedupe_evicted, 5);

    reopen(f);
    batch_reset(&f->batch);
    struct tmsg again[] = {{"t", "id9", "x"}, {"t", "id5", "x"}, {"t", "id4", "x"}};
    add_publish(f, 2, again, 3);
    commit(f, 2000);
    assert_int_equal(ack_of(f, 0, 0).flags, PROTO_ACK_DUPLICATE);
    assert_int_equal(ack_of(f, 0, 0).seq, 10);
    assert_int_equal(ack_of(f, 0, 1).flags, PROTO_ACK_DUPLICATE);
    assert_int_equal(ack_of(f, 0, 1).seq, 6);
    assert_int_equal(ack_of(f, 0, 2).flags, 0); /* evicted: stored again */
    assert_int_equal(ack_of(f, 0, 2).seq, 11);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_store_publish_assigns_dense_seqs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_duplicate_acked_with_original_seq, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_store_full_fails_whole_batch_and_keeps_earlier, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_store_topics_listing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_reopen_keeps_heads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_dedupe_window_expires, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_dedupe_max_ids_evicts_oldest, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
