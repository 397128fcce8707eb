"""`platform --help` lists every command with its help line, and every command's own --help works."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from atomscreen.cli import build_parser

COMMANDS = ["validate", "status", "submit", "resume", "delete", "db", "train", "match", "trajectory-energies", "relax",
            "results", "hull", "export", "report"]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_top_level_help_lists_every_command_with_its_help_line():
    result = subprocess.run([sys.executable, "-m", "atomscreen", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())
    commands = _subcommands(build_parser())
    assert sorted(commands) == sorted(COMMANDS)
    for name in COMMANDS:
        assert f" {name} " in help_text
    assert "--verbose" in help_text


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_and_the_shared_options(name, capsys):
    sub = _subcommands(build_parser())[name]
    with pytest.raises(SystemExit) as stop:
        sub.parse_args(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage:")
    if name in ("submit", "resume"):
        assert all(opt in text for opt in ("--db", "--scheduler", "--dashboard-address", "--quiet"))
    elif name not in ("validate", "db"):
        assert "--db" in text


def test_db_actions_each_take_the_db_option():
    actions = _subcommands(_subcommands(build_parser())["db"])
    assert sorted(actions) == ["current", "downgrade", "upgrade"]
    for parser in actions.values():
        assert any("--db" in a.option_strings for a in parser._actions)
