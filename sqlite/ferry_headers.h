/*
 * ferry_headers.h - decoding the `headers` column of ferry.db (the
 * messages table and the messages_v view) for the SQLite extension
 * ferry_sqlite (ferry_sqlite.c) and its fuzz target
 * (tests/fuzz/fuzz_sqlite_headers.c). Plain C: no SQLite, no I/O.
 *
 * The encoding (broker/store.c, broker/store_publish.c; the wire's, see
 * proto/proto.h), every integer big-endian:
 *
 *   u16 count, then count x (u16 n, n bytes name, u16 m, m bytes value)
 *
 * and nothing after the last value. A blob is well-formed when it is
 * exactly that; anything else (shorter than 2 bytes, a length past the
 * end, bytes left over) is malformed. Nothing else is checked: an empty
 * name, a count above 64 or names and values that are not UTF-8 decode.
 */
#ifndef FERRY_SQLITE_HEADERS_H
#define FERRY_SQLITE_HEADERS_H

#include <stddef.h>
#include <stdint.h>

#define FH_OK 0
#define FH_MALFORMED (-1)
#define FH_NOMEM (-2)

/* Returns FH_OK when blob[0..len) is well-formed, else FH_MALFORMED. Sets
 * *count (may be NULL) to its header count. Reads no byte outside it. */
int fh_validate(const uint8_t *blob, size_t len, unsigned *count);

/* The first header named name[0..name_len) (compared byte for byte).
 * Returns 1 and points *value / *value_len into blob, 0 when there is none,
 * FH_MALFORMED when the blob is (checked whole, also after a match). */
int fh_find(const uint8_t *blob, size_t len, const uint8_t *name, size_t name_len,
            const uint8_t **value, size_t *value_len);

/* 1 when s[0..len) is valid UTF-8 (no overlong forms, no surrogates,
 * nothing above U+10FFFF), else 0. */
int fh_utf8_valid(const uint8_t *s, size_t len);

/*
 * The headers as a JSON object, NUL-terminated, malloc'd into *out (its
 * length without the NUL in *out_len); the caller frees it:
 *
 *   {"name":"value",...}    a name's members in the order names first occur
 *   {"a":["1","2"]}         a name that occurs more than once: an array of
 *                           its values in order
 *   {}                      a count of 0
 *
 * Strings escape '"' and '\' with a backslash and bytes below 0x20 as
 * \u00XX; every byte that does not begin a valid UTF-8 sequence becomes
 * U+FFFD (names are grouped after this, so the keys are unique). Returns
 * FH_OK, FH_MALFORMED or FH_NOMEM (and *out is then NULL).
 */
int fh_json(const uint8_t *blob, size_t len, char **out, size_t *out_len);

#endif /* FERRY_SQLITE_HEADERS_H */
