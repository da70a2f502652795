"""Benchmark: `persona-export merge` vs PEFT's merge path, side by side in one run, on a
full-size synthetic Phi-4-mini (3.8 B parameters, 7.7 GB of bf16) and an r=16 LoRA on
qkv_proj/o_proj/gate_up_proj/down_proj.

    .venv/bin/python bench/bench_merge.py [--work-dir DIR] [--keep] [--only ours|peft]

PEFT's path is what the original script did: ``AutoModelForCausalLM.from_pretrained(bf16)``,
``PeftModel.from_pretrained``, ``merge_and_unload()``, ``save_pretrained()``. Ours is the
``merge`` command (no hash cache: it also hashes the 7.7 GB of inputs for its manifest).
Each runs in its own subprocess; wall time is measured around it (interpreter start and
imports included) and peak RSS is the child's own ``VmHWM``. Before each run dirty
pages are flushed (``sync``) and the base is read once, so both start from the same warm
page cache. Afterwards every tensor of the two outputs is compared (bf16: the largest
difference in units in the last place is reported; 0 means identical).
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
from synthetic_base import BENCH_CACHE, ensure_phi4mini_synthetic  # noqa: E402

PERSONA = "bench"
ADAPTER_CACHE = BENCH_CACHE / "phi4mini-synthetic-lora-r16"
GIB = 1024**3


def ensure_adapter(base: Path, path: Path = ADAPTER_CACHE) -> Path:
    """The r=16 adapter for the synthetic base (fp32 as PEFT saves it), built once."""
    if (path / "adapter_config.json").is_file():
        return path
    from tests import modelkit as mk

    tmp = path.parent / f".{path.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    mk.make_synthetic_adapter(base, tmp, r=16, base_model_name_or_path=str(base))
    tmp.rename(path)
    return path


def warm(folder: Path) -> float:
    """Flush dirty pages, then read every safetensors file of ``folder`` once: seconds."""
    os.sync()
    started = time.perf_counter()
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb", buffering=0) as fh:
            while fh.read(64 << 20):
                pass
    return time.perf_counter() - started


def child_peft(base: Path, adapter: Path, out: Path) -> dict[str, Any]:
    import torch
    import transformers
    from peft import PeftModel

    started = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out)
    return {"work_seconds": time.perf_counter() - started}


def child_ours(base: Path, project: Path) -> dict[str, Any]:
    from persona_export.cli import app

    started = time.perf_counter()
    args = ["merge", "--persona", PERSONA, "--base-model-id", str(base)]
    args += ["--adapter-dir", str(project / "trained_adapters")]
    args += ["--output-dir-base", str(project / "merged_models"), "--device", "cpu"]
    app(args, standalone_mode=False)
    return {"work_seconds": time.perf_counter() - started}


def run_child(*args: str) -> dict[str, Any]:
    """Run this script as a child; return its report plus the wall time around it."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        check=True,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    wall = time.perf_counter() - started
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    report["wall_seconds"] = wall
    return report


def compare(ours_dir: Path, peft_dir: Path) -> tuple[int, int, int]:
    """(tensors compared, tensors identical, largest bf16 ulp difference)."""
    import torch
    from safetensors import safe_open

    def index(folder: Path) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for path in sorted(folder.glob("*.safetensors")):
            with safe_open(str(path), "pt") as fh:
                found.update(dict.fromkeys(fh.keys(), path))
        return found

    ours, theirs = index(ours_dir), index(peft_dir)
    missing = set(ours) ^ set(theirs)
    if missing:
        raise SystemExit(f"outputs hold different tensors: {sorted(missing)[:5]}")
    identical = max_ulp = 0
    for name in sorted(ours):
        with safe_open(str(ours[name]), "pt") as fa, safe_open(str(theirs[name]), "pt") as fb:
            a, b = fa.get_tensor(name), fb.get_tensor(name)
        if a.dtype != b.dtype or a.shape != b.shape:
            raise SystemExit(f"{name}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}")
        if torch.equal(a, b):
            identical += 1
            continue
        if a.dtype == torch.bfloat16:  # ordered integer codes of same-sign values: ulps apart
            ai, bi = a.view(torch.int16).int(), b.view(torch.int16).int()
            max_ulp = max(max_ulp, int((ai - bi).abs().max()))
        else:
            max_ulp = max(max_ulp, 1 << 30)
    return len(ours), identical, max_ulp


