"""Options shared by several commands, spelled once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from persona_export.layout import (
    DEFAULT_ADAPTER_DIR,
    DEFAULT_GGUF_DIR,
    DEFAULT_MERGED_DIR,
    check_persona,
)


def _persona(value: str | None) -> str | None:
    return None if value is None else check_persona(value)


Persona = Annotated[
    str,
    typer.Option(
        "--persona", "-p", help="Persona name, e.g. captain_codebeard.", callback=_persona
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

DEFAULTS = {
    "adapter_dir": DEFAULT_ADAPTER_DIR,
    "merged_dir": DEFAULT_MERGED_DIR,
    "gguf_dir": DEFAULT_GGUF_DIR,
}
