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


def peft_merged(base: Path, adapter: Path, dtype: str) -> Any:
    """PEFT's reference: base loaded in ``dtype``, embeddings resized to the adapter's saved
    ones (as a user must before loading such an adapter), ``merge_and_unload()``."""
    import transformers
    from peft import PeftModel
    from safetensors import safe_open

    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype(dtype))
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
