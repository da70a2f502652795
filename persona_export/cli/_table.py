"""Plain fixed-column tables that fit :data:`WIDTH` columns (export's summary, verify's
checks, status). Plain text rather than a rich Table: these lines are results on stdout, read
by people in 100-column terminals and by scripts and tests that split them on spaces, so
they carry no box drawing and no colour codes.

Every column but the last is as wide as its widest cell; the last takes the rest and wraps
at spaces onto continuation lines aligned under it. A path is never broken: an item that
cannot fit (a very long path) stands alone on its line.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from persona_export.units import human_size

WIDTH = 100
INDENT = "  "
GAP = "  "
MIN_LAST = 24  # the wrapped column never gets narrower than this
LONG_INDENT = 4  # where a word too wide for the last column starts


def size(n: int | None) -> str:
    """Bytes for people: ``538.1 MB`` (``?`` when unknown)."""
    return human_size(n)


def wrap(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken at spaces only (a word longer
    than ``width`` keeps its own line whole)."""
    if not text:
        return [""]
    return textwrap.wrap(
        text, width=max(width, 1), break_long_words=False, break_on_hyphens=False
    ) or [""]


class Table:
    """Rows of cells laid out in fixed columns (module docstring). ``right``: indexes of
    columns aligned right (times)."""

    def __init__(
        self,
        rows: Sequence[Sequence[str]],
        *,
        right: Sequence[int] = (),
        indent: str = INDENT,
        width: int = WIDTH,
    ) -> None:
        columns = len(rows[0])
        self.widths = [max(len(row[i]) for row in rows) for i in range(columns - 1)]
        self.right = set(right)
        self.indent = indent
        self.lead = len(indent) + sum(w + len(GAP) for w in self.widths)
        self.last = max(width - self.lead, MIN_LAST)
        self.width = width

    def row(self, cells: Sequence[str]) -> list[str]:
        """One row: the fixed cells, then the last one wrapped under its column."""
        fixed = [
            cell.rjust(w) if i in self.right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells[:-1], self.widths, strict=True))
        ]
        head = self.indent + GAP.join(fixed) + GAP
        out = []
        for number, line in enumerate(wrap(cells[-1], self.last)):
            lead = head if number == 0 else " " * self.lead
            if len(line) <= self.last:
                out.append((lead + line).rstrip())
                continue
            # one word (a path) wider than the column: a line of its own, further left
            if number == 0:
                out.append(lead.rstrip())
            out.append(" " * LONG_INDENT + line)
        return out

    def under(self, text: str) -> list[str]:
        """A line under the last column (a file of the row above); when it does not fit
        there, it starts further left, and a path longer than the whole width stays whole."""
        if self.lead + len(text) <= self.width:
            return [" " * self.lead + text]
        return [" " * LONG_INDENT + line for line in wrap(text, self.width - LONG_INDENT)]
