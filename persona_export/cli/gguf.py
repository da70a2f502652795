"""`persona-export gguf`: convert the merged model to a GGUF with the pinned llama.cpp."""

from __future__ import annotations

from typing import Annotated

import typer

from persona_export import console
from persona_export.cli._options import (
    ADAPTER_DIR,
    GGUF_DIR,
    MERGED_DIR,
    AdapterDir,
    Force,
    GgufDir,
    MergedDir,
    Persona,
    layout,
)
from persona_export.cli._output import record

EPILOG = "Example: persona-export gguf --persona captain_codebeard   (or: make persona=NAME gguf)"


def size_line(file_type: str, size_bytes: int, bits_per_weight: float, path: object) -> str:
    """One data line: type, size, bits per weight, path (shared with `quantize`)."""
    return f"{file_type}\t{size_bytes / 1e9:.2f} GB\t{bits_per_weight:.2f} bpw\t{path}"


def gguf(
    persona: Persona,
    outtype: Annotated[
        str,
        typer.Option(
            "--outtype",
            help="GGUF type to write: f16, bf16, f32, q8_0, or auto (the weights' own 16-bit "
            "type). The file is <persona>-<TYPE>.gguf.",
        ),
    ] = "f16",
    gguf_dir: GgufDir = GGUF_DIR,
    merged_dir: MergedDir = MERGED_DIR,
    adapter_dir: AdapterDir = ADAPTER_DIR,
    force: Force = False,
) -> None:
    """Convert merged_models/<persona>/ to gguf_models/<persona>/<persona>-F16.gguf.

    Runs the vendored convert_hf_to_gguf.py, names the persona in the GGUF's metadata, keeps the tokenizer and chat template, checks the result, and writes a manifest beside it. Prints the type, size, bits per weight and path.
    """
    from persona_export.stages.gguf import GgufConfig, run

    config = GgufConfig(
        persona, layout=layout(adapter_dir, merged_dir, gguf_dir), outtype=outtype, force=force
    )
    result = run(config)
    record(result=result.to_json())
    if result.up_to_date:
        console.info(f"{result.gguf_path} is up to date (use --force to convert again)")
    console.out(
        size_line(result.file_type, result.size_bytes, result.bits_per_weight, result.gguf_path)
    )
