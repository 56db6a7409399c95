"""What each fault test held, appended to tests/faults/results.jsonl and summarised in tests/faults/README.md."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("results.jsonl")


def record_result(test: str, **figures: Any) -> None:
    row = {"test": test, "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **figures}
    with RESULTS.open("a") as out:
        out.write(json.dumps(row) + "\n")
