/*
 * pg_inbox.c - the inbox in PostgreSQL (docs/INBOX.md, "PostgreSQL"):
 * exactly-once effects for a consumer whose data lives in Postgres.
 *
 * The claim is INSERT ... ON CONFLICT (grp, msg_id) DO NOTHING in the
 * caller's transaction. Postgres makes a second inserter of the same key
 * wait for the first transaction's end: it then sees the first claim
 * (0 rows inserted: SEEN) or, when the first rolled back, inserts its own
 * (FRESH). So of all the transactions that claim one message at most one
 * commits, whatever the isolation level, and the effect commits with its
 * claim or not at all.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "pg_internal.h"

/* clang-format off */
static const char inbox_ddl[] =
    "SELECT pg_advisory_xact_lock(%d, hashtext('@S.install'));\n"
    "CREATE SCHEMA IF NOT EXISTS @S;\n"
    "CREATE TABLE IF NOT EXISTS @S.inbox_meta (\n"
    "  name text PRIMARY KEY,\n"
    "  value text NOT NULL);\n"
    "INSERT INTO @S.inbox_meta VALUES ('schema_version', '2')\n"
    "  ON CONFLICT (name) DO UPDATE SET value = excluded.value;\n"
    "CREATE TABLE IF NOT EXISTS @S.inbox (\n"
    "  grp text NOT NULL CONSTRAINT inbox_grp CHECK (length(grp) >= 1),\n"
    "  msg_id text NOT NULL CONSTRAINT inbox_msg_id CHECK (msg_id ~ '^[!-~]{1,128}$'),\n"
    "  topic text NOT NULL,\n"
    "  seq bigint NOT NULL,\n"
    "  processed_ms bigint NOT NULL DEFAULT " FERRY__PG_NOW_MS_SQL ",\n"
    "  PRIMARY KEY (grp, msg_id));\n"
    "CREATE INDEX IF NOT EXISTS inbox_processed ON @S.inbox (processed_ms);\n"
    /* Layout 2: claims found by sequence, for ferry_pg_inbox_purge_acked.
     * Layout 1 becomes 2 by running all of this again. */
    "CREATE INDEX IF NOT EXISTS inbox_seq ON @S.inbox (grp, topic, seq);\n";
/* clang-format on */

static int layout(PGconn *pg, const char *s)
{
    char sql[256], v[64];
    snprintf(sql, sizeof sql, "SELECT to_regclass('%s.inbox_meta') IS NOT NULL", s);
    if (ferry__pg_value(pg, sql, v, sizeof v) != 0)
        return -1;
    if (strcmp(v, "t") != 0)
        return 0;
    snprintf(sql, sizeof sql, "SELECT value FROM %s.inbox_meta WHERE name = 'schema_version'", s);
    int rc = ferry__pg_value(pg, sql, v, sizeof v);
    return rc < 0 ? -1 : rc == 1 ? 0 : atoi(v);
}

int ferry_pg_inbox_install(PGconn *pg, const char *schema)
{
    const char *s = ferry__pg_schema(schema);
    if (!pg || !s || PQtransactionStatus(pg) != PQTRANS_IDLE)
        return FERRY_EINVALID;
    int v = layout(pg, s);
    if (v < 0)
        return FERRY_ESTORAGE;
    if (v > FERRY_PG_INBOX_SCHEMA_VERSION)
        return FERRY_EUNSUPPORTED;
    if (v == FERRY_PG_INBOX_SCHEMA_VERSION)
        return 0;
    char *sql = ferry__pg_sql(s, inbox_ddl, FERRY__PG_LOCK_CLASS);
    if (!sql)
        return FERRY_ENOMEM;
    int rc = ferry__pg_exec(pg, sql); /* one implicit transaction */
    free(sql);
    return rc;
}

