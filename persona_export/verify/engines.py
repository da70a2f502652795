"""Running each engine on the verify prompts and turning what they say into checks.

* :func:`logit_checks`: PEFT (base + adapter, unmerged) against the merged model, the merged
  model against the unquantized GGUF (llama.cpp), that GGUF against each quantized one: KL,
  persona retention (against the base without the adapter) and greedy answers
  (:mod:`persona_export.verify.fidelity`).
* :func:`server_checks`: the Modelfile's TEMPLATE rendered by Go as Ollama renders it, the
  GGUF's own template rendered by llama-server, tool conversations on the path Ollama will
  use (:mod:`persona_export.verify.tools`), llama.cpp's tokens of the prompts that path
  renders, and greedy answers with the Modelfile's stops.

An engine that fails (a tool error, a server that times out) becomes a failed check with the
error's message, so the report still holds every figure measured before it.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_export import console
from persona_export.errors import PersonaExportError
from persona_export.ollama.modelfile import Modelfile
from persona_export.ollama.template_choice import RENDERED, OllamaChoice
from persona_export.verify.checks import (
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
from persona_export.verify.tools import Renderer

if TYPE_CHECKING:
    from persona_export.llamacpp.server import LlamaServer


class Steps:
    """Verify's progress: one step per engine run (and per greedy answer), shown as a bar
    whose note says what runs now. :meth:`next` counts the step before as done."""

    def __init__(self, bar: console.Bar | None = None) -> None:
        self.bar = bar or console.Bar()
        self.started = False

    def next(self, note: str) -> None:
        self.bar.update(advance=1 if self.started else 0, note=note)
        self.started = True

    def finish(self) -> None:
        """Count the last step as done (the checks are over)."""
        if self.started:
            self.bar.update(advance=1, note="")
        self.started = False


def step_count(quants: int, prompts: int) -> int:
    """How many :class:`Steps` a verify takes: merged model, PEFT, the unquantized GGUF,
    each quantized one (with quants: also the base model and the unquantized GGUF's greedy
    answers), the Go template, llama-server, one greedy answer per prompt."""
    return 3 + quants + (2 if quants else 0) + 2 + prompts


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


def logit_checks(
    engines: Engines, bounds: Bounds, prompts: Sequence[Prompt], steps: Steps | None = None
) -> list[Check]:
    """The three logit comparisons (see the module docstring); ``steps`` shows progress."""
    from persona_export.llamacpp.logits import gguf_logits
    from persona_export.verify.logits import adapter_logits, base_logits, model_logits, streaming
    from persona_export.verify.metrics import compare

    ids = [p.ids for p in prompts]
    checks: list[Check] = []
    steps = steps or Steps()
    positions = sum(map(len, ids))
    how = "one layer at a time" if streaming() else "whole model"
    steps.next(f"merged model, {engines.hf_dtype}, {positions} positions, {how}")
    merged = model_logits(engines.merged_dir, ids, dtype=engines.hf_dtype)
    gc.collect()
    steps.next(f"base + adapter through PEFT, {positions} positions, {how}")
    peft = adapter_logits(engines.base_dir, engines.adapter_dir, ids, dtype=engines.hf_dtype)
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
        steps.next(f"base model without the adapter, {positions} positions, {how}")
        base = base_logits(engines.base_dir, ids, dtype=engines.hf_dtype)
        gc.collect()
    source_name = f"merged-vs-{engines.source_type}"
    steps.next(f"{engines.source.name} through llama.cpp")
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
        checks += _quant_checks(engines, bounds, ids, f16, base, steps)
    return checks


def _quant_checks(
    engines: Engines,
    bounds: Bounds,
    ids: Sequence[Sequence[int]],
    f16: list,
    base: list,
    steps: Steps,
) -> list[Check]:
    """Each quantized GGUF against the F16 (KL, retention, answers)."""
    from persona_export.verify.answers import greedy_answers
    from persona_export.verify.fidelity import Reference, measure

    checks: list[Check] = []
    refs: list[Reference] = []

    def reference() -> None:
        steps.next(f"{engines.source.name} greedy answers, at most {bounds.answer_tokens} tokens")
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
        steps.next(f"{path.name} through llama.cpp (logits, then greedy answers)")

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
    modelfile: Modelfile, prompts: Sequence[Prompt], bos: str | None, steps: Steps
) -> tuple[Check, list[str | None] | None]:
    from persona_export.ollama.gotemplate import GO_MISSING, find_renderer

    steps.next("Modelfile TEMPLATE through Go text/template")  # counted, run or not
    if modelfile.template is None:
        message = (
            f"not run: {modelfile.path} has no TEMPLATE; Ollama >= 0.30 renders the GGUF's chat "
            "template (template-gguf)"
        )
        return Check("template-modelfile", SKIPPED, message, {}), None
    renderer = find_renderer()
    if renderer is None:
        return Check("template-modelfile", SKIPPED, f"not run: {GO_MISSING}", {}), None
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
    log_file: Path,
    choice: OllamaChoice,
    merged_dir: Path,
    steps: Steps | None = None,
) -> list[Check]:
    """Templates, tokens and generation (see the module docstring); ``choice`` says which
    template Ollama will use, ``merged_dir`` holds the HF tokenizer for tool conversations;
    llama-server's log is ``log_file`` (it exists once this returns, also after a failure);
    ``steps`` shows progress."""
    from persona_export.llamacpp.server import llama_server
    from persona_export.verify.tools import ollama_check, tools_check

    steps = steps or Steps()
    go_check, go_texts = _go_template_check(modelfile, prompts, bos, steps)
    checks = [ollama_check(choice), go_check]
    rendered = choice.path == RENDERED
    expected = [p.text for p in prompts]
    steps.next(f"{modelfile.gguf.name} through llama-server")
    ctx = max(map(len, (p.ids for p in prompts))) + max_tokens + 64

    def with_server() -> None:
        with llama_server(
            modelfile.gguf, log_file=log_file, ctx_size=ctx, threads=threads
        ) as server:
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
            if choice.tools:
                steps.bar.update(note="tool conversations on the path Ollama uses")
                render = _go_tools(modelfile) if rendered else _server_tools(server, modelfile)
                checks.append(tools_check(choice, merged_dir, modelfile.system, render, bos))
            # What Ollama sends: the rendering of the path it uses (the GGUF's when Go is
            # missing).
            sent = [
                (go if go is not None and rendered else llama) or ""
                for go, llama in zip(go_texts or llama_texts, llama_texts, strict=True)
            ]
            tokens = [server.tokenize(t) for t in sent]
            checks.append(token_check([p.ids for p in prompts], tokens))
            answers = _answers(server, sent, tokens, modelfile, max_tokens, steps)
            checks.append(generation_check(answers, max_tokens))

    _guarded("llama-server", checks, with_server)
    return checks


def _go_tools(modelfile: Modelfile) -> Renderer | None:
    """Ollama's rendering of a tool conversation (Go), or None when Go is missing."""
    from persona_export.ollama.gotemplate import find_renderer
    from persona_export.verify.tools import TOOLS

    renderer = find_renderer()
    if renderer is None or modelfile.template is None:
        return None
    template, system = modelfile.template, modelfile.system or ""

    def render(conversation: Sequence[Mapping[str, Any]]) -> str | None:
        (result,) = renderer.render_many([(template, conversation, system, TOOLS)])
        return result.output

    return render


