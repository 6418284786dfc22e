/*
 * store_topics.c - the store's topics: the map by name and each topic's
 * counters (written back before COMMIT, restored if it fails), the
 * TOPICS listing, and retention (the broker's limits and each topic's
 * own, TOPIC_CONFIG).
 */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "dedupe.h"
#include "ferry_codes.h"
#include "log.h"
#include "proto.h"
#include "reserve.h"
#include "store_internal.h"
#include "store_io.h"

/* ---- topic map -------------------------------------------------------- */

struct topic *topic_find(struct store *s, const uint8_t *name, size_t len)
{
    return namemap_find(&s->topics, name, len);
}

int topic_map_insert(struct store *s, struct topic *t)
{
    return namemap_insert(&s->topics, &t->link, t->name, t->name_len);
}

static void topic_map_remove(struct store *s, struct topic *t)
{
    namemap_remove(&s->topics, &t->link);
}

struct topic *topic_new(const char *name, size_t len)
{
    struct topic *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->name = malloc(len + 1);
    if (!t->name) {
        free(t);
        return NULL;
    }
    memcpy(t->name, name, len);
    t->name[len] = 0;
    t->name_len = len;
    t->own = (struct topic_retention){UINT64_MAX, UINT64_MAX, UINT64_MAX, -1};
    return t;
}

void topic_free(struct topic *t)
{
    if (t) {
        free(t->name);
        free(t);
    }
}

/* Marks t as touched by this transaction, saving its counters once. */
static void topic_touch(struct store *s, struct topic *t)
{
    if (t->in_txn)
        return;
    t->in_txn = 1;
    t->saved = t->c;
    t->saved_own = t->own;
    t->next_dirty = s->dirty;
    s->dirty = t;
}

/* Finds or creates (inside the open transaction) the topic. Returns NULL
 * and sets *err on failure. */
struct topic *topic_get(struct store *s, const uint8_t *name, size_t len, int64_t now_ms, int *err)
{
    struct topic *t = topic_find(s, name, len);
    if (t) {
        topic_touch(s, t);
        return t;
    }
    t = topic_new((const char *)name, len);
    if (!t) {
        *err = FERRY_EINTERNAL;
        return NULL;
    }
    sqlite3_stmt *st = s->st[ST_TOPIC_INSERT];
    sqlite3_bind_text(st, 1, t->name, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now_ms);
    int rc = step_done(st);
    if (rc != SQLITE_OK) {
        set_err(s, "create topic");
        topic_free(t);
        *err = map_sqlite_error(rc);
        return NULL;
    }
    t->id = sqlite3_last_insert_rowid(s->db);
    if (t->id > TOPIC_ID_MAX) {
        snprintf(s->errmsg, sizeof(s->errmsg), "topic id space exhausted");
        topic_free(t);
        *err = FERRY_ESTORAGE;
        return NULL;
    }
    t->created_ms = now_ms;
    t->created_in_txn = 1;
    if (topic_map_insert(s, t) < 0) {
        topic_free(t);
        *err = FERRY_EINTERNAL;
        return NULL;
    }
    topic_touch(s, t);
    return t;
}

/* Writes every touched topic's counters back (inside the transaction). */
/*
 * Writes touched topics' counters back (inside the transaction), but a
 * topic's row at most once a second unless forced: under load that saves a
 * page write per commit. What the row lags behind is recovered at open
 * from the messages after its head (see recover_topic), so nothing is lost.
 */
#define TOPIC_PERSIST_MS 1000
int topics_flush(struct store *s, int64_t now_ms, int force)
{
    sqlite3_stmt *st = s->st[ST_TOPIC_UPDATE];
    for (struct topic *t = s->dirty; t; t = t->next_dirty) {
        if (!t->created_in_txn && memcmp(&t->c, &t->persisted, sizeof(t->c)) == 0)
            continue;
        if (!t->created_in_txn && !force && now_ms - t->persisted_ms < TOPIC_PERSIST_MS)
            continue;
        sqlite3_bind_int64(st, 1, t->id);
        sqlite3_bind_int64(st, 2, (int64_t)t->c.head);
        sqlite3_bind_int64(st, 3, (int64_t)t->c.first);
        sqlite3_bind_int64(st, 4, (int64_t)t->c.count);
        sqlite3_bind_int64(st, 5, (int64_t)t->c.bytes);
        int rc = step_done(st);
        if (rc != SQLITE_OK) {
            set_err(s, "update topic");
            return rc;
        }
        t->written_in_txn = 1;
    }
    return SQLITE_OK;
}

