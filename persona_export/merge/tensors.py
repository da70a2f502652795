"""The LoRA merge arithmetic on torch tensors, done as PEFT does it, one block at a time.

PEFT's ``merge_and_unload`` (peft 0.21, ``tuners/lora/layer.py`` and ``variants.py``) on a
model loaded in dtype ``D``:

* Linear: ``delta = transpose(B @ A, fan_in_fan_out) * scaling`` in float32 (adapter weights
  are upcast to float32 on load), then ``W += delta`` in place: float32(W) + delta, rounded
  once to ``D``.
* Embedding: ``delta = (B @ A).T * scaling`` in float32, rounded to ``D`` *before*
  ``W += delta``.
* DoRA (Linear): ``norm = ||W + delta||`` per output row in float32, then
  ``W = (magnitude / norm) * (W + delta)`` rounded to ``D``.

Here the same expressions run on blocks of at least :data:`MIN_BLOCK_ROWS` output rows, so a
block's working memory stays small; each element's value does not depend on the blocking
(a rank-``r`` dot product per element), which the tests check against PEFT bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Matrix products with fewer rows take other BLAS code paths whose rounding may differ.
MIN_BLOCK_ROWS = 64

_TORCH_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype name (``BF16`` -> ``torch.bfloat16``)."""
    import torch

    dtype: torch.dtype = getattr(torch, _TORCH_NAMES[name])
    return dtype


def safetensors_dtype(dtype: Any) -> str:
    """The safetensors name of a torch dtype (``torch.bfloat16`` -> ``BF16``)."""
    wanted = str(dtype).removeprefix("torch.")
    for name, torch_name in _TORCH_NAMES.items():
        if torch_name == wanted:
            return name
    raise ValueError(f"no safetensors dtype for {dtype}")


def row_blocks(rows: int, block_rows: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` row ranges covering ``rows``, each at least MIN_BLOCK_ROWS long
    (unless the whole tensor is shorter): a short tail joins the block before it."""
    block_rows = max(block_rows, MIN_BLOCK_ROWS)
    start = 0
    while start < rows:
        stop = min(rows, start + block_rows)
        if rows - stop < MIN_BLOCK_ROWS:
            stop = rows
        yield start, stop
        start = stop


@dataclass(frozen=True)
class LoraOp:
    """One adapter's change to one weight, with its tensors already on the compute device.

    ``a``: [r, in] (embedding: [r, num_embeddings]), ``b``: [out, r] (embedding: [dim, r]),
    both float32; ``magnitude``: DoRA's per-output-row vector (float32) or None; ``bias``:
    lora_B's bias (float32) or None.
    """

    kind: str  # "linear" or "embedding"
    a: torch.Tensor
    b: torch.Tensor
    scaling: float
    fan_in_fan_out: bool = False
    magnitude: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    def delta_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of this op's float32 delta, laid out like the weight."""
        if self.kind == "embedding":
            return (self.b @ self.a[:, start:stop].contiguous()).T * self.scaling
        if self.fan_in_fan_out:  # weight is [in, out] (transformers' Conv1D)
            return (self.b @ self.a[:, start:stop].contiguous()).T * self.scaling
        return (self.b[start:stop] @ self.a).mul_(self.scaling)


def _apply_block(block: torch.Tensor, op: LoraOp, start: int, stop: int) -> torch.Tensor:
    """``block`` (rows start:stop of the weight, in the output dtype) with ``op`` merged.

    The float32 delta buffer is reused in place: ``delta + W`` equals PEFT's ``W + delta``
    (IEEE addition is commutative), and it saves a float32 copy of the block.
    """
    delta = op.delta_rows(start, stop)
    if op.kind == "embedding":
        return block + delta.to(block.dtype)
    combined = delta.add_(block)
    if op.magnitude is not None:  # DoRA, rows are output features (fan_in_fan_out=False)
        norm = _row_norm(combined)
        factor = op.magnitude[start:stop] / norm
        combined.mul_(factor.view(-1, 1))
    return combined.to(block.dtype)


def _row_norm(matrix: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.linalg.norm(matrix, dim=1).to(matrix.dtype)


def merge_dora_fan_in_fan_out(weight: torch.Tensor, op: LoraOp) -> torch.Tensor:
    """DoRA on a transposed ([in, out]) weight: needs whole columns, so no blocking."""
    delta = (op.b @ op.a).T * op.scaling
    combined = weight.float() + delta
    norm = _row_norm(combined.T)
    assert op.magnitude is not None
    factor = (op.magnitude / norm).view(1, -1)
    return (factor * combined).to(weight.dtype)


def merge_blocks(
    weight: torch.Tensor,
    ops: Sequence[LoraOp],
    out_dtype: torch.dtype,
    *,
    block_rows: int,
    device: torch.device,
    emit: Callable[[torch.Tensor], None],
) -> None:
    """Merge ``ops`` (in order) into ``weight`` and hand the result to ``emit`` block by block.

    ``weight`` is the base tensor as stored (any float dtype, CPU); it is first cast to
    ``out_dtype`` (the dtype the reference model is loaded in). ``emit`` gets contiguous CPU
    tensors of ``out_dtype`` covering the rows in order.
    """
    if any(op.magnitude is not None and op.fan_in_fan_out for op in ops):
        merged = weight.to(device=device, dtype=out_dtype)
        for op in ops:
            if op.magnitude is not None and op.fan_in_fan_out:
                merged = merge_dora_fan_in_fan_out(merged, op)
            else:
                merged = _apply_block(merged, op, 0, merged.shape[0])
        emit(merged.cpu().contiguous())
        return
    for start, stop in row_blocks(weight.shape[0], block_rows):
        block = weight[start:stop].to(device=device, dtype=out_dtype)
        for op in ops:
            block = _apply_block(block, op, start, stop)
        emit(block.cpu().contiguous())


def merge_bias(bias: torch.Tensor, ops: Sequence[LoraOp], out_dtype: torch.dtype) -> torch.Tensor:
    """A base bias with each op's lora_B bias merged: ``bias += lora_bias * scaling``."""
    merged = bias.to(out_dtype)
    for op in ops:
        if op.bias is not None:
            merged = (merged.float() + op.bias.cpu() * op.scaling).to(out_dtype)
    return merged
