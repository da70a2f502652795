"""Logits of a Hugging Face model (and of base + adapter through PEFT) one decoder layer at a
time, so that memory does not grow with the model.

The model is built from its config on the meta device and every parameter made hollow
(:mod:`persona_export.verify.weights`); with an adapter, PEFT's own ``PeftModel`` is built on
it, so the LoRA layers that run are PEFT's. Then, for all prompts together:

1. *prelude*: the model's own ``forward`` runs with every decoder layer replaced by a stub
   that records what it is called with (the hidden state entering layer 0, the attention
   mask, position embeddings, ... exactly as the model computes them, per layer) and passes
   the hidden state on; the output layer is a stub that stops the forward;
2. *layers*: each decoder layer in turn gets its weights from the checkpoint, runs on every
   prompt's hidden state with the arguments recorded for it, and is emptied again; the next
   layer's weights are read (and converted) in a thread meanwhile, as ``from_pretrained``
   loads in threads, so at most two layers are in memory;
3. *final norm*: the forward runs again with stubs that hand back the last layer's output;
   the output layer's stub keeps what it is given;
4. *output layer*: computed a block of vocabulary rows at a time, each block read once for
   all prompts (the next one in a thread meanwhile);
5. the forward runs a last time with an output layer that returns those logits, so that
   whatever a model does after its head (none of Llama, Phi-3, Qwen2 and GPT-2 does
   anything) still happens.

The input embedding reads only the rows of the prompts' tokens and the output layer one
block of rows at a time, so neither is ever whole in memory. Each prompt runs alone (batch
of one), as the whole-model path does: every product of the decoder layers sees the same
operands in the same shapes, so the logits equal the whole model's (tests/
test_verify_streaming.py says how exactly). Modules this cannot split (an embedding with a
LoRA of its own, a subclass of ``nn.Embedding``) are filled whole.

accelerate's CPU/disk offload (``cpu_offload``, ``disk_offload``) would also bound memory,
but it moves weights per forward call, i.e. per prompt: every prompt would read the whole
checkpoint again. Running layer-major reads each weight once for all prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from persona_export.verify.memory import HEAD_BLOCK_BYTES
from persona_export.verify.metrics import Array
from persona_export.verify.weights import (
    NotStreamable,
    WeightSource,
    fix_mmap_threshold,
    is_hollow,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

TokenIds = Sequence[int]

# init_lora_weights values with which PEFT rewrites the base weights when it loads an adapter
_REWRITES_BASE = ("pissa", "corda", "olora", "loftq", "lora_ga", "mica")


class _Stop(Exception):
    """Raised by the output-layer stub: the prelude has what it needs."""


@dataclass
class _Call:
    """What one decoder layer is called with for one prompt, the hidden state apart (passed
    first, or as ``hidden_states=``, as the model passed it)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    by_name: bool

    def __call__(self, layer: Any, hidden: Any) -> Any:
        if self.by_name:
            return layer(*self.args, hidden_states=hidden, **self.kwargs)
        return layer(hidden, *self.args, **self.kwargs)


def _split(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, _Call]:
    """(hidden state, the rest of the call) of a decoder layer's arguments."""
    if args:
        return args[0], _Call(args[1:], kwargs, False)
    rest = dict(kwargs)
    return rest.pop("hidden_states"), _Call((), rest, True)


@dataclass
class _Prompt:
    ids: Any  # [1, n] long tensor
    hidden: Any = None  # the hidden state between layers
    calls: list[_Call] = field(default_factory=list)


class _Recorder:
    """Decoder-layer stub of the prelude: records its call, passes the hidden state on."""

    def __init__(self, prompt: _Prompt, first: bool) -> None:
        self.prompt = prompt
        self.first = first

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        hidden, call = _split(args, kwargs)
        if self.first:
            self.prompt.hidden = hidden
        self.prompt.calls.append(call)
        return hidden


