"""The processor judges the reconciler's findings beside the log (issue 19 item 3), as a real worker
process on the real broker: findings on ``<prefix>reconcile.v1``, webhooks on the log, a 6-second SLA.

- a session whose composite webhook is lost but whose archived composite is found before the deadline is
  ``met`` with the archive as its source and raises no alert;
- one found after its stall page is closed by a ``transcode_recovered`` whose cause is ``webhook_missing``;
- a session known only from the archive (a recording finding) is watched: it stalls at its deadline;
- a brand-new consumer group replaying both topics raises exactly the same alerts.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from streams.processor import rules
from tests.integration.test_processor import (APP, SLA_S, Workers, alerts_of, codec, confs, event, fresh_settings,
                                              kinds_per_session, produce, read)


def finding(conf: str, type_: str, trans_s: float, found_s: float) -> dict:
    key = f"{APP}/{conf}"
    return {"finding_id": rules.alert_id(key, f"found-{type_}"), "kind": "webhook_missing", "app_id": APP,
            "conf_num": conf, "room_id": "room", "missing_type": type_, "source": "archive",
            "trans_date": int(trans_s * 1000), "urls": [f"https://archive/{conf}/{type_}.mp4"],
            "archive_id": uuid.uuid4().hex[:24], "found_at": int(found_s * 1000)}


def publish_findings(settings, findings: list[dict]) -> None:
    produce(settings, findings, "reconcile", "ReconcileFinding")


def latest_states(records: list) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in records:
        if r.value is not None:
            state = codec.decode(r.value)
            if state["version"] >= out.get(state["conf_num"], {"version": -1})["version"]:
                out[state["conf_num"]] = state
    return out


def test_findings_make_sessions_met_close_pages_as_missing_webhooks_and_replay_the_same(bootstrap: str,
                                                                                         tmp_path: Path) -> None:
    settings = fresh_settings(bootstrap, tmp_path)
    workers = Workers(settings, tmp_path)
    rescued, closed, archived_only = confs("rescued-", 1), confs("closed-", 1), confs("only-", 1)
    try:
        workers.start(1)
        workers.ready(1)
        now = time.time()
        produce(settings, [event("recording", c, now, now) for c in rescued + closed])
        publish_findings(settings, [finding(c, "transcoded", now + 1, now + 1) for c in rescued]
                         + [finding(c, "recording", now, now) for c in archived_only])
        deadline = now + SLA_S

        def stalls_seen(got: list) -> bool:
            workers.check_alive()
            seen = kinds_per_session(alerts_of(got))
            return all(seen[(c, rules.STALLED)] for c in closed + archived_only)

        got = read(settings, "alerts", stalls_seen, 60)
        assert stalls_seen(got), workers.logs()
        assert time.time() > deadline
        found = time.time()
        publish_findings(settings, [finding(c, "transcoded", now + 2, found) for c in closed])

        def closed_seen(got: list) -> bool:
            return all(kinds_per_session(alerts_of(got))[(c, rules.RECOVERED)] for c in closed)

        got = read(settings, "alerts", closed_seen, 60)
        assert closed_seen(got), workers.logs()
        alerts = alerts_of(got)
        assert kinds_per_session(alerts) == {**{(c, rules.STALLED): 1 for c in closed + archived_only},
                                             **{(c, rules.RECOVERED): 1 for c in closed}}
        for a in alerts:
            if a["kind"] == rules.RECOVERED:
                assert a["cause"] == rules.WEBHOOK_MISSING and a["overdue_s"] == 0, a
        wanted = set(rescued + closed + archived_only)

        def states_final(got: list) -> bool:
            states = latest_states(got)
            return wanted <= set(states) and all(states[c]["sla_state"] == "met" for c in rescued + closed)

        states = latest_states(read(settings, "sessions", states_final, 60))
        for c in rescued + closed:
            assert states[c]["sla_state"] == "met" and states[c]["reconciled"] == ["transcoded"], states[c]
        for c in archived_only:
            assert states[c]["sla_state"] == "breached" and states[c]["reconciled"] == ["recording"], states[c]
        live = sorted((a["alert_id"], a["kind"], a["deadline"], a["overdue_s"], a["cause"]) for a in alerts)
    finally:
        codes = workers.stop()
    assert codes == [0], workers.logs()

    # a brand-new consumer group replays the log and the findings: the same alerts, by event time
    replay = Workers(settings, tmp_path / "replay", env={"ENXTEST_PROCESSOR_GROUP": f"replay-{uuid.uuid4().hex[:6]}"})
    (tmp_path / "replay").mkdir()
    replay.start(1)
    try:
        got = read(settings, "alerts", lambda g: len(g) >= 2 * len(live), 90)
        replayed = sorted((a["alert_id"], a["kind"], a["deadline"], a["overdue_s"], a["cause"]) for a in alerts_of(got))
        assert replayed == live + live or sorted(set(replayed)) == live, replay.logs()
    finally:
        replay.stop()
