/*
 * pg_relay.c - the outbox relay for PostgreSQL (ferry.h "PostgreSQL",
 * docs/OUTBOX.md "PostgreSQL"): forwards the committed rows of
 * <schema>.outbox to ferryd, in commit order, each stored exactly once.
 *
 * Why an id cursor is wrong, and what this relay does instead. An identity
 * (sequence) value is taken at INSERT, not at COMMIT: a transaction holding
 * id 41 can commit after one holding id 42. A relay that remembers "done up
 * to 42" never sees 41. This relay keeps no cursor over ids. It numbers the
 * rows itself, in a claim:
 *
 *   INSERT INTO outbox_claim (pseq, id) the next numbers for up to a batch
 *   of outbox rows that have no claim yet (by id), moving the counter in
 *   outbox_meta, in one statement of its own transaction, under the
 *   outbox's advisory lock (one active relay).
 *
 * (A claim is a narrow row in a table of its own rather than an UPDATE of
 * the outbox row: an UPDATE writes a new version of the whole row and of
 * all its index entries, about ten times the cost for a 100-byte payload.)
 *
 * The claim's snapshot contains exactly the rows committed before it
 * started; a transaction still open is invisible, and its rows stay
 * unclaimed until a later claim, which numbers them above everything
 * claimed before. So:
 *   - no row is skipped: a row is left behind only while its transaction is
 *     open, and "no claim yet" (not "id > cursor") finds it later;
 *   - pseq follows commit order across claims: a row whose transaction
 *     committed after a claim gets a higher pseq than every row of that
 *     claim. Within one claim (rows whose transactions all committed before
 *     it) the order is by id; such transactions were concurrent, and
 *     Postgres offers no commit order among them without
 *     track_commit_timestamp;
 *   - pseq is the producer_seq the broker's mark is built on: increasing in
 *     publish order, never reused (the counter lives in outbox_meta, moved
 *     in the same transaction), and durable before it is published (the
 *     relay's session runs with synchronous_commit = on, so the claim's
 *     COMMIT is flushed before the first publish of its rows).
 *
 * Then, in pseq order, up to a batch of claimed rows are published as one
 * atomic PUBLISH (one in flight: see relay.c for why) with pseq as
 * producer_seq, and deleted after the broker's durable ack in one short
 * transaction (the table holds only what is waiting: no bloat beyond the
 * batch, and the DELETE is bounded by the batch). That transaction alone
 * commits with synchronous_commit off: the relay goes on without waiting
 * for its WAL flush, since losing it only re-publishes duplicates. A crash between the ack
 * and the DELETE leaves claimed rows that the next relay publishes again:
 * the broker acks them as duplicates (at or below its producer mark).
 *
 * Waking on commit: the contract's statement trigger runs pg_notify on
 * channel ferry_outbox_<schema> for every INSERT; Postgres delivers it at
 * COMMIT (never for a rollback), after the rows are visible. The relay
 * LISTENs (once it holds the lock) before its first claim and waits in
 * poll() on the libpq socket:
 * no queries while idle, apart from one safety re-scan every rescan_ms
 * (10 s) in case a NOTIFY was lost (a connection that dropped).
 *
 * One active relay per outbox: a session-level advisory lock held by the
 * relay's (only) Postgres connection. A second relay blocks in
 * pg_advisory_lock (an async query: no polling) and takes over the moment
 * the first's session ends (a stop, kill -9, a lost connection). Since the
 * relay does all its work on that same connection, a relay that lost its
 * lock also lost the connection, and its next query fails. A publish it had
 * in flight carries rows still in the table, which the new relay publishes
 * again with the same pseq: duplicates to the broker, never out of order.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "pg_internal.h"

#define PGR_DEFAULT_BATCH 1000u
#define PGR_DEFAULT_RESCAN_MS 10000
#define PGR_BACKOFF_FIRST_MS 100
#define PGR_BACKOFF_MAX_MS 5000
#define PGR_PING_IDLE_MS 30000
#define PGR_REPEAT_LOG_MS 30000
#define PGR_FRAME_MARGIN 1024

struct ferry_pg_relay {
    char *conninfo;
    char schema[FERRY__PG_SCHEMA_MAX + 1];
    char *server;
    char *token;
    uint32_t batch;
    int rescan_ms;
    int drain;
    ferry_relay_log_fn log;
    void *log_userdata;
    long crash_after_ack;

    atomic_int stop;
    atomic_int running;
    int wake_rd, wake_wr;
    _Atomic uint64_t n_published, n_duplicates, n_failed, n_purged, n_reconnects, last_seq;
    atomic_int is_active, is_connected;

    PGconn *pg;
    int pg_ever;        /* a Postgres session got as far as the lock once */
    int pg_failures;    /* consecutive failed attempts */
    int64_t pg_next_us; /* no Postgres attempt before this */
    int pg_backoff_ms;
    ferry_conn *conn;
    char producer_id[129];
    int dirty;
    int64_t next_try_us; /* no broker connect or publish before this */
    int backoff_ms;
    int64_t last_io_us;
    int64_t next_rescan_us;
    int connected_once, conn_failures;
    int64_t conn_fail_logged_us;
    int last_error;
    int64_t error_logged_us;
    long batches_acked;
    int64_t first_batch_us;
    int64_t solo_until;

    /* The batch: pointers into res. */
    PGresult *res;
    size_t nrows;
    int64_t *pseqs;
    ferry_msg *msgs;
    ferry_header *hdrs;
    size_t hdrs_cap;
    ferry_ack *acks;
    int64_t bad_pseq;
    char bad_why[256];
};

