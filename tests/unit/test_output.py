"""The order in which the processor's records reach Kafka (streams/processor/output.py).

``Kafka`` below stands in for the aiokafka producer at the edge Output uses (``send`` and ``send_batch`` of a
``create_batch`` return a future, flush resolves everything sent so far), recording every record it is given
in order. That Output is wired into faust's
commits, and that a refused record stops the worker, are shown on the real broker
(tests/faults/test_output_refused.py, tests/faults/test_worker_killed.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streams.processor.output import Output, OutputError

DEADLETTERS = "enablex.deadletter.v1"
SESSIONS, ALERTS, CHANGELOG = "enablex.sessions.v1", "enablex.alerts.v1", "processor-recording-changelog"


class Batch:
    """aiokafka's BatchBuilder as Output uses it: ``append`` returns None once ``size`` records are in."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.records: list[tuple[bytes | None, bytes | None]] = []
        self.closed = False  # a closed batch is sent at once; an open one lingers for more records

    def append(self, *, timestamp: None, key: bytes | None, value: bytes | None) -> object | None:
        if self.closed or len(self.records) >= self.size:
            self.closed = True  # as aiokafka's BatchBuilder does once full
            return None
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True


class Kafka:
    def __init__(self, batch_size: int = 100) -> None:
        self.size = batch_size  # records per batch
        self.lingering = 0  # batches sent open
        self.calls: list[tuple] = []
        self.pending: list[asyncio.Future] = []
        self.gate: asyncio.Event | None = None  # set: the next flush waits for it
        self.waiting = asyncio.Event()  # a flush is waiting at the gate
        self.flush_error: BaseException | None = None  # the next flush raises it (after the gate)
        self.record_error: BaseException | None = None  # the records pending at the next flush fail with it
        self.results: dict[int, Any] = {}  # id(future) -> what it resolves with (aiokafka: a RecordMetadata)

    async def send(self, topic: str, value: bytes | None, key: bytes | None, partition: int | None) -> Any:
        future = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        self.calls.append(("send", topic, key, value, partition))
        return future

    def create_batch(self) -> Batch:
        return Batch(self.size)

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> Any:
        self.lingering += not batch.closed
        future = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        self.calls += [("send", topic, key, value, partition) for key, value in batch.records]
        return future

    async def flush(self) -> None:
        self.calls.append(("flush",))
        gate, self.gate = self.gate, None
        if gate is not None:
            self.waiting.set()
            await gate.wait()
        self.calls.append(("flushed",))
        if self.flush_error is not None:
            error, self.flush_error = self.flush_error, None
            raise error
        pending, self.pending = self.pending, []
        for future in pending:
            if self.record_error is not None:
                future.set_exception(self.record_error)
            else:
                future.set_result(self.results.pop(id(future), None))
        await asyncio.sleep(0)  # as in aiokafka, the records are resolved when flush returns

    def sent(self) -> list[tuple]:
        return [c[1:] for c in self.calls if c[0] == "send"]


def output(batch_size: int = 100) -> tuple[Output, Kafka]:
    kafka = Kafka(batch_size)
    return Output(kafka.flush, lambda: kafka), kafka


async def flush_held_at_the_gate(out: Output, kafka: Kafka) -> tuple[asyncio.Event, asyncio.Task]:
    """A flush of ``out`` started and waiting at Kafka's gate; set the gate to let it go on."""
    gate = kafka.gate = asyncio.Event()
    flushing = asyncio.create_task(out.flush())
    await kafka.waiting.wait()
    return gate, flushing


def test_alerts_and_snapshots_go_first_at_the_flush_and_table_changes_after_them() -> None:
    async def scenario() -> None:
        out, kafka = output()
        out.publish(ALERTS, 3, b"a/1", b"stalled")
        out.publish_latest(SESSIONS, 3, b"a/1", {"v": 1}, lambda s: f"state-{s['v']}".encode())
        out.publish_latest(SESSIONS, 3, b"a/1", {"v": 2}, lambda s: f"state-{s['v']}".encode())  # the latest only
        out.publish_latest(SESSIONS, 0, b"a/2", None)  # a tombstone
        out.publish(ALERTS, 3, b"a/1", b"recovered")
        out.hold(CHANGELOG, 3, b"a/1", b"part-1")
        out.hold(CHANGELOG, 3, b"a/1", b"part-2")  # the same key again: only the latest is written
        out.hold(CHANGELOG, 0, b"a/2", None)  # a deletion
        assert kafka.calls == []  # nothing before the flush
        await out.flush()
        assert kafka.calls == [("send", ALERTS, b"a/1", b"stalled", 3), ("send", ALERTS, b"a/1", b"recovered", 3),
                               ("send", SESSIONS, b"a/1", b"state-2", 3), ("send", SESSIONS, b"a/2", None, 0),
                               ("flush",), ("flushed",),  # (1) the alerts and snapshots acknowledged first
                               ("send", CHANGELOG, b"a/1", b"part-2", 3), ("send", CHANGELOG, b"a/2", None, 0),
                               ("flush",), ("flushed",)]  # (3) and the changes before the flush returns
        await out.flush()  # nothing held any more: nothing sent again
        assert len(kafka.sent()) == 6

    asyncio.run(scenario())


