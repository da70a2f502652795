"""The merge gives PEFT's merge_and_unload weights, for every adapter feature, and a folder
transformers loads with the same logits; config and tokenizer files carried over right."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from persona_export.artifacts import DIR_MANIFEST
from tests import modelkit as mk
from tests.mergekit import (
    as_close_as_peer,
    assert_same_as_peft,
    load_tensors,
    make_project,
    peft_merged,
    run_merge,
)

# id: (base fixture, make_adapter options, merge --dtype, reference dtype)
CASES: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "plain-bf16": ("phi_small", {}, "auto", "bf16"),
    "plain-to-f32": ("phi_small", {}, "f32", "f32"),
    "plain-to-f16": ("phi_small", {}, "f16", "f16"),
    "bf16-adapter-weights": ("phi_small", {"dtype": "bfloat16", "seed": 3}, "auto", "bf16"),
    "rslora": ("phi_small", {"use_rslora": True, "r": 16, "lora_alpha": 8}, "auto", "bf16"),
    "rank-alpha-pattern": (
        "llama_spm",
        {
            "rank_pattern": {"q_proj": 4, "layers.1.mlp.down_proj": 2},
            "alpha_pattern": {"o_proj": 3, "v_proj": 32},
        },
        "auto",
        "f32",
    ),
    "fan-in-fan-out": ("gpt2_tiny", {}, "auto", "f32"),
    "dora-bf16": ("phi_small", {"use_dora": True}, "auto", "bf16"),
    "dora-f32": ("phi_small", {"use_dora": True}, "f32", "f32"),
    "dora-fan-in-fan-out": ("gpt2_tiny", {"use_dora": True}, "auto", "f32"),
    "modules-to-save-lm-head": ("phi_small", {"modules_to_save": ["lm_head"]}, "auto", "bf16"),
    "modules-to-save-untied": ("llama_spm", {"modules_to_save": ["lm_head"]}, "auto", "f32"),
    "added-tokens-tied": ("phi_small", {"added_tokens": ["<|persona|>"]}, "auto", "bf16"),
    "added-tokens-untied": ("llama_spm", {"added_tokens": ["<persona>", "<x>"]}, "auto", "f32"),
    "lora-on-embedding": (
        "llama_spm",
        {"target_modules": ["embed_tokens", "q_proj", "v_proj"]},
        "auto",
        "f32",
    ),
}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Any:
    """Builds (once per module) the adapter of a case: ``adapters(case_id) -> (base, adapter)``."""
    built: dict[str, tuple[Path, Path]] = {}

    def get(case: str) -> tuple[Path, Path]:
        if case not in built:
            base_fixture, options, _, _ = CASES[case]
            base = request.getfixturevalue(base_fixture)
            out = tmp_path_factory.mktemp("adapter") / case
            built[case] = (base, mk.make_adapter(base, out, **options))
        return built[case]

    return get


@pytest.mark.parametrize("case", list(CASES))
def test_every_tensor_equals_peft_merge_and_unload(
    case: str, adapters: Any, tmp_path: Path
) -> None:
    base, adapter = adapters(case)
    _, _, dtype, ref_dtype = CASES[case]
    result = run_merge(make_project(tmp_path, adapter), base, dtype=dtype)
    assert result.merged_tensors > 0
    assert_same_as_peft(result.merged_dir, peft_merged(base, adapter, ref_dtype))
    config = json.loads((result.merged_dir / "config.json").read_text())
    assert (
        config["torch_dtype"] == {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[ref_dtype]
    )


def test_result_and_merged_folder_of_a_plain_adapter(adapters: Any, tmp_path: Path) -> None:
    base, adapter = adapters("plain-bf16")
    result = run_merge(make_project(tmp_path, adapter), base)
    merged = result.merged_dir
    assert merged == tmp_path / "merged_models" / "cap"
    assert not result.up_to_date and result.dtype == "bfloat16" and result.device == "cpu"
    assert (result.tensors, result.merged_tensors, result.replaced_tensors) == (14, 8, 0)
    assert result.tokenizer_source == "base" and result.tie_word_embeddings is True
    assert result.shard_files == (merged / "model.safetensors",)
    names = sorted(p.name for p in merged.iterdir())
    assert names == sorted(
        [
            "model.safetensors",
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "added_tokens.json",
            "vocab.json",
            "merges.txt",
            "README.md",
            DIR_MANIFEST,
        ]
    )
    # nothing changes in config.json, so it is the base's file byte for byte
    for name in names:
        if name not in ("model.safetensors", "README.md", DIR_MANIFEST):
            assert (merged / name).read_bytes() == (base / name).read_bytes(), name
    assert "lm_head.weight" not in load_tensors(merged)
    manifest = json.loads((merged / DIR_MANIFEST).read_text())
    assert manifest["stage"] == "merge"
    assert manifest["options"] == {
        "dtype": "bfloat16",
        "format": 2,
        "max_shard_bytes": 5_000_000_000,
        "card": {"display_name": "cap", "system": None, "base_model": None},
    }
    assert set(manifest["inputs"]) >= {
        "base/model.safetensors",
        "base/config.json",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "base/tokenizer.json",
    }
    digest = hashlib.sha256((base / "model.safetensors").read_bytes()).hexdigest()
    assert manifest["inputs"]["base/model.safetensors"]["sha256"] == digest
    assert set(manifest["outputs"]) == set(names) - {DIR_MANIFEST}


def test_untied_output_layer_is_written_and_config_says_so(adapters: Any, tmp_path: Path) -> None:
    base, adapter = adapters("modules-to-save-lm-head")
    result = run_merge(make_project(tmp_path, adapter), base)
    tensors = load_tensors(result.merged_dir)
    assert "lm_head.weight" in tensors
    assert not tensors["lm_head.weight"].equal(tensors["model.embed_tokens.weight"])
    config = json.loads((result.merged_dir / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and result.tie_word_embeddings is False
    assert any("tie_word_embeddings to false" in w for w in result.warnings)


def test_added_tokens_on_tied_model_keep_the_tie_and_resize(adapters: Any, tmp_path: Path) -> None:
    base, adapter = adapters("added-tokens-tied")
    result = run_merge(make_project(tmp_path, adapter), base)
    merged = result.merged_dir
    tensors = load_tensors(merged)
    rows = tensors["model.embed_tokens.weight"].shape[0]
    assert "lm_head.weight" not in tensors
    config = json.loads((merged / "config.json").read_text())
    assert (
        config["tie_word_embeddings"] is True and config["vocab_size"] == rows == result.vocab_size
    )
    assert json.loads((base / "config.json").read_text())["vocab_size"] != rows
    # the adapter's tokenizer wins (transformers 5 wrote only tokenizer.json,
    # tokenizer_config.json and chat_template.jinja into the adapter): tokenizer.json byte
    # for byte; tokenizer_config.json is the base's (class GPT2Tokenizer, which llama.cpp's
    # phi3 converter and transformers 4.x read, template inline where the base has it) plus
    # the added token (tests/test_portable_merge.py covers every model and reader)
    assert result.tokenizer_source == "adapter"
    assert (merged / "tokenizer.json").read_bytes() == (adapter / "tokenizer.json").read_bytes()
    adapter_config = json.loads((adapter / "tokenizer_config.json").read_text())
    assert adapter_config["tokenizer_class"] == "TokenizersBackend"
    ours = json.loads((merged / "tokenizer_config.json").read_text())
    base_config = json.loads((base / "tokenizer_config.json").read_text())
    assert ours["tokenizer_class"] == base_config["tokenizer_class"] == "GPT2Tokenizer"
    assert ours["chat_template"] == (adapter / "chat_template.jinja").read_text()
    assert not (merged / "chat_template.jinja").exists()
    assert ours["additional_special_tokens"] == ["<|persona|>"]
    new = json.loads((adapter / "tokenizer.json").read_text())["added_tokens"][-1]
    assert new["content"] == "<|persona|>"
    assert ours["added_tokens_decoder"] == {
        **base_config["added_tokens_decoder"],
        str(new["id"]): {k: v for k, v in new.items() if k != "id"},
    }
    assert base_config == {k: v for k, v in ours.items() if k != "additional_special_tokens"} | {
        "added_tokens_decoder": base_config["added_tokens_decoder"]
    }
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json"):
        assert not (merged / name).exists(), (
            f"{name} of the base mixed into the adapter's tokenizer"
        )
    assert (merged / "generation_config.json").read_bytes() == (
        base / "generation_config.json"
    ).read_bytes()


def test_added_tokens_untied_resize_both_embeddings(adapters: Any, tmp_path: Path) -> None:
    base, adapter = adapters("added-tokens-untied")
    result = run_merge(make_project(tmp_path, adapter), base)
    tensors = load_tensors(result.merged_dir)
    embed, head = tensors["model.embed_tokens.weight"], tensors["lm_head.weight"]
    assert embed.shape[0] == head.shape[0] == result.vocab_size == 514


def test_sharded_output_loads_and_equals_the_single_file(adapters: Any, tmp_path: Path) -> None:
    base, adapter = adapters("plain-bf16")
    single = run_merge(make_project(tmp_path / "one", adapter), base)
    sharded = run_merge(make_project(tmp_path / "many", adapter), base, max_shard_bytes=300_000)
    assert len(sharded.shard_files) > 2
    assert [p.name for p in sharded.shard_files][
        0
    ] == f"model-00001-of-{len(sharded.shard_files):05d}.safetensors"
    index = json.loads((sharded.merged_dir / "model.safetensors.index.json").read_text())
    ours = load_tensors(sharded.merged_dir)
    assert set(index["weight_map"]) == set(ours)
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in ours.values()
    )
    reference = load_tensors(single.merged_dir)
    assert set(ours) == set(reference) and all(ours[k].equal(reference[k]) for k in ours)
    # shards are hashed while written: the manifest's records are the files' real hashes
    outputs = json.loads((sharded.merged_dir / DIR_MANIFEST).read_text())["outputs"]
    for name, record in outputs.items():
        data = (sharded.merged_dir / name).read_bytes()
        assert record["sha256"] == hashlib.sha256(data).hexdigest(), name
        assert record["size"] == len(data), name


def test_block_size_does_not_change_the_result(adapters: Any, tmp_path: Path) -> None:
    base, adapter = adapters("dora-bf16")
    small = run_merge(make_project(tmp_path / "small", adapter), base, block_bytes=1)
    large = run_merge(make_project(tmp_path / "large", adapter), base, block_bytes=1 << 30)
    a, b = load_tensors(small.merged_dir), load_tensors(large.merged_dir)
    assert all(a[k].equal(b[k]) for k in a) and set(a) == set(b)


def test_merged_folder_loads_and_gives_peft_logits(adapters: Any, tmp_path: Path) -> None:
    import torch
    import transformers
    from peft import PeftModel

    base, adapter = adapters("dora-f32")
    result = run_merge(make_project(tmp_path, adapter), base, dtype="f32")
    ours = transformers.AutoModelForCausalLM.from_pretrained(result.merged_dir)
    assert ours.dtype == torch.float32
    merged_by_peft = peft_merged(base, adapter, "f32")
    unmerged = PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter
    ).eval()
    ids = torch.tensor([[1, 5, 42, 7, 99, 300, 12]])
    with torch.no_grad():
        logits = ours(ids).logits
        assert torch.equal(logits, merged_by_peft(ids).logits)
        torch.testing.assert_close(logits, unmerged(ids).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_phi4mini_with_o200k_tokenizer_stays_tied_and_keeps_tokenizer_bytes(
    tiny_phi4mini: Path, tmp_path: Path
) -> None:
    """The real Phi-4-mini layout (vocab 200064, tied, GPT2Tokenizer o200k files): the
    tokenizer files are the base's bytes, no lm_head, and logits equal PEFT's."""
    import torch
    import transformers

    adapter = mk.make_adapter(tiny_phi4mini, tmp_path / "adapter", seed=7)
    result = run_merge(make_project(tmp_path, adapter), tiny_phi4mini, block_bytes=1 << 20)
    merged = result.merged_dir
    reference = peft_merged(tiny_phi4mini, adapter, "bf16")
    assert_same_as_peft(merged, reference)
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "config.json",
    ):
        assert (merged / name).read_bytes() == (tiny_phi4mini / name).read_bytes(), name
    assert (
        json.loads((merged / "tokenizer_config.json").read_text())["tokenizer_class"]
        == "GPT2Tokenizer"
    )
    ours = transformers.AutoModelForCausalLM.from_pretrained(merged)
    assert ours.config.tie_word_embeddings and ours.config.vocab_size == 200064
    ids = torch.tensor([[200022, 9906, 11, 2375, 200020, 200019]])
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, reference(ids).logits)


def _max_ulp(a: Any, b: Any) -> int:
    import torch

    if a.dtype == torch.bfloat16:
        return int((a.view(torch.int16).int() - b.view(torch.int16).int()).abs().max())
    return int((a.view(torch.int32).long() - b.view(torch.int32).long()).abs().max())


@pytest.mark.parametrize(("case", "dtype"), [("plain-bf16", "auto"), ("dora-f32", "f32")])
def test_cuda_merge_is_within_one_rounding_step_of_peft(
    case: str, dtype: str, adapters: Any, tmp_path: Path
) -> None:
    """On a GPU the rank-r products, the row norms and the DoRA factors round differently
    from the CPU's. Ours on CUDA must be at least as close to PEFT's CPU merge as PEFT's own
    merge on the same GPU is (tests/mergekit.py: as_close_as_peer, errors relative to each
    row's norm: ulps mean nothing for elements near zero, where a real H200 counted 18,164
    for ours and 7,924 for PEFT's own CUDA merge). bf16 weights: also within one bf16
    rounding step of PEFT's CPU merge, element by element."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    base, adapter = adapters(case)
    result = run_merge(make_project(tmp_path, adapter), base, dtype=dtype, device="cuda")
    assert result.device.startswith("cuda")
    ours = load_tensors(result.merged_dir)
    ref_dtype = CASES[case][3]
    cpu = peft_merged(base, adapter, ref_dtype).state_dict()
    gpu = {
        k: v.cpu() for k, v in peft_merged(base, adapter, ref_dtype, "cuda").state_dict().items()
    }
    for name, tensor in ours.items():
        ok, mine, theirs = as_close_as_peer(tensor, gpu[name], cpu[name])
        assert ok, (
            f"{name}: ours on CUDA is {mine:.3e} of a row from PEFT's CPU merge, PEFT's own CUDA merge {theirs:.3e}"
        )
        if ref_dtype == "bf16":
            assert _max_ulp(tensor, cpu[name]) <= 1, name


def test_row_relative_error_judges_rounding_by_the_row_not_the_element() -> None:
    """The yardstick of the CUDA test, on CPU: a float64 matrix with rows of very different
    scales and elements near zero; float32 roundings of it perturbed by a few epsilons of
    each row's norm pass, one element off by 100 epsilons of its row fails, and the passing
    one is hundreds of thousands of ulps away at the near-zero elements (why ulps are the
    wrong yardstick there)."""
    import torch

    from tests.mergekit import FLOAT32_EPS, PEER_FACTOR, as_close_as_peer, row_relative_error

    gen = torch.Generator().manual_seed(0)
    exact = torch.randn(64, 256, dtype=torch.float64, generator=gen)
    exact *= torch.logspace(-3, 3, 64, dtype=torch.float64).view(-1, 1)  # rows of all scales
    exact[:, :8] *= 1e-9  # elements near zero, as where W and the LoRA delta cancel
    norms = exact.norm(dim=1, keepdim=True)

    def perturbed(epsilons: float) -> Any:
        noise = torch.rand(exact.shape, dtype=torch.float64, generator=gen) * 2 - 1
        return (exact + noise * epsilons * FLOAT32_EPS * norms).float()

    reference, peer, ours = exact.float(), perturbed(3), perturbed(4)
    assert row_relative_error(reference, reference) == 0.0
    assert row_relative_error(reference, exact) <= FLOAT32_EPS / 2  # one rounding
    assert 2 * FLOAT32_EPS < row_relative_error(peer, reference) < 4 * FLOAT32_EPS
    ok, mine, theirs = as_close_as_peer(ours, peer, reference)
    assert ok and theirs < mine < PEER_FACTOR * theirs
    ulps = (ours.view(torch.int32).long() - reference.view(torch.int32).long()).abs().max()
    assert ulps > 100_000  # what an ulp test would have failed on

    bad = ours.clone()
    bad[17, 100] += 100 * FLOAT32_EPS * float(norms[17])
    ok, mine, _ = as_close_as_peer(bad, peer, reference)
    assert not ok and mine > 90 * FLOAT32_EPS
    # a zero row: any difference there is infinitely far, none is no error
    zero_ref, zero_ours = torch.zeros(2, 4), torch.zeros(2, 4)
    assert row_relative_error(zero_ours, zero_ref) == 0.0
    zero_ours[1, 2] = 1e-30
    assert row_relative_error(zero_ours, zero_ref) > 1e200


def test_our_cpu_dora_merge_is_within_rounding_of_the_exact_one(
    adapters: Any, tmp_path: Path
) -> None:
    """The same yardstick against the exact (float64) DoRA merge of every weight: our float32
    CPU merge (bit for bit PEFT's) is a few epsilons of each row from it; what the CUDA test
    compares is differences of this size."""
    from tests.mergekit import FLOAT32_EPS, row_relative_error

    base, adapter = adapters("dora-f32")
    ours = load_tensors(run_merge(make_project(tmp_path, adapter), base, dtype="f32").merged_dir)
    base_tensors = load_tensors(base)
    lora = load_tensors(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    scaling = config["lora_alpha"] / config["r"]
    checked = 0
    for key in lora:
        if not key.endswith("lora_A.weight"):
            continue
        module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        a = lora[key].double()
        b = lora[key.replace("lora_A", "lora_B")].double()
        m = lora[key.replace("lora_A.weight", "lora_magnitude_vector")].double()
        combined = base_tensors[f"{module}.weight"].double() + b @ a * scaling
        exact = (m / combined.norm(dim=1)).view(-1, 1) * combined
        error = row_relative_error(ours[f"{module}.weight"], exact)
        assert error < 4 * FLOAT32_EPS, (module, error)
        checked += 1
    assert checked == 8


@pytest.mark.slow
@pytest.mark.llama
def test_merged_phi4mini_converts_with_the_pinned_converter(
    tiny_phi4mini: Path, tmp_path: Path
) -> None:
    """The merged folder is what the gguf stage needs: the real converter takes it, keeps the
    embeddings tied and the o200k tokenizer, and reuses the merge's output hashes."""
    from persona_export.llamacpp.gguf_file import read_gguf
    from persona_export.stages.gguf import GgufConfig
    from persona_export.stages.gguf import run as run_gguf
    from tests.ggufkit import project_layout

    adapter = mk.make_adapter(tiny_phi4mini, tmp_path / "adapter", seed=11)
    make_project(tmp_path, adapter)
    run_merge(project_layout(tmp_path), tiny_phi4mini, block_bytes=1 << 20)
    result = run_gguf(GgufConfig("cap", layout=project_layout(tmp_path)))
    gguf = read_gguf(result.gguf_path)
    assert gguf.architecture == "phi3"
    assert gguf.metadata["tokenizer.ggml.pre"] == "gpt-4o"
    assert gguf.token_count == mk.PHI4MINI_VOCAB_SIZE
    assert gguf.tensor("output.weight") is None  # still tied
