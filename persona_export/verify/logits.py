"""Next-token logits at every position of each prompt, from each engine, on the same ids:

* :func:`peft_logits`: the base model with the adapter applied unmerged by PEFT;
* :func:`hf_logits`: a Hugging Face model folder (the merged model);
* :func:`gguf_logits`: a GGUF run by the vendored llama.cpp (our ``pe-logits`` tool).

The Hugging Face models run in float32 (``dtype``) on the CPU, one at a time, and are freed
before the next one loads. torch, transformers and peft are imported inside the functions.
"""

from __future__ import annotations

import gc
import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from persona_export import vendor
from persona_export.errors import ExternalToolError, UnsupportedError
from persona_export.proc import run
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


def read_pe_logits(path: Path) -> list[Array]:
    """Parse pe-logits' output: per prompt int32 n_tokens, int32 n_vocab, n*V float32 (LE)."""
    data = path.read_bytes()
    out: list[Array] = []
    offset = 0
    while offset < len(data):
        if offset + 8 > len(data):
            raise ExternalToolError(f"{path}: truncated pe-logits output")
        n, vocab = struct.unpack_from("<ii", data, offset)
        offset += 8
        size = n * vocab * 4
        if n <= 0 or vocab <= 0 or offset + size > len(data):
            raise ExternalToolError(f"{path}: truncated pe-logits output")
        block = np.frombuffer(data, dtype="<f4", count=n * vocab, offset=offset)
        out.append(block.reshape(n, vocab).astype(np.float32, copy=True))
        offset += size
    return out


def gguf_logits(
    gguf: Path, prompts: Sequence[TokenIds], work_dir: Path, *, threads: int | None = None
) -> list[Array]:
    """Logits of ``gguf`` run by the vendored llama.cpp on exactly these token ids."""
    tool = vendor.tool("pe-logits")
    work_dir.mkdir(parents=True, exist_ok=True)
    tokens_file = work_dir / f"{gguf.stem}.tokens.txt"
    out_file = work_dir / f"{gguf.stem}.logits.bin"
    tokens_file.write_text("".join(" ".join(map(str, ids)) + "\n" for ids in prompts))
    try:
        run(
            [tool, gguf, tokens_file, out_file, str(threads or os.cpu_count() or 1)],
            what=f"pe-logits on {gguf.name}",
            hint=f"{vendor.VENDOR_HINT}; check that {gguf} is a complete GGUF",
        )
        logits = read_pe_logits(out_file)
    finally:
        out_file.unlink(missing_ok=True)
        tokens_file.unlink(missing_ok=True)
    if len(logits) != len(prompts) or any(
        a.shape[0] != len(ids) for a, ids in zip(logits, prompts, strict=True)
    ):
        raise ExternalToolError(
            f"pe-logits returned {len(logits)} prompts for {len(prompts)}: "
            + json.dumps([a.shape[0] for a in logits])
        )
    return logits
