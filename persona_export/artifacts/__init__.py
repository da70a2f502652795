"""Atomic outputs and the manifests that say an output is complete.

A stage writes into a temporary sibling and renames it into place when complete, then
writes a manifest recording its inputs (content hashes), options and outputs. A stage
trusts an existing output only when its manifest exists and still matches: same options,
inputs with the same content, outputs unchanged since they were written. Hashes are cached
by (size, mtime) so checking an unchanged multi-GB input costs a ``stat``, not a read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export import __version__

MANIFEST_SUFFIX = ".manifest.json"
DIR_MANIFEST = "persona_export_manifest.json"
_CHUNK = 8 * 1024 * 1024


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileRecord:
    """A file's identity: content hash plus the stat fields used to skip re-hashing."""

    sha256: str
    size: int
    mtime_ns: int

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "mtime_ns": self.mtime_ns}


def record_file(path: Path, known: Mapping[str, Any] | None = None) -> FileRecord:
    """Fingerprint ``path``; reuse ``known``'s hash when size and mtime are unchanged."""
    st = path.stat()
    if known and known.get("size") == st.st_size and known.get("mtime_ns") == st.st_mtime_ns:
        return FileRecord(str(known["sha256"]), st.st_size, st.st_mtime_ns)
    return FileRecord(sha256_file(path), st.st_size, st.st_mtime_ns)


def record_tree(root: Path, known: Mapping[str, Any] | None = None) -> dict[str, FileRecord]:
    """Fingerprint every file under ``root`` (relative POSIX names), skipping manifests."""
    known = known or {}
    records: dict[str, FileRecord] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == DIR_MANIFEST or rel.endswith(MANIFEST_SUFFIX):
            continue
        records[rel] = record_file(path, known.get(rel))
    return records


def tree_digest(records: Mapping[str, FileRecord]) -> str:
    """One hash for a whole folder: the sorted (name, content hash) pairs."""
    digest = hashlib.sha256()
    for name in sorted(records):
        digest.update(f"{name}\0{records[name].sha256}\n".encode())
    return digest.hexdigest()


def _tmp_sibling(final: Path, kind: str) -> Path:
    return final.parent / f".{final.name}.{kind}-{os.getpid()}-{time.monotonic_ns()}"


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; on success it replaces ``final``.

    On an exception the temporary folder is removed and ``final`` is left as it was.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final, "partial")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = _tmp_sibling(final, "old")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success it is renamed onto ``final``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final, "partial")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON via a temporary file and a rename."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at ``path``, or None when missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def clean_stale_partials(folder: Path, name: str) -> None:
    """Remove temporary siblings of ``folder/name`` left by an interrupted run."""
    if not folder.is_dir():
        return
    for leftover in folder.glob(f".{name}.partial-*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


@dataclass(frozen=True)
class Manifest:
    """What a stage records about one output.

    ``inputs`` and ``outputs`` map a name to a file path; ``options`` is any JSON-able
    dict that changes the output when it changes.
    """

    stage: str
    options: Mapping[str, Any]
    inputs: Mapping[str, FileRecord]
    outputs: Mapping[str, FileRecord]
    seconds: float
    extra: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "persona_export_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(self.seconds, 3),
            "options": dict(self.options),
            "inputs": {k: v.to_json() for k, v in self.inputs.items()},
            "outputs": {k: v.to_json() for k, v in self.outputs.items()},
            **dict(self.extra),
        }


def manifest_path_for(artifact: Path) -> Path:
    """Where the manifest of a file artifact lives (beside it)."""
    return artifact.with_name(artifact.name + MANIFEST_SUFFIX)


def is_fresh(
    manifest_file: Path,
    *,
    options: Mapping[str, Any],
    inputs: Mapping[str, Path],
    outputs: Mapping[str, Path],
) -> bool:
    """True when ``manifest_file`` says the outputs were made from these inputs and options
    and nothing has changed since (inputs by content, outputs by size and mtime)."""
    data = read_json(manifest_file)
    if data is None or data.get("options") != json.loads(json.dumps(dict(options))):
        return False
    recorded_in = data.get("inputs", {})
    recorded_out = data.get("outputs", {})
    if set(recorded_in) != set(inputs) or set(recorded_out) != set(outputs):
        return False
    for name, path in outputs.items():
        rec = recorded_out[name]
        try:
            st = path.stat()
        except OSError:
            return False
        if st.st_size != rec.get("size") or st.st_mtime_ns != rec.get("mtime_ns"):
            return False
    for name, path in inputs.items():
        try:
            if record_file(path, recorded_in[name]).sha256 != recorded_in[name].get("sha256"):
                return False
        except OSError:
            return False
    return True
