/*
 * http.h - ferryd's HTTP listener (--http HOST:PORT): Prometheus metrics,
 * a JSON API and the live dashboard, served by libh2o on the broker's own
 * libuv loop (http.c; the pages themselves in http_views.c).
 *
 * Everything runs on the loop thread and only reads what the loop already
 * holds: a request never waits for a commit and a commit never waits for
 * a request. Requests are bounded by h2o (headers, 64 KiB bodies, a 5 s
 * request timeout) and by HTTP_MAX_CONNECTIONS; with tokens configured
 * each needs one with the admin right (Bearer, or Basic with the token as
 * the password), checked in the same constant time as the protocol's.
 */
#ifndef FERRY_BROKER_HTTP_H
#define FERRY_BROKER_HTTP_H

struct broker;

#define HTTP_MAX_CONNECTIONS 64

/* Starts listening on the broker's configured HTTP address, if any.
 * Returns 0 (also when there is none) or -1 after logging why. */
int http_start(struct broker *b);
/* Shutdown: stops accepting, asks open connections to finish; the last
 * one to close releases h2o's handles. */
void http_stop(struct broker *b);
/* After the loop has stopped. */
void http_free(struct broker *b);

#endif
