"""Match an adapter to a base checkpoint and decide every output tensor before writing one.

``make_plan`` is the preflight: each LoRA module must name a base weight whose shape fits
the adapter's matrices, each whole-tensor replacement must name a base tensor of a
compatible shape, and tied embeddings stay tied unless the adapter really gives the output
layer different weights. The result lists every output tensor with its source and the LoRA
updates to apply, so the writer can lay out the shards up front.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from persona_export.errors import InvalidInputError
from persona_export.merge.adapter import Adapter, LoraModule
from persona_export.merge.adapter_config import ALL_LINEAR, targets_without_weights
from persona_export.merge.checkpoint import Checkpoint
from persona_export.merge.safetensors_io import FLOAT_DTYPES, OutputTensor, TensorInfo

# transformers models whose projections are Conv1D ([in, out] weights, fan_in_fan_out).
CONV1D_MODEL_TYPES = frozenset({"gpt2", "openai-gpt", "decision_transformer", "imagegpt", "clvp"})
OUTPUT_EMBEDDING_NAMES = ("lm_head.weight", "embed_out.weight")
_INPUT_EMBEDDING_RE = re.compile(
    r"(^|\.)(embed_tokens|wte|word_embeddings|embed_in|tok_embeddings)\.weight$"
)
_SHAPE_HINT = (
    "the adapter was trained on a different base model: pass that one with --base-model-id "
    "(its adapter_config.json names it in base_model_name_or_path)"
)


@dataclass(frozen=True)
class Source:
    """Where an output tensor's starting value comes from: a base or an adapter tensor."""

    origin: str  # "base" or "adapter"
    name: str
    dtype: str
    shape: tuple[int, ...]
    info: TensorInfo | None  # safetensors location (None for a pickled adapter tensor)


