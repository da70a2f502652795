"""Benchmark: the whole merge -> F16 -> Q4_K_M chain, ours vs by hand, side by side in one
run, on a full-size synthetic Phi-4-mini (3.8 B parameters, 7.7 GB of bf16) and an r=16 LoRA,
with the floor of reading the base once and writing each output once at this disk's speed.

    .venv/bin/python bench/bench_chain.py [--quant-type Q4_K_M] [--pairs 2] [--work-dir DIR]

By hand is what people do today: PEFT's ``merge_and_unload`` + ``save_pretrained`` (in a
child process, as the original script), the base's tokenizer files copied beside it, then
``convert_hf_to_gguf.py --outtype f16`` and ``llama-quantize``. Ours is ``persona-export
merge`` (child process), then our gguf and quantize stages (each also hashes its inputs and
outputs for its manifest). Each chain runs whole, as a user runs it, so its page cache is
the one its own steps leave (on this 24 GiB machine base + merged + F16 do not all fit);
before each chain the previous chain's outputs are deleted, dirty pages flushed and the
base read once. Chains alternate hand, ours, ours, hand (``--pairs`` 2) so that drift in
the load from other processes falls on both sides; CPU time is printed beside wall time
because the machine is shared. The quantized files of both sides must hold the same tensor
data (their metadata differs: the model name), which the script checks. Target: ours at
most 0.85x of by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_gguf import (  # noqa: E402
    Timing,
    by_hand_convert,
    by_hand_quantize,
    disk_speed,
    ours_gguf,
    ours_quantize,
)
from bench_merge import PERSONA, ensure_adapter, run_child, warm  # noqa: E402
from synthetic_base import BENCH_CACHE, ensure_phi4mini_synthetic  # noqa: E402

from persona_export.hf.model_files import TOKENIZER_FILES  # noqa: E402
from persona_export.layout import Layout  # noqa: E402
from persona_export.llamacpp import vendor  # noqa: E402
from persona_export.llamacpp.gguf_file import read_gguf  # noqa: E402


def _child(*args: str) -> Timing:
    """A bench_merge child (PEFT's path or our merge command) as a Timing (CPU: the child's)."""
    before = os.times()
    report = run_child(*args)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return Timing(report["wall_seconds"], cpu)


def _copy_tokenizer(base: Path, merged: Path) -> None:
    for name in TOKENIZER_FILES:
        if (base / name).is_file() and not (merged / name).exists():
            shutil.copy2(base / name, merged / name)


def _data_sha256(path: Path) -> str:
    """sha256 of a GGUF's tensor data section (what remains once metadata is set aside)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(read_gguf(path).data_offset)
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


STEPS = ("merge", "gguf F16", "quantize")


def _hand_chain(base: Path, adapter: Path, out: Path, quant_type: str) -> list[Timing]:
    merged, f16 = out / "merged", out / f"{PERSONA}-F16.gguf"
    merge = _child("peft", str(base), str(adapter), str(merged))
    _copy_tokenizer(base, merged)
    return [
        merge,
        by_hand_convert(merged, f16),
        by_hand_quantize(f16, out / f"{PERSONA}-{quant_type}.gguf", quant_type),
    ]


