/*
 * test_disk.c - a full disk (issue 5): publishes fail with a clear "storage
 * full" error while consumers keep receiving and acking what is stored;
 * when space returns, publishing resumes without a restart; nothing acked
 * is lost.
 *
 * Two ways to fill the disk:
 *   tmpfs  (root only) the data folder lives on its own tmpfs of FS_MB MiB,
 *          FILLER_MB of which a filler file takes before ferryd starts. The
 *          disk really fills (SQLite gets ENOSPC); deleting the filler gives
 *          the space back. If the test cannot mount (not root, no
 *          CAP_SYS_ADMIN), it says so and runs the cap variant instead.
 *   cap    --max-db-mb CAP_MB with --retention-delete-acked: the database
 *          reaches its cap; once the groups have acked what is stored,
 *          retention deletes it and its pages are reused, so publishing
 *          resumes by itself.
 *
 * ferryd runs with a disk reserve of RESERVE_MB_STR MiB (--disk-reserve-mb):
 * when the filesystem fills, it deletes the reserve file so that acks
 * still fit, and refuses publishes until space returns; so no ack may be
 * refused with STORAGE_FULL in either variant.
 *
 * In each: group LIVE consumes from the start, group LATE is created at
 * sequence 1 but only starts consuming once the disk is full, so it must
 * read everything back from a full store. A producer publishes batches of
 * BATCH until one fails with FERRY_ESTORAGE_FULL, then goes on retrying
 * every RETRY_MS like a real producer would, while both groups must catch
 * up with everything stored and ack it (an ack failing with STORAGE_FULL
 * is retried, and counted). Then space comes back and a publish must
 * succeed within RESUME_MS. At the end, with the broker stopped, the store
 * holds exactly the acked publishes (dense sequences, each id once, at its
 * acked sequence), and after a restart no group gets anything again: every
 * ack that returned success was durable.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "it_util.h"

#define TOPIC "disk"
#define GROUP_LIVE "disk-live"
#define GROUP_LATE "disk-late"
#define FS_MB 64
#define FILLER_MB 24
#define CAP_MB 8
/* --disk-reserve-mb: the space kept for acks once the disk is full. */
#define RESERVE_MB_STR "8"
#define RESERVE_BYTES (8u << 20)
#define BATCH 20
#define PAYLOAD_BYTES 2000
/* Far more than fits in either variant: the disk must fill first. */
#define MAX_MSGS 200000
#define RETRY_MS 20
#ifndef PRODUCER_RETRY_MS
#define PRODUCER_RETRY_MS RETRY_MS
#endif
/* Generous limits; none is a performance assertion. */
#define FILL_MS 60000
#define CATCH_UP_MS 30000
#define RESUME_MS 20000
#define REQUEST_TIMEOUT_MS 15000

struct consumer {
    const char *group;
    const char *addr;
    pthread_t th;
    int started;
    atomic_int stop;
    atomic_int failed;
    char err[512];
    atomic_size_t acked;       /* sequences whose ack returned success */
    atomic_size_t ack_full;    /* acks answered STORAGE_FULL (then retried) */
    atomic_size_t ack_other;   /* acks answered another error (then retried) */
    atomic_uint_fast64_t last; /* highest sequence delivered */
    atomic_uchar *confirmed;   /* [seq]: an ack of it returned success */
    uint32_t *deliveries;      /* [seq] */
};

struct fx {
    struct harness_broker b;
    char mnt[256]; /* the tmpfs mount point; "" when not mounted */
    int mounted;
    char filler[320];
    char data[320];
    int cap_mode;
    int filler_mb; /* 0: FILLER_MB */
    struct consumer live, late;
    /* Producer records: id number -> acked seq (0: not acked). */
    uint64_t *seq_of;
    size_t n_ids;
};

static void unmount_all(struct fx *fx)
{
    if (fx->mounted) {
        if (umount2(fx->mnt, 0) != 0 && umount2(fx->mnt, MNT_DETACH) != 0)
            fprintf(stderr, "test_disk: cannot unmount %s: %s\n", fx->mnt, strerror(errno));
        fx->mounted = 0;
    }
    if (fx->mnt[0]) {
        rmdir(fx->mnt);
        fx->mnt[0] = '\0';
    }
}

/* Writes a file of mb MiB (tmpfs allocates what is written). */
static int write_filler(const char *path, int mb)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    static uint8_t chunk[1 << 16];
    memset(chunk, 0xa5, sizeof chunk);
    for (int i = 0; i < mb * 16; i++) {
        if (write(fd, chunk, sizeof chunk) != (ssize_t)sizeof chunk) {
            int e = errno;
            close(fd);
            return -e;
        }
    }
    close(fd);
    return 0;
}

/* Mounts a FS_MB tmpfs with a FILLER_MB filler. Returns 0, or -1 after
 * saying why (the caller then falls back to the cap). */
