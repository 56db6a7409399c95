"""When faust's consumer hands a record to the agent's queue without ``wait_first`` (streams/processor/drain.py):
only when the conductor's delivery cannot wait for anything. Real faust objects, no broker: the app is never
started."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import faust
import pytest

from streams.processor import drain


@pytest.fixture()
def app() -> Iterator[faust.App]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app = faust.App("drain-test", broker="kafka://127.0.0.1:1", store="memory://", stream_buffer_maxsize=4)
    drain.install(app)
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
    assert isinstance(app.consumer, drain.LeanConsumer)


def test_a_second_install_after_the_consumer_exists_is_refused(app: faust.App) -> None:
    app.consumer  # noqa: B018 - created
    with pytest.raises(RuntimeError, match="consumer exists already"):
        drain.install(app)


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
