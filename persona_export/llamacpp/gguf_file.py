"""Read a GGUF's header, metadata and tensor table, and check a written GGUF is what a stage
meant to write.

``gguf.GGUFReader`` builds a numpy view per array element, which takes tens of seconds on a
GGUF with a 200k-token vocabulary (400k strings); this reader walks the same layout with
``struct`` on a memory map and keeps only what the checks need, in well under a second.
The tests compare its results with ``gguf.GGUFReader`` on real files.

Layout (GGUF v2/v3, little-endian): magic ``GGUF``, version u32, tensor count u64, KV count
u64, the KV pairs (key string, value type u32, value), the tensor infos (name, n_dims u32,
dims u64 x n, ggml type u32, offset u64), padding to ``general.alignment`` (default 32),
then the tensor data.
"""

from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export.errors import InvalidInputError, VerificationError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# Arrays up to this length are kept as values (e.g. eos id lists); longer ones (the
# vocabulary, merges, token types) only as their length.
_SMALL_ARRAY = 64

# GGUF value types -> struct format of one item (strings and arrays handled apart).
_SCALAR_FORMATS = {
    0: "<B",  # UINT8
    1: "<b",  # INT8
    2: "<H",  # UINT16
    3: "<h",  # INT16
    4: "<I",  # UINT32
    5: "<i",  # INT32
    6: "<f",  # FLOAT32
    7: "<?",  # BOOL
    10: "<Q",  # UINT64
    11: "<q",  # INT64
    12: "<d",  # FLOAT64
}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")

# general.file_type values the converter writes (llama_ftype).
FILE_TYPE_IDS = {"F32": 0, "F16": 1, "Q8_0": 7, "BF16": 32}


@dataclass(frozen=True)
class ArrayInfo:
    """A metadata array: its item type, length and (short arrays only) its values."""

    item_type: int
    count: int
    values: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table."""

    name: str
    shape: tuple[int, ...]  # GGUF order: ne0 (row length) first
    ggml_type: int
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


class _Cursor:
    """Sequential little-endian reads from a buffer, with bounds checks."""

    def __init__(self, buf: Any, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise ValueError(f"truncated at byte {self.pos} (needs {n} more, file has {self.size})")

    def unpack(self, fmt: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        self.need(length)
        raw = bytes(self.buf[self.pos : self.pos + length])
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        # the hot loop of a 200k-token vocabulary: bounds are checked once at the end
        unpack = _U64.unpack_from
        buf, pos, size = self.buf, self.pos, self.size
        for _ in range(count):
            if pos + 8 > size:
                break
            pos += 8 + unpack(buf, pos)[0]
        else:
            if pos <= size:
                self.pos = pos
                return
        raise ValueError(f"truncated in a string array (file has {size} bytes)")

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type = self.unpack("<I")
            count = self.unpack("<Q")
            if count <= _SMALL_ARRAY:
                return ArrayInfo(
                    item_type, count, tuple(self.value(item_type) for _ in range(count))
                )
            if item_type == _STRING:
                self.skip_strings(count)
            elif item_type in _SCALAR_FORMATS:
                skip = struct.calcsize(_SCALAR_FORMATS[item_type]) * count
                self.need(skip)
                self.pos += skip
            else:
                for _ in range(count):
                    self.value(item_type)
            return ArrayInfo(item_type, count)
        fmt = _SCALAR_FORMATS.get(vtype)
        if fmt is None:
            raise ValueError(f"unknown metadata value type {vtype} at byte {self.pos}")
        return self.unpack(fmt)


def _type_sizes() -> dict[int, tuple[int, int]]:
    """ggml type id -> (block size, bytes per block), as the installed gguf package knows them."""
    try:
        from gguf import GGML_QUANT_SIZES
    except ImportError:  # pragma: no cover - gguf is a dependency
        return {}
    return {int(k): (int(v[0]), int(v[1])) for k, v in GGML_QUANT_SIZES.items()}


def ggml_type_name(type_id: int) -> str:
    """The ggml type's name (``Q4_K``), or ``type<N>`` when the gguf package lacks it."""
    try:
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType(type_id).name
    except (ImportError, ValueError):
        return f"type{type_id}"


