"""A strict Modelfile parser for the tests, written apart from persona_export's own.

It follows Ollama's grammar (Ollama's parser/parser.go, 0.33 line; summed up below) but is built
differently (regular expressions over the whole text instead of a character state machine)
so the two can check each other, and it is stricter than Ollama where a Modelfile we write
should never go: it refuses a BOM, CR line ends, control characters (which Ollama would
drop silently), a separator of more than one space, removed and unknown parameters, values
of the wrong type and a FROM that is not a path.

* Commands are case-insensitive; ``#`` starts a comment only as a line's first non-blank
  character.
* Values are bare (to the end of the line, surrounding blanks trimmed), ``"..."`` or
  ``\"\"\"...\"\"\"`` with no escaping: a quoted value ends at the first newline (or end of
  file) preceded, blanks aside, by the closing quote(s).
* ``PARAMETER stop`` accumulates; other repeated parameters: the last wins.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

INT_PARAMS = {
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "num_thread",
    "draft_num_predict",
    "num_keep",
    "seed",
    "num_predict",
    "top_k",
    "repeat_last_n",
}
FLOAT_PARAMS = {
    "top_p",
    "min_p",
    "typical_p",
    "temperature",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
}
BOOL_PARAMS = {"use_mmap"}
REMOVED = {"tfs_z", "numa", "num_gqa", "rope_frequency_base"}
DEPRECATED = {
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "penalize_newline",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "use_mlock",
}
COMMANDS = {
    "from",
    "parameter",
    "template",
    "system",
    "adapter",
    "license",
    "message",
    "requires",
    "draft",
    "renderer",
    "parser",
}
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_BOOLS = {"true": True, "True": True, "TRUE": True, "1": True, "t": True, "T": True}
_BOOLS |= {"false": False, "False": False, "FALSE": False, "0": False, "f": False, "F": False}


class ModelfileError(ValueError):
    """The text is not a Modelfile that Ollama reads as intended."""


@dataclass
class ParsedModelfile:
    """A Modelfile's meaning, as Ollama would build its create request."""

    from_: str = ""
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    licenses: list[str] = field(default_factory=list)
    messages: list[tuple[str, str]] = field(default_factory=list)
    adapter: str | None = None
    deprecated: list[str] = field(default_factory=list)
    commands: list[tuple[str, str]] = field(default_factory=list)

    @property
    def stops(self) -> list[str]:
        return list(self.parameters.get("stop", []))


def _check_characters(text: str) -> None:
    if text.startswith("\ufeff"):
        raise ModelfileError("starts with a byte order mark")
    if "\r" in text:
        raise ModelfileError("has a carriage return (CRLF line ends?)")
    for i, char in enumerate(text):
        if char in "\n\t ":
            continue
        if unicodedata.category(char)[0] not in "LMNPS":
            raise ModelfileError(f"character U+{ord(char):04X} at {i} would be dropped by Ollama")


def _value_end(text: str, start: int) -> tuple[str, int]:
    """Read the value starting at ``start``; return it and the index after its line."""
    if text.startswith('"""', start):
        close = re.compile(r'"""[ \t]*(\n|\Z)')
        match = close.search(text, start + 3)
        if match is None:
            raise ModelfileError(f'unterminated """ value starting at {start}')
        return text[start + 3 : match.start()], match.end()
    if text.startswith('"', start):
        close = re.compile(r'"[ \t]*(\n|\Z)')
        match = close.search(text, start + 1)
        if match is None:
            raise ModelfileError(f'unterminated " value starting at {start}')
        return text[start + 1 : match.start()], match.end()
    newline = text.find("\n", start)
    end = len(text) if newline < 0 else newline
    value = text[start:end].strip(" \t")
    if not value:
        raise ModelfileError(f"empty bare value at {start}")
    return value, end + 1


def _typed(name: str, text: str) -> Any:
    if name in INT_PARAMS:
        if not _INT.fullmatch(text):
            raise ModelfileError(f"parameter {name}: {text!r} is not an integer")
        return int(text)
    if name in FLOAT_PARAMS:
        if not _FLOAT.fullmatch(text) or not math.isfinite(float(text)):
            raise ModelfileError(f"parameter {name}: {text!r} is not a finite number")
        return float(text)
    if name in BOOL_PARAMS:
        if text not in _BOOLS:
            raise ModelfileError(f"parameter {name}: {text!r} is not a boolean")
        return _BOOLS[text]
    raise ModelfileError(f"unknown parameter {name!r}")


def parse_modelfile(text: str) -> ParsedModelfile:
    """Parse ``text`` strictly; raise :class:`ModelfileError` for anything doubtful."""
    _check_characters(text)
    result = ParsedModelfile()
    pos = 0
    command_re = re.compile(r"[ \t\n]*(?:(#)[^\n]*(?:\n|\Z)|([A-Za-z]+) )")
    while pos < len(text):
        if not text[pos:].strip(" \t\n"):
            break
        match = command_re.match(text, pos)
        if match is None:
            line = text.count("\n", 0, pos) + 1
            raise ModelfileError(f"line {line}: expected a command or a comment")
        if match.group(1):  # a comment line
            pos = match.end()
            continue
        word = match.group(2).lower()
        if word not in COMMANDS:
            raise ModelfileError(f"unknown command {match.group(2)!r}")
        pos = match.end()
        name = word
        if word == "parameter":
            param = re.compile(r"([A-Za-z0-9_]+) ").match(text, pos)
            if param is None:
                raise ModelfileError(f"PARAMETER without a name at {pos}")
            name = param.group(1)
            pos = param.end()
        elif word == "message":
            role = re.compile(r"(system|user|assistant) ").match(text, pos)
            if role is None:
                raise ModelfileError(f"MESSAGE role must be system, user or assistant at {pos}")
            name = f"message:{role.group(1)}"
            pos = role.end()
        if text.startswith((" ", "\t"), pos):
            raise ModelfileError(f"more than one blank after {word.upper()} at {pos}")
        value, pos = _value_end(text, pos)
        result.commands.append((name, value))
        _apply(result, word, name, value)
    if not result.from_:
        raise ModelfileError("no FROM line")
    return result


def _apply(result: ParsedModelfile, word: str, name: str, value: str) -> None:
    if word == "from":
        if not value.endswith(".gguf"):
            raise ModelfileError(f"FROM {value!r} is not a GGUF path")
        result.from_ = value
    elif word == "template":
        result.template = value
    elif word == "system":
        result.system = value
    elif word == "license":
        result.licenses.append(value)
    elif word == "adapter":
        result.adapter = value
    elif word == "message":
        result.messages.append((name.split(":", 1)[1], value))
    elif word == "parameter":
        if name in REMOVED:
            raise ModelfileError(f"parameter {name!r} was removed from Ollama")
        if name in DEPRECATED:
            result.deprecated.append(name)
        elif name == "stop":
            result.parameters.setdefault("stop", []).append(value)
        else:
            result.parameters[name] = _typed(name, value)
    else:
        raise ModelfileError(f"{word.upper()} is not expected in a persona-export Modelfile")
