"""Where the reconciler stopped: ``<data dir>/reconcile/cursor.json``, written atomically.

The file holds the first day not yet final and the ids of the findings already produced for each day
from then on. A day is final once its end is older than the settle margin (1 day by default: EnableX has
filed everything of that day by then), so each pass re-reads ``[cursor day .. today]`` and a restart
resumes where the last pass stopped. Ids of days before the cursor are dropped (those days are not read
again); ``reconcile_findings`` in ClickHouse is the longer memory.

Written as a temporary file in the same directory, fsynced, then renamed over the old one (and the
directory fsynced), so a crash leaves the old cursor or the new one, never half of one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from streams.config import Settings

VERSION = 1
DEFAULT_SETTLE_S = 86400.0


class CursorError(RuntimeError):
    """The cursor file cannot be read; the message names it and what to do."""


def cursor_path(settings: Settings) -> Path:
    return settings.data_dir / "reconcile" / "cursor.json"


def utc_day(ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).date()


def first_open_day(now_ms: int, settle_s: float = DEFAULT_SETTLE_S) -> dt.date:
    """The first day that is not final at ``now_ms``: a day is final once its end + ``settle_s`` has passed."""
    return utc_day(now_ms - int(settle_s * 1000))


@dataclasses.dataclass(frozen=True)
class Cursor:
    day: dt.date | None = None  # None: no pass has finished yet
    emitted: Mapping[dt.date, frozenset[str]] = dataclasses.field(default_factory=dict)

    def ids(self) -> frozenset[str]:
        """Every finding id already produced for the days still in the window."""
        return frozenset().union(*self.emitted.values()) if self.emitted else frozenset()

    def advanced(self, produced: Mapping[dt.date, Iterable[str]], open_day: dt.date | None) -> Cursor:
        """The cursor after a pass: ``produced`` added, the day moved to ``open_day`` (never backwards; None
        keeps it), the ids of days before it dropped. Pure."""
        emitted = {d: set(ids) for d, ids in self.emitted.items()}
        for d, ids in produced.items():
            emitted.setdefault(d, set()).update(ids)
        day = self.day
        if open_day is not None and (day is None or open_day > day):
            day = open_day
        return Cursor(day, {d: frozenset(ids) for d, ids in sorted(emitted.items())
                            if ids and (day is None or d >= day)})


def load(path: Path) -> Cursor:
    """The cursor in ``path``; an empty cursor when the file does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Cursor()
    try:
        data = json.loads(text)
        if data.get("version") != VERSION:
            raise ValueError(f"version {data.get('version')!r}, this release reads version {VERSION}")
        day = dt.date.fromisoformat(data["day"]) if data.get("day") else None
        emitted = {dt.date.fromisoformat(d): frozenset(str(i) for i in ids)
                   for d, ids in (data.get("emitted") or {}).items()}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CursorError(f"the reconciler's cursor {path} cannot be read ({exc}); move it aside to start "
                          f"again from yesterday (findings already in reconcile_findings are not produced "
                          f"twice), or give `enx-streams reconcile --since YYYY-MM-DD`") from None
    return Cursor(day, emitted)


def save(path: Path, cursor: Cursor) -> None:
    """Write ``cursor`` to ``path`` atomically (temporary file, fsync, rename, fsync of the directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"version": VERSION, "day": cursor.day.isoformat() if cursor.day else None,
            "emitted": {d.isoformat(): sorted(ids) for d, ids in sorted(cursor.emitted.items())}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=1)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
