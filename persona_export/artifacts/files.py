"""File identities and small JSON files: the facts a manifest records about a file.

A file is identified by its content hash, with its size and mtime kept beside it so that an
unchanged multi-GB file is recognised by a ``stat`` instead of a read (see
:func:`record_file`); what trusts that shortcut and what re-reads content is said where it is
used (the README's "What each stage trusts").
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export.artifacts.atomic import atomic_file

MANIFEST_SUFFIX = ".manifest.json"
DIR_MANIFEST = "persona_export_manifest.json"
CHUNK = 8 * 1024 * 1024


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class FileRecord:
    """A file's identity: content hash plus the stat fields used to skip re-hashing."""

    sha256: str
    size: int
    mtime_ns: int

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "mtime_ns": self.mtime_ns}


def same_stat(known: Mapping[str, Any] | None, path: Path) -> bool:
    """Whether ``known`` (a recorded FileRecord as JSON) has ``path``'s size and mtime."""
    if not known:
        return False
    st = path.stat()
    return known.get("size") == st.st_size and known.get("mtime_ns") == st.st_mtime_ns


def same_record(known: Any, st: os.stat_result) -> bool:
    """Whether ``known`` (a recorded FileRecord as JSON, or anything a manifest was edited
    to hold) has a hash and the size and mtime of ``st``."""
    return (
        isinstance(known, Mapping)
        and isinstance(known.get("sha256"), str)
        and known.get("size") == st.st_size
        and known.get("mtime_ns") == st.st_mtime_ns
    )


def record_file(path: Path, known: Mapping[str, Any] | None = None) -> FileRecord:
    """Fingerprint ``path``; reuse ``known``'s hash when size and mtime are unchanged."""
    st = path.stat()
    if same_record(known, st):
        assert known is not None
        return FileRecord(str(known["sha256"]), st.st_size, st.st_mtime_ns)
    return FileRecord(sha256_file(path), st.st_size, st.st_mtime_ns)


def is_manifest_name(rel: str) -> bool:
    """Whether a relative file name is one of our manifests (never an output itself)."""
    return rel == DIR_MANIFEST or rel.endswith(MANIFEST_SUFFIX)


def list_files(root: Path) -> dict[str, Path]:
    """Files under ``root`` by relative POSIX name, manifests left out."""
    files: dict[str, Path] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if not is_manifest_name(rel):
            files[rel] = path
    return files


def record_tree(root: Path, known: Mapping[str, Any] | None = None) -> dict[str, FileRecord]:
    """Fingerprint every file under ``root`` (relative POSIX names), skipping manifests."""
    known = known or {}
    return {rel: record_file(path, known.get(rel)) for rel, path in list_files(root).items()}


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON via a temporary file and a rename."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at ``path``, or None when missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None
