/*
 * error.c - error text and the per-connection detail message.
 *
 * Codes are negative FERRY_E* values from the one table in ferry_codes.h;
 * their static text comes from the codec (proto_strerror), so the client and
 * the broker's log say the same thing. The per-connection detail (errmsg) is
 * what the broker said or what the client saw (a strerror, a limit); it is
 * cleared when a public call starts, so it always belongs to the latest one.
 *
 * A connection dies once (ferry__kill): the socket closes, the reason is
 * kept in dead_msg, every pending request fails with the code, and every
 * later call returns FERRY_ECLOSED with that reason as its detail.
 */
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include "internal.h"

const char *ferry_strerror(int err)
{
    if (err == 0)
        return "success";
    return proto_strerror(err);
}

const char *ferry_errmsg(const ferry_conn *c)
{
    return c ? c->errmsg : "";
}

const char *ferry_version(void)
{
    return FERRY_VERSION_STRING;
}

int ferry__seterr(ferry_conn *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->errmsg, sizeof c->errmsg, fmt, ap);
    va_end(ap);
    return code;
}

int ferry__kill(ferry_conn *c, int code, const char *fmt, ...)
{
    if (c->dead)
        return c->dead;

    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->errmsg, sizeof c->errmsg, fmt, ap);
    va_end(ap);
    snprintf(c->dead_msg, sizeof c->dead_msg, "%s", c->errmsg);

    /* Mark first: callbacks run by fail_all that call back in see a closed
     * connection. */
    c->dead = code;
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    c->wpos = c->wlen = 0;
    c->rpos = c->rlen = 0;
    ferry__fail_all(c, code);

    /* A callback may have overwritten errmsg; the caller reports this. */
    snprintf(c->errmsg, sizeof c->errmsg, "%s", c->dead_msg);
    return code;
}

int ferry__begin(ferry_conn *c)
{
    c->errmsg[0] = '\0';
    if (c->dead) {
        /* "connection closed: <why>", the why as it was first reported. */
        if (c->dead == FERRY_ECLOSED && c->dead_msg[0])
            ferry__seterr(c, FERRY_ECLOSED, "%s", c->dead_msg);
        else if (c->dead_msg[0])
            ferry__seterr(c, FERRY_ECLOSED, "%s: %s", ferry_strerror(c->dead), c->dead_msg);
        else
            ferry__seterr(c, FERRY_ECLOSED, "%s", ferry_strerror(c->dead));
        return FERRY_ECLOSED;
    }
    return 0;
}
