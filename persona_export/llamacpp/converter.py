"""The pinned ``convert_hf_to_gguf.py``, run as a program: its command line and
environment, its output turned into warnings and progress, and its failures explained.

It runs with this Python and the vendored gguf-py, through the launcher
(:mod:`persona_export.llamacpp.convert_launcher`) that replaces its single-core numpy
float32 -> float16 cast by torch's, bit for bit the same, unless
``PERSONA_EXPORT_PLAIN_CONVERTER=1``. The launcher says on its first line whether it really
installed the faster cast; :func:`run_converter` reports what it said, not what was asked.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from persona_export import console
from persona_export.artifacts import read_json
from persona_export.errors import ExternalToolError, InvalidInputError, UnsupportedError
from persona_export.llamacpp import vendor
from persona_export.llamacpp.convert_launcher import INSTALLED_MARK, PLAIN_ENV
from persona_export.proc import run

# general.architecture the converter writes for common HF classes; others are not checked
# by name (the structural checks still run).
KNOWN_ARCHITECTURES = {
    "Phi3ForCausalLM": "phi3",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "GPT2LMHeadModel": "gpt2",
}


def use_launcher() -> bool:
    """Whether the converter runs through the launcher that gives it a faster,
    byte-identical F16 cast: unless PERSONA_EXPORT_PLAIN_CONVERTER is set."""
    return os.environ.get(PLAIN_ENV, "") in ("", "0")


def converter_env() -> dict[str, str]:
    """The vendored gguf-py first on the path, and torch's allocator on transparent huge
    pages (THP_MEM_ALLOC_ENABLE, unless the caller set it): the converter allocates every
    tensor afresh in float32, and 4 KiB pages cost 3.7 M page faults and about 10 s of
    system time on the 3.8 B model (0.3 M with huge pages; the file is the same)."""
    env = vendor.converter_env()
    if "THP_MEM_ALLOC_ENABLE" not in os.environ:
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    return env


@dataclass(frozen=True)
class Conversion:
    """What a converter run reported: its warnings and whether the faster cast was in."""

    warnings: tuple[str, ...]
    fast_cast: bool


def run_converter(
    source_dir: Path,
    outfile: Path,
    *,
    outtype: str,
    model_name: str,
    log_file: Path,
    merged_dir: Path,
) -> Conversion:
    """Convert ``source_dir`` into ``outfile``; raise the explained error when it fails
    (``merged_dir`` is the folder named in messages, ``source_dir`` may be its shadow)."""
    script = vendor.converter_script()
    argv: list[str | Path] = [sys.executable]
    launcher = use_launcher()
    if launcher:
        argv += ["-m", "persona_export.llamacpp.convert_launcher"]
    argv += [script, source_dir, "--outfile", outfile, "--outtype", outtype]
    argv += ["--model-name", model_name]
    warnings: list[str] = []
    with console.progress("converting", unit="B") as bar:
        lines = _ConverterLines(warnings, bar)
        done = run(
            argv,
            what="convert_hf_to_gguf.py",
            env=converter_env(),
            log_path=log_file,
            on_line=lines,
            check=False,
        )
    if done.returncode != 0:
        raise explain_failure(done.output, done.returncode, merged_dir, log_file)
    if not outfile.is_file():
        raise ExternalToolError(
            f"convert_hf_to_gguf.py exited 0 but wrote no {outfile.name} (log: {log_file})",
            "rerun with PERSONA_EXPORT_DEBUG=1 and report the log",
        )
    return Conversion(tuple(warnings), launcher and lines.fast_cast)


_WARNING_RE = re.compile(r"^WARNING:[\w.-]+:(.*)$")
# Warnings about the converter's own bookkeeping, with nothing in them a user could act on:
# shown with --verbose only. "Unknown RoPE type: default": transformers 5 writes
# rope_parameters {"rope_type": "default"}, which the converter does not name but handles as
# plain RoPE (the GGUF is the same); "Duplicated key name": the converter writes
# add_bos_token twice, the second value wins (llama.cpp's own reading).
_BOOKKEEPING = ("Unknown RoPE type: default", "Duplicated key name ")
_PROGRESS_RE = re.compile(r"^Writing:\s+(\d+)%")
# tqdm's amounts on the same line: "| 56.6M/269M [" (bytes, with an SI suffix)
_AMOUNT_RE = re.compile(r"\|\s*([\d.]+)([kMGT]?)/([\d.]+)([kMGT]?)\s*\[")
_SCALE = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


class _ConverterLines:
    """The converter's stream as warnings and progress (its tqdm "Writing:" bar: bytes when
    the line has them, else the percentage), and the launcher's report of the faster cast."""

    def __init__(self, warnings: list[str], bar: console.Bar | None = None) -> None:
        self.warnings = warnings
        self.bar = bar or console.Bar()
        self.fast_cast = False

    def __call__(self, line: str) -> None:
        if line.startswith(INSTALLED_MARK):
            self.fast_cast = True
            return
        if m := _PROGRESS_RE.match(line):
            if amounts := _AMOUNT_RE.search(line):
                done, done_unit, total, total_unit = amounts.groups()
                self.bar.update(
                    float(done) * _SCALE[done_unit], total=float(total) * _SCALE[total_unit]
                )
            else:
                self.bar.update(int(m.group(1)), total=100, unit="%")
            return
        if m := _WARNING_RE.match(line):
            text = m.group(1).strip()
            # the banner of an unrecognised pre-tokenizer is explained by the error instead
            if not text or text.startswith("**"):
                return
            if text.startswith(_BOOKKEEPING):
                if console.mode().verbose:
                    console.info(f"converter: {text}")
                return
            self.warnings.append(text)
            console.warn(f"converter: {text}")


