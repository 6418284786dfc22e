/*
 * store_txn.c - the transaction over a batch (store_commit): every op of
 * it in one SQLite transaction, the second try that lets acks through on a
 * full disk, and the ERROR replies when it fails. The top of the store: it
 * calls into every other file of it.
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

/* ---- the transaction -------------------------------------------------- */

/* Rows of deleted topics freed per commit: beside a batch's work, and in a
 * commit of nothing else. */
#define PURGE_STEP_BUSY 1000
#define PURGE_STEP_IDLE 10000

static void reply_error(struct batch *b, struct op *op, int code, const char *msg)
{
    /* Cut to what the op's connection was charged for it (batch.h). */
    size_t mlen = strlen(msg);
    if (mlen > OP_ERROR_TEXT_MAX)
        mlen = OP_ERROR_TEXT_MAX;
    op->status = code;
    if (buf_reserve(&b->out, PROTO_HEADER_BYTES + 4 + mlen) < 0) {
        op->out_len = 0; /* the connection layer treats this as fatal */
        return;
    }
    struct proto_writer w;
    proto_writer_init(&w, b->out.data + b->out.len, b->out.cap - b->out.len);
    proto_encode_error(&w, op->request_id, 0, (uint16_t)-code, msg, mlen);
    op->out_off = b->out.len;
    op->out_len = w.len;
    b->out.len += w.len;
}

/* One transaction over the batch. With only_small, publishes and dead
 * letters are left out (and so are purging and retention): the second try
 * after the disk filled up, so that acks and group changes, which need
 * little space, still get through. Returns an SQLite code; on failure
 * everything of the transaction was rolled back and undone in memory. */
static int run_txn(struct store *s, struct batch *b, int64_t now_ms, int only_small, int *ferr)
{
    b->results.len = 0;
    s->stored_before = s->stats.messages_stored;
    s->dd_oldest_before = s->dd_oldest_ms;
    s->dups_before = s->stats.duplicates;
    int rc = step_done(s->st[ST_BEGIN]);
    if (rc != SQLITE_OK)
        set_err(s, "begin");

    for (size_t i = 0; rc == SQLITE_OK && i < b->nops; i++) {
        struct op *op = &b->ops[i];
        if (op->kind == OP_PUBLISH) {
            if (!only_small)
                rc = publish_op(s, b, op, now_ms, ferr);
        } else if (op->kind == OP_GROUP_SAVE) {
            rc = group_save_op(s, b, op, now_ms);
        } else if (op->kind == OP_GROUP_ACK) {
            rc = group_ack_op(s, b, op);
        } else if (op->kind == OP_ATTEMPT) {
            rc = attempt_op(s, op);
        } else if (op->kind == OP_TOPIC_CONFIG) {
            rc = topic_config_op(s, b, op, now_ms, ferr);
        } else if (op->kind == OP_DEAD_LETTER) {
            if (!only_small)
                rc = dead_letter_op(s, b, op, now_ms, ferr);
        } else if (op->kind == OP_DELETE) {
            int e = 0;
            rc = delete_op(s, b, op, now_ms, &e);
            if (rc == SQLITE_OK && e)
                reply_error(b, op, e, s->errmsg);
        } else if (op->kind == OP_TOPICS) {
            int e = topics_op(s, b, op, now_ms);
            if (e)
                reply_error(b, op, e, "cannot list topics");
        }
    }
    if (rc == SQLITE_OK && !only_small)
        rc = dedupe_purge(s, now_ms, b->messages);
    if (rc == SQLITE_OK && !only_small)
        rc = retention_step(s, b, now_ms);
    /* Deleted topics' rows, in steps: small ones beside other work, larger
     * ones in a commit of nothing else (the loop asks for those while
     * anything is left to purge). */
    if (rc == SQLITE_OK && !only_small && s->npurge)
        rc = purge_step(s, now_ms,
                        s->purge_step_test ? s->purge_step_test
                        : b->nops          ? PURGE_STEP_BUSY
                                           : PURGE_STEP_IDLE);
    if (rc == SQLITE_OK)
        rc = producers_flush(s, now_ms);
    if (rc == SQLITE_OK && b->maintenance && !only_small)
        topics_touch_lagging(s);
    if (rc == SQLITE_OK && (rc = topics_flush(s, now_ms, b->maintenance)) == SQLITE_OK) {
        rc = step_done(s->st[ST_COMMIT]);
        if (rc != SQLITE_OK)
            set_err(s, "commit");
    }

    if (rc == SQLITE_OK) {
        topics_settle(s, b, 1);
        dedupe_settle(s, 1);
        producers_settle(s, 1);
        purge_commit(s, 1);
        purge_settle(s, 1);
        maybe_checkpoint(s);
        s->stats.commits++;
        return SQLITE_OK;
    }
    if (!sqlite3_get_autocommit(s->db))
        step_done(s->st[ST_ROLLBACK]);
    topics_settle(s, b, 0);
    dedupe_settle(s, 0);
    producers_settle(s, 0);
    purge_commit(s, 0);
    purge_settle(s, 0);
    s->dd_oldest_ms = s->dd_oldest_before;
    s->stats.failed_commits++;
    s->stats.messages_stored = s->stored_before;
    s->stats.duplicates = s->dups_before;
    return rc;
}

