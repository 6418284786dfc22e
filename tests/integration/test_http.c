/*
 * test_http.c - ferryd --http (issue 12): /metrics in the Prometheus text
 * format as promtool checks it, the JSON API agreeing with the protocol's
 * TOPICS and GROUPS, admin tokens (Bearer and Basic), and requests that
 * must cost their sender only: bad methods, oversized headers and bodies,
 * idle and flooding connections, and a shutdown with HTTP clients open.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "ferry.h"
#include "harness.h"
#include "it_util.h"

#define ADMIN_SECRET "admin-secret-ABCDEFGHIJKLMN"
#define READER_SECRET "reader-secret-0123456789ab"

struct fx {
    struct it_fx base; /* first */
    int port;
    char http[64];
    char conf[256];
};

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    int port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static int start(void **state, const char *conf_text)
{
    struct fx *fx = calloc(1, sizeof(*fx));
    if (!fx)
        return -1;
    fx->port = free_port();
    snprintf(fx->http, sizeof(fx->http), "127.0.0.1:%d", fx->port);
    const char *args[5] = {"--http", fx->http, NULL, NULL, NULL};
    if (conf_text) {
        strcpy(fx->conf, "/tmp/ferry-http-XXXXXX");
        int fd = mkstemp(fx->conf);
        if (fd < 0 || write(fd, conf_text, strlen(conf_text)) != (ssize_t)strlen(conf_text))
            return -1;
        close(fd);
        args[2] = "--config";
        args[3] = fx->conf;
    }
    *state = fx;
    if (harness_start(&fx->base.b, args) != 0)
        return -1;
    ferry_options o = FERRY_OPTIONS_INIT;
    o.client_name = "test-http";
    o.token = conf_text ? ADMIN_SECRET : NULL;
    char err[256];
    return ferry_connect(fx->base.b.addr, &o, &fx->base.c, err, sizeof(err)) == 0 ? 0 : -1;
}

static int setup(void **state)
{
    return start(state, NULL);
}

static int setup_tokens(void **state)
{
    return start(state, "[token admin]\n"
                        "secret = " ADMIN_SECRET "\n"
                        "publish = *\n"
                        "consume = *\n"
                        "admin = true\n"
                        "\n"
                        "[token reader]\n"
                        "secret = " READER_SECRET "\n"
                        "consume = *\n");
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    if (fx && fx->conf[0])
        unlink(fx->conf);
    return it_fx_teardown(state);
}

/* ---- a minimal HTTP client ------------------------------------------- */

struct resp {
    int status;
    char *head; /* status line and headers, NUL-terminated */
    char *body; /* NUL-terminated */
    size_t body_len;
};

static void resp_free(struct resp *r)
{
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof(*r));
}

/* Reads until the peer closes or timeout_ms passes; returns the bytes read
 * (malloc'd, NUL-terminated) and their count in *n, or NULL. */
static char *read_all(int fd, int timeout_ms, size_t *n)
{
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap + 1);
    int64_t deadline = harness_now_ms() + timeout_ms;
    while (buf) {
        int left = (int)(deadline - harness_now_ms());
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (left <= 0 || poll(&p, 1, left) <= 0)
            break;
        if (len == cap) {
            char *nb = realloc(buf, (cap *= 2) + 1);
            if (!nb)
                break;
            buf = nb;
        }
        ssize_t k = read(fd, buf + len, cap - len);
        if (k <= 0)
            break;
        len += (size_t)k;
    }
    if (buf)
        buf[len] = 0;
    *n = len;
    return buf;
}

/* Sends raw and parses one response (the server closes after it:
 * requests say Connection: close). Returns 0 or -1. */
static int http_raw(int port, const char *raw, size_t raw_len, struct resp *r)
{
    memset(r, 0, sizeof(*r));
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    int fd = harness_connect(addr);
    if (fd < 0)
        return -1;
    if (harness_send(fd, raw, raw_len) < 0) {
        close(fd);
        return -1;
    }
    size_t n;
    char *all = read_all(fd, 10000, &n);
    close(fd);
    if (!all)
        return -1;
    char *sep = strstr(all, "\r\n\r\n");
    if (!sep || sscanf(all, "HTTP/1.%*d %d", &r->status) != 1) {
        free(all);
        return -1;
    }
    *sep = 0;
    r->head = strdup(all);
    r->body_len = n - (size_t)(sep + 4 - all);
    r->body = malloc(r->body_len + 1);
    memcpy(r->body, sep + 4, r->body_len);
    r->body[r->body_len] = 0;
    free(all);
    return 0;
}

