"""A table restore that stops making progress, and putting faust's consumer back on its changelog partitions.

faust's Recovery (faust/tables/recovery.py, faust-streaming 0.15.3) seeks each active changelog partition to
what it has restored, resumes it, and waits until every one has been read up to the highwater it took at the
start; only then is the worker ready (the agent holds what it takes meanwhile, restore_buffer.py). Nothing in
it notices a partition whose records stop arriving: it logs "No event received for active tp" every 30 s and
waits for good. The worker-kill fault test saw that once (a clean-clone CI run, 80,000 events): the survivor's
restore stopped halfway, faust's ``_slurp_changelogs`` waiting on a changelog queue that nothing filled, 15,300
records left, and its sessions kept their state from before the kill. The same family as the stream side's
"a partition taken over and never fetched" (``check_progress`` in sweeper.py): faust's fetch path drops records it
takes as delivered (its read offset moves past them, or a batch is cut short) and nothing fetches them again.

So :class:`RestoreWatch` looks at the restore every few seconds from a task of its own, started at the first
assignment (faust starts the app's timers only once the first restore is done, and the SLA watch stands still
while one runs): a changelog partition with records remaining whose restored offset has not moved
for ``stall_s`` is said in a warning (with faust's consumer state) and put back on the consumer: resumed and
sought to the offset Recovery has restored, which faust's own restart of a recovery does too. Re-reading is
harmless: Recovery skips a record at or below what it has applied. Only public members of faust are used
(``app.tables.recovery``'s ``in_recovery``, ``active_offsets`` and ``active_remaining()``, the consumer's
``flow_active``, ``resume_partitions`` and ``seek``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Generic, TypeVar

log = logging.getLogger("streams.processor")
T = TypeVar("T", bound=Hashable)
STALL_S = 10.0  # a changelog partition that restored nothing for this long, records remaining, is sought again


class RestoreProgress(Generic[T]):
    """Per changelog partition being restored, when its restored offset last moved. Pure bookkeeping."""

    def __init__(self, stall_s: float = STALL_S) -> None:
        self.stall_s = stall_s
        self._seen: dict[T, tuple[int, float]] = {}  # partition -> (restored offset, when it last moved)

    def stalled(self, offsets: Mapping[T, int], remaining: Mapping[T, int], now: float) -> list[T]:
        """The partitions with records ``remaining`` whose restored offset (``offsets``) has not moved for
        ``stall_s`` seconds; each gets a new grace period from ``now``. A partition seen for the first time gets
        its grace period too; one with nothing remaining is forgotten."""
        out = []
        for tp in [tp for tp in self._seen if remaining.get(tp, 0) <= 0]:
            del self._seen[tp]
        for tp, left in remaining.items():
            if left <= 0:
                continue
            offset = offsets.get(tp, -1)
            seen = self._seen.get(tp)
            if seen is None or seen[0] != offset:
                self._seen[tp] = (offset, now)
            elif now - seen[1] >= self.stall_s:
                out.append(tp)
                self._seen[tp] = (offset, now)
        return out

    def reset(self) -> None:
        """No restore running (or a new one begun): every partition starts its grace period again."""
        self._seen.clear()


class RestoreWatch:
    """Puts faust's consumer back on changelog partitions a restore has stopped reading (see the module)."""

    def __init__(self, app: Any, describe: Callable[[], str], stall_s: float = STALL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.describe = describe  # faust's consumer state, for the warning
        self.progress: RestoreProgress[Any] = RestoreProgress(stall_s)
        self.clock = clock
        self.generation: int | None = None
        self.sought = 0  # how often it acted (the worker's log says each time)
        self.running = False

    def start(self, interval_s: float) -> None:
        """Check every ``interval_s`` from now on, in a task of the app's (cancelled when it stops); once."""
        if not self.running:
            self.running = True
            self.app.add_future(self.run(interval_s))

    async def run(self, interval_s: float) -> None:
        async for _ in self.app.itertimer(interval_s, name="restore_watch"):
            try:
                await self.check()
            except Exception as exc:  # noqa: BLE001 - a watchdog must not stop the worker; tried again next time
                log.warning("the restore watch failed: %r", exc)

    async def check(self) -> None:
        app = self.app
        recovery = app.tables.recovery
        generation = app.consumer_generation_id
        if not recovery.in_recovery or not app.consumer.flow_active or generation != self.generation:
            # no restore, or a rebalance is stopping or restarting it (faust seeks every changelog again then)
            self.generation = generation
            self.progress.reset()
            return
        offsets = recovery.active_offsets
        for tp in self.progress.stalled(offsets, recovery.active_remaining(), self.clock()):
            offset = max(offsets.get(tp) or 0, 0)
            log.warning("restoring the tables: nothing read from %s[%d] for %.0f s while %d records remain (restored "
                        "up to offset %s); seeking it to %d (%s)", tp.topic, tp.partition, self.progress.stall_s,
                        recovery.active_remaining().get(tp, 0), offsets.get(tp), offset, self.describe())
            self.sought += 1
            app.consumer.resume_partitions({tp})
            try:
                await app.consumer.seek(tp, offset)
            except Exception as exc:  # noqa: BLE001 - tried again after the next grace period
                log.warning("seeking %s[%d] failed: %r", tp.topic, tp.partition, exc)
