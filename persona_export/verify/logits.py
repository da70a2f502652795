"""Next-token logits at every position of each prompt from the Hugging Face side, on the
same ids as :func:`persona_export.llamacpp.logits.gguf_logits` gives for a GGUF:

* :func:`peft_logits`: the base model with the adapter applied unmerged by PEFT;
* :func:`hf_logits`: a Hugging Face model folder (the merged model);
* :func:`base_logits`: the base model without the adapter (the persona's reference point).

The Hugging Face models run in float32 (``dtype``) on the CPU, one at a time. Each function
loads its model, returns only numpy arrays, and has freed the model by the time it returns
or raises (no reference left, not even in the frames of an error's traceback; collected;
the C heap trimmed), so the next engine verify runs has the memory. torch, transformers
and peft are imported inside the functions.
"""

from __future__ import annotations

import gc
import sys
import traceback
from collections.abc import Callable, Sequence
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


def _freeing(compute: Callable[..., list[Array]], *args: Any) -> list[Array]:
    """``compute(*args)``, with whatever model it loaded gone when this returns or raises.

    ``compute`` keeps its models in its own locals, which die with its frame. An error's
    traceback would keep that frame (and a half-loaded model in transformers' frames)
    alive, so their locals are cleared before the error goes on. The collection is for the
    reference cycles models may hold.
    """
    try:
        return compute(*args)
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        gc.collect()
        _trim_heap()


def _trim_heap() -> None:
    """Hand the freed heap back to the system (glibc otherwise keeps it for reuse)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def hf_logits(
    model_dir: Path, prompts: Sequence[TokenIds], *, dtype: str = "float32"
) -> list[Array]:
    """Logits of the Hugging Face model in ``model_dir`` (loaded in ``dtype``); the model is
    freed before this returns."""
    return _freeing(_hf_logits, model_dir, prompts, dtype)


def _hf_logits(model_dir: Path, prompts: Sequence[TokenIds], dtype: str) -> list[Array]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=_torch_dtype(dtype))
    model.eval()
    return _forward(model, prompts)


def base_logits(
    base_dir: Path, prompts: Sequence[TokenIds], *, dtype: str = "float32"
) -> list[Array]:
    """Logits of the base model in ``base_dir`` without the adapter (same shape as
    :func:`hf_logits`); the model is freed before this returns."""
    return _freeing(_hf_logits, base_dir, prompts, dtype)


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
    """Logits of base + adapter, unmerged (PEFT's forward with the LoRA branches); both
    models are freed before this returns."""
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise UnsupportedError(
            f"{adapter_dir} has no adapter_model.safetensors: verify loads safetensors adapters "
            "only (no pickle)",
            "convert the adapter with PEFT: PeftModel.from_pretrained(...).save_pretrained(dir, "
            "safe_serialization=True)",
        )
    return _freeing(_peft_logits, base_dir, adapter_dir, prompts, dtype)


def _peft_logits(
    base_dir: Path, adapter_dir: Path, prompts: Sequence[TokenIds], dtype: str
) -> list[Array]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=_torch_dtype(dtype))
    rows = _adapter_embedding_rows(adapter_dir)
    if rows is not None and rows != base.get_input_embeddings().weight.shape[0]:  # type: ignore[index]
        # The adapter added tokens: PEFT expects the base resized as it was for training.
        base.resize_token_embeddings(rows)
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    model.eval()
    return _forward(model, prompts)
