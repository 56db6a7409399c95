"""How far the log vouches for time: the ingest instances' watermarks on one partition (pure; the record:
streams/watermark.py, its writer: streams/ingest/watermark.py).

An ingest instance's watermark T on a partition says every webhook it received before T is in that
partition before the watermark. So once a worker has processed a partition up to a watermark of every
ingest instance that may still be holding webhooks back, nothing received before the oldest of them can
still come: that oldest watermark bounds the SLA watch's "now" for the partition (:func:`bound`). While an
instance spools (Kafka away from it) it writes none, so the bound stands still at its last one and no
session is stalled for want of what waits in its spool; live and replay read the same watermarks at the same
offsets, so a replay bounded by them fires where the live run did.

Which instances hold the bound (:func:`holds`):
- an instance that said it was ``leaving`` (a clean shutdown with an empty spool) holds nothing;
- an instance whose newest watermark another instance's has passed by more than the lease is taken as gone
  (crashed for good, or spooling for longer than the lease): the log itself says time went on without it,
  the same in a live run and a replay;
- live, caught up with the partition, with no other instance writing (a single ingest): an instance from
  which the worker has heard nothing for longer than the lease of *connected* time (wall time during which
  the broker answered the worker, :class:`ConnectedTime`) is taken as gone. A broker outage stops that
  clock, so waiting out an outage of the broker itself never lets the watch run ahead of ingest's spool.
A silent instance is ambiguous (spooling, or crashed and never coming back): the watch waits for it up to
the lease (``ENX_INGEST_LEASE_S``), then judges without it. An instance that comes back (its spool drained)
holds the bound again from its next watermark; a session stalled meanwhile whose composite was in that
spool is closed by a late-delivery ``transcode_recovered`` (rules.alerts_for).

A partition with no watermark (a log from before them, producers other than ingest) has no bound: the
watch keeps its own "now" (watch.PartitionClock).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from streams.watermark import Mark


@dataclasses.dataclass(frozen=True)
class Held:
    """What a worker knows of one ingest instance on one partition: its newest watermark, whether that one
    said ``leaving``, and the connected time (s) at which the worker last processed one of its watermarks."""

    at_ms: int
    leaving: bool
    heard: float


def hold(held: Held | None, mark: Mark, heard: float) -> Held:
    """``held`` with ``mark`` processed at connected time ``heard``: the newest watermark wins (an older one,
    from a producer retrying, changes only when it was heard); at the same time, ``leaving`` wins."""
    if held is None or mark.at_ms > held.at_ms:
        return Held(mark.at_ms, mark.leaving, heard)
    leaving = held.leaving or (mark.leaving and mark.at_ms == held.at_ms)
    return Held(held.at_ms, leaving, max(held.heard, heard))


def holds(instance: str, held: Mapping[str, Held], lease_ms: int, connected_now: float | None) -> bool:
    """Whether ``instance`` still bounds the partition's "now" (see the module's docstring).
    ``connected_now``: the worker's connected time, None when it is not caught up with the partition (then
    the log has more to say, and only the log decides)."""
    mine = held[instance]
    if mine.leaving:
        return False
    newest_other = max((h.at_ms for name, h in held.items() if name != instance), default=None)
    if newest_other is not None and newest_other - mine.at_ms > lease_ms:
        return False
    return connected_now is None or connected_now - mine.heard <= lease_ms / 1000


def bound(held: Mapping[str, Held], lease_ms: int, connected_now: float | None) -> int | None:
    """The oldest watermark of the instances that hold the partition (Unix ms), or None when none does."""
    live = [h.at_ms for name, h in held.items() if holds(name, held, lease_ms, connected_now)]
    return min(live) if live else None


def bounded(now_ms: int | None, limit: int | None) -> int | None:
    """A "now" held back to the watermarks' bound (None: no bound, or no "now" yet)."""
    if now_ms is None or limit is None:
        return now_ms
    return min(now_ms, limit)


class ConnectedTime:
    """Seconds of wall time during which the broker answered this worker: the clock of the lease of a silent
    instance. It advances from one :meth:`tick` to the next only when both found the broker answering."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.total = 0.0
        self._since: float | None = None

    def tick(self, answered: bool) -> float:
        now = self.clock()
        if answered and self._since is not None:
            self.total += max(0.0, now - self._since)
        self._since = now if answered else None
        return self.total
