"""README.md's command reference matches the CLI: every command and option it names exists,
and every option of every command is named there (so the docs cannot drift from --help)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer

from persona_export.cli import app

README = Path(__file__).resolve().parent.parent / "README.md"


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


@pytest.fixture(scope="module")
def reference() -> str:
    return _section(README.read_text(encoding="utf-8"), "Command reference")


@pytest.fixture(scope="module")
def commands() -> dict[str, Any]:
    """name -> command (typer ships its own click, so commands are duck-typed here)."""
    return dict(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def _options(command: Any) -> list[Any]:
    return [p for p in command.params if p.param_type_name == "option" and p.opts[0] != "--help"]


def _option_lines(reference: str) -> dict[str, str]:
    """command -> its line in the per-command option list."""
    lines = re.findall(r"^- `(\w+)(.*)`$", reference, flags=re.MULTILINE)
    return {name: rest for name, rest in lines}


def _common(reference: str) -> set[str]:
    common = reference[reference.index("Common options:") : reference.index("| command |")]
    return set(re.findall(r"--[a-z][a-z0-9-]*", common))


def test_command_table_lists_every_command_with_its_help(
    reference: str, commands: dict[str, Any]
) -> None:
    rows = dict(re.findall(r"^\| `(\w+)` \| (.+) \|$", reference, flags=re.MULTILINE))
    assert list(rows) == list(commands)
    for name, command in commands.items():
        assert rows[name] == command.get_short_help_str(limit=1000), name


def test_every_option_named_exists_and_every_option_is_named(
    reference: str, commands: dict[str, Any]
) -> None:
    lines = _option_lines(reference)
    assert set(lines) == set(commands)
    common = _common(reference)
    for name, command in commands.items():
        declared = {opt for param in _options(command) for opt in param.opts}
        named = set(re.findall(r"--[a-z][a-z0-9-]*", lines[name]))
        assert named <= declared, f"{name}: README names {sorted(named - declared)}"
        # every option has its preferred (first) spelling in the line or among the common ones
        for param in _options(command):
            assert param.opts[0] in named | common, f"{name}: {param.opts[0]} missing"
    for opt in common:
        assert any(opt in p.opts for c in commands.values() for p in c.params), (
            f"common option {opt} belongs to no command"
        )
