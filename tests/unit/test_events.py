"""streams/events.py: the seed documents' JSON examples, both payload shapes, every trans_date form, the
rejection codes, and hypothesis properties (fuzzing, event_id stability, Avro round trip, time units)."""

from __future__ import annotations

import datetime as dt
import json
import re
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streams.avro import default_codec
from streams.events import MS_THRESHOLD, Rejection, event_id_of, normalise, parse_trans_date

# The repository's verbatim copy of the source documents (identical to the shared seeds/ folder).
SEEDS = Path(__file__).resolve().parents[1] / "data" / "seeds"
RECEIVED = 1_764_000_123_456
T_S = 1_764_000_000  # 2025-11-24 16:00:00 UTC
T_MS = T_S * 1000
RECORD_FIELDS = {"event_id", "received_at", "type", "app_id", "room_id", "conf_num", "trans_date", "files",
                 "destination", "raw", "source"}
FILE_KINDS = {"recording", "transcoded", "chatdata", "transferred"}


# --------------------------------------------------------------------------------------------------------
# The seed documents' examples
# --------------------------------------------------------------------------------------------------------

# A seed example is a standalone brace block: it opens on a line holding only "{" (trailing blanks allowed)
# and closes on the next line holding only "}". That catches every example set off in the documents (the
# webhook bodies and the SDK "Response Body" listings) and no code: inline snippets such as
# `{ settings: { auto_recording: true }}`, the `// map is {...}` comments and `config = {...};` are code
# around an SDK call (not bodies anyone posts), and the `"settings": {` fragment does not open with "{".
SEED_BLOCK = re.compile(r"^\{[ \t]*\n.*?^\}[ \t]*$", re.MULTILINE | re.DOTALL)


def seed_examples() -> list[tuple[str, str]]:
    """(id, block) for every seed example, exactly as written; ids are ``<file prefix>-<index in file>``."""
    out = []
    for path in sorted(SEEDS.glob("0*.txt")):
        for index, block in enumerate(SEED_BLOCK.findall(path.read_text("utf-8"))):
            out.append((f"{path.name[:3]}-{index}", block))
    return out


TYPOGRAPHIC = str.maketrans({"\u201c": '"', "\u201d": '"'})


def ascii_quotes(block: str) -> str:
    """The example with its typographic double quotes made ASCII; nothing else changed."""
    return block.translate(TYPOGRAPHIC)


def json_syntax(block: str) -> str:
    """ASCII quotes, and the documents' /* comments */ and trailing commas dropped: valid JSON syntax,
    placeholder values (``"String"``, ``"Unix Timestamp"``, ``"Datetime"``, ``""``) kept."""
    text = re.sub(r"/\*.*?\*/", "", ascii_quotes(block), flags=re.DOTALL)
    return re.sub(r",(\s*[}\]])", r"\1", text)


FILL = {"app_id": "app-7f3a", "room_id": "room-61c2", "conf_num": "conf-0042", "stage": "2",
        "file_size": "1048576", "name": "sftp", "host": "sftp.example.com"}
TIME_FILL = {"Unix Timestamp": str(T_S), "Datetime": "2025-11-24 16:00:00"}
PLACEHOLDER = re.compile(r'"(?P<key>\w+)"(?P<sep>\s*:\s*)"(?P<value>String|Unix Timestamp|Datetime|)"')


def instantiate(block: str) -> str:
    """What the example describes, as EnableX would post it: :func:`json_syntax`, then each placeholder of a
    known key replaced by a value of the documented kind (trans_date "Unix Timestamp" by Unix seconds as a
    string, "Datetime" by "YYYY-MM-DD HH:MM:SS"). Other placeholders (the generic ``"type": "String"``,
    the awss3-only ``"account": ""`` of an sftp destination) stay as written. Done by the test, to show what
    each example means: the product itself never repairs a body."""

    def fill(match: re.Match) -> str:
        key, value = match["key"], match["value"]
        if key == "trans_date" and value in TIME_FILL:
            value = TIME_FILL[value]
        elif key in FILL:
            value = FILL[key]
        return f'"{key}"{match["sep"]}"{value}"'

    return PLACEHOLDER.sub(fill, json_syntax(block))