static int mount_small_fs(struct fx *fx)
{
    if (geteuid() != 0) {
        print_message("test_disk: not root (euid %d): cannot mount a small tmpfs; using "
                      "--max-db-mb %d instead\n",
                      (int)geteuid(), CAP_MB);
        return -1;
    }
    const char *tmp = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(fx->mnt, sizeof fx->mnt, "%s/ferry-disk-XXXXXX", tmp);
    if (!mkdtemp(fx->mnt)) {
        print_message("test_disk: mkdtemp: %s; using --max-db-mb %d instead\n", strerror(errno),
                      CAP_MB);
        fx->mnt[0] = '\0';
        return -1;
    }
    char opts[32];
    snprintf(opts, sizeof opts, "size=%dm,mode=0755", FS_MB);
    if (mount("tmpfs", fx->mnt, "tmpfs", 0, opts) != 0) {
        print_message("test_disk: mount -t tmpfs -o %s: %s; using --max-db-mb %d instead\n", opts,
                      strerror(errno), CAP_MB);
        unmount_all(fx);
        return -1;
    }
    fx->mounted = 1;
    snprintf(fx->filler, sizeof fx->filler, "%s/filler", fx->mnt);
    snprintf(fx->data, sizeof fx->data, "%s/data", fx->mnt);
    int r = write_filler(fx->filler, fx->filler_mb ? fx->filler_mb : FILLER_MB);
    if (r != 0) {
        print_message("test_disk: cannot write the filler: %s; using --max-db-mb %d instead\n",
                      strerror(-r), CAP_MB);
        unmount_all(fx);
        return -1;
    }
    return 0;
}

static int start_cap(struct fx *fx)
{
    char mb[16];
    snprintf(mb, sizeof mb, "%d", CAP_MB);
    const char *const args[] = {
        "--max-db-mb", mb, "--retention-delete-acked", "--disk-reserve-mb", RESERVE_MB_STR, NULL};
    fx->cap_mode = 1;
    return harness_start(&fx->b, args);
}

static struct fx *fx_new(void)
{
    struct fx *fx = calloc(1, sizeof *fx);
    if (!fx)
        return NULL;
    fx->seq_of = calloc(MAX_MSGS, sizeof *fx->seq_of);
    struct consumer *cs[2] = {&fx->live, &fx->late};
    for (int i = 0; i < 2; i++) {
        cs[i]->confirmed = calloc(MAX_MSGS + 1, 1);
        cs[i]->deliveries = calloc(MAX_MSGS + 1, sizeof *cs[i]->deliveries);
        if (!cs[i]->confirmed || !cs[i]->deliveries)
            return NULL;
    }
    fx->live.group = GROUP_LIVE;
    fx->late.group = GROUP_LATE;
    return fx->seq_of ? fx : NULL;
}

static int setup_tmpfs(void **state)
{
    struct fx *fx = fx_new();
    if (!fx)
        return -1;
    *state = fx;
    if (mount_small_fs(fx) != 0)
        return start_cap(fx);
    static const char *const args[] = {"--disk-reserve-mb", RESERVE_MB_STR, NULL};
    return harness_start_dir(&fx->b, fx->data, args);
}

static int setup_cap(void **state)
{
    struct fx *fx = fx_new();
    if (!fx)
        return -1;
    *state = fx;
    return start_cap(fx);
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    int rc = 0;
    if (!fx)
        return 0;
    struct consumer *cs[2] = {&fx->live, &fx->late};
    for (int i = 0; i < 2; i++) {
        atomic_store(&cs[i]->stop, 1);
        if (cs[i]->started)
            pthread_join(cs[i]->th, NULL);
    }
    rc = harness_check_log(&fx->b);
    harness_cleanup(&fx->b);
    unmount_all(fx);
    for (int i = 0; i < 2; i++) {
        free(cs[i]->confirmed);
        free(cs[i]->deliveries);
    }
    free(fx->seq_of);
    free(fx);
    return rc;
}

/* ----- consumers ---------------------------------------------------------- */

static void cons_fail(struct consumer *cs, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void cons_fail(struct consumer *cs, const char *fmt, ...)
{
    if (atomic_load(&cs->failed))
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cs->err, sizeof cs->err, fmt, ap);
    va_end(ap);
    atomic_store(&cs->failed, 1);
}

/* Receives and acks until told to stop. An ack that fails with a broker
 * error is retried (the deliveries stay ours); the connection must not
 * die. */
