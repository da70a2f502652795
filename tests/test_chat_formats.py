"""Proof that each shipped chat format's Ollama TEMPLATE, rendered by Go's text/template the
way Ollama renders it, gives character for character what the model family's own Hugging
Face chat template gives (transformers' apply_chat_template, add_generation_prompt=True) for
a system prompt and multi-turn conversations.

The comparison is on what the model is fed: Ollama's prompt is the rendered TEMPLATE plus
the BOS token llama.cpp adds when the GGUF says add_bos_token; the HF prompt is the chat
template's text (which writes BOS itself). Every format renders in Ollama's "messages mode"
(the template uses .Messages), so one rendering covers the whole conversation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona_export.hf.chat_formats import (
    ASSISTANT_ONE,
    PLACEHOLDER_TURNS,
    SYSTEM_TEXT,
    USER_ONE,
    detect_format,
    load_formats,
)
from persona_export.hf.tokenizer import gguf_adds_bos
from persona_export.stages.modelfile import ModelfileConfig
from persona_export.stages.modelfile import run as write_modelfile
from tests.gotemplate_runner import GoTemplateRenderer
from tests.modelfile_kit import FORMAT_CASES, TokenizerKind, make_persona_project, write_personas
from tests.modelfile_parser import parse_modelfile

SYSTEM = 'You are Captain Test, a pirate.\nAnswer in one "short" line; use {{ braces }} freely.'
CONVERSATIONS: tuple[tuple[dict[str, str], ...], ...] = (
    ({"role": "user", "content": "Hello!"},),
    (
        {"role": "user", "content": "What is a loop?"},
        {"role": "assistant", "content": "Arr, a loop be sailin' round an island."},
        {"role": "user", "content": "And a function?"},
    ),
    (
        {"role": "user", "content": "Line one\nline two: Grüße, 日本語, 🦜"},
        {"role": "assistant", "content": 'def f(x):\n    return x  # "quoted"'},
        {"role": "user", "content": "Why {{ .Content }} and </s>?"},
        {"role": "assistant", "content": "Because."},
        {"role": "user", "content": "Thanks"},
    ),
)


def _hf_messages(
    system: str | None, conversation: tuple[dict[str, str], ...], *, fold_system: bool
) -> list[dict[str, str]]:
    messages = [dict(m) for m in conversation]
    if system is None:
        return messages
    if fold_system:  # templates without a system role: the convention the format documents
        messages[0]["content"] = f"{system}\n\n{messages[0]['content']}"
        return messages
    return [{"role": "system", "content": system}, *messages]


@pytest.mark.go
@pytest.mark.parametrize(
    ("case", "chat_template", "kind", "expected"), FORMAT_CASES, ids=[c[0] for c in FORMAT_CASES]
)
@pytest.mark.parametrize("with_system", [True, False], ids=["system", "no-system"])
def test_ollama_template_renders_like_the_hf_chat_template(
    tmp_path: Path,
    go_template: GoTemplateRenderer,
    case: str,
    chat_template: str,
    kind: TokenizerKind,
    expected: str,
    with_system: bool,
) -> None:
    from transformers import AutoTokenizer

    layout = make_persona_project(tmp_path, "cap", chat_template, kind)
    body = f"system = {json.dumps(SYSTEM, ensure_ascii=False)}\n" if with_system else ""
    personas = write_personas(tmp_path / "personas.toml", f"[personas.cap]\n{body}")
    result = write_modelfile(ModelfileConfig("cap", layout=layout, personas_file=personas))
    assert result.format_name == expected
    parsed = parse_modelfile(result.modelfile.read_text(encoding="utf-8"))
    assert parsed.template is not None
    runtime_bos = kind.special["bos_token"] if gguf_adds_bos(result.gguf) else ""

    tokenizer = AutoTokenizer.from_pretrained(layout.merged("cap"))
    refuses_system = case == "gemma2"
    for conversation in CONVERSATIONS:
        (rendered,) = go_template.render_many(
            [(parsed.template, conversation, parsed.system or "")]
        )
        assert rendered.error is None, rendered.error
        assert rendered.mode == "messages"
        hf_messages = _hf_messages(
            SYSTEM if with_system else None, conversation, fold_system=refuses_system
        )
        hf_text = tokenizer.apply_chat_template(
            hf_messages, add_generation_prompt=True, tokenize=False
        )
        assert runtime_bos + (rendered.output or "") == hf_text


@pytest.mark.go
def test_each_format_renders_its_own_detection_strings(go_template: GoTemplateRenderer) -> None:
    formats = load_formats()
    cases = []
    for fmt in formats:
        cases.append((fmt.template, PLACEHOLDER_TURNS, SYSTEM_TEXT))
        cases.append((fmt.template, PLACEHOLDER_TURNS, ""))
    results = go_template.render_many(cases)
    for i, fmt in enumerate(formats):
        assert results[2 * i].output == fmt.with_system, fmt.name
        assert results[2 * i + 1].output == fmt.without_system, fmt.name
        assert results[2 * i].mode == "messages", fmt.name


def test_formats_are_told_apart() -> None:
    formats = load_formats()
    assert [f.name for f in formats] == [
        "chatml",
        "gemma",
        "llama2",
        "llama3.1",
        "llama3",
        "mistral",
        "phi3",
        "phi4mini",
    ]
    renderings = [f.with_system for f in formats] + [f.without_system for f in formats]
    assert len(set(renderings)) == len(renderings)
    for fmt in formats:
        for part in (USER_ONE, ASSISTANT_ONE):
            assert part in fmt.with_system and part in fmt.without_system


@pytest.mark.parametrize(
    ("case", "chat_template", "kind", "expected"), FORMAT_CASES, ids=[c[0] for c in FORMAT_CASES]
)
def test_detection_of_real_templates(
    case: str, chat_template: str, kind: TokenizerKind, expected: str
) -> None:
    found = detect_format(chat_template, special_tokens=kind.special, formats=load_formats())
    assert found.format.name == expected
    assert found.system_refused == (case == "gemma2")
    assert found.emits_bos == (case in {"llama3", "gemma2", "gemma3", "mistral-v0.3", "llama2"})
    assert (found.default_system is not None) == (case == "smollm2")
