"""Next-token logits at every position of each prompt from the Hugging Face side, on the
same ids as :func:`persona_export.llamacpp.logits.gguf_logits` gives for a GGUF. Each
function returns a list of float32 numpy arrays (positions, vocabulary), one per prompt.

What verify runs, one decoder layer at a time (:mod:`persona_export.verify.streaming`:
memory independent of the number of layers):

* :func:`model_logits`: a Hugging Face model folder (the merged model);
* :func:`adapter_logits`: the base model with the adapter applied unmerged by PEFT;
* :func:`base_logits`: the base model alone.

A model whose checkpoint does not name its parameters as its modules do cannot be streamed;
it is then loaded whole (after the whole-model memory preflight), with a warning.

The whole-model path, :func:`hf_logits` and :func:`peft_logits` (``from_pretrained`` and
``PeftModel.from_pretrained``), is the reference the tests and ``bench/bench_verify.py``
compare the streamed logits with, and the fallback; ``PERSONA_EXPORT_WHOLE_MODEL_VERIFY=1``
makes verify use it (the path before layer streaming, for the benchmarks' side-by-side
runs; the report records which ran).

The models run on the CPU in ``dtype`` (float32 by default), one at a time. Each function
returns only numpy arrays and has freed its model by the time it returns or raises (no
reference left, not even in the frames of an error's traceback; collected; the C heap
trimmed), so the next engine verify runs has the memory. torch, transformers and peft are
imported inside the functions.
"""

from __future__ import annotations

import gc
import os
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from persona_export import console
from persona_export.errors import UnsupportedError
from persona_export.verify.metrics import Array
from persona_export.verify.weights import trim_heap

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
        trim_heap()


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


def adapter_embedding_rows(adapter_dir: Path) -> int | None:
    """Rows of the full embedding matrix an adapter saved (added tokens), else None."""
    from safetensors import safe_open

    weights = adapter_dir / "adapter_model.safetensors"
    with safe_open(str(weights), framework="numpy") as fh:
        for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
            if "embed_tokens" in key and "lora_" not in key:
                return int(fh.get_slice(key).get_shape()[0])
    return None


def _require_safetensors(adapter_dir: Path) -> None:
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise UnsupportedError(
            f"{adapter_dir} has no adapter_model.safetensors: verify loads safetensors adapters "
            "only (no pickle)",
            "convert the adapter with PEFT: PeftModel.from_pretrained(...).save_pretrained(dir, "
            "safe_serialization=True)",
        )


def peft_logits(
    base_dir: Path, adapter_dir: Path, prompts: Sequence[TokenIds], *, dtype: str = "float32"
) -> list[Array]:
    """Logits of base + adapter, unmerged (PEFT's forward with the LoRA branches); both
    models are freed before this returns."""
    _require_safetensors(adapter_dir)
    return _freeing(_peft_logits, base_dir, adapter_dir, prompts, dtype)


def _peft_logits(
    base_dir: Path, adapter_dir: Path, prompts: Sequence[TokenIds], dtype: str
) -> list[Array]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=_torch_dtype(dtype))
    rows = adapter_embedding_rows(adapter_dir)
    if rows is not None and rows != base.get_input_embeddings().weight.shape[0]:  # type: ignore[index]
        # The adapter added tokens: PEFT expects the base resized as it was for training.
        base.resize_token_embeddings(rows)
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    model.eval()
    return _forward(model, prompts)


# --------------------------------------------------------------------------------------------
# Layer-streamed (what verify runs)
# --------------------------------------------------------------------------------------------


WHOLE_MODEL_VAR = "PERSONA_EXPORT_WHOLE_MODEL_VERIFY"


def streaming() -> bool:
    """Whether verify runs the Hugging Face side one layer at a time (the default), or
    whole models (``PERSONA_EXPORT_WHOLE_MODEL_VERIFY`` set to 1, yes, true or on)."""
    value = os.environ.get(WHOLE_MODEL_VAR, "").strip().lower()
    return value not in ("1", "yes", "true", "on")


def _streamed(
    model_dir: Path, adapter_dir: Path | None, prompts: Sequence[TokenIds], dtype: str
) -> list[Array]:
    from persona_export.verify.streaming import streamed_logits

    return streamed_logits(model_dir, prompts, adapter_dir=adapter_dir, dtype=dtype)


def _whole_instead(model_dir: Path, reason: str, dtype: str) -> None:
    from persona_export.verify.memory import check_memory

    console.warn(f"{reason}: loading {model_dir} whole instead of one layer at a time")
    check_memory(model_dir, dtype)


def model_logits(
    model_dir: Path, prompts: Sequence[TokenIds], *, dtype: str = "float32"
) -> list[Array]:
    """Logits of the Hugging Face model in ``model_dir`` computed in ``dtype`` one decoder
    layer at a time (the whole model when it cannot be streamed)."""
    from persona_export.verify.weights import NotStreamable

    if not streaming():
        return hf_logits(model_dir, prompts, dtype=dtype)
    try:
        return _freeing(_streamed, model_dir, None, prompts, dtype)
    except NotStreamable as exc:
        _whole_instead(model_dir, exc.message, dtype)
    return hf_logits(model_dir, prompts, dtype=dtype)


def base_logits(
    base_dir: Path, prompts: Sequence[TokenIds], *, dtype: str = "float32"
) -> list[Array]:
    """Logits of the base model in ``base_dir`` without any adapter (``prompts``: token-id
    sequences; returns float32 arrays, positions x vocabulary), one layer at a time."""
    return model_logits(base_dir, prompts, dtype=dtype)


def adapter_logits(
    base_dir: Path, adapter_dir: Path, prompts: Sequence[TokenIds], *, dtype: str = "float32"
) -> list[Array]:
    """Logits of base + adapter, unmerged, through PEFT's own LoRA layers, computed in
    ``dtype`` one decoder layer at a time (the whole models when they cannot be streamed)."""
    from persona_export.verify.weights import NotStreamable

    _require_safetensors(adapter_dir)
    if not streaming():
        return peft_logits(base_dir, adapter_dir, prompts, dtype=dtype)
    try:
        return _freeing(_streamed, base_dir, adapter_dir, prompts, dtype)
    except NotStreamable as exc:
        _whole_instead(base_dir, exc.message, dtype)
    return peft_logits(base_dir, adapter_dir, prompts, dtype=dtype)