int ferry_pg_inbox_claim(PGconn *pg, const char *schema, const char *group, const ferry_delivery *d)
{
    const char *s = ferry__pg_schema(schema);
    if (!pg || !s || !group || !*group || !d || !d->topic)
        return FERRY_EINVALID;
    if (!d->id || !*d->id)
        return FERRY_EINVALID_ID;
    if (PQtransactionStatus(pg) != PQTRANS_INTRANS)
        return FERRY_EINVALID;
    char sql[256], seq[32];
    snprintf(sql, sizeof sql,
             "INSERT INTO %s.inbox (grp, msg_id, topic, seq) VALUES ($1, $2, $3, $4::bigint)"
             " ON CONFLICT (grp, msg_id) DO NOTHING",
             s);
    snprintf(seq, sizeof seq, "%llu", (unsigned long long)d->seq);
    const char *vals[4] = {group, d->id, d->topic, seq};
    PGresult *res = PQexecParams(pg, sql, 4, NULL, vals, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        PQclear(res);
        return FERRY_ESTORAGE;
    }
    int fresh = strcmp(PQcmdTuples(res), "1") == 0;
    PQclear(res);
    return fresh ? FERRY_INBOX_FRESH : FERRY_INBOX_SEEN;
}

/* COMMITs the transaction open on pg. Returns 1 when it committed: a
 * COMMIT of an aborted transaction answers "ROLLBACK" without error. */
static int commit(PGconn *pg)
{
    PGresult *res = PQexec(pg, "COMMIT");
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK && strcmp(PQcmdStatus(res), "COMMIT") == 0;
    PQclear(res);
    return ok;
}

static void rollback(PGconn *pg)
{
    if (PQtransactionStatus(pg) != PQTRANS_IDLE) {
        PGresult *res = PQexec(pg, "ROLLBACK");
        PQclear(res);
    }
}

int ferry_pg_inbox_handle(PGconn *pg, const char *schema, const char *group, ferry_delivery *d,
                          ferry_pg_inbox_handler h, void *userdata, uint32_t retry_delay_ms)
{
    if (!pg || !group || !d || !h || !ferry__pg_schema(schema))
        return FERRY_EINVALID;
    if (PQtransactionStatus(pg) != PQTRANS_IDLE)
        return FERRY_EINVALID;
    if (ferry__pg_exec(pg, "BEGIN") < 0) {
        int nrc = ferry_delivery_nack(d, retry_delay_ms, "inbox: BEGIN failed");
        return nrc < 0 ? nrc : FERRY_ESTORAGE;
    }
    int claim = ferry_pg_inbox_claim(pg, schema, group, d);
    if (claim < 0) {
        rollback(pg);
        int nrc = ferry_delivery_nack(d, retry_delay_ms, "inbox: the claim failed");
        return nrc < 0 ? nrc : claim;
    }
    if (claim == FERRY_INBOX_FRESH) {
        int hrc = h(userdata, pg, d);
        if (hrc != 0 || PQtransactionStatus(pg) != PQTRANS_INTRANS) {
            int ended = PQtransactionStatus(pg) == PQTRANS_IDLE;
            rollback(pg);
            int nrc = ferry_delivery_nack(
                d, retry_delay_ms, hrc != 0 ? "handler failed" : "handler ended the transaction");
            if (nrc < 0)
                return nrc;
            return hrc != 0 && !ended ? FERRY_INBOX_RETRY : FERRY_ESTORAGE;
        }
    }
    if (!commit(pg)) {
        rollback(pg);
        int nrc = ferry_delivery_nack(d, retry_delay_ms, "inbox: COMMIT failed");
        return nrc < 0 ? nrc : FERRY_ESTORAGE;
    }
    int arc = ferry_delivery_ack_async(d);
    if (arc < 0)
        return arc;
    return claim;
}

/* One delivery of a batch, in a savepoint of its own. Sets *nack when it
 * must be nacked, *lost when the transaction can no longer commit (the
 * handler ended it, or a savepoint could not be rolled back to), and why.
 * Returns its outcome as ferry_pg_inbox_handle does. */
