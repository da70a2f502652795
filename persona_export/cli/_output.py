"""The options every command takes (``--json``, ``--quiet``, ``-v/--verbose``) and the one
JSON document ``--json`` prints.

Each command is registered through :func:`with_output_options`, which adds the three options
to its signature (declared once, in ``cli/_options.py``), runs it in that output mode
(:func:`persona_export.console.output_mode`) and, with ``--json``, prints one document on
stdout when it ends, whether it succeeded or failed: the envelope (``command``, ``ok``,
``exit_code``, ``seconds``, ``error``) plus what the command recorded with :func:`record`
(its stage results). The keys are in :mod:`persona_export.cli.json_schema` and the README.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from typing import Any

import typer

from persona_export import __version__, console
from persona_export.cli._options import JsonOutput, Quiet, Verbose
from persona_export.errors import PersonaExportError, Terminated, UsageError

INTERRUPTED = "interrupted; outputs of the unfinished stage were discarded"
TERMINATED = "terminated; outputs of the unfinished stage were discarded"
BUG_HINT = "this is a bug in persona-export; rerun with {var}=1 for the traceback and report it"
OS_ERROR_HINT = "check the path, free disk space and permissions"
SCHEMA_VERSION = 1

_recorded: dict[str, Any] | None = None  # the running command's fields, when --json


def record(**fields: Any) -> None:
    """Add ``fields`` to the running command's JSON document (a no-op without ``--json``)."""
    if _recorded is not None:
        _recorded.update(fields)


def describe_error(exc: BaseException) -> tuple[int, str, str]:
    """The exit code, message and hint users see for ``exc`` (exit code 0: not an error)."""
    if isinstance(exc, PersonaExportError):
        return exc.exit_code, exc.message, exc.hint
    if isinstance(exc, KeyboardInterrupt):
        return 130, INTERRUPTED, ""
    if isinstance(exc, Terminated):
        return Terminated.exit_code, TERMINATED, ""
    if isinstance(exc, typer.Exit):
        return exc.exit_code, "" if exc.exit_code == 0 else f"exit code {exc.exit_code}", ""
    if isinstance(exc, typer.Abort):
        return 1, "aborted", ""
    if isinstance(exc, typer.TyperException):
        code = getattr(exc, "exit_code", 2)
        return code, getattr(exc, "format_message", lambda: str(exc))(), ""
    if isinstance(exc, OSError):
        return 1, str(exc), OS_ERROR_HINT
    return (
        1,
        f"internal error: {type(exc).__name__}: {exc}",
        BUG_HINT.format(var=console.DEBUG_VAR),
    )


def _document(name: str, started: float, exc: BaseException | None) -> dict[str, Any]:
    code, message, hint = describe_error(exc) if exc is not None else (0, "", "")
    return {
        "schema_version": SCHEMA_VERSION,
        "persona_export_version": __version__,
        "command": name,
        "ok": code == 0,
        "exit_code": code,
        "seconds": round(time.monotonic() - started, 3),
        "error": {"message": message, "hint": hint} if code else None,
        **(_recorded or {}),
    }


_OUTPUT_PARAMETERS = (
    inspect.Parameter("json_output", inspect.Parameter.KEYWORD_ONLY, default=False),
    inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False),
    inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=False),
)
_ANNOTATIONS = {"json_output": JsonOutput, "quiet": Quiet, "verbose": Verbose}


def with_output_options(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` (a command) with ``--json``, ``--quiet`` and ``-v/--verbose`` added (module
    docstring). Typer reads the parameters from the returned function's signature."""
    signature = inspect.signature(func, eval_str=True)
    extra = [p.replace(annotation=_ANNOTATIONS[p.name]) for p in _OUTPUT_PARAMETERS]

    @functools.wraps(func)
    def command(*, json_output: bool, quiet: bool, verbose: bool, **kwargs: Any) -> None:
        global _recorded
        if quiet and verbose:
            raise UsageError("--quiet and --verbose contradict each other", "choose one")
        started = time.monotonic()
        previous, _recorded = _recorded, ({} if json_output else None)
        try:
            with console.output_mode(console.Mode(quiet, verbose, json_output)):
                try:
                    func(**kwargs)
                except BaseException as exc:
                    if json_output:
                        console.document(_document(name, started, exc))
                    raise
                if json_output:
                    console.document(_document(name, started, None))
        finally:
            _recorded = previous

    parameters = [*signature.parameters.values(), *extra]
    command.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    return command
