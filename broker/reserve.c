/*
 * reserve.c - disk space set aside so that acks still fit on a full disk.
 * See reserve.h.
 */
#include "reserve.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "log.h"

#define CHECK_EVERY_MS 200

/* Allocates the file's blocks (those a file left by an earlier run already
 * has are kept; a larger one is cut to size). Returns 0 or an errno value;
 * on failure no file is left behind. */
static int allocate(struct reserve *r)
{
    int fd = open(r->path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return errno;
    int e = posix_fallocate(fd, 0, (off_t)r->bytes);
    if (e == 0 && ftruncate(fd, (off_t)r->bytes) != 0)
        e = errno;
    if (e == 0 && fsync(fd) != 0)
        e = errno;
    close(fd);
    if (e != 0)
        unlink(r->path);
    return e;
}

static double mib(uint64_t bytes)
{
    return (double)bytes / (1024.0 * 1024.0);
}

void reserve_init(struct reserve *r, const char *dir, uint64_t bytes)
{
    memset(r, 0, sizeof(*r));
    snprintf(r->path, sizeof(r->path), "%s/ferry.reserve", dir);
    r->bytes = bytes;
    if (bytes == 0) {
        unlink(r->path);
        return;
    }
    int e = allocate(r);
    if (e != 0) {
        log_warn("cannot set aside the %.0f MiB disk reserve %s: %s; until it can be (once "
                 "%.0f MiB are free), acks may fail as well as publishes on a full disk",
                 mib(bytes), r->path, strerror(e), mib(2 * bytes));
        r->wanted = 1;
        return;
    }
    r->held = 1;
}

uint64_t reserve_fs_free(const struct reserve *r)
{
    char dir[sizeof(r->path)];
    snprintf(dir, sizeof(dir), "%s", r->path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    struct statvfs vfs;
    if (statvfs(slash ? dir : ".", &vfs) != 0)
        return UINT64_MAX;
    return (uint64_t)vfs.f_bavail * (uint64_t)vfs.f_frsize;
}

void reserve_release(struct reserve *r)
{
    if (!r->held)
        return;
    if (unlink(r->path) != 0) {
        log_error("storage full: cannot delete the disk reserve %s: %s", r->path, strerror(errno));
        return;
    }
    r->held = 0;
    r->released = 1;
    r->check_ms = 0;
    log_warn("storage full: released the %.0f MiB disk reserve for acks and group changes; "
             "publishes are refused until %.0f MiB are free in the data folder",
             mib(r->bytes), mib(2 * r->bytes));
}

int reserve_restore(struct reserve *r, int64_t now_ms)
{
    if (!r->released && !r->wanted)
        return 1;
    int ok = !r->released; /* a wanted reserve does not hold publishes back */
    if (now_ms < r->check_ms)
        return ok;
    r->check_ms = now_ms + CHECK_EVERY_MS;
    uint64_t free_bytes = reserve_fs_free(r);
    if (free_bytes < 2 * r->bytes)
        return ok;
    int e = allocate(r);
    if (e != 0) {
        if (r->released)
            log_warn("cannot allocate the disk reserve %s again: %s", r->path, strerror(e));
        return ok;
    }
    r->held = 1;
    if (r->released)
        log_info("storage: %.0f MiB free again; disk reserve restored, publishes accepted",
                 mib(free_bytes));
    else
        log_info("disk reserve %s set aside (%.0f MiB)", r->path, mib(r->bytes));
    r->released = r->wanted = 0;
    return 1;
}