def _fmt(value: float | None, scale: float) -> str:
    return "-" if value is None else f"{value * scale:.2f}"


def largest_tensor_bytes(base: Path) -> int:
    from persona_export.merge.checkpoint import read_checkpoint

    return max(i.nbytes for i in read_checkpoint(base).tensors.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=BENCH_CACHE / "merge-work")
    parser.add_argument("--keep", action="store_true", help="keep both merged outputs")
    parser.add_argument("--only", choices=("ours", "peft"), help="run one side only")
    args = parser.parse_args()

    base = ensure_phi4mini_synthetic()
    adapter = ensure_adapter(base)
    work = args.work_dir
    shutil.rmtree(work, ignore_errors=True)
    project = work / "project"
    shutil.copytree(adapter, project / "trained_adapters" / f"{PERSONA}_final_adapter")
    peft_out = work / "peft-merged"
    size = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    load_before = os.getloadavg()
    print(f"base: {base} ({size / 1e9:.2f} GB), adapter: {adapter}", flush=True)
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} "
          f"on {os.cpu_count()} CPUs", flush=True)  # fmt: skip

    reports: dict[str, dict[str, Any]] = {}
    try:
        if args.only != "peft":
            print(f"warm read of the base: {warm(base):.1f} s; running ours ...", flush=True)
            reports["ours"] = run_child("ours", str(base), str(project))
        if args.only != "ours":
            print(f"warm read of the base: {warm(base):.1f} s; running PEFT ...", flush=True)
            reports["peft"] = run_child("peft", str(base), str(project / "trained_adapters" / f"{PERSONA}_final_adapter"), str(peft_out))  # fmt: skip
        load_after = os.getloadavg()
        target_rss = largest_tensor_bytes(base) + GIB // 2
        print()
        print(f"{'':28}{'PEFT merge_and_unload':>24}{'persona-export merge':>24}{'ratio':>10}")
        for key, label, scale in (
            ("wall_seconds", "wall time (s)", 1.0),
            ("work_seconds", "  of which merge+save (s)", 1.0),
            ("maxrss_bytes", "peak RSS (GiB)", 1 / GIB),
        ):
            theirs = reports.get("peft", {}).get(key)
            ours = reports.get("ours", {}).get(key)
            ratio = f"{ours / theirs:.2f}x" if ours and theirs else "-"
            print(f"{label:28}{_fmt(theirs, scale):>24}{_fmt(ours, scale):>24}{ratio:>10}")
        print(f"targets: ours <= 0.50x PEFT's wall time; peak RSS <= largest tensor + 0.5 GiB "
              f"= {target_rss / GIB:.2f} GiB")  # fmt: skip
        print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
        if len(reports) == 2:
            tensors, identical, max_ulp = compare(project / "merged_models" / PERSONA, peft_out)
            print(f"outputs: {tensors} tensors compared, {identical} identical, largest "
                  f"difference {max_ulp} bf16 ulp")  # fmt: skip
            if max_ulp > 1:
                raise SystemExit("the outputs differ by more than one bf16 rounding step")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, rest = sys.argv[2], [Path(a) for a in sys.argv[3:]]
        report = child_peft(*rest) if kind == "peft" else child_ours(*rest)
        report["maxrss_bytes"] = status_bytes("VmHWM")  # not ru_maxrss: see bench/rss.py
        print(json.dumps(report))
    else:
        main()
