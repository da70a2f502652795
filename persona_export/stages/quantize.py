"""The quantize stage: ``<persona>-F16.gguf`` -> ``<persona>-<TYPE>.gguf`` per requested type.

Runs the vendored ``llama-quantize`` once per type into a temporary sibling, reads the
result back (architecture, file type, tensor count, vocabulary and chat template as in the
source), renames it into place and writes a manifest beside it. Valid types are the ones
llama-quantize's own usage text lists (parsed once per binary and cached); types whose
tensors llama.cpp refuses to quantize without an importance matrix are refused up front
unless ``imatrix`` is given.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export import console
from persona_export.artifacts import (
    FileRecord,
    Manifest,
    atomic_file,
    is_fresh,
    manifest_path_for,
    read_json,
    sha256_file,
    write_json_atomic,
)
from persona_export.artifacts.hashing import (
    BackgroundRecords,
    known_records,
    remove_stale_partials,
)
from persona_export.errors import (
    ExternalToolError,
    InputNotFoundError,
    InvalidInputError,
    UsageError,
)
from persona_export.layout import Layout, check_persona
from persona_export.llamacpp import vendor
from persona_export.llamacpp.gguf_check import Expectation, check_gguf
from persona_export.llamacpp.gguf_file import FILE_TYPE_IDS, GgufSummary, read_gguf
from persona_export.proc import run

STAGE = "quantize"
DEFAULT_TYPE = "Q4_K_M"
# Sources the stage quantizes from, in the order it looks for them when none is named.
SOURCE_TYPES = ("F16", "BF16", "F32")
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


@dataclass(frozen=True)
class QuantizeConfig:
    """Which GGUFs to make for ``persona``: ``quant_types`` from ``source`` (F16, BF16 or
    F32; ``None``: the first of those that exists)."""

    persona: str
    layout: Layout = Layout()
    quant_types: tuple[str, ...] = (DEFAULT_TYPE,)
    source: str | None = None
    imatrix: Path | None = None
    threads: int | None = None  # llama-quantize's nthreads; None: every core
    force: bool = False


@dataclass(frozen=True)
class QuantOutput:
    """One quantized GGUF and its figures."""

    quant_type: str
    gguf_path: Path
    manifest_path: Path
    size_bytes: int
    n_weights: int
    bits_per_weight: float
    seconds: float
    skipped: bool


@dataclass(frozen=True)
class QuantizeResult:
    """The source GGUF and one output per requested type, in request order."""

    persona: str
    source_path: Path
    outputs: tuple[QuantOutput, ...]


def run_quantize(config: QuantizeConfig) -> QuantizeResult:
    """Quantize ``config.persona``'s F16/BF16/F32 GGUF to each requested type (skipping
    outputs that are up to date). Raises UsageError (unknown type, imatrix needed),
    InputNotFoundError (no source GGUF), ToolMissingError (llama-quantize not built),
    ExternalToolError (llama-quantize failed) or VerificationError (a wrong output)."""
    persona = check_persona(config.persona)
    if config.threads is not None and config.threads < 1:
        raise UsageError(f"--threads must be at least 1, not {config.threads}", "e.g. --threads 4")
    if config.imatrix is not None and not config.imatrix.is_file():
        raise InputNotFoundError(
            f"importance matrix {config.imatrix} not found", "give the path of an imatrix file"
        )
    source = _find_source(config.layout, persona, config.source)
    tool = vendor.tool("llama-quantize")
    known_types = list_quant_types(tool)
    wanted = _canonical_types(config.quant_types or (DEFAULT_TYPE,), known_types)
    needing = [t for t in wanted if t in NEEDS_IMATRIX]
    if needing and config.imatrix is None:
        raise UsageError(
            f"{', '.join(needing)} {'needs' if len(needing) == 1 else 'need'} an importance "
            "matrix (--imatrix FILE)",
            "make one with llama-imatrix on text like the persona's, or pick a type that does "
            "not need one, e.g. Q4_K_M, Q5_K_M, IQ4_XS or Q8_0",
        )
    inputs = {"source": source}
    if config.imatrix is not None:
        inputs["imatrix"] = config.imatrix

    outputs: list[QuantOutput] = []
    source_summary: GgufSummary | None = None
    hashing: BackgroundRecords | None = None
    try:
        for quant_type in wanted:
            started = time.monotonic()
            final = config.layout.gguf(persona, quant_type)
            manifest_file = manifest_path_for(final)
            options = _options(known_types[quant_type], config.imatrix)
            if not config.force and is_fresh(
                manifest_file, options=options, inputs=inputs, outputs={"gguf": final}
            ):
                outputs.append(_output_from_manifest(quant_type, final, manifest_file, started))
                continue
            if source_summary is None:
                source_summary = read_gguf(source)
                _check_source(source_summary, source)
            if hashing is None:  # hashed while the first llama-quantize runs
                hashing = BackgroundRecords(inputs, _known_inputs(source, manifest_file))
            job = _Job(tool, source, source_summary, final, known_types[quant_type], options)
            outputs.append(_quantize_one(job, config, hashing, started))
    except BaseException:
        if hashing is not None:
            hashing.cancel()
        raise
    return QuantizeResult(persona, source, tuple(outputs))


def _known_inputs(source: Path, manifest_file: Path) -> dict[str, Any]:
    """Hashes already recorded: the source's by the gguf stage, all by a previous run."""
    known = dict(known_records(manifest_file, "inputs"))
    from_gguf = known_records(manifest_path_for(source), "outputs").get("gguf")
    if from_gguf is not None:
        known["source"] = from_gguf
    return known


