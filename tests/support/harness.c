/*
 * harness.c - see harness.h. Plain POSIX (plus PR_SET_PDEATHSIG on Linux so
 * that a test that dies never leaves a broker behind).
 *
 * The broker's stdout and stderr go to DIR/ferryd.log, opened O_APPEND so
 * that the log of every run of one test, crashes included, reads in order;
 * each run is preceded by a "=== harness: start" line.
 *
 * FERRYD_WRAPPER (see harness.h) puts a command such as valgrind in front
 * of ferryd. Such a wrapper must exec the broker in place (valgrind does:
 * its launcher execs the tool, which loads ferryd into the same process),
 * so that b->pid stays the broker's pid for kill(), waitpid() and /proc.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

/* How often the harness looks at a ready file or a child's exit: short
 * enough to add no visible latency, long enough to cost nothing. */
#define HARNESS_POLL_MS 5

int64_t harness_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t harness_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Turns a wait status into the harness's convention: exit code, or 128 +
 * the signal that ended the process. */
static int status_code(int st)
{
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return -1;
}

/* Waits up to timeout_ms for pid to exit. Returns its status code, or
 * -ETIMEDOUT while it still runs. */
static int wait_exit(pid_t pid, int timeout_ms)
{
    int64_t deadline = harness_now_ms() + timeout_ms;
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return status_code(st);
        if (r < 0 && errno != EINTR)
            return -errno;
        if (harness_now_ms() >= deadline)
            return -ETIMEDOUT;
        sleep_ms(HARNESS_POLL_MS);
    }
}

void harness_dump_log(const struct harness_broker *b)
{
    FILE *f = fopen(b->log_path, "r");
    fprintf(stderr, "----- ferryd log (%s) -----\n", b->log_path);
    if (f) {
        char line[1024];
        while (fgets(line, sizeof line, f))
            fputs(line, stderr);
        fclose(f);
    }
    fprintf(stderr, "----- end of ferryd log -----\n");
}

int harness_check_log(const struct harness_broker *b)
{
    static const char *const needles[] = {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                                          "runtime error:"};
    FILE *f = fopen(b->log_path, "r");
    char line[1024];
    int found = 0;
    if (!f)
        return 0;
    while (!found && fgets(line, sizeof line, f))
        for (size_t i = 0; i < sizeof needles / sizeof needles[0]; i++)
            if (strstr(line, needles[i]))
                found = 1;
    fclose(f);
    if (found) {
        fprintf(stderr, "harness: the ferryd log holds a sanitizer report\n");
        harness_dump_log(b);
        return -1;
    }
    return 0;
}

/* True when FERRYD_WRAPPER holds a command. */
static int wrapped(void)
{
    const char *w = getenv("FERRYD_WRAPPER");
    return w && w[strspn(w, " \t")];
}

/* True when FERRY_UNDER_VALGRIND says so (script/valgrind sets it). */
static int valgrind_said(void)
{
    const char *v = getenv("FERRY_UNDER_VALGRIND");
    return v && *v && strcmp(v, "0") != 0;
}

int harness_slowdown(void)
{
    if (wrapped() || valgrind_said())
        return HARNESS_WRAPPER_SCALE;
    return 1;
}

int harness_ready_timeout_ms(void)
{
    return HARNESS_READY_TIMEOUT_MS * harness_slowdown();
}

int harness_stop_timeout_ms(void)
{
    return HARNESS_STOP_TIMEOUT_MS * harness_slowdown();
}

/* The path execv() needs for a command name: itself when it holds a '/',
 * else the first executable file of that name on $PATH. */
static int resolve_command(const char *name, char *out, size_t cap)
{
    if (strchr(name, '/')) {
        if ((size_t)snprintf(out, cap, "%s", name) >= cap)
            return -ENAMETOOLONG;
        return 0;
    }
    const char *path = getenv("PATH");
    if (!path || !*path)
        path = "/usr/local/bin:/usr/bin:/bin";
    for (const char *p = path;;) {
        size_t n = strcspn(p, ":");
        if ((size_t)snprintf(out, cap, "%.*s/%s", (int)(n ? n : 1), n ? p : ".", name) < cap &&
            access(out, X_OK) == 0)
            return 0;
        if (!p[n])
            return -ENOENT;
        p += n + 1;
    }
}