class _Replay:
    """Decoder-layer stub of the head pass: the last one returns the computed hidden state."""

    def __init__(self, result: Any | None) -> None:
        self.result = result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        hidden, _ = _split(args, kwargs)
        return hidden if self.result is None else self.result


def _stub_module(call: Callable[..., Any]) -> nn.Module:
    from torch import nn

    class Stub(nn.Module):
        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return call(*args, **kwargs)

    return Stub()


class _RowEmbedding:
    """An input embedding that reads only the rows of the tokens asked for."""

    def __init__(self, source: WeightSource, weight: Any) -> None:
        self.source, self.weight = source, weight

    def __call__(self, ids: Any) -> Any:
        name = self.source.names.get(id(self.weight))
        if name is not None and is_hollow(self.weight):
            return self.source.gather(name, ids)
        return self.weight[ids]


class _BlockHead:
    """An output layer (``nn.Linear``) computed a block of rows (vocabulary entries) at a
    time, each block read once for every prompt."""

    def __init__(self, source: WeightSource, linear: Any) -> None:
        self.source, self.linear = source, linear

    def _rows(self, param: Any, start: int, stop: int) -> Any:
        name = self.source.names.get(id(param))
        if name is not None and is_hollow(param):
            return self.source.read(name, start, stop)
        return param[start:stop]

    def _block(self, start: int, stop: int) -> tuple[Any, Any]:
        weight, bias = self.linear.weight, self.linear.bias
        return self._rows(weight, start, stop), None if bias is None else self._rows(
            bias, start, stop
        )

    def __call__(self, hiddens: Sequence[Any]) -> list[Any]:
        import torch
        import torch.nn.functional as F

        rows, width = self.linear.weight.shape
        step = max(1, HEAD_BLOCK_BYTES // (width * self.linear.weight.element_size()))
        blocks = [(start, min(rows, start + step)) for start in range(0, rows, step)]
        outs = [torch.empty((*h.shape[:-1], rows), dtype=h.dtype) for h in hiddens]
        # the next block is read while this one is computed
        for (start, stop), (w, b) in zip(blocks, _ahead(self._block, blocks), strict=True):
            for hidden, out in zip(hiddens, outs, strict=True):
                out[..., start:stop] = F.linear(hidden, w, b)
        return outs


def _ahead(load: Callable[..., Any], jobs: Sequence[tuple[Any, ...]]) -> Iterator[Any]:
    """``load(*job)`` for each job in order, the next one running in a thread while the
    caller works on this one (one result ahead: at most two in memory)."""
    with ThreadPoolExecutor(1, thread_name_prefix="verify-weights") as pool:
        pending = pool.submit(load, *jobs[0]) if jobs else None
        for k in range(len(jobs)):
            assert pending is not None
            done = pending.result()
            pending = pool.submit(load, *jobs[k + 1]) if k + 1 < len(jobs) else None
            yield done
            del done


class _Capture:
    """Output-layer stub: keeps what it is given and stops the forward."""

    def __init__(self) -> None:
        self.seen: Any = None

    def __call__(self, hidden: Any) -> Any:
        self.seen = hidden
        raise _Stop


def _decoder_layers(model: nn.Module, count: int) -> tuple[str, nn.ModuleList]:
    """The ModuleList of the ``count`` decoder layers (``model.layers``, ``transformer.h``)."""
    from torch import nn

    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == count
    ]
    if len(found) != 1:
        raise NotStreamable(
            f"cannot tell which module list holds the {count} decoder layers",
            "this architecture is not supported by the layer-streamed verify",
        )
    return found[0]


def _module_path(root: nn.Module, target: nn.Module) -> str:
    for name, module in root.named_modules():
        if module is target:
            return name
    raise NotStreamable("the model's embedding is not one of its modules")


def _unwrap(module: nn.Module) -> nn.Module:
    """The module that computes: the active copy of a PEFT ModulesToSaveWrapper, else itself."""
    copies = getattr(module, "modules_to_save", None)
    active = getattr(module, "active_adapters", None)
    if copies is not None and active:
        return copies[active[0]]
    return module


