"""``quantize --type auto``: the smallest quantization type that keeps the persona.

The ladder (templates/quant_ladder.toml, or ``--ladder``) is climbed from the smallest type
to the largest: each type is quantized (or found up to date), measured against the F16 on
the verify prompts (:mod:`persona_export.verify.fidelity`: KL, persona retention against the
base without the adapter, greedy answers) and judged by the verify bounds
(:func:`persona_export.verify.checks.judge_quant`), the same prompts and bounds `verify`
holds the export to afterwards. The first type that passes is chosen; the larger ones are
not needed. Candidates this run quantized and did not choose are removed unless
``keep_candidates`` (a GGUF that was there before the run is left alone).

``gguf_models/<persona>/quant-auto.json`` records the ladder, the choice and every type's
figures. Figures are reused while the measurement's key is unchanged: the F16's and the
base's content hashes, the prompts' token ids, llama.cpp's commit, the answer length and
the importance matrix's hash (quantization is deterministic, so a type's figures hold for
its file however often it is re-made). A re-run with nothing changed measures and
quantizes nothing; a changed ladder or bound re-judges the recorded figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_export import console
from persona_export.artifacts import manifest_path_for, read_json, work_dir
from persona_export.errors import InputNotFoundError
from persona_export.layout import Layout
from persona_export.stages.quantize_auto_record import (
    Context,
    entry_key,
    measure_context,
    measure_key,
    record_artifact,
)
from persona_export.verify.ladder import Rung, ladder_reason

if TYPE_CHECKING:
    from persona_export.stages.quantize import QuantizeConfig, QuantizeResult, QuantOutput
    from persona_export.verify.fidelity import Reference

AUTO = "AUTO"


def check_options(config: QuantizeConfig) -> None:
    """The checks of QuantizeConfig's ``--type auto`` and importance-matrix options."""
    from persona_export.errors import UsageError

    if config.auto and len(config.quant_types) > 1:
        raise UsageError(
            "--type auto chooses one type: give it alone",
            "quantize other types in a separate run, e.g. --type Q8_0",
        )
    if config.ladder and not config.auto:
        raise UsageError("--ladder applies to --type auto", "add --type auto")
    if config.imatrix is not None and config.makes_imatrix:
        raise UsageError(
            "give one importance matrix: --imatrix FILE, or --imatrix auto (optionally with "
            "--calibration FILE), not both",
        )
    if config.calibration_limit is not None and config.calibration_limit < 1:
        raise UsageError(
            f"the calibration limit must be at least 1, not {config.calibration_limit}"
        )
    if config.hf_dtype not in ("float32", "bfloat16", "float16"):
        raise UsageError(f"unknown dtype {config.hf_dtype!r}", "use float32 or bfloat16")


def chosen_type(layout: Layout, persona: str) -> str:
    """The type ``quantize --type auto`` chose for ``persona`` (its record), else an error."""
    record = read_json(layout.quant_auto_record(persona)) or {}
    chosen = record.get("chosen")
    if not isinstance(chosen, str) or not layout.gguf(persona, chosen).is_file():
        raise InputNotFoundError(
            f"no type chosen by `quantize --type auto` for {persona} "
            f"({layout.quant_auto_record(persona)} names no existing GGUF)",
            f"run `persona-export quantize --persona {persona} --type auto` first",
        )
    return chosen


def resolve_types(layout: Layout, persona: str, types: Sequence[str]) -> list[str]:
    """``types`` upper-cased, ``AUTO`` replaced by the chosen type, duplicates dropped."""
    resolved = [chosen_type(layout, persona) if t.upper() == AUTO else t.upper() for t in types]
    return list(dict.fromkeys(resolved))


