"""The Typer app and the one top-level error handler every command runs under."""

from __future__ import annotations

import signal
import sys
import traceback
from typing import Any

import typer
from typer.core import TyperGroup

from persona_export.cli._output import TERMINATED, describe_error
from persona_export.console import debug_enabled
from persona_export.errors import PersonaExportError, Terminated


def report_error(message: str, hint: str = "") -> None:
    """Print a known error as one line (plus a hint line) on stderr."""
    typer.echo(f"error: {message}", err=True)
    if hint:
        typer.echo(f"hint: {hint}", err=True)


class HandledGroup(TyperGroup):
    """Runs every command under the handler: known errors become a one-line message, a
    hint and their exit code (1, or 2 for usage errors); the traceback only with
    PERSONA_EXPORT_DEBUG=1. Ctrl-C exits 130 and SIGTERM 143, each with one line, after the
    cleanups of the unfinished stage have run. (With ``--json`` the command's document,
    printed before this, carries the same message and exit code: cli/_output.py.)"""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # the order they were added, which is pipeline order

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.TyperException, typer.Exit, typer.Abort):
            raise
        except (KeyboardInterrupt, Terminated) as exc:
            code, message, _ = describe_error(exc)
            typer.echo(message, err=True)
            raise typer.Exit(code) from None
        except Exception as exc:
            if debug_enabled():
                if not isinstance(exc, (PersonaExportError, OSError)):
                    raise  # a bug: Python's own traceback
                traceback.print_exc()
            code, message, hint = describe_error(exc)
            report_error(message, hint)
            raise typer.Exit(code) from None


app = typer.Typer(
    name="persona-export",
    cls=HandledGroup,
    help=(
        "Turn a LoRA persona adapter into a model Ollama runs: merge -> gguf -> quantize -> "
        "modelfile -> ollama, and verify that the export behaves like base + adapter."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def version_callback(value: bool) -> None:
    if value:
        from persona_export import __version__

        typer.echo(f"persona-export {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Show the version."
    ),
) -> None:
    """Turn a LoRA persona adapter into a model Ollama runs."""


def _raise_terminated(signum: int, frame: Any) -> None:
    # once: a second SIGTERM while the cleanups run must not cut them short (SIGKILL still
    # ends the process; children then get their parent-death signal)
    signal.signal(signal.SIGTERM, _ignore_signal)
    raise Terminated


def _ignore_signal(signum: int, frame: Any) -> None:
    # a Python handler, not SIG_IGN: that would be inherited by the programs we start
    return None


def main() -> None:
    """Console-script entry point: SIGTERM is handled like Ctrl-C (exit 143)."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        sys.exit(app(prog_name="persona-export") or 0)
    except Terminated:  # arrived outside a command (while parsing or importing)
        typer.echo(TERMINATED, err=True)
        sys.exit(Terminated.exit_code)
