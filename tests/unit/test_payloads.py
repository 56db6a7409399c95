"""Payload normalisation (streams/events.py): every JSON example of the seed documents, both payload shapes,
every trans_date form, every rejection, and hypothesis properties."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.avro import default_codec
from streams.events import Rejection, event_id_of, normalise, parse_trans_date

SEEDS = Path(__file__).resolve().parents[1] / "data" / "seeds"
RECEIVED = 1_764_000_123_456
T_S = 1_764_000_000  # 2025-11-24 16:00:00 UTC
FIELDS = {"type", "app_id", "room_id", "conf_num", "trans_date", "files", "destination", "raw", "source",
          "event_id", "received_at"}


def seed_examples() -> list[tuple[str, str]]:
    """(seed file, block) for every JSON-looking block of the seeds: a line holding only ``{`` up to the
    next line holding only ``}``, exactly as written."""
    out = []
    for path in sorted(SEEDS.glob("0*.txt")):
        out += [(path.name, b) for b in re.findall(r"(?ms)^\{[ \t]*\n.*?^\}[ \t]*$", path.read_text("utf-8"))]
    return out


EXAMPLES = seed_examples()


def test_every_seed_example_is_found() -> None:
    # counted by reading the seeds: 5 in the notification document, 3 webhooks + 2 SDK status maps in the other
    assert [name[:3] for name, _ in EXAMPLES].count("000") == 5
    assert [name[:3] for name, _ in EXAMPLES].count("003") == 5


@pytest.mark.parametrize("seed,block", EXAMPLES, ids=[f"{n[:3]}-{i}" for i, (n, _) in enumerate(EXAMPLES)])
def test_seed_examples_as_written_are_rejected_not_repaired(seed: str, block: str) -> None:
    with pytest.raises(Rejection) as caught:
        normalise(block.encode(), RECEIVED)
    assert caught.value.code == "not_json"
    if any(q in block for q in "“”"):
        assert "typographic quotes" in caught.value.detail


PLACEHOLDERS = {"Unix Timestamp": str(T_S), "Datetime": "2025-11-24 16:00:00", "app_id": "app-1",
                "room_id": "room-1", "conf_num": "conf-1", "stage": "2", "file_size": "1048576"}


def instantiate(block: str) -> bytes:
    """What a seed sketch describes, as EnableX would post it: ASCII quotes, no comments, no trailing comma,
    each placeholder replaced by a value of the documented kind. Done by the test, to show what each example
    means; ingest itself never repairs a body."""
    text = block.translate({ord("“"): '"', ord("”"): '"'})
    text = re.sub(r"/\*.*?\*/", "", text)
    text = re.sub(r",(\s*[}\]])", r"\1", text)
    text = text.replace('"Unix Timestamp"', PLACEHOLDERS["Unix Timestamp"])
    text = text.replace('"Datetime"', f'"{PLACEHOLDERS["Datetime"]}"')
    for field in ("app_id", "room_id", "conf_num", "stage", "file_size"):
        text = re.sub(rf'"{field}":\s*"String"', f'"{field}": "{PLACEHOLDERS[field]}"', text)
    text = re.sub(r'"name":\s*""', '"name": "awss3"', text)
    text = re.sub(r'"account":\s*""', '"account": "acct-1"', text)
    return text.encode()


T_MS = T_S * 1000
URL = "http://FQDN/path/file"
# per webhook example (by position in EXAMPLES): type, trans_date (ms), files, destination
EXPECTED = {
    1: ("roomdrop", T_MS, [], None),
    2: ("recording", T_MS, [("recording", URL, None, None)], None),
    3: ("transcoded", T_MS, [("transcoded", URL, "2", 1048576)], None),
    4: ("file-transfer", T_MS, [("transferred", URL, None, None)], {"name": "awss3", "host": None,
                                                                  "account": "acct-1"}),
    5: ("recording", T_MS, [("recording", URL, None, None)], None),
    6: ("transcoded", T_MS, [("transcoded", URL, None, None)], None),
    7: ("chatdata", T_MS, [("chatdata", URL, None, None)], None),
}


@pytest.mark.parametrize("index", sorted(EXPECTED))
def test_seed_examples_instantiated_normalise_to_the_documented_event(index: int) -> None:
    kind, trans_ms, files, destination = EXPECTED[index]
    body = instantiate(EXAMPLES[index][1])
    event = normalise(body, RECEIVED, "10.1.2.3")
    assert (event["type"], event["app_id"], event["room_id"], event["conf_num"]) == (kind, "app-1", "room-1",
                                                                                    "conf-1")
    assert event["trans_date"] == trans_ms
    assert [(f["kind"], f["url"], f["stage"], f["size_bytes"]) for f in event["files"]] == files
    assert event["destination"] == destination
    assert event["raw"] == body.decode() and event["source"] == "10.1.2.3" and event["received_at"] == RECEIVED
    assert default_codec().decode(default_codec().encode("WebhookEvent", event)) == event


def test_the_other_seed_blocks_are_no_events() -> None:
    # the type-constant sketch has no app_id; the SDK status maps are not JSON even with ASCII quotes
    with pytest.raises(Rejection) as caught:
        normalise(instantiate(EXAMPLES[0][1]), RECEIVED)
    assert caught.value.code == "missing_field"
    for _, block in EXAMPLES[8:]:
        with pytest.raises(Rejection) as caught:
            normalise(instantiate(block), RECEIVED)
        assert caught.value.code == "not_json"


def body(**fields: object) -> bytes:
    return json.dumps({"app_id": "a", "conf_num": "1", **fields}).encode()


@pytest.mark.parametrize("fields,files", [
    ({"type": "recording", "recording": ["u1", "u2"]}, [("recording", "u1"), ("recording", "u2")]),
    ({"type": "recording", "recording": [{"url": "u1"}]}, [("recording", "u1")]),
    ({"type": "recording", "recording": "u1"}, [("recording", "u1")]),
    ({"type": "transcoded", "recording": "u1"}, [("transcoded", "u1")]),  # notification shape
    ({"type": "transcoded", "transcoded": [{"url": "u1"}]}, [("transcoded", "u1")]),  # archive shape
    ({"type": "chatdata", "chatdata": [{"url": "c1"}, "c2"]}, [("chatdata", "c1"), ("chatdata", "c2")]),
    ({"type": "file-transfer", "files": [{"url": "f1"}]}, [("transferred", "f1")]),
    ({"type": "roomdrop"}, []),
])
def test_file_lists_in_both_shapes(fields: dict, files: list) -> None:
    event = normalise(body(**fields), RECEIVED)
    assert [(f["kind"], f["url"]) for f in event["files"]] == files


@pytest.mark.parametrize("stage,size,expected", [("3", "2048", ("3", 2048)), (3, 2048, ("3", 2048)),
                                                 (None, None, (None, None)), ("", "", (None, None))])
def test_stage_and_file_size_as_strings_or_numbers(stage: object, size: object, expected: tuple) -> None:
    event = normalise(body(type="transcoded", recording="u", stage=stage, file_size=size), RECEIVED)
    assert (event["files"][0]["stage"], event["files"][0]["size_bytes"]) == expected


@pytest.mark.parametrize("value,expected", [
    (T_S, T_MS), (str(T_S), T_MS), (T_S + 0.25, T_MS + 250), (T_MS, T_MS), (str(T_MS), T_MS),
    ("2025-11-24 16:00:00", T_MS), ("2025-11-24T16:00:00Z", T_MS), ("2025-11-24T16:00:00+00:00", T_MS),
    ("2025-11-24T18:00:00+02:00", T_MS), ("2025-11-24T16:00:00.5Z", T_MS + 500), (None, None), ("", None),
])
def test_trans_date_forms_all_utc(value: object, expected: int | None) -> None:
    assert parse_trans_date(value) == expected


def test_destination_forms_unknown_fields_and_types() -> None:
    event = normalise(body(type="file-transfer", destination="sftp", files=["f"]), RECEIVED)
    assert event["destination"] == {"name": "sftp", "host": None, "account": None}
    event = normalise(body(type="file-transfer", destination={"name": "ftp", "host": "h"}, files=["f"]), RECEIVED)
    assert event["destination"] == {"name": "ftp", "host": "h", "account": None}
    raw = body(type="whiteboard", extra={"nested": [1, 2]}, conf_num=None)
    event = normalise(raw, RECEIVED)
    assert event["type"] == "whiteboard" and event["conf_num"] is None and json.loads(event["raw"])["extra"]
    assert normalise(body(type="roomdrop", conf_num=12345), RECEIVED)["conf_num"] == "12345"


@pytest.mark.parametrize("raw,code", [
    (b"\xff\xfe{}", "not_utf8"), (b"", "not_json"), (b"{", "not_json"), (b"[" * 100_000, "not_json"),
    (b'"text"', "not_object"), (b"null", "not_object"),
    (body(conf_num="1"), "missing_field"),
    (json.dumps({"type": "recording", "conf_num": "1"}).encode(), "missing_field"),
    (body(type="recording", conf_num=None), "missing_field"), (body(type=["recording"]), "wrong_type"),
    (body(type="recording", recording=[1]), "wrong_type"),
    (body(type="recording", recording=[{"url": None}]), "wrong_type"),
    (body(type="transcoded", recording="u", file_size="big"), "wrong_type"),
    (body(type="transcoded", recording="u", file_size=-1), "wrong_type"),
    (body(type="file-transfer", destination=["x"]), "wrong_type"), (body(type="roomdrop", stage=True), "wrong_type"),
    (body(type="roomdrop", trans_date="Unix Timestamp"), "bad_trans_date"),
    (body(type="roomdrop", trans_date=-5), "bad_trans_date"),
    (body(type="roomdrop", trans_date=True), "bad_trans_date"),
    (body(type="roomdrop", trans_date=[1]), "bad_trans_date"),
    (b'{"type": "roomdrop", "app_id": "\\ud800"}', "bad_unicode"),
])
def test_rejections_have_stable_codes(raw: bytes, code: str) -> None:
    with pytest.raises(Rejection) as caught:
        normalise(raw, RECEIVED)
    assert caught.value.code == code and caught.value.reason.startswith(f"{code}: ")


# -- properties --------------------------------------------------------------------------------------

text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
urls = st.text("abcdefghij/:.", min_size=1, max_size=20)
file_list = st.one_of(urls, st.lists(urls, max_size=3), st.lists(st.builds(lambda u: {"url": u}, urls), max_size=3))
payloads = st.fixed_dictionaries(
    {"type": st.sampled_from(["roomdrop", "recording", "transcoded", "file-transfer", "chatdata", "other"]),
     "app_id": text, "conf_num": text},
    optional={"room_id": text, "trans_date": st.integers(0, 4_000_000_000), "recording": file_list,
              "transcoded": file_list, "chatdata": file_list, "files": file_list,
              "stage": st.one_of(text, st.integers(0, 99)), "file_size": st.integers(0, 2**40).map(str),
              "destination": st.fixed_dictionaries({"name": st.sampled_from(["awss3", "ftp", "sftp", "ssh"])}),
              "unknown_field": st.dictionaries(text, st.integers(), max_size=2)})


@given(st.binary(max_size=300))
def test_any_bytes_give_an_event_or_a_rejection(raw: bytes) -> None:
    try:
        event = normalise(raw, RECEIVED)
    except Rejection:
        return
    assert set(event) == FIELDS


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3)))
def test_any_json_value_gives_an_event_or_a_rejection(value: object) -> None:
    try:
        normalise(json.dumps(value).encode(), RECEIVED)
    except Rejection:
        pass


@given(payloads, st.randoms())
def test_valid_payloads_normalise_and_encode_and_their_id_ignores_layout(payload: dict, rnd) -> None:
    event = normalise(json.dumps(payload).encode(), RECEIVED)
    assert set(event) == FIELDS and event["type"] == payload["type"] and event["app_id"] == payload["app_id"]
    assert default_codec().decode(default_codec().encode("WebhookEvent", event)) == event
    items = list(payload.items())
    rnd.shuffle(items)
    relaid = json.dumps(dict(items), indent=rnd.choice([None, 2]), ensure_ascii=rnd.choice([True, False]))
    assert normalise(relaid.encode(), RECEIVED + 1)["event_id"] == event["event_id"] == event_id_of(payload)


@given(st.integers(0, 99_999_999_999), st.integers(0, 999))
def test_seconds_and_milliseconds_of_one_instant_agree(seconds: int, millis: int) -> None:
    instant_ms = seconds * 1000 + millis
    if instant_ms >= 100_000_000_000:  # below that, a number is read as seconds (see MS_THRESHOLD)
        assert parse_trans_date(instant_ms) == parse_trans_date(f"{seconds}.{millis:03d}") == instant_ms
