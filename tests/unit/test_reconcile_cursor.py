"""The reconciler's cursor: the first day not final and the ids already produced, kept across restarts."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from streams.config import Settings
from streams.reconcile.cursor import Cursor, CursorError, cursor_path, first_open_day, load, save

D = dt.date(2024, 5, 1)
DAY_MS = 86_400_000
MAY2_0000 = int(dt.datetime(2024, 5, 2, tzinfo=dt.timezone.utc).timestamp() * 1000)


def test_a_day_is_final_once_older_than_the_settle_margin() -> None:
    assert first_open_day(MAY2_0000 + DAY_MS - 1) == D  # May 1 ended less than a day ago
    assert first_open_day(MAY2_0000 + DAY_MS) == D + dt.timedelta(days=1)
    assert first_open_day(MAY2_0000, settle_s=0) == D + dt.timedelta(days=1)


def test_advancing_adds_ids_moves_forward_only_and_drops_final_days() -> None:
    c = Cursor().advanced({D: ["a"], D + dt.timedelta(days=1): ["b"]}, D)
    assert c.day == D and c.ids() == {"a", "b"}
    c = c.advanced({D + dt.timedelta(days=1): ["c"]}, D + dt.timedelta(days=1))
    assert c.day == D + dt.timedelta(days=1) and c.ids() == {"b", "c"}
    assert c.advanced({}, D).day == D + dt.timedelta(days=1)  # never backwards
    assert c.advanced({D + dt.timedelta(days=3): ["d"]}, None).ids() == {"b", "c", "d"}


def test_saved_and_loaded_across_a_restart(tmp_path: Path) -> None:
    path = cursor_path(Settings(data_dir=tmp_path))
    assert path == tmp_path / "reconcile" / "cursor.json"
    assert load(path) == Cursor()
    c = Cursor().advanced({D: ["x", "y"]}, D)
    save(path, c)
    assert load(path) == c
    save(path, c.advanced({D: ["z"]}, None))
    assert load(path).ids() == {"x", "y", "z"}
    assert [p.name for p in path.parent.iterdir()] == ["cursor.json"]  # no temporary file left


def test_an_unreadable_cursor_is_said_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "cursor.json"
    for text in ("{half", '{"version": 9}', '{"version": 1, "day": "May"}', "[]"):
        path.write_text(text)
        with pytest.raises(CursorError, match=r"cursor\.json cannot be read .*move it aside"):
            load(path)
    assert path.read_text() == "[]"  # left for the user to look at
