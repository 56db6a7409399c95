"""The processor's session state: one faust table per stage of a session (rules.TABLES), each keyed
``{app_id}/{conf_num}`` and backed by its changelog topic (``<app id>-<table>-changelog``, the webhook log's
partition count), on disk in faust's RocksDB store (rocksdict) with a write-back cache in front. A session's
state is the combination of its parts (rules.combine). A change is not sent by the table:
:meth:`SessionTables.write` holds it in the cache and returns its changelog records, which the caller holds
for output.py (sent after the event's snapshot and alerts, the order at-least-once needs).

Where the state lives
    Every table (rules.TABLES) is a faust table on ``store="rocksdb://"`` with the ``rocksdict`` driver: one
    RocksDB database per table and partition, under the worker's own directory (:func:`take_slot`). So a
    worker's memory no longer grows with its sessions (bench/state_memory.py), and faust keeps, in each
    database, the changelog offset it holds up to: a worker that gets a partition back restores only the
    changelog's tail after that offset instead of the whole changelog.

The write-back cache (:class:`PartStore`)
    The agent never writes RocksDB event by event. What an event changes is held in :attr:`PartStore.pending`
    (decoded, and as the bytes its changelog record carries) and read from there by the next events; at each
    flush, once the broker has acknowledged the changelog records (output.py), :meth:`PartStore.persist`
    writes them to RocksDB in one ``WriteBatch`` per table and partition *together with* the offset of the
    last changelog record written to that partition (faust's ``offset_key``, what its recovery seeks past).
    One batch is atomic, so a database always holds a prefix of its changelog and the offset of that prefix:
    a worker killed at any moment restores exactly what the changelog has beyond what the database holds.
    A change is never in RocksDB before its changelog record is acknowledged: otherwise a restarted worker
    would find the change in its database, re-process the uncommitted event as a repeat (merging is
    idempotent) and never write the changelog record, which any other worker restoring the partition needs.
    As Kafka Streams' record cache, the events of one commit interval (about a second) read each other's
    parts from memory; a part not changed within it is read from RocksDB (about a microsecond a read; a
    missing part is answered by the bloom filter).

A partition that moves away (:meth:`PartStore.drop_unowned`)
    faust closes a revoked partition's databases but leaves their files. Once a rebalance is complete, the
    databases of every partition this worker does not own are deleted, with whatever the cache held for
    them: if the partition came back after the new owner's tombstones were compacted away (the changelog
    keeps a tombstone ``delete.retention.ms``, a day by default), a kept database would bring its deleted
    sessions back to life. A partition that comes back is restored in full. A worker that restarts keeps the
    databases of the partitions it gets back, restored from their offsets, but only if it stopped less than
    :data:`MAX_LOCAL_AGE_S` ago (:func:`take_slot`): the same rule for the time it was away.

One directory per worker process (:func:`take_slot`)
    RocksDB locks a database for one process, and a partition's database must be written by its owner only.
    Workers on one machine share ``<data dir>/processor/<app id>`` (``enx-streams dev``, the tests' two
    workers, ``enx-streams rebuild``'s replay workers; the app id names the changelogs, and a replay under
    another consumer group has its own): each takes the first slot ``w0``, ``w1``, ... whose lock no
    other process holds (``flock``, released when the process exits, however it exits), and keeps it while
    it runs. A restarted worker takes the lowest free slot again, usually its own: any slot's databases
    are valid for whichever partitions the group gives it (each is a prefix of its changelog), and the
    others are deleted by :meth:`drop_unowned`.
"""

from __future__ import annotations

import fcntl
import heapq
import logging
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import faust
import orjson

from streams import internals
from streams.config import Settings
from streams.processor import rules
from streams.processor.watch import partition_of

log = logging.getLogger("streams.processor")

# A slot's databases unused for longer than this are deleted at start (restored in full from the changelogs):
# well below the changelogs' delete.retention.ms (a day by default), so no tombstone written while the worker
# was away can have been compacted away yet.
MAX_LOCAL_AGE_S = 6 * 3600.0
STAMP = "last-persisted"  # touched at every persist: when the slot's databases were last written

