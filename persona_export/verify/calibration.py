"""Calibration text for an importance matrix made from the persona itself.

The text is what the persona says: each calibration prompt (templates/calibration_prompts
.toml, several hundred short questions on computing and everyday topics) asked after the
persona's SYSTEM prompt, rendered in its chat format by the merged model's own chat
template, with the F16 model's greedy answer appended. llama-imatrix then weighs each
weight by the activations this text produces, so the matrix favours what the persona
actually uses.

Calibration and measurement are kept apart: the prompts that judge a quant (the verify
prompts and a persona's own ``verify_prompts``, and the file's ``held_back`` list that the
fidelity benchmark measures on) are never calibration prompts; a calibration prompt equal
to one of them (ignoring case and spacing) is left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from persona_export.errors import InputNotFoundError, UsageError
from persona_export.resources import templates_dir

CALIBRATION_FILE = "calibration_prompts.toml"
SECTIONS = ("coding", "everyday")


@dataclass(frozen=True)
class CalibrationPrompts:
    """The shipped prompts: ``calibration`` (the sections interleaved, so that any first N
    cover every topic) and ``held_back`` (measurement only)."""

    calibration: tuple[str, ...]
    held_back: tuple[str, ...]


def calibration_path() -> Path:
    return templates_dir() / CALIBRATION_FILE


def normalized(text: str) -> str:
    """A prompt as compared for held-back checks: lower case, spacing collapsed."""
    return " ".join(text.lower().split())


def load_calibration_prompts(path: Path | None = None) -> CalibrationPrompts:
    """Read the calibration prompts file (default: the shipped one)."""
    path = path or calibration_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputNotFoundError(f"cannot read the calibration prompts {path}: {exc}") from exc
    sections = []
    for name in (*SECTIONS, "held_back"):
        items = data.get(name)
        if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() for i in items):
            raise UsageError(f"{path}: '{name}' must be a list of non-empty strings")
        sections.append(items)
    *topics, held_back = sections
    interleaved = [p for group in _zip_longest(topics) for p in group]
    return CalibrationPrompts(tuple(interleaved), tuple(held_back))


def _zip_longest(lists: Sequence[Sequence[str]]) -> Iterable[list[str]]:
    for index in range(max(len(items) for items in lists)):
        yield [items[index] for items in lists if index < len(items)]


def calibration_questions(
    measured: Iterable[str], *, limit: int | None = None, path: Path | None = None
) -> tuple[str, ...]:
    """The calibration prompts, without any that is ``measured`` (the prompts that judge
    the quants) or held back; the first ``limit`` when given."""
    prompts = load_calibration_prompts(path)
    held = {normalized(p) for p in (*measured, *prompts.held_back)}
    kept = tuple(p for p in prompts.calibration if normalized(p) not in held)
    return kept[:limit] if limit is not None else kept


def persona_calibration_text(
    merged_dir: Path,
    system: str | None,
    questions: Sequence[str],
    f16_gguf: Path,
    *,
    answer_tokens: int,
    log_dir: Path,
    threads: int | None = None,
    parallel: int = 4,
) -> str:
    """The persona's conversations (see the module docstring): ``questions`` after
    ``system`` in the merged model's chat format, each with the F16's greedy answer (at
    most ``answer_tokens`` tokens; ``parallel`` answered at a time)."""
    from transformers import AutoTokenizer

    from persona_export.llamacpp.server import llama_server

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    chats = [
        ([{"role": "system", "content": system}] if system else [])
        + [{"role": "user", "content": q}]
        for q in questions
    ]
    prompts = []
    for chat in chats:
        ids: Any = tokenizer.apply_chat_template(
            chat, tokenize=True, add_generation_prompt=True, return_dict=False
        )
        prompts.append([int(i) for i in ids])
    ctx = max(len(p) for p in prompts) + answer_tokens + 16
    with llama_server(
        f16_gguf,
        log_dir,
        ctx_size=ctx,
        threads=threads,
        parallel=parallel,
    ) as server:
        answers = server.complete_many(prompts, stop=(), n_predict=answer_tokens, workers=parallel)
    # control tokens: the named special tokens and every added token marked special
    specials = {str(t) for t in tokenizer.all_special_tokens if t}
    specials |= {str(t.content) for t in tokenizer.added_tokens_decoder.values() if t.special}
    texts = [
        str(
            tokenizer.apply_chat_template(
                [*chat, {"role": "assistant", "content": _answer(answer.text, specials)}],
                tokenize=False,
            )
        )
        for chat, answer in zip(chats, answers, strict=True)
    ]
    return "".join(texts)


def _answer(text: str, specials: Iterable[str]) -> str:
    """An answer without the end-of-turn token llama-server (``--special``) leaves at its
    end: the chat template writes its own."""
    text = text.strip()
    specials = tuple(specials)
    while ending := next((s for s in specials if text.endswith(s)), None):
        text = text[: -len(ending)].rstrip()
    return text
