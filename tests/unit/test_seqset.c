/*
 * test_seqset.c - the consumer group's sequence containers (broker/seqset.h)
 * on their own: the entry map against a plain array, the acked bitmap as
 * its floor moves and it grows, the ready ring across wrap-around and
 * growth, and the due-time heap's order.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "seqset.h"

/* A small deterministic generator (xorshift64). */
static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void test_seqset_entry_map_matches_a_plain_set(void **state)
{
    (void)state;
    enum { RANGE = 5000, STEPS = 200000 };
    static uint8_t present[RANGE + 1];
    memset(present, 0, sizeof(present));
    struct entry_map m = {0};
    uint64_t r = 88172645463325252ULL;
    size_t count = 0;
    for (int i = 0; i < STEPS; i++) {
        uint64_t seq = 1 + rnd(&r) % RANGE;
        struct entry *e = entry_map_get(&m, seq);
        assert_int_equal(e != NULL, present[seq]);
        if (e) {
            assert_int_equal(e->seq, seq);
            assert_int_equal(e->attempt, (uint32_t)(seq * 7));
            if (rnd(&r) % 2) {
                entry_map_remove(&m, e);
                present[seq] = 0;
                count--;
            }
        } else {
            e = entry_map_add(&m, seq);
            assert_non_null(e);
            assert_int_equal(e->seq, seq);
            assert_int_equal(e->state, 0);
            e->attempt = (uint32_t)(seq * 7);
            if (seq % 3 == 0)
                e->reason = strdup("nacked"); /* freed by the map */
            present[seq] = 1;
            count++;
        }
        assert_int_equal(m.count, count);
    }
    for (uint64_t seq = 1; seq <= RANGE; seq++)
        assert_int_equal(entry_map_get(&m, seq) != NULL, present[seq]);
    assert_null(entry_map_get(&m, 0));
    entry_map_clear(&m);
    assert_int_equal(m.count, 0);
    assert_null(entry_map_get(&m, 3));
    assert_non_null(entry_map_add(&m, 3));
    entry_map_free(&m);
    assert_null(m.slots);
}

static void test_seqset_acked_bits_follow_the_floor(void **state)
{
    (void)state;
    struct acked_bits a = {0};
    uint64_t floor = 100;
    assert_true(acked_bits_test(&a, floor, 99)); /* below the floor: acked */
    assert_false(acked_bits_test(&a, floor, 100));
    assert_false(acked_bits_test(&a, floor, 1u << 20)); /* beyond the map */
    for (uint64_t s = 101; s < 100000; s += 2)
        assert_int_equal(acked_bits_set(&a, floor, s), 0); /* grows as needed */
    assert_true(a.cap >= 100000 - floor);
    for (uint64_t s = 100; s < 100000; s++)
        assert_int_equal(acked_bits_test(&a, floor, s), s % 2 == 1);
    /* The floor moves over what is acked, clearing bits on the way. */
    assert_int_equal(acked_bits_set(&a, floor, 100), 0);
    while (acked_bits_test(&a, floor, floor)) {
        acked_bits_clear(&a, floor);
        floor++;
    }
    assert_int_equal(floor, 102);
    assert_true(acked_bits_test(&a, floor, 103));
    /* Circular: a sequence a whole map width above its old bit is not it. */
    assert_false(acked_bits_test(&a, floor, 100 + a.cap));
    acked_bits_reset(&a);
    assert_false(acked_bits_test(&a, floor, 103));
    acked_bits_free(&a);
    assert_int_equal(a.cap, 0);
}

static void test_seqset_ring_keeps_order_across_growth(void **state)
{
    (void)state;
    struct seq_ring r = {0};
    uint64_t v, next_in = 1, next_out = 1;
    assert_int_equal(seq_ring_pop(&r, &v), 0);
    /* Interleave pushes and pops so that the ring wraps before it grows. */
    for (int round = 0; round < 50; round++) {
        for (int i = 0; i < 40 + round; i++)
            assert_int_equal(seq_ring_push(&r, next_in++), 0);
        for (int i = 0; i < 30; i++) {
            assert_int_equal(seq_ring_pop(&r, &v), 1);
            assert_int_equal(v, next_out++);
        }
    }
    while (seq_ring_pop(&r, &v))
        assert_int_equal(v, next_out++);
    assert_int_equal(next_out, next_in);
    seq_ring_free(&r);
}

static void test_seqset_heap_earliest_first_then_by_seq(void **state)
{
    (void)state;
    struct due_heap h = {0};
    int owner;
    uint64_t r = 2463534242ULL;
    assert_int_equal(due_heap_push(&h, 500, &owner, 9), 1); /* first: earliest */
    assert_int_equal(due_heap_push(&h, 600, &owner, 1), 0);
    assert_int_equal(due_heap_push(&h, 400, &owner, 2), 1);
    for (int i = 0; i < 5000; i++)
        assert_true(due_heap_push(&h, 1000 + rnd(&r) % 300, &owner, rnd(&r) % 100000) >= 0);
    uint64_t last_due = 0, last_seq = 0;
    size_t n = 0;
    while (h.len) {
        struct due_item it = h.items[0];
        assert_ptr_equal(it.owner, &owner);
        assert_true(it.due_ms > last_due || (it.due_ms == last_due && it.seq >= last_seq));
        last_due = it.due_ms;
        last_seq = it.seq;
        due_heap_pop(&h);
        n++;
    }
    assert_int_equal(n, 5003);
    due_heap_free(&h);
}

static int owner_a;
static int is_a(const void *owner)
{
    return owner == &owner_a;
}

static void test_seqset_heap_drop_owner_keeps_the_rest_in_order(void **state)
{
    (void)state;
    struct due_heap h = {0};
    int b;
    uint64_t r = 88172645463325252ULL;
    size_t na = 0;
    for (int i = 0; i < 3000; i++) {
        int mine = rnd(&r) % 3 == 0;
        na += mine;
        assert_true(due_heap_push(&h, rnd(&r) % 500, mine ? &owner_a : &b, (uint64_t)i) >= 0);
    }
    assert_int_equal(due_heap_drop_if(&h, is_a), na);
    assert_int_equal(h.len, 3000 - na);
    assert_int_equal(due_heap_drop_if(&h, is_a), 0);
    uint64_t last_due = 0, last_seq = 0;
    while (h.len) {
        struct due_item it = h.items[0];
        assert_ptr_equal(it.owner, &b);
        assert_true(it.due_ms > last_due || (it.due_ms == last_due && it.seq >= last_seq));
        last_due = it.due_ms;
        last_seq = it.seq;
        due_heap_pop(&h);
    }
    due_heap_free(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seqset_entry_map_matches_a_plain_set),
        cmocka_unit_test(test_seqset_acked_bits_follow_the_floor),
        cmocka_unit_test(test_seqset_ring_keeps_order_across_growth),
        cmocka_unit_test(test_seqset_heap_earliest_first_then_by_seq),
        cmocka_unit_test(test_seqset_heap_drop_owner_keeps_the_rest_in_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
