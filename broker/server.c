/*
 * server.c - the broker: listener, group commit scheduling, shutdown. The
 * top of the broker's layers (broker/README.md: the layer order, which
 * thread touches what, who frees what): it wires conn.c's events to
 * dispatch.c and group.c, and a finished commit (commit.c) to the groups
 * and the replies.
 *
 * Group commit: requests decoded during a pass of the loop go into the
 * pending batch. At the end of the pass (a uv_prepare handle, which runs
 * just before the loop would block for I/O) the pending batch is handed to
 * a worker thread if none is committing. If that pass read new bytes, the
 * handover waits for one more pass in which the loop polls without
 * blocking (a uv_idle handle), so that what the sockets already hold joins
 * the batch; this stops after a pass that read nothing, after
 * MAX_DEFERRALS passes, or once the batch holds DEFER_MAX_BYTES. It costs
 * one non-blocking poll per commit and no timer: an idle broker still
 * commits a lone publish at once. The worker runs the whole batch in
 * one transaction and one fsync while the loop goes on reading sockets into
 * the next pending batch. When the commit returns, the loop sends every
 * reply of the batch and immediately hands over the next one. So the loop
 * never waits for the disk, a commit never holds more than one batch, and
 * under load each fsync covers everything that arrived while the previous
 * one ran.
 *
 * Shutdown (SIGINT/SIGTERM): stop accepting and reading, commit what was
 * already received, send its replies, close every connection once its
 * replies are written, close the store. The loop then has no handles left
 * and uv_loop_close() succeeds.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#ifdef FERRY_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "broker.h"
#include "clock.h"
#include "commit.h"
#include "conn.h"
#include "dispatch.h"
#include "group.h"
#include "http.h"
#include "log.h"
#include "proto.h"
#include "store.h"

#define MAINTENANCE_EVERY_MS 1000
/* The tick checks every connection's timeouts: a twentieth of the shortest
 * timeout, between TICK_MIN_MS and a second, so that each fires within 5%
 * (or TICK_MIN_MS) of its setting (PROTOCOL.md §1). */
#define TICK_MIN_MS 20
#define TICK_MAX_MS 1000
/* At shutdown, how long connections may take to read their last replies. */
#define SHUTDOWN_GRACE_MS 3000
#define MAX_DEFERRALS 8
#define DEFER_MAX_BYTES (1u << 20)

static void maybe_finish(struct broker *b);
static void on_handle_closed(uv_handle_t *h);

/* conn_events.on_closed: the connection's handle closed. */
static void on_conn_closed(struct conn *c)
{
    struct broker *b = c->broker;
    commit_conn_closed(b, c);
    groups_conn_closed(c);
    if (b->stopping == BROKER_CLOSING && b->nconns == 0 && b->linger_active) {
        b->linger_active = 0;
        uv_close((uv_handle_t *)&b->linger, on_handle_closed);
    }
    maybe_finish(b);
}

/* on_commit_done: a batch came back from the worker. */
static void on_commit_done(struct broker *b, struct batch *done)
{
    if (done->commit_status) {
        log_error("commit of %llu messages failed: %s: %s", (unsigned long long)done->messages,
                  proto_strerror(done->commit_status), store_last_error(b->store));
    }
    b->commits++;
    histo_add(&b->commit_seconds, (double)done->commit_us / 1e6);
    histo_add(&b->commit_messages, (double)done->messages);
    /* The worker is idle: what the store counts may be read now. */
    uint64_t purged_before = b->store_stats.purged, purging_before = b->store_stats.purging;
    store_get_stats(b->store, &b->store_stats);
    /* A deleted topic's rows left to free: the next step at once, as long
     * as steps free rows (a refused or failing one waits for the tick). */
    b->purge_due =
        b->store_stats.purging && !b->stopping && done->commit_status == 0 &&
        (b->store_stats.purged > purged_before || b->store_stats.purging > purging_before);
    log_debug("commit: %zu op(s), %llu message(s), %llu us", done->nops,
              (unsigned long long)done->messages, (unsigned long long)done->commit_us);

    /* Fresh messages reach caught-up groups before the publishers' acks
     * are even written; fetched ones go to their subscriptions. */
    b->defer_flush = 1;
    groups_deletes_done(b, done);
    groups_after_commit(b, done);
    /* Replies go out in op order; connections coalesce them into writes. */
    commit_answer(b, done);
    groups_after_replies(b, done);
    commit_release(done);
    groups_dispatch_dirty(b);
    conn_flush_deferred(b);

    if (b->pending->nops || b->maintenance_due || b->purge_due)
        commit_start(b);

    /* Connections paused for backpressure may read again. */
    for (struct conn *c = b->conns; c; c = c->next)
        if (!c->reading)
            conn_resume_reading(c);
    maybe_finish(b);
}