def read_gguf(path: Path) -> GgufSummary:
    """Parse ``path``'s header, metadata and tensor table; raise InvalidInputError when it is
    not a complete, well-formed GGUF (bad magic, truncated, tensors beyond the end)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            if size == 0:
                raise ValueError("empty file")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(path, buf, size)
    except (ValueError, struct.error, UnicodeDecodeError, OverflowError) as exc:
        raise InvalidInputError(
            f"{path} is not a valid GGUF: {exc}",
            "delete it and run the stage that writes it again",
        ) from exc


def _parse(path: Path, buf: Any, size: int) -> GgufSummary:
    cur = _Cursor(buf, size)
    cur.need(4)
    if bytes(buf[0:4]) != GGUF_MAGIC:
        raise ValueError(f"bad magic {bytes(buf[0:4])!r}")
    cur.pos = 4
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise ValueError(f"unsupported GGUF version {version} (big-endian file?)")
    n_tensors = cur.unpack("<Q")
    n_kv = cur.unpack("<Q")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        vtype = cur.unpack("<I")
        if key in metadata:
            raise ValueError(f"duplicate metadata key {key!r}")
        metadata[key] = cur.value(vtype)
    sizes = _type_sizes()
    raw: list[tuple[str, tuple[int, ...], int, int]] = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("<I")
        if n_dims > 4:
            raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
        dims = tuple(cur.unpack("<Q") for _ in range(n_dims))
        raw.append((name, dims, cur.unpack("<I"), cur.unpack("<Q")))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
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
        if ggml_type in sizes:
            block, type_size = sizes[ggml_type]
            n_bytes = n_elements // block * type_size
            if data_offset + offset + n_bytes > size:
                raise ValueError(
                    f"tensor {name!r} ends at byte {data_offset + offset + n_bytes}, beyond the "
                    f"end of the file ({size} bytes): truncated"
                )
        tensors.append(TensorInfo(name, dims, ggml_type, offset, n_elements, n_bytes))
    return GgufSummary(path, size, version, metadata, tuple(tensors), data_offset)


@dataclass(frozen=True)
class Expectation:
    """What a stage expects of the GGUF it wrote; ``None`` fields are not checked."""

    architecture: str | None = None
    file_type: int | None = None
    tensor_count: int | None = None
    name: str | None = None
    chat_template: str | None = None
    token_count: int | None = None
    block_count: int | None = None
    tensor_names: frozenset[str] | None = None


_BLOCK_RE = re.compile(r"^blk\.(\d+)\.")


def problems(summary: GgufSummary, expect: Expectation) -> list[str]:
    """Everything wrong with ``summary`` against ``expect`` and the rules every model GGUF
    must follow (a tokenizer, a chat template, the vocabulary matching the embedding)."""
    found: list[str] = []

    def differ(what: str, want: Any, got: Any) -> None:
        if want is not None and want != got:
            found.append(f"{what} is {got!r}, expected {want!r}")

    if not summary.architecture:
        found.append("general.architecture is missing")
    differ("general.architecture", expect.architecture, summary.architecture)
    differ("general.file_type", expect.file_type, summary.file_type)
    differ("general.name", expect.name, summary.name)
    differ("the tensor count", expect.tensor_count, summary.tensor_count)
    differ(f"{summary.architecture}.block_count", expect.block_count, summary.block_count)
    if summary.tensor_count == 0:
        found.append("it has no tensors")
    if not summary.tokenizer_model:
        found.append("tokenizer.ggml.model is missing (no tokenizer)")
    if summary.token_count == 0:
        found.append("tokenizer.ggml.tokens is missing or empty")
    differ("the vocabulary size", expect.token_count, summary.token_count)
    if not summary.chat_template:
        found.append("tokenizer.chat_template is missing")
    elif expect.chat_template is not None and summary.chat_template != expect.chat_template:
        found.append("tokenizer.chat_template differs from the source's chat template")
    embd = summary.tensor("token_embd.weight")
    if embd is not None and len(embd.shape) == 2 and embd.shape[1] != summary.token_count:
        found.append(
            f"token_embd.weight has {embd.shape[1]} rows but the vocabulary has "
            f"{summary.token_count} tokens"
        )
    if summary.block_count is not None:
        blocks = {int(m.group(1)) for t in summary.tensors if (m := _BLOCK_RE.match(t.name))}
        missing = sorted(set(range(summary.block_count)) - blocks)
        if missing:
            found.append(f"no tensors for blocks {missing[:8]} of {summary.block_count}")
    if expect.tensor_names is not None:
        names = {t.name for t in summary.tensors}
        if names != expect.tensor_names:
            lost = sorted(expect.tensor_names - names)[:5]
            extra = sorted(names - expect.tensor_names)[:5]
            found.append(f"tensor names differ from the source (missing {lost}, extra {extra})")
    return found


def check_gguf(path: Path, expect: Expectation, *, what: str) -> GgufSummary:
    """Read ``path`` and raise VerificationError naming every problem; return the summary.

    ``what`` names the producer in the message, e.g. ``"the converter's output"``.
    """
    try:
        summary = read_gguf(path)
    except InvalidInputError as exc:
        raise VerificationError(
            f"{what} is not a valid GGUF: {exc.message}", "this is a bug in the tool; report it"
        ) from exc
    found = problems(summary, expect)
    if found:
        raise VerificationError(
            f"{what} failed its checks: {'; '.join(found)}",
            "the file was discarded; rerun with PERSONA_EXPORT_DEBUG=1 and report the output",
        )
    return summary
