"""The local Apache Kafka broker: jars from Maven, KRaft storage, start, stop and status.

A single-node KRaft cluster (broker and controller in one JVM) for ``enx-streams dev`` and the tests.
Its jars are resolved by Maven from ``pom.xml`` beside this file into a cache folder, once; later
starts need neither Maven nor the network. Everything it writes (storage, ``broker.log``, the pid
and port file) lives in ``<data dir>/kafka``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from streams.broker.replication import internal_topic_configs, replication_for

POM = Path(__file__).with_name("pom.xml")
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
DEFAULT_HEAP = "-Xms256m -Xmx1g"


class BrokerError(RuntimeError):
    """The broker cannot be resolved, started or stopped. The message says what to do next."""


def pinned_kafka_version(pom: Path = POM) -> str:
    """The Kafka version the pom pins (``<properties><kafka.version>``)."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(pom).getroot().find("m:properties/m:kafka.version", ns)
    if node is None or not (node.text or "").strip():
        raise BrokerError(f"{pom} has no <kafka.version> property")
    return node.text.strip()


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def kafka_answers(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """True when a broker at ``bootstrap`` answers a metadata request listing at least one broker."""
    from aiokafka.admin import AIOKafkaAdminClient

    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:  # a plain TCP connect first, so a broker still booting is not reported as an aiokafka error
        socket.create_connection((host or "localhost", int(port)), timeout=timeout_s).close()
    except OSError:
        return False

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
        try:
            await asyncio.wait_for(admin.start(), timeout_s)
            cluster = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
            return bool(cluster.get("brokers"))
        except Exception:
            return False
        finally:
            try:
                await admin.close()
            except Exception:
                pass

    return asyncio.run(probe())


def resolve_jars(cache_dir: Path, version: str | None = None, *, echo: Callable[[str], None] = print) -> Path:
    """The folder holding the broker's jars, resolving them with Maven on the first call.

    A marker file makes the cache all-or-nothing: an interrupted resolution is redone, never used.
    """
    version = version or pinned_kafka_version()
    home = cache_dir / f"kafka-{version}"
    lib = home / "lib"
    marker = home / ".complete"
    if marker.exists() and any(lib.glob("kafka_2.13-*.jar")):
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "Maven (mvn) is not installed, and the Kafka jars are not cached yet in "
            f"{home}. Install it (apt-get install -y maven) and run the command again."
        )
    home.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix="build-", dir=home))
    staging = home / "lib.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copy(POM, build / "pom.xml")
    echo(f"Resolving Apache Kafka {version} jars with Maven into {lib} (once; later starts are offline) ...")
    proc = subprocess.run(
        [mvn, "-B", "-q", "-f", str(build / "pom.xml"), "package",
         f"-Dkafka.version={version}", f"-Dlib.dir={staging}"],
        capture_output=True, text=True,
    )
    shutil.rmtree(build, ignore_errors=True)
    if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        out = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise BrokerError(
            f"Maven could not resolve Apache Kafka {version} (exit {proc.returncode}). Check that Maven "
            f"Central is reachable (mvn -v; ~/.m2/settings.xml) and run again.\n{out}"
        )
    shutil.rmtree(lib, ignore_errors=True)
    staging.rename(lib)
    marker.write_text(version + "\n")
    return lib


@dataclasses.dataclass
class BrokerStatus:
    running: bool
    bootstrap: str
    pid: int | None
    version: str
    log: Path

    def describe(self) -> str:
        if self.running:
            return f"running  bootstrap={self.bootstrap}  pid={self.pid}  kafka={self.version}  log={self.log}"
        return f"stopped  bootstrap={self.bootstrap}  kafka={self.version}  log={self.log}"


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, base64url without padding (as kafka-storage random-uuid)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclasses.dataclass(frozen=True)
class ClusterRole:
    """A node's place in a local cluster: its id, the quorum's voters, its own controller port (None for a
    broker-only node), the cluster id every node's storage is formatted with, and the replication the
    internal topics get."""

    node_id: int
    voters: str
    controller_port: int | None
    cluster_id: str
    replication: int