static void *consumer_main(void *arg)
{
    struct consumer *cs = arg;
    ferry_options o = FERRY_OPTIONS_INIT;
    o.client_name = cs->group;
    o.request_timeout_ms = REQUEST_TIMEOUT_MS;
    ferry_conn *c = NULL;
    char err[256] = "";
    int rc = ferry_connect(cs->addr, &o, &c, err, sizeof err);
    if (rc != 0) {
        cons_fail(cs, "connect: %s (%s)", ferry_strerror(rc), err);
        return NULL;
    }
    ferry_sub_options so = FERRY_SUB_OPTIONS_INIT;
    so.start = FERRY_START_SEQ;
    so.start_value = 1;
    so.max_in_flight = 100;
    so.ack_wait_ms = 600000;
    ferry_sub *s = NULL;
    /* Subscribing to an existing group writes nothing; retry if it must. */
    int64_t deadline = harness_now_ms() + CATCH_UP_MS;
    while ((rc = ferry_subscribe(c, TOPIC, cs->group, &so, &s)) == FERRY_ESTORAGE_FULL &&
           harness_now_ms() < deadline)
        it_sleep_ms(RETRY_MS);
    if (rc != 0) {
        cons_fail(cs, "subscribe: %s (%s)", ferry_strerror(rc), ferry_errmsg(c));
        ferry_close(c);
        return NULL;
    }
    uint64_t seqs[64];
    size_t n = 0;
    while (!atomic_load(&cs->stop) && !atomic_load(&cs->failed)) {
        if (n == 0) {
            ferry_delivery *d = NULL;
            rc = ferry_receive(c, 100, &d);
            while (rc == 0 && d) {
                uint64_t seq = d->seq;
                if (seq == 0 || seq > MAX_MSGS) {
                    cons_fail(cs, "delivery of seq %" PRIu64, seq);
                } else {
                    cs->deliveries[seq]++;
                    if (atomic_load(&cs->confirmed[seq]))
                        cons_fail(cs,
                                  "%s: seq %" PRIu64 " delivered again after an ack of it "
                                  "succeeded",
                                  cs->group, seq);
                    if (seq > atomic_load(&cs->last))
                        atomic_store(&cs->last, seq);
                }
                seqs[n++] = seq;
                ferry_delivery_free(d);
                d = NULL;
                if (n == 64 || ferry_receive(c, 0, &d) != 0)
                    break;
            }
            if (rc != 0 && rc != FERRY_ETIMEOUT) {
                cons_fail(cs, "%s: receive: %s (%s)", cs->group, ferry_strerror(rc),
                          ferry_errmsg(c));
                break;
            }
            if (n == 0)
                continue;
        }
        rc = ferry_sub_ack(s, seqs, n);
        if (rc == 0) {
            for (size_t i = 0; i < n; i++)
                atomic_store(&cs->confirmed[seqs[i]], 1);
            atomic_fetch_add(&cs->acked, n);
            n = 0;
            continue;
        }
        if (rc == FERRY_ESTORAGE_FULL)
            atomic_fetch_add(&cs->ack_full, 1);
        else if (rc < -FERRY_WIRE_CODE_MAX)
            cons_fail(cs, "%s: ack: %s (%s): the connection did not survive", cs->group,
                      ferry_strerror(rc), ferry_errmsg(c));
        else
            atomic_fetch_add(&cs->ack_other, 1);
        it_sleep_ms(RETRY_MS); /* then the same sequences again */
    }
    ferry_close(c);
    return NULL;
}

static void consumer_start(struct fx *fx, struct consumer *cs)
{
    cs->addr = fx->b.addr;
    atomic_init(&cs->stop, 0);
    atomic_init(&cs->failed, 0);
    atomic_init(&cs->acked, 0);
    atomic_init(&cs->ack_full, 0);
    atomic_init(&cs->ack_other, 0);
    atomic_init(&cs->last, 0);
    assert_int_equal(pthread_create(&cs->th, NULL, consumer_main, cs), 0);
    cs->started = 1;
}

static void consumer_stop(struct consumer *cs)
{
    atomic_store(&cs->stop, 1);
    if (cs->started)
        pthread_join(cs->th, NULL);
    cs->started = 0;
    if (atomic_load(&cs->failed))
        fail_msg("%s", cs->err);
}

static void consumers_check(struct fx *fx)
{
    if (atomic_load(&fx->live.failed))
        fail_msg("%s", fx->live.err);
    if (atomic_load(&fx->late.failed))
        fail_msg("%s", fx->late.err);
}

/* ----- producing ----------------------------------------------------------- */

/* Publishes ids [*next, *next + BATCH) as one batch. Returns 0 (acks
 * recorded, *next advanced) or the error. */
static int publish_batch(struct fx *fx, ferry_conn *c, size_t *next)
{
    static ferry_msg msgs[BATCH];
    static ferry_ack acks[BATCH];
    static char ids[BATCH][32];
    static uint8_t payload[BATCH][PAYLOAD_BYTES];
    assert_true(*next + BATCH <= MAX_MSGS);
    for (int j = 0; j < BATCH; j++) {
        size_t n = *next + (size_t)j;
        snprintf(ids[j], sizeof ids[j], "d-%zu", n);
        it_payload(n, payload[j], PAYLOAD_BYTES);
        memset(&msgs[j], 0, sizeof msgs[j]);
        msgs[j].topic = TOPIC;
        msgs[j].id = ids[j];
        msgs[j].payload = payload[j];
        msgs[j].payload_len = PAYLOAD_BYTES;
    }
    int rc = ferry_publish_batch(c, msgs, BATCH, acks);
    if (rc != 0)
        return rc;
    for (int j = 0; j < BATCH; j++) {
        size_t n = *next + (size_t)j;
        if (acks[j].duplicate || acks[j].seq == 0)
            fail_msg("d-%zu acked as seq %" PRIu64 " duplicate %d", n, acks[j].seq,
                     acks[j].duplicate);
        fx->seq_of[n] = acks[j].seq;
    }
    *next += BATCH;
    if (*next > fx->n_ids)
        fx->n_ids = *next;
    return 0;
}

