"""Where the tool talks: data to stdout, progress and warnings to stderr."""

from __future__ import annotations

import sys


def info(message: str) -> None:
    """A progress line (stderr)."""
    print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A warning line (stderr), prefixed so it stands out from progress."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def out(message: str) -> None:
    """A data line (stdout): paths and reports a script may read."""
    print(message, flush=True)
