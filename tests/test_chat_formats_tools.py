"""Tool use through the shipped TEMPLATEs: for every tool-capable format, the Modelfile the
modelfile stage writes for a model of that family carries the tool-capable TEMPLATE, and that
TEMPLATE rendered by Go with Ollama's data (tools, assistant tool calls, tool results) gives
what the family's own Hugging Face chat template gives (transformers' apply_chat_template
with tools=...) for conversations with tools, tool calls and tool results. Models whose own
template renders no tools (SmolLM2's ChatML, Llama 3, Phi-3, Gemma, Llama 2) keep a tool-less
TEMPLATE.

Tool definitions and arguments are JSON: Ollama's json writes them compactly (property names
sorted), Python's json.dumps with ", " and ": "; the comparison (verify.tools.first_difference)
takes JSON values as values and every other character as it is.

Phi-4-mini's own template takes tools as a JSON string on the system message and renders no
tool calls: its HF side gets the tools that way, and the assistant's call as the text the
TEMPLATE teaches (what the model writes, kept as its message content).

Finally Ollama's parsing rule (tests/ollama_tool_parser.py) reads a model answer written the
way the TEMPLATE teaches back into the right tool name and arguments.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from persona_export.hf.chat_formats import SYSTEM_TEXT, load_formats
from persona_export.hf.chat_tools import (
    PROBE_TOOL,
    PROBE_TURNS,
    first_difference,
    tool_form_difference,
    tools_via,
)
from persona_export.ollama.template_choice import RENDERED, ollama_choice
from persona_export.stages.modelfile import ModelfileConfig
from persona_export.stages.modelfile import run as write_modelfile
from tests import hf_chat_templates as hf
from tests.gotemplate_runner import GoTemplateRenderer
from tests.modelfile_kit import (
    CHATML,
    GEMMA,
    LLAMA2,
    LLAMA3,
    MISTRAL,
    PHI,
    PHI3,
    TokenizerKind,
    make_persona_project,
    write_personas,
)
from tests.modelfile_parser import parse_modelfile
from tests.ollama_tool_parser import parse_tool_calls

FORMATS = {f.name: f for f in load_formats()}
SYSTEM = "You are Captain Test, a pirate."
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the local time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "description": "An IANA time zone"}},
            "required": ["zone"],
        },
    },
}
TOOLS = [WEATHER, TIME]
CALL = {
    "id": "call00001",
    "type": "function",
    "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
}
ASK = {"role": "user", "content": "What is the weather in Paris?"}
CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "ask": [ASK],
    "call": [
        ASK,
        {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL]},
        {"role": "tool", "content": "21 degrees", "tool_call_id": "call00001"},
    ],
    "round-trip": [
        ASK,
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "content": '{"temperature": 21}', "tool_call_id": "call00001"},
        {"role": "assistant", "content": "It is 21 degrees in Paris."},
        {"role": "user", "content": "And in Rome?"},
    ],
    "chat": [
        ASK,
        {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": "Thanks"},
    ],
}

#: (case, HF chat template, tokenizer kind, format, Modelfile SYSTEM when the persona has none)
TOOL_CASES: tuple[tuple[str, str, TokenizerKind, str, str | None], ...] = (
    ("phi4mini", hf.PHI4MINI, PHI, "phi4mini", None),
    ("qwen2.5", hf.QWEN25, CHATML, "chatml", hf.QWEN25_DEFAULT_SYSTEM),
    ("qwen3", hf.QWEN3, CHATML, "chatml", None),
    ("mistral-v0.3", hf.MISTRAL_V03, MISTRAL, "mistral", None),
    ("llama3.3", hf.LLAMA33, LLAMA3, "llama3.1", None),
)
TOOL_LESS = (
    ("smollm2", hf.SMOLLM2, CHATML, "chatml"),
    ("llama3", hf.LLAMA3, LLAMA3, "llama3"),
    ("phi3", hf.PHI3_MINI, PHI3, "phi3"),
    ("gemma3", hf.GEMMA3, GEMMA, "gemma"),
    ("llama2", hf.LLAMA2, LLAMA2, "llama2"),
)


def _phi_call_text(call: dict[str, Any]) -> str:
    """A tool call as the Phi-4-mini TEMPLATE teaches it (see templates/formats/phi4mini.toml)."""
    function = {"name": call["function"]["name"], "arguments": call["function"]["arguments"]}
    return f"<|tool_call|>{json.dumps(function)}<|/tool_call|>"


def _hf_messages(
    case: str, system: str | None, conversation: list[dict[str, Any]], tools: list | None
) -> tuple[list[dict[str, Any]], list | None]:
    messages = [dict(m) for m in conversation]
    if case != "phi4mini":
        head = [{"role": "system", "content": system}] if system else []
        return head + messages, tools
    for message in messages:  # Phi-4-mini's template renders no calls: the model's own text
        if message.get("tool_calls"):
            calls = message.pop("tool_calls")
            message["content"] += "".join(_phi_call_text(c) for c in calls)
    if system is None and not tools:
        return messages, None
    head: dict[str, Any] = {"role": "system", "content": system or ""}
    if tools:
        head["tools"] = json.dumps(
            [
                {
                    "name": t["function"]["name"],
                    "description": t["function"]["description"],
                    "parameters": t["function"]["parameters"]["properties"],
                }
                for t in tools
            ]
        )
    return [head, *messages], None


def _modelfile(tmp_path: Path, chat_template: str, kind: TokenizerKind, system: str | None):  # type: ignore[no-untyped-def]
    layout = make_persona_project(tmp_path, "cap", chat_template, kind)
    body = f"system = {json.dumps(system)}\n" if system else ""
    personas = write_personas(tmp_path / "personas.toml", f"[personas.cap]\n{body}")
    result = write_modelfile(ModelfileConfig("cap", layout=layout, personas_file=personas))
    return layout, result, parse_modelfile(result.modelfile.read_text(encoding="utf-8"))


@pytest.mark.go
@pytest.mark.parametrize(
    ("case", "chat_template", "kind", "format_name", "default_system"),
    TOOL_CASES,
    ids=[c[0] for c in TOOL_CASES],
)
@pytest.mark.parametrize("with_system", [True, False], ids=["system", "no-system"])
def test_tool_template_renders_like_the_hf_chat_template(
    tmp_path: Path,
    go_template: GoTemplateRenderer,
    case: str,
    chat_template: str,
    kind: TokenizerKind,
    format_name: str,
    default_system: str | None,
    with_system: bool,
) -> None:
    from transformers import AutoTokenizer

    fmt = FORMATS[format_name]
    layout, result, parsed = _modelfile(
        tmp_path, chat_template, kind, SYSTEM if with_system else None
    )
    assert result.format_name == format_name
    assert parsed.template == fmt.tool_template  # no BOS prefix: these tokenizers add it
    assert parsed.system == (SYSTEM if with_system else default_system)
    assert result.ollama.path == RENDERED and result.ollama.tools
    tokenizer = AutoTokenizer.from_pretrained(layout.merged("cap"))
    bos = kind.special["bos_token"] if kind.add_bos else ""
    system = SYSTEM if with_system else None
    exact = 0
    for name, conversation in CONVERSATIONS.items():
        for tools in (TOOLS, None):
            rendered = go_template.render(parsed.template, conversation, parsed.system or "", tools)
            messages, hf_tools = _hf_messages(case, system, conversation, tools)
            expected = tokenizer.apply_chat_template(
                messages, tools=hf_tools, add_generation_prompt=True, tokenize=False
            )
            difference = first_difference(str(expected), bos + rendered)
            assert difference is None, f"{name}, tools={tools is not None}: {difference}"
            exact += str(expected) == bos + rendered
    assert exact >= 1  # conversations without JSON are equal character for character


@pytest.mark.parametrize(
    ("case", "chat_template", "kind", "format_name"), TOOL_LESS, ids=[c[0] for c in TOOL_LESS]
)
def test_models_without_tools_keep_a_tool_less_template(
    tmp_path: Path, case: str, chat_template: str, kind: TokenizerKind, format_name: str
) -> None:
    assert tools_via(chat_template, special_tokens=kind.special) is None
    _, result, parsed = _modelfile(tmp_path, chat_template, kind, SYSTEM)
    assert result.format_name == format_name
    assert parsed.template is not None and ".Tools" not in parsed.template
    choice = ollama_choice(parsed.template, chat_template)
    assert choice.capabilities == ("completion",)  # Ollama does not advertise tools


@pytest.mark.go
def test_each_tool_template_renders_its_own_detection_string(
    go_template: GoTemplateRenderer,
) -> None:
    tool_formats = [f for f in FORMATS.values() if f.tool_template is not None]
    cases = [
        (
            f.tool_template,
            PROBE_TURNS[:1] if f.tools_via == "system" else PROBE_TURNS,
            SYSTEM_TEXT,
            [PROBE_TOOL],
        )
        for f in tool_formats
    ]
    for fmt, result in zip(tool_formats, go_template.render_many(cases), strict=True):
        assert fmt.tool_detect is not None and result.output is not None, fmt.name
        assert first_difference(fmt.tool_detect, result.output) is None, fmt.name
        assert result.tool_tag == fmt.tool_call_tag, fmt.name


def test_a_template_with_tools_in_another_form_keeps_the_plain_template(tmp_path: Path) -> None:
    # Qwen2.5's template with its tool section reworded: still ChatML, still renders tools,
    # but not as the ChatML tool TEMPLATE does, so that TEMPLATE would misteach the model.
    other = hf.QWEN25.replace("# Tools", "# Functions")
    difference = tool_form_difference(FORMATS["chatml"], other, special_tokens=CHATML.special)
    assert difference is not None and "# Tools" in difference and "# Functions" in difference
    _, result, parsed = _modelfile(tmp_path, other, CHATML, SYSTEM)
    assert parsed.template == FORMATS["chatml"].template
    assert any(
        "renders tools, but not as the ChatML tool TEMPLATE does" in w for w in result.warnings
    )
    # Ollama >= 0.30 then prefers the model's own template, which does render its tools
    assert ollama_choice(parsed.template, other).path == "gguf"


def test_tools_are_detected_per_model() -> None:
    vias = {case: tools_via(t, special_tokens=k.special) for case, t, k, _, _ in TOOL_CASES}
    assert vias == {
        "phi4mini": "system",
        "qwen2.5": "tools",
        "qwen3": "tools",
        "mistral-v0.3": "tools",
        "llama3.3": "tools",
    }
    assert {f.tools_via for f in FORMATS.values() if f.tool_template} == {"tools", "system"}
    for case, chat_template, kind, format_name, _ in TOOL_CASES:
        difference = tool_form_difference(
            FORMATS[format_name], chat_template, special_tokens=kind.special
        )
        assert difference is None, f"{case}: {difference}"


@pytest.mark.go
@pytest.mark.parametrize("format_name", ["phi4mini", "chatml", "mistral", "llama3.1"])
def test_an_answer_as_the_template_teaches_parses_back(
    go_template: GoTemplateRenderer, format_name: str
) -> None:
    fmt = FORMATS[format_name]
    assert fmt.tool_template is not None
    second = {
        "id": "call00002",
        "type": "function",
        "function": {"name": "get_time", "arguments": {"zone": "Europe/Paris"}},
    }
    calls = [CALL] if format_name == "llama3.1" else [CALL, second]  # Llama 3.1: one per turn
    ask = [ASK]
    answered = [ASK, {"role": "assistant", "content": "", "tool_calls": calls}]
    # (no system prompt: Mistral's moves to the last user turn, so the prompt would not be a
    # prefix of the answered conversation)
    (prompt, full) = go_template.render_many(
        [(fmt.tool_template, ask, "", TOOLS), (fmt.tool_template, answered, "", TOOLS)]
    )
    assert prompt.output is not None and full.output is not None
    assert full.tool_tag == fmt.tool_call_tag
    # The model's answer: what the TEMPLATE writes for the call, up to the end of the turn.
    assert full.output.startswith(prompt.output)
    answer = full.output[len(prompt.output) :]
    end = min(answer.find(s) for s in (*fmt.stop, "</s>") if s in answer)
    answer = answer[:end]
    names = [t["function"]["name"] for t in TOOLS]
    parsed, content = parse_tool_calls(answer, fmt.tool_call_tag or "{", names)
    assert parsed == [(c["function"]["name"], c["function"]["arguments"]) for c in calls]
    assert content.strip() == ""
    # Text without the tag is content, not a call.
    assert parse_tool_calls("Arr, sunny in Paris.", fmt.tool_call_tag or "{", names) == (
        [],
        "Arr, sunny in Paris.",
    )