/* A failed publish must fail cleanly: STORAGE_FULL with its text, the
 * connection usable. */
static void expect_storage_full(ferry_conn *c, int rc, const char *when)
{
    if (rc != FERRY_ESTORAGE_FULL)
        fail_msg("%s: publish failed with %s (%s), not storage full", when, ferry_strerror(rc),
                 ferry_errmsg(c));
    assert_non_null(strstr(ferry_errmsg(c), "storage full"));
}

static uint64_t head_seq(ferry_conn *c)
{
    ferry_topic_info ti;
    assert_int_equal(it_topic(c, TOPIC, &ti), 1);
    return ti.head_seq;
}

/* Waits until both groups have acked through head, the producer retrying
 * a publish every RETRY_MS meanwhile when retry is set (each must fail
 * with STORAGE_FULL or succeed; successes raise the head). */
static void catch_up(struct fx *fx, ferry_conn *c, size_t *next, int retry, const char *what)
{
    int64_t start = harness_now_ms();
    size_t attempts = 0, failed = 0;
    uint64_t head = head_seq(c);
    for (;;) {
        consumers_check(fx);
        int done = 1;
        struct consumer *cs[2] = {&fx->live, &fx->late};
        for (int i = 0; i < 2; i++)
            for (uint64_t s = 1; done && s <= head; s++)
                done = atomic_load(&cs[i]->confirmed[s]);
        if (done)
            break;
        if (harness_now_ms() - start > CATCH_UP_MS) {
            harness_dump_log(&fx->b);
            fail_msg("%s: the groups did not ack everything stored (head %" PRIu64
                     ") within %d ms: %s acked %zu (last delivered %" PRIu64
                     ", %zu acks refused as storage full, %zu otherwise), %s acked %zu (last "
                     "delivered %" PRIu64 ", %zu refused as storage full, %zu otherwise); the "
                     "producer retried %zu times, %zu refused",
                     what, head, CATCH_UP_MS, fx->live.group, atomic_load(&fx->live.acked),
                     (uint64_t)atomic_load(&fx->live.last), atomic_load(&fx->live.ack_full),
                     atomic_load(&fx->live.ack_other), fx->late.group, atomic_load(&fx->late.acked),
                     (uint64_t)atomic_load(&fx->late.last), atomic_load(&fx->late.ack_full),
                     atomic_load(&fx->late.ack_other), attempts, failed);
        }
        if (retry) {
            attempts++;
            int rc = publish_batch(fx, c, next);
            if (rc != 0) {
                failed++;
                expect_storage_full(c, rc, what);
            } else {
                head = head_seq(c);
            }
        }
        it_sleep_ms(PRODUCER_RETRY_MS);
    }
    print_message("%s: both groups acked all %" PRIu64 " stored in %lld ms (acks refused as "
                  "storage full and retried: %zu and %zu); the producer retried %zu times "
                  "meanwhile, %zu refused with storage full\n",
                  what, head, (long long)(harness_now_ms() - start),
                  atomic_load(&fx->live.ack_full), atomic_load(&fx->late.ack_full), attempts,
                  failed);
}

/* ----- the checks ---------------------------------------------------------- */

/* Broker stopped: the rows of TOPIC are exactly the acked publishes still
 * kept, dense from the first kept sequence to the head, each id once at
 * its acked sequence with its payload. With retention (cap variant) the
 * front may be deleted, but only what both groups had acked. */
