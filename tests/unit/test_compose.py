"""docker-compose.yml is the production-like deployment; no Docker engine runs here, so it is parsed."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from streams import config
from streams.broker.local import pinned_kafka_version

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_services_and_official_images() -> None:
    assert set(SERVICES) >= {"kafka", "clickhouse", "grafana", "ingest", "worker"}
    assert SERVICES["kafka"]["image"] == f"apache/kafka:{pinned_kafka_version()}"
    assert SERVICES["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert SERVICES["grafana"]["image"].startswith("grafana/grafana:")
    assert "grafana-clickhouse-datasource" in SERVICES["grafana"]["environment"]["GF_INSTALL_PLUGINS"]
    for role in ("ingest", "worker"):
        assert SERVICES[role]["build"] == "."
    assert (ROOT / "Dockerfile").exists()


def test_kafka_runs_in_kraft_mode() -> None:
    env = SERVICES["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]


def test_ports() -> None:
    assert "8080:8080" in SERVICES["ingest"]["ports"]
    assert "9092:9092" in SERVICES["kafka"]["ports"]
    assert "8123:8123" in SERVICES["clickhouse"]["ports"]
    assert "3000:3000" in SERVICES["grafana"]["ports"]


def test_worker_runs_both_roles_against_the_server() -> None:
    assert SERVICES["worker"]["command"] == ["worker", "--roles", "processor,sink"]
    assert SERVICES["worker"]["environment"]["ENX_CLICKHOUSE_DSN"].startswith("http://")


def test_every_enx_name_is_a_setting() -> None:
    known = {s.env for s in config.SETTINGS}
    used = set(re.findall(r"\bENX_[A-Z_]+\b", (ROOT / "docker-compose.yml").read_text()))
    assert used and used <= known, used - known


def test_grafana_mounts_existing_dashboard_folders() -> None:
    for volume in SERVICES["grafana"]["volumes"]:
        host = volume.split(":")[0]
        assert (ROOT / host).is_dir(), host


def test_ingest_listens_on_all_addresses_with_credentials() -> None:
    env = SERVICES["ingest"]["environment"]
    assert env["ENX_INGEST_HOST"] == "0.0.0.0"
    assert env["ENX_INGEST_BASIC_AUTH"].startswith("${ENX_INGEST_BASIC_AUTH:?")  # required: no anonymous default


def test_the_reconciler_is_a_profile_with_the_credentials_from_the_environment() -> None:
    service = SERVICES["reconciler"]
    assert service["command"] == ["worker", "--roles", "reconciler"] and service["profiles"] == ["reconcile"]
    env = service["environment"]
    assert env["ENX_ENABLEX_APP_ID"] == "${ENX_ENABLEX_APP_ID:-}" and env["ENX_ENABLEX_APP_KEY"] == "${ENX_ENABLEX_APP_KEY:-}"
    assert env["ENX_CLICKHOUSE_DSN"].startswith("http://")  # it asks the ClickHouse server, not an embedded one
    assert any(v.endswith(":/var/lib/enx-streams") for v in service["volumes"])  # the cursor survives a restart


def test_prometheus_scrapes_ingest_and_every_worker_on_the_ports_they_listen_on() -> None:
    service = SERVICES["prometheus"]
    assert service["image"].startswith("prom/prometheus:v")
    assert "9090:9090" in service["ports"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    config_file = ROOT / mounts["/etc/prometheus/prometheus.yml"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in service["command"]
    jobs = {job["job_name"]: job for job in yaml.safe_load(config_file.read_text())["scrape_configs"]}
    assert set(jobs) == {"enx-ingest", "enx-worker"}

    def targets(job: str) -> set[tuple[str, int]]:
        (sd,) = jobs[job]["dns_sd_configs"]  # one target per container: a scaled service is scraped whole
        return {(name, sd["port"]) for name in sd["names"]}

    assert targets("enx-ingest") == {("ingest", int(SERVICES["ingest"]["environment"]["ENX_INGEST_PORT"]))}
    workers = {name for name, s in SERVICES.items() if s.get("command", [None])[0] == "worker"}
    assert workers == {"worker", "reconciler"}
    for name in workers:
        env = SERVICES[name]["environment"]
        assert env["ENX_WORKER_METRICS_HOST"] == "0.0.0.0"  # reachable from the prometheus container
        assert (name, int(env["ENX_WORKER_METRICS_PORT"])) in targets("enx-worker")
    assert {n for n, _ in targets("enx-worker")} == workers
    assert jobs["enx-ingest"]["metrics_path"] == jobs["enx-worker"]["metrics_path"] == "/metrics"


def test_grafana_reads_the_prometheus_service() -> None:
    source = yaml.safe_load((ROOT / "dashboards/provisioning/datasources/prometheus.yaml").read_text())["datasources"][0]
    host_port = SERVICES["prometheus"]["ports"][0].split(":")[1]
    assert source["url"] == f"http://prometheus:{host_port}" and source["uid"] == "enx-prometheus"
    assert "prometheus" in SERVICES["grafana"]["depends_on"]
    assert "prometheus-data" in COMPOSE["volumes"]


def interpolated(value: object, env: dict[str, str]) -> str:
    """``${NAME:-default}`` as Compose interpolates it, from ``env``."""
    return re.sub(r"\$\{([A-Z_]+):-([^}]*)\}", lambda m: env.get(m.group(1)) or m.group(2), str(value))


def cluster_env() -> dict[str, str]:
    lines = (ROOT / "cluster.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


KAFKA_NODES = ("kafka", "kafka-2", "kafka-3")


def test_the_cluster_profile_runs_three_brokers_of_the_pinned_image() -> None:
    assert cluster_env()["COMPOSE_PROFILES"] == "cluster"
    for name in KAFKA_NODES:
        assert SERVICES[name]["image"] == f"apache/kafka:{pinned_kafka_version()}"
        assert SERVICES[name]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert SERVICES[name]["hostname"] == name
    assert "profiles" not in SERVICES["kafka"]  # the single broker runs without the profile
    assert SERVICES["kafka-2"]["profiles"] == SERVICES["kafka-3"]["profiles"] == ["cluster"]
    volumes = [SERVICES[name]["volumes"][0].split(":")[0] for name in KAFKA_NODES]
    assert len(set(volumes)) == 3 and set(volumes) <= set(COMPOSE["volumes"])  # each its own storage


def test_the_cluster_profile_is_one_quorum_of_three_with_the_replication_rules() -> None:
    from streams.broker.replication import internal_topic_configs, replication_for

    env = cluster_env()
    nodes = {name: {k: interpolated(v, env) for k, v in SERVICES[name]["environment"].items()} for name in KAFKA_NODES}
    voters = {f"{n['KAFKA_NODE_ID']}@{name}:9093" for name, n in nodes.items()}
    assert all(set(n["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == voters for n in nodes.values())
    assert len({n["KAFKA_NODE_ID"] for n in nodes.values()}) == 3 and len({n["CLUSTER_ID"] for n in nodes.values()}) == 1
    assert all(n["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092" for name, n in nodes.items())
    wanted = internal_topic_configs(replication_for(3))
    for n in nodes.values():
        for key, value in wanted.items():
            assert n[f"KAFKA_{key.upper().replace('.', '_')}"] == value, key
    for role in ("ingest", "worker", "migrate"):
        role_env = {k: interpolated(v, env) for k, v in SERVICES[role]["environment"].items()}
        assert set(role_env["ENX_KAFKA_BOOTSTRAP"].split(",")) == {f"{name}:9092" for name in KAFKA_NODES}
        assert role_env["ENX_KAFKA_REPLICATION"] == "3"
    for role in ("ingest", "worker", "reconciler"):
        waits = SERVICES[role]["depends_on"]
        assert waits["kafka"]["condition"] == "service_healthy"
        assert all(waits[n] == {"condition": "service_healthy", "required": False} for n in KAFKA_NODES[1:])


def test_without_the_profile_one_broker_with_one_replica() -> None:
    node = {k: interpolated(v, {}) for k, v in SERVICES["kafka"]["environment"].items()}
    assert node["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093" and node["KAFKA_NODE_ID"] == "1"
    assert node["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1" and node["KAFKA_MIN_INSYNC_REPLICAS"] == "1"
    role_env = {k: interpolated(v, {}) for k, v in SERVICES["worker"]["environment"].items()}
    assert role_env["ENX_KAFKA_BOOTSTRAP"] == "kafka:9092" and role_env["ENX_KAFKA_REPLICATION"] == ""