int harness_ferryd_argv(struct harness_cmd *cmd)
{
    const char *exe = getenv("FERRYD");
    memset(cmd, 0, sizeof *cmd);
    if (!exe || !*exe) {
        fprintf(stderr, "harness: the environment variable FERRYD is not set\n");
        return -EINVAL;
    }
    const char *w = getenv("FERRYD_WRAPPER");
    if (w && (size_t)snprintf(cmd->words, sizeof cmd->words, "%s", w) >= sizeof cmd->words) {
        fprintf(stderr, "harness: FERRYD_WRAPPER is longer than %zu bytes\n",
                sizeof cmd->words - 1);
        return -E2BIG;
    }
    char *save = NULL;
    for (char *t = strtok_r(cmd->words, " \t", &save); t; t = strtok_r(NULL, " \t", &save)) {
        if (cmd->argc == HARNESS_MAX_WRAPPER_ARGS) {
            fprintf(stderr, "harness: FERRYD_WRAPPER has more than %d words\n",
                    HARNESS_MAX_WRAPPER_ARGS);
            return -E2BIG;
        }
        cmd->argv[cmd->argc++] = t;
    }
    if (cmd->argc > 0) {
        int r = resolve_command(cmd->argv[0], cmd->path, sizeof cmd->path);
        if (r != 0) {
            fprintf(stderr, "harness: FERRYD_WRAPPER: %s: not found on PATH\n", cmd->argv[0]);
            return r;
        }
    } else {
        snprintf(cmd->path, sizeof cmd->path, "%s", exe);
    }
    cmd->argv[cmd->argc++] = (char *)exe;
    cmd->argv[cmd->argc] = NULL;
    return cmd->argc;
}

/* Reads the ready file once. Returns 1 and fills b->addr when it holds a
 * complete "HOST:PORT\n" line, else 0. */
static int read_ready(struct harness_broker *b)
{
    char buf[sizeof b->addr];
    int fd = open(b->ready_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 1 || buf[n - 1] != '\n')
        return 0;
    buf[n - 1] = '\0';
    if (!strchr(buf, ':'))
        return 0;
    memcpy(b->addr, buf, (size_t)n);
    return 1;
}

/* Forks and execs ferryd (behind FERRYD_WRAPPER, if set) for the current
 * run, then waits for its ready file. The argument vector is built before
 * fork so that the child only makes async-signal-safe calls. */