URL = "http://FQDN/path/file"
SESSION = {"app_id": "app-7f3a", "room_id": "room-61c2", "conf_num": "conf-0042", "trans_date": T_MS}
# Per example: does it carry typographic quotes; the rejection code with valid JSON syntax but the placeholders
# kept; and the normalised event once instantiated (or the rejection code when it cannot be an event).
SEED_EXPECTED: dict[str, dict[str, Any]] = {
    # {"type": "String" /* Constants: ... */}: the generic shape of the type key, not an event
    "000-0": {"typographic": False, "placeholders": "missing_field", "rejection": "missing_field"},
    "000-1": {"typographic": False, "placeholders": "bad_trans_date",
              "event": {"type": "roomdrop", **SESSION, "files": [], "destination": None}},
    "000-2": {"typographic": True, "placeholders": "bad_trans_date",
              "event": {"type": "recording", **SESSION, "destination": None,
                        "files": [{"kind": "recording", "url": URL, "stage": None, "size_bytes": None}]}},
    # the notification document's composite: a single URL under "recording", stage and file_size strings
    "000-3": {"typographic": False, "placeholders": "bad_trans_date",
              "event": {"type": "transcoded", **SESSION, "destination": None,
                        "files": [{"kind": "transcoded", "url": URL, "stage": "2", "size_bytes": 1_048_576}]}},
    "000-4": {"typographic": False, "placeholders": "bad_trans_date",
              "event": {"type": "file-transfer", **SESSION,
                        "destination": {"name": "sftp", "host": "sftp.example.com", "account": None},
                        "files": [{"kind": "transferred", "url": URL, "stage": None, "size_bytes": None}]}},
    # the recording document's shape: lists of {"url": ...} objects, trans_date a datetime string
    "003-0": {"typographic": True, "placeholders": "bad_trans_date",
              "event": {"type": "recording", **SESSION, "destination": None,
                        "files": [{"kind": "recording", "url": URL, "stage": None, "size_bytes": None}]}},
    "003-1": {"typographic": True, "placeholders": "bad_trans_date",
              "event": {"type": "transcoded", **SESSION, "destination": None,
                        "files": [{"kind": "transcoded", "url": URL, "stage": None, "size_bytes": None}]}},
    "003-2": {"typographic": True, "placeholders": "bad_trans_date",
              "event": {"type": "chatdata", **SESSION, "destination": None,
                        "files": [{"kind": "chatdata", "url": URL, "stage": None, "size_bytes": None}]}},
    # SDK "Response Body" listings (room-live-recording-on / -off): `key = value;` notation, never JSON
    "003-3": {"typographic": False, "placeholders": "not_json", "rejection": "not_json"},
    "003-4": {"typographic": False, "placeholders": "not_json", "rejection": "not_json"},
}

EXAMPLES = seed_examples()
EXAMPLE_IDS = [example_id for example_id, _ in EXAMPLES]


def test_every_seed_example_is_extracted() -> None:
    # Counted by reading the documents: 000 has 5 (the generic type key, roomdrop, recording, transcoded,
    # file-transfer); 003 has 5 (recording, transcoded, chatdata webhooks + 2 SDK response bodies).
    assert EXAMPLE_IDS.count("000-0") == 1
    assert sum(i.startswith("000-") for i in EXAMPLE_IDS) == 5
    assert sum(i.startswith("003-") for i in EXAMPLE_IDS) == 5
    assert EXAMPLE_IDS == list(SEED_EXPECTED)
    # and each block is the one the table describes
    types = [re.search(r'[\u201c"]type[\u201d"]\s*:\s*[\u201c"]([\w-]+)', b) for _, b in EXAMPLES]
    assert [m[1] if m else None for m in types] == [
        "String", "roomdrop", "recording", "transcoded", "file-transfer", "recording", "transcoded", "chatdata",
        None, None]


@pytest.mark.parametrize("example_id,block", EXAMPLES, ids=EXAMPLE_IDS)
def test_seed_example_as_written_is_rejected_never_repaired(example_id: str, block: str) -> None:
    expected = SEED_EXPECTED[example_id]
    assert (("\u201c" in block) or ("\u201d" in block)) == expected["typographic"]
    with pytest.raises(Rejection) as caught:
        normalise(block.encode("utf-8"), RECEIVED)
    assert caught.value.code == "not_json"
    assert ("typographic quotes" in caught.value.detail) == expected["typographic"]


@pytest.mark.parametrize("example_id,block", EXAMPLES, ids=EXAMPLE_IDS)
def test_seed_example_with_ascii_quotes_only_is_still_not_json(example_id: str, block: str) -> None:
    # every example carries /* comments */ (or is no JSON at all): quotes alone do not make it a body
    with pytest.raises(Rejection) as caught:
        normalise(ascii_quotes(block).encode("utf-8"), RECEIVED)
    assert caught.value.code == "not_json"
    assert "typographic" not in caught.value.detail


@pytest.mark.parametrize("example_id,block", EXAMPLES, ids=EXAMPLE_IDS)
def test_seed_example_placeholders_are_not_values(example_id: str, block: str) -> None:
    # valid JSON syntax, but "Unix Timestamp" / "Datetime" are no times (and the generic one has no app_id)
    with pytest.raises(Rejection) as caught:
        normalise(json_syntax(block).encode("utf-8"), RECEIVED)
    assert caught.value.code == SEED_EXPECTED[example_id]["placeholders"]


