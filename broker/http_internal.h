/*
 * http_internal.h - what http.c (the listener) and http_views.c (the
 * pages) share.
 */
#ifndef FERRY_BROKER_HTTP_INTERNAL_H
#define FERRY_BROKER_HTTP_INTERNAL_H

#include <stddef.h>

struct broker;

/* A rendered response: malloc'd body (freed by the caller), its type and
 * status. */
struct http_page {
    int status;
    const char *content_type;
    char *body;
    size_t len;
};

/* Each returns 0, or -1 out of memory. path_rest: the part of the path
 * after /api/v1/topics/ (a topic name), for http_view_topic. */
int http_view_metrics(struct broker *b, struct http_page *p);
int http_view_broker(struct broker *b, struct http_page *p);
int http_view_topics(struct broker *b, struct http_page *p);
int http_view_topic(struct broker *b, const char *name, size_t len, struct http_page *p);
int http_view_groups(struct broker *b, struct http_page *p);
int http_view_connections(struct broker *b, struct http_page *p);
/* {"error": msg} with status. */
int http_view_error(int status, const char *msg, struct http_page *p);

#endif
