/*
 * store_groups.c - consumer-group state in the store: group rows, acks
 * above the floor, attempts, fetching messages for delivery (and
 * redrives), dead letters; loading it all at start; the loop thread's
 * read-only look-ups (store_seq_at_time, store_first_ts, store_read_dead,
 * store_peek).
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
#include "store_dead.h"
#include "store_internal.h"
#include "store_io.h"

/* ---- consumer groups -------------------------------------------------- */

/* Creates the group or moves it (a seek): either way no ack above the
 * floor is kept. Its backoff list is stored as text, "1000,5000". */
int group_save_op(struct store *s, struct batch *b, struct op *op, int64_t now_ms)
{
    const struct op_group_save *sw = &op->u.save;
    const uint8_t *topic = batch_bytes(b, sw->topic), *name = batch_bytes(b, sw->name);
    /* A group creates its topic (PROTOCOL.md §9.1), which TOPICS then
     * lists like any other. */
    int err = 0;
    if (!topic_get(s, topic, sw->topic.len, now_ms, &err))
        return err == FERRY_EINTERNAL ? SQLITE_NOMEM : SQLITE_ERROR;
    sqlite3_stmt *st = s->st[ST_GROUP_UPSERT];
    sqlite3_bind_int64(st, 1, sw->group_id);
    sqlite3_bind_text(st, 2, (const char *)topic, (int)sw->topic.len, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, (const char *)name, (int)sw->name.len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, now_ms);
    sqlite3_bind_int64(st, 5, (int64_t)sw->floor);
    sqlite3_bind_int64(st, 6, sw->ack_wait_ms);
    sqlite3_bind_int64(st, 7, sw->max_deliveries);
    sqlite3_bind_int64(st, 8, (int64_t)sw->origin);
    const uint32_t *ms = batch_u32s(b, sw->backoff_ms);
    char backoff[PROTO_MAX_BACKOFF * 12] = "";
    size_t bl = 0;
    for (uint32_t i = 0; i < sw->backoff_ms.n && i < PROTO_MAX_BACKOFF; i++)
        bl += (size_t)snprintf(backoff + bl, sizeof(backoff) - bl, "%s%u", i ? "," : "", ms[i]);
    if (bl)
        sqlite3_bind_text(st, 9, backoff, (int)bl, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, 9);
    int rc = step_done(st);
    if (rc != SQLITE_OK) {
        set_err(s, "save group");
        return rc;
    }
    st = s->st[ST_GACK_DELETE_ALL];
    sqlite3_bind_int64(st, 1, sw->group_id);
    if ((rc = step_done(st)) == SQLITE_OK) {
        st = s->st[ST_ATTEMPT_DELETE_ALL];
        sqlite3_bind_int64(st, 1, sw->group_id);
        rc = step_done(st);
    }
    if (rc != SQLITE_OK)
        set_err(s, "save group");
    return rc;
}

/* Records the attempts a message has used up (after one failed) and, for
 * a redrive, the dead letter it is read from; with keep 0 forgets them
 * (the message is done). */
int attempt_op(struct store *s, const struct op *op)
{
    const struct op_attempt *aw = &op->u.attempt;
    sqlite3_stmt *st = s->st[aw->keep ? ST_ATTEMPT_SET : ST_ATTEMPT_DELETE];
    sqlite3_bind_int64(st, 1, aw->group_id);
    sqlite3_bind_int64(st, 2, (int64_t)aw->seq);
    if (aw->keep) {
        sqlite3_bind_int64(st, 3, aw->attempts);
        sqlite3_bind_int64(st, 4, (int64_t)aw->dead_seq);
    }
    int rc = step_done(st);
    if (rc != SQLITE_OK)
        set_err(s, "record attempts");
    return rc;
}

/* A group's new floor, and the sequences acked above it. */
int group_ack_op(struct store *s, const struct batch *b, const struct op *op)
{
    const struct op_group_ack *aw = &op->u.ack;
    int64_t gid = aw->group_id;
    int64_t floor = (int64_t)aw->floor;
    const uint64_t *acked = batch_u64s(b, aw->acked);
    uint32_t n = aw->acked.n;
    sqlite3_stmt *st = s->st[ST_GROUP_FLOOR];
    sqlite3_bind_int64(st, 1, gid);
    sqlite3_bind_int64(st, 2, floor);
    int rc = step_done(st);
    if (rc == SQLITE_OK) {
        st = s->st[ST_GACK_DELETE_BELOW];
        sqlite3_bind_int64(st, 1, gid);
        sqlite3_bind_int64(st, 2, floor);
        rc = step_done(st);
    }
    st = s->st[ST_GACK_INSERT];
    for (uint32_t i = 0; rc == SQLITE_OK && i < n; i++) {
        sqlite3_bind_int64(st, 1, gid);
        sqlite3_bind_int64(st, 2, (int64_t)acked[i]);
        rc = step_done(st);
    }
    if (rc != SQLITE_OK)
        set_err(s, "record acks");
    return rc;
}

