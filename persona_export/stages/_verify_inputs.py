"""What the verify stage reads (persona_export/stages/verify.py): the merged model, the
adapter, the base, the GGUFs, the Modelfile, the prompts and bounds, as the files the report
certifies.

An intermediate that ``export --keep`` dropped (the merged model's weights, the unquantized
GGUF) is known by the records its tombstone keeps (artifacts/artifact.py): a passing report made from
exactly those files stays up to date without them; running the checks again needs them back
(:func:`require_present`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export.artifacts import DIR_MANIFEST, dropped_outputs, manifest_path_for, read_json
from persona_export.artifacts.files import is_manifest_name
from persona_export.errors import DroppedInputError, InputNotFoundError
from persona_export.layout import DEFAULT_BASE_MODEL, Layout
from persona_export.verify.data import bounds_path
from persona_export.verify.memory import merged_dtype


@dataclass(frozen=True)
class Sources:
    """Where verify's inputs are; ``dropped``: those export --keep dropped, by report input
    name, with the record their tombstone keeps."""

    merged_dir: Path
    adapter_dir: Path
    source: Path  # the unquantized GGUF
    dropped: Mapping[str, Mapping[str, Any]]
    dropped_parts: tuple[str, ...]  # "the merged model", "<persona>-F16.gguf"

    @property
    def merged_dtype(self) -> str:
        """The merged weights' dtype (from the merge's manifest when the folder was dropped)."""
        if (self.merged_dir / "config.json").is_file():
            return merged_dtype(self.merged_dir)
        options = (read_json(self.merged_dir / DIR_MANIFEST) or {}).get("options") or {}
        return str(options.get("dtype") or "bfloat16")


def find_sources(layout: Layout, persona: str, source_type: str) -> Sources:
    """The merged folder, adapter and unquantized GGUF of ``persona`` (or their tombstones);
    raises InputNotFoundError for one that is neither there nor dropped."""
    merged_dir = layout.merged(persona)
    dropped: dict[str, Mapping[str, Any]] = {}
    parts = []
    merged = dropped_outputs(merged_dir / DIR_MANIFEST)
    if merged is not None:
        dropped.update({f"merged/{name}": rec for name, rec in merged.items()})
        parts.append("the merged model's weights")
    elif not (merged_dir / "config.json").is_file():
        raise InputNotFoundError(
            f"no merged model for {persona} at {merged_dir}",
            f"merge first: persona-export merge --persona {persona}",
        )
    adapter_dir = layout.adapter(persona)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise InputNotFoundError(
            f"no adapter for {persona} at {adapter_dir} (adapter_config.json)",
            "the PEFT check runs base + adapter; give the folder with --adapter-dir",
        )
    source = layout.gguf(persona, source_type)
    gguf = None if source.is_file() else dropped_outputs(manifest_path_for(source))
    if gguf is not None:
        dropped[f"gguf/{source.name}"] = gguf.get("gguf") or {}
        parts.append(source.name)
    elif not source.is_file():
        raise InputNotFoundError(
            f"no {source_type.upper()} GGUF for {persona} at {source}",
            f"convert first: persona-export gguf --persona {persona}",
        )
    return Sources(merged_dir, adapter_dir, source, dropped, tuple(parts))


def require_present(sources: Sources, persona: str, source_type: str) -> None:
    """Raise DroppedInputError when a dropped intermediate is needed to run the checks,
    saying which checks cannot run without it and how to get it back."""
    if not sources.dropped_parts:
        return
    merged = "the merged model's weights" in sources.dropped_parts
    gguf = len(sources.dropped_parts) > int(merged)
    src = source_type.upper()
    cannot = ["peft-vs-merged"] if merged else []
    cannot.append(f"merged-vs-{src}")
    if gguf:
        cannot.append(f"{src}-vs-<quant>")
    rebuild = f"persona-export merge --persona {persona}" if merged else ""
    if gguf:
        rebuild += (" && " if rebuild else "") + f"persona-export gguf --persona {persona}"
    raise DroppedInputError(
        f"verify needs {' and '.join(sources.dropped_parts)}, which export --keep dropped: "
        f"without {'them' if len(sources.dropped_parts) > 1 else 'it'} it cannot check "
        f"{', '.join(cannot)}",
        f"make {'them' if len(sources.dropped_parts) > 1 else 'it'} again: {rebuild} (export "
        "does this by itself, verifies, and drops them again)",
        stage="merge" if merged else "gguf",
    )


def quant_paths(
    layout: Layout, persona: str, source_type: str, quants: tuple[str, ...]
) -> dict[str, Path]:
    """The quantized GGUFs to compare with the unquantized one: those asked for (each must
    exist; ``auto``: the type ``quantize --type auto`` chose), else every
    ``<persona>-<TYPE>.gguf`` there is."""
    source = source_type.upper()
    if quants:
        from persona_export.stages.quantize_auto import resolve_types

        paths = {}
        for quant in resolve_types(layout, persona, quants):
            if quant == source:
                continue
            path = layout.gguf(persona, quant)
            if not path.is_file():
                raise InputNotFoundError(
                    f"no {quant} GGUF for {persona} at {path}",
                    f"make it first: persona-export quantize --persona {persona} --type {quant}",
                )
            paths[quant] = path
        return paths
    prefix = f"{persona}-"
    found = {}
    for path in sorted(layout.gguf_dir(persona).glob(f"{prefix}*.gguf")):
        quant = path.name[len(prefix) : -len(".gguf")].upper()
        if quant != source:
            found[quant] = path
    return found


def base_model(requested: str | None, merged_dir: Path) -> str:
    """The base for the PEFT check: the one asked for, else the one the merge recorded."""
    if requested:
        return requested
    recorded = (read_json(merged_dir / DIR_MANIFEST) or {}).get("base_model")
    return recorded if isinstance(recorded, str) and recorded else DEFAULT_BASE_MODEL


def _files(folder: Path, prefix: str) -> dict[str, Path]:
    # manifests are bookkeeping, not model content (a tombstone rewrites one)
    return {
        f"{prefix}/{p.name}": p
        for p in sorted(folder.iterdir())
        if p.is_file() and not is_manifest_name(p.name)
    }


def input_files(
    sources: Sources,
    base_dir: Path,
    ggufs: Mapping[str, Path],
    modelfile: Path,
    prompts: Path,
) -> dict[str, Path]:
    """The files the report certifies, by name (dropped ones are in ``sources.dropped``)."""
    files = {
        **(
            {}
            if "the merged model" in sources.dropped_parts
            else _files(sources.merged_dir, "merged")
        ),
        **_files(sources.adapter_dir, "adapter"),
        **{k: v for k, v in _files(base_dir, "base").items() if not k.endswith(".md")},
        **{f"gguf/{path.name}": path for path in ggufs.values()},
        "modelfile": modelfile,
        "prompts": prompts,
        "bounds": bounds_path(),
    }
    return {name: path for name, path in files.items() if name not in sources.dropped}


def stat_key(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def changed_inputs(
    inputs: Mapping[str, Path], before: Mapping[str, tuple[int, int, int, int]]
) -> list[str]:
    """Inputs that changed (content, metadata or identity) since ``before`` was taken."""
    changed = []
    for name, path in inputs.items():
        try:
            if stat_key(path) != before[name]:
                changed.append(name)
        except OSError:
            changed.append(name)
    return changed
