"""The modelfile stage: a quantized GGUF + the persona's definition -> its Ollama Modelfile.

``gguf_models/<persona>/Modelfile`` gets:

* ``FROM ./<persona>-<QUANT>.gguf`` (relative to the Modelfile; the file must exist, or
  Ollama would take the path for a model name and try to pull it);
* ``TEMPLATE``: the Go template of the model's chat format, detected from the tokenizer's own
  chat template (merged_models/<persona>/ first, else the GGUF's ``tokenizer.chat_template``)
  by rendering a placeholder conversation; or the one given with ``--template``;
* ``PARAMETER stop``: the model's end-of-sequence tokens, then the format's turn markers;
* the persona's other ``PARAMETER``s and ``SYSTEM`` (templates/personas.toml and the user's
  persona files), and ``LICENSE`` when the merged folder carries one.

The stage only orchestrates: it detects the template, chooses the stops, reads the persona
and writes the file with its manifest. The text comes from
:class:`~persona_export.ollama.modelfile.Modelfile` (``templates/Modelfile.j2``; every value
quoted so that Ollama's parser reads back exactly the text meant, and the text parsed back
before it replaces the old file).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_export.artifacts import (
    FileRecord,
    Manifest,
    atomic_file,
    is_fresh,
    manifest_path_for,
    read_json,
    record_file,
    write_json_atomic,
)
from persona_export.errors import InputNotFoundError, UnsupportedError, UsageError
from persona_export.hf.chat_formats import (
    TEMPLATE_HINT,
    ChatFormat,
    detect_format,
    load_formats,
    templates_dir,
)
from persona_export.hf.tokenizer import TokenizerInfo, from_gguf, from_hf_folder, gguf_adds_bos
from persona_export.layout import Layout, check_persona
from persona_export.ollama.modelfile import Header, Modelfile
from persona_export.ollama.modelfile_syntax import ModelfileSyntaxError, quote, unwritable_char
from persona_export.personas import Persona, find_persona, persona_files

STAGE = "modelfile"
LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE")
# Tokenizer files whose content decides the TEMPLATE and stops (recorded in the manifest).
TOKENIZER_FILES = (
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "special_tokens_map.json",
    "generation_config.json",
    "config.json",
)


@dataclass(frozen=True)
class ModelfileConfig:
    """What to write: the persona, which quantized GGUF, and optional overrides.

    ``template``: a Go template file to use as TEMPLATE instead of detecting the format, or
    the name of a shipped format (``chatml``, ``phi3``, ...). ``stops``: extra stop strings.
    ``personas_file``: a user persona file read after the shipped one and ./personas.toml.
    """

    persona: str
    quant: str = "Q4_K_M"
    layout: Layout = field(default_factory=Layout)
    template: str | None = None
    stops: tuple[str, ...] = ()
    personas_file: Path | None = None
    force: bool = False


@dataclass(frozen=True)
class ModelfileResult:
    """What was written (or found up to date)."""

    modelfile: Path
    gguf: Path
    model_name: str
    format_name: str
    stops: tuple[str, ...]
    parameters: dict[str, Any]
    system: str | None
    license_file: Path | None
    up_to_date: bool
    warnings: tuple[str, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class _Template:
    text: str
    format_name: str
    title: str
    stops: tuple[str, ...]
    source: str
    default_system: str | None
    notes: tuple[str, ...]
    warnings: tuple[str, ...]
    inputs: dict[str, Path]


def _tokenizer(layout: Layout, persona: str, gguf: Path) -> tuple[TokenizerInfo, dict[str, Path]]:
    merged = layout.merged(persona)
    if (merged / "tokenizer_config.json").is_file():
        inputs = {f"merged/{n}": merged / n for n in TOKENIZER_FILES if (merged / n).is_file()}
        return from_hf_folder(merged), inputs
    return from_gguf(gguf), {}


def _custom_template(path: Path) -> _Template:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputNotFoundError(f"cannot read template file {path}: {exc}") from exc
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise UsageError(f"template file {path} is empty", TEMPLATE_HINT)
    warnings: tuple[str, ...] = ()
    if ".Messages" not in text and ".Prompt" not in text:
        warnings = (f"{path} uses neither .Messages nor .Prompt: Ollama will not insert the chat",)
    return _Template(
        text=text,
        format_name="custom",
        title=f"custom template {path.name}",
        stops=(),
        source=str(path),
        default_system=None,
        notes=(),
        warnings=warnings,
        inputs={"template": path},
    )


def _detected_template(
    info: TokenizerInfo, gguf: Path, formats: list[ChatFormat], forced: ChatFormat | None
) -> _Template:
    if forced is not None:
        fmt, default_system, emits_bos = forced, None, False
        notes = [f"chat format {fmt.name} chosen with --template (not detected)"]
    else:
        if not info.chat_template:
            raise UnsupportedError(
                f"{info.template_source} has no chat template, so the chat format cannot be "
                "detected",
                TEMPLATE_HINT
                + "; or --template FORMAT with one of: "
                + ", ".join(f.name for f in formats),
            )
        found = detect_format(
            info.chat_template,
            special_tokens=info.special_tokens,
            formats=formats,
            source=info.template_source,
        )
        fmt, default_system, emits_bos = found.format, found.default_system, found.emits_bos
        notes = [f"chat format: {fmt.title} (detected from {info.template_source})"]
        if found.system_refused:
            notes.append("the model's own template refuses system messages")
    warnings: list[str] = []
    text = fmt.template
    bos = info.special_tokens.get("bos_token", "")
    runtime_adds_bos = gguf_adds_bos(gguf)
    if emits_bos and runtime_adds_bos is False:
        # llama.cpp will not add BOS, so the TEMPLATE writes it (with special-token parsing
        # llama.cpp reads the token's text back as the BOS token).
        text = bos + text
        notes.append(f"the TEMPLATE starts with {bos} (the GGUF does not add BOS itself)")
    elif emits_bos and runtime_adds_bos is None:
        warnings.append(
            f"the chat template starts with {bos} but {gguf.name} does not say whether "
            "llama.cpp adds BOS; assuming it does"
        )
    elif not emits_bos and runtime_adds_bos and forced is None:
        warnings.append(
            f"llama.cpp adds {bos or 'BOS'} for {gguf.name} but the model's chat template does "
            "not start with it: Ollama's prompts will begin with a token the chat template has not"
        )
    if fmt.system_note:
        notes.append(fmt.system_note)
    return _Template(
        text=text,
        format_name=fmt.name,
        title=fmt.title,
        stops=fmt.stop,
        source=info.template_source,
        default_system=default_system,
        notes=tuple(notes),
        warnings=tuple(warnings),
        inputs={"format": fmt.source},
    )


def _choose_template(
    config: ModelfileConfig, info: TokenizerInfo, gguf: Path, formats: list[ChatFormat]
) -> _Template:
    if config.template is None:
        return _detected_template(info, gguf, formats, None)
    by_name = {f.name: f for f in formats}
    path = Path(config.template)
    if path.is_file():
        return _custom_template(path)
    if config.template in by_name:
        return _detected_template(info, gguf, formats, by_name[config.template])
    raise InputNotFoundError(
        f"--template {config.template}: no such file, and not a known chat format",
        "pass a Go template file, or one of: " + ", ".join(sorted(by_name)),
    )


def _dedupe(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i for i in items if i))


def _license(merged: Path) -> tuple[Path | None, str | None, list[str]]:
    for name in LICENSE_FILES:
        path = merged / name
        if path.is_file():
            break
    else:
        return None, None, []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return None, None, [f"cannot read {path} ({exc}); the Modelfile has no LICENSE"]
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    warnings: list[str] = []
    if unwritable_char(text) is not None:
        # Ollama would drop these characters anyway (form feeds in old license texts).
        text = "".join(c for c in text if unwritable_char(c) is None)
        warnings.append(f"{path}: characters Ollama cannot store were left out of LICENSE")
    try:
        quote(text, what="LICENSE")
    except ModelfileSyntaxError as exc:
        return None, None, [*warnings, f"{exc.message}; the Modelfile has no LICENSE"]
    return path, text, warnings


def _gguf_record(gguf: Path) -> FileRecord:
    # The quantize stage's manifest already holds the GGUF's hash: reuse it when the file is
    # unchanged, so a multi-GB file is not read again.
    known = None
    outputs = (read_json(manifest_path_for(gguf)) or {}).get("outputs") or {}
    st = gguf.stat()
    for record in outputs.values():
        if (
            isinstance(record, dict)
            and record.get("size") == st.st_size
            and record.get("mtime_ns") == st.st_mtime_ns
        ):
            known = record
            break
    return record_file(gguf, known)


def write_modelfile(config: ModelfileConfig) -> ModelfileResult:
    """Write ``gguf_models/<persona>/Modelfile`` for ``config``; return what it holds.

    Raises :class:`InputNotFoundError` when the quantized GGUF is missing,
    :class:`UnsupportedError` when the chat format is unknown (pass ``--template``), and
    :class:`UsageError` for persona definitions or text a Modelfile cannot hold.
    """
    started = time.monotonic()
    persona = check_persona(config.persona)
    layout = config.layout
    quant = config.quant.upper()
    gguf = layout.gguf(persona, quant)
    modelfile = layout.modelfile(persona)
    if not gguf.is_file():
        raise InputNotFoundError(
            f"{gguf} not found: the Modelfile's FROM must name an existing GGUF "
            "(Ollama would otherwise try to pull a model by that name)",
            f"run `persona-export quantize --persona {persona} --type {quant}` first "
            f"(or `make persona={persona} quantize`)",
        )

    warnings: list[str] = []
    notes: list[str] = []
    files = persona_files(config.personas_file)
    definition: Persona = find_persona(persona, user_file=config.personas_file)
    warnings += definition.warnings
    if definition.defined_in is None:
        warnings.append(
            f"persona {persona!r} has no definition in {', '.join(str(f) for f in files)}: "
            "the Modelfile gets no SYSTEM prompt and no parameters (add a "
            f"[personas.{persona}] table to ./personas.toml to give it one)"
        )

    info, tokenizer_inputs = _tokenizer(layout, persona, gguf)
    chosen = _choose_template(config, info, gguf, load_formats())
    warnings += chosen.warnings
    notes += chosen.notes

    stops = _dedupe([*info.eos_tokens, *chosen.stops, *definition.stops, *config.stops])
    if not stops:
        warnings.append("no stop strings: the model may not stop at the end of its turn")
    system = definition.system
    if system is None and chosen.default_system is not None:
        system = chosen.default_system
        notes.append(
            "the model's chat template adds a default system prompt when there is none; "
            f"it is written as SYSTEM: {chosen.default_system!r}"
        )
    license_file, license_text, license_warnings = _license(layout.merged(persona))
    warnings += license_warnings

    header = Header(
        persona=persona,
        display_name=definition.display_name,
        model_name=definition.ollama_name,
        quant=quant,
        format_title=chosen.title,
        template_source=chosen.source,
    )
    try:
        text = Modelfile.build(
            f"./{gguf.name}",
            chosen.text,
            stops=stops,
            parameters=definition.parameters,
            system=system,
            license=license_text,
        ).render(header)
    except UsageError as exc:
        raise UsageError(f"persona {persona!r}: {exc.message}", exc.hint) from exc
    payload = text.encode("utf-8")

    inputs: dict[str, Path] = {
        "gguf": gguf,
        "Modelfile.j2": templates_dir() / "Modelfile.j2",
        **tokenizer_inputs,
        **chosen.inputs,
        **{f"personas/{i}": f for i, f in enumerate(files)},
    }
    if license_file is not None:
        inputs["license"] = license_file
    options = {
        "persona": persona,
        "quant": quant,
        "template": config.template,
        "stops": list(config.stops),
        "modelfile_sha256": _sha256(payload),
    }
    manifest_file = manifest_path_for(modelfile)
    up_to_date = (
        not config.force
        and modelfile.is_file()
        and modelfile.read_bytes() == payload
        and is_fresh(
            manifest_file, options=options, inputs=inputs, outputs={"Modelfile": modelfile}
        )
    )
    if not up_to_date:
        input_records = {
            name: (_gguf_record(path) if name == "gguf" else record_file(path))
            for name, path in inputs.items()
        }
        with atomic_file(modelfile) as tmp:
            tmp.write_bytes(payload)
        manifest = Manifest(
            stage=STAGE,
            options=options,
            inputs=input_records,
            outputs={"Modelfile": record_file(modelfile)},
            seconds=time.monotonic() - started,
            extra={
                "format": chosen.format_name,
                "model_name": definition.ollama_name,
                "stops": list(stops),
            },
        )
        write_json_atomic(manifest_file, manifest.to_json())
    return ModelfileResult(
        modelfile=modelfile,
        gguf=gguf,
        model_name=definition.ollama_name,
        format_name=chosen.format_name,
        stops=stops,
        parameters=dict(definition.parameters),
        system=system,
        license_file=license_file,
        up_to_date=up_to_date,
        warnings=tuple(warnings),
        notes=tuple(notes),
    )


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
