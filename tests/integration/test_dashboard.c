/*
 * test_dashboard.c - the live dashboard ferryd serves at "/" with --http
 * (broker/dashboard/index.html), opened in headless Chromium.
 *
 * The broker gets a topic `orders` of 500 messages and a group `billing`
 * that acked the first 200 and holds the next 200 in flight, unacked, on a
 * subscription kept open (window 200, a lease far longer than the test).
 * Chromium loads the page with a virtual time budget of 4 s (so it polls
 * the API several times) and dumps the DOM; the test reads the rows the
 * page keeps stable selectors on (tr[data-topic], tr[data-group], the raw
 * value of each number cell in data-value) and compares them with
 * /api/v1/topics and /api/v1/groups fetched over a plain socket before and
 * after the dump: the static figures exactly, the 1-minute publish rate
 * (which decays while nothing is published) between the two readings, give
 * or take their difference.
 *
 * Chromium is $CHROMIUM, else `chromium` on $PATH (script/bootstrap
 * installs it); without it the test fails. With FERRY_DASHBOARD_SCREENSHOT=path it also takes a
 * 1280x800 screenshot (into the broker's temporary directory, then copied to path), which is how
 * docs/dashboard.png is made.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "harness.h"
#include "it_util.h"

#define TOPIC "orders"
#define GROUP "billing"
#define PUBLISHED 500
#define ACKED 200
#define IN_FLIGHT 200
#define HTTP_TIMEOUT_MS 10000
#define CHROMIUM_TIMEOUT_MS 60000

struct dash_fx {
    struct it_fx it; /* first: it_fx_* work on it */
    char http_addr[64];
};

/* A loopback port that was free a moment ago: bind port 0, read it, close. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static int setup(void **state)
{
    int port = free_port();
    if (port <= 0) {
        fprintf(stderr, "setup: no free loopback port: %s\n", strerror(errno));
        return -1;
    }
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    const char *args[] = {"--http", addr, NULL};
    if (it_fx_setup(state, sizeof(struct dash_fx), args, "test-dashboard") != 0)
        return -1;
    struct dash_fx *fx = *state;
    snprintf(fx->http_addr, sizeof fx->http_addr, "%s", addr);
    return 0;
}

/* ----- HTTP --------------------------------------------------------------- */

/* Decodes a chunked body in place; returns its new length, or -1. */
static long dechunk(char *body, size_t len)
{
    size_t in = 0, out = 0;
    for (;;) {
        char *end = NULL;
        unsigned long n = strtoul(body + in, &end, 16);
        char *crlf = strstr(body + in, "\r\n");
        if (end == body + in || !crlf)
            return -1;
        in = (size_t)(crlf - body) + 2;
        if (n == 0)
            break;
        if (in + n > len)
            return -1;
        memmove(body + out, body + in, n);
        out += n;
        in += n + 2;
        if (in > len)
            return -1;
    }
    body[out] = '\0';
    return (long)out;
}

/* GET path from the HTTP listener; returns the status code (0 when there
 * was no answer) and the body (malloc'd, NUL-terminated) in *body. */
static int http_get(const char *addr, const char *path, char **body)
{
    *body = NULL;
    int fd = harness_connect(addr);
    if (fd < 0)
        return 0;
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: application/json\r\n"
                     "Connection: close\r\n\r\n",
                     path, addr);
    if (harness_send(fd, req, (size_t)n) != 0) {
        close(fd);
        return 0;
    }
    size_t len = 0, cap = 65536;
    char *buf = malloc(cap);
    assert_non_null(buf);
    int64_t deadline = harness_now_ms() + HTTP_TIMEOUT_MS;
    for (;;) {
        int left = (int)(deadline - harness_now_ms());
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (left <= 0 || poll(&p, 1, left) <= 0)
            break;
        if (len + 4096 > cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        ssize_t r = read(fd, buf + len, cap - len - 1);
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    buf[len] = '\0';
    int status = 0;
    char *sep = strstr(buf, "\r\n\r\n");
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1 || !sep) {
        free(buf);
        return 0;
    }
    *sep = '\0';
    int chunked = strcasestr(buf, "\r\ntransfer-encoding: chunked") != NULL;
    size_t off = (size_t)(sep + 4 - buf);
    memmove(buf, buf + off, len - off + 1);
    len -= off;
    if (chunked && dechunk(buf, len) < 0)
        fail_msg("GET %s: bad chunked body", path);
    *body = buf;
    return status;
}

