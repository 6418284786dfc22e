/*
 * common_pg.c - see common_pg.h.
 */
#include "common_pg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

const char *common_pg_errmsg(PGconn *pg)
{
    static char msg[512];
    snprintf(msg, sizeof msg, "%s", pg ? PQerrorMessage(pg) : "no connection");
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        msg[--n] = '\0';
    return msg;
}

int common_pg_exec(const char *prog, PGconn *pg, const char *sql, int quiet)
{
    PGresult *r = PQexec(pg, sql);
    ExecStatusType st = PQresultStatus(r);
    PQclear(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return 0;
    if (!quiet)
        common_log(prog, "%.60s...: %s", sql, common_pg_errmsg(pg));
    return -1;
}

int64_t common_pg_int(PGconn *pg, const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    int64_t v = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
        v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}

PGconn *common_pg_connect(const char *prog, const char *conninfo, const char *schema, int quiet)
{
    PGconn *pg = PQconnectdb(conninfo);
    if (PQstatus(pg) != CONNECTION_OK) {
        if (!quiet)
            common_log(prog, "cannot connect to PostgreSQL: %s", common_pg_errmsg(pg));
        PQfinish(pg);
        return NULL;
    }
    /* The schema name is checked by the caller (ferry_pg_*_install
     * refuses a bad one); quoted anyway. */
    char sql[160];
    snprintf(sql, sizeof sql, "SET client_min_messages = warning; SET search_path TO \"%s\"",
             schema);
    if (common_pg_exec(prog, pg, sql, quiet) < 0) {
        PQfinish(pg);
        return NULL;
    }
    return pg;
}