/* Appends a message read for delivery: its bytes to b->out, its record to
 * b->fetched. Returns 0 or -1 (out of memory). */
static int fetched_add(struct batch *b, const struct proto_deliver *d, uint64_t deliver_at_ms)
{
    if (buf_reserve(&b->out, d->id.len + d->key.len + d->headers.len + d->payload.len) < 0)
        return -1;
    struct fetched_msg *fm = vec_push(&b->fetched, sizeof(*fm));
    if (!fm)
        return -1;
    fm->seq = d->seq;
    fm->ts_ms = d->ts_ms;
    fm->deliver_at_ms = deliver_at_ms;
    fm->header_count = d->header_count;
    const struct proto_slice *from[4] = {&d->id, &d->key, &d->headers, &d->payload};
    struct op_bytes *to[4] = {&fm->id, &fm->key, &fm->headers, &fm->payload};
    for (int i = 0; i < 4; i++) {
        to[i]->off = b->out.len;
        to[i]->len = from[i]->len;
        buf_append(&b->out, from[i]->ptr, from[i]->len); /* reserved above */
    }
    return 0;
}

/* Reads an OP_FETCH's messages, in request order, skipping those no longer
 * stored. A read that fails fails this op alone (op->status; see
 * fetch_all); only running out of memory fails the commit. */
static int fetch_op(struct store *s, struct batch *b, struct op *op, int *ferr)
{
    struct op_fetch *fw = &op->u.fetch;
    uint64_t topic_id = (uint64_t)fw->topic_id;
    const uint64_t *seqs = batch_u64s(b, fw->seqs);
    sqlite3_stmt *st = s->st[ST_FETCH];
    size_t out_mark = b->out.len;
    fw->results = b->fetched.len;
    for (uint32_t i = 0; i < fw->seqs.n; i++) {
        uint64_t seq = seqs[i];
        sqlite3_bind_int64(st, 1, (int64_t)(topic_id << 40 | seq));
        int rc = sqlite3_step(st);
        if (rc == SQLITE_DONE) {
            sqlite3_reset(st);
            continue;
        }
        if (rc != SQLITE_ROW) {
            sqlite3_reset(st);
            set_err(s, "fetch message");
            b->out.len = out_mark;
            b->fetched.len = fw->results;
            op->status = FERRY_ESTORAGE;
            log_error("topic id %llu: %s while fetching seq %llu; the group reads it again later",
                      (unsigned long long)topic_id, s->errmsg, (unsigned long long)seq);
            return SQLITE_OK;
        }
        const uint8_t *hdr = sqlite3_column_blob(st, 2);
        size_t hlen = (size_t)sqlite3_column_bytes(st, 2);
        struct proto_deliver d = {
            .seq = seq,
            .ts_ms = (uint64_t)sqlite3_column_int64(st, 4),
            .id = {sqlite3_column_text(st, 0), (size_t)sqlite3_column_bytes(st, 0)},
            .key = {sqlite3_column_blob(st, 1), (size_t)sqlite3_column_bytes(st, 1)},
            .header_count = hdr && hlen >= 2 ? proto_rd16(hdr) : 0,
            .headers = {hdr && hlen >= 2 ? hdr + 2 : NULL, hdr && hlen >= 2 ? hlen - 2 : 0},
            .payload = {sqlite3_column_blob(st, 3), (size_t)sqlite3_column_bytes(st, 3)},
        };
        int bad = fetched_add(b, &d, (uint64_t)sqlite3_column_int64(st, 5)) < 0;
        sqlite3_reset(st);
        if (bad) {
            *ferr = FERRY_EINTERNAL;
            return SQLITE_NOMEM;
        }
    }
    fw->nresults = b->fetched.len - fw->results;
    return SQLITE_OK;
}

static int fetch_redrive(struct store *s, struct batch *b, struct op *op, int *ferr);

/*
 * Every OP_FETCH of the batch, in one read transaction of its own before
 * the write transaction. Fetches read committed messages only, so they need
 * nothing of the batch's writes; kept apart, a read that fails (a bad
 * sector: SQLite rolls back the whole transaction on any I/O error) costs
 * the fetches and not the publishes and acks of other connections.
 */