/* GET path, requiring 200 and a JSON body. */
static json_t *api_get(const char *addr, const char *path)
{
    char *body = NULL;
    int status = http_get(addr, path, &body);
    if (status != 200)
        fail_msg("GET http://%s%s: status %d, body: %s", addr, path, status, body ? body : "");
    json_error_t err;
    json_t *j = json_loads(body, 0, &err);
    if (!j)
        fail_msg("GET %s: not JSON (%s at %d): %s", path, err.text, err.position, body);
    free(body);
    return j;
}

/* Waits until the listener answers GET /api/v1/broker with 200. */
static void wait_http(const char *addr)
{
    int64_t deadline = harness_now_ms() + (int64_t)harness_ready_timeout_ms();
    int status = 0;
    while (harness_now_ms() < deadline) {
        char *body = NULL;
        status = http_get(addr, "/api/v1/broker", &body);
        free(body);
        if (status == 200)
            return;
        it_sleep_ms(50);
    }
    fail_msg("the HTTP listener on %s did not answer 200 (last status %d)", addr, status);
}

/* The element of array a whose "topic" (and, if group is not NULL,
 * "group") match; NULL when none does. */
static json_t *find_row(json_t *a, const char *topic, const char *group)
{
    assert_true(json_is_array(a));
    size_t i;
    json_t *e;
    json_array_foreach(a, i, e)
    {
        const char *t = json_string_value(json_object_get(e, "topic"));
        const char *g = json_string_value(json_object_get(e, "group"));
        if (t && strcmp(t, topic) == 0 && (!group || (g && strcmp(g, group) == 0)))
            return e;
    }
    return NULL;
}

static double jnum(json_t *row, const char *key)
{
    json_t *v = json_object_get(row, key);
    if (!json_is_number(v))
        fail_msg("API row has no number \"%s\"", key);
    return json_number_value(v);
}

/* ----- the dumped DOM ------------------------------------------------------ */

/* The <tr ...>...</tr> of the row whose data-topic is topic and whose
 * data-group is group (NULL: a row without data-group); its length in
 * *len. NULL when the DOM has no such row. */
static const char *dom_row(const char *dom, const char *topic, const char *group, size_t *len)
{
    char want_t[256], want_g[256];
    snprintf(want_t, sizeof want_t, "data-topic=\"%s\"", topic);
    snprintf(want_g, sizeof want_g, "data-group=\"%s\"", group ? group : "");
    for (const char *p = dom; (p = strstr(p, "<tr ")) != NULL; p++) {
        const char *gt = strchr(p, '>');
        const char *end = strstr(p, "</tr>");
        if (!gt || !end)
            return NULL;
        size_t tag = (size_t)(gt - p);
        const char *t = memmem(p, tag, want_t, strlen(want_t));
        const char *g = memmem(p, tag, "data-group=", 11);
        if (!t || (group ? !memmem(p, tag, want_g, strlen(want_g)) : g != NULL))
            continue;
        *len = (size_t)(end - p);
        return p;
    }
    return NULL;
}

/* The data-value of the cell of class cls in the row; fails when absent. */
static double dom_cell(const char *row, size_t len, const char *cls, const char *what)
{
    char c1[64], c2[64];
    snprintf(c1, sizeof c1, "<td class=\"%s\"", cls);
    snprintf(c2, sizeof c2, "<td class=\"%s ", cls);
    const char *p = memmem(row, len, c1, strlen(c1));
    if (!p)
        p = memmem(row, len, c2, strlen(c2));
    if (!p)
        fail_msg("%s: no cell of class %s in %.*s", what, cls, (int)len, row);
    const char *gt = memchr(p, '>', len - (size_t)(p - row));
    const char *dv = memmem(p, (size_t)(gt - p), "data-value=\"", 12);
    if (!gt || !dv)
        fail_msg("%s: cell %s has no data-value", what, cls);
    char *end = NULL;
    double v = strtod(dv + 12, &end);
    if (end == dv + 12 || *end != '"')
        fail_msg("%s: cell %s: data-value not a number", what, cls);
    return v;
}

