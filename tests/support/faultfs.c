/*
 * faultfs.c - libfaultfs.so, a "power-loss filesystem" for crash tests,
 * loaded into a process with LD_PRELOAD (see faultfs.h for the test side).
 *
 * The model: a disk on which only fsynced data survives a power cut, and
 * which behaves like Linux after a failed fsync. For each tracked file (a
 * regular file directly in $FAULTFS_DIR whose base name is listed in
 * $FAULTFS_FILES, default "ferry.db,ferry.db-wal") the library keeps a
 * "durable image", $FAULTFS_SHADOW/<name>: what the disk would hold if the
 * power went out now. When the library loads, each tracked file that exists
 * is copied to its image (everything before this process is durable) and
 * the stale image of one that does not is removed; a file created later gets
 * an empty image. Every write, pwrite, pwrite64, writev and pwritev to a
 * tracked file is done for real and its byte range is recorded as dirty;
 * ftruncate records the lowest size the file was cut to. A successful fsync
 * or fdatasync on any descriptor of the file (state is per file, not per
 * descriptor, as the page cache is per inode) first cuts the image to that
 * lowest size, sets its size to the live file's, then copies every dirty
 * range from the live file into it and forgets the dirty set. After the
 * process is killed, faultfs_power_cut() puts the images in place of the
 * live files.
 *
 * Faults come from the rules file $FAULTFS_CTL (re-read whenever its inode,
 * size or mtime changes, checked at every fsync of and read from a tracked
 * file; a reload resets every counter). One rule a line, '#' comments:
 *   fail-fsync NAME COUNT   the next COUNT fsyncs of NAME fail with EIO and
 *                           its dirty ranges are dropped unwritten, as Linux
 *                           marks pages whose writeback failed clean; a
 *                           truncation stays pending
 *   cut-in-fsync NAME SKIP  SKIP fsyncs of NAME pass; during the next, only
 *                           the first half of its dirty ranges (by count, at
 *                           least one) reach the image, then SIGKILL
 *   poison-read STRING      a read, pread or pread64 of a tracked file whose
 *                           returned bytes contain STRING fails with EIO
 * Each injection prints one "faultfs: ..." line on stderr (reads at most one
 * a second).
 *
 * Limits: directory entries are always durable (a create, unlink or rename
 * is on disk at once); rename, link, truncate(path), fallocate,
 * copy_file_range, sendfile, O_DIRECT and mmap writes are not tracked (so
 * SQLite's -shm, which is mmapped, is not; faultfs_power_cut deletes it);
 * dup, dup2, dup3 and fcntl(F_DUPFD) copies of a tracked descriptor are not
 * tracked; descriptors >= FFS_MAX_FD are not tracked; page granularity is not
 * modelled (byte ranges are, so a torn page is not possible unless a cut
 * falls between two writes of one page); a failed fsync forgets data but not
 * size changes, so the forgotten bytes read as zeros once the size is synced.
 * With more than FFS_MAX_RANGES (or $FAULTFS_MAX_RANGES) dirty ranges in one
 * file the closest ones are merged,
 * which may make clean bytes in the gap durable (harmless unless a failed
 * fsync dropped them). Calls made inside glibc (fopen, stdio) bypass the
 * library; SQLite's unix VFS makes every call through the public symbols.
 */
#undef _FILE_OFFSET_BITS /* the 64-bit variants are interposed by name */

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define FFS_MAX_FD 65536
#define FFS_MAX_FILES 16
#define FFS_MAX_RULES 64
#define FFS_MAX_RANGES 65536
#define FFS_PATH 4096
#define FFS_BUF (256 * 1024)

/* The real functions, from the next object in the lookup order (libc, or
 * the sanitizer runtime's interceptors in front of it). */
static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real_close)(int);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*real_read)(int, void *, size_t);
static ssize_t (*real_pread)(int, void *, size_t, off_t);
static ssize_t (*real_pread64)(int, void *, size_t, off64_t);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off64_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_unlink)(const char *);
static int (*real_unlinkat)(int, const char *, int);

