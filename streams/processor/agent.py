"""The processor agent's loop: takes the records faust's consumer handed to the inbox, in the order fetched,
has each handled (handlers.py) and acks it.

The agent subscribes faust to the topics (their partitions are assigned and committed with the tables'),
but its stream stays empty: the consumer hands the records to the inbox (lean_consumer.LeanConsumer),
without faust's per-record event, conductor, queue and stream iterator (a forced event-loop turn, sensors,
the current-event context, three nested async generators). What that path did for the agent, this loop
does itself: a record of an earlier consumer generation, or one a rebalance overtook while it was handled,
is not applied nor acked (faust also clears its queues at a rebalance; the inbox keeps them until they are
judged so). A record whose judgement fails is dead-lettered and acked once a later record has been handled;
one whose handling raises otherwise (Kafka unreachable) is not acked: no commit passes it, and the worker
processes it again when it restarts.

A record taken while faust settles a rebalance (restores the tables, seeks the partitions) waits until it
is done, and is then handled before anything taken after it (restore_buffer.py says why it is neither
judged meanwhile nor dropped).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from faust.types import Message

from streams.processor.dead_lettering import Rejected
from streams.processor.effects import StaleEvent
from streams.processor.inbox import Inbox
from streams.processor.metrics import ProcessorMetrics
from streams.processor.rebalance import Rebalances
from streams.processor.rejects import TooManyRejects
from streams.processor.restore_buffer import RestoreBuffer

log = logging.getLogger("streams.processor")

YIELD_EVERY = 200  # events handled between two turns of the event loop (the sender, the watch, the fetcher)
HELD_POLL_S = 0.05  # with events held during a restore, how often the agent looks whether it has ended


class AgentLoop:
    """``handle`` handles one record (raises :class:`Rejected` when it was dead-lettered, :class:`StaleEvent`
    when a rebalance overtook it); ``ack`` acks a record to faust's consumer; ``crash`` stops the worker
    with an error."""

    def __init__(self, inbox: Inbox, rebalances: Rebalances, handle: Callable[[Message], Awaitable[None]],
                 ack: Callable[[Message], Any], crash: Callable[[BaseException], Awaitable[None]],
                 metrics: ProcessorMetrics) -> None:
        self.inbox, self.rebalances, self.handle, self.ack, self.crash = inbox, rebalances, handle, ack, crash
        self.metrics = metrics
        self.held: RestoreBuffer[Message] = RestoreBuffer()
        self.rejected: list[Message] = []  # dead-lettered, acked once a later record is handled
        self.handled = 0
        self.halted = False

    async def consume(self, message: Message) -> None:
        """Handle ``message`` and ack it, unless a rebalance has overtaken it (then its partition's owner
        processes it from the committed offset) or it was dead-lettered (acked with the next handled one)."""
        if self.halted:
            return  # the worker is stopping (too many rejects): nothing more is handled nor acked
        rebalances = self.rebalances
        rebalances.take(message)
        if not rebalances.live():
            return  # fetched before a rebalance: not acked, the partition's owner processes it
        try:
            await self.handle(message)
        except StaleEvent as exc:
            log.info("not applied, the partition's owner processes it from the committed offset: %s", exc)
            return
        except Rejected:
            # Not acked yet: if the processor itself is at fault, nothing after its last handled record is
            # committed, and a restarted worker stops at the same place instead of dead-lettering more.
            self.rejected.append(message)
            return
        except TooManyRejects as exc:
            self.halted = True
            log.critical("stopping the worker: %s", exc)
            await self.crash(exc)  # the worker exits with an error; the rejected records are not acked
            return
        ack = self.ack
        for earlier in self.rejected:
            if earlier.generation_id == rebalances.taken:
                ack(earlier)  # else: revoked meanwhile, the partition's owner re-judges it
        self.rejected.clear()
        ack(message)
        self.handled += 1
        self.metrics.handled[message.tp.topic] += 1
        if self.handled % YIELD_EVERY == 0:
            await asyncio.sleep(0)  # a long backlog never returns to the loop by itself

    async def run(self, ended: asyncio.Future) -> None:
        """Until ``ended`` (faust's end of the agent: its stream's queue) resolves: with StopAsyncIteration
        (the worker stops, or the agent is restarted) it returns, as faust's own iterator takes it; with
        anything else it raises."""
        inbox, held, settling = self.inbox, self.held, self.rebalances.settling
        while True:
            released = held.release(settling())
            if released:
                log.info("rebalance done: handling the %d records that arrived meanwhile", len(released))
            for message in released:
                await self.consume(message)  # re-checks the generation: a rebalance since drops them
            if not len(inbox):
                waiting = asyncio.ensure_future(inbox.wait())
                done, _ = await asyncio.wait({waiting, ended}, timeout=HELD_POLL_S if len(held) else None,
                                             return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                if ended in done:
                    if isinstance(ended.exception(), StopAsyncIteration):
                        return
                    ended.result()  # anything else the stream raises is the agent's crash
                    raise RuntimeError("an event reached the processor's stream instead of its inbox")
                if not len(inbox):
                    continue  # the restore may have ended
            for taken in inbox.take():
                for message in held.offer(taken, settling()):
                    await self.consume(message)

    async def process(self, stream: faust.Stream) -> None:
        """The agent's body: the stream carries only faust's end of the agent, which faust waits for."""
        await stream.maybe_start()
        ended = asyncio.ensure_future(stream.channel.queue.get())
        try:
            await self.run(ended)
        finally:
            ended.cancel()
