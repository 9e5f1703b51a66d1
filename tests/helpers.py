"""Test helpers: wait on a condition with a deadline instead of sleeping."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, message: str = "") -> T:
    """Poll `condition` until it returns a truthy value; fail with `message` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: T = condition()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or condition}; last={last!r}")
        time.sleep(interval)
        last = condition()
    return last


def free_port() -> int:
    from core.pgserver import free_port as _fp
    return _fp()