@pytest.mark.parametrize("example_id,block", EXAMPLES, ids=EXAMPLE_IDS)
def test_seed_example_means_this_event(example_id: str, block: str) -> None:
    expected = SEED_EXPECTED[example_id]
    body = instantiate(block).encode("utf-8")
    if "rejection" in expected:
        with pytest.raises(Rejection) as caught:
            normalise(body, RECEIVED)
        assert caught.value.code == expected["rejection"]
        return
    event = normalise(body, RECEIVED, "203.0.113.9")
    assert {k: event[k] for k in expected["event"]} == expected["event"]
    assert event["received_at"] == RECEIVED
    assert event["source"] == "203.0.113.9"
    assert event["raw"] == body.decode("utf-8")
    assert event["event_id"] == event_id_of(json.loads(body))
    codec = default_codec()
    assert codec.decode(codec.encode("WebhookEvent", event)) == event


# --------------------------------------------------------------------------------------------------------
# Explicit cases: both payload shapes
# --------------------------------------------------------------------------------------------------------

U1, U2 = "https://files.enablex.io/a/1.mkv", "https://files.enablex.io/a/2.mkv"


def body_of(**fields: Any) -> bytes:
    """A session payload with the given fields over a minimal base; a field given as None is left out."""
    payload = {"type": "recording", "app_id": "app-1", "room_id": "room-1", "conf_num": "conf-1", "trans_date": T_S}
    payload.update(fields)
    return json.dumps({k: v for k, v in payload.items() if v is not None}).encode()


def files(kind: str, *urls: str, stage: str | None = None, size: int | None = None) -> list[dict]:
    return [{"kind": kind, "url": u, "stage": stage, "size_bytes": size} for u in urls]


@pytest.mark.parametrize("fields,expected", [
    ({"recording": [U1, U2]}, files("recording", U1, U2)),
    ({"recording": [{"url": U1}, {"url": U2}]}, files("recording", U1, U2)),
    ({"recording": [U1, {"url": U2}]}, files("recording", U1, U2)),
    ({"recording": U1}, files("recording", U1)),
    ({"recording": []}, []),
    ({"recording": None}, []),
    ({"type": "transcoded", "recording": U1}, files("transcoded", U1)),
    ({"type": "transcoded", "transcoded": [{"url": U1}]}, files("transcoded", U1)),
    ({"type": "transcoded", "transcoded": [U1, U2]}, files("transcoded", U1, U2)),
    ({"type": "transcoded", "transcoded": U1}, files("transcoded", U1)),
    ({"type": "chatdata", "chatdata": [{"url": U1}]}, files("chatdata", U1)),
    ({"type": "chatdata", "chatdata": [U1]}, files("chatdata", U1)),
    ({"type": "chatdata", "chatdata": U1}, files("chatdata", U1)),
    ({"type": "file-transfer", "files": [{"url": U1}, {"url": U2}]}, files("transferred", U1, U2)),
    ({"type": "file-transfer", "files": [U1]}, files("transferred", U1)),
    ({"type": "file-transfer", "files": U1}, files("transferred", U1)),
    ({"recording": [U1], "chatdata": [{"url": U2}]}, files("recording", U1) + files("chatdata", U2)),
    ({"recording": [{"url": U1, "size": 5}]}, files("recording", U1)),
], ids=lambda v: json.dumps(v)[:60] if isinstance(v, dict) else None)
def test_file_lists_in_every_shape(fields: dict, expected: list[dict]) -> None:
    assert normalise(body_of(**fields), RECEIVED)["files"] == expected


@pytest.mark.parametrize("stage,file_size,want_stage,want_size", [
    ("2", "1048576", "2", 1_048_576),
    (2, 1048576, "2", 1_048_576),
    ("2", 1048576, "2", 1_048_576),
    (3, " 2048 ", "3", 2048),
    ("0", 0, "0", 0),
    ("", "", None, None),
    (None, None, None, None),
    ("1", str(2**62), "1", 2**62),
])
def test_stage_and_file_size_as_strings_or_numbers(stage: Any, file_size: Any, want_stage: Any,
                                                   want_size: Any) -> None:
    event = normalise(body_of(type="transcoded", transcoded=[U1, U2], stage=stage, file_size=file_size), RECEIVED)
    assert event["files"] == files("transcoded", U1, U2, stage=want_stage, size=want_size)


