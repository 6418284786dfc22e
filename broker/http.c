/*
 * http.c - the HTTP listener (http.h): h2o on the broker's loop, the
 * admin-token check and the routes; the pages are rendered by
 * http_views.c.
 *
 * Routes (GET or HEAD; anything else is 405):
 *   /                      the dashboard (one page, compiled in)
 *   /metrics               Prometheus text exposition format 0.0.4
 *   /api/v1/broker         broker-wide figures
 *   /api/v1/topics         every topic; /api/v1/topics/NAME one, with its groups
 *   /api/v1/groups         every consumer group
 *   /api/v1/connections    the protocol connections
 */
#include "http.h"

#include <h2o.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth.h"
#include "broker.h"
#include "dashboard.h"
#include "http_internal.h"
#include "log.h"

/* Bounds on what one client may make ferryd hold. h2o limits a request's
 * headers itself (100 headers, H2O_MAX_REQLEN bytes). */
#define HTTP_MAX_BODY (64 * 1024)
#define HTTP_REQUEST_TIMEOUT_MS 5000
/* The longest Authorization value read (a token is at most 4 KiB in base64
 * plus the scheme); a longer one is simply a wrong token. */
#define HTTP_MAX_AUTH 6000

struct http {
    struct broker *b;
    h2o_globalconf_t conf;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept;
    uv_tcp_t listener;
    int listening; /* the listener handle is open */
    int ctx_ready; /* ctx initialised and not yet disposed */
    int stopping;
    int nconns;
};

/* One accepted connection: the handle h2o's socket uses (first), and
 * whose listener it came from. */
struct hconn {
    uv_tcp_t tcp;
    struct http *h;
};

struct hhandler {
    h2o_handler_t super;
    struct http *h;
};

static void maybe_dispose(struct http *h)
{
    if (h->stopping && !h->listening && h->nconns == 0 && h->ctx_ready) {
        h->ctx_ready = 0;
        h2o_context_dispose(&h->ctx);
    }
}

static void on_listener_closed(uv_handle_t *hd)
{
    struct http *h = hd->data;
    h->listening = 0;
    maybe_dispose(h);
}

static void on_hconn_closed(uv_handle_t *hd)
{
    struct hconn *hc = (struct hconn *)hd;
    struct http *h = hc->h;
    free(hc);
    h->nconns--;
    maybe_dispose(h);
}

static void on_refused_closed(uv_handle_t *hd)
{
    free(hd);
}

static void on_accept(uv_stream_t *listener, int status)
{
    struct http *h = listener->data;
    if (status < 0 || h->stopping)
        return;
    struct hconn *hc = malloc(sizeof(*hc));
    if (!hc)
        return;
    hc->h = h;
    uv_tcp_init(listener->loop, &hc->tcp);
    if (uv_accept(listener, (uv_stream_t *)&hc->tcp) != 0) {
        uv_close((uv_handle_t *)&hc->tcp, on_refused_closed);
        return;
    }
    if (h->nconns >= HTTP_MAX_CONNECTIONS) {
        /* Closed at once: a flood of connections costs their sender. */
        uv_close((uv_handle_t *)&hc->tcp, on_refused_closed);
        return;
    }
    h->nconns++;
    h2o_socket_t *sock = h2o_uv_socket_create((uv_stream_t *)&hc->tcp, on_hconn_closed);
    h2o_accept(&h->accept, sock);
}

/* Whether the request carries a token with the admin right. The token
 * check runs whatever the header holds, so a wrong or missing token costs
 * what a right one does. */