static int64_t now_us(void)
{
    return ferry__now_us();
}

static void default_log(void *userdata, int level, const char *line)
{
    (void)userdata;
    static const char *const names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    char buf[1400];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    if (level < FERRY_LOG_DEBUG || level > FERRY_LOG_ERROR)
        level = FERRY_LOG_INFO;
    int n = snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ ferry-relay[%d] %s %s\n",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (int)(tv.tv_usec / 1000), (int)getpid(), names[level], line);
    if (n < 0)
        return;
    size_t len = (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1;
    if (len > 0 && buf[len - 1] != '\n')
        buf[len - 1] = '\n';
    ssize_t w = write(STDERR_FILENO, buf, len);
    (void)w;
}

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void
rlog(ferry_pg_relay *r, int level, const char *fmt, ...)
{
    char line[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    r->log(r->log_userdata, level, line);
}

/* PQerrorMessage on one line, without its trailing newline. */
static const char *pgerr(ferry_pg_relay *r, char *buf, size_t len)
{
    snprintf(buf, len, "%s", r->pg ? PQerrorMessage(r->pg) : "no connection");
    for (char *p = buf; *p; p++)
        if (*p == '\n')
            *p = (p[1] ? ' ' : '\0');
    return buf;
}

/* ----- creation ------------------------------------------------------- */

void ferry_pg_relay_free(ferry_pg_relay *r)
{
    if (!r)
        return;
    if (r->wake_rd >= 0)
        close(r->wake_rd);
    if (r->wake_wr >= 0)
        close(r->wake_wr);
    if (r->conninfo) {
        memset(r->conninfo, 0, strlen(r->conninfo)); /* may hold a password */
        free(r->conninfo);
    }
    free(r->server);
    if (r->token) {
        memset(r->token, 0, strlen(r->token));
        free(r->token);
    }
    PQclear(r->res);
    free(r->pseqs);
    free(r->msgs);
    free(r->hdrs);
    free(r->acks);
    free(r);
}

static int new_fail(char *errmsg, size_t errmsg_len, int code, const char *why)
{
    if (errmsg && errmsg_len)
        snprintf(errmsg, errmsg_len, "%s", why);
    return code;
}

int ferry_pg_relay_new(const ferry_pg_relay_options *opts, ferry_pg_relay **out, char *errmsg,
                       size_t errmsg_len)
{
    if (errmsg && errmsg_len)
        errmsg[0] = '\0';
    if (!out)
        return new_fail(errmsg, errmsg_len, FERRY_EINVALID, "out must not be NULL");
    *out = NULL;
    ferry_pg_relay_options copy = FERRY_PG_RELAY_OPTIONS_INIT;
    char bad[160];
    int crc;
    if (opts && (crc = ferry__copy_options(&copy, sizeof copy, opts, FERRY__PG_RELAY_OPTIONS_SIZE_0,
                                           "ferry_pg_relay_options", bad, sizeof bad)) < 0)
        return new_fail(errmsg, errmsg_len, crc, bad);
    if (opts)
        opts = &copy;
    if (!opts || !opts->conninfo || !*opts->conninfo)
        return new_fail(errmsg, errmsg_len, FERRY_EINVALID,
                        "conninfo (a Postgres URL) is required");
    const char *s = ferry__pg_schema(opts->schema);
    if (!s)
        return new_fail(errmsg, errmsg_len, FERRY_EINVALID,
                        "schema must be 1-50 of [a-z0-9_], starting with a letter or '_', not pg_");
    if (opts->batch > PROTO_MAX_BATCH)
        return new_fail(errmsg, errmsg_len, FERRY_EINVALID, "batch must be 1-10000 rows");
    if (opts->rescan_ms != 0 && (opts->rescan_ms < 100 || opts->rescan_ms > 3600000))
        return new_fail(errmsg, errmsg_len, FERRY_EINVALID, "rescan_ms must be 100-3600000");
    if (opts->token && strlen(opts->token) > PROTO_MAX_TOKEN)
        return new_fail(errmsg, errmsg_len, FERRY_EINVALID, "token longer than 1024 bytes");
    char *perr = NULL;
    PQconninfoOption *parsed = PQconninfoParse(opts->conninfo, &perr);
    if (!parsed) {
        char why[600];
        snprintf(why, sizeof why, "not a Postgres connection string: %s",
                 perr ? perr : "out of memory");
        for (char *p = why; *p; p++)
            if (*p == '\n')
                *p = (p[1] ? ' ' : '\0');
        PQfreemem(perr);
        return new_fail(errmsg, errmsg_len, FERRY_EINVALID, why);
    }
    PQconninfoFree(parsed);

    ferry_pg_relay *r = calloc(1, sizeof *r);
    if (!r)
        return new_fail(errmsg, errmsg_len, FERRY_ENOMEM, "out of memory");
    r->wake_rd = r->wake_wr = -1;
    r->conninfo = strdup(opts->conninfo);
    snprintf(r->schema, sizeof r->schema, "%s", s);
    r->server = strdup(opts->server ? opts->server : FERRY_DEFAULT_SERVER);
    r->token = opts->token ? strdup(opts->token) : NULL;
    r->batch = opts->batch ? opts->batch : PGR_DEFAULT_BATCH;
    r->rescan_ms = opts->rescan_ms ? opts->rescan_ms : PGR_DEFAULT_RESCAN_MS;
    r->drain = opts->drain;
    r->log = opts->log ? opts->log : default_log;
    r->log_userdata = opts->log_userdata;
    const char *hook = getenv(FERRY_RELAY_CRASH_ENV);
    if (hook && *hook)
        r->crash_after_ack = strtol(hook, NULL, 10);
    r->pseqs = calloc(r->batch, sizeof *r->pseqs);
    r->msgs = calloc(r->batch, sizeof *r->msgs);
    r->acks = calloc(r->batch, sizeof *r->acks);
    int fds[2];
    if (!r->conninfo || !r->server || (opts->token && !r->token) || !r->pseqs || !r->msgs ||
        !r->acks || pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
        ferry_pg_relay_free(r);
        return new_fail(errmsg, errmsg_len, FERRY_ENOMEM, "out of memory or file descriptors");
    }
    r->wake_rd = fds[0];
    r->wake_wr = fds[1];
    *out = r;
    return 0;
}

void ferry_pg_relay_stop(ferry_pg_relay *r)
{
    if (!r)
        return;
    atomic_store(&r->stop, 1);
    char b = 1;
    ssize_t w = write(r->wake_wr, &b, 1);
    (void)w;
}

void ferry_pg_relay_stats_get(const ferry_pg_relay *r, ferry_relay_stats *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof *out);
    if (!r)
        return;
    ferry_pg_relay *m = (ferry_pg_relay *)r;
    out->active = atomic_load(&m->is_active);
    out->connected = atomic_load(&m->is_connected);
    out->published = atomic_load(&m->n_published);
    out->duplicates = atomic_load(&m->n_duplicates);
    out->failed = atomic_load(&m->n_failed);
    out->purged = atomic_load(&m->n_purged);
    out->reconnects = atomic_load(&m->n_reconnects);
    out->last_seq = atomic_load(&m->last_seq);
}

static int stopping(ferry_pg_relay *r)
{
    return atomic_load(&r->stop);
}

static void drain_pipe(ferry_pg_relay *r)
{
    char buf[64];
    while (read(r->wake_rd, buf, sizeof buf) > 0)
        ;
}

/* ----- Postgres ------------------------------------------------------- */

static void pg_drop(ferry_pg_relay *r)
{
    PQclear(r->res);
    r->res = NULL;
    r->nrows = 0;
    PQfinish(r->pg); /* ends the session: releases the advisory lock */
    r->pg = NULL;
    atomic_store(&r->is_active, 0);
}

static void pg_backoff(ferry_pg_relay *r)
{
    if (!r->pg_backoff_ms)
        r->pg_backoff_ms = PGR_BACKOFF_FIRST_MS;
    r->pg_next_us = now_us() + (int64_t)r->pg_backoff_ms * 1000;
    r->pg_backoff_ms =
        r->pg_backoff_ms * 2 > PGR_BACKOFF_MAX_MS ? PGR_BACKOFF_MAX_MS : r->pg_backoff_ms * 2;
}

/* A query failed: a lost connection drops the session (and the lock) and
 * retries later; anything else is logged and retried with backoff. */
static int pg_failed(ferry_pg_relay *r, const char *what)
{
    char e[600];
    pgerr(r, e, sizeof e);
    if (PQstatus(r->pg) == CONNECTION_BAD) {
        rlog(r, FERRY_LOG_WARN, "lost the Postgres connection (%s: %s); reconnecting", what, e);
        pg_drop(r);
        pg_backoff(r);
        return FERRY_ECLOSED;
    }
    rlog(r, FERRY_LOG_WARN, "%s: %s; retrying with backoff", what, e);
    return FERRY_ESTORAGE;
}

/* Waits for the result of the query sent on r->pg, watching the stop pipe.
 * Returns the result, or NULL when stopped or the connection failed. */
static PGresult *pg_wait_result(ferry_pg_relay *r)
{
    for (;;) {
        if (!PQisBusy(r->pg)) {
            PGresult *res = PQgetResult(r->pg), *more;
            while ((more = PQgetResult(r->pg)) != NULL)
                PQclear(more);
            return res;
        }
        if (stopping(r))
            return NULL;
        struct pollfd p[2] = {{.fd = PQsocket(r->pg), .events = POLLIN},
                              {.fd = r->wake_rd, .events = POLLIN}};
        if (poll(p, 2, 1000) < 0 && errno != EINTR)
            return NULL;
        if (p[1].revents)
            drain_pipe(r);
        if (p[0].revents && !PQconsumeInput(r->pg))
            return NULL;
    }
}

/* Opens the session: connect, install (when missing), producer id, the
 * advisory lock (standing by while another relay holds it), LISTEN. Returns 0,
 * 1 when stopped, 2 to retry later, or a fatal error. */
static int pg_open(ferry_pg_relay *r)
{
    char e[600];
    r->pg = PQconnectdb(r->conninfo);
    if (PQstatus(r->pg) != CONNECTION_OK) {
        pgerr(r, e, sizeof e);
        if (!r->pg_ever) {
            rlog(r, FERRY_LOG_ERROR, "cannot connect to Postgres: %s", e);
            pg_drop(r);
            return FERRY_ECONNECT;
        }
        if (r->pg_failures++ == 0)
            rlog(r, FERRY_LOG_WARN, "cannot connect to Postgres: %s; retrying with backoff", e);
        pg_drop(r);
        pg_backoff(r);
        return 2;
    }
    if (ferry__pg_exec(r->pg, "SET application_name = 'ferry relay'; SET synchronous_commit = on;"
                              " SET statement_timeout = 0; SET lock_timeout = 0") < 0) {
        pg_failed(r, "cannot set up the session");
        pg_drop(r);
        return 2;
    }
    int rc = ferry_pg_outbox_install(r->pg, r->schema);
    if (rc < 0) {
        if (rc == FERRY_EUNSUPPORTED) {
            rlog(r, FERRY_LOG_ERROR,
                 "schema %s holds an outbox of a newer layout than this libferry (%s) knows;"
                 " upgrade the relay",
                 r->schema, ferry_version());
            pg_drop(r);
            return rc;
        }
        pgerr(r, e, sizeof e);
        if (!r->pg_ever || PQstatus(r->pg) != CONNECTION_BAD) {
            rlog(r, FERRY_LOG_ERROR, "cannot install or read the outbox in schema %s: %s",
                 r->schema, e);
            pg_drop(r);
            return FERRY_ESTORAGE;
        }
        pg_failed(r, "cannot read the outbox");
        return 2;
    }
    char sql[512];
    snprintf(sql, sizeof sql, "SELECT value FROM %s.outbox_meta WHERE name = 'producer_id'",
             r->schema);
    if (ferry__pg_value(r->pg, sql, r->producer_id, sizeof r->producer_id) != 0 ||
        !*r->producer_id) {
        pg_failed(r, "cannot read the producer id");
        pg_drop(r);
        return 2;
    }
    snprintf(sql, sizeof sql, "SELECT pg_try_advisory_lock(%d, hashtext('%s.outbox'))",
             FERRY__PG_LOCK_CLASS, r->schema);
    char v[8];
    if (ferry__pg_value(r->pg, sql, v, sizeof v) != 0) {
        pg_failed(r, "cannot take the outbox's advisory lock");
        pg_drop(r);
        return 2;
    }
    if (strcmp(v, "t") != 0) {
        rlog(r, FERRY_LOG_INFO,
             "another relay is active on the outbox in schema %s; standing by to take over when"
             " its session ends",
             r->schema);
        snprintf(sql, sizeof sql, "SELECT pg_advisory_lock(%d, hashtext('%s.outbox'))",
                 FERRY__PG_LOCK_CLASS, r->schema);
        if (!PQsendQuery(r->pg, sql)) {
            pg_failed(r, "cannot wait for the advisory lock");
            pg_drop(r);
            return 2;
        }
        PGresult *res = pg_wait_result(r);
        int ok = res && PQresultStatus(res) == PGRES_TUPLES_OK;
        PQclear(res);
        if (stopping(r)) {
            pg_drop(r);
            return 1;
        }
        if (!ok) {
            pg_failed(r, "waiting for the advisory lock failed");
            pg_drop(r);
            return 2;
        }
        rlog(r, FERRY_LOG_INFO, "the other relay's session ended; taking over schema %s",
             r->schema);
    }
    /* LISTEN only once active: a session that listens but does not read
     * (blocked in pg_advisory_lock) would hold back the server's NOTIFY
     * queue for every other session. The first claim comes after it, so a
     * commit before the LISTEN is found by that claim. */
    snprintf(sql, sizeof sql, "LISTEN ferry_outbox_%s", r->schema);
    if (ferry__pg_exec(r->pg, sql) < 0) {
        pg_failed(r, "cannot LISTEN");
        pg_drop(r);
        return 2;
    }
    if (r->pg_failures)
        rlog(r, FERRY_LOG_INFO, "connected to Postgres after %d failed attempt%s", r->pg_failures,
             r->pg_failures == 1 ? "" : "s");
    r->pg_failures = 0;
    r->pg_backoff_ms = 0;
    r->pg_ever = 1;
    atomic_store(&r->is_active, 1);
    r->dirty = 1;
    r->solo_until = 0;
    return 0;
}

/* ----- the broker ----------------------------------------------------- */

static void conn_drop(ferry_pg_relay *r)
{
    ferry_close(r->conn);
    r->conn = NULL;
    atomic_store(&r->is_connected, 0);
}

static void backoff(ferry_pg_relay *r)
{
    r->next_try_us = now_us() + (int64_t)r->backoff_ms * 1000;
    r->backoff_ms = r->backoff_ms * 2 > PGR_BACKOFF_MAX_MS ? PGR_BACKOFF_MAX_MS : r->backoff_ms * 2;
}

static int conn_open(ferry_pg_relay *r)
{
    ferry_options o = FERRY_OPTIONS_INIT;
    o.token = r->token;
    o.client_name = "ferry relay (postgres)";
    o.producer_id = r->producer_id;
    o.connect_timeout_ms = 5000;
    o.request_timeout_ms = 30000;
    char detail[512];
    int rc = ferry_connect(r->server, &o, &r->conn, detail, sizeof detail);
    int64_t now = now_us();
    if (rc == 0) {
        atomic_store(&r->is_connected, 1);
        if (r->connected_once)
            atomic_fetch_add(&r->n_reconnects, 1);
        rlog(r, FERRY_LOG_INFO, "connected to %s%s", r->server,
             r->conn_failures ? " after failed attempts" : "");
        r->connected_once = 1;
        r->conn_failures = 0;
        r->last_io_us = now;
        r->dirty = 1;
        return 0;
    }
    if (rc == FERRY_EAUTH || rc == FERRY_EVERSION || rc == FERRY_EINVALID) {
        rlog(r, FERRY_LOG_ERROR, "cannot connect to %s: %s: %s; giving up", r->server,
             ferry_strerror(rc), detail);
        return rc;
    }
    if (r->conn_failures == 0 || now - r->conn_fail_logged_us >= PGR_REPEAT_LOG_MS * 1000LL) {
        rlog(r, FERRY_LOG_WARN, "cannot connect to %s: %s%s%s; retrying with backoff", r->server,
             ferry_strerror(rc), *detail ? ": " : "", detail);
        r->conn_fail_logged_us = now;
    }
    r->conn_failures++;
    backoff(r);
    return 0;
}

/* ----- claim, read, publish, delete ------------------------------------ */

/* Numbers up to a batch of committed, unclaimed rows (see the top of the
 * file). Returns the rows claimed, or an error. */
static int claim(ferry_pg_relay *r)
{
    char *sql = ferry__pg_sql(
        r->schema,
        "WITH c AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM"
        " (SELECT id FROM @S.outbox o WHERE NOT EXISTS"
        "   (SELECT 1 FROM @S.outbox_claim k WHERE k.id = o.id) ORDER BY id LIMIT %u) s),"
        " m AS (UPDATE @S.outbox_meta SET value = (value::bigint + (SELECT count(*) FROM c))::text"
        "  WHERE name = 'relay_seq' RETURNING value::bigint - (SELECT count(*) FROM c) AS base)"
        " INSERT INTO @S.outbox_claim (pseq, id) SELECT m.base + c.n, c.id FROM c, m",
        r->batch);
    if (!sql)
        return FERRY_ENOMEM;
    PGresult *res = PQexec(r->pg, sql);
    free(sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        PQclear(res);
        return pg_failed(r, "cannot claim outbox rows");
    }
    int n = atoi(PQcmdTuples(res));
    PQclear(res);
    return n;
}

static int64_t be64(const char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | (unsigned char)p[i];
    return (int64_t)v;
}

/* Reads up to a batch of claimed rows in pseq order into r->msgs (pointing
 * into r->res). Returns the rows, or an error. A row whose headers cannot
 * be sent ends the batch: alone, it sets r->bad_pseq. */
static int load_batch(ferry_pg_relay *r)
{
    PQclear(r->res);
    r->res = NULL;
    r->nrows = 0;
    r->bad_pseq = 0;
    uint32_t limit = r->batch;
    char *sql = ferry__pg_sql(
        r->schema,
        "SELECT k.pseq, o.msg_id, o.topic, o.key, o.payload, o.deliver_at_ms, h.key, h.value"
        " FROM (SELECT pseq, id FROM @S.outbox_claim ORDER BY pseq LIMIT %u) k"
        " JOIN @S.outbox o ON o.id = k.id"
        " LEFT JOIN LATERAL json_each_text(o.headers) WITH ORDINALITY AS h(key, value, ord)"
        " ON true ORDER BY k.pseq, h.ord",
        limit);
    if (!sql)
        return FERRY_ENOMEM;
    r->res = PQexecParams(r->pg, sql, 0, NULL, NULL, NULL, NULL, 1);
    free(sql);
    if (PQresultStatus(r->res) != PGRES_TUPLES_OK) {
        PQclear(r->res);
        r->res = NULL;
        return pg_failed(r, "cannot read the outbox");
    }
    int nt = PQntuples(r->res);
    if ((size_t)nt > r->hdrs_cap) {
        ferry_header *nh = realloc(r->hdrs, (size_t)nt * sizeof *nh);
        if (!nh)
            return FERRY_ENOMEM;
        r->hdrs = nh;
        r->hdrs_cap = (size_t)nt;
    }
    ferry_server_info si;
    ferry_server_info_get(r->conn, &si);
    size_t frame_left =
        si.max_frame_bytes > PGR_FRAME_MARGIN ? si.max_frame_bytes - PGR_FRAME_MARGIN : 0;
    size_t max_rows = si.max_batch && si.max_batch < r->batch ? si.max_batch : r->batch;
    if (r->solo_until)
        max_rows = 1;
    size_t nh = 0;
    PGresult *res = r->res;
    for (int t = 0; t < nt;) {
        int64_t pseq = be64(PQgetvalue(res, t, 0));
        ferry_msg m = {0};
        m.id = PQgetvalue(res, t, 1);
        m.topic = PQgetvalue(res, t, 2);
        if (!PQgetisnull(res, t, 3)) {
            m.key = PQgetvalue(res, t, 3);
            m.key_len = (size_t)PQgetlength(res, t, 3);
        }
        m.payload = PQgetvalue(res, t, 4);
        m.payload_len = (size_t)PQgetlength(res, t, 4);
        m.deliver_at_ms = be64(PQgetvalue(res, t, 5));
        m.producer_seq = (uint64_t)pseq;
        size_t first = nh, bytes = strlen(m.id) + strlen(m.topic) + m.key_len + m.payload_len + 64;
        const char *bad = NULL;
        int u = t;
        for (; u < nt && be64(PQgetvalue(res, u, 0)) == pseq; u++) {
            if (PQgetisnull(res, u, 6))
                continue;
            ferry_header *h = &r->hdrs[nh++];
            h->name = PQgetvalue(res, u, 6);
            h->value = PQgetisnull(res, u, 7) ? "" : PQgetvalue(res, u, 7);
            h->value_len = PQgetisnull(res, u, 7) ? 0 : (size_t)PQgetlength(res, u, 7);
            size_t nl = strlen(h->name);
            bytes += nl + h->value_len + 8;
            if (nl < 1 || nl > PROTO_MAX_HEADER_NAME)
                bad = "headers: a header name must be 1-255 bytes";
            else if (h->value_len > PROTO_MAX_HEADER_VALUE)
                bad = "headers: a header value is longer than 65535 bytes";
        }
        if (nh - first > PROTO_MAX_HEADERS)
            bad = "headers: more than 64";
        if (bad) {
            if (r->nrows == 0) {
                r->bad_pseq = pseq;
                snprintf(r->bad_why, sizeof r->bad_why, "%s", bad);
                r->pseqs[0] = pseq;
            }
            break; /* the batch ends before it */
        }
        if (r->nrows > 0 && (bytes > frame_left || r->nrows >= max_rows))
            break;
        frame_left = bytes > frame_left ? 0 : frame_left - bytes;
        m.headers = nh > first ? &r->hdrs[first] : NULL;
        m.header_count = nh - first;
        r->pseqs[r->nrows] = pseq;
        r->msgs[r->nrows++] = m;
        t = u;
        if (r->nrows >= max_rows)
            break;
    }
    return r->bad_pseq ? 1 : (int)r->nrows;
}

static int mark_failed(ferry_pg_relay *r, int64_t pseq, const char *why)
{
    char sql[1024], ps[32];
    snprintf(sql, sizeof sql,
             "WITH k AS (DELETE FROM %s.outbox_claim WHERE pseq = $2::bigint RETURNING pseq, id),"
             " o AS (DELETE FROM %s.outbox o USING k WHERE o.id = k.id RETURNING o.id, o.msg_id,"
             "  o.topic, o.key, o.headers, o.payload, o.deliver_at_ms, o.created_ms, k.pseq)"
             " INSERT INTO %s.outbox_failed SELECT o.*, $1, " FERRY__PG_NOW_MS_SQL " FROM o",
             r->schema, r->schema, r->schema);
    snprintf(ps, sizeof ps, "%" PRId64, pseq);
    const char *vals[2] = {why, ps};
    PGresult *res = PQexecParams(r->pg, sql, 2, NULL, vals, NULL, NULL, 0);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    if (!ok)
        return pg_failed(r, "cannot mark a row failed");
    rlog(r, FERRY_LOG_ERROR,
         "outbox row pseq %" PRId64 " can never be published (%s); marked failed and skipped", pseq,
         why);
    atomic_fetch_add(&r->n_failed, 1);
    return 0;
}

/* Deletes the published batch and records the progress, one transaction. */
static int finish_batch(ferry_pg_relay *r)
{
    size_t n = r->nrows;
    int64_t lo = r->pseqs[0], hi = r->pseqs[n - 1];
    /* Every claim up to hi is done: published now, or (an outbox row
     * deleted by someone else, outside the contract) nothing to publish. */
    /* Not waited for on disk (synchronous_commit off): lost in a crash of
     * Postgres, it leaves claimed rows whose pseq the broker's producer
     * mark already covers, which the next relay publishes again as
     * duplicates and deletes. WAL order keeps the next claim's COMMIT,
     * which is flushed, after this one. */
    char *sql = ferry__pg_sql(r->schema,
                              "BEGIN; SET LOCAL synchronous_commit = off;"
                              " DELETE FROM @S.outbox o USING @S.outbox_claim k WHERE o.id = k.id"
                              " AND k.pseq BETWEEN %" PRId64 " AND %" PRId64 ";"
                              " DELETE FROM @S.outbox_claim WHERE pseq <= %" PRId64 ";"
                              " UPDATE @S.outbox_meta SET value = CASE name"
                              "  WHEN 'sent' THEN (value::bigint + %zu)::text"
                              "  WHEN 'last_sent_seq' THEN '%" PRId64 "'"
                              "  ELSE " FERRY__PG_NOW_MS_SQL "::text END"
                              " WHERE name IN ('sent', 'last_sent_seq', 'last_sent_ms'); COMMIT",
                              lo, hi, hi, n, hi);
    if (!sql)
        return FERRY_ENOMEM;
    int rc = ferry__pg_exec(r->pg, sql);
    free(sql);
    if (rc < 0) {
        rc = pg_failed(r, "cannot delete the rows the broker acked");
        if (r->pg && PQtransactionStatus(r->pg) != PQTRANS_IDLE)
            PQclear(PQexec(r->pg, "ROLLBACK")); /* the BEGIN above is still open */
        return rc;
    }
    return 0;
}

static int is_row_error(int rc)
{
    return rc == FERRY_EINVALID_TOPIC || rc == FERRY_EINVALID_ID ||
           rc == FERRY_EMESSAGE_TOO_LARGE || rc == FERRY_EINVALID || rc == FERRY_EFRAME_TOO_LARGE;
}

static int is_conn_error(int rc)
{
    return rc == FERRY_ECLOSED || rc == FERRY_EIO || rc == FERRY_EPROTOCOL ||
           rc == FERRY_ETIMEOUT || rc == FERRY_ENOMEM || rc == FERRY_ECONNECT;
}

/* Takes the NOTIFYs libpq has read. Returns 1 when there was one. */
static int take_notifies(ferry_pg_relay *r)
{
    int got = 0;
    PGnotify *nt;
    while (r->pg && (nt = PQnotifies(r->pg)) != NULL) {
        got = 1;
        PQfreemem(nt);
    }
    return got;
}

/* Claims, reads, publishes and deletes one batch. Returns the rows done
 * (> 0), 0 when none are waiting, or an error. */
static int step(ferry_pg_relay *r)
{
    /* A NOTIFY read by now is for a commit that the claim below sees:
     * dropping it keeps libpq's queue short through a long backlog. */
    take_notifies(r);
    int n = load_batch(r);
    if (n == 0) {
        int c = claim(r);
        if (c <= 0)
            return c;
        n = load_batch(r);
    }
    if (n <= 0)
        return n;
    if (!r->first_batch_us)
        r->first_batch_us = now_us();
    if (r->bad_pseq) {
        int rc = mark_failed(r, r->bad_pseq, r->bad_why);
        return rc < 0 ? rc : 1;
    }
    int64_t lo = r->pseqs[0], hi = r->pseqs[n - 1];
    if (r->solo_until && lo > r->solo_until)
        r->solo_until = 0;
    int rc = ferry_publish_batch(r->conn, r->msgs, (size_t)n, r->acks);
    if (rc < 0 && is_row_error(rc) && n == 1) {
        char why[FERRY__ERRMSG_BYTES + 64];
        snprintf(why, sizeof why, "%s: %s", ferry_strerror(rc), ferry_errmsg(r->conn));
        rc = mark_failed(r, lo, why);
        return rc < 0 ? rc : 1;
    }
    if (rc < 0 && is_row_error(rc)) {
        r->solo_until = hi;
        rlog(r, FERRY_LOG_WARN,
             "the broker refused the batch of pseq %" PRId64 "-%" PRId64
             " (%s: %s); publishing its rows one at a time",
             lo, hi, ferry_strerror(rc), ferry_errmsg(r->conn));
        return n;
    }
    if (rc < 0) {
        const char *detail = r->conn ? ferry_errmsg(r->conn) : "";
        int64_t now = now_us();
        if (rc != r->last_error || now - r->error_logged_us >= PGR_REPEAT_LOG_MS * 1000LL) {
            rlog(r, FERRY_LOG_WARN,
                 "publishing %d rows from pseq %" PRId64 " failed: %s%s%s; retrying with backoff",
                 n, lo, ferry_strerror(rc), *detail ? ": " : "", detail);
            r->last_error = rc;
            r->error_logged_us = now;
        }
        if (is_conn_error(rc) || (r->conn && r->conn->dead))
            conn_drop(r);
        backoff(r);
        return n;
    }
    r->last_io_us = now_us();
    if (r->crash_after_ack > 0 && ++r->batches_acked >= r->crash_after_ack) {
        rlog(r, FERRY_LOG_WARN,
             "test hook " FERRY_RELAY_CRASH_ENV ": exiting after the broker acked pseq %" PRId64
             "-%" PRId64 ", before deleting them",
             lo, hi);
        _exit(9);
    }
    rc = finish_batch(r);
    if (rc < 0)
        return rc;
    uint64_t dups = 0;
    for (int i = 0; i < n; i++)
        dups += r->acks[i].duplicate != 0;
    atomic_fetch_add(&r->n_published, (uint64_t)n);
    atomic_fetch_add(&r->n_purged, (uint64_t)n);
    atomic_store(&r->last_seq, (uint64_t)hi);
    if (dups) {
        atomic_fetch_add(&r->n_duplicates, dups);
        rlog(r, FERRY_LOG_INFO,
             "%" PRIu64 " of pseq %" PRId64 "-%" PRId64
             " were already stored (a re-publish after a crash): acked as duplicates",
             dups, lo, hi);
    }
    if (r->last_error) {
        rlog(r, FERRY_LOG_INFO, "publishing again from pseq %" PRId64, lo);
        r->last_error = 0;
    }
    r->backoff_ms = PGR_BACKOFF_FIRST_MS;
    PQclear(r->res);
    r->res = NULL;
    return n;
}

/* ----- the loop ------------------------------------------------------- */

static void wait_for_work(ferry_pg_relay *r, int64_t deadline_us)
{
    for (;;) {
        if (stopping(r))
            return;
        if (take_notifies(r)) {
            r->dirty = 1;
            return;
        }
        int64_t left = deadline_us - now_us();
        if (left <= 0)
            return;
        struct pollfd p[3] = {{.fd = r->wake_rd, .events = POLLIN},
                              {.fd = r->pg ? PQsocket(r->pg) : -1, .events = POLLIN},
                              {.fd = r->conn ? r->conn->fd : -1, .events = POLLIN}};
        int n = poll(p, 3, (int)((left + 999) / 1000));
        if (n <= 0)
            continue;
        if (p[0].revents)
            drain_pipe(r);
        if (p[1].revents && r->pg) {
            if (!PQconsumeInput(r->pg)) {
                pg_failed(r, "waiting for NOTIFY");
                if (r->pg && PQstatus(r->pg) == CONNECTION_BAD)
                    pg_drop(r);
                return;
            }
        }
        if (p[2].revents && r->conn) {
            int rc = ferry_poll(r->conn);
            if (rc < 0) {
                rlog(r, FERRY_LOG_WARN, "lost the broker connection: %s: %s", ferry_strerror(rc),
                     ferry_errmsg(r->conn));
                conn_drop(r);
                r->next_try_us = now_us();
                return;
            }
        }
    }
}

static int loop(ferry_pg_relay *r)
{
    r->backoff_ms = PGR_BACKOFF_FIRST_MS;
    r->next_try_us = now_us();
    r->pg_next_us = now_us();
    r->next_rescan_us = now_us() + (int64_t)r->rescan_ms * 1000;
    int announced = 0;
    while (!stopping(r)) {
        int64_t now = now_us();
        if (!r->pg && now >= r->pg_next_us) {
            int rc = pg_open(r);
            if (rc < 0)
                return rc;
            if (rc == 1)
                return 0;
            if (rc == 0 && !announced) {
                rlog(r, FERRY_LOG_INFO,
                     "active on the outbox in schema %s: relaying to %s as producer %s (batch %u,"
                     " woken by NOTIFY, re-scan every %d ms)",
                     r->schema, r->server, r->producer_id, r->batch, r->rescan_ms);
                announced = 1;
            }
        }
        if (r->pg && !r->conn && now_us() >= r->next_try_us) {
            int rc = conn_open(r);
            if (rc < 0)
                return rc;
        }
        if (r->pg && r->conn && r->dirty && now_us() >= r->next_try_us) {
            int n = step(r);
            if (n == 0) {
                r->dirty = 0;
                r->next_rescan_us = now_us() + (int64_t)r->rescan_ms * 1000;
                if (r->drain) {
                    uint64_t done = atomic_load(&r->n_published);
                    double secs =
                        r->first_batch_us ? (double)(now_us() - r->first_batch_us) / 1e6 : 0.0;
                    rlog(r, FERRY_LOG_INFO,
                         "drained: relayed %" PRIu64 " rows in %.3f s (%.0f msg/s); none waiting",
                         done, secs, secs > 0 ? (double)done / secs : 0.0);
                    return 0;
                }
            } else if (n < 0 && n != FERRY_ECLOSED) {
                backoff(r);
            }
            if (r->dirty && r->pg && r->conn && now_us() >= r->next_try_us)
                continue;
        }
        now = now_us();
        if (now >= r->next_rescan_us) {
            r->dirty = 1;
            r->next_rescan_us = now + (int64_t)r->rescan_ms * 1000;
            continue;
        }
        if (r->conn && !r->dirty && now - r->last_io_us >= PGR_PING_IDLE_MS * 1000LL) {
            int rc = ferry_ping(r->conn, NULL);
            r->last_io_us = now_us();
            if (rc < 0) {
                rlog(r, FERRY_LOG_WARN, "the broker connection failed while idle: %s: %s",
                     ferry_strerror(rc), ferry_errmsg(r->conn));
                conn_drop(r);
                r->next_try_us = now;
            }
        }
        int64_t next = r->next_rescan_us;
        if (r->conn && r->last_io_us + PGR_PING_IDLE_MS * 1000LL < next)
            next = r->last_io_us + PGR_PING_IDLE_MS * 1000LL;
        if ((!r->conn || r->dirty) && r->next_try_us < next)
            next = r->next_try_us;
        if (!r->pg && r->pg_next_us < next)
            next = r->pg_next_us;
        wait_for_work(r, next);
    }
    return 0;
}

int ferry_pg_relay_run(ferry_pg_relay *r)
{
    if (!r)
        return FERRY_EINVALID;
    int expected = 0;
    if (!atomic_compare_exchange_strong(&r->running, &expected, 1))
        return FERRY_EBUSY;
    int rc = loop(r);
    if (stopping(r))
        rlog(r, FERRY_LOG_INFO, "stopped; relayed %" PRIu64 " rows", atomic_load(&r->n_published));
    conn_drop(r);
    pg_drop(r);
    atomic_store(&r->running, 0);
    return rc;
}
