/*
 * outbox.c - the transactional outbox: the ferry_outbox table in the
 * application's own SQLite database, and the calls that install it, write
 * messages into it and report its state.
 *
 * The table is a contract for any language (docs/OUTBOX.md): everything the
 * relay needs is in plain columns with SQL defaults, so a row inserted by
 * the sqlite3 shell or by Python is relayed exactly like one written here.
 * What this file adds over a plain INSERT is checking a ferry_msg the way
 * the broker will (so a bad topic fails the caller's transaction now, not
 * the relay later) and turning its headers into the JSON object the column
 * holds. CHECK constraints on the table give a plain INSERT the same early
 * failures for the topic, the id and the headers.
 *
 * Install is idempotent and versioned. It takes the write lock (BEGIN
 * IMMEDIATE, or a SAVEPOINT inside the caller's transaction) only when
 * something is missing, so calling it at every start of every process is
 * cheap.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "internal.h"
#include "outbox_internal.h"

/* clang-format off */
static const char schema_v1[] =
    "CREATE TABLE IF NOT EXISTS ferry_outbox (\n"
    "  seq INTEGER PRIMARY KEY AUTOINCREMENT,\n"
    "  msg_id TEXT NOT NULL UNIQUE DEFAULT (lower(hex(randomblob(16))))\n"
    "    CONSTRAINT ferry_outbox_msg_id\n"
    "    CHECK (length(msg_id) BETWEEN 1 AND 128 AND msg_id NOT GLOB '*[^!-~]*'),\n"
    "  topic TEXT NOT NULL\n"
    "    CONSTRAINT ferry_outbox_topic\n"
    "    CHECK (length(topic) BETWEEN 1 AND 200 AND topic GLOB '[A-Za-z0-9]*'\n"
    "           AND topic NOT GLOB '*[^A-Za-z0-9._-]*'),\n"
    "  key BLOB,\n"
    "  headers TEXT\n"
    "    CONSTRAINT ferry_outbox_headers\n"
    "    CHECK (headers IS NULL OR json_type(headers) = 'object'),\n"
    "  payload BLOB NOT NULL,\n"
    "  deliver_at_ms INTEGER NOT NULL DEFAULT 0\n"
    "    CONSTRAINT ferry_outbox_deliver_at CHECK (deliver_at_ms >= 0),\n"
    "  created_ms INTEGER NOT NULL DEFAULT (" FERRY__OUTBOX_NOW_MS_SQL "),\n"
    "  sent_ms INTEGER,\n"
    "  broker_seq INTEGER,\n"
    "  error TEXT\n"
    ");\n"
    "CREATE INDEX IF NOT EXISTS ferry_outbox_unsent ON ferry_outbox(seq)\n"
    "  WHERE sent_ms IS NULL;\n"
    "CREATE INDEX IF NOT EXISTS ferry_outbox_failed ON ferry_outbox(seq)\n"
    "  WHERE error IS NOT NULL;\n";
/* clang-format on */

int64_t ferry__wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

int ferry__outbox_err(int src)
{
    switch (src & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE:
        return 0;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return FERRY_ETIMEOUT;
    default:
        return FERRY_ESTORAGE;
    }
}

int ferry__outbox_exec(sqlite3 *db, const char *sql)
{
    return ferry__outbox_err(sqlite3_exec(db, sql, NULL, NULL, NULL));
}

/* One TEXT value of ferry_outbox_meta into out (NUL-terminated, at most
 * cap - 1 bytes). Returns 1 when found, 0 when absent (or the table does
 * not exist), FERRY_ESTORAGE on another failure. */
static int meta_get(sqlite3 *db, const char *name, char *out, size_t cap)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "SELECT value FROM ferry_outbox_meta WHERE name = ?1", -1, &st,
                                NULL);
    if (rc != SQLITE_OK) {
        /* "no such table": not installed. */
        sqlite3_finalize(st);
        return rc == SQLITE_ERROR ? 0 : FERRY_ESTORAGE;
    }
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    int found = 0;
    if (rc == SQLITE_ROW) {
        const unsigned char *v = sqlite3_column_text(st, 0);
        size_t n = (size_t)sqlite3_column_bytes(st, 0);
        if (v && n < cap) {
            memcpy(out, v, n);
            out[n] = '\0';
            found = 1;
        }
    } else if (rc != SQLITE_DONE) {
        found = FERRY_ESTORAGE;
    }
    sqlite3_finalize(st);
    return found;
}

