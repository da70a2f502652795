"""The quantize stage and command: the real llama-quantize on a real tiny Phi-4-mini GGUF,
and its failure paths (with a stand-in tool where a real one cannot fail on demand)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from persona_export.cli import app
from persona_export.llamacpp import vendor
from persona_export.llamacpp.gguf_file import read_gguf
from persona_export.llamacpp.quantize import list_quant_types, parse_quant_types
from tests import modelkit as mk
from tests.ggufkit import copy_project, dir_args, fake_quantize, leftovers, sha256, write_gguf

runner = CliRunner()

USAGE_EXCERPT = """\
 allowed quantization types
-----------------------------------------------------------------------------

  40  or  Q1_0    :  1.125 bpw quantization
  38  or  MXFP4_MOE :  MXFP4 MoE
  19  or  IQ2_XXS :  2.06 bpw quantization
  15  or  Q4_K    : alias for Q4_K_M
  15  or  Q4_K_M  :  4.58G, +0.1754 ppl @ Llama-3-8B
   1  or  F16     : 14.00G, +0.0020 ppl @ Mistral-7B
          COPY    : only copy tensors, no quantizing
"""


def quantize_cli(root: Path, *extra: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["quantize", "--persona", "cap", *dir_args(root), *extra])


@pytest.fixture
def fake_f16(tmp_path: Path) -> Path:
    """A project with a small F16 GGUF (not loadable by llama.cpp: for paths where
    llama-quantize never reads it)."""
    out = tmp_path / "gguf_models" / "cap"
    out.mkdir(parents=True)
    write_gguf(out / "cap-F16.gguf")
    return tmp_path


def test_parse_quant_types() -> None:
    types = parse_quant_types(USAGE_EXCERPT)
    assert list(types) == ["Q1_0", "MXFP4_MOE", "IQ2_XXS", "Q4_K", "Q4_K_M", "F16"]
    assert types["Q4_K_M"].ftype == 15
    assert types["Q4_K"].alias_of == "Q4_K_M"
    assert types["Q4_K_M"].alias_of is None
    assert types["MXFP4_MOE"].description == "MXFP4 MoE"


@pytest.mark.llama
def test_types_come_from_the_real_tool() -> None:
    types = list_quant_types(vendor.tool("llama-quantize"))
    assert types["Q4_K_M"].ftype == 15
    assert types["Q8_0"].ftype == 7
    assert types["F16"].ftype == 1
    assert types["Q5_K"].alias_of == "Q5_K_M"
    assert "COPY" not in types
    assert list_quant_types(vendor.tool("llama-quantize")) == types  # from the cache


@pytest.mark.slow
@pytest.mark.llama
def test_quantizes_to_q4_k_m_and_checks_it(phi4mini_project: Path, tmp_path: Path) -> None:
    root = copy_project(phi4mini_project, tmp_path / "project")
    result = quantize_cli(root)
    assert result.exit_code == 0, result.output
    out = root / "gguf_models" / "cap" / "cap-Q4_K_M.gguf"
    f16 = root / "gguf_models" / "cap" / "cap-F16.gguf"
    quant, source = read_gguf(out), read_gguf(f16)
    bpw = out.stat().st_size * 8 / quant.n_weights
    assert result.stdout == f"Q4_K_M\t{out.stat().st_size / 1e9:.2f} GB\t{bpw:.2f} bpw\t{out}\n"
    assert quant.file_type == 15
    assert quant.architecture == "phi3"
    assert quant.name == "cap"
    assert quant.tensor_count == source.tensor_count == 16
    assert quant.n_weights == source.n_weights
    assert quant.token_count == 200064
    assert quant.chat_template == mk.PHI4MINI_CHAT_TEMPLATE
    assert quant.tensor("output.weight") is None  # tied embeddings stay tied
    assert quant.tensor("rope_factors_long.weight").shape == (48,)  # type: ignore[union-attr]
    assert {t.ggml_type for t in quant.tensors if t.name.startswith("blk.")} >= {12}  # Q4_K
    assert 4.0 < quant.bits_per_weight < source.bits_per_weight

    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    assert manifest["inputs"]["source"]["sha256"] == sha256(f16)
    assert manifest["outputs"]["gguf"]["sha256"] == sha256(out)
    assert manifest["options"] == {
        "type": "Q4_K_M",
        "ftype": 15,
        "imatrix": False,
        "llama_cpp_commit": vendor.commit(),
    }
    assert manifest["bits_per_weight"] == pytest.approx(bpw, abs=1e-4)
    assert leftovers(out.parent) == []


@pytest.mark.slow
@pytest.mark.llama
def test_several_types_aliases_and_a_quick_rerun(phi4mini_project: Path, tmp_path: Path) -> None:
    root = copy_project(phi4mini_project, tmp_path / "project")
    args = ("--type", "q4_k", "--type", "Q8_0", "-t", "Q4_K_M", "--threads", "1")
    first = quantize_cli(root, *args)
    assert first.exit_code == 0, first.output
    lines = first.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["Q4_K_M", "Q8_0"]
    assert read_gguf(root / "gguf_models" / "cap" / "cap-Q8_0.gguf").file_type == 7

    started = time.perf_counter()
    again = quantize_cli(root, *args)
    assert time.perf_counter() - started < 1.0
    assert again.exit_code == 0
    assert again.stdout == first.stdout
    assert again.stderr.count("is up to date (use --force to quantize again)") == 2

    mtime = (root / "gguf_models" / "cap" / "cap-Q8_0.gguf").stat().st_mtime_ns
    assert quantize_cli(root, "--type", "Q8_0", "--force").exit_code == 0
    assert (root / "gguf_models" / "cap" / "cap-Q8_0.gguf").stat().st_mtime_ns != mtime


@pytest.mark.llama
def test_unknown_type_lists_the_valid_ones(fake_f16: Path) -> None:
    result = quantize_cli(fake_f16, "--type", "Q9_K")
    assert result.exit_code == 2
    error, hint = result.stderr.splitlines()
    assert error == "error: unknown quantization type 'Q9_K'"
    assert hint.startswith("hint: llama-quantize accepts: ")
    listed = hint.removeprefix("hint: llama-quantize accepts: ").split(", ")
    assert {"Q4_K_M", "Q5_K_M", "Q8_0", "IQ4_XS", "F16", "BF16"} <= set(listed)
    assert "COPY" not in listed and "Q4_K" not in listed  # aliases are accepted, not listed


@pytest.mark.llama
@pytest.mark.parametrize("quant_type", ["IQ2_XS", "IQ1_S", "IQ3_XXS", "Q2_K_S"])
def test_imatrix_types_are_refused_without_one(fake_f16: Path, quant_type: str) -> None:
    result = quantize_cli(fake_f16, "--type", "Q4_K_M", "--type", quant_type)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == (
        f"error: {quant_type} needs an importance matrix (--imatrix FILE)"
    )
    assert sorted(p.name for p in (fake_f16 / "gguf_models" / "cap").iterdir()) == ["cap-F16.gguf"]


def test_missing_source_says_run_gguf(tmp_path: Path) -> None:
    result = quantize_cli(tmp_path)
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: no F16, BF16 or F32 GGUF for persona 'cap' in {tmp_path}/gguf_models/cap\n"
        "hint: run `persona-export gguf --persona cap` first\n"
    )
    named = quantize_cli(tmp_path, "--source", "bf16")
    assert named.exit_code == 1
    assert "run `persona-export gguf --persona cap --outtype bf16` first" in named.stderr


def test_quantized_source_is_refused(fake_f16: Path) -> None:
    result = quantize_cli(fake_f16, "--source", "Q8_0")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == "error: --source 'Q8_0' is not an unquantized GGUF type"


def test_missing_tool_says_run_vendor(
    fake_f16: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSONA_EXPORT_CACHE", str(tmp_path / "empty-cache"))
    result = quantize_cli(fake_f16)
    assert result.exit_code == 1
    bin_dir = vendor.bin_dir()
    assert result.stderr == (
        f"error: llama-quantize is not built (looked in {bin_dir})\nhint: {vendor.VENDOR_HINT}\n"
    )


def test_bad_threads_is_a_usage_error(fake_f16: Path) -> None:
    result = quantize_cli(fake_f16, "--threads", "0")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == "error: --threads must be at least 1, not 0"


@pytest.mark.llama
def test_wrong_output_fails_and_is_not_kept(
    fake_f16: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = fake_quantize(tmp_path, vendor.tool("llama-quantize"))
    monkeypatch.setattr(vendor, "tool", lambda name: tool)
    result = quantize_cli(fake_f16, "--threads", "3")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-2] == (
        "error: llama-quantize's Q4_K_M output failed its checks: general.file_type is 1, "
        "expected 15"
    )
    argv = (tmp_path / "quantize-argv.txt").read_text().splitlines()
    out_dir = fake_f16 / "gguf_models" / "cap"
    assert argv[0] == str(out_dir / "cap-F16.gguf")
    assert Path(argv[1]).name.startswith(".cap-Q4_K_M.gguf.partial-")
    assert argv[2:] == ["Q4_K_M", "3"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["cap-F16.gguf", "cap-Q4_K_M.gguf.log"]


@pytest.mark.llama
def test_tool_failure_shows_the_relevant_lines(
    fake_f16: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = (
        "llama_model_loader: - kv   0: general.architecture str = llama",
        "[   1/   6] token_embd.weight - converting",
        "llama_model_quantize: failed to quantize: bad tensor",
    )
    tool = fake_quantize(tmp_path, vendor.tool("llama-quantize"), exit_code=1, lines=lines)
    monkeypatch.setattr(vendor, "tool", lambda name: tool)
    result = quantize_cli(fake_f16)
    assert result.exit_code == 1
    log = fake_f16 / "gguf_models" / "cap" / "cap-Q4_K_M.gguf.log"
    assert result.stderr.endswith(
        f"error: llama-quantize failed with exit code 1 (log: {log}):\n"
        "llama_model_quantize: failed to quantize: bad tensor\n"
        "hint: see the log; `persona-export vendor` rebuilds the tools if they are broken\n"
    )
    assert leftovers(log.parent) == []


@pytest.mark.llama
def test_truncated_source_is_refused_before_quantizing(
    fake_f16: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f16 = fake_f16 / "gguf_models" / "cap" / "cap-F16.gguf"
    f16.write_bytes(f16.read_bytes()[:-64])
    tool = fake_quantize(tmp_path, vendor.tool("llama-quantize"))
    monkeypatch.setattr(vendor, "tool", lambda name: tool)
    result = quantize_cli(fake_f16)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {f16} is not a valid GGUF: tensor ")
    assert not (tmp_path / "quantize-argv.txt").exists()


def test_fallback_warnings_are_counted_into_one_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from persona_export.llamacpp.quantize import _QuantizeLines

    # llama-quantize's own lines (SmolLM2-135M, 576-wide rows) and another warning
    stream = [
        "warning: blk.0.attn_k.weight                  - ncols    576 not divisible by 256 (required for type    q4_K) -> falling back to    q5_0",
        "warning: blk.0.attn_q.weight                  - ncols    576 not divisible by 256 (required for type    q4_K) -> falling back to    q5_0",
        "warning: blk.0.attn_v.weight                  - ncols    576 not divisible by 256 (required for type    q6_K) -> falling back to    q8_0",
        "llama_model_quantize_impl: WARNING: something else",
    ]
    warnings: list[str] = []
    lines = _QuantizeLines(warnings)
    for line in stream:
        lines(line)
    lines.finish(tmp_path / "q.log")
    assert warnings[0] == "llama_model_quantize_impl: WARNING: something else"
    assert len(warnings) == 2
    assert "3 tensors use another type" in warnings[1]
    assert "q4_K -> q5_0 x2, q6_K -> q8_0 x1" in warnings[1]
    assert str(tmp_path / "q.log") in warnings[1]
    assert capsys.readouterr().err.count("llama-quantize:") == 2


def test_fallbacks_are_one_warning(tmp_path: Path) -> None:
    """llama-quantize's per-tensor fallback lines and its own total become one warning with
    the kinds counted (the total line, which says less, is not repeated)."""
    from persona_export.llamacpp.quantize import _QuantizeLines

    warnings: list[str] = []
    lines = _QuantizeLines(warnings)
    for _ in range(2):
        lines(
            "llama_tensor_get_type: tensor cols 576 x 1536 are not divisible by 256, required "
            "for type q4_K) -> falling back to q5_0"
        )
    lines("llama_model_quantize_impl: WARNING: 2 of 272 tensor(s) required fallback quantization")
    lines.finish(tmp_path / "q.log")
    assert warnings == [
        "llama-quantize: 2 tensors use another type than asked, their rows not being a "
        f"multiple of 256 (q4_K -> q5_0 x2); details in {tmp_path / 'q.log'}"
    ]
