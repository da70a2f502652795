"""Registering a Modelfile with Ollama: through the ``ollama`` CLI, or through the REST API.

* :func:`find_cli`: the ``ollama`` executable (given, else on PATH);
* :func:`configured_host`: the server named by ``OLLAMA_HOST`` (or given);
* :func:`create_with_cli`: ``ollama create NAME -f Modelfile``;
* :func:`create_with_api`: the GGUF uploaded as a blob by its sha256
  (``POST /api/blobs/sha256:<hex>``), then ``POST /api/create`` with the Modelfile's
  create request (:meth:`~persona_export.ollama.modelfile.Modelfile.create_request`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from persona_export.errors import ExternalToolError
from persona_export.ollama.modelfile import Modelfile
from persona_export.proc import run

HOST_VAR = "OLLAMA_HOST"
CLI_HINT = "see Ollama's message above; Phi-4-mini GGUFs need Ollama 0.5.13 or newer"


def find_cli(exe: str | None = None) -> str | None:
    """The ``ollama`` executable to use: ``exe`` when given, else the one on PATH."""
    return exe or shutil.which("ollama")


def configured_host(host: str | None = None) -> str:
    """The server to use: ``host`` when given, else ``$OLLAMA_HOST`` ("" when neither)."""
    return host if host is not None else os.environ.get(HOST_VAR, "")


def create_with_cli(exe: str, name: str, modelfile: Path) -> str:
    """``ollama create NAME -f MODELFILE``; returns its output. Raises
    :class:`ExternalToolError` when it fails."""
    done = run(
        [exe, "create", name, "-f", str(modelfile.resolve())], what="ollama create", hint=CLI_HINT
    )
    return done.output


@dataclass(frozen=True)
class Created:
    """What the REST API did: the blobs it was given (file name -> digest) and its status."""

    files: dict[str, str]
    status: str


def create_with_api(host: str, name: str, modelfile: Modelfile, gguf: Path) -> Created:
    """Upload ``gguf`` and create model ``name`` from ``modelfile`` at ``host``."""
    import httpx
    import ollama

    body = modelfile.create_request(name, {})  # refuses what the REST path cannot carry
    client = ollama.Client(host=host)
    try:
        digest = client.create_blob(gguf)
        files = {gguf.name: digest}
        response = client.create(
            model=name,
            files=files,
            template=body.get("template"),
            system=body.get("system"),
            parameters=body.get("parameters"),
            license=body.get("license"),
            messages=body.get("messages"),
            stream=False,
        )
    except ollama.ResponseError as exc:
        raise ExternalToolError(
            f"Ollama at {host} refused the model: {exc.error} (HTTP {exc.status_code})",
            "check the Ollama server's log; Phi-4-mini GGUFs need Ollama 0.5.13 or newer",
        ) from exc
    except (httpx.HTTPError, ConnectionError) as exc:
        raise ExternalToolError(
            f"cannot reach Ollama at {HOST_VAR}={host}: {exc}",
            "start it with `ollama serve`, or unset OLLAMA_HOST",
        ) from exc
    return Created(files, str(getattr(response, "status", "") or ""))