/* Every topic whose row lags: touched so the next flush writes it. */
void topics_touch_lagging(struct store *s)
{
    for (struct topic *t = namemap_first(&s->topics); t; t = namemap_next(&s->topics, t))
        if (memcmp(&t->c, &t->persisted, sizeof(t->c)) != 0)
            topic_touch(s, t);
}

void topic_view_of(const struct store *s, const struct topic *t, struct topic_view *v)
{
    struct retention r = effective_retention(s, t);
    *v = (struct topic_view){
        .head = t->c.head,
        .first = t->c.first,
        .count = t->c.count,
        .bytes = t->c.bytes,
        .created_ms = t->created_ms,
        .max_age_ms = r.max_age_ms,
        .max_count = r.max_count,
        .max_bytes = r.max_bytes,
        .delete_acked = r.delete_acked ? 1 : 0,
    };
}

/* Ends the transaction's bookkeeping: keep (ok) or restore the counters. */
void topics_settle(struct store *s, struct batch *b, int ok)
{
    struct topic *t = s->dirty;
    while (t) {
        struct topic *next = t->next_dirty;
        if (t->deleted_in_txn) {
            /* Deleted: gone if the transaction stood (the loop learns it
             * from the DELETE op), back in the map if it did not (unless
             * the same transaction had created it). */
            if (ok || t->created_in_txn) {
                topic_free(t);
                t = next;
                continue;
            }
            t->deleted_in_txn = 0;
            if (topic_map_insert(s, t) < 0)
                log_error("out of memory restoring topic %s after a failed commit", t->name);
        }
        if (ok && t->written_in_txn) {
            t->persisted = t->c;
            t->persisted_ms = b ? b->now_ms : 0;
        }
        t->written_in_txn = 0;
        if (ok && b) {
            /* Tell the loop what the topic is now. */
            struct topic_update *u = vec_push(&b->topic_updates, sizeof(*u));
            if (u) {
                *u = (struct topic_update){
                    .id = t->id,
                    .stored = t->c.head - t->saved.head,
                    .bytes_in = t->bytes_in_txn,
                    .name = {b->topic_names.len, t->name_len},
                };
                topic_view_of(s, t, &u->v);
                if (buf_append(&b->topic_names, t->name, t->name_len) < 0)
                    b->topic_updates.len--;
            }
        }
        t->bytes_in_txn = 0;
        if (!ok) {
            if (t->created_in_txn) {
                topic_map_remove(s, t);
                topic_free(t);
                t = next;
                continue;
            }
            t->c = t->saved;
            t->own = t->saved_own;
        }
        t->in_txn = 0;
        t->created_in_txn = 0;
        t->next_dirty = NULL;
        t = next;
    }
    s->dirty = NULL;
}

/* ---- deleting topics ---------------------------------------------------- */

/*
 * Deletes t inside the open transaction: its row goes to deleted_topics
 * (its id stays taken), it leaves the map at once (a publish later in the
 * same transaction creates a new topic of the name), and its messages are
 * purged by purge_step once the deletion commits.
 */
int topic_delete(struct store *s, struct topic *t, int64_t now_ms)
{
    topic_touch(s, t);
    sqlite3_stmt *st = s->st[ST_DELTOPIC_INSERT];
    sqlite3_bind_int64(st, 1, t->id);
    sqlite3_bind_text(st, 2, t->name, (int)t->name_len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, now_ms);
    sqlite3_bind_int64(st, 4, (int64_t)t->c.count);
    int rc = step_done(st);
    if (rc == SQLITE_OK) {
        st = s->st[ST_TOPIC_DELETE];
        sqlite3_bind_int64(st, 1, t->id);
        rc = step_done(st);
    }
    if (rc != SQLITE_OK) {
        set_err(s, "delete topic");
        return rc;
    }
    if (s->nadded_purge == s->cap_added_purge) {
        size_t cap = s->cap_added_purge ? 2 * s->cap_added_purge : 4;
        int64_t *p = realloc(s->purge_added, cap * sizeof(*p));
        if (!p) {
            snprintf(s->errmsg, sizeof(s->errmsg), "out of memory deleting a topic");
            return SQLITE_NOMEM;
        }
        s->purge_added = p;
        s->cap_added_purge = cap;
    }
    s->purge_added[s->nadded_purge++] = t->id;
    topic_map_remove(s, t);
    t->deleted_in_txn = 1;
    return SQLITE_OK;
}

