"""``enx-streams ingest``: the HTTP contract (design.md, "HTTP ingest").

``POST /webhooks/enablex`` and ``/webhooks/enablex/{token}``: 202 with the event id once the event is
durable; 400 with a dead-letter id for a body that cannot be an EnableX event (its raw bytes kept on the
dead-letter topic); 401 (``WWW-Authenticate: Basic``) for missing or wrong
credentials, Basic or path token (streams/ingest/auth.py; nothing stored); 403 for an app_id outside
ENX_ALLOWED_APP_IDS (dead-lettered); 413 for
a body over the limit, decided from Content-Length or while reading, before the whole body is in memory, and
for a body whose record (raw body plus parsed fields) would not fit the log (streams/broker/limits.py);
500 when Kafka refuses a record for good (authorisation, an invalid topic: nothing is stored); 503 with
``Retry-After`` when Kafka is unreachable and the spool is full (nothing is stored).
``/healthz``, ``/readyz``, ``/metrics``. No access log: the token is part of the path.
While it delivers directly, ingest writes its watermarks to the log (streams/ingest/watermark.py): the time
of every webhook still being made durable is held in ``IN_FLIGHT`` so that no watermark passes it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.avro import default_codec
from streams.broker import limits
from streams.config import Settings, split_list
from streams.events import Rejection, normalise, session_key
from streams.ingest.auth import (REALM, Credentials, authorised, is_loopback, kept_headers, source_address,
                                 trusted_networks)
from streams.ingest.metrics import IngestMetrics
from streams.ingest.producer import DurableProducer, RecordRefused, SpoolFull
from streams.ingest.spool import Frame
from streams.ingest.watermark import InFlight, WatermarkWriter, instance_id

log = logging.getLogger("streams.ingest")
CHUNK = 64 * 1024
RETRY_AFTER_S = 30  # what a 503 asks a client to wait: the spool drains once Kafka is back
PRODUCER = web.AppKey("producer", DurableProducer)
METRICS = web.AppKey("metrics", IngestMetrics)
SETTINGS = web.AppKey("settings", Settings)
CREDENTIALS = web.AppKey("credentials", Credentials)
TRUSTED = web.AppKey("trusted_proxies", tuple)
ALLOWED = web.AppKey("allowed_app_ids", object)
IN_FLIGHT = web.AppKey("in_flight", InFlight)
WATERMARKS = web.AppKey("watermarks", WatermarkWriter)


class TooLarge(Exception):
    pass


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


async def webhook(request: web.Request) -> web.Response:
    settings, producer, metrics = request.app[SETTINGS], request.app[PRODUCER], request.app[METRICS]
    creds = request.app[CREDENTIALS]
    if not authorised(creds, request.headers.get("Authorization"), request.match_info.get("token")):
        metrics.rejected.labels("unauthorized").inc()
        return web.json_response({"error": creds.what_to_send()}, status=401, headers={"WWW-Authenticate": REALM})
    try:
        body = await read_capped(request, settings.max_body_bytes)
    except TooLarge:
        metrics.rejected.labels("too_large").inc()
        return web.json_response({"error": f"body over {settings.max_body_bytes} bytes"}, status=413,
                                 headers={"Connection": "close"})
    received_at = int(time.time() * 1000)
    source = source_address(request.remote, request.headers.getall("X-Forwarded-For", []), request.app[TRUSTED])
    codec = default_codec()
    try:
        event = normalise(body, received_at, source, allowed_app_ids=request.app[ALLOWED])
    except Rejection as rejection:
        letter = {"id": uuid.uuid4().hex, "received_at": received_at, "reason": rejection.reason, "raw": body,
                  "headers": kept_headers(request.headers, source), "source": source}
        value = codec.encode("DeadLetter", letter)
        if not limits.fits(None, value):  # only with headers beyond LETTER_ROOM_BYTES: the body limit is checked
            return too_large_record(metrics, limits.record_bytes(None, value))
        refused = await deliver(producer, metrics, settings.topic("deadletter"), None, value)
        if refused is not None:
            return refused
        metrics.rejected.labels(rejection.code).inc()
        return web.json_response({"error": rejection.reason, "deadletter_id": letter["id"]},
                                 status=403 if rejection.code == "app_id_not_allowed" else 400)
    value = codec.encode("WebhookEvent", event)
    key = session_key(event).encode()
    if not limits.fits(key, value):
        return too_large_record(metrics, limits.record_bytes(key, value))
    in_flight = request.app[IN_FLIGHT]
    in_flight.open(received_at)  # no await since received_at: no watermark can have passed it (watermark.py)
    try:
        refused = await deliver(producer, metrics, settings.topic("webhooks"), key, value)
    finally:
        in_flight.close(received_at)
    if refused is not None:
        return refused
    metrics.accepted.labels(metrics.type_label(event["type"])).inc()
    return web.json_response({"event_id": event["event_id"], "status": "accepted"}, status=202)


def too_large_record(metrics: IngestMetrics, size: int) -> web.Response:
    """413 for a body under the body limit whose record would not fit the log: nothing is stored."""
    metrics.rejected.labels("record_too_large").inc()
    return web.json_response(
        {"error": f"the event's record would be {size} bytes (the raw body and its parsed fields), over the log's "
                  f"limit of {limits.MAX_MESSAGE_BYTES} bytes; nothing was stored: send a smaller body"},
        status=413, headers={"Connection": "close"})


async def deliver(producer: DurableProducer, metrics: IngestMetrics, topic: str, key: bytes | None,
                  value: bytes) -> web.Response | None:
    """Make the record durable; None when it is, else the error response (Kafka refused it for good)."""
    try:
        await producer.deliver(topic, key, value)
        return None
    except SpoolFull as full:
        metrics.rejected.labels("spool_full").inc()
        return web.json_response({"error": f"{full}; nothing was stored: send again later"}, status=503,
                                 headers={"Retry-After": str(RETRY_AFTER_S)})
    except RecordRefused as refused:
        if refused.reason == "record_too_large":
            return too_large_record(metrics, limits.record_bytes(key, value))
        metrics.rejected.labels(refused.reason).inc()
        return web.json_response({"error": f"Kafka refused the record for good ({refused.reason}); nothing was "
                                           f"stored. The operator must check the topic {topic} and ingest's "
                                           f"access to it; sending again will fail the same way until then"},
                                 status=500)


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


def spool_oldest_s(producer: DurableProducer, now_ms: int) -> float | None:
    """Seconds since ingest received the oldest record still in the spool (None when the spool is empty)."""
    return frame_age_s(producer.spool.oldest(), now_ms)


def frame_age_s(frame: Frame | None, now_ms: int) -> float | None:
    """Seconds since ingest received the record of a spool frame (None for no frame; 0 when it is not a
    contract record, whose age is unknown)."""
    if frame is None:
        return None
    try:
        received_at = int(default_codec().decode(frame.value)["received_at"])
    except Exception:  # noqa: BLE001 - not a contract record: its age is unknown, the spool is not empty
        return 0.0
    return max(0, now_ms - received_at) / 1000


def spool_status(request: web.Request) -> dict:
    """What /readyz says and /metrics exports about Kafka and the spool."""
    producer, metrics = request.app[PRODUCER], request.app[METRICS]
    oldest = spool_oldest_s(producer, int(time.time() * 1000))
    status = {"kafka": producer.kafka_ok, "spool_bytes": producer.spool.pending_bytes(),
              "spool_frames": producer.spool.pending_frames(), "spool_oldest_s": oldest}
    metrics.kafka_up.set(1 if producer.kafka_ok else 0)
    metrics.spool_depth.set(status["spool_bytes"])
    metrics.spool_frames.set(status["spool_frames"])
    metrics.spool_oldest.set(oldest or 0)
    return status


async def readyz(request: web.Request) -> web.Response:
    """200 while ingest will durably accept: Kafka acknowledges, or the spool has room; the body says which."""
    status = spool_status(request)
    spool = request.app[PRODUCER].spool_has_room()
    ready_by = "kafka" if status["kafka"] else ("spool" if spool else None)
    body = {"ready": ready_by is not None, "ready_by": ready_by, "spool_writable": spool, **status}
    return web.json_response(body, status=200 if ready_by is not None else 503)


async def metrics_view(request: web.Request) -> web.Response:
    spool_status(request)
    metrics = request.app[METRICS]
    return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _provision_until_done(settings: Settings) -> None:
    from streams.broker.topics import TopicConflict, contract_topics, ensure_topics

    while True:
        try:
            for line in await ensure_topics(settings.kafka_bootstrap, contract_topics(settings),
                                            settings.kafka_replication):
                (log.warning if line.startswith("warning") else log.info)("topics: %s", line)
            return
        except TopicConflict:
            raise
        except Exception as exc:  # noqa: BLE001 - Kafka away: spool meanwhile, retry
            log.warning("cannot provision topics yet (%s); retrying", exc)
            await asyncio.sleep(2.0)  # retry interval while Kafka is away


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes + 1)
    app[SETTINGS] = settings
    app[CREDENTIALS] = Credentials.of(settings)
    app[TRUSTED] = trusted_networks(settings)
    app[ALLOWED] = frozenset(split_list(settings.allowed_app_ids)) or None
    app[METRICS] = IngestMetrics()
    problem = limits.body_limit_problem(settings.max_body_bytes)
    if problem:
        raise StartRefused(problem)

    def quarantine_letter(reason: str, path: str) -> bytes:
        return default_codec().encode("DeadLetter", {
            "id": f"spool-{uuid.uuid4().hex}", "received_at": int(time.time() * 1000), "reason": reason, "raw": b"",
            "headers": {"x-enx-quarantine-file": path}, "source": "ingest-spool"})

    app[PRODUCER] = DurableProducer(settings.kafka_bootstrap, settings.data_dir / "spool", app[METRICS],
                                    dead_letter=quarantine_letter, dead_letter_topic=settings.topic("deadletter"),
                                    spool_max_bytes=settings.spool_max_bytes,
                                    spool_min_free_bytes=settings.spool_min_free_bytes)
    app[IN_FLIGHT] = InFlight()
    app[WATERMARKS] = WatermarkWriter(app[PRODUCER], settings.topic("webhooks"),
                                      instance_id(settings.data_dir / "spool"), app[IN_FLIGHT],
                                      on_written=lambda at: app[METRICS].watermark.set(at / 1000))
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
        watermarks = asyncio.create_task(app[WATERMARKS].run())
        yield
        provisioning.cancel()
        watermarks.cancel()
        await app[PRODUCER].flush(last_words=app[WATERMARKS].leave)

    app.cleanup_ctx.append(lifecycle)
    return app


class StartRefused(RuntimeError):
    """Ingest cannot start with these settings; the message says what to change."""


class AnonymousRefused(StartRefused):
    """Ingest would listen beyond this machine with no credential configured."""


def check_exposure(settings: Settings, allow_anonymous: bool) -> None:
    """Refuse a non-loopback address without any credential, unless anonymous posting is asked for."""
    if allow_anonymous or is_loopback(settings.ingest_host) or not Credentials.of(settings).anonymous:
        return
    raise AnonymousRefused(
        f"ingest would listen on {settings.ingest_host} with no credential, so anyone who reaches it could post; "
        "set ENX_INGEST_BASIC_AUTH (user:password, what EnableX's HTTP Authentication sends) or ENX_INGEST_TOKEN, "
        "bind to 127.0.0.1 (ENX_INGEST_HOST), or pass --allow-anonymous")


def run(settings: Settings, allow_anonymous: bool = False) -> int:
    """Serve until SIGTERM/SIGINT: stop accepting, finish what is in flight, hand the spool on, exit 0."""
    check_exposure(settings, allow_anonymous)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    log.info("ingest on http://%s:%d/webhooks/enablex (Kafka %s, settings %s)", settings.ingest_host,
             settings.ingest_port, settings.kafka_bootstrap, settings.describe())
    web.run_app(create_app(settings), host=settings.ingest_host, port=settings.ingest_port, access_log=None,
                print=None, shutdown_timeout=10.0, handle_signals=True)
    return 0
