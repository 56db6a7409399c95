"""Events that reach the agent while its tables are being restored wait until the restore has ended (and
faust's rebalance with it: until the stream partitions are sought back to the committed offsets, faust has
forgotten those offsets for the partitions it keeps, rebalance.py ``settling``).

faust resumes the flow during a restore so that the changelogs can be read, and records fetched just before
the stream partitions were paused can then reach the agent's queue (the first ones from the committed
offset). Judged during the restore, such an event would see keys set back to older values by the replay
of a changelog (two sessions' alerts were raised a second time so, once in CI). Dropping it is not safe
either: aiokafka seeks back only to a committed offset above 0, so for a group that has committed nothing
yet it would never be delivered again. So the agent keeps taking events (the conductor, which delivers the
changelogs too, must never block on its queue) and holds them here; once the restore has ended they are
handled first, in the order taken. Pure bookkeeping: the agent says whether a restore is running.
"""

from __future__ import annotations

from typing import Generic, TypeVar

E = TypeVar("E")


class RestoreBuffer(Generic[E]):
    def __init__(self) -> None:
        self._held: list[E] = []

    def __len__(self) -> int:
        return len(self._held)

    def offer(self, event: E, restoring: bool) -> list[E]:
        """The events to handle now, in order, given one just taken: none while restoring (it is held),
        else those held before it, then it."""
        if restoring:
            self._held.append(event)
            return []
        ready, self._held = [*self._held, event], []
        return ready

    def release(self, restoring: bool) -> list[E]:
        """The held events, in order, once no restore is running (none while one is)."""
        if restoring or not self._held:
            return []
        ready, self._held = self._held, []
        return ready
