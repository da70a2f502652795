"""What ``status`` shows about each stage, read from the manifests the stages wrote (one
line of detail, the figures, verify's verdict), and what Ollama says it has.

Figures are taken generically: every plain value a manifest recorded beside its inputs and
outputs (a stage that records a new figure shows up without a change here).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export.artifacts import DIR_MANIFEST, MANIFEST_SUFFIX
from persona_export.stages.base import output_bytes
from persona_export.units import human_size

# Manifest keys that are bookkeeping, not figures.
_BOOKKEEPING = frozenset(
    {"stage", "persona", "created", "persona_export_version", "inputs", "outputs", "options"}
    | {"input_paths", "checks", "conversations", "warnings", "losses"}
)
# Verify's key figures, by the check figure that holds them.
_KEY_FIGURES = (("kl_mean", "KL"), ("nmse", "NMSE"), ("top1_agreement", "top-1"))


def output_of(manifest: Path, data: Mapping[str, Any]) -> Path:
    """The output a manifest vouches for: its folder, the file beside it, or itself."""
    if manifest.name == DIR_MANIFEST:
        return manifest.parent
    if manifest.name.endswith(MANIFEST_SUFFIX):
        return manifest.with_name(manifest.name[: -len(MANIFEST_SUFFIX)])
    return manifest


def _size(n: int | None) -> str:
    return human_size(n, missing="gone")


def _plain(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in data.items()
        if k not in _BOOKKEEPING and (v is None or isinstance(v, (str, int, float, bool)))
    }


def figures(stage: str, manifests: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``{"recorded": [...]}``: each output's plain figures from its manifest, plus the
    options it was made with."""
    return {
        "recorded": [
            {**_plain(data), "options": dict(data.get("options") or {})} for data in manifests
        ]
    }


def _one(stage: str, data: Mapping[str, Any], output: Path) -> str:
    size = _size(output_bytes(output))
    options = data.get("options") or {}
    if stage == "merge":
        return f"{data.get('merged_tensors', '?')} weights merged, {options.get('dtype')}, {size}"
    if stage in ("gguf", "quantize"):
        kind = data.get("file_type") or data.get("quant_type") or output.name
        bits = data.get("bits_per_weight")
        per_weight = f" {bits:.2f} bits/weight" if isinstance(bits, (int, float)) else ""
        return f"{kind}{per_weight}, {size}"
    if stage == "modelfile":
        gguf = (data.get("input_paths") or {}).get("gguf")
        source = f"FROM {Path(gguf).name}" if gguf else f"{options.get('quant')} GGUF"
        return f"{source}, {data.get('format')} format, model {data.get('model_name')}"
    if stage == "verify":
        return verdict(data)["summary"]
    return f"{output.name} {size}"


def detail(stage: str, manifests: Sequence[Mapping[str, Any]], outputs: Sequence[Path]) -> str:
    """One line for the status table."""
    return "; ".join(_one(stage, d, o) for d, o in zip(manifests, outputs, strict=True))


def verdict(report: Mapping[str, Any]) -> dict[str, Any]:
    """Verify's verdict from its report: passed or not, when, each check's status and key
    figures, and a one-line summary (the failed checks, or the key figures)."""
    checks = [c for c in report.get("checks") or [] if isinstance(c, Mapping)]
    rows = []
    keys = []
    for check in checks:
        found = check.get("figures") or {}
        row = {"name": check.get("name"), "status": check.get("status")}
        row |= {k: found[k] for k, _ in _KEY_FIGURES if isinstance(found.get(k), (int, float))}
        rows.append(row)
        # a check bounded by NMSE is judged by it; one without, by its mean KL
        key = "nmse" if "nmse_max" in found else "kl_mean"
        if key in row:
            keys.append(f"{check.get('name')} {dict(_KEY_FIGURES)[key]} {row[key]:.2g}")
    failed = [str(c.get("name")) for c in checks if c.get("status") == "failed"]
    passed = bool(report.get("passed"))
    head = "passed" if passed else "FAILED"
    if failed:
        summary = f"{head}: {', '.join(failed)} failed"
    else:
        summary = f"{head} ({len(checks)} checks)" + (": " + ", ".join(keys) if keys else "")
    return {
        "passed": passed,
        "created": report.get("created"),
        "summary": summary,
        "checks": rows,
    }


@dataclass(frozen=True)
class OllamaStatus:
    """Whether an Ollama server answers (at ``OLLAMA_HOST``, else Ollama's default address),
    its version and the models it lists (``GET /api/tags``)."""

    address: str
    reachable: bool
    version: str | None = None
    error: str | None = None
    models: tuple[str, ...] = ()

    def has(self, name: str) -> bool:
        """Whether ``name`` (``name:latest`` when it has no tag) is listed."""
        wanted = {name, f"{name}:latest"} if ":" not in name else {name}
        return bool(wanted & set(self.models))

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "reachable": self.reachable,
            "version": self.version,
            "error": self.error,
            "models": list(self.models),
        }


def ask_ollama() -> OllamaStatus:
    """Ask the Ollama server ``registry`` would use for its version and models; never raises.
    Short timeouts (registry.probe's): a status must not wait on an absent server."""
    import httpx

    from persona_export.errors import UsageError
    from persona_export.ollama import registry

    raw = os.environ.get(registry.HOST_VAR, "").strip()
    try:
        host = registry.parse_host(raw) if raw else registry.DEFAULT_HOST
    except UsageError as exc:
        return OllamaStatus(raw, False, error=exc.message)
    server = registry.probe(host)
    if not server.answers:
        return OllamaStatus(host, False, error=server.error)
    timeout = httpx.Timeout(registry.PROBE_TIMEOUT, connect=registry.PROBE_CONNECT_TIMEOUT)
    try:
        with httpx.Client(base_url=host, timeout=timeout) as client:
            answer = client.get("/api/tags").json()
    except (httpx.HTTPError, ValueError) as exc:
        return OllamaStatus(host, True, server.version, f"/api/tags: {exc}")
    models = answer.get("models") if isinstance(answer, dict) else None
    names = tuple(
        str(m.get("name") or m.get("model"))
        for m in models or []
        if isinstance(m, dict) and (m.get("name") or m.get("model"))
    )
    return OllamaStatus(host, True, server.version, None, names)
