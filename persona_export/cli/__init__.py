"""The command line: one module per command, each a thin layer over its stage.

Commands register themselves on import, in pipeline order. Heavy libraries (torch,
transformers, peft) are imported inside the stages, so `--help` stays fast.
"""

from persona_export.cli import vendor as _vendor  # noqa: F401
from persona_export.cli import doctor as _doctor  # noqa: F401
from persona_export.cli import merge as _merge  # noqa: F401
from persona_export.cli import gguf as _gguf  # noqa: F401
from persona_export.cli import quantize as _quantize  # noqa: F401
from persona_export.cli import modelfile as _modelfile  # noqa: F401
from persona_export.cli import ollama as _ollama  # noqa: F401
from persona_export.cli import verify as _verify  # noqa: F401
from persona_export.cli import export as _export  # noqa: F401
from persona_export.cli import demo as _demo  # noqa: F401
from persona_export.cli._app import app, main

# The top-level help ends with one example per command, taken from each command's epilog.
app.info.epilog = "Examples:\n\n" + "\n\n".join(
    "  " + (command.epilog or "").removeprefix("Example: ").strip()
    for command in app.registered_commands
)

__all__ = ["app", "main"]
