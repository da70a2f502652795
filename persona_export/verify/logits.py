"""Next-token logits at every position of each prompt from the Hugging Face side, on the
same ids as :func:`persona_export.llamacpp.logits.gguf_logits` gives for a GGUF:

* :func:`peft_logits`: the base model with the adapter applied unmerged by PEFT;
* :func:`hf_logits`: a Hugging Face model folder (the merged model).

The Hugging Face models run in float32 (``dtype``) on the CPU, one at a time, and are freed
before the next one loads. torch, transformers and peft are imported inside the functions.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from persona_export.errors import UnsupportedError
from persona_export.verify.metrics import Array

TokenIds = Sequence[int]


def _torch_dtype(name: str) -> Any:
    import torch

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    return dtypes[name]


def _forward(model: Any, prompts: Sequence[TokenIds]) -> list[Array]:
    import torch

    logits: list[Array] = []
    with torch.inference_mode():
        for ids in prompts:
            out = model(input_ids=torch.tensor([list(ids)], dtype=torch.long)).logits[0]
            logits.append(out.float().numpy().astype(np.float32, copy=True))
    return logits


def _free(*objects: Any) -> None:
    del objects
    gc.collect()


def hf_logits(
    model_dir: Path, prompts: Sequence[TokenIds], *, dtype: str = "float32"
) -> list[Array]:
    """Logits of the Hugging Face model in ``model_dir`` (loaded in ``dtype``)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=_torch_dtype(dtype))
    model.eval()
    try:
        return _forward(model, prompts)
    finally:
        _free(model)


def _adapter_embedding_rows(adapter_dir: Path) -> int | None:
    """Rows of the full embedding matrix an adapter saved (added tokens), else None."""
    from safetensors import safe_open

    weights = adapter_dir / "adapter_model.safetensors"
    with safe_open(str(weights), framework="numpy") as fh:
        for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
            if "embed_tokens" in key and "lora_" not in key:
                return int(fh.get_slice(key).get_shape()[0])
    return None


def peft_logits(
    base_dir: Path, adapter_dir: Path, prompts: Sequence[TokenIds], *, dtype: str = "float32"
) -> list[Array]:
    """Logits of base + adapter, unmerged (PEFT's forward with the LoRA branches)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise UnsupportedError(
            f"{adapter_dir} has no adapter_model.safetensors: verify loads safetensors adapters "
            "only (no pickle)",
            "convert the adapter with PEFT: PeftModel.from_pretrained(...).save_pretrained(dir, "
            "safe_serialization=True)",
        )
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=_torch_dtype(dtype))
    rows = _adapter_embedding_rows(adapter_dir)
    if rows is not None and rows != base.get_input_embeddings().weight.shape[0]:  # type: ignore[index]
        # The adapter added tokens: PEFT expects the base resized as it was for training.
        base.resize_token_embeddings(rows)
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    model.eval()
    try:
        return _forward(model, prompts)
    finally:
        _free(model, base)
