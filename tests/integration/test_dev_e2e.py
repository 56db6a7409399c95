"""End to end: `enx-streams dev` as a user runs it, webhooks of both shapes and every type posted to it,
results read back with `enx-streams sql --format JSONEachRow`; Ctrl-C (SIGTERM) stops everything in 30 s
and a second `dev` on the same data directory resumes with all data. With EnableX's Server API credentials
(the local stand-in, tests/enablex_api.py), `dev` runs the reconciler too: a session whose `transcoded`
webhook never came but whose composite the archive lists is `met`, from the archive, with no page."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streams import config
from streams.broker.local import free_port
from tests.enablex_api import FakeEnableX

ROOT = Path(__file__).resolve().parents[2]
NOW = int(time.time())
ENDED = NOW - 600  # ended ten minutes ago: within the SLA, no alert expected

BODIES: list[dict[str, Any]] = [
    # shape of the notification document: Unix seconds, URL strings, a single transcoded URL
    {"type": "roomdrop", "trans_date": ENDED, "app_id": "e2e-app", "room_id": "r1", "conf_num": "c1"},
    {"type": "recording", "trans_date": ENDED + 60, "app_id": "e2e-app", "room_id": "r1", "conf_num": "c1",
     "recording": ["http://media.example/c1/a.mkv", "http://media.example/c1/b.mkv"]},
    {"type": "transcoded", "trans_date": ENDED + 300, "app_id": "e2e-app", "room_id": "r1", "conf_num": "c1",
     "recording": "http://media.example/c1/composite.mp4", "stage": "1", "file_size": "1048576"},
    {"type": "file-transfer", "trans_date": ENDED + 400, "app_id": "e2e-app", "room_id": "r1", "conf_num": "c1",
     "destination": {"name": "sftp", "host": "files.example", "account": ""},
     "files": [{"url": "sftp://files.example/c1/composite.mp4"}]},
    # shape of the recording guide: arrays of {"url": ...}, datetime strings
    {"type": "recording", "trans_date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ENDED + 30)),
     "app_id": "e2e-app", "room_id": "r2", "conf_num": "c2", "recording": [{"url": "http://media.example/c2/a.mkv"}]},
    {"type": "transcoded", "trans_date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ENDED + 900)),
     "app_id": "e2e-app", "room_id": "r2", "conf_num": "c2", "transcoded": [{"url": "http://media.example/c2/c.mp4"}]},
    {"type": "chatdata", "trans_date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ENDED + 120)),
     "app_id": "e2e-app", "room_id": "r2", "conf_num": "c2", "chatdata": [{"url": "http://media.example/c2/chat.json"}]},
]


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _poll(what: str, check: Callable[[], Any], timeout_s: float, proc: subprocess.Popen, log: Path) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"dev exited ({proc.returncode}):\n{log.read_text()[-4000:]}"
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
        time.sleep(0.5)  # poll interval
    raise AssertionError(f"{what} not seen within {timeout_s} s (last: {last!r}); dev output:\n"
                         f"{log.read_text()[-4000:]}")


def _when(value: Any, ok: Callable[[Any], bool]) -> Any:
    """``value`` when ``ok(value)``, else None (for polling)."""
    return value if ok(value) else None


class Dev:
    def __init__(self, tmp: Path) -> None:
        self.data_dir = tmp / "data"
        self.kafka_port = free_port()
        self.ingest_port = free_port()
        self.env = dict(os.environ, ENX_DATA_DIR=str(self.data_dir),
                        ENX_KAFKA_BOOTSTRAP=f"localhost:{self.kafka_port}", ENX_INGEST_PORT=str(self.ingest_port),
                        ENX_INGEST_HOST="127.0.0.1", ENX_PARTITIONS="2", ENX_CACHE_DIR=str(config.default_cache_dir()))
        self.out = tmp / "dev.out"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ingest_port}"

    def start(self) -> subprocess.Popen:
        with open(self.out, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "dev"], env=self.env, cwd=ROOT,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _poll("/readyz 200", lambda: _ready(self.url), 240, self.proc, self.out)
        return self.proc

    def sql(self, query: str) -> list[dict]:
        result = subprocess.run([sys.executable, "-m", "streams.cli", "sql", "--format", "JSONEachRow", query],
                                env=self.env, cwd=ROOT, capture_output=True, timeout=60)
        if result.returncode != 0:
            raise ValueError(result.stderr.decode())
        return [json.loads(line) for line in result.stdout.decode().splitlines() if line.strip()]

    def stop(self) -> float:
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        return time.monotonic() - started


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    stack = Dev(tmp_path)
    yield stack
    if stack.proc is not None and stack.proc.poll() is None:
        stack.proc.kill()
        stack.proc.wait()
    from streams.broker.local import LocalKafka

    LocalKafka(stack.data_dir, config.default_cache_dir(), port=stack.kafka_port).stop()


def test_dev_end_to_end(dev: Dev) -> None:
    proc = dev.start()
    banner = _poll("the banner", lambda: _when(dev.out.read_text(), lambda t: "dev is up" in t), 30, proc, dev.out)
    assert "/webhooks/enablex" in banner and "enx-streams sql" in banner

    ids = []
    for body in BODIES:
        status, answer = _post(dev.url + "/webhooks/enablex", json.dumps(body).encode())
        assert status == 202, answer
        ids.append(answer["event_id"])
    status, again = _post(dev.url + "/webhooks/enablex", json.dumps(BODIES[0]).encode())
    assert status == 202 and again["event_id"] == ids[0]
    status, rejected = _post(dev.url + "/webhooks/enablex", "{“type”: “roomdrop”}".encode())
    assert status == 400 and rejected["deadletter_id"]

    events = _poll("all events in ClickHouse",
                   lambda: _when(dev.sql("SELECT event_id, type, conf_num FROM enablex.webhook_events FINAL "
                                         "ORDER BY event_id"), lambda rows: len(rows) == len(BODIES)),
                   120, proc, dev.out)
    assert sorted(r["event_id"] for r in events) == sorted(ids)
    assert {r["type"] for r in events} == {"roomdrop", "recording", "transcoded", "file-transfer", "chatdata"}

    files = dev.sql("SELECT kind, url, stage, size_bytes, destination FROM enablex.session_files FINAL "
                    "ORDER BY url")
    assert {(f["kind"], f["url"]) for f in files} == {
        ("recording", "http://media.example/c1/a.mkv"), ("recording", "http://media.example/c1/b.mkv"),
        ("transcoded", "http://media.example/c1/composite.mp4"),
        ("transferred", "sftp://files.example/c1/composite.mp4"),
        ("recording", "http://media.example/c2/a.mkv"), ("transcoded", "http://media.example/c2/c.mp4"),
        ("chatdata", "http://media.example/c2/chat.json")}
    composite = next(f for f in files if f["url"].endswith("composite.mp4") and f["kind"] == "transcoded")
    assert composite["stage"] == "1" and int(composite["size_bytes"]) == 1048576
    assert next(f for f in files if f["kind"] == "transferred")["destination"] == "sftp"

    sessions = _poll("both sessions met",
                     lambda: _when(dev.sql("SELECT conf_num, sla_state, transcode_latency_s FROM "
                                           "enablex.sessions FINAL ORDER BY conf_num"),
                                   lambda rows: [r["sla_state"] for r in rows] == ["met", "met"]),
                     120, proc, dev.out)
    assert [r["conf_num"] for r in sessions] == ["c1", "c2"]
    assert float(sessions[0]["transcode_latency_s"]) == 300.0
    assert int(dev.sql("SELECT count() AS n FROM enablex.sla_alerts FINAL")[0]["n"]) == 0
    dead = _poll("the dead letter", lambda: dev.sql("SELECT id, reason FROM enablex.dead_letters FINAL"),
                 60, proc, dev.out)
    assert dead[0]["id"] == rejected["deadletter_id"]

    # both /metrics the banner names answer: ingest's, and the worker's on the free port dev gave it
    ingest_metrics, worker_metrics = re.findall(r"http://\S+/metrics", banner.split("metrics:", 1)[1].splitlines()[0])
    assert ingest_metrics == dev.url + "/metrics" and worker_metrics.startswith("http://127.0.0.1:")

    def scraped(url: str) -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    assert 'enx_ingest_accepted_total{type="roomdrop"}' in scraped(ingest_metrics)
    rows = _poll("the worker's metrics counting the dead letter's row",
                 lambda: _when(scraped(worker_metrics), lambda t: 'enx_sink_rows_inserted_total{table="dead_letters"} 1.0'
                               in t), 30, proc, dev.out)
    assert 'enx_worker_consumer_lag{group="enablex.processor"' in rows and 'role="sink"' in rows

    took = dev.stop()
    assert took < 30, f"dev took {took:.1f} s to stop"
    assert proc.returncode == 0, dev.out.read_text()[-3000:]
    from streams.broker.local import LocalKafka

    assert not LocalKafka(dev.data_dir, config.default_cache_dir(), port=dev.kafka_port).status().running

    # a stopped dev's data stays readable: sql opens the directory itself, read-only, and says so
    no_owner = subprocess.run([sys.executable, "-m", "streams.cli", "sql", "--format", "JSONEachRow",
                               "SELECT count() AS n FROM enablex.webhook_events FINAL"], env=dev.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert no_owner.returncode == 0, no_owner.stderr
    assert "no process owns" in no_owner.stderr and "read-only" in no_owner.stderr
    assert int(json.loads(no_owner.stdout)["n"]) == len(BODIES)

    # a second dev on the same data directory resumes with all data
    dev.start()
    again_rows = dev.sql("SELECT count() AS n FROM enablex.webhook_events FINAL")
    assert int(again_rows[0]["n"]) == len(BODIES)
    assert dev.stop() < 30


# -- the reconciler in dev: a lost `transcoded` webhook, rescued from the archive ------------------------

RECONCILE_APP = "e2e-reconcile-app"
SLA_S = 45 * 60  # ENX_TRANSCODE_SLA_MINUTES left at its default
GRACE_S = 120  # ENX_RECONCILE_GRACE_S: the archive's composite below is older than this when it is read
INTERVAL_S = 2  # ENX_RECONCILE_INTERVAL_S


def _utc(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def test_dev_reconciles_a_lost_transcoded_webhook(dev: Dev) -> None:
    app_key = f"e2e-secret-{uuid.uuid4().hex}"  # unique: any trace of it in a log is a leak
    conf = "lost-transcoded"
    with FakeEnableX(RECONCILE_APP, app_key) as enablex:
        dev.env.update(ENX_ENABLEX_APP_ID=RECONCILE_APP, ENX_ENABLEX_APP_KEY=app_key,
                       ENX_ENABLEX_API_URL=enablex.url, ENX_RECONCILE_INTERVAL_S=str(INTERVAL_S),
                       ENX_RECONCILE_GRACE_S=str(GRACE_S))
        proc = dev.start()
        out = _poll("the banner", lambda: _when(dev.out.read_text(), lambda t: "dev is up" in t), 30, proc, dev.out)
        assert f"reconciler: a pass every {INTERVAL_S} s against {enablex.url}" in out, out
        _poll("a reconciler pass against the stand-in", lambda: enablex.requests, 60, proc, dev.out)

        # The session ended 15 minutes ago: its deadline is 30 minutes ahead. Its roomdrop and recording
        # webhooks arrive; its transcoded webhook never does.
        ended = int(time.time()) - 900
        deadline_ms = (ended + SLA_S) * 1000
        composite_at = ended + 600  # EnableX made the composite 10 minutes after the end: on time
        composite = f"https://enablex.example/{conf}/composite.mp4"
        for body in ({"type": "roomdrop", "trans_date": ended, "app_id": RECONCILE_APP, "room_id": "room-r",
                      "conf_num": conf},
                     {"type": "recording", "trans_date": ended + 60, "app_id": RECONCILE_APP, "room_id": "room-r",
                      "conf_num": conf, "recording": [{"url": f"https://enablex.example/{conf}/a.mkv"}]}):
            status, answer = _post(dev.url + "/webhooks/enablex", json.dumps(body).encode())
            assert status == 202, answer
        _poll("both webhooks in ClickHouse",
              lambda: _when(dev.sql(f"SELECT type FROM enablex.webhook_events FINAL WHERE conf_num = '{conf}'"),
                            lambda rows: {r["type"] for r in rows} == {"roomdrop", "recording"}),
              120, proc, dev.out)

        # Only now does EnableX's archive list the session (with its CDR). The reconciler's first passes ran
        # before ingest took any webhook: had they read this archive then, they would rightly have reported
        # the roomdrop and the recording missing too, which is another story. Everything listed is older than
        # the grace, so the next pass reports exactly what the log lacks: the composite.
        enablex.cdr.append({"trans_date": _utc(ended), "conf_num": conf, "app_id": RECONCILE_APP,
                            "cdr_id": f"cdr-{conf}", "room": {"room_id": "room-r", "connect_dt": _utc(ended - 1800),
                                                              "disconnect_dt": _utc(ended), "duration": 1800},
                            "user": {"role": "moderator"}, "usage": {}})
        enablex.archive.append({"_id": f"arch-{conf}", "trans_date": _utc(composite_at), "conf_num": conf,
                                "app_id": RECONCILE_APP, "room_id": "room-r",
                                "recording": [{"url": f"https://enablex.example/{conf}/a.mkv"}],
                                "transcoded": [{"url": composite}], "chatdata": [],
                                "metadata": f"https://enablex.example/{conf}/meta.json"})
        assert composite_at + GRACE_S < time.time(), "the composite must be older than the grace when read"

        session = _poll("the session met from the archive",
                        lambda: _when(dev.sql(
                            "SELECT sla_state, reconciled, transcode_latency_s, "
                            "toUnixTimestamp64Milli(sla_deadline) AS deadline, "
                            "toUnixTimestamp64Milli(transcoded_at) AS transcoded FROM enablex.sessions FINAL "
                            f"WHERE app_id = '{RECONCILE_APP}' AND conf_num = '{conf}'"),
                            lambda rows: len(rows) == 1 and rows[0]["sla_state"] == "met"
                            and "transcoded" in rows[0]["reconciled"]),
                        120, proc, dev.out)[0]
        assert session["reconciled"] == ["transcoded"]  # the roomdrop and the recording came as webhooks
        assert int(session["deadline"]) == deadline_ms
        assert int(session["transcoded"]) == composite_at * 1000 and float(session["transcode_latency_s"]) == 600.0

        findings = _poll("the finding in ClickHouse",
                         lambda: dev.sql("SELECT kind, missing_type, source, urls, archive_id, "
                                         "toUnixTimestamp64Milli(found_at) AS found FROM enablex.reconcile_findings "
                                         f"FINAL WHERE app_id = '{RECONCILE_APP}' AND conf_num = '{conf}'"),
                         60, proc, dev.out)
        assert [{k: v for k, v in f.items() if k != "found"} for f in findings] == [
            {"kind": "webhook_missing", "missing_type": "transcoded", "source": "archive", "urls": [composite],
             "archive_id": f"arch-{conf}"}]
        # genuinely met: the deadline was still ahead when the archive told us, so nothing was ever due
        assert int(findings[0]["found"]) < deadline_ms

        files = _poll("the composite in session_files",
                      lambda: _when(dev.sql("SELECT kind, url, source FROM enablex.session_files FINAL "
                                            f"WHERE conf_num = '{conf}' ORDER BY url"),
                                    lambda rows: any(r["url"] == composite for r in rows)),
                      60, proc, dev.out)
        assert {(f["kind"], f["url"], f["source"]) for f in files} == {
            ("recording", f"https://enablex.example/{conf}/a.mkv", "webhook"),
            ("transcoded", composite, "reconcile")}
        assert dev.sql(f"SELECT alert_id, kind FROM enablex.sla_alerts FINAL WHERE conf_num = '{conf}'") == []
        assert all(h.startswith("Basic ") for h in enablex.auth_headers)

        took = dev.stop()
        assert took < 30 and proc.returncode == 0, dev.out.read_text()[-3000:]

    logs = [dev.out, *sorted((dev.data_dir / "logs").glob("*.log")), dev.data_dir / "kafka" / "broker.log"]
    worker_log = (dev.data_dir / "logs" / "worker.log").read_text(errors="replace")
    assert "1 new findings (webhook_missing 1, session_unknown 0)" in worker_log, worker_log[-3000:]
    basic = base64.b64encode(f"{RECONCILE_APP}:{app_key}".encode()).decode()  # the header's form of it
    for path in logs:
        text = path.read_text(errors="replace")
        assert app_key not in text and basic not in text, f"the app key is in {path}"
