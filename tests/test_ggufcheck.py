"""The GGUF reader and checker: agrees with gguf.GGUFReader, finds what is wrong.

Small GGUFs are written with gguf-py's own GGUFWriter, so these tests need no converter.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from gguf import GGUFReader, LlamaFileType

from persona_export.errors import InvalidInputError, VerificationError
from persona_export.llamacpp.gguf_check import Expectation, check_gguf, problems
from persona_export.llamacpp.gguf_file import read_gguf
from tests.ggufkit import TEMPLATE, write_gguf


def test_reader_agrees_with_gguf_reader(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", vocab=300)
    ours = read_gguf(path)
    theirs = GGUFReader(path)
    assert ours.tensor_count == len(theirs.tensors) == 2 * 2 + 2
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, ref in zip(ours.tensors, theirs.tensors, strict=True):
        assert mine.shape == tuple(int(d) for d in ref.shape)
        assert mine.ggml_type == int(ref.tensor_type)
        assert mine.n_elements == int(ref.n_elements)
        assert mine.n_bytes == int(ref.n_bytes)
        assert ours.data_offset + mine.offset == int(ref.data_offset)
    assert set(ours.metadata) == {k for k in theirs.fields if not k.startswith("GGUF.")}
    for key, field in theirs.fields.items():
        if key.startswith("GGUF.") or key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            continue
        if key in ("tokenizer.ggml.token_type",):
            assert ours.metadata[key].count == len(field.contents())
        elif key == "test.small_array":
            assert list(ours.metadata[key].values) == field.contents()
        else:
            assert ours.metadata[key] == pytest.approx(field.contents()), key
    assert ours.token_count == len(theirs.fields["tokenizer.ggml.tokens"].contents()) == 300
    assert ours.metadata["tokenizer.ggml.merges"].count == 150
    assert ours.architecture == "llama"
    assert ours.name == "cap"
    assert ours.file_type == int(LlamaFileType.MOSTLY_F16)
    assert ours.chat_template == TEMPLATE
    assert ours.block_count == 2
    assert ours.n_weights == 300 * 16 + 2 * (16 + 256) + 16
    assert ours.bits_per_weight == pytest.approx(path.stat().st_size * 8 / ours.n_weights)
    assert problems(ours, Expectation(architecture="llama", name="cap", file_type=1)) == []


def test_reader_is_fast_on_a_large_vocabulary(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "big.gguf", vocab=200_064)
    started = time.perf_counter()
    summary = read_gguf(path)
    assert summary.token_count == 200_064
    assert time.perf_counter() - started < 2.0  # GGUFReader needs tens of seconds here


@pytest.mark.parametrize(
    ("kwargs", "expect", "message"),
    [
        ({"chat_template": None}, Expectation(), "tokenizer.chat_template is missing"),
        ({"with_tokenizer": False}, Expectation(), "tokenizer.ggml.model is missing"),
        (
            {},
            Expectation(file_type=15),
            "general.file_type is 1, expected 15",
        ),
        ({}, Expectation(architecture="phi3"), "general.architecture is 'llama', expected 'phi3'"),
        ({}, Expectation(name="zen"), "general.name is 'cap', expected 'zen'"),
        ({}, Expectation(tensor_count=7), "the tensor count is 6, expected 7"),
        ({}, Expectation(chat_template="other"), "differs from the source's chat template"),
        (
            {"embd_rows": 256},
            Expectation(),
            "token_embd.weight has 256 rows but the vocabulary has 300 tokens",
        ),
        ({"blocks": 3, "written_blocks": 2}, Expectation(), "no tensors for blocks [2] of 3"),
    ],
)
def test_checker_names_the_problem(
    tmp_path: Path, kwargs: dict[str, object], expect: Expectation, message: str
) -> None:
    path = write_gguf(tmp_path / "m.gguf", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(VerificationError) as info:
        check_gguf(path, expect, what="the test's output")
    assert info.value.message.startswith("the test's output failed its checks: ")
    assert message in info.value.message


def test_truncated_file_is_not_a_gguf(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf")
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(InvalidInputError, match="truncated"):
        read_gguf(path)
    path.write_bytes(data[:1000])
    with pytest.raises(InvalidInputError, match="not a valid GGUF"):
        read_gguf(path)
    with pytest.raises(VerificationError, match="is not a valid GGUF"):
        check_gguf(path, Expectation(), what="x")


@pytest.mark.parametrize("content", [b"", b"GGUX" + bytes(20), b"not a gguf at all"])
def test_garbage_is_not_a_gguf(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match=r"bad\.gguf is not a valid GGUF"):
        read_gguf(path)