@pytest.mark.parametrize("destination,expected", [
    ("awss3", {"name": "awss3", "host": None, "account": None}),
    ({"name": "awss3", "account": "acct-9"}, {"name": "awss3", "host": None, "account": "acct-9"}),
    ({"name": "ftp", "host": "ftp.example.com"}, {"name": "ftp", "host": "ftp.example.com", "account": None}),
    ({"name": "sftp", "host": "h.example.com", "account": ""}, {"name": "sftp", "host": "h.example.com",
                                                                "account": None}),
    ({"name": "ssh", "host": "h", "account": "a", "port": 22}, {"name": "ssh", "host": "h", "account": "a"}),
    (None, None),
])
def test_destination_as_string_or_object(destination: Any, expected: Any) -> None:
    event = normalise(body_of(type="file-transfer", files=[{"url": U1}], destination=destination), RECEIVED)
    assert event["destination"] == expected


@pytest.mark.parametrize("trans_date,expected", [
    (T_S, T_MS),                                      # Unix seconds
    (T_S + 0.25, T_MS + 250),                         # fractional seconds
    (str(T_S), T_MS),                                 # seconds as a numeric string
    (f" {T_S} ", T_MS),
    (T_MS + 123, T_MS + 123),                         # milliseconds
    (str(T_MS + 123), T_MS + 123),                    # milliseconds as a numeric string
    (MS_THRESHOLD - 1, (MS_THRESHOLD - 1) * 1000),    # the largest value read as seconds (year 5138)
    (MS_THRESHOLD, MS_THRESHOLD),                     # the smallest read as milliseconds (1973)
    ("2025-11-24 16:00:00", T_MS),                    # the recording document's "Datetime", UTC
    ("2025-11-24 16:00:00.250", T_MS + 250),
    ("2025-11-24T16:00:00", T_MS),
    ("2025-11-24T16:00:00Z", T_MS),
    ("2025-11-24T16:00:00z", T_MS),
    ("2025-11-24T16:00:00.123Z", T_MS + 123),
    ("2025-11-24T16:00:00+00:00", T_MS),
    ("2025-11-24T17:30:00+01:30", T_MS),
    ("2025-11-24T11:00:00-05:00", T_MS),
    ("2025-11-25T01:00:00+09:00", T_MS),
    (None, None),
    ("", None),
])
def test_trans_date_forms_all_utc(trans_date: Any, expected: int | None) -> None:
    assert parse_trans_date(trans_date) == expected
    assert normalise(body_of(trans_date=trans_date), RECEIVED)["trans_date"] == expected


def test_absent_trans_date_is_null() -> None:
    body = json.dumps({"type": "roomdrop", "app_id": "a", "conf_num": "c"}).encode()
    assert normalise(body, RECEIVED)["trans_date"] is None


def test_iso_milliseconds_are_exact() -> None:
    # Found 2026-12-01 (fixed): int(datetime.timestamp() * 1000) truncated a float, so about 0.65% of
    # ISO / datetime strings with milliseconds came out one millisecond early (found by the property below).
    assert parse_trans_date("2004-03-15T07:55:47.472Z") == 1_079_337_347_472
    assert parse_trans_date("2039-03-08 19:46:13.411") == 2_183_226_373_411


def test_unknown_fields_are_kept_in_raw() -> None:
    text = ('{"type": "recording", "app_id": "app-1", "conf_num": "c-1", "trans_date": 1764000000,\n'
            ' "recording": ["%s"], "participants": 3, "x-extra": {"nested": [1, "é", null]}}' % U1)
    event = normalise(text.encode("utf-8"), RECEIVED)
    assert event["raw"] == text  # verbatim, whitespace and all
    kept = json.loads(event["raw"])
    assert kept["participants"] == 3 and kept["x-extra"] == {"nested": [1, "é", None]}
    assert set(event) == RECORD_FIELDS


@pytest.mark.parametrize("fields,conf_num", [
    ({"type": "room-live-recording-on", "conf_num": None}, None),
    ({"type": "room-live-recording-on"}, "conf-1"),
    ({"type": "participant-joined", "conf_num": ""}, None),
    ({"type": "Recording"}, "conf-1"),  # case matters: not the session type "recording"
])
def test_unknown_type_is_kept_with_its_type_string(fields: dict, conf_num: str | None) -> None:
    event = normalise(body_of(**fields), RECEIVED)
    assert event["type"] == fields["type"]
    assert event["conf_num"] == conf_num


def test_numeric_ids_are_kept_as_decimal_text() -> None:
    event = normalise(body_of(app_id=7, room_id=61, conf_num=42), RECEIVED)
    assert (event["app_id"], event["room_id"], event["conf_num"]) == ("7", "61", "42")


