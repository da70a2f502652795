"""`persona-export verify`: prove the export behaves like base + adapter."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from persona_export import console
from persona_export.cli._app import app
from persona_export.cli._options import DEFAULTS, AdapterDir, Force, GgufDir, MergedDir, Persona
from persona_export.stages.verify import DEFAULT_MAX_TOKENS, Check

QuantTypes = Annotated[
    list[str] | None,
    typer.Option(
        "--quant",
        "-q",
        help="Quantized GGUF to compare with the F16 one, repeatable (default: every "
        "<persona>-<TYPE>.gguf there is).",
    ),
]
KlMax = Annotated[
    list[str] | None,
    typer.Option(
        "--kl-max",
        metavar="TYPE=VALUE",
        help="Bound on the mean KL divergence F16 -> TYPE, repeatable, e.g. Q4_K_M=0.2 "
        "(defaults per type: templates/verify_bounds.toml).",
    ),
]
PromptsFile = Annotated[
    Path | None,
    typer.Option(
        "--prompts",
        help="TOML file of conversations to verify with, replacing templates/verify_prompts.toml.",
    ),
]
MaxTokens = Annotated[
    int,
    typer.Option(
        "--max-tokens",
        help="Token limit of each answer in the generation check: an answer that reaches it "
        "without a stop fails.",
    ),
]


def check_lines(checks: Sequence[Check]) -> list[str]:
    """The short table: one line per check (name, status, figures)."""
    width = max([len(c.name) for c in checks] + [5])
    lines = [f"{'check':<{width}}  {'status':<7}  result"]
    lines += [f"{c.name:<{width}}  {c.status:<7}  {c.summary}" for c in checks]
    return lines


@app.command(
    epilog="Example: persona-export verify --persona captain_codebeard --quant Q4_K_M   "
    "(or: make persona=NAME verify)",
)
def verify(
    persona: Persona,
    quant: QuantTypes = None,
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
    prompts: PromptsFile = None,
    max_tokens: MaxTokens = DEFAULT_MAX_TOKENS,
    threads: Annotated[
        int | None,
        typer.Option("--threads", help="Threads for llama.cpp (default: every core)."),
    ] = None,
    hf_dtype: Annotated[
        str,
        typer.Option(
            "--hf-dtype",
            help="Type the PEFT and merged models run in: float32 (exact; 4 bytes per "
            "parameter of RAM) or bfloat16 (half the memory, looser figures).",
        ),
    ] = "float32",
    adapter_dir: AdapterDir = DEFAULTS["adapter_dir"],
    output_dir_base: MergedDir = DEFAULTS["merged_dir"],
    gguf_dir: GgufDir = DEFAULTS["gguf_dir"],
    force: Force = False,
) -> None:
    """Check that the export behaves like base + adapter; write gguf_models/<persona>/verify.json.

    Compares next-token logits on fixed prompts in the persona's chat format: PEFT (unmerged) vs the merged model, the merged model vs the F16 GGUF in llama.cpp (NMSE, top-1), the F16 GGUF vs each quantized one (KL, top-1). Checks that the Modelfile's TEMPLATE (Go, as Ollama renders it) and the GGUF's template (llama-server) render like the HF chat template, that llama.cpp tokenizes the prompt into the same ids, and that greedy answers end on a stop. Prints a table; exits 1 when a check fails. Checks that cannot run here (no Go) are reported as skipped.
    """
    from persona_export.errors import VerificationError
    from persona_export.layout import Layout
    from persona_export.stages.verify import VerifyConfig, run_verify
    from persona_export.verify.data import parse_kl_overrides

    layout = Layout(adapter_dir=adapter_dir, merged_base=output_dir_base, gguf_base=gguf_dir)
    config = VerifyConfig(
        persona=persona,
        layout=layout,
        quants=tuple(quant or ()),
        source_type=source,
        base_model=base_model_id,
        prompts_file=prompts,
        peft_nmse_max=peft_nmse_max,
        nmse_max=nmse_max,
        top1_min=top1_min,
        kl_max=parse_kl_overrides(kl_max or []),
        max_tokens=max_tokens,
        threads=threads,
        hf_dtype=hf_dtype,
        force=force,
    )
    result = run_verify(config)
    if result.skipped:
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
