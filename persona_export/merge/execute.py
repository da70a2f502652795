"""Run a merge plan: stream every output tensor from its source into the output shards.

Tensors that pass through unchanged are copied file to file by the kernel
(``copy_file_range``), never entering this process's memory. Tensors with LoRA updates, or
that change dtype, are read a block of rows at a time, merged (:mod:`.tensors`) and handed
to a writer thread, so reading and computing the next block overlaps writing the last one.
At most a few blocks are alive at once, so peak memory stays near the size of one block
plus the adapter, whatever the model size.

Every value that comes from the adapter or from the merge arithmetic is checked to be finite
as it streams (the adapter's LoRA tensors when loaded, each merged block, each tensor the
adapter replaces), so a NaN or infinity (a diverged training run, a delta that overflows the
output dtype, a DoRA row whose norm is zero) stops the merge naming the tensor, before the
output folder is renamed into place. Base tensors copied unchanged are not re-checked.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_export.errors import InvalidInputError
from persona_export.merge.adapter import Adapter
from persona_export.merge.plan import LoraUpdate, MergePlan, PlannedTensor, Source
from persona_export.merge.safetensors_io import (
    DTYPE_SIZES,
    FLOAT_DTYPES,
    ShardWriter,
    plan_shards,
    read_bytes_into,
    shard_names,
    write_index,
)
from persona_export.merge.tensors import LoraOp, merge_bias, merge_blocks, row_blocks, torch_dtype

if TYPE_CHECKING:
    import torch

METADATA = {"format": "pt"}  # transformers refuses safetensors files without it
_QUEUE_BLOCKS = 4


@dataclass(frozen=True)
class ExecuteResult:
    """What was written: shard files, the index (if sharded) and byte counts."""

    shard_files: tuple[Path, ...]
    index_file: Path | None
    total_bytes: int
    merged_tensors: int


class _Files:
    """Open input files by path, once each."""

    def __init__(self, stack: ExitStack) -> None:
        self._fds: dict[Path, int] = {}
        self._stack = stack

    def fd(self, path: Path) -> int:
        if path not in self._fds:
            fd = os.open(path, os.O_RDONLY)
            self._stack.callback(os.close, fd)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            self._fds[path] = fd
        return self._fds[path]


class _TensorReader:
    """Reads source tensors (or row ranges of them) as CPU torch tensors."""

    def __init__(self, files: _Files, adapter: Adapter) -> None:
        self.files = files
        self.adapter = adapter

    def rows(self, source: Source, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of ``source`` (its own dtype), freshly read."""
        import torch

        if source.info is None:  # a tensor of a pickled adapter, already in memory
            return self.adapter.tensors.loaded[source.name][start:stop]
        shape = source.shape
        row_bytes = DTYPE_SIZES[source.dtype]
        for dim in shape[1:]:
            row_bytes *= dim
        count = (stop - start) * row_bytes if shape else source.info.nbytes
        buffer = torch.empty(count, dtype=torch.uint8)
        sub = dataclasses.replace(
            source.info, offset=source.info.offset + start * row_bytes, nbytes=count
        )
        read_bytes_into(sub, buffer.numpy().data, self.files.fd(source.info.path))
        out_shape = (stop - start, *shape[1:]) if shape else ()
        return buffer.view(torch_dtype(source.dtype)).view(out_shape)

    def whole(self, source: Source) -> torch.Tensor:
        return self.rows(source, 0, source.shape[0] if source.shape else 0)

    def adapter_tensor(self, name: str, device: torch.device) -> torch.Tensor:
        """An adapter tensor as float32 on ``device`` (PEFT upcasts adapter weights), checked
        to hold only finite values."""
        import torch

        if self.adapter.tensors.infos:
            info = self.adapter.tensors.infos[name]
            source = Source("adapter", name, info.dtype, info.shape, info)
            tensor = self.whole(source)
        else:
            tensor = self.adapter.tensors.loaded[name]
        return finite(
            tensor.to(device=device, dtype=torch.float32), self.adapter_what(name), _TRAINING_HINT
        )

    def adapter_what(self, name: str) -> str:
        return f"the adapter's tensor {name} ({self.adapter.tensors.path})"


_TRAINING_HINT = (
    "the adapter holds values no model can use (a training run that diverged, or a damaged "
    "file): train again or take an earlier checkpoint"
)
_MERGED_HINT = (
    "the LoRA update overflows the output dtype or divides by zero (DoRA): check lora_alpha "
    "and r in adapter_config.json; --dtype bf16 or f32 has a wider range than f16"
)


