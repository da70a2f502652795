"""The ollama stage: register a persona's Modelfile with Ollama.

Three ways, tried in order (the mechanics are in :mod:`persona_export.ollama.registry`):

1. the ``ollama`` CLI on PATH: ``ollama create NAME -f gguf_models/<persona>/Modelfile``;
2. the REST API at ``OLLAMA_HOST``, else at Ollama's default address when a server answers
   there: the GGUF uploaded as a blob by its sha256, then ``/api/create`` with the Modelfile
   read exactly as Ollama's own parser reads it;
3. none: the result (status ``not run``) says so and gives the exact command to run later
   (an error only with ``require``).

Only what persona-export wrote and verify passed is registered (checked before anything is
handed to Ollama, by content hashes, not size and time):

* FROM must name the persona's own GGUF, ``gguf_models/<persona>/<persona>-<TYPE>.gguf``, a
  regular file (always, even with ``force``);
* the Modelfile and that GGUF must be what the modelfile stage recorded in
  ``Modelfile.manifest.json``;
* the last verify report (``gguf_models/<persona>/verify.json``) must have passed, on exactly
  this Modelfile and GGUF.

``verify=False`` (``--no-verify``) skips the last check, ``force`` (``--force``) the last two;
the result then carries a warning that says so.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import time
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path

from persona_export.artifacts import manifest_path_for, read_json, sha256_file
from persona_export.errors import (
    InputNotFoundError,
    IntegrityError,
    InvalidInputError,
    ToolMissingError,
    VerificationError,
)
from persona_export.layout import Layout
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
    makes a missing Ollama an error. ``verify``: register only after a passing verify of this
    very Modelfile and GGUF; ``force``: register the Modelfile as it is (see the module
    docstring).
    """

    _: KW_ONLY
    model_name: str | None = None
    personas_file: Path | None = None
    require: bool = False
    verify: bool = True
    ollama_exe: str | None = None
    host: str | None = None


@dataclass(frozen=True)
class OllamaResult(StageResult):
    """How the model was registered: ``method`` is ``cli``, ``api`` or ``none`` (nothing
    there to register with; ``command`` is what to run later). For ``api``: ``host`` is the
    server's URL and ``address`` names it as the user gave it (or as Ollama's default)."""

    _: KW_ONLY
    model_name: str = ""
    method: str = "none"
    modelfile: Path | None = None
    command: tuple[str, ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)
    output: str = ""
    host: str | None = None
    address: str = ""


class NotVerifiedError(VerificationError):
    """The export has no passing verify report for what would be registered."""


def _model_name(config: OllamaConfig, modelfile: Path) -> str:
    """The name to register: given, else the one the modelfile stage recorded in the
    Modelfile's manifest, else the persona's ``ollama_name``; checked."""
    recorded = (read_json(manifest_path_for(modelfile)) or {}).get("model_name")
    name = config.model_name or (recorded if isinstance(recorded, str) else "")
    if not name:
        name = find_persona(config.persona, user_file=config.personas_file).ollama_name
    return check_model_name(name)


def _own_gguf(layout: Layout, persona: str, path: Path, modelfile: Modelfile) -> Path:
    """The GGUF FROM names, which must be the persona's own: a regular file named
    ``<persona>-<TYPE>.gguf`` in ``gguf_models/<persona>/``."""
    gguf = modelfile.gguf
    folder = layout.gguf_dir(persona)
    own_name = re.fullmatch(rf"{re.escape(persona)}-[A-Za-z0-9_]+\.gguf", gguf.name)
    if own_name is None or gguf.parent.resolve() != folder.resolve():
        raise InvalidInputError(
            f"{path}: FROM names {modelfile.from_}, which is not a GGUF of persona {persona} "
            f"({folder}/{persona}-<TYPE>.gguf); it is not registered",
            f"regenerate the Modelfile: persona-export modelfile --persona {persona}",
        )
    if gguf.is_symlink():
        raise InvalidInputError(
            f"{gguf} is a symbolic link; only the persona's own file is registered",
            f"re-run the export so that it writes the file: persona-export export --persona "
            f"{persona} --force",
        )
    return modelfile.require_gguf()


def _recorded_sha256(data: Mapping[str, object], section: str, name: str) -> object:
    records = data.get(section)
    record = records.get(name) if isinstance(records, dict) else None
    return record.get("sha256") if isinstance(record, dict) else None


def _check_manifest(persona: str, path: Path, modelfile_sha256: str, gguf: Path) -> str:
    """The Modelfile and its GGUF are what the modelfile stage recorded; returns the GGUF's
    sha256."""
    manifest_file = manifest_path_for(path)
    manifest = read_json(manifest_file)
    hint = (
        f"regenerate it: persona-export modelfile --persona {persona} "
        "(or register it as it is with --force)"
    )
    if manifest is None or manifest.get("stage") != "modelfile":
        raise IntegrityError(
            f"{path} has no manifest ({manifest_file}): persona-export did not write it; "
            "it is not registered",
            hint,
        )
    if _recorded_sha256(manifest, "outputs", "Modelfile") != modelfile_sha256:
        raise IntegrityError(
            f"{path} changed since persona-export wrote it (its content does not match "
            f"{manifest_file.name}); it is not registered",
            hint,
        )
    gguf_sha256 = sha256_file(gguf)
    if _recorded_sha256(manifest, "inputs", "gguf") != gguf_sha256:
        raise IntegrityError(
            f"{gguf} changed since the Modelfile was written (its content does not match "
            f"{manifest_file.name}); it is not registered",
            f"re-run the export: persona-export export --persona {persona} "
            "(or register it as it is with --force)",
        )
    return gguf_sha256


