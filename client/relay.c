/*
 * relay.c - the outbox relay: forwards the rows of an application's
 * ferry_outbox table to ferryd, in order, and marks them sent once the
 * broker acknowledged them durably (ferry.h "The outbox relay",
 * docs/OUTBOX.md).
 *
 * One pass of the loop:
 *   1. read up to `batch` unsent rows above the cursor, in seq order (the
 *      partial index ferry_outbox_unsent makes this O(batch));
 *   2. make sure they are durable in the application's database (fdatasync
 *      of its WAL), so that a power loss cannot take back a row that was
 *      already published and let a later row reuse its seq;
 *   3. publish them as one atomic PUBLISH (ferry_publish_batch) under the
 *      database's producer id, each with its msg_id as the message id and
 *      its seq as producer_seq;
 *   4. in one transaction, mark them sent (sent_ms, broker_seq); advance the
 *      cursor.
 * A crash between 3 and 4 leaves the rows unsent: the next relay publishes
 * them again, and the broker acks them as duplicates (below its producer
 * high-water mark; within its dedupe window also by message id).
 *
 * Why one atomic batch in flight rather than a window of single publishes:
 * the broker's producer mark only moves up. With several publishes in
 * flight, a transient failure of an early one (storage full) followed by the
 * success of a later one would leave the early row below the mark, and its
 * retry would be acked as a duplicate without being stored: a lost message.
 * An atomic batch is stored whole or not at all, and the next is sent only
 * after its outcome is known, so a retry always resends everything above
 * the mark. One frame per batch is also cheaper for both sides than one per
 * message; the broker's group commit makes the round trip one fsync.
 *
 * A row the broker can never accept (an invalid topic or id, a message over
 * the broker's maximum, malformed headers) would stall the outbox forever:
 * when a batch is refused for such a reason its rows are retried one at a
 * time, and each row refused on its own is marked failed (sent_ms set,
 * error says why; never published, kept until an operator deals with it).
 * Everything else (no broker, storage full, permission denied) is retried
 * with backoff, in order: nothing is skipped.
 *
 * Waiting for work without spinning: PRAGMA data_version changes when
 * another connection commits to the database; it is read every
 * poll_interval_ms (default 5 ms; on a WAL database a read lock on the WAL
 * index taken and released, three system calls: about 1.3% of a core at
 * 5 ms on a small VM, see docs/OUTBOX.md) and ferry_relay_notify wakes the
 * loop at once through a pipe. The same poll() watches the broker
 * connection, so a broker that goes away is noticed while idle.
 *
 * One active relay per database: an exclusive flock on "<db>.relay.lock",
 * taken before anything else and held until ferry_relay_run returns (or the
 * process dies: the kernel releases it). A second relay polls the lock every
 * RELAY_LOCK_POLL_MS and takes over when it is released. Two relays
 * publishing under one producer id would otherwise make the broker drop each
 * other's messages as duplicates.
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
#include <sys/file.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "outbox_internal.h"

#define RELAY_DEFAULT_BATCH 1000u
#define RELAY_DEFAULT_RETENTION_MS (60 * 60 * 1000)
#define RELAY_DEFAULT_POLL_MS 5
#define RELAY_LAG_LOG_MS 10000
#define RELAY_BACKOFF_FIRST_MS 100
#define RELAY_BACKOFF_MAX_MS 5000
#define RELAY_LOCK_POLL_MS 100
#define RELAY_BUSY_TIMEOUT_MS 5000
#define RELAY_PING_IDLE_MS 30000
/* A connection failure is logged when it first happens, then at most this
 * often while it lasts. */
#define RELAY_REPEAT_LOG_MS 30000
/* Purging: rows per DELETE (one short write transaction each), at most
 * RELAY_PURGE_CHUNKS of them per pass; passes every RELAY_PURGE_EVERY_MS, or
 * at once again while a pass found more than it could delete. */
#define RELAY_PURGE_CHUNK 1000
#define RELAY_PURGE_CHUNKS 20
#define RELAY_PURGE_EVERY_MS 1000
/* Bytes kept free below the broker's max frame when sizing a batch. */
#define RELAY_FRAME_MARGIN 1024

/* One row of the batch being published; offsets into the arena. */
struct rrow {
    int64_t seq;
    size_t id, topic, key, payload;
    size_t key_len, payload_len;
    size_t hdr_first, hdr_count;
    int64_t deliver_at_ms;
};

struct rhdr {
    size_t name, value, value_len;
};

struct ferry_relay {
    /* Options, copied. */
    char *db_path;
    char *lock_path;
    char *wal_path;
    char *server;
    char *token;
    uint32_t batch;
    int64_t retention_ms; /* < 0: keep forever */
    int poll_ms;
    int drain;
    ferry_relay_log_fn log;
    void *log_userdata;
    long crash_after_ack; /* test hook: FERRY_RELAY_CRASH_AFTER_ACK */

    /* Cross-thread. */
    atomic_int stop;
    atomic_int notified;
    atomic_int running;
    int wake_rd, wake_wr;
    _Atomic uint64_t n_published, n_duplicates, n_failed, n_purged, n_reconnects, last_seq;
    atomic_int is_active, is_connected;

    /* The run's state: only the thread in ferry_relay_run touches these. */
    int lock_fd;
    sqlite3 *db;
    sqlite3_stmt *q_read, *q_hdrs, *q_mark, *q_fail, *q_scan, *q_purge, *q_dv;
    ferry_conn *conn;
    char producer_id[129];
    int64_t cursor;     /* every row at or below it is done (sent or failed) */
    int64_t solo_until; /* publish one row at a time up to this seq */
    int64_t data_version;
    int dirty; /* rows may be waiting: read before waiting again */
    int backoff_ms;
    int64_t next_try_us; /* no connect or publish attempt before this */
    int64_t last_io_us;  /* last exchange with the broker */
    int connected_once;
    int conn_failures;
    int64_t conn_fail_logged_us;
    int last_error; /* of the last failed publish, to log changes only */
    int64_t error_logged_us;
    int64_t purge_after; /* every row at or below it was purged or is kept (failed) */
    int64_t next_purge_us;
    int64_t next_lag_us;
    uint64_t lag_base_published;
    int64_t lag_base_us;
    long batches_acked;
    int js_recovered;       /* over JetStream: js_recover ran on this connection */
    int64_t first_batch_us; /* when the first batch was read, for --drain */

