"""Avro single-object encoding and schema evolution (streams/avro.py)."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import fastavro
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form

from streams.avro import SCHEMA_DIR, AvroError, Codec, default_codec

EVENT = {"event_id": "e" * 32, "received_at": 1_764_000_000_123, "type": "transcoded", "app_id": "app",
         "room_id": "room", "conf_num": "42", "trans_date": 1_764_000_000_000,
         "files": [{"kind": "transcoded", "url": "https://f/x.mp4", "stage": "1", "size_bytes": 1234}],
         "destination": {"name": "awss3", "host": None, "account": "acct"}, "raw": "{}", "source": "10.0.0.1"}


def realistic(name: str) -> dict:
    if name == "WebhookEvent":
        return EVENT
    if name == "DeadLetter":
        return {"id": "d" * 32, "received_at": 1, "reason": "not_json: Expecting value", "raw": b"\xff{",
                "headers": {"content-type": "application/json"}, "source": None}
    if name == "SlaAlert":
        return {"alert_id": "a" * 32, "kind": "transcode_stalled", "app_id": "app", "conf_num": "42",
                "room_id": None, "deadline": 5, "detected_at": 5, "overdue_s": None}
    from streams.processor import rules
    return rules.merge(None, EVENT, 2700)


@pytest.mark.parametrize("name", ["WebhookEvent", "DeadLetter", "SessionState", "SlaAlert"])
def test_single_object_encoding_round_trips(name: str) -> None:
    codec = default_codec()
    record = realistic(name)
    value = codec.encode(name, record)
    schema = json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())
    expected_fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(fastavro.parse_schema(schema)), "CRC-64-AVRO"))
    assert value[:2] == b"\xc3\x01"
    assert value[2:10] == expected_fp
    # the Avro spec's CRC-64-AVRO, computed here by hand, little-endian as the Java implementation writes it
    assert value[2:10] == struct.pack("<Q", crc64_avro(to_parsing_canonical_form(fastavro.parse_schema(schema))))
    assert codec.decode(value) == record
    assert codec.record_name(value) == name


def crc64_avro(text: str) -> int:
    """The reference implementation from the Avro specification ("Schema Fingerprints")."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in text.encode():
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def _evolved(directory: Path) -> Path:
    """The contract schemas in ``directory``, WebhookEvent's current version moved to history/ and a new one
    with an added field (with a default) made current; returns the new schema's path."""
    shutil.copytree(SCHEMA_DIR, directory, dirs_exist_ok=True)
    (directory / "history").mkdir(exist_ok=True)
    old = directory / "WebhookEvent.avsc"
    shutil.move(old, directory / "history" / "WebhookEvent.v1.avsc")
    schema = json.loads((directory / "history" / "WebhookEvent.v1.avsc").read_text())
    schema["fields"].append({"name": "region", "type": "string", "default": "unknown",
                             "doc": "added in v2: where the event was received"})
    old.write_text(json.dumps(schema))
    return old


def test_a_field_added_with_a_default_reads_old_and_new_records(tmp_path: Path) -> None:
    old_codec = default_codec()
    old_value = old_codec.encode("WebhookEvent", EVENT)
    _evolved(tmp_path)
    new_codec = Codec.from_dir(tmp_path)
    new_value = new_codec.encode("WebhookEvent", {**EVENT, "region": "eu"})
    assert new_value[2:10] != old_value[2:10]  # a new writer fingerprint
    assert new_codec.decode(old_value) == {**EVENT, "region": "unknown"}  # old record, default filled in
    assert new_codec.decode(new_value) == {**EVENT, "region": "eu"}
    # a reader still on the old schema, once it knows the new writer schema, reads the new record too
    reader_on_v1 = Codec(sorted(tmp_path.rglob("*.avsc")), [tmp_path / "history" / "WebhookEvent.v1.avsc",
                                                            *sorted(SCHEMA_DIR.glob("[!W]*.avsc"))])
    assert reader_on_v1.decode(new_value) == EVENT


def test_errors_say_what_is_wrong_and_what_to_do() -> None:
    codec = default_codec()
    with pytest.raises(AvroError, match="no C3 01 header"):
        codec.decode(b'{"type": "roomdrop"}')
    unknown = b"\xc3\x01" + b"\x00" * 8 + b"\x02"
    with pytest.raises(AvroError, match="unknown writer schema fingerprint 0000000000000000.*schemas/avro"):
        codec.decode(unknown)
    value = codec.encode("WebhookEvent", EVENT)
    with pytest.raises(AvroError, match="cannot decode"):
        codec.decode(value[:14])  # truncated body
    with pytest.raises(AvroError):
        codec.record_name(b"junk")
