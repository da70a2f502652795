"""What a manifest says about its output *now*, from ``stat`` alone: the fast answer behind
``persona-export status`` (the stages' own answer, :meth:`Artifact.fresh`, hashes inputs
whose size or mtime changed; this never hashes a big file).

Each recorded file is compared with the file at its place:

* same size and mtime: unchanged;
* missing, or another size: changed (certain);
* same size, another mtime: a file up to :data:`HASH_LIMIT` bytes is hashed (cheap: config
  files, tokenizers, most adapters); a bigger one is recognised when another manifest
  recorded it with this very size and mtime (an output of the stage before, so its hash is
  known); else only hashing could tell, and the answer is *unknown*.

An output (recorded by size and mtime, as :meth:`Artifact.fresh` judges it) that changed,
or a folder output holding files it did not record, means the stage would run again.
Inputs are found through the paths the manifest recorded (``input_paths``); a manifest
without them (written before they were recorded) can only be *unknown*.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export.artifacts.files import (
    DIR_MANIFEST,
    MANIFEST_SUFFIX,
    list_files,
    sha256_file,
)
from persona_export.units import human_size

HASH_LIMIT = 64 << 20  # bytes: files up to this size are hashed when only their mtime changed

UP_TO_DATE = "up to date"
STALE = "stale"  # the stage would run again: an input or an output changed
UNKNOWN = "unknown"  # only hashing a big file could tell; `export` does that
MISSING = "missing"  # never made (no manifest)


@dataclass(frozen=True)
class Change:
    """One recorded file that is not as recorded: its name in the manifest, where it is,
    and what differs (``certain`` False: a big file's mtime only; hashing would tell)."""

    name: str
    path: str
    what: str
    certain: bool = True

    def describe(self) -> str:
        return f"{self.name} {self.what}"


@dataclass(frozen=True)
class Survey:
    """The state of one output (:data:`UP_TO_DATE`, :data:`STALE`, :data:`UNKNOWN`) and why."""

    state: str
    changes: tuple[Change, ...] = ()
    reason: str = ""


class KnownFiles:
    """Files other manifests recorded as outputs, by absolute path: an input that is the
    output of an earlier stage is recognised by its size and mtime, without hashing it."""

    def __init__(self) -> None:
        self.records: dict[str, Mapping[str, Any]] = {}

    def add(self, manifest_file: Path, data: Mapping[str, Any]) -> None:
        for name, path in output_paths(manifest_file, data).items():
            record = (data.get("outputs") or {}).get(name)
            if isinstance(record, Mapping):
                self.records[os.path.abspath(path)] = record

    def sha256(self, path: Path, size: int, mtime_ns: int) -> str | None:
        record = self.records.get(os.path.abspath(path))
        if record and record.get("size") == size and record.get("mtime_ns") == mtime_ns:
            sha = record.get("sha256")
            return str(sha) if sha else None
        return None


def output_paths(manifest_file: Path, data: Mapping[str, Any]) -> dict[str, Path]:
    """Where a manifest's outputs are: the files of its folder (``persona_export_manifest.json``
    inside it) or the file it sits beside (``<file>.manifest.json``). A report that is its
    own manifest (verify.json) has none."""
    names = list((data.get("outputs") or {}).keys())
    if manifest_file.name == DIR_MANIFEST:
        return {name: manifest_file.parent / name for name in names}
    if manifest_file.name.endswith(MANIFEST_SUFFIX) and len(names) == 1:
        return {names[0]: manifest_file.with_name(manifest_file.name[: -len(MANIFEST_SUFFIX)])}
    return {}


def _compare(
    name: str, path: Path, record: Mapping[str, Any], known: KnownFiles, *, content: bool
) -> Change | None:
    """How the file at ``path`` differs from ``record`` (None: it does not). ``content``:
    judge a changed mtime by content (inputs), else by the stat alone (outputs)."""
    try:
        st = path.stat()
    except OSError:
        return Change(name, str(path), "is gone")
    if st.st_size != record.get("size"):
        before, now = _size(record.get("size")), _size(st.st_size)
        if before == now:
            before, now = f"{record.get('size')} B", f"{st.st_size} B"
        return Change(name, str(path), f"changed ({before} -> {now})")
    if st.st_mtime_ns == record.get("mtime_ns"):
        return None
    if not content:
        return Change(name, str(path), "was rewritten since")
    sha = known.sha256(path, st.st_size, st.st_mtime_ns)
    if sha is None and st.st_size <= HASH_LIMIT:
        sha = sha256_file(path)
    if sha is None:
        return Change(name, str(path), "was modified (same size)", certain=False)
    return None if sha == record.get("sha256") else Change(name, str(path), "changed (content)")


def survey(manifest_file: Path, data: Mapping[str, Any], known: KnownFiles) -> Survey:
    """The state of the output ``manifest_file`` vouches for (module docstring)."""
    changes: list[Change] = []
    outputs = output_paths(manifest_file, data)
    recorded_out = data.get("outputs") or {}
    for name, path in outputs.items():
        change = _compare(name, path, recorded_out[name], known, content=False)
        if change:
            changes.append(change)
    if manifest_file.name == DIR_MANIFEST:
        added = sorted(set(list_files(manifest_file.parent)) - set(recorded_out))
        if added:
            changes.append(Change(added[0], str(manifest_file.parent / added[0]), "was added"))
    recorded_in = data.get("inputs") or {}
    paths = data.get("input_paths")
    if not isinstance(paths, Mapping):
        return _verdict(changes, "its manifest predates input paths (any run of export adds them)")
    located = relocated(paths, data.get("written_in"), manifest_file)
    for name, record in recorded_in.items():
        if name not in located or not isinstance(record, Mapping):
            continue
        change = _compare(name, located[name], record, known, content=True)
        if change:
            changes.append(change)
    return _verdict(changes)


def relocated(paths: Mapping[str, Any], written_in: Any, manifest_file: Path) -> dict[str, Path]:
    """The recorded input paths, moved with the project: when the manifest is no longer
    where it was written, the folders the two places do not share (``/old/p`` of
    ``/old/p/gguf_models/cap`` and ``/new/q`` of ``/new/q/gguf_models/cap``) are the project
    moved; inputs that were inside it are looked for at the new place, others where they
    were."""
    now = Path(os.path.abspath(manifest_file.parent))
    found = {name: Path(str(path)) for name, path in paths.items()}
    if not isinstance(written_in, str) or Path(written_in) == now:
        return found
    old, new = Path(written_in).parts, now.parts
    shared = 0
    while shared < min(len(old), len(new)) - 1 and old[-1 - shared] == new[-1 - shared]:
        shared += 1
    old_root, new_root = Path(*old[: len(old) - shared]), Path(*new[: len(new) - shared])
    return {
        name: new_root / path.relative_to(old_root) if path.is_relative_to(old_root) else path
        for name, path in found.items()
    }


def _verdict(changes: Iterable[Change], unknown_reason: str = "") -> Survey:
    found = tuple(changes)
    certain = [c for c in found if c.certain]
    if certain:
        return Survey(STALE, found, "; ".join(c.describe() for c in certain[:3]))
    if found:
        return Survey(UNKNOWN, found, "; ".join(c.describe() for c in found[:3]))
    if unknown_reason:
        return Survey(UNKNOWN, (), unknown_reason)
    return Survey(UP_TO_DATE)


def _size(n: Any) -> str:
    return human_size(n if isinstance(n, int) else None)
