"""Progress of long steps, shown on stderr three ways (chosen by :mod:`persona_export.console`):

* on a terminal, one live display (rich) that updates in place: label, bar, percentage,
  amount done, rate and time left (the time taken once finished);
* elsewhere (CI, pipes, ``2>log``), plain lines at a modest rate: one per tenth of the way,
  at most one a second, and one when the step ends;
* with ``--quiet``, nothing.

Domain code never picks one: it calls ``console.progress(label, total, unit)`` and updates
the :class:`Bar` it gets. Bars may nest (a step inside a step); on a terminal they share one
live display, since a terminal holds one.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

from persona_export.units import human_size

# Plain mode: at most one line per this many seconds (the last line is always printed).
PLAIN_MIN_INTERVAL_S = 1.0
LABEL_WIDTH = 18  # bars of successive steps line up


def amount(value: float, unit: str) -> str:
    """``value`` of ``unit`` for people: bytes as kB/MB/GB, percentages as %, else a count."""
    if unit == "B":
        return human_size(value)
    if unit == "%":
        return f"{value:.0f}%"
    return f"{value:,.0f} {unit}".rstrip()


def amounts(done: float, total: float, unit: str) -> str:
    """``191/272 tensors``, ``250.0 MB/500.0 MB``, ``45%``."""
    if unit == "%":
        return amount(done, unit)
    if unit == "B":
        return f"{amount(done, unit)}/{amount(total, unit)}"
    return f"{done:,.0f}/{amount(total, unit)}"


def rate(per_second: float | None, unit: str) -> str:
    """A rate such as ``31.2 tensors/s`` or ``180.4 MB/s`` ('' when unknown, and for
    percentages, whose rate tells nothing)."""
    if per_second is None or per_second <= 0 or unit == "%":
        return ""
    if unit == "B":
        return amount(per_second, "B") + "/s"
    if per_second < 0.1:  # slow steps read better as time per step
        one = (unit or "step").removesuffix("s") if unit != "s" else unit
        return f"{1 / per_second:.0f} s/{one}"
    shown = f"{per_second:.1f}" if per_second < 100 else f"{per_second:,.0f}"
    return f"{shown} {unit or 'steps'}/s"


def duration(seconds: float | None) -> str:
    """``45 s``, ``3:05``, ``1:02:03``; '' when unknown."""
    if seconds is None:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    minutes, s = divmod(s, 60)
    if minutes < 60:
        return f"{minutes}:{s:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{s:02d}"


class Bar:
    """The progress of one step. :meth:`update` sets how much is done (``completed``) or adds
    to it (``advance``), and may change the ``total``, the ``unit`` or the ``note`` shown
    after the label (what is being done now). This base class shows nothing (``--quiet``)."""

    def update(
        self,
        completed: float | None = None,
        *,
        advance: float = 0.0,
        total: float | None = None,
        note: str | None = None,
        unit: str | None = None,
    ) -> None:
        """Record progress; thread-safe."""


class PlainBar(Bar):
    """Lines on a stream that is not a terminal (see the module docstring)."""

    def __init__(self, label: str, total: float | None, unit: str, stream: IO[str]) -> None:
        self.label, self.total, self.unit, self.stream = label, total, unit, stream
        self.completed = 0.0
        self.note = ""
        self.started = time.monotonic()
        self.last_line = self.started
        self.tenth = 0
        self.lock = threading.Lock()

    def update(
        self,
        completed: float | None = None,
        *,
        advance: float = 0.0,
        total: float | None = None,
        note: str | None = None,
        unit: str | None = None,
    ) -> None:
        with self.lock:
            if unit is not None:
                self.unit = unit
            if total is not None:
                self.total = total
            if note is not None:
                self.note = note
            self.completed = (self.completed if completed is None else completed) + advance
            if not self.total:
                return
            tenth = int(10 * min(self.completed / self.total, 1.0))
            now = time.monotonic()
            if tenth > self.tenth and tenth < 10 and now - self.last_line >= PLAIN_MIN_INTERVAL_S:
                self.tenth, self.last_line = tenth, now
                self._line(self._running(now))

    def _running(self, now: float) -> str:
        elapsed = now - self.started
        per_second = self.completed / elapsed if elapsed > 0 else None
        left = (self.total or 0) - self.completed
        eta = left / per_second if per_second else None
        parts = [
            f"{100 * self.completed / (self.total or 1):3.0f}%",
            "" if self.unit == "%" else amounts(self.completed, self.total or 0, self.unit),
            rate(per_second, self.unit),
            f"about {duration(eta)} left" if eta is not None else "",
        ]
        return "  ".join(p for p in parts if p)

    def finish(self) -> None:
        """The closing line: how much, how long, how fast (and where it stopped, when the step
        ended short of its total: an engine of verify that failed)."""
        elapsed = time.monotonic() - self.started
        per_second = self.completed / elapsed if elapsed > 0 else None
        done = amount(self.completed, self.unit) if self.completed and self.unit != "%" else ""
        parts = [f"done in {duration(elapsed)}", done, rate(per_second, self.unit)]
        if self.total and self.completed < self.total:
            where = f"{100 * self.completed / self.total:.0f}%"
            if self.unit != "%":
                where += f" ({amounts(self.completed, self.total, self.unit)})"
            parts = [f"ended at {where} after {duration(elapsed)}"]
        self._line("  ".join(p for p in parts if p))

    def _line(self, text: str) -> None:
        note = f" ({self.note})" if self.note else ""
        print(f"  {self.label}{note}: {text}", file=self.stream, flush=True)


# --------------------------------------------------------------------------------------
# The live display (rich)
# --------------------------------------------------------------------------------------

_live_lock = threading.RLock()
_live: Any = None  # the rich Progress on screen, while any live bar is open
_live_depth = 0


def _columns() -> tuple[Any, ...]:
    from rich.progress import BarColumn, ProgressColumn, TextColumn
    from rich.table import Column
    from rich.text import Text

    class Amount(ProgressColumn):
        def render(self, task: Any) -> Text:
            unit = task.fields.get("unit", "")
            if task.total is None:
                return Text(amount(task.completed, unit))
            return Text("" if unit == "%" else amounts(task.completed, task.total, unit))

    def mean_rate(task: Any) -> float | None:
        """Done over time taken: rich's own estimate looks at the last few seconds only, and
        has none for steps slower than that (verify's engines)."""
        elapsed = task.finished_time if task.finished else task.elapsed
        return task.completed / elapsed if elapsed and task.completed else None

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            unit = task.fields.get("unit", "")
            per_second = mean_rate(task) if task.finished else task.speed or mean_rate(task)
            return Text(rate(per_second, unit), style="cyan")

    class Time(ProgressColumn):
        def render(self, task: Any) -> Text:
            if task.finished:
                return Text(f"in {duration(task.finished_time or task.elapsed)}", style="green")
            if task.stop_time is not None:
                return Text(f"stopped after {duration(task.elapsed)}", style="red")
            eta = task.time_remaining
            if eta is None and task.total is not None and (per_second := mean_rate(task)):
                eta = (task.total - task.completed) / per_second
            return Text(f"ETA {duration(eta)}" if eta is not None else "ETA -", style="yellow")

    class Note(ProgressColumn):
        def render(self, task: Any) -> Text:
            note = str(task.fields.get("note", ""))
            return Text(note, style="dim", no_wrap=True, overflow="ellipsis")

    def fixed() -> Column:
        return Column(no_wrap=True)

    # only the note gives way (cut with an ellipsis) when the terminal is narrow
    return (
        TextColumn("  {task.description}", markup=False, table_column=fixed()),
        BarColumn(bar_width=24, table_column=fixed()),
        TextColumn("{task.percentage:>3.0f}%", table_column=fixed()),
        Amount(table_column=fixed()),
        Rate(table_column=fixed()),
        Time(table_column=fixed()),
        Note(table_column=Column(min_width=1)),  # the one column that may shrink
    )


class LiveBar(Bar):
    """One task of the shared live display."""

    def __init__(self, progress: Any, label: str, total: float | None, unit: str) -> None:
        self.progress, self.label = progress, label
        self.task = progress.add_task(f"{label:<{LABEL_WIDTH}}", total=total, unit=unit, note="")

    def update(
        self,
        completed: float | None = None,
        *,
        advance: float = 0.0,
        total: float | None = None,
        note: str | None = None,
        unit: str | None = None,
    ) -> None:
        fields: dict[str, Any] = {"advance": advance or None}
        if unit is not None:
            fields["unit"] = unit
        if completed is not None:
            fields["completed"] = completed
        if total is not None:
            fields["total"] = total
        if note is not None:
            fields["note"] = note
        self.progress.update(self.task, **fields)

    def finish(self) -> None:
        """A step that ended: a bar without a total gets what was done as its total; one
        that ended short of its total stays where it stopped (shown as stopped)."""
        task = self.progress.tasks[self.task]
        if task.total is None:
            self.progress.update(self.task, total=max(task.completed, 1))
        self.progress.stop_task(self.task)


@contextlib.contextmanager
def live_bar(label: str, total: float | None, unit: str, console: Any) -> Iterator[Bar]:
    """A bar on the live display, started (on ``console``, a rich Console on stderr) with
    the first bar and stopped with the last; a finished bar stays on screen with its time."""
    global _live, _live_depth
    from rich.progress import Progress

    with _live_lock:
        if _live is None:
            # stdout is for results: only stderr is routed above the live display
            _live = Progress(
                *_columns(),
                console=console,
                redirect_stdout=False,
                redirect_stderr=True,
                speed_estimate_period=10.0,
            )
            _live.start()
        _live_depth += 1
        bar = LiveBar(_live, label, total, unit)
    ok = False
    try:
        yield bar
        ok = True
    finally:
        with _live_lock:
            if ok:
                bar.finish()
            else:
                _live.stop_task(bar.task)
            _live_depth -= 1
            if _live_depth == 0:
                _live.stop()
                _live = None


def live_active() -> bool:
    """Whether a live display is on screen (a new bar then joins it)."""
    with _live_lock:
        return _live is not None


def print_above(message: str) -> bool:
    """Print ``message`` above the live display when one is on screen (True), so that it
    does not tear the bars; False when there is none (the caller prints as usual)."""
    with _live_lock:
        if _live is None:
            return False
        _live.console.print(message, markup=False, highlight=False, emoji=False, soft_wrap=True)
        return True


@contextlib.contextmanager
def plain_bar(label: str, total: float | None, unit: str) -> Iterator[Bar]:
    """A :class:`PlainBar` on stderr, closed with its summary line when the step succeeds."""
    bar = PlainBar(label, total, unit, sys.stderr)
    yield bar
    bar.finish()
