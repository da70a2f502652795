"""The gguf stage's mechanics with a stand-in converter: input checks, atomic output,
manifest, freshness, warnings, failures and the transformers-5 tokenizer fix.

The real converter on real tiny models is tested in tests/test_gguf_convert.py.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from persona_export.cli import app
from persona_export.errors import InvalidInputError, OutputConflictError
from persona_export.llamacpp import vendor
from persona_export.stages.gguf import GgufConfig
from persona_export.stages.gguf import run as run_gguf
from tests.ggufkit import (
    TEMPLATE,
    dir_args,
    fake_converter,
    leftovers,
    make_fake_merged,
    project_layout,
    sha256,
    write_gguf,
)

runner = CliRunner()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    make_fake_merged(tmp_path)
    return tmp_path


@pytest.fixture
def good_gguf(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "converted.gguf")


def use_converter(monkeypatch: pytest.MonkeyPatch, script: Path) -> None:
    monkeypatch.setattr(vendor, "converter_script", lambda name="": script)


def gguf_cli(root: Path, *extra: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["gguf", "--persona", "cap", *dir_args(root), *extra])


def seen(root: Path) -> dict[str, object]:
    return json.loads((root / "seen.json").read_text())


def test_converts_checks_and_writes_a_manifest(
    project: Path, good_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = (
        "INFO:hf-to-gguf:Loading model",
        "WARNING:hf-to-gguf:Unknown RoPE type: default",
        "WARNING:hf-to-gguf:Couldn't find context length in config.json",
    )
    use_converter(monkeypatch, fake_converter(project, good_gguf, lines=lines))
    result = gguf_cli(project)
    assert result.exit_code == 0, result.output
    out = project / "gguf_models" / "cap" / "cap-F16.gguf"
    size = out.stat().st_size
    n_weights = 300 * 16 + 2 * (16 + 256) + 16
    assert result.stdout == f"F16\t{size / 1e9:.2f} GB\t{size * 8 / n_weights:.2f} bpw\t{out}\n"
    # a warning about the input reaches the user; the converter's bookkeeping only with -v
    assert "warning: converter: Couldn't find context length in config.json\n" in result.stderr
    assert "RoPE" not in result.stderr
    assert sha256(out) == sha256(good_gguf)

    argv = seen(project)["argv"]
    merged = project / "merged_models" / "cap"
    assert isinstance(argv, list)
    assert argv[0] == str(merged)
    assert argv[1] == "--outfile"
    assert Path(argv[2]).parent == out.parent
    assert Path(argv[2]).name.startswith(".cap-F16.gguf.partial-")
    assert argv[3:] == ["--outtype", "f16", "--model-name", "cap"]

    manifest = json.loads((out.parent / "cap-F16.gguf.manifest.json").read_text())
    assert manifest["stage"] == "gguf"
    assert manifest["options"] == {
        "outtype": "f16",
        "model_name": "cap",
        "llama_cpp_commit": vendor.commit(),
    }
    assert manifest["llama_cpp_commit"] == vendor.commit()
    assert {name: rec["sha256"] for name, rec in manifest["inputs"].items()} == {
        p.name: sha256(p) for p in merged.iterdir()
    }
    assert manifest["outputs"]["gguf"]["sha256"] == sha256(out)
    assert manifest["outputs"]["gguf"]["size"] == size
    assert manifest["warnings"] == ["Couldn't find context length in config.json"]
    assert manifest["tensor_count"] == 6
    assert leftovers(out.parent) == []


def test_rerun_with_unchanged_inputs_is_skipped_quickly(
    project: Path, good_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_converter(monkeypatch, fake_converter(project, good_gguf))
    first = gguf_cli(project)
    assert first.exit_code == 0
    (project / "seen.json").unlink()
    started = time.perf_counter()
    again = gguf_cli(project)
    assert time.perf_counter() - started < 1.0
    assert again.exit_code == 0
    assert again.stdout == first.stdout
    out = project / "gguf_models" / "cap" / "cap-F16.gguf"
    assert again.stderr == f"{out} is up to date (use --force to convert again)\n"
    assert not (project / "seen.json").exists()  # the converter did not run

    assert gguf_cli(project, "--force").exit_code == 0
    assert (project / "seen.json").exists()


def test_touched_but_unchanged_input_stays_fresh_changed_one_does_not(
    project: Path, good_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = project_layout(project)
    use_converter(monkeypatch, fake_converter(project, good_gguf))
    assert not run_gguf(GgufConfig("cap", layout=layout)).up_to_date
    config_json = project / "merged_models" / "cap" / "config.json"
    os.utime(config_json, ns=(time.time_ns(), time.time_ns()))
    assert run_gguf(GgufConfig("cap", layout=layout)).up_to_date
    config_json.write_text(config_json.read_text().replace('"llama"', '"llama" '))
    assert not run_gguf(GgufConfig("cap", layout=layout)).up_to_date


def test_output_changed_or_without_manifest_is_not_trusted(
    project: Path, good_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A changed output is made again; a file without our manifest is not ours: it is
    neither trusted nor replaced."""
    layout = project_layout(project)
    use_converter(monkeypatch, fake_converter(project, good_gguf))
    result = run_gguf(GgufConfig("cap", layout=layout))
    with open(result.gguf_path, "ab") as fh:
        fh.write(b"\0")
    assert not run_gguf(GgufConfig("cap", layout=layout)).up_to_date
    result.manifest_path.unlink()
    before = result.gguf_path.read_bytes()
    with pytest.raises(OutputConflictError) as refused:
        run_gguf(GgufConfig("cap", layout=layout))
    assert refused.value.message.startswith(f"{result.gguf_path} exists and was not written by")
    assert result.gguf_path.read_bytes() == before


