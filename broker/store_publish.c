/*
 * store_publish.c - storing published messages: sequences, message ids
 * and their dedupe index (dedupe.h, the dedupe_log table), producers'
 * high-water marks. On the commit worker, inside the transaction.
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

/* ---- dedupe ----------------------------------------------------------- */

static int dd_note(struct dd_change **arr, size_t *n, size_t *cap, uint64_t h, uint64_t log_id)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 1024;
        struct dd_change *p = realloc(*arr, nc * sizeof(*p));
        if (!p)
            return -1;
        *arr = p;
        *cap = nc;
    }
    (*arr)[(*n)++] = (struct dd_change){h, log_id};
    return 0;
}

/*
 * Inside the transaction: deletes the oldest dedupe_log rows that are past
 * the window, or beyond the maximum number of remembered ids, at most
 * `limit` of them. Their index entries are removed when the commit succeeds.
 */
int dedupe_purge(struct store *s, int64_t now_ms, uint64_t batch_msgs)
{
    int64_t limit = (int64_t)batch_msgs * 2;
    if (limit < DEDUPE_PURGE_MIN)
        limit = DEDUPE_PURGE_MIN;
    uint64_t live = s->dd.count;
    int64_t cutoff = now_ms - (int64_t)s->dedupe_window_ms;
    if (s->dd_oldest_ms >= cutoff && live <= s->dedupe_max_ids)
        return SQLITE_OK;
    int64_t stop_ts = INT64_MIN; /* unknown: the limit ran out first */
    int64_t seen = 0;
    sqlite3_stmt *st = s->st[ST_DLOG_OLDEST];
    sqlite3_bind_int64(st, 1, limit);
    int64_t last = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t ts = sqlite3_column_int64(st, 3);
        seen++;
        if (ts >= cutoff && live <= s->dedupe_max_ids) {
            stop_ts = ts;
            break;
        }
        last = sqlite3_column_int64(st, 0);
        uint64_t h = dedupe_hash(&s->dd, sqlite3_column_int64(st, 1), sqlite3_column_blob(st, 2),
                                 (size_t)sqlite3_column_bytes(st, 2));
        if (dd_note(&s->dd_removed, &s->n_removed, &s->cap_removed, h, (uint64_t)last) < 0) {
            sqlite3_reset(st);
            return SQLITE_NOMEM;
        }
        if (ts >= cutoff)
            s->stats.dedupe_evicted++;
        live--;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        set_err(s, "purge dedupe");
        return rc;
    }
    if (rc == SQLITE_DONE && seen < limit)
        stop_ts = INT64_MAX; /* the log is empty now */
    s->dd_oldest_ms = stop_ts;
    if (!last)
        return SQLITE_OK;
    st = s->st[ST_DLOG_DELETE_UPTO];
    sqlite3_bind_int64(st, 1, last);
    if ((rc = step_done(st)) != SQLITE_OK) {
        set_err(s, "purge dedupe");
        return rc;
    }
    return SQLITE_OK;
}

/* Finishes the transaction's index bookkeeping. */
void dedupe_settle(struct store *s, int ok)
{
    if (ok) {
        for (size_t i = 0; i < s->n_removed; i++)
            s->stats.dedupe_purged +=
                (uint64_t)dedupe_remove(&s->dd, s->dd_removed[i].h, s->dd_removed[i].log_id);
    } else {
        for (size_t i = 0; i < s->n_added; i++)
            dedupe_remove(&s->dd, s->dd_added[i].h, s->dd_added[i].log_id);
    }
    s->n_added = s->n_removed = 0;
}

/* Looks (topic, id) up: 1 and *seq when stored, 0 when not, or a negated
 * SQLite code. Every hash candidate is checked against its log row. */
static int dedupe_lookup(struct store *s, uint64_t h, int64_t topic_id, const uint8_t *id,
                         size_t len, uint64_t *seq)
{
    size_t pos = 0;
    uint64_t log_id;
    sqlite3_stmt *st = s->st[ST_DLOG_GET];
    while (dedupe_next(&s->dd, h, &pos, &log_id)) {
        sqlite3_bind_int64(st, 1, (int64_t)log_id);
        int rc = sqlite3_step(st);
        int found = 0;
        if (rc == SQLITE_ROW) {
            found = sqlite3_column_int64(st, 0) == topic_id &&
                    (size_t)sqlite3_column_bytes(st, 2) == len &&
                    memcmp(sqlite3_column_blob(st, 2), id, len) == 0;
            if (found)
                *seq = (uint64_t)sqlite3_column_int64(st, 1);
        } else if (rc != SQLITE_DONE) {
            set_err(s, "dedupe lookup");
            sqlite3_reset(st);
            return -rc;
        }
        sqlite3_reset(st);
        if (found)
            return 1;
    }
    return 0;
}

