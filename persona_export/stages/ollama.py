"""The ollama stage: register a persona's Modelfile with Ollama.

Three ways, tried in order (the mechanics are in :mod:`persona_export.ollama.registry`):

1. the ``ollama`` CLI on PATH: ``ollama create NAME -f gguf_models/<persona>/Modelfile``;
2. the REST API at ``OLLAMA_HOST``: the GGUF uploaded as a blob by its sha256, then
   ``/api/create`` with the Modelfile read exactly as Ollama's own parser reads it;
3. neither: the result says so and gives the exact command to run later (an error only with
   ``require``).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path

from persona_export.artifacts import manifest_path_for, read_json
from persona_export.errors import InputNotFoundError, ToolMissingError
from persona_export.ollama import registry
from persona_export.ollama.modelfile import Modelfile
from persona_export.ollama.rules import check_model_name
from persona_export.personas import find_persona
from persona_export.stages.base import StageConfig, StageResult, Status

STAGE = "ollama"
HOST_VAR = registry.HOST_VAR


@dataclass(frozen=True)
class OllamaConfig(StageConfig):
    """Which persona to register, under which name (default: the name the modelfile stage
    recorded, else the persona's ``ollama_name``).

    ``ollama_exe`` and ``host`` override the PATH lookup and ``$OLLAMA_HOST``; ``require``
    makes a missing Ollama an error.
    """

    _: KW_ONLY
    model_name: str | None = None
    personas_file: Path | None = None
    require: bool = False
    ollama_exe: str | None = None
    host: str | None = None


@dataclass(frozen=True)
class OllamaResult(StageResult):
    """How the model was registered: ``method`` is ``cli``, ``api`` or ``none`` (nothing
    there to register with; ``command`` is what to run later)."""

    _: KW_ONLY
    model_name: str = ""
    method: str = "none"
    modelfile: Path | None = None
    command: tuple[str, ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)
    output: str = ""


def _recorded_name(modelfile: Path) -> str | None:
    """The model name the modelfile stage wrote into the Modelfile's manifest."""
    name = (read_json(manifest_path_for(modelfile)) or {}).get("model_name")
    return name if isinstance(name, str) and name else None


def register(config: OllamaConfig) -> OllamaResult:
    """Register the persona's Modelfile with Ollama (see the module docstring).

    Status ``done`` when registered, ``not run`` when Ollama is absent (and not required).
    Raises :class:`InputNotFoundError` when the Modelfile is missing, :class:`UsageError`
    for an invalid model name, :class:`ExternalToolError` when Ollama fails, and
    :class:`ToolMissingError` when Ollama is absent and ``require`` is set.
    """
    started = time.monotonic()
    persona = config.persona
    path = config.layout.modelfile(persona)
    if not path.is_file():
        raise InputNotFoundError(
            f"{path} not found",
            f"run `persona-export modelfile --persona {persona}` first "
            f"(or `make persona={persona} modelfile`)",
        )
    name = config.model_name or _recorded_name(path)
    if not name:
        name = find_persona(persona, user_file=config.personas_file).ollama_name
    check_model_name(name)
    modelfile = Modelfile.read(path)
    later = ("ollama", "create", name, "-f", str(path))

    def result(
        status: Status,
        method: str,
        detail: str,
        *,
        command: tuple[str, ...] = later,
        files: Mapping[str, str] | None = None,
        output: str = "",
    ) -> OllamaResult:
        return OllamaResult(
            STAGE,
            persona,
            status,
            model_name=name,
            method=method,
            modelfile=path,
            command=command,
            files=dict(files or {}),
            output=output,
            detail=detail,
            figures={"model_name": name, "method": method},
            seconds=time.monotonic() - started,
        )

    exe = registry.find_cli(config.ollama_exe)
    if exe:
        output = registry.create_with_cli(exe, name, path)
        return result(
            Status.DONE,
            "cli",
            f"registered as {name} (cli)",
            command=(exe, *later[1:]),
            output=output,
        )

    host = registry.configured_host(config.host)
    if host:
        created = registry.create_with_api(host, name, modelfile, modelfile.require_gguf())
        return result(
            Status.DONE,
            "api",
            f"registered as {name} (api)",
            files=created.files,
            output=created.status,
        )

    if config.require:
        raise ToolMissingError(
            "Ollama is not available: no `ollama` on PATH and OLLAMA_HOST is not set",
            f"install Ollama (https://ollama.com) or set OLLAMA_HOST, then run: {shlex.join(later)}",
        )
    return result(
        Status.NOT_RUN,
        "none",
        f"Ollama not found; register later with: {shlex.join(later)}",
    )
