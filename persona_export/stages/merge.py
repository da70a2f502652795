"""The merge stage: base model + LoRA adapter -> ``merged_models/<persona>/``.

A streaming merge that gives the weights PEFT's ``merge_and_unload`` gives (bit for bit on
CPU), without loading the model: the base is read tensor by tensor from its safetensors, the
LoRA delta is applied only to targeted weights, and output shards are written as it goes
(:mod:`persona_export.merge`). Around it: the adapter and base are checked before a byte is
written, config.json is carried over (dtype, vocab_size and tie_word_embeddings updated when
they change), generation_config.json, the tokenizer files and chat template are copied byte
for byte (from the adapter folder when it has a tokenizer, else from the base), and a
manifest records the inputs' hashes so an unchanged re-run is skipped. The output is built
in a temporary sibling and renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_export import console
from persona_export.artifacts import (
    DIR_MANIFEST,
    FileRecord,
    Manifest,
    atomic_dir,
    is_fresh,
    record_file,
    write_json_atomic,
)
from persona_export.artifacts.hashing import (
    BackgroundRecords,
    TailHasher,
    known_records,
    list_files,
)
from persona_export.errors import (
    InputNotFoundError,
    InvalidInputError,
    PersonaExportError,
    UsageError,
)
from persona_export.hf.base_model import resolve_base_model
from persona_export.layout import DEFAULT_BASE_MODEL, Layout
from persona_export.merge.adapter import Adapter, read_adapter
from persona_export.merge.checkpoint import Checkpoint, read_checkpoint
from persona_export.merge.execute import execute, make_comparer, shard_files
from persona_export.merge.plan import MergePlan, describe, make_plan

STAGE = "merge"
FORMAT_VERSION = 1  # bump when the output for the same inputs and options changes
DTYPES = {"bf16": "BF16", "f16": "F16", "f32": "F32"}
DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_SHARD_BYTES = 5_000_000_000
DEFAULT_BLOCK_BYTES = 4 * 1024 * 1024  # a block of float32 rows stays in cache

# Tokenizer files are taken as a set, all from the adapter folder or all from the base.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
)
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
# Other base files carried over as they are.
BASE_EXTRA_PATTERNS = ("generation_config.json", "LICENSE*", "NOTICE*", "*.py")


@dataclass(frozen=True)
class MergeConfig:
    """What to merge and how.

    ``base_model``: a local folder or a Hugging Face hub id (``revision`` for hub ids).
    ``dtype``: ``auto`` (the base's config dtype), ``bf16``, ``f16`` or ``f32``.
    ``device``: where the LoRA products are computed (``auto``: CUDA when available).
    ``allow_pickle``: accept an ``adapter_model.bin`` (loaded with ``weights_only=True``).
    ``max_shard_bytes`` / ``block_bytes``: output shard size limit and the working block of
    rows merged at once (memory versus overhead; the result does not depend on it).
    """

    persona: str
    layout: Layout = Layout()
    base_model: str = DEFAULT_BASE_MODEL
    dtype: str = "auto"
    revision: str | None = None
    device: str = "auto"
    force: bool = False
    allow_pickle: bool = False
    max_shard_bytes: int = DEFAULT_SHARD_BYTES
    block_bytes: int = DEFAULT_BLOCK_BYTES


@dataclass(frozen=True)
class MergeResult:
    """What the stage produced (or found up to date)."""

    merged_dir: Path
    skipped: bool
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
    seconds: float
    warnings: tuple[str, ...] = field(default_factory=tuple)


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
    if config.dtype != "auto":
        raise UsageError(
            f"unknown --dtype {config.dtype!r}", "use one of: auto, " + ", ".join(DTYPES)
        )
    named = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}.get(
        str(checkpoint.torch_dtype)
    )
    if named:
        return named
    floats = [i.dtype for i in checkpoint.tensors.values() if i.dtype in DTYPE_NAMES]
    return max(set(floats), key=floats.count) if floats else "F32"


def _device(name: str) -> Any:
    import torch

    if name not in DEVICES:
        raise UsageError(f"unknown --device {name!r}", "use one of: " + ", ".join(DEVICES))
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "--device cuda was asked for but no CUDA device is available",
            "use --device cpu (or auto)",
        )
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "vocab.json"))


def _carried_files(base_dir: Path, adapter: Adapter) -> tuple[dict[str, Path], str]:
    """Output file name -> source path of every non-weight file, and the tokenizer source."""
    files: dict[str, Path] = {}
    for pattern in BASE_EXTRA_PATTERNS:
        for path in sorted(base_dir.glob(pattern)):
            if path.is_file():
                files[path.name] = path
    tokenizer_dir = adapter.folder if _has_tokenizer(adapter.folder) else base_dir
    for name in TOKENIZER_FILES + TEMPLATE_FILES:
        if (tokenizer_dir / name).is_file():
            files[name] = tokenizer_dir / name
    if tokenizer_dir != base_dir and not any(n in files for n in TEMPLATE_FILES):
        # the adapter's tokenizer has no template file; keep the base's unless the adapter's
        # tokenizer_config.json carries one inline (which it would then override)
        inline = _read_json(tokenizer_dir / "tokenizer_config.json").get("chat_template")
        if not inline:
            for name in TEMPLATE_FILES:
                if (base_dir / name).is_file():
                    files[name] = base_dir / name
    return files, "adapter" if tokenizer_dir == adapter.folder else "base"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _tokenizer_size(files: Mapping[str, Path]) -> int | None:
    """Number of token ids the tokenizer uses (from tokenizer.json), or None if unknown."""
    if "tokenizer.json" not in files:
        return None
    doc = _read_json(files["tokenizer.json"])
    ids = [v for v in (doc.get("model") or {}).get("vocab", {}).values() if isinstance(v, int)]
    if isinstance((doc.get("model") or {}).get("vocab"), list):  # unigram: [piece, score]
        ids = [len(doc["model"]["vocab"]) - 1]
    ids += [t["id"] for t in doc.get("added_tokens", []) if isinstance(t.get("id"), int)]
    return max(ids) + 1 if ids else None


def _check_tokenizer_fits(files: Mapping[str, Path], source: str, plan: MergePlan) -> None:
    size = _tokenizer_size(files)
    if size is not None and plan.vocab_rows is not None and size > plan.vocab_rows:
        raise InvalidInputError(
            f"the {source}'s tokenizer uses {size} token ids but the merged embeddings have "
            f"{plan.vocab_rows} rows",
            "the adapter added tokens without saving its resized embeddings: save it with "
            "save_embedding_layers=True",
        )


def _same_base(named: str | None, base_model: str, base_dir: Path) -> bool:
    if not named:
        return True
    if named == base_model:
        return True
    try:
        if Path(named).expanduser().resolve() == base_dir.resolve():
            return True
    except OSError:
        pass
    return Path(named.rstrip("/")).name.lower() == Path(base_model.rstrip("/")).name.lower()


def _check_disk(target_parent: Path, needed: int) -> None:
    probe = target_parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise PersonaExportError(
            f"not enough disk space for the merged model: it needs {needed / 1e9:.1f} GB, "
            f"{probe} has {free / 1e9:.1f} GB free",
            "free some space or pass --output-dir-base on a larger disk",
        )


def _remove_stale_partials(parent: Path, name: str) -> None:
    """Remove temporary folders of ``parent/name`` whose writer process is gone."""
    if not parent.is_dir():
        return
    for leftover in parent.glob(f".{name}.partial-*"):
        pid_text = leftover.name.rsplit(".partial-", 1)[1].split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid():
            try:
                os.kill(int(pid_text), 0)
                continue  # another merge of the same persona is running
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink()


def _write_config(
    base_config_path: Path, out_path: Path, updates: Mapping[str, Any], dtype_name: str
) -> None:
    """config.json: the base's bytes when nothing changes, else the base's keys in order with
    the dtype, vocab_size and tie_word_embeddings updates."""
    data = json.loads(base_config_path.read_text(encoding="utf-8"))
    changes = dict(updates)
    dtype_keys = [k for k in ("torch_dtype", "dtype") if k in data] or ["torch_dtype"]
    for key in dtype_keys:
        changes[key] = dtype_name
    if all(key in data and data[key] == value for key, value in changes.items()):
        shutil.copyfile(base_config_path, out_path)
        return
    data.update(changes)
    out_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _inputs(
    checkpoint: Checkpoint, adapter: Adapter, carried: Mapping[str, Path]
) -> dict[str, Path]:
    inputs = {f"base/{p.name}": p for p in checkpoint.shard_files}
    index = checkpoint.folder / "model.safetensors.index.json"
    if index.is_file():
        inputs[f"base/{index.name}"] = index
    inputs["base/config.json"] = checkpoint.folder / "config.json"
    for path in adapter.files():
        inputs[f"adapter/{path.name}"] = path
    for name, path in carried.items():
        origin = "adapter" if path.parent == adapter.folder else "base"
        inputs[f"{origin}/{name}"] = path
    return inputs


def merge(
    config: MergeConfig, *, progress: Callable[[int, int], None] | None = None
) -> MergeResult:
    """Merge the persona's adapter into the base model; return where and what was written.

    Raises the errors.py classes for bad input, before anything is written. Skips the work
    (``skipped=True``) when the output is complete and was made from the same inputs and
    options, unless ``config.force``.
    """
    started = time.monotonic()
    merged_dir = config.layout.merged(config.persona)
    adapter = read_adapter(_adapter_folder(config), allow_pickle=config.allow_pickle)
    if config.revision and Path(config.base_model).expanduser().is_dir():
        console.warn(f"--revision {config.revision} ignored: {config.base_model} is a local folder")
    base_dir = resolve_base_model(config.base_model, config.revision)
    checkpoint = read_checkpoint(base_dir)
    out_dtype = _out_dtype(config, checkpoint)
    device = _device(config.device)
    carried, tokenizer_source = _carried_files(base_dir, adapter)
    inputs = _inputs(checkpoint, adapter, carried)
    options = {
        "dtype": DTYPE_NAMES[out_dtype],
        "max_shard_bytes": config.max_shard_bytes,
        "format": FORMAT_VERSION,
    }
    manifest_file = merged_dir / DIR_MANIFEST

    plan = make_plan(checkpoint, adapter, out_dtype, tensors_equal=make_comparer(adapter))
    if (
        not config.force
        and manifest_file.is_file()
        and is_fresh(manifest_file, options=options, inputs=inputs, outputs=list_files(merged_dir))
    ):
        return _result(
            config,
            merged_dir,
            base_dir,
            out_dtype,
            device,
            plan,
            tokenizer_source,
            started,
            skipped=True,
        )
    warnings = list(plan.warnings)
    if not _same_base(adapter.base_model_name_or_path, config.base_model, base_dir):
        warnings.append(
            f"the adapter was trained on {adapter.base_model_name_or_path}, merging it into "
            f"{config.base_model}"
        )
    _check_tokenizer_fits(carried, f"{tokenizer_source} folder", plan)
    extra_bytes = sum(p.stat().st_size for p in carried.values()) + (1 << 20)
    _check_disk(merged_dir.parent, plan.total_bytes + extra_bytes)
    for message in warnings:
        console.warn(message)
    console.info(f"merging {adapter.folder} into {base_dir}: {describe(plan)}")

    known = known_records(manifest_file, "inputs")
    hashing = BackgroundRecords(inputs, known)
    tail_hashers: dict[str, TailHasher] = {}
    _remove_stale_partials(merged_dir.parent, merged_dir.name)
    try:
        with atomic_dir(merged_dir) as tmp:
            # the shards are hashed while they are written (the gguf stage reuses the hashes)
            for path in shard_files(plan, tmp, config.max_shard_bytes):
                tail_hashers[path.name] = TailHasher(path)
            written = execute(
                plan,
                adapter,
                tmp,
                device=device,
                max_shard_bytes=config.max_shard_bytes,
                block_bytes=config.block_bytes,
                progress=progress,
            )
            _write_config(
                base_dir / "config.json",
                tmp / "config.json",
                plan.config_updates,
                DTYPE_NAMES[out_dtype],
            )
            for name, path in carried.items():
                shutil.copyfile(path, tmp / name)
            input_records: dict[str, FileRecord] = hashing.result()
            outputs = {name: hasher.finish() for name, hasher in tail_hashers.items()}
            for name, path in list_files(tmp).items():
                if name not in outputs:
                    outputs[name] = record_file(path)
            manifest = Manifest(
                stage=STAGE,
                options=options,
                inputs=input_records,
                outputs=outputs,
                seconds=time.monotonic() - started,
                extra={
                    "base_model": config.base_model,
                    "base_dir": str(base_dir),
                    "adapter_dir": str(adapter.folder),
                    "device": str(device),
                    "tensors": len(plan.tensors),
                    "merged_tensors": written.merged_tensors,
                    "tokenizer_source": tokenizer_source,
                    "warnings": warnings,
                },
            )
            write_json_atomic(tmp / DIR_MANIFEST, manifest.to_json())
    except BaseException:
        hashing.cancel()
        for hasher in tail_hashers.values():
            hasher.stop()
        raise
    return _result(
        config,
        merged_dir,
        base_dir,
        out_dtype,
        device,
        plan,
        tokenizer_source,
        started,
        skipped=False,
        warnings=tuple(warnings),
    )


def _result(
    config: MergeConfig,
    merged_dir: Path,
    base_dir: Path,
    out_dtype: str,
    device: Any,
    plan: MergePlan,
    tokenizer_source: str,
    started: float,
    *,
    skipped: bool,
    warnings: tuple[str, ...] = (),
) -> MergeResult:
    merged_config = _read_json(merged_dir / "config.json")
    tie = merged_config.get("tie_word_embeddings")
    return MergeResult(
        merged_dir=merged_dir,
        skipped=skipped,
        base_dir=base_dir,
        dtype=DTYPE_NAMES[out_dtype],
        device=str(device),
        tensors=len(plan.tensors),
        merged_tensors=sum(1 for t in plan.tensors if t.updates),
        replaced_tensors=sum(1 for t in plan.tensors if t.source.origin == "adapter"),
        total_bytes=plan.total_bytes,
        shard_files=tuple(sorted(merged_dir.glob("*.safetensors"))),
        tokenizer_source=tokenizer_source,
        vocab_size=plan.vocab_rows,
        tie_word_embeddings=tie if isinstance(tie, bool) else None,
        seconds=time.monotonic() - started,
        warnings=warnings,
    )
