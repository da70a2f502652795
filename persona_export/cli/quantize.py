"""`persona-export quantize`: quantize the F16/BF16 GGUF with the pinned llama-quantize."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from persona_export import console
from persona_export.cli._options import (
    ADAPTER_DIR,
    GGUF_DIR,
    MERGED_DIR,
    QUANT,
    AdapterDir,
    Force,
    GgufDir,
    MergedDir,
    Persona,
    Threads,
    layout,
    upper,
)
from persona_export.cli._output import record
from persona_export.cli.gguf import size_line

EPILOG = (
    "Example: persona-export quantize --persona captain_codebeard --type Q4_K_M "
    "--type Q8_0   (or: make persona=NAME quantize)"
)


def quantize(
    persona: Persona,
    quant_types: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            "-t",
            help=f"Quantization type, repeatable (default {QUANT}). Any type llama-quantize "
            "lists, e.g. Q4_K_M, Q5_K_M, Q6_K, Q8_0, IQ4_XS.",
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="Which GGUF to quantize from: F16, BF16 or F32 (default: the first that exists).",
        ),
    ] = None,
    imatrix: Annotated[
        Path | None,
        typer.Option(
            "--imatrix",
            help="Importance matrix file (from llama-imatrix); required for IQ1/IQ2/IQ3_XXS "
            "and Q2_K_S.",
        ),
    ] = None,
    threads: Threads = None,
    gguf_dir: GgufDir = GGUF_DIR,
    merged_dir: MergedDir = MERGED_DIR,
    adapter_dir: AdapterDir = ADAPTER_DIR,
    force: Force = False,
) -> None:
    """Quantize gguf_models/<persona>/<persona>-F16.gguf to <persona>-<TYPE>.gguf.

    Runs the vendored llama-quantize once per type, checks each result and writes a manifest beside it. Prints one line per type: type, size, bits per weight and path.
    """
    from persona_export.stages.base import Status
    from persona_export.stages.quantize import QuantizeConfig, run

    config = QuantizeConfig(
        persona,
        layout=layout(adapter_dir, merged_dir, gguf_dir),
        quant_types=upper(quant_types, (QUANT,)),
        source=source,
        imatrix=imatrix,
        threads=threads,
        force=force,
    )
    result = run(config)
    record(result=result.to_json())
    for output in result.quants:
        if output.status is Status.UP_TO_DATE:
            console.info(f"{output.gguf_path} is up to date (use --force to quantize again)")
        console.out(
            size_line(
                output.quant_type, output.size_bytes, output.bits_per_weight, output.gguf_path
            )
        )
