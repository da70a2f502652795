"""``export``'s intermediates (stages/export.py): dropping those ``--keep`` leaves out once
nothing needs them (:func:`drop_finished`), and how much disk one persona's outputs take,
now and at the peak of a run (:class:`DiskWatch`), which the summary reports.

The persona's files are everything under ``merged_models/<persona>/`` and
``gguf_models/<persona>/``, plus the temporaries the merge writes beside its folder
(``merged_models/.<persona>.partial-...``). :class:`DiskWatch` adds them up every
:data:`INTERVAL_S` in a thread while the chain runs (a stat per file; links are not
followed), so the peak includes outputs being written next to the ones they replace.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from persona_export import console
from persona_export.artifacts import Artifact, dropped_outputs, persona_lock
from persona_export.artifacts.atomic import size_text
from persona_export.errors import OutputConflictError
from persona_export.layout import Layout
from persona_export.stages.base import StageResult, Status

if TYPE_CHECKING:
    from persona_export.stages.export import ExportConfig

INTERVAL_S = 0.25
KEEPABLE = ("merged", "f16")  # the merged folder, the unquantized GGUF (F16, BF16 or F32)
# the steps that read each intermediate's dropped part (the modelfile stage reads the merged
# folder's tokenizer and license, which are kept)
READERS = {"merged": ("gguf", "verify"), "f16": ("quantize", "verify")}


def _intermediate(
    config: ExportConfig, persona: str, name: str, unquantized: str | None
) -> Artifact | None:
    """The output ``name`` stands for, as its stage declares it (enough to drop it)."""
    layout = config.layout
    if name == "merged":
        return Artifact("merge", layout.merged(persona), {}, {}, folder=True)
    if unquantized:
        return Artifact("gguf", layout.gguf(persona, unquantized), {}, {}, output_name="gguf")
    return None


def _weights(name: str) -> bool:
    return name.endswith(".safetensors")


def _all(name: str) -> bool:
    return True


def drop_finished(config: ExportConfig, persona: str, done: Mapping[str, StageResult]) -> list[str]:
    """Drop each intermediate left out of ``config.keep`` whose readers have all run (or
    will not: verify with --no-verify) and none failed (a failure is looked into with the
    files there); returns what was dropped now, as "name size"."""
    unquantized = getattr(done.get("gguf"), "file_type", None)
    dropped = []
    for name in KEEPABLE:
        if name in config.keep or (name == "f16" and unquantized in config.quants):
            continue  # kept, or itself a GGUF asked for (--quant F16)
        readers = [r for r in READERS[name] if r != "verify" or config.verify]
        if any(r not in done or done[r].status is Status.FAILED for r in readers):
            continue
        artifact = _intermediate(config, persona, name, unquantized)
        if artifact is None or dropped_outputs(artifact.manifest) is not None:
            continue  # nothing made yet, or dropped already
        if not (artifact.path.exists() and artifact.manifest.is_file()):
            continue
        try:
            with persona_lock(config.layout.lock_file(persona), on_wait=console.info):
                # the merged folder keeps its config, tokenizer and license (the Modelfile is
                # made from them), only its weights go
                freed = artifact.drop(
                    "export --keep", select=_weights if name == "merged" else _all
                )
        except OutputConflictError as exc:
            console.warn(f"{exc.message} ({exc.hint})")
            continue
        console.info(f"dropped {artifact.path} ({size_text(freed)}): not in --keep")
        dropped.append(f"{artifact.path.name} {size_text(freed)}")
    return dropped


def _tree_bytes(root: Path) -> int:
    if root.is_symlink():
        return 0
    if root.is_file():
        return root.stat().st_size
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:  # removed while we looked
                continue
            total += st.st_size
    return total


def persona_disk_bytes(layout: Layout, persona: str) -> int:
    """Bytes the persona's outputs (and the merge's temporaries) take on disk now."""
    roots = [layout.merged(persona), layout.gguf_dir(persona)]
    if layout.merged_base.is_dir():
        roots += list(layout.merged_base.glob(f".{persona}.*"))
    return sum(_tree_bytes(root) for root in roots if root.exists())


class DiskWatch:
    """Samples :func:`persona_disk_bytes` in a thread until :meth:`stop`; ``peak`` is the
    largest figure seen, ``now`` the last."""

    def __init__(self, layout: Layout, persona: str) -> None:
        self.layout, self.persona = layout, persona
        self.peak = self.now = persona_disk_bytes(layout, persona)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="disk-watch", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        self.now = persona_disk_bytes(self.layout, self.persona)
        self.peak = max(self.peak, self.now)

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            self._sample()

    def stop(self) -> tuple[int, int]:
        """Stop sampling; returns (bytes now, peak bytes)."""
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.now, self.peak