void fetch_all(struct store *s, struct batch *b)
{
    size_t i = 0;
    while (i < b->nops && b->ops[i].kind != OP_FETCH)
        i++;
    if (i == b->nops)
        return;
    int in_read = step_done(s->st[ST_BEGIN_READ]) == SQLITE_OK;
    int ferr = 0;
    for (; i < b->nops; i++) {
        struct op *op = &b->ops[i];
        if (op->kind != OP_FETCH || op->status)
            continue;
        if ((op->u.fetch.dead_seqs.n ? fetch_redrive(s, b, op, &ferr)
                                     : fetch_op(s, b, op, &ferr)) != SQLITE_OK)
            op->status = ferr ? ferr : FERRY_EINTERNAL;
    }
    if (in_read && !sqlite3_get_autocommit(s->db) && step_done(s->st[ST_COMMIT]) != SQLITE_OK)
        step_done(s->st[ST_ROLLBACK]);
}

/* Appends one header pair (str16 name, str16 value) to the scratch buffer. */
static int put_header(struct buf *h, const char *name, const void *value, size_t len)
{
    uint8_t l[2];
    size_t nl = strlen(name);
    proto_wr16(l, (uint16_t)nl);
    if (buf_append(h, l, 2) < 0 || buf_append(h, name, nl) < 0)
        return -1;
    proto_wr16(l, (uint16_t)len);
    return buf_append(h, l, 2) < 0 || buf_append(h, value, len) < 0 ? -1 : 0;
}

int store_read_dead(struct store *s, int64_t dead_topic_id, uint64_t dead_seq, uint64_t *seq,
                    char *group_out, size_t group_cap, size_t *group_len)
{
    sqlite3_stmt *st;
    if (!s->rdb || sqlite3_prepare_v2(s->rdb, "SELECT headers FROM messages WHERE rid = ?1", -1,
                                      &st, NULL) != SQLITE_OK)
        return FERRY_ESTORAGE;
    sqlite3_bind_int64(st, 1, (int64_t)((uint64_t)dead_topic_id << 40 | dead_seq));
    int rc = sqlite3_step(st);
    int ret = FERRY_EINVALID;
    if (rc == SQLITE_ROW) {
        struct dead_info di;
        dead_info_of(sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0), &di);
        *seq = slice_u64(di.seq);
        if (*seq && di.group_name.len && di.group_name.len <= group_cap && di.id.len) {
            memcpy(group_out, di.group_name.ptr, di.group_name.len);
            *group_len = di.group_name.len;
            ret = 0;
        }
    } else if (rc != SQLITE_DONE) {
        ret = FERRY_ESTORAGE;
    }
    sqlite3_finalize(st);
    return ret;
}

int store_read_floor(struct store *s, int64_t group_id, int64_t dead_topic_id, uint64_t *floor,
                     uint64_t *keep, uint16_t cap, uint16_t *n)
{
    sqlite3_stmt *st;
    *n = 0;
    if (!s->rdb || sqlite3_prepare_v2(s->rdb, "SELECT ack_floor FROM groups WHERE id = ?1", -1, &st,
                                      NULL) != SQLITE_OK)
        return FERRY_ESTORAGE;
    /* One read transaction: the floor and the dead letters below it agree. */
    sqlite3_exec(s->rdb, "BEGIN", NULL, NULL, NULL);
    sqlite3_bind_int64(st, 1, group_id);
    int rc = sqlite3_step(st);
    int ret = 0;
    if (rc == SQLITE_ROW)
        *floor = (uint64_t)sqlite3_column_int64(st, 0);
    else if (rc == SQLITE_DONE)
        *floor = 1; /* not stored yet: nothing is done durably */
    else
        ret = FERRY_ESTORAGE;
    sqlite3_finalize(st);
    /* A redrive not yet acked counts too, even if its dead letter went
     * meanwhile: it may be delivered still. */
    if (ret == 0 && dead_topic_id && *floor > 1 &&
        sqlite3_prepare_v2(s->rdb,
                           "SELECT d.seq FROM group_dead d WHERE d.group_id = ?1 AND d.seq < ?2 "
                           "AND EXISTS (SELECT 1 FROM messages m WHERE m.rid = (?3 << 40) | "
                           "d.dead_seq) UNION SELECT a.seq FROM group_attempts a WHERE "
                           "a.group_id = ?1 AND a.seq < ?2 AND a.dead_seq != 0 ORDER BY 1 LIMIT ?4",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, group_id);
        sqlite3_bind_int64(st, 2, (int64_t)*floor);
        sqlite3_bind_int64(st, 3, dead_topic_id);
        sqlite3_bind_int64(st, 4, (int64_t)cap + 1);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            uint64_t seq = (uint64_t)sqlite3_column_int64(st, 0);
            if (*n == cap) {
                *floor = seq; /* more than fit: the floor stops at the first left out */
                break;
            }
            keep[(*n)++] = seq;
        }
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            ret = FERRY_ESTORAGE;
        sqlite3_finalize(st);
    } else if (ret == 0 && dead_topic_id && *floor > 1) {
        ret = FERRY_ESTORAGE;
    }
    sqlite3_exec(s->rdb, "COMMIT", NULL, NULL, NULL);
    return ret;
}

