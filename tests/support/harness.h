/*
 * harness.h - the integration-test harness: run the real ferryd, crash it,
 * restart it, and speak raw protocol bytes to it.
 *
 * A harness_broker owns one temporary directory (mkdtemp under $TMPDIR or
 * /tmp) that holds the broker's data folder (unless the caller gave one), its
 * ready file and its log (stderr, appended across restarts). The broker is
 * the binary named by the environment variable FERRYD, started on
 * 127.0.0.1:0; its actual address is read from the ready file it writes once
 * it listens. Every start waits at most HARNESS_READY_TIMEOUT_MS and prints
 * the broker's log when it gives up, so a broker that fails to start shows
 * why in the test output.
 *
 * Invariants: b->pid is non-zero exactly while the harness owns a broker
 * process that has not been reaped; b->addr is the address of the current
 * (or last) run. harness_cleanup() is always safe to call, once the struct
 * was zeroed or started, and reaps and removes everything.
 *
 * Nothing here asserts: each call returns 0 / a count on success and a
 * negative errno-style value on failure, and the tests assert on that.
 * Set HARNESS_KEEP=1 to keep the temporary directory for a post-mortem.
 *
 * FERRYD_WRAPPER, when set, is a command put in front of ferryd's path in
 * every broker the harness starts (split on spaces and tabs, no quoting;
 * its first word is looked up on $PATH), e.g.
 *   FERRYD_WRAPPER="valgrind --error-exitcode=99 --log-file=/tmp/vg/ferryd.%p.log"
 * (script/valgrind sets it). The wrapper must exec ferryd in place, as
 * valgrind does, so that the pid the harness signals, waits for and reads
 * /proc of is the broker's. With a wrapper the start and stop timeouts are
 * HARNESS_WRAPPER_SCALE times longer (harness_slowdown), and
 * harness_cleanup stops a broker still running with SIGTERM instead of
 * killing it, so that the wrapper's checks at exit (valgrind's leak check)
 * cover every run but the deliberate crashes. The exit status a test sees
 * is the wrapper's: valgrind's --error-exitcode replaces a clean exit's 0
 * when it found errors, so such a finding fails the test that stops the
 * broker.
 */
#ifndef FERRY_TEST_HARNESS_H
#define FERRY_TEST_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <sqlite3.h>

#include "proto.h"

/* How long a start may take before the harness gives up: generous, because
 * a sanitizer build on a loaded 2-core machine can be slow to come up. */
#define HARNESS_READY_TIMEOUT_MS 10000
/* How long stop waits for a clean exit after SIGTERM before it kills. */
#define HARNESS_STOP_TIMEOUT_MS 30000
/* The factor on both under FERRYD_WRAPPER or valgrind (harness_slowdown):
 * memcheck runs a process 20-50 times slower, on a shared machine. */
#define HARNESS_WRAPPER_SCALE 10
/* Words FERRYD_WRAPPER may have. */
#define HARNESS_MAX_WRAPPER_ARGS 32
/* Extra command-line arguments a broker may be given. */
#define HARNESS_MAX_ARGS 16
/* Paths inside the temporary directory stay far below this. */
#define HARNESS_PATH_BYTES 512

struct harness_broker {
    char dir[HARNESS_PATH_BYTES / 2];    /* temp dir; removed by harness_cleanup */
    char data_dir[HARNESS_PATH_BYTES];   /* --data */
    char log_path[HARNESS_PATH_BYTES];   /* ferryd's stderr and stdout */
    char ready_path[HARNESS_PATH_BYTES]; /* --ready-file */
    char addr[64];                       /* "127.0.0.1:PORT" of the current run */
    pid_t pid;                           /* 0 when no broker is running */
    int nargs;
    char *args[HARNESS_MAX_ARGS]; /* copies of the extra arguments */
};

/* The command line that starts ferryd: FERRYD_WRAPPER's words, then
 * $FERRYD. argv[0..argc-1] point into words (or the environment); path is
 * what to pass to execv(). */
struct harness_cmd {
    char words[2048];
    char path[HARNESS_PATH_BYTES];
    char *argv[HARNESS_MAX_WRAPPER_ARGS + 2];
    int argc;
};

/* Fills *cmd; the caller appends ferryd's arguments to a copy of argv.
 * Returns argc, or a negative errno after printing why (FERRYD unset, the
 * wrapper too long or not found). For tests that start a ferryd of their
 * own rather than through harness_start. */