/* The deletions of a transaction that stood join the purge queue. */
void purge_settle(struct store *s, int ok)
{
    if (ok && s->nadded_purge) {
        size_t need = s->npurge + s->nadded_purge;
        if (need > s->cap_purge) {
            int64_t *p = realloc(s->purge_ids, need * sizeof(*p));
            if (!p) {
                /* The rows stay in deleted_topics: the next start purges them. */
                log_error("out of memory queueing %zu deleted topic(s) for purging",
                          s->nadded_purge);
                s->nadded_purge = 0;
                return;
            }
            s->purge_ids = p;
            s->cap_purge = need;
        }
        memcpy(s->purge_ids + s->npurge, s->purge_added, s->nadded_purge * sizeof(int64_t));
        s->npurge = need;
    }
    s->nadded_purge = 0;
}

/*
 * Frees up to budget rows of the oldest deleted topic still holding some,
 * inside the open transaction; when none is left, it is marked purged.
 * A commit that fails undoes the step with everything else; the queue in
 * memory moves only after COMMIT (purge_done_upto). Returns an SQLite code.
 */
static int purge_rows(struct store *s, int64_t now_ms, int64_t budget)
{
    for (size_t i = 0; i < s->npurge && budget > 0; i++) {
        int64_t id = s->purge_ids[i];
        /* The topic's rids, both ends inclusive (no overflow at the last id). */
        int64_t lo = (int64_t)((uint64_t)id << 40), hi = lo | SEQ_MAX;
        sqlite3_stmt *cut = s->st[ST_PURGE_CUT];
        sqlite3_bind_int64(cut, 1, lo);
        sqlite3_bind_int64(cut, 2, hi);
        sqlite3_bind_int64(cut, 3, budget);
        int rc = sqlite3_step(cut);
        int more = rc == SQLITE_ROW; /* rows at and after the cut stay */
        int64_t last = more ? sqlite3_column_int64(cut, 0) - 1 : hi;
        sqlite3_reset(cut);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            return rc;
        sqlite3_stmt *del = s->st[ST_PURGE_DELETE];
        sqlite3_bind_int64(del, 1, lo);
        sqlite3_bind_int64(del, 2, last);
        if ((rc = step_done(del)) != SQLITE_OK)
            return rc;
        int64_t n = sqlite3_changes(s->db);
        s->purge_rows += (uint64_t)n;
        budget -= n;
        if (more)
            break; /* the budget ran out inside this topic */
        sqlite3_stmt *done = s->st[ST_DELTOPIC_DONE];
        sqlite3_bind_int64(done, 1, id);
        sqlite3_bind_int64(done, 2, now_ms);
        if ((rc = step_done(done)) != SQLITE_OK)
            return rc;
        s->purge_done = i + 1;
        if (!n)
            budget--; /* an empty topic costs a step too */
    }
    return SQLITE_OK;
}

/*
 * Frees up to budget rows of the oldest deleted topics still holding some,
 * inside the open transaction, in a savepoint of its own: a step that fails
 * (a bad page in the deleted range, say) is undone alone, logged, and not
 * tried again for PURGE_RETRY_MS, so that it never fails the batch's own
 * writes. A topic with no rows left is marked purged. The queue in memory
 * moves only after COMMIT (purge_commit). Returns an SQLite code: an error
 * only when the transaction itself is gone.
 */
