"""The transactional outbox from Python, for a ``sqlite3`` connection or a
psycopg 3 connection to PostgreSQL.

The outbox is a table in the application's own database (docs/OUTBOX.md):
a row inserted in the same transaction as the business write is published
by the relay (``ferry relay --db PATH``) once that transaction commits, and
exactly once as far as consumers can tell (the row's message id is the
idempotency key). ``put`` writes that row; it never commits::

    with db:                               # one transaction
        db.execute("INSERT INTO orders ...")
        ferry.outbox.put(db, "orders", b'{"order": 1}', id="order-1")

With psycopg (the outbox in a Postgres schema, default ``ferry``; relayed
by ``ferry relay --pg URL``)::

    with pg.transaction():
        pg.execute("INSERT INTO orders ...")
        ferry.outbox.put(pg, "orders", b'{"order": 1}', id="order-1")
"""
import json

from . import _ferry
from ._ferry import InvalidArgument
from ._pg import is_psycopg, pgconn_ptr, schema_ident

__all__ = ["install", "put"]


def install(path, *, schema=None):
    """Creates the outbox tables when they are missing (idempotent): in the
    SQLite database file at ``path`` (libferry's ferry_outbox_install;
    returns the database's producer id), or, when ``path`` is a psycopg
    connection with no transaction open, in ``schema`` of its database
    (ferry_pg_outbox_install, as ``ferry relay --pg URL --install``)."""
    if is_psycopg(path):
        _ferry.pg_install("outbox", pgconn_ptr(path), schema)
        return None
    return _ferry.outbox_install(path)


def _headers_json(headers):
    if headers is None:
        return None
    pairs = headers.items() if isinstance(headers, dict) else headers
    obj = {}
    for name, value in pairs:
        if not isinstance(name, str):
            raise TypeError("a header name is a str")
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if not isinstance(value, str):
            raise TypeError("an outbox header value is str (or UTF-8 bytes)")
        if name in obj:
            raise InvalidArgument(f"header {name!r} given twice (the outbox keeps one per name)")
        obj[name] = value
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def put(db, topic, payload, *, id=None, key=None, headers=None, deliver_at_ms=0, schema=None):
    """Inserts one outbox row in ``db``'s current transaction (a
    ``sqlite3.Connection``: one is begun if none is open, and is never
    committed here; or a psycopg 3 connection: the row goes into
    ``schema``.outbox, default ``ferry``, in the transaction open on it, or
    on its own on an autocommit connection outside ``transaction()``).
    Returns the row's message id (the one given, or the generated one). The
    table's constraints refuse a bad topic, id or headers at once
    (sqlite3.IntegrityError, psycopg.errors.CheckViolation)."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError("payload must be bytes-like or str")
    if isinstance(key, str):
        key = key.encode("utf-8")
    cols = ["topic", "payload", "key", "headers", "deliver_at_ms"]
    vals = [topic, bytes(payload), key, _headers_json(headers), int(deliver_at_ms)]
    if id is not None:
        cols.append("msg_id")
        vals.append(id)
    if is_psycopg(db):
        return db.execute(
            f"INSERT INTO {schema_ident(schema)}.outbox({', '.join(cols)}) "
            f"VALUES ({', '.join(['%s'] * len(cols))}) RETURNING msg_id", vals).fetchone()[0]
    row = db.execute(
        f"INSERT INTO ferry_outbox({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
        "RETURNING msg_id", vals).fetchone()
    return row[0]