/*
 * A redrive's fetch (dead_seqs given): its topic is the dead-letter topic,
 * seqs the original sequences. Each dead letter still stored whose
 * ferry-dead-seq is the original sequence becomes a DELIVER of the
 * original message: its sequence, its id (ferry-dead-id), key, payload,
 * its headers without the ferry-dead-* ones, plus
 * `ferry-redriven: _dead.<topic>/<dead seq>`; ts_ms is the dead letter's.
 */
static int fetch_redrive(struct store *s, struct batch *b, struct op *op, int *ferr)
{
    struct op_fetch *fw = &op->u.fetch;
    uint64_t topic_id = (uint64_t)fw->topic_id;
    const uint64_t *seqs = batch_u64s(b, fw->seqs), *dead_seqs = batch_u64s(b, fw->dead_seqs);
    uint32_t n = fw->seqs.n;
    sqlite3_stmt *st = s->st[ST_FETCH];
    struct topic *dt = NULL;
    for (struct topic *t = namemap_first(&s->topics); t && !dt; t = namemap_next(&s->topics, t))
        if (t->id == (int64_t)topic_id)
            dt = t;
    fw->results = b->fetched.len;
    for (uint32_t i = 0; i < n && dt; i++) {
        uint64_t seq = seqs[i];
        uint64_t dseq = dead_seqs[i];
        sqlite3_bind_int64(st, 1, (int64_t)(topic_id << 40 | dseq));
        if (sqlite3_step(st) != SQLITE_ROW) {
            sqlite3_reset(st);
            continue;
        }
        const uint8_t *hdr = sqlite3_column_blob(st, 2);
        size_t hlen = (size_t)sqlite3_column_bytes(st, 2);
        struct dead_info di;
        dead_info_of(hdr, hlen, &di);
        if (slice_u64(di.seq) != seq || !di.id.len) {
            sqlite3_reset(st);
            continue;
        }
        struct buf h = {0};
        uint16_t count = 0;
        int bad = 0;
        if (hdr && hlen >= 2) {
            struct proto_msg om = {.header_count = proto_rd16(hdr), .headers = {hdr + 2, hlen - 2}};
            struct proto_header_iter hi;
            struct proto_header hd;
            proto_header_iter_init(&hi, &om);
            while (proto_header_next(&hi, &hd)) {
                if (hd.name.len >= 11 && memcmp(hd.name.ptr, "ferry-dead-", 11) == 0)
                    continue;
                if (hd.name.len == 14 && memcmp(hd.name.ptr, "ferry-redriven", 14) == 0)
                    continue;
                uint8_t l[2];
                proto_wr16(l, (uint16_t)hd.name.len);
                bad |= buf_append(&h, l, 2) < 0 || buf_append(&h, hd.name.ptr, hd.name.len) < 0;
                proto_wr16(l, (uint16_t)hd.value.len);
                bad |= buf_append(&h, l, 2) < 0 || buf_append(&h, hd.value.ptr, hd.value.len) < 0;
                count++;
            }
        }
        char from[PROTO_MAX_TOPIC + 32];
        int fl = snprintf(from, sizeof(from), "%.*s/%llu", (int)dt->name_len, dt->name,
                          (unsigned long long)dseq);
        bad |= put_header(&h, "ferry-redriven", from, (size_t)fl) < 0;
        count++;
        struct proto_deliver d = {
            .seq = seq,
            .ts_ms = (uint64_t)sqlite3_column_int64(st, 4),
            .id = di.id,
            .key = {sqlite3_column_blob(st, 1), (size_t)sqlite3_column_bytes(st, 1)},
            .header_count = count,
            .headers = {h.data, h.len},
            .payload = {sqlite3_column_blob(st, 3), (size_t)sqlite3_column_bytes(st, 3)},
        };
        bad = bad || fetched_add(b, &d, 0) < 0;
        buf_free(&h);
        sqlite3_reset(st);
        if (bad) {
            *ferr = FERRY_EINTERNAL;
            return SQLITE_NOMEM;
        }
    }
    fw->nresults = b->fetched.len - fw->results;
    return SQLITE_OK;
}

/* Appends the original headers of a message (its stored blob oh) to h,
 * keeping room for the 6 of a dead letter. Returns how many it kept, or
 * -1 when out of memory. */
