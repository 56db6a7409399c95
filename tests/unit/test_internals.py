"""The private members of faust-streaming, mode and aiokafka that enx-streams relies on (streams/internals/)
are still there, defined by the same source, at the exact versions pyproject.toml pins. A failure names the
member: re-read its use (the ``why`` below), then update its fingerprint in streams/internals/__init__.py."""

from __future__ import annotations

import ast
import dataclasses
import importlib.metadata
import re
from pathlib import Path

import pytest

from streams import internals

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("member", internals.MEMBERS, ids=lambda m: m.where)
def test_each_private_member_is_where_it_was(member: internals.Member) -> None:
    problem = internals.check(member)
    assert problem is None, problem


def test_a_changed_or_missing_member_is_named() -> None:
    drain = internals.MEMBERS[0]
    changed = dataclasses.replace(drain, fingerprint="0" * 16)
    assert "Consumer._drain_messages" in internals.check(changed) and "changed" in internals.check(changed)
    gone = dataclasses.replace(drain, where="faust.transport.consumer:Consumer._no_such_member")
    assert "_no_such_member is no longer assigned" in internals.check(gone)
    moved = dataclasses.replace(drain, defined_by="faust.transport.consumer:NoSuchClass.method")
    assert "is gone" in internals.check(moved) and drain.why in internals.check(moved)


@pytest.mark.parametrize("package,version", sorted(internals.PINNED.items()))
def test_the_versions_installed_are_the_ones_checked(package: str, version: str) -> None:
    assert importlib.metadata.version(package) == version, (
        f"{package} {importlib.metadata.version(package)} is installed, the members in streams/internals/ were "
        f"checked against {version}")


def test_pyproject_pins_them_exactly() -> None:
    text = (REPO / "pyproject.toml").read_text()
    for package, version in internals.PINNED.items():
        assert re.search(rf'"{re.escape(package)}=={re.escape(version)}"', text), \
            f"pyproject.toml must pin {package}=={version} (streams/internals/ relies on its private members)"


def test_nothing_else_in_streams_reaches_into_a_dependency() -> None:
    """A private attribute of anything but ``self``, ``cls`` or ``other`` (our own classes comparing two of
    their instances) is read only in streams/internals/; ``os._exit`` and ``sys._getframe`` are public."""
    offenders = []
    for path in sorted((REPO / "streams").rglob("*.py")):
        if "internals" in path.relative_to(REPO / "streams").parts:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value
                if isinstance(base, ast.Name) and base.id in ("self", "cls", "other", "os", "sys"):
                    continue
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} .{node.attr}")
    assert not offenders, "private members used outside streams/internals/: " + ", ".join(offenders)