@dataclass(frozen=True)
class _Job:
    tool: Path
    source: Path
    source_summary: GgufSummary
    final: Path
    quant: QuantType
    options: dict[str, Any]


def _options(quant: QuantType, imatrix: Path | None) -> dict[str, Any]:
    # threads are left out: they change the speed, not the file
    return {
        "type": quant.name,
        "ftype": quant.ftype,
        "imatrix": imatrix is not None,
        "llama_cpp_commit": vendor.commit(),
    }


def _quantize_one(
    job: _Job, config: QuantizeConfig, hashing: BackgroundRecords, started: float
) -> QuantOutput:
    final, quant, source_summary = job.final, job.quant, job.source_summary
    remove_stale_partials(final.parent, final.name)
    log_file = final.with_name(final.name + ".log")
    threads = config.threads or os.cpu_count() or 1
    warnings: list[str] = []
    lines = _QuantizeLines(warnings)
    console.info(
        f"quantizing {job.source.name} to {quant.name} ({threads} threads; log: {log_file})"
    )
    with atomic_file(final) as tmp:
        argv: list[str | Path] = [job.tool]
        if config.imatrix is not None:
            argv += ["--imatrix", config.imatrix]
        argv += [job.source, tmp, quant.name, str(threads)]
        done = run(
            argv,
            what="llama-quantize",
            log_path=log_file,
            on_line=lines,
            check=False,
        )
        lines.finish(log_file)
        if done.returncode != 0:
            raise _explain_failure(done.output, done.returncode, quant, log_file)
        # hashed after the run: llama-quantize rewrites its header last, and hashing while it
        # runs would take a core from it
        output_record = FileRecord(sha256_file(tmp), tmp.stat().st_size, 0)
        summary = check_gguf(
            tmp,
            Expectation(
                architecture=source_summary.architecture,
                file_type=quant.ftype,
                tensor_count=source_summary.tensor_count,
                name=source_summary.name,
                chat_template=source_summary.chat_template,
                token_count=source_summary.token_count,
                tensor_names=frozenset(t.name for t in source_summary.tensors),
            ),
            what=f"llama-quantize's {quant.name} output",
        )
        input_records = hashing.result()
    output_record = FileRecord(output_record.sha256, output_record.size, final.stat().st_mtime_ns)
    seconds = time.monotonic() - started
    extra = {
        "persona": source_summary.name,
        "llama_cpp_commit": vendor.commit(),
        "quant_type": quant.name,
        "threads": threads,
        "n_weights": summary.n_weights,
        "bits_per_weight": round(summary.bits_per_weight, 4),
        "warnings": warnings,
    }
    manifest = Manifest(STAGE, job.options, input_records, {"gguf": output_record}, seconds, extra)
    write_json_atomic(manifest_path_for(final), manifest.to_json())
    console.info(f"wrote {final} in {seconds:.1f} s")
    return QuantOutput(
        quant_type=quant.name,
        gguf_path=final,
        manifest_path=manifest_path_for(final),
        size_bytes=output_record.size,
        n_weights=summary.n_weights,
        bits_per_weight=summary.bits_per_weight,
        seconds=seconds,
        skipped=False,
    )


