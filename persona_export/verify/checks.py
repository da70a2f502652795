"""The checks verify reports: each turns measured figures into a :class:`Check` (passed,
failed or skipped, with one line saying what was measured against which bound).

* :func:`agreement_check`: NMSE and top-1 agreement of two models' logits (the merge, the
  conversion);
* :func:`kl_check`: mean KL divergence of a quantized model from the unquantized one;
* :func:`quant_check`: a quantized model judged on KL and on persona retention
  (:func:`judge_quant`, which ``quantize --type auto`` uses to choose a type too);
* :func:`template_check`: a renderer's text against the HF chat template's;
* :func:`token_check`: llama.cpp's token ids against HF's;
* :func:`generation_check`: greedy answers end on a stop, not on the token limit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from persona_export.verify.data import Bounds
    from persona_export.verify.fidelity import Fidelity
    from persona_export.verify.metrics import Comparison

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


@dataclass(frozen=True)
class Check:
    """One check: ``status`` is passed, failed or skipped; ``summary`` one line saying what
    was measured against which bound (or why it failed or could not run)."""

    name: str
    status: str
    summary: str
    figures: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "summary": self.summary,
            "figures": dict(self.figures),
        }


def _fmt(value: float) -> str:
    return f"{value:.2e}" if value and (value < 1e-2 or value >= 1e3) else f"{value:.4g}"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def agreement_check(name: str, cmp: Comparison, nmse_max: float, top1_min: float) -> Check:
    """NMSE within the bound, and the same next token wherever the reference's choice is
    clear: a swap of tokens whose logits differ by less than the error the bound allows (a
    near-tie) is rounding, not a broken export."""
    top1 = 1.0 - cmp.decisive_mismatches / cmp.positions
    ok = cmp.nmse <= nmse_max and top1 >= top1_min
    ties = cmp.top1_mismatches - cmp.decisive_mismatches
    summary = (
        f"NMSE {_fmt(cmp.nmse)} (max {_fmt(nmse_max)}), top-1 {_pct(top1)} "
        f"(min {_pct(top1_min)}) over {cmp.positions} positions"
    )
    if ties:
        summary += f" ({ties} near-tie{'s' if ties > 1 else ''} swapped)"
    if cmp.ref_entropy_ratio > 0.9:
        summary += "; near-uniform outputs (random weights?)"
    figures = {**cmp.to_json(), "nmse_max": nmse_max, "top1_min": top1_min, "top1_clear": top1}
    return Check(name, PASSED if ok else FAILED, summary, figures)


def kl_check(name: str, cmp: Comparison, kl_max: float) -> Check:
    ok = cmp.kl_mean <= kl_max
    summary = (
        f"KL {_fmt(cmp.kl_mean)} (max {_fmt(kl_max)}), top-1 {_pct(cmp.top1_agreement)}, "
        f"NMSE {_fmt(cmp.nmse)} over {cmp.positions} positions"
    )
    if cmp.ref_entropy_ratio > 0.9:
        summary += "; the F16 model's distribution is near-uniform, so KL says little here"
    return Check(name, PASSED if ok else FAILED, summary, {**cmp.to_json(), "kl_max": kl_max})


@dataclass(frozen=True)
class Verdict:
    """A quantized model judged: ``passed``; ``reasons`` it failed (empty when it passed);
    ``judged_retention``: whether the persona signal was large enough to judge retention;
    ``summary``: one line with every figure and its bound."""

    passed: bool
    reasons: tuple[str, ...]
    judged_retention: bool
    summary: str


def judge_quant(quant_type: str, figures: Mapping[str, Any], bounds: Bounds) -> Verdict:
    """Judge a quant's figures (:meth:`Fidelity.to_json`) by the KL and retention bounds of
    its type. Retention is not judged when the persona signal is below ``signal_min``."""
    kl, kl_max = float(figures["kl_mean"]), bounds.kl_bound(quant_type)
    signal = float(figures["persona_signal"])
    kept, se = figures.get("retention"), figures.get("retention_se")
    keep_min = bounds.retention_bound(quant_type)
    judged = False
    reasons = []
    if kl > kl_max:
        reasons.append(f"KL {_fmt(kl)} > {_fmt(kl_max)}")
    parts = [f"KL {_fmt(kl)} (max {_fmt(kl_max)})"]
    if kept is not None and signal >= bounds.signal_min:
        judged = True
        spread = f" ± {se:.2g}" if se is not None else ""
        parts.append(
            f"retention {kept:.3f}{spread} (min {keep_min:g}) of a {signal:.3g}-nat persona signal"
        )
        if kept < keep_min:
            reasons.append(f"retention {kept:.3f} < {keep_min:g}")
    else:
        parts.append(
            f"retention not judged: persona signal {_fmt(signal)} nats < {bounds.signal_min:g} "
            "(the adapter barely changes the model on these prompts)"
        )
    if "top1_agreement" in figures:
        parts.append(f"top-1 {_pct(float(figures['top1_agreement']))}")
    answers = figures.get("answers")
    if isinstance(answers, Mapping):
        parts.append(
            f"answers {answers['identical']}/{answers['answers']} identical, "
            f"{answers['same_prefix']}/{answers['answers']} with the same first "
            f"{answers['prefix_tokens']} tokens"
        )
    return Verdict(not reasons, tuple(reasons), judged, "; ".join(parts))


def quant_check(name: str, fidelity: Fidelity, bounds: Bounds) -> Check:
    """A quantized model against the F16: passes when its KL is within its type's bound and
    (when judged) its persona retention at least its type's minimum."""
    figures = fidelity.to_json()
    verdict = judge_quant(fidelity.quant_type, figures, bounds)
    summary = verdict.summary + f" over {fidelity.comparison.positions} positions"
    if fidelity.comparison.ref_entropy_ratio > 0.9:
        summary += "; the F16 model's distribution is near-uniform, so KL says little here"
    figures.update(
        kl_max=bounds.kl_bound(fidelity.quant_type),
        retention_min=bounds.retention_bound(fidelity.quant_type),
        signal_min=bounds.signal_min,
        retention_judged=verdict.judged_retention,
    )
    return Check(name, PASSED if verdict.passed else FAILED, summary, figures)


