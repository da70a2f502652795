"""Benchmark: `persona-export export` on a full-size synthetic Phi-4-mini (3.8 B parameters):
the first run, then a re-run with nothing changed, side by side with what re-checking every
file by content would cost (sha256 of every input and output: the floor for a tool that does
not trust file stat records), and optionally `verify` on the same export (time and peak RSS).

    .venv/bin/python bench/bench_export.py [--quant Q4_K_M] [--with-verify] [--work-dir DIR]

The project lives under the bench cache (``export-work/``) and is kept, so a second
invocation measures the no-op path again without redoing the chain (its first line then says
so). Wall time and peak RSS are per command (each one a child process);
the machine is shared, so the load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_merge import ensure_adapter  # noqa: E402
from synthetic_base import BENCH_CACHE, ensure_phi4mini_synthetic  # noqa: E402

PE = str(Path(sys.executable).parent / "persona-export")
PERSONA = "cap"


def _timed(args: list[str]) -> tuple[float, float, int]:
    """Run ``args``; return (wall seconds, peak RSS GiB, exit code)."""
    started = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    return seconds, usage.ru_maxrss / 2**20, os.waitstatus_to_exitcode(status)


def _sha256_all(paths: list[Path]) -> tuple[float, int]:
    started = time.monotonic()
    total = 0
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(8 << 20):
                digest.update(chunk)
                total += len(chunk)
    return time.monotonic() - started, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quant", default="Q4_K_M")
    parser.add_argument("--with-verify", action="store_true", help="also time verify")
    parser.add_argument("--work-dir", type=Path, default=BENCH_CACHE / "export-work")
    args = parser.parse_args()

    base = ensure_phi4mini_synthetic()
    adapter = ensure_adapter(base)
    root = args.work_dir
    adapters = root / "trained_adapters"
    (adapters / f"{PERSONA}_final_adapter").mkdir(parents=True, exist_ok=True)
    for item in adapter.iterdir():
        link = adapters / f"{PERSONA}_final_adapter" / item.name
        if not link.exists():
            link.symlink_to(item)
    dirs = [
        "--adapter-dir",
        str(adapters),
        "--output-dir-base",
        str(root / "merged_models"),
        "--gguf-dir",
        str(root / "gguf_models"),
    ]
    export = [PE, "export", "--persona", PERSONA, "--base-model-id", str(base)]
    export += ["--quant", args.quant, "--no-verify", *dirs]

    done_before = (root / "gguf_models" / PERSONA / "Modelfile").is_file()
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores shared)", flush=True)
    first = _timed(export)
    second = _timed(export)
    third = _timed(export)
    files = [p for p in (root / "merged_models" / PERSONA).iterdir() if p.is_file()]
    files += [p for p in (root / "gguf_models" / PERSONA).glob("*.gguf")]
    files += [p for p in base.iterdir() if p.suffix == ".safetensors"]
    files += [p for p in adapter.iterdir() if p.is_file()]
    rehash_s, rehash_bytes = _sha256_all(files)
    help_s, _, _ = _timed([PE, "--help"])

    first_label = (
        "export (exported by an earlier run: no-op)" if done_before else "export, first run"
    )
    print()
    print(f"{'step':<44} {'wall s':>8} {'peak RSS GiB':>13}")
    print(f"{first_label:<44} {first[0]:8.1f} {first[1]:13.2f}")
    print(f"{'export again, nothing changed':<44} {second[0]:8.2f} {second[1]:13.2f}")
    print(f"{'export again, nothing changed (2nd)':<44} {third[0]:8.2f} {third[1]:13.2f}")
    print(f"{'baseline: sha256 of every input and output':<44} {rehash_s:8.1f} {'':>13}")
    print(f"{'floor: persona-export --help':<44} {help_s:8.2f}")
    print(
        f"\nno-op re-run / content re-check: {second[0] / rehash_s:.3f} "
        f"({rehash_bytes / 1e9:.1f} GB hashed by the baseline)"
    )
    if args.with_verify:
        verify = [PE, "verify", "--persona", PERSONA, "--quant", args.quant]
        verify += ["--max-tokens", "16", *dirs]
        seconds, rss, code = _timed(verify)
        # random weights never stop talking: the generation check fails by design here
        print(f"{'verify (max 16 tokens; exit ' + str(code) + ')':<44} {seconds:8.1f} {rss:13.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if first[2] or second[2]:
        sys.exit("export failed: see its output above")


if __name__ == "__main__":
    main()
