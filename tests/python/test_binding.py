"""The Python binding against a real ferryd: publishing, consuming, errors,
signals and threads, the outbox through `ferry relay`, and the inbox across
a consumer crash."""
import datetime
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import ferry

from conftest import FERRY_CLI


def test_publish_returns_seq_and_duplicate(broker):
    with ferry.connect(broker.addr) as c:
        a = c.publish("orders", b'{"order": 1}', id="order-1", key="cust-7",
                      headers={"trace": "abc", "bin": b"\x00\x01"})
        assert a == ferry.Ack(1, False, "order-1")
        again = c.publish("orders", b"whatever", id="order-1")
        assert again.duplicate and again.seq == 1
        b = c.publish("orders", "text is UTF-8: é")
        assert b.seq == 2 and not b.duplicate and len(b.id) == 36
        sub = c.subscribe("orders", "check")
        d = sub.receive(5)
        assert (d.seq, d.id, d.payload, d.key) == (1, "order-1", b'{"order": 1}', b"cust-7")
        assert d.headers == [("trace", b"abc"), ("bin", b"\x00\x01")]
        assert d.attempt == 1 and not d.redelivered and d.topic == "orders" and d.group == "check"
        d.ack()
        d.ack()  # idempotent
        d2 = sub.receive(5)
        assert d2.payload == "text is UTF-8: é".encode()
        d2.ack()


def test_deliver_at_delays_the_message(broker):
    with ferry.connect(broker.addr) as c:
        when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(milliseconds=600)
        c.publish("later", b"x", deliver_at=when)
        sub = c.subscribe("later", "g")
        assert sub.receive(0.2) is None
        d = sub.receive(10)
        assert d is not None and d.payload == b"x"
        assert time.time() * 1000 >= when.timestamp() * 1000 - 50
        d.ack()


def test_batch_is_atomic(broker):
    with ferry.connect(broker.addr) as c:
        acks = c.publish_batch([{"topic": "b", "payload": b"1"}, {"topic": "b", "payload": b"2",
                                                                   "id": "two"}])
        assert [a.seq for a in acks] == [1, 2] and acks[1].id == "two"
        with pytest.raises(ferry.InvalidArgument):
            c.publish_batch([{"topic": "b", "payload": b"3"}, {"topic": "no such", "payload": b""}])
        assert [t["head_seq"] for t in c.topics() if t["name"] == "b"] == [2]
        with pytest.raises(TypeError):
            c.publish_batch([{"topic": "b", "payload": b"x", "colour": "red"}])


def test_pipelined_publish_then_flush(broker):
    with ferry.connect(broker.addr, max_in_flight=500) as c:
        for i in range(10000):
            c.publish_async("pipe", b"%d" % i, id=f"p-{i}")
        acks = c.flush()
        assert [a.seq for a in acks] == list(range(1, 10001))
        assert acks[42].id == "p-42"
        assert c.flush() == []
        assert c.in_flight() == 0


def test_pipelined_publish_validated_at_once(broker):
    with ferry.connect(broker.addr) as c:
        limit = c.server_info()["max_message_bytes"]
        c.publish_async("pf", b"ok")
        with pytest.raises(ferry.MessageTooLarge):  # nothing queued
            c.publish_async("pf", b"x" * (limit + 1))
        c.publish_async("pf", b"ok too")
        assert [a.seq for a in c.flush()] == [1, 2]


def test_pipelined_failure_is_reported_with_the_others(broker):
    with ferry.connect(broker.addr) as c:
        assert c.publish("pf", b"before").seq == 1
        broker.kill9()  # the acks of what follows never come
        with pytest.raises(ferry.Error) as e:
            c.publish_async("pf", b"one")
            c.publish_async("pf", b"two")
            c.flush(5000)
        if isinstance(e.value, ferry.PublishError):
            assert all(isinstance(r, ferry.ConnectionLost) for r in e.value.results)
        else:
            assert isinstance(e.value, ferry.ConnectionLost)


def test_nack_touch_and_redelivery(broker):
    with ferry.connect(broker.addr) as c:
        c.publish("work", b"job")
        sub = c.subscribe("work", "w", ack_wait_ms=30000)
        d = sub.receive(5)
        d.touch()
        d.nack(delay_ms=0, reason="try again")
        d2 = sub.receive(5)
        assert d2.seq == d.seq and d2.attempt == 2 and d2.redelivered
        d2.ack()
        assert c.groups("work")[0]["redelivered"] == 1


def test_iterating_a_subscription_and_seek(broker):
    with ferry.connect(broker.addr) as c:
        for i in range(5):
            c.publish("it", b"%d" % i)
        seen = []
        for d in c.subscribe("it", "g"):
            seen.append(d.seq)
            d.ack()
            if d.seq == 5:
                break
        assert seen == [1, 2, 3, 4, 5]
        assert c.seek("it", "g", 3) == 3
        sub2 = c.subscribe("it", "g2", start=ferry.LATEST)
        c.publish("it", b"new")
        assert sub2.receive(5).seq == 6


