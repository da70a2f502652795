"""Where the tool talks: results to stdout, progress and warnings to stderr; the output mode
of the running command (``--quiet``, ``--verbose``, ``--json``); the progress bars of long
steps; and the one reading of ``PERSONA_EXPORT_DEBUG``.

* :func:`out`: a result line (stdout; stderr under ``--json``, whose document owns stdout);
* :func:`info`: a progress line (stderr; hidden by ``--quiet``);
* :func:`warn`: a warning (stderr, always);
* :func:`command`: an external command about to run (stderr, with ``--verbose`` or debug);
* :func:`progress`: a bar for a long step, e.g.
  ``with console.progress("converting", total=272, unit="tensors") as bar: bar.update(n)``
  (live on a terminal, plain lines elsewhere, nothing with ``--quiet``:
  :mod:`persona_export.progress`).

Stages never print results; they report progress and warnings through this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from persona_export import progress as _progress
from persona_export.progress import Bar

DEBUG_VAR = "PERSONA_EXPORT_DEBUG"
# Values of DEBUG_VAR that mean "off" (case and surrounding blanks ignored); unset is off too.
_OFF = frozenset({"", "0", "false", "no", "off"})

__all__ = [
    "DEBUG_VAR",
    "Bar",
    "Mode",
    "command",
    "debug_enabled",
    "document",
    "info",
    "mode",
    "out",
    "output_mode",
    "progress",
    "warn",
]


@dataclass(frozen=True)
class Mode:
    """How the running command talks: ``quiet`` (warnings, errors and the result only),
    ``verbose`` (external commands and the libraries' own output too), ``json`` (stdout
    holds one JSON document; every other line goes to stderr)."""

    quiet: bool = False
    verbose: bool = False
    json: bool = False


_mode = Mode()


def mode() -> Mode:
    """The output mode of the running command (the default outside one)."""
    return _mode


@contextlib.contextmanager
def output_mode(new: Mode) -> Iterator[Mode]:
    """Run a command in ``new`` mode; unless verbose, with the libraries silenced
    (:mod:`persona_export.quiet_libraries`). Both are restored afterwards."""
    global _mode
    from persona_export.quiet_libraries import quiet_libraries

    previous, _mode = _mode, new
    try:
        with contextlib.nullcontext() if new.verbose else quiet_libraries():
            yield new
    finally:
        _mode = previous


def debug_enabled() -> bool:
    """Whether ``PERSONA_EXPORT_DEBUG`` asks for tracebacks and the commands as they run:
    unset, empty, ``0``, ``false``, ``no`` and ``off`` mean no; anything else yes."""
    return os.environ.get(DEBUG_VAR, "").strip().lower() not in _OFF


def _stderr(message: str) -> None:
    if not _progress.print_above(message):
        print(message, file=sys.stderr, flush=True)


def info(message: str) -> None:
    """A progress line (stderr), hidden by ``--quiet``."""
    if not _mode.quiet:
        _stderr(message)


def warn(message: str) -> None:
    """A warning line (stderr), prefixed so it stands out from progress; always shown."""
    _stderr(f"warning: {message}")


def out(message: str) -> None:
    """A result line: stdout, where a script may read it; under ``--json`` stderr (hidden
    with ``--quiet`` too), since the JSON document is then the result."""
    if not _mode.json:
        print(message, flush=True)
    elif not _mode.quiet:
        _stderr(message)


def document(data: Any) -> None:
    """The one JSON document of a ``--json`` command (stdout)."""
    print(json.dumps(data, indent=2, ensure_ascii=False), flush=True)


def command(argv: Sequence[str]) -> None:
    """Show an external command about to run (stderr), with ``--verbose`` or when debugging."""
    if _mode.verbose or debug_enabled():
        _stderr(f"$ {shlex.join(argv)}")


def _live_console() -> Any:
    """A rich Console on stderr when stderr is a terminal that can redraw, else None."""
    if not sys.stderr.isatty():
        return None
    from rich.console import Console

    console = Console(file=sys.stderr)
    return console if console.is_terminal and not console.is_dumb_terminal else None


@contextlib.contextmanager
def progress(label: str, total: float | None = None, unit: str = "") -> Iterator[Bar]:
    """A progress bar for a long step (module docstring). ``label`` names the step
    ("converting"), ``total`` is how much there is to do (None: unknown yet; set it with
    ``bar.update(total=...)``), ``unit`` what is counted: ``"B"`` (shown as kB/MB/GB),
    ``"%"``, or a noun ("tensors", "steps"). The bar closes when the block ends; a step that
    raises leaves no closing line."""
    if _mode.quiet:
        yield Bar()
        return
    joining = _progress.live_active()  # a step within a step: the display on screen
    terminal = None if joining else _live_console()
    if joining or terminal is not None:
        with _progress.live_bar(label, total, unit, terminal) as bar:
            yield bar
        return
    with _progress.plain_bar(label, total, unit) as bar:
        yield bar