static void on_drain(uv_idle_t *h)
{
    (void)h; /* its presence alone makes the next poll non-blocking */
}

static void on_prepare(uv_prepare_t *h)
{
    struct broker *b = h->data;
    /* Groups that frames of this pass changed (acks, nacks, new
     * subscriptions) get what they can now, before the loop waits. */
    groups_dispatch_dirty(b);
    int more_may_come = b->read_in_pass;
    b->read_in_pass = 0;
    if (b->committing || !b->pending->nops) {
        uv_idle_stop(&b->drain);
        b->deferrals = 0;
        return;
    }
    if (more_may_come && !b->stopping && b->deferrals < MAX_DEFERRALS &&
        b->pending->in.len < DEFER_MAX_BYTES) {
        b->deferrals++;
        uv_idle_start(&b->drain, on_drain);
        return;
    }
    uv_idle_stop(&b->drain);
    b->deferrals = 0;
    commit_start(b);
}

/* ---- timers, signals, listener --------------------------------------- */

static void on_tick(uv_timer_t *t)
{
    struct broker *b = t->data;
    uint64_t now = clock_mono_ms();
    struct conn *c = b->conns;
    while (c) {
        struct conn *next = c->next;
        conn_tick(c, now);
        c = next;
    }
    if (now - b->last_maintenance_ms >= MAINTENANCE_EVERY_MS) {
        b->last_maintenance_ms = now;
        b->maintenance_due = 1;
        commit_start(b);
    }
}

static void on_handle_closed(uv_handle_t *h)
{
    (void)h;
}

/* During shutdown: once nothing is committing or pending, end every
 * connection (their replies are queued) and release the loop's handles. */
static void on_linger(uv_timer_t *t)
{
    struct broker *b = t->data;
    if (b->nconns)
        log_warn("%d connection(s) did not take their last replies within %d ms: closing them",
                 b->nconns, SHUTDOWN_GRACE_MS);
    for (struct conn *c = b->conns; c; c = c->next)
        conn_abort(c);
    b->linger_active = 0;
    uv_close((uv_handle_t *)&b->linger, on_handle_closed);
}

static void maybe_finish(struct broker *b)
{
    if (b->stopping != BROKER_DRAINING || b->committing || b->pending->nops)
        return;
    b->stopping = BROKER_CLOSING;
    /* Each connection writes the replies it has queued, then closes. */
    struct conn *c = b->conns;
    while (c) {
        struct conn *next = c->next;
        conn_fail(c, 0, NULL);
        c = next;
    }
    groups_close(b);
    uv_close((uv_handle_t *)&b->prepare, on_handle_closed);
    uv_close((uv_handle_t *)&b->drain, on_handle_closed);
    uv_close((uv_handle_t *)&b->tick, on_handle_closed);
    log_info("all commits done; closing %d connection(s)", b->nconns);
    /* A client that does not read would keep its replies, and ferryd,
     * waiting forever: after a grace period the rest are cut off. */
    if (b->nconns) {
        uv_timer_init(b->loop, &b->linger);
        b->linger.data = b;
        b->linger_active = 1;
        uv_timer_start(&b->linger, on_linger, SHUTDOWN_GRACE_MS, 0);
    }
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct broker *b = s->data;
    if (b->stopping)
        return;
    log_info("received %s: stopping", signum == SIGINT ? "SIGINT" : "SIGTERM");
#ifdef FERRY_HAVE_SYSTEMD
    sd_notify(0, "STOPPING=1");
#endif
    b->stopping = BROKER_DRAINING;
    uv_close((uv_handle_t *)&b->server, on_handle_closed);
    http_stop(b);
    uv_close((uv_handle_t *)&b->sigint, on_handle_closed);
    uv_close((uv_handle_t *)&b->sigterm, on_handle_closed);
    for (struct conn *c = b->conns; c; c = c->next)
        conn_pause_reading(c);
    b->maintenance_due = 0;
    b->purge_due = 0;
    commit_start(b);
    maybe_finish(b);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct broker *b = server->data;
    if (status < 0) {
        log_warn("accept: %s", uv_strerror(status));
        return;
    }
    conn_accept(b);
}

