"""Weights for the layer-streamed forward (:mod:`persona_export.verify.streaming`): a model
whose parameters hold no memory until a layer needs them, and the reads that fill them.

A *hollow* parameter is a CPU tensor of the right shape and dtype that is one scalar
broadcast to that shape (every stride 0): PEFT and transformers see an ordinary CPU model
(devices, dtypes and shapes as after ``from_pretrained``) while it costs nothing. Hollow
parameters are filled from the checkpoint's safetensors when their layer runs
(:meth:`WeightSource.fill`) and hollowed again afterwards, keeping the same ``Parameter``
objects (so ties and PEFT's references to base layers stay intact). Reads go through
:mod:`persona_export.merge.safetensors_io` (``pread`` into a fresh buffer): no file is
memory-mapped, so the process's resident memory is what it computes with, not pages of a
multi-GB checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_export.errors import UnsupportedError
from persona_export.merge.checkpoint import Checkpoint, read_checkpoint
from persona_export.merge.safetensors_io import TensorInfo, read_bytes_into
from persona_export.merge.tensors import torch_dtype

if TYPE_CHECKING:
    import torch
    from torch import nn


def hollow(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """A tensor of ``shape`` and ``dtype`` that holds one element (see the module docstring)."""
    import torch

    return torch.zeros((), dtype=dtype).expand(*shape)


def _glibc(function: str, *args: int) -> None:
    """Call glibc's malloc tuning ``function``; nothing where the C library is another."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        getattr(ctypes.CDLL(None), function)(*args)
    except (OSError, AttributeError):  # not glibc
        pass


def trim_heap() -> None:
    """Hand the freed heap back to the system (glibc keeps freed memory for reuse). Most of
    a layer-streamed run's memory is already returned when freed, each tensor of 1 MiB or
    more being its own mapping (:func:`fix_mmap_threshold`); trimming after each layer
    takes a little more off the peak: measured with bench/bench_verify.py (one layer at a
    time, float32, peak VmHWM), full-size Phi-4-mini 1.72-1.74 GiB with it and 1.77 GiB
    without, the same speed; on a small Phi-4-mini shape no difference (0.69-0.72 GiB)."""
    _glibc("malloc_trim", 0)


# glibc's mallopt parameter for the mmap threshold (malloc.h); setting it also stops the
# threshold's dynamic growth
_M_MMAP_THRESHOLD = -3
STREAMING_MMAP_THRESHOLD = 1 << 20


def fix_mmap_threshold(threshold: int = STREAMING_MMAP_THRESHOLD) -> None:
    """Serve every allocation of ``threshold`` bytes or more from its own mapping, handed back
    to the system when freed, for the rest of the process.

    glibc starts at 128 KiB and, each time a mapped block is freed, raises the threshold to
    that block's size (up to 32 MiB), so a layer's tensors below 32 MiB then come from the
    heap, which a stream of layers fragments faster than :func:`trim_heap` hands it back:
    measured (bench/bench_verify.py, one layer at a time, float32, peak VmHWM) on a small
    Phi-4-mini shape, 0.70 GiB with 4 layers and 0.82-0.89 GiB with 16, against 0.69 and
    0.71 GiB with the threshold fixed at 1 MiB, at the same speed; on the Llama-3-8B shape
    (32 layers), 3.20-3.24 GiB against 3.17 GiB."""
    _glibc("mallopt", _M_MMAP_THRESHOLD, threshold)