int harness_ferryd_argv(struct harness_cmd *cmd);

/* How many times longer than usual a test should allow for what must
 * happen "within seconds": HARNESS_WRAPPER_SCALE when FERRYD_WRAPPER is set
 * or FERRY_UNDER_VALGRIND is (to anything but 0; script/valgrind sets
 * both), else 1. For time limits that only guard against a hang, never for
 * a bound a test exists to check. */
int harness_slowdown(void);

/* HARNESS_READY_TIMEOUT_MS and HARNESS_STOP_TIMEOUT_MS times
 * harness_slowdown(). */
int harness_ready_timeout_ms(void);
int harness_stop_timeout_ms(void);

/* Creates a fresh temporary directory, uses DIR/data as the data folder and
 * starts ferryd with extra_args (a NULL-terminated list, or NULL), e.g.
 * {"--max-message-bytes", "1000", NULL}. Returns 0 once the broker listens;
 * b->addr then holds its address. On failure it has printed the broker's
 * log and removed everything it made. */
int harness_start(struct harness_broker *b, const char *const *extra_args);

/* As harness_start, but with the caller's data folder (created if missing;
 * never removed by harness_cleanup). */
int harness_start_dir(struct harness_broker *b, const char *data_dir,
                      const char *const *extra_args);

/* Starts the broker again on the same data folder with the same arguments
 * (it gets a new port: re-read b->addr). The previous run must have been
 * stopped or killed. */
int harness_restart(struct harness_broker *b);

/* SIGTERM, then waits for the exit (killing it after
 * HARNESS_STOP_TIMEOUT_MS). Returns the exit status (0..255), 128 + signal
 * when it died of a signal, or a negative value when there was nothing to
 * stop or it had to be killed. */
int harness_stop(struct harness_broker *b);

/* As harness_stop with another signal (SIGINT). */
int harness_stop_signal(struct harness_broker *b, int sig);

/* SIGKILL and reap: the crash. Returns 0, or -ESRCH when not running. */
int harness_kill9(struct harness_broker *b);

/* Kills a broker still running (stops it, under FERRYD_WRAPPER), removes
 * the temporary directory (unless HARNESS_KEEP is set) and frees the
 * argument copies. NULL-safe. */
void harness_cleanup(struct harness_broker *b);

/* Prints the broker's log to stderr, framed, for diagnosis. */
void harness_dump_log(const struct harness_broker *b);

/* Reads the whole file at path into a NUL-terminated malloc'd buffer
 * (empty when the file cannot be read; NULL only without memory) and sets
 * *len to its length. The caller frees it. */
char *harness_slurp(const char *path, size_t *len);

/* Scans the broker's log (every run so far) for sanitizer reports
 * (AddressSanitizer, LeakSanitizer, UndefinedBehaviorSanitizer "runtime
 * error:"). Returns 0 when there are none; otherwise prints the log and
 * returns -1. Teardowns call it so that a broker bug found by a sanitizer
 * fails the test even when the broker carried on. */
int harness_check_log(const struct harness_broker *b);

/* The broker's resident set in KiB from /proc/PID/status, or -1. */
long harness_rss_kib(pid_t pid);

/* Its peak resident set (VmHWM) in KiB, or -1. */
long harness_hwm_kib(pid_t pid);

/* Why pid's RSS says nothing about its own memory use, or NULL when it
 * does: "valgrind" when FERRY_UNDER_VALGRIND is set (to anything but 0;
 * script/valgrind sets it, and then every process runs several times slower
 * too) or pid maps valgrind's preload (memcheck's shadow memory counts in
 * its RSS), "a sanitizer" when it maps libasan or libtsan (whose allocator
 * quarantines freed memory). Tests print the figure and skip an RSS bound
 * then. */
const char *harness_rss_unreliable(pid_t pid);

/* Opens DIR/data/ferry.db read-write (no create) for white-box checks.
 * Only while the broker is stopped: the broker owns the file otherwise. */
int harness_db_open(const struct harness_broker *b, sqlite3 **out);

/* One row of the messages_v view. Strings and blobs are malloc'd copies;
 * key and headers are NULL (length 0) when the message has none. headers is
 * the store's encoding, documented at the top of broker/store.c: u16 count,
 * then count (str16 name, str16 value) pairs, as on the wire. */
struct harness_row {
    uint64_t seq;
    char *msg_id;
    uint8_t *key;
    size_t key_len;
    uint8_t *headers;
    size_t headers_len;
    uint8_t *payload;
    size_t payload_len;
    int64_t ts_ms;
    int64_t deliver_at_ms;
};