# RocksDB's memory per table and partition database (faust's defaults are 64 MiB memtables, three of them,
# and a 2 GiB block cache, per database: with six tables and eight partitions that is no bound at all).
ROCKSDB_OPTIONS: dict[str, Any] = {
    "driver": "rocksdict",
    "write_buffer_size": 4 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "block_cache_size": 4 * 1024 * 1024,
}


class Slot:
    """A worker's own directory under ``<data dir>/processor``, locked while the process runs."""

    def __init__(self, path: Path, lock: TextIO) -> None:
        self.path = path
        self._lock = lock

    def stamp(self) -> None:
        (self.path / STAMP).touch()

    def release(self) -> None:
        self._lock.close()


def take_slot(base: Path, clock: Any = time.time, max_age_s: float = MAX_LOCAL_AGE_S) -> Slot:
    """The first slot ``base/w<i>`` no other process holds, locked until this process exits (or
    :meth:`Slot.release`). A slot last written more than ``max_age_s`` ago is emptied first."""
    base.mkdir(parents=True, exist_ok=True)
    for i in range(1024):
        path = base / f"w{i}"
        lock = open(base / f"w{i}.lock", "a")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        stamp = path / STAMP
        if path.exists() and (not stamp.exists() or clock() - stamp.stat().st_mtime > max_age_s):
            log.info("processor state in %s last written %s: deleted, the changelogs restore it in full", path,
                     "never" if not stamp.exists() else f"{clock() - stamp.stat().st_mtime:.0f} s ago")
            shutil.rmtree(path)
        path.mkdir(exist_ok=True)
        return Slot(path, lock)
    raise RuntimeError(f"no free processor slot under {base}: 1024 workers hold one")


def clear_slots(base: Path) -> list[Path]:
    """Delete every slot's state that no running process holds (``enx-streams rebuild`` recreates the
    changelogs, which makes them meaningless); the slots still held are returned, untouched."""
    held = []
    for lock_path in sorted(base.glob("w*.lock")) if base.exists() else ():
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                held.append(lock_path.with_suffix(""))
                continue
            shutil.rmtree(lock_path.with_suffix(""), ignore_errors=True)
    return held


def encoded(value: Any) -> bytes:
    """``orjson.dumps(value)`` in a bytes object of its own size. orjson 3.13's bytes keep the buffer it wrote
    into, 4 KiB and more each, whatever they hold: a part and its key held for a flush cost 12 KiB instead of
    about 700 bytes, hundreds of MB for a backlog's flush interval (tracemalloc, bench/state_memory.py)."""
    return bytes(memoryview(orjson.dumps(value)))


Parts = dict[str, dict | None]
ChangelogRecord = tuple[str, int, bytes, bytes | None]  # changelog topic, partition, key, value (None: deleted)
_MISSING = object()


