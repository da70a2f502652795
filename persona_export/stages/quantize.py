"""The quantize stage: ``<persona>-F16.gguf`` -> ``<persona>-<TYPE>.gguf`` per requested type.

Runs the vendored ``llama-quantize`` (:mod:`persona_export.llamacpp.quantize`) once per type
into a temporary sibling, reads the result back (architecture, file type, tensor count,
vocabulary and chat template as in the source), and renames it into place with its
manifest. Valid types are the ones llama-quantize's own usage text lists; types whose
tensors llama.cpp refuses to quantize without an importance matrix are refused up front
unless an importance matrix is given (a file, or one made from the persona:
:mod:`persona_export.stages.quantize_imatrix`). A requested type equal to the source's
(``F16`` from an F16) is the source itself: nothing is quantized or overwritten.

The type ``AUTO`` climbs a ladder of types and keeps the smallest that keeps the persona
(:mod:`persona_export.stages.quantize_auto`); the result names the chosen type first.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_export import console
from persona_export.artifacts import (
    Artifact,
    dropped_outputs,
    known_records,
    manifest_path_for,
    persona_lock,
    record_file,
    remove_stale_temporaries,
    require_free_space,
)
from persona_export.artifacts.hashing import BackgroundRecords
from persona_export.errors import (
    DroppedInputError,
    InputNotFoundError,
    InvalidInputError,
    UsageError,
)
from persona_export.layout import DEFAULT_QUANT, Layout
from persona_export.llamacpp import vendor
from persona_export.llamacpp.gguf_check import Expectation, check_gguf
from persona_export.llamacpp.gguf_file import FILE_TYPE_IDS, GgufSummary, read_gguf
from persona_export.llamacpp.quantize import (
    NEEDS_IMATRIX,
    QuantType,
    canonical_types,
    default_threads,
    list_quant_types,
    run_quantize_tool,
)
from persona_export.llamacpp.sizes import quantized_bytes
from persona_export.stages.base import StageConfig, StageResult, Status
from persona_export.stages.quantize_auto import AUTO, check_options
from persona_export.verify.ladder import Rung

STAGE = "quantize"
DEFAULT_TYPE = DEFAULT_QUANT
# Sources the stage quantizes from, in the order it looks for them when none is named.
SOURCE_TYPES = ("F16", "BF16", "F32")


@dataclass(frozen=True)
class QuantizeConfig(StageConfig):
    """Which GGUFs to make for ``persona``: ``quant_types`` from ``source`` (F16, BF16 or
    F32; ``None``: the first of those that exists).

    Importance matrix: ``imatrix`` (a file), or ``imatrix_auto`` (made from the persona:
    its system prompt and the F16's answers to templates/calibration_prompts.toml; the
    first ``calibration_limit`` prompts when set), or one made from the text of
    ``calibration``.

    ``quant_types == ("AUTO",)``: climb ``ladder`` (empty: templates/quant_ladder.toml),
    measuring each type as verify does (``base_model``, ``personas_file``,
    ``prompts_file``, ``kl_max``, ``retention_min``, ``hf_dtype`` as verify's) and keep the
    smallest that passes; ``keep_candidates`` keeps the other GGUFs it made.
    """

    quant_types: tuple[str, ...] = (DEFAULT_TYPE,)
    source: str | None = None
    imatrix: Path | None = None
    imatrix_auto: bool = False
    calibration: Path | None = None
    calibration_limit: int | None = None
    threads: int | None = None  # llama-quantize's nthreads; None: every core
    ladder: tuple[str, ...] = ()
    keep_candidates: bool = False
    base_model: str | None = None
    personas_file: Path | None = None
    prompts_file: Path | None = None
    kl_max: Mapping[str, float] = field(default_factory=dict)
    retention_min: Mapping[str, float] = field(default_factory=dict)
    hf_dtype: str = "float32"

    @property
    def auto(self) -> bool:
        return AUTO in (t.upper() for t in self.quant_types)

    @property
    def makes_imatrix(self) -> bool:
        return self.imatrix_auto or self.calibration is not None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.quant_types:
            raise UsageError("give at least one quantization type", f"e.g. --type {DEFAULT_TYPE}")
        check_options(self)
        if self.threads is not None and self.threads < 1:
            raise UsageError(
                f"--threads must be at least 1, not {self.threads}", "e.g. --threads 4"
            )
        if self.source is not None and self.source.upper() not in SOURCE_TYPES:
            raise UsageError(
                f"--source {self.source!r} is not an unquantized GGUF type",
                f"use one of {', '.join(SOURCE_TYPES)} (quantizing an already quantized file "
                "loses quality)",
            )


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
    status: Status

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.quant_type,
            "path": str(self.gguf_path),
            "size_bytes": self.size_bytes,
            "bits_per_weight": round(self.bits_per_weight, 4),
            "status": self.status.value,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class QuantizeResult(StageResult):
    """The source GGUF and one output per requested type, in request order."""

    source_path: Path
    quants: tuple[QuantOutput, ...]
    chosen: str | None = None  # --type auto: the type chosen (None: none passed, or no auto)
    ladder: tuple[Rung, ...] = ()
    reason: str = ""
    imatrix: Path | None = None


def run(config: QuantizeConfig) -> QuantizeResult:
    """Quantize ``config.persona``'s F16/BF16/F32 GGUF to each requested type (outputs that
    are up to date are kept). Raises UsageError (unknown type, imatrix needed),
    InputNotFoundError (no source GGUF), ToolMissingError (llama-quantize not built),
    ExternalToolError (llama-quantize failed) or VerificationError (a wrong output)."""
    started = time.monotonic()
    persona = config.persona
    for given, what in (
        (config.imatrix, "importance matrix"),
        (config.calibration, "calibration text"),
    ):
        if given is not None and not given.is_file():
            raise InputNotFoundError(f"{what} {given} not found", f"give the path of a {what} file")
    with persona_lock(config.layout.lock_file(persona), on_wait=console.info):
        source = _find_source(config.layout, persona, config.source)
        source_type = source.name[len(persona) + 1 : -len(".gguf")]
        known_types = list_quant_types(vendor.tool("llama-quantize"))
        if config.auto:
            from persona_export.verify.ladder import default_ladder

            wanted = canonical_types(config.ladder or default_ladder(), known_types)
        else:
            wanted = canonical_types(config.quant_types, known_types)
        if not config.makes_imatrix:
            _require_imatrix(wanted, config.imatrix)
        # a source export --keep dropped is known by the record its tombstone keeps
        dropped = None if source.is_file() else dropped_outputs(manifest_path_for(source))
        if dropped is not None and (config.makes_imatrix or config.auto):
            # the matrix and the ladder's measures read the source
            raise _dropped_source(config, source)
        imatrix = config.imatrix
        if config.makes_imatrix:
            from persona_export.stages.quantize_imatrix import make_imatrix

            imatrix = make_imatrix(config, source)
        inputs = {} if dropped is not None else {"source": source}
        if imatrix is not None:
            inputs["imatrix"] = imatrix
        job = _Job(config, source, inputs, dropped, imatrix)

        def one(quant_type: str) -> QuantOutput:
            if quant_type == source_type:
                return _the_source(job, quant_type)
            return job.one(known_types[quant_type])

        try:
            if config.auto:
                from persona_export.stages.quantize_auto import climb

                ladder = climb(config, source, wanted, imatrix, one)
                return ladder.result(config, source, imatrix, started)
            job.require_space([known_types[t] for t in wanted if t != source_type])
            outputs = [one(quant_type) for quant_type in wanted]
        finally:
            job.close()
    return _result(config, source, tuple(outputs), started, imatrix)


def _dropped_source(config: QuantizeConfig, source: Path) -> DroppedInputError:
    """The error for a source GGUF that export --keep dropped and that is needed again."""
    persona = config.persona
    return DroppedInputError(
        f"{source.name} was dropped (export --keep) and is needed to quantize again",
        f"rebuild it first: persona-export gguf --persona {persona} (after "
        f"persona-export merge --persona {persona} if the merged model was dropped "
        "too; export rebuilds what it needs by itself)",
        stage="gguf",
    )


def _require_imatrix(wanted: list[str], imatrix: Path | None) -> None:
    needing = [t for t in wanted if t in NEEDS_IMATRIX]
    if needing and imatrix is None:
        raise UsageError(
            f"{', '.join(needing)} {'needs' if len(needing) == 1 else 'need'} an importance "
            "matrix (--imatrix FILE)",
            "make one from the persona with --imatrix auto (or from your own text: --imatrix "
            "auto --calibration FILE), or pick a type that does not need one, e.g. Q4_K_M, "
            "Q5_K_M, IQ4_XS or Q8_0",
        )


class _Job:
    """The quantizations of one run: the source is read and hashed once, for all types."""

    def __init__(
        self,
        config: QuantizeConfig,
        source: Path,
        inputs: dict[str, Path],
        dropped: dict[str, Any] | None,
        imatrix: Path | None,
    ) -> None:
        self.config = config
        self.source = source
        self.inputs = inputs
        self.dropped = {"source": dropped.get("gguf") or {}} if dropped is not None else {}
        self.imatrix = imatrix
        self.summary: GgufSummary | None = None
        self.hashing: BackgroundRecords | None = None
        # the gguf stage recorded the source's hash
        recorded = known_records(manifest_path_for(source), "outputs").get("gguf")
        self.source_hint = {"source": recorded} if recorded else {}

    def close(self) -> None:
        if self.hashing is not None:
            self.hashing.cancel()

    def artifact(self, quant: QuantType) -> Artifact:
        config = self.config
        return Artifact(
            stage=STAGE,
            path=config.layout.gguf(config.persona, quant.name),
            output_name="gguf",
            options={
                # threads are left out: they change the speed, not the file
                "type": quant.name,
                "ftype": quant.ftype,
                "imatrix": self.imatrix is not None,
                "llama_cpp_commit": vendor.commit(),
            },
            inputs=self.inputs,
            protected=(config.layout.merged(config.persona),),
            known=self.source_hint,
            dropped_inputs=self.dropped,
        )

    def require_source(self) -> None:
        if self.dropped:
            raise _dropped_source(self.config, self.source)

    def require_space(self, quants: list[QuantType]) -> None:
        """Refuse before writing anything when the types still to make would not fit on the
        disk together (sizes estimated in llamacpp/sizes.py)."""
        missing = [q for q in quants if not self.artifact(q).fresh(force=self.config.force)]
        if not missing:
            return
        self.require_source()
        summary = self.source_summary()
        metadata, size = summary.data_offset, self.source.stat().st_size
        needed = sum(
            quantized_bytes(q.description, summary.n_weights, metadata, size) for q in missing
        )
        require_free_space(
            self.source.parent,
            needed,
            what=f"the {', '.join(q.name for q in missing)} GGUF of {self.config.persona}",
            hint="free some space, quantize fewer types at once, or pass --gguf-dir on a "
            "larger disk",
        )

    def source_summary(self) -> GgufSummary:
        self.require_source()
        if self.summary is None:
            self.summary = read_gguf(self.source)
            _check_source(self.summary, self.source)
        return self.summary

    def one(self, quant: QuantType) -> QuantOutput:
        started = time.monotonic()
        config = self.config
        artifact = self.artifact(quant)
        artifact.clean_temporaries()  # an interrupted run's, whether or not this one writes
        remove_stale_temporaries(artifact.path.parent, artifact.path.name + ".log")
        if artifact.fresh(force=config.force):
            return _output_from_manifest(quant.name, artifact, started)
        summary = self.source_summary()
        if self.hashing is None:  # hashed while the first llama-quantize runs
            self.hashing = artifact.hash_inputs()
        return _quantize_one(config, artifact, quant, summary, self.hashing, self.imatrix, started)


def _quantize_one(
    config: QuantizeConfig,
    artifact: Artifact,
    quant: QuantType,
    source_summary: GgufSummary,
    hashing: BackgroundRecords,
    imatrix: Path | None,
    started: float,
) -> QuantOutput:
    final = artifact.path
    log_file = final.with_name(final.name + ".log")
    threads = default_threads(config.threads)
    console.info(
        f"quantizing {source_summary.path.name} to {quant.name} ({threads} threads; "
        f"log: {log_file})"
    )
    with artifact.write() as writing:
        warnings = run_quantize_tool(
            source_summary.path,
            writing.tmp,
            quant,
            threads=threads,
            imatrix=imatrix,
            log_file=log_file,
        )
        # hashed after the run: llama-quantize rewrites its header last, and hashing while it
        # runs would take a core from it
        output = record_file(writing.tmp)
        summary = check_gguf(
            writing.tmp,
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
        writing.record(
            hashing.result(),
            outputs={"gguf": output},
            extra={
                "persona": source_summary.name,
                "llama_cpp_commit": vendor.commit(),
                "quant_type": quant.name,
                "threads": threads,
                "n_weights": summary.n_weights,
                "bits_per_weight": round(summary.bits_per_weight, 4),
                "warnings": list(warnings),
            },
        )
    seconds = time.monotonic() - started
    console.info(f"wrote {final} in {seconds:.1f} s")
    return QuantOutput(
        quant.name,
        final,
        artifact.manifest,
        output.size,
        summary.n_weights,
        summary.bits_per_weight,
        seconds,
        Status.DONE,
    )


def _output_from_manifest(quant_type: str, artifact: Artifact, started: float) -> QuantOutput:
    data = artifact.recorded() or {}
    return QuantOutput(
        quant_type=quant_type,
        gguf_path=artifact.path,
        manifest_path=artifact.manifest,
        size_bytes=int(data["outputs"]["gguf"]["size"]),
        n_weights=int(data.get("n_weights", 0)),
        bits_per_weight=float(data.get("bits_per_weight", 0.0)),
        seconds=time.monotonic() - started,
        status=Status.UP_TO_DATE,
    )


def _the_source(job: _Job, quant_type: str) -> QuantOutput:
    """A requested type equal to the source's: the source GGUF is that output."""
    summary = job.source_summary()
    data = known_records(manifest_path_for(job.source), "outputs").get("gguf") or {}
    return QuantOutput(
        quant_type=quant_type,
        gguf_path=job.source,
        manifest_path=manifest_path_for(job.source),
        size_bytes=int(data.get("size", job.source.stat().st_size)),
        n_weights=summary.n_weights,
        bits_per_weight=summary.bits_per_weight,
        seconds=0.0,
        status=Status.UP_TO_DATE,
    )


