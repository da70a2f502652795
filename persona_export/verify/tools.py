"""Which chat template Ollama will use for the export, and tool conversations on that path.

* :func:`ollama_check`: Ollama ≥ 0.30's choice between the Modelfile's TEMPLATE and the GGUF's
  chat template (:mod:`persona_export.ollama.template_choice`), reported as a check: the path,
  the capabilities ``ollama show`` will list, the stops and the tool-call tag. It fails only
  when neither template exists (Ollama would send unformatted prompts).
* :func:`tools_check`: when that path declares tools, a conversation with tool definitions
  (and, where the model's own template renders them, a tool call and its result) rendered on
  the path Ollama uses (Go for the TEMPLATE, llama-server's Jinja for the GGUF's template)
  against the HF chat template. Tool definitions and arguments are JSON; Ollama's ``json``
  writes it compactly with keys in its own order where Python's json.dumps writes ``", "`` and
  ``": "``, so JSON values are compared as values and all other text character for character
  (:func:`persona_export.hf.chat_tools.first_difference`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from persona_export.hf.chat_tools import first_difference, system_tools_json, tools_via
from persona_export.ollama.modelfile import Modelfile
from persona_export.ollama.template_choice import NO_TEMPLATE, RENDERED, OllamaChoice, ollama_choice
from persona_export.verify.checks import FAILED, PASSED, SKIPPED, Check

TOOLS: tuple[dict[str, Any], ...] = (
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "The city"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    },
)
_CALL = {
    "id": "call00001",
    "type": "function",
    "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
}
#: The tool conversations (after the persona's system prompt): a question with tools offered;
#: and a call, its result and a follow-up (only where the model's template renders calls).
ASK: tuple[dict[str, Any], ...] = ({"role": "user", "content": "What is the weather in Paris?"},)
ROUND_TRIP: tuple[dict[str, Any], ...] = (
    *ASK,
    {"role": "assistant", "content": "", "tool_calls": [_CALL]},
    {"role": "tool", "content": '{"temperature": 21}', "tool_call_id": "call00001"},
    {"role": "user", "content": "Thanks! And tomorrow?"},
)

Renderer = Callable[[Sequence[Mapping[str, Any]]], str | None]


def choice_for(modelfile: Modelfile) -> OllamaChoice:
    """What Ollama >= 0.30 will do with ``modelfile`` and the GGUF it names."""
    from persona_export.llamacpp.gguf_file import read_gguf_metadata

    embedded = read_gguf_metadata(modelfile.gguf).get("tokenizer.chat_template")
    chat_template = embedded if isinstance(embedded, str) else None
    return ollama_choice(modelfile.template, chat_template, modelfile.stops)


def ollama_check(choice: OllamaChoice) -> Check:
    """The reproduced choice as a check (see the module docstring)."""
    summary = f"{choice.summary()} ({choice.reason})"
    if choice.path == NO_TEMPLATE:
        return Check("ollama-template", FAILED, summary, choice.to_json())
    return Check("ollama-template", PASSED, summary, choice.to_json())


def hf_tool_messages(
    system: str | None, conversation: Sequence[Mapping[str, Any]], via: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and ``tools`` argument for the HF chat template: tools as the argument
    (``via="tools"``), or as a JSON string in the system message (``"system"``)."""
    messages = [dict(m) for m in conversation]
    if via == "system":
        head = {"role": "system", "content": system or "", "tools": system_tools_json(TOOLS)}
        return [head, *messages], None
    head_list = [{"role": "system", "content": system}] if system else []
    return [*head_list, *messages], [dict(t) for t in TOOLS]


def tools_check(
    choice: OllamaChoice,
    merged_dir: Path,
    system: str | None,
    render: Renderer | None,
    bos: str | None,
) -> Check:
    """The tool conversations on ``choice``'s path: ``render`` gives the path's text for
    Ollama-shaped messages (None: the renderer is missing, the check is skipped)."""
    from transformers import AutoTokenizer

    name = "template-tools"
    what = "the TEMPLATE (Go)" if choice.path == RENDERED else "the GGUF's template (llama-server)"
    if render is None:
        return Check(name, SKIPPED, f"not run: no renderer for {what}", {})
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    special = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    via = tools_via(str(tokenizer.chat_template), special_tokens=special)
    if via is None:
        summary = "the model's own chat template renders no tools: nothing to compare"
        return Check(name, SKIPPED, summary, {})
    conversations = [ASK] if via == "system" else [ASK, ROUND_TRIP]
    mismatches = []
    for number, conversation in enumerate(conversations, 1):
        messages, tools = hf_tool_messages(system, conversation, via)
        expected = tokenizer.apply_chat_template(
            messages,
            tools=tools,  # type: ignore[arg-type]  # OpenAI-style dicts, as transformers takes
            tokenize=False,
            add_generation_prompt=True,
        )
        actual = render(conversation)
        if actual is None:
            mismatches.append(f"tool conversation {number}: {what} could not render it")
            continue
        difference = first_difference(_strip(str(expected), bos), _strip(actual, bos))
        if difference is not None:
            mismatches.append(f"tool conversation {number}: {what} differs from HF at {difference}")
    figures = {"conversations": len(conversations), "via": via, "mismatches": mismatches}
    if mismatches:
        return Check(name, FAILED, mismatches[0], figures)
    note = "" if via == "tools" else " (its own template renders no tool calls)"
    summary = (
        f"{what} renders {len(conversations)} tool conversation(s) as the HF chat template "
        f"does, JSON compared as values{note}"
    )
    return Check(name, PASSED, summary, figures)


def _strip(text: str, bos: str | None) -> str:
    return text[len(bos) :] if bos and text.startswith(bos) else text
