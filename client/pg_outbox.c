/*
 * pg_outbox.c - the transactional outbox in PostgreSQL: its DDL (the
 * contract of docs/OUTBOX.md, "PostgreSQL"), ferry_pg_outbox_put and the
 * state for `ferry relay --pg URL --status`.
 *
 * Schema version 1, in the schema S the application names:
 *   S.outbox_meta  name/value: 'schema_version' ('1'), 'producer_id'
 *                  (generated once), 'relay_seq' (the last producer
 *                  sequence the relay handed out), 'sent', 'last_sent_seq',
 *                  'last_sent_ms' (the relay's progress)
 *   S.outbox       one row per waiting message, the application's columns
 *                  only. id is an identity column (it does NOT commit in
 *                  order, and the relay does not rely on it). Rows are
 *                  deleted once the broker acked them
 *   S.outbox_claim (pseq, id): the producer sequence the relay gave a row
 *                  in its claim transaction, in commit order (pg_relay.c
 *                  says why that is correct); a narrow insert, where an
 *                  UPDATE of the wide outbox row would cost ten times more
 *   S.outbox_failed rows the broker refused, moved there with the reason
 *   S.outbox_notify() + the statement trigger outbox_notify: pg_notify on
 *                  channel ferry_outbox_<S> for every INSERT statement,
 *                  delivered by Postgres at COMMIT (never for a rollback)
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "pg_internal.h"

const char *ferry__pg_schema(const char *schema)
{
    if (!schema || !*schema)
        return "ferry";
    size_t n = strlen(schema);
    if (n > FERRY__PG_SCHEMA_MAX)
        return NULL;
    if (!((schema[0] >= 'a' && schema[0] <= 'z') || schema[0] == '_'))
        return NULL;
    for (size_t i = 0; i < n; i++) {
        char c = schema[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return NULL;
    }
    if (strncmp(schema, "pg_", 3) == 0)
        return NULL; /* reserved by Postgres */
    return schema;
}