def finite(tensor: torch.Tensor, what: str, hint: str) -> torch.Tensor:
    """``tensor`` itself, once checked to hold no NaN or infinity (raises
    :class:`InvalidInputError` naming ``what`` otherwise)."""
    import torch

    if not tensor.is_floating_point() or not tensor.numel():
        return tensor
    # NaN propagates to both ends and an infinity is one of them: one pass, no temporary
    # (isfinite(t).all() took 7x as long on a bf16 block, a third of the block's merge)
    low, high = torch.aminmax(tensor)
    if not (bool(torch.isfinite(low)) and bool(torch.isfinite(high))):
        bad = int((~torch.isfinite(tensor)).sum())
        raise InvalidInputError(
            f"{what} holds {bad} NaN or infinite value(s); nothing was written", hint
        )
    return tensor


class _Writer(threading.Thread):
    """Writes queued commands to the shard writer in order, off the main thread."""

    def __init__(self, writer: ShardWriter) -> None:
        super().__init__(name="merge-writer", daemon=True)
        self.writer = writer
        self.commands: queue.Queue[tuple[str, Any] | None] = queue.Queue(_QUEUE_BLOCKS)
        self.error: BaseException | None = None

    def run(self) -> None:
        while (command := self.commands.get()) is not None:
            if self.error is not None:
                continue  # drain, so the producer never blocks on a dead writer
            kind, payload = command
            try:
                if kind == "begin":
                    self.writer.begin(payload)
                elif kind == "tensor":
                    self.writer.write(payload.reshape(-1).view(_uint8()).numpy().data)
                else:
                    self.writer.copy_from(*payload)
            except BaseException as exc:  # handed to the main thread
                self.error = exc

    def put(self, kind: str, payload: Any) -> None:
        if self.error is not None:
            raise self.error
        self.commands.put((kind, payload))

    def finish(self) -> None:
        self.commands.put(None)
        self.join()
        if self.error is not None:
            raise self.error


def _uint8() -> Any:
    import torch

    return torch.uint8


def _ops(
    updates: tuple[LoraUpdate, ...], reader: _TensorReader, device: torch.device
) -> list[LoraOp]:
    ops = []
    for update in updates:
        module = update.module
        ops.append(
            LoraOp(
                kind=module.kind,
                a=reader.adapter_tensor(module.lora_a, device),
                b=reader.adapter_tensor(module.lora_b, device),
                scaling=module.scaling,
                fan_in_fan_out=update.fan_in_fan_out,
                magnitude=(
                    reader.adapter_tensor(module.magnitude, device) if module.magnitude else None
                ),
                bias=reader.adapter_tensor(module.lora_bias, device) if module.lora_bias else None,
            )
        )
    return ops


