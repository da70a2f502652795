"""Where the tool talks: data to stdout, progress and warnings to stderr; and the one
reading of ``PERSONA_EXPORT_DEBUG``."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence

DEBUG_VAR = "PERSONA_EXPORT_DEBUG"
# Values of DEBUG_VAR that mean "off" (case and surrounding blanks ignored); unset is off too.
_OFF = frozenset({"", "0", "false", "no", "off"})


def debug_enabled() -> bool:
    """Whether ``PERSONA_EXPORT_DEBUG`` asks for tracebacks and the commands as they run:
    unset, empty, ``0``, ``false``, ``no`` and ``off`` mean no; anything else yes."""
    return os.environ.get(DEBUG_VAR, "").strip().lower() not in _OFF


def info(message: str) -> None:
    """A progress line (stderr)."""
    print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A warning line (stderr), prefixed so it stands out from progress."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def out(message: str) -> None:
    """A data line (stdout): paths and reports a script may read."""
    print(message, flush=True)


def command(argv: Sequence[str]) -> None:
    """Show an external command about to run (stderr), only when debugging."""
    if debug_enabled():
        print(f"$ {shlex.join(argv)}", file=sys.stderr, flush=True)
