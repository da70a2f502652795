"""`persona-export status`: what is up to date, stale (and why) or unknown, read from the
manifests by stat.

The fast tests build a persona's chain with the real Artifact API (each stage's output
written and recorded as the stages do, small files standing in for weights): status only
reads manifests and file stats, so that is what it is tested on. The slow test runs it on a
real export of a tiny persona.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from persona_export.artifacts import Artifact, record_file, survey
from persona_export.cli import app
from persona_export.layout import Layout
from persona_export.stages.status import StatusConfig, run
from tests.ollama_kit import stand_in_server

P = "cap"


def _write(
    stage: str,
    path: Path,
    inputs: dict[str, Path],
    content: bytes | dict[str, bytes] | None,
    **extra: Any,
) -> None:
    """An output written and recorded the way stages do (a folder when ``content`` is a
    dict, a report that is its own manifest when None)."""
    artifact = Artifact(
        stage,
        path,
        options=extra.pop("options", {}),
        inputs=inputs,
        folder=isinstance(content, dict),
        manifest_file=path if content is None else None,
    )
    with artifact.write() as writing:
        if isinstance(content, dict):
            for name, data in content.items():
                (writing.tmp / name).write_bytes(data)
        elif content is not None:
            writing.tmp.write_bytes(content)
        writing.record({k: record_file(p) for k, p in inputs.items()}, extra=extra)


def make_chain(root: Path) -> Layout:
    """adapter + base -> merge -> gguf -> quantize (Q4_K_M, Q8_0) -> modelfile -> verify ->
    card."""
    layout = Layout(root / "trained_adapters", root / "merged_models", root / "gguf_models")
    adapter, base = layout.adapter(P), root / "base"
    for folder, files in ((adapter, {"adapter_model.safetensors": b"a" * 4000}), (base, {})):
        folder.mkdir(parents=True)
        for name, data in {**files, "config.json": b"{}"}.items():
            (folder / name).write_bytes(data)
    (base / "model.safetensors").write_bytes(b"b" * 9000)
    merge_in = {f"adapter/{p.name}": p for p in adapter.iterdir()}
    merge_in["base/model.safetensors"] = base / "model.safetensors"
    merged = layout.merged(P)
    _write(
        "merge",
        merged,
        merge_in,
        {"model.safetensors": b"m" * 9000, "config.json": b"{}"},
        merged_tensors=8,
        options={"dtype": "float32"},
    )
    f16 = layout.gguf(P, "F16")
    _write(
        "gguf",
        f16,
        {n: merged / n for n in ("model.safetensors", "config.json")},
        b"f" * 5000,
        file_type="F16",
        bits_per_weight=16.0,
    )
    for quant, size in (("Q4_K_M", 1500), ("Q8_0", 2700)):
        _write(
            "quantize",
            layout.gguf(P, quant),
            {"source": f16},
            b"q" * size,
            quant_type=quant,
            bits_per_weight=size / 300,
        )
    modelfile = layout.modelfile(P)
    _write(
        "modelfile",
        modelfile,
        {"gguf": layout.gguf(P, "Q4_K_M")},
        f"FROM ./{P}-Q4_K_M.gguf\n".encode(),
        model_name="cap",
        format="phi4mini",
        options={"quant": "Q4_K_M"},
    )
    verify_in = {**merge_in, "modelfile": modelfile}
    verify_in |= {f"gguf/{p.name}": p for p in sorted(layout.gguf_dir(P).glob("*.gguf"))}
    checks = [
        {
            "name": "merged-vs-F16",
            "status": "passed",
            "summary": "",
            "figures": {"nmse": 2e-6, "nmse_max": 1e-3, "kl_mean": 1e-5, "top1_agreement": 1.0},
        },
        {
            "name": "F16-vs-Q4_K_M",
            "status": "passed",
            "summary": "",
            "figures": {"kl_mean": 0.12, "kl_max": 0.3, "nmse": 0.02},
        },
    ]
    _write("verify", layout.verify_report(P), verify_in, None, passed=True, checks=checks)
    card_in = {"modelfile": modelfile, "verify": layout.verify_report(P)}
    _write("card", layout.gguf_dir(P) / "README.md", card_in, b"# cap\n")
    return layout


def _states(layout: Layout) -> dict[str, str]:
    (persona,) = run(StatusConfig(layout=layout, ollama=False)).personas
    return {s.stage: s.state for s in persona.stages}


def _reasons(layout: Layout) -> dict[str, str]:
    (persona,) = run(StatusConfig(layout=layout, ollama=False)).personas
    return {s.stage: s.reason for s in persona.stages}


STAGES = ("merge", "gguf", "quantize", "modelfile", "verify", "card")
ALL_UP_TO_DATE = dict.fromkeys(STAGES, "up to date")


def _rewrite(path: Path, data: bytes) -> None:
    """New content in place, a later mtime (as a retrained adapter gets)."""
    before = path.stat().st_mtime_ns
    path.write_bytes(data)
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_a_fresh_chain_is_up_to_date(tmp_path: Path) -> None:
    layout = make_chain(tmp_path)
    manifest = json.loads((layout.merged(P) / "persona_export_manifest.json").read_text())
    assert manifest["input_paths"]["adapter/adapter_model.safetensors"] == str(
        (layout.adapter(P) / "adapter_model.safetensors").absolute()
    )
    assert manifest["written_in"] == str(layout.merged(P).absolute())
    (persona,) = run(StatusConfig(layout=layout, ollama=False)).personas
    assert {s.stage: s.state for s in persona.stages} == ALL_UP_TO_DATE
    assert persona.quant == "Q4_K_M" and persona.model_name == "cap"
    assert persona.verify is not None and persona.verify["passed"] is True
    quantize = persona.stage("quantize")
    assert quantize.detail == "Q4_K_M 5.00 bits/weight, 1.5 kB; Q8_0 9.00 bits/weight, 2.7 kB"
    assert persona.stage("verify").detail == (
        "passed (2 checks): merged-vs-F16 NMSE 2e-06, F16-vs-Q4_K_M KL 0.12"
    )


def test_a_changed_adapter_makes_merge_and_everything_after_it_stale(tmp_path: Path) -> None:
    layout = make_chain(tmp_path)
    _rewrite(layout.adapter(P) / "adapter_model.safetensors", b"A" * 4000)  # same size
    assert _states(layout) == dict.fromkeys(STAGES, "stale")
    reasons = _reasons(layout)
    assert reasons["merge"] == "adapter/adapter_model.safetensors changed (content)"
    assert reasons["gguf"] == "after merge, which is stale"
    assert reasons["quantize"] == "after gguf, which is stale"
    assert reasons["modelfile"] == "after quantize, which is stale"
    # verify read the adapter itself as well as the later outputs
    assert reasons["verify"].startswith("adapter/adapter_model.safetensors changed (content); ")
    assert reasons["card"] == "after modelfile, which is stale"
    run_cli = CliRunner().invoke(app, ["status", *_dirs(layout), "--no-ollama"])
    assert run_cli.exit_code == 0, run_cli.output
    lines = run_cli.stdout.splitlines()
    assert lines[0] == f"{P}: stale: merge, gguf, quantize, modelfile, verify, card"
    assert " ".join(lines[2:4]).split() == ["adapter", "found", str(layout.adapter(P))]
    merge = next(i for i, line in enumerate(lines) if line.startswith("  merge "))
    assert lines[merge].split()[:2] == ["merge", "stale"]
    assert "adapter/adapter_model.safetensors changed (content)" in lines[merge]
    # 100 columns, but for a path wider than that, which is never broken
    assert all(len(line) <= 100 or len(line.split()) == 1 for line in lines)


def test_another_size_is_named(tmp_path: Path) -> None:
    layout = make_chain(tmp_path)
    (layout.adapter(P) / "adapter_model.safetensors").write_bytes(b"a" * 4100)
    assert _reasons(layout)["merge"] == (
        "adapter/adapter_model.safetensors changed (4.0 kB -> 4.1 kB)"
    )


def test_a_touched_but_unchanged_small_file_is_still_up_to_date(tmp_path: Path) -> None:
    layout = make_chain(tmp_path)
    _rewrite(layout.adapter(P) / "adapter_model.safetensors", b"a" * 4000)
    assert _states(layout) == ALL_UP_TO_DATE


def test_a_big_file_with_a_new_time_is_unknown_without_hashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = make_chain(tmp_path)
    monkeypatch.setattr(survey, "HASH_LIMIT", 0)  # every file counts as big
    monkeypatch.setattr(survey, "sha256_file", _no_hashing)
    _rewrite(tmp_path / "base" / "model.safetensors", b"b" * 9000)
    states = _states(layout)
    assert states == {**dict.fromkeys(STAGES, "unknown")}
    reasons = _reasons(layout)
    assert reasons["merge"] == "base/model.safetensors was modified (same size)"
    assert reasons["gguf"] == "after merge, which is unknown"


def _no_hashing(path: Path) -> str:
    raise AssertionError(f"status hashed {path}")


def test_an_input_another_stage_recorded_is_known_without_hashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge run again (same inputs) rewrites its files: the gguf stage's input has a new
    time, and the merge manifest says what it is, so no hashing is needed either way."""
    layout = make_chain(tmp_path)
    monkeypatch.setattr(survey, "HASH_LIMIT", 0)
    monkeypatch.setattr(survey, "sha256_file", _no_hashing)
    merge_in = {f"adapter/{p.name}": p for p in layout.adapter(P).iterdir()}
    merge_in["base/model.safetensors"] = tmp_path / "base" / "model.safetensors"
    merged = {"model.safetensors": b"m" * 9000, "config.json": b"{}"}
    _write("merge", layout.merged(P), merge_in, merged, merged_tensors=8)
    assert _states(layout) == ALL_UP_TO_DATE
    _write("merge", layout.merged(P), merge_in, {**merged, "model.safetensors": b"M" * 9000})
    states = _states(layout)
    assert states["merge"] == "up to date" and states["gguf"] == "stale"
    assert _reasons(layout)["gguf"] == "model.safetensors changed (content)"


