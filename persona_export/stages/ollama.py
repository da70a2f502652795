"""The ollama stage: register a persona's Modelfile with Ollama.

Three ways, tried in order:

1. the ``ollama`` CLI on PATH: ``ollama create NAME -f gguf_models/<persona>/Modelfile``;
2. the REST API at ``OLLAMA_HOST`` through the official ``ollama`` Python client: the GGUF is
   uploaded as a blob by its sha256 (``POST /api/blobs/sha256:<hex>``), then ``POST
   /api/create`` sends the file name, TEMPLATE, SYSTEM, parameters (stop as a list) and
   LICENSE, read from the Modelfile exactly as Ollama's own parser reads it;
3. neither: say so and give the exact command to run later (an error only with ``require``).
"""

from __future__ import annotations

import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_export.artifacts import manifest_path_for, read_json
from persona_export.errors import (
    ExternalToolError,
    InputNotFoundError,
    InvalidInputError,
    ToolMissingError,
)
from persona_export.layout import Layout, check_persona
from persona_export.ollama.modelfile_syntax import Command, parse
from persona_export.ollama.rules import PARAMETER_TYPES, check_model_name
from persona_export.personas import find_persona
from persona_export.proc import run

HOST_VAR = "OLLAMA_HOST"


@dataclass(frozen=True)
class OllamaConfig:
    """Which persona to register, under which name (default: the name the modelfile stage
    recorded, else the persona's ``ollama_name``).

    ``ollama_exe`` and ``host`` override the PATH lookup and ``$OLLAMA_HOST``; ``require``
    makes a missing Ollama an error.
    """

    persona: str
    model_name: str | None = None
    layout: Layout = field(default_factory=Layout)
    personas_file: Path | None = None
    require: bool = False
    ollama_exe: str | None = None
    host: str | None = None


@dataclass(frozen=True)
class OllamaResult:
    """How the model was registered: ``method`` is ``cli``, ``api`` or ``none`` (nothing
    there to register with; ``command`` is what to run later)."""

    model_name: str
    method: str
    modelfile: Path
    command: tuple[str, ...]
    files: dict[str, str]
    output: str


@dataclass(frozen=True)
class CreateRequest:
    """What ``POST /api/create`` receives for a Modelfile (Ollama's CreateRequest)."""

    gguf: Path
    template: str | None
    system: str | None
    parameters: dict[str, Any]
    license: list[str]
    messages: list[dict[str, str]]


def _typed(name: str, text: str) -> Any:
    kind = PARAMETER_TYPES.get(name)
    try:
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is bool:
            return {"true": True, "false": False, "1": True, "0": False}[text.lower()]
    except (ValueError, KeyError) as exc:
        raise InvalidInputError(f"Modelfile: invalid value {text!r} for parameter {name}") from exc
    if kind is None:
        raise InvalidInputError(
            f"Modelfile: unknown parameter {name!r}", "regenerate it: persona-export modelfile"
        )
    return text


def create_request(modelfile: Path, commands: list[Command]) -> CreateRequest:
    """Turn parsed Modelfile commands into the REST create request, as Ollama's
    ``Modelfile.CreateRequest`` does (stop values accumulate into a list)."""
    gguf: Path | None = None
    template = system = None
    parameters: dict[str, Any] = {}
    licenses: list[str] = []
    messages: list[dict[str, str]] = []
    for command in commands:
        if command.name == "model":
            path = Path(os.path.expanduser(command.args))
            gguf = path if path.is_absolute() else modelfile.parent / path
        elif command.name == "template":
            template = command.args
        elif command.name == "system":
            system = command.args
        elif command.name == "license":
            licenses.append(command.args)
        elif command.name == "message":
            role, _, content = command.args.partition(": ")
            messages.append({"role": role, "content": content})
        elif command.name in ("adapter", "draft", "requires", "renderer", "parser"):
            raise InvalidInputError(
                f"{modelfile}: {command.name.upper()} is not supported by the REST path",
                "install the ollama CLI, or remove the line",
            )
        elif command.name == "stop":
            parameters.setdefault("stop", []).append(command.args)
        else:
            parameters[command.name] = _typed(command.name, command.args)
    if gguf is None or not gguf.is_file():
        raise InputNotFoundError(
            f"{modelfile}: FROM does not name an existing GGUF file ({gguf})",
            "regenerate the Modelfile: persona-export modelfile --persona NAME",
        )
    return CreateRequest(gguf, template, system, parameters, licenses, messages)


