"""A local stand-in for EnableX's Server API (EnableX cannot be reached from the tests).

Serves the documented shapes from the fixtures a test gives it: ``GET archive/period/{from}/{to}``,
``archive/room/{room}/period/{from}/{to}``, ``cdr/period/...``, ``cdr/room/{room}/period/...`` under
``/video/v2/``, answering ``{"result": 0, "archive": [...]}`` / ``{"result": 0, "cdr": [...]}`` with the
entries whose ``trans_date`` falls on a day of the period (UTC) and, for a room route, whose room matches.
HTTP Basic is checked (401 on wrong credentials). A test can script the next answers: any status, body and
headers (a non-zero ``result``, 403, 429 with ``Retry-After``, 5xx) or a delay longer than the client's
timeout.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import datetime as dt
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from streams.events import parse_trans_date

ROUTE = re.compile(r"^/video/v2/(archive|cdr)/(?:room/([^/]+)/)?period/(\d{4}-\d{2}-\d{2})/(\d{4}-\d{2}-\d{2})/?$")


@dataclasses.dataclass
class Scripted:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay_s: float = 0.0


class FakeEnableX:
    def __init__(self, app_id: str = "test-app", app_key: str = "test-key") -> None:
        self.app_id, self.app_key = app_id, app_key
        self.archive: list[dict] = []
        self.cdr: list[dict] = []
        self.script: collections.deque[Scripted] = collections.deque()
        self.requests: list[str] = []
        self.auth_headers: list[str] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                fake._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/video/v2/"

    def __enter__(self) -> FakeEnableX:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def then(self, status: int = 200, body: Any = None, headers: dict[str, str] | None = None,
             delay_s: float = 0.0, times: int = 1) -> FakeEnableX:
        """Answer the next ``times`` requests so (after the auth check), then serve the fixtures again."""
        for _ in range(times):
            self.script.append(Scripted(status, body, dict(headers or {}), delay_s))
        return self

    # -- serving ------------------------------------------------------------------------------------

    def _authorised(self, header: str | None) -> bool:
        expected = "Basic " + base64.b64encode(f"{self.app_id}:{self.app_key}".encode()).decode()
        return header == expected

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str]) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            handler.send_header(k, v)
        handler.end_headers()
        try:
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
            pass

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append(handler.path)
            self.auth_headers.append(handler.headers.get("Authorization") or "")
        if not self._authorised(handler.headers.get("Authorization")):
            self._send(handler, 401, {"result": 401, "error": "Unauthorized Access"},
                       {"WWW-Authenticate": 'Basic realm="EnableX"'})
            return
        with self._lock:
            scripted = self.script.popleft() if self.script else None
        if scripted is not None:
            if scripted.delay_s:
                time.sleep(scripted.delay_s)
            self._send(handler, scripted.status, scripted.body if scripted.body is not None else {},
                       scripted.headers)
            return
        match = ROUTE.match(handler.path)
        if not match:
            self._send(handler, 404, {"result": 404, "error": f"no route {handler.path}"}, {})
            return
        kind, room, since, until = match.groups()
        first, last = dt.date.fromisoformat(since), dt.date.fromisoformat(until)
        source = self.archive if kind == "archive" else self.cdr
        items = [i for i in source if first <= _day(i) <= last and (room is None or _room(i) == room)]
        self._send(handler, 200, {"result": 0, kind: items}, {})


def _day(item: dict) -> dt.date:
    ms = parse_trans_date(item.get("trans_date"))
    return dt.datetime.fromtimestamp((ms or 0) / 1000, dt.timezone.utc).date()


def _room(item: dict) -> str | None:
    room = item.get("room")
    return room.get("room_id") if isinstance(room, dict) else item.get("room_id")
