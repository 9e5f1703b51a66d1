"""`python -m ingest`: run the ingest service until SIGTERM/SIGINT."""
from __future__ import annotations

import logging
import signal
import sys
import threading

from core.config import Settings
from ingest.gc_pacing import pace_gc
from ingest.runner import run_ingest


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # asyncua logs an ERROR with a traceback from inside the library on every connection loss; the
    # OPC UA adapter logs each outage once itself (field-lessons: no log line per poll/failure)
    logging.getLogger("asyncua").setLevel(logging.WARNING)
    logging.getLogger("asyncua.client.ua_session").setLevel(logging.CRITICAL)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    pacer = pace_gc()              # held deliveries made the allocation-driven collector costly (gc_pacing)
    try:
        return run_ingest(Settings(), stop=stop)
    finally:
        pacer.stop()


if __name__ == "__main__":
    sys.exit(main())