/* 1 when the installed outbox is complete and of our version, 0 when
 * install has work to do, FERRY_EUNSUPPORTED for a newer schema. */
static int installed(sqlite3 *db)
{
    char version[32], pid[130];
    int rc = meta_get(db, "schema_version", version, sizeof version);
    if (rc <= 0)
        return rc;
    long v = strtol(version, NULL, 10);
    if (v > FERRY__OUTBOX_SCHEMA_VERSION)
        return FERRY_EUNSUPPORTED;
    if (v < FERRY__OUTBOX_SCHEMA_VERSION)
        return 0;
    rc = meta_get(db, "producer_id", pid, sizeof pid);
    if (rc <= 0)
        return rc;
    sqlite3_stmt *st = NULL;
    /* The table itself (someone may have dropped it to start afresh). */
    rc = sqlite3_prepare_v2(db, "SELECT 1 FROM ferry_outbox LIMIT 0", -1, &st, NULL);
    sqlite3_finalize(st);
    return rc == SQLITE_OK ? 1 : 0;
}

int ferry_outbox_install(sqlite3 *db)
{
    if (!db)
        return FERRY_EINVALID;
    int rc = installed(db);
    if (rc != 0)
        return rc < 0 ? rc : 0;

    int own = sqlite3_get_autocommit(db);
    rc = ferry__outbox_exec(db, own ? "BEGIN IMMEDIATE" : "SAVEPOINT ferry_outbox_install");
    if (rc < 0)
        return rc;

    rc = ferry__outbox_exec(db, "CREATE TABLE IF NOT EXISTS ferry_outbox_meta (\n"
                                "  name TEXT PRIMARY KEY,\n"
                                "  value TEXT NOT NULL\n"
                                ") WITHOUT ROWID");
    if (rc == 0) {
        /* Again under the write lock: another process may have installed
         * it (or a newer version) since the check above. */
        rc = installed(db);
        if (rc == 1)
            rc = 0;
        else if (rc == 0)
            rc = ferry__outbox_exec(db, schema_v1);
    }
    if (rc == 0)
        rc = ferry__outbox_exec(
            db, "INSERT INTO ferry_outbox_meta(name, value) VALUES ('schema_version', '1')"
                "  ON CONFLICT(name) DO UPDATE SET value = excluded.value;"
                "INSERT OR IGNORE INTO ferry_outbox_meta(name, value)"
                "  VALUES ('producer_id', 'outbox-' || lower(hex(randomblob(16))))");

    if (rc == 0) {
        rc = ferry__outbox_exec(db, own ? "COMMIT" : "RELEASE ferry_outbox_install");
        if (rc == 0)
            return 0;
    }
    if (own) {
        ferry__outbox_exec(db, "ROLLBACK");
    } else {
        ferry__outbox_exec(db, "ROLLBACK TO ferry_outbox_install");
        ferry__outbox_exec(db, "RELEASE ferry_outbox_install");
    }
    return rc;
}

