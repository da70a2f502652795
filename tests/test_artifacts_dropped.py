"""Dropped outputs (export --keep): the tombstone rule of artifacts/artifact.py on small
files. A dropped output's manifest stays and keeps its outputs' hashes; the producer is up
to date without the files while its inputs and options are unchanged; a consumer is up to
date while what it was made from is exactly what was dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona_export.artifacts import DROPPED, Artifact, dropped_outputs, list_files
from persona_export.errors import OutputConflictError


def _produce(tmp_path: Path) -> tuple[Artifact, Path]:
    """A folder output ('merged') made from one input file, written through the artifact."""
    source = tmp_path / "base.bin"
    source.write_bytes(b"base weights")
    artifact = Artifact(
        "merge", tmp_path / "merged", {"dtype": "bf16"}, {"base": source}, folder=True
    )
    with artifact.write() as writing:
        (writing.tmp / "model.safetensors").write_bytes(b"merged weights" * 100)
        (writing.tmp / "config.json").write_text("{}")
        writing.record(artifact.hash_inputs().result(), extra={})
    return artifact, source


def _consume(tmp_path: Path, producer: Artifact) -> Artifact:
    """A file output ('F16') made from the folder's files, as the gguf stage declares it."""
    artifact = Artifact(
        "gguf",
        tmp_path / "cap-F16.gguf",
        {"outtype": "f16"},
        list_files(producer.path),
        output_name="gguf",
    )
    with artifact.write() as writing:
        writing.tmp.write_bytes(b"gguf")
        writing.record(artifact.hash_inputs().result(), extra={})
    return artifact


def test_drop_keeps_a_tombstone_and_the_chain_stays_up_to_date(tmp_path: Path) -> None:
    merged, source = _produce(tmp_path)
    f16 = _consume(tmp_path, merged)
    recorded = merged.recorded()
    assert recorded is not None

    freed = merged.drop("export --keep")
    assert freed == 1400 + 2
    assert list_files(merged.path) == {}  # only the manifest is left
    tombstone = json.loads(merged.manifest.read_text())
    assert tombstone[DROPPED]["reason"] == "export --keep" and tombstone[DROPPED]["bytes"] == freed
    assert tombstone["outputs"] == recorded["outputs"]  # the hashes the consumers need
    assert merged.drop("again") == 0  # dropping twice is a no-op

    # the producer: not fresh (no files), but a clean tombstone of the same inputs/options
    assert not merged.fresh()
    assert merged.dropped_fresh()
    assert not merged.dropped_fresh(force=True)
    other = Artifact("merge", merged.path, {"dtype": "f16"}, {"base": source}, folder=True)
    assert not other.dropped_fresh()  # options changed
    # the consumer: its input files are gone, their recorded hashes match
    records = dropped_outputs(merged.manifest)
    assert records is not None
    consumer = Artifact(
        "gguf", f16.path, f16.options, {}, output_name="gguf", dropped_inputs=records
    )
    assert consumer.fresh()
    changed = {**records, "config.json": {**records["config.json"], "sha256": "0" * 64}}
    assert not Artifact(
        "gguf", f16.path, f16.options, {}, output_name="gguf", dropped_inputs=changed
    ).fresh()

    source.write_bytes(b"new base")  # an input of the producer changed: make it again
    assert not merged.dropped_fresh()


def test_a_file_output_is_dropped_with_its_manifest_kept(tmp_path: Path) -> None:
    merged, _ = _produce(tmp_path)
    f16 = _consume(tmp_path, merged)
    assert f16.drop("export --keep") == 4
    assert not f16.path.exists() and f16.manifest.is_file()
    assert dropped_outputs(f16.manifest) == {"gguf": f16.recorded()["outputs"]["gguf"]}  # type: ignore[index]
    assert f16.dropped_fresh()
    assert dropped_outputs(merged.manifest) is None  # not a tombstone


def test_what_does_not_match_its_manifest_is_not_dropped(tmp_path: Path) -> None:
    merged, _ = _produce(tmp_path)
    (merged.path / "notes.txt").write_text("the user's")
    with pytest.raises(OutputConflictError, match="it was not dropped"):
        merged.drop("export --keep")
    assert (merged.path / "model.safetensors").is_file()  # nothing deleted
    (merged.path / "notes.txt").unlink()
    (merged.path / "config.json").write_text('{"changed": true}')
    with pytest.raises(OutputConflictError):
        merged.drop("export --keep")
    assert (merged.path / "config.json").is_file()
    assert dropped_outputs(merged.manifest) is None


def test_a_half_dropped_output_is_not_a_clean_tombstone(tmp_path: Path) -> None:
    merged, _ = _produce(tmp_path)
    merged.drop("export --keep")
    (merged.path / "model.safetensors").write_bytes(b"left behind")
    assert not merged.dropped_fresh()  # made again rather than trusted


def test_a_folder_can_keep_its_small_files(tmp_path: Path) -> None:
    """What export does with the merged folder: the weights go, config and tokenizer stay;
    a consumer reads the kept files as they are and the weights by their records."""
    merged, _ = _produce(tmp_path)
    f16 = _consume(tmp_path, merged)
    freed = merged.drop("export --keep", select=lambda name: name.endswith(".safetensors"))
    assert freed == 1400
    assert sorted(list_files(merged.path)) == ["config.json"]
    assert json.loads(merged.manifest.read_text())[DROPPED]["files"] == ["model.safetensors"]
    records = dropped_outputs(merged.manifest)
    assert records is not None and sorted(records) == ["model.safetensors"]
    assert merged.dropped_fresh()
    consumer = Artifact(
        "gguf",
        f16.path,
        f16.options,
        list_files(merged.path),
        output_name="gguf",
        dropped_inputs=records,
    )
    assert consumer.fresh()
    (merged.path / "config.json").write_text('{"edited": 1}')  # a kept file changed
    assert not merged.dropped_fresh()
    assert not consumer.fresh()
