"""The idempotent inbox from Python, for a ``sqlite3`` connection.

A consumer claims each message id in its own database, in the same
transaction as the effect of handling it (docs/INBOX.md): a redelivery
(after a crash between the commit and the ack) finds the claim, skips the
work and acks again, so the effect happens once::

    for d in conn.subscribe("orders", "inventory"):
        with ferry.inbox.handle(db, "inventory", d) as fresh:
            if fresh:
                db.execute("UPDATE stock SET n = n - 1 WHERE item = ?", (item,))
        # committed, then acked; a redelivery is acked without the UPDATE
"""
import contextlib
import time

from . import _ferry

__all__ = ["install", "claim", "handle", "purge"]


def install(path):
    """Creates the inbox tables in the SQLite database file at ``path`` when
    missing (libferry's ferry_inbox_install; idempotent)."""
    _ferry.inbox_install(path)


def claim(db, group, delivery) -> bool:
    """Claims ``delivery``'s message id for ``group`` inside ``db``'s open
    transaction: True when it is fresh (recorded now: apply the effect in
    the same transaction), False when it was processed before (skip)."""
    cur = db.execute(
        "INSERT INTO ferry_inbox(grp, msg_id, topic, seq, processed_ms) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (grp, msg_id) DO NOTHING",
        (group, delivery.id, delivery.topic, delivery.seq, int(time.time() * 1000)))
    return cur.rowcount == 1


@contextlib.contextmanager
def handle(db, group, delivery, *, ack=True):
    """Begins an IMMEDIATE transaction on ``db``, claims the delivery and
    yields whether it is fresh. On a normal exit commits (a seen claim:
    rolls back, there is nothing to keep) and then acks the delivery; on an
    exception rolls back and does not ack, so the message comes again."""
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


def purge(db, older_than_ms, max_rows=10000) -> int:
    """Deletes up to max_rows claims processed more than older_than_ms ago
    (see docs/INBOX.md for the window that is safe); returns how many."""
    cutoff = int(time.time() * 1000) - int(older_than_ms)
    cur = db.execute(
        "DELETE FROM ferry_inbox WHERE (grp, msg_id) IN (SELECT grp, msg_id FROM ferry_inbox "
        "WHERE processed_ms < ? ORDER BY processed_ms LIMIT ?)", (cutoff, max_rows))
    return cur.rowcount
