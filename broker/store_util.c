/*
 * store_util.c - small helpers every file of the store uses: statement
 * steps, error text and codes, message ids.
 */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "dedupe.h"
#include "ferry_codes.h"
#include "log.h"
#include "proto.h"
#include "reserve.h"
#include "store_internal.h"
#include "store_io.h"

/* ---- helpers ---------------------------------------------------------- */

uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* A UUIDv7-style id: 48 bits of Unix ms, then random bits, as 36 chars. */
void make_id(struct store *s, int64_t now_ms, char out[37])
{
    uint8_t b[16];
    uint64_t r1 = splitmix64(&s->rng), r2 = splitmix64(&s->rng);
    uint64_t ms = (uint64_t)now_ms;
    for (int i = 0; i < 6; i++)
        b[i] = (uint8_t)(ms >> (40 - 8 * i));
    for (int i = 0; i < 8; i++)
        b[6 + i] = (uint8_t)(r1 >> (8 * i));
    b[14] = (uint8_t)r2;
    b[15] = (uint8_t)(r2 >> 8);
    b[6] = (uint8_t)(0x70 | (b[6] & 0x0f));
    b[8] = (uint8_t)(0x80 | (b[8] & 0x3f));
    static const char hex[] = "0123456789abcdef";
    int o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = 0;
}

/* The reason of the last failure on s->db, as the client and the log see
 * it. A page that cannot be read is a "disk read error" whatever SQLite's
 * words for it ("database disk image is malformed"). */
void set_err(struct store *s, const char *what)
{
    int rc = sqlite3_extended_errcode(s->db);
    if (store_io_is_read_error(rc))
        snprintf(s->errmsg, sizeof(s->errmsg), "%s: disk read error (a page of %s cannot be read)",
                 what, s->path);
    else
        snprintf(s->errmsg, sizeof(s->errmsg), "%s: %s", what, sqlite3_errmsg(s->db));
}

int map_sqlite_error(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_FULL:
        return FERRY_ESTORAGE_FULL;
    default:
        return FERRY_ESTORAGE;
    }
}

/* Steps a statement that returns no row, then resets it. */
int step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}
