"""The owner's query endpoint: how other processes read an embedded ClickHouse.

chdb lets one process open a data directory, so the process that owns it (the sink worker) answers
``enx-streams sql`` on a unix socket, ``<data dir>/run/clickhouse.sock`` (mode 0600: only the same user):

    POST /query   {"sql": "...", "format": "PrettyCompact"}
        200  the raw bytes of the result in that ClickHouse output format
        403  {"error": ...} the statement would write (the session is read-only)
        400  {"error": ...} any other ClickHouse error (syntax, unknown table, unknown format...)
    GET /health   200 {"pid": ..., "data_dir": ...}

Queries run on a separate read-only chdb session (``readonly=2``: writes and ``SET readonly`` fail) in a
thread of their own, never on the event loop and never on the sink's writer session. After a failed
query the session is reopened, because chdb can otherwise hand leftovers of a failed multi-statement
query to the next one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from streams.config import Settings
from streams.sink.clickhouse import ClickHouseError, connect, settings_path, socket_path
from streams.sink.query import FORMAT_NAME, OUTPUT_SETTINGS, is_readonly_error, readonly_refusal

log = logging.getLogger("streams.sink.owner")

MAX_REQUEST_BYTES = 1024 * 1024


class QueryServer:
    """The running endpoint; ``await close()`` stops it, removes the socket and closes the session."""

    def __init__(self, settings: Settings, client: Any, path: Path,
                 reopen: Callable[[], Any] | None = None) -> None:
        self.settings = settings
        self.path = path
        self._client = client
        self._reopen = reopen
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="enx-sql")
        self._runner: web.AppRunner | None = None

    # -- the query, in the executor's thread ----------------------------------------------------------

    def _run(self, sql: str, fmt: str) -> bytes:
        if self._client is None:
            if self._reopen is None:
                raise ClickHouseError("the read-only session is closed")
            self._client = self._reopen()
        try:
            return bytes(self._client.raw_query(sql, fmt=fmt, settings=OUTPUT_SETTINGS))
        except Exception:
            self._reset()
            raise

    def _reset(self) -> None:
        if self._reopen is None:
            return
        old, self._client = self._client, None
        with contextlib.suppress(Exception):
            old.close()

    # -- HTTP --------------------------------------------------------------------------------------

    async def _query(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            sql = body["sql"]
            fmt = body.get("format") or "PrettyCompact"
            if not isinstance(sql, str) or not sql.strip():
                raise ValueError("sql must be a non-empty string")
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": f"expected a JSON body {{\"sql\": ..., \"format\": ...}}: {exc}"},
                                     status=400)
        if not isinstance(fmt, str) or not FORMAT_NAME.match(fmt):
            return web.json_response({"error": f"{fmt!r} is not a ClickHouse format name"}, status=400)
        loop = asyncio.get_running_loop()
        try:
            out = await loop.run_in_executor(self._executor, self._run, sql, fmt)
        except Exception as exc:  # noqa: BLE001 - every ClickHouse error goes back to the caller
            message = str(exc).strip() or type(exc).__name__
            if is_readonly_error(message):
                return web.json_response({"error": readonly_refusal(message)}, status=403)
            return web.json_response({"error": message}, status=400)
        return web.Response(body=out, content_type="application/octet-stream")

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"pid": os.getpid(), "data_dir": str(self.settings.data_dir)})

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_post("/query", self._query)
        app.router.add_get("/health", self._health)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Only the owner of the data directory gets here (it holds the owner lock), so a socket file
        # left behind is stale: a previous owner was killed.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.UnixSite(self._runner, str(self.path))
        await site.start()
        os.chmod(self.path, 0o600)
        log.info("answering enx-streams sql on %s", self.path)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        loop = asyncio.get_running_loop()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await loop.run_in_executor(self._executor, client.close)
        self._executor.shutdown(wait=True)


async def serve_queries(settings: Settings, client: Any) -> QueryServer:
    """Answer ``enx-streams sql`` for the embedded data directory of ``settings``.

    ``client`` is a read-only session on it (``connect(settings, readonly=True)``, opened by the owner:
    the caller must hold the owner lock). The server closes it on ``close()``.
    """
    path = settings_path(settings)
    if path is None:
        raise ClickHouseError("only an embedded (chdb://<path>) ClickHouse is served to other processes")
    server = QueryServer(settings, client, socket_path(path), reopen=lambda: connect(settings, readonly=True))
    await server.start()
    return server

