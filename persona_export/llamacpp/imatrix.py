"""The pinned ``llama-imatrix``: an importance matrix from a model and a calibration text.

It splits the tokenized text into chunks of ``ctx`` tokens (at least two are needed),
runs the model on each and accumulates, per weight matrix, the squared activations that
multiply each column; llama-quantize then spends its precision where those are large.
The text is tokenized with special tokens parsed (``--parse-special``), so chat-format
markers in it are the model's control tokens, as in a real conversation. Perplexity is not
computed (``--no-ppl``): it costs time and says nothing about the matrix.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from persona_export import console
from persona_export.errors import ExternalToolError, UsageError
from persona_export.llamacpp import vendor
from persona_export.proc import run

DEFAULT_CTX = 512
MIN_CTX = 64
_TOO_SHORT = re.compile(r"tokenizes to only (\d+) tokens")
_CHUNKS = re.compile(r"computing over (\d+) chunks")


def context_for(tokens: int, ctx: int = DEFAULT_CTX) -> int:
    """The chunk size for a text of ``tokens`` tokens: ``ctx``, halved (to no less than
    ``MIN_CTX``) until the text holds the two chunks llama-imatrix needs."""
    while ctx > MIN_CTX and tokens < 2 * ctx:
        ctx //= 2
    return ctx


def run_imatrix_tool(
    model: Path, text_file: Path, out_file: Path, *, threads: int | None, log_file: Path
) -> int:
    """Run llama-imatrix on ``model`` over ``text_file`` into ``out_file`` (GGUF format) in
    chunks of ``DEFAULT_CTX`` tokens, or fewer when the text is short; return the chunk
    size. Raises UsageError when the text is too short even for two ``MIN_CTX`` chunks,
    ExternalToolError when the tool fails (with the relevant lines)."""
    ctx = DEFAULT_CTX
    while True:
        output = _run_once(model, text_file, out_file, ctx, threads, log_file)
        if output is None:
            return ctx
        tokens = int(output)
        smaller = context_for(tokens, ctx)
        if smaller == ctx or tokens < 2 * smaller:
            raise UsageError(
                f"the calibration text is too short for an importance matrix: {tokens} "
                f"tokens, and llama-imatrix needs at least {2 * MIN_CTX}",
                "give a longer --calibration FILE, or drop --calibration to use the shipped "
                "prompts",
            )
        ctx = smaller


def _run_once(
    model: Path, text_file: Path, out_file: Path, ctx: int, threads: int | None, log_file: Path
) -> str | None:
    """One run; None when it wrote the matrix, the text's token count when that was too
    few for ``ctx``; raises on any other failure."""
    argv: list[str | Path] = [
        vendor.tool("llama-imatrix"),
        "-m",
        model,
        "-f",
        text_file,
        "-o",
        out_file,
        "--output-format",
        "gguf",
        "-c",
        str(ctx),
        "-b",
        str(ctx),
        "--parse-special",
        "--no-ppl",
        "-ngl",
        "0",
        "-t",
        str(threads or os.cpu_count() or 1),
    ]

    def progress(line: str) -> None:
        if m := _CHUNKS.search(line):
            console.info(f"  imatrix: {m.group(1)} chunks of {ctx} tokens")

    done = run(argv, what="llama-imatrix", log_path=log_file, on_line=progress, check=False)
    if done.returncode == 0 and out_file.is_file():
        return None
    if m := _TOO_SHORT.search(done.output):
        return m.group(1)
    kept = [ln for ln in done.output.splitlines() if ln.strip() and "llama_model_loader" not in ln]
    tail = "\n".join(kept[-15:])
    raise ExternalToolError(
        f"llama-imatrix failed with exit code {done.returncode} (log: {log_file}):\n{tail}",
        "see the log; `persona-export vendor` rebuilds the tools if they are broken",
    )
