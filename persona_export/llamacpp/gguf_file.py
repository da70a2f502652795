"""Read GGUF files: the package's one GGUF reader.

``read_gguf`` gives a GGUF's header, metadata and tensor table, ``read_gguf_metadata`` its
metadata alone (for finished GGUFs whose tensors nobody here looks at), and
``GgufSummary.tensor_data`` a tensor's bytes as a numpy view over a memory map.
``gguf_check`` checks a written GGUF with it.

``gguf.GGUFReader`` builds a numpy view per array element, which takes tens of seconds on a
GGUF with a 200k-token vocabulary (400k strings); this reader walks the same layout with
``struct`` on a memory map and keeps long arrays (vocabulary, merges, token types) only as
their length unless a caller asks for them, so a multi-GB file's header reads in well under a
second. Type ids, sizes, the magic and the default alignment come from the ``gguf`` package's
own constants. The tests compare its results with ``gguf.GGUFReader`` on real files.

Layout (GGUF v2/v3, little-endian): magic ``GGUF``, version u32, tensor count u64, KV count
u64, the KV pairs (key string, value type u32, value), the tensor infos (name, n_dims u32,
dims u64 x n, ggml type u32, offset u64), padding to ``general.alignment`` (default 32),
then the tensor data.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from gguf.constants import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGMLQuantizationType,
    GGUFValueType,
    LlamaFileType,
)

from persona_export.errors import InvalidInputError

# The versions whose layout this parser knows (v1 had 32-bit counts and lengths).
_VERSIONS = (2, 3)
_MAX_DIMS = 4  # GGML_MAX_DIMS
# Arrays up to this length are kept as values (e.g. eos id lists); longer ones (the
# vocabulary, merges, token types) only as their length, unless a caller asks for them.
_SMALL_ARRAY = 64

# The wire format of one item of each scalar value type (strings and arrays are read apart).
_SCALARS = {
    kind: struct.Struct("<" + code)
    for kind, code in (
        (GGUFValueType.UINT8, "B"),
        (GGUFValueType.INT8, "b"),
        (GGUFValueType.UINT16, "H"),
        (GGUFValueType.INT16, "h"),
        (GGUFValueType.UINT32, "I"),
        (GGUFValueType.INT32, "i"),
        (GGUFValueType.FLOAT32, "f"),
        (GGUFValueType.BOOL, "?"),
        (GGUFValueType.UINT64, "Q"),
        (GGUFValueType.INT64, "q"),
        (GGUFValueType.FLOAT64, "d"),
    )
}
_U32, _U64 = _SCALARS[GGUFValueType.UINT32], _SCALARS[GGUFValueType.UINT64]

# general.file_type (llama_ftype) of the GGUFs the converter writes, by --outtype name.
FILE_TYPE_IDS = {
    "F32": int(LlamaFileType.ALL_F32),
    "F16": int(LlamaFileType.MOSTLY_F16),
    "Q8_0": int(LlamaFileType.MOSTLY_Q8_0),
    "BF16": int(LlamaFileType.MOSTLY_BF16),
}


@dataclass(frozen=True)
class ArrayInfo:
    """A metadata array: its item type, length and values (short or requested arrays only)."""

    item_type: GGUFValueType
    count: int
    values: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table."""

    name: str
    shape: tuple[int, ...]  # GGUF order: ne0 (row length) first
    ggml_type: int  # a GGMLQuantizationType value
    offset: int  # from the start of the data section
    n_elements: int
    n_bytes: int | None  # None when the ggml type is unknown to the installed gguf package


