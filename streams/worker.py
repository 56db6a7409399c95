"""``enx-streams worker --roles processor,sink``: one long-lived consumer process.

- ``processor``: the faust app of :mod:`streams.processor.app`, run by a faust Worker in this process
  (SIGTERM/SIGINT stop it cleanly).
- ``sink``: :func:`streams.sink.consumer.run_sink`, as a service of the same worker when the processor
  runs too, or alone under asyncio. With the embedded ClickHouse, this process becomes the owner of the
  data directory; a second one refuses to start and says why.
- ``reconciler``: :func:`streams.reconcile.run.run_forever`, a pass against EnableX's Server API every
  ``ENX_RECONCILE_INTERVAL_S`` (needs ``ENX_ENABLEX_APP_ID`` and ``ENX_ENABLEX_APP_KEY``), as a service of
  the faust worker or under asyncio beside the sink.

With ``ENX_WORKER_METRICS_PORT`` set, the process serves Prometheus ``/metrics`` for the roles it runs
(:mod:`streams.worker_metrics`), from start to stop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys

from streams.config import Settings
from streams.worker_metrics import MetricsPortError, WorkerMetrics

ROLES = ("processor", "sink", "reconciler")
# The collector's thresholds (Python's defaults: 700, 10, 10). A worker's heap is mostly its tables, which
# only grow and shrink slowly, and with the defaults the collector's passes over them took a fifth of a
# processor's time under a backlog (bench/README.md); young objects are collected every 10,000 allocations.
GC_THRESHOLDS = (10_000, 10, 10)


def parse_roles(text: str) -> frozenset[str]:
    """``"processor,sink"`` -> the set of roles; a clear ValueError for anything else."""
    roles = frozenset(r.strip().lower() for r in text.split(",") if r.strip())
    unknown = sorted(roles - set(ROLES))
    if unknown:
        raise ValueError(f"unknown role{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in "
                         f"--roles {text!r}: use a comma-separated list of {', '.join(ROLES)} "
                         f"(e.g. --roles processor,sink)")
    if not roles:
        raise ValueError(f"--roles is empty: name at least one of {', '.join(ROLES)} (e.g. --roles processor,sink)")
    return roles


def _provision(settings: Settings) -> None:
    from streams.broker.topics import contract_topics, ensure_topics
    from streams.processor.app import internal_topics

    specs = contract_topics(settings) + internal_topics(settings)
    log = logging.getLogger("streams.worker")
    for line in asyncio.run(ensure_topics(settings.kafka_bootstrap, specs, settings.kafka_replication)):
        (log.warning if line.startswith("warning") else log.info)("topics: %s", line)


def _sink_alone(settings: Settings, roles: frozenset[str], metrics: WorkerMetrics) -> int:
    """The roles other than the processor (sink and/or reconciler) under asyncio."""
    from streams.sink.clickhouse import ClickHouseError
    from streams.sink.consumer import run_sink
    from streams.sink.migrations import MigrationError

    async def main() -> None:
        from streams.reconcile.run import run_forever

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks = []
        if "sink" in roles:
            tasks.append(asyncio.ensure_future(run_sink(settings, stop, on_sink=metrics.sink.watch)))
        if "reconciler" in roles:
            tasks.append(asyncio.ensure_future(run_forever(settings, stop)))
        try:
            for done in asyncio.as_completed(tasks):
                await done  # a role that fails stops the others
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        asyncio.run(main())
    except (ClickHouseError, MigrationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _sink_service(settings: Settings, metrics: WorkerMetrics):  # -> mode.Service
    import mode

    from streams.sink.clickhouse import ClickHouseError
    from streams.sink.consumer import run_sink

    class SinkService(mode.Service):
        """The sink inside the faust worker: started with it, stopped (flushed, committed) with it."""

        async def on_start(self) -> None:
            self._stop = asyncio.Event()
            ready = asyncio.Event()
            self._task = asyncio.ensure_future(run_sink(settings, self._stop, on_ready=ready.set,
                                                        on_sink=metrics.sink.watch))
            waiter = asyncio.ensure_future(ready.wait())
            await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if self._task.done() and self._task.exception() is not None:
                exc = self._task.exception()
                message = str(exc) if isinstance(exc, ClickHouseError) else repr(exc)
                print(f"error: the sink could not start: {message}", file=sys.stderr, flush=True)
                import os

                os._exit(1)

        async def on_stop(self) -> None:
            self._stop.set()
            try:
                await asyncio.wait_for(self._task, timeout=20)
            except Exception as exc:  # noqa: BLE001 - report, do not hang the shutdown
                logging.getLogger("streams.worker").warning("the sink stopped with %r", exc)

    return SinkService()


def _reconciler_service(settings: Settings):  # -> mode.Service
    import mode

    from streams.reconcile.run import run_forever

    class ReconcilerService(mode.Service):
        """The reconciler inside the faust worker: its passes run between start and stop."""

        async def on_start(self) -> None:
            self._stop = asyncio.Event()
            self._task = asyncio.ensure_future(run_forever(settings, self._stop))

        async def on_stop(self) -> None:
            self._stop.set()
            try:
                await asyncio.wait_for(self._task, timeout=15)
            except Exception as exc:  # noqa: BLE001 - report, do not hang the shutdown
                logging.getLogger("streams.worker").warning("the reconciler stopped with %r", exc)

    return ReconcilerService()


def reconciler_refusal(settings: Settings) -> str | None:
    """Why the reconciler role cannot run with these settings (None when it can)."""
    if settings.enablex_app_id and settings.enablex_app_key:
        return None
    return ("the reconciler role needs EnableX's Server API credentials: set ENX_ENABLEX_APP_ID and "
            "ENX_ENABLEX_APP_KEY (the project's APP_ID and APP_KEY in the EnableX portal), or drop reconciler "
            "from --roles")


def run(settings: Settings, roles: frozenset[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    gc.set_threshold(*GC_THRESHOLDS)
    refusal = reconciler_refusal(settings) if "reconciler" in roles else None
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    (settings.data_dir / "processor").mkdir(parents=True, exist_ok=True)
    try:
        _provision(settings)
    except Exception as exc:  # noqa: BLE001 - said plainly with what to do
        print(f"error: could not provision topics on {settings.kafka_bootstrap}: {exc}. Is Kafka running "
              f"(`enx-streams kafka start`)?", file=sys.stderr)
        return 1
    metrics = WorkerMetrics(settings, roles)
    try:
        metrics.serve()
    except MetricsPortError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        return _run_roles(settings, roles, metrics)
    finally:
        metrics.close()


def _run_roles(settings: Settings, roles: frozenset[str], metrics: WorkerMetrics) -> int:
    if "processor" not in roles:
        return _sink_alone(settings, roles, metrics)

    import faust

    from streams.processor.app import create_app

    app = create_app(settings, metrics=metrics.processor)
    services = [_sink_service(settings, metrics)] if "sink" in roles else []
    if "reconciler" in roles:
        services.append(_reconciler_service(settings))
    worker = faust.Worker(app, *services, loglevel="INFO", quiet=True, override_logging=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