struct ffs_range {
    off_t start, end; /* [start, end) */
};

struct ffs_file {
    char name[NAME_MAX + 1];
    int live;     /* the image is initialised (the file exists or existed) */
    int image_fd; /* -1 until needed */
    struct ffs_range *r;
    size_t n, cap;
    int trunc_pending;
    off_t trunc_low;
};

enum ffs_rule_kind { RULE_FAIL_FSYNC, RULE_CUT_IN_FSYNC, RULE_POISON_READ };

struct ffs_rule {
    enum ffs_rule_kind kind;
    char arg[256];  /* file name or poison string */
    size_t arg_len; /* of arg, for poison-read */
    long count;     /* fail-fsync: left to fail; cut-in-fsync: left to pass */
};

static pthread_once_t ffs_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t ffs_lock = PTHREAD_MUTEX_INITIALIZER;
static int ffs_enabled;
static char ffs_dir[FFS_PATH];
static char ffs_shadow[FFS_PATH];
static char ffs_ctl[FFS_PATH];
static dev_t ffs_dir_dev;
static ino_t ffs_dir_ino;
static struct ffs_file ffs_files[FFS_MAX_FILES];
static int ffs_nfiles;
static size_t ffs_max_ranges = FFS_MAX_RANGES;
/* fd -> index + 1 into ffs_files, 0 when the descriptor is not tracked. */
static _Atomic signed char ffs_fd[FFS_MAX_FD];

/* The rules and the identity of the file they came from. */
static struct ffs_rule ffs_rules[FFS_MAX_RULES];
static int ffs_nrules;
static int ffs_ctl_seen; /* 0: never looked, 1: absent, 2: present */
static ino_t ffs_ctl_ino;
static off_t ffs_ctl_size;
static struct timespec ffs_ctl_mtim;
static time_t ffs_last_read_msg;

#define RESOLVE(name)                                                                              \
    do {                                                                                           \
        void *p_ = dlsym(RTLD_NEXT, #name);                                                        \
        memcpy(&real_##name, &p_, sizeof(p_));                                                     \
    } while (0)

static void ffs_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void ffs_say(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg) - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof(msg) - 2)
        n = (int)sizeof(msg) - 2;
    msg[n++] = '\n';
    int saved = errno;
    if (real_write(2, msg, (size_t)n) < 0) {
        /* nothing to do: stderr is gone */
    }
    errno = saved;
}

static int join_path(char *out, const char *dir, const char *name)
{
    int n = snprintf(out, FFS_PATH, "%s/%s", dir, name);
    return n > 0 && n < FFS_PATH ? 0 : -1;
}