def _server_tools(server: Any, modelfile: Modelfile) -> Renderer:
    """llama-server's rendering of a tool conversation with the GGUF's template; Ollama puts
    the Modelfile's SYSTEM first as it does for chat."""
    from persona_export.verify.tools import TOOLS

    head = [{"role": "system", "content": modelfile.system}] if modelfile.system else []

    def render(conversation: Sequence[Mapping[str, Any]]) -> str | None:
        return str(server.apply_template([*head, *conversation], TOOLS))

    return render


def _answers(
    server: LlamaServer,
    prompts: Sequence[str],
    tokens: Sequence[Sequence[int]],
    modelfile: Modelfile,
    max_tokens: int,
    steps: Steps,
) -> list[dict[str, Any]]:
    """Greedy answers to ``prompts``, one step each; the time limits of each come from the speed the
    answers before it measured (llamacpp/server.py, SpeedLimits), so a model that does not
    stop ends on the token limit, however slow this machine is."""
    from persona_export.llamacpp.server import SpeedLimits

    limits = SpeedLimits()
    answers = []
    for number, (text, ids) in enumerate(zip(prompts, tokens, strict=True), 1):
        steps.next(f"greedy answer {number}/{len(prompts)}, at most {max_tokens} tokens")
        done = server.complete(
            text, stop=modelfile.stops, n_predict=max_tokens, limits=limits, prompt_tokens=len(ids)
        )
        limits = limits.measured(done)
        answers.append(
            {
                "stop_type": done.stop_type,
                "stopping_word": done.stopping_word,
                "tokens": done.tokens_predicted,
                "text": done.text,
                "seconds": round(done.seconds, 3),
                "tokens_per_second": round(done.predicted_per_second, 2),
            }
        )
    return answers
