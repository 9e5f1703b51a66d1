"""ingest/cli.py and ingest/runner.py: `heatdesk status [--json]`, `heatdesk ingest`, and a
protocol whose adapter module is missing is logged, not fatal."""
from __future__ import annotations

import argparse
import json
import logging

import pytest

from adapters.config import parse_devices
from adapters.registry import ADAPTERS
from ingest.cli import register_cli
from ingest.runner import start_adapters
from ingest.status import write_status_file


def parser():
    p = argparse.ArgumentParser()
    register_cli(p.add_subparsers(dest="command"))
    return p


def test_status_json_and_table(fresh_db_url, tmp_path, monkeypatch, capsys):
    import psycopg

    from core.config import get_settings
    monkeypatch.setenv("HEATDESK_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        with psycopg.connect(fresh_db_url) as c:
            c.execute("INSERT INTO device_status (device_id, protocol, connected, last_seen) VALUES ('S01-plc', 'modbus', true, now())")
            c.execute("INSERT INTO ingest_counter (device_id, protocol, minute, readings, rejects) "
                      "VALUES ('S01-plc', 'modbus', date_trunc('minute', now()), 24, 1)")
        write_status_file(tmp_path, {"queue_depth": 3, "unacked": 7, "spool_bytes": 4096, "db_ok": True,
                                     "unacked_by_device": {"S01-plc": 2}})
        args = parser().parse_args(["status", "--json"])
        args.database_url = fresh_db_url
        assert args.func(args) == 0
        st = json.loads(capsys.readouterr().out)
        dev = st["protocols"]["modbus"]["devices"]["S01-plc"]
        assert dev["connected"] is True and dev["readings_last_minute"] == 24 and dev["rejects_last_hour"] == 1
        assert dev["unacked"] == 2 and st["backlog"]["spool_bytes"] == 4096
        args = parser().parse_args(["status"])
        args.database_url = "postgresql://postgres@127.0.0.1:1/none"        # database down: still answers
        assert args.func(args) == 0
        out = capsys.readouterr().out
        assert "database: NOT AVAILABLE" in out and "spool 4096 bytes" in out
    finally:
        get_settings.cache_clear()


def test_missing_adapter_module_is_logged_and_skipped(monkeypatch, caplog):
    cfg = parse_devices("""
version: 1
devices:
  - id: S09-plc
    protocol: modbus
    host: 127.0.0.1
    map: {points: [{name: t, metric: supply_temp_2, address: 0}]}
""")
    monkeypatch.setitem(ADAPTERS, "modbus", "adapters.not_written_yet:ModbusAdapter")
    with caplog.at_level(logging.ERROR):
        started = start_adapters(cfg, None, None)
    assert started == []
    assert "protocol modbus: adapter module not available" in caplog.text and "S09-plc" in caplog.text


def test_ingest_subcommand_is_registered():
    args = parser().parse_args(["ingest"])
    assert callable(args.func)
    with pytest.raises(SystemExit):
        parser().parse_args(["status", "--bogus"])