static int http_get_auth(int port, const char *path, const char *auth, struct resp *r)
{
    char req[1024];
    int n =
        snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s%s%s\r\n",
                 path, auth ? "Authorization: " : "", auth ? auth : "", auth ? "\r\n" : "");
    return http_raw(port, req, (size_t)n, r);
}

static int http_get(int port, const char *path, struct resp *r)
{
    return http_get_auth(port, path, NULL, r);
}

static json_t *get_json(struct fx *fx, const char *path)
{
    struct resp r;
    if (http_get(fx->port, path, &r) != 0)
        return NULL;
    json_error_t e;
    json_t *v = r.status == 200 ? json_loads(r.body, 0, &e) : NULL;
    if (!v)
        fprintf(stderr, "GET %s: status %d: %s\n", path, r.status, r.body);
    resp_free(&r);
    return v;
}

static uint64_t ju(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    assert_non_null(v);
    return (uint64_t)json_integer_value(v);
}

static json_t *find_by(json_t *arr, const char *k1, const char *v1, const char *k2, const char *v2)
{
    size_t i;
    json_t *e;
    json_array_foreach(arr, i, e)
    {
        if (!strcmp(json_string_value(json_object_get(e, k1)), v1) &&
            (!k2 || !strcmp(json_string_value(json_object_get(e, k2)), v2)))
            return e;
    }
    return NULL;
}

/* ---- traffic ---------------------------------------------------------- */

static void publish_n(ferry_conn *c, const char *topic, int n)
{
    for (int i = 0; i < n; i++) {
        char body[32];
        int len = snprintf(body, sizeof(body), "m-%d", i);
        ferry_msg m = {.topic = topic, .payload = body, .payload_len = (size_t)len};
        ferry_ack ack;
        assert_int_equal(ferry_publish(c, &m, &ack), 0);
    }
}

/* Subscribes with a window of n, receives n deliveries and acks the first
 * `ack` of them (the broker then fills the window again); returns the
 * subscription. */
static ferry_sub *consume(ferry_conn *c, const char *topic, const char *group, int n, int ack)
{
    ferry_sub_options so = FERRY_SUB_OPTIONS_INIT;
    so.max_in_flight = (uint32_t)n;
    ferry_sub *s;
    assert_int_equal(ferry_subscribe(c, topic, group, &so, &s), 0);
    for (int i = 0; i < n; i++) {
        ferry_delivery *d;
        assert_int_equal(ferry_receive(c, 5000, &d), 0);
        if (i < ack)
            assert_int_equal(ferry_delivery_ack(d), 0);
        ferry_delivery_free(d);
    }
    return s;
}

/* ---- tests -------------------------------------------------------------- */

static void test_http_metrics_pass_promtool(void **state)
{
    struct fx *fx = *state;
    ferry_conn *c = fx->base.c;
    publish_n(c, "orders", 10);
    publish_n(c, "payments", 3);
    ferry_sub *s = consume(c, "orders", "billing", 6, 4);

    struct resp r;
    assert_int_equal(http_get(fx->port, "/metrics", &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.head, "text/plain; version=0.0.4"));
    char path[512];
    snprintf(path, sizeof(path), "%s/metrics.txt", fx->base.b.dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fwrite(r.body, 1, r.body_len, f);
    fclose(f);
    /* promtool reads the exposition from stdin. */
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "promtool check metrics < %s", path);
    int rc = system(cmd);
    assert_int_equal(rc, 0);

    const char *want[] = {
        "ferry_topic_messages{topic=\"orders\"} 10\n",
        "ferry_topic_messages{topic=\"payments\"} 3\n",
        "ferry_topic_head_sequence{topic=\"orders\"} 10\n",
        "ferry_topic_published_messages_total{topic=\"orders\"} 10\n",
        "ferry_group_lag{topic=\"orders\",group=\"billing\"} 6\n",
        "ferry_group_in_flight{topic=\"orders\",group=\"billing\"} 6\n",
        "ferry_group_consumers{topic=\"orders\",group=\"billing\"} 1\n",
        "ferry_group_acks_total{topic=\"orders\",group=\"billing\"} 4\n",
        "ferry_connections 1\n",
        "# TYPE ferry_commit_duration_seconds histogram\n",
        "# TYPE ferry_fsync_duration_seconds histogram\n",
        "# TYPE ferry_commit_messages histogram\n",
        "ferry_build_info{version=\"",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(*want); i++) {
        if (!strstr(r.body, want[i]))
            fail_msg("/metrics lacks %s", want[i]);
    }
    /* Real fsyncs were timed (--sync full): a non-zero count. */
    const char *fc = strstr(r.body, "\nferry_fsync_duration_seconds_count ");
    assert_non_null(fc);
    assert_true(strtoull(fc + strlen("\nferry_fsync_duration_seconds_count "), NULL, 10) > 0);
    resp_free(&r);
    ferry_unsubscribe(s);
}

