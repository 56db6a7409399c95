"""faust's consumer with a leaner hand-over of each fetched record to the streams.

faust-streaming 0.15.3 hands every fetched record to its conductor through ``Service.wait_first(
callback(message), suspend_flow.wait())``, so that a rebalance beginning while a delivery waits (its
stream's queue full) abandons that delivery. ``wait_first`` wraps the delivery, the rebalance's event and
the consumer's stopped and crashed events in four tasks, waits on them with ``asyncio.wait`` and cancels
three: the largest share of faust's own per-record cost (with this consumer the processor went from 4,400
to 6,300 events/s on a backlog, about 70 µs of the event loop per record; bench/README.md).

:class:`LeanConsumer` delivers directly when nothing can make the delivery wait (the flow is active, the
producer buffer below its limit, every queue of the record's topic below its limit), and through faust's
``wait_first`` otherwise. Everything else is faust's loop as it is: the read offsets, the gaps, the commit
every ``broker_commit_every`` records, the yield to the event loop every 100 records.

Why a direct delivery cannot keep a record back from a rebalance: the conductor's delivery awaits nothing
when its preconditions hold (faust's flow control and producer buffer are checked here, and a queue with
room is written without waiting); the one lock it takes is held only while faust rebuilds its topic
indices, briefly. A delivery that raced a rebalance reaches a queue whose events the agent judges by their
consumer generation, as it does every event.

Made for the processor's agent, which takes a few hundred events per turn of the event loop. An agent
that iterates its stream the usual way (``async for event in stream``, one event per turn) runs slower on
it (bench/faust_bare.py's shipped agent on it: 8,400 against 12,400 events/s): this loop delivers up to 100 records per
turn, so the queue fills, and the likely cause, not verified, is faust pausing and resuming the partitions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, cast

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaDriverConsumer
from mode import Service


class LeanConsumer(AIOKafkaDriverConsumer):
    """faust's aiokafka consumer whose drain loop delivers without ``wait_first`` when nothing can block."""

    def channels_of(self, topic: str) -> Iterable[Any]:
        """The channels (streams) subscribed to ``topic`` (the conductor's index, rebuilt at each rebalance)."""
        return self.app.topics._topic_name_index.get(topic, ())

    def can_deliver_now(self, topic: str) -> bool:
        """Whether the conductor would deliver a record of ``topic`` without waiting for anything."""
        if self.suspend_flow.is_set() or not self.app.flow_control.is_active():
            return False
        buffer = self.app.producer.buffer
        if buffer.size > buffer.max_messages:  # the conductor would wait until it ebbs
            return False
        return all(not channel.queue.full() for channel in self.channels_of(topic))

    async def _drain_messages(self, fetcher: faust.types.ServiceT) -> None:  # noqa: C901 - faust's loop, as is
        # faust.transport.consumer.Consumer._drain_messages (0.15.3) with one change, marked below
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        flag_consumer_fetching = CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        can_deliver_now = self.can_deliver_now
        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset:
                                if acks_enabled_for(message.topic):
                                    await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None:
                                if self._n_acked >= commit_every:
                                    self._n_acked = 0
                                    await self.commit()
                            # the change: faust always runs ``wait_first(callback(message), suspend_flow.wait())``
                            if can_deliver_now(tp.topic):
                                await callback(message)
                            else:
                                await self.wait_first(callback(message), self.suspend_flow.wait())
                            set_read_offset(tp, offset)
                    unset_flag(flag_consumer_fetching)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)


def install(app: faust.App) -> None:
    """Make ``app`` create a :class:`LeanConsumer` (before anything has created its consumer)."""
    if app._consumer is not None:
        raise RuntimeError("the app's consumer exists already: install the lean consumer before it is created")
    app.transport.Consumer = LeanConsumer  # type: ignore[misc]

