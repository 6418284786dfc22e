#!/usr/bin/env python3
"""Orders and their events in one PostgreSQL transaction, from Python.

The Ferry outbox contract (docs/OUTBOX.md, "PostgreSQL") is plain SQL: the
application inserts its business row and an outbox row in the same
transaction, and `ferry relay --pg URL` publishes the outbox row once the
transaction commits, never for a rollback. This uses psycopg 3 (Debian's
python3-psycopg); any driver that runs both statements in one transaction
gets the same guarantee.

    outbox_psycopg.py URL [--schema ferry] [--orders N]

Places N orders (ids 1..N), each with an "orders" event whose message id is
"order-<id>", then one more whose transaction fails after both inserts (and
so leaves neither the order nor its event). Prints "placed N".
The outbox must be installed: `ferry relay --pg URL --install`.
"""
import argparse
import json

import psycopg
from psycopg import sql


def place_order(conn, schema, order_id, total):
    """The order and its event commit together or not at all."""
    with conn.transaction():
        conn.execute("INSERT INTO shop_orders (id, total) VALUES (%s, %s)", (order_id, total))
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.outbox (topic, msg_id, key, payload, headers)"
                " VALUES (%s, %s, %s, %s, %s)"
            ).format(sql.Identifier(schema)),
            (
                "orders",
                f"order-{order_id}",
                f"customer-{order_id % 10}".encode(),
                json.dumps({"order": order_id, "total": total}).encode(),
                json.dumps({"content-type": "application/json"}),
            ),
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--schema", default="ferry")
    ap.add_argument("--orders", type=int, default=10)
    args = ap.parse_args()
    with psycopg.connect(args.url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS shop_orders (id bigint PRIMARY KEY, total bigint NOT NULL)"
        )
        for i in range(1, args.orders + 1):
            place_order(conn, args.schema, i, 1000 + i)
        try:
            with conn.transaction():
                conn.execute("INSERT INTO shop_orders (id, total) VALUES (0, 0)")
                place_order(conn, args.schema, args.orders + 1, 0)
                raise RuntimeError("payment declined")  # rolls back both orders and the event
        except RuntimeError:
            pass
    print(f"placed {args.orders}")


if __name__ == "__main__":
    main()
