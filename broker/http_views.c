/*
 * http_views.c - what the HTTP listener serves (http_internal.h): the
 * Prometheus metrics and the JSON API, from the numbers the loop holds
 * (group_stats.c, the broker's counters, the store's counters as of the
 * last commit) and a few system calls (file sizes, free disk, RSS).
 *
 * The JSON keys are those of `ferry topics --json` and `ferry groups
 * --json`, plus the figures only the broker knows (rates, counters since
 * start); docs/OPERATIONS.md lists them.
 */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "broker.h"
#include "clock.h"
#include "group.h"
#include "http_internal.h"
#include "store_vfs.h"

#ifndef FERRY_BROKER_VERSION
#define FERRY_BROKER_VERSION "unknown"
#endif

/* ---- broker-wide figures ---------------------------------------------- */

struct sysfig {
    uint64_t db_bytes, wal_bytes, disk_free_bytes, rss_bytes;
};

static uint64_t file_bytes(const char *dir, const char *name)
{
    char path[4200];
    struct stat st;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

static void sys_figures(const struct broker *b, struct sysfig *f)
{
    memset(f, 0, sizeof(*f));
    f->db_bytes = file_bytes(b->cfg.data_dir, "ferry.db");
    f->wal_bytes = file_bytes(b->cfg.data_dir, "ferry.db-wal");
    struct statvfs vfs;
    if (statvfs(b->cfg.data_dir, &vfs) == 0)
        f->disk_free_bytes = (uint64_t)vfs.f_bavail * (uint64_t)vfs.f_frsize;
    FILE *fp = fopen("/proc/self/statm", "r");
    if (fp) {
        unsigned long long size, rss;
        if (fscanf(fp, "%llu %llu", &size, &rss) == 2)
            f->rss_bytes = (uint64_t)rss * (uint64_t)sysconf(_SC_PAGESIZE);
        fclose(fp);
    }
}

/* ---- Prometheus text -------------------------------------------------- */

struct text {
    char *p;
    size_t len, cap;
    int failed;
};

static void tx(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tx(struct text *t, const char *fmt, ...)
{
    if (t->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->p ? t->p + t->len : NULL, t->p ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = 1;
            return;
        }
        if (t->p && (size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap ? t->cap * 2 : 16384;
        while (cap < t->len + (size_t)n + 1)
            cap *= 2;
        char *np = realloc(t->p, cap);
        if (!np) {
            t->failed = 1;
            return;
        }
        t->p = np;
        t->cap = cap;
    }
}

/* A label value: topic and group names are [A-Za-z0-9._-], but escape as
 * the format asks whatever they hold. */
static void tx_label(struct text *t, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\\' || c == '"')
            tx(t, "\\%c", c);
        else if (c == '\n')
            tx(t, "\\n");
        else
            tx(t, "%c", c);
    }
}

static void tx_head(struct text *t, const char *name, const char *type, const char *help)
{
    tx(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void tx_one(struct text *t, const char *name, const char *type, const char *help, double v)
{
    tx_head(t, name, type, help);
    tx(t, "%s %.17g\n", name, v);
}

static void tx_histo(struct text *t, const char *name, const char *help, const struct histo *h)
{
    uint64_t cum[HISTO_LATENCY_BUCKETS + 1], count;
    double sum;
    histo_read(h, cum, &count, &sum);
    tx_head(t, name, "histogram", help);
    for (size_t i = 0; i < h->nbounds; i++)
        tx(t, "%s_bucket{le=\"%g\"} %llu\n", name, h->bounds[i], (unsigned long long)cum[i]);
    tx(t, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)count);
    tx(t, "%s_sum %.9g\n%s_count %llu\n", name, sum, name, (unsigned long long)count);
}

/* One metric over every topic; field picks the value. */
#define TOPIC_METRIC(mname, type, help, expr)                                                      \
    do {                                                                                           \
        tx_head(&t, mname, type, help);                                                            \
        for (size_t i = 0; i < nt; i++) {                                                          \
            const struct topic_stat *s = &ts[i];                                                   \
            tx(&t, mname "{topic=\"");                                                             \
            tx_label(&t, s->name, s->name_len);                                                    \
            tx(&t, "\"} %.17g\n", (double)(expr));                                                 \
        }                                                                                          \
    } while (0)

#define GROUP_METRIC(mname, type, help, expr)                                                      \
    do {                                                                                           \
        tx_head(&t, mname, type, help);                                                            \
        for (size_t i = 0; i < ng; i++) {                                                          \
            const struct group_stat *s = &gs[i];                                                   \
            tx(&t, mname "{topic=\"");                                                             \
            tx_label(&t, (const char *)s->info.topic.ptr, s->info.topic.len);                      \
            tx(&t, "\",group=\"");                                                                 \
            tx_label(&t, (const char *)s->info.group.ptr, s->info.group.len);                      \
            tx(&t, "\"} %.17g\n", (double)(expr));                                                 \
        }                                                                                          \
    } while (0)

int http_view_metrics(struct broker *b, struct http_page *p)
{
    struct topic_stat *ts;
    struct group_stat *gs;
    size_t nt, ng;
    if (groups_topic_stats(b, NULL, 0, &ts, &nt) < 0)
        return -1;
    if (groups_group_stats(b, NULL, 0, &gs, &ng) < 0) {
        free(ts);
        return -1;
    }
    struct text t = {0};
    TOPIC_METRIC("ferry_topic_messages", "gauge", "Messages the topic holds.", s->v.count);
    TOPIC_METRIC("ferry_topic_bytes", "gauge", "Bytes of the messages the topic holds.",
                 s->v.bytes);
    TOPIC_METRIC("ferry_topic_head_sequence", "gauge", "Sequence of the newest message.",
                 s->v.head);
    TOPIC_METRIC("ferry_topic_first_sequence", "gauge",
                 "Sequence of the oldest message kept (0: none).", s->v.count ? s->v.first : 0);
    TOPIC_METRIC("ferry_topic_published_messages_total", "counter",
                 "Messages stored in the topic since ferryd started.", s->stored);
    TOPIC_METRIC("ferry_topic_published_bytes_total", "counter",
                 "Bytes of the messages stored since ferryd started.", s->bytes_in);
    TOPIC_METRIC("ferry_topic_dead_letters", "gauge",
                 "Dead letters of the topic kept in _dead.<topic>.", s->dead_letters);
    GROUP_METRIC("ferry_group_lag", "gauge", "Messages up to the head the group has not acked.",
                 s->info.lag);
    GROUP_METRIC("ferry_group_in_flight", "gauge", "Deliveries awaiting their ack.",
                 s->info.in_flight);
    GROUP_METRIC("ferry_group_consumers", "gauge", "Subscriptions of the group.",
                 s->info.consumers);
    GROUP_METRIC("ferry_group_redeliveries_total", "counter",
                 "Deliveries made again after a nack, lease expiry or disconnect.",
                 s->info.redelivered);
    GROUP_METRIC("ferry_group_dead_lettered_total", "counter",
                 "Messages moved to the dead letters.", s->info.dead_lettered);
    GROUP_METRIC("ferry_group_acks_total", "counter", "Acks taken since ferryd started.", s->acks);
    GROUP_METRIC("ferry_group_oldest_unacked_seconds", "gauge",
                 "Age of the oldest message the group has not acked (0: none).",
                 (double)s->info.oldest_unacked_ms / 1000.0);

    struct sysfig f;
    sys_figures(b, &f);
    const struct store_stats *st = &b->store_stats;
    tx_one(&t, "ferry_connections", "gauge", "Open protocol connections.", b->nconns);
    tx_one(&t, "ferry_connections_accepted_total", "counter", "Protocol connections accepted.",
           (double)b->accepted);
    tx_one(&t, "ferry_frames_received_total", "counter", "Protocol frames received.",
           (double)b->frames_in);
    tx_one(&t, "ferry_frames_sent_total", "counter", "Protocol frames sent.",
           (double)b->frames_out);
    tx_one(&t, "ferry_received_bytes_total", "counter", "Bytes of the frames received.",
           (double)b->bytes_in);
    tx_one(&t, "ferry_sent_bytes_total", "counter", "Bytes of the frames sent.",
           (double)b->bytes_out);
    tx_one(&t, "ferry_commits_total", "counter", "Group commits (SQLite transactions).",
           (double)b->commits);
    tx_one(&t, "ferry_published_messages_total", "counter",
           "Messages stored, all topics, since ferryd started.", (double)st->messages_stored);
    tx_one(&t, "ferry_duplicate_messages_total", "counter",
           "Publishes recognised as duplicates and not stored again.", (double)st->duplicates);
    tx_histo(&t, "ferry_commit_messages", "Messages stored per group commit.", &b->commit_messages);
    tx_histo(&t, "ferry_commit_duration_seconds",
             "Time of one group commit, fsync included when --sync full.", &b->commit_seconds);
    tx_histo(&t, "ferry_fsync_duration_seconds",
             "Time of one fsync of ferry.db or its WAL (SQLite's xSync).",
             store_vfs_sync_seconds());
    tx_one(&t, "ferry_database_bytes", "gauge", "Size of ferry.db.", (double)f.db_bytes);
    tx_one(&t, "ferry_wal_bytes", "gauge", "Size of ferry.db-wal.", (double)f.wal_bytes);
    tx_one(&t, "ferry_disk_free_bytes", "gauge", "Free bytes on the data folder's filesystem.",
           (double)f.disk_free_bytes);
    tx_one(&t, "ferry_disk_reserve_held", "gauge",
           "1 while the disk reserve file holds its blocks.", st->reserve_held);
    tx_one(&t, "ferry_disk_reserve_released", "gauge",
           "1 while the reserve is released on a full disk (publishes refused).",
           st->reserve_released);
    tx_one(&t, "ferry_dedupe_ids", "gauge", "Message ids remembered for dedupe.",
           (double)st->dedupe_ids);
    tx_one(&t, "ferry_dedupe_bytes", "gauge", "Memory of the dedupe index.",
           (double)st->dedupe_bytes);
    tx_one(&t, "ferry_io_errors_total", "counter", "I/O errors met by the store.",
           (double)st->io_errors);
    tx_one(&t, "ferry_deleted_topics_purging", "gauge",
           "Deleted topics whose stored messages are still being freed.", (double)st->purging);
    tx_one(&t, "ferry_purged_messages_total", "counter",
           "Messages of deleted topics freed from the database.", (double)st->purged);
    tx_one(&t, "ferry_resident_memory_bytes", "gauge", "Resident memory of ferryd.",
           (double)f.rss_bytes);
    tx_one(&t, "ferry_start_time_seconds", "gauge", "When ferryd started (Unix time).",
           (double)b->started_ms / 1000.0);
    tx_head(&t, "ferry_build_info", "gauge", "ferryd's version, as a label.");
    tx(&t, "ferry_build_info{version=\"%s\"} 1\n", FERRY_BROKER_VERSION);
    free(ts);
    free(gs);
    if (t.failed) {
        free(t.p);
        return -1;
    }
    p->status = 200;
    p->content_type = "text/plain; version=0.0.4; charset=utf-8";
    p->body = t.p;
    p->len = t.len;
    return 0;
}

/* ---- JSON ------------------------------------------------------------- */

static int json_page(json_t *v, struct http_page *p, int status)
{
    if (!v)
        return -1;
    char *s = json_dumps(v, JSON_COMPACT | JSON_REAL_PRECISION(12));
    json_decref(v);
    if (!s)
        return -1;
    p->status = status;
    p->content_type = "application/json";
    p->len = strlen(s);
    p->body = malloc(p->len + 1);
    if (!p->body) {
        free(s);
        return -1;
    }
    memcpy(p->body, s, p->len + 1);
    free(s);
    return 0;
}

static void set_u(json_t *o, const char *k, uint64_t v)
{
    json_object_set_new(o, k, json_integer((json_int_t)v));
}

static void set_f(json_t *o, const char *k, double v)
{
    json_object_set_new(o, k, json_real(v));
}

static void set_s(json_t *o, const char *k, const char *s, size_t n)
{
    json_object_set_new(o, k, json_stringn(s, n));
}

static json_t *topic_json(const struct topic_stat *s)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    set_s(o, "topic", s->name, s->name_len);
    set_u(o, "messages", s->v.count);
    set_u(o, "bytes", s->v.bytes);
    set_u(o, "first_seq", s->v.count ? s->v.first : 0);
    set_u(o, "head_seq", s->v.head);
    set_u(o, "created_ms", (uint64_t)s->v.created_ms);
    set_u(o, "max_age_ms", s->v.max_age_ms);
    set_u(o, "max_count", s->v.max_count);
    set_u(o, "max_bytes", s->v.max_bytes);
    json_object_set_new(o, "delete_acked", json_boolean(s->v.delete_acked));
    set_u(o, "publish_rate", s->rate_in_10s);
    set_u(o, "dead_lettered", s->dead_letters);
    set_u(o, "groups", s->groups);
    set_u(o, "published", s->stored);
    set_u(o, "published_bytes", s->bytes_in);
    set_u(o, "publish_rate_1s", s->rate_in_1s);
    set_f(o, "publish_rate_1m", s->rate_in_1m);
    set_u(o, "consume_rate_1s", s->rate_out_1s);
    set_f(o, "consume_rate_1m", s->rate_out_1m);
    return o;
}

static json_t *group_json(const struct group_stat *s)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    const struct proto_group_info *g = &s->info;
    set_s(o, "topic", (const char *)g->topic.ptr, g->topic.len);
    set_s(o, "group", (const char *)g->group.ptr, g->group.len);
    set_u(o, "cursor", g->cursor);
    set_u(o, "ack_floor", g->ack_floor);
    set_u(o, "lag", g->lag);
    set_u(o, "in_flight", g->in_flight);
    set_u(o, "consumers", g->consumers);
    set_u(o, "redelivered", g->redelivered);
    set_u(o, "dead_lettered", g->dead_lettered);
    set_u(o, "oldest_unacked_ms", g->oldest_unacked_ms);
    set_u(o, "ack_wait_ms", g->ack_wait_ms);
    set_u(o, "max_deliveries", g->max_deliveries);
    set_u(o, "acks", s->acks);
    set_u(o, "ack_rate_1s", s->ack_rate_1s);
    set_f(o, "ack_rate_1m", s->ack_rate_1m);
    return o;
}

static json_t *groups_array(struct broker *b, const char *topic, size_t len)
{
    struct group_stat *gs;
    size_t ng;
    if (groups_group_stats(b, topic, len, &gs, &ng) < 0)
        return NULL;
    json_t *a = json_array();
    for (size_t i = 0; a && i < ng; i++)
        if (json_array_append_new(a, group_json(&gs[i])) < 0) {
            json_decref(a);
            a = NULL;
        }
    free(gs);
    return a;
}

static json_t *histo_json(const struct histo *h)
{
    uint64_t cum[HISTO_LATENCY_BUCKETS + 1], count;
    double sum;
    histo_read(h, cum, &count, &sum);
    json_t *o = json_object(), *buckets = json_array();
    if (!o || !buckets) {
        json_decref(o);
        json_decref(buckets);
        return NULL;
    }
    for (size_t i = 0; i <= h->nbounds; i++) {
        json_t *e = json_object();
        if (i < h->nbounds)
            set_f(e, "le", h->bounds[i]);
        else
            json_object_set_new(e, "le", json_string("+Inf"));
        set_u(e, "count", cum[i]);
        json_array_append_new(buckets, e);
    }
    set_u(o, "count", count);
    set_f(o, "sum", sum);
    json_object_set_new(o, "buckets", buckets);
    return o;
}

int http_view_broker(struct broker *b, struct http_page *p)
{
    struct sysfig f;
    sys_figures(b, &f);
    const struct store_stats *st = &b->store_stats;
    json_t *o = json_object();
    if (!o)
        return -1;
    json_object_set_new(o, "version", json_string(FERRY_BROKER_VERSION));
    set_u(o, "started_ms", (uint64_t)b->started_ms);
    set_u(o, "now_ms", (uint64_t)clock_wall_ms());
    json_object_set_new(o, "sync", json_string(b->cfg.sync_full ? "full" : "normal"));
    set_u(o, "connections", (uint64_t)b->nconns);
    set_u(o, "connections_accepted", b->accepted);
    set_u(o, "topics", st->topics);
    set_u(o, "published", st->messages_stored);
    set_u(o, "duplicates", st->duplicates);
    set_u(o, "commits", b->commits);
    set_u(o, "frames_in", b->frames_in);
    set_u(o, "frames_out", b->frames_out);
    set_u(o, "bytes_in", b->bytes_in);
    set_u(o, "bytes_out", b->bytes_out);
    set_u(o, "db_bytes", f.db_bytes);
    set_u(o, "wal_bytes", f.wal_bytes);
    set_u(o, "disk_free_bytes", f.disk_free_bytes);
    json_object_set_new(o, "disk_reserve",
                        json_string(st->reserve_released ? "released"
                                    : st->reserve_held   ? "held"
                                                         : "none"));
    set_u(o, "dedupe_ids", st->dedupe_ids);
    set_u(o, "dedupe_bytes", st->dedupe_bytes);
    set_u(o, "io_errors", st->io_errors);
    set_u(o, "deleted_topics_purging", st->purging);
    set_u(o, "purged_messages", st->purged);
    set_u(o, "rss_bytes", f.rss_bytes);
    json_object_set_new(o, "commit_seconds", histo_json(&b->commit_seconds));
    json_object_set_new(o, "commit_messages", histo_json(&b->commit_messages));
    json_object_set_new(o, "fsync_seconds", histo_json(store_vfs_sync_seconds()));
    return json_page(o, p, 200);
}

int http_view_topics(struct broker *b, struct http_page *p)
{
    struct topic_stat *ts;
    size_t nt;
    if (groups_topic_stats(b, NULL, 0, &ts, &nt) < 0)
        return -1;
    json_t *a = json_array();
    for (size_t i = 0; a && i < nt; i++)
        if (json_array_append_new(a, topic_json(&ts[i])) < 0) {
            json_decref(a);
            a = NULL;
        }
    free(ts);
    return json_page(a, p, 200);
}

int http_view_topic(struct broker *b, const char *name, size_t len, struct http_page *p)
{
    struct topic_stat *ts;
    size_t nt;
    if (groups_topic_stats(b, name, len, &ts, &nt) < 0)
        return -1;
    if (nt == 0) {
        free(ts);
        return http_view_error(404, "no such topic", p);
    }
    json_t *o = topic_json(&ts[0]);
    free(ts);
    if (!o)
        return -1;
    json_t *groups = groups_array(b, name, len);
    if (!groups) {
        json_decref(o);
        return -1;
    }
    json_object_set_new(o, "consumer_groups", groups);
    return json_page(o, p, 200);
}

int http_view_groups(struct broker *b, struct http_page *p)
{
    return json_page(groups_array(b, NULL, 0), p, 200);
}

int http_view_connections(struct broker *b, struct http_page *p)
{
    json_t *a = json_array();
    int64_t wall = clock_wall_ms();
    uint64_t mono = clock_mono_ms();
    for (struct conn *c = b->conns; a && c; c = c->next) {
        if (c->state == CONN_CLOSED)
            continue;
        json_t *o = json_object();
        if (!o) {
            json_decref(a);
            return -1;
        }
        set_u(o, "id", c->id);
        json_object_set_new(o, "peer", json_string(c->peer));
        json_object_set_new(o, "client", json_string(c->client));
        const char *tok = c->token ? auth_token_name(c->token) : NULL;
        json_object_set_new(o, "token", tok ? json_string(tok) : json_null());
        json_object_set_new(o, "state",
                            json_string(c->state == CONN_HANDSHAKE ? "handshake"
                                        : c->state == CONN_READY   ? "ready"
                                                                   : "closing"));
        uint64_t age = mono > c->accepted_ms ? mono - c->accepted_ms : 0;
        set_u(o, "connected_ms", (uint64_t)wall - age);
        set_u(o, "frames_in", c->frames_in);
        set_u(o, "frames_out", c->frames_out);
        set_u(o, "bytes_in", c->bytes_in);
        set_u(o, "bytes_out", c->bytes_out);
        set_u(o, "subscriptions", groups_conn_subs(c));
        set_u(o, "pending_bytes", c->wq.len + c->wbusy.len);
        json_array_append_new(a, o);
    }
    return json_page(a, p, 200);
}

int http_view_error(int status, const char *msg, struct http_page *p)
{
    return json_page(json_pack("{s:s}", "error", msg), p, status);
}