    /* The batch: rows, their headers, and the bytes they point into. */
    uint8_t *arena;
    size_t alen, acap;
    struct rrow *rows;
    size_t nrows;
    struct rhdr *hdrs;
    size_t nhdrs, hdrs_cap;
    ferry_msg *msgs;
    ferry_header *mhdrs;
    ferry_ack *acks;
    /* A row found unpublishable while reading (bad headers). */
    int64_t bad_seq;
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
rlog(ferry_relay *r, int level, const char *fmt, ...)
{
    char line[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    r->log(r->log_userdata, level, line);
}

static char *dup_str(const char *s)
{
    return s ? strdup(s) : NULL;
}

static char *concat(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);
    if (s) {
        memcpy(s, a, la);
        memcpy(s + la, b, lb + 1);
    }
    return s;
}

/* "1.5 s", "250 ms", "3 min", "2.0 h": for log lines. */
static void fmt_age(char *buf, size_t len, int64_t ms)
{
    if (ms < 1000)
        snprintf(buf, len, "%" PRId64 " ms", ms);
    else if (ms < 120000)
        snprintf(buf, len, "%.1f s", (double)ms / 1000.0);
    else if (ms < 2 * 3600000)
        snprintf(buf, len, "%.1f min", (double)ms / 60000.0);
    else
        snprintf(buf, len, "%.1f h", (double)ms / 3600000.0);
}

/* A duration as it would be typed: "1h", "90s", "300ms". */
static void fmt_duration(char *buf, size_t len, int64_t ms)
{
    if (ms % 3600000 == 0)
        snprintf(buf, len, "%" PRId64 "h", ms / 3600000);
    else if (ms % 60000 == 0)
        snprintf(buf, len, "%" PRId64 "m", ms / 60000);
    else if (ms % 1000 == 0)
        snprintf(buf, len, "%" PRId64 "s", ms / 1000);
    else
        snprintf(buf, len, "%" PRId64 "ms", ms);
}

/* ----- creation ------------------------------------------------------- */

void ferry_relay_free(ferry_relay *r)
{
    if (!r)
        return;
    if (r->wake_rd >= 0)
        close(r->wake_rd);
    if (r->wake_wr >= 0)
        close(r->wake_wr);
    free(r->db_path);
    free(r->lock_path);
    free(r->wal_path);
    free(r->server);
    if (r->token) {
        memset(r->token, 0, strlen(r->token));
        free(r->token);
    }
    free(r->arena);
    free(r->rows);
    free(r->hdrs);
    free(r->msgs);
    free(r->mhdrs);
    free(r->acks);
    free(r);
}

static int new_fail(char *errmsg, size_t errmsg_len, int code, const char *why)
{
    if (errmsg && errmsg_len)
        snprintf(errmsg, errmsg_len, "%s", why);
    return code;
}

int ferry_relay_new(const ferry_relay_options *opts, ferry_relay **out, char *errmsg,
                    size_t errmsg_len)
{
    if (errmsg && errmsg_len)
        errmsg[0] = '\0';
    if (!out)
        return new_fail(errmsg, errmsg_len, FERRY_EINVALID, "out must not be NULL");
    *out = NULL;
    ferry_relay_options copy = FERRY_RELAY_OPTIONS_INIT;
    char why[160];
    int crc;
    if (opts && (crc = ferry__copy_options(&copy, sizeof copy, opts, FERRY__RELAY_OPTIONS_SIZE_0,
                                           "ferry_relay_options", why, sizeof why)) < 0)
        return new_fail(errmsg, errmsg_len, crc, why);
    if (opts)
        opts = &copy;
    if (!opts || !opts->db_path || !*opts->db_path)
        return new_fail(errmsg, errmsg_len, FERRY_EINVALID, "db_path is required");
    if (opts->batch > PROTO_MAX_BATCH)
        return new_fail(errmsg, errmsg_len, FERRY_EINVALID, "batch must be 1-10000 rows");
    if (opts->poll_interval_ms < 0 || opts->poll_interval_ms > 10000)
        return new_fail(errmsg, errmsg_len, FERRY_EINVALID, "poll_interval_ms must be 0-10000");
    if (opts->retention_ms < FERRY_RELAY_KEEP_FOREVER)
        return new_fail(errmsg, errmsg_len, FERRY_EINVALID,
                        "retention_ms must be > 0, 0 (the default) or FERRY_RELAY_KEEP_FOREVER");
    if (opts->token && strlen(opts->token) > PROTO_MAX_TOKEN)
        return new_fail(errmsg, errmsg_len, FERRY_EINVALID, "token longer than 1024 bytes");

    ferry_relay *r = calloc(1, sizeof *r);
    if (!r)
        return new_fail(errmsg, errmsg_len, FERRY_ENOMEM, "out of memory");
    r->wake_rd = r->wake_wr = -1;
    r->lock_fd = -1;
    r->db_path = dup_str(opts->db_path);
    r->lock_path = concat(opts->db_path, FERRY_RELAY_LOCK_SUFFIX);
    r->wal_path = concat(opts->db_path, "-wal");
    r->server = dup_str(opts->server ? opts->server : FERRY_DEFAULT_SERVER);
    r->token = dup_str(opts->token);
    r->batch = opts->batch ? opts->batch : RELAY_DEFAULT_BATCH;
    r->retention_ms = opts->retention_ms == 0 ? RELAY_DEFAULT_RETENTION_MS : opts->retention_ms;
    r->poll_ms = opts->poll_interval_ms ? opts->poll_interval_ms : RELAY_DEFAULT_POLL_MS;
    r->drain = opts->drain;
    r->log = opts->log ? opts->log : default_log;
    r->log_userdata = opts->log_userdata;
    const char *hook = getenv(FERRY_RELAY_CRASH_ENV);
    if (hook && *hook)
        r->crash_after_ack = strtol(hook, NULL, 10);

    int fds[2];
    if (!r->db_path || !r->lock_path || !r->wal_path || !r->server || (opts->token && !r->token) ||
        pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
        ferry_relay_free(r);
        return new_fail(errmsg, errmsg_len, FERRY_ENOMEM, "out of memory or file descriptors");
    }
    r->wake_rd = fds[0];
    r->wake_wr = fds[1];
    *out = r;
    return 0;
}

/* ----- cross-thread calls --------------------------------------------- */

static void wake(ferry_relay *r)
{
    char b = 1;
    ssize_t w = write(r->wake_wr, &b, 1); /* a full pipe is awake already */
    (void)w;
}

void ferry_relay_stop(ferry_relay *r)
{
    if (!r)
        return;
    atomic_store(&r->stop, 1);
    wake(r);
}

void ferry_relay_notify(ferry_relay *r)
{
    if (!r)
        return;
    if (atomic_exchange(&r->notified, 1) == 0)
        wake(r);
}

void ferry_relay_stats_get(const ferry_relay *r, ferry_relay_stats *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof *out);
    if (!r)
        return;
    ferry_relay *m = (ferry_relay *)r; /* atomics are read only */
    out->active = atomic_load(&m->is_active);
    out->connected = atomic_load(&m->is_connected);
    out->published = atomic_load(&m->n_published);
    out->duplicates = atomic_load(&m->n_duplicates);
    out->failed = atomic_load(&m->n_failed);
    out->purged = atomic_load(&m->n_purged);
    out->reconnects = atomic_load(&m->n_reconnects);
    out->last_seq = atomic_load(&m->last_seq);
}

static int stopping(ferry_relay *r)
{
    return atomic_load(&r->stop);
}

static void drain_pipe(ferry_relay *r)
{
    char buf[64];
    while (read(r->wake_rd, buf, sizeof buf) > 0)
        ;
}

/* Sleeps until deadline_us, returning early on a stop or a notify. */
static void nap(ferry_relay *r, int64_t deadline_us)
{
    for (;;) {
        if (stopping(r))
            return;
        int64_t left = deadline_us - now_us();
        if (left <= 0)
            return;
        struct pollfd p = {.fd = r->wake_rd, .events = POLLIN};
        int n = poll(&p, 1, (int)((left + 999) / 1000));
        if (n > 0) {
            drain_pipe(r);
            if (atomic_load(&r->notified))
                return;
        }
    }
}

/* ----- the lock ------------------------------------------------------- */

/* Takes the database's relay lock, waiting while another relay holds it.
 * Returns 0 when held, 1 when stopped while waiting, or an error. */
