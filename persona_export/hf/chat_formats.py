"""Chat formats (data in ``templates/formats/``) and their detection from a chat template.

A format file (TOML) holds the Ollama TEMPLATE (Go text/template) for one chat format, its
stop strings, and what the model's own Hugging Face chat template renders for a placeholder
conversation. Detection renders the model's template (Jinja2 in a sandbox, as transformers
does) for the same placeholder conversation, with and without a system message, and compares:
a model's format is told by what its template *does*, never by its name.

A format whose model family calls tools also has a ``[tools]`` table: a TEMPLATE that renders
Ollama's ``.Tools``, the assistant's ``.ToolCalls`` and ``tool`` results, how the family's
chat template takes tool definitions (``via``: ``tools``, apply_chat_template's argument, or
``system``, a JSON string in the system message's ``tools`` key as Phi-4-mini's does), the
tag Ollama's tool-call parser derives from it (``call_tag``, checked by the tests) and what the
family's template renders for a probe tool conversation (``detect``). Whether a model gets it
is decided per model (:mod:`persona_export.hf.chat_tools`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from persona_export.errors import InvalidInputError, UnsupportedError
from persona_export.hf import template_limits
from persona_export.hf.template_limits import (
    TemplateLimitError,
    bounded_sandbox_class,
    size_problem,
    time_limit,
)
from persona_export.resources import templates_dir

SYSTEM_TEXT = "SYSTEM_TEXT"
USER_ONE = "USER_ONE"
ASSISTANT_ONE = "ASSISTANT_ONE"
USER_TWO = "USER_TWO"
#: The placeholder conversation detection renders (after an optional system message).
PLACEHOLDER_TURNS: tuple[dict[str, str], ...] = (
    {"role": "user", "content": USER_ONE},
    {"role": "assistant", "content": ASSISTANT_ONE},
    {"role": "user", "content": USER_TWO},
)
#: How a chat template takes tool definitions (see the module docstring).
TOOLS_VIA = ("tools", "system")
TEMPLATE_HINT = (
    "pass --template FILE with an Ollama (Go text/template) TEMPLATE for this model, and "
    "--stop for its end-of-turn strings; or add a format file to templates/formats/"
)


@dataclass(frozen=True)
class ChatFormat:
    """One chat format: its Ollama TEMPLATE, stop strings and detection renderings."""

    name: str
    title: str
    template: str
    stop: tuple[str, ...]
    system_note: str
    with_system: str
    without_system: str
    source: Path
    tool_template: str | None = None
    tools_via: str = "tools"
    tool_call_tag: str | None = None
    tool_detect: str | None = None


def _require_str(data: Mapping[str, Any], key: str, where: Path) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise InvalidInputError(
            f"{where}: {key!r} must be a string", "see templates/formats/phi4mini.toml"
        )
    return value


def load_format(path: Path) -> ChatFormat:
    """Read and check one format file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise InvalidInputError(f"cannot read chat format {path}: {exc}") from exc
    detect = data.get("detect")
    if not isinstance(detect, dict):
        raise InvalidInputError(f"{path}: missing [detect] table", "see phi4mini.toml")
    stop = data.get("stop", [])
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise InvalidInputError(f"{path}: 'stop' must be a list of non-empty strings")
    with_system = _require_str(detect, "with_system", path)
    if with_system.count(SYSTEM_TEXT) != 1:
        raise InvalidInputError(f"{path}: detect.with_system must contain {SYSTEM_TEXT} once")
    tools = data.get("tools", {})
    if not isinstance(tools, dict) or tools.get("via", "tools") not in TOOLS_VIA:
        raise InvalidInputError(
            f"{path}: [tools] needs template, call_tag, detect and via ({' or '.join(TOOLS_VIA)})"
        )
    return ChatFormat(
        name=_require_str(data, "name", path),
        title=_require_str(data, "title", path),
        template=_require_str(data, "template", path),
        stop=tuple(stop),
        system_note=str(data.get("system_note", "")),
        with_system=with_system,
        without_system=_require_str(detect, "without_system", path),
        source=path,
        tool_template=_require_str(tools, "template", path) if tools else None,
        tools_via=str(tools.get("via", "tools")),
        tool_call_tag=_require_str(tools, "call_tag", path) if tools else None,
        tool_detect=_require_str(tools, "detect", path) if tools else None,
    )


