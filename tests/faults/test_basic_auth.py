"""EnableX's Basic Auth against a real ingest process and a real broker: right, wrong, rotated, missing and
malformed credentials; rotated tokens; X-Forwarded-For only from a trusted proxy; 400 and 403 app ids
dead-lettered; no anonymous listener beyond loopback; and no password or Authorization value on disk, in
the captured output or in the dead letters on Kafka."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from streams.avro import default_codec
from streams.broker.local import LocalKafka, free_port
from tests.faults.test_security import files_holding, post
from tests.integration.test_ingest_spool import ROOT, Ingest, event_ids_in_log, poll

OLD_PW, NEW_PW = f"old-{uuid.uuid4().hex}", f"new-{uuid.uuid4().hex}"
TOKENS = (f"tok-{uuid.uuid4().hex}", f"tok-{uuid.uuid4().hex}")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def body(app_id: str, marker: str) -> bytes:
    return json.dumps({"type": "roomdrop", "app_id": app_id, "conf_num": marker, "trans_date": 1764000000}).encode()


@pytest.fixture
def ingest(own_broker: LocalKafka, tmp_path: Path) -> Iterator[Ingest]:
    proc = Ingest(tmp_path, own_broker.bootstrap)
    proc.env.update(ENX_INGEST_BASIC_AUTH=f"enablex:{OLD_PW},enablex:{NEW_PW}", ENX_INGEST_TOKEN=",".join(TOKENS),
                    ENX_TRUSTED_PROXIES="127.0.0.0/8", ENX_ALLOWED_APP_IDS="ours,also-ours")
    proc.start()
    try:
        yield proc
    finally:
        if proc.proc and proc.proc.poll() is None:
            proc.proc.kill()


def dead_letters(bootstrap: str, topic: str, count: int) -> list[dict]:
    async def run() -> list[dict]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False, group_id=f"read-{uuid.uuid4().hex}")
        await consumer.start()
        got: list[dict] = []
        try:
            async def fill() -> None:
                while len(got) < count:
                    for records in (await consumer.getmany(timeout_ms=300)).values():
                        got.extend(default_codec().decode(r.value) for r in records)
            await asyncio.wait_for(fill(), 60)
        finally:
            await consumer.stop()
        return got

    return asyncio.run(run())


def test_basic_auth_tokens_proxies_app_ids(ingest: Ingest, own_broker: LocalKafka,
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    url, accepted = ingest.url, []
    for headers, path in [(basic("enablex", OLD_PW), ""), (basic("enablex", NEW_PW), ""),
                          ({}, f"/{TOKENS[0]}"), ({}, f"/{TOKENS[1]}"), (basic("enablex", "wrong"), f"/{TOKENS[1]}")]:
        status, answer = post(url + path, body("ours", uuid.uuid4().hex), headers)
        assert status == 202, (path, answer)
        accepted.append(answer["event_id"])
    refused = []
    for headers, path in [(basic("enablex", "wrong"), ""), (basic("other", NEW_PW), ""), ({}, ""),
                          ({"Authorization": "Basic %%%not-base64"}, ""),
                          ({"Authorization": "Basic " + base64.b64encode(NEW_PW.encode()).decode()}, ""),
                          ({"Authorization": f"Bearer {NEW_PW}"}, ""), ({"Authorization": "Basic"}, ""),
                          ({}, "/tok-wrong"), (basic("enablex", NEW_PW + "x"), "/tok-wrong")]:
        marker = f"no-{uuid.uuid4().hex}"
        request = urllib_request(url + path, body("ours", marker), headers)
        assert request[0] == 401, (headers, path, request)
        assert request[1] == 'Basic realm="enx-streams"'
        assert "ENX_INGEST_BASIC_AUTH" in request[2]["error"] and "ENX_INGEST_TOKEN" in request[2]["error"]
        refused.append(marker)

    auth = basic("enablex", NEW_PW)
    forwarded = {**auth, "X-Forwarded-For": "6.6.6.6, 203.0.113.9", "Cookie": f"s={NEW_PW}", "X-Api-Key": "k-1"}
    status, slash = post(url, body("our/s", "1"), forwarded)
    assert status == 400 and slash["error"].startswith("bad_app_id:"), slash
    status, foreign = post(url, body("theirs", "1"), forwarded)
    assert status == 403 and foreign["error"].startswith("app_id_not_allowed:"), foreign

    letters = {dl["id"]: dl for dl in dead_letters(own_broker.bootstrap, f"{ingest.prefix}deadletter.v1", 2)}
    assert set(letters) == {slash["deadletter_id"], foreign["deadletter_id"]}
    for dl in letters.values():
        assert dl["source"] == "203.0.113.9"  # the peer (127.0.0.1) is a trusted proxy: its right-most hop
        assert dl["headers"]["x-forwarded-for"] == "203.0.113.9"
        assert not {"authorization", "cookie", "x-api-key"} & set(dl["headers"]), dl["headers"]
        assert NEW_PW not in json.dumps(dl["headers"]) + dl["raw"].decode(errors="replace")
    assert sorted(event_ids_in_log(own_broker.bootstrap, f"{ingest.prefix}webhooks.v1", 5)) == sorted(accepted)

    shown = subprocess.run([sys.executable, "-m", "streams.cli", "settings"], env=ingest.env, cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "ENX_INGEST_BASIC_AUTH=***" in shown.stdout, shown
    assert ingest.stop() == 0
    written = tmp_path_factory.getbasetemp()
    secrets = [OLD_PW, NEW_PW, *TOKENS, base64.b64encode(f"enablex:{NEW_PW}".encode()).decode()]
    for secret in secrets:
        assert secret not in shown.stdout + shown.stderr
        assert not files_holding(written, secret.encode()), f"a credential was written to disk: {secret[:6]}..."
    for marker in refused:
        assert not files_holding(own_broker.home, marker.encode()), "a 401 body was stored"


def urllib_request(url: str, data: bytes, headers: dict[str, str]) -> tuple[int, str | None, dict]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers.get("WWW-Authenticate"), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("WWW-Authenticate"), json.loads(exc.read())


def test_untrusted_peer_forwarded_for_ignored(own_broker: LocalKafka, tmp_path: Path) -> None:
    proc = Ingest(tmp_path, own_broker.bootstrap)
    proc.env.update(ENX_INGEST_TOKEN=TOKENS[0], ENX_TRUSTED_PROXIES="10.0.0.0/8")
    proc.start()
    try:
        status, answer = post(f"{proc.url}/{TOKENS[0]}", b"not json", {"X-Forwarded-For": "203.0.113.9"})
        assert status == 400
        (letter,) = dead_letters(own_broker.bootstrap, f"{proc.prefix}deadletter.v1", 1)
        assert letter["id"] == answer["deadletter_id"] and letter["source"] == "127.0.0.1"
        assert letter["headers"]["x-forwarded-for"] == "127.0.0.1"
    finally:
        proc.stop()


@pytest.mark.parametrize("flags, env, refused", [
    ([], {}, True),
    (["--allow-anonymous"], {}, False),
    ([], {"ENX_INGEST_BASIC_AUTH": "enablex:pw-1"}, False),
])
def test_no_anonymous_listener_beyond_loopback(tmp_path: Path, flags: list[str], env: dict, refused: bool) -> None:
    port = free_port()
    full = dict(Ingest(tmp_path, "127.0.0.1:1").env, ENX_INGEST_HOST="0.0.0.0", ENX_INGEST_PORT=str(port), **env)
    full.pop("ENX_INGEST_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "ingest", *flags], env=full, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        if refused:
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 2, out
            assert "ENX_INGEST_BASIC_AUTH" in out and "ENX_INGEST_TOKEN" in out and "--allow-anonymous" in out
        else:
            import urllib.request

            poll("ingest /healthz", lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz",
                                                                   timeout=2).status == 200, 60)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.communicate(timeout=30)
