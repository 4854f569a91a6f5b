"""Every command's --help shows every option's help text and docstring in full.

Help strings are rendered as Rich markup, so an unescaped ``[id]`` silently disappears.
"""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from plcli.cli import app


def _commands(cmd, path: tuple[str, ...] = ()):
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))


def _plain(text: str) -> str:
    """What Rich shows for a help string: escaped brackets unescaped, whitespace collapsed."""
    return " ".join(text.replace("\\[", "[").split())


def _shown(output: str) -> str:
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


@pytest.mark.parametrize("path, cmd", COMMANDS, ids=[" ".join(p) or "plcli" for p, _ in COMMANDS])
def test_help_shows_every_help_text(path, cmd):
    res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "300", "TERMINAL_WIDTH": "300"})
    assert res.exit_code == 0, res.output
    shown = _shown(res.output)
    texts = [p.help for p in cmd.params if getattr(p, "help", None)]
    if cmd.help:
        texts += [para for para in cmd.help.split("\n\n") if para.strip()]
    assert texts
    for text in texts:
        assert _plain(text) in shown, f"{' '.join(path)} --help lost part of: {text!r}"


def test_from_chat_help_keeps_optional_columns():
    res = CliRunner().invoke(app, ["data", "from-chat", "--help"], env={"COLUMNS": "300"})
    assert "audio, timestamp, [id], [author]" in _shown(res.output)
