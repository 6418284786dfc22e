/*
 * faultfs_ctl.c - the test side of the power-loss filesystem: rules,
 * power cuts and the environment that loads the shim. See faultfs.h.
 */
#include "faultfs.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CTL_PATH 4096

static int write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        if (w == 0)
            return -EIO;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int faultfs_rules(const char *ctl_path, const char *text)
{
    if (ctl_path == NULL || text == NULL)
        return -EINVAL;
    static unsigned seq;
    char tmp[CTL_PATH];
    int n = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld.%u", ctl_path, (long)getpid(), seq++);
    if (n < 0 || n >= (int)sizeof(tmp))
        return -ENAMETOOLONG;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    int rc = write_all(fd, text, strlen(text));
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, ctl_path) < 0)
        rc = -errno;
    if (rc < 0)
        unlink(tmp);
    return rc;
}

/* Copies the file src over dst (created or truncated). */
static int copy_file(const char *src, const char *dst)
{
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return -errno;
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        int e = -errno;
        close(in);
        return e;
    }
    char buf[65536];
    int rc = 0;
    for (;;) {
        ssize_t r = read(in, buf, sizeof(buf));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = -errno;
            break;
        }
        if (r == 0)
            break;
        if ((rc = write_all(out, buf, (size_t)r)) < 0)
            break;
    }
    close(in);
    if (close(out) < 0 && rc == 0)
        rc = -errno;
    return rc;
}

static int remove_file(const char *path)
{
    if (unlink(path) < 0 && errno != ENOENT)
        return -errno;
    return 0;
}

int faultfs_power_cut(const char *data_dir, const char *shadow_dir, const char *files_csv)
{
    if (data_dir == NULL || shadow_dir == NULL)
        return -EINVAL;
    if (files_csv == NULL || files_csv[0] == '\0')
        files_csv = FAULTFS_DEFAULT_FILES;
    char live[CTL_PATH], img[CTL_PATH], name[NAME_MAX + 1];
    int restored = 0, rc;
    for (const char *p = files_csv; *p != '\0';) {
        size_t len = strcspn(p, ",");
        if (len > NAME_MAX)
            return -ENAMETOOLONG;
        memcpy(name, p, len);
        name[len] = '\0';
        p += len;
        if (*p == ',')
            p++;
        if (len == 0)
            continue;
        if (snprintf(live, sizeof(live), "%s/%s", data_dir, name) >= (int)sizeof(live) ||
            snprintf(img, sizeof(img), "%s/%s", shadow_dir, name) >= (int)sizeof(img))
            return -ENAMETOOLONG;
        struct stat st;
        if (stat(img, &st) == 0) {
            if ((rc = copy_file(img, live)) < 0)
                return rc;
            restored++;
        } else if (errno == ENOENT) {
            if ((rc = remove_file(live)) < 0)
                return rc;
        } else {
            return -errno;
        }
        if (len > 4 && strcmp(name + len - 4, "-wal") == 0) {
            memcpy(name + len - 4, "-shm", 4);
            if (snprintf(live, sizeof(live), "%s/%s", data_dir, name) >= (int)sizeof(live))
                return -ENAMETOOLONG;
            if ((rc = remove_file(live)) < 0)
                return rc;
        }
    }
    if (snprintf(live, sizeof(live), "%s/ferry.db-shm", data_dir) >= (int)sizeof(live))
        return -ENAMETOOLONG;
    if ((rc = remove_file(live)) < 0)
        return rc;
    return restored;
}

/* What faultfs_setenv found, for faultfs_unsetenv. */
static int saved_set;
static char *saved_preload; /* NULL: was unset */
static char *saved_asan;

static int set_or_unset(const char *name, const char *value)
{
    int rc = value != NULL ? setenv(name, value, 1) : unsetenv(name);
    return rc < 0 ? -errno : 0;
}

int faultfs_setenv(const char *lib_path, const char *data_dir, const char *shadow_dir,
                   const char *ctl_path)
{
    if (lib_path == NULL || lib_path[0] == '\0' || data_dir == NULL || shadow_dir == NULL)
        return -EINVAL;
    if (mkdir(shadow_dir, 0755) < 0 && errno != EEXIST)
        return -errno;
    if (!saved_set) {
        const char *p = getenv("LD_PRELOAD");
        const char *a = getenv("ASAN_OPTIONS");
        saved_preload = p != NULL ? strdup(p) : NULL;
        saved_asan = a != NULL ? strdup(a) : NULL;
        if ((p != NULL && saved_preload == NULL) || (a != NULL && saved_asan == NULL)) {
            free(saved_preload);
            free(saved_asan);
            saved_preload = saved_asan = NULL;
            return -ENOMEM;
        }
        saved_set = 1;
    }
    const char *old_preload = saved_preload;
    const char *old_asan = saved_asan;
    size_t plen = strlen(lib_path) + (old_preload ? strlen(old_preload) : 0) + 2;
    size_t alen = (old_asan ? strlen(old_asan) : 0) + 32;
    char *preload = malloc(plen);
    char *asan = malloc(alen);
    int rc = -ENOMEM;
    if (preload != NULL && asan != NULL) {
        if (old_preload != NULL && old_preload[0] != '\0')
            snprintf(preload, plen, "%s:%s", lib_path, old_preload);
        else
            snprintf(preload, plen, "%s", lib_path);
        if (old_asan != NULL && old_asan[0] != '\0')
            snprintf(asan, alen, "%s:verify_asan_link_order=0", old_asan);
        else
            snprintf(asan, alen, "verify_asan_link_order=0");
        if ((rc = set_or_unset("LD_PRELOAD", preload)) == 0 &&
            (rc = set_or_unset("ASAN_OPTIONS", asan)) == 0 &&
            (rc = set_or_unset("FAULTFS_DIR", data_dir)) == 0 &&
            (rc = set_or_unset("FAULTFS_SHADOW", shadow_dir)) == 0)
            rc = set_or_unset("FAULTFS_CTL", ctl_path);
    }
    free(preload);
    free(asan);
    if (rc < 0)
        faultfs_unsetenv();
    return rc;
}

void faultfs_unsetenv(void)
{
    unsetenv("FAULTFS_DIR");
    unsetenv("FAULTFS_SHADOW");
    unsetenv("FAULTFS_CTL");
    if (!saved_set)
        return;
    set_or_unset("LD_PRELOAD", saved_preload);
    set_or_unset("ASAN_OPTIONS", saved_asan);
    free(saved_preload);
    free(saved_asan);
    saved_preload = saved_asan = NULL;
    saved_set = 0;
}
