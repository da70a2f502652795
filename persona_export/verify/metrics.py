"""Figures that compare two models' logits on the same token ids.

Each function takes pairs of ``(positions, vocab)`` float arrays, one pair per prompt, so that
a long prompt set never needs one huge array, and returns figures over all positions:

* NMSE = sum((a - b)^2) / sum(a^2): the error relative to the logits' own size, so it means
  the same for a model whose logits are small (random weights) or large (a trained model).
* top-1 agreement: the share of positions where both pick the same next token. Where the
  reference's two best tokens nearly tie, any rounding can swap them; ``decisive_mismatches``
  counts only the positions where the reference's choice leads the other's by more than
  ``tie_rel`` times the position's RMS logit (an error beyond the rounding a bound allows).
* KL(p_ref || p_other), mean over positions, in nats: how much the quantized model's next-token
  distribution differs where the reference puts its probability.
* the reference's mean entropy relative to the uniform distribution: near 1.0 means the
  reference is near-uniform (random weights), where every KL is tiny whatever the error, so a
  KL bound says nothing; the report notes it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]
_ROWS = 16


@dataclass(frozen=True)
class Comparison:
    """How ``other`` differs from ``reference`` over all positions of all prompts."""

    positions: int
    vocab: int
    nmse: float
    max_abs_diff: float
    top1_agreement: float
    top1_mismatches: int
    decisive_mismatches: int
    kl_mean: float
    kl_max: float
    ref_entropy_ratio: float

    def to_json(self) -> dict[str, float | int]:
        return {
            "positions": self.positions,
            "vocab": self.vocab,
            "nmse": self.nmse,
            "max_abs_diff": self.max_abs_diff,
            "top1_agreement": self.top1_agreement,
            "top1_mismatches": self.top1_mismatches,
            "decisive_mismatches": self.decisive_mismatches,
            "kl_mean": self.kl_mean,
            "kl_max": self.kl_max,
            "ref_entropy_ratio": self.ref_entropy_ratio,
        }


def log_softmax(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    shifted = x - x.max(axis=-1, keepdims=True)
    out: npt.NDArray[np.float64] = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


def compare(pairs: Iterable[tuple[Array, Array]], *, tie_rel: float = 0.0) -> Comparison:
    """Compare ``(reference, other)`` logits, prompt by prompt (equal shapes per pair; only
    the common leading vocabulary columns are compared when the widths differ). ``tie_rel``:
    see ``decisive_mismatches`` in the module docstring."""
    sq_err = sq_ref = 0.0
    max_abs = 0.0
    agree = positions = decisive = 0
    kl_sum = 0.0
    kl_max = 0.0
    entropy_sum = 0.0
    vocab = 0
    for reference, other in pairs:
        if reference.shape[0] != other.shape[0]:
            raise ValueError(f"position counts differ: {reference.shape[0]} vs {other.shape[0]}")
        vocab = min(reference.shape[1], other.shape[1])
        # a few rows at a time: float64 copies of a 200k vocabulary add up quickly
        for start in range(0, reference.shape[0], _ROWS):
            ref = reference[start : start + _ROWS, :vocab].astype(np.float64)
            oth = other[start : start + _ROWS, :vocab].astype(np.float64)
            diff = ref - oth
            sq_err += float(np.square(diff).sum())
            sq_ref += float(np.square(ref).sum())
            max_abs = max(max_abs, float(np.abs(diff).max(initial=0.0)))
            rows = np.arange(ref.shape[0])
            top_ref, top_oth = ref.argmax(axis=-1), oth.argmax(axis=-1)
            agree += int((top_ref == top_oth).sum())
            lead = ref[rows, top_ref] - ref[rows, top_oth]
            rms = np.sqrt(np.square(ref).mean(axis=-1))
            decisive += int(((top_ref != top_oth) & (lead > tie_rel * rms)).sum())
            positions += ref.shape[0]
            log_p = log_softmax(ref)
            log_q = log_softmax(oth)
            p = np.exp(log_p)
            kl = (p * (log_p - log_q)).sum(axis=-1)
            kl_sum += float(kl.sum())
            kl_max = max(kl_max, float(kl.max(initial=0.0)))
            entropy_sum += float(-(p * log_p).sum())
    if positions == 0:
        raise ValueError("no positions to compare")
    return Comparison(
        positions=positions,
        vocab=vocab,
        nmse=sq_err / sq_ref if sq_ref > 0 else (0.0 if sq_err == 0 else math.inf),
        max_abs_diff=max_abs,
        top1_agreement=agree / positions,
        top1_mismatches=positions - agree,
        decisive_mismatches=decisive,
        kl_mean=max(kl_sum / positions, 0.0),
        kl_max=max(kl_max, 0.0),
        ref_entropy_ratio=entropy_sum / positions / math.log(vocab) if vocab > 1 else 0.0,
    )
