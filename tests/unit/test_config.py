"""The settings module: every ENX_* variable, its flag, parsing and secret masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams import config


def test_defaults_match_the_contract() -> None:
    s = config.load(environ={})
    assert s.kafka_bootstrap == "localhost:9092"
    assert s.transcode_sla_minutes == 45 and s.transcode_sla_seconds == 2700
    assert s.state_retention_days == 7
    assert s.topic_prefix == "enablex."
    assert s.topic("webhooks") == "enablex.webhooks.v1"
    assert s.partitions == 8
    assert s.ingest_port == 8080 and s.max_body_bytes == 1024 * 1024
    assert s.clickhouse_url == f"chdb://{(s.data_dir / 'clickhouse').resolve()}"
    assert s.clickhouse_is_embedded


def test_environment_then_flags() -> None:
    env = {"ENX_DATA_DIR": "/tmp/x", "ENX_TRANSCODE_SLA_MINUTES": "10", "ENX_TOPIC_PREFIX": "acme."}
    s = config.load(environ=env, topic_prefix="other.", partitions=None)
    assert s.data_dir == Path("/tmp/x") and s.transcode_sla_seconds == 600
    assert s.topic("alerts") == "other.alerts.v1"


@pytest.mark.parametrize("env, message", [
    ({"ENX_PARTITIONS": "0"}, "ENX_PARTITIONS / --partitions"),
    ({"ENX_TRANSCODE_SLA_MINUTES": "soon"}, "ENX_TRANSCODE_SLA_MINUTES"),
    ({"ENX_TOPIC_PREFIX": "a b"}, "ENX_TOPIC_PREFIX"),
])
def test_bad_values_name_the_variable(env: dict, message: str) -> None:
    with pytest.raises(config.SettingsError, match=message):
        config.load(environ=env)


def test_secrets_are_never_shown() -> None:
    s = config.load(environ={"ENX_INGEST_TOKEN": "hunter2",
                             "ENX_CLICKHOUSE_DSN": "http://u:pw-secret@ch:8123/enablex"})
    assert s.ingest_token.reveal() == "hunter2"
    assert s.clickhouse_url == "http://u:pw-secret@ch:8123/enablex" and not s.clickhouse_is_embedded
    shown = repr(s) + str(s) + str(s.describe())
    assert "hunter2" not in shown and "pw-secret" not in shown
    assert s.describe()["ENX_INGEST_TOKEN"] == "***"


def test_every_setting_has_an_env_name_and_flag() -> None:
    fields = {f for f in config.Settings.__dataclass_fields__}
    assert {s.field for s in config.SETTINGS} == fields
    for s in config.SETTINGS:
        assert s.env == "ENX_" + s.field.upper() and s.flag.startswith("--")


def test_every_setting_is_a_flag_of_every_command() -> None:
    from typer.main import get_command

    from streams.cli import app

    root = get_command(app)
    kafka = root.commands["kafka"]
    for cmd in [kafka.commands["start"], kafka.commands["status"], root.commands["settings"]]:
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert {s.flag for s in config.SETTINGS} <= opts, cmd.name
