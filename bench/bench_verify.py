"""Benchmark: verify's Hugging Face side, today's whole-model path against the layer-streamed
one, side by side in one run, on a synthetic base + an r=16 LoRA merged by our merge stage.

    .venv/bin/python bench/bench_verify.py [--model phi4mini|llama3-8b] [--size full|small]
        [--layers N] [--dtype float32|bfloat16] [--skip-old] [--work-dir DIR]

Each path runs in a child process of its own, as verify runs it: the merged model's logits,
then base + adapter through PEFT, on the token ids of the shipped verify prompts (each model's own chat template and
tokenizer, with a persona system prompt). Printed per path: wall time, the child's
peak RSS (its own, ``VmHWM``), and the figure verify's peft-vs-merged check reports
(NMSE); then how the two paths' logits differ. Targets (issue 14, on the full-size
Phi-4-mini in float32): streamed peak RSS <= 3 GiB, wall time <= 1.2x the whole-model
path's, the check's NMSE within 1e-9 of the whole-model path's. The Llama-3-8B shape shows
the streamed peak does not grow with the model; its whole-model path needs about 40 GiB of
RAM and is skipped where that is not available (``--skip-old`` skips it anywhere).

Disk (kept under the bench cache, built once): full Phi-4-mini 7.7 GB base + 7.7 GB merged;
full Llama-3-8B 16.1 GB base + 16.1 GB merged; the logits of a run are written to the work
folder and removed afterwards (about 0.2 GB per engine and path for Phi-4-mini).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from rss import status_bytes  # noqa: E402
from synthetic_base import BENCH_CACHE, ensure_synthetic  # noqa: E402

PERSONA = "cap"
SYSTEM = "You are Captain Codebeard, a pirate who explains code."
GiB = 2**30


def _adapter(base: Path) -> Path:
    """The r=16 LoRA for ``base`` (fp32, as PEFT saves it), built once beside it."""
    path = base.parent / f"{base.name}-lora-r16"
    if (path / "adapter_config.json").is_file():
        return path
    from tests import modelkit as mk

    tmp = path.parent / f".{path.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    mk.make_synthetic_adapter(base, tmp, r=16, base_model_name_or_path=str(base))
    tmp.rename(path)
    return path


def _merged(base: Path, adapter: Path, work: Path) -> Path:
    """Our merge of ``adapter`` into ``base`` (up to date after the first run)."""
    from persona_export.layout import Layout
    from persona_export.stages.merge import MergeConfig
    from persona_export.stages.merge import run as merge

    layout = Layout(work / "trained_adapters", work / "merged_models", work / "gguf_models")
    link = layout.adapter(PERSONA)
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(adapter, target_is_directory=True)
    return merge(MergeConfig(PERSONA, layout=layout, base_model=str(base))).merged_dir


def _prompts(merged: Path, vocab: int) -> list[list[int]]:
    """The verify prompts' token ids (random ids of the same lengths without a tokenizer)."""
    from persona_export.verify.data import load_conversations
    from persona_export.verify.prompts import build_prompts

    conversations = load_conversations()
    if (merged / "tokenizer.json").is_file():
        prompts, _ = build_prompts(merged, SYSTEM, conversations)
        return [list(p.ids) for p in prompts]
    import numpy as np

    rng = np.random.default_rng(0)
    lengths = [64, 64, 62, 96]  # what the Phi-4-mini template gives these conversations
    return [rng.integers(0, vocab, n).tolist() for n in lengths[: len(conversations)]]


def child(
    path: str, merged: Path, base: Path, adapter: Path, prompts: Path, out: Path, dtype: str
) -> None:
    """One path, as verify runs it; writes the logits to ``out`` and prints its figures."""
    import numpy as np

    from persona_export.verify import logits

    ids = json.loads(prompts.read_text())
    started = time.monotonic()
    if path == "old":
        merged_logits = logits.hf_logits(merged, ids, dtype=dtype)
        peft = logits.peft_logits(base, adapter, ids, dtype=dtype)
    else:
        merged_logits = logits.model_logits(merged, ids, dtype=dtype)
        peft = logits.adapter_logits(base, adapter, ids, dtype=dtype)
    seconds = time.monotonic() - started
    np.savez(out / f"{path}-merged.npz", *merged_logits)
    np.savez(out / f"{path}-peft.npz", *peft)
    peak = status_bytes("VmHWM")  # not ru_maxrss: see bench/rss.py
    print(json.dumps({"seconds": seconds, "peak_rss": peak}))


