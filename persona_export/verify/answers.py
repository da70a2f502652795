"""Greedy answers of a GGUF to the verify prompts, and how far a quantized model's answers
agree with the F16's.

The answers come from the vendored llama-server given the prompts' token ids themselves (no
second rendering or tokenization), greedily (temperature 0, top-k 1), ending on an
end-of-generation token or after ``max_tokens``; they are compared as token ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

Answer = tuple[int, ...]


def greedy_answers(
    gguf: Path,
    prompts: Sequence[Sequence[int]],
    *,
    max_tokens: int,
    log_dir: Path,
    threads: int | None = None,
) -> list[Answer]:
    """The token ids ``gguf`` answers each prompt (token ids) with, greedily."""
    from persona_export.llamacpp.server import SpeedLimits, llama_server

    ctx = max(len(p) for p in prompts) + max_tokens + 16
    answers: list[Answer] = []
    limits = SpeedLimits()  # each answer's time limit from the speed of those before it
    with llama_server(gguf, log_dir, ctx_size=ctx, threads=threads) as server:
        for ids in prompts:
            done = server.complete(
                list(ids), stop=(), n_predict=max_tokens, limits=limits, return_tokens=True
            )
            limits = limits.measured(done)
            answers.append(done.tokens)
    return answers


@dataclass(frozen=True)
class Agreement:
    """How a model's answers compare with the reference's, answer by answer.

    ``identical``: answers equal token for token (to the length limit); ``same_prefix``:
    answers whose first ``prefix_tokens`` tokens are the reference's (the whole answer when
    the reference's is shorter); ``common_tokens``: mean length of the common prefix."""

    answers: int
    identical: int
    same_prefix: int
    prefix_tokens: int
    common_tokens: float
    max_tokens: int

    def to_json(self) -> dict[str, float | int]:
        return {
            "answers": self.answers,
            "identical": self.identical,
            "same_prefix": self.same_prefix,
            "prefix_tokens": self.prefix_tokens,
            "common_tokens": round(self.common_tokens, 2),
            "max_tokens": self.max_tokens,
        }

    def summary(self) -> str:
        return (
            f"answers {self.identical}/{self.answers} identical, {self.same_prefix}/"
            f"{self.answers} with the same first {self.prefix_tokens} tokens"
        )


def _common(a: Answer, b: Answer) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def agreement(
    reference: Sequence[Answer], other: Sequence[Answer], *, prefix_tokens: int, max_tokens: int
) -> Agreement:
    """Compare ``other``'s answers with ``reference``'s (same prompts, same order)."""
    if len(reference) != len(other):
        raise ValueError(f"{len(reference)} reference answers, {len(other)} others")
    common = [_common(a, b) for a, b in zip(reference, other, strict=True)]
    return Agreement(
        answers=len(reference),
        identical=sum(tuple(a) == tuple(b) for a, b in zip(reference, other, strict=True)),
        same_prefix=sum(
            n >= min(prefix_tokens, len(a)) and (len(a) >= prefix_tokens or len(b) == len(a))
            for n, a, b in zip(common, reference, other, strict=True)
        ),
        prefix_tokens=prefix_tokens,
        common_tokens=sum(common) / len(common) if common else 0.0,
        max_tokens=max_tokens,
    )
