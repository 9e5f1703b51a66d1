"""The API pool's checkout check (core.db.check_idle_socket) against a real PostgreSQL: no round trip for
a healthy idle connection, and a connection the server ended is replaced before a request gets it."""
from __future__ import annotations

import psycopg
import pytest

from core.db import make_pool
from tests.helpers import wait_for


def _last_query(url: str, pid: int) -> str:
    with psycopg.connect(url, autocommit=True) as admin:
        return admin.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0]


def test_server_ended_connection_is_replaced_on_checkout(fresh_db_url):
    pool = make_pool(fresh_db_url, min_size=1, max_size=1, name="t-cheap", cheap_check=True)
    try:
        with pool.connection() as conn:
            pid = conn.info.backend_pid
        with pool.connection() as conn:
            assert conn.info.backend_pid == pid              # healthy: the same connection comes back
        with psycopg.connect(fresh_db_url, autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
            wait_for(lambda: admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() is None,
                     10, message="terminated backend gone")
        with pool.connection() as conn:                     # not handed out broken: a new backend
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert conn.info.backend_pid != pid
    finally:
        pool.close()


@pytest.mark.parametrize("cheap, pinged", [(True, False), (False, True)])
def test_checkout_ping_only_without_cheap_check(fresh_db_url, cheap, pinged):
    pool = make_pool(fresh_db_url, min_size=1, max_size=1, name="t-cheap2", cheap_check=cheap)
    try:
        with pool.connection() as conn:
            conn.execute("SELECT 1")
            pid = conn.info.backend_pid
        assert _last_query(fresh_db_url, pid) == "COMMIT"
        with pool.connection() as conn:                     # checkout + return, no statement of ours
            assert conn.info.backend_pid == pid
        assert (_last_query(fresh_db_url, pid) != "COMMIT") is pinged
    finally:
        pool.close()
