"""Which chat template Ollama ≥ 0.30 uses for a Modelfile + GGUF, reproduced.

Since 0.30 Ollama runs every GGUF on upstream llama-server, in one of two ways (Ollama's
server/images.go, server/routes.go and llm/llama_server.go, late-2026 line):

* **rendered**: Ollama renders the Modelfile's TEMPLATE with Go's text/template, sends the
  prompt to llama-server's ``/completion`` (llama-server started with ``--no-jinja``) and
  parses tool calls itself, after the tag it reads off the TEMPLATE;
* **native**: llama-server renders the GGUF's own ``tokenizer.chat_template`` (Jinja) through
  ``/v1/chat/completions`` and parses tool calls with llama.cpp's own parsers.

The choice, when a model has both a TEMPLATE and a GGUF chat template (``PreferChatTemplate``):

1. ``OLLAMA_GO_TEMPLATE`` set (any non-empty value; one that is not a Go boolean counts as
   true) decides: true keeps the TEMPLATE, false uses the GGUF's template.
2. Otherwise the two templates' capabilities are compared. The GGUF template counts as
   ``tools`` when its text mentions ``tools`` or ``tool_call``, as ``thinking`` when it has
   ``<think>`` and ``</think>`` (or splits content at ``</think>`` without
   ``reasoning_content``); the TEMPLATE counts as ``tools`` when it uses ``.Tools``, ``insert``
   when it uses ``.Suffix``, ``thinking`` when its thinking tags can be inferred
   (:mod:`persona_export.ollama.go_template`).
3. The GGUF template wins when it has more capabilities, unless the TEMPLATE has a full tool
   round trip (it uses ``.Tools`` and ``.ToolCalls`` and renders results: ``eq .Role "tool"``,
   ``tool_response`` or ``TOOL_RESULTS``) and the GGUF template has none (it mentions
   ``tool_calls`` or ``assistant_tool_call``, and results: ``tool_response``,
   ``tool_results``, a ``role == 'tool'`` test or ``ipython``). With equal capabilities that
   include ``tools`` it wins only when it has a round trip and the TEMPLATE has not. Else the
   TEMPLATE is kept.

Without a TEMPLATE the GGUF's template is used (native); with neither, llama-server's default.
``ollama show`` lists, in Ollama's order: for native mode the GGUF template's ``tools`` and
``thinking`` then ``completion``; for rendered mode ``completion`` then the TEMPLATE's
``tools``, ``insert``, ``thinking``. The Modelfile's ``PARAMETER stop`` strings apply on both
paths (llama-server also ends on the GGUF's end-of-generation tokens). In rendered mode the
leading special token of the tool-call tag (``<|tool_call|>`` of ``<|tool_call|>[``) is sent
to llama-server as a preserved token, so that it appears in the output for the parser.

Before 0.30 Ollama always rendered the TEMPLATE; without one, ``ollama create`` took the
built-in template within edit distance 100 of the GGUF's chat template, else
``{{ .Prompt }}``. ``ollama create`` still does that today when the Modelfile has no TEMPLATE;
persona-export does not carry Ollama's list of built-in templates, so :func:`ollama_choice`
assumes that a chat template no shipped format recognises matches none of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from persona_export.ollama.go_template import GoTemplateError, facts

RENDERED = "modelfile"  # Ollama renders the Modelfile's TEMPLATE (Go)
NATIVE = "gguf"  # llama-server renders the GGUF's chat template (Jinja)
NO_TEMPLATE = "none"  # neither exists: llama-server's default template

_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_JINJA_TOOL_RESULTS = (
    "tool_response",
    "tool_results",
    "role'] == 'tool'",
    'role\'] == "tool"',
    "role\"] == 'tool'",
    'role"] == "tool"',
    "message.role == 'tool'",
    'message.role == "tool"',
    "ipython",
)


def go_template_setting(value: str | None) -> bool | None:
    """``OLLAMA_GO_TEMPLATE`` as Ollama reads it: None when unset or empty, else the Go
    boolean (a value that is not one counts as true). Ollama strips spaces and quotes."""
    text = (value or "").strip().strip("\"'")
    if not text:
        return None
    return text not in _GO_FALSE


def jinja_capabilities(chat_template: str) -> tuple[str, ...]:
    """The capabilities Ollama reads off a GGUF chat template (``tools``, ``thinking``)."""
    caps = []
    if "tools" in chat_template or "tool_call" in chat_template:
        caps.append("tools")
    think = "<think>" in chat_template and "</think>" in chat_template
    split = "content.split('</think>')" in chat_template or (
        'content.split("</think>")' in chat_template
    )
    if think or (
        split and "reasoning_content" not in chat_template and "<SPECIAL_12>" not in chat_template
    ):
        caps.append("thinking")
    return tuple(caps)


def jinja_tool_round_trip(chat_template: str) -> bool:
    """Whether Ollama sees a full tool round trip (calls and results) in a chat template."""
    if "tools" not in chat_template and "tool_call" not in chat_template:
        return False
    calls = "tool_calls" in chat_template or "assistant_tool_call" in chat_template
    return calls and any(marker in chat_template for marker in _JINJA_TOOL_RESULTS)


def go_capabilities(template: str) -> tuple[str, ...]:
    """The capabilities Ollama reads off a TEMPLATE (``tools``, ``insert``, ``thinking``);
    none when the reader cannot parse it (Ollama logs a warning and lists none)."""
    try:
        found = facts(template)
    except GoTemplateError:
        return ()
    present = {"tools": found.tools, "insert": "suffix" in found.vars, "thinking": found.thinking}
    return tuple(name for name, has in present.items() if has)


def go_tool_round_trip(template: str) -> bool:
    """Whether Ollama sees a full tool round trip in a TEMPLATE."""
    try:
        found = facts(template)
    except GoTemplateError:
        return False
    if not ("tools" in found.vars and "toolcalls" in found.vars):
        return False
    return any(m in template for m in ('eq .Role "tool"', "tool_response", "TOOL_RESULTS"))


def prefers_gguf_template(template: str, chat_template: str) -> bool:
    """Ollama's comparison of a TEMPLATE with a GGUF chat template (rule 3 above)."""
    go_caps, gguf_caps = go_capabilities(template), jinja_capabilities(chat_template)
    if len(gguf_caps) > len(go_caps):
        return not go_tool_round_trip(template) or jinja_tool_round_trip(chat_template)
    if set(gguf_caps) != set(go_caps) or len(gguf_caps) != len(go_caps) or "tools" not in go_caps:
        return False
    return jinja_tool_round_trip(chat_template) and not go_tool_round_trip(template)


