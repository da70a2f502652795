"""`persona-export export`: the whole chain, for one persona or every adapter found."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from persona_export import console
from persona_export.cli._app import app
from persona_export.cli._options import DEFAULTS, AdapterDir, Force, GgufDir, MergedDir
from persona_export.cli.modelfile import PersonasFile
from persona_export.cli.verify import KlMax, MaxTokens, PromptsFile, check_lines
from persona_export.layout import DEFAULT_BASE_MODEL, check_persona
from persona_export.stages.export import PersonaExport
from persona_export.stages.verify import DEFAULT_MAX_TOKENS


def _persona(value: str | None) -> str | None:
    return None if value is None else check_persona(value)


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _files(files: tuple[Path, ...]) -> str:
    existing = [p for p in files if p.is_file()]
    if not existing:
        return ""
    if len(existing) > 3 and len({p.parent for p in existing}) == 1:
        total = sum(p.stat().st_size for p in existing)
        return f"{existing[0].parent}/ ({len(existing)} files, {_size(total)})"
    return ", ".join(f"{p} ({_size(p.stat().st_size)})" for p in existing)


def summary_lines(export: PersonaExport) -> list[str]:
    """The summary of one persona: a line per stage (status, time, detail, files), then the
    verify table."""
    state = "exported" if export.ok else "FAILED"
    lines = [f"{export.persona}: {state} in {export.seconds:.1f} s"]
    for stage in export.stages:
        lines.append(
            f"  {stage.stage:<10} {stage.status:<11} {stage.seconds:6.1f} s  {stage.detail}"
        )
        if files := _files(stage.files):
            lines.append(f"  {'':<10} {'':<11} {'':>8}  {files}")
    if export.verify is not None:
        lines += ["  " + line for line in check_lines(export.verify.checks)]
    return lines


@app.command(
    epilog="Example: persona-export export --persona captain_codebeard   (or: make "
    "persona=NAME export; every adapter: persona-export export --all)",
)
def export(
    persona: Annotated[
        str | None,
        typer.Option(
            "--persona", "-p", help="Persona to export, e.g. captain_codebeard.", callback=_persona
        ),
    ] = None,
    all_personas: Annotated[
        bool,
        typer.Option(
            "--all", help="Export every <persona>_final_adapter/ found in the adapter folder."
        ),
    ] = False,
    base_model_id: Annotated[
        str,
        typer.Option(
            "--base-model-id",
            "--base_model_id",
            help="Base model: a local folder or a Hugging Face hub id.",
        ),
    ] = DEFAULT_BASE_MODEL,
    quant: Annotated[
        list[str] | None,
        typer.Option(
            "--quant",
            "-q",
            help="Quantization type, repeatable (default Q4_K_M); the Modelfile uses the first.",
        ),
    ] = None,
    outtype: Annotated[
        str,
        typer.Option("--outtype", help="Unquantized GGUF type: f16, bf16, f32 or auto."),
    ] = "f16",
    personas_file: PersonasFile = None,
    template: Annotated[
        str | None,
        typer.Option(
            "--template",
            help="Modelfile TEMPLATE: a Go template file or a shipped format name, instead of "
            "detecting the chat format.",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Ollama model name (one persona only)."),
    ] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the verify checks.")] = False,
    max_tokens: MaxTokens = DEFAULT_MAX_TOKENS,
    kl_max: KlMax = None,
    prompts: PromptsFile = None,
    require_ollama: Annotated[
        bool,
        typer.Option(
            "--require-ollama", help="Fail when Ollama is not available to register the model."
        ),
    ] = False,
    adapter_dir: AdapterDir = DEFAULTS["adapter_dir"],
    output_dir_base: MergedDir = DEFAULTS["merged_dir"],
    gguf_dir: GgufDir = DEFAULTS["gguf_dir"],
    force: Force = False,
) -> None:
    """Run merge, gguf, quantize, modelfile, verify and ollama for a persona (or --all).

    Each stage is skipped when its output is up to date (a re-run with nothing changed takes seconds); verify runs before the model is registered, so a failing export never reaches Ollama. Prints a summary per persona: each stage's status, time and files, and the verify table. Exits 1 when any persona failed.
    """
    from persona_export.errors import PersonaExportError, UsageError, VerificationError
    from persona_export.layout import Layout
    from persona_export.stages.export import ExportConfig, run_export
    from persona_export.verify.data import parse_kl_overrides

    if (persona is None) == (not all_personas):
        raise UsageError(
            "say which persona to export: --persona NAME or --all",
            "e.g. persona-export export --persona captain_codebeard",
        )
    layout = Layout(adapter_dir=adapter_dir, merged_base=output_dir_base, gguf_base=gguf_dir)
    personas = (persona,) if persona else tuple(layout.personas_with_adapters())
    config = ExportConfig(
        personas=personas,
        layout=layout,
        base_model=base_model_id,
        quants=tuple(q.upper() for q in quant or ("Q4_K_M",)),
        outtype=outtype,
        personas_file=personas_file,
        template=template,
        model_name=name,
        verify=not no_verify,
        verify_max_tokens=max_tokens,
        verify_kl_max=parse_kl_overrides(kl_max or []),
        verify_prompts_file=prompts,
        require_ollama=require_ollama,
        force=force,
    )
    result = run_export(config)
    for number, done in enumerate(result.exports):
        if number:
            console.out("")
        for line in summary_lines(done):
            console.out(line)
    if result.ok:
        return
    if len(result.exports) == 1:
        (done,) = result.exports
        if done.error is not None:
            raise done.error
        raise VerificationError(
            f"{done.persona}: verify failed; the model was not registered with Ollama",
            f"see the table above and {done.verify.report if done.verify else 'verify.json'}",
        )
    reasons = []
    for done in result.exports:
        if not done.ok:
            reasons.append(f"{done.persona} ({done.error.message if done.error else 'verify'})")
    raise PersonaExportError(
        f"{len(reasons)} of {len(result.exports)} personas failed: " + "; ".join(reasons),
        "see the summary above; fix one and re-run: finished stages are skipped",
    )