static int spawn(struct harness_broker *b)
{
    if (b->pid != 0)
        return -EBUSY;
    struct harness_cmd cmd;
    int r = harness_ferryd_argv(&cmd);
    if (r < 0)
        return r;
    unlink(b->ready_path);
    b->addr[0] = '\0';

    char *argv[HARNESS_MAX_WRAPPER_ARGS + 8 + HARNESS_MAX_ARGS];
    int argc = 0;
    for (int i = 0; i < cmd.argc; i++)
        argv[argc++] = cmd.argv[i];
    argv[argc++] = "--listen";
    argv[argc++] = "127.0.0.1:0";
    argv[argc++] = "--data";
    argv[argc++] = b->data_dir;
    argv[argc++] = "--ready-file";
    argv[argc++] = b->ready_path;
    for (int i = 0; i < b->nargs; i++)
        argv[argc++] = b->args[i];
    argv[argc] = NULL;

    int logfd = open(b->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (logfd < 0)
        return -errno;
    dprintf(logfd, "=== harness: start %s", argv[0]);
    for (int i = 1; i < argc; i++)
        dprintf(logfd, " %s", argv[i]);
    dprintf(logfd, "\n");

    /* A sanitizer build of ferryd should stop at its first finding rather
     * than print it and go on (unless the caller chose otherwise). */
    setenv("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1", 0);

    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(logfd);
        return -e;
    }
    if (pid == 0) {
#ifdef __linux__
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
#endif
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2(devnull, STDIN_FILENO);
        dup2(logfd, STDOUT_FILENO);
        dup2(logfd, STDERR_FILENO);
        execv(cmd.path, argv);
        static const char msg[] = "harness: execv of FERRYD (or FERRYD_WRAPPER) failed\n";
        ssize_t ignored = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)ignored;
        _exit(127);
    }
    (void)parent;
    close(logfd);
    b->pid = pid;

    int ready_ms = harness_ready_timeout_ms();
    int64_t deadline = harness_now_ms() + ready_ms;
    for (;;) {
        if (read_ready(b))
            return 0;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            b->pid = 0;
            fprintf(stderr, "harness: ferryd exited before it was ready (status %d)\n",
                    status_code(st));
            harness_dump_log(b);
            return -ECHILD;
        }
        if (harness_now_ms() >= deadline) {
            fprintf(stderr, "harness: ferryd not ready after %d ms\n", ready_ms);
            harness_dump_log(b);
            harness_kill9(b);
            return -ETIMEDOUT;
        }
        sleep_ms(HARNESS_POLL_MS);
    }
}

/* Fills the paths and copies the arguments; creates the temp directory. */
static int prepare(struct harness_broker *b, const char *data_dir, const char *const *extra_args)
{
    memset(b, 0, sizeof *b);
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp)
        tmp = "/tmp";
    if ((size_t)snprintf(b->dir, sizeof b->dir, "%s/ferry-it-XXXXXX", tmp) >= sizeof b->dir)
        return -ENAMETOOLONG;
    if (!mkdtemp(b->dir)) {
        int e = errno;
        b->dir[0] = '\0';
        return -e;
    }
    if (data_dir)
        snprintf(b->data_dir, sizeof b->data_dir, "%s", data_dir);
    else
        snprintf(b->data_dir, sizeof b->data_dir, "%s/data", b->dir);
    snprintf(b->log_path, sizeof b->log_path, "%s/ferryd.log", b->dir);
    snprintf(b->ready_path, sizeof b->ready_path, "%s/ready", b->dir);
    if (mkdir(b->data_dir, 0700) != 0 && errno != EEXIST)
        return -errno;
    for (; extra_args && extra_args[b->nargs]; b->nargs++) {
        if (b->nargs == HARNESS_MAX_ARGS)
            return -E2BIG;
        b->args[b->nargs] = strdup(extra_args[b->nargs]);
        if (!b->args[b->nargs])
            return -ENOMEM;
    }
    return 0;
}

int harness_start(struct harness_broker *b, const char *const *extra_args)
{
    int r = prepare(b, NULL, extra_args);
    if (r == 0)
        r = spawn(b);
    if (r < 0)
        harness_cleanup(b);
    return r;
}

int harness_start_dir(struct harness_broker *b, const char *data_dir, const char *const *extra_args)
{
    int r = prepare(b, data_dir, extra_args);
    if (r == 0)
        r = spawn(b);
    if (r < 0)
        harness_cleanup(b);
    return r;
}

int harness_restart(struct harness_broker *b)
{
    return spawn(b);
}

int harness_stop(struct harness_broker *b)
{
    return harness_stop_signal(b, SIGTERM);
}

int harness_stop_signal(struct harness_broker *b, int sig)
{
    if (b->pid == 0)
        return -ESRCH;
    kill(b->pid, sig);
    int stop_ms = harness_stop_timeout_ms();
    int r = wait_exit(b->pid, stop_ms);
    if (r == -ETIMEDOUT) {
        fprintf(stderr, "harness: ferryd ignored signal %d for %d ms; killing it\n", sig, stop_ms);
        harness_dump_log(b);
        harness_kill9(b);
        return -ETIMEDOUT;
    }
    b->pid = 0;
    return r;
}

