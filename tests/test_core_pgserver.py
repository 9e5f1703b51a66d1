"""core/pgserver.PrivatePostgres with server settings (the benchmarks' tuned server)."""
from __future__ import annotations

import psycopg
import pytest

from core.pgserver import PrivatePostgres


def test_private_server_applies_its_settings(tmp_path):
    server = PrivatePostgres(tmp_path / "pg", settings={"shared_buffers": "48MB", "work_mem": "8MB"})
    server.start()
    try:
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SHOW shared_buffers").fetchone()[0] == "48MB"
            assert conn.execute("SHOW work_mem").fetchone()[0] == "8MB"
    finally:
        server.destroy()


@pytest.mark.parametrize("settings", [{"shared_buffers": "1GB -c fsync=off"}, {"shared buffers": "1GB"},
                                      {"work_mem": "8MB'"}])
def test_settings_cannot_smuggle_options(tmp_path, settings):
    with pytest.raises(ValueError, match="letters, digits"):
        PrivatePostgres(tmp_path / "pg", settings=settings)
