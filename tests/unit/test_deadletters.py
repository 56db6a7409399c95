"""``deadletters list|show|redrive``: the pure parts (streams/deadletters/select.py, view.py, redrive.py)."""

from __future__ import annotations

import json
import uuid

import pytest

from streams import dead_letters
from streams.deadletters import redrive as R
from streams.deadletters import select as S
from streams.deadletters import view as V
from streams.events import Rejection, event_id_of, normalise

T0 = 1_764_700_000_000  # 2025-12-02T18:26:40Z
NOW = T0 + 10 * 86400 * 1000
ALLOWED = frozenset({"app-ours"})


def payload(app_id: str = "app-theirs", conf_num: str = "c1", kind: str = "roomdrop") -> dict:
    return {"type": kind, "app_id": app_id, "room_id": "r1", "conf_num": conf_num, "trans_date": T0 // 1000}


def ingest_letter(raw: bytes | dict, reason: str = "app_id_not_allowed: app_id 'app-theirs' is not in ...",
                  received_at: int = T0, source: str | None = "192.0.2.7") -> dict:
    """A letter as streams/ingest/service.py writes it."""
    body = json.dumps(raw).encode() if isinstance(raw, dict) else raw
    return {"id": uuid.uuid4().hex, "received_at": received_at, "reason": reason, "raw": body,
            "headers": {"content-type": "application/json"}, "source": source}


def sink_letter() -> dict:
    return dead_letters.for_record("sink", "enablex.webhooks.v1", 0, 5, T0, b"\x00garbage", b"a/1", [],
                                   "undecodable: bad magic")


# -- select -----------------------------------------------------------------------------------------

def test_origin_tells_ingest_letters_from_the_consumers():
    assert S.origin(ingest_letter(payload())) == "ingest"
    assert S.origin(sink_letter()) == "sink"
    processor = dead_letters.for_record("processor", "t", 0, 1, T0, b"{}", None, [], "processor_failed: x")
    assert S.origin(processor) == "processor"
    assert S.origin({"id": "whatever"}) == "unknown"


def test_app_id_is_read_from_a_json_body_only():
    assert S.app_id_of(ingest_letter(payload("app-x"))) == "app-x"
    assert S.app_id_of(ingest_letter(b"{not json")) is None
    assert S.app_id_of(ingest_letter(b"\xff\xfe")) is None
    assert S.app_id_of(ingest_letter(b"[1, 2]")) is None
    assert S.app_id_of(ingest_letter(b'{"app_id": 7}')) is None


@pytest.mark.parametrize(("text", "expected"), [
    ("30m", NOW - 30 * 60_000), ("6h", NOW - 6 * 3_600_000), ("7d", NOW - 7 * 86_400_000),
    ("2w", NOW - 14 * 86_400_000), ("1.5h", NOW - 90 * 60_000),
    ("2025-12-02", 1_764_633_600_000), ("2025-12-02T18:26:40Z", T0), ("2025-12-02T19:26:40+01:00", T0),
    ("2025-12-02T18:26:40", T0),  # no zone: UTC
])
def test_since_reads_durations_and_iso_times(text: str, expected: int):
    assert S.parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "7 days", "-3d", "2025-13-01", ""])
def test_an_unreadable_since_says_what_is_accepted(text: str):
    with pytest.raises(S.FilterError, match="30m, 6h, 7d, 2w"):
        S.parse_since(text, NOW)


def test_an_unknown_origin_is_refused_with_the_known_ones():
    with pytest.raises(S.FilterError, match="ingest, processor, sink"):
        S.make_filter(None, None, None, NOW, origin="ingets")


