"""Read and write safetensors files tensor by tensor, without holding a model in memory.

A safetensors file is an 8-byte little-endian header length, a JSON header (name ->
dtype, shape, byte offsets into the data section) and the raw tensor bytes. The reader
parses and checks the header (so a truncated or corrupt file is refused before any output is
written) and reads one tensor at a time with ``pread``; the writer is told every tensor's
name, dtype and shape up front, writes the header first and then the bytes in order, so a
shard never has to be assembled in memory.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export.errors import InvalidInputError

# Bytes per element of the safetensors dtype names.
DTYPE_SIZES: dict[str, int] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
MAX_HEADER_BYTES = 100 * 1024 * 1024  # what the safetensors library itself accepts
_COPY_CHUNK = 64 * 1024 * 1024
_CORRUPT_HINT = "the file is damaged or incomplete: download or save it again"


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, dtype, shape and absolute byte range."""

    path: Path
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute position of the first byte in the file
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _corrupt(path: Path, what: str) -> InvalidInputError:
    return InvalidInputError(f"{path} is not a valid safetensors file: {what}", _CORRUPT_HINT)


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and check the header of ``path``: (name -> TensorInfo, metadata).

    Raises :class:`InvalidInputError` for a truncated or corrupt file: a header that does not
    parse, unknown dtypes, byte ranges that disagree with the shapes, overlap, or data past
    the end of the file.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise _corrupt(path, f"only {size} bytes long")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise _corrupt(path, f"header length {header_len} does not fit a {size}-byte file")
            raw = fh.read(header_len)
    except OSError as exc:
        raise InvalidInputError(
            f"cannot read {path}: {exc.strerror or exc}", _CORRUPT_HINT
        ) from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _corrupt(path, "its JSON header does not parse") from exc
    except RecursionError as exc:
        raise _corrupt(path, "its JSON header is nested too deeply") from exc
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise _corrupt(path, "__metadata__ is not an object")
    data_start = 8 + header_len
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype = str(entry["dtype"])
            shape = tuple(entry["shape"])
            begin, end = entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise _corrupt(path, f"entry {name!r} lacks dtype/shape/data_offsets") from exc
        if not all(_whole(n) for n in (*shape, begin, end)):
            # as the safetensors library: 1.5, "4" or Infinity are not taken for numbers
            raise _corrupt(
                path, f"entry {name!r} has a shape or data_offsets that are not whole numbers"
            )
        if dtype not in DTYPE_SIZES:
            raise _corrupt(path, f"tensor {name!r} has unknown dtype {dtype!r}")
        if any(d < 0 for d in shape) or not 0 <= begin <= end:
            raise _corrupt(path, f"tensor {name!r} has a negative size or offset")
        if end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise _corrupt(path, f"tensor {name!r}: {end - begin} bytes for shape {list(shape)}")
        infos[name] = TensorInfo(path, name, dtype, shape, data_start + begin, end - begin)
    needed = max((i.offset + i.nbytes for i in infos.values()), default=data_start)
    if needed > size:
        raise _corrupt(path, f"truncated: its header describes {needed} bytes, the file has {size}")
    ranges = sorted((i.offset, i.offset + i.nbytes, i.name) for i in infos.values() if i.nbytes)
    for (_, prev_end, prev), (start, _, name) in zip(ranges, ranges[1:], strict=False):
        if start < prev_end:
            raise _corrupt(path, f"tensors {prev!r} and {name!r} overlap")
    return infos, {str(k): str(v) for k, v in metadata.items()}


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_bytes_into(info: TensorInfo, buffer: memoryview, fd: int) -> None:
    """Read the bytes of ``info`` from the open file ``fd`` into ``buffer`` (its exact size)."""
    done = 0
    while done < info.nbytes:
        n = os.preadv(fd, [buffer[done : info.nbytes]], info.offset + done)
        if n <= 0:
            raise InvalidInputError(
                f"{info.path} is truncated: could not read tensor {info.name!r}", _CORRUPT_HINT
            )
        done += n


def copy_range(src_fd: int, offset: int, nbytes: int, dst_fd: int) -> None:
    """Append ``nbytes`` of ``src_fd`` starting at ``offset`` to ``dst_fd`` (at its position).

    Uses ``copy_file_range`` (the kernel copies, no trip through user memory) and falls back
    to reads and writes where the filesystem does not support it.
    """
    done = 0
    use_kernel = hasattr(os, "copy_file_range")
    while done < nbytes:
        want = min(_COPY_CHUNK, nbytes - done)
        if use_kernel:
            try:
                n = os.copy_file_range(src_fd, dst_fd, want, offset + done)
            except OSError:
                use_kernel = False
                continue
        else:
            chunk = os.pread(src_fd, want, offset + done)
            n = len(chunk)
            if n:
                write_all(dst_fd, chunk)
        if n <= 0:
            raise InvalidInputError(
                f"unexpected end of input while copying {nbytes} bytes", _CORRUPT_HINT
            )
        done += n


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write every byte of ``data`` to ``fd``."""
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        view = view[n:]


@dataclass(frozen=True)
class OutputTensor:
    """A tensor the writer will be handed: name, safetensors dtype and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