@dataclass
class _Model:
    """The model being run (a transformers model or a PeftModel around one) and its parts."""

    runner: nn.Module
    core: nn.Module  # the transformers model
    source: WeightSource
    layers: nn.ModuleList
    embed_path: str
    head_path: str


def _build(model_dir: Path, adapter_dir: Path | None, dtype: torch.dtype) -> _Model:
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    source = WeightSource.open(model_dir, dtype)
    config = AutoConfig.from_pretrained(model_dir)
    with init_empty_weights():  # parameters on meta, buffers (rotary tables) computed
        core = AutoModelForCausalLM.from_config(config, dtype=dtype)
    core.tie_weights()  # as from_pretrained does (from_config leaves the output layer untied)
    if adapter_dir is not None:
        _resize_for_adapter(core, adapter_dir)
    source.hollow_model(core)
    runner: nn.Module = core
    if adapter_dir is not None:
        runner = _peft_model(core, adapter_dir, source)
    runner.eval()
    count = config.get_text_config().num_hidden_layers
    _, layers = _decoder_layers(core, count)
    embed_path = _module_path(core, core.get_input_embeddings())
    head = core.get_output_embeddings()
    if head is None:
        raise NotStreamable(f"{model_dir} has no output layer (not a causal LM head)")
    return _Model(runner, core, source, layers, embed_path, _module_path(core, head))


def _resize_for_adapter(core: Any, adapter_dir: Path) -> None:
    from persona_export.verify.logits import adapter_embedding_rows

    rows = adapter_embedding_rows(adapter_dir)
    if rows is not None and rows != core.get_input_embeddings().weight.shape[0]:
        # added tokens: as the whole-model path does before PEFT (values come from the adapter)
        core.resize_token_embeddings(rows, mean_resizing=False)


