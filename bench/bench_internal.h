/*
 * bench_internal.h - pieces shared by the bench/ sources.
 *
 * bench_util.c: clock, PRNG, UUID-like ids, the pre-generated workload and
 *               percentiles.
 * bench_pub.c:  producer threads against a running ferryd, loopback RTT.
 * bench_raw.c:  the raw-SQLite ceiling and the fdatasync probe.
 * bench.c:      `bench pub`: command line, orchestration and output; the
 *               dispatch to every subcommand.
 * bench_opts.c: option parsing and output helpers of the consumer benches.
 * bench_consume.c: the untimed fill and consumer threads (consume, backlog).
 * bench_e2e.c:  the paced publisher and the latency consumer (e2e).
 * bench_cmds.c: `bench consume`, `bench e2e`, `bench backlog`.
 * bench_cleanup.c: deleting what a run created (unless --keep).
 *
 * Everything that is timed is generated beforehand, so the measured loops
 * only publish (or insert) and read the clock.
 */
#ifndef FERRY_BENCH_INTERNAL_H
#define FERRY_BENCH_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

/* A UUID-like id is 36 characters: 8-4-4-4-12 hex digits. */
#define BENCH_ID_LEN 36

/* splitmix64: fast, statistically good enough for ids and payload bytes. */
struct bench_rng {
    uint64_t state;
};

/* Seeds from getrandom(); falls back to the clock and pid if it fails. */
void bench_rng_seed(struct bench_rng *r);
uint64_t bench_rng_next(struct bench_rng *r);
void bench_rng_fill(struct bench_rng *r, void *buf, size_t len);

/* Writes a random version-4 UUID string and its terminating NUL into out. */
void bench_uuid(struct bench_rng *r, char out[BENCH_ID_LEN + 1]);

/* CLOCK_MONOTONIC in nanoseconds. */
int64_t bench_now_ns(void);

/* Unix time in milliseconds (CLOCK_REALTIME). */
int64_t bench_unix_ms(void);

/*
 * The rows both the broker run and the raw-SQLite run store: count random
 * ids and count payloads of size bytes. Payloads are windows into one
 * random pool; as long as count * size fits the pool's cap (64 MiB) no two
 * payloads share bytes.
 */
struct bench_workload {
    size_t count;
    size_t size;
    char *ids; /* count entries of BENCH_ID_LEN + 1 bytes, NUL-terminated */
    unsigned char *pool;
    size_t pool_len;
};

/* Returns 0, or -1 when out of memory. */
int bench_workload_init(struct bench_workload *w, size_t count, size_t size, struct bench_rng *r);
void bench_workload_free(struct bench_workload *w);

static inline const char *bench_workload_id(const struct bench_workload *w, size_t i)
{
    return w->ids + i * (BENCH_ID_LEN + 1);
}

const void *bench_workload_payload(const struct bench_workload *w, size_t i);

/* Nearest-rank percentiles of n durations in nanoseconds, reported in µs. */
struct bench_pct {
    double p50_us;
    double p99_us;
    double p999_us;
    double max_us;
    double mean_us;
};

/* Sorts ns in place. n == 0 gives all zeroes. */
void bench_percentiles(int64_t *ns, size_t n, struct bench_pct *out);

/* ---- bench_pub.c ---- */

struct ferry_conn;

struct bench_pub_config {
    const char *server;
    const char *topic;
    size_t window;    /* 1: synchronous ferry_publish */
    size_t producers; /* >= 1 */
    size_t warmup;    /* messages published by producer 0 before timing */
};

struct bench_pub_result {
    size_t acked;      /* messages acknowledged without error */
    size_t failed;     /* publishes that failed or never got an ack */
    size_t duplicates; /* acks with the duplicate flag (should be 0) */
    double wall_s;     /* first send to last ack */
    struct bench_pct latency;
    char error[512]; /* first failure, empty if none */
};

/*
 * Connects cfg->producers connections, publishes the workload (ids
 * cfg->warmup .. count-1; the first cfg->warmup ids are the warm-up) split
 * evenly across one thread per connection, and measures each message's
 * publish -> ack latency. rtt_samples > 0 first measures that many pings on
 * the first connection into *rtt (may be NULL when rtt_samples is 0).
 * Returns 0 when the run completed (res->failed may still be > 0), -1 when
 * it could not start (res->error says why).
 */
int bench_pub_run(const struct bench_pub_config *cfg, const struct bench_workload *w,
                  size_t rtt_samples, struct bench_pct *rtt, struct bench_pub_result *res);

/* ---- bench_raw.c ---- */

struct bench_raw_result {
    size_t rows;
    double wall_s;
    double rows_per_s;
    char error[512];
};

