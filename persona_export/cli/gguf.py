"""`persona-export gguf`: convert the merged model to a GGUF with the pinned llama.cpp."""

from __future__ import annotations

from typing import Annotated

import typer

from persona_export import console
from persona_export.cli._app import app
from persona_export.cli._options import DEFAULTS, AdapterDir, Force, GgufDir, MergedDir, Persona


def size_line(file_type: str, size_bytes: int, bits_per_weight: float, path: object) -> str:
    """One data line: type, size, bits per weight, path (shared with `quantize`)."""
    return f"{file_type}\t{size_bytes / 1e9:.2f} GB\t{bits_per_weight:.2f} bpw\t{path}"


@app.command(
    epilog="Example: persona-export gguf --persona captain_codebeard   (or: make persona=NAME gguf)",
)
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
    gguf_dir: GgufDir = DEFAULTS["gguf_dir"],
    merged_dir: MergedDir = DEFAULTS["merged_dir"],
    adapter_dir: AdapterDir = DEFAULTS["adapter_dir"],
    force: Force = False,
) -> None:
    """Convert merged_models/<persona>/ to gguf_models/<persona>/<persona>-F16.gguf.

    Runs the vendored convert_hf_to_gguf.py, names the persona in the GGUF's metadata, keeps the tokenizer and chat template, checks the result, and writes a manifest beside it. Prints the type, size, bits per weight and path.
    """
    from persona_export.layout import Layout
    from persona_export.stages.gguf import GgufConfig, run_gguf

    layout = Layout(adapter_dir=adapter_dir, merged_base=merged_dir, gguf_base=gguf_dir)
    result = run_gguf(GgufConfig(persona=persona, layout=layout, outtype=outtype, force=force))
    if result.skipped:
        console.info(f"{result.gguf_path} is up to date (use --force to convert again)")
    console.out(
        size_line(result.file_type, result.size_bytes, result.bits_per_weight, result.gguf_path)
    )
