"""The SLA watch: which sessions of this worker's partitions are due a stall or an expiry, at what "now".

The watch runs on every worker (a faust timer, sweeper.py) and only *decides*: a timer may not write tables
and sees only its own worker's active partitions. Each decision goes as a command, keyed by the session,
to the processor's command topic (same partition count, same keys as the webhook log), which the agent
that owns the session's table partition consumes event by event, re-judges and applies (rules.on_command).
So exactly one worker writes a session's state, the write is legal, and a repeated or stale command (two
workers during a rebalance, a resend) changes nothing the second time: one alert per session and kind.

"Now" for a partition (:class:`PartitionClock`) is
- the wall clock (injectable) once this worker has processed the partition up to its end (its next offset
  has reached the high-water mark; for a partition just taken over, the group's committed offset has), so
  a quiet live log still fires on time;
- the log's own time, the newest ``received_at`` this worker has processed from the partition, while it is
  behind, so a replay at full speed (a rebuild, a new consumer group, a worker catching up after a restart)
  judges each session where the live run did: a composite received before the deadline is always merged
  before the log's time passes the deadline;
- unknown (judge nothing yet) while it is behind and has processed nothing of the partition;
and in every case held back to the ingest instances' watermarks on the partition (watermarks.py, the record
streams/watermark.py): never past the oldest watermark of the instances that may still hold webhooks back
(one spooling while Kafka is away from it, for up to ``ENX_INGEST_LEASE_S``), so no session is stalled for
want of a composite waiting in ingest's spool. A worker caught up with its partition reads about the same
watermarks as a replay at the same offsets, so the two judge alike; a partition with no watermark (a log
from before them) keeps the clock above. The lease of a silent instance runs in connected time, measured
once a sweep by asking the broker (reach.py): a broker outage never counts toward it.
What a worker knew of a partition is forgotten when the partition is revoked.

A sweep does not look at every session: :class:`DueIndex` keeps, per partition, when each session next
needs a command (its deadline, else the end of its retention). The owning agent updates it on every change;
after a rebalance (when the tables are restored from their changelogs) it is rebuilt from the tables once.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping

from aiokafka.partitioner import murmur2

from streams.processor import rules, watermarks
from streams.watermark import Mark

RESEND_S = 10.0  # a command not applied by then (lost in a rebalance) is sent again; repeats are harmless


def partition_of(key: str, partitions: int) -> int:
    """Kafka's default partitioner (murmur2 of the key bytes), as the producers of the log use it."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


class PartitionClock:
    """Per partition: the newest receive time this worker processed, the next offset to process, and the
    ingest instances' watermarks it processed (watermarks.py), which bound the partition's "now"."""

    def __init__(self, clock: Callable[[], float], lease_s: float = 60.0) -> None:
        self.clock = clock
        self.lease_ms = int(lease_s * 1000)
        self.connected = watermarks.ConnectedTime(clock)
        self._log_ms: dict[int, int] = {}
        self._next_offset: dict[int, int] = {}
        self._held: dict[int, dict[str, watermarks.Held]] = {}

    def marked(self, partition: int, mark: Mark) -> None:
        """An ingest instance's watermark was processed on ``partition`` (after :meth:`saw` of its record)."""
        held = self._held.setdefault(partition, {})
        held[mark.instance] = watermarks.hold(held.get(mark.instance), mark, self.connected.total)

    def knows_marks(self, partition: int) -> bool:
        """Whether this worker holds any ingest instance's watermark of ``partition``."""
        return bool(self._held.get(partition))

    def tick(self, broker_answered: bool) -> None:
        """Once a sweep: whether the broker answered this worker since the last (the lease's clock)."""
        self.connected.tick(broker_answered)

    def bound(self, partition: int, caught_up: bool = False) -> int | None:
        """The watermarks' bound on ``partition``'s "now" (None: none holds it; watermarks.bound)."""
        held = self._held.get(partition)
        if not held:
            return None
        return watermarks.bound(held, self.lease_ms, self.connected.total if caught_up else None)

    def saw(self, partition: int, received_at_ms: int | None, offset: int) -> None:
        """A webhook record of ``partition`` at ``offset`` was processed (``None``: it had no usable time)."""
        if received_at_ms is not None:
            self._log_ms[partition] = max(self._log_ms.get(partition, received_at_ms), received_at_ms)
        self._next_offset[partition] = max(self._next_offset.get(partition, 0), offset + 1)

    def position(self, partition: int) -> int | None:
        """The next offset of ``partition`` this worker will process (None: it has processed none)."""
        return self._next_offset.get(partition)

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions revoked from this worker: what it knew of them is stale when they come back."""
        for partition in partitions:
            self._log_ms.pop(partition, None)
            self._next_offset.pop(partition, None)
            self._held.pop(partition, None)

    def now_ms(self, partition: int, highwater: int | None, committed: int | None = None) -> int | None:
        """The partition's "now" in Unix ms, or None when it cannot be known yet.

        ``highwater``: the partition's end offset as the consumer last saw it (None: not fetched yet);
        ``committed``: the group's committed offset (next to read) when nothing was processed here yet."""
        position = self._next_offset.get(partition)
        if position is None:
            position = committed if committed is not None else 0
        log_ms = self._log_ms.get(partition)
        if highwater is not None and position >= highwater:
            wall = int(self.clock() * 1000)
            own = wall if log_ms is None else max(wall, log_ms)  # never back behind the log's own time
            return watermarks.bounded(own, self.bound(partition, caught_up=True))
        return watermarks.bounded(log_ms, self.bound(partition))


