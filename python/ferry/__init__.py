"""Ferry from Python: publish to and consume from a ferryd broker.

A thin layer over libferry (the C client, through the ``_ferry`` extension),
so the protocol and its semantics have one implementation::

    import ferry

    with ferry.connect("127.0.0.1:7411") as conn:
        ack = conn.publish("orders", b'{"order": 1}', id="order-1")
        print(ack.seq, ack.duplicate)

        for d in conn.subscribe("orders", "inventory"):
            handle(d.payload)
            d.ack()

Every call that waits on the network releases the GIL; a blocking receive
wakes up for signals, so Ctrl-C interrupts it. Errors are ``ferry.Error``
subclasses carrying ``.code``, ``.name`` and ``.detail`` (the broker's own
message). A duplicate publish is not an error: ``Ack.duplicate`` is True and
``Ack.seq`` the original sequence.

``ferry.outbox`` and ``ferry.inbox`` give the transactional outbox and the
idempotent inbox inside a ``sqlite3`` connection's transaction.
"""

from collections import deque
from typing import NamedTuple
import datetime as _dt

from . import _ferry
from . import inbox, outbox  # noqa: E402,F401  (ferry.inbox, ferry.outbox)
from ._ferry import (  # noqa: F401  (re-exported)
    AuthError,
    ConnectError,
    ConnectionLost,
    Delivery,
    Denied,
    Error,
    InvalidArgument,
    MessageTooLarge,
    NotDelivered,
    NotFound,
    StorageError,
    StorageFull,
    Timeout,
    Unsupported,
)

__all__ = [
    "connect", "Connection", "Subscription", "Delivery", "Ack", "PublishError",
    "Error", "AuthError", "ConnectError", "ConnectionLost", "Denied", "InvalidArgument",
    "MessageTooLarge", "NotDelivered", "NotFound", "StorageError", "StorageFull", "Timeout",
    "Unsupported", "EARLIEST", "LATEST", "DEFAULT_SERVER", "version",
]

DEFAULT_SERVER = "127.0.0.1:7411"
EARLIEST = "earliest"
LATEST = "latest"


class Ack(NamedTuple):
    """The broker's acknowledgement: the message is durable at ``seq``."""
    seq: int
    duplicate: bool
    id: str


_ferry._set_ack_type(Ack)  # the extension returns its acks as Ack


class PublishError(Error):
    """Raised by ``Connection.flush`` when some pipelined publishes failed.

    ``results`` holds one item per publish since the previous flush, in
    order: an ``Ack`` or the ``ferry.Error`` that publish met."""

    def __init__(self, results):
        failed = [r for r in results if isinstance(r, Exception)]
        super().__init__(f"{len(failed)} of {len(results)} publishes failed; first: {failed[0]}")
        self.results = results
        self.code = getattr(failed[0], "code", 0)
        self.name = getattr(failed[0], "name", "")
        self.detail = str(failed[0])


def version() -> str:
    """libferry's version."""
    return _ferry.version()


def _ms(value):
    if value is None:
        return 0
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            raise InvalidArgument("deliver_at must be timezone-aware (or Unix ms)")
        return int(value.timestamp() * 1000)
    if isinstance(value, (int, float)):
        return int(value)
    raise TypeError("deliver_at is a datetime or Unix milliseconds")


def _start(start):
    """(mode, value) for a start position: "earliest", "latest", a sequence
    number (int) or a time (aware datetime)."""
    if start is None or start == EARLIEST:
        return _ferry.START_EARLIEST, 0
    if start == LATEST:
        return _ferry.START_LATEST, 0
    if isinstance(start, bool):
        raise TypeError("start is 'earliest', 'latest', a sequence number or a datetime")
    if isinstance(start, int):
        if start < 1:
            raise InvalidArgument("a start sequence is at least 1")
        return _ferry.START_SEQ, start
    if isinstance(start, _dt.datetime):
        return _ferry.START_TIME, _ms(start)
    raise TypeError("start is 'earliest', 'latest', a sequence number or a datetime")


def connect(server=None, *, token=None, client_name=None, connect_timeout_ms=0,
            request_timeout_ms=0, max_in_flight=0):
    """Connects to ferryd at ``server`` ("HOST:PORT"; default 127.0.0.1:7411)
    and returns a ``Connection`` (also a context manager that closes it).

    token: the access token, when the broker has tokens. Timeouts in ms, 0
    for libferry's defaults (5 s to connect, 30 s a request). max_in_flight:
    pipelined publishes awaiting acks (default 1000)."""
    return Connection(_ferry.Conn(server, token, client_name, connect_timeout_ms,
                                  request_timeout_ms, max_in_flight))