/* Reads every row of topic from messages_v in sequence order into *out
 * (free with harness_db_rows_free). Returns the row count or a negative
 * errno. Broker stopped, as for harness_db_open. */
long harness_db_rows(const struct harness_broker *b, const char *topic, struct harness_row **out);
void harness_db_rows_free(struct harness_row *rows, long n);

/* Monotonic milliseconds, and wall-clock Unix milliseconds. */
int64_t harness_now_ms(void);
int64_t harness_wall_ms(void);

/* A random UUID-like id (8-4-4-4-12 lower-case hex, 36 chars + NUL) from a
 * splitmix64 state the caller owns; seed it with harness_seed(). */
uint64_t harness_seed(void);
void harness_uuid(uint64_t *state, char out[37]);

/* ----- raw sockets ------------------------------------------------------ */

/* Connects a blocking TCP socket to "HOST:PORT" (TCP_NODELAY). Returns the
 * fd or a negative errno. */
int harness_connect(const char *addr);

/* Sends all len bytes (MSG_NOSIGNAL). Returns 0 or a negative errno; a
 * peer that has already closed gives -EPIPE or -ECONNRESET. */
int harness_send(int fd, const void *buf, size_t len);

/*
 * Reads exactly one frame (header, then the length it announces, never
 * more, so bytes after it stay in the socket) into buf and decodes it with
 * proto_decode into *out, whose slices point into buf. Returns 1 for a
 * frame, 0 when the peer closed before the first byte of one (EOF or
 * reset), -ETIMEDOUT, -ENOBUFS (frame larger than cap), -EPROTO (closed in
 * the middle of a frame, or proto_decode refused it).
 */
int harness_read_frame(int fd, uint8_t *buf, size_t cap, int timeout_ms, struct proto_frame *out);

/* Waits for the peer to close: returns 1 on EOF or reset, 0 on timeout,
 * -EPROTO when bytes arrive instead. */
int harness_wait_closed(int fd, int timeout_ms);

/* Reads one frame and requires it to be ERROR: returns 1 and fills code,
 * flags and request_id (each may be NULL); 0 when the peer closed without
 * one; -EBADMSG when another frame type came; other negatives as
 * harness_read_frame. */
int harness_read_error(int fd, int timeout_ms, uint16_t *code, uint8_t *flags,
                       uint32_t *request_id);

/* Sends the len bytes of frame and reads the next frame that is not a
 * DELIVER (deliveries may come between replies, PROTOCOL.md §9.2) into buf,
 * decoded into *out. Returns harness_read_frame's result (1: a frame). */
int harness_request(int fd, const void *frame, size_t len, uint8_t *buf, size_t cap, int timeout_ms,
                    struct proto_frame *out);

/* Encodes a HELLO with the given version (no name, no token) into buf.
 * Returns the frame's length in bytes, or 0 when cap is too small. */
size_t harness_build_hello(uint8_t *buf, size_t cap, uint16_t version, uint32_t request_id);

/* Sends HELLO (PROTO_VERSION, request id 1) and reads HELLO_OK. Fills
 * *max_frame (may be NULL) with the limit the broker announced. Returns 0,
 * -EBADMSG for any other reply, or a negative errno. */
int harness_handshake(int fd, uint32_t *max_frame);

/* Encodes a one-message PUBLISH (topic, id may be NULL, payload) into buf.
 * Returns the frame length, or 0 when cap is too small. */
size_t harness_build_publish(uint8_t *buf, size_t cap, uint32_t request_id, const char *topic,
                             const char *id, const void *payload, size_t payload_len);

/* ----- child processes -------------------------------------------------- */

struct harness_output {
    int status; /* exit status, 128 + signal, or -1 when it had to be killed */
    char *out;  /* stdout, NUL-terminated, malloc'd */
    size_t out_len;
    char *err; /* stderr likewise */
    size_t err_len;
};

/* Runs argv[0] (a path) with argv, feeding stdin_data (may be NULL: empty
 * stdin) and capturing stdout and stderr into files under dir. Kills it
 * after timeout_ms. Returns 0 (and fills *out; free with
 * harness_output_free) or a negative errno when it could not run. */
int harness_run(const char *dir, char *const argv[], const char *stdin_data, int timeout_ms,
                struct harness_output *out);
void harness_output_free(struct harness_output *out);

#endif /* FERRY_TEST_HARNESS_H */