static int batch_one(PGconn *pg, const char *schema, const char *group, ferry_delivery *d,
                     ferry_pg_inbox_handler h, void *userdata, int *nack, int *lost, char *why,
                     size_t why_len)
{
    *nack = 1;
    if (ferry__pg_exec(pg, "SAVEPOINT ferry_inbox") < 0) {
        *lost = 1;
        snprintf(why, why_len, "inbox: SAVEPOINT failed");
        return FERRY_ESTORAGE;
    }
    int claim = ferry_pg_inbox_claim(pg, schema, group, d);
    int rc = claim;
    if (claim < 0) {
        snprintf(why, why_len, "inbox: the claim failed");
    } else if (claim == FERRY_INBOX_FRESH) {
        int hrc = h(userdata, pg, d);
        if (PQtransactionStatus(pg) == PQTRANS_IDLE) {
            *lost = 1;
            snprintf(why, why_len, "handler ended the transaction");
            return FERRY_ESTORAGE;
        }
        if (hrc != 0 || PQtransactionStatus(pg) != PQTRANS_INTRANS) {
            snprintf(why, why_len, "handler failed");
            rc = hrc != 0 ? FERRY_INBOX_RETRY : FERRY_ESTORAGE;
        }
    }
    if (rc < 0 || rc == FERRY_INBOX_RETRY) {
        if (ferry__pg_exec(pg, "ROLLBACK TO SAVEPOINT ferry_inbox") < 0)
            *lost = 1;
        return rc;
    }
    if (ferry__pg_exec(pg, "RELEASE SAVEPOINT ferry_inbox") < 0) {
        *lost = 1;
        snprintf(why, why_len, "inbox: RELEASE SAVEPOINT failed");
        return FERRY_ESTORAGE;
    }
    *nack = 0;
    return claim;
}

static int handle_batch(PGconn *pg, const char *schema, const char *group,
                        ferry_delivery *const *ds, size_t n, ferry_pg_inbox_handler h,
                        void *userdata, uint32_t retry_delay_ms, int *outcomes, char *nack)
{
    char why[160] = "", first_why[160] = "";
    int batch_rc = 0;
    if (ferry__pg_exec(pg, "BEGIN") < 0) {
        snprintf(first_why, sizeof first_why, "inbox: BEGIN failed");
        batch_rc = FERRY_ESTORAGE;
    }
    for (size_t i = 0; i < n && batch_rc == 0; i++) {
        int lost = 0, nk = 0;
        why[0] = '\0';
        outcomes[i] = batch_one(pg, schema, group, ds[i], h, userdata, &nk, &lost, why, sizeof why);
        nack[i] = (char)nk;
        if (nk && !first_why[0])
            snprintf(first_why, sizeof first_why, "%s", why);
        if (lost) {
            snprintf(first_why, sizeof first_why, "%s", why);
            batch_rc = FERRY_ESTORAGE;
        }
    }
    if (batch_rc == 0 && !commit(pg)) {
        snprintf(first_why, sizeof first_why, "inbox: COMMIT failed");
        batch_rc = FERRY_ESTORAGE;
    }
    if (batch_rc != 0) {
        rollback(pg);
        for (size_t i = 0; i < n; i++) {
            outcomes[i] = batch_rc;
            nack[i] = 1;
        }
    }
    for (size_t i = 0; i < n; i++) {
        int r = nack[i]
                    ? ferry_delivery_nack(ds[i], retry_delay_ms, first_why[0] ? first_why : NULL)
                    : ferry_delivery_ack_async(ds[i]);
        if (r < 0 && outcomes[i] >= 0)
            outcomes[i] = r;
    }
    return batch_rc;
}

int ferry_pg_inbox_handle_batch(PGconn *pg, const char *schema, const char *group,
                                ferry_delivery *const *ds, size_t n, ferry_pg_inbox_handler h,
                                void *userdata, uint32_t retry_delay_ms, int *outcomes)
{
    enum { SMALL = 64 };
    if (!pg || !ferry__pg_schema(schema) || !group || !*group || !ds || !h || n == 0)
        return FERRY_EINVALID;
    for (size_t i = 0; i < n; i++)
        if (!ds[i])
            return FERRY_EINVALID;
    if (PQtransactionStatus(pg) != PQTRANS_IDLE)
        return FERRY_EINVALID;
    int small_out[SMALL];
    char small_nack[SMALL];
    int *out = outcomes ? outcomes : small_out;
    char *nack = small_nack;
    int *heap = NULL;
    if (n > SMALL) {
        /* The outcomes (when the caller wants none), then the nack flags. */
        size_t ints = outcomes ? 0 : n;
        heap = malloc(ints * sizeof(int) + n);
        if (!heap)
            return FERRY_ENOMEM;
        if (!outcomes)
            out = heap;
        nack = (char *)(heap + ints);
    }
    int rc = handle_batch(pg, schema, group, ds, n, h, userdata, retry_delay_ms, out, nack);
    free(heap);
    return rc;
}