int harness_kill9(struct harness_broker *b)
{
    if (b->pid == 0)
        return -ESRCH;
    kill(b->pid, SIGKILL);
    int st;
    while (waitpid(b->pid, &st, 0) < 0 && errno == EINTR) {
    }
    b->pid = 0;
    return 0;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

void harness_cleanup(struct harness_broker *b)
{
    if (!b)
        return;
    if (b->pid != 0 && wrapped()) {
        /* The test is over and has judged the broker; stopping it cleanly
         * lets the wrapper's checks at exit (valgrind's leak check) see
         * this run too. Only the status is not judged here. */
        int st = harness_stop(b);
        if (st != 0)
            fprintf(stderr, "harness: cleanup: ferryd behind FERRYD_WRAPPER stopped with %d\n", st);
    }
    if (b->pid != 0)
        harness_kill9(b);
    if (b->dir[0]) {
        if (getenv("HARNESS_KEEP"))
            fprintf(stderr, "harness: keeping %s\n", b->dir);
        else
            nftw(b->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    }
    for (int i = 0; i < b->nargs; i++)
        free(b->args[i]);
    memset(b, 0, sizeof *b);
}

/* A "Name:   N kB" line of /proc/PID/status, in KiB, or -1. */
static long proc_status_kib(pid_t pid, const char *name)
{
    char path[64], line[256];
    size_t nl = strlen(name);
    long kib = -1;
    snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, name, nl) == 0 && line[nl] == ':') {
            kib = strtol(line + nl + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kib;
}

long harness_rss_kib(pid_t pid)
{
    return proc_status_kib(pid, "VmRSS");
}

long harness_hwm_kib(pid_t pid)
{
    return proc_status_kib(pid, "VmHWM");
}

const char *harness_rss_unreliable(pid_t pid)
{
    if (valgrind_said())
        return "valgrind";
    char path[64], line[512];
    const char *why = NULL;
    snprintf(path, sizeof path, "/proc/%ld/maps", (long)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    while (!why && fgets(line, sizeof line, f)) {
        if (strstr(line, "vgpreload_"))
            why = "valgrind";
        else if (strstr(line, "libasan") || strstr(line, "libtsan"))
            why = "a sanitizer";
    }
    fclose(f);
    return why;
}

int harness_db_open(const struct harness_broker *b, sqlite3 **out)
{
    char path[HARNESS_PATH_BYTES + 16];
    snprintf(path, sizeof path, "%s/ferry.db", b->data_dir);
    *out = NULL;
    int rc = sqlite3_open_v2(path, out, SQLITE_OPEN_READWRITE, NULL);
    if (rc != SQLITE_OK) {
        fprintf(stderr, "harness: cannot open %s: %s\n", path,
                *out ? sqlite3_errmsg(*out) : sqlite3_errstr(rc));
        sqlite3_close(*out);
        *out = NULL;
        return -EIO;
    }
    sqlite3_busy_timeout(*out, 5000);
    return 0;
}

static void *dup_blob(const void *p, size_t n)
{
    uint8_t *c = malloc(n + 1);
    if (c) {
        if (n)
            memcpy(c, p, n);
        c[n] = 0;
    }
    return c;
}

long harness_db_rows(const struct harness_broker *b, const char *topic, struct harness_row **out)
{
    sqlite3 *db;
    sqlite3_stmt *st = NULL;
    struct harness_row *rows = NULL;
    long n = 0, cap = 0;
    *out = NULL;
    if (harness_db_open(b, &db) != 0)
        return -EIO;
    int rc = sqlite3_prepare_v2(db,
                                "SELECT seq, msg_id, key, payload, ts_ms, headers, deliver_at_ms "
                                "FROM messages_v "
                                "WHERE topic = ? ORDER BY seq",
                                -1, &st, NULL);
    if (rc != SQLITE_OK) {
        fprintf(stderr, "harness: messages_v: %s\n", sqlite3_errmsg(db));
        sqlite3_close(db);
        return -EIO;
    }
    sqlite3_bind_text(st, 1, topic, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            long ncap = cap ? cap * 2 : 1024;
            struct harness_row *nr = realloc(rows, (size_t)ncap * sizeof *rows);
            if (!nr) {
                rc = SQLITE_NOMEM;
                break;
            }
            rows = nr;
            cap = ncap;
        }
        struct harness_row *r = &rows[n++];
        memset(r, 0, sizeof *r);
        r->seq = (uint64_t)sqlite3_column_int64(st, 0);
        const unsigned char *id = sqlite3_column_text(st, 1);
        r->msg_id =
            dup_blob(id ? id : (const unsigned char *)"", id ? strlen((const char *)id) : 0);
        if (sqlite3_column_type(st, 2) != SQLITE_NULL) {
            const void *k = sqlite3_column_blob(st, 2);
            r->key_len = (size_t)sqlite3_column_bytes(st, 2);
            r->key = dup_blob(k, r->key_len);
        }
        const void *pl = sqlite3_column_blob(st, 3);
        r->payload_len = (size_t)sqlite3_column_bytes(st, 3);
        r->payload = dup_blob(pl, r->payload_len);
        r->ts_ms = sqlite3_column_int64(st, 4);
        r->deliver_at_ms = sqlite3_column_int64(st, 6);
        if (sqlite3_column_type(st, 5) != SQLITE_NULL) {
            const void *h = sqlite3_column_blob(st, 5);
            r->headers_len = (size_t)sqlite3_column_bytes(st, 5);
            r->headers = dup_blob(h, r->headers_len);
        }
    }
    if (rc != SQLITE_DONE)
        fprintf(stderr, "harness: reading messages_v: %s\n", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    sqlite3_close(db);
    if (rc != SQLITE_DONE) {
        harness_db_rows_free(rows, n);
        return -EIO;
    }
    *out = rows;
    return n;
}

void harness_db_rows_free(struct harness_row *rows, long n)
{
    for (long i = 0; rows && i < n; i++) {
        free(rows[i].msg_id);
        free(rows[i].key);
        free(rows[i].headers);
        free(rows[i].payload);
    }
    free(rows);
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t harness_seed(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ ((uint64_t)getpid() << 40);
}

void harness_uuid(uint64_t *state, char out[37])
{
    uint64_t hi = splitmix64(state), lo = splitmix64(state);
    snprintf(out, 37, "%08x-%04x-%04x-%04x-%012llx", (unsigned)(hi >> 32),
             (unsigned)(hi >> 16) & 0xffff, (unsigned)hi & 0xffff, (unsigned)(lo >> 48),
             (unsigned long long)(lo & 0xffffffffffffull));
}

/* ----- raw sockets ------------------------------------------------------ */

int harness_connect(const char *addr)
{
    char host[64];
    const char *colon = strrchr(addr, ':');
    if (!colon || (size_t)(colon - addr) >= sizeof host)
        return -EINVAL;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';

    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, colon + 1, &hints, &res) != 0 || !res)
        return -EHOSTUNREACH;
    int fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, res->ai_protocol);
    if (fd < 0) {
        int e = errno;
        freeaddrinfo(res);
        return -e;
    }
    if (connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
        int e = errno;
        freeaddrinfo(res);
        close(fd);
        return -e;
    }
    freeaddrinfo(res);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

int harness_send(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Reads exactly n bytes before deadline. Returns 1 when done, 0 on EOF or
 * reset (with *got telling how far it came), or a negative errno. */
static int read_exact(int fd, uint8_t *p, size_t n, int64_t deadline, size_t *got)
{
    *got = 0;
    while (*got < n) {
        int64_t left = deadline - harness_now_ms();
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = poll(&pfd, 1, (int)left);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr < 0)
            return -errno;
        if (pr == 0)
            return -ETIMEDOUT;
        ssize_t r = recv(fd, p + *got, n - *got, 0);
        if (r == 0)
            return 0;
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            if (errno == ECONNRESET)
                return 0;
            return -errno;
        }
        *got += (size_t)r;
    }
    return 1;
}

int harness_read_frame(int fd, uint8_t *buf, size_t cap, int timeout_ms, struct proto_frame *out)
{
    int64_t deadline = harness_now_ms() + timeout_ms;
    size_t got;
    if (cap < PROTO_HEADER_BYTES)
        return -ENOBUFS;
    int r = read_exact(fd, buf, 4, deadline, &got);
    if (r <= 0)
        return r == 0 && got > 0 ? -EPROTO : r;
    uint32_t length = proto_rd32(buf);
    if ((uint64_t)length + 4 > cap)
        return -ENOBUFS;
    r = read_exact(fd, buf + 4, length, deadline, &got);
    if (r == 0)
        return -EPROTO;
    if (r < 0)
        return r;
    uint32_t max_frame =
        cap - 4 > PROTO_ABSOLUTE_MAX_FRAME ? PROTO_ABSOLUTE_MAX_FRAME : (uint32_t)(cap - 4);
    ptrdiff_t d = proto_decode(buf, (size_t)length + 4, max_frame, out);
    if (d != (ptrdiff_t)length + 4) {
        fprintf(stderr, "harness: proto_decode refused a %u-byte frame of type 0x%02x: %td\n",
                (unsigned)length + 4, length >= 1 ? buf[4] : 0, d);
        return -EPROTO;
    }
    return 1;
}

int harness_wait_closed(int fd, int timeout_ms)
{
    int64_t deadline = harness_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - harness_now_ms();
        if (left <= 0)
            return 0;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = poll(&pfd, 1, (int)left);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            return pr == 0 ? 0 : -errno;
        uint8_t tmp[256];
        ssize_t r = recv(fd, tmp, sizeof tmp, 0);
        if (r == 0 || (r < 0 && (errno == ECONNRESET || errno == EPIPE)))
            return 1;
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (r < 0)
            return -errno;
        fprintf(stderr, "harness: %zd unexpected bytes while waiting for close\n", r);
        return -EPROTO;
    }
}

