"""`heatdesk up`: the whole system on one machine, from nothing but Python.

Order matters and is the data flow: database (private PostgreSQL unless HEATDESK_DATABASE_URL) →
schema → broker (machine's mosquitto or embedded amqtt, unless HEATDESK_MQTT_URL) → city
households imported → ingest → scheduled jobs → simulators (MQTT, Modbus TCP, OPC UA servers) →
API and pages. Every long-running part is a child process with its own log file under
.heatdesk/logs/; Ctrl-C stops them in reverse order and then the private servers.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from core.broker import PrivateBroker
from core.config import PROJECT_ROOT, get_settings
from core.db import apply_schema, ensure_database
from core.pgserver import PrivatePostgres, free_port
from core.pii import new_key_hex


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _pick_port(preferred: int) -> int:
    return preferred if _port_free(preferred) else free_port()


def load_or_create_secrets(data_dir: Path) -> dict[str, str]:
    """Keys for field encryption and API tokens: from the environment, else generated once into
    .heatdesk/secrets.json (mode 600). Never in the repository."""
    settings = get_settings()
    path = data_dir / "secrets.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    secrets = {
        "HEATDESK_FIELD_KEY_HEX": settings.field_key_hex or stored.get("HEATDESK_FIELD_KEY_HEX") or new_key_hex(),
        "HEATDESK_TOKEN_SECRET": settings.token_secret or stored.get("HEATDESK_TOKEN_SECRET") or os.urandom(32).hex(),
    }
    if secrets != stored:
        path.write_text(json.dumps(secrets))
        path.chmod(0o600)
    return secrets


@dataclass
class Supervisor:
    log_dir: Path
    env: dict[str, str]
    children: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=self.env, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.children.append((name, proc))
        return proc

    def dead(self) -> list[tuple[str, int]]:
        return [(n, p.returncode) for n, p in self.children if p.poll() is not None]

    def stop_all(self) -> None:
        for name, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for name, proc in reversed(self.children):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()

    def tail(self, name: str, lines: int = 20) -> str:
        f = self.log_dir / f"{name}.log"
        return "\n".join(f.read_text(errors="replace").splitlines()[-lines:]) if f.exists() else ""


def _wait_http(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def _wait_mqtt_session(db_url: str, timeout: float, sup: "Supervisor") -> bool:
    """True once every MQTT device of ingest has reported `connected` in device_status."""
    from adapters.config import load_devices
    from core.db import connect

    mqtt_ids = [d.id for d in load_devices(get_settings().devices_file, env=sup.env).by_protocol("mqtt")]
    if not mqtt_ids:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sup.dead():
            return False
        with connect(db_url) as conn:
            n = conn.execute("SELECT count(*) FROM device_status WHERE device_id = ANY(%s) AND connected",
                             (mqtt_ids,)).fetchone()[0]
        if n == len(mqtt_ids):
            return True
        time.sleep(0.3)
    return False


def run_up(args: argparse.Namespace) -> int:
    settings = get_settings()
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    pg: PrivatePostgres | None = None
    broker: PrivateBroker | None = None
    sup: Supervisor | None = None

    def say(msg: str) -> None:
        print(f"[heatdesk up] {msg}", flush=True)

    stop = {"flag": False}

    def on_signal(signum, frame):  # noqa: ARG001
        stop["flag"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    try:
        # 1. database
        if settings.database_url:
            db_url = settings.database_url
            say(f"database: {db_url} (HEATDESK_DATABASE_URL)")
        else:
            pg = PrivatePostgres(data_dir / "pg")
            say(f"starting private PostgreSQL ({pg.bin}) in {pg.pgdata} …")
            pg.start()
            db_url = ensure_database(pg.url, "heatdesk")
            say(f"database: {pg.url_for('heatdesk')}")
        (data_dir / "database_url").write_text(db_url)
        info = apply_schema(db_url)
        say(f"schema version {info['version']} on "
            f"{'TimescaleDB' if info['timescaledb'] else 'plain PostgreSQL (TimescaleDB not installed)'}")

        # 2. broker
        extra_env: dict[str, str] = {}
        if settings.mqtt_url:
            mqtt_url = settings.mqtt_url
            say(f"MQTT broker: {mqtt_url} (HEATDESK_MQTT_URL)")
        else:
            broker = PrivateBroker(data_dir / "mqtt", port=_pick_port(18830))
            broker.start()
            mqtt_url = broker.url
            say(f"MQTT broker: {broker.kind} at {mqtt_url}")
            if broker.kind == "amqtt":      # amqtt speaks MQTT 3.1.1 only
                extra_env["HEATDESK_MQTT_PROTOCOL"] = "3.1.1"

        secrets = load_or_create_secrets(data_dir)
        modbus_port = _pick_port(15020)
        opcua_port = _pick_port(14840)
        api_port = args.port or _pick_port(settings.api_port)
        env = dict(os.environ, **secrets,
                   HEATDESK_DATABASE_URL=db_url, HEATDESK_MQTT_URL=mqtt_url,
                   HEATDESK_MODBUS_PORT=str(modbus_port), HEATDESK_OPCUA_PORT=str(opcua_port),
                   HEATDESK_DATA_DIR=str(data_dir), HEATDESK_DEMO="1", PYTHONUNBUFFERED="1", **extra_env)
        sup = Supervisor(data_dir / "logs", env)

        # 3. the city: households and official weather first, so sensors link on arrival
        if not args.no_simulators:
            csv_path, weather_path = data_dir / "households.csv", data_dir / "weather.csv"
            gen = [py, "-m", "simulators", "--seed", str(args.seed), "--export-csv", str(csv_path),
                   "--export-weather", str(weather_path), "--export-only"]
            if args.households:
                gen += ["--households", str(args.households)]
            if args.scenario:  # the official weather must carry the scenario's cold snap (R6 exemption)
                gen += ["--scenario", args.scenario]
            subprocess.run(gen, cwd=PROJECT_ROOT, env=env, check=True)
            _import_city(db_url, csv_path, weather_path, secrets["HEATDESK_FIELD_KEY_HEX"], say)

        # 4. ingest, scheduled jobs, simulators, API
        sup.start("ingest", [py, "-m", "ingest"])
        sup.start("jobs", [py, "-m", "heatdesk.jobs"])
        if not args.no_simulators:
            # On a first start the broker has no session for ingest yet: anything published before
            # ingest subscribes would be dropped. Wait until its MQTT client is connected.
            if not _wait_mqtt_session(db_url, 60, sup):
                say("ingest did not connect to the broker; its log:\n" + sup.tail("ingest"))
                return 1
            sim = [py, "-m", "simulators", "--seed", str(args.seed), "--mqtt-url", mqtt_url,
                   "--modbus-port", str(modbus_port), "--opcua-port", str(opcua_port),
                   "--backfill-days", str(args.backfill_days), "--speed", str(args.speed)]
            if args.households:
                sim += ["--households", str(args.households)]
            if args.scenario:
                sim += ["--scenario", args.scenario]
            sup.start("simulators", sim)
        sup.start("api", [py, "-m", "uvicorn", "api.app:create_app", "--factory", "--host", settings.api_host,
                          "--port", str(api_port), "--log-level", "warning"])
        base = f"http://{settings.api_host}:{api_port}"
        if not _wait_http(f"{base}/healthz", 60):
            say("the API did not come up; its log:\n" + sup.tail("api"))
            return 1

        print(f"""