static void test_http_api_agrees_with_the_protocol(void **state)
{
    struct fx *fx = *state;
    ferry_conn *c = fx->base.c;
    publish_n(c, "orders", 20);
    ferry_sub *s = consume(c, "orders", "billing", 8, 5);

    ferry_topic_info *ti;
    size_t nt;
    assert_int_equal(ferry_topics(c, &ti, &nt), 0);
    ferry_group_info *gi;
    size_t ng;
    assert_int_equal(ferry_groups(c, NULL, &gi, &ng), 0);
    json_t *topics = get_json(fx, "/api/v1/topics");
    json_t *groups = get_json(fx, "/api/v1/groups");
    assert_non_null(topics);
    assert_non_null(groups);
    assert_int_equal(json_array_size(topics), nt);
    assert_int_equal(json_array_size(groups), ng);
    for (size_t i = 0; i < nt; i++) {
        json_t *t = find_by(topics, "topic", ti[i].name, NULL, NULL);
        assert_non_null(t);
        assert_int_equal(ju(t, "messages"), ti[i].message_count);
        assert_int_equal(ju(t, "bytes"), ti[i].bytes);
        assert_int_equal(ju(t, "head_seq"), ti[i].head_seq);
        assert_int_equal(ju(t, "first_seq"), ti[i].first_seq);
        assert_int_equal(ju(t, "created_ms"), (uint64_t)ti[i].created_ms);
    }
    for (size_t i = 0; i < ng; i++) {
        json_t *g = find_by(groups, "topic", gi[i].topic, "group", gi[i].group);
        assert_non_null(g);
        assert_int_equal(ju(g, "cursor"), gi[i].cursor);
        assert_int_equal(ju(g, "ack_floor"), gi[i].ack_floor);
        assert_int_equal(ju(g, "lag"), gi[i].lag);
        assert_int_equal(ju(g, "in_flight"), gi[i].in_flight);
        assert_int_equal(ju(g, "consumers"), gi[i].consumers);
        assert_int_equal(ju(g, "ack_wait_ms"), gi[i].ack_wait_ms);
        assert_int_equal(ju(g, "max_deliveries"), gi[i].max_deliveries);
    }
    json_t *g = find_by(groups, "topic", "orders", "group", "billing");
    assert_int_equal(ju(g, "lag"), 15);
    assert_int_equal(ju(g, "in_flight"), 8); /* the window refilled after the acks */
    assert_int_equal(ju(g, "acks"), 5);

    /* One topic, with its groups; an unknown one is 404. */
    json_t *one = get_json(fx, "/api/v1/topics/orders");
    assert_non_null(one);
    assert_int_equal(ju(one, "messages"), 20);
    assert_int_equal(json_array_size(json_object_get(one, "consumer_groups")), 1);
    struct resp r;
    assert_int_equal(http_get(fx->port, "/api/v1/topics/nosuch", &r), 0);
    assert_int_equal(r.status, 404);
    assert_non_null(strstr(r.body, "no such topic"));
    resp_free(&r);

    /* The broker and the connections. */
    json_t *b = get_json(fx, "/api/v1/broker");
    assert_non_null(b);
    assert_int_equal(ju(b, "published"), 20);
    assert_int_equal(ju(b, "connections"), 1);
    assert_true(ju(b, "commits") > 0);
    assert_true(ju(b, "db_bytes") > 0);
    assert_true(ju(b, "rss_bytes") > 0);
    assert_string_equal(json_string_value(json_object_get(b, "sync")), "full");
    json_t *conns = get_json(fx, "/api/v1/connections");
    assert_int_equal(json_array_size(conns), 1);
    json_t *c0 = json_array_get(conns, 0);
    assert_string_equal(json_string_value(json_object_get(c0, "client")), "test-http");
    assert_int_equal(ju(c0, "subscriptions"), 1);
    assert_true(ju(c0, "frames_in") >= 20);

    /* Counters only grow: frames in rise with more traffic. */
    uint64_t before = ju(b, "frames_in");
    publish_n(c, "orders", 2);
    json_t *b2 = get_json(fx, "/api/v1/broker");
    assert_true(ju(b2, "frames_in") >= before + 2);

    /* Rates: 22 stored within the last minute. */
    it_sleep_ms(1100);
    one = (json_decref(one), get_json(fx, "/api/v1/topics/orders"));
    double r1m = json_real_value(json_object_get(one, "publish_rate_1m"));
    assert_true(r1m > 0.0 && r1m <= 22.0 / 60.0 + 1e-9);
    assert_int_equal(ju(one, "published"), 22);

    json_decref(topics);
    json_decref(groups);
    json_decref(one);
    json_decref(b);
    json_decref(b2);
    json_decref(conns);
    ferry_topics_free(ti);
    ferry_groups_free(gi);
    ferry_unsubscribe(s);
}

