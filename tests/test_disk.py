"""Disk preflight of the gguf and quantize stages (llamacpp/sizes.py): before writing, each
checks free space against what it will write and refuses with the figure and a hint,
leaving nothing behind. (The merge's preflight is tested in tests/test_merge_cli.py.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from persona_export.cli import app
from persona_export.llamacpp import vendor
from persona_export.llamacpp.gguf_file import read_gguf
from persona_export.llamacpp.sizes import (
    QUANT_MARGIN,
    bits_per_weight,
    converted_bytes,
    quantized_bytes,
)
from tests.ggufkit import (
    copy_project,
    dir_args,
    fake_converter,
    leftovers,
    make_fake_merged,
    write_gguf,
)

runner = CliRunner()


def _tokenizer(folder: Path) -> list[Path]:
    from persona_export.hf.model_files import TOKENIZER_FILES

    return [folder / name for name in TOKENIZER_FILES]


def _no_space(monkeypatch: pytest.MonkeyPatch, free: int = 1000) -> None:
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage._replace(free=free))


def _error(result) -> str:  # type: ignore[no-untyped-def]
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    return lines[0][len("error: ") :] if lines else ""


def test_bits_per_weight_from_llama_quantize_usage_text() -> None:
    assert bits_per_weight("4.50 bpw non-linear quantization") == 4.5
    assert bits_per_weight("2.7  bpw quantization") == 2.7
    # a size for Llama-3-8B (8.03 B weights), in GiB: 4.58 GiB -> 4.90 bits per weight
    assert bits_per_weight("4.58G, +0.1754 ppl @ Llama-3-8B") == pytest.approx(4.899, abs=1e-3)
    assert bits_per_weight("7.96G, +0.0026 ppl @ Llama-3-8B") == pytest.approx(8.515, abs=1e-3)
    assert bits_per_weight("MXFP4 MoE") is None
    # no size: a quantized file is at most the unquantized source
    assert quantized_bytes("MXFP4 MoE", 10**9, 5000, 2 * 10**9) == 2 * 10**9
    q4 = quantized_bytes("4.58G, +0.1754 ppl @ Llama-3-8B", 3_836_021_760, 10**7, 0)
    assert 2.4e9 < q4 < 2.4e9 * QUANT_MARGIN + 2e7  # README: 2.4 GB for Phi-4-mini


def test_gguf_refuses_before_converting_when_the_disk_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_fake_merged(tmp_path)
    script = fake_converter(tmp_path, write_gguf(tmp_path / "converted.gguf"))
    monkeypatch.setattr(vendor, "converter_script", lambda name="": script)
    merged = tmp_path / "merged_models" / "cap"
    expected = converted_bytes(sorted(merged.glob("*.safetensors")), "f16", _tokenizer(merged))
    _no_space(monkeypatch)

    result = runner.invoke(app, ["gguf", "--persona", "cap", *dir_args(tmp_path)])
    assert result.exit_code == 1
    assert _error(result).startswith(
        f"not enough disk space for the F16 GGUF of cap: it needs {expected / 1e6:.1f} MB, "
    )
    assert _error(result).endswith("has 1.0 kB free")
    assert "hint: free some space or pass --gguf-dir on a larger disk" in result.stderr
    assert not (tmp_path / "seen.json").exists()  # the converter never ran
    out = tmp_path / "gguf_models" / "cap"
    assert not out.exists() or (not list(out.glob("*.gguf")) and not leftovers(out))


def test_quantize_refuses_before_writing_when_the_types_do_not_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "gguf_models" / "cap"
    out.mkdir(parents=True)
    source = write_gguf(out / "cap-F16.gguf")
    summary = read_gguf(source)
    size = source.stat().st_size
    from persona_export.llamacpp.quantize import list_quant_types

    types = list_quant_types(vendor.tool("llama-quantize"))
    expected = sum(
        quantized_bytes(types[t].description, summary.n_weights, summary.data_offset, size)
        for t in ("Q4_K_M", "Q8_0")
    )
    _no_space(monkeypatch)

    args = ["quantize", "--persona", "cap", *dir_args(tmp_path), "--type", "Q4_K_M"]
    result = runner.invoke(app, [*args, "--type", "Q8_0"])
    assert result.exit_code == 1, result.output
    assert _error(result).startswith(
        f"not enough disk space for the Q4_K_M, Q8_0 GGUF of cap: it needs {expected / 1e6:.1f} MB"
    )
    assert "quantize fewer types at once" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cap-F16.gguf"]


@pytest.mark.slow
@pytest.mark.llama
def test_estimates_against_the_real_tools_and_up_to_date_outputs_need_no_space(
    phi4mini_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the tiny Phi-4-mini: the F16 estimate covers the converter's file (within the
    tokenizer files' size), the Q8_0 estimate the quantized one; once written, a re-run with
    no free space at all is up to date, not refused."""
    root = copy_project(phi4mini_project, tmp_path / "project")
    merged = root / "merged_models" / "cap"
    f16 = root / "gguf_models" / "cap" / "cap-F16.gguf"
    estimate = converted_bytes(sorted(merged.glob("*.safetensors")), "f16", _tokenizer(merged))
    assert f16.stat().st_size <= estimate <= f16.stat().st_size + 32 * 2**20

    result = runner.invoke(app, ["quantize", "--persona", "cap", *dir_args(root), "--type", "Q8_0"])
    assert result.exit_code == 0, result.output
    q8 = f16.with_name("cap-Q8_0.gguf")
    source = read_gguf(f16)
    from persona_export.llamacpp.quantize import list_quant_types

    description = list_quant_types(vendor.tool("llama-quantize"))["Q8_0"].description
    q8_estimate = quantized_bytes(
        description, source.n_weights, source.data_offset, f16.stat().st_size
    )
    assert q8.stat().st_size <= q8_estimate

    _no_space(monkeypatch, free=0)
    again = runner.invoke(app, ["quantize", "--persona", "cap", *dir_args(root), "--type", "Q8_0"])
    assert again.exit_code == 0, again.output
    gguf = runner.invoke(app, ["gguf", "--persona", "cap", *dir_args(root)])
    assert gguf.exit_code == 0, gguf.output
