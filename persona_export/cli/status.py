"""`persona-export status`: what is exported, what is stale and why, for every persona."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from persona_export import console
from persona_export.cli._options import (
    ADAPTER_DIR,
    GGUF_DIR,
    MERGED_DIR,
    AdapterDir,
    GgufDir,
    MergedDir,
    OptionalPersona,
    layout,
)
from persona_export.cli._output import record
from persona_export.cli._table import Table

if TYPE_CHECKING:
    from persona_export.stages.status import PersonaStatus
    from persona_export.stages.status_details import OllamaStatus

EPILOG = "Example: persona-export status   (or: make status)"


def _ollama_row(persona: PersonaStatus, ollama: OllamaStatus | None) -> tuple[str, str, str]:
    if persona.model_name is None:
        return ("ollama", "missing", "no Modelfile yet")
    if ollama is None:
        return ("ollama", "unknown", f"{persona.model_name} (Ollama not asked: --no-ollama)")
    if not ollama.reachable:
        where = f"Ollama does not answer at {ollama.address}"
        return ("ollama", "unknown", f"{persona.model_name}; {where}")
    state = "registered" if persona.registered else "not registered"
    return ("ollama", state, f"{persona.model_name} (Ollama {ollama.version} at {ollama.address})")


def persona_lines(persona: PersonaStatus, ollama: OllamaStatus | None) -> list[str]:
    """The block of one persona: a headline, then a row per stage (state, then what changed
    or what is there) within 100 columns."""
    chain = list(persona.stages)
    not_fresh = [s.stage for s in chain if s.state not in ("up to date",)]
    if all(s.state == "missing" for s in chain):
        overall = "not exported"
    elif not not_fresh:
        overall = "up to date"
    else:
        overall = "; ".join(
            f"{state}: {', '.join(s.stage for s in chain if s.state == state)}"
            for state in ("stale", "unknown", "missing")
            if any(s.state == state for s in chain)
        )
    lines = [f"{persona.persona}: {overall}"]
    rows = [("stage", "state", "detail")]
    if persona.adapter is not None:
        rows.append(("adapter", "found", str(persona.adapter)))
    else:
        rows.append(("adapter", "missing", "no <persona>_final_adapter/ in the adapter folder"))
    for stage in chain:
        text = "; ".join(t for t in (stage.reason, stage.detail) if t)
        rows.append((stage.stage, stage.state, text))
    rows.append(_ollama_row(persona, ollama))
    table = Table(rows)
    for row in rows:
        lines += table.row(row)
    return lines


def status(
    persona: OptionalPersona = None,
    no_ollama: Annotated[
        bool,
        typer.Option("--no-ollama", help="Do not ask Ollama which models it has."),
    ] = False,
    adapter_dir: AdapterDir = ADAPTER_DIR,
    output_dir_base: MergedDir = MERGED_DIR,
    gguf_dir: GgufDir = GGUF_DIR,
) -> None:
    """Show every persona in the adapter and output folders: which stages are up to date or stale (and what changed), sizes, the Modelfile's quantization, verify's verdict, and whether Ollama has the model.

    Reads the manifests the stages wrote and compares the files they recorded with the files there now by size and time, never hashing a big file ("unknown" where only hashing could tell: `export` checks by content). Asks the Ollama server at OLLAMA_HOST, else at Ollama's default address, which models it has.
    """
    from persona_export.stages.status import StatusConfig, run

    result = run(
        StatusConfig(
            layout=layout(adapter_dir, output_dir_base, gguf_dir),
            personas=(persona,) if persona else None,
            ollama=not no_ollama,
        )
    )
    record(**result.to_json())
    if not result.personas:
        console.info(f"no personas: nothing in {adapter_dir}, {output_dir_base} or {gguf_dir}")
    for number, found in enumerate(result.personas):
        if number:
            console.out("")
        for line in persona_lines(found, result.ollama):
            console.out(line)
    if result.ollama is not None and result.ollama.reachable:
        console.info(
            f"Ollama {result.ollama.version} at {result.ollama.address}: "
            f"{len(result.ollama.models)} models"
        )
    elif result.ollama is not None:
        console.info(f"Ollama: nothing answers at {result.ollama.address} ({result.ollama.error})")
