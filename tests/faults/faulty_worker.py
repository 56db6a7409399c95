"""A processor worker with one of faust-streaming's defects provoked on purpose, so that the processor's
remedy for it is tested directly (tests/faults/test_faust_remedies.py), not only by the worker-kill test
that once found it. ``ENXTEST_DEFECT`` says which:

- ``undelivered:<partition>:<start>:<stop>``: the drain loop takes the webhook log's records at offsets
  ``start..stop-1`` of that partition as delivered (faust's read offset moves past them) but never hands
  them to the agent, each once: faust's "records dropped around a rebalance", remedied by
  streams/processor/gaps.py.
- ``unfetched:<partition>``: no record of that partition of the webhook log reaches the drain loop until
  the consumer is sought on it again after one was withheld: faust's "a partition taken over and never
  fetched", remedied by the SLA watch's ``check_progress`` (streams/processor/sweeper.py).
- ``restoring:<seconds>``: the first record that reaches the agent starts a table restore (faust's
  ``app.in_recovery`` set, as its Recovery sets it) lasting that many seconds, while the consumer's flow
  stays active, so that record and those fetched meanwhile reach the agent during a restore: faust's
  "records delivered while the tables are restored", remedied by the agent holding them until the restore
  has ended (streams/processor/restore_buffer.py).
- ``unrestored:<partition>:<offset>``: while the tables are restored, no record of that partition of the
  changelogs from ``offset`` on reaches the restore until the partition is sought again: faust's "a table
  restore that stopped halfway", remedied by streams/processor/restore_watch.py.

Each withheld record is said on stderr (``defect: withheld ...``), so a test can tell that the defect was
provoked. Run as ``python -m tests.faults.faulty_worker worker --roles processor ...`` (the CLI's own
arguments)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

from streams.internals import lean_consumer

LOG_SUFFIX = "webhooks.v1"


def say(text: str) -> None:
    print(f"defect: {text}", file=sys.stderr, flush=True)


class UndeliveredInbox:
    """The agent's inbox, except that the chosen records of the log vanish on their way in, once each."""

    def __init__(self, inner: Any, partition: int, offsets: range) -> None:
        self.inner, self.partition, self.offsets = inner, partition, offsets
        self.withheld: set[int] = set()

    def full(self) -> bool:
        return self.inner.full()

    async def room(self) -> None:
        await self.inner.room()

    def put(self, message: Any) -> None:
        if (message.topic.endswith(LOG_SUFFIX) and message.partition == self.partition
                and message.offset in self.offsets and message.offset not in self.withheld):
            self.withheld.add(message.offset)
            say(f"withheld {message.topic}[{message.partition}]@{message.offset} (taken as delivered)")
            return
        self.inner.put(message)


class WithholdingConsumer(lean_consumer.LeanConsumer):
    """The lean consumer, dropping the fetched records ``withholds`` picks (each said on stderr): they never
    reach the drain loop, and aiokafka's position has moved past them."""

    withheld = 0
    what = "withheld"  # how the stderr line names the defect

    def withholds(self, tp: Any, offset: int) -> bool:
        return False

    async def getmany(self, timeout: float) -> AsyncIterator[Any]:
        async for tp, message in super().getmany(timeout):
            if self.withholds(tp, message.offset):
                type(self).withheld += 1
                say(f"withheld {tp.topic}[{tp.partition}]@{message.offset} ({self.what})")
                continue
            yield tp, message


class UnfetchedConsumer(WithholdingConsumer):
    """The lean consumer, blind to one partition of the log until it is sought again after withholding."""

    blind: int = -1
    what = "never fetched"

    def withholds(self, tp: Any, offset: int) -> bool:
        return tp.topic.endswith(LOG_SUFFIX) and tp.partition == type(self).blind

    async def seek(self, partition: Any, offset: int) -> None:
        cls = type(self)
        if partition.topic.endswith(LOG_SUFFIX) and partition.partition == cls.blind and cls.withheld:
            say(f"sought {partition.topic}[{partition.partition}] to {offset}: fetched again")
            cls.blind = -1
        await super().seek(partition, offset)