static int lock_acquire(ferry_relay *r)
{
    /* A mistyped --db must not leave a lock file behind for a database
     * that does not exist. */
    if (access(r->db_path, F_OK) != 0) {
        rlog(r, FERRY_LOG_ERROR, "cannot open the database %s: %s", r->db_path, strerror(errno));
        return FERRY_ESTORAGE;
    }
    r->lock_fd = open(r->lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (r->lock_fd < 0) {
        rlog(r, FERRY_LOG_ERROR, "cannot open the lock file %s: %s", r->lock_path, strerror(errno));
        return FERRY_ESTORAGE;
    }
    int waited = 0;
    for (;;) {
        if (flock(r->lock_fd, LOCK_EX | LOCK_NB) == 0)
            break;
        if (errno != EWOULDBLOCK && errno != EINTR) {
            rlog(r, FERRY_LOG_ERROR, "cannot lock %s: %s", r->lock_path, strerror(errno));
            return FERRY_ESTORAGE;
        }
        if (!waited) {
            char pid[32] = "";
            ssize_t n = pread(r->lock_fd, pid, sizeof pid - 1, 0);
            pid[n > 0 ? n : 0] = '\0';
            pid[strcspn(pid, "\n")] = '\0';
            rlog(r, FERRY_LOG_INFO,
                 "another relay (pid %s) is active on %s; standing by to take over when it stops",
                 *pid ? pid : "?", r->db_path);
            waited = 1;
        }
        nap(r, now_us() + RELAY_LOCK_POLL_MS * 1000);
        atomic_store(&r->notified, 0);
        if (stopping(r))
            return 1;
    }
    /* Who holds it, for the standby's log line and `ferry relay --status`. */
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    if (ftruncate(r->lock_fd, 0) == 0) {
        ssize_t w = pwrite(r->lock_fd, pid, (size_t)n, 0);
        (void)w;
    }
    atomic_store(&r->is_active, 1);
    if (waited)
        rlog(r, FERRY_LOG_INFO, "the other relay stopped; taking over %s", r->db_path);
    return 0;
}

static void lock_release(ferry_relay *r)
{
    if (r->lock_fd < 0)
        return;
    /* The pid written there was informative only; a failure is harmless. */
    if (atomic_load(&r->is_active) && ftruncate(r->lock_fd, 0) != 0)
        rlog(r, FERRY_LOG_DEBUG, "cannot truncate %s: %s", r->lock_path, strerror(errno));
    close(r->lock_fd); /* releases the flock */
    r->lock_fd = -1;
    atomic_store(&r->is_active, 0);
}

/* ----- the database --------------------------------------------------- */

static int db_fail(ferry_relay *r, const char *what, int src)
{
    rlog(r, FERRY_LOG_ERROR, "%s: %s", what, r->db ? sqlite3_errmsg(r->db) : sqlite3_errstr(src));
    return ferry__outbox_err(src) < 0 ? ferry__outbox_err(src) : FERRY_ESTORAGE;
}

static int prepare(ferry_relay *r, sqlite3_stmt **st, const char *sql)
{
    int rc = sqlite3_prepare_v3(r->db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL);
    return rc == SQLITE_OK ? 0 : db_fail(r, "cannot prepare a statement", rc);
}

static void db_close(ferry_relay *r)
{
    sqlite3_stmt **all[] = {&r->q_read, &r->q_hdrs,  &r->q_mark, &r->q_fail,
                            &r->q_scan, &r->q_purge, &r->q_dv};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        sqlite3_finalize(*all[i]);
        *all[i] = NULL;
    }
    sqlite3_close(r->db);
    r->db = NULL;
}

static int read_data_version(ferry_relay *r, int64_t *out)
{
    int rc = sqlite3_step(r->q_dv);
    if (rc == SQLITE_ROW)
        *out = sqlite3_column_int64(r->q_dv, 0);
    sqlite3_reset(r->q_dv);
    return rc == SQLITE_ROW ? 0 : -1;
}

static int db_open(ferry_relay *r)
{
    int rc = sqlite3_open_v2(r->db_path, &r->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        rlog(r, FERRY_LOG_ERROR, "cannot open the database %s: %s", r->db_path,
             r->db ? sqlite3_errmsg(r->db) : sqlite3_errstr(rc));
        sqlite3_close(r->db);
        r->db = NULL;
        return FERRY_ESTORAGE;
    }
    sqlite3_busy_timeout(r->db, RELAY_BUSY_TIMEOUT_MS);
    /* The relay's own writes (marks, purges) need not survive a power loss:
     * a lost mark only causes a re-publish, which the broker dedupes. */
    ferry__outbox_exec(r->db, "PRAGMA synchronous = NORMAL");

    rc = ferry_outbox_install(r->db);
    if (rc == FERRY_EUNSUPPORTED) {
        rlog(
            r, FERRY_LOG_ERROR,
            "%s holds an outbox of a newer schema than this libferry (%s) knows; upgrade the relay",
            r->db_path, ferry_version());
        return rc;
    }
    if (rc < 0)
        return db_fail(r, "cannot install the outbox tables", SQLITE_ERROR);
    rc = ferry__outbox_read_producer_id(r->db, r->producer_id);
    if (rc < 0)
        return db_fail(r, "cannot read the producer id", SQLITE_ERROR);

    /* clang-format off */
    if ((rc = prepare(r, &r->q_read,
            "SELECT seq, msg_id, topic, key, headers, payload, deliver_at_ms FROM ferry_outbox"
            " WHERE sent_ms IS NULL AND seq > ?1 ORDER BY seq LIMIT ?2")) < 0 ||
        (rc = prepare(r, &r->q_hdrs,
            "SELECT key, CASE type WHEN 'true' THEN 'true' WHEN 'false' THEN 'false'"
            " WHEN 'null' THEN '' ELSE value END, typeof(key) FROM json_each(?1)")) < 0 ||
        (rc = prepare(r, &r->q_mark,
            "UPDATE ferry_outbox SET sent_ms = ?1, broker_seq = ?2"
            " WHERE seq = ?3 AND sent_ms IS NULL")) < 0 ||
        (rc = prepare(r, &r->q_fail,
            "UPDATE ferry_outbox SET sent_ms = ?1, error = ?2"
            " WHERE seq = ?3 AND sent_ms IS NULL")) < 0 ||
        (rc = prepare(r, &r->q_scan,
            "SELECT seq, sent_ms, error IS NOT NULL FROM ferry_outbox"
            " WHERE seq > ?1 ORDER BY seq LIMIT ?2")) < 0 ||
        (rc = prepare(r, &r->q_purge,
            "DELETE FROM ferry_outbox WHERE seq > ?1 AND seq <= ?2 AND error IS NULL")) < 0 ||
        (rc = prepare(r, &r->q_dv, "PRAGMA data_version")) < 0)
        return rc;
    /* clang-format on */
    read_data_version(r, &r->data_version);
    return 0;
}

/* ----- the broker connection ------------------------------------------ */

static void conn_drop(ferry_relay *r)
{
    ferry_close(r->conn);
    r->conn = NULL;
    atomic_store(&r->is_connected, 0);
}

static void backoff(ferry_relay *r)
{
    r->next_try_us = now_us() + (int64_t)r->backoff_ms * 1000;
    r->backoff_ms =
        r->backoff_ms * 2 > RELAY_BACKOFF_MAX_MS ? RELAY_BACKOFF_MAX_MS : r->backoff_ms * 2;
}

/* Connects; on failure schedules the next attempt. Returns 0, or a fatal
 * error (the broker refused the token or speaks another protocol). */