static int authorized(struct http *h, h2o_req_t *req)
{
    const struct auth *a = &h->b->cfg.auth;
    const char *secret = "";
    size_t len = 0;
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_AUTHORIZATION, -1);
    if (i >= 0 && req->headers.entries[i].value.len <= HTTP_MAX_AUTH) {
        h2o_iovec_t v = req->headers.entries[i].value;
        if (v.len > 7 && strncasecmp(v.base, "Bearer ", 7) == 0) {
            secret = v.base + 7;
            len = v.len - 7;
        } else if (v.len > 6 && strncasecmp(v.base, "Basic ", 6) == 0) {
            /* user:token in standard base64; h2o decodes the URL alphabet. */
            char *b64 = h2o_mem_alloc_pool(&req->pool, v.len);
            size_t n = 0;
            for (size_t k = 6; k < v.len; k++) {
                char ch = v.base[k];
                if (ch == '=')
                    break;
                b64[n++] = ch == '+' ? '-' : ch == '/' ? '_' : ch;
            }
            h2o_iovec_t d = h2o_decode_base64url(&req->pool, b64, n);
            const char *colon = d.base ? memchr(d.base, ':', d.len) : NULL;
            if (colon) {
                secret = colon + 1;
                len = d.len - (size_t)(colon + 1 - d.base);
            }
        }
    }
    const struct auth_token *t = auth_check(a, secret, len);
    return t && auth_admin(a, t);
}

static void send_page(h2o_req_t *req, struct http_page *p)
{
    static const char *const reasons[] = {[200] = "OK",
                                          [401] = "Unauthorized",
                                          [404] = "Not Found",
                                          [405] = "Method Not Allowed",
                                          [500] = "Internal Server Error"};
    req->res.status = p->status;
    req->res.reason = p->status < 501 && reasons[p->status] ? reasons[p->status] : "Error";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, p->content_type,
                   strlen(p->content_type));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL,
                   H2O_STRLIT("no-store"));
    if (p->status == 401)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_WWW_AUTHENTICATE, NULL,
                       H2O_STRLIT("Basic realm=\"ferryd\", charset=\"UTF-8\""));
    if (p->status == 405)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL,
                       H2O_STRLIT("GET, HEAD"));
    req->res.content_length = p->len;
    /* h2o copies the body into the request's pool. */
    h2o_send_inline(req, p->body, p->len);
    free(p->body);
}

static int path_is(h2o_iovec_t path, const char *s)
{
    return h2o_memis(path.base, path.len, s, strlen(s));
}

static int route(struct http *h, h2o_iovec_t path, struct http_page *p)
{
    struct broker *b = h->b;
    static const char topic_prefix[] = "/api/v1/topics/";
    const size_t tp = sizeof(topic_prefix) - 1;
    if (path_is(path, "/") || path_is(path, "/index.html")) {
        p->status = 200;
        p->content_type = "text/html; charset=utf-8";
        p->body = malloc(ferry_dashboard_html_len ? ferry_dashboard_html_len : 1);
        if (!p->body)
            return -1;
        memcpy(p->body, ferry_dashboard_html, ferry_dashboard_html_len);
        p->len = ferry_dashboard_html_len;
        return 0;
    }
    if (path_is(path, "/metrics"))
        return http_view_metrics(b, p);
    if (path_is(path, "/api/v1/broker"))
        return http_view_broker(b, p);
    if (path_is(path, "/api/v1/topics") || path_is(path, "/api/v1/topics/"))
        return http_view_topics(b, p);
    if (path.len > tp && !memcmp(path.base, topic_prefix, tp))
        return http_view_topic(b, path.base + tp, path.len - tp, p);
    if (path_is(path, "/api/v1/groups"))
        return http_view_groups(b, p);
    if (path_is(path, "/api/v1/connections"))
        return http_view_connections(b, p);
    return http_view_error(404, "not found", p);
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    struct http *h = ((struct hhandler *)self)->h;
    struct http_page p = {0};
    int rc;
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET")) &&
        !h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD")))
        rc = http_view_error(405, "only GET and HEAD", &p);
    else if (auth_enabled(&h->b->cfg.auth) && !authorized(h, req))
        rc = http_view_error(401, "a token with the admin right is required", &p);
    else
        rc = route(h, req->path_normalized, &p);
    if (rc < 0) {
        free(p.body);
        p = (struct http_page){0};
        if (http_view_error(500, "out of memory", &p) < 0) {
            h2o_send_error_503(req, "Service Unavailable", "out of memory", 0);
            return 0;
        }
    }
    send_page(req, &p);
    return 0;
}

