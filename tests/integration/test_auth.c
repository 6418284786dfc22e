/*
 * test_auth.c - tokens and per-topic permissions from the config file:
 * refused at the handshake without the right token, each right denied and
 * allowed, secrets never logged, no network listening without tokens.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "it_util.h"

#define PRODUCER_SECRET "producer-secret-0123456789"
#define CONSUMER_SECRET "consumer-secret-abcdefghij"
#define ADMIN_SECRET "admin-secret-ABCDEFGHIJKLMN"

struct fx {
    struct harness_broker b;
    char conf[256];
};

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    strcpy(fx->conf, "/tmp/ferry-auth-XXXXXX");
    int fd = mkstemp(fx->conf);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    fprintf(f, "[broker]\n"
               "sync = normal\n"
               "\n"
               "[token producer]\n"
               "secret = " PRODUCER_SECRET "\n"
               "publish = orders, orders.*\n"
               "\n"
               "[token consumer]\n"
               "secret = " CONSUMER_SECRET "\n"
               "consume = orders\n"
               "\n"
               "[token admin]\n"
               "secret = " ADMIN_SECRET "\n"
               "publish = *\n"
               "consume = *\n"
               "admin = true\n");
    fclose(f);
    chmod(fx->conf, 0600);
    const char *args[] = {"--config", fx->conf, NULL};
    assert_int_equal(harness_start(&fx->b, args), 0);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    assert_int_equal(harness_stop(&fx->b), 0);
    harness_cleanup(&fx->b);
    unlink(fx->conf);
    free(fx);
    return 0;
}

static int connect_as(struct fx *fx, const char *token, ferry_conn **out)
{
    ferry_options o = {.size = sizeof(ferry_options), .token = token, .connect_timeout_ms = 5000};
    char err[256];
    return ferry_connect(fx->b.addr, &o, out, err, sizeof(err));
}

static void test_auth_wrong_or_missing_token_refused(void **state)
{
    struct fx *fx = *state;
    ferry_conn *c = NULL;
    assert_int_equal(connect_as(fx, NULL, &c), FERRY_EAUTH);
    assert_null(c);
    assert_int_equal(connect_as(fx, "producer-secret-012345678X", &c), FERRY_EAUTH);
    assert_int_equal(connect_as(fx, "producer-secret-0123456789-and-more", &c), FERRY_EAUTH);
    assert_int_equal(connect_as(fx, PRODUCER_SECRET, &c), 0);
    ferry_close(c);
}

static void test_auth_publish_rights(void **state)
{
    struct fx *fx = *state;
    ferry_conn *c;
    assert_int_equal(connect_as(fx, PRODUCER_SECRET, &c), 0);
    ferry_ack ack;
    ferry_msg ok = {.topic = "orders", .payload = "a", .payload_len = 1};
    ferry_msg ok2 = {.topic = "orders.eu", .payload = "b", .payload_len = 1};
    ferry_msg no = {.topic = "payments", .payload = "c", .payload_len = 1};
    assert_int_equal(ferry_publish(c, &ok, &ack), 0);
    assert_int_equal(ack.seq, 1);
    assert_int_equal(ferry_publish(c, &ok2, &ack), 0);
    assert_int_equal(ferry_publish(c, &no, &ack), FERRY_EDENIED);
    assert_non_null(strstr(ferry_errmsg(c), "payments"));
    /* A batch with one forbidden topic is refused whole. */
    ferry_msg batch[2] = {ok, no};
    ferry_ack acks[2];
    assert_int_equal(ferry_publish_batch(c, batch, 2, acks), FERRY_EDENIED);
    /* The connection goes on. */
    assert_int_equal(ferry_publish(c, &ok, &ack), 0);
    assert_int_equal(ack.seq, 2);
    /* No consume or admin right. */
    ferry_sub *s = NULL;
    assert_int_equal(ferry_subscribe(c, "orders", "g", NULL, &s), FERRY_EDENIED);
    ferry_topic_info *ti;
    size_t n;
    assert_int_equal(ferry_topics(c, &ti, &n), FERRY_EDENIED);
    ferry_close(c);
}

static void test_auth_consume_rights(void **state)
{
    struct fx *fx = *state;
    ferry_conn *p, *c;
    assert_int_equal(connect_as(fx, PRODUCER_SECRET, &p), 0);
    ferry_msg m = {.topic = "orders", .payload = "x", .payload_len = 1};
    assert_int_equal(ferry_publish(p, &m, NULL), 0);
    ferry_close(p);

    assert_int_equal(connect_as(fx, CONSUMER_SECRET, &c), 0);
    assert_int_equal(ferry_publish(c, &m, NULL), FERRY_EDENIED);
    ferry_sub *s = NULL;
    assert_int_equal(ferry_subscribe(c, "orders.eu", "g", NULL, &s), FERRY_EDENIED);
    assert_int_equal(ferry_subscribe(c, "orders", "g", NULL, &s), 0);
    ferry_delivery *d = NULL;
    assert_int_equal(ferry_receive(c, 5000, &d), 0);
    assert_int_equal(d->seq, 1);
    assert_int_equal(ferry_delivery_ack(d), 0);
    ferry_delivery_free(d);
    uint64_t cursor;
    assert_int_equal(ferry_seek(c, "orders", "g", FERRY_START_EARLIEST, 0, &cursor), 0);
    assert_int_equal(ferry_seek(c, "payments", "g", FERRY_START_EARLIEST, 0, &cursor),
                     FERRY_EDENIED);
    /* Deleting needs the admin right, even on a topic it may consume. */
    assert_int_equal(ferry_topic_delete(c, "orders", FERRY_DELETE_FORCE, NULL), FERRY_EDENIED);
    assert_int_equal(ferry_group_delete(c, "orders", "g", NULL), FERRY_EDENIED);
    ferry_close(c);
}

