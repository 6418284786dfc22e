/*
 * fuzz_conn.c - fuzz target for the broker's connection handling: arbitrary
 * bytes fed to one connection of a real, running ferryd state machine
 * (broker/conn.c and everything behind it: dispatch, group commit, the
 * store, consumer groups).
 *
 * Once per process the broker is started in-process, as main.c would
 * (broker_init + broker_start on a temporary data folder, 127.0.0.1:0,
 * --sync normal, small limits so that state stays small), and its libuv
 * loop runs on a background thread until exit. Each input then:
 *   - connects a TCP client to it;
 *   - unless bit 0 of the first byte is set, sends a valid HELLO first, so
 *     the bytes reach the READY state; with it set, they are the handshake;
 *   - sends the rest of the input, then a PING with request id SENTINEL;
 *   - reads what the broker answers until the PONG of the sentinel, the
 *     broker closing the connection, IDLE_MS without a byte, or INPUT_MS in
 *     all; then closes.
 * Broker state (topics, groups, messages) carries over from input to
 * input, as on a real broker.
 *
 * Checked, beyond what ASan/UBSan/LSan report in the broker (a crash, a
 * read past a buffer, a leak at exit):
 *   - every byte the broker sends decodes as frames (proto_decode), each at
 *     most the protocol's absolute maximum;
 *   - after our valid HELLO the first frame is its HELLO_OK;
 *   - a FATAL ERROR is the broker's last word: nothing follows it but the
 *     close;
 *   - no reply is larger than what its request was charged against the
 *     connection's bound when it was read (broker.reply_overruns), so no
 *     frame sequence makes the broker hold more than that bound (issue 20);
 *   - every LIVENESS_EVERY inputs, and after the last, a fresh connection
 *     completes a handshake and a PING within LIVENESS_MS: no input wedges
 *     the broker for everyone else.
 *
 * Built with -Dfuzzing=true this is a libFuzzer binary; otherwise replay.c
 * supplies main() and the committed corpus (tests/fuzz/corpus/conn) runs
 * as a test. At exit the broker is stopped the way SIGTERM stops ferryd,
 * and its data folder removed.
 */
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"
#include "log.h"
#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_conn: check failed at line %d: %s\n", __LINE__, #cond);          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define SENTINEL 0x7ffffff1u
#define IDLE_MS 50
#define INPUT_MS 2000
#define LIVENESS_EVERY 256
#define LIVENESS_MS 10000

/* ----- the broker ------------------------------------------------------------ */

static struct {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int state; /* 0 starting, 1 running, -1 failed, 2 stopped */
    uv_loop_t loop;
    struct broker b;
    struct broker_config cfg;
    char dir[256];
    struct sockaddr_in addr;
    unsigned long inputs;
} fz = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void set_state(int st)
{
    pthread_mutex_lock(&fz.mu);
    fz.state = st;
    pthread_cond_broadcast(&fz.cv);
    pthread_mutex_unlock(&fz.mu);
}

