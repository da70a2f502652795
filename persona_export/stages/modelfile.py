"""The modelfile stage: a quantized GGUF + the persona's definition -> its Ollama Modelfile.

``gguf_models/<persona>/Modelfile`` gets:

* ``FROM ./<persona>-<QUANT>.gguf`` (relative to the Modelfile; the file must exist, or
  Ollama would take the path for a model name and try to pull it);
* ``TEMPLATE``: the Go template of the model's chat format, detected from the tokenizer's own
  chat template (merged_models/<persona>/ first, else the GGUF's ``tokenizer.chat_template``)
  by rendering a placeholder conversation, tool-capable when the model's own template renders
  tools; or the one given with ``--template``. A chat template no shipped format recognises
  gives no TEMPLATE: Ollama >= 0.30 renders the GGUF's own template through llama-server;
* ``PARAMETER stop``: the model's end-of-sequence tokens, then the format's turn markers (the
  ones the model's template writes, for an unrecognised one);
* the persona's other ``PARAMETER``s and ``SYSTEM`` (templates/personas.toml and the user's
  persona files), and ``LICENSE`` when the merged folder carries one.

The header comment says which template Ollama >= 0.30 will use and which capabilities it
will list (:func:`~persona_export.ollama.template_choice.ollama_choice` on the TEMPLATE and
the GGUF's chat template).

The stage only orchestrates: it detects the template, chooses the stops, reads the persona
and writes the file with its manifest. The text comes from
:class:`~persona_export.ollama.modelfile.Modelfile` (``templates/Modelfile.j2``; every value
quoted so that Ollama's parser reads back exactly the text meant, and the text parsed back
before it replaces the old file).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export import console
from persona_export.artifacts import (
    Artifact,
    known_records,
    manifest_path_for,
    persona_lock,
    sha256_bytes,
)
from persona_export.errors import InputNotFoundError, UsageError
from persona_export.hf.chat_formats import TEMPLATE_HINT, load_formats
from persona_export.hf.template_limits import size_problem
from persona_export.layout import DEFAULT_QUANT
from persona_export.ollama.modelfile import Header, Modelfile, license_text
from persona_export.ollama.template_choice import OllamaChoice, ollama_choice
from persona_export.ollama.templates import ChosenTemplate, choose_template, tokenizer_facts
from persona_export.personas import Persona, find_persona, persona_files
from persona_export.resources import templates_dir
from persona_export.stages.base import StageConfig, StageResult, Status

STAGE = "modelfile"
LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE")


@dataclass(frozen=True)
class ModelfileConfig(StageConfig):
    """What to write: which quantized GGUF, and optional overrides.

    ``template``: a Go template file to use as TEMPLATE instead of detecting the format, or
    the name of a shipped format (``chatml``, ``phi3``, ...). ``stops``: extra stop strings.
    ``personas_file``: a user persona file read after the shipped one and ./personas.toml.
    """

    quant: str = DEFAULT_QUANT
    template: str | None = None
    stops: tuple[str, ...] = ()
    personas_file: Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.template is not None and Path(self.template).is_file():
            problem = size_problem(Path(self.template).stat().st_size)
            if problem:  # refused before it is read (a 200 MB file took 2.6 GB)
                raise UsageError(f"--template {self.template} {problem}", TEMPLATE_HINT)


@dataclass(frozen=True)
class ModelfileResult(StageResult):
    """What was written (or found up to date)."""

    modelfile: Path
    gguf: Path
    model_name: str
    format_name: str
    stops: tuple[str, ...]
    parameters: dict[str, Any]
    system: str | None
    license_file: Path | None
    ollama: OllamaChoice


def _dedupe(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i for i in items if i))


def _license(merged: Path) -> tuple[Path | None, str | None, list[str]]:
    """The merged folder's license file, its text as a LICENSE can hold it, and warnings."""
    path = next((merged / n for n in LICENSE_FILES if (merged / n).is_file()), None)
    if path is None:
        return None, None, []
    text, warnings = license_text(path)
    return (path if text is not None else None), text, warnings


