"""The pinned ``llama-quantize``: the types it accepts (read from its own usage text), its
command line, its output turned into progress and warnings, and its failures explained."""

from __future__ import annotations

import contextlib
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from persona_export import console
from persona_export.artifacts import read_json, write_json_atomic
from persona_export.errors import ExternalToolError, UsageError
from persona_export.llamacpp import vendor
from persona_export.proc import run

# File types whose tensors llama.cpp will not quantize without an importance matrix: those
# whose default tensor type is IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S or IQ3_XXS, plus Q2_K_S
# (src/llama-quant.cpp: tensor_requires_imatrix, llama_ftype_get_default_type).
NEEDS_IMATRIX = frozenset(
    {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "Q2_K_S"}
)
_TYPE_LINE = re.compile(r"^\s*(\d+)\s+or\s+([A-Z][A-Z0-9_]*)\s*:\s*(.*?)\s*$")
_ALIAS = re.compile(r"alias for ([A-Z0-9_]+)")
_PROGRESS = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]")


@dataclass(frozen=True)
class QuantType:
    """One type llama-quantize lists: its name, llama_ftype id and description."""

    name: str
    ftype: int
    description: str
    alias_of: str | None = None


def parse_quant_types(usage: str) -> dict[str, QuantType]:
    """The types in llama-quantize's usage text ("  15  or  Q4_K_M  : ..."), COPY left out."""
    types: dict[str, QuantType] = {}
    for line in usage.splitlines():
        m = _TYPE_LINE.match(line)
        if m:
            alias = _ALIAS.search(m.group(3))
            types[m.group(2)] = QuantType(
                m.group(2), int(m.group(1)), m.group(3), alias.group(1) if alias else None
            )
    return types


def list_quant_types(tool: Path) -> dict[str, QuantType]:
    """The types ``tool`` accepts, from its usage text; cached per binary (size and mtime)."""
    st = tool.stat()
    cache_file = vendor.cache_root() / "quant-types.json"
    key = f"{tool.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    cached = read_json(cache_file)
    if cached is not None and cached.get("key") == key:
        return {
            name: QuantType(name, int(v["ftype"]), str(v["description"]), v.get("alias_of"))
            for name, v in cached["types"].items()
        }
    done = run([tool, "--help"], what="llama-quantize --help", check=False)
    types = parse_quant_types(done.output)
    if not types:
        raise ExternalToolError(
            f"could not read the quantization types from `{tool} --help`",
            "the vendored llama-quantize may be broken: run `persona-export vendor`",
        )
    cache = {
        "key": key,
        "types": {
            t.name: {"ftype": t.ftype, "description": t.description, "alias_of": t.alias_of}
            for t in types.values()
        },
    }
    with contextlib.suppress(OSError):  # a read-only cache only costs --help next time
        write_json_atomic(cache_file, cache)
    return types


def canonical_types(requested: Sequence[str], known: dict[str, QuantType]) -> list[str]:
    """Requested names (any case, or llama_ftype numbers) as canonical names, aliases
    resolved (Q4_K -> Q4_K_M), duplicates dropped; an unknown one is a UsageError."""
    by_id = {t.ftype: t.name for t in known.values() if t.alias_of is None}
    wanted: list[str] = []
    for raw in requested:
        text = raw.strip().upper()
        name = by_id.get(int(text)) if text.isdigit() else text
        if name is None or name not in known:
            listed = ", ".join(t for t, q in known.items() if q.alias_of is None)
            raise UsageError(
                f"unknown quantization type {raw!r}",
                f"llama-quantize accepts: {listed}",
            )
        name = known[name].alias_of or name
        if name not in wanted:
            wanted.append(name)
    return wanted


def run_quantize_tool(
    source: Path,
    outfile: Path,
    quant: QuantType,
    *,
    threads: int,
    imatrix: Path | None,
    log_file: Path,
) -> tuple[str, ...]:
    """Run llama-quantize ``source`` -> ``outfile`` as ``quant``; return its warnings (the
    per-tensor fallbacks counted into one line). Raises the explained error when it fails."""
    argv: list[str | Path] = [vendor.tool("llama-quantize")]
    if imatrix is not None:
        argv += ["--imatrix", imatrix]
    argv += [source, outfile, quant.name, str(threads)]
    warnings: list[str] = []
    with console.progress(f"quantizing {quant.name}", unit="tensors") as bar:
        lines = _QuantizeLines(warnings, bar)
        done = run(argv, what="llama-quantize", log_path=log_file, on_line=lines, check=False)
    lines.finish(log_file)
    if done.returncode != 0:
        raise _explain_failure(done.output, done.returncode, quant, log_file)
    return tuple(warnings)


def default_threads(threads: int | None) -> int:
    """llama-quantize's thread count: the one asked for, else every core."""
    return threads or os.cpu_count() or 1


_FALLBACK = re.compile(r"required for type\s+(\w+)\)\s*->\s*falling back to\s+(\w+)")


# "WARNING: 180 of 272 tensor(s) required fallback quantization"
_FALLBACK_TOTAL = re.compile(r"\d+ of \d+ tensor\(s\) required fallback quantization")


class _QuantizeLines:
    """llama-quantize's stream as progress (its "[ i/ n]" line per tensor) and warnings. Its
    per-tensor "falling back" warnings (rows not divisible by the K-quant block of 256) are
    counted and reported as one line when the run ends, not one line per tensor."""

    def __init__(self, warnings: list[str], bar: console.Bar | None = None) -> None:
        self.warnings = warnings
        self.bar = bar or console.Bar()
        self.fallbacks: Counter[tuple[str, str]] = Counter()

    def __call__(self, line: str) -> None:
        if m := _PROGRESS.match(line):
            self.bar.update(int(m.group(1)), total=int(m.group(2)))
            return
        if fallback := _FALLBACK.search(line):
            self.fallbacks[(fallback.group(1), fallback.group(2))] += 1
            return
        if _FALLBACK_TOTAL.search(line):
            return  # its own count of the fallbacks: said by finish(), with their kinds
        if re.search(r"\bwarning\b", line, re.IGNORECASE):
            self.warnings.append(line.strip())
            console.warn(f"llama-quantize: {line.strip()}")

    def finish(self, log_file: Path) -> None:
        """Report the fallbacks counted, as one warning."""
        if not self.fallbacks:
            return
        kinds = ", ".join(f"{a} -> {b} x{n}" for (a, b), n in sorted(self.fallbacks.items()))
        total = sum(self.fallbacks.values())
        message = (
            f"llama-quantize: {total} tensors use another type than asked, their rows not being "
            f"a multiple of 256 ({kinds}); details in {log_file}"
        )
        self.warnings.append(message)
        console.warn(message)


def _explain_failure(
    output: str, returncode: int, quant: QuantType, log_file: Path
) -> ExternalToolError | UsageError:
    if "requires an importance matrix" in output or "requires an imatrix" in output:
        return UsageError(
            f"llama-quantize says {quant.name} needs an importance matrix for this model",
            "pass --imatrix FILE or choose a type such as Q4_K_M",
        )
    if returncode in (-9, 137):
        return ExternalToolError(
            f"llama-quantize was killed (out of memory?) (log: {log_file})",
            "free memory, or run with fewer --threads",
        )
    kept = [
        line
        for line in output.splitlines()
        if line.strip() and not _PROGRESS.match(line) and "llama_model_loader: - kv" not in line
    ]
    tail = "\n".join(kept[-15:])
    return ExternalToolError(
        f"llama-quantize failed with exit code {returncode} (log: {log_file}):\n{tail}",
        "see the log; `persona-export vendor` rebuilds the tools if they are broken",
    )
