"""``persona-export status``: every persona found in the adapter folder and the output folders,
and for each, which stages are up to date, stale (and what changed) or never run, with their
sizes, the Modelfile's quantization, verify's verdict and key figures, and whether the
Ollama model is registered.

Read-only and fast: it reads the manifests the stages wrote and compares the files they
recorded with the files there now by ``stat`` (:mod:`persona_export.artifacts.survey`;
never hashing a big file). A stage is stale when one of its own files changed, or when it
read the output of a stage that is stale (found through the paths its manifest recorded),
so a changed adapter makes merge and everything after it stale. Options are not compared:
an export with other options (another ``--quant``) redoes what they change.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_export.artifacts import DIR_MANIFEST, MANIFEST_SUFFIX, read_json
from persona_export.artifacts.survey import (
    MISSING,
    STALE,
    UNKNOWN,
    UP_TO_DATE,
    KnownFiles,
    Survey,
    output_paths,
    relocated,
    survey,
)
from persona_export.layout import Layout
from persona_export.stages import status_details as details
from persona_export.stages.base import output_bytes

CHAIN = ("merge", "gguf", "quantize", "modelfile", "verify", "card")
_RANK = {UP_TO_DATE: 0, MISSING: 1, UNKNOWN: 2, STALE: 3}


@dataclass(frozen=True)
class StatusConfig:
    """Which folders to look in, which personas (None: every one found), and whether to ask
    Ollama which models it has."""

    layout: Layout = field(default_factory=Layout)
    personas: tuple[str, ...] | None = None
    ollama: bool = True


@dataclass(frozen=True)
class StageStatus:
    """One stage of one persona: its state (up to date, stale, unknown, missing), why, its
    outputs and their size, a one-line detail and the figures its manifests recorded."""

    stage: str
    state: str
    reason: str = ""
    changed: tuple[str, ...] = ()
    outputs: tuple[Path, ...] = ()
    detail: str = ""
    figures: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        sizes = {str(p): output_bytes(p) for p in self.outputs}
        return {
            "stage": self.stage,
            "state": self.state,
            "reason": self.reason,
            "changed": list(self.changed),
            "outputs": [str(p) for p in self.outputs],
            "output_bytes": sizes,
            "detail": self.detail,
            "figures": dict(self.figures),
        }


@dataclass(frozen=True)
class PersonaStatus:
    """Everything ``status`` knows about one persona."""

    persona: str
    adapter: Path | None  # None: no adapter folder
    stages: tuple[StageStatus, ...]
    quant: str | None  # the quantization the Modelfile uses
    model_name: str | None
    registered: bool | None  # None: Ollama not asked or not reachable
    verify: Mapping[str, Any] | None

    def stage(self, name: str) -> StageStatus:
        return next(s for s in self.stages if s.stage == name)

    def to_json(self) -> dict[str, Any]:
        return {
            "persona": self.persona,
            "adapter": str(self.adapter) if self.adapter else None,
            "quant": self.quant,
            "ollama_name": self.model_name,
            "registered": self.registered,
            "verify": dict(self.verify) if self.verify is not None else None,
            "stages": [s.to_json() for s in self.stages],
        }


@dataclass(frozen=True)
class StatusResult:
    """Every persona's status and what Ollama said (None: not asked)."""

    personas: tuple[PersonaStatus, ...]
    ollama: details.OllamaStatus | None
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "personas": [p.to_json() for p in self.personas],
            "ollama": self.ollama.to_json() if self.ollama else None,
        }


