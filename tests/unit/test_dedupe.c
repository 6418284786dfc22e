/*
 * test_dedupe.c - the in-memory id index: candidates, collisions, removal
 * with backward shift, growth, checked against a plain array model.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dedupe.h"

static int count_candidates(struct dedupe_index *d, uint64_t h, uint64_t want, int *seen_want)
{
    size_t pos = 0;
    uint64_t id;
    int n = 0;
    *seen_want = 0;
    while (dedupe_next(d, h, &pos, &id)) {
        n++;
        if (id == want)
            *seen_want = 1;
    }
    return n;
}

static void test_dedupe_add_find_remove(void **state)
{
    (void)state;
    struct dedupe_index d;
    assert_int_equal(dedupe_init(&d, 42), 0);
    uint64_t h = dedupe_hash(&d, 1, "order-1", 7);
    assert_int_equal(h & 1, 1);
    assert_int_not_equal(h, dedupe_hash(&d, 2, "order-1", 7)); /* topic is part of the key */
    int seen;
    assert_int_equal(count_candidates(&d, h, 5, &seen), 0);
    assert_int_equal(dedupe_add(&d, h, 5), 0);
    assert_int_equal(count_candidates(&d, h, 5, &seen), 1);
    assert_true(seen);
    assert_int_equal(dedupe_remove(&d, h, 6), 0);
    assert_int_equal(dedupe_remove(&d, h, 5), 1);
    assert_int_equal(count_candidates(&d, h, 5, &seen), 0);
    assert_int_equal(d.count, 0);
    dedupe_free(&d);
}

/* Equal hashes (true collisions) coexist and are all offered. */
static void test_dedupe_equal_hashes_all_candidates(void **state)
{
    (void)state;
    struct dedupe_index d;
    assert_int_equal(dedupe_init(&d, 1), 0);
    uint64_t h = 0x1234567890abcdefULL | 1;
    for (uint64_t i = 1; i <= 5; i++)
        assert_int_equal(dedupe_add(&d, h, i), 0);
    int seen;
    assert_int_equal(count_candidates(&d, h, 3, &seen), 5);
    assert_true(seen);
    assert_int_equal(dedupe_remove(&d, h, 3), 1);
    assert_int_equal(count_candidates(&d, h, 3, &seen), 4);
    assert_false(seen);
    dedupe_free(&d);
}

/* Random adds and removes, many sharing a home slot, checked against a
 * model after every step; the table grows several times on the way. */
static void test_dedupe_matches_model_under_churn(void **state)
{
    (void)state;
    struct dedupe_index d;
    assert_int_equal(dedupe_init(&d, 7), 0);
    enum { N = 4000 };
    uint64_t *hs = calloc(N, sizeof(*hs));
    int *live = calloc(N, sizeof(*live));
    assert_non_null(hs);
    assert_non_null(live);
    uint64_t x = 88172645463325252ULL;
    size_t nlive = 0;
    for (int step = 0; step < 4 * N; step++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        int i = (int)(x % N);
        if (!hs[i]) {
            /* Few distinct home slots: long clusters, wrap-around included. */
            hs[i] = ((x >> 20) % 64) << 1 | 1 | (((uint64_t)i) << 40);
            if (i % 3 == 0)
                hs[i] = (0xffffULL << 1) | 1; /* many exact duplicates of one hash */
        }
        if (live[i]) {
            assert_int_equal(dedupe_remove(&d, hs[i], (uint64_t)i + 1), 1);
            live[i] = 0;
            nlive--;
        } else {
            assert_int_equal(dedupe_add(&d, hs[i], (uint64_t)i + 1), 0);
            live[i] = 1;
            nlive++;
        }
        assert_int_equal(d.count, nlive);
        if (step % 499 == 0) {
            for (int k = 0; k < N; k++) {
                if (!hs[k])
                    continue;
                int seen;
                count_candidates(&d, hs[k], (uint64_t)k + 1, &seen);
                assert_int_equal(seen, live[k]);
            }
        }
    }
    free(hs);
    free(live);
    dedupe_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dedupe_add_find_remove),
        cmocka_unit_test(test_dedupe_equal_hashes_all_candidates),
        cmocka_unit_test(test_dedupe_matches_model_under_churn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