int ferry__outbox_read_producer_id(sqlite3 *db, char out[129])
{
    int rc = meta_get(db, "producer_id", out, 129);
    if (rc < 0)
        return rc;
    return rc == 1 ? 0 : FERRY_EUNSUPPORTED;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if invalid.
 * NUL is refused too: SQLite's JSON functions end a string there. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char b = s[0];
    size_t len;
    uint32_t cp;
    if (b == 0)
        return 0;
    if (b < 0x80)
        return 1;
    if (b >= 0xc2 && b <= 0xdf) {
        len = 2;
        cp = b & 0x1f;
    } else if (b >= 0xe0 && b <= 0xef) {
        len = 3;
        cp = b & 0x0f;
    } else if (b >= 0xf0 && b <= 0xf4) {
        len = 4;
        cp = b & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
};

static void sb_put(struct sbuf *b, const void *s, size_t n)
{
    if (b->oom)
        return;
    if (b->cap - b->len < n + 1) {
        size_t ncap = b->cap ? b->cap : 256;
        while (ncap - b->len < n + 1)
            ncap *= 2;
        char *np = realloc(b->p, ncap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = ncap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

/* Appends s[0..n) as a JSON string. Returns -1 when it is not UTF-8 text. */
static int sb_json_string(struct sbuf *b, const void *str, size_t n)
{
    const unsigned char *s = str;
    sb_put(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            sb_put(b, esc, 2);
            i++;
        } else if (c < 0x20 && c != 0) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\u%04x", c);
            sb_put(b, esc, 6);
            i++;
        } else {
            size_t l = utf8_len(s + i, n - i);
            if (l == 0)
                return -1;
            sb_put(b, s + i, l);
            i += l;
        }
    }
    sb_put(b, "\"", 1);
    return 0;
}

/* The checks the broker will make that do not depend on its limits. */
static int check_msg(const ferry_msg *m)
{
    if (!m->topic || proto_topic_valid((const uint8_t *)m->topic, strlen(m->topic)) < 0)
        return FERRY_EINVALID_TOPIC;
    if (m->id && proto_id_valid((const uint8_t *)m->id, strlen(m->id)) < 0)
        return FERRY_EINVALID_ID;
    if (m->key_len > PROTO_MAX_KEY || (m->key_len && !m->key))
        return FERRY_EINVALID;
    if (m->payload_len && !m->payload)
        return FERRY_EINVALID;
    if (m->payload_len > INT32_MAX)
        return FERRY_EMESSAGE_TOO_LARGE;
    if (m->header_count > PROTO_MAX_HEADERS || (m->header_count && !m->headers))
        return FERRY_EINVALID;
    if (m->deliver_at_ms < 0)
        return FERRY_EINVALID;
    for (size_t i = 0; i < m->header_count; i++) {
        const ferry_header *h = &m->headers[i];
        size_t nlen = h->name ? strlen(h->name) : 0;
        if (nlen == 0 || nlen > PROTO_MAX_HEADER_NAME)
            return FERRY_EINVALID;
        if (h->value_len > PROTO_MAX_HEADER_VALUE || (h->value_len && !h->value))
            return FERRY_EINVALID;
    }
    return 0;
}

/* The headers as a JSON object, in order (repeated names stay repeated).
 * *out is NULL when there are none. Names and values must be UTF-8 text
 * without NUL bytes: the column holds JSON strings. */
static int headers_json(const ferry_msg *m, char **out)
{
    *out = NULL;
    if (m->header_count == 0)
        return 0;
    struct sbuf b = {0};
    sb_put(&b, "{", 1);
    for (size_t i = 0; i < m->header_count; i++) {
        const ferry_header *h = &m->headers[i];
        if (i > 0)
            sb_put(&b, ",", 1);
        int bad = sb_json_string(&b, h->name, strlen(h->name));
        sb_put(&b, ":", 1);
        if (bad < 0 || sb_json_string(&b, h->value, h->value_len) < 0) {
            free(b.p);
            return FERRY_EINVALID;
        }
    }
    sb_put(&b, "}", 1);
    if (b.oom) {
        free(b.p);
        return FERRY_ENOMEM;
    }
    *out = b.p;
    return 0;
}

int ferry_outbox_put(sqlite3 *db, const ferry_msg *msg, char id_out[129])
{
    if (id_out)
        id_out[0] = '\0';
    if (!db || !msg)
        return FERRY_EINVALID;
    int rc = check_msg(msg);
    if (rc < 0)
        return rc;
    char *headers = NULL;
    rc = headers_json(msg, &headers);
    if (rc < 0)
        return rc;

    sqlite3_stmt *st = NULL;
    rc = sqlite3_prepare_v2(db,
                            "INSERT INTO ferry_outbox(msg_id, topic, key, headers, payload,"
                            " deliver_at_ms) VALUES (coalesce(?1, lower(hex(randomblob(16)))),"
                            " ?2, ?3, ?4, ?5, ?6) RETURNING msg_id",
                            -1, &st, NULL);
    if (rc != SQLITE_OK) {
        free(headers);
        return ferry__outbox_err(rc);
    }
    if (msg->id)
        sqlite3_bind_text(st, 1, msg->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, msg->topic, -1, SQLITE_STATIC);
    if (msg->key_len)
        sqlite3_bind_blob(st, 3, msg->key, (int)msg->key_len, SQLITE_STATIC);
    if (headers)
        sqlite3_bind_text(st, 4, headers, -1, SQLITE_STATIC);
    /* A zero-length blob, not NULL: payload is NOT NULL. */
    sqlite3_bind_blob(st, 5, msg->payload_len ? msg->payload : "", (int)msg->payload_len,
                      SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, msg->deliver_at_ms);

    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const unsigned char *id = sqlite3_column_text(st, 0);
        size_t n = (size_t)sqlite3_column_bytes(st, 0);
        if (id_out && id && n <= 128) {
            memcpy(id_out, id, n);
            id_out[n] = '\0';
        }
        rc = sqlite3_step(st);
    }
    /* On failure sqlite3_errmsg(db) keeps the step's error. */
    sqlite3_finalize(st);
    free(headers);
    if (rc != SQLITE_DONE) {
        if (id_out)
            id_out[0] = '\0';
        return ferry__outbox_err(rc);
    }
    return 0;
}

int ferry_outbox_stats_get(sqlite3 *db, ferry_outbox_stats *out)
{
    if (!db || !out)
        return FERRY_EINVALID;
    memset(out, 0, sizeof *out);
    int rc = ferry__outbox_read_producer_id(db, out->producer_id);
    if (rc < 0)
        return rc;

    int own = sqlite3_get_autocommit(db);
    /* One snapshot for the three reads. */
    if (own && ferry__outbox_exec(db, "BEGIN") < 0)
        return FERRY_ESTORAGE;

    sqlite3_stmt *st = NULL;
    int64_t first_unsent = 0;
    rc = FERRY_ESTORAGE;
    if (sqlite3_prepare_v2(db, "SELECT count(*), min(seq) FROM ferry_outbox WHERE sent_ms IS NULL",
                           -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW)
        goto done;
    out->waiting = (uint64_t)sqlite3_column_int64(st, 0);
    first_unsent = sqlite3_column_int64(st, 1);
    sqlite3_finalize(st);
    st = NULL;

    if (first_unsent > 0) {
        if (sqlite3_prepare_v2(db, "SELECT created_ms FROM ferry_outbox WHERE seq = ?1", -1, &st,
                               NULL) != SQLITE_OK)
            goto done;
        sqlite3_bind_int64(st, 1, first_unsent);
        if (sqlite3_step(st) == SQLITE_ROW) {
            int64_t age = ferry__wall_ms() - sqlite3_column_int64(st, 0);
            out->oldest_waiting_seq = (uint64_t)first_unsent;
            out->oldest_waiting_ms = age > 0 ? age : 0;
        }
        sqlite3_finalize(st);
        st = NULL;
    }

    /* Rows below the first unsent one are all done (sent or failed): the
     * last sent one is the first sent one going down from there. */
    if (sqlite3_prepare_v2(db,
                           "SELECT seq, sent_ms, broker_seq FROM ferry_outbox"
                           " WHERE seq < ?1 AND sent_ms IS NOT NULL AND error IS NULL"
                           " ORDER BY seq DESC LIMIT 1",
                           -1, &st, NULL) != SQLITE_OK)
        goto done;
    sqlite3_bind_int64(st, 1, first_unsent > 0 ? first_unsent : INT64_MAX);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        out->last_sent_seq = (uint64_t)sqlite3_column_int64(st, 0);
        out->last_sent_ms = sqlite3_column_int64(st, 1);
        out->last_broker_seq = (uint64_t)sqlite3_column_int64(st, 2);
    } else if (s != SQLITE_DONE) {
        goto done;
    }
    sqlite3_finalize(st);
    st = NULL;

    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM ferry_outbox WHERE error IS NOT NULL", -1, &st,
                           NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW)
        goto done;
    out->failed = (uint64_t)sqlite3_column_int64(st, 0);
    rc = 0;

done:
    sqlite3_finalize(st);
    if (own)
        ferry__outbox_exec(db, rc == 0 ? "COMMIT" : "ROLLBACK");
    return rc;
}
