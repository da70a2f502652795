"""verify's template pieces (persona_export.verify.tools): the comparison that takes JSON as
values and everything else as text, the reproduced choice as a check, and how the HF side of a
tool conversation is built."""

from __future__ import annotations

import json

from persona_export.hf.chat_formats import load_formats
from persona_export.hf.chat_tools import first_difference, segments
from persona_export.ollama.template_choice import ollama_choice
from persona_export.verify.checks import FAILED, PASSED
from persona_export.verify.tools import ASK, TOOLS, hf_tool_messages, ollama_check
from tests import hf_chat_templates as hf

FORMATS = {f.name: f for f in load_formats()}


def test_segments_split_text_and_json() -> None:
    text = '[INST] hi[/INST][TOOL_CALLS] [{"name": "f", "arguments": {"a": 1}}]</s> {"name": <x>}'
    assert segments(text) == [
        ("text", "[INST] hi[/INST][TOOL_CALLS] "),
        ("json", [{"name": "f", "arguments": {"a": 1}}]),
        ("text", '</s> {"name": <x>}'),  # not JSON: compared as text
    ]


def test_first_difference() -> None:
    python = 'A <tools>{"name": "f", "parameters": {"b": 2, "a": 1}}</tools>\nB'
    go = 'A <tools>{"name":"f","parameters":{"a":1,"b":2}}</tools>\nB'
    assert first_difference(python, go) is None  # spacing and key order of JSON only
    changed = first_difference(python, go.replace('"a":1', '"a":3'))
    assert changed is not None and changed.startswith("part 2: expected ")
    assert "'a': 1" in changed and "'a': 3" in changed
    assert first_difference(python, go.replace("</tools>\nB", "</tools>B")) == (
        "text part 3, character 8: expected '</tools>\\nB', got '</tools>B'"
    )
    assert first_difference(python, go + '{"x": 1}') == "expected 3 parts, got 5"


def test_ollama_check() -> None:
    kept = ollama_check(ollama_choice(FORMATS["phi4mini"].tool_template, hf.PHI4MINI))
    assert kept.status == PASSED
    assert kept.figures["path"] == "modelfile"
    assert kept.summary.endswith(
        "(the TEMPLATE's capabilities (tools) are not fewer than the GGUF template's (tools))"
    )
    nothing = ollama_check(ollama_choice(None, None))
    assert nothing.status == FAILED
    assert nothing.figures["path"] == "none"


def test_hf_tool_messages() -> None:
    messages, tools = hf_tool_messages("S", ASK, "tools")
    assert messages == [{"role": "system", "content": "S"}, *ASK]
    assert tools == list(TOOLS)
    messages, tools = hf_tool_messages(None, ASK, "system")
    assert tools is None
    head = messages[0]
    assert head["role"] == "system" and head["content"] == ""
    assert json.loads(head["tools"]) == [
        {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": TOOLS[0]["function"]["parameters"]["properties"],
        }
    ]