class Connection:
    """One connection to ferryd. Use from one thread at a time (calls from
    several threads are serialised)."""

    def __init__(self, conn):
        self._c = conn
        self._queues = {}  # subscription handle -> deque of deliveries for it

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Closes the connection. Pipelined publishes not yet acked fail
        with ConnectionLost; unacked deliveries go back to their groups."""
        self._c.close()

    def publish(self, topic, payload, *, id=None, key=None, headers=None, deliver_at=None) -> Ack:
        """Publishes one message and waits until the broker stored it
        durably. payload: bytes (or str, sent as UTF-8). id: the idempotency
        key (default: the broker assigns one). headers: a dict or a list of
        (name, value) pairs. deliver_at: an aware datetime or Unix ms before
        which it is not delivered."""
        return self._c.publish(topic, payload, id, key, headers,
                               0 if deliver_at is None else _ms(deliver_at))

    def publish_batch(self, messages) -> list:
        """Publishes messages atomically: all are stored or none. Each is a
        dict with the keyword arguments of publish (topic and payload
        required). Returns one Ack per message."""
        tuples = []
        for m in messages:
            if not isinstance(m, dict):
                raise TypeError("publish_batch takes dicts: {'topic': ..., 'payload': ...}")
            unknown = set(m) - {"topic", "payload", "id", "key", "headers", "deliver_at"}
            if unknown:
                raise TypeError(f"unknown message field(s): {sorted(unknown)}")
            tuples.append((m["topic"], m["payload"], m.get("id"), m.get("key"),
                           m.get("headers"), _ms(m.get("deliver_at"))))
        return self._c.publish_batch(tuples)

    def publish_async(self, topic, payload, *, id=None, key=None, headers=None,
                      deliver_at=None):
        """Queues one message without waiting for its ack (pipelined, up to
        max_in_flight unacked). flush() returns the acks."""
        self._c.publish_async(topic, payload, id, key, headers, _ms(deliver_at))

    def flush(self, timeout_ms=-1) -> list:
        """Sends everything queued and waits for every pipelined publish and
        ack. Returns the Acks of the publishes since the previous flush, in
        order; raises PublishError (with .results) if any of them failed."""
        results = self._c.flush(timeout_ms)  # Acks and exceptions
        if any(isinstance(r, Exception) for r in results):
            raise PublishError(results)
        return results

    def in_flight(self) -> int:
        """Pipelined publishes awaiting their ack."""
        return self._c.in_flight()

    def ping(self) -> int:
        """A round trip to the broker; returns it in microseconds."""
        return self._c.ping()

    def subscribe(self, topic, group, *, start=EARLIEST, max_in_flight=0, ack_wait_ms=0,
                  max_deliveries=0) -> "Subscription":
        """Joins consumer group ``group`` of ``topic`` (creating it at
        ``start`` when it is new: "earliest", "latest", a sequence number or
        an aware datetime). max_in_flight: unacked deliveries at once
        (default 100). Returns a Subscription: iterate it for deliveries."""
        mode, value = _start(start)
        s = self._c.subscribe(topic, group, mode, value, max_in_flight, ack_wait_ms,
                              max_deliveries)
        self._queues[s.handle] = deque()
        return Subscription(self, s)

    def receive(self, timeout=None):
        """The next delivery of any subscription on this connection, or None
        after timeout seconds (None: wait for one)."""
        for q in self._queues.values():
            if q:
                return q.popleft()
        return self._c.receive(-1 if timeout is None else int(timeout * 1000))

    def _receive_for(self, sub, timeout):
        q = self._queues.get(sub.handle)
        if q:
            return q.popleft()
        deadline_ms = None if timeout is None else int(timeout * 1000)
        while True:
            d = self._c.receive(-1 if deadline_ms is None else deadline_ms)
            if d is None or d.sub_handle == sub.handle:
                return d
            other = self._queues.get(d.sub_handle)
            if other is not None:
                other.append(d)

    def seek(self, topic, group, to) -> int:
        """Moves the group's cursor to ``to`` ("earliest", "latest", a
        sequence number or an aware datetime); returns the new cursor."""
        mode, value = _start(to)
        return self._c.seek(topic, group, mode, value)

    def group_floor(self, topic, group) -> tuple:
        """``(floor, keep)``: every sequence below ``floor`` is done for the
        group durably (never delivered to it again, but by a seek back),
        except the dead letters a redrive can still bring back, listed in
        ``keep`` (ascending). What ``ferry.inbox.purge_acked`` forgets by."""
        floor, keep = self._c.group_floor(topic, group)
        return floor, keep

    def topics(self) -> list:
        """The broker's topics, as dicts."""
        return self._c.topics()

    def groups(self, topic=None) -> list:
        """The consumer groups (of topic, or of all), as dicts."""
        return self._c.groups(topic)

    def topic_config(self, topic, *, max_age_ms=0, max_count=0, max_bytes=0, delete_acked=None):
        """Sets the topic's retention (0: no limit; delete_acked None: the
        broker's default)."""
        da = -1 if delete_acked is None else int(bool(delete_acked))
        self._c.topic_config(topic, max_age_ms, max_count, max_bytes, da)

    def topic_delete(self, topic, *, force=False) -> dict:
        """Deletes the topic, its dead-letter topic and (force=True) their
        consumer groups, durably; their subscriptions end (their receive
        raises NotFound). A publish to the name afterwards starts a new topic
        at sequence 1. Returns {"messages": n, "groups": n}."""
        return self._c.topic_delete(topic, bool(force))

    def group_delete(self, topic, group) -> dict:
        """Deletes one consumer group of topic, durably; the topic stays.
        Returns {"groups": 1}."""
        return self._c.group_delete(topic, group)

    def server_info(self) -> dict:
        """The limits the broker announced in the handshake."""
        return self._c.server_info()


class Subscription:
    """A subscription to a consumer group: an iterator of Delivery objects
    (blocking until one comes). Each delivery must be acked (d.ack()),
    nacked or left to its lease."""

    def __init__(self, conn, sub):
        self._conn = conn
        self._s = sub
        self.handle = sub.handle

    def __iter__(self):
        return self

    def __next__(self) -> Delivery:
        d = self._conn._receive_for(self, None)
        if d is None:  # cannot happen without a timeout; keeps the type honest
            raise StopIteration
        return d

    def receive(self, timeout=None):
        """The next delivery for this subscription, or None after timeout
        seconds (None: wait)."""
        return self._conn._receive_for(self, timeout)

    def unsubscribe(self):
        """Ends the subscription: its unacked messages go back to the group."""
        self._s.unsubscribe()
        self._conn._queues.pop(self.handle, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.unsubscribe()
