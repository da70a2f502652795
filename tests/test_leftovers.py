"""What interrupted and older runs leave beside the outputs, and `--quant F16` (issue 11,
"Smaller, all to fix").

* Temporaries of dead processes (``.<name>.partial-<pid>-<n>``, ``.old-``, ``.work-``) are
  removed when the stage that owns them starts, whether or not it then writes (they stayed
  while the output was up to date); a live writer's are left alone.
* Older versions' tempfile scratch folders (``.verify-<persona>-XXXXXXXX``,
  ``.tokfix-[<pid>-]XXXXXXXX``), which later runs never removed, are removed by the stage that
  made them, and only while it holds the persona lock.
* A quantization type equal to the source's (``--quant F16``) is the converter's file: never
  overwritten, and a Modelfile can be FROM it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from persona_export.cli import app
from tests import hf_chat_templates as hf
from tests.modelfile_kit import PHI, layout_args, make_persona_project

runner = CliRunner()


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has exited (its temporaries are stale)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return int(done.stdout)


@pytest.fixture
def live_pid() -> Iterator[int]:
    """The pid of a process that is still running (a writer whose temporaries must stay)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def leave(folder: Path, names: list[str]) -> None:
    """Leftovers as an interrupted run leaves them: folders with a file, or plain files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if ".partial-" in name and not name.startswith(".cap."):
            (folder / name).write_bytes(b"half a file")
        else:
            (folder / name).mkdir()
            (folder / name / "part").write_bytes(b"half")


def present(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# -- temporaries of dead runs ------------------------------------------------------------------


@pytest.fixture(scope="module")
def phi_adapter(phi_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests import modelkit as mk

    return mk.make_adapter(phi_small, tmp_path_factory.mktemp("leftovers") / "adapter")


def test_merge_removes_dead_runs_temporaries_also_when_up_to_date(
    tmp_path: Path, phi_small: Path, phi_adapter: Path, dead_pid: int, live_pid: int
) -> None:
    from tests.mergekit import make_project

    layout = make_project(tmp_path, phi_adapter)
    args = ["merge", "--persona", "cap", "--base-model-id", str(phi_small), "--device", "cpu"]
    args += layout_args(layout)[:4]
    assert runner.invoke(app, args).exit_code == 0
    merged_base = layout.merged_base
    stale = [f".cap.partial-{dead_pid}-1", f".cap.old-{dead_pid}-2", f".cap.work-{dead_pid}-3"]
    kept = [f".cap.partial-{live_pid}-4", ".other.partial-1-5", ".cap.partial-x-6"]
    leave(merged_base, stale + kept)
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "is up to date" in again.stderr  # it did not write, and still cleaned
    assert present(merged_base) == {"cap", *kept}


def test_modelfile_removes_dead_runs_temporaries_also_when_up_to_date(
    tmp_path: Path, dead_pid: int, live_pid: int
) -> None:
    layout = make_persona_project(tmp_path, "cap", hf.PHI4MINI, PHI)
    args = ["modelfile", "--persona", "cap", *layout_args(layout)]
    assert runner.invoke(app, args).exit_code == 0
    folder = layout.gguf_dir("cap")
    before = present(folder)
    stale = [f".Modelfile.partial-{dead_pid}-1", f".Modelfile.old-{dead_pid}-2"]
    kept = [f".Modelfile.partial-{live_pid}-3", f".cap-Q4_K_M.gguf.partial-{dead_pid}-4"]
    leave(folder, stale + kept)
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert present(folder) == before | set(kept)  # another stage's are that stage's to remove


# -- older versions' scratch folders -------------------------------------------------------


def test_verify_removes_older_versions_scratch_folders(tmp_path: Path, dead_pid: int) -> None:
    """``.verify-<persona>-XXXXXXXX`` (tempfile.TemporaryDirectory in older versions) were
    never removed. verify removes them when it starts, under the persona lock, even when it
    then stops for a missing input; other personas' and other names are left."""
    layout = make_persona_project(tmp_path, "cap", hf.PHI4MINI, PHI)
    folder = layout.gguf_dir("cap")
    stale = [".verify-cap-ab12cd_3", ".verify-cap-zz99zz99"]
    kept = [".verify-capx-ab12cd34", ".verify-cap-toolong123", "verify-cap-ab12cd34"]
    leave(folder, stale + kept)
    (folder / ".verify-cap-fi1e0000").write_text("a file, not a scratch folder")
    before = present(folder) - set(stale)
    result = runner.invoke(app, ["verify", "--persona", "cap", *layout_args(layout)])
    assert result.exit_code == 1  # no adapter: verify stops, after its clean-up
    assert present(folder) == before


