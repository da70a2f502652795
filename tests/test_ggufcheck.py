"""The GGUF reader and checker: agrees with gguf.GGUFReader, finds what is wrong.

Small GGUFs are written with gguf-py's own GGUFWriter, so these tests need no converter.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from gguf import (
    GGMLQuantizationType,
    GGUFReader,
    GGUFValueType,
    GGUFWriter,
    LlamaFileType,
    quants,
)

from persona_export.errors import InvalidInputError, VerificationError
from persona_export.llamacpp.gguf_check import Expectation, check_gguf, problems
from persona_export.llamacpp.gguf_file import (
    FILE_TYPE_IDS,
    ArrayInfo,
    read_gguf,
    read_gguf_metadata,
)
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


def test_every_value_type_agrees_with_gguf_reader(tmp_path: Path) -> None:
    path = tmp_path / "types.gguf"
    writer = GGUFWriter(path, "llama")
    scalars = {
        GGUFValueType.UINT8: 200,
        GGUFValueType.INT8: -100,
        GGUFValueType.UINT16: 60_000,
        GGUFValueType.INT16: -30_000,
        GGUFValueType.UINT32: 4_000_000_000,
        GGUFValueType.INT32: -2_000_000_000,
        GGUFValueType.FLOAT32: 0.1,
        GGUFValueType.BOOL: True,
        GGUFValueType.UINT64: 2**63 + 5,
        GGUFValueType.INT64: -(2**62),
        GGUFValueType.FLOAT64: 1e-300,
        GGUFValueType.STRING: "héllo",
    }
    for kind, value in scalars.items():
        writer.add_key_value(f"t.{kind.name}", value, kind)
    writer.add_key_value("t.ARRAY", [1.5, 2.5], GGUFValueType.ARRAY, GGUFValueType.FLOAT64)
    long = list(range(-50, 150))
    writer.add_key_value("t.long", long, GGUFValueType.ARRAY, GGUFValueType.INT16)
    words = [f"w{i}é" for i in range(100)]
    writer.add_key_value("t.words", words, GGUFValueType.ARRAY, GGUFValueType.STRING)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    assert {k.name for k in scalars} | {"ARRAY"} == {k.name for k in GGUFValueType}
    theirs = GGUFReader(path).fields
    ours = read_gguf(path, arrays=("t.long", "t.words")).metadata
    for kind in scalars:
        key = f"t.{kind.name}"
        assert ours[key] == pytest.approx(theirs[key].contents()), key
        assert type(ours[key]) is type(theirs[key].contents()), key
    assert ours["t.ARRAY"] == ArrayInfo(GGUFValueType.FLOAT64, 2, (1.5, 2.5))
    assert list(ours["t.long"].values) == theirs["t.long"].contents() == long
    assert list(ours["t.words"].values) == theirs["t.words"].contents() == words
    # not asked for: long arrays are kept as their length only
    skipped = read_gguf_metadata(path)
    assert skipped["t.words"] == ArrayInfo(GGUFValueType.STRING, 100)
    assert skipped["t.long"] == ArrayInfo(GGUFValueType.INT16, 200)


def test_full_arrays_agree_with_gguf_reader(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", vocab=300)
    keys = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")
    ours = read_gguf(path, arrays=keys)
    theirs = GGUFReader(path)
    for key in keys:
        assert list(ours.metadata[key].values) == theirs.fields[key].contents(), key
    assert read_gguf_metadata(path, arrays=keys) == dict(ours.metadata)


def test_tensor_data_agrees_with_gguf_reader(tmp_path: Path) -> None:
    path = tmp_path / "q.gguf"
    rng = np.random.default_rng(1)
    weights = rng.standard_normal((8, 64)).astype(np.float32)
    writer = GGUFWriter(path, "llama")
    writer.add_tensor("f32", weights)
    writer.add_tensor("f16", weights.astype(np.float16))
    for qtype in (GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_1):
        data = quants.quantize(weights, qtype)
        writer.add_tensor(qtype.name, data, raw_shape=data.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    ours = read_gguf(path)
    theirs = GGUFReader(path)
    assert [t.name for t in ours.tensors] == ["f32", "f16", "Q8_0", "Q4_1"]
    for mine, ref in zip(ours.tensors, theirs.tensors, strict=True):
        raw = ours.tensor_data(mine)
        assert raw.dtype == np.uint8
        assert not raw.flags.writeable
        assert raw.tobytes() == ref.data.tobytes(), mine.name
        qtype = GGMLQuantizationType(mine.ggml_type)
        got = quants.dequantize(raw, qtype).reshape(tuple(reversed(mine.shape)))
        want = quants.dequantize(ref.data, ref.tensor_type).reshape(weights.shape)
        assert np.array_equal(got, want), mine.name
    assert np.array_equal(
        quants.dequantize(ours.tensor_data(ours.tensors[0]), GGMLQuantizationType.F32), weights
    )

    stale = read_gguf(path)
    with path.open("ab") as fh:  # the file changes between reading and mapping it
        fh.write(b"\0" * 32)
    with pytest.raises(InvalidInputError, match="changed since it was read"):
        stale.tensor_data(stale.tensors[0])


def test_metadata_alone_ignores_the_tensors(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf")
    data = path.read_bytes()
    path.write_bytes(data[:-100])  # tensor data cut short: read_gguf refuses it
    with pytest.raises(InvalidInputError, match="truncated"):
        read_gguf(path)
    assert read_gguf_metadata(path)["general.name"] == "cap"
    path.write_bytes(data[:1000])  # cut inside the metadata
    with pytest.raises(InvalidInputError, match=r"cannot read GGUF metadata from .*m\.gguf"):
        read_gguf_metadata(path)
    with pytest.raises(InvalidInputError, match="cannot read GGUF metadata") as info:
        read_gguf_metadata(tmp_path)  # a folder: the OSError is an InvalidInputError too
    assert info.value.hint is not None and "persona-export gguf" in info.value.hint


def test_metadata_with_a_large_vocabulary_is_fast(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "big.gguf", vocab=200_064)
    started = time.perf_counter()
    meta = read_gguf_metadata(path, arrays=("tokenizer.ggml.tokens",))
    assert len(meta["tokenizer.ggml.tokens"].values) == 200_064
    assert meta["tokenizer.ggml.tokens"].values[-1] == "tok200063"
    assert time.perf_counter() - started < 2.0


def test_file_type_ids_are_llama_file_types() -> None:
    assert FILE_TYPE_IDS == {
        "F32": LlamaFileType.ALL_F32,
        "F16": LlamaFileType.MOSTLY_F16,
        "Q8_0": LlamaFileType.MOSTLY_Q8_0,
        "BF16": LlamaFileType.MOSTLY_BF16,
    }
    assert all(type(v) is int for v in FILE_TYPE_IDS.values())  # plain ints in messages


def test_every_cut_is_refused(tmp_path: Path) -> None:
    data = write_gguf(tmp_path / "m.gguf", vocab=100).read_bytes()
    cut = tmp_path / "cut.gguf"
    for n in range(0, len(data), 7):
        cut.write_bytes(data[:n])
        with pytest.raises(InvalidInputError, match="not a valid GGUF"):
            read_gguf(cut)