def test_an_output_gone_makes_its_stage_and_its_readers_stale(tmp_path: Path) -> None:
    layout = make_chain(tmp_path)
    layout.gguf(P, "Q8_0").unlink()
    states, reasons = _states(layout), _reasons(layout)
    assert states == {**ALL_UP_TO_DATE, "quantize": "stale", "verify": "stale"}
    assert reasons["quantize"] == "output is gone"  # the Modelfile's Q4_K_M is still there
    assert reasons["verify"] == f"gguf/{P}-Q8_0.gguf is gone; after quantize, which is stale"


def test_a_file_added_to_a_folder_output_makes_it_stale(tmp_path: Path) -> None:
    layout = make_chain(tmp_path)
    (layout.merged(P) / "notes.txt").write_text("mine")
    assert _reasons(layout)["merge"] == "notes.txt was added"


def test_a_moved_project_is_judged_where_it_is_now(tmp_path: Path) -> None:
    old = make_chain(tmp_path / "old")
    new_root = tmp_path / "elsewhere" / "new"
    shutil.copytree(tmp_path / "old", new_root)
    new = Layout(
        new_root / "trained_adapters", new_root / "merged_models", new_root / "gguf_models"
    )
    assert _states(new) == ALL_UP_TO_DATE
    _rewrite(new.adapter(P) / "adapter_model.safetensors", b"A" * 4000)
    assert _states(new)["merge"] == "stale"  # the copy's adapter, not the original's
    assert _states(old) == ALL_UP_TO_DATE