int harness_read_error(int fd, int timeout_ms, uint16_t *code, uint8_t *flags, uint32_t *request_id)
{
    uint8_t buf[4096];
    struct proto_frame f;
    int r = harness_read_frame(fd, buf, sizeof buf, timeout_ms, &f);
    if (r <= 0)
        return r;
    if (f.type != PROTO_ERROR) {
        fprintf(stderr, "harness: expected ERROR, got frame type 0x%02x\n", f.type);
        return -EBADMSG;
    }
    if (code)
        *code = f.u.error.code;
    if (flags)
        *flags = f.flags;
    if (request_id)
        *request_id = f.request_id;
    return 1;
}

int harness_request(int fd, const void *frame, size_t len, uint8_t *buf, size_t cap, int timeout_ms,
                    struct proto_frame *out)
{
    int r = harness_send(fd, frame, len);
    if (r < 0)
        return r;
    for (;;) {
        r = harness_read_frame(fd, buf, cap, timeout_ms, out);
        if (r != 1 || out->type != PROTO_DELIVER)
            return r;
    }
}

size_t harness_build_hello(uint8_t *buf, size_t cap, uint16_t version, uint32_t request_id)
{
    struct proto_writer w;
    struct proto_hello h = {.version = version};
    proto_writer_init(&w, buf, cap);
    if (proto_encode_hello(&w, request_id, &h) != 0)
        return 0;
    return w.len;
}