static void check_store(struct fx *fx, uint64_t head)
{
    struct harness_row *rows = NULL;
    long n = harness_db_rows(&fx->b, TOPIC, &rows);
    assert_true(n >= 0);
    uint64_t first = n > 0 ? rows[0].seq : head + 1;
    if (!fx->cap_mode && first != 1)
        fail_msg("the store starts at seq %" PRIu64 ", not 1", first);
    if ((uint64_t)n != head - first + 1)
        fail_msg("%ld rows for sequences %" PRIu64 "..%" PRIu64 ": not dense", n, first, head);
    size_t acked = 0;
    uint8_t want[PAYLOAD_BYTES];
    uint8_t *seen = calloc(MAX_MSGS, 1);
    assert_non_null(seen);
    for (long i = 0; i < n; i++) {
        size_t k;
        char tail;
        if (rows[i].seq != first + (uint64_t)i)
            fail_msg("row %ld has seq %" PRIu64 ", want %" PRIu64, i, rows[i].seq,
                     first + (uint64_t)i);
        if (sscanf(rows[i].msg_id, "d-%zu%c", &k, &tail) != 1 || k >= fx->n_ids)
            fail_msg("seq %" PRIu64 " holds id %s, never published", rows[i].seq, rows[i].msg_id);
        if (seen[k]++)
            fail_msg("id %s stored twice", rows[i].msg_id);
        if (fx->seq_of[k] != rows[i].seq)
            fail_msg("seq %" PRIu64 " holds %s, whose publish was %s%" PRIu64, rows[i].seq,
                     rows[i].msg_id, fx->seq_of[k] ? "acked at seq " : "refused (seq ",
                     fx->seq_of[k]);
        it_payload(k, want, PAYLOAD_BYTES);
        assert_int_equal(rows[i].payload_len, PAYLOAD_BYTES);
        assert_memory_equal(rows[i].payload, want, PAYLOAD_BYTES);
    }
    for (size_t k = 0; k < fx->n_ids; k++) {
        uint64_t s = fx->seq_of[k];
        if (!s)
            continue;
        acked++;
        if (s >= first)
            assert_true(seen[k]);
        else if (!atomic_load(&fx->live.confirmed[s]) || !atomic_load(&fx->late.confirmed[s]))
            fail_msg("d-%zu (seq %" PRIu64 ") was deleted before both groups acked it", k, s);
    }
    print_message("store: %ld rows (seq %" PRIu64 "..%" PRIu64 ") for %zu acked publishes%s\n", n,
                  first, head, acked, fx->cap_mode ? ", the front deleted once acked" : "");
    if (!fx->cap_mode && (size_t)n != acked)
        fail_msg("%ld rows stored for %zu acked publishes", n, acked);
    free(seen);
    harness_db_rows_free(rows, n);
}

/* After a restart: both groups are done (nothing pending), and a consumer
 * of each gets nothing again. */
static void check_groups_after_restart(struct fx *fx, uint64_t head)
{
    ferry_conn *c = it_connect(fx->b.addr);
    ferry_group_info *list = NULL;
    size_t n = 0;
    assert_int_equal(ferry_groups(c, TOPIC, &list, &n), 0);
    assert_int_equal(n, 2);
    for (size_t i = 0; i < n; i++) {
        if (list[i].cursor != head + 1 || list[i].lag != 0 || list[i].ack_floor != head + 1)
            fail_msg("after the restart %s has cursor %" PRIu64 ", floor %" PRIu64 ", lag %" PRIu64
                     " (head %" PRIu64 ")",
                     list[i].group, list[i].cursor, list[i].ack_floor, list[i].lag, head);
    }
    ferry_groups_free(list);
    ferry_sub *s1 = NULL, *s2 = NULL;
    assert_int_equal(ferry_subscribe(c, TOPIC, GROUP_LIVE, NULL, &s1), 0);
    assert_int_equal(ferry_subscribe(c, TOPIC, GROUP_LATE, NULL, &s2), 0);
    ferry_delivery *d = NULL;
    int rc = ferry_receive(c, 1000, &d);
    if (rc == 0)
        fail_msg("after the restart %s got seq %" PRIu64 " again", d->group, d->seq);
    assert_int_equal(rc, FERRY_ETIMEOUT);
    ferry_close(c);
}

/* The size of the data folder's disk reserve file, or -1 if there is none. */
static long long reserve_size(struct fx *fx)
{
    char path[HARNESS_PATH_BYTES + 32];
    snprintf(path, sizeof path, "%s/ferry.reserve", fx->mounted ? fx->data : fx->b.data_dir);
    struct stat st;
    if (stat(path, &st) != 0)
        return -1;
    /* Allocated, not sparse: the blocks must really be set aside. */
    if ((long long)st.st_blocks * 512 < (long long)st.st_size)
        fail_msg("%s is sparse: %lld bytes, %lld allocated", path, (long long)st.st_size,
                 (long long)st.st_blocks * 512);
    return (long long)st.st_size;
}

