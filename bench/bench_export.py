"""Benchmark: `persona-export export` on a synthetic Phi-4-mini (full size: 3.8 B parameters):
the first run, then a re-run with nothing changed, side by side with what re-checking every
file by content would cost (sha256 of every input and output: the floor for a tool that does
not trust file stat records); then `export` with verify, its Hugging Face side run one layer
at a time (today) and on whole models (before: ``PERSONA_EXPORT_WHOLE_MODEL_VERIFY=1``),
side by side; and `export --keep none` (disk used, peak during the run).

    .venv/bin/python bench/bench_export.py [--size full|small] [--quant Q4_K_M]
        [--skip-verify] [--skip-keep] [--work-dir DIR]

The project lives under the bench cache (``export-work-<base>/``) and is kept, so a second
invocation measures the no-op path again without redoing the chain (its first line then
says so). Each command is a child process; its wall time and memory are measured by
bench/rss.py: persona-export's own peak RSS, its largest child's (a llama.cpp tool's RSS
counts the GGUF pages it maps from disk, which the kernel can drop), and the peak of the
process tree's anonymous memory (what must fit in RAM). The verify rows run with
``--max-tokens 16``: random weights never stop, so the generation check fails by design and
exit code 1 is expected there. The machine is shared, so the load average is printed
beside the figures. Targets (issue 14, full size): export with verify, peak RSS <= 3 GiB.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_verify import _adapter  # noqa: E402
from rss import HEADER, LEGEND, run_measured  # noqa: E402
from synthetic_base import BENCH_CACHE, ensure_synthetic  # noqa: E402

PERSONA = "cap"


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


def _project(root: Path, adapter: Path) -> list[str]:
    """The project folder's adapter (links to the cached one) and the folder options."""
    folder = root / "trained_adapters" / f"{PERSONA}_final_adapter"
    folder.mkdir(parents=True, exist_ok=True)
    for item in adapter.iterdir():
        link = folder / item.name
        if not link.exists():
            link.symlink_to(item)
    return [
        "--adapter-dir",
        str(root / "trained_adapters"),
        "--output-dir-base",
        str(root / "merged_models"),
        "--gguf-dir",
        str(root / "gguf_models"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("full", "small"), default="full")
    parser.add_argument("--quant", default="Q4_K_M")
    parser.add_argument("--skip-verify", action="store_true", help="no verify rows")
    parser.add_argument("--skip-keep", action="store_true", help="no --keep none row")
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()

    base = ensure_synthetic("phi4mini", args.size)
    adapter = _adapter(base)
    root = args.work_dir or BENCH_CACHE / f"export-work-{base.name}"
    dirs = _project(root, adapter)
    export = ["export", "--persona", PERSONA, "--base-model-id", str(base)]
    export += ["--quant", args.quant, *dirs]

    done_before = (root / "gguf_models" / PERSONA / "Modelfile").is_file()
    print(f"{base.name}; load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    first = run_measured([*export, "--no-verify"])
    second = run_measured([*export, "--no-verify"])
    third = run_measured([*export, "--no-verify"])
    files = [p for p in (root / "merged_models" / PERSONA).iterdir() if p.is_file()]
    files += [p for p in (root / "gguf_models" / PERSONA).glob("*.gguf")]
    files += [p for p in base.iterdir() if p.suffix == ".safetensors"]
    files += [p for p in adapter.iterdir() if p.is_file()]
    rehash_s, rehash_bytes = _sha256_all(files)
    help_run = run_measured(["--help"])

    print()
    print(HEADER)
    label = "export (exported by an earlier run: no-op)" if done_before else "export, first run"
    print(first.row(label + " --no-verify"))
    print(second.row("export again, nothing changed"))
    print(third.row("export again, nothing changed (2nd)"))
    print(f"{'baseline: sha256 of every input and output':<48} {rehash_s:8.1f}")
    print(f"{'floor: persona-export --help':<48} {help_run.seconds:8.2f}")
    print(
        f"no-op re-run / content re-check: {second.seconds / rehash_s:.3f} "
        f"({rehash_bytes / 1e9:.1f} GB hashed by the baseline)"
    )
    if not args.skip_verify:
        # the chain is up to date: export runs verify (a failed report is never reused, so
        # each of these runs it again), then does not register what failed
        with_verify = [*export, "--max-tokens", "16"]
        new = run_measured(with_verify)
        old = run_measured(with_verify, {"PERSONA_EXPORT_WHOLE_MODEL_VERIFY": "1"})
        print(new.row(f"export with verify, one layer at a time (exit {new.exit_code})"))
        print(old.row(f"export with verify, whole models (before; exit {old.exit_code})"))
        print(
            f"one layer at a time / whole models: wall {new.seconds / old.seconds:.2f}x "
            f"(target <= 1.2), own peak RSS {new.self_peak / max(old.self_peak, 1):.2f}x, "
            f"tree anonymous {new.tree_anon_peak / max(old.tree_anon_peak, 1):.2f}x"
        )
    if not args.skip_keep:
        keep_root = root.with_name(root.name + "-keep")
        shutil.rmtree(keep_root, ignore_errors=True)
        keep_dirs = _project(keep_root, adapter)
        keep = ["export", "--persona", PERSONA, "--base-model-id", str(base), "--quant"]
        keep += [args.quant, *keep_dirs, "--keep", "none", "--no-verify"]
        dropped = run_measured(keep)
        print(dropped.row(f"export --keep none --no-verify, first run (exit {dropped.exit_code})"))
        again = run_measured(keep)
        print(again.row("export --keep none again, nothing changed"))
        kept = sum(
            p.stat().st_size for p in keep_root.rglob("*") if p.is_file() and not p.is_symlink()
        )
        print(f"disk after --keep none: {kept / 1e9:.2f} GB (see the summary for the peak)")
        shutil.rmtree(keep_root, ignore_errors=True)
    print(LEGEND)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if first.exit_code or second.exit_code:
        sys.exit("export failed: run it by hand to see its output")


if __name__ == "__main__":
    main()
