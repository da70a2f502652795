"""`persona-export push` on a real, verified export, against the stand-in hub
(tests/hubkit.py): the dry run shows exactly the files and the card; a push sends exactly
those (GGUFs as LFS objects by sha256), never manifests, logs, verify.json or local paths;
the merged folder and both folders; the refusals (verify missing, failed or older than the
files) and --force; --work-dir."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from typer.testing import CliRunner

from persona_export.cli import app
from persona_export.hf.model_card import render_card
from persona_export.ollama.hub_files import read_hub_files
from persona_export.ollama.modelfile import Modelfile
from tests.hubkit import TOKEN, StandInHub, stand_in_hub
from tests.modelfile_kit import layout_args
from tests.test_hub_push import use_hub
from tests.verifykit import PERSONA, Project, copy_project

pytestmark = [pytest.mark.slow, pytest.mark.llama]
GGUF_FILES = ["cap-F16.gguf", "cap-Q4_K_M.gguf", "cap-Q8_0.gguf"]
GGUF_REPO = ["README.md", *GGUF_FILES, "Modelfile", "template", "system", "params"]


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[StandInHub]:
    with stand_in_hub(lfs_threshold=1 << 20) as server:
        use_hub(monkeypatch, server.url, tmp_path)
        yield server


def push_cli(project: Project, *extra: str) -> object:
    args = ["push", "-p", PERSONA, *layout_args(project.layout)[2:], *extra]
    return CliRunner().invoke(app, args)


def test_dry_run_shows_the_files_and_the_card_and_needs_no_hub(
    verified_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    run = push_cli(verified_project, "--repo", "me/cap", "--dry-run")
    assert run.exit_code == 0, run.output  # type: ignore[attr-defined]
    out = run.stdout.splitlines()  # type: ignore[attr-defined]
    folder = verified_project.layout.gguf_dir(PERSONA)
    assert out[0] == f"me/cap (gguf, revision main, public if new) <- {folder}/"
    listed = [line.split()[0] for line in out[1 : 1 + len(GGUF_REPO)]]
    assert listed == GGUF_REPO
    assert out[1].endswith("model card for this repository")
    assert out[1 + len(GGUF_REPO)].startswith(f"  {len(GGUF_REPO)} files, ")
    card_start = out.index("--- README.md of me/cap ---")
    card = "\n".join(out[card_start + 1 :]) + "\n"
    facts = json.loads((folder / "README.md.manifest.json").read_text())["facts"]
    assert card == render_card(facts, repo="me/cap")
    assert "ollama run hf.co/me/cap:Q4_K_M" in card
    assert run.stderr.splitlines()[-1] == "dry run: nothing was uploaded"  # type: ignore[attr-defined]


def test_push_sends_exactly_the_shareable_files_through_the_real_client(
    verified_project: Project, tmp_path: Path
) -> None:
    """The command as users run it: a subprocess, HF_ENDPOINT and HF_TOKEN in its
    environment, huggingface_hub's LFS protocol (HF_HUB_DISABLE_XET=1)."""
    layout = verified_project.layout
    folder = layout.gguf_dir(PERSONA)
    with stand_in_hub(lfs_threshold=1 << 20) as hub:
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.url,
            "HF_TOKEN": TOKEN,
            "HF_HOME": str(tmp_path / "hf-home"),
            "HF_HUB_DISABLE_XET": "1",
            "NO_PROXY": "127.0.0.1",
        }
        done = subprocess.run(
            [sys.executable, "-m", "persona_export", "push", "-p", PERSONA, "--repo", "me/cap"]
            + layout_args(layout)[2:],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"{hub.url}/me/cap"
    uploaded = hub.files("me/cap")
    assert sorted(uploaded) == sorted(GGUF_REPO)
    for name in GGUF_REPO[1:]:
        assert uploaded[name] == (folder / name).read_bytes(), name
    facts = json.loads((folder / "README.md.manifest.json").read_text())["facts"]
    assert uploaded["README.md"].decode() == render_card(facts, repo="me/cap")
    # the GGUFs went to LFS, by content hash; the small files inline in the commit
    assert set(hub.lfs) == {
        hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in GGUF_FILES
    }
    (commit,) = hub.repos["me/cap"].commits
    kinds = {line["value"]["path"]: line["key"] for line in commit["lines"][1:]}
    assert kinds == {n: "lfsFile" if n.endswith(".gguf") else "file" for n in GGUF_REPO}
    # never a manifest, a log, the verify report, or a local path
    root = str(verified_project.root).encode()
    for name, data in uploaded.items():
        assert not name.endswith((".json", ".log")), name
        assert root not in data, name
    # what Ollama reads from the repository says what the uploaded Modelfile says
    pulled = tmp_path / "pulled"
    pulled.mkdir()
    for name, data in uploaded.items():
        (pulled / name).write_bytes(data)
    modelfile = Modelfile.read(pulled / "Modelfile")
    assert read_hub_files(pulled, modelfile.from_) == Modelfile(
        **{**vars(modelfile), "licenses": (), "path": None}
    )
    assert (pulled / modelfile.from_).is_file()


def test_push_both_folders_to_two_repositories(
    verified_project: Project, hub: StandInHub, tmp_path: Path
) -> None:
    run = push_cli(verified_project, "--repo", "me/cap", "--what", "both", "--private")
    assert run.exit_code == 0, run.output  # type: ignore[attr-defined]
    assert run.stdout.splitlines()[-2:] == [f"{hub.url}/me/cap", f"{hub.url}/me/cap-gguf"]  # type: ignore[attr-defined]
    merged = verified_project.layout.merged(PERSONA)
    uploaded = hub.files("me/cap")
    shared = sorted(p.name for p in merged.iterdir() if p.name != "persona_export_manifest.json")
    assert sorted(uploaded) == shared
    for name in shared:
        if name != "README.md":
            assert uploaded[name] == (merged / name).read_bytes(), name
    merged_card = ModelCard(uploaded["README.md"].decode()).data.to_dict()
    assert merged_card["library_name"] == "transformers"
    assert "base_model" not in merged_card  # the tiny base is a local folder: no hub id
    assert "ollama run hf.co/me/cap-gguf" in uploaded["README.md"].decode()
    gguf_card = ModelCard(hub.files("me/cap-gguf")["README.md"].decode()).data.to_dict()
    assert gguf_card["base_model"] == "me/cap"  # the GGUFs quantize the merged repository
    assert gguf_card["base_model_relation"] == "quantized"
    assert hub.repos["me/cap"].private and hub.repos["me/cap-gguf"].private
    # pushed again with nothing changed: no new commit, nothing uploaded again
    puts = len(hub.called("PUT", "/lfs-"))
    again = push_cli(verified_project, "--repo", "me/cap", "--what", "both")
    assert again.exit_code == 0, again.output  # type: ignore[attr-defined]
    assert len(hub.called("PUT", "/lfs-")) == puts
    assert len(hub.repos["me/cap"].commits) == len(hub.repos["me/cap-gguf"].commits) == 1
    assert "me/cap already had these files: nothing to commit" in again.stderr  # type: ignore[attr-defined]


@pytest.mark.parametrize("damage", ["no-report", "failed", "file-changed", "stale-card"])
def test_an_export_verify_does_not_vouch_for_is_refused(
    damage: str, verified_project: Project, hub: StandInHub, tmp_path: Path
) -> None:
    project = copy_project(verified_project, tmp_path / "p")
    layout = project.layout
    folder = layout.gguf_dir(PERSONA)
    report = layout.verify_report(PERSONA)
    expected = {
        "no-report": f"there is no verify report ({report})",
        "failed": f"verify failed ({report})",
        "file-changed": "cap-Q8_0.gguf changed after verify checked it",
        "stale-card": f"the card and Hub files in {folder} are not up to date (run: "
        f"persona-export card --persona {PERSONA})",
    }[damage]
    if damage == "no-report":
        report.unlink()
    elif damage == "failed":
        data = json.loads(report.read_text())
        report.write_text(json.dumps({**data, "passed": False}))
    elif damage == "file-changed":
        with (folder / "cap-Q8_0.gguf").open("ab") as f:
            f.write(b"\0")
    else:
        (folder / "params").write_text("{}")
    run = push_cli(project, "--repo", "me/cap")
    assert run.exit_code == 1  # type: ignore[attr-defined]
    error = run.stderr.splitlines()[-2]  # type: ignore[attr-defined]
    assert error.startswith(f"error: {PERSONA} was not pushed: {expected}")
    assert run.stderr.splitlines()[-1].startswith("hint: run `persona-export export")  # type: ignore[attr-defined]
    assert hub.requests == []  # refused before a byte left
    if damage in ("no-report", "failed"):
        forced = push_cli(project, "--repo", "me/cap", "--force")
        assert forced.exit_code == 0, forced.output  # type: ignore[attr-defined]
        assert f"warning: pushing anyway (--force): {expected}" in forced.stderr  # type: ignore[attr-defined]
        assert "No passing verify report" in hub.files("me/cap")["README.md"].decode()


def test_work_dir_points_at_a_demo_style_project(verified_project: Project, tmp_path: Path) -> None:
    work = tmp_path / "demo_work"
    shutil.copytree(verified_project.root, work, ignore=shutil.ignore_patterns("*.safetensors"))
    args = ["push", "-p", PERSONA, "--repo", "me/cap", "--dry-run", "--work-dir", str(work)]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    assert run.stdout.startswith(f"me/cap (gguf, revision main, public if new) <- {work}/")
    both = CliRunner().invoke(app, [*args, "--gguf-dir", "elsewhere"])
    assert both.exit_code == 2
    assert both.stderr.startswith("error: --work-dir replaces --merged-dir and --gguf-dir")