static void close_handle(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* The loop thread: init and start on it (libuv handles belong to their
 * loop's thread), run until the broker stops, release. */
static void *loop_main(void *arg)
{
    (void)arg;
    CHECK(uv_loop_init(&fz.loop) == 0);
    if (broker_init(&fz.b, &fz.loop, &fz.cfg) < 0 || broker_start(&fz.b) < 0) {
        uv_walk(&fz.loop, close_handle, NULL);
        uv_run(&fz.loop, UV_RUN_DEFAULT);
        broker_destroy(&fz.b);
        uv_loop_close(&fz.loop);
        set_state(-1);
        return NULL;
    }
    struct sockaddr_storage ss;
    int len = sizeof ss;
    CHECK(uv_tcp_getsockname(&fz.b.server, (struct sockaddr *)&ss, &len) == 0);
    memcpy(&fz.addr, &ss, sizeof fz.addr);
    set_state(1);
    uv_run(&fz.loop, UV_RUN_DEFAULT);
    broker_destroy(&fz.b);
    uv_loop_close(&fz.loop);
    set_state(2);
    return NULL;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static int liveness(void);

/* At exit: a last liveness check, then stop the broker as SIGTERM stops
 * ferryd (its uv_signal handler, installed by broker_start, catches it:
 * stop reading, commit, close), wait for its loop to end, and remove the
 * data folder. */
static void stop_broker(void)
{
    if (fz.state != 1)
        return;
    if (!liveness()) {
        fprintf(stderr, "fuzz_conn: the broker no longer answers a PING\n");
        abort();
    }
    struct sigaction sa;
    if (sigaction(SIGTERM, NULL, &sa) == 0 && sa.sa_handler != SIG_DFL &&
        sa.sa_handler != SIG_IGN) {
        raise(SIGTERM);
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += 30;
        if (pthread_timedjoin_np(fz.th, NULL, &deadline) != 0) {
            fprintf(stderr, "fuzz_conn: the broker did not stop within 30 s of SIGTERM\n");
            abort();
        }
    }
    nftw(fz.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void start_broker(void)
{
    if (fz.state == 1)
        return;
    CHECK(fz.state == 0);
    const char *tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(fz.dir, sizeof fz.dir, "%s/ferry-fuzz-conn-XXXXXX", tmp);
    CHECK(mkdtemp(fz.dir) != NULL);

    /* main.c's defaults, with small limits: the state carried from input
     * to input stays small, and a commit stays fast. */
    struct broker_config *cfg = &fz.cfg;
    memset(cfg, 0, sizeof *cfg);
    strcpy(cfg->listen_host, "127.0.0.1");
    cfg->listen_port = 0;
    snprintf(cfg->data_dir, sizeof cfg->data_dir, "%s", fz.dir);
    cfg->sync_full = 0;
    cfg->cache_mb = 8;
    cfg->max_message_bytes = PROTO_DEFAULT_MAX_MESSAGE;
    cfg->max_frame_bytes = PROTO_DEFAULT_MAX_FRAME;
    cfg->max_batch = PROTO_MAX_BATCH;
    cfg->dedupe_window_ms = 3600u * 1000u;
    cfg->dedupe_max_ids = 100000;
    cfg->retention_max_count = 1000;
    cfg->max_connections = 256;
    cfg->handshake_timeout_ms = 10000;
    cfg->conn_max_pending_bytes = 8u << 20;
    cfg->batch_max_bytes = 64u << 20;
    log_set_level(LOG_ERROR);
    signal(SIGPIPE, SIG_IGN);

    CHECK(pthread_create(&fz.th, NULL, loop_main, NULL) == 0);
    pthread_mutex_lock(&fz.mu);
    while (fz.state == 0)
        pthread_cond_wait(&fz.cv, &fz.mu);
    pthread_mutex_unlock(&fz.mu);
    if (fz.state != 1) {
        fprintf(stderr, "fuzz_conn: the broker did not start (data folder %s)\n", fz.dir);
        abort();
    }
    atexit(stop_broker);
}

/* ----- a client connection --------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int connect_broker(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    CHECK(fd >= 0);
    if (connect(fd, (struct sockaddr *)&fz.addr, sizeof fz.addr) != 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int err = 0;
    socklen_t len = sizeof err;
    if (poll(&p, 1, LIVENESS_MS) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 ||
        err != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* What the broker sent so far, checked frame by frame. */
struct replies {
    uint8_t *buf;
    size_t len, cap;
    size_t frames;
    int expect_hello_ok; /* the first frame must be HELLO_OK of request 1 */
    int fatal_seen;      /* a FATAL ERROR came: nothing may follow */
    int sentinel_seen;   /* the PONG of SENTINEL came */
};

static void check_frames(struct replies *r)
{
    size_t off = 0;
    while (off < r->len) {
        struct proto_frame f;
        ptrdiff_t n = proto_decode(r->buf + off, r->len - off, PROTO_ABSOLUTE_MAX_FRAME, &f);
        if (n == 0)
            break;
        if (n < 0) {
            fprintf(stderr, "fuzz_conn: the broker sent an undecodable frame (%td) after %zu\n", n,
                    r->frames);
            abort();
        }
        CHECK(!r->fatal_seen);
        if (r->frames == 0 && r->expect_hello_ok)
            CHECK(f.type == PROTO_HELLO_OK && f.request_id == 1);
        if (f.type == PROTO_ERROR && (f.flags & PROTO_ERROR_FATAL))
            r->fatal_seen = 1;
        if (f.type == PROTO_PONG && f.request_id == SENTINEL)
            r->sentinel_seen = 1;
        r->frames++;
        off += (size_t)n;
    }
    memmove(r->buf, r->buf + off, r->len - off);
    r->len -= off;
}

/* Reads what is there. Returns 1 for bytes, 0 for nothing yet, -1 when the
 * broker closed. */
static int read_some(int fd, struct replies *r)
{
    if (r->cap - r->len < 65536) {
        size_t ncap = r->cap ? r->cap * 2 : 1u << 17;
        CHECK(ncap <= PROTO_ABSOLUTE_MAX_FRAME * 2u);
        r->buf = realloc(r->buf, ncap);
        CHECK(r->buf != NULL);
        r->cap = ncap;
    }
    ssize_t n = recv(fd, r->buf + r->len, r->cap - r->len, 0);
    if (n > 0) {
        r->len += (size_t)n;
        check_frames(r);
        return 1;
    }
    if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
        return -1;
    return 0;
}

/* Sends out (len bytes) while reading replies; then reads until the
 * sentinel's PONG, the close, IDLE_MS of silence or INPUT_MS in all.
 * Returns 1 if the sentinel's PONG came. */
static int converse(int fd, const uint8_t *out, size_t len, struct replies *r, int idle_ms)
{
    int64_t start = now_ms(), last = start;
    int closed = 0;
    while (!closed && !r->sentinel_seen && now_ms() - start < INPUT_MS) {
        if (len > 0) {
            ssize_t n = send(fd, out, len, MSG_NOSIGNAL);
            if (n > 0) {
                out += n;
                len -= (size_t)n;
                last = now_ms();
            } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                len = 0; /* the broker closed on us: read what it said */
            }
        } else if (now_ms() - last >= idle_ms) {
            break;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN | (len > 0 ? POLLOUT : 0)};
        int wait = len > 0 ? 10 : (int)(idle_ms - (now_ms() - last));
        if (poll(&p, 1, wait < 0 ? 0 : wait) > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
            int rr = read_some(fd, r);
            if (rr > 0)
                last = now_ms();
            else if (rr < 0)
                closed = 1;
        }
    }
    return r->sentinel_seen;
}

static size_t put_hello(uint8_t *buf, size_t cap)
{
    struct proto_writer w;
    struct proto_hello h = {
        .version = PROTO_VERSION,
        .client_name = {(const uint8_t *)"fuzz", 4},
    };
    proto_writer_init(&w, buf, cap);
    CHECK(proto_encode_hello(&w, 1, &h) == 0);
    return w.len;
}

static size_t put_ping(uint8_t *buf, size_t cap, uint32_t id)
{
    struct proto_writer w;
    proto_writer_init(&w, buf, cap);
    CHECK(proto_encode_empty(&w, PROTO_PING, id) == 0);
    return w.len;
}

/* A fresh connection completes a handshake and a PING. */
static int liveness(void)
{
    int fd = connect_broker();
    if (fd < 0)
        return 0;
    uint8_t out[256];
    size_t len = put_hello(out, sizeof out);
    len += put_ping(out + len, sizeof out - len, SENTINEL);
    struct replies r = {.expect_hello_ok = 1};
    int ok = converse(fd, out, len, &r, LIVENESS_MS) && r.frames == 2;
    free(r.buf);
    close(fd);
    return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    start_broker();
    int raw = size > 0 && (data[0] & 1);
    if (size > 0) {
        data++;
        size--;
    }
    uint8_t *out = malloc(size + 256);
    CHECK(out != NULL);
    size_t len = 0;
    if (!raw)
        len = put_hello(out, 256);
    if (size)
        memcpy(out + len, data, size);
    len += size;
    len += put_ping(out + len, 64, SENTINEL);

    int fd = connect_broker();
    CHECK(fd >= 0);
    struct replies r = {.expect_hello_ok = !raw};
    converse(fd, out, len, &r, IDLE_MS);
    if (getenv("FUZZ_CONN_DEBUG"))
        fprintf(stderr, "fuzz_conn: %zu bytes in, %zu frames back%s%s\n", len, r.frames,
                r.fatal_seen ? ", fatal" : "", r.sentinel_seen ? ", sentinel" : "");
    free(r.buf);
    free(out);
    close(fd);

    /* Every reply fitted what its request was charged when it was read:
     * so no frame sequence holds more than the per-connection bound. */
    if (atomic_load(&fz.b.reply_overruns) != 0) {
        fprintf(stderr, "fuzz_conn: a reply exceeded what its request owed the connection\n");
        abort();
    }
    if (++fz.inputs % LIVENESS_EVERY == 0 && !liveness()) {
        fprintf(stderr, "fuzz_conn: after input %lu the broker no longer answers a PING\n",
                fz.inputs);
        abort();
    }
    return 0;
}
