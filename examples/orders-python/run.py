#!/usr/bin/env python3
"""run.py - the order -> inventory story in Python, in one command.

Starts ferryd on a fresh temporary folder, `ferry relay` on the order
service's database, the inventory service and the order service; with
--kills K, kill -9s the inventory service K times at random moments and
starts it again. Waits until every order has its effect, stops everything
and checks that each order's stock change happened exactly once. Exit
status 0 when it did.

  examples/orders-python/run.py                 500 orders at 200/s
  examples/orders-python/run.py --orders 2000 --kills 5

The programs come from the meson build folder (--build DIR, $FERRY_BUILD or
./build); the ferry package from DIR/python.
"""
import argparse
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def main():
    ap = argparse.ArgumentParser(description="the order -> inventory story in Python")
    ap.add_argument("--orders", type=int, default=500)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--kills", type=int, default=0, help="kill -9 the inventory service K times")
    ap.add_argument("--build", default=os.environ.get("FERRY_BUILD", os.path.join(ROOT, "build")))
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--timeout", type=float, default=120.0)
    a = ap.parse_args()
    ferryd = os.environ.get("FERRYD", os.path.join(a.build, "broker", "ferryd"))
    ferry_cli = os.environ.get("FERRY_CLI", os.path.join(a.build, "client", "cli", "ferry"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [os.path.join(a.build, "python"), env.get("PYTHONPATH", "")] if p)
    tmp = tempfile.mkdtemp(prefix="ferry-orders-py-")
    procs = {}
    rng = random.Random()

    def start(name, argv):
        log = open(os.path.join(tmp, name + ".log"), "a")
        procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    try:
        ready = os.path.join(tmp, "ready")
        start("ferryd", [ferryd, "--listen", "127.0.0.1:0", "--data", os.path.join(tmp, "data"),
                         "--ready-file", ready])
        deadline = time.time() + 30
        while not os.path.exists(ready):
            if time.time() > deadline or procs["ferryd"].poll() is not None:
                sys.exit("ferryd did not start: see " + os.path.join(tmp, "ferryd.log"))
            time.sleep(0.02)
        server = open(ready).read().strip()
        orders_db, inv_db = os.path.join(tmp, "orders.db"), os.path.join(tmp, "inventory.db")
        py = sys.executable
        inventory = [py, os.path.join(HERE, "inventory_service.py"), "--db", inv_db,
                     "--server", server]
        subprocess.run([py, os.path.join(HERE, "order_service.py"), "--db", orders_db,
                        "--orders", "0"], env=env, check=True)  # tables first
        start("relay", [ferry_cli, "relay", "--db", orders_db, "--server", server])
        start("inventory", inventory)
        start("orders", [py, os.path.join(HERE, "order_service.py"), "--db", orders_db,
                         "--orders", str(a.orders), "--rate", str(a.rate)])
        kills = 0
        next_kill = time.time() + rng.uniform(0.2, 1.0)
        deadline = time.time() + a.timeout
        applied = 0
        while time.time() < deadline:
            if kills < a.kills and time.time() >= next_kill:
                procs["inventory"].kill()
                procs["inventory"].wait()
                kills += 1
                start("inventory", inventory)
                next_kill = time.time() + rng.uniform(0.2, 1.0)
            applied = count_applied(inv_db)
            if applied >= a.orders and kills >= a.kills and procs["orders"].poll() is not None:
                break
            time.sleep(0.05)
        time.sleep(0.3)  # a duplicate effect, had there been one, would show by now
        for name in ["orders", "inventory", "relay", "ferryd"]:
            p = procs[name]
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        return check(inv_db, a.orders, kills)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        if a.keep:
            print("kept", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def count_applied(path):
    if not os.path.exists(path):
        return 0
    try:
        db = sqlite3.connect(path, timeout=5)
        n = db.execute("SELECT count(DISTINCT order_id) FROM applied").fetchone()[0]
        db.close()
        return n
    except sqlite3.OperationalError:
        return 0


def check(inv_db, orders, kills):
    db = sqlite3.connect(inv_db)
    rows = dict(db.execute("SELECT order_id, count(*) FROM applied GROUP BY order_id"))
    missing = [i for i in range(1, orders + 1) if i not in rows]
    doubled = [i for i, n in rows.items() if n != 1]
    taken = db.execute("SELECT sum(qty) FROM applied").fetchone()[0] or 0
    stock = db.execute("SELECT n FROM stock WHERE item = 'book'").fetchone()[0]
    want = sum(1 + i % 3 for i in range(1, orders + 1))
    ok = not missing and not doubled and taken == want and stock == 1000000 - want
    print(f"orders {orders}, inventory kill -9s {kills}: effects {len(rows)} "
          f"(missing {len(missing)}, doubled {len(doubled)}), stock {stock} "
          f"(expected {1000000 - want}): {'exactly once' if ok else 'BROKEN'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
