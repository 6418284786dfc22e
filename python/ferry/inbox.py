"""The idempotent inbox from Python, for a ``sqlite3`` connection or a
psycopg 3 connection to PostgreSQL.

A consumer claims each message id in its own database, in the same
transaction as the effect of handling it (docs/INBOX.md): a redelivery
(after a crash between the commit and the ack) finds the claim, skips the
work and acks again, so the effect happens once::

    for d in conn.subscribe("orders", "inventory"):
        with ferry.inbox.handle(db, "inventory", d) as fresh:
            if fresh:
                db.execute("UPDATE stock SET n = n - 1 WHERE item = ?", (item,))
        # committed, then acked; a redelivery is acked without the UPDATE

The same with psycopg (the claims in ``schema``.inbox, default ``ferry``;
``install(pg)`` creates it)::

        with ferry.inbox.handle(pg, "inventory", d) as fresh:
            if fresh:
                pg.execute("UPDATE stock SET n = n - 1 WHERE item = %s", (item,))
"""
import contextlib
import json
import time

from . import _ferry
from ._pg import in_transaction, is_psycopg, pgconn_ptr, schema_ident

__all__ = ["install", "claim", "handle", "purge", "purge_acked"]


def install(path, *, schema=None):
    """Creates the inbox tables when missing (idempotent): in the SQLite
    database file at ``path`` (libferry's ferry_inbox_install), or, when
    ``path`` is a psycopg connection with no transaction open, in
    ``schema`` of its database (ferry_pg_inbox_install)."""
    if is_psycopg(path):
        _ferry.pg_install("inbox", pgconn_ptr(path), schema)
        return
    _ferry.inbox_install(path)


def claim(db, group, delivery, *, schema=None) -> bool:
    """Claims ``delivery``'s message id for ``group`` inside ``db``'s open
    transaction: True when it is fresh (recorded now: apply the effect in
    the same transaction), False when it was processed before (skip). On
    psycopg a transaction must be open (``with pg.transaction():``, or a
    connection that is not autocommit); a concurrent claim of the same
    message waits for the first one's end."""
    if is_psycopg(db):
        if not in_transaction(db):
            raise _ferry.InvalidArgument("inbox.claim runs in the caller's transaction: begin one")
        cur = db.execute(
            f"INSERT INTO {schema_ident(schema)}.inbox (grp, msg_id, topic, seq) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (grp, msg_id) DO NOTHING",
            (group, delivery.id, delivery.topic, delivery.seq))
        return cur.rowcount == 1
    cur = db.execute(
        "INSERT INTO ferry_inbox(grp, msg_id, topic, seq, processed_ms) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (grp, msg_id) DO NOTHING",
        (group, delivery.id, delivery.topic, delivery.seq, int(time.time() * 1000)))
    return cur.rowcount == 1


@contextlib.contextmanager
def handle(db, group, delivery, *, ack=True, schema=None):
    """Begins a transaction on ``db`` (IMMEDIATE on SQLite), claims the
    delivery and yields whether it is fresh. On a normal exit commits (a
    seen claim: rolls back, there is nothing to keep) and then acks the
    delivery; on an exception rolls back and does not ack, so the message
    comes again. No transaction may be open on ``db``."""
    if is_psycopg(db):
        if in_transaction(db):
            raise _ferry.InvalidArgument("inbox.handle begins its own transaction: commit first")
        with db.transaction():
            fresh = claim(db, group, delivery, schema=schema)
            yield fresh
        if ack:
            delivery.ack()
        return
    if db.in_transaction:
        raise _ferry.InvalidArgument("inbox.handle begins its own transaction: commit first")
    db.execute("BEGIN IMMEDIATE")
    try:
        fresh = claim(db, group, delivery)
        yield fresh
    except BaseException:
        db.rollback()
        raise
    if fresh:
        db.commit()
    else:
        db.rollback()
    if ack:
        delivery.ack()


def purge(db, older_than_ms, max_rows=10000, *, schema=None) -> int:
    """Deletes up to max_rows claims processed more than older_than_ms ago
    (see docs/INBOX.md for the window that is safe); returns how many."""
    if is_psycopg(db):
        s = schema_ident(schema)
        cur = db.execute(
            f"DELETE FROM {s}.inbox WHERE (grp, msg_id) IN (SELECT grp, msg_id FROM {s}.inbox "
            "WHERE processed_ms < (extract(epoch from clock_timestamp()) * 1000)::bigint - %s "
            "ORDER BY processed_ms LIMIT %s)", (int(older_than_ms), int(max_rows)))
        return cur.rowcount
    cutoff = int(time.time() * 1000) - int(older_than_ms)
    cur = db.execute(
        "DELETE FROM ferry_inbox WHERE (grp, msg_id) IN (SELECT grp, msg_id FROM ferry_inbox "
        "WHERE processed_ms < ? ORDER BY processed_ms LIMIT ?)", (cutoff, max_rows))
    return cur.rowcount


def purge_acked(db, group, conn, topic, *, consumer_group=None, max_rows=10000, schema=None) -> int:
    """The bounded purge by the broker's floor (docs/INBOX.md, "Keeping the
    inbox small"): asks the broker over ``conn`` (one round trip) for the
    floor of consumer group ``consumer_group`` (default: ``group``) on
    ``topic`` and deletes ``group``'s claims of that topic below it, except
    those of dead letters a redrive can still bring back; at most
    ``max_rows``, lowest sequences first. Returns how many. Call it every
    so often from the consumer's loop, and ``purge`` with the window too."""
    floor, keep = conn.group_floor(topic, consumer_group or group)
    if is_psycopg(db):
        cur = db.execute(
            f"DELETE FROM {schema_ident(schema)}.inbox WHERE (grp, msg_id) IN ("
            f"SELECT grp, msg_id FROM {schema_ident(schema)}.inbox WHERE grp = %s AND topic = %s"
            " AND seq < %s AND seq <> ALL (%s::bigint[]) ORDER BY seq LIMIT %s)",
            (group, topic, floor, keep, int(max_rows)))
        return cur.rowcount
    cur = db.execute(
        "DELETE FROM ferry_inbox WHERE grp = ?1 AND msg_id IN (SELECT msg_id FROM ferry_inbox "
        "WHERE grp = ?1 AND topic = ?2 AND seq < ?3 AND seq NOT IN (SELECT value FROM json_each(?4))"
        " ORDER BY seq LIMIT ?5)", (group, topic, floor, json.dumps(keep), int(max_rows)))
    return cur.rowcount
