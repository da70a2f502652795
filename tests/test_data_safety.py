"""Never touch what is not ours (issue 11, "Data safety"): a stage replaces only outputs that
carry its own manifest, never an output that is, contains or sits inside an input, never
follows a link out of an input folder, and never makes a copy readable by more people than
its source. Each test reproduces a failure seen before the fix."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from persona_export.artifacts import DIR_MANIFEST, Artifact, manifest_path_for
from persona_export.cli import app
from persona_export.errors import OutputConflictError
from tests import modelkit as mk
from tests.mergekit import make_project

runner = CliRunner()


@pytest.fixture(scope="module")
def phi_adapter(phi_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mk.make_adapter(phi_small, tmp_path_factory.mktemp("safety") / "adapter")


@pytest.fixture
def project(tmp_path: Path, phi_adapter: Path) -> Path:
    make_project(tmp_path, phi_adapter)
    return tmp_path


def merge_cli(root: Path, base: Path | str, *extra: str, persona: str = "cap") -> Any:
    args = ["merge", "--persona", persona, "--base-model-id", str(base)]
    args += ["--adapter-dir", str(root / "trained_adapters")]
    args += ["--output-dir-base", str(root / "merged_models"), "--device", "cpu", *extra]
    return runner.invoke(app, args)


def error_line(result: Any) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    return errors[0].removeprefix("error: ")


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# -- merge never deletes a folder it did not create --------------------------------------------


@pytest.mark.parametrize("force", [False, True])
def test_a_users_folder_at_the_output_is_refused_not_replaced(
    project: Path, phi_small: Path, force: bool
) -> None:
    final = project / "merged_models" / "cap"
    final.mkdir(parents=True)
    (final / "notes.txt").write_text("my notes")
    before = tree(final)
    result = merge_cli(project, phi_small, *(["--force"] if force else []))
    assert result.exit_code == 1
    assert error_line(result) == (
        f"{final} exists and was not written by the merge stage (no readable manifest); "
        "persona-export replaces only what it wrote, so it was left untouched"
    )
    assert tree(final) == before
    assert sorted(p.name for p in final.parent.iterdir()) == ["cap"]


def test_force_does_not_delete_files_a_user_added_to_our_folder(
    project: Path, phi_small: Path
) -> None:
    assert merge_cli(project, phi_small).exit_code == 0
    final = project / "merged_models" / "cap"
    (final / "my_eval.json").write_text("{}")
    before = tree(final)
    result = merge_cli(project, phi_small, "--force")
    assert result.exit_code == 1
    assert error_line(result).startswith(
        f"{final} holds files persona-export did not write (my_eval.json); "
    )
    assert tree(final) == before
    (final / "my_eval.json").unlink()
    assert merge_cli(project, phi_small, "--force").exit_code == 0


def test_the_output_may_not_be_the_base_model(project: Path, phi_small: Path) -> None:
    """--base-model-id merged_models/x --output-dir-base merged_models: the output of persona x
    would be the base itself (it was overwritten before)."""
    base = project / "merged_models" / "cap"
    shutil.copytree(phi_small, base)
    before = tree(base)
    result = merge_cli(project, base)
    assert result.exit_code == 1
    assert error_line(result) == (
        f"the merge output {base} is its input {base.resolve()}; nothing was written"
    )
    assert tree(base) == before


@pytest.mark.parametrize("where", ["inside-base", "contains-adapter"])
def test_the_output_may_not_contain_or_sit_inside_an_input(
    project: Path, phi_small: Path, where: str
) -> None:
    if where == "inside-base":
        base = project / "base"
        shutil.copytree(phi_small, base)
        out = base / "merged"  # merged_models inside the base model's folder
        args = ["--output-dir-base", str(out)]
        relation = "sits inside"
        target = out / "cap"
    else:
        base = phi_small
        adapters = project / "trained_adapters"
        nested = project / "out" / "cap" / "trained_adapters"
        nested.parent.mkdir(parents=True)
        adapters.rename(nested)  # the adapters folder inside the output folder
        args = ["--adapter-dir", str(nested), "--output-dir-base", str(project / "out")]
        relation = "contains"
        target = project / "out" / "cap"
    result = runner.invoke(
        app,
        [
            "merge",
            "--persona",
            "cap",
            "--base-model-id",
            str(base),
            "--adapter-dir",
            str(project / "trained_adapters"),
            "--device",
            "cpu",
            *args,
        ],
    )
    assert result.exit_code == 1
    assert f"the merge output {target} {relation} its input " in error_line(result)
    assert not (target / DIR_MANIFEST).exists()


def test_an_artifact_replaces_only_its_own_stages_output(tmp_path: Path) -> None:
    """A GGUF written by the gguf stage is not the quantize stage's to overwrite."""
    path = tmp_path / "cap-F16.gguf"
    path.write_bytes(b"GGUF")
    manifest_path_for(path).write_text('{"stage": "gguf"}')
    artifact = Artifact(stage="quantize", path=path, options={}, inputs={})
    with pytest.raises(OutputConflictError) as refused:
        artifact.check_writable()
    assert "was not written by the quantize stage (another stage's manifest)" in str(refused.value)