def _relevant_tail(output: str, lines: int = 15) -> str:
    kept = [
        line
        for line in output.splitlines()
        if line.strip()
        and not _PROGRESS_RE.match(line)
        and "**" not in line
        and not line.startswith(INSTALLED_MARK)
    ]
    return "\n".join(kept[-lines:])


def explain_failure(
    output: str, returncode: int, merged_dir: Path, log_file: Path
) -> ExternalToolError | InvalidInputError:
    """The error for a failed conversion: known causes explained, others with the log's
    relevant lines."""
    tail = _relevant_tail(output)
    if "BPE pre-tokenizer was not recognized" in output:
        m = re.search(r"chkhsh:\s+([0-9a-f]{64})", output)
        chkhsh = m.group(1) if m else "unknown"
        return UnsupportedError(
            f"the pinned llama.cpp converter does not recognise the BPE pre-tokenizer of "
            f"{merged_dir}/tokenizer.json ({describe_tokenizer(merged_dir)}; chkhsh {chkhsh})",
            "use the base model's tokenizer files unchanged (a tokenizer the pinned converter "
            "knows, e.g. Phi-4-mini's gpt-4o), or pin a newer llama.cpp in "
            "vendor/llama.cpp.lock.toml whose convert_hf_to_gguf.py lists this chkhsh",
        )
    if m := re.search(r"Model (\S+) is not supported", output):
        return UnsupportedError(
            f"the pinned llama.cpp converter does not support the architecture {m.group(1)}",
            "list what it supports with `python vendor/llama.cpp/convert_hf_to_gguf.py "
            "--print-supported-models`, or pin a newer llama.cpp",
        )
    if m := re.search(r"Can not map tensor '([^']+)'", output):
        lora = "lora_" in m.group(1)
        return InvalidInputError(
            f"{merged_dir} holds a tensor the converter cannot map: {m.group(1)}",
            "the adapter was not merged into the weights: run the merge stage again with --force"
            if lora
            else "the checkpoint has tensors this architecture does not have; check config.json",
        )
    if "rope long and short factors must be" in output:
        return InvalidInputError(
            f"{merged_dir}/config.json: the LongRoPE factor lists do not match the rotary "
            "dimensions (partial_rotary_factor x hidden_size / heads / 2)",
            "use the base model's config.json unchanged",
        )
    if returncode in (-9, 137):
        return ExternalToolError(
            f"convert_hf_to_gguf.py was killed (out of memory?) (log: {log_file})",
            "free memory or close other programs and run again",
        )
    return ExternalToolError(
        f"convert_hf_to_gguf.py failed with exit code {returncode} (log: {log_file}):\n{tail}",
        "see the log; if the folder converts by hand with the same converter, report a bug",
    )


def describe_tokenizer(folder: Path) -> str:
    """One phrase naming a tokenizer folder's type: class, model, size, pre-tokenizer."""
    tok_config = read_json(folder / "tokenizer_config.json") or {}
    data = read_json(folder / "tokenizer.json") or {}
    model = data.get("model") or {}
    pre = data.get("pre_tokenizer") or {}
    kinds = [p.get("type") for p in pre.get("pretokenizers", [pre]) if isinstance(p, dict)]
    vocab = model.get("vocab")
    size = len(vocab) if isinstance(vocab, dict) else "?"
    return (
        f"{tok_config.get('tokenizer_class', 'no tokenizer_class')}, {model.get('type', '?')} "
        f"with {size} tokens, pre-tokenizer {'+'.join(str(k) for k in kinds) or 'none'}"
    )