def load_formats(directory: Path | None = None) -> list[ChatFormat]:
    """Every format in ``directory`` (default ``templates/formats``), sorted by name."""
    directory = directory or templates_dir() / "formats"
    formats = [load_format(p) for p in sorted(directory.glob("*.toml"))]
    names = [f.name for f in formats]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"{directory}: two chat formats share a name: {sorted(names)}")
    return formats


class TemplateRefusedError(Exception):
    """A chat template called ``raise_exception``: it refuses the conversation."""


def render_chat_template(
    chat_template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    special_tokens: Mapping[str, str],
    add_generation_prompt: bool = True,
    seconds: float | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """Render a Hugging Face chat template as transformers does: a sandboxed Jinja2
    environment with trim_blocks/lstrip_blocks, ``raise_exception``, ``strftime_now``,
    ``tojson`` and the tokenizer's special tokens as variables; ``tools`` as
    apply_chat_template's argument of that name; within the bounds of
    :mod:`persona_export.hf.template_limits` (size, ``seconds`` or its ``RENDER_SECONDS``,
    memory).

    Raises :class:`TemplateRefusedError` when the template refuses the conversation
    (``raise_exception``), ``jinja2.TemplateSyntaxError`` when it is not valid Jinja,
    :class:`TemplateLimitError` when it is too large or goes beyond a bound.
    """
    import json
    from datetime import datetime

    import jinja2
    from jinja2.ext import Extension

    problem = size_problem(len(chat_template.encode("utf-8", errors="replace")))
    if problem:
        raise TemplateLimitError(f"the template {problem}")

    class GenerationTag(Extension):
        # transformers' {% generation %} marks assistant text; it renders its body unchanged.
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body).set_lineno(lineno)

    def raise_exception(message: str) -> None:
        raise TemplateRefusedError(message)

    def tojson(
        value: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=indent,
            separators=separators,
            sort_keys=sort_keys,
        )

    env = bounded_sandbox_class()(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[GenerationTag, "jinja2.ext.loopcontrols"],
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    with time_limit(seconds or template_limits.RENDER_SECONDS, "the chat template"):
        compiled = env.from_string(chat_template)
        text: str = compiled.render(
            messages=[dict(m) for m in messages],
            tools=[dict(t) for t in tools] if tools is not None else None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **special_tokens,
        )
    return text


@dataclass(frozen=True)
class Detection:
    """What detection found: the format, and how the model's template differs in detail.

    ``default_system``: the system prompt the model's template adds when the conversation
    has none (None when it adds none). ``emits_bos``: the template writes the BOS token at
    the start itself. ``system_refused``: the template raises on a system message.
    """

    format: ChatFormat
    default_system: str | None
    emits_bos: bool
    system_refused: bool


def _render_or_none(
    chat_template: str, messages: Sequence[Mapping[str, str]], special_tokens: Mapping[str, str]
) -> str | None:
    try:
        return render_chat_template(chat_template, messages, special_tokens=special_tokens)
    except TemplateRefusedError:
        return None


def _without_bos(text: str | None, bos: str) -> tuple[str | None, bool]:
    if text is not None and bos and text.startswith(bos):
        return text[len(bos) :], True
    return text, False


def _default_system(fmt: ChatFormat, rendered: str) -> str | None:
    """The system prompt that makes ``fmt``'s with-system rendering equal ``rendered``."""
    prefix, suffix = fmt.with_system.split(SYSTEM_TEXT)
    if len(rendered) <= len(prefix) + len(suffix):
        return None
    if not (rendered.startswith(prefix) and rendered.endswith(suffix)):
        return None
    candidate = rendered[len(prefix) : len(rendered) - len(suffix)]
    return candidate if fmt.with_system.replace(SYSTEM_TEXT, candidate) == rendered else None


def detect_format(
    chat_template: str,
    *,
    special_tokens: Mapping[str, str],
    formats: Sequence[ChatFormat],
    source: str = "the chat template",
) -> Detection:
    """Find the format whose renderings ``chat_template`` reproduces.

    The template must render the placeholder conversation without a system message exactly
    as the format says (or with a default system prompt it adds), and with one exactly as
    the format says unless it refuses system messages. Raises :class:`UnsupportedError`
    (naming ``source`` and suggesting ``--template``) when no format matches.
    """
    import jinja2

    bos = special_tokens.get("bos_token", "")
    system_turn = {"role": "system", "content": SYSTEM_TEXT}
    try:
        with_system = _render_or_none(
            chat_template, [system_turn, *PLACEHOLDER_TURNS], special_tokens
        )
        without_system = _render_or_none(chat_template, PLACEHOLDER_TURNS, special_tokens)
    except jinja2.TemplateSyntaxError as exc:
        raise InvalidInputError(
            f"{source} is not a valid Jinja template: {exc}", TEMPLATE_HINT
        ) from exc
    except TemplateLimitError as exc:
        raise InvalidInputError(f"{source}: {exc}", TEMPLATE_HINT) from exc
    except Exception as exc:  # a sandbox violation, a missing variable, ...
        raise UnsupportedError(
            f"{source} could not be rendered: {type(exc).__name__}: {exc}", TEMPLATE_HINT
        ) from exc
    if without_system is None:
        raise UnsupportedError(
            f"{source} refuses a plain user/assistant/user conversation", TEMPLATE_HINT
        )
    # Match the rendering as it is first, then without a leading BOS token (which the runtime
    # adds by itself); SmolLM2's "BOS" is <|im_start|>, which its template writes as text.
    for strip_bos in (False, True):
        emits_bos = False
        first: str | None = with_system
        second: str | None = without_system
        if strip_bos:
            first, bos_first = _without_bos(with_system, bos)
            second, bos_second = _without_bos(without_system, bos)
            emits_bos = bos_first or bos_second
            if not emits_bos:
                break
        assert second is not None
        for fmt in formats:
            default = None
            if second != fmt.without_system:
                default = _default_system(fmt, second)
                if default is None:
                    continue
            if first is not None and first != fmt.with_system:
                continue
            return Detection(
                format=fmt,
                default_system=default,
                emits_bos=emits_bos,
                system_refused=first is None,
            )
    preview = without_system if len(without_system) <= 160 else without_system[:157] + "..."
    raise UnsupportedError(
        f"{source} matches none of the known chat formats "
        f"({', '.join(f.name for f in formats)}); it renders a test conversation as {preview!r}",
        TEMPLATE_HINT,
    )


def turn_markers(
    chat_template: str, *, special_tokens: Mapping[str, str], added_tokens: Sequence[str]
) -> tuple[str, ...]:
    """The text a chat template writes between an assistant's answer and the next user
    message, as stop strings: the tokenizer's added tokens found there, in order (the end of
    the turn and the next turn's header: ``<|eot_id|>``, ``<|start_header_id|>``, ...), else
    that text itself stripped of spaces (``### Instruction:``). Empty when the template
    cannot render the placeholder conversation."""
    try:
        text = render_chat_template(chat_template, PLACEHOLDER_TURNS, special_tokens=special_tokens)
    except Exception:  # any template error: no markers (the caller warns about no stops)
        return ()
    start, end = text.find(ASSISTANT_ONE), text.find(USER_TWO)
    if start < 0 or end < start:
        return ()
    between = text[start + len(ASSISTANT_ONE) : end]
    found = sorted(
        (between.find(token), token) for token in set(added_tokens) if token and token in between
    )
    if found:
        return tuple(dict.fromkeys(token for _, token in found))
    stripped = between.strip()
    return (stripped,) if stripped else ()
