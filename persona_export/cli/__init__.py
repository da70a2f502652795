"""The command line: one module per command, each a thin layer over its stage, registered
here in one explicit list (pipeline order, which is also the order of ``--help``).

Every command also takes ``--json``, ``--quiet`` and ``-v/--verbose``, added when it is
registered (cli/_output.py). Heavy libraries (torch, transformers, peft) are imported inside
the stages, so `--help` stays fast.
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
    status,
    vendor,
    verify,
)
from persona_export.cli._app import app, main
from persona_export.cli._output import with_output_options

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
    status,
    demo,
)
for _module in COMMANDS:
    _name = _module.__name__.rsplit(".", 1)[1]
    app.command(name=_name, epilog=_module.EPILOG)(
        with_output_options(_name, getattr(_module, _name))
    )

# The top-level help ends with one example per command, taken from each command's epilog.
app.info.epilog = "Examples:\n\n" + "\n\n".join(
    "  " + module.EPILOG.removeprefix("Example: ").strip() for module in COMMANDS
)

__all__ = ["COMMANDS", "app", "main"]
