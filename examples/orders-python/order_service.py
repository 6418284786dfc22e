#!/usr/bin/env python3
"""order_service.py - places orders: each order row and its event are
written in ONE transaction of the service's own SQLite database (the
transactional outbox); `ferry relay --db orders.db` publishes the events.

  order_service.py --db orders.db --orders N [--rate R] [--from K]
"""
import argparse
import json
import sqlite3
import time

import ferry


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--orders", type=int, required=True)
    ap.add_argument("--rate", type=float, default=200.0, help="orders per second")
    ap.add_argument("--from", dest="first", type=int, default=1)
    a = ap.parse_args()
    ferry.outbox.install(a.db)
    db = sqlite3.connect(a.db, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE IF NOT EXISTS orders(id INTEGER PRIMARY KEY, item TEXT, qty INTEGER)")
    t0 = time.monotonic()
    for i in range(a.first, a.orders + 1):
        qty = 1 + i % 3
        db.execute("BEGIN IMMEDIATE")
        cur = db.execute("INSERT OR IGNORE INTO orders(id, item, qty) VALUES (?, 'book', ?)",
                         (i, qty))
        if cur.rowcount == 1:  # a restarted service does not place an order twice
            ferry.outbox.put(db, "orders", json.dumps({"order": i, "item": "book", "qty": qty}),
                             id=f"order-{i}")
        db.execute("COMMIT")
        delay = t0 + (i - a.first + 1) / a.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)


if __name__ == "__main__":
    main()
