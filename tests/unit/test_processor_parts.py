"""The processor's parts on their own (streams/processor/agent.py, effects.py, state.py), with plain objects in
place of faust's consumer and Kafka: the agent's loop holds what it takes while a rebalance settles and
handles it after, in order; never acks a record a rebalance overtook; acks a dead-lettered record with the
next one handled; stops for good after too many rejects. A transition is applied only while its event is
live, its alerts and snapshot published before its table changes are held. That the parts work together in
a real worker is shown on the real broker (tests/integration/test_processor.py, tests/faults/)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from streams.processor.agent import AgentLoop
from streams.processor.dead_lettering import Rejected
from streams.processor.effects import Effects, StaleEvent
from streams.processor.inbox import Inbox
from streams.processor.metrics import ProcessorMetrics
from streams.processor.rejects import TooManyRejects
from streams.processor.rules import Transition
from streams.processor.watch import DueIndex


@dataclass
class Record:
    offset: int
    generation_id: int = 1
    topic: str = "log"

    @property
    def tp(self) -> Any:
        return type("TP", (), {"topic": self.topic, "partition": 0})()


@dataclass
class Flow:
    """What the agent asks of faust's rebalances (rebalance.Rebalances)."""

    generation: int = 1
    restoring: bool = False
    taken: int = -1

    def settling(self) -> bool:
        return self.restoring

    def take(self, message: Any) -> None:
        self.taken = message.generation_id

    def live(self) -> bool:
        return not self.restoring and self.taken == self.generation


@dataclass
class Worker:
    flow: Flow = field(default_factory=Flow)
    handled: list[int] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)
    crashed: list[BaseException] = field(default_factory=list)
    fail: dict[int, type[BaseException]] = field(default_factory=dict)

    def loop(self) -> tuple[AgentLoop, Inbox]:
        inbox = Inbox(100)

        async def handle(message: Record) -> None:
            error = self.fail.get(message.offset)
            if error is not None:
                raise error("judged and refused")
            self.handled.append(message.offset)

        async def crash(exc: BaseException) -> None:
            self.crashed.append(exc)

        return AgentLoop(inbox, self.flow, handle, lambda m: self.acked.append(m.offset), crash,  # type: ignore[arg-type]
                         ProcessorMetrics()), inbox


async def until(condition: Any) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.001)  # a turn for the agent's task, bounded
    raise AssertionError("not reached")


def test_records_taken_while_a_rebalance_settles_are_handled_after_it_in_order() -> None:
    async def scenario() -> None:
        worker = Worker()
        agent, inbox = worker.loop()
        ended: asyncio.Future = asyncio.get_running_loop().create_future()
        running = asyncio.create_task(agent.run(ended))
        inbox.put(Record(0))
        await until(lambda: worker.acked == [0])
        worker.flow.restoring, worker.flow.generation = True, 2  # a rebalance: the tables are being restored
        for offset in (1, 2):
            inbox.put(Record(offset, generation_id=2))  # fetched in the new generation, before the restore ended
        await until(lambda: len(agent.held) == 2)
        assert worker.handled == [0]  # neither judged against tables still being restored, nor dropped
        worker.flow.restoring = False
        inbox.put(Record(3, generation_id=2))
        await until(lambda: worker.acked == [0, 1, 2, 3])
        assert worker.handled == [0, 1, 2, 3]
        ended.set_exception(StopAsyncIteration())
        await running  # faust's end of the agent: the loop returns

    asyncio.run(scenario())


def test_a_record_a_rebalance_overtook_is_neither_handled_nor_acked() -> None:
    async def scenario() -> None:
        worker = Worker(flow=Flow(generation=3))
        agent, _ = worker.loop()
        await agent.consume(Record(7, generation_id=2))  # fetched before the rebalance
        assert worker.handled == [] and worker.acked == []
        worker.fail[8] = StaleEvent  # overtaken while being handled
        await agent.consume(Record(8, generation_id=3))
        assert worker.acked == []

    asyncio.run(scenario())


def test_a_dead_lettered_record_is_acked_with_the_next_one_handled() -> None:
    async def scenario() -> None:
        worker = Worker(fail={1: Rejected})
        agent, _ = worker.loop()
        await agent.consume(Record(1))
        assert worker.acked == []  # nothing past it committed until a later record succeeds
        await agent.consume(Record(2))
        assert worker.acked == [1, 2]

    asyncio.run(scenario())


def test_too_many_rejects_stop_the_worker_and_nothing_more_is_acked() -> None:
    async def scenario() -> None:
        worker = Worker(fail={1: Rejected, 2: TooManyRejects})
        agent, _ = worker.loop()
        await agent.consume(Record(1))
        await agent.consume(Record(2))
        await agent.consume(Record(3))
        assert len(worker.crashed) == 1 and worker.acked == [] and worker.handled == []

    asyncio.run(scenario())


class Output:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def publish(self, topic: str, partition: int, key: bytes, value: bytes) -> None:
        self.calls.append(("alert", topic, key, value))

    def publish_latest(self, topic: str, partition: int, key: bytes, value: Any, encode: Any = None) -> None:
        self.calls.append(("snapshot", topic, key))

    def hold(self, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
        self.calls.append(("hold", topic, key, value))


class Tables:
    def write(self, name: str, partition: int, change: Transition) -> list[tuple]:
        return [("t-changelog", partition, b'"' + name.encode() + b'"', b"{}")]


def test_a_transition_is_published_then_written_and_only_while_its_event_is_live() -> None:
    output, live = Output(), {"now": True}
    index = DueIndex()
    effects = Effects(output, Tables(), index, None, ProcessorMetrics(), "sessions", "alerts",  # type: ignore[arg-type]
                      86400, lambda: live["now"])
    alert = {"kind": "transcode_stalled", "deadline": 1}
    change = Transition(writes={"transcoded": {}}, before=None, after={"sla_state": "pending", "sla_deadline": 5},
                        alerts=[alert])
    effects.apply("a/1", b"a/1", 0, change, [b"stalled"])
    assert output.calls == [("alert", "alerts", b"a/1", b"stalled"), ("snapshot", "sessions", b"a/1"),
                            ("hold", "t-changelog", b'"a/1"', b"{}")]
    assert len(index) == 1  # its stall is due: the watch knows it
    live["now"] = False
    with pytest.raises(StaleEvent):
        effects.apply("a/2", b"a/2", 0, change, [])
    assert len(output.calls) == 3  # nothing of a stale event