def test_two_subscriptions_on_one_connection_get_their_own(broker):
    with ferry.connect(broker.addr) as c:
        c.publish("a", b"for a")
        c.publish("z", b"for z")
        sa = c.subscribe("a", "g")
        sz = c.subscribe("z", "g")
        dz = sz.receive(5)
        da = sa.receive(5)
        assert (da.payload, dz.payload) == (b"for a", b"for z")
        da.ack()
        dz.ack()


def test_bad_arguments_raise_and_send_nothing(broker):
    with ferry.connect(broker.addr) as c:
        with pytest.raises(TypeError):
            c.publish("t", 12345)
        with pytest.raises(TypeError):
            c.publish("t", b"x", headers={"n": 5})
        with pytest.raises(ferry.InvalidArgument) as e:
            c.publish("bad topic", b"x")
        assert e.value.name == "INVALID_TOPIC" and "topic" in e.value.detail
        limit = c.server_info()["max_message_bytes"]
        with pytest.raises(ferry.MessageTooLarge):
            c.publish("t", b"x" * (limit + 1))
        with pytest.raises(TypeError):
            c.subscribe("t", "g", start=1.5)
        assert [t for t in c.topics() if t["name"] == "t"] == []
        c.publish("t", b"still fine")


def test_connect_errors_are_clear(broker):
    with pytest.raises(ferry.ConnectError) as e:
        ferry.connect("127.0.0.1:1", connect_timeout_ms=2000)
    assert "127.0.0.1:1" in str(e.value)
    c = ferry.connect(broker.addr)
    c.close()
    with pytest.raises(ferry.ConnectionLost):
        c.publish("t", b"x")


def test_a_blocked_receive_releases_the_gil(broker):
    with ferry.connect(broker.addr) as c:
        sub = c.subscribe("quiet", "g")
        count = [0]
        stop = threading.Event()

        def spin():
            while not stop.is_set():
                count[0] += 1

        t = threading.Thread(target=spin)
        t.start()
        before = count[0]
        assert sub.receive(0.5) is None
        during = count[0] - before
        stop.set()
        t.join()
        assert during > 1000  # the other thread ran while receive waited