def test_a_full_batch_is_queued_and_the_rest_go_in_the_next() -> None:
    async def scenario() -> None:
        out, kafka = output(batch_size=2)
        for i in range(5):
            out.hold(CHANGELOG, 0, f"a/{i}".encode(), b"part")
        await out.flush()
        assert kafka.sent() == [(CHANGELOG, f"a/{i}".encode(), b"part", 0) for i in range(5)]
        assert len(kafka.pending) == 0 and kafka.calls.count(("flushed",)) == 2
        assert kafka.lingering == 0  # every batch complete when sent: a flush never waits for a linger

    asyncio.run(scenario())


def test_the_held_changes_are_handed_on_with_their_last_offsets_once_acknowledged() -> None:
    """What the local store takes after a flush (state.py): the changes held, and per changelog partition the
    offset of its last record (the last batch's base offset and size, as aiokafka acknowledges a batch)."""

    class Acked(Kafka):
        def __init__(self) -> None:
            super().__init__(batch_size=2)
            self.base = 100  # the broker's next offset

        async def send(self, topic: str, value: bytes | None, key: bytes | None, partition: int | None) -> Any:
            return self.acked(await super().send(topic, value, key, partition), 1)

        async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> Any:
            return self.acked(await super().send_batch(batch, topic, partition=partition), len(batch.records))

        def acked(self, future: Any, records: int) -> Any:
            self.results[id(future)] = type("RecordMetadata", (), {"offset": self.base})()  # the batch's base
            self.base += records
            return future

    async def scenario() -> None:
        kafka = Acked()
        out = Output(kafka.flush, lambda: kafka)
        got: list[tuple[dict, dict]] = []
        out.durable = lambda held, offsets: got.append((held, offsets))
        out.publish(ALERTS, 0, b"a/0", b"stalled")
        for i in range(5):
            out.hold(CHANGELOG, 0, f"a/{i}".encode(), b"part")
        out.hold(CHANGELOG, 1, b"a/9", None)
        await out.flush()
        assert len(got) == 1
        held, offsets = got[0]
        assert set(held) == {(CHANGELOG, 0, f"a/{i}".encode()) for i in range(5)} | {(CHANGELOG, 1, b"a/9")}
        # alerts: 100; partition 0's three batches 101-102, 103-104, 105; partition 1's one record 106
        assert offsets == {(CHANGELOG, 0): 105, (CHANGELOG, 1): 106}
        await out.flush()  # nothing held: nothing handed on
        assert len(got) == 1

    asyncio.run(scenario())


def test_a_snapshot_that_cannot_be_encoded_fails_the_output() -> None:
    async def scenario() -> None:
        out, kafka = output()

        def refuse(_state: object) -> bytes:
            raise ValueError("out of range")

        out.publish_latest(SESSIONS, 0, b"a/1", {"v": 1}, refuse)
        out.hold(CHANGELOG, 0, b"a/1", b"part")
        with pytest.raises(OutputError, match="no offset is committed past it"):
            await out.flush()
        assert kafka.sent() == []  # neither the snapshot nor its table change
        with pytest.raises(OutputError):
            await out.flush()  # for good

    asyncio.run(scenario())


def test_a_change_held_while_a_flush_runs_waits_for_the_next_one() -> None:
    async def scenario() -> None:
        out, kafka = output()
        out.hold(CHANGELOG, 0, b"a/1", b"old")
        gate, flushing = await flush_held_at_the_gate(out, kafka)
        out.hold(CHANGELOG, 0, b"a/2", b"new")  # its snapshot may not be acknowledged by this flush
        gate.set()
        await flushing
        assert kafka.sent() == [(CHANGELOG, b"a/1", b"old", 0)]
        await out.flush()
        assert kafka.sent() == [(CHANGELOG, b"a/1", b"old", 0), (CHANGELOG, b"a/2", b"new", 0)]

    asyncio.run(scenario())


def test_flushes_run_one_at_a_time() -> None:
    async def scenario() -> None:
        out, kafka = output()
        out.hold(CHANGELOG, 0, b"a/1", b"v1")
        gate, first = await flush_held_at_the_gate(out, kafka)  # e.g. a revocation's
        second = asyncio.create_task(out.flush())  # a commit's, meanwhile
        for _ in range(5):
            await asyncio.sleep(0)  # turns of the event loop in which the second would start, could it
        assert kafka.calls == [("flush",)]  # the second has not started while the first waits
        gate.set()
        await asyncio.gather(first, second)
        assert kafka.calls == [("flush",), ("flushed",), ("send", CHANGELOG, b"a/1", b"v1", 0), ("flush",),
                               ("flushed",), ("flush",), ("flushed",), ("flush",), ("flushed",)]

    asyncio.run(scenario())