/* A DELETE's result: the rows it deleted, or FERRY_ESTORAGE. Clears res. */
static int rows_deleted(PGresult *res)
{
    int n = PQresultStatus(res) == PGRES_COMMAND_OK ? atoi(PQcmdTuples(res)) : FERRY_ESTORAGE;
    PQclear(res);
    return n;
}

int ferry_pg_inbox_purge(PGconn *pg, const char *schema, int64_t older_than_ms, int max_rows)
{
    const char *s = ferry__pg_schema(schema);
    if (!pg || !s || older_than_ms < 0 || max_rows < 1 || max_rows > 100000)
        return FERRY_EINVALID;
    char *sql = ferry__pg_sql(
        s,
        "DELETE FROM @S.inbox WHERE (grp, msg_id) IN (SELECT grp, msg_id FROM @S.inbox"
        " WHERE processed_ms < " FERRY__PG_NOW_MS_SQL " - %lld"
        " ORDER BY processed_ms LIMIT %d)",
        (long long)older_than_ms, max_rows);
    if (!sql)
        return FERRY_ENOMEM;
    PGresult *res = PQexec(pg, sql);
    free(sql);
    return rows_deleted(res);
}

int ferry_pg_inbox_forget(PGconn *pg, const char *schema, const char *group, const char *topic,
                          uint64_t floor, const uint64_t *keep, size_t nkeep, int max_rows)
{
    const char *s = ferry__pg_schema(schema);
    if (!pg || !s || !group || !*group || !topic || max_rows < 1 || max_rows > 100000 ||
        !ferry__keep_valid(floor, keep, nkeep))
        return FERRY_EINVALID;
    if (floor > INT64_MAX)
        floor = INT64_MAX;
    /* The keep list as a Postgres array literal: at most
     * FERRY_FLOOR_KEEP_MAX numbers of up to 20 digits each from the
     * broker; a longer list from a caller is as valid. */
    size_t cap = 3 + nkeep * 21;
    char *arr = malloc(cap);
    if (!arr)
        return FERRY_ENOMEM;
    size_t off = 0;
    arr[off++] = '{';
    for (size_t i = 0; i < nkeep; i++)
        off += (size_t)snprintf(arr + off, cap - off, "%s%llu", i ? "," : "",
                                (unsigned long long)keep[i]);
    arr[off++] = '}';
    arr[off] = '\0';
    /* The subquery walks inbox_seq over (grp, topic, seq < floor): its cost
     * is the rows deleted and the kept ones it steps over. */
    char *sql = ferry__pg_sql(s,
                              "DELETE FROM @S.inbox WHERE (grp, msg_id) IN ("
                              " SELECT grp, msg_id FROM @S.inbox"
                              " WHERE grp = $1 AND topic = $2 AND seq < $3::bigint"
                              " AND seq <> ALL ($4::bigint[]) ORDER BY seq LIMIT %d)",
                              max_rows);
    if (!sql) {
        free(arr);
        return FERRY_ENOMEM;
    }
    char fl[32];
    snprintf(fl, sizeof fl, "%llu", (unsigned long long)floor);
    const char *vals[4] = {group, topic, fl, arr};
    PGresult *res = PQexecParams(pg, sql, 4, NULL, vals, NULL, NULL, 0);
    free(sql);
    free(arr);
    return rows_deleted(res);
}

int ferry_pg_inbox_purge_acked(PGconn *pg, const char *schema, const char *group, ferry_sub *sub,
                               int max_rows)
{
    if (!pg || !ferry__pg_schema(schema) || !group || !*group || !sub || max_rows < 1 ||
        max_rows > 100000)
        return FERRY_EINVALID;
    uint64_t floor = 0, *keep;
    size_t n;
    int rc = ferry__sub_floor(sub, &floor, &keep, &n);
    if (rc == 0)
        rc = ferry_pg_inbox_forget(pg, schema, group, sub->topic, floor, keep, n, max_rows);
    free(keep);
    return rc;
}
