"""The prompts every engine sees: each verify conversation, preceded by the persona's system
prompt, rendered by the merged model's own chat template and tokenized by its tokenizer
(``apply_chat_template``), so that every engine is fed the same ids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export.errors import InvalidInputError
from persona_export.hf import template_limits
from persona_export.hf.template_limits import MAX_TEMPLATE_BYTES, TemplateLimitError, time_limit
from persona_export.verify.data import Turn


@dataclass(frozen=True)
class Prompt:
    """One conversation as each engine sees it."""

    messages: tuple[Turn, ...]  # with the system prompt, when there is one
    turns: tuple[Turn, ...]  # without it (Ollama adds the Modelfile's SYSTEM itself)
    text: str  # the HF chat template's rendering
    ids: tuple[int, ...]


def build_prompts(
    merged_dir: Path, system: str | None, conversations: Sequence[Sequence[Turn]]
) -> tuple[list[Prompt], str | None]:
    """The prompts of ``conversations`` (after ``system``), and the tokenizer's BOS text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    if len(str(tokenizer.chat_template or "").encode("utf-8")) > MAX_TEMPLATE_BYTES:
        raise InvalidInputError(
            f"the chat template of {merged_dir} is larger than {MAX_TEMPLATE_BYTES} bytes",
            "fix or replace the model's chat template",
        )
    if not tokenizer.chat_template:
        raise InvalidInputError(
            f"the tokenizer in {merged_dir} has no chat template",
            "the merged folder needs the base model's tokenizer_config.json or chat_template.jinja",
        )
    prompts = []
    for turns in conversations:
        messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        messages += [dict(t) for t in turns]
        try:  # the template is the model's code: rendered within the same bounds as detection
            seconds = 2 * template_limits.RENDER_SECONDS  # rendered twice (text, then ids)
            with time_limit(seconds, f"the chat template of {merged_dir}"):
                text = tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
                ids: Any = tokenizer.apply_chat_template(
                    messages, tokenize=True, add_generation_prompt=True, return_dict=False
                )
        except TemplateLimitError as exc:
            raise InvalidInputError(str(exc), "fix or replace the model's chat template") from exc
        prompts.append(Prompt(tuple(messages), tuple(turns), str(text), tuple(int(i) for i in ids)))
    bos = tokenizer.bos_token if isinstance(tokenizer.bos_token, str) else None
    return prompts, bos
