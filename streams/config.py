"""The ENX_* settings, in one place.

Every setting is read from an environment variable with the prefix ``ENX_`` and may be overridden by
the CLI flag of the same name (``ENX_DATA_DIR`` <-> ``--data-dir``). ``SETTINGS`` is the table both the
CLI and the tests read, so a setting cannot exist in one and not the other.

Secrets (the ingest token, a password inside a ClickHouse DSN) are held in :class:`Secret`, whose
``str`` and ``repr`` never show the value, so a logged or printed ``Settings`` leaks nothing.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable


class Secret:
    """A value that is never printed: ``str()`` and ``repr()`` give ``'***'``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def default_data_dir() -> Path:
    return Path.home() / ".enx-streams"


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "enx-streams"


@dataclasses.dataclass(frozen=True)
class Setting:
    """One ENX_* setting: its field name, parser and help text."""

    field: str
    parse: Callable[[str], Any]
    help: str
    secret: bool = False

    @property
    def env(self) -> str:
        return "ENX_" + self.field.upper()

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"must be a positive whole number, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError(f"must be a positive number, got {text!r}")
    return value


def _port_or_zero(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"must be a port, 1..65535, or 0 for any free port, got {text!r}")
    return value


def _prefix(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]*", text):
        raise ValueError(f"a topic prefix may hold only letters, digits, '.', '_' and '-', got {text!r}")
    return text


def _basic_auth(text: str) -> str:
    """``user:password[,user:password...]``: each pair needs a user and a password (the value is never shown)."""
    for i, pair in enumerate(text.split(","), 1):
        user, colon, password = pair.strip().partition(":")
        if not colon or not user or not password:
            raise ValueError(f"pair {i} is not user:password (a user, a colon, a password; pairs separated by ',')")
    return text


def _addresses(text: str) -> str:
    """A comma list of IP addresses or CIDR networks (``10.0.0.0/8,::1``)."""
    import ipaddress

    for item in (t.strip() for t in text.split(",")):
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
    return text


def _app_ids(text: str) -> str:
    if not [t for t in text.split(",") if t.strip()]:
        raise ValueError("give at least one app_id, comma-separated")
    return text