static void full_disk_scenario(struct fx *fx)
{
    print_message("%s\n", fx->cap_mode ? "variant: --max-db-mb cap with --retention-delete-acked"
                                       : "variant: data folder on a small tmpfs");
    ferry_options o = FERRY_OPTIONS_INIT;
    o.request_timeout_ms = REQUEST_TIMEOUT_MS;
    ferry_conn *c = NULL;
    char err[256] = "";
    assert_int_equal(ferry_connect(fx->b.addr, &o, &c, err, sizeof err), 0);

    size_t next = 0;
    assert_int_equal(reserve_size(fx), RESERVE_BYTES);
    assert_int_equal(publish_batch(fx, c, &next), 0);
    /* Group LATE exists from seq 1 but nobody consumes it yet. */
    uint64_t cursor = 0;
    assert_int_equal(ferry_seek(c, TOPIC, GROUP_LATE, FERRY_START_SEQ, 1, &cursor), 0);
    assert_int_equal(cursor, 1);
    consumer_start(fx, &fx->live);

    /* Fill. */
    int64_t start = harness_now_ms();
    int rc;
    while ((rc = publish_batch(fx, c, &next)) == 0) {
        consumers_check(fx);
        if (harness_now_ms() - start > FILL_MS)
            fail_msg("the disk did not fill within %d ms (%zu messages)", FILL_MS, next);
    }
    expect_storage_full(c, rc, "filling");
    print_message("storage full after %zu acked messages: \"%s\"\n", next, ferry_errmsg(c));
    /* The connection is still usable. */
    assert_int_equal(ferry_ping(c, NULL), 0);
    /* On a full filesystem the reserve was given up for the acks (it may
     * be back already if truncating the WAL freed enough); a full database
     * under a cap leaves it alone. */
    if (fx->mounted)
        assert_true(
            it_file_has(fx->b.log_path, "released the " RESERVE_MB_STR " MiB disk reserve"));
    else
        assert_int_equal(reserve_size(fx), RESERVE_BYTES);

    /* Full: the late group reads everything back, both groups ack it all,
     * while the producer keeps knocking. */
    consumer_start(fx, &fx->late);
    catch_up(fx, c, &next, 1, "disk full");
    /* The reserve took every ack: none was refused. */
    assert_int_equal(atomic_load(&fx->live.ack_full) + atomic_load(&fx->late.ack_full), 0);
    assert_int_equal(atomic_load(&fx->live.ack_other) + atomic_load(&fx->late.ack_other), 0);

    /* Space comes back. */
    if (fx->cap_mode) {
        print_message("the groups acked everything: retention may free the space\n");
    } else {
        assert_int_equal(unlink(fx->filler), 0);
        print_message("deleted the %d MiB filler\n", FILLER_MB);
    }
    start = harness_now_ms();
    size_t refused = 0;
    while ((rc = publish_batch(fx, c, &next)) != 0) {
        expect_storage_full(c, rc, "after space came back");
        refused++;
        if (harness_now_ms() - start > RESUME_MS) {
            harness_dump_log(&fx->b);
            fail_msg("publishing did not resume within %d ms after space came back (%zu "
                     "refused)",
                     RESUME_MS, refused);
        }
        it_sleep_ms(RETRY_MS);
    }
    print_message("publishing resumed %lld ms after space came back (%zu refused before)\n",
                  (long long)(harness_now_ms() - start), refused);
    assert_int_equal(reserve_size(fx), RESERVE_BYTES); /* set aside again */
    for (int i = 0; i < 10; i++)
        assert_int_equal(publish_batch(fx, c, &next), 0);
    catch_up(fx, c, &next, 0, "after resuming");
    uint64_t head = head_seq(c);
    ferry_close(c);
    consumer_stop(&fx->live);
    consumer_stop(&fx->late);

    int st = harness_stop(&fx->b);
    if (st != 0)
        harness_dump_log(&fx->b);
    assert_int_equal(st, 0);
    check_store(fx, head);
    assert_int_equal(harness_restart(&fx->b), 0);
    check_groups_after_restart(fx, head);
}

static void test_disk_full_tmpfs_publish_refused_consumers_go_on_resumes(void **state)
{
    full_disk_scenario(*state);
}

static void test_disk_db_cap_publish_refused_consumers_go_on_resumes(void **state)
{
    full_disk_scenario(*state);
}

/* ----- an ack refused as storage full, then retried ----------------------- */

static int setup_small_cap(void **state)
{
    static const char *const args[] = {"--max-db-mb", "2", NULL};
    struct fx *fx = fx_new();
    if (!fx)
        return -1;
    *state = fx;
    fx->cap_mode = 1;
    return harness_start(&fx->b, args);
}

/* Reads frames from fd until one answers request_id (DELIVERs before it
 * are recorded in got[]). Returns its type; *code is the ERROR code, or the
 * first ACK_OK entry's code. */
static int raw_reply(int fd, uint32_t request_id, uint8_t *got, size_t got_len, uint16_t *code)
{
    static uint8_t buf[1 << 20];
    for (;;) {
        struct proto_frame f;
        int r = harness_read_frame(fd, buf, sizeof buf, 10000, &f);
        if (r != 1)
            fail_msg("raw connection: no reply to request %u (%d)", request_id, r);
        if (f.type == PROTO_DELIVER) {
            if (f.u.deliver.seq < got_len)
                got[f.u.deliver.seq] = 1;
            continue;
        }
        if (f.request_id != request_id)
            fail_msg("raw connection: reply to request %u while waiting for %u", f.request_id,
                     request_id);
        *code = 0;
        if (f.type == PROTO_ERROR) {
            *code = f.u.error.code;
        } else if (f.type == PROTO_ACK_OK) {
            struct proto_ack_ok_iter it;
            uint64_t seq;
            proto_ack_ok_iter_init(&it, &f.u.ack_ok);
            if (!proto_ack_ok_next(&it, &seq, code))
                *code = 0;
        }
        return f.type;
    }
}