def test_older_scratch_is_removed_only_under_the_persona_lock(tmp_path: Path) -> None:
    from persona_export.artifacts import LEGACY_TOKFIX, persona_lock, remove_legacy_scratch

    leave(tmp_path, [".tokfix-ab12cd34"])
    lock = tmp_path / ".cap.lock"
    with pytest.raises(RuntimeError, match="needs the lock"):
        remove_legacy_scratch(tmp_path, LEGACY_TOKFIX, lock)
    assert (tmp_path / ".tokfix-ab12cd34").is_dir()
    with persona_lock(lock):
        assert remove_legacy_scratch(tmp_path, LEGACY_TOKFIX, lock) == [
            tmp_path / ".tokfix-ab12cd34"
        ]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.llama
def test_gguf_removes_shadow_folders_and_dead_temporaries_when_up_to_date(
    phi4mini_project: Path, tmp_path: Path, dead_pid: int, live_pid: int
) -> None:
    from tests.ggufkit import copy_project, dir_args

    root = copy_project(phi4mini_project, tmp_path / "p")
    folder = root / "gguf_models" / "cap"
    before = present(folder)
    stale = [
        ".tokfix-ab12cd34",  # the first versions: no pid
        f".tokfix-{dead_pid}-ab12cd34",
        f".cap-F16.gguf.partial-{dead_pid}-1",
        f".cap-F16.gguf.old-{dead_pid}-2",
        f".cap-F16.gguf.work-{dead_pid}-3",
        f".cap-F16.gguf.log.partial-{dead_pid}-4",
    ]
    kept = [f".tokfix-{live_pid}-ab12cd34", f".cap-F16.gguf.partial-{live_pid}-5"]
    leave(folder, stale + kept)
    result = runner.invoke(app, ["gguf", "--persona", "cap", *dir_args(root)])
    assert result.exit_code == 0, result.output
    assert "up to date" in result.stderr
    assert present(folder) == before | set(kept)


# -- --quant F16 ---------------------------------------------------------------------------


@pytest.mark.llama
def test_quantize_to_the_source_type_is_the_source_itself(tmp_path: Path) -> None:
    """--type F16 used to overwrite the converter's F16 (and was never up to date again)."""
    from tests.ggufkit import dir_args, write_gguf

    folder = tmp_path / "gguf_models" / "cap"
    folder.mkdir(parents=True)
    f16 = write_gguf(folder / "cap-F16.gguf")
    (folder / "cap-F16.gguf.manifest.json").write_text('{"stage": "gguf"}')
    before = {p.name: (_sha256(p), p.stat().st_mtime_ns) for p in folder.iterdir()}
    for _ in range(2):
        result = runner.invoke(app, ["quantize", "--persona", "cap", *dir_args(tmp_path),
                                     "--type", "F16"])  # fmt: skip
        assert result.exit_code == 0, result.output
        assert result.stdout.split("\t")[0] == "F16"
        assert result.stdout.rstrip().endswith(str(f16))
        assert {p.name: (_sha256(p), p.stat().st_mtime_ns) for p in folder.iterdir()} == before


@pytest.mark.slow
@pytest.mark.llama
def test_export_quant_f16_writes_a_modelfile_from_the_f16(
    tmp_path: Path,
    exported_project,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    from tests.ollama_kit import without_ollama
    from tests.verifykit import copy_project

    without_ollama(tmp_path, monkeypatch)
    project = copy_project(exported_project, tmp_path / "p")
    layout = project.layout
    f16 = layout.gguf("cap", "F16")
    f16_manifest = f16.with_name(f16.name + ".manifest.json")
    before = (_sha256(f16), f16.stat().st_mtime_ns, f16_manifest.read_bytes())
    args = ["export", "--persona", "cap", *layout_args(layout), "--quant", "F16", "--no-verify"]
    args += ["--base-model-id", str(project.base), "--personas", str(project.personas_file)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    modelfile = layout.modelfile("cap").read_text()
    assert "\nFROM ./cap-F16.gguf\n" in modelfile
    assert (_sha256(f16), f16.stat().st_mtime_ns, f16_manifest.read_bytes()) == before
    assert json.loads(f16_manifest.read_text())["stage"] == "gguf"
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    for stage in ("merge", "gguf", "quantize", "modelfile"):
        assert any(line.split()[:3] == [stage, "up", "to"] for line in again.stdout.splitlines()), (
            stage,
            again.stdout,
        )
