"""The outbox and the inbox from Python on PostgreSQL (psycopg 3), against a
private cluster started for this module (initdb in a temporary directory,
as the user ferry-pg when run as root, since the server refuses root; a
unix socket there and a free loopback port; stopped by its PID) and the
real ferryd and `ferry relay --pg`."""
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import psycopg
import pytest

import ferry

FERRY_CLI = os.environ.get("FERRY_CLI")


class Cluster:
    def __init__(self):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        if not bins:
            pytest.fail("no PostgreSQL server under /usr/lib/postgresql (script/bootstrap)")
        self.bindir = os.path.dirname(bins[-1])
        self.dir = tempfile.mkdtemp(prefix="ferry-pypg-")
        os.chmod(self.dir, 0o755)
        self.as_user = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "ferry-pg", "ferry-pg")
            self.as_user = ["setpriv", "--reuid=ferry-pg", "--regid=ferry-pg", "--clear-groups",
                            "--"]
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.url = f"postgresql://ferry@127.0.0.1:{self.port}/postgres"
        self.log = open(self.dir + ".log", "w")  # outside the folder the server owns
        # Not the sanitizer runtimes a sanitizer build preloads into Python:
        # initdb hangs under them, and the server is not ours to check.
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
        env["LC_ALL"] = "C"
        subprocess.run(self.as_user + [f"{self.bindir}/initdb", "-D", f"{self.dir}/data", "-U",
                                       "ferry", "-A", "trust", "-E", "UTF8", "--locale=C",
                                       "--no-sync"],
                       check=True, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.proc = subprocess.Popen(
            self.as_user + [f"{self.bindir}/postgres", "-D", f"{self.dir}/data", "-p",
                            str(self.port), "-c", "listen_addresses=127.0.0.1", "-c",
                            f"unix_socket_directories={self.dir}", "-c", "fsync=off"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 30
        while True:
            try:
                psycopg.connect(self.url).close()
                break
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("postgres did not start")
                time.sleep(0.05)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        os.unlink(self.log.name)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    yield c
    c.stop()


@pytest.fixture
def pg(cluster, request):
    conn = psycopg.connect(cluster.url, autocommit=True)
    schema = f"py_{request.node.name[5:30].lower()}"
    yield conn, schema
    conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    conn.close()


def test_outbox_put_in_the_callers_transaction_relayed(broker, cluster, pg):
    conn, schema = pg
    assert ferry.outbox.install(conn, schema=schema) is None
    ferry.outbox.install(conn, schema=schema)  # idempotent
    conn.execute("CREATE TABLE IF NOT EXISTS py_orders (id bigint PRIMARY KEY)")
    for i in range(1, 6):
        with conn.transaction():
            conn.execute("INSERT INTO py_orders VALUES (%s)", (i,))
            mid = ferry.outbox.put(conn, "py-orders", f"order {i}", id=f"o-{i}", key="k",
                                   headers={"content-type": "text/plain"}, schema=schema)
            assert mid == f"o-{i}"
    generated = ferry.outbox.put(conn, "py-orders", b"order 6", schema=schema)  # autocommit
    assert len(generated) >= 1
    with pytest.raises(RuntimeError):
        with conn.transaction():
            ferry.outbox.put(conn, "py-orders", b"never", id="o-rolled-back", schema=schema)
            raise RuntimeError("rolled back")
    with pytest.raises(psycopg.errors.CheckViolation):
        ferry.outbox.put(conn, "bad topic", b"x", schema=schema)
    with pytest.raises(ferry.InvalidArgument):
        ferry.outbox.put(conn, "py-orders", b"x", schema="Bad-Schema")
    subprocess.run([FERRY_CLI, "relay", "--pg", cluster.url, "--schema", schema, "--server",
                    broker.addr, "--drain"], check=True, capture_output=True)
    with ferry.connect(broker.addr) as c:
        sub = c.subscribe("py-orders", "check", start="earliest")
        got = []
        for d in sub:
            got.append((d.id, d.payload, d.key, d.headers))
            d.ack()
            if len(got) == 6:
                break
    assert [g[0] for g in got[:5]] == [f"o-{i}" for i in range(1, 6)]
    assert got[0][1] == b"order 1" and got[0][2] == b"k"
    assert got[5][0] == generated and got[5][1] == b"order 6"
    assert conn.execute(f"SELECT count(*) FROM {schema}.outbox").fetchone()[0] == 0
    conn.execute("DROP TABLE py_orders")


def test_inbox_handle_once_across_a_redelivery(broker, pg):
    conn, schema = pg
    ferry.inbox.install(conn, schema=schema)
    conn.execute(f"CREATE TABLE {schema}.effects (id text)")
    with ferry.connect(broker.addr) as c:
        for i in range(3):
            c.publish("py-inbox", f"m{i}".encode(), id=f"m-{i}")
        sub = c.subscribe("py-inbox", "inv", start="earliest", ack_wait_ms=300)
        it = iter(sub)
        d = next(it)
        # Applied and committed, then the consumer "dies" before its ack:
        with conn.transaction():
            assert ferry.inbox.claim(conn, "inv", d, schema=schema) is True
            conn.execute(f"INSERT INTO {schema}.effects VALUES (%s)", (d.id,))
        runs = 0
        seen = set()
        for d in it:
            with ferry.inbox.handle(conn, "inv", d, schema=schema) as fresh:
                if fresh:
                    runs += 1
                    conn.execute(f"INSERT INTO {schema}.effects VALUES (%s)", (d.id,))
            seen.add(d.id)
            if seen == {"m-0", "m-1", "m-2"}:
                break
        c.flush()
    assert runs == 2  # m-0's redelivery found its claim
    assert conn.execute(f"SELECT count(*), count(DISTINCT id) FROM {schema}.effects").fetchone() \
        == (3, 3)
    with pytest.raises(ferry.InvalidArgument):
        with conn.transaction():
            ferry.inbox.handle(conn, "inv", d, schema=schema).__enter__()
    conn.execute(f"UPDATE {schema}.inbox SET processed_ms = 1")
    assert ferry.inbox.purge(conn, 60000, 2, schema=schema) == 2
    assert ferry.inbox.purge(conn, 60000, 100, schema=schema) == 1


def _floor_scenario(broker, db, kind, schema=None):
    """Five messages: the first applied then dead-lettered (a nack at
    max_deliveries 1), the rest handled and acked; returns the connection
    once the group's floor has passed them all."""
    c = ferry.connect(broker.addr)
    for i in range(1, 6):
        c.publish(f"floor-{kind}", f"m{i}".encode(), id=f"{kind}-{i}")
    sub = c.subscribe(f"floor-{kind}", "inv", start="earliest", max_deliveries=1,
                      ack_wait_ms=60000)
    it = iter(sub)
    d = next(it)
    with ferry.inbox.handle(db, "inv", d, ack=False, schema=schema) as fresh:
        assert fresh
    d.nack(reason="the ack was lost")
    for _ in range(4):
        with ferry.inbox.handle(db, "inv", next(it), schema=schema) as fresh:
            assert fresh
    c.flush()
    deadline = time.time() + 30
    while c.group_floor(f"floor-{kind}", "inv") != (6, [1]):
        assert time.time() < deadline, c.group_floor(f"floor-{kind}", "inv")
        time.sleep(0.01)
    return c


def test_inbox_purge_acked_keeps_the_redrivable_claim_postgres(broker, pg):
    conn, schema = pg
    ferry.inbox.install(conn, schema=schema)
    c = _floor_scenario(broker, conn, "pg", schema)
    assert ferry.inbox.purge_acked(conn, "inv", c, "floor-pg", max_rows=3, schema=schema) == 3
    assert ferry.inbox.purge_acked(conn, "inv", c, "floor-pg", schema=schema) == 1
    assert ferry.inbox.purge_acked(conn, "inv", c, "floor-pg", schema=schema) == 0
    assert conn.execute(f"SELECT seq FROM {schema}.inbox").fetchall() == [(1,)]
    c.close()


def test_inbox_purge_acked_keeps_the_redrivable_claim_sqlite(broker, tmpdir_path):
    import sqlite3
    path = os.path.join(tmpdir_path, "inv.db")
    ferry.inbox.install(path)
    db = sqlite3.connect(path, isolation_level=None)
    c = _floor_scenario(broker, db, "lite")
    assert ferry.inbox.purge_acked(db, "inv", c, "floor-lite", max_rows=3) == 3
    assert ferry.inbox.purge_acked(db, "inv", c, "floor-lite") == 1
    assert db.execute("SELECT seq FROM ferry_inbox").fetchall() == [(1,)]
    c.close()
    db.close()
