"""`persona-export card`: the GGUF folder's model card and Ollama Hub files."""

from __future__ import annotations

from persona_export import console
from persona_export.cli._options import (
    GGUF_DIR,
    MERGED_DIR,
    Force,
    GgufDir,
    MergedDir,
    Persona,
    WorkDir,
    work_layout,
)
from persona_export.cli._output import record

EPILOG = "Example: persona-export card --persona captain_codebeard   (export runs it after verify)"


def card(
    persona: Persona,
    gguf_dir: GgufDir = GGUF_DIR,
    merged_dir: MergedDir = MERGED_DIR,
    work_dir: WorkDir = None,
    force: Force = False,
) -> None:
    """Write gguf_models/<persona>/README.md (the model card) and the files Ollama reads from a Hugging Face repository: template, system and params.

    The card says what the persona is (from the merge), how it was made (adapter, llama.cpp commit, each GGUF's type, size and bits per weight) and, when verify passed on these files, its figures; template, system and params say what the Modelfile says. Prints the files.
    """
    from persona_export.stages.card import CardConfig, run

    result = run(
        CardConfig(persona, layout=work_layout(work_dir, merged_dir, gguf_dir), force=force)
    )
    record(result=result.to_json())
    if result.up_to_date:
        console.info(f"{result.card} is up to date (use --force to write it again)")
    for path in (result.card, *result.hub_files):
        console.out(str(path))
