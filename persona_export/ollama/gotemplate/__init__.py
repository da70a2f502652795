"""Render Modelfile TEMPLATEs the way Ollama does: Go's text/template, through a tiny Go
program (``main.go`` here) built on demand into the cache when ``go`` is installed.

:func:`find_renderer` returns None when Go is absent, so that callers report their check as
skipped (with :data:`GO_MISSING` as the reason) rather than passed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export.artifacts import atomic_file
from persona_export.errors import ExternalToolError
from persona_export.llamacpp.vendor import cache_root
from persona_export.proc import run

SOURCE_DIR = Path(__file__).resolve().parent
SOURCES = ("go.mod", "main.go", "data.go", "inspect.go")
GO_MISSING = "Go is not installed (Debian: apt-get install golang-go)"

#: A chat message as Ollama's /api/chat takes it: role and content, and for tool use
#: ``tool_calls`` (``[{"id": ..., "function": {"name": ..., "arguments": {...}}}]``),
#: ``tool_name`` and ``tool_call_id``.
Message = Mapping[str, Any]
#: A tool definition as /api/chat takes it (``{"type": "function", "function": {...}}``).
Tool = Mapping[str, Any]
#: ``(template, messages, modelfile_system)``, optionally followed by the request's tools.
Case = tuple[str, Sequence[Message], str] | tuple[str, Sequence[Message], str, Sequence[Tool]]


@dataclass(frozen=True)
class Rendered:
    """One rendering: the text, or the template's error; ``mode`` is ``messages`` or
    ``legacy`` (Ollama's two ways of rendering a TEMPLATE). ``vars`` are the identifiers
    Ollama reads off the parsed TEMPLATE (lower-cased, sorted), ``tool_tag`` the tag its
    tool-call parser would wait for and ``thinking_tags`` the tags it infers around thinking
    text (empty when the template does not parse)."""

    output: str | None
    error: str | None
    mode: str
    vars: tuple[str, ...] = ()
    tool_tag: str = ""
    thinking_tags: tuple[str, str] = ("", "")


@dataclass(frozen=True)
class GoTemplateRenderer:
    """The built program."""

    binary: Path

    def render_many(self, cases: Sequence[Case]) -> list[Rendered]:
        """Render ``(template, messages, modelfile_system[, tools])`` cases in one process."""
        payload = {
            "cases": [
                {
                    "template": case[0],
                    "messages": [dict(m) for m in case[1]],
                    "system": case[2],
                    "tools": [dict(t) for t in case[3]] if len(case) > 3 else None,
                }
                for case in cases
            ]
        }
        with tempfile.TemporaryDirectory(prefix="pe-gotemplate-") as tmp:
            request, answer = Path(tmp) / "in.json", Path(tmp) / "out.json"
            request.write_text(json.dumps(payload), encoding="utf-8")
            run([self.binary, request, answer], what="Go template renderer")
            results = json.loads(answer.read_text(encoding="utf-8"))["results"]
        return [
            Rendered(
                r.get("output"),
                r.get("error"),
                r.get("mode", ""),
                tuple(r.get("vars") or ()),
                r.get("tool_tag", ""),
                tuple(r.get("thinking_tags") or ("", "")),
            )
            for r in results
        ]


def _source_key() -> str:
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes())
    return digest.hexdigest()[:16]


def find_renderer() -> GoTemplateRenderer | None:
    """The renderer, built into ``<cache>/gotemplate/<source hash>/`` the first time (a few
    seconds, offline: standard library only); None when Go is not installed."""
    go = shutil.which("go")
    if go is None:
        return None
    binary = cache_root() / "gotemplate" / _source_key() / "gotemplate"
    if binary.is_file():
        return GoTemplateRenderer(binary)
    with tempfile.TemporaryDirectory(prefix="pe-gotemplate-src-") as tmp:
        for name in SOURCES:
            shutil.copyfile(SOURCE_DIR / name, Path(tmp) / name)
        gocache = cache_root() / "gotemplate" / "go-build"
        env = {
            "GOFLAGS": "-mod=mod",
            "GOPROXY": "off",  # no dependencies: the build never needs the network
            "GOTOOLCHAIN": "local",
            "GOCACHE": os.environ.get("GOCACHE", str(gocache)),
        }
        with atomic_file(binary) as tmp_binary:
            run(
                [go, "build", "-o", tmp_binary, "."],
                what="go build (template renderer)",
                cwd=Path(tmp),
                env=env,
                hint="check the Go installation (go version); verify needs Go 1.18 or newer",
            )
    if not binary.is_file():
        raise ExternalToolError(f"go build did not produce {binary}")
    return GoTemplateRenderer(binary)
