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
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_export import console
from persona_export.artifacts import (
    DIR_MANIFEST,
    Artifact,
    persona_lock,
    read_json,
    work_dir,
)
from persona_export.artifacts.hashing import BackgroundRecords
from persona_export.errors import InputNotFoundError, UsageError
from persona_export.layout import DEFAULT_BASE_MODEL, Layout
from persona_export.llamacpp import vendor
from persona_export.ollama.modelfile import Modelfile
from persona_export.stages.base import StageConfig, StageResult, Status
from persona_export.verify.checks import FAILED, PASSED, SKIPPED, Check, error_check
from persona_export.verify.data import (
    Turn,
    bounds_path,
    load_bounds,
    load_conversations,
    prompts_path,
    verify_conversations,
)
from persona_export.verify.engines import Engines, logit_checks, server_checks
from persona_export.verify.memory import check_memory, merged_dtype

__all__ = ["FAILED", "PASSED", "SKIPPED", "Check", "VerifyConfig", "VerifyResult", "run"]

STAGE = "verify"
REPORT_FORMAT = 1
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
# Inputs
# --------------------------------------------------------------------------------------------


def _quant_paths(config: VerifyConfig) -> dict[str, Path]:
    layout, persona = config.layout, config.persona
    source = config.source_type.upper()
    if config.quants:
        from persona_export.stages.quantize_auto import resolve_types

        paths = {}
        for quant in resolve_types(layout, persona, config.quants):
            if quant == source:
                continue
            path = layout.gguf(persona, quant)
            if not path.is_file():
                raise InputNotFoundError(
                    f"no {quant} GGUF for {persona} at {path}",
                    f"make it first: persona-export quantize --persona {persona} --type {quant}",
                )
            paths[quant] = path
        return paths
    prefix = f"{persona}-"
    found = {}
    for path in sorted(layout.gguf_dir(persona).glob(f"{prefix}*.gguf")):
        quant = path.name[len(prefix) : -len(".gguf")].upper()
        if quant != source:
            found[quant] = path
    return found


def recorded_base_model(merged_dir: Path, given: str | None = None) -> str:
    """``given``, else the base model the merge of ``merged_dir`` recorded, else the
    default base."""
    if given:
        return given
    recorded = (read_json(merged_dir / DIR_MANIFEST) or {}).get("base_model")
    return recorded if isinstance(recorded, str) and recorded else DEFAULT_BASE_MODEL


def _check_inputs(config: VerifyConfig) -> tuple[Path, Path, Path]:
    layout, persona = config.layout, config.persona
    merged_dir = layout.merged(persona)
    if not (merged_dir / "config.json").is_file():
        raise InputNotFoundError(
            f"no merged model for {persona} at {merged_dir}",
            f"merge first: persona-export merge --persona {persona}",
        )
    adapter_dir = layout.adapter(persona)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise InputNotFoundError(
            f"no adapter for {persona} at {adapter_dir} (adapter_config.json)",
            "the PEFT check runs base + adapter; give the folder with --adapter-dir",
        )
    source = layout.gguf(persona, config.source_type)
    if not source.is_file():
        raise InputNotFoundError(
            f"no {config.source_type.upper()} GGUF for {persona} at {source}",
            f"convert first: persona-export gguf --persona {persona}",
        )
    return merged_dir, adapter_dir, source


def _files(folder: Path, prefix: str) -> dict[str, Path]:
    return {
        f"{prefix}/{p.name}": p
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.endswith(".manifest.json")
    }


def _input_files(
    layout: Layout,
    persona: str,
    base_dir: Path,
    ggufs: Mapping[str, Path],
    modelfile: Path,
    prompts: Path,
) -> dict[str, Path]:
    return {
        **_files(layout.merged(persona), "merged"),
        **_files(layout.adapter(persona), "adapter"),
        **{k: v for k, v in _files(base_dir, "base").items() if not k.endswith(".md")},
        **{f"gguf/{path.name}": path for path in ggufs.values()},
        "modelfile": modelfile,
        "prompts": prompts,
        "bounds": bounds_path(),
    }


def _stat_key(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _changed_inputs(
    inputs: Mapping[str, Path], before: Mapping[str, tuple[int, int, int, int]]
) -> list[str]:
    """Inputs that changed (content, metadata or identity) since ``before`` was taken."""
    changed = []
    for name, path in inputs.items():
        try:
            if _stat_key(path) != before[name]:
                changed.append(name)
        except OSError:
            changed.append(name)
    return changed


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    merged_dir: Path
    adapter_dir: Path
    source: Path
    quants: dict[str, Path]
    modelfile: Modelfile
    base_dir: Path
    artifact: Artifact
    conversations: tuple[tuple[Turn, ...], ...]


def _plan(config: VerifyConfig) -> _Plan:
    from persona_export.hf.base_model import resolve_base_model

    merged_dir, adapter_dir, source = _check_inputs(config)
    quants = _quant_paths(config)
    shipped = load_conversations(config.prompts_file)
    conversations = verify_conversations(config.persona, config.prompts_file, config.personas_file)
    modelfile = Modelfile.read(config.layout.modelfile(config.persona))
    modelfile.require_gguf()
    bounds = _bounds(config, merged_dir)
    base_model = recorded_base_model(merged_dir, config.base_model)
    base_dir = resolve_base_model(base_model)
    ggufs = {config.source_type.upper(): source, **quants, "modelfile": modelfile.gguf}
    inputs = _input_files(
        config.layout,
        config.persona,
        base_dir,
        ggufs,
        config.layout.modelfile(config.persona),
        prompts_path(config.prompts_file),
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
    )
    return _Plan(
        merged_dir, adapter_dir, source, quants, modelfile, base_dir, artifact, conversations
    )


def _bounds(config: VerifyConfig, merged_dir: Path) -> Any:
    bounds = load_bounds(
        merged_dtype=merged_dtype(merged_dir),
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
    with persona_lock(config.layout.lock_file(config.persona), on_wait=console.info):
        plan = _plan(config)
        previous = plan.artifact.recorded() or {}
        if previous.get("passed") is True and plan.artifact.fresh(force=config.force):
            checks = _load_report(previous)
            return _result(config, plan, checks, True, Status.UP_TO_DATE, started)
        plan.artifact.check_writable()
        check_memory(plan.merged_dir, config.hf_dtype)
        checks = _run_checks(config, plan)
    passed = not any(c.status == FAILED for c in checks)
    return _result(config, plan, checks, passed, Status.DONE if passed else Status.FAILED, started)


def _run_checks(config: VerifyConfig, plan: _Plan) -> tuple[Check, ...]:
    from persona_export.verify.prompts import build_prompts

    artifact = plan.artifact
    # What is certified is what was read: content hashes taken while the checks run (no
    # hash reused from a manifest), and every input confirmed unchanged afterwards.
    before = {name: _stat_key(path) for name, path in artifact.inputs.items()}
    hashing = BackgroundRecords(artifact.inputs, {})
    bounds = _bounds(config, plan.merged_dir)
    try:
        with artifact.write() as writing:
            prompts, bos = build_prompts(plan.merged_dir, plan.modelfile.system, plan.conversations)
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
                checks = logit_checks(engines, bounds, prompts)
                checks += server_checks(
                    plan.modelfile,
                    prompts,
                    bos,
                    max_tokens=config.max_tokens,
                    threads=config.threads,
                    log_dir=scratch,
                )
            records = hashing.result()
            changed = _changed_inputs(artifact.inputs, before)
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
