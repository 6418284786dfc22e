/*
 * replay.c - runs a fuzz target over files, without libFuzzer.
 *
 * Usage: fuzz_<name>_replay PATH...
 * Each PATH is a file, or a directory whose files (not subdirectories, not
 * names starting with '.') are taken in name order. Each file's bytes are
 * passed to LLVMFuzzerTestOneInput() in a buffer of exactly their size, so a
 * sanitizer build catches any read past the end. A target reports a broken
 * invariant by aborting; replay exits 1 when a path cannot be read or no
 * input was found at all (a misspelt corpus path must not pass silently).
 *
 * meson links this with every fuzz_<name>.c when -Dfuzzing=false and runs
 * it over tests/fuzz/corpus/<name>/ in the 'fuzz' test suite.
 */
#include <dirent.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Runs one file. Returns 0, or -1 when it cannot be read. */
static int replay_file(const char *path)
{
    FILE *fp = fopen(path, "rb");
    uint8_t *buf;
    long n;

    if (fp == NULL || fseek(fp, 0, SEEK_END) != 0 || (n = ftell(fp)) < 0 ||
        fseek(fp, 0, SEEK_SET) != 0) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        if (fp)
            fclose(fp);
        return -1;
    }
    /* At least one byte, so that an empty input still has a valid pointer. */
    buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf == NULL || fread(buf, 1, (size_t)n, fp) != (size_t)n) {
        fprintf(stderr, "replay: %s: read failed\n", path);
        free(buf);
        fclose(fp);
        return -1;
    }
    fclose(fp);
    LLVMFuzzerTestOneInput(buf, (size_t)n);
    free(buf);
    return 0;
}

static int skip_hidden(const struct dirent *d)
{
    return d->d_name[0] != '.';
}

/* Runs every file of a directory, in name order. Returns the number run, or
 * -1 on an error. */
static long replay_dir(const char *dir)
{
    struct dirent **names;
    long count = 0;
    int n, i;

    n = scandir(dir, &names, skip_hidden, alphasort);
    if (n < 0) {
        fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    for (i = 0; i < n; i++) {
        char path[4096];
        struct stat st;

        if (count >= 0) {
            snprintf(path, sizeof path, "%s/%s", dir, names[i]->d_name);
            if (stat(path, &st) == 0 && S_ISREG(st.st_mode))
                count = replay_file(path) == 0 ? count + 1 : -1;
        }
        free(names[i]);
    }
    free(names);
    return count;
}

int main(int argc, char **argv)
{
    long total = 0, n;
    struct stat st;
    int i;

    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE-OR-DIRECTORY...\n", argv[0]);
        return 2;
    }
    for (i = 1; i < argc; i++) {
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            return 1;
        }
        n = S_ISDIR(st.st_mode) ? replay_dir(argv[i]) : replay_file(argv[i]) == 0 ? 1 : -1;
        if (n < 0)
            return 1;
        total += n;
    }
    if (total == 0) {
        fprintf(stderr, "replay: no inputs found\n");
        return 1;
    }
    printf("replayed %ld inputs\n", total);
    return 0;
}
