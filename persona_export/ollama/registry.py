"""Registering a Modelfile with Ollama: through the ``ollama`` CLI, or through the REST API.

Where Ollama is (:func:`locate`): the ``ollama`` executable on PATH; else the server that
``OLLAMA_HOST`` names; else, when a server answers there within half a second, Ollama's
default address ``http://127.0.0.1:11434`` (the one its CLI and official client use, e.g.
Ollama in a container or a desktop install without the CLI on PATH).

* :func:`create_with_cli`: ``ollama create NAME -f Modelfile``;
* :func:`create_with_api`: the GGUF uploaded as a blob by its sha256
  (``HEAD``, then ``POST /api/blobs/sha256:<hex>`` unless the server has it), then
  ``POST /api/create`` with the Modelfile's create request; registered only when the
  final answer says ``success``;
* :func:`probe`: whether a server answers at an address, and its version (``/api/version``).

Timeouts: connecting takes at most 10 s; the upload and the create may each stay silent for
``PERSONA_EXPORT_OLLAMA_TIMEOUT`` seconds (default 600) before the command gives up. Every
transport or protocol failure is an :class:`OllamaError`: one line and a hint.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_export.errors import ExternalToolError, IntegrityError, InvalidInputError, UsageError
from persona_export.ollama.modelfile import Modelfile
from persona_export.proc import run

if TYPE_CHECKING:
    import httpx

HOST_VAR = "OLLAMA_HOST"
TIMEOUT_VAR = "PERSONA_EXPORT_OLLAMA_TIMEOUT"
#: Ollama's default address (tests point it elsewhere).
DEFAULT_HOST = "http://127.0.0.1:11434"
DEFAULT_PORT = 11434
DEFAULT_TIMEOUT = 600.0
CONNECT_TIMEOUT = 10.0
PROBE_CONNECT_TIMEOUT = 0.5
PROBE_TIMEOUT = 2.0
CLI_HINT = "see Ollama's message above; Phi-4-mini GGUFs need Ollama 0.5.13 or newer"
REFUSED_HINT = "check the Ollama server's log; Phi-4-mini GGUFs need Ollama 0.5.13 or newer"
HOST_HINT = f"set {HOST_VAR} to host[:port] or http(s)://host[:port], e.g. http://127.0.0.1:11434"
_CHUNK = 8 * 1024 * 1024
_HOST_NAME = re.compile(r"[A-Za-z0-9._-]+")


class OllamaError(ExternalToolError):
    """Ollama could not be reached, or did not answer as Ollama does."""


class OllamaUnreachableError(OllamaError):
    """Nothing accepted a connection at the address."""


class OllamaTimeoutError(OllamaError):
    """The server stayed silent longer than the timeout allows."""


class OllamaRefusedError(OllamaError):
    """The server answered, and did not create the model."""


class OllamaProtocolError(OllamaError):
    """The answer was not Ollama's (not JSON, a broken connection, a proxy's page)."""


# ------------------------------------------------------------------------------------------
# Where Ollama is
# ------------------------------------------------------------------------------------------


def find_cli(exe: str | None = None) -> str | None:
    """The ``ollama`` executable to use: ``exe`` when given, else the one on PATH."""
    return exe or shutil.which("ollama")


def parse_host(value: str, *, name: str = HOST_VAR) -> str:
    """The base URL for an ``OLLAMA_HOST`` value, read as Ollama reads it: ``host``,
    ``host:port``, ``[v6]:port`` or ``http(s)://host[:port][/path]``; the port defaults to
    11434 without a scheme, else 80 or 443. Raises :class:`UsageError` for anything else."""

    def bad(why: str) -> UsageError:
        return UsageError(f"{name}={value!r} is not an address Ollama can be at: {why}", HOST_HINT)

    scheme, sep, rest = value.strip().partition("://")
    if not sep:
        scheme, rest, port = "http", value.strip(), DEFAULT_PORT
    elif scheme.lower() in ("http", "https"):
        scheme = scheme.lower()
        port = 80 if scheme == "http" else 443
    else:
        raise bad(f"the scheme must be http or https, not {scheme!r}")
    hostport, _, path = rest.partition("/")
    if not hostport:
        raise bad("no host")
    if hostport.startswith("["):
        host, bracket, port_text = hostport[1:].partition("]")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"[{host}{bracket} is not an IPv6 address") from None
        if not bracket:
            raise bad("an IPv6 address must be closed with ]")
        if port_text and not port_text.startswith(":"):
            raise bad(f"unexpected {port_text!r} after the address")
        host, port_text = f"[{host}]", port_text[1:]
    else:
        host, colon, port_text = hostport.rpartition(":")
        if not colon:
            host, port_text = hostport, ""
        if host and not _HOST_NAME.fullmatch(host):
            raise bad(f"{host!r} is not a host name")
        host = host or "127.0.0.1"  # ":port" alone, as Ollama reads it
    if port_text or hostport.endswith(":"):
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise bad(f"the port must be a number from 1 to 65535, not {port_text!r}")
        port = int(port_text)
    path = path.strip("/")
    return f"{scheme}://{host}:{port}" + (f"/{path}" if path else "")


def timeout_seconds() -> float:
    """How long the upload and the create may stay silent (``PERSONA_EXPORT_OLLAMA_TIMEOUT``,
    seconds; default 600). Raises :class:`UsageError` for a value that is not above 0."""
    raw = os.environ.get(TIMEOUT_VAR, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UsageError(
            f"{TIMEOUT_VAR}={raw!r} is not a number of seconds above 0",
            f"e.g. {TIMEOUT_VAR}=1800 (the default is {DEFAULT_TIMEOUT:g})",
        )
    return value


@dataclass(frozen=True)
class Server:
    """What :func:`probe` found: the version when a server answered, else why not."""

    host: str
    version: str | None
    error: str | None = None

    @property
    def answers(self) -> bool:
        return self.version is not None


def probe(
    host: str, *, connect_timeout: float = PROBE_CONNECT_TIMEOUT, timeout: float = PROBE_TIMEOUT
) -> Server:
    """Ask ``host`` for its version (``GET /api/version``); never raises."""
    import httpx

    limits = httpx.Timeout(timeout, connect=min(connect_timeout, timeout))
    try:
        with httpx.Client(base_url=host, timeout=limits) as client:
            response = client.get("/api/version")
    except httpx.TimeoutException:
        return Server(host, None, f"did not answer within {timeout:g} s")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return Server(host, None, _reason(exc))
    answer = _json_answer(response.text)
    version = answer.get("version") if isinstance(answer, dict) else None
    if response.status_code != 200 or not isinstance(version, str):
        return Server(host, None, f"answers, but not as Ollama does (HTTP {response.status_code})")
    return Server(host, version)


@dataclass(frozen=True)
class Where:
    """How to reach Ollama: ``method`` is ``cli`` (``exe``), ``api`` (``host``; ``label``
    names it in messages) or ``none``."""

    method: str
    exe: str | None = None
    host: str = ""
    label: str = ""
    default_address: bool = False


def locate(exe: str | None = None, host: str | None = None) -> Where:
    """Where to register (module docstring): ``exe`` and ``host`` override the PATH lookup
    and ``$OLLAMA_HOST``. Raises :class:`UsageError` for a malformed address."""
    cli = find_cli(exe)
    if cli:
        return Where("cli", exe=cli)
    raw = host if host is not None else os.environ.get(HOST_VAR, "")
    if raw.strip():
        url = parse_host(raw, name=HOST_VAR if host is None else "host")
        return Where("api", host=url, label=f"{HOST_VAR}={raw}" if host is None else url)
    if probe(DEFAULT_HOST).answers:
        label = f"{DEFAULT_HOST} (Ollama's default address)"
        return Where("api", host=DEFAULT_HOST, label=label, default_address=True)
    return Where("none")


# ------------------------------------------------------------------------------------------
# Registering
# ------------------------------------------------------------------------------------------


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


def create_with_api(
    where: Where, name: str, modelfile: Modelfile, gguf: Path, sha256: str, timeout: float
) -> Created:
    """Upload ``gguf`` (whose content hashes to ``sha256``) and create model ``name`` from
    ``modelfile`` at ``where.host``. Raises :class:`OllamaError` subclasses for every
    transport or protocol failure, :class:`IntegrityError` when the file changes while it is
    uploaded, and :class:`UnsupportedError` for a Modelfile the REST path cannot carry."""
    import httpx

    files = {gguf.name: f"sha256:{sha256}"}
    body = modelfile.create_request(name, files)  # refuses what the REST path cannot carry
    limits = httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout))
    with httpx.Client(base_url=where.host, timeout=limits) as client:
        _upload(client, where, gguf, sha256, timeout)
        response = _request(client, where, timeout, "POST", "/api/create", json=body)
    return Created(files, _final_status(where, response))


def _upload(client: httpx.Client, where: Where, gguf: Path, sha256: str, timeout: float) -> None:
    path = f"/api/blobs/sha256:{sha256}"
    if _request(client, where, timeout, "HEAD", path).status_code == 200:
        return  # the server has this content already
    seen = hashlib.sha256()

    def chunks() -> Iterator[bytes]:
        with open(gguf, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                seen.update(chunk)
                yield chunk

    headers = {"Content-Length": str(gguf.stat().st_size)}
    try:
        response = _request(client, where, timeout, "POST", path, content=chunks(), headers=headers)
    except OSError as exc:
        raise InvalidInputError(f"cannot read {gguf} while uploading it: {exc}") from exc
    if seen.hexdigest() != sha256:
        raise IntegrityError(
            f"{gguf} changed while it was uploaded; it is not registered",
            "wait for whatever writes it to finish, then run `persona-export ollama` again",
        )
    if response.status_code not in (200, 201):
        answer = _json_answer(response.text)
        error = answer.get("error") if isinstance(answer, dict) else None
        raise OllamaRefusedError(
            f"Ollama at {where.host} refused the upload of {gguf.name}: "
            f"{error or _preview(response.text)} (HTTP {response.status_code})",
            REFUSED_HINT,
        )


def _request(
    client: httpx.Client, where: Where, timeout: float, method: str, path: str, **kwargs: Any
) -> httpx.Response:
    """One request, every transport failure turned into an :class:`OllamaError`."""
    import httpx

    endpoint = "/api/blobs" if path.startswith("/api/blobs/") else path
    try:
        return client.request(method, path, **kwargs)
    except httpx.TimeoutException as exc:
        raise OllamaTimeoutError(
            f"Ollama at {where.host} did not answer {endpoint} within {timeout:g} s",
            "check the Ollama server (its log), or allow it longer: "
            f"{TIMEOUT_VAR}=SECONDS (now {timeout:g})",
        ) from exc
    except httpx.ConnectError as exc:
        raise OllamaUnreachableError(
            f"cannot reach Ollama at {where.label}: {_reason(exc)}",
            "start it with `ollama serve`"
            + ("" if where.default_address else f", or unset {HOST_VAR}"),
        ) from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise OllamaProtocolError(
            f"Ollama at {where.host}: {method} {endpoint} failed: {_reason(exc)}",
            f"is {where.label} an Ollama server? try: curl {where.host}/api/version",
        ) from exc


def _final_status(where: Where, response: httpx.Response) -> str:
    """The status of ``/api/create``'s final answer, which must be ``success``."""
    code = response.status_code
    answer = _json_answer(response.text)
    if not isinstance(answer, dict):
        kind = response.headers.get("content-type", "").split(";")[0] or "no content type"
        raise OllamaProtocolError(
            f"Ollama at {where.host} answered /api/create with something that is not Ollama's "
            f"JSON (HTTP {code}, {kind}): {_preview(response.text)!r}",
            f"is {where.label} an Ollama server? try: curl {where.host}/api/version",
        )
    if answer.get("error"):
        raise OllamaRefusedError(
            f"Ollama at {where.host} refused the model: {answer['error']} (HTTP {code})",
            REFUSED_HINT,
        )
    status = answer.get("status")
    if code >= 400 or status != "success":
        raise OllamaRefusedError(
            f"Ollama at {where.host} did not confirm the model: its answer ended with status "
            f"{status!r}, not 'success' (HTTP {code})",
            REFUSED_HINT,
        )
    return str(status)


def _json_answer(text: str) -> Any:
    """The JSON answer in ``text`` (the last line of a streamed one); None when there is
    none."""
    lines = [line for line in text.splitlines() if line.strip()]
    for candidate in (text, lines[-1] if lines else ""):
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return None


def _preview(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _reason(exc: BaseException) -> str:
    """An exception's message without the ``[Errno N]`` prefix, lower-cased first letter."""
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(exc).strip()) or type(exc).__name__
    return text[:1].lower() + text[1:]
