"""Helpers for the merge tests: a project folder around an adapter, PEFT's own merge as the
reference, and tensor-by-tensor comparison."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from persona_export.layout import Layout
from persona_export.stages.merge import MergeConfig, MergeResult
from persona_export.stages.merge import run as merge
from tests.ggufkit import project_layout

PERSONA = "cap"
# Tiny blocks, so that even tiny weights are merged in several row blocks.
SMALL_BLOCK = 4096


def make_project(root: Path, adapter: Path, persona: str = PERSONA) -> Layout:
    """``root/trained_adapters/<persona>_final_adapter`` = a copy of ``adapter``."""
    layout = project_layout(root)
    shutil.copytree(adapter, layout.adapter(persona))
    return layout


def run_merge(layout: Layout, base: Path, **options: Any) -> MergeResult:
    """Our merge on CPU with tiny blocks (``options`` override MergeConfig fields)."""
    fields: dict[str, Any] = {"device": "cpu", "block_bytes": SMALL_BLOCK, **options}
    return merge(MergeConfig(PERSONA, layout=layout, base_model=str(base), **fields))


def torch_dtype(name: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[name]


def peft_merged(base: Path, adapter: Path, dtype: str, device: str = "cpu") -> Any:
    """PEFT's reference: base loaded in ``dtype`` (on ``device``), embeddings resized to the
    adapter's saved ones (as a user must before loading such an adapter),
    ``merge_and_unload()``."""
    import transformers
    from peft import PeftModel
    from safetensors import safe_open

    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype(dtype))
    model = model.to(device)
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as fh:
        rows = [
            fh.get_slice(k).get_shape()[0]
            for k in fh.keys()  # noqa: SIM118 (safe_open is not a mapping)
            if k.endswith(("embed_tokens.weight", "embed_tokens.base_layer.weight"))
        ]
    if rows and rows[0] != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(rows[0], mean_resizing=False)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.eval()
    return merged


def load_tensors(folder: Path) -> dict[str, Any]:
    """Every tensor of the safetensors files in ``folder``."""
    from safetensors.torch import load_file

    tensors: dict[str, Any] = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def assert_same_as_peft(merged_dir: Path, reference: Any) -> None:
    """Every tensor we wrote equals PEFT's bit for bit, and every tensor of PEFT's model is
    ours or is the output layer tied to our embedding."""
    import torch

    ours = load_tensors(merged_dir)
    expected = reference.state_dict()
    config = json.loads((merged_dir / "config.json").read_text())
    for name, tensor in ours.items():
        assert name in expected, f"{name} is not in PEFT's model"
        ref = expected[name]
        assert tensor.dtype == ref.dtype and tensor.shape == ref.shape, name
        diff = (tensor.float() - ref.float()).abs().max().item()
        assert torch.equal(tensor, ref), f"{name} differs from PEFT's merge by up to {diff}"
    for name in expected:
        if name not in ours:
            assert name == "lm_head.weight" and config["tie_word_embeddings"], name
            embed = reference.get_input_embeddings().weight
            assert expected[name].data_ptr() == embed.data_ptr(), "lm_head is not tied"


# --------------------------------------------------------------------------------------------
# How close is close: rounding differences between devices
# --------------------------------------------------------------------------------------------

#: float32's machine epsilon (the gap between 1 and the next float32).
FLOAT32_EPS = 2.0**-23


def row_relative_error(actual: Any, reference: Any) -> float:
    """The largest difference between ``actual`` and ``reference``, relative to the norm of
    the reference row it is in: max over rows of ``max_j |a_ij - r_ij| / ||r_i||_2`` (in
    float64; a 1-D tensor is one row).

    Why not ulps: a merged element that is nearly zero (W and the LoRA delta cancelling) has
    tiny ulps, so an absolute difference at the rounding level of its row (1e-9 next to
    elements of 1e-2) counts as thousands of ulps, or billions when its sign flips; the GPU's
    own PEFT merge differs from the CPU's by 7,924 ulps that way. Every float32 operation of
    the merge (the rank-r products, W + delta, the row norm, the DoRA factor) rounds with an
    error proportional to the row's magnitude, which this measures.
    """
    import torch

    a = actual.detach().to("cpu", torch.float64)
    r = reference.detach().to("cpu", torch.float64)
    a, r = a.reshape(1, -1) if a.dim() < 2 else a.flatten(1), r.reshape(1, -1) if r.dim() < 2 else r.flatten(1)  # fmt: skip
    norms = r.norm(dim=1)
    diff = (a - r).abs().amax(dim=1)
    tiny = torch.finfo(torch.float64).tiny
    return float((diff / norms.clamp_min(tiny)).max()) if diff.numel() else 0.0


#: How much farther from the reference than the peer ours may be (see as_close_as_peer).
PEER_FACTOR = 2.0
#: Allowed whatever the peer does: 4 float32 roundings of a row's largest element.
PEER_SLACK = 4 * FLOAT32_EPS


def as_close_as_peer(ours: Any, peer: Any, reference: Any) -> tuple[bool, float, float]:
    """Whether ``ours`` is at least as close to ``reference`` as ``peer`` is, within
    :data:`PEER_FACTOR` (and :data:`PEER_SLACK`): (ok, our error, the peer's error), both
    :func:`row_relative_error`. Used with PEFT's CPU merge as the reference and PEFT's merge
    on the same GPU as the peer: the two GPU merges run the same float32 operations with
    kernels of their own choosing (cuBLAS tiles, reduction orders), so each lands a few
    roundings from the CPU's; twice the peer's distance leaves room for one more rounding of
    that size, while a real mistake (a wrong scale, a row skipped, a bf16 intermediate) is
    off by 2^-8 of the row or more, thousands of times farther."""
    mine, theirs = row_relative_error(ours, reference), row_relative_error(peer, reference)
    return mine <= PEER_FACTOR * theirs + PEER_SLACK, mine, theirs
