/*
 * store_vfs.c - a VFS that times syncs (store_vfs.h).
 *
 * Each file of ours is a struct tfile followed by the underlying VFS's own
 * file object; every method forwards to it. Only xSync does more.
 */
#include "store_vfs.h"

#include <sqlite3.h>
#include <string.h>

#include "clock.h"

struct tfile {
    sqlite3_file base;
    /* the underlying file follows */
};

#define REAL(f) ((sqlite3_file *)((struct tfile *)(f) + 1))

static sqlite3_vfs timed_vfs;
static sqlite3_vfs *real_vfs;
static struct histo sync_seconds;

static int t_close(sqlite3_file *f)
{
    return REAL(f)->pMethods->xClose(REAL(f));
}

static int t_read(sqlite3_file *f, void *p, int n, sqlite3_int64 off)
{
    return REAL(f)->pMethods->xRead(REAL(f), p, n, off);
}

static int t_write(sqlite3_file *f, const void *p, int n, sqlite3_int64 off)
{
    return REAL(f)->pMethods->xWrite(REAL(f), p, n, off);
}

static int t_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    return REAL(f)->pMethods->xTruncate(REAL(f), size);
}

static int t_sync(sqlite3_file *f, int flags)
{
    uint64_t t0 = clock_mono_us();
    int rc = REAL(f)->pMethods->xSync(REAL(f), flags);
    histo_add(&sync_seconds, (double)(clock_mono_us() - t0) / 1e6);
    return rc;
}

static int t_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
    return REAL(f)->pMethods->xFileSize(REAL(f), size);
}

static int t_lock(sqlite3_file *f, int level)
{
    return REAL(f)->pMethods->xLock(REAL(f), level);
}

static int t_unlock(sqlite3_file *f, int level)
{
    return REAL(f)->pMethods->xUnlock(REAL(f), level);
}

static int t_check_reserved(sqlite3_file *f, int *out)
{
    return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}

static int t_file_control(sqlite3_file *f, int op, void *arg)
{
    return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}

static int t_sector_size(sqlite3_file *f)
{
    return REAL(f)->pMethods->xSectorSize(REAL(f));
}

static int t_device_characteristics(sqlite3_file *f)
{
    return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}

static int t_shm_map(sqlite3_file *f, int page, int size, int extend, void volatile **out)
{
    return REAL(f)->pMethods->xShmMap(REAL(f), page, size, extend, out);
}

static int t_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
    return REAL(f)->pMethods->xShmLock(REAL(f), offset, n, flags);
}

static void t_shm_barrier(sqlite3_file *f)
{
    REAL(f)->pMethods->xShmBarrier(REAL(f));
}

static int t_shm_unmap(sqlite3_file *f, int delete_flag)
{
    return REAL(f)->pMethods->xShmUnmap(REAL(f), delete_flag);
}

static int t_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **out)
{
    return REAL(f)->pMethods->xFetch(REAL(f), off, n, out);
}

static int t_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
    return REAL(f)->pMethods->xUnfetch(REAL(f), off, p);
}

/* One table per version of the underlying methods: a method the file's
 * own table lacks must be missing from ours too. */
static const sqlite3_io_methods methods_v[3] = {
    {1, t_close, t_read, t_write, t_truncate, t_sync, t_file_size, t_lock, t_unlock,
     t_check_reserved, t_file_control, t_sector_size, t_device_characteristics, NULL, NULL, NULL,
     NULL, NULL, NULL},
    {2, t_close, t_read, t_write, t_truncate, t_sync, t_file_size, t_lock, t_unlock,
     t_check_reserved, t_file_control, t_sector_size, t_device_characteristics, t_shm_map,
     t_shm_lock, t_shm_barrier, t_shm_unmap, NULL, NULL},
    {3, t_close, t_read, t_write, t_truncate, t_sync, t_file_size, t_lock, t_unlock,
     t_check_reserved, t_file_control, t_sector_size, t_device_characteristics, t_shm_map,
     t_shm_lock, t_shm_barrier, t_shm_unmap, t_fetch, t_unfetch},
};

static int t_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out_flags)
{
    (void)vfs;
    sqlite3_file *real = REAL(f);
    memset(real, 0, (size_t)real_vfs->szOsFile);
    int rc = real_vfs->xOpen(real_vfs, name, real, flags, out_flags);
    const sqlite3_io_methods *m = real->pMethods;
    if (!m) {
        f->pMethods = NULL;
        return rc;
    }
    int v = m->iVersion < 1 ? 1 : m->iVersion > 3 ? 3 : m->iVersion;
    f->pMethods = &methods_v[v - 1];
    return rc;
}

static int t_delete(sqlite3_vfs *vfs, const char *name, int sync_dir)
{
    (void)vfs;
    return real_vfs->xDelete(real_vfs, name, sync_dir);
}

static int t_access(sqlite3_vfs *vfs, const char *name, int flags, int *out)
{
    (void)vfs;
    return real_vfs->xAccess(real_vfs, name, flags, out);
}

static int t_full_pathname(sqlite3_vfs *vfs, const char *name, int n, char *out)
{
    (void)vfs;
    return real_vfs->xFullPathname(real_vfs, name, n, out);
}

int store_vfs_install(void)
{
    histo_init(&sync_seconds, histo_latency_bounds, HISTO_LATENCY_BUCKETS);
    real_vfs = sqlite3_vfs_find(NULL);
    if (!real_vfs)
        return -1;
    timed_vfs = *real_vfs;
    timed_vfs.szOsFile = (int)sizeof(struct tfile) + real_vfs->szOsFile;
    timed_vfs.pNext = NULL;
    timed_vfs.zName = "ferry-timed";
    timed_vfs.xOpen = t_open;
    timed_vfs.xDelete = t_delete;
    timed_vfs.xAccess = t_access;
    timed_vfs.xFullPathname = t_full_pathname;
    return sqlite3_vfs_register(&timed_vfs, 1) == SQLITE_OK ? 0 : -1;
}

const struct histo *store_vfs_sync_seconds(void)
{
    return &sync_seconds;
}
