"""The verify stage: prove that a persona's export behaves like base + adapter.

On the conversations of templates/verify_prompts.toml (plus the persona's own
``verify_prompts`` from the personas TOML), each preceded by the persona's system
prompt (the Modelfile's SYSTEM) and turned into token ids by the merged model's tokenizer
(:mod:`persona_export.verify.prompts`), so that every engine sees the same ids
(:mod:`persona_export.verify.engines` runs them, :mod:`persona_export.verify.checks` judges):

1. ``peft-vs-merged``: base + adapter run unmerged by PEFT against the merged model (both
   float32): the merge itself. NMSE and top-1 agreement of the logits at every position.
2. ``merged-vs-<F16>``: the merged model against the unquantized GGUF run by the vendored
   llama.cpp (``pe-logits``): the conversion. NMSE and top-1 agreement.
3. ``<F16>-vs-<Q>``: the unquantized GGUF against each quantized one: mean KL divergence of the
   next-token distributions (bound per type), persona retention against the base model
   without the adapter (minimum per type; :mod:`persona_export.verify.retention`), top-1
   agreement, and how many greedy answers are the F16's (reported, not bounded).
4. ``template-modelfile``: the Modelfile's TEMPLATE and SYSTEM rendered by Go's text/template
   as Ollama renders them equals the HF chat template's text (skipped without Go).
5. ``template-gguf``: the chat template embedded in the GGUF, rendered by llama-server
   (``/apply-template``, what Ollama uses for templates that mention tools), equals it too.
6. ``tokens``: llama.cpp's tokenizer turns the rendered prompt into the HF token ids.
7. ``generation``: a greedy answer with the Modelfile's prompt and stop list ends on an
   end-of-generation token or a stop, not on the token limit.

The report (``gguf_models/<persona>/verify.json``) records every figure, the bounds, and the
inputs' content hashes, read while the checks run and confirmed unchanged afterwards (a file
replaced during the run fails the report); it is written whether the checks pass or not. A
passing report whose inputs and options are unchanged makes the next run a no-op. The stage
returns the result; the caller decides what a failure means.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_export import console
from persona_export.artifacts import (
    LEGACY_VERIFY,
    Artifact,
    persona_lock,
    remove_legacy_scratch,
    work_dir,
)
from persona_export.artifacts.hashing import BackgroundRecords
from persona_export.errors import UsageError
from persona_export.llamacpp import vendor
from persona_export.ollama.modelfile import Modelfile
from persona_export.stages._verify_inputs import (
    Sources,
    changed_inputs,
    find_sources,
    input_files,
    quant_paths,
    require_present,
    stat_key,
)
from persona_export.stages._verify_inputs import base_model as find_base_model
from persona_export.stages.base import StageConfig, StageResult, Status
from persona_export.verify.checks import FAILED, PASSED, SKIPPED, Check, error_check
from persona_export.verify.data import (
    Turn,
    check_bound_overrides,
    load_bounds,
    load_conversations,
    prompts_path,
    verify_conversations,
)
from persona_export.verify.engines import (
    Engines,
    Steps,
    logit_checks,
    server_checks,
    step_count,
)
from persona_export.verify.memory import available_memory, check_streamed_memory, streamed_need
from persona_export.verify.prompts import Prompt
from persona_export.verify.tools import choice_for

__all__ = ["FAILED", "PASSED", "SKIPPED", "Check", "VerifyConfig", "VerifyResult", "run"]

STAGE = "verify"
REPORT_FORMAT = 2  # 2: ollama-template and template-tools checks (an older report is redone)
DEFAULT_MAX_TOKENS = 384
HF_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class VerifyConfig(StageConfig):
    """What to verify and how strictly.

    ``quants``: the quantized GGUFs to compare with the unquantized ``source_type`` one (empty:
    every ``<persona>-<TYPE>.gguf`` present). ``base_model``: the base for the PEFT check
    (default: the one the merge recorded). ``prompts_file``: conversations replacing the
    shipped ones. ``None`` bounds take the shipped defaults (templates/verify_bounds.toml);
    ``kl_max`` and ``retention_min`` override them per quantization type. ``max_tokens``
    bounds each answer of the generation check. ``personas_file``: where the persona's
    ``verify_prompts`` may be defined (besides templates/personas.toml and ./personas.toml).
    A quant ``AUTO`` is the type ``quantize --type auto`` chose. ``force`` re-runs even when
    an earlier passing report is up to date.
    """

    quants: tuple[str, ...] = ()
    source_type: str = "F16"
    base_model: str | None = None
    prompts_file: Path | None = None
    peft_nmse_max: float | None = None
    nmse_max: float | None = None
    top1_min: float | None = None
    kl_max: Mapping[str, float] = field(default_factory=dict)
    retention_min: Mapping[str, float] = field(default_factory=dict)
    personas_file: Path | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    hf_dtype: str = "float32"
    threads: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_tokens < 1:
            raise UsageError(f"--max-tokens must be at least 1, not {self.max_tokens}")
        if self.hf_dtype not in HF_DTYPES:
            raise UsageError(f"unknown dtype {self.hf_dtype!r}", "use float32, bfloat16 or float16")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, not {self.threads}")
        check_bound_overrides(
            peft_nmse_max=self.peft_nmse_max,
            nmse_max=self.nmse_max,
            top1_min=self.top1_min,
            kl_max=self.kl_max,
        )
        if self.prompts_file is not None:
            load_conversations(self.prompts_file)  # read now: export checks it before merging


@dataclass(frozen=True)
class VerifyResult(StageResult):
    """The checks in order, where the report is, and whether all that ran passed."""

    report: Path
    checks: tuple[Check, ...]
    passed: bool

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == FAILED)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    sources: Sources
    quants: dict[str, Path]
    modelfile: Modelfile
    base_dir: Path
    artifact: Artifact
    read_at: Mapping[str, tuple[int, int, int, int]]  # inputs read while planning, as they were
    conversations: tuple[tuple[Turn, ...], ...]

    @property
    def merged_dir(self) -> Path:
        return self.sources.merged_dir

    @property
    def adapter_dir(self) -> Path:
        return self.sources.adapter_dir

    @property
    def source(self) -> Path:
        return self.sources.source


def _plan(config: VerifyConfig) -> _Plan:
    from persona_export.hf.base_model import resolve_base_model

    layout, persona = config.layout, config.persona
    sources = find_sources(layout, persona, config.source_type)
    quants = quant_paths(layout, persona, config.source_type, config.quants)
    shipped = load_conversations(config.prompts_file)
    conversations = verify_conversations(persona, config.prompts_file, config.personas_file)
    modelfile_path = layout.modelfile(persona)
    try:  # its identity before it is read: a Modelfile replaced after this is not certified
        read_at = {"modelfile": stat_key(modelfile_path)}
    except OSError:
        read_at = {}  # Modelfile.read says what is wrong
    modelfile = Modelfile.read(modelfile_path)
    modelfile.require_gguf()
    bounds = _bounds(config, sources)
    base_model = find_base_model(config.base_model, sources.merged_dir)
    base_dir = resolve_base_model(base_model)
    ggufs = {config.source_type.upper(): sources.source, **quants, "modelfile": modelfile.gguf}
    inputs = input_files(
        sources, base_dir, ggufs, layout.modelfile(persona), prompts_path(config.prompts_file)
    )
    report = config.layout.verify_report(config.persona)
    artifact = Artifact(
        stage=STAGE,
        path=report,
        manifest_file=report,
        options={
            "format": REPORT_FORMAT,
            "base_model": base_model,
            "source_type": config.source_type.upper(),
            "quants": sorted(quants),
            "bounds": {
                "peft_nmse_max": bounds.peft_nmse_max,
                "peft_top1_min": bounds.peft_top1_min,
                "nmse_max": bounds.nmse_max,
                "top1_min": bounds.top1_min,
                **bounds.for_types(quants),
            },
            "max_tokens": config.max_tokens,
            "hf_dtype": config.hf_dtype,
            # the persona's own prompts (the shipped ones are an input file)
            "conversations": len(conversations),
            "persona_prompts": [c[-1]["content"] for c in conversations[len(shipped) :]],
        },
        inputs=inputs,
        dropped_inputs=sources.dropped,
    )
    return _Plan(sources, quants, modelfile, base_dir, artifact, read_at, conversations)


def _bounds(config: VerifyConfig, sources: Sources) -> Any:
    bounds = load_bounds(
        merged_dtype=sources.merged_dtype,
        peft_nmse_max=config.peft_nmse_max,
        nmse_max=config.nmse_max,
        top1_min=config.top1_min,
        kl_max=config.kl_max,
        retention_min=config.retention_min,
    )
    # the answers compared between a quant and the F16 are no longer than --max-tokens
    return dataclasses.replace(bounds, answer_tokens=min(bounds.answer_tokens, config.max_tokens))


def _load_report(data: Mapping[str, Any]) -> tuple[Check, ...]:
    return tuple(
        Check(c["name"], c["status"], c["summary"], c.get("figures", {}))
        for c in data.get("checks", [])
        if isinstance(c, dict)
    )


def run(config: VerifyConfig) -> VerifyResult:
    """Run every check on ``config.persona``'s export and write the report.

    Returns the result whatever the checks say (see ``passed``/``failed``). Raises the
    errors.py classes when an input is missing (merged model, adapter, GGUFs, Modelfile), a
    setting is wrong, or a tool is not built; a check that cannot run for want of an optional
    tool (Go) is reported as skipped.
    """
    started = time.monotonic()
    layout, persona = config.layout, config.persona
    with persona_lock(layout.lock_file(persona), on_wait=console.info):
        # older versions' scratch folders (tempfile names; the lock makes them stale)
        legacy = LEGACY_VERIFY.format(persona=re.escape(persona))
        remove_legacy_scratch(layout.gguf_dir(persona), legacy, layout.lock_file(persona))
        plan = _plan(config)
        plan.artifact.clean_temporaries()  # an interrupted run's, whether or not this one writes
        previous = plan.artifact.recorded() or {}
        if previous.get("passed") is True and plan.artifact.fresh(force=config.force):
            checks = _load_report(previous)
            return _result(config, plan, checks, True, Status.UP_TO_DATE, started)
        require_present(plan.sources, config.persona, config.source_type)
        plan.artifact.check_writable()
        prompts, bos = _prompts(config, plan)
        _memory_preflight(config, plan, prompts)
        checks = _run_checks(config, plan, prompts, bos)
    passed = not any(c.status == FAILED for c in checks)
    return _result(config, plan, checks, passed, Status.DONE if passed else Status.FAILED, started)


def _prompts(config: VerifyConfig, plan: _Plan) -> tuple[list[Prompt], str | None]:
    from persona_export.verify.prompts import build_prompts

    return build_prompts(plan.merged_dir, plan.modelfile.system, plan.conversations)


def _memory_preflight(config: VerifyConfig, plan: _Plan, prompts: list[Prompt]) -> None:
    """Say what the Hugging Face side will need and refuse before loading when it does not
    fit (verify/memory.py)."""
    from persona_export.verify.logits import streaming
    from persona_export.verify.memory import check_memory

    if not streaming():
        check_memory(plan.merged_dir, config.hf_dtype)
        return
    lengths = [len(p.ids) for p in prompts]
    need = streamed_need(
        [plan.merged_dir, plan.base_dir],
        adapter_dir=plan.adapter_dir,
        positions=sum(lengths),
        longest=max(lengths),
        compute_dtype=config.hf_dtype,
        # with quants, the base's logits stay beside the merged model's and the F16's
        logits_held=3 if plan.quants else 2,
    )
    free = available_memory()
    console.info(
        f"  verify: the Hugging Face side needs about {need.total / 2**30:.1f} GiB of RAM"
        + (f" ({free / 2**30:.1f} GiB available)" if free is not None else "")
    )
    check_streamed_memory(need, config.hf_dtype, free)


def _run_checks(
    config: VerifyConfig, plan: _Plan, prompts: list[Prompt], bos: str | None
) -> tuple[Check, ...]:
    from persona_export.verify.logits import streaming

    artifact = plan.artifact
    # What is certified is what was read: content hashes taken while the checks run (no
    # hash reused from a manifest), and every input confirmed unchanged afterwards.
    before = {name: stat_key(path) for name, path in artifact.inputs.items()}
    before.update(plan.read_at)  # the Modelfile was parsed while planning
    hashing = BackgroundRecords(artifact.inputs, {})
    bounds = _bounds(config, plan.sources)
    try:
        with artifact.write() as writing:
            with work_dir(plan.artifact.path) as scratch:
                engines = Engines(
                    plan.merged_dir,
                    plan.adapter_dir,
                    plan.base_dir,
                    plan.source,
                    config.source_type.upper(),
                    plan.quants,
                    config.hf_dtype,
                    config.threads,
                    scratch,
                )
                total = step_count(len(plan.quants), len(prompts))
                with console.progress("verifying", total=total, unit="steps") as bar:
                    steps = Steps(bar)
                    checks = logit_checks(engines, bounds, prompts, steps)
                    checks += server_checks(
                        plan.modelfile,
                        prompts,
                        bos,
                        max_tokens=config.max_tokens,
                        threads=config.threads,
                        log_file=config.layout.verify_server_log(config.persona),
                        choice=choice_for(plan.modelfile),
                        merged_dir=plan.merged_dir,
                        steps=steps,
                    )
                    steps.finish()
            records = hashing.result()
            changed = changed_inputs(artifact.inputs, before)
            if changed:
                checks.append(
                    error_check(
                        "inputs",
                        f"{', '.join(changed[:3])} changed while verify ran: nothing is "
                        "certified; run verify again once nothing else writes this persona",
                    )
                )
            passed = not any(c.status == FAILED for c in checks)
            writing.record(
                records,
                extra={
                    "persona": config.persona,
                    "passed": passed,
                    "llama_cpp_commit": vendor.commit(),
                    "hf_engine": "layer-streamed" if streaming() else "whole-model",
                    "base_dir": str(plan.base_dir),
                    "modelfile_gguf": plan.modelfile.gguf.name,
                    "conversations": [list(p.messages) for p in prompts],
                    "checks": [c.to_json() for c in checks],
                },
            )
    except BaseException:
        hashing.cancel()
        raise
    return tuple(checks)


def _result(
    config: VerifyConfig,
    plan: _Plan,
    checks: tuple[Check, ...],
    passed: bool,
    status: Status,
    started: float,
) -> VerifyResult:
    counts = {s: sum(c.status == s for c in checks) for s in (PASSED, FAILED, SKIPPED)}
    report = plan.artifact.path
    return VerifyResult(
        stage=STAGE,
        persona=config.persona,
        status=status,
        outputs=(report,),
        figures={"passed": passed, "checks": [c.to_json() for c in checks]},
        seconds=time.monotonic() - started,
        detail=", ".join(f"{n} {s}" for s, n in counts.items() if n),
        report=report,
        checks=checks,
        passed=passed,
    )
