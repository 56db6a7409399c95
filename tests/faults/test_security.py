"""Nobody gets in, and no secret gets out.

- The token is compared in constant time: every check goes through ``hmac.compare_digest``.
- The token is never written down: after a run of ingest with a token (right, wrong and missing tokens, the
  token also in credential headers of a rejected body, ``enx-streams settings`` printed), no file under the
  test session's temporary directory holds it: not the ingest log, not the spool, not the broker's log
  segments, not any other log the suite wrote.
- A 401's body is never stored (the same search finds the bodies that got 202, so the search works).
- The body limit is enforced before the whole body is read: a huge ``Content-Length`` gets 413 after a few
  bytes, and a chunked body without a length gets 413 as soon as it passes the limit, while the client has
  not finished sending.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.broker.local import LocalKafka
from streams.config import Secret, Settings
from streams.ingest import auth
from tests.integration.test_ingest_spool import ROOT, Ingest, event_ids_in_log

LIMIT = 64 * 1024


def test_token_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    creds = auth.Credentials.of(Settings(ingest_token=Secret("s3cret-token")))
    assert [auth.authorised(creds, None, given) for given in ("s3cret-token", "s3cret-tokex", "", None, "s3")] \
        == [True, False, False, False, False]
    assert len(calls) == 5 and all(b == b"s3cret-token" for _, b in calls)


def post(url: str, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def files_holding(root: Path, needle: bytes) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                found.append(path)
        except OSError:
            continue  # a file removed while walking (a broker segment being cleaned)
    return found


@pytest.fixture
def guarded_ingest(own_broker: LocalKafka, tmp_path: Path) -> Iterator[tuple[Ingest, str]]:
    token = f"tok-{uuid.uuid4().hex}"
    ingest = Ingest(tmp_path, own_broker.bootstrap)
    ingest.env.update(ENX_INGEST_TOKEN=token, ENX_MAX_BODY_BYTES=str(LIMIT))
    ingest.start()
    try:
        yield ingest, token
    finally:
        if ingest.proc and ingest.proc.poll() is None:
            ingest.proc.kill()


def event_body(marker: str) -> bytes:
    return json.dumps({"type": "roomdrop", "app_id": "sec", "conf_num": marker, "trans_date": 1764000000,
                       "marker": marker}).encode()


def test_token_never_logged_and_401_never_stored(guarded_ingest: tuple[Ingest, str], own_broker: LocalKafka,
                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    ingest, token = guarded_ingest
    base = ingest.url
    accepted, refused = [], []
    for i in range(5):
        ok = f"ok-{uuid.uuid4().hex}"
        status, answer = post(f"{base}/{token}", event_body(ok))
        assert status == 202, answer
        accepted.append((ok, answer["event_id"]))
        for url in (base, f"{base}/{token[:-1]}", f"{base}/{token}x", f"{base}/{token.upper()}"):
            bad = f"no-{uuid.uuid4().hex}"
            status, answer = post(url, event_body(bad))
            assert status == 401 and "ENX_INGEST_TOKEN" in answer["error"], answer
            refused.append(bad)
    # a rejected body with the token in its credential headers: dead-lettered, headers without the token
    status, answer = post(f"{base}/{token}", b"not json", headers={"Authorization": f"Bearer {token}",
                                                                   "X-Api-Key": token, "X-Other": f"t={token}"})
    assert status == 400 and answer["deadletter_id"]
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{ingest.port}/metrics", timeout=5).read().decode()
    assert 'reason="unauthorized"' in metrics and token not in metrics
    shown = subprocess.run([sys.executable, "-m", "streams.cli", "settings"], env=ingest.env, cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "ingest_token" in shown.stdout.lower().replace("-", "_"), shown
    assert token not in shown.stdout + shown.stderr

    ids = event_ids_in_log(own_broker.bootstrap, f"{ingest.prefix}webhooks.v1", len(accepted))
    assert sorted(ids) == sorted(e for _, e in accepted)
    assert ingest.stop() == 0

    everything = tmp_path_factory.getbasetemp()
    assert not files_holding(everything, token.encode()), "the token was written to disk"
    for bad in refused:
        assert not files_holding(own_broker.home, bad.encode()), f"a 401 body was stored: {bad}"
    assert not files_holding(Path(ingest.env["ENX_DATA_DIR"]), refused[0].encode())
    # the search works: the accepted bodies are in the broker's log segments
    for ok, _ in accepted:
        assert files_holding(own_broker.home, ok.encode()), f"control: {ok} not found in the broker's files"


def _request_head(path: str, extra: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{extra}\r\n").encode()


def _status_of(sock: socket.socket) -> int:
    answer = b""
    deadline = time.monotonic() + 10
    while b"\r\n" not in answer and time.monotonic() < deadline:
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else -1


def test_body_limit_before_the_body_is_read(guarded_ingest: tuple[Ingest, str]) -> None:
    ingest, token = guarded_ingest
    path = f"/webhooks/enablex/{token}"
    # a declared 1 GiB body: 413 after the head and a few bytes, the rest never sent
    with socket.create_connection(("127.0.0.1", ingest.port), timeout=10) as sock:
        sock.sendall(_request_head(path, "Content-Length: 1073741824\r\n") + b"{" * 1000)
        assert _status_of(sock) == 413
    # a chunked body with no length: 413 once it passes the limit, while the client is still sending
    with socket.create_connection(("127.0.0.1", ingest.port), timeout=10) as sock:
        sock.sendall(_request_head(path, "Transfer-Encoding: chunked\r\n"))
        chunk = b"x" * 8192
        sent = 0
        while sent <= LIMIT + len(chunk):
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed: what it answered is still to be read
            sent += len(chunk)
        assert _status_of(sock) == 413  # and the terminating chunk was never sent
    # right at the limit it is read and judged (400: not an event), one byte over it is refused
    status, _ = post(f"{ingest.url}/{token}", b" " * LIMIT)
    assert status == 400
    status, _ = post(f"{ingest.url}/{token}", b" " * (LIMIT + 1))
    assert status == 413
    assert ingest.proc is not None and ingest.proc.poll() is None
