"""Connecting to ClickHouse, and the one-owner rule of an embedded data directory.

One client library, clickhouse-connect: a DSN of ``chdb:///abs/path`` opens the embedded engine (real
ClickHouse, in-process), ``http(s)://user:password@host:8123/enablex`` a server.

chdb lets one process open one data directory, and one process hold one engine path at a time. So an
embedded data directory has exactly one *owner*: the sink worker (``enx-streams worker --roles sink``, or
the worker ``enx-streams dev`` starts). The owner holds an ``fcntl.flock`` on ``<dir>.owner.lock`` beside
the data directory (``<data dir>/clickhouse.owner.lock`` by default), which records its pid and command;
the kernel releases the lock when the owner exits, even by SIGKILL, so a stale file never blocks a new
owner. Other processes reach embedded data through the owner's query socket (:mod:`streams.sink.owner`).
With no owner running, ``enx-streams sql`` holds the lock itself for one read, marked ``transient``; an
owner starting meanwhile waits for that read to end (:meth:`OwnerLock.acquire`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from streams.config import Settings

CHDB_SCHEME = "chdb://"
# sun_path holds 108 bytes on Linux; a longer socket path falls back to a short one in the temp folder.
MAX_SOCKET_PATH = 100


class ClickHouseError(RuntimeError):
    """ClickHouse cannot be reached or used; the message says what to do next (and holds no password)."""


class OwnerError(ClickHouseError):
    """The embedded data directory is owned by another process."""


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced by ``***``: safe to print or log."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{netloc}", parts.path, parts.query, parts.fragment))


def embedded_path(dsn: str) -> Path | None:
    """The data directory of a ``chdb://`` DSN (absolute), or None for ``chdb://memory`` or a server DSN."""
    if not dsn.startswith(CHDB_SCHEME):
        return None
    rest = dsn[len(CHDB_SCHEME):].split("?", 1)[0]
    if rest in ("", "memory", ":memory:") or rest.startswith("memory/"):
        return None
    return Path(rest).expanduser().resolve()


def settings_path(settings: Settings) -> Path | None:
    """The embedded data directory these settings use, or None when they name a server."""
    return embedded_path(settings.clickhouse_url) if settings.clickhouse_is_embedded else None


def lock_path(db_path: Path) -> Path:
    """``<data dir>/clickhouse.owner.lock`` for the default ``<data dir>/clickhouse``."""
    return db_path.parent / f"{db_path.name}.owner.lock"


def socket_path(db_path: Path) -> Path:
    """Where the owner answers queries: ``<data dir>/run/clickhouse.sock`` for the default layout (a short
    path in the temp folder, derived from the data directory, when that one is too long for a socket)."""
    path = db_path.parent / "run" / f"{db_path.name}.sock"
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(db_path)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"enx-streams-{digest}.sock"


def describe_process(argv: list[str] | None = None) -> str:
    """A short description of this process for the owner file, e.g. ``enx-streams worker --roles sink``."""
    argv = list(sys.argv if argv is None else argv)
    head = os.path.basename(argv[0]) if argv else "python"
    if head in ("cli.py", "__main__.py", "enx-streams", "-m", "-c"):
        head = "enx-streams"
    return " ".join([head, *argv[1:4]]).strip()


@dataclass(frozen=True)
class OwnerInfo:
    pid: int | None
    command: str
    transient: bool = False  # a reader holding the directory for one query (``enx-streams sql``), not an owner

    def describe(self) -> str:
        pid = f"pid {self.pid}" if self.pid is not None else "another process"
        return f"{pid} ({self.command})" if self.command else pid


def _read_owner(fd: int) -> OwnerInfo:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096).decode() or "{}")
        return OwnerInfo(pid=int(data["pid"]) if data.get("pid") is not None else None,
                         command=str(data.get("command") or ""), transient=bool(data.get("transient")))
    except (OSError, ValueError, TypeError, KeyError):
        return OwnerInfo(pid=None, command="")


def owner_refusal(db_path: Path, owner: OwnerInfo) -> str:
    return (f"the embedded ClickHouse at {db_path} is owned by {owner.describe()}; an embedded data directory "
            f"has one owner (enx-streams dev/worker), so several sink workers need a ClickHouse server: set "
            f"ENX_CLICKHOUSE_DSN=http://user:password@host:8123/enablex, or stop that process first")


READER_WAIT_S = 60.0  # how long anyone waits for a reader (enx-streams sql) holding the directory
LOCK_POLL_S = 0.05


class OwnerLock:
    """An exclusive, non-blocking ``flock`` on the owner file of an embedded data directory."""

    def __init__(self, db_path: Path, fd: int) -> None:
        self.db_path = db_path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, db_path: Path, command: str | None = None, *, transient: bool = False,
                wait_s: float = READER_WAIT_S, clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep) -> OwnerLock:
        """Become the owner of ``db_path`` or raise :class:`OwnerError` naming the current owner.

        ``transient``: this process holds the directory for one read (``enx-streams sql`` with no owner
        running), and says so in the owner file. Whoever finds the directory held by such a reader (or by a
        process that has not written its name yet) waits up to ``wait_s`` for it to finish instead of
        failing: a sink restarting while an analyst reads starts a moment later. An owner is refused at
        once."""
        path = lock_path(db_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = clock() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _read_owner(fd)
                if (holder.transient or holder.pid is None) and clock() < deadline:
                    sleep(LOCK_POLL_S)  # a reader finishing its query: poll the lock until it lets go
                    continue
                os.close(fd)
                raise OwnerError(owner_refusal(db_path, holder)) from None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        record = {"pid": os.getpid(), "command": command or describe_process(), "transient": transient}
        os.write(fd, json.dumps(record).encode())
        return cls(db_path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> OwnerLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def current_owner(db_path: Path) -> OwnerInfo | None:
    """Who owns ``db_path`` now, or None when nobody does (checked with the lock, not the file's text)."""
    path = lock_path(db_path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_owner(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def connect(settings: Settings, *, readonly: bool = False) -> Any:
    """A clickhouse-connect client for the configured ClickHouse (synchronous: call it off the event loop).

    Embedded: the caller must hold the :class:`OwnerLock` (a second process on the same directory fails
    inside chdb). ``readonly=True`` opens a session where writes fail (``readonly=2``: settings may still
    change, ``readonly`` itself may not).
    """
    import clickhouse_connect

    url = settings.clickhouse_url
    options: dict[str, Any] = {}
    if readonly:
        options["settings"] = {"readonly": 2}
    if settings.clickhouse_is_embedded:
        path = embedded_path(url)
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
            url = f"{CHDB_SCHEME}{path}"
        try:
            return clickhouse_connect.get_client(dsn=url, **options)
        except Exception as exc:  # noqa: BLE001 - chdb raises several kinds; all mean the same to the user
            raise ClickHouseError(f"could not open the embedded ClickHouse at {path or url}: {exc}") from exc
    if not (url.startswith("http://") or url.startswith("https://")):
        raise ClickHouseError(f"ENX_CLICKHOUSE_DSN must start with chdb://, http:// or https://, "
                              f"got {redact_dsn(url)!r}")
    try:
        return clickhouse_connect.get_client(dsn=url, **options)
    except Exception as exc:  # noqa: BLE001
        message = str(exc)
        password = urlsplit(url).password
        if password:
            message = message.replace(password, "***")
        raise ClickHouseError(f"could not connect to ClickHouse at {redact_dsn(url)}: {message}; check that the "
                              f"server runs and ENX_CLICKHOUSE_DSN is right") from exc