static int write_all(int fd, const char *p, size_t len, off_t off)
{
    while (len > 0) {
        ssize_t w = real_pwrite(fd, p, len, off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        len -= (size_t)w;
        off += w;
    }
    return 0;
}

/* Copies [start, end) of src into dst at the same offsets, up to src's end. */
static int copy_range(int src, int dst, off_t start, off_t end, char *buf)
{
    while (start < end) {
        size_t want = (size_t)(end - start) < FFS_BUF ? (size_t)(end - start) : FFS_BUF;
        ssize_t r = real_pread(src, buf, want, start);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        if (write_all(dst, buf, (size_t)r, start) < 0)
            return -1;
        start += r;
    }
    return 0;
}

static char *ffs_buf(void)
{
    static char *buf;
    if (buf == NULL)
        buf = malloc(FFS_BUF);
    return buf;
}

static int image_fd(struct ffs_file *f)
{
    if (f->image_fd >= 0)
        return f->image_fd;
    char path[FFS_PATH];
    if (join_path(path, ffs_shadow, f->name) < 0)
        return -1;
    f->image_fd = real_open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    return f->image_fd;
}

/* Sets the image of f to a copy of the live file (or empty when absent). */
static void image_from_live(struct ffs_file *f)
{
    char live[FFS_PATH], img[FFS_PATH], tmp[FFS_PATH + 16];
    f->n = 0;
    f->trunc_pending = 0;
    f->live = 1;
    if (f->image_fd >= 0)
        real_close(f->image_fd);
    f->image_fd = -1;
    if (join_path(live, ffs_dir, f->name) < 0 || join_path(img, ffs_shadow, f->name) < 0)
        return;
    /* Written beside it and renamed, so that a kill during the copy leaves
     * the old image whole. */
    snprintf(tmp, sizeof(tmp), "%s.faultfs-tmp", img);
    int dst = real_open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (dst < 0) {
        ffs_say("faultfs: cannot create the image of %s: %s", f->name, strerror(errno));
        return;
    }
    int src = real_open(live, O_RDONLY | O_CLOEXEC);
    char *buf = ffs_buf();
    if (src >= 0 && (buf == NULL || copy_range(src, dst, 0, INT64_MAX, buf) < 0))
        ffs_say("faultfs: cannot copy %s to its image: %s", f->name, strerror(errno));
    if (src >= 0)
        real_close(src);
    if (rename(tmp, img) < 0) {
        ffs_say("faultfs: cannot create the image of %s: %s", f->name, strerror(errno));
        real_close(dst);
        return;
    }
    f->image_fd = dst;
}

static void ffs_init(void)
{
    RESOLVE(open);
    RESOLVE(open64);
    RESOLVE(openat);
    RESOLVE(openat64);
    RESOLVE(close);
    RESOLVE(write);
    RESOLVE(pwrite);
    RESOLVE(pwrite64);
    RESOLVE(writev);
    RESOLVE(pwritev);
    RESOLVE(read);
    RESOLVE(pread);
    RESOLVE(pread64);
    RESOLVE(ftruncate);
    RESOLVE(ftruncate64);
    RESOLVE(fsync);
    RESOLVE(fdatasync);
    RESOLVE(unlink);
    RESOLVE(unlinkat);

    const char *dir = getenv("FAULTFS_DIR");
    if (dir == NULL || dir[0] == '\0')
        return;
    const char *shadow = getenv("FAULTFS_SHADOW");
    const char *ctl = getenv("FAULTFS_CTL");
    const char *files = getenv("FAULTFS_FILES");
    if (files == NULL || files[0] == '\0')
        files = "ferry.db,ferry.db-wal";
    struct stat st;
    if (shadow == NULL || shadow[0] == '\0' || strlen(dir) >= FFS_PATH ||
        strlen(shadow) >= FFS_PATH || stat(dir, &st) < 0) {
        ffs_say("faultfs: FAULTFS_DIR or FAULTFS_SHADOW unusable, not tracking anything");
        return;
    }
    ffs_dir_dev = st.st_dev;
    ffs_dir_ino = st.st_ino;
    strcpy(ffs_dir, dir);
    strcpy(ffs_shadow, shadow);
    if (ctl != NULL && strlen(ctl) < FFS_PATH)
        strcpy(ffs_ctl, ctl);
    if (mkdir(ffs_shadow, 0755) < 0 && errno != EEXIST) {
        ffs_say("faultfs: cannot create %s: %s", ffs_shadow, strerror(errno));
        return;
    }
    const char *p = files;
    while (*p != '\0' && ffs_nfiles < FFS_MAX_FILES) {
        size_t len = strcspn(p, ",");
        if (len > 0 && len <= NAME_MAX) {
            struct ffs_file *f = &ffs_files[ffs_nfiles++];
            memcpy(f->name, p, len);
            f->name[len] = '\0';
            f->image_fd = -1;
        }
        p += len;
        if (*p == ',')
            p++;
    }
    const char *max = getenv("FAULTFS_MAX_RANGES"); /* for the shim's own test */
    if (max != NULL && atol(max) >= 2)
        ffs_max_ranges = (size_t)atol(max);
    ffs_enabled = 1;
    /* Everything before this process is durable. */
    for (int i = 0; i < ffs_nfiles; i++) {
        struct ffs_file *f = &ffs_files[i];
        char live[FFS_PATH], img[FFS_PATH];
        if (join_path(live, ffs_dir, f->name) < 0 || join_path(img, ffs_shadow, f->name) < 0)
            continue;
        if (stat(live, &st) == 0 && S_ISREG(st.st_mode))
            image_from_live(f);
        else
            real_unlink(img);
    }
}

__attribute__((constructor)) static void ffs_ctor(void)
{
    pthread_once(&ffs_once, ffs_init);
}

static inline void ffs_ready(void)
{
    pthread_once(&ffs_once, ffs_init);
}

/* The tracked file behind fd, or NULL. */
static inline struct ffs_file *fd_file(int fd)
{
    if (fd < 0 || fd >= FFS_MAX_FD)
        return NULL;
    int i = atomic_load_explicit(&ffs_fd[fd], memory_order_relaxed);
    return i > 0 ? &ffs_files[i - 1] : NULL;
}

/* The tracked file that path (relative to dirfd) names, or NULL. Only the
 * base name is compared first; the directory is checked by identity. */
static struct ffs_file *path_file(int dirfd, const char *path)
{
    if (!ffs_enabled || path == NULL)
        return NULL;
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    struct ffs_file *f = NULL;
    for (int i = 0; i < ffs_nfiles; i++)
        if (strcmp(ffs_files[i].name, base) == 0)
            f = &ffs_files[i];
    if (f == NULL)
        return NULL;
    char dir[FFS_PATH];
    if (slash == NULL) {
        strcpy(dir, ".");
    } else if (slash == path) {
        strcpy(dir, "/");
    } else {
        size_t len = (size_t)(slash - path);
        if (len >= sizeof(dir))
            return NULL;
        memcpy(dir, path, len);
        dir[len] = '\0';
    }
    struct stat st;
    if (fstatat(path[0] == '/' ? AT_FDCWD : dirfd, dir, &st, 0) < 0)
        return NULL;
    return st.st_dev == ffs_dir_dev && st.st_ino == ffs_dir_ino ? f : NULL;
}

/* ---- dirty ranges ---- */

static void ranges_bound(struct ffs_file *f)
{
    /* Merge every gap below a threshold that doubles until half remain. */
    for (off_t gap = 4096; f->n > ffs_max_ranges / 2; gap *= 2) {
        size_t o = 0;
        for (size_t i = 1; i < f->n; i++) {
            if (f->r[i].start - f->r[o].end <= gap)
                f->r[o].end = f->r[i].end;
            else
                f->r[++o] = f->r[i];
        }
        f->n = o + 1;
    }
}

static void ranges_add(struct ffs_file *f, off_t start, off_t end)
{
    if (start >= end)
        return;
    if (f->n > 0 && f->r[f->n - 1].end == start) { /* an append: the usual WAL case */
        f->r[f->n - 1].end = end;
        return;
    }
    /* lo: the first range that ends at or after start (touching merges). */
    size_t lo = 0, hi = f->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (f->r[mid].end < start)
            lo = mid + 1;
        else
            hi = mid;
    }
    size_t j = lo; /* one past the last range that starts at or before end */
    while (j < f->n && f->r[j].start <= end)
        j++;
    if (j > lo) {
        off_t s = f->r[lo].start < start ? f->r[lo].start : start;
        off_t e = f->r[j - 1].end > end ? f->r[j - 1].end : end;
        f->r[lo].start = s;
        f->r[lo].end = e;
        memmove(&f->r[lo + 1], &f->r[j], (f->n - j) * sizeof(f->r[0]));
        f->n -= j - lo - 1;
        return;
    }
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 64;
        struct ffs_range *r = realloc(f->r, cap * sizeof(*r));
        if (r == NULL) { /* out of memory: make everything dirty */
            if (f->n == 0)
                return;
            f->r[0].start = f->r[0].start < start ? f->r[0].start : start;
            f->r[0].end = f->r[f->n - 1].end > end ? f->r[f->n - 1].end : end;
            f->n = 1;
            return;
        }
        f->r = r;
        f->cap = cap;
    }
    memmove(&f->r[lo + 1], &f->r[lo], (f->n - lo) * sizeof(f->r[0]));
    f->r[lo].start = start;
    f->r[lo].end = end;
    f->n++;
    if (f->n > ffs_max_ranges)
        ranges_bound(f);
}