def run(config: ModelfileConfig) -> ModelfileResult:
    """Write ``gguf_models/<persona>/Modelfile`` for ``config``; return what it holds.

    Raises :class:`InputNotFoundError` when the quantized GGUF is missing,
    :class:`UnsupportedError` when the chat format is unknown (pass ``--template``), and
    :class:`UsageError` for persona definitions or text a Modelfile cannot hold.
    """
    started = time.monotonic()
    persona, layout = config.persona, config.layout
    with persona_lock(layout.lock_file(persona), on_wait=console.info):
        from persona_export.stages.quantize_auto import resolve_types

        # AUTO: the type `quantize --type auto` chose
        (quant,) = resolve_types(layout, persona, [config.quant])
        gguf = layout.gguf(persona, quant)
        if not gguf.is_file():
            raise InputNotFoundError(
                f"{gguf} not found: the Modelfile's FROM must name an existing GGUF "
                "(Ollama would otherwise try to pull a model by that name)",
                f"run `persona-export quantize --persona {persona} --type {quant}` first "
                f"(or `make persona={persona} quantize`)",
            )
        planned = _plan(config, quant, gguf)
        for note in planned.notes:
            console.info(note)
        for message in planned.warnings:
            console.warn(message)
        artifact = planned.artifact
        artifact.clean_temporaries()  # an interrupted run's, whether or not this one writes
        up_to_date = artifact.fresh(force=config.force) and (
            artifact.path.read_bytes() == planned.payload
        )
        if not up_to_date:
            with artifact.write() as writing:
                writing.tmp.write_bytes(planned.payload)
                writing.record(
                    artifact.hash_inputs().result(),
                    extra={
                        "format": planned.chosen.format_name,
                        "model_name": planned.definition.ollama_name,
                        "stops": list(planned.stops),
                        "ollama": planned.ollama.to_json(),
                    },
                )
    return ModelfileResult(
        stage=STAGE,
        persona=persona,
        status=Status.UP_TO_DATE if up_to_date else Status.DONE,
        outputs=(artifact.path,),
        figures={
            "format": planned.chosen.format_name,
            "stops": list(planned.stops),
            "ollama": planned.ollama.to_json(),
        },
        warnings=tuple(planned.warnings),
        notes=tuple(planned.notes),
        seconds=time.monotonic() - started,
        detail=(
            f"{planned.chosen.format_name} format, {len(planned.stops)} stops, FROM {gguf.name}; "
            f"Ollama >= 0.30 uses the {planned.ollama.path} template "
            f"({', '.join(planned.ollama.capabilities)})"
        ),
        modelfile=artifact.path,
        gguf=gguf,
        model_name=planned.definition.ollama_name,
        format_name=planned.chosen.format_name,
        stops=planned.stops,
        parameters=dict(planned.definition.parameters),
        system=planned.system,
        license_file=planned.license_file,
        ollama=planned.ollama,
    )


@dataclass(frozen=True)
class _Planned:
    artifact: Artifact
    payload: bytes
    chosen: ChosenTemplate
    definition: Persona
    stops: tuple[str, ...]
    system: str | None
    license_file: Path | None
    warnings: list[str]
    notes: list[str]
    ollama: OllamaChoice


def _plan(config: ModelfileConfig, quant: str, gguf: Path) -> _Planned:
    """Everything the Modelfile says, rendered, and the artifact that records it."""
    persona, layout = config.persona, config.layout
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
    info, tokenizer_inputs = tokenizer_facts(layout, persona, gguf)
    chosen = choose_template(config.template, info, gguf, load_formats())
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
    license_file, license_body, license_warnings = _license(layout.merged(persona))
    warnings += license_warnings
    choice = ollama_choice(chosen.text, _gguf_chat_template(gguf), stops)
    notes.append(choice.summary())
    header = _header(persona, definition, quant, chosen, choice)
    try:
        text = Modelfile.build(
            f"./{gguf.name}",
            chosen.text,
            stops=stops,
            parameters=definition.parameters,
            system=system,
            license=license_body,
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
    artifact = Artifact(
        stage=STAGE,
        path=layout.modelfile(persona),
        output_name="Modelfile",
        options={
            "persona": persona,
            "quant": quant,
            "template": config.template,
            "stops": list(config.stops),
            "modelfile_sha256": sha256_bytes(payload),
        },
        inputs=inputs,
        protected=(layout.merged(persona), layout.adapter(persona)),
        # the quantize stage recorded the GGUF's hash: a multi-GB file is not read again
        known=_gguf_hint(gguf),
    )
    return _Planned(
        artifact, payload, chosen, definition, stops, system, license_file, warnings, notes, choice
    )


def _header(
    persona: str, definition: Persona, quant: str, chosen: ChosenTemplate, choice: OllamaChoice
) -> Header:
    """The Modelfile's header comment: who it is for, the chat format, what Ollama does."""
    return Header(
        persona=persona,
        display_name=definition.display_name,
        model_name=definition.ollama_name,
        quant=quant,
        format_title=chosen.title,
        template_source=chosen.source,
        ollama=choice.summary(),
    )


def _gguf_chat_template(gguf: Path) -> str | None:
    """The chat template Ollama reads from the GGUF (``tokenizer.chat_template``)."""
    from persona_export.llamacpp.gguf_file import read_gguf_metadata

    value = read_gguf_metadata(gguf).get("tokenizer.chat_template")
    return value if isinstance(value, str) and value else None


def _gguf_hint(gguf: Path) -> dict[str, Any]:
    recorded = known_records(manifest_path_for(gguf), "outputs").get("gguf")
    return {"gguf": recorded} if recorded else {}
