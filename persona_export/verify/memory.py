"""Verify's memory preflight: what running the Hugging Face side will need, against what is
available, said before anything is loaded.

The layer-streamed path (:mod:`persona_export.verify.streaming`) holds at once, at most:

* the runtime (Python, torch, transformers, PEFT, the tokenizer): :data:`RUNTIME_BYTES`;
* the largest decoder layer in the compute dtype twice (the next one is read while one
  runs), plus its largest tensor as stored (read before it is converted);
* the adapter's tensors twice in float32 (PEFT loads them, then copies them into its layers);
* two blocks of output-layer rows (:data:`HEAD_BLOCK_BYTES` each, plus the rows as stored);
* the logits: ``logits_held`` engines' worth of positions x vocabulary float32 values (the
  merged model's are kept while PEFT's are computed), plus one prompt's in flight;
* the activations: each prompt's hidden state between layers and one layer's working set.

None of these grows with the number of layers: the need of a 32-layer model is the need of
its widest layer. A model that cannot be streamed is loaded whole (:func:`check_memory`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from persona_export.artifacts import read_json
from persona_export.errors import PersonaExportError
from persona_export.merge.safetensors_io import TensorInfo, read_header

RUNTIME_BYTES = 640 * 2**20  # measured: 0.37 GiB after importing torch/transformers/peft
HEAD_BLOCK_BYTES = 64 * 2**20  # output-layer rows computed at once (verify/streaming.py)
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_STORED = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}
# model.layers.12.mlp..., transformer.h.3.attn..., gpt_neox.layers.0...
_LAYER = re.compile(r"^(?P<stack>(?:.*\.)?(?:layers|h|blocks|layer))\.(?P<index>\d+)\.")
_VOCAB = re.compile(r"(embed_tokens|wte|word_embeddings|embed_in|tok_embeddings|lm_head|embed_out)")


def merged_dtype(merged_dir: Path) -> str:
    """The merged checkpoint's weight dtype, from its config.json (bfloat16 when unsaid)."""
    config = read_json(merged_dir / "config.json") or {}
    value = config.get("dtype") or config.get("torch_dtype") or "bfloat16"
    return str(value)


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where there is none)."""
    try:
        meminfo = Path("/proc/meminfo").read_text(encoding="ascii")
    except OSError:
        return None
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _tensors(folder: Path) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(read_header(path)[0])
    return tensors


@dataclass(frozen=True)
class Need:
    """What a run will hold at its peak, by part (bytes), and the total."""

    parts: Mapping[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        shown = sorted(self.parts.items(), key=lambda kv: -kv[1])
        return ", ".join(f"{name} {size / 2**30:.2f}" for name, size in shown if size >= 2**24)


def _layers(tensors: Mapping[str, TensorInfo], compute: int) -> tuple[int, int]:
    """(largest layer in the compute dtype, its largest tensor as stored) in bytes."""
    layers: dict[tuple[str, str], list[TensorInfo]] = defaultdict(list)
    for name, info in tensors.items():
        m = _LAYER.match(name)
        if m:
            layers[(m["stack"], m["index"])].append(info)
    if not layers:
        return 0, 0
    widest = max(layers.values(), key=lambda infos: sum(i.numel for i in infos))
    return (
        sum(i.numel * (compute if i.dtype in _STORED else 1) for i in widest),
        max(i.nbytes for i in widest),
    )


def _vocab_and_width(tensors: Mapping[str, TensorInfo]) -> tuple[int, int]:
    shapes = [i.shape for n, i in tensors.items() if _VOCAB.search(n) and len(i.shape) == 2]
    if not shapes:
        return 0, 0
    return max(s[0] for s in shapes), max(s[1] for s in shapes)


def streamed_need(
    model_dirs: Iterable[Path],
    *,
    adapter_dir: Path | None,
    positions: int,
    longest: int,
    compute_dtype: str,
    logits_held: int = 2,
) -> Need:
    """The peak of the layer-streamed forward over ``model_dirs`` (run one after the other)
    with ``positions`` token positions in all (``longest`` in the longest prompt) and
    ``logits_held`` engines' logits kept at once (see the module docstring)."""
    compute = _BYTES[compute_dtype]
    layer = stored = vocab = width = 0
    for folder in model_dirs:
        tensors = _tensors(folder)
        lay, sto = _layers(tensors, compute)
        voc, wid = _vocab_and_width(tensors)
        layer, stored, vocab, width = (
            max(layer, lay),
            max(stored, sto),
            max(vocab, voc),
            max(width, wid),
        )
    adapter = 0
    if adapter_dir is not None:
        adapter = 2 * 4 * sum(i.numel for i in _tensors(adapter_dir).values())
    # between layers: each prompt's hidden state; in a layer: about 16 hidden-sized
    # activations of the longest prompt (MLP intermediate, q/k/v) and its attention scores
    activations = positions * width * 4 + 16 * longest * width * 4 + 64 * longest * longest * 4
    return Need(
        {
            "runtime": RUNTIME_BYTES,
            "largest layer": 2 * layer + stored,
            "adapter": adapter,
            "output layer blocks": HEAD_BLOCK_BYTES * 5 // 2 if vocab else 0,
            "logits": (logits_held * positions + longest) * vocab * 4,
            "activations": activations,
        }
    )


def check_memory(merged_dir: Path, compute_dtype: str, available: int | None = None) -> None:
    """Refuse before loading the model in ``merged_dir`` whole (the fallback for a model
    that cannot be streamed) when it would not fit in ``available`` bytes (default: the
    memory available now).

    Measured on a full-size Phi-4-mini (3.8 B parameters in bfloat16) computed in float32:
    19.5 GiB peak, about (4 + 0.7 * 2) bytes per parameter: the float32 copy plus the
    memory-mapped checkpoint while it loads.
    """
    available = available_memory() if available is None else available
    if available is None:
        return
    stored = _BYTES.get(merged_dtype(merged_dir), 2)
    weights = sum(p.stat().st_size for p in merged_dir.glob("*.safetensors"))
    needed = weights / stored * (_BYTES[compute_dtype] + 0.7 * stored) + (1 << 29)
    if needed > available:
        raise PersonaExportError(
            f"verify needs about {needed / 2**30:.1f} GiB of RAM to run the models in "
            f"{compute_dtype}; {available / 2**30:.1f} GiB is available",
            _hint(compute_dtype),
        )


def _hint(compute_dtype: str) -> str:
    if compute_dtype == "float32":
        return (
            "pass --hf-dtype bfloat16 (half the memory; the figures are then looser, see "
            "--peft-nmse-max and --nmse-max), or free memory"
        )
    return "free memory, or verify on a machine with more"


def check_streamed_memory(need: Need, compute_dtype: str, available: int | None = None) -> None:
    """Refuse before loading anything when the layer-streamed run's ``need`` does not fit in
    ``available`` bytes (default: MemAvailable now); the message gives the need by part."""
    available = available_memory() if available is None else available
    if available is None or need.total <= available:
        return
    raise PersonaExportError(
        f"verify needs about {need.total / 2**30:.1f} GiB of RAM to run the models in "
        f"{compute_dtype} one layer at a time ({need.describe()} GiB); "
        f"{available / 2**30:.1f} GiB is available",
        _hint(compute_dtype).replace("), or", "), shorter --prompts, or"),
    )
