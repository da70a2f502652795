"""The gguf stage: merged HF folder -> ``gguf_models/<persona>/<persona>-F16.gguf``.

Runs the vendored ``convert_hf_to_gguf.py`` (:mod:`persona_export.llamacpp.converter`) on
``merged_models/<persona>/`` with the persona as ``general.name``. The folder is checked
first and, when its tokenizer needs it, handed over through a shadow folder
(:mod:`persona_export.llamacpp.converter_input`). The converter writes a temporary sibling
that is read back and checked (architecture, file type, tokenizer, chat template,
vocabulary against the embedding, every block present) before it is renamed into place with
its manifest. Inputs and output are hashed while the converter runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export import console
from persona_export.artifacts import (
    DIR_MANIFEST,
    LEGACY_TOKFIX,
    Artifact,
    FileRecord,
    dropped_outputs,
    known_records,
    list_files,
    persona_lock,
    read_json,
    remove_legacy_scratch,
    remove_stale_temporaries,
    require_free_space,
)
from persona_export.artifacts.hashing import TailHasher
from persona_export.errors import DroppedInputError, UsageError
from persona_export.llamacpp import vendor
from persona_export.llamacpp.converter import KNOWN_ARCHITECTURES, run_converter
from persona_export.llamacpp.converter_input import (
    MergedFolder,
    converter_input,
    inspect_merged,
    resolve_auto_outtype,
    tokenizer_fix,
)
from persona_export.llamacpp.gguf_check import Expectation, check_gguf
from persona_export.llamacpp.gguf_file import FILE_TYPE_IDS, GgufSummary
from persona_export.llamacpp.sizes import converted_bytes
from persona_export.stages.base import StageConfig, StageResult, Status

OUTTYPES = ("f16", "bf16", "f32", "q8_0", "auto")
STAGE = "gguf"


@dataclass(frozen=True)
class GgufConfig(StageConfig):
    """What to convert: the persona's merged folder to ``outtype``."""

    outtype: str = "f16"  # f16 | bf16 | f32 | q8_0 | auto (the weights' 16-bit type)
    # a GGUF export --keep dropped counts as up to date when it would be made again from the
    # same inputs (export sets it; a plain `gguf` makes it again)
    accept_dropped: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.outtype.lower() not in OUTTYPES:
            raise UsageError(
                f"unknown --outtype {self.outtype!r}", f"use one of: {', '.join(OUTTYPES)}"
            )


@dataclass(frozen=True)
class GgufResult(StageResult):
    """The GGUF written (or found up to date) and its figures."""

    gguf_path: Path
    manifest_path: Path
    file_type: str  # F16, BF16, F32 or Q8_0
    architecture: str
    size_bytes: int
    n_weights: int
    bits_per_weight: float
    tensor_count: int
    tokenizer_fix: str | None = None  # what a shadow folder changed, when one was used


def run(config: GgufConfig) -> GgufResult:
    """Convert the merged model of ``config.persona`` to GGUF (or find it up to date).

    Raises InputNotFoundError (no merged model), InvalidInputError/UnsupportedError (a folder
    the pinned converter cannot take, said before converting when possible),
    ToolMissingError (no vendored llama.cpp), ExternalToolError (the converter failed),
    OutputConflictError (the output's place is taken) or VerificationError (its output
    failed the checks; nothing is left in place).
    """
    started = time.monotonic()
    persona, layout = config.persona, config.layout
    with persona_lock(layout.lock_file(persona), on_wait=console.info):
        # older versions' tokenizer shadow folders (tempfile names; the lock makes them stale)
        remove_legacy_scratch(layout.gguf_dir(persona), LEGACY_TOKFIX, layout.lock_file(persona))
        merged_dir = layout.merged(persona)
        dropped = dropped_outputs(merged_dir / DIR_MANIFEST)
        if dropped is not None:
            return _after_dropped_merge(config, dropped, started)
        source = inspect_merged(merged_dir, persona)
        outtype = config.outtype.lower()
        if outtype == "auto":
            outtype = resolve_auto_outtype(source.weight_files)
        artifact = _artifact(config, outtype, list_files(merged_dir))
        artifact.clean_temporaries()  # an interrupted run's, whether or not this one writes
        remove_stale_temporaries(artifact.path.parent, artifact.path.name + ".log")
        if artifact.fresh(force=config.force):
            return _result_from_manifest(config, artifact, outtype.upper(), started)
        if config.accept_dropped and artifact.dropped_fresh(force=config.force):
            return _result_from_manifest(config, artifact, outtype.upper(), started, dropped=True)
        return _convert(config, artifact, source, outtype, started)


