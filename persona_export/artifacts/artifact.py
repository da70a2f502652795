"""The one answer to "is this output up to date?", and the one way outputs are written.

A stage declares an :class:`Artifact`: the output (a file, or a folder), the options and
inputs it is made from, the inputs it must never overwrite, and hash hints other manifests
already hold. The artifact then answers :meth:`~Artifact.fresh`, writes atomically
(:meth:`~Artifact.write`: a temporary sibling, renamed into place only when complete) and
records the manifest.

What an artifact may replace: only an output that carries our manifest for the same stage
(or one of our own temporaries). Anything else in the way (a user's folder, a file persona-
export did not write, files a user added to one of our folders, an output that is, contains
or sits inside an input) is refused with a one-line error before anything is written.

File outputs: the manifest (which records the temporary file's size and mtime, kept by the
rename) is written *before* the file is renamed into place, so a file never sits at its
final name without the manifest that vouches for it; an interruption between the two leaves
a manifest that no longer matches, and the next run redoes the work.

Dropped outputs (``export --keep``): :meth:`Artifact.drop` deletes an intermediate output's
files (all, or the big ones: a merged folder keeps its config and tokenizer) once nothing
downstream needs them and keeps its manifest as a *tombstone*, marked ``"dropped"`` with
the names of the files it dropped, still recording every output's hash. The rule that keeps a no-op re-run a
no-op: a stage whose input was dropped compares the hashes the tombstone recorded with the
ones its own manifest recorded for that input (``dropped_inputs``); equal means its output
was made from exactly what was dropped, so it is up to date without the files. A stage
whose output was dropped is up to date, when its caller accepts that
(:meth:`Artifact.dropped_fresh`), if its options and inputs are unchanged. Anything that
must actually read a dropped input raises
:class:`~persona_export.errors.DroppedInputError` naming the stage that rebuilds it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_export.artifacts.atomic import atomic_dir, remove_stale_temporaries, temp_sibling
from persona_export.artifacts.files import (
    DIR_MANIFEST,
    FileRecord,
    list_files,
    read_json,
    record_file,
    write_json_atomic,
)
from persona_export.artifacts.hashing import BackgroundRecords
from persona_export.artifacts.manifest import (
    Manifest,
    input_locations,
    manifest_path_for,
    matches,
    well_formed,
)
from persona_export.errors import OutputConflictError

DROPPED = "dropped"  # the manifest key that makes a manifest a tombstone


@dataclass(frozen=True)
class Artifact:
    """One output of a stage and the manifest that says it is complete.

    ``path``: the output file or (``folder=True``) folder. ``output_name``: the key of a file
    output in the manifest. ``manifest_file``: defaults to ``persona_export_manifest.json``
    inside a folder and ``<file>.manifest.json`` beside a file; a report that *is* its own
    manifest (verify.json) sets it to ``path``. ``protected``: inputs the output must not be,
    contain or sit inside. ``known``: hash hints (name -> recorded FileRecord JSON), trusted
    only while the file's size and mtime are unchanged. ``owner_markers``: other file names
    inside a folder that prove an older persona-export wrote it.
    """

    stage: str
    path: Path
    options: Mapping[str, Any]
    inputs: Mapping[str, Path]
    folder: bool = False
    output_name: str = "output"
    manifest_file: Path | None = None
    protected: Sequence[Path] = ()
    known: Mapping[str, Any] = field(default_factory=dict)
    owner_markers: Sequence[str] = ()
    dropped_inputs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def manifest(self) -> Path:
        if self.manifest_file is not None:
            return self.manifest_file
        return self.path / DIR_MANIFEST if self.folder else manifest_path_for(self.path)

    @property
    def is_report(self) -> bool:
        """The output is its own manifest (nothing else is written)."""
        return self.manifest == self.path

    def recorded(self) -> dict[str, Any] | None:
        """The manifest as it is on disk (None: absent, unreadable or not of a manifest's
        shape; see :func:`~persona_export.artifacts.manifest.well_formed`)."""
        data = read_json(self.manifest)
        return data if well_formed(data) else None

    def current_outputs(self) -> dict[str, Path]:
        """The output files as they are now, under the names the manifest uses."""
        if self.is_report:
            return {}
        if self.folder:
            return list_files(self.path) if self.path.is_dir() else {}
        return {self.output_name: self.path}

    def fresh(self, *, force: bool = False) -> bool:
        """Whether the output exists and its manifest matches these options and inputs
        (inputs by content, hashes cached by size and mtime; outputs by size and mtime)."""
        if force or not (self.path.is_dir() if self.folder else self.path.is_file()):
            return False
        recorded = self.recorded()
        if not matches(
            recorded,
            options=self.options,
            inputs=self.inputs,
            outputs=self.current_outputs(),
            dropped_inputs=self.dropped_inputs,
        ):
            return False
        assert recorded is not None
        self._add_input_paths(recorded)
        return True

    def _add_input_paths(self, recorded: dict[str, Any]) -> None:
        """Record where the inputs are in an up-to-date manifest written before manifests
        said so (once), so that ``status`` can check it by ``stat`` from then on. Nothing
        that makes the output up to date changes; a manifest that cannot be written (a
        read-only folder) is left as it is."""
        if "input_paths" in recorded:
            return
        located = input_locations(self.inputs, self.manifest.parent)
        with contextlib.suppress(OSError):
            write_json_atomic(self.manifest, {**recorded, **located})

    def dropped_fresh(self, *, force: bool = False) -> bool:
        """Whether the output was deliberately dropped (its manifest is a tombstone), the
        files it kept are as recorded, and it would be made again from the same options and
        inputs: up to date without the dropped files."""
        recorded = self.recorded()
        if force or recorded is None or not recorded.get(DROPPED):
            return False
        dropped = set(_dropped_names(recorded))
        outputs = recorded.get("outputs") or {}
        if any(p.exists() for p in self._paths(dropped)):
            return False  # partly there: not a clean tombstone, make it again
        kept = {n: p for n, p in self.current_outputs().items() if n not in dropped}
        if set(kept) != set(outputs) - dropped:
            return False
        return matches(
            recorded,
            options=self.options,
            inputs=self.inputs,
            outputs=None,
            dropped_inputs=self.dropped_inputs,
        ) and _stats_match({n: outputs[n] for n in kept}, kept)

    def _paths(self, names: Iterable[str]) -> list[Path]:
        if self.folder:
            return [self.path / name for name in names]
        return [self.path] if list(names) else []

    def drop(self, reason: str, *, select: Callable[[str], bool] = lambda name: True) -> int:
        """Delete the output files ``select`` picks (by manifest name; default: all) and keep
        the manifest as a tombstone naming them (see the module docstring); returns the bytes
        freed. Only files the manifest records are deleted, and only while every output is
        as recorded: an output that changed, or a folder holding files persona-export did
        not write, raises OutputConflictError and stays."""
        recorded = self.recorded()
        if recorded is None or recorded.get("stage") != self.stage:
            raise OutputConflictError(
                f"{self.path} has no {self.stage} manifest; it was not dropped",
                "remove it yourself if you do not need it",
            )
        if recorded.get(DROPPED):
            return 0
        outputs = recorded.get("outputs") or {}
        current = self.current_outputs()
        if set(current) != set(outputs) or not _stats_match(outputs, current):
            raise OutputConflictError(
                f"{self.path} is not what its manifest records (changed, or holds other "
                "files); it was not dropped",
                "remove it yourself if you do not need it",
            )
        names = sorted(n for n in outputs if select(n))
        paths = self._paths(names)
        freed = sum(p.stat().st_size for p in paths)
        marker = {"reason": reason, "files": names, "bytes": freed, "at": _now()}
        write_json_atomic(self.manifest, {**recorded, DROPPED: marker})
        for path in paths:
            path.unlink(missing_ok=True)
        if self.folder:
            for sub in sorted((p for p in self.path.rglob("*") if p.is_dir()), reverse=True):
                with contextlib.suppress(OSError):
                    sub.rmdir()  # empty subfolders only
        return freed

    # -- replacing safely -----------------------------------------------------------------

    def check_writable(self) -> None:
        """Raise :class:`OutputConflictError` unless the output may be written: it neither
        is, contains nor sits inside a protected input, and whatever is at its place now is
        ours (see the module docstring)."""
        target = _resolved(self.path)
        for protected in self.protected:
            other = _resolved(protected)
            if target == other or other.is_relative_to(target) or target.is_relative_to(other):
                relation = (
                    "is"
                    if target == other
                    else "contains"
                    if other.is_relative_to(target)
                    else "sits inside"
                )
                raise OutputConflictError(
                    f"the {self.stage} output {self.path} {relation} its input {protected}; "
                    "nothing was written",
                    "choose output folders apart from the base model and the adapters "
                    "(--output-dir-base, --gguf-dir)",
                )
        if not (self.path.exists() or self.path.is_symlink()):
            return
        problem = self._foreign()
        if problem:
            raise OutputConflictError(
                f"{self.path} {problem}; persona-export replaces only what it wrote, so it was "
                "left untouched",
                "move it out of the way (or choose another output folder), then run again",
            )

    def _foreign(self) -> str | None:
        """Why what sits at ``path`` is not ours to replace (None: it is ours)."""
        if self.path.is_symlink():
            return "is a symbolic link"
        if self.folder != self.path.is_dir():
            return "is a folder" if self.path.is_dir() else "is a file, not a folder"
        recorded = self.recorded()
        if recorded is None or recorded.get("stage") != self.stage:
            if self.folder and any((self.path / m).is_file() for m in self.owner_markers):
                return None
            what = "no readable manifest" if recorded is None else "another stage's manifest"
            return f"exists and was not written by the {self.stage} stage ({what})"
        if self.folder:
            ours = set((recorded.get("outputs") or {}).keys())
            added = sorted(set(list_files(self.path)) - ours)
            if added:
                shown = ", ".join(added[:3]) + (f" and {len(added) - 3} more" if added[3:] else "")
                return f"holds files persona-export did not write ({shown})"
        return None

    def clean_temporaries(self) -> list[Path]:
        """Remove what interrupted runs left beside the output (their writers are gone)."""
        return remove_stale_temporaries(self.path.parent, self.path.name)

    # -- writing --------------------------------------------------------------------------

    def hash_inputs(self) -> BackgroundRecords:
        """Start fingerprinting the inputs in a thread (hash hints: ``known``, then the
        previous manifest's inputs)."""
        recorded = (self.recorded() or {}).get("inputs")
        known = {**(recorded if isinstance(recorded, dict) else {}), **dict(self.known)}
        return BackgroundRecords(self.inputs, known)

    @contextlib.contextmanager
    def write(self) -> Iterator[Writing]:
        """Check the output may be written, clean stale temporaries, and yield a
        :class:`Writing` whose ``tmp`` the stage fills and whose :meth:`Writing.record` it
        calls when the output is complete; on success the output is renamed into place.
        On an exception nothing is left behind and the old output stays as it was."""
        self.check_writable()
        self.clean_temporaries()
        started = time.monotonic()
        if self.is_report:
            writing = Writing(self, self.path, started)
            yield writing
            writing.require_recorded()
            return
        if self.folder:
            with atomic_dir(self.path) as tmp:
                writing = Writing(self, tmp, started)
                yield writing
                writing.require_recorded()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_sibling(self.path, "partial")
        writing = Writing(self, tmp, started)
        try:
            yield writing
            writing.require_recorded()
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


class Writing:
    """An output being written: ``tmp`` is where it goes; :meth:`record` writes the
    manifest once it is complete."""

    def __init__(self, artifact: Artifact, tmp: Path, started: float) -> None:
        self.artifact = artifact
        self.tmp = tmp
        self.started = started
        self.manifest: dict[str, Any] | None = None

    def record(
        self,
        inputs: Mapping[str, FileRecord],
        *,
        extra: Mapping[str, Any],
        outputs: Mapping[str, FileRecord] | None = None,
        seconds: float | None = None,
    ) -> dict[str, Any]:
        """Write the manifest: ``inputs`` as hashed, the outputs (given records, the rest
        fingerprinted from ``tmp`` now), the options, the time and ``extra``."""
        artifact = self.artifact
        recorded = dict(outputs or {})
        if artifact.folder:
            for name, path in list_files(self.tmp).items():
                if name not in recorded:
                    recorded[name] = record_file(path)
        elif not artifact.is_report and artifact.output_name not in recorded:
            recorded[artifact.output_name] = record_file(self.tmp)
        manifest = Manifest(
            stage=artifact.stage,
            options=artifact.options,
            inputs=inputs,
            outputs=recorded,
            seconds=time.monotonic() - self.started if seconds is None else seconds,
            extra=extra,
            input_paths={k: p for k, p in artifact.inputs.items() if k in inputs},
            written_in=artifact.manifest.parent,
        ).to_json()
        target = self.tmp / DIR_MANIFEST if artifact.folder else artifact.manifest
        write_json_atomic(target, manifest)
        self.manifest = manifest
        return manifest

    def require_recorded(self) -> None:
        if self.manifest is None:
            raise RuntimeError(f"{self.artifact.stage}: the output was not recorded")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _dropped_names(recorded: Mapping[str, Any]) -> list[str]:
    marker = recorded.get(DROPPED)
    files = marker.get("files") if isinstance(marker, dict) else None
    return [str(n) for n in files] if isinstance(files, list) else []


def _stats_match(recorded: Mapping[str, Any], current: Mapping[str, Path]) -> bool:
    """Each current file has the size and mtime its record says."""
    for name, path in current.items():
        try:
            st = path.stat()
        except OSError:
            return False
        if (st.st_size, st.st_mtime_ns) != (
            recorded[name].get("size"),
            recorded[name].get("mtime_ns"),
        ):
            return False
    return True


def dropped_outputs(manifest: Path) -> dict[str, Any] | None:
    """The records a tombstone keeps of the files it dropped (name -> FileRecord JSON), or
    None when the manifest at ``manifest`` is absent or not a tombstone."""
    recorded = read_json(manifest)
    if recorded is None or not recorded.get(DROPPED):
        return None
    outputs = recorded.get("outputs") or {}
    return {n: outputs[n] for n in _dropped_names(recorded) if n in outputs}


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))
