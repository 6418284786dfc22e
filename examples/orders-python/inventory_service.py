#!/usr/bin/env python3
"""inventory_service.py - takes stock for every order, exactly once: the
message id is claimed in the service's own database in the same transaction
as the stock change (the idempotent inbox), and acked after the commit.

  inventory_service.py --db inventory.db --server HOST:PORT [--group inventory]
"""
import argparse
import json
import sqlite3

import ferry


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--server", required=True)
    ap.add_argument("--group", default="inventory")
    a = ap.parse_args()
    ferry.inbox.install(a.db)
    db = sqlite3.connect(a.db, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE IF NOT EXISTS stock(item TEXT PRIMARY KEY, n INTEGER)")
    db.execute("INSERT OR IGNORE INTO stock VALUES ('book', 1000000)")
    # One row per applied effect: the checker counts them per order.
    db.execute("CREATE TABLE IF NOT EXISTS applied(order_id INTEGER, qty INTEGER)")
    with ferry.connect(a.server) as conn:
        for d in conn.subscribe("orders", a.group, ack_wait_ms=5000):
            order = json.loads(d.payload)
            with ferry.inbox.handle(db, a.group, d) as fresh:
                if fresh:
                    db.execute("UPDATE stock SET n = n - ? WHERE item = ?",
                               (order["qty"], order["item"]))
                    db.execute("INSERT INTO applied VALUES (?, ?)", (order["order"], order["qty"]))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
