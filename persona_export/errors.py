"""One error hierarchy for the whole tool.

Every error the tool expects carries a one-line message (what is wrong) and a hint (what to
do). The CLI's top-level handler prints both and exits with ``exit_code``; the traceback is
shown only when ``PERSONA_EXPORT_DEBUG=1``. Each class also subclasses the matching
built-in so library callers can catch what they already know.

:class:`Terminated` is not an error but SIGTERM, raised like :class:`KeyboardInterrupt`.
"""

from __future__ import annotations


class PersonaExportError(Exception):
    """Base class: a known failure with a one-line message and a hint."""

    exit_code = 1
    default_hint = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message


class UsageError(PersonaExportError, ValueError):
    """The command line or a setting is wrong (exit code 2)."""

    exit_code = 2


class InputNotFoundError(PersonaExportError, FileNotFoundError):
    """An input file or folder a stage needs does not exist."""


class DroppedInputError(InputNotFoundError):
    """An input was deliberately dropped (``export --keep``) and is needed again; ``stage``
    names the stage that makes it (``export`` rebuilds it by itself)."""

    def __init__(self, message: str, hint: str | None = None, *, stage: str) -> None:
        super().__init__(message, hint)
        self.stage = stage


class InvalidInputError(PersonaExportError, ValueError):
    """An input exists but is unusable: corrupt, mismatched or unsupported."""


class UnsupportedError(InvalidInputError):
    """The input uses a feature this tool does not handle."""


class ToolMissingError(PersonaExportError, FileNotFoundError):
    """An external tool (vendored llama.cpp, Go, ollama) is not available."""


class ExternalToolError(PersonaExportError, RuntimeError):
    """An external program ran and failed."""


class IntegrityError(PersonaExportError, ValueError):
    """A download or artifact does not match its recorded hash."""


class VerificationError(PersonaExportError, RuntimeError):
    """An exported artifact does not behave like its source. (Not an AssertionError: its
    meaning must survive ``python -O``, and a bug's ``assert`` is not a failed check.)"""


class OfflineError(PersonaExportError, ConnectionError):
    """A model is needed from the hub but the hub is unreachable or disabled."""


class OutputConflictError(PersonaExportError, FileExistsError):
    """An output's place is taken by something persona-export did not write (or by an
    input): it is refused rather than replaced."""


class DiskSpaceError(PersonaExportError, OSError):
    """An output would not fit on its disk (checked before writing)."""


def internal_error(exc: BaseException) -> PersonaExportError:
    """A bug (an exception no check foresaw), as the one-line error users see."""
    return PersonaExportError(
        f"internal error: {type(exc).__name__}: {exc}".splitlines()[0],
        "this is a bug in persona-export; rerun with PERSONA_EXPORT_DEBUG=1 for the traceback "
        "and report it",
    )


class Terminated(BaseException):
    """SIGTERM arrived (from `timeout`, a CI cancellation, systemd). The CLI's handler raises
    it in the main thread as Python raises KeyboardInterrupt for Ctrl-C, so every ``with``
    and ``finally`` cleanup runs (temporaries removed, children stopped); the CLI then exits
    with 128 + SIGTERM. A BaseException, so ``except Exception`` does not swallow it."""

    exit_code = 143