static void record_write(int fd, off_t start, ssize_t n)
{
    struct ffs_file *f = fd_file(fd);
    if (f == NULL || n <= 0 || start < 0)
        return;
    pthread_mutex_lock(&ffs_lock);
    if (fd_file(fd) == f)
        ranges_add(f, start, start + n);
    pthread_mutex_unlock(&ffs_lock);
}

/* ---- rules ---- */

static void rules_parse(char *text)
{
    char *save = NULL;
    ffs_nrules = 0;
    for (char *line = strtok_r(text, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        size_t len = strlen(line);
        while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t'))
            line[--len] = '\0';
        while (*line == ' ' || *line == '\t')
            line++;
        if (*line == '\0' || *line == '#' || ffs_nrules == FFS_MAX_RULES)
            continue;
        struct ffs_rule *r = &ffs_rules[ffs_nrules];
        char name[256];
        long count;
        if (strncmp(line, "poison-read ", 12) == 0) {
            const char *s = line + 12;
            while (*s == ' ')
                s++;
            r->arg_len = strlen(s);
            if (r->arg_len == 0 || r->arg_len >= sizeof(r->arg))
                goto bad;
            memcpy(r->arg, s, r->arg_len + 1);
            r->kind = RULE_POISON_READ;
        } else if (sscanf(line, "fail-fsync %255s %ld", name, &count) == 2 && count >= 0) {
            r->kind = RULE_FAIL_FSYNC;
            strcpy(r->arg, name);
            r->count = count;
        } else if (sscanf(line, "cut-in-fsync %255s %ld", name, &count) == 2 && count >= 0) {
            r->kind = RULE_CUT_IN_FSYNC;
            strcpy(r->arg, name);
            r->count = count;
        } else {
            goto bad;
        }
        ffs_nrules++;
        continue;
    bad:
        ffs_say("faultfs: ignoring bad rule in %s: %s", ffs_ctl, line);
    }
}

/* Re-reads the rules when the file changed. Called with ffs_lock held. */
static void rules_check(void)
{
    if (ffs_ctl[0] == '\0')
        return;
    struct stat st;
    int saved = errno;
    if (stat(ffs_ctl, &st) < 0) {
        if (ffs_ctl_seen != 1)
            ffs_nrules = 0;
        ffs_ctl_seen = 1;
        errno = saved;
        return;
    }
    if (ffs_ctl_seen == 2 && st.st_ino == ffs_ctl_ino && st.st_size == ffs_ctl_size &&
        st.st_mtim.tv_sec == ffs_ctl_mtim.tv_sec && st.st_mtim.tv_nsec == ffs_ctl_mtim.tv_nsec) {
        errno = saved;
        return;
    }
    ffs_ctl_seen = 2;
    ffs_ctl_ino = st.st_ino;
    ffs_ctl_size = st.st_size;
    ffs_ctl_mtim = st.st_mtim;
    ffs_nrules = 0;
    int fd = real_open(ffs_ctl, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        char text[16384];
        size_t len = 0;
        ssize_t r;
        while (len < sizeof(text) - 1 &&
               (r = real_read(fd, text + len, sizeof(text) - 1 - len)) != 0) {
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                break;
            }
            len += (size_t)r;
        }
        text[len] = '\0';
        real_close(fd);
        rules_parse(text);
    }
    errno = saved;
}