class LocalKafka:
    """One KRaft node whose files live in ``<data_dir>/kafka``: by default a single-node cluster (broker and
    controller in one JVM); given a :class:`ClusterRole` (and its own ``home``), one node of a
    :class:`LocalKafkaCluster`."""

    START_TIMEOUT_S = 90.0

    def __init__(self, data_dir: Path, cache_dir: Path, port: int = 9092, host: str = "localhost",
                 heap: str | None = None, *, home: Path | None = None, role: ClusterRole | None = None,
                 jvm_options: tuple[str, ...] = ()) -> None:
        self.home = Path(home).resolve() if home is not None else Path(data_dir).resolve() / "kafka"
        self.cache_dir = Path(cache_dir)
        self.port = port
        self.host = host
        self.heap = heap or os.environ.get("KAFKA_HEAP_OPTS") or DEFAULT_HEAP
        self.jvm_options = jvm_options
        self.role = role
        self.version = pinned_kafka_version()
        self.storage = self.home / "storage"
        self.log = self.home / "broker.log"
        self.state_file = self.home / "broker.json"
        self.config_file = self.home / "server.properties"

    # -- state on disk ----------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def _read_state(self) -> dict | None:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None

    def _running_pid(self) -> int | None:
        state = self._read_state()
        if not state:
            return None
        pid = int(state["pid"])
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            return None
        if MAIN_CLASS.encode() not in cmdline or str(self.config_file).encode() not in cmdline:
            return None  # the pid was reused by another process
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
        if stat and stat[0] == "Z":
            return None
        return pid

    def status(self) -> BrokerStatus:
        state = self._read_state() or {}
        pid = self._running_pid()
        if pid is not None and state.get("port"):
            self.port = int(state["port"])
        return BrokerStatus(running=pid is not None, bootstrap=self.bootstrap, pid=pid,
                            version=self.version, log=self.log)

    # -- start ------------------------------------------------------------------------------------

    def _write_config(self, controller_port: int | None) -> None:
        role = self.role or ClusterRole(1, f"1@127.0.0.1:{controller_port}", controller_port, "", 1)
        listeners = f"PLAINTEXT://127.0.0.1:{self.port}"
        if role.controller_port is not None:
            listeners += f",CONTROLLER://127.0.0.1:{role.controller_port}"
        props = {
            "process.roles": "broker,controller" if role.controller_port is not None else "broker",
            "node.id": str(role.node_id),
            "controller.quorum.voters": role.voters,
            "listeners": listeners,
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.storage),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            **internal_topic_configs(role.replication),
            "offsets.topic.num.partitions": "10",
            "group.initial.rebalance.delay.ms": "0",
            "log.segment.bytes": str(64 * 1024 * 1024),
        }
        self.config_file.write_text("".join(f"{k}={v}\n" for k, v in props.items()))

    def _java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise BrokerError("Java is not installed: the local broker needs Java 17 "
                              "(apt-get install -y openjdk-17-jre-headless), then run the command again.")
        return java

    def _classpath(self, lib: Path) -> str:
        return str(lib / "*")

    def _format_storage(self, java: str, lib: Path) -> None:
        if (self.storage / "meta.properties").exists():
            return
        cluster_id = self.role.cluster_id if self.role else new_cluster_id()
        for _attempt in range(2):  # one retry: the tool is a one-shot JVM, which can fail to start transiently
            proc = subprocess.run(
                # "--cluster-id=<id>": an id may start with "-" (base64url), which a separate argument would
                # turn into an unknown option (one start in 64 failed so)
                [java, "-cp", self._classpath(lib), STORAGE_TOOL, "format", f"--cluster-id={cluster_id}",
                 "-c", str(self.config_file), "--ignore-formatted"],
                capture_output=True, text=True,
            )
            if proc.returncode == 0:
                return
        if proc.returncode != 0:
            raise BrokerError(f"formatting KRaft storage in {self.storage} failed (exit {proc.returncode}); "
                              f"remove that folder to start afresh:\n{proc.stdout}{proc.stderr}")

    def start(self, timeout_s: float = 90.0, echo: Callable[[str], None] = print) -> BrokerStatus:
        """Start the broker (a no-op when it already runs) and wait until it answers a metadata request."""
        proc = self.launch(echo=echo)
        if proc is None:
            return self.status()
        return self.wait_ready(proc, timeout_s)

    def launch(self, echo: Callable[[str], None] = print) -> subprocess.Popen | None:
        """Start the broker's JVM without waiting for it (None when it already runs). A node of a cluster
        cannot answer before a majority of the quorum runs, so a cluster launches every node first."""
        if self.status().running:
            return None
        java = self._java()
        if not port_is_free(self.port):
            raise BrokerError(
                f"port {self.port} is already taken by another process, so the broker cannot listen there. "
                f"Stop that process, or choose another port (--port N and ENX_KAFKA_BOOTSTRAP=localhost:N)."
            )
        lib = resolve_jars(self.cache_dir, self.version, echo=echo)
        self.home.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(parents=True, exist_ok=True)
        controller_port = None if self.role else free_port()
        self._write_config(controller_port)
        self._format_storage(java, lib)
        cmd = [java, *self.heap.split(), *self.jvm_options, "-XX:+UseG1GC", "-Djava.awt.headless=true",
               "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
               "-Dorg.slf4j.simpleLogger.showDateTime=true",
               "-cp", self._classpath(lib), MAIN_CLASS, str(self.config_file)]
        with open(self.log, "ab") as logf:
            logf.write(f"\n==== enx-streams: starting Kafka {self.version} on {self.bootstrap} ====\n".encode())
            logf.flush()
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=self.home)
        self.state_file.write_text(json.dumps({"pid": proc.pid, "port": self.port, "version": self.version,
                                               "controller_port": controller_port}))
        return proc

    def wait_ready(self, proc: subprocess.Popen, timeout_s: float = 90.0) -> BrokerStatus:
        """Wait until the launched broker answers a metadata request; kill it and raise if it does not."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                raise BrokerError(f"the broker exited with code {code} while starting. Its log, {self.log}, "
                                  f"ends with:\n{tail(self.log)}")
            if kafka_answers(self.bootstrap, timeout_s=2.0):
                return self.status()
            time.sleep(0.25)  # poll interval while waiting for the JVM, not a synchronisation sleep
        proc.kill()
        proc.wait()
        raise BrokerError(f"the broker did not answer on {self.bootstrap} within {timeout_s:.0f} s; it was "
                          f"stopped. Its log, {self.log}, ends with:\n{tail(self.log)}")

    # -- stop -------------------------------------------------------------------------------------

    def stop(self, timeout_s: float = 30.0) -> str:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL. Returns what happened, in a sentence."""
        pid = self._running_pid()
        if pid is None:
            self.state_file.unlink(missing_ok=True)
            return "the broker was not running"
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._running_pid() is None:
                break
            _reap(pid)
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            _reap(pid, block=True)
            self.state_file.unlink(missing_ok=True)
            return f"the broker (pid {pid}) did not stop within {timeout_s:.0f} s of SIGTERM and was killed"
        self.state_file.unlink(missing_ok=True)
        return f"the broker (pid {pid}) stopped cleanly"

    def kill(self) -> None:
        """SIGKILL, for fault tests."""
        pid = self._running_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            _reap(pid, block=True)


