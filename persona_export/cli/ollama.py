"""`persona-export ollama`: register the persona's Modelfile with Ollama."""

from __future__ import annotations

import shlex
from typing import Annotated

import typer

from persona_export import console
from persona_export.cli._options import (
    ADAPTER_DIR,
    GGUF_DIR,
    MERGED_DIR,
    AdapterDir,
    GgufDir,
    MergedDir,
    ModelName,
    Persona,
    PersonasFile,
    layout,
)

EPILOG = (
    "Example: persona-export ollama --persona captain_codebeard --name "
    "captain-codebeard:latest   (or: make persona=NAME ollama)"
)


def ollama(
    persona: Persona,
    name: ModelName = None,
    require: Annotated[
        bool,
        typer.Option(
            "--require",
            help="Fail (exit 1) when Ollama is not available, instead of printing the command "
            "to run later.",
        ),
    ] = False,
    no_verify: Annotated[
        bool,
        typer.Option(
            "--no-verify",
            help="Register even without a passing verify report of this Modelfile and GGUF "
            "(the output says so).",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Register the Modelfile as it is: skip the checks of its manifest and of the "
            "verify report (FROM must still name the persona's own GGUF; the output says so).",
        ),
    ] = False,
    personas_file: PersonasFile = None,
    gguf_dir: GgufDir = GGUF_DIR,
    merged_dir: MergedDir = MERGED_DIR,
    adapter_dir: AdapterDir = ADAPTER_DIR,
) -> None:
    """Register gguf_models/<persona>/Modelfile with Ollama as a model.

    Uses the `ollama` CLI when it is on PATH (`ollama create NAME -f Modelfile`), else the
    REST API at $OLLAMA_HOST, else at Ollama's default address http://127.0.0.1:11434 when a
    server answers there (blob upload, then create; a silent server is given up after
    $PERSONA_EXPORT_OLLAMA_TIMEOUT seconds, default 600). With none of these, prints the
    command to run later and exits 0 (1 with --require). Prints the model name.

    Registers only the Modelfile the modelfile stage wrote (its manifest's content hashes),
    FROM the persona's own GGUF, after a passing verify of exactly those files (--no-verify,
    --force relax this).
    """
    from persona_export.stages.ollama import OllamaConfig, register

    result = register(
        OllamaConfig(
            persona=persona,
            model_name=name,
            layout=layout(adapter_dir, merged_dir, gguf_dir),
            personas_file=personas_file,
            require=require,
            verify=not no_verify,
            force=force,
        )
    )
    for message in result.warnings:
        console.warn(message)
    if result.method == "none":
        console.warn("Ollama is not available here (no `ollama` on PATH, OLLAMA_HOST not set)")
        console.info("to register the model later, run:")
        console.out(shlex.join(result.command))
        return
    how = "the ollama CLI" if result.method == "cli" else f"the Ollama REST API at {result.address}"
    console.info(f"registered {result.model_name} with {how}; try: ollama run {result.model_name}")
    console.out(result.model_name)