/* ---- publish ---------------------------------------------------------- */

/* Stores one message (or recognises it as a duplicate) and, given res,
 * writes its outcome there. Returns an SQLite code. */
/* The messages row of m as sequence seq of t, with the id it is stored
 * under. Returns an SQLite code. */
static int insert_message(struct store *s, const struct topic *t, uint64_t seq,
                          const struct proto_msg *m, const uint8_t *id, size_t id_len,
                          int64_t now_ms, int *ferr)
{
    sqlite3_stmt *st = s->st[ST_MSG_INSERT];
    sqlite3_bind_int64(st, 1, (int64_t)((uint64_t)t->id << 40 | seq));
    sqlite3_bind_text(st, 2, (const char *)id, (int)id_len, SQLITE_STATIC);
    if (m->key.len)
        sqlite3_bind_blob(st, 3, m->key.ptr, (int)m->key.len, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 3);
    if (m->header_count) {
        s->scratch.len = 0;
        uint8_t cnt[2];
        proto_wr16(cnt, m->header_count);
        if (buf_append(&s->scratch, cnt, 2) < 0 ||
            buf_append(&s->scratch, m->headers.ptr, m->headers.len) < 0) {
            sqlite3_reset(st);
            *ferr = FERRY_EINTERNAL;
            return SQLITE_NOMEM;
        }
        sqlite3_bind_blob(st, 4, s->scratch.data, (int)s->scratch.len, SQLITE_STATIC);
    } else {
        sqlite3_bind_null(st, 4);
    }
    sqlite3_bind_blob(st, 5, m->payload.len ? (const void *)m->payload.ptr : (const void *)"",
                      (int)m->payload.len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, now_ms);
    sqlite3_bind_int64(st, 7, (int64_t)m->deliver_at_ms);
    int rc = step_done(st);
    if (rc != SQLITE_OK)
        set_err(s, "insert message");
    return rc;
}

/* Remembers a producer-given id (hash h) of t's sequence seq: its
 * dedupe_log row and the in-memory index. Returns an SQLite code. */
static int remember_id(struct store *s, const struct topic *t, uint64_t seq,
                       const struct proto_slice *id, uint64_t h, int64_t now_ms, int *ferr)
{
    sqlite3_stmt *st = s->st[ST_DLOG_INSERT];
    sqlite3_bind_int64(st, 1, t->id);
    sqlite3_bind_int64(st, 2, (int64_t)seq);
    sqlite3_bind_text(st, 3, (const char *)id->ptr, (int)id->len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, now_ms);
    int rc = step_done(st);
    if (rc != SQLITE_OK) {
        set_err(s, "insert dedupe record");
        return rc;
    }
    uint64_t log_id = (uint64_t)sqlite3_last_insert_rowid(s->db);
    if (s->dd_oldest_ms == INT64_MAX)
        s->dd_oldest_ms = now_ms;
    if (dedupe_add(&s->dd, h, log_id) < 0 ||
        dd_note(&s->dd_added, &s->n_added, &s->cap_added, h, log_id) < 0) {
        *ferr = FERRY_EINTERNAL;
        return SQLITE_NOMEM;
    }
    return SQLITE_OK;
}

int publish_one(struct store *s, const struct proto_msg *m, int64_t now_ms, int *ferr,
                struct publish_result *res, struct producer *pr)
{
    struct topic *t = topic_get(s, m->topic.ptr, m->topic.len, now_ms, ferr);
    if (!t)
        return SQLITE_ERROR;
    uint64_t seq = 0;
    int rc;

    uint64_t h = 0;
    /* At or below its producer's high-water mark: stored before, however
     * long ago. The original sequence is known while the id is remembered
     * (else 0). */
    int below_hwm = pr && m->producer_seq && m->producer_seq <= pr->hwm;
    if (m->id.len || below_hwm) {
        int found = 0;
        if (m->id.len) {
            h = dedupe_hash(&s->dd, t->id, m->id.ptr, m->id.len);
            found = dedupe_lookup(s, h, t->id, m->id.ptr, m->id.len, &seq);
            if (found < 0)
                return -found;
        }
        if (found || below_hwm) {
            s->stats.duplicates++;
            if (res) {
                res->seq = seq;
                res->duplicate = 1;
            }
            return SQLITE_OK;
        }
    }