int http_start(struct broker *b)
{
    if (!b->cfg.http_host[0])
        return 0;
    struct http *h = calloc(1, sizeof(*h));
    if (!h) {
        log_error("out of memory");
        return -1;
    }
    h->b = b;
    b->http = h;
    h2o_config_init(&h->conf);
    h->conf.server_name = h2o_iovec_init(H2O_STRLIT("ferryd"));
    h->conf.max_request_entity_size = HTTP_MAX_BODY;
    h->conf.http1.req_timeout = HTTP_REQUEST_TIMEOUT_MS;
    h->conf.http1.upgrade_to_http2 = 0;
    h->conf.http2.idle_timeout = HTTP_REQUEST_TIMEOUT_MS;
    h2o_hostconf_t *host =
        h2o_config_register_host(&h->conf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    struct hhandler *hd = (struct hhandler *)h2o_create_handler(path, sizeof(*hd));
    hd->super.on_req = on_req;
    hd->h = h;
    h2o_context_init(&h->ctx, b->loop, &h->conf);
    h->ctx_ready = 1;
    h->accept.ctx = &h->ctx;
    h->accept.hosts = h->conf.hosts;

    struct sockaddr_storage addr;
    int rc;
    if (strchr(b->cfg.http_host, ':'))
        rc = uv_ip6_addr(b->cfg.http_host, b->cfg.http_port, (struct sockaddr_in6 *)&addr);
    else
        rc = uv_ip4_addr(b->cfg.http_host, b->cfg.http_port, (struct sockaddr_in *)&addr);
    if (rc) {
        log_error("invalid HTTP address %s:%d", b->cfg.http_host, b->cfg.http_port);
        http_stop(b);
        return -1;
    }
    uv_tcp_init(b->loop, &h->listener);
    h->listener.data = h;
    h->listening = 1;
    if ((rc = uv_tcp_bind(&h->listener, (struct sockaddr *)&addr, 0)) < 0 ||
        (rc = uv_listen((uv_stream_t *)&h->listener, 128, on_accept)) < 0) {
        log_error("cannot listen for HTTP on %s:%d: %s", b->cfg.http_host, b->cfg.http_port,
                  uv_strerror(rc));
        http_stop(b);
        return -1;
    }
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    uv_tcp_getsockname(&h->listener, (struct sockaddr *)&bound, &len);
    int port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                           : ntohs(((struct sockaddr_in *)&bound)->sin_port);
    log_info("HTTP on http://%s%s%s:%d/ (metrics at /metrics; %s)",
             strchr(b->cfg.http_host, ':') ? "[" : "", b->cfg.http_host,
             strchr(b->cfg.http_host, ':') ? "]" : "", port,
             auth_enabled(&b->cfg.auth) ? "admin token required" : "no authentication");
    return 0;
}

void http_stop(struct broker *b)
{
    struct http *h = b->http;
    if (!h || h->stopping)
        return;
    h->stopping = 1;
    if (h->listening && !uv_is_closing((uv_handle_t *)&h->listener))
        uv_close((uv_handle_t *)&h->listener, on_listener_closed);
    /* Idle keep-alive connections close now, busy ones after their
     * response; a stalled one at h2o's request timeout. */
    if (h->ctx_ready && h->nconns)
        h2o_context_request_shutdown(&h->ctx);
    if (h->ctx_ready && h->nconns == 0) {
        /* Nothing to wait for: h2o's own handles close with the loop's. */
        h->ctx_ready = 0;
        h2o_context_dispose(&h->ctx);
    }
}

void http_free(struct broker *b)
{
    struct http *h = b->http;
    if (!h)
        return;
    if (h->ctx_ready)
        h2o_context_dispose(&h->ctx);
    h2o_config_dispose(&h->conf);
    free(h);
    b->http = NULL;
}