int harness_handshake(int fd, uint32_t *max_frame)
{
    uint8_t buf[4096];
    size_t n = harness_build_hello(buf, sizeof buf, PROTO_VERSION, 1);
    if (n == 0)
        return -ENOBUFS;
    int r = harness_send(fd, buf, n);
    if (r < 0)
        return r;
    struct proto_frame f;
    r = harness_read_frame(fd, buf, sizeof buf, 10000, &f);
    if (r == 0)
        return -ECONNRESET;
    if (r < 0)
        return r;
    if (f.type != PROTO_HELLO_OK || f.request_id != 1)
        return -EBADMSG;
    if (max_frame)
        *max_frame = f.u.hello_ok.max_frame_bytes;
    return 0;
}

size_t harness_build_publish(uint8_t *buf, size_t cap, uint32_t request_id, const char *topic,
                             const char *id, const void *payload, size_t payload_len)
{
    struct proto_writer w;
    struct proto_msg m;
    memset(&m, 0, sizeof m);
    m.topic.ptr = (const uint8_t *)topic;
    m.topic.len = strlen(topic);
    m.id.ptr = (const uint8_t *)id;
    m.id.len = id ? strlen(id) : 0;
    m.payload.ptr = payload;
    m.payload.len = payload_len;
    proto_writer_init(&w, buf, cap);
    size_t start = proto_publish_begin(&w, request_id);
    proto_publish_add(&w, &m, NULL);
    if (proto_publish_end(&w, start, 1) != 0)
        return 0;
    return w.len;
}

