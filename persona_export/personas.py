"""Persona definitions: system prompt, display name, Ollama model name and parameters.

Personas are data in TOML files, read in this order (a later file's definition of a persona
replaces an earlier one entirely):

1. ``templates/personas.toml`` shipped with persona-export;
2. ``personas.toml`` in the current working directory, when there is one;
3. the file given with ``--personas FILE`` (it must exist).

Each persona is a table ``[personas.<name>]`` with ``system`` (the SYSTEM prompt),
``display_name``, ``ollama_name`` (``name[:tag]``), ``verify_prompts`` (questions that bring
out the persona: verify and ``quantize --type auto`` ask them in addition to
templates/verify_prompts.toml) and a ``[personas.<name>.parameters]`` table of Ollama
parameters (temperature, top_p, num_ctx, ...), all optional.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_export.errors import InputNotFoundError, UsageError
from persona_export.layout import check_persona
from persona_export.ollama.rules import check_model_name, check_parameters, default_model_name
from persona_export.resources import templates_dir
from persona_export.toml_files import read_toml

USER_FILE_NAME = "personas.toml"
_FIELDS = {"system", "display_name", "ollama_name", "parameters", "verify_prompts"}


@dataclass(frozen=True)
class Persona:
    """One persona's definition (``defined_in`` is None for a persona without one)."""

    name: str
    display_name: str
    ollama_name: str
    system: str | None
    parameters: dict[str, Any] = field(default_factory=dict)
    stops: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    defined_in: Path | None = None
    verify_prompts: tuple[str, ...] = ()


def persona_files(user_file: Path | None, cwd: Path | None = None) -> list[Path]:
    """The persona files to read, in order (see the module docstring)."""
    files = [templates_dir() / USER_FILE_NAME]
    local = (cwd or Path.cwd()) / USER_FILE_NAME
    if local.is_file() and local.resolve() != files[0].resolve():
        files.append(local)
    if user_file is not None:
        if not user_file.is_file():
            raise InputNotFoundError(
                f"personas file {user_file} not found",
                "pass an existing TOML file to --personas (see templates/personas.toml)",
            )
        if all(user_file.resolve() != f.resolve() for f in files):
            files.append(user_file)
    return files


def _read_table(path: Path) -> dict[str, Any]:
    data = read_toml(path, "personas")
    unknown = set(data) - {"personas"}
    if unknown:
        raise UsageError(
            f"{path}: unknown top-level key(s) {sorted(unknown)}",
            "define each persona as a [personas.<name>] table",
        )
    personas = data.get("personas", {})
    if not isinstance(personas, dict):
        raise UsageError(f"{path}: 'personas' must be a table of [personas.<name>] tables")
    return personas


def _single_line(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or "\n" in value or "\r" in value:
        raise UsageError(f"{where}: {key!r} must be a non-empty single-line string")
    control = next((c for c in value if _is_control(c)), None)
    if control is not None:
        raise UsageError(
            f"{where}: {key!r} holds the control character {control!r}",
            "names are shown in the Modelfile and by Ollama: use printable characters",
        )
    return value


def _is_control(char: str) -> bool:
    """C0/C1 controls, line and paragraph separators, and the bidirectional overrides that
    make a name display as something else (emoji joiners and the like stay allowed)."""
    return unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI_CONTROLS


_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def _parse_persona(name: str, table: Any, path: Path) -> Persona:
    where = f"{path} [personas.{name}]"
    if not isinstance(table, dict):
        raise UsageError(f"{where} must be a table")
    unknown = set(table) - _FIELDS
    if unknown:
        raise UsageError(
            f"{where}: unknown key(s) {sorted(unknown)}",
            "allowed keys: " + ", ".join(sorted(_FIELDS)),
        )
    check_persona(name)
    system = table.get("system")
    if system is not None and not isinstance(system, str):
        raise UsageError(f"{where}: 'system' must be a string")
    display_name = _single_line(table.get("display_name", name), "display_name", where)
    ollama_name = table.get("ollama_name", default_model_name(name))
    if not isinstance(ollama_name, str):
        raise UsageError(f"{where}: 'ollama_name' must be a string")
    try:
        check_model_name(ollama_name)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc.message}", exc.hint) from exc
    params = table.get("parameters", {})
    if not isinstance(params, dict):
        raise UsageError(f"{where}: 'parameters' must be a table")
    checked, stops, warnings = check_parameters(params, where=f"{where}.parameters")
    prompts = table.get("verify_prompts", [])
    if not isinstance(prompts, list) or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise UsageError(
            f"{where}: 'verify_prompts' must be a list of non-empty strings (questions)",
            'e.g. verify_prompts = ["What is a variable?", "Tell me about yourself."]',
        )
    return Persona(
        name=name,
        display_name=display_name,
        ollama_name=ollama_name,
        system=system,
        parameters=checked,
        stops=tuple(stops),
        warnings=tuple(warnings),
        defined_in=path,
        verify_prompts=tuple(prompts),
    )


def load_personas(files: list[Path]) -> dict[str, Persona]:
    """Every persona defined in ``files`` (later files win), checked."""
    personas: dict[str, Persona] = {}
    for path in files:
        for name, table in _read_table(path).items():
            personas[name] = _parse_persona(name, table, path)
    return personas


def find_persona(name: str, *, user_file: Path | None = None, cwd: Path | None = None) -> Persona:
    """The definition of ``name``; a persona nobody defined gets an empty one (no SYSTEM,
    no parameters, ``defined_in`` None) so that it still exports."""
    files = persona_files(user_file, cwd)
    known = load_personas(files)
    if name in known:
        return known[name]
    return Persona(
        name=name,
        display_name=name,
        ollama_name=default_model_name(name),
        system=None,
    )
