"""The card stage: make ``gguf_models/<persona>/`` a ready Hugging Face GGUF repository.

Writes, beside the GGUFs and the Modelfile:

* ``README.md``: the model card (:mod:`persona_export.hf.model_card`), from the merged
  card's facts (recorded in the merge manifest: persona, base, licence, adapter), the GGUF
  and quantize manifests (types, sizes, bits per weight, llama.cpp commit), the Modelfile
  (SYSTEM, stops, parameters) and, when verify passed on exactly these files, its figures;
* ``template``, ``system``, ``params``: what Ollama reads from a Hub repository in place of
  a Modelfile (:mod:`persona_export.ollama.hub_files`), written from the Modelfile.

Each file is its own :class:`~persona_export.artifacts.Artifact` (``<file>.manifest.json``
beside it, like the GGUFs and the Modelfile), so each is atomic, skipped when up to date and
never put over a file persona-export did not write. The stage runs after verify in the
chain; it reads, never changes, what the other stages wrote. ``push`` uploads these files
and renders the card again for the repository it pushes to.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export import __version__, console
from persona_export.artifacts import (
    DIR_MANIFEST,
    Artifact,
    manifest_path_for,
    persona_lock,
    read_json,
    sha256_bytes,
)
from persona_export.errors import InputNotFoundError
from persona_export.hf.model_card import CARD_NAME, render_card
from persona_export.layout import Layout
from persona_export.ollama.hub_files import HUB_FILES, hub_files
from persona_export.ollama.modelfile import Modelfile
from persona_export.stages.base import StageConfig, StageResult, Status
from persona_export.verify.report import certify

STAGE = "card"
GGUF_STAGES = ("gguf", "quantize")


@dataclass(frozen=True)
class CardConfig(StageConfig):
    """Which persona's GGUF folder to complete (nothing else to choose)."""


@dataclass(frozen=True)
class CardResult(StageResult):
    """The card and Hub files written (or found up to date), and what the card says."""

    card: Path
    hub_files: tuple[Path, ...]
    facts: dict[str, Any]
    verified: bool  # the card carries verify's figures


@dataclass(frozen=True)
class CardPlan:
    """What the GGUF folder should hold: file name -> bytes, the card's facts, the inputs
    they were made from, and notes (why the card has no figures)."""

    payloads: dict[str, bytes]
    facts: dict[str, Any]
    inputs: dict[str, Path]
    notes: list[str]

    def artifacts(self, layout: Layout, persona: str) -> dict[str, Artifact]:
        folder = layout.gguf_dir(persona)
        return {
            name: Artifact(
                stage=STAGE,
                path=folder / name,
                output_name=name,
                options={"sha256": sha256_bytes(payload)},
                inputs=self.inputs,
                protected=(layout.merged(persona), layout.adapter(persona)),
            )
            for name, payload in self.payloads.items()
        }

    def up_to_date(self, layout: Layout, persona: str) -> bool:
        """Every file is on disk with these bytes and its manifest matches."""
        return all(
            artifact.fresh() and artifact.path.read_bytes() == self.payloads[name]
            for name, artifact in self.artifacts(layout, persona).items()
        )


def ggufs(layout: Layout, persona: str) -> list[tuple[Path, dict[str, Any]]]:
    """The persona's GGUFs that the gguf or quantize stage wrote, with their manifests."""
    found = []
    for path in sorted(layout.gguf_dir(persona).glob(f"{persona}-*.gguf")):
        manifest = read_json(manifest_path_for(path))
        if manifest is not None and manifest.get("stage") in GGUF_STAGES:
            found.append((path, manifest))
    return found


