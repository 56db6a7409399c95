"""``enx-streams ingest``: the HTTP contract (design.md, "HTTP ingest").

``POST /webhooks/enablex`` and ``/webhooks/enablex/{token}``: 202 with the event id once the event is
durable; 400 with a dead-letter id for a body that cannot be an EnableX event (its raw bytes kept on the
dead-letter topic); 401 for a missing or wrong token (compared in constant time; nothing stored); 413 for
a body over the limit, decided from Content-Length or while reading, before the whole body is in memory.
``/healthz``, ``/readyz``, ``/metrics``. No access log: the token is part of the path.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import time
import uuid

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.avro import default_codec
from streams.config import Settings
from streams.events import Rejection, normalise, session_key
from streams.ingest.metrics import IngestMetrics
from streams.ingest.producer import DurableProducer

log = logging.getLogger("streams.ingest")
SECRET_HEADERS = {"authorization", "proxy-authorization", "cookie", "x-api-key", "x-enx-token"}
CHUNK = 64 * 1024
PRODUCER = web.AppKey("producer", DurableProducer)
METRICS = web.AppKey("metrics", IngestMetrics)
SETTINGS = web.AppKey("settings", Settings)


class TooLarge(Exception):
    pass


def safe_headers(headers: "web.BaseRequest.headers", token: str | None) -> dict[str, str]:
    """Request headers without credentials or anything that contains the token."""
    out = {}
    for name, value in headers.items():
        if name.lower() in SECRET_HEADERS or (token and token in value):
            continue
        out[name.lower()] = value
    return out


async def read_capped(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge
    chunks, size = [], 0
    while True:
        chunk = await request.content.read(CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _authorised(settings: Settings, given: str | None) -> bool:
    expected = settings.ingest_token.reveal() if settings.ingest_token else ""
    if not expected:
        return True
    return hmac.compare_digest((given or "").encode(), expected.encode())


async def webhook(request: web.Request) -> web.Response:
    settings, producer, metrics = request.app[SETTINGS], request.app[PRODUCER], request.app[METRICS]
    if not _authorised(settings, request.match_info.get("token")):
        metrics.rejected.labels("unauthorized").inc()
        return web.json_response({"error": "missing or wrong token: post to /webhooks/enablex/{token}"},
                                 status=401)
    try:
        body = await read_capped(request, settings.max_body_bytes)
    except TooLarge:
        metrics.rejected.labels("too_large").inc()
        return web.json_response({"error": f"body over {settings.max_body_bytes} bytes"}, status=413,
                                 headers={"Connection": "close"})
    received_at = int(time.time() * 1000)
    source = request.remote
    codec = default_codec()
    try:
        event = normalise(body, received_at, source)
    except Rejection as rejection:
        token = settings.ingest_token.reveal() if settings.ingest_token else None
        letter = {"id": uuid.uuid4().hex, "received_at": received_at, "reason": rejection.reason, "raw": body,
                  "headers": safe_headers(request.headers, token), "source": source}
        await producer.deliver(settings.topic("deadletter"), None, codec.encode("DeadLetter", letter))
        metrics.rejected.labels(rejection.code).inc()
        return web.json_response({"error": rejection.reason, "deadletter_id": letter["id"]}, status=400)
    value = codec.encode("WebhookEvent", event)
    await producer.deliver(settings.topic("webhooks"), session_key(event).encode(), value)
    metrics.accepted.labels(metrics.type_label(event["type"])).inc()
    return web.json_response({"event_id": event["event_id"], "status": "accepted"}, status=202)


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    producer = request.app[PRODUCER]
    kafka, spool = producer.kafka_ok, producer.spool.writable()
    ready_by = "kafka" if kafka else ("spool" if spool else None)
    body = {"ready": ready_by is not None, "kafka": kafka, "spool_writable": spool, "ready_by": ready_by,
            "spool_bytes": producer.spool.pending_bytes()}
    return web.json_response(body, status=200 if ready_by == "kafka" or ready_by == "spool" else 503)


async def metrics_view(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    metrics.spool_depth.set(request.app[PRODUCER].spool.pending_bytes())
    return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _provision_until_done(settings: Settings) -> None:
    from streams.broker.topics import TopicConflict, contract_topics, ensure_topics

    while True:
        try:
            await ensure_topics(settings.kafka_bootstrap, contract_topics(settings))
            return
        except TopicConflict:
            raise
        except Exception as exc:  # noqa: BLE001 - Kafka away: spool meanwhile, retry
            log.warning("cannot provision topics yet (%s); retrying", exc)
            await asyncio.sleep(2.0)  # retry interval while Kafka is away


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes + 1)
    app[SETTINGS] = settings
    app[METRICS] = IngestMetrics()
    app[PRODUCER] = DurableProducer(settings.kafka_bootstrap, settings.data_dir / "spool", app[METRICS])
    app.router.add_post("/webhooks/enablex", webhook)
    app.router.add_post("/webhooks/enablex/{token}", webhook)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)

    async def lifecycle(app: web.Application):
        provisioning = asyncio.create_task(_provision_until_done(settings))
        await app[PRODUCER].start()
        # what start-up allocated lives as long as the process: out of the collector's full passes, which
        # otherwise hold every request up for tens of ms at a time (bench/README.md, ingest p99)
        gc.collect()
        gc.freeze()
        yield
        provisioning.cancel()
        await app[PRODUCER].flush()

    app.cleanup_ctx.append(lifecycle)
    return app


def run(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT: stop accepting, finish what is in flight, hand the spool on, exit 0."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    log.info("ingest on http://%s:%d/webhooks/enablex (Kafka %s, settings %s)", settings.ingest_host,
             settings.ingest_port, settings.kafka_bootstrap, settings.describe())
    web.run_app(create_app(settings), host=settings.ingest_host, port=settings.ingest_port, access_log=None,
                print=None, shutdown_timeout=10.0, handle_signals=True)
    return 0