/* ---- lifecycle -------------------------------------------------------- */

static int lock_data_dir(struct broker *b)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/ferryd.lock", b->cfg.data_dir);
    b->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (b->lock_fd < 0) {
        log_error("cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(b->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        log_error("data folder %s is in use by another ferryd (%s is locked)", b->cfg.data_dir,
                  path);
        close(b->lock_fd);
        b->lock_fd = -1;
        return -1;
    }
    return 0;
}

int broker_is_loopback(const char *host)
{
    return !strcmp(host, "::1") || !strncmp(host, "127.", 4) || !strcmp(host, "localhost");
}

int broker_init(struct broker *b, uv_loop_t *loop, const struct broker_config *cfg)
{
    memset(b, 0, sizeof(*b));
    b->loop = loop;
    b->cfg = *cfg;
    b->lock_fd = -1;
    b->pending = &b->batches[0];
    b->events = (struct conn_events){
        .on_frame = dispatch_frame,
        .on_closed = on_conn_closed,
        .on_writable = groups_conn_writable,
    };
    b->on_commit_done = on_commit_done;
    b->started_ms = clock_wall_ms();
    histo_init(&b->commit_seconds, histo_latency_bounds, HISTO_LATENCY_BUCKETS);
    histo_init(&b->commit_messages, histo_count_bounds, HISTO_COUNT_BUCKETS);
    if (lock_data_dir(b) < 0)
        return -1;
    char path[4200], err[512];
    snprintf(path, sizeof(path), "%s/ferry.db", cfg->data_dir);
    struct store_config sc = {
        .path = path,
        .sync_full = cfg->sync_full,
        .sync_interval_ms = cfg->sync_interval_ms,
        .cache_mb = cfg->cache_mb,
        .dedupe_window_ms = cfg->dedupe_window_ms,
        .dedupe_max_ids = cfg->dedupe_max_ids,
        .retention_max_age_ms = cfg->retention_max_age_ms,
        .retention_max_count = cfg->retention_max_count,
        .retention_max_bytes = cfg->retention_max_bytes,
        .retention_delete_acked = cfg->retention_delete_acked,
        .max_db_bytes = cfg->max_db_bytes,
        .reserve_dir = cfg->data_dir,
        .reserve_bytes = cfg->reserve_bytes,
    };
    int rc = store_open(&sc, &b->store, err, sizeof(err));
    if (rc) {
        log_error("cannot open the store: %s", err);
        return -1;
    }
    if (groups_init(b) != 0) {
        log_error("cannot load consumer groups: %s", store_last_error(b->store));
        return -1;
    }
    struct store_stats st;
    store_get_stats(b->store, &st);
    b->store_stats = st;
    b->purge_due = st.purging != 0; /* a deletion's purge a restart cut short */
    log_info("store %s open: %llu topic(s), %llu message id(s) remembered for dedupe", path,
             (unsigned long long)st.topics, (unsigned long long)st.dedupe_ids);
    return 0;
}