@dataclass(frozen=True)
class GgufSummary:
    """What a GGUF says about itself."""

    path: Path
    size_bytes: int
    version: int
    metadata: Mapping[str, Any]  # scalars and strings as values, arrays as ArrayInfo
    tensors: tuple[TensorInfo, ...]
    data_offset: int

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None

    @property
    def name(self) -> str | None:
        value = self.metadata.get("general.name")
        return value if isinstance(value, str) else None

    @property
    def file_type(self) -> int | None:
        value = self.metadata.get("general.file_type")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def tokenizer_model(self) -> str | None:
        value = self.metadata.get("tokenizer.ggml.model")
        return value if isinstance(value, str) else None

    @property
    def token_count(self) -> int:
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        return tokens.count if isinstance(tokens, ArrayInfo) else 0

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    @property
    def block_count(self) -> int | None:
        value = self.metadata.get(f"{self.architecture}.block_count")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def tensor_count(self) -> int:
        return len(self.tensors)

    @property
    def n_weights(self) -> int:
        """Number of values in all tensors (for bits per weight)."""
        return sum(t.n_elements for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        """File bits per tensor value (header and metadata included)."""
        return self.size_bytes * 8 / self.n_weights if self.n_weights else 0.0

    def tensor(self, name: str) -> TensorInfo | None:
        return next((t for t in self.tensors if t.name == name), None)

    def tensor_data(self, tensor: TensorInfo) -> npt.NDArray[np.uint8]:
        """``tensor``'s bytes: a read-only uint8 view over a memory map of the file, shaped as
        rows of ggml blocks, ``(..., ne1, bytes per row)``, which is what
        ``gguf.quants.dequantize`` takes. Raises InvalidInputError when the ggml type is
        unknown to the installed gguf package or the file changed since it was read."""
        if tensor.n_bytes is None:
            raise InvalidInputError(
                f"{self.path}: tensor {tensor.name!r} has ggml type {tensor.ggml_type}, "
                "unknown to the installed gguf package",
                "upgrade the gguf package",
            )
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(tensor.ggml_type)]
        row_bytes = (tensor.shape[0] if tensor.shape else 1) // block * type_size
        start = self.data_offset + tensor.offset
        data = self._mapped[start : start + tensor.n_bytes]
        return data.reshape(*reversed(tensor.shape[1:]), row_bytes)

    @cached_property
    def _mapped(self) -> npt.NDArray[np.uint8]:
        # np.memmap, not mmap.mmap: the views handed out keep the map open for as long as
        # they live, where an mmap.mmap could not be closed while they do.
        data: npt.NDArray[np.uint8] = np.memmap(self.path, dtype=np.uint8, mode="r")
        if data.size != self.size_bytes:
            raise InvalidInputError(
                f"{self.path} changed since it was read ({self.size_bytes} bytes, now {data.size})",
                "run the command again",
            )
        return data


