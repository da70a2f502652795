"""The converter launcher's float32 -> float16 cast: bit for bit numpy's on every class of
value, lazily inside the vendored gguf-py, and left alone where gguf-py is not as expected."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from persona_export.llamacpp import convert_launcher as launcher
from persona_export.llamacpp import vendor


def bits(array: np.ndarray) -> np.ndarray:
    return np.asarray(array).view(np.uint16)


def f16_rounding_edges() -> np.ndarray:
    """Every float16 value, the float32 midpoints between neighbours (ties, which must go to
    even) and the float32 numbers just either side of each midpoint, plus the overflow and
    underflow edges."""
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = np.unique(every[np.isfinite(every)].astype(np.float32))
    mids = (finite[:-1].astype(np.float64) + finite[1:]) / 2
    mids32 = mids.astype(np.float32)
    assert np.array_equal(mids32.astype(np.float64), mids)  # exact in float32
    edges = np.array(
        [65504, 65519.996, 65520, 65536, 1e30, np.inf, -np.inf, 2.0**-24, 2.0**-25, 2.0**-26,
         3 * 2.0**-26, 0.0, -0.0, np.finfo(np.float32).tiny, np.finfo(np.float32).max],
        dtype=np.float32,
    )  # fmt: skip
    near = [np.nextafter(mids32, np.float32(np.inf)), np.nextafter(mids32, np.float32(-np.inf))]
    return np.concatenate([finite, mids32, *near, edges, -mids32])


def test_cast_is_numpys_on_every_rounding_edge() -> None:
    values = f16_rounding_edges()
    assert values.size > 300_000
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16)
    assert np.array_equal(bits(launcher.cast_f16(values)), bits(expected))


def test_cast_is_numpys_on_random_bit_patterns() -> None:
    patterns = np.random.default_rng(7).integers(0, 1 << 32, size=2_000_000, dtype=np.uint32)
    values = patterns.view(np.float32)
    values = values[~np.isnan(values)]
    values = values[: values.size // 2000 * 2000]
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16)
    got = launcher.cast_f16(values.reshape(1000, -1)[:, ::2])  # non-contiguous, 2-D
    assert got.shape == (1000, values.size // 2000)
    assert np.array_equal(bits(got), bits(expected.reshape(1000, -1)[:, ::2]))


def test_tensors_with_nan_keep_numpys_payloads() -> None:
    values = np.array([1.5, 0, 0], dtype=np.float32)
    values.view(np.uint32)[1:] = [0x7FC00001, 0xFFA01234]  # quiet and signalling NaNs
    assert np.array_equal(bits(launcher.cast_f16(values)), bits(values.astype(np.float16)))
    empty = np.zeros((0, 4), dtype=np.float32)
    assert launcher.cast_f16(empty).shape == (0, 4)


def test_other_dtypes_are_numpys_cast() -> None:
    """float64 rounds once to float16 (via float32 it could round twice); float16 passes
    through as numpy's copy=False does."""
    double = np.array([1 + 2.0**-11 + 2.0**-40, 0.1, -3e-6], dtype=np.float64)
    assert np.array_equal(bits(launcher.cast_f16(double)), bits(double.astype(np.float16)))
    assert launcher.cast_f16(double)[0] != double.astype(np.float32).astype(np.float16)[0]
    half = np.ones(3, dtype=np.float16)
    assert launcher.cast_f16(half) is half


@pytest.mark.llama
def test_vendored_gguf_py_casts_lazy_tensors_through_it(tmp_path: Path) -> None:
    """In the converter's own environment: installed, F16 goes through the launcher (lazily,
    as the converter's tensors are), other types through gguf-py's own code."""
    program = """
import numpy as np
from persona_export.llamacpp import convert_launcher as launcher
from gguf import quants
from gguf.constants import GGMLQuantizationType as Q
from gguf.lazy import LazyNumpyTensor
calls = []
real = launcher.cast_f16
launcher.cast_f16 = lambda a: (calls.append(a.shape), real(a))[1]
assert launcher.install() and not launcher.install()
data = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
lazy = quants.quantize(LazyNumpyTensor.from_eager(data), Q.F16)
assert calls == [], calls  # nothing computed before the writer asks
eager = LazyNumpyTensor.to_eager(lazy)
assert calls == [(64, 32)], calls
assert eager.dtype == np.float16 and np.array_equal(eager, data.astype(np.float16))
assert np.array_equal(quants.quantize(data, Q.F16), data.astype(np.float16))
q8 = quants.quantize(data, Q.Q8_0)
assert q8.dtype == np.uint8 and len(calls) == 2
print("ok", quants.__file__)
"""
    done = subprocess.run(
        [sys.executable, "-c", program],
        env={**os.environ, **vendor.converter_env()},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ")
    assert str(vendor.converter_env()["PYTHONPATH"]) in done.stdout  # the vendored gguf-py


def test_unexpected_gguf_py_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    package = types.ModuleType("gguf")
    quants = types.ModuleType("gguf.quants")
    constants = types.ModuleType("gguf.constants")
    lazy = types.ModuleType("gguf.lazy")

    def original(data: object, qtype: object) -> object:
        return data

    quants.quantize = original  # type: ignore[attr-defined]
    constants.GGMLQuantizationType = types.SimpleNamespace(F16=1)  # type: ignore[attr-defined]
    lazy.LazyNumpyTensor = type("LazyNumpyTensor", (), {})  # type: ignore[attr-defined]  # no _wrap_fn
    package.quants = quants  # type: ignore[attr-defined]
    for name, module in [
        ("gguf", package),
        ("gguf.quants", quants),
        ("gguf.constants", constants),
        ("gguf.lazy", lazy),
    ]:
        monkeypatch.setitem(sys.modules, name, module)
    assert launcher.install() is False
    assert quants.quantize is original  # type: ignore[attr-defined]


def test_runs_the_script_as_python_would(tmp_path: Path) -> None:
    """__main__, argv, the script's folder first on the path, its exit code."""
    (tmp_path / "helper_mod.py").write_text("VALUE = 41\n")
    script = tmp_path / "tool.py"
    script.write_text(
        "import sys, helper_mod\n"
        "print(__name__, sys.argv[1:], helper_mod.VALUE + 1, sys.path[0])\n"
        "sys.exit(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "persona_export.llamacpp.convert_launcher", str(script), "a", "-b"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path.parent,
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout == f"__main__ ['a', '-b'] 42 {tmp_path}\n"