char *ferry__pg_sql(const char *schema, const char *fmt, ...)
{
    size_t sl = strlen(schema), n = 0;
    for (const char *p = fmt; (p = strstr(p, "@S")) != NULL; p += 2)
        n++;
    size_t tl = strlen(fmt) + n * sl + 1;
    char *t = malloc(tl);
    if (!t)
        return NULL;
    char *o = t;
    for (const char *p = fmt; *p;) {
        if (p[0] == '@' && p[1] == 'S') {
            memcpy(o, schema, sl);
            o += sl;
            p += 2;
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(NULL, 0, t, ap);
    va_end(ap);
    char *out = len >= 0 ? malloc((size_t)len + 1) : NULL;
    if (out) {
        va_start(ap, fmt);
        vsnprintf(out, (size_t)len + 1, t, ap);
        va_end(ap);
    }
    free(t);
    return out;
}

int ferry__pg_exec(PGconn *pg, const char *sql)
{
    PGresult *res = PQexec(pg, sql);
    ExecStatusType st = PQresultStatus(res);
    PQclear(res);
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? 0 : FERRY_ESTORAGE;
}

int ferry__pg_value(PGconn *pg, const char *sql, char *out, size_t out_len)
{
    PGresult *res = PQexec(pg, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        PQclear(res);
        return FERRY_ESTORAGE;
    }
    int found = PQntuples(res) > 0;
    if (out_len)
        snprintf(out, out_len, "%s", found ? PQgetvalue(res, 0, 0) : "");
    PQclear(res);
    return found ? 0 : 1;
}

/* The layout found in schema: 0 none, else its schema_version (-1: error). */
static int layout_version(PGconn *pg, const char *s, const char *table)
{
    char sql[256], v[64];
    snprintf(sql, sizeof sql, "SELECT to_regclass('%s.%s_meta') IS NOT NULL", s, table);
    int rc = ferry__pg_value(pg, sql, v, sizeof v);
    if (rc != 0)
        return -1;
    if (strcmp(v, "t") != 0)
        return 0;
    snprintf(sql, sizeof sql, "SELECT value FROM %s.%s_meta WHERE name = 'schema_version'", s,
             table);
    rc = ferry__pg_value(pg, sql, v, sizeof v);
    if (rc < 0)
        return -1;
    return rc == 1 ? 0 : atoi(v);
}

/* clang-format off */
static const char outbox_ddl[] =
    "SELECT pg_advisory_xact_lock(%d, hashtext('@S.install'));\n"
    "CREATE SCHEMA IF NOT EXISTS @S;\n"
    "CREATE TABLE IF NOT EXISTS @S.outbox_meta (\n"
    "  name text PRIMARY KEY,\n"
    "  value text NOT NULL);\n"
    "INSERT INTO @S.outbox_meta VALUES\n"
    "  ('schema_version', '1'),\n"
    "  ('producer_id', 'outbox-' || replace(gen_random_uuid()::text, '-', '')),\n"
    "  ('relay_seq', '0'), ('sent', '0'), ('last_sent_seq', '0'), ('last_sent_ms', '0')\n"
    "  ON CONFLICT (name) DO NOTHING;\n"
    "CREATE TABLE IF NOT EXISTS @S.outbox (\n"
    "  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n"
    "  msg_id text NOT NULL DEFAULT replace(gen_random_uuid()::text, '-', '')\n"
    "    CONSTRAINT outbox_msg_id_unique UNIQUE\n"
    "    CONSTRAINT outbox_msg_id CHECK (msg_id ~ '^[!-~]{1,128}$'),\n"
    "  topic text NOT NULL\n"
    "    CONSTRAINT outbox_topic CHECK (topic ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,193}$'),\n"
    "  key bytea\n"
    "    CONSTRAINT outbox_key CHECK (key IS NULL OR octet_length(key) <= 1024),\n"
    "  headers json\n"
    "    CONSTRAINT outbox_headers CHECK (headers IS NULL OR json_typeof(headers) = 'object'),\n"
    "  payload bytea NOT NULL,\n"
    "  deliver_at_ms bigint NOT NULL DEFAULT 0\n"
    "    CONSTRAINT outbox_deliver_at CHECK (deliver_at_ms >= 0),\n"
    "  created_ms bigint NOT NULL DEFAULT " FERRY__PG_NOW_MS_SQL ");\n"
    "CREATE TABLE IF NOT EXISTS @S.outbox_claim (\n"
    "  pseq bigint PRIMARY KEY,\n"
    "  id bigint NOT NULL CONSTRAINT outbox_claim_id UNIQUE);\n"
    "CREATE TABLE IF NOT EXISTS @S.outbox_failed (\n"
    "  id bigint PRIMARY KEY,\n"
    "  msg_id text NOT NULL,\n"
    "  topic text NOT NULL,\n"
    "  key bytea,\n"
    "  headers json,\n"
    "  payload bytea NOT NULL,\n"
    "  deliver_at_ms bigint NOT NULL,\n"
    "  created_ms bigint NOT NULL,\n"
    "  pseq bigint NOT NULL,\n"
    "  error text NOT NULL,\n"
    "  failed_ms bigint NOT NULL);\n"
    "CREATE OR REPLACE FUNCTION @S.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS\n"
    "  $f$ BEGIN PERFORM pg_notify('ferry_outbox_@S', ''); RETURN NULL; END $f$;\n"
    "CREATE OR REPLACE TRIGGER outbox_notify AFTER INSERT ON @S.outbox\n"
    "  FOR EACH STATEMENT EXECUTE FUNCTION @S.outbox_notify();\n";
/* clang-format on */

static int install_checked(PGconn *pg, const char *s, const char *table, int known,
                           const char *ddl_fmt)
{
    if (!pg)
        return FERRY_EINVALID;
    if (!s)
        return FERRY_EINVALID;
    if (PQtransactionStatus(pg) != PQTRANS_IDLE)
        return FERRY_EINVALID;
    int v = layout_version(pg, s, table);
    if (v < 0)
        return FERRY_ESTORAGE;
    if (v > known)
        return FERRY_EUNSUPPORTED;
    if (v == known)
        return 0; /* in place: only read */
    /* One simple query with several statements is one implicit
     * transaction: all or nothing, and on an error the connection is idle
     * again with PQerrorMessage saying why. */
    char *sql = ferry__pg_sql(s, ddl_fmt, FERRY__PG_LOCK_CLASS);
    if (!sql)
        return FERRY_ENOMEM;
    int rc = ferry__pg_exec(pg, sql);
    free(sql);
    return rc;
}

int ferry_pg_outbox_install(PGconn *pg, const char *schema)
{
    return install_checked(pg, ferry__pg_schema(schema), "outbox", FERRY_PG_OUTBOX_SCHEMA_VERSION,
                           outbox_ddl);
}

struct jbuf {
    char *p;
    size_t len, cap;
};

static int jreserve(struct jbuf *j, size_t n)
{
    if (j->len + n + 1 <= j->cap)
        return 0;
    size_t nc = j->cap ? j->cap : 256;
    while (nc < j->len + n + 1)
        nc *= 2;
    char *np = realloc(j->p, nc);
    if (!np)
        return FERRY_ENOMEM;
    j->p = np;
    j->cap = nc;
    return 0;
}

static int jchar(struct jbuf *j, char c)
{
    if (jreserve(j, 1) < 0)
        return FERRY_ENOMEM;
    j->p[j->len++] = c;
    j->p[j->len] = '\0';
    return 0;
}

/* Appends s (n bytes) as a JSON string, quoted and escaped. */
static int jstr(struct jbuf *j, const char *s, size_t n)
{
    if (jreserve(j, n * 6 + 2) < 0)
        return FERRY_ENOMEM;
    char *o = j->p + j->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c < 0x20) {
            o += sprintf(o, "\\u%04x", c);
        } else {
            *o++ = (char)c;
        }
    }
    *o++ = '"';
    *o = '\0';
    j->len = (size_t)(o - j->p);
    return 0;
}

