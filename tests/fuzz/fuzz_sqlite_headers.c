/*
 * fuzz_sqlite_headers.c - fuzz target for the decoder of ferry.db's
 * headers column behind the SQLite extension (sqlite/ferry_headers.c).
 *
 * The input is a headers blob. The target walks it with its own reading of
 * the encoding (u16 count, then count x (str16 name, str16 value), nothing
 * after) and aborts when the decoder disagrees:
 *   - fh_validate, fh_find and fh_json agree on whether it is well-formed,
 *     and so does the walk here;
 *   - fh_json's text has no NUL before its end, parses as one JSON object
 *     (jansson, duplicate keys rejected) with at most count members, and
 *     each name that is valid UTF-8 without a NUL is a key, and when every
 *     name is, its (first) value is the first value of that name, where
 *     that is valid UTF-8 too;
 *   - fh_find of each name finds its first value.
 * A sanitizer build catches any read past the blob (replay.c passes each
 * input in a buffer of exactly its size).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ferry_headers.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

#define MAX_WALK 65536

struct hdr {
    const uint8_t *name, *value;
    size_t name_len, value_len;
};

/* This target's own walk: returns the count, or -1 when malformed. */
static long walk(const uint8_t *d, size_t n, struct hdr *h)
{
    if (n < 2)
        return -1;
    long count = d[0] << 8 | d[1];
    size_t at = 2;
    for (long i = 0; i < count; i++) {
        size_t len[2];
        const uint8_t *p[2];
        for (int k = 0; k < 2; k++) {
            if (n - at < 2)
                return -1;
            len[k] = (size_t)(d[at] << 8 | d[at + 1]);
            at += 2;
            if (n - at < len[k])
                return -1;
            p[k] = d + at;
            at += len[k];
        }
        h[i] = (struct hdr){p[0], p[1], len[0], len[1]};
    }
    return at == n ? count : -1;
}

static int has_nul(const uint8_t *p, size_t n)
{
    return n && memchr(p, 0, n) != NULL;
}

static void check_json(const char *json, size_t json_len, const struct hdr *h, long count)
{
    CHECK(strlen(json) == json_len);
    int any_nul_name = 0, all_utf8 = 1;
    for (long i = 0; i < count; i++) {
        any_nul_name |= has_nul(h[i].name, h[i].name_len);
        all_utf8 &= fh_utf8_valid(h[i].name, h[i].name_len);
    }
    json_error_t err;
    json_t *root = json_loadb(json, json_len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &err);
    if (any_nul_name) {
        /* jansson takes no NUL in a key; the rest was checked above. */
        json_decref(root);
        return;
    }
    CHECK(root != NULL && json_is_object(root));
    CHECK(json_object_size(root) <= (size_t)count);
    CHECK(count == 0 || json_object_size(root) > 0);
    for (long i = 0; i < count; i++) {
        if (!fh_utf8_valid(h[i].name, h[i].name_len))
            continue;
        char *key = malloc(h[i].name_len + 1);
        CHECK(key != NULL);
        if (h[i].name_len)
            memcpy(key, h[i].name, h[i].name_len);
        key[h[i].name_len] = '\0';
        json_t *v = json_object_get(root, key);
        free(key);
        CHECK(v != NULL);
        long first = i;
        for (long j = 0; j < i; j++)
            if (h[j].name_len == h[i].name_len &&
                (h[i].name_len == 0 || memcmp(h[j].name, h[i].name, h[i].name_len) == 0)) {
                first = j;
                break;
            }
        if (json_is_array(v)) {
            CHECK(json_array_size(v) >= 2);
            v = json_array_get(v, 0);
        }
        CHECK(json_is_string(v));
        /* An invalid name becomes U+FFFD and may then share a key with a
         * valid one: which value comes first is certain only without. */
        if (all_utf8 && fh_utf8_valid(h[first].value, h[first].value_len)) {
            CHECK(json_string_length(v) == h[first].value_len);
            CHECK(h[first].value_len == 0 ||
                  memcmp(json_string_value(v), h[first].value, h[first].value_len) == 0);
        }
    }
    json_decref(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct hdr h[MAX_WALK];
    long count = walk(data, size, h);
    unsigned vcount = 0;
    int rc = fh_validate(data, size, &vcount);
    CHECK(rc == (count < 0 ? FH_MALFORMED : FH_OK));
    if (rc == FH_OK)
        CHECK(vcount == (unsigned)count);

    char *json = NULL;
    size_t json_len = 0;
    int jrc = fh_json(data, size, &json, &json_len);
    CHECK(jrc == rc || jrc == FH_NOMEM);
    CHECK((jrc == FH_OK) == (json != NULL));
    if (jrc == FH_OK)
        check_json(json, json_len, h, count);
    free(json);

    const uint8_t *v = NULL;
    size_t vlen = 0;
    static const uint8_t absent[] = "\xff absent \xff";
    int frc = fh_find(data, size, absent, sizeof absent - 1, &v, &vlen);
    CHECK(count < 0 ? frc == FH_MALFORMED : (frc == 0 || frc == 1));
    if (count < 0)
        CHECK(fh_find(data, size, (const uint8_t *)"", 0, &v, &vlen) == FH_MALFORMED);
    for (long i = 0; i < count; i++) {
        CHECK(fh_find(data, size, h[i].name, h[i].name_len, &v, &vlen) == 1);
        long first = 0;
        while (h[first].name_len != h[i].name_len ||
               (h[i].name_len && memcmp(h[first].name, h[i].name, h[i].name_len) != 0))
            first++;
        CHECK(v == h[first].value && vlen == h[first].value_len);
    }
    return 0;
}