static int copy_headers_for_dead(struct buf *h, const uint8_t *oh, size_t ohl)
{
    uint16_t count = oh && ohl >= 2 ? proto_rd16(oh) : 0;
    int bad = 0;
    if (count > PROTO_MAX_HEADERS - 6) {
        /* Keep room for ours: drop the original's last headers. */
        struct proto_msg om = {.header_count = count, .headers = {oh + 2, ohl - 2}};
        struct proto_header_iter hi;
        struct proto_header hd;
        proto_header_iter_init(&hi, &om);
        for (uint16_t i = 0; i < PROTO_MAX_HEADERS - 6 && proto_header_next(&hi, &hd); i++) {
            uint8_t l[2];
            proto_wr16(l, (uint16_t)hd.name.len);
            bad |= buf_append(h, l, 2) < 0 || buf_append(h, hd.name.ptr, hd.name.len) < 0;
            proto_wr16(l, (uint16_t)hd.value.len);
            bad |= buf_append(h, l, 2) < 0 || buf_append(h, hd.value.ptr, hd.value.len) < 0;
        }
        count = PROTO_MAX_HEADERS - 6;
    } else if (count) {
        bad |= buf_append(h, oh + 2, ohl - 2) < 0;
    }
    return bad ? -1 : count;
}

/* Stores the copy of the message st has read as a dead letter of dw (to
 * "_dead.<topic>", with the ferry-dead-* headers), and resets st. Returns
 * an SQLite code. */
static int store_dead_copy(struct store *s, const struct batch *b, const struct op_dead_letter *dw,
                           sqlite3_stmt *st, int64_t now_ms, int *ferr, uint64_t *dead_seq)
{
    size_t tl = dw->topic.len;
    const uint8_t *tname = batch_bytes(b, dw->topic);
    /* Copy what the new message needs before the statement is reset. */
    struct buf h = {0}, key = {0}, payload = {0};
    char dname[PROTO_MAX_TOPIC + 1];
    char num[24];
    memcpy(dname, "_dead.", 6);
    memcpy(dname + 6, tname, tl);
    int count =
        copy_headers_for_dead(&h, sqlite3_column_blob(st, 2), (size_t)sqlite3_column_bytes(st, 2));
    int bad = count < 0;
    bad |= put_header(&h, "ferry-dead-topic", tname, tl) < 0;
    snprintf(num, sizeof(num), "%llu", (unsigned long long)dw->seq);
    bad |= put_header(&h, "ferry-dead-seq", num, strlen(num)) < 0;
    bad |=
        put_header(&h, "ferry-dead-group", batch_bytes(b, dw->group_name), dw->group_name.len) < 0;
    snprintf(num, sizeof(num), "%u", dw->attempts);
    bad |= put_header(&h, "ferry-dead-attempts", num, strlen(num)) < 0;
    bad |= put_header(&h, "ferry-dead-reason", batch_bytes(b, dw->reason), dw->reason.len) < 0;
    bad |= put_header(&h, "ferry-dead-id", sqlite3_column_text(st, 0),
                      (size_t)sqlite3_column_bytes(st, 0)) < 0;
    bad |= buf_append(&key, sqlite3_column_blob(st, 1), (size_t)sqlite3_column_bytes(st, 1)) < 0;
    bad |=
        buf_append(&payload, sqlite3_column_blob(st, 3), (size_t)sqlite3_column_bytes(st, 3)) < 0;
    sqlite3_reset(st);
    int rc;
    if (!bad) {
        struct proto_msg m = {
            .topic = {(const uint8_t *)dname, tl + 6},
            .key = {key.data, key.len},
            .header_count = (uint16_t)(count + 6),
            .headers = {h.data, h.len},
            .payload = {payload.data, payload.len},
        };
        struct publish_result res = {0};
        rc = publish_one(s, &m, now_ms, ferr, &res, NULL);
        *dead_seq = rc == SQLITE_OK ? res.seq : 0;
    } else {
        *ferr = FERRY_EINTERNAL;
        rc = SQLITE_NOMEM;
    }
    buf_free(&h);
    buf_free(&key);
    buf_free(&payload);
    return rc;
}

/*
 * Copies the message to the topic "_dead.<topic>" with headers naming
 * where it came from, and records it as acked for the group (like
 * OP_GROUP_ACK with one seq).
 */