def test_ctrl_c_interrupts_a_blocking_receive(broker, tmpdir_path):
    script = textwrap.dedent(f"""
        import ferry, sys
        c = ferry.connect({broker.addr!r})
        s = c.subscribe("nothing", "g")
        print("ready", flush=True)
        try:
            next(iter(s))
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(0)
        sys.exit(3)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    t0 = time.time()
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=10)
    assert p.returncode == 0 and "interrupted" in out
    assert time.time() - t0 < 2


def test_outbox_put_reaches_the_broker_through_the_relay(broker, tmpdir_path):
    db_path = os.path.join(tmpdir_path, "app.db")
    producer = ferry.outbox.install(db_path)
    assert producer.startswith("outbox-")
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE orders(id INTEGER PRIMARY KEY, item TEXT)")
    with db:
        db.execute("INSERT INTO orders(item) VALUES ('book')")
        mid = ferry.outbox.put(db, "orders", b'{"item": "book"}', id="order-1",
                               headers={"kind": "created"})
    assert mid == "order-1"
    with db:  # rolled back: no event
        db.execute("INSERT INTO orders(item) VALUES ('pen')")
        ferry.outbox.put(db, "orders", b"never")
        db.rollback()
    with pytest.raises(sqlite3.IntegrityError):
        with db:
            ferry.outbox.put(db, "bad topic", b"x")
    db.close()
    r = subprocess.run([FERRY_CLI, "relay", "--db", db_path, "--drain", "--server", broker.addr],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    with ferry.connect(broker.addr) as c:
        d = c.subscribe("orders", "g").receive(5)
        assert (d.id, d.payload, d.headers) == ("order-1", b'{"item": "book"}',
                                                [("kind", b"created")])
        assert c.topics()[0]["head_seq"] == 1


CONSUMER = """
import ferry, os, sqlite3, sys
addr, db_path, crash = sys.argv[1], sys.argv[2], sys.argv[3] == "crash"
db = sqlite3.connect(db_path, isolation_level=None)
with ferry.connect(addr) as c:
    sub = c.subscribe("stock", "inventory", ack_wait_ms=1000)
    d = sub.receive(10)
    with ferry.inbox.handle(db, "inventory", d, ack=not crash) as fresh:
        if fresh:
            db.execute("UPDATE stock SET n = n - 1")
    print("fresh" if fresh else "seen", d.attempt, flush=True)
    if crash:
        os._exit(9)  # committed, never acked
"""


def test_inbox_skips_the_redelivery_after_a_consumer_crash(broker, tmpdir_path):
    db_path = os.path.join(tmpdir_path, "inv.db")
    ferry.inbox.install(db_path)
    db = sqlite3.connect(db_path)
    with db:
        db.execute("CREATE TABLE stock(n INTEGER)")
        db.execute("INSERT INTO stock VALUES (100)")
    db.close()
    with ferry.connect(broker.addr) as c:
        c.publish("stock", b"order 1", id="order-1")
    first = subprocess.run([sys.executable, "-c", CONSUMER, broker.addr, db_path, "crash"],
                           capture_output=True, text=True, timeout=60)
    assert first.returncode == 9 and first.stdout.split() == ["fresh", "1"], first.stderr
    second = subprocess.run([sys.executable, "-c", CONSUMER, broker.addr, db_path, "ok"],
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split()[0] == "seen" and int(second.stdout.split()[1]) >= 2
    db = sqlite3.connect(db_path)
    assert db.execute("SELECT n FROM stock").fetchone()[0] == 99  # once, not twice
    assert db.execute("SELECT count(*) FROM ferry_inbox").fetchone()[0] == 1
    assert ferry.inbox.purge(db, older_than_ms=-1000) == 1
    db.commit()
    with ferry.connect(broker.addr) as c:
        assert c.groups("stock")[0]["lag"] == 0


def test_deleting_ends_subscriptions_and_starts_the_name_over(broker):
    with ferry.connect(broker.addr) as c, ferry.connect(broker.addr) as admin:
        for i in range(3):
            c.publish("gone", b"%d" % i)
        sub = c.subscribe("gone", "g", max_in_flight=1)
        d = sub.receive(5)
        assert d.seq == 1
        with pytest.raises(ferry.InvalidArgument):
            admin.topic_delete("gone")  # it has a group
        assert admin.topic_delete("gone", force=True) == {"messages": 3, "groups": 1}
        with pytest.raises(ferry.NotFound) as e:
            sub.receive(5)
        assert "gone" in str(e.value)
        assert "gone" not in [t["topic"] for t in admin.topics()]
        assert c.publish("gone", b"again").seq == 1
        c.subscribe("gone", "h", max_in_flight=1).receive(5).ack()
        assert admin.group_delete("gone", "h") == {"groups": 1}
        assert admin.groups("gone") == []
        with pytest.raises(ferry.NotFound):
            admin.group_delete("gone", "h")


def test_help_reads_well():
    assert "Connects to ferryd" in ferry.connect.__doc__
    assert "durably" in ferry.Connection.publish.__doc__
    assert ferry.version().startswith("0.")


def test_pip_install_offline_against_an_installed_libferry(tmpdir_path):
    """pip install ./python with Debian's meson-python, no network, against
    libferry installed (here by meson install into a scratch root)."""
    import glob
    import shutil
    build, source = os.environ["FERRY_BUILD_ROOT"], os.environ["FERRY_SOURCE_ROOT"]
    root = os.path.join(tmpdir_path, "root")
    r = subprocess.run(["meson", "install", "-C", build, "--destdir", root, "--no-rebuild",
                        "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    pc = glob.glob(os.path.join(root, "**", "ferry.pc"), recursive=True)[0]
    text = open(pc).read()
    prefix = [line for line in text.splitlines() if line.startswith("prefix=")][0][7:]
    with open(pc, "w") as f:
        f.write(text.replace("prefix=" + prefix, "prefix=" + root + prefix, 1))
    src = os.path.join(tmpdir_path, "python")
    shutil.copytree(os.path.join(source, "python"), src)
    target = os.path.join(tmpdir_path, "site")
    env = dict(os.environ, PKG_CONFIG_PATH=os.path.dirname(pc))
    env.pop("LD_PRELOAD", None)
    r = subprocess.run(["/usr/bin/python3", "-m", "pip", "install", "--no-build-isolation",
                        "--no-index", "--target", target, src],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    libdir = os.path.dirname(glob.glob(os.path.join(root, "**", "libferry.so.0"),
                                       recursive=True)[0])
    r = subprocess.run(["/usr/bin/python3", "-c", "import ferry, sys; print(ferry.__file__, "
                        "ferry.version())"], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=target, LD_LIBRARY_PATH=libdir))
    assert r.returncode == 0 and r.stdout.startswith(target), r.stdout + r.stderr


def test_orders_story_in_python():
    """examples/orders-python/run.py: outbox, relay and inbox with kill -9s
    of the consumer; every order's effect exactly once."""
    source = os.environ["FERRY_SOURCE_ROOT"]
    r = subprocess.run([sys.executable, os.path.join(source, "examples", "orders-python", "run.py"),
                        "--orders", "300", "--rate", "300", "--kills", "3",
                        "--build", os.environ["FERRY_BUILD_ROOT"]],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "exactly once" in r.stdout, r.stdout + r.stderr
