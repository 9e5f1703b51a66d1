"""Database access shared by every module: connections, the pool, and schema application.

The pool is created with ``check=ConnectionPool.check_connection`` so that a PostgreSQL restart
is survived cleanly (field-lessons.md, psycopg#709).
"""
from __future__ import annotations

import logging
import select
from contextlib import contextmanager
from typing import Iterator

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from core.config import SCHEMA_FILE

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


def connect(url: str, *, autocommit: bool = False, **kwargs) -> psycopg.Connection:
    """A single connection (jobs, CLI). Dict rows are opt-in via ``row_factory=dict_row``."""
    return psycopg.connect(url, autocommit=autocommit, **kwargs)


def check_idle_socket(conn: psycopg.Connection) -> None:
    """Pool checkout check without a round trip: an idle connection's socket has nothing to read unless
    the server said something — a restart or pg_terminate_backend sends its FATAL and closes — so only
    then is the full check (an empty query) run, which raises and makes the pool replace the connection.
    A connection cut without a word (cable) is not caught here; its first query fails instead. Used by
    the API, where the per-request ping was one of the round trips in the screen-pop latency (issue 4)."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("connection closed")
    readable, _w, _x = select.select([conn.fileno()], [], [], 0)
    if readable:
        ConnectionPool.check_connection(conn)


def make_pool(url: str, *, min_size: int = 1, max_size: int = 8, name: str = "heatdesk",
              open: bool = True, timeout: float = 10.0, cheap_check: bool = False) -> ConnectionPool:
    """A pool whose connections are checked on checkout, so a restarted server is survived
    (``cheap_check``: see check_idle_socket; default the full ping)."""
    return ConnectionPool(url, min_size=min_size, max_size=max_size, name=name, open=open,
                          timeout=timeout, check=check_idle_socket if cheap_check else ConnectionPool.check_connection,
                          kwargs={"autocommit": False})


@contextmanager
def transaction(pool: ConnectionPool) -> Iterator[psycopg.Connection]:
    """Borrow a connection and commit on success / roll back on error."""
    with pool.connection() as conn:
        yield conn


def timescaledb_available(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')").fetchone()
    return bool(row and row[0])


def timescaledb_enabled(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')").fetchone()
    return bool(row and row[0])


def apply_schema(url: str) -> dict:
    """Apply schema.sql idempotently; returns {'version', 'timescaledb'}.

    A transaction-level advisory lock makes concurrent `db init` calls (tests, `heatdesk up`)
    serialise instead of racing on CREATE ... IF NOT EXISTS.
    """
    sql = SCHEMA_FILE.read_text(encoding="utf-8")
    with psycopg.connect(url, autocommit=False) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('heatdesk.schema'))")
        conn.execute(sql)
        conn.commit()
        ts = timescaledb_enabled(conn)
        version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    log.info("schema applied: version %s, timescaledb=%s", version, ts)
    return {"version": version, "timescaledb": ts}


def ensure_database(server_url: str, dbname: str) -> str:
    """Create database `dbname` on the server of `server_url` if missing; return its URL."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(server_url)
    admin = make_conninfo(**{**params, "dbname": params.get("dbname") or "postgres"})
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if not exists:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(dbname)))
    return make_conninfo(**{**params, "dbname": dbname})


def clone_database(server_url: str, template: str, name: str) -> str:
    """CREATE DATABASE name TEMPLATE template (fast: a file copy); returns the new database's URL."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(server_url)
    with psycopg.connect(make_conninfo(**{**params, "dbname": "postgres"}), autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            psycopg.sql.Identifier(name), psycopg.sql.Identifier(template)))
    return make_conninfo(**{**params, "dbname": name})


def drop_database(server_url: str, dbname: str) -> None:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(server_url)
    admin = make_conninfo(**{**params, "dbname": "postgres"})
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg.sql.Identifier(dbname)))


__all__ = ["connect", "make_pool", "transaction", "apply_schema", "ensure_database", "clone_database", "drop_database",
           "timescaledb_available", "timescaledb_enabled", "dict_row", "SCHEMA_VERSION"]
