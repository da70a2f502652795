"""`persona-export vendor`: fetch, verify and build the pinned llama.cpp."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from persona_export import console
from persona_export.cli._output import record

EPILOG = "Example: persona-export vendor   (or: make vendor)"


def vendor(
    sdist: Annotated[
        Path | None,
        typer.Option(help="Use this local copy of the pinned sdist instead of downloading."),
    ] = None,
    no_build: Annotated[
        bool, typer.Option("--no-build", help="Only fetch, verify and extract the sources.")
    ] = False,
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", help="Parallel build jobs.")] = None,
) -> None:
    """Fetch the pinned llama.cpp (sha256-checked) and build its tools into the cache."""
    from persona_export.llamacpp import vendor as vendoring

    result = vendoring.ensure(sdist=sdist, build_tools=not no_build, jobs=jobs)
    record(
        vendor={
            "commit": result.commit,
            "source_dir": str(result.source_dir),
            "bin_dir": str(result.bin_dir),
            "downloaded": result.downloaded,
            "built": result.built,
        }
    )
    state = "built" if result.built else "up to date"
    console.info(f"llama.cpp {result.commit}: sources {result.source_dir}; tools {state}")
    console.out(str(result.bin_dir))
