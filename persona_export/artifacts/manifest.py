"""Manifests: what a stage records about an output it wrote.

A manifest says which inputs (by content hash) and options an output was made from and what
the output was when written. A stage trusts an existing output only when its manifest still
matches: same options, inputs with the same content (hashes are cached by size and mtime, so
an unchanged multi-GB input costs a ``stat``), outputs unchanged since they were written.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_export import __version__
from persona_export.artifacts.files import MANIFEST_SUFFIX, FileRecord, read_json, record_file


@dataclass(frozen=True)
class Manifest:
    """What a stage records about one output.

    ``inputs`` and ``outputs`` map a name to a file record; ``options`` is any JSON-able
    dict that changes the output when it changes; ``extra`` holds the stage's figures.
    ``input_paths`` says where each input was (absolute) and ``written_in`` where the
    manifest was written, so that ``status`` can compare each input with the file there now
    by a ``stat``, also in a project folder that was moved since (artifacts/survey.py); they
    are not part of what makes an output up to date.
    """

    stage: str
    options: Mapping[str, Any]
    inputs: Mapping[str, FileRecord]
    outputs: Mapping[str, FileRecord]
    seconds: float
    extra: Mapping[str, Any]
    input_paths: Mapping[str, Path] = field(default_factory=dict)
    written_in: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "persona_export_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(self.seconds, 3),
            "options": dict(self.options),
            "inputs": {k: v.to_json() for k, v in self.inputs.items()},
            "outputs": {k: v.to_json() for k, v in self.outputs.items()},
            **(input_locations(self.input_paths, self.written_in) if self.input_paths else {}),
            **dict(self.extra),
        }


def input_locations(paths: Mapping[str, Path], written_in: Path | None) -> dict[str, Any]:
    """The manifest keys ``input_paths`` and ``written_in`` (absolute; abspath, not resolve:
    a link the user made stays what they named)."""
    located: dict[str, Any] = {
        "input_paths": {name: os.path.abspath(path) for name, path in paths.items()}
    }
    if written_in is not None:
        located["written_in"] = os.path.abspath(written_in)
    return located


def manifest_path_for(artifact: Path) -> Path:
    """Where the manifest of a file artifact lives (beside it)."""
    return artifact.with_name(artifact.name + MANIFEST_SUFFIX)


def well_formed(data: Any) -> bool:
    """Whether ``data`` has a manifest's shape: a stage name, options an object, inputs and
    outputs objects of file records (objects with a sha256). A manifest edited into another
    shape is not one of ours: it vouches for nothing."""
    if not isinstance(data, dict) or not isinstance(data.get("stage"), str):
        return False
    if not isinstance(data.get("options", {}), dict):
        return False
    for section in ("inputs", "outputs"):
        records = data.get(section, {})
        if not isinstance(records, dict) or not all(
            isinstance(r, dict) and isinstance(r.get("sha256"), str) for r in records.values()
        ):
            return False
    return True


def same_options(recorded: Any, options: Mapping[str, Any]) -> bool:
    """Whether recorded options equal ``options`` once both are JSON."""
    return bool(recorded == json.loads(json.dumps(dict(options))))


def matches(
    data: Mapping[str, Any] | None,
    *,
    options: Mapping[str, Any],
    inputs: Mapping[str, Path],
    outputs: Mapping[str, Path] | None,
    dropped_inputs: Mapping[str, Mapping[str, Any]] | None = None,
) -> bool:
    """True when manifest ``data`` says the outputs were made from these inputs and options
    and nothing has changed since (inputs by content, outputs by size and mtime).

    ``dropped_inputs``: inputs whose files were deliberately dropped (``export --keep``),
    known by the record their producer's manifest kept: they match on the recorded sha256.
    ``outputs=None``: the outputs are not checked (a dropped output's manifest, whose
    outputs are gone on purpose).
    """
    if data is None or not well_formed(data) or not same_options(data.get("options"), options):
        return False
    dropped = dict(dropped_inputs or {})
    recorded_in = data.get("inputs", {})
    recorded_out = data.get("outputs", {})
    if set(recorded_in) != set(inputs) | set(dropped):
        return False
    for name, record in dropped.items():
        if recorded_in[name].get("sha256") != record.get("sha256"):
            return False
    if outputs is not None and not _outputs_unchanged(recorded_out, outputs):
        return False
    for name, path in inputs.items():
        try:
            if record_file(path, recorded_in[name]).sha256 != recorded_in[name].get("sha256"):
                return False
        except OSError:
            return False
    return True


def _outputs_unchanged(recorded: Mapping[str, Any], outputs: Mapping[str, Path]) -> bool:
    """The outputs are the recorded ones, with the recorded sizes and mtimes."""
    if set(recorded) != set(outputs):
        return False
    for name, path in outputs.items():
        try:
            st = path.stat()
        except OSError:
            return False
        if st.st_size != recorded[name].get("size") or st.st_mtime_ns != recorded[name].get(
            "mtime_ns"
        ):
            return False
    return True


def is_fresh(
    manifest_file: Path,
    *,
    options: Mapping[str, Any],
    inputs: Mapping[str, Path],
    outputs: Mapping[str, Path],
) -> bool:
    """:func:`matches` for the manifest stored at ``manifest_file``."""
    return matches(read_json(manifest_file), options=options, inputs=inputs, outputs=outputs)


def known_records(manifest_file: Path, section: str, root: Path | None = None) -> dict[str, Any]:
    """The file records a manifest holds in ``section`` ("inputs" or "outputs"), usable as
    the ``known`` hash cache of :func:`record_file` (trusted only when size and mtime match).
    With ``root``, keys that are paths are made relative to it."""
    data = read_json(manifest_file) or {}
    records = data.get(section)
    if not isinstance(records, dict):
        return {}
    known: dict[str, Any] = {}
    for key, rec in records.items():
        if not isinstance(rec, dict) or "sha256" not in rec:
            continue
        known[key] = rec
        if root is not None:
            path = Path(key)
            try:
                rel = (path if path.is_absolute() else Path.cwd() / path).relative_to(
                    root.resolve()
                )
            except ValueError:
                continue
            known.setdefault(rel.as_posix(), rec)
    return known