def test_an_older_manifest_is_unknown_until_the_stage_checks_it(tmp_path: Path) -> None:
    layout = make_chain(tmp_path)
    path = layout.gguf(P, "F16").with_name(f"{P}-F16.gguf.manifest.json")
    data = json.loads(path.read_text())
    legacy = {k: v for k, v in data.items() if k not in ("input_paths", "written_in")}
    path.write_text(json.dumps(legacy))
    assert _states(layout)["gguf"] == "unknown"
    assert "predates input paths" in _reasons(layout)["gguf"]
    merged = layout.merged(P)
    artifact = Artifact(
        "gguf",
        layout.gguf(P, "F16"),
        options={},
        inputs={n: merged / n for n in ("model.safetensors", "config.json")},
    )
    assert artifact.fresh()  # the stage's own check, by content, adds the paths
    assert json.loads(path.read_text())["input_paths"] == data["input_paths"]
    assert _states(layout)["gguf"] == "up to date"


def test_never_exported_and_found_in_every_folder(tmp_path: Path) -> None:
    layout = make_chain(tmp_path)
    (layout.adapter_dir / "fresh_final_adapter").mkdir()
    (layout.gguf_base / "orphan").mkdir()
    result = run(StatusConfig(layout=layout, ollama=False))
    assert [p.persona for p in result.personas] == ["cap", "fresh", "orphan"]
    fresh = result.personas[1]
    assert {s.state for s in fresh.stages} == {"missing"}
    assert fresh.quant is None and fresh.registered is None


def _dirs(layout: Layout) -> list[str]:
    return [
        "--adapter-dir", str(layout.adapter_dir),
        "--output-dir-base", str(layout.merged_base),
        "--gguf-dir", str(layout.gguf_base),
    ]  # fmt: skip


def test_ollama_says_which_models_it_has(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = make_chain(tmp_path)
    with stand_in_server() as (url, handler):
        monkeypatch.setenv("OLLAMA_HOST", url)
        (persona,) = run(StatusConfig(layout=layout)).personas
        assert persona.registered is False
        handler.tags.append("cap:latest")
        result = run(StatusConfig(layout=layout))
        assert result.personas[0].registered is True
        assert result.ollama is not None and result.ollama.version == "0.9.9"
        shown = CliRunner().invoke(app, ["status", *_dirs(layout)])
    assert shown.exit_code == 0, shown.output
    row = next(line for line in shown.stdout.splitlines() if line.startswith("  ollama"))
    assert row.split()[1] == "registered" and f"cap (Ollama 0.9.9 at {url})" in row


def test_no_ollama_answering_is_unknown(tmp_path: Path) -> None:
    layout = make_chain(tmp_path)
    result = run(StatusConfig(layout=layout))  # conftest: nothing at the default address
    assert result.ollama is not None and not result.ollama.reachable
    assert result.personas[0].registered is None