static int valid_topic(const char *t)
{
    size_t n = t ? strlen(t) : 0;
    if (n < 1 || n > PROTO_MAX_PUBLISH_TOPIC)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = t[i];
        int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-')))
            return 0;
    }
    return 1;
}

static int valid_id(const char *id)
{
    size_t n = strlen(id);
    if (n < 1 || n > 128)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)id[i] < '!' || (unsigned char)id[i] > '~')
            return 0;
    return 1;
}

int ferry_pg_outbox_put(PGconn *pg, const char *schema, const ferry_msg *msg, char id_out[129])
{
    const char *s = ferry__pg_schema(schema);
    if (!pg || !s || !msg || (!msg->payload && msg->payload_len))
        return FERRY_EINVALID;
    if (!valid_topic(msg->topic))
        return FERRY_EINVALID_TOPIC;
    if (msg->id && !valid_id(msg->id))
        return FERRY_EINVALID_ID;
    if (msg->key_len > PROTO_MAX_KEY || (msg->key_len && !msg->key) ||
        msg->header_count > PROTO_MAX_HEADERS || (msg->header_count && !msg->headers) ||
        msg->deliver_at_ms < 0)
        return FERRY_EINVALID;
    struct jbuf j = {0};
    int rc = 0;
    for (size_t i = 0; i < msg->header_count && rc == 0; i++) {
        const ferry_header *h = &msg->headers[i];
        size_t nl = h->name ? strlen(h->name) : 0;
        if (nl < 1 || nl > PROTO_MAX_HEADER_NAME || h->value_len > PROTO_MAX_HEADER_VALUE ||
            (h->value_len && !h->value) || (h->value_len && memchr(h->value, 0, h->value_len))) {
            rc = FERRY_EINVALID;
            break;
        }
        if ((rc = jchar(&j, i == 0 ? '{' : ',')) == 0 && (rc = jstr(&j, h->name, nl)) == 0 &&
            (rc = jchar(&j, ':')) == 0)
            rc = jstr(&j, h->value, h->value_len);
    }
    if (rc == 0 && j.p)
        rc = jchar(&j, '}');
    if (rc < 0) {
        free(j.p);
        return rc;
    }
    char *json = j.p;
    char sql[512];
    snprintf(sql, sizeof sql,
             "INSERT INTO %s.outbox (topic, msg_id, key, headers, payload, deliver_at_ms)"
             " VALUES ($1, coalesce($2, replace(gen_random_uuid()::text, '-', '')), $3, $4::json,"
             " $5, $6::bigint) RETURNING msg_id",
             s);
    char deliver[32];
    snprintf(deliver, sizeof deliver, "%lld", (long long)msg->deliver_at_ms);
    const char *vals[6] = {msg->topic,
                           msg->id,
                           msg->key_len || msg->key ? msg->key : NULL,
                           json,
                           msg->payload ? msg->payload : "",
                           deliver};
    int lens[6] = {0, 0, (int)msg->key_len, 0, (int)msg->payload_len, 0};
    int fmts[6] = {0, 0, 1, 0, 1, 0};
    PGresult *res = PQexecParams(pg, sql, 6, NULL, vals, lens, fmts, 0);
    free(json);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        PQclear(res);
        return FERRY_ESTORAGE;
    }
    if (id_out)
        snprintf(id_out, 129, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return 0;
}

