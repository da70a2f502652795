"""Tool use in chat templates: whether a model's own chat template renders tools, how it takes
them, and whether it renders them the way a format's tool-capable TEMPLATE does.

Chat templates take tool definitions in one of two ways (``via``): as apply_chat_template's
``tools`` argument (Qwen, Llama 3.1+, Mistral), or as a JSON string in the system message's
``tools`` key (Phi-4-mini). :func:`tools_via` finds out by rendering a probe tool both ways.

A format's ``[tools]`` table carries, besides its TEMPLATE, what the family's own template
renders for a probe conversation (``detect``: a tool offered; for ``via = "tools"`` also a call
and its result). :func:`tool_form_difference` renders the model's template for the same
conversation and compares: a model gets the tool TEMPLATE only when they agree, so a ChatML
model whose template writes tools in another form keeps the plain TEMPLATE (and Ollama then
uses the model's own template). Tool definitions and arguments are JSON, which templates write
with different spacing and key order: :func:`first_difference` compares JSON values as values
and all other text character for character.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from persona_export.hf.chat_formats import (
    ASSISTANT_ONE,
    SYSTEM_TEXT,
    USER_ONE,
    USER_TWO,
    ChatFormat,
    render_chat_template,
)

#: The tool the probes offer (its name and description are looked for in the rendering).
PROBE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "probe_tool_name",
        "description": "PROBE_TOOL_DESCRIPTION",
        "parameters": {
            "type": "object",
            "properties": {"probe_argument": {"type": "string", "description": "PROBE_ARG"}},
            "required": ["probe_argument"],
        },
    },
}
#: A call of the probe tool (a 9-character id, as Mistral's template requires).
PROBE_CALL: dict[str, Any] = {
    "id": "probe0001",
    "type": "function",
    "function": {"name": "probe_tool_name", "arguments": {"probe_argument": "PROBE_VALUE"}},
}
#: The probe conversation after the system message: a question, the assistant's call, the
#: tool's result, the assistant's answer and a follow-up question.
PROBE_TURNS: tuple[dict[str, Any], ...] = (
    {"role": "user", "content": USER_ONE},
    {"role": "assistant", "content": "", "tool_calls": [PROBE_CALL]},
    {"role": "tool", "content": "PROBE_RESULT", "tool_call_id": "probe0001"},
    {"role": "assistant", "content": ASSISTANT_ONE},
    {"role": "user", "content": USER_TWO},
)


def system_tools_json(tools: Sequence[Mapping[str, Any]]) -> str:
    """Tool definitions as Phi-4-mini's model card writes them into the system message's
    ``tools`` key: a JSON list of ``{"name", "description", "parameters"}`` whose parameters
    are the function's properties (Python's json.dumps spacing)."""
    return json.dumps(
        [
            {
                "name": t["function"]["name"],
                "description": t["function"].get("description", ""),
                "parameters": t["function"].get("parameters", {}).get("properties", {}),
            }
            for t in tools
        ],
        ensure_ascii=False,
    )


def probe_messages(via: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The probe conversation and ``tools`` argument for a template that takes tools
    ``via``: with ``"system"`` only the question (such templates render no calls)."""
    if via == "system":
        system = {
            "role": "system",
            "content": SYSTEM_TEXT,
            "tools": system_tools_json([PROBE_TOOL]),
        }
        return [system, dict(PROBE_TURNS[0])], None
    system = {"role": "system", "content": SYSTEM_TEXT}
    return [system, *(dict(t) for t in PROBE_TURNS)], [PROBE_TOOL]


def tools_via(chat_template: str, *, special_tokens: Mapping[str, str]) -> str | None:
    """How ``chat_template`` takes tool definitions, found by rendering a system message and
    a user message with :data:`PROBE_TOOL`: ``"tools"`` when apply_chat_template's ``tools``
    argument shows up in the text, ``"system"`` when a JSON string in the system message's
    ``tools`` key does; None when neither does (the template renders no tools)."""
    user = {"role": "user", "content": USER_ONE}
    attempts: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]] | None]] = [
        ("tools", [{"role": "system", "content": SYSTEM_TEXT}, user], [PROBE_TOOL]),
        (
            "system",
            [
                {
                    "role": "system",
                    "content": SYSTEM_TEXT,
                    "tools": system_tools_json([PROBE_TOOL]),
                },
                user,
            ],
            None,
        ),
    ]
    for via, messages, tools in attempts:
        try:
            text = render_chat_template(
                chat_template, messages, special_tokens=special_tokens, tools=tools
            )
        except Exception:  # a template that refuses or breaks on tools does not render them
            continue
        if "probe_tool_name" in text and "PROBE_TOOL_DESCRIPTION" in text:
            return via
    return None


def segments(text: str) -> list[tuple[str, Any]]:
    """``text`` split into plain text and the JSON objects and lists in it (decoded)."""
    decoder = json.JSONDecoder()
    out: list[tuple[str, Any]] = []
    start = index = 0
    while index < len(text):
        if text[index] in "{[":
            try:
                value, end = decoder.raw_decode(text, index)
            except ValueError:
                index += 1
                continue
            out += [("text", text[start:index]), ("json", value)]
            start = index = end
        else:
            index += 1
    out.append(("text", text[start:]))
    return out


def first_difference(expected: str, actual: str) -> str | None:
    """None when the texts are the same up to how their JSON is written, else where they
    first differ."""
    want, got = segments(expected), segments(actual)
    for number, (a, b) in enumerate(zip(want, got, strict=False)):
        if a == b:
            continue
        if a[0] == b[0] == "text":
            at = next(
                (i for i, (x, y) in enumerate(zip(a[1], b[1], strict=False)) if x != y),
                min(len(a[1]), len(b[1])),
            )
            start = max(0, at - 20)
            return (
                f"text part {number + 1}, character {at}: expected "
                f"{a[1][start : at + 30]!r}, got {b[1][start : at + 30]!r}"
            )
        return f"part {number + 1}: expected {str(a[1])[:80]!r}, got {str(b[1])[:80]!r}"
    if len(want) != len(got):
        return f"expected {len(want)} parts, got {len(got)}"
    return None


def tool_form_difference(
    fmt: ChatFormat, chat_template: str, *, special_tokens: Mapping[str, str]
) -> str | None:
    """None when ``chat_template`` renders the probe conversation as ``fmt``'s tool table
    says its family does (as it is, or without a leading BOS), else what differs."""
    if fmt.tool_detect is None:
        return f"the {fmt.title} format has no tool-capable TEMPLATE"
    messages, tools = probe_messages(fmt.tools_via)
    try:
        text = render_chat_template(
            chat_template, messages, special_tokens=special_tokens, tools=tools
        )
    except Exception as exc:  # the template refuses the probe: not the family's tool form
        return f"it cannot render a tool conversation ({type(exc).__name__}: {exc})"
    difference = first_difference(fmt.tool_detect, text)
    bos = special_tokens.get("bos_token", "")
    stripped = text[len(bos) :] if bos and text.startswith(bos) else None
    if stripped is not None and first_difference(fmt.tool_detect, stripped) is None:
        return None
    return difference
