"""Running each engine on the verify prompts and turning what they say into checks.

* :func:`logit_checks`: PEFT (base + adapter, unmerged) against the merged model, the merged
  model against the unquantized GGUF (llama.cpp), that GGUF against each quantized one: KL,
  persona retention (against the base without the adapter) and greedy answers
  (:mod:`persona_export.verify.fidelity`).
* :func:`server_checks`: the Modelfile's TEMPLATE rendered by Go as Ollama renders it, the
  GGUF's own template rendered by llama-server, llama.cpp's tokens, and greedy answers with
  the Modelfile's stops.

An engine that fails (a tool error, a server that times out) becomes a failed check with the
error's message, so the report still holds every figure measured before it.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from persona_export import console
from persona_export.errors import PersonaExportError
from persona_export.ollama.modelfile import Modelfile
from persona_export.verify.checks import (
    FAILED,
    SKIPPED,
    Check,
    agreement_check,
    error_check,
    generation_check,
    quant_check,
    template_check,
    token_check,
)
from persona_export.verify.data import Bounds
from persona_export.verify.prompts import Prompt


def progress(message: str) -> None:
    console.info(f"  verify: {message}")


@dataclass(frozen=True)
class Engines:
    """Where each engine's inputs are."""

    merged_dir: Path
    adapter_dir: Path
    base_dir: Path
    source: Path  # the unquantized GGUF
    source_type: str
    quants: Mapping[str, Path]
    hf_dtype: str
    threads: int | None
    work_dir: Path


def _guarded(name: str, checks: list[Check], step: Callable[[], None]) -> bool:
    """Run ``step``; a known error becomes a failed check named ``name``. False when it
    failed (later steps that need its figures are not run)."""
    try:
        step()
    except PersonaExportError as exc:
        checks.append(error_check(name, exc.message + (f" ({exc.hint})" if exc.hint else "")))
        return False
    return True


def logit_checks(engines: Engines, bounds: Bounds, prompts: Sequence[Prompt]) -> list[Check]:
    """The three logit comparisons (see the module docstring)."""
    from persona_export.llamacpp.logits import gguf_logits
    from persona_export.verify.logits import base_logits, hf_logits, peft_logits
    from persona_export.verify.metrics import compare

    ids = [p.ids for p in prompts]
    checks: list[Check] = []
    progress(f"merged model logits ({engines.hf_dtype}, {sum(map(len, ids))} positions)")
    merged = hf_logits(engines.merged_dir, ids, dtype=engines.hf_dtype)
    gc.collect()
    progress(f"base + adapter through PEFT ({engines.base_dir})")
    peft = peft_logits(engines.base_dir, engines.adapter_dir, ids, dtype=engines.hf_dtype)
    gc.collect()
    # A swap counts only where the reference's lead exceeds the error the NMSE bound allows.
    checks.append(
        agreement_check(
            "peft-vs-merged",
            compare(zip(peft, merged, strict=True), tie_rel=2 * bounds.peft_nmse_max**0.5),
            bounds.peft_nmse_max,
            bounds.peft_top1_min,
        )
    )
    del peft
    gc.collect()
    base: list = []
    if engines.quants:
        progress(f"base model without the adapter ({engines.base_dir})")
        base = base_logits(engines.base_dir, ids, dtype=engines.hf_dtype)
        gc.collect()
    source_name = f"merged-vs-{engines.source_type}"
    progress(f"{engines.source.name} through llama.cpp")
    f16: list = []

    def source_logits() -> None:
        f16.extend(gguf_logits(engines.source, ids, engines.work_dir, threads=engines.threads))

    if not _guarded(source_name, checks, source_logits):
        return checks
    checks.append(
        agreement_check(
            source_name,
            compare(zip(merged, f16, strict=True), tie_rel=2 * bounds.nmse_max**0.5),
            bounds.nmse_max,
            bounds.top1_min,
        )
    )
    del merged
    gc.collect()
    if engines.quants:
        checks += _quant_checks(engines, bounds, ids, f16, base)
    return checks


