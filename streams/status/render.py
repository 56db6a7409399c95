"""How ``enx-streams status`` shows its :class:`~streams.status.judge.Report`: the verdict line, then one
aligned row per check; or one JSON document (``--format json``) with the verdict, each check and the facts
it was judged on (pure)."""

from __future__ import annotations

import dataclasses
import json

from streams.status.facts import Facts
from streams.status.judge import DEGRADED, Report

LABEL = {"ok": "ok", "degraded": "DEGRADED", "unknown": "unknown", "info": "-"}


def table(report: Report) -> str:
    rows = [(c.name, LABEL.get(c.level, c.level), c.detail) for c in report.checks]
    name_w = max(len(r[0]) for r in rows)
    state_w = max(len(r[1]) for r in rows)
    problems = [f"{c.why}, do {c.do}" for c in report.problems]
    lines = [f"degraded: {problems[0]}", *(f"    also: {p}" for p in problems[1:])] if problems else ["healthy"]
    lines.append("")
    lines += [f"{n:<{name_w}}  {s:<{state_w}}  {d}" for n, s, d in rows]
    return "\n".join(lines)


def as_json(report: Report, facts: Facts) -> str:
    return json.dumps({
        "verdict": "healthy" if report.healthy else "degraded",
        "summary": report.verdict,
        "problems": [{"check": c.name, "why": c.why, "do": c.do} for c in report.checks if c.level == DEGRADED],
        "checks": [dataclasses.asdict(c) for c in report.checks],
        "facts": facts_json(facts),
    }, indent=2)


def facts_json(facts: Facts) -> dict:
    """The facts as plain data, with each group's and partition's lag."""
    out = dataclasses.asdict(facts)
    for group_out, group in zip(out["groups"], facts.groups):
        group_out["lag"] = group.lag
        for partition_out, partition in zip(group_out["partitions"], group.partitions):
            partition_out["lag"] = partition.lag
    return out
