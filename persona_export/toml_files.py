"""Reading a TOML file the user gives (personas, verify prompts and bounds): one error for
each way it can be wrong, in the tool's words (``tomllib`` raises RecursionError for a file
nested too deeply, which would otherwise surface as an internal error)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomllib

from persona_export.errors import InputNotFoundError, UsageError


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The TOML document in ``path`` (``what`` names the file in errors: "personas").

    Raises :class:`InputNotFoundError` when it is missing or unreadable, :class:`UsageError`
    when it is not valid TOML."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputNotFoundError(f"{what} file {path} not found", "give an existing file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputNotFoundError(f"cannot read {what} file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}", "fix the file's syntax") from exc
    except RecursionError as exc:
        raise UsageError(
            f"{path} is not valid TOML: it is nested too deeply", "fix the file's syntax"
        ) from exc
