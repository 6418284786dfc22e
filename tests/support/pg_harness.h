/*
 * pg_harness.h - a private PostgreSQL cluster for the tests and the bench:
 * initdb into a fresh temporary directory, the server started on a free
 * 127.0.0.1 port and a unix socket in that directory, stopped by its PID.
 *
 * The server refuses to run as root, so when the test runs as root the
 * harness runs initdb and postgres as the unprivileged user ferry-pg
 * (created by script/bootstrap) through setpriv, which execs in place: the
 * PID the harness holds is the postmaster's. As another user it runs them
 * as that user. The binaries come from $FERRY_PG_BINDIR, else the highest
 * /usr/lib/postgresql/N/bin (Debian's postgresql package); a missing one is
 * a failure that says to run script/bootstrap, never a skip.
 *
 * Set HARNESS_KEEP=1 to keep the directory (its log is DIR/postgres.log).
 */
#ifndef FERRY_TEST_PG_HARNESS_H
#define FERRY_TEST_PG_HARNESS_H

#include <sys/types.h>

#include <libpq-fe.h>

struct pg_cluster {
    char dir[256];    /* temp dir: data/, the socket, postgres.log */
    char bindir[256]; /* initdb, postgres */
    char log_path[512];
    char conninfo[512]; /* "host=DIR port=PORT user=ferry dbname=postgres" */
    char url[512];      /* the same as a postgresql:// URL over 127.0.0.1 */
    int port;
    pid_t pid; /* the postmaster; 0 when not running */
};

/* initdb and start. Returns 0 once the server accepts connections, or -1
 * after printing why (and the server's log). */
int pg_cluster_start(struct pg_cluster *c);

/* Starts the server again on the same data directory and port. */
int pg_cluster_restart(struct pg_cluster *c);

/* Stops it: SIGINT (fast shutdown), or SIGQUIT with immediate != 0 (what
 * pg_ctl -m immediate sends: no checkpoint, crash recovery at the next
 * start). Waits for the exit. Returns 0, or -1. */
int pg_cluster_stop(struct pg_cluster *c, int immediate);

/* Stops a running server and removes the directory (unless HARNESS_KEEP). */
void pg_cluster_cleanup(struct pg_cluster *c);

/* A new connection to the cluster (asserting nothing); NULL after printing
 * why. */
PGconn *pg_cluster_connect(const struct pg_cluster *c);

/* Runs sql on pg; returns 0, or -1 after printing the error. */
int pg_exec(PGconn *pg, const char *sql);

/* The first column of the first row of sql as a number (-1 on error). */
long long pg_count(PGconn *pg, const char *sql);

#endif /* FERRY_TEST_PG_HARNESS_H */