def personas_found(layout: Layout) -> list[str]:
    """Personas with an adapter, a merged folder or a GGUF folder, sorted."""
    found = set(layout.personas_with_adapters())
    for base in (layout.merged_base, layout.gguf_base):
        if base.is_dir():
            found |= {p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return sorted(found)


@dataclass
class _Unit:
    """One manifest of one stage (quantize has one per type)."""

    stage: str
    manifest: Path
    data: Mapping[str, Any]
    survey: Survey = field(default_factory=lambda: Survey(UP_TO_DATE))


def _units(layout: Layout, persona: str) -> list[_Unit]:
    """The manifests of ``persona``'s outputs, in chain order."""
    candidates = [layout.merged(persona) / DIR_MANIFEST]
    gguf_dir = layout.gguf_dir(persona)
    if gguf_dir.is_dir():  # the GGUFs', the Modelfile's and the card files' manifests
        candidates += sorted(gguf_dir.glob(f"*{MANIFEST_SUFFIX}"))
    candidates += [layout.verify_report(persona)]
    units = []
    for path in dict.fromkeys(candidates):
        data = read_json(path)
        if data is not None and data.get("stage") in CHAIN:
            units.append(_Unit(str(data["stage"]), path, data))
    units.sort(key=lambda u: CHAIN.index(u.stage))
    return units


def _judge(units: list[_Unit]) -> None:
    """Each unit's survey; then, in chain order, a unit that read the output of a stale (or
    unknown) unit is stale (or unknown) too, naming that stage."""
    known = KnownFiles()
    for unit in units:
        known.add(unit.manifest, unit.data)
    produced: dict[str, _Unit] = {}
    for unit in units:
        unit.survey = survey(unit.manifest, unit.data, known)
        paths = relocated(
            unit.data.get("input_paths") or {}, unit.data.get("written_in"), unit.manifest
        )
        upstream = {
            produced[p].stage: produced[p]
            for p in map(str, paths.values())
            if p in produced and produced[p].survey.state in (STALE, UNKNOWN)
        }
        if upstream:  # the earliest stage it read from that is stale: the cause
            name, before = min(upstream.items(), key=lambda item: CHAIN.index(item[0]))
            state = max((u.survey.state for u in upstream.values()), key=_RANK.__getitem__)
            if _RANK[state] >= _RANK[unit.survey.state]:
                reason = f"after {name}, which is {before.survey.state}"
                if unit.survey.reason and unit.survey.state == state:
                    reason = f"{unit.survey.reason}; {reason}"
                unit.survey = Survey(state, unit.survey.changes, reason)
        for path in output_paths(unit.manifest, unit.data).values():
            produced[os.path.abspath(path)] = unit


def _stage_status(stage: str, units: list[_Unit]) -> StageStatus:
    """One row: the worst state of the stage's units, their reasons, outputs and detail."""
    if not units:
        return StageStatus(stage, MISSING, "not run yet")
    worst = max(units, key=lambda u: _RANK[u.survey.state]).survey.state
    # each unit's reason is "a; b": the parts, each once, in the order found
    parts = [
        part
        for u in units
        if u.survey.state == worst and u.survey.reason
        for part in u.survey.reason.split("; ")
    ]
    changed = tuple(c.name for u in units for c in u.survey.changes)
    outputs = tuple(details.output_of(u.manifest, u.data) for u in units)
    return StageStatus(
        stage,
        worst,
        "; ".join(dict.fromkeys(parts)),
        tuple(dict.fromkeys(changed)),
        outputs,
        details.detail(stage, [u.data for u in units], outputs),
        details.figures(stage, [u.data for u in units]),
    )


def persona_status(
    layout: Layout, persona: str, ollama: details.OllamaStatus | None
) -> PersonaStatus:
    """The status of one persona (module docstring)."""
    units = _units(layout, persona)
    _judge(units)
    stages = tuple(_stage_status(s, [u for u in units if u.stage == s]) for s in CHAIN)
    modelfile = next((u.data for u in units if u.stage == "modelfile"), None)
    report = next((u.data for u in units if u.stage == "verify"), None)
    quant = (modelfile or {}).get("options", {}).get("quant")
    name = (modelfile or {}).get("model_name")
    registered = ollama.has(name) if ollama is not None and ollama.reachable and name else None
    adapter = layout.adapter(persona)
    return PersonaStatus(
        persona,
        adapter if adapter.is_dir() else None,
        stages,
        quant if isinstance(quant, str) else None,
        name if isinstance(name, str) else None,
        registered,
        details.verdict(report) if report is not None else None,
    )


def run(config: StatusConfig) -> StatusResult:
    """The status of every persona (or those asked for); see the module docstring."""
    started = time.monotonic()
    names = config.personas or tuple(personas_found(config.layout))
    ollama = details.ask_ollama() if config.ollama else None
    personas = tuple(persona_status(config.layout, name, ollama) for name in names)
    return StatusResult(personas, ollama, time.monotonic() - started)