heatdesk is running.
  客服工作台 agent console      {base}/ui/agent
  换热站看板 substations        {base}/ui/substations
  调度/主管 supervisor          {base}/ui/supervisor
  维修员 technician             {base}/ui/technician
  用户自助 customer             {base}/ui/customer
  API docs (OpenAPI)           {base}/docs
  metrics                      {base}/metrics
  database                     {db_url}
  MQTT broker                  {mqtt_url}
  Modbus TCP simulator         127.0.0.1:{modbus_port}   OPC UA simulator  opc.tcp://127.0.0.1:{opcua_port}/heatdesk/
  logs                         {sup.log_dir}/
Demo logins (HEATDESK_DEMO=1): see README "Demo users". In another shell: `heatdesk status`.
Ctrl-C stops everything.
""", flush=True)
        started = time.monotonic()
        while not stop["flag"]:
            dead = sup.dead()
            if dead:
                for name, code in dead:
                    say(f"{name} exited with code {code}; last lines:\n{sup.tail(name)}")
                return 1
            if args.exit_after is not None and time.monotonic() - started > args.exit_after:
                break
            time.sleep(0.5)
        say("stopping …")
        return 0
    finally:
        if sup:
            sup.stop_all()
        if broker:
            broker.stop()
        if pg:
            pg.stop()
        print("[heatdesk up] stopped.", flush=True)


def _import_city(db_url: str, csv_path: Path, weather_path: Path, key_hex: str, say) -> None:
    from core.db import connect
    from core.pii import FieldCipher
    from ingest.households import import_households
    from ingest.weather import import_weather

    with connect(db_url) as conn:
        summary = import_households(conn, csv_path, FieldCipher(key_hex))
        conn.commit()
        say(f"households imported: {summary}")
        if weather_path.exists():
            wsum = import_weather(conn, weather_path)
            conn.commit()
            say(f"official weather imported: {wsum}")
