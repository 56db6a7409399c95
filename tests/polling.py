"""Waiting in tests without sleeping to synchronise: poll a condition until a deadline."""

from __future__ import annotations

import signal
import subprocess
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


def task_dumps(procs: Iterable[object], logs: Iterable[Path], timeout_s: float = 5.0) -> str:
    """Ask every live faust worker among ``procs`` (subprocess.Popen) for a dump of its asyncio tasks (mode's
    worker writes each task's stack to its log on SIGUSR1) and return what each log gained: on a failure,
    where each worker was waiting."""
    import signal

    pairs = [(p, f) for p, f in zip(procs, logs) if p.poll() is None and f.exists()]  # type: ignore[attr-defined]
    sizes = {f: f.stat().st_size for _, f in pairs}
    for p, _ in pairs:
        p.send_signal(signal.SIGUSR1)  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(f.stat().st_size == sizes[f] for _, f in pairs):
        time.sleep(0.2)  # poll interval, bounded by the deadline
    time.sleep(0.5)  # the dump is written in pieces: let it finish (diagnostics only, after a failure)
    return "\n".join(f"--- tasks of {f.name}\n{f.read_bytes()[sizes[f]:].decode(errors='replace')[-20000:]}"
                     for _, f in pairs)


def stop_gracefully(procs: Iterable[subprocess.Popen], timeout_s: float) -> None:
    """SIGTERM every live process of ``procs``, wait up to ``timeout_s`` for each, SIGKILL what is left."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