def split_list(text: str | None) -> list[str]:
    """The non-empty, stripped items of a comma list."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


SETTINGS: tuple[Setting, ...] = (
    Setting("data_dir", lambda s: Path(s).expanduser(),
            "where the local broker, the spool and the embedded ClickHouse live (default ~/.enx-streams)"),
    Setting("kafka_bootstrap", str, "Kafka bootstrap servers, host:port[,host:port]"),
    Setting("kafka_replication", _positive_int, "replicas of every topic provisioned (min.insync.replicas one less, "
            "at least 1); unset = min(3, brokers in the cluster)"),
    Setting("clickhouse_dsn", str,
            "chdb://<abs path> for the embedded engine (default <data dir>/clickhouse), "
            "http(s)://user:password@host:8123/enablex for a server", secret=True),
    Setting("transcode_sla_minutes", _positive_float, "minutes from session end to the composite file's deadline"),
    Setting("ingest_token", str, "secret(s) accepted as /webhooks/enablex/{token}, comma-separated for rotation",
            secret=True),
    Setting("ingest_basic_auth", _basic_auth, "HTTP Basic credentials accepted, user:password, comma-separated "
            "for rotation (EnableX's \"HTTP Authentication\")", secret=True),
    Setting("trusted_proxies", _addresses, "IPs/CIDRs of reverse proxies whose X-Forwarded-For is believed"),
    Setting("allowed_app_ids", _app_ids, "app_ids accepted, comma-separated; unset = all (others get 403)"),
    Setting("state_retention_days", _positive_float, "days a finished session stays in the state tables"),
    Setting("topic_prefix", _prefix, "prefix of the five contract topics"),
    Setting("partitions", _positive_int, "partitions of each contract topic (and so of each state table)"),
    Setting("ingest_host", str, "address the ingest service listens on"),
    Setting("ingest_port", _positive_int, "port the ingest service listens on"),
    Setting("worker_metrics_port", _port_or_zero, "port of the worker's Prometheus /metrics; unset: not served, "
            "0: any free port (logged)"),
    Setting("worker_metrics_host", str, "address the worker's /metrics listens on"),
    Setting("max_body_bytes", _positive_int, "largest webhook body accepted, in bytes"),
    Setting("cache_dir", lambda s: Path(s).expanduser(), "where the Kafka broker jars are cached"),
    Setting("spool_max_bytes", _positive_int, "largest the ingest spool may grow while Kafka is unreachable, in "
            "bytes; then 503 with Retry-After"),
    Setting("spool_min_free_bytes", _positive_int, "free disk space the ingest spool always leaves, in bytes"),
    Setting("enablex_app_id", str, "EnableX APP_ID for the reconciler's Server API calls (HTTP Basic user)",
            secret=True),
    Setting("enablex_app_key", str, "EnableX APP_KEY for the reconciler's Server API calls (HTTP Basic password)",
            secret=True),
    Setting("enablex_api_url", str, "base URL of EnableX's Server API (the reconciler)"),
    Setting("reconcile_interval_s", _positive_float, "seconds between two reconciliation passes of the worker"),
    Setting("reconcile_grace_s", _positive_float, "seconds a webhook may still be in flight before the "
            "reconciler reports it missing"),
    Setting("ingest_lease_s", _positive_float, "seconds the SLA watch waits for a silent ingest instance "
            "(spooling, or gone without leaving) before judging without it"),
)

SETTINGS_BY_FIELD: dict[str, Setting] = {s.field: s for s in SETTINGS}


@dataclasses.dataclass(frozen=True)
class Settings:
    data_dir: Path = dataclasses.field(default_factory=default_data_dir)
    kafka_bootstrap: str = "localhost:9092"
    kafka_replication: int | None = None  # None: min(3, brokers), streams.broker.replication
    clickhouse_dsn: Secret | None = None  # None: embedded chdb://<data_dir>/clickhouse
    transcode_sla_minutes: float = 45.0
    ingest_token: Secret | None = None
    ingest_basic_auth: Secret | None = None
    trusted_proxies: str | None = None
    allowed_app_ids: str | None = None
    state_retention_days: float = 7.0
    topic_prefix: str = "enablex."
    partitions: int = 8
    ingest_host: str = "127.0.0.1"
    ingest_port: int = 8080
    worker_metrics_port: int | None = None  # None: no /metrics on the worker
    worker_metrics_host: str = "127.0.0.1"
    max_body_bytes: int = 1024 * 1024
    cache_dir: Path = dataclasses.field(default_factory=default_cache_dir)
    spool_max_bytes: int = 1024 ** 3
    spool_min_free_bytes: int = 256 * 1024 ** 2
    enablex_app_id: Secret | None = None
    enablex_app_key: Secret | None = None
    enablex_api_url: str = "https://api.enablex.io/video/v2/"
    reconcile_interval_s: float = 300.0
    reconcile_grace_s: float = 600.0
    ingest_lease_s: float = 60.0

    # -- derived values -------------------------------------------------------------------------

    @property
    def clickhouse_url(self) -> str:
        """The DSN to connect with (contains the password for a server: never print it)."""
        if self.clickhouse_dsn is not None and self.clickhouse_dsn.reveal():
            return self.clickhouse_dsn.reveal()
        return f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def clickhouse_is_embedded(self) -> bool:
        return self.clickhouse_url.startswith("chdb://")

    @property
    def transcode_sla_seconds(self) -> float:
        return self.transcode_sla_minutes * 60.0

    @property
    def state_retention_seconds(self) -> float:
        return self.state_retention_days * 86400.0

    def topic(self, name: str) -> str:
        """The full name of a contract topic: ``topic("webhooks")`` -> ``enablex.webhooks.v1``."""
        return f"{self.topic_prefix}{name}.v1"

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the non-None overrides applied (raw strings are parsed like env values)."""
        return dataclasses.replace(self, **_parse_values({k: v for k, v in overrides.items() if v is not None}))

    def describe(self) -> dict[str, str]:
        """Each setting and its value, secrets masked: safe to print or log."""
        out: dict[str, str] = {}
        for s in SETTINGS:
            value = getattr(self, s.field)
            out[s.env] = "(unset)" if value is None else ("***" if s.secret else str(value))
        return out


class SettingsError(ValueError):
    """A setting's value cannot be used; the message names the variable and what is expected."""


def _parse_values(raw: Mapping[str, Any]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for field, value in raw.items():
        setting = SETTINGS_BY_FIELD[field]
        if isinstance(value, str):
            try:
                value = setting.parse(value)
            except ValueError as exc:
                raise SettingsError(f"{setting.env} / {setting.flag}: {exc}") from None
        if setting.secret and value is not None and not isinstance(value, Secret):
            value = Secret(str(value))
        parsed[field] = value
    return parsed


def load(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, then the CLI's overrides (None means 'flag not given')."""
    env = os.environ if environ is None else environ
    from_env = {s.field: env[s.env] for s in SETTINGS if env.get(s.env, "") != ""}
    return Settings(**_parse_values(from_env)).with_overrides(**overrides)
