"""A bare aiohttp handler (read the body, answer 202 with a small JSON): the ceiling ingest is compared to.

Run as ``python -m bench.bare_http PORT``."""

from __future__ import annotations

import sys
import uuid

from aiohttp import web


async def handler(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"event_id": uuid.uuid4().hex, "status": "accepted"}, status=202)


def main() -> None:
    app = web.Application()
    app.router.add_post("/webhooks/enablex", handler)
    app.router.add_get("/healthz", lambda _r: web.json_response({"status": "alive"}))  # type: ignore[arg-type,return-value]
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