def test_same_payload_same_event_id_other_payload_other_id() -> None:
    a = normalise(b'{"type":"roomdrop","app_id":"a","conf_num":"1","trans_date":1764000000}', 1)
    b = normalise(b'{ "trans_date" : 1764000000 ,\n "conf_num":"1", "app_id":"a", "type":"roomdrop"}', 2)
    c = normalise(b'{"type":"roomdrop","app_id":"a","conf_num":"2","trans_date":1764000000}', 1)
    assert a["event_id"] == b["event_id"] != c["event_id"]
    assert len(a["event_id"]) == 32 and set(a["event_id"]) <= set(string.hexdigits.lower())


# --------------------------------------------------------------------------------------------------------
# Rejections
# --------------------------------------------------------------------------------------------------------

def payload_bytes(**fields: Any) -> bytes:
    return body_of(**fields)


REJECTIONS = [
    # not_utf8
    ("not_utf8", b'\xff\xfe{"type": "recording"}'),
    ("not_utf8", '{"type": "recording", "app_id": "caf\u00e9", "conf_num": "1"}'.encode("latin-1")),
    ("not_utf8", b'{"type": "recording", "app_id": "\xed\xa0\x80", "conf_num": "1"}'),  # encoded surrogate
    # not_json
    ("not_json", b""),
    ("not_json", b"   "),
    ("not_json", b'{"type": "recording"'),
    ("not_json", b"type=recording&app_id=a"),
    ("not_json", b"{'type': 'recording', 'app_id': 'a', 'conf_num': '1'}"),
    ("not_json", b'{"type": "recording", "app_id": "a", "conf_num": "1",}'),
    ("not_json", b'{"type": "recording"} {"type": "roomdrop"}'),
    ("not_json", b"[" * 100_000),
    # not_object
    ("not_object", b"[]"),
    ("not_object", b'[{"type": "recording", "app_id": "a", "conf_num": "1"}]'),
    ("not_object", b'"recording"'),
    ("not_object", b"42"),
    ("not_object", b"null"),
    ("not_object", b"true"),
    # missing_field
    ("missing_field", b"{}"),
    ("missing_field", payload_bytes(type=None)),
    ("missing_field", payload_bytes(type="")),
    ("missing_field", payload_bytes(app_id=None)),
    ("missing_field", payload_bytes(app_id="")),
    ("missing_field", payload_bytes(type="roomdrop", conf_num=None)),
    ("missing_field", payload_bytes(type="recording", conf_num="")),
    ("missing_field", payload_bytes(type="transcoded", conf_num=None)),
    ("missing_field", payload_bytes(type="file-transfer", conf_num=None)),
    ("missing_field", payload_bytes(type="chatdata", conf_num=None)),
    # wrong_type
    ("wrong_type", payload_bytes(type=["recording"])),
    ("wrong_type", payload_bytes(type=True)),
    ("wrong_type", payload_bytes(app_id={"id": "a"})),
    ("wrong_type", payload_bytes(app_id=1.5)),
    ("wrong_type", payload_bytes(conf_num=False)),
    ("wrong_type", payload_bytes(room_id=["r"])),
    ("wrong_type", payload_bytes(recording=[1])),
    ("wrong_type", payload_bytes(recording=5)),
    ("wrong_type", payload_bytes(recording=[""])),
    ("wrong_type", payload_bytes(recording=[{"href": U1}])),
    ("wrong_type", payload_bytes(recording=[[U1]])),
    ("wrong_type", payload_bytes(type="transcoded", transcoded=[U1], file_size="1 MB")),
    ("wrong_type", payload_bytes(type="transcoded", transcoded=[U1], file_size=-1)),
    ("wrong_type", payload_bytes(type="transcoded", transcoded=[U1], file_size=True)),
    ("wrong_type", payload_bytes(type="transcoded", transcoded=[U1], file_size=2**63)),
    ("wrong_type", payload_bytes(type="transcoded", transcoded=[U1], stage={"n": 1})),
    ("wrong_type", payload_bytes(type="transcoded", transcoded=[U1], stage=True)),
    ("wrong_type", payload_bytes(type="file-transfer", files=[U1], destination=5)),
    ("wrong_type", payload_bytes(type="file-transfer", files=[U1], destination=["awss3"])),
    ("wrong_type", payload_bytes(type="file-transfer", files=[U1], destination={"name": 5})),
    ("wrong_type", payload_bytes(type="file-transfer", files=[U1], destination={"name": "ftp", "host": ["h"]})),
    # bad_trans_date
    ("bad_trans_date", payload_bytes(trans_date="Unix Timestamp")),
    ("bad_trans_date", payload_bytes(trans_date="Datetime")),
    ("bad_trans_date", payload_bytes(trans_date="yesterday")),
    ("bad_trans_date", payload_bytes(trans_date="2025-13-01 00:00:00")),
    ("bad_trans_date", payload_bytes(trans_date="24/11/2025 16:00")),
    ("bad_trans_date", payload_bytes(trans_date=True)),
    ("bad_trans_date", payload_bytes(trans_date=[T_S])),
    ("bad_trans_date", payload_bytes(trans_date={"s": T_S})),
    ("bad_trans_date", payload_bytes(trans_date=-1)),
    ("bad_trans_date", payload_bytes(trans_date=10**16)),
    ("bad_trans_date", payload_bytes(trans_date="NaN")),
    ("bad_trans_date", payload_bytes(trans_date="inf")),
    ("bad_trans_date", b'{"type": "roomdrop", "app_id": "a", "conf_num": "1", "trans_date": 1e400}'),
    # a lone UTF-16 surrogate escape: JSON, but no text
    ("bad_unicode", b'{"type": "recording", "app_id": "\\ud800", "conf_num": "1"}'),
]