@dataclass(frozen=True)
class Ladder:
    """What the climb gave: the chosen output (None: no type passed), every rung, the
    outputs kept, the candidates removed, and whether nothing had to be done."""

    chosen: QuantOutput | None
    rungs: tuple[Rung, ...]
    kept: tuple[QuantOutput, ...]
    removed: tuple[Path, ...]
    up_to_date: bool
    reason: str

    def result(
        self, config: QuantizeConfig, source: Path, imatrix: Path | None, started: float
    ) -> QuantizeResult:
        """The quantize stage's result: the chosen output first (none when no type passed:
        the stage failed), the ladder and why."""
        from persona_export.stages.base import Status
        from persona_export.stages.quantize import STAGE as QUANTIZE
        from persona_export.stages.quantize import QuantizeResult

        # done: the ladder was climbed again (figures judged, the record written)
        status = (
            Status.FAILED
            if self.chosen is None
            else Status.UP_TO_DATE
            if self.up_to_date
            else Status.DONE
        )
        chosen = self.chosen.quant_type if self.chosen else None
        return QuantizeResult(
            stage=QUANTIZE,
            persona=config.persona,
            status=status,
            outputs=tuple(o.gguf_path for o in self.kept),
            figures={
                "quants": [o.to_json() for o in self.kept],
                "chosen": chosen,
                "reason": self.reason,
                "ladder": [r.to_json() for r in self.rungs],
                "removed": [str(p) for p in self.removed],
                "imatrix": str(imatrix) if imatrix else None,
            },
            seconds=time.monotonic() - started,
            detail=f"auto: {self.reason}",
            source_path=source,
            quants=self.kept,
            chosen=chosen,
            ladder=self.rungs,
            reason=self.reason,
            imatrix=imatrix,
        )


QuantizeOne = Callable[[str], "QuantOutput"]


def _remove_candidate(output: QuantOutput) -> Path:
    """Delete a candidate GGUF this run made, with its manifest and log."""
    path = output.gguf_path
    for leftover in (path, manifest_path_for(path), path.with_name(path.name + ".log")):
        leftover.unlink(missing_ok=True)
    return path


def _from_record(record: Mapping[str, Any], chosen: QuantOutput) -> Ladder:
    rungs = tuple(
        Rung(
            str(r["type"]),
            r.get("size_bytes"),
            r.get("bits_per_weight"),
            r.get("figures"),
            str(r["verdict"]),
            cached=True,
        )
        for r in record.get("rungs", [])
    )
    return Ladder(chosen, rungs, (chosen,), (), True, str(record.get("reason", "")))


def climb(
    config: QuantizeConfig,
    source: Path,
    ladder: Sequence[str],
    imatrix: Path | None,
    quantize_one: QuantizeOne,
) -> Ladder:
    """Climb ``ladder`` (canonical type names, smallest first) for ``config.persona``:
    see the module docstring. ``quantize_one(type)`` makes (or finds up to date) one GGUF.
    Raises the errors of quantizing and measuring; a ladder where no type passes is
    returned with ``chosen`` None."""
    from persona_export.stages.base import Status

    ctx = measure_context(config)
    artifact = record_artifact(config, source, ctx, ladder, imatrix)
    previous = artifact.recorded() or {}
    chosen_before = previous.get("chosen")
    if isinstance(chosen_before, str) and artifact.fresh(force=config.force):
        output = quantize_one(chosen_before)
        if output.status is Status.UP_TO_DATE:
            return _from_record(previous, output)
    artifact.check_writable()
    hashed = artifact.hash_inputs().result()
    key = measure_key(hashed, ctx, config)
    measured = previous.get("measured") if not config.force else None
    cache: dict[str, Any] = {
        k: v
        for k, v in (measured if isinstance(measured, dict) else {}).items()
        if isinstance(v, dict) and v.get("key") == key
    }
    climbing = _Climb(config, ctx, source, hashed, key, cache, quantize_one)
    with work_dir(artifact.path) as scratch:
        for quant_type in ladder:
            climbing.rung(quant_type, scratch)
    removed = climbing.tidy()
    reason = climbing.reason()
    with artifact.write() as writing:
        writing.record(
            hashed,
            extra={
                "persona": config.persona,
                "chosen": climbing.chosen.quant_type if climbing.chosen else None,
                "reason": reason,
                "rungs": [r.to_json() for r in climbing.rungs],
                "measured": climbing.cache,
                "removed": [str(p) for p in removed],
            },
        )
    kept = ([climbing.chosen] if climbing.chosen else []) + climbing.kept()
    return Ladder(climbing.chosen, tuple(climbing.rungs), tuple(kept), removed, False, reason)