def _first_difference(expected: str, actual: str) -> str:
    index = next(
        (i for i, (a, b) in enumerate(zip(expected, actual, strict=False)) if a != b),
        min(len(expected), len(actual)),
    )
    start = max(0, index - 20)
    return (
        f"at character {index}: expected {expected[start : index + 30]!r}, "
        f"got {actual[start : index + 30]!r}"
    )


def _without_bos(text: str, bos: str | None) -> str:
    # The runtime adds BOS by itself when the model wants one; the templates may or may not
    # write it. Whether the token is there is the token check's job.
    return text[len(bos) :] if bos and text.startswith(bos) else text


def template_check(
    name: str, what: str, expected: Sequence[str], actual: Sequence[str | None], bos: str | None
) -> Check:
    mismatches = []
    for number, (want, got) in enumerate(zip(expected, actual, strict=True), 1):
        if got is None:
            mismatches.append(f"conversation {number}: {what} could not be rendered")
        elif _without_bos(got, bos) != _without_bos(want, bos):
            detail = _first_difference(_without_bos(want, bos), _without_bos(got, bos))
            mismatches.append(
                f"conversation {number}: {what} differs from the HF template {detail}"
            )
    figures = {"conversations": len(expected), "mismatches": mismatches}
    if mismatches:
        return Check(name, FAILED, mismatches[0], figures)
    summary = f"{what} renders all {len(expected)} conversations as the HF chat template does"
    return Check(name, PASSED, summary, figures)


def token_check(expected: Sequence[Sequence[int]], actual: Sequence[Sequence[int]]) -> Check:
    """llama.cpp's ids for each rendered prompt (``actual``) against HF's (``expected``)."""
    mismatches = []
    for number, (want, got) in enumerate(zip(expected, actual, strict=True), 1):
        if tuple(got) == tuple(want):
            continue
        index = next(
            (i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b),
            min(len(got), len(want)),
        )
        mismatches.append(
            f"conversation {number}: llama.cpp tokenizes the prompt into {len(got)} "
            f"ids, HF into {len(want)}; first difference at id {index}: "
            f"{list(want[index : index + 3])} vs {list(got[index : index + 3])}"
        )
    positions = sum(len(ids) for ids in expected)
    return Check(
        "tokens",
        FAILED if mismatches else PASSED,
        mismatches[0]
        if mismatches
        else f"llama.cpp tokenizes the prompts into the HF ids ({positions} ids)",
        {"mismatches": mismatches},
    )


def generation_check(answers: Sequence[Mapping[str, Any]], max_tokens: int) -> Check:
    endless = [
        (number, a) for number, a in enumerate(answers, 1) if a["stop_type"] not in ("eos", "word")
    ]
    figures = {"max_tokens": max_tokens, "answers": list(answers)}
    if endless:
        number, answer = endless[0]
        preview = answer["text"][-80:]
        return Check(
            "generation",
            FAILED,
            f"{len(endless)} of {len(answers)} answers ran to the {max_tokens}-token limit "
            f"without a stop (conversation {number} ends {preview!r})",
            figures,
        )
    how = sorted({repr(a["stopping_word"]) if a["stop_type"] == "word" else "EOS" for a in answers})
    longest = max(a["tokens"] for a in answers)
    return Check(
        "generation",
        PASSED,
        f"all {len(answers)} answers ended on a stop ({', '.join(how)}); longest {longest} tokens",
        figures,
    )


def error_check(name: str, message: str) -> Check:
    """A check that could not finish: an engine or tool failed (the report keeps the rest)."""
    return Check(name, FAILED, message, {"error": message})