def _reap(pid: int, block: bool = False) -> None:
    """Collect a child's exit status so it does not linger as a zombie (no-op for a non-child)."""
    try:
        if block:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    return
                if not Path(f"/proc/{pid}").exists():
                    return
                time.sleep(0.05)
        else:
            os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


CLUSTER_HEAP = "-Xms64m -Xmx256m"  # three JVMs on a shared machine: small heaps (KAFKA_HEAP_OPTS overrides)
# The JIT's first tier only: a node (re)starts in about half the time on a busy 2-core machine (10 s against 12 to
# 23 s, measured 2026-12-03), which a rolling restart pays three times; a local cluster's throughput is not the point.
CLUSTER_JVM_OPTIONS = ("-XX:TieredStopAtLevel=1",)
QUORUM = 3  # controllers of a local cluster: a majority survives the loss of any one


@dataclasses.dataclass
class ClusterStatus:
    nodes: list[BrokerStatus]

    @property
    def running(self) -> bool:
        return all(n.running for n in self.nodes)

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    def describe(self) -> str:
        up = sum(n.running for n in self.nodes)
        state = "running" if self.running else ("stopped" if up == 0 else "degraded")
        lines = [f"{state}  bootstrap={self.bootstrap}  brokers={up}/{len(self.nodes)} running"]
        lines += [f"  node {i + 1}: {n.describe()}" for i, n in enumerate(self.nodes)]
        return "\n".join(lines)


