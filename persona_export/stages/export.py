"""The export stage: the whole chain for one or more personas.

merge -> gguf -> quantize -> modelfile -> verify -> ollama, each stage through its own entry
point, each skipping itself when its manifest says the output is up to date (so a re-run with
nothing changed takes seconds). Verify runs before the model is registered, so that an export
that fails a check never reaches Ollama. With several personas, one that fails does not stop
the others; each gets its own outcome.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from persona_export import console
from persona_export.errors import PersonaExportError, UsageError
from persona_export.layout import DEFAULT_BASE_MODEL, Layout, check_persona
from persona_export.stages.verify import DEFAULT_MAX_TOKENS, VerifyResult

STAGES = ("merge", "gguf", "quantize", "modelfile", "verify", "ollama")
DONE, UP_TO_DATE, SKIPPED, FAILED = "done", "up to date", "skipped", "failed"


@dataclass(frozen=True)
class ExportConfig:
    """Which personas to export and how.

    ``quants``: quantization types; the first is the one the Modelfile uses. ``verify``:
    run the checks (the ``verify_*`` fields are passed to it). ``model_name``: the Ollama
    name (one persona only; default: the persona's ``ollama_name``). ``force``: redo every
    stage even when up to date. ``require_ollama``: fail when Ollama is not there.
    """

    personas: tuple[str, ...]
    layout: Layout = field(default_factory=Layout)
    base_model: str = DEFAULT_BASE_MODEL
    quants: tuple[str, ...] = ("Q4_K_M",)
    outtype: str = "f16"
    personas_file: Path | None = None
    template: str | None = None
    model_name: str | None = None
    verify: bool = True
    verify_max_tokens: int = DEFAULT_MAX_TOKENS
    verify_kl_max: Mapping[str, float] = field(default_factory=dict)
    verify_prompts_file: Path | None = None
    require_ollama: bool = False
    force: bool = False


@dataclass(frozen=True)
class StageOutcome:
    """One stage of one persona: ``status`` is done, up to date, skipped or failed."""

    stage: str
    status: str
    seconds: float
    files: tuple[Path, ...] = ()
    detail: str = ""


@dataclass(frozen=True)
class PersonaExport:
    """What happened to one persona: its stages in order and, when one raised, the error
    (its message and hint are what the user should see)."""

    persona: str
    stages: tuple[StageOutcome, ...]
    verify: VerifyResult | None
    error: PersonaExportError | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None and all(s.status != FAILED for s in self.stages)


@dataclass(frozen=True)
class ExportResult:
    """One :class:`PersonaExport` per persona, in order."""

    exports: tuple[PersonaExport, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.exports)

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(e.persona for e in self.exports if not e.ok)


def _timed(stage: str, step: int) -> Callable[[], float]:
    """Announce a stage; return a function giving the seconds since."""
    console.info(f"[{step}/{len(STAGES)}] {stage}")
    started = time.monotonic()
    return lambda: time.monotonic() - started


def _dir_files(folder: Path) -> tuple[Path, ...]:
    return tuple(sorted(p for p in folder.iterdir() if p.is_file()))


def _export_one(config: ExportConfig, persona: str) -> PersonaExport:
    from persona_export.stages.gguf import GgufConfig, run_gguf
    from persona_export.stages.merge import MergeConfig, merge
    from persona_export.stages.modelfile import ModelfileConfig, write_modelfile
    from persona_export.stages.ollama import OllamaConfig, register
    from persona_export.stages.quantize import QuantizeConfig, run_quantize
    from persona_export.stages.verify import VerifyConfig, run_verify

    layout = config.layout
    started = time.monotonic()
    outcomes: list[StageOutcome] = []
    verify_result: VerifyResult | None = None
    console.info(f"exporting {persona}")
    try:
        elapsed = _timed("merge", 1)
        merged = merge(
            MergeConfig(persona, layout=layout, base_model=config.base_model, force=config.force)
        )
        outcomes.append(
            StageOutcome(
                "merge",
                UP_TO_DATE if merged.skipped else DONE,
                elapsed(),
                _dir_files(merged.merged_dir),
                f"{merged.merged_tensors} weights merged, {merged.dtype}",
            )
        )

        elapsed = _timed("gguf", 2)
        gguf = run_gguf(
            GgufConfig(persona, layout=layout, outtype=config.outtype, force=config.force)
        )
        outcomes.append(
            StageOutcome(
                "gguf",
                UP_TO_DATE if gguf.skipped else DONE,
                elapsed(),
                (gguf.gguf_path,),
                f"{gguf.file_type}, {gguf.bits_per_weight:.2f} bits/weight",
            )
        )

        elapsed = _timed("quantize", 3)
        quantized = run_quantize(
            QuantizeConfig(
                persona,
                layout=layout,
                quant_types=config.quants,
                source=gguf.file_type,
                force=config.force,
            )
        )
        outcomes.append(
            StageOutcome(
                "quantize",
                UP_TO_DATE if all(o.skipped for o in quantized.outputs) else DONE,
                elapsed(),
                tuple(o.gguf_path for o in quantized.outputs),
                ", ".join(
                    f"{o.quant_type} {o.bits_per_weight:.2f} bits/weight" for o in quantized.outputs
                ),
            )
        )

        elapsed = _timed("modelfile", 4)
        modelfile = write_modelfile(
            ModelfileConfig(
                persona,
                quant=quantized.outputs[0].quant_type,
                layout=layout,
                template=config.template,
                personas_file=config.personas_file,
                force=config.force,
            )
        )
        for message in modelfile.warnings:
            console.warn(message)
        outcomes.append(
            StageOutcome(
                "modelfile",
                UP_TO_DATE if modelfile.up_to_date else DONE,
                elapsed(),
                (modelfile.modelfile,),
                f"{modelfile.format_name} format, {len(modelfile.stops)} stops, "
                f"FROM {modelfile.gguf.name}",
            )
        )

        if config.verify:
            elapsed = _timed("verify", 5)
            verify_result = run_verify(
                VerifyConfig(
                    persona,
                    layout=layout,
                    quants=tuple(o.quant_type for o in quantized.outputs),
                    source_type=gguf.file_type,
                    base_model=config.base_model,
                    prompts_file=config.verify_prompts_file,
                    kl_max=dict(config.verify_kl_max),
                    max_tokens=config.verify_max_tokens,
                    force=config.force,
                )
            )
            counts = {
                s: sum(c.status == s for c in verify_result.checks)
                for s in ("passed", "failed", "skipped")
            }
            outcomes.append(
                StageOutcome(
                    "verify",
                    UP_TO_DATE
                    if verify_result.skipped
                    else (DONE if verify_result.passed else FAILED),
                    elapsed(),
                    (verify_result.report,),
                    ", ".join(f"{n} {s}" for s, n in counts.items() if n),
                )
            )
        else:
            outcomes.append(StageOutcome("verify", SKIPPED, 0.0, (), "--no-verify"))

        if verify_result is not None and not verify_result.passed:
            outcomes.append(
                StageOutcome("ollama", SKIPPED, 0.0, (), "not registered: verify failed")
            )
        else:
            elapsed = _timed("ollama", 6)
            registered = register(
                OllamaConfig(
                    persona,
                    model_name=config.model_name,
                    layout=layout,
                    personas_file=config.personas_file,
                    require=config.require_ollama,
                )
            )
            detail = (
                f"Ollama not found; register later with: {shlex.join(registered.command)}"
                if registered.method == "none"
                else f"registered as {registered.model_name} ({registered.method})"
            )
            status = SKIPPED if registered.method == "none" else DONE
            outcomes.append(StageOutcome("ollama", status, elapsed(), (), detail))
    except PersonaExportError as exc:
        stage = STAGES[len(outcomes)] if len(outcomes) < len(STAGES) else "export"
        outcomes.append(StageOutcome(stage, FAILED, 0.0, (), exc.message))
        return PersonaExport(
            persona, tuple(outcomes), verify_result, exc, time.monotonic() - started
        )
    return PersonaExport(persona, tuple(outcomes), verify_result, None, time.monotonic() - started)


def run_export(config: ExportConfig) -> ExportResult:
    """Export each persona in ``config.personas`` in turn; return every outcome.

    A persona whose stage raises one of the errors.py classes is recorded as failed (with
    the error) and the next persona is exported; other exceptions propagate. Raises
    UsageError for an empty persona list or a model name given for several personas.
    """
    if not config.personas:
        raise UsageError(
            f"no personas to export: no <persona>_final_adapter/ folder in "
            f"{config.layout.adapter_dir}",
            "put the adapters there or pass --adapter-dir DIR",
        )
    if config.model_name and len(config.personas) > 1:
        raise UsageError("--name applies to one persona, not to --all")
    if not config.quants:
        raise UsageError("give at least one quantization type", "e.g. --quant Q4_K_M")
    personas = [check_persona(p) for p in config.personas]
    started = time.monotonic()
    exports = tuple(_export_one(config, persona) for persona in personas)
    return ExportResult(exports, time.monotonic() - started)