@pytest.mark.parametrize("code,body", REJECTIONS, ids=[f"{c}-{i}" for i, (c, _) in enumerate(REJECTIONS)])
def test_rejections_and_their_codes(code: str, body: bytes) -> None:
    with pytest.raises(Rejection) as caught:
        normalise(body, RECEIVED)
    assert caught.value.code == code
    assert caught.value.detail
    assert caught.value.reason == f"{code}: {caught.value.detail}"


def test_typographic_body_names_the_quotes() -> None:
    body = '{\u201ctype\u201d: \u201croomdrop\u201d, \u201capp_id\u201d: \u201ca\u201d}'.encode()
    with pytest.raises(Rejection) as caught:
        normalise(body, RECEIVED)
    assert caught.value.code == "not_json" and "typographic quotes" in caught.value.detail


def test_huge_integer_is_a_rejection_not_a_crash() -> None:
    # Found 2026-12-01 (fixed): json.loads raised a plain ValueError ("Exceeds the limit (4300 digits) for
    # integer string conversion") for a long number, which parse_body did not catch: ingest answered 500 and
    # the body never reached the dead-letter topic.
    body = b'{"type": "recording", "app_id": "a", "conf_num": "1", "n": ' + b"1" * 5000 + b"}"
    with pytest.raises(Rejection):
        normalise(body, RECEIVED)


@pytest.mark.parametrize("size", [b"1e400", b"-1e400"])
def test_infinite_file_size_is_a_rejection_not_a_crash(size: bytes) -> None:
    # Found 2026-12-01 (fixed): 1e400 is a valid JSON number that Python reads as inf; int(inf) raised
    # OverflowError, not a Rejection (ingest answered 500, nothing reached the dead-letter topic).
    body = b'{"type": "transcoded", "app_id": "a", "conf_num": "1", "transcoded": ["u"], "file_size": ' + size + b"}"
    with pytest.raises(Rejection) as caught:
        normalise(body, RECEIVED)
    assert caught.value.code == "wrong_type"


def test_huge_integer_trans_date_is_a_rejection_not_a_crash() -> None:
    # Found 2026-12-01 (fixed): float() of an integer over ~1.8e308 raised OverflowError, not a Rejection.
    body = b'{"type": "roomdrop", "app_id": "a", "conf_num": "1", "trans_date": ' + b"9" * 400 + b"}"
    with pytest.raises(Rejection) as caught:
        normalise(body, RECEIVED)
    assert caught.value.code == "bad_trans_date"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_json_number_literals_are_not_json(literal: bytes) -> None:
    # Found 2026-12-01 (fixed): Python's json.loads accepts NaN / Infinity, which RFC 8259 JSON does not have;
    # such a body was accepted (and its raw text stored) although the contract rejects a body that is not JSON.
    body = b'{"type": "recording", "app_id": "a", "conf_num": "1", "score": ' + literal + b"}"
    with pytest.raises(Rejection) as caught:
        normalise(body, RECEIVED)
    assert caught.value.code == "not_json"


# --------------------------------------------------------------------------------------------------------
# Hypothesis properties
# --------------------------------------------------------------------------------------------------------

ids = st.one_of(st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=16),
                st.text(min_size=1, max_size=8), st.integers(0, 10**12))
urls = st.builds(lambda host, path: f"https://{host}/{path}", st.sampled_from(["files.enablex.io", "h.example.com"]),
                 st.text(string.ascii_letters + string.digits + "/._-", min_size=1, max_size=24))
file_lists = st.one_of(urls, st.lists(urls, max_size=3), st.lists(urls.map(lambda u: {"url": u}), max_size=3),
                       st.lists(st.one_of(urls, urls.map(lambda u: {"url": u})), max_size=3))
