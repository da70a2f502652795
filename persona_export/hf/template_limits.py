"""Bounds on templates that come from outside: their size, and the time and memory their
rendering may take.

A chat template is code that arrives with a model (tokenizer_config.json, chat_template.jinja,
a GGUF's ``tokenizer.chat_template``) and a ``--template`` file is text a user names; without
bounds a nested loop rendered for over a minute and a 200 MB template file took 2.6 GB.

* Size: at most :data:`MAX_TEMPLATE_BYTES` (1 MiB; real chat templates are 1-20 kB), checked
  before a file is read (its size on disk) and before a template is compiled.
* Time: Jinja2 has no timeout, so rendering runs under :func:`time_limit`, a trace function
  (``sys.settrace``) that checks a deadline on every line the template's compiled Python code
  (and the Jinja runtime it calls) executes, and raises :class:`TemplateLimitError` there,
  which unwinds the render. A trace function was chosen over the sandbox's ``call`` hook
  (a loop that calls nothing, ``{% for i in range(n) %}x{% endfor %}``, never reaches it)
  and over a subprocess (spawning one per render costs more than the render; forking a
  process with torch's threads is unsafe). It costs ~10x on rendering (milliseconds for real
  templates) and suspends a coverage tracer for that time.
* Memory: one operation implemented in C cannot be interrupted by the trace function, so the
  sandbox refuses the operations that make huge values in one step: ``*`` repeating a
  string or list beyond :data:`MAX_RESULT` items, ``**`` with a result beyond
  :data:`MAX_POWER_BITS` bits, and any call of a built-in with an integer argument beyond
  :data:`MAX_RESULT` (``'x'.ljust(10**9)``), format widths over 999 999 (``str.format``,
  ``%``, the ``format`` filter) and the padding filters ``center``/``indent`` beyond
  :data:`MAX_RESULT`; ``range`` is already bounded by the sandbox (100 000 items).
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
import types
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from persona_export.errors import InputNotFoundError, InvalidInputError

MAX_TEMPLATE_BYTES = 1 << 20
RENDER_SECONDS = 5.0
MAX_RESULT = 1 << 20
MAX_POWER_BITS = 1 << 16
_BUILTINS = (
    types.BuiltinFunctionType,
    types.BuiltinMethodType,
    types.MethodWrapperType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
)


class TemplateLimitError(Exception):
    """A template went beyond a bound while it was rendered (time or size)."""


def size_problem(size: int) -> str | None:
    """Why a template of ``size`` bytes is refused (None: it is not)."""
    if size <= MAX_TEMPLATE_BYTES:
        return None
    return (
        f"is {size / 1e6:.1f} MB; templates are at most {MAX_TEMPLATE_BYTES // 1024} KiB "
        "(real chat templates are a few kB)"
    )


def read_template_file(path: Path, what: str, hint: str) -> str:
    """The text of template file ``path`` (``what``: how to name it), refused before it is
    read when it is larger than :data:`MAX_TEMPLATE_BYTES`."""
    try:
        size = path.stat().st_size
        problem = size_problem(size)
        if problem:
            raise InvalidInputError(f"{what} {path} {problem}", hint)
        with open(path, encoding="utf-8") as fh:
            text = fh.read(MAX_TEMPLATE_BYTES + 1)  # the file may have grown since the stat
    except (OSError, UnicodeDecodeError) as exc:
        raise InputNotFoundError(f"cannot read {what} {path}: {exc}", hint) from exc
    problem = size_problem(len(text.encode("utf-8")))
    if problem:
        raise InvalidInputError(f"{what} {path} {problem}", hint)
    return text


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Run the ``with`` block's Python code under a deadline: past it, the next line it
    executes raises :class:`TemplateLimitError` (see the module docstring)."""
    deadline = time.monotonic() + seconds
    previous = sys.gettrace()

    def trace(frame: Any, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise TemplateLimitError(f"{what} took longer than {seconds:g} s to render")
        return trace

    sys.settrace(trace)
    try:
        yield
    finally:
        sys.settrace(previous)


def _repeat_size(left: Any, right: Any) -> int:
    for seq, count in ((left, right), (right, left)):
        if isinstance(seq, (str, bytes, list, tuple)) and isinstance(count, int):
            return len(seq) * count
    return 0


@lru_cache(maxsize=1)
def bounded_sandbox_class() -> type:
    """jinja2's ImmutableSandboxedEnvironment with the memory bounds of the module docstring
    (built on first use: jinja2 is imported only when a template is rendered)."""
    import operator

    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "%"})

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            for name in ("format", "center", "indent"):  # filters that pad or format in C
                self.filters[name] = _checked_filter(self.filters[name])

        def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
            if op == "*" and _repeat_size(left, right) > MAX_RESULT:
                raise TemplateLimitError(f"'*' would make more than {MAX_RESULT} items")
            if op == "**" and isinstance(left, int) and isinstance(right, int):
                if abs(left) > 1 and abs(left).bit_length() * right > MAX_POWER_BITS:
                    raise TemplateLimitError(f"'**' would make a number over {MAX_POWER_BITS} bits")
                return operator.pow(left, right)
            if op == "%" and isinstance(left, str):
                _check_format(left, right)
            return super().call_binop(context, op, left, right)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            if isinstance(__obj, _BUILTINS):
                _check_ints((*args, *kwargs.values()))
            return super().call(__context, __obj, *args, **kwargs)

        def wrap_str_format(self, value: Any) -> Any:
            wrapped = super().wrap_str_format(value)  # str.format, sandboxed by jinja2
            if wrapped is None:
                return None
            text = str(value.__self__)

            def checked(*args: Any, **kwargs: Any) -> Any:
                if _WIDE_BRACE_FORMAT.search(text):
                    raise TemplateLimitError("a format width or precision over 999999")
                _check_ints((*args, *kwargs.values()))
                return wrapped(*args, **kwargs)

            return checked

    return BoundedSandbox


_WIDE_BRACE_FORMAT = re.compile(r"\{[^{}]*:[^{}]*\d{7}")
_WIDE_PERCENT_FORMAT = re.compile(r"%[-+ #0]*(\d{7}|\d*\.\d{7})")


def _check_ints(values: Any) -> None:
    if any(isinstance(v, int) and abs(v) > MAX_RESULT for v in values):
        raise TemplateLimitError(f"a call with an argument over {MAX_RESULT}")


def _check_format(text: str, args: Any) -> None:
    if _WIDE_PERCENT_FORMAT.search(text):
        raise TemplateLimitError("a format width or precision over 999999")
    _check_ints(args if isinstance(args, tuple) else (args,))


def _checked_filter(func: Any) -> Any:
    def checked(*args: Any, **kwargs: Any) -> Any:
        _check_ints((*args, *kwargs.values()))
        for value in args:
            if isinstance(value, str) and "%" in value:
                _check_format(value, ())
        return func(*args, **kwargs)

    for attr in ("jinja_pass_arg",):  # keep how Jinja passes context/eval_ctx to it
        if hasattr(func, attr):
            setattr(checked, attr, getattr(func, attr))
    return checked
