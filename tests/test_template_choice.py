"""Ollama >= 0.30's choice between a Modelfile TEMPLATE and the GGUF's chat template, reproduced
(persona_export.ollama.template_choice): every branch of the rule, on the real chat templates
of the model families and on the shipped TEMPLATEs."""

from __future__ import annotations

import pytest

from persona_export.hf.chat_formats import load_formats
from persona_export.ollama.template_choice import (
    NATIVE,
    NO_TEMPLATE,
    RENDERED,
    go_capabilities,
    go_template_setting,
    go_tool_round_trip,
    jinja_capabilities,
    jinja_tool_round_trip,
    ollama_choice,
    preserved_token,
)
from tests import hf_chat_templates as hf

FORMATS = {f.name: f for f in load_formats()}
PHI_STOPS = ("<|end|>", "<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>")
# A TEMPLATE that offers tools but renders neither calls nor results (no round trip).
TOOLS_ONLY = "{{ if .Tools }}{{ json .Tools }}{{ end }}{{ range .Messages }}{{ .Content }}{{ end }}"


def test_real_chat_templates_capabilities() -> None:
    assert jinja_capabilities(hf.PHI4MINI) == ("tools",)  # 'tools' in message
    assert not jinja_tool_round_trip(hf.PHI4MINI)  # renders no tool calls
    assert jinja_capabilities(hf.QWEN25) == ("tools",)
    assert jinja_tool_round_trip(hf.QWEN25)
    assert jinja_capabilities(hf.QWEN3) == ("tools", "thinking")
    assert jinja_capabilities(hf.DEEPSEEK_R1_DISTILL) == ("tools", "thinking")
    assert jinja_tool_round_trip(hf.LLAMA33)  # tool_calls and ipython
    assert jinja_tool_round_trip(hf.MISTRAL_V03)  # tool_calls and tool_results
    for plain in (hf.SMOLLM2, hf.LLAMA3, hf.PHI3_MINI, hf.GEMMA3, hf.LLAMA2, hf.ALPACA):
        assert jinja_capabilities(plain) == ()


def test_shipped_templates_capabilities() -> None:
    for fmt in FORMATS.values():
        assert go_capabilities(fmt.template) == (), fmt.name
        if fmt.tool_template is not None:
            assert go_capabilities(fmt.tool_template) == ("tools",), fmt.name
            assert go_tool_round_trip(fmt.tool_template), fmt.name
    assert set(f.name for f in FORMATS.values() if f.tool_template) == {
        "chatml",
        "llama3.1",
        "mistral",
        "phi4mini",
    }
    assert go_capabilities("{{ .Prompt }}{{ .Suffix }}") == ("insert",)
    think = "{{ range .Messages }}<think>{{ .Thinking }}</think>{{ end }}"
    assert go_capabilities(think) == ("thinking",)
    assert go_capabilities("{{ if .Tools }}") == ()  # Ollama lists nothing for a broken one


def test_phi4mini_plain_template_is_ignored_by_ollama() -> None:
    # The situation issue 13 describes: Phi-4-mini's own template mentions tools, a TEMPLATE
    # without .Tools has fewer capabilities, so Ollama renders the GGUF's template instead.
    choice = ollama_choice(FORMATS["phi4mini"].template, hf.PHI4MINI, PHI_STOPS)
    assert choice.path == NATIVE
    assert choice.capabilities == ("tools", "completion")
    assert choice.tool_call_tag is None
    assert "more capabilities (tools) than the TEMPLATE (none)" in choice.reason
    assert choice.older == "modelfile"


def test_phi4mini_tool_template_is_kept() -> None:
    choice = ollama_choice(FORMATS["phi4mini"].tool_template, hf.PHI4MINI, PHI_STOPS)
    assert choice.path == RENDERED
    assert choice.capabilities == ("completion", "tools")
    assert choice.stops == PHI_STOPS
    assert choice.tool_call_tag == "<|tool_call|>"
    assert choice.preserved_token == "<|tool_call|>"
    assert choice.summary() == (
        "Ollama >= 0.30 renders the Modelfile's TEMPLATE (Go; llama-server --no-jinja); "
        "capabilities: completion, tools; tool calls after '<|tool_call|>'"
    )