static void test_http_bad_requests_cost_the_sender(void **state)
{
    struct fx *fx = *state;
    struct resp r;
    /* Methods other than GET and HEAD. */
    const char post[] = "POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                        "Content-Length: 2\r\n\r\nhi";
    assert_int_equal(http_raw(fx->port, post, sizeof(post) - 1, &r), 0);
    assert_int_equal(r.status, 405);
    resp_free(&r);
    /* Unknown paths. */
    assert_int_equal(http_get(fx->port, "/api/v1/nothing", &r), 0);
    assert_int_equal(r.status, 404);
    resp_free(&r);
    /* A body over the bound is refused without being read whole. */
    char big[256];
    int n =
        snprintf(big, sizeof(big),
                 "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n",
                 64 * 1024 * 1024);
    assert_int_equal(http_raw(fx->port, big, (size_t)n, &r), 0);
    assert_true(r.status == 413 || r.status == 405);
    resp_free(&r);
    /* Garbage and an oversized header block: an error or a closed socket,
     * nothing more. */
    const char junk[] = "\x16\x03\x01 not http at all\r\n\r\n";
    if (http_raw(fx->port, junk, sizeof(junk) - 1, &r) == 0) {
        assert_true(r.status >= 400);
        resp_free(&r);
    }
    size_t hb = 1024 * 1024;
    char *huge = malloc(hb + 64);
    size_t hl = (size_t)sprintf(huge, "GET / HTTP/1.1\r\nX-Big: ");
    memset(huge + hl, 'a', hb);
    hl += hb;
    memcpy(huge + hl, "\r\n\r\n", 4);
    hl += 4;
    if (http_raw(fx->port, huge, hl, &r) == 0) {
        assert_true(r.status >= 400);
        resp_free(&r);
    }
    free(huge);

    /* Connections held open without a request, more than the listener
     * takes: the protocol keeps serving and the HTTP listener still
     * answers once they go. */
    int held[80];
    int nheld = 0;
    for (int i = 0; i < 80; i++) {
        char addr[64];
        snprintf(addr, sizeof(addr), "127.0.0.1:%d", fx->port);
        held[i] = harness_connect(addr);
        if (held[i] >= 0) {
            harness_send(held[i], "GET /metr", 9); /* a request never finished */
            nheld++;
        }
    }
    assert_true(nheld > 64);
    int64_t t0 = harness_now_ms();
    publish_n(fx->base.c, "orders", 5);
    assert_true(harness_now_ms() - t0 < 5000);
    /* Those over the bound were closed at once. */
    int closed = 0;
    for (int i = 0; i < 80; i++)
        if (held[i] >= 0 && harness_wait_closed(held[i], 200) == 0)
            closed++;
    assert_true(closed >= nheld - 64);
    for (int i = 0; i < 80; i++)
        if (held[i] >= 0)
            close(held[i]);
    /* Freed slots take requests again. */
    int ok = 0;
    for (int tries = 0; tries < 50 && !ok; tries++) {
        if (http_get(fx->port, "/api/v1/broker", &r) == 0) {
            ok = r.status == 200;
            resp_free(&r);
        }
        if (!ok)
            it_sleep_ms(100);
    }
    assert_true(ok);
}