def plan(layout: Layout, persona: str) -> CardPlan:
    """Read what the other stages wrote and decide the card and Hub files (writes nothing).
    Raises :class:`InputNotFoundError` when the merge's card facts or the Modelfile are
    missing."""
    merged_manifest = layout.merged(persona) / DIR_MANIFEST
    merged = read_json(merged_manifest) or {}
    if not isinstance(merged.get("card"), dict):
        raise InputNotFoundError(
            f"{merged_manifest} has no model card facts (no merged model, or one merged by an "
            "older persona-export)",
            f"merge again: persona-export merge --persona {persona} --force",
        )
    modelfile_path = layout.modelfile(persona)
    modelfile = Modelfile.read(modelfile_path)
    gguf = modelfile.require_gguf()
    found = ggufs(layout, persona)
    quants = [
        {
            "file": path.name,
            "type": str(m.get("quant_type") or m.get("file_type") or path.stem.split("-")[-1]),
            "size": path.stat().st_size,
            "bits_per_weight": float(m.get("bits_per_weight") or 0.0),
        }
        for path, m in found
    ]
    inputs: dict[str, Path] = {"merged manifest": merged_manifest, "modelfile": modelfile_path}
    inputs |= {f"gguf/{manifest_path_for(p).name}": manifest_path_for(p) for p, _ in found}
    report = layout.verify_report(persona)
    if report.is_file():
        inputs["verify"] = report
    vouched = {"modelfile": modelfile_path, **{f"gguf/{p.name}": p for p, _ in found}}
    certificate = certify(report, vouched)
    notes = [] if certificate.ok else [f"the card has no verify figures: {certificate.problems[0]}"]
    commits = {str(m.get("llama_cpp_commit")) for _, m in found if m.get("llama_cpp_commit")}
    written = read_json(manifest_path_for(modelfile_path)) or {}  # the modelfile stage's
    facts = {
        **merged["card"],
        "kind": "gguf",
        "tool_version": __version__,
        "llama_cpp_commit": ", ".join(sorted(commits)) or "unknown",
        "quants": quants,
        "default_quant": gguf.name[len(persona) + 1 : -len(".gguf")],
        "model_name": written.get("model_name") or persona,
        "format": written.get("format") or "custom",
        "stops": list(modelfile.stops),
        "parameters": dict(modelfile.parameters),
        "system": modelfile.system,  # what Ollama runs (the merge recorded the persona's)
        "verify": {"checks": [dict(c) for c in certificate.checks]} if certificate.ok else None,
    }
    payloads = {CARD_NAME: render_card(facts).encode("utf-8"), **hub_files(modelfile)}
    return CardPlan(payloads, facts, inputs, notes)


def run(config: CardConfig) -> CardResult:
    """Write the persona's card and Hub files into its GGUF folder (or find them up to
    date); remove Hub files of ours the Modelfile no longer calls for (a SYSTEM removed)."""
    started = time.monotonic()
    persona, layout = config.persona, config.layout
    with persona_lock(layout.lock_file(persona), on_wait=console.info):
        planned = plan(layout, persona)
        written = 0
        for name, artifact in planned.artifacts(layout, persona).items():
            payload = planned.payloads[name]
            if artifact.fresh(force=config.force) and artifact.path.read_bytes() == payload:
                continue
            with artifact.write() as writing:
                writing.tmp.write_bytes(payload)
                writing.record(
                    artifact.hash_inputs().result(),
                    extra={"persona": persona, "facts": planned.facts},
                )
            written += 1
        removed = _remove_unwanted(layout, persona, planned)
    for note in planned.notes:
        console.info(note)
    folder = layout.gguf_dir(persona)
    outputs = tuple(folder / name for name in planned.payloads)
    verified = planned.facts["verify"] is not None
    return CardResult(
        stage=STAGE,
        persona=persona,
        status=Status.DONE if written or removed else Status.UP_TO_DATE,
        outputs=outputs,
        figures={"files": sorted(planned.payloads), "verified": verified},
        notes=tuple(planned.notes),
        seconds=time.monotonic() - started,
        detail=f"README.md and {', '.join(n for n in HUB_FILES if n in planned.payloads)}"
        + ("" if verified else " (no verify figures)"),
        card=folder / CARD_NAME,
        hub_files=tuple(folder / n for n in HUB_FILES if n in planned.payloads),
        facts=planned.facts,
        verified=verified,
    )


def _remove_unwanted(layout: Layout, persona: str, planned: CardPlan) -> int:
    removed = 0
    for name in HUB_FILES:
        path = layout.gguf_dir(persona) / name
        manifest = manifest_path_for(path)
        if name in planned.payloads or not path.is_file():
            continue
        if (read_json(manifest) or {}).get("stage") == STAGE:
            path.unlink()
            manifest.unlink(missing_ok=True)
            removed += 1
    return removed