int dead_letter_op(struct store *s, struct batch *b, struct op *op, int64_t now_ms, int *ferr)
{
    const struct op_dead_letter *dw = &op->u.dead;
    uint64_t topic_id = (uint64_t)dw->topic_id, seq = dw->seq;
    sqlite3_stmt *st = s->st[ST_FETCH];
    sqlite3_bind_int64(st, 1, (int64_t)(topic_id << 40 | seq));
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && dw->topic.len + 6 <= PROTO_MAX_TOPIC) {
        uint64_t dead_seq = 0;
        if ((rc = store_dead_copy(s, b, dw, st, now_ms, ferr, &dead_seq)) != SQLITE_OK)
            return rc;
        if (dead_seq) {
            /* Where a redrive can bring it back from (FLOOR_OK). */
            sqlite3_stmt *gd = s->st[ST_GDEAD_INSERT];
            sqlite3_bind_int64(gd, 1, dw->group_id);
            sqlite3_bind_int64(gd, 2, (int64_t)seq);
            sqlite3_bind_int64(gd, 3, (int64_t)dead_seq);
            if ((rc = step_done(gd)) != SQLITE_OK) {
                set_err(s, "dead-letter");
                return rc;
            }
        }
    } else {
        sqlite3_reset(st);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
            set_err(s, "dead-letter");
            return rc;
        }
    }
    /* The group's ack of it. */
    int64_t gid = dw->group_id, floor = (int64_t)dw->floor;
    st = s->st[ST_GROUP_FLOOR];
    sqlite3_bind_int64(st, 1, gid);
    sqlite3_bind_int64(st, 2, floor);
    rc = step_done(st);
    if (rc == SQLITE_OK) {
        /* The acks above the old floor that the new one passed. */
        st = s->st[ST_GACK_DELETE_BELOW];
        sqlite3_bind_int64(st, 1, gid);
        sqlite3_bind_int64(st, 2, floor);
        rc = step_done(st);
    }
    if (rc == SQLITE_OK) {
        st = s->st[ST_ATTEMPT_DELETE];
        sqlite3_bind_int64(st, 1, gid);
        sqlite3_bind_int64(st, 2, (int64_t)seq);
        rc = step_done(st);
    }
    if (rc == SQLITE_OK && (int64_t)seq >= floor) {
        st = s->st[ST_GACK_INSERT];
        sqlite3_bind_int64(st, 1, gid);
        sqlite3_bind_int64(st, 2, (int64_t)seq);
        rc = step_done(st);
    }
    if (rc != SQLITE_OK)
        set_err(s, "dead-letter");
    return rc;
}

int store_load_groups(struct store *s, const struct store_load_cbs *cb)
{
    sqlite3_stmt *st;
    int rc;
    /* The in-memory counters, not the rows: a row may lag behind the
     * messages after a crash (recover_topic brought the counters up). */
    for (struct topic *t = namemap_first(&s->topics); t; t = namemap_next(&s->topics, t)) {
        struct topic_view v;
        topic_view_of(s, t, &v);
        if (cb->topic(cb->arg, t->id, t->name, t->name_len, &v) < 0)
            return FERRY_ENOMEM;
    }
    rc = sqlite3_prepare_v2(
        s->db,
        "SELECT id, topic, name, ack_floor, ack_wait_ms, max_deliveries, origin, backoff "
        "FROM groups",
        -1, &st, NULL);
    if (rc != SQLITE_OK)
        return FERRY_ESTORAGE;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        /* The backoff column: "1000,5000,30000". */
        uint32_t backoff[PROTO_MAX_BACKOFF];
        uint8_t nb = 0;
        for (const char *p = (const char *)sqlite3_column_text(st, 7);
             p && *p && nb < PROTO_MAX_BACKOFF;) {
            char *end;
            unsigned long v = strtoul(p, &end, 10);
            if (end == p)
                break;
            backoff[nb++] = (uint32_t)v;
            p = *end == ',' ? end + 1 : end;
        }
        if (cb->group_row(
                cb->arg, sqlite3_column_int64(st, 0), (const char *)sqlite3_column_text(st, 1),
                (size_t)sqlite3_column_bytes(st, 1), (const char *)sqlite3_column_text(st, 2),
                (size_t)sqlite3_column_bytes(st, 2), (uint64_t)sqlite3_column_int64(st, 3),
                (uint32_t)sqlite3_column_int64(st, 4), (uint16_t)sqlite3_column_int64(st, 5),
                (uint64_t)sqlite3_column_int64(st, 6), backoff, nb) < 0)
            break;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return FERRY_ESTORAGE;
    rc = sqlite3_prepare_v2(s->db, "SELECT group_id, seq FROM group_acks", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return FERRY_ESTORAGE;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        if (cb->ack(cb->arg, sqlite3_column_int64(st, 0), (uint64_t)sqlite3_column_int64(st, 1)) <
            0)
            break;
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return FERRY_ESTORAGE;
    /* Rows left below a floor (the group moved on in a commit that did not
     * reach them) are dropped; the rest, in sequence order per group. */
    if (sqlite3_exec(s->db,
                     "DELETE FROM group_attempts WHERE NOT EXISTS (SELECT 1 FROM groups g "
                     "WHERE g.id = group_id AND (g.ack_floor <= seq OR dead_seq != 0))",
                     NULL, NULL, NULL) != SQLITE_OK)
        return FERRY_ESTORAGE;
    rc = sqlite3_prepare_v2(s->db,
                            "SELECT group_id, seq, attempts, dead_seq FROM group_attempts "
                            "ORDER BY group_id, seq",
                            -1, &st, NULL);
    if (rc != SQLITE_OK)
        return FERRY_ESTORAGE;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        if (cb->attempts(
                cb->arg, sqlite3_column_int64(st, 0), (uint64_t)sqlite3_column_int64(st, 1),
                (uint32_t)sqlite3_column_int64(st, 2), (uint64_t)sqlite3_column_int64(st, 3)) < 0)
            break;
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : FERRY_ESTORAGE;
}

/* On the loop thread, with the store's read-only connection: the first
 * sequence at or after time_ms (binary search over the topic's rowid
 * range; stored timestamps only go up within a topic unless the clock was
 * set back). Returns head + 1 when every message is older. */
uint64_t store_seq_at_time(struct store *s, int64_t topic_id, int64_t time_ms, uint64_t head)
{
    if (!s->rdb || !s->rd_ts)
        return 1;
    uint64_t lo = 1, hi = head + 1;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        sqlite3_bind_int64(s->rd_ts, 1, (int64_t)((uint64_t)topic_id << 40 | mid));
        sqlite3_bind_int64(s->rd_ts, 2, (int64_t)((uint64_t)topic_id << 40 | head));
        int64_t ts = INT64_MAX, rid = 0;
        if (sqlite3_step(s->rd_ts) == SQLITE_ROW) {
            rid = sqlite3_column_int64(s->rd_ts, 0);
            ts = sqlite3_column_int64(s->rd_ts, 1);
        }
        sqlite3_reset(s->rd_ts);
        if (!rid) {
            hi = mid; /* nothing stored from mid on */
            continue;
        }
        if (ts >= time_ms)
            hi = mid;
        else
            lo = ((uint64_t)rid & SEQ_MAX) + 1;
    }
    return lo;
}