static int conn_open(ferry_relay *r)
{
    ferry_options o = FERRY_OPTIONS_INIT;
    o.token = r->token;
    o.client_name = "ferry relay";
    o.producer_id = r->producer_id;
    o.connect_timeout_ms = 5000;
    /* JetStream: a publish lost with its server (killed, failed over) never
     * gets its PubAck; 5 s until the window is retried from it. */
    o.request_timeout_ms = ferry__is_js_address(r->server) ? 5000 : 30000;
    char detail[512];
    int rc = ferry_connect(r->server, &o, &r->conn, detail, sizeof detail);
    int64_t now = now_us();
    if (rc == 0) {
        atomic_store(&r->is_connected, 1);
        if (r->connected_once)
            atomic_fetch_add(&r->n_reconnects, 1);
        if (r->conn_failures > 0)
            rlog(r, FERRY_LOG_INFO, "connected to %s after %d failed attempt%s", r->server,
                 r->conn_failures, r->conn_failures == 1 ? "" : "s");
        else if (!r->connected_once)
            rlog(r, FERRY_LOG_INFO, "connected to %s", r->server);
        r->connected_once = 1;
        r->conn_failures = 0;
        r->js_recovered = 0;
        r->last_io_us = now;
        r->dirty = 1;
        return 0;
    }
    if (rc == FERRY_EAUTH || rc == FERRY_EVERSION || rc == FERRY_EINVALID) {
        rlog(r, FERRY_LOG_ERROR, "cannot connect to %s: %s: %s; giving up", r->server,
             ferry_strerror(rc), detail);
        return rc;
    }
    if (r->conn_failures == 0 || now - r->conn_fail_logged_us >= RELAY_REPEAT_LOG_MS * 1000LL) {
        if (r->conn_failures == 0)
            rlog(r, FERRY_LOG_WARN, "cannot connect to %s: %s%s%s; retrying with backoff",
                 r->server, ferry_strerror(rc), *detail ? ": " : "", detail);
        else
            rlog(r, FERRY_LOG_WARN, "still cannot connect to %s (%d attempts): %s%s%s", r->server,
                 r->conn_failures + 1, ferry_strerror(rc), *detail ? ": " : "", detail);
        r->conn_fail_logged_us = now;
    }
    r->conn_failures++;
    backoff(r);
    return 0;
}

/* ----- reading a batch ------------------------------------------------ */

static int arena_put(ferry_relay *r, const void *p, size_t n, size_t *off)
{
    if (r->acap - r->alen < n + 1) {
        size_t ncap = r->acap ? r->acap : 1u << 20;
        while (ncap - r->alen < n + 1)
            ncap *= 2;
        uint8_t *na = realloc(r->arena, ncap);
        if (!na)
            return FERRY_ENOMEM;
        r->arena = na;
        r->acap = ncap;
    }
    *off = r->alen;
    if (n)
        memcpy(r->arena + r->alen, p, n);
    r->arena[r->alen + n] = '\0';
    r->alen += n + 1;
    return 0;
}

static int hdr_push(ferry_relay *r, size_t name, size_t value, size_t value_len)
{
    if (r->nhdrs == r->hdrs_cap) {
        size_t ncap = r->hdrs_cap ? r->hdrs_cap * 2 : 256;
        struct rhdr *nh = realloc(r->hdrs, ncap * sizeof *nh);
        ferry_header *nm = realloc(r->mhdrs, ncap * sizeof *nm);
        if (nh)
            r->hdrs = nh;
        if (nm)
            r->mhdrs = nm;
        if (!nh || !nm)
            return FERRY_ENOMEM;
        r->hdrs_cap = ncap;
    }
    r->hdrs[r->nhdrs++] = (struct rhdr){name, value, value_len};
    return 0;
}

/* Reads the headers JSON of one row into the batch. Returns 0, FERRY_ENOMEM,
 * or 1 with r->bad_why set when they cannot be sent. */
static int load_headers(ferry_relay *r, struct rrow *row, const unsigned char *json, int json_len)
{
    row->hdr_first = r->nhdrs;
    sqlite3_bind_text(r->q_hdrs, 1, (const char *)json, json_len, SQLITE_TRANSIENT);
    int rc, bad = 0;
    while ((rc = sqlite3_step(r->q_hdrs)) == SQLITE_ROW) {
        const unsigned char *name = sqlite3_column_text(r->q_hdrs, 0);
        size_t nlen = (size_t)sqlite3_column_bytes(r->q_hdrs, 0);
        const unsigned char *ktype = sqlite3_column_text(r->q_hdrs, 2);
        const void *val = sqlite3_column_blob(r->q_hdrs, 1);
        size_t vlen = (size_t)sqlite3_column_bytes(r->q_hdrs, 1);
        if (!ktype || strcmp((const char *)ktype, "text") != 0) {
            snprintf(r->bad_why, sizeof r->bad_why, "headers: not a JSON object");
            bad = 1;
        } else if (nlen == 0 || nlen > PROTO_MAX_HEADER_NAME || memchr(name, 0, nlen)) {
            snprintf(r->bad_why, sizeof r->bad_why,
                     "headers: a header name must be 1-%u bytes of text",
                     (unsigned)PROTO_MAX_HEADER_NAME);
            bad = 1;
        } else if (vlen > PROTO_MAX_HEADER_VALUE) {
            snprintf(r->bad_why, sizeof r->bad_why,
                     "headers: the value of \"%.*s\" is %zu bytes; at most %u", (int)nlen,
                     (const char *)name, vlen, (unsigned)PROTO_MAX_HEADER_VALUE);
            bad = 1;
        } else if (r->nhdrs - row->hdr_first >= PROTO_MAX_HEADERS) {
            snprintf(r->bad_why, sizeof r->bad_why, "headers: more than %u",
                     (unsigned)PROTO_MAX_HEADERS);
            bad = 1;
        }
        if (bad)
            break;
        size_t noff, voff;
        if (arena_put(r, name, nlen, &noff) < 0 || arena_put(r, val, vlen, &voff) < 0 ||
            hdr_push(r, noff, voff, vlen) < 0) {
            sqlite3_reset(r->q_hdrs);
            return FERRY_ENOMEM;
        }
    }
    if (!bad && rc != SQLITE_DONE) {
        snprintf(r->bad_why, sizeof r->bad_why, "headers: %s", sqlite3_errmsg(r->db));
        bad = 1;
    }
    sqlite3_reset(r->q_hdrs);
    sqlite3_clear_bindings(r->q_hdrs);
    row->hdr_count = r->nhdrs - row->hdr_first;
    return bad;
}

/* Bytes the row takes in a producer PUBLISH frame. */
static size_t row_frame_bytes(const struct rrow *row, const ferry_relay *r)
{
    size_t n = 8 + 2 + strlen((const char *)r->arena + row->topic) + 2 +
               strlen((const char *)r->arena + row->id) + 2 + row->key_len + 8 + 2 + 4 +
               row->payload_len;
    for (size_t i = 0; i < row->hdr_count; i++) {
        const struct rhdr *h = &r->hdrs[row->hdr_first + i];
        n += 4 + strlen((const char *)r->arena + h->name) + h->value_len;
    }
    return n;
}

/* Reads the next rows above the cursor into the batch, as many as fit in
 * one frame. Returns the row count (0: none waiting), or an error. A row
 * that cannot be sent as it is (malformed headers) ends the batch before
 * it; alone, it is returned with bad_seq set. */