def _via_api(host: str, name: str, request: CreateRequest) -> tuple[dict[str, str], str]:
    import httpx
    import ollama

    client = ollama.Client(host=host)
    try:
        digest = client.create_blob(request.gguf)
        files = {request.gguf.name: digest}
        response = client.create(
            model=name,
            files=files,
            template=request.template,
            system=request.system,
            parameters=request.parameters or None,
            license=request.license or None,
            messages=request.messages or None,
            stream=False,
        )
    except ollama.ResponseError as exc:
        raise ExternalToolError(
            f"Ollama at {host} refused the model: {exc.error} (HTTP {exc.status_code})",
            "check the Ollama server's log; Phi-4-mini GGUFs need Ollama 0.5.13 or newer",
        ) from exc
    except (httpx.HTTPError, ConnectionError) as exc:
        raise ExternalToolError(
            f"cannot reach Ollama at {HOST_VAR}={host}: {exc}",
            "start it with `ollama serve`, or unset OLLAMA_HOST",
        ) from exc
    return files, str(getattr(response, "status", "") or "")


def _recorded_name(modelfile: Path) -> str | None:
    """The model name the modelfile stage wrote into the Modelfile's manifest."""
    name = (read_json(manifest_path_for(modelfile)) or {}).get("model_name")
    return name if isinstance(name, str) and name else None


def register(config: OllamaConfig) -> OllamaResult:
    """Register the persona's Modelfile with Ollama (see the module docstring).

    Raises :class:`InputNotFoundError` when the Modelfile is missing, :class:`UsageError`
    for an invalid model name, :class:`ExternalToolError` when Ollama fails, and
    :class:`ToolMissingError` when Ollama is absent and ``require`` is set.
    """
    persona = check_persona(config.persona)
    modelfile = config.layout.modelfile(persona)
    if not modelfile.is_file():
        raise InputNotFoundError(
            f"{modelfile} not found",
            f"run `persona-export modelfile --persona {persona}` first "
            f"(or `make persona={persona} modelfile`)",
        )
    name = config.model_name or _recorded_name(modelfile)
    if not name:
        name = find_persona(persona, user_file=config.personas_file).ollama_name
    check_model_name(name)
    commands = parse(modelfile.read_text(encoding="utf-8"))
    later = ("ollama", "create", name, "-f", str(modelfile))

    exe = config.ollama_exe or shutil.which("ollama")
    if exe:
        done = run(
            [exe, "create", name, "-f", str(modelfile.resolve())],
            what="ollama create",
            hint="see Ollama's message above; Phi-4-mini GGUFs need Ollama 0.5.13 or newer",
        )
        return OllamaResult(name, "cli", modelfile, (exe, *later[1:]), {}, done.output)

    host = config.host if config.host is not None else os.environ.get(HOST_VAR, "")
    if host:
        request = create_request(modelfile, commands)
        files, status = _via_api(host, name, request)
        return OllamaResult(name, "api", modelfile, later, files, status)

    if config.require:
        raise ToolMissingError(
            "Ollama is not available: no `ollama` on PATH and OLLAMA_HOST is not set",
            f"install Ollama (https://ollama.com) or set OLLAMA_HOST, then run: {shlex.join(later)}",
        )
    return OllamaResult(name, "none", modelfile, later, {}, "")
