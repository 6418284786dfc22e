/*
 * test_namemap.c - the topic registries' hash map (broker/namemap.h):
 * find, insert across growth, remove, and iteration that visits each
 * thing once, also while the thing just visited is removed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "namemap.h"

struct thing {
    struct name_link link; /* first */
    char name[16];
    int visits;
};

enum { N = 1000 };
static struct thing things[N];

static void fill(struct namemap *m)
{
    for (int i = 0; i < N; i++) {
        things[i].visits = 0;
        snprintf(things[i].name, sizeof(things[i].name), "topic.%d", i);
        assert_int_equal(namemap_insert(m, &things[i].link, things[i].name, strlen(things[i].name)),
                         0);
    }
}

static void test_namemap_find_insert_remove(void **state)
{
    (void)state;
    struct namemap m = {0};
    assert_null(namemap_find(&m, "x", 1));
    assert_null(namemap_first(&m));
    fill(&m);
    assert_int_equal(m.count, N);
    for (int i = 0; i < N; i++)
        assert_ptr_equal(namemap_find(&m, things[i].name, strlen(things[i].name)), &things[i]);
    assert_null(namemap_find(&m, "topic.1000", 10));
    assert_null(namemap_find(&m, "topic.1", 6)); /* a prefix is another name */
    for (int i = 0; i < N; i += 2)
        namemap_remove(&m, &things[i].link);
    assert_int_equal(m.count, N / 2);
    for (int i = 0; i < N; i++)
        assert_int_equal(namemap_find(&m, things[i].name, strlen(things[i].name)) != NULL, i % 2);
    namemap_free(&m);
}

static void test_namemap_iteration_visits_each_once(void **state)
{
    (void)state;
    struct namemap m = {0};
    fill(&m);
    for (struct thing *t = namemap_first(&m); t; t = namemap_next(&m, t))
        t->visits++;
    for (int i = 0; i < N; i++)
        assert_int_equal(things[i].visits, 1);
    /* Removing each one after its next was taken, as the free loops do. */
    size_t seen = 0;
    for (struct thing *t = namemap_first(&m); t;) {
        struct thing *next = namemap_next(&m, t);
        namemap_remove(&m, &t->link);
        seen++;
        t = next;
    }
    assert_int_equal(seen, N);
    assert_int_equal(m.count, 0);
    assert_null(namemap_first(&m));
    namemap_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_namemap_find_insert_remove),
        cmocka_unit_test(test_namemap_iteration_visits_each_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
