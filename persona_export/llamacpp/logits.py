"""Next-token logits of a GGUF at every position of each prompt, computed by the vendored
llama.cpp through our ``pe-logits`` tool (``native/pe_logits.cpp``) on exactly the token ids
given, so that they compare position by position with the Hugging Face side."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from persona_export.errors import ExternalToolError
from persona_export.llamacpp import vendor
from persona_export.proc import run

Array = npt.NDArray[np.float32]
TokenIds = Sequence[int]


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
