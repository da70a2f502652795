"""The Modelfile grammar, as Ollama's parser reads it: quoting values and reading them back.

Facts (Ollama's parser/parser.go, 0.33 line):

* A line is ``COMMAND value``; the command word is case-insensitive; ``#`` starts a comment
  only at the start of a line.
* A value is bare (to the end of the line), ``"..."`` or ``\"\"\"...\"\"\"``. There is no
  escaping at all. A value ends at the first newline where the text read so far, trimmed of
  surrounding whitespace, is complete: bare, or opened and closed by the same quote kind.
* Characters that are not printable (Go's ``strconv.IsPrint``) are silently dropped, except
  space, tab and newlines inside a value.

:func:`quote` picks, for each value, a representation that provably reads back to the same
text, and refuses text that has none; :func:`parse` is a port of Ollama's state machine, used
to double-check every written file and to read a Modelfile back for the REST API.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from persona_export.errors import InvalidInputError

COMMANDS = (
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
)
TRIPLE = '"""'
# A double-quoted value ends early at a newline whose preceding text (whitespace trimmed)
# ends with a quote.
_QUOTE_BEFORE_NEWLINE = re.compile(r'"[ \t\n]*\n')
# What Go's strings.TrimSpace removes (Unicode White_Space); only space, tab and newline can
# occur in a value we write, the rest are refused as non-printable.
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"


class ModelfileSyntaxError(InvalidInputError):
    """A Modelfile (or a value meant for one) that Ollama's parser cannot read as intended."""


def is_printable(char: str) -> bool:
    """Go's ``strconv.IsPrint``: letters, marks, numbers, punctuation, symbols, ASCII space."""
    return char == " " or unicodedata.category(char)[0] in "LMNPS"


def unwritable_char(text: str) -> str | None:
    """The first character Ollama's parser would drop from a value (not tab or newline)."""
    for char in text:
        if char not in "\t\n" and not is_printable(char):
            return char
    return None


def _describe(char: str) -> str:
    name = unicodedata.name(char, "control character")
    return f"U+{ord(char):04X} ({name.lower()})"


def quote(text: str, *, what: str = "value", block: bool = False) -> str:
    """``text`` written as a Modelfile value that Ollama reads back unchanged.

    Bare when it is one line without surrounding whitespace, ``"..."`` when it is one line,
    ``\"\"\"...\"\"\"`` otherwise (always, with ``block``, when the text allows it); text
    containing ``\"\"\"`` is written with single quotes when that provably reads back.
    Raises :class:`ModelfileSyntaxError` for text with a carriage return or a character
    Ollama would drop, and for text no quoting can carry.
    """
    if "\r" in text:
        raise ModelfileSyntaxError(
            f"{what} contains a carriage return (CR); Modelfiles are written with LF line ends",
            "save the text with Unix (LF) line ends",
        )
    if (bad := unwritable_char(text)) is not None:
        raise ModelfileSyntaxError(
            f"{what} contains {_describe(bad)}, which Ollama's Modelfile parser silently drops",
            "remove that character (or replace it with a printable one)",
        )
    single_line = "\n" not in text
    if block and TRIPLE not in text:
        return f"{TRIPLE}{text}{TRIPLE}"
    if single_line and text and text == text.strip(" \t") and not text.startswith('"'):
        return text
    if single_line and not text.startswith('"'):
        return f'"{text}"'
    if TRIPLE not in text:
        return f"{TRIPLE}{text}{TRIPLE}"
    if not text.startswith('"') and not _QUOTE_BEFORE_NEWLINE.search(text):
        return f'"{text}"'
    raise ModelfileSyntaxError(
        f'{what} contains """ and cannot be written into a Modelfile '
        "(Modelfile values have no escaping)",
        'remove the """ (or, if it must stay, keep it on a line that does not end with a quote '
        "and do not start the text with a quote)",
    )


@dataclass(frozen=True)
class Command:
    """One parsed Modelfile command: ``name`` is lower case (``model`` for FROM, the
    parameter name for PARAMETER), ``args`` the unquoted value."""

    name: str
    args: str


def _unquote(text: str) -> tuple[str, bool]:
    if text.startswith(TRIPLE):
        if len(text) >= 6 and text.endswith(TRIPLE):
            return text[3:-3], True
        return "", False
    if text.startswith('"'):
        if len(text) >= 2 and text.endswith('"'):
            return text[1:-1], True
        return "", False
    return text, True


def _alpha(char: str) -> bool:
    return "a" <= char <= "z" or "A" <= char <= "Z"


def parse(source: str) -> list[Command]:
    """Read a Modelfile the way Ollama's ``parser.ParseFile`` does; return its commands.

    Raises :class:`ModelfileSyntaxError` where Ollama would fail (unknown command, a command
    without a value, an unterminated quote, no FROM).
    """
    if source.startswith("\ufeff"):
        source = source[1:]
    nil, name, value, parameter, message, comment = range(6)
    state = nil
    buf: list[str] = []
    commands: list[Command] = []
    cmd_name = ""
    role = ""
    line = 1

    def fail(msg: str) -> ModelfileSyntaxError:
        return ModelfileSyntaxError(f"Modelfile line {line}: {msg}")

    for char in source:
        if char in "\r\n":
            line += 1
        # The state each character leads to (Ollama's parseRuneForState).
        keep = char
        if state == nil:
            if char == "#":
                nxt, keep = comment, ""
            elif char in " \t\r\n":
                nxt, keep = nil, ""
            else:
                nxt = name
        elif state == name:
            if _alpha(char):
                nxt = name
            elif char in " \t":
                nxt, keep = value, ""
            else:
                raise fail("command must be one of " + ", ".join(COMMANDS))
        elif state == value:
            nxt = nil if char in " \t\r\n" else value
        elif state in (parameter, message):
            if _alpha(char) or (state == parameter and ("0" <= char <= "9" or char == "_")):
                nxt = state
            elif char in " \t":
                nxt, keep = value, ""
            else:
                raise fail("unexpected character in a parameter name or message role")
        else:  # comment
            nxt, keep = (nil, "") if char in "\r\n" else (comment, "")

        if nxt != state:
            text = "".join(buf)
            if state == name:
                word = text.lower()
                if word not in COMMANDS:
                    raise fail("command must be one of " + ", ".join(COMMANDS))
                if word == "from":
                    cmd_name = "model"
                elif word == "parameter":
                    nxt = parameter
                elif word == "message":
                    nxt, cmd_name = message, word
                else:
                    cmd_name = word
            elif state == parameter:
                cmd_name = text
            elif state == message:
                if text not in ("system", "user", "assistant"):
                    raise fail('message role must be one of "system", "user", or "assistant"')
                role = text
            elif state == value:
                unquoted, complete = _unquote(text.strip(_GO_SPACE))
                if not complete or char in " \t":
                    buf.append(char)
                    continue
                if role:
                    unquoted, role = f"{role}: {unquoted}", ""
                commands.append(Command(cmd_name, unquoted))
            buf = []
            state = nxt
        if keep and is_printable(keep):
            buf.append(keep)

    if state == value:
        unquoted, complete = _unquote("".join(buf).strip(_GO_SPACE))
        if not complete:
            raise ModelfileSyntaxError("Modelfile ends inside a quoted value")
        if role:
            unquoted = f"{role}: {unquoted}"
        commands.append(Command(cmd_name, unquoted))
    elif state not in (nil, comment):
        raise ModelfileSyntaxError("Modelfile ends in the middle of a command")
    if not any(c.name == "model" for c in commands):
        raise ModelfileSyntaxError("Modelfile has no FROM line")
    return commands
