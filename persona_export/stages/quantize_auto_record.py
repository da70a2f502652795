"""What ``quantize --type auto`` measures with and how its record is keyed: the prompts'
token ids, the base model and the bounds (:class:`Context`), the record's artifact
(``gguf_models/<persona>/quant-auto.json``: options and inputs that make it up to date), and
the keys under which a type's figures are cached (:func:`measure_key`, :func:`entry_key`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_export.artifacts import Artifact, sha256_bytes
from persona_export.errors import InputNotFoundError
from persona_export.llamacpp import vendor

if TYPE_CHECKING:
    from persona_export.stages.quantize import QuantizeConfig
    from persona_export.verify.data import Bounds

STAGE = "quantize-auto"
RECORD_FORMAT = 1


@dataclass(frozen=True)
class Context:
    """What every rung is measured with: the merged model, the base, the bounds and the
    prompts' token ids (the verify conversations, the persona's own included)."""

    merged_dir: Path
    base_dir: Path
    bounds: Bounds
    ids: tuple[tuple[int, ...], ...]


def measure_context(config: QuantizeConfig) -> Context:
    """The :class:`Context` of ``config`` (the persona's merged model must exist)."""
    from persona_export.hf.base_model import resolve_base_model
    from persona_export.personas import find_persona
    from persona_export.stages._verify_inputs import base_model
    from persona_export.verify.data import load_bounds, verify_conversations
    from persona_export.verify.memory import merged_dtype
    from persona_export.verify.prompts import build_prompts

    persona, layout = config.persona, config.layout
    merged_dir = layout.merged(persona)
    if not (merged_dir / "config.json").is_file():
        raise InputNotFoundError(
            f"--type auto measures each type against the F16 with the merged model's "
            f"tokenizer, and there is no merged model for {persona} at {merged_dir}",
            f"merge first: persona-export merge --persona {persona}",
        )
    base_dir = resolve_base_model(base_model(config.base_model, merged_dir))
    conversations = verify_conversations(persona, config.prompts_file, config.personas_file)
    system = find_persona(persona, user_file=config.personas_file).system
    prompts, _ = build_prompts(merged_dir, system, conversations)
    bounds = load_bounds(
        merged_dtype=merged_dtype(merged_dir),
        kl_max=config.kl_max,
        retention_min=config.retention_min,
    )
    return Context(merged_dir, base_dir, bounds, tuple(p.ids for p in prompts))


def record_artifact(
    config: QuantizeConfig, source: Path, ctx: Context, ladder: Sequence[str], imatrix: Path | None
) -> Artifact:
    inputs = {"source": source}
    for path in sorted(ctx.base_dir.iterdir()):
        if path.is_file() and not path.name.endswith((".md", ".manifest.json")):
            inputs[f"base/{path.name}"] = path
    if imatrix is not None:
        inputs["imatrix"] = imatrix
    record = config.layout.quant_auto_record(config.persona)
    return Artifact(
        stage=STAGE,
        path=record,
        manifest_file=record,
        options={
            "format": RECORD_FORMAT,
            "ladder": list(ladder),
            "bounds": ctx.bounds.for_types(ladder),
            "prompts_sha256": ids_hash(ctx.ids),
            "hf_dtype": config.hf_dtype,
            "llama_cpp_commit": vendor.commit(),
        },
        inputs=inputs,
    )


def ids_hash(ids: Sequence[Sequence[int]]) -> str:
    return sha256_bytes(json.dumps([list(p) for p in ids]).encode("ascii"))


def measure_key(hashed: Mapping[str, Any], ctx: Context, config: QuantizeConfig) -> str:
    """What a type's figures depend on besides the type and the matrix."""
    key = {
        "inputs": {k: v.sha256 for k, v in sorted(hashed.items()) if k != "imatrix"},
        "prompts": ids_hash(ctx.ids),
        "answer_tokens": ctx.bounds.answer_tokens,
        "prefix_tokens": ctx.bounds.prefix_tokens,
        "hf_dtype": config.hf_dtype,
        "llama_cpp_commit": vendor.commit(),
    }
    return sha256_bytes(json.dumps(key, sort_keys=True).encode("utf-8"))


def entry_key(quant_type: str, hashed: Mapping[str, Any]) -> str:
    imatrix = hashed.get("imatrix")
    return f"{quant_type}@imatrix:{imatrix.sha256[:16]}" if imatrix is not None else quant_type
