"""The vendored llama-server for a test (persona_export.llamacpp.server), skipping the test when
the tools are not built, and its rendering of chat templates (/apply-template)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from persona_export.llamacpp import server as server_module
from persona_export.llamacpp.server import LlamaServer


def server_binary() -> Path:
    """The built llama-server; skips the test when the vendored tools are not built."""
    from persona_export.errors import ToolMissingError
    from persona_export.llamacpp import vendor

    try:
        return vendor.tool("llama-server")
    except ToolMissingError as exc:
        pytest.skip(f"{exc.message} ({exc.hint})")


@contextmanager
def llama_server(
    gguf: Path, log_dir: Path, *, chat_template_file: Path | None = None
) -> Iterator[LlamaServer]:
    """Serve ``gguf`` (``--jinja``, small context, one thread) until the block ends."""
    server_binary()
    with server_module.llama_server(
        gguf, log_dir, ctx_size=256, threads=1, chat_template_file=chat_template_file
    ) as server:
        yield server


def apply_template(server: LlamaServer, messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt llama-server renders for ``messages`` (POST /apply-template)."""
    return server.apply_template(messages)
