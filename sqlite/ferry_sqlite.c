/*
 * ferry_sqlite.c - a SQLite loadable extension that shows the `headers`
 * column of ferry.db readably (docs/OPERATIONS.md, "Storage"):
 *
 *   sqlite3 -readonly -cmd '.load /usr/lib/x86_64-linux-gnu/ferry/ferry_sqlite' \
 *     ferry-data/ferry.db "SELECT seq, ferry_headers(headers) FROM messages_v ..."
 *
 * ferry_headers(h)       the headers as a JSON object, {"name":"value",...};
 *                        a repeated name maps to an array of its values;
 *                        '{}' for a count of 0 (fh_json, ferry_headers.h)
 * ferry_header(h, name)  the value of the first header named name: text
 *                        when it is valid UTF-8, else a blob; NULL when
 *                        there is none
 *
 * Both return NULL for a NULL argument (a message without headers stores
 * NULL) and fail the statement with "ferry_headers: malformed headers
 * blob" (or "ferry_header: ...") for a blob that is not the store's
 * encoding. The module links no SQLite of its own: it calls the loading
 * program's through sqlite3_api. Its entry point is sqlite3_ferrysqlite_init,
 * the name SQLite derives from the file name ferry_sqlite.so (letters up to
 * the first '.', lower-cased), and also sqlite3_extension_init, the name
 * SQLite tries first.
 */
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT1

#include <stdlib.h>

#include "ferry_headers.h"

#define FERRY_SQLITE_API __attribute__((visibility("default")))

FERRY_SQLITE_API int sqlite3_ferrysqlite_init(sqlite3 *db, char **err,
                                              const sqlite3_api_routines *api);
FERRY_SQLITE_API int sqlite3_extension_init(sqlite3 *db, char **err,
                                            const sqlite3_api_routines *api);

/* The bytes of a non-NULL argument. Returns 0, or -1 after setting the
 * out-of-memory error. */
static int arg_bytes(sqlite3_context *ctx, sqlite3_value *v, const uint8_t **p, size_t *n)
{
    *p = sqlite3_value_type(v) == SQLITE_BLOB ? sqlite3_value_blob(v)
                                              : (const uint8_t *)sqlite3_value_text(v);
    int len = sqlite3_value_bytes(v);
    if (!*p && len > 0) {
        sqlite3_result_error_nomem(ctx);
        return -1;
    }
    *n = len > 0 ? (size_t)len : 0;
    return 0;
}

static void headers_fn(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    const uint8_t *blob;
    size_t len;
    (void)argc;
    if (sqlite3_value_type(argv[0]) == SQLITE_NULL) {
        sqlite3_result_null(ctx);
        return;
    }
    if (arg_bytes(ctx, argv[0], &blob, &len) < 0)
        return;
    char *json;
    size_t json_len;
    switch (fh_json(blob, len, &json, &json_len)) {
    case FH_OK:
        sqlite3_result_text64(ctx, json, json_len, free, SQLITE_UTF8);
        break;
    case FH_MALFORMED:
        sqlite3_result_error(ctx, "ferry_headers: malformed headers blob", -1);
        break;
    default:
        sqlite3_result_error_nomem(ctx);
        break;
    }
}

static void header_fn(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    const uint8_t *blob, *name, *value = NULL;
    size_t len, name_len, value_len = 0;
    (void)argc;
    if (sqlite3_value_type(argv[0]) == SQLITE_NULL || sqlite3_value_type(argv[1]) == SQLITE_NULL) {
        sqlite3_result_null(ctx);
        return;
    }
    if (arg_bytes(ctx, argv[0], &blob, &len) < 0 || arg_bytes(ctx, argv[1], &name, &name_len) < 0)
        return;
    switch (fh_find(blob, len, name, name_len, &value, &value_len)) {
    case 1:
        if (fh_utf8_valid(value, value_len))
            sqlite3_result_text64(ctx, (const char *)value, value_len, SQLITE_TRANSIENT,
                                  SQLITE_UTF8);
        else
            sqlite3_result_blob64(ctx, value, value_len, SQLITE_TRANSIENT);
        break;
    case 0:
        sqlite3_result_null(ctx);
        break;
    default:
        sqlite3_result_error(ctx, "ferry_header: malformed headers blob", -1);
        break;
    }
}

int sqlite3_ferrysqlite_init(sqlite3 *db, char **err, const sqlite3_api_routines *api)
{
    (void)err;
    SQLITE_EXTENSION_INIT2(api);
    const int flags = SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS;
    int rc = sqlite3_create_function(db, "ferry_headers", 1, flags, NULL, headers_fn, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_create_function(db, "ferry_header", 2, flags, NULL, header_fn, NULL, NULL);
    return rc;
}

int sqlite3_extension_init(sqlite3 *db, char **err, const sqlite3_api_routines *api)
{
    return sqlite3_ferrysqlite_init(db, err, api);
}
