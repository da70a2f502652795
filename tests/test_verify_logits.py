"""verify/logits.py frees each Hugging Face model before it returns: verify runs the merged
model and base + adapter one after the other, and neither may still be in memory when the
next loads (nor while an error from one of them propagates)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from persona_export.verify import logits as verify_logits
from tests import modelkit as mk

PROMPTS = [[1, 5, 42, 7], [3, 9]]


@pytest.fixture(scope="module")
def adapter(llama_spm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mk.make_adapter(llama_spm, tmp_path_factory.mktemp("logits") / "adapter")


@pytest.fixture(autouse=True)
def _no_automatic_gc() -> Any:
    """Only the code under test may collect: a collection that happens to run meanwhile
    must not make a leak pass."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def _watch(monkeypatch: pytest.MonkeyPatch, owner: Any, refs: list[weakref.ref[Any]]) -> None:
    """Keep a weak reference to every model ``owner.from_pretrained`` returns."""
    original = owner.from_pretrained

    def from_pretrained(*args: Any, **kwargs: Any) -> Any:
        model = original(*args, **kwargs)
        refs.append(weakref.ref(model))
        return model

    monkeypatch.setattr(owner, "from_pretrained", from_pretrained)


def _models_watched(monkeypatch: pytest.MonkeyPatch) -> list[weakref.ref[Any]]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    refs: list[weakref.ref[Any]] = []
    _watch(monkeypatch, AutoModelForCausalLM, refs)
    _watch(monkeypatch, PeftModel, refs)
    return refs


def _calls(llama_spm: Path, adapter: Path) -> dict[str, Callable[[], list[Any]]]:
    return {
        "hf": lambda: verify_logits.hf_logits(llama_spm, PROMPTS),
        "peft": lambda: verify_logits.peft_logits(llama_spm, adapter, PROMPTS),
    }


@pytest.mark.parametrize(("engine", "models"), [("hf", 1), ("peft", 2)])
def test_models_are_freed_when_the_logits_return(
    llama_spm: Path, adapter: Path, monkeypatch: pytest.MonkeyPatch, engine: str, models: int
) -> None:
    refs = _models_watched(monkeypatch)
    logits = _calls(llama_spm, adapter)[engine]()
    assert len(refs) == models
    assert [ref() for ref in refs] == [None] * models
    assert [a.shape[0] for a in logits] == [len(p) for p in PROMPTS]
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in logits)


class _Broken(Exception):
    pass


@pytest.mark.parametrize(("engine", "models"), [("hf", 1), ("peft", 2)])
def test_models_are_freed_while_an_error_propagates(
    llama_spm: Path, adapter: Path, monkeypatch: pytest.MonkeyPatch, engine: str, models: int
) -> None:
    refs = _models_watched(monkeypatch)

    def broken_forward(model: Any, prompts: Any) -> Any:
        raise _Broken("forward failed")

    monkeypatch.setattr(verify_logits, "_forward", broken_forward)
    with pytest.raises(_Broken) as failure:
        _calls(llama_spm, adapter)[engine]()
    assert failure.value.__traceback__ is not None  # still held here, with its frames
    assert len(refs) == models
    assert [ref() for ref in refs] == [None] * models
