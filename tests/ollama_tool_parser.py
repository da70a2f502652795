"""Ollama's tool-call parsing rule, ported for the tests (written from ollama/ollama
tools/tools.go, late-2026 line, MIT licensed), applied to a whole model answer:

1. The answer is searched for the tag Ollama derived from the TEMPLATE (tests use the tag the
   Go renderer reports). No tag: no tool calls, the answer is content. For the tags ``{`` and
   ``[`` (no text in the TEMPLATE's ``{{ if .ToolCalls }}``) calls are only looked for when the
   answer starts with them (after white space).
2. From the tag on, repeatedly: the earliest tool name of the request found in the text (the
   longest at one position), then the first complete JSON object (braces counted outside JSON
   strings) that parses; its arguments are the ``arguments`` (or ``parameters``) of an object
   that has a ``name`` (a JSON string holding an object counts too), else the value under the
   tool's name, else the same search in nested objects, else the whole object. An object with
   a ``name`` but neither key ends the parsing. The text is consumed up to the end of the name
   or of the object, whichever is later.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

ToolCall = tuple[str, dict[str, Any]]


def _as_object(value: Any) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            return None
        return decoded if isinstance(decoded, dict) else None
    return None


def _arguments_in(obj: dict[str, Any], tool: str) -> tuple[dict[str, Any] | None, bool]:
    """(arguments, found) in ``obj`` and below, as Ollama looks for them."""
    if "name" in obj:
        for key in ("arguments", "parameters"):
            if (args := _as_object(obj.get(key))) is not None:
                return args, True
        return None, True
    if (args := _as_object(obj.get(tool))) is not None:
        return args, True
    for value in obj.values():
        children = value if isinstance(value, list) else [value]
        for child in children:
            if isinstance(child, dict):
                args, found = _arguments_in(child, tool)
                if found:
                    return args, True
    return None, False


def _first_object(text: str, tool: str) -> tuple[dict[str, Any] | None, int]:
    """The arguments of the first parseable JSON object in ``text`` and where it ends."""
    depth, start, in_string, escaped = 0, -1, False, False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif char == "{":
            start = index if depth == 0 else start
            depth += 1
        elif char == "}" and depth > 0:
            depth -= 1
            if depth == 0 and start >= 0:
                try:
                    data = json.loads(text[start : index + 1])
                except ValueError:
                    start = -1
                    continue
                if not isinstance(data, dict):
                    return None, 0
                args, found = _arguments_in(data, tool)
                return (args if found else data), index + 1
    return None, 0


def _first_tool(text: str, names: Sequence[str]) -> tuple[str | None, int]:
    found, start, end = None, -1, 0
    for name in names:
        position = text.find(name)
        if position < 0:
            continue
        if start < 0 or position < start or (position == start and len(name) > len(found or "")):
            found, start, end = name, position, position + len(name)
    return found, end


def parse_tool_calls(answer: str, tag: str, names: Sequence[str]) -> tuple[list[ToolCall], str]:
    """The tool calls in ``answer`` (name, arguments), and the content before the tag."""
    position = answer.find(tag)
    if position < 0:
        return [], answer
    content, rest = answer[:position], answer[position:]
    if tag in ("{", "[") and content.strip():
        return [], answer
    calls: list[ToolCall] = []
    while True:
        name, name_end = _first_tool(rest, names)
        if name is None:
            break
        args, object_end = _first_object(rest, name)
        if args is None:
            break
        calls.append((name, args))
        rest = rest[max(name_end, object_end) :]
    return calls, content
