"""Benchmark: our gguf and quantize stages vs running the converter and llama-quantize by
hand, side by side in one run, on a full-size synthetic Phi-4-mini (3.8 B parameters), with
the floor of reading each input once and writing each output once at this disk's speed.

    .venv/bin/python bench/bench_gguf.py [--quant-type Q4_K_M] [--work-dir DIR] [--keep]

Both sides convert the same folder with the same options (``--outtype f16 --model-name
bench``), so their F16 GGUFs must be byte-identical, and so must their Q4_K_M GGUFs; the
script checks that. "Ours" starts with no hash cache: it hashes the 7.7 GB input and both
outputs (the input while the converter runs, the F16 as it is written, the Q4_K_M after
llama-quantize). The functions are importable for the whole-chain benchmark.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from synthetic_base import BENCH_CACHE, ensure_phi4mini_synthetic  # noqa: E402

from persona_export import vendor  # noqa: E402
from persona_export.layout import Layout  # noqa: E402

PERSONA = "bench"


def _timed(argv: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> float:
    started = time.perf_counter()
    with open(log or os.devnull, "w") as out:
        subprocess.run(
            argv,
            check=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    return time.perf_counter() - started


def by_hand_convert(merged_dir: Path, f16: Path, model_name: str = PERSONA) -> float:
    """`python convert_hf_to_gguf.py DIR --outfile F16 --outtype f16`: seconds."""
    env = {**os.environ, **vendor.converter_env()}
    argv = [sys.executable, str(vendor.converter_script()), str(merged_dir)]
    argv += ["--outfile", str(f16), "--outtype", "f16", "--model-name", model_name]
    return _timed(argv, env, f16.with_name(f16.name + ".log"))


def by_hand_quantize(f16: Path, out: Path, quant_type: str = "Q4_K_M") -> float:
    """`llama-quantize F16 OUT TYPE`: seconds (llama-quantize's default threads: all)."""
    argv = [str(vendor.tool("llama-quantize")), str(f16), str(out), quant_type]
    return _timed(argv, log=out.with_name(out.name + ".log"))


def ours_gguf(layout: Layout, persona: str = PERSONA) -> float:
    """`persona-export gguf` (the stage, in this process): seconds."""
    from persona_export.stages.gguf import GgufConfig, run_gguf

    started = time.perf_counter()
    run_gguf(GgufConfig(persona, layout=layout, outtype="f16"))
    return time.perf_counter() - started


def ours_quantize(layout: Layout, persona: str = PERSONA, quant_type: str = "Q4_K_M") -> float:
    """`persona-export quantize` (the stage, in this process): seconds."""
    from persona_export.stages.quantize import QuantizeConfig, run_quantize

    started = time.perf_counter()
    run_quantize(QuantizeConfig(persona, layout=layout, quant_types=(quant_type,)))
    return time.perf_counter() - started


def disk_speed(folder: Path, nbytes: int = 4 << 30) -> tuple[float, float]:
    """(read, write) bytes per second of sequential 8 MiB I/O on ``folder``'s disk: a file of
    ``nbytes`` written and fsync'd, dropped from the page cache, then read back."""
    path = folder / ".disk-speed-probe"
    block = os.urandom(8 << 20)
    try:
        started = time.perf_counter()
        with open(path, "wb") as fh:
            for _ in range(nbytes // len(block)):
                fh.write(block)
            fh.flush()
            os.fsync(fh.fileno())
        write = nbytes / (time.perf_counter() - started)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            started = time.perf_counter()
            while os.read(fd, 8 << 20):
                pass
            read = nbytes / (time.perf_counter() - started)
        finally:
            os.close(fd)
    finally:
        path.unlink(missing_ok=True)
    return read, write


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _warm(folder: Path) -> None:
    """Read a folder once so both sides start with it in the page cache."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                while fh.read(8 << 20):
                    pass


def _load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quant-type", default="Q4_K_M")
    parser.add_argument("--work-dir", type=Path, default=BENCH_CACHE / "gguf-work")
    parser.add_argument("--keep", action="store_true", help="keep the GGUFs (7.7 + 2.3 GB)")
    parser.add_argument(
        "--base", type=Path, help="convert this HF folder instead (e.g. a tiny one, to try it)"
    )
    parser.add_argument("--probe-gib", type=float, default=4.0, help="disk speed probe size")
    args = parser.parse_args()

    base = args.base.resolve() if args.base else ensure_phi4mini_synthetic()
    work: Path = args.work_dir
    shutil.rmtree(work, ignore_errors=True)
    layout = Layout(merged_base=work / "merged_models", gguf_base=work / "gguf_models")
    merged = layout.merged(PERSONA)
    merged.parent.mkdir(parents=True)
    merged.symlink_to(base, target_is_directory=True)  # both sides convert the same path
    hand_dir = work / "by-hand"
    hand_dir.mkdir()
    print(f"# {vendor.commit()=}, {os.cpu_count()} cores, input {base}")
    print(f"# before: {_load()}")
    read_bps, write_bps = disk_speed(work, int(args.probe_gib * (1 << 30)))
    base_bytes = _folder_bytes(base)

    try:
        _warm(base)
        hand_f16 = hand_dir / f"{PERSONA}-F16.gguf"
        hand_q = hand_dir / f"{PERSONA}-{args.quant_type}.gguf"
        t_hand_convert = by_hand_convert(merged, hand_f16)
        print(f"# by hand: convert {t_hand_convert:.1f} s ({_load()})", flush=True)
        t_hand_quant = by_hand_quantize(hand_f16, hand_q, args.quant_type)
        print(f"# by hand: quantize {t_hand_quant:.1f} s ({_load()})", flush=True)
        f16_bytes, q_bytes = hand_f16.stat().st_size, hand_q.stat().st_size
        hand_hashes = (_sha256(hand_f16), _sha256(hand_q))
        hand_f16.unlink()  # free the page cache and disk for our side
        hand_q.unlink()

        _warm(base)
        t_ours_convert = ours_gguf(layout)
        print(f"# ours: gguf {t_ours_convert:.1f} s ({_load()})", flush=True)
        t_ours_quant = ours_quantize(layout, quant_type=args.quant_type)
        print(f"# ours: quantize {t_ours_quant:.1f} s ({_load()})", flush=True)
        ours_f16 = layout.gguf(PERSONA, "F16")
        ours_q = layout.gguf(PERSONA, args.quant_type)
        same = (_sha256(ours_f16), _sha256(ours_q)) == hand_hashes
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    floor_convert = base_bytes / read_bps + f16_bytes / write_bps
    floor_quant = f16_bytes / read_bps + q_bytes / write_bps
    rows = [
        ("gguf (F16)", t_hand_convert, t_ours_convert, floor_convert),
        (f"quantize ({args.quant_type})", t_hand_quant, t_ours_quant, floor_quant),
        (
            "both",
            t_hand_convert + t_hand_quant,
            t_ours_convert + t_ours_quant,
            floor_convert + floor_quant,
        ),
    ]
    print(
        f"# disk: read {read_bps / 1e6:.0f} MB/s, write {write_bps / 1e6:.0f} MB/s ({args.probe_gib:g} GiB probe)"
    )
    print(
        f"# sizes: input {base_bytes / 1e9:.2f} GB, F16 {f16_bytes / 1e9:.2f} GB, "
        f"{args.quant_type} {q_bytes / 1e9:.2f} GB; outputs byte-identical: {same}"
    )
    print(f"# after: {_load()}")
    print(f"{'step':<20}{'by hand':>10}{'ours':>10}{'ours/hand':>11}{'floor':>9}")
    for name, hand, ours, floor in rows:
        print(f"{name:<20}{hand:>9.1f}s{ours:>9.1f}s{ours / hand:>10.3f}x{floor:>8.1f}s")
    if not same:
        sys.exit("the two sides wrote different files: the comparison is void")


if __name__ == "__main__":
    main()
