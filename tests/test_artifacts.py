"""Atomic outputs and manifests: what makes a stage trust an existing output."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from persona_export.artifacts import (
    FileRecord,
    Manifest,
    atomic_dir,
    atomic_file,
    is_fresh,
    manifest_path_for,
    record_file,
    write_json_atomic,
)


def test_atomic_dir_failure_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_existing(tmp_path: Path) -> None:
    final = tmp_path / "out"
    final.mkdir()
    (final / "old").write_text("old")
    with atomic_dir(final) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_file_failure_keeps_previous(tmp_path: Path) -> None:
    final = tmp_path / "a.gguf"
    final.write_text("complete")
    with pytest.raises(ValueError), atomic_file(final) as tmp:
        tmp.write_text("half")
        raise ValueError
    assert final.read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["a.gguf"]


def _write_manifest(inp: Path, out: Path, options: dict[str, object]) -> Path:
    manifest = Manifest(
        stage="test",
        options=options,
        inputs={"in": record_file(inp)},
        outputs={"out": record_file(out)},
        seconds=0.1,
        extra={},
    )
    path = manifest_path_for(out)
    write_json_atomic(path, manifest.to_json())
    return path


def test_is_fresh_tracks_inputs_options_and_outputs(tmp_path: Path) -> None:
    inp, out = tmp_path / "in.bin", tmp_path / "out.bin"
    inp.write_bytes(b"input")
    out.write_bytes(b"output")
    path = _write_manifest(inp, out, {"type": "Q4_K_M"})
    fresh = {"options": {"type": "Q4_K_M"}, "inputs": {"in": inp}, "outputs": {"out": out}}
    assert is_fresh(path, **fresh)  # type: ignore[arg-type]
    assert not is_fresh(path, **{**fresh, "options": {"type": "Q8_0"}})  # type: ignore[arg-type]

    # touching the input without changing its content is still fresh (hash compared)
    st = inp.stat()
    os.utime(inp, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    assert is_fresh(path, **fresh)  # type: ignore[arg-type]

    inp.write_bytes(b"changed")
    assert not is_fresh(path, **fresh)  # type: ignore[arg-type]


def test_is_fresh_false_when_output_changed_or_missing(tmp_path: Path) -> None:
    inp, out = tmp_path / "in.bin", tmp_path / "out.bin"
    inp.write_bytes(b"input")
    out.write_bytes(b"output")
    path = _write_manifest(inp, out, {})
    out.write_bytes(b"truncated")
    assert not is_fresh(path, options={}, inputs={"in": inp}, outputs={"out": out})
    out.unlink()
    assert not is_fresh(path, options={}, inputs={"in": inp}, outputs={"out": out})
    assert not is_fresh(tmp_path / "none.json", options={}, inputs={}, outputs={})


def test_record_file_reuses_known_hash_only_when_stat_matches(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    rec = record_file(f)
    fake = FileRecord("0" * 64, rec.size, rec.mtime_ns).to_json()
    assert record_file(f, fake).sha256 == "0" * 64  # stat unchanged: trusted
    fake["size"] = 99
    assert record_file(f, fake).sha256 == rec.sha256  # stat changed: re-hashed