def _result(
    config: QuantizeConfig,
    source: Path,
    outputs: tuple[QuantOutput, ...],
    started: float,
    imatrix: Path | None = None,
) -> QuantizeResult:
    done = any(o.status is Status.DONE for o in outputs)
    return QuantizeResult(
        stage=STAGE,
        persona=config.persona,
        status=Status.DONE if done else Status.UP_TO_DATE,
        outputs=tuple(o.gguf_path for o in outputs),
        figures={"quants": [o.to_json() for o in outputs]},
        seconds=time.monotonic() - started,
        detail=", ".join(f"{o.quant_type} {o.bits_per_weight:.2f} bits/weight" for o in outputs),
        source_path=source,
        quants=outputs,
        imatrix=imatrix,
    )


def _find_source(layout: Layout, persona: str, source: str | None) -> Path:
    if source is not None:
        kind = source.upper()
        path = layout.gguf(persona, kind)
        if not path.is_file() and dropped_outputs(manifest_path_for(path)) is None:
            raise InputNotFoundError(
                f"no {kind} GGUF for persona {persona!r} at {path}",
                f"run `persona-export gguf --persona {persona} --outtype {kind.lower()}` first",
            )
        return path
    for kind in SOURCE_TYPES:
        path = layout.gguf(persona, kind)
        if path.is_file() or dropped_outputs(manifest_path_for(path)) is not None:
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
