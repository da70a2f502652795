"""`persona-export export`: the whole chain, for one persona or every adapter found."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from persona_export import console
from persona_export.cli._options import (
    ADAPTER_DIR,
    BASE_MODEL,
    GGUF_DIR,
    MERGED_DIR,
    QUANT,
    AdapterDir,
    BaseModel,
    Calibration,
    Force,
    GgufDir,
    Imatrix,
    KeepCandidates,
    KlMax,
    Ladder,
    MaxTokens,
    MergedDir,
    ModelName,
    NoVerify,
    OptionalPersona,
    PersonasFile,
    PromptsFile,
    QuantTypes,
    RetentionMin,
    Template,
    imatrix_option,
    layout,
    upper,
)
from persona_export.cli._output import record
from persona_export.cli._table import Table, size
from persona_export.cli.verify import check_lines
from persona_export.stages.export import DEFAULT_MAX_TOKENS, PersonaExport

EPILOG = (
    "Example: persona-export export --persona captain_codebeard   (or: make "
    "persona=NAME export; every adapter: persona-export export --all)"
)


def _files(outputs: tuple[Path, ...]) -> list[str]:
    """Each output with its size; a folder of many files as one entry."""
    entries = []
    for path in outputs:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file())
            if len(files) > 3:
                total = sum(p.stat().st_size for p in files)
                entries.append(f"{path}/ ({len(files)} files, {size(total)})")
                continue
            entries += [f"{p} ({size(p.stat().st_size)})" for p in files]
        elif path.is_file():
            entries.append(f"{path} ({size(path.stat().st_size)})")
    return entries


def summary_lines(export: PersonaExport) -> list[str]:
    """The summary of one persona, in :data:`~persona_export.cli._table.WIDTH` columns: a
    row per stage (status, time, detail), its files and warnings under it, then the verify
    table.
    Built from each stage's generic fields, so a stage's new figures need nothing here."""
    state = "exported" if export.ok else "FAILED"
    lines = [f"{export.persona}: {state} in {export.seconds:.1f} s"]
    rows = [("stage", "status", "time", "detail")] + [
        (s.stage, s.status.value, f"{s.seconds:.1f} s", s.detail) for s in export.stages
    ]
    table = Table(rows, right=(2,))
    lines += table.row(rows[0])
    for stage, row in zip(export.stages, rows[1:], strict=True):
        lines += table.row(row)
        for entry in _files(stage.outputs):
            lines += table.under(entry)
        for message in stage.warnings:  # shown as they happened too, long scrolled away
            lines += table.row(("", "", "", f"warning: {message}"))
    quantized = export.stage("quantize")
    if getattr(quantized, "ladder", ()):
        from persona_export.cli.quantize import ladder_lines

        lines += ["  " + line for line in ladder_lines(quantized.ladder)]  # type: ignore[union-attr]
    if export.verify is not None:
        lines += check_lines(export.verify.checks, indent="  ")
    disk = (
        f"  disk: {size(export.disk_bytes)} now, peak {size(export.disk_peak_bytes)} during the run"
    )
    if export.dropped:
        disk += f"; dropped (--keep): {', '.join(export.dropped)}"
    lines.append(disk)
    return lines


def parse_keep(value: str) -> frozenset[str]:
    """``--keep merged,f16`` -> the intermediates to keep (``all``, ``none`` also)."""
    from persona_export.stages.export import KEEPABLE

    names = {v.strip().lower() for v in value.split(",") if v.strip()}
    if names == {"all"}:
        return frozenset(KEEPABLE)
    if names <= {"none"}:
        return frozenset()
    return frozenset(names)


def export(
    persona: OptionalPersona = None,
    all_personas: Annotated[
        bool,
        typer.Option(
            "--all", help="Export every <persona>_final_adapter/ found in the adapter folder."
        ),
    ] = False,
    base_model_id: BaseModel = BASE_MODEL,
    quant: QuantTypes = None,
    outtype: Annotated[
        str,
        typer.Option("--outtype", help="Unquantized GGUF type: f16, bf16, f32 or auto."),
    ] = "f16",
    personas_file: PersonasFile = None,
    template: Template = None,
    name: ModelName = None,
    no_verify: NoVerify = False,
    max_tokens: MaxTokens = DEFAULT_MAX_TOKENS,
    kl_max: KlMax = None,
    retention_min: RetentionMin = None,
    ladder: Ladder = None,
    keep_candidates: KeepCandidates = False,
    imatrix: Imatrix = None,
    calibration: Calibration = None,
    prompts: PromptsFile = None,
    require_ollama: Annotated[
        bool,
        typer.Option(
            "--require-ollama", help="Fail when Ollama is not available to register the model."
        ),
    ] = False,
    keep: Annotated[
        str,
        typer.Option(
            "--keep",
            help="Intermediates to keep, comma-separated: merged (the merged model), f16 (the "
            "unquantized GGUF); 'none' drops both as soon as nothing needs them (their "
            "manifests stay, so a re-run with nothing changed is still a no-op).",
        ),
    ] = "merged,f16",
    adapter_dir: AdapterDir = ADAPTER_DIR,
    output_dir_base: MergedDir = MERGED_DIR,
    gguf_dir: GgufDir = GGUF_DIR,
    force: Force = False,
) -> None:
    """Run merge, gguf, quantize, modelfile, verify, card and ollama for a persona (or --all).

    Each stage is skipped when its output is up to date (a re-run with nothing changed takes seconds); --quant auto lets quantize choose the smallest type that keeps the persona; verify runs before the model is registered, so a failing export never reaches Ollama. Prints a summary per persona: each stage's status, time and files, and the verify table. Exits 1 when any persona failed.
    """
    from persona_export.errors import PersonaExportError, UsageError, VerificationError
    from persona_export.stages.base import Status
    from persona_export.stages.export import ExportConfig, run
    from persona_export.verify.data import parse_kl_overrides, parse_retention_overrides
    from persona_export.verify.ladder import parse_ladder

    if (persona is None) == (not all_personas):
        raise UsageError(
            "say which persona to export: --persona NAME or --all",
            "e.g. persona-export export --persona captain_codebeard",
        )
    project = layout(adapter_dir, output_dir_base, gguf_dir)
    imatrix_file, imatrix_auto = imatrix_option(imatrix)
    personas = (persona,) if persona else tuple(project.personas_with_adapters())
    config = ExportConfig(
        personas=personas,
        layout=project,
        base_model=base_model_id,
        quants=upper(quant, (QUANT,)),
        outtype=outtype,
        personas_file=personas_file,
        template=template,
        model_name=name,
        verify=not no_verify,
        verify_max_tokens=max_tokens,
        verify_kl_max=parse_kl_overrides(kl_max or []),
        verify_retention_min=parse_retention_overrides(retention_min or []),
        ladder=parse_ladder(ladder or []),
        keep_candidates=keep_candidates,
        imatrix=imatrix_file,
        imatrix_auto=imatrix_auto,
        calibration=calibration,
        verify_prompts_file=prompts,
        require_ollama=require_ollama,
        force=force,
        keep=parse_keep(keep),
    )
    result = run(config)
    record(personas=[done.to_json() for done in result.exports])
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
        failed = next(s for s in done.stages if s.status is Status.FAILED)
        if failed.stage != "verify":  # quantize --quant auto: no type passed
            raise VerificationError(
                f"{done.persona}: {failed.stage} failed ({failed.detail}); the model was not "
                "registered with Ollama",
                "see the summary above",
            )
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