class PartStore:
    """The session parts of every table: the changes not yet in RocksDB (``pending``) over the databases.

    ``tables``: table name -> faust table (on the RocksDB store); ``changelogs``: table name -> its changelog
    topic. Use it from the worker's event loop, once the worker has started (faust opens the stores there)."""

    def __init__(self, tables: Mapping[str, Any], changelogs: Mapping[str, str]) -> None:
        self.tables = dict(tables)
        self.table_of = {topic: name for name, topic in changelogs.items()}
        # key bytes -> (partition, {table: (part, the changelog value bytes)}): held until persisted
        self.pending: dict[bytes, tuple[int, dict[str, tuple[dict | None, bytes | None]]]] = {}
        self._dbs: dict[str, Any] | None = None
        # sessions written since the SLA watch's index was cleared (a rebalance; at start it is empty), until
        # its rebuild is done: None then
        self.touched: set[str] | None = set()

    @property
    def dbs(self) -> dict[str, Any]:
        """table -> faust's open databases by partition (the store's own mapping: faust opens and closes them)."""
        if self._dbs is None:
            self._dbs = {t: internals.rocksdb_databases(table) for t, table in self.tables.items()}
        return self._dbs

    def parts(self, name: str, partition: int, key: bytes | None = None) -> Parts:
        """Every table's part of session ``name`` (on ``partition``): the latest change, else RocksDB's."""
        key = orjson.dumps(name) if key is None else key
        held = self.pending.get(key)
        changed = held[1] if held is not None else {}
        out: Parts = {}
        for t, dbs in self.dbs.items():
            mine = changed.get(t, _MISSING)
            if mine is not _MISSING:
                out[t] = mine[0]  # type: ignore[index]
                continue
            db = dbs.get(partition)
            raw = None if db is None else db.get(key)
            out[t] = None if raw is None else orjson.loads(raw)
        return out

    def write(self, table: str, partition: int, key: bytes, part: dict | None, value: bytes | None) -> None:
        """A part changed by an event (None: deleted), ``value`` the bytes its changelog record carries."""
        held = self.pending.get(key)
        if held is None:
            held = self.pending[key] = (partition, {})
        held[1][table] = (part, value)

    def note(self, name: str) -> None:
        """Session ``name`` was just written (its index entry is fresh: a running scan skips it)."""
        if self.touched is not None:
            self.touched.add(name)

    def persist(self, held: Mapping[tuple[str, int, bytes], bytes | None], offsets: Mapping[tuple[str, int], int],
                stamp: Any = None) -> None:
        """The changelog records ``held`` ((topic, partition, key) -> value), acknowledged by the broker, into
        RocksDB: one batch per table and partition with the offset of its last changelog record (``offsets``).
        A partition whose database faust has closed meanwhile (revoked) is skipped whole: its database keeps
        its older prefix, and the changelog has the rest. The cache forgets what is now on disk, unless a later
        event changed it again."""
        from rocksdict import WriteBatch

        batches: dict[tuple[str, int], Any] = {}
        for (topic, partition, key), value in held.items():
            table = self.table_of.get(topic)
            if table is None:
                continue
            batch = batches.get((table, partition))
            if batch is None:
                batch = batches[(table, partition)] = WriteBatch(raw_mode=True)
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        written: set[tuple[str, int]] = set()
        for (table, partition), batch in batches.items():
            db = self.dbs[table].get(partition)
            offset = offsets.get((self.changelog_of(table), partition))
            if db is None or offset is None:
                continue
            batch.put(internals.rocksdb_offset_key(self.tables[table]), str(offset).encode())
            db.write(batch)
            written.add((table, partition))
        for (topic, partition, key), value in held.items():
            table = self.table_of.get(topic)
            if (table, partition) not in written:
                continue
            entry = self.pending.get(key)
            if entry is None:
                continue
            mine = entry[1].get(table)
            if mine is not None and mine[1] is value:  # not changed again since: RocksDB has it now
                del entry[1][table]
                if not entry[1]:
                    del self.pending[key]
        if written and stamp is not None:
            stamp()

    def changelog_of(self, table: str) -> str:
        return next(topic for topic, t in self.table_of.items() if t == table)

    def drop_unowned(self, owned: Mapping[str, set[int]]) -> list[tuple[str, int]]:
        """Delete the databases (and the cached changes) of every partition this worker does not own now:
        ``owned`` is table -> the partitions of its changelog this worker restores. Only closed databases are
        deleted (faust closes a revoked partition's); returns the (table, partition) deleted."""
        deleted = []
        for key in [k for k, (p, changed) in self.pending.items()
                    if not all(p in owned.get(t, ()) for t in changed)]:
            del self.pending[key]
        for t, table in self.tables.items():
            mine = owned.get(t, set())
            for partition, path in internals.rocksdb_partition_paths(table):
                if partition in mine or partition in self.dbs[t]:
                    continue
                try:
                    shutil.rmtree(path)
                except OSError as exc:
                    log.warning("could not delete %s of a partition this worker no longer owns: %r", path, exc)
                    continue
                deleted.append((t, partition))
        return deleted

    def scan(self, partition: int) -> Iterator[tuple[str, Parts]]:
        """Every session of ``partition`` with its parts, for the SLA watch's index: the tables' databases read
        in key order side by side (no read per session and table; each iterator reads a snapshot of its
        database), then the cached changes over them. A session written since the index was cleared is skipped
        (``touched``, kept from then on: the agent indexed it itself with its newer state, which a snapshot may
        predate); one with changes not yet persisted is read whole from the cache and the databases."""
        streams = [_items(t, db, internals.rocksdb_offset_key(self.tables[t]))
                   for t, dbs in self.dbs.items() if (db := dbs.get(partition)) is not None]
        current: bytes | None = None
        parts: Parts = {}
        for key, t, value in heapq.merge(*streams):
            if key != current:
                if current is not None:
                    yield from self._scanned(current, partition, parts)
                current, parts = key, {}
            parts[t] = orjson.loads(value)
        if current is not None:
            yield from self._scanned(current, partition, parts)

    def _scanned(self, key: bytes, partition: int, parts: Parts) -> Iterator[tuple[str, Parts]]:
        name = orjson.loads(key)
        if not isinstance(name, str) or (self.touched is not None and name in self.touched):
            return
        if key in self.pending:
            parts = self.parts(name, partition, key)
        yield name, parts