/*
 * An ACK_OK on a full disk must mean what every ACK_OK means: the ack is
 * durable, so the message is never delivered to the group again (ferry.h:
 * "waits for the broker's ACK_OK, which it sends once the ack is
 * durable"). The test sends, in one write, a PUBLISH the full database
 * cannot take and an ACK of seq 3 (seq 1 stays unacked, so the floor stays
 * below it). A broker that lets the failed PUBLISH take its whole commit
 * down refuses the ACK too (STORAGE_FULL); the client then acks again, as
 * it should. Whichever ACK_OK it gets, after kill -9 and a restart seq 3
 * must not come again.
 *
 * The broker bug this test found, now fixed: groups_on_ack() marked the
 * sequence acked in memory before the commit that persists it, and nothing
 * undid that when the commit failed. The client's second ack then found
 * the bit set, counted as "already acked" and was answered ACK_OK with no
 * write at all; the ack was lost at the next crash (seq 3 delivered again
 * after kill -9). A group whose ack commit failed now rewrites its whole
 * ack state with its next ACK (acks_unsaved in broker/group.c).
 */
static void test_disk_ack_refused_as_full_then_acked_again_is_durable(void **state)
{
    struct fx *fx = *state;
    const char *group = "disk-ackdur";
    ferry_conn *c = it_connect_opts(fx->b.addr, REQUEST_TIMEOUT_MS, 0);
    size_t next = 0;
    assert_int_equal(publish_batch(fx, c, &next), 0);

    int fd = harness_connect(fx->b.addr);
    assert_true(fd >= 0);
    assert_int_equal(harness_handshake(fd, NULL), 0);
    uint8_t frame[512];
    struct proto_writer w;
    struct proto_subscribe sub = {
        .sub_id = 1,
        .topic = {(const uint8_t *)TOPIC, strlen(TOPIC)},
        .group = {(const uint8_t *)group, strlen(group)},
        .start = PROTO_START_SEQ,
        .start_value = 1,
        .max_in_flight = 10,
        .ack_wait_ms = 600000,
    };
    proto_writer_init(&w, frame, sizeof frame);
    assert_int_equal(proto_encode_subscribe(&w, 2, &sub), 0);
    assert_int_equal(harness_send(fd, frame, w.len), 0);
    uint8_t got[16] = {0};
    uint16_t code;
    assert_int_equal(raw_reply(fd, 2, got, sizeof got, &code), PROTO_SUBSCRIBE_OK);

    int rc;
    while ((rc = publish_batch(fx, c, &next)) == 0) {
    }
    expect_storage_full(c, rc, "filling");

    /* One write: a PUBLISH of 256 KiB (cannot fit) and an ACK of seq 3
     * (above the group's floor: seq 1 stays unacked). */
    size_t big = 256 * 1024;
    uint8_t *buf = malloc(big + 4096);
    uint8_t *payload = calloc(1, big);
    assert_non_null(buf);
    assert_non_null(payload);
    size_t len = harness_build_publish(buf, big + 4096, 3, TOPIC, "too-big", payload, big);
    assert_true(len > 0);
    uint64_t seq3 = 3;
    proto_writer_init(&w, buf + len, big + 4096 - len);
    assert_int_equal(proto_encode_ack(&w, 4, 1, &seq3, 1), 0);
    assert_int_equal(harness_send(fd, buf, len + w.len), 0);
    assert_int_equal(raw_reply(fd, 3, got, sizeof got, &code), PROTO_ERROR);
    assert_int_equal(code, -FERRY_ESTORAGE_FULL);
    int type = raw_reply(fd, 4, got, sizeof got, &code);
    int acked_ok;
    if (type == PROTO_ACK_OK && code == 0) {
        /* A broker that keeps a failing PUBLISH from taking the rest of
         * its commit down answers this ACK at once: durable all the same. */
        print_message("the ACK did not share the PUBLISH's failure: ACK_OK\n");
        acked_ok = 1;
    } else {
        assert_int_equal(type, PROTO_ERROR);
        assert_int_equal(code, -FERRY_ESTORAGE_FULL);
        print_message("PUBLISH and ACK of seq 3 in one commit: both refused with storage full\n");
        /* The client acks again. */
        proto_writer_init(&w, frame, sizeof frame);
        assert_int_equal(proto_encode_ack(&w, 5, 1, &seq3, 1), 0);
        assert_int_equal(harness_send(fd, frame, w.len), 0);
        type = raw_reply(fd, 5, got, sizeof got, &code);
        print_message("the ack again: %s %u\n", type == PROTO_ACK_OK ? "ACK_OK, code" : "ERROR",
                      code);
        acked_ok = type == PROTO_ACK_OK && code == 0;
    }
    free(buf);
    free(payload);
    it_sleep_ms(1500); /* a maintenance pass or two, for good measure */

    assert_int_equal(harness_kill9(&fx->b), 0);
    close(fd);
    ferry_close(c);
    assert_int_equal(harness_restart(&fx->b), 0);
    if (!acked_ok) {
        print_message("the broker kept refusing the ack: nothing promised, nothing to check\n");
        return;
    }
    c = it_connect(fx->b.addr);
    ferry_sub_options so = FERRY_SUB_OPTIONS_INIT;
    so.max_in_flight = 10;
    ferry_sub *s = NULL;
    assert_int_equal(ferry_subscribe(c, TOPIC, group, &so, &s), 0);
    int again = 0;
    ferry_delivery *d = NULL;
    while (ferry_receive(c, 1000, &d) == 0) {
        again |= d->seq == 3;
        ferry_delivery_free(d);
        d = NULL;
    }
    ferry_close(c);
    if (again)
        fail_msg("seq 3 was delivered again after kill -9 although its second ack was answered "
                 "ACK_OK: that ACK_OK came from memory (the first, failed commit had already "
                 "marked it acked), nothing made it durable");
}

