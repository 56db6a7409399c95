"""The one-machine stack behind ``enx-streams dev``: starts the roles in order, stops them in reverse.

Order: the local Kafka broker (unless one already answers on ``ENX_KAFKA_BOOTSTRAP``), the contract
topics, a worker running processor and sink (and the reconciler when ``ENX_ENABLEX_APP_ID`` and
``ENX_ENABLEX_APP_KEY`` are set; it owns the embedded ClickHouse, applies the migrations and
answers ``enx-streams sql``), then ingest. Ingest starts last, so once its ``/readyz`` answers 200 the
whole pipeline is up. Ctrl-C or SIGTERM stops ingest, then the worker, then the broker (only if this
command started it), each with SIGTERM and a bounded wait, well within 30 seconds in all.

The roles run as child processes of their own (``enx-streams ingest`` / ``worker``) with the same
settings, so each keeps its own event loop and a crash of one is reported, not hidden.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from streams import config
from streams.children import child_env

Echo = Callable[[str], None]


class DevError(RuntimeError):
    """The stack could not start; the message says which part and where its log is."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if ``dev`` itself dies (even by SIGKILL), so no role is orphaned."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class DevStack:
    settings: config.Settings
    echo: Echo = print
    children: list[Child] = field(default_factory=list)
    broker: object | None = None  # LocalKafka started by this stack, stopped at the end
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def logs(self) -> Path:
        return self.settings.data_dir / "logs"

    @property
    def host_for_urls(self) -> str:
        host = self.settings.ingest_host
        return "localhost" if host in ("0.0.0.0", "::", "") else host

    @property
    def webhook_url(self) -> str:
        return f"http://{self.host_for_urls}:{self.settings.ingest_port}/webhooks/enablex"

    # -- start ------------------------------------------------------------------------------------

    def start_broker(self) -> None:
        from streams.broker.local import BrokerError, LocalKafka, kafka_answers

        first = self.settings.kafka_bootstrap.split(",")[0]
        host, _, port = first.rpartition(":")
        if kafka_answers(first):
            self.echo(f"kafka: using the broker already answering on {first}")
            return
        if host not in ("localhost", "127.0.0.1"):
            raise DevError(f"no Kafka answers on {first}, and dev only starts a local broker on localhost; "
                           f"start that cluster or unset ENX_KAFKA_BOOTSTRAP")
        broker = LocalKafka(self.settings.data_dir, self.settings.cache_dir, port=int(port or 9092))
        try:
            status = broker.start(echo=self.echo)
        except BrokerError as exc:
            raise DevError(str(exc)) from None
        self.broker = broker
        self.echo(f"kafka: {status.describe()}")

    def provision_topics(self) -> None:
        import asyncio

        from streams.broker.topics import TopicConflict, contract_topics, ensure_topics

        try:
            for line in asyncio.run(ensure_topics(self.settings.kafka_bootstrap, contract_topics(self.settings),
                                                  self.settings.kafka_replication)):
                self.echo(f"topics: {line}")
        except TopicConflict as exc:
            raise DevError(str(exc)) from None

    def spawn(self, name: str, *args: str) -> Child:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with open(log, "ab") as out:
            out.write(f"\n==== enx-streams dev: starting {name} ====\n".encode())
            out.flush()
            proc = subprocess.Popen([sys.executable, "-m", "streams.cli", *args], env=child_env(self.settings),
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, preexec_fn=_die_with_parent)
        child = Child(name, proc, log)
        self.children.append(child)
        self.echo(f"{name}: started (pid {proc.pid}, log {log})")
        return child

    def wait_until(self, what: str, ready: Callable[[], bool], child: Child, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.stopping.is_set():
                raise DevError("stopped while starting")
            if not child.alive():
                raise DevError(f"{child.name} exited with code {child.proc.returncode} while starting; "
                               f"its log, {child.log}, ends with:\n{_tail(child.log)}")
            if ready():
                return
            time.sleep(0.3)  # readiness poll interval, bounded by the deadline
        raise DevError(f"{what} was not ready within {timeout_s:.0f} s; the log {child.log} ends with:\n"
                       f"{_tail(child.log)}")

    @property
    def worker_roles(self) -> str:
        """processor and sink; the reconciler too when EnableX's Server API credentials are set."""
        if self.settings.enablex_app_id and self.settings.enablex_app_key:
            return "processor,sink,reconciler"
        return "processor,sink"

    def worker_ready(self) -> bool:
        from streams.sink.query import QueryError, run_query

        try:
            # the worker itself must answer: opening a directory nobody owns yet (a restart on old data) would say
            # "ready" before the worker is, and hold the directory its sink is waiting for
            return run_query(self.settings, "SELECT count() FROM enablex.schema_migrations", "TSV",
                             open_unowned=False).strip() != b""
        except QueryError:
            return False

    def choose_metrics_port(self) -> None:
        """The worker's /metrics on ENX_WORKER_METRICS_PORT if set, else on a free port of this machine (so two
        stacks on one machine do not collide)."""
        if not self.settings.worker_metrics_port:  # unset, or 0: a port the banner can name
            from streams.broker.local import free_port

            self.settings = dataclasses.replace(self.settings, worker_metrics_port=free_port())

    @property
    def metrics_urls(self) -> list[str]:
        host = "localhost" if self.settings.worker_metrics_host in ("0.0.0.0", "::", "") \
            else self.settings.worker_metrics_host
        return [f"http://{self.host_for_urls}:{self.settings.ingest_port}/metrics",
                f"http://{host}:{self.settings.worker_metrics_port}/metrics"]

    def start(self) -> None:
        self.start_broker()
        self.provision_topics()
        self.choose_metrics_port()
        worker = self.spawn("worker", "worker", "--roles", self.worker_roles)
        self.wait_until("the worker (processor and sink, ClickHouse migrations)", self.worker_ready, worker, 180)
        self.echo("worker: ready (ClickHouse migrated, answering queries)")
        if "reconciler" in self.worker_roles:
            self.echo(f"reconciler: a pass every {self.settings.reconcile_interval_s:.0f} s against "
                      f"{self.settings.enablex_api_url} (findings in enablex.reconcile_findings)")
        ingest = self.spawn("ingest", "ingest")
        ready_url = f"http://{self.host_for_urls}:{self.settings.ingest_port}/readyz"
        self.wait_until("ingest", lambda: _http_ok(ready_url), ingest, 60)

    def banner(self) -> str:
        data = self.settings.data_dir
        token = "/<ENX_INGEST_TOKEN>" if self.settings.ingest_token else ""
        user = " -u '<user:password of ENX_INGEST_BASIC_AUTH>'" if self.settings.ingest_basic_auth and not token else ""
        body = ('{"type":"roomdrop","app_id":"demo-app","room_id":"demo-room","conf_num":"1001",'
                f'"trans_date":{int(time.time())}}}')
        return "\n".join([
            "",
            "enx-streams dev is up.",
            f"  webhook URL:  {self.webhook_url}{token}",
            f"  send a test event:\n    curl -s{user} -X POST {self.webhook_url}{token} -H 'Content-Type: application/json' "
            f"-d '{body}'",
            f"  query it:\n    .venv/bin/enx-streams sql --data-dir {data} "
            "\"SELECT type, app_id, conf_num, received_at FROM enablex.webhook_events FINAL\"",
            f"  metrics:      {'  '.join(self.metrics_urls)} (ingest, worker: Prometheus)",
            f"  logs:         {self.logs}/ and {data / 'kafka' / 'broker.log'}",
            "  Ctrl-C stops everything.",
            "",
        ])

    # -- run and stop -----------------------------------------------------------------------------

    def watch(self) -> int:
        """Block until a signal or a child's death; return the exit code for the command."""
        while not self.stopping.is_set():
            for child in self.children:
                if not child.alive():
                    self.echo(f"{child.name} exited unexpectedly with code {child.proc.returncode}; its log, "
                              f"{child.log}, ends with:\n{_tail(child.log)}")
                    return 1
            self.stopping.wait(0.5)
        return 0

    def stop(self, timeout_s: float = 25.0) -> None:
        """Ingest first (stop accepting, flush), then the worker (commit), then the broker."""
        deadline = time.monotonic() + timeout_s
        for child in reversed(self.children):
            if child.alive():
                child.proc.send_signal(signal.SIGTERM)
                try:
                    child.proc.wait(timeout=max(1.0, min(12.0, deadline - time.monotonic() - 4)))
                    self.echo(f"{child.name}: stopped (exit {child.proc.returncode})")
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait()
                    self.echo(f"{child.name}: did not stop in time and was killed")
        self.children.clear()
        if self.broker is not None:
            self.echo(f"kafka: {self.broker.stop(timeout_s=max(2.0, deadline - time.monotonic()))}")
            self.broker = None


def run(settings: config.Settings, echo: Echo = print) -> int:
    """``enx-streams dev``: start everything, print how to use it, stop everything on Ctrl-C/SIGTERM."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    stack = DevStack(settings, echo=echo)

    def on_signal(signum: int, _frame: object) -> None:
        stack.stopping.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        try:
            stack.start()
        except DevError as exc:
            if stack.stopping.is_set():
                return 0
            echo(f"error: {exc}")
            return 1
        echo(stack.banner())
        code = stack.watch()
    finally:
        echo("stopping ...")
        stack.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return code
