#!/usr/bin/env python3
"""Bytes of database per inbox claim (docs/INBOX.md "Cost").

Creates the inbox layout of libferry (version 2: the table, its
processed_ms index and its (grp, topic, seq) index) in a scratch file,
inserts N claims of group `inventory` on topic `orders`, and prints the
file size per claim, as written (pages partly filled) and after VACUUM,
for the story's `order-N` ids and for random 36-byte UUIDs.

    python3 bench/inbox-claim-size.py [N]      # default 200000
"""
import os
import sqlite3
import sys
import tempfile
import uuid

LAYOUT = """
CREATE TABLE ferry_inbox (grp TEXT NOT NULL, msg_id TEXT NOT NULL, topic TEXT NOT NULL,
  seq INTEGER NOT NULL, processed_ms INTEGER NOT NULL, PRIMARY KEY (grp, msg_id)) WITHOUT ROWID;
CREATE INDEX ferry_inbox_processed ON ferry_inbox(processed_ms);
CREATE INDEX ferry_inbox_seq ON ferry_inbox(grp, topic, seq);
"""


def measure(n, ids, path):
    if os.path.exists(path):
        os.remove(path)
    db = sqlite3.connect(path)
    db.executescript(LAYOUT)
    db.executemany("INSERT INTO ferry_inbox VALUES (?, ?, ?, ?, ?)",
                   (("inventory", ids(i), "orders", i, 1764700000000 + i)
                    for i in range(1, n + 1)))
    db.commit()
    written = os.path.getsize(path) / n
    db.execute("VACUUM")
    db.close()
    return written, os.path.getsize(path) / n


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200000
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "claims.db")
        print(f"SQLite {sqlite3.sqlite_version}, {n} claims")
        for name, ids in (("order-N ids", lambda i: f"order-{i}"),
                          ("UUID ids", lambda i: str(uuid.uuid4()))):
            w, v = measure(n, ids, path)
            print(f"{name:12} {w:6.1f} bytes/claim as written, {v:6.1f} after VACUUM")


if __name__ == "__main__":
    main()
