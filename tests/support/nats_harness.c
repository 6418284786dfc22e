/*
 * nats_harness.c - a private nats-server with JetStream (nats_harness.h).
 */
#include "nats_harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>

#define NATS_READY_MS 30000
#define NATS_STOP_MS 20000

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int find_bin(char *out, size_t len)
{
    const char *env = getenv("FERRY_NATS_SERVER");
    if (env && *env) {
        snprintf(out, len, "%s", env);
        if (access(out, X_OK) == 0)
            return 0;
        fprintf(stderr,
                "nats_harness: FERRY_NATS_SERVER=%s is not executable (unset it and run"
                " script/bootstrap: it installs Debian's nats-server)\n",
                env);
        return -1;
    }
    if (access("/usr/sbin/nats-server", X_OK) == 0) {
        snprintf(out, len, "/usr/sbin/nats-server");
        return 0;
    }
    const char *path = getenv("PATH");
    if (path) {
        char copy[4096];
        snprintf(copy, sizeof copy, "%s", path);
        for (char *save = NULL, *d = strtok_r(copy, ":", &save); d;
             d = strtok_r(NULL, ":", &save)) {
            snprintf(out, len, "%s/nats-server", d);
            if (access(out, X_OK) == 0)
                return 0;
        }
    }
    fprintf(stderr, "nats_harness: no nats-server ($FERRY_NATS_SERVER, /usr/sbin/nats-server,"
                    " PATH); run script/bootstrap: it installs Debian's nats-server\n");
    return -1;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &al) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

void nats_server_dump_log(const struct nats_server *s)
{
    FILE *f = fopen(s->log_path, "r");
    fprintf(stderr, "----- %s -----\n", s->log_path);
    if (f) {
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0)
            fwrite(buf, 1, n, stderr);
        fclose(f);
    }
    fprintf(stderr, "----- end -----\n");
}

static int tcp_ok(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    int ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

int nats_wait_js(const char *url, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    while (now_ms() < deadline) {
        natsConnection *nc = NULL;
        natsOptions *o = NULL;
        natsOptions_Create(&o);
        natsOptions_SetURL(o, url);
        natsOptions_SetTimeout(o, 2000);
        if (natsConnection_Connect(&nc, o) == NATS_OK) {
            natsMsg *reply = NULL;
            natsStatus st = natsConnection_RequestString(&reply, nc, "$JS.API.INFO", "", 2000);
            int ok = 0;
            if (st == NATS_OK && reply) {
                const char *d = natsMsg_GetData(reply);
                ok = d && strstr(d, "\"error\"") == NULL;
            }
            natsMsg_Destroy(reply);
            natsConnection_Destroy(nc);
            if (ok) {
                natsOptions_Destroy(o);
                return 0;
            }
        }
        natsOptions_Destroy(o);
        sleep_ms(100);
    }
    return -1;
}

static int spawn_server(struct nats_server *s)
{
    char port[16], store[300], cport[64];
    snprintf(port, sizeof port, "%d", s->port);
    snprintf(store, sizeof store, "%s/js", s->dir);
    char *argv[24];
    int n = 0;
    argv[n++] = s->bin;
    argv[n++] = "-js";
    argv[n++] = "-a";
    argv[n++] = "127.0.0.1";
    argv[n++] = "-p";
    argv[n++] = port;
    argv[n++] = "-sd";
    argv[n++] = store;
    argv[n++] = "-l";
    argv[n++] = s->log_path;
    if (s->cluster_port) {
        snprintf(cport, sizeof cport, "nats://127.0.0.1:%d", s->cluster_port);
        argv[n++] = "-n";
        argv[n++] = s->name;
        argv[n++] = "--cluster_name";
        argv[n++] = "ferry";
        argv[n++] = "--cluster";
        argv[n++] = cport;
        argv[n++] = "--routes";
        argv[n++] = s->routes;
    }
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) {
            dup2(devnull, STDIN_FILENO);
            dup2(devnull, STDOUT_FILENO);
        }
        int logfd = open(s->log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (logfd >= 0)
            dup2(logfd, STDERR_FILENO);
        execv(argv[0], argv);
        fprintf(stderr, "nats_harness: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    s->pid = pid;
    return 0;
}

/* Waits for TCP (and, alone, for JetStream). */
static int wait_up(struct nats_server *s, int want_js)
{
    long long deadline = now_ms() + NATS_READY_MS;
    while (now_ms() < deadline) {
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            s->pid = 0;
            fprintf(stderr, "nats_harness: nats-server exited during its start\n");
            nats_server_dump_log(s);
            return -1;
        }
        if (tcp_ok(s->port)) {
            if (!want_js)
                return 0;
            if (nats_wait_js(s->url, (int)(deadline - now_ms())) == 0)
                return 0;
            break;
        }
        sleep_ms(20);
    }
    fprintf(stderr, "nats_harness: nats-server (%s) not ready within %d ms\n", s->url,
            NATS_READY_MS);
    nats_server_dump_log(s);
    return -1;
}

static int prepare(struct nats_server *s)
{
    memset(s, 0, sizeof *s);
    if (find_bin(s->bin, sizeof s->bin) < 0)
        return -1;
    const char *tmp = getenv("TMPDIR");
    snprintf(s->dir, sizeof s->dir, "%s/ferrynats.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(s->dir)) {
        fprintf(stderr, "nats_harness: mkdtemp: %s\n", strerror(errno));
        s->dir[0] = '\0';
        return -1;
    }
    snprintf(s->log_path, sizeof s->log_path, "%s/nats.log", s->dir);
    s->port = free_port();
    snprintf(s->url, sizeof s->url, "nats://127.0.0.1:%d", s->port);
    return 0;
}

int nats_server_start(struct nats_server *s)
{
    if (prepare(s) < 0)
        return -1;
    if (spawn_server(s) < 0 || wait_up(s, 1) < 0) {
        nats_server_cleanup(s);
        return -1;
    }
    return 0;
}

int nats_server_restart(struct nats_server *s)
{
    if (s->pid)
        return -1;
    if (spawn_server(s) < 0)
        return -1;
    return wait_up(s, s->cluster_port == 0);
}

int nats_server_kill(struct nats_server *s, int sig)
{
    if (!s->pid)
        return -1;
    kill(s->pid, sig);
    long long deadline = now_ms() + NATS_STOP_MS;
    int st;
    while (now_ms() < deadline) {
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            s->pid = 0;
            return 0;
        }
        sleep_ms(10);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, &st, 0);
    s->pid = 0;
    return -1;
}