int64_t store_first_ts(struct store *s, int64_t topic_id, uint64_t from, uint64_t head)
{
    if (!s->rdb || !s->rd_ts || from > head || from == 0)
        return -1;
    sqlite3_bind_int64(s->rd_ts, 1, (int64_t)((uint64_t)topic_id << 40 | from));
    sqlite3_bind_int64(s->rd_ts, 2, (int64_t)((uint64_t)topic_id << 40 | head));
    int64_t ts = -1;
    if (sqlite3_step(s->rd_ts) == SQLITE_ROW)
        ts = sqlite3_column_int64(s->rd_ts, 1);
    sqlite3_reset(s->rd_ts);
    return ts;
}

int store_peek(struct store *s, int64_t topic_id, uint64_t from, uint64_t head, uint32_t max,
               int (*cb)(void *arg, const struct proto_deliver *d), void *arg)
{
    sqlite3_stmt *st;
    if (from == 0)
        from = 1;
    if (from > head || max == 0)
        return 0;
    if (!s->rdb ||
        sqlite3_prepare_v2(s->rdb,
                           "SELECT rid, msg_id, key, headers, payload, ts_ms FROM "
                           "messages WHERE rid >= ?1 AND rid <= ?2 ORDER BY rid LIMIT ?3",
                           -1, &st, NULL) != SQLITE_OK)
        return FERRY_ESTORAGE;
    sqlite3_bind_int64(st, 1, (int64_t)((uint64_t)topic_id << 40 | from));
    sqlite3_bind_int64(st, 2, (int64_t)((uint64_t)topic_id << 40 | head));
    sqlite3_bind_int64(st, 3, (int64_t)max);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const uint8_t *hdr = sqlite3_column_blob(st, 3);
        size_t hlen = (size_t)sqlite3_column_bytes(st, 3);
        struct proto_deliver d = {
            .seq = (uint64_t)sqlite3_column_int64(st, 0) & SEQ_MAX,
            .ts_ms = (uint64_t)sqlite3_column_int64(st, 5),
            .id = {sqlite3_column_text(st, 1), (size_t)sqlite3_column_bytes(st, 1)},
            .key = {sqlite3_column_blob(st, 2), (size_t)sqlite3_column_bytes(st, 2)},
            .header_count = hdr && hlen >= 2 ? proto_rd16(hdr) : 0,
            .headers = {hdr && hlen >= 2 ? hdr + 2 : NULL, hdr && hlen >= 2 ? hlen - 2 : 0},
            .payload = {sqlite3_column_blob(st, 4), (size_t)sqlite3_column_bytes(st, 4)},
        };
        if (cb(arg, &d) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : FERRY_ESTORAGE;
}

/* ---- deleting ------------------------------------------------------------ */

/* Runs sql (a DELETE) with ?1 and ?2 bound to the texts a and b (b may
 * be empty) or ?1 to id; adds the rows it changed to *changed. */
static int delete_rows(struct store *s, const char *sql, const uint8_t *a, size_t alen,
                       const uint8_t *b, size_t blen, int64_t id, uint64_t *changed)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    if (a) {
        sqlite3_bind_text(st, 1, (const char *)a, (int)alen, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, (const char *)b, (int)blen, SQLITE_STATIC);
    } else {
        sqlite3_bind_int64(st, 1, id);
    }
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        rc = SQLITE_OK;
        if (changed)
            *changed += (uint64_t)sqlite3_changes(s->db);
    }
    sqlite3_finalize(st);
    return rc;
}

