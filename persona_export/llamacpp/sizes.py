"""How big a GGUF will be, before it is written: the disk preflight of the gguf and quantize
stages (the merge's is the merge plan's byte count).

* :func:`converted_bytes`: what ``convert_hf_to_gguf.py`` writes for a merged folder: every
  tensor of two or more dimensions in the output type (2 bytes for F16/BF16, 4 for F32,
  34 bytes per 32 weights for Q8_0), one-dimensional ones (norms, biases) in F32, plus the
  metadata (the tokenizer's vocabulary and merges: at most the tokenizer files' size).
* :func:`quantized_bytes`: what ``llama-quantize`` writes for a type, from the size
  llama-quantize's own usage text gives for it: either bits per weight ("4.50 bpw ...") or
  a file size for a reference model ("4.58G, +0.1754 ppl @ Llama-3-8B", in GiB); the mixes
  (Q4_K_M keeps some tensors in Q6_K) are in that figure. A margin of
  :data:`QUANT_MARGIN` covers models whose mix differs from the reference's (a large
  vocabulary, rows that fall back to another type), and the source's metadata is added.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from persona_export.merge.safetensors_io import read_header

_OUTTYPE_BYTES = {"f16": 2.0, "bf16": 2.0, "f32": 4.0, "q8_0": 34 / 32}
# Parameters of the reference models llama-quantize's usage text sizes its types by.
_REFERENCE_PARAMS = {"Llama-3-8B": 8.03e9, "Mistral-7B": 7.24e9, "7B": 6.74e9}
_BPW = re.compile(r"([\d.]+)\s*bpw")
_SIZE_AT = re.compile(r"([\d.]+)G\b.*@\s*(\S+)")
QUANT_MARGIN = 1.15
_SLACK = 16 * 2**20  # headers, alignment padding


def converted_bytes(
    weight_files: Iterable[Path], outtype: str, tokenizer_files: Iterable[Path] = ()
) -> int:
    """The size of the GGUF the converter makes of these safetensors in ``outtype``."""
    per_weight = _OUTTYPE_BYTES[outtype.lower()]
    total = 0.0
    for path in weight_files:
        for info in read_header(path)[0].values():
            total += info.numel * (per_weight if len(info.shape) >= 2 else 4)
    metadata = sum(p.stat().st_size for p in tokenizer_files if p.is_file())
    return int(total) + metadata + _SLACK


def bits_per_weight(description: str) -> float | None:
    """Bits per weight of a type from its line in llama-quantize's usage text (None when
    the line gives no size)."""
    if m := _BPW.search(description):
        return float(m.group(1))
    if (m := _SIZE_AT.search(description)) and m.group(2) in _REFERENCE_PARAMS:
        return float(m.group(1)) * 2**30 * 8 / _REFERENCE_PARAMS[m.group(2)]
    return None


def quantized_bytes(
    description: str, n_weights: int, metadata_bytes: int, source_bytes: int
) -> int:
    """The size of the GGUF llama-quantize makes of a source of ``n_weights`` weights and
    ``metadata_bytes`` of metadata, for the type ``description`` describes (at most the
    source's ``source_bytes`` when the description gives no size)."""
    bpw = bits_per_weight(description)
    if bpw is None:
        return source_bytes
    return int(n_weights * bpw / 8 * QUANT_MARGIN) + metadata_bytes + _SLACK
