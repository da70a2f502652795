"""What merge does with adapters it must not merge as they are (issue 11, items 7 and
"target_modules"): adapter_config.json values PEFT could not use (NaN/Inf/non-positive alpha,
a non-integer r, bad rank/alpha patterns, flags that are strings), NaN/Inf in the adapter's
weights or produced by the merge, and target_modules that disagree with the LoRA tensors.
Each is refused with one line naming the value or tensor, and nothing that looks complete is
left behind."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from persona_export.cli import app
from tests import modelkit as mk
from tests.mergekit import make_project

runner = CliRunner()
TARGETS = ["qkv_proj", "o_proj"]


@pytest.fixture(scope="module")
def phi_adapter(phi_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mk.make_adapter(
        phi_small, tmp_path_factory.mktemp("inputs") / "adapter", target_modules=TARGETS
    )


@pytest.fixture
def project(tmp_path: Path, phi_adapter: Path) -> Path:
    make_project(tmp_path, phi_adapter)
    return tmp_path


def adapter_dir(root: Path) -> Path:
    return root / "trained_adapters" / "cap_final_adapter"


def edit_config(root: Path, **changes: Any) -> Path:
    path = adapter_dir(root) / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config, allow_nan=True))
    return path


def merge_cli(root: Path, base: Path, *extra: str) -> Any:
    args = ["merge", "--persona", "cap", "--base-model-id", str(base)]
    args += ["--adapter-dir", str(root / "trained_adapters")]
    args += ["--output-dir-base", str(root / "merged_models"), "--device", "cpu", *extra]
    return runner.invoke(app, args)


def error_line(result: Any) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output and "internal error" not in errors[0]
    return errors[0].removeprefix("error: ")


def assert_nothing_complete(root: Path) -> None:
    """No merged folder and no temporaries: nothing a later run could take as complete."""
    out = root / "merged_models"
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []


# -- adapter_config.json values ------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lora_alpha": math.nan}, "lora_alpha must be a positive finite number, not nan"),
        ({"lora_alpha": math.inf}, "lora_alpha must be a positive finite number, not inf"),
        ({"lora_alpha": -math.inf}, "lora_alpha must be a positive finite number, not -inf"),
        ({"lora_alpha": 0}, "lora_alpha must be a positive finite number, not 0"),
        ({"lora_alpha": True}, "lora_alpha must be a positive finite number, not True"),
        ({"lora_alpha": "16"}, "lora_alpha must be a positive finite number, not '16'"),
        ({"r": 7.5}, "r must be a positive integer, not 7.5"),
        ({"r": 8.0}, "r must be a positive integer, not 8.0"),
        ({"r": math.nan}, "r must be a positive integer, not nan"),
        ({"r": math.inf}, "r must be a positive integer, not inf"),
        ({"r": 0}, "r must be a positive integer, not 0"),
        ({"r": True}, "r must be a positive integer, not True"),
        ({"rank_pattern": {"qkv_proj": 2.5}}, "rank_pattern['qkv_proj'] must be a positive integer, not 2.5"),
        ({"rank_pattern": {"qkv_proj": "4"}}, "rank_pattern['qkv_proj'] must be a positive integer, not '4'"),
        ({"alpha_pattern": {"o_proj": math.nan}}, "alpha_pattern['o_proj'] must be a positive finite number, not nan"),
        ({"alpha_pattern": {"o_proj": -2}}, "alpha_pattern['o_proj'] must be a positive finite number, not -2"),
        ({"rank_pattern": ["qkv_proj"]}, "rank_pattern must be an object of module pattern -> value, not ['qkv_proj']"),
        ({"rank_pattern": 5.0}, "rank_pattern must be an object of module pattern -> value, not 5.0"),
        ({"alpha_pattern": {"(": 4}}, "alpha_pattern entry '(' is not a valid regular expression"),
        ({"use_rslora": "false"}, "use_rslora must be true or false, not 'false'"),
        ({"use_dora": 1}, "use_dora must be true or false, not 1"),
        ({"target_modules": 5}, "target_modules must be a list of module names or one regular expression, not 5"),
        ({"target_modules": ["qkv_proj", 3]}, "target_modules must be made of non-empty names or patterns, not 3"),
        ({"target_modules": "qkv_proj("}, "target_modules entry 'qkv_proj(' is not a valid regular expression"),
        ({"modules_to_save": "lm_head"}, "modules_to_save must be a list of module names, not 'lm_head'"),
        ({"layers_to_transform": 1.5}, "layers_to_transform must be a layer number or a list of them, not 1.5"),
    ],
)  # fmt: skip
def test_config_values_peft_cannot_use_are_refused(
    project: Path, phi_small: Path, change: dict[str, Any], message: str
) -> None:
    """Before the fix NaN/Infinity alpha and a non-integer r merged (exit 0, NaN weights or
    a silently truncated rank); pattern and flag values gave 'internal error' or were taken
    as true."""
    path = edit_config(project, **change)
    result = merge_cli(project, phi_small)
    assert result.exit_code == 1
    line = error_line(result)
    assert line.startswith(f"{path}: {message}"), line
    assert "hint: fix that value in adapter_config.json" in result.stderr
    assert_nothing_complete(project)


def test_a_nul_byte_in_the_declared_base_is_only_a_name(project: Path, phi_small: Path) -> None:
    """base_model_name_or_path with a NUL byte gave 'internal error: ValueError: embedded null
    byte'; it only decides a warning, so the merge goes on and says so."""
    edit_config(project, base_model_name_or_path="/models/base\x00x")
    result = merge_cli(project, phi_small)
    assert result.exit_code == 0, result.output
    assert "warning: the adapter was trained on /models/base\x00x" in result.stderr


