"""When the processor stops dead-lettering the events it cannot handle and stops itself instead (pure).

An event whose handling fails (the rules or the Avro encoding of its result raise: a record no version
of the rules foresaw, a value the schemas cannot hold) goes to the dead-letter topic and the processor
goes on: one bad record must not stop a partition's SLA alerts, nor hold its commits back forever. But
when many events fail, the cause is the processor (a bug, an incompatible upgrade), not the records, and
dead-lettering them all would empty the state quietly. So, as Arroyo's ``DlqLimit`` does, a worker gives
up once more than ``limit`` of the last ``window`` events it judged have failed.

The count lives in one process. What makes a restart stop at the same place is the agent's: it acks a
dead-lettered event only once it has handled a later one, so when nothing succeeds nothing past the first
failure is committed. A failure rate above the limit's with successes in between still moves on, one
stop per window or so, each failure on the dead-letter topic.
"""

from __future__ import annotations

from collections import deque

WINDOW = 1000
LIMIT = 100
REASON = "processor_failed"  # the reason_code of the processor's dead letters


class TooManyRejects(RuntimeError):
    """Too many recent events failed: the processor, not the records, is at fault."""


class RejectLimit:
    """Counts the events judged and those that failed among the last ``window`` of them."""

    def __init__(self, window: int = WINDOW, limit: int = LIMIT) -> None:
        if window < 1 or not 0 <= limit < window:
            raise ValueError(f"need 0 <= limit < window, got limit={limit} window={window}")
        self.window, self.limit = window, limit
        self._judged = 0
        self._failed: deque[int] = deque()  # the ordinal of each recent failure

    def passed(self) -> None:
        """An event was judged without failing."""
        self._judged += 1

    def failed(self) -> None:
        """An event failed; raises :class:`TooManyRejects` if more than ``limit`` of the last ``window``
        events have."""
        self._judged += 1
        self._failed.append(self._judged)
        while self._failed[0] <= self._judged - self.window:
            self._failed.popleft()
        if len(self._failed) > self.limit:
            raise TooManyRejects(
                f"{len(self._failed)} of the last {min(self._judged, self.window)} events could not be processed: "
                f"that is the processor's fault, not the records' (a bug or an incompatible upgrade). They are on "
                f"the dead-letter topic with their reason; fix the cause, then `enx-streams rebuild` processes "
                f"them again")

    @property
    def recent(self) -> int:
        """How many of the last ``window`` events failed."""
        return sum(1 for n in self._failed if n > self._judged - self.window)
