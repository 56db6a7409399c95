"""Waiting in tests without sleeping to synchronise: poll a condition until a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def poll(what: str, check: Callable[[], T], timeout_s: float, logs: Path | Iterable[Path] = (),
         interval_s: float = 0.3) -> T:
    """``check()``'s first truthy result, polled every ``interval_s`` until ``timeout_s``; else an
    AssertionError naming ``what``, the last result and the tail of each log."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)  # poll interval, bounded by the deadline
    files = [logs] if isinstance(logs, Path) else list(logs)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in files if p.exists())
    raise AssertionError(f"{what}: not within {timeout_s} s (last {last!r})\n{tails}")
