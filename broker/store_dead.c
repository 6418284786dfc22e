/*
 * store_dead.c - reading the ferry-dead-* headers of stored dead letters,
 * and migration 3's backfill of group_dead from them (store_dead.h).
 */
#include "store_dead.h"

#include <string.h>

void dead_info_of(const uint8_t *hdr, size_t hlen, struct dead_info *out)
{
    memset(out, 0, sizeof(*out));
    if (!hdr || hlen < 2)
        return;
    struct proto_msg m = {.header_count = proto_rd16(hdr), .headers = {hdr + 2, hlen - 2}};
    struct proto_header_iter hi;
    struct proto_header h;
    proto_header_iter_init(&hi, &m);
    while (proto_header_next(&hi, &h)) {
        if (h.name.len == 14 && memcmp(h.name.ptr, "ferry-dead-seq", 14) == 0)
            out->seq = h.value;
        else if (h.name.len == 16 && memcmp(h.name.ptr, "ferry-dead-group", 16) == 0)
            out->group_name = h.value;
        else if (h.name.len == 13 && memcmp(h.name.ptr, "ferry-dead-id", 13) == 0)
            out->id = h.value;
    }
}

uint64_t slice_u64(struct proto_slice v)
{
    uint64_t n = 0;
    for (size_t i = 0; i < v.len && i < 20; i++) {
        if (v.ptr[i] < '0' || v.ptr[i] > '9')
            return 0;
        n = n * 10 + (uint64_t)(v.ptr[i] - '0');
    }
    return n;
}

int backfill_group_dead(sqlite3 *db)
{
    static const char sql[] =
        "INSERT OR IGNORE INTO group_dead(group_id, seq, dead_seq) "
        "SELECT g.id, ?3, ?4 FROM groups g WHERE g.topic = ?1 AND g.name = ?2";
    sqlite3_stmt *scan = NULL, *ins = NULL;
    int rc = sqlite3_prepare_v2(db,
                                "SELECT t.name, m.rid & 1099511627775, m.headers FROM topics t "
                                "JOIN messages m ON m.rid >= (t.id << 40) AND m.rid < "
                                "((t.id + 1) << 40) WHERE t.name LIKE '\\_dead.%' ESCAPE '\\'",
                                -1, &scan, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(db, sql, -1, &ins, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(scan)) == SQLITE_ROW) {
        struct dead_info di;
        dead_info_of(sqlite3_column_blob(scan, 2), (size_t)sqlite3_column_bytes(scan, 2), &di);
        uint64_t seq = slice_u64(di.seq);
        const char *dname = (const char *)sqlite3_column_text(scan, 0);
        int dlen = sqlite3_column_bytes(scan, 0);
        rc = SQLITE_OK;
        if (!seq || !di.group_name.len || dlen <= 6)
            continue;
        sqlite3_bind_text(ins, 1, dname + 6, dlen - 6, SQLITE_TRANSIENT);
        sqlite3_bind_text(ins, 2, (const char *)di.group_name.ptr, (int)di.group_name.len,
                          SQLITE_TRANSIENT);
        sqlite3_bind_int64(ins, 3, (int64_t)seq);
        sqlite3_bind_int64(ins, 4, sqlite3_column_int64(scan, 1));
        rc = sqlite3_step(ins);
        sqlite3_reset(ins);
        if (rc == SQLITE_DONE)
            rc = SQLITE_OK;
    }
    if (rc == SQLITE_DONE)
        rc = SQLITE_OK;
    sqlite3_finalize(scan);
    sqlite3_finalize(ins);
    return rc;
}
