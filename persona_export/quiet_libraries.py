"""Keep the libraries we call from talking over the tool, for the length of one command.

transformers, PEFT, huggingface_hub, torch and accelerate print progress bars (``Loading
weights: 100%|███| 272/272``), deprecation warnings the user cannot act on
(``FutureWarning: is_gradient_checkpointing is deprecated``) and notes about the model
config (``rope_parameters['original_max_position_embeddings']``). None of it is about the
user's input in a way they can act on; what is, the stages say in their own words through
:mod:`persona_export.console`. So by default, while a command runs:

* Python warnings are ignored: persona-export itself never uses :mod:`warnings` (it warns
  through ``console.warn``), so every warning raised during a command is a library's;
* the libraries' loggers are set to ERROR, their progress bars off, through their own
  switches (``transformers.utils.logging``, ``huggingface_hub.utils``) when they are
  already imported, else through the environment variables they read when first imported
  (``TRANSFORMERS_VERBOSITY``, ``HF_HUB_DISABLE_PROGRESS_BARS``, ``TQDM_DISABLE``), so
  that nothing heavy is imported just to silence it.

Everything is put back when the command ends (tests run many commands in one process),
except what a library first imported during the command read from the environment at its
import (huggingface_hub's and tqdm's switch for their bars). ``--verbose`` skips all of
this: the libraries then speak as they would on their own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Mapping

# Read by the libraries when they are first imported.
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}
# Loggers of the libraries we call (stdlib logging, by name).
LIBRARY_LOGGERS = (
    "transformers",
    "peft",
    "huggingface_hub",
    "accelerate",
    "torch",
    "safetensors",
    "tokenizers",
    "sentencepiece",
    "gguf",
    "httpx",
    "httpcore",
)


# While a command runs: the variables set here, with the value each had before (None: unset),
# so that the programs the command starts get the environment as it was (child_env).
_set_here: dict[str, str | None] = {}


def child_env(env: Mapping[str, str] | None) -> dict[str, str] | None:
    """The environment for a child program: ``env`` (None: this process's), without the
    variables :func:`quiet_libraries` set (each as it was before). None when there is
    nothing to take out, which lets the child inherit as usual."""
    if not _set_here:
        return None if env is None else dict(env)
    found = dict(os.environ if env is None else env)
    for name, before in _set_here.items():
        if found.get(name) != QUIET_ENV[name]:
            continue  # the caller chose its own value
        if before is None:
            found.pop(name, None)
        else:
            found[name] = before
    return found


def _transformers_bars(enabled: bool | None) -> bool | None:
    """Set transformers' progress bars on or off (None: leave them); return the previous
    setting (None when transformers is not imported)."""
    module = sys.modules.get("transformers.utils.logging")
    if module is None:
        return None
    before = bool(module.is_progress_bar_enabled())
    if enabled is True:
        module.enable_progress_bar()
    elif enabled is False:
        module.disable_progress_bar()
    return before


def _hub_bars(enabled: bool | None) -> bool | None:
    """The same for huggingface_hub's progress bars."""
    module = sys.modules.get("huggingface_hub.utils")
    if module is None:
        return None
    before = not module.are_progress_bars_disabled()
    if enabled is True:
        module.enable_progress_bars()
    elif enabled is False:
        module.disable_progress_bars()
    return before


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence the libraries (module docstring) until the block ends, then restore them."""
    saved_env = {name: os.environ.get(name) for name in QUIET_ENV}
    loggers = {name: logging.getLogger(name) for name in LIBRARY_LOGGERS}
    saved_levels = {name: logger.level for name, logger in loggers.items()}
    bars_before = (_transformers_bars(False), _hub_bars(False))
    os.environ.update(QUIET_ENV)
    _set_here.update(saved_env)
    for logger in loggers.values():
        logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            _set_here.clear()
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            for name, logger in loggers.items():
                logger.setLevel(saved_levels[name])
            # Give a library imported during the command the setting it would have had (on,
            # unless the user's environment said off). huggingface_hub and tqdm read the
            # environment once, at import: theirs stay off for the rest of the process (the
            # command line runs one command per process), and huggingface_hub's warning that
            # it cannot turn them on is one of those this block keeps quiet.
            default_on = saved_env["HF_HUB_DISABLE_PROGRESS_BARS"] in (None, "", "0")
            transformers_before, hub_before = bars_before
            _transformers_bars(default_on if transformers_before is None else transformers_before)
            _hub_bars(default_on if hub_before is None else hub_before)