def test_a_failed_flush_keeps_its_changes_for_the_next_and_newer_changes_win() -> None:
    async def scenario() -> None:
        out, kafka = output()
        out.hold(CHANGELOG, 0, b"a/1", b"v1")
        out.hold(CHANGELOG, 0, b"a/2", b"v1")
        kafka.flush_error = ConnectionError("broker gone")
        gate, flushing = await flush_held_at_the_gate(out, kafka)
        out.hold(CHANGELOG, 0, b"a/2", b"v2")  # changed again while the flush failed
        gate.set()
        with pytest.raises(ConnectionError):
            await flushing
        assert kafka.sent() == []
        await out.flush()
        assert sorted(kafka.sent()) == [(CHANGELOG, b"a/1", b"v1", 0), (CHANGELOG, b"a/2", b"v2", 0)]

    asyncio.run(scenario())


def test_a_record_that_failed_stops_every_later_send_and_flush() -> None:
    async def scenario() -> None:
        out, kafka = output()
        out.publish_latest(SESSIONS, 0, b"a/1", b"snapshot")
        out.hold(CHANGELOG, 0, b"a/1", b"part")
        kafka.record_error = ValueError("MessageSizeTooLargeError")
        with pytest.raises(OutputError, match="no offset is committed past it"):
            await out.flush()  # the snapshot failed: its table change must not be written
        assert kafka.sent() == [(SESSIONS, b"a/1", b"snapshot", 0)]
        with pytest.raises(OutputError):
            await out.send(DEADLETTERS, None, b"letter")
        kafka.record_error = None
        out.publish_latest(SESSIONS, 0, b"a/2", b"snapshot")
        with pytest.raises(OutputError):
            await out.flush()  # for good: the worker must restart from its last commit
        assert kafka.sent() == [(SESSIONS, b"a/1", b"snapshot", 0)]

    asyncio.run(scenario())


def test_a_dead_letter_goes_at_once() -> None:
    async def scenario() -> None:
        out, kafka = output()
        await out.send(DEADLETTERS, None, b"letter")
        assert kafka.calls == [("send", DEADLETTERS, None, b"letter", None)]

    asyncio.run(scenario())


def test_a_flush_cancelled_after_queueing_its_alerts_never_sends_them_again() -> None:
    """A worker stopping cancels faust's commit in the middle of its flush, and its last commit flushes again:
    what the cancelled flush had handed to the producer is on its way, and an alert sent twice pages twice."""
    async def scenario() -> None:
        out, kafka = output()
        out.publish(ALERTS, 0, b"a/1", b"stalled")
        out.publish_latest(SESSIONS, 0, b"a/1", b"snapshot")
        out.hold(CHANGELOG, 0, b"a/1", b"part")
        gate, flushing = await flush_held_at_the_gate(out, kafka)  # (1) queued, waiting for its acknowledgement
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        out.publish(ALERTS, 0, b"a/2", b"stalled")  # raised meanwhile
        await out.flush()
        assert kafka.sent() == [(ALERTS, b"a/1", b"stalled", 0), (SESSIONS, b"a/1", b"snapshot", 0),
                                (ALERTS, b"a/2", b"stalled", 0),  # each alert once
                                (CHANGELOG, b"a/1", b"part", 0)]  # the change only once (1) was acknowledged
        assert kafka.calls.index(("send", CHANGELOG, b"a/1", b"part", 0)) > kafka.calls.index(("flushed",))

        out.hold(CHANGELOG, 0, b"a/3", b"part")
        out.publish(ALERTS, 0, b"a/3", b"stalled")
        kafka.gate = None
        first = asyncio.create_task(out.flush())
        while ("send", CHANGELOG, b"a/3", b"part", 0) not in kafka.calls:
            await asyncio.sleep(0)  # (2) queued the change
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await out.flush()
        assert [s for s in kafka.sent() if s[1] == b"a/3"] == [(ALERTS, b"a/3", b"stalled", 0),
                                                              (CHANGELOG, b"a/3", b"part", 0)]

    asyncio.run(scenario())


def test_a_flush_cancelled_half_way_through_its_batches_sends_the_rest_next_time() -> None:
    async def scenario() -> None:
        out, kafka = output(batch_size=2)
        for i in range(5):
            out.publish(ALERTS, 0, f"a/{i}".encode(), b"stalled")
        real = kafka.send_batch
        calls = {"n": 0}

        async def slow_second(batch: Batch, topic: str, *, partition: int) -> Any:
            calls["n"] += 1
            if calls["n"] == 2:
                await asyncio.Event().wait()  # the accumulator full: cancelled while waiting for room
            return await real(batch, topic, partition=partition)

        kafka.send_batch = slow_second  # type: ignore[method-assign]
        flushing = asyncio.create_task(out.flush())
        while calls["n"] < 2:
            await asyncio.sleep(0)
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        kafka.send_batch = real  # type: ignore[method-assign]
        await out.flush()
        assert sorted(kafka.sent()) == [(ALERTS, f"a/{i}".encode(), b"stalled", 0) for i in range(5)]  # once each

    asyncio.run(scenario())
