"""`persona-export merge` on bad input, re-runs and interruptions: exit codes, one-line
messages, and never a half-written folder taken for complete."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from persona_export.artifacts import DIR_MANIFEST
from persona_export.cli import app
from tests import modelkit as mk
from tests.mergekit import load_tensors, make_project

runner = CliRunner()


@pytest.fixture(scope="module")
def phi_adapter(phi_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mk.make_adapter(phi_small, tmp_path_factory.mktemp("cli") / "adapter")


@pytest.fixture
def project(tmp_path: Path, phi_adapter: Path) -> Path:
    make_project(tmp_path, phi_adapter)
    return tmp_path


def merge_cli(root: Path, base: Path | str, *extra: str) -> Any:
    args = ["merge", "--persona", "cap", "--base-model-id", str(base)]
    args += ["--adapter-dir", str(root / "trained_adapters")]
    args += ["--output-dir-base", str(root / "merged_models"), "--device", "cpu", *extra]
    return runner.invoke(app, args)


def error_line(result: Any) -> str:
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.output
    return errors[0].removeprefix("error: ")


def nothing_written(root: Path) -> bool:
    out = root / "merged_models"
    return not out.exists() or not any(out.iterdir())


def test_merges_and_prints_the_folder(project: Path, phi_small: Path) -> None:
    result = merge_cli(project, phi_small)
    assert result.exit_code == 0, result.output
    merged = project / "merged_models" / "cap"
    assert result.stdout == f"{merged}\n"
    assert "merged 8 weights (bfloat16, cpu) into 1 shard(s)" in result.stderr
    assert (merged / DIR_MANIFEST).is_file()


def test_underscore_spellings_are_accepted(project: Path, phi_small: Path) -> None:
    result = runner.invoke(
        app,
        [
            "merge",
            "--persona=cap",
            f"--base_model_id={phi_small}",
            f"--adapter_dir={project / 'trained_adapters'}",
            f"--output_dir_base={project / 'out'}",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (project / "out" / "cap" / DIR_MANIFEST).is_file()


def test_rerun_is_skipped_force_redoes_changed_adapter_redoes(
    project: Path, phi_small: Path
) -> None:
    merged = project / "merged_models" / "cap"
    assert merge_cli(project, phi_small).exit_code == 0
    before = (merged / "model.safetensors").stat().st_mtime_ns
    again = merge_cli(project, phi_small)
    assert again.exit_code == 0
    assert f"{merged} is up to date (use --force to merge again)" in again.stderr
    assert (merged / "model.safetensors").stat().st_mtime_ns == before

    forced = merge_cli(project, phi_small, "--force")
    assert forced.exit_code == 0 and "up to date" not in forced.stderr
    after_force = (merged / "model.safetensors").stat().st_mtime_ns
    assert after_force != before

    config = project / "trained_adapters" / "cap_final_adapter" / "adapter_config.json"
    data = json.loads(config.read_text())
    data["lora_alpha"] = 32
    config.write_text(json.dumps(data))
    changed = merge_cli(project, phi_small)
    assert changed.exit_code == 0 and "up to date" not in changed.stderr
    assert (merged / "model.safetensors").stat().st_mtime_ns != after_force

    other_dtype = merge_cli(project, phi_small, "--dtype", "f32")
    assert other_dtype.exit_code == 0 and "up to date" not in other_dtype.stderr


def test_edited_output_is_not_trusted(project: Path, phi_small: Path) -> None:
    merged = project / "merged_models" / "cap"
    assert merge_cli(project, phi_small).exit_code == 0
    (merged / "config.json").write_text("{}")
    result = merge_cli(project, phi_small)
    assert result.exit_code == 0 and "up to date" not in result.stderr
    assert (merged / "config.json").read_bytes() == (phi_small / "config.json").read_bytes()


def test_missing_adapter_folder_lists_existing_personas(project: Path, phi_small: Path) -> None:
    shutil.copytree(
        project / "trained_adapters" / "cap_final_adapter",
        project / "trained_adapters" / "zen_coder_final_adapter",
    )
    result = runner.invoke(
        app,
        ["merge", "-p", "nobody", "--base-model-id", str(phi_small),
         "--adapter-dir", str(project / "trained_adapters"),
         "--output-dir-base", str(project / "merged_models")],
    )  # fmt: skip
    assert result.exit_code == 1
    where = project / "trained_adapters" / "nobody_final_adapter"
    assert error_line(result) == (
        f"no adapter for persona 'nobody': {where} not found (personas with adapters in "
        f"{project / 'trained_adapters'}: cap, zen_coder)"
    )
    assert "hint: check --persona" in result.stderr
    assert nothing_written(project)


def test_missing_adapter_dir_says_so(tmp_path: Path, phi_small: Path) -> None:
    result = merge_cli(tmp_path, phi_small)
    assert result.exit_code == 1
    assert error_line(result).endswith(f"({tmp_path / 'trained_adapters'} does not exist)")


@pytest.mark.parametrize("name", ["a/b", "..", "../cap", "x/../y", ""])
def test_persona_name_with_slash_or_dotdot_is_a_usage_error(
    project: Path, phi_small: Path, name: str
) -> None:
    result = runner.invoke(app, ["merge", "--persona", name, "--base-model-id", str(phi_small)])
    assert result.exit_code == 2
    assert error_line(result) == f"invalid persona name {name!r}"
    assert nothing_written(project)


def test_folder_without_adapter_config(project: Path, phi_small: Path) -> None:
    folder = project / "trained_adapters" / "cap_final_adapter"
    (folder / "adapter_config.json").unlink()
    result = merge_cli(project, phi_small)
    assert result.exit_code == 1
    assert error_line(result) == (
        f"{folder} has no adapter_config.json: it is not a PEFT adapter folder"
    )
    assert nothing_written(project)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"peft_type": "IA3"}, "peft_type 'IA3' is not supported; only LoRA"),
        ({"trainable_token_indices": [1, 2]}, "trainable_token_indices (trainable_token_indices) is not supported"),
        ({"layer_replication": [[0, 1]]}, "layer_replication (layer_replication) is not supported"),
    ],
)  # fmt: skip
def test_unsupported_adapter_is_refused_before_writing(
    project: Path, phi_small: Path, change: dict[str, Any], message: str
) -> None:
    config = project / "trained_adapters" / "cap_final_adapter" / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **change}))
    result = merge_cli(project, phi_small)
    assert result.exit_code == 1
    assert message in error_line(result)
    assert nothing_written(project)


def test_adapter_from_another_base_is_a_shape_mismatch(
    project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = mk.make_phi4mini(
        tmp_path_factory.mktemp("other") / "base",
        vocab="small",
        hidden_size=128,
        intermediate_size=256,
    )
    result = merge_cli(project, other)
    assert result.exit_code == 1
    assert error_line(result) == (
        "adapter does not fit the base model: model.layers.0.mlp.down_proj has lora_A [8, 512] "
        "/ lora_B [256, 8] but the base weight model.layers.0.mlp.down_proj.weight is [128, 256]"
    )
    assert "hint: the adapter was trained on a different base model" in result.stderr
    assert nothing_written(project)


def test_adapter_for_modules_the_base_lacks(project: Path, llama_spm: Path) -> None:
    result = merge_cli(project, llama_spm)
    assert result.exit_code == 1
    weights = project / "trained_adapters" / "cap_final_adapter" / "adapter_model.safetensors"
    assert error_line(result) == (
        f"{weights}: the adapter targets model.layers.0.mlp.gate_up_proj, which the base model "
        "does not have (no tensor model.layers.0.mlp.gate_up_proj.weight)"
    )
    assert nothing_written(project)


def test_different_base_name_is_a_warning(project: Path, phi_small: Path) -> None:
    config = project / "trained_adapters" / "cap_final_adapter" / "adapter_config.json"
    data = json.loads(config.read_text())
    data["base_model_name_or_path"] = "someone/another-model"
    config.write_text(json.dumps(data))
    result = merge_cli(project, phi_small)
    assert result.exit_code == 0
    assert (
        f"warning: the adapter was trained on someone/another-model, merging it into {phi_small}"
        in result.stderr
    )


def _copy_base(base: Path, dest: Path) -> Path:
    shutil.copytree(base, dest)
    return dest


def test_truncated_base_shard(project: Path, phi_small: Path, tmp_path: Path) -> None:
    base = _copy_base(phi_small, tmp_path / "base")
    shard = base / "model.safetensors"
    size = shard.stat().st_size
    os.truncate(shard, size - 1000)
    result = merge_cli(project, base)
    assert result.exit_code == 1
    message = error_line(result)
    assert message == (
        f"{shard} is not a valid safetensors file: truncated: its header describes {size} "
        f"bytes, the file has {size - 1000}"
    )
    assert "hint: the file is damaged or incomplete" in result.stderr
    assert nothing_written(project)


@pytest.mark.parametrize(
    ("garbage", "why"),
    [
        (b"\xff" * 16, "header length"),
        ((20).to_bytes(8, "little") + b"{not json at all!!}", "its JSON header does not parse"),
    ],
)
def test_corrupt_adapter_safetensors(
    project: Path, phi_small: Path, garbage: bytes, why: str
) -> None:
    weights = project / "trained_adapters" / "cap_final_adapter" / "adapter_model.safetensors"
    weights.write_bytes(garbage + weights.read_bytes()[len(garbage) :])
    result = merge_cli(project, phi_small)
    assert result.exit_code == 1
    assert error_line(result).startswith(f"{weights} is not a valid safetensors file: {why}")
    assert nothing_written(project)


def test_pickle_adapter_is_refused_unless_allowed(project: Path, phi_small: Path) -> None:
    import torch
    from safetensors.torch import load_file

    folder = project / "trained_adapters" / "cap_final_adapter"
    expected = merge_cli(project, phi_small)
    reference = load_tensors(project / "merged_models" / "cap")
    shutil.rmtree(project / "merged_models")
    weights = folder / "adapter_model.safetensors"
    torch.save(load_file(str(weights)), folder / "adapter_model.bin")
    weights.unlink()

    refused = merge_cli(project, phi_small)
    assert refused.exit_code == 1
    assert error_line(refused) == (
        f"{folder / 'adapter_model.bin'} is a pickle file; loading pickles can run arbitrary "
        "code, so it is refused"
    )
    assert "--allow-pickle" in refused.stderr
    assert nothing_written(project)

    allowed = merge_cli(project, phi_small, "--allow-pickle")
    assert expected.exit_code == 0 and allowed.exit_code == 0, allowed.output
    ours = load_tensors(project / "merged_models" / "cap")
    assert set(ours) == set(reference) and all(ours[k].equal(reference[k]) for k in ours)


def test_tokenizer_larger_than_embeddings_is_refused(tmp_path: Path, llama_spm: Path) -> None:
    from safetensors.torch import load_file, save_file

    adapter = mk.make_adapter(llama_spm, tmp_path / "adapter", added_tokens=["<a>", "<b>"])
    weights = adapter / "adapter_model.safetensors"
    kept = {k: v for k, v in load_file(str(weights)).items() if "lora_" in k}
    save_file(kept, str(weights), metadata={"format": "pt"})  # "forgot" the embeddings
    make_project(tmp_path, adapter)
    result = merge_cli(tmp_path, llama_spm)
    assert result.exit_code == 1
    assert error_line(result) == (
        "the adapter folder's tokenizer uses 514 token ids but the merged embeddings have 512 rows"
    )
    assert "save_embedding_layers=True" in result.stderr
    assert nothing_written(tmp_path)


def test_not_enough_disk_space(
    project: Path, phi_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil as shutil_module

    usage = shutil_module.disk_usage(project)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda _p: usage._replace(free=1000))
    result = merge_cli(project, phi_small)
    assert result.exit_code == 1
    assert error_line(result).startswith("not enough disk space for the merged model: it needs ")
    assert nothing_written(project)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--dtype", "f8", "unknown --dtype 'f8'"),
        ("--device", "tpu", "unknown --device 'tpu'"),
    ],
)
def test_bad_option_values_are_usage_errors(
    project: Path, phi_small: Path, option: str, value: str, message: str
) -> None:
    result = merge_cli(project, phi_small, option, value)
    assert result.exit_code == 2
    assert error_line(result) == message
    assert nothing_written(project)


def test_cuda_without_a_gpu_is_a_usage_error(project: Path, phi_small: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    args = ["merge", "-p", "cap", "--base-model-id", str(phi_small), "--device", "cuda"]
    args += ["--adapter-dir", str(project / "trained_adapters")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert error_line(result) == "--device cuda was asked for but no CUDA device is available"


def test_interrupted_merge_leaves_no_folder(
    project: Path, phi_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from persona_export.merge import execute

    calls = {"n": 0}
    real = execute.merge_blocks

    def interrupted(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # midway: the shard file exists and is half written
            raise KeyboardInterrupt
        real(*args, **kwargs)

    monkeypatch.setattr(execute, "merge_blocks", interrupted)
    result = merge_cli(project, phi_small)
    assert result.exit_code == 130
    assert "interrupted; outputs of the unfinished stage were discarded" in result.stderr
    assert nothing_written(project)

    monkeypatch.setattr(execute, "merge_blocks", real)
    assert merge_cli(project, phi_small).exit_code == 0


def test_leftovers_of_a_killed_run_are_never_taken_as_complete(
    project: Path, phi_small: Path
) -> None:
    """A run killed with SIGKILL leaves its temporary sibling: the next run removes it. A
    folder made by hand (or by an old script) has no manifest: it is not ours, so it is
    neither trusted nor replaced (one-line error, files untouched) until the user moves it."""
    out = project / "merged_models"
    partial = out / ".cap.partial-999999999-1"  # pid 999999999 does not exist
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"\0" * 100)
    final = out / "cap"
    final.mkdir()
    (final / "model.safetensors").write_bytes(b"half")
    (final / "config.json").write_text("{}")
    result = merge_cli(project, phi_small)
    assert result.exit_code == 1 and "up to date" not in result.stderr
    assert error_line(result).startswith(f"{final} exists and was not written by the merge stage")
    assert (final / "model.safetensors").read_bytes() == b"half"
    final.rename(project / "moved-away")
    result = merge_cli(project, phi_small)
    assert result.exit_code == 0 and "up to date" not in result.stderr
    assert not partial.exists()
    assert (final / DIR_MANIFEST).is_file()
    assert len(load_tensors(final)) == 14


def test_offline_hub_id_without_cache_names_the_model(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    result = merge_cli(project, "microsoft/Phi-4-mini-instruct")
    assert result.exit_code == 1
    assert error_line(result) == (
        "base model microsoft/Phi-4-mini-instruct is not in the Hugging Face cache "
        f"({tmp_path / 'empty-cache'}) and the hub is disabled (HF_HUB_OFFLINE is set)"
    )
    assert (
        "hint: download it where the hub is reachable (huggingface-cli download "
        "microsoft/Phi-4-mini-instruct) into this machine's Hugging Face cache, or pass a "
        "local folder with --base-model-id /path/to/model"
    ) in result.stderr
    assert nothing_written(project)


def test_hub_id_is_found_in_the_cache_offline(
    project: Path, phi_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hf-cache"
    repo = cache / "models--acme--tiny-phi"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(phi_small, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    result = merge_cli(project, "acme/tiny-phi")
    assert result.exit_code == 0, result.output
    merged = project / "merged_models" / "cap"
    manifest = json.loads((merged / DIR_MANIFEST).read_text())
    assert manifest["base_model"] == "acme/tiny-phi"
    assert manifest["base_dir"] == str(repo / "snapshots" / commit)


def test_missing_local_base_folder(project: Path, tmp_path: Path) -> None:
    result = merge_cli(project, tmp_path / "no-such-model")
    assert result.exit_code == 1
    assert error_line(result) == f"base model folder {tmp_path / 'no-such-model'} does not exist"