def preserved_token(tag: str | None) -> str | None:
    """What Ollama sends llama-server as a preserved token for a tool-call tag: its leading
    ``[...]`` or ``<...>`` token, else the whole tag; none for no tag, ``{`` or ``[``."""
    if not tag or tag in ("{", "["):
        return None
    closing = {"[": "]", "<": ">"}.get(tag[0])
    if closing is not None and (end := tag.find(closing)) > 0:
        return tag[: end + 1]
    return tag


@dataclass(frozen=True)
class OllamaChoice:
    """What Ollama ≥ 0.30 does with a Modelfile and its GGUF.

    ``path``: :data:`RENDERED` (the TEMPLATE), :data:`NATIVE` (the GGUF's chat template
    through llama-server) or :data:`NO_TEMPLATE`. ``capabilities``: what ``ollama show``
    lists. ``stops``: the Modelfile's stop strings (both paths). ``tool_call_tag``: the tag
    Ollama's parser waits for (rendered mode with tools; native mode leaves parsing to
    llama.cpp). ``older``: what Ollama before 0.30 renders (``modelfile``, or ``prompt``:
    ``{{ .Prompt }}`` unless a built-in template matches).
    """

    path: str
    reason: str
    capabilities: tuple[str, ...]
    stops: tuple[str, ...]
    tool_call_tag: str | None
    preserved_token: str | None
    template_capabilities: tuple[str, ...]
    gguf_capabilities: tuple[str, ...]
    older: str

    @property
    def tools(self) -> bool:
        return "tools" in self.capabilities

    def summary(self) -> str:
        """One line: the path, the capabilities and the tool-call tag."""
        where = {
            RENDERED: "renders the Modelfile's TEMPLATE (Go; llama-server --no-jinja)",
            NATIVE: "renders the GGUF's chat template through llama-server (Jinja)",
            NO_TEMPLATE: "has no chat template to render (llama-server's default)",
        }[self.path]
        line = f"Ollama >= 0.30 {where}; capabilities: {', '.join(self.capabilities)}"
        if self.tools and self.path == RENDERED:
            line += f"; tool calls after {self.tool_call_tag!r}"
        elif self.tools:
            line += "; tool calls parsed by llama-server"
        return line

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "reason": self.reason,
            "capabilities": list(self.capabilities),
            "stops": list(self.stops),
            "tool_call_tag": self.tool_call_tag,
            "preserved_token": self.preserved_token,
            "template_capabilities": list(self.template_capabilities),
            "gguf_capabilities": list(self.gguf_capabilities),
            "older_ollama": self.older,
        }