# -- NaN/Inf in the weights ----------------------------------------------------------------


def _rewrite_tensor(root: Path, key_part: str, value: float, *, add: int | None = None) -> str:
    """Put ``value`` into the adapter tensor whose name contains ``key_part`` (``add``: into
    a new whole tensor of that length, as modules_to_save would carry)."""
    import torch
    from safetensors.torch import load_file, save_file

    path = adapter_dir(root) / "adapter_model.safetensors"
    tensors = load_file(str(path))
    if add is not None:
        key = key_part
        tensors[key] = torch.ones(add, dtype=torch.float32)
    else:
        key = next(k for k in sorted(tensors) if key_part in k)
        tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[3] = value
    save_file(tensors, str(path), metadata={"format": "pt"})
    return key


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("part", ["lora_A", "lora_B"])
def test_nan_or_inf_adapter_weights_are_refused_naming_the_tensor(
    project: Path, phi_small: Path, part: str, value: float
) -> None:
    """Before the fix they were merged and converted silently (llama-quantize stopped them
    much later, the cause on the last of 16 lines)."""
    key = _rewrite_tensor(project, f"layers.0.self_attn.qkv_proj.{part}", value)
    result = merge_cli(project, phi_small)
    assert result.exit_code == 1
    path = adapter_dir(project) / "adapter_model.safetensors"
    assert error_line(result) == (
        f"the adapter's tensor {key} ({path}) holds 1 NaN or infinite value(s); nothing was written"
    )
    assert_nothing_complete(project)


def test_inf_in_a_tensor_the_adapter_replaces_is_refused(project: Path, phi_small: Path) -> None:
    """A whole tensor from the adapter (modules_to_save, resized embeddings) used to be
    copied byte for byte; its values are now read and checked as they stream."""
    hidden = json.loads((phi_small / "config.json").read_text())["hidden_size"]
    key = _rewrite_tensor(project, "base_model.model.model.norm.weight", math.inf, add=hidden)
    result = merge_cli(project, phi_small)
    assert result.exit_code == 1
    assert error_line(result).startswith(
        f"the adapter's tensor {key} ({adapter_dir(project) / 'adapter_model.safetensors'}) "
        "holds 1 NaN or infinite value(s)"
    )
    assert_nothing_complete(project)


def test_a_delta_that_overflows_float16_is_refused_naming_the_merged_tensor(
    project: Path, phi_small: Path
) -> None:
    """Finite adapter values whose merged weights do not fit the output dtype (a huge
    lora_alpha, --dtype f16): the merged block is checked before it is written."""
    edit_config(project, lora_alpha=1e9)
    result = merge_cli(project, phi_small, "--dtype", "f16")
    assert result.exit_code == 1
    line = error_line(result)
    assert line.startswith("the merged tensor model.layers.0.self_attn.")
    assert line.endswith("NaN or infinite value(s); nothing was written")
    assert "hint: the LoRA update overflows the output dtype" in result.stderr
    assert_nothing_complete(project)
    # the same adapter in bfloat16 (range up to 3e38) merges
    assert merge_cli(project, phi_small).exit_code == 0


# -- target_modules against the tensors ----------------------------------------------------