def _peft_model(core: nn.Module, adapter_dir: Path, source: WeightSource) -> nn.Module:
    """PEFT's PeftModel around the hollow ``core``, with the adapter's weights loaded."""
    from peft import PeftConfig, PeftModel

    config = PeftConfig.from_pretrained(str(adapter_dir))
    init = getattr(config, "init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_REWRITES_BASE):
        # PEFT computes these from the base weights when it loads the adapter: only a whole
        # base model gives them
        raise NotStreamable(
            f"{adapter_dir}: init_lora_weights={init!r} makes PEFT rewrite the base weights "
            "as it loads the adapter"
        )
    # A base tensor the adapter replaces whole (resized embeddings) is loaded by copying into
    # the parameter, which keeps ties: it gets real storage just before.
    with source.real_when_loaded(core):
        return PeftModel.from_pretrained(core, str(adapter_dir), is_trainable=False)


def _swap(root: nn.Module, path: str, module: nn.Module) -> nn.Module:
    parent, _, attr = path.rpartition(".")
    owner = root.get_submodule(parent) if parent else root
    old = getattr(owner, attr)
    setattr(owner, attr, module)
    return old


def _edge_modules(model: _Model) -> tuple[nn.Module, Callable[[Sequence[Any]], list[Any]]]:
    """A stand-in for the input embedding, and the output layer as a function of all the
    prompts' final hidden states (see the module docstring)."""
    from torch import nn

    embed = _unwrap(model.core.get_submodule(model.embed_path))
    head = _unwrap(model.core.get_submodule(model.head_path))
    if type(embed) is nn.Embedding:
        embed_stub = _stub_module(_RowEmbedding(model.source, embed.weight))
    else:  # a LoRA on the embedding, a scaled embedding...: the module itself, filled
        model.source.fill(embed.parameters())
        embed_stub = embed
    if type(head) is nn.Linear:
        return embed_stub, _BlockHead(model.source, head)
    model.source.fill(head.parameters())
    return embed_stub, lambda hiddens: [head(h) for h in hiddens]


def _forward(model: _Model, item: _Prompt, stubs: Sequence[Any], head: Any) -> Any:
    """The model's own forward on ``item`` with its decoder layers replaced by ``stubs``
    and its output layer by ``head``; None when ``head`` stops it."""
    for i, stub in enumerate(stubs):
        model.layers[i] = _stub_module(stub)
    _swap(model.core, model.head_path, _stub_module(head))
    try:
        return model.runner(input_ids=item.ids, use_cache=False)
    except _Stop:
        return None


def _replays(count: int, last: Any | None = None) -> list[_Replay]:
    return [_Replay(last if i == count - 1 else None) for i in range(count)]


def _final_hidden(model: _Model, item: _Prompt) -> Any:
    """What the output layer gets for ``item``: the last layer's output through the final
    norm (and whatever else the model does before its head)."""
    capture = _Capture()
    _forward(model, item, _replays(len(model.layers), item.hidden), capture)
    return capture.seen


def _run(model: _Model, prompts: Sequence[TokenIds]) -> list[Array]:
    import torch

    core, layers = model.core, model.layers
    count = len(layers)
    originals = list(layers)
    head_module = core.get_submodule(model.head_path)
    embed, head = _edge_modules(model)
    embed_module = _swap(core, model.embed_path, embed)
    _swap(core, model.head_path, _stub_module(_raise_stop))
    for i, stub in enumerate(_replays(count)):
        layers[i] = _stub_module(stub)
    # what is left outside the layers and the edges is small: norms, position tables
    model.source.fill(core.parameters())
    items = [_Prompt(torch.tensor([list(ids)], dtype=torch.long)) for ids in prompts]
    try:
        with torch.inference_mode():
            for item in items:  # 1. prelude: what each layer is called with
                recorders = [_Recorder(item, first=i == 0) for i in range(count)]
                _forward(model, item, recorders, _raise_stop)
            jobs = [(list(layer.parameters()),) for layer in originals]
            loaded = _ahead(model.source.load, jobs)  # the next layer read meanwhile
            for i, (layer, values) in enumerate(zip(originals, loaded, strict=True)):  # 2.
                params = model.source.install(values)
                del values
                try:
                    for item in items:
                        item.hidden = item.calls[i](layer, item.hidden)
                finally:
                    model.source.empty(params)
            finals = [_final_hidden(model, item) for item in items]  # 3. final norm
            for item in items:
                item.calls.clear()
                item.hidden = None
            logits = head(finals)  # 4. the output layer, a block of rows at a time
            del finals
            out = []
            for item, given in zip(items, logits, strict=True):  # 5. what follows the head
                done = _forward(model, item, _replays(count), _Given(given))
                out.append(np.asarray(done.logits[0].float(), dtype=np.float32))
            return out
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
        _swap(core, model.embed_path, embed_module)
        _swap(core, model.head_path, head_module)


class _Given:
    """Output-layer stub of the last pass: returns the logits computed block by block."""

    def __init__(self, logits: Any) -> None:
        self.logits = logits

    def __call__(self, hidden: Any) -> Any:
        return self.logits


def _raise_stop(*args: Any, **kwargs: Any) -> Any:
    raise _Stop


def streamed_logits(
    model_dir: Path,
    prompts: Sequence[TokenIds],
    *,
    adapter_dir: Path | None = None,
    dtype: str = "float32",
) -> list[Array]:
    """Next-token logits at every position of each prompt (a list of float32 arrays,
    positions x vocabulary) of the model in ``model_dir`` -- with ``adapter_dir``, of that
    model with the PEFT adapter applied unmerged -- computed in ``dtype`` one decoder layer
    at a time. Raises :class:`~persona_export.verify.weights.NotStreamable` for a model whose
    parameters its checkpoint does not name (the caller may load it whole instead)."""
    import torch

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    fix_mmap_threshold()
    model = _build(model_dir, adapter_dir, torch_dtype[dtype])
    try:
        return _run(model, prompts)
    finally:
        model.source.close()