def _artifact(
    config: GgufConfig,
    outtype: str,
    inputs: dict[str, Path],
    dropped: dict[str, Any] | None = None,
) -> Artifact:
    layout, persona = config.layout, config.persona
    merged_dir = layout.merged(persona)
    return Artifact(
        stage=STAGE,
        path=layout.gguf(persona, outtype.upper()),
        output_name="gguf",
        options={
            "outtype": outtype,
            "model_name": persona,
            "llama_cpp_commit": vendor.commit(),
        },
        inputs=inputs,
        protected=(merged_dir, layout.adapter(persona)),
        # the merge recorded its outputs' hashes: they are this stage's inputs
        known=known_records(merged_dir / DIR_MANIFEST, "outputs", merged_dir),
        dropped_inputs=dropped or {},
    )


def _after_dropped_merge(config: GgufConfig, dropped: dict[str, Any], started: float) -> GgufResult:
    """The merged folder was dropped (export --keep): the GGUF is up to date when its
    manifest records exactly the files the tombstone records; else it cannot be made."""
    persona = config.persona
    outtype = config.outtype.lower()
    if outtype == "auto":  # what the merged weights were, as the merge recorded it
        merge = read_json(config.layout.merged(persona) / DIR_MANIFEST) or {}
        dtype = (merge.get("options") or {}).get("dtype")
        outtype = "bf16" if dtype == "bfloat16" else "f16"
    # the files the tombstone kept (config, tokenizer) as they are, the weights by record
    artifact = _artifact(config, outtype, list_files(config.layout.merged(persona)), dropped)
    if artifact.fresh(force=config.force):
        return _result_from_manifest(config, artifact, outtype.upper(), started)
    if config.accept_dropped and artifact.dropped_fresh(force=config.force):
        return _result_from_manifest(config, artifact, outtype.upper(), started, dropped=True)
    raise DroppedInputError(
        f"the merged model of {persona} was dropped (export --keep) and "
        f"{artifact.path.name} has to be made again from it",
        f"rebuild it first: persona-export merge --persona {persona} (export rebuilds what "
        "it needs by itself)",
        stage="merge",
    )


def _convert(
    config: GgufConfig, artifact: Artifact, source: MergedFolder, outtype: str, started: float
) -> GgufResult:
    persona, final = config.persona, artifact.path
    vendor.converter_script()  # a missing converter is said before anything else
    _require_space(config, source, outtype, final)
    fix = tokenizer_fix(source)
    notes: list[str] = []
    if fix is not None:
        notes.append(
            f"{source.path}/tokenizer_config.json says tokenizer_class {fix.was!r} (e.g. a "
            f"transformers 5 re-save); converting through a shadow folder that declares "
            f"{fix.tokenizer_class}, which the pinned phi3 converter needs to read this "
            "tokenizer"
        )
    log_file = final.with_name(final.name + ".log")
    console.info(
        f"converting {source.path} to {outtype.upper()} GGUF with llama.cpp {vendor.commit()} "
        f"(log: {log_file})"
    )
    for note in notes:
        console.info(note)
    hashing = artifact.hash_inputs()
    try:
        with artifact.write() as writing, converter_input(source, fix, final) as convert_dir:
            tail = TailHasher(writing.tmp)
            try:
                conversion = run_converter(
                    convert_dir,
                    writing.tmp,
                    outtype=outtype,
                    model_name=persona,
                    log_file=log_file,
                    merged_dir=source.path,
                )
            except BaseException:
                tail.stop()
                raise
            output = tail.finish()
            summary = _check(writing.tmp, source, outtype.upper(), persona)
            writing.record(
                hashing.result(),
                outputs={"gguf": output},
                extra=_figures(config, source, summary, outtype.upper(), fix.note if fix else None)
                | {
                    "converter_launcher": conversion.fast_cast,
                    "warnings": list(conversion.warnings),
                },
            )
    except BaseException:
        hashing.cancel()
        raise
    seconds = time.monotonic() - started
    console.info(f"wrote {final} in {seconds:.1f} s")
    return _result(
        config,
        artifact,
        outtype.upper(),
        summary.architecture or "",
        output,
        summary.n_weights,
        summary.bits_per_weight,
        summary.tensor_count,
        Status.DONE,
        started,
        warnings=conversion.warnings,
        notes=tuple(notes),
        tokenizer_fix=fix.note if fix else None,
    )


