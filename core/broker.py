"""A private MQTT broker: the machine's `mosquitto` if on PATH, else the embedded amqtt broker.

Mosquitto is configured for what our promises need (field-lessons.md): persistence so queued
QoS 1 messages survive a broker restart, and an offline queue large enough for an ingest outage
(`max_queued_messages`).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from core.pgserver import free_port

MOSQUITTO_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {data}/
autosave_interval 10
max_queued_messages 1000000
max_inflight_messages 1000
max_queued_bytes 0
log_dest file {data}/mosquitto.log
"""


def wait_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")
            time.sleep(0.1)


class PrivateBroker:
    def __init__(self, data_dir: Path, port: int | None = None):
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.kind = "mosquitto" if shutil.which("mosquitto") else "amqtt"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.kind == "mosquitto":
            conf = self.data_dir / "mosquitto.conf"
            conf.write_text(MOSQUITTO_CONF.format(port=self.port, data=self.data_dir))
            if os.geteuid() == 0:
                # mosquitto drops to user 'mosquitto' when started as root; let it write its folder
                try:
                    import pwd
                    e = pwd.getpwnam("mosquitto")
                    os.chown(self.data_dir, e.pw_uid, e.pw_gid)
                except KeyError:
                    pass
            self.proc = subprocess.Popen([shutil.which("mosquitto"), "-c", str(conf)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            self.proc = subprocess.Popen([sys.executable, "-m", "core.amqtt_broker", str(self.port)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port("127.0.0.1", self.port)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None
