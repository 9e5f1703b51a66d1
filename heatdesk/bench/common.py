"""What every benchmark needs: a PostgreSQL server to create its private database on."""
from __future__ import annotations

import tempfile
from pathlib import Path

import psycopg

from core.db import connect
from core.pgserver import PrivatePostgres

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def server_url(args, *, prefix: str = "hd-bench-pg-") -> tuple[str, PrivatePostgres | None]:
    """--database-url / HEATDESK_DATABASE_URL if given; else, with ``--pg-shared-buffers SIZE``, a private
    server with that shared_buffers (see tuned_server); else the machine's PostgreSQL on 127.0.0.1:5432;
    else a private server started for the run. The caller ends a returned server with ``release``."""
    if getattr(args, "database_url", None):
        return args.database_url, None
    if getattr(args, "pg_shared_buffers", None):
        server = tuned_server(args.pg_shared_buffers, keep=bool(getattr(args, "keep_db", False)), prefix=prefix)
        return server.url, server
    try:
        with connect(LOCAL_SERVER, connect_timeout=3):
            return LOCAL_SERVER, None
    except psycopg.OperationalError:
        server = PrivatePostgres(Path(tempfile.mkdtemp(prefix=prefix)))
        server.start()
        return server.url, server


def tuned_server(shared_buffers: str, *, keep: bool, prefix: str = "hd-bench-pg-") -> PrivatePostgres:
    """A private PostgreSQL with ``shared_buffers`` (e.g. ``6GB``) and effective_cache_size to match.

    Why: the machine's PostgreSQL keeps the stock 128 MB, and the virtual machines this project is
    measured on give back page cache to their host continuously (measured: 3 GB of freshly written file
    cache shrank by ~20–40 MB/s), so a 14 GB city is read from disk whatever the RAM. A server sized for
    its data, as PostgreSQL's documentation suggests (shared_buffers about 25 % of RAM), is what a
    deployment runs. With ``keep`` the server's folder is ``<data_dir>/bench-pg`` (the size is a start-up
    setting) and is stopped, not destroyed, by ``release`` — a kept city survives for the next run.
    """
    from core.config import get_settings

    settings = {"shared_buffers": shared_buffers, "effective_cache_size": shared_buffers,
                "max_wal_size": "8GB", "checkpoint_timeout": "30min"}
    folder = Path(get_settings().data_dir) / "bench-pg" if keep else Path(tempfile.mkdtemp(prefix=prefix))
    server = PrivatePostgres(folder, settings=settings)
    server.keep = keep
    server.start()
    return server


def release(server: PrivatePostgres | None) -> None:
    """Stop a kept server (its data stays), destroy any other."""
    if server is None:
        return
    if getattr(server, "keep", False):
        server.stop()
    else:
        server.destroy()


def prewarm(url: str, budget_bytes: int, skip: tuple[str, ...] = ()) -> dict:
    """Load the database's indexes, then its tables, smallest first, into shared_buffers (pg_prewarm)
    until ``budget_bytes``; relations in ``skip`` are left out (e.g. a heap that index-only scans never
    read). A restarted server starts with empty buffers, and a server that has run for a while has its
    working set in them; PostgreSQL's own answer is pg_prewarm (autoprewarm after a restart). Returns
    what was loaded, for the report."""
    loaded = relations = 0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        rels = conn.execute("""SELECT c.oid::regclass::text, pg_relation_size(c.oid)
                                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
                                  AND c.relkind IN ('r', 'i', 'm') AND pg_relation_size(c.oid) > 0
                                ORDER BY c.relkind = 'r', pg_relation_size(c.oid)""").fetchall()
        for name, size in rels:
            if name in skip or loaded + size > budget_bytes:
                continue
            conn.execute("SELECT pg_prewarm(%s::regclass)", (name,))
            loaded += size
            relations += 1
    return {"prewarmed_mb": round(loaded / 2**20), "prewarmed_relations": relations}