class SessionTables:
    """The stage tables of ``app`` (created here, before the app starts, on the RocksDB store), read and
    written through :class:`PartStore` (``store``)."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.partitions = settings.partitions
        self.tables: dict[str, Any] = {name: app.Table(name, default=None, partitions=settings.partitions,
                                                       options=dict(ROCKSDB_OPTIONS), help=f"session parts: {name}")
                                       for name in rules.TABLES}
        if any((t.key_serializer, t.value_serializer) != ("json", "json") for t in self.tables.values()):
            raise RuntimeError("the processor's tables must have JSON changelogs: write() encodes them with orjson")
        self.changelogs = {name: table.changelog_topic.get_topic_name() for name, table in self.tables.items()}
        self.store = PartStore(self.tables, self.changelogs)

    def parts_of(self, name: str, partition: int | None = None) -> Parts:
        """The session's part in every table (None where it has none); ``partition``: the session's (the
        log's partitioner, when not given)."""
        return self.store.parts(name, partition_of(name, self.partitions) if partition is None else partition)

    def write(self, name: str, partition: int, change: rules.Transition) -> list[ChangelogRecord]:
        """``change``'s parts into the cache; returns their changelog records, on the event's ``partition`` (as
        faust's table write does), encoded as the tables' json serializer does (orjson, for these plain dicts
        the same bytes), without its registry. RocksDB takes them once output.py has them acknowledged."""
        out: list[ChangelogRecord] = []
        store = self.store
        key = None
        for t, part in change.writes.items():
            if key is None:
                key = encoded(name)
            value = None if part is None else encoded(part)
            store.write(t, partition, key, part, value)
            out.append((self.changelogs[t], partition, key, value))
        store.note(name)
        return out

    def index_cleared(self) -> None:
        """The SLA watch's index was cleared (a rebalance): the sessions written from now on are indexed by the
        agent, and the rebuild's scan skips them (PartStore.scan)."""
        self.store.touched = set()

    def drop_not_owned(self, active: Iterable[Any]) -> None:
        """Delete, on this worker's disk only (never in the changelog), the state of the partitions whose
        changelog is not among ``active`` (faust's active recovery partitions: topic and partition); the
        module doc says why a kept one could bring deleted sessions back. Such a partition has no database
        open here, so should it come back, faust restores it from the changelog's start: deleting it loses
        nothing. Synchronous, so the active set cannot change underneath."""
        active = list(active)
        owned = {t: {tp.partition for tp in active if tp.topic == topic} for t, topic in self.changelogs.items()}
        deleted = self.store.drop_unowned(owned)
        if deleted:
            log.info("deleted the local state of %d table partitions this worker no longer owns", len(deleted))


def _items(table: str, db: Any, offset_key: bytes) -> Iterator[tuple[bytes, str, bytes]]:
    """(key, table, value) of every session in one table partition's database, in key order."""
    for key, value in db.items():
        if key != offset_key:
            yield key, table, value


def release_free_memory() -> None:
    """Give the pages of freed heap memory back to the system (glibc's ``malloc_trim``; elsewhere nothing)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


_TRIM: list[Any] = []


def _malloc_trim() -> Any:
    if not _TRIM:
        try:
            import ctypes

            _TRIM.append(ctypes.CDLL("libc.so.6").malloc_trim)
        except (OSError, AttributeError):
            _TRIM.append(None)
    return _TRIM[0]
