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