seconds = st.integers(MS_THRESHOLD // 1000, MS_THRESHOLD - 1)  # 1973 .. 5138: unambiguous as both s and ms
instants = st.datetimes(min_value=dt.datetime(1973, 3, 4), max_value=dt.datetime(2100, 1, 1),
                        timezones=st.just(dt.timezone.utc))
trans_dates = st.one_of(seconds, seconds.map(str), seconds.map(lambda s: s * 1000 + 7),
                        seconds.map(lambda s: str(s * 1000)),
                        instants.map(lambda d: d.strftime("%Y-%m-%d %H:%M:%S")),
                        instants.map(lambda d: d.isoformat().replace("+00:00", "Z")), st.none())
stages = st.one_of(st.integers(0, 99), st.integers(0, 99).map(str))
sizes = st.one_of(st.integers(0, 2**62), st.integers(0, 2**62).map(str))
destinations = st.one_of(st.sampled_from(["awss3", "ftp", "sftp", "ssh"]),
                         st.fixed_dictionaries({"name": st.sampled_from(["awss3", "ftp", "sftp", "ssh"])},
                                               optional={"host": st.text(max_size=20),
                                                         "account": st.text(max_size=20)}))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
unknown_fields = st.dictionaries(st.text(max_size=10).filter(lambda k: k not in RECORD_FIELDS | {
    "recording", "transcoded", "chatdata", "files", "stage", "file_size"}),
    json_values.filter(lambda v: "NaN" not in json.dumps(v) and "Infinity" not in json.dumps(v)), max_size=3)


@st.composite
def payloads(draw: st.DrawFn) -> dict:
    """A valid EnableX payload of either documented shape (or of a type EnableX may add later)."""
    event_type = draw(st.sampled_from(["roomdrop", "recording", "transcoded", "file-transfer", "chatdata",
                                       "room-live-recording-on"]))
    app_id = draw(ids.filter(lambda a: "/" not in str(a)))  # an app_id with '/' is rejected (below)
    payload: dict[str, Any] = {"type": event_type, "app_id": app_id, "conf_num": draw(ids)}
    payload.update(draw(st.fixed_dictionaries({}, optional={
        "room_id": ids, "trans_date": trans_dates, "recording": file_lists, "transcoded": file_lists,
        "chatdata": file_lists, "files": file_lists, "stage": stages, "file_size": sizes,
        "destination": destinations})))
    payload.update({k: v for k, v in draw(unknown_fields).items() if k not in payload})
    return payload


def reordered(value: Any) -> Any:
    """The same JSON value with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {k: reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(v) for v in value]
    return value


def url_count(payload: dict) -> int:
    count = 0
    for key in ("recording", "transcoded", "chatdata", "files"):
        value = payload.get(key)
        count += 0 if value is None else len(value) if isinstance(value, list) else 1
    return count


@settings(max_examples=150, deadline=None)
@given(payloads())
def test_valid_payloads_normalise_and_round_trip_through_avro(payload: dict) -> None:
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    event = normalise(body, RECEIVED, "198.51.100.1")
    assert set(event) == RECORD_FIELDS
    assert event["type"] == payload["type"]
    assert event["app_id"] == str(payload["app_id"]) and event["conf_num"] == str(payload["conf_num"])
    assert len(event["files"]) == url_count(payload)
    assert {f["kind"] for f in event["files"]} <= FILE_KINDS
    assert event["raw"] == body.decode("utf-8")
    codec = default_codec()
    value = codec.encode("WebhookEvent", event)
    assert codec.decode(value) == event


@settings(max_examples=100, deadline=None)
@given(payloads(), st.sampled_from([None, 0, 1, 2, "\t"]), st.booleans(), st.sampled_from([(",", ":"), (", ", ": "),
                                                                                         (" ,\n", " :  ")]))
def test_event_id_ignores_key_order_whitespace_and_escaping(payload: dict, indent: Any, ascii_only: bool,
                                                           separators: tuple[str, str]) -> None:
    plain = normalise(json.dumps(payload).encode(), RECEIVED)
    other_text = json.dumps(reordered(payload), indent=indent, ensure_ascii=ascii_only, separators=separators)
    other = normalise(("\n " + other_text + " \r\n").encode("utf-8"), RECEIVED + 1)
    assert other["event_id"] == plain["event_id"] == event_id_of(payload)
    drop = {"raw", "received_at"}
    assert {k: v for k, v in other.items() if k not in drop} == {k: v for k, v in plain.items() if k not in drop}


@settings(max_examples=150, deadline=None)
@given(payloads(), seconds)
def test_seconds_and_milliseconds_of_one_instant_agree(payload: dict, unix_s: int) -> None:
    forms = [unix_s, str(unix_s), unix_s * 1000, str(unix_s * 1000), float(unix_s),
             dt.datetime.fromtimestamp(unix_s, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")]
    events = [normalise(json.dumps({**payload, "trans_date": form}).encode(), RECEIVED) for form in forms]
    assert {e["trans_date"] for e in events} == {unix_s * 1000}
    same = [{k: v for k, v in e.items() if k not in {"event_id", "raw"}} for e in events]
    assert all(s == same[0] for s in same)


@settings(max_examples=150, deadline=None)
@given(st.integers(MS_THRESHOLD, 4_102_444_800_000), st.integers(-14 * 60, 14 * 60))
@example(1_079_337_347_472, 0)
def test_millisecond_instant_in_every_form(unix_ms: int, offset_minutes: int) -> None:
    instant = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(milliseconds=unix_ms)
    local = instant.astimezone(dt.timezone(dt.timedelta(minutes=offset_minutes)))
    forms = [unix_ms, str(unix_ms), unix_ms / 1000, str(unix_ms / 1000),
             instant.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
             local.isoformat(timespec="milliseconds"),
             instant.strftime("%Y-%m-%d %H:%M:%S.") + f"{unix_ms % 1000:03d}"]
    assert {form: parse_trans_date(form) for form in forms} == {form: unix_ms for form in forms}


# Fuzzing: whatever the bytes, normalise returns a record or raises Rejection, nothing else; what it returns
# is always storable (Avro round trip).
number_tokens = st.one_of(st.integers().map(str), st.floats().map(repr), st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "-0", "0.0", "1E2", "01", "1.", ".5"]),
    st.integers(4000, 6000).map(lambda n: "9" * n))


@st.composite
def fuzz_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 4))
    if kind == 0:  # arbitrary bytes
        return draw(st.binary(max_size=300))
    if kind == 1:  # arbitrary JSON values (Python's dialect: NaN / Infinity included)
        return json.dumps(draw(json_values), ensure_ascii=draw(st.booleans())).encode("utf-8")
    base = draw(payloads())
    if kind == 2:  # a valid payload with known keys set to arbitrary JSON values
        base.update(draw(st.dictionaries(st.sampled_from(
            ["type", "app_id", "conf_num", "room_id", "trans_date", "recording", "transcoded", "chatdata", "files",
             "stage", "file_size", "destination"]), json_values, max_size=3)))
        return json.dumps(base).encode()
    if kind == 3:  # a valid payload with a known key set to a raw number token
        key = draw(st.sampled_from(["trans_date", "file_size", "stage", "conf_num", "app_id", "room_id", "extra"]))
        text = json.dumps({k: v for k, v in base.items() if k != key})
        return (text[:-1] + f', "{key}": {draw(number_tokens)}}}').encode()
    body = json.dumps(base).encode()  # a valid payload with some bytes replaced
    at = draw(st.integers(0, len(body)))
    return body[:at] + draw(st.binary(max_size=8)) + body[at + draw(st.integers(0, 8)):]


@settings(max_examples=400, deadline=None)
@given(fuzz_bodies())
@example(b'{"type": "transcoded", "app_id": "a", "conf_num": "1", "file_size": 1e400}')
@example(b'{"type": "x", "app_id": "a", "n": ' + b"9" * 5000 + b"}")
@example(b'{"type": "roomdrop", "app_id": "a", "conf_num": "1", "trans_date": ' + b"9" * 400 + b"}")
def test_normalise_returns_a_record_or_raises_rejection_nothing_else(body: bytes) -> None:
    try:
        event = normalise(body, RECEIVED)
    except Rejection as rejection:
        assert rejection.code in {"not_utf8", "not_json", "not_object", "missing_field", "wrong_type",
                                  "bad_trans_date", "bad_unicode"}
        return
    assert set(event) == RECORD_FIELDS
    codec = default_codec()
    assert codec.decode(codec.encode("WebhookEvent", event)) == event


@pytest.mark.parametrize("app_id", ["a/b", "/", "app/"])
def test_app_id_with_a_slash_is_rejected(app_id: str) -> None:
    body = json.dumps({"type": "roomdrop", "app_id": app_id, "conf_num": "1"}).encode()
    with pytest.raises(Rejection) as caught:
        normalise(body, RECEIVED)
    assert caught.value.code == "bad_app_id"


def test_allowed_app_ids() -> None:
    body = json.dumps({"type": "roomdrop", "app_id": "theirs", "conf_num": "1"}).encode()
    with pytest.raises(Rejection) as caught:
        normalise(body, RECEIVED, allowed_app_ids=frozenset({"ours"}))
    assert caught.value.code == "app_id_not_allowed"
    assert normalise(body, RECEIVED, allowed_app_ids=frozenset({"ours", "theirs"}))["app_id"] == "theirs"
    assert normalise(body, RECEIVED)["app_id"] == "theirs"
