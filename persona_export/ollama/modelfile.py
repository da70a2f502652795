"""One Modelfile type: what a Modelfile says, read as Ollama reads it and written so that it
reads back exactly.

:class:`Modelfile` is the single shape every part of the tool uses: the modelfile stage
builds one and renders it (``templates/Modelfile.j2``, then the text is parsed back and must
equal the value rendered), ``verify`` and the demo read one for its GGUF, TEMPLATE, SYSTEM
and stops, and ``ollama`` turns one into the REST create request.

Reading follows Ollama (``parser.ParseFile`` then ``Modelfile.CreateRequest``, 0.33 line):
TEMPLATE, SYSTEM, FROM and every parameter but ``stop`` keep their last value; ``stop`` and
LICENSE accumulate in order; parameters are typed as Ollama types them (integers, float32
range numbers, Go's booleans) and an unknown or removed parameter is an error; deprecated
parameters, which Ollama ignores with a warning, and the commands this type does not model
(ADAPTER, DRAFT, REQUIRES, RENDERER, PARSER) are kept in ``other`` as parsed.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from persona_export.errors import (
    InputNotFoundError,
    InvalidInputError,
    UnsupportedError,
    UsageError,
)
from persona_export.layout import DEFAULT_QUANT
from persona_export.ollama.modelfile_syntax import (
    Command,
    ModelfileSyntaxError,
    parse,
    quote,
    unwritable_char,
)
from persona_export.ollama.rules import (
    DEPRECATED_PARAMETERS,
    PARAMETER_TYPES,
    check_parameters,
    parameter_text,
)

#: Commands the type keeps as parsed, without modelling them.
UNMODELED_COMMANDS = ("adapter", "draft", "requires", "renderer", "parser")
#: Commands that name files of their own (Ollama would upload them too).
FILE_COMMANDS = ("adapter", "draft")
MESSAGE_ROLES = ("system", "user", "assistant")
REGENERATE_HINT = "regenerate it: persona-export modelfile --persona NAME"

# Go's strconv.ParseInt(s, 10, 64) and ParseBool; ParseFloat(s, 32) for decimal text.
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_GO_BOOLS = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}
_FLOAT32_MAX = 3.4028234663852886e38

Value = int | float | bool


@dataclass(frozen=True)
class Message:
    """One ``MESSAGE role content`` line."""

    role: str
    content: str


@dataclass(frozen=True)
class Header:
    """What the comment lines at the top of a written Modelfile say (not read back)."""

    persona: str = "persona"
    display_name: str = "persona"
    model_name: str = "persona"
    quant: str = DEFAULT_QUANT
    format_title: str = "custom"
    template_source: str = "--template"


def typed_parameter(name: str, text: str) -> Value:
    """``text`` as Ollama types the value of parameter ``name`` (not ``stop``)."""
    kind = PARAMETER_TYPES.get(name)
    if kind is None or name == "stop":
        raise ModelfileSyntaxError(f"Modelfile: unknown parameter {name!r}", REGENERATE_HINT)
    bad = ModelfileSyntaxError(
        f"Modelfile: invalid value {text!r} for parameter {name}", REGENERATE_HINT
    )
    if kind is bool:
        if text not in _GO_BOOLS:
            raise bad
        return _GO_BOOLS[text]
    if kind is int:
        if not _INT.fullmatch(text) or not -(2**63) <= int(text) < 2**63:
            raise bad
        return int(text)
    if not _FLOAT.fullmatch(text) and text.lower().lstrip("+-") not in ("inf", "infinity", "nan"):
        raise bad
    number = float(text)
    if math.isfinite(number) and abs(number) > _FLOAT32_MAX:
        raise bad
    return number


@dataclass(frozen=True)
class Modelfile:
    """What a Modelfile says.

    ``from_`` is FROM as written (a path, relative to the Modelfile's folder, or a model
    name); ``parameters`` holds every PARAMETER but ``stop`` (typed), ``stops`` the stop
    strings in order. ``path`` is where it was read from (not part of its value).
    """

    from_: str
    template: str | None = None
    system: str | None = None
    parameters: Mapping[str, Value] = field(default_factory=dict)
    stops: tuple[str, ...] = ()
    licenses: tuple[str, ...] = ()
    messages: tuple[Message, ...] = ()
    other: tuple[Command, ...] = ()
    path: Path | None = field(default=None, compare=False)

    # ----------------------------------------------------------------------------------
    # Building and reading
    # ----------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        from_: str,
        template: str | None,
        *,
        stops: tuple[str, ...] = (),
        parameters: Mapping[str, Any] | None = None,
        system: str | None = None,
        license: str | None = None,
        where: str = "parameters",
    ) -> Modelfile:
        """A Modelfile from plain values: ``parameters`` are checked against Ollama's names
        and types (:class:`UsageError` naming ``where``; deprecated ones are left out), a
        ``stop`` among them goes after ``stops``, and repeated stops are written once."""
        checked, extra_stops, _warnings = check_parameters(parameters or {}, where=where)
        return cls(
            from_=from_,
            template=template,
            system=system,
            parameters=checked,
            stops=tuple(dict.fromkeys([*stops, *extra_stops])),
            licenses=() if license is None else (license,),
        )

    @classmethod
    def parse(cls, text: str, *, path: Path | None = None) -> Modelfile:
        """Read ``text`` as Ollama does. Raises :class:`ModelfileSyntaxError` where Ollama
        would fail (grammar, no FROM, an unknown parameter or a value of the wrong type)."""
        values: dict[str, str] = {}
        parameters: dict[str, Value] = {}
        stops: list[str] = []
        licenses: list[str] = []
        messages: list[Message] = []
        other: list[Command] = []
        for command in parse(text):
            name, args = command.name, command.args
            if name in ("model", "template", "system"):
                values[name] = args  # the last one counts
            elif name == "license":
                licenses.append(args)
            elif name == "message":
                role, _, content = args.partition(": ")
                messages.append(Message(role, content))
            elif name == "stop":
                stops.append(args)
            elif name in UNMODELED_COMMANDS or name in DEPRECATED_PARAMETERS:
                other.append(command)
            else:
                parameters[name] = typed_parameter(name, args)
        return cls(
            from_=values["model"],
            template=values.get("template"),
            system=values.get("system"),
            parameters=parameters,
            stops=tuple(stops),
            licenses=tuple(licenses),
            messages=tuple(messages),
            other=tuple(other),
            path=path,
        )

    @classmethod
    def read(cls, path: Path, data: bytes | None = None) -> Modelfile:
        """:meth:`parse` the file at ``path`` (or ``data``, its bytes as the caller already
        read them, so that what is parsed is what the caller checked); errors name the
        file."""
        try:
            if data is None:
                data = path.read_bytes()
            text = data.decode("utf-8")
        except FileNotFoundError as exc:
            raise InputNotFoundError(
                f"no Modelfile at {path}",
                "write it first: persona-export modelfile --persona NAME",
            ) from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"cannot read {path}: {exc}", REGENERATE_HINT) from exc
        try:
            return cls.parse(text, path=path)
        except ModelfileSyntaxError as exc:
            raise ModelfileSyntaxError(
                f"{path}: {exc.message}", exc.hint or REGENERATE_HINT
            ) from exc

    # ----------------------------------------------------------------------------------
    # Views
    # ----------------------------------------------------------------------------------

    @property
    def gguf(self) -> Path:
        """The file FROM names: ``~`` expanded, relative to the Modelfile's folder (to the
        current folder for a Modelfile parsed from text), as Ollama resolves it."""
        source = Path(os.path.expanduser(self.from_))
        if source.is_absolute() or self.path is None:
            return source
        return self.path.parent / source

    def require_gguf(self) -> Path:
        """:attr:`gguf`, which must be an existing file (:class:`InputNotFoundError`)."""
        gguf = self.gguf
        if not gguf.is_file():
            raise InputNotFoundError(
                f"{self.path or 'the Modelfile'}: FROM names {self.from_}, which does not exist",
                "re-run: persona-export modelfile --persona NAME",
            )
        return gguf

    def all_parameters(self) -> dict[str, Any]:
        """The parameters as Ollama's create request carries them: ``stop`` as a list."""
        return {**({"stop": list(self.stops)} if self.stops else {}), **self.parameters}

    def create_request(self, model: str, files: Mapping[str, str]) -> dict[str, Any]:
        """The JSON body of ``POST /api/create`` that registers this Modelfile as ``model``
        (Ollama's ``CreateRequest``); ``files`` maps FROM's file name to its blob digest.
        Raises :class:`UnsupportedError` for a command the REST path cannot carry."""
        for command in self.other:
            if command.name in UNMODELED_COMMANDS:
                raise UnsupportedError(
                    f"{self.path or 'the Modelfile'}: {command.name.upper()} is not supported "
                    "by the REST path",
                    "install the ollama CLI, or remove the line",
                )
        body: dict[str, Any] = {"model": model, "files": dict(files)}
        optional = {
            "template": self.template,
            "system": self.system,
            "parameters": self.all_parameters() or None,
            "license": list(self.licenses) or None,
            "messages": [{"role": m.role, "content": m.content} for m in self.messages] or None,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        body["stream"] = False
        return body

    # ----------------------------------------------------------------------------------
    # Writing
    # ----------------------------------------------------------------------------------

    def render(self, header: Header | None = None) -> str:
        """The Modelfile text (``templates/Modelfile.j2``), checked by reading it back the
        way Ollama does: it must say exactly this value.

        Raises :class:`UsageError` for text no Modelfile quoting can carry (a CR, a
        character Ollama drops, an unquotable \"\"\") and for commands the template does not
        write (``other``).
        """
        text = _render(self, header or Header())
        back = Modelfile.parse(text)
        if back != self:
            differ = [
                f.name for f in fields(self) if getattr(back, f.name) != getattr(self, f.name)
            ]
            raise InvalidInputError(
                "internal error: the rendered Modelfile does not read back as written "
                f"({', '.join(differ)} differ)",
                "this is a bug in persona-export or templates/Modelfile.j2; please report it",
            )
        return text


def license_text(path: Path) -> tuple[str | None, list[str]]:
    """The text of license file ``path`` as a LICENSE value can hold it (LF line ends, no
    BOM, without the characters Ollama would drop anyway, e.g. form feeds in old license
    texts), and warnings; None (with a warning) when it cannot be read or written."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return None, [f"cannot read {path} ({exc}); the Modelfile has no LICENSE"]
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    warnings: list[str] = []
    if unwritable_char(text) is not None:
        text = "".join(c for c in text if unwritable_char(c) is None)
        warnings.append(f"{path}: characters Ollama cannot store were left out of LICENSE")
    try:
        quote(text, what="LICENSE")
    except ModelfileSyntaxError as exc:
        return None, [*warnings, f"{exc.message}; the Modelfile has no LICENSE"]
    return text, warnings


def _comment(text: Any) -> str:
    return " ".join(str(text).split())


def _render(modelfile: Modelfile, header: Header) -> str:
    import jinja2

    from persona_export import __version__
    from persona_export.resources import templates_dir

    if modelfile.other:
        names = ", ".join(sorted({c.name.upper() for c in modelfile.other}))
        raise UsageError(f"persona-export does not write Modelfiles with {names}")
    try:
        context = {
            "persona": header.persona,
            "display_name": header.display_name,
            "model_name": header.model_name,
            "version": __version__,
            "quant": header.quant,
            "format_title": header.format_title,
            "template_source": header.template_source,
            "from_value": quote(modelfile.from_, what="FROM"),
            "template_value": (
                None
                if modelfile.template is None
                else quote(modelfile.template, what="TEMPLATE", block=True)
            ),
            "stop_values": [quote(s, what=f"stop {s!r}") for s in modelfile.stops],
            "parameter_values": [
                (name, quote(parameter_text(name, value), what=f"parameter {name}"))
                for name, value in modelfile.parameters.items()
            ],
            "system_value": (
                None
                if modelfile.system is None
                else quote(modelfile.system, what="the SYSTEM prompt", block=True)
            ),
            "license_values": [quote(t, what="LICENSE", block=True) for t in modelfile.licenses],
            "message_values": [
                (m.role, quote(m.content, what=f"the {m.role} MESSAGE", block=True))
                for m in modelfile.messages
            ],
        }
    except ModelfileSyntaxError as exc:
        raise UsageError(exc.message, exc.hint) from exc
    if any(m.role not in MESSAGE_ROLES for m in modelfile.messages):
        raise UsageError("MESSAGE roles are system, user or assistant")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # a Modelfile, not HTML
    )
    env.filters["comment"] = _comment
    return env.get_template("Modelfile.j2").render(**context)
