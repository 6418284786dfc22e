/*
 * nats_harness.h - a private nats-server with JetStream for the tests:
 * started on free 127.0.0.1 ports in a fresh temporary directory (store
 * DIR/js, log DIR/nats.log), stopped or killed by its PID, restarted on the
 * same port and store. Three of them make a cluster on loopback.
 *
 * The binary is $FERRY_NATS_SERVER, else /usr/sbin/nats-server (Debian's
 * nats-server), else nats-server on PATH; a missing one is a failure that
 * says to run script/bootstrap, never a skip.
 *
 * Set HARNESS_KEEP=1 to keep the directory.
 */
#ifndef FERRY_TEST_NATS_HARNESS_H
#define FERRY_TEST_NATS_HARNESS_H

#include <sys/types.h>

struct nats_server {
    char dir[256]; /* temp dir: js/ (the store), nats.log */
    char bin[256];
    char log_path[512];
    char url[64];     /* "nats://127.0.0.1:PORT" */
    char name[16];    /* -n NAME in a cluster, else empty */
    char routes[256]; /* --routes value in a cluster, else empty */
    int port;
    int cluster_port; /* 0: not clustered */
    pid_t pid;        /* 0 when not running */
};

/* Starts one server with JetStream. Returns 0 once it accepts TCP and
 * JetStream answers, or -1 after printing why (and its log). */
int nats_server_start(struct nats_server *s);

/* Starts it again on the same port and store dir (it must be stopped). */
int nats_server_restart(struct nats_server *s);

/* Sends sig (SIGKILL, SIGTERM) and waits for the exit by PID. 0, or -1. */
int nats_server_kill(struct nats_server *s, int sig);

/* Starts three clustered servers (n1..n3, cluster "ferry"); returns 0 once
 * JetStream has a meta leader, or -1 (all stopped and cleaned up). */
int nats_cluster_start(struct nats_server s[3]);

/* A comma-separated address of every server of the cluster for
 * ferry_connect: "nats://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3". */
void nats_cluster_url(const struct nats_server s[3], char *buf, size_t len);

/* Kills a running server (SIGTERM) and removes its dir unless HARNESS_KEEP. */
void nats_server_cleanup(struct nats_server *s);

/* Prints the server's log to stderr. */
void nats_server_dump_log(const struct nats_server *s);

/* Waits up to timeout_ms until JetStream at url answers $JS.API.INFO (a
 * meta leader exists). 0, or -1. */
int nats_wait_js(const char *url, int timeout_ms);

#endif /* FERRY_TEST_NATS_HARNESS_H */