/*
 * DELETE: a topic with its dead-letter topic and the groups of both, or one
 * group. The rows of the groups go now (a group's acks and attempts are few:
 * those above its floor); the topics' messages are purged in steps after the
 * commit (purge_step). Sets *op_err (with errmsg) when the op fails on its
 * own (nothing to delete) without failing the transaction; encodes the
 * DELETE_OK otherwise. Returns an SQLite code.
 */
int delete_op(struct store *s, struct batch *b, struct op *op, int64_t now_ms, int *op_err)
{
    const struct op_delete *d = &op->u.del;
    const uint8_t *topic = batch_bytes(b, d->topic);
    const uint8_t *dead = d->dead.len ? batch_bytes(b, d->dead) : (const uint8_t *)"";
    uint64_t groups = 0, messages = 0;
    int rc;
    if (d->group.len) {
        static const char *const by_id[] = {
            "DELETE FROM group_acks WHERE group_id = ?1",
            "DELETE FROM group_attempts WHERE group_id = ?1",
            "DELETE FROM group_dead WHERE group_id = ?1",
        };
        for (size_t i = 0; i < sizeof(by_id) / sizeof(by_id[0]); i++)
            if ((rc = delete_rows(s, by_id[i], NULL, 0, NULL, 0, d->group_id, NULL)) != SQLITE_OK)
                goto fail;
        rc = delete_rows(s, "DELETE FROM groups WHERE id = ?1", NULL, 0, NULL, 0, d->group_id,
                         &groups);
        if (rc != SQLITE_OK)
            goto fail;
    } else {
        static const char *const of_topics[] = {
            "DELETE FROM group_acks WHERE group_id IN (SELECT id FROM groups WHERE topic IN (?1, "
            "?2))",
            "DELETE FROM group_attempts WHERE group_id IN (SELECT id FROM groups WHERE topic IN "
            "(?1, ?2))",
            "DELETE FROM group_dead WHERE group_id IN (SELECT id FROM groups WHERE topic IN (?1, "
            "?2))",
        };
        for (size_t i = 0; i < sizeof(of_topics) / sizeof(of_topics[0]); i++)
            if ((rc = delete_rows(s, of_topics[i], topic, d->topic.len, dead, d->dead.len, 0,
                                  NULL)) != SQLITE_OK)
                goto fail;
        rc = delete_rows(s, "DELETE FROM groups WHERE topic IN (?1, ?2)", topic, d->topic.len, dead,
                         d->dead.len, 0, &groups);
        if (rc != SQLITE_OK)
            goto fail;
        /* A dead-letter topic deleted on its own: its groups' records of
         * what they dead-lettered point into it, and go. */
        if (d->topic.len > 6 && memcmp(topic, "_dead.", 6) == 0) {
            rc = delete_rows(s,
                             "DELETE FROM group_dead WHERE group_id IN (SELECT id FROM groups "
                             "WHERE topic IN (?1, ?2))",
                             topic + 6, d->topic.len - 6, (const uint8_t *)"", 0, 0, NULL);
            if (rc != SQLITE_OK)
                goto fail;
        }
        struct topic *t = topic_find(s, topic, d->topic.len);
        struct topic *dt = d->dead.len ? topic_find(s, dead, d->dead.len) : NULL;
        if (!t && !groups) {
            snprintf(s->errmsg, sizeof(s->errmsg), "no such topic: %.*s", (int)d->topic.len,
                     (const char *)topic);
            *op_err = FERRY_EUNKNOWN_TOPIC;
            return SQLITE_OK;
        }
        if (t) {
            messages += t->c.count;
            if ((rc = topic_delete(s, t, now_ms)) != SQLITE_OK)
                return rc;
        }
        if (dt) {
            messages += dt->c.count;
            if ((rc = topic_delete(s, dt, now_ms)) != SQLITE_OK)
                return rc;
        }
    }
    struct proto_delete_ok ok = {messages, (uint32_t)groups};
    if (buf_reserve(&b->out, PROTO_HEADER_BYTES + 12) < 0) {
        snprintf(s->errmsg, sizeof(s->errmsg), "out of memory");
        return SQLITE_NOMEM;
    }
    struct proto_writer w;
    proto_writer_init(&w, b->out.data + b->out.len, b->out.cap - b->out.len);
    proto_encode_delete_ok(&w, op->request_id, &ok);
    op->out_off = b->out.len;
    op->out_len = w.len;
    b->out.len += w.len;
    return SQLITE_OK;
fail:
    set_err(s, "delete");
    return rc;
}
