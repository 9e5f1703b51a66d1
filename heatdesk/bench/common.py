"""What every benchmark needs: a PostgreSQL server to create its private database on."""
from __future__ import annotations

import tempfile
from pathlib import Path

import psycopg

from core.db import connect
from core.pgserver import PrivatePostgres

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def server_url(args, *, prefix: str = "hd-bench-pg-") -> tuple[str, PrivatePostgres | None]:
    """--database-url / HEATDESK_DATABASE_URL if given, else the machine's PostgreSQL on
    127.0.0.1:5432, else a private server started for the run (the caller destroys it)."""
    if getattr(args, "database_url", None):
        return args.database_url, None
    try:
        with connect(LOCAL_SERVER, connect_timeout=3):
            return LOCAL_SERVER, None
    except psycopg.OperationalError:
        server = PrivatePostgres(Path(tempfile.mkdtemp(prefix=prefix)))
        server.start()
        return server.url, server
