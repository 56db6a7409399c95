"""The processor's write-back cache over faust's RocksDB stores (streams/processor/state.py), on real RocksDB
databases that faust's store opens (a processor app as built, no broker reached). What a worker restarting or
killed on the real broker gets from it: tests/integration/test_processor_state.py."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streams import internals
from streams.config import Settings
from streams.processor import rules
from streams.processor.app import create_app
from streams.processor.state import PartStore, clear_slots, encoded, take_slot


@pytest.fixture()
def store(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> Iterator[tuple[PartStore, dict]]:
    """A PartStore over the app's tables with partitions 0 and 1 of every table open (as faust opens an
    assigned partition's database), and the changelog topic of each table."""
    app = create_app(Settings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:1", partitions=4))
    tables = app.conf.enx_parts["tables"]
    changelogs = {t: table.changelog_topic.get_topic_name() for t, table in tables.items()}
    for table in tables.values():
        for p in (0, 1):
            table.data._db_for_partition(p)  # faust's own open (an assignment's)
    yield PartStore(tables, changelogs), changelogs
    for table in tables.values():
        internals.rocksdb_databases(table).clear()


def part(event_id: str, conf: str = "c1") -> dict:
    return rules.absorb(None, {"event_id": event_id, "type": "recording", "app_id": "app", "conf_num": conf,
                               "trans_date": 1000, "received_at": 1000, "files": []})


def test_a_change_is_read_from_the_cache_and_reaches_rocksdb_only_with_its_changelog_offset(store) -> None:
    state, changelogs = store
    key, one = encoded("app/c1"), part("e1")
    assert state.parts("app/c1", 0)["recording"] is None
    state.write("recording", 0, key, one, encoded(one))
    assert state.parts("app/c1", 0)["recording"] == one  # from the cache: nothing on disk yet
    db = internals.rocksdb_databases(state.tables["recording"])[0]
    assert db.get(key) is None
    topic = changelogs["recording"]
    held = {(topic, 0, key): state.pending[key][1]["recording"][1]}
    state.persist(held, {})  # the producer told no offset: nothing is written, the cache keeps it
    assert db.get(key) is None and key in state.pending
    state.persist(held, {(topic, 0): 41})
    assert orjson.loads(db.get(key)) == one and key not in state.pending
    assert state.tables["recording"].data.persisted_offset(_tp(topic, 0)) == 41  # what faust's recovery seeks past
    assert state.parts("app/c1", 0)["recording"] == one  # from RocksDB now


def test_a_part_changed_again_during_a_flush_stays_in_the_cache(store) -> None:
    state, changelogs = store
    key, topic = encoded("app/c1"), changelogs["recording"]
    first, second = part("e1"), part("e2")
    state.write("recording", 0, key, first, encoded(first))
    held = {(topic, 0, key): state.pending[key][1]["recording"][1]}  # what a flush took
    state.write("recording", 0, key, second, encoded(second))  # an event handled while it sends
    state.persist(held, {(topic, 0): 7})
    assert state.parts("app/c1", 0)["recording"] == second  # the newer change wins over what is on disk
    db = internals.rocksdb_databases(state.tables["recording"])[0]
    assert orjson.loads(db.get(key)) == first
    # a deletion the same way: held as None, written as a delete
    state.write("recording", 0, key, None, None)
    state.persist({(topic, 0, key): None}, {(topic, 0): 8})
    assert db.get(key) is None and state.parts("app/c1", 0)["recording"] is None and not state.pending


def test_a_partition_closed_meanwhile_is_skipped_whole(store) -> None:
    state, changelogs = store
    key, topic, one = encoded("app/c1"), changelogs["recording"], part("e1")
    state.write("recording", 2, key, one, encoded(one))  # partition 2: no database open (revoked)
    state.persist({(topic, 2, key): state.pending[key][1]["recording"][1]}, {(topic, 2): 3})
    assert 2 not in internals.rocksdb_databases(state.tables["recording"])  # not reopened
    assert key in state.pending  # the changelog has it; a restore brings it


def test_the_databases_of_partitions_not_owned_are_deleted(store) -> None:
    state, _ = store
    paths = {t: dict(internals.rocksdb_partition_paths(table)) for t, table in state.tables.items()}
    assert all(set(p) == {0, 1} for p in paths.values())
    key, one = encoded("app/c9"), part("e9", "c9")
    state.write("recording", 1, key, one, encoded(one))
    for table in state.tables.values():
        internals.rocksdb_databases(table).pop(1)  # faust's revocation drops partition 1's databases
    deleted = state.drop_unowned({t: {0} for t in state.tables})
    assert sorted(deleted) == sorted((t, 1) for t in state.tables)
    assert all(not paths[t][1].exists() and paths[t][0].exists() for t in state.tables)
    assert not state.pending  # what the cache held for partition 1 goes too
    # a database still open is never deleted, owned or not
    assert state.drop_unowned({}) == []


def test_a_scan_reads_every_session_of_a_partition_with_its_parts(store) -> None:
    state, changelogs = store
    names = [f"app/s{i}" for i in range(5)]
    held = {}
    for i, name in enumerate(names):
        key = encoded(name)
        for t in ("recording", "session_end") if i % 2 else ("recording",):
            value = part(f"{t}-{i}", f"s{i}")
            state.write(t, 0, key, value, encoded(value))
            held[(changelogs[t], 0, key)] = state.pending[key][1][t][1]
    state.persist(held, {(changelogs["recording"], 0): 10, (changelogs["session_end"], 0): 20})
    late = part("late", "s0")
    state.write("chat", 0, encoded("app/s0"), late, encoded(late))  # not persisted yet: read from the cache
    state.touched = {"app/s4"}  # written since the index was cleared: the agent indexed it itself
    got = dict(state.scan(0))
    assert sorted(got) == names[:4]
    assert got["app/s0"]["chat"] == late and got["app/s0"]["recording"] == part("recording-0", "s0")
    assert set(got["app/s1"]) == {"recording", "session_end"} and set(got["app/s2"]) == {"recording"}
    assert list(state.scan(1)) == []


def test_encoded_is_orjson_in_a_bytes_object_of_its_own_size() -> None:
    import tracemalloc

    value = part("e1")
    assert encoded(value) == orjson.dumps(value) and encoded("app/c1") == orjson.dumps("app/c1")
    tracemalloc.start()
    try:
        kept = [encoded(f"app/c{i}") for i in range(1000)]
        size = tracemalloc.take_snapshot().statistics("filename")[0].size
    finally:
        tracemalloc.stop()
    assert size < 200 * len(kept)  # orjson's own: about 4 KiB each


def test_each_process_takes_a_slot_of_its_own_and_a_stale_one_is_emptied(tmp_path: Path) -> None:
    first, second = take_slot(tmp_path), take_slot(tmp_path)  # two workers on one machine (one process here)
    assert (first.path.name, second.path.name) == ("w0", "w1")
    (first.path / "table-0.db").mkdir()
    first.stamp()
    first.release()
    again = take_slot(tmp_path)  # a restart takes its own back, with its databases
    assert again.path.name == "w0" and (again.path / "table-0.db").exists()
    again.release()
    old = time.time() - 7 * 3600
    os.utime(again.path / "last-persisted", (old, old))
    stale = take_slot(tmp_path)  # unused for longer than the changelogs surely keep their tombstones
    assert stale.path.name == "w0" and not (stale.path / "table-0.db").exists()
    assert clear_slots(tmp_path) == [tmp_path / "w0", tmp_path / "w1"]  # both held: left alone
    stale.release()
    second.release()
    assert clear_slots(tmp_path) == [] and not (tmp_path / "w0").exists()


def _tp(topic: str, partition: int):
    from faust.types import TP

    return TP(topic, partition)