def is_hollow(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a :func:`hollow` one (several elements, all strides 0)."""
    return tensor.numel() > 1 and all(s == 0 for s in tensor.stride())


class NotStreamable(UnsupportedError):
    """The model has a parameter the checkpoint does not name: it cannot be streamed."""


@dataclass
class WeightSource:
    """The checkpoint of one model folder, read tensor by tensor (or row by row).

    ``names`` maps each hollow parameter (by ``id``) to its checkpoint tensor name; a
    parameter not in it holds real values (the adapter's, or filled for good).
    """

    checkpoint: Checkpoint
    dtype: torch.dtype
    names: dict[int, str] = dataclasses.field(default_factory=dict)
    _fds: dict[Path, int] = dataclasses.field(default_factory=dict)

    @classmethod
    def open(cls, folder: Path, dtype: torch.dtype) -> WeightSource:
        """The checkpoint in ``folder``, its files opened (reads may come from two threads:
        ``pread`` at an offset shares nothing)."""
        source = cls(read_checkpoint(folder), dtype)
        for path in source.checkpoint.shard_files:
            source._fd(path)
        return source

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _fd(self, path: Path) -> int:
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return self._fds[path]

    def info(self, name: str) -> TensorInfo:
        return self.checkpoint.tensors[name]

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows ``start:stop`` of tensor ``name`` (all of it by default) in ``dtype``."""
        import torch

        info = self.info(name)
        rows = info.shape[0] if info.shape else 1
        stop = rows if stop is None else stop
        row_bytes = info.nbytes // rows if rows else 0
        count = (stop - start) * row_bytes
        buffer = torch.empty(count, dtype=torch.uint8)
        part = dataclasses.replace(info, offset=info.offset + start * row_bytes, nbytes=count)
        read_bytes_into(part, buffer.numpy().data, self._fd(info.path))
        shape = (stop - start, *info.shape[1:]) if info.shape else ()
        stored = buffer.view(torch_dtype(info.dtype)).view(shape)
        return stored.to(self.dtype) if stored.dtype.is_floating_point else stored

    def gather(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` (any shape of row indices) of tensor ``name``, in ``dtype``."""
        import torch

        unique, inverse = torch.unique(ids, return_inverse=True)
        rows = torch.stack([self.read(name, int(i), int(i) + 1)[0] for i in unique.tolist()])
        return rows[inverse]

    def hollow_model(self, model: nn.Module) -> None:
        """Replace every parameter of ``model`` (built on the meta device) by a hollow one
        named after its checkpoint tensor (tied parameters stay one object)."""
        import torch
        from torch import nn

        replaced: dict[int, nn.Parameter] = {}
        for full_name, param in model.named_parameters(remove_duplicate=False):
            module_name, _, attr = full_name.rpartition(".")
            module = model.get_submodule(module_name)
            if id(param) not in replaced:
                new = nn.Parameter(hollow(param.shape, param.dtype), requires_grad=False)
                replaced[id(param)] = new
            new = replaced[id(param)]
            module._parameters[attr] = new
            name = self._checkpoint_name(full_name, model)
            if name is not None:
                self.names.setdefault(id(new), name)
        for param in replaced.values():
            if id(param) not in self.names:
                where = next(n for n, p in model.named_parameters() if p is param)
                raise NotStreamable(
                    f"the checkpoint in {self.checkpoint.folder} has no tensor for {where}",
                    "this architecture's checkpoint names differ from its modules",
                )
        for full_name, buffer in model.named_buffers():
            name = self._checkpoint_name(full_name, model)
            if name is not None:  # a persistent buffer: its saved value, as from_pretrained
                module_name, _, attr = full_name.rpartition(".")
                with torch.no_grad():
                    model.get_submodule(module_name)._buffers[attr] = self.read(name).to(
                        buffer.dtype
                    )

    def _checkpoint_name(self, name: str, model: nn.Module) -> str | None:
        tensors = self.checkpoint.tensors
        if name in tensors:
            return name
        prefix = getattr(model, "base_model_prefix", "")
        if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1 :] in tensors:
            return name[len(prefix) + 1 :]  # saved from the bare base model (GPT-2's h.0...)
        return None

    def load(self, params: Iterable[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The checkpoint values of each hollow parameter of ``params`` (nothing is changed:
        safe to run in another thread while the model computes)."""
        loaded = []
        for param in params:
            name = self.names.get(id(param))
            if name is not None and is_hollow(param):
                loaded.append((param, self.read(name).to(param.dtype)))
        return loaded

    @staticmethod
    def install(loaded: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """Give the parameters :meth:`load` read their values; returns them (for
        :meth:`empty`)."""
        filled = []
        for param, value in loaded:
            param.data = value
            filled.append(param)
        return filled

    def fill(self, params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
        """Give each hollow parameter of ``params`` its checkpoint values; returns those
        filled (for :meth:`empty`)."""
        return self.install(self.load(params))

    @staticmethod
    def empty(params: Iterable[torch.Tensor]) -> None:
        """Hollow ``params`` again (their memory is freed and handed back)."""
        for param in params:
            param.data = hollow(param.shape, param.dtype)
        trim_heap()

    @contextmanager
    def filled(self, module: nn.Module) -> Iterator[None]:
        """``module``'s hollow parameters filled for the duration."""
        params = self.fill(module.parameters())
        try:
            yield
        finally:
            self.empty(params)

    @contextmanager
    def real_when_loaded(self, model: nn.Module) -> Iterator[None]:
        """While loading a state dict into ``model``: a hollow parameter the state dict holds
        gets real (uninitialised) storage first, and is no longer read from the checkpoint."""
        import torch

        def before_load(
            module: nn.Module, state_dict: Mapping[str, Any], prefix: str, *_: Any
        ) -> None:
            for attr, param in module._parameters.items():
                if param is not None and prefix + attr in state_dict and is_hollow(param):
                    param.data = torch.empty(param.shape, dtype=param.dtype)
                    self.names.pop(id(param), None)

        handles = [m.register_load_state_dict_pre_hook(before_load) for m in model.modules()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
