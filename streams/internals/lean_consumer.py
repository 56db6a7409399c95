"""faust's consumer with a leaner hand-over of each fetched record to the agents (its private members are
listed in :data:`streams.internals.MEMBERS`).

faust-streaming 0.15.3 hands every fetched record to its conductor through ``Service.wait_first(
callback(message), suspend_flow.wait())``, so that a rebalance beginning while a delivery waits (its
stream's queue full) abandons that delivery. ``wait_first`` wraps the delivery, the rebalance's event and
the consumer's stopped and crashed events in four tasks, waits on them with ``asyncio.wait`` and cancels
three: the largest share of faust's own per-record cost (with this consumer the processor went from 4,400
to 6,300 events/s on a backlog, about 70 µs of the event loop per record; bench/README.md). Past that, the
conductor wraps each record in an event, decodes its key and value, puts it on the stream's queue, and the
stream's iterator takes it with sensors and context around it: about 10 µs more per record.

:class:`LeanConsumer` hands the records of the topics that have an :class:`Inbox` (the processor's log and
command topic) straight to it: a list append, when the flow is active and the inbox has room, and through
``wait_first`` otherwise. The agent takes everything waiting at once, judges each record's consumer
generation and acks it itself (``consumer.ack``). A record of any other topic goes to faust's conductor,
directly when nothing can make that delivery wait (the flow active, the producer buffer below its limit,
every queue of the record's topic below its limit), through faust's ``wait_first`` otherwise.
Everything else is faust's loop as it is: the read offsets, the gaps, the commit every
``broker_commit_every`` records, the yield to the event loop every 100 records delivered to the conductor
(every 5,000 put in an inbox: yielding every 100 let the agent empty the inbox as fast as it was filled, so
the next fetch was asked for only once the agent had nothing left to do, a fifth of its time idle).

Why a direct delivery cannot keep a record back from a rebalance: an inbox put, and the conductor's
delivery when its preconditions hold, await nothing (faust's flow control and producer buffer are checked
here, and a queue with room is written without waiting); the one lock the conductor takes is held only
while faust rebuilds its topic indices, briefly. A delivery that raced a rebalance reaches a queue or an
inbox whose records the agent judges by their consumer generation, as it does every record.

Made for the processor's agent, which takes a few hundred events per turn of the event loop. An agent
that iterates its stream the usual way (``async for event in stream``, one event per turn) runs slower on
the conductor path (bench/faust_bare.py's shipped agent on it: 8,400 against 12,400 events/s): this loop
delivers up to 100 records per turn, so the queue fills, and the likely cause, not verified, is faust
pausing and resuming the partitions.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, cast

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaDriverConsumer
from mode import Service

from streams.internals import consumer_created, topic_channels
from streams.processor.inbox import Inbox

INBOX_YIELD_SHARE = 0.02  # what a record put in an inbox counts towards the drain loop's yield (1: faust's)


class LeanConsumer(AIOKafkaDriverConsumer):
    """faust's aiokafka consumer whose drain loop delivers without ``wait_first`` when nothing can block, and
    hands the records of the topics in ``inboxes`` to their :class:`Inbox` instead of faust's conductor."""

    inboxes: ClassVar[Mapping[str, Inbox]] = {}  # set per app by :func:`install`

    def channels_of(self, topic: str) -> Iterable[Any]:
        """The channels (streams) subscribed to ``topic`` (the conductor's index, rebuilt at each rebalance)."""
        return topic_channels(self.app, topic)

    def can_deliver_now(self, topic: str) -> bool:
        """Whether the conductor would deliver a record of ``topic`` without waiting for anything."""
        if self.suspend_flow.is_set() or not self.app.flow_control.is_active():
            return False
        buffer = self.app.producer.buffer
        if buffer.size > buffer.max_messages:  # the conductor would wait until it ebbs
            return False
        return all(not channel.queue.full() for channel in self.channels_of(topic))

    def can_put_now(self, inbox: Inbox) -> bool:
        """Whether a record can go to ``inbox`` at once: the flow is active (no rebalance) and it has room."""
        return not (self.suspend_flow.is_set() or not self.app.flow_control.is_active() or inbox.full())

    async def put_when_ready(self, inbox: Inbox, message: Any) -> None:
        """Put ``message`` once the flow is active and ``inbox`` has room; not at all once the consumer's flow
        is suspended (a rebalance began: faust seeks back to the committed offsets after it)."""
        while not self.suspend_flow.is_set():
            if not self.app.flow_control.is_active():
                await self.app.flow_control.acquire()
            elif inbox.full():
                await inbox.room()
            else:
                inbox.put(message)
                return

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
        can_put_now = self.can_put_now
        inbox_of = self.inboxes.get
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
                        inbox = inbox_of(tp.topic)
                        # the change: a record put in an inbox counts for less towards the next yield (a put
                        # is a list append; yielding every 100 let the agent drain the inbox as fast as it
                        # was filled, and the next fetch waited until the agent had nothing left)
                        num_since_yield += 1 if inbox is None else INBOX_YIELD_SHARE
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
                            if inbox is not None:
                                if can_put_now(inbox):
                                    inbox.put(message)
                                else:  # as faust's delivery: a rebalance beginning meanwhile abandons it
                                    await self.wait_first(self.put_when_ready(inbox, message),
                                                          self.suspend_flow.wait())
                            elif can_deliver_now(tp.topic):
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


def install(app: faust.App, inboxes: Mapping[str, Inbox] | None = None) -> None:
    """Make ``app`` create a :class:`LeanConsumer` (before anything has created its consumer) that hands the
    records of each topic in ``inboxes`` to that :class:`Inbox`. An agent must still subscribe to those
    topics (``@app.agent``), so that faust assigns their partitions and commits what is acked."""
    if consumer_created(app):
        raise RuntimeError("the app's consumer exists already: install the lean consumer before it is created")
    consumer = type("LeanConsumer", (LeanConsumer,), {"inboxes": dict(inboxes or {})})
    app.transport.Consumer = consumer  # type: ignore[misc]

