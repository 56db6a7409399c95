"""Dead letters for records a consumer could not use (streams/dead_letters.py)."""

from __future__ import annotations

from streams import dead_letters
from streams.avro import default_codec
from streams.sink import rows as R

T0 = 1_700_000_000_123
codec = default_codec()


def letter(by: str = "sink", offset: int = 17, key: bytes | None = b"app/42",
           headers: list[tuple[str, bytes]] | None = None) -> dict:
    return dead_letters.for_record(by, "enablex.webhooks.v1", 1, offset, T0, b"garbage", key,
                                   [("trace", b"x")] if headers is None else headers, "undecodable: no header")


def test_the_same_record_gives_the_same_letter_and_another_record_another_id():
    assert letter() == letter()
    assert letter()["id"] != letter(offset=18)["id"]


def test_the_sink_and_the_processor_give_one_record_two_letters():
    sink, processor = letter("sink"), letter("processor")
    assert sink["id"].startswith("sink-") and processor["id"].startswith("processor-")
    assert sink["id"][len("sink-"):] == processor["id"][len("processor-"):]


def test_coordinates_time_key_and_headers_are_kept():
    a = letter()
    assert a["source"] == "enablex.webhooks.v1/1/17" and a["received_at"] == T0
    assert a["headers"] == {"trace": "x", "kafka_key": "app/42"}
    assert letter(key=None, headers=[("bad", b"\xff")])["headers"] == {"bad": "\ufffd"}
    assert dead_letters.for_record("sink", "t", 0, 0, -5, None, None, [], "r")["received_at"] == 0
    huge = dead_letters.for_record("processor", "t", 0, 0, 10**23, None, None, [], "r")
    assert huge["received_at"] == 2**63 - 1 and codec.decode(codec.encode("DeadLetter", huge)) == huge


def test_it_is_a_valid_dead_letter_that_becomes_a_row():
    row = R.dead_letter_row(codec.decode(codec.encode("DeadLetter", letter())))
    assert row["reason_code"] == "undecodable" and row["raw"] == b"garbage"
    assert row["source"] == "enablex.webhooks.v1/1/17"


def test_an_identity_tells_apart_records_at_the_same_coordinates_of_a_recreated_topic():
    def at(identity: str) -> str:
        return dead_letters.for_record("processor", "p.processor-commands", 0, 5, T0, b"{}", None, [], "r",
                                       identity=identity)["id"]
    assert at("1764633600.123") != at("1764637200.456")
    assert at("1764633600.123") == at("1764633600.123")
    assert at("") == dead_letters.for_record("processor", "p.processor-commands", 0, 5, T0, b"{}", None, [], "r")["id"]