def _run_child(path: str, args: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", path, *args],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _load(out: Path, name: str) -> list[Any]:
    import numpy as np

    with np.load(out / f"{name}.npz") as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def _compare(a: list[Any], b: list[Any]) -> tuple[float, bool]:
    from persona_export.verify.metrics import compare

    bitwise = all(x.shape == y.shape and (x == y).all() for x, y in zip(a, b, strict=True))
    return compare(zip(a, b, strict=True)).nmse, bitwise


def _need(
    base: Path, merged: Path, adapter: Path, ids: list[list[int]], dtype: str
) -> tuple[float, float]:
    """(streamed need, whole-model need) in GiB, as verify's preflight computes them."""
    from persona_export.verify.memory import streamed_need

    need = streamed_need(
        [merged, base],
        adapter_dir=adapter,
        positions=sum(map(len, ids)),
        longest=max(map(len, ids)),
        compute_dtype=dtype,
    )
    weights = sum(p.stat().st_size for p in merged.glob("*.safetensors"))
    whole = weights / 2 * ({"float32": 4, "bfloat16": 2}[dtype] + 1.4) + 2**29
    return need.total / GiB, whole / GiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("phi4mini", "llama3-8b"), default="phi4mini")
    parser.add_argument("--size", choices=("full", "small"), default="full")
    parser.add_argument("--layers", type=int, default=None, help="override the layer count")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--skip-old", action="store_true", help="only the streamed path")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--child", choices=("old", "new"), help=argparse.SUPPRESS)
    parser.add_argument("--paths", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        merged, base, adapter, prompts, out = (Path(p) for p in args.paths[:5])
        child(args.child, merged, base, adapter, prompts, out, args.paths[5])
        return

    base = ensure_synthetic(args.model, args.size, args.layers)
    adapter = _adapter(base)
    work = args.work_dir or BENCH_CACHE / f"verify-work-{base.name}"
    merged = _merged(base, adapter, work)
    config = json.loads((merged / "config.json").read_text())
    ids = _prompts(merged, int(config["vocab_size"]))
    out = work / "logits"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "prompts.json").write_text(json.dumps(ids))
    child_args = ["--paths", str(merged), str(base), str(adapter), str(out / "prompts.json")]
    child_args += [str(out), args.dtype]
    streamed_gib, whole_gib = _need(base, merged, adapter, ids, args.dtype)
    from persona_export.verify.memory import available_memory

    available = (available_memory() or 0) / GiB
    run_old = not args.skip_old and whole_gib < available
    n_params = sum(
        int(v["shape"][0]) * (int(v["shape"][1]) if len(v["shape"]) > 1 else 1)
        for p in base.glob("*.safetensors")
        for k, v in json.loads(_header(p)).items()
        if k != "__metadata__"
    )
    print(
        f"{base.name}: {n_params / 1e9:.2f} B parameters, {config['num_hidden_layers']} layers; "
        f"{len(ids)} prompts, {sum(map(len, ids))} positions; {args.dtype}; "
        f"load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    for path in ("old", "new") if run_old else ("new",):
        results[path] = _run_child(path, child_args)
        merged_logits, peft = _load(out, f"{path}-merged"), _load(out, f"{path}-peft")
        results[path]["nmse"], _ = _compare(peft, merged_logits)
    _report(results, out, streamed_gib, whole_gib, available, run_old)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    shutil.rmtree(out, ignore_errors=True)


def _header(path: Path) -> str:
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        return fh.read(size).decode()


def _report(
    results: dict[str, dict[str, Any]],
    out: Path,
    streamed_gib: float,
    whole_gib: float,
    available: float,
    ran_old: bool,
) -> None:
    print()
    print(f"{'path':<34} {'wall s':>8} {'peak RSS GiB':>13} {'peft-vs-merged NMSE':>20}")
    names = {"old": "whole model (today)", "new": "one layer at a time"}
    for path, r in results.items():
        print(
            f"{names[path]:<34} {r['seconds']:8.1f} {r['peak_rss'] / GiB:13.2f} {r['nmse']:20.3e}"
        )
    print(f"preflight: streamed needs {streamed_gib:.2f} GiB, whole model {whole_gib:.1f} GiB")
    if not ran_old:
        print(
            f"whole-model path not run (needs about {whole_gib:.1f} GiB, {available:.1f} available)"
        )
        return
    old, new = results["old"], results["new"]
    merged_nmse, merged_same = _compare(_load(out, "old-merged"), _load(out, "new-merged"))
    peft_nmse, peft_same = _compare(_load(out, "old-peft"), _load(out, "new-peft"))
    print(
        f"\nnew / old: wall {new['seconds'] / old['seconds']:.2f}x (target <= 1.2), peak RSS "
        f"{new['peak_rss'] / old['peak_rss']:.2f}x; check NMSE differs by "
        f"{abs(new['nmse'] - old['nmse']):.1e} (target <= 1e-9)"
    )
    print(
        f"logits, new vs old: merged NMSE {merged_nmse:.1e} ({'bitwise' if merged_same else 'not bitwise'}), "
        f"PEFT NMSE {peft_nmse:.1e} ({'bitwise' if peft_same else 'not bitwise'})"
    )


if __name__ == "__main__":
    main()