def _check_verified(
    layout: Layout, persona: str, modelfile_sha256: str, gguf: Path, gguf_sha256: str
) -> None:
    """The last verify report passed, and it verified this Modelfile and this GGUF."""
    report_file = layout.verify_report(persona)
    report = read_json(report_file)
    again = f"run `persona-export verify --persona {persona}`"
    unverified = "or pass --no-verify to register it unverified"
    if report is None:
        state = "not found" if not report_file.exists() else "unreadable"
        raise NotVerifiedError(
            f"{persona} has not been verified ({report_file} {state}); only a verified export "
            "is registered",
            f"{again} first, {unverified}",
        )
    if report.get("passed") is not True:
        raise NotVerifiedError(
            f"the last verify of {persona} failed ({report_file}); it is not registered",
            f"fix what it reported and {again} again, {unverified}",
        )
    for what, name, sha256 in (
        ("the Modelfile", "modelfile", modelfile_sha256),
        (str(gguf), f"gguf/{gguf.name}", gguf_sha256),
    ):
        if _recorded_sha256(report, "inputs", name) != sha256:
            raise NotVerifiedError(
                f"{report_file} is older than {what} (it verified other content); it is not "
                "registered",
                f"{again} again, {unverified}",
            )


def _check_trust(
    config: OllamaConfig, path: Path, data: bytes, gguf: Path
) -> tuple[str | None, tuple[str, ...]]:
    """Run the checks ``config`` asks for (module docstring); returns the GGUF's sha256
    (None when not computed) and the warnings to show."""
    if config.force:
        return None, (
            "registering without checking the Modelfile's manifest or the verify report (--force)",
        )
    modelfile_sha256 = hashlib.sha256(data).hexdigest()
    gguf_sha256 = _check_manifest(config.persona, path, modelfile_sha256, gguf)
    if not config.verify:
        return gguf_sha256, ("registering without a passing verify report (--no-verify)",)
    _check_verified(config.layout, config.persona, modelfile_sha256, gguf, gguf_sha256)
    return gguf_sha256, ()


def _unchecked(config: OllamaConfig) -> str:
    """What the summary line adds when a check was skipped on request."""
    if config.force:
        return ", not checked (--force)"
    return "" if config.verify else ", not verified (--no-verify)"


def run(config: OllamaConfig) -> OllamaResult:
    """Register the persona's Modelfile with Ollama (see the module docstring).

    Status ``done`` when registered, ``not run`` when Ollama is absent (and not required).
    Raises :class:`InputNotFoundError` when the Modelfile is missing, :class:`UsageError`
    for an invalid model name, :class:`InvalidInputError`, :class:`IntegrityError` or
    :class:`NotVerifiedError` when what would be registered fails a check,
    :class:`ExternalToolError` when Ollama fails, and :class:`ToolMissingError` when Ollama
    is absent and ``require`` is set.
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
    name = _model_name(config, path)
    data = path.read_bytes()
    modelfile = Modelfile.read(path, data)
    later = ("ollama", "create", name, "-f", str(path))
    where = registry.locate(config.ollama_exe, config.host)
    if where.method == "none":
        if config.require:
            raise ToolMissingError(
                "Ollama is not available: no `ollama` on PATH and OLLAMA_HOST is not set",
                "install Ollama (https://ollama.com) or set OLLAMA_HOST, then run: "
                f"{shlex.join(later)}",
            )
        return OllamaResult(
            STAGE,
            persona,
            Status.NOT_RUN,
            model_name=name,
            modelfile=path,
            command=later,
            detail=f"Ollama not found; register later with: {shlex.join(later)}",
            figures={"model_name": name, "method": "none"},
            seconds=time.monotonic() - started,
        )

    timeout = registry.timeout_seconds() if where.method == "api" else 0.0
    gguf = _own_gguf(config.layout, persona, path, modelfile)
    sha256, warnings = _check_trust(config, path, data, gguf)
    files: dict[str, str] = {}
    if where.exe:
        command = (where.exe, *later[1:])
        output = registry.create_with_cli(where.exe, name, path)
    else:
        command = later
        created = registry.create_with_api(
            where, name, modelfile, gguf, sha256 or sha256_file(gguf), timeout
        )
        files, output = created.files, created.status
    return OllamaResult(
        STAGE,
        persona,
        Status.DONE,
        model_name=name,
        method=where.method,
        modelfile=path,
        command=command,
        files=files,
        output=output,
        host=where.host or None,
        address=where.label,
        warnings=warnings,
        detail=f"registered as {name} ({where.method}){_unchecked(config)}",
        figures={"model_name": name, "method": where.method, "host": where.host or None},
        seconds=time.monotonic() - started,
    )


register = run  # the name callers used before the stage contract