class Resend:
    """Remembers the commands sent, so that one not yet applied is not sent again every sweep."""

    def __init__(self, clock: Callable[[], float], after_s: float = RESEND_S) -> None:
        self.clock = clock
        self.after_s = after_s
        self._sent: dict[tuple[str, str], float] = {}

    def due(self, key: str, op: str) -> bool:
        now = self.clock()
        sent = self._sent.get((key, op))
        if sent is not None and now - sent < self.after_s:
            return False
        self._sent[(key, op)] = now
        return True

    def prune(self) -> None:
        now = self.clock()
        self._sent = {k: t for k, t in self._sent.items() if now - t < self.after_s}


def decide(state: Mapping | None, now_ms: int, retention_s: float) -> str | None:
    """The command a session needs at ``now_ms``: a stall, an expiry, or nothing."""
    if state is None:
        return None
    if rules.judge(state, now_ms):
        return rules.STALL
    if rules.expired(state, now_ms, retention_s):
        return rules.EXPIRE
    return None


def next_due(state: Mapping | None, retention_s: float) -> int | None:
    """The first "now" (ms) at which the session will need a command: its stall, else its expiry."""
    if state is None:
        return None
    if state["sla_state"] == "pending":
        return None if state["sla_deadline"] is None else state["sla_deadline"] + 1
    return rules.last_activity(state) + int(retention_s * 1000)


class DueIndex:
    """When each session of this worker's partitions next needs a command, by partition, so that a sweep
    finds what is due without looking at every session.

    Sized for a million open sessions (bench/state_memory.py): per partition, a set of session keys per
    second of due time and a heap of those seconds; per session only its key and a reference to its set
    (no tuple, no integer, no heap entry of its own: about a hundred bytes instead of about 270). A sweep takes
    whole seconds, so a session due later within the second it is in is taken early; the sweep re-judges
    it (nothing is due yet) and sets it again."""

    RESOLUTION_MS = 1000

    def __init__(self) -> None:
        self._at: dict[str, set[str]] = {}  # key -> the set of its second
        self._buckets: dict[int, dict[int, set[str]]] = {}  # partition -> second -> keys
        self._heaps: dict[int, list[int]] = {}  # partition -> its seconds (lazily: a popped or emptied one stays)

    def __len__(self) -> int:
        return len(self._at)

    def set(self, key: str, partition: int, due: int | None) -> None:
        old = self._at.get(key)
        if due is None:
            if old is not None:
                old.discard(key)
                del self._at[key]
            return
        second = due // self.RESOLUTION_MS
        buckets = self._buckets.get(partition)
        if buckets is None:
            buckets = self._buckets[partition] = {}
        keys = buckets.get(second)
        if keys is not None and keys is old:
            return
        if old is not None:
            old.discard(key)
        if keys is None:
            keys = buckets[second] = set()
            heapq.heappush(self._heaps.setdefault(partition, []), second)
        keys.add(key)
        self._at[key] = keys

    def pop_due(self, partition: int, now_ms: int) -> list[str]:
        """The sessions of ``partition`` due at ``now_ms`` (and any due later within its second), removed (the
        caller sets them again)."""
        heap, buckets = self._heaps.get(partition), self._buckets.get(partition)
        out: list[str] = []
        limit = now_ms // self.RESOLUTION_MS
        while heap and heap[0] <= limit:
            keys = buckets.pop(heapq.heappop(heap), None) if buckets is not None else None
            if keys:
                for key in keys:
                    del self._at[key]
                out.extend(sorted(keys))
        return out

    def clear(self) -> None:
        self._at.clear()
        self._buckets.clear()
        self._heaps.clear()


def sweep(index: DueIndex, state_of: Callable[[str], Mapping | None], assigned: Iterable[int],
          clock: PartitionClock, retention_s: float,
          highwater: Callable[[int], int | None] = lambda _p: None,
          committed: Callable[[int], int | None] = lambda _p: None) -> list[tuple[str, str, int]]:
    """``(session key, "stall" | "expire", now_ms)`` for every session of an assigned partition that is due,
    judged on its state as the tables hold it now (``state_of``). Each session stays in the index at its
    next due time, so one whose command has not been applied yet is found again next time."""
    out: list[tuple[str, str, int]] = []
    for partition in sorted(assigned):
        now = clock.now_ms(partition, highwater(partition), committed(partition))
        if now is None:
            continue
        for name in index.pop_due(partition, now):
            state = state_of(name)
            op = decide(state, now, retention_s)
            if op is not None:
                out.append((name, op, now))
            index.set(name, partition, next_due(state, retention_s))
    return out
