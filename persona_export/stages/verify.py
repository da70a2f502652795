"""The verify stage: prove that a persona's export behaves like base + adapter.

On the conversations of templates/verify_prompts.toml, each preceded by the persona's system
prompt (the Modelfile's SYSTEM) and turned into token ids by the merged model's tokenizer
(``apply_chat_template``), so that every engine sees the same ids:

1. ``peft-vs-merged``: base + adapter run unmerged by PEFT against the merged model (both
   float32): the merge itself. NMSE and top-1 agreement of the logits at every position.
2. ``merged-vs-<F16>``: the merged model against the unquantized GGUF run by the vendored
   llama.cpp (``pe-logits``): the conversion. NMSE and top-1 agreement.
3. ``<F16>-vs-<Q>``: the unquantized GGUF against each quantized one: mean KL divergence of the
   next-token distributions (bound per type) and top-1 agreement.
4. ``template-modelfile``: the Modelfile's TEMPLATE and SYSTEM rendered by Go's text/template
   as Ollama renders them equals the HF chat template's text (skipped without Go).
5. ``template-gguf``: the chat template embedded in the GGUF, rendered by llama-server
   (``/apply-template``, what Ollama uses for templates that mention tools), equals it too.
6. ``tokens``: llama.cpp's tokenizer turns the rendered prompt into the HF token ids.
7. ``generation``: a greedy answer with the Modelfile's prompt and stop list ends on an
   end-of-generation token or a stop, not on the token limit.

The report (``gguf_models/<persona>/verify.json``) records every figure, the bounds, and the
inputs' hashes: a passing report whose inputs and options are unchanged makes the next run a
no-op. The stage returns the result; the caller decides what a failure means (the CLI exits
non-zero with :class:`~persona_export.errors.VerificationError`).
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_export import console
from persona_export.artifacts import (
    DIR_MANIFEST,
    FileRecord,
    Manifest,
    is_fresh,
    manifest_path_for,
    read_json,
    record_file,
    write_json_atomic,
)
from persona_export.errors import (
    InputNotFoundError,
    InvalidInputError,
    PersonaExportError,
    UsageError,
)
from persona_export.layout import DEFAULT_BASE_MODEL, Layout, check_persona
from persona_export.llamacpp import vendor
from persona_export.ollama.modelfile import Modelfile
from persona_export.verify.data import (
    Bounds,
    Turn,
    bounds_path,
    load_bounds,
    load_conversations,
    prompts_path,
)

if TYPE_CHECKING:
    from persona_export.verify.metrics import Array, Comparison

STAGE = "verify"
REPORT_FORMAT = 1
PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
DEFAULT_MAX_TOKENS = 384


@dataclass(frozen=True)
class VerifyConfig:
    """What to verify and how strictly.

    ``quants``: the quantized GGUFs to compare with the unquantized ``source_type`` one (empty:
    every ``<persona>-<TYPE>.gguf`` present). ``base_model``: the base for the PEFT check
    (default: the one the merge recorded). ``prompts_file``: conversations replacing the
    shipped ones. ``None`` bounds take the shipped defaults (templates/verify_bounds.toml);
    ``kl_max`` overrides them per quantization type. ``max_tokens`` bounds each answer of the
    generation check. ``force`` re-runs even when an earlier passing report is up to date.
    """

    persona: str
    layout: Layout = field(default_factory=Layout)
    quants: tuple[str, ...] = ()
    source_type: str = "F16"
    base_model: str | None = None
    prompts_file: Path | None = None
    peft_nmse_max: float | None = None
    nmse_max: float | None = None
    top1_min: float | None = None
    kl_max: Mapping[str, float] = field(default_factory=dict)
    max_tokens: int = DEFAULT_MAX_TOKENS
    hf_dtype: str = "float32"
    threads: int | None = None
    force: bool = False


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


@dataclass(frozen=True)
class VerifyResult:
    """The checks in order, where the report is, and whether all that ran passed."""

    persona: str
    report: Path
    checks: tuple[Check, ...]
    passed: bool
    skipped: bool  # an earlier passing report was up to date; nothing was run
    seconds: float

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == FAILED)


@dataclass(frozen=True)
class _Prompt:
    messages: tuple[Turn, ...]  # with the system prompt, when there is one
    turns: tuple[Turn, ...]  # without it (Ollama adds the Modelfile's SYSTEM itself)
    text: str  # the HF chat template's rendering
    ids: tuple[int, ...]


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _quant_paths(config: VerifyConfig, persona: str) -> dict[str, Path]:
    layout = config.layout
    source = config.source_type.upper()
    if config.quants:
        paths = {}
        for quant in dict.fromkeys(q.upper() for q in config.quants):
            if quant == source:
                continue
            path = layout.gguf(persona, quant)
            if not path.is_file():
                raise InputNotFoundError(
                    f"no {quant} GGUF for {persona} at {path}",
                    f"make it first: persona-export quantize --persona {persona} --type {quant}",
                )
            paths[quant] = path
        return paths
    prefix = f"{persona}-"
    found = {}
    for path in sorted(layout.gguf_dir(persona).glob(f"{prefix}*.gguf")):
        quant = path.name[len(prefix) : -len(".gguf")].upper()
        if quant != source:
            found[quant] = path
    return found


def _base_model(config: VerifyConfig, merged_dir: Path) -> str:
    if config.base_model:
        return config.base_model
    recorded = (read_json(merged_dir / DIR_MANIFEST) or {}).get("base_model")
    return recorded if isinstance(recorded, str) and recorded else DEFAULT_BASE_MODEL


def _check_inputs(config: VerifyConfig, persona: str) -> tuple[Path, Path, Path]:
    layout = config.layout
    merged_dir = layout.merged(persona)
    if not (merged_dir / "config.json").is_file():
        raise InputNotFoundError(
            f"no merged model for {persona} at {merged_dir}",
            f"merge first: persona-export merge --persona {persona}",
        )
    adapter_dir = layout.adapter(persona)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise InputNotFoundError(
            f"no adapter for {persona} at {adapter_dir} (adapter_config.json)",
            "the PEFT check runs base + adapter; give the folder with --adapter-dir",
        )
    source = layout.gguf(persona, config.source_type)
    if not source.is_file():
        raise InputNotFoundError(
            f"no {config.source_type.upper()} GGUF for {persona} at {source}",
            f"convert first: persona-export gguf --persona {persona}",
        )
    if config.max_tokens < 1:
        raise UsageError(f"--max-tokens must be at least 1, not {config.max_tokens}")
    if config.hf_dtype not in ("float32", "bfloat16", "float16"):
        raise UsageError(f"unknown dtype {config.hf_dtype!r}", "use float32, bfloat16 or float16")
    return merged_dir, adapter_dir, source


def merged_dtype(merged_dir: Path) -> str:
    """The merged checkpoint's weight dtype, from its config.json (bfloat16 when unsaid)."""
    config = read_json(merged_dir / "config.json") or {}
    value = config.get("dtype") or config.get("torch_dtype") or "bfloat16"
    return str(value)