/* Whether a batch holds small writes worth a second try on a full disk. */
static int has_small_writes(const struct batch *b)
{
    for (size_t i = 0; i < b->nops; i++)
        if (b->ops[i].kind == OP_GROUP_ACK || b->ops[i].kind == OP_GROUP_SAVE ||
            b->ops[i].kind == OP_ATTEMPT || b->ops[i].kind == OP_TOPIC_CONFIG ||
            b->ops[i].kind == OP_DELETE)
            return 1;
    return 0;
}

void store_commit(struct store *s, struct batch *b, int64_t now_ms)
{
    uint64_t t0 = clock_mono_us();
    int ferr = 0;
    b->now_ms = now_ms;
    /* While the disk reserve is released, publishes and dead letters are
     * refused without a try: the space left is for acks. */
    int refused = !reserve_restore(&s->rsv, now_ms);
    fetch_all(s, b);
    int rc = refused ? SQLITE_FULL : run_txn(s, b, now_ms, 0, &ferr);
    if (rc == SQLITE_OK) {
        b->commit_status = 0;
        b->commit_us = clock_mono_us() - t0;
        return;
    }
    int code = ferr ? ferr : map_sqlite_error(rc);
    const char *why = s->errmsg;
    if (refused)
        why = "storage full: the disk is full; message not stored (publishing resumes once "
              "space is freed)";
    else if (code == FERRY_ESTORAGE_FULL)
        why = "storage full: message not stored";
    if (code == FERRY_ESTORAGE_FULL && !refused &&
        (!s->cap_pages || reserve_fs_free(&s->rsv) < s->rsv.bytes))
        reserve_release(&s->rsv); /* the filesystem, not the cap, is full */
    if (refused || (code == FERRY_ESTORAGE_FULL && has_small_writes(b))) {
        /* The disk is full: the publishes fail, but acks and group changes
         * take a second transaction of their own, so that consumers keep
         * going while producers wait for space. Under a page cap they may
         * take the database up to the reserve's size beyond it. (Refused
         * publishes take this path too, so that the batch's reads, such
         * as topic listings, are answered.) */
        size_t mark = b->out.len;
        b->topic_updates.len = 0;
        b->topic_names.len = 0;
        /* Copy the WAL back first: the next transaction can then start the
         * WAL over and write into space the file already has. */
        if (!refused)
            checkpoint(s, s->db, SQLITE_CHECKPOINT_PASSIVE, 0, NULL, NULL);
        if (s->cap_pages)
            set_max_pages(s, s->cap_pages + s->rsv.bytes / 4096);
        int ferr2 = 0;
        rc = run_txn(s, b, now_ms, 1, &ferr2);
        if (s->cap_pages)
            set_max_pages(s, s->cap_pages);
        if (rc == SQLITE_OK) {
            for (size_t i = 0; i < b->nops; i++) {
                struct op *op = &b->ops[i];
                if (op->kind == OP_PUBLISH)
                    reply_error(b, op, code, why);
                else if (op->kind == OP_DEAD_LETTER)
                    op->status = code;
            }
            shrink_wal(s);
            b->commit_status = 0;
            b->commit_us = clock_mono_us() - t0;
            return;
        }
        b->out.len = mark;
    }
    b->commit_status = code;
    /* Nothing of this transaction was kept: every write fails. */
    for (size_t i = 0; i < b->nops; i++) {
        struct op *op = &b->ops[i];
        if (op->kind == OP_PUBLISH || op->kind == OP_GROUP_SAVE || op->kind == OP_GROUP_ACK ||
            op->kind == OP_TOPIC_CONFIG || op->kind == OP_DELETE ||
            (op->kind == OP_ATTEMPT && op->request_id))
            reply_error(b, op, code, why);
    }
    b->commit_us = clock_mono_us() - t0;
}
