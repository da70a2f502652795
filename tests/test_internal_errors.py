"""Inputs that ended in "internal error: ... this is a bug" (issue 11, "Smaller, all to fix";
found with tests/test_fuzz.py and by hand). Each now has its own one-line error naming the
file and what is wrong, with a hint; and one bad adapter folder does not stop `export --all`
from exporting the others.

Found and fixed (the adapter_config.json ones are in tests/test_merge_inputs.py): rank_pattern
or alpha_pattern not an object (1), a number (2), a key that is not a regular expression
(3); a NUL byte in base_model_name_or_path (4); tokenizer_config.json's added_tokens_decoder
not an object (5); tokenizer.json's added token ids (6) or vocabulary ids (7) not numbers and
its model not an object (8); a safetensors header with an infinite shape or offset (9) or
nested too deep to parse (10); any JSON input (configs, tokenizer files, manifests) nested too
deep (11); a personas or prompts TOML nested too deep (12); a manifest whose records are not
objects (13)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from persona_export.cli import app
from tests import hf_chat_templates as hf
from tests.modelfile_kit import PHI, layout_args, make_persona_project

runner = CliRunner()
DEEP_JSON = "[" * 100_000 + "]" * 100_000
DEEP_TOML = "a = " + "[" * 100_000 + "]" * 100_000 + "\n"


def error_line(result: Any) -> str:
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output, result.output
    assert "internal error" not in errors[0], errors[0]
    assert lines[-1].startswith(("error: ", "hint: ")), result.stderr
    return errors[0].removeprefix("error: ")


# -- merge: safetensors headers and JSON files -----------------------------------------------


@pytest.fixture(scope="module")
def phi_adapter(phi_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests import modelkit as mk

    return mk.make_adapter(phi_small, tmp_path_factory.mktemp("internal") / "adapter")


def _merge(root: Path, base: Path) -> Any:
    args = ["merge", "--persona", "cap", "--base-model-id", str(base), "--device", "cpu"]
    args += ["--adapter-dir", str(root / "trained_adapters")]
    args += ["--output-dir-base", str(root / "merged_models")]
    return runner.invoke(app, args)


def _with_header(path: Path, edit: Any) -> None:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    new = edit(header)
    data = new.encode() if isinstance(new, str) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(data)) + data + raw[8 + length :])


def _first(header: dict[str, Any]) -> dict[str, Any]:
    return header[next(k for k in sorted(header) if k != "__metadata__")]


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda h: _first(h).__setitem__("shape", [float("inf"), 4]), "entry '{name}' has a shape or data_offsets that are not whole numbers"),
        (lambda h: _first(h).__setitem__("data_offsets", [0, float("inf")]), "entry '{name}' has a shape or data_offsets that are not whole numbers"),
        (lambda h: _first(h).__setitem__("shape", [1.5, 4]), "entry '{name}' has a shape or data_offsets that are not whole numbers"),
        (lambda h: _first(h).__setitem__("data_offsets", "04"), "entry '{name}' has a shape or data_offsets that are not whole numbers"),
        (lambda h: DEEP_JSON, "its JSON header is nested too deeply"),
    ],
    ids=["shape-inf", "offset-inf", "shape-1.5", "offsets-string", "nested"],
)  # fmt: skip
def test_a_safetensors_header_with_impossible_values(
    tmp_path: Path, phi_small: Path, phi_adapter: Path, edit: Any, why: str
) -> None:
    """An infinite shape gave 'internal error: OverflowError', a deep header RecursionError;
    1.5 and "04" were taken as 1 and [0, 4]."""
    from tests.mergekit import make_project

    layout = make_project(tmp_path, phi_adapter)
    weights = layout.adapter("cap") / "adapter_model.safetensors"
    raw = weights.read_bytes()
    name = sorted(k for k in json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]]) if k != "__metadata__")[0]  # fmt: skip
    _with_header(weights, edit)
    result = _merge(tmp_path, phi_small)
    assert result.exit_code == 1
    assert error_line(result) == (
        f"{weights} is not a valid safetensors file: {why.format(name=name)}"
    )
    assert not (tmp_path / "merged_models").exists()


@pytest.mark.parametrize("which", ["adapter_config.json", "config.json"])
def test_json_nested_too_deeply(
    tmp_path: Path, phi_small: Path, phi_adapter: Path, which: str
) -> None:
    import shutil

    from tests.mergekit import make_project

    layout = make_project(tmp_path, phi_adapter)
    base = tmp_path / "base"
    shutil.copytree(phi_small, base)
    path = (layout.adapter("cap") if which == "adapter_config.json" else base) / which
    path.write_text(DEEP_JSON)
    result = _merge(tmp_path, base)
    assert result.exit_code == 1
    assert error_line(result) == f"{path} is not valid JSON"


# -- modelfile: tokenizer files, personas ----------------------------------------------------


def _modelfile(layout: Any, *extra: str) -> Any:
    return runner.invoke(app, ["modelfile", "--persona", "cap", *layout_args(layout), *extra])


def _edit_json(path: Path, edit: Any) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("file", "edit", "why"),
    [
        ("tokenizer_config.json", lambda d: d.__setitem__("added_tokens_decoder", [1, 2]), "'added_tokens_decoder' is not an object"),
        ("tokenizer_config.json", lambda d: d.__setitem__("added_tokens_decoder", "x"), "'added_tokens_decoder' is not an object"),
        ("tokenizer.json", lambda d: d.__setitem__("model", [1]), "'model' is not an object"),
        ("tokenizer.json", lambda d: d["added_tokens"].append({"id": [1], "content": "x"}), "an added token's id is not a number: [1]"),
        ("tokenizer.json", lambda d: d["model"]["vocab"].__setitem__("zz", [7]), "the id of 'zz' is not a number: [7]"),
    ],
    ids=["decoder-list", "decoder-string", "model-list", "added-id-list", "vocab-id-list"],
)  # fmt: skip
def test_tokenizer_files_with_values_of_the_wrong_type(
    tmp_path: Path, file: str, edit: Any, why: str
) -> None:
    """Each gave 'internal error' (AttributeError or TypeError) in the modelfile stage."""
    layout = make_persona_project(tmp_path, "cap", hf.PHI4MINI, PHI)
    merged = layout.merged("cap")
    _edit_json(merged / file, edit)
    # an end-of-sequence id the added tokens do not name sends the reader into tokenizer.json
    (merged / "generation_config.json").write_text('{"eos_token_id": [999999]}')
    result = _modelfile(layout)
    assert result.exit_code == 1
    assert error_line(result) == f"{merged / file}: {why}"
    assert not layout.modelfile("cap").exists()


def test_a_tokenizer_config_nested_too_deeply(tmp_path: Path) -> None:
    layout = make_persona_project(tmp_path, "cap", hf.PHI4MINI, PHI)
    path = layout.merged("cap") / "tokenizer_config.json"
    path.write_text(DEEP_JSON)
    result = _modelfile(layout)
    assert result.exit_code == 1
    assert error_line(result).startswith(f"cannot read {path}: ")


def test_a_personas_file_nested_too_deeply(tmp_path: Path) -> None:
    layout = make_persona_project(tmp_path, "cap", hf.PHI4MINI, PHI)
    personas = tmp_path / "p.toml"
    personas.write_text(DEEP_TOML)
    result = _modelfile(layout, "--personas", str(personas))
    assert result.exit_code == 2
    assert error_line(result) == f"{personas} is not valid TOML: it is nested too deeply"


def test_a_prompts_file_nested_too_deeply_is_refused_when_options_are_checked(
    tmp_path: Path,
) -> None:
    """verify --prompts: the file is read when the options are checked (export: before the
    merge), not after the models are loaded."""
    prompts = tmp_path / "prompts.toml"
    prompts.write_text(DEEP_TOML)
    for command in ("verify", "export"):
        result = runner.invoke(
            app, [command, "--persona", "cap", "--prompts", str(prompts), *_dirs(tmp_path)]
        )
        assert result.exit_code == 2, result.output
        assert error_line(result) == f"{prompts} is not valid TOML: it is nested too deeply"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.toml"]


def _dirs(root: Path) -> list[str]:
    from tests.ggufkit import project_layout

    return layout_args(project_layout(root))


@pytest.mark.parametrize(
    "manifest",
    [
        {"stage": "modelfile", "options": {}, "inputs": [], "outputs": []},
        {"stage": "modelfile", "options": 5, "inputs": {"x": 1}, "outputs": {"Modelfile": [1]}},
        DEEP_JSON,
    ],
    ids=["lists", "wrong-types", "nested"],
)
def test_a_tampered_manifest_is_not_trusted_and_not_a_crash(tmp_path: Path, manifest: Any) -> None:
    """A manifest whose records are not objects is not ours: the output is refused, not
    replaced, and not taken as up to date (it gave 'internal error: AttributeError')."""
    layout = make_persona_project(tmp_path, "cap", hf.PHI4MINI, PHI)
    assert _modelfile(layout).exit_code == 0
    path = layout.modelfile("cap").with_name("Modelfile.manifest.json")
    path.write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    result = _modelfile(layout)
    assert result.exit_code == 1
    assert error_line(result).startswith(f"{layout.modelfile('cap')} ")


# -- export --all ----------------------------------------------------------------------------


@pytest.mark.llama
@pytest.mark.slow
def test_export_all_goes_on_past_an_adapter_that_gave_an_internal_error(tmp_path: Path) -> None:
    """One bad adapter folder (an infinite shape in its safetensors header, 'internal error:
    OverflowError' before the fix) fails only its own persona, with its own one-line reason;
    the others are exported."""
    from tests import modelkit as mk
    from tests.ggufkit import project_layout

    base = mk.make_llama(tmp_path / "base", tokenizer="spm")
    layout = project_layout(tmp_path / "p")
    for persona, seed in (("alpha", 0), ("broken", 1), ("gamma", 2)):
        mk.make_adapter(base, layout.adapter(persona), seed=seed)
    _with_header(
        layout.adapter("broken") / "adapter_model.safetensors",
        lambda h: _first(h).__setitem__("shape", [float("inf"), 4]),
    )
    result = runner.invoke(
        app, ["export", "--all", *layout_args(layout), "--base-model-id", str(base), "--no-verify"]
    )
    assert result.exit_code == 1
    for persona in ("alpha", "gamma"):
        assert f"{persona}: exported in " in result.stdout
        assert layout.modelfile(persona).is_file()
    assert "broken: FAILED in " in result.stdout
    assert not layout.merged("broken").exists()
    error = error_line(result)
    assert error.startswith("1 of 3 personas failed: broken (")
    assert "is not a valid safetensors file: entry " in error


def test_export_reports_an_os_error_as_the_cli_does_not_as_a_bug(
    tmp_path: Path, phi_small: Path, phi_adapter: Path
) -> None:
    """A persona whose output cannot be made (here: merged_models is a file) fails with the
    system's own message and the CLI's hint for it, as the merge command alone says it; export
    used to call it 'internal error: FileExistsError ... this is a bug'."""
    from tests.mergekit import make_project

    layout = make_project(tmp_path, phi_adapter)
    layout.merged_base.write_text("not a folder")
    args = ["export", "--persona", "cap", *layout_args(layout), "--no-verify"]
    result = runner.invoke(app, [*args, "--base-model-id", str(phi_small)])
    assert result.exit_code == 1
    assert error_line(result) == f"[Errno 17] File exists: '{layout.merged_base}'"
    assert "hint: check the path, free disk space and permissions" in result.stderr
