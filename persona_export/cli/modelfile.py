"""`persona-export modelfile`: write the persona's Ollama Modelfile."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from persona_export import console
from persona_export.cli._app import app
from persona_export.cli._options import DEFAULTS, AdapterDir, Force, GgufDir, MergedDir, Persona

Quant = Annotated[
    str,
    typer.Option(
        "--quant",
        "-q",
        help="Which quantized GGUF the Modelfile's FROM names: gguf_models/<persona>/"
        "<persona>-<QUANT>.gguf (it must exist).",
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


@app.command(
    epilog="Example: persona-export modelfile --persona captain_codebeard --quant Q4_K_M   "
    "(or: make persona=NAME modelfile)",
)
def modelfile(
    persona: Persona,
    quant: Quant = "Q4_K_M",
    template: Annotated[
        str | None,
        typer.Option(
            "--template",
            help="Use this Ollama TEMPLATE (a Go text/template file) instead of detecting the "
            "chat format, or name a shipped format (phi4mini, phi3, chatml, llama3, gemma, "
            "mistral, llama2).",
        ),
    ] = None,
    stop: Annotated[
        list[str] | None,
        typer.Option(
            "--stop",
            help="An extra stop string, repeatable (useful with a custom --template).",
        ),
    ] = None,
    personas_file: PersonasFile = None,
    gguf_dir: GgufDir = DEFAULTS["gguf_dir"],
    merged_dir: MergedDir = DEFAULTS["merged_dir"],
    adapter_dir: AdapterDir = DEFAULTS["adapter_dir"],
    force: Force = False,
) -> None:
    """Write gguf_models/<persona>/Modelfile: FROM the quantized GGUF, the chat TEMPLATE and
    stop strings detected from the tokenizer, and the persona's SYSTEM prompt and parameters.

    The chat format is read from merged_models/<persona>/ (or from the GGUF when there is no
    merged folder). Personas come from templates/personas.toml, then ./personas.toml, then
    --personas FILE. Prints the Modelfile's path.
    """
    from persona_export.layout import Layout
    from persona_export.stages.modelfile import ModelfileConfig, write_modelfile

    layout = Layout(adapter_dir=adapter_dir, merged_base=merged_dir, gguf_base=gguf_dir)
    result = write_modelfile(
        ModelfileConfig(
            persona=persona,
            quant=quant,
            layout=layout,
            template=template,
            stops=tuple(stop or ()),
            personas_file=personas_file,
            force=force,
        )
    )
    for note in result.notes:
        console.info(note)
    for warning in result.warnings:
        console.warn(warning)
    console.info("stop: " + ", ".join(result.stops))
    if result.up_to_date:
        console.info(f"{result.modelfile} is up to date (use --force to write it again)")
    else:
        console.info(f"wrote {result.modelfile} (ollama create {result.model_name} -f ...)")
    console.out(str(result.modelfile))
