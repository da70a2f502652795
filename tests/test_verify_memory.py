"""Verify's memory preflight (verify/memory.py): what the layer-streamed run will need, said
before anything is loaded, does not grow with the number of layers; a run that would not
fit is refused with the need by part and a hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from persona_export.errors import PersonaExportError
from persona_export.verify.memory import (
    RUNTIME_BYTES,
    check_streamed_memory,
    streamed_need,
)
from tests import modelkit as mk


@pytest.fixture(scope="module")
def llamas(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("memory")
    return (
        mk.make_llama(root / "two", num_layers=2, dtype="bfloat16"),
        mk.make_llama(root / "eight", num_layers=8, dtype="bfloat16"),
    )


def _need(folder: Path, adapter: Path | None = None, dtype: str = "float32"):  # type: ignore[no-untyped-def]
    return streamed_need(
        [folder], adapter_dir=adapter, positions=300, longest=100, compute_dtype=dtype
    )


def test_the_need_does_not_grow_with_the_layers(llamas: tuple[Path, Path]) -> None:
    two, eight = llamas
    assert _need(two).parts == _need(eight).parts
    # one Llama layer: q, k, v, o (64x64, 32x64, 32x64, 64x64), gate, up, down (128x64 each),
    # two norms: twice in float32 (the next is read while one runs), plus its largest tensor
    # as stored (bf16)
    layer = 2 * (64 * 64 * 2 + 32 * 64 * 2 + 3 * 128 * 64 + 2 * 64) * 4 + 128 * 64 * 2
    need = _need(two)
    assert need.parts["largest layer"] == layer
    assert need.parts["runtime"] == RUNTIME_BYTES
    vocab = 512
    assert need.parts["logits"] == (2 * 300 + 100) * vocab * 4
    assert _need(two, dtype="bfloat16").parts["largest layer"] < layer


def test_the_adapter_counts_twice_in_float32(llamas: tuple[Path, Path], tmp_path: Path) -> None:
    from safetensors import safe_open

    two, _ = llamas
    adapter = mk.make_adapter(two, tmp_path / "adapter")
    with safe_open(str(adapter / "adapter_model.safetensors"), "np") as fh:
        shapes = [fh.get_slice(k).get_shape() for k in fh.keys()]  # noqa: SIM118
    numel = sum(rows * cols for rows, cols in shapes)
    assert _need(two, adapter).parts["adapter"] == 2 * 4 * numel


def test_a_run_that_does_not_fit_is_refused_with_the_need_by_part(
    llamas: tuple[Path, Path],
) -> None:
    need = _need(llamas[0])
    check_streamed_memory(need, "float32", available=need.total)  # fits exactly
    with pytest.raises(PersonaExportError) as refused:
        check_streamed_memory(need, "float32", available=need.total - 1)
    message = refused.value.message
    assert message.startswith(
        f"verify needs about {need.total / 2**30:.1f} GiB of RAM to run the models in float32 "
        "one layer at a time (runtime 0.62"
    )
    assert message.endswith(f"GiB); {(need.total - 1) / 2**30:.1f} GiB is available")
    assert refused.value.hint.startswith("pass --hf-dtype bfloat16 (half the memory")
    assert "shorter --prompts" in refused.value.hint
    with pytest.raises(PersonaExportError) as bf16:
        check_streamed_memory(need, "bfloat16", available=0)
    assert bf16.value.hint == "free memory, or verify on a machine with more"
