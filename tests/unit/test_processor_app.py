"""The processor app as built, before it starts (streams/processor/app.py): no broker is reached."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from streams.config import Settings
from streams.processor import rules
from streams.processor.app import create_app


def test_the_changelogs_the_agent_writes_are_what_faust_restores(tmp_path: Path,
                                                                 loop: asyncio.AbstractEventLoop) -> None:
    """The agent encodes table parts and keys with orjson itself; faust's json codec must write the same bytes
    and read them back, or a worker restoring a table from its changelog would not get the parts back."""
    app = create_app(Settings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:1"))
    event = {"event_id": "e1", "type": "recording", "app_id": "app", "conf_num": "c1", "room_id": "r\u00e9",
             "trans_date": 2**62, "received_at": 1, "files": [{"kind": "recording"}]}
    part = rules.absorb(None, event)
    serializers = app.serializers
    for name in rules.TABLES:
        table = app.conf.enx_parts["tables"][name]
        value = serializers.dumps_value(table.value_type, part, serializer=table.value_serializer)
        key = serializers.dumps_key(table.key_type, "app/c1", serializer=table.key_serializer)
        assert (key, value) == (orjson.dumps("app/c1"), orjson.dumps(part))
        assert serializers.loads_value(table.value_type, orjson.dumps(part), serializer=table.value_serializer) == part
        key_back = serializers.loads_key(table.key_type, orjson.dumps("app/c1"), serializer=table.key_serializer)
        assert key_back == "app/c1"


def test_the_changelogs_provisioned_are_the_ones_faust_uses(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    """The worker provisions the tables' changelogs (with the deployment's replication) before faust starts;
    faust then finds them and creates none of its own (with its default of one replica)."""
    from streams.processor.app import command_topic, internal_topics

    settings = Settings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:1", partitions=4)
    app = create_app(settings)
    faust_uses = {app.conf.enx_parts["tables"][t].changelog_topic.get_topic_name() for t in rules.TABLES}
    specs = internal_topics(settings)
    assert {s.name for s in specs} == faust_uses | {command_topic(settings)}
    assert all(s.partitions == 4 and s.partitions_must_match for s in specs)
    assert all(s.configs == {"cleanup.policy": "compact"} for s in specs if s.name in faust_uses)