int nats_cluster_start(struct nats_server s[3])
{
    int cports[3];
    for (int i = 0; i < 3; i++) {
        if (prepare(&s[i]) < 0) {
            for (int j = 0; j < i; j++)
                nats_server_cleanup(&s[j]);
            return -1;
        }
        cports[i] = free_port();
    }
    for (int i = 0; i < 3; i++) {
        s[i].cluster_port = cports[i];
        snprintf(s[i].name, sizeof s[i].name, "n%d", i + 1);
        snprintf(s[i].routes, sizeof s[i].routes,
                 "nats://127.0.0.1:%d,nats://127.0.0.1:%d,nats://127.0.0.1:%d", cports[0],
                 cports[1], cports[2]);
    }
    int rc = 0;
    for (int i = 0; i < 3 && rc == 0; i++)
        if (spawn_server(&s[i]) < 0)
            rc = -1;
    for (int i = 0; i < 3 && rc == 0; i++)
        if (wait_up(&s[i], 0) < 0)
            rc = -1;
    if (rc == 0 && nats_wait_js(s[0].url, NATS_READY_MS) < 0) {
        fprintf(stderr, "nats_harness: the cluster elected no JetStream meta leader\n");
        for (int i = 0; i < 3; i++)
            nats_server_dump_log(&s[i]);
        rc = -1;
    }
    if (rc < 0)
        for (int i = 0; i < 3; i++)
            nats_server_cleanup(&s[i]);
    return rc;
}

void nats_cluster_url(const struct nats_server s[3], char *buf, size_t len)
{
    snprintf(buf, len, "nats://127.0.0.1:%d,127.0.0.1:%d,127.0.0.1:%d", s[0].port, s[1].port,
             s[2].port);
}

static void rm_rf(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0)
        return;
    if (S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(path);
        if (d) {
            struct dirent *e;
            while ((e = readdir(d)) != NULL) {
                if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                    continue;
                char p[1024];
                snprintf(p, sizeof p, "%s/%s", path, e->d_name);
                rm_rf(p);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

void nats_server_cleanup(struct nats_server *s)
{
    if (!s)
        return;
    if (s->pid)
        nats_server_kill(s, SIGTERM);
    const char *keep = getenv("HARNESS_KEEP");
    if (s->dir[0] && !(keep && *keep && strcmp(keep, "0") != 0))
        rm_rf(s->dir);
    else if (s->dir[0])
        fprintf(stderr, "nats_harness: kept %s\n", s->dir);
    s->dir[0] = '\0';
}
