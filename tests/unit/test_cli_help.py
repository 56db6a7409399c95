"""The CLI's help, as a newcomer reads it: every command renders it, with its own options and the settings."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from streams import config
from streams.cli import app

runner = CliRunner()


def command_paths() -> list[list[str]]:
    root = typer.main.get_command(app)
    paths: list[list[str]] = []

    def walk(cmd: object, path: list[str]) -> None:
        if getattr(cmd, "commands", None):  # a group (typer vendors its own click)
            for name, sub in cmd.commands.items():  # type: ignore[attr-defined]
                walk(sub, path + [name])
        else:
            paths.append(path)

    walk(root, [])
    return paths


def help_of(path: list[str]) -> str:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "250"})  # one line per option
    assert result.exit_code == 0, f"{' '.join(path)} --help: {result.output}{result.exception!r}"
    return result.output


def test_the_top_level_help_lists_every_command() -> None:
    out = help_of([])
    for path in command_paths():
        assert path[0] in out


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p))
def test_every_command_has_a_help_naming_the_settings_and_their_variables(path: list[str]) -> None:
    out = help_of(path)
    for s in config.SETTINGS:
        assert s.flag in out and f"[env {s.env}]" in out, (s.flag, out)


def test_a_command_s_own_options_keep_their_help_and_checks() -> None:
    assert "processor workers replaying the log" in help_of(["rebuild"])
    assert "any ClickHouse output format" in help_of(["sql"])
    assert "share of events delivered twice" in help_of(["simulate"])
    assert "records a consumer group may be behind" in help_of(["status"])
    refused = runner.invoke(app, ["rebuild", "--processors", "0"])
    assert refused.exit_code == 2 and "--processors" in refused.output
