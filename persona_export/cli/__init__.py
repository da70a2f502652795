"""The command line: one module per command, each a thin layer over its stage, registered
here in one explicit list (pipeline order, which is also the order of ``--help``).

Heavy libraries (torch, transformers, peft) are imported inside the stages, so `--help`
stays fast.
"""

from persona_export.cli import (
    card,
    demo,
    doctor,
    export,
    gguf,
    merge,
    modelfile,
    ollama,
    push,
    quantize,
    vendor,
    verify,
)
from persona_export.cli._app import app, main

COMMANDS = (
    vendor,
    doctor,
    merge,
    gguf,
    quantize,
    modelfile,
    ollama,
    verify,
    card,
    export,
    push,
    demo,
)
for _module in COMMANDS:
    _name = _module.__name__.rsplit(".", 1)[1]
    app.command(name=_name, epilog=_module.EPILOG)(getattr(_module, _name))

# The top-level help ends with one example per command, taken from each command's epilog.
app.info.epilog = "Examples:\n\n" + "\n\n".join(
    "  " + module.EPILOG.removeprefix("Example: ").strip() for module in COMMANDS
)

__all__ = ["COMMANDS", "app", "main"]