int ferry_pg_outbox_stats_get(PGconn *pg, const char *schema, ferry_pg_outbox_stats *out)
{
    const char *s = ferry__pg_schema(schema);
    if (!pg || !s || !out)
        return FERRY_EINVALID;
    memset(out, 0, sizeof *out);
    int v = layout_version(pg, s, "outbox");
    if (v < 0)
        return FERRY_ESTORAGE;
    if (v == 0 || v > FERRY_PG_OUTBOX_SCHEMA_VERSION)
        return FERRY_EUNSUPPORTED;
    char *sql = ferry__pg_sql(
        s,
        "SELECT (SELECT count(*) FROM @S.outbox),"
        " (SELECT count(*) FROM @S.outbox_claim),"
        " (SELECT count(*) FROM @S.outbox_failed),"
        " coalesce((SELECT min(id) FROM @S.outbox), 0),"
        " coalesce((SELECT " FERRY__PG_NOW_MS_SQL " - min(created_ms) FROM @S.outbox), 0),"
        " (SELECT value FROM @S.outbox_meta WHERE name = 'producer_id'),"
        " coalesce((SELECT value FROM @S.outbox_meta WHERE name = 'last_sent_seq'), '0'),"
        " coalesce((SELECT value FROM @S.outbox_meta WHERE name = 'last_sent_ms'), '0'),"
        " coalesce((SELECT value FROM @S.outbox_meta WHERE name = 'sent'), '0'),"
        " coalesce((SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        "   AND classid = %d AND objid = hashtext('@S.outbox')::oid AND objsubid = 2"
        "   LIMIT 1), 0)",
        FERRY__PG_LOCK_CLASS);
    if (!sql)
        return FERRY_ENOMEM;
    PGresult *res = PQexec(pg, sql);
    free(sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        PQclear(res);
        return FERRY_ESTORAGE;
    }
    out->waiting = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
    out->claimed = strtoull(PQgetvalue(res, 0, 1), NULL, 10);
    out->failed = strtoull(PQgetvalue(res, 0, 2), NULL, 10);
    out->oldest_waiting_id = out->waiting ? strtoull(PQgetvalue(res, 0, 3), NULL, 10) : 0;
    out->oldest_waiting_ms = out->waiting ? strtoll(PQgetvalue(res, 0, 4), NULL, 10) : 0;
    snprintf(out->producer_id, sizeof out->producer_id, "%s", PQgetvalue(res, 0, 5));
    out->last_sent_seq = strtoull(PQgetvalue(res, 0, 6), NULL, 10);
    out->last_sent_ms = strtoll(PQgetvalue(res, 0, 7), NULL, 10);
    out->sent = strtoull(PQgetvalue(res, 0, 8), NULL, 10);
    out->relay_pid = atoi(PQgetvalue(res, 0, 9));
    PQclear(res);
    return 0;
}
