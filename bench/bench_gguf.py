"""Benchmark: our gguf and quantize stages vs running the converter and llama-quantize by
hand, side by side in one run, on a full-size synthetic Phi-4-mini (3.8 B parameters), with
the floor of reading each input once and writing each output once at this disk's speed.

    .venv/bin/python bench/bench_gguf.py [--quant-type Q4_K_M] [--work-dir DIR] [--keep]

Both sides convert folders of the same name with the same options (``--outtype f16
--model-name bench``), so their GGUFs must be byte-identical; the script checks that (our
stage runs the converter through its launcher, with torch's float16 cast: the check is what
shows that cast changes no byte of a full-size model). Our gguf stage runs twice: as after
our merge stage (the merge manifest holds the input hashes) and cold (it hashes the 7.7 GB
input too, while the converter runs). For each tool the runs go hand, ours, ours, hand and
each side's figure is the mean of its two, so drift in the load from other processes falls
on both; each input is read once beforehand so both start from the page cache, and CPU time
(user + sys, children included) is reported beside wall time because this machine is shared. The functions are
importable for the whole-chain benchmark (bench/bench_chain.py).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from synthetic_base import BENCH_CACHE, ensure_phi4mini_synthetic  # noqa: E402

from persona_export.artifacts import (  # noqa: E402
    DIR_MANIFEST,
    Manifest,
    record_tree,
    write_json_atomic,
)
from persona_export.layout import Layout  # noqa: E402
from persona_export.llamacpp import vendor  # noqa: E402

PERSONA = "bench"


@dataclass(frozen=True)
class Timing:
    """Wall seconds and CPU seconds (user + sys of this process and its children)."""

    wall: float
    cpu: float

    def __float__(self) -> float:
        return self.wall


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@contextmanager
def measure(into: list[Timing]) -> Iterator[None]:
    """Append the wall and CPU time of the block to ``into``."""
    wall, cpu = time.perf_counter(), _cpu()
    yield
    into.append(Timing(time.perf_counter() - wall, _cpu() - cpu))


def _run(argv: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> Timing:
    got: list[Timing] = []
    with measure(got), open(log or os.devnull, "w") as out:
        subprocess.run(
            argv,
            check=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    return got[0]


def by_hand_convert(merged_dir: Path, f16: Path, model_name: str = PERSONA) -> Timing:
    """`python convert_hf_to_gguf.py DIR --outfile F16 --outtype f16 --model-name NAME`."""
    env = {**os.environ, **vendor.converter_env()}
    argv = [sys.executable, str(vendor.converter_script()), str(merged_dir)]
    argv += ["--outfile", str(f16), "--outtype", "f16", "--model-name", model_name]
    return _run(argv, env, f16.with_name(f16.name + ".log"))


def by_hand_quantize(f16: Path, out: Path, quant_type: str = "Q4_K_M") -> Timing:
    """`llama-quantize F16 OUT TYPE` (its default threads: every core)."""
    argv = [str(vendor.tool("llama-quantize")), str(f16), str(out), quant_type]
    return _run(argv, log=out.with_name(out.name + ".log"))


def ours_gguf(layout: Layout, persona: str = PERSONA, force: bool = False) -> Timing:
    """Our gguf stage (in this process, as `persona-export gguf` runs it)."""
    from persona_export.stages.gguf import GgufConfig
    from persona_export.stages.gguf import run as run_gguf

    got: list[Timing] = []
    with measure(got):
        run_gguf(GgufConfig(persona, layout=layout, outtype="f16", force=force))
    return got[0]


def ours_quantize(
    layout: Layout, persona: str = PERSONA, quant_type: str = "Q4_K_M", force: bool = False
) -> Timing:
    """Our quantize stage (in this process, as `persona-export quantize` runs it)."""
    from persona_export.stages.quantize import QuantizeConfig
    from persona_export.stages.quantize import run as run_quantize

    got: list[Timing] = []
    with measure(got):
        run_quantize(QuantizeConfig(persona, layout=layout, quant_types=(quant_type,), force=force))
    return got[0]


def merged_like(base: Path, merged_dir: Path, *, with_manifest: bool) -> Path:
    """A merged folder of symlinks to ``base``'s files; ``with_manifest`` adds the manifest
    our merge stage writes (its output records: the file hashes), as after `merge`."""
    merged_dir.mkdir(parents=True)
    for item in base.iterdir():
        (merged_dir / item.name).symlink_to(item)
    if with_manifest:
        outputs = record_tree(merged_dir)
        manifest = Manifest("merge", {}, {}, outputs, 0.0, {"note": "bench stand-in"})
        write_json_atomic(merged_dir / DIR_MANIFEST, manifest.to_json())
    return merged_dir


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
    warm = Layout(merged_base=work / "warm" / "merged_models", gguf_base=work / "warm" / "gguf")
    cold = Layout(merged_base=work / "cold" / "merged_models", gguf_base=work / "cold" / "gguf")
    merged_like(base, warm.merged(PERSONA), with_manifest=True)
    merged_like(base, cold.merged(PERSONA), with_manifest=False)
    hand_dir = work / "by-hand"
    hand_dir.mkdir()
    hand_f16 = hand_dir / f"{PERSONA}-F16.gguf"
    hand_q = hand_dir / f"{PERSONA}-{args.quant_type}.gguf"
    print(f"# llama.cpp {vendor.commit()}, {os.cpu_count()} cores, input {base}")
    print(f"# before: {_load()}")
    read_bps, write_bps = disk_speed(work, int(args.probe_gib * (1 << 30)))
    base_bytes = _folder_bytes(base)

    def step(name: str, run: Callable[[], Timing], warm_first: Path) -> Timing:
        _warm(warm_first)
        timing = run()
        print(f"# {name}: {timing.wall:.1f} s wall, {timing.cpu:.1f} s CPU ({_load()})", flush=True)
        return timing

    def mean(*timings: Timing) -> Timing:
        return Timing(
            sum(t.wall for t in timings) / len(timings), sum(t.cpu for t in timings) / len(timings)
        )

    try:
        # order hand, ours, ours, hand for each tool, so drift in the load falls on both
        hand_convert_1 = step(
            "by hand: convert", lambda: by_hand_convert(warm.merged(PERSONA), hand_f16), base
        )
        ours_convert = step("ours: gguf (after merge)", lambda: ours_gguf(warm), base)
        ours_cold = step("ours: gguf (cold)", lambda: ours_gguf(cold), base)
        hand_f16.unlink()
        hand_convert_2 = step(
            "by hand: convert", lambda: by_hand_convert(warm.merged(PERSONA), hand_f16), base
        )
        hand_convert = mean(hand_convert_1, hand_convert_2)
        f16_bytes = hand_f16.stat().st_size
        hand_hash = _sha256(hand_f16)
        same = [_sha256(warm.gguf(PERSONA, "F16")) == hand_hash]
        same.append(_sha256(cold.gguf(PERSONA, "F16")) == hand_hash)
        shutil.rmtree(cold.gguf_base)
        hand_quant_1 = step(
            "by hand: quantize",
            lambda: by_hand_quantize(hand_f16, hand_q, args.quant_type),
            hand_f16,
        )
        q_bytes = hand_q.stat().st_size
        hand_hash = _sha256(hand_q)
        hand_q.unlink()
        ours_quant_1 = step(
            "ours: quantize",
            lambda: ours_quantize(warm, quant_type=args.quant_type),
            warm.gguf(PERSONA, "F16"),
        )
        same.append(_sha256(warm.gguf(PERSONA, args.quant_type)) == hand_hash)
        ours_quant_2 = step(
            "ours: quantize",
            lambda: ours_quantize(warm, quant_type=args.quant_type, force=True),
            warm.gguf(PERSONA, "F16"),
        )
        hand_quant_2 = step(
            "by hand: quantize",
            lambda: by_hand_quantize(hand_f16, hand_q, args.quant_type),
            hand_f16,
        )
        hand_quant = mean(hand_quant_1, hand_quant_2)
        ours_quant = mean(ours_quant_1, ours_quant_2)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    floor_convert = base_bytes / read_bps + f16_bytes / write_bps
    floor_quant = f16_bytes / read_bps + q_bytes / write_bps
    both = Timing(hand_convert.wall + hand_quant.wall, hand_convert.cpu + hand_quant.cpu)
    ours_both = Timing(ours_convert.wall + ours_quant.wall, ours_convert.cpu + ours_quant.cpu)
    rows = [
        ("gguf F16 (after merge)", hand_convert, ours_convert, floor_convert),
        ("gguf F16 (cold)", hand_convert, ours_cold, floor_convert),
        (f"quantize {args.quant_type}", hand_quant, ours_quant, floor_quant),
        ("gguf + quantize", both, ours_both, floor_convert + floor_quant),
    ]
    print(
        f"# disk: read {read_bps / 1e6:.0f} MB/s, write {write_bps / 1e6:.0f} MB/s "
        f"({args.probe_gib:g} GiB probe)"
    )
    print(
        f"# sizes: input {base_bytes / 1e9:.2f} GB, F16 {f16_bytes / 1e9:.2f} GB, "
        f"{args.quant_type} {q_bytes / 1e9:.2f} GB; byte-identical to by hand: {all(same)}"
    )
    print(f"# after: {_load()}")
    print("# by hand: mean of its two runs; ours (quantize): mean of its two runs")
    print(
        f"{'step':<24}{'by hand':>9}{'ours':>9}{'ratio':>8}{'CPU hand':>10}{'CPU ours':>10}{'ratio':>8}{'floor':>8}"
    )
    for name, hand, ours, floor in rows:
        print(
            f"{name:<24}{hand.wall:>8.1f}s{ours.wall:>8.1f}s{ours.wall / hand.wall:>7.3f}x"
            f"{hand.cpu:>9.1f}s{ours.cpu:>9.1f}s{ours.cpu / hand.cpu:>7.3f}x{floor:>7.1f}s"
        )
    if not all(same):
        sys.exit("the two sides wrote different files: the comparison is void")


if __name__ == "__main__":
    main()
