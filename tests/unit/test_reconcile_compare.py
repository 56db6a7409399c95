"""The reconciler's comparison (pure): what EnableX's archive and CDR hold against the webhook log."""

from __future__ import annotations

import hashlib

from streams.reconcile.compare import (SESSION_UNKNOWN, WEBHOOK_MISSING, compare, finding_id, sessions_of,
                                       urls_of)

T0 = 1_700_000_000_000  # ms
NOW = T0 + 3_600_000
GRACE = 600.0


def archive_entry(conf: str = "c1", **over) -> dict:
    entry = {"_id": f"a-{conf}", "trans_date": T0 // 1000, "conf_num": conf, "app_id": "app", "room_id": "r1",
             "recording": [{"url": f"https://x/{conf}/rec.mkv"}], "transcoded": [{"url": f"https://x/{conf}/c.mp4"}],
             "chatdata": f"https://x/{conf}/chat.json", "metadata": f"https://x/{conf}/meta.json"}
    entry.update(over)
    return entry


def cdr_row(conf: str = "c1", disconnect=None, cdr_id: str = "d1", **over) -> dict:
    row = {"trans_date": "2023-11-14 22:13:20", "conf_num": conf, "app_id": "app", "cdr_id": cdr_id,
           "room": {"room_id": "r1", "connect_dt": "2023-11-14T21:13:20Z",
                    "disconnect_dt": "2023-11-14T22:13:20Z" if disconnect is None else disconnect, "duration": 60},
           "user": {"role": "moderator"}, "usage": {}}
    row.update(over)
    return row


ALL = {"roomdrop", "recording", "transcoded", "chatdata"}


def test_the_id_is_the_contract_s() -> None:
    assert finding_id("app", "c1", "transcoded") == hashlib.sha256(b"app/c1|transcoded").hexdigest()[:32]
    assert len(finding_id("a", "b", "c")) == 32


def test_a_session_present_in_both_gives_nothing() -> None:
    assert compare([archive_entry()], [cdr_row()], {"app/c1": ALL}, NOW, GRACE) == []


def test_lost_transcoded() -> None:
    [f] = compare([archive_entry()], [cdr_row()], {"app/c1": ALL - {"transcoded"}}, NOW, GRACE)
    assert (f.kind, f.missing_type, f.source, f.urls, f.archive_id) == \
        (WEBHOOK_MISSING, "transcoded", "archive", ("https://x/c1/c.mp4",), "a-c1")
    assert (f.app_id, f.conf_num, f.room_id, f.trans_date, f.found_at) == ("app", "c1", "r1", T0, NOW)
    assert f.key == "app/c1" and f.finding_id == finding_id("app", "c1", "transcoded")
    record = f.record()
    assert record["urls"] == ["https://x/c1/c.mp4"] and record["finding_id"] == f.finding_id


def test_lost_chatdata_as_a_url_or_a_list() -> None:
    for chat in ("https://x/chat.json", ["https://x/chat.json"], [{"url": "https://x/chat.json"}]):
        [f] = compare([archive_entry(chatdata=chat)], [], {"app/c1": ALL - {"chatdata"}}, NOW, GRACE)
        assert (f.missing_type, f.urls) == ("chatdata", ("https://x/chat.json",))


def test_lost_roomdrop_from_the_cdr_ends_at_the_last_disconnect() -> None:
    rows = [cdr_row(disconnect="2023-11-14T22:00:00Z", cdr_id="d2"), cdr_row(cdr_id="d1")]
    [f] = compare([], rows, {"app/c1": {"recording"}}, NOW, GRACE)
    assert (f.kind, f.missing_type, f.source, f.urls, f.archive_id, f.room_id) == \
        (WEBHOOK_MISSING, "roomdrop", "cdr", (), "d1", "r1")
    assert f.trans_date == T0


def test_a_cdr_conference_with_no_event_is_session_unknown_not_also_webhook_missing() -> None:
    findings = compare([], [cdr_row()], {}, NOW, GRACE)
    assert [(f.kind, f.missing_type, f.source) for f in findings] == [(SESSION_UNKNOWN, "roomdrop", "cdr")]
    assert compare([], [cdr_row()], {"app/c1": set()}, NOW, GRACE)[0].kind == SESSION_UNKNOWN


