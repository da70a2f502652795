"""The merge stage: base model + LoRA adapter -> ``merged_models/<persona>/``.

A streaming merge that gives the weights PEFT's ``merge_and_unload`` gives (bit for bit on
CPU), without loading the model: the base is read tensor by tensor from its safetensors, the
LoRA delta is applied only to targeted weights, and output shards are written as it goes
(:mod:`persona_export.merge`). Around it: the adapter and base are checked before a byte is
written, config.json, generation_config.json, the tokenizer files and chat template are
carried over so that the folder is a portable Transformers model
(:mod:`persona_export.merge.carried`), a model card (``README.md``,
:mod:`persona_export.hf.model_card`) says what the persona is and how it was made (its facts
are recorded in the manifest for ``push``), and the output is an
:class:`~persona_export.artifacts.Artifact`: skipped when up to date, written atomically,
never put over a folder persona-export did not write or over an input.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export import console
from persona_export.artifacts import (
    Artifact,
    FileRecord,
    persona_lock,
    read_json,
    require_free_space,
)
from persona_export.artifacts.hashing import TailHasher
from persona_export.errors import InputNotFoundError, UsageError
from persona_export.hf.base_model import resolve_base_model
from persona_export.hf.model_card import CARD_NAME, merged_facts, render_card
from persona_export.layout import DEFAULT_BASE_MODEL
from persona_export.merge.adapter import Adapter, read_adapter
from persona_export.merge.carried import (
    Carried,
    carried_files,
    check_tokenizer_fits,
    copy_file,
    write_config,
)
from persona_export.merge.checkpoint import Checkpoint, read_checkpoint
from persona_export.merge.execute import execute, make_comparer, shard_files
from persona_export.merge.plan import MergePlan, describe, make_plan
from persona_export.personas import find_persona
from persona_export.stages.base import StageConfig, StageResult, Status

STAGE = "merge"
FORMAT_VERSION = 2  # bump when the output for the same inputs and options changes
DTYPES = {"bf16": "BF16", "f16": "F16", "f32": "F32"}
DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_SHARD_BYTES = 5_000_000_000
DEFAULT_BLOCK_BYTES = 4 * 1024 * 1024  # a block of float32 rows stays in cache

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class MergeConfig(StageConfig):
    """What to merge and how.

    ``base_model``: a local folder or a Hugging Face hub id (``revision`` for hub ids).
    ``dtype``: ``auto`` (the base's config dtype), ``bf16``, ``f16`` or ``f32``.
    ``device``: where the LoRA products are computed (``auto``: CUDA when available).
    ``allow_pickle``: accept an ``adapter_model.bin`` (loaded with ``weights_only=True``).
    ``max_shard_bytes`` / ``block_bytes``: output shard size limit and the working block of
    rows merged at once (memory versus overhead; the result does not depend on it).
    ``personas_file``: a personas TOML read after the shipped one (the card's display name
    and system prompt).
    ``accept_dropped``: a merged folder that ``export --keep`` dropped counts as up to date
    when it would be made again from the same inputs and options (export sets it; a plain
    ``merge`` makes it again).
    """

    base_model: str = DEFAULT_BASE_MODEL
    dtype: str = "auto"
    revision: str | None = None
    device: str = "auto"
    allow_pickle: bool = False
    max_shard_bytes: int = DEFAULT_SHARD_BYTES
    block_bytes: int = DEFAULT_BLOCK_BYTES
    personas_file: Path | None = None
    accept_dropped: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise UsageError(
                f"unknown --dtype {self.dtype!r}", "use one of: auto, " + ", ".join(DTYPES)
            )
        if self.device not in DEVICES:
            raise UsageError(
                f"unknown --device {self.device!r}", "use one of: " + ", ".join(DEVICES)
            )


@dataclass(frozen=True)
class MergeResult(StageResult):
    """What the stage produced (or found up to date)."""

    merged_dir: Path
    base_dir: Path
    dtype: str  # torch name: bfloat16, float16, float32
    device: str
    tensors: int
    merged_tensors: int
    replaced_tensors: int
    total_bytes: int
    shard_files: tuple[Path, ...]
    tokenizer_source: str  # "adapter" or "base"
    vocab_size: int | None
    tie_word_embeddings: bool | None
    tokenizer_note: str = ""  # which tokenizer files, and why (merge/tokenizer_files.py)


@dataclass(frozen=True)
class _Prepared:
    """Everything the merge decided before writing."""

    adapter: Adapter
    base_dir: Path
    checkpoint: Checkpoint
    out_dtype: str
    device: Any
    carried: Carried
    plan: MergePlan
    artifact: Artifact
    card: dict[str, Any]
    notes: list[str]


def _adapter_folder(config: MergeConfig) -> Path:
    folder = config.layout.adapter(config.persona)
    if folder.is_dir():
        return folder
    personas = config.layout.personas_with_adapters()
    where = config.layout.adapter_dir
    listing = (
        f"personas with adapters in {where}: {', '.join(personas)}"
        if personas
        else f"{where} holds no <persona>_final_adapter folders"
        if where.is_dir()
        else f"{where} does not exist"
    )
    raise InputNotFoundError(
        f"no adapter for persona {config.persona!r}: {folder} not found ({listing})",
        "check --persona, or point --adapter-dir at the folder holding "
        f"{config.persona}_final_adapter/",
    )


def _out_dtype(config: MergeConfig, checkpoint: Checkpoint) -> str:
    if config.dtype in DTYPES:
        return DTYPES[config.dtype]
    named = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}.get(
        str(checkpoint.torch_dtype)
    )
    if named:
        return named
    floats = [i.dtype for i in checkpoint.tensors.values() if i.dtype in DTYPE_NAMES]
    return max(set(floats), key=floats.count) if floats else "F32"


def _device(name: str) -> Any:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "--device cuda was asked for but no CUDA device is available",
            "use --device cpu (or auto)",
        )
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _same_base(named: str | None, base_model: str, base_dir: Path) -> bool:
    if not named or named == base_model:
        return True
    try:
        if Path(named).expanduser().resolve() == base_dir.resolve():
            return True
    except (OSError, ValueError):  # ValueError: a NUL byte in the adapter's config
        pass
    return Path(named.rstrip("/")).name.lower() == Path(base_model.rstrip("/")).name.lower()


def _inputs(checkpoint: Checkpoint, adapter: Adapter, carried: Carried) -> dict[str, Path]:
    inputs = {f"base/{p.name}": p for p in checkpoint.shard_files}
    inputs.update(carried.read)
    readme = checkpoint.folder / CARD_NAME  # the card reads the base's licence and id there
    if readme.is_file():
        inputs[f"base/{CARD_NAME}"] = readme
    index = checkpoint.folder / "model.safetensors.index.json"
    if index.is_file():
        inputs[f"base/{index.name}"] = index
    inputs["base/config.json"] = checkpoint.folder / "config.json"
    for path in adapter.files():
        inputs[f"adapter/{path.name}"] = path
    for name, path in carried.files.items():
        origin = "adapter" if path.parent == adapter.folder else "base"
        inputs[f"{origin}/{name}"] = path
    return inputs


def _prepare(config: MergeConfig, warnings: list[str]) -> _Prepared:
    adapter = read_adapter(_adapter_folder(config), allow_pickle=config.allow_pickle)
    if config.revision and Path(config.base_model).expanduser().is_dir():
        warnings.append(
            f"--revision {config.revision} ignored: {config.base_model} is a local folder"
        )
    base_dir = resolve_base_model(config.base_model, config.revision)
    checkpoint = read_checkpoint(base_dir)
    out_dtype = _out_dtype(config, checkpoint)
    device = _device(config.device)
    carried = carried_files(base_dir, adapter.folder)
    plan = make_plan(checkpoint, adapter, out_dtype, tensors_equal=make_comparer(adapter))
    card, card_notes = _card_facts(config, base_dir, adapter, carried, out_dtype)
    artifact = Artifact(
        stage=STAGE,
        path=config.layout.merged(config.persona),
        folder=True,
        options={
            "dtype": DTYPE_NAMES[out_dtype],
            "max_shard_bytes": config.max_shard_bytes,
            "format": FORMAT_VERSION,
            "card": {k: card[k] for k in ("display_name", "system", "base_model")},
        },
        inputs=_inputs(checkpoint, adapter, carried),
        protected=(base_dir, adapter.folder),
    )
    return _Prepared(
        adapter, base_dir, checkpoint, out_dtype, device, carried, plan, artifact, card, card_notes
    )


def _card_facts(
    config: MergeConfig, base_dir: Path, adapter: Adapter, carried: Carried, out_dtype: str
) -> tuple[dict[str, Any], list[str]]:
    definition = find_persona(config.persona, user_file=config.personas_file)
    return merged_facts(
        persona=config.persona,
        display_name=definition.display_name,
        system=definition.system,
        base_model=config.base_model,
        base_dir=base_dir,
        adapter_config=adapter.config,
        tokenizer_note=carried.note,
        dtype=DTYPE_NAMES[out_dtype],
        license_files=sorted(n for n in carried.files if n.upper().startswith("LICEN")),
    )


def run(config: MergeConfig, *, progress: Progress | None = None) -> MergeResult:
    """Merge the persona's adapter into the base model; return where and what was written.

    Raises the errors.py classes for bad input, before anything is written. Returns an
    ``up to date`` result without doing the work when the output is complete and was made
    from the same inputs and options, unless ``config.force``.
    """
    started = time.monotonic()
    warnings: list[str] = []
    with persona_lock(config.layout.lock_file(config.persona), on_wait=console.info):
        prep = _prepare(config, warnings)
        prep.artifact.clean_temporaries()  # an interrupted run's, whether or not this one writes
        if prep.artifact.fresh(force=config.force):
            return _result(config, prep, started, Status.UP_TO_DATE, warnings)
        if config.accept_dropped and prep.artifact.dropped_fresh(force=config.force):
            return _result(config, prep, started, Status.UP_TO_DATE, warnings, dropped=True)
        plan, adapter = prep.plan, prep.adapter
        warnings += plan.warnings
        if not _same_base(adapter.base_model_name_or_path, config.base_model, prep.base_dir):
            warnings.append(
                f"the adapter was trained on {adapter.base_model_name_or_path}, merging it "
                f"into {config.base_model}"
            )
        check_tokenizer_fits(
            prep.carried.files, f"{prep.carried.tokenizer_source} folder", plan.vocab_rows
        )
        prep.artifact.check_writable()
        extra_bytes = sum(p.stat().st_size for p in prep.carried.files.values()) + (1 << 20)
        require_free_space(
            prep.artifact.path.parent,
            plan.total_bytes + extra_bytes,
            what="the merged model",
            hint="free some space or pass --output-dir-base on a larger disk",
        )
        for message in warnings:
            console.warn(message)
        console.info(f"merging {adapter.folder} into {prep.base_dir}: {describe(plan)}")
        for note in (prep.carried.note, *prep.notes):
            console.info(f"  {note}")
        _write(config, prep, warnings, progress)
    return _result(config, prep, started, Status.DONE, warnings)


def _write(
    config: MergeConfig, prep: _Prepared, warnings: list[str], progress: Progress | None
) -> None:
    artifact, plan = prep.artifact, prep.plan
    hashing = artifact.hash_inputs()
    tail_hashers: dict[str, TailHasher] = {}
    try:
        with artifact.write() as writing:
            # the shards are hashed while they are written (the gguf stage reuses the hashes)
            for path in shard_files(plan, writing.tmp, config.max_shard_bytes):
                tail_hashers[path.name] = TailHasher(path)
            with console.progress("merging", total=plan.total_bytes, unit="B") as bar:

                def report(done: int, total: int) -> None:
                    bar.update(done)
                    if progress is not None:  # a caller's own callback (library use)
                        progress(done, total)

                written = execute(
                    plan,
                    prep.adapter,
                    writing.tmp,
                    device=prep.device,
                    max_shard_bytes=config.max_shard_bytes,
                    block_bytes=config.block_bytes,
                    progress=report,
                )
            write_config(
                prep.base_dir / "config.json",
                writing.tmp / "config.json",
                plan.config_updates,
                DTYPE_NAMES[prep.out_dtype],
            )
            for name, path in prep.carried.files.items():
                copy_file(path, writing.tmp / name)
            prep.carried.write_generated(writing.tmp)
            card = render_card(prep.card)
            (writing.tmp / CARD_NAME).write_text(card, encoding="utf-8")
            inputs: Mapping[str, FileRecord] = hashing.result()
            writing.record(
                inputs,
                outputs={name: hasher.finish() for name, hasher in tail_hashers.items()},
                extra={
                    "base_model": config.base_model,
                    "base_dir": str(prep.base_dir),
                    "adapter_dir": str(prep.adapter.folder),
                    "device": str(prep.device),
                    "tensors": len(plan.tensors),
                    "merged_tensors": written.merged_tensors,
                    "tokenizer_source": prep.carried.tokenizer_source,
                    "tokenizer_note": prep.carried.note,
                    "card": prep.card,
                    "warnings": warnings,
                },
            )
    except BaseException:
        hashing.cancel()
        for hasher in tail_hashers.values():
            hasher.stop()
        raise


def _result(
    config: MergeConfig,
    prep: _Prepared,
    started: float,
    status: Status,
    warnings: list[str],
    *,
    dropped: bool = False,
) -> MergeResult:
    merged_dir, plan = prep.artifact.path, prep.plan
    tie = (read_json(merged_dir / "config.json") or {}).get("tie_word_embeddings")
    shards = tuple(sorted(merged_dir.glob("*.safetensors")))
    merged_tensors = sum(1 for t in plan.tensors if t.updates)
    dtype = DTYPE_NAMES[prep.out_dtype]
    return MergeResult(
        stage=STAGE,
        persona=config.persona,
        status=status,
        outputs=(merged_dir,),
        figures={
            "tensors": len(plan.tensors),
            "merged_tensors": merged_tensors,
            "bytes": plan.total_bytes,
        },
        warnings=tuple(warnings),
        notes=(prep.carried.note, *prep.notes),
        seconds=time.monotonic() - started,
        detail=f"{merged_tensors} weights merged, {dtype}"
        + (", dropped (--keep)" if dropped else ""),
        merged_dir=merged_dir,
        base_dir=prep.base_dir,
        dtype=dtype,
        device=str(prep.device),
        tensors=len(plan.tensors),
        merged_tensors=merged_tensors,
        replaced_tensors=sum(1 for t in plan.tensors if t.source.origin == "adapter"),
        total_bytes=plan.total_bytes,
        shard_files=shards,
        tokenizer_source=prep.carried.tokenizer_source,
        vocab_size=plan.vocab_rows,
        tie_word_embeddings=tie if isinstance(tie, bool) else None,
        tokenizer_note=prep.carried.note,
    )
