"""What the outbox and the inbox need to tell a psycopg connection from a
sqlite3 one, and to name a Postgres schema safely. psycopg is imported only
by the application: nothing here needs it installed."""
import re

from ._ferry import InvalidArgument

_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,49}$")


def is_psycopg(conn) -> bool:
    """True for a psycopg 3 connection (psycopg.Connection or a subclass)."""
    return any(c.__module__.split(".")[0] == "psycopg" for c in type(conn).__mro__)


def schema_ident(schema) -> str:
    """The schema's name checked as libferry checks it (1-50 of [a-z0-9_],
    starting with a letter or '_', not pg_...); None means "ferry"."""
    s = "ferry" if schema is None else schema
    if not isinstance(s, str) or not _SCHEMA.match(s) or s.startswith("pg_"):
        raise InvalidArgument(f"schema {s!r}: 1-50 of [a-z0-9_], starting with a letter or '_'")
    return s


def pgconn_ptr(conn) -> int:
    """The address of the connection's libpq PGconn, for libferry."""
    return conn.pgconn.pgconn_ptr


def in_transaction(conn) -> bool:
    """True while a transaction is open on the psycopg connection."""
    return conn.info.transaction_status != 0  # pq.TransactionStatus.IDLE
