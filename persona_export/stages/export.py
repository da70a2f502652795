"""The export stage: the whole chain for one or more personas.

The chain is a table (:data:`STEPS`): merge -> gguf -> quantize -> modelfile -> verify ->
card -> ollama, each step building its stage's config from the export's and from what the steps
before it returned, then calling that stage's ``run``. Each stage is up to date when its
manifest says so (a re-run with nothing changed takes seconds). Verify runs before the model
is registered, so an export that fails a check never reaches Ollama. With several personas,
one that fails does not stop the others; each gets its own outcome.

Intermediates (``keep``): the merged folder and the unquantized GGUF are kept by default.
One left out of ``keep`` is dropped as soon as every step that reads it (gguf and verify
read the merged model, quantize and verify the unquantized GGUF) has run
and none failed; its manifest stays as a tombstone (artifacts/artifact.py). On a re-run the
merge and gguf steps accept their tombstones as up to date, so an unchanged export stays a
no-op; a step that has to read a dropped intermediate again raises DroppedInputError, and
the step that makes it is run again first (then the intermediate is dropped again).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_export import console
from persona_export.errors import (
    DroppedInputError,
    PersonaExportError,
    UsageError,
    internal_error,
)
from persona_export.layout import DEFAULT_BASE_MODEL, DEFAULT_QUANT, Layout, check_persona
from persona_export.stages._intermediates import KEEPABLE, DiskWatch, drop_finished
from persona_export.stages.base import StageResult, Status

DEFAULT_MAX_TOKENS = 384  # verify's generation check (stages/verify.py says the same)
OS_ERROR_HINT = "check the path, free disk space and permissions"  # the CLI's, for one command


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
    ``keep``: the intermediates to keep (of :data:`KEEPABLE`; see the module docstring).
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
    keep: frozenset[str] = frozenset(KEEPABLE)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.keep) - set(KEEPABLE))
        if unknown:
            raise UsageError(
                f"--keep {','.join(unknown)}: unknown intermediate",
                f"name {' and '.join(KEEPABLE)} (comma-separated), all, or none",
            )
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
    disk_bytes: int = 0  # the persona's outputs on disk at the end
    disk_peak_bytes: int = 0  # and at the peak during the run
    dropped: tuple[str, ...] = ()  # what --keep dropped in this run, e.g. "cap-F16.gguf 7.7 GB"

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

    def to_json(self) -> dict[str, Any]:
        """Stable keys (README, "JSON output"): the persona, whether it exported, its time,
        the error that stopped it (message and hint, or null) and every stage's result."""
        return {
            "persona": self.persona,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "error": (
                {"message": self.error.message, "hint": self.error.hint}
                if self.error is not None
                else None
            ),
            "stages": [stage.to_json() for stage in self.stages],
        }


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

    def to_json(self) -> dict[str, Any]:
        """Every persona's :meth:`PersonaExport.to_json`, in order, and the total time."""
        return {
            "seconds": round(self.seconds, 3),
            "personas": [export.to_json() for export in self.exports],
        }


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
        persona,
        layout=config.layout,
        base_model=config.base_model,
        personas_file=config.personas_file,
        force=config.force,
        accept_dropped=True,
    )


def _gguf(config: ExportConfig, persona: str, done: Done) -> Any:
    from persona_export.stages.gguf import GgufConfig

    return GgufConfig(
        persona,
        layout=config.layout,
        outtype=config.outtype,
        force=config.force,
        accept_dropped=True,
    )


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


def _card(config: ExportConfig, persona: str, done: Done) -> Any:
    from persona_export.stages.card import CardConfig

    return CardConfig(persona, layout=config.layout, force=config.force)


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
    Step("card", _card, _stage_run("card")),
    Step("ollama", _ollama, _stage_run("ollama"), _verify_failed),
)
STAGES = tuple(step.name for step in STEPS)


def _run_step(
    config: ExportConfig, persona: str, step: Step, done: dict[str, StageResult]
) -> StageResult:
    """Run ``step``; when it needs an intermediate --keep dropped, make that again first
    (through the step that makes it, which may itself need another) and run ``step`` again."""
    for _ in range(len(STEPS)):
        try:
            return step.run(step.make(config, persona, done))
        except DroppedInputError as exc:
            maker = next(s for s in STEPS if s.name == exc.stage)
            console.info(f"  {step.name} needs what --keep dropped: making it again ({maker.name})")
            made = _run_step(config, persona, _rebuilding(maker), done)
            done[maker.name] = made
            if made.status is Status.FAILED:
                return made
    raise internal_error(RuntimeError(f"{step.name}: dropped inputs kept coming back"))


def _rebuilding(step: Step) -> Step:
    """``step`` with its config told to make a dropped output again."""

    def make(config: ExportConfig, persona: str, done: Done) -> Any:
        return dataclasses.replace(step.make(config, persona, done), accept_dropped=False)

    return Step(step.name, make, step.run, step.unrun)


def _export_one(config: ExportConfig, persona: str) -> PersonaExport:
    started = time.monotonic()
    done: dict[str, StageResult] = {}
    dropped: list[str] = []
    error: PersonaExportError | None = None
    console.info(f"exporting {persona}")
    watch = DiskWatch(config.layout, persona)
    try:
        for number, step in enumerate(STEPS, 1):
            skipped = step.unrun(config, persona, done)
            if skipped is not None:
                done[step.name] = skipped
                continue
            console.info(f"[{number}/{len(STEPS)}] {step.name}")
            step_started = time.monotonic()
            try:
                done[step.name] = _run_step(config, persona, step, done)
            except Exception as exc:  # one persona's failure must not stop the others
                if isinstance(exc, OSError) and not isinstance(exc, PersonaExportError):
                    # a full disk or a permission, as the CLI says it for one command: not a bug
                    exc = PersonaExportError(str(exc), OS_ERROR_HINT)
                elif not isinstance(exc, PersonaExportError):
                    if console.debug_enabled():
                        raise
                    exc = internal_error(exc)
                seconds = time.monotonic() - step_started
                done[step.name] = StageResult(
                    step.name, persona, Status.FAILED, seconds=seconds, detail=exc.message
                )
                error = exc
                break
            dropped += drop_finished(config, persona, done)
    finally:
        disk_now, disk_peak = watch.stop()
    return PersonaExport(
        persona,
        tuple(done.values()),
        error,
        time.monotonic() - started,
        disk_now,
        disk_peak,
        tuple(dropped),
    )


def run(config: ExportConfig) -> ExportResult:
    """Export each persona in ``config.personas`` in turn; return every outcome.

    A persona whose stage raises one of the errors.py classes is recorded as failed (with
    the error) and the next persona is exported; other exceptions propagate.
    """
    started = time.monotonic()
    exports = tuple(_export_one(config, persona) for persona in config.personas)
    return ExportResult(exports, time.monotonic() - started)