static struct ffs_rule *rule_for(enum ffs_rule_kind kind, const char *name)
{
    for (int i = 0; i < ffs_nrules; i++)
        if (ffs_rules[i].kind == kind && strcmp(ffs_rules[i].arg, name) == 0)
            return &ffs_rules[i];
    return NULL;
}

/* ---- opening and closing ---- */

/* Before a real open of path: returns the file it names when tracked and
 * makes sure its image is initialised (after an unlink, from whatever is
 * there now). */
static struct ffs_file *before_open(int dirfd, const char *path, int flags)
{
    ffs_ready();
    struct ffs_file *f = path_file(dirfd, path);
    if (f == NULL)
        return NULL;
    pthread_mutex_lock(&ffs_lock);
    if (!f->live) {
        struct stat st;
        if (fstatat(dirfd, path, &st, 0) == 0 && S_ISREG(st.st_mode))
            image_from_live(f);
    }
    pthread_mutex_unlock(&ffs_lock);
    (void)flags;
    return f;
}

static int after_open(struct ffs_file *f, int fd, int flags)
{
    if (fd < 0 || fd >= FFS_MAX_FD)
        return fd;
    if (f == NULL) {
        atomic_store_explicit(&ffs_fd[fd], 0, memory_order_relaxed);
        return fd;
    }
    struct stat st;
    int saved = errno;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        atomic_store_explicit(&ffs_fd[fd], 0, memory_order_relaxed);
        errno = saved;
        return fd;
    }
    pthread_mutex_lock(&ffs_lock);
    if (!f->live) /* created by this open: durable, and empty */
        image_from_live(f);
    if ((flags & O_TRUNC) && (flags & O_ACCMODE) != O_RDONLY) {
        f->trunc_pending = 1;
        f->trunc_low = 0;
        f->n = 0;
    }
    atomic_store_explicit(&ffs_fd[fd], (signed char)(f - ffs_files + 1), memory_order_relaxed);
    pthread_mutex_unlock(&ffs_lock);
    errno = saved;
    return fd;
}