def cluster_size(data_dir: Path) -> int | None:
    """The number of brokers of the local cluster whose layout ``<data_dir>/kafka/cluster.json`` holds (None
    when there is none: the data dir has a single broker, or nothing yet)."""
    try:
        return len(json.loads((Path(data_dir) / "kafka" / "cluster.json").read_text())["ports"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class LocalKafkaCluster:
    """A local cluster of ``brokers`` KRaft nodes on loopback, for tests of a broker's loss and for trying a
    deployment's replication on one machine. The first three nodes are broker and controller in one JVM
    (the quorum); any further ones are brokers only. Node ``i`` keeps its storage, log and config in
    ``<data_dir>/kafka/node-<i>``; the layout (ports, cluster id) is fixed at the first start in
    ``<data_dir>/kafka/cluster.json``, so a node restarted alone rejoins the same quorum."""

    START_TIMEOUT_S = 180.0

    def __init__(self, data_dir: Path, cache_dir: Path, brokers: int = 3, port: int = 9092,
                 host: str = "localhost", heap: str | None = None, ports: list[int] | None = None,
                 replication: int | None = None) -> None:
        if brokers < 1:
            raise BrokerError(f"a cluster needs at least one broker, got --brokers {brokers}")
        self.home = Path(data_dir).resolve() / "kafka"
        self.layout_file = self.home / "cluster.json"
        layout = self._read_layout()
        if layout and len(layout["ports"]) != brokers:
            raise BrokerError(f"the local cluster in {self.home} has {len(layout['ports'])} brokers, not {brokers}: "
                              f"use --brokers {len(layout['ports'])}, or stop it and remove {self.home} to start "
                              f"afresh")
        self._layout = layout or {"cluster_id": new_cluster_id(),
                                  "ports": list(ports) if ports else [port + i for i in range(brokers)],
                                  "controller_ports": [free_port() for _ in range(min(QUORUM, brokers))]}
        controllers = self._layout["controller_ports"]
        voters = ",".join(f"{i + 1}@127.0.0.1:{p}" for i, p in enumerate(controllers))
        replication = replication_for(brokers, replication)  # of the internal topics (ENX_KAFKA_REPLICATION)
        heap = heap or os.environ.get("KAFKA_HEAP_OPTS") or CLUSTER_HEAP
        self.nodes = [
            LocalKafka(data_dir, cache_dir, port=p, host=host, heap=heap, jvm_options=CLUSTER_JVM_OPTIONS,
                       home=self.home / f"node-{i + 1}",
                       role=ClusterRole(i + 1, voters, controllers[i] if i < len(controllers) else None,
                                        self._layout["cluster_id"], replication))
            for i, p in enumerate(self._layout["ports"])]

    def _read_layout(self) -> dict | None:
        try:
            return json.loads(self.layout_file.read_text())
        except (OSError, ValueError):
            return None

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def version(self) -> str:
        return self.nodes[0].version

    def status(self) -> ClusterStatus:
        return ClusterStatus([n.status() for n in self.nodes])

    def start(self, timeout_s: float = 180.0, echo: Callable[[str], None] = print) -> ClusterStatus:
        """Start every node that is not running, then wait until each answers (a no-op when all run)."""
        for node in self.nodes:
            if not node.status().running and not port_is_free(node.port):
                raise BrokerError(f"port {node.port} is already taken by another process, so broker "
                                  f"{node.role.node_id} cannot listen there. Stop that process, or choose "
                                  f"another first port (--port N; the brokers take N, N+1, ...).")
        resolve_jars(self.nodes[0].cache_dir, self.version, echo=echo)
        self.home.mkdir(parents=True, exist_ok=True)
        self.layout_file.write_text(json.dumps(self._layout))
        launched = [(node, node.launch(echo=echo)) for node in self.nodes]
        deadline = time.monotonic() + timeout_s
        try:
            for node, proc in launched:
                if proc is not None:
                    node.wait_ready(proc, max(1.0, deadline - time.monotonic()))
        except BrokerError:
            self.stop()
            raise
        return self.status()

    def stop(self, timeout_s: float = 30.0) -> str:
        """Stop every node at once (one by one, the last ones would wait for a quorum already gone)."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            said = list(pool.map(lambda n: n.stop(timeout_s), self.nodes))
        return "\n".join(f"node {i + 1}: {s}" for i, s in enumerate(said))
