"""Outputs a stage can trust: atomic writes, manifests, hashing and the persona lock.

* :mod:`~persona_export.artifacts.artifact`: the :class:`Artifact` a stage declares its
  output, options and inputs to; it answers "up to date?", writes atomically and records.
* :mod:`~persona_export.artifacts.manifest`: what a manifest holds and when it matches.
* :mod:`~persona_export.artifacts.files`: file identities (sha256, size, mtime) and JSON.
* :mod:`~persona_export.artifacts.atomic`: temporary names, atomic rename, stale cleanup.
* :mod:`~persona_export.artifacts.hashing`: hashing that overlaps with an external tool.
* :mod:`~persona_export.artifacts.lock`: one writer per persona.
"""

from persona_export.artifacts.artifact import DROPPED, Artifact, Writing, dropped_outputs
from persona_export.artifacts.atomic import (
    LEGACY_TOKFIX,
    LEGACY_VERIFY,
    atomic_dir,
    atomic_file,
    free_space,
    pid_alive,
    remove_legacy_scratch,
    remove_stale_temporaries,
    require_free_space,
    work_dir,
)
from persona_export.artifacts.files import (
    DIR_MANIFEST,
    MANIFEST_SUFFIX,
    FileRecord,
    list_files,
    read_json,
    record_file,
    record_tree,
    sha256_bytes,
    sha256_file,
    write_json_atomic,
)
from persona_export.artifacts.lock import persona_lock
from persona_export.artifacts.manifest import (
    Manifest,
    is_fresh,
    known_records,
    manifest_path_for,
)

__all__ = [
    "DIR_MANIFEST",
    "DROPPED",
    "LEGACY_TOKFIX",
    "LEGACY_VERIFY",
    "MANIFEST_SUFFIX",
    "Artifact",
    "FileRecord",
    "Manifest",
    "Writing",
    "atomic_dir",
    "atomic_file",
    "dropped_outputs",
    "is_fresh",
    "known_records",
    "list_files",
    "manifest_path_for",
    "persona_lock",
    "free_space",
    "pid_alive",
    "read_json",
    "record_file",
    "record_tree",
    "remove_legacy_scratch",
    "remove_stale_temporaries",
    "require_free_space",
    "sha256_bytes",
    "sha256_file",
    "work_dir",
    "write_json_atomic",
]
