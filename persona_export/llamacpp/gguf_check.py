"""Check that a GGUF a stage wrote is what it meant to write: the expected architecture,
file type, name, tensors and chat template, and the rules every model GGUF follows (a
tokenizer, a chat template, the vocabulary matching the embedding). Reads with gguf_file."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export.errors import InvalidInputError, VerificationError
from persona_export.llamacpp.gguf_file import GgufSummary, read_gguf


@dataclass(frozen=True)
class Expectation:
    """What a stage expects of the GGUF it wrote; ``None`` fields are not checked."""

    architecture: str | None = None
    file_type: int | None = None
    tensor_count: int | None = None
    name: str | None = None
    chat_template: str | None = None
    token_count: int | None = None
    block_count: int | None = None
    tensor_names: frozenset[str] | None = None


_BLOCK_RE = re.compile(r"^blk\.(\d+)\.")


def problems(summary: GgufSummary, expect: Expectation) -> list[str]:
    """Everything wrong with ``summary`` against ``expect`` and the rules every model GGUF
    must follow (a tokenizer, a chat template, the vocabulary matching the embedding)."""
    found: list[str] = []

    def differ(what: str, want: Any, got: Any) -> None:
        if want is not None and want != got:
            found.append(f"{what} is {got!r}, expected {want!r}")

    if not summary.architecture:
        found.append("general.architecture is missing")
    differ("general.architecture", expect.architecture, summary.architecture)
    differ("general.file_type", expect.file_type, summary.file_type)
    differ("general.name", expect.name, summary.name)
    differ("the tensor count", expect.tensor_count, summary.tensor_count)
    differ(f"{summary.architecture}.block_count", expect.block_count, summary.block_count)
    if summary.tensor_count == 0:
        found.append("it has no tensors")
    if not summary.tokenizer_model:
        found.append("tokenizer.ggml.model is missing (no tokenizer)")
    if summary.token_count == 0:
        found.append("tokenizer.ggml.tokens is missing or empty")
    differ("the vocabulary size", expect.token_count, summary.token_count)
    if not summary.chat_template:
        found.append("tokenizer.chat_template is missing")
    elif expect.chat_template is not None and summary.chat_template != expect.chat_template:
        found.append("tokenizer.chat_template differs from the source's chat template")
    embd = summary.tensor("token_embd.weight")
    if embd is not None and len(embd.shape) == 2 and embd.shape[1] != summary.token_count:
        found.append(
            f"token_embd.weight has {embd.shape[1]} rows but the vocabulary has "
            f"{summary.token_count} tokens"
        )
    if summary.block_count is not None:
        blocks = {int(m.group(1)) for t in summary.tensors if (m := _BLOCK_RE.match(t.name))}
        missing = sorted(set(range(summary.block_count)) - blocks)
        if missing:
            found.append(f"no tensors for blocks {missing[:8]} of {summary.block_count}")
    if expect.tensor_names is not None:
        names = {t.name for t in summary.tensors}
        if names != expect.tensor_names:
            lost = sorted(expect.tensor_names - names)[:5]
            extra = sorted(names - expect.tensor_names)[:5]
            found.append(f"tensor names differ from the source (missing {lost}, extra {extra})")
    return found


def check_gguf(path: Path, expect: Expectation, *, what: str) -> GgufSummary:
    """Read ``path`` and raise VerificationError naming every problem; return the summary.

    ``what`` names the producer in the message, e.g. ``"the converter's output"``.
    """
    try:
        summary = read_gguf(path)
    except InvalidInputError as exc:
        raise VerificationError(
            f"{what} is not a valid GGUF: {exc.message}", "this is a bug in the tool; report it"
        ) from exc
    found = problems(summary, expect)
    if found:
        raise VerificationError(
            f"{what} failed its checks: {'; '.join(found)}",
            "the file was discarded; rerun with PERSONA_EXPORT_DEBUG=1 and report the output",
        )
    return summary
