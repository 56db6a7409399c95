"""The processor's session state: one faust table per stage of a session (rules.TABLES), each keyed
``{app_id}/{conf_num}`` and backed by its changelog topic (``<app id>-<table>-changelog``, the webhook log's
partition count). A session's state is the combination of its parts (rules.combine).

The agent reads and writes the memory stores' dicts directly: the tables' own get() and set() add sensors,
key lookups and a changelog send per call (faust's memory store keeps one dict for good). A change is not
sent by the table: :meth:`SessionTables.write` applies it to the stores and returns its changelog records,
which the caller holds for output.py (sent after the event's snapshot and alerts, the order at-least-once
needs). The changelogs are the durable state: a worker restores the tables from them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import faust
import orjson

from streams import internals
from streams.config import Settings
from streams.processor import rules
from streams.processor.watch import partition_of

ChangelogRecord = tuple[str, int, bytes, bytes | None]  # changelog topic, partition, key, value (None: deleted)


class SessionTables:
    """The stage tables of ``app`` (created here, before the app starts), read and written as plain dicts."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.partitions = settings.partitions
        self.tables: dict[str, Any] = {name: app.Table(name, default=None, partitions=settings.partitions,
                                                       help=f"session parts: {name}") for name in rules.TABLES}
        if any((t.key_serializer, t.value_serializer) != ("json", "json") for t in self.tables.values()):
            raise RuntimeError("the processor's tables must have JSON changelogs: write() encodes them with orjson")
        self.changelogs = {name: table.changelog_topic.get_topic_name() for name, table in self.tables.items()}
        # taken at first use: a store is created on the worker's event loop
        self._stores: dict[str, dict] = {}

    def parts_of(self, name: str) -> dict[str, dict | None]:
        """The session's part in every table (None where it has none)."""
        stores = self._stores
        if not stores:
            stores.update({t: internals.memory_store(self.tables[t]) for t in rules.TABLES})
        return {t: store.get(name) for t, store in stores.items()}

    def write(self, name: str, partition: int, change: rules.Transition) -> list[ChangelogRecord]:
        """Apply ``change``'s parts to the stores; returns their changelog records, on the event's
        ``partition`` (as faust's table write does), encoded as the tables' json serializer does (orjson, for
        these plain dicts the same bytes), without its registry. The stores are filled: ``change`` was judged
        on :meth:`parts_of`."""
        out: list[ChangelogRecord] = []
        key = None
        for t, part in change.writes.items():
            store = self._stores[t]
            if part is None:
                if name not in store:
                    continue
                del store[name]
                value = None
            else:
                store[name] = part
                value = orjson.dumps(part)
            if key is None:
                key = orjson.dumps(name)
            out.append((self.changelogs[t], partition, key, value))
        return out

    def names(self) -> list[str]:
        """Every session in any table (those of every partition this worker holds)."""
        return list({name for table in self.tables.values() for name in list(table.keys())})

    def drop_not_owned(self, active: Iterable[Any]) -> None:
        """Forget, in this process only (never in the changelog), the sessions of partitions whose changelog
        is not among ``active`` (faust's active recovery partitions: topic and partition).

        faust's memory store keeps the keys this worker wrote itself after their partition moved away (it
        only drops what it restored), and a stale key could come back to life if the partition returned
        after the owner's tombstone was compacted away. A partition whose changelog is not an active
        recovery partition of this worker has no recovery offset here, so should it come back, faust
        replays its changelog from the start: dropping its keys loses nothing. Synchronous, so the active
        set cannot change underneath."""
        active = list(active)
        for table in self.tables.values():
            data = internals.memory_store(table)
            if data is None:
                continue
            changelog = table.changelog_topic.get_topic_name()
            keep = {tp.partition for tp in active if tp.topic == changelog}
            for name in [k for k in data if isinstance(k, str) and partition_of(k, self.partitions) not in keep]:
                del data[name]