/* The value of attribute name (e.g. "data-polls") on <body>, or -1. */
static double body_attr(const char *dom, const char *name)
{
    const char *b = strstr(dom, "<body");
    const char *gt = b ? strchr(b, '>') : NULL;
    char want[64];
    snprintf(want, sizeof want, "%s=\"", name);
    const char *a = gt ? memmem(b, (size_t)(gt - b), want, strlen(want)) : NULL;
    return a ? strtod(a + strlen(want), NULL) : -1;
}

/* ----- Chromium ------------------------------------------------------------ */

/* $CHROMIUM, else chromium (or chromium-browser) on $PATH, into buf;
 * 0 when found. */
static int find_chromium(char *buf, size_t cap)
{
    const char *env = getenv("CHROMIUM");
    if (env && *env) {
        snprintf(buf, cap, "%s", env);
        return access(buf, X_OK) == 0 ? 0 : -1;
    }
    const char *path = getenv("PATH");
    static const char *const names[] = {"chromium", "chromium-browser"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        for (const char *p = path ? path : "/usr/bin:/bin"; *p;) {
            size_t n = strcspn(p, ":");
            snprintf(buf, cap, "%.*s/%s", (int)n, p, names[k]);
            if (n > 0 && access(buf, X_OK) == 0)
                return 0;
            p += n + (p[n] == ':');
        }
    }
    return -1;
}

/* Runs chromium headless on url with the extra arguments (then the URL);
 * returns its stdout (malloc'd), failing the test when it did not exit 0. */
static char *run_chromium(const char *chromium, const char *dir, const char *const *extra,
                          const char *url)
{
    char profile[HARNESS_PATH_BYTES + 32];
    snprintf(profile, sizeof profile, "--user-data-dir=%s/chromium-profile", dir);
    char *argv[24];
    int n = 0;
    argv[n++] = (char *)chromium;
    argv[n++] = "--headless=new";
    argv[n++] = "--no-sandbox";
    argv[n++] = "--disable-gpu";
    argv[n++] = "--no-first-run";
    argv[n++] = profile;
    argv[n++] = "--virtual-time-budget=4000";
    for (; *extra; extra++)
        argv[n++] = (char *)*extra;
    argv[n++] = (char *)url;
    argv[n] = NULL;
    struct harness_output out;
    int r = harness_run(dir, argv, NULL, CHROMIUM_TIMEOUT_MS * harness_slowdown(), &out);
    if (r != 0)
        fail_msg("could not run %s: %s", chromium, strerror(-r));
    if (out.status != 0)
        fail_msg("%s exited %d; stderr:\n%s", chromium, out.status, out.err);
    char *dom = out.out;
    out.out = NULL;
    harness_output_free(&out);
    return dom;
}

/* Copies the file src to dst; 0 on success. */
static int copy_file(const char *src, const char *dst)
{
    size_t len = 0;
    char *data = harness_slurp(src, &len);
    FILE *f = data && len > 0 ? fopen(dst, "wb") : NULL;
    int ok = f && fwrite(data, 1, len, f) == len;
    if (f && fclose(f) != 0)
        ok = 0;
    free(data);
    return ok ? 0 : -1;
}

/* ----- the test ------------------------------------------------------------ */

static void publish_orders(ferry_conn *c)
{
    static ferry_msg msgs[PUBLISHED];
    static ferry_ack acks[PUBLISHED];
    static char bodies[PUBLISHED][32];
    for (size_t i = 0; i < PUBLISHED; i++) {
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].topic = TOPIC;
        msgs[i].payload = bodies[i];
        msgs[i].payload_len = (size_t)snprintf(bodies[i], sizeof bodies[i], "order %zu", i + 1);
    }
    int r = ferry_publish_batch(c, msgs, PUBLISHED, acks);
    if (r != 0)
        fail_msg("publish: %s (%s)", ferry_strerror(r), ferry_errmsg(c));
    assert_int_equal(acks[PUBLISHED - 1].seq, PUBLISHED);
}

/* Subscribes billing with a window of IN_FLIGHT, acks the first ACKED
 * deliveries and receives the next IN_FLIGHT without acking them. */
