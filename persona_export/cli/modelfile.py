"""`persona-export modelfile`: write the persona's Ollama Modelfile."""

from __future__ import annotations

from typing import Annotated

import typer

from persona_export import console
from persona_export.cli._options import (
    ADAPTER_DIR,
    GGUF_DIR,
    MERGED_DIR,
    QUANT,
    AdapterDir,
    Force,
    GgufDir,
    MergedDir,
    Persona,
    PersonasFile,
    Template,
    layout,
)
from persona_export.cli._output import record

EPILOG = (
    "Example: persona-export modelfile --persona captain_codebeard --quant Q4_K_M   "
    "(or: make persona=NAME modelfile)"
)

Quant = Annotated[
    str,
    typer.Option(
        "--quant",
        "-q",
        help="Which quantized GGUF the Modelfile's FROM names: gguf_models/<persona>/"
        "<persona>-<QUANT>.gguf (it must exist); auto: the type `quantize --type auto` chose.",
    ),
]


def modelfile(
    persona: Persona,
    quant: Quant = QUANT,
    template: Template = None,
    stop: Annotated[
        list[str] | None,
        typer.Option(
            "--stop",
            help="An extra stop string, repeatable (useful with a custom --template).",
        ),
    ] = None,
    personas_file: PersonasFile = None,
    gguf_dir: GgufDir = GGUF_DIR,
    merged_dir: MergedDir = MERGED_DIR,
    adapter_dir: AdapterDir = ADAPTER_DIR,
    force: Force = False,
) -> None:
    """Write gguf_models/<persona>/Modelfile: FROM the quantized GGUF, the chat TEMPLATE and
    stop strings detected from the tokenizer, and the persona's SYSTEM prompt and parameters.

    The chat format is read from merged_models/<persona>/ (or from the GGUF when there is no
    merged folder). Personas come from templates/personas.toml, then ./personas.toml, then
    --personas FILE. Prints the Modelfile's path.
    """
    from persona_export.stages.modelfile import ModelfileConfig, run

    result = run(
        ModelfileConfig(
            persona,
            quant=quant,
            layout=layout(adapter_dir, merged_dir, gguf_dir),
            template=template,
            stops=tuple(stop or ()),
            personas_file=personas_file,
            force=force,
        )
    )
    record(result=result.to_json())
    console.info("stop: " + ", ".join(result.stops))
    if result.up_to_date:
        console.info(f"{result.modelfile} is up to date (use --force to write it again)")
    else:
        console.info(f"wrote {result.modelfile} (ollama create {result.model_name} -f ...)")
    console.out(str(result.modelfile))
