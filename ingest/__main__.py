"""`python -m ingest`: run the ingest service until SIGTERM/SIGINT."""
from __future__ import annotations

import logging
import signal
import sys
import threading

from core.config import Settings
from ingest.runner import run_ingest


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return run_ingest(Settings(), stop=stop)


if __name__ == "__main__":
    sys.exit(main())