/* Copies the outbox row q stands on into r->rows[r->nrows] and the arena
 * (not yet counted in nrows). Returns 0, 1 when the row cannot be
 * published (r->bad_why says why), or FERRY_ENOMEM. */
static int read_row(ferry_relay *r, sqlite3_stmt *q, struct rrow *row)
{
    memset(row, 0, sizeof *row);
    row->seq = sqlite3_column_int64(q, 0);
    row->deliver_at_ms = sqlite3_column_int64(q, 6);
    const unsigned char *id = sqlite3_column_text(q, 1);
    size_t id_len = (size_t)sqlite3_column_bytes(q, 1);
    const unsigned char *topic = sqlite3_column_text(q, 2);
    size_t topic_len = (size_t)sqlite3_column_bytes(q, 2);
    const void *key = sqlite3_column_blob(q, 3);
    row->key_len = (size_t)sqlite3_column_bytes(q, 3);
    if (sqlite3_column_type(q, 4) != SQLITE_NULL) {
        int bad = load_headers(r, row, sqlite3_column_text(q, 4), sqlite3_column_bytes(q, 4));
        if (bad)
            return bad;
    }
    if (!id || !topic || id_len == 0 || topic_len == 0 || memchr(id, 0, id_len) ||
        memchr(topic, 0, topic_len)) {
        snprintf(r->bad_why, sizeof r->bad_why, "empty or binary msg_id or topic");
        return 1;
    }
    const void *payload = sqlite3_column_blob(q, 5);
    row->payload_len = (size_t)sqlite3_column_bytes(q, 5);
    if (arena_put(r, id, id_len, &row->id) < 0 || arena_put(r, topic, topic_len, &row->topic) < 0 ||
        arena_put(r, key, row->key_len, &row->key) < 0 ||
        arena_put(r, payload, row->payload_len, &row->payload) < 0)
        return FERRY_ENOMEM;
    return 0;
}

/* Points r->msgs at the rows in the arena (which may have moved while the
 * batch was read). */
static void point_messages(ferry_relay *r)
{
    for (size_t i = 0; i < r->nrows; i++) {
        const struct rrow *row = &r->rows[i];
        for (size_t h = 0; h < row->hdr_count; h++) {
            const struct rhdr *rh = &r->hdrs[row->hdr_first + h];
            r->mhdrs[row->hdr_first + h] = (ferry_header){
                .name = (const char *)r->arena + rh->name,
                .value = r->arena + rh->value,
                .value_len = rh->value_len,
            };
        }
        r->msgs[i] = (ferry_msg){
            .topic = (const char *)r->arena + row->topic,
            .payload = r->arena + row->payload,
            .payload_len = row->payload_len,
            .id = (const char *)r->arena + row->id,
            .key = row->key_len ? r->arena + row->key : NULL,
            .key_len = row->key_len,
            .headers = row->hdr_count ? &r->mhdrs[row->hdr_first] : NULL,
            .header_count = row->hdr_count,
            .deliver_at_ms = row->deliver_at_ms,
            .producer_seq = (uint64_t)row->seq,
        };
    }
}

static int load_batch(ferry_relay *r)
{
    r->alen = 0;
    r->nrows = 0;
    r->nhdrs = 0;
    r->bad_seq = 0;
    r->bad_why[0] = '\0';

    ferry_server_info info;
    ferry_server_info_get(r->conn, &info);
    uint32_t limit = r->batch < info.max_batch ? r->batch : info.max_batch;
    size_t frame_max = info.max_frame_bytes > RELAY_FRAME_MARGIN * 2
                           ? info.max_frame_bytes - RELAY_FRAME_MARGIN
                           : info.max_frame_bytes / 2;
    if (r->conn->js) {
        /* JetStream: a window of single publishes, each within the
         * server's max payload on its own (checked per message). */
        limit = r->batch;
        frame_max = SIZE_MAX;
    }
    if (r->cursor < r->solo_until)
        limit = 1;
    size_t frame = 16 + strlen(r->producer_id);

    if (!r->rows) {
        r->rows = malloc(PROTO_MAX_BATCH * sizeof *r->rows);
        r->msgs = malloc(PROTO_MAX_BATCH * sizeof *r->msgs);
        r->acks = malloc(PROTO_MAX_BATCH * sizeof *r->acks);
        if (!r->rows || !r->msgs || !r->acks)
            return FERRY_ENOMEM;
    }

    sqlite3_stmt *q = r->q_read;
    sqlite3_bind_int64(q, 1, r->cursor);
    sqlite3_bind_int64(q, 2, limit);
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        struct rrow *row = &r->rows[r->nrows];
        size_t mark_alen = r->alen, mark_nhdrs = r->nhdrs;
        int got = read_row(r, q, row);
        if (got < 0) {
            rc = got;
            break;
        }
        if (got == 1) {
            /* Alone in its batch it is marked failed; otherwise the batch
             * ends before it, and it comes first in the next. */
            if (r->nrows == 0) {
                r->bad_seq = row->seq;
            } else {
                r->alen = mark_alen;
                r->nhdrs = mark_nhdrs;
                r->bad_why[0] = '\0';
            }
            break;
        }
        size_t bytes = row_frame_bytes(row, r);
        if (r->nrows > 0 && frame + bytes > frame_max) {
            /* Full: this row starts the next batch. */
            r->alen = mark_alen;
            r->nhdrs = mark_nhdrs;
            break;
        }
        frame += bytes;
        r->nrows++;
    }
    sqlite3_reset(q);
    if (rc == FERRY_ENOMEM) {
        rlog(r, FERRY_LOG_ERROR, "out of memory reading a batch of %u rows", limit);
        return rc;
    }
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        return db_fail(r, "cannot read the outbox", rc);
    if (r->bad_seq)
        return 1;
    point_messages(r);
    return (int)r->nrows;
}

/* ----- JetStream: where this database's rows stand in the stream ------- */

/* The row of ferry_outbox_meta holding the stream sequence up to which
 * every row this database published is known (marked sent, or the stream's
 * end before the first publish): "jetstream_seq:<stream>". */
static void js_seq_name(const ferry_relay *r, char *out, size_t cap)
{
    snprintf(out, cap, "jetstream_seq:%s", ferry__js_stream(r->conn));
}

/* Stores seq (with only_up, only when above the stored value), in the
 * caller's transaction. Returns an SQLite code. */
static int js_seq_store(ferry_relay *r, uint64_t seq, int only_up)
{
    char name[128];
    js_seq_name(r, name, sizeof name);
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(
        r->db,
        only_up ? "INSERT INTO ferry_outbox_meta(name, value) VALUES (?1, ?2)"
                  " ON CONFLICT(name) DO UPDATE SET value = excluded.value"
                  " WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)"
                : "INSERT INTO ferry_outbox_meta(name, value) VALUES (?1, ?2)"
                  " ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        -1, &st, NULL);
    if (rc == SQLITE_OK) {
        char v[32];
        snprintf(v, sizeof v, "%" PRIu64, seq);
        sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 2, v, -1, SQLITE_TRANSIENT);
        rc = sqlite3_step(st);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    sqlite3_finalize(st);
    return rc;
}

/* 1 with *seq when recorded, 0 when not, < 0 on a database error. */
static int js_seq_load(ferry_relay *r, uint64_t *seq)
{
    char name[128];
    js_seq_name(r, name, sizeof name);
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(r->db, "SELECT value FROM ferry_outbox_meta WHERE name = ?1", -1,
                                &st, NULL);
    int found = 0;
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            *seq = (uint64_t)sqlite3_column_int64(st, 0);
            found = 1;
        } else if (rc != SQLITE_DONE) {
            found = db_fail(r, "cannot read the JetStream position", rc);
        }
    } else {
        found = db_fail(r, "cannot read the JetStream position", rc);
    }
    sqlite3_finalize(st);
    return found;
}

