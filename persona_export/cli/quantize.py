"""`persona-export quantize`: quantize the F16/BF16 GGUF with the pinned llama-quantize."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from persona_export import console
from persona_export.cli._app import app
from persona_export.cli._options import DEFAULTS, AdapterDir, Force, GgufDir, MergedDir, Persona
from persona_export.cli.gguf import size_line


@app.command(
    epilog="Example: persona-export quantize --persona captain_codebeard --type Q4_K_M "
    "--type Q8_0   (or: make persona=NAME quantize)",
)
def quantize(
    persona: Persona,
    quant_types: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            "-t",
            help="Quantization type, repeatable (default Q4_K_M). Any type llama-quantize "
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
    threads: Annotated[
        int | None,
        typer.Option("--threads", help="Threads for llama-quantize (default: every core)."),
    ] = None,
    gguf_dir: GgufDir = DEFAULTS["gguf_dir"],
    merged_dir: MergedDir = DEFAULTS["merged_dir"],
    adapter_dir: AdapterDir = DEFAULTS["adapter_dir"],
    force: Force = False,
) -> None:
    """Quantize gguf_models/<persona>/<persona>-F16.gguf to <persona>-<TYPE>.gguf.

    Runs the vendored llama-quantize once per type, checks each result and writes a manifest beside it. Prints one line per type: type, size, bits per weight and path.
    """
    from persona_export.layout import Layout
    from persona_export.stages.quantize import DEFAULT_TYPE, QuantizeConfig, run_quantize

    layout = Layout(adapter_dir=adapter_dir, merged_base=merged_dir, gguf_base=gguf_dir)
    config = QuantizeConfig(
        persona=persona,
        layout=layout,
        quant_types=tuple(quant_types or (DEFAULT_TYPE,)),
        source=source,
        imatrix=imatrix,
        threads=threads,
        force=force,
    )
    result = run_quantize(config)
    for output in result.outputs:
        if output.skipped:
            console.info(f"{output.gguf_path} is up to date (use --force to quantize again)")
        console.out(
            size_line(
                output.quant_type, output.size_bytes, output.bits_per_weight, output.gguf_path
            )
        )