/* ----- child processes -------------------------------------------------- */

char *harness_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    *len = 0;
    if (!buf) {
        if (f)
            fclose(f);
        return NULL;
    }
    if (f) {
        size_t r;
        while ((r = fread(buf + n, 1, cap - n - 1, f)) > 0) {
            n += r;
            if (cap - n - 1 == 0) {
                char *nb = realloc(buf, cap * 2);
                if (!nb)
                    break;
                buf = nb;
                cap *= 2;
            }
        }
        fclose(f);
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

int harness_run(const char *dir, char *const argv[], const char *stdin_data, int timeout_ms,
                struct harness_output *out)
{
    static unsigned counter;
    char in_path[HARNESS_PATH_BYTES + 32], out_path[HARNESS_PATH_BYTES + 32],
        err_path[HARNESS_PATH_BYTES + 32];
    unsigned n = counter++;
    memset(out, 0, sizeof *out);
    snprintf(in_path, sizeof in_path, "%s/run-%u.in", dir, n);
    snprintf(out_path, sizeof out_path, "%s/run-%u.out", dir, n);
    snprintf(err_path, sizeof err_path, "%s/run-%u.err", dir, n);

    FILE *in = fopen(in_path, "wb");
    if (!in)
        return -errno;
    if (stdin_data)
        fputs(stdin_data, in);
    fclose(in);

    int infd = open(in_path, O_RDONLY | O_CLOEXEC);
    int outfd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int errfd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (infd < 0 || outfd < 0 || errfd < 0) {
        int e = errno;
        close(infd);
        close(outfd);
        close(errfd);
        return -e;
    }
    pid_t pid = fork();
    if (pid == 0) {
        dup2(infd, STDIN_FILENO);
        dup2(outfd, STDOUT_FILENO);
        dup2(errfd, STDERR_FILENO);
        execv(argv[0], argv);
        static const char msg[] = "harness: execv failed\n";
        ssize_t ignored = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)ignored;
        _exit(127);
    }
    int e = errno;
    close(infd);
    close(outfd);
    close(errfd);
    if (pid < 0)
        return -e;

    int st = wait_exit(pid, timeout_ms);
    if (st == -ETIMEDOUT) {
        fprintf(stderr, "harness: %s did not finish in %d ms; killing it\n", argv[0], timeout_ms);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        st = -1;
    }
    out->status = st;
    out->out = harness_slurp(out_path, &out->out_len);
    out->err = harness_slurp(err_path, &out->err_len);
    if (!out->out || !out->err) {
        harness_output_free(out);
        return -ENOMEM;
    }
    return 0;
}

void harness_output_free(struct harness_output *out)
{
    if (!out)
        return;
    free(out->out);
    free(out->err);
    out->out = out->err = NULL;
}