static ferry_sub *consume_billing(ferry_conn *c)
{
    ferry_sub_options o = FERRY_SUB_OPTIONS_INIT;
    o.start = FERRY_START_EARLIEST;
    o.max_in_flight = IN_FLIGHT;
    o.ack_wait_ms = 600000; /* no redelivery while the test runs */
    ferry_sub *s = NULL;
    int r = ferry_subscribe(c, TOPIC, GROUP, &o, &s);
    if (r != 0)
        fail_msg("subscribe: %s (%s)", ferry_strerror(r), ferry_errmsg(c));
    static uint64_t seqs[ACKED];
    for (size_t i = 0; i < ACKED + IN_FLIGHT; i++) {
        ferry_delivery *d = NULL;
        r = ferry_receive(c, 10000 * harness_slowdown(), &d);
        if (r != 0)
            fail_msg("delivery %zu: %s (%s)", i + 1, ferry_strerror(r), ferry_errmsg(c));
        assert_int_equal(d->seq, i + 1);
        if (i < ACKED)
            seqs[i] = d->seq;
        ferry_delivery_free(d);
        if (i + 1 == ACKED) {
            r = ferry_sub_ack(s, seqs, ACKED);
            if (r != 0)
                fail_msg("ack: %s (%s)", ferry_strerror(r), ferry_errmsg(c));
        }
    }
    return s;
}

/* Waits until the API shows the group settled: IN_FLIGHT in flight. */
static void wait_group_settled(const char *addr)
{
    int64_t deadline = harness_now_ms() + 10000 * harness_slowdown();
    double in_flight = -1;
    while (harness_now_ms() < deadline) {
        json_t *g = api_get(addr, "/api/v1/groups");
        json_t *row = find_row(g, TOPIC, GROUP);
        in_flight = row ? jnum(row, "in_flight") : -1;
        json_decref(g);
        if (in_flight == IN_FLIGHT)
            return;
        it_sleep_ms(50);
    }
    fail_msg("group %s/%s never showed %d in flight (last %g)", TOPIC, GROUP, IN_FLIGHT, in_flight);
}

static void check_equal(const char *what, const char *cls, double dom, double before, double after)
{
    if (before != after)
        fail_msg("%s %s changed in the API while nothing happened: %g -> %g", what, cls, before,
                 after);
    if (dom != before)
        fail_msg("%s %s: the page shows %g, the API says %g", what, cls, dom, before);
}