static mode_t open_mode(int flags, va_list ap)
{
    if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE)
        return (mode_t)va_arg(ap, int);
    return 0;
}

int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = open_mode(flags, ap);
    va_end(ap);
    struct ffs_file *f = before_open(AT_FDCWD, path, flags);
    return after_open(f, real_open(path, flags, mode), flags);
}

int open64(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = open_mode(flags, ap);
    va_end(ap);
    struct ffs_file *f = before_open(AT_FDCWD, path, flags);
    return after_open(f, real_open64(path, flags, mode), flags);
}

int openat(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = open_mode(flags, ap);
    va_end(ap);
    struct ffs_file *f = before_open(dirfd, path, flags);
    return after_open(f, real_openat(dirfd, path, flags, mode), flags);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = open_mode(flags, ap);
    va_end(ap);
    struct ffs_file *f = before_open(dirfd, path, flags);
    return after_open(f, real_openat64(dirfd, path, flags, mode), flags);
}

int close(int fd)
{
    ffs_ready();
    if (fd >= 0 && fd < FFS_MAX_FD)
        atomic_store_explicit(&ffs_fd[fd], 0, memory_order_relaxed);
    return real_close(fd);
}

/* ---- writes ---- */

static off_t write_start(int fd, struct ffs_file *f, int *append)
{
    *append = 0;
    if (f == NULL)
        return -1;
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && (fl & O_APPEND)) {
        *append = 1;
        return -1;
    }
    return lseek(fd, 0, SEEK_CUR);
}

static void write_done(int fd, off_t start, int append, ssize_t n)
{
    if (n <= 0)
        return;
    int saved = errno;
    if (append) {
        off_t end = lseek(fd, 0, SEEK_CUR);
        if (end >= n)
            record_write(fd, end - n, n);
    } else {
        record_write(fd, start, n);
    }
    errno = saved;
}