    if (t->c.head >= (uint64_t)SEQ_MAX) {
        snprintf(s->errmsg, sizeof(s->errmsg), "topic %s: sequence space exhausted", t->name);
        *ferr = FERRY_ESTORAGE;
        return SQLITE_ERROR;
    }
    seq = t->c.head + 1;
    char gen_id[OP_GEN_ID_BYTES + 1];
    const uint8_t *id = m->id.ptr;
    size_t id_len = m->id.len;
    if (!id_len) {
        make_id(s, now_ms, gen_id);
        id = (const uint8_t *)gen_id;
        id_len = OP_GEN_ID_BYTES;
    }

    if ((rc = insert_message(s, t, seq, m, id, id_len, now_ms, ferr)) != SQLITE_OK)
        return rc;
    if (m->id.len && (rc = remember_id(s, t, seq, &m->id, h, now_ms, ferr)) != SQLITE_OK)
        return rc;
    if (pr && m->producer_seq > pr->hwm) {
        producer_touch(s, pr);
        pr->hwm = m->producer_seq;
    }
    t->c.head = seq;
    if (!t->c.first)
        t->c.first = seq;
    t->c.count++;
    t->c.bytes += proto_msg_size(m);
    t->bytes_in_txn += proto_msg_size(m);
    topic_count_rate(t, now_ms);
    s->stats.messages_stored++;

    if (res) {
        res->seq = seq;
        res->duplicate = 0;
        res->generated = !m->id.len;
        if (res->generated)
            memcpy(res->id, gen_id, OP_GEN_ID_BYTES);
    }
    return SQLITE_OK;
}

struct producer *producer_get(struct store *s, const uint8_t *id, size_t len)
{
    for (struct producer *p = s->producers; p; p = p->next)
        if (p->id_len == len && memcmp(p->id, id, len) == 0)
            return p;
    struct producer *p = calloc(1, sizeof(*p));
    if (!p || !(p->id = malloc(len + 1))) {
        free(p);
        return NULL;
    }
    memcpy(p->id, id, len);
    p->id[len] = 0;
    p->id_len = len;
    p->next = s->producers;
    s->producers = p;
    return p;
}

void producer_touch(struct store *s, struct producer *p)
{
    if (p->in_txn)
        return;
    p->in_txn = 1;
    p->saved_hwm = p->hwm;
    p->next_dirty = s->dirty_producers;
    s->dirty_producers = p;
}

/* Inside the transaction: the touched producers' marks. */
int producers_flush(struct store *s, int64_t now_ms)
{
    sqlite3_stmt *st = s->st[ST_PRODUCER_SET];
    for (struct producer *p = s->dirty_producers; p; p = p->next_dirty) {
        sqlite3_bind_text(st, 1, p->id, (int)p->id_len, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, (int64_t)p->hwm);
        sqlite3_bind_int64(st, 3, now_ms);
        int rc = step_done(st);
        if (rc != SQLITE_OK) {
            set_err(s, "producer mark");
            return rc;
        }
    }
    return SQLITE_OK;
}

void producers_settle(struct store *s, int ok)
{
    struct producer *p = s->dirty_producers;
    while (p) {
        struct producer *next = p->next_dirty;
        if (!ok)
            p->hwm = p->saved_hwm;
        p->in_txn = 0;
        p->next_dirty = NULL;
        p = next;
    }
    s->dirty_producers = NULL;
}

/* Stores an OP_PUBLISH's messages; their outcomes go to b->results. */
int publish_op(struct store *s, struct batch *b, struct op *op, int64_t now_ms, int *ferr)
{
    struct op_publish *pw = &op->u.publish;
    pw->results = b->results.len;
    struct proto_publish pub;
    batch_publish_of(b, op, &pub);
    struct producer *pr = NULL;
    if (pub.has_producer && !(pr = producer_get(s, pub.producer.ptr, pub.producer.len))) {
        *ferr = FERRY_EINTERNAL;
        return SQLITE_NOMEM;
    }
    struct proto_msg_iter it;
    struct proto_msg m;
    proto_msg_iter_init(&it, &pub);
    for (uint16_t i = 0; i < pw->count && proto_msg_next(&it, &m); i++) {
        struct publish_result *res = vec_push(&b->results, sizeof(*res));
        if (!res) {
            *ferr = FERRY_EINTERNAL;
            return SQLITE_NOMEM;
        }
        int rc = publish_one(s, &m, now_ms, ferr, res, pr);
        if (rc != SQLITE_OK)
            return rc;
    }
    if (b->results.len - pw->results != pw->count) {
        *ferr = FERRY_EINTERNAL;
        return SQLITE_INTERNAL;
    }
    return SQLITE_OK;
}