_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where there is none)."""
    try:
        meminfo = Path("/proc/meminfo").read_text(encoding="ascii")
    except OSError:
        return None
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def check_memory(merged_dir: Path, compute_dtype: str, available: int | None = None) -> None:
    """Refuse before loading when the models would not fit in ``available`` bytes (default:
    the memory available now).

    Measured on a full-size Phi-4-mini (3.8 B parameters in bfloat16) computed in float32:
    19.5 GiB peak, about (4 + 0.7 * 2) bytes per parameter: the float32 copy plus the
    memory-mapped checkpoint while it loads.
    """
    available = _available_memory() if available is None else available
    if available is None:
        return
    stored = _BYTES.get(merged_dtype(merged_dir), 2)
    weights = sum(p.stat().st_size for p in merged_dir.glob("*.safetensors"))
    needed = weights / stored * (_BYTES[compute_dtype] + 0.7 * stored) + (1 << 29)
    if needed > available:
        hint = (
            "pass --hf-dtype bfloat16 (half the memory; the figures are then looser, see "
            "--peft-nmse-max and --nmse-max), or free memory"
            if compute_dtype == "float32"
            else "free memory, or verify on a machine with more"
        )
        raise PersonaExportError(
            f"verify needs about {needed / 2**30:.1f} GiB of RAM to run the models in "
            f"{compute_dtype}; {available / 2**30:.1f} GiB is available",
            hint,
        )


def _known(
    merged_dir: Path, ggufs: Mapping[str, Path], modelfile: Path, previous: Mapping[str, Any]
) -> dict[str, Any]:
    """Hash records that earlier runs and the other stages wrote, under this stage's input
    names, so that big files are not hashed again (a record is trusted only while the file's
    size and mtime are unchanged)."""

    def records(manifest: Path, section: str) -> dict[str, Any]:
        found = (read_json(manifest) or {}).get(section)
        return found if isinstance(found, dict) else {}

    known: dict[str, Any] = {}
    merged_manifest = merged_dir / DIR_MANIFEST
    # The merge names its inputs base/<file> and adapter/<file>, as this stage does.
    known.update(records(merged_manifest, "inputs"))
    known.update({f"merged/{k}": v for k, v in records(merged_manifest, "outputs").items()})
    for path in ggufs.values():
        for rec in records(manifest_path_for(path), "outputs").values():
            known[f"gguf/{path.name}"] = rec
    for rec in records(manifest_path_for(modelfile), "outputs").values():
        known["modelfile"] = rec
    known.update(previous)
    return known


def _files(folder: Path, prefix: str) -> dict[str, Path]:
    return {
        f"{prefix}/{p.name}": p
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.endswith(".manifest.json")
    }


def _input_files(
    merged_dir: Path,
    adapter_dir: Path,
    base_dir: Path,
    ggufs: Mapping[str, Path],
    modelfile: Path,
    prompts: Path,
) -> dict[str, Path]:
    inputs = {
        **_files(merged_dir, "merged"),
        **_files(adapter_dir, "adapter"),
        **{k: v for k, v in _files(base_dir, "base").items() if not k.endswith(".md")},
        **{f"gguf/{path.name}": path for path in ggufs.values()},
        "modelfile": modelfile,
        "prompts": prompts,
        "bounds": bounds_path(),
    }
    return inputs


def _records(inputs: Mapping[str, Path], known: Mapping[str, Any]) -> dict[str, FileRecord]:
    return {name: record_file(path, known.get(name)) for name, path in inputs.items()}


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    return f"{value:.2e}" if value and (value < 1e-2 or value >= 1e3) else f"{value:.4g}"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _agreement_check(name: str, cmp: Comparison, nmse_max: float, top1_min: float) -> Check:
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


def _kl_check(name: str, cmp: Comparison, kl_max: float) -> Check:
    ok = cmp.kl_mean <= kl_max
    summary = (
        f"KL {_fmt(cmp.kl_mean)} (max {_fmt(kl_max)}), top-1 {_pct(cmp.top1_agreement)}, "
        f"NMSE {_fmt(cmp.nmse)} over {cmp.positions} positions"
    )
    if cmp.ref_entropy_ratio > 0.9:
        summary += "; the F16 model's distribution is near-uniform, so KL says little here"
    return Check(name, PASSED if ok else FAILED, summary, {**cmp.to_json(), "kl_max": kl_max})


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


def _template_check(
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


def _progress(message: str) -> None:
    console.info(f"  verify: {message}")


def _logit_checks(
    config: VerifyConfig,
    bounds: Bounds,
    prompts: Sequence[_Prompt],
    merged_dir: Path,
    adapter_dir: Path,
    base_dir: Path,
    source: Path,
    quants: Mapping[str, Path],
    work_dir: Path,
) -> list[Check]:
    from persona_export.llamacpp.logits import gguf_logits
    from persona_export.verify.logits import hf_logits, peft_logits
    from persona_export.verify.metrics import compare

    ids = [p.ids for p in prompts]
    checks = []
    _progress(f"merged model logits ({config.hf_dtype}, {sum(map(len, ids))} positions)")
    merged = hf_logits(merged_dir, ids, dtype=config.hf_dtype)
    gc.collect()
    _progress(f"base + adapter through PEFT ({base_dir})")
    peft = peft_logits(base_dir, adapter_dir, ids, dtype=config.hf_dtype)
    gc.collect()
    # A swap counts only where the reference's lead exceeds the error the NMSE bound allows.
    checks.append(
        _agreement_check(
            "peft-vs-merged",
            compare(zip(peft, merged, strict=True), tie_rel=2 * bounds.peft_nmse_max**0.5),
            bounds.peft_nmse_max,
            bounds.peft_top1_min,
        )
    )
    del peft
    source_type = config.source_type.upper()
    _progress(f"{source.name} through llama.cpp")
    f16 = gguf_logits(source, ids, work_dir, threads=config.threads)
    checks.append(
        _agreement_check(
            f"merged-vs-{source_type}",
            compare(zip(merged, f16, strict=True), tie_rel=2 * bounds.nmse_max**0.5),
            bounds.nmse_max,
            bounds.top1_min,
        )
    )
    del merged
    for quant, path in quants.items():
        _progress(f"{path.name} through llama.cpp")
        logits: list[Array] = gguf_logits(path, ids, work_dir, threads=config.threads)
        checks.append(
            _kl_check(
                f"{source_type}-vs-{quant}",
                compare(zip(f16, logits, strict=True)),
                bounds.kl_bound(quant),
            )
        )
    return checks


def _server_checks(
    config: VerifyConfig,
    prompts: Sequence[_Prompt],
    modelfile: Modelfile,
    bos: str | None,
    work_dir: Path,
) -> list[Check]:
    from persona_export.llamacpp.server import llama_server
    from persona_export.ollama.gotemplate import GO_MISSING, find_renderer

    checks: list[Check] = []
    expected = [p.text for p in prompts]
    go_texts: list[str | None] | None = None
    if modelfile.template is None:
        checks.append(
            Check(
                "template-modelfile",
                FAILED,
                f"{modelfile.path} has no TEMPLATE: Ollama would guess the chat format",
                {},
            )
        )
    else:
        renderer = find_renderer()
        if renderer is None:
            checks.append(Check("template-modelfile", SKIPPED, f"not run: {GO_MISSING}", {}))
        else:
            _progress("Modelfile TEMPLATE through Go text/template")
            rendered = renderer.render_many(
                [(modelfile.template, p.turns, modelfile.system or "") for p in prompts]
            )
            go_texts = [r.output for r in rendered]
            checks.append(
                _template_check(
                    "template-modelfile", "the Modelfile's TEMPLATE (Go)", expected, go_texts, bos
                )
            )

    _progress(f"{modelfile.gguf.name} through llama-server")
    ctx = max(map(len, (p.ids for p in prompts))) + config.max_tokens + 64
    with llama_server(modelfile.gguf, work_dir, ctx_size=ctx, threads=config.threads) as server:
        llama_texts: list[str | None] = [server.apply_template(p.messages) for p in prompts]
        checks.append(
            _template_check(
                "template-gguf", "the GGUF's chat template (llama.cpp)", expected, llama_texts, bos
            )
        )
        # What Ollama sends: the Modelfile's rendering (the GGUF's when Go is missing).
        sent = [
            (go if go is not None else llama) or ""
            for go, llama in zip(go_texts or llama_texts, llama_texts, strict=True)
        ]
        token_mismatches = []
        for number, (prompt, text) in enumerate(zip(prompts, sent, strict=True), 1):
            got = server.tokenize(text)
            if tuple(got) != prompt.ids:
                index = next(
                    (i for i, (a, b) in enumerate(zip(prompt.ids, got, strict=False)) if a != b),
                    min(len(got), len(prompt.ids)),
                )
                token_mismatches.append(
                    f"conversation {number}: llama.cpp tokenizes the prompt into {len(got)} "
                    f"ids, HF into {len(prompt.ids)}; first difference at id {index}: "
                    f"{list(prompt.ids[index : index + 3])} vs {got[index : index + 3]}"
                )
        positions = sum(len(p.ids) for p in prompts)
        checks.append(
            Check(
                "tokens",
                FAILED if token_mismatches else PASSED,
                token_mismatches[0]
                if token_mismatches
                else f"llama.cpp tokenizes the prompts into the HF ids ({positions} ids)",
                {"mismatches": token_mismatches},
            )
        )
        _progress(f"greedy answers (at most {config.max_tokens} tokens each)")
        answers = []
        for text in sent:
            done = server.complete(text, stop=modelfile.stops, n_predict=config.max_tokens)
            answers.append(
                {
                    "stop_type": done.stop_type,
                    "stopping_word": done.stopping_word,
                    "tokens": done.tokens_predicted,
                    "text": done.text,
                }
            )
    checks.append(_generation_check(answers, config.max_tokens))
    return checks


def _generation_check(answers: Sequence[Mapping[str, Any]], max_tokens: int) -> Check:
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


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _prompts(
    merged_dir: Path, system: str | None, conversations: Sequence[Sequence[Turn]]
) -> tuple[list[_Prompt], str | None]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    if not tokenizer.chat_template:
        raise InvalidInputError(
            f"the tokenizer in {merged_dir} has no chat template",
            "the merged folder needs the base model's tokenizer_config.json or chat_template.jinja",
        )
    prompts = []
    for turns in conversations:
        messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        messages += [dict(t) for t in turns]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids: Any = tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=False
        )
        prompts.append(
            _Prompt(tuple(messages), tuple(turns), str(text), tuple(int(i) for i in ids))
        )
    bos = tokenizer.bos_token if isinstance(tokenizer.bos_token, str) else None
    return prompts, bos


def _load_report(path: Path) -> tuple[Check, ...]:
    data = read_json(path) or {}
    return tuple(
        Check(c["name"], c["status"], c["summary"], c.get("figures", {}))
        for c in data.get("checks", [])
        if isinstance(c, dict)
    )


def run_verify(config: VerifyConfig) -> VerifyResult:
    """Run every check on ``config.persona``'s export and write the report.

    Returns the result whatever the checks say (see ``passed``/``failed``). Raises the
    errors.py classes when an input is missing (merged model, adapter, GGUFs, Modelfile), a
    setting is wrong, or a tool is not built; a check that cannot run for want of an optional
    tool (Go) is reported as skipped.
    """
    from persona_export.hf.base_model import resolve_base_model

    started = time.monotonic()
    persona = check_persona(config.persona)
    merged_dir, adapter_dir, source = _check_inputs(config, persona)
    quants = _quant_paths(config, persona)
    modelfile_path = config.layout.modelfile(persona)
    modelfile = Modelfile.read(modelfile_path)
    modelfile.require_gguf()
    bounds = load_bounds(
        merged_dtype=merged_dtype(merged_dir),
        peft_nmse_max=config.peft_nmse_max,
        nmse_max=config.nmse_max,
        top1_min=config.top1_min,
        kl_max=config.kl_max,
    )
    conversations = load_conversations(config.prompts_file)
    base_model = _base_model(config, merged_dir)
    base_dir = resolve_base_model(base_model)
    report = config.layout.verify_report(persona)

    ggufs = {config.source_type.upper(): source, **quants, "modelfile": modelfile.gguf}
    inputs = _input_files(
        merged_dir, adapter_dir, base_dir, ggufs, modelfile_path, prompts_path(config.prompts_file)
    )
    options = {
        "format": REPORT_FORMAT,
        "base_model": base_model,
        "source_type": config.source_type.upper(),
        "quants": sorted(quants),
        "bounds": {
            "peft_nmse_max": bounds.peft_nmse_max,
            "peft_top1_min": bounds.peft_top1_min,
            "nmse_max": bounds.nmse_max,
            "top1_min": bounds.top1_min,
            "kl_max": {q: bounds.kl_bound(q) for q in sorted(quants)},
        },
        "max_tokens": config.max_tokens,
        "hf_dtype": config.hf_dtype,
    }
    previous = read_json(report) or {}
    if (
        not config.force
        and previous.get("passed") is True
        and is_fresh(report, options=options, inputs=inputs, outputs={})
    ):
        stored = _load_report(report)
        return VerifyResult(persona, report, stored, True, True, time.monotonic() - started)

    known = _known(merged_dir, ggufs, modelfile_path, previous.get("inputs") or {})
    check_memory(merged_dir, config.hf_dtype)
    prompts, bos = _prompts(merged_dir, modelfile.system, conversations)
    with tempfile.TemporaryDirectory(prefix=f".verify-{persona}-", dir=report.parent) as tmp:
        work_dir = Path(tmp)
        checks: list[Check] = _logit_checks(
            config, bounds, prompts, merged_dir, adapter_dir, base_dir, source, quants, work_dir
        )
        checks += _server_checks(config, prompts, modelfile, bos, work_dir)
    passed = not any(c.status == FAILED for c in checks)
    seconds = time.monotonic() - started
    manifest = Manifest(
        stage=STAGE,
        options=options,
        inputs=_records(inputs, known),
        outputs={},
        seconds=seconds,
        extra={
            "persona": persona,
            "passed": passed,
            "llama_cpp_commit": vendor.commit(),
            "base_dir": str(base_dir),
            "modelfile_gguf": modelfile.gguf.name,
            "conversations": [list(p.messages) for p in prompts],
            "checks": [c.to_json() for c in checks],
        },
    )
    write_json_atomic(report, manifest.to_json())
    return VerifyResult(persona, report, tuple(checks), passed, False, seconds)