def plan_shards(tensors: Sequence[OutputTensor], max_shard_bytes: int) -> list[list[OutputTensor]]:
    """Split ``tensors`` (in order) into shards of at most ``max_shard_bytes`` each (a tensor
    larger than the limit gets a shard of its own)."""
    shards: list[list[OutputTensor]] = [[]]
    current = 0
    for tensor in tensors:
        if shards[-1] and current + tensor.nbytes > max_shard_bytes:
            shards.append([])
            current = 0
        shards[-1].append(tensor)
        current += tensor.nbytes
    return shards


def shard_names(count: int) -> list[str]:
    """File names for ``count`` shards, as transformers names them."""
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{k:05d}-of-{count:05d}.safetensors" for k in range(1, count + 1)]


def encode_header(tensors: Sequence[OutputTensor], metadata: Mapping[str, str]) -> bytes:
    """The length prefix and JSON header for ``tensors`` stored back to back, in order."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for tensor in tensors:
        header[tensor.name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data section 8-byte aligned, as safetensors does
    return struct.pack("<Q", len(raw)) + raw


class ShardWriter:
    """Writes planned shards in order; each tensor's bytes arrive through :meth:`begin`.

    The caller announces a tensor with :meth:`begin` (which must follow the plan's order) and
    then writes exactly its byte count through :meth:`write` or :meth:`copy_from`. Files are
    opened and headers written as the shards are reached. :meth:`close` checks that every
    planned byte was written.
    """

    def __init__(
        self,
        out_dir: Path,
        shards: Sequence[Sequence[OutputTensor]],
        metadata: Mapping[str, str],
    ) -> None:
        self.out_dir = out_dir
        self.names = shard_names(len(shards))
        self._order: Iterator[tuple[int, OutputTensor]] = iter(
            [(k, t) for k, shard in enumerate(shards) for t in shard]
        )
        self._shards = shards
        self._metadata = dict(metadata)
        self._fd = -1
        self._shard = -1
        self._current: OutputTensor | None = None
        self._remaining = 0

    def _open_shard(self, index: int) -> None:
        self._close_fd()
        path = self.out_dir / self.names[index]
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._shard = index
        write_all(self._fd, encode_header(self._shards[index], self._metadata))

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def begin(self, name: str) -> OutputTensor:
        """Start the next tensor; ``name`` must be the next one in the plan."""
        if self._remaining:
            raise RuntimeError(f"{self._current} is missing {self._remaining} bytes")
        index, tensor = next(self._order)
        if tensor.name != name:
            raise RuntimeError(f"writer expected {tensor.name}, got {name}")
        if index != self._shard:
            self._open_shard(index)
        self._current = tensor
        self._remaining = tensor.nbytes
        return tensor

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes of the current tensor."""
        view = memoryview(data).cast("B")
        if len(view) > self._remaining:
            raise RuntimeError(f"too many bytes for {self._current}")
        write_all(self._fd, view)
        self._remaining -= len(view)

    def copy_from(self, src_fd: int, offset: int, nbytes: int) -> None:
        """Append ``nbytes`` of another file (from ``offset``) to the current tensor."""
        if nbytes > self._remaining:
            raise RuntimeError(f"too many bytes for {self._current}")
        copy_range(src_fd, offset, nbytes, self._fd)
        self._remaining -= nbytes

    def close(self) -> None:
        """Close the last shard; raise if any planned tensor was not written."""
        try:
            if self._remaining or next(self._order, None) is not None:
                raise RuntimeError("merge ended before every planned tensor was written")
        finally:
            self._close_fd()

    def abort(self) -> None:
        """Close files after a failure (the caller discards the folder)."""
        self._close_fd()


def write_index(out_dir: Path, shards: Sequence[Sequence[OutputTensor]]) -> Path | None:
    """Write model.safetensors.index.json for several shards (none for a single file)."""
    if len(shards) < 2:
        return None
    names = shard_names(len(shards))
    weight_map = {t.name: names[k] for k, shard in enumerate(shards) for t in shard}
    total = sum(t.nbytes for shard in shards for t in shard)
    path = out_dir / "model.safetensors.index.json"
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return path