/*
 * Inserts rows [first, w->count) of the workload into a fresh WAL database
 * in dir, 1000 rows per transaction, with the given synchronous mode
 * ("FULL" or "NORMAL") and a 128 MiB page cache; msg_id is UNIQUE when
 * unique_id, a plain column otherwise. Removes the database files
 * afterwards. Returns 0 or -1 (res->error says why).
 */
int bench_raw_run(const char *dir, const char *sync_mode, int unique_id,
                  const struct bench_workload *w, size_t first, struct bench_raw_result *res);

/* What the fdatasync probe writes before each fdatasync. */
enum bench_fsync_probe {
    BENCH_FSYNC_OVERWRITE,   /* 100 bytes over preallocated, durable bytes */
    BENCH_FSYNC_APPEND,      /* 100 bytes appended: the file grows */
    BENCH_FSYNC_APPEND_PAGE, /* a 4 KiB page appended: a new block each time */
};

/*
 * Writes and calls fdatasync, samples times, on a file in dir, as kind
 * says. Removes the file afterwards. Returns 0 or -1.
 */
int bench_fdatasync_probe(const char *dir, size_t samples, enum bench_fsync_probe kind,
                          struct bench_pct *out, char *err, size_t err_len);

/* ---- bench_opts.c ---- */

enum bench_opt_kind {
    BENCH_OPT_STR,  /* dst: const char ** */
    BENCH_OPT_SIZE, /* dst: size_t *, in [min, max] */
    BENCH_OPT_FLAG, /* dst: int *, set to 1; takes no value */
};

struct bench_opt {
    const char *name; /* "--messages" */
    enum bench_opt_kind kind;
    void *dst;
    size_t min, max;
};

/*
 * Parses "--opt VALUE", "--opt=VALUE" and flags against opts. cmd names the
 * subcommand in messages ("consume"). Returns 0, 1 when -h/--help was given
 * (nothing else is checked), 2 on a usage error (already reported).
 */
int bench_opts_parse(const char *cmd, int argc, char **argv, const struct bench_opt *opts,
                     size_t nopts);

/* $FERRY_SERVER when set and not empty, else FERRY_DEFAULT_SERVER. */
const char *bench_default_server(void);

/* "<prefix>-<pid>-<unix ms>": a name no earlier run used. */
void bench_unique_name(const char *prefix, char *out, size_t len);

/* "1234567" -> "1,234,567". */
const char *bench_fmt_thousands(double v, char *buf, size_t len);
/* A duration in µs, in the unit that keeps it readable. */
const char *bench_fmt_us(double us, char *buf, size_t len);
/* Writes s as a JSON string, quoted and escaped, to stdout. */
void bench_json_string(const char *s);

/* ---- bench_cleanup.c ---- */

/* At most this many topics and groups are recorded (backlog: 100 rounds). */
#define BENCH_CLEANUP_MAX 128

struct bench_cleanup_topic {
    char name[256];
    int own;   /* the run created it (absent when the run started) */
    int state; /* bench_cleanup_finish's */
};

struct bench_cleanup_group {
    char topic[256];
    char group[256];
    int own; /* its topic did not have it when the run started */
    int state;
};

/* What a run wrote to, and what of it is its own to delete at the end. */
struct bench_cleanup {
    const char *server;
    int keep; /* --keep: delete nothing */
    int json; /* the closing line goes to stderr */
    size_t ntopics, ngroups;
    struct bench_cleanup_topic topics[BENCH_CLEANUP_MAX];
    struct bench_cleanup_group groups[BENCH_CLEANUP_MAX];
};

void bench_cleanup_init(struct bench_cleanup *cl, const char *server, int keep, int json);
/* Records topics the run is about to write to (before it writes), asking
 * the broker which exist already. */
void bench_cleanup_topics(struct bench_cleanup *cl, const char *const *names, size_t n);
void bench_cleanup_topic(struct bench_cleanup *cl, const char *name);
/* Records a consumer group the run is about to join (before it does). */
void bench_cleanup_group(struct bench_cleanup *cl, const char *topic, const char *group);
/* Unless keep, deletes the run's own topics (FERRY_DELETE_FORCE) and its
 * own groups on topics that existed before; prints one line saying where
 * the run wrote and what was deleted, and a warning for what could not be.
 * Nothing when no topic was recorded. */
void bench_cleanup_finish(struct bench_cleanup *cl);

/* ---- bench_consume.c ---- */

/* Holds threads until all exist, then releases them together (state 1), or
 * tells them to quit (state -1). */
struct bench_gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int state; /* 0: wait, 1: go, -1: quit */
};

#define BENCH_GATE_INIT                                                                            \
    {                                                                                              \
        PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0                                     \
    }

void bench_gate_set(struct bench_gate *g, int state);
/* Waits until the state is not 0 and returns it. */
int bench_gate_wait(struct bench_gate *g);