def ollama_choice(
    template: str | None,
    chat_template: str | None,
    stops: Sequence[str] = (),
    *,
    go_template_env: str | None = None,
) -> OllamaChoice:
    """What Ollama ≥ 0.30 does with a Modelfile whose TEMPLATE is ``template`` (None: no
    TEMPLATE line) and stops ``stops``, over a GGUF whose ``tokenizer.chat_template`` is
    ``chat_template`` (None or empty: none), with ``OLLAMA_GO_TEMPLATE`` =
    ``go_template_env`` on the server (None: unset)."""
    gguf_template = chat_template or None
    go_caps = go_capabilities(template) if template is not None else ()
    gguf_caps = jinja_capabilities(gguf_template) if gguf_template else ()
    setting = go_template_setting(go_template_env)
    if template is not None and setting is not None:
        path = RENDERED if setting else (NATIVE if gguf_template else NO_TEMPLATE)
        reason = f"OLLAMA_GO_TEMPLATE={go_template_env} decides"
    elif template is not None and gguf_template and prefers_gguf_template(template, gguf_template):
        path, reason = NATIVE, _why_gguf(go_caps, gguf_caps)
    elif template is not None:
        path = RENDERED
        reason = (
            "the GGUF has no chat template"
            if not gguf_template
            else f"the TEMPLATE's capabilities ({_caps(go_caps)}) are not fewer than the GGUF "
            f"template's ({_caps(gguf_caps)})"
        )
    elif gguf_template:
        path, reason = NATIVE, "the Modelfile has no TEMPLATE"
    else:
        path, reason = NO_TEMPLATE, "neither the Modelfile nor the GGUF has a chat template"
    if path == RENDERED:
        capabilities: tuple[str, ...] = ("completion", *go_caps)
    else:
        capabilities = (*gguf_caps, "completion")
    tag = None
    if path == RENDERED and template is not None and "tools" in go_caps:
        tag = facts(template).tool_tag
    return OllamaChoice(
        path=path,
        reason=reason,
        capabilities=capabilities,
        stops=tuple(stops),
        tool_call_tag=tag,
        preserved_token=preserved_token(tag),
        template_capabilities=go_caps,
        gguf_capabilities=gguf_caps,
        older="modelfile" if template is not None else "prompt",
    )


def _caps(caps: Sequence[str]) -> str:
    return ", ".join(caps) or "none"


def _why_gguf(go_caps: Sequence[str], gguf_caps: Sequence[str]) -> str:
    if len(gguf_caps) > len(go_caps):
        return (
            f"the GGUF template has more capabilities ({_caps(gguf_caps)}) than the TEMPLATE "
            f"({_caps(go_caps)})"
        )
    return "both have tools, and only the GGUF template renders a full tool round trip"
