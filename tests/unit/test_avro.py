"""streams/avro.py: Avro single-object encoding (C3 01 + CRC-64-AVRO fingerprint, little-endian + body) of
every contract schema, and schema evolution with writer schemas resolved by fingerprint."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import fastavro
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form

from streams.avro import MAGIC, SCHEMA_DIR, AvroError, Codec, default_codec, fingerprint_of

CONTRACT = ["DeadLetter", "ReconcileFinding", "SessionState", "SlaAlert", "WebhookEvent"]

# --- CRC-64-AVRO written out from the Avro specification, independently of fastavro and streams.avro ---
EMPTY64 = 0xC15D213AA4D7A795
_TABLE = []
for _i in range(256):
    _fp = _i
    for _ in range(8):
        _fp = (_fp >> 1) ^ (EMPTY64 & -(_fp & 1))
    _TABLE.append(_fp)


def crc64_avro(data: bytes) -> int:
    fp = EMPTY64
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp


@pytest.mark.parametrize("canonical,published", [
    # Apache Avro share/test/data/schema-tests.txt (published as signed 64-bit integers)
    ('"null"', 7195948357588979594),
    ('"boolean"', -6970731678124411036),
    ('"int"', 8247732601305521295),
    ('{"name":"foo","type":"fixed","size":15}', 1756455273707447556),
])
def test_reference_crc64_matches_the_published_vectors_and_fastavro(canonical: str, published: int) -> None:
    assert crc64_avro(canonical.encode()) == published % 2**64
    assert fingerprint(canonical, "CRC-64-AVRO") == crc64_avro(canonical.encode()).to_bytes(8, "little").hex()


def load(name: str, directory: Path = SCHEMA_DIR) -> dict:
    return json.loads((directory / f"{name}.avsc").read_text())


EVENT = {
    "event_id": "3f2a9c1e5b7d4e6f8a0b1c2d3e4f5a6b", "received_at": 1_764_000_123_456, "type": "transcoded",
    "app_id": "66c1f0a2b3", "room_id": "66c1f0a2b3c4d5e6f7a8b9c0", "conf_num": "2342", "trans_date": 1_764_000_000_000,
    "files": [{"kind": "transcoded", "url": "https://files.enablex.io/66c1/2342/composite-1.mp4", "stage": "1",
               "size_bytes": 734_003_200},
              {"kind": "transcoded", "url": "https://files.enablex.io/66c1/2342/composite-2.mp4", "stage": "2",
               "size_bytes": None}],
    "destination": {"name": "awss3", "host": None, "account": "enx-archive"},
    "raw": '{"type":"transcoded","app_id":"66c1f0a2b3","conf_num":"2342","stage":"1","note":"caf\u00e9"}',
    "source": "203.0.113.9",
}
RECORDS = {
    "WebhookEvent": EVENT,
    "DeadLetter": {"id": "0b7f4c9e2a1d4f3c8e6a5b4c3d2e1f00", "received_at": 1_764_000_123_999,
                   "reason": "not_json: Expecting property name enclosed in double quotes (typographic quotes are "
                             "not JSON quotes)",
                   "raw": "{ \u201ctype\u201d: \u201crecording\u201d }".encode() + b"\xff\x00",
                   "headers": {"content-type": "application/json", "user-agent": "EnableX-Webhook/1.0"},
                   "source": "198.51.100.7"},
    "SessionState": {"app_id": "66c1f0a2b3", "conf_num": "2342", "room_id": None, "version": 3,
                     "event_ids": ["0a" * 16, "1b" * 16, "2c" * 16], "ended_at": 1_764_000_000_000,
                     "recording_at": 1_764_000_240_000, "transcoded_at": None, "delivered_at": None,
                     "chat_at": 1_764_000_090_000, "recording_files": 2, "transcoded_files": 0,
                     "delivered_files": 0, "chat_files": 1, "recording_latency_s": 240.0,
                     "transcode_latency_s": None, "delivery_latency_s": None, "chat_latency_s": 90.5,
                     "sla_deadline": 1_764_002_700_000, "sla_state": "pending", "stalled_at": None,
                     "last_event_at": 1_764_000_240_123, "reconciled": ["roomdrop"]},
    "SlaAlert": {"alert_id": "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b", "kind": "transcode_recovered", "app_id": "66c1f0a2b3",
                 "conf_num": "2342", "room_id": "66c1f0a2b3c4d5e6f7a8b9c0", "deadline": 1_764_002_700_000,
                 "detected_at": 1_764_003_000_000, "overdue_s": 0.0, "cause": "webhook_missing"},
    "ReconcileFinding": {"finding_id": "5d41402abc4b2a76b9719d911017c592", "kind": "webhook_missing",
                         "app_id": "66c1f0a2b3", "conf_num": "2342", "room_id": "66c1f0a2b3c4d5e6f7a8b9c0",
                         "missing_type": "transcoded", "source": "archive", "trans_date": 1_764_001_500_000,
                         "urls": ["https://files.enablex.io/66c1/2342/composite-1.mp4"],
                         "archive_id": "5f1a2b3c4d5e6f7a8b9c0d1e", "found_at": 1_764_003_000_000},
}


def test_the_contract_schemas_are_the_current_ones() -> None:
    assert default_codec().names == CONTRACT


@pytest.mark.parametrize("name", CONTRACT)
def test_single_object_encoding_layout(name: str) -> None:
    codec = default_codec()
    value = codec.encode(name, RECORDS[name])
    canonical = to_parsing_canonical_form(load(name))  # from the .avsc text, not the codec's parsed copy
    assert value[:2] == b"\xc3\x01" == MAGIC
    assert value[2:10] == crc64_avro(canonical.encode()).to_bytes(8, "little")
    assert value[2:10].hex() == fingerprint(canonical, "CRC-64-AVRO")
    assert value[2:10] == fingerprint_of(fastavro.parse_schema(load(name)))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(load(name)), RECORDS[name])
    assert value[10:] == body.getvalue()


@pytest.mark.parametrize("name", CONTRACT)
def test_every_contract_schema_round_trips_a_realistic_record(name: str) -> None:
    codec = default_codec()
    value = codec.encode(name, RECORDS[name])
    assert codec.decode(value) == RECORDS[name]
    assert codec.decode(value, name) == RECORDS[name]
    assert codec.record_name(value) == name
    # readable by any Avro implementation that is given the writer schema
    plain = fastavro.schemaless_reader(io.BytesIO(value[10:]), fastavro.parse_schema(load(name)), None)
    assert plain == RECORDS[name]


def test_fingerprints_differ_between_schemas() -> None:
    headers = {default_codec().encode(n, RECORDS[n])[2:10] for n in CONTRACT}
    assert len(headers) == len(CONTRACT)


# --- schema evolution --------------------------------------------------------------------------------------

REGION = {"name": "region", "type": "string", "default": "unknown", "doc": "Added in v2."}


@pytest.fixture
def evolved(tmp_path: Path) -> dict:
    """A schema directory laid out as streams/avro.py expects: the current schema of each record at the top,
    earlier versions anywhere below it (``history/``). v1 values are written before the change, v2 after."""
    schemas = tmp_path / "avro"
    shutil.copytree(SCHEMA_DIR, schemas)
    v1_codec = Codec.from_dir(schemas)
    old_value = v1_codec.encode("WebhookEvent", EVENT)

    (schemas / "history").mkdir(exist_ok=True)
    v1_path = schemas / "history" / "WebhookEvent.v1.avsc"
    shutil.move(schemas / "WebhookEvent.avsc", v1_path)
    v2 = json.loads(v1_path.read_text())
    v2["fields"].append(REGION)
    v2_path = schemas / "WebhookEvent.avsc"
    v2_path.write_text(json.dumps(v2, indent=2))
    v2_codec = Codec.from_dir(schemas)
    new_value = v2_codec.encode("WebhookEvent", {**EVENT, "region": "eu-west-1"})
    return {"dir": schemas, "v1": v1_codec, "v2": v2_codec, "old": old_value, "new": new_value,
            "v1_path": v1_path, "v2_path": v2_path}


def test_new_schema_version_has_its_own_fingerprint(evolved: dict) -> None:
    old, new = evolved["old"], evolved["new"]
    assert old[:2] == new[:2] == MAGIC
    assert old[2:10] != new[2:10]
    assert new[2:10].hex() == fingerprint(to_parsing_canonical_form(json.loads(evolved["v2_path"].read_text())),
                                          "CRC-64-AVRO")


def test_new_reader_reads_old_records_with_the_default_and_new_records(evolved: dict) -> None:
    codec = evolved["v2"]
    assert codec.decode(evolved["old"]) == {**EVENT, "region": "unknown"}
    assert codec.decode(evolved["new"]) == {**EVENT, "region": "eu-west-1"}
    assert codec.record_name(evolved["old"]) == codec.record_name(evolved["new"]) == "WebhookEvent"
    # the other contract schemas are untouched and still round-trip
    for name in CONTRACT:
        if name != "WebhookEvent":
            assert codec.decode(codec.encode(name, RECORDS[name])) == RECORDS[name]


def test_old_reader_reads_new_records_when_it_knows_the_new_writer_schema(evolved: dict) -> None:
    # streams.avro has no per-call choice of reader *version*: decode(value, name) picks the record name, and
    # the reader is always the codec's "current" schema for it. An old reader is therefore a codec built with
    # v1 as current and v2 among the known writer schemas (the constructor allows it; from_dir cannot express
    # it, as the top-level file is always the newest).
    old_reader = Codec([evolved["v1_path"], evolved["v2_path"]], current=[evolved["v1_path"]])
    assert old_reader.decode(evolved["new"]) == EVENT  # the extra field is dropped
    assert old_reader.decode(evolved["old"]) == EVENT


def test_a_reader_deployed_before_the_change_names_the_missing_schema(evolved: dict) -> None:
    # the v1 codec was built before v2 existed: it cannot know the new fingerprint
    with pytest.raises(AvroError) as caught:
        evolved["v1"].decode(evolved["new"])
    message = str(caught.value)
    assert evolved["new"][2:10].hex() in message
    assert "unknown writer schema" in message and "schemas/avro/" in message  # where the missing version goes


def test_unknown_fingerprint_is_a_clear_error() -> None:
    value = MAGIC + bytes.fromhex("0123456789abcdef") + b"\x00"
    with pytest.raises(AvroError) as caught:
        default_codec().decode(value)
    assert "unknown writer schema fingerprint 0123456789abcdef" in str(caught.value)
    assert "schemas/avro/" in str(caught.value)
    with pytest.raises(AvroError):
        default_codec().record_name(value)


@pytest.mark.parametrize("value", [
    b"",
    b"\xc3",
    b"\xc3\x01\x00",  # header cut short
    b'{"type": "recording"}',  # JSON, as a producer without the codec would send
    b"\x00\x00\x00\x00\x01" + b"\x02" * 12,  # Confluent wire format (magic 0 + schema id)
    b"\xc3\x02" + b"\x00" * 12,  # wrong second marker byte
    b"Obj\x01" + b"\x00" * 12,  # an Avro object container file
])
def test_value_without_the_c3_01_marker_is_a_clear_error(value: bytes) -> None:
    with pytest.raises(AvroError) as caught:
        default_codec().decode(value)
    message = str(caught.value)
    assert "single-object" in message and "C3 01" in message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("name", CONTRACT)
def test_a_truncated_body_is_an_avro_error(name: str) -> None:
    value = default_codec().encode(name, RECORDS[name])
    with pytest.raises(AvroError) as caught:
        default_codec().decode(value[:12])
    assert "cannot decode" in str(caught.value)


def test_reading_as_another_record_is_an_avro_error() -> None:
    value = default_codec().encode("WebhookEvent", EVENT)
    with pytest.raises(AvroError) as caught:
        default_codec().decode(value, "SlaAlert")
    assert "cannot decode" in str(caught.value)