def test_wrong_converter_output_fails_and_is_not_kept(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_template = write_gguf(tmp_path / "no_template.gguf", chat_template=None, name="other")
    use_converter(monkeypatch, fake_converter(project, no_template))
    result = gguf_cli(project)
    assert result.exit_code == 1
    merged = project / "merged_models" / "cap"
    assert result.stderr.splitlines()[-2] == (
        f"error: the converter's output for {merged} failed its checks: general.name is "
        "'other', expected 'cap'; tokenizer.chat_template is missing"
    )
    out_dir = project / "gguf_models" / "cap"
    assert sorted(p.name for p in out_dir.iterdir()) == ["cap-F16.gguf.log"]


def test_converter_output_with_another_template_fails(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = write_gguf(tmp_path / "other.gguf", chat_template="{{ messages }}")
    use_converter(monkeypatch, fake_converter(project, other))
    result = gguf_cli(project)
    assert result.exit_code == 1
    assert "tokenizer.chat_template differs from the source's chat template" in result.stderr


def test_converter_failure_shows_the_relevant_lines(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = (
        "INFO:hf-to-gguf:Loading model: cap",
        "Writing:  10%|#",
        "Traceback (most recent call last):",
        "RuntimeError: something broke",
    )
    use_converter(monkeypatch, fake_converter(project, None, exit_code=1, lines=lines))
    result = gguf_cli(project)
    assert result.exit_code == 1
    log = project / "gguf_models" / "cap" / "cap-F16.gguf.log"
    assert result.stderr.endswith(
        f"error: convert_hf_to_gguf.py failed with exit code 1 (log: {log}):\n"
        "INFO:hf-to-gguf:Loading model: cap\n"
        "Traceback (most recent call last):\n"
        "RuntimeError: something broke\n"
        "hint: see the log; if the folder converts by hand with the same converter, report a "
        "bug\n"
    )
    assert leftovers(log.parent) == []
    assert not (log.parent / "cap-F16.gguf").exists()


def test_unmerged_lora_tensor_is_explained(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = ("ValueError: Can not map tensor 'model.layers.0.self_attn.q_proj.lora_A.weight'",)
    use_converter(monkeypatch, fake_converter(project, None, exit_code=1, lines=lines))
    result = gguf_cli(project)
    assert result.exit_code == 1
    merged = project / "merged_models" / "cap"
    assert result.stderr.endswith(
        f"error: {merged} holds a tensor the converter cannot map: "
        "model.layers.0.self_attn.q_proj.lora_A.weight\n"
        "hint: the adapter was not merged into the weights: run the merge stage again with "
        "--force\n"
    )


def test_stale_partial_of_a_dead_run_is_removed(
    project: Path, good_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out_dir = project / "gguf_models" / "cap"
    out_dir.mkdir(parents=True)
    stale = out_dir / ".cap-F16.gguf.partial-999999999-1"
    stale.write_bytes(b"half a file")
    use_converter(monkeypatch, fake_converter(project, good_gguf))
    assert gguf_cli(project).exit_code == 0
    assert not stale.exists()


def test_auto_outtype_follows_the_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    merged = make_fake_merged(tmp_path)
    # bfloat16 has no numpy dtype: a safetensors file written by hand (header, then data)
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}})
    raw = len(header).to_bytes(8, "little") + header.encode() + bytes(8)
    (merged / "model.safetensors").write_bytes(raw)
    bf16 = write_gguf(tmp_path / "bf16.gguf", file_type=32)
    use_converter(monkeypatch, fake_converter(tmp_path, bf16))
    result = run_gguf(GgufConfig("cap", layout=project_layout(tmp_path), outtype="auto"))
    assert result.file_type == "BF16"
    assert result.gguf_path.name == "cap-BF16.gguf"
    assert seen(tmp_path)["argv"][3:5] == ["--outtype", "bf16"]  # type: ignore[index]


def test_transformers5_tokenizer_is_converted_through_a_shadow_folder(
    tmp_path: Path, good_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok_config = {"tokenizer_class": "TokenizersBackend", "backend": "tokenizers"}
    merged = make_fake_merged(tmp_path, architecture="Phi3ForCausalLM", tokenizer_config=tok_config)
    (merged / "chat_template.jinja").write_text(TEMPLATE, encoding="utf-8")
    stale = tmp_path / "gguf_models" / "cap" / ".cap-F16.gguf.work-999999999-1" / "cap"
    stale.mkdir(parents=True)  # left by a run that was killed
    use_converter(monkeypatch, fake_converter(tmp_path, good_gguf))
    # the fake GGUF says llama, which the check would refuse for phi3: accept it here
    monkeypatch.setattr("persona_export.stages.gguf.KNOWN_ARCHITECTURES", {})
    result = run_gguf(GgufConfig("cap", layout=project_layout(tmp_path)))
    got = seen(tmp_path)
    shadow = Path(got["argv"][0])  # type: ignore[index]
    assert shadow.name == "cap"  # the converter derives general.* fields from the name
    assert shadow.parent.name.startswith(".cap-F16.gguf.work-")
    assert shadow.parent.parent == result.gguf_path.parent
    assert got["tokenizer_config"] == {**tok_config, "tokenizer_class": "GPT2Tokenizer"}
    assert got["symlinks"] == sorted(
        p.name for p in merged.iterdir() if p.name != "tokenizer_config.json"
    )
    assert result.tokenizer_fix == (
        "tokenizer_config.json: tokenizer_class 'TokenizersBackend' -> 'GPT2Tokenizer'"
    )
    assert leftovers(result.gguf_path.parent) == []
    assert json.loads((merged / "tokenizer_config.json").read_text()) == tok_config


def test_phi3_without_sentencepiece_or_byte_level_bpe_stops_before_converting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spm_like = {
        "model": {"type": "BPE", "byte_fallback": True, "vocab": {"a": 0}, "merges": []},
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581"},
        "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}]},
    }
    make_fake_merged(
        tmp_path,
        architecture="Phi3ForCausalLM",
        tokenizer_config={"tokenizer_class": "TokenizersBackend", "chat_template": TEMPLATE},
        tokenizer_json=spm_like,
    )
    use_converter(monkeypatch, fake_converter(tmp_path, None))
    result = gguf_cli(tmp_path)
    assert result.exit_code == 1
    merged = tmp_path / "merged_models" / "cap"
    assert result.stderr == (
        f"error: {merged}/tokenizer_config.json says tokenizer_class 'TokenizersBackend' and "
        "there is no tokenizer.model: the pinned llama.cpp phi3 converter needs either a "
        "SentencePiece tokenizer.model or a byte-level BPE tokenizer declared as GPT2Tokenizer\n"
        "hint: copy the base model's tokenizer files (tokenizer.model for Phi-3, or "
        f"tokenizer.json + tokenizer_config.json for Phi-4-mini) into {merged} byte for byte, "
        "then run the gguf stage again\n"
    )
    assert not (tmp_path / "seen.json").exists()
    assert leftovers(tmp_path / "gguf_models" / "cap") == []


def test_missing_merged_model_says_which_command_makes_it(tmp_path: Path) -> None:
    result = gguf_cli(tmp_path)
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: no merged model for persona 'cap' at {tmp_path}/merged_models/cap\n"
        "hint: run `persona-export merge --persona cap` first (or pass --merged-dir)\n"
    )


def test_missing_converter_says_run_vendor(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSONA_EXPORT_VENDOR_DIR", str(tmp_path / "no-vendor"))
    result = gguf_cli(project)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: vendored llama.cpp converter not found at {tmp_path}/no-vendor/"
        "convert_hf_to_gguf.py",
        f"hint: {vendor.VENDOR_HINT}",
    ]


def test_bad_outtype_is_a_usage_error(project: Path) -> None:
    result = gguf_cli(project, "--outtype", "q4_k_m")
    assert result.exit_code == 2
    assert result.stderr == (
        "error: unknown --outtype 'q4_k_m'\nhint: use one of: f16, bf16, f32, q8_0, auto\n"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("pickle", "holds only pickle weights (pytorch_model.bin)"),
        ("no_template", "has no chat template"),
        ("no_tokenizer", "has no tokenizer"),
        ("no_config", "config.json is missing or not valid JSON"),
        ("missing_shard", "is incomplete: the index names model-00002-of-00002.safetensors"),
    ],
)
def test_unusable_merged_folder_is_refused_before_converting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str, message: str
) -> None:
    merged = make_fake_merged(tmp_path, weights="bin" if change == "pickle" else "safetensors")
    if change == "no_template":
        (merged / "tokenizer_config.json").write_text("{}")
    elif change == "no_tokenizer":
        (merged / "tokenizer.json").unlink()
    elif change == "no_config":
        (merged / "config.json").unlink()
    elif change == "missing_shard":
        index = {"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}
        (merged / "model.safetensors.index.json").write_text(json.dumps(index))
    use_converter(monkeypatch, fake_converter(tmp_path, None))
    with pytest.raises(InvalidInputError) as info:
        run_gguf(GgufConfig("cap", layout=project_layout(tmp_path)))
    assert message in info.value.message
    assert not (tmp_path / "seen.json").exists()
    assert gguf_cli(tmp_path).exit_code == 1
