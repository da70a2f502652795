"""The stage contract: every stage is ``run(config) -> result``.

A stage's config is a small frozen dataclass built on :class:`StageConfig` (the persona, the
project's :class:`~persona_export.layout.Layout` and ``force``; checked when it is built),
and its result one built on :class:`StageResult`: what it wrote, what it measured, its
warnings and notes, how long it took and its :class:`Status`, one vocabulary for every stage
and for ``export``'s summary. Stages never print; the command line decides what to show
(and ``--json`` prints :meth:`StageResult.to_json`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

from persona_export.layout import Layout, check_persona


class Status(str, enum.Enum):
    """How a stage ended."""

    DONE = "done"  # it ran and wrote its outputs
    UP_TO_DATE = "up to date"  # its outputs were already made from the same inputs
    SKIPPED = "skipped by request"  # the user asked not to run it (--no-verify, ...)
    NOT_RUN = "not run"  # it could not run: an earlier stage failed, or a tool is absent
    FAILED = "failed"  # it ran and failed (an error, or a check that did not pass)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class StageConfig:
    """What every stage is told: which persona, where its files live, and whether to redo
    work that is up to date. The persona name, and that the persona's folders are apart,
    are checked when the config is built."""

    persona: str
    _: KW_ONLY
    layout: Layout = field(default_factory=Layout)
    force: bool = False

    def __post_init__(self) -> None:
        check_persona(self.persona)
        self.layout.check_apart(self.persona)


@dataclass(frozen=True)
class StageResult:
    """What every stage returns.

    ``outputs``: the files it wrote or found up to date; ``figures``: what it measured (JSON
    values); ``detail``: one line for a summary table.
    """

    stage: str
    persona: str
    status: Status
    _: KW_ONLY
    outputs: tuple[Path, ...] = ()
    figures: Mapping[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    detail: str = ""

    @property
    def up_to_date(self) -> bool:
        """The outputs were already up to date: nothing was done."""
        return self.status is Status.UP_TO_DATE

    @property
    def ok(self) -> bool:
        return self.status is not Status.FAILED

    def to_json(self) -> dict[str, Any]:
        """The result as JSON values, with stable keys (documented in the README's "JSON
        output", checked against ``cli/json_schema.py``). ``output_bytes``: each output's
        size now (a folder's: its files together; null when it is gone)."""
        return {
            "stage": self.stage,
            "persona": self.persona,
            "status": self.status.value,
            "seconds": round(self.seconds, 3),
            "outputs": [str(p) for p in self.outputs],
            "output_bytes": {str(p): output_bytes(p) for p in self.outputs},
            "figures": _jsonable(dict(self.figures)),
            "warnings": list(self.warnings),
            "notes": list(self.notes),
            "detail": self.detail,
        }


def output_bytes(path: Path) -> int | None:
    """The size of an output file, or of every file under an output folder (None: gone)."""
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value