#define PURGE_RETRY_MS 10000
int purge_step(struct store *s, int64_t now_ms, int64_t budget)
{
    s->purge_done = 0;
    s->purge_rows = 0;
    if (now_ms < s->purge_retry_ms)
        return SQLITE_OK;
    int rc = sqlite3_exec(s->db, "SAVEPOINT purge", NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = purge_rows(s, now_ms, budget);
    if (rc == SQLITE_OK)
        return sqlite3_exec(s->db, "RELEASE purge", NULL, NULL, NULL);
    log_error("purging deleted topics: %s; trying again in %d s", sqlite3_errmsg(s->db),
              PURGE_RETRY_MS / 1000);
    s->purge_done = 0;
    s->purge_rows = 0;
    s->purge_retry_ms = now_ms + PURGE_RETRY_MS;
    if (sqlite3_get_autocommit(s->db)) {
        set_err(s, "purge a deleted topic"); /* SQLite rolled it all back */
        return rc;
    }
    if (sqlite3_exec(s->db, "ROLLBACK TO purge", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(s->db, "RELEASE purge", NULL, NULL, NULL) != SQLITE_OK) {
        set_err(s, "purge a deleted topic");
        return SQLITE_ERROR;
    }
    return SQLITE_OK;
}

/* After COMMIT: the topics purge_step finished leave the queue. */
void purge_commit(struct store *s, int ok)
{
    if (ok && s->purge_done) {
        memmove(s->purge_ids, s->purge_ids + s->purge_done,
                (s->npurge - s->purge_done) * sizeof(int64_t));
        s->npurge -= s->purge_done;
        s->stats.purged += s->purge_rows;
    } else if (ok) {
        s->stats.purged += s->purge_rows;
    }
    s->purge_done = 0;
    s->purge_rows = 0;
}

/* ---- topics listing --------------------------------------------------- */

static int cmp_topic(const void *a, const void *b)
{
    const struct topic *x = *(const struct topic *const *)a;
    const struct topic *y = *(const struct topic *const *)b;
    return strcmp(x->name, y->name);
}

/* Messages stored per second over the last RATE_SLOTS seconds. */
static uint64_t topic_rate(const struct topic *t, int64_t now_ms)
{
    int64_t sec = now_ms / 1000;
    uint64_t sum = 0;
    for (int i = 0; i < RATE_SLOTS; i++)
        if (t->rate_sec[i] > sec - RATE_SLOTS && t->rate_sec[i] <= sec)
            sum += t->rate_count[i];
    return sum / RATE_SLOTS;
}

void topic_count_rate(struct topic *t, int64_t now_ms)
{
    int64_t sec = now_ms / 1000;
    int i = (int)(sec % RATE_SLOTS);
    if (t->rate_sec[i] != sec) {
        t->rate_sec[i] = sec;
        t->rate_count[i] = 0;
    }
    t->rate_count[i]++;
}

int topics_op(struct store *s, struct batch *b, struct op *op, int64_t now_ms)
{
    struct topic **all = malloc((s->topics.count ? s->topics.count : 1) * sizeof(*all));
    if (!all)
        return FERRY_EINTERNAL;
    size_t n = 0;
    for (struct topic *t = namemap_first(&s->topics); t; t = namemap_next(&s->topics, t))
        all[n++] = t;
    qsort(all, n, sizeof(*all), cmp_topic);
    if (n > PROTO_MAX_TOPICS)
        n = PROTO_MAX_TOPICS;
    size_t need = PROTO_HEADER_BYTES + 4 + n * (2 + 2 + PROTO_MAX_TOPIC + 9 * 8 + 1);
    if (buf_reserve(&b->out, need) < 0) {
        free(all);
        return FERRY_EINTERNAL;
    }
    struct proto_writer w;
    proto_writer_init(&w, b->out.data + b->out.len, b->out.cap - b->out.len);
    size_t start = proto_topics_ok_begin(&w, op->request_id);
    for (size_t i = 0; i < n; i++) {
        struct proto_topic_info ti = {
            .name = {(const uint8_t *)all[i]->name, all[i]->name_len},
            .head_seq = all[i]->c.head,
            .first_seq = all[i]->c.count ? all[i]->c.first : 0,
            .message_count = all[i]->c.count,
            .bytes = all[i]->c.bytes,
            .created_ms = (uint64_t)all[i]->created_ms,
            .has_config = 1,
        };
        struct retention r = effective_retention(s, all[i]);
        ti.max_age_ms = r.max_age_ms;
        ti.max_count = r.max_count;
        ti.max_bytes = r.max_bytes;
        ti.delete_acked = (uint8_t)(r.delete_acked ? 1 : 0);
        ti.publish_rate = topic_rate(all[i], now_ms);
        proto_topics_ok_add(&w, &ti);
    }
    free(all);
    if (proto_topics_ok_end(&w, start, (uint32_t)n) < 0)
        return FERRY_EINTERNAL;
    op->out_off = b->out.len;
    op->out_len = w.len;
    b->out.len += w.len;
    return 0;
}

/* ---- retention ---------------------------------------------------------- */

/* Rows deleted per topic and commit, at least: small steps, so that a large
 * purge never makes one commit (and the acks waiting on it) slow. */
#define RETENTION_STEP_MIN 2000

/* The bytes a stored row counts (as proto_msg_size). */
static uint64_t row_bytes(sqlite3_stmt *st)
{
    const uint8_t *h = sqlite3_column_blob(st, 3);
    size_t hl = (size_t)sqlite3_column_bytes(st, 3);
    uint64_t hb = h && hl >= 2 ? hl - 2 - 4 * (uint64_t)proto_rd16(h) : 0;
    return (uint64_t)sqlite3_column_int64(st, 2) + hb + (uint64_t)sqlite3_column_int64(st, 4);
}

/*
 * Deletes from the front of topic t what its retention no longer keeps:
 * beyond max_count, older than max_age, beyond max_bytes, and (with
 * delete_acked) what every group of the topic has acked. At most `budget`
 * rows; returns an SQLite code.
 */
/* A topic's retention: its own settings, else the broker's defaults. */
struct retention effective_retention(const struct store *s, const struct topic *t)
{
    struct retention r = s->retention;
    if (t->own.max_age_ms != UINT64_MAX)
        r.max_age_ms = t->own.max_age_ms;
    if (t->own.max_count != UINT64_MAX)
        r.max_count = t->own.max_count;
    if (t->own.max_bytes != UINT64_MAX)
        r.max_bytes = t->own.max_bytes;
    if (t->own.delete_acked >= 0)
        r.delete_acked = t->own.delete_acked;
    return r;
}

static int retain_topic(struct store *s, struct topic *t, int64_t now_ms, int64_t budget)
{
    const struct retention rr = effective_retention(s, t);
    const struct retention *r = &rr;
    if (!t->c.count || (!r->max_age_ms && !r->max_count && !r->max_bytes && !r->delete_acked))
        return SQLITE_OK;
    uint64_t keep_from = t->c.first; /* the first sequence that stays */
    if (r->max_count && t->c.count > r->max_count)
        keep_from = t->c.head - r->max_count + 1;
    if (r->delete_acked) {
        sqlite3_stmt *q = s->st[ST_MIN_FLOOR];
        sqlite3_bind_text(q, 1, t->name, (int)t->name_len, SQLITE_STATIC);
        if (sqlite3_step(q) == SQLITE_ROW && sqlite3_column_int64(q, 1) > 0) {
            uint64_t floor = (uint64_t)sqlite3_column_int64(q, 0);
            if (floor > keep_from)
                keep_from = floor > t->c.head + 1 ? t->c.head + 1 : floor;
        }
        sqlite3_reset(q);
    }
    int64_t cutoff = r->max_age_ms ? now_ms - (int64_t)r->max_age_ms : INT64_MIN;
    if (keep_from <= t->c.first && !r->max_age_ms && (!r->max_bytes || t->c.bytes <= r->max_bytes))
        return SQLITE_OK;

    /* Walk from the front, deciding row by row. */
    sqlite3_stmt *st = s->st[ST_RET_SCAN];
    uint64_t base = (uint64_t)t->id << 40;
    sqlite3_bind_int64(st, 1, (int64_t)(base | t->c.first));
    sqlite3_bind_int64(st, 2, (int64_t)(base | t->c.head));
    sqlite3_bind_int64(st, 3, budget);
    uint64_t last = 0, n = 0, bytes = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        uint64_t seq = (uint64_t)sqlite3_column_int64(st, 0) & (uint64_t)SEQ_MAX;
        uint64_t size = row_bytes(st);
        int go = seq < keep_from || sqlite3_column_int64(st, 1) < cutoff ||
                 (r->max_bytes && t->c.bytes - bytes > r->max_bytes);
        if (!go)
            break;
        last = seq;
        n++;
        bytes += size;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        set_err(s, "retention");
        return rc;
    }
    if (!n)
        return SQLITE_OK;
    st = s->st[ST_RET_DELETE];
    sqlite3_bind_int64(st, 1, (int64_t)(base | t->c.first));
    sqlite3_bind_int64(st, 2, (int64_t)(base | last));
    if ((rc = step_done(st)) != SQLITE_OK) {
        set_err(s, "retention");
        return rc;
    }
    if (t->name_len > 6 && memcmp(t->name, "_dead.", 6) == 0) {
        /* Their dead letters gone, these can no longer be redriven. */
        st = s->st[ST_GDEAD_PRUNE];
        sqlite3_bind_text(st, 1, t->name + 6, (int)t->name_len - 6, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, (int64_t)last);
        if ((rc = step_done(st)) != SQLITE_OK) {
            set_err(s, "retention");
            return rc;
        }
    }
    topic_touch(s, t);
    t->c.count -= n;
    t->c.bytes -= bytes;
    t->c.first = t->c.count ? last + 1 : 0;
    s->retained_deleted += n;
    return SQLITE_OK;
}

/* Inside the transaction: retention for the topics this commit touched,
 * and for every topic on a maintenance commit (time passes for idle
 * topics too). */
int retention_step(struct store *s, struct batch *b, int64_t now_ms)
{
    int64_t budget = (int64_t)b->messages * 2;
    if (budget < RETENTION_STEP_MIN)
        budget = RETENTION_STEP_MIN;
    int rc = SQLITE_OK;
    if (b->maintenance) {
        for (struct topic *t = namemap_first(&s->topics); rc == SQLITE_OK && t;
             t = namemap_next(&s->topics, t))
            rc = retain_topic(s, t, now_ms, budget);
        return rc;
    }
    /* topic_touch prepends to s->dirty; the ones already there are walked. */
    for (struct topic *t = s->dirty; rc == SQLITE_OK && t; t = t->next_dirty)
        if (!t->deleted_in_txn)
            rc = retain_topic(s, t, now_ms, budget);
    return rc;
}

/* A topic's own retention (TOPIC_CONFIG). */
int topic_config_op(struct store *s, struct batch *b, struct op *op, int64_t now_ms, int *ferr)
{
    const struct op_topic_config *cw = &op->u.config;
    struct topic *t = topic_get(s, batch_bytes(b, cw->topic), cw->topic.len, now_ms, ferr);
    if (!t)
        return SQLITE_ERROR;
    struct topic_retention own = {
        cw->max_age_ms, cw->max_count, cw->max_bytes,
        cw->delete_acked == PROTO_DELETE_ACKED_DEFAULT ? -1 : cw->delete_acked};
    sqlite3_stmt *st = s->st[ST_TOPIC_CONFIG];
    sqlite3_bind_int64(st, 1, t->id);
    uint64_t vals[3] = {own.max_age_ms, own.max_count, own.max_bytes};
    for (int i = 0; i < 3; i++) {
        if (vals[i] == UINT64_MAX)
            sqlite3_bind_null(st, 2 + i);
        else
            sqlite3_bind_int64(st, 2 + i, (int64_t)(vals[i] > INT64_MAX ? INT64_MAX : vals[i]));
    }
    if (own.delete_acked < 0)
        sqlite3_bind_null(st, 5);
    else
        sqlite3_bind_int(st, 5, own.delete_acked);
    int rc = step_done(st);
    if (rc != SQLITE_OK) {
        set_err(s, "configure topic");
        return rc;
    }
    /* Takes effect at once; a failed commit restores it in topics_settle. */
    t->own = own;
    return SQLITE_OK;
}