struct bench_fill_result {
    uint64_t first_seq; /* the lowest and highest sequence acked */
    uint64_t last_seq;
    size_t acked;
    size_t failed;
    size_t duplicates;
    double wall_s;
    char error[512];
};

/*
 * Publishes messages [begin, end) of the workload to topic on one
 * connection, pipelined with window publishes in flight, and waits for every
 * ack. Returns 0 when every message was stored as a new message with
 * contiguous sequence numbers (first_seq .. last_seq), -1 otherwise
 * (res->error says why).
 */
int bench_fill(const char *server, const char *topic, const struct bench_workload *w, size_t begin,
               size_t end, size_t window, struct bench_fill_result *res);

struct bench_consume_config {
    const char *server;
    const char *topic;
    const char *group;  /* joined by every consumer; created at first_seq */
    uint64_t first_seq; /* the run consumes [first_seq, first_seq + count) */
    size_t count;
    size_t consumers; /* threads, one connection each */
    size_t window;    /* max_in_flight of each subscription */
    int stall_ms;     /* give up after this long without a delivery */
};

#define BENCH_SHARES 16

struct bench_consume_result {
    size_t deliveries;  /* every delivery received, in range or not */
    size_t distinct;    /* sequences of the range received at least once */
    size_t duplicates;  /* deliveries of a sequence already received */
    size_t redelivered; /* deliveries with the redelivered flag */
    size_t missing;     /* sequences of the range never received */
    size_t outside;     /* deliveries of sequences outside the range */
    size_t min_share;   /* fewest / most deliveries one consumer got */
    size_t max_share;
    size_t share[BENCH_SHARES]; /* deliveries of each of the first consumers */
    double wall_s;              /* first delivery to the completion of the last ack */
    double msgs_per_s;
    int have_group;       /* the group's state after the run: */
    uint64_t group_floor; /* ack floor (every sequence below is acked) */
    uint64_t group_lag;   /* messages not yet acked */
    uint32_t group_in_flight;
    char error[512]; /* first failure, empty if none */
};

/*
 * Connects cfg->consumers connections, then releases one thread per
 * connection together; each subscribes to cfg->group (start: first_seq,
 * window cfg->window) and receives and acks (ferry_delivery_ack_async)
 * until the group has received every sequence of the range, then flushes
 * its acks. Returns 0 when the run completed (res->missing may still be >
 * 0 after a stall), -1 when it could not start or a call failed.
 */
int bench_consume_run(const struct bench_consume_config *cfg, struct bench_consume_result *res);

/* The head (highest sequence) and message count of topic, via ferry_topics.
 * Returns 0, or -1 (err says why; a topic not found is an error). */
int bench_topic_head(const char *server, const char *topic, uint64_t *head, uint64_t *first,
                     uint64_t *count, char *err, size_t err_len);

/* Creates group on topic at the earliest message (subscribe, unsubscribe),
 * as a consumer that never comes back would. Returns 0 or -1. */
int bench_group_create(const char *server, const char *topic, const char *group, char *err,
                       size_t err_len);

/* ---- bench_e2e.c ---- */

struct bench_e2e_config {
    const char *server;
    const char *topic;
    const char *group;
    double rate;              /* messages per second */
    double seconds;           /* measured period */
    double warmup_s;          /* published first at the same rate, not measured */
    size_t size;              /* payload bytes, >= 16 */
    size_t window;            /* publishes in flight, and the consumer's window */
    const char *samples_path; /* when not NULL: one line per message written here */
};

struct bench_e2e_result {
    size_t published;         /* messages acknowledged to the publisher */
    size_t pub_failed;        /* publishes that failed */
    size_t received;          /* distinct messages the consumer got */
    size_t duplicates;        /* deliveries of a message already received */
    size_t missing;           /* published, never received */
    size_t measured;          /* samples behind the percentiles */
    double achieved_rate;     /* measured messages / their publishing span */
    double behind_max_us;     /* the publisher's worst lag behind its schedule */
    size_t behind_1ms;        /* publishes more than 1 ms behind schedule */
    struct bench_pct latency; /* publish -> delivery, measured messages */
    char error[512];
};

/*
 * Subscribes a consumer (fresh group, start latest) on its own connection
 * and thread, then publishes (warmup_s + seconds) x rate messages at a
 * steady rate on another, each carrying its CLOCK_MONOTONIC send time; the
 * consumer takes each delivery's latency and acks it. Returns 0 when the
 * run completed (counts may show losses), -1 when it could not start or a
 * call failed.
 */
int bench_e2e_run(const struct bench_e2e_config *cfg, struct bench_e2e_result *res);

/* ---- bench_cmds.c ---- */

int bench_consume_main(int argc, char **argv);
int bench_e2e_main(int argc, char **argv);
int bench_backlog_main(int argc, char **argv);

#endif /* FERRY_BENCH_INTERNAL_H */
