"""Shared fixtures: real PostgreSQL and a real MQTT broker.

On the CI machine PostgreSQL (127.0.0.1:5432) and Mosquitto (127.0.0.1:1883) already run and are
used; on a fresh machine the fixtures start private ones (core.pgserver / core.broker), so the
README's test command passes anywhere. Every test session works in its own database, created
from a template with the schema applied, so parallel runs never see each other's rows.
Override with HEATDESK_TEST_PG_URL / HEATDESK_TEST_MQTT_URL.
"""
from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import psycopg
import pytest

from core.broker import PrivateBroker
from core.db import apply_schema, clone_database, drop_database, ensure_database
from core.pgserver import PrivatePostgres
from tests.helpers import wait_for  # noqa: F401  (re-exported for tests)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory):
    """URL of a PostgreSQL server (admin database) the tests may create databases on."""
    env = os.environ.get("HEATDESK_TEST_PG_URL")
    if env:
        yield env
        return
    if _reachable("127.0.0.1", 5432):
        url = "postgresql://postgres@127.0.0.1:5432/postgres"
        try:
            with psycopg.connect(url, connect_timeout=3):
                pass
            yield url
            return
        except psycopg.OperationalError:
            pass
    server = PrivatePostgres(tmp_path_factory.mktemp("pg-session"))
    server.start()
    yield server.url
    server.destroy()


@pytest.fixture(scope="session")
def template_db(pg_server_url):
    """A database with the schema applied, used as a template for per-test databases."""
    name = f"hd_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = ensure_database(pg_server_url, name)
    apply_schema(url)
    yield name
    drop_database(pg_server_url, name)


@pytest.fixture(scope="session")
def db_url(pg_server_url, template_db):
    """One database for the whole session (tests that use it must use unique codes/keys)."""
    name = f"hd_s_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = clone_database(pg_server_url, template_db, name)
    yield url
    drop_database(pg_server_url, name)


@pytest.fixture
def fresh_db_url(pg_server_url, template_db):
    """An empty database with the schema, just for this test."""
    name = f"hd_t_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    url = clone_database(pg_server_url, template_db, name)
    yield url
    drop_database(pg_server_url, name)



@pytest.fixture
def db(db_url):
    """A connection to the session database (rolled back at the end unless the test commits)."""
    with psycopg.connect(db_url) as conn:
        yield conn
        conn.rollback()


@pytest.fixture
def private_pg(tmp_path):
    """A private PostgreSQL server this test may stop and restart (fault tests)."""
    server = PrivatePostgres(tmp_path / "pg")
    server.start()
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def mqtt_url(tmp_path_factory):
    env = os.environ.get("HEATDESK_TEST_MQTT_URL")
    if env:
        yield env
        return
    if _reachable("127.0.0.1", 1883):
        yield "mqtt://127.0.0.1:1883"
        return
    broker = PrivateBroker(tmp_path_factory.mktemp("mqtt"))
    broker.start()
    yield broker.url
    broker.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A topic root unique to this test, so tests sharing the broker never see each other."""
    return f"hdtest/{uuid.uuid4().hex[:10]}"


@pytest.fixture
def project_root() -> Path:
    return Path(__file__).resolve().parent.parent