# -- files carried from the adapter never leave its folder ---------------------------------


@pytest.mark.parametrize("name", ["chat_template.jinja", "tokenizer.json"])
def test_a_link_out_of_the_adapter_folder_is_refused(
    project: Path, phi_small: Path, tmp_path: Path, name: str
) -> None:
    adapter = project / "trained_adapters" / "cap_final_adapter"
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("not for the model")
    if not (adapter / "tokenizer.json").exists():
        for file in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(phi_small / file, adapter / file)
    (adapter / name).unlink(missing_ok=True)
    (adapter / name).symlink_to(secret)
    result = merge_cli(project, phi_small)
    assert result.exit_code == 1
    assert error_line(result) == (
        f"{adapter / name} is a link to {secret}, outside the adapter folder; persona-export "
        "only carries files that are inside it"
    )
    assert not (project / "merged_models" / "cap").exists()


def test_copies_never_widen_permissions(project: Path, phi_small: Path) -> None:
    adapter = project / "trained_adapters" / "cap_final_adapter"
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(phi_small / file, adapter / file)
    os.chmod(adapter / "tokenizer.json", 0o600)
    assert merge_cli(project, phi_small).exit_code == 0
    copied = project / "merged_models" / "cap" / "tokenizer.json"
    assert stat.S_IMODE(copied.stat().st_mode) == 0o600


def test_links_inside_a_hub_snapshot_are_followed(tmp_path: Path, phi_small: Path) -> None:
    """A base in the Hugging Face cache is all links into the repository's blobs/."""
    from persona_export.hf.model_files import checked_file

    repo = tmp_path / "hub" / "models--org--base"
    snapshot = repo / "snapshots" / "abc123"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "blobs" / "0123").write_text("{}")
    (snapshot / "tokenizer.json").symlink_to(repo / "blobs" / "0123")
    assert checked_file(snapshot / "tokenizer.json", snapshot, "base model").is_file()


def test_merge_without_any_tokenizer_is_refused(tmp_path: Path, phi_adapter: Path) -> None:
    base = tmp_path / "base"
    shutil.copytree(mk.make_phi4mini(tmp_path / "full", vocab="small"), base)
    from persona_export.hf.model_files import TOKENIZER_FILES

    adapter = tmp_path / "trained_adapters" / "cap_final_adapter"
    shutil.copytree(phi_adapter, adapter)
    for name in TOKENIZER_FILES:
        (base / name).unlink(missing_ok=True)
        (adapter / name).unlink(missing_ok=True)
    result = merge_cli(tmp_path, base)
    assert result.exit_code == 1
    assert error_line(result).startswith("neither the adapter (")
    assert not (tmp_path / "merged_models" / "cap").exists()


def test_corrupt_tokenizer_json_fails_at_the_merge(project: Path, phi_small: Path) -> None:
    adapter = project / "trained_adapters" / "cap_final_adapter"
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(phi_small / file, adapter / file)
    (adapter / "tokenizer.json").write_text('{"model": {"vocab": ')
    result = merge_cli(project, phi_small)
    assert result.exit_code == 1
    assert error_line(result) == (
        f"{adapter / 'tokenizer.json'} is not valid JSON (JSONDecodeError)"
    )
    assert not (project / "merged_models" / "cap").exists()


# -- one writer per persona ----------------------------------------------------------------


def test_a_second_writer_waits_for_the_lock_and_says_who_holds_it(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    from persona_export.artifacts import persona_lock

    lock = tmp_path / ".cap.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path\n"
            "from persona_export.artifacts import persona_lock\n"
            f"with persona_lock(Path({str(lock)!r})):\n"
            "    print('held', flush=True); time.sleep(1.5)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    heard: list[str] = []
    started = time.monotonic()
    with persona_lock(lock, on_wait=heard.append):
        waited = time.monotonic() - started
    holder.wait(timeout=10)
    assert waited > 0.5
    assert len(heard) == 1 and heard[0].startswith(
        f"waiting for {lock}: held by pid {holder.pid} ("
    )
    with persona_lock(lock), persona_lock(lock):  # re-entrant within a process
        pass
