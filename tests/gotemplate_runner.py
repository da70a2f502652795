"""Build and call tests/gotemplate/ (Go text/template, rendered as Ollama renders TEMPLATE)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent / "gotemplate"
GO_MISSING = (
    "Go is not installed (apt-get install golang-go): the TEMPLATE tests render with Go's "
    "text/template, as Ollama does; CI installs it (.ci/run) so these tests always run there"
)

Message = Mapping[str, str]


@dataclass(frozen=True)
class Rendered:
    output: str | None
    error: str | None
    mode: str


@dataclass(frozen=True)
class GoTemplateRenderer:
    """Calls the built program; one process per batch of cases."""

    binary: Path

    def render_many(self, cases: Sequence[tuple[str, Sequence[Message], str]]) -> list[Rendered]:
        """Render ``(template, messages, modelfile_system)`` cases."""
        payload = {
            "cases": [
                {"template": t, "messages": [dict(m) for m in msgs], "system": system}
                for t, msgs, system in cases
            ]
        }
        done = subprocess.run(
            [str(self.binary)],
            input=json.dumps(payload),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        results = json.loads(done.stdout)["results"]
        return [Rendered(r.get("output"), r.get("error"), r.get("mode", "")) for r in results]

    def render(self, template: str, messages: Sequence[Message], system: str = "") -> str:
        """Render one conversation; fail the test on a template error."""
        (result,) = self.render_many([(template, messages, system)])
        if result.output is None:
            pytest.fail(f"Go could not render the template: {result.error}")
        return result.output


def build_renderer(build_dir: Path) -> GoTemplateRenderer:
    go = shutil.which("go")
    if go is None:
        pytest.skip(GO_MISSING)
    binary = build_dir / "gotemplate"
    env = {
        **os.environ,
        "GOFLAGS": "-mod=mod",
        "GOPROXY": "off",  # no dependencies: the build must not need the network
        "GOTOOLCHAIN": "local",
    }
    subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=SOURCE,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return GoTemplateRenderer(binary)