def test_lora_weights_no_target_selects_are_refused(project: Path, phi_small: Path) -> None:
    """Before the fix target_modules was ignored: o_proj's LoRA was merged although PEFT,
    whose config no longer names it, drops those weights."""
    path = edit_config(project, target_modules=["qkv_proj"])
    result = merge_cli(project, phi_small)
    assert result.exit_code == 1
    assert error_line(result) == (
        "adapter_model.safetensors has LoRA weights for model.layers.0.self_attn.o_proj, "
        "model.layers.1.self_attn.o_proj, which target_modules ['qkv_proj'] in "
        "adapter_config.json does not select; PEFT would load the adapter without them, so "
        "neither merge would be the adapter that was trained"
    )
    assert f"hint: name those modules in target_modules ({path})" in result.stderr
    assert_nothing_complete(project)


@pytest.mark.parametrize(
    "targets",
    [
        r"model\.layers\.\d+\.self_attn\.(qkv|o)_proj",  # a regular expression: fullmatch
        ["model.layers.0.self_attn.qkv_proj", "model.layers.1.self_attn.qkv_proj", "o_proj"],
        ["self_attn.qkv_proj", "o_proj"],  # a dotted suffix
    ],
)
def test_targets_in_any_of_pefts_spellings_are_accepted(
    project: Path, phi_small: Path, targets: Any
) -> None:
    edit_config(project, target_modules=targets)
    result = merge_cli(project, phi_small)
    assert result.exit_code == 0, result.output
    assert "target_modules" not in result.stderr


def test_layers_to_transform_limits_what_is_selected(project: Path, phi_small: Path) -> None:
    edit_config(project, layers_to_transform=[0])
    result = merge_cli(project, phi_small)
    assert result.exit_code == 1
    assert "has LoRA weights for model.layers.1.self_attn.o_proj, " in error_line(result)


def test_a_target_without_lora_weights_is_a_warning(project: Path, phi_small: Path) -> None:
    """PEFT loads such an adapter with a 'missing adapter keys' warning and merges nothing
    into those weights (lora_B starts at zero); the merge says the same and goes on."""
    edit_config(project, target_modules=[*TARGETS, "down_proj"])
    result = merge_cli(project, phi_small)
    assert result.exit_code == 0, result.output
    assert (
        "warning: target_modules ['qkv_proj', 'o_proj', 'down_proj'] selects "
        "model.layers.0.mlp.down_proj, model.layers.1.mlp.down_proj, which the adapter has "
        "no LoRA weights for: they are merged unchanged"
    ) in result.stderr


@pytest.mark.parametrize(
    ("config", "key", "expected"),
    [
        ({"target_modules": ["q_proj"]}, "model.layers.0.self_attn.q_proj", True),
        ({"target_modules": ["q_proj"]}, "model.layers.0.self_attn.xq_proj", False),
        ({"target_modules": ["layers.0.self_attn.q_proj"]}, "model.layers.0.self_attn.q_proj", True),
        ({"target_modules": "q_proj"}, "model.layers.0.self_attn.q_proj", False),  # fullmatch
        ({"target_modules": r".*\.q_proj"}, "model.layers.0.self_attn.q_proj", True),
        ({"target_modules": ["q_proj"], "exclude_modules": ["layers.0.self_attn.q_proj"]}, "model.layers.0.self_attn.q_proj", False),
        ({"target_modules": ["q_proj"], "exclude_modules": r".*0.*"}, "model.layers.0.self_attn.q_proj", False),
        ({"target_modules": ["lm_head"], "modules_to_save": ["lm_head"]}, "lm_head", False),
        ({"target_modules": ["q_proj"], "layers_to_transform": 1}, "model.layers.0.self_attn.q_proj", False),
        ({"target_modules": ["q_proj"], "layers_to_transform": [0, 1]}, "model.layers.1.self_attn.q_proj", True),
        ({"target_modules": ["q_proj"], "layers_to_transform": [3], "layers_pattern": "h"}, "transformer.h.3.attn.q_proj", True),
        ({"target_modules": "all-linear"}, "lm_head", False),
        ({"target_modules": "all-linear"}, "model.layers.0.mlp.down_proj", True),
        ({"target_modules": None}, "anything", True),
    ],
)  # fmt: skip
def test_target_matching_follows_peft(config: dict[str, Any], key: str, expected: bool) -> None:
    """The same answers as peft.tuners.tuners_utils.check_target_module_exists."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    from persona_export.merge.adapter_config import selects

    assert selects(config, key) is expected
    if config.get("target_modules") not in (None, "all-linear"):
        peft_config = LoraConfig(**config)
        assert bool(check_target_module_exists(peft_config, key)) is expected