def _require_space(config: GgufConfig, source: MergedFolder, outtype: str, final: Path) -> None:
    """Refuse before converting when the GGUF would not fit (llamacpp/sizes.py)."""
    from persona_export.hf.model_files import TOKENIZER_FILES

    tokenizer = [source.path / name for name in TOKENIZER_FILES]
    require_free_space(
        final.parent,
        converted_bytes(source.weight_files, outtype, tokenizer),
        what=f"the {outtype.upper()} GGUF of {config.persona}",
        hint="free some space or pass --gguf-dir on a larger disk (export --keep f16 drops "
        "the merged model once it is converted and verified)",
    )


def _check(path: Path, source: MergedFolder, file_type: str, persona: str) -> GgufSummary:
    return check_gguf(
        path,
        Expectation(
            architecture=KNOWN_ARCHITECTURES.get(source.architecture),
            file_type=FILE_TYPE_IDS[file_type],
            name=persona,
            chat_template=source.chat_template,
            block_count=source.num_layers if source.architecture in KNOWN_ARCHITECTURES else None,
        ),
        what=f"the converter's output for {source.path}",
    )


def _figures(
    config: GgufConfig,
    source: MergedFolder,
    summary: GgufSummary,
    file_type: str,
    fix_note: str | None,
) -> dict[str, object]:
    return {
        "persona": config.persona,
        "llama_cpp_commit": vendor.commit(),
        "source_dir": str(source.path),
        "architecture": summary.architecture,
        "file_type": file_type,
        "tensor_count": summary.tensor_count,
        "n_weights": summary.n_weights,
        "bits_per_weight": round(summary.bits_per_weight, 4),
        "tokenizer_fix": fix_note,
    }


def _result_from_manifest(
    config: GgufConfig, artifact: Artifact, file_type: str, started: float, *, dropped: bool = False
) -> GgufResult:
    data = artifact.recorded() or {}
    record = data["outputs"]["gguf"]
    return _result(
        config,
        artifact,
        str(data.get("file_type", file_type)),
        str(data.get("architecture", "")),
        FileRecord(record["sha256"], int(record["size"]), int(record["mtime_ns"])),
        int(data.get("n_weights", 0)),
        float(data.get("bits_per_weight", 0.0)),
        int(data.get("tensor_count", 0)),
        Status.UP_TO_DATE,
        started,
        tokenizer_fix=data.get("tokenizer_fix"),
        dropped=dropped,
    )


def _result(
    config: GgufConfig,
    artifact: Artifact,
    file_type: str,
    architecture: str,
    output: FileRecord,
    n_weights: int,
    bits_per_weight: float,
    tensor_count: int,
    status: Status,
    started: float,
    *,
    warnings: tuple[str, ...] = (),
    notes: tuple[str, ...] = (),
    tokenizer_fix: str | None = None,
    dropped: bool = False,
) -> GgufResult:
    return GgufResult(
        stage=STAGE,
        persona=config.persona,
        status=status,
        outputs=(artifact.path,),
        figures={
            "file_type": file_type,
            "size_bytes": output.size,
            "bits_per_weight": round(bits_per_weight, 4),
            "n_weights": n_weights,
            "tensor_count": tensor_count,
        },
        warnings=warnings,
        notes=notes,
        seconds=time.monotonic() - started,
        detail=f"{file_type}, {bits_per_weight:.2f} bits/weight"
        + (", dropped (--keep)" if dropped else ""),
        gguf_path=artifact.path,
        manifest_path=artifact.manifest,
        file_type=file_type,
        architecture=architecture,
        size_bytes=output.size,
        n_weights=n_weights,
        bits_per_weight=bits_per_weight,
        tensor_count=tensor_count,
        tokenizer_fix=tokenizer_fix,
    )