def _block_rows(planned: PlannedTensor, block_bytes: int) -> int:
    row_elems = 1
    for dim in planned.out.shape[1:]:
        row_elems *= dim
    return max(1, block_bytes // max(1, row_elems * 4))


def _write_tensor(
    planned: PlannedTensor,
    reader: _TensorReader,
    writer: _Writer,
    *,
    device: torch.device,
    block_bytes: int,
) -> None:
    source, out = planned.source, planned.out
    writer.put("begin", out.name)
    unchanged = not planned.updates and not planned.bias_updates
    if unchanged and source.origin == "adapter" and source.dtype in FLOAT_DTYPES:
        _write_adapter_tensor(planned, reader, writer, block_bytes)
        return
    if unchanged and source.dtype == out.dtype:
        if source.info is not None:
            writer.put("copy", (reader.files.fd(source.info.path), source.info.offset, out.nbytes))
        else:
            writer.put("tensor", reader.whole(source).contiguous())
        return
    out_dtype = torch_dtype(out.dtype)
    merged = f"the merged tensor {out.name}"
    if planned.bias_updates:
        ops = _ops(planned.bias_updates, reader, device)
        bias = merge_bias(reader.whole(source), ops, out_dtype).contiguous()
        writer.put("tensor", finite(bias, merged, _MERGED_HINT))
        return
    if not source.shape:
        writer.put("tensor", reader.whole(source).to(out_dtype).contiguous())
        return
    if not planned.updates:  # a dtype change only
        for start, stop in row_blocks(source.shape[0], _block_rows(planned, block_bytes)):
            writer.put("tensor", reader.rows(source, start, stop).to(out_dtype).contiguous())
        return
    ops = _ops(planned.updates, reader, device)

    def emit(block: torch.Tensor) -> None:
        writer.put("tensor", finite(block, merged, _MERGED_HINT))

    needs_whole = any(op.magnitude is not None and op.fan_in_fan_out for op in ops)
    if needs_whole:
        weight = reader.whole(source)
        merge_blocks(weight, ops, out_dtype, block_rows=weight.shape[0], device=device, emit=emit)
        return
    for start, stop in row_blocks(source.shape[0], _block_rows(planned, block_bytes)):
        rows = reader.rows(source, start, stop)
        merge_blocks(
            rows,
            [_shifted(op, start) for op in ops],
            out_dtype,
            block_rows=stop - start,
            device=device,
            emit=emit,
        )


def _write_adapter_tensor(
    planned: PlannedTensor, reader: _TensorReader, writer: _Writer, block_bytes: int
) -> None:
    """A tensor the adapter replaces whole (modules_to_save, resized embeddings): its values
    are the adapter's, so they are read and checked block by block instead of copied."""
    source, out = planned.source, planned.out
    out_dtype = torch_dtype(out.dtype)
    what = reader.adapter_what(source.name)
    if not source.shape:
        writer.put("tensor", finite(reader.whole(source), what, _TRAINING_HINT).to(out_dtype))
        return
    for start, stop in row_blocks(source.shape[0], _block_rows(planned, block_bytes)):
        rows = finite(reader.rows(source, start, stop), what, _TRAINING_HINT)
        writer.put("tensor", rows.to(out_dtype).contiguous())


def _shifted(op: LoraOp, start: int) -> LoraOp:
    """``op`` restricted to weight rows from ``start`` on (so a row block can be merged as if
    it were a whole weight)."""
    if op.kind == "embedding" or op.fan_in_fan_out:
        a = op.a[:, start:]
        return LoraOp(op.kind, a, op.b, op.scaling, op.fan_in_fan_out, op.magnitude, op.bias)
    magnitude = op.magnitude[start:] if op.magnitude is not None else None
    return LoraOp(op.kind, op.a, op.b[start:], op.scaling, op.fan_in_fan_out, magnitude, op.bias)


def shard_files(plan: MergePlan, out_dir: Path, max_shard_bytes: int) -> list[Path]:
    """The shard files :func:`execute` will write for ``plan`` (known before it starts, so
    they can be hashed while they are written)."""
    shards = plan_shards([t.out for t in plan.tensors], max_shard_bytes)
    return [out_dir / name for name in shard_names(len(shards))]


def execute(
    plan: MergePlan,
    adapter: Adapter,
    out_dir: Path,
    *,
    device: torch.device,
    max_shard_bytes: int,
    block_bytes: int,
    progress: Callable[[int, int], None] | None = None,
) -> ExecuteResult:
    """Write every tensor of ``plan`` into safetensors shards in ``out_dir``."""
    import torch

    shards = plan_shards([t.out for t in plan.tensors], max_shard_bytes)
    shard_writer = ShardWriter(out_dir, shards, METADATA)
    writer = _Writer(shard_writer)
    writer.start()
    done_bytes = 0
    # One compute thread: the blocks are small and memory-bound, the writer and the input
    # hashing want the other cores, and OpenMP's spinning threads lose badly to a busy core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with ExitStack() as stack:
        stack.callback(torch.set_num_threads, threads)
        reader = _TensorReader(_Files(stack), adapter)
        try:
            for planned in plan.tensors:
                _write_tensor(planned, reader, writer, device=device, block_bytes=block_bytes)
                done_bytes += planned.out.nbytes
                if progress:
                    progress(done_bytes, plan.total_bytes)
            writer.finish()
            shard_writer.close()
        except BaseException:
            writer.commands.put(None)
            writer.join()
            shard_writer.abort()
            raise
    index = write_index(out_dir, shards)
    return ExecuteResult(
        shard_files=tuple(out_dir / n for n in shard_writer.names),
        index_file=index,
        total_bytes=plan.total_bytes,
        merged_tensors=sum(1 for t in plan.tensors if t.updates),
    )


def make_comparer(adapter: Adapter) -> Callable[[Source, Source], bool]:
    """A function comparing two sources' values, reading them block by block."""

    def compare(a: Source, b: Source) -> bool:
        import torch

        if a.shape != b.shape:
            return False
        with ExitStack() as stack:
            reader = _TensorReader(_Files(stack), adapter)
            rows = a.shape[0] if a.shape else 0
            row_elems = 1
            for dim in a.shape[1:]:
                row_elems *= dim
            step = max(1, (32 << 20) // max(1, row_elems * 4))
            for start in range(0, max(rows, 1), step):
                stop = min(rows, start + step)
                x, y = reader.rows(a, start, stop), reader.rows(b, start, stop)
                if a.dtype == b.dtype:
                    if not torch.equal(x.view(torch.uint8), y.view(torch.uint8)):
                        return False
                elif not torch.equal(x.float(), y.float()):
                    return False
        return True

    return compare