class _Cursor:
    """Sequential little-endian reads from a buffer, with bounds checks."""

    def __init__(self, buf: Any, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise ValueError(f"truncated at byte {self.pos} (needs {n} more, file has {self.size})")

    def scalar(self, fmt: struct.Struct) -> Any:
        self.need(fmt.size)
        (value,) = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return value

    def string(self) -> str:
        length = self.scalar(_U64)
        self.need(length)
        raw = self.buf[self.pos : self.pos + length]
        self.pos += length
        return str(raw, "utf-8", errors="replace")

    def value_type(self) -> GGUFValueType:
        code = self.scalar(_U32)
        try:
            return GGUFValueType(code)
        except ValueError:
            raise ValueError(f"unknown metadata value type {code} at byte {self.pos - 4}") from None

    def value(self, kind: GGUFValueType, whole: bool = False) -> Any:
        """One value of type ``kind``; an array as ArrayInfo, with its values when it is short
        or ``whole``."""
        if kind is GGUFValueType.STRING:
            return self.string()
        if kind is not GGUFValueType.ARRAY:
            return self.scalar(_SCALARS[kind])
        item = self.value_type()
        count = self.scalar(_U64)
        keep = whole or count <= _SMALL_ARRAY
        values: tuple[Any, ...] | None
        if item is GGUFValueType.STRING:
            values = self.strings(count, keep)
        elif item in _SCALARS:
            values = self.scalars(_SCALARS[item], count, keep)
        else:  # arrays of arrays: no converter writes them; walk them item by item
            items = tuple(self.value(item, whole) for _ in range(count))
            values = items if keep else None
        return ArrayInfo(item, count, values)

    def scalars(self, fmt: struct.Struct, count: int, keep: bool) -> tuple[Any, ...] | None:
        n = fmt.size * count
        self.need(n)
        values = (
            struct.unpack_from(f"<{count}{fmt.format[1:]}", self.buf, self.pos) if keep else None
        )
        self.pos += n
        return values

    def strings(self, count: int, keep: bool) -> tuple[str, ...] | None:
        # the hot loops of a 200k-token vocabulary, without a bounds check per item: a length
        # read past the end raises struct.error, and a last string cut short (its slice is
        # short, not an error) leaves pos past the end
        unpack = _U64.unpack_from
        buf, pos, size = self.buf, self.pos, self.size
        found: list[str] = []
        try:
            if keep:
                for _ in range(count):
                    end = pos + 8 + unpack(buf, pos)[0]
                    found.append(str(buf[pos + 8 : end], "utf-8", errors="replace"))
                    pos = end
            else:
                for _ in range(count):
                    pos += 8 + unpack(buf, pos)[0]
        except struct.error:
            pos = size + 1
        if pos > size:
            raise ValueError(f"truncated in a string array (file has {size} bytes)")
        self.pos = pos
        return tuple(found) if keep else None


@contextmanager
def _open(path: Path) -> Iterator[_Cursor]:
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        if size == 0:
            raise ValueError("empty file")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            yield _Cursor(buf, size)


def _read_metadata(cur: _Cursor, arrays: Collection[str]) -> tuple[int, int, dict[str, Any]]:
    """The header and KV section: (version, tensor count, metadata)."""
    cur.need(4)
    if _U32.unpack_from(cur.buf, 0)[0] != GGUF_MAGIC:
        raise ValueError(f"bad magic {cur.buf[0:4]!r}")
    cur.pos = 4
    version = cur.scalar(_U32)
    if version not in _VERSIONS:
        raise ValueError(f"unsupported GGUF version {version} (big-endian file?)")
    n_tensors = cur.scalar(_U64)
    n_kv = cur.scalar(_U64)
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        kind = cur.value_type()
        if key in metadata:
            raise ValueError(f"duplicate metadata key {key!r}")
        metadata[key] = cur.value(kind, whole=key in arrays)
    return version, n_tensors, metadata


def _read_tensors(
    cur: _Cursor, n_tensors: int, metadata: Mapping[str, Any]
) -> tuple[tuple[TensorInfo, ...], int]:
    """The tensor table, checked against the file's size: (tensors, data offset)."""
    raw: list[tuple[str, tuple[int, ...], int, int]] = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.scalar(_U32)
        if n_dims > _MAX_DIMS:
            raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
        dims = tuple(cur.scalar(_U64) for _ in range(n_dims))
        raw.append((name, dims, cur.scalar(_U32), cur.scalar(_U64)))
    alignment = metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"invalid general.alignment {alignment!r}")
    data_offset = -(-cur.pos // alignment) * alignment
    tensors: list[TensorInfo] = []
    seen: set[str] = set()
    for name, dims, ggml_type, offset in raw:
        if name in seen:
            raise ValueError(f"duplicate tensor {name!r}")
        seen.add(name)
        n_elements = 1
        for d in dims:
            n_elements *= d
        n_bytes = None
        if ggml_type in GGML_QUANT_SIZES:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
            n_bytes = n_elements // block * type_size
            if data_offset + offset + n_bytes > cur.size:
                raise ValueError(
                    f"tensor {name!r} ends at byte {data_offset + offset + n_bytes}, beyond the "
                    f"end of the file ({cur.size} bytes): truncated"
                )
        tensors.append(TensorInfo(name, dims, ggml_type, offset, n_elements, n_bytes))
    return tuple(tensors), data_offset


def read_gguf(path: Path, *, arrays: Collection[str] = ()) -> GgufSummary:
    """Parse ``path``'s header, metadata and tensor table; the metadata arrays named in
    ``arrays`` (e.g. ``tokenizer.ggml.tokens``) are read in full, other long ones only as
    their length. Raise InvalidInputError when it is not a complete, well-formed GGUF (bad
    magic, truncated, tensors beyond the end)."""
    path = Path(path)
    try:
        with _open(path) as cur:
            version, n_tensors, metadata = _read_metadata(cur, arrays)
            tensors, data_offset = _read_tensors(cur, n_tensors, metadata)
            return GgufSummary(path, cur.size, version, metadata, tensors, data_offset)
    except (ValueError, struct.error, OverflowError) as exc:
        raise InvalidInputError(
            f"{path} is not a valid GGUF: {exc}",
            "delete it and run the stage that writes it again",
        ) from exc


def read_gguf_metadata(path: Path, *, arrays: Collection[str] = ()) -> dict[str, Any]:
    """``path``'s metadata alone, as in ``GgufSummary.metadata`` (``arrays`` as for
    read_gguf): the tensor table is not read. Raise InvalidInputError when the file cannot be
    read or its header and metadata are not well-formed."""
    try:
        with _open(Path(path)) as cur:
            return _read_metadata(cur, arrays)[2]
    except (OSError, ValueError, struct.error, OverflowError) as exc:
        raise InvalidInputError(
            f"cannot read GGUF metadata from {path}: {exc}",
            "the file is damaged or not a GGUF; rerun `persona-export gguf` and `quantize`",
        ) from exc