def _output_from_manifest(
    quant_type: str, final: Path, manifest_file: Path, started: float
) -> QuantOutput:
    data = read_json(manifest_file) or {}
    return QuantOutput(
        quant_type=quant_type,
        gguf_path=final,
        manifest_path=manifest_file,
        size_bytes=int(data["outputs"]["gguf"]["size"]),
        n_weights=int(data.get("n_weights", 0)),
        bits_per_weight=float(data.get("bits_per_weight", 0.0)),
        seconds=time.monotonic() - started,
        skipped=True,
    )


# --------------------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------------------


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


def _canonical_types(requested: tuple[str, ...], known: dict[str, QuantType]) -> list[str]:
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


# --------------------------------------------------------------------------------------
# Source and tool output
# --------------------------------------------------------------------------------------


def _find_source(layout: Layout, persona: str, source: str | None) -> Path:
    if source is not None:
        kind = source.upper()
        if kind not in SOURCE_TYPES:
            raise UsageError(
                f"--source {source!r} is not an unquantized GGUF type",
                f"use one of {', '.join(SOURCE_TYPES)} (quantizing an already quantized file "
                "loses quality)",
            )
        path = layout.gguf(persona, kind)
        if not path.is_file():
            raise InputNotFoundError(
                f"no {kind} GGUF for persona {persona!r} at {path}",
                f"run `persona-export gguf --persona {persona} --outtype {kind.lower()}` first",
            )
        return path
    for kind in SOURCE_TYPES:
        path = layout.gguf(persona, kind)
        if path.is_file():
            return path
    raise InputNotFoundError(
        f"no F16, BF16 or F32 GGUF for persona {persona!r} in {layout.gguf_dir(persona)}",
        f"run `persona-export gguf --persona {persona}` first",
    )


def _check_source(summary: GgufSummary, path: Path) -> None:
    if summary.file_type not in {FILE_TYPE_IDS[kind] for kind in SOURCE_TYPES}:
        raise InvalidInputError(
            f"{path} is not an F32/F16/BF16 GGUF (general.file_type {summary.file_type})",
            "run the gguf stage again with --force",
        )


_FALLBACK = re.compile(r"required for type\s+(\w+)\)\s*->\s*falling back to\s+(\w+)")


class _QuantizeLines:
    """llama-quantize's stream as 10 % progress steps and warnings. Its per-tensor "falling
    back" warnings (rows not divisible by the K-quant block of 256) are counted and reported
    as one line when the run ends, not one line per tensor."""

    def __init__(self, warnings: list[str]) -> None:
        self.warnings = warnings
        self.decile = -1
        self.fallbacks: Counter[tuple[str, str]] = Counter()

    def __call__(self, line: str) -> None:
        if m := _PROGRESS.match(line):
            decile = int(m.group(1)) * 10 // max(int(m.group(2)), 1)
            if decile > self.decile:
                self.decile = decile
                console.info(f"  tensors {decile * 10}%")
            return
        if fallback := _FALLBACK.search(line):
            self.fallbacks[(fallback.group(1), fallback.group(2))] += 1
            return
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
