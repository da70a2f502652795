"""`persona-export quantize`: quantize the F16/BF16 GGUF with the pinned llama-quantize."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from persona_export import console
from persona_export.cli._options import (
    ADAPTER_DIR,
    GGUF_DIR,
    MERGED_DIR,
    QUANT,
    AdapterDir,
    Calibration,
    Force,
    GgufDir,
    HfDtype,
    Imatrix,
    KeepCandidates,
    KlMax,
    Ladder,
    MergedDir,
    Persona,
    PersonasFile,
    PromptsFile,
    RetentionMin,
    Threads,
    imatrix_option,
    layout,
    upper,
)
from persona_export.cli._output import record
from persona_export.cli._table import Table
from persona_export.cli.gguf import size_line
from persona_export.units import human_size

if TYPE_CHECKING:
    from persona_export.verify.ladder import Rung

EPILOG = (
    "Example: persona-export quantize --persona captain_codebeard --type Q4_K_M "
    "--type Q8_0   (or: make persona=NAME quantize; the smallest type that keeps the persona: "
    "--type auto)"
)


def _cell(value: object, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def ladder_lines(rungs: Sequence[Rung]) -> list[str]:
    """The ladder of ``--type auto`` as a table: type, size, bits/weight, KL, retention,
    answers identical, verdict (a type not measured has dashes)."""
    header = ("type", "size", "bits/w", "KL", "retention", "answers", "verdict")
    rows = [header]
    for rung in rungs:
        figures = rung.figures or {}
        answers = figures.get("answers") or {}
        rows.append(
            (
                rung.quant_type,
                human_size(rung.size_bytes, missing="-"),
                _cell(rung.bits_per_weight, ".2f"),
                _cell(figures.get("kl_mean"), ".4f"),
                _cell(figures.get("retention"), ".3f"),
                f"{answers['identical']}/{answers['answers']}" if answers else "-",
                rung.verdict + (" (cached)" if rung.cached and rung.figures else ""),
            )
        )
    table = Table(rows, indent="")
    return [line for row in rows for line in table.row(row)]


def quantize(
    persona: Persona,
    quant_types: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            "-t",
            help=f"Quantization type, repeatable (default {QUANT}). Any type llama-quantize "
            "lists, e.g. Q4_K_M, Q5_K_M, Q6_K, Q8_0, IQ4_XS; or auto: the smallest type of "
            "--ladder that passes verify's KL and persona-retention bounds.",
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="Which GGUF to quantize from: F16, BF16 or F32 (default: the first that exists).",
        ),
    ] = None,
    imatrix: Imatrix = None,
    calibration: Calibration = None,
    ladder: Ladder = None,
    keep_candidates: KeepCandidates = False,
    base_model_id: Annotated[
        str | None,
        typer.Option(
            "--base-model-id",
            "--base_model_id",
            help="With auto: the base model retention is measured against (default: the one "
            "the merge recorded).",
        ),
    ] = None,
    personas_file: PersonasFile = None,
    prompts: PromptsFile = None,
    kl_max: KlMax = None,
    retention_min: RetentionMin = None,
    hf_dtype: HfDtype = "float32",
    threads: Threads = None,
    gguf_dir: GgufDir = GGUF_DIR,
    merged_dir: MergedDir = MERGED_DIR,
    adapter_dir: AdapterDir = ADAPTER_DIR,
    force: Force = False,
) -> None:
    """Quantize gguf_models/<persona>/<persona>-F16.gguf to <persona>-<TYPE>.gguf.

    Runs the vendored llama-quantize once per type, checks each result and writes a manifest beside it. Prints one line per type: type, size, bits per weight and path. With --type auto, tries the ladder from the smallest type, measures each against the F16 as verify does (KL, persona retention, greedy answers), keeps the smallest that passes, prints the ladder and says why; exits 1 when no type passes.
    """
    from persona_export.errors import VerificationError
    from persona_export.stages.base import Status
    from persona_export.stages.quantize import QuantizeConfig, run
    from persona_export.verify.data import parse_kl_overrides, parse_retention_overrides
    from persona_export.verify.ladder import parse_ladder

    imatrix_file, imatrix_auto = imatrix_option(imatrix)
    config = QuantizeConfig(
        persona,
        layout=layout(adapter_dir, merged_dir, gguf_dir),
        quant_types=upper(quant_types, (QUANT,)),
        source=source,
        imatrix=imatrix_file,
        imatrix_auto=imatrix_auto,
        calibration=calibration,
        ladder=parse_ladder(ladder or []),
        keep_candidates=keep_candidates,
        base_model=base_model_id,
        personas_file=personas_file,
        prompts_file=prompts,
        kl_max=parse_kl_overrides(kl_max or []),
        retention_min=parse_retention_overrides(retention_min or []),
        hf_dtype=hf_dtype,
        threads=threads,
        force=force,
    )
    result = run(config)
    record(result=result.to_json())
    if config.auto:
        for line in ladder_lines(result.ladder):
            console.out(line)
        if result.chosen is None:
            raise VerificationError(
                f"{persona}: {result.reason}",
                "add a larger type to --ladder (e.g. Q8_0), or loosen --retention-min / "
                "--kl-max if the figures above are acceptable",
            )
        console.out(f"chosen: {result.reason}")
    if result.imatrix is not None:
        console.info(f"importance matrix: {result.imatrix}")
    for output in result.quants:
        if output.status is Status.UP_TO_DATE:
            console.info(f"{output.gguf_path} is up to date (use --force to quantize again)")
        console.out(
            size_line(
                output.quant_type, output.size_bytes, output.bits_per_weight, output.gguf_path
            )
        )