ssize_t write(int fd, const void *buf, size_t count)
{
    ffs_ready();
    int append;
    off_t start = write_start(fd, fd_file(fd), &append);
    ssize_t n = real_write(fd, buf, count);
    if (start >= 0 || append)
        write_done(fd, start, append, n);
    return n;
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt)
{
    ffs_ready();
    int append;
    off_t start = write_start(fd, fd_file(fd), &append);
    ssize_t n = real_writev(fd, iov, iovcnt);
    if (start >= 0 || append)
        write_done(fd, start, append, n);
    return n;
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset)
{
    ffs_ready();
    ssize_t n = real_pwrite(fd, buf, count, offset);
    record_write(fd, offset, n);
    return n;
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset)
{
    ffs_ready();
    ssize_t n = real_pwrite64(fd, buf, count, offset);
    record_write(fd, (off_t)offset, n);
    return n;
}

ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset)
{
    ffs_ready();
    ssize_t n = real_pwritev(fd, iov, iovcnt, offset);
    record_write(fd, offset, n);
    return n;
}

static void record_truncate(int fd, off_t length)
{
    struct ffs_file *f = fd_file(fd);
    if (f == NULL)
        return;
    pthread_mutex_lock(&ffs_lock);
    if (!f->trunc_pending || length < f->trunc_low)
        f->trunc_low = length;
    f->trunc_pending = 1;
    /* Dirty bytes past the new end are gone. */
    while (f->n > 0 && f->r[f->n - 1].start >= length)
        f->n--;
    if (f->n > 0 && f->r[f->n - 1].end > length)
        f->r[f->n - 1].end = length;
    pthread_mutex_unlock(&ffs_lock);
}

int ftruncate(int fd, off_t length)
{
    ffs_ready();
    int rc = real_ftruncate(fd, length);
    if (rc == 0)
        record_truncate(fd, length);
    return rc;
}

int ftruncate64(int fd, off64_t length)
{
    ffs_ready();
    int rc = real_ftruncate64(fd, length);
    if (rc == 0)
        record_truncate(fd, (off_t)length);
    return rc;
}

/* ---- syncs ---- */

/* Copies the first count dirty ranges of f (after the size change) from the
 * live file behind fd to the image. Called with ffs_lock held. */
static void sync_to_image(struct ffs_file *f, int fd, size_t count)
{
    int img = image_fd(f);
    char *buf = ffs_buf();
    if (img < 0 || buf == NULL) {
        ffs_say("faultfs: cannot update the image of %s: %s", f->name, strerror(errno));
        return;
    }
    struct stat st;
    if (f->trunc_pending && real_ftruncate(img, f->trunc_low) < 0)
        ffs_say("faultfs: cannot truncate the image of %s", f->name);
    f->trunc_pending = 0;
    if (fstat(fd, &st) == 0 && real_ftruncate(img, st.st_size) < 0)
        ffs_say("faultfs: cannot resize the image of %s", f->name);
    int src = fd, own = -1;
    char probe;
    if (real_pread(fd, &probe, 0, 0) < 0) { /* a write-only descriptor */
        char live[FFS_PATH];
        if (join_path(live, ffs_dir, f->name) == 0)
            own = src = real_open(live, O_RDONLY | O_CLOEXEC);
    }
    for (size_t i = 0; i < count && i < f->n; i++)
        if (src < 0 || copy_range(src, img, f->r[i].start, f->r[i].end, buf) < 0) {
            ffs_say("faultfs: cannot copy dirty data of %s: %s", f->name, strerror(errno));
            break;
        }
    if (own >= 0)
        real_close(own);
}

