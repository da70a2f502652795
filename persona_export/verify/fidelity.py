"""How faithful a quantized GGUF is to the persona's F16: the figures `verify` reports for
each quant and `quantize --type auto` chooses a type by.

A :class:`Reference` is computed once per run: the prompts' token ids, the F16 GGUF's logits
(llama.cpp), the base model's logits without the adapter (Hugging Face, float32) and the
F16's greedy answers. :func:`measure` then gives one quantized GGUF's :class:`Fidelity`:
KL(F16 || quant) and top-1 (:mod:`~persona_export.verify.metrics`), the persona signal and
retention (:mod:`~persona_export.verify.retention`) and the agreement of its greedy answers
with the F16's (:mod:`~persona_export.verify.answers`).

Why the base logits come from the Hugging Face base and not from a GGUF of the base: the
F16's shift from the base then mixes two engines, but verify's merged-vs-F16 check bounds
that difference (NMSE <= 1e-3; 2e-6 measured on the demo) in the same run, and the quant's
part of retention (``<a, quant - F16>``) never touches the base at all: both are GGUF
logits. A GGUF of the base would cost a conversion (45 s and 7.7 GB on Phi-4-mini) per base
to remove an error three orders of magnitude below the persona signals measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export.verify.answers import Agreement, Answer, agreement, greedy_answers
from persona_export.verify.data import Bounds
from persona_export.verify.metrics import Array, Comparison, compare
from persona_export.verify.retention import Retention, retention


@dataclass(frozen=True)
class Reference:
    """What every quant of one persona is measured against (see the module docstring)."""

    ids: tuple[tuple[int, ...], ...]
    f16: list[Array]
    base: list[Array]
    answers: tuple[Answer, ...]
    answer_tokens: int


def reference(
    f16_gguf: Path,
    base_dir: Path,
    ids: Sequence[Sequence[int]],
    *,
    bounds: Bounds,
    work_dir: Path,
    threads: int | None = None,
    hf_dtype: str = "float32",
    f16_logits: list[Array] | None = None,
) -> Reference:
    """The F16's logits (``f16_logits`` when already computed) and answers, and the base's
    logits, on the prompts ``ids``."""
    from persona_export.llamacpp.logits import gguf_logits
    from persona_export.verify.logits import base_logits

    prompts = tuple(tuple(int(i) for i in p) for p in ids)
    f16 = (
        f16_logits
        if f16_logits is not None
        else gguf_logits(f16_gguf, prompts, work_dir, threads=threads)
    )
    base = base_logits(base_dir, prompts, dtype=hf_dtype)
    answers = greedy_answers(
        f16_gguf, prompts, max_tokens=bounds.answer_tokens, log_dir=work_dir, threads=threads
    )
    return Reference(prompts, f16, base, tuple(answers), bounds.answer_tokens)


@dataclass(frozen=True)
class Fidelity:
    """One quantized GGUF against the reference."""

    quant_type: str
    comparison: Comparison
    retention: Retention
    agreement: Agreement

    def to_json(self) -> dict[str, Any]:
        return {
            **self.comparison.to_json(),
            **self.retention.to_json(),
            "answers": self.agreement.to_json(),
        }


def measure(
    gguf: Path,
    quant_type: str,
    ref: Reference,
    *,
    prefix_tokens: int,
    work_dir: Path,
    threads: int | None = None,
) -> Fidelity:
    """Run ``gguf`` on the reference's prompts (logits, then greedy answers) and compare."""
    from persona_export.llamacpp.logits import gguf_logits

    logits = gguf_logits(gguf, ref.ids, work_dir, threads=threads)
    cmp = compare(zip(ref.f16, logits, strict=True))
    kept = retention(zip(ref.f16, logits, ref.base, strict=True))
    del logits
    answers = greedy_answers(
        gguf, ref.ids, max_tokens=ref.answer_tokens, log_dir=work_dir, threads=threads
    )
    agreed = agreement(
        ref.answers, answers, prefix_tokens=prefix_tokens, max_tokens=ref.answer_tokens
    )
    return Fidelity(quant_type.upper(), cmp, kept, agreed)
