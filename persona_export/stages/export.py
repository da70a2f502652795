"""The export stage: the whole chain for one or more personas.

The chain is a table (:data:`STEPS`): merge -> gguf -> quantize -> modelfile -> verify ->
ollama, each step building its stage's config from the export's and from what the steps
before it returned, then calling that stage's ``run``. Each stage is up to date when its
manifest says so (a re-run with nothing changed takes seconds). Verify runs before the model
is registered, so an export that fails a check never reaches Ollama. With several personas,
one that fails does not stop the others; each gets its own outcome.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_export import console
from persona_export.errors import PersonaExportError, UsageError, internal_error
from persona_export.layout import DEFAULT_BASE_MODEL, DEFAULT_QUANT, Layout, check_persona
from persona_export.stages.base import StageResult, Status

DEFAULT_MAX_TOKENS = 384  # verify's generation check (stages/verify.py says the same)


@dataclass(frozen=True)
class ExportConfig:
    """Which personas to export and how.

    ``quants``: quantization types; the first is the one the Modelfile uses; ``("AUTO",)``
    lets the quantize stage choose (``ladder``, ``keep_candidates``) and the Modelfile and
    verify take its choice. ``imatrix``/``imatrix_auto``/``calibration``: the importance
    matrix (see QuantizeConfig). ``verify``: run the checks (the ``verify_*`` fields are
    passed to it, and the KL and retention bounds to ``--quant auto`` too). ``model_name``: the Ollama
    name (one persona only; default: the persona's ``ollama_name``). ``force``: redo every
    stage even when up to date. ``require_ollama``: fail when Ollama is not there.
    Checked when built, before any stage runs.
    """

    personas: tuple[str, ...]
    layout: Layout = field(default_factory=Layout)
    base_model: str = DEFAULT_BASE_MODEL
    quants: tuple[str, ...] = (DEFAULT_QUANT,)
    outtype: str = "f16"
    personas_file: Path | None = None
    template: str | None = None
    model_name: str | None = None
    verify: bool = True
    verify_max_tokens: int = DEFAULT_MAX_TOKENS
    verify_kl_max: Mapping[str, float] = field(default_factory=dict)
    verify_retention_min: Mapping[str, float] = field(default_factory=dict)
    verify_prompts_file: Path | None = None
    ladder: tuple[str, ...] = ()
    keep_candidates: bool = False
    imatrix: Path | None = None
    imatrix_auto: bool = False
    calibration: Path | None = None
    require_ollama: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        if not self.personas:
            raise UsageError(
                f"no personas to export: no <persona>_final_adapter/ folder in "
                f"{self.layout.adapter_dir}",
                "put the adapters there or pass --adapter-dir DIR",
            )
        for persona in self.personas:
            check_persona(persona)
        if self.model_name and len(self.personas) > 1:
            raise UsageError("--name applies to one persona, not to --all")
        if not self.quants:
            raise UsageError("give at least one quantization type", f"e.g. --quant {DEFAULT_QUANT}")
        # every stage's own checks of these options, before the first stage runs
        for step in STEPS:
            step.make(self, self.personas[0], {})


@dataclass(frozen=True)
class PersonaExport:
    """What happened to one persona: its stages in order and, when one raised, the error
    (its message and hint are what the user should see)."""

    persona: str
    stages: tuple[StageResult, ...]
    error: PersonaExportError | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None and all(s.status is not Status.FAILED for s in self.stages)

    def stage(self, name: str) -> StageResult | None:
        return next((s for s in self.stages if s.stage == name), None)

    @property
    def verify(self) -> Any:
        """The verify stage's result (None when it did not run)."""
        result = self.stage("verify")
        return result if result is not None and hasattr(result, "checks") else None


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


Done = Mapping[str, StageResult]


@dataclass(frozen=True)
class Step:
    """One row of the chain: how to build the stage's config (``make``; None: the stage does
    not run, and ``unrun`` says why) and the stage's ``run``."""

    name: str
    make: Callable[[ExportConfig, str, Done], Any]
    run: Callable[[Any], StageResult]
    unrun: Callable[[ExportConfig, str, Done], StageResult | None] = lambda c, p, d: None


def _merge(config: ExportConfig, persona: str, done: Done) -> Any:
    from persona_export.stages.merge import MergeConfig

    return MergeConfig(
        persona, layout=config.layout, base_model=config.base_model, force=config.force
    )


def _gguf(config: ExportConfig, persona: str, done: Done) -> Any:
    from persona_export.stages.gguf import GgufConfig

    return GgufConfig(persona, layout=config.layout, outtype=config.outtype, force=config.force)


def _source_type(done: Done) -> str | None:
    gguf = done.get("gguf")
    return getattr(gguf, "file_type", None)


def _quantize(config: ExportConfig, persona: str, done: Done) -> Any:
    from persona_export.stages.quantize import QuantizeConfig

    return QuantizeConfig(
        persona,
        layout=config.layout,
        quant_types=config.quants,
        source=_source_type(done),
        imatrix=config.imatrix,
        imatrix_auto=config.imatrix_auto,
        calibration=config.calibration,
        ladder=config.ladder,
        keep_candidates=config.keep_candidates,
        base_model=config.base_model,
        personas_file=config.personas_file,
        prompts_file=config.verify_prompts_file,
        kl_max=dict(config.verify_kl_max),
        retention_min=dict(config.verify_retention_min),
        force=config.force,
    )


def _modelfile_quant(config: ExportConfig, done: Done) -> str:
    """The quantize stage's first output (with ``--quant auto``: the type it chose)."""
    quantized = done.get("quantize")
    quants = getattr(quantized, "quants", ())
    return quants[0].quant_type if quants else config.quants[0]


def _quantize_failed(config: ExportConfig, persona: str, done: Done) -> StageResult | None:
    """A stage after quantize does not run when quantize failed (``--quant auto`` found no
    type that keeps the persona): there is no GGUF to describe, verify or register."""
    quantized = done.get("quantize")
    if quantized is not None and quantized.status is Status.FAILED:
        return StageResult("", persona, Status.NOT_RUN, detail="not run: quantize failed")
    return None


def _modelfile_unrun(config: ExportConfig, persona: str, done: Done) -> StageResult | None:
    skipped = _quantize_failed(config, persona, done)
    return None if skipped is None else _named(skipped, "modelfile")


def _named(result: StageResult, name: str) -> StageResult:
    return StageResult(name, result.persona, result.status, detail=result.detail)


def _modelfile(config: ExportConfig, persona: str, done: Done) -> Any:
    from persona_export.stages.modelfile import ModelfileConfig

    return ModelfileConfig(
        persona,
        quant=_modelfile_quant(config, done),
        layout=config.layout,
        template=config.template,
        personas_file=config.personas_file,
        force=config.force,
    )


def _verify(config: ExportConfig, persona: str, done: Done) -> Any:
    from persona_export.stages.verify import VerifyConfig

    quantized = done.get("quantize")
    chosen = getattr(quantized, "chosen", None)
    # --quant auto: the chosen type (candidates kept with --keep-candidates failed the gates)
    made = (chosen,) if chosen else tuple(q.quant_type for q in getattr(quantized, "quants", ()))
    quants = made or config.quants
    return VerifyConfig(
        persona,
        layout=config.layout,
        quants=quants,
        source_type=_source_type(done) or config.outtype.upper(),
        base_model=config.base_model,
        prompts_file=config.verify_prompts_file,
        kl_max=dict(config.verify_kl_max),
        retention_min=dict(config.verify_retention_min),
        personas_file=config.personas_file,
        max_tokens=config.verify_max_tokens,
        force=config.force,
    )


def _no_verify(config: ExportConfig, persona: str, done: Done) -> StageResult | None:
    skipped = _quantize_failed(config, persona, done)
    if skipped is not None:
        return _named(skipped, "verify")
    if config.verify:
        return None
    return StageResult("verify", persona, Status.SKIPPED, detail="--no-verify")


def _ollama(config: ExportConfig, persona: str, done: Done) -> Any:
    from persona_export.stages.ollama import OllamaConfig

    return OllamaConfig(
        persona,
        model_name=config.model_name,
        layout=config.layout,
        personas_file=config.personas_file,
        require=config.require_ollama,
        verify=config.verify,
    )


def _verify_failed(config: ExportConfig, persona: str, done: Done) -> StageResult | None:
    """Nothing is registered after a failed stage: verify failed, or did not run because an
    earlier stage failed."""
    verified = done.get("verify")
    if verified is not None and verified.status in (Status.FAILED, Status.NOT_RUN):
        why = (
            "verify failed"
            if verified.status is Status.FAILED
            else verified.detail.removeprefix("not run: ")
        )
        return StageResult("ollama", persona, Status.NOT_RUN, detail=f"not registered: {why}")
    return None


def _stage_run(module: str) -> Callable[[Any], StageResult]:
    def run(stage_config: Any) -> StageResult:
        import importlib

        result: StageResult = importlib.import_module(f"persona_export.stages.{module}").run(
            stage_config
        )
        return result

    return run


STEPS: tuple[Step, ...] = (
    Step("merge", _merge, _stage_run("merge")),
    Step("gguf", _gguf, _stage_run("gguf")),
    Step("quantize", _quantize, _stage_run("quantize")),
    Step("modelfile", _modelfile, _stage_run("modelfile"), _modelfile_unrun),
    Step("verify", _verify, _stage_run("verify"), _no_verify),
    Step("ollama", _ollama, _stage_run("ollama"), _verify_failed),
)
STAGES = tuple(step.name for step in STEPS)


def _export_one(config: ExportConfig, persona: str) -> PersonaExport:
    started = time.monotonic()
    done: dict[str, StageResult] = {}
    console.info(f"exporting {persona}")
    for number, step in enumerate(STEPS, 1):
        skipped = step.unrun(config, persona, done)
        if skipped is not None:
            done[step.name] = skipped
            continue
        console.info(f"[{number}/{len(STEPS)}] {step.name}")
        step_started = time.monotonic()
        try:
            done[step.name] = step.run(step.make(config, persona, done))
        except Exception as exc:  # one persona's failure must not stop the others
            if not isinstance(exc, PersonaExportError):
                if console.debug_enabled():
                    raise
                exc = internal_error(exc)
            seconds = time.monotonic() - step_started
            done[step.name] = StageResult(
                step.name, persona, Status.FAILED, seconds=seconds, detail=exc.message
            )
            return PersonaExport(persona, tuple(done.values()), exc, time.monotonic() - started)
    return PersonaExport(persona, tuple(done.values()), None, time.monotonic() - started)


def run(config: ExportConfig) -> ExportResult:
    """Export each persona in ``config.personas`` in turn; return every outcome.

    A persona whose stage raises one of the errors.py classes is recorded as failed (with
    the error) and the next persona is exported; other exceptions propagate.
    """
    started = time.monotonic()
    exports = tuple(_export_one(config, persona) for persona in config.personas)
    return ExportResult(exports, time.monotonic() - started)
