"""A process that runs ingest's durable producer on a spool and is SIGKILLed by itself at one named step.

Test-only: the product has no crash hooks. The step is reached by patching, in this process only, the spool
module's view of ``os`` (``replace``, ``ftruncate``, ``fsync``, ``write``) and a few of the spool's and the
producer's own methods, so that the N-th call that matches dies exactly before or after the real call.
Everything else is the product's code: :class:`streams.ingest.producer.DurableProducer` replays the spool
into the real broker (batches of 500, the marker once per batch, the reset before the truncation) and its
``deliver`` appends to the spool while Kafka is away, as ingest does before it answers 202.

    python -m tests.faults.spool_crash_child [--crash STEP [--nth N]] drain SPOOL BOOTSTRAP TOPIC [--fresh TAG]
    python -m tests.faults.spool_crash_child [--crash STEP [--nth N]] deliver SPOOL TOPIC TAG COUNT [--crafted]

(the test forks it from a server that has imported it already, :func:`run_logged`: half a second less per run.)

Every record made durable is printed as ``acked <event_id>`` once ``deliver``/``append`` returned (the
moment ingest would answer 202); ``drained`` once the spool is empty again (file and marker at 0).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streams.avro import default_codec
from streams.events import normalise, session_key
from streams.ingest import spool as S
from streams.ingest.metrics import IngestMetrics
from streams.ingest.producer import DurableProducer
from streams.ingest.spool import Spool, encode_frame

FRESH = 3  # records delivered on the restarted spool before its replay begins


def record(tag: str, i: int) -> tuple[bytes, bytes, str]:
    """Key, value and event id of a webhook record, encoded as ingest encodes it."""
    body = json.dumps({"type": "recording", "trans_date": 1764000000 + i, "app_id": f"app-{tag}", "room_id": "r",
                       "conf_num": str(i % 11), "recording": [f"http://f/{tag}/{i}.mkv"]}).encode()
    event = normalise(body, 1764000000000 + i, "127.0.0.1")
    return session_key(event).encode(), default_codec().encode("WebhookEvent", event), event["event_id"]


def crafted_record(topic: str) -> tuple[bytes, bytes, str, bytes]:
    """Key, value and event id of a webhook anyone may send whose record holds, byte for byte, an intact spool
    frame for ``topic`` (its ``room_id`` is that frame's bytes, as JSON escapes), and that frame: torn in
    the middle of its append, the spool must not take the frame inside it for one of its own."""
    inner = b""
    for nonce in range(10_000):
        inner = encode_frame(topic, b"forged", f"not a record anyone sent ({nonce})".encode())
        if max(inner) < 0x80:  # its CRC too: text that a JSON string carries
            break
    body = json.dumps({"type": "roomdrop", "trans_date": 1764000000, "app_id": "app-crafted", "conf_num": "1",
                       "room_id": inner.decode("ascii")}).encode()
    event = normalise(body, 1764000000000, "127.0.0.1")
    return session_key(event).encode(), default_codec().encode("WebhookEvent", event), event["event_id"], inner


# --- where to die --------------------------------------------------------------------------------------------

_inside: list[str] = []  # the spool methods running now (outermost first); one thread at a time holds the spool
_seen: dict[str, bool] = {}
_append_nth = [1]  # which append the append steps interrupt (--nth)


def die() -> None:
    sys.stdout.flush()  # the records acknowledged so far are told; nothing else of this process runs
    os.kill(os.getpid(), signal.SIGKILL)


class _SpoolOs:
    """What ``streams.ingest.spool`` sees as ``os``: the real module, with the patched calls set on it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def _track(owner: Any, name: str) -> None:
    real = getattr(owner, name)

    @functools.wraps(real)
    def tracked(*args: Any, **kwargs: Any) -> Any:
        _inside.append(name)
        try:
            return real(*args, **kwargs)
        finally:
            _inside.pop()

    setattr(owner, name, tracked)


def _nth(n: int, matches: Callable[..., bool]) -> Callable[..., bool]:
    """A predicate true on the n-th call for which ``matches`` is true."""
    count = [0]

    def check(*args: Any, **kwargs: Any) -> bool:
        if not matches(*args, **kwargs):
            return False
        count[0] += 1
        return count[0] == n

    return check


def _wrap(owner: Any, name: str, *, before: Callable[..., bool] | None = None,
          after: Callable[..., bool] | None = None) -> None:
    """Die just before or just after the real call when the predicate (given the call's arguments) is true."""
    real = getattr(owner, name)

    @functools.wraps(real)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before is not None and before(*args, **kwargs):
            die()
        result = real(*args, **kwargs)
        if after is not None and after(*args, **kwargs):
            die()
        return result

    setattr(owner, name, wrapper)


def _marker_replace(src: Any, dst: Any) -> bool:
    return Path(dst).name == "spool.acked"


def _drain_marker(src: Any, dst: Any) -> bool:
    """A marker rename of the replay's acknowledgements (not the reset's, not the repair's)."""
    return _marker_replace(src, dst) and "reset_if_drained" not in _inside and "_cut_out" not in _inside


def _in(method: str) -> Callable[..., bool]:
    return lambda *args, **kwargs: method in _inside


def _torn_write(nth: int) -> Callable[[int, bytes], int]:
    real = os.write
    count = [0]

    def write(fd: int, data: bytes) -> int:
        if "append" in _inside:
            count[0] += 1
            if count[0] == nth:
                real(fd, data[: len(data) // 2])  # half the frame reaches the file, then the process is gone
                die()
        return real(fd, data)

    return write


def _refused_quarantined_not_acked(fake: _SpoolOs) -> None:
    real = DurableProducer._quarantine

    async def quarantine(self: DurableProducer, *args: Any) -> None:
        await real(self, *args)
        _seen["quarantined"] = True

    DurableProducer._quarantine = quarantine  # type: ignore[method-assign]
    _wrap(Spool, "ack", before=lambda *a: _seen.get("quarantined", False))


def _old_order_truncated_not_reset(fake: _SpoolOs) -> None:
    def reset_if_drained(self: Spool) -> bool:
        if self.size() and self.acked() >= self.size():
            os.ftruncate(self._fd, 0)  # noqa: SLF001 - the old order, reproduced: the file first...
            os.fsync(self._fd)  # noqa: SLF001
            die()  # ...and killed before the marker was reset
        return False

    Spool.reset_if_drained = reset_if_drained  # type: ignore[method-assign]


def _nth_append(matches: Callable[..., bool]) -> Callable[..., bool]:
    return _nth(_append_nth[0], matches)


def _in_reset(src: Any, dst: Any) -> bool:
    return _marker_replace(src, dst) and "reset_if_drained" in _inside


def _spool_replaced(src: Any, dst: Any) -> bool:
    return "_cut_out" in _inside and Path(dst).name == "spool.log"


# Each step: how to die there, given the spool module's ``os``.
STEPS: dict[str, Callable[[_SpoolOs], None]] = {
    # the replay: batch 1 (500 frames) and batch 2 (the rest) sent and acknowledged, the marker per batch
    "batch_acked_marker_not_written": lambda fake: _wrap(Spool, "ack", before=_nth(2, lambda self, end, *a: end > 0)),
    "marker_tmp_not_renamed": lambda fake: _wrap(fake, "replace", before=_nth(2, _drain_marker)),
    "marker_renamed_dir_not_fsynced": lambda fake: _wrap(fake, "replace", after=_nth(2, _drain_marker)),
    "marker_written": lambda fake: _wrap(Spool, "ack", after=_nth(1, lambda self, end, *a: end > 0)),
    # the emptying once drained: marker to 0 (write, rename, dir fsync), then the truncation
    "drained_not_reset": lambda fake: _wrap(Spool, "reset_if_drained", before=_nth(1, lambda self: True)),
    "reset_marker_tmp_not_renamed": lambda fake: _wrap(fake, "replace", before=_nth(1, _in_reset)),
    "reset_marker_renamed_dir_not_fsynced": lambda fake: _wrap(fake, "replace", after=_nth(1, _in_reset)),
    "reset_marker_written_not_truncated": lambda fake: _wrap(fake, "ftruncate", before=_in("reset_if_drained")),
    "truncated_not_fsynced": lambda fake: _wrap(fake, "ftruncate", after=_in("reset_if_drained")),
    "truncated": lambda fake: _wrap(Spool, "reset_if_drained", after=_nth(1, lambda self: True)),
    # an append while Kafka is away (the --nth): torn in the middle of its write, or whole, not fsynced
    "append_torn": lambda fake: setattr(fake, "write", _torn_write(_append_nth[0])),
    "append_written_not_fsynced": lambda fake: _wrap(fake, "fsync", before=_nth_append(_in("append"))),
    # the repair at start: a torn tail cut; a corrupt middle frame cut out (quarantine file, rebuilt file,
    # marker to 0, rename over the spool)
    "repair_torn_tail_cut_not_fsynced": lambda fake: _wrap(fake, "ftruncate", after=_in("_drop_torn_tail")),
    "cut_out_quarantined_not_rebuilt": lambda fake: _wrap(S, "_write_synced", after=_in("_cut_out")),
    "cut_out_marker_reset_not_replaced": lambda fake: _wrap(fake, "replace", before=_spool_replaced),
    "cut_out_replaced_dir_not_fsynced": lambda fake: _wrap(fake, "replace", after=_spool_replaced),
    # a frame Kafka refuses for good: moved to quarantine/, then acknowledged so the replay goes on
    "refused_quarantined_not_acked": _refused_quarantined_not_acked,
    # the emptying as it was before issue 17 (truncate, then reset the marker): what an older ingest left
    "old_order_truncated_not_reset": _old_order_truncated_not_reset,
}


def _install(step: str) -> None:
    fake = _SpoolOs()
    S.os = fake  # type: ignore[assignment]
    for method in ("ack", "reset_if_drained", "_cut_out", "append", "_drop_torn_tail"):
        _track(Spool, method)
    STEPS[step](fake)


# --- what the process does -----------------------------------------------------------------------------------

def acked(event_id: str) -> None:
    print(f"acked {event_id}", flush=True)


async def drain(spool_dir: Path, bootstrap: str, topic: str, fresh: str | None, timeout_s: float) -> int:
    producer = DurableProducer(bootstrap, spool_dir, IngestMetrics())  # opening the spool repairs it
    if fresh:  # webhooks accepted before Kafka is reached: behind whatever the crash left
        for i in range(FRESH):
            key, value, event_id = record(fresh, i)
            assert await producer.deliver(topic, key, value) == "spool"
            acked(event_id)
    await producer.start()
    deadline = time.monotonic() + timeout_s
    while not (producer.kafka_ok and producer.spool.size() == 0 and producer.spool.acked() == 0):
        if time.monotonic() > deadline:
            print(f"not drained within {timeout_s} s: size {producer.spool.size()}, marker "
                  f"{producer.spool.acked()}", flush=True)
            return 1
        await asyncio.sleep(0.05)  # poll interval, bounded by the deadline
    await producer.flush()
    print("drained", flush=True)
    return 0


async def deliver(spool_dir: Path, topic: str, tag: str, count: int, crafted: bool) -> int:
    """Kafka away (the producer is never started): every record goes to the spool, as in an outage; with
    ``crafted``, :func:`crafted_record` last."""
    producer = DurableProducer("127.0.0.1:9", spool_dir, IngestMetrics())
    records = [record(tag, i) for i in range(count)] + ([crafted_record(topic)[:3]] if crafted else [])
    for key, value, event_id in records:
        assert await producer.deliver(topic, key, value) == "spool"
        acked(event_id)
    producer.spool.close()
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--crash", choices=sorted(STEPS))
    parser.add_argument("--nth", type=int, default=1, help="the append that the append steps interrupt")
    modes = parser.add_subparsers(dest="mode", required=True)
    d = modes.add_parser("drain")
    d.add_argument("spool", type=Path)
    d.add_argument("bootstrap")
    d.add_argument("topic")
    d.add_argument("--fresh")
    d.add_argument("--timeout", type=float, default=30.0)
    a = modes.add_parser("deliver")
    a.add_argument("spool", type=Path)
    a.add_argument("topic")
    a.add_argument("tag")
    a.add_argument("count", type=int)
    a.add_argument("--crafted", action="store_true", help="then a record that holds a spool frame")
    args = parser.parse_args(argv)
    if args.crash:
        _append_nth[0] = args.nth
        _install(args.crash)
    if args.mode == "drain":
        return asyncio.run(drain(args.spool, args.bootstrap, args.topic, args.fresh, args.timeout))
    return asyncio.run(deliver(args.spool, args.topic, args.tag, args.count, args.crafted))


def run_logged(argv: list[str], out: str) -> None:
    """:func:`main` with stdout and stderr going to the file ``out``, unbuffered past each line (so a SIGKILL
    loses nothing already printed): the entry point when the test forks this from a preloaded server."""
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the process's own stdout
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.exit(main(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
