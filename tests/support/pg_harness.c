/*
 * pg_harness.c - a private PostgreSQL cluster (pg_harness.h).
 */
#include "pg_harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pwd.h>
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

#define PG_USER "ferry-pg"
#define PG_READY_MS 60000
#define PG_STOP_MS 60000

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int find_bindir(char *out, size_t len)
{
    const char *env = getenv("FERRY_PG_BINDIR");
    if (env && *env) {
        snprintf(out, len, "%s", env);
        return 0;
    }
    DIR *d = opendir("/usr/lib/postgresql");
    int best = -1;
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            int v = atoi(e->d_name);
            char p[512];
            snprintf(p, sizeof p, "/usr/lib/postgresql/%s/bin/postgres", e->d_name);
            if (v > best && access(p, X_OK) == 0)
                best = v;
        }
        closedir(d);
    }
    if (best < 0) {
        fprintf(stderr, "pg_harness: no PostgreSQL server under /usr/lib/postgresql/*/bin"
                        " (run script/bootstrap: it installs Debian's postgresql)\n");
        return -1;
    }
    snprintf(out, len, "/usr/lib/postgresql/%d/bin", best);
    return 0;
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

static void dump_log(const struct pg_cluster *c)
{
    FILE *f = fopen(c->log_path, "r");
    fprintf(stderr, "----- %s -----\n", c->log_path);
    if (f) {
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0)
            fwrite(buf, 1, n, stderr);
        fclose(f);
    }
    fprintf(stderr, "----- end -----\n");
}

/* fork + exec argv (as PG_USER when root), output appended to the log.
 * Returns the child's pid. */
static pid_t spawn(const struct pg_cluster *c, char *const *argv)
{
    char *full[40];
    int n = 0;
    int root = geteuid() == 0;
    if (root) {
        full[n++] = "setpriv";
        full[n++] = "--reuid=" PG_USER;
        full[n++] = "--regid=" PG_USER;
        full[n++] = "--clear-groups";
        full[n++] = "--";
    }
    for (int i = 0; argv[i] && n < 38; i++)
        full[n++] = argv[i];
    full[n] = NULL;
    int logfd = open(c->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2(devnull, STDIN_FILENO);
        if (logfd >= 0) {
            dup2(logfd, STDOUT_FILENO);
            dup2(logfd, STDERR_FILENO);
        }
        setenv("LC_ALL", "C", 1);
        setenv("HOME", c->dir, 1);
        if (root)
            execvp(full[0], full);
        else
            execv(full[0], full);
        fprintf(stderr, "pg_harness: cannot run %s: %s\n", full[0], strerror(errno));
        _exit(127);
    }
    if (logfd >= 0)
        close(logfd);
    return pid;
}

static int start_server(struct pg_cluster *c)
{
    char postgres[512], data[512], port[16], sock[300];
    snprintf(postgres, sizeof postgres, "%s/postgres", c->bindir);
    snprintf(data, sizeof data, "%s/data", c->dir);
    snprintf(port, sizeof port, "%d", c->port);
    snprintf(sock, sizeof sock, "unix_socket_directories=%s", c->dir);
    char *argv[] = {postgres,
                    "-D",
                    data,
                    "-p",
                    port,
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    sock,
                    "-c",
                    "max_connections=60",
                    "-c",
                    "shared_buffers=64MB",
                    "-c",
                    "log_min_messages=warning",
                    "-c",
                    "log_line_prefix=%m [%p] ",
                    NULL};
    c->pid = spawn(c, argv);
    if (c->pid < 0) {
        c->pid = 0;
        return -1;
    }
    long long deadline = now_ms() + PG_READY_MS;
    while (now_ms() < deadline) {
        if (PQping(c->conninfo) == PQPING_OK)
            return 0;
        int st;
        if (waitpid(c->pid, &st, WNOHANG) == c->pid) {
            c->pid = 0;
            fprintf(stderr, "pg_harness: postgres exited during its start\n");
            dump_log(c);
            return -1;
        }
        sleep_ms(20);
    }
    fprintf(stderr, "pg_harness: postgres did not accept connections within %d ms\n", PG_READY_MS);
    dump_log(c);
    return -1;
}