static void test_http_tokens(void **state)
{
    struct fx *fx = *state;
    struct resp r;
    /* No token, a wrong one, one without the admin right: 401, and the
     * browser is offered Basic. */
    assert_int_equal(http_get(fx->port, "/metrics", &r), 0);
    assert_int_equal(r.status, 401);
    assert_non_null(strstr(r.head, "Basic realm="));
    assert_null(strstr(r.body, "ferry_"));
    resp_free(&r);
    assert_int_equal(http_get_auth(fx->port, "/metrics", "Bearer wrong-secret", &r), 0);
    assert_int_equal(r.status, 401);
    resp_free(&r);
    assert_int_equal(http_get_auth(fx->port, "/api/v1/topics", "Bearer " READER_SECRET, &r), 0);
    assert_int_equal(r.status, 401);
    resp_free(&r);
    /* The admin token, as Bearer and as Basic's password. */
    assert_int_equal(http_get_auth(fx->port, "/metrics", "Bearer " ADMIN_SECRET, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "ferry_connections"));
    resp_free(&r);
    /* base64("ops:admin-secret-ABCDEFGHIJKLMN") */
    assert_int_equal(http_get_auth(fx->port, "/api/v1/broker",
                                   "Basic b3BzOmFkbWluLXNlY3JldC1BQkNERUZHSElKS0xNTg==", &r),
                     0);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    /* Basic with a wrong password. */
    assert_int_equal(http_get_auth(fx->port, "/api/v1/broker", "Basic b3BzOndyb25n", &r), 0);
    assert_int_equal(r.status, 401);
    resp_free(&r);
    /* The secret never reaches the log. */
    assert_int_equal(it_file_count(fx->base.b.log_path, ADMIN_SECRET), 0);
}

static void test_http_dashboard_is_served(void **state)
{
    struct fx *fx = *state;
    struct resp r;
    assert_int_equal(http_get(fx->port, "/", &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.head, "text/html"));
    assert_non_null(strstr(r.body, "<html") ? strstr(r.body, "<html")
                                            : strstr(r.body, "<!doctype"));
    resp_free(&r);
}

static void test_http_shutdown_with_clients_open(void **state)
{
    struct fx *fx = *state;
    /* One idle keep-alive connection after a request, one mid-request. */
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", fx->port);
    int idle = harness_connect(addr);
    assert_true(idle >= 0);
    const char req[] = "GET /api/v1/broker HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(harness_send(idle, req, sizeof(req) - 1), 0);
    char buf[4096];
    struct pollfd p = {.fd = idle, .events = POLLIN};
    assert_int_equal(poll(&p, 1, 5000), 1);
    assert_true(read(idle, buf, sizeof(buf)) > 0);
    int half = harness_connect(addr);
    assert_true(half >= 0);
    assert_int_equal(harness_send(half, "GET / HTTP/1.1\r\n", 16), 0);
    ferry_close(fx->base.c);
    fx->base.c = NULL;
    int64_t t0 = harness_now_ms();
    /* A clean stop (status 0) within h2o's request timeout and a margin. */
    assert_int_equal(harness_stop(&fx->base.b), 0);
    assert_true(harness_now_ms() - t0 < 9000);
    close(idle);
    close(half);
}

/* `http =` in the config file's [broker] section turns the listener on
 * like --http. */
static void test_http_config_file_key(void **state)
{
    (void)state;
    int port = free_port();
    assert_true(port > 0);
    char conf[] = "/tmp/ferry-http-conf-XXXXXX";
    int fd = mkstemp(conf);
    assert_true(fd >= 0);
    char text[128];
    int n = snprintf(text, sizeof text, "[broker]\nhttp = 127.0.0.1:%d\n", port);
    assert_int_equal(write(fd, text, (size_t)n), n);
    close(fd);
    struct harness_broker b;
    memset(&b, 0, sizeof b);
    const char *args[] = {"--config", conf, NULL};
    assert_int_equal(harness_start(&b, args), 0);
    struct resp r;
    assert_int_equal(http_get(port, "/metrics", &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "ferry_connections"));
    resp_free(&r);
    assert_int_equal(harness_stop(&b), 0);
    harness_cleanup(&b);
    unlink(conf);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_http_metrics_pass_promtool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_api_agrees_with_the_protocol, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_bad_requests_cost_the_sender, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_tokens, setup_tokens, teardown),
        cmocka_unit_test_setup_teardown(test_http_dashboard_is_served, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_shutdown_with_clients_open, setup, teardown),
        cmocka_unit_test(test_http_config_file_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