def test_the_filters_combine():
    old = ingest_letter(payload("app-a"), received_at=T0)
    new = ingest_letter(payload("app-a"), received_at=NOW - 1000)
    other = ingest_letter(payload("app-b"), received_at=NOW - 1000)
    bad = ingest_letter(b"{not json", reason="not_json: Expecting property name", received_at=NOW - 1000)
    letters = [old, new, other, bad, sink_letter()]

    def chosen(**kw) -> list[dict]:
        f = S.make_filter(kw.get("reason"), kw.get("since"), kw.get("app_id"), NOW, kw.get("origin"))
        return [x for x in letters if f.matches(x)]

    assert chosen() == letters
    assert chosen(since="1h") == [new, other, bad]
    assert chosen(app_id="app-a") == [old, new]
    assert chosen(app_id="app-a", since="1h") == [new]
    assert chosen(reason="not_json") == [bad]
    assert chosen(reason="app_id_not_allowed: app_id 'app-theirs'") == [old, new, other]
    assert chosen(origin="sink") == [letters[-1]]
    assert chosen(origin="ingest", reason="undecodable") == []


# -- view -------------------------------------------------------------------------------------------

def test_a_list_line_names_time_id_origin_app_reason_and_redrive():
    letter = ingest_letter(payload("app-x"))
    line = V.list_line(letter, None)
    assert line.startswith("2025-12-02T18:26:40.000Z  " + letter["id"] + "  ingest  app-x  app_id_not_allowed")
    assert "[" not in line
    entry = {"outcome": "appended", "redriven_at": T0 + 1500, "event_id": "e1"}
    assert V.list_line(letter, entry).endswith("  [appended 2025-12-02T18:26:41.500Z]")


def test_a_list_line_is_one_line_with_a_bounded_reason_and_no_terminal_escapes():
    letter = ingest_letter(b"x", reason="not_json: " + "\x1b[2J\n" + "y" * 200)
    line = V.list_line(letter, None)
    assert "\n" not in line and "\x1b" not in line and "\\x1b" in line
    assert line.endswith("…") and len(line.split("  ")[-1]) == V.REASON_WIDTH


def test_show_prints_the_body_pretty_and_escapes_control_characters():
    letter = ingest_letter(payload("app-x"))
    text = V.show_text(letter, {"outcome": "appended", "redriven_at": T0, "event_id": "e1",
                                "appended_to": "enablex.webhooks.v1/1/7"})
    assert f"id:          {letter['id']}" in text and "origin:      ingest" in text
    assert "redrive:     appended 2025-12-02T18:26:40.000Z, event e1 at enablex.webhooks.v1/1/7" in text
    assert '  "app_id": "app-x"' in text and "content-type: application/json" in text
    hostile = V.show_text(ingest_letter(b"plain \x1b]0;owned\x07 text\nline 2", reason="not_json: x"), None)
    assert "\x1b" not in hostile and "\x07" not in hostile and "plain \\x1b]0;owned\\x07 text\nline 2" in hostile
    binary = V.show_text(ingest_letter(b"\xff\x00abc", reason="not_utf8: x"), None)
    assert "(not UTF-8, 5 bytes) b'\\xff\\x00abc'" in binary


def test_json_is_json_whatever_the_body_holds():
    text = ingest_letter(payload("app-x"))
    binary = ingest_letter(b"\xff\xfe\x00", reason="not_utf8: x")
    assert json.loads(json.dumps(V.as_json(text, None)))["raw"] == text["raw"].decode()
    out = json.loads(json.dumps(V.as_json(binary, {"outcome": "appended"})))
    assert "raw" not in out and out["raw_base64"] == "//4A" and out["redrive"] == {"outcome": "appended"}
    assert out["origin"] == "ingest" and out["received_at"] == "2025-12-02T18:26:40.000Z"


def test_an_impossible_time_is_shown_as_its_number():
    assert V.iso(2**63 - 1) == str(2**63 - 1)
    assert V.iso(None) == ""


# -- redrive decisions ------------------------------------------------------------------------------

def test_a_body_the_relaxed_rule_accepts_becomes_the_event_ingest_would_have_made():
    body = payload()
    letter = ingest_letter(body, received_at=T0, source="192.0.2.7")
    [still] = R.candidates([letter], {}, ALLOWED)
    assert still.action == R.STILL_REJECTED and still.reason == "app_id_not_allowed"
    [now] = R.candidates([letter], {}, None)
    assert now.action == R.APPEND
    assert now.event == normalise(letter["raw"], T0, "192.0.2.7")  # what ingest makes of it, received then
    assert now.event["event_id"] == event_id_of(body) and now.event["received_at"] == T0