static void test_dashboard_shows_topics_and_groups_as_the_api(void **state)
{
    struct dash_fx *fx = *state;
    char chromium[HARNESS_PATH_BYTES];
    if (find_chromium(chromium, sizeof chromium) != 0) {
        /* script/bootstrap installs Debian's chromium: missing is a failure. */
        fail_msg("no chromium ($CHROMIUM or chromium on $PATH): run script/bootstrap");
    }
    wait_http(fx->http_addr);

    /* The page itself is served at "/". */
    char *page = NULL;
    assert_int_equal(http_get(fx->http_addr, "/", &page), 200);
    assert_non_null(strstr(page, "<html"));
    free(page);

    publish_orders(fx->it.c);
    ferry_sub *s = consume_billing(fx->it.c);
    wait_group_settled(fx->http_addr);

    json_t *topics0 = api_get(fx->http_addr, "/api/v1/topics");
    json_t *groups0 = api_get(fx->http_addr, "/api/v1/groups");

    char url[128];
    snprintf(url, sizeof url, "http://%s/", fx->http_addr);
    const char *dump_args[] = {"--dump-dom", NULL};
    char *dom = run_chromium(chromium, fx->it.b.dir, dump_args, url);

    json_t *topics1 = api_get(fx->http_addr, "/api/v1/topics");
    json_t *groups1 = api_get(fx->http_addr, "/api/v1/groups");

    double polls = body_attr(dom, "data-polls");
    double updated = body_attr(dom, "data-updated");
    if (polls < 2 || updated <= 0)
        fail_msg("body data-polls %g, data-updated %g: the page did not refresh twice\n%s", polls,
                 updated, dom);

    /* The topic row. */
    json_t *t0 = find_row(topics0, TOPIC, NULL), *t1 = find_row(topics1, TOPIC, NULL);
    assert_non_null(t0);
    assert_non_null(t1);
    assert_int_equal((int64_t)jnum(t0, "head_seq"), PUBLISHED);
    size_t len = 0;
    const char *row = dom_row(dom, TOPIC, NULL, &len);
    if (!row)
        fail_msg("no tr[data-topic=\"%s\"] in the dumped DOM:\n%s", TOPIC, dom);
    static const struct {
        const char *cls, *key;
    } topic_cells[] = {{"messages", "messages"}, {"head", "head_seq"}};
    for (size_t i = 0; i < sizeof topic_cells / sizeof topic_cells[0]; i++)
        check_equal("topic " TOPIC, topic_cells[i].cls,
                    dom_cell(row, len, topic_cells[i].cls, "topic row"),
                    jnum(t0, topic_cells[i].key), jnum(t1, topic_cells[i].key));

    /* The 1-minute rate decays while nothing is published: the value the
     * page showed was read between the two API readings. */
    double r_dom = dom_cell(row, len, "publish-rate-1m", "topic row");
    double r0 = jnum(t0, "publish_rate_1m"), r1 = jnum(t1, "publish_rate_1m");
    double lo = r0 < r1 ? r0 : r1, hi = r0 < r1 ? r1 : r0;
    double slack = hi - lo + 1e-9 * (hi > 1 ? hi : 1);
    if (r_dom < lo - slack || r_dom > hi + slack)
        fail_msg("publish-rate-1m: the page shows %g, the API said %g before and %g after", r_dom,
                 r0, r1);

    /* The group row. */
    json_t *g0 = find_row(groups0, TOPIC, GROUP), *g1 = find_row(groups1, TOPIC, GROUP);
    assert_non_null(g0);
    assert_non_null(g1);
    assert_int_equal((int64_t)jnum(g0, "in_flight"), IN_FLIGHT);
    assert_int_equal((int64_t)jnum(g0, "consumers"), 1);
    row = dom_row(dom, TOPIC, GROUP, &len);
    if (!row)
        fail_msg("no tr[data-topic=\"%s\"][data-group=\"%s\"] in the dumped DOM:\n%s", TOPIC, GROUP,
                 dom);
    static const struct {
        const char *cls, *key;
    } group_cells[] = {{"lag", "lag"},
                       {"in-flight", "in_flight"},
                       {"consumers", "consumers"},
                       {"redelivered", "redelivered"},
                       {"dead-lettered", "dead_lettered"}};
    for (size_t i = 0; i < sizeof group_cells / sizeof group_cells[0]; i++)
        check_equal("group " TOPIC "/" GROUP, group_cells[i].cls,
                    dom_cell(row, len, group_cells[i].cls, "group row"),
                    jnum(g0, group_cells[i].key), jnum(g1, group_cells[i].key));

    /* The picture for docs/dashboard.png, on request only. */
    const char *shot = getenv("FERRY_DASHBOARD_SCREENSHOT");
    if (shot && *shot) {
        char tmp[HARNESS_PATH_BYTES + 32], arg[HARNESS_PATH_BYTES + 64];
        snprintf(tmp, sizeof tmp, "%s/dashboard.png", fx->it.b.dir);
        snprintf(arg, sizeof arg, "--screenshot=%s", tmp);
        const char *shot_args[] = {"--hide-scrollbars", "--window-size=1280,800", arg, NULL};
        free(run_chromium(chromium, fx->it.b.dir, shot_args, url));
        size_t n = 0;
        char *png = harness_slurp(tmp, &n);
        assert_non_null(png);
        if (n < 8 || memcmp(png, "\x89PNG", 4) != 0)
            fail_msg("no PNG screenshot at %s", tmp);
        free(png);
        if (copy_file(tmp, shot) != 0)
            fail_msg("could not copy the screenshot to %s", shot);
        print_message("screenshot: %s\n", shot);
    }

    free(dom);
    json_decref(topics0);
    json_decref(groups0);
    json_decref(topics1);
    json_decref(groups1);
    assert_int_equal(ferry_unsubscribe(s), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_dashboard_shows_topics_and_groups_as_the_api, setup,
                                        it_fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
