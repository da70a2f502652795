"""Every external program runs through :func:`run`: an argument list (never a shell), the
command logged, the exit code checked, and the tail of its output in the error."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from persona_export import console
from persona_export.errors import ExternalToolError, ToolMissingError


@dataclass(frozen=True)
class Completed:
    """What a finished program left: its exit code and output lines."""

    args: tuple[str, ...]
    returncode: int
    output: str


def tail(text: str, lines: int = 20) -> str:
    """The last ``lines`` non-empty lines of ``text``."""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def run(
    args: Sequence[str | os.PathLike[str]],
    *,
    what: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    check: bool = True,
    hint: str = "",
    tail_lines: int = 20,
) -> Completed:
    """Run ``args`` and return its output (stdout and stderr merged).

    ``what`` names the step in errors. With ``log_path`` the output also goes to that file;
    ``on_line`` sees each line as it arrives (for progress and warnings). A non-zero exit
    raises :class:`ExternalToolError` with the last ``tail_lines`` lines unless ``check`` is
    false.
    """
    argv = [os.fspath(a) for a in args]
    console.command(argv)
    full_env = None if env is None else {**os.environ, **env}
    collected: list[str] = []
    log = open(log_path, "w", encoding="utf-8") if log_path else None  # noqa: SIM115
    try:
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=full_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
            )
        except FileNotFoundError as exc:
            raise ToolMissingError(f"{what}: program not found: {argv[0]}", hint) from exc
        assert proc.stdout is not None
        for line in proc.stdout:
            collected.append(line)
            if log:
                log.write(line)
            if on_line:
                on_line(line.rstrip("\n"))
        returncode = proc.wait()
    finally:
        if log:
            log.close()
    output = "".join(collected)
    if check and returncode != 0:
        where = f" (full log: {log_path})" if log_path else ""
        raise ExternalToolError(
            f"{what} failed with exit code {returncode}{where}:\n{tail(output, tail_lines)}",
            hint,
        )
    return Completed(tuple(argv), returncode, output)