int pg_cluster_start(struct pg_cluster *c)
{
    memset(c, 0, sizeof *c);
    if (find_bindir(c->bindir, sizeof c->bindir) < 0)
        return -1;
    const char *tmp = getenv("TMPDIR");
    snprintf(c->dir, sizeof c->dir, "%s/ferrypg.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(c->dir)) {
        fprintf(stderr, "pg_harness: mkdtemp: %s\n", strerror(errno));
        return -1;
    }
    if (geteuid() == 0) {
        struct passwd *pw = getpwnam(PG_USER);
        if (!pw) {
            fprintf(stderr,
                    "pg_harness: running as root, but there is no user %s to run"
                    " PostgreSQL as (run script/bootstrap: it creates it)\n",
                    PG_USER);
            rmdir(c->dir);
            return -1;
        }
        if (chown(c->dir, pw->pw_uid, pw->pw_gid) != 0) {
            fprintf(stderr, "pg_harness: chown %s: %s\n", c->dir, strerror(errno));
            rmdir(c->dir);
            return -1;
        }
    }
    chmod(c->dir, 0755);
    snprintf(c->log_path, sizeof c->log_path, "%s/postgres.log", c->dir);
    int fd = open(c->log_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
    if (fd >= 0) {
        fchmod(fd, 0666);
        close(fd);
    }
    c->port = free_port();
    snprintf(c->conninfo, sizeof c->conninfo, "host=%s port=%d user=ferry dbname=postgres", c->dir,
             c->port);
    snprintf(c->url, sizeof c->url, "postgresql://ferry@127.0.0.1:%d/postgres", c->port);

    char initdb[512], data[512];
    snprintf(initdb, sizeof initdb, "%s/initdb", c->bindir);
    snprintf(data, sizeof data, "%s/data", c->dir);
    char *argv[] = {initdb,  "-D", data,   "-U",         "ferry",     "-A",
                    "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
                    NULL};
    pid_t pid = spawn(c, argv);
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "pg_harness: initdb failed\n");
        dump_log(c);
        pg_cluster_cleanup(c);
        return -1;
    }
    if (start_server(c) < 0) {
        pg_cluster_cleanup(c);
        return -1;
    }
    return 0;
}

int pg_cluster_restart(struct pg_cluster *c)
{
    if (c->pid)
        return -1;
    return start_server(c);
}

int pg_cluster_stop(struct pg_cluster *c, int immediate)
{
    if (!c->pid)
        return -1;
    kill(c->pid, immediate ? SIGQUIT : SIGINT);
    long long deadline = now_ms() + PG_STOP_MS;
    int st;
    while (now_ms() < deadline) {
        pid_t w = waitpid(c->pid, &st, WNOHANG);
        if (w == c->pid) {
            c->pid = 0;
            return 0;
        }
        sleep_ms(10);
    }
    kill(c->pid, SIGKILL);
    waitpid(c->pid, &st, 0);
    c->pid = 0;
    return -1;
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

void pg_cluster_cleanup(struct pg_cluster *c)
{
    if (!c)
        return;
    if (c->pid)
        pg_cluster_stop(c, 0);
    const char *keep = getenv("HARNESS_KEEP");
    if (c->dir[0] && !(keep && *keep && strcmp(keep, "0") != 0))
        rm_rf(c->dir);
    else if (c->dir[0])
        fprintf(stderr, "pg_harness: kept %s\n", c->dir);
    c->dir[0] = '\0';
}

PGconn *pg_cluster_connect(const struct pg_cluster *c)
{
    PGconn *pg = PQconnectdb(c->conninfo);
    if (PQstatus(pg) != CONNECTION_OK) {
        fprintf(stderr, "pg_harness: connect: %s", PQerrorMessage(pg));
        PQfinish(pg);
        return NULL;
    }
    PGresult *r = PQexec(pg, "SET client_min_messages = warning");
    PQclear(r);
    return pg;
}

int pg_exec(PGconn *pg, const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    ExecStatusType st = PQresultStatus(r);
    PQclear(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        fprintf(stderr, "pg_harness: %s: %s", sql, PQerrorMessage(pg));
        return -1;
    }
    return 0;
}

long long pg_count(PGconn *pg, const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    long long v = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0)
        v = atoll(PQgetvalue(r, 0, 0));
    else
        fprintf(stderr, "pg_harness: %s: %s", sql, PQerrorMessage(pg));
    PQclear(r);
    return v;
}