def test_an_unknown_session_with_files_gives_one_finding_per_type_in_a_stable_order() -> None:
    findings = compare([archive_entry()], [cdr_row()], {}, NOW, GRACE)
    assert [(f.kind, f.missing_type) for f in findings] == [
        (SESSION_UNKNOWN, "roomdrop"), (WEBHOOK_MISSING, "recording"), (WEBHOOK_MISSING, "transcoded"),
        (WEBHOOK_MISSING, "chatdata")]
    again = compare(list(reversed([archive_entry()])), [cdr_row()], {}, NOW + 5, GRACE)
    assert [f.finding_id for f in again] == [f.finding_id for f in findings]


def test_metadata_alone_is_no_finding_and_empty_lists_hold_nothing() -> None:
    entry = archive_entry(recording=[], transcoded=None, chatdata="")
    assert compare([entry], [], {}, NOW, GRACE) == []


def test_items_younger_than_the_grace_period_are_skipped() -> None:
    young_now = T0 + 599_000
    assert compare([archive_entry()], [cdr_row()], {}, young_now, GRACE) == []
    assert len(compare([archive_entry()], [cdr_row()], {}, T0 + 600_000, GRACE)) == 4  # exactly at the limit


def test_a_conference_with_a_participant_still_connected_expects_no_roomdrop_yet() -> None:
    rows = [cdr_row(), cdr_row(cdr_id="d9", disconnect="")]
    assert compare([], rows, {}, NOW, GRACE) == []


def test_unreadable_times_are_reported_not_skipped_forever() -> None:
    [f] = compare([archive_entry(trans_date="yesterday", recording=[], chatdata=None)], [],
                  {"app/c1": {"roomdrop"}}, NOW, GRACE)
    assert f.missing_type == "transcoded" and f.trans_date is None


def test_trans_date_in_every_documented_form() -> None:
    for value in (T0 // 1000, T0, str(T0 // 1000), "2023-11-14 22:13:20", "2023-11-14T22:13:20Z"):
        [f] = compare([archive_entry(trans_date=value, recording=[], chatdata=None)], [], {"app/c1": {"x"}},
                      NOW, GRACE)
        assert f.trans_date == T0, value


def test_entries_of_one_session_merge_urls_and_take_the_latest_time() -> None:
    first = archive_entry(_id="a1", recording=[], chatdata=None, transcoded=[{"url": "https://x/1.mp4"}])
    second = archive_entry(_id="a2", recording=[], chatdata=None, trans_date=T0 // 1000 + 60,
                           transcoded=["https://x/2.mp4", "https://x/1.mp4"])
    [f] = compare([second, first], [], {"app/c1": {"roomdrop"}}, NOW, GRACE)
    assert f.urls == ("https://x/1.mp4", "https://x/2.mp4") and f.archive_id == "a1"
    assert f.trans_date == T0 + 60_000


def test_already_emitted_ids_are_left_out() -> None:
    findings = compare([archive_entry()], [cdr_row()], {}, NOW, GRACE)
    already = {findings[0].finding_id, findings[2].finding_id}
    left = compare([archive_entry()], [cdr_row()], {}, NOW, GRACE, already=already)
    assert [f.finding_id for f in left] == [findings[1].finding_id, findings[3].finding_id]


def test_numeric_conf_nums_the_default_app_id_and_junk_entries() -> None:
    entry = archive_entry(conf_num=42, app_id=None, recording=[], chatdata=None)
    junk = ["not an object", {"_id": "x"}, {"conf_num": "", "app_id": "app"}, None]
    [f] = compare([entry, *junk], junk, {}, NOW, GRACE, default_app_id="app")
    assert (f.app_id, f.conf_num, f.missing_type) == ("app", "42", "transcoded")
    assert compare([entry], [], {}, NOW, GRACE) == []  # no app_id anywhere: not a session


def test_other_sessions_do_not_count_and_sessions_of_lists_every_key() -> None:
    seen = {"app/c2": ALL}
    assert {f.conf_num for f in compare([archive_entry("c1"), archive_entry("c2")], [], seen, NOW, GRACE)} == {"c1"}
    assert sessions_of([archive_entry("c2")], [cdr_row("c1"), cdr_row("c3", app_id="b")]) == \
        [("app", "c1"), ("app", "c2"), ("b", "c3")]


def test_urls_of_every_shape() -> None:
    assert urls_of(None) == [] and urls_of("") == [] and urls_of([]) == []
    assert urls_of(" https://a ") == ["https://a"]
    assert urls_of([{"url": "https://a"}, "https://b", {"url": None}, 3, "https://a"]) == ["https://a", "https://b"]
    assert urls_of({"url": "https://a"}) == ["https://a"]