class RestoringInbox:
    """The agent's inbox, except that the first record put in it starts a restore of ``seconds`` (faust's
    ``app.in_recovery`` set, as its Recovery sets it), during which every record keeps flowing in."""

    def __init__(self, inner: Any, app: Any, seconds: float) -> None:
        self.inner, self.app, self.seconds = inner, app, seconds
        self.started = False

    def full(self) -> bool:
        return self.inner.full()

    async def room(self) -> None:
        await self.inner.room()

    def put(self, message: Any) -> None:
        if not self.started:
            self.started = True
            self.app.in_recovery = True
            say(f"restore begun for {self.seconds:.0f} s at {message.topic}[{message.partition}]@{message.offset}, "
                f"the flow active")
            asyncio.ensure_future(self.end())
        self.inner.put(message)

    async def end(self) -> None:
        await asyncio.sleep(self.seconds)  # the injected restore's length
        self.app.in_recovery = False
        say("the restore ended")


def prolong_restore(seconds: float) -> None:
    """Records reach the agent while faust's ``app.in_recovery`` is set, for ``seconds`` from the first one."""
    install = lean_consumer.install

    def install_restoring(app: Any, inboxes: Mapping[str, Any] | None = None) -> None:
        wrapped: dict[Any, RestoringInbox] = {}
        for inbox in (inboxes or {}).values():
            wrapped.setdefault(id(inbox), RestoringInbox(inbox, app, seconds))
        install(app, {t: wrapped[id(i)] for t, i in (inboxes or {}).items()})

    lean_consumer.install = install_restoring


class UnrestoredConsumer(WithholdingConsumer):
    """The lean consumer, dropping one partition's changelog records from an offset on while the tables are
    restored, until that changelog partition is sought again (Recovery's own seek at its start does not count:
    faust seeks with ``seek_wait``, the remedy with ``seek``)."""

    partition: int = -1
    from_offset: int = 0  # (not ``start``: the consumer is a mode Service, whose start() that would hide)
    cured: set[Any] = set()
    what = "never restored"

    def withholds(self, tp: Any, offset: int) -> bool:
        cls = type(self)
        return (tp.topic.endswith("-changelog") and tp.partition == cls.partition and offset >= cls.from_offset
                and tp not in cls.cured and self.app.in_recovery)

    async def seek(self, partition: Any, offset: int) -> None:
        cls = type(self)
        if partition.topic.endswith("-changelog") and partition.partition == cls.partition and cls.withheld:
            say(f"sought {partition.topic}[{partition.partition}] to {offset}: restored again")
            cls.cured.add(partition)
        await super().seek(partition, offset)


def provoke(defect: str) -> None:
    kind, _, args = defect.partition(":")
    if kind == "undelivered":
        partition, start, stop = (int(a) for a in args.split(":"))
        install = lean_consumer.install

        def install_undelivered(app: Any, inboxes: Mapping[str, Any] | None = None) -> None:
            wrapped: dict[Any, UndeliveredInbox] = {}
            for topic, inbox in (inboxes or {}).items():
                wrapped.setdefault(id(inbox), UndeliveredInbox(inbox, partition, range(start, stop)))
            install(app, {t: wrapped[id(i)] for t, i in (inboxes or {}).items()})

        lean_consumer.install = install_undelivered
    elif kind == "unfetched":
        UnfetchedConsumer.blind = int(args)
        lean_consumer.LeanConsumer = UnfetchedConsumer  # what install() subclasses
    elif kind == "restoring":
        prolong_restore(float(args))


    elif kind == "unrestored":
        partition, start = (int(a) for a in args.split(":"))
        UnrestoredConsumer.partition, UnrestoredConsumer.from_offset = partition, start
        lean_consumer.LeanConsumer = UnrestoredConsumer
    else:
        raise SystemExit(f"unknown ENXTEST_DEFECT {defect!r}")


def main() -> None:
    provoke(os.environ["ENXTEST_DEFECT"])
    from streams.cli import app

    app(args=sys.argv[1:], prog_name="enx-streams")


if __name__ == "__main__":
    main()
