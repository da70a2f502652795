"""Benchmark: the whole merge -> F16 -> Q4_K_M chain, ours vs by hand, side by side in one
run, on a full-size synthetic Phi-4-mini (3.8 B parameters, 7.7 GB of bf16) and an r=16 LoRA,
with the floor of reading the base once and writing each output once at this disk's speed.

    .venv/bin/python bench/bench_chain.py [--quant-type Q4_K_M] [--work-dir DIR] [--keep]

By hand is what people do today: PEFT's ``merge_and_unload`` + ``save_pretrained`` (in a
child process, as the original script), the base's tokenizer files copied beside it, then
``convert_hf_to_gguf.py --outtype f16`` and ``llama-quantize``. Ours is ``persona-export
merge`` (child process), then our gguf and quantize stages (each also hashes its inputs and
outputs for its manifest). Steps are interleaved (hand, ours) so both sides see similar load
from other processes; CPU time is printed beside wall time because the machine is shared.
The two quantized files must hold the same tensor data (their metadata differs: the model
name), which the script checks. Target: ours at most 0.85x of by hand.
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

from persona_export import vendor  # noqa: E402
from persona_export.ggufcheck import read_gguf  # noqa: E402
from persona_export.layout import Layout  # noqa: E402
from persona_export.stages.merge import TOKENIZER_FILES  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quant-type", default="Q4_K_M")
    parser.add_argument("--work-dir", type=Path, default=BENCH_CACHE / "chain-work")
    parser.add_argument("--keep", action="store_true", help="keep every output (about 20 GB)")
    parser.add_argument("--probe-gib", type=float, default=4.0, help="disk speed probe size")
    args = parser.parse_args()

    base = ensure_phi4mini_synthetic()
    adapter = ensure_adapter(base)
    work: Path = args.work_dir
    shutil.rmtree(work, ignore_errors=True)
    project = work / "project"
    shutil.copytree(adapter, project / "trained_adapters" / f"{PERSONA}_final_adapter")
    layout = Layout(
        adapter_dir=project / "trained_adapters",
        merged_base=project / "merged_models",
        gguf_base=project / "gguf_models",
    )
    hand = work / "by-hand"
    hand_merged, hand_f16 = hand / "merged", hand / f"{PERSONA}-F16.gguf"
    hand_q = hand / f"{PERSONA}-{args.quant_type}.gguf"
    hand.mkdir(parents=True)
    print(f"# llama.cpp {vendor.commit()}, {os.cpu_count()} cores, base {base}", flush=True)
    print(f"# before: {_load()}", flush=True)
    read_bps, write_bps = disk_speed(work, int(args.probe_gib * (1 << 30)))

    def step(name: str, timing: Timing) -> Timing:
        print(f"# {name}: {timing.wall:.1f} s wall, {timing.cpu:.1f} s CPU ({_load()})", flush=True)
        return timing

    try:
        warm(base)
        h_merge = step(
            "by hand: PEFT merge",
            _child("peft", str(base), str(layout.adapter(PERSONA)), str(hand_merged)),
        )
        _copy_tokenizer(base, hand_merged)
        warm(base)
        o_merge = step("ours: merge", _child("ours", str(base), str(project)))
        merged_bytes = _bytes(layout.merged(PERSONA))

        warm(hand_merged)
        h_convert = step("by hand: convert", by_hand_convert(hand_merged, hand_f16))
        shutil.rmtree(hand_merged)
        warm(layout.merged(PERSONA))
        o_convert = step("ours: gguf", ours_gguf(layout))
        f16_bytes = hand_f16.stat().st_size

        h_quant = step("by hand: quantize", by_hand_quantize(hand_f16, hand_q, args.quant_type))
        hand_f16.unlink()
        o_quant = step("ours: quantize", ours_quantize(layout, quant_type=args.quant_type))
        q_bytes = hand_q.stat().st_size
        same = _data_sha256(hand_q) == _data_sha256(layout.gguf(PERSONA, args.quant_type))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    base_bytes = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    floor = base_bytes / read_bps + (merged_bytes + f16_bytes + q_bytes) / write_bps
    rows = [
        ("merge", h_merge, o_merge),
        ("gguf F16", h_convert, o_convert),
        (f"quantize {args.quant_type}", h_quant, o_quant),
    ]
    total_h = Timing(sum(h.wall for _, h, _ in rows), sum(h.cpu for _, h, _ in rows))
    total_o = Timing(sum(o.wall for _, _, o in rows), sum(o.cpu for _, _, o in rows))
    rows.append(("whole chain", total_h, total_o))
    print(
        f"# disk: read {read_bps / 1e6:.0f} MB/s, write {write_bps / 1e6:.0f} MB/s; sizes: "
        f"base {base_bytes / 1e9:.2f} GB, merged {merged_bytes / 1e9:.2f} GB, "
        f"F16 {f16_bytes / 1e9:.2f} GB, {args.quant_type} {q_bytes / 1e9:.2f} GB"
    )
    print(f"# after: {_load()}")
    print(
        f"{'step':<20}{'by hand':>9}{'ours':>9}{'ratio':>8}{'CPU hand':>10}{'CPU ours':>10}{'ratio':>8}"
    )
    for name, h, o in rows:
        print(
            f"{name:<20}{h.wall:>8.1f}s{o.wall:>8.1f}s{o.wall / h.wall:>7.3f}x"
            f"{h.cpu:>9.1f}s{o.cpu:>9.1f}s{o.cpu / h.cpu:>7.3f}x"
        )
    print(
        f"floor (read the base once, write merged + F16 + {args.quant_type} once): {floor:.1f} s; "
        f"target: ours <= 0.85x by hand"
    )
    print(f"same {args.quant_type} tensor data on both sides: {same}")
    if not same:
        sys.exit("the two chains wrote different tensors: the comparison is void")


if __name__ == "__main__":
    main()