def _our_chain(base: Path, layout: Layout, quant_type: str) -> list[Timing]:
    project = layout.merged_base.parent
    return [
        _child("ours", str(base), str(project)),
        ours_gguf(layout),
        ours_quantize(layout, quant_type=quant_type),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quant-type", default="Q4_K_M")
    parser.add_argument("--pairs", type=int, default=2, help="chains per side (order ABBA...)")
    parser.add_argument("--work-dir", type=Path, default=BENCH_CACHE / "chain-work")
    parser.add_argument("--probe-gib", type=float, default=4.0, help="disk speed probe size")
    args = parser.parse_args()

    base = ensure_phi4mini_synthetic()
    adapter = ensure_adapter(base)
    work: Path = args.work_dir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"# llama.cpp {vendor.commit()}, {os.cpu_count()} cores, base {base}", flush=True)
    print(f"# before: {_load()}", flush=True)
    read_bps, write_bps = disk_speed(work, int(args.probe_gib * (1 << 30)))

    order = [("hand", "ours")[(i + 1) // 2 % 2] for i in range(2 * args.pairs)]
    runs: dict[str, list[list[Timing]]] = {"hand": [], "ours": []}
    data_hash: dict[str, str] = {}
    sizes: dict[str, int] = {}
    try:
        for number, side in enumerate(order, 1):
            out = work / f"{number}-{side}"
            project = out / "project"
            layout = Layout(
                adapter_dir=project / "trained_adapters",
                merged_base=project / "merged_models",
                gguf_base=project / "gguf_models",
            )
            shutil.copytree(adapter, layout.adapter(PERSONA))
            warm(base)  # flushes dirty pages first
            if side == "hand":
                timings = _hand_chain(base, layout.adapter(PERSONA), out, args.quant_type)
                quantized = out / f"{PERSONA}-{args.quant_type}.gguf"
            else:
                timings = _our_chain(base, layout, args.quant_type)
                quantized = layout.gguf(PERSONA, args.quant_type)
                sizes = {
                    "merged": _bytes(layout.merged(PERSONA)),
                    "F16": layout.gguf(PERSONA, "F16").stat().st_size,
                    args.quant_type: quantized.stat().st_size,
                }
            runs[side].append(timings)
            parts = ", ".join(f"{n} {t.wall:.1f} s" for n, t in zip(STEPS, timings, strict=True))
            total = sum(t.wall for t in timings)
            print(f"# chain {number} ({side}): {total:.1f} s ({parts}; {_load()})", flush=True)
            data_hash.setdefault(side, _data_sha256(quantized))
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base_bytes = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    floor = base_bytes / read_bps + sum(sizes.values()) / write_bps
    print(
        f"# disk: read {read_bps / 1e6:.0f} MB/s, write {write_bps / 1e6:.0f} MB/s; sizes: "
        f"base {base_bytes / 1e9:.2f} GB, "
        + ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in sizes.items())
    )
    print(f"# after: {_load()}")
    print(
        f"{'step (sum of ' + str(args.pairs) + ' runs)':<24}{'by hand':>9}{'ours':>9}{'ratio':>8}"
        f"{'CPU hand':>10}{'CPU ours':>10}{'ratio':>8}"
    )

    def row(name: str, hand: Timing, ours: Timing) -> None:
        print(
            f"{name:<24}{hand.wall:>8.1f}s{ours.wall:>8.1f}s{ours.wall / hand.wall:>7.3f}x"
            f"{hand.cpu:>9.1f}s{ours.cpu:>9.1f}s{ours.cpu / hand.cpu:>7.3f}x"
        )

    def summed(side: str, steps: range) -> Timing:
        chosen = [t for run in runs[side] for i, t in enumerate(run) if i in steps]
        return Timing(sum(t.wall for t in chosen), sum(t.cpu for t in chosen))

    for i, name in enumerate(STEPS):
        label = f"{name} {args.quant_type}" if name == "quantize" else name
        row(label, summed("hand", range(i, i + 1)), summed("ours", range(i, i + 1)))
    row("whole chain", summed("hand", range(3)), summed("ours", range(3)))
    for k, (hand_run, our_run) in enumerate(zip(runs["hand"], runs["ours"], strict=True), 1):
        h, o = sum(t.wall for t in hand_run), sum(t.wall for t in our_run)
        print(f"pair {k}: by hand {h:.1f} s, ours {o:.1f} s, {o / h:.3f}x")
    print(
        f"floor (read the base once, write merged + F16 + {args.quant_type} once): {floor:.1f} s; "
        f"target: ours <= 0.85x by hand"
    )
    same = data_hash.get("hand") == data_hash.get("ours")
    print(f"same {args.quant_type} tensor data on both sides: {same}")
    if not same:
        sys.exit("the two chains wrote different tensors: the comparison is void")


if __name__ == "__main__":
    main()
