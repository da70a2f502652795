"""Run the vendored ``convert_hf_to_gguf.py`` with a faster float32 -> float16 cast.

    python -m persona_export.llamacpp.convert_launcher SCRIPT [converter arguments...]

For ``--outtype f16`` the converter turns every tensor into float32 and then casts it with
numpy's ``astype(np.float16)``, which runs one element at a time on one core: 18.5 of the
47 s it takes to convert the 3.8 B Phi-4-mini-shaped model here (cProfile). The launcher
replaces only that cast, in ``gguf.quants.quantize`` of the vendored gguf-py, by torch's
(vectorised F16C code on every core; both round to nearest even), then runs the converter
script unchanged as ``__main__``. The GGUF it writes is byte-identical (tests compare the two
casts on every class of float32 value and the stage's output with a plain converter run;
bench/bench_gguf.py checks the full-size file). Tensors holding a NaN are cast by numpy, so
NaN payloads stay exactly as numpy writes them. Where the vendored gguf-py does not have the
functions this relies on, nothing is replaced and the converter runs as it is.

``PERSONA_EXPORT_PLAIN_CONVERTER=1`` makes the gguf stage run the converter without this.
"""

from __future__ import annotations

import os
import runpy
import sys
from typing import Any

PLAIN_ENV = "PERSONA_EXPORT_PLAIN_CONVERTER"
# The first line the launcher prints when the faster cast is in place (the gguf stage records
# what happened, not what was asked).
INSTALLED_MARK = "persona-export launcher: float16 cast through torch"


def cast_f16(array: Any) -> Any:
    """``array.astype(np.float16, copy=False)``, bit for bit; by torch when ``array`` is
    float32 without a NaN (other dtypes, e.g. float64 that must be rounded once, go to
    numpy)."""
    import numpy as np
    import torch

    if not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.size == 0:
        return np.asarray(array).astype(np.float16, copy=False)
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if bool(torch.isnan(tensor).any()):
        return array.astype(np.float16)
    return tensor.to(torch.float16).numpy()


def install() -> bool:
    """Route the converter's F16 cast through :func:`cast_f16`; False (and nothing changed)
    when the imported gguf-py lacks ``quants.quantize`` or ``LazyNumpyTensor._wrap_fn``."""
    try:
        import numpy as np
        from gguf import quants
        from gguf.constants import GGMLQuantizationType
        from gguf.lazy import LazyNumpyTensor
    except ImportError:
        return False
    original = getattr(quants, "quantize", None)
    wrap = getattr(LazyNumpyTensor, "_wrap_fn", None)
    if original is None or wrap is None or getattr(original, "_persona_export", False):
        return False
    f16 = GGMLQuantizationType.F16

    def quantize(data: Any, qtype: Any) -> Any:
        if qtype == f16:
            if isinstance(data, LazyNumpyTensor):
                return LazyNumpyTensor._wrap_fn(cast_f16, meta_noop=np.float16)(data)
            if isinstance(data, np.ndarray):
                return cast_f16(data)
        return original(data, qtype)

    quantize._persona_export = True  # type: ignore[attr-defined]
    quants.quantize = quantize
    return True


def main(argv: list[str]) -> None:
    """Run the script ``argv[0]`` with arguments ``argv[1:]`` as plain ``python`` would."""
    if not argv:
        sys.exit("usage: python -m persona_export.llamacpp.convert_launcher SCRIPT [ARGS...]")
    script = os.path.abspath(argv[0])
    sys.argv = [script, *argv[1:]]
    # `python -m` put the working directory first on the path; `python SCRIPT` puts the
    # script's folder there (the converter imports its `conversion` package from it)
    sys.path[0] = os.path.dirname(script)
    if install():
        print(INSTALLED_MARK, file=sys.stderr, flush=True)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
