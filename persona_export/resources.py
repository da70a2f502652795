"""Where the tool finds its own files: the checkout (or ``PERSONA_EXPORT_HOME``) and the data
installed inside the package (``templates/`` and the llama.cpp lock file)."""

from __future__ import annotations

import os
from pathlib import Path

from persona_export.errors import InvalidInputError

PACKAGE_DIR = Path(__file__).resolve().parent


def repo_root() -> Path:
    """The project folder holding ``vendor/`` and ``templates/`` (the source checkout, or
    PERSONA_EXPORT_HOME)."""
    if env := os.environ.get("PERSONA_EXPORT_HOME"):
        return Path(env)
    return PACKAGE_DIR.parent


def templates_dir() -> Path:
    """The ``templates/`` folder: the checkout's, else the copy installed in the package."""
    for candidate in (repo_root() / "templates", PACKAGE_DIR / "_templates"):
        if (candidate / "Modelfile.j2").is_file():
            return candidate
    raise InvalidInputError(
        "the templates/ folder (Modelfile.j2, formats/, personas.toml) was not found",
        "run from a persona-export checkout or set PERSONA_EXPORT_HOME to one",
    )
