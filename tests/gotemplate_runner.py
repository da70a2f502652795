"""The tests' handle on Ollama's TEMPLATE rendering: the package's Go renderer
(persona_export/gotemplate, Go's text/template as Ollama uses it), skipping with a stated
reason when Go is absent."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from persona_export.ollama import gotemplate
from persona_export.ollama.gotemplate import Rendered

GO_MISSING = (
    f"{gotemplate.GO_MISSING}: the TEMPLATE tests render with Go's text/template, as Ollama "
    "does; CI installs it (.ci/run) so these tests always run there"
)

Message = Mapping[str, Any]

__all__ = ["GO_MISSING", "GoTemplateRenderer", "Rendered", "renderer_or_skip"]


@dataclass(frozen=True)
class GoTemplateRenderer(gotemplate.GoTemplateRenderer):
    """The package's renderer plus a one-conversation call that fails the test on an error."""

    def render(
        self,
        template: str,
        messages: Sequence[Message],
        system: str = "",
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        case: gotemplate.Case = (
            (template, messages, system) if tools is None else (template, messages, system, tools)
        )
        (result,) = self.render_many([case])
        if result.output is None:
            pytest.fail(f"Go could not render the template: {result.error}")
        return result.output


def renderer_or_skip() -> GoTemplateRenderer:
    """The renderer (built into the cache the first time), or skip when Go is missing."""
    found = gotemplate.find_renderer()
    if found is None:
        pytest.skip(GO_MISSING)
    return GoTemplateRenderer(found.binary)