int broker_start(struct broker *b)
{
    struct sockaddr_storage addr;
    int rc;
    if (strchr(b->cfg.listen_host, ':'))
        rc = uv_ip6_addr(b->cfg.listen_host, b->cfg.listen_port, (struct sockaddr_in6 *)&addr);
    else
        rc = uv_ip4_addr(b->cfg.listen_host, b->cfg.listen_port, (struct sockaddr_in *)&addr);
    if (rc) {
        log_error("invalid listen address %s:%d", b->cfg.listen_host, b->cfg.listen_port);
        return -1;
    }
    uv_tcp_init(b->loop, &b->server);
    b->server.data = b;
    if ((rc = uv_tcp_bind(&b->server, (struct sockaddr *)&addr, 0)) < 0 ||
        (rc = uv_listen((uv_stream_t *)&b->server, 511, on_connection)) < 0) {
        log_error("cannot listen on %s:%d: %s", b->cfg.listen_host, b->cfg.listen_port,
                  uv_strerror(rc));
        uv_close((uv_handle_t *)&b->server, NULL);
        return -1;
    }
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    uv_tcp_getsockname(&b->server, (struct sockaddr *)&bound, &len);
    int port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                           : ntohs(((struct sockaddr_in *)&bound)->sin_port);

    uv_prepare_init(b->loop, &b->prepare);
    b->prepare.data = b;
    uv_prepare_start(&b->prepare, on_prepare);
    uv_idle_init(b->loop, &b->drain);
    b->drain.data = b;
    uv_timer_init(b->loop, &b->tick);
    b->tick.data = b;
    uint64_t shortest = b->cfg.handshake_timeout_ms;
    if (b->cfg.idle_timeout_ms && b->cfg.idle_timeout_ms < shortest)
        shortest = b->cfg.idle_timeout_ms;
    uint64_t tick = shortest / 20;
    tick = tick < TICK_MIN_MS ? TICK_MIN_MS : tick > TICK_MAX_MS ? TICK_MAX_MS : tick;
    uv_timer_start(&b->tick, on_tick, tick, tick);
    uv_signal_init(b->loop, &b->sigint);
    uv_signal_init(b->loop, &b->sigterm);
    b->sigint.data = b->sigterm.data = b;
    uv_signal_start(&b->sigint, on_signal, SIGINT);
    uv_signal_start(&b->sigterm, on_signal, SIGTERM);

    int loopback = broker_is_loopback(b->cfg.listen_host);
    log_info("listening on %s:%d (%s; %s)", b->cfg.listen_host, port,
             loopback ? "loopback only" : "reachable from the network",
             auth_enabled(&b->cfg.auth) ? "tokens required" : "no authentication");
    if (b->cfg.sync_full)
        log_info("data folder %s, sync full (fsync before every ack)", b->cfg.data_dir);
    else
        log_info("data folder %s, sync normal (fsync every %llu ms: a power loss loses at most "
                 "the acks of the last %llu ms)",
                 b->cfg.data_dir, (unsigned long long)b->cfg.sync_interval_ms,
                 (unsigned long long)b->cfg.sync_interval_ms);

    if (http_start(b) < 0)
        return -1;

    if (b->cfg.ready_file[0]) {
        char tmp[4200];
        snprintf(tmp, sizeof(tmp), "%s.tmp", b->cfg.ready_file);
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "%s:%d\n", b->cfg.listen_host, port) < 0 || fclose(f) != 0 ||
            rename(tmp, b->cfg.ready_file) != 0) {
            log_error("cannot write ready file %s: %s", b->cfg.ready_file, strerror(errno));
            return -1;
        }
    }
#ifdef FERRY_HAVE_SYSTEMD
    /* Type=notify: systemd considers ferryd started once it listens. A
     * no-op when not started by systemd ($NOTIFY_SOCKET unset). */
    sd_notifyf(0, "READY=1\nSTATUS=listening on %s:%d", b->cfg.listen_host, port);
#endif
    return 0;
}

void broker_destroy(struct broker *b)
{
    http_free(b);
    groups_free(b);
    batch_free(&b->batches[0]);
    batch_free(&b->batches[1]);
    buf_free(&b->scratch);
    if (b->store) {
        struct store_stats st;
        store_get_stats(b->store, &st);
        store_close(b->store);
        b->store = NULL;
        log_info("store closed: %llu message(s) stored, %llu duplicate(s), %llu I/O error(s) "
                 "this run",
                 (unsigned long long)st.messages_stored, (unsigned long long)st.duplicates,
                 (unsigned long long)st.io_errors);
    }
    if (b->lock_fd >= 0) {
        close(b->lock_fd);
        b->lock_fd = -1;
    }
}