@pytest.mark.parametrize(
    ("name", "chat_template", "path"),
    [
        ("chatml", hf.QWEN25, RENDERED),  # tie on tools, both have a round trip
        ("chatml", hf.QWEN3, NATIVE),  # Qwen3's template also has thinking: more capabilities
        ("mistral", hf.MISTRAL_V03, RENDERED),
        ("llama3.1", hf.LLAMA33, RENDERED),
    ],
)
def test_tool_templates_against_their_families(name: str, chat_template: str, path: str) -> None:
    template = FORMATS[name].tool_template
    assert template is not None
    choice = ollama_choice(template, chat_template)
    assert choice.path == path
    if path == RENDERED:
        assert choice.capabilities == ("completion", "tools")
        assert choice.tool_call_tag == FORMATS[name].tool_call_tag
    else:
        assert choice.capabilities == ("tools", "thinking", "completion")
        assert "more capabilities (tools, thinking) than the TEMPLATE (tools)" in choice.reason


def test_equal_tools_gguf_round_trip_wins_over_a_template_without_one() -> None:
    choice = ollama_choice(TOOLS_ONLY, hf.QWEN25)
    assert choice.path == NATIVE
    assert (
        choice.reason
        == "both have tools, and only the GGUF template renders a full tool round trip"
    )
    # ... but not over one that has a round trip (the shipped ChatML tool TEMPLATE)
    assert ollama_choice(FORMATS["chatml"].tool_template, hf.QWEN25).path == RENDERED


def test_more_gguf_capabilities_lose_to_a_template_round_trip_the_gguf_lacks() -> None:
    # tools and thinking, but neither tool calls nor results rendered
    gguf = "{% if tools %}{{ tools }}{% endif %}<think></think>{{ messages }}"
    assert jinja_capabilities(gguf) == ("tools", "thinking") and not jinja_tool_round_trip(gguf)
    assert ollama_choice(FORMATS["chatml"].tool_template, gguf).path == RENDERED
    assert ollama_choice(TOOLS_ONLY, gguf).path == NATIVE


def test_equal_capabilities_without_tools_keep_the_template() -> None:
    choice = ollama_choice(FORMATS["chatml"].template, hf.SMOLLM2)
    assert choice.path == RENDERED
    assert choice.capabilities == ("completion",)
    assert choice.tool_call_tag is None


def test_without_a_template_or_without_a_gguf_template() -> None:
    native = ollama_choice(None, hf.DEEPSEEK_R1_DISTILL, ("<｜end▁of▁sentence｜>",))
    assert native.path == NATIVE
    assert native.capabilities == ("tools", "thinking", "completion")
    assert native.reason == "the Modelfile has no TEMPLATE"
    assert native.older == "prompt"
    assert native.stops == ("<｜end▁of▁sentence｜>",)
    rendered = ollama_choice(FORMATS["chatml"].template, None)
    assert (rendered.path, rendered.reason) == (RENDERED, "the GGUF has no chat template")
    nothing = ollama_choice(None, "")
    assert nothing.path == NO_TEMPLATE and nothing.capabilities == ("completion",)


@pytest.mark.parametrize(
    ("env", "path"),
    [("1", RENDERED), ("true", RENDERED), ("maybe", RENDERED), ("0", NATIVE), ("False", NATIVE)],
)
def test_ollama_go_template_decides_when_set(env: str, path: str) -> None:
    # The plain Phi-4-mini TEMPLATE would lose the comparison; the variable overrides it.
    choice = ollama_choice(FORMATS["phi4mini"].template, hf.PHI4MINI, go_template_env=env)
    assert choice.path == path
    assert choice.reason == f"OLLAMA_GO_TEMPLATE={env} decides"
    assert ollama_choice(FORMATS["chatml"].template, None, go_template_env="0").path == NO_TEMPLATE
    assert ollama_choice(None, hf.PHI4MINI, go_template_env="1").path == NATIVE  # no TEMPLATE


def test_go_template_setting_reads_like_ollama() -> None:
    assert go_template_setting(None) is None
    assert go_template_setting("  ") is None
    assert go_template_setting('"0"') is False
    assert go_template_setting("f") is False
    assert go_template_setting("T") is True
    assert go_template_setting("yes") is True  # not a Go boolean: Ollama reads it as true


@pytest.mark.parametrize(
    ("tag", "token"),
    [
        ("<|tool_call|>", "<|tool_call|>"),
        ("[TOOL_CALLS] [", "[TOOL_CALLS]"),
        ("<tool_call>", "<tool_call>"),
        ("functools[", "functools["),
        ("{", None),
        ("[", None),
        (None, None),
    ],
)
def test_preserved_token(tag: str | None, token: str | None) -> None:
    assert preserved_token(tag) == token