@dataclass(frozen=True)
class LoraUpdate:
    """One LoRA module merged into one output tensor."""

    module: LoraModule
    fan_in_fan_out: bool


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: what it is, where it starts from, what is merged into it."""

    out: OutputTensor
    source: Source
    updates: tuple[LoraUpdate, ...] = ()
    bias_updates: tuple[LoraUpdate, ...] = ()


@dataclass(frozen=True)
class MergePlan:
    """Every output tensor in order, plus the config.json changes and warnings."""

    tensors: tuple[PlannedTensor, ...]
    config_updates: Mapping[str, Any]
    warnings: tuple[str, ...]
    vocab_rows: int | None

    @property
    def total_bytes(self) -> int:
        return sum(t.out.nbytes for t in self.tensors)


@dataclass
class _Draft:
    source: Source
    updates: list[LoraUpdate] = field(default_factory=list)
    bias_updates: list[LoraUpdate] = field(default_factory=list)


def input_embedding_name(names: Sequence[str]) -> str | None:
    """The checkpoint name of the input embedding (``model.embed_tokens.weight`` etc.)."""
    found = [n for n in names if _INPUT_EMBEDDING_RE.search(n)]
    return found[0] if found else None


def _resolve(name: str, available: Mapping[str, Any]) -> str | None:
    """``name`` as the checkpoint spells it: itself, or without a leading model prefix
    (checkpoints saved from the bare base model, e.g. GPT-2's ``h.0...``)."""
    if name in available:
        return name
    if "." in name:
        stripped = name.split(".", 1)[1]
        if stripped in available:
            return stripped
    return None


def _adapter_source(adapter: Adapter, key: str) -> Source:
    tensors = adapter.tensors
    info = tensors.infos.get(key) if tensors.infos else None
    return Source("adapter", key, tensors.dtype(key), tensors.shape(key), info)


def _base_source(info: TensorInfo) -> Source:
    return Source("base", info.name, info.dtype, info.shape, info)


def _is_output_embedding(name: str) -> bool:
    return name in OUTPUT_EMBEDDING_NAMES or name.split(".", 1)[-1] in OUTPUT_EMBEDDING_NAMES


def _orientation(
    shape: tuple[int, ...],
    a: tuple[int, ...],
    b: tuple[int, ...],
    model_type: str,
    is_output: bool,
) -> bool | None:
    """fan_in_fan_out for a Linear/Conv1D LoRA on a weight of ``shape``, or None if it fits
    neither way. A square weight is Conv1D exactly when the architecture uses Conv1D."""
    if len(shape) != 2:
        return None
    plain = shape == (b[0], a[1])
    transposed = shape == (a[1], b[0])
    if plain and transposed:
        return model_type in CONV1D_MODEL_TYPES and not is_output
    if plain:
        return False
    if transposed:
        return True
    return None


def make_plan(
    checkpoint: Checkpoint,
    adapter: Adapter,
    out_dtype: str,
    *,
    tensors_equal: Any,
) -> MergePlan:
    """Check ``adapter`` against ``checkpoint`` and plan the output (dtype ``out_dtype``, a
    safetensors name). ``tensors_equal(a, b)`` compares two :class:`Source` tensors' values
    (used to tell whether an adapter's lm_head is just the tied embedding)."""
    warnings: list[str] = []
    config = checkpoint.config
    base = checkpoint.tensors
    drafts: dict[str, _Draft] = {name: _Draft(_base_source(info)) for name, info in base.items()}
    embed_name = input_embedding_name(list(base))
    tied = bool(config.get("tie_word_embeddings", True)) and not any(
        n in base for n in OUTPUT_EMBEDDING_NAMES
    )
    config_updates: dict[str, Any] = {}

    # 1. whole-tensor replacements (modules_to_save, resized embeddings)
    tied_output = _replace_tensors(adapter, base, drafts, embed_name if tied else None)

    # 2. tied embeddings: an adapter lm_head equal to the (new) input embedding keeps the tie
    if tied_output is not None and embed_name is not None:
        target, source = tied_output
        if not tensors_equal(source, drafts[embed_name].source):  # else: saved twice, tied
            drafts["lm_head.weight"] = _Draft(source)
            config_updates["tie_word_embeddings"] = False
            tied = False
            warnings.append(
                f"the adapter gives {target} weights that differ from {embed_name}: writing a "
                "separate lm_head.weight and setting tie_word_embeddings to false"
            )

    # 3. LoRA modules, in checkpoint order of their weights (embedding before lm_head)
    tied_embedding = embed_name if tied else None
    targets = {m: _target_of(adapter, m, drafts, tied_embedding) for m in adapter.modules}
    order = {name: k for k, name in enumerate(drafts)}
    for module_name in sorted(
        adapter.modules, key=lambda m: (order[targets[m]], m.endswith("lm_head"), m)
    ):
        _add_update(
            adapter, module_name, targets[module_name], drafts, str(config.get("model_type", ""))
        )
    warnings += _missing_targets(adapter, base, targets, tied)

    # 4. vocabulary: rows of the (possibly replaced) embeddings
    vocab_rows = _vocab_rows(config, drafts, embed_name, config_updates)

    planned = []
    for name, draft in drafts.items():
        dtype = out_dtype if draft.source.dtype in FLOAT_DTYPES else draft.source.dtype
        planned.append(
            PlannedTensor(
                OutputTensor(name, dtype, draft.source.shape),
                draft.source,
                tuple(draft.updates),
                tuple(draft.bias_updates),
            )
        )
    return MergePlan(tuple(planned), config_updates, tuple(warnings), vocab_rows)


def _replace_tensors(
    adapter: Adapter,
    base: Mapping[str, TensorInfo],
    drafts: dict[str, _Draft],
    tied_embedding: str | None,
) -> tuple[str, Source] | None:
    """Put the adapter's whole tensors (modules_to_save, resized embeddings) in ``drafts``;
    returns the output embedding it gives for a tied model (``tied_embedding``: the input
    embedding's name, None when untied), which step 2 of :func:`make_plan` judges."""
    adapter_path = adapter.tensors.path
    tied_output: tuple[str, Source] | None = None
    for target, key in adapter.replacements.items():
        source = _adapter_source(adapter, key)
        resolved = _resolve(target, base)
        if resolved is None:
            if tied_embedding and _is_output_embedding(target):
                tied_output = (target, source)
                continue
            raise InvalidInputError(
                f"{adapter_path}: the adapter replaces {target}, which the base model does not "
                "have",
                _SHAPE_HINT,
            )
        base_shape = base[resolved].shape
        is_embedding = resolved == input_embedding_name(list(base)) or (
            resolved in OUTPUT_EMBEDDING_NAMES
        )
        fits = source.shape == base_shape or (
            is_embedding and len(base_shape) == 2 and source.shape[1:] == base_shape[1:]
        )
        if not fits:
            raise InvalidInputError(
                f"{adapter_path}: {key} has shape {list(source.shape)} but the base model's "
                f"{resolved} has {list(base_shape)}",
                _SHAPE_HINT,
            )
        drafts[resolved] = _Draft(source)
    return tied_output


def _target_of(
    adapter: Adapter, module_name: str, drafts: Mapping[str, _Draft], tied_embedding: str | None
) -> str:
    """The tensor a LoRA module updates (a tied output layer: the input embedding, whose
    storage it shares)."""
    resolved = _resolve(f"{module_name}.weight", drafts)
    if resolved is None and tied_embedding and _is_output_embedding(f"{module_name}.weight"):
        return tied_embedding
    if resolved is None:
        raise InvalidInputError(
            f"{adapter.tensors.path}: the adapter targets {module_name}, which the base model "
            f"does not have (no tensor {module_name}.weight)",
            _SHAPE_HINT,
        )
    return resolved


def _add_update(
    adapter: Adapter, module_name: str, target: str, drafts: dict[str, _Draft], model_type: str
) -> None:
    """Check one LoRA module against the weight it updates and add its update (and its
    lora_B bias's) to ``drafts``."""
    adapter_path = adapter.tensors.path
    module = adapter.modules[module_name]
    draft = drafts[target]
    shape = draft.source.shape
    a = adapter.tensors.shape(module.lora_a)
    b = adapter.tensors.shape(module.lora_b)
    if module.kind == "embedding":
        fan_in_fan_out: bool | None = False if shape == (a[1], b[0]) else None
        what = f"lora_embedding_A {list(a)} / lora_embedding_B {list(b)}"
    else:
        is_output = _is_output_embedding(f"{module_name}.weight")
        fan_in_fan_out = _orientation(shape, a, b, model_type, is_output)
        what = f"lora_A {list(a)} / lora_B {list(b)}"
    if fan_in_fan_out is None:
        raise InvalidInputError(
            f"adapter does not fit the base model: {module_name} has {what} but the base "
            f"weight {target} is {list(shape)}",
            _SHAPE_HINT,
        )
    if draft.source.dtype not in FLOAT_DTYPES:
        raise InvalidInputError(
            f"base weight {target} is {draft.source.dtype}, not a float type; a LoRA cannot be "
            "merged into quantized weights",
            "merge into the unquantized base model",
        )
    out_features = b[0]
    if module.magnitude is not None:
        magnitude_shape = adapter.tensors.shape(module.magnitude)
        if magnitude_shape != (out_features,):
            raise InvalidInputError(
                f"{adapter_path}: {module.magnitude} has shape {list(magnitude_shape)}, "
                f"expected [{out_features}]",
                _SHAPE_HINT,
            )
    update = LoraUpdate(module, fan_in_fan_out)
    draft.updates.append(update)
    if module.lora_bias is not None:
        bias_name = _resolve(f"{module_name}.bias", drafts)
        if bias_name is None:
            raise InvalidInputError(
                f"{adapter_path}: the adapter has a lora_B bias for {module_name} but the base "
                "layer has no bias",
                "such an adapter cannot be merged (PEFT refuses it too)",
            )
        drafts[bias_name].bias_updates.append(update)


def _vocab_rows(
    config: Mapping[str, Any],
    drafts: Mapping[str, _Draft],
    embed_name: str | None,
    config_updates: dict[str, Any],
) -> int | None:
    """Rows of the (possibly replaced) embeddings, which must agree; ``vocab_size`` in
    ``config_updates`` when the config says otherwise."""
    if embed_name is None:
        return None
    vocab_rows = drafts[embed_name].source.shape[0]
    for out_name in OUTPUT_EMBEDDING_NAMES:
        if out_name in drafts and drafts[out_name].source.shape[0] != vocab_rows:
            raise InvalidInputError(
                f"{embed_name} has {vocab_rows} rows but {out_name} has "
                f"{drafts[out_name].source.shape[0]}: the adapter resized one embedding "
                "and not the other",
                "save the adapter with save_embedding_layers=True so it carries both",
            )
    if config.get("vocab_size") is not None and config["vocab_size"] != vocab_rows:
        config_updates["vocab_size"] = vocab_rows
    return vocab_rows


def _missing_targets(
    adapter: Adapter, base: Mapping[str, TensorInfo], targets: Mapping[str, str], tied: bool
) -> list[str]:
    """A warning when target_modules selects weights the adapter has no LoRA for (PEFT
    warns about "missing adapter keys" and leaves them unchanged too)."""
    if str(adapter.config.get("target_modules")).lower() == ALL_LINEAR:
        return []  # every linear layer: which ones have no LoRA is not a sign of a mistake
    # The base's module names as PEFT sees them (a checkpoint saved from the bare model
    # lacks the leading prefix the adapter's names have; see _resolve).
    prefix = ""
    for module, target in targets.items():
        if "." in module and target == f"{module}.weight".split(".", 1)[1]:
            prefix = module.split(".", 1)[0] + "."
            break
    names = [
        prefix + name[: -len(".weight")]
        for name, info in base.items()
        if name.endswith(".weight") and len(info.shape) == 2
    ]
    if tied and not any(_is_output_embedding(f"{n}.weight") for n in names):
        names.append("lm_head")  # the tied output layer is a module of its own in PEFT's model
    missing = targets_without_weights(adapter.config, names, adapter.modules)
    if not missing:
        return []
    shown = ", ".join(missing[:2]) + (f" and {len(missing) - 2} more" if missing[2:] else "")
    return [
        f"target_modules {adapter.config.get('target_modules')!r} selects {shown}, which the "
        "adapter has no LoRA weights for: they are merged unchanged (PEFT warns about missing "
        "adapter keys and leaves them unchanged as well)"
    ]


def describe(plan: MergePlan) -> str:
    """A one-line summary: tensors, merged weights, replacements, size."""
    merged = sum(1 for t in plan.tensors if t.updates)
    replaced = sum(1 for t in plan.tensors if t.source.origin == "adapter")
    size = plan.total_bytes / 1e9
    return (
        f"{len(plan.tensors)} tensors, {merged} with LoRA merged, {replaced} replaced by the "
        f"adapter, {size:.2f} GB"
    )
