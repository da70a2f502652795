"""`persona-export verify`: prove the export behaves like base + adapter."""

from __future__ import annotations

from collections.abc import Sequence
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
    HfDtype,
    KlMax,
    MaxTokens,
    MergedDir,
    Persona,
    PersonasFile,
    PromptsFile,
    RetentionMin,
    Threads,
    layout,
)
from persona_export.cli._output import record
from persona_export.cli._table import Table
from persona_export.stages.verify import DEFAULT_MAX_TOKENS, Check

EPILOG = (
    "Example: persona-export verify --persona captain_codebeard --quant Q4_K_M   "
    "(or: make persona=NAME verify)"
)
VerifyQuants = Annotated[
    list[str] | None,
    typer.Option(
        "--quant",
        "-q",
        help="Quantized GGUF to compare with the F16 one, repeatable (default: every "
        "<persona>-<TYPE>.gguf there is); auto: the type `quantize --type auto` chose.",
    ),
]


def check_lines(checks: Sequence[Check], indent: str = "") -> list[str]:
    """The short table: one row per check (name, status, figures), within 100 columns."""
    rows = [("check", "status", "result")] + [(c.name, c.status, c.summary) for c in checks]
    table = Table(rows, indent=indent)
    return [line for row in rows for line in table.row(row)]


def verify(
    persona: Persona,
    quant: VerifyQuants = None,
    base_model_id: Annotated[
        str | None,
        typer.Option(
            "--base-model-id",
            "--base_model_id",
            help="Base model for the PEFT check: a local folder or a hub id (default: the one "
            "the merge recorded).",
        ),
    ] = None,
    source: Annotated[
        str,
        typer.Option("--source", help="The unquantized GGUF compared with HF: F16, BF16 or F32."),
    ] = "F16",
    nmse_max: Annotated[
        float | None,
        typer.Option(
            "--nmse-max", help="Bound on NMSE(merged HF, F16 GGUF) of the logits (default 1e-3)."
        ),
    ] = None,
    top1_min: Annotated[
        float | None,
        typer.Option(
            "--top1-min",
            help="Least share of positions where HF and the F16 GGUF pick the same next token "
            "(default 0.99).",
        ),
    ] = None,
    peft_nmse_max: Annotated[
        float | None,
        typer.Option(
            "--peft-nmse-max",
            help="Bound on NMSE(PEFT base + adapter, merged model) of the logits (default 1e-3 "
            "for 16-bit merged weights, 1e-6 for float32).",
        ),
    ] = None,
    kl_max: KlMax = None,
    retention_min: RetentionMin = None,
    prompts: PromptsFile = None,
    personas_file: PersonasFile = None,
    max_tokens: MaxTokens = DEFAULT_MAX_TOKENS,
    threads: Threads = None,
    hf_dtype: HfDtype = "float32",
    adapter_dir: AdapterDir = ADAPTER_DIR,
    output_dir_base: MergedDir = MERGED_DIR,
    gguf_dir: GgufDir = GGUF_DIR,
    force: Force = False,
) -> None:
    """Check that the export behaves like base + adapter; write gguf_models/<persona>/verify.json.

    Compares next-token logits on fixed prompts (and the persona's own verify_prompts) in the persona's chat format: PEFT (unmerged) vs the merged model, the merged model vs the F16 GGUF in llama.cpp (NMSE, top-1), the F16 GGUF vs each quantized one (KL, persona retention against the base without the adapter, top-1, greedy answers identical). Checks that the Modelfile's TEMPLATE (Go, as Ollama renders it) and the GGUF's template (llama-server) render like the HF chat template, that llama.cpp tokenizes the prompt into the same ids, and that greedy answers end on a stop. Prints a table; exits 1 when a check fails. Checks that cannot run here (no Go) are reported as skipped.
    """
    from persona_export.errors import VerificationError
    from persona_export.stages.verify import VerifyConfig, run
    from persona_export.verify.data import parse_kl_overrides, parse_retention_overrides

    config = VerifyConfig(
        persona,
        layout=layout(adapter_dir, output_dir_base, gguf_dir),
        quants=tuple(quant or ()),
        source_type=source,
        base_model=base_model_id,
        prompts_file=prompts,
        peft_nmse_max=peft_nmse_max,
        nmse_max=nmse_max,
        top1_min=top1_min,
        kl_max=parse_kl_overrides(kl_max or []),
        retention_min=parse_retention_overrides(retention_min or []),
        personas_file=personas_file,
        max_tokens=max_tokens,
        threads=threads,
        hf_dtype=hf_dtype,
        force=force,
    )
    result = run(config)
    record(result=result.to_json())
    if result.up_to_date:
        console.info(f"{result.report} is up to date and passed (use --force to verify again)")
    for line in check_lines(result.checks):
        console.out(line)
    console.out(f"report: {result.report}")
    if not result.passed:
        names = ", ".join(c.name for c in result.failed)
        raise VerificationError(
            f"{persona}: {len(result.failed)} of {len(result.checks)} checks failed ({names})",
            f"see the table above and {result.report}",
        )
