"""When faust's consumer hands a record to the agent's queue without ``wait_first``
(streams/internals/lean_consumer.py):
only when the conductor's delivery cannot wait for anything; and how it hands the records of the processor's
topics to their inbox instead. Real faust objects, no broker: the app is never started."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import faust
import pytest

from streams.internals import lean_consumer
from streams.processor.inbox import Inbox


@pytest.fixture()
def app() -> Iterator[faust.App]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app = faust.App("drain-test", broker="kafka://127.0.0.1:1", store="memory://", stream_buffer_maxsize=4)
    lean_consumer.install(app, {"direct": Inbox(3)})
    app.flow_control.resume()  # as faust does once a rebalance is done
    yield app
    asyncio.set_event_loop(None)
    loop.close()


def subscribe(app: faust.App, topic: str, channels: int = 1) -> list:
    """Channels subscribed to ``topic`` as faust's conductor indexes them after a rebalance."""
    made = [app.topic(topic) for _ in range(channels)]
    app.topics._topic_name_index[topic] = set(made)
    return made


def test_the_app_runs_the_lean_consumer(app: faust.App) -> None:
    assert isinstance(app.consumer, lean_consumer.LeanConsumer)


def test_a_second_install_after_the_consumer_exists_is_refused(app: faust.App) -> None:
    app.consumer  # noqa: B018 - created
    with pytest.raises(RuntimeError, match="consumer exists already"):
        lean_consumer.install(app)


def test_a_record_goes_straight_to_a_queue_with_room(app: faust.App) -> None:
    subscribe(app, "log", channels=2)
    assert app.consumer.can_deliver_now("log")
    assert app.consumer.can_deliver_now("a topic nobody reads")  # delivered to no one: nothing to wait for


def test_not_when_one_queue_of_the_topic_is_full(app: faust.App) -> None:
    roomy, full = subscribe(app, "log", channels=2)
    for n in range(4):
        full.queue.put_nowait(n)
    assert full.queue.full() and not roomy.queue.full()
    assert not app.consumer.can_deliver_now("log")
    assert app.consumer.can_deliver_now("other")


def test_not_while_the_flow_is_suspended_for_a_rebalance(app: faust.App) -> None:
    subscribe(app, "log")
    app.consumer.stop_flow()  # faust, as a rebalance begins
    assert not app.consumer.can_deliver_now("log")
    app.consumer.resume_flow()
    assert app.consumer.can_deliver_now("log")
    app.flow_control.suspend()
    assert not app.consumer.can_deliver_now("log")


def test_not_while_faust_producer_buffer_is_over_its_limit(app: faust.App) -> None:
    subscribe(app, "log")
    buffer = app.producer.buffer
    for n in range(buffer.max_messages):
        buffer.pending.put_nowait(n)
    assert app.consumer.can_deliver_now("log")  # at the limit the conductor does not wait yet
    buffer.pending.put_nowait("one more")
    assert not app.consumer.can_deliver_now("log")


# -- the processor's topics: straight to their inbox -----------------------------------------------------

def inbox_of(app: faust.App) -> Inbox:
    return app.consumer.inboxes["direct"]


def test_an_inbox_hands_over_its_records_in_order_and_is_bounded(app: faust.App) -> None:
    inbox = Inbox(2)
    assert inbox.take() == [] and not inbox.full()
    inbox.put("a")
    inbox.put("b")
    assert inbox.full() and len(inbox) == 2
    inbox.put("c")  # over its size all the same: the drain loop is what checks for room first
    assert inbox.take() == ["a", "b", "c"] and len(inbox) == 0 and not inbox.full()


def test_an_inbox_wakes_its_agent_and_the_drain_loop(app: faust.App) -> None:
    loop = asyncio.get_event_loop()
    inbox = Inbox(1)

    async def scenario() -> None:
        waiting = asyncio.ensure_future(inbox.wait())
        await asyncio.sleep(0)
        assert not waiting.done()
        inbox.put("a")
        await asyncio.wait_for(waiting, 1)  # the agent is woken
        room = asyncio.ensure_future(inbox.room())
        await asyncio.sleep(0)
        assert not room.done()  # full: the drain loop waits
        inbox.take()
        await asyncio.wait_for(room, 1)

    loop.run_until_complete(scenario())


def test_a_record_goes_to_its_inbox_only_with_the_flow_active_and_room(app: faust.App) -> None:
    inbox = inbox_of(app)
    assert app.consumer.can_put_now(inbox)
    app.consumer.stop_flow()
    assert not app.consumer.can_put_now(inbox)
    app.consumer.resume_flow()
    app.flow_control.suspend()
    assert not app.consumer.can_put_now(inbox)
    app.flow_control.resume()
    for n in range(3):
        inbox.put(n)
    assert not app.consumer.can_put_now(inbox)
    inbox.take()
    assert app.consumer.can_put_now(inbox)


def test_a_record_waiting_for_room_is_put_once_there_is_and_abandoned_when_a_rebalance_begins(app: faust.App) -> None:
    loop = asyncio.get_event_loop()
    inbox = inbox_of(app)

    async def scenario() -> None:
        for n in range(3):
            inbox.put(n)
        putting = asyncio.ensure_future(app.consumer.put_when_ready(inbox, "waited"))
        await asyncio.sleep(0)
        assert not putting.done()
        assert inbox.take() == [0, 1, 2]
        await asyncio.wait_for(putting, 1)
        assert inbox.take() == ["waited"]

        app.consumer.stop_flow()  # a rebalance: faust seeks back to the committed offsets after it
        await asyncio.wait_for(app.consumer.put_when_ready(inbox, "abandoned"), 1)
        assert inbox.take() == []

    loop.run_until_complete(scenario())