/* ----- marking -------------------------------------------------------- */

/* Marks the batch sent, in one transaction. Returns 0 or an error (the rows
 * then stay unsent and are published again: duplicates). */
static int mark_sent(ferry_relay *r, size_t n)
{
    int rc = sqlite3_exec(r->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return db_fail(r, "cannot mark rows sent (BEGIN)", rc);
    int64_t now = ferry__wall_ms();
    for (size_t i = 0; i < n && rc == SQLITE_OK; i++) {
        sqlite3_bind_int64(r->q_mark, 1, now);
        sqlite3_bind_int64(r->q_mark, 2, (int64_t)r->acks[i].seq);
        sqlite3_bind_int64(r->q_mark, 3, r->rows[i].seq);
        int s = sqlite3_step(r->q_mark);
        sqlite3_reset(r->q_mark);
        if (s != SQLITE_DONE)
            rc = s;
    }
    if (rc == SQLITE_OK && r->conn && r->conn->js && n > 0) {
        /* Where the recovery scan of the next connection starts. */
        uint64_t top = 0;
        for (size_t i = 0; i < n; i++)
            if (r->acks[i].seq > top)
                top = r->acks[i].seq;
        rc = js_seq_store(r, top, 1);
    }
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(r->db, "COMMIT", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        int e = db_fail(r, "cannot mark rows sent", rc);
        sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
        return e;
    }
    return 0;
}

/* Gives up on one row: marks it failed with why. */
static int mark_failed(ferry_relay *r, int64_t seq, const char *why)
{
    sqlite3_bind_int64(r->q_fail, 1, ferry__wall_ms());
    sqlite3_bind_text(r->q_fail, 2, why, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(r->q_fail, 3, seq);
    int rc = sqlite3_step(r->q_fail);
    sqlite3_reset(r->q_fail);
    sqlite3_clear_bindings(r->q_fail);
    if (rc != SQLITE_DONE)
        return db_fail(r, "cannot mark a row failed", rc);
    rlog(r, FERRY_LOG_ERROR,
         "outbox row seq %" PRId64 " can never be published (%s); marked failed and skipped", seq,
         why);
    atomic_fetch_add(&r->n_failed, 1);
    r->cursor = seq;
    return 0;
}

/* ----- one step ------------------------------------------------------- */

/* Makes what was read durable before it is published: with a WAL, the rows
 * may be committed but not yet on disk (synchronous = NORMAL); a power loss
 * would take them back, and rows written afterwards would reuse their seq,
 * below the broker's mark for this producer. */
static void sync_wal(ferry_relay *r)
{
    int fd = open(r->wal_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return; /* no WAL: rollback journal mode, commits are synced */
    fdatasync(fd);
    close(fd);
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

static void publish_failed(ferry_relay *r, int rc, size_t n)
{
    const char *detail = r->conn ? ferry_errmsg(r->conn) : "";
    int64_t now = now_us();
    if (rc != r->last_error || now - r->error_logged_us >= RELAY_REPEAT_LOG_MS * 1000LL) {
        rlog(r, FERRY_LOG_WARN,
             "publishing %zu row%s from seq %" PRId64 " failed: %s%s%s; retrying with backoff", n,
             n == 1 ? "" : "s", r->rows[0].seq, ferry_strerror(rc), *detail ? ": " : "", detail);
        r->last_error = rc;
        r->error_logged_us = now;
    }
    if (is_conn_error(rc) || (r->conn && r->conn->dead))
        conn_drop(r);
    backoff(r);
}

struct js_found {
    ferry_relay *r;
    int64_t now;
    uint64_t marked;
    int rc;
};

static void js_found_row(void *ud, uint64_t stream_seq, uint64_t producer_seq)
{
    struct js_found *f = ud;
    if (f->rc != SQLITE_OK)
        return;
    sqlite3_bind_int64(f->r->q_mark, 1, f->now);
    sqlite3_bind_int64(f->r->q_mark, 2, (int64_t)stream_seq);
    sqlite3_bind_int64(f->r->q_mark, 3, (int64_t)producer_seq);
    int s = sqlite3_step(f->r->q_mark);
    sqlite3_reset(f->r->q_mark);
    if (s != SQLITE_DONE)
        f->rc = s;
    else
        f->marked += (uint64_t)sqlite3_changes(f->r->db);
}

/* After every connect to JetStream, before publishing: rows this database
 * published that the stream stored but that were never marked sent (a
 * crash or a lost connection between the PubAck and the mark) are found by
 * reading the stream after the recorded position, and marked sent. So a
 * row is never stored twice, however long after the crash (JetStream's own
 * dedupe by Nats-Msg-Id only remembers its duplicate window). Returns 0, a
 * connection error (the connection is dropped, retried with backoff) or a
 * database error. */
static int js_recover(ferry_relay *r)
{
    uint64_t after = 0, last = 0;
    int found = js_seq_load(r, &after);
    if (found < 0)
        return found;
    if (!found) {
        /* First contact with this stream: nothing of ours is in it yet
         * (every row published from now on lands after its end). */
        int rc = ferry__js_last_seq(r->conn, &last);
        if (rc < 0)
            return rc;
        rc = js_seq_store(r, last, 0);
        if (rc != SQLITE_OK)
            return db_fail(r, "cannot record the JetStream position", rc);
        r->js_recovered = 1;
        return 0;
    }
    int rc = sqlite3_exec(r->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return db_fail(r, "cannot mark recovered rows (BEGIN)", rc);
    struct js_found f = {.r = r, .now = ferry__wall_ms(), .rc = SQLITE_OK};
    int64_t t0 = now_us();
    int frc = ferry__js_scan(r->conn, after, r->producer_id, js_found_row, &f, &last);
    /* A stream that ends before the position was deleted and made again:
     * the position follows it down. */
    if (frc == 0 && f.rc == SQLITE_OK)
        f.rc = js_seq_store(r, last, last >= after);
    if (frc == 0 && f.rc == SQLITE_OK)
        f.rc = sqlite3_exec(r->db, "COMMIT", NULL, NULL, NULL);
    if (frc < 0 || f.rc != SQLITE_OK) {
        sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
        if (frc < 0) {
            rlog(r, FERRY_LOG_WARN, "cannot read the stream back from seq %" PRIu64 ": %s: %s",
                 after + 1, ferry_strerror(frc), ferry_errmsg(r->conn));
            return frc;
        }
        return db_fail(r, "cannot mark recovered rows", f.rc);
    }
    if (f.marked) {
        atomic_fetch_add(&r->n_published, f.marked);
        atomic_fetch_add(&r->n_duplicates, f.marked);
    }
    if (f.marked || last > after)
        rlog(r, FERRY_LOG_INFO,
             "read the stream back from seq %" PRIu64 " to %" PRIu64 " in %.0f ms: %" PRIu64
             " row%s already stored, marked sent",
             after + 1, last, (double)(now_us() - t0) / 1000.0, f.marked, f.marked == 1 ? "" : "s");
    r->js_recovered = 1;
    return 0;
}

/* step() over JetStream: a window of n single publishes. The stored prefix
 * is marked sent; the first failure is retried (a row stored anyway is
 * acked by JetStream as a duplicate within its window, and found by
 * js_recover after it). */
static int step_js(ferry_relay *r, int n)
{
    if (!r->js_recovered) {
        int rc = js_recover(r);
        if (rc < 0) {
            if (is_conn_error(rc) || rc == FERRY_EINTERNAL)
                conn_drop(r);
            backoff(r);
            return rc == FERRY_ESTORAGE ? rc : n;
        }
        /* Rows may have been marked: read the batch again. */
        return n;
    }
    size_t stored = 0;
    int rc = ferry__js_publish_window(r->conn, r->msgs, (size_t)n, r->acks, &stored);
    if (stored > 0) {
        r->last_io_us = now_us();
        if (r->crash_after_ack > 0 && ++r->batches_acked >= r->crash_after_ack) {
            rlog(r, FERRY_LOG_WARN,
                 "test hook " FERRY_RELAY_CRASH_ENV ": exiting after JetStream acked seq %" PRId64
                 "-%" PRId64 ", before marking them sent",
                 r->rows[0].seq, r->rows[stored - 1].seq);
            _exit(9);
        }
        int mrc = mark_sent(r, stored);
        if (mrc < 0) {
            backoff(r);
            return n;
        }
        uint64_t dups = 0;
        for (size_t i = 0; i < stored; i++)
            dups += r->acks[i].duplicate != 0;
        r->cursor = r->rows[stored - 1].seq;
        atomic_fetch_add(&r->n_published, (uint64_t)stored);
        if (dups)
            atomic_fetch_add(&r->n_duplicates, dups);
        atomic_store(&r->last_seq, (uint64_t)r->cursor);
    }
    if (rc == 0) {
        if (r->last_error) {
            rlog(r, FERRY_LOG_INFO, "publishing again from seq %" PRId64, r->rows[0].seq);
            r->last_error = 0;
        }
        r->backoff_ms = RELAY_BACKOFF_FIRST_MS;
        return n;
    }
    const struct rrow *bad = &r->rows[stored];
    if (is_row_error(rc)) {
        char why[FERRY__ERRMSG_BYTES + 64];
        snprintf(why, sizeof why, "%s: %s", ferry_strerror(rc), ferry_errmsg(r->conn));
        int frc = mark_failed(r, bad->seq, why);
        return frc < 0 ? frc : n;
    }
    const char *detail = ferry_errmsg(r->conn);
    int64_t now = now_us();
    if (rc != r->last_error || now - r->error_logged_us >= RELAY_REPEAT_LOG_MS * 1000LL) {
        rlog(r, FERRY_LOG_WARN,
             "publishing from seq %" PRId64 " to JetStream failed: %s%s%s; retrying with backoff",
             bad->seq, ferry_strerror(rc), *detail ? ": " : "", detail);
        r->last_error = rc;
        r->error_logged_us = now;
    }
    /* Lost contact: the next connection reads the stream back first. */
    r->js_recovered = 0;
    if (is_conn_error(rc) && rc != FERRY_ETIMEOUT)
        conn_drop(r);
    backoff(r);
    return n;
}

/* Reads, publishes and marks one batch. Returns the rows done (> 0), 0 when
 * none are waiting, or a database error. */
static int step(ferry_relay *r)
{
    int64_t t0 = now_us();
    int n = load_batch(r);
    if (n <= 0)
        return n;
    if (!r->first_batch_us)
        r->first_batch_us = t0;
    if (r->bad_seq) {
        int rc = mark_failed(r, r->bad_seq, r->bad_why);
        return rc < 0 ? rc : 1;
    }

    sync_wal(r);
    if (r->conn->js)
        return step_js(r, n);
    int rc = ferry_publish_batch(r->conn, r->msgs, (size_t)n, r->acks);
    if (rc < 0 && is_row_error(rc) && n == 1) {
        char why[FERRY__ERRMSG_BYTES + 64];
        snprintf(why, sizeof why, "%s: %s", ferry_strerror(rc), ferry_errmsg(r->conn));
        rc = mark_failed(r, r->rows[0].seq, why);
        return rc < 0 ? rc : 1;
    }
    if (rc < 0 && is_row_error(rc)) {
        /* Someone in the batch is unpublishable: find it one row at a
         * time. Nothing of the batch was stored. */
        r->solo_until = r->rows[n - 1].seq;
        rlog(r, FERRY_LOG_WARN,
             "the broker refused the batch of seq %" PRId64 "-%" PRId64
             " (%s: %s); publishing its rows one at a time",
             r->rows[0].seq, r->rows[n - 1].seq, ferry_strerror(rc), ferry_errmsg(r->conn));
        return n;
    }
    if (rc < 0) {
        publish_failed(r, rc, (size_t)n);
        return n;
    }

    r->last_io_us = now_us();
    if (r->crash_after_ack > 0 && ++r->batches_acked >= r->crash_after_ack) {
        rlog(r, FERRY_LOG_WARN,
             "test hook " FERRY_RELAY_CRASH_ENV ": exiting after the broker acked seq %" PRId64
             "-%" PRId64 ", before marking them sent",
             r->rows[0].seq, r->rows[n - 1].seq);
        _exit(9);
    }

    rc = mark_sent(r, (size_t)n);
    if (rc < 0) {
        backoff(r);
        return n;
    }
    uint64_t dups = 0;
    for (int i = 0; i < n; i++)
        dups += r->acks[i].duplicate != 0;
    r->cursor = r->rows[n - 1].seq;
    atomic_fetch_add(&r->n_published, (uint64_t)n);
    if (dups) {
        atomic_fetch_add(&r->n_duplicates, dups);
        rlog(r, FERRY_LOG_INFO,
             "%" PRIu64 " of seq %" PRId64 "-%" PRId64
             " were already stored (a re-publish after a crash): acked as duplicates",
             dups, r->rows[0].seq, r->rows[n - 1].seq);
    }
    atomic_store(&r->last_seq, (uint64_t)r->cursor);
    if (r->last_error) {
        rlog(r, FERRY_LOG_INFO, "publishing again from seq %" PRId64, r->rows[0].seq);
        r->last_error = 0;
    }
    r->backoff_ms = RELAY_BACKOFF_FIRST_MS;
    return n;
}

/* ----- maintenance ---------------------------------------------------- */

/* Deletes sent rows older than the retention, front first, a chunk per
 * transaction. Failed rows are kept. Returns 1 when more may be due. */
static int purge(ferry_relay *r)
{
    if (r->retention_ms < 0)
        return 0;
    int64_t cutoff = ferry__wall_ms() - r->retention_ms;
    for (int chunk = 0; chunk < RELAY_PURGE_CHUNKS; chunk++) {
        int64_t upto = 0, last = r->purge_after;
        int full = 0, rows = 0;
        sqlite3_bind_int64(r->q_scan, 1, r->purge_after);
        sqlite3_bind_int64(r->q_scan, 2, RELAY_PURGE_CHUNK);
        int rc;
        while ((rc = sqlite3_step(r->q_scan)) == SQLITE_ROW) {
            rows++;
            int64_t seq = sqlite3_column_int64(r->q_scan, 0);
            int failed = sqlite3_column_int(r->q_scan, 2);
            if (sqlite3_column_type(r->q_scan, 1) == SQLITE_NULL)
                break; /* the first unsent row: everything after is newer */
            if (!failed && sqlite3_column_int64(r->q_scan, 1) >= cutoff)
                break;
            last = seq;
            if (!failed)
                upto = seq;
        }
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
            sqlite3_reset(r->q_scan);
            db_fail(r, "cannot scan the outbox for the purge", rc);
            return 0;
        }
        sqlite3_reset(r->q_scan);
        if (rc == SQLITE_DONE && rows == RELAY_PURGE_CHUNK)
            full = 1;
        if (upto > 0) {
            sqlite3_bind_int64(r->q_purge, 1, r->purge_after);
            sqlite3_bind_int64(r->q_purge, 2, upto);
            rc = sqlite3_step(r->q_purge);
            sqlite3_reset(r->q_purge);
            if (rc != SQLITE_DONE) {
                db_fail(r, "cannot purge sent rows", rc);
                return 0;
            }
            atomic_fetch_add(&r->n_purged, (uint64_t)sqlite3_changes(r->db));
        }
        if (last <= r->purge_after)
            return 0; /* nothing old enough at the front */
        r->purge_after = last;
        if (!full)
            return 0;
    }
    return 1;
}

static void log_lag(ferry_relay *r, int64_t now)
{
    ferry_outbox_stats s;
    if (ferry_outbox_stats_get(r->db, &s) < 0)
        return;
    uint64_t published = atomic_load(&r->n_published);
    uint64_t delta = published - r->lag_base_published;
    double secs = (double)(now - r->lag_base_us) / 1e6;
    char age[32];
    fmt_age(age, sizeof age, s.oldest_waiting_ms);
    if (delta > 0 || s.waiting > 0)
        rlog(r, FERRY_LOG_INFO,
             "lag: %" PRIu64 " rows waiting%s%s; relayed %" PRIu64 " in the last %.0f s "
             "(%.0f/s), last seq %" PRIu64 "%s",
             s.waiting, s.waiting ? ", oldest " : "", s.waiting ? age : "", delta, secs,
             secs > 0 ? (double)delta / secs : 0.0, s.last_sent_seq,
             r->conn ? "" : "; not connected to the broker");
    r->lag_base_published = published;
    r->lag_base_us = now;
}

/* Runs what is due; returns the earliest time something will be due. */
static int64_t maintain(ferry_relay *r, int64_t now)
{
    if (now >= r->next_purge_us) {
        int more = purge(r);
        r->next_purge_us = now + (more ? 0 : RELAY_PURGE_EVERY_MS * 1000LL);
    }
    if (now >= r->next_lag_us) {
        log_lag(r, now);
        r->next_lag_us = now + RELAY_LAG_LOG_MS * 1000LL;
    }
    if (r->conn && !r->dirty && now - r->last_io_us >= RELAY_PING_IDLE_MS * 1000LL) {
        /* Keeps an idle connection alive through --idle-timeout and finds
         * a dead broker before the next row needs it. */
        int rc = ferry_ping(r->conn, NULL);
        r->last_io_us = now_us();
        if (rc < 0) {
            rlog(r, FERRY_LOG_WARN, "the broker connection failed while idle: %s: %s",
                 ferry_strerror(rc), ferry_errmsg(r->conn));
            conn_drop(r);
            r->next_try_us = now;
        }
    }
    int64_t next = r->next_purge_us < r->next_lag_us ? r->next_purge_us : r->next_lag_us;
    int64_t ping = r->last_io_us + RELAY_PING_IDLE_MS * 1000LL;
    if (r->conn && ping < next)
        next = ping;
    return next;
}

/* Waits until rows may be waiting (a commit by another connection, a
 * notify), the broker connection needs attention, a stop, or deadline_us. */
static void wait_for_work(ferry_relay *r, int64_t deadline_us)
{
    for (;;) {
        if (stopping(r))
            return;
        if (atomic_exchange(&r->notified, 0)) {
            r->dirty = 1;
            return;
        }
        int64_t dv;
        if (read_data_version(r, &dv) == 0 && dv != r->data_version) {
            r->data_version = dv;
            r->dirty = 1;
            return;
        }
        int64_t left = deadline_us - now_us();
        if (left <= 0)
            return;
        int timeout = (int)((left + 999) / 1000);
        if (timeout > r->poll_ms)
            timeout = r->poll_ms;
        struct pollfd p[2] = {{.fd = r->wake_rd, .events = POLLIN},
                              {.fd = r->conn ? r->conn->fd : -1, .events = POLLIN}};
        int n = poll(p, 2, timeout);
        if (n <= 0)
            continue;
        if (p[0].revents)
            drain_pipe(r);
        if (p[1].revents && r->conn) {
            /* A PING, or the broker going away. */
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

/* ----- the loop ------------------------------------------------------- */

static int loop(ferry_relay *r)
{
    int64_t now = now_us();
    r->backoff_ms = RELAY_BACKOFF_FIRST_MS;
    r->next_try_us = now;
    r->next_purge_us = now;
    r->next_lag_us = now + RELAY_LAG_LOG_MS * 1000LL;
    r->lag_base_us = now;
    r->lag_base_published = atomic_load(&r->n_published);
    r->dirty = 1;

    while (!stopping(r)) {
        now = now_us();
        if (!r->conn && now >= r->next_try_us) {
            int rc = conn_open(r);
            if (rc < 0)
                return rc;
        }
        if (r->conn && r->dirty && now_us() >= r->next_try_us) {
            int n = step(r);
            if (n < 0) {
                /* A database failure (locked beyond the busy timeout, I/O):
                 * logged; try again later. */
                backoff(r);
            } else if (n == 0) {
                r->dirty = 0;
                if (r->drain) {
                    uint64_t done = atomic_load(&r->n_published);
                    double secs =
                        r->first_batch_us ? (double)(now_us() - r->first_batch_us) / 1e6 : 0.0;
                    rlog(r, FERRY_LOG_INFO,
                         "drained: relayed %" PRIu64 " rows in %.3f s (%.0f msg/s); none waiting",
                         done, secs, secs > 0 ? (double)done / secs : 0.0);
                    return 0;
                }
            }
        }
        now = now_us();
        int64_t next = maintain(r, now);
        int busy = r->conn && r->dirty && now >= r->next_try_us;
        if (busy)
            continue;
        if ((!r->conn || r->dirty) && r->next_try_us < next)
            next = r->next_try_us;
        wait_for_work(r, next);
    }
    return 0;
}

int ferry_relay_run(ferry_relay *r)
{
    if (!r)
        return FERRY_EINVALID;
    int expected = 0;
    if (!atomic_compare_exchange_strong(&r->running, &expected, 1))
        return FERRY_EBUSY;

    int rc = lock_acquire(r);
    if (rc == 0) {
        rc = db_open(r);
        if (rc == 0) {
            char ret[32];
            if (r->retention_ms < 0)
                snprintf(ret, sizeof ret, "forever");
            else
                fmt_duration(ret, sizeof ret, r->retention_ms);
            rlog(r, FERRY_LOG_INFO,
                 "active on %s: relaying to %s as producer %s (batch %u, sent rows kept %s, poll "
                 "%d ms)",
                 r->db_path, r->server, r->producer_id, r->batch, ret, r->poll_ms);
            rc = loop(r);
            if (stopping(r))
                rlog(r, FERRY_LOG_INFO, "stopped; relayed %" PRIu64 " rows",
                     atomic_load(&r->n_published));
        }
    } else if (rc == 1) {
        rc = 0; /* stopped while standing by */
    }
    conn_drop(r);
    db_close(r);
    lock_release(r);
    atomic_store(&r->running, 0);
    return rc;
}
