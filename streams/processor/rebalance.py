"""Where the worker stands in faust's rebalances: whether the event being handled is still this worker's to
apply, whether a rebalance is still settling, what a revocation makes it forget, and when the SLA watch's
index must be rebuilt. Also where the worker stands on the log's partitions (faust's highwater and the
group's committed offset)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import faust
from faust.types import TP

from streams import internals
from streams.processor.state import SessionTables
from streams.processor.watch import DueIndex


class Rebalances:
    """The consumer generation of the event being handled, and what a rebalance resets.

    ``forget``: called with the log's revoked partitions (the watch's clocks, gaps.py's continuity, when
    each partition was last heard from: where a partition's next owner starts is the group's committed
    offset, not ours)."""

    def __init__(self, app: faust.App, log_topic: str, tables: SessionTables, index: DueIndex,
                 forget: Iterable[Callable[[list[int]], None]]) -> None:
        self.app, self.log_topic, self.tables, self.index = app, log_topic, tables, index
        self._forget = list(forget)
        self.taken = -1  # the consumer generation of the event being handled
        # the index is rebuilt from the tables after every rebalance (tables restored from changelogs)
        self.reindex_needed = True
        self.reindex_generation = 0

    def settling(self) -> bool:
        """A rebalance has begun and faust has not finished it: from the revocation to "Worker ready", which
        restores the tables and only then seeks the stream partitions to the committed offsets. Until
        that seek faust's consumer has forgotten the committed offsets of the partitions it keeps (so
        neither its acks nor gaps.py can tell where a partition starts), and the flow is resumed during
        the restore. The agent holds what it takes meanwhile (agent.py)."""
        return self.app.in_recovery or self.app.rebalancing

    def take(self, message: Any) -> None:
        """``message`` is the event being handled from now on."""
        self.taken = message.generation_id

    def live(self) -> bool:
        """Whether the event being handled is still this worker's to apply: not when a rebalance has begun
        (faust suspends the flow) or ended (a new generation) since it was taken, as faust's own stream
        iterator judges it. Its partition may have moved; its owner processes it from the commit.

        Nor while faust settles a rebalance (``settling``), which its iterator does not check."""
        app = self.app
        return app.flow_control.is_active() and not self.settling() and app.consumer_generation_id == self.taken

    def revoked(self, revoked: Iterable[TP]) -> None:
        partitions = [tp.partition for tp in revoked if tp.topic == self.log_topic]
        for forget in self._forget:
            forget(partitions)
        self._needs_reindex()
        self.index.clear()
        self.tables.index_cleared()

    def restored(self) -> None:
        """faust's rebalance is complete (the tables restored): the index is rebuilt, and the sessions of
        partitions this worker no longer holds are forgotten (state.py ``drop_not_owned``)."""
        self._needs_reindex()
        self.tables.drop_not_owned(self.app.tables.recovery.active_tps)

    def _needs_reindex(self) -> None:
        self.reindex_generation += 1
        self.reindex_needed = True

    def assigned(self) -> set[int] | None:
        """The log's partitions assigned to this worker (None: no consumer yet, starting or between
        generations)."""
        try:
            return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.log_topic}
        except Exception:  # noqa: BLE001 - no consumer yet (starting) or between generations
            return None

    def highwater(self, partition: int) -> int | None:
        try:
            return self.app.consumer.highwater(TP(self.log_topic, partition))
        except Exception:  # noqa: BLE001 - unknown until the consumer has fetched the partition
            return None

    def committed(self, partition: int) -> int | None:
        return internals.committed_offset(self.app.consumer, TP(self.log_topic, partition))