static int do_sync(int fd, int (*real)(int))
{
    ffs_ready();
    struct ffs_file *f = fd_file(fd);
    if (f == NULL)
        return real(fd);
    pthread_mutex_lock(&ffs_lock);
    rules_check();
    struct ffs_rule *r = rule_for(RULE_FAIL_FSYNC, f->name);
    if (r != NULL && r->count > 0) {
        r->count--;
        ffs_say("faultfs: fsync of %s failed (injected EIO, %zu dirty ranges dropped)", f->name,
                f->n);
        f->n = 0;
        pthread_mutex_unlock(&ffs_lock);
        errno = EIO;
        return -1;
    }
    r = rule_for(RULE_CUT_IN_FSYNC, f->name);
    if (r != NULL && r->count-- == 0) {
        size_t half = f->n / 2 > 0 ? f->n / 2 : f->n;
        sync_to_image(f, fd, half);
        ffs_say("faultfs: power cut inside fsync of %s (%zu of %zu dirty ranges written)", f->name,
                half, f->n);
        kill(getpid(), SIGKILL);
        for (;;)
            pause();
    }
    int rc = real(fd);
    if (rc == 0) {
        int saved = errno;
        sync_to_image(f, fd, f->n);
        f->n = 0;
        errno = saved;
    }
    pthread_mutex_unlock(&ffs_lock);
    return rc;
}

int fsync(int fd)
{
    ffs_ready();
    return do_sync(fd, real_fsync);
}

int fdatasync(int fd)
{
    ffs_ready();
    return do_sync(fd, real_fdatasync);
}

/* ---- reads ---- */

static ssize_t read_done(int fd, const void *buf, ssize_t n)
{
    struct ffs_file *f = fd_file(fd);
    if (f == NULL || n <= 0)
        return n;
    int poisoned = 0;
    pthread_mutex_lock(&ffs_lock);
    rules_check();
    for (int i = 0; i < ffs_nrules && !poisoned; i++)
        if (ffs_rules[i].kind == RULE_POISON_READ &&
            memmem(buf, (size_t)n, ffs_rules[i].arg, ffs_rules[i].arg_len) != NULL)
            poisoned = 1;
    if (poisoned) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec != ffs_last_read_msg) {
            ffs_last_read_msg = now.tv_sec;
            ffs_say("faultfs: read of %s failed (injected EIO)", f->name);
        }
    }
    pthread_mutex_unlock(&ffs_lock);
    if (poisoned) {
        errno = EIO;
        return -1;
    }
    return n;
}

ssize_t read(int fd, void *buf, size_t count)
{
    ffs_ready();
    return read_done(fd, buf, real_read(fd, buf, count));
}

ssize_t pread(int fd, void *buf, size_t count, off_t offset)
{
    ffs_ready();
    return read_done(fd, buf, real_pread(fd, buf, count, offset));
}

ssize_t pread64(int fd, void *buf, size_t count, off64_t offset)
{
    ffs_ready();
    return read_done(fd, buf, real_pread64(fd, buf, count, offset));
}

/* ---- unlinking ---- */

static void forget(struct ffs_file *f)
{
    char img[FFS_PATH];
    pthread_mutex_lock(&ffs_lock);
    for (int fd = 0; fd < FFS_MAX_FD; fd++)
        if (fd_file(fd) == f)
            atomic_store_explicit(&ffs_fd[fd], 0, memory_order_relaxed);
    if (f->image_fd >= 0)
        real_close(f->image_fd);
    f->image_fd = -1;
    f->n = 0;
    f->trunc_pending = 0;
    f->live = 0;
    if (join_path(img, ffs_shadow, f->name) == 0)
        real_unlink(img);
    pthread_mutex_unlock(&ffs_lock);
}

int unlink(const char *path)
{
    ffs_ready();
    struct ffs_file *f = path_file(AT_FDCWD, path);
    int rc = real_unlink(path);
    if (rc == 0 && f != NULL) {
        int saved = errno;
        forget(f);
        errno = saved;
    }
    return rc;
}

int unlinkat(int dirfd, const char *path, int flags)
{
    ffs_ready();
    struct ffs_file *f = (flags & AT_REMOVEDIR) ? NULL : path_file(dirfd, path);
    int rc = real_unlinkat(dirfd, path, flags);
    if (rc == 0 && f != NULL) {
        int saved = errno;
        forget(f);
        errno = saved;
    }
    return rc;
}
