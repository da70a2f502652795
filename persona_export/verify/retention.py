"""Persona retention: how much of what the adapter changed survives quantization.

For each position of each prompt there are three next-token distributions: the persona's
F16 GGUF (``p``), a quantized GGUF of it (``q``) and the base model without the adapter
(``b``). With log-probabilities ``lp``, ``lq``, ``lb``:

* the **persona signal** is mean KL(p || b): how far the adapter moved the model;
* the adapter's **shift** is ``a = lp - lb`` and the quant's is ``c = lq - lb``, each
  centred under ``p`` (log-probabilities are defined up to a constant per position);
* **retention** is the least-squares slope of ``c`` on ``a`` in the F16's own metric,
  pooled over positions: ``sum <a, c>_p / sum <a, a>_p`` with ``<x, y>_p = sum_v p_v x_v
  y_v``. 1: the quant moves the model exactly as far along the persona's direction as the
  F16 does; 0: it is back at the base; it may exceed 1 (the quant overshoots).

Why the slope, not ``1 - KL(p || q) / KL(p || b)`` (also reported, as ``kl_retention``):
to second order KL(p || x) = 1/2 ||lp - lx||^2_p, so writing the quant's shift as ``c = s a +
e`` with ``e`` orthogonal to ``a`` gives KL(p || q) / KL(p || b) = (1 - s)^2 + ||e||^2 /
||a||^2. The KL ratio therefore mixes the persona lost (``1 - s``, squared: losing 10 % of
the shift costs only 0.01) with quantization noise unrelated to the persona (``e``, which
the KL bound already judges), and that noise term grows without bound as the persona
signal gets small: a gentle adapter would fail every quant. The slope isolates ``s``: noise
uncorrelated with the persona averages out of ``<a, c>`` instead of adding up, and
positions where the adapter changes nothing (``a`` near 0) add nearly nothing to either
sum, so they neither dilute nor penalize it; positions weigh by how much the persona shows
there. The standard error (``retention_se``, from the per-position scatter about the
slope; positions of one prompt are correlated, so it is a lower bound) says how sharply it
is measured, and below a minimum persona signal retention is not judged at all.

``correlation`` is the cosine of ``a`` and ``c`` in the same metric (1: same direction).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from persona_export.verify.metrics import Array, log_softmax

_ROWS = 16


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Retention:
    """The persona figures of one quantized model against its F16 and the base."""

    positions: int
    signal: float  # mean KL(F16 || base), nats
    kl: float  # mean KL(F16 || quant), nats
    retention: float  # the slope (NaN when the adapter changes nothing at all)
    retention_se: float
    kl_retention: float  # 1 - kl / signal (NaN when the signal is 0)
    correlation: float

    def to_json(self) -> dict[str, float | int | None]:
        return {
            "positions": self.positions,
            "persona_signal": self.signal,
            "kl_mean": self.kl,
            "retention": _finite(self.retention),
            "retention_se": _finite(self.retention_se),
            "kl_retention": _finite(self.kl_retention),
            "correlation": _finite(self.correlation),
        }


def _centred(x: npt.NDArray[np.float64], p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = x - (p * x).sum(axis=-1, keepdims=True)
    return out


def retention(triples: Iterable[tuple[Array, Array, Array]]) -> Retention:
    """Persona figures over all positions of ``(f16, quant, base)`` logits, one triple per
    prompt (equal position counts; only the vocabulary columns all three have are used)."""
    ab: list[npt.NDArray[np.float64]] = []
    aa: list[npt.NDArray[np.float64]] = []
    cc: list[npt.NDArray[np.float64]] = []
    kl_base = kl_quant = 0.0
    positions = 0
    for f16, quant, base in triples:
        if not f16.shape[0] == quant.shape[0] == base.shape[0]:
            raise ValueError(
                f"position counts differ: {f16.shape[0]}, {quant.shape[0]}, {base.shape[0]}"
            )
        vocab = min(f16.shape[1], quant.shape[1], base.shape[1])
        for start in range(0, f16.shape[0], _ROWS):
            rows = slice(start, start + _ROWS)
            lp = log_softmax(f16[rows, :vocab].astype(np.float64))
            lq = log_softmax(quant[rows, :vocab].astype(np.float64))
            lb = log_softmax(base[rows, :vocab].astype(np.float64))
            p = np.exp(lp)
            kl_base += float((p * (lp - lb)).sum())
            kl_quant += float((p * (lp - lq)).sum())
            a = _centred(lp - lb, p)
            c = _centred(lq - lb, p)
            ab.append((p * a * c).sum(axis=-1))
            aa.append((p * a * a).sum(axis=-1))
            cc.append((p * c * c).sum(axis=-1))
            positions += lp.shape[0]
    if positions == 0:
        raise ValueError("no positions to compare")
    ab_all, aa_all, cc_all = np.concatenate(ab), np.concatenate(aa), np.concatenate(cc)
    total = float(aa_all.sum())
    slope = float(ab_all.sum()) / total if total > 0 else math.nan
    se = float(np.sqrt(np.square(ab_all - slope * aa_all).sum())) / total if total > 0 else math.nan
    norm = math.sqrt(total * float(cc_all.sum()))
    signal = max(kl_base / positions, 0.0)
    kl = max(kl_quant / positions, 0.0)
    return Retention(
        positions=positions,
        signal=signal,
        kl=kl,
        retention=slope,
        retention_se=se,
        kl_retention=1.0 - kl / signal if signal > 0 else math.nan,
        correlation=float(ab_all.sum()) / norm if norm > 0 else math.nan,
    )