def test_candidates_come_in_the_order_ingest_received_them():
    later = ingest_letter(payload(conf_num="c1", kind="recording"), received_at=T0 + 5)
    earlier = ingest_letter(payload(conf_num="c1", kind="roomdrop"), received_at=T0)
    retry = ingest_letter(json.dumps(payload(conf_num="c1", kind="roomdrop"), indent=1).encode(), received_at=T0 + 9)
    decided = R.against_log(R.candidates([retry, later, earlier], {}, None), set(), set())
    assert [(d.letter_id, d.action) for d in decided] == [
        (earlier["id"], R.APPEND), (later["id"], R.APPEND), (retry["id"], R.DUPLICATE)]


def test_a_letter_in_the_ledger_is_not_parsed_again():
    letter = ingest_letter(payload())
    [d] = R.candidates([letter], {letter["id"]: {"outcome": "appended"}}, None)
    assert d.action == R.REDRIVEN_BEFORE and d.event is None


def test_a_parser_failure_on_one_body_is_a_rejection_not_a_crash(monkeypatch: pytest.MonkeyPatch):
    def broken(*_args, **_kw):
        raise KeyError("boom")

    monkeypatch.setattr(R, "normalise", broken)
    [d] = R.candidates([ingest_letter(payload())], {}, None)
    assert d.action == R.STILL_REJECTED and d.reason == "parser_error"


def test_against_the_log_an_event_already_there_or_twice_in_this_run_is_not_appended():
    a, a_again = ingest_letter(payload(conf_num="c1")), ingest_letter(json.dumps(payload(conf_num="c1"), indent=2).encode())
    b, c, d = (ingest_letter(payload(conf_num=n)) for n in ("c2", "c3", "c4"))
    first = R.candidates([a, b, a_again, c, d], {}, None)
    in_log = {first[1].event["event_id"]}   # b was accepted since
    redriven = {c["id"]}                     # c was appended by a run that stopped before its ledger write
    decided = R.against_log(first, in_log, redriven)
    assert [x.action for x in decided] == [R.APPEND, R.IN_LOG, R.DUPLICATE, R.IN_LOG, R.APPEND]
    assert [x.letter_id for x in decided] == [a["id"], b["id"], a_again["id"], c["id"], d["id"]]


def test_the_other_decisions_pass_the_log_check_unchanged():
    rejected = R.Decision("x", R.STILL_REJECTED, reason="not_json")
    before = R.Decision("y", R.REDRIVEN_BEFORE)
    assert R.against_log([rejected, before], set(), set()) == [rejected, before]


def test_a_ledger_record_says_what_was_done_and_when():
    event = {"event_id": "e1"}
    assert R.ledger_record(R.Decision("L1", R.APPEND, event=event), T0, "w/0/3") == {
        "deadletter_id": "L1", "event_id": "e1", "outcome": "appended", "redriven_at": T0, "appended_to": "w/0/3"}
    assert R.ledger_record(R.Decision("L2", R.DUPLICATE, event=event), T0, None)["outcome"] == "duplicate"


def test_the_summary_counts_each_outcome():
    decisions = [R.Decision("1", R.APPEND), R.Decision("2", R.STILL_REJECTED, reason="not_json"),
                 R.Decision("3", R.STILL_REJECTED, reason="not_json"), R.Decision("4", R.IN_LOG)]
    from collections import Counter

    summary = R.Summary(selected=4, actions=Counter(d.action for d in decisions),
                        still_rejected=Counter(d.reason for d in decisions if d.action == R.STILL_REJECTED))
    assert summary.describe(dry_run=False) == ("4 dead letter(s) of ingest selected, appended 1, already in the "
                                               "log 1, redriven before 0, duplicates 0, still rejected 2 "
                                               "(not_json 2)")
    assert summary.describe(dry_run=True).startswith("4 dead letter(s) of ingest selected, would append 1,")


def test_rejection_codes_match_what_ingest_records():
    # the summary and --reason use the code before ':' of the reason ingest stored
    rejection = Rejection("app_id_not_allowed", "app_id 'x' is not in ENX_ALLOWED_APP_IDS")
    assert S.reason_code(rejection.reason) == rejection.code