class _Climb:
    """One climb of the ladder: the rungs so far, the figures (cached and new), the
    candidates this run made."""

    def __init__(
        self,
        config: QuantizeConfig,
        ctx: Context,
        source: Path,
        hashed: Mapping[str, Any],
        key: str,
        cache: dict[str, Any],
        quantize_one: QuantizeOne,
    ) -> None:
        self.config, self.ctx, self.source = config, ctx, source
        self.hashed, self.key, self.cache = hashed, key, cache
        self.quantize_one = quantize_one
        self.reference: Reference | None = None
        self.rungs: list[Rung] = []
        self.made: list[QuantOutput] = []
        self.chosen: QuantOutput | None = None

    def _quantize(self, quant_type: str) -> QuantOutput:
        from persona_export.stages.base import Status

        existed = self.config.layout.gguf(self.config.persona, quant_type).is_file()
        output = self.quantize_one(quant_type)
        if not existed and output.status is Status.DONE:
            self.made.append(output)
        return output

    def _measure(self, quant_type: str, output: QuantOutput, scratch: Path) -> dict[str, Any]:
        from persona_export.verify.fidelity import measure, reference
        from persona_export.verify.memory import check_memory

        config, ctx = self.config, self.ctx
        if self.reference is None:
            check_memory(ctx.merged_dir, config.hf_dtype)
            console.info(
                f"  auto: the F16's logits and answers and the base's logits on "
                f"{len(ctx.ids)} prompts"
            )
            self.reference = reference(
                self.source,
                ctx.base_dir,
                ctx.ids,
                bounds=ctx.bounds,
                work_dir=scratch,
                threads=config.threads,
                hf_dtype=config.hf_dtype,
            )
        console.info(f"  auto: measuring {quant_type}")
        fidelity = measure(
            output.gguf_path,
            quant_type,
            self.reference,
            prefix_tokens=ctx.bounds.prefix_tokens,
            work_dir=scratch,
            threads=config.threads,
        )
        return {
            "key": self.key,
            "figures": fidelity.to_json(),
            "size_bytes": output.size_bytes,
            "bits_per_weight": round(output.bits_per_weight, 4),
        }

    def rung(self, quant_type: str, scratch: Path) -> None:
        """Judge one type (measuring it unless its figures are cached)."""
        from persona_export.verify.checks import judge_quant

        if self.chosen is not None:
            self.rungs.append(Rung(quant_type, None, None, None, "not needed"))
            return
        key = entry_key(quant_type, self.hashed)
        entry = self.cache.get(key)
        cached = entry is not None
        output = None
        if entry is None:
            output = self._quantize(quant_type)
            entry = self._measure(quant_type, output, scratch)
            self.cache[key] = entry
        verdict = judge_quant(quant_type, entry["figures"], self.ctx.bounds)
        if verdict.passed:
            self.chosen = output if output is not None else self._quantize(quant_type)
        label = "chosen" if verdict.passed else "failed: " + "; ".join(verdict.reasons)
        self.rungs.append(
            Rung(
                quant_type,
                entry.get("size_bytes"),
                entry.get("bits_per_weight"),
                entry["figures"],
                label,
                cached,
            )
        )
        console.info(f"  auto: {quant_type}: {label} ({verdict.summary})")

    def tidy(self) -> tuple[Path, ...]:
        """Remove the candidates this run made and did not choose (unless kept)."""
        if self.config.keep_candidates:
            return ()
        return tuple(_remove_candidate(o) for o in self.made if o is not self.chosen)

    def kept(self) -> list[QuantOutput]:
        if not self.config.keep_candidates:
            return []
        return [o for o in self.made if o is not self.chosen]

    def reason(self) -> str:
        return ladder_reason(self.rungs, self.chosen.quant_type if self.chosen else None)