/* ----- a reserve that does not fit at start --------------------------------- */

#define LATE_FILLER_MB (FS_MB - 6)

static int setup_tmpfs_late_reserve(void **state)
{
    struct fx *fx = fx_new();
    if (!fx)
        return -1;
    *state = fx;
    fx->filler_mb = LATE_FILLER_MB;
    if (mount_small_fs(fx) != 0) {
        unmount_all(fx);
        return 0; /* the test skips */
    }
    static const char *const args[] = {"--disk-reserve-mb", RESERVE_MB_STR, NULL};
    return harness_start_dir(&fx->b, fx->data, args);
}

/* With 6 MiB free, the 8 MiB reserve cannot be set aside: ferryd says so and
 * serves anyway; once space is freed, it sets the reserve aside by itself. */
static void test_disk_reserve_set_aside_once_space_is_free(void **state)
{
    struct fx *fx = *state;
    if (!fx->mounted) {
        print_message("no small tmpfs (needs root): skipped\n");
        skip();
    }
    assert_int_equal(reserve_size(fx), -1);
    assert_true(
        it_file_has(fx->b.log_path, "cannot set aside the " RESERVE_MB_STR " MiB disk reserve"));
    ferry_conn *c = it_connect_opts(fx->b.addr, REQUEST_TIMEOUT_MS, 0);
    size_t next = 0;
    assert_int_equal(publish_batch(fx, c, &next), 0); /* publishes are not held back */
    assert_int_equal(unlink(fx->filler), 0);
    int64_t start = harness_now_ms();
    while (reserve_size(fx) < 0) {
        if (harness_now_ms() - start > RESUME_MS)
            fail_msg("the reserve was not set aside within %d ms of space coming back", RESUME_MS);
        it_sleep_ms(50);
    }
    assert_int_equal(reserve_size(fx), RESERVE_BYTES);
    print_message("reserve set aside %lld ms after space came back\n",
                  (long long)(harness_now_ms() - start));
    assert_int_equal(publish_batch(fx, c, &next), 0);
    ferry_close(c);
}

/* ----- a bad --disk-reserve-mb ---------------------------------------------- */

/* ferryd refuses a reserve that is not a number of MiB up to 1 TiB, with a
 * one-line reason and exit status 2, before touching any data folder. */
static void test_disk_reserve_option_bad_values_refused(void **state)
{
    (void)state;
    struct harness_cmd ferryd;
    int argc0 = harness_ferryd_argv(&ferryd);
    assert_true(argc0 > 0);
    char dir[] = "/tmp/ferry-disk-opt-XXXXXX";
    assert_non_null(mkdtemp(dir));
    static const char *const bad[] = {"lots", "-1", "1048577", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *argv[HARNESS_MAX_WRAPPER_ARGS + 8];
        memcpy(argv, ferryd.argv, (size_t)argc0 * sizeof *argv);
        argv[0] = ferryd.path;
        int argc = argc0;
        argv[argc++] = "--data";
        argv[argc++] = dir;
        argv[argc++] = "--disk-reserve-mb";
        argv[argc++] = (char *)bad[i];
        argv[argc] = NULL;
        struct harness_output out;
        assert_int_equal(harness_run(dir, argv, NULL, harness_ready_timeout_ms(), &out), 0);
        if (out.status != 2 || !strstr(out.err, "invalid value for --disk-reserve-mb"))
            fail_msg("--disk-reserve-mb '%s': status %d, stderr: %s", bad[i], out.status, out.err);
        harness_output_free(&out);
    }
    char reserve[64];
    snprintf(reserve, sizeof reserve, "%s/ferry.reserve", dir);
    assert_int_equal(access(reserve, F_OK), -1); /* nothing was set aside */
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_disk_full_tmpfs_publish_refused_consumers_go_on_resumes, setup_tmpfs, teardown),
        cmocka_unit_test_setup_teardown(test_disk_db_cap_publish_refused_consumers_go_on_resumes,
                                        setup_cap, teardown),
        cmocka_unit_test_setup_teardown(test_disk_ack_refused_as_full_then_acked_again_is_durable,
                                        setup_small_cap, teardown),
        cmocka_unit_test_setup_teardown(test_disk_reserve_set_aside_once_space_is_free,
                                        setup_tmpfs_late_reserve, teardown),
        cmocka_unit_test(test_disk_reserve_option_bad_values_refused),
    };
    /* IT_FILTER=pattern runs only the matching tests (cmocka's wildcards). */
    if (getenv("IT_FILTER"))
        cmocka_set_test_filter(getenv("IT_FILTER"));
    return cmocka_run_group_tests_name("disk", tests, NULL, NULL);
}
