"""End to end: `enx-streams dev` as a user runs it, webhooks of both shapes and every type posted to it,
results read back with `enx-streams sql --format JSONEachRow`; Ctrl-C (SIGTERM) stops everything in 30 s
and a second `dev` on the same data directory resumes with all data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streams import config
from streams.broker.local import free_port

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

    took = dev.stop()
    assert took < 30, f"dev took {took:.1f} s to stop"
    assert proc.returncode == 0, dev.out.read_text()[-3000:]
    from streams.broker.local import LocalKafka

    assert not LocalKafka(dev.data_dir, config.default_cache_dir(), port=dev.kafka_port).status().running

    no_owner = subprocess.run([sys.executable, "-m", "streams.cli", "sql", "SELECT 1"], env=dev.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    assert no_owner.returncode != 0 and "enx-streams dev" in no_owner.stderr

    # a second dev on the same data directory resumes with all data
    dev.start()
    again_rows = dev.sql("SELECT count() AS n FROM enablex.webhook_events FINAL")
    assert int(again_rows[0]["n"]) == len(BODIES)
    assert dev.stop() < 30
