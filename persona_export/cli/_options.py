"""Options shared by several commands, each declared once (name, spellings, help, default).

A command takes them as ``Annotated`` parameters: ``persona: Persona``, ``force: Force =
False``, ``gguf_dir: GgufDir = GGUF_DIR``. Defaults live in :mod:`persona_export.layout`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from persona_export.layout import (
    DEFAULT_ADAPTER_DIR,
    DEFAULT_BASE_MODEL,
    DEFAULT_GGUF_DIR,
    DEFAULT_MERGED_DIR,
    DEFAULT_QUANT,
    Layout,
    check_persona,
)

ADAPTER_DIR = DEFAULT_ADAPTER_DIR
MERGED_DIR = DEFAULT_MERGED_DIR
GGUF_DIR = DEFAULT_GGUF_DIR
BASE_MODEL = DEFAULT_BASE_MODEL
QUANT = DEFAULT_QUANT


def _persona(value: str | None) -> str | None:
    return None if value is None else check_persona(value)


Persona = Annotated[
    str,
    typer.Option(
        "--persona", "-p", help="Persona name, e.g. captain_codebeard.", callback=_persona
    ),
]
OptionalPersona = Annotated[
    str | None,
    typer.Option(
        "--persona", "-p", help="Persona to export, e.g. captain_codebeard.", callback=_persona
    ),
]
AdapterDir = Annotated[
    Path,
    typer.Option(
        "--adapter-dir",
        "--adapter_dir",
        help="Folder holding <persona>_final_adapter/ folders.",
    ),
]
MergedDir = Annotated[
    Path,
    typer.Option(
        "--output-dir-base",
        "--output_dir_base",
        "--merged-dir",
        help="Folder for merged models (<dir>/<persona>/).",
    ),
]
GgufDir = Annotated[
    Path,
    typer.Option("--gguf-dir", help="Folder for GGUFs and Modelfiles (<dir>/<persona>/)."),
]
Force = Annotated[
    bool, typer.Option("--force", help="Redo the stage even when its output is up to date.")
]
BaseModel = Annotated[
    str,
    typer.Option(
        "--base-model-id",
        "--base_model_id",
        help="Base model: a local folder or a Hugging Face hub id (from the local cache "
        "when HF_HUB_OFFLINE=1).",
    ),
]
QuantTypes = Annotated[
    list[str] | None,
    typer.Option(
        "--quant",
        "-q",
        help=f"Quantization type, repeatable (default {DEFAULT_QUANT}); the Modelfile uses the "
        "first. auto: the smallest type of --ladder that keeps the persona (verify's KL and "
        "retention bounds).",
    ),
]
PersonasFile = Annotated[
    Path | None,
    typer.Option(
        "--personas",
        help="A personas TOML file read after templates/personas.toml and ./personas.toml; "
        "its definitions win.",
    ),
]
Template = Annotated[
    str | None,
    typer.Option(
        "--template",
        help="Use this Ollama TEMPLATE (a Go text/template file) instead of detecting the chat "
        "format, or name a shipped format (phi4mini, phi3, chatml, llama3, gemma, mistral, "
        "llama2).",
    ),
]
ModelName = Annotated[
    str | None,
    typer.Option(
        "--name",
        help="Ollama model name, name[:tag] in lower case (default: the persona's ollama_name, "
        "else the persona name).",
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
RetentionMin = Annotated[
    list[str] | None,
    typer.Option(
        "--retention-min",
        metavar="TYPE=VALUE",
        help="Least persona retention F16 -> TYPE (1: the adapter's effect kept whole, 0: the "
        "base model), repeatable, e.g. Q4_K_M=0.8 (default 0.9: templates/verify_bounds.toml).",
    ),
]
Ladder = Annotated[
    list[str] | None,
    typer.Option(
        "--ladder",
        metavar="TYPE,TYPE,...",
        help="With auto: the types to try, smallest first (default: templates/quant_ladder.toml"
        ": Q3_K_M, Q4_K_S, Q4_K_M, Q5_K_M, Q6_K, Q8_0).",
    ),
]
KeepCandidates = Annotated[
    bool,
    typer.Option(
        "--keep-candidates",
        help="With auto: keep the GGUFs of the types tried and not chosen (default: removed).",
    ),
]
Imatrix = Annotated[
    str | None,
    typer.Option(
        "--imatrix",
        metavar="FILE|auto",
        help="Importance matrix: a file from llama-imatrix, or auto to make one from the "
        "persona (its SYSTEM prompt and the F16's answers to templates/calibration_prompts.toml"
        "). Needed by IQ1/IQ2/IQ3_XXS and Q2_K_S. On the demo personas it lowered KL but did "
        "not keep more of the persona (README: 'Persona fidelity'); verify judges both.",
    ),
]
Calibration = Annotated[
    Path | None,
    typer.Option(
        "--calibration",
        help="Make the importance matrix from this text (e.g. the persona's training data) "
        "instead of the persona's own answers; implies --imatrix auto.",
    ),
]
HfDtype = Annotated[
    str,
    typer.Option(
        "--hf-dtype",
        help="Type the Hugging Face models (PEFT, merged, base) run in, one layer at a time: "
        "float32 (exact) or bfloat16 (half the memory for a layer and the logits, looser "
        "figures).",
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
NoVerify = Annotated[bool, typer.Option("--no-verify", help="Skip the verify checks.")]
Threads = Annotated[
    int | None,
    typer.Option("--threads", help="Threads for llama.cpp (default: every core)."),
]


def imatrix_option(value: str | None) -> tuple[Path | None, bool]:
    """``--imatrix``: (the file, False), or (None, True) for ``auto``, or (None, False)."""
    if value is None:
        return None, False
    if value.strip().lower() == "auto":
        return None, True
    return Path(value), False


def layout(adapter_dir: Path, merged_dir: Path, gguf_dir: Path = GGUF_DIR) -> Layout:
    """The project's folders from the three folder options."""
    return Layout(adapter_dir=adapter_dir, merged_base=merged_dir, gguf_base=gguf_dir)


def upper(values: list[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """A repeatable type option as upper-case names (``default`` when not given)."""
    return tuple(v.upper() for v in values) if values else default


WorkDir = Annotated[
    Path | None,
    typer.Option(
        "--work-dir",
        help="A project folder holding trained_adapters/, merged_models/ and gguf_models/ "
        "(e.g. demo_work after `make demo`); replaces --merged-dir and --gguf-dir.",
    ),
]


def work_layout(work_dir: Path | None, merged_dir: Path, gguf_dir: Path) -> Layout:
    """The project's folders from ``--work-dir`` (the demo's layout) or the folder options."""
    if work_dir is None:
        return layout(ADAPTER_DIR, merged_dir, gguf_dir)
    if merged_dir != MERGED_DIR or gguf_dir != GGUF_DIR:
        from persona_export.errors import UsageError

        raise UsageError(
            "--work-dir replaces --merged-dir and --gguf-dir: give one or the other",
            f"e.g. --work-dir {work_dir}",
        )
    return layout(work_dir / ADAPTER_DIR, work_dir / MERGED_DIR, work_dir / GGUF_DIR)


# Every command takes these three (added by cli/_output.with_output_options).
JsonOutput = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print one JSON document on stdout (its keys: README, 'JSON output'); every other "
        "line goes to stderr.",
    ),
]
Quiet = Annotated[
    bool,
    typer.Option("--quiet", help="Show only warnings, errors and the result (no progress)."),
]
Verbose = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        help="Also show the external commands run and the libraries' own output (their "
        "progress bars and warnings).",
    ),
]
