"""On-disk spool for polled data (Modbus, OPC UA) while the database is down.

A polled reading has no upstream that keeps it: if we do not store it, it is gone. So while
PostgreSQL is unreachable, ingest appends such deliveries here, fsyncs, and only then acks them;
after recovery it replays the records in order and deletes a segment only after the transaction
holding its last record has committed (field-lessons.md: "we buffer durably (bounded, on disk,
visible as a metric)").

Format: append-only segment files ``seg-<12-digit seq>.spool``, each a run of frames
``[u32 length][u32 crc32(payload)][payload]`` (big endian). A frame whose length runs past the end
of the file is a torn write (the process died inside append, before the fsync that precedes the
ack, so nothing acked is lost); a frame whose CRC does not match is corruption. Either way the rest
of that segment is moved aside to ``<segment>.corrupt`` (never silently deleted) and replay goes on
with the next segment.

Bound: ``max_bytes``. ``has_room()`` tells the ingest thread whether to take more polled data; when
it is False the thread stops taking it and the submitters block on ingest's bounded queue —
backpressure, never a drop.
"""
from __future__ import annotations

import base64
import logging
import os
import struct
import threading
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson

from adapters.base import Delivery, DeviceEvent, Reading, Rejection, SensorMeta
from core.quality import Quality

log = logging.getLogger(__name__)

_FRAME = struct.Struct(">II")
MAX_RECORD = 256 * 1024 * 1024


class SpoolError(Exception):
    pass


class Spool:
    def __init__(self, directory: Path | str, max_bytes: int, *, segment_bytes: int = 16 * 1024 * 1024):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._fh = None
        self._active: Path | None = None
        self._active_size = 0
        segs = self.segments(include_active=True)
        self._seq = max((int(p.stem.split("-")[1]) for p in segs), default=0)
        self._bytes = sum(p.stat().st_size for p in segs)
        self.corrupt_bytes = sum(p.stat().st_size for p in self.dir.glob("*.corrupt"))

    # -- size ----------------------------------------------------------------------------------------
    @property
    def bytes(self) -> int:
        return self._bytes

    def has_room(self) -> bool:
        return self._bytes < self.max_bytes

    def __bool__(self) -> bool:      # "is there anything to replay?"
        return self._bytes > 0

    # -- writing -------------------------------------------------------------------------------------
    def append(self, payload: bytes) -> None:
        """Durably append one record (fsync before returning). May overshoot max_bytes by one record."""
        if len(payload) > MAX_RECORD:
            raise SpoolError(f"spool record of {len(payload)} bytes exceeds {MAX_RECORD}")
        frame = _FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            if self._fh is None or self._active_size >= self.segment_bytes:
                self._roll()
            self._fh.write(frame)
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._active_size += len(frame)
            self._bytes += len(frame)

    def _roll(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._seq += 1
        self._active = self.dir / f"seg-{self._seq:012d}.spool"
        self._fh = open(self._active, "ab")
        self._active_size = 0
        _fsync_dir(self.dir)              # the new file's directory entry must survive a crash too

    def seal(self) -> None:
        """Close the active segment so replay can read it; the next append starts a new one."""
        with self._lock:
            if self._fh is not None:
                self._fh.close()
            self._fh, self._active, self._active_size = None, None, 0

    # -- replay --------------------------------------------------------------------------------------
    def segments(self, include_active: bool = False) -> list[Path]:
        segs = sorted(self.dir.glob("seg-*.spool"))
        if not include_active and self._active is not None:
            segs = [p for p in segs if p != self._active]
        return segs

    def read_segment(self, path: Path) -> list[bytes]:
        """All intact records of a sealed segment, in order. A torn or corrupt tail is moved aside."""
        data = path.read_bytes()
        out: list[bytes] = []
        pos = 0
        while pos < len(data):
            if len(data) - pos < _FRAME.size:
                self._quarantine(path, data, pos, "torn frame header")
                break
            n, crc = _FRAME.unpack_from(data, pos)
            start, end = pos + _FRAME.size, pos + _FRAME.size + n
            if end > len(data):
                self._quarantine(path, data, pos, f"frame of {n} bytes runs past the end (torn write)")
                break
            payload = data[start:end]
            if zlib.crc32(payload) != crc:
                self._quarantine(path, data, pos, "CRC mismatch")
                break
            out.append(payload)
            pos = end
        return out

    def _quarantine(self, path: Path, data: bytes, pos: int, why: str) -> None:
        bad = path.with_suffix(path.suffix + ".corrupt")
        with open(bad, "ab") as fh:
            fh.write(data[pos:])
            fh.flush()
            os.fsync(fh.fileno())
        with open(path, "r+b") as fh:
            fh.truncate(pos)
            fh.flush()
            os.fsync(fh.fileno())
        with self._lock:
            self._bytes -= len(data) - pos
            self.corrupt_bytes += len(data) - pos
        log.error("spool %s: %s at byte %d; %d bytes moved to %s (records before it are replayed)",
                  path.name, why, pos, len(data) - pos, bad.name)

    def remove(self, path: Path) -> None:
        """Delete a replayed segment — only after its records are committed."""
        size = path.stat().st_size
        path.unlink()
        _fsync_dir(self.dir)
        with self._lock:
            self._bytes -= size

    def close(self) -> None:
        self.seal()


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -------------------------------------------------------------------------------------------------
# Record codec: deliveries (already through the quality stage) and device events ↔ bytes.

_META_FIELDS = ("metric", "unit", "protocol", "device_id", "point", "household_code", "room_code",
                "substation_code", "weather_station_code")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _us(ts: datetime) -> int:
    d = ts - _EPOCH
    return (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def encode_record(deliveries: list[Delivery], events: list[DeviceEvent] = ()) -> bytes:
    metas: dict[SensorMeta, int] = {}
    rows = []
    for d in deliveries:
        for r in d.readings:
            mi = metas.get(r.meta)
            if mi is None:
                mi = metas[r.meta] = len(metas)
            rows.append((r.sensor, _us(r.ts), r.value, int(r.quality), mi))
    rejects = [(j.source, j.device_id, j.address, base64.b64encode(bytes(j.payload)).decode(), j.reason, j.detail)
               for d in deliveries for j in d.rejects]
    evs = [(e.device_id, e.protocol, e.kind, _us(e.at), e.detail) for e in events]
    return orjson.dumps({"v": 1, "m": [[getattr(m, f) for f in _META_FIELDS] for m in metas],
                         "r": rows, "j": rejects, "e": evs})


def decode_record(payload: bytes) -> tuple[Delivery, list[DeviceEvent]]:
    """One spooled record → one (already acked, ack=None) delivery and its events."""
    doc = orjson.loads(payload)
    if doc.get("v") != 1:
        raise SpoolError(f"unknown spool record version {doc.get('v')!r}")
    metas = [SensorMeta(**dict(zip(_META_FIELDS, m))) for m in doc["m"]]
    readings = [Reading(sensor=k, ts=_from_us(us), value=float(v), quality=Quality(q), meta=metas[mi])
                for k, us, v, q, mi in doc["r"]]
    rejects = [Rejection(source=s, device_id=d, address=a, payload=base64.b64decode(p), reason=r, detail=t)
               for s, d, a, p, r, t in doc["j"]]
    events = [DeviceEvent(device_id=d, protocol=p, kind=k, at=_from_us(us), detail=t) for d, p, k, us, t in doc["e"]]
    return Delivery(readings=readings, rejects=rejects, ack=None, upstream_retains=False), events