def _quant_checks(
    engines: Engines, bounds: Bounds, ids: Sequence[Sequence[int]], f16: list, base: list
) -> list[Check]:
    """Each quantized GGUF against the F16 (KL, retention, answers)."""
    from persona_export.verify.answers import greedy_answers
    from persona_export.verify.fidelity import Reference, measure

    checks: list[Check] = []
    refs: list[Reference] = []

    def reference() -> None:
        progress(f"{engines.source.name} greedy answers (at most {bounds.answer_tokens} tokens)")
        answers = greedy_answers(
            engines.source,
            ids,
            max_tokens=bounds.answer_tokens,
            log_dir=engines.work_dir,
            threads=engines.threads,
        )
        prompts = tuple(tuple(p) for p in ids)
        refs.append(Reference(prompts, f16, base, tuple(answers), bounds.answer_tokens))

    if not _guarded(f"{engines.source_type}-answers", checks, reference):
        return checks
    for quant, path in engines.quants.items():
        name = f"{engines.source_type}-vs-{quant}"
        progress(f"{path.name} through llama.cpp (logits, then greedy answers)")

        def one(path: Path = path, quant: str = quant, name: str = name) -> None:
            fidelity = measure(
                path,
                quant,
                refs[0],
                prefix_tokens=bounds.prefix_tokens,
                work_dir=engines.work_dir,
                threads=engines.threads,
            )
            checks.append(quant_check(name, fidelity, bounds))

        _guarded(name, checks, one)
    return checks


def _go_template_check(
    modelfile: Modelfile, prompts: Sequence[Prompt], bos: str | None
) -> tuple[Check, list[str | None] | None]:
    from persona_export.ollama.gotemplate import GO_MISSING, find_renderer

    if modelfile.template is None:
        message = f"{modelfile.path} has no TEMPLATE: Ollama would guess the chat format"
        return Check("template-modelfile", FAILED, message, {}), None
    renderer = find_renderer()
    if renderer is None:
        return Check("template-modelfile", SKIPPED, f"not run: {GO_MISSING}", {}), None
    progress("Modelfile TEMPLATE through Go text/template")
    rendered = renderer.render_many(
        [(modelfile.template, p.turns, modelfile.system or "") for p in prompts]
    )
    go_texts = [r.output for r in rendered]
    expected = [p.text for p in prompts]
    check = template_check(
        "template-modelfile", "the Modelfile's TEMPLATE (Go)", expected, go_texts, bos
    )
    return check, go_texts


def server_checks(
    modelfile: Modelfile,
    prompts: Sequence[Prompt],
    bos: str | None,
    *,
    max_tokens: int,
    threads: int | None,
    log_dir: Path,
) -> list[Check]:
    """Templates, tokens and generation (see the module docstring)."""
    from persona_export.llamacpp.server import llama_server

    go_check, go_texts = _go_template_check(modelfile, prompts, bos)
    checks = [go_check]
    expected = [p.text for p in prompts]
    progress(f"{modelfile.gguf.name} through llama-server")
    ctx = max(map(len, (p.ids for p in prompts))) + max_tokens + 64

    def with_server() -> None:
        with llama_server(modelfile.gguf, log_dir, ctx_size=ctx, threads=threads) as server:
            llama_texts: list[str | None] = [server.apply_template(p.messages) for p in prompts]
            checks.append(
                template_check(
                    "template-gguf",
                    "the GGUF's chat template (llama.cpp)",
                    expected,
                    llama_texts,
                    bos,
                )
            )
            # What Ollama sends: the Modelfile's rendering (the GGUF's when Go is missing).
            sent = [
                (go if go is not None else llama) or ""
                for go, llama in zip(go_texts or llama_texts, llama_texts, strict=True)
            ]
            checks.append(token_check([p.ids for p in prompts], [server.tokenize(t) for t in sent]))
            progress(f"greedy answers (at most {max_tokens} tokens each)")
            answers = []
            for text in sent:
                done = server.complete(text, stop=modelfile.stops, n_predict=max_tokens)
                answers.append(
                    {
                        "stop_type": done.stop_type,
                        "stopping_word": done.stopping_word,
                        "tokens": done.tokens_predicted,
                        "text": done.text,
                    }
                )
            checks.append(generation_check(answers, max_tokens))

    _guarded("llama-server", checks, with_server)
    return checks