static void test_auth_admin_rights(void **state)
{
    struct fx *fx = *state;
    ferry_conn *c;
    assert_int_equal(connect_as(fx, ADMIN_SECRET, &c), 0);
    ferry_msg m = {.topic = "anything", .payload = "x", .payload_len = 1};
    assert_int_equal(ferry_publish(c, &m, NULL), 0);
    ferry_topic_info *ti;
    size_t n;
    assert_int_equal(ferry_topics(c, &ti, &n), 0);
    assert_int_equal(n, 1);
    ferry_topics_free(ti);
    ferry_group_info *gi;
    assert_int_equal(ferry_groups(c, NULL, &gi, &n), 0);
    ferry_groups_free(gi);
    ferry_delete_result dr = {.size = sizeof dr};
    assert_int_equal(ferry_topic_delete(c, "anything", 0, &dr), 0);
    assert_int_equal(dr.messages, 1);
    ferry_close(c);
}

/* The log names tokens and says what was refused, never a secret. */
static void test_auth_secrets_never_logged(void **state)
{
    struct fx *fx = *state;
    ferry_conn *c = NULL;
    assert_int_equal(connect_as(fx, "a-guess-that-is-long-enough", &c), FERRY_EAUTH);
    assert_int_equal(connect_as(fx, PRODUCER_SECRET, &c), 0);
    ferry_msg no = {.topic = "payments", .payload = "c", .payload_len = 1};
    assert_int_equal(ferry_publish(c, &no, NULL), FERRY_EDENIED);
    ferry_close(c);
    assert_int_equal(harness_stop(&fx->b), 0);
    FILE *f = fopen(fx->b.log_path, "r");
    assert_non_null(f);
    char line[2048];
    int refused = 0;
    while (fgets(line, sizeof(line), f)) {
        assert_null(strstr(line, PRODUCER_SECRET));
        assert_null(strstr(line, CONSUMER_SECRET));
        assert_null(strstr(line, ADMIN_SECRET));
        assert_null(strstr(line, "a-guess-that-is-long-enough"));
        if (strstr(line, "refused"))
            refused = 1;
    }
    fclose(f);
    assert_true(refused);
    assert_int_equal(harness_restart(&fx->b), 0);
}

/* Without tokens ferryd refuses to listen beyond loopback. */
static void refused_listen(const char *listen, const char *http);

static void test_auth_no_tokens_no_network_listen(void **state)
{
    (void)state;
    refused_listen("0.0.0.0:0", NULL);
    /* The HTTP listener likewise (its API shows topic names and clients). */
    refused_listen("127.0.0.1:0", "0.0.0.0:0");
}

/* ferryd with these listeners and no tokens exits 2 without serving. */
static void refused_listen(const char *listen, const char *http)
{
    /* FERRYD, behind FERRYD_WRAPPER when that is set. */
    struct harness_cmd ferryd;
    int argc = harness_ferryd_argv(&ferryd);
    assert_true(argc > 0);
    char dir[] = "/tmp/ferry-auth-dir-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *argv[HARNESS_MAX_WRAPPER_ARGS + 10];
    memcpy(argv, ferryd.argv, (size_t)argc * sizeof *argv);
    argv[argc++] = "--listen";
    argv[argc++] = (char *)listen;
    if (http) {
        argv[argc++] = "--http";
        argv[argc++] = (char *)http;
    }
    argv[argc++] = "--data";
    argv[argc++] = dir;
    argv[argc] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int devnull = open("/dev/null", 1);
        dup2(devnull, 2);
        execv(ferryd.path, argv);
        _exit(127);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 2);
    char rm[128];
    snprintf(rm, sizeof(rm), "rm -rf %s", dir);
    assert_int_equal(system(rm), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_auth_wrong_or_missing_token_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth_publish_rights, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth_consume_rights, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth_admin_rights, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth_secrets_never_logged, setup, teardown),
        cmocka_unit_test(test_auth_no_tokens_no_network_listen),
    };
    if (getenv("IT_FILTER"))
        cmocka_set_test_filter(getenv("IT_FILTER"));
    return cmocka_run_group_tests_name("auth", tests, NULL, NULL);
}
